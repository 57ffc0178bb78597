/*
 * model_gpu: a device-resident copy of a model for KERN_IMPL_CUDA, used by model_nll (the ppl
 * stage's per-window pass). The op-by-op path (each kernel's host wrapper) copies every weight
 * and activation over PCIe per call; here the weights are uploaded once, the activations stay
 * on the device, and only the token embeddings go up and the per-token log-sum-exp and target
 * logits come down.
 *
 * It runs exactly the ops of worker/engine/model_fwd.c, in the same order, through the device table
 * (kernels/cuda.h): linears with cuBLAS in fp32 (BF16 and F16 widened exactly, INT/INT4/FP8
 * dequantized exactly), the q/k norms, RoPE, attention, the post norms, the residual adds,
 * SwiGLU, the final norm, the head and lse. Keys and values are produced per KV head (a row
 * slice of the k/v weights per head), which is the [kv head][position][head_dim] layout the
 * attention kernel reads; it changes only cuBLAS's summation order.
 *
 * Not covered (model__gpu_nll returns -ENOSYS and model_nll takes the op-by-op path): linears
 * with activation quantization (W8A8, FP8), and bf16 activation emulation.
 *
 * The copy is built on first use and dropped (model__gpu_drop) by every function that edits
 * the model's weights, norms or layers, and by model_free.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "kernels/matmul.h"
#include "worker/engine/family.h"
#include "worker/engine/model_internal.h"
#include "worker/engine/quant.h"

/* One linear on the device. */
struct glin {
    int quant;          /* 0: dense (dtype, w); 1: q */
    int out, in, dtype; /* dense */
    const void *w;      /* dense */
    struct cuda_qlin q; /* quantized */
};

struct model_gpu {
    const struct cuda_api *a;
    char *blk;        /* weights, norms and inv_freq */
    struct glin *lin; /* [n_layers][MODEL_LIN_COUNT] */
    struct glin head;
    float **norm; /* [n_layers][MODEL_NORM_LAYER_COUNT], NULL where the family has none */
    float *final_norm, *inv_freq;
    char *act; /* activations for act_T tokens */
    int act_T;
    float *x, *xn, *q, *k, *v, *att, *o, *g, *u, *lg, *lse;
};

#define GPU_ALIGN 256

/* The device-block layout: pass 1 (base == NULL) only sums the sizes; pass 2 hands out
 * pointers into base and uploads. */
struct layout {
    const struct cuda_api *a;
    char *base;
    size_t off;
    int rc;
};

static void *place(struct layout *lo, const void *src, size_t bytes)
{
    if (!src || bytes == 0)
        return NULL;
    size_t off = lo->off;
    lo->off += (bytes + GPU_ALIGN - 1) & ~(size_t)(GPU_ALIGN - 1);
    if (!lo->base)
        return NULL;
    void *d = lo->base + off;
    if (lo->rc == 0)
        lo->rc = lo->a->copy_h2d(d, src, bytes);
    return d;
}

static void place_linear(struct layout *lo, const struct linear *L, struct glin *g)
{
    memset(g, 0, sizeof(*g));
    size_t rows = (size_t)L->out;
    if (L->fmt == LINEAR_FMT_DENSE) {
        g->out = L->out;
        g->in = L->in;
        g->dtype = (int)L->dtype;
        g->w = place(lo, L->w, rows * (size_t)L->in * kern_dtype_size(L->dtype));
        return;
    }
    size_t nw =
        L->fmt == LINEAR_FMT_INT4 ? rows * linear_int4_row_bytes(L->in) : rows * (size_t)L->in;
    size_t ns = L->group_size == 0 ? 1 : rows * (size_t)L->ngroups;
    size_t ni = sizeof(int32_t) * (size_t)L->in;
    g->quant = 1;
    g->q = (struct cuda_qlin){ .fmt = (int)L->fmt,
                               .out = L->out,
                               .in = L->in,
                               .bits = L->bits,
                               .group_size = L->group_size,
                               .ngroups = L->ngroups };
    g->q.w = place(lo, L->w, nw);
    g->q.scale = place(lo, L->scale, ns * sizeof(uint16_t));
    g->q.zp = place(lo, L->zp, ns);
    g->q.g_idx = place(lo, L->g_idx, ni);
    g->q.pinv = place(lo, L->pinv, ni);
}

/* Rows r0..r0+n-1 of a linear (a KV head's slice of the k/v weights). */
static struct glin glin_rows(const struct glin *L, int r0, int n)
{
    struct glin s = *L;
    if (!L->quant) {
        s.w = (const char *)L->w + (size_t)r0 * L->in * kern_dtype_size((enum kern_dtype)L->dtype);
        s.out = n;
        return s;
    }
    size_t rb = L->q.fmt == CUDA_QFMT_INT4 ? linear_int4_row_bytes(L->q.in) : (size_t)L->q.in;
    s.q.w = (const char *)L->q.w + (size_t)r0 * rb;
    if (L->q.group_size != 0) {
        size_t so = (size_t)r0 * L->q.ngroups;
        s.q.scale = L->q.scale + so;
        s.q.zp = L->q.zp ? L->q.zp + so : NULL;
    }
    s.q.out = n;
    return s;
}

static int glin_fwd(const struct cuda_api *a, float *y, const float *x, int T, const struct glin *L)
{
    if (L->quant)
        return a->qmatmul(y, x, T, &L->q, 0);
    return a->matmul(y, x, T, L->out, L->in, L->dtype, L->w, 0);
}

void model__gpu_drop(struct model *m)
{
    struct model_gpu *g = m ? m->gpu : NULL;
    if (!g)
        return;
    g->a->mem_free(g->act);
    g->a->mem_free(g->blk);
    free(g->lin);
    free(g->norm);
    free(g);
    m->gpu = NULL;
    m->gpu_off = 0;
}

/* Uploads the weights; -ENOSYS when this model cannot run device-resident. */
static int gpu_build(struct model *m, char **err)
{
    const struct cuda_api *a = cuda_api_get(NULL);
    if (!a) /* -ENOSYS leaves *err alone: model_nll goes on op by op */
        return -ENOSYS;
    if (m->emulate_bf16)
        return -ENOSYS;
    /* The device table has no bias add and no scaling op: biased linears (qwen2) and
     * MiniCPM's scalings take the op-by-op path. */
    if (m->embed_scale != 1.0f || m->res_scale != 1.0f || m->head_div != 1.0f)
        return -ENOSYS;
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            if (m->layers[l].bias[w])
                return -ENOSYS;
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            if (m->layers[l].quant[w] && m->layers[l].quant[w]->act != QACT_NONE)
                return -ENOSYS;
    const struct config *c = &m->cfg;
    const int NN = MODEL_NORM_LAYER_COUNT;
    struct model_gpu *g = xcalloc(1, sizeof(*g));
    g->a = a;
    g->lin = xcalloc((size_t)m->n_layers * MODEL_LIN_COUNT + 1, sizeof(*g->lin));
    g->norm = xcalloc((size_t)m->n_layers * NN + 1, sizeof(*g->norm));
    struct layout lo = { a, NULL, 0, 0 };
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            void *p = NULL;
            int rc = a->mem_alloc(&p, lo.off);
            if (rc) {
                err_setf(err, "cannot hold the model on the GPU (%zu MB): %s", lo.off >> 20,
                         a->last_error());
                free(g->lin);
                free(g->norm);
                free(g);
                return rc;
            }
            g->blk = p;
            lo.base = p;
            lo.off = 0;
        }
        for (int l = 0; l < m->n_layers; l++) {
            for (int w = 0; w < MODEL_LIN_COUNT; w++)
                place_linear(&lo, &m->layers[l].lin[w], &g->lin[(size_t)l * MODEL_LIN_COUNT + w]);
            for (int k = 0; k < NN; k++) {
                size_t n = k <= MODEL_NORM_K ? (size_t)c->head_dim : (size_t)c->hidden_size;
                g->norm[(size_t)l * NN + k] = place(&lo, m->layers[l].norm[k], n * sizeof(float));
            }
        }
        place_linear(&lo, &m->lm_head, &g->head);
        g->final_norm = place(&lo, m->final_norm, sizeof(float) * (size_t)c->hidden_size);
        g->inv_freq = place(&lo, m->inv_freq, sizeof(float) * (size_t)(c->head_dim / 2));
    }
    m->gpu = g;
    if (lo.rc) {
        err_setf(err, "uploading the model to the GPU: %s", a->last_error());
        model__gpu_drop(m);
        return lo.rc;
    }
    return 0;
}

/* The activation arena for T tokens. */
static int gpu_reserve(struct model_gpu *g, const struct config *c, int T, char **err)
{
    if (g->act_T >= T)
        return 0;
    size_t t = (size_t)T, H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim;
    size_t kd = (size_t)c->num_key_value_heads * c->head_dim;
    size_t sizes[11] = { t * H,  t * H, t * qd, t * kd, t * kd,
                         t * qd, t * H, t * I,  t * I,  t * (size_t)c->vocab_size,
                         t };
    float **ptrs[11] = { &g->x, &g->xn, &g->q, &g->k,  &g->v,  &g->att,
                         &g->o, &g->g,  &g->u, &g->lg, &g->lse };
    size_t total = 0;
    for (int i = 0; i < 11; i++)
        total += (sizeof(float) * sizes[i] + GPU_ALIGN - 1) & ~(size_t)(GPU_ALIGN - 1);
    g->a->mem_free(g->act);
    g->act = NULL;
    g->act_T = 0;
    void *p = NULL;
    int rc = g->a->mem_alloc(&p, total);
    if (rc) {
        err_setf(err, "cannot allocate %zu MB of activations on the GPU for %d tokens: %s",
                 total >> 20, T, g->a->last_error());
        return rc;
    }
    g->act = p;
    g->act_T = T;
    size_t off = 0;
    for (int i = 0; i < 11; i++) {
        *ptrs[i] = (float *)(g->act + off);
        off += (sizeof(float) * sizes[i] + GPU_ALIGN - 1) & ~(size_t)(GPU_ALIGN - 1);
    }
    return 0;
}

#define GPU_TRY(call, what)                                                                        \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (rc) {                                                                                  \
            err_setf(err, "%s on the GPU: %s", what, a->last_error());                             \
            return rc;                                                                             \
        }                                                                                          \
    } while (0)

static int gpu_layer(struct model *m, int l, int T, char **err)
{
    struct model_gpu *g = m->gpu;
    const struct cuda_api *a = g->a;
    const struct config *c = &m->cfg;
    const struct model_layer *L = &m->layers[l];
    const struct glin *gl = &g->lin[(size_t)l * MODEL_LIN_COUNT];
    float *const *nw = &g->norm[(size_t)l * MODEL_NORM_LAYER_COUNT];
    const struct family *f = c->fam;
    int H = c->hidden_size, I = c->intermediate_size, nh = c->num_attention_heads;
    int nkv = c->num_key_value_heads, hd = c->head_dim, rc;
    size_t kvh = (size_t)T * hd; /* one KV head's block */

    /* The family row's norm slots, as in model_fwd.c. */
    const float *in = g->x;
    if (f->norm_pre_attn >= 0) {
        GPU_TRY(a->rmsnorm(g->xn, g->x, nw[f->norm_pre_attn], T, H, m->eps), "input_layernorm");
        in = g->xn;
    }
    GPU_TRY(glin_fwd(a, g->q, in, T, &gl[MODEL_LIN_Q]), "q_proj");
    for (int h = 0; h < nkv; h++) {
        struct glin ks = glin_rows(&gl[MODEL_LIN_K], h * hd, hd);
        struct glin vs = glin_rows(&gl[MODEL_LIN_V], h * hd, hd);
        GPU_TRY(glin_fwd(a, g->k + h * kvh, in, T, &ks), "k_proj");
        GPU_TRY(glin_fwd(a, g->v + h * kvh, in, T, &vs), "v_proj");
    }
    if (f->qk_norm) {
        GPU_TRY(a->rmsnorm(g->q, g->q, nw[MODEL_NORM_Q], T * nh, hd, m->eps), "q_norm");
        GPU_TRY(a->rmsnorm(g->k, g->k, nw[MODEL_NORM_K], T * nkv, hd, m->eps), "k_norm");
    }
    if (L->rope) {
        GPU_TRY(a->rope(g->q, T, nh, hd, 0, g->inv_freq, 0), "rope");
        for (int h = 0; h < nkv; h++)
            GPU_TRY(a->rope(g->k + h * kvh, T, 1, hd, 0, g->inv_freq, 0), "rope");
    }
    struct cuda_attn at = {
        .T = T,
        .n_heads = nh,
        .n_kv_heads = nkv,
        .head_dim = hd,
        .q = g->q,
        .k = g->k,
        .v = g->v,
        .kv_cap = T,
        .q_off = 0,
        .window = L->window,
        .scale = m->attn_scale,
        .out = g->att,
    };
    GPU_TRY(a->attention(&at), "attention");
    GPU_TRY(glin_fwd(a, g->o, g->att, T, &gl[MODEL_LIN_O]), "o_proj");
    if (f->norm_post_attn >= 0)
        GPU_TRY(a->rmsnorm(g->o, g->o, nw[f->norm_post_attn], T, H, m->eps), "post_attention_norm");
    GPU_TRY(a->add(g->x, g->o, (size_t)T * H), "residual add");
    in = g->x;
    if (f->norm_pre_mlp >= 0) {
        GPU_TRY(a->rmsnorm(g->xn, g->x, nw[f->norm_pre_mlp], T, H, m->eps),
                "post_attention_layernorm");
        in = g->xn;
    }
    GPU_TRY(glin_fwd(a, g->g, in, T, &gl[MODEL_LIN_GATE]), "gate_proj");
    GPU_TRY(glin_fwd(a, g->u, in, T, &gl[MODEL_LIN_UP]), "up_proj");
    GPU_TRY(a->swiglu(g->g, g->g, g->u, (size_t)T * I), "swiglu");
    GPU_TRY(glin_fwd(a, g->o, g->g, T, &gl[MODEL_LIN_DOWN]), "down_proj");
    if (f->norm_post_mlp >= 0)
        GPU_TRY(a->rmsnorm(g->o, g->o, nw[f->norm_post_mlp], T, H, m->eps),
                "post_feedforward_norm");
    GPU_TRY(a->add(g->x, g->o, (size_t)T * H), "residual add");
    return 0;
}

int model__gpu_nll(struct model *m, const int32_t *ids, int n, float *nll, char **err)
{
    if (m->gpu_off)
        return -ENOSYS;
    int rc;
    if (!m->gpu && (rc = gpu_build(m, err)) != 0) {
        if (rc == -ENOSYS)
            m->gpu_off = 1;
        return rc;
    }
    struct model_gpu *g = m->gpu;
    const struct cuda_api *a = g->a;
    const struct config *c = &m->cfg;
    int T = n - 1, H = c->hidden_size, V = c->vocab_size;
    if ((rc = gpu_reserve(g, c, T, err)))
        return rc;
    /* The embedding is a table lookup: gathered on the host, one upload. */
    model__ws_reserve(m, T);
    if ((rc = model_embed(m, ids, T, m->ws->x, err)))
        return rc;
    GPU_TRY(a->copy_h2d(g->x, m->ws->x, sizeof(float) * (size_t)T * H), "embedding upload");
    for (int l = 0; l < m->n_layers; l++)
        if ((rc = gpu_layer(m, l, T, err)))
            return rc;
    GPU_TRY(a->rmsnorm(g->x, g->x, g->final_norm, T, H, m->eps), "final norm");
    GPU_TRY(glin_fwd(a, g->lg, g->x, T, &g->head), "lm_head");
    GPU_TRY(a->lse(g->lse, g->lg, T, V), "lse");
    float *lsev = xmalloc(sizeof(float) * (size_t)T);
    rc = a->copy_d2h(lsev, g->lse, sizeof(float) * (size_t)T);
    for (int t = 0; t < T && rc == 0; t++) {
        float tl;
        rc = a->copy_d2h(&tl, g->lg + (size_t)t * V + ids[t + 1], sizeof(float));
        nll[t] = lsev[t] - tl;
    }
    free(lsev);
    if (rc)
        err_setf(err, "reading the logits from the GPU: %s", a->last_error());
    return rc;
}
