/*
 * test_generate: greedy generation (worker/engine/generate.c) on tests/data/tiny-exaone4 against
 * the transformers goldens of tests/data/generate/tiny-exaone4.json (float32 CPU,
 * generate(do_sample=False), 64 new tokens; made by tests/tools/make_generate_goldens.py).
 *
 * Proves:
 *   - all 20 prompts (10 plain, 10 chat-wrapped) in one batch give exactly the golden ids, and
 *     the same prompts one by one (and in a batch of reversed order) give the same ids as the
 *     batch: batching never changes a sequence;
 *   - gen_greedy equals model_generate_greedy;
 *   - the stop rules: an EOS id ends a sequence with the EOS kept, in a batch where the other
 *     sequences run on to max_new_tokens; a stop string ends it at the token that completed it
 *     and the text is cut before it; max_new_tokens 0 gives nothing;
 *   - gen_eos_load reads an integer or a list from generation_config.json, falls back to
 *     config.json only when that file is absent (transformers' rule), rejects a bad value;
 *   - gen_chat_wrap renders one user message with the EXAONE-4.0 template exactly as the golden
 *     text (transformers' apply_chat_template);
 *   - bad input (empty prompt, id outside the vocabulary, a window overflow) is -EINVAL with a
 *     message.
 * Takes ~5-10 s on 2 cores (about 2,600 decode steps of the 5M-parameter model).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>
#include <cmocka.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/generate.h"
#include "worker/engine/model.h"
#include "worker/engine/tokdata.h"

#define TINY   "tests/data/tiny-exaone4"
#define GOLDEN "tests/data/generate/tiny-exaone4.json"
#define NP     20

struct gold {
    int n[NP];
    int32_t *prompt[NP];
    int32_t want[NP][64];
    char *text[NP]; /* the rendered prompt text */
    char *raw[NP];  /* the user text before chat wrapping */
    int nwant;
};

static cJSON *g_doc;
static struct gold g;
static struct model *g_m;

static void ids_of(const cJSON *arr, int32_t *out, int max, int *n)
{
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        assert_true(k < max);
        out[k++] = (int32_t)e->valuedouble;
    }
    *n = k;
}

static int setup(void **state)
{
    char *text;
    size_t len;
    (void)state;
    assert_int_equal(file_read_all(GOLDEN, &text, &len), 0);
    g_doc = cJSON_Parse(text);
    free(text);
    assert_non_null(g_doc);
    g.nwant = (int)cJSON_GetObjectItem(g_doc, "max_new_tokens")->valuedouble;
    assert_int_equal(g.nwant, 64);
    int k = 0;
    for (int s = 0; s < 2; s++) {
        const cJSON *set = cJSON_GetObjectItem(g_doc, s ? "chat" : "plain"), *c;
        assert_int_equal(cJSON_GetArraySize(set), 10);
        cJSON_ArrayForEach(c, set)
        {
            int nw;
            const cJSON *p = cJSON_GetObjectItem(c, "prompt_ids");
            g.prompt[k] = xmalloc(sizeof(int32_t) * (size_t)cJSON_GetArraySize(p));
            ids_of(p, g.prompt[k], cJSON_GetArraySize(p), &g.n[k]);
            ids_of(cJSON_GetObjectItem(c, "new_ids"), g.want[k], 64, &nw);
            assert_int_equal(nw, 64);
            g.text[k] = cJSON_GetObjectItem(c, "text")->valuestring;
            g.raw[k] = cJSON_GetObjectItem(c, "prompt")->valuestring;
            k++;
        }
    }
    struct model_opts o = { 2, KERN_IMPL_CPU, 0 };
    char *err = NULL;
    assert_int_equal(model_load(&g_m, TINY, &o, &err), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < NP; i++)
        free(g.prompt[i]);
    model_free(g_m);
    cJSON_Delete(g_doc);
    return 0;
}

static void run(const int *idx, int B, int max_new, struct gen_result *res)
{
    const int32_t *pp[NP];
    int n[NP];
    for (int b = 0; b < B; b++) {
        pp[b] = g.prompt[idx[b]];
        n[b] = g.n[idx[b]];
    }
    struct gen_opts o = { 0 };
    o.max_new_tokens = max_new;
    char *err = NULL;
    int rc = gen_greedy(g_m, pp, n, B, &o, res, &err);
    if (rc)
        fail_msg("gen_greedy: %s", err);
}

static void test_batch_goldens(void **state)
{
    struct gen_result res[NP], one, rev[NP];
    int idx[NP], ridx[NP];
    (void)state;
    for (int i = 0; i < NP; i++) {
        idx[i] = i;
        ridx[i] = NP - 1 - i;
    }
    run(idx, NP, 64, res);
    for (int i = 0; i < NP; i++) {
        assert_int_equal(res[i].n, 64);
        assert_int_equal(res[i].why, GEN_STOP_LENGTH);
        for (int t = 0; t < 64; t++)
            if (res[i].ids[t] != g.want[i][t])
                fail_msg("prompt %d token %d: got %d, transformers %d", i, t, res[i].ids[t],
                         g.want[i][t]);
    }
    /* One by one, and the reversed batch: the same ids. */
    for (int i = 0; i < NP; i += 3) {
        run(&idx[i], 1, 64, &one);
        assert_int_equal(one.n, res[i].n);
        assert_memory_equal(one.ids, res[i].ids, sizeof(int32_t) * 64);
        gen_result_release(&one);
    }
    run(ridx, NP, 64, rev);
    for (int i = 0; i < NP; i++) {
        assert_memory_equal(rev[NP - 1 - i].ids, res[i].ids, sizeof(int32_t) * 64);
        gen_result_release(&rev[NP - 1 - i]);
    }
    /* model_generate_greedy agrees. */
    int32_t out[64];
    char *err = NULL;
    assert_int_equal(model_generate_greedy(g_m, g.prompt[5], g.n[5], 64, out, &err), 0);
    assert_memory_equal(out, res[5].ids, sizeof(out));
    for (int i = 0; i < NP; i++)
        gen_result_release(&res[i]);
}

static void test_stops(void **state)
{
    char *err = NULL;
    struct tok *t = tokdata_tok_load(TINY, NULL);
    (void)state;
    assert_non_null(t);
    /* Prompt 0 runs "6 202 6 202 ...", prompt 1 "202 328 346 ...": EOS 328 stops prompt 1 after
     * two ids, while prompt 0 (no 328 in its first 8 ids) runs to max_new_tokens 8. */
    const int32_t *pp[2] = { g.prompt[0], g.prompt[1] };
    int n[2] = { g.n[0], g.n[1] };
    int32_t eos[2] = { 9999, 328 };
    struct gen_opts o = { 0 };
    struct gen_result res[2];
    for (int i = 0; i < 8; i++)
        assert_int_not_equal(g.want[0][i], 328);
    assert_int_equal(g.want[1][1], 328);
    o.max_new_tokens = 8;
    o.eos = eos;
    o.n_eos = 2;
    o.tok = t;
    assert_int_equal(gen_greedy(g_m, pp, n, 2, &o, res, &err), 0);
    assert_int_equal(res[0].n, 8);
    assert_int_equal(res[0].why, GEN_STOP_LENGTH);
    assert_memory_equal(res[0].ids, g.want[0], sizeof(int32_t) * 8);
    assert_int_equal(res[1].n, 2);
    assert_int_equal(res[1].why, GEN_STOP_EOS);
    assert_int_equal(res[1].ids[1], 328);
    char *full = tok_decode(t, g.want[0], 8);
    assert_string_equal(res[0].text, full);
    free(full);
    gen_result_release(&res[0]);
    gen_result_release(&res[1]);

    /* Stop string "\n": prompt 0's second id (202) completes it; the text stops before it. */
    const char *stops[2] = { "zzz", "\n" };
    memset(&o, 0, sizeof(o));
    o.max_new_tokens = 64;
    o.stop = stops;
    o.n_stop = 2;
    o.tok = t;
    assert_int_equal(gen_greedy(g_m, pp, n, 1, &o, res, &err), 0);
    assert_int_equal(res[0].why, GEN_STOP_STRING);
    assert_int_equal(res[0].n, 2);
    char *two = tok_decode(t, g.want[0], 2);
    assert_non_null(strchr(two, '\n'));
    *strchr(two, '\n') = '\0';
    assert_string_equal(res[0].text, two);
    free(two);
    gen_result_release(&res[0]);

    /* max_new_tokens 0: nothing. */
    o.max_new_tokens = 0;
    assert_int_equal(gen_greedy(g_m, pp, n, 2, &o, res, &err), 0);
    assert_int_equal(res[0].n, 0);
    assert_string_equal(res[1].text, "");
    gen_result_release(&res[0]);
    gen_result_release(&res[1]);
    tok_free(t);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_eos_load(void **state)
{
    char dir[] = "/tmp/exaq-gen-XXXXXX", path[128], *err = NULL;
    int32_t *ids;
    int n;
    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_int_equal(gen_eos_load(TINY, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 2);
    free(ids);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    write_file(path, "{\"eos_token_id\": 7}");
    assert_int_equal(gen_eos_load(dir, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 7);
    free(ids);
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    write_file(path, "{\"eos_token_id\": [361, 2]}");
    assert_int_equal(gen_eos_load(dir, &ids, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 361);
    assert_int_equal(ids[1], 2);
    free(ids);
    write_file(path, "{\"eos_token_id\": \"x\"}");
    assert_int_equal(gen_eos_load(dir, &ids, &n, &err), -EINVAL);
    assert_non_null(strstr(err, "eos_token_id"));
    free(err);
    err = NULL;
    write_file(path, "{\"bos_token_id\": 1}");
    assert_int_equal(gen_eos_load(dir, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

static void test_chat_wrap(void **state)
{
    struct chat_template ct;
    char *err = NULL, *src;
    size_t len;
    struct buf out;
    (void)state;
    /* The EXAONE-4.0 template (tests/data/chat) with the tiny model's special tokens. */
    char dir[] = "/tmp/exaq-genc-XXXXXX", p1[128], p2[128];
    assert_non_null(mkdtemp(dir));
    snprintf(p1, sizeof(p1), "%s/chat_template.jinja", dir);
    snprintf(p2, sizeof(p2), "%s/tokenizer_config.json", dir);
    assert_int_equal(
        file_read_all("tests/data/chat/exaone-4.0-1.2b/chat_template.jinja", &src, &len), 0);
    write_file(p1, src);
    free(src);
    assert_int_equal(file_read_all(TINY "/tokenizer_config.json", &src, &len), 0);
    write_file(p2, src);
    free(src);
    if (chat_template_load(dir, &ct, &err) != 0)
        fail_msg("%s", err);
    for (int i = 10; i < NP; i++) {
        buf_init(&out);
        assert_int_equal(gen_chat_wrap(&ct, g.raw[i], &out, &err), 0);
        assert_string_equal(buf_cstr(&out), g.text[i]);
        buf_release(&out);
    }
    chat_template_release(&ct);
    unlink(p1);
    unlink(p2);
    rmdir(dir);
}

static void test_errors(void **state)
{
    int32_t bad[2] = { 1, 4096 }, ok[1] = { 1 };
    const int32_t *pp[1] = { bad };
    int n[1] = { 2 };
    struct gen_opts o = { 0 };
    struct gen_result res[1];
    char *err = NULL;
    (void)state;
    o.max_new_tokens = 4;
    assert_int_equal(gen_greedy(g_m, pp, n, 1, &o, res, &err), -EINVAL);
    assert_non_null(strstr(err, "outside the vocabulary"));
    free(err);
    err = NULL;
    pp[0] = ok;
    n[0] = 0;
    assert_int_equal(gen_greedy(g_m, pp, n, 1, &o, res, &err), -EINVAL);
    assert_non_null(strstr(err, "empty"));
    free(err);
    err = NULL;
    n[0] = 1;
    o.max_new_tokens = 2048;
    assert_int_equal(gen_greedy(g_m, pp, n, 1, &o, res, &err), -EINVAL);
    assert_non_null(strstr(err, "max_position_embeddings"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_goldens), cmocka_unit_test(test_stops),
        cmocka_unit_test(test_eos_load),      cmocka_unit_test(test_chat_wrap),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
