/*
 * ckpt: atomic trainer checkpoints (ckpt.h).
 */
#include "worker/train/ckpt.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

#define MAGIC "EXAQTCK1"

struct wr {
    int fd;
    uint64_t h;
    int bad;
};

static void fnv(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= c[i];
        *h *= 0x100000001B3ULL;
    }
}

static void put(struct wr *w, const void *p, size_t n)
{
    const char *c = p;
    fnv(&w->h, p, n);
    while (n && !w->bad) {
        ssize_t k = write(w->fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            w->bad = errno ? errno : EIO;
            break;
        }
        c += k;
        n -= (size_t)k;
    }
}

int ckpt_write(const char *path, const char *fingerprint, const struct ckpt_state *st,
               const struct ckpt_arr *a, int na, char **err)
{
    char *tmp = xasprintf("%s.tmp-%d", path, (int)getpid()), *dir = path_dirname(path);
    cJSON *h = cJSON_CreateObject(), *vals;
    char *htxt;
    struct wr w = { -1, 0xCBF29CE484222325ULL, 0 };
    char rng[32];
    int rc = -1;
    cJSON_AddNumberToObject(h, "step", (double)st->step);
    cJSON_AddNumberToObject(h, "data_pos", (double)st->data_pos);
    snprintf(rng, sizeof(rng), "%016llx", (unsigned long long)st->rng);
    cJSON_AddStringToObject(h, "rng", rng);
    cJSON_AddStringToObject(h, "fingerprint", fingerprint ? fingerprint : "");
    vals = cJSON_AddArrayToObject(h, "vals");
    for (int i = 0; i < CKPT_NVALS; i++) {
        char num[40];
        snprintf(num, sizeof(num), "%.17g", st->vals[i]); /* exact round trip */
        cJSON_AddItemToArray(vals, cJSON_CreateString(num));
    }
    htxt = cJSON_PrintUnformatted(h);
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        err_setf(err, "cannot create '%s': %s", tmp, strerror(errno));
        goto out;
    }
    uint32_t hl = (uint32_t)strlen(htxt), n32 = (uint32_t)na;
    put(&w, MAGIC, 8);
    put(&w, &hl, 4);
    put(&w, htxt, hl);
    put(&w, &n32, 4);
    for (int i = 0; i < na; i++) {
        uint32_t nl = (uint32_t)strlen(a[i].name);
        uint64_t n = a[i].n;
        put(&w, &nl, 4);
        put(&w, a[i].name, nl);
        put(&w, &n, 8);
        put(&w, a[i].p, sizeof(float) * a[i].n);
    }
    uint64_t sum = w.h;
    put(&w, &sum, 8);
    if (!w.bad && fsync(w.fd) < 0)
        w.bad = errno;
    if (close(w.fd) < 0 && !w.bad)
        w.bad = errno;
    w.fd = -1;
    if (w.bad) {
        err_setf(err, "cannot write '%s': %s", tmp, strerror(w.bad));
        goto out;
    }
    if (rename(tmp, path) < 0) {
        err_setf(err, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        goto out;
    }
    fsync_dir(dir);
    rc = 0;
out:
    if (rc)
        unlink(tmp);
    cJSON_free(htxt);
    cJSON_Delete(h);
    free(tmp);
    free(dir);
    return rc;
}

struct rd {
    const unsigned char *p;
    size_t n, off;
};

static const void *take(struct rd *r, size_t n)
{
    if (r->n - r->off < n)
        return NULL;
    const void *p = r->p + r->off;
    r->off += n;
    return p;
}

int ckpt_read(const char *path, const char *fingerprint, struct ckpt_state *st, struct ckpt_arr *a,
              int na, char **err)
{
    char *data = NULL;
    size_t len = 0;
    cJSON *h = NULL;
    int rc = -1, e = file_read_all(path, &data, &len);
    if (e == -ENOENT)
        return 1;
    if (e < 0) {
        err_setf(err, "cannot read '%s': %s", path, strerror(-e));
        return -1;
    }
    struct rd r = { (const unsigned char *)data, len, 0 };
    uint64_t sum = 0xCBF29CE484222325ULL, want;
    const void *p;
    uint32_t hl, n32;
    if (len < 8 + 4 + 4 + 8 || memcmp(data, MAGIC, 8)) {
        err_setf(err, "'%s' is not a trainer checkpoint", path);
        goto out;
    }
    fnv(&sum, data, len - 8);
    memcpy(&want, data + len - 8, 8);
    if (sum != want) {
        err_setf(err, "'%s' is corrupt (checksum mismatch)", path);
        goto out;
    }
    r.n = len - 8;
    take(&r, 8);
    memcpy(&hl, take(&r, 4), 4);
    if (!(p = take(&r, hl)) || !(h = cJSON_ParseWithLength(p, hl))) {
        err_setf(err, "'%s': bad header", path);
        goto out;
    }
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(h, "fingerprint");
    if (!cJSON_IsString(fp) || strcmp(fp->valuestring, fingerprint ? fingerprint : "")) {
        err_setf(err, "'%s' is the checkpoint of another run (its spec or input differ)", path);
        goto out;
    }
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(h, "step"),
                *jd = cJSON_GetObjectItemCaseSensitive(h, "data_pos"),
                *jr = cJSON_GetObjectItemCaseSensitive(h, "rng"),
                *jv = cJSON_GetObjectItemCaseSensitive(h, "vals");
    if (!cJSON_IsNumber(js) || !cJSON_IsNumber(jd) || !cJSON_IsString(jr) ||
        cJSON_GetArraySize(jv) != CKPT_NVALS) {
        err_setf(err, "'%s': bad header", path);
        goto out;
    }
    st->step = (long)js->valuedouble;
    st->data_pos = (long)jd->valuedouble;
    st->rng = strtoull(jr->valuestring, NULL, 16);
    for (int i = 0; i < CKPT_NVALS; i++) {
        const cJSON *x = cJSON_GetArrayItem(jv, i);
        st->vals[i] = cJSON_IsString(x) ? strtod(x->valuestring, NULL) : 0;
    }
    if (!(p = take(&r, 4))) {
        err_setf(err, "'%s' is truncated", path);
        goto out;
    }
    memcpy(&n32, p, 4);
    if ((int)n32 != na) {
        err_setf(err, "'%s' holds %u arrays, this run has %d", path, n32, na);
        goto out;
    }
    /* Two passes: check every name and size first, so that a refused file leaves the arrays
     * untouched; then copy. */
    size_t body = r.off;
    for (int pass = 0; pass < 2; pass++) {
        r.off = body;
        for (int i = 0; i < na; i++) {
            uint32_t nl;
            uint64_t n;
            const char *name;
            if (!(p = take(&r, 4)))
                goto trunc;
            memcpy(&nl, p, 4);
            if (!(name = take(&r, nl)) || !(p = take(&r, 8)))
                goto trunc;
            memcpy(&n, p, 8);
            if (nl != strlen(a[i].name) || memcmp(name, a[i].name, nl) || n != a[i].n) {
                err_setf(err, "'%s': array %d is '%.*s' of %llu values, this run has '%s' of %zu",
                         path, i, (int)nl, name, (unsigned long long)n, a[i].name, a[i].n);
                goto out;
            }
            if (!(p = take(&r, sizeof(float) * n)))
                goto trunc;
            if (pass)
                memcpy(a[i].p, p, sizeof(float) * n);
        }
    }
    rc = 0;
    goto out;
trunc:
    err_setf(err, "'%s' is truncated", path);
out:
    cJSON_Delete(h);
    free(data);
    return rc;
}
