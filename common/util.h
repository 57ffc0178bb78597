/*
 * util: small helpers shared by every exaq program.
 *
 * Allocation failures are fatal (tmux xmalloc style): a program that cannot get a few bytes
 * cannot do anything useful, and checking every malloc hides the real error paths. File
 * helpers return 0 or -errno and never exit. Nothing here touches global state except the
 * abort hook.
 */
#ifndef EXAQ_UTIL_H
#define EXAQ_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define EXAQ_VERSION      "0.1.0"

#define EXAQ_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define EXAQ_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define EXAQ_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* Invariant check that stays on in release builds; never use it on external input. */
#define EXAQ_ASSERT(x)                                                                             \
    do {                                                                                           \
        if (!(x))                                                                                  \
            exaq_abort(__FILE__, __LINE__, "assertion failed: %s", #x);                            \
    } while (0)
#define EXAQ_BUG(...) exaq_abort(__FILE__, __LINE__, __VA_ARGS__)

void exaq_abort(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/* Allocation: abort with a message on failure. xfree(NULL) is fine (it is free). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
/* The error-out convention of the worker and engine APIs: when err is not NULL, replaces *err
 * (freed first; it must be NULL or a string from an earlier call) with the new message. */
void err_setf(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Growable byte buffer. buf_init() zeroes; buf_release() frees the data. */
struct buf {
    char *data; /* always NUL-terminated when len > 0 or after buf_cstr() */
    size_t len;
    size_t cap;
};
void buf_init(struct buf *b);
void buf_release(struct buf *b);
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *buf_cstr(struct buf *b);
/* Takes the data out of the buffer (caller frees); the buffer is left empty. */
char *buf_steal(struct buf *b);

/* Time. */
double now_wall(void); /* seconds since the epoch */
double now_mono(void); /* monotonic seconds */

/* Paths and files. All return 0 on success or -errno. */
char *path_join(const char *a, const char *b); /* new string */
char *path_abs(const char *p);                 /* realpath, or NULL with errno set */
char *path_dirname(const char *p);             /* new string */
int mkdir_p(const char *path, mode_t mode);
int rm_rf(const char *path);
/* Opens a file that must be regular for reading: O_NONBLOCK while opening, so a FIFO never
 * blocks, then fstat. Returns the fd (O_NONBLOCK cleared), or -errno; -EINVAL when path is not
 * a regular file (a FIFO, a device, a socket), -EISDIR for a directory. Symlinks are followed. */
int file_open_regular(const char *path);
/* A short name for the type of st_mode ("FIFO", "character device", "symlink"...). */
const char *file_type_name(mode_t mode);
/* Reads a whole regular file (file_open_regular rules); NUL-terminated, caller frees. */
int file_read_all(const char *path, char **out, size_t *len);
int file_write_all(const char *path, const void *data, size_t len);
/* Write to path.tmp-<pid>, fsync, rename over path, fsync the directory. */
int file_write_atomic(const char *path, const void *data, size_t len);
int fsync_dir(const char *dir);
int is_dir(const char *path);
int is_file(const char *path);
/* Total bytes of regular files under path (recursive); -errno on failure. */
int64_t dir_size_bytes(const char *path);
/* Copy a regular file (data only, mode 0644); the source opens with file_open_regular. */
int file_copy(const char *src, const char *dst);

/* SHA-256. Hex output is 64 chars + NUL. */
#define SHA256_HEX_LEN 65
int sha256_file_hex(const char *path, char out[SHA256_HEX_LEN]);
/* Incremental hashing; ctx is opaque. */
struct sha256_ctx;
struct sha256_ctx *sha256_new(void);
void sha256_update(struct sha256_ctx *c, const void *data, size_t len);
void sha256_final_hex(struct sha256_ctx *c, char out[SHA256_HEX_LEN]); /* frees c */

/* Strings. */
int str_starts_with(const char *s, const char *prefix);
int str_ends_with(const char *s, const char *suffix);
/* Parse a whole string as a number; 0 on success, -EINVAL otherwise. */
int parse_i64(const char *s, int64_t *out);
int parse_f64(const char *s, double *out);
/* Levenshtein distance, for "did you mean" hints. */
int str_edit_distance(const char *a, const char *b);

/* Home directory resolution: --home, else $EXAQ_HOME, else ./results. Returns a new string. */
char *exaq_home_resolve(const char *cli_home);

#endif
