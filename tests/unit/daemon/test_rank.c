/*
 * test_rank: the scoring math of daemon/rank.c on hand-made lanes, plus the pure helpers
 * around it (settings parsing, the rank document, zip entry names, the CSV rendering).
 *
 * Expected numbers are worked out by hand in the comments next to them (the formula is in
 * rank.h); tolerances are 1e-12 because every expected value is a short chain of divisions of
 * short decimals. Runs in milliseconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/pkg.h"
#include "daemon/rank.h"
#include "proto/report.h"

#define TOL 1e-12

/* Adds a lane with metrics given as name, value pairs ending with NULL. */
static struct rank_lane *add(struct rank_result *r, const char *id, const char *status, ...)
{
    struct rank_lane *l = rank_result_add_lane(r);
    va_list ap;
    const char *name;
    rank_lane_set(l, id, NULL, status, NULL, -1);
    va_start(ap, status);
    while ((name = va_arg(ap, const char *)))
        proto_metrics_add(&l->metrics, name, va_arg(ap, double));
    va_end(ap);
    return l;
}

static void set_base(struct rank_result *r, const char *status, ...)
{
    va_list ap;
    const char *name;
    rank_lane_set(&r->baseline, "baseline", NULL, status, NULL, -1);
    va_start(ap, status);
    while ((name = va_arg(ap, const char *)))
        proto_metrics_add(&r->baseline.metrics, name, va_arg(ap, double));
    va_end(ap);
}

static const struct rank_lane *find(const struct rank_result *r, const char *id)
{
    for (int i = 0; i < r->nlanes; i++)
        if (!strcmp(r->lanes[i].id, id))
            return &r->lanes[i];
    fail_msg("no lane %s", id);
    return NULL;
}

static void settings(struct rank_settings *s, const char *json)
{
    char *err = NULL;
    int rc = rank_settings_parse(json, s, &err);
    if (rc != 0)
        fail_msg("settings %s: %s", json, err);
}

/* The leaderboard formula of the spec: 0.5 * base_ppl/ppl + 0.5 * (1 - t/t_base). */
static void test_spec_formula(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    const struct rank_lane *l;
    (void)state;
    settings(&s, "{}"); /* defaults: ppl lower is better, time_per_token, 0.5/0.5 */
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.02, NULL);
    add(&r, "a", "done", "ppl", 12.5, "time_per_token", 0.01, NULL);
    add(&r, "b", "done", "ppl", 8.0, "time_per_token", 0.03, NULL);
    assert_int_equal(rank_compute(&r, &s), 2);
    assert_null(r.error);
    /* a: PerfNorm = 10/12.5 = 0.8, SpeedNorm = 1 - 0.01/0.02 = 0.5, score = 0.4 + 0.25 = 0.65. */
    l = find(&r, "a");
    assert_true(l->ranked);
    assert_true(fabs(l->perf_norm - 0.8) < TOL);
    assert_true(fabs(l->speed_norm - 0.5) < TOL);
    assert_true(fabs(l->score - 0.65) < TOL);
    /* b: PerfNorm = 10/8 = 1.25, SpeedNorm = 1 - 1.5 = -0.5, score = 0.625 - 0.25 = 0.375. */
    l = find(&r, "b");
    assert_true(fabs(l->perf_norm - 1.25) < TOL);
    assert_true(fabs(l->speed_norm + 0.5) < TOL);
    assert_true(fabs(l->score - 0.375) < TOL);
    assert_string_equal(r.lanes[0].id, "a");
    assert_int_equal(r.lanes[0].rank, 1);
    assert_int_equal(r.lanes[1].rank, 2);
    /* The baseline scored against itself: PerfNorm 1, SpeedNorm 0, score 0.5. */
    assert_true(r.baseline.ranked);
    assert_true(fabs(r.baseline.score - 0.5) < TOL);
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* Perf weights are normalised to sum 1; higher-is-better metrics use perf/base. */
static void test_weights_and_directions(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    const struct rank_lane *l;
    (void)state;
    settings(&s, "{\"score\": {\"perf\": [{\"metric\": \"ppl\", \"higher_is_better\": false, "
                 "\"weight\": 2}, {\"metric\": \"acc\", \"higher_is_better\": true, \"weight\": "
                 "6}, {\"metric\": \"ignored\", \"weight\": 0}], \"speed_metric\": \"tpt\", "
                 "\"w_perf\": 0.7, \"w_speed\": 0.3}}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 20.0, "acc", 0.4, "tpt", 0.05, NULL);
    add(&r, "x", "done", "ppl", 25.0, "acc", 0.5, "tpt", 0.04, NULL);
    assert_int_equal(rank_compute(&r, &s), 1);
    /* PerfNorm = 0.25 * 20/25 + 0.75 * 0.5/0.4 = 0.2 + 0.9375 = 1.1375 ("ignored" has weight
     * 0 and is neither needed nor used); SpeedNorm = 1 - 0.04/0.05 = 0.2;
     * score = 0.7 * 1.1375 + 0.3 * 0.2 = 0.79625 + 0.06 = 0.85625. */
    l = find(&r, "x");
    assert_true(fabs(l->perf_norm - 1.1375) < TOL);
    assert_true(fabs(l->speed_norm - 0.2) < TOL);
    assert_true(fabs(l->score - 0.85625) < TOL);
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* Score = max(..., 0): a very slow lane gets exactly 0, still ranked (last). */
static void test_clamp_and_order(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    (void)state;
    settings(&s, "{}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    add(&r, "slow", "done", "ppl", 20.0, "time_per_token", 0.05, NULL);
    add(&r, "tie1", "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    add(&r, "broken", "failed", NULL);
    add(&r, "tie2", "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    add(&r, "gone", "cancelled", NULL);
    add(&r, "best", "done", "ppl", 5.0, "time_per_token", 0.005, NULL);
    rank_lane_set_reason(&r.lanes[2], "stage 'q' failed (error): boom");
    assert_int_equal(rank_compute(&r, &s), 4);
    /* slow: 0.5 * 0.5 + 0.5 * (1 - 5) = 0.25 - 2 < 0, so exactly 0. */
    assert_true(find(&r, "slow")->ranked);
    assert_true(find(&r, "slow")->score == 0.0 && !signbit(find(&r, "slow")->score));
    /* best: 0.5 * 2 + 0.5 * 0.5 = 1.25; ties keep lane order; unranked lanes follow in lane
     * order. */
    const char *want[] = { "best", "tie1", "tie2", "slow", "broken", "gone" };
    for (int i = 0; i < 6; i++)
        assert_string_equal(r.lanes[i].id, want[i]);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r.lanes[i].rank, i + 1);
    assert_int_equal(r.lanes[4].rank, 0);
    assert_false(r.lanes[4].ranked);
    assert_string_equal(r.lanes[4].reason, "stage 'q' failed (error): boom");
    assert_string_equal(r.lanes[5].reason, "cancelled");
    assert_true(fabs(r.lanes[0].score - 1.25) < TOL);
    /* Recomputing gives the same result. */
    assert_int_equal(rank_compute(&r, &s), 4);
    assert_string_equal(r.lanes[0].id, "best");
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* A done lane without a needed metric is reported, never ranked as 0. */
static void test_missing_metric(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    const struct rank_lane *l;
    (void)state;
    settings(&s, "{}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    add(&r, "noppl", "done", "time_per_token", 0.001, NULL);
    add(&r, "none", "done", NULL);
    add(&r, "zero", "done", "ppl", 0.0, "time_per_token", 0.01, NULL);
    add(&r, "ok", "done", "ppl", 100.0, "time_per_token", 0.02, NULL);
    assert_int_equal(rank_compute(&r, &s), 1);
    assert_string_equal(r.lanes[0].id, "ok");
    l = find(&r, "noppl");
    assert_false(l->ranked);
    assert_int_equal(l->rank, 0);
    assert_string_equal(l->reason, "missing metric 'ppl'");
    assert_true(l->has_speed); /* SpeedNorm is still shown: 1 - 0.1 = 0.9 */
    assert_true(fabs(l->speed_norm - 0.9) < TOL);
    assert_string_equal(find(&r, "none")->reason, "missing metrics 'ppl', 'time_per_token'");
    assert_string_equal(find(&r, "zero")->reason, "metric 'ppl' is 0: base/perf is undefined");
    /* ok: 0.5 * 0.1 + 0.5 * (1 - 2) = 0.05 - 0.5 < 0: ranked with score 0, not dropped. */
    assert_true(find(&r, "ok")->ranked);
    assert_true(find(&r, "ok")->score == 0.0);
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* Baseline problems invalidate the whole ranking with a clear error. */
static void test_baseline_errors(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    (void)state;
    settings(&s, "{}");

    rank_result_init(&r, "sw");
    set_base(&r, "failed", NULL);
    rank_lane_set_reason(&r.baseline, "stage 'eval.ppl' failed (error): bad text");
    add(&r, "a", "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_non_null(r.error);
    assert_non_null(strstr(r.error, "baseline lane failed: stage 'eval.ppl' failed"));
    assert_false(r.lanes[0].ranked);
    assert_non_null(strstr(r.lanes[0].reason, "not ranked: the baseline lane failed"));
    rank_result_release(&r);

    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, NULL);
    add(&r, "a", "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_string_equal(r.error, "the baseline lacks metric 'time_per_token' (its eval stages did "
                                 "not write it)");
    rank_result_release(&r);

    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.0, NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_non_null(strstr(r.error, "'time_per_token' is 0"));
    rank_result_release(&r);

    rank_result_init(&r, "sw");
    set_base(&r, "running", NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_string_equal(r.error, "the baseline lane has not finished yet (running)");
    rank_result_release(&r);

    rank_result_init(&r, "sw"); /* no baseline at all */
    add(&r, "a", "done", "ppl", 10.0, "time_per_token", 0.01, NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_string_equal(r.error, "the sweep has no baseline lane");
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* Metrics that a weight of 0 switches off are not required; size_bytes is a metric too. */
static void test_zero_weights_and_size(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    struct rank_lane *l;
    (void)state;
    settings(&s, "{\"score\": {\"perf\": [{\"metric\": \"size_bytes\", \"weight\": 1}], "
                 "\"speed_metric\": \"time_per_token\", \"w_perf\": 1, \"w_speed\": 0}}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", NULL);
    r.baseline.size_bytes = 1000;
    l = add(&r, "half", "done", NULL);
    l->size_bytes = 500;
    assert_int_equal(rank_compute(&r, &s), 1);
    /* PerfNorm = 1000/500 = 2 (lower is better), score = 1 * 2 + 0 = 2; no speed needed. */
    assert_true(fabs(r.lanes[0].score - 2.0) < TOL);
    assert_false(r.lanes[0].has_speed);
    rank_result_release(&r);
    rank_settings_release(&s);

    /* All perf weights 0 while w_perf > 0 is an error, not a silent PerfNorm of 0. */
    settings(&s, "{\"score\": {\"perf\": [{\"metric\": \"ppl\", \"weight\": 0}], \"w_perf\": 1, "
                 "\"w_speed\": 0}}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 1.0, NULL);
    assert_int_equal(rank_compute(&r, &s), 0);
    assert_non_null(strstr(r.error, "no metric with a weight above 0"));
    rank_result_release(&r);
    rank_settings_release(&s);
}

static void test_settings_parse(void **state)
{
    struct rank_settings s;
    char *err = NULL;
    (void)state;
    settings(&s, "{\"score\": {\"perf\": [{\"metric\": \"acc\", \"higher_is_better\": true}], "
                 "\"speed_metric\": null, \"w_perf\": 1, \"w_speed\": 0}, \"package\": {\"top\": "
                 "2, \"max_zip_gb\": 1.5, \"max_unzipped_gb\": 0.000001}, \"on_finish\": \"echo "
                 "hi\", \"on_fail\": null}");
    assert_int_equal(s.nperf, 1);
    assert_string_equal(s.perf[0].metric, "acc");
    assert_true(s.perf[0].higher_is_better);
    assert_true(s.perf[0].weight == 1.0);
    assert_string_equal(s.speed_metric, "time_per_token"); /* null keeps the default */
    assert_true(s.w_perf == 1.0 && s.w_speed == 0.0);
    assert_int_equal(s.top, 2);
    assert_true(s.max_zip_gb == 1.5 && s.max_unzipped_gb == 0.000001);
    assert_string_equal(s.on_finish, "echo hi");
    assert_null(s.on_fail);
    rank_settings_release(&s);

    assert_int_equal(rank_settings_parse("not json", &s, &err), -1);
    assert_string_equal(err, "settings: not a JSON object");
    free(err);
    assert_int_equal(rank_settings_parse("{\"score\": {\"w_perf\": \"x\"}}", &s, &err), -1);
    assert_string_equal(err, "settings: 'w_perf' is not a number");
    free(err);
    assert_int_equal(rank_settings_parse("{\"score\": {\"perf\": [{\"weight\": 1}]}}", &s, &err),
                     -1);
    assert_string_equal(err, "settings: score.perf[0] has no metric");
    free(err);
    assert_int_equal(rank_settings_parse("{\"package\": {\"top\": -1}}", &s, &err), -1);
    free(err);
}

/* The rank document: section 5 keys, nulls for unranked lanes, the error when invalid. */
static void test_rank_json(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    struct rank_lane *l;
    char *json;
    cJSON *doc;
    const cJSON *lanes, *x;
    (void)state;
    settings(&s, "{}");
    rank_result_init(&r, "sw-1");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.02, NULL);
    r.baseline.size_bytes = 123;
    l = add(&r, "a", "done", "ppl", 12.5, "time_per_token", 0.01, NULL);
    l->size_bytes = 42;
    add(&r, "f", "failed", NULL);
    rank_lane_set_reason(&r.lanes[1], "stage 'x' failed (error): no");
    rank_compute(&r, &s);
    json = rank_result_json(&r, "{\"score\": {}}");
    doc = cJSON_Parse(json);
    assert_non_null(doc);
    assert_string_equal(cJSON_GetObjectItem(doc, "sweep")->valuestring, "sw-1");
    assert_null(cJSON_GetObjectItem(doc, "error"));
    x = cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "baseline"), "metrics");
    assert_true(cJSON_GetObjectItem(x, "ppl")->valuedouble == 10.0);
    assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "baseline"), "lane"));
    lanes = cJSON_GetObjectItem(doc, "lanes");
    assert_int_equal(cJSON_GetArraySize(lanes), 2);
    x = cJSON_GetArrayItem(lanes, 0);
    assert_string_equal(cJSON_GetObjectItem(x, "lane")->valuestring, "a");
    assert_int_equal(cJSON_GetObjectItem(x, "rank")->valueint, 1);
    assert_string_equal(cJSON_GetObjectItem(x, "status")->valuestring, "done");
    assert_true(fabs(cJSON_GetObjectItem(x, "score")->valuedouble - 0.65) < TOL);
    assert_true(cJSON_GetObjectItem(x, "size_bytes")->valuedouble == 42);
    assert_null(cJSON_GetObjectItem(x, "reason"));
    x = cJSON_GetArrayItem(lanes, 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(x, "rank")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(x, "score")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(x, "size_bytes")));
    assert_string_equal(cJSON_GetObjectItem(x, "reason")->valuestring,
                        "stage 'x' failed (error): no");
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(doc, "settings")));
    cJSON_Delete(doc);
    free(json);
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* The package outcome merged into the document shows up in the CSV, and numbers round-trip. */
/* The paired speed ratio replaces t / t_base; its IQR makes the score spread and the ties. */
static void test_paired_speed_and_ties(void **state)
{
    struct rank_settings s;
    struct rank_result r;
    const struct rank_lane *l;
    char *json, *csv, *md;
    cJSON *doc;
    (void)state;
    settings(&s, "{\"score\":{\"w_perf\":0.5,\"w_speed\":0.5}}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "ppl", 10.0, "time_per_token", 0.020, "speed_ratio", 1.01,
             "speed_ratio_iqr", 0.02, NULL);
    /* copy: same model, timed slower than the baseline's own figure but paired ratio 1.0. */
    add(&r, "copy", "done", "ppl", 10.0, "time_per_token", 0.031, "speed_ratio", 1.0,
        "speed_ratio_iqr", 0.04, NULL);
    /* w4a: score 0.5 + 0.5 * 0.2 = 0.6; w4b: 0.5 + 0.5 * 0.17 = 0.585, within 0.5 * 0.04. */
    add(&r, "w4a", "done", "ppl", 10.0, "time_per_token", 0.016, "speed_ratio", 0.8,
        "speed_ratio_iqr", 0.01, NULL);
    add(&r, "w4b", "done", "ppl", 10.0, "time_per_token", 0.017, "speed_ratio", 0.83,
        "speed_ratio_iqr", 0.04, NULL);
    /* unpaired: no ratio, so 1 - t / t_base = 0.5, score 0.75, and no spread. */
    add(&r, "unpaired", "done", "ppl", 10.0, "time_per_token", 0.010, NULL);
    assert_int_equal(rank_compute(&r, &s), 4);
    l = find(&r, "copy");
    assert_true(l->paired && fabs(l->speed_norm) < TOL);
    assert_true(fabs(l->score_spread - 0.02) < TOL);
    assert_true(fabs(find(&r, "w4a")->speed_norm - 0.2) < TOL);
    assert_true(fabs(find(&r, "w4b")->score - 0.585) < TOL);
    l = find(&r, "unpaired");
    assert_false(l->paired);
    assert_true(fabs(l->speed_norm - 0.5) < TOL && l->score_spread == 0);
    /* The baseline keeps SpeedNorm 0 (its ratio against itself is noise). */
    assert_true(fabs(r.baseline.speed_norm) < TOL);
    /* Order: unpaired 0.75, w4a 0.6, w4b 0.585, copy 0.5. w4a and w4b differ by 0.015 <
     * max(0.005, 0.02): a tie run from rank 2. w4b and copy differ by 0.085: no tie. unpaired
     * has no spread and w4a's 0.005 is less than 0.15: no tie. */
    assert_string_equal(r.lanes[0].id, "unpaired");
    assert_int_equal(r.lanes[0].tie, 0);
    assert_int_equal(find(&r, "w4a")->tie, 2);
    assert_int_equal(find(&r, "w4b")->tie, 2);
    assert_int_equal(find(&r, "copy")->tie, 0);
    json = rank_result_json(&r, NULL);
    doc = cJSON_Parse(json);
    assert_non_null(doc);
    csv = report_table(doc, "csv");
    assert_non_null(strstr(csv, "2,w4a,done,0.6,~2,"));
    assert_non_null(strstr(csv, "3,w4b,done,0.58")); /* digits: shortest round trip */
    assert_non_null(strstr(strstr(csv, "3,w4b,"), ",~2,"));
    assert_non_null(strstr(csv, "4,copy,done,0.5,,"));
    md = report_markdown(doc);
    assert_non_null(strstr(md, "| 3 | w4b | done | 0.585 | ~2 |"));
    assert_non_null(strstr(md, "A tie mark ~N"));
    free(md);
    md = report_html(doc);
    assert_non_null(strstr(md, "<td>~2</td>"));
    free(md);
    md = report_table(doc, "table");
    assert_non_null(strstr(md, "~2"));
    free(md);
    free(csv);
    cJSON_Delete(doc);
    free(json);
    rank_result_release(&r);
    rank_settings_release(&s);

    /* A named speed eval: s.time_per_token goes with s.speed_ratio. */
    settings(&s, "{\"score\":{\"speed_metric\":\"s.time_per_token\",\"w_perf\":0,"
                 "\"w_speed\":1,\"perf\":[]}}");
    rank_result_init(&r, "sw");
    set_base(&r, "done", "s.time_per_token", 0.02, NULL);
    add(&r, "a", "done", "s.time_per_token", 0.03, "s.speed_ratio", 0.9, NULL);
    add(&r, "b", "done", "s.time_per_token", 0.01, "speed_ratio", 0.1, NULL);
    assert_int_equal(rank_compute(&r, &s), 2);
    assert_true(fabs(find(&r, "a")->speed_norm - 0.1) < TOL);
    assert_true(fabs(find(&r, "b")->speed_norm - 0.5) < TOL); /* another eval's ratio: unused */
    rank_result_release(&r);
    rank_settings_release(&s);
}

static void test_merge_and_csv(void **state)
{
    const char *rank = "{\"sweep\": \"s\", \"baseline\": {\"metrics\": {\"ppl\": 10}}, "
                       "\"lanes\": [{\"lane\": \"a\", \"rank\": 1, \"status\": \"done\", "
                       "\"score\": 0.1234567890123456, \"perf_norm\": 1, \"speed_norm\": 0, "
                       "\"metrics\": {\"ppl\": 9}, \"size_bytes\": 5}, {\"lane\": \"b,c\", "
                       "\"rank\": 2, \"status\": \"done\", \"score\": 0.1, \"perf_norm\": 1, "
                       "\"speed_norm\": 0, \"metrics\": {}, \"size_bytes\": 5}]}";
    const char *pkg = "{\"dir\": \"/x\", \"top\": 1, \"packaged\": 1, \"lanes\": [{\"lane\": "
                      "\"b,c\", \"ok\": false, \"reason\": \"bad \\\"header\\\"\"}, {\"lane\": "
                      "\"a\", \"ok\": true, \"top\": 1}]}";
    char *merged = report_merge_package(rank, pkg), *csv;
    cJSON *doc = cJSON_Parse(merged);
    (void)state;
    assert_non_null(doc);
    csv = report_table(doc, "csv");
    assert_string_equal(csv, "rank,lane,status,score,tie,perf_norm,speed_norm,size_bytes,ppl,"
                             "package,package_reason,reason\n"
                             "1,a,done,0.12345678901234559,,1,0,5,9,top1,,\n" /* round-trips */
                             "2,\"b,c\",done,0.1,,1,0,5,,skipped,\"bad \"\"header\"\"\",\n");
    free(csv);
    cJSON_Delete(doc);
    free(merged);
}

static void test_entry_names(void **state)
{
    (void)state;
    assert_true(pkg_entry_name_ok("model/config.json"));
    assert_true(pkg_entry_name_ok("model/sub/dir/x.safetensors"));
    assert_true(pkg_entry_name_ok("model/.hidden"));
    assert_false(pkg_entry_name_ok(""));
    assert_false(pkg_entry_name_ok("/etc/passwd"));
    assert_false(pkg_entry_name_ok("model/../x"));
    assert_false(pkg_entry_name_ok(".."));
    assert_false(pkg_entry_name_ok("model/./x"));
    assert_false(pkg_entry_name_ok("model//x"));
    assert_false(pkg_entry_name_ok("model/x/"));
    assert_false(pkg_entry_name_ok("model\\x"));
    assert_false(pkg_entry_name_ok("model/a\nb"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_formula),          cmocka_unit_test(test_weights_and_directions),
        cmocka_unit_test(test_clamp_and_order),       cmocka_unit_test(test_missing_metric),
        cmocka_unit_test(test_baseline_errors),       cmocka_unit_test(test_zero_weights_and_size),
        cmocka_unit_test(test_settings_parse),        cmocka_unit_test(test_rank_json),
        cmocka_unit_test(test_paired_speed_and_ties), cmocka_unit_test(test_merge_and_csv),
        cmocka_unit_test(test_entry_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
