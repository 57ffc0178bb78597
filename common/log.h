/*
 * log: leveled, timestamped log lines to one stream (stderr by default, or the daemon's
 * exaqd.log). Level is checked before the arguments are formatted. Thread-safe: each line is
 * written with a single fprintf on an unbuffered-per-line stream.
 */
#ifndef EXAQ_LOG_H
#define EXAQ_LOG_H

#include <stdio.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO,
    LOG_LEVEL_WARN,
    LOG_LEVEL_ERROR,
};

void log_set_stream(FILE *f); /* borrowed; NULL means stderr */
void log_set_tee(FILE *f);    /* a second stream that also gets every line, or NULL */
void log_set_level(enum log_level lvl);
void log_set_prefix(const char *prefix); /* copied, e.g. "exaqd" */
int log_enabled(enum log_level lvl);
void log_write(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_LEVEL_DEBUG))                                                          \
            log_write(LOG_LEVEL_DEBUG, __VA_ARGS__);                                               \
    } while (0)
#define log_info(...)  log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
