/*
 * calib: windows are consecutive from the start, text and ids sources give the same windows,
 * short data gives fewer windows, and bad sources get clear errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/calib.h"

#define TINY "tests/data/tiny-exaone4"
#define DATA "tests/data/tiny-a"

static void test_ids_and_text(void **state)
{
    struct calib a, b;
    char *err = NULL;
    int32_t *all;
    int64_t n;
    (void)state;
    assert_int_equal(calib_load(&a,
                                "{\"calibration\":{\"ids\":\"" DATA
                                "/calib.ids.u32\",\"samples\":8,"
                                "\"seq_len\":64}}",
                                TINY, 4096, &err),
                     0);
    assert_int_equal(a.n, 8);
    assert_int_equal(a.seq_len, 64);
    assert_int_equal(calib_read_ids(DATA "/calib.ids.u32", &all, &n, &err), 0);
    assert_memory_equal(a.ids, all, 8 * 64 * sizeof(int32_t)); /* consecutive from the start */
    assert_int_equal(calib_load(&b,
                                "{\"calibration\":{\"text\":\"" DATA "/calib.txt\",\"samples\":8,"
                                "\"seq_len\":64}}",
                                TINY, 4096, &err),
                     0);
    assert_memory_equal(a.ids, b.ids, 8 * 64 * sizeof(int32_t));
    calib_release(&a);
    calib_release(&b);
    free(all);
    assert_null(err);
}

static void test_short_and_errors(void **state)
{
    struct calib c;
    char *err = NULL;
    (void)state;
    /* 461381 tokens: at most 450 windows of 1024. */
    assert_int_equal(calib_load(&c,
                                "{\"calibration\":{\"ids\":\"" DATA "/calib.ids.u32\",\"samples\":"
                                "100000,\"seq_len\":1024}}",
                                TINY, 4096, &err),
                     0);
    assert_int_equal(c.n, 450);
    assert_int_equal(c.requested, 100000);
    calib_release(&c);
    assert_int_equal(
        calib_load(&c, "{\"calibration\":{\"ids\":\"/nonexistent\"}}", TINY, 4096, &err), -1);
    assert_non_null(strstr(err, "cannot read ids file '/nonexistent'"));
    assert_int_equal(calib_load(&c, "{\"method\":\"gptq\"}", TINY, 4096, &err), -1);
    assert_non_null(strstr(err, "no 'calibration' block"));
    assert_int_equal(calib_load(&c, "{\"calibration\":{\"text\":\"" DATA "/calib.txt\"}}",
                                "/nonexistent-model", 4096, &err),
                     -1);
    assert_non_null(strstr(err, "tokenizer.json"));
    assert_int_equal(
        calib_load(&c, "{\"calibration\":{\"ids\":\"" DATA "/calib.ids.u32\"}}", TINY, 100, &err),
        -1);
    assert_non_null(strstr(err, "outside the vocabulary"));
    assert_int_equal(
        calib_load(&c, "{\"calibration\":{\"ids\":\"" TINY "/config.json\"}}", TINY, 4096, &err),
        -1);
    assert_non_null(strstr(err, "config.json"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_and_text),
        cmocka_unit_test(test_short_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
