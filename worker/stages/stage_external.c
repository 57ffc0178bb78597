/*
 * stage_external: the vllm_speed and lm_eval eval stages (docs/evals.md). Each builds the
 * tool's command line from the spec, runs it on the stage's model with its output as the
 * attempt's log lines, and reads the file the tool wrote in the stage dir (kept with the
 * stage's artifacts) into metrics; worker/evals/external.c does the running and the reading.
 * A tool that is not installed fails the stage at once with class error (not retried).
 */
#include "worker/stages/stage.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/jw.h"
#include "common/util.h"
#include "worker/evals/external.h"

struct argv_b {
    char **v;
    int n;
};

static void arg_add(struct argv_b *a, char *s) /* takes s */
{
    a->v = xrealloc(a->v, (size_t)(a->n + 2) * sizeof(*a->v));
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void ext_log(void *arg, const char *line)
{
    stage_log(arg, "%s", line);
}

static int spec_int_or(const cJSON *spec, const char *k, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(spec, k);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : dflt;
}

/* Runs the tool of spec "command" with the arguments in a (a->v[0..] follow the command's own
 * words) and the spec's "args" and "env". 0, or a stage_fail code. */
static int run_tool(struct stage_ctx *ctx, const cJSON *spec, const char *dflt_cmd,
                    struct argv_b *tail)
{
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(spec, "command"), *x;
    const char *c = cJSON_IsString(cmd) && cmd->valuestring[0] ? cmd->valuestring : dflt_cmd;
    struct argv_b a = { NULL, 0 };
    char **words = NULL, *exe = NULL, **env = NULL;
    int nw, nenv = 0, rc;

    nw = ext_split(c, &words);
    if (nw < 1) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: 'command' is empty", ctx->kind);
        goto out;
    }
    exe = ext_which(words[0]);
    if (!exe) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "%s: the command '%s' is not installed (not found in PATH%s); install "
                        "%s or set 'command' in the %s eval",
                        ctx->kind, words[0], strchr(words[0], '/') ? " or not executable" : "",
                        strcmp(ctx->kind, "lm_eval") == 0 ? "lm-evaluation-harness" : "vLLM",
                        ctx->kind);
        goto out;
    }
    arg_add(&a, exe);
    exe = NULL;
    for (int i = 1; i < nw; i++)
        arg_add(&a, xstrdup(words[i]));
    for (int i = 0; i < tail->n; i++) {
        arg_add(&a, tail->v[i]);
        tail->v[i] = NULL;
    }
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(spec, "args")) if (cJSON_IsString(x))
        arg_add(&a, xstrdup(x->valuestring));
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(spec, "env"))
    {
        if (!cJSON_IsString(x))
            continue;
        env = xrealloc(env, (size_t)(nenv + 1) * sizeof(*env));
        env[nenv++] = xasprintf("%s=%s", x->string, x->valuestring);
    }
    {
        struct buf line;
        buf_init(&line);
        for (int i = 0; i < a.n; i++)
            buf_printf(&line, "%s%s", i ? " " : "", a.v[i]);
        stage_log(ctx, "%s: running: %s", ctx->kind, buf_cstr(&line));
        buf_release(&line);
    }
    stage_progress(ctx, 0, 1, "run");
    rc = ext_run(a.v, env, nenv, NULL, ext_log, ctx, ctx->cancel_flag);
    if (rc == -ECANCELED)
        rc = stage_fail(ctx, STAGE_ERR_CANCELLED, "%s stage cancelled", ctx->kind);
    else if (rc < 0)
        rc = stage_fail(ctx, rc == -ENOMEM || rc == -EAGAIN ? STAGE_ERR_OOM : STAGE_ERR_ERROR,
                        "%s: cannot start '%s': %s", ctx->kind, a.v[0], strerror(-rc));
    else if (rc > 255)
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "%s: '%s' was killed by signal %d", ctx->kind, c,
                        rc - 256);
    else if (rc > 0)
        rc = stage_fail(ctx, STAGE_ERR_ERROR,
                        "%s: '%s' exited with status %d (its output is in the attempt log)",
                        ctx->kind, c, rc);
    else
        stage_progress(ctx, 1, 1, "run");
out:
    free(exe);
    ext_argv_free(words);
    ext_argv_free(a.v);
    for (int i = 0; i < nenv; i++)
        free(env[i]);
    free(env);
    return rc;
}

static cJSON *spec_get(struct stage_ctx *ctx, int *rc)
{
    cJSON *s = ctx->spec_json ? cJSON_Parse(ctx->spec_json) : NULL;
    *rc = 0;
    if (!cJSON_IsObject(s)) {
        cJSON_Delete(s);
        *rc =
            stage_fail(ctx, STAGE_ERR_ERROR, "%s stage: the spec is not a JSON object", ctx->kind);
        return NULL;
    }
    return s;
}

static void report(struct stage_ctx *ctx, struct ext_metrics *m)
{
    for (int i = 0; i < m->n; i++)
        stage_metric(ctx, m->names[i], m->values[i]);
}

int stage_vllm_speed_run(struct stage_ctx *ctx)
{
    int rc, out_len;
    cJSON *spec = spec_get(ctx, &rc);
    struct argv_b t = { NULL, 0 };
    char *json = NULL, *text = NULL, err[256];
    struct ext_metrics m = { 0 };
    if (!spec)
        return rc;
    out_len = spec_int_or(spec, "output_len", 128);
    json = path_join(ctx->stage_dir, "vllm_latency.json");
    arg_add(&t, xstrdup("--model"));
    arg_add(&t, xstrdup(ctx->input_dir));
    arg_add(&t, xstrdup("--input-len"));
    arg_add(&t, xasprintf("%d", spec_int_or(spec, "input_len", 128)));
    arg_add(&t, xstrdup("--output-len"));
    arg_add(&t, xasprintf("%d", out_len));
    arg_add(&t, xstrdup("--batch-size"));
    arg_add(&t, xasprintf("%d", spec_int_or(spec, "batch_size", 1)));
    arg_add(&t, xstrdup("--num-iters"));
    arg_add(&t, xasprintf("%d", spec_int_or(spec, "num_iters", 3)));
    arg_add(&t, xstrdup("--num-iters-warmup"));
    arg_add(&t, xasprintf("%d", spec_int_or(spec, "num_iters_warmup", 1)));
    arg_add(&t, xstrdup("--output-json"));
    arg_add(&t, xstrdup(json));
    if ((rc = run_tool(ctx, spec, "vllm bench latency", &t)))
        goto out;
    if (file_read_all(json, &text, NULL) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "vllm_speed: the benchmark wrote no '%s'", json);
        goto out;
    }
    if (ext_vllm_latency_parse(text, out_len, &m, err, sizeof(err)) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "vllm_speed: %s: %s", json, err);
        goto out;
    }
    report(ctx, &m);
    stage_log(ctx, "vllm_speed: time_per_token %.6f s (median batch latency / %d tokens)",
              m.values[0], out_len);
out:
    ext_metrics_release(&m);
    ext_argv_free(t.v);
    free(json);
    free(text);
    cJSON_Delete(spec);
    return rc;
}

int stage_lm_eval_run(struct stage_ctx *ctx)
{
    int rc, skipped = 0;
    cJSON *spec = spec_get(ctx, &rc);
    const cJSON *x;
    struct argv_b t = { NULL, 0 };
    char *dir = NULL, *file = NULL, *text = NULL, err[256];
    struct ext_metrics m = { 0 };
    struct buf tasks, margs;
    if (!spec)
        return rc;
    buf_init(&tasks);
    buf_init(&margs);
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(spec, "tasks")) if (cJSON_IsString(x))
        buf_printf(&tasks, "%s%s", tasks.len ? "," : "", x->valuestring);
    if (!tasks.len) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "lm_eval: the spec lists no tasks");
        goto out;
    }
    x = cJSON_GetObjectItemCaseSensitive(spec, "model_args");
    buf_printf(&margs, "pretrained=%s", ctx->input_dir);
    if (cJSON_IsString(x) && x->valuestring[0])
        buf_printf(&margs, ",%s", x->valuestring);
    dir = path_join(ctx->stage_dir, "lm_eval");
    x = cJSON_GetObjectItemCaseSensitive(spec, "model");
    arg_add(&t, xstrdup("--model"));
    arg_add(&t, xstrdup(cJSON_IsString(x) ? x->valuestring : "hf"));
    arg_add(&t, xstrdup("--model_args"));
    arg_add(&t, xstrdup(buf_cstr(&margs)));
    arg_add(&t, xstrdup("--tasks"));
    arg_add(&t, xstrdup(buf_cstr(&tasks)));
    arg_add(&t, xstrdup("--batch_size"));
    arg_add(&t, xasprintf("%d", spec_int_or(spec, "batch_size", 1)));
    if ((x = cJSON_GetObjectItemCaseSensitive(spec, "num_fewshot")) && cJSON_IsNumber(x)) {
        arg_add(&t, xstrdup("--num_fewshot"));
        arg_add(&t, xasprintf("%d", (int)x->valuedouble));
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(spec, "limit")) && cJSON_IsNumber(x)) {
        char num[40];
        json_num_fmt(x->valuedouble, num, sizeof(num));
        arg_add(&t, xstrdup("--limit"));
        arg_add(&t, xstrdup(num));
    }
    arg_add(&t, xstrdup("--output_path"));
    arg_add(&t, xstrdup(dir));
    if ((rc = run_tool(ctx, spec, "lm_eval", &t)))
        goto out;
    file = ext_lm_eval_results_file(dir);
    if (!file || file_read_all(file, &text, NULL) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "lm_eval: no results_*.json under '%s'", dir);
        goto out;
    }
    if (ext_lm_eval_parse(text, &m, &skipped, err, sizeof(err)) < 0) {
        rc = stage_fail(ctx, STAGE_ERR_ERROR, "lm_eval: %s: %s", file, err);
        goto out;
    }
    report(ctx, &m);
    stage_log(ctx, "lm_eval: %d metrics from %s%s", m.n, file,
              skipped ? " (names over 63 bytes skipped)" : "");
out:
    ext_metrics_release(&m);
    ext_argv_free(t.v);
    buf_release(&tasks);
    buf_release(&margs);
    free(dir);
    free(file);
    free(text);
    cJSON_Delete(spec);
    return rc;
}
