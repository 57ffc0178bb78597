/*
 * stage_prune: the native stages `prune` (depth pruning by block influence or an explicit layer
 * list) and `heal` (closed-form least-squares repair toward the unpruned teacher).
 *
 * prune writes the kept layers (renumbered, config.json rewritten per spec section 5, tokenizer
 * and generation files copied) plus exaq_prune.json, which names the teacher for heal. heal
 * reads that record, runs the student and the teacher over the calibration windows, folds the
 * least-squares fixes into post_feedforward_layernorm and/or down_proj (worker/compress/heal.h),
 * saves the model with the same record (plus what heal did), and reloads the output to check that
 * it loads and gives finite logits. Neither stage modifies its input directory.
 */
#include "worker/stages/stage.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/calib.h"
#include "worker/compress/heal.h"
#include "worker/engine/model.h"
#include "worker/compress/prune.h"

/* Shard size of saved models: the Hugging Face default ("5GB"); small models stay one file. */
#define SAVE_SHARD_BYTES 5000000000ULL

static int tick(void *arg, int done, int total)
{
    struct stage_ctx *ctx = arg;
    stage_progress(ctx, done, total, ctx->kind);
    return stage_cancelled(ctx);
}

static void log_line(void *arg, const char *line)
{
    stage_log(arg, "%s", line);
}

/* Maps an engine error code to the stage's error class. */
static int fail_rc(struct stage_ctx *ctx, int rc, const char *what, const char *msg)
{
    if (rc == -ECANCELED || stage_cancelled(ctx))
        return stage_fail(ctx, STAGE_ERR_CANCELLED, "%s: cancelled", what);
    return stage_fail(ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR, "%s: %s", what,
                      msg ? msg : "failed");
}

static int load_model(struct stage_ctx *ctx, const char *dir, struct model **m, const char *what)
{
    struct model_opts mo = { ctx->nthreads > 0 ? ctx->nthreads : 1, KERN_IMPL_CPU, 0 };
    char *err = NULL;
    int rc = model_load(m, dir, &mo, &err);
    if (rc) {
        rc = stage_fail(ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR,
                        "cannot load %s '%s': %s", what, dir, err ? err : "?");
        free(err);
        return rc;
    }
    if (cJSON_GetObjectItemCaseSensitive((*m)->cfg.raw, "quantization_config")) {
        model_free(*m);
        *m = NULL;
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "%s '%s' is a quantized checkpoint: prune and heal before quantizing",
                          what, dir);
    }
    return 0;
}

static int save_model(struct stage_ctx *ctx, const struct model *m)
{
    struct model_save_opts so = { SAVE_SHARD_BYTES, prune_model_st_dtype(m), 1 };
    char *err = NULL;
    int rc = model_save(m, ctx->output_dir, &so, &err);
    if (rc) {
        rc = fail_rc(ctx, rc, "cannot save the model", err);
        free(err);
    }
    return rc;
}

static int load_calib(struct stage_ctx *ctx, const struct model *m, struct calib *c,
                      const char *why)
{
    char *e = NULL;
    if (calib_load(c, ctx->spec_json, ctx->input_dir, m->cfg.vocab_size, &e) < 0) {
        int rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s needs calibration data: %s", why, e);
        free(e);
        return rc;
    }
    if (c->n < c->requested)
        stage_log(ctx, "%s: calibration has %d windows of %d tokens (asked for %d)", ctx->kind,
                  c->n, c->seq_len, c->requested);
    return 0;
}

/* ---- prune ---------------------------------------------------------------------------------- */

/* Reads an integer field; 0 absent, 1 present (value in *v), -1 present but not an integer. */
static int get_int(const cJSON *o, const char *key, int *v)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it || cJSON_IsNull(it))
        return 0;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
        fabs(it->valuedouble) > 1e9)
        return -1;
    *v = (int)it->valuedouble;
    return 1;
}

int stage_prune_run(struct stage_ctx *ctx)
{
    cJSON *spec = NULL, *jl, *jm;
    struct model *m = NULL;
    struct calib cal = { 0 };
    struct prune_record rec = { 0 }, prev = { 0 };
    int *removed = NULL, *keep = NULL, n_removed = 0, n_keep = 0, rc = STAGE_ERR_ERROR;
    int keep_layers = 0, remove = 0, hk, hr, explicit_metric;
    double *bi = NULL;
    char *err = NULL, *src_abs = NULL;
    const char *metric;

    if (!ctx->output_dir)
        return stage_fail(ctx, STAGE_ERR_ERROR, "prune stage needs an output model dir");
    spec = cJSON_Parse(ctx->spec_json ? ctx->spec_json : "");
    if (!cJSON_IsObject(spec)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: the spec is not a JSON object");
        goto out;
    }
    hk = get_int(spec, "keep_layers", &keep_layers);
    hr = get_int(spec, "remove", &remove);
    jl = cJSON_GetObjectItemCaseSensitive(spec, "layers");
    if (jl && cJSON_IsNull(jl))
        jl = NULL;
    jm = cJSON_GetObjectItemCaseSensitive(spec, "metric");
    if (hk < 0 || hr < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: '%s' must be an integer",
                        hk < 0 ? "keep_layers" : "remove");
        goto out;
    }
    if ((hk > 0) + (hr > 0) + (jl != NULL) != 1) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "prune: give exactly one of 'keep_layers', 'remove' and 'layers'");
        goto out;
    }
    if (jm && !cJSON_IsNull(jm) && !cJSON_IsString(jm)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: 'metric' must be a string");
        goto out;
    }
    metric = cJSON_IsString(jm) ? jm->valuestring : jl ? "explicit" : "block_influence";
    if (strcmp(metric, "explicit") && strcmp(metric, "block_influence")) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "prune: unknown metric '%s' (use 'block_influence' or 'explicit')", metric);
        goto out;
    }
    explicit_metric = !strcmp(metric, "explicit");
    if (explicit_metric != (jl != NULL)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        explicit_metric
                            ? "prune: metric 'explicit' needs the list 'layers' to remove"
                            : "prune: 'layers' lists the layers to remove, which needs metric "
                              "'explicit'");
        goto out;
    }
    if (jl && (!cJSON_IsArray(jl) || cJSON_GetArraySize(jl) < 1)) {
        rc =
            stage_fail(ctx, STAGE_ERR_ERROR, "prune: 'layers' must be a non-empty list of indices");
        goto out;
    }

    if ((rc = load_model(ctx, ctx->input_dir, &m, "the model")))
        goto out;
    int L = m->n_layers;
    removed = xcalloc((size_t)L + 1, sizeof(int));
    keep = xcalloc((size_t)L + 1, sizeof(int));
    rc = STAGE_ERR_ERROR;

    if (jl) {
        const cJSON *it;
        int cnt = cJSON_GetArraySize(jl);
        if (cnt > L) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "prune: 'layers' lists %d layers but the model has only %d", cnt, L);
            goto out;
        }
        cJSON_ArrayForEach(it, jl)
        {
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
                fabs(it->valuedouble) > 1e9) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: 'layers' must hold integers");
                goto out;
            }
            removed[n_removed++] = (int)it->valuedouble;
        }
    } else {
        if (hk > 0) {
            if (keep_layers < 1) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR,
                                "prune: keep_layers %d would remove every layer (keep at least 1)",
                                keep_layers);
                goto out;
            }
            if (keep_layers >= L) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR,
                                "prune: keep_layers %d keeps every layer of the %d-layer model "
                                "(nothing to prune)",
                                keep_layers, L);
                goto out;
            }
            n_removed = L - keep_layers;
        } else {
            if (remove < 1) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: remove must be >= 1, got %d", remove);
                goto out;
            }
            if (remove >= L) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR,
                                "prune: cannot remove %d layers of a %d-layer model (at least one "
                                "must stay)",
                                remove, L);
                goto out;
            }
            n_removed = remove;
        }
    }

    /* Block influence: needed for the choice, and reported for explicit lists when the spec
     * carries calibration data. */
    if (!explicit_metric || cJSON_GetObjectItemCaseSensitive(spec, "calibration")) {
        if ((rc = load_calib(ctx, m, &cal, "block influence")))
            goto out;
        bi = xcalloc((size_t)L, sizeof(double));
        double t0 = now_mono();
        int e = prune_block_influence(m, cal.ids, cal.n, cal.seq_len, bi, tick, ctx, &err);
        if (e) {
            rc = fail_rc(ctx, e, "block influence", err);
            goto out;
        }
        stage_log(ctx, "prune: block influence over %d windows of %d tokens (%.1f s)", cal.n,
                  cal.seq_len, now_mono() - t0);
        for (int l = 0; l < L; l++) {
            char name[64];
            snprintf(name, sizeof(name), "bi_layer_%d", l);
            stage_metric(ctx, name, bi[l]);
            stage_log(ctx, "prune: layer %d block influence %.6f", l, bi[l]);
        }
        if (!explicit_metric && prune_select_smallest(bi, L, n_removed, removed, &err) < 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: %s", err);
            goto out;
        }
    }
    if (prune_keep_from_removed(L, removed, n_removed, keep, &n_keep, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: %s", err);
        goto out;
    }
    /* The removed list, sorted, for the log and the record. */
    for (int i = 0, k = 0, r = 0; i < L; i++) {
        if (k < n_keep && keep[k] == i)
            k++;
        else
            removed[r++] = i;
    }
    {
        struct buf b;
        buf_init(&b);
        for (int i = 0; i < n_removed; i++)
            buf_printf(&b, "%s%d", i ? ", " : "", removed[i]);
        stage_log(ctx, "prune: removing %d of %d layers (%s) by %s", n_removed, L, buf_cstr(&b),
                  metric);
        buf_release(&b);
    }
    if (stage_cancelled(ctx)) {
        rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "prune: cancelled");
        goto out;
    }

    if (model_keep_layers(m, keep, n_keep, &err)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: %s", err ? err : "cannot remove layers");
        goto out;
    }
    if ((rc = save_model(ctx, m)))
        goto out;

    /* The record: relative to the original teacher when the input was itself pruned (and that
     * teacher still exists); otherwise the input is the teacher. */
    {
        char *perr = NULL;
        if (prune_record_read(ctx->input_dir, &prev, &perr) == 0 && prev.n_kept == L &&
            is_dir(prev.source)) {
            prune_record_compose(&prev, keep, n_keep, &rec);
            stage_log(ctx, "prune: the input was pruned from '%s'; the record points there",
                      prev.source);
        } else {
            src_abs = path_abs(ctx->input_dir);
            rec.source = xstrdup(src_abs ? src_abs : ctx->input_dir);
            rec.n_source = L;
            rec.kept = xmalloc(sizeof(int) * (size_t)n_keep);
            memcpy(rec.kept, keep, sizeof(int) * (size_t)n_keep);
            rec.n_kept = n_keep;
            rec.removed = xmalloc(sizeof(int) * (size_t)n_removed);
            memcpy(rec.removed, removed, sizeof(int) * (size_t)n_removed);
            rec.n_removed = n_removed;
            if (bi) {
                rec.bi = xmalloc(sizeof(double) * (size_t)L);
                memcpy(rec.bi, bi, sizeof(double) * (size_t)L);
            }
        }
        free(perr);
        rec.metric = xstrdup(metric);
    }
    if (prune_record_write(ctx->output_dir, &rec, NULL, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "prune: %s", err);
        goto out;
    }
    stage_metric(ctx, "layers_removed", n_removed);
    stage_metric(ctx, "layers_kept", n_keep);
    rc = STAGE_OK;
out:
    free(err);
    free(src_abs);
    free(bi);
    free(keep);
    free(removed);
    prune_record_release(&rec);
    prune_record_release(&prev);
    calib_release(&cal);
    model_free(m);
    cJSON_Delete(spec);
    return rc;
}

/* ---- heal ----------------------------------------------------------------------------------- */

/* Reloads the saved model and checks that one calibration window gives finite logits. */
static int check_output(struct stage_ctx *ctx, const struct calib *cal)
{
    struct model *m = NULL;
    char *err = NULL;
    int rc, T = EXAQ_MIN(cal->seq_len, 128);
    if ((rc = load_model(ctx, ctx->output_dir, &m, "the healed model")))
        return rc;
    float *logits = xmalloc(sizeof(float) * (size_t)T * m->cfg.vocab_size);
    rc = model_forward(m, cal->ids, T, NULL, MODEL_LOGITS_ALL, logits, NULL, &err);
    if (rc) {
        rc = fail_rc(ctx, rc, "heal: the saved model does not run", err);
    } else {
        for (size_t i = 0; i < (size_t)T * m->cfg.vocab_size; i++)
            if (!isfinite(logits[i])) {
                rc = stage_fail(ctx, STAGE_ERR_ERROR,
                                "heal: the saved model gives non-finite logits");
                break;
            }
    }
    free(logits);
    free(err);
    model_free(m);
    return rc;
}

int stage_heal_run(struct stage_ctx *ctx)
{
    cJSON *spec = NULL, *it, *extra = NULL;
    struct model *s = NULL, *t = NULL;
    struct calib cal = { 0 };
    struct prune_record rec = { 0 };
    struct heal_report rep = { 0 };
    struct heal_opts ho = { HEAL_FOLD_BOTH, 1e-4, 0, tick, log_line, ctx };
    char *err = NULL, *extra_txt = NULL;
    const char *fold_name = "both";
    int rc = STAGE_ERR_ERROR;

    if (!ctx->output_dir)
        return stage_fail(ctx, STAGE_ERR_ERROR, "heal stage needs an output model dir");
    spec = cJSON_Parse(ctx->spec_json ? ctx->spec_json : "");
    if (!cJSON_IsObject(spec)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "heal: the spec is not a JSON object");
        goto out;
    }
    it = cJSON_GetObjectItemCaseSensitive(spec, "method");
    if (it && !cJSON_IsNull(it) && (!cJSON_IsString(it) || strcmp(it->valuestring, "lsq"))) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "heal: unknown method %s (this build has 'lsq')",
                        cJSON_IsString(it) ? it->valuestring : "(not a string)");
        goto out;
    }
    it = cJSON_GetObjectItemCaseSensitive(spec, "fold");
    if (it && !cJSON_IsNull(it)) {
        fold_name = cJSON_IsString(it) ? it->valuestring : "";
        if (!strcmp(fold_name, "norm"))
            ho.fold = HEAL_FOLD_NORM;
        else if (!strcmp(fold_name, "refit"))
            ho.fold = HEAL_FOLD_REFIT;
        else if (!strcmp(fold_name, "both"))
            ho.fold = HEAL_FOLD_BOTH;
        else {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "heal: unknown fold '%s' (use 'norm', 'refit' or 'both')", fold_name);
            goto out;
        }
    }
    it = cJSON_GetObjectItemCaseSensitive(spec, "ridge");
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0) || !isfinite(it->valuedouble)) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "heal: 'ridge' must be a number >= 0");
            goto out;
        }
        ho.ridge = it->valuedouble;
    }

    if (prune_record_read(ctx->input_dir, &rec, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "heal: %s", err);
        goto out;
    }
    if (!is_dir(rec.source)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "heal: the unpruned teacher '%s' named in %s is gone (rerun the prune "
                        "stage)",
                        rec.source, PRUNE_RECORD_FILE);
        goto out;
    }
    if ((rc = load_model(ctx, ctx->input_dir, &s, "the pruned model")) ||
        (rc = load_model(ctx, rec.source, &t, "the teacher model")))
        goto out;
    rc = STAGE_ERR_ERROR;
    if (t->n_layers != rec.n_source) {
        rc =
            stage_fail(ctx, STAGE_ERR_ERROR, "heal: the teacher '%s' has %d layers, but %s says %d",
                       rec.source, t->n_layers, PRUNE_RECORD_FILE, rec.n_source);
        goto out;
    }
    if ((rc = load_calib(ctx, s, &cal, "heal")))
        goto out;
    stage_log(ctx,
              "heal: %d-layer model toward the %d-layer teacher '%s', fold %s, ridge %g, %d "
              "windows of %d tokens",
              s->n_layers, t->n_layers, rec.source, fold_name, ho.ridge, cal.n, cal.seq_len);
    double t0 = now_mono();
    int e = heal_lsq(s, t, rec.kept, rec.n_kept, cal.ids, cal.n, cal.seq_len, &ho, &rep, &err);
    if (e) {
        rc = fail_rc(ctx, e, "heal", err);
        goto out;
    }
    stage_log(ctx, "heal: relative residual error %.6f -> %.6f (%d passes, %.1f s)", rep.err_before,
              rep.err_after, rep.passes, now_mono() - t0);
    model_free(t);
    t = NULL;
    if ((rc = save_model(ctx, s)))
        goto out;
    extra = cJSON_CreateObject();
    {
        cJSON *h = cJSON_AddObjectToObject(extra, "heal");
        cJSON_AddStringToObject(h, "method", "lsq");
        cJSON_AddStringToObject(h, "fold", fold_name);
        cJSON_AddNumberToObject(h, "ridge", ho.ridge);
        cJSON_AddNumberToObject(h, "calibration_windows", cal.n);
        cJSON_AddNumberToObject(h, "err_before", rep.err_before);
        cJSON_AddNumberToObject(h, "err_after", rep.err_after);
    }
    extra_txt = cJSON_PrintUnformatted(extra);
    if (prune_record_write(ctx->output_dir, &rec, extra_txt, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "heal: %s", err);
        goto out;
    }
    if ((rc = check_output(ctx, &cal)))
        goto out;
    stage_metric(ctx, "heal_err_before", rep.err_before);
    stage_metric(ctx, "heal_err_after", rep.err_after);
    stage_metric(ctx, "heal_gaps", rep.n_gaps);
    rc = STAGE_OK;
out:
    cJSON_free(extra_txt);
    cJSON_Delete(extra);
    free(err);
    heal_report_release(&rep);
    prune_record_release(&rec);
    calib_release(&cal);
    model_free(s);
    model_free(t);
    cJSON_Delete(spec);
    return rc;
}
