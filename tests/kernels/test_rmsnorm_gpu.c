/*
 * test_rmsnorm_gpu: the CUDA rmsnorm (kernels/cuda/rmsnorm.cu) against rmsnorm_ref on fresh random
 * rows (n odd and even, small and large, with and without weight, in place), through the
 * device-level table with guarded device buffers (sentinels on both sides, payload NaN-filled)
 * and through the dispatch function rmsnorm(KERN_IMPL_CUDA, ...) with host pointers; NaN
 * propagation, the all-zero row and argument errors.
 *
 * Skips (exit 77, "SKIP: no CUDA device (<reason>)") when the backend is unavailable: no
 * libexaq_cuda.so, no driver or no device.
 *
 * Tolerance: as test_rmsnorm, the kernel sums squares in fp32 (error <= gamma_n in any order,
 * here a strided sum plus a shuffle tree), then divides and takes an IEEE square root:
 * |d| <= 2 (n/2 + 6) u |ref|, u = 2^-24.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"
#include "tests/kernels/special_cases.h"

static int run_case(int rows, int n, int with_w, int inplace)
{
    char what[128];
    snprintf(what, sizeof(what), "cuda rmsnorm rows=%d n=%d w=%d inplace=%d", rows, n, with_w,
             inplace);
    size_t tot = (size_t)rows * n;
    float *x = malloc(sizeof(float) * tot), *w = malloc(sizeof(float) * n);
    float *ref = malloc(sizeof(float) * tot), *got = check_buf_new(tot);
    assert_true(x && w && ref);
    check_fill_normal(x, tot, check_uniform(0.01f, 100.0f));
    for (int i = 0; i < n; i++)
        w[i] = 1.0f + 0.1f * check_normal();
    const float eps = 1e-5f;
    rmsnorm_ref(ref, x, with_w ? w : NULL, rows, n, eps);
    const double u = 1.0 / 16777216.0;
    struct check_tol tol = { 1e-9, 1e-37, 2.0 * (n / 2.0 + 6.0) * u }; /* NMSE: backstop */

    /* Device level, guarded buffers. */
    struct cuda_gbuf dx, dy = { 0 }, dw = { 0 };
    LDR_OK(cuda_gbuf_new(&dx, tot, x));
    if (with_w)
        LDR_OK(cuda_gbuf_new(&dw, (size_t)n, w));
    if (!inplace)
        LDR_OK(cuda_gbuf_new(&dy, tot, NULL));
    float *dout = inplace ? dx.d : dy.d;
    GPU_OK(A->rmsnorm(dout, dx.d, with_w ? dw.d : NULL, rows, n, eps));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(inplace ? &dx : &dy, got));
    int rc = check_close(what, got, ref, tot, &tol, NULL);
    rc |= check_buf_guards(what, got, tot);
    struct cuda_gbuf *bufs[3] = { &dx, &dy, &dw };
    for (int i = 0; i < 3; i++)
        if (bufs[i]->base && cuda_gbuf_check(bufs[i], what) != 0) {
            printf("%s\n", cuda_last_error());
            rc = -1;
        }
    for (int i = 0; i < 3; i++)
        cuda_gbuf_free(bufs[i]);

    /* Dispatch with host pointers (in place when asked). */
    float *got2 = check_buf_new(tot);
    if (inplace) {
        memcpy(got2, x, sizeof(float) * tot);
        assert_int_equal(rmsnorm(KERN_IMPL_CUDA, got2, got2, with_w ? w : NULL, rows, n, eps), 0);
    } else {
        assert_int_equal(rmsnorm(KERN_IMPL_CUDA, got2, x, with_w ? w : NULL, rows, n, eps), 0);
    }
    rc |= check_close(what, got2, ref, tot, &tol, NULL);
    rc |= check_buf_guards(what, got2, tot);
    free(x);
    free(w);
    free(ref);
    check_buf_free(got);
    check_buf_free(got2);
    return rc;
}

static void test_rmsnorm_gpu_shapes(void **state)
{
    (void)state;
    static const int ns[] = { 1, 7, 8, 64, 100, 256, 2048, 4099 };
    static const int rows[] = { 1, 3, 64, 300 };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++)
        for (size_t b = 0; b < EXAQ_ARRAY_LEN(rows); b++) {
            fails += run_case(rows[b], ns[a], check_rand_int(0, 1), check_rand_int(0, 1)) != 0;
            cases++;
        }
    printf("# %d cuda rmsnorm cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_rmsnorm_gpu_special(void **state)
{
    (void)state;
    rmsnorm_check_special(KERN_IMPL_CUDA);
    /* Errors: the table validates too and says why. */
    assert_int_equal(A->rmsnorm(NULL, NULL, NULL, 1, 0, 1e-5f), -EINVAL);
    assert_true(strstr(A->last_error(), "rmsnorm") != NULL);
    assert_int_equal(A->rmsnorm(NULL, NULL, NULL, 0, 8, 1e-5f), 0); /* no rows: no-op */
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_gpu_shapes),
        cmocka_unit_test(test_rmsnorm_gpu_special),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
