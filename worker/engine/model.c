/*
 * model: loading a checkpoint of one of the decoder families (worker/engine/family.h) into the
 * engine, the KV cache, weight access and replacement, layer removal and saving. The forward pass
 * lives in model_fwd.c.
 *
 * Dense linears borrow their BF16/F16/F32 data straight from the mmapped safetensors (no copy,
 * no conversion: the kernels widen BF16 on the fly); replaced weights are owned by the linear.
 * Quantized linears compute from their codes (kernels/matmul.h INT / INT4 / FP8 formats) and
 * borrow the arrays of the layer's struct qweight, which lives exactly as long as the linear.
 * Norm weights are small and are converted to fp32 copies at load so they can be edited.
 */
#include "worker/engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/util.h"
#include "kernels/par.h"
#include "worker/engine/ctensors.h"
#include "worker/engine/family.h"
#include "worker/engine/model_internal.h"

static const char *lin_names[MODEL_LIN_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

static const char *norm_names[MODEL_NORM_LAYER_COUNT] = {
    "self_attn.q_norm",           "self_attn.k_norm", "post_attention_layernorm",
    "post_feedforward_layernorm", "input_layernorm",
};

/* Whether the family has per-layer norm slot k. */
static int has_norm(const struct family *f, int k)
{
    if (k == MODEL_NORM_Q || k == MODEL_NORM_K)
        return f->qk_norm;
    return k == f->norm_pre_attn || k == f->norm_post_attn || k == f->norm_pre_mlp ||
           k == f->norm_post_mlp;
}

static int norm_len(const struct config *c, int k)
{
    return k <= MODEL_NORM_K ? c->head_dim : c->hidden_size;
}

const char *model_lin_name(enum model_lin w)
{
    return (int)w >= 0 && w < MODEL_LIN_COUNT ? lin_names[w] : "?";
}

/* out/in of each linear for this config. */
static void lin_shape(const struct config *c, enum model_lin w, int *out, int *in)
{
    int H = c->hidden_size, I = c->intermediate_size;
    int qd = c->num_attention_heads * c->head_dim, kd = c->num_key_value_heads * c->head_dim;
    switch (w) {
    case MODEL_LIN_Q:
        *out = qd, *in = H;
        break;
    case MODEL_LIN_K:
    case MODEL_LIN_V:
        *out = kd, *in = H;
        break;
    case MODEL_LIN_O:
        *out = H, *in = qd;
        break;
    case MODEL_LIN_GATE:
    case MODEL_LIN_UP:
        *out = I, *in = H;
        break;
    case MODEL_LIN_DOWN:
    default:
        *out = H, *in = I;
        break;
    }
}

static int kern_dtype_of(enum st_dtype dt, enum kern_dtype *out)
{
    switch (dt) {
    case ST_BF16:
        *out = KERN_BF16;
        return 0;
    case ST_F16:
        *out = KERN_F16;
        return 0;
    case ST_F32:
        *out = KERN_F32;
        return 0;
    default:
        return -1;
    }
}

static const struct st_tensor *need(const struct model *m, const char *name, int64_t d0, int64_t d1,
                                    char **err)
{
    const struct st_tensor *t = st_dir_find(m->st, name);
    if (!t) {
        char *packed = xasprintf("%.*s_packed", (int)strlen(name), name);
        int quant = st_dir_find(m->st, packed) != NULL;
        free(packed);
        if (quant)
            err_setf(err,
                     "%s: tensor '%s' is stored quantized (weight_packed); quantized "
                     "checkpoints are not supported by the engine yet",
                     m->dir, name);
        else
            err_setf(err, "%s: missing tensor '%s'", m->dir, name);
        return NULL;
    }
    int ok = d1 < 0 ? t->ndim == 1 && t->shape[0] == d0
                    : t->ndim == 2 && t->shape[0] == d0 && t->shape[1] == d1;
    if (!ok) {
        if (d1 < 0)
            err_setf(err, "%s: tensor '%s' should have shape [%lld]", m->dir, name, (long long)d0);
        else
            err_setf(err, "%s: tensor '%s' should have shape [%lld, %lld]", m->dir, name,
                     (long long)d0, (long long)d1);
        return NULL;
    }
    return t;
}

static int load_dense(struct model *m, const char *name, int out, int in, struct linear *L,
                      char **err)
{
    const struct st_tensor *t = need(m, name, out, in, err);
    if (!t)
        return -EINVAL;
    enum kern_dtype kd;
    if (kern_dtype_of(t->dtype, &kd) != 0) {
        err_setf(err,
                 "%s: tensor '%s' has dtype %s; the engine computes from BF16, F16 or "
                 "F32 weights (quantized formats are not supported yet)",
                 m->dir, name, st_dtype_name(t->dtype));
        return -EINVAL;
    }
    linear_init_dense(L, out, in, kd, t->data);
    return 0;
}

static float *load_vec(struct model *m, const char *name, int n, char **err)
{
    const struct st_tensor *t = need(m, name, n, -1, err);
    if (!t)
        return NULL;
    if (t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F32) {
        err_setf(err, "%s: tensor '%s' has dtype %s, expected a float type", m->dir, name,
                 st_dtype_name(t->dtype));
        return NULL;
    }
    float *v = xcalloc((size_t)n, sizeof(float));
    st_tensor_to_f32(t, v);
    return v;
}

static void drop_quant(struct model_layer *L, int w)
{
    if (L->quant[w]) {
        qweight_release(L->quant[w]);
        free(L->quant[w]);
        L->quant[w] = NULL;
    }
}

static void layer_release(struct model_layer *L)
{
    for (int i = 0; i < MODEL_LIN_COUNT; i++) {
        linear_release(&L->lin[i]);
        drop_quant(L, i);
    }
    for (int i = 0; i < MODEL_NORM_LAYER_COUNT; i++)
        free(L->norm[i]);
    for (int i = 0; i < MODEL_LIN_COUNT; i++)
        free(L->bias[i]);
    memset(L, 0, sizeof(*L));
}

void model_free(struct model *m)
{
    if (!m)
        return;
    for (int l = 0; l < m->n_layers; l++)
        layer_release(&m->layers[l]);
    free(m->layers);
    linear_release(&m->embed);
    if (!m->tied)
        linear_release(&m->lm_head);
    free(m->final_norm);
    free(m->inv_freq);
    model__ws_free(m);
    model__gpu_drop(m);
    st_dir_free(m->st);
    config_release(&m->cfg);
    free(m->dir);
    free(m);
}

/* Re-derives per-layer flags and derived constants from the config. */
static void apply_config(struct model *m)
{
    const struct config *c = &m->cfg;
    for (int l = 0; l < m->n_layers; l++) {
        m->layers[l].rope = config_layer_rope(c, l);
        m->layers[l].window = config_layer_window(c, l);
    }
    free(m->inv_freq);
    m->inv_freq = xcalloc((size_t)c->head_dim / 2 + 1, sizeof(float));
    config_rope_inv_freq(c, m->inv_freq);
    m->eps = (float)c->rms_norm_eps;
    /* transformers: scaling = head_dim ** -0.5 (a Python double), used on fp32 scores. */
    m->attn_scale = (float)pow((double)c->head_dim, -0.5);
    /* MiniCPM, as its modeling code: embeddings * scale_emb, each branch * (scale_depth /
     * sqrt(num_hidden_layers)), hidden / (hidden_size / dim_model_base) before the head. */
    m->embed_scale = (float)c->scale_emb;
    m->res_scale = (float)(c->scale_depth / sqrt((double)c->num_hidden_layers));
    m->head_div = (float)((double)c->hidden_size / c->dim_model_base);
}

int model_load(struct model **out, const char *dir, const struct model_opts *opts, char **err)
{
    struct ctensors_cfg qcfg;
    int quantized = 0;
    *out = NULL;
    memset(&qcfg, 0, sizeof(qcfg));
    struct model *m = xcalloc(1, sizeof(*m));
    m->dir = xstrdup(dir);
    m->impl = opts ? opts->impl : KERN_IMPL_CPU;
    m->emulate_bf16 = opts ? opts->emulate_bf16 : 0;
    if (opts && opts->nthreads > 0)
        par_set_nthreads(opts->nthreads);
    char *cpath = path_join(dir, "config.json");
    int rc = config_load(&m->cfg, cpath, err);
    free(cpath);
    if (rc != 0)
        goto fail;
    rc = st_dir_open(&m->st, dir, err);
    if (rc != 0)
        goto fail;
    const struct config *c = &m->cfg;
    rc = -EINVAL;
    if (load_dense(m, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, &m->embed, err))
        goto fail;
    m->tied = c->tie_word_embeddings;
    if (m->tied) {
        m->lm_head = m->embed;
        m->lm_head.owned = NULL;
    } else if (load_dense(m, "lm_head.weight", c->vocab_size, c->hidden_size, &m->lm_head, err)) {
        goto fail;
    }
    m->final_norm = load_vec(m, "model.norm.weight", c->hidden_size, err);
    if (!m->final_norm)
        goto fail;
    m->layers = xcalloc((size_t)c->num_hidden_layers, sizeof(*m->layers));
    m->n_layers = c->num_hidden_layers;
    {
        const cJSON *qc = cJSON_GetObjectItemCaseSensitive(c->raw, "quantization_config");
        if (cJSON_IsObject(qc)) {
            if (ctensors_cfg_parse(qc, &qcfg, err) < 0)
                goto fail;
            quantized = 1;
        }
    }
    for (int l = 0; l < m->n_layers; l++) {
        struct model_layer *L = &m->layers[l];
        L->src_index = l;
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            int o, i, r;
            const struct st_tensor *dense;
            lin_shape(c, (enum model_lin)w, &o, &i);
            char *name = xasprintf("model.layers.%d.%s.weight", l, lin_names[w]);
            dense = st_dir_find(m->st, name);
            if (!quantized || (dense && (dense->dtype == ST_BF16 || dense->dtype == ST_F16 ||
                                         dense->dtype == ST_F32))) {
                r = load_dense(m, name, o, i, &L->lin[w], err);
            } else {
                struct qweight qw;
                char *prefix = xasprintf("model.layers.%d.%s", l, lin_names[w]);
                r = ctensors_read(m->st, prefix, &qcfg, o, i, &qw, err);
                free(prefix);
                if (r == 0)
                    r = model_linear_set_quant(m, l, (enum model_lin)w, &qw, err);
            }
            free(name);
            if (r)
                goto fail;
        }
        for (int k = 0; k < MODEL_NORM_LAYER_COUNT; k++) {
            if (!has_norm(c->fam, k))
                continue;
            char *name = xasprintf("model.layers.%d.%s.weight", l, norm_names[k]);
            L->norm[k] = load_vec(m, name, norm_len(c, k), err);
            free(name);
            if (!L->norm[k])
                goto fail;
        }
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            int o, i;
            if (!(c->bias_mask & (1u << w)))
                continue;
            lin_shape(c, (enum model_lin)w, &o, &i);
            char *name = xasprintf("model.layers.%d.%s.bias", l, lin_names[w]);
            L->bias[w] = load_vec(m, name, o, err);
            free(name);
            if (!L->bias[w])
                goto fail;
        }
    }
    apply_config(m);
    ctensors_cfg_release(&qcfg);
    *out = m;
    return 0;
fail:
    ctensors_cfg_release(&qcfg);
    model_free(m);
    return rc ? rc : -EINVAL;
}

/* ---- KV cache ---------------------------------------------------------------------------- */

struct model_kv *model_kv_new(const struct model *m, int cap)
{
    if (cap < 1)
        cap = 1;
    struct model_kv *kv = xcalloc(1, sizeof(*kv));
    kv->n_layers = m->n_layers;
    kv->n_kv_heads = m->cfg.num_key_value_heads;
    kv->head_dim = m->cfg.head_dim;
    kv->cap = cap;
    kv->len = xcalloc((size_t)kv->n_layers + 1, sizeof(int));
    size_t n = (size_t)kv->n_layers * kv->n_kv_heads * (size_t)cap * kv->head_dim;
    kv->k = xmalloc(n * sizeof(float) + 1);
    kv->v = xmalloc(n * sizeof(float) + 1);
    return kv;
}

void model_kv_free(struct model_kv *kv)
{
    if (!kv)
        return;
    free(kv->len);
    free(kv->k);
    free(kv->v);
    free(kv);
}

void model_kv_reset(struct model_kv *kv)
{
    for (int l = 0; l < kv->n_layers; l++)
        kv->len[l] = 0;
}

/* ---- weights ----------------------------------------------------------------------------- */

static int check_lw(const struct model *m, int l, enum model_lin w, char **err)
{
    if (l < 0 || l >= m->n_layers || (int)w < 0 || w >= MODEL_LIN_COUNT) {
        err_setf(err, "no linear %d in layer %d (the model has %d layers)", (int)w, l, m->n_layers);
        return -EINVAL;
    }
    return 0;
}

struct linear *model_linear(struct model *m, int l, enum model_lin w)
{
    if (check_lw(m, l, w, NULL))
        return NULL;
    model__gpu_drop(m); /* the caller may edit it */
    return &m->layers[l].lin[w];
}

int model_linear_get_f32(const struct model *m, int l, enum model_lin w, float *out, char **err)
{
    if (check_lw(m, l, w, err))
        return -EINVAL;
    int rc = linear_to_f32(&m->layers[l].lin[w], out);
    if (rc)
        err_setf(err, "layer %d %s: this weight format has no fp32 decoder", l, lin_names[w]);
    return rc;
}

int model_linear_set_f32(struct model *m, int l, enum model_lin w, const float *wts,
                         enum kern_dtype store, char **err)
{
    model__gpu_drop(m); /* the device copy would go stale */
    if (check_lw(m, l, w, err))
        return -EINVAL;
    struct linear *L = &m->layers[l].lin[w];
    int out = L->out, in = L->in;
    size_t n = (size_t)out * in;
    void *data = xmalloc(n * kern_dtype_size(store) + 1);
    switch (store) {
    case KERN_F32:
        memcpy(data, wts, n * sizeof(float));
        break;
    case KERN_BF16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)data)[i] = kern_f32_to_bf16(wts[i]);
        break;
    case KERN_F16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)data)[i] = kern_f32_to_f16(wts[i]);
        break;
    }
    linear_release(L);
    linear_init_dense_take(L, out, in, store, data);
    drop_quant(&m->layers[l], w);
    return 0;
}

/*
 * The kernel format of a quantized weight: FP8 bytes as they are; 4-bit codes packed two per
 * byte (INT4: half the bytes of int8 codes, and faster to stream; docs/engine.md "Quantized
 * linears"); 8-bit codes as int8 (INT). INT and FP8 borrow the qweight's code array, INT4 owns
 * its packed copy; scales, zero points and g_idx are always borrowed from the qweight, which
 * the model keeps exactly as long as the linear (every path that replaces or frees the linear
 * also drops the qweight, and model_keep_layers moves both together).
 */
static int quant_linear_init(struct linear *L, const struct qweight *q)
{
    struct linear_qsrc src = {
        .out = q->out,
        .in = q->in,
        .bits = q->bits,
        .q = q->is_fp8 ? NULL : q->q,
        .fp8 = q->is_fp8 ? q->fp8 : NULL,
        .scale = q->scale,
        .zp = q->is_fp8 ? NULL : q->zp,
        .group_size = q->group_size,
        .g_idx = q->g_idx,
    };
    if (q->is_fp8)
        return linear_init_quant(L, &src, LINEAR_FMT_FP8);
    if (q->bits <= 4 && linear_init_quant(L, &src, LINEAR_FMT_INT4) == 0)
        return 0;
    /* Codes outside the nibble range (not produced by this project) stay int8. */
    return linear_init_quant(L, &src, LINEAR_FMT_INT);
}

int model_linear_set_quant(struct model *m, int l, enum model_lin w, struct qweight *take,
                           char **err)
{
    model__gpu_drop(m); /* the device copy would go stale */
    struct linear nl;
    int out, in, rc;
    if (check_lw(m, l, w, err))
        return -EINVAL;
    lin_shape(&m->cfg, w, &out, &in);
    if (take->out != out || take->in != in) {
        err_setf(err, "layer %d %s: quantized weight is [%d, %d], expected [%d, %d]", l,
                 lin_names[w], take->out, take->in, out, in);
        return -EINVAL;
    }
    rc = quant_linear_init(&nl, take);
    if (rc) {
        err_setf(err, "layer %d %s: quantized weight is inconsistent (%s, %d bits, group %d)", l,
                 lin_names[w], qscheme_name(take->scheme), take->bits, take->group_size);
        return rc;
    }
    /* The linear borrows take's arrays; they move (pointers unchanged) into the model's copy. */
    linear_release(&m->layers[l].lin[w]);
    m->layers[l].lin[w] = nl;
    drop_quant(&m->layers[l], w);
    m->layers[l].quant[w] = xmalloc(sizeof(struct qweight));
    *m->layers[l].quant[w] = *take;
    memset(take, 0, sizeof(*take));
    return 0;
}

const struct qweight *model_linear_quant(const struct model *m, int l, enum model_lin w)
{
    if (l < 0 || l >= m->n_layers || (int)w < 0 || w >= MODEL_LIN_COUNT)
        return NULL;
    return m->layers[l].quant[w];
}

int model_quantized_count(const struct model *m)
{
    int n = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            n += m->layers[l].quant[w] != NULL;
    return n;
}

void model_module_name(int l, enum model_lin w, char *buf, size_t n)
{
    snprintf(buf, n, "model.layers.%d.%s", l, lin_names[w]);
}

int model_linear_replace(struct model *m, int l, enum model_lin w, struct linear *take, char **err)
{
    model__gpu_drop(m); /* the device copy would go stale */
    if (check_lw(m, l, w, err))
        return -EINVAL;
    struct linear *L = &m->layers[l].lin[w];
    if (take->out != L->out || take->in != L->in) {
        err_setf(err, "layer %d %s: replacement is [%d, %d], expected [%d, %d]", l, lin_names[w],
                 take->out, take->in, L->out, L->in);
        return -EINVAL;
    }
    linear_release(L);
    *L = *take;
    memset(take, 0, sizeof(*take));
    drop_quant(&m->layers[l], w);
    return 0;
}

float *model_norm(struct model *m, int l, enum model_norm which, int *n)
{
    model__gpu_drop(m); /* the device copy would go stale */
    if (which == MODEL_NORM_FINAL) {
        if (n)
            *n = m->cfg.hidden_size;
        return m->final_norm;
    }
    if (l < 0 || l >= m->n_layers || (int)which < 0 || which >= MODEL_NORM_LAYER_COUNT)
        return NULL;
    if (n)
        *n = norm_len(&m->cfg, which);
    return m->layers[l].norm[which];
}

float *model_bias(struct model *m, int l, enum model_lin w, int *n)
{
    if (check_lw(m, l, w, NULL) || !m->layers[l].bias[w])
        return NULL;
    model__gpu_drop(m); /* the caller may edit it */
    if (n)
        *n = m->layers[l].lin[w].out;
    return m->layers[l].bias[w];
}

int model_keep_layers(struct model *m, const int *keep, int n, char **err)
{
    model__gpu_drop(m); /* the device copy would go stale */
    int rc = config_keep_layers(&m->cfg, keep, n, err);
    if (rc)
        return rc;
    struct model_layer *nl = xcalloc((size_t)n, sizeof(*nl));
    char *kept = xcalloc((size_t)m->n_layers + 1, 1);
    for (int i = 0; i < n; i++) {
        nl[i] = m->layers[keep[i]];
        kept[keep[i]] = 1;
    }
    for (int l = 0; l < m->n_layers; l++)
        if (!kept[l])
            layer_release(&m->layers[l]);
    free(kept);
    free(m->layers);
    m->layers = nl;
    m->n_layers = n;
    apply_config(m);
    return 0;
}

/* ---- saving ------------------------------------------------------------------------------ */

enum save_src {
    SAVE_LINEAR,
    SAVE_VEC,
    SAVE_QUANT,
};

struct save_item {
    enum save_src kind;
    const struct linear *lin;
    const float *vec;
    const struct qweight *q;
};

struct save_ctx {
    enum st_dtype dtype;
};

static void put_f32_as(enum st_dtype dt, const float *src, void *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (dt) {
        case ST_BF16:
            ((uint16_t *)dst)[i] = kern_f32_to_bf16(src[i]);
            break;
        case ST_F16:
            ((uint16_t *)dst)[i] = kern_f32_to_f16(src[i]);
            break;
        default:
            ((float *)dst)[i] = src[i];
            break;
        }
    }
}

static int save_fill(void *arg, const struct st_wtensor *t, void *dst, size_t nbytes, char **err)
{
    const struct save_item *it = t->user;
    (void)arg;
    if (it->kind == SAVE_QUANT) {
        struct st_wtensor tq = *t;
        tq.user = it->q;
        return ctensors_fill(&tq, dst, nbytes, err);
    }
    if (it->kind == SAVE_VEC) {
        put_f32_as(t->dtype, it->vec, dst, (size_t)t->shape[0]);
        return 0;
    }
    const struct linear *L = it->lin;
    size_t n = (size_t)L->out * L->in;
    if (L->fmt == LINEAR_FMT_DENSE && ((L->dtype == KERN_BF16 && t->dtype == ST_BF16) ||
                                       (L->dtype == KERN_F16 && t->dtype == ST_F16) ||
                                       (L->dtype == KERN_F32 && t->dtype == ST_F32))) {
        memcpy(dst, L->w, n * kern_dtype_size(L->dtype));
        return 0;
    }
    float *row = xmalloc(sizeof(float) * (size_t)L->in + 1);
    if (L->fmt != LINEAR_FMT_DENSE) {
        free(row);
        err_setf(err, "tensor '%s': saving this weight format is not supported yet", t->name);
        return -ENOSYS;
    }
    size_t esz = kern_dtype_size(L->dtype), osz = st_dtype_size(t->dtype);
    for (int r = 0; r < L->out; r++) {
        kern_row_to_f32(L->dtype, (const char *)L->w + (size_t)r * L->in * esz, row, (size_t)L->in);
        put_f32_as(t->dtype, row, (char *)dst + (size_t)r * L->in * osz, (size_t)L->in);
    }
    free(row);
    return 0;
}

/*
 * The config to save: the model's, with a quantization_config that describes its quantized
 * linears (one scheme for all of them; the dense decoder linears and lm_head in `ignore`), or
 * without one when every linear is dense. vLLM fuses q/k/v and gate/up, so each set must be
 * all quantized or all dense.
 */
static int quant_config(const struct model *m, struct config *qc, char **err)
{
    const struct qweight *first = NULL;
    const char **ignore;
    char **names;
    int nign = 0, nq = 0;
    static const int fused[][3] = { { MODEL_LIN_Q, MODEL_LIN_K, MODEL_LIN_V },
                                    { MODEL_LIN_GATE, MODEL_LIN_UP, MODEL_LIN_UP } };
    config_copy(qc, &m->cfg);
    ignore = xcalloc((size_t)m->n_layers * MODEL_LIN_COUNT + 2, sizeof(char *));
    names = xcalloc((size_t)m->n_layers * MODEL_LIN_COUNT + 2, sizeof(char *));
    ignore[nign++] = "lm_head";
    for (int l = 0; l < m->n_layers; l++) {
        const struct model_layer *L = &m->layers[l];
        for (size_t f = 0; f < EXAQ_ARRAY_LEN(fused); f++) {
            bool q0 = L->quant[fused[f][0]] != NULL;
            for (int k = 1; k < 3; k++)
                if ((L->quant[fused[f][k]] != NULL) != q0) {
                    err_setf(err, "layer %d: %s and %s must be quantized alike (vLLM fuses them)",
                             l, lin_names[fused[f][0]], lin_names[fused[f][k]]);
                    goto fail;
                }
        }
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            const struct qweight *q = L->quant[w];
            if (!q) {
                names[nign] = xasprintf("model.layers.%d.%s", l, lin_names[w]);
                ignore[nign] = names[nign];
                nign++;
                continue;
            }
            nq++;
            if (!first) {
                first = q;
            } else if (q->scheme != first->scheme || q->group_size != first->group_size ||
                       (q->g_idx != NULL) != (first->g_idx != NULL)) {
                err_setf(err,
                         "layer %d %s: mixed quantization schemes in one model are not "
                         "supported (%s g%d vs %s g%d)",
                         l, lin_names[w], qscheme_name(q->scheme), q->group_size,
                         qscheme_name(first->scheme), first->group_size);
                goto fail;
            }
        }
    }
    if (nq) {
        char *json = ctensors_cfg_json(first, ignore, nign);
        int r = config_set_json(qc, "quantization_config", json);
        free(json);
        if (r < 0) {
            err_setf(err, "cannot set quantization_config");
            goto fail;
        }
    } else {
        config_delete(qc, "quantization_config");
    }
    for (int i = 0; i < nign; i++)
        free(names[i]);
    free(names);
    free(ignore);
    return 0;
fail:
    for (int i = 0; i < nign; i++)
        free(names[i]);
    free(names);
    free(ignore);
    config_release(qc);
    memset(qc, 0, sizeof(*qc));
    return -EINVAL;
}

static const char *aux_files[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
};

int model_save(const struct model *m, const char *dir, const struct model_save_opts *opts,
               char **err)
{
    struct model_save_opts o = { 0, ST_BF16, 1 };
    if (opts)
        o = *opts;
    if (o.dtype != ST_BF16 && o.dtype != ST_F16 && o.dtype != ST_F32) {
        err_setf(err, "model_save: dtype must be BF16, F16 or F32");
        return -EINVAL;
    }
    const struct config *c = &m->cfg;
    struct config qc;
    int per = MODEL_LIN_COUNT * (CTENSORS_MAX_TENSORS + 1) + MODEL_NORM_LAYER_COUNT;
    int cap = 3 + m->n_layers * per;
    struct st_wtensor *ts = xcalloc((size_t)cap, sizeof(*ts));
    struct save_item *items = xcalloc((size_t)cap, sizeof(*items));
    char **names = xcalloc((size_t)cap, sizeof(char *));
    int n = 0;
#define ADD_LIN(nm, L)                                                                             \
    do {                                                                                           \
        names[n] = (nm);                                                                           \
        ts[n].name = names[n];                                                                     \
        ts[n].dtype = o.dtype;                                                                     \
        ts[n].ndim = 2;                                                                            \
        ts[n].shape[0] = (L)->out;                                                                 \
        ts[n].shape[1] = (L)->in;                                                                  \
        items[n].kind = SAVE_LINEAR;                                                               \
        items[n].lin = (L);                                                                        \
        ts[n].user = &items[n];                                                                    \
        n++;                                                                                       \
    } while (0)
#define ADD_VEC(nm, v, len)                                                                        \
    do {                                                                                           \
        names[n] = (nm);                                                                           \
        ts[n].name = names[n];                                                                     \
        ts[n].dtype = o.dtype;                                                                     \
        ts[n].ndim = 1;                                                                            \
        ts[n].shape[0] = (len);                                                                    \
        items[n].kind = SAVE_VEC;                                                                  \
        items[n].vec = (v);                                                                        \
        ts[n].user = &items[n];                                                                    \
        n++;                                                                                       \
    } while (0)
    ADD_LIN(xstrdup("model.embed_tokens.weight"), &m->embed);
    for (int l = 0; l < m->n_layers; l++) {
        const struct model_layer *L = &m->layers[l];
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            if (L->quant[w]) {
                char *prefix = xasprintf("model.layers.%d.%s", l, lin_names[w]);
                int k = ctensors_tensors(L->quant[w], prefix, &ts[n]);
                for (int j = 0; j < k; j++) {
                    names[n + j] = (char *)ts[n + j].name;
                    items[n + j].kind = SAVE_QUANT;
                    items[n + j].q = L->quant[w];
                    ts[n + j].user = &items[n + j];
                }
                n += k;
                free(prefix);
            } else {
                ADD_LIN(xasprintf("model.layers.%d.%s.weight", l, lin_names[w]), &L->lin[w]);
            }
        }
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            if (L->bias[w])
                ADD_VEC(xasprintf("model.layers.%d.%s.bias", l, lin_names[w]), L->bias[w],
                        L->lin[w].out);
        for (int k = 0; k < MODEL_NORM_LAYER_COUNT; k++)
            if (L->norm[k])
                ADD_VEC(xasprintf("model.layers.%d.%s.weight", l, norm_names[k]), L->norm[k],
                        norm_len(c, k));
    }
    ADD_VEC(xstrdup("model.norm.weight"), m->final_norm, c->hidden_size);
    if (!m->tied)
        ADD_LIN(xstrdup("lm_head.weight"), &m->lm_head);
#undef ADD_LIN
#undef ADD_VEC
    struct save_ctx sc = { o.dtype };
    int rc = quant_config(m, &qc, err);
    if (rc == 0)
        rc = st_write_dir(dir, ts, n, o.max_shard_bytes, save_fill, &sc, err);
    if (rc == 0) {
        char *p = path_join(dir, "config.json");
        rc = config_write(&qc, p, err);
        free(p);
    }
    config_release(&qc);
    if (rc == 0 && o.copy_aux) {
        for (size_t i = 0; i < EXAQ_ARRAY_LEN(aux_files); i++) {
            char *src = path_join(m->dir, aux_files[i]);
            if (is_file(src)) {
                char *dst = path_join(dir, aux_files[i]);
                int r = file_copy(src, dst);
                if (r != 0 && rc == 0) {
                    err_setf(err, "cannot copy '%s' to '%s': %s", src, dst, strerror(-r));
                    rc = r;
                }
                free(dst);
            }
            free(src);
        }
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(items);
    free(ts);
    return rc;
}
