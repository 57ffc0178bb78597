/*
 * test_syrk: syrk_cpu (upper-triangle blocked GEMM + mirror) against syrk_ref on fresh random
 * inputs: odd n and T (crossing the 6/16 micro-tile and 256 K-block edges), alpha/beta
 * combinations, 1-3 threads; the result must be exactly symmetric.
 *
 * Tolerance: Higham's dot-product bound, as in test_matmul: |d| <= 2 gamma_{T+1}
 * (|alpha| sum_t |x_ti x_tj| + |beta h_ij|) + u|ref|, u = 2^-24; NMSE < 1e-9.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/par.h"
#include "kernels/syrk.h"
#include "tests/kernels/check.h"

static int run_case(int T, int n, float alpha, float beta)
{
    char what[128];
    snprintf(what, sizeof(what), "syrk T=%d n=%d alpha=%g beta=%g threads=%d", T, n, alpha, beta,
             par_nthreads());
    size_t nn = (size_t)n * n;
    float *X = malloc(sizeof(float) * ((size_t)T * n + 1));
    float *h0 = malloc(sizeof(float) * nn), *ref = malloc(sizeof(float) * nn);
    float *got = check_buf_new(nn), *bound = malloc(sizeof(float) * nn);
    float *ax = malloc(sizeof(float) * ((size_t)T * n + 1));
    assert_true(X && h0 && ref && bound && ax);
    check_fill_normal(X, (size_t)T * n, 1.0f);
    /* H starts symmetric, as a running Hessian does. */
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++)
            h0[(size_t)i * n + j] = h0[(size_t)j * n + i] = 10.0f * check_normal();
    memcpy(ref, h0, sizeof(float) * nn);
    memcpy(got, h0, sizeof(float) * nn);
    if (beta == 0.0f)
        for (size_t i = 0; i < nn; i++)
            got[i] = NAN; /* beta == 0 must not read H */
    assert_int_equal(syrk(KERN_IMPL_CPU, got, X, T, n, alpha, beta), 0);
    assert_int_equal(syrk(KERN_IMPL_REF, ref, X, T, n, alpha, beta), 0);
    for (size_t i = 0; i < (size_t)T * n; i++)
        ax[i] = fabsf(X[i]);
    syrk_ref(bound, ax, T, n, 1.0f, 0.0f);
    const double u = 1.0 / 16777216.0, terms = T + 1;
    double gamma = terms * u / (1.0 - terms * u);
    for (size_t i = 0; i < nn; i++)
        bound[i] = (float)(2.0 * gamma * (fabs(alpha) * bound[i] + fabs(beta * h0[i])) +
                           u * fabs(ref[i]) + 1e-30);
    struct check_tol tol = { 1e-9, 0, 0 };
    int rc = check_close(what, got, ref, nn, &tol, bound);
    rc |= check_buf_guards(what, got, nn);
    for (int i = 0; i < n && rc == 0; i++)
        for (int j = 0; j < i; j++)
            if (got[(size_t)i * n + j] != got[(size_t)j * n + i]) {
                printf("%s: not symmetric at (%d,%d)\n", what, i, j);
                rc = -1;
                break;
            }
    free(X);
    free(h0);
    free(ref);
    check_buf_free(got);
    free(bound);
    free(ax);
    return rc;
}

static void test_syrk_shapes(void **state)
{
    (void)state;
    static const int ns[] = { 1, 5, 6, 16, 17, 37, 100, 130 };
    static const int Ts[] = { 0, 1, 7, 64, 300 };
    int fails = 0, cases = 0;
    for (int th = 1; th <= 3; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
            int T = Ts[check_rand_int(0, (int)EXAQ_ARRAY_LEN(Ts) - 1)];
            float alpha = check_uniform(-2.0f, 2.0f);
            float beta = check_rand_int(0, 2) == 0 ? 0.0f : check_uniform(-1.0f, 1.0f);
            fails += run_case(T, ns[a], alpha, beta) != 0;
            cases++;
        }
        fails += run_case(300, 130, 1.0f, 1.0f) != 0;
        fails += run_case(513, 67, 0.5f, 0.0f) != 0;
        cases += 2;
    }
    par_set_nthreads(0);
    printf("# %d syrk cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_syrk_errors(void **state)
{
    (void)state;
    float H[4], X[4] = { 1, 2, 3, 4 };
    assert_cuda_dispatch(syrk(KERN_IMPL_CUDA, H, X, 2, 2, 1.0f, 0.0f));
    assert_int_equal(syrk(KERN_IMPL_CPU, H, X, -1, 2, 1.0f, 0.0f), -EINVAL);
    assert_int_equal(syrk(KERN_IMPL_CPU, NULL, X, 2, 2, 1.0f, 0.0f), -EINVAL);
    /* X = [[1,2],[3,4]]: X^T X = [[10,14],[14,20]]. */
    assert_int_equal(syrk(KERN_IMPL_CPU, H, X, 2, 2, 1.0f, 0.0f), 0);
    assert_true(H[0] == 10 && H[1] == 14 && H[2] == 14 && H[3] == 20);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syrk_shapes),
        cmocka_unit_test(test_syrk_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
