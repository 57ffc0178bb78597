/*
 * util: allocation, buffers, files, hashing and small string helpers.
 * See util.h for the contracts; allocation failures abort, everything else returns -errno.
 */
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

void exaq_abort(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    void *frames[32];
    int n;

    fprintf(stderr, "fatal: %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    n = backtrace(frames, (int)EXAQ_ARRAY_LEN(frames));
    backtrace_symbols_fd(frames, n, 2);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        EXAQ_BUG("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        EXAQ_BUG("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        EXAQ_BUG("out of memory reallocating %zu bytes", n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
    char *s;
    if (vasprintf(&s, fmt, ap) < 0)
        EXAQ_BUG("out of memory in vasprintf");
    return s;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    s = xvasprintf(fmt, ap);
    va_end(ap);
    return s;
}

void err_setf(char **err, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return;
    free(*err);
    va_start(ap, fmt);
    *err = xvasprintf(fmt, ap);
    va_end(ap);
}

/* ===== buffers ===== */

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void buf_release(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reserve(struct buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    int n;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
}

const char *buf_cstr(struct buf *b)
{
    buf_reserve(b, 0);
    b->data[b->len] = '\0';
    return b->data;
}

char *buf_steal(struct buf *b)
{
    char *p;
    buf_cstr(b);
    p = b->data;
    buf_init(b);
    return p;
}

/* ===== time ===== */

double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ===== paths and files ===== */

char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    if (b[0] == '/')
        return xstrdup(b);
    if (la == 0)
        return xstrdup(b);
    if (a[la - 1] == '/')
        return xasprintf("%s%s", a, b);
    return xasprintf("%s/%s", a, b);
}

char *path_abs(const char *p)
{
    char *r = realpath(p, NULL);
    return r;
}

char *path_dirname(const char *p)
{
    const char *slash = strrchr(p, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == p)
        return xstrdup("/");
    return xstrndup(p, (size_t)(slash - p));
}

int mkdir_p(const char *path, mode_t mode)
{
    char *tmp = xstrdup(path);
    int rc = 0;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST) {
            rc = -errno;
            goto out;
        }
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        rc = -errno;
    else if (!is_dir(tmp))
        rc = -ENOTDIR;
out:
    free(tmp);
    return rc;
}

int rm_rf(const char *path)
{
    struct stat st;
    int rc = 0;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        if (!d)
            return -errno;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char *child = path_join(path, de->d_name);
            int r = rm_rf(child);
            if (r < 0 && rc == 0)
                rc = r;
            free(child);
        }
        closedir(d);
        if (rmdir(path) < 0 && rc == 0)
            rc = -errno;
    } else if (unlink(path) < 0) {
        rc = -errno;
    }
    return rc;
}

int file_open_regular(const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

const char *file_type_name(mode_t mode)
{
    if (S_ISREG(mode))
        return "regular file";
    if (S_ISDIR(mode))
        return "directory";
    if (S_ISLNK(mode))
        return "symlink";
    if (S_ISFIFO(mode))
        return "FIFO";
    if (S_ISCHR(mode))
        return "character device";
    if (S_ISBLK(mode))
        return "block device";
    if (S_ISSOCK(mode))
        return "socket";
    return "special file";
}

int file_read_all(const char *path, char **out, size_t *len)
{
    int fd = file_open_regular(path);
    struct stat st;
    struct buf b;
    if (fd < 0)
        return fd;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    buf_init(&b);
    buf_reserve(&b, st.st_size > 0 ? (size_t)st.st_size : 4096);
    for (;;) {
        buf_reserve(&b, 65536);
        ssize_t n = read(fd, b.data + b.len, b.cap - b.len - 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            buf_release(&b);
            return e;
        }
        if (n == 0)
            break;
        b.len += (size_t)n;
    }
    close(fd);
    b.data[b.len] = '\0';
    if (len)
        *len = b.len;
    *out = b.data;
    return 0;
}

static int write_fd_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int file_write_all(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc;
    if (fd < 0)
        return -errno;
    rc = write_fd_all(fd, data, len);
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

int file_write_atomic(const char *path, const void *data, size_t len)
{
    char *tmp = xasprintf("%s.tmp-%d", path, (int)getpid());
    char *dir = path_dirname(path);
    int rc;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = write_fd_all(fd, data, len);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir(dir);
    if (rc < 0)
        unlink(tmp);
out:
    free(tmp);
    free(dir);
    return rc;
}

int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int64_t dir_size_bytes(const char *path)
{
    struct stat st;
    int64_t total = 0;
    if (lstat(path, &st) < 0)
        return -errno;
    if (S_ISREG(st.st_mode))
        return (int64_t)st.st_size;
    if (!S_ISDIR(st.st_mode))
        return 0;
    DIR *d = opendir(path);
    struct dirent *de;
    if (!d)
        return -errno;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *child = path_join(path, de->d_name);
        int64_t n = dir_size_bytes(child);
        free(child);
        if (n < 0) {
            closedir(d);
            return n;
        }
        total += n;
    }
    closedir(d);
    return total;
}

int file_copy(const char *src, const char *dst)
{
    int in = file_open_regular(src), out, rc = 0;
    char buf[1 << 16];
    if (in < 0)
        return in;
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = -errno;
        close(in);
        return rc;
    }
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        rc = write_fd_all(out, buf, (size_t)n);
        if (rc < 0)
            break;
    }
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* ===== sha256 (OpenSSL EVP) ===== */

struct sha256_ctx {
    EVP_MD_CTX *md;
};

struct sha256_ctx *sha256_new(void)
{
    struct sha256_ctx *c = xmalloc(sizeof(*c));
    c->md = EVP_MD_CTX_new();
    if (!c->md || EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1)
        EXAQ_BUG("cannot initialise sha256");
    return c;
}

void sha256_update(struct sha256_ctx *c, const void *data, size_t len)
{
    EVP_DigestUpdate(c->md, data, len);
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void sha256_final_hex(struct sha256_ctx *c, char out[SHA256_HEX_LEN])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(c->md, md, &n);
    EVP_MD_CTX_free(c->md);
    free(c);
    hex_encode(md, 32, out);
}

int sha256_file_hex(const char *path, char out[SHA256_HEX_LEN])
{
    int fd = file_open_regular(path);
    struct sha256_ctx *c;
    static __thread char buf[1 << 20];
    if (fd < 0)
        return fd;
    c = sha256_new();
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            sha256_final_hex(c, out);
            return e;
        }
        if (n == 0)
            break;
        sha256_update(c, buf, (size_t)n);
    }
    close(fd);
    sha256_final_hex(c, out);
    return 0;
}

/* ===== strings ===== */

int str_starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

int str_ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lf = strlen(suffix);
    return ls >= lf && memcmp(s + ls - lf, suffix, lf) == 0;
}

int parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;
    if (!s || !*s)
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

int parse_f64(const char *s, double *out)
{
    char *end;
    double v;
    if (!s || !*s)
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

int str_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int *prev, *cur, d;
    if (la > 256 || lb > 256)
        return 1000;
    prev = xmalloc((lb + 1) * sizeof(int));
    cur = xmalloc((lb + 1) * sizeof(int));
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = EXAQ_MIN(sub, EXAQ_MIN(del, ins));
        }
        int *t = prev;
        prev = cur;
        cur = t;
    }
    d = prev[lb];
    free(prev);
    free(cur);
    return d;
}

char *exaq_home_resolve(const char *cli_home)
{
    const char *env = getenv("EXAQ_HOME");
    if (cli_home && *cli_home)
        return xstrdup(cli_home);
    if (env && *env)
        return xstrdup(env);
    return xstrdup("./results");
}
