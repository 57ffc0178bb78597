/*
 * stage_quant: the `quantize` stage: RTN or GPTQ into the compressed-tensors formats.
 *
 * RTN needs no data (except scheme FP8, whose static input scales come from calibration).
 * GPTQ runs layer by layer (algorithms spec 1.1): the calibration windows are embedded once;
 * for each layer, one pass with the layer's current weights accumulates the Hessians of its
 * linear inputs (q/k/v share one, gate/up share one, plus o and down), every linear is
 * quantized, and a second pass through the now-quantized layer produces the next layer's
 * inputs, so quantization error propagates as in the references. The quantized linears live
 * in the engine as their exact dequantization (model_linear_set_quant) and model_save writes
 * them in the compressed-tensors layout with the matching quantization_config.
 *
 * NEEDSWORK: methods awq, smoothquant and sparsegpt are added by the AWQ/SparseGPT work.
 */
#include "worker/stage.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/calib.h"
#include "worker/ctensors.h"
#include "worker/gptq.h"
#include "worker/model.h"

enum qmethod {
    QM_RTN,
    QM_GPTQ,
};

struct qspec {
    enum qmethod method;
    enum qscheme scheme;
    int group_size;
    struct ctensors_cfg ign; /* the ignore list, matched like a loader does */
    struct gptq_opts gptq;
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

static const char *jstr(const cJSON *o, const char *k, const char *def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : def;
}

static double jnum(const cJSON *o, const char *k, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int parse_spec(struct stage_ctx *ctx, const cJSON *spec, struct qspec *q)
{
    const char *method = jstr(spec, "method", "gptq"), *scheme = jstr(spec, "scheme", "W4A16");
    const char *actorder = jstr(spec, "actorder", "none");
    const cJSON *ign = cJSON_GetObjectItemCaseSensitive(spec, "ignore"), *it;
    memset(q, 0, sizeof(*q));
    if (!strcmp(method, "rtn"))
        q->method = QM_RTN;
    else if (!strcmp(method, "gptq"))
        q->method = QM_GPTQ;
    else
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "quantize method '%s' is not implemented in this build (rtn and gptq "
                          "are)",
                          method);
    if (qscheme_parse(scheme, &q->scheme) < 0)
        return stage_fail(ctx, STAGE_ERR_ERROR, "unknown quantization scheme '%s'", scheme);
    q->group_size =
        (int)jnum(spec, "group_size",
                  q->scheme == QSCHEME_W4A16 || q->scheme == QSCHEME_W4A16_ASYM ? 128 : -1);
    if (q->scheme == QSCHEME_FP8)
        q->group_size = 0;
    if (q->method == QM_GPTQ && (q->scheme == QSCHEME_FP8 || q->scheme == QSCHEME_FP8_DYNAMIC))
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "gptq quantizes to integer grids; use method rtn for scheme %s", scheme);
    gptq_opts_default(&q->gptq);
    q->gptq.dampening = jnum(spec, "dampening", 0.01);
    q->gptq.block_size = (int)jnum(spec, "block_size", 128);
    q->gptq.actorder = !strcmp(actorder, "static")  ? GPTQ_ACTORDER_STATIC
                       : !strcmp(actorder, "group") ? GPTQ_ACTORDER_GROUP
                                                    : GPTQ_ACTORDER_NONE;
    q->gptq.static_groups = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(spec, "static_groups"));
    q->gptq.grid = QGRID_ABSMAX_QMAX;
    if (cJSON_IsArray(ign)) {
        cJSON_ArrayForEach(it, ign)
        {
            if (!cJSON_IsString(it))
                continue;
            q->ign.ignore = xrealloc(q->ign.ignore, (size_t)(q->ign.nignore + 1) * sizeof(char *));
            q->ign.ignore[q->ign.nignore++] = xstrdup(it->valuestring);
        }
    }
    q->calibrated = q->method == QM_GPTQ || q->scheme == QSCHEME_FP8;
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

static int quantize_model(struct stage_ctx *ctx, struct model *m, const struct qspec *q,
                          const bool *ignored)
{
    struct calib cal;
    struct layer_stats s;
    struct model_hooks hooks = { stats_hook, &s,
                                 (1u << MODEL_HOOK_QKV_IN) | (1u << MODEL_HOOK_O_IN) |
                                     (1u << MODEL_HOOK_GATEUP_IN) | (1u << MODEL_HOOK_DOWN_IN) };
    const struct config *c = &m->cfg;
    float *X = NULL, *tmp = NULL;
    char msg[512], *err = NULL;
    double total = 0, total_rtn = 0;
    int rc = 0, H = c->hidden_size, L = 0, nq = 0;

    memset(&cal, 0, sizeof(cal));
    memset(&s, 0, sizeof(s));
    if (q->calibrated) {
        if (calib_load(&cal, ctx->spec_json, ctx->input_dir, c->vocab_size, msg, sizeof(msg)) < 0)
            return stage_fail(ctx, STAGE_ERR_ERROR, "%s", msg);
        L = cal.seq_len;
        if (cal.n < cal.requested)
            stage_log(ctx, "calibration: only %d of %d windows of %d tokens available", cal.n,
                      cal.requested, L);
        stage_metric(ctx, "calib_windows", cal.n);
        stage_metric(ctx, "calib_tokens", (double)cal.n * L);
        X = malloc((size_t)cal.n * L * H * sizeof(float));
        tmp = malloc((size_t)L * H * sizeof(float));
        if (!X || !tmp) {
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
    s.want_h = q->method == QM_GPTQ;
    s.want_absmax = q->scheme == QSCHEME_FP8;
    for (int l = 0; l < m->n_layers && rc == 0; l++) {
        double loss = 0, loss_rtn = 0;
        stage_progress(ctx, l, m->n_layers, "layer");
        if (stage_cancelled(ctx)) {
            rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "cancelled");
            break;
        }
        if (q->calibrated) {
            for (int k = 0; k < QIN__COUNT && s.want_h; k++)
                if (hess_init(&s.h[k], input_dim(m, (enum qinput)k)) < 0) {
                    rc = stage_fail(ctx, STAGE_ERR_OOM, "cannot allocate the Hessians");
                    goto out;
                }
            memset(s.absmax, 0, sizeof(s.absmax));
            for (int i = 0; i < cal.n && rc == 0; i++) {
                memcpy(tmp, X + (size_t)i * L * H, (size_t)L * H * sizeof(float));
                if (model_layer_forward(m, l, tmp, L, 0, NULL, &hooks, &err) < 0)
                    rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err);
                if (stage_cancelled(ctx))
                    rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "cancelled");
            }
            for (int k = 0; k < QIN__COUNT && s.want_h && rc == 0; k++) {
                hess_finish(&s.h[k]);
                if (gptq_prepare(s.h[k].H, s.h[k].n, &q->gptq, &s.prep[k], &err) < 0)
                    rc = stage_fail(ctx, STAGE_ERR_ERROR, "layer %d: %s", l,
                                    err ? err : "cannot factor the Hessian");
            }
        }
        for (int w = 0; w < MODEL_LIN_COUNT && rc == 0; w++) {
            if (ignored[l * MODEL_LIN_COUNT + w])
                continue;
            rc = quantize_linear(ctx, m, q, l, (enum model_lin)w, &s, &loss, &loss_rtn);
            nq += rc == 0;
        }
        for (int k = 0; k < QIN__COUNT; k++) {
            gptq_prep_free(s.prep[k]);
            s.prep[k] = NULL;
            hess_release(&s.h[k]);
        }
        if (rc)
            break;
        if (q->method == QM_GPTQ) {
            char name[64];
            snprintf(name, sizeof(name), "gptq_loss_layer%d", l);
            stage_metric(ctx, name, loss);
            snprintf(name, sizeof(name), "gptq_vs_rtn_layer%d", l);
            stage_metric(ctx, name, loss_rtn > 0 ? loss / loss_rtn : 0);
            stage_log(ctx, "layer %d: gptq loss %.6g, rtn loss %.6g (ratio %.3f)", l, loss,
                      loss_rtn, loss_rtn > 0 ? loss / loss_rtn : 0);
            total += loss;
            total_rtn += loss_rtn;
        }
        /* The next layer's inputs come from this layer, now quantized. */
        for (int i = 0; q->calibrated && i < cal.n && rc == 0; i++)
            if (model_layer_forward(m, l, X + (size_t)i * L * H, L, 0, NULL, NULL, &err) < 0)
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s", err);
    }
    if (rc == 0) {
        stage_progress(ctx, m->n_layers, m->n_layers, "layer");
        stage_metric(ctx, "quantized_linears", nq);
        if (q->method == QM_GPTQ) {
            stage_metric(ctx, "gptq_loss_total", total);
            stage_metric(ctx, "gptq_vs_rtn", total_rtn > 0 ? total / total_rtn : 0);
        }
    }
out:
    for (int k = 0; k < QIN__COUNT; k++) {
        gptq_prep_free(s.prep[k]);
        hess_release(&s.h[k]);
    }
    free(err);
    free(X);
    free(tmp);
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
    stage_log(ctx, "quantize: %s %s, group size %d, %d layers", jstr(spec, "method", "gptq"),
              qscheme_name(q.scheme), q.group_size, m->n_layers);
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
