/*
 * test_lanes: the lanes file parser (lanes/), rule by rule.
 *
 * Each test writes YAML into a temp dir that holds a fake base model (a dir with an empty {}
 * config.json) and small data files, parses it, and checks either the parsed structures (exact
 * spec_json text, names, resources, matrix expansion) or the exact line:column and message of
 * every expected error. The examples in lanes/examples/ must parse, and a few hundred randomly
 * mutated files must never crash (run this binary under ASan: make CFG=asan). Run from the
 * repository root. Takes well under a second.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "lanes/jv.h"
#include "lanes/lanes.h"
#include "lanes/spec.h"

static char *tmpdir; /* realpath of the temp dir */
static int nwritten; /* files written so far */

/* The first 4 lines of most test files; lanes start on line 5. */
#define HEAD "version: 1\nsweep: t\nbase_model: base\ncalibration: {text: calib.txt}\n"

static char *tpath(const char *name)
{
    return path_join(tmpdir, name);
}

static void write_text(const char *name, const char *text)
{
    char *p = tpath(name);
    assert_int_equal(file_write_all(p, text, strlen(text)), 0);
    free(p);
}

static int group_setup(void **state)
{
    char tmpl[] = "/tmp/exaq-test-lanes-XXXXXX";
    char *p;
    (void)state;
    if (!mkdtemp(tmpl))
        return -1;
    tmpdir = path_abs(tmpl);
    p = tpath("base");
    mkdir(p, 0755);
    free(p);
    p = tpath("base_noconf");
    mkdir(p, 0755);
    free(p);
    p = tpath("adir");
    mkdir(p, 0755);
    free(p);
    write_text("base/config.json", "{}\n");
    write_text("calib.txt", "calibration text\n");
    write_text("calib2.txt", "other calibration text\n");
    write_text("calib.ids", "\x01\x00\x00\x00");
    write_text("val.txt", "validation text\n");
    write_text("val.ids", "\x02\x00\x00\x00");
    write_text("mcqa.jsonl", "{\"prompt\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 0}\n");
    write_text("in1.bin", "1");
    write_text("in2.bin", "2");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (tmpdir)
        rm_rf(tmpdir);
    free(tmpdir);
    return 0;
}

/* Writes yaml to a fresh file in the temp dir and parses it. */
static int parse_yaml(const char *yaml, struct lanes_file **lf, struct lanes_diag *d)
{
    char name[64];
    char *p;
    int rc;
    snprintf(name, sizeof(name), "t%03d.yaml", nwritten++);
    write_text(name, yaml);
    p = tpath(name);
    rc = lanes_parse_file(p, lf, d);
    free(p);
    return rc;
}

static void dump_diag(const struct lanes_diag *d)
{
    for (size_t i = 0; i < d->n; i++) {
        char *s = lanes_diag_format(d, i);
        print_message("  diag: %s\n", s);
        free(s);
    }
}

/* Parses yaml, expecting success. */
static struct lanes_file *parse_ok_(const char *yaml, const char *file, int line)
{
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    int rc;
    lanes_diag_init(&d);
    rc = parse_yaml(yaml, &lf, &d);
    if (rc != 0 || !lf || d.n) {
        print_message("%s:%d: expected the YAML to parse:\n%s\n", file, line, yaml);
        dump_diag(&d);
        lanes_diag_release(&d);
        lanes_file_free(lf);
        _fail(file, line);
    }
    lanes_diag_release(&d);
    return lf;
}
#define parse_ok(y) parse_ok_((y), __FILE__, __LINE__)

/* Does d hold an error at line:col (col < 0: any column) whose message contains sub? */
static int has_err(const struct lanes_diag *d, int line, int col, const char *sub)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->items[i].line == line && (col < 0 || d->items[i].col == col) &&
            strstr(d->items[i].msg, sub))
            return 1;
    return 0;
}

/*
 * 1-based column where token first occurs on the given 1-based line of yaml, or -1. Tests name
 * the token an error must point at rather than a column number, so each expectation says what
 * it means and still checks the exact position.
 */
static int col_of(const char *yaml, int line, const char *token)
{
    const char *p = yaml, *eol, *hit;
    for (int l = 1; l < line && p; l++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    if (!p)
        return -1;
    eol = strchr(p, '\n');
    hit = strstr(p, token);
    if (!hit || (eol && hit > eol))
        return -1;
    return (int)(hit - p) + 1;
}

/*
 * Parses yaml, expecting failure with (at least) the listed errors: triples of line, token (the
 * error's column is where the token starts on that line; NULL: the error has no column, as for
 * errors about the whole file) and message substring, ended by line -1. Returns the number of
 * diagnostics.
 */
static size_t expect_errs_(const char *file, int line, const char *yaml, ...)
{
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    va_list ap;
    int rc, bad = 0;
    size_t n;
    lanes_diag_init(&d);
    rc = parse_yaml(yaml, &lf, &d);
    if (rc != -1 || lf || d.n == 0) {
        print_message("%s:%d: expected errors, got rc=%d\n", file, line, rc);
        bad = 1;
    }
    va_start(ap, yaml);
    for (;;) {
        int l = va_arg(ap, int), c;
        const char *sub;
        const char *tok;
        if (l < 0)
            break;
        tok = va_arg(ap, const char *);
        sub = va_arg(ap, const char *);
        c = tok ? col_of(yaml, l, tok) : 0;
        if (c < 0) {
            print_message("%s:%d: token '%s' is not on line %d\n", file, line, tok, l);
            bad = 1;
        } else if (!has_err(&d, l, c, sub)) {
            print_message("%s:%d: missing error %d:%d '%s'\n", file, line, l, c, sub);
            bad = 1;
        }
    }
    va_end(ap);
    if (bad) {
        print_message("YAML:\n%s\n", yaml);
        dump_diag(&d);
        lanes_diag_release(&d);
        lanes_file_free(lf);
        _fail(file, line);
    }
    n = d.n;
    lanes_diag_release(&d);
    return n;
}
#define expect_errs(yaml, ...) expect_errs_(__FILE__, __LINE__, (yaml), __VA_ARGS__, -1)

/* The spec_json of lane 0's stage 0 of a one-lane file (new string). */
static char *spec_of(const char *yaml)
{
    struct lanes_file *lf = parse_ok(yaml);
    char *s;
    assert_true(lf->nlanes >= 1);
    s = xstrdup(lf->lanes[0].stages[0].spec_json);
    lanes_file_free(lf);
    return s;
}

/* ===== valid files =============================================================================
 */

static void test_minimal_valid(void **state)
{
    struct lanes_file *lf;
    const struct lanes_stage *st;
    char *base = tpath("base"), *calib = tpath("calib.txt"), *want;
    (void)state;
    lf = parse_ok(HEAD "lanes:\n"
                       "  - id: q\n"
                       "    group: g1\n"
                       "    stages:\n"
                       "      - quantize: {}\n");
    assert_string_equal(lf->sweep, "t");
    assert_string_equal(lf->base_model, base);
    assert_string_equal(lf->dir, tmpdir);
    assert_int_equal(lf->neval, 0);
    assert_int_equal(lf->nperf, 1);
    assert_string_equal(lf->perf[0].metric, "ppl");
    assert_int_equal(lf->perf[0].higher_is_better, 0);
    assert_true(lf->perf[0].weight == 1.0);
    assert_string_equal(lf->speed_metric, "time_per_token");
    assert_true(lf->w_perf == 0.5 && lf->w_speed == 0.5);
    assert_int_equal(lf->package_top, 3);
    assert_true(lf->max_zip_gb == 10 && lf->max_unzipped_gb == 32);
    assert_null(lf->on_finish);
    assert_null(lf->on_fail);
    assert_int_equal(lf->nlanes, 1);
    assert_string_equal(lf->lanes[0].id, "q");
    assert_string_equal(lf->lanes[0].base_id, "q");
    assert_string_equal(lf->lanes[0].group, "g1");
    assert_int_equal(lf->lanes[0].line, 6);
    assert_int_equal(lf->lanes[0].col, 5);
    assert_int_equal(lf->lanes[0].nstages, 1);
    st = &lf->lanes[0].stages[0];
    assert_string_equal(st->kind, "quantize");
    assert_string_equal(st->name, "quantize");
    assert_int_equal(st->line, 9);
    assert_int_equal(st->col, 9);
    assert_int_equal(st->produces_model, 1);
    assert_int_equal(st->produces_metrics, 0);
    want = xasprintf("{\"actorder\":\"none\",\"block_size\":128,\"calibration\":{\"samples\":128,"
                     "\"seq_len\":512,\"text\":\"%s\"},\"dampening\":0.01,\"group_size\":128,"
                     "\"ignore\":[\"lm_head\"],\"method\":\"gptq\",\"scheme\":\"W4A16\","
                     "\"static_groups\":true}",
                     calib);
    assert_string_equal(st->spec_json, want);
    free(want);
    assert_string_equal(st->key_json,
                        "{\"actorder\":\"none\",\"block_size\":128,\"calibration\":{\"samples\":"
                        "128,\"seq_len\":512,\"text\":\"@file:0\"},\"dampening\":0.01,"
                        "\"group_size\":128,\"ignore\":[\"lm_head\"],\"method\":\"gptq\","
                        "\"scheme\":\"W4A16\",\"static_groups\":true}");
    assert_int_equal(st->nfiles, 1);
    assert_string_equal(st->files[0], calib);
    assert_int_equal(st->res.retries, 1);
    assert_true(st->res.timeout_min == 240);
    assert_int_equal(st->res.gpus, 1);
    assert_true(st->res.gpu_mem_gb == 0 && st->res.min_free_gb == 0);
    assert_non_null(lf->canonical_json);
    assert_non_null(strstr(lf->canonical_json, "\"id\":\"q\""));
    assert_non_null(lanes_file_find_lane(lf, "q"));
    assert_null(lanes_file_find_lane(lf, "nope"));
    lanes_file_free(lf);
    free(base);
    free(calib);
}

static void test_every_kind_spec(void **state)
{
    struct lanes_file *lf;
    char *val = tpath("val.txt"), *ids = tpath("val.ids"), *mc = tpath("mcqa.jsonl");
    char *in1 = tpath("in1.bin"), *in2 = tpath("in2.bin"), *calib = tpath("calib.txt");
    char *want;
    const struct lanes_lane *l;
    (void)state;
    lf = parse_ok(HEAD "eval:\n"
                       "  - ppl: {text: val.txt}\n"
                       "  - ppl: {ids: ./val.ids, seq_len: 2, max_windows: 7, name: ids}\n"
                       "  - mcqa: {items: mcqa.jsonl}\n"
                       "  - speed:\n"
                       "  - exec: {run: 'echo {input}'}\n"
                       "  - exec: {run: b, produces: both}\n"
                       "lanes:\n"
                       "  - id: all\n"
                       "    stages:\n"
                       "      - prune: {remove: 2}\n"
                       "      - heal:\n"
                       "      - config: {max_position_embeddings: 4096, rope_scaling: null, "
                       "n: [1, 2.5, x, true], m: {a: 1}}\n"
                       "      - exec: {run: go, inputs: [in2.bin, in1.bin, in2.bin], env: "
                       "{B: 'x', A: \"y\"}}\n"
                       "      - quantize: {method: rtn}\n"
                       "      - quantize: {method: awq}\n"
                       "      - quantize: {method: smoothquant}\n"
                       "      - quantize: {method: sparsegpt, scheme: none}\n"
                       "      - ppl: {text: val.txt}\n");
    assert_int_equal(lf->neval, 6);
    assert_string_equal(lf->eval[0].name, "eval.ppl");
    assert_string_equal(lf->eval[1].name, "eval.ppl-2");
    assert_string_equal(lf->eval[2].name, "eval.mcqa");
    assert_string_equal(lf->eval[3].name, "eval.speed");
    assert_string_equal(lf->eval[4].name, "eval.exec");
    assert_string_equal(lf->eval[5].name, "eval.exec-2");
    want = xasprintf("{\"max_windows\":0,\"seq_len\":512,\"text\":\"%s\"}", val);
    assert_string_equal(lf->eval[0].spec_json, want);
    free(want);
    assert_string_equal(lf->eval[0].key_json,
                        "{\"max_windows\":0,\"seq_len\":512,\"text\":\"@file:0\"}");
    want = xasprintf("{\"ids\":\"%s\",\"max_windows\":7,\"name\":\"ids\",\"seq_len\":2}", ids);
    assert_string_equal(lf->eval[1].spec_json, want);
    free(want);
    want = xasprintf("{\"items\":\"%s\",\"limit\":0}", mc);
    assert_string_equal(lf->eval[2].spec_json, want);
    free(want);
    assert_string_equal(lf->eval[3].spec_json,
                        "{\"gen_tokens\":128,\"pairs\":10,\"prompt_tokens\":128,\"repeats\":3}");
    assert_string_equal(
        lf->eval[4].spec_json,
        "{\"env\":{},\"inputs\":[],\"produces\":\"metrics\",\"run\":\"echo {input}\"}");
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(lf->eval[i].produces_model, 0);
        assert_int_equal(lf->eval[i].produces_metrics, 1);
    }
    assert_int_equal(lf->eval[5].produces_model, 1);
    assert_int_equal(lf->eval[5].produces_metrics, 1);

    l = &lf->lanes[0];
    assert_int_equal(l->nstages, 9);
    assert_string_equal(l->stages[0].name, "prune");
    assert_string_equal(l->stages[4].name, "quantize");
    assert_string_equal(l->stages[5].name, "quantize-2");
    assert_string_equal(l->stages[6].name, "quantize-3");
    assert_string_equal(l->stages[7].name, "quantize-4");
    want = xasprintf("{\"calibration\":{\"samples\":128,\"seq_len\":512,\"text\":\"%s\"},"
                     "\"metric\":\"block_influence\",\"remove\":2}",
                     calib);
    assert_string_equal(l->stages[0].spec_json, want);
    free(want);
    want = xasprintf("{\"calibration\":{\"samples\":128,\"seq_len\":512,\"text\":\"%s\"},"
                     "\"fold\":\"both\",\"method\":\"lsq\",\"ridge\":0.0001}",
                     calib);
    assert_string_equal(l->stages[1].spec_json, want);
    free(want);
    assert_string_equal(
        l->stages[2].spec_json,
        "{\"m\":{\"a\":1},\"max_position_embeddings\":4096,\"n\":[1,2.5,\"x\",true],"
        "\"rope_scaling\":null}");
    assert_int_equal(l->stages[2].nfiles, 0);
    assert_int_equal(l->stages[2].produces_model, 1);
    /* exec inputs keep their order; a repeated file gets one @file index. */
    want = xasprintf("{\"env\":{\"A\":\"y\",\"B\":\"x\"},\"inputs\":[\"%s\",\"%s\",\"%s\"],"
                     "\"produces\":\"model\",\"run\":\"go\"}",
                     in2, in1, in2);
    assert_string_equal(l->stages[3].spec_json, want);
    free(want);
    assert_string_equal(l->stages[3].key_json,
                        "{\"env\":{\"A\":\"y\",\"B\":\"x\"},\"inputs\":[\"@file:0\",\"@file:1\","
                        "\"@file:0\"],\"produces\":\"model\",\"run\":\"go\"}");
    assert_int_equal(l->stages[3].nfiles, 2);
    assert_string_equal(l->stages[3].files[0], in2);
    assert_string_equal(l->stages[3].files[1], in1);
    assert_int_equal(l->stages[3].produces_model, 1);
    assert_int_equal(l->stages[3].produces_metrics, 0);
    /* rtn W4A16 needs no calibration, so the spec has none. */
    assert_string_equal(l->stages[4].spec_json,
                        "{\"group_size\":128,\"ignore\":[\"lm_head\"],\"method\":\"rtn\","
                        "\"scheme\":\"W4A16\"}");
    assert_int_equal(l->stages[4].nfiles, 0);
    want =
        xasprintf("{\"calibration\":{\"samples\":128,\"seq_len\":512,\"text\":\"%s\"},"
                  "\"clip\":true,\"duo_scaling\":true,\"group_size\":128,\"ignore\":[\"lm_head\"],"
                  "\"method\":\"awq\",\"n_grid\":20,\"scheme\":\"W4A16\"}",
                  calib);
    assert_string_equal(l->stages[5].spec_json, want);
    free(want);
    /* smoothquant defaults to its only scheme, W8A8, hence per-channel. */
    want = xasprintf("{\"alpha\":0.5,\"calibration\":{\"samples\":128,\"seq_len\":512,\"text\":"
                     "\"%s\"},\"group_size\":-1,\"ignore\":[\"lm_head\"],\"method\":"
                     "\"smoothquant\",\"scheme\":\"W8A8\"}",
                     calib);
    assert_string_equal(l->stages[6].spec_json, want);
    free(want);
    want = xasprintf("{\"block_size\":128,\"calibration\":{\"samples\":128,\"seq_len\":512,"
                     "\"text\":\"%s\"},\"dampening\":0.01,\"group_size\":-1,\"ignore\":"
                     "[\"lm_head\"],\"method\":\"sparsegpt\",\"pattern\":\"unstructured\","
                     "\"scheme\":\"none\",\"sparsity\":0.5}",
                     calib);
    assert_string_equal(l->stages[7].spec_json, want);
    free(want);
    assert_int_equal(l->stages[8].produces_model, 0);
    assert_int_equal(l->stages[8].produces_metrics, 1);
    lanes_file_free(lf);
    free(val);
    free(ids);
    free(mc);
    free(in1);
    free(in2);
    free(calib);
}

/* Key order, spelled-out defaults, 1e-4 vs 0.0001 and 1 vs 1.0 give identical specs. */
static void test_canonical_specs(void **state)
{
    char *a, *b, *c;
    (void)state;
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: gptq}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {static_groups: true, ignore: [lm_head], "
                     "group_size: 128, block_size: 128, actorder: none, scheme: W4A16, dampening: "
                     "1e-2, method: gptq, calibration: {seq_len: 512, samples: 128}}}]}]\n");
    c = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {}}]}]\n");
    assert_string_equal(a, b);
    assert_string_equal(a, c);
    free(a);
    free(b);
    free(c);
    a = spec_of(HEAD "lanes: [{id: a, stages: [{heal: {ridge: 1e-4}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{heal: {ridge: 0.0001, fold: both}}]}]\n");
    assert_string_equal(a, b);
    free(a);
    free(b);
    a = spec_of(HEAD "lanes: [{id: a, stages: [{heal: {ridge: 1}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{heal: {ridge: 1.0}}]}]\n");
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "\"ridge\":1}"));
    free(a);
    free(b);
    /* A value that differs changes the spec. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {dampening: 0.02}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {dampening: 0.01}}]}]\n");
    assert_string_not_equal(a, b);
    free(a);
    free(b);
    /* Resource keys never enter the spec. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {gpus: 2, retries: 5, timeout_min: 3, "
                     "gpu_mem_gb: 4, min_free_gb: 1}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {}}]}]\n");
    assert_string_equal(a, b);
    free(a);
    free(b);
    /* Null means "not set": the default applies. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {dampening: ~, method: null}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: }]}]\n");
    assert_string_equal(a, b);
    free(a);
    free(b);
    /* Unquoted and quoted enum values are the same. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: sparsegpt, pattern: 2:4}}]}]\n");
    b = spec_of(HEAD
                "lanes: [{id: a, stages: [{quantize: {method: sparsegpt, pattern: '2:4'}}]}]\n");
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "\"pattern\":\"2:4\""));
    free(a);
    free(b);
    /* The AWQ study's keys: l1 salience and nearest rounding are the defaults and stay out of
     * the spec (the keys of stages written before them do not change); l2 and greedy (with its
     * outlier_percent) go in; group_size 256 and W8A16_ASYM groups are accepted. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq, salience: l1, "
                     "rounding: nearest}}]}]\n");
    b = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq}}]}]\n");
    assert_string_equal(a, b);
    assert_null(strstr(a, "salience"));
    assert_null(strstr(a, "rounding"));
    free(a);
    free(b);
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq, salience: l2, "
                     "rounding: greedy, scheme: W4A16_ASYM, group_size: 256}}]}]\n");
    assert_non_null(strstr(a, "\"salience\":\"l2\""));
    assert_non_null(strstr(a, "\"rounding\":\"greedy\""));
    assert_non_null(strstr(a, "\"outlier_percent\":1,"));
    assert_non_null(strstr(a, "\"group_size\":256"));
    free(a);
    /* rtn with greedy rounding needs calibration (the Hessian); plain rtn does not. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, rounding: greedy, "
                     "outlier_percent: 0.5, scheme: W8A16_ASYM, group_size: 64}}]}]\n");
    assert_non_null(strstr(a, "\"calibration\":"));
    assert_non_null(strstr(a, "\"outlier_percent\":0.5"));
    assert_non_null(strstr(a, "\"scheme\":\"W8A16_ASYM\""));
    free(a);
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, scheme: W8A16_ASYM}}]}]\n");
    assert_string_equal(a, "{\"group_size\":-1,\"ignore\":[\"lm_head\"],\"method\":\"rtn\","
                           "\"scheme\":\"W8A16_ASYM\"}");
    free(a);
    /* Layers are sorted. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{prune: {layers: [3, 1, 2]}}]}]\n");
    assert_string_equal(a, "{\"layers\":[1,2,3],\"metric\":\"explicit\"}");
    free(a);
}

/* Two files that differ only in key order and spelled-out defaults: identical canonical_json. */
static void test_canonical_file(void **state)
{
    struct lanes_file *a, *b, *c;
    (void)state;
    a = parse_ok(HEAD "eval: [{ppl: {text: val.txt}}]\n"
                      "lanes:\n"
                      "  - {id: x, stages: [{quantize: {method: gptq}}, {speed: }]}\n"
                      "  - {id: y, group: g, matrix: {heal.ridge: [0.1, 0.2]}, stages: [{heal: "
                      "{}}]}\n");
    b = parse_ok("lanes:\n"
                 "  - {stages: [{quantize: {scheme: W4A16, method: gptq}}, {speed: {repeats: 3}}], "
                 "id: x}\n"
                 "  - {stages: [{heal: {fold: both}}], matrix: {heal.ridge: [0.1, 0.2]}, id: y, "
                 "group: g}\n"
                 "package: {top: 3}\n"
                 "score: {perf: [{metric: ppl}], weights: {perf: 0.5}}\n"
                 "defaults: {retries: 1}\n"
                 "calibration: {samples: 128, text: calib.txt}\n"
                 "eval: [{ppl: {seq_len: 512, text: val.txt}}]\n"
                 "base_model: ./base/\n"
                 "sweep: t\n"
                 "version: 1\n");
    c = parse_ok(HEAD "eval: [{ppl: {text: val.txt}}]\n"
                      "lanes:\n"
                      "  - {id: x, stages: [{quantize: {method: gptq}}, {speed: }]}\n"
                      "  - {id: y, group: g, matrix: {heal.ridge: [0.1, 0.3]}, stages: [{heal: "
                      "{}}]}\n");
    assert_string_equal(a->canonical_json, b->canonical_json);
    assert_string_not_equal(a->canonical_json, c->canonical_json);
    /* It carries the lanes, keys, resources and files. */
    assert_non_null(strstr(a->canonical_json, "\"id\":\"y-ridge=0.2\""));
    assert_non_null(strstr(a->canonical_json, "\"key\":{\"calibration\""));
    assert_non_null(
        strstr(a->canonical_json, "\"res\":{\"executor\":\"local\",\"gpu_mem_gb\":0,\"gpus\":1,"));
    assert_non_null(strstr(a->canonical_json, "\"hooks\":{\"on_fail\":null,\"on_finish\":null}"));
    lanes_file_free(a);
    lanes_file_free(b);
    lanes_file_free(c);
}

static void test_resources(void **state)
{
    struct lanes_file *lf;
    (void)state;
    lf = parse_ok(HEAD "defaults: {retries: 0, timeout_min: 1.5, gpus: 2, gpu_mem_gb: 8, "
                       "min_free_gb: 3}\n"
                       "eval: [{speed: {gpus: 0}}]\n"
                       "lanes:\n"
                       "  - id: r\n"
                       "    stages:\n"
                       "      - quantize: {retries: 4, gpu_mem_gb: 20.5}\n"
                       "      - config: {a: 1, timeout_min: 9}\n");
    assert_int_equal(lf->eval[0].res.gpus, 0);
    assert_int_equal(lf->eval[0].res.retries, 0);
    assert_true(lf->eval[0].res.timeout_min == 1.5);
    assert_int_equal(lf->lanes[0].stages[0].res.retries, 4);
    assert_int_equal(lf->lanes[0].stages[0].res.gpus, 2);
    assert_true(lf->lanes[0].stages[0].res.gpu_mem_gb == 20.5);
    assert_true(lf->lanes[0].stages[0].res.min_free_gb == 3);
    assert_true(lf->lanes[0].stages[1].res.timeout_min == 9);
    assert_string_equal(lf->lanes[0].stages[1].spec_json, "{\"a\":1}");
    lanes_file_free(lf);
}

/* executor: local | slurm (defaults or per stage) and the top-level slurm: mapping. */
static void test_executor_slurm(void **state)
{
    struct lanes_file *lf;
    (void)state;
    lf = parse_ok(HEAD "defaults: {executor: slurm}\n"
                       "slurm: {partition: gpu, account: lab, qos: high, time_min: 30, "
                       "gres: 'gpu:a100:1', cpus_per_task: 4, mem_gb: 16, constraint: a100, "
                       "extra_args: ['--exclusive', '--nice=10']}\n"
                       "lanes:\n"
                       "  - id: r\n"
                       "    stages:\n"
                       "      - quantize: {}\n"
                       "      - config: {a: 1, executor: local}\n");
    assert_int_equal(lf->lanes[0].stages[0].res.executor, LANES_EXEC_SLURM);
    assert_int_equal(lf->lanes[0].stages[1].res.executor, LANES_EXEC_LOCAL);
    assert_true(lf->slurm.present);
    assert_string_equal(lf->slurm.partition, "gpu");
    assert_string_equal(lf->slurm.account, "lab");
    assert_string_equal(lf->slurm.qos, "high");
    assert_string_equal(lf->slurm.gres, "gpu:a100:1");
    assert_string_equal(lf->slurm.constraint, "a100");
    assert_true(lf->slurm.time_min == 30);
    assert_int_equal(lf->slurm.cpus_per_task, 4);
    assert_true(lf->slurm.mem_gb == 16);
    assert_int_equal(lf->slurm.nextra, 2);
    assert_string_equal(lf->slurm.extra_args[1], "--nice=10");
    assert_non_null(strstr(lf->canonical_json, "\"executor\":\"slurm\""));
    lanes_file_free(lf);
    lf = parse_ok(HEAD "lanes: [{id: a, stages: [{speed: }]}]\n");
    assert_int_equal(lf->lanes[0].stages[0].res.executor, LANES_EXEC_LOCAL);
    assert_false(lf->slurm.present);
    lanes_file_free(lf);

    expect_errs(HEAD "defaults: {executor: slrum}\nlanes: [{id: a, stages: [{speed: }]}]\n", 5,
                "slrum", "'slrum' is not an executor (did you mean 'slurm'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: {executor: 3}}]}]\n", 5, "3", "executor");
    expect_errs(HEAD "slurm: {partiton: gpu}\nlanes: [{id: a, stages: [{speed: }]}]\n", 5,
                "partiton", "partition");
    expect_errs(HEAD "slurm: [gpu]\nlanes: [{id: a, stages: [{speed: }]}]\n", 5, "[gpu]", "slurm");
    expect_errs(HEAD "slurm: {cpus_per_task: 0, time_min: -1, partition: '-x'}\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "0", "cpus_per_task", 5, "-1", "time_min", 5, "'-x'", "start with '-'");
    expect_errs(HEAD "slurm: {extra_args: ['-N 2']}\nlanes: [{id: a, stages: [{speed: }]}]\n", 5,
                "'-N 2'", "not a long sbatch option");
}

static void test_score_package_hooks(void **state)
{
    struct lanes_file *lf;
    (void)state;
    lf = parse_ok(HEAD "score:\n"
                       "  perf:\n"
                       "    - {metric: mcqa_acc, higher_is_better: true, weight: 2}\n"
                       "    - {metric: ppl}\n"
                       "  speed: {metric: decode_tok_s}\n"
                       "  weights: {perf: 0.7, speed: 0.3}\n"
                       "package: {top: 1, max_zip_gb: 2.5, max_unzipped_gb: 5}\n"
                       "on_finish: \"echo done\"\n"
                       "on_fail: echo failed\n"
                       "description: |\n  anything\n  at all\n"
                       "lanes: [{id: a, description: x, stages: [{speed: }]}]\n");
    assert_int_equal(lf->nperf, 2);
    assert_string_equal(lf->perf[0].metric, "mcqa_acc");
    assert_int_equal(lf->perf[0].higher_is_better, 1);
    assert_true(lf->perf[0].weight == 2);
    assert_string_equal(lf->perf[1].metric, "ppl");
    assert_int_equal(lf->perf[1].higher_is_better, 0);
    assert_true(lf->perf[1].weight == 1);
    assert_string_equal(lf->speed_metric, "decode_tok_s");
    assert_true(lf->w_perf == 0.7 && lf->w_speed == 0.3);
    assert_int_equal(lf->package_top, 1);
    assert_true(lf->max_zip_gb == 2.5 && lf->max_unzipped_gb == 5);
    assert_string_equal(lf->on_finish, "echo done");
    assert_string_equal(lf->on_fail, "echo failed");
    lanes_file_free(lf);
}

/* Calibration: top-level default, per-stage override key by key, ids instead of text. */
static void test_calibration_inheritance(void **state)
{
    char *a, *calib = tpath("calib.txt"), *calib2 = tpath("calib2.txt"), *ids = tpath("calib.ids");
    char *want;
    (void)state;
    a = spec_of("version: 1\nsweep: t\nbase_model: base\n"
                "calibration: {text: calib.txt, samples: 64, seq_len: 256}\n"
                "lanes: [{id: a, stages: [{heal: {calibration: {samples: 8}}}]}]\n");
    want = xasprintf("{\"calibration\":{\"samples\":8,\"seq_len\":256,\"text\":\"%s\"},\"fold\":"
                     "\"both\",\"method\":\"lsq\",\"ridge\":0.0001}",
                     calib);
    assert_string_equal(a, want);
    free(a);
    free(want);
    /* A stage source replaces the top-level source (text -> ids). */
    a = spec_of("version: 1\nsweep: t\nbase_model: base\n"
                "calibration: {text: calib.txt, samples: 64}\n"
                "lanes: [{id: a, stages: [{heal: {calibration: {ids: calib.ids}}}]}]\n");
    want = xasprintf("{\"calibration\":{\"ids\":\"%s\",\"samples\":64,\"seq_len\":512},\"fold\":"
                     "\"both\",\"method\":\"lsq\",\"ridge\":0.0001}",
                     ids);
    assert_string_equal(a, want);
    free(a);
    free(want);
    /* No top-level block: the stage's own is enough. */
    a = spec_of("version: 1\nsweep: t\nbase_model: base\n"
                "lanes: [{id: a, stages: [{prune: {keep_layers: 2, calibration: {text: "
                "calib2.txt}}}]}]\n");
    want = xasprintf("{\"calibration\":{\"samples\":128,\"seq_len\":512,\"text\":\"%s\"},"
                     "\"keep_layers\":2,\"metric\":\"block_influence\"}",
                     calib2);
    assert_string_equal(a, want);
    free(a);
    free(want);
    /* A calibration block where none is needed is checked but not part of the spec. */
    a = spec_of("version: 1\nsweep: t\nbase_model: base\n"
                "lanes: [{id: a, stages: [{quantize: {method: rtn, calibration: {text: "
                "calib2.txt}}}]}]\n");
    assert_null(strstr(a, "calibration"));
    free(a);
    /* FP8 static scales need calibration even with rtn; FP8_DYNAMIC does not. */
    a = spec_of(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, scheme: FP8}}]}]\n");
    assert_non_null(strstr(a, "\"calibration\""));
    assert_non_null(strstr(a, "\"group_size\":-1"));
    free(a);
    a = spec_of(HEAD
                "lanes: [{id: a, stages: [{quantize: {method: rtn, scheme: FP8_DYNAMIC}}]}]\n");
    assert_null(strstr(a, "\"calibration\""));
    free(a);
    free(calib);
    free(calib2);
    free(ids);
}

/* The canonical printer: shortest round-trip numbers, JSON string escapes, sorted keys. */
static void test_json_printing(void **state)
{
    static const struct {
        double d;
        const char *text;
    } nums[] = {
        { 0.1, "0.1" },
        { 1e-4, "0.0001" },
        { 0.01, "0.01" },
        { 1.5, "1.5" },
        { -2.0, "-2" },
        { -0.0, "0" },
        { 240, "240" },
        { 0.30000000000000004, "0.30000000000000004" },
        { 1e21, "1e+21" },
        { 9007199254740992.0, "9007199254740992" },
        { 123456789.125, "123456789.125" },
    };
    struct lanes_file *lf;
    cJSON *j, *x;
    (void)state;
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        struct buf b;
        buf_init(&b);
        lanes__jv_print_num(&b, nums[i].d);
        assert_string_equal(buf_cstr(&b), nums[i].text);
        assert_true(strtod(b.data, NULL) == nums[i].d);
        buf_release(&b);
    }
    /* Strings survive a round trip through the printer and a JSON parser. */
    lf = parse_ok(HEAD "lanes: [{id: a, stages: [{config: {s: \"q\\\"b\\\\c\\n\\t\\u0001\\u00e9\", "
                       "zz: 1, aa: 2, 'mid key': -3}}]}]\n");
    assert_string_equal(
        lf->lanes[0].stages[0].spec_json,
        "{\"aa\":2,\"mid key\":-3,\"s\":\"q\\\"b\\\\c\\n\\t\\u0001\xc3\xa9\",\"zz\":1}");
    j = cJSON_Parse(lf->lanes[0].stages[0].spec_json);
    assert_non_null(j);
    x = cJSON_GetObjectItemCaseSensitive(j, "s");
    assert_true(cJSON_IsString(x));
    assert_string_equal(x->valuestring, "q\"b\\c\n\t\x01\xc3\xa9");
    cJSON_Delete(j);
    lanes_file_free(lf);
}

/* ===== errors ================================================================================= */

static void test_err_yaml_syntax(void **state)
{
    size_t n;
    (void)state;
    n = expect_errs("version: 1\nsweep: x\n  bad: [1, 2\nlanes: []\n", 3, ": [1",
                    "invalid YAML: mapping values are not allowed");
    assert_int_equal(n, 1);
    expect_errs("version: 1\nlanes: [a, b\n", 3, "", "invalid YAML");
    expect_errs("version: 1\nsweep: \"open\n", 3, "", "invalid YAML");
    expect_errs("version: 1\n\tsweep: x\n", 2, "\tsweep", "invalid YAML");
    expect_errs("version: 1\n---\nversion: 1\n", 2, "---", "single YAML document");
    expect_errs("a: &x [*x]\n", 1, "*x", "alias '*x' refers to no complete anchor");
    expect_errs("a: *nope\n", 1, "*nope", "alias '*nope'");
    expect_errs("a: !!int 5\n", 1, "!!int", "unsupported YAML tag");
    expect_errs("version: 1\nlanes: \xff\n", 2, "\xff", "invalid YAML text");
    expect_errs("", 0, NULL, "empty");
    expect_errs("# only a comment\n", 0, NULL, "empty");
    expect_errs("- a\n- b\n", 1, "- a", "a lanes file is a mapping");
    expect_errs("just a string\n", 1, "just", "a lanes file is a mapping");
}

static void test_err_unknown_keys(void **state)
{
    (void)state;
    expect_errs(HEAD "lanse: []\nlanes: [{id: a, stages: [{speed: }]}]\n", 5, "lanse",
                "unknown key 'lanse' in the top level (did you mean 'lanes'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {dampenin: 0.1}}]}]\n", 5, "dampenin",
                "unknown key 'dampenin' in quantize stage (did you mean 'dampening'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: {zzzz: 1}}]}]\n", 5, "zzzz",
                "unknown key 'zzzz' in speed stage (expected one of: prompt_tokens, gen_tokens, "
                "repeats, pairs, retries");
    /* Nested blocks: calibration (top and in a stage), score parts, package, defaults, lane. */
    expect_errs(
        "version: 1\nsweep: t\nbase_model: base\ncalibration: {text: calib.txt, smples: 3}\n"
        "score: {perf: [{metric: ppl, wieght: 1}], weights: {speeed: 1}, spede: {}}\n"
        "package: {topp: 1}\n"
        "defaults: {gpu: 1}\n"
        "lanes:\n"
        "  - id: a\n"
        "    stage: []\n"
        "    stages: [{heal: {calibration: {txt: calib.txt}}}]\n",
        4, "smples", "unknown key 'smples' in calibration (did you mean 'samples'?)", 5, "wieght",
        "unknown key 'wieght' in score.perf item (did you mean 'weight'?)", 5, "speeed",
        "unknown key 'speeed' in score.weights (did you mean 'speed'?)", 5, "spede",
        "unknown key 'spede' in score (did you mean 'speed'?)", 6, "topp",
        "unknown key 'topp' in package (did you mean 'top'?)", 7, "gpu",
        "unknown key 'gpu' in defaults (did you mean 'gpus'?)", 10, "stage",
        "unknown key 'stage' in lane (did you mean 'stages'?)", 11,
        "txt:", "unknown key 'txt' in calibration (did you mean 'text'?)");
}

static void test_err_wrong_types(void **state)
{
    (void)state;
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {group_size: abc}}]}]\n", 5, "abc",
                "expected an integer for 'group_size', got string 'abc'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {group_size: 128.0}}]}]\n", 5, "128.0",
                "expected an integer for 'group_size', got number '128.0'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {group_size: '128'}}]}]\n", 5, "'128'",
                "expected an integer for 'group_size', got string '128'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {dampening: x}}]}]\n", 5, "x}",
                "expected a number for 'dampening', got string 'x'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {static_groups: 1}}]}]\n", 5, "1}",
                "expected true or false for 'static_groups', got integer '1'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {ignore: lm_head}}]}]\n", 5, "lm_head",
                "expected a list for 'ignore', got string 'lm_head'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {ignore: [1]}}]}]\n", 5, "1]",
                "expected a string for 'ignore[0]', got integer '1' (quote it");
    expect_errs(HEAD "lanes: [{id: 5, group: [x], stages: [{exec: {run: 7}}]}]\n", 5, "5,",
                "expected a string for 'id', got integer '5'", 5, "[x]",
                "expected a string for 'group', got a list", 5, "7}",
                "expected a string for 'run', got integer '7'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: [method]}]}]\n", 5, "[method]",
                "the 'quantize' stage takes a mapping of fields, got a list");
    expect_errs(HEAD "lanes: [{id: a, stages: [quantize]}]\n", 5, "quantize]",
                "a stage is a single-key mapping");
    expect_errs(HEAD "lanes: [{id: a, stages: {quantize: {}}}]\n", 5, "{quantize",
                "expected a list of stages");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: {repeats: 0}}]}]\n", 5, "0}",
                "'repeats' must be >= 1, got 0");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {dampening: 0}}]}]\n", 5, "0}",
                "'dampening' must be in (0, 1], got 0");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: sparsegpt, sparsity: 1}}]}]\n",
                5, "1}", "'sparsity' must be in (0, 1), got 1");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: smoothquant, alpha: 1.5}}]}]\n",
                5, "1.5", "'alpha' must be in [0, 1], got 1.5");
    expect_errs(HEAD "lanes: [{id: a, stages: [{heal: {ridge: -1}}]}]\n", 5, "-1",
                "'ridge' must be >= 0, got -1");
    expect_errs(HEAD "lanes: [{id: a, stages: [{heal: {ridge: .nan}}]}]\n", 5, ".nan",
                "'ridge' must be a finite number");
    expect_errs(HEAD "lanes: [{id: a, stages: [{ppl: {text: val.txt, seq_len: 1}}]}]\n", 5, "1}",
                "'seq_len' must be >= 2, got 1");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: gptqq}}]}]\n", 5, "gptqq",
                "unknown method 'gptqq' in quantize stage (did you mean 'gptq'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {scheme: w4a16}}]}]\n", 5, "w4a16",
                "unknown scheme 'w4a16' in quantize stage (did you mean 'W4A16'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{exec: {run: x, produces: modle}}]}]\n", 5, "modle",
                "unknown produces 'modle' in exec stage (did you mean 'model'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: {prompt_tokens: 99999999999999999999}}]}]\n",
                5, "9999", "'prompt_tokens' must be >= 1");
    expect_errs("version: 1.0\nsweep: t\nbase_model: base\nlanes: [{id: a, stages: [{speed: }]}]\n",
                1, "1.0", "expected the integer 1 for 'version', got number '1.0'");
    expect_errs(HEAD
                "defaults: {timeout_min: 0, retries: x}\nlanes: [{id: a, stages: [{speed: }]}]\n",
                5, "0,", "'timeout_min' must be > 0, got 0", 5, "x}",
                "expected an integer for 'retries', got string 'x'");
    expect_errs(HEAD "score: {perf: []}\nlanes: [{id: a, stages: [{speed: }]}]\n", 5, "[]",
                "'score.perf' must list at least one metric");
    expect_errs(HEAD
                "score: {weights: {perf: 0, speed: 0}}\nlanes: [{id: a, stages: [{speed: }]}]\n",
                5, "{perf: 0", "both 0");
    expect_errs(HEAD "eval: {ppl: {}}\nlanes: [{id: a, stages: [{speed: }]}]\n", 5, "{ppl",
                "expected a list of stages");
    expect_errs(HEAD "lanes: [{id: a, stages: [{config: {rope_theta: .inf}}]}]\n", 5, ".inf",
                "'rope_theta' must be a finite number");
    expect_errs(HEAD "lanes: [{id: a, stages: [{exec: {run: x, env: {1A: x, B: 2}}}]}]\n", 5, "1A",
                "'1A' is not a valid environment variable name", 5, "2}",
                "expected a string for 'env.B', got integer '2'");
    expect_errs(HEAD "lanes: [{id: 'a b', stages: [{speed: }]}]\n", 5, "'a b'",
                "lane id 'a b' must be 1 to 200 characters from [A-Za-z0-9_.=-]");
    expect_errs(HEAD "lanes: [{id: baseline, stages: [{speed: }]}]\n", 5, "baseline",
                "lane id 'baseline' is reserved");
    expect_errs(
        "version: 1\nsweep: 'x/y'\nbase_model: base\nlanes: [{id: a, stages: [{speed: }]}]\n", 2,
        "'x/y'", "sweep name 'x/y' must be");
}

static void test_err_missing_required(void **state)
{
    (void)state;
    expect_errs("sweep: t\nbase_model: base\nlanes: [{id: a, stages: [{speed: }]}]\n", 1, "sweep",
                "missing 'version: 1'");
    expect_errs("version: 1\nbase_model: base\nlanes: [{id: a, stages: [{speed: }]}]\n", 1,
                "version", "missing 'sweep: NAME'");
    expect_errs("version: 1\nsweep: t\nbase_model: base\n", 1, "version", "missing 'lanes:'");
    expect_errs(HEAD "lanes: [{stages: [{speed: }]}]\n", 5, "{stages", "lane needs 'id: NAME'");
    expect_errs(HEAD "lanes: [{id: a}]\n", 5, "{id", "lane 'a' needs 'stages:'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{exec: {produces: model}}]}]\n", 5, "exec",
                "exec stage needs 'run'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{mcqa: {limit: 3}}]}]\n", 5, "mcqa",
                "mcqa needs 'items: PATH'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{ppl: {}}]}]\n", 5, "ppl",
                "ppl needs its data: 'text: PATH'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{ppl: {text: val.txt, ids: val.ids}}]}]\n", 5,
                "ids:", "ppl takes exactly one of 'text' or 'ids', found both");
    expect_errs(HEAD "lanes: [{id: a, stages: [{config: {}}]}]\n", 5, "config",
                "config stage sets no fields");
    expect_errs(HEAD "lanes: [{id: a, stages: [{config: {gpus: 0}}]}]\n", 5, "config",
                "config stage sets no fields");
    expect_errs("version: 1\nsweep: t\nbase_model: base\ncalibration: {samples: 3}\n"
                "lanes: [{id: a, stages: [{speed: }]}]\n",
                4, "{samples", "calibration needs a data file");
    expect_errs("version: 1\nsweep: t\nbase_model: base\ncalibration: {text: calib.txt, ids: "
                "calib.ids}\nlanes: [{id: a, stages: [{speed: }]}]\n",
                4, "ids:", "calibration takes exactly one of 'text' or 'ids', found both");
    /* Calibration needed but given nowhere. */
    expect_errs("version: 1\nsweep: t\nbase_model: base\n"
                "lanes: [{id: a, stages: [{quantize: {method: awq}}, {prune: {remove: 1}}, "
                "{heal: }]}]\n",
                4, "quantize", "quantize method 'awq' needs calibration data", 4, "prune",
                "prune metric 'block_influence' needs calibration data", 4, "heal",
                "heal needs calibration data");
}

static void test_err_base_model(void **state)
{
    (void)state;
    expect_errs("version: 1\nsweep: t\nlanes: [{id: a, stages: [{speed: }]}]\n", 1, "version",
                "missing 'base_model: DIR'");
    expect_errs(
        "version: 1\nsweep: t\nbase_model: nothere\nlanes: [{id: a, stages: [{speed: }]}]\n", 3,
        "nothere", "base_model 'nothere' not found (looked for '");
    expect_errs(
        "version: 1\nsweep: t\nbase_model: calib.txt\nlanes: [{id: a, stages: [{speed: }]}]\n", 3,
        "calib.txt", "is not a directory");
    expect_errs("version: 1\nsweep: t\nbase_model: base_noconf\nlanes: [{id: a, stages: [{speed: "
                "}]}]\n",
                3, "base_noconf", "has no config.json");
    expect_errs("version: 1\nsweep: t\nbase_model: 3\nlanes: [{id: a, stages: [{speed: }]}]\n", 3,
                "3", "expected a string for 'base_model'");
}

static void test_err_data_files(void **state)
{
    (void)state;
    expect_errs(HEAD "lanes: [{id: a, stages: [{ppl: {text: nope.txt}}]}]\n", 5, "nope.txt",
                "data file 'nope.txt' for 'text' not found");
    expect_errs(HEAD "lanes: [{id: a, stages: [{ppl: {ids: adir}}]}]\n", 5, "adir",
                "'ids' must name a regular file");
    expect_errs(HEAD "lanes: [{id: a, stages: [{mcqa: {items: ''}}]}]\n", 5, "''",
                "'items' is an empty path");
    expect_errs(HEAD "lanes: [{id: a, stages: [{exec: {run: x, inputs: [in1.bin, gone.bin]}}]}]\n",
                5, "gone.bin", "data file 'gone.bin' for 'inputs[1]' not found");
    expect_errs("version: 1\nsweep: t\nbase_model: base\ncalibration: {ids: missing.ids}\n"
                "lanes: [{id: a, stages: [{speed: }]}]\n",
                4, "missing.ids", "data file 'missing.ids' for 'calibration.ids' not found");
    expect_errs(HEAD "lanes: [{id: a, stages: [{heal: {calibration: {text: ../nope/x.txt}}}]}]\n",
                5, "../nope", "data file '../nope/x.txt' for 'calibration.text' not found");
}

static void test_err_duplicates(void **state)
{
    (void)state;
    expect_errs(HEAD "sweep: u\nlanes: [{id: a, stages: [{speed: }]}]\n", 5, "sweep",
                "duplicate key 'sweep' (first given at line 2, column 1)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, method: gptq}}]}]\n", 5,
                "method: gptq", "duplicate key 'method' (first given at line 5, column 38)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{config: {x: {y: 1, y: 2}}}]}]\n", 5, "y: 2",
                "duplicate key 'y'");
    expect_errs(HEAD "lanes:\n  - {id: a, stages: [{speed: }]}\n  - {id: b, stages: [{speed: }]}\n"
                     "  - {id: a, stages: [{speed: }]}\n",
                8, "a,", "duplicate lane id 'a' (first defined at line 6, column 10)");
    /* After matrix expansion. */
    expect_errs(HEAD "lanes:\n  - {id: a-ridge=0.1, stages: [{speed: }]}\n"
                     "  - {id: a, matrix: {heal.ridge: [0.1, 0.2]}, stages: [{heal: }]}\n",
                7, "0.1", "duplicate lane id 'a-ridge=0.1' (first defined at line 6, column 10)");
    expect_errs(
        HEAD "lanes:\n  - {id: a, matrix: {heal.ridge: [0.1, 0.2, 0.1]}, stages: [{heal: }]}\n", 6,
        "0.1]", "matrix value '0.1' for 'heal.ridge' is repeated (first at line 6, column 35)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: }]}]\n? [complex]\n: 1\n", 6, "[complex]",
                "mapping keys must be plain names, got a list");
}

/* Named evals, the metrics each eval writes, and the external-engine kinds (docs/evals.md). */
static void test_named_evals(void **state)
{
    struct lanes_file *lf;
    char *val = tpath("val.txt"), *want;
    (void)state;
    lf = parse_ok(HEAD "eval:\n"
                       "  - ppl: {name: wiki, text: val.txt}\n"
                       "  - ppl: {text: val.txt}\n"
                       "  - lm_eval: {tasks: [arc_easy, kmmlu], model: vllm, limit: 0.5}\n"
                       "  - vllm_speed: {name: v, batch_size: 4}\n"
                       "  - exec: {run: x}\n"
                       "lanes: [{id: a, stages: [{speed: }]}]\n");
    assert_int_equal(lf->neval, 5);
    want = xasprintf("{\"max_windows\":0,\"name\":\"wiki\",\"seq_len\":512,\"text\":\"%s\"}", val);
    assert_string_equal(lf->eval[0].spec_json, want);
    free(want);
    assert_string_equal(lf->eval[0].eval_name, "wiki");
    assert_int_equal(lf->eval[0].nwrites, 1);
    assert_string_equal(lf->eval[0].writes[0], "wiki.");
    assert_null(lf->eval[1].eval_name);
    assert_int_equal(lf->eval[1].nwrites, 3);
    assert_string_equal(lf->eval[1].writes[0], "ppl");
    assert_string_equal(lf->eval[2].spec_json,
                        "{\"args\":[],\"batch_size\":1,\"command\":\"lm_eval\",\"env\":{},"
                        "\"limit\":0.5,\"model\":\"vllm\",\"tasks\":[\"arc_easy\",\"kmmlu\"]}");
    assert_int_equal(lf->eval[2].nwrites, 2);
    assert_string_equal(lf->eval[2].writes[1], "kmmlu.");
    assert_string_equal(
        lf->eval[3].spec_json,
        "{\"args\":[],\"batch_size\":4,\"command\":\"vllm bench latency\",\"env\":{},"
        "\"input_len\":128,\"name\":\"v\",\"num_iters\":3,"
        "\"num_iters_warmup\":1,\"output_len\":128}");
    assert_int_equal(lf->eval[4].nwrites, 0); /* an unnamed exec: known only at run time */
    lanes_file_free(lf);
    free(val);

    expect_errs(HEAD "eval: [{ppl: {text: val.txt}}, {ppl: {ids: val.ids}}]\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "ppl: {ids",
                "eval 'eval.ppl-2' would write metric 'ppl', which eval 'eval.ppl' (line 5) also "
                "writes (hint: give one of them 'name: NAME'");
    expect_errs(HEAD "eval: [{speed: {name: s}}, {vllm_speed: {name: s}}]\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "vllm_speed", "would write metric 's.*', which eval 'eval.speed'");
    expect_errs(HEAD "eval: [{speed: {}}, {vllm_speed: {}}]\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "vllm_speed", "would write metric 'time_per_token'");
    expect_errs(HEAD "eval: [{ppl: {name: Big, text: val.txt}}]\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "Big", "eval name 'Big' must be 1 to 24 characters of a-z, 0-9 and '_'");
    expect_errs(HEAD "eval: [{ppl: {name: a.b, text: val.txt}}]\n"
                     "lanes: [{id: a, stages: [{speed: }]}]\n",
                5, "a.b", "eval name 'a.b' must be");
    expect_errs(HEAD "lanes: [{id: a, stages: [{speed: {name: x}}]}]\n", 5, "name",
                "unknown key 'name' in speed stage");
    expect_errs(HEAD "eval: [{lm_eval: {model: hf}}]\nlanes: [{id: a, stages: [{speed: }]}]\n", 5,
                "lm_eval", "lm_eval needs 'tasks: [NAME, ...]'");
    expect_errs(HEAD "eval: [{lm_eval: {tasks: ['a,b']}}]\nlanes: [{id: a, stages: [{speed: }]}]\n",
                5, "['a,b']", "task name 'a,b' must be non-empty, without commas or spaces");
    expect_errs(HEAD "eval: [{vllm_speed: {command: ''}}]\nlanes: [{id: a, stages: [{speed: }]}]\n",
                5, "''", "'command' is an empty command");
}

static void test_err_stage_kinds(void **state)
{
    (void)state;
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantise: {}}]}]\n", 5, "quantise",
                "unknown stage kind 'quantise' (did you mean 'quantize'?)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{zzz: {}}]}]\n", 5, "zzz",
                "unknown stage kind 'zzz' (expected one of: quantize, prune");
    expect_errs(
        HEAD "lanes: [{id: a, stages: [{finetune: {method: full, rank: 4}}, {distill: "
             "{ce_weight: 0.3}}]}]\n",
        5, "rank", "'rank' is a LoRA key (this stage has method 'full')", 5, "ce_weight",
        "'ce_weight' mixes in the cross-entropy of loss 'kl+ce' (this stage has loss 'kl')");
    expect_errs(HEAD "eval: [{quantize: {}}]\nlanes: [{id: a, stages: [{speed: }]}]\n", 5,
                "quantize", "stage kind 'quantize' cannot be used in eval");
    expect_errs(
        HEAD "eval: [{exec: {run: x, produces: model}}]\nlanes: [{id: a, stages: [{speed: }]}]\n",
        5, "model}", "an eval stage must produce metrics");
    expect_errs(
        HEAD "lanes:\n  - id: a\n    stages:\n      - heal:\n        fold: both\n", 9, "fold",
        "a stage has exactly one key, its kind; found 'heal' and 'fold' (indent the fields");
}

static void test_err_quantize_rules(void **state)
{
    (void)state;
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, dampening: 0.1}}]}]\n", 5,
                "dampening",
                "'dampening' does not apply to quantize method 'rtn' (it is a field of gptq "
                "and sparsegpt)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq, actorder: static, alpha: "
                     "0.5, sparsity: 0.5}}]}]\n",
                5, "actorder",
                "'actorder' does not apply to quantize method 'awq' (it is a field of gptq)", 5,
                "alpha",
                "'alpha' does not apply to quantize method 'awq' (it is a field of "
                "smoothquant)",
                5, "sparsity",
                "'sparsity' does not apply to quantize method 'awq' (it is a field of "
                "sparsegpt)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {n_grid: 10}}]}]\n", 5, "n_grid",
                "'n_grid' does not apply to quantize method 'gptq' (it is a field of awq)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {scheme: none}}]}]\n", 5, "none",
                "scheme 'none' is only for method sparsegpt");
    expect_errs(HEAD
                "lanes: [{id: a, stages: [{quantize: {method: smoothquant, scheme: W4A16}}]}]\n",
                5, "W4A16", "quantize method 'smoothquant' needs scheme W8A8, got 'W4A16'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {group_size: 16}}]}]\n", 5, "16",
                "'group_size' must be 32, 64, 128, 256 or -1 (per channel), got 16");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {scheme: W8A16, group_size: 64}}]}]\n", 5,
                "64", "scheme 'W8A16' only allows group_size -1 (per channel), got 64");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {group_size: -2}}]}]\n", 5, "-2",
                "'group_size' must be >= -1, got -2");
    /* The AWQ study's keys. */
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq, salience: l3}}]}]\n", 5,
                "l3", "unknown salience 'l3' in quantize stage");
    expect_errs(HEAD
                "lanes: [{id: a, stages: [{quantize: {method: rtn, rounding: stochastic}}]}]\n",
                5, "stochastic", "unknown rounding 'stochastic' in quantize stage");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {salience: l2}}]}]\n", 5, "salience",
                "'salience' does not apply to quantize method 'gptq' (it is a field of awq)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {rounding: greedy}}]}]\n", 5, "rounding",
                "'rounding' does not apply to quantize method 'gptq' (it is a field of rtn and "
                "awq)");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: awq, outlier_percent: 2}}]}]\n",
                5, "outlier_percent", "'outlier_percent' only applies with 'rounding: greedy'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, rounding: greedy, "
                     "outlier_percent: 100}}]}]\n",
                5, "100", "outlier_percent");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {method: rtn, rounding: greedy, "
                     "scheme: FP8_DYNAMIC}}]}]\n",
                5, "greedy", "'rounding: greedy' needs an integer scheme, not 'FP8_DYNAMIC'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{quantize: {scheme: W8A16, group_size: 256}}]}]\n",
                5, "256", "scheme 'W8A16' only allows group_size -1 (per channel), got 256");
}

static void test_err_prune_rules(void **state)
{
    char *a;
    (void)state;
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {keep_layers: 2, remove: 1}}]}]\n", 5,
                "remove",
                "prune takes exactly one of 'keep_layers', 'remove' or 'layers'; found "
                "'keep_layers' and 'remove'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {metric: explicit}}]}]\n", 5, "prune",
                "prune needs one of 'keep_layers: N'");
    expect_errs(
        HEAD "lanes: [{id: a, stages: [{prune: {layers: [1], metric: block_influence}}]}]\n", 5,
        "block_influence", "prune with 'layers' takes metric 'explicit', got 'block_influence'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {remove: 2, metric: explicit}}]}]\n", 5,
                "explicit", "metric 'explicit' needs 'layers: [i, ...]'");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {layers: [2, 1, 2]}}]}]\n", 5, "[2, 1, 2]",
                "'layers' lists layer 2 twice");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {layers: []}}]}]\n", 5, "[]",
                "'layers' must list at least one layer");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {layers: [-1]}}]}]\n", 5, "-1",
                "'layers[0]' must be >= 0, got -1");
    expect_errs(HEAD "lanes: [{id: a, stages: [{prune: {keep_layers: 0}}]}]\n", 5, "0}",
                "'keep_layers' must be >= 1, got 0");
    /* Explicit layers need no calibration. */
    a = spec_of("version: 1\nsweep: t\nbase_model: base\n"
                "lanes: [{id: a, stages: [{prune: {layers: [0]}}]}]\n");
    assert_string_equal(a, "{\"layers\":[0],\"metric\":\"explicit\"}");
    free(a);
}

static void test_err_lanes_shape(void **state)
{
    (void)state;
    expect_errs(HEAD "lanes: {id: a}\n", 5, "{id",
                "'lanes' must be a list of lanes ('- id: ...'), got a mapping");
    expect_errs(HEAD "lanes: x\n", 5, "x", "'lanes' must be a list of lanes");
    expect_errs(HEAD "lanes: []\n", 5, "[]", "'lanes' is empty");
    expect_errs(HEAD "lanes:\n", 1, "version", "missing 'lanes:'");
    expect_errs(HEAD "lanes: [x]\n", 5, "x]",
                "a lane is a mapping with 'id' and 'stages', got string 'x'");
    expect_errs(HEAD "lanes: [{id: a, stages: []}]\n", 5, "[]", "lane 'a' has no stages");
}

/* ===== matrix ================================================================================= */

static void test_matrix_expansion(void **state)
{
    struct lanes_file *lf;
    (void)state;
    lf = parse_ok(HEAD "lanes:\n"
                       "  - id: pre\n"
                       "    stages: [{speed: }]\n"
                       "  - id: lane02_gptq_damp\n"
                       "    group: damp\n"
                       "    matrix: {quantize.dampening: [0.01, 0.02, 0.05]}\n"
                       "    stages:\n"
                       "      - quantize: {method: gptq, scheme: W4A16}\n"
                       "  - id: m\n"
                       "    matrix:\n"
                       "      quantize.scheme: [W4A16, W8A16]\n"
                       "      quantize.calibration.samples: [16, 32]\n"
                       "      heal.ridge: [1e-3]\n"
                       "    stages:\n"
                       "      - quantize: {method: awq}\n"
                       "      - heal: {}\n"
                       "      - quantize: {method: gptq}\n"
                       "  - id: post\n"
                       "    stages: [{speed: }]\n");
    assert_int_equal(lf->nlanes, 1 + 3 + 4 + 1);
    assert_string_equal(lf->lanes[0].id, "pre");
    assert_string_equal(lf->lanes[1].id, "lane02_gptq_damp-dampening=0.01");
    assert_string_equal(lf->lanes[2].id, "lane02_gptq_damp-dampening=0.02");
    assert_string_equal(lf->lanes[3].id, "lane02_gptq_damp-dampening=0.05");
    assert_string_equal(lf->lanes[3].base_id, "lane02_gptq_damp");
    assert_string_equal(lf->lanes[3].group, "damp");
    assert_non_null(strstr(lf->lanes[1].stages[0].spec_json, "\"dampening\":0.01,"));
    assert_non_null(strstr(lf->lanes[2].stages[0].spec_json, "\"dampening\":0.02,"));
    assert_non_null(strstr(lf->lanes[3].stages[0].spec_json, "\"dampening\":0.05,"));
    /* Cartesian product in the order written, the last key varying fastest. */
    assert_string_equal(lf->lanes[4].id, "m-scheme=W4A16-calibration.samples=16-ridge=1e-3");
    assert_string_equal(lf->lanes[5].id, "m-scheme=W4A16-calibration.samples=32-ridge=1e-3");
    assert_string_equal(lf->lanes[6].id, "m-scheme=W8A16-calibration.samples=16-ridge=1e-3");
    assert_string_equal(lf->lanes[7].id, "m-scheme=W8A16-calibration.samples=32-ridge=1e-3");
    assert_string_equal(lf->lanes[8].id, "post");
    /* Every stage of the kind gets the value; heal's own calibration is untouched. */
    for (size_t i = 4; i < 8; i++) {
        const struct lanes_lane *l = &lf->lanes[i];
        const char *scheme = i < 6 ? "\"scheme\":\"W4A16\"" : "\"scheme\":\"W8A16\"";
        const char *samples = (i % 2) == 0 ? "\"samples\":16," : "\"samples\":32,";
        assert_int_equal(l->nstages, 3);
        assert_non_null(strstr(l->stages[0].spec_json, scheme));
        assert_non_null(strstr(l->stages[2].spec_json, scheme));
        assert_non_null(strstr(l->stages[0].spec_json, samples));
        assert_non_null(strstr(l->stages[2].spec_json, samples));
        assert_non_null(strstr(l->stages[1].spec_json, "\"samples\":128,"));
        assert_non_null(strstr(l->stages[1].spec_json, "\"ridge\":0.001}"));
        /* W8A16 forces per-channel defaults. */
        assert_non_null(
            strstr(l->stages[2].spec_json, i < 6 ? "\"group_size\":128" : "\"group_size\":-1"));
    }
    lanes_file_free(lf);

    /* config and env paths; the expanded id keeps the value as written. */
    lf = parse_ok(HEAD "lanes:\n"
                       "  - id: c\n"
                       "    matrix: {config.max_position_embeddings: [2048, 4096], "
                       "exec.env.MODE: [a, 'b'], exec.gpus: [0]}\n"
                       "    stages: [{config: {x: 1}}, {exec: {run: r}}]\n");
    assert_int_equal(lf->nlanes, 4);
    assert_string_equal(lf->lanes[0].id, "c-max_position_embeddings=2048-env.MODE=a-gpus=0");
    assert_string_equal(lf->lanes[3].id, "c-max_position_embeddings=4096-env.MODE=b-gpus=0");
    assert_string_equal(lf->lanes[3].stages[0].spec_json,
                        "{\"max_position_embeddings\":4096,\"x\":1}");
    assert_string_equal(lf->lanes[3].stages[1].spec_json,
                        "{\"env\":{\"MODE\":\"b\"},\"inputs\":[],\"produces\":\"model\",\"run\":"
                        "\"r\"}");
    assert_int_equal(lf->lanes[3].stages[1].res.gpus, 0);
    assert_int_equal(lf->lanes[3].stages[0].res.gpus, 1);
    lanes_file_free(lf);
}

static void test_matrix_errors(void **state)
{
    (void)state;
    expect_errs(HEAD
                "lanes: [{id: a, matrix: {quantize.dampenin: [0.1]}, stages: [{quantize: }]}]\n",
                5, "quantize.dampenin",
                "matrix path 'quantize.dampenin' names no field: quantize has no field 'dampenin' "
                "(did you mean 'quantize.dampening'?)");
    expect_errs(HEAD "lanes: [{id: a, matrix: {heal.ridge: [0.1]}, stages: [{quantize: }]}]\n", 5,
                "heal.ridge",
                "matrix path 'heal.ridge' names no field: the lane has no 'heal' stage");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantise.method: [rtn]}, stages: [{quantize: }]}]\n",
                5, "quantise.method", "'quantise' is not a stage kind (did you mean 'quantize'?)");
    expect_errs(HEAD "lanes: [{id: a, matrix: {dampening: [0.1]}, stages: [{quantize: }]}]\n", 5,
                "dampening:", "matrix path 'dampening' names no field: write <kind>.<field>");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantize.method.x: [1]}, stages: [{quantize: }]}]\n",
                5, "quantize.method.x", "'method' has no subfields");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantize.calibration.smples: [1]}, stages: "
                     "[{quantize: }]}]\n",
                5, "quantize.calibration.smples",
                "calibration has no field 'smples' (did you mean 'samples'?)");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantize.method: rtn}, stages: [{quantize: }]}]\n",
                5, "rtn}", "matrix values for 'quantize.method' must be a non-empty list");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantize.method: []}, stages: [{quantize: }]}]\n", 5,
                "[]", "must be a non-empty list, got an empty list");
    expect_errs(HEAD "lanes: [{id: a, matrix: {quantize.ignore: [[x]]}, stages: [{quantize: }]}]\n",
                5, "[x]", "matrix values must be scalars");
    expect_errs(HEAD "lanes: [{id: a, matrix: [quantize.method], stages: [{quantize: }]}]\n", 5,
                "[quantize",
                "expected a mapping like {quantize.dampening: [0.01, 0.02]} for 'matrix'");
    expect_errs(HEAD
                "lanes: [{id: a, matrix: {quantize.method: ['a b']}, stages: [{quantize: }]}]\n",
                5, "'a b'", "matrix value 'a b' cannot be part of a lane id");
    /* Substituted values are validated like written ones, and located at the value. */
    expect_errs(
        HEAD "lanes:\n  - id: a\n    matrix: {quantize.dampening: [0.01, 2], quantize.method: "
             "[gptq, rtn]}\n    stages: [{quantize: {calibration: {samples: 4}}}]\n",
        7, "2]", "'dampening' must be in (0, 1], got 2 (in lane 'a-dampening=2-method=gptq')", 7,
        "quantize.dampening",
        "'dampening' does not apply to quantize method 'rtn' (it is a field of gptq "
        "and sparsegpt) (in lane 'a-dampening=0.01-method=rtn')");
    expect_errs(HEAD
                "lanes: [{id: a, matrix: {quantize.group_size: [64, abc]}, stages: [{quantize: "
                "{}}]}]\n",
                5, "abc", "expected an integer for 'group_size', got string 'abc'");
    expect_errs(HEAD
                "lanes: [{id: a, matrix: {speed.repeats: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, "
                "12, 13, 14, 15, 16], speed.gen_tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                "13, 14, 15, 16], speed.prompt_tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                "13, 14, 15, 16, 17]}, stages: [{speed: }]}]\n",
                5, "{speed.repeats", "matrix expands to too many lanes");
}

/* ===== files, buffers, diagnostics =============================================================
 */

static void test_examples_parse(void **state)
{
    glob_t g;
    size_t n = 0;
    (void)state;
    assert_int_equal(glob("lanes/examples/*.yaml", 0, NULL, &g), 0);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        struct lanes_diag d;
        struct lanes_file *lf = NULL;
        int rc;
        lanes_diag_init(&d);
        rc = lanes_parse_file(g.gl_pathv[i], &lf, &d);
        if (rc != 0) {
            print_message("example %s does not parse:\n", g.gl_pathv[i]);
            dump_diag(&d);
        }
        assert_int_equal(rc, 0);
        assert_true(lf->nlanes >= 3);
        lanes_file_free(lf);
        lanes_diag_release(&d);
        n++;
    }
    globfree(&g);
    assert_true(n >= 2);
}

static void test_exec_demo_shape(void **state)
{
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    int shared = 0, matrix = 0;
    (void)state;
    lanes_diag_init(&d);
    assert_int_equal(lanes_parse_file("lanes/examples/exec-demo.yaml", &lf, &d), 0);
    assert_true(lf->neval >= 1);
    for (size_t i = 0; i < lf->nlanes; i++) {
        for (size_t k = 0; k < lf->lanes[i].nstages; k++)
            assert_string_equal(lf->lanes[i].stages[k].kind, "exec");
        if (strcmp(lf->lanes[i].id, lf->lanes[i].base_id) != 0)
            matrix++;
        for (size_t j = 0; j < i; j++)
            if (strcmp(lf->lanes[i].base_id, lf->lanes[j].base_id) != 0 &&
                strcmp(lf->lanes[i].stages[0].key_json, lf->lanes[j].stages[0].key_json) == 0)
                shared++;
    }
    assert_true(shared >= 1);
    assert_true(matrix >= 2);
    lanes_file_free(lf);
    lanes_diag_release(&d);
}

static void test_parse_buf(void **state)
{
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    const char *y = HEAD "lanes: [{id: a, stages: [{speed: }]}]\nTRAILING GARBAGE";
    char *with_nul;
    (void)state;
    lanes_diag_init(&d);
    /* len excludes the garbage: the buffer need not be NUL-terminated there. */
    assert_int_equal(
        lanes_parse_buf(y, strlen(y) - strlen("TRAILING GARBAGE"), "mem.yaml", tmpdir, &lf, &d), 0);
    assert_string_equal(lf->path, "mem.yaml");
    assert_string_equal(lf->dir, tmpdir);
    lanes_file_free(lf);
    /* Relative paths resolve against base_dir: a wrong base_dir finds no base model. */
    assert_int_equal(lanes_parse_buf(y, strlen(y) - 16, NULL, "/nonexistent-dir", &lf, &d), -1);
    assert_null(lf);
    assert_true(d.n >= 1);
    assert_string_equal(d.items[0].file, "<buffer>");
    lanes_diag_release(&d);
    /* An embedded NUL byte is an error, not a truncation. */
    with_nul = xmalloc(32);
    memcpy(with_nul, "version: 1\n\0sweep: x\n", 21);
    assert_int_equal(lanes_parse_buf(with_nul, 21, "nul.yaml", tmpdir, &lf, &d), -1);
    assert_true(d.n >= 1);
    free(with_nul);
    lanes_diag_release(&d);
    /* diag accumulates across calls; each call's items are its own. */
    assert_int_equal(lanes_parse_buf("x: 1", 4, "one.yaml", tmpdir, &lf, &d), -1);
    assert_int_equal(lanes_parse_buf("y: 1", 4, "two.yaml", tmpdir, &lf, &d), -1);
    assert_string_equal(d.items[0].file, "one.yaml");
    assert_string_equal(d.items[d.n - 1].file, "two.yaml");
    lanes_diag_release(&d);
    assert_int_equal(d.n, 0);
    /* CRLF line ends and a UTF-8 byte order mark are fine. */
    {
        const char *crlf = "\xef\xbb\xbfversion: 1\r\nsweep: t\r\nbase_model: base\r\n"
                           "lanes:\r\n  - id: a\r\n    stages: [{speed: }]\r\n";
        assert_int_equal(lanes_parse_buf(crlf, strlen(crlf), "crlf.yaml", tmpdir, &lf, &d), 0);
        assert_int_equal(lf->lanes[0].line, 5);
        lanes_file_free(lf);
    }
    /* A missing file. */
    assert_int_equal(lanes_parse_file("/nonexistent/lanes.yaml", &lf, &d), -1);
    assert_int_equal(d.n, 1);
    assert_int_equal(d.items[0].line, 0);
    lanes_diag_release(&d);
}

static void test_diag_format_and_order(void **state)
{
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    char *s;
    (void)state;
    lanes_diag_init(&d);
    /* Errors are all reported, sorted by position, whatever order they were found in. */
    assert_int_equal(lanes_parse_buf("lanes: [{id: a, stages: [{zzz: }]}]\nversion: 3\nfoo: 1\n",
                                     52, "f.yaml", tmpdir, &lf, &d),
                     -1);
    assert_true(d.n >= 5);
    for (size_t i = 1; i < d.n; i++)
        assert_true(
            d.items[i - 1].line < d.items[i].line ||
            (d.items[i - 1].line == d.items[i].line && d.items[i - 1].col <= d.items[i].col));
    s = lanes_diag_format(&d, 0);
    assert_string_equal(s, "f.yaml:1:1: error: missing 'sweep: NAME' at the top level");
    free(s);
    assert_true(has_err(&d, 1, 27, "unknown stage kind 'zzz'"));
    assert_true(has_err(&d, 2, 10, "unsupported lanes file version 3"));
    assert_true(has_err(&d, 3, 1, "unknown key 'foo'"));
    assert_null(lanes_diag_format(&d, d.n));
    lanes_diag_release(&d);
    assert_int_equal(lanes_parse_file("/nonexistent/x.yaml", &lf, &d), -1);
    s = lanes_diag_format(&d, 0);
    assert_string_equal(s, "/nonexistent/x.yaml: error: cannot open lanes file: No such file or "
                           "directory");
    free(s);
    lanes_diag_release(&d);
}

static void test_many_errors_capped(void **state)
{
    struct buf b;
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    (void)state;
    buf_init(&b);
    buf_puts(&b, HEAD "lanes:\n");
    for (int i = 0; i < 400; i++)
        buf_printf(&b, "  - {id: l%d, stages: [{nokind%d: }]}\n", i, i);
    lanes_diag_init(&d);
    assert_int_equal(lanes_parse_buf(b.data, b.len, "many.yaml", tmpdir, &lf, &d), -1);
    assert_int_equal(d.n, 201);
    assert_non_null(strstr(d.items[200].msg, "too many errors"));
    lanes_diag_release(&d);
    buf_release(&b);
}

static void test_aliases_and_limits(void **state)
{
    struct lanes_file *lf;
    struct lanes_diag d;
    struct buf b;
    (void)state;
    /* Aliases are expanded: an anchored calibration block reused in a stage. */
    lf = parse_ok("version: 1\nsweep: t\nbase_model: base\n"
                  "calibration: &cal {text: calib.txt, samples: 5}\n"
                  "lanes: [{id: a, stages: [{heal: {calibration: *cal}}]}]\n");
    assert_non_null(strstr(lf->lanes[0].stages[0].spec_json, "\"samples\":5,"));
    lanes_file_free(lf);
    /* Billion laughs: stopped by the node budget, quickly. */
    lanes_diag_init(&d);
    buf_init(&b);
    buf_puts(&b, "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i < 12; i++)
        buf_printf(&b, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n",
                   i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    assert_int_equal(lanes_parse_buf(b.data, b.len, "laughs.yaml", tmpdir, &lf, &d), -1);
    assert_int_equal(d.n, 1);
    assert_non_null(strstr(d.items[0].msg, "document too large"));
    /* The sixth line is the first whose expansion passes the budget. */
    assert_int_equal(d.items[0].line, 6);
    lanes_diag_release(&d);
    buf_release(&b);
    /* Deep nesting. */
    buf_init(&b);
    buf_puts(&b, "a: ");
    for (int i = 0; i < 5000; i++)
        buf_puts(&b, "[");
    assert_int_equal(lanes_parse_buf(b.data, b.len, "deep.yaml", tmpdir, &lf, &d), -1);
    assert_true(has_err(&d, 1, -1, "nesting deeper than 64 levels"));
    lanes_diag_release(&d);
    buf_release(&b);
}

/*
 * Mutation smoke test: random byte flips, insertions, deletions, truncations and line swaps of
 * valid files. Every result must be a clean success or failure with located diagnostics. The
 * seed is fixed, so a failure reproduces.
 */
static void test_mutations_never_crash(void **state)
{
    static const char *seeds[] = {
        HEAD "eval: [{ppl: {text: val.txt}}, {exec: {run: x}}]\n"
             "score: {perf: [{metric: ppl}], weights: {perf: 0.5, speed: 0.5}}\n"
             "lanes:\n"
             "  - id: a\n"
             "    matrix: {quantize.dampening: [0.01, 0.02], quantize.calibration.samples: [1]}\n"
             "    stages:\n"
             "      - prune: {layers: [1, 2]}\n"
             "      - quantize: {method: gptq, group_size: 64}\n"
             "      - config: {a: [1, {b: c}]}\n"
             "  - id: b\n"
             "    stages: [{exec: {run: 'x', env: {A: b}, inputs: [in1.bin]}}]\n",
        "version: 1\nsweep: s\nbase_model: base\ncalibration: &a {text: calib.txt}\n"
        "lanes: [{id: q, stages: [{heal: {calibration: *a}}, {speed: }]}]\n",
    };
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    size_t nok = 0, nfail = 0;
    (void)state;
    for (int iter = 0; iter < 800; iter++) {
        const char *seed = seeds[iter % 2];
        size_t len = strlen(seed), nmut;
        char *buf = xmalloc(len + 64);
        struct lanes_diag d;
        struct lanes_file *lf = NULL;
        int rc;
        memcpy(buf, seed, len);
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        nmut = iter % 2 ? 1 : 1 + rng % 4;
        for (size_t m = 0; m < nmut && len > 1; m++) {
            size_t pos;
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            pos = (rng >> 8) % len;
            switch (rng % 5) {
            case 0: /* flip a byte */
                buf[pos] = (char)(rng >> 40);
                break;
            case 1: /* truncate */
                len = pos;
                break;
            case 2: /* delete a byte */
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                len--;
                break;
            case 3: /* insert a YAML-significant byte */
                if (len < strlen(seed) + 60) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = ":-[]{},&*!|>'\"#\n \t"[(rng >> 32) % 19];
                    len++;
                }
                break;
            default: /* replace a digit with another (often still valid) */
                if (buf[pos] >= '0' && buf[pos] <= '9')
                    buf[pos] = (char)('0' + (rng >> 33) % 10);
            }
        }
        lanes_diag_init(&d);
        rc = lanes_parse_buf(buf, len, "mut.yaml", tmpdir, &lf, &d);
        assert_true(rc == 0 || rc == -1);
        if (rc == 0) {
            cJSON *j;
            assert_non_null(lf);
            assert_non_null(lf->canonical_json);
            assert_true(lf->nlanes >= 1);
            assert_int_equal(d.n, 0);
            /* Everything printed is valid JSON. */
            j = cJSON_Parse(lf->canonical_json);
            assert_non_null(j);
            cJSON_Delete(j);
            for (size_t i = 0; i < lf->nlanes; i++) {
                for (size_t k = 0; k < lf->lanes[i].nstages; k++) {
                    j = cJSON_Parse(lf->lanes[i].stages[k].spec_json);
                    assert_non_null(j);
                    cJSON_Delete(j);
                }
            }
            nok++;
        } else {
            assert_null(lf);
            assert_true(d.n >= 1);
            for (size_t i = 0; i < d.n; i++) {
                char *s = lanes_diag_format(&d, i);
                assert_non_null(s);
                assert_true(d.items[i].line >= 0 && d.items[i].col >= 0);
                free(s);
            }
            nfail++;
        }
        lanes_file_free(lf);
        lanes_diag_release(&d);
        free(buf);
    }
    print_message("mutations: %zu parsed, %zu rejected\n", nok, nfail);
    assert_true(nfail > 300);
    assert_true(nok >= 10);
}

/* lanes_spec_complete gives the spec the lanes parser writes for the same stage in a lanes file;
 * lanes_spec_check accepts exactly that and names a missing, extra or changed field. */
static void test_spec_complete_and_check(void **state)
{
    char *full = NULL, *err = NULL, *cut;
    cJSON *j;
    (void)state;
    assert_int_equal(lanes_spec_complete("quantize", "{\"method\":\"rtn\"}", NULL, &full, &err), 0);
    assert_string_equal(full, "{\"group_size\":128,\"ignore\":[\"lm_head\"],\"method\":\"rtn\","
                              "\"scheme\":\"W4A16\"}");
    assert_int_equal(lanes_spec_check("quantize", full, &err), 0);
    /* Every field the parser writes is required. */
    j = cJSON_Parse(full);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "group_size");
    cut = cJSON_PrintUnformatted(j);
    assert_int_equal(lanes_spec_check("quantize", cut, &err), -1);
    assert_non_null(strstr(err, "missing field 'group_size' for quantize"));
    free(err);
    free(cut);
    cJSON_Delete(j);
    /* A key the parser does not know is named, with a hint. */
    assert_int_equal(lanes_spec_check("quantize",
                                      "{\"act_order\":\"static\",\"group_size\":128,\"ignore\":"
                                      "[\"lm_head\"],\"method\":\"gptq\",\"scheme\":\"W4A16\"}",
                                      &err),
                     -1);
    assert_non_null(strstr(err, "'act_order'"));
    assert_non_null(strstr(err, "actorder"));
    free(err);
    assert_int_equal(
        lanes_spec_complete("quantize", "{\"act_order\":\"static\"}", NULL, &cut, &err) == -1 &&
            strstr(err, "'act_order'") != NULL,
        1);
    free(err);
    /* A value the parser would write differently (FP8 static has one scale per tensor). */
    assert_int_equal(lanes_spec_check("quantize",
                                      "{\"group_size\":-1,\"ignore\":[\"lm_head\"],\"method\":"
                                      "\"rtn\",\"scheme\":\"FP8_DYNAMIC\"}",
                                      &err),
                     0);
    assert_int_equal(lanes_spec_complete("quantize",
                                         "{\"method\":\"rtn\",\"scheme\":\"FP8_DYNAMIC\","
                                         "\"group_size\":0}",
                                         NULL, &cut, &err),
                     -1);
    free(err);
    /* Resources belong to the lanes file, and a relative path in a complete spec is refused. */
    assert_int_equal(lanes_spec_complete("ppl", "{\"text\":\"x\",\"retries\":2}", NULL, &cut, &err),
                     -1);
    assert_non_null(strstr(err, "'retries' is a resource"));
    free(err);
    assert_int_equal(lanes_spec_check("nosuch", "{}", &err), -1);
    assert_non_null(strstr(err, "unknown stage kind 'nosuch'"));
    free(err);
    free(full);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_valid),
        cmocka_unit_test(test_every_kind_spec),
        cmocka_unit_test(test_canonical_specs),
        cmocka_unit_test(test_canonical_file),
        cmocka_unit_test(test_resources),
        cmocka_unit_test(test_executor_slurm),
        cmocka_unit_test(test_score_package_hooks),
        cmocka_unit_test(test_calibration_inheritance),
        cmocka_unit_test(test_json_printing),
        cmocka_unit_test(test_err_yaml_syntax),
        cmocka_unit_test(test_err_unknown_keys),
        cmocka_unit_test(test_err_wrong_types),
        cmocka_unit_test(test_err_missing_required),
        cmocka_unit_test(test_err_base_model),
        cmocka_unit_test(test_err_data_files),
        cmocka_unit_test(test_err_duplicates),
        cmocka_unit_test(test_named_evals),
        cmocka_unit_test(test_err_stage_kinds),
        cmocka_unit_test(test_err_quantize_rules),
        cmocka_unit_test(test_err_prune_rules),
        cmocka_unit_test(test_err_lanes_shape),
        cmocka_unit_test(test_matrix_expansion),
        cmocka_unit_test(test_matrix_errors),
        cmocka_unit_test(test_examples_parse),
        cmocka_unit_test(test_exec_demo_shape),
        cmocka_unit_test(test_parse_buf),
        cmocka_unit_test(test_diag_format_and_order),
        cmocka_unit_test(test_many_errors_capped),
        cmocka_unit_test(test_aliases_and_limits),
        cmocka_unit_test(test_mutations_never_crash),
        cmocka_unit_test(test_spec_complete_and_check),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
