/*
 * test_evalgen: the mcqa_gen and qa stages (worker/stages/stage_evalgen.c) run in-process on
 * tests/data/tiny-exaone4 with the tiny data of tests/data/evals, as the worker runs them.
 *
 * Proves:
 *   - mcqa_gen's metrics equal mcqa_gen_tally over the texts that gen_greedy makes from the
 *     documented prompts (few-shot items first, the default template, no chat wrapping), so the
 *     stage builds the prompts and counts as docs/evals.md says; batch 1 and batch 8 agree;
 *   - qa's metrics equal the mean of qa_score over qa_prediction of the texts generated from
 *     qa_fit's prompts, the truncation count included (a 256-token budget cuts the long items);
 *   - a cancelled flag stops both with STAGE_ERR_CANCELLED; chat on a model without a chat
 *     template, a missing items file and a bad spec field fail with clear messages.
 * Takes a few seconds on 2 cores.
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

#include "tests/unit/fixture.h"
#include "worker/engine/generate.h"
#include "worker/engine/tokdata.h"
#include "worker/evals/mcqa_gen.h"
#include "worker/evals/qa.h"

#define EV "tests/data/evals"

/* Greedy texts for the prompts, as the stages generate them (EOS of the model, max_new). */
static char **gen_texts(int32_t **prompts, int *lens, int n, int max_new)
{
    struct model *m;
    struct model_opts mo = { 2, KERN_IMPL_CPU, 0 };
    char *err = NULL;
    int32_t *eos;
    int n_eos;
    struct tok *t = tokdata_tok_load(TINY, NULL);
    assert_non_null(t);
    assert_int_equal(model_load(&m, TINY, &mo, &err), 0);
    assert_int_equal(gen_eos_load(TINY, &eos, &n_eos, &err), 0);
    struct gen_opts o = { 0 };
    o.max_new_tokens = max_new;
    o.eos = eos;
    o.n_eos = n_eos;
    o.tok = t;
    struct gen_result *res = xcalloc((size_t)n, sizeof(*res));
    char **texts = xcalloc((size_t)n, sizeof(char *));
    assert_int_equal(gen_greedy(m, (const int32_t *const *)prompts, lens, n, &o, res, &err), 0);
    for (int i = 0; i < n; i++) {
        texts[i] = res[i].text;
        res[i].text = NULL;
        gen_result_release(&res[i]);
    }
    free(res);
    free(eos);
    model_free(m);
    tok_free(t);
    return texts;
}

static void test_mcqa_gen_stage(void **state)
{
    struct mcqa_gen_set set, shots;
    char err[256];
    (void)state;
    assert_int_equal(mcqa_gen_load(EV "/mcqa_gen.jsonl", 0, &set, err, sizeof(err)), 0);
    assert_int_equal(mcqa_gen_load(EV "/mcqa_gen_fewshot.jsonl", 2, &shots, err, sizeof(err)), 0);
    struct tok *t = tokdata_tok_load(TINY, NULL);
    int32_t *prompts[8];
    int lens[8];
    for (int i = 0; i < set.n; i++) {
        struct buf u;
        buf_init(&u);
        mcqa_gen_prompt(MCQA_GEN_DEFAULT_TEMPLATE, shots.items, 2, &set.items[i], &u);
        lens[i] = tok_encode(t, u.data, u.len, &prompts[i], err, sizeof(err));
        assert_true(lens[i] > 0);
        buf_release(&u);
    }
    char **texts = gen_texts(prompts, lens, set.n, 16);
    struct mcqa_gen_tally ty;
    mcqa_gen_tally(&set, (const char *const *)texts, &ty);
    for (int b = 0; b < 2; b++) {
        char spec[512];
        snprintf(spec, sizeof(spec),
                 "{\"items\":\"" EV "/mcqa_gen.jsonl\",\"fewshot\":\"" EV
                 "/mcqa_gen_fewshot.jsonl\",\"num_fewshot\":2,\"chat\":false,"
                 "\"max_new_tokens\":16,\"batch\":%d}",
                 b ? 8 : 1);
        struct fx_run *r = fx_run_stage("mcqa_gen", spec, TINY, NULL, NULL);
        assert_int_equal(r->rc, 0);
        assert_true(fabs(fx_metric(r, "mcqa_gen_acc") - (double)ty.correct / 8) < 1e-15);
        assert_true(fabs(fx_metric(r, "mcqa_gen_parse_fail") - (double)ty.fails / 8) < 1e-15);
        assert_true(fx_metric(r, "mcqa_gen_n") == 8);
        for (int c = 0; c < ty.ncat; c++) {
            char name[64];
            snprintf(name, sizeof(name), "mcqa_gen_acc_%s", ty.cat[c]);
            assert_true(fabs(fx_metric(r, name) - (double)ty.cat_correct[c] / ty.cat_n[c]) < 1e-15);
        }
        assert_non_null(strstr(r->log.data, "2 few-shot, chat off"));
        fx_run_free(r);
    }
    for (int i = 0; i < set.n; i++) {
        free(prompts[i]);
        free(texts[i]);
    }
    free(texts);
    mcqa_gen_tally_release(&ty);
    mcqa_gen_release(&set);
    mcqa_gen_release(&shots);
    tok_free(t);
}

static void test_qa_stage(void **state)
{
    struct qa_set set;
    char err[256];
    (void)state;
    assert_int_equal(qa_load(EV "/qa.jsonl", 0, &set, err, sizeof(err)), 0);
    struct tok *t = tokdata_tok_load(TINY, NULL);
    int32_t *prompts[6];
    int lens[6], cut, ncut = 0;
    for (int i = 0; i < set.n; i++) {
        assert_int_equal(qa_fit(t, QA_DEFAULT_TEMPLATE, set.items[i].context, set.items[i].question,
                                256, NULL, NULL, &prompts[i], &lens[i], &cut, err, sizeof(err)),
                         0);
        assert_true(lens[i] <= 256);
        ncut += cut;
    }
    assert_int_equal(ncut, 1); /* only item 5 is longer than 256 tokens */
    char **texts = gen_texts(prompts, lens, set.n, 20);
    double em = 0, f1 = 0, fc = 0;
    for (int i = 0; i < set.n; i++) {
        char *p = qa_prediction(texts[i]);
        struct qa_score s;
        qa_score(p, (const char *const *)set.items[i].answers, set.items[i].nanswers, &s);
        em += s.em;
        f1 += s.f1;
        fc += s.f1_char;
        free(p);
    }
    struct fx_run *r = fx_run_stage("qa",
                                    "{\"items\":\"" EV "/qa.jsonl\",\"chat\":false,"
                                    "\"max_new_tokens\":20,\"max_prompt_tokens\":256,\"batch\":3}",
                                    TINY, NULL, NULL);
    assert_int_equal(r->rc, 0);
    assert_true(fabs(fx_metric(r, "qa_f1") - f1 / 6) < 1e-15);
    assert_true(fabs(fx_metric(r, "qa_exact_match") - em / 6) < 1e-15);
    assert_true(fabs(fx_metric(r, "qa_f1_char") - fc / 6) < 1e-15);
    assert_true(fx_metric(r, "qa_n") == 6);
    assert_true(fx_metric(r, "qa_truncated") == 1);
    fx_run_free(r);
    for (int i = 0; i < set.n; i++) {
        free(prompts[i]);
        free(texts[i]);
    }
    free(texts);
    qa_release(&set);
    tok_free(t);
}

static void expect_fail(const char *kind, const char *spec, int *cancel, int rc, const char *msg)
{
    struct fx_run *r = fx_run_stage(kind, spec, TINY, NULL, cancel);
    assert_int_equal(r->rc, rc);
    if (!strstr(r->errmsg, msg))
        fail_msg("%s %s: message '%s' lacks '%s'", kind, spec, r->errmsg, msg);
    fx_run_free(r);
}

static void test_failures(void **state)
{
    int cancel = 1;
    (void)state;
    expect_fail("mcqa_gen", "{\"items\":\"" EV "/mcqa_gen.jsonl\",\"chat\":false}", &cancel,
                STAGE_ERR_CANCELLED, "cancelled");
    expect_fail("qa", "{\"items\":\"" EV "/qa.jsonl\",\"chat\":false}", &cancel,
                STAGE_ERR_CANCELLED, "cancelled");
    expect_fail("qa", "{\"items\":\"" EV "/qa.jsonl\"}", NULL, STAGE_ERR_ERROR, "chat: false");
    expect_fail("mcqa_gen", "{\"items\":\"/nonexistent.jsonl\",\"chat\":false}", NULL,
                STAGE_ERR_ERROR, "cannot read items file '/nonexistent.jsonl'");
    expect_fail("mcqa_gen", "{\"items\":\"" EV "/mcqa_gen.jsonl\",\"max_new_tokens\":0}", NULL,
                STAGE_ERR_ERROR, "'max_new_tokens' must be an integer");
    expect_fail("qa", "{\"items\":\"" EV "/qa.jsonl\",\"chat\":\"yes\"}", NULL, STAGE_ERR_ERROR,
                "'chat' must be true or false");
    expect_fail("qa", "[]", NULL, STAGE_ERR_ERROR, "not a JSON object");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcqa_gen_stage),
        cmocka_unit_test(test_qa_stage),
        cmocka_unit_test(test_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
