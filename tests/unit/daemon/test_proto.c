/*
 * proto: every message round-trips through encode/parse; parsing rejects unknown fields,
 * wrong types, missing required fields, wrong versions and non-objects; the framer splits
 * lines across arbitrary feeds and reports over-long lines once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/vocab.h"

static void test_roundtrip_job(void **state)
{
    struct proto_msg m, p;
    char err[256], *line;
    (void)state;
    proto_msg_init(&m, PROTO_T_job);
    m.u.job.attempt = 42;
    m.u.job.has_attempt = true;
    proto_set_str(&m.u.job.key, &m.u.job.has_key, "abc");
    proto_set_str(&m.u.job.kind, &m.u.job.has_kind, "exec");
    proto_set_str(&m.u.job.spec, &m.u.job.has_spec, "{\"run\":\"echo \\\"hi\\\"\\n\"}");
    proto_set_str(&m.u.job.input, &m.u.job.has_input, "/in");
    proto_set_str(&m.u.job.stage_dir, &m.u.job.has_stage_dir, "/s");
    proto_set_str(&m.u.job.final_dir, &m.u.job.has_final_dir, "/f");
    proto_set_str(&m.u.job.log, &m.u.job.has_log, "/l");
    m.u.job.produces_model = true;
    m.u.job.has_produces_model = true;
    m.u.job.timeout_s = 1.5;
    m.u.job.has_timeout_s = true;
    line = proto_encode(&m);
    assert_true(line[strlen(line) - 1] == '\n');
    assert_null(memchr(line, '\n', strlen(line) - 1)); /* one line */
    assert_int_equal(proto_parse(line, strlen(line) - 1, PROTO_KIND_MSG, &p, err, sizeof(err)), 0);
    assert_int_equal(p.type, PROTO_T_job);
    assert_int_equal(p.u.job.attempt, 42);
    assert_string_equal(p.u.job.spec, m.u.job.spec);
    assert_true(p.u.job.produces_model);
    assert_true(p.u.job.timeout_s == 1.5);
    assert_false(p.u.job.has_devices);
    free(line);
    proto_msg_release(&m);
    proto_msg_release(&p);
}

static void test_roundtrip_metrics_and_reply(void **state)
{
    struct proto_msg m, p;
    char err[256], *line;
    (void)state;
    proto_msg_init(&m, PROTO_T_done);
    m.u.done.attempt = 7;
    m.u.done.has_attempt = true;
    proto_metrics_add(&m.u.done.metrics, "ppl", 12.848);
    proto_metrics_add(&m.u.done.metrics, "acc", 0.75);
    proto_metrics_add(&m.u.done.metrics, "ppl", 13.0); /* replaces */
    m.u.done.has_metrics = true;
    line = proto_encode(&m);
    assert_int_equal(proto_parse(line, strlen(line) - 1, PROTO_KIND_MSG, &p, err, sizeof(err)), 0);
    assert_int_equal(p.u.done.metrics.n, 2);
    assert_string_equal(p.u.done.metrics.names[0], "ppl");
    assert_true(p.u.done.metrics.values[0] == 13.0);
    free(line);
    proto_msg_release(&m);
    proto_msg_release(&p);

    proto_msg_init(&m, PROTO_T_status_r);
    m.u.status_r.status = strdup("{\"a\":[1,2,{\"b\":null}]}");
    m.u.status_r.has_status = true;
    line = proto_encode(&m);
    assert_int_equal(proto_parse(line, strlen(line) - 1, PROTO_KIND_REPLY, &p, err, sizeof(err)),
                     0);
    assert_true(p.ok);
    assert_string_equal(p.u.status_r.status, "{\"a\":[1,2,{\"b\":null}]}");
    free(line);
    proto_msg_release(&m);
    proto_msg_release(&p);

    line = proto_encode_error("submit", PROTO_E_INVALID, "a.yaml:1:1: error: x\nb");
    assert_int_equal(proto_parse(line, strlen(line) - 1, PROTO_KIND_REPLY, &p, err, sizeof(err)),
                     0);
    assert_false(p.ok);
    assert_string_equal(p.err, "invalid");
    assert_string_equal(p.errmsg, "a.yaml:1:1: error: x\nb");
    free(line);
    proto_msg_release(&p);
}

static void expect_fail(const char *line, enum proto_kind k, int code, const char *substr)
{
    struct proto_msg m;
    char err[256] = "";
    int rc = proto_parse(line, strlen(line), k, &m, err, sizeof(err));
    if (rc != code)
        fail_msg("'%s': got %d (%s), want %d", line, rc, err, code);
    if (substr && !strstr(err, substr))
        fail_msg("'%s': message '%s' lacks '%s'", line, err, substr);
    assert_int_equal(m.type, PROTO_T__COUNT);
}

static void test_rejects(void **state)
{
    (void)state;
    expect_fail("", PROTO_KIND_MSG, PROTO_E_PARSE, "not valid JSON");
    expect_fail("{", PROTO_KIND_MSG, PROTO_E_PARSE, NULL);
    expect_fail("null", PROTO_KIND_MSG, PROTO_E_PARSE, "object");
    expect_fail("{\"op\":\"ping\"}", PROTO_KIND_MSG, PROTO_E_PARSE, "version");
    expect_fail("{\"v\":\"1\",\"op\":\"ping\"}", PROTO_KIND_MSG, PROTO_E_PARSE, "version");
    expect_fail("{\"v\":1.5,\"op\":\"ping\"}", PROTO_KIND_MSG, PROTO_E_PARSE, "version");
    expect_fail("{\"v\":9,\"op\":\"ping\"}", PROTO_KIND_MSG, PROTO_E_VERSION, "speaks 2");
    expect_fail("{\"v\":2}", PROTO_KIND_MSG, PROTO_E_PARSE, "\"op\"");
    expect_fail("{\"v\":2,\"op\":3}", PROTO_KIND_MSG, PROTO_E_PARSE, "\"op\"");
    expect_fail("{\"v\":2,\"op\":\"nope\"}", PROTO_KIND_MSG, PROTO_E_UNKNOWN_OP, "nope");
    expect_fail("{\"v\":2,\"op\":\"ping\",\"x\":1}", PROTO_KIND_MSG, PROTO_E_PARSE,
                "unknown field");
    expect_fail("{\"v\":2,\"op\":\"cancel\"}", PROTO_KIND_MSG, PROTO_E_PARSE, "required field");
    expect_fail("{\"v\":2,\"op\":\"cancel\",\"sweep\":1}", PROTO_KIND_MSG, PROTO_E_PARSE,
                "must be a string");
    expect_fail("{\"v\":2,\"op\":\"submit\",\"path\":\"/a\",\"priority\":1.5}", PROTO_KIND_MSG,
                PROTO_E_PARSE, "integer");
    expect_fail("{\"v\":2,\"op\":\"submit\",\"path\":\"/a\",\"rerun\":1}", PROTO_KIND_MSG,
                PROTO_E_PARSE, "true or false");
    expect_fail("{\"v\":2,\"op\":\"metrics\",\"attempt\":1,\"metrics\":{\"a\":\"x\"}}",
                PROTO_KIND_MSG, PROTO_E_PARSE, "finite number");
    expect_fail("{\"v\":2,\"op\":\"metrics\",\"attempt\":1,\"metrics\":[1]}", PROTO_KIND_MSG,
                PROTO_E_PARSE, "object");
    expect_fail("{\"v\":2,\"op\":\"cancel\",\"sweep\":\"a\",\"sweep\":\"b\"}", PROTO_KIND_MSG,
                PROTO_E_PARSE, "duplicate");
    expect_fail("{\"v\":2,\"re\":\"ping\"}", PROTO_KIND_REPLY, PROTO_E_PARSE, "\"ok\"");
    expect_fail("{\"v\":2,\"re\":\"ping\",\"ok\":false}", PROTO_KIND_REPLY, PROTO_E_PARSE, "err");
    /* A message parsed as a reply (and vice versa) is an unknown op. */
    expect_fail("{\"v\":2,\"re\":\"ping\",\"ok\":true}", PROTO_KIND_MSG, PROTO_E_PARSE, "\"op\"");
}

struct lines {
    int n;
    int overlong;
    char got[8][64];
};

static int collect(void *arg, const char *line, size_t len)
{
    struct lines *l = arg;
    if (!line) {
        l->overlong++;
        return 0;
    }
    assert_true(strlen(line) == len);
    if (l->n < 8)
        snprintf(l->got[l->n], sizeof(l->got[0]), "%s", line);
    l->n++;
    return 0;
}

static void test_framer(void **state)
{
    struct proto_framer f;
    struct lines l;
    const char *s = "abc\ndef\n\n\r\nghi";
    (void)state;
    /* Byte by byte. */
    memset(&l, 0, sizeof(l));
    proto_framer_init(&f, 16);
    for (size_t i = 0; i < strlen(s); i++)
        proto_framer_feed(&f, s + i, 1, collect, &l);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.got[0], "abc");
    assert_string_equal(l.got[1], "def");
    proto_framer_feed(&f, "\n", 1, collect, &l);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.got[2], "ghi");
    /* Over-long: reported once, the rest of the line dropped, the next line fine. */
    memset(&l, 0, sizeof(l));
    proto_framer_feed(&f, "0123456789abcdefXYZ", 19, collect, &l);
    proto_framer_feed(&f, "more more more more", 19, collect, &l);
    proto_framer_feed(&f, "tail\nok\n", 8, collect, &l);
    assert_int_equal(l.overlong, 1);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.got[0], "ok");
    /* A line of exactly max_line bytes is accepted. */
    memset(&l, 0, sizeof(l));
    proto_framer_feed(&f, "0123456789abcdef\n", 17, collect, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.overlong, 0);
    proto_framer_release(&f);
}

static void test_describe(void **state)
{
    char *d = proto_describe();
    (void)state;
    assert_non_null(strstr(d, "op submit (from CTL)\n  path string required\n"));
    assert_non_null(strstr(d, "re status (from DAEMON)\n  status json required\n"));
    assert_non_null(strstr(d, "op done (from WORKER)\n  attempt integer required\n"));
    free(d);
}

/* The shared vocabulary: every name parses back to its value, unknown words get the documented
 * fallbacks, the retried classes are exactly oom, timeout and lost, and the metric-name rule. */
static void test_vocab(void **state)
{
    (void)state;
    for (int c = FAIL_NONE + 1; c <= FAIL_INTERRUPTED; c++)
        assert_int_equal(fail_class_parse(fail_class_name((enum fail_class)c)), c);
    assert_int_equal(fail_class_parse("nonsense"), FAIL_ERROR);
    assert_int_equal(fail_class_parse(NULL), FAIL_ERROR);
    assert_int_equal(fail_class_parse("none"), FAIL_ERROR); /* a worker never reports "none" */
    assert_string_equal(fail_class_name(FAIL_OOM), "oom");
    for (int c = FAIL_NONE; c <= FAIL_INTERRUPTED; c++)
        assert_int_equal(fail_class_retried((enum fail_class)c),
                         c == FAIL_OOM || c == FAIL_TIMEOUT || c == FAIL_LOST);
    for (int s = DSTAGE_PENDING; s <= DSTAGE_FAILED; s++)
        assert_int_equal(dstage_state_parse(dstage_state_name((enum dstage_state)s)), s);
    assert_int_equal(dstage_state_parse("bogus"), DSTAGE_PENDING);
    for (int v = VIEW_QUEUED; v <= VIEW_CANCELLED; v++)
        assert_int_equal(view_state_parse(view_state_name((enum view_state)v)), v);
    assert_int_equal(view_state_parse("pending"), VIEW__UNKNOWN);
    for (int l = LANE_QUEUED; l <= LANE_CANCELLED; l++) /* lane names are view names too */
        assert_int_not_equal(view_state_parse(lane_state_name((enum lane_state)l)), VIEW__UNKNOWN);
    assert_string_equal(attempt_state_name(ATT_INTERRUPTED), "interrupted");
    char name[VOCAB_METRIC_NAME_MAX + 2];
    memset(name, 'a', sizeof(name));
    name[VOCAB_METRIC_NAME_MAX] = '\0';
    assert_true(vocab_metric_name_ok(name));
    name[VOCAB_METRIC_NAME_MAX] = 'a';
    name[VOCAB_METRIC_NAME_MAX + 1] = '\0';
    assert_false(vocab_metric_name_ok(name));
    assert_false(vocab_metric_name_ok(""));
    assert_false(vocab_metric_name_ok(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_job), cmocka_unit_test(test_roundtrip_metrics_and_reply),
        cmocka_unit_test(test_rejects),       cmocka_unit_test(test_framer),
        cmocka_unit_test(test_describe),      cmocka_unit_test(test_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
