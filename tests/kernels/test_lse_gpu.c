/*
 * test_lse_gpu: the CUDA lse (kernels/cuda/lse.cu) against lse_ref on fresh random rows of logits
 * (odd widths up to a 102400 vocabulary, large offsets), through the device table with guarded
 * device buffers and through lse(KERN_IMPL_CUDA, ...); rows of -inf, +inf and NaN.
 *
 * Tolerance: the kernel does the reference's arithmetic (double exp of x - m, double sums, one
 * rounding to fp32) except for the summation order, so it is within a few u of lse_ref; we keep
 * test_lse's bound |d| <= 2 (40 u + u |ref|), u = 2^-24.
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
#include "kernels/lse.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"
#include "tests/kernels/special_cases.h"

static int run_case(int rows, int n, float offset, float scale)
{
    char what[128];
    snprintf(what, sizeof(what), "cuda lse rows=%d n=%d offset=%g scale=%g", rows, n, offset,
             scale);
    size_t tot = (size_t)rows * n;
    float *x = malloc(sizeof(float) * tot), *ref = malloc(sizeof(float) * rows);
    float *got = check_buf_new(rows), *bound = malloc(sizeof(float) * rows);
    assert_true(x && ref && bound);
    for (size_t i = 0; i < tot; i++)
        x[i] = offset + scale * check_normal();
    lse_ref(ref, x, rows, n);
    const double u = 1.0 / 16777216.0;
    for (int r = 0; r < rows; r++)
        bound[r] = (float)(2.0 * (40 * u + u * fabs(ref[r])));
    struct check_tol tol = { 1e-6, 0, 0 };

    struct cuda_gbuf dx, dout;
    LDR_OK(cuda_gbuf_new(&dx, tot, x));
    LDR_OK(cuda_gbuf_new(&dout, (size_t)rows, NULL));
    GPU_OK(A->lse(dout.d, dx.d, rows, n));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dout, got));
    int rc = check_close(what, got, ref, rows, &tol, bound);
    rc |= check_buf_guards(what, got, rows);
    struct cuda_gbuf *bufs[] = { &dx, &dout };
    rc |= gbufs_done(what, bufs, 2);

    assert_int_equal(lse(KERN_IMPL_CUDA, got, x, rows, n), 0);
    rc |= check_close(what, got, ref, rows, &tol, bound);
    rc |= check_buf_guards(what, got, rows);
    free(x);
    free(ref);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_lse_gpu_vs_ref(void **state)
{
    (void)state;
    static const int ns[] = { 1, 7, 16, 33, 255, 257, 4096, 102400 };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
        int rows = ns[a] > 5000 ? 3 : check_rand_int(1, 40);
        fails += run_case(rows, ns[a], check_uniform(-50, 50), check_uniform(0.1f, 8.0f)) != 0;
        cases++;
    }
    fails += run_case(64, 4096, 0.0f, 3.0f) != 0;
    cases++;
    printf("# %d cuda lse cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_lse_gpu_special(void **state)
{
    (void)state;
    lse_check_special(KERN_IMPL_CUDA);
    float x[4 * 9] = { 0 }, out[4];
    assert_int_equal(A->lse(out, x, 4, 0), -EINVAL);
    assert_true(strstr(A->last_error(), "lse") != NULL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lse_gpu_vs_ref),
        cmocka_unit_test(test_lse_gpu_special),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
