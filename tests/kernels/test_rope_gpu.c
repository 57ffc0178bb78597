/*
 * test_rope_gpu: the CUDA rope (kernels/cuda/rope.cu) against rope_ref (NeoX half-split rotation)
 * on fresh random q/k blocks, head dims 2..256, positions up to 70000, fp32 and bf16 cos/sin;
 * through the device table with guarded device buffers and through rope(KERN_IMPL_CUDA, ...);
 * position 0 is the identity; argument errors.
 *
 * Tolerance: as test_rope. The kernel rounds each product and difference exactly as the C
 * expression (no FMA contraction) from the same fp32 angle; its double cos/sin (<= 2 ulp in
 * double) can round to a different fp32 value only in rare double-rounding cases, 1 ulp, so
 * |d| <= 2u(|x1| + |x2|); we allow 4u(|x1| + |x2|), u = 2^-24.
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
#include "kernels/rope.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"

static void make_inv(float *inv, int hd, double theta)
{
    for (int i = 0; i < hd / 2; i++)
        inv[i] = (float)(1.0 / pow(theta, (2.0 * i) / hd));
}

static int run_case(int T, int nh, int hd, int pos0, int cs_bf16)
{
    char what[128];
    snprintf(what, sizeof(what), "cuda rope T=%d nh=%d hd=%d pos0=%d bf16=%d", T, nh, hd, pos0,
             cs_bf16);
    size_t n = (size_t)T * nh * hd;
    float *x = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    float *got = check_buf_new(n), *bound = malloc(sizeof(float) * n);
    float inv[128];
    assert_true(x && ref && bound);
    make_inv(inv, hd, 1e6);
    check_fill_normal(x, n, 3.0f);
    memcpy(ref, x, sizeof(float) * n);
    rope_ref(ref, T, nh, hd, pos0, inv, cs_bf16);
    const double u = 1.0 / 16777216.0;
    int half = hd / 2;
    for (size_t r = 0; r < n / hd; r++)
        for (int i = 0; i < half; i++) {
            float b = (float)(4.0 * u * (fabs(x[r * hd + i]) + fabs(x[r * hd + i + half])));
            bound[r * hd + i] = bound[r * hd + i + half] = b + 1e-37f;
        }
    struct check_tol tol = { 1e-9, 0, 0 }; /* NMSE: gross-error backstop */

    struct cuda_gbuf dx, df;
    LDR_OK(cuda_gbuf_new(&dx, n, x));
    LDR_OK(cuda_gbuf_new(&df, (size_t)half, inv));
    GPU_OK(A->rope(dx.d, T, nh, hd, pos0, df.d, cs_bf16));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dx, got));
    int rc = check_close(what, got, ref, n, &tol, bound);
    rc |= check_buf_guards(what, got, n);
    struct cuda_gbuf *bufs[] = { &dx, &df };
    rc |= gbufs_done(what, bufs, 2);

    memcpy(got, x, sizeof(float) * n);
    assert_int_equal(rope(KERN_IMPL_CUDA, got, T, nh, hd, pos0, inv, cs_bf16), 0);
    rc |= check_close(what, got, ref, n, &tol, bound);
    rc |= check_buf_guards(what, got, n);
    free(x);
    free(ref);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_rope_gpu_vs_ref(void **state)
{
    (void)state;
    static const int hds[] = { 2, 8, 10, 64, 128, 256 };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(hds); a++) {
        fails += run_case(check_rand_int(1, 40), check_rand_int(1, 5), hds[a],
                          check_rand_int(0, 70000), check_rand_int(0, 1)) != 0;
        fails += run_case(300, 4, hds[a], 0, 0) != 0;
        fails += run_case(17, 3, hds[a], 65000, 1) != 0;
        cases += 3;
    }
    printf("# %d cuda rope cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_rope_gpu_definition(void **state)
{
    (void)state;
    const int hd = 64;
    float inv[32], q[64], x[64];
    make_inv(inv, hd, 1e4);
    check_fill_normal(q, hd, 1.0f);
    memcpy(x, q, sizeof(q));
    assert_int_equal(rope(KERN_IMPL_CUDA, x, 1, 1, hd, 0, inv, 0), 0);
    for (int i = 0; i < hd; i++)
        assert_true(x[i] == q[i]); /* position 0: cos = 1, sin = 0 */
    assert_int_equal(rope(KERN_IMPL_CUDA, x, 1, 1, 63, 0, inv, 0), -EINVAL);
    assert_int_equal(A->rope(x, 1, 1, 63, 0, inv, 0), -EINVAL); /* rejected before any access */
    assert_true(strstr(A->last_error(), "rope") != NULL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_gpu_vs_ref),
        cmocka_unit_test(test_rope_gpu_definition),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
