/*
 * stage_eval: the native evaluation stages ppl, mcqa and speed (spec JSON in docs/lanes.md,
 * protocols in tests/data/tiny-a/README.md). Each loads the input model on the CPU engine with
 * ctx->nthreads threads, reports progress per window / item / run, checks cancellation at the
 * same points, and reports its metrics through stage_metric(). They write no model and touch no
 * file outside what the spec names. The shared pieces (data loading, windows, mcqa scoring)
 * live in worker/evals/eval.c so the calibration stages reuse them.
 */
#include "worker/stages/stage.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "worker/engine/tokdata.h"
#include "worker/evals/eval.h"
#include "worker/engine/model.h"

/* ---- spec helpers ------------------------------------------------------------------------ */

static cJSON *spec_parse(struct stage_ctx *ctx, int *rc)
{
    cJSON *root = ctx->spec_json ? cJSON_Parse(ctx->spec_json) : NULL;
    if (!root || !cJSON_IsObject(root)) {
        *rc =
            stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: the spec is not a JSON object: %.200s",
                       ctx->kind ? ctx->kind : "eval", ctx->spec_json ? ctx->spec_json : "(none)");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* An integer field in [lo, hi] (default def when absent or null). */
static int spec_int(struct stage_ctx *ctx, const cJSON *root, const char *name, int64_t def,
                    int64_t lo, int64_t hi, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: '%s' must be an integer in [%lld, %lld]",
                          ctx->kind, name, (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return 0;
}

/* A string field; NULL when absent. Fails when present but not a non-empty string. */
static int spec_str(struct stage_ctx *ctx, const cJSON *root, const char *name, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: '%s' must be a path string", ctx->kind,
                          name);
    *out = v->valuestring;
    return 0;
}

/*
 * Loads the stage's model. On a slot with a GPU (STAGE_BACKEND_CUDA) and when `gpu` is set, the
 * engine's kernels run on it (KERN_IMPL_CUDA: op by op through the host wrappers of
 * kernels/cuda.h, the weights copied per call; docs/cuda.md). The speed stage passes gpu = 0:
 * decode through those copies would measure PCIe, not the engine, until the device-resident
 * decode exists.
 */
static int load_model_dir(struct stage_ctx *ctx, const char *dir, struct model **m, int gpu);

static int load_model(struct stage_ctx *ctx, struct model **m, int gpu)
{
    return load_model_dir(ctx, ctx->input_dir, m, gpu);
}

/* load_model for the model in dir (the speed stage's baseline). */
static int load_model_dir(struct stage_ctx *ctx, const char *dir, struct model **m, int gpu)
{
    struct model_opts o = { ctx->nthreads > 0 ? ctx->nthreads : 1, KERN_IMPL_CPU, 0 };
    char *err = NULL;
    int rc;
    if (ctx->backend == STAGE_BACKEND_CUDA) {
        const char *why = NULL;
        if (!gpu)
            stage_log(ctx,
                      "%s: runs on the CPU (the GPU engine has no device-resident decode "
                      "yet)",
                      ctx->kind);
        else if (!cuda_api_get(&why))
            stage_log(ctx, "%s: the CUDA backend is unavailable (%s); running on the CPU",
                      ctx->kind, why ? why : "unknown reason");
        else
            o.impl = KERN_IMPL_CUDA;
    }
    stage_log(ctx, "%s: engine kernels on the %s", ctx->kind,
              o.impl == KERN_IMPL_CUDA ? "GPU (cuda)" : "CPU");
    rc = model_load(m, dir, &o, &err);
    if (rc) {
        rc = stage_fail(ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR,
                        "cannot load the model in '%s': %s", dir, err ? err : "unknown error");
        free(err);
        *m = NULL;
        return rc;
    }
    return 0;
}

static int model_fail(struct stage_ctx *ctx, int rc, char *err)
{
    rc = stage_fail(ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR, "%s: %s", ctx->kind,
                    err ? err : "model error");
    free(err);
    return rc;
}

/* ---- ppl --------------------------------------------------------------------------------- */

static int ppl_window(void *arg, int64_t done, int64_t total)
{
    struct stage_ctx *ctx = arg;
    stage_progress(ctx, (double)done, (double)total, "window");
    return stage_cancelled(ctx) && done < total ? 1 : 0; /* positive: stop (eval.h) */
}

int stage_ppl_run(struct stage_ctx *ctx)
{
    cJSON *spec;
    struct model *m = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int64_t seq_len, max_windows, W;
    const char *ids_path, *text_path;
    char *err = NULL;
    struct eval_ppl_result res;
    double t0;
    int rc = 0;

    if (!(spec = spec_parse(ctx, &rc)))
        return rc;
    if ((rc = spec_str(ctx, spec, "ids", &ids_path)) ||
        (rc = spec_str(ctx, spec, "text", &text_path)) ||
        (rc = spec_int(ctx, spec, "seq_len", 512, 1, 1 << 24, &seq_len)) ||
        (rc = spec_int(ctx, spec, "max_windows", 0, 0, INT64_C(1) << 40, &max_windows)))
        goto out;
    if (!ids_path == !text_path) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "ppl stage: give exactly one of 'ids' and 'text'");
        goto out;
    }
    if ((rc = load_model(ctx, &m, 1)))
        goto out;
    if (seq_len > m->cfg.max_position_embeddings) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "ppl stage: seq_len %lld exceeds the model's max_position_embeddings (%d)",
                        (long long)seq_len, m->cfg.max_position_embeddings);
        goto out;
    }
    t0 = now_mono();
    {
        char *e = NULL;
        if (tokdata_load(ids_path, text_path, ctx->input_dir, m->cfg.vocab_size, &ids, &n, &e) <
            0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "ppl stage: %s", e);
            free(e);
            goto out;
        }
    }
    if (text_path)
        stage_log(ctx, "ppl: tokenized '%s' into %zu tokens in %.2f s", text_path, n,
                  now_mono() - t0);
    W = eval_ppl_windows(n, (int)seq_len, max_windows);
    if (W < 1) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "ppl stage: '%s' holds %zu tokens, not enough for one window of seq_len "
                        "%lld (needs %lld tokens)",
                        ids_path ? ids_path : text_path, n, (long long)seq_len,
                        (long long)seq_len + 1);
        goto out;
    }
    stage_log(ctx, "ppl: %lld windows of %lld tokens (%zu tokens available), %d threads",
              (long long)W, (long long)seq_len, n, ctx->nthreads);
    t0 = now_mono();
    rc = eval_ppl_run(m, ids, n, (int)seq_len, W, ppl_window, ctx, &res, &err);
    if (rc > 0) {
        rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "ppl stage cancelled");
        goto out;
    }
    if (rc) {
        rc = model_fail(ctx, rc, err);
        err = NULL;
        goto out;
    }
    double nll = res.nll_sum / (double)res.tokens, ppl = exp(nll);
    if (!isfinite(ppl)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "ppl stage: the perplexity is not finite (mean NLL %g): the model "
                        "produces non-finite logits",
                        nll);
        goto out;
    }
    stage_log(ctx, "ppl: %.4f (mean NLL %.5f) over %lld tokens in %.2f s", ppl, nll,
              (long long)res.tokens, now_mono() - t0);
    stage_metric(ctx, "ppl", ppl);
    stage_metric(ctx, "nll_mean", nll);
    stage_metric(ctx, "eval_tokens", (double)res.tokens);
out:
    free(err);
    free(ids);
    model_free(m);
    cJSON_Delete(spec);
    return rc;
}

/* ---- mcqa -------------------------------------------------------------------------------- */

int stage_mcqa_run(struct stage_ctx *ctx)
{
    cJSON *spec;
    struct model *m = NULL;
    struct tok *t = NULL;
    struct eval_mcqa *sc = NULL;
    struct eval_mcqa_set set = { NULL, 0 };
    const char *items;
    int64_t limit;
    char *err = NULL;
    double *sums = NULL, t0;
    int rc = 0, hits = 0, hits_norm = 0, maxc = 0;

    if (!(spec = spec_parse(ctx, &rc)))
        return rc;
    if ((rc = spec_str(ctx, spec, "items", &items)) ||
        (rc = spec_int(ctx, spec, "limit", 0, 0, INT32_MAX, &limit)))
        goto out;
    if (!items) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "mcqa stage: 'items' (a JSONL file) is required");
        goto out;
    }
    if (eval_mcqa_load(items, (int)limit, &set, &err) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "mcqa stage: %s", err);
        free(err);
        err = NULL;
        goto out;
    }
    if ((rc = load_model(ctx, &m, 1)))
        goto out;
    if (!(t = tokdata_tok_load(ctx->input_dir, &err))) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "mcqa stage: %s", err);
        free(err);
        err = NULL;
        goto out;
    }
    for (int i = 0; i < set.n; i++)
        if (set.items[i].nchoices > maxc)
            maxc = set.items[i].nchoices;
    sums = xmalloc(sizeof(double) * (size_t)maxc);
    sc = eval_mcqa_new(m, t);
    stage_log(ctx, "mcqa: %d items from '%s', %d threads", set.n, items, ctx->nthreads);
    t0 = now_mono();
    for (int i = 0; i < set.n; i++) {
        int pick, pick_norm;
        stage_progress(ctx, i, set.n, "item");
        if (stage_cancelled(ctx)) {
            rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "mcqa stage cancelled");
            goto out;
        }
        if ((rc = eval_mcqa_score(sc, &set.items[i], sums, NULL, &err))) {
            rc = model_fail(ctx, rc, err);
            err = NULL;
            goto out;
        }
        eval_mcqa_pick(&set.items[i], sums, &pick, &pick_norm);
        hits += pick == set.items[i].answer;
        hits_norm += pick_norm == set.items[i].answer;
    }
    stage_progress(ctx, set.n, set.n, "item");
    stage_log(ctx, "mcqa: acc %.4f, acc_norm %.4f over %d items in %.2f s", (double)hits / set.n,
              (double)hits_norm / set.n, set.n, now_mono() - t0);
    stage_metric(ctx, "mcqa_acc", (double)hits / set.n);
    stage_metric(ctx, "mcqa_acc_norm", (double)hits_norm / set.n);
    stage_metric(ctx, "mcqa_items", set.n);
out:
    free(err);
    free(sums);
    eval_mcqa_free(sc);
    tok_free(t);
    model_free(m);
    eval_mcqa_release(&set);
    cJSON_Delete(spec);
    return rc;
}

/* ---- speed ------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int32_t argmax_f(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* One model the speed stage times: its weights (borrowed when both sides are one model), cache,
 * scratch and prompt. */
struct speed_side {
    struct model *m;
    bool borrowed;
    struct model_kv *kv;
    float *logits;
    int32_t *prompt;
    int32_t tok; /* the next input token of the decode */
};

static void speed_side_close(struct speed_side *s)
{
    free(s->logits);
    free(s->prompt);
    model_kv_free(s->kv);
    if (!s->borrowed)
        model_free(s->m);
    memset(s, 0, sizeof(*s));
}

/* Sizes the side's cache for P + G positions and writes its prompt; s->m is set. */
static int speed_side_prepare(struct stage_ctx *ctx, struct speed_side *s, const char *dir,
                              int64_t P, int64_t G)
{
    if (P + G > s->m->cfg.max_position_embeddings)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "speed stage: prompt_tokens + gen_tokens = %lld exceeds the model's "
                          "max_position_embeddings (%d; model '%s')",
                          (long long)(P + G), s->m->cfg.max_position_embeddings, dir);
    {
        /* The fp32 KV cache: K and V per layer, KV head, position and dim. */
        double kv_bytes = 2.0 * s->m->n_layers * s->m->cfg.num_key_value_heads * (double)(P + G) *
                          s->m->cfg.head_dim * sizeof(float);
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        if (pages > 0 && psz > 0 && kv_bytes > 0.8 * (double)pages * (double)psz)
            return stage_fail(ctx, STAGE_ERR_OOM,
                              "speed stage: the KV cache for %lld positions needs %.1f GB, more "
                              "than this machine's memory",
                              (long long)(P + G), kv_bytes / 1e9);
    }
    /* A fixed pseudo-random prompt (seeded, so every lane times the same input). */
    s->prompt = xmalloc(sizeof(int32_t) * (size_t)P);
    {
        uint64_t seed = 0x5eed5eedull;
        for (int64_t i = 0; i < P; i++)
            s->prompt[i] = (int32_t)(splitmix64(&seed) % (uint64_t)s->m->cfg.vocab_size);
    }
    s->kv = model_kv_new(s->m, (int)(P + G));
    s->logits = xmalloc(sizeof(float) * (size_t)s->m->cfg.vocab_size);
    return 0;
}

static int speed_side_open(struct stage_ctx *ctx, struct speed_side *s, const char *dir, int64_t P,
                           int64_t G)
{
    int rc = load_model_dir(ctx, dir, &s->m, 0);
    return rc ? rc : speed_side_prepare(ctx, s, dir, P, G);
}

/* Prefill (seconds in *dt) or one decode step of side s. 0, or a model error code. */
static int speed_side_step(struct speed_side *s, int prefill_len, double *dt, char **err)
{
    double t0 = now_mono();
    int rc;
    if (prefill_len) {
        model_kv_reset(s->kv);
        rc = model_forward(s->m, s->prompt, prefill_len, s->kv, MODEL_LOGITS_LAST, s->logits, NULL,
                           err);
    } else {
        rc = model_forward(s->m, &s->tok, 1, s->kv, MODEL_LOGITS_LAST, s->logits, NULL, err);
    }
    *dt = now_mono() - t0;
    if (rc == 0)
        s->tok = argmax_f(s->logits, s->m->cfg.vocab_size);
    return rc;
}

/* Figures of one timed run (or one pair) of a side. */
struct speed_fig {
    double pre;  /* prefill tokens/s */
    double dec;  /* mean decode seconds per token */
    double step; /* median decode step, seconds */
};

/*
 * One pair: both sides prefill, then decode G steps interleaved step by step (A B, then B A at
 * the next step, ...; flip starts with B), every step timed. b may be NULL (one side alone).
 * Returns 0, or a stage_fail code.
 */
static int speed_pair(struct stage_ctx *ctx, struct speed_side *a, struct speed_side *b, int64_t P,
                      int64_t G, int flip, double *da, double *db, struct speed_fig *fa,
                      struct speed_fig *fb)
{
    struct speed_side *side[2] = { a, b };
    struct speed_fig *fig[2] = { fa, fb };
    double *d[2] = { da, db }, t;
    char *err = NULL;
    int rc = 0, ns = b ? 2 : 1;
    for (int k = 0; k < ns && rc == 0; k++) {
        int w = ns == 2 ? (k + flip) % 2 : 0;
        if ((rc = speed_side_step(side[w], (int)P, &t, &err)) == 0)
            fig[w]->pre = (double)P / (t > 0 ? t : 1e-9);
    }
    for (int64_t i = 0; i < G && rc == 0; i++) {
        if (stage_cancelled(ctx))
            return stage_fail(ctx, STAGE_ERR_CANCELLED, "speed stage cancelled");
        for (int k = 0; k < ns && rc == 0; k++) {
            int w = ns == 2 ? (int)((k + flip + i) % 2) : 0;
            rc = speed_side_step(side[w], 0, &d[w][i], &err);
        }
    }
    if (rc)
        return model_fail(ctx, rc, err);
    for (int w = 0; w < ns; w++) {
        double sum = 0;
        for (int64_t i = 0; i < G; i++)
            sum += d[w][i];
        fig[w]->dec = sum / (double)G;
        if (!(fig[w]->dec > 0))
            fig[w]->dec = 1e-9; /* a clock too coarse to see one step: keep the metrics finite */
        fig[w]->step = eval_median(d[w], (int)G);
        if (!(fig[w]->step > 0))
            fig[w]->step = 1e-9;
    }
    return 0;
}

/*
 * Copies the regular files of model dir src into a new dir stage_dir/name (new string in *out).
 * The paired speed eval times such fresh copies of both models: how a weight file sits in the
 * page cache (written just now, or read from disk long ago) changes the decode time of the
 * mmapped weights by several percent on this project's machines, which would otherwise show up
 * as a speed difference between a lane and the base model they do not have.
 */
static int speed_fresh_copy(struct stage_ctx *ctx, const char *src, const char *name, char **out)
{
    DIR *d = opendir(src);
    struct dirent *e;
    char *dst = path_join(ctx->stage_dir, name);
    int rc = 0;
    *out = NULL;
    if (!d || mkdir_p(dst, 0755) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "speed stage: cannot copy the model '%s' to '%s': %s",
                        src, dst, strerror(errno));
        if (d)
            closedir(d);
        free(dst);
        return rc;
    }
    while (rc == 0 && (e = readdir(d))) {
        char *f = path_join(src, e->d_name), *t = path_join(dst, e->d_name);
        int cr;
        if (e->d_name[0] != '.' && is_file(f) && (cr = file_copy(f, t)) < 0)
            rc = stage_fail(ctx, cr == -ENOSPC ? STAGE_ERR_OOM : STAGE_ERR_ERROR,
                            "speed stage: cannot copy '%s' to '%s': %s", f, t, strerror(-cr));
        free(f);
        free(t);
    }
    closedir(d);
    if (rc)
        free(dst);
    else
        *out = dst;
    return rc;
}

/*
 * The speed eval (docs/evals.md "speed"). Without a baseline (exaq-worker run without
 * --baseline): one warm-up and `repeats` timed runs of the model. With the sweep's base model
 * as baseline (every job exaqd sends): both models are loaded in this process and run in
 * `pairs` pairs after one warm-up pair. In a pair both prefill the same prompt, then their
 * decode steps alternate one by one (A B B A A B ...), each timed, so both models see the same
 * machine load within a few milliseconds. The pair's ratio is the model's median step time
 * over the baseline's: a preempted step changes one median by nothing. Metrics:
 * time_per_token (median over runs of the run's mean step), decode_tok_s, prefill_tok_s, and
 * when paired baseline_time_per_token, speed_ratio (median of the pairs' ratios),
 * speed_ratio_iqr (their interquartile range) and speed_pairs.
 */
int stage_speed_run(struct stage_ctx *ctx)
{
    cJSON *spec;
    struct speed_side a = { 0 }, b = { 0 };
    int64_t P, G, R, NP, n, total;
    double *pre = NULL, *dec = NULL, *bdec = NULL, *ratio = NULL, *da = NULL, *db = NULL;
    char *copy_a = NULL, *copy_b = NULL;
    int rc = 0;
    bool paired = ctx->baseline_dir && ctx->baseline_dir[0], same = false;

    if (!(spec = spec_parse(ctx, &rc)))
        return rc;
    if ((rc = spec_int(ctx, spec, "prompt_tokens", 128, 1, 1 << 24, &P)) ||
        (rc = spec_int(ctx, spec, "gen_tokens", 128, 1, 1 << 24, &G)) ||
        (rc = spec_int(ctx, spec, "repeats", 3, 1, 100000, &R)) ||
        (rc = spec_int(ctx, spec, "pairs", 10, 1, 100000, &NP)))
        goto out;
    if (paired) {
        char *ra = realpath(ctx->input_dir, NULL), *rb = realpath(ctx->baseline_dir, NULL);
        same = ra && rb && strcmp(ra, rb) == 0;
        free(ra);
        free(rb);
        if (ctx->stage_dir) {
            if ((rc = speed_fresh_copy(ctx, ctx->input_dir, "speed-model", &copy_a)) ||
                (!same &&
                 (rc = speed_fresh_copy(ctx, ctx->baseline_dir, "speed-baseline", &copy_b))))
                goto out;
            stage_log(ctx, "speed: timing fresh copies of %s in the stage dir",
                      same ? "the model" : "both models");
        }
    }
    if ((rc = speed_side_open(ctx, &a, copy_a ? copy_a : ctx->input_dir, P, G)))
        goto out;
    if (paired) {
        if (same) {
            /* The baseline lane: the model against itself (its weights once, two caches). */
            b.m = a.m;
            b.borrowed = true;
            rc = speed_side_prepare(ctx, &b, ctx->baseline_dir, P, G);
        } else {
            rc = speed_side_open(ctx, &b, copy_b ? copy_b : ctx->baseline_dir, P, G);
        }
        if (rc)
            goto out;
    }
    n = paired ? NP : R;
    total = 1 + n;
    pre = xcalloc((size_t)n, sizeof(double));
    dec = xcalloc((size_t)n, sizeof(double));
    bdec = xcalloc((size_t)n, sizeof(double));
    ratio = xcalloc((size_t)n, sizeof(double));
    da = xcalloc((size_t)G, sizeof(double));
    db = xcalloc((size_t)G, sizeof(double));
    stage_log(ctx, "speed: prompt %lld tokens, %lld greedy decode steps, %d threads", (long long)P,
              (long long)G, ctx->nthreads);
    if (paired)
        stage_log(ctx,
                  "speed: 1 warm-up pair, then %lld pairs against the baseline '%s'%s, decode "
                  "steps interleaved",
                  (long long)NP, ctx->baseline_dir, same ? " (the model itself)" : "");
    else
        stage_log(ctx, "speed: 1 warm-up + %lld timed runs (no baseline)", (long long)R);
    for (int64_t r = -1; r < n; r++) {
        struct speed_fig fa = { 0 }, fb = { 0 };
        stage_progress(ctx, (double)(r + 1), (double)total, "run");
        if (stage_cancelled(ctx)) {
            rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "speed stage cancelled");
            goto out;
        }
        if ((rc = speed_pair(ctx, &a, paired ? &b : NULL, P, G, r >= 0 && r % 2 == 1, da, db, &fa,
                             &fb)))
            goto out;
        if (r < 0)
            continue; /* warm-up: pages the weights in, warms the caches and the thread pool */
        pre[r] = fa.pre;
        dec[r] = fa.dec;
        if (paired) {
            bdec[r] = fb.dec;
            ratio[r] = fa.step / fb.step;
            stage_log(ctx,
                      "speed: pair %lld: model %.3f ms/token (median step %.3f), baseline %.3f "
                      "(median step %.3f), ratio %.4f",
                      (long long)r + 1, fa.dec * 1e3, fa.step * 1e3, fb.dec * 1e3, fb.step * 1e3,
                      ratio[r]);
        } else {
            stage_log(ctx, "speed: run %lld: prefill %.1f tokens/s, decode %.3f ms/token",
                      (long long)r + 1, pre[r], dec[r] * 1e3);
        }
    }
    stage_progress(ctx, (double)total, (double)total, "run");
    {
        double tpt = eval_median(dec, (int)n), pts = eval_median(pre, (int)n);
        stage_metric(ctx, "time_per_token", tpt);
        stage_metric(ctx, "decode_tok_s", 1.0 / tpt);
        stage_metric(ctx, "prefill_tok_s", pts);
        if (paired) {
            double tb = eval_median(bdec, (int)n);
            double rmed = eval_median(ratio, (int)n), riqr = eval_iqr(ratio, (int)n);
            stage_metric(ctx, "baseline_time_per_token", tb);
            stage_metric(ctx, "speed_ratio", rmed);
            stage_metric(ctx, "speed_ratio_iqr", riqr);
            stage_metric(ctx, "speed_pairs", (double)n);
            stage_log(ctx,
                      "speed: time_per_token %.6f s, baseline %.6f s, paired ratio %.4f (IQR "
                      "%.4f over %lld pairs)",
                      tpt, tb, rmed, riqr, (long long)n);
        } else {
            stage_log(ctx, "speed: time_per_token %.6f s (%.1f tokens/s), prefill %.1f tokens/s",
                      tpt, 1.0 / tpt, pts);
        }
    }
out:
    free(pre);
    free(dec);
    free(bdec);
    free(ratio);
    free(da);
    free(db);
    speed_side_close(&b);
    speed_side_close(&a);
    for (int i = 0; i < 2; i++) {
        char *c = i ? copy_b : copy_a;
        if (c)
            rm_rf(c); /* the stage dir becomes the artifact: keep no model there */
        free(c);
    }
    cJSON_Delete(spec);
    return rc;
}
