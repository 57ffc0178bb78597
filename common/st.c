/*
 * st: safetensors reading (mmap + full validation), model-directory lookup and atomic writing.
 * See st.h for the contract. The header is parsed with cJSON after an explicit UTF-8 check;
 * every number that becomes a size or an offset is checked to be a non-negative integer that a
 * double represents exactly (< 2^53) and every product is overflow-checked, so a hostile
 * header can only produce an error.
 */
#include "common/st.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "kernels/kern.h"

#define ST_MAX_INT 9007199254740992.0 /* 2^53: larger offsets cannot come from a double */

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = { "BOOL", 1 }, [ST_U8] = { "U8", 1 },           [ST_I8] = { "I8", 1 },
    [ST_I16] = { "I16", 2 },   [ST_U16] = { "U16", 2 },         [ST_F16] = { "F16", 2 },
    [ST_BF16] = { "BF16", 2 }, [ST_I32] = { "I32", 4 },         [ST_U32] = { "U32", 4 },
    [ST_F32] = { "F32", 4 },   [ST_F64] = { "F64", 8 },         [ST_I64] = { "I64", 8 },
    [ST_U64] = { "U64", 8 },   [ST_F8_E4M3] = { "F8_E4M3", 1 }, [ST_F8_E5M2] = { "F8_E5M2", 1 },
};

const char *st_dtype_name(enum st_dtype dt)
{
    if ((int)dt < 0 || dt >= ST_DTYPE_COUNT)
        return "?";
    return dtypes[dt].name;
}

int st_dtype_parse(const char *s, enum st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (enum st_dtype)i;
            return 0;
        }
    }
    return -1;
}

size_t st_dtype_size(enum st_dtype dt)
{
    if ((int)dt < 0 || dt >= ST_DTYPE_COUNT)
        return 0;
    return dtypes[dt].size;
}

struct st_file {
    char *path;
    char *label;
    void *map; /* mmap base, or NULL for st_file_parse */
    size_t map_len;
    int n;
    struct st_tensor *t; /* data order */
    struct st_tensor **by_name;
    void **copies; /* aligned private copies (n entries, mostly NULL) */
    int nmeta;
    char **meta_keys, **meta_vals;
};

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* RFC 3629 UTF-8 check: no overlongs, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n, size_t *bad_at)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2;
            min = 0x80;
            c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            min = 0x800;
            c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            min = 0x10000;
            c &= 0x07;
        } else {
            *bad_at = i;
            return 0;
        }
        if (i + len > n) {
            *bad_at = i;
            return 0;
        }
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                *bad_at = i;
                return 0;
            }
            c = (c << 6) | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
            *bad_at = i;
            return 0;
        }
        i += len;
    }
    return 1;
}

/* A JSON number that is a non-negative integer below 2^53. */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d >= ST_MAX_INT || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_offsets(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    /* data points at the begin offset (relative to a NULL base) during validation. */
    uintptr_t xa = (uintptr_t)x->data, ya = (uintptr_t)y->data;
    if (xa != ya)
        return xa < ya ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

void st_file_free(struct st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++) {
        free((char *)f->t[i].name);
        if (f->copies)
            free(f->copies[i]);
    }
    free(f->t);
    free(f->by_name);
    free(f->copies);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->path);
    free(f->label);
    free(f);
}

/* Parses one "NAME": {...} entry into t (name set by the caller). offsets returned raw. */
static int parse_entry(const char *lb, const cJSON *e, struct st_tensor *t, uint64_t off[2],
                       char **err)
{
    if (!cJSON_IsObject(e)) {
        err_setf(err, "%s: tensor '%s' is not a JSON object", lb, t->name);
        return -EINVAL;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) {
        err_setf(err, "%s: tensor '%s' has no string 'dtype'", lb, t->name);
        return -EINVAL;
    }
    if (st_dtype_parse(dt->valuestring, &t->dtype) != 0) {
        err_setf(err, "%s: tensor '%s' has unknown or unsupported dtype '%.40s'", lb, t->name,
                 dt->valuestring);
        return -EINVAL;
    }
    if (!cJSON_IsArray(sh)) {
        err_setf(err, "%s: tensor '%s' has no 'shape' array", lb, t->name);
        return -EINVAL;
    }
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) {
        err_setf(err, "%s: tensor '%s' has %d dimensions (at most %d supported)", lb, t->name, nd,
                 ST_MAX_DIMS);
        return -EINVAL;
    }
    t->ndim = nd;
    uint64_t numel = 1;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh)
    {
        uint64_t v;
        if (!json_uint(d, &v)) {
            err_setf(err, "%s: tensor '%s' shape entry %d is not a non-negative integer", lb,
                     t->name, i);
            return -EINVAL;
        }
        t->shape[i++] = (int64_t)v;
        if (numel != 0 && v != 0 && numel > UINT64_MAX / v) {
            err_setf(err, "%s: tensor '%s' shape overflows the element count", lb, t->name);
            return -EINVAL;
        }
        numel *= v;
    }
    uint64_t nbytes;
    if (numel > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes) ||
        nbytes > (uint64_t)SIZE_MAX) {
        err_setf(err, "%s: tensor '%s' shape times element size overflows", lb, t->name);
        return -EINVAL;
    }
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nbytes;
    if (!cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2 || !json_uint(of->child, &off[0]) ||
        !json_uint(of->child->next, &off[1])) {
        err_setf(err, "%s: tensor '%s' needs 'data_offsets' [BEGIN, END] of non-negative integers",
                 lb, t->name);
        return -EINVAL;
    }
    if (off[1] < off[0]) {
        err_setf(err, "%s: tensor '%s' data_offsets [%llu,%llu] end before they begin", lb, t->name,
                 (unsigned long long)off[0], (unsigned long long)off[1]);
        return -EINVAL;
    }
    if (off[1] - off[0] != nbytes) {
        char shape[160];
        size_t p = 0;
        shape[0] = '\0';
        for (int k = 0; k < nd && p < sizeof(shape) - 24; k++)
            p += (size_t)snprintf(shape + p, sizeof(shape) - p, "%s%lld", k ? "," : "",
                                  (long long)t->shape[k]);
        err_setf(err,
                 "%s: tensor '%s' data_offsets [%llu,%llu] hold %llu bytes but dtype %s and shape "
                 "[%s] need %llu",
                 lb, t->name, (unsigned long long)off[0], (unsigned long long)off[1],
                 (unsigned long long)(off[1] - off[0]), st_dtype_name(t->dtype), shape,
                 (unsigned long long)nbytes);
        return -EINVAL;
    }
    return 0;
}

static int parse_image(struct st_file *f, const unsigned char *buf, size_t len, char **err)
{
    const char *lb = f->label;
    cJSON *root = NULL;
    int rc = -EINVAL;
    if (len < 8) {
        err_setf(err, "%s: file too small (%zu bytes) to hold the 8-byte header length", lb, len);
        return -EINVAL;
    }
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--)
        hn = (hn << 8) | buf[i];
    if (hn > ST_MAX_HEADER) {
        err_setf(err, "%s: header length %llu exceeds the limit of %llu bytes", lb,
                 (unsigned long long)hn, (unsigned long long)ST_MAX_HEADER);
        return -EINVAL;
    }
    if (hn > len - 8) {
        err_setf(err, "%s: header length %llu exceeds the file size (%zu bytes)", lb,
                 (unsigned long long)hn, len);
        return -EINVAL;
    }
    const unsigned char *h = buf + 8;
    if (hn == 0 || h[0] != '{') {
        err_setf(err, "%s: header is not a JSON object (it must start with '{')", lb);
        return -EINVAL;
    }
    size_t bad;
    if (!utf8_valid(h, (size_t)hn, &bad)) {
        err_setf(err, "%s: header is not valid UTF-8 (byte %zu)", lb, bad);
        return -EINVAL;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts((const char *)h, (size_t)hn, &end, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        long at = ep && ep >= (const char *)h && ep <= (const char *)h + hn
                      ? (long)(ep - (const char *)h)
                      : -1;
        err_setf(err, "%s: header is not valid JSON (near byte %ld)", lb, at);
        goto fail;
    }
    for (const char *p = end; p < (const char *)h + hn; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            err_setf(err, "%s: header has trailing bytes after the JSON object (byte %ld)", lb,
                     (long)(p - (const char *)h));
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        err_setf(err, "%s: header is not a JSON object", lb);
        goto fail;
    }
    int count = 0, seen_meta = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!e->string) {
            err_setf(err, "%s: header has an entry without a name", lb);
            goto fail;
        }
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta++) {
                err_setf(err, "%s: duplicate key '__metadata__'", lb);
                goto fail;
            }
            if (cJSON_IsNull(e))
                continue;
            if (!cJSON_IsObject(e)) {
                err_setf(err, "%s: __metadata__ is not an object", lb);
                goto fail;
            }
            const cJSON *m;
            int nm = cJSON_GetArraySize(e);
            f->meta_keys = xcalloc((size_t)nm + 1, sizeof(char *));
            f->meta_vals = xcalloc((size_t)nm + 1, sizeof(char *));
            cJSON_ArrayForEach(m, e)
            {
                if (!cJSON_IsString(m) || !m->string) {
                    err_setf(err, "%s: __metadata__ value '%.60s' is not a string", lb,
                             m->string ? m->string : "");
                    goto fail;
                }
                f->meta_keys[f->nmeta] = xstrdup(m->string);
                f->meta_vals[f->nmeta] = xstrdup(m->valuestring);
                f->nmeta++;
            }
            continue;
        }
        count++;
    }
    f->t = xcalloc((size_t)count + 1, sizeof(*f->t));
    f->by_name = xcalloc((size_t)count + 1, sizeof(*f->by_name));
    f->copies = xcalloc((size_t)count + 1, sizeof(*f->copies));
    uint64_t *offs = xcalloc((size_t)count * 2 + 2, sizeof(uint64_t));
    cJSON_ArrayForEach(e, root)
    {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        struct st_tensor *t = &f->t[f->n++];
        t->name = xstrdup(e->string);
        t->file = f;
        if (parse_entry(lb, e, t, &offs[2 * (f->n - 1)], err) != 0) {
            free(offs);
            goto fail;
        }
        /* Temporarily keep the begin offset in data for sorting. */
        t->data = (const void *)(uintptr_t)offs[2 * (f->n - 1)];
    }
    free(offs);
    /* Duplicate names. */
    for (int i = 0; i < f->n; i++)
        f->by_name[i] = &f->t[i];
    qsort(f->by_name, (size_t)f->n, sizeof(*f->by_name), cmp_name);
    for (int i = 1; i < f->n; i++) {
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            err_setf(err, "%s: duplicate tensor name '%s'", lb, f->by_name[i]->name);
            goto fail;
        }
    }
    /* Offsets: sorted, starting at 0, each tensor beginning where the previous one ended. */
    struct st_tensor **ord = xcalloc((size_t)f->n + 1, sizeof(*ord));
    for (int i = 0; i < f->n; i++)
        ord[i] = &f->t[i];
    qsort(ord, (size_t)f->n, sizeof(*ord), cmp_offsets);
    uint64_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        uint64_t b = (uint64_t)(uintptr_t)ord[i]->data, en = b + ord[i]->nbytes;
        if (b < pos) {
            err_setf(
                err, "%s: tensor '%s' data_offsets [%llu,%llu] overlap the previous tensor '%s'",
                lb, ord[i]->name, (unsigned long long)b, (unsigned long long)en, ord[i - 1]->name);
            free(ord);
            goto fail;
        }
        if (b > pos) {
            if (i == 0)
                err_setf(err,
                         "%s: tensor '%s' data_offsets [%llu,%llu] leave a hole at the start "
                         "of the data (the first tensor must begin at 0)",
                         lb, ord[i]->name, (unsigned long long)b, (unsigned long long)en);
            else
                err_setf(err,
                         "%s: tensor '%s' data_offsets [%llu,%llu] leave a hole after the "
                         "previous tensor '%s' (which ends at %llu)",
                         lb, ord[i]->name, (unsigned long long)b, (unsigned long long)en,
                         ord[i - 1]->name, (unsigned long long)pos);
            free(ord);
            goto fail;
        }
        pos = en;
    }
    free(ord);
    uint64_t data_len = len - 8 - hn;
    if (pos != data_len) {
        err_setf(err,
                 "%s: header describes %llu data bytes but the file holds %llu after the "
                 "header (8 + N + last END must equal the file size)",
                 lb, (unsigned long long)pos, (unsigned long long)data_len);
        goto fail;
    }
    /* Resolve data pointers; copy the rare misaligned tensor. */
    const unsigned char *data = h + hn;
    for (int i = 0; i < f->n; i++) {
        struct st_tensor *t = &f->t[i];
        const unsigned char *p = data + (uintptr_t)t->data;
        size_t al = st_dtype_size(t->dtype);
        if (al > 1 && ((uintptr_t)p % al) != 0 && t->nbytes > 0) {
            void *c = NULL;
            if (posix_memalign(&c, 64, t->nbytes) != 0 || !c) {
                err_setf(err, "%s: out of memory copying misaligned tensor '%s'", lb, t->name);
                rc = -ENOMEM;
                goto fail;
            }
            memcpy(c, p, t->nbytes);
            f->copies[i] = c;
            p = c;
        }
        t->data = p;
    }
    cJSON_Delete(root);
    return 0;
fail:
    /* Tensors whose data still holds an offset must not be dereferenced: reset them. */
    for (int i = 0; i < f->n; i++)
        f->t[i].data = NULL;
    cJSON_Delete(root);
    return rc;
}

int st_file_parse(struct st_file **out, const void *buf, size_t len, const char *label, char **err)
{
    *out = NULL;
    struct st_file *f = xcalloc(1, sizeof(*f));
    f->label = xstrdup(label ? label : "<memory>");
    f->path = xstrdup(f->label);
    int rc = parse_image(f, buf, len, err);
    if (rc != 0) {
        st_file_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_file_open(struct st_file **out, const char *path, char **err)
{
    *out = NULL;
    /* O_NONBLOCK: a FIFO in place of a tensor file must fail at once, not block the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        err_setf(err, "cannot open '%s': %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        err_setf(err, "cannot stat '%s': %s", path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        err_setf(err, "'%s' is not a regular file (a %s)", path, file_type_name(st.st_mode));
        return -EINVAL;
    }
    struct st_file *f = xcalloc(1, sizeof(*f));
    f->path = xstrdup(path);
    f->label = xstrdup(base_name(path));
    size_t len = (size_t)st.st_size;
    int rc;
    if (len < 8) {
        close(fd);
        err_setf(err, "%s: file too small (%zu bytes) to hold the 8-byte header length", f->label,
                 len);
        st_file_free(f);
        return -EINVAL;
    }
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        int e = errno;
        err_setf(err, "cannot map '%s': %s", path, strerror(e));
        st_file_free(f);
        return -e;
    }
    f->map = m;
    f->map_len = len;
    rc = parse_image(f, m, len, err);
    if (rc != 0) {
        st_file_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_file_count(const struct st_file *f)
{
    return f->n;
}

const struct st_tensor *st_file_tensor(const struct st_file *f, int i)
{
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

static const struct st_tensor *find_sorted(struct st_tensor *const *v, int n, const char *name)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(v[mid]->name, name);
        if (c == 0)
            return v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

const struct st_tensor *st_file_find(const struct st_file *f, const char *name)
{
    return find_sorted(f->by_name, f->n, name);
}

const char *st_file_metadata(const struct st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_vals[i];
    return NULL;
}

/* ---- directories --------------------------------------------------------------------- */

struct st_dir {
    int nfiles;
    struct st_file **files;
    int n;
    struct st_tensor **by_name;
};

void st_dir_free(struct st_dir *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->nfiles; i++)
        st_file_free(d->files[i]);
    free(d->files);
    free(d->by_name);
    free(d);
}

static int add_file(struct st_dir *d, const char *path, char **err)
{
    struct st_file *f;
    int rc = st_file_open(&f, path, err);
    if (rc != 0)
        return rc;
    d->files = xrealloc(d->files, sizeof(*d->files) * (size_t)(d->nfiles + 1));
    d->files[d->nfiles++] = f;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Builds the sorted name table from every tensor of every file; a duplicate is an error. */
static int index_all(struct st_dir *d, char **err)
{
    int total = 0;
    for (int i = 0; i < d->nfiles; i++)
        total += d->files[i]->n;
    d->by_name = xcalloc((size_t)total + 1, sizeof(*d->by_name));
    for (int i = 0; i < d->nfiles; i++)
        for (int k = 0; k < d->files[i]->n; k++)
            d->by_name[d->n++] = &d->files[i]->t[k];
    qsort(d->by_name, (size_t)d->n, sizeof(*d->by_name), cmp_name);
    for (int i = 1; i < d->n; i++) {
        if (strcmp(d->by_name[i - 1]->name, d->by_name[i]->name) == 0) {
            err_setf(err, "tensor '%s' appears in both '%s' and '%s'", d->by_name[i]->name,
                     d->by_name[i - 1]->file->label, d->by_name[i]->file->label);
            return -EINVAL;
        }
    }
    return 0;
}

static int open_index(struct st_dir *d, const char *dir, const char *ipath, char **err)
{
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    char **names = NULL;
    int nnames = 0, rc = file_read_all(ipath, &text, &len);
    if (rc != 0) {
        err_setf(err, "cannot read '%s': %s", ipath, strerror(-rc));
        return rc;
    }
    rc = -EINVAL;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        err_setf(err, "model.safetensors.index.json: not a JSON object");
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        err_setf(err, "model.safetensors.index.json: missing 'weight_map' object");
        goto out;
    }
    const cJSON *e;
    int n = cJSON_GetArraySize(wm);
    names = xcalloc((size_t)n + 1, sizeof(char *));
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || !e->string) {
            err_setf(err, "model.safetensors.index.json: weight_map entry '%s' is not a file name",
                     e->string ? e->string : "");
            goto out;
        }
        const char *fn = e->valuestring;
        if (!*fn || strchr(fn, '/') || strcmp(fn, "..") == 0 || strcmp(fn, ".") == 0) {
            err_setf(err,
                     "model.safetensors.index.json: weight_map file name '%s' is not a plain "
                     "file name",
                     fn);
            goto out;
        }
        names[nnames++] = e->valuestring;
    }
    qsort(names, (size_t)nnames, sizeof(char *), cmp_str);
    for (int i = 0; i < nnames; i++) {
        if (i > 0 && strcmp(names[i], names[i - 1]) == 0)
            continue;
        char *p = path_join(dir, names[i]);
        if (!is_file(p)) {
            err_setf(err,
                     "model.safetensors.index.json: weight_map names '%s', which does not "
                     "exist",
                     names[i]);
            free(p);
            goto out;
        }
        rc = add_file(d, p, err);
        free(p);
        if (rc != 0)
            goto out;
        rc = -EINVAL;
    }
    /* Only mapped tensors are visible, each from the file the index names. */
    d->by_name = xcalloc((size_t)n + 1, sizeof(*d->by_name));
    cJSON_ArrayForEach(e, wm)
    {
        const struct st_tensor *t = NULL;
        for (int i = 0; i < d->nfiles && !t; i++)
            if (strcmp(d->files[i]->label, e->valuestring) == 0)
                t = st_file_find(d->files[i], e->string);
        if (!t) {
            err_setf(err,
                     "model.safetensors.index.json: tensor '%s' is mapped to '%s' but that "
                     "file does not contain it",
                     e->string, e->valuestring);
            goto out;
        }
        d->by_name[d->n++] = (struct st_tensor *)t;
    }
    qsort(d->by_name, (size_t)d->n, sizeof(*d->by_name), cmp_name);
    for (int i = 1; i < d->n; i++) {
        if (strcmp(d->by_name[i - 1]->name, d->by_name[i]->name) == 0) {
            err_setf(err, "model.safetensors.index.json: tensor '%s' is mapped twice",
                     d->by_name[i]->name);
            goto out;
        }
    }
    rc = 0;
out:
    free(names);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int st_dir_open(struct st_dir **out, const char *path, char **err)
{
    *out = NULL;
    struct st_dir *d = xcalloc(1, sizeof(*d));
    int rc = 0;
    char *p = NULL;
    if (is_file(path)) {
        rc = add_file(d, path, err);
        if (rc == 0)
            rc = index_all(d, err);
        goto done;
    }
    if (!is_dir(path)) {
        err_setf(err, "model directory '%s' does not exist", path);
        rc = -ENOENT;
        goto done;
    }
    p = path_join(path, "model.safetensors.index.json");
    if (is_file(p)) {
        rc = open_index(d, path, p, err);
        goto done;
    }
    free(p);
    p = path_join(path, "model.safetensors");
    if (is_file(p)) {
        rc = add_file(d, p, err);
        if (rc == 0)
            rc = index_all(d, err);
        goto done;
    }
    DIR *dh = opendir(path);
    if (!dh) {
        rc = -errno;
        err_setf(err, "cannot list '%s': %s", path, strerror(-rc));
        goto done;
    }
    char **names = NULL;
    int nn = 0;
    struct dirent *de;
    while ((de = readdir(dh)) != NULL) {
        if (str_ends_with(de->d_name, ".safetensors")) {
            names = xrealloc(names, sizeof(char *) * (size_t)(nn + 1));
            names[nn++] = xstrdup(de->d_name);
        }
    }
    closedir(dh);
    qsort(names, (size_t)nn, sizeof(char *), cmp_str);
    for (int i = 0; i < nn && rc == 0; i++) {
        char *fp = path_join(path, names[i]);
        rc = add_file(d, fp, err);
        free(fp);
    }
    for (int i = 0; i < nn; i++)
        free(names[i]);
    free(names);
    if (rc == 0 && nn == 0) {
        err_setf(err, "no safetensors files in '%s'", path);
        rc = -ENOENT;
    }
    if (rc == 0)
        rc = index_all(d, err);
done:
    free(p);
    if (rc != 0) {
        st_dir_free(d);
        return rc;
    }
    *out = d;
    return 0;
}

int st_dir_count(const struct st_dir *d)
{
    return d->n;
}

const struct st_tensor *st_dir_tensor(const struct st_dir *d, int i)
{
    return i >= 0 && i < d->n ? d->by_name[i] : NULL;
}

const struct st_tensor *st_dir_find(const struct st_dir *d, const char *name)
{
    return find_sorted(d->by_name, d->n, name);
}

int st_dir_nfiles(const struct st_dir *d)
{
    return d->nfiles;
}

void st_tensor_to_f32(const struct st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        float v = 0.0f;
        switch (t->dtype) {
        case ST_BOOL:
        case ST_U8:
            v = (float)p[i];
            break;
        case ST_I8:
            v = (float)(int8_t)p[i];
            break;
        case ST_I16:
            v = (float)((const int16_t *)p)[i];
            break;
        case ST_U16:
            v = (float)((const uint16_t *)p)[i];
            break;
        case ST_F16:
            v = kern_f16_to_f32(((const uint16_t *)p)[i]);
            break;
        case ST_BF16:
            v = kern_bf16_to_f32(((const uint16_t *)p)[i]);
            break;
        case ST_I32:
            v = (float)((const int32_t *)p)[i];
            break;
        case ST_U32:
            v = (float)((const uint32_t *)p)[i];
            break;
        case ST_F32:
            v = ((const float *)p)[i];
            break;
        case ST_F64:
            v = (float)((const double *)p)[i];
            break;
        case ST_I64:
            v = (float)((const int64_t *)p)[i];
            break;
        case ST_U64:
            v = (float)((const uint64_t *)p)[i];
            break;
        case ST_F8_E4M3:
            v = kern_f8e4m3_to_f32(p[i]);
            break;
        case ST_F8_E5M2:
            v = kern_f8e5m2_to_f32(p[i]);
            break;
        case ST_DTYPE_COUNT:
            break;
        }
        out[i] = v;
    }
}

/* ---- writing ------------------------------------------------------------------------- */

uint64_t st_wtensor_nbytes(const struct st_wtensor *t, int *ok)
{
    *ok = 0;
    if ((int)t->dtype < 0 || t->dtype >= ST_DTYPE_COUNT || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return 0;
    uint64_t n = st_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || (double)t->shape[i] >= ST_MAX_INT)
            return 0;
        if (__builtin_mul_overflow(n, (uint64_t)t->shape[i], &n))
            return 0;
    }
    if (n >= (uint64_t)ST_MAX_INT)
        return 0;
    *ok = 1;
    return n;
}

static void json_str(struct buf *b, const char *s)
{
    buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            buf_printf(b, "\\u%04x", *p);
        else
            buf_append(b, p, 1);
    }
    buf_puts(b, "\"");
}

struct worder {
    size_t align;
    const char *name;
    int idx;
};

/* Descending element size (= alignment), then name: every tensor starts aligned. */
static int cmp_write_order(const void *a, const void *b)
{
    const struct worder *x = a, *y = b;
    if (x->align != y->align)
        return x->align > y->align ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_all_fd(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int st_write_file(const char *path, const struct st_wtensor *ts, int n, st_fill_fn fill, void *arg,
                  char **err)
{
    struct worder *wo = xcalloc((size_t)n + 1, sizeof(*wo));
    int *order = xcalloc((size_t)n + 1, sizeof(int));
    struct buf h;
    char *tmp = NULL;
    void *scratch = NULL;
    int fd = -1, rc = -EINVAL;
    buf_init(&h);
    for (int i = 0; i < n; i++) {
        int ok;
        st_wtensor_nbytes(&ts[i], &ok);
        if (!ts[i].name || !*ts[i].name || strcmp(ts[i].name, "__metadata__") == 0) {
            err_setf(err, "%s: invalid tensor name '%s'", base_name(path),
                     ts[i].name ? ts[i].name : "(null)");
            goto out;
        }
        if (!ok) {
            err_setf(err, "%s: tensor '%s' has an invalid dtype or shape", base_name(path),
                     ts[i].name);
            goto out;
        }
        if (!ts[i].data && !fill) {
            err_setf(err, "%s: tensor '%s' has no data", base_name(path), ts[i].name);
            goto out;
        }
        wo[i].align = st_dtype_size(ts[i].dtype);
        wo[i].name = ts[i].name;
        wo[i].idx = i;
    }
    qsort(wo, (size_t)n, sizeof(*wo), cmp_write_order);
    for (int i = 0; i < n; i++)
        order[i] = wo[i].idx;
    for (int i = 1; i < n; i++) {
        if (strcmp(ts[order[i]].name, ts[order[i - 1]].name) == 0) {
            err_setf(err, "%s: duplicate tensor name '%s'", base_name(path), ts[order[i]].name);
            goto out;
        }
    }
    buf_puts(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0, maxb = 0;
    for (int i = 0; i < n; i++) {
        const struct st_wtensor *t = &ts[order[i]];
        int ok;
        uint64_t nb = st_wtensor_nbytes(t, &ok);
        buf_puts(&h, ",");
        json_str(&h, t->name);
        buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
        for (int k = 0; k < t->ndim; k++)
            buf_printf(&h, "%s%lld", k ? "," : "", (long long)t->shape[k]);
        buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                   (unsigned long long)(off + nb));
        off += nb;
        if (nb > maxb)
            maxb = nb;
    }
    buf_puts(&h, "}");
    while (h.len % 8)
        buf_puts(&h, " ");
    tmp = xasprintf("%s.tmp-%d", path, (int)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        err_setf(err, "cannot create '%s': %s", tmp, strerror(-rc));
        goto out;
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if ((rc = write_all_fd(fd, lenb, 8)) != 0 || (rc = write_all_fd(fd, h.data, h.len)) != 0) {
        err_setf(err, "cannot write '%s': %s", tmp, strerror(-rc));
        goto out;
    }
    if (fill && maxb > 0) {
        scratch = malloc((size_t)maxb);
        if (!scratch) {
            rc = -ENOMEM;
            err_setf(err, "%s: out of memory (%llu bytes for one tensor)", base_name(path),
                     (unsigned long long)maxb);
            goto out;
        }
    }
    for (int i = 0; i < n; i++) {
        const struct st_wtensor *t = &ts[order[i]];
        int ok;
        size_t nb = (size_t)st_wtensor_nbytes(t, &ok);
        const void *src = t->data;
        if (!src) {
            rc = fill(arg, t, scratch, nb, err);
            if (rc != 0)
                goto out;
            src = scratch;
        }
        if ((rc = write_all_fd(fd, src, nb)) != 0) {
            err_setf(err, "cannot write '%s': %s", tmp, strerror(-rc));
            goto out;
        }
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        err_setf(err, "cannot sync '%s': %s", tmp, strerror(-rc));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        err_setf(err, "cannot close '%s': %s", tmp, strerror(-rc));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = -errno;
        err_setf(err, "cannot rename '%s' to '%s': %s", tmp, path, strerror(-rc));
        goto out;
    }
    char *dir = path_dirname(path);
    fsync_dir(dir);
    free(dir);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0 && tmp)
        unlink(tmp);
    free(tmp);
    free(scratch);
    free(order);
    free(wo);
    buf_release(&h);
    return rc;
}

/* model-00001-of-00003.safetensors */
static int is_shard_name(const char *s)
{
    unsigned a, b;
    int end = 0;
    return sscanf(s, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 && end > 0 &&
           s[end] == '\0';
}

static int cmp_wname(const void *a, const void *b)
{
    const struct st_wtensor *x = *(const struct st_wtensor *const *)a;
    const struct st_wtensor *y = *(const struct st_wtensor *const *)b;
    return strcmp(x->name, y->name);
}

int st_write_dir(const char *dir, const struct st_wtensor *ts, int n, uint64_t max_shard_bytes,
                 st_fill_fn fill, void *arg, char **err)
{
    int rc;
    if (!is_dir(dir)) {
        err_setf(err, "output directory '%s' does not exist", dir);
        return -ENOENT;
    }
    /* Remove stale weight files so readers never mix old and new shards. */
    DIR *dh = opendir(dir);
    if (dh) {
        struct dirent *de;
        while ((de = readdir(dh)) != NULL) {
            if (strcmp(de->d_name, "model.safetensors") == 0 ||
                strcmp(de->d_name, "model.safetensors.index.json") == 0 ||
                is_shard_name(de->d_name)) {
                char *p = path_join(dir, de->d_name);
                unlink(p);
                free(p);
            }
        }
        closedir(dh);
    }
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        int ok;
        total += st_wtensor_nbytes(&ts[i], &ok);
        if (!ok) {
            err_setf(err, "tensor '%s' has an invalid dtype or shape",
                     ts[i].name ? ts[i].name : "");
            return -EINVAL;
        }
    }
    if (max_shard_bytes == 0 || total <= max_shard_bytes) {
        char *p = path_join(dir, "model.safetensors");
        rc = st_write_file(p, ts, n, fill, arg, err);
        free(p);
        return rc;
    }
    /* Greedy assignment in the given order. */
    int *shard_of = xcalloc((size_t)n + 1, sizeof(int));
    int nshards = 0;
    uint64_t cur = 0;
    for (int i = 0; i < n; i++) {
        int ok;
        uint64_t nb = st_wtensor_nbytes(&ts[i], &ok);
        if (nshards == 0 || (cur > 0 && cur + nb > max_shard_bytes)) {
            nshards++;
            cur = 0;
        }
        shard_of[i] = nshards - 1;
        cur += nb;
    }
    struct st_wtensor *sub = xcalloc((size_t)n + 1, sizeof(*sub));
    const struct st_wtensor **sorted = xcalloc((size_t)n + 1, sizeof(*sorted));
    char **names = xcalloc((size_t)nshards + 1, sizeof(char *));
    rc = 0;
    for (int s = 0; s < nshards && rc == 0; s++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == s)
                sub[k++] = ts[i];
        names[s] = xasprintf("model-%05d-of-%05d.safetensors", s + 1, nshards);
        char *p = path_join(dir, names[s]);
        rc = st_write_file(p, sub, k, fill, arg, err);
        free(p);
    }
    if (rc == 0) {
        struct buf j;
        buf_init(&j);
        buf_printf(&j, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                   (unsigned long long)total);
        for (int i = 0; i < n; i++)
            sorted[i] = &ts[i];
        qsort(sorted, (size_t)n, sizeof(*sorted), cmp_wname);
        for (int i = 0; i < n; i++) {
            buf_puts(&j, i ? ",\n    " : "\n    ");
            json_str(&j, sorted[i]->name);
            buf_puts(&j, ": ");
            json_str(&j, names[shard_of[sorted[i] - ts]]);
        }
        buf_puts(&j, "\n  }\n}\n");
        char *p = path_join(dir, "model.safetensors.index.json");
        rc = file_write_atomic(p, j.data, j.len);
        if (rc != 0)
            err_setf(err, "cannot write '%s': %s", p, strerror(-rc));
        free(p);
        buf_release(&j);
    }
    for (int s = 0; s < nshards; s++)
        free(names[s]);
    free(names);
    free(sorted);
    free(sub);
    free(shard_of);
    return rc;
}
