/*
 * awq: activation-aware weight quantization (AWQ, algorithms spec 2.1) for EXAONE-4, and the
 * exact per-channel scale folds that AWQ and SmoothQuant (worker/compress/smoothquant.c) share.
 *
 * A fold divides the output channels of a "previous op" by s and multiplies the matching input
 * columns of the next linear by s. It is exact only when the next linear's input channel is the
 * previous op's output channel times something that does not depend on it. In EXAONE-4's
 * post-norm block (spec 2.2) exactly two pairs qualify: up_proj -> down_proj (silu(gate) * up is
 * linear in up) and v_proj -> o_proj (attention is linear in V; under GQA one s per KV channel,
 * repeated for the query heads that read it). awq_fold_resolve() derives this from the block's
 * data flow and refuses every other pair with a message; awq_fold_apply() never touches the
 * weights of a refused pair.
 *
 * The AWQ pieces work on fp32 arrays and Gram matrices and do no model I/O: the quantize stage
 * (worker/stages/stage_quant.c) gathers the statistics with forward hooks and calls them per layer.
 */
#ifndef EXAQ_AWQ_H
#define EXAQ_AWQ_H

#include <stdbool.h>

#include "worker/engine/config.h"
#include "worker/engine/model.h"
#include "worker/engine/quant.h"

/* ---- exact folds ------------------------------------------------------------------------- */

/* An op of one decoder layer whose output channels a fold would divide by s. The first seven
 * values equal enum model_lin, so AWQ_PREV_LIN(w) converts a linear. */
enum awq_prev {
    AWQ_PREV_Q_PROJ = 0,
    AWQ_PREV_K_PROJ,
    AWQ_PREV_V_PROJ,
    AWQ_PREV_O_PROJ,
    AWQ_PREV_GATE_PROJ,
    AWQ_PREV_UP_PROJ,
    AWQ_PREV_DOWN_PROJ,
    AWQ_PREV_Q_NORM,         /* self_attn.q_norm (per-head RMSNorm after q_proj) */
    AWQ_PREV_K_NORM,         /* self_attn.k_norm */
    AWQ_PREV_POST_ATTN_NORM, /* post_attention_layernorm (post-norm of the attention branch) */
    AWQ_PREV_POST_FFN_NORM,  /* post_feedforward_layernorm (post-norm of the MLP branch) */
    AWQ_PREV_INPUT_NORM,     /* input_layernorm (pre-norm families: the input of q/k/v) */
    AWQ_PREV_COUNT,
};
#define AWQ_PREV_LIN(w) ((enum awq_prev)(w))

/* "self_attn.v_proj", ..., "post_attention_layernorm"; "?" when out of range. */
const char *awq_prev_name(enum awq_prev p);

enum awq_flow {
    AWQ_FLOW_ILLEGAL = 0,
    AWQ_FLOW_CHANNEL, /* next input channel j = a_j * prev output channel j (up -> down) */
    AWQ_FLOW_GQA,     /* next input channel (h, d) = sum_t a_ht * prev channel (h / rep, d) */
};

/* A legal fold, as awq_fold_resolve() describes it. */
struct awq_fold {
    enum awq_prev prev;
    enum model_lin next;
    enum awq_flow flow;
    int n;        /* length of s: prev's output channels (v: kv_heads*head_dim; up: intermediate) */
    int next_in;  /* next's input columns (o: heads*head_dim; down: intermediate) */
    int rep;      /* GQA: query heads per KV head; 1 for AWQ_FLOW_CHANNEL */
    int head_dim; /* GQA: head_dim; 0 for AWQ_FLOW_CHANNEL */
};

/*
 * Decides from the block's data flow (the family row's fold table, worker/engine/family.h)
 * whether dividing prev's output channels by s and
 * multiplying next's input columns by s leaves the layer's function unchanged. Returns 0 and
 * fills *f for up_proj -> down_proj and v_proj -> o_proj (every family), and in the pre-norm
 * families also input_layernorm -> q/k/v and post_attention_layernorm -> gate/up (shapes
 * checked against the config);
 * any other pair returns -EINVAL with a message in *err (a new string; err may be NULL) saying
 * why the fold would not be exact. Never applies anything.
 */
int awq_fold_resolve(const struct config *c, enum awq_prev prev, enum model_lin next,
                     struct awq_fold *f, char **err);
/* A linear prev's bias (qwen2's v_proj) divided by s with its rows, as awq_fold_weights does to
 * the rows; nothing for a norm or a linear without bias. */
void awq_fold_bias(struct model *m, int l, const struct awq_fold *f, const float *s);
/* The scale index that next's input column j reads (j itself, or (j / head_dim / rep) *
 * head_dim + j % head_dim under GQA). */
int awq_fold_src(const struct awq_fold *f, int j);

/* The fold on fp32 arrays: Wprev [n][prev_in] rows divided by s, Wnext [next_out][next_in]
 * columns multiplied by s[awq_fold_src(j)]. Either array may be NULL (only the other is
 * scaled). */
void awq_fold_weights(const struct awq_fold *f, float *Wprev, int prev_in, float *Wnext,
                      int next_out, const float *s);

/*
 * Resolves the fold for layer l of m and, only when it is legal, applies it to the model's
 * weights (stored back as `store`: KERN_F32 keeps the fold exact to fp32 rounding, KERN_BF16
 * rounds like a saved checkpoint). s has f.n positive finite values. Refuses (-EINVAL, *err set,
 * weights untouched) an illegal pair, a quantized linear, or a non-positive / non-finite s.
 */
int awq_fold_apply(struct model *m, int l, enum awq_prev prev, enum model_lin next, const float *s,
                   enum kern_dtype store, char **err);

enum awq_reduce {
    AWQ_REDUCE_MEAN = 0, /* mean over the next-input columns that read one scale index */
    AWQ_REDUCE_MAX,      /* maximum over them */
};
/* Collapses a per-next-input-column statistic col[next_in] to one value per scale index
 * (out[n]); identity for AWQ_FLOW_CHANNEL. */
void awq_fold_reduce(const struct awq_fold *f, const float *col, enum awq_reduce how, float *out);

/* ---- AWQ --------------------------------------------------------------------------------- */

/* The activation salience the scale search reads per input column. */
enum awq_salience {
    AWQ_SALIENCE_L1 = 0, /* E[|x|] (AutoAWQ, llm-compressor) */
    AWQ_SALIENCE_L2,     /* E[x^2] */
};

/* The salience of n input columns into out[n]: L1 is sum_abs[j] / rows (0 when rows is 0); L2
 * is H[j][j] / 2, the diagonal of the Hessian from hess_finish (2/n sum x^T x), i.e. E[x^2]
 * over the same tokens. sum_abs may be NULL for L2, H may be NULL for L1. */
void awq_salience_stat(enum awq_salience how, int n, const double *sum_abs, int64_t rows,
                       const float *H, float *out);

struct awq_opts {
    bool duo_scaling;           /* s from activations and weights (true) or activations only */
    int n_grid;                 /* scale candidates, identity included (20) */
    bool clip;                  /* clip search after scaling (true) */
    double max_shrink;          /* clip: largest shrink of a group's max (0.5) */
    int clip_grid;              /* clip: shrink step 1/clip_grid (20) */
    enum qscheme scheme;        /* integer scheme the result is quantized to */
    int group_size;             /* > 0 or -1 (per output channel) */
    enum qgrid grid;            /* symmetric integer grid convention */
    enum awq_salience salience; /* which x statistic the caller passes as x_mean */
};
/* duo_scaling, n_grid 20, clip, max_shrink 0.5, clip_grid 20, W4A16, group 128,
 * QGRID_ABSMAX_QMAX, salience L1. */
void awq_opts_default(struct awq_opts *o);

/* Quantize-dequantize of W [out][in] with RTN on the scheme's grid into dst (may equal W).
 * 0, or -EINVAL for a scheme / group size qweight_init rejects. */
int awq_qdq(const float *W, int out, int in, enum qscheme scheme, int group_size, enum qgrid grid,
            float *dst);

/* tr(D H D^T) / (2 * out) for D [out][in] and H [in][in] (full symmetric). With H from
 * hess_finish (2/n sum x x^T) this is the mean squared error over all calibration tokens and
 * output elements of y = x D^T. */
double awq_quad_loss(const float *D, int out, int in, const float *H);

struct awq_search_stats {
    double ratio;         /* exponent of the winning candidate; -1 when the identity won */
    int best;             /* index of the winning candidate (0 = identity, i.e. plain RTN) */
    int candidates;       /* candidates evaluated */
    double loss;          /* awq_quad_loss of Q(W s)/s - W at the winner */
    double loss_identity; /* the same for s = 1 (plain RTN), so loss <= loss_identity */
};

/*
 * The AWQ scale search for one fold (spec 2.1). W is next's weight [out][f->next_in] (not
 * modified); H is the Gram matrix of next's calibration input [next_in][next_in] (hess_finish
 * scaling), x_mean[next_in] the mean |x| of each input column. Candidates, in order: the
 * identity (s = 1: plain RTN), then with duo_scaling the n_grid - 1 ratios r = k / (n_grid - 2),
 * k = 0..n_grid-2 (llm-compressor's current grid), s = max(x^r / (w^(1-r) + 1e-4), 1e-4); without
 * it r = k / n_grid for k = 1..n_grid-1, s = max(x^r, 1e-4). x and w are x_mean and the duo weight
 * statistic (|W| / max|W| per quantization group, mean over rows), both reduced per scale index
 * by the mean (GQA). s is normalised by sqrt(max s * min s), non-finite values become 1. Each
 * candidate is scored by awq_quad_loss(Q(W diag(s)) diag(s)^-1 - W, H), the MSE of next's output
 * on every calibration token; the lowest wins (ties keep the earlier). Writes s[f->n].
 * Returns 0 or -EINVAL with *err set.
 */
int awq_search_scale(const struct awq_fold *f, const float *W, int out, const float *H,
                     const float *x_mean, const struct awq_opts *o, float *s,
                     struct awq_search_stats *st, char **err);

struct awq_clip_stats {
    double err_before; /* sum over rows and groups of d^T G_g d at shrink 0 (no clipping) */
    double err_after;  /* the same at the chosen shrinks (never larger) */
    long groups_clipped;
};

/*
 * AWQ's clip search (`auto_clip_layer`, spec 2.1) on W [out][in] in place: for every row and
 * quantization group, candidates max_val = amax|w_g| * (1 - i / clip_grid) for
 * i = 0 .. (int)(max_shrink * clip_grid) - 1; w clamped to [-max_val, max_val] and quantized on
 * the scheme's grid; the error d = w - Q(clamp(w)) is scored as d^T G_g d, with G [in][in] the
 * Gram matrix of the input the linear reads (AWQ samples 512 tokens for it) and G_g its
 * diagonal block. The best candidate's clamp is applied to W (i = 0 leaves the group as it was,
 * so the error never grows). Per-channel (group_size -1) uses the whole row as one group.
 * Returns 0 or -EINVAL with *err set.
 */
int awq_clip_search(float *W, int out, int in, const float *G, const struct awq_opts *o,
                    struct awq_clip_stats *st, char **err);

/* The duo weight statistic of spec 2.1 for W [out][in]: |w| / (max|w| of its quantization group
 * + 1e-6), mean over rows, per input column (wmean[in]). */
void awq_weight_mean(const float *W, int out, int in, int group_size, float *wmean);

#endif
