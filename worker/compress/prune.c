/*
 * prune: block influence, layer selection and the exaq_prune.json record. See prune.h.
 *
 * Must not modify the model it measures: block influence only runs the forward pass.
 */
#include "worker/compress/prune.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* ---- block influence ------------------------------------------------------------------------ */

/* Sum over the T rows of 1 - cos(a[t], b[t]); a zero row counts as cos 0.5 (ShortGPT nan). */
static double sum_one_minus_cos(const float *a, const float *b, int T, int n)
{
    double s = 0;
    for (int t = 0; t < T; t++) {
        const float *x = a + (size_t)t * n, *y = b + (size_t)t * n;
        double xy = 0, xx = 0, yy = 0;
        for (int j = 0; j < n; j++) {
            xy += (double)x[j] * y[j];
            xx += (double)x[j] * x[j];
            yy += (double)y[j] * y[j];
        }
        double c = xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : 0.5;
        if (!isfinite(c))
            c = 0.5;
        s += 1.0 - c;
    }
    return s;
}

int prune_block_influence(struct model *m, const int32_t *ids, int n, int seq_len, double *bi,
                          prune_tick_fn tick, void *arg, char **err)
{
    int L = m->n_layers, H = m->cfg.hidden_size, rc = 0;
    if (n < 1 || seq_len < 1 || L < 1) {
        err_setf(err, "block influence needs at least one calibration window and one layer");
        return -EINVAL;
    }
    size_t nx = (size_t)seq_len * H;
    float *x = xmalloc(nx * sizeof(float)), *prev = xmalloc(nx * sizeof(float));
    for (int l = 0; l < L; l++)
        bi[l] = 0;
    for (int w = 0; w < n && rc == 0; w++) {
        rc = model_embed(m, ids + (size_t)w * seq_len, seq_len, x, err);
        for (int l = 0; l < L && rc == 0; l++) {
            memcpy(prev, x, nx * sizeof(float));
            rc = model_layer_forward(m, l, x, seq_len, 0, NULL, NULL, err);
            if (rc == 0)
                bi[l] += sum_one_minus_cos(prev, x, seq_len, H);
        }
        if (rc == 0 && tick && tick(arg, w + 1, n)) {
            err_setf(err, "cancelled");
            rc = -ECANCELED;
        }
    }
    for (int l = 0; l < L; l++)
        bi[l] /= (double)n * seq_len;
    free(x);
    free(prev);
    return rc;
}

/* ---- selection ------------------------------------------------------------------------------ */

struct bi_idx {
    double bi;
    int i;
};

static int cmp_bi(const void *a, const void *b)
{
    const struct bi_idx *x = a, *y = b;
    if (x->bi < y->bi)
        return -1;
    if (x->bi > y->bi)
        return 1;
    return x->i - y->i;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int prune_select_smallest(const double *bi, int n_layers, int n_remove, int *removed, char **err)
{
    if (n_remove < 1 || n_remove >= n_layers) {
        err_setf(err,
                 "cannot remove %d of %d layers: at least one layer must be removed and one kept",
                 n_remove, n_layers);
        return -EINVAL;
    }
    struct bi_idx *v = xmalloc(sizeof(*v) * (size_t)n_layers);
    for (int i = 0; i < n_layers; i++) {
        /* NaN sorts last: such a layer is never the cheapest to remove. */
        v[i].bi = isnan(bi[i]) ? INFINITY : bi[i];
        v[i].i = i;
    }
    qsort(v, (size_t)n_layers, sizeof(*v), cmp_bi);
    for (int k = 0; k < n_remove; k++)
        removed[k] = v[k].i;
    free(v);
    qsort(removed, (size_t)n_remove, sizeof(int), cmp_int);
    return 0;
}

int prune_keep_from_removed(int n_layers, const int *removed, int n_removed, int *keep, int *n_kept,
                            char **err)
{
    if (n_removed < 1) {
        err_setf(err, "no layer to remove");
        return -EINVAL;
    }
    char *gone = xcalloc((size_t)n_layers + 1, 1);
    int rc = 0, k = 0;
    for (int i = 0; i < n_removed && rc == 0; i++) {
        int l = removed[i];
        if (l < 0 || l >= n_layers) {
            err_setf(err, "layer index %d is out of range (the model has %d layers, 0..%d)", l,
                     n_layers, n_layers - 1);
            rc = -EINVAL;
        } else if (gone[l]) {
            err_setf(err, "layer index %d is listed twice", l);
            rc = -EINVAL;
        } else {
            gone[l] = 1;
        }
    }
    if (rc == 0 && n_removed >= n_layers) {
        err_setf(err, "removing all %d layers would leave an empty model", n_layers);
        rc = -EINVAL;
    }
    if (rc == 0) {
        for (int l = 0; l < n_layers; l++)
            if (!gone[l])
                keep[k++] = l;
        *n_kept = k;
    }
    free(gone);
    return rc;
}

enum st_dtype prune_model_st_dtype(const struct model *m)
{
    if (m->embed.fmt == LINEAR_FMT_DENSE && m->embed.dtype == KERN_F32)
        return ST_F32;
    if (m->embed.fmt == LINEAR_FMT_DENSE && m->embed.dtype == KERN_F16)
        return ST_F16;
    return ST_BF16;
}

/* ---- exaq_prune.json ------------------------------------------------------------------------ */

void prune_record_release(struct prune_record *r)
{
    if (!r)
        return;
    free(r->source);
    free(r->kept);
    free(r->removed);
    free(r->metric);
    free(r->bi);
    memset(r, 0, sizeof(*r));
}

static cJSON *int_array(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

int prune_record_write(const char *dir, const struct prune_record *r, const char *extra_json,
                       char **err)
{
    cJSON *o = cJSON_CreateObject(), *extra = NULL, *it;
    char *text = NULL, *path = path_join(dir, PRUNE_RECORD_FILE);
    int rc = 0;
    cJSON_AddStringToObject(o, "source", r->source);
    cJSON_AddNumberToObject(o, "source_layers", r->n_source);
    cJSON_AddItemToObject(o, "kept", int_array(r->kept, r->n_kept));
    cJSON_AddItemToObject(o, "removed", int_array(r->removed, r->n_removed));
    if (r->metric)
        cJSON_AddStringToObject(o, "metric", r->metric);
    if (r->bi) {
        cJSON *a = cJSON_CreateArray();
        for (int i = 0; i < r->n_source; i++)
            cJSON_AddItemToArray(a, isfinite(r->bi[i]) ? cJSON_CreateNumber(r->bi[i])
                                                       : cJSON_CreateNull());
        cJSON_AddItemToObject(o, "block_influence", a);
    }
    if (extra_json) {
        extra = cJSON_Parse(extra_json);
        if (!cJSON_IsObject(extra)) {
            err_setf(err, "internal: extra record fields are not a JSON object");
            rc = -EINVAL;
            goto out;
        }
        while ((it = extra->child)) {
            cJSON_DetachItemViaPointer(extra, it);
            cJSON_DeleteItemFromObjectCaseSensitive(o, it->string);
            cJSON_AddItemToObject(o, it->string, it);
        }
    }
    text = cJSON_PrintUnformatted(o);
    {
        size_t len = strlen(text);
        char *t2 = xmalloc(len + 2);
        memcpy(t2, text, len);
        t2[len] = '\n';
        t2[len + 1] = 0;
        rc = file_write_atomic(path, t2, len + 1);
        free(t2);
    }
    if (rc < 0)
        err_setf(err, "cannot write '%s': %s", path, strerror(-rc));
out:
    cJSON_free(text);
    cJSON_Delete(extra);
    cJSON_Delete(o);
    free(path);
    return rc < 0 ? rc : 0;
}

/* Reads an array of n_max or fewer increasing integers in [0, limit). -1 when malformed. */
static int read_index_array(const cJSON *a, int limit, int **out, int *n)
{
    int k = 0, cnt;
    if (!cJSON_IsArray(a))
        return -1;
    cnt = cJSON_GetArraySize(a);
    if (cnt > limit)
        return -1;
    *out = xmalloc(sizeof(int) * (size_t)(cnt + 1));
    const cJSON *it;
    cJSON_ArrayForEach(it, a)
    {
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int)it->valuedouble ||
            it->valueint < 0 || it->valueint >= limit || (k > 0 && it->valueint <= (*out)[k - 1]))
            return -1;
        (*out)[k++] = it->valueint;
    }
    *n = k;
    return 0;
}

int prune_record_read(const char *dir, struct prune_record *r, char **err)
{
    char *path = path_join(dir, PRUNE_RECORD_FILE), *text = NULL;
    cJSON *o = NULL, *s, *n, *m, *b;
    int rc = -EINVAL;
    memset(r, 0, sizeof(*r));
    if (!is_file(path)) {
        err_setf(err,
                 "'%s' is missing: the model in '%s' was not made by a prune stage (heal must "
                 "follow prune in the lane)",
                 PRUNE_RECORD_FILE, dir);
        rc = -ENOENT;
        goto out;
    }
    if (file_read_all(path, &text, NULL) < 0) {
        err_setf(err, "cannot read '%s': %s", path, strerror(errno));
        rc = -EIO;
        goto out;
    }
    o = cJSON_Parse(text);
    s = cJSON_GetObjectItemCaseSensitive(o, "source");
    n = cJSON_GetObjectItemCaseSensitive(o, "source_layers");
    if (!cJSON_IsObject(o) || !cJSON_IsString(s) || !s->valuestring[0] || !cJSON_IsNumber(n) ||
        n->valueint < 2 || n->valueint > 100000) {
        err_setf(err, "'%s' is malformed (needs \"source\" and \"source_layers\")", path);
        goto out;
    }
    r->source = xstrdup(s->valuestring);
    r->n_source = n->valueint;
    if (read_index_array(cJSON_GetObjectItemCaseSensitive(o, "kept"), r->n_source, &r->kept,
                         &r->n_kept) < 0 ||
        read_index_array(cJSON_GetObjectItemCaseSensitive(o, "removed"), r->n_source, &r->removed,
                         &r->n_removed) < 0 ||
        r->n_kept < 1 || r->n_removed < 1 || r->n_kept + r->n_removed != r->n_source) {
        err_setf(err,
                 "'%s' is malformed: \"kept\" and \"removed\" must be increasing layer indices "
                 "that together cover the %d source layers",
                 path, r->n_source);
        goto out;
    }
    {
        /* kept and removed must be disjoint; with the count check they then partition. */
        char *seen = xcalloc((size_t)r->n_source, 1);
        int dup = 0;
        for (int i = 0; i < r->n_kept; i++)
            seen[r->kept[i]] = 1;
        for (int i = 0; i < r->n_removed; i++)
            dup |= seen[r->removed[i]];
        free(seen);
        if (dup) {
            err_setf(err, "'%s' is malformed: a layer is both kept and removed", path);
            goto out;
        }
    }
    m = cJSON_GetObjectItemCaseSensitive(o, "metric");
    if (cJSON_IsString(m))
        r->metric = xstrdup(m->valuestring);
    b = cJSON_GetObjectItemCaseSensitive(o, "block_influence");
    if (cJSON_IsArray(b) && cJSON_GetArraySize(b) == r->n_source) {
        int i = 0;
        const cJSON *it;
        r->bi = xmalloc(sizeof(double) * (size_t)r->n_source);
        cJSON_ArrayForEach(it, b) r->bi[i++] = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    }
    rc = 0;
out:
    if (rc < 0)
        prune_record_release(r);
    cJSON_Delete(o);
    free(text);
    free(path);
    return rc;
}

void prune_record_compose(const struct prune_record *prev, const int *keep, int n_keep,
                          struct prune_record *out)
{
    memset(out, 0, sizeof(*out));
    out->source = xstrdup(prev->source);
    out->n_source = prev->n_source;
    out->n_kept = n_keep;
    out->kept = xmalloc(sizeof(int) * (size_t)(n_keep + 1));
    char *k = xcalloc((size_t)prev->n_source, 1);
    for (int i = 0; i < n_keep; i++) {
        out->kept[i] = prev->kept[keep[i]];
        k[out->kept[i]] = 1;
    }
    out->removed = xmalloc(sizeof(int) * (size_t)(prev->n_source + 1));
    for (int l = 0; l < prev->n_source; l++)
        if (!k[l])
            out->removed[out->n_removed++] = l;
    free(k);
}
