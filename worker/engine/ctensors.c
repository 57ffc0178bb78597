/*
 * ctensors: reading and writing the compressed-tensors formats. See ctensors.h.
 */
#include "worker/engine/ctensors.h"

#include <cJSON.h>
#include <errno.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "common/jw.h"
#include "common/util.h"

/* ===== packing ===== */

static int per_word(int bits)
{
    return 32 / bits;
}

static int words(int n, int bits)
{
    return (n + per_word(bits) - 1) / per_word(bits);
}

void ctensors_pack(const int8_t *q, int rows, int cols, int bits, uint32_t *dst)
{
    int pw = per_word(bits), wc = words(cols, bits);
    uint32_t mask = (1u << bits) - 1, off = 1u << (bits - 1);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < wc; c++) {
            uint32_t wv = 0;
            for (int j = 0; j < pw; j++) {
                int col = c * pw + j;
                if (col < cols)
                    wv |= (((uint32_t)(q[(size_t)r * cols + col] + (int)off)) & mask) << (bits * j);
            }
            dst[(size_t)r * wc + c] = wv;
        }
    }
}

void ctensors_unpack(const uint32_t *src, int rows, int cols, int bits, int8_t *q)
{
    int pw = per_word(bits), wc = words(cols, bits);
    uint32_t mask = (1u << bits) - 1;
    int off = 1 << (bits - 1);
    for (int r = 0; r < rows; r++)
        for (int col = 0; col < cols; col++) {
            uint32_t wv = src[(size_t)r * wc + col / pw];
            q[(size_t)r * cols + col] = (int8_t)((int)((wv >> (bits * (col % pw))) & mask) - off);
        }
}

void ctensors_pack_dim0(const int8_t *zp, int rows, int cols, int bits, uint32_t *dst)
{
    int pw = per_word(bits), wr = words(rows, bits);
    uint32_t mask = (1u << bits) - 1, off = 1u << (bits - 1);
    for (int r8 = 0; r8 < wr; r8++)
        for (int c = 0; c < cols; c++) {
            uint32_t wv = 0;
            for (int j = 0; j < pw; j++) {
                int row = r8 * pw + j;
                if (row < rows)
                    wv |= (((uint32_t)(zp[(size_t)row * cols + c] + (int)off)) & mask)
                          << (bits * j);
            }
            dst[(size_t)r8 * cols + c] = wv;
        }
}

void ctensors_unpack_dim0(const uint32_t *src, int rows, int cols, int bits, int8_t *zp)
{
    int pw = per_word(bits);
    uint32_t mask = (1u << bits) - 1;
    int off = 1 << (bits - 1);
    for (int row = 0; row < rows; row++)
        for (int c = 0; c < cols; c++) {
            uint32_t wv = src[(size_t)(row / pw) * cols + c];
            zp[(size_t)row * cols + c] = (int8_t)((int)((wv >> (bits * (row % pw))) & mask) - off);
        }
}

/* ===== config ===== */

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jint(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : def;
}

static int jbool(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

void ctensors_cfg_release(struct ctensors_cfg *c)
{
    for (int i = 0; i < c->nignore; i++)
        free(c->ignore[i]);
    free(c->ignore);
    memset(c, 0, sizeof(*c));
}

int ctensors_cfg_parse(const cJSON *qc, struct ctensors_cfg *out, char **err)
{
    const cJSON *groups, *g, *wt, *ia, *ig, *sp, *it;
    const char *fmt, *type, *strategy, *actorder, *qm;
    int bits, sym, ngroups = 0;

    memset(out, 0, sizeof(*out));
    qm = jstr(qc, "quant_method");
    if (!qm || strcmp(qm, "compressed-tensors")) {
        err_setf(err,
                 "quantization_config.quant_method is '%s'; only compressed-tensors is supported",
                 qm ? qm : "missing");
        return -EINVAL;
    }
    sp = cJSON_GetObjectItemCaseSensitive(qc, "sparsity_config");
    if (sp && cJSON_IsObject(sp) && sp->child) {
        err_setf(err,
                 "compressed-tensors sparsity formats are not supported (sparsity_config is set)");
        return -EINVAL;
    }
    groups = cJSON_GetObjectItemCaseSensitive(qc, "config_groups");
    cJSON_ArrayForEach(g, groups) ngroups++;
    if (ngroups != 1) {
        err_setf(err, "quantization_config has %d config groups; exactly one is supported",
                 ngroups);
        return -EINVAL;
    }
    g = groups->child;
    fmt = jstr(g, "format") ? jstr(g, "format") : jstr(qc, "format");
    wt = cJSON_GetObjectItemCaseSensitive(g, "weights");
    ia = cJSON_GetObjectItemCaseSensitive(g, "input_activations");
    if (!fmt || !cJSON_IsObject(wt)) {
        err_setf(err, "quantization_config group lacks 'format' or 'weights'");
        return -EINVAL;
    }
    bits = jint(wt, "num_bits", 0);
    sym = jbool(wt, "symmetric", 1);
    type = jstr(wt, "type") ? jstr(wt, "type") : "int";
    strategy = jstr(wt, "strategy") ? jstr(wt, "strategy") : "";
    actorder = jstr(wt, "actorder");
    out->group_size = !strcmp(strategy, "group")     ? jint(wt, "group_size", 0)
                      : !strcmp(strategy, "channel") ? -1
                      : !strcmp(strategy, "tensor")  ? 0
                                                     : -2;
    if (out->group_size == -2 || (!strcmp(strategy, "group") && out->group_size <= 0)) {
        err_setf(err, "unsupported weight strategy '%s' (group_size %d)", strategy,
                 jint(wt, "group_size", 0));
        return -EINVAL;
    }
    out->actorder_group = actorder && !strcmp(actorder, "group");
    if (!strcmp(fmt, "pack-quantized") && !strcmp(type, "int") && !cJSON_IsObject(ia)) {
        if (bits == 4)
            out->scheme = sym ? QSCHEME_W4A16 : QSCHEME_W4A16_ASYM;
        else if (bits == 8)
            out->scheme = sym ? QSCHEME_W8A16 : QSCHEME_W8A16_ASYM;
        else
            goto unsupported;
    } else if ((!strcmp(fmt, "int-quantized") || !strcmp(fmt, "naive-quantized")) &&
               !strcmp(type, "int") && bits == 8 && sym && cJSON_IsObject(ia) &&
               jint(ia, "num_bits", 0) == 8 && jbool(ia, "dynamic", 0) && jstr(ia, "strategy") &&
               !strcmp(jstr(ia, "strategy"), "token")) {
        out->scheme = QSCHEME_W8A8;
    } else if (!strcmp(fmt, "float-quantized") && !strcmp(type, "float") && bits == 8 &&
               cJSON_IsObject(ia) && jstr(ia, "strategy")) {
        if (out->group_size == -1 && jbool(ia, "dynamic", 0) &&
            !strcmp(jstr(ia, "strategy"), "token"))
            out->scheme = QSCHEME_FP8_DYNAMIC;
        else if (out->group_size == 0 && !jbool(ia, "dynamic", 0) &&
                 !strcmp(jstr(ia, "strategy"), "tensor"))
            out->scheme = QSCHEME_FP8;
        else
            goto unsupported;
    } else {
        goto unsupported;
    }
    ig = cJSON_GetObjectItemCaseSensitive(qc, "ignore");
    cJSON_ArrayForEach(it, ig)
    {
        if (!cJSON_IsString(it))
            continue;
        out->ignore = xrealloc(out->ignore, (size_t)(out->nignore + 1) * sizeof(char *));
        out->ignore[out->nignore++] = xstrdup(it->valuestring);
    }
    return 0;
unsupported:
    err_setf(err,
             "unsupported compressed-tensors scheme (format %s, %s %d-bit %s, strategy %s, "
             "activations %s); supported: W4A16, W4A16_ASYM, W8A16, W8A16_ASYM, W8A8, FP8, "
             "FP8_DYNAMIC",
             fmt, type, bits, sym ? "symmetric" : "asymmetric", strategy,
             cJSON_IsObject(ia) ? "quantized" : "none");
    return -EINVAL;
}

bool ctensors_ignored(const struct ctensors_cfg *c, const char *module)
{
    for (int i = 0; i < c->nignore; i++) {
        const char *p = c->ignore[i];
        if (!strncmp(p, "re:", 3)) {
            regex_t re;
            char *anch = xasprintf("^(%s)$", p + 3);
            bool hit = false;
            if (regcomp(&re, anch, REG_EXTENDED | REG_NOSUB) == 0) {
                hit = regexec(&re, module, 0, NULL, 0) == 0;
                regfree(&re);
            }
            free(anch);
            if (hit)
                return true;
        } else if (!strcmp(p, module)) {
            return true;
        }
    }
    return false;
}

static void write_args(struct jw *w, bool is_float, int bits, const char *strategy, int gs,
                       bool sym, bool dynamic, const char *observer, const char *actorder)
{
    jw_obj_begin(w);
    jw_key(w, "actorder");
    if (actorder)
        jw_str(w, actorder);
    else
        jw_null(w);
    jw_key(w, "block_structure");
    jw_null(w);
    jw_kbool(w, "dynamic", dynamic);
    jw_key(w, "group_size");
    if (gs > 0)
        jw_int(w, gs);
    else
        jw_null(w);
    jw_kint(w, "num_bits", bits);
    jw_key(w, "observer");
    if (observer)
        jw_str(w, observer);
    else
        jw_null(w);
    jw_key(w, "observer_kwargs");
    jw_obj_begin(w);
    jw_obj_end(w);
    jw_kstr(w, "strategy", strategy);
    jw_kbool(w, "symmetric", sym);
    jw_kstr(w, "type", is_float ? "float" : "int");
    jw_obj_end(w);
}

char *ctensors_cfg_json(const struct qweight *qw, const char *const *ignore, int nignore)
{
    struct buf b;
    struct jw w;
    const char *fmt;
    const char *strategy = qw->group_size > 0 ? "group" : qw->group_size < 0 ? "channel" : "tensor";
    switch (qw->scheme) {
    case QSCHEME_W8A8:
        fmt = "int-quantized";
        break;
    case QSCHEME_FP8:
    case QSCHEME_FP8_DYNAMIC:
        fmt = "float-quantized";
        break;
    default:
        fmt = "pack-quantized";
    }
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "config_groups");
    jw_obj_begin(&w);
    jw_key(&w, "group_0");
    jw_obj_begin(&w);
    jw_kstr(&w, "format", fmt);
    jw_key(&w, "input_activations");
    switch (qw->scheme) {
    case QSCHEME_W8A8:
        write_args(&w, false, 8, "token", 0, true, true, NULL, NULL);
        break;
    case QSCHEME_FP8_DYNAMIC:
        write_args(&w, true, 8, "token", 0, true, true, NULL, NULL);
        break;
    case QSCHEME_FP8:
        write_args(&w, true, 8, "tensor", 0, true, false, "minmax", NULL);
        break;
    default:
        jw_null(&w);
    }
    jw_key(&w, "output_activations");
    jw_null(&w);
    jw_key(&w, "targets");
    jw_arr_begin(&w);
    jw_str(&w, "Linear");
    jw_arr_end(&w);
    jw_key(&w, "weights");
    write_args(&w, qw->is_fp8, qw->bits, strategy, qw->group_size, qw->symmetric, false, "minmax",
               qw->g_idx ? "group" : NULL);
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_kstr(&w, "format", fmt);
    jw_key(&w, "global_compression_ratio");
    jw_null(&w);
    jw_key(&w, "ignore");
    jw_arr_begin(&w);
    for (int i = 0; i < nignore; i++)
        jw_str(&w, ignore[i]);
    jw_arr_end(&w);
    jw_key(&w, "kv_cache_scheme");
    jw_null(&w);
    jw_kstr(&w, "quant_method", "compressed-tensors");
    jw_kstr(&w, "quantization_status", "compressed");
    jw_key(&w, "sparsity_config");
    jw_obj_begin(&w);
    jw_obj_end(&w);
    jw_key(&w, "transform_config");
    jw_obj_begin(&w);
    jw_obj_end(&w);
    jw_kstr(&w, "version", "0.13.0");
    jw_obj_end(&w);
    return buf_steal(&b);
}

/* ===== reading ===== */

static const struct st_tensor *need(const struct st_dir *st, const char *prefix, const char *suffix,
                                    int ndim, const int64_t *shape, char **err)
{
    char *name = xasprintf("%s.%s", prefix, suffix);
    const struct st_tensor *t = st_dir_find(st, name);
    if (!t) {
        err_setf(err, "quantized checkpoint lacks tensor '%s'", name);
        free(name);
        return NULL;
    }
    if (shape) {
        bool ok = t->ndim == ndim;
        for (int i = 0; ok && i < ndim; i++)
            ok = t->shape[i] == shape[i];
        if (!ok) {
            char want[96] = "", got[96] = "";
            size_t o1 = 0, o2 = 0;
            for (int i = 0; i < ndim; i++)
                o1 += (size_t)snprintf(want + o1, sizeof(want) - o1, "%s%lld", i ? "," : "",
                                       (long long)shape[i]);
            for (int i = 0; i < t->ndim && i < 8; i++)
                o2 += (size_t)snprintf(got + o2, sizeof(got) - o2, "%s%lld", i ? "," : "",
                                       (long long)t->shape[i]);
            err_setf(err, "tensor '%s' has shape [%s], expected [%s]", name, got, want);
            free(name);
            return NULL;
        }
    }
    free(name);
    return t;
}

static int read_scales(const struct st_tensor *t, uint16_t *dst, int64_t n, char **err)
{
    if (t->numel != n) {
        err_setf(err, "tensor '%s' has %lld values, expected %lld", t->name, (long long)t->numel,
                 (long long)n);
        return -EINVAL;
    }
    if (t->dtype == ST_BF16) {
        memcpy(dst, t->data, (size_t)n * 2);
    } else if (t->dtype == ST_F16 || t->dtype == ST_F32) {
        float *f = xmalloc((size_t)n * sizeof(float));
        st_tensor_to_f32(t, f);
        for (int64_t i = 0; i < n; i++)
            dst[i] = quant_f32_to_bf16(f[i]);
        free(f);
    } else {
        err_setf(err, "tensor '%s' has dtype %s; scales must be BF16, F16 or F32", t->name,
                 st_dtype_name(t->dtype));
        return -EINVAL;
    }
    for (int64_t i = 0; i < n; i++) {
        float s = quant_bf16_to_f32(dst[i]);
        if (!(s > 0) || s != s) {
            err_setf(err, "tensor '%s' holds a non-positive or NaN scale at %lld", t->name,
                     (long long)i);
            return -EINVAL;
        }
    }
    return 0;
}

int ctensors_read(const struct st_dir *st, const char *prefix, const struct ctensors_cfg *c,
                  int out, int in, struct qweight *qw, char **err)
{
    const struct st_tensor *t;
    int gs = c->group_size, rc;
    int64_t shp[2];

    rc = qweight_init(qw, c->scheme, out, in, gs);
    if (rc < 0) {
        err_setf(err, "%s: cannot set up a %s weight of [%d, %d] with group size %d", prefix,
                 qscheme_name(c->scheme), out, in, gs);
        return rc;
    }
    rc = -EINVAL;
    switch (c->scheme) {
    case QSCHEME_W4A16:
    case QSCHEME_W4A16_ASYM:
    case QSCHEME_W8A16:
    case QSCHEME_W8A16_ASYM: {
        int bits = qw->bits;
        shp[0] = out;
        shp[1] = words(in, bits);
        if (!(t = need(st, prefix, "weight_packed", 2, shp, err)))
            goto fail;
        if (t->dtype != ST_I32) {
            err_setf(err, "tensor '%s' must be I32", t->name);
            goto fail;
        }
        ctensors_unpack(t->data, out, in, bits, qw->q);
        if ((t = need(st, prefix, "weight_shape", 1, NULL, err)) && t->numel == 2 &&
            (t->dtype == ST_I64 || t->dtype == ST_I32)) {
            int64_t a =
                t->dtype == ST_I64 ? ((const int64_t *)t->data)[0] : ((const int32_t *)t->data)[0];
            int64_t b =
                t->dtype == ST_I64 ? ((const int64_t *)t->data)[1] : ((const int32_t *)t->data)[1];
            if (a != out || b != in) {
                err_setf(err, "%s.weight_shape is [%lld, %lld], expected [%d, %d]", prefix,
                         (long long)a, (long long)b, out, in);
                goto fail;
            }
        } else {
            if (t)
                err_setf(err, "%s.weight_shape must be 2 integers", prefix);
            goto fail;
        }
        if (c->actorder_group) {
            shp[0] = in;
            if (!(t = need(st, prefix, "weight_g_idx", 1, shp, err)))
                goto fail;
            if (t->dtype != ST_I32) {
                err_setf(err, "%s.weight_g_idx must be I32", prefix);
                goto fail;
            }
            qw->g_idx = xmalloc((size_t)in * sizeof(int32_t));
            memcpy(qw->g_idx, t->data, (size_t)in * sizeof(int32_t));
            for (int i = 0; i < in; i++) {
                if (qw->g_idx[i] < 0 || qw->g_idx[i] >= qw->ngroups) {
                    err_setf(err, "%s.weight_g_idx[%d] = %d is outside [0, %d)", prefix, i,
                             qw->g_idx[i], qw->ngroups);
                    goto fail;
                }
            }
        }
        if (!qw->symmetric) {
            shp[0] = words(out, bits);
            shp[1] = qw->ngroups;
            if (!(t = need(st, prefix, "weight_zero_point", 2, shp, err)))
                goto fail;
            if (t->dtype != ST_I32) {
                err_setf(err, "%s.weight_zero_point must be I32", prefix);
                goto fail;
            }
            ctensors_unpack_dim0(t->data, out, qw->ngroups, bits, qw->zp);
        }
        break;
    }
    case QSCHEME_W8A8:
    case QSCHEME_FP8_DYNAMIC:
    case QSCHEME_FP8:
        shp[0] = out;
        shp[1] = in;
        if (!(t = need(st, prefix, "weight", 2, shp, err)))
            goto fail;
        if (c->scheme == QSCHEME_W8A8 ? t->dtype != ST_I8 : t->dtype != ST_F8_E4M3) {
            err_setf(err, "tensor '%s' has dtype %s, expected %s", t->name, st_dtype_name(t->dtype),
                     c->scheme == QSCHEME_W8A8 ? "I8" : "F8_E4M3");
            goto fail;
        }
        if (qw->is_fp8)
            memcpy(qw->fp8, t->data, (size_t)out * in);
        else
            memcpy(qw->q, t->data, (size_t)out * in);
        if (c->scheme == QSCHEME_FP8) {
            uint16_t s;
            if (!(t = need(st, prefix, "input_scale", 1, NULL, err)))
                goto fail;
            if (read_scales(t, &s, 1, err) < 0)
                goto fail;
            qw->input_scale = quant_bf16_to_f32(s);
        }
        break;
    default:
        err_setf(err, "unsupported scheme");
        goto fail;
    }
    if (!(t = need(st, prefix, "weight_scale", 1, NULL, err)))
        goto fail;
    if (read_scales(t, qw->scale, (int64_t)(gs == 0 ? 1 : out) * qw->ngroups, err) < 0)
        goto fail;
    return 0;
fail:
    qweight_release(qw);
    return rc;
}

/* ===== writing ===== */

static void add(struct st_wtensor *t, const char *prefix, const char *suffix, enum st_dtype dt,
                int ndim, int64_t d0, int64_t d1, const struct qweight *qw)
{
    memset(t, 0, sizeof(*t));
    t->name = xasprintf("%s.%s", prefix, suffix);
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->user = qw;
}

int ctensors_tensors(const struct qweight *qw, const char *prefix, struct st_wtensor *ts)
{
    int n = 0;
    switch (qw->scheme) {
    case QSCHEME_W4A16:
    case QSCHEME_W4A16_ASYM:
    case QSCHEME_W8A16:
    case QSCHEME_W8A16_ASYM:
        add(&ts[n++], prefix, "weight_packed", ST_I32, 2, qw->out, words(qw->in, qw->bits), qw);
        add(&ts[n++], prefix, "weight_scale", ST_BF16, 2, qw->out, qw->ngroups, qw);
        add(&ts[n++], prefix, "weight_shape", ST_I64, 1, 2, 0, qw);
        if (!qw->symmetric)
            add(&ts[n++], prefix, "weight_zero_point", ST_I32, 2, words(qw->out, qw->bits),
                qw->ngroups, qw);
        if (qw->g_idx)
            add(&ts[n++], prefix, "weight_g_idx", ST_I32, 1, qw->in, 0, qw);
        break;
    case QSCHEME_W8A8:
        add(&ts[n++], prefix, "weight", ST_I8, 2, qw->out, qw->in, qw);
        add(&ts[n++], prefix, "weight_scale", ST_BF16, 2, qw->out, 1, qw);
        break;
    case QSCHEME_FP8_DYNAMIC:
        add(&ts[n++], prefix, "weight", ST_F8_E4M3, 2, qw->out, qw->in, qw);
        add(&ts[n++], prefix, "weight_scale", ST_BF16, 2, qw->out, 1, qw);
        break;
    case QSCHEME_FP8:
        add(&ts[n++], prefix, "weight", ST_F8_E4M3, 2, qw->out, qw->in, qw);
        add(&ts[n++], prefix, "weight_scale", ST_BF16, 1, 1, 0, qw);
        add(&ts[n++], prefix, "input_scale", ST_BF16, 1, 1, 0, qw);
        break;
    default:
        break;
    }
    return n;
}

int ctensors_fill(const struct st_wtensor *t, void *dst, size_t nbytes, char **err)
{
    const struct qweight *qw = t->user;
    const char *suffix = strrchr(t->name, '.');
    suffix = suffix ? suffix + 1 : t->name;
    if (!strcmp(suffix, "weight_packed")) {
        ctensors_pack(qw->q, qw->out, qw->in, qw->bits, dst);
    } else if (!strcmp(suffix, "weight_scale")) {
        memcpy(dst, qw->scale, nbytes);
    } else if (!strcmp(suffix, "weight_shape")) {
        int64_t s[2] = { qw->out, qw->in };
        memcpy(dst, s, sizeof(s));
    } else if (!strcmp(suffix, "weight_zero_point")) {
        ctensors_pack_dim0(qw->zp, qw->out, qw->ngroups, qw->bits, dst);
    } else if (!strcmp(suffix, "weight_g_idx")) {
        memcpy(dst, qw->g_idx, nbytes);
    } else if (!strcmp(suffix, "weight")) {
        memcpy(dst, qw->is_fp8 ? (const void *)qw->fp8 : (const void *)qw->q, nbytes);
    } else if (!strcmp(suffix, "input_scale")) {
        uint16_t s = quant_f32_to_bf16(qw->input_scale);
        memcpy(dst, &s, 2);
    } else {
        err_setf(err, "ctensors_fill: unknown tensor '%s'", t->name);
        return -EINVAL;
    }
    return 0;
}
