/*
 * stage_distill: the `distill` stage (knowledge distillation of the input model toward a
 * teacher) and the driver it shares with `finetune` (stage_finetune.c): spec, data, nets,
 * the loop with its checkpoint, evaluation, metrics and the saved model. docs/training.md.
 *
 * The crash checkpoint lives beside the attempt's scratch dir, which exaqd names
 * <artifacts>/<stage key>.tmp-<attempt> and the worker empties at each attempt: the checkpoint
 * goes to <artifacts>/<stage key>.train/ (the key covers the spec and the input, so only a
 * retry of the same stage finds it) and is removed once the stage's model is saved.
 */
#include "worker/stages/stage.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/compress/prune.h"
#include "worker/train/grad.h"
#include "worker/train/loop.h"

/* Windows of each evaluation (train and validation perplexity before and after). */
#define EVAL_WINDOWS 16

static int req_num(struct stage_ctx *ctx, const cJSON *spec, const char *key, double *v)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(spec, key);
    if (!cJSON_IsNumber(it))
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s: spec field '%s' must be a number", ctx->kind,
                          key);
    *v = it->valuedouble;
    return 0;
}

static int req_str(struct stage_ctx *ctx, const cJSON *spec, const char *key, const char **v)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(spec, key);
    if (!cJSON_IsString(it))
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s: spec field '%s' must be a string", ctx->kind,
                          key);
    *v = it->valuestring;
    return 0;
}

static void cb_log(void *arg, const char *line)
{
    stage_log(arg, "%s", line);
}

static void cb_progress(void *arg, double done, double total, const char *what)
{
    stage_progress(arg, done, total, what);
}

static int cb_cancelled(void *arg)
{
    return stage_cancelled(arg);
}

/* <artifacts>/<key>.train/train.ckpt for an exaqd attempt dir <artifacts>/<key>.tmp-N, else
 * <stage_dir>.train/train.ckpt. */
static char *ckpt_dir_for(const char *stage_dir)
{
    const char *t = strstr(stage_dir, ".tmp-");
    size_t n = strlen(stage_dir);
    if (t && t[5] && strspn(t + 5, "0123456789") == strlen(t + 5))
        n = (size_t)(t - stage_dir);
    return xasprintf("%.*s.train", (int)n, stage_dir);
}

/* The teacher of `teacher: base | input` (docs/training.md). */
static char *teacher_dir(struct stage_ctx *ctx, const char *which)
{
    struct prune_record rec = { 0 };
    char *e = NULL, *dir = NULL;
    if (!strcmp(which, "base") && ctx->baseline_dir)
        dir = xstrdup(ctx->baseline_dir);
    else if (prune_record_read(ctx->input_dir, &rec, &e) == 0 && is_dir(rec.source))
        dir = xstrdup(rec.source); /* the model the preceding prune started from */
    else if (!strcmp(which, "input"))
        dir = xstrdup(ctx->input_dir);
    prune_record_release(&rec);
    free(e);
    return dir;
}

int stage_train_run(struct stage_ctx *ctx, const struct stage_train_method *m)
{
    cJSON *spec = cJSON_Parse(ctx->spec_json ? ctx->spec_json : "");
    struct tnet *net = NULL, *teacher = NULL;
    struct tdata data = { 0 };
    struct tslot *slots = NULL;
    struct tloop_hooks hooks = { 0 };
    struct tloop_result res;
    void *mstate = NULL;
    char *err = NULL, *tdir = NULL, *cdir = NULL, *cpath = NULL, *fp = NULL;
    const char *path = NULL, *kind = ctx->kind;
    double tokens = 0, seq_len = 0, batch = 0, lr = 0, warmup = 0, wd = 0, clip = 0, ck_every = 0;
    double seed = 0, valf = 0, temp = 1, cew = 1;
    int rc = STAGE_ERR_ERROR, nslots = 0, distill = !strcmp(kind, "distill");

    if (!ctx->output_dir)
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage needs an output model dir", kind);
    if (!cJSON_IsObject(spec)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: the spec is not a JSON object", kind);
        goto out;
    }
    if ((rc = req_num(ctx, spec, "tokens", &tokens)) ||
        (rc = req_num(ctx, spec, "seq_len", &seq_len)) ||
        (rc = req_num(ctx, spec, "batch", &batch)) || (rc = req_num(ctx, spec, "lr", &lr)) ||
        (rc = req_num(ctx, spec, "warmup", &warmup)) ||
        (rc = req_num(ctx, spec, "weight_decay", &wd)) ||
        (rc = req_num(ctx, spec, "grad_clip", &clip)) ||
        (rc = req_num(ctx, spec, "checkpoint_every", &ck_every)) ||
        (rc = req_num(ctx, spec, "seed", &seed)) ||
        (rc = req_num(ctx, spec, "val_fraction", &valf)))
        goto out;
    {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(spec, "data");
        const cJSON *cal = cJSON_GetObjectItemCaseSensitive(spec, "calibration");
        if (cJSON_IsString(d))
            path = d->valuestring;
        else if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cal, "ids")))
            path = cJSON_GetObjectItemCaseSensitive(cal, "ids")->valuestring;
        else if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cal, "text")))
            path = cJSON_GetObjectItemCaseSensitive(cal, "text")->valuestring;
        if (!path) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "%s: the spec has neither 'data' nor a "
                            "calibration source",
                            kind);
            goto out;
        }
    }

    if (!(net = tnet_load(ctx->input_dir, &err))) {
        rc =
            stage_fail(ctx, STAGE_ERR_ERROR, "%s: cannot load '%s': %s", kind, ctx->input_dir, err);
        goto out;
    }
    if (distill) {
        const char *which, *loss;
        if ((rc = req_str(ctx, spec, "teacher", &which)) ||
            (rc = req_str(ctx, spec, "loss", &loss)) ||
            (rc = req_num(ctx, spec, "temperature", &temp)))
            goto out;
        /* ce_weight is in the spec only for loss kl+ce */
        if (!strcmp(loss, "kl"))
            cew = 0;
        else if ((rc = req_num(ctx, spec, "ce_weight", &cew)))
            goto out;
        rc = STAGE_ERR_ERROR;
        if (!(tdir = teacher_dir(ctx, which))) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "distill: teacher 'base' needs the sweep's base model (run it "
                            "through exaqd, or pass --baseline DIR)");
            goto out;
        }
        if (!(teacher = tnet_load(tdir, &err))) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "distill: cannot load the teacher '%s': %s", tdir,
                            err);
            goto out;
        }
        if (tnet_vocab(teacher) != tnet_vocab(net)) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "distill: the teacher '%s' has a vocabulary of %d, the student %d",
                            tdir, tnet_vocab(teacher), tnet_vocab(net));
            goto out;
        }
    }
    if (tdata_open(&data, path, ctx->input_dir, tnet_vocab(net), (int)seq_len, valf, (uint64_t)seed,
                   &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: %s", kind, err);
        goto out;
    }
    long steps = (long)ceil(tokens / (batch * seq_len));
    if (steps < 1)
        steps = 1;
    stage_log(ctx,
              "%s: %ld steps of %d x %d tokens (%.0f tokens) from '%s' (%d training windows, %d "
              "held out)%s%s",
              kind, steps, (int)batch, (int)seq_len, (double)steps * batch * seq_len, path,
              data.n_win, data.n_val, tdir ? ", teacher " : "", tdir ? tdir : "");

    int ne = data.n_win < EVAL_WINDOWS ? data.n_win : EVAL_WINDOWS;
    int nv = data.n_val < EVAL_WINDOWS ? data.n_val : EVAL_WINDOWS;
    double tr0 = NAN, va0 = NAN, tr1 = NAN, va1 = NAN;
    if (tloop_eval_ce(net, &data, 0, 0, ne, &tr0, &err) < 0 ||
        (nv && tloop_eval_ce(net, &data, 1, 0, nv, &va0, &err) < 0)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: evaluation: %s", kind, err);
        goto out;
    }
    if (nv)
        stage_log(ctx, "%s: before: train ppl %.4f, validation ppl %.4f", kind, exp(tr0), exp(va0));
    else
        stage_log(ctx, "%s: before: train ppl %.4f (no validation windows: val_fraction 0)", kind,
                  exp(tr0));

    if ((rc = m->setup(ctx, spec, net, &slots, &nslots, &hooks, &mstate)))
        goto out;
    rc = STAGE_ERR_ERROR;
    {
        size_t n = 0;
        for (int i = 0; i < nslots; i++)
            n += slots[i].n;
        stage_log(ctx, "%s: %d trainable tensors, %zu values", kind, nslots, n);
    }

    cdir = ckpt_dir_for(ctx->stage_dir ? ctx->stage_dir : ctx->output_dir);
    if (ck_every > 0 && mkdir_p(cdir, 0755) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: cannot create '%s': %s", kind, cdir,
                        strerror(errno));
        goto out;
    }
    cpath = path_join(cdir, "train.ckpt");
    {
        char *ia = path_abs(ctx->input_dir);
        fp = xasprintf("%s\n%s\n%s", ctx->spec_json, ia ? ia : ctx->input_dir, tdir ? tdir : "");
        free(ia);
    }
    struct tloop_opts o = {
        .steps = steps,
        .batch = (int)batch,
        .lr = lr,
        .min_lr_ratio = 0.1,
        .warmup = (long)warmup,
        .weight_decay = wd,
        .grad_clip = clip,
        .checkpoint_every = (long)ck_every,
        .seed = (uint64_t)seed,
        .teacher = teacher,
        .temperature = (float)temp,
        .ce_weight = (float)cew,
        .ckpt_path = ck_every > 0 ? cpath : NULL,
        .fingerprint = fp,
        .log_every = steps / 20 > 0 ? steps / 20 : 1,
        .log = cb_log,
        .progress = cb_progress,
        .cancelled = cb_cancelled,
        .cb_arg = ctx,
    };
    int e = tloop_run(net, slots, nslots, &hooks, &data, &o, &res, &err);
    if (e == -ECANCELED) {
        rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "%s: cancelled", kind);
        goto out;
    }
    if (e < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: %s", kind, err);
        goto out;
    }
    tnet_free(teacher);
    teacher = NULL;
    if (tloop_eval_ce(net, &data, 0, 0, ne, &tr1, &err) < 0 ||
        (nv && tloop_eval_ce(net, &data, 1, 0, nv, &va1, &err) < 0)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: evaluation: %s", kind, err);
        goto out;
    }
    {
        char val[96] = "";
        if (nv)
            snprintf(val, sizeof(val), ", validation ppl %.4f -> %.4f", exp(va0), exp(va1));
        stage_log(ctx,
                  "%s: after %ld steps (%.1f s, %.0f tok/s): loss %.5f (last tenth), train ppl "
                  "%.4f -> %.4f%s",
                  kind, res.steps, res.seconds, res.tok_per_s, res.avg_loss, exp(tr0), exp(tr1),
                  val);
    }
    if (tnet_save(net, ctx->input_dir, ctx->output_dir, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: cannot save the model: %s", kind, err);
        goto out;
    }
    stage_metric(ctx, "train_loss", res.avg_loss);
    stage_metric(ctx, "train_loss_last", res.last_loss);
    stage_metric(ctx, "train_ppl_before", exp(tr0));
    stage_metric(ctx, "train_ppl", exp(tr1));
    if (nv) {
        stage_metric(ctx, "val_ppl_before", exp(va0));
        stage_metric(ctx, "val_ppl", exp(va1));
    }
    stage_metric(ctx, "train_steps", (double)res.steps);
    stage_metric(ctx, "train_tokens_per_s", res.tok_per_s);
    stage_metric(ctx, "resumed_from_step", (double)res.resumed_at);
    /* The model is saved: a finished stage leaves no checkpoint behind. */
    unlink(cpath);
    rmdir(cdir);
    rc = STAGE_OK;
out:
    if (m && m->release && mstate)
        m->release(mstate);
    free(slots);
    tdata_release(&data);
    tnet_free(net);
    tnet_free(teacher);
    free(err);
    free(tdir);
    free(cdir);
    free(cpath);
    free(fp);
    cJSON_Delete(spec);
    return rc;
}

/* ---- distill: the parameters the `trainable` patterns name, full weights --------------------- */

static int distill_setup(struct stage_ctx *ctx, const cJSON *spec, struct tnet *net,
                         struct tslot **slots, int *nslots, struct tloop_hooks *h, void **state)
{
    const cJSON *pats = cJSON_GetObjectItemCaseSensitive(spec, "trainable"), *p;
    int np = tnet_nparams(net), k = 0;
    (void)h;
    (void)state;
    if (!cJSON_IsArray(pats) || cJSON_GetArraySize(pats) < 1)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "distill: spec field 'trainable' must be a list of patterns");
    *slots = xcalloc((size_t)np, sizeof(**slots));
    for (int i = 0; i < np; i++) {
        struct tparam *tp = tnet_param(net, i);
        int hit = 0;
        cJSON_ArrayForEach(p, pats) hit |=
            cJSON_IsString(p) && tloop_pattern_match(p->valuestring, tp->name);
        if (!hit)
            continue;
        struct tslot *s = &(*slots)[k++];
        snprintf(s->name, sizeof(s->name), "%s", tp->name);
        s->w = tp->w;
        s->g = tp->g;
        s->n = tp->n;
        s->wd = tp->cols > 1 ? 1.0 : 0.0; /* no decay on norms */
    }
    *nslots = k;
    if (!k)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "distill: no parameter matches 'trainable' (names look like "
                          "model.layers.0.mlp.up_proj.weight)");
    return 0;
}

int stage_distill_run(struct stage_ctx *ctx)
{
    static const struct stage_train_method m = { distill_setup, NULL };
    return stage_train_run(ctx, &m);
}
