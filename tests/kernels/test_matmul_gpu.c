/*
 * test_matmul_gpu: the CUDA matmul (kernels/cuda/matmul.cu, cuBLAS) against matmul_ref on fresh
 * random inputs: F32/BF16/F16 weights, odd shapes, T from 1 (decode) to 131, accumulate on and
 * off, one shape large enough (4200 x 4096) to be widened in two scratch chunks; through the
 * device table with guarded device buffers and through matmul(KERN_IMPL_CUDA, ...). Also the
 * bf16-activation variant (matmul_bf16) against matmul_ref on the bf16-rounded x, NaN/inf
 * propagation, and the dispatch's answers for a small quantized weight and bad arguments.
 *
 * Tolerance (v1): every product and sum is fp32 (no TF32: CUBLAS_DEFAULT_MATH), so Higham's
 * dot-product bound holds for cuBLAS's order: |d| <= 2 gamma_K sum |x_k w_k| (+ |y0| with
 * accumulate) + u|ref|, K = in (+1), u = 2^-24, as test_matmul.
 * Tolerance (bf16 variant): products of bf16 values are exact in fp32; tensor cores add them
 * with an alignment and truncation that costs up to about 2u per addition (Fasi, Higham,
 * Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021), i.e. about
 * twice gamma_K, so we allow 8 gamma_K sum |x_k w_k| + u|ref| against the reference on the
 * rounded x.
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
#include "kernels/matmul.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"
#include "tests/kernels/mm_test.h"

/* variant 0: matmul (exact fp32 semantics), 1: matmul_bf16 (x rounded to bf16). */
static int run_case(enum kern_dtype dt, int T, int out, int in, int accumulate, int variant)
{
    char what[160];
    snprintf(what, sizeof(what), "cuda matmul%s dt=%d T=%d out=%d in=%d acc=%d",
             variant ? "_bf16" : "", (int)dt, T, out, in, accumulate);
    size_t nx = (size_t)T * in, ny = (size_t)T * out;
    float *x = malloc(sizeof(float) * (nx + 1)),
          *wf = malloc(sizeof(float) * ((size_t)out * in + 1));
    float *y0 = malloc(sizeof(float) * ny), *ref = malloc(sizeof(float) * ny);
    float *got = check_buf_new(ny);
    assert_true(x && wf && y0 && ref);
    check_fill_normal(x, nx, 1.0f);
    void *w = mm_make_weights(dt, out, in, wf);
    struct linear L;
    linear_init_dense(&L, out, in, dt, w);
    check_fill_normal(y0, ny, 4.0f);

    /* The reference (on the bf16-rounded x for the bf16 variant). */
    float *xr = x;
    if (variant) {
        xr = malloc(sizeof(float) * (nx + 1));
        assert_non_null(xr);
        for (size_t i = 0; i < nx; i++)
            xr[i] = kern_round_bf16(x[i]);
    }
    memcpy(ref, y0, sizeof(float) * ny);
    matmul_ref(ref, xr, T, &L, accumulate);
    float *bound = mm_bound_new(xr, wf, y0, ref, T, out, in, accumulate, 0, variant ? 8.0 : 2.0);
    struct check_tol tol = { 1e-9, 0, 0 };

    /* Device level: guarded x, y; the weights are a plain device block. */
    struct cuda_gbuf dx, dy;
    void *dw = NULL;
    size_t wbytes = (size_t)out * in * kern_dtype_size(dt);
    LDR_OK(cuda_gbuf_new(&dx, nx, x));
    LDR_OK(cuda_gbuf_new(&dy, ny, accumulate ? y0 : NULL));
    GPU_OK(A->mem_alloc(&dw, wbytes));
    GPU_OK(A->copy_h2d(dw, w, wbytes));
    if (variant)
        GPU_OK(A->matmul_bf16(dy.d, dx.d, T, out, in, (int)dt, dw, accumulate));
    else
        GPU_OK(A->matmul(dy.d, dx.d, T, out, in, (int)dt, dw, accumulate));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dy, got));
    GPU_OK(A->mem_free(dw));
    int rc = check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);
    struct cuda_gbuf *bufs[] = { &dx, &dy };
    rc |= gbufs_done(what, bufs, 2);

    if (!variant) {
        if (accumulate)
            memcpy(got, y0, sizeof(float) * ny);
        assert_int_equal(matmul(KERN_IMPL_CUDA, got, x, T, &L, accumulate), 0);
        rc |= check_close(what, got, ref, ny, &tol, bound);
        rc |= check_buf_guards(what, got, ny);
    }
    if (xr != x)
        free(xr);
    free(x);
    free(wf);
    free(w);
    free(y0);
    free(ref);
    free(bound);
    check_buf_free(got);
    return rc;
}

static void test_matmul_gpu_shapes(void **state)
{
    (void)state;
    static const int Ts[] = { 1, 2, 3, 4, 5, 7, 13, 64, 131 };
    static const int outs[] = { 1, 5, 16, 17, 33, 100 };
    static const int ins[] = { 1, 7, 16, 33, 130, 300, 515 };
    int fails = 0, cases = 0;
    for (int dt = 0; dt < 3; dt++) {
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(Ts); a++) {
            int out = outs[check_rand_int(0, (int)EXAQ_ARRAY_LEN(outs) - 1)];
            int in = ins[check_rand_int(0, (int)EXAQ_ARRAY_LEN(ins) - 1)];
            fails += run_case((enum kern_dtype)dt, Ts[a], out, in, check_rand_int(0, 1), 0) != 0;
            cases++;
        }
        fails += run_case((enum kern_dtype)dt, 131, 100, 515, 0, 0) != 0;
        fails += run_case((enum kern_dtype)dt, 3, 100, 515, 1, 0) != 0;
        cases += 2;
    }
    /* 4200 x 4096 fp32 rows are 68.8 MB: two 64 MiB scratch chunks (rows 0..4095, 4096..). */
    fails += run_case(KERN_BF16, 3, 4200, 4096, 1, 0) != 0;
    cases++;
    printf("# %d cuda matmul cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_matmul_gpu_bf16_variant(void **state)
{
    (void)state;
    int fails = 0, cases = 0;
    static const int shapes[][3] = {
        { 1, 100, 515 }, { 7, 33, 130 }, { 64, 256, 512 }, { 131, 17, 300 }
    };
    for (size_t s = 0; s < EXAQ_ARRAY_LEN(shapes); s++) {
        fails += run_case(KERN_BF16, shapes[s][0], shapes[s][1], shapes[s][2], check_rand_int(0, 1),
                          1) != 0;
        cases++;
    }
    printf("# %d cuda matmul_bf16 cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
    /* Only BF16 weights. */
    float x[4] = { 1, 2, 3, 4 }, y[4];
    assert_int_equal(A->matmul_bf16(y, x, 2, 2, 2, (int)KERN_F32, x, 0), -ENOSYS);
}

static void test_matmul_gpu_nan_inf(void **state)
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
    assert_int_equal(matmul(KERN_IMPL_CUDA, got, x, T, &L, 0), 0);
    matmul_ref(ref, x, T, &L, 0);
    for (int i = 0; i < T * out; i++) {
        if (isnan(ref[i]))
            assert_true(isnan(got[i]));
        else if (isinf(ref[i]))
            assert_true(got[i] == ref[i]);
    }
    assert_true(isnan(got[3 * out + 0]));
}

static void test_matmul_gpu_dispatch(void **state)
{
    (void)state;
    float x[4] = { 1, 2, 3, 4 }, y[4] = { 9, 9, 9, 9 };
    float w[4] = { 1, 0, 0, 1 };
    struct linear L;
    linear_init_dense(&L, 2, 2, KERN_F32, w);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 2, &L, 0), 0);
    assert_true(y[0] == 1 && y[1] == 2 && y[2] == 3 && y[3] == 4);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 2, &L, 1), 0); /* accumulate: y += x */
    assert_true(y[0] == 2 && y[1] == 4 && y[2] == 6 && y[3] == 8);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 0, &L, 0), 0);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, -1, &L, 0), -EINVAL);
    /* in == 0: y = 0 (no terms), or unchanged when accumulating. */
    struct linear L0;
    linear_init_dense(&L0, 2, 0, KERN_F32, w);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 2, &L0, 1), 0);
    assert_true(y[0] == 2 && y[3] == 8);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 2, &L0, 0), 0);
    assert_true(y[0] == 0 && y[1] == 0 && y[2] == 0 && y[3] == 0);
    /* A quantized linear computes on the GPU too (test_qmatmul_gpu has the full check):
     * W = q * scale per channel = [[0.5, -0.5], [0.5, 0]]. */
    int8_t q[4] = { 1, -1, 2, 0 };
    uint16_t sc[2] = { kern_f32_to_bf16(0.5f), kern_f32_to_bf16(0.25f) };
    struct linear_qsrc src = {
        .out = 2, .in = 2, .bits = 4, .q = q, .scale = sc, .group_size = -1
    };
    struct linear LQ;
    assert_int_equal(linear_init_quant(&LQ, &src, LINEAR_FMT_INT), 0);
    assert_int_equal(matmul(KERN_IMPL_CUDA, y, x, 2, &LQ, 0), 0);
    assert_true(y[0] == -0.5f && y[1] == 0.5f && y[2] == -0.5f && y[3] == 1.5f);
    linear_release(&LQ);
    assert_int_equal(A->matmul(y, x, 2, 2, 2, 7, w, 0), -EINVAL); /* unknown dtype */
    assert_true(strstr(A->last_error(), "dtype") != NULL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_gpu_shapes),
        cmocka_unit_test(test_matmul_gpu_bf16_variant),
        cmocka_unit_test(test_matmul_gpu_nan_inf),
        cmocka_unit_test(test_matmul_gpu_dispatch),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
