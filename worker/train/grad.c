/*
 * grad: the trainable fp32 EXAONE-4 (see grad.h): loading through the engine, the fp32 forward
 * of worker/engine/model_fwd.c (without bf16 emulation), and its backward built from
 * kernels/backward.h.
 *
 * DESIGN. Parameters live in two blocks (weights, gradients) carved into struct tparam views.
 * tnet_loss_grad runs the forward once keeping only each layer's input x_l ([T][hidden], L + 1
 * of them); the head and the loss run in row chunks (logits are chunk x vocab, never T x vocab),
 * so the loss gradient reaches the final norm without a T x V buffer. Then, from the last layer
 * down, the layer's forward is recomputed from x_l into one set of activation buffers and
 * back-propagated:
 *   MLP:   x2 = x1 + N_ff(down(silu(x1 Wg^T) * (x1 Wu^T)))
 *   attn:  x1 = x0 + N_pa(attn(rope(N_q(x0 Wq^T)), rope(N_k(x0 Wk^T)), x0 Wv^T) Wo^T)
 * so the memory is (L + 1) T hidden plus one layer's activations plus one logits chunk.
 */
#include "worker/train/grad.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/attention.h"
#include "kernels/backward.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "worker/engine/model.h"

#define HEAD_CHUNK 64 /* rows of logits computed at once */

/* Parameter slots of one layer, in tnet order. */
enum tl_slot {
    TL_Q = 0,
    TL_K,
    TL_V,
    TL_O,
    TL_QN,
    TL_KN,
    TL_PA,
    TL_G,
    TL_U,
    TL_D,
    TL_PF,
    TL_COUNT,
};

struct tlayer {
    int p[TL_COUNT]; /* parameter index of each slot */
    int rope, window;
};

/* One layer's activations (forward recompute) and gradients, for up to `rows` rows. */
struct tws {
    int rows;
    float *q0, *q2, *k0, *k2, *v, *kc, *vc, *att, *o0, *x1, *g, *u, *h, *d0;
    float *dq, *dk, *dv, *dkc, *dvc, *datt, *do0, *dh, *dg, *du, *dd0, *gx, *gx1;
    float *xs;       /* (L + 1) x rows x hidden: each layer's input, then the last output */
    float *xn, *dxn; /* final-normed rows and their gradient */
    float *lg, *dlg; /* HEAD_CHUNK x vocab */
    int32_t *tgt;    /* rows */
    uint8_t *on;     /* rows */
};

struct tnet {
    struct config cfg;
    int L, H, I, nh, nkv, hd, V;
    float eps, attn_scale;
    float *inv_freq;
    int tied;
    enum kern_impl impl;
    int np;
    struct tparam *p;
    char **names;
    float *wblock, *gblock;
    struct tlayer *layers;
    int p_embed, p_norm, p_head; /* p_head == p_embed when tied */
    struct tws ws;
};

static const char *slot_names[TL_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",           "self_attn.o_proj",
    "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",   "mlp.gate_proj",
    "mlp.up_proj",      "mlp.down_proj",    "post_feedforward_layernorm",
};

/* ---- parameters ---------------------------------------------------------------------------- */

static void slot_shape(const struct tnet *t, enum tl_slot s, int *rows, int *cols)
{
    int qd = t->nh * t->hd, kd = t->nkv * t->hd;
    switch (s) {
    case TL_Q:
        *rows = qd, *cols = t->H;
        break;
    case TL_K:
    case TL_V:
        *rows = kd, *cols = t->H;
        break;
    case TL_O:
        *rows = t->H, *cols = qd;
        break;
    case TL_QN:
    case TL_KN:
        *rows = t->hd, *cols = 1;
        break;
    case TL_G:
    case TL_U:
        *rows = t->I, *cols = t->H;
        break;
    case TL_D:
        *rows = t->H, *cols = t->I;
        break;
    default: /* TL_PA, TL_PF */
        *rows = t->H, *cols = 1;
        break;
    }
}

/* Lays out the parameter table (names, shapes, views into the two blocks). */
static void params_layout(struct tnet *t)
{
    int cap = 3 + t->L * TL_COUNT, n = 0;
    t->p = xcalloc((size_t)cap, sizeof(*t->p));
    t->names = xcalloc((size_t)cap, sizeof(char *));
    t->layers = xcalloc((size_t)(t->L ? t->L : 1), sizeof(*t->layers));
#define ADD(nm, r, c)                                                                              \
    do {                                                                                           \
        t->names[n] = (nm);                                                                        \
        t->p[n].name = t->names[n];                                                                \
        t->p[n].rows = (r);                                                                        \
        t->p[n].cols = (c);                                                                        \
        t->p[n].n = (size_t)(r) * (size_t)(c);                                                     \
        n++;                                                                                       \
    } while (0)
    t->p_embed = n;
    ADD(xstrdup("model.embed_tokens.weight"), t->V, t->H);
    for (int l = 0; l < t->L; l++)
        for (int s = 0; s < TL_COUNT; s++) {
            int r, c;
            slot_shape(t, (enum tl_slot)s, &r, &c);
            t->layers[l].p[s] = n;
            ADD(xasprintf("model.layers.%d.%s.weight", l, slot_names[s]), r, c);
        }
    t->p_norm = n;
    ADD(xstrdup("model.norm.weight"), t->H, 1);
    t->p_head = t->p_embed;
    if (!t->tied) {
        t->p_head = n;
        ADD(xstrdup("lm_head.weight"), t->V, t->H);
    }
#undef ADD
    t->np = n;
    size_t tot = 0;
    for (int i = 0; i < n; i++)
        tot += t->p[i].n;
    t->wblock = xcalloc(tot, sizeof(float));
    t->gblock = xcalloc(tot, sizeof(float));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        t->p[i].w = t->wblock + off;
        t->p[i].g = t->gblock + off;
        off += t->p[i].n;
    }
}

static float *W(struct tnet *t, int l, enum tl_slot s)
{
    return t->p[t->layers[l].p[s]].w;
}

static float *G(struct tnet *t, int l, enum tl_slot s)
{
    return t->p[t->layers[l].p[s]].g;
}

static const enum model_lin slot_lin[TL_COUNT] = {
    [TL_Q] = MODEL_LIN_Q,    [TL_K] = MODEL_LIN_K,  [TL_V] = MODEL_LIN_V,    [TL_O] = MODEL_LIN_O,
    [TL_G] = MODEL_LIN_GATE, [TL_U] = MODEL_LIN_UP, [TL_D] = MODEL_LIN_DOWN,
};
static const enum model_norm slot_norm[TL_COUNT] = {
    [TL_QN] = MODEL_NORM_Q,
    [TL_KN] = MODEL_NORM_K,
    [TL_PA] = MODEL_NORM_POST_ATTN,
    [TL_PF] = MODEL_NORM_POST_FFN,
};

static int slot_is_norm(enum tl_slot s)
{
    return s == TL_QN || s == TL_KN || s == TL_PA || s == TL_PF;
}

struct tnet *tnet_load(const char *model_dir, char **err)
{
    struct model *m = NULL;
    struct model_opts o = { 0, KERN_IMPL_CPU, 0 };
    if (model_load(&m, model_dir, &o, err))
        return NULL;
    struct tnet *t = xcalloc(1, sizeof(*t));
    const struct config *c = &m->cfg;
    config_copy(&t->cfg, c);
    t->L = m->n_layers;
    t->H = c->hidden_size;
    t->I = c->intermediate_size;
    t->nh = c->num_attention_heads;
    t->nkv = c->num_key_value_heads;
    t->hd = c->head_dim;
    t->V = c->vocab_size;
    t->eps = m->eps;
    t->attn_scale = m->attn_scale;
    t->tied = m->tied;
    t->impl = KERN_IMPL_CPU;
    t->inv_freq = xcalloc((size_t)t->hd / 2 + 1, sizeof(float));
    memcpy(t->inv_freq, m->inv_freq, sizeof(float) * (size_t)(t->hd / 2));
    params_layout(t);
    int rc = linear_to_f32(&m->embed, t->p[t->p_embed].w);
    if (rc == 0 && !t->tied)
        rc = linear_to_f32(&m->lm_head, t->p[t->p_head].w);
    for (int l = 0; l < t->L && rc == 0; l++) {
        t->layers[l].rope = m->layers[l].rope;
        t->layers[l].window = m->layers[l].window;
        for (int s = 0; s < TL_COUNT && rc == 0; s++) {
            if (slot_is_norm((enum tl_slot)s)) {
                int n;
                const float *v = model_norm(m, l, slot_norm[s], &n);
                memcpy(W(t, l, (enum tl_slot)s), v, sizeof(float) * (size_t)n);
            } else {
                rc = model_linear_get_f32(m, l, slot_lin[s], W(t, l, (enum tl_slot)s), err);
            }
        }
    }
    if (rc == 0) {
        int n;
        memcpy(t->p[t->p_norm].w, model_norm(m, 0, MODEL_NORM_FINAL, &n), sizeof(float) * t->H);
    } else if (err && !*err) {
        err_setf(err, "%s: cannot read the weights as fp32", model_dir);
    }
    model_free(m);
    if (rc) {
        tnet_free(t);
        return NULL;
    }
    return t;
}

static void ws_release(struct tws *w)
{
    float **f[] = { &w->q0,  &w->q2,  &w->k0,  &w->k2,   &w->v,   &w->kc,  &w->vc, &w->att,
                    &w->o0,  &w->x1,  &w->g,   &w->u,    &w->h,   &w->d0,  &w->dq, &w->dk,
                    &w->dv,  &w->dkc, &w->dvc, &w->datt, &w->do0, &w->dh,  &w->dg, &w->du,
                    &w->dd0, &w->gx,  &w->gx1, &w->xs,   &w->xn,  &w->dxn, &w->lg, &w->dlg };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(f); i++) {
        free(*f[i]);
        *f[i] = NULL;
    }
    free(w->tgt);
    free(w->on);
    w->tgt = NULL;
    w->on = NULL;
    w->rows = 0;
}

static void ws_reserve(struct tnet *t, int rows)
{
    struct tws *w = &t->ws;
    if (w->rows >= rows)
        return;
    ws_release(w);
    size_t r = (size_t)rows, qd = (size_t)t->nh * t->hd, kd = (size_t)t->nkv * t->hd;
    size_t H = (size_t)t->H, I = (size_t)t->I;
#define A(p, n) (w->p = xmalloc(sizeof(float) * (n)))
    A(q0, r * qd), A(q2, r * qd), A(k0, r * kd), A(k2, r * kd), A(v, r * kd), A(kc, r * kd);
    A(vc, r * kd), A(att, r * qd), A(o0, r * H), A(x1, r * H), A(g, r * I), A(u, r * I);
    A(h, r * I), A(d0, r * H), A(dq, r * qd), A(dk, r * kd), A(dv, r * kd), A(dkc, r * kd);
    A(dvc, r * kd), A(datt, r * qd), A(do0, r * H), A(dh, r * I), A(dg, r * I), A(du, r * I);
    A(dd0, r * H), A(gx, r * H), A(gx1, r * H), A(xs, ((size_t)t->L + 1) * r * H);
    A(xn, r * H), A(dxn, r * H), A(lg, (size_t)HEAD_CHUNK * t->V);
    A(dlg, (size_t)HEAD_CHUNK * t->V);
#undef A
    w->tgt = xmalloc(sizeof(int32_t) * r);
    w->on = xmalloc(r);
    w->rows = rows;
}

void tnet_free(struct tnet *t)
{
    if (!t)
        return;
    ws_release(&t->ws);
    for (int i = 0; i < t->np; i++)
        free(t->names[i]);
    free(t->names);
    free(t->p);
    free(t->wblock);
    free(t->gblock);
    free(t->layers);
    free(t->inv_freq);
    config_release(&t->cfg);
    free(t);
}

int tnet_nparams(const struct tnet *t)
{
    return t->np;
}

struct tparam *tnet_param(struct tnet *t, int i)
{
    return i >= 0 && i < t->np ? &t->p[i] : NULL;
}

struct tparam *tnet_param_find(struct tnet *t, const char *name)
{
    for (int i = 0; i < t->np; i++)
        if (strcmp(t->p[i].name, name) == 0)
            return &t->p[i];
    return NULL;
}

int tnet_vocab(const struct tnet *t)
{
    return t->V;
}

const struct config *tnet_config(const struct tnet *t)
{
    return &t->cfg;
}

void tnet_set_impl(struct tnet *t, enum kern_impl impl)
{
    t->impl = impl;
}

void tnet_zero_grad(struct tnet *t)
{
    size_t tot = 0;
    for (int i = 0; i < t->np; i++)
        tot += t->p[i].n;
    memset(t->gblock, 0, sizeof(float) * tot);
}

/* ---- forward ------------------------------------------------------------------------------- */

static int kfail(int rc, const char *what, char **err)
{
    if (rc)
        err_setf(err, "%s kernel failed (%s)", what,
                 rc == -ENOSYS ? "not available for this backend" : "invalid arguments");
    return rc ? -1 : 0;
}

/* y[T][out] = x[T][in] . w^T, w fp32 [out][in]. */
static int lin(struct tnet *t, float *y, const float *x, int T, const float *w, int out, int in,
               char **err)
{
    struct linear L;
    linear_init_dense(&L, out, in, KERN_F32, w);
    return kfail(matmul(t->impl, y, x, T, &L, 0), "matmul", err);
}

/* Layer l on x[T][H] into out (which may be x): fills the layer's activation buffers. */
static int layer_fwd(struct tnet *t, int l, const float *x, float *out, int T, char **err)
{
    struct tws *w = &t->ws;
    const struct tlayer *Ly = &t->layers[l];
    int H = t->H, I = t->I, nh = t->nh, nkv = t->nkv, hd = t->hd, qd = nh * hd, kd = nkv * hd;
    size_t nx = (size_t)T * H;
    if (lin(t, w->q0, x, T, W(t, l, TL_Q), qd, H, err) ||
        lin(t, w->k0, x, T, W(t, l, TL_K), kd, H, err) ||
        lin(t, w->v, x, T, W(t, l, TL_V), kd, H, err) ||
        kfail(rmsnorm(t->impl, w->q2, w->q0, W(t, l, TL_QN), T * nh, hd, t->eps), "rmsnorm", err) ||
        kfail(rmsnorm(t->impl, w->k2, w->k0, W(t, l, TL_KN), T * nkv, hd, t->eps), "rmsnorm", err))
        return -1;
    if (Ly->rope && (kfail(rope(t->impl, w->q2, T, nh, hd, 0, t->inv_freq, 0), "rope", err) ||
                     kfail(rope(t->impl, w->k2, T, nkv, hd, 0, t->inv_freq, 0), "rope", err)))
        return -1;
    /* Keys and values to [kv head][position][head_dim]. */
    for (int s = 0; s < T; s++)
        for (int g = 0; g < nkv; g++) {
            size_t dst = ((size_t)g * T + s) * hd, src = ((size_t)s * nkv + g) * hd;
            memcpy(w->kc + dst, w->k2 + src, sizeof(float) * hd);
            memcpy(w->vc + dst, w->v + src, sizeof(float) * hd);
        }
    struct attn_args a = { T,     nh, nkv, hd,         w->q2,         w->kc,
                           w->vc, T,  0,   Ly->window, t->attn_scale, w->att };
    if (kfail(attention(t->impl, &a), "attention", err) ||
        lin(t, w->o0, w->att, T, W(t, l, TL_O), H, qd, err) ||
        kfail(rmsnorm(t->impl, w->x1, w->o0, W(t, l, TL_PA), T, H, t->eps), "rmsnorm", err))
        return -1;
    for (size_t i = 0; i < nx; i++)
        w->x1[i] += x[i];
    size_t ni = (size_t)T * I;
    if (lin(t, w->g, w->x1, T, W(t, l, TL_G), I, H, err) ||
        lin(t, w->u, w->x1, T, W(t, l, TL_U), I, H, err) ||
        kfail(swiglu(t->impl, w->h, w->g, w->u, ni), "swiglu", err) ||
        lin(t, w->d0, w->h, T, W(t, l, TL_D), H, I, err) ||
        kfail(rmsnorm(t->impl, out, w->d0, W(t, l, TL_PF), T, H, t->eps), "rmsnorm", err))
        return -1;
    for (size_t i = 0; i < nx; i++)
        out[i] += w->x1[i];
    return 0;
}

static int check_ids(const struct tnet *t, const int32_t *ids, int T, int min_T, char **err)
{
    if (!ids || T < min_T) {
        err_setf(err, "need at least %d token%s", min_T, min_T == 1 ? "" : "s");
        return -1;
    }
    for (int i = 0; i < T; i++)
        if (ids[i] < 0 || ids[i] >= t->V) {
            err_setf(err, "token id %d at position %d is outside the vocabulary (size %d)", ids[i],
                     i, t->V);
            return -1;
        }
    return 0;
}

/* Embedding and every layer; keeps each layer's input in ws.xs when keep, and returns the last
 * layer's output (inside ws.xs). */
static float *run_layers(struct tnet *t, const int32_t *ids, int T, int keep, char **err)
{
    struct tws *w = &t->ws;
    size_t nx = (size_t)T * t->H;
    float *x = w->xs;
    const float *E = t->p[t->p_embed].w;
    for (int s = 0; s < T; s++)
        memcpy(x + (size_t)s * t->H, E + (size_t)ids[s] * t->H, sizeof(float) * t->H);
    for (int l = 0; l < t->L; l++) {
        float *next = keep ? x + nx : x;
        if (layer_fwd(t, l, x, next, T, err))
            return NULL;
        x = next;
    }
    return x;
}

int tnet_logits(struct tnet *t, const int32_t *ids, int T, float *logits, char **err)
{
    if (check_ids(t, ids, T, 1, err))
        return -1;
    if (!logits) {
        err_setf(err, "tnet_logits: no logits buffer");
        return -1;
    }
    ws_reserve(t, T);
    float *x = run_layers(t, ids, T, 0, err);
    if (!x ||
        kfail(rmsnorm(t->impl, t->ws.xn, x, t->p[t->p_norm].w, T, t->H, t->eps), "rmsnorm", err))
        return -1;
    return lin(t, logits, t->ws.xn, T, t->p[t->p_head].w, t->V, t->H, err);
}

/* ---- backward ------------------------------------------------------------------------------ */

static void zero(float *p, size_t n)
{
    memset(p, 0, sizeof(float) * n);
}

/* Given gx = dL/d(layer output), recomputes layer l from x and leaves dL/dx in gx, adding the
 * parameter gradients. */
static int layer_bwd(struct tnet *t, int l, const float *x, int T, char **err)
{
    struct tws *w = &t->ws;
    const struct tlayer *Ly = &t->layers[l];
    int H = t->H, I = t->I, nh = t->nh, nkv = t->nkv, hd = t->hd, qd = nh * hd, kd = nkv * hd;
    size_t nx = (size_t)T * H, ni = (size_t)T * I, nq = (size_t)T * qd, nk = (size_t)T * kd;
    enum kern_impl k = t->impl;
    /* The recomputed output itself is not needed: gx1 takes it and is overwritten next. */
    if (layer_fwd(t, l, x, w->gx1, T, err))
        return -1;
    /* MLP: x2 = x1 + N_pf(d0), d0 = h Wd^T, h = silu(g) * u. */
    memcpy(w->gx1, w->gx, sizeof(float) * nx);
    zero(w->dd0, nx);
    zero(w->dh, ni);
    zero(w->dg, ni);
    zero(w->du, ni);
    if (kfail(rmsnorm_bwd(k, w->dd0, G(t, l, TL_PF), w->gx, w->d0, W(t, l, TL_PF), T, H, t->eps),
              "rmsnorm_bwd", err) ||
        kfail(linear_bwd(k, w->dh, G(t, l, TL_D), w->dd0, w->h, W(t, l, TL_D), T, I, H),
              "linear_bwd", err) ||
        kfail(swiglu_bwd(k, w->dg, w->du, w->dh, w->g, w->u, ni), "swiglu_bwd", err) ||
        kfail(linear_bwd(k, w->gx1, G(t, l, TL_G), w->dg, w->x1, W(t, l, TL_G), T, H, I),
              "linear_bwd", err) ||
        kfail(linear_bwd(k, w->gx1, G(t, l, TL_U), w->du, w->x1, W(t, l, TL_U), T, H, I),
              "linear_bwd", err))
        return -1;
    /* Attention: x1 = x0 + N_pa(o0), o0 = att Wo^T. */
    memcpy(w->gx, w->gx1, sizeof(float) * nx);
    zero(w->do0, nx);
    zero(w->datt, nq);
    zero(w->dq, nq);
    zero(w->dkc, nk);
    zero(w->dvc, nk);
    struct attn_args a = { T,     nh, nkv, hd,         w->q2,         w->kc,
                           w->vc, T,  0,   Ly->window, t->attn_scale, w->att };
    if (kfail(rmsnorm_bwd(k, w->do0, G(t, l, TL_PA), w->gx1, w->o0, W(t, l, TL_PA), T, H, t->eps),
              "rmsnorm_bwd", err) ||
        kfail(linear_bwd(k, w->datt, G(t, l, TL_O), w->do0, w->att, W(t, l, TL_O), T, qd, H),
              "linear_bwd", err) ||
        kfail(attention_bwd(k, &a, w->datt, w->dq, w->dkc, w->dvc), "attention_bwd", err))
        return -1;
    for (int s = 0; s < T; s++)
        for (int g = 0; g < nkv; g++) {
            size_t src = ((size_t)g * T + s) * hd, dst = ((size_t)s * nkv + g) * hd;
            memcpy(w->dk + dst, w->dkc + src, sizeof(float) * hd);
            memcpy(w->dv + dst, w->dvc + src, sizeof(float) * hd);
        }
    if (Ly->rope && (kfail(rope_bwd(k, w->dq, T, nh, hd, 0, t->inv_freq), "rope_bwd", err) ||
                     kfail(rope_bwd(k, w->dk, T, nkv, hd, 0, t->inv_freq), "rope_bwd", err)))
        return -1;
    /* q0 / k0 gradients reuse q2 / k2's buffers (their values are no longer needed). */
    float *dq0 = w->q2, *dk0 = w->k2;
    zero(dq0, nq);
    zero(dk0, nk);
    if (kfail(rmsnorm_bwd(k, dq0, G(t, l, TL_QN), w->dq, w->q0, W(t, l, TL_QN), T * nh, hd, t->eps),
              "rmsnorm_bwd", err) ||
        kfail(
            rmsnorm_bwd(k, dk0, G(t, l, TL_KN), w->dk, w->k0, W(t, l, TL_KN), T * nkv, hd, t->eps),
            "rmsnorm_bwd", err) ||
        kfail(linear_bwd(k, w->gx, G(t, l, TL_Q), dq0, x, W(t, l, TL_Q), T, H, qd), "linear_bwd",
              err) ||
        kfail(linear_bwd(k, w->gx, G(t, l, TL_K), dk0, x, W(t, l, TL_K), T, H, kd), "linear_bwd",
              err) ||
        kfail(linear_bwd(k, w->gx, G(t, l, TL_V), w->dv, x, W(t, l, TL_V), T, H, kd), "linear_bwd",
              err))
        return -1;
    return 0;
}

int tnet_loss_grad(struct tnet *t, const int32_t *ids, int T, const struct tloss *L, double *loss,
                   char **err)
{
    if (check_ids(t, ids, T, 2, err))
        return -1;
    struct tloss def = { NULL, NULL, 1.0f, 1.0f };
    if (!L)
        L = &def;
    const float *tl = L->teacher_logp;
    double cw = tl ? L->ce_weight : 1.0, tau = L->temperature;
    if (tl && (!(tau > 0.0) || !(cw >= 0.0 && cw <= 1.0))) {
        err_setf(err, "distillation needs temperature > 0 and ce_weight in [0, 1] (got %g, %g)",
                 tau, cw);
        return -1;
    }
    ws_reserve(t, T);
    struct tws *w = &t->ws;
    int N = 0;
    for (int s = 0; s < T; s++) {
        int on = s < T - 1 && (!L->mask || L->mask[s]);
        w->on[s] = (uint8_t)on;
        w->tgt[s] = on && cw > 0.0 ? ids[s + 1] : -1;
        N += on;
    }
    if (loss)
        *loss = 0.0;
    if (N == 0)
        return 0; /* nothing counts: zero loss, no gradient */
    float *xl = run_layers(t, ids, T, 1, err);
    if (!xl)
        return -1;
    size_t nx = (size_t)T * t->H;
    int V = t->V, H = t->H;
    const float *Eh = t->p[t->p_head].w;
    float *dEh = t->p[t->p_head].g;
    if (kfail(rmsnorm(t->impl, w->xn, xl, t->p[t->p_norm].w, T, H, t->eps), "rmsnorm", err))
        return -1;
    zero(w->dxn, nx);
    double ce = 0.0, kl = 0.0;
    float ce_scale = (float)(cw / N), kl_scale = (float)((1.0 - cw) * tau * tau / N);
    for (int r0 = 0; r0 < T; r0 += HEAD_CHUNK) {
        int rows = T - r0 < HEAD_CHUNK ? T - r0 : HEAD_CHUNK, any = 0;
        for (int r = 0; r < rows; r++)
            any |= w->on[r0 + r];
        if (!any)
            continue;
        const float *xr = w->xn + (size_t)r0 * H;
        if (lin(t, w->lg, xr, rows, Eh, V, H, err))
            return -1;
        zero(w->dlg, (size_t)rows * V);
        double part;
        if (cw > 0.0) {
            if (kfail(xent_bwd(t->impl, &part, w->dlg, w->lg, w->tgt + r0, rows, V, ce_scale),
                      "xent_bwd", err))
                return -1;
            ce += part;
        }
        if (tl && cw < 1.0) {
            if (kfail(kl_bwd(t->impl, &part, w->dlg, w->lg, tl + (size_t)r0 * V, w->on + r0, rows,
                             V, (float)tau, kl_scale),
                      "kl_bwd", err))
                return -1;
            kl += part;
        }
        if (kfail(linear_bwd(t->impl, w->dxn + (size_t)r0 * H, dEh, w->dlg, xr, Eh, rows, H, V),
                  "linear_bwd", err))
            return -1;
    }
    if (loss)
        *loss = cw * ce / N + (tl ? (1.0 - cw) * tau * tau * kl / N : 0.0);
    zero(w->gx, nx);
    if (kfail(rmsnorm_bwd(t->impl, w->gx, t->p[t->p_norm].g, w->dxn, xl, t->p[t->p_norm].w, T, H,
                          t->eps),
              "rmsnorm_bwd", err))
        return -1;
    for (int l = t->L - 1; l >= 0; l--)
        if (layer_bwd(t, l, w->xs + (size_t)l * nx, T, err))
            return -1;
    /* transformers builds the embedding with padding_idx = pad_token_id: the lookup of the pad
     * token passes no gradient to its row (the tied head still does). */
    if (t->cfg.pad_token_id >= 0)
        for (int s = 0; s < T; s++)
            if (ids[s] == t->cfg.pad_token_id)
                zero(w->gx + (size_t)s * H, (size_t)H);
    return kfail(embedding_bwd(t->impl, t->p[t->p_embed].g, w->gx, ids, T, H), "embedding_bwd",
                 err);
}

/* ---- save ---------------------------------------------------------------------------------- */

int tnet_save(const struct tnet *t, const char *src_dir, const char *out_dir, char **err)
{
    struct model *m = NULL;
    struct model_opts o = { 0, KERN_IMPL_CPU, 0 };
    if (model_load(&m, src_dir, &o, err))
        return -1;
    const struct config *c = &m->cfg;
    int rc = 0;
    if (m->n_layers != t->L || c->hidden_size != t->H || c->intermediate_size != t->I ||
        c->num_attention_heads != t->nh || c->num_key_value_heads != t->nkv ||
        c->head_dim != t->hd || c->vocab_size != t->V || m->tied != t->tied) {
        err_setf(err, "tnet_save: '%s' holds a model of another shape", src_dir);
        rc = -1;
        goto out;
    }
    for (int l = 0; l < t->L && rc == 0; l++)
        for (int s = 0; s < TL_COUNT && rc == 0; s++) {
            const struct tparam *p = &t->p[t->layers[l].p[s]];
            if (slot_is_norm((enum tl_slot)s)) {
                int n;
                memcpy(model_norm(m, l, slot_norm[s], &n), p->w, sizeof(float) * p->n);
            } else if (model_linear_set_f32(m, l, slot_lin[s], p->w, KERN_F32, err)) {
                rc = -1;
            }
        }
    if (rc)
        goto out;
    {
        int n;
        memcpy(model_norm(m, 0, MODEL_NORM_FINAL, &n), t->p[t->p_norm].w, sizeof(float) * t->H);
    }
    /* The embedding (and a separate head): fp32 copies the model owns; model_save rounds every
     * tensor to BF16. */
    {
        const struct tparam *e = &t->p[t->p_embed];
        float *cp = xmalloc(sizeof(float) * e->n);
        memcpy(cp, e->w, sizeof(float) * e->n);
        linear_release(&m->embed);
        linear_init_dense_take(&m->embed, t->V, t->H, KERN_F32, cp);
        if (m->tied) {
            m->lm_head = m->embed;
            m->lm_head.owned = NULL;
        } else {
            const struct tparam *h = &t->p[t->p_head];
            float *hp = xmalloc(sizeof(float) * h->n);
            memcpy(hp, h->w, sizeof(float) * h->n);
            linear_release(&m->lm_head);
            linear_init_dense_take(&m->lm_head, t->V, t->H, KERN_F32, hp);
        }
    }
    int mr = mkdir_p(out_dir, 0755);
    if (mr) {
        err_setf(err, "cannot create '%s': %s", out_dir, strerror(-mr));
        rc = -1;
        goto out;
    }
    if (model_save(m, out_dir, NULL, err))
        rc = -1;
out:
    model_free(m);
    return rc;
}
