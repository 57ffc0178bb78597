/*
 * stage_quant: the `quantize` stage: RTN, GPTQ, AWQ, SmoothQuant and SparseGPT into the
 * compressed-tensors formats (or, for SparseGPT with scheme none, a dense BF16 checkpoint).
 *
 * RTN needs no data (except scheme FP8, whose static input scales come from calibration).
 * The calibrated methods run layer by layer: the calibration windows are embedded once; for
 * each layer one pass with forward hooks gathers the statistics of the linears' inputs
 * (Hessians: q/k/v share one, gate/up share one, plus o and down; AWQ also the mean |x| per
 * channel and the Gram matrix of 512 sampled tokens for its clip search; SmoothQuant the max |x|
 * per channel), then every linear of the layer is processed. Two ways to get the next layer's
 * inputs:
 *  - GPTQ and SparseGPT: a second pass through the now-quantized (pruned) layer, so the error
 *    propagates as in the references (algorithms spec 1.1, 3.3);
 *  - AWQ and SmoothQuant: the statistics pass runs in place on the FP layer, so the next layer
 *    sees the FP model's activations, as llm-awq/AutoAWQ and SmoothQuant's act-scale
 *    collection do (spec 2.1: "the next layer's input is the FP output").
 * AWQ and SmoothQuant scales go in only through the exact folds of worker/compress/awq.h (up_proj
 * -> down_proj, v_proj -> o_proj), so the saved model is a plain compressed-tensors checkpoint. The
 * quantized linears live in the engine as their exact dequantization (model_linear_set_quant) and
 * model_save writes them with the matching quantization_config.
 */
#include "worker/stages/stage.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/compress/awq.h"
#include "worker/engine/family.h"
#include "worker/engine/calib.h"
#include "worker/engine/ctensors.h"
#include "worker/compress/gptq.h"
#include "worker/compress/greedy.h"
#include "worker/engine/model.h"
#include "worker/compress/smoothquant.h"
#include "worker/compress/sparsegpt.h"

enum qmethod {
    QM_RTN,
    QM_GPTQ,
    QM_AWQ,
    QM_SMOOTHQUANT,
    QM_SPARSEGPT,
};

struct qspec {
    enum qmethod method;
    enum qscheme scheme;
    bool dense; /* sparsegpt with scheme none: prune only, save dense BF16 */
    int group_size;
    struct ctensors_cfg ign; /* the ignore list, matched like a loader does */
    struct gptq_opts gptq;   /* also the Hessian options of sparsegpt */
    struct awq_opts awq;
    double alpha; /* smoothquant */
    struct sparsegpt_opts sgpt;
    bool greedy; /* rounding: greedy (RTN and AWQ) */
    struct greedy_opts gr;
    bool calibrated;
};

/* Inputs shared by linears: which Hessian / activation statistic a linear reads. */
enum qinput { QIN_QKV = 0, QIN_O, QIN_GATEUP, QIN_DOWN, QIN__COUNT };

static enum qinput input_of(enum model_lin w)
{
    switch (w) {
    case MODEL_LIN_Q:
    case MODEL_LIN_K:
    case MODEL_LIN_V:
        return QIN_QKV;
    case MODEL_LIN_O:
        return QIN_O;
    case MODEL_LIN_GATE:
    case MODEL_LIN_UP:
        return QIN_GATEUP;
    default:
        return QIN_DOWN;
    }
}

/*
 * The spec is complete: the lanes parser wrote it and the worker checked it with
 * lanes_spec_check before the stage ran. These readers apply no default of their own: a field
 * that is absent or of the wrong type records its name in *missing, and parse_spec fails naming
 * it. The rules (which scheme suits which method, the ranges) are the parser's; the checks left
 * here are what this build cannot run (the parser refuses the same specs earlier).
 */
static const char *jstr(const cJSON *o, const char *k, const char **missing)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsString(v))
        return v->valuestring;
    *missing = *missing ? *missing : k;
    return "";
}

static double jnum(const cJSON *o, const char *k, const char **missing)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    *missing = *missing ? *missing : k;
    return 0;
}

static bool jbool(const cJSON *o, const char *k, const char **missing)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    *missing = *missing ? *missing : k;
    return false;
}

static int parse_spec(struct stage_ctx *ctx, const cJSON *spec, struct qspec *q)
{
    const char *missing = NULL;
    const char *method = jstr(spec, "method", &missing);
    const char *scheme = jstr(spec, "scheme", &missing);
    const cJSON *ign = cJSON_GetObjectItemCaseSensitive(spec, "ignore"), *it;
    memset(q, 0, sizeof(*q));
    if (!cJSON_IsArray(ign))
        missing = missing ? missing : "ignore";
    if (!strcmp(method, "rtn"))
        q->method = QM_RTN;
    else if (!strcmp(method, "gptq"))
        q->method = QM_GPTQ;
    else if (!strcmp(method, "awq"))
        q->method = QM_AWQ;
    else if (!strcmp(method, "smoothquant"))
        q->method = QM_SMOOTHQUANT;
    else if (!strcmp(method, "sparsegpt"))
        q->method = QM_SPARSEGPT;
    else if (method[0])
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "unknown quantize method '%s' (rtn, gptq, awq, smoothquant, sparsegpt)",
                          method);
    if (!strcmp(scheme, "none")) {
        q->dense = true;
        q->scheme = QSCHEME_W8A16; /* unused */
    } else if (scheme[0] && qscheme_parse(scheme, &q->scheme) < 0) {
        return stage_fail(ctx, STAGE_ERR_ERROR, "unknown quantization scheme '%s'", scheme);
    }
    if (q->dense && q->method != QM_SPARSEGPT)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "scheme 'none' is only for method sparsegpt (sparsity without "
                          "quantization), not '%s'",
                          method);
    if ((q->method == QM_GPTQ || q->method == QM_SPARSEGPT) &&
        (q->scheme == QSCHEME_FP8 || q->scheme == QSCHEME_FP8_DYNAMIC))
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "%s quantizes to integer grids; use method rtn for scheme %s", method,
                          scheme);
    if (q->method == QM_AWQ && !q->dense && q->scheme != QSCHEME_W4A16 &&
        q->scheme != QSCHEME_W4A16_ASYM && q->scheme != QSCHEME_W8A16 &&
        q->scheme != QSCHEME_W8A16_ASYM)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "awq is a weight-only method for W4A16, W4A16_ASYM, W8A16 and "
                          "W8A16_ASYM, not %s "
                          "(use smoothquant for W8A8, rtn for FP8)",
                          scheme);
    if (q->method == QM_SMOOTHQUANT && q->scheme != QSCHEME_W8A8)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "quantize method 'smoothquant' needs scheme W8A8, got '%s'", scheme);
    q->group_size = (int)jnum(spec, "group_size", &missing);
    gptq_opts_default(&q->gptq);
    q->gptq.grid = QGRID_ABSMAX_QMAX;
    if (q->method == QM_GPTQ || q->method == QM_SPARSEGPT) {
        q->gptq.dampening = jnum(spec, "dampening", &missing);
        q->gptq.block_size = (int)jnum(spec, "block_size", &missing);
    }
    if (q->method == QM_GPTQ) {
        const char *actorder = jstr(spec, "actorder", &missing);
        q->gptq.actorder = !strcmp(actorder, "static")  ? GPTQ_ACTORDER_STATIC
                           : !strcmp(actorder, "group") ? GPTQ_ACTORDER_GROUP
                                                        : GPTQ_ACTORDER_NONE;
        q->gptq.static_groups = jbool(spec, "static_groups", &missing);
        /* llm-compressor's grid (absmax / 7.5, compressed-tensors' observer) and a range search
         * per static group (docs/quantization.md "GPTQ against llm-compressor"). */
        q->gptq.grid = QGRID_ABSMAX_HALF;
        q->gptq.scale_search = 20;
    }
    if (cJSON_IsArray(ign)) {
        cJSON_ArrayForEach(it, ign)
        {
            if (!cJSON_IsString(it))
                continue;
            q->ign.ignore = xrealloc(q->ign.ignore, (size_t)(q->ign.nignore + 1) * sizeof(char *));
            q->ign.ignore[q->ign.nignore++] = xstrdup(it->valuestring);
        }
    }
    /* AWQ (spec 2.1): the grid of the stage (absmax/7 symmetric, as the RTN and GPTQ paths). */
    awq_opts_default(&q->awq);
    if (q->method == QM_AWQ) {
        q->awq.duo_scaling = jbool(spec, "duo_scaling", &missing);
        q->awq.n_grid = (int)jnum(spec, "n_grid", &missing);
        q->awq.clip = jbool(spec, "clip", &missing);
        /* Written only when not the default l1 (keys of older stages stay the same). */
        const cJSON *sal = cJSON_GetObjectItemCaseSensitive(spec, "salience");
        if (sal && !(cJSON_IsString(sal) &&
                     (!strcmp(sal->valuestring, "l1") || !strcmp(sal->valuestring, "l2"))))
            return stage_fail(ctx, STAGE_ERR_ERROR, "unknown AWQ salience (l1, l2)");
        q->awq.salience =
            sal && !strcmp(sal->valuestring, "l2") ? AWQ_SALIENCE_L2 : AWQ_SALIENCE_L1;
    }
    greedy_opts_default(&q->gr);
    {
        /* rounding: written only when greedy, with its outlier_percent. */
        const cJSON *rnd = cJSON_GetObjectItemCaseSensitive(spec, "rounding");
        if (rnd && !(cJSON_IsString(rnd) &&
                     (!strcmp(rnd->valuestring, "nearest") || !strcmp(rnd->valuestring, "greedy"))))
            return stage_fail(ctx, STAGE_ERR_ERROR, "unknown rounding (nearest, greedy)");
        q->greedy = rnd && !strcmp(rnd->valuestring, "greedy");
        if (q->greedy && q->method != QM_RTN && q->method != QM_AWQ)
            return stage_fail(ctx, STAGE_ERR_ERROR,
                              "rounding 'greedy' is for methods rtn and awq, not '%s'", method);
        if (q->greedy)
            q->gr.outlier_percent = jnum(spec, "outlier_percent", &missing);
    }
    q->awq.scheme = q->scheme;
    q->awq.group_size = q->group_size;
    q->awq.grid = q->gptq.grid;
    if (q->method == QM_SMOOTHQUANT)
        q->alpha = jnum(spec, "alpha", &missing);
    sparsegpt_opts_default(&q->sgpt);
    q->sgpt.grid = q->gptq.grid;
    if (q->method == QM_SPARSEGPT) {
        const char *pattern = jstr(spec, "pattern", &missing);
        q->sgpt.sparsity = jnum(spec, "sparsity", &missing);
        if (!strcmp(pattern, "2:4")) {
            q->sgpt.prune_n = 2;
            q->sgpt.prune_m = 4;
        } else if (pattern[0] && strcmp(pattern, "unstructured") != 0) {
            return stage_fail(ctx, STAGE_ERR_ERROR,
                              "unknown sparsity pattern '%s' (unstructured, 2:4)", pattern);
        }
        /* SparseGPT keeps the column order (spec 3.3 has no act-order). */
        q->gptq.actorder = GPTQ_ACTORDER_NONE;
        q->gptq.static_groups = false;
        q->gptq.compute_loss_rtn = false;
    }
    if (missing)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "spec: missing field '%s' for quantize (method '%s'); the lanes parser "
                          "writes complete specs",
                          missing, method);
    q->calibrated = q->method != QM_RTN || q->scheme == QSCHEME_FP8 || q->greedy;
    return 0;
}

/* Which linears stay dense; q/k/v and gate/up must agree (vLLM fuses them). */
static int resolve_ignore(struct stage_ctx *ctx, const struct model *m, const struct qspec *q,
                          bool *ignored /* [n_layers][MODEL_LIN_COUNT] */)
{
    static const int fused[][3] = { { MODEL_LIN_Q, MODEL_LIN_K, MODEL_LIN_V },
                                    { MODEL_LIN_GATE, MODEL_LIN_UP, MODEL_LIN_UP } };
    for (int l = 0; l < m->n_layers; l++) {
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            char name[96];
            model_module_name(l, (enum model_lin)w, name, sizeof(name));
            ignored[l * MODEL_LIN_COUNT + w] = ctensors_ignored(&q->ign, name);
        }
        for (size_t f = 0; f < EXAQ_ARRAY_LEN(fused); f++)
            for (int k = 1; k < 3; k++)
                if (ignored[l * MODEL_LIN_COUNT + fused[f][0]] !=
                    ignored[l * MODEL_LIN_COUNT + fused[f][k]])
                    return stage_fail(ctx, STAGE_ERR_ERROR,
                                      "ignore list: layer %d's %s and %s must be ignored together "
                                      "(vLLM fuses them into one layer)",
                                      l, model_lin_name((enum model_lin)fused[f][0]),
                                      model_lin_name((enum model_lin)fused[f][k]));
    }
    return 0;
}

/* ---- calibration statistics, gathered by forward hooks ---- */

struct layer_stats {
    struct hessian h[QIN__COUNT];
    struct gptq_prep *prep[QIN__COUNT]; /* factored once per input, shared by its linears */
    float absmax[QIN__COUNT];
    bool want_h, want_absmax;
    /* AWQ and SmoothQuant: per-channel sum |x| and max |x| of the o_proj and down_proj inputs
     * (the inputs of the fold targets); [input_dim] each, NULL for the other inputs. */
    bool want_chan;
    double *chan_sum[QIN__COUNT];
    float *chan_max[QIN__COUNT];
    int64_t chan_rows[QIN__COUNT];
    /* AWQ clip search: the Gram matrix of the tokens whose global index (window * seq_len + t)
     * is a multiple of clip_stride, about 512 of them (AutoAWQ `n_sample_token`). */
    bool want_clip;
    struct hessian hc[QIN__COUNT];
    /* rounding: greedy, summed over the quantized linears (greedy.h's errors) */
    double g_nearest, g_greedy;
    long g_flips, g_cands;
    int window, seq_len;
    int64_t clip_stride;
    float *rows;
    size_t rows_cap;
};

static enum qinput point_input(enum model_hook_point pt)
{
    switch (pt) {
    case MODEL_HOOK_QKV_IN:
        return QIN_QKV;
    case MODEL_HOOK_O_IN:
        return QIN_O;
    case MODEL_HOOK_GATEUP_IN:
        return QIN_GATEUP;
    default:
        return QIN_DOWN;
    }
}

static int stats_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T, int n)
{
    struct layer_stats *s = arg;
    enum qinput k = point_input(pt);
    (void)layer;
    if (s->want_h)
        hess_add(&s->h[k], x, T);
    if (s->want_absmax) {
        float mx = s->absmax[k];
        for (size_t i = 0; i < (size_t)T * n; i++)
            mx = fmaxf(mx, fabsf(x[i]));
        s->absmax[k] = mx;
    }
    if (s->want_chan && s->chan_sum[k]) {
        double *sum = s->chan_sum[k];
        float *mx = s->chan_max[k];
        for (int t = 0; t < T; t++) {
            const float *row = x + (size_t)t * n;
            for (int j = 0; j < n; j++) {
                float a = fabsf(row[j]);
                sum[j] += a;
                mx[j] = fmaxf(mx[j], a);
            }
        }
        s->chan_rows[k] += T;
    }
    if (s->want_clip) {
        int cnt = 0;
        if (s->rows_cap < (size_t)T * n) {
            free(s->rows);
            s->rows_cap = (size_t)T * n;
            s->rows = xmalloc(s->rows_cap * sizeof(float));
        }
        for (int t = 0; t < T; t++)
            if (((int64_t)s->window * s->seq_len + t) % s->clip_stride == 0)
                memcpy(s->rows + (size_t)cnt++ * n, x + (size_t)t * n, (size_t)n * sizeof(float));
        if (cnt)
            hess_add(&s->hc[k], s->rows, cnt);
    }
    return 0;
}

static int input_dim(const struct model *m, enum qinput k)
{
    const struct config *c = &m->cfg;
    switch (k) {
    case QIN_O:
        return c->num_attention_heads * c->head_dim;
    case QIN_DOWN:
        return c->intermediate_size;
    default:
        return c->hidden_size;
    }
}

/* rounding: greedy on a nearest-rounded qw (greedy.h); adds its errors to s's totals. */
static int greedy_linear(struct stage_ctx *ctx, const struct qspec *q, int l, enum model_lin w,
                         struct qweight *qw, const float *Wround, const float *Wref, const float *H,
                         struct layer_stats *s)
{
    struct greedy_stats gs;
    char *err = NULL;
    if (greedy_round(qw, Wround, Wref, H, NULL, &q->gr, &gs, &err) < 0) {
        int rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                            err ? err : "greedy rounding failed");
        free(err);
        return rc;
    }
    s->g_nearest += gs.err_nearest;
    s->g_greedy += gs.err_greedy;
    s->g_flips += gs.flips;
    s->g_cands += gs.candidates;
    stage_log(ctx, "layer %d %s: greedy rounding error %.6g, nearest %.6g (%ld flips)", l,
              model_lin_name(w), gs.err_greedy, gs.err_nearest, gs.flips);
    return 0;
}

/* Quantizes one linear (W in fp32) and installs it. */
static int quantize_linear(struct stage_ctx *ctx, struct model *m, const struct qspec *q, int l,
                           enum model_lin w, struct layer_stats *s, double *loss, double *loss_rtn)
{
    const struct linear *L = model_linear(m, l, w);
    float *W = xmalloc((size_t)L->out * L->in * sizeof(float));
    struct qweight qw;
    char *err = NULL;
    int rc = model_linear_get_f32(m, l, w, W, &err);
    if (rc == 0 && qweight_init(&qw, q->scheme, L->out, L->in, q->group_size) < 0) {
        free(W);
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "scheme %s does not allow group size %d (layer %d %s is [%d, %d])",
                          qscheme_name(q->scheme), q->group_size, l, model_lin_name(w), L->out,
                          L->in);
    }
    if (rc == 0 && q->method == QM_GPTQ) {
        struct gptq_stats st;
        rc = gptq_quantize_prep(&qw, W, s->prep[input_of(w)], &st, &err);
        if (rc == 0) {
            *loss += st.loss;
            *loss_rtn += st.loss_rtn;
            if (st.fallback_rtn)
                stage_log(ctx, "layer %d %s: Cholesky failed at every dampening; used RTN", l,
                          model_lin_name(w));
            else if (st.damp_used > q->gptq.dampening * 1.0001)
                stage_log(ctx, "layer %d %s: dampening raised to %g for Cholesky", l,
                          model_lin_name(w), st.damp_used);
        }
    } else if (rc == 0) {
        quant_rtn(&qw, W, q->gptq.grid);
        if (q->greedy)
            rc = greedy_linear(ctx, q, l, w, &qw, W, W, s->h[input_of(w)].H, s);
    }
    if (rc == 0 && q->scheme == QSCHEME_FP8) {
        float a = s->absmax[input_of(w)];
        qw.input_scale = quant_bf16_to_f32(quant_f32_to_bf16(a > 0 ? a / 448.0f : 1.0f));
    }
    if (rc == 0)
        rc = model_linear_set_quant(m, l, w, &qw, &err);
    free(W);
    if (rc) {
        qweight_release(&qw);
        stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                   err ? err : "quantization failed");
        free(err);
        return STAGE_ERR_ERROR;
    }
    return 0;
}

/* ---- helpers shared by AWQ, SmoothQuant and SparseGPT ---- */

/* The linear's weights as a new fp32 [out][in] array, or NULL after stage_fail. */
static float *lin_f32(struct stage_ctx *ctx, struct model *m, int l, enum model_lin w)
{
    const struct linear *L = model_linear(m, l, w);
    float *W = xmalloc((size_t)L->out * L->in * sizeof(float));
    char *err = NULL;
    if (model_linear_get_f32(m, l, w, W, &err) < 0) {
        stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                   err ? err : "cannot read the weights");
        free(err);
        free(W);
        return NULL;
    }
    return W;
}

/* Installs *qw (taken, also on failure) as the quantized linear. */
static int install_quant(struct stage_ctx *ctx, struct model *m, int l, enum model_lin w,
                         struct qweight *qw)
{
    char *err = NULL;
    if (model_linear_set_quant(m, l, w, qw, &err) < 0) {
        qweight_release(qw);
        stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                   err ? err : "cannot install the quantized weight");
        free(err);
        return STAGE_ERR_ERROR;
    }
    return 0;
}

/* Installs dense weights W [out][in] stored as `store`. */
static int install_dense(struct stage_ctx *ctx, struct model *m, int l, enum model_lin w,
                         const float *W, enum kern_dtype store)
{
    char *err = NULL;
    if (model_linear_set_f32(m, l, w, W, store, &err) < 0) {
        stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                   err ? err : "cannot install the weights");
        free(err);
        return STAGE_ERR_ERROR;
    }
    return 0;
}

/* A new qweight for the stage's scheme (*qw); fails only on a bad group size. */
static int qinit(struct stage_ctx *ctx, const struct qspec *q, int l, enum model_lin w, int out,
                 int in, struct qweight *qw)
{
    if (qweight_init(qw, q->scheme, out, in, q->group_size) < 0)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "scheme %s does not allow group size %d (layer %d %s is [%d, %d])",
                          qscheme_name(q->scheme), q->group_size, l, model_lin_name(w), out, in);
    return 0;
}

/* RTN of W on the stage's grid into a new qweight (*qw). */
static int rtn_new(struct stage_ctx *ctx, const struct qspec *q, int l, enum model_lin w,
                   const float *W, int out, int in, struct qweight *qw)
{
    int rc = qinit(ctx, q, l, w, out, in, qw);
    if (rc == 0)
        quant_rtn(qw, W, q->gptq.grid);
    return rc;
}

/* One smoothing fold: a scale on the shared input of next[0..nnext-1], divided out of prev (a
 * linear's rows, or a pre-norm's weight). */
struct fold_group {
    enum awq_prev prev;
    int prev_lin; /* prev as a model_lin, or -1 for a norm */
    enum model_lin next[3];
    int nnext;
    const char *tag;
};

#define MAX_FOLDS 4

/* The legal folds of the model's family (worker/engine/family.h, resolved by awq.c), in the
 * order AWQ searches them: input_layernorm -> q/k/v, v -> o, post_attention_layernorm ->
 * gate/up, up -> down; EXAONE-4 (post-norm) has only v -> o and up -> down. */
static int fold_groups(const struct model *m, struct fold_group *g)
{
    static const struct fold_group all[MAX_FOLDS] = {
        { AWQ_PREV_INPUT_NORM, -1, { MODEL_LIN_Q, MODEL_LIN_K, MODEL_LIN_V }, 3, "in_qkv" },
        { AWQ_PREV_V_PROJ, MODEL_LIN_V, { MODEL_LIN_O }, 1, "v_o" },
        { AWQ_PREV_POST_ATTN_NORM, -1, { MODEL_LIN_GATE, MODEL_LIN_UP }, 2, "post_gateup" },
        { AWQ_PREV_UP_PROJ, MODEL_LIN_UP, { MODEL_LIN_DOWN }, 1, "up_down" },
    };
    int n = 0;
    for (int i = 0; i < MAX_FOLDS; i++) {
        struct awq_fold f;
        if (awq_fold_resolve(&m->cfg, all[i].prev, all[i].next[0], &f, NULL) == 0)
            g[n++] = all[i];
    }
    return n;
}

static bool group_ignored(const struct fold_group *g, const bool *ign)
{
    for (int i = 0; i < g->nnext; i++)
        if (ign[g->next[i]])
            return true;
    return false;
}

/* The targets' rows stacked ([sum out][in]): one search over the linears sharing the input. */
static float *group_rows(struct model *m, int l, const struct fold_group *g, float *const *W,
                         int *out)
{
    int in = model_linear(m, l, g->next[0])->in, tot = 0;
    for (int i = 0; i < g->nnext; i++)
        tot += model_linear(m, l, g->next[i])->out;
    float *cat = xmalloc((size_t)tot * in * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < g->nnext; i++) {
        size_t n = (size_t)model_linear(m, l, g->next[i])->out * in;
        memcpy(cat + off, W[g->next[i]], n * sizeof(float));
        off += n;
    }
    *out = tot;
    return cat;
}

/* Applies a resolved fold with scales s to the fp32 copies W (targets' columns, a linear prev's
 * rows) and to the model's own norm weight or prev bias. */
static void group_apply(struct model *m, int l, const struct fold_group *g,
                        const struct awq_fold *f, float **W, const float *s)
{
    for (int i = 0; i < g->nnext; i++) {
        const struct linear *Ln = model_linear(m, l, g->next[i]);
        float *Wp = i == 0 && g->prev_lin >= 0 ? W[g->prev_lin] : NULL;
        int pin = g->prev_lin >= 0 ? model_linear(m, l, (enum model_lin)g->prev_lin)->in : 0;
        awq_fold_weights(f, Wp, pin, W[g->next[i]], Ln->out, s);
    }
    if (g->prev_lin >= 0) {
        awq_fold_bias(m, l, f, s);
        return;
    }
    int n = 0;
    float *nw = model_norm(
        m, l, g->prev == AWQ_PREV_INPUT_NORM ? MODEL_NORM_INPUT : MODEL_NORM_POST_ATTN, &n);
    for (int j = 0; nw && j < n; j++)
        nw[j] /= s[j];
}

/* ---- AWQ ---- */

/*
 * One layer of AWQ (spec 2.1) on the statistics of the FP layer: the scale search of each legal
 * fold whose target is quantized, the folds on fp32 copies, the clip search (all linears but q
 * and k) and RTN. Metrics: per fold the chosen ratio; per layer the sum over the quantized
 * linears of the output MSE on all calibration tokens (awq_quad_loss in the original,
 * unscaled basis) against the same for plain RTN.
 */
static int awq_layer(struct stage_ctx *ctx, struct model *m, const struct qspec *q, int l,
                     const bool *ign, struct layer_stats *s, double *loss, double *loss_rtn)
{
    float *W[MODEL_LIN_COUNT] = { 0 }, *W0[MODEL_LIN_COUNT] = { 0 }, *sc[MAX_FOLDS] = { 0 };
    struct awq_fold f[MAX_FOLDS];
    struct fold_group folds[MAX_FOLDS];
    int nf = fold_groups(m, folds);
    char *err = NULL, name[64];
    int rc = 0;

    for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
        const struct linear *Lw = model_linear(m, l, (enum model_lin)w);
        if (!(W[w] = lin_f32(ctx, m, l, (enum model_lin)w))) {
            rc = STAGE_ERR_ERROR;
            break;
        }
        W0[w] = xmalloc((size_t)Lw->out * Lw->in * sizeof(float));
        memcpy(W0[w], W[w], (size_t)Lw->out * Lw->in * sizeof(float));
    }
    for (int fi = 0; fi < nf && rc == 0; fi++) {
        enum model_lin nx = folds[fi].next[0];
        enum qinput k = input_of(nx);
        struct awq_search_stats st;
        if (group_ignored(&folds[fi], ign))
            continue; /* nothing to protect: the target stays dense */
        if (awq_fold_resolve(&m->cfg, folds[fi].prev, nx, &f[fi], &err) < 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d: %s", l, err);
            break;
        }
        float *xmean = xmalloc((size_t)f[fi].next_in * sizeof(float));
        awq_salience_stat(q->awq.salience, f[fi].next_in, s->chan_sum[k], s->chan_rows[k],
                          s->h[k].H, xmean);
        sc[fi] = xmalloc((size_t)f[fi].n * sizeof(float));
        int cat_out;
        float *cat = group_rows(m, l, &folds[fi], W, &cat_out);
        if (awq_search_scale(&f[fi], cat, cat_out, s->h[k].H, xmean, &q->awq, sc[fi], &st, &err) <
            0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, folds[fi].tag, err);
            free(cat);
            free(xmean);
            break;
        }
        free(cat);
        free(xmean);
        group_apply(m, l, &folds[fi], &f[fi], W, sc[fi]);
        snprintf(name, sizeof(name), "awq_ratio_layer%d_%s", l, folds[fi].tag);
        stage_metric(ctx, name, st.ratio);
        if (st.best == 0)
            stage_log(ctx, "layer %d %s: no scaling wins (search loss %.6g, %d candidates)", l,
                      folds[fi].tag, st.loss, st.candidates);
        else
            stage_log(ctx, "layer %d %s: ratio %.4f (search loss %.6g, unscaled %.6g)", l,
                      folds[fi].tag, st.ratio, st.loss, st.loss_identity);
    }
    for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
        const struct linear *Lw = model_linear(m, l, (enum model_lin)w);
        int out = Lw->out, in = Lw->in, fn = -1, fp = -1;
        size_t n = (size_t)out * in;
        struct qweight qw;
        for (int fi = 0; fi < nf; fi++) {
            for (int t = 0; t < folds[fi].nnext; t++)
                if (sc[fi] && w == (int)folds[fi].next[t])
                    fn = fi;
            if (sc[fi] && w == folds[fi].prev_lin)
                fp = fi;
        }
        if (ign[w]) {
            /* A dense previous op still carries its fold. */
            if (fp >= 0)
                rc = install_dense(ctx, m, l, (enum model_lin)w, W[w], KERN_F32);
            continue;
        }
        float *Wt = NULL, *Hg = NULL;
        if (q->greedy) {
            /* The error is measured against the folded weights before the clip. */
            Wt = xmalloc(n * sizeof(float));
            memcpy(Wt, W[w], n * sizeof(float));
        }
        if (q->awq.clip && w != MODEL_LIN_Q && w != MODEL_LIN_K) {
            /* The Gram matrix of the input this linear reads: scaled by 1/s for a fold target. */
            const struct hessian *hc = &s->hc[input_of((enum model_lin)w)];
            float *G = hc->H, *Gs = NULL;
            struct awq_clip_stats cst;
            if (fn >= 0) {
                Gs = xmalloc((size_t)in * in * sizeof(float));
                for (int a = 0; a < in; a++) {
                    float sa = sc[fn][awq_fold_src(&f[fn], a)];
                    for (int b = 0; b < in; b++)
                        Gs[(size_t)a * in + b] =
                            G[(size_t)a * in + b] / (sa * sc[fn][awq_fold_src(&f[fn], b)]);
                }
                G = Gs;
            }
            if (awq_clip_search(W[w], out, in, G, &q->awq, &cst, &err) < 0)
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l,
                                model_lin_name((enum model_lin)w), err);
            free(Gs);
            if (rc) {
                free(Wt);
                break;
            }
        }
        rc = rtn_new(ctx, q, l, (enum model_lin)w, W[w], out, in, &qw);
        if (rc == 0 && q->greedy) {
            /* The Hessian of the input this (folded) weight reads: H / (s_a s_b) for a fold
             * target; a previous op's rows are only scaled, which does not move a row's
             * optimum. */
            const float *Hk = s->h[input_of((enum model_lin)w)].H;
            if (fn >= 0) {
                Hg = xmalloc((size_t)in * in * sizeof(float));
                for (int a = 0; a < in; a++) {
                    float sa = sc[fn][awq_fold_src(&f[fn], a)];
                    for (int b = 0; b < in; b++)
                        Hg[(size_t)a * in + b] =
                            Hk[(size_t)a * in + b] / (sa * sc[fn][awq_fold_src(&f[fn], b)]);
                }
                Hk = Hg;
            }
            rc = greedy_linear(ctx, q, l, (enum model_lin)w, &qw, W[w], Wt, Hk, s);
            if (rc)
                qweight_release(&qw);
        }
        free(Wt);
        free(Hg);
        if (rc)
            break;
        {
            /* Output error in the original basis: Q(W s)/s for a fold target, s * Q(W/s) for
             * its previous op; against RTN of the original weights. */
            float *D = xmalloc(n * sizeof(float));
            const float *Hk = s->h[input_of((enum model_lin)w)].H;
            qweight_dequant(&qw, D);
            for (int r = 0; r < out; r++)
                for (int j = 0; j < in; j++) {
                    size_t i = (size_t)r * in + j;
                    float e = D[i];
                    if (fn >= 0)
                        e /= sc[fn][awq_fold_src(&f[fn], j)];
                    if (fp >= 0)
                        e *= sc[fp][r];
                    D[i] = W0[w][i] - e;
                }
            *loss += awq_quad_loss(D, out, in, Hk);
            awq_qdq(W0[w], out, in, q->scheme, q->group_size, q->gptq.grid, D);
            for (size_t i = 0; i < n; i++)
                D[i] = W0[w][i] - D[i];
            *loss_rtn += awq_quad_loss(D, out, in, Hk);
            free(D);
        }
        rc = install_quant(ctx, m, l, (enum model_lin)w, &qw);
    }
    for (int w = 0; w < MODEL_LIN_COUNT; w++) {
        free(W[w]);
        free(W0[w]);
    }
    for (int fi = 0; fi < MAX_FOLDS; fi++)
        free(sc[fi]);
    free(err);
    return rc;
}

/* ---- SmoothQuant ---- */

/* Mean squared difference between layer l's output on Xin (nw windows of L rows, copied) and
 * Xref. */
static int layer_out_mse(struct stage_ctx *ctx, struct model *m, int l, const float *Xin,
                         const float *Xref, int nw, int L, double *mse)
{
    int H = m->cfg.hidden_size;
    size_t win = (size_t)L * H;
    float *t = xmalloc(win * sizeof(float));
    double acc = 0.0;
    char *err = NULL;
    for (int i = 0; i < nw; i++) {
        memcpy(t, Xin + i * win, win * sizeof(float));
        if (model_layer_forward(m, l, t, L, 0, NULL, NULL, &err) < 0) {
            int rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err ? err : "layer forward failed");
            free(err);
            free(t);
            return rc;
        }
        for (size_t k = 0; k < win; k++) {
            double d = (double)t[k] - Xref[i * win + k];
            acc += d * d;
        }
    }
    free(t);
    *mse = acc / ((double)nw * win);
    return 0;
}

/*
 * One layer of SmoothQuant (spec 3.1): s = max|X|^alpha / max|W|^(1-alpha) for each legal fold
 * whose target is quantized, applied exactly, then W8A8 RTN (per-channel int8 weights on the
 * absmax/127 grid, dynamic per-token int8 activations). Metric: the MSE of the layer output
 * against the FP layer on the first nw calibration windows, for the smoothed model and for
 * plain W8A8 RTN (the baseline).
 */
static int sq_layer(struct stage_ctx *ctx, struct model *m, const struct qspec *q, int l,
                    const bool *ign, struct layer_stats *s, const float *Xin, const float *Xfp,
                    int nw, int L, double *loss, double *loss_base)
{
    float *W[MODEL_LIN_COUNT] = { 0 };
    bool folded[MODEL_LIN_COUNT] = { 0 };
    struct fold_group folds[MAX_FOLDS];
    int nf = fold_groups(m, folds);
    char *err = NULL;
    int rc = 0;

    for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++)
        if (!(W[w] = lin_f32(ctx, m, l, (enum model_lin)w)))
            rc = STAGE_ERR_ERROR;
    /* Baseline: plain W8A8 RTN of the unsmoothed layer. */
    for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
        const struct linear *Lw = model_linear(m, l, (enum model_lin)w);
        struct qweight qw;
        if (ign[w])
            continue;
        if ((rc = rtn_new(ctx, q, l, (enum model_lin)w, W[w], Lw->out, Lw->in, &qw)) == 0)
            rc = install_quant(ctx, m, l, (enum model_lin)w, &qw);
    }
    if (rc == 0 && nw > 0)
        rc = layer_out_mse(ctx, m, l, Xin, Xfp, nw, L, loss_base);
    for (int fi = 0; fi < nf && rc == 0; fi++) {
        enum model_lin nx = folds[fi].next[0];
        enum qinput k = input_of(nx);
        struct awq_fold f;
        if (group_ignored(&folds[fi], ign))
            continue;
        if (awq_fold_resolve(&m->cfg, folds[fi].prev, nx, &f, &err) < 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d: %s", l, err);
            break;
        }
        float *sc = xmalloc((size_t)f.n * sizeof(float));
        int cat_out;
        float *cat = group_rows(m, l, &folds[fi], W, &cat_out);
        int forced = smoothquant_scales(&f, s->chan_max[k], cat, cat_out, q->alpha, sc, &err);
        free(cat);
        if (forced < 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, folds[fi].tag, err);
            free(sc);
            break;
        }
        float smin = INFINITY, smax = 0.0f;
        for (int i = 0; i < f.n; i++) {
            smin = fminf(smin, sc[i]);
            smax = fmaxf(smax, sc[i]);
        }
        stage_log(ctx, "layer %d %s: smoothing scales in [%.4g, %.4g]%s", l, folds[fi].tag,
                  (double)smin, (double)smax, forced ? " (some channels left at 1)" : "");
        group_apply(m, l, &folds[fi], &f, W, sc);
        if (folds[fi].prev_lin >= 0)
            folded[folds[fi].prev_lin] = true;
        for (int t = 0; t < folds[fi].nnext; t++)
            folded[folds[fi].next[t]] = true;
        free(sc);
    }
    for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
        const struct linear *Lw = model_linear(m, l, (enum model_lin)w);
        struct qweight qw;
        if (ign[w]) {
            if (folded[w])
                rc = install_dense(ctx, m, l, (enum model_lin)w, W[w], KERN_F32);
            continue;
        }
        if ((rc = rtn_new(ctx, q, l, (enum model_lin)w, W[w], Lw->out, Lw->in, &qw)) == 0)
            rc = install_quant(ctx, m, l, (enum model_lin)w, &qw);
    }
    if (rc == 0 && nw > 0)
        rc = layer_out_mse(ctx, m, l, Xin, Xfp, nw, L, loss);
    for (int w = 0; w < MODEL_LIN_COUNT; w++)
        free(W[w]);
    free(err);
    return rc;
}

/* ---- SparseGPT ---- */

struct sgpt_acc {
    double loss, loss_mag;
    int64_t zeros, total;
};

/* Prunes (and, unless the scheme is none, quantizes) one linear with the layer's prepared
 * Hessian and installs it: quantized, or dense BF16 with its zeros. */
static int sgpt_linear(struct stage_ctx *ctx, struct model *m, const struct qspec *q, int l,
                       enum model_lin w, struct layer_stats *s, struct sgpt_acc *acc)
{
    const struct linear *Lw = model_linear(m, l, w);
    int out = Lw->out, in = Lw->in, rc;
    float *W = lin_f32(ctx, m, l, w), *Wout = NULL;
    struct sparsegpt_stats st;
    struct qweight qw;
    char *err = NULL;
    if (!W)
        return STAGE_ERR_ERROR;
    if (q->dense) {
        Wout = xmalloc((size_t)out * in * sizeof(float));
        rc = sparsegpt_prune(W, out, s->prep[input_of(w)], &q->sgpt, Wout, NULL, NULL, &st, &err);
    } else {
        if ((rc = qinit(ctx, q, l, w, out, in, &qw))) {
            free(W);
            return rc;
        }
        rc = sparsegpt_prune(W, out, s->prep[input_of(w)], &q->sgpt, NULL, &qw, NULL, &st, &err);
        if (rc)
            qweight_release(&qw);
    }
    free(W);
    if (rc) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d %s: %s", l, model_lin_name(w),
                        err ? err : "sparsegpt failed");
        free(err);
        free(Wout);
        return rc;
    }
    if (st.fallback_rtn)
        stage_log(ctx, "layer %d %s: Cholesky failed at every dampening; pruned by magnitude", l,
                  model_lin_name(w));
    else if (st.damp_used > q->gptq.dampening * 1.0001)
        stage_log(ctx, "layer %d %s: dampening raised to %g for Cholesky", l, model_lin_name(w),
                  st.damp_used);
    acc->loss += st.loss;
    acc->loss_mag += st.loss_magnitude;
    acc->zeros += st.zeros;
    acc->total += st.total;
    rc = q->dense ? install_dense(ctx, m, l, w, Wout, KERN_BF16) : install_quant(ctx, m, l, w, &qw);
    free(Wout);
    return rc;
}

/* Layer-level metrics of the calibrated methods: GPTQ's names are unchanged. */
static void layer_metrics(struct stage_ctx *ctx, const struct qspec *q, int l, double loss,
                          double base, const struct sgpt_acc *sa)
{
    static const char *const pre[] = { "", "gptq", "awq", "smoothquant", "sparsegpt" };
    static const char *const vs[] = { "", "rtn", "rtn", "rtn", "magnitude" };
    char name[64];
    snprintf(name, sizeof(name), "%s_loss_layer%d", pre[q->method], l);
    stage_metric(ctx, name, loss);
    snprintf(name, sizeof(name), "%s_vs_%s_layer%d", pre[q->method], vs[q->method], l);
    stage_metric(ctx, name, base > 0 ? loss / base : 0);
    stage_log(ctx, "layer %d: %s loss %.6g, %s loss %.6g (ratio %.3f)", l, pre[q->method], loss,
              vs[q->method], base, base > 0 ? loss / base : 0);
    if (q->method == QM_SPARSEGPT) {
        snprintf(name, sizeof(name), "sparsity_actual_layer%d", l);
        stage_metric(ctx, name, sa->total ? (double)sa->zeros / (double)sa->total : 0);
    }
}

/* Most windows SmoothQuant's layer-output metric runs on (two extra layer passes each). */
#define SQ_METRIC_WINDOWS 8

static int quantize_model(struct stage_ctx *ctx, struct model *m, const struct qspec *q,
                          const bool *ignored)
{
    struct calib cal;
    struct layer_stats s;
    struct model_hooks hooks = { stats_hook, &s,
                                 (1u << MODEL_HOOK_QKV_IN) | (1u << MODEL_HOOK_O_IN) |
                                     (1u << MODEL_HOOK_GATEUP_IN) | (1u << MODEL_HOOK_DOWN_IN) };
    const struct config *c = &m->cfg;
    float *X = NULL, *tmp = NULL, *Xsub = NULL;
    char *err = NULL;
    double total = 0, total_rtn = 0;
    int64_t zeros = 0, weights = 0;
    int rc = 0, H = c->hidden_size, L = 0, nq = 0, nsub = 0;
    /* AWQ and SmoothQuant calibrate on the FP model: the statistics pass runs in place. */
    bool fp_chain = q->method == QM_AWQ || q->method == QM_SMOOTHQUANT;

    memset(&cal, 0, sizeof(cal));
    memset(&s, 0, sizeof(s));
    if (q->calibrated) {
        char *e = NULL;
        if (calib_load(&cal, ctx->spec_json, ctx->input_dir, c->vocab_size, &e) < 0) {
            int frc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", e);
            free(e);
            return frc;
        }
        L = cal.seq_len;
        if (cal.n < cal.requested)
            stage_log(ctx, "calibration: only %d of %d windows of %d tokens available", cal.n,
                      cal.requested, L);
        stage_metric(ctx, "calib_windows", cal.n);
        stage_metric(ctx, "calib_tokens", (double)cal.n * L);
        X = malloc((size_t)cal.n * L * H * sizeof(float));
        tmp = malloc((size_t)L * H * sizeof(float));
        if (q->method == QM_SMOOTHQUANT) {
            nsub = EXAQ_MIN(cal.n, SQ_METRIC_WINDOWS);
            Xsub = malloc((size_t)nsub * L * H * sizeof(float));
        }
        if (!X || !tmp || (nsub && !Xsub)) {
            rc = stage_fail(ctx, STAGE_ERR_OOM, "cannot hold %d calibration windows of %d x %d",
                            cal.n, L, H);
            goto out;
        }
        for (int i = 0; i < cal.n && rc == 0; i++)
            if (model_embed(m, cal.ids + (size_t)i * L, L, X + (size_t)i * L * H, &err) < 0)
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err);
        if (rc)
            goto out;
    }
    s.want_h =
        q->method == QM_GPTQ || q->method == QM_SPARSEGPT || q->method == QM_AWQ || q->greedy;
    s.want_absmax = q->scheme == QSCHEME_FP8;
    s.want_chan = fp_chain;
    s.want_clip = q->method == QM_AWQ && q->awq.clip;
    s.seq_len = L;
    s.clip_stride = EXAQ_MAX((int64_t)1, (int64_t)cal.n * L / 512);
    for (int k = 0; k < QIN__COUNT && s.want_chan; k++)
        if (k == QIN_O || k == QIN_DOWN ||
            (k == QIN_QKV && m->cfg.fam->fold_qkv.src != FAMILY_FOLD_NONE) ||
            (k == QIN_GATEUP && m->cfg.fam->fold_gateup.src != FAMILY_FOLD_NONE)) {
            /* The inputs some fold of the family's table targets. */
            s.chan_sum[k] = xcalloc((size_t)input_dim(m, (enum qinput)k), sizeof(double));
            s.chan_max[k] = xcalloc((size_t)input_dim(m, (enum qinput)k), sizeof(float));
        }
    for (int l = 0; l < m->n_layers && rc == 0; l++) {
        double loss = 0, loss_rtn = 0;
        struct sgpt_acc sa = { 0 };
        stage_progress(ctx, l, m->n_layers, "layer");
        if (stage_cancelled(ctx)) {
            rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "cancelled");
            break;
        }
        if (q->calibrated) {
            for (int k = 0; k < QIN__COUNT; k++)
                if ((s.want_h && hess_init(&s.h[k], input_dim(m, (enum qinput)k)) < 0) ||
                    (s.want_clip && hess_init(&s.hc[k], input_dim(m, (enum qinput)k)) < 0)) {
                    rc = stage_fail(ctx, STAGE_ERR_OOM, "cannot allocate the Hessians");
                    goto out;
                }
            memset(s.absmax, 0, sizeof(s.absmax));
            for (int k = 0; k < QIN__COUNT; k++)
                if (s.chan_sum[k]) {
                    int n = input_dim(m, (enum qinput)k);
                    memset(s.chan_sum[k], 0, (size_t)n * sizeof(double));
                    memset(s.chan_max[k], 0, (size_t)n * sizeof(float));
                    s.chan_rows[k] = 0;
                }
            if (nsub)
                memcpy(Xsub, X, (size_t)nsub * L * H * sizeof(float));
            for (int i = 0; i < cal.n && rc == 0; i++) {
                float *x = X + (size_t)i * L * H;
                if (!fp_chain) {
                    memcpy(tmp, x, (size_t)L * H * sizeof(float));
                    x = tmp;
                }
                s.window = i;
                if (model_layer_forward(m, l, x, L, 0, NULL, &hooks, &err) < 0)
                    rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err);
                if (stage_cancelled(ctx))
                    rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "cancelled");
            }
            for (int k = 0; k < QIN__COUNT && rc == 0; k++) {
                if (s.want_h)
                    hess_finish(&s.h[k]);
                if (s.want_clip)
                    hess_finish(&s.hc[k]);
                if ((q->method == QM_GPTQ || q->method == QM_SPARSEGPT) &&
                    gptq_prepare(s.h[k].H, s.h[k].n, &q->gptq, &s.prep[k], &err) < 0)
                    rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d: %s", l,
                                    err ? err : "cannot factor the Hessian");
            }
        }
        if (rc == 0 && q->method == QM_AWQ) {
            rc = awq_layer(ctx, m, q, l, ignored + l * MODEL_LIN_COUNT, &s, &loss, &loss_rtn);
        } else if (rc == 0 && q->method == QM_SMOOTHQUANT) {
            rc = sq_layer(ctx, m, q, l, ignored + l * MODEL_LIN_COUNT, &s, Xsub, X, nsub, L, &loss,
                          &loss_rtn);
        } else {
            for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
                if (ignored[l * MODEL_LIN_COUNT + w])
                    continue;
                if (q->method == QM_SPARSEGPT)
                    rc = sgpt_linear(ctx, m, q, l, (enum model_lin)w, &s, &sa);
                else
                    rc = quantize_linear(ctx, m, q, l, (enum model_lin)w, &s, &loss, &loss_rtn);
            }
            if (q->method == QM_SPARSEGPT) {
                loss = sa.loss;
                loss_rtn = sa.loss_mag;
                zeros += sa.zeros;
                weights += sa.total;
            }
        }
        for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++)
            nq += !ignored[l * MODEL_LIN_COUNT + w];
        for (int k = 0; k < QIN__COUNT; k++) {
            gptq_prep_free(s.prep[k]);
            s.prep[k] = NULL;
            hess_release(&s.h[k]);
            hess_release(&s.hc[k]);
        }
        if (rc)
            break;
        if (q->method != QM_RTN) {
            layer_metrics(ctx, q, l, loss, loss_rtn, &sa);
            total += loss;
            total_rtn += loss_rtn;
        }
        /* GPTQ, SparseGPT: the next layer's inputs come from this layer, now quantized. */
        for (int i = 0; q->calibrated && !fp_chain && i < cal.n && rc == 0; i++)
            if (model_layer_forward(m, l, X + (size_t)i * L * H, L, 0, NULL, NULL, &err) < 0)
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err);
    }
    if (rc == 0) {
        static const char *const pre[] = { "", "gptq", "awq", "smoothquant", "sparsegpt" };
        static const char *const vs[] = { "", "rtn", "rtn", "rtn", "magnitude" };
        char name[64];
        stage_progress(ctx, m->n_layers, m->n_layers, "layer");
        stage_metric(ctx, "quantized_linears", q->dense ? 0 : nq);
        if (q->method != QM_RTN) {
            snprintf(name, sizeof(name), "%s_loss_total", pre[q->method]);
            stage_metric(ctx, name, total);
            snprintf(name, sizeof(name), "%s_vs_%s", pre[q->method], vs[q->method]);
            stage_metric(ctx, name, total_rtn > 0 ? total / total_rtn : 0);
        }
        if (q->greedy) {
            stage_metric(ctx, "greedy_err_total", s.g_greedy);
            stage_metric(ctx, "nearest_err_total", s.g_nearest);
            stage_metric(ctx, "greedy_vs_nearest", s.g_nearest > 0 ? s.g_greedy / s.g_nearest : 0);
            stage_metric(ctx, "greedy_flip_share",
                         s.g_cands > 0 ? (double)s.g_flips / (double)s.g_cands : 0);
        }
        if (q->method == QM_SPARSEGPT) {
            stage_metric(ctx, "pruned_linears", nq);
            stage_metric(ctx, "sparsity_actual", weights ? (double)zeros / (double)weights : 0);
        }
    }
out:
    for (int k = 0; k < QIN__COUNT; k++) {
        gptq_prep_free(s.prep[k]);
        hess_release(&s.h[k]);
        hess_release(&s.hc[k]);
        free(s.chan_sum[k]);
        free(s.chan_max[k]);
    }
    free(s.rows);
    free(err);
    free(X);
    free(tmp);
    free(Xsub);
    calib_release(&cal);
    return rc;
}

int stage_quantize_run(struct stage_ctx *ctx)
{
    struct model_opts mo = { ctx->nthreads, KERN_IMPL_CPU, 0 };
    struct model_save_opts so = { 5000000000ull, ST_BF16, 1 };
    struct qspec q;
    struct model *m = NULL;
    cJSON *spec = cJSON_Parse(ctx->spec_json);
    bool *ignored = NULL;
    char *err = NULL;
    int rc;

    memset(&q, 0, sizeof(q));
    if (!cJSON_IsObject(spec)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "quantize stage spec is not a JSON object");
        goto out;
    }
    if ((rc = parse_spec(ctx, spec, &q)))
        goto out;
    if (!ctx->output_dir) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "quantize stage needs an output model dir");
        goto out;
    }
    if (model_load(&m, ctx->input_dir, &mo, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err ? err : "cannot load the model");
        goto out;
    }
    if (model_quantized_count(m) > 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "the input model is already quantized; quantize a BF16/F16/F32 model");
        goto out;
    }
    ignored = xcalloc((size_t)m->n_layers * MODEL_LIN_COUNT + 1, sizeof(bool));
    if ((rc = resolve_ignore(ctx, m, &q, ignored)))
        goto out;
    stage_log(ctx, "quantize: %s %s, group size %d, %d layers",
              cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(spec, "method")),
              q.dense ? "none" : qscheme_name(q.scheme), q.group_size, m->n_layers);
    if (q.gptq.actorder == GPTQ_ACTORDER_GROUP)
        stage_log(ctx, "warning: actorder 'group' writes weight_g_idx, which compressed-tensors "
                       "0.19 and newer reject (\"actorder='group' has been removed\"); "
                       "actorder 'static' loads everywhere");
    if (!q.dense && (q.scheme == QSCHEME_W8A16_ASYM || q.group_size > 128))
        stage_log(ctx,
                  "warning: vLLM's Marlin kernel takes zero points only for 4 bits and "
                  "groups of at most 128; this checkpoint (%s, group size %d) loads in "
                  "transformers, in vLLM only where another kernel takes it "
                  "(docs/quantization.md)",
                  qscheme_name(q.scheme), q.group_size);
    if ((rc = quantize_model(ctx, m, &q, ignored)))
        goto out;
    stage_progress(ctx, m->n_layers, m->n_layers, "saving");
    if (model_save(m, ctx->output_dir, &so, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err ? err : "cannot save the model");
        goto out;
    }
    {
        /* Informational, like llm-compressor's recipe.yaml (JSON is YAML). */
        char *pretty = cJSON_Print(spec), *path = path_join(ctx->output_dir, "recipe.yaml");
        char *text = xasprintf("# exaq %s quantize recipe (informational; loaders do not read "
                               "it)\nquantize: %s\n",
                               EXAQ_VERSION, pretty);
        file_write_all(path, text, strlen(text));
        free(text);
        free(path);
        cJSON_free(pretty);
    }
    rc = STAGE_OK;
out:
    free(err);
    free(ignored);
    ctensors_cfg_release(&q.ign);
    model_free(m);
    cJSON_Delete(spec);
    return rc;
}
