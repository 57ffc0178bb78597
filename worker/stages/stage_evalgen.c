/*
 * stage_evalgen: the generated-answer eval stages mcqa_gen and qa (spec JSON in docs/lanes.md,
 * rules in docs/evals.md). Each loads the input model on the CPU engine with ctx->nthreads
 * threads and its tokenizer, builds every item's prompt (wrapped in the model's chat template
 * unless "chat" is false), generates greedily in batches of "batch" items through
 * worker/engine/generate.c (EOS ids of generation_config.json, max_new_tokens), scores the
 * texts with worker/evals/mcqa_gen.c or qa.c, and reports progress per batch, checks
 * cancellation at every decode step, and logs the first generations.
 */
#include "worker/stages/stage.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/generate.h"
#include "worker/engine/model.h"
#include "worker/engine/tokdata.h"
#include "worker/evals/mcqa_gen.h"
#include "worker/evals/qa.h"

#define LOG_ITEMS 20 /* generations logged per stage */

/* What both stages share: the spec fields, the model, tokenizer, template and EOS ids. */
struct gctx {
    struct stage_ctx *ctx;
    cJSON *spec;
    const char *items, *tmpl;
    int64_t limit, max_new, batch;
    bool chat;
    struct model *m;
    struct tok *t;
    struct chat_template ct;
    bool ct_loaded;
    int32_t *eos;
    int n_eos;
};

static int spec_int(struct gctx *g, const char *name, int64_t def, int64_t lo, int64_t hi,
                    int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(g->spec, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return stage_fail(g->ctx, STAGE_ERR_ERROR,
                          "%s stage: '%s' must be an integer in [%lld, %lld]", g->ctx->kind, name,
                          (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int spec_str(struct gctx *g, const char *name, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(g->spec, name);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return stage_fail(g->ctx, STAGE_ERR_ERROR, "%s stage: '%s' must be a non-empty string",
                          g->ctx->kind, name);
    *out = v->valuestring;
    return 0;
}

/* The fields both kinds take, then the model, tokenizer, chat template and EOS ids. */
static int g_open(struct gctx *g, struct stage_ctx *ctx, const char *def_tmpl)
{
    char *err = NULL;
    int rc = 0;
    memset(g, 0, sizeof(*g));
    g->ctx = ctx;
    g->spec = ctx->spec_json ? cJSON_Parse(ctx->spec_json) : NULL;
    if (!g->spec || !cJSON_IsObject(g->spec))
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: the spec is not a JSON object: %.200s",
                          ctx->kind, ctx->spec_json ? ctx->spec_json : "(none)");
    const cJSON *chat = cJSON_GetObjectItemCaseSensitive(g->spec, "chat");
    if (chat && !cJSON_IsBool(chat) && !cJSON_IsNull(chat))
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: 'chat' must be true or false",
                          ctx->kind);
    g->chat = !chat || cJSON_IsNull(chat) || cJSON_IsTrue(chat);
    if ((rc = spec_str(g, "items", &g->items)) || (rc = spec_str(g, "template", &g->tmpl)) ||
        (rc = spec_int(g, "limit", 0, 0, INT32_MAX, &g->limit)) ||
        (rc = spec_int(g, "max_new_tokens", 32, 1, 1 << 20, &g->max_new)) ||
        (rc = spec_int(g, "batch", 8, 1, 4096, &g->batch)))
        return rc;
    if (!g->items)
        return stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: 'items' (a JSONL file) is required",
                          ctx->kind);
    if (!g->tmpl)
        g->tmpl = def_tmpl;
    struct model_opts o = { ctx->nthreads > 0 ? ctx->nthreads : 1, KERN_IMPL_CPU, 0 };
    if (ctx->backend == STAGE_BACKEND_CUDA)
        stage_log(ctx, "%s: generation runs on the CPU engine (no device-resident decode yet)",
                  ctx->kind);
    if ((rc = model_load(&g->m, ctx->input_dir, &o, &err))) {
        rc = stage_fail(ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR,
                        "cannot load the model in '%s': %s", ctx->input_dir,
                        err ? err : "unknown error");
        free(err);
        return rc;
    }
    if (!(g->t = tokdata_tok_load(ctx->input_dir, &err))) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: %s", ctx->kind, err);
        free(err);
        return rc;
    }
    if (g->chat) {
        if (chat_template_load(ctx->input_dir, &g->ct, &err) != 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR,
                            "%s stage: %s (set 'chat: false' to prompt without a chat template)",
                            ctx->kind, err);
            free(err);
            return rc;
        }
        g->ct_loaded = true;
    }
    if (gen_eos_load(ctx->input_dir, &g->eos, &g->n_eos, &err) != 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: %s", ctx->kind, err);
        free(err);
        return rc;
    }
    return 0;
}

static void g_close(struct gctx *g)
{
    if (g->ct_loaded)
        chat_template_release(&g->ct);
    free(g->eos);
    tok_free(g->t);
    model_free(g->m);
    cJSON_Delete(g->spec);
}

/* The chat wrapper in qa_fit's shape. */
static int wrap_chat(void *arg, const char *user, struct buf *out, char *err, size_t errlen)
{
    struct gctx *g = arg;
    char *e = NULL;
    if (gen_chat_wrap(&g->ct, user, out, &e) != 0) {
        snprintf(err, errlen, "%s", e ? e : "chat template error");
        free(e);
        return -1;
    }
    return 0;
}

static int on_step(void *arg, int step, int running)
{
    (void)step;
    (void)running;
    return stage_cancelled(arg) ? 1 : 0;
}

/* Generates for prompts[0..n-1] in batches; texts[i] receives the new text (owned). */
static int g_generate(struct gctx *g, int32_t **prompts, int *lens, int n, char **texts)
{
    struct gen_opts o = { 0 };
    struct gen_result *res = xcalloc((size_t)g->batch, sizeof(*res));
    char *err = NULL;
    int rc = 0;
    o.max_new_tokens = (int)g->max_new;
    o.eos = g->eos;
    o.n_eos = g->n_eos;
    o.tok = g->t;
    o.step = on_step;
    o.arg = g->ctx;
    for (int i0 = 0; i0 < n && rc == 0; i0 += (int)g->batch) {
        int B = n - i0 < g->batch ? n - i0 : (int)g->batch;
        stage_progress(g->ctx, i0, n, "item");
        rc = gen_greedy(g->m, (const int32_t *const *)prompts + i0, lens + i0, B, &o, res, &err);
        for (int b = 0; b < B; b++) {
            if (rc == 0) {
                texts[i0 + b] = res[b].text;
                res[b].text = NULL;
            }
            gen_result_release(&res[b]);
        }
    }
    if (rc > 0)
        rc = stage_fail(g->ctx, STAGE_ERR_CANCELLED, "%s stage cancelled", g->ctx->kind);
    else if (rc < 0)
        rc = stage_fail(g->ctx, rc == -ENOMEM ? STAGE_ERR_OOM : STAGE_ERR_ERROR, "%s: %s",
                        g->ctx->kind, err ? err : "generation failed");
    else
        stage_progress(g->ctx, n, n, "item");
    free(err);
    free(res);
    return rc;
}

/* Encodes a user text (chat-wrapped when asked); -1 with a stage failure. */
static int g_encode(struct gctx *g, const char *user, int32_t **ids, int *n)
{
    struct buf w;
    char msg[512];
    int rc = 0;
    buf_init(&w);
    if (g->chat && wrap_chat(g, user, &w, msg, sizeof(msg)) != 0)
        rc = stage_fail(g->ctx, STAGE_ERR_ERROR, "%s stage: %s", g->ctx->kind, msg);
    else if (!g->chat)
        buf_puts(&w, user);
    if (rc == 0 && (*n = tok_encode(g->t, w.data ? w.data : "", w.len, ids, msg, sizeof(msg))) < 0)
        rc = stage_fail(g->ctx, STAGE_ERR_ERROR, "%s stage: cannot encode a prompt: %s",
                        g->ctx->kind, msg);
    buf_release(&w);
    return rc;
}

/* Logs a generation on one line (newlines and tabs escaped), for the first LOG_ITEMS items. */
static void log_gen(struct stage_ctx *ctx, int i, int line, const char *what, const char *text)
{
    struct buf b;
    if (i >= LOG_ITEMS)
        return;
    buf_init(&b);
    for (const char *p = text; *p && b.len < 200; p++)
        if (*p == '\n')
            buf_puts(&b, "\\n");
        else if (*p == '\t' || *p == '\r')
            buf_puts(&b, " ");
        else
            buf_append(&b, p, 1);
    stage_log(ctx, "%s: line %d: %s: %s", ctx->kind, line, what, buf_cstr(&b));
    buf_release(&b);
}

/* ---- mcqa_gen ---------------------------------------------------------------------------- */

int stage_mcqa_gen_run(struct stage_ctx *ctx)
{
    struct gctx g;
    struct mcqa_gen_set set = { NULL, 0 }, shots = { NULL, 0 };
    const char *fewshot = NULL;
    int64_t nshot;
    char msg[1024];
    int32_t **prompts = NULL;
    int *lens = NULL, rc;
    char **texts = NULL;
    double t0 = now_mono();

    if ((rc = g_open(&g, ctx, MCQA_GEN_DEFAULT_TEMPLATE)))
        goto out;
    if ((rc = spec_str(&g, "fewshot", &fewshot)) ||
        (rc = spec_int(&g, "num_fewshot", 5, 0, 64, &nshot)))
        goto out;
    if (mcqa_gen_load(g.items, (int)g.limit, &set, msg, sizeof(msg)) < 0 ||
        (fewshot && mcqa_gen_load(fewshot, (int)nshot, &shots, msg, sizeof(msg)) < 0)) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "mcqa_gen stage: %s", msg);
        goto out;
    }
    int ns = fewshot ? (shots.n < nshot ? shots.n : (int)nshot) : 0;
    prompts = xcalloc((size_t)set.n, sizeof(*prompts));
    lens = xcalloc((size_t)set.n, sizeof(*lens));
    texts = xcalloc((size_t)set.n, sizeof(*texts));
    for (int i = 0; i < set.n; i++) {
        struct buf u;
        buf_init(&u);
        mcqa_gen_prompt(g.tmpl, shots.items, ns, &set.items[i], &u);
        rc = g_encode(&g, buf_cstr(&u), &prompts[i], &lens[i]);
        buf_release(&u);
        if (rc)
            goto out;
    }
    stage_log(ctx,
              "mcqa_gen: %d items from '%s', %d few-shot, chat %s, max_new_tokens %lld, batch "
              "%lld, %d threads",
              set.n, g.items, ns, g.chat ? "on" : "off", (long long)g.max_new, (long long)g.batch,
              ctx->nthreads);
    if ((rc = g_generate(&g, prompts, lens, set.n, texts)))
        goto out;
    struct mcqa_gen_tally ty;
    for (int i = 0; i < set.n; i++) {
        int pick = mcqa_gen_parse(texts[i], set.items[i].nchoices);
        snprintf(msg, sizeof(msg), "pick %c, answer %c", pick < 0 ? '-' : 'A' + pick,
                 'A' + set.items[i].answer);
        log_gen(ctx, i, set.items[i].line, msg, texts[i]);
    }
    mcqa_gen_tally(&set, (const char *const *)texts, &ty);
    stage_log(ctx, "mcqa_gen: acc %.4f, parse_fail %.4f over %d items in %.2f s",
              (double)ty.correct / set.n, (double)ty.fails / set.n, set.n, now_mono() - t0);
    stage_metric(ctx, "mcqa_gen_acc", (double)ty.correct / set.n);
    stage_metric(ctx, "mcqa_gen_parse_fail", (double)ty.fails / set.n);
    stage_metric(ctx, "mcqa_gen_n", set.n);
    for (int c = 0; c < ty.ncat; c++) {
        char name[64];
        snprintf(name, sizeof(name), "mcqa_gen_acc_%s", ty.cat[c]);
        stage_metric(ctx, name, (double)ty.cat_correct[c] / ty.cat_n[c]);
    }
    mcqa_gen_tally_release(&ty);
out:
    for (int i = 0; prompts && i < set.n; i++) {
        free(prompts[i]);
        free(texts[i]);
    }
    free(prompts);
    free(lens);
    free(texts);
    mcqa_gen_release(&set);
    mcqa_gen_release(&shots);
    g_close(&g);
    return rc;
}

/* ---- qa ---------------------------------------------------------------------------------- */

int stage_qa_run(struct stage_ctx *ctx)
{
    struct gctx g;
    struct qa_set set = { NULL, 0 };
    int64_t max_prompt;
    char msg[1024];
    int32_t **prompts = NULL;
    int *lens = NULL, rc, truncated = 0;
    char **texts = NULL;
    double em = 0, f1 = 0, f1c = 0, t0 = now_mono();

    if ((rc = g_open(&g, ctx, QA_DEFAULT_TEMPLATE)))
        goto out;
    int window = g.m->cfg.max_position_embeddings - (int)g.max_new;
    if ((rc = spec_int(&g, "max_prompt_tokens", window, 1, INT32_MAX, &max_prompt)))
        goto out;
    if (window < 1) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "qa stage: max_new_tokens %lld leaves no room in the model's window (%d)",
                        (long long)g.max_new, g.m->cfg.max_position_embeddings);
        goto out;
    }
    if (max_prompt > window)
        max_prompt = window; /* the window always bounds the prompt */
    if (qa_load(g.items, (int)g.limit, &set, msg, sizeof(msg)) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "qa stage: %s", msg);
        goto out;
    }
    prompts = xcalloc((size_t)set.n, sizeof(*prompts));
    lens = xcalloc((size_t)set.n, sizeof(*lens));
    texts = xcalloc((size_t)set.n, sizeof(*texts));
    for (int i = 0; i < set.n; i++) {
        int cut;
        const struct qa_item *it = &set.items[i];
        if (qa_fit(g.t, g.tmpl, it->context, it->question, (int)max_prompt,
                   g.chat ? wrap_chat : NULL, &g, &prompts[i], &lens[i], &cut, msg,
                   sizeof(msg)) != 0) {
            rc = stage_fail(ctx, STAGE_ERR_ERROR, "qa stage: %s:%d: %s", g.items, it->line, msg);
            goto out;
        }
        truncated += cut;
    }
    stage_log(ctx,
              "qa: %d items from '%s', prompts up to %lld tokens (%d contexts cut), chat %s, "
              "max_new_tokens %lld, batch %lld, %d threads",
              set.n, g.items, (long long)max_prompt, truncated, g.chat ? "on" : "off",
              (long long)g.max_new, (long long)g.batch, ctx->nthreads);
    if ((rc = g_generate(&g, prompts, lens, set.n, texts)))
        goto out;
    for (int i = 0; i < set.n; i++) {
        const struct qa_item *it = &set.items[i];
        char *pred = qa_prediction(texts[i]);
        struct qa_score s;
        qa_score(pred, (const char *const *)it->answers, it->nanswers, &s);
        em += s.em;
        f1 += s.f1;
        f1c += s.f1_char;
        snprintf(msg, sizeof(msg), "f1 %.3f, prediction '%.80s'", s.f1, pred);
        log_gen(ctx, i, it->line, msg, texts[i]);
        free(pred);
    }
    stage_log(ctx, "qa: f1 %.4f, exact_match %.4f, f1_char %.4f over %d items in %.2f s",
              f1 / set.n, em / set.n, f1c / set.n, set.n, now_mono() - t0);
    stage_metric(ctx, "qa_f1", f1 / set.n);
    stage_metric(ctx, "qa_exact_match", em / set.n);
    stage_metric(ctx, "qa_f1_char", f1c / set.n);
    stage_metric(ctx, "qa_n", set.n);
    stage_metric(ctx, "qa_truncated", truncated);
out:
    for (int i = 0; prompts && i < set.n; i++) {
        free(prompts[i]);
        free(texts[i]);
    }
    free(prompts);
    free(lens);
    free(texts);
    qa_release(&set);
    g_close(&g);
    return rc;
}
