/*
 * model_fwd: the forward pass of every family (worker/engine/family.h) (spec sections 1.3-1.5):
 * embedding, the per-layer block with hooks, final norm and head, next-token NLLs and greedy
 * decoding. Every heavy step is a kernel dispatch (the kernels/ headers) on m->impl; this file only
 * moves rows around.
 *
 * With m->emulate_bf16 the activations are rounded to bf16 where transformers' bf16 forward
 * rounds them (projection outputs, q/k norms (normalised value, then the weight product), RoPE
 * with bf16 cos/sin, attention output, o_proj, post norms, residual adds, gate/up, silu and the
 * gate*up product, down_proj, final norm, logits). Attention probabilities stay fp32. This
 * mode exists to show where the differences to the golden data come from (docs/engine.md).
 */
#include "worker/engine/model.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/attention.h"
#include "kernels/lse.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "worker/engine/family.h"
#include "worker/engine/model_internal.h"

#define NLL_CHUNK 64 /* head rows per chunk in model_nll */

void model__ws_free(struct model *m)
{
    struct model_ws *w = m->ws;
    if (!w)
        return;
    free(w->q);
    free(w->k);
    free(w->v);
    free(w->att);
    free(w->o);
    free(w->g);
    free(w->u);
    free(w->kl);
    free(w->vl);
    free(w->xn);
    free(w->x);
    free(w->logits);
    free(w->xq);
    free(w);
    m->ws = NULL;
}

void model__ws_reserve(struct model *m, int rows)
{
    if (m->ws && m->ws->rows >= rows)
        return;
    size_t logits_cap = m->ws ? m->ws->logits_cap : 0;
    float *logits = m->ws ? m->ws->logits : NULL;
    if (m->ws)
        m->ws->logits = NULL;
    model__ws_free(m);
    const struct config *c = &m->cfg;
    size_t r = (size_t)rows;
    size_t qd = (size_t)c->num_attention_heads * c->head_dim;
    size_t kd = (size_t)c->num_key_value_heads * c->head_dim;
    struct model_ws *w = xcalloc(1, sizeof(*w));
    w->rows = rows;
    w->q = xmalloc(sizeof(float) * r * qd);
    w->k = xmalloc(sizeof(float) * r * kd);
    w->v = xmalloc(sizeof(float) * r * kd);
    w->att = xmalloc(sizeof(float) * r * qd);
    w->o = xmalloc(sizeof(float) * r * (size_t)c->hidden_size);
    w->g = xmalloc(sizeof(float) * r * (size_t)c->intermediate_size);
    w->u = xmalloc(sizeof(float) * r * (size_t)c->intermediate_size);
    w->kl = xmalloc(sizeof(float) * r * kd);
    w->vl = xmalloc(sizeof(float) * r * kd);
    w->x = xmalloc(sizeof(float) * r * (size_t)c->hidden_size);
    w->xn = xmalloc(sizeof(float) * r * (size_t)c->hidden_size);
    w->logits = logits;
    w->logits_cap = logits_cap;
    m->ws = w;
}

static float *logits_buf(struct model *m, int rows)
{
    size_t need = (size_t)rows * m->cfg.vocab_size;
    if (m->ws->logits_cap < need) {
        free(m->ws->logits);
        m->ws->logits = xmalloc(sizeof(float) * need);
        m->ws->logits_cap = need;
    }
    return m->ws->logits;
}

static void rnd(const struct model *m, float *x, size_t n)
{
    if (!m->emulate_bf16)
        return;
    for (size_t i = 0; i < n; i++)
        x[i] = kern_round_bf16(x[i]);
}

static int kcheck(int rc, const char *what, char **err)
{
    if (rc)
        err_setf(err, "%s kernel failed: %s", what,
                 rc == -ENOSYS ? "not available for this backend or format" : "invalid arguments");
    return rc;
}

/* RMSNorm rows of length n; bf16 emulation follows Exaone4RMSNorm: weight * bf16(normed). */
static int norm_rows(struct model *m, float *y, const float *x, const float *w, int rows, int n,
                     char **err)
{
    if (!m->emulate_bf16)
        return kcheck(rmsnorm(m->impl, y, x, w, rows, n, m->eps), "rmsnorm", err);
    int rc = rmsnorm(m->impl, y, x, NULL, rows, n, m->eps);
    if (rc)
        return kcheck(rc, "rmsnorm", err);
    for (size_t r = 0; r < (size_t)rows; r++)
        for (int i = 0; i < n; i++) {
            float *p = &y[r * n + i];
            *p = kern_round_bf16(w[i] * kern_round_bf16(*p));
        }
    return 0;
}

static int call_hook(const struct model_hooks *h, int l, enum model_hook_point pt, const float *x,
                     int T, int n, char **err)
{
    if (!h || !h->fn || (h->mask && !(h->mask & (1u << pt))))
        return 0;
    int rc = h->fn(h->arg, l, pt, x, T, n);
    if (rc)
        err_setf(err, "layer %d: forward stopped by a hook (code %d)", l, rc);
    return rc;
}

/* y = x . W^T for one linear; a quantized linear with an activation scheme (W8A8, FP8) sees
 * its input quantized and dequantized first, as the serving kernels compute. */
static int lin(struct model *m, float *y, const float *x, int T, const struct model_layer *ML,
               enum model_lin wi, char **err)
{
    const struct linear *L = &ML->lin[wi];
    const struct qweight *q = ML->quant[wi];
    const float *b = ML->bias[wi];
    int rc;
    if (q && q->act != QACT_NONE) {
        size_t need = (size_t)T * L->in;
        struct model_ws *ws = m->ws;
        if (ws->xq_cap < need) {
            free(ws->xq);
            ws->xq = xmalloc(need * sizeof(float));
            ws->xq_cap = need;
        }
        memcpy(ws->xq, x, need * sizeof(float));
        quant_act_inplace(q->act, q->input_scale, ws->xq, T, L->in);
        x = ws->xq;
    }
    rc = matmul(m->impl, y, x, T, L, 0);
    if (rc)
        return kcheck(rc, "matmul", err);
    if (b)
        for (size_t t = 0; t < (size_t)T; t++)
            for (int o = 0; o < L->out; o++)
                y[t * L->out + o] += b[o];
    rnd(m, y, (size_t)T * L->out);
    return 0;
}

/* A norm slot of the family row: y = RMSNorm(x) when the family has it (slot >= 0); else
 * *out = x unchanged. */
static int opt_norm(struct model *m, const struct model_layer *L, int slot, float *y,
                    const float *x, int rows, int n, const float **out, char **err)
{
    *out = x;
    if (slot < 0)
        return 0;
    *out = y;
    return norm_rows(m, y, x, L->norm[slot], rows, n, err);
}

/* x += res_scale * b, the residual add of one branch. */
static void residual_add(struct model *m, float *x, const float *b, size_t n)
{
    float s = m->res_scale;
    if (s == 1.0f)
        for (size_t i = 0; i < n; i++)
            x[i] += b[i];
    else
        for (size_t i = 0; i < n; i++)
            x[i] += b[i] * s;
    rnd(m, x, n);
}

int model_embed(const struct model *m, const int32_t *ids, int T, float *x, char **err)
{
    const struct config *c = &m->cfg;
    size_t esz = kern_dtype_size(m->embed.dtype);
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab_size) {
            err_setf(err, "token id %d at position %d is outside the vocabulary (size %d)", ids[t],
                     t, c->vocab_size);
            return -EINVAL;
        }
    }
    for (int t = 0; t < T; t++)
        kern_row_to_f32(m->embed.dtype,
                        (const char *)m->embed.w + (size_t)ids[t] * c->hidden_size * esz,
                        x + (size_t)t * c->hidden_size, (size_t)c->hidden_size);
    if (m->embed_scale != 1.0f)
        for (size_t i = 0; i < (size_t)T * c->hidden_size; i++)
            x[i] *= m->embed_scale;
    return 0;
}

int model_layer_forward(struct model *m, int l, float *x, int T, int pos0, struct model_kv *kv,
                        const struct model_hooks *hooks, char **err)
{
    const struct config *c = &m->cfg;
    if (l < 0 || l >= m->n_layers || T < 1 || pos0 < 0) {
        err_setf(err, "model_layer_forward: bad layer %d, T %d or pos0 %d", l, T, pos0);
        return -EINVAL;
    }
    struct model_layer *L = &m->layers[l];
    int H = c->hidden_size, I = c->intermediate_size, nh = c->num_attention_heads;
    int nkv = c->num_key_value_heads, hd = c->head_dim;
    int rc;
    if (kv) {
        if (kv->n_layers != m->n_layers || kv->n_kv_heads != nkv || kv->head_dim != hd) {
            err_setf(err, "KV cache does not match the model's shape");
            return -EINVAL;
        }
        if (pos0 > kv->len[l]) {
            err_setf(err, "layer %d: KV cache holds %d positions, cannot append at %d", l,
                     kv->len[l], pos0);
            return -EINVAL;
        }
        if (pos0 + T > kv->cap) {
            err_setf(err, "KV cache capacity %d exceeded (%d positions needed)", kv->cap, pos0 + T);
            return -ENOSPC;
        }
    }
    model__ws_reserve(m, T);
    struct model_ws *w = m->ws;
    const struct family *f = c->fam;
    const float *in;

    /* Attention block. */
    if ((rc = opt_norm(m, L, f->norm_pre_attn, w->xn, x, T, H, &in, err)) ||
        (rc = call_hook(hooks, l, MODEL_HOOK_QKV_IN, in, T, H, err)) ||
        (rc = lin(m, w->q, in, T, L, MODEL_LIN_Q, err)) ||
        (rc = lin(m, w->k, in, T, L, MODEL_LIN_K, err)) ||
        (rc = lin(m, w->v, in, T, L, MODEL_LIN_V, err)))
        return rc;
    if (f->qk_norm && ((rc = norm_rows(m, w->q, w->q, L->norm[MODEL_NORM_Q], T * nh, hd, err)) ||
                       (rc = norm_rows(m, w->k, w->k, L->norm[MODEL_NORM_K], T * nkv, hd, err))))
        return rc;
    if (L->rope) {
        if ((rc = kcheck(rope(m->impl, w->q, T, nh, hd, pos0, m->inv_freq, m->emulate_bf16), "rope",
                         err)) ||
            (rc = kcheck(rope(m->impl, w->k, T, nkv, hd, pos0, m->inv_freq, m->emulate_bf16),
                         "rope", err)))
            return rc;
        rnd(m, w->q, (size_t)T * nh * hd);
        rnd(m, w->k, (size_t)T * nkv * hd);
    }
    /* Keys and values go to [kv head][position][head_dim]. */
    float *kc = w->kl, *vc = w->vl;
    int cap = T, q_off = 0;
    if (kv) {
        size_t per_layer = (size_t)nkv * kv->cap * hd;
        kc = kv->k + (size_t)l * per_layer;
        vc = kv->v + (size_t)l * per_layer;
        cap = kv->cap;
        q_off = pos0;
    }
    for (int t = 0; t < T; t++)
        for (int g = 0; g < nkv; g++) {
            size_t dst = ((size_t)g * cap + q_off + t) * hd, src = ((size_t)t * nkv + g) * hd;
            memcpy(kc + dst, w->k + src, sizeof(float) * hd);
            memcpy(vc + dst, w->v + src, sizeof(float) * hd);
        }
    if (kv)
        kv->len[l] = pos0 + T;
    struct attn_args a = {
        .T = T,
        .n_heads = nh,
        .n_kv_heads = nkv,
        .head_dim = hd,
        .q = w->q,
        .k = kc,
        .v = vc,
        .kv_cap = cap,
        .q_off = q_off,
        .window = L->window,
        .scale = m->attn_scale,
        .out = w->att,
    };
    if ((rc = kcheck(attention(m->impl, &a), "attention", err)))
        return rc;
    rnd(m, w->att, (size_t)T * nh * hd);
    const float *br;
    if ((rc = call_hook(hooks, l, MODEL_HOOK_O_IN, w->att, T, nh * hd, err)) ||
        (rc = lin(m, w->o, w->att, T, L, MODEL_LIN_O, err)) ||
        (rc = call_hook(hooks, l, MODEL_HOOK_ATTN_OUT, w->o, T, H, err)) ||
        (rc = opt_norm(m, L, f->norm_post_attn, w->o, w->o, T, H, &br, err)))
        return rc;
    size_t nx = (size_t)T * H;
    residual_add(m, x, br, nx);

    /* MLP block. */
    if ((rc = opt_norm(m, L, f->norm_pre_mlp, w->xn, x, T, H, &in, err)) ||
        (rc = call_hook(hooks, l, MODEL_HOOK_GATEUP_IN, in, T, H, err)) ||
        (rc = lin(m, w->g, in, T, L, MODEL_LIN_GATE, err)) ||
        (rc = lin(m, w->u, in, T, L, MODEL_LIN_UP, err)))
        return rc;
    size_t ni = (size_t)T * I;
    if (m->emulate_bf16) {
        /* bf16(silu(g)) then bf16(. * u): silu with u = 1, round, multiply, round. */
        for (size_t i = 0; i < ni; i++) {
            float gv = w->g[i];
            w->g[i] = kern_round_bf16(kern_round_bf16(gv / (1.0f + expf(-gv))) * w->u[i]);
        }
    } else if ((rc = kcheck(swiglu(m->impl, w->g, w->g, w->u, ni), "swiglu", err))) {
        return rc;
    }
    if ((rc = call_hook(hooks, l, MODEL_HOOK_DOWN_IN, w->g, T, I, err)) ||
        (rc = lin(m, w->o, w->g, T, L, MODEL_LIN_DOWN, err)) ||
        (rc = call_hook(hooks, l, MODEL_HOOK_MLP_OUT, w->o, T, H, err)) ||
        (rc = opt_norm(m, L, f->norm_post_mlp, w->o, w->o, T, H, &br, err)))
        return rc;
    residual_add(m, x, br, nx);
    return call_hook(hooks, l, MODEL_HOOK_LAYER_OUT, x, T, H, err);
}

int model_final_norm(struct model *m, float *x, int T, char **err)
{
    return norm_rows(m, x, x, m->final_norm, T, m->cfg.hidden_size, err);
}

int model_lm_head(struct model *m, const float *xn, int T, float *logits, char **err)
{
    if (m->head_div != 1.0f) {
        /* MiniCPM: hidden / (hidden_size / dim_model_base), in row blocks of the scratch. */
        int H = m->cfg.hidden_size;
        model__ws_reserve(m, 1);
        int rows = m->ws->rows;
        for (int t0 = 0; t0 < T; t0 += rows) {
            int nr = T - t0 < rows ? T - t0 : rows;
            for (size_t i = 0; i < (size_t)nr * H; i++)
                m->ws->xn[i] = xn[(size_t)t0 * H + i] / m->head_div;
            int rc = matmul(m->impl, logits + (size_t)t0 * m->cfg.vocab_size, m->ws->xn, nr,
                            &m->lm_head, 0);
            if (rc)
                return kcheck(rc, "matmul", err);
        }
        rnd(m, logits, (size_t)T * m->cfg.vocab_size);
        return 0;
    }
    int rc = matmul(m->impl, logits, xn, T, &m->lm_head, 0);
    if (rc)
        return kcheck(rc, "matmul", err);
    rnd(m, logits, (size_t)T * m->cfg.vocab_size);
    return 0;
}

/* Runs embedding and every layer for a block; returns the residual stream in m->ws->x. */
static int run_layers(struct model *m, const int32_t *ids, int T, struct model_kv *kv, int pos0,
                      const struct model_hooks *hooks, char **err)
{
    model__ws_reserve(m, T);
    int rc = model_embed(m, ids, T, m->ws->x, err);
    for (int l = 0; l < m->n_layers && rc == 0; l++)
        rc = model_layer_forward(m, l, m->ws->x, T, pos0, kv, hooks, err);
    return rc;
}

int model_forward(struct model *m, const int32_t *ids, int T, struct model_kv *kv,
                  enum model_logits which, float *logits, const struct model_hooks *hooks,
                  char **err)
{
    if (T < 1 || !ids || (which != MODEL_LOGITS_NONE && !logits)) {
        err_setf(err, "model_forward: need T >= 1 tokens and a logits buffer");
        return -EINVAL;
    }
    int pos0 = 0;
    if (kv) {
        if (kv->n_layers != m->n_layers) {
            err_setf(err, "KV cache has %d layers, the model %d", kv->n_layers, m->n_layers);
            return -EINVAL;
        }
        pos0 = kv->n_layers > 0 ? kv->len[0] : 0;
        for (int l = 1; l < kv->n_layers; l++)
            if (kv->len[l] != pos0) {
                err_setf(err, "KV cache layers hold different lengths (%d and %d)", pos0,
                         kv->len[l]);
                return -EINVAL;
            }
    }
    int rc = run_layers(m, ids, T, kv, pos0, hooks, err);
    if (rc || which == MODEL_LOGITS_NONE)
        return rc;
    int rows = which == MODEL_LOGITS_LAST ? 1 : T;
    float *xr = m->ws->x + (size_t)(T - rows) * m->cfg.hidden_size;
    if ((rc = model_final_norm(m, xr, rows, err)))
        return rc;
    return model_lm_head(m, xr, rows, logits, err);
}

int model_log_softmax(struct model *m, float *logits, int rows, char **err)
{
    int V = m->cfg.vocab_size;
    for (int r0 = 0; r0 < rows; r0 += NLL_CHUNK) {
        int nr = rows - r0 < NLL_CHUNK ? rows - r0 : NLL_CHUNK;
        float l[NLL_CHUNK];
        float *x = logits + (size_t)r0 * V;
        int rc = lse(m->impl, l, x, nr, V);
        if (rc)
            return kcheck(rc, "lse", err);
        for (int r = 0; r < nr; r++)
            for (int v = 0; v < V; v++)
                x[(size_t)r * V + v] -= l[r];
    }
    return 0;
}

int model_nll(struct model *m, const int32_t *ids, int n, float *nll, char **err)
{
    if (n < 2) {
        err_setf(err, "model_nll: need at least 2 tokens");
        return -EINVAL;
    }
    int T = n - 1, V = m->cfg.vocab_size;
    if (ids[n - 1] < 0 || ids[n - 1] >= V) {
        err_setf(err, "token id %d at position %d is outside the vocabulary (size %d)", ids[n - 1],
                 n - 1, V);
        return -EINVAL;
    }
    int rc;
    if (m->impl == KERN_IMPL_CUDA && (rc = model__gpu_nll(m, ids, n, nll, err)) != -ENOSYS)
        return rc;
    rc = run_layers(m, ids, T, NULL, 0, NULL, err);
    if (rc || (rc = model_final_norm(m, m->ws->x, T, err)))
        return rc;
    float lsev[NLL_CHUNK];
    for (int t0 = 0; t0 < T; t0 += NLL_CHUNK) {
        int rows = T - t0 < NLL_CHUNK ? T - t0 : NLL_CHUNK;
        float *lg = logits_buf(m, rows);
        if ((rc = model_lm_head(m, m->ws->x + (size_t)t0 * m->cfg.hidden_size, rows, lg, err)))
            return rc;
        if ((rc = kcheck(lse(m->impl, lsev, lg, rows, V), "lse", err)))
            return rc;
        for (int r = 0; r < rows; r++)
            nll[t0 + r] = lsev[r] - lg[(size_t)r * V + ids[t0 + r + 1]];
    }
    return 0;
}

static int32_t argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

int model_generate_greedy(struct model *m, const int32_t *prompt, int n_prompt, int n_new,
                          int32_t *out, char **err)
{
    if (n_prompt < 1 || n_new < 0) {
        err_setf(err, "model_generate_greedy: need a prompt");
        return -EINVAL;
    }
    if (n_new == 0)
        return 0;
    struct model_kv *kv = model_kv_new(m, n_prompt + n_new);
    float *logits = xmalloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    int rc = model_forward(m, prompt, n_prompt, kv, MODEL_LOGITS_LAST, logits, NULL, err);
    for (int i = 0; i < n_new && rc == 0; i++) {
        out[i] = argmax(logits, m->cfg.vocab_size);
        if (i + 1 < n_new)
            rc = model_forward(m, &out[i], 1, kv, MODEL_LOGITS_LAST, logits, NULL, err);
    }
    free(logits);
    model_kv_free(kv);
    return rc;
}
