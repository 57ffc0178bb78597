/*
 * test_swiglu: swiglu_cpu against swiglu_ref on fresh random gates/ups (odd lengths, large
 * magnitudes, in place), the vector exp of kernels/vmath.h against exp() in double over its
 * whole range, and the special values.
 *
 * Tolerances: v8_exp is within 2 ulp (4u relative, u = 2^-24; measured max is printed); silu
 * g / (1 + e) has relative sensitivity e / (1 + e) <= 1 to the exp error, then the add, the
 * divide and the product by u round once each, and the reference rounds once: |d| <= (4 + 4) u
 * |ref| in exact arithmetic; we allow 16u|ref| + 1e-36 (1 + |u|): for g < -88.72, exp(-g)
 * overflows fp32 (as in torch's fp32 silu) and the fast result is 0 where the double reference
 * is |g| e^g |u| < 2.7e-37 |u|.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/par.h"
#include "kernels/swiglu.h"
#include "tests/kernels/check.h"

static const double U = 1.0 / 16777216.0;

static int run_case(size_t n, float gscale, int inplace)
{
    char what[128];
    snprintf(what, sizeof(what), "swiglu n=%zu gscale=%g inplace=%d", n, gscale, inplace);
    float *g = malloc(sizeof(float) * n + 4), *u = malloc(sizeof(float) * n + 4);
    float *ref = malloc(sizeof(float) * n + 4), *got = check_buf_new(n);
    assert_true(g && u && ref);
    check_fill_normal(g, n, gscale);
    check_fill_normal(u, n, 1.0f);
    swiglu_ref(ref, g, u, n);
    if (inplace) {
        memcpy(got, g, sizeof(float) * n);
        assert_int_equal(swiglu(KERN_IMPL_CPU, got, got, u, n), 0);
    } else {
        assert_int_equal(swiglu(KERN_IMPL_CPU, got, g, u, n), 0);
    }
    struct check_tol tol = { 1e-9, 0, 0 }; /* NMSE: backstop */
    float *bound = malloc(sizeof(float) * n + 4);
    assert_non_null(bound);
    for (size_t i = 0; i < n; i++)
        bound[i] = (float)(16 * U * fabs(ref[i]) + 1e-36 * (1 + fabs(u[i])));
    int rc = check_close(what, got, ref, n, &tol, bound);
    free(bound);
    rc |= check_buf_guards(what, got, n);
    free(g);
    free(u);
    free(ref);
    check_buf_free(got);
    return rc;
}

static void test_swiglu_vs_ref(void **state)
{
    (void)state;
    static const size_t ns[] = { 1, 7, 8, 9, 1000, 16385, 100003 };
    int fails = 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
            fails += run_case(ns[a], 3.0f, check_rand_int(0, 1)) != 0;
            fails += run_case(ns[a], 40.0f, 0) != 0;
        }
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
}

static void test_vexp_accuracy(void **state)
{
    (void)state;
    enum { N = 200000 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    assert_true(x && y);
    for (int i = 0; i < N; i++)
        x[i] = check_uniform(-87.3f, 88.3f);
    x[0] = 0.0f;
    x[1] = -87.3f;
    x[2] = 88.3f;
    x[3] = 1e-7f;
    kern_vexp(y, x, N);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double e = exp((double)x[i]);
        double rel = fabs(y[i] - e) / e;
        if (rel > worst)
            worst = rel;
    }
    printf("# v8_exp max relative error %.3g (= %.2f u)\n", worst, worst / U);
    assert_true(worst <= 4 * U);
    float sp[8] = { -INFINITY, -1000.0f, -88.0f, 0.0f, 89.0f, INFINITY, NAN, -0.0f }, r[8];
    kern_vexp(r, sp, 8);
    assert_true(r[0] == 0.0f && r[1] == 0.0f);
    assert_true(r[2] >= 0.0f && r[2] < 1e-37f);
    assert_true(r[3] == 1.0f && r[7] == 1.0f);
    assert_true(r[4] == INFINITY);
    assert_true(r[5] == INFINITY);
    assert_true(isnan(r[6]));
    free(x);
    free(y);
}

static void test_swiglu_special(void **state)
{
    (void)state;
    float g[9] = { 0.0f, -200.0f, 200.0f, 1.0f, -1.0f, 3.0f, -3.0f, 0.5f, 100.0f };
    float u[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 2 }, h[9];
    assert_int_equal(swiglu(KERN_IMPL_CPU, h, g, u, 9), 0);
    assert_true(h[0] == 0.0f);
    assert_true(h[1] <= 0.0f && h[1] > -1e-30f); /* silu(-200) = -200 e^-200 ~ -0 */
    assert_true(h[2] == 200.0f);
    assert_true(fabsf(h[3] - 0.7310585786f) < 1e-6f);
    assert_true(fabsf(h[4] + 0.2689414214f) < 1e-6f);
    assert_true(h[8] == 200.0f);
    assert_cuda_dispatch(swiglu(KERN_IMPL_CUDA, h, g, u, 9));
    assert_int_equal(swiglu(KERN_IMPL_CPU, NULL, g, u, 9), -EINVAL);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swiglu_vs_ref),
        cmocka_unit_test(test_vexp_accuracy),
        cmocka_unit_test(test_swiglu_special),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
