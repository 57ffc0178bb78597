/*
 * test_rmsnorm: rmsnorm_cpu against rmsnorm_ref on fresh random rows (n odd and even, small
 * and large, with and without weight, in place), NaN propagation and dispatch errors.
 *
 * Tolerance: the reference sums squares in double and rounds 1/sqrt once; the fast kernel sums
 * in fp32 (relative error <= gamma_n), then divides and takes a square root (2 roundings), so
 * the scale factor is off by at most gamma_n / 2 + 2u relatively, and both then round x * inv
 * and w * (.) the same way (2u more). Allowed: |d| <= 2 (n/2 + 6) u |ref|, u = 2^-24.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/par.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/check.h"
#include "tests/kernels/special_cases.h"

static int run_case(int rows, int n, int with_w, int inplace)
{
    char what[128];
    snprintf(what, sizeof(what), "rmsnorm rows=%d n=%d w=%d inplace=%d", rows, n, with_w, inplace);
    size_t tot = (size_t)rows * n;
    float *x = malloc(sizeof(float) * tot), *w = malloc(sizeof(float) * n);
    float *ref = malloc(sizeof(float) * tot), *got = check_buf_new(tot);
    assert_true(x && w && ref);
    float sc = check_uniform(0.01f, 100.0f);
    check_fill_normal(x, tot, sc);
    for (int i = 0; i < n; i++)
        w[i] = 1.0f + 0.1f * check_normal();
    const float eps = 1e-5f;
    rmsnorm_ref(ref, x, with_w ? w : NULL, rows, n, eps);
    if (inplace) {
        memcpy(got, x, sizeof(float) * tot);
        assert_int_equal(rmsnorm(KERN_IMPL_CPU, got, got, with_w ? w : NULL, rows, n, eps), 0);
    } else {
        assert_int_equal(rmsnorm(KERN_IMPL_CPU, got, x, with_w ? w : NULL, rows, n, eps), 0);
    }
    const double u = 1.0 / 16777216.0;
    struct check_tol tol = { 1e-9, 1e-37, 2.0 * (n / 2.0 + 6.0) * u }; /* NMSE: backstop */
    int rc = check_close(what, got, ref, tot, &tol, NULL);
    rc |= check_buf_guards(what, got, tot);
    free(x);
    free(w);
    free(ref);
    check_buf_free(got);
    return rc;
}

static void test_rmsnorm_shapes(void **state)
{
    (void)state;
    static const int ns[] = { 1, 7, 8, 64, 100, 256, 2048, 4099 };
    static const int rows[] = { 1, 3, 64, 300 };
    int fails = 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++)
            for (size_t b = 0; b < EXAQ_ARRAY_LEN(rows); b++)
                fails += run_case(rows[b], ns[a], check_rand_int(0, 1), check_rand_int(0, 1)) != 0;
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
}

static void test_rmsnorm_special(void **state)
{
    (void)state;
    rmsnorm_check_special(KERN_IMPL_CPU);
    float x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, y[8];
    assert_cuda_dispatch(rmsnorm(KERN_IMPL_CUDA, y, x, NULL, 1, 8, 1e-5f));
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_shapes),
        cmocka_unit_test(test_rmsnorm_special),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
