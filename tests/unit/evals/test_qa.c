/*
 * test_qa: the pure pieces of the qa eval (worker/evals/qa.c): normalization (Korean and
 * English), SQuAD exact match and token F1, the character F1, the max over gold answers, the
 * prediction taken from a generated text, item loading with its errors, and the truncation rule
 * (qa_fit with the tiny model's tokenizer). Expected values are computed by hand in the
 * comments.
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
#include "worker/engine/tokdata.h"
#include "worker/evals/qa.h"

#define NEAR(a, b) assert_true(fabs((a) - (b)) < 1e-12)

static void test_normalize(void **state)
{
    static const char *const cases[][2] = {
        { "The Eiffel Tower!", "eiffel tower" },
        { "  an  apple,\ta pear ", "apple pear" },
        { "서울특별시.", "서울특별시" },
        { "「한강」이다", "한강이다" },
        { "“세종대왕”, 1443년…", "세종대왕 1443년" },
        { "the 한강", "the 한강" }, /* Hangul present: no article removal */
        { "A·B", "ab" },
        { "１４４６년！", "１４４６년" }, /* full-width digits stay; the full-width ! goes */
        { "x\u3000y\u00a0z", "x y z" },
        { "", "" },
        { "...", "" },
        { "can't", "cant" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *n = qa_normalize(cases[i][0]);
        if (strcmp(n, cases[i][1]))
            fail_msg("case %zu '%s': got '%s', want '%s'", i, cases[i][0], n, cases[i][1]);
        free(n);
    }
}

static void test_scores(void **state)
{
    (void)state;
    /* Exact match after normalization. */
    NEAR(qa_exact("The 1889.", "1889"), 1);
    NEAR(qa_exact("한강.", "한강"), 1);
    NEAR(qa_exact("한강이다", "한강"), 0);
    /* Tokens: pred "if eiffel is not in passage 2" (7), gold "in 1889" (2); common "in":
     * P 1/7, R 1/2, F1 = 2/9. */
    NEAR(qa_f1("If the Eiffel is not in Passage 2:", "in 1889"), 2.0 / 9.0);
    /* Korean token F1: pred "1446년에 반포되었다" vs gold "1446년": no common token: 0. */
    NEAR(qa_f1("1446년에 반포되었다", "1446년"), 0);
    /* Character F1: pred chars 1,4,4,6,년,에,반,포,되,었,다 (11), gold 1,4,4,6,년 (5);
     * common 5: P 5/11, R 1, F1 = 2*(5/11)/(16/11) = 10/16. */
    NEAR(qa_f1_char("1446년에 반포되었다", "1446년"), 10.0 / 16.0);
    /* Repeated tokens count as a multiset: pred "a b b" -> "b b" (a removed), gold "b c": common
     * 1, P 1/2, R 1/2, F1 1/2. */
    NEAR(qa_f1("a b b", "b c"), 0.5);
    /* Both empty after normalization: 1; one empty: 0. */
    NEAR(qa_f1("the", "."), 1);
    NEAR(qa_f1("", "x"), 0);
    NEAR(qa_f1_char("", "x"), 0);
    /* The max over the gold answers. */
    const char *golds[2] = { "1446", "1446년" };
    struct qa_score s;
    qa_score("1446년", golds, 2, &s);
    NEAR(s.em, 1);
    NEAR(s.f1, 1);
    NEAR(s.f1_char, 1);
    qa_score("1446 년", golds, 2, &s);
    NEAR(s.em, 0);
    /* tokens "1446","년" vs "1446": P 1/2 R 1 -> 2/3; vs "1446년": 0 -> 2/3. Chars 1446년 vs
     * 1446년: 1. */
    NEAR(s.f1, 2.0 / 3.0);
    NEAR(s.f1_char, 1);
}

static void test_prediction(void **state)
{
    static const char *const cases[][2] = {
        { " 한양\n\n추가 설명", "한양" },
        { "<think>고민 중\n...</think>\n\n답: 한양입니다.", "한양입니다." },
        { "Answer: Canberra", "Canberra" },
        { "정답: 1446년 ", "1446년" },
        { "답변:한강", "한강" },
        { "\n\n  1889\n", "1889" },
        { "<think>never closed", "" },
        { "", "" },
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = qa_prediction(cases[i][0]);
        if (strcmp(p, cases[i][1]))
            fail_msg("case %zu: got '%s', want '%s'", i, p, cases[i][1]);
        free(p);
    }
}

static void expect_load_err(const char *text, const char *want)
{
    char path[] = "/tmp/exaq-qa-XXXXXX", err[256];
    int fd = mkstemp(path);
    struct qa_set set;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(qa_load(path, 0, &set, err, sizeof(err)), -EINVAL);
    qa_release(&set);
    unlink(path);
    if (!strstr(err, want))
        fail_msg("'%s': message '%s' lacks '%s'", text, err, want);
}

static void test_load(void **state)
{
    struct qa_set set;
    char err[256];
    (void)state;
    assert_int_equal(qa_load("tests/data/evals/qa.jsonl", 0, &set, err, sizeof(err)), 0);
    assert_int_equal(set.n, 6);
    assert_string_equal(set.items[1].context,
                        "Passage 1: The Eiffel Tower is in Paris.\n\nPassage 2: It was completed "
                        "in 1889.");
    assert_int_equal(set.items[0].nanswers, 2);
    assert_string_equal(set.items[0].answers[0], "1446년");
    qa_release(&set);
    expect_load_err("{\"context\": \"c\", \"answers\": [\"a\"]}\n", ":1: 'question' must be");
    expect_load_err("{\"context\": \"c\", \"question\": \"q\", \"answers\": []}\n",
                    "'answers' must be a non-empty list");
    expect_load_err("{\"context\": \"c\", \"question\": \"q\", \"answers\": [1]}\n",
                    "'answers' must be a non-empty list");
    expect_load_err("\n{\"context\": 3, \"question\": \"q\", \"answers\": [\"a\"]}\n",
                    ":2: 'context' must be a string or a list");
    expect_load_err("{\"context\": [\"a\", 1], \"question\": \"q\", \"answers\": [\"a\"]}\n",
                    "'context' must be a string or a list");
}

static void test_fit(void **state)
{
    char msg[256];
    struct tok *t = tokdata_tok_load("tests/data/tiny-exaone4", NULL);
    int32_t *ids, *full;
    int n, cut, nfull;
    (void)state;
    assert_non_null(t);
    const char *tmpl = "{context}\n\nQ: {question}\nA:";
    /* Fits: the prompt is the template's encoding, not cut. */
    assert_int_equal(
        qa_fit(t, tmpl, "short context", "why?", 100, NULL, NULL, &ids, &n, &cut, msg, sizeof(msg)),
        0);
    nfull = tok_encode(t, "short context\n\nQ: why?\nA:", strlen("short context\n\nQ: why?\nA:"),
                       &full, msg, sizeof(msg));
    assert_int_equal(n, nfull);
    assert_memory_equal(ids, full, sizeof(int32_t) * (size_t)n);
    assert_int_equal(cut, 0);
    free(ids);
    free(full);
    /* A long Korean context cut to a 64-token budget: at most 64 tokens, the context's
     * beginning kept, the question and the answer cue kept whole, no broken character. */
    struct buf ctx;
    buf_init(&ctx);
    for (int i = 0; i < 50; i++)
        buf_printf(&ctx, "문장 %d: 조선은 한양을 수도로 삼았다. ", i);
    assert_int_equal(qa_fit(t, tmpl, buf_cstr(&ctx), "조선의 수도는?", 64, NULL, NULL, &ids, &n,
                            &cut, msg, sizeof(msg)),
                     0);
    assert_int_equal(cut, 1);
    assert_true(n <= 64 && n > 40);
    char *text = tok_decode(t, ids, (size_t)n);
    assert_true(!strncmp(text, "문장 0: 조선은", strlen("문장 0: 조선은")));
    assert_non_null(strstr(text, "\n\nQ: 조선의 수도는?\nA:"));
    assert_null(strstr(text, "\xef\xbf\xbd"));
    free(text);
    free(ids);
    /* A budget too small for the question alone: an error. */
    assert_int_equal(qa_fit(t, tmpl, buf_cstr(&ctx), "조선의 수도는?", 3, NULL, NULL, &ids, &n,
                            &cut, msg, sizeof(msg)),
                     -EINVAL);
    assert_non_null(strstr(msg, "without any context"));
    buf_release(&ctx);
    tok_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize),  cmocka_unit_test(test_scores),
        cmocka_unit_test(test_prediction), cmocka_unit_test(test_load),
        cmocka_unit_test(test_fit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
