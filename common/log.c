/*
 * log: see log.h. The stream is set once at start-up; lines carry local time, level, the
 * program prefix and the pid.
 */
#include "common/log.h"

#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static FILE *log_stream;
static FILE *log_tee;
static enum log_level log_min = LOG_LEVEL_INFO;
static char log_prefix[32] = "exaq";

void log_set_stream(FILE *f)
{
    log_stream = f;
}

void log_set_tee(FILE *f)
{
    log_tee = f;
}

void log_set_level(enum log_level lvl)
{
    log_min = lvl;
}

void log_set_prefix(const char *prefix)
{
    snprintf(log_prefix, sizeof(log_prefix), "%s", prefix);
}

int log_enabled(enum log_level lvl)
{
    return lvl >= log_min;
}

void log_write(enum log_level lvl, const char *fmt, ...)
{
    static const char *names[] = { "debug", "info", "warn", "error" };
    FILE *f = log_stream ? log_stream : stderr;
    char line[4096], ts[32];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    if (lvl < log_min)
        return;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
    n = snprintf(line, sizeof(line), "%s.%03d %s[%d] %s: ", ts, (int)(tv.tv_usec / 1000),
                 log_prefix, (int)getpid(), names[lvl]);
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(f, "%s\n", line);
    fflush(f);
    if (log_tee && log_tee != f) {
        fprintf(log_tee, "%s\n", line);
        fflush(log_tee);
    }
}
