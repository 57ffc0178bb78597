/*
 * test_ckpt: trainer checkpoints round-trip exactly, are replaced atomically, and refuse a
 * corrupt file, another run's fingerprint and other arrays.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/train/ckpt.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/exaq-ckpt.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rm_rf(dir);
}

static void test_roundtrip_and_errors(void **state)
{
    (void)state;
    char *path = path_join(dir, "train.ckpt"), *err = NULL;
    float w[5] = { 1, -2, 3.5f, 1e-30f, 7 }, m[3] = { 0.25f, -0.5f, 9 };
    struct ckpt_arr a[2] = { { "w", w, 5 }, { "m", m, 3 } };
    struct ckpt_state st = { 42, 1234, 0xDEADBEEFCAFEF00DULL, { 0.1, 2.0 / 3.0, -5 } }, got;
    assert_int_equal(ckpt_read(path, "fp", &got, a, 2, &err), 1); /* none yet */
    assert_int_equal(ckpt_write(path, "fp", &st, a, 2, &err), 0);
    float w2[5] = { 0 }, m2[3] = { 0 };
    struct ckpt_arr b[2] = { { "w", w2, 5 }, { "m", m2, 3 } };
    memset(&got, 0, sizeof(got));
    assert_int_equal(ckpt_read(path, "fp", &got, b, 2, &err), 0);
    assert_int_equal(got.step, 42);
    assert_int_equal(got.data_pos, 1234);
    assert_true(got.rng == st.rng);
    for (int i = 0; i < CKPT_NVALS; i++)
        assert_true(got.vals[i] == st.vals[i]);
    assert_memory_equal(w, w2, sizeof(w));
    assert_memory_equal(m, m2, sizeof(m));

    /* Another run's fingerprint, other names, other sizes. */
    assert_int_equal(ckpt_read(path, "other", &got, b, 2, &err), -1);
    assert_non_null(strstr(err, "another run"));
    struct ckpt_arr c[2] = { { "w", w2, 5 }, { "v", m2, 3 } };
    assert_int_equal(ckpt_read(path, "fp", &got, c, 2, &err), -1);
    assert_non_null(strstr(err, "array 1"));
    struct ckpt_arr d[1] = { { "w", w2, 4 } };
    assert_int_equal(ckpt_read(path, "fp", &got, d, 1, &err), -1);
    /* A refused file leaves the arrays as they were: the first array matched, the second not. */
    float keep[5] = { 9, 9, 9, 9, 9 }, keep2[3] = { 0 };
    struct ckpt_arr e[2] = { { "w", keep, 5 }, { "m", keep2, 2 } };
    assert_int_equal(ckpt_read(path, "fp", &got, e, 2, &err), -1);
    assert_true(keep[0] == 9 && keep[4] == 9);

    /* A second write replaces the first and leaves no temporary file behind. */
    st.step = 43;
    w[0] = 11;
    assert_int_equal(ckpt_write(path, "fp", &st, a, 2, &err), 0);
    assert_int_equal(ckpt_read(path, "fp", &got, b, 2, &err), 0);
    assert_int_equal(got.step, 43);
    assert_true(w2[0] == 11);
    char *tmp = xasprintf("%s.tmp-%d", path, (int)getpid());
    assert_false(is_file(tmp));
    free(tmp);

    /* One flipped byte and a truncation are refused. */
    char *data;
    size_t len;
    assert_int_equal(file_read_all(path, &data, &len), 0);
    data[len / 2] ^= 1;
    assert_int_equal(file_write_all(path, data, len), 0);
    assert_int_equal(ckpt_read(path, "fp", &got, b, 2, &err), -1);
    assert_non_null(strstr(err, "corrupt"));
    data[len / 2] ^= 1;
    assert_int_equal(file_write_all(path, data, len - 9), 0);
    assert_int_equal(ckpt_read(path, "fp", &got, b, 2, &err), -1);
    assert_int_equal(file_write_all(path, "garbage!", 8), 0);
    assert_int_equal(ckpt_read(path, "fp", &got, b, 2, &err), -1);
    assert_non_null(strstr(err, "not a trainer checkpoint"));
    free(data);
    free(err);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_and_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
