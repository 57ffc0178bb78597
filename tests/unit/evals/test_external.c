/*
 * test_external: the vllm_speed and lm_eval evals (worker/evals/external.c and
 * worker/stages/stage_external.c) on recorded outputs in the tools' real formats
 * (tests/data/external/, written by make_recorded.py from the tools' own code paths).
 *
 * Proves: the vLLM latency JSON gives time_per_token = median latency / output_len and every
 * latency figure; the lm-eval results file gives TASK.METRIC for every numeric entry of every
 * task and group (filters named, "N/A" skipped, groups counted once); bad files fail with clear
 * messages. Through struct stage_ctx, with fake commands that behave like the tools (they write
 * the recorded files where the real tools write theirs): the command lines the tools get, the
 * metrics, a failing tool's exit status, and a tool that is not installed failing at once with
 * STAGE_ERR_ERROR and a message that names it.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "worker/evals/external.h"
#include "worker/stages/stage.h"

#define DATA "tests/data/external"

static char *tmp_dir;

static char *slurp(const char *path)
{
    char *t = NULL;
    if (file_read_all(path, &t, NULL) < 0)
        fail_msg("cannot read %s", path);
    return t;
}

static double get(const struct ext_metrics *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name))
            return m->values[i];
    fail_msg("no metric %s", name);
    return NAN;
}

static int has(const struct ext_metrics *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name))
            return 1;
    return 0;
}

static void test_vllm_parse(void **state)
{
    struct ext_metrics m = { 0 };
    char err[256], *t = slurp(DATA "/vllm_latency.json");
    (void)state;
    assert_int_equal(ext_vllm_latency_parse(t, 128, &m, err, sizeof(err)), 0);
    /* Sorted latencies 0.5587193 0.5601254 0.5612408 0.5633871 0.5649022: median 0.5612408. */
    assert_string_equal(m.names[0], "time_per_token");
    assert_true(fabs(get(&m, "time_per_token") - 0.5612408 / 128) < 1e-15);
    assert_true(get(&m, "latency_avg") == 0.5616749600000001);
    assert_true(get(&m, "latency_std") == 0.0022213535752779244);
    assert_true(get(&m, "latency_p50") == 0.5612408);
    assert_true(get(&m, "latency_p90") == 0.56429616);
    assert_true(get(&m, "latency_p99") == 0.5648415960000001);
    assert_true(has(&m, "latency_p10") && has(&m, "latency_p25") && has(&m, "latency_p75"));
    assert_true(get(&m, "latency_min") == 0.5587193 && get(&m, "latency_max") == 0.5649022);
    assert_true(get(&m, "vllm_iters") == 5);
    assert_int_equal(m.n, 12);
    ext_metrics_release(&m);
    free(t);
    /* Older vLLM: no std_latency. Bad files. */
    assert_int_equal(ext_vllm_latency_parse("{\"avg_latency\": 2, \"latencies\": [1, 3], "
                                            "\"percentiles\": {\"50\": 2}}",
                                            4, &m, err, sizeof(err)),
                     0);
    assert_true(get(&m, "time_per_token") == 0.5 && !has(&m, "latency_std"));
    ext_metrics_release(&m);
    assert_int_equal(ext_vllm_latency_parse("[1]", 4, &m, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "the latency JSON is not a JSON object");
    assert_int_equal(
        ext_vllm_latency_parse("{\"avg_latency\": 1, \"latencies\": []}", 4, &m, err, sizeof(err)),
        -EINVAL);
    assert_string_equal(err, "the latency JSON has no 'latencies' list");
    assert_int_equal(ext_vllm_latency_parse("{\"avg_latency\": 1, \"latencies\": [1, -2]}", 4, &m,
                                            err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "latency 2 is not a positive number");
    assert_int_equal(m.n, 0);
}

static void test_lm_eval_parse(void **state)
{
    struct ext_metrics m = { 0 };
    char err[256], *t = slurp(DATA "/lm_eval_results.json");
    int skipped = -1;
    (void)state;
    assert_int_equal(ext_lm_eval_parse(t, &m, &skipped, err, sizeof(err)), 0);
    assert_int_equal(skipped, 0);
    assert_true(get(&m, "arc_easy.acc") == 0.7487373737373737);
    assert_true(get(&m, "arc_easy.acc_stderr") == 0.008906926758232566);
    assert_true(get(&m, "arc_easy.acc_norm") == 0.7154882154882155);
    assert_true(has(&m, "arc_easy.acc_norm_stderr"));
    assert_true(get(&m, "gsm8k.exact_match_strict_match") == 0.4025);
    assert_true(has(&m, "gsm8k.exact_match_stderr_strict_match"));
    assert_true(get(&m, "gsm8k.exact_match_flexible_extract") == 0.415);
    assert_false(has(&m, "gsm8k.exact_match_stderr_flexible_extract")); /* "N/A" */
    assert_true(get(&m, "kmmlu.acc") == 0.3821 && has(&m, "kmmlu.acc_stderr"));
    assert_true(get(&m, "kmmlu_accounting.acc") == 0.34);
    assert_false(has(&m, "arc_easy.alias") || has(&m, "kmmlu.alias"));
    assert_int_equal(m.n, 11); /* kmmlu of "groups" is the same as in "results": once */
    ext_metrics_release(&m);
    free(t);
    assert_int_equal(ext_lm_eval_parse("{\"results\": {}}", &m, NULL, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "the lm_eval results file has no task in 'results'");
    assert_int_equal(ext_lm_eval_parse("not json", &m, NULL, err, sizeof(err)), -EINVAL);
    assert_int_equal(
        ext_lm_eval_parse("{\"results\": {\"t\": {\"alias\": \"t\"}}}", &m, NULL, err, sizeof(err)),
        -EINVAL);
    assert_string_equal(err, "the lm_eval results file has no numeric metric");
    /* A name over 63 bytes is skipped and counted. */
    assert_int_equal(
        ext_lm_eval_parse("{\"results\": {\"t\": {\"acc,none\": 1, \"a_very_long_metric_"
                          "name_that_goes_past_the_limit_of_the_protocol,none\": 2}}}",
                          &m, &skipped, err, sizeof(err)),
        0);
    assert_int_equal(m.n, 1);
    assert_int_equal(skipped, 1);
    ext_metrics_release(&m);
}

static void test_split_which(void **state)
{
    char **v, *w;
    (void)state;
    assert_int_equal(ext_split("  vllm  bench\tlatency ", &v), 3);
    assert_string_equal(v[0], "vllm");
    assert_string_equal(v[2], "latency");
    assert_null(v[3]);
    ext_argv_free(v);
    assert_int_equal(ext_split("", &v), 0);
    assert_null(v[0]);
    ext_argv_free(v);
    w = ext_which("sh");
    assert_non_null(w);
    assert_true(w[0] == '/' || w[0] == '.');
    free(w);
    assert_null(ext_which("exaq-no-such-tool-here"));
    assert_null(ext_which("/nonexistent/bin/vllm"));
    assert_null(ext_which("/tmp")); /* a dir is not a command */
}

/* A stage run as the worker runs it; ops NULL keeps the metrics in ctx. */
static int run(struct stage_ctx *ctx, stage_fn fn, const char *kind, const char *spec)
{
    char *sd = path_join(tmp_dir, kind);
    int rc;
    rm_rf(sd);
    assert_int_equal(mkdir_p(sd, 0755), 0);
    stage_ctx_init(ctx);
    ctx->kind = kind;
    ctx->spec_json = spec;
    ctx->input_dir = "/models/lane-model";
    ctx->stage_dir = sd;
    rc = fn(ctx);
    printf("# %s %s: rc %d %s\n", kind, spec, rc, ctx->errmsg);
    ctx->stage_dir = NULL;
    free(sd);
    return rc;
}

static char *args_of(const char *path)
{
    char *t = slurp(path);
    for (char *p = t; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return t;
}

static void test_vllm_stage(void **state)
{
    struct stage_ctx ctx;
    char *spec, *argf = path_join(tmp_dir, "args"), *a, *cwd = getcwd(NULL, 0);
    double v;
    (void)state;
    setenv("FAKE_ARGS", argf, 1);
    spec = xasprintf("{\"command\":\"%s/" DATA "/fake_vllm.sh bench latency\",\"input_len\":64,"
                     "\"output_len\":128,\"batch_size\":2,\"num_iters\":5,\"num_iters_warmup\":1,"
                     "\"args\":[\"--dtype\",\"bfloat16\"],\"env\":{\"VLLM_X\":\"1\"}}",
                     cwd);
    assert_int_equal(run(&ctx, stage_vllm_speed_run, "vllm_speed", spec), 0);
    assert_int_equal(stage_metric_get(&ctx, "time_per_token", &v), 0);
    assert_true(fabs(v - 0.5612408 / 128) < 1e-15);
    assert_int_equal(stage_metric_get(&ctx, "vllm_iters", &v), 0);
    assert_true(v == 5);
    stage_ctx_release(&ctx);
    a = args_of(argf);
    assert_non_null(strstr(a, "bench latency --model /models/lane-model --input-len 64 "
                              "--output-len 128 --batch-size 2 --num-iters 5 "
                              "--num-iters-warmup 1 --output-json "));
    assert_non_null(strstr(a, "/vllm_latency.json --dtype bfloat16 "));
    free(a);
    /* The tool fails: its status, and the stage is an error (its output is in the log). */
    setenv("FAKE_EXIT", "3", 1);
    assert_int_equal(run(&ctx, stage_vllm_speed_run, "vllm_speed", spec), STAGE_ERR_ERROR);
    assert_non_null(strstr(ctx.errmsg, "exited with status 3"));
    stage_ctx_release(&ctx);
    unsetenv("FAKE_EXIT");
    free(spec);
    /* Not installed: fails at once, naming the command. */
    assert_int_equal(run(&ctx, stage_vllm_speed_run, "vllm_speed",
                         "{\"command\":\"exaq-no-such-vllm bench latency\"}"),
                     STAGE_ERR_ERROR);
    assert_string_equal(ctx.errmsg,
                        "vllm_speed: the command 'exaq-no-such-vllm' is not installed (not found "
                        "in PATH); install vLLM or set 'command' in the vllm_speed eval");
    stage_ctx_release(&ctx);
    /* The default command is vllm itself, not installed here. */
    if (!ext_which("vllm")) {
        assert_int_equal(run(&ctx, stage_vllm_speed_run, "vllm_speed", "{}"), STAGE_ERR_ERROR);
        assert_non_null(strstr(ctx.errmsg, "the command 'vllm' is not installed"));
        stage_ctx_release(&ctx);
    }
    unsetenv("FAKE_ARGS");
    free(argf);
    free(cwd);
}

static void test_lm_eval_stage(void **state)
{
    struct stage_ctx ctx;
    char *spec, *argf = path_join(tmp_dir, "args"), *a, *cwd = getcwd(NULL, 0);
    double v;
    (void)state;
    setenv("FAKE_ARGS", argf, 1);
    spec = xasprintf("{\"command\":\"%s/" DATA "/fake_lm_eval.sh\",\"model\":\"vllm\","
                     "\"tasks\":[\"arc_easy\",\"gsm8k\",\"kmmlu\"],\"num_fewshot\":5,"
                     "\"limit\":0.5,\"batch_size\":4,\"model_args\":\"dtype=bfloat16\"}",
                     cwd);
    assert_int_equal(run(&ctx, stage_lm_eval_run, "lm_eval", spec), 0);
    assert_int_equal(stage_metric_get(&ctx, "arc_easy.acc", &v), 0);
    assert_true(v == 0.7487373737373737);
    assert_int_equal(stage_metric_get(&ctx, "gsm8k.exact_match_flexible_extract", &v), 0);
    assert_true(v == 0.415);
    assert_int_equal(ctx.nmetrics, 11); /* the newest results file, not the older one */
    assert_int_not_equal(stage_metric_get(&ctx, "old.acc", &v), 0);
    stage_ctx_release(&ctx);
    a = args_of(argf);
    assert_non_null(strstr(a, "--model vllm --model_args pretrained=/models/lane-model,"
                              "dtype=bfloat16 --tasks arc_easy,gsm8k,kmmlu --batch_size 4 "
                              "--num_fewshot 5 --limit 0.5 --output_path "));
    free(a);
    free(spec);
    assert_int_equal(run(&ctx, stage_lm_eval_run, "lm_eval",
                         "{\"command\":\"/nonexistent/lm_eval\",\"tasks\":[\"a\"]}"),
                     STAGE_ERR_ERROR);
    assert_string_equal(ctx.errmsg, "lm_eval: the command '/nonexistent/lm_eval' is not installed "
                                    "(not found in PATH or not executable); install "
                                    "lm-evaluation-harness or set 'command' in the lm_eval eval");
    stage_ctx_release(&ctx);
    /* A tool that exits 0 without writing results. */
    assert_int_equal(
        run(&ctx, stage_lm_eval_run, "lm_eval", "{\"command\":\"true\",\"tasks\":[\"a\"]}"),
        STAGE_ERR_ERROR);
    assert_non_null(strstr(ctx.errmsg, "lm_eval: no results_*.json under "));
    stage_ctx_release(&ctx);
    unsetenv("FAKE_ARGS");
    free(argf);
    free(cwd);
}

static int setup(void **state)
{
    char tmpl[] = "/tmp/exaq-test-external-XXXXXX";
    (void)state;
    if (!mkdtemp(tmpl))
        return -1;
    tmp_dir = xstrdup(tmpl);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(tmp_dir);
    free(tmp_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vllm_parse),    cmocka_unit_test(test_lm_eval_parse),
        cmocka_unit_test(test_split_which),   cmocka_unit_test(test_vllm_stage),
        cmocka_unit_test(test_lm_eval_stage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
