/*
 * test_matmul: matmul_cpu (GEMV and packed-GEMM paths) against matmul_ref on fresh random
 * inputs, for F32/BF16/F16 weights, odd shapes, accumulate on and off, several thread counts;
 * plus NaN propagation and the dispatch's error returns.
 *
 * Tolerance: the reference sums in double, so the difference is the fast kernel's fp32
 * rounding. For any summation order (blocking, FMA) the error of a K-term dot product is at
 * most gamma_K * sum_k |x_k w_k| with gamma_K = K u / (1 - K u), u = 2^-24 (Higham, Accuracy
 * and Stability of Numerical Algorithms, 2nd ed., eq. 3.5); with accumulate the old y is one
 * more term. We allow that bound times 2, plus u|ref| for rounding the reference to fp32. NMSE
 * must stay under 1e-9 (observed ~1e-14).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "tests/kernels/check.h"
#include "tests/kernels/mm_test.h"

static int run_case(enum kern_dtype dt, int T, int out, int in, int accumulate)
{
    char what[128];
    snprintf(what, sizeof(what), "matmul dt=%d T=%d out=%d in=%d acc=%d threads=%d", (int)dt, T,
             out, in, accumulate, par_nthreads());
    float *x = malloc(sizeof(float) * (size_t)T * in);
    float *wf = malloc(sizeof(float) * (size_t)out * in);
    assert_non_null(x);
    assert_non_null(wf);
    check_fill_normal(x, (size_t)T * in, 1.0f);
    void *w = mm_make_weights(dt, out, in, wf);
    struct linear L;
    linear_init_dense(&L, out, in, dt, w);

    size_t ny = (size_t)T * out;
    float *y0 = malloc(sizeof(float) * ny);
    float *got = check_buf_new(ny), *ref = malloc(sizeof(float) * ny);
    assert_non_null(y0);
    assert_non_null(ref);
    check_fill_normal(y0, ny, 4.0f);
    if (accumulate) {
        memcpy(got, y0, sizeof(float) * ny);
        memcpy(ref, y0, sizeof(float) * ny);
    }
    assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T, &L, accumulate), 0);
    assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, accumulate), 0);

    /* Higham bound from |x| and |W| in fp32 (exact weights), see the file comment. */
    float *bound = mm_bound_new(x, wf, y0, ref, T, out, in, accumulate, 0, 2.0);
    struct check_tol tol = { 1e-9, 0, 0 };
    int rc = check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);
    free(x);
    free(wf);
    free(w);
    free(y0);
    check_buf_free(got);
    free(ref);
    free(bound);
    return rc;
}

static void test_matmul_shapes(void **state)
{
    (void)state;
    static const int Ts[] = { 1, 2, 3, 4, 5, 7, 13, 64, 131 };
    static const int outs[] = { 1, 5, 16, 17, 33, 100 };
    static const int ins[] = { 1, 7, 16, 33, 130, 300, 515 };
    static const int threads[] = { 1, 2, 3 };
    int fails = 0, cases = 0;
    for (size_t th = 0; th < EXAQ_ARRAY_LEN(threads); th++) {
        par_set_nthreads(threads[th]);
        for (int dt = 0; dt < 3; dt++) {
            for (size_t a = 0; a < EXAQ_ARRAY_LEN(Ts); a++) {
                /* A random (out, in) pair per T keeps the run short but covers all sizes over
                 * runs; the largest shapes always run once. */
                int out = outs[check_rand_int(0, (int)EXAQ_ARRAY_LEN(outs) - 1)];
                int in = ins[check_rand_int(0, (int)EXAQ_ARRAY_LEN(ins) - 1)];
                fails += run_case((enum kern_dtype)dt, Ts[a], out, in, check_rand_int(0, 1)) != 0;
                cases++;
            }
            fails += run_case((enum kern_dtype)dt, 131, 100, 515, 0) != 0;
            fails += run_case((enum kern_dtype)dt, 3, 100, 515, 1) != 0;
            cases += 2;
        }
    }
    par_set_nthreads(0);
    printf("# %d matmul cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_matmul_nan_inf(void **state)
{
    (void)state;
    const int T = 8, out = 20, in = 40;
    float x[8 * 40], w[20 * 40], got[8 * 20], ref[8 * 20];
    check_fill_normal(x, (size_t)T * in, 1.0f);
    check_fill_normal(w, (size_t)out * in, 1.0f);
    x[3 * in + 5] = NAN;      /* row 3 of y becomes NaN */
    w[7 * in + 1] = INFINITY; /* column 7 becomes +-inf (or NaN where x is NaN) */
    struct linear L;
    linear_init_dense(&L, out, in, KERN_F32, w);
    for (int t = 1; t <= 2; t++) {
        int T2 = t == 1 ? 1 : T; /* GEMV and GEMM paths */
        assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T2, &L, 0), 0);
        assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T2, &L, 0), 0);
        for (int i = 0; i < T2 * out; i++) {
            if (isnan(ref[i]))
                assert_true(isnan(got[i]));
            else if (isinf(ref[i]))
                assert_true(got[i] == ref[i]);
        }
        if (T2 == T) {
            assert_true(isnan(ref[3 * out + 0]));
            assert_true(isinf(ref[0 * out + 7]));
        }
    }
}

static void test_matmul_dispatch_errors(void **state)
{
    (void)state;
    float x[4] = { 1, 2, 3, 4 }, y[4];
    float w[4] = { 1, 0, 0, 1 };
    struct linear L;
    linear_init_dense(&L, 2, 2, KERN_F32, w);
    assert_cuda_dispatch(matmul(KERN_IMPL_CUDA, y, x, 2, &L, 0));
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, -1, &L, 0), -EINVAL);
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 1, NULL, 0), -EINVAL);
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 0, &L, 0), 0);
    L.fmt = (enum linear_fmt)7;
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 2, &L, 0), -ENOSYS);
    L.fmt = LINEAR_FMT_DENSE;
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 2, &L, 0), 0);
    assert_true(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[3] == 4);
    /* linear_to_f32 round-trips every dtype exactly. */
    uint16_t hb[4];
    for (int i = 0; i < 4; i++)
        hb[i] = kern_f32_to_bf16(w[i] * 1.5f);
    float back[4];
    linear_init_dense(&L, 2, 2, KERN_BF16, hb);
    assert_int_equal(linear_to_f32(&L, back), 0);
    for (int i = 0; i < 4; i++)
        assert_true(back[i] == w[i] * 1.5f);
}

static void test_conversions(void **state)
{
    (void)state;
    /* Every f16 bit pattern survives f16 -> f32 -> f16 (NaN payloads aside). */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(kern_f32_to_f16(f), h);
    }
    /* Every bf16 pattern likewise. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kern_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        assert_int_equal(kern_f32_to_bf16(f), h);
    }
    /* Round to nearest even at the halfway point. */
    assert_int_equal(kern_f32_to_bf16(kern_bits_to_f32(0x3f808000u)), 0x3f80);
    assert_int_equal(kern_f32_to_bf16(kern_bits_to_f32(0x3f818000u)), 0x3f82);
    assert_true(kern_f16_to_f32(kern_f32_to_f16(70000.0f)) == INFINITY);
    assert_true(kern_f8e4m3_to_f32(0x7e) == 448.0f);
    assert_true(isnan(kern_f8e4m3_to_f32(0x7f)));
    assert_true(kern_f8e4m3_to_f32(0x01) == 1.0f / 512.0f);
    assert_true(kern_f8e4m3_to_f32(0xb8) == -1.0f);
    assert_true(kern_f8e5m2_to_f32(0x3c) == 1.0f);
    assert_true(kern_f8e5m2_to_f32(0x7c) == INFINITY);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_shapes),
        cmocka_unit_test(test_matmul_nan_inf),
        cmocka_unit_test(test_matmul_dispatch_errors),
        cmocka_unit_test(test_conversions),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
