/*
 * test_syrk_gpu: the CUDA syrk (kernels/cuda/syrk.cu: cublasSsyrk on the upper triangle, then a
 * mirror) against syrk_ref on fresh random inputs: odd n and T (T = 0 included), alpha/beta
 * combinations, beta == 0 with a NaN-filled H (must not be read); through the device table
 * with guarded device buffers and through syrk(KERN_IMPL_CUDA, ...). The result must be
 * exactly symmetric.
 *
 * Tolerance: fp32 throughout (no TF32), so Higham's bound as in test_syrk:
 * |d| <= 2 gamma_{T+1} (|alpha| sum_t |x_ti x_tj| + |beta h_ij|) + u|ref|, u = 2^-24.
 *
 * Skips (exit 77, "SKIP: no CUDA device (<reason>)") when the backend is unavailable: no
 * libexaq_cuda.so, no driver or no device.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "kernels/syrk.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"

static int check_symmetric(const char *what, const float *H, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (H[(size_t)i * n + j] != H[(size_t)j * n + i]) {
                printf("%s: not symmetric at (%d,%d)\n", what, i, j);
                return -1;
            }
    return 0;
}

static int run_case(int T, int n, float alpha, float beta)
{
    char what[128];
    snprintf(what, sizeof(what), "cuda syrk T=%d n=%d alpha=%g beta=%g", T, n, alpha, beta);
    size_t nn = (size_t)n * n, nx = (size_t)T * n;
    float *X = malloc(sizeof(float) * (nx + 1)), *ax = malloc(sizeof(float) * (nx + 1));
    float *h0 = malloc(sizeof(float) * nn), *ref = malloc(sizeof(float) * nn);
    float *hin = malloc(sizeof(float) * nn);
    float *got = check_buf_new(nn), *bound = malloc(sizeof(float) * nn);
    assert_true(X && ax && h0 && ref && hin && bound);
    check_fill_normal(X, nx, 1.0f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++)
            h0[(size_t)i * n + j] = h0[(size_t)j * n + i] = 10.0f * check_normal();
    memcpy(ref, h0, sizeof(float) * nn);
    syrk_ref(ref, X, T, n, alpha, beta);
    for (size_t i = 0; i < nn; i++)
        hin[i] = beta == 0.0f ? NAN : h0[i]; /* beta == 0 must not read H */
    for (size_t i = 0; i < nx; i++)
        ax[i] = fabsf(X[i]);
    syrk_ref(bound, ax, T, n, 1.0f, 0.0f);
    const double u = 1.0 / 16777216.0, terms = T + 1;
    double gamma = terms * u / (1.0 - terms * u);
    for (size_t i = 0; i < nn; i++)
        bound[i] = (float)(2.0 * gamma * (fabs(alpha) * bound[i] + fabs(beta * h0[i])) +
                           u * fabs(ref[i]) + 1e-30);
    struct check_tol tol = { 1e-9, 0, 0 };

    struct cuda_gbuf dh, dx;
    LDR_OK(cuda_gbuf_new(&dh, nn, hin));
    LDR_OK(cuda_gbuf_new(&dx, nx, X));
    GPU_OK(A->syrk(dh.d, dx.d, T, n, alpha, beta));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dh, got));
    int rc = check_close(what, got, ref, nn, &tol, bound);
    rc |= check_buf_guards(what, got, nn);
    if (rc == 0)
        rc = check_symmetric(what, got, n);
    struct cuda_gbuf *bufs[] = { &dh, &dx };
    rc |= gbufs_done(what, bufs, 2);

    memcpy(got, hin, sizeof(float) * nn);
    assert_int_equal(syrk(KERN_IMPL_CUDA, got, X, T, n, alpha, beta), 0);
    rc |= check_close(what, got, ref, nn, &tol, bound);
    rc |= check_buf_guards(what, got, nn);
    if (rc == 0)
        rc = check_symmetric(what, got, n);
    free(X);
    free(ax);
    free(h0);
    free(ref);
    free(hin);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_syrk_gpu_shapes(void **state)
{
    (void)state;
    static const int ns[] = { 1, 5, 6, 16, 17, 37, 100, 130 };
    static const int Ts[] = { 0, 1, 7, 64, 300 };
    static const float ab[][2] = { { 1.0f, 0.0f }, { 1.0f, 1.0f }, { 0.5f, 0.25f } };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++)
        for (size_t b = 0; b < EXAQ_ARRAY_LEN(Ts); b++) {
            int k = check_rand_int(0, (int)EXAQ_ARRAY_LEN(ab) - 1);
            fails += run_case(Ts[b], ns[a], ab[k][0], ab[k][1]) != 0;
            cases++;
        }
    fails += run_case(256, 512, 1.0f / 256, 1.0f) != 0; /* a running-Hessian update */
    cases++;
    printf("# %d cuda syrk cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_syrk_gpu_errors(void **state)
{
    (void)state;
    float H[4] = { 0 }, X[4] = { 1, 2, 3, 4 };
    assert_int_equal(syrk(KERN_IMPL_CUDA, H, X, 2, 2, 1.0f, 0.0f), 0);
    /* X = [[1,2],[3,4]]: X^T X = [[10,14],[14,20]], exact in fp32. */
    assert_true(H[0] == 10 && H[1] == 14 && H[2] == 14 && H[3] == 20);
    assert_int_equal(syrk(KERN_IMPL_CUDA, H, X, 2, 0, 1.0f, 0.0f), 0);
    assert_int_equal(syrk(KERN_IMPL_CUDA, H, X, -1, 2, 1.0f, 0.0f), -EINVAL);
    assert_int_equal(A->syrk(NULL, X, 2, 2, 1.0f, 0.0f), -EINVAL);
    assert_true(strstr(A->last_error(), "syrk") != NULL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syrk_gpu_shapes),
        cmocka_unit_test(test_syrk_gpu_errors),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
