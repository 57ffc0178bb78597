/*
 * test_qmatmul_gpu: the CUDA quantized matmul (kernels/cuda/qmatmul.cu) against matmul_ref on fresh
 * random inputs, for every format (INT int8 codes of 8 and 4 bits, INT4 packed nibbles, FP8
 * E4M3), group sizes 32, 64, 128, 40, 7, channel and tensor, with and without zero points and
 * g_idx, T from 1 to 64, accumulate on and off; through the device table with guarded device
 * buffers and through matmul(KERN_IMPL_CUDA, ...), plus one weight large enough (4200 x 4096)
 * to be dequantized in two scratch chunks.
 *
 * Exactness of the dequantization: with x the identity (T = in), y = x . W^T is W^T exactly
 * (every sum has one non-zero term), so the device's decoded weights are compared exactly (==;
 * only the sign of a zero may differ) with the dequantization tests/kernels/qmat.h computes
 * independently.
 * Tolerance of the products: every weight is an exact fp32 value and cuBLAS runs fp32 products
 * and sums (no TF32), so Higham's bound holds as in test_qmatmul: 2 gamma_K sum |x_k w_k|
 * (+ |y0| with accumulate) + u|ref|, K = in (+1), u = 2^-24; NMSE <= 1e-9.
 *
 * Skips (exit 77, "SKIP: no CUDA device (<reason>)") when the backend is unavailable.
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
#include "tests/kernels/qmat.h"

/* Device copies of a quantized linear's arrays, described as a struct cuda_qlin. */
struct dev_qlin {
    void *blk[5];
    struct cuda_qlin q;
};

static void *upload(const void *src, size_t bytes)
{
    void *d = NULL;
    if (!src)
        return NULL;
    GPU_OK(A->mem_alloc(&d, bytes));
    GPU_OK(A->copy_h2d(d, src, bytes));
    return d;
}

static void dev_qlin_new(struct dev_qlin *d, const struct linear *L)
{
    size_t rows = (size_t)L->out;
    size_t nw =
        L->fmt == LINEAR_FMT_INT4 ? rows * linear_int4_row_bytes(L->in) : rows * (size_t)L->in;
    size_t ns = L->group_size == 0 ? 1 : rows * (size_t)L->ngroups;
    size_t ni = sizeof(int32_t) * (size_t)L->in;
    memset(d, 0, sizeof(*d));
    d->blk[0] = upload(L->w, nw);
    d->blk[1] = upload(L->scale, ns * sizeof(uint16_t));
    d->blk[2] = upload(L->zp, ns);
    d->blk[3] = upload(L->g_idx, ni);
    d->blk[4] = upload(L->pinv, ni);
    d->q = (struct cuda_qlin){ .fmt = (int)L->fmt,
                               .out = L->out,
                               .in = L->in,
                               .bits = L->bits,
                               .group_size = L->group_size,
                               .ngroups = L->ngroups,
                               .w = d->blk[0],
                               .scale = d->blk[1],
                               .zp = d->blk[2],
                               .g_idx = d->blk[3],
                               .pinv = d->blk[4] };
}

static void dev_qlin_free(struct dev_qlin *d)
{
    for (int i = 0; i < 5; i++)
        GPU_OK(A->mem_free(d->blk[i]));
}

static int run_case(enum linear_fmt fmt, int bits, int gs, int with_zp, int with_gidx, int T,
                    int out, int in, int accumulate)
{
    char what[192];
    snprintf(what, sizeof(what),
             "cuda qmatmul %s bits=%d g=%d zp=%d gidx=%d T=%d out=%d in=%d acc=%d", fmt_name(fmt),
             bits, gs, with_zp, with_gidx, T, out, in, accumulate);
    struct qmat m;
    struct linear L;
    qmat_make(&m, fmt, bits, out, in, gs, with_zp, with_gidx);
    assert_int_equal(qmat_linear(&L, &m), 0);
    size_t nx = (size_t)T * in, ny = (size_t)T * out;
    float *x = malloc(sizeof(float) * (nx + 1)), *y0 = malloc(sizeof(float) * ny);
    float *ref = malloc(sizeof(float) * ny);
    float *got = check_buf_new(ny);
    assert_true(x && y0 && ref);
    check_fill_normal(x, nx, 1.0f);
    check_fill_normal(y0, ny, 0.5f);
    memcpy(ref, y0, sizeof(float) * ny);
    assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, accumulate), 0);

    float *bound = mm_bound_new(x, m.w, y0, ref, T, out, in, accumulate, 0, 2.0);
    struct check_tol tol = { 1e-9, 0, 0 };

    /* Device level: guarded x and y, the weight's arrays as plain device blocks. */
    struct cuda_gbuf dx, dy;
    struct dev_qlin dq;
    LDR_OK(cuda_gbuf_new(&dx, nx, x));
    LDR_OK(cuda_gbuf_new(&dy, ny, accumulate ? y0 : NULL));
    dev_qlin_new(&dq, &L);
    GPU_OK(A->qmatmul(dy.d, dx.d, T, &dq.q, accumulate));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dy, got));
    int rc = check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);
    struct cuda_gbuf *bufs[] = { &dx, &dy };
    rc |= gbufs_done(what, bufs, 2);

    /* The dequantization is exact: x = I gives W^T bit for bit. */
    if (in <= 600) {
        float *eye = calloc((size_t)in * in + 1, sizeof(float));
        float *wt = malloc(sizeof(float) * ((size_t)in * out + 1));
        assert_true(eye && wt);
        for (int i = 0; i < in; i++)
            eye[(size_t)i * in + i] = 1.0f;
        struct cuda_gbuf de, dwt;
        LDR_OK(cuda_gbuf_new(&de, (size_t)in * in, eye));
        LDR_OK(cuda_gbuf_new(&dwt, (size_t)in * out, NULL));
        GPU_OK(A->qmatmul(dwt.d, de.d, in, &dq.q, 0));
        LDR_OK(cuda_gbuf_get(&dwt, wt));
        int bad = 0;
        for (int r = 0; r < out && bad < 5; r++)
            for (int c = 0; c < in && bad < 5; c++) {
                float a = wt[(size_t)c * out + r], b = m.w[(size_t)r * in + c];
                if (!(a == b)) { /* values: the sign of a zero may differ */
                    printf("%s: W[%d][%d] decoded as %.9g, expected %.9g\n", what, r, c, a, b);
                    bad++;
                }
            }
        rc |= bad ? -1 : 0;
        struct cuda_gbuf *eb[] = { &de, &dwt };
        rc |= gbufs_done(what, eb, 2);
        free(eye);
        free(wt);
    }
    dev_qlin_free(&dq);

    /* Host pointers through the dispatch. */
    if (accumulate)
        memcpy(got, y0, sizeof(float) * ny);
    assert_int_equal(matmul(KERN_IMPL_CUDA, got, x, T, &L, accumulate), 0);
    rc |= check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);

    linear_release(&L);
    qmat_free(&m);
    free(x);
    free(y0);
    free(ref);
    free(bound);
    check_buf_free(got);
    return rc;
}

static void test_qmatmul_gpu_formats(void **state)
{
    (void)state;
    static const int Ts[] = { 1, 3, 17, 64 };
    int fails = 0, cases = 0;
    fails += qmat_sweep(run_case, Ts, EXAQ_ARRAY_LEN(Ts), &cases);
    /* 4200 x 4096 fp32 rows are 68.8 MB: two 64 MiB scratch chunks. */
    fails += run_case(LINEAR_FMT_INT4, 4, 128, 0, 0, 3, 4200, 4096, 1) != 0;
    fails += run_case(LINEAR_FMT_FP8, 8, -1, 0, 0, 2, 4200, 4096, 0) != 0;
    cases += 2;
    printf("# %d cuda quantized matmul cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_qmatmul_gpu_errors(void **state)
{
    (void)state;
    float y[4] = { 0 };
    struct cuda_qlin q = { .fmt = 9, .out = 2, .in = 2, .bits = 8, .group_size = -1, .ngroups = 1 };
    assert_int_equal(A->qmatmul(y, y, 1, &q, 0), -EINVAL);
    assert_true(strstr(A->last_error(), "format") != NULL);
    q.fmt = CUDA_QFMT_INT;
    q.group_size = 1; /* two columns need two groups */
    assert_int_equal(A->qmatmul(y, y, 1, &q, 0), -EINVAL);
    assert_true(strstr(A->last_error(), "group") != NULL);
    assert_int_equal(A->qmatmul(y, y, 1, NULL, 0), -EINVAL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qmatmul_gpu_formats),
        cmocka_unit_test(test_qmatmul_gpu_errors),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
