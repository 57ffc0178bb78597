/*
 * test_lse: lse_cpu (row log-sum-exp) against lse_ref on fresh random rows of logits (odd
 * widths up to a 102400 vocabulary, large offsets), plus rows with -inf, +inf and NaN.
 *
 * Tolerance: with m the row max (exact in both), each exp is within 4u (see test_swiglu) and
 * the fast kernel adds at most 32 of them per fp32 lane before moving to double (512-value
 * chunks in 16 lanes), so the sum is off by at most (4 + 32 + 2) u relative; log turns that into
 * the same absolute error, and adding m and rounding to fp32 costs u|ref|. Allowed:
 * |d| <= 2 (40 u + u |ref|). NMSE is only a gross-error backstop (lse values near 0 make it a
 * relative measure of tiny numbers), observed ~1e-14.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/lse.h"
#include "kernels/par.h"
#include "tests/kernels/check.h"
#include "tests/kernels/special_cases.h"

static int run_case(int rows, int n, float offset, float scale)
{
    char what[128];
    snprintf(what, sizeof(what), "lse rows=%d n=%d offset=%g scale=%g", rows, n, offset, scale);
    size_t tot = (size_t)rows * n;
    float *x = malloc(sizeof(float) * tot), *ref = malloc(sizeof(float) * rows);
    float *got = check_buf_new(rows), *bound = malloc(sizeof(float) * rows);
    assert_true(x && ref && bound);
    for (size_t i = 0; i < tot; i++)
        x[i] = offset + scale * check_normal();
    lse_ref(ref, x, rows, n);
    assert_int_equal(lse(KERN_IMPL_CPU, got, x, rows, n), 0);
    const double u = 1.0 / 16777216.0;
    for (int r = 0; r < rows; r++)
        bound[r] = (float)(2.0 * (40 * u + u * fabs(ref[r])));
    struct check_tol tol = { 1e-6, 0, 0 };
    int rc = check_close(what, got, ref, rows, &tol, bound);
    rc |= check_buf_guards(what, got, rows);
    free(x);
    free(ref);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_lse_vs_ref(void **state)
{
    (void)state;
    static const int ns[] = { 1, 7, 16, 33, 4096, 102400 };
    int fails = 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
            int rows = ns[a] > 5000 ? 3 : check_rand_int(1, 40);
            fails += run_case(rows, ns[a], check_uniform(-50, 50), check_uniform(0.1f, 8.0f)) != 0;
        }
        fails += run_case(64, 4096, 0.0f, 3.0f) != 0; /* parallel path */
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
}

static void test_lse_special(void **state)
{
    (void)state;
    lse_check_special(KERN_IMPL_CPU);
    float x[9] = { 0 }, out[4];
    assert_cuda_dispatch(lse(KERN_IMPL_CUDA, out, x, 1, 9));
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lse_vs_ref),
        cmocka_unit_test(test_lse_special),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
