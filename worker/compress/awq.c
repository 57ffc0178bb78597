/*
 * awq: the exact scale folds of each family (legality from the block's data flow: the family
 * table's fold sources; EXAONE-4 explains each illegal pair), and AWQ's scale
 * search, clip search and quantize-dequantize helpers (algorithms spec 2.1, 2.2).
 *
 * DESIGN. The AWQ references score each scale candidate by running the balance module on the
 * cached calibration inputs and taking the MSE against the FP output. For a single linear
 * y = x W^T that MSE is a quadratic form in the weight error D = Q(W s)/s - W:
 * mean_t |x_t D^T|^2 / out = tr(D (sum_t x_t^T x_t / n) D^T) / out, so with the Hessian the
 * stage already accumulates for GPTQ (H = 2/n sum x^T x) every candidate costs one out x in x in
 * GEMM instead of a pass over all tokens, and the loss covers every calibration token. The clip
 * search is the same quadratic form restricted to one quantization group, on the Gram matrix of
 * the 512 sampled tokens AWQ uses.
 *
 * Nothing here prints, loads or saves; bad arguments return -EINVAL with a message.
 */
#include "worker/compress/awq.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/matmul.h"
#include "worker/engine/family.h"

/* ---- exact folds ------------------------------------------------------------------------- */

static const char *const prev_names[AWQ_PREV_COUNT] = {
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "post_feedforward_layernorm",
    "input_layernorm",
};

const char *awq_prev_name(enum awq_prev p)
{
    return (int)p >= 0 && p < AWQ_PREV_COUNT ? prev_names[p] : "?";
}

/*
 * The data flow of one EXAONE-4 decoder layer (spec 0 and 2.2), written as what each linear
 * reads:
 *   q, k, v    <- x                                   (the raw residual stream; no pre-norm)
 *   o          <- Attn(q_norm(q), k_norm(k), v)       (linear in v, GQA: head h reads kv h/rep)
 *   gate, up   <- h = x + post_attention_layernorm(o) (a residual sum)
 *   down       <- silu(gate) * up                     (linear in up, channel by channel)
 * and the layer output is h + post_feedforward_layernorm(down). A fold is exact only when the
 * next linear's input channel is the previous op's output channel times a factor that does not
 * depend on that channel's scale: v -> o and up -> down. Every other pair gets the reason.
 */
static const char *illegal_reason(enum awq_prev prev, enum model_lin next)
{
    switch (next) {
    case MODEL_LIN_Q:
    case MODEL_LIN_K:
    case MODEL_LIN_V:
        if (prev == AWQ_PREV_POST_ATTN_NORM || prev == AWQ_PREV_POST_FFN_NORM)
            return "q/k/v read the raw residual stream x (EXAONE-4 has no input_layernorm); a "
                   "post-norm's output is only added to that stream, which also carries the "
                   "embedding and every other branch, so 1/s on the norm weight does not scale "
                   "their input";
        return "q/k/v read the raw residual stream x (EXAONE-4 has no input_layernorm): no op of "
               "the layer produces their input channels, and folding 1/s into the whole "
               "residual stream is not exact (the final norm takes an RMS over the rescaled "
               "channels)";
    case MODEL_LIN_O:
        if (prev == AWQ_PREV_Q_PROJ || prev == AWQ_PREV_K_PROJ || prev == AWQ_PREV_Q_NORM ||
            prev == AWQ_PREV_K_NORM)
            return "q and k reach o_proj only through the per-head RMSNorm (q_norm/k_norm) and "
                   "the softmax, which are not linear in their channels";
        return "it does not produce o_proj's input (o_proj reads the attention output, which "
               "is linear only in v_proj's output)";
    case MODEL_LIN_GATE:
    case MODEL_LIN_UP:
        if (prev == AWQ_PREV_POST_ATTN_NORM)
            return "in EXAONE-4 post_attention_layernorm is a post-norm on the attention branch: "
                   "gate_proj/up_proj read the residual sum x + post_attention_layernorm(o), so "
                   "1/s on the norm weight does not scale their input (llm-compressor's default "
                   "SmoothQuant mapping 'post_attention_layernorm -> gate/up' would apply this "
                   "fold silently and change the model)";
        if (prev == AWQ_PREV_O_PROJ)
            return "o_proj's output goes through post_attention_layernorm (an RMSNorm over all "
                   "channels) and is then added to the residual stream";
        return "gate_proj/up_proj read the residual stream x + post_attention_layernorm(o), "
               "which no single op of the layer produces channel by channel";
    case MODEL_LIN_DOWN:
        if (prev == AWQ_PREV_GATE_PROJ)
            return "down_proj reads silu(gate) * up, and silu is not linear, so a scale on "
                   "gate_proj's rows does not pass through";
        if (prev == AWQ_PREV_POST_ATTN_NORM)
            return "post_attention_layernorm reaches down_proj only through the residual sum "
                   "and gate/up, not channel by channel";
        return "it does not produce down_proj's input (down_proj reads silu(gate) * up, "
               "linear only in up_proj's output)";
    default:
        return "unknown linear";
    }
}

/* The family's fold source for next's input, as an awq_prev (-1: none). */
static int fold_source(const struct family *fm, enum model_lin next)
{
    const struct family_fold *ff = next <= MODEL_LIN_V      ? &fm->fold_qkv
                                   : next == MODEL_LIN_O    ? &fm->fold_o
                                   : next == MODEL_LIN_DOWN ? &fm->fold_down
                                                            : &fm->fold_gateup;
    if (ff->src == FAMILY_FOLD_LIN)
        return (int)AWQ_PREV_LIN(ff->lin);
    if (ff->src == FAMILY_FOLD_NORM)
        return ff->norm == MODEL_NORM_INPUT       ? (int)AWQ_PREV_INPUT_NORM
               : ff->norm == MODEL_NORM_POST_ATTN ? (int)AWQ_PREV_POST_ATTN_NORM
                                                  : -1;
    return -1;
}

int awq_fold_resolve(const struct config *c, enum awq_prev prev, enum model_lin next,
                     struct awq_fold *f, char **err)
{
    if (err)
        *err = NULL;
    if (!c || !f || (int)prev < 0 || prev >= AWQ_PREV_COUNT || (int)next < 0 ||
        next >= MODEL_LIN_COUNT) {
        err_setf(err, "fold: bad arguments");
        return -EINVAL;
    }
    memset(f, 0, sizeof(*f));
    f->prev = prev;
    f->next = next;
    const struct family *fm = c->fam ? c->fam : family_get(FAMILY_EXAONE4);
    if (fold_source(fm, next) != (int)prev) {
        if (fm->id == FAMILY_EXAONE4)
            err_setf(err,
                     "cannot fold %s -> %s in EXAONE-4: %s; the only exact folds are "
                     "mlp.up_proj -> mlp.down_proj and self_attn.v_proj -> self_attn.o_proj",
                     awq_prev_name(prev), model_lin_name(next), illegal_reason(prev, next));
        else
            err_setf(err,
                     "cannot fold %s -> %s in %s (pre-norm): it does not produce %s's input "
                     "channel by channel; the exact folds are input_layernorm -> q/k/v_proj, "
                     "post_attention_layernorm -> gate/up_proj, v_proj -> o_proj and up_proj -> "
                     "down_proj",
                     awq_prev_name(prev), model_lin_name(next), fm->model_type,
                     model_lin_name(next));
        return -EINVAL;
    }
    if (prev == AWQ_PREV_INPUT_NORM || prev == AWQ_PREV_POST_ATTN_NORM) {
        /* A pre-norm: next reads x_hat * g channel by channel, g the norm weight. */
        f->flow = AWQ_FLOW_CHANNEL;
        f->n = f->next_in = c->hidden_size;
        f->rep = 1;
        return 0;
    }
    if (prev == AWQ_PREV_UP_PROJ && next == MODEL_LIN_DOWN) {
        if (c->intermediate_size < 1) {
            err_setf(err, "fold mlp.up_proj -> mlp.down_proj: bad intermediate_size %d",
                     c->intermediate_size);
            return -EINVAL;
        }
        f->flow = AWQ_FLOW_CHANNEL;
        f->n = f->next_in = c->intermediate_size;
        f->rep = 1;
        return 0;
    }
    if (prev == AWQ_PREV_V_PROJ && next == MODEL_LIN_O) {
        int nh = c->num_attention_heads, nkv = c->num_key_value_heads, hd = c->head_dim;
        if (nh < 1 || nkv < 1 || hd < 1 || nh % nkv != 0) {
            err_setf(err,
                     "fold self_attn.v_proj -> self_attn.o_proj: %d query heads are not a "
                     "multiple of %d KV heads",
                     nh, nkv);
            return -EINVAL;
        }
        f->flow = AWQ_FLOW_GQA;
        f->n = nkv * hd;
        f->next_in = nh * hd;
        f->rep = nh / nkv;
        f->head_dim = hd;
        return 0;
    }
    err_setf(err,
             "cannot fold %s -> %s in EXAONE-4: %s; the only exact folds are "
             "mlp.up_proj -> mlp.down_proj and self_attn.v_proj -> self_attn.o_proj",
             awq_prev_name(prev), model_lin_name(next), illegal_reason(prev, next));
    return -EINVAL;
}

int awq_fold_src(const struct awq_fold *f, int j)
{
    if (f->flow != AWQ_FLOW_GQA)
        return j;
    int h = j / f->head_dim, d = j % f->head_dim;
    return (h / f->rep) * f->head_dim + d;
}

void awq_fold_weights(const struct awq_fold *f, float *Wprev, int prev_in, float *Wnext,
                      int next_out, const float *s)
{
    if (Wprev)
        for (int r = 0; r < f->n; r++) {
            float *row = Wprev + (size_t)r * prev_in;
            for (int k = 0; k < prev_in; k++)
                row[k] /= s[r];
        }
    if (Wnext) {
        float *sc = xmalloc((size_t)f->next_in * sizeof(float));
        for (int j = 0; j < f->next_in; j++)
            sc[j] = s[awq_fold_src(f, j)];
        for (int r = 0; r < next_out; r++) {
            float *row = Wnext + (size_t)r * f->next_in;
            for (int j = 0; j < f->next_in; j++)
                row[j] *= sc[j];
        }
        free(sc);
    }
}

int awq_fold_apply(struct model *m, int l, enum awq_prev prev, enum model_lin next, const float *s,
                   enum kern_dtype store, char **err)
{
    struct awq_fold f;
    float *Wp = NULL, *Wn = NULL;
    struct linear *Lp, *Ln;
    int rc;

    if (err)
        *err = NULL;
    if (!m || !s || l < 0 || l >= m->n_layers) {
        err_setf(err, "fold: bad model, layer %d or scales", l);
        return -EINVAL;
    }
    if ((rc = awq_fold_resolve(&m->cfg, prev, next, &f, err)))
        return rc;
    for (int i = 0; i < f.n; i++)
        if (!(s[i] > 0.0f) || !isfinite(s[i])) {
            err_setf(err, "fold %s -> %s: scale %d is %g (must be positive and finite)",
                     awq_prev_name(prev), model_lin_name(next), i, (double)s[i]);
            return -EINVAL;
        }
    if (model_linear_quant(m, l, (enum model_lin)prev) || model_linear_quant(m, l, next)) {
        err_setf(err, "fold %s -> %s: layer %d is already quantized; fold before quantizing",
                 awq_prev_name(prev), model_lin_name(next), l);
        return -EINVAL;
    }
    if (prev == AWQ_PREV_INPUT_NORM || prev == AWQ_PREV_POST_ATTN_NORM) {
        /* Norm weight g / s, next's columns * s. */
        int nn = 0;
        float *g = model_norm(
            m, l, prev == AWQ_PREV_INPUT_NORM ? MODEL_NORM_INPUT : MODEL_NORM_POST_ATTN, &nn);
        Ln = model_linear(m, l, next);
        if (!g || nn != f.n || Ln->in != f.next_in) {
            err_setf(err, "fold %s -> %s: layer %d has no such norm or the shapes differ",
                     awq_prev_name(prev), model_lin_name(next), l);
            return -EINVAL;
        }
        Wn = xmalloc((size_t)Ln->out * Ln->in * sizeof(float));
        if ((rc = model_linear_get_f32(m, l, next, Wn, err)) == 0) {
            awq_fold_weights(&f, NULL, 0, Wn, Ln->out, s);
            rc = model_linear_set_f32(m, l, next, Wn, store, err);
        }
        if (rc == 0)
            for (int j = 0; j < nn; j++)
                g[j] /= s[j];
        free(Wn);
        return rc;
    }
    Lp = model_linear(m, l, (enum model_lin)prev);
    Ln = model_linear(m, l, next);
    if (Lp->out != f.n || Ln->in != f.next_in) {
        err_setf(err, "fold %s -> %s: layer %d shapes [%d, %d] -> [%d, %d] do not match the config",
                 awq_prev_name(prev), model_lin_name(next), l, Lp->out, Lp->in, Ln->out, Ln->in);
        return -EINVAL;
    }
    Wp = xmalloc((size_t)Lp->out * Lp->in * sizeof(float));
    Wn = xmalloc((size_t)Ln->out * Ln->in * sizeof(float));
    if ((rc = model_linear_get_f32(m, l, (enum model_lin)prev, Wp, err)) ||
        (rc = model_linear_get_f32(m, l, next, Wn, err)))
        goto out;
    awq_fold_weights(&f, Wp, Lp->in, Wn, Ln->out, s);
    if ((rc = model_linear_set_f32(m, l, (enum model_lin)prev, Wp, store, err)) ||
        (rc = model_linear_set_f32(m, l, next, Wn, store, err)))
        goto out;
    awq_fold_bias(m, l, &f, s);
out:
    free(Wp);
    free(Wn);
    return rc;
}

void awq_fold_bias(struct model *m, int l, const struct awq_fold *f, const float *s)
{
    int n = 0;
    float *b =
        (int)f->prev < MODEL_LIN_COUNT ? model_bias(m, l, (enum model_lin)f->prev, &n) : NULL;
    for (int r = 0; b && r < n && r < f->n; r++)
        b[r] /= s[r];
}

void awq_fold_reduce(const struct awq_fold *f, const float *col, enum awq_reduce how, float *out)
{
    int *cnt = xcalloc((size_t)f->n, sizeof(int));
    for (int i = 0; i < f->n; i++)
        out[i] = how == AWQ_REDUCE_MAX ? -INFINITY : 0.0f;
    for (int j = 0; j < f->next_in; j++) {
        int k = awq_fold_src(f, j);
        if (how == AWQ_REDUCE_MAX)
            out[k] = fmaxf(out[k], col[j]);
        else
            out[k] += col[j];
        cnt[k]++;
    }
    for (int i = 0; i < f->n; i++)
        if (how == AWQ_REDUCE_MEAN)
            out[i] = cnt[i] ? out[i] / (float)cnt[i] : 0.0f;
        else if (!cnt[i])
            out[i] = 0.0f;
    free(cnt);
}

/* ---- AWQ --------------------------------------------------------------------------------- */

void awq_opts_default(struct awq_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->duo_scaling = true;
    o->n_grid = 20;
    o->clip = true;
    o->max_shrink = 0.5;
    o->clip_grid = 20;
    o->scheme = QSCHEME_W4A16;
    o->group_size = 128;
    o->grid = QGRID_ABSMAX_QMAX;
    o->salience = AWQ_SALIENCE_L1;
}

void awq_salience_stat(enum awq_salience how, int n, const double *sum_abs, int64_t rows,
                       const float *H, float *out)
{
    for (int j = 0; j < n; j++) {
        if (how == AWQ_SALIENCE_L2)
            out[j] = H ? 0.5f * H[(size_t)j * n + j] : 0.0f;
        else
            out[j] = sum_abs && rows > 0 ? (float)(sum_abs[j] / (double)rows) : 0.0f;
    }
}

int awq_qdq(const float *W, int out, int in, enum qscheme scheme, int group_size, enum qgrid grid,
            float *dst)
{
    struct qweight q;
    if (qweight_init(&q, scheme, out, in, group_size) != 0)
        return -EINVAL;
    quant_rtn(&q, W, grid);
    qweight_dequant(&q, dst);
    qweight_release(&q);
    return 0;
}

double awq_quad_loss(const float *D, int out, int in, const float *H)
{
    size_t n = (size_t)out * in;
    float *Y = xmalloc(n * sizeof(float));
    struct linear L;
    double acc = 0.0;
    linear_init_dense(&L, in, in, KERN_F32, H);
    matmul(KERN_IMPL_CPU, Y, D, out, &L, 0);
    for (size_t i = 0; i < n; i++)
        acc += (double)D[i] * (double)Y[i];
    free(Y);
    return acc / (2.0 * out);
}

void awq_weight_mean(const float *W, int out, int in, int group_size, float *wmean)
{
    int G = group_size > 0 ? group_size : in;
    double *acc = xcalloc((size_t)in, sizeof(double));
    for (int r = 0; r < out; r++) {
        const float *row = W + (size_t)r * in;
        for (int k0 = 0; k0 < in; k0 += G) {
            int k1 = EXAQ_MIN(in, k0 + G);
            float mx = 0.0f;
            for (int k = k0; k < k1; k++)
                mx = fmaxf(mx, fabsf(row[k]));
            for (int k = k0; k < k1; k++)
                acc[k] += fabsf(row[k]) / (mx + 1e-6f);
        }
    }
    for (int k = 0; k < in; k++)
        wmean[k] = (float)(acc[k] / out);
    free(acc);
}

static int check_scheme(const struct awq_opts *o, char **err)
{
    if (o->scheme != QSCHEME_W4A16 && o->scheme != QSCHEME_W4A16_ASYM &&
        o->scheme != QSCHEME_W8A16 && o->scheme != QSCHEME_W8A16_ASYM &&
        o->scheme != QSCHEME_W8A8) {
        err_setf(err, "awq: scheme %s is not an integer weight scheme", qscheme_name(o->scheme));
        return -EINVAL;
    }
    return 0;
}

int awq_search_scale(const struct awq_fold *f, const float *W, int out, const float *H,
                     const float *x_mean, const struct awq_opts *o, float *s,
                     struct awq_search_stats *st, char **err)
{
    struct awq_search_stats res = { .ratio = -1.0, .best = -1 };
    float *wcol = NULL, *xs = NULL, *ws = NULL, *cand = NULL, *scol = NULL, *Ws = NULL;
    int rc = -EINVAL, n, in;
    double best = INFINITY;

    if (err)
        *err = NULL;
    if (!f || !W || !H || !x_mean || !o || !s || out < 1 || f->n < 1 || f->next_in < 1 ||
        o->n_grid < 1) {
        err_setf(err, "awq: bad search arguments");
        goto out;
    }
    if ((rc = check_scheme(o, err)))
        goto out;
    n = f->n;
    in = f->next_in;
    wcol = xmalloc((size_t)in * sizeof(float));
    xs = xmalloc((size_t)n * sizeof(float));
    ws = xmalloc((size_t)n * sizeof(float));
    cand = xmalloc((size_t)n * sizeof(float));
    scol = xmalloc((size_t)in * sizeof(float));
    Ws = xmalloc((size_t)out * in * sizeof(float));
    awq_weight_mean(W, out, in, o->group_size, wcol);
    awq_fold_reduce(f, wcol, AWQ_REDUCE_MEAN, ws);
    awq_fold_reduce(f, x_mean, AWQ_REDUCE_MEAN, xs);

    for (int k = 0; k < o->n_grid; k++) {
        double ratio = -1.0;
        if (k == 0) {
            for (int i = 0; i < n; i++)
                cand[i] = 1.0f;
        } else {
            float mx = 0.0f, mn = INFINITY;
            ratio = o->duo_scaling ? (o->n_grid > 2 ? (double)(k - 1) / (o->n_grid - 2) : 0.0)
                                   : (double)k / o->n_grid;
            for (int i = 0; i < n; i++) {
                float v = powf(xs[i], (float)ratio);
                if (o->duo_scaling)
                    v = v / (powf(ws[i], (float)(1.0 - ratio)) + 1e-4f);
                v = fmaxf(v, 1e-4f);
                cand[i] = v;
                mx = fmaxf(mx, v);
                mn = fminf(mn, v);
            }
            float norm = sqrtf(mx * mn);
            for (int i = 0; i < n; i++) {
                cand[i] /= norm;
                if (!isfinite(cand[i]) || cand[i] <= 0.0f)
                    cand[i] = 1.0f;
            }
        }
        for (int j = 0; j < in; j++)
            scol[j] = cand[awq_fold_src(f, j)];
        /* D = Q(W s) / s - W, column scale s. */
        for (int r = 0; r < out; r++)
            for (int j = 0; j < in; j++)
                Ws[(size_t)r * in + j] = W[(size_t)r * in + j] * scol[j];
        if (awq_qdq(Ws, out, in, o->scheme, o->group_size, o->grid, Ws) < 0) {
            err_setf(err, "awq: scheme %s does not allow group size %d for [%d, %d]",
                     qscheme_name(o->scheme), o->group_size, out, in);
            rc = -EINVAL;
            goto out;
        }
        for (int r = 0; r < out; r++)
            for (int j = 0; j < in; j++) {
                size_t i = (size_t)r * in + j;
                Ws[i] = Ws[i] / scol[j] - W[i];
            }
        double loss = awq_quad_loss(Ws, out, in, H);
        res.candidates++;
        if (k == 0)
            res.loss_identity = loss;
        if (loss < best) {
            best = loss;
            res.best = k;
            res.ratio = ratio;
            res.loss = loss;
            memcpy(s, cand, (size_t)n * sizeof(float));
        }
    }
    if (res.best < 0) {
        err_setf(err, "awq: no candidate scale gave a finite loss (NaN in the statistics?)");
        rc = -EINVAL;
        goto out;
    }
    rc = 0;
out:
    if (st)
        *st = res;
    free(wcol);
    free(xs);
    free(ws);
    free(cand);
    free(scol);
    free(Ws);
    return rc;
}

int awq_clip_search(float *W, int out, int in, const float *G, const struct awq_opts *o,
                    struct awq_clip_stats *st, char **err)
{
    struct awq_clip_stats res = { 0 };
    float *Gg = NULL, *D = NULL, *Y = NULL, *orgmax = NULL;
    double *best = NULL;
    int *besti = NULL;
    int rc = -EINVAL, bits, nshrink, gs;
    bool sym;

    if (err)
        *err = NULL;
    if (!W || !G || !o || out < 1 || in < 1 || o->clip_grid < 1 || !(o->max_shrink > 0.0) ||
        o->max_shrink > 1.0) {
        err_setf(err, "awq: bad clip arguments (clip_grid >= 1, max_shrink in (0, 1])");
        goto out;
    }
    if ((rc = check_scheme(o, err)))
        goto out;
    rc = -EINVAL;
    bits = qscheme_bits(o->scheme);
    sym = qscheme_symmetric(o->scheme);
    gs = o->group_size > 0 ? EXAQ_MIN(o->group_size, in) : in;
    nshrink = EXAQ_MAX(1, (int)(o->max_shrink * o->clip_grid));
    Gg = xmalloc((size_t)gs * gs * sizeof(float));
    D = xmalloc((size_t)out * gs * sizeof(float));
    Y = xmalloc((size_t)out * gs * sizeof(float));
    orgmax = xmalloc((size_t)out * sizeof(float));
    best = xmalloc((size_t)out * sizeof(double));
    besti = xmalloc((size_t)out * sizeof(int));
    for (int k0 = 0; k0 < in; k0 += gs) {
        int k1 = EXAQ_MIN(in, k0 + gs), w = k1 - k0;
        struct linear L;
        for (int a = 0; a < w; a++)
            memcpy(Gg + (size_t)a * w, G + (size_t)(k0 + a) * in + k0, (size_t)w * sizeof(float));
        linear_init_dense(&L, w, w, KERN_F32, Gg);
        for (int r = 0; r < out; r++) {
            const float *row = W + (size_t)r * in + k0;
            float mx = 0.0f;
            for (int k = 0; k < w; k++)
                mx = fmaxf(mx, fabsf(row[k]));
            orgmax[r] = mx;
            best[r] = INFINITY;
            besti[r] = 0;
        }
        for (int i = 0; i < nshrink; i++) {
            for (int r = 0; r < out; r++) {
                const float *row = W + (size_t)r * in + k0;
                float mv = orgmax[r] * (1.0f - (float)i / (float)o->clip_grid);
                float mn = 0.0f, mxv = 0.0f, am = 0.0f, sc;
                int8_t z = 0;
                for (int k = 0; k < w; k++) {
                    float c = fminf(fmaxf(row[k], -mv), mv);
                    mn = fminf(mn, c);
                    mxv = fmaxf(mxv, c);
                    am = fmaxf(am, fabsf(c));
                }
                if (sym) {
                    sc = quant_bf16_to_f32(quant_scale_sym(am, bits, o->grid));
                } else {
                    uint16_t s16;
                    quant_scale_asym(mn, mxv, bits, &s16, &z);
                    sc = quant_bf16_to_f32(s16);
                }
                for (int k = 0; k < w; k++) {
                    float c = fminf(fmaxf(row[k], -mv), mv);
                    float q = (float)(quant_code(c, sc, z, bits) - z) * sc;
                    D[(size_t)r * w + k] = row[k] - q;
                }
            }
            matmul(KERN_IMPL_CPU, Y, D, out, &L, 0);
            for (int r = 0; r < out; r++) {
                double e = 0.0;
                for (int k = 0; k < w; k++)
                    e += (double)D[(size_t)r * w + k] * (double)Y[(size_t)r * w + k];
                if (i == 0)
                    res.err_before += e;
                if (e < best[r]) {
                    best[r] = e;
                    besti[r] = i;
                }
            }
        }
        for (int r = 0; r < out; r++) {
            if (isfinite(best[r]))
                res.err_after += best[r];
            if (besti[r] == 0)
                continue;
            float mv = orgmax[r] * (1.0f - (float)besti[r] / (float)o->clip_grid);
            float *row = W + (size_t)r * in + k0;
            for (int k = 0; k < w; k++)
                row[k] = fminf(fmaxf(row[k], -mv), mv);
            res.groups_clipped++;
        }
    }
    rc = 0;
out:
    if (st)
        *st = res;
    free(Gg);
    free(D);
    free(Y);
    free(orgmax);
    free(best);
    free(besti);
    return rc;
}
