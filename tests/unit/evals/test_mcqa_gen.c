/*
 * test_mcqa_gen: the pure pieces of the mcqa_gen eval (worker/evals/mcqa_gen.c): the answer
 * parse rules on recorded generations (Korean and English, thought blocks, markers, standalone
 * letters, failures), item loading in both shapes with its errors, prompt building with few-shot
 * items, the template filler, the slug, and the metrics of tests/data/evals/mcqa_gen.jsonl
 * against eight recorded generations, checked with values computed by hand.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "worker/evals/mcqa_gen.h"

#define DATA "tests/data/evals/mcqa_gen.jsonl"

static void test_parse(void **state)
{
    static const struct {
        const char *text;
        int nchoices, want;
    } cases[] = {
        { "정답: B", 4, 1 },
        { " 정답은 C입니다.", 4, 2 },
        { "The answer is (D).", 4, 3 },
        { "**정답: B**", 4, 1 },
        { "답은 A", 4, 0 },
        { "답: [C]", 4, 2 },
        { "Answer: A, no wait. The final answer is B", 4, 1 }, /* the last marker */
        { "<think>A는 틀렸고 D도 아니다</think>\n\n정답: C", 4, 2 },
        { "A, B 모두 오답이다 </think> 정답: D", 4, 3 }, /* the block opened in the prompt */
        { "<think>정답은 B 같다", 4, -1 },               /* unclosed: all thought */
        { "B", 4, 1 },
        { " (A) 서울", 4, 0 },
        { "B입니다", 4, 1 },
        { "I think it is C", 4, 2 },  /* I is no choice of four */
        { "I think it is C", 10, 8 }, /* ten choices: I is a standalone valid letter */
        { "답: E", 4, -1 },
        { "ABC", 4, -1 },
        { "answer: b", 4, -1 }, /* lowercase letters are not answers */
        { "정답은 2번", 4, -1 },
        { "", 4, -1 },
        { "답변: D", 4, 3 }, /* "답변" is no marker; D is the first standalone letter */
        { "Answer:\nC", 4, 2 },
        { "The answer is Dog", 4, -1 }, /* no standalone letter anywhere */
        { "정답 = J", 10, 9 },
        { "Answered A", 4, 0 }, /* the marker fails ("ed"); the standalone A is taken */
        /* The tiny model's own outputs (recorded from tests/data/tiny-exaone4). */
        { " A\n\n__device__ double b\"\n", 4, 0 },
        { "constantization", 4, -1 },
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = mcqa_gen_parse(cases[i].text, cases[i].nchoices);
        if (got != cases[i].want)
            fail_msg("case %zu '%s': got %d, want %d", i, cases[i].text, got, cases[i].want);
    }
}

static void test_strip_fill_slug(void **state)
{
    char *s, slug[16];
    struct buf b;
    (void)state;
    s = evgen_strip_thoughts("a<think>x</think>b<think>y</think>c");
    assert_string_equal(s, "abc");
    free(s);
    s = evgen_strip_thoughts("x</think>rest");
    assert_string_equal(s, "rest");
    free(s);
    s = evgen_strip_thoughts("keep<think>drop");
    assert_string_equal(s, "keep");
    free(s);
    s = evgen_strip_thoughts("plain");
    assert_string_equal(s, "plain");
    free(s);
    buf_init(&b);
    const char *k[2] = { "question", "choices" }, *v[2] = { "Q?", "A. x" };
    evgen_fill("{question}|{choices}|{other}|{question", k, v, 2, &b);
    assert_string_equal(buf_cstr(&b), "Q?|A. x|{other}|{question");
    buf_release(&b);
    evgen_slug("Computer Science (CS)", slug, sizeof(slug));
    assert_string_equal(slug, "computer_scienc");
    evgen_slug("한국사", slug, sizeof(slug));
    assert_string_equal(slug, "");
    evgen_slug("Law-과목 2", slug, sizeof(slug));
    assert_string_equal(slug, "law_2");
}

static void test_load_prompt(void **state)
{
    struct mcqa_gen_set set, shots;
    char err[256];
    struct buf b;
    (void)state;
    assert_int_equal(mcqa_gen_load(DATA, 0, &set, err, sizeof(err)), 0);
    assert_int_equal(set.n, 8);
    static const int answers[8] = { 1, 1, 2, 3, 0, 1, 2, 1 };
    for (int i = 0; i < 8; i++) {
        assert_int_equal(set.items[i].answer, answers[i]);
        assert_int_equal(set.items[i].nchoices, 4);
        assert_int_equal(set.items[i].line, i + 1);
    }
    assert_string_equal(set.items[0].choices[1], "서울");
    assert_string_equal(set.items[0].category, "geography");
    buf_init(&b);
    mcqa_gen_prompt(MCQA_GEN_DEFAULT_TEMPLATE, NULL, 0, &set.items[0], &b);
    assert_string_equal(buf_cstr(&b),
                        "대한민국의 수도는 어디인가?\nA. 부산\nB. 서울\nC. 대구\nD. 광주\n정답:");
    buf_release(&b);
    assert_int_equal(
        mcqa_gen_load("tests/data/evals/mcqa_gen_fewshot.jsonl", 1, &shots, err, sizeof(err)), 0);
    assert_int_equal(shots.n, 1);
    buf_init(&b);
    mcqa_gen_prompt("Q: {question}\n{choices}\nA:", shots.items, 1, &set.items[1], &b);
    assert_string_equal(buf_cstr(&b), "Q: 1 + 1은?\nA. 1\nB. 2\nC. 3\nD. 4\nA: B\n\n"
                                      "Q: What is 7 times 8?\nA. 54\nB. 56\nC. 58\nD. 64\nA:");
    buf_release(&b);
    mcqa_gen_release(&shots);
    mcqa_gen_release(&set);
    assert_int_equal(mcqa_gen_load(DATA, 3, &set, err, sizeof(err)), 0);
    assert_int_equal(set.n, 3);
    mcqa_gen_release(&set);
}

static void expect_load_err(const char *text, const char *want)
{
    char path[] = "/tmp/exaq-mcqag-XXXXXX", err[256];
    int fd = mkstemp(path);
    struct mcqa_gen_set set;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(mcqa_gen_load(path, 0, &set, err, sizeof(err)), -EINVAL);
    mcqa_gen_release(&set);
    unlink(path);
    if (!strstr(err, want))
        fail_msg("'%s': message '%s' lacks '%s'", text, err, want);
}

static void test_load_errors(void **state)
{
    (void)state;
    expect_load_err("{\"question\": \"q\", \"A\": \"x\", \"B\": \"y\", \"answer\": 3}\n",
                    ":1: 'answer' names no choice");
    expect_load_err("\n{\"question\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": \"C\"}\n",
                    ":2: 'answer' names no choice");
    expect_load_err("{\"choices\": [\"x\", \"y\"], \"answer\": 1}\n", "'question' must be");
    expect_load_err("{\"question\": \"q\", \"choices\": [\"x\"], \"answer\": 1}\n",
                    "needs 2 to 10 choices");
    expect_load_err("{\"question\": \"q\", \"choices\": \"xy\", \"answer\": 1}\n",
                    "'choices' must be a list");
    expect_load_err("{\"question\": \"q\", \"choices\": [\"x\", 2], \"answer\": 1}\n",
                    "'choices' must be a list");
    expect_load_err("{\"question\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": 1.5}\n",
                    "'answer' must be a letter");
    expect_load_err("{\"question\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": 1, "
                    "\"category\": 3}\n",
                    "'category' must be a string");
    expect_load_err("{\"question\": \"q\", \"A\": \"x\", \"B\": 2, \"answer\": 1}\n",
                    "choice 'B' must be a string");
    expect_load_err("{\"question\": \"q\", \"A\": \"x\", \"B\": \"y\", \"answer\": 1, "
                    "\"Category\": []}\n",
                    "'category' must be a string");
    expect_load_err("{\"question\": \"q\",\n", ":1: not valid JSON");
    expect_load_err("[1, 2]\n", "not a JSON object");
    expect_load_err("\n\n", "holds no items");
}

/* Eight recorded generations for the eight items of DATA (answers B B C D A B C B). */
static void test_tally(void **state)
{
    static const char *const texts[8] = {
        "정답: B",                                  /* geography: correct */
        "The answer is (C).",                       /* math: wrong */
        "<think>물은 H2O</think>\n정답은 C입니다.", /* science: correct */
        "Mercury, so D",                            /* science: correct (standalone D) */
        "세종대왕입니다",                           /* history: parse failure */
        "답: B",                                    /* code: correct */
        "5는 12의 약수가 아니다. 답은 C",           /* math: correct */
        "def",                                      /* code: parse failure */
    };
    struct mcqa_gen_set set;
    struct mcqa_gen_tally t;
    char err[256];
    (void)state;
    assert_int_equal(mcqa_gen_load(DATA, 0, &set, err, sizeof(err)), 0);
    mcqa_gen_tally(&set, texts, &t);
    /* By hand: 5 correct of 8 (acc 0.625), 2 parse failures (0.25); per category geography
     * 1/1, math 1/2, science 2/2, history 0/1, code 1/2. */
    assert_int_equal(t.n, 8);
    assert_int_equal(t.correct, 5);
    assert_int_equal(t.fails, 2);
    assert_int_equal(t.ncat, 5);
    static const char *const cats[5] = { "geography", "math", "science", "history", "code" };
    static const int cn[5] = { 1, 2, 2, 1, 2 }, cc[5] = { 1, 1, 2, 0, 1 };
    for (int c = 0; c < 5; c++) {
        assert_string_equal(t.cat[c], cats[c]);
        assert_int_equal(t.cat_n[c], cn[c]);
        assert_int_equal(t.cat_correct[c], cc[c]);
    }
    mcqa_gen_tally_release(&t);
    mcqa_gen_release(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),       cmocka_unit_test(test_strip_fill_slug),
        cmocka_unit_test(test_load_prompt), cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_tally),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
