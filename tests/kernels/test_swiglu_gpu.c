/*
 * test_swiglu_gpu: the CUDA swiglu (kernels/cuda/swiglu.cu) against swiglu_ref on fresh random
 * gates/ups (odd lengths up to 100003, large magnitudes, in place), through the device table
 * with guarded device buffers and through swiglu(KERN_IMPL_CUDA, ...); special values. Also the
 * residual add (y += x), bit for bit against the C sum.
 *
 * Tolerance: as test_swiglu. CUDA's expf is within 2 ulp (CUDA C Programming Guide, "Mathematical
 * Functions": expf maximum ulp error 2, without -use_fast_math), then the add, the divide and
 * the product by u round once each: |d| <= 8u|ref|; we allow 16u|ref| + 1e-36 (1 + |u|) (for
 * g < -88.72 exp(-g) overflows fp32 and the result is 0 where the reference is < 2.7e-37 |u|).
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
#include "kernels/swiglu.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"

static const double U = 1.0 / 16777216.0;

static int run_case(size_t n, float gscale, int inplace)
{
    char what[128];
    snprintf(what, sizeof(what), "cuda swiglu n=%zu gscale=%g inplace=%d", n, gscale, inplace);
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
    float *ref = malloc(sizeof(float) * n), *got = check_buf_new(n);
    float *bound = malloc(sizeof(float) * n);
    assert_true(g && u && ref && bound);
    check_fill_normal(g, n, gscale);
    check_fill_normal(u, n, 1.0f);
    swiglu_ref(ref, g, u, n);
    for (size_t i = 0; i < n; i++)
        bound[i] = (float)(16 * U * fabs(ref[i]) + 1e-36 * (1 + fabs(u[i])));
    struct check_tol tol = { 1e-9, 0, 0 }; /* NMSE: backstop */

    struct cuda_gbuf dg, du, dh = { 0 };
    LDR_OK(cuda_gbuf_new(&dg, n, g));
    LDR_OK(cuda_gbuf_new(&du, n, u));
    if (!inplace)
        LDR_OK(cuda_gbuf_new(&dh, n, NULL));
    GPU_OK(A->swiglu(inplace ? dg.d : dh.d, dg.d, du.d, n));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(inplace ? &dg : &dh, got));
    int rc = check_close(what, got, ref, n, &tol, bound);
    rc |= check_buf_guards(what, got, n);
    struct cuda_gbuf *bufs[] = { &dg, &du, &dh };
    rc |= gbufs_done(what, bufs, 3);

    if (inplace) {
        memcpy(got, g, sizeof(float) * n);
        assert_int_equal(swiglu(KERN_IMPL_CUDA, got, got, u, n), 0);
    } else {
        assert_int_equal(swiglu(KERN_IMPL_CUDA, got, g, u, n), 0);
    }
    rc |= check_close(what, got, ref, n, &tol, bound);
    rc |= check_buf_guards(what, got, n);
    free(g);
    free(u);
    free(ref);
    free(bound);
    check_buf_free(got);
    return rc;
}

static void test_swiglu_gpu_vs_ref(void **state)
{
    (void)state;
    static const size_t ns[] = { 1, 7, 8, 9, 1000, 16385, 100003 };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
        fails += run_case(ns[a], 3.0f, check_rand_int(0, 1)) != 0;
        fails += run_case(ns[a], 40.0f, 0) != 0;
        cases += 2;
    }
    printf("# %d cuda swiglu cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_swiglu_gpu_special(void **state)
{
    (void)state;
    float g[12] = { 0.0f,  -200.0f, 200.0f, 1.0f,     -1.0f,     3.0f,
                    -3.0f, 0.5f,    100.0f, INFINITY, -INFINITY, NAN };
    float u[12] = { 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1 }, h[12], r[12];
    assert_int_equal(swiglu(KERN_IMPL_CUDA, h, g, u, 12), 0);
    swiglu_ref(r, g, u, 12);
    assert_true(h[0] == 0.0f);
    assert_true(h[1] <= 0.0f && h[1] > -1e-30f); /* silu(-200) = -200 e^-200 ~ -0 */
    assert_true(h[2] == 200.0f);
    assert_true(fabsf(h[3] - 0.7310585786f) < 1e-6f);
    assert_true(fabsf(h[4] + 0.2689414214f) < 1e-6f);
    assert_true(h[8] == 200.0f);
    /* inf / (1 + 0) = inf; -inf / inf = NaN; NaN stays NaN: the reference agrees. */
    assert_true(h[9] == INFINITY && r[9] == INFINITY);
    assert_true(isnan(h[10]) && isnan(r[10]));
    assert_true(isnan(h[11]) && isnan(r[11]));
    assert_int_equal(swiglu(KERN_IMPL_CUDA, NULL, g, u, 9), -EINVAL);
    assert_int_equal(A->swiglu(NULL, g, u, 9), -EINVAL);
    assert_int_equal(swiglu(KERN_IMPL_CUDA, h, g, u, 0), 0);
}

/* add: y += x, one fp32 addition per element, so bit-identical to the C loop. */
static void test_add_gpu(void **state)
{
    (void)state;
    static const size_t ns[] = { 1, 9, 1000, 100003 };
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
        size_t n = ns[a];
        float *y = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n);
        float *ref = malloc(sizeof(float) * n), *got = check_buf_new(n);
        assert_true(y && x && ref);
        check_fill_normal(y, n, 3.0f);
        check_fill_normal(x, n, 1e-3f);
        if (n > 3) {
            x[0] = INFINITY;
            y[1] = NAN;
            x[2] = -y[2]; /* exact cancellation: +0 */
        }
        for (size_t i = 0; i < n; i++)
            ref[i] = y[i] + x[i];
        struct cuda_gbuf dy, dx;
        LDR_OK(cuda_gbuf_new(&dy, n, y));
        LDR_OK(cuda_gbuf_new(&dx, n, x));
        GPU_OK(A->add(dy.d, dx.d, n));
        LDR_OK(cuda_gbuf_get(&dy, got));
        for (size_t i = 0; i < n; i++)
            if (memcmp(&got[i], &ref[i], sizeof(float)) && !(isnan(got[i]) && isnan(ref[i])))
                fail_msg("add n=%zu: [%zu] %.9g + %.9g gave %.9g, expected %.9g", n, i, y[i], x[i],
                         got[i], ref[i]);
        assert_int_equal(check_buf_guards("add", got, n), 0);
        struct cuda_gbuf *bufs[] = { &dy, &dx };
        assert_int_equal(gbufs_done("add", bufs, 2), 0);
        free(y);
        free(x);
        free(ref);
        check_buf_free(got);
    }
    assert_int_equal(A->add(NULL, NULL, 4), -EINVAL);
    assert_int_equal(A->add(NULL, NULL, 0), 0);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swiglu_gpu_vs_ref),
        cmocka_unit_test(test_swiglu_gpu_special),
        cmocka_unit_test(test_add_gpu),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
