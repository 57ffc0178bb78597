/*
 * test_qmatmul: the quantized formats of `struct linear` (INT int8 codes, INT4 packed nibbles,
 * FP8 E4M3) through matmul(): decoder, reference, GEMV and GEMM paths, and the engine.
 *
 * Kernel level, on fresh random inputs (seed printed; EXAQ_TEST_SEED replays):
 *   - linear_to_f32 returns exactly W = (q - zp) * scale (FP8: e4m3(q) * scale), computed here
 *     independently of the library, for every format, group size (32, 64, 128, 256, 40 (8 mod 16),
 *     7 (odd: generic path), channel, tensor), with and without zero points and g_idx;
 *   - matmul_ref on the quantized linear equals matmul_ref on that dense fp32 W bit for bit;
 *   - matmul_cpu against matmul_ref for T = 1, 2, 3 (GEMV) and 4, 17, 64 (GEMM), odd out/in,
 *     accumulate on and off, 1-3 threads, with sentinels around y;
 *   - the GEMM path (T >= 4) equals the dense F32 GEMM on the dequantized W bit for bit (the
 *     B panels hold the same exact weights) when there is no g_idx (with one, the codes are
 *     stored in group order and the sum runs in that order);
 *   - NaN codes, infinite scales and NaN/inf activations (the generic path) agree with the
 *     reference on NaN/inf positions; invalid descriptions are rejected.
 * Tolerance (GEMV): the fast GEMV sums each group on raw codes in fp32, multiplies by the scale
 * once, and adds the groups. Every weight is an exact fp32 product (the init checks the scale
 * range), so this is the exact dot product in another order with at most in + 2 roundings on
 * any term's path (the in - 1 additions in any order, the product, the group scale, and FP8's
 * exact * 256): Higham's bound gamma_{in+2} * sum_k |x_k w_k| (Accuracy and Stability of
 * Numerical Algorithms, 2nd ed., eq. 3.5), u = 2^-24; we allow twice that plus u|ref| for
 * rounding the reference (as test_matmul does), and NMSE <= 1e-9.
 *
 * Engine level (tests/data/tiny-exaone4): every linear of tiny-a quantized with quant_rtn (RTN
 * W4A16 g128, the zero-point schemes W4A16_ASYM g256 and W8A16_ASYM g64, W8A8, FP8_DYNAMIC) and
 * installed with model_linear_set_quant computes the same logits as the same model holding the
 * exact fp32 dequantization as a dense F32 linear: for the weight-only schemes that model is
 * built with model_linear_set_f32; W8A8 and FP8_DYNAMIC also quantize activations (keyed on the
 * layer's qweight), so there the dense F32 linear replaces the linear handle under the kept
 * qweight, which is what the engine did before the quantized formats existed. Prefill (T = 16, GEMM
 * path) must match bit for bit, and so must KV-cache decode with the reference kernels (m->impl =
 * KERN_IMPL_REF). KV-cache decode with the fast GEMV (T = 1) differs by fp32 summation noise:
 * within 1e-4 of max|logit| for W4A16 (the bound test_model uses for KV decode vs full sequence;
 * observed 4.5e-5 since the GEMV rounds activations to int16 per 128-column chunk, qgemv_cpu.c;
 * ~4e-7 with the fp32 GEMV). With W8A8 / FP8_DYNAMIC that noise can flip the rounding of one
 * quantized activation (a step of absmax/127, or one E4M3 mantissa step), after which the two runs
 * legitimately differ by up to ~1% of max|logit| (observed 1.1% once a flip happened; 2e-7 before);
 * those get 5e-2, which still catches a wrong scale, zero point or group (tens of percent).
 * Observed values are printed. model_linear_get_f32 must return the dequantization exactly
 * (memcmp). About 2-4 s in all.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "tests/kernels/check.h"
#include "tests/kernels/mm_test.h"
#include "tests/kernels/qmat.h"
#include "worker/engine/model.h"
#include "worker/engine/quant.h"

#define TINY "tests/data/tiny-exaone4"

/* ---- one kernel case ------------------------------------------------------------------- */

static int run_case(enum linear_fmt fmt, int bits, int gs, int with_zp, int with_gidx, int T,
                    int out, int in, int accumulate)
{
    char what[192];
    snprintf(what, sizeof(what),
             "qmatmul %s bits=%d g=%d zp=%d gidx=%d T=%d out=%d in=%d acc=%d threads=%d",
             fmt_name(fmt), bits, gs, with_zp, with_gidx, T, out, in, accumulate, par_nthreads());
    struct qmat m;
    struct linear L, D;
    int rc = 0;
    qmat_make(&m, fmt, bits, out, in, gs, with_zp, with_gidx);
    assert_int_equal(qmat_linear(&L, &m), 0);
    linear_init_dense(&D, out, in, KERN_F32, m.w);
    size_t n = (size_t)out * in, ny = (size_t)T * out;

    /* The decoder is exact. */
    float *back = malloc(sizeof(float) * n);
    assert_non_null(back);
    assert_int_equal(linear_to_f32(&L, back), 0);
    if (memcmp(back, m.w, sizeof(float) * n)) {
        printf("%s: linear_to_f32 differs from (q - zp) * scale\n", what);
        rc = -1;
    }

    float *x = malloc(sizeof(float) * (size_t)T * in), *y0 = malloc(sizeof(float) * ny);
    float *ref = malloc(sizeof(float) * ny), *refd = malloc(sizeof(float) * ny);
    float *got = check_buf_new(ny);
    assert_non_null(x);
    assert_non_null(y0);
    assert_non_null(ref);
    assert_non_null(refd);
    check_fill_normal(x, (size_t)T * in, 1.0f);
    check_fill_normal(y0, ny, 0.5f);
    if (accumulate) {
        memcpy(got, y0, sizeof(float) * ny);
        memcpy(ref, y0, sizeof(float) * ny);
        memcpy(refd, y0, sizeof(float) * ny);
    }
    assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, accumulate), 0);
    assert_int_equal(matmul(KERN_IMPL_REF, refd, x, T, &D, accumulate), 0);
    if (memcmp(ref, refd, sizeof(float) * ny)) {
        printf("%s: matmul_ref differs from the dense reference on the same W\n", what);
        rc = -1;
    }
    assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T, &L, accumulate), 0);

    /* Higham bound (file comment): in + 2 roundings on any term's path. */
    float *bound = mm_bound_new(x, m.w, y0, ref, T, out, in, accumulate, 2, 2.0);
    struct check_tol tol = { 1e-9, 0, 0 };
    rc |= check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);

    /* The GEMM path packs the exact weights: bit-identical to the dense F32 GEMM (with g_idx
     * the columns are summed in group order, so only the bound above applies). */
    if (T >= MATMUL_GEMV_MAX_T && !with_gidx) {
        float *gd = malloc(sizeof(float) * ny);
        assert_non_null(gd);
        if (accumulate)
            memcpy(gd, y0, sizeof(float) * ny);
        assert_int_equal(matmul(KERN_IMPL_CPU, gd, x, T, &D, accumulate), 0);
        if (memcmp(gd, got, sizeof(float) * ny)) {
            printf("%s: GEMM differs from the dense F32 GEMM on the dequantized W\n", what);
            rc = -1;
        }
        free(gd);
    }
    linear_release(&L);
    qmat_free(&m);
    free(back);
    free(x);
    free(y0);
    free(ref);
    free(refd);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_qmatmul_formats(void **state)
{
    (void)state;
    static const int Ts[] = { 1, 2, 3, 4, 17, 64 };
    static const int threads[] = { 1, 2, 3 };
    int fails = 0, cases = 0;
    for (size_t th = 0; th < EXAQ_ARRAY_LEN(threads); th++) {
        par_set_nthreads(threads[th]);
        /* A random shape per case; the largest always runs once below. */
        fails += qmat_sweep(run_case, Ts, EXAQ_ARRAY_LEN(Ts), &cases);
        for (size_t f = 0; f < EXAQ_ARRAY_LEN(QMAT_FMTS); f++) {
            fails += run_case(QMAT_FMTS[f].fmt, QMAT_FMTS[f].bits, 128, 0, 0, 1, 100, 515, 0) != 0;
            fails += run_case(QMAT_FMTS[f].fmt, QMAT_FMTS[f].bits, -1, 0, 0, 3, 100, 515, 1) != 0;
            fails += run_case(QMAT_FMTS[f].fmt, QMAT_FMTS[f].bits, 64, 0, 1, 64, 100, 515, 0) != 0;
            cases += 3;
        }
    }
    par_set_nthreads(0);
    printf("# %d quantized matmul cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

/* ---- the 16-bit-activation GEMV (kernels/cpu/qgemv_cpu.c) ------------------------------- */

/* got against ref element by element: NaN where ref is NaN, the same infinity where ref is
 * infinite, else within bound[i] (bound non-NULL) or rel * (1 + |ref|). */
static void assert_like_ref(const float *got, const float *ref, int n, const float *bound,
                            float rel)
{
    for (int i = 0; i < n; i++) {
        if (isnan(ref[i]))
            assert_true(isnan(got[i]));
        else if (isinf(ref[i]))
            assert_true(got[i] == ref[i]);
        else
            assert_true(fabsf(got[i] - ref[i]) <=
                        (bound ? bound[i] : rel * (1.0f + fabsf(ref[i]))));
    }
}

/*
 * Per token row and column, the bound on the activation rounding of the 16-bit GEMV: the
 * columns of each group (in storage order: ascending original column within the group) are cut
 * into chunks of 128, and a chunk with m = max|x| rounds each x to a multiple of m / 32639, an
 * error of at most half of that; we allow 1% over it plus 4u|x| for computing the scale.
 */
static void i16_err(const struct qmat *m, const float *x, int T, float *e)
{
    const int in = m->in, G = m->gs > 0 ? m->gs : in;
    int ng = m->gs > 0 ? m->ngroups : 1;
    int *cols = malloc(sizeof(int) * (size_t)in);
    assert_non_null(cols);
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * in;
        for (int g = 0; g < ng; g++) {
            int n = 0;
            for (int c = 0; c < in; c++)
                if ((m->g_idx ? m->g_idx[c] : m->gs > 0 ? c / G : 0) == g)
                    cols[n++] = c;
            for (int c0 = 0; c0 < n; c0 += 128) {
                int c1 = c0 + 128 < n ? c0 + 128 : n;
                float mx = 0.0f;
                for (int i = c0; i < c1; i++)
                    mx = fmaxf(mx, fabsf(xt[cols[i]]));
                for (int i = c0; i < c1; i++)
                    e[(size_t)t * in + cols[i]] =
                        mx / 32639.0f * 0.5f * 1.01f + 4.0f * 0x1p-24f * fabsf(xt[cols[i]]);
            }
        }
    }
    free(cols);
}

static int run_i16_case(enum linear_fmt fmt, int bits, int gs, int with_zp, int gidx, int T,
                        int out, int in, int accumulate)
{
    char what[192];
    snprintf(what, sizeof(what),
             "qgemv_i16 %s bits=%d g=%d zp=%d gidx=%d T=%d out=%d in=%d acc=%d "
             "threads=%d",
             fmt_name(fmt), bits, gs, with_zp, gidx, T, out, in, accumulate, par_nthreads());
    struct qmat m;
    struct linear L;
    int rc = 0;
    qmat_make(&m, fmt, bits, out, in, gs, with_zp, gidx);
    assert_int_equal(qmat_linear(&L, &m), 0);
    if (!matmul__qgemv_i16_fits(&L)) {
        printf("%s: the 16-bit GEMV does not take this linear\n", what);
        rc = -1;
    }
    size_t nx = (size_t)T * in, ny = (size_t)T * out;
    float *x = malloc(sizeof(float) * nx), *y0 = malloc(sizeof(float) * ny);
    float *ref = malloc(sizeof(float) * ny), *e = malloc(sizeof(float) * nx);
    float *extra = malloc(sizeof(float) * ny), *aw = malloc(sizeof(float) * (size_t)out * in);
    float *got = check_buf_new(ny);
    assert_true(x && y0 && ref && e && extra && aw);
    check_fill_normal(x, nx, 1.0f);
    /* An outlier channel, as LLM activations have: its chunk's codes get coarser. */
    x[check_rand_int(0, in - 1)] *= 40.0f;
    check_fill_normal(y0, ny, 0.5f);
    if (accumulate) {
        memcpy(got, y0, sizeof(float) * ny);
        memcpy(ref, y0, sizeof(float) * ny);
    }
    assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, accumulate), 0);
    assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T, &L, accumulate), 0);
    /* The bound: Higham's (as run_case) plus sum_k |w_k| e_k. */
    float *bound = mm_bound_new(x, m.w, y0, ref, T, out, in, accumulate, 3, 2.0);
    i16_err(&m, x, T, e);
    for (size_t i = 0; i < (size_t)out * in; i++)
        aw[i] = fabsf(m.w[i]);
    struct linear LA;
    linear_init_dense(&LA, out, in, KERN_F32, aw);
    matmul_ref(extra, e, T, &LA, 0);
    for (size_t i = 0; i < ny; i++)
        bound[i] += extra[i];
    /* NMSE: the rounding is about 2^-16 of each chunk's largest value. */
    struct check_tol tol = { 1e-7, 0, 0 };
    rc |= check_close(what, got, ref, ny, &tol, bound);
    rc |= check_buf_guards(what, got, ny);
    linear_release(&L);
    qmat_free(&m);
    free(x);
    free(y0);
    free(ref);
    free(e);
    free(extra);
    free(aw);
    free(bound);
    check_buf_free(got);
    return rc;
}

static void test_qmatmul_i16(void **state)
{
    (void)state;
    if (!matmul__qgemv_i16_built()) { /* the sanitizer builds compile kernels without -march */
        printf("# this build of the kernels has no 16-bit GEMV (no AVX2)\n");
        skip();
    }
    static const int groups[] = { 32, 64, 128, 256, 96, -1, 0 };
    static const int ins[] = { 256, 512, 1024, 2048 };
    static const int outs[] = { 1, 6, 33, 100 };
    static const int threads[] = { 1, 2, 3 };
    int fails = 0, cases = 0;
    for (size_t th = 0; th < EXAQ_ARRAY_LEN(threads); th++) {
        par_set_nthreads(threads[th]);
        for (int f = 0; f < 2; f++)
            for (size_t g = 0; g < EXAQ_ARRAY_LEN(groups); g++)
                for (int zp = 0; zp <= 1; zp++)
                    for (int gi = 0; gi <= (groups[g] > 0); gi++)
                        for (int T = 1; T <= 3; T++) {
                            int in = ins[check_rand_int(0, 3)];
                            if (groups[g] > 0 && in % groups[g])
                                in = groups[g] * 8;
                            fails += run_i16_case(f ? LINEAR_FMT_INT4 : LINEAR_FMT_INT, f ? 4 : 8,
                                                  groups[g], zp, gi ? QMAT_GIDX_BALANCED : 0, T,
                                                  outs[check_rand_int(0, 3)], in,
                                                  check_rand_int(0, 1)) != 0;
                            cases++;
                        }
    }
    par_set_nthreads(0);
    printf("# %d 16-bit GEMV cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);

    /* What it does not take: FP8, a group that is not a multiple of 32, a random g_idx. */
    struct qmat m;
    struct linear L;
    const struct {
        enum linear_fmt fmt;
        int bits, gs, gidx;
    } no[] = { { LINEAR_FMT_FP8, 8, 128, 0 },
               { LINEAR_FMT_INT4, 4, 40, 0 },
               { LINEAR_FMT_INT, 8, 128, 1 } };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(no); i++) {
        qmat_make(&m, no[i].fmt, no[i].bits, 8, 640, no[i].gs, 0, no[i].gidx);
        assert_int_equal(qmat_linear(&L, &m), 0);
        if (no[i].gidx) { /* a random g_idx: some group is not 5 x 128 columns... */
            int irregular = 0;
            for (int g = 0; g < L.ngroups; g++)
                irregular |= (L.gstart[g + 1] - L.gstart[g]) % 32 != 0;
            assert_int_equal(matmul__qgemv_i16_fits(&L), !irregular);
        } else {
            assert_false(matmul__qgemv_i16_fits(&L));
        }
        linear_release(&L);
        qmat_free(&m);
    }

    /* Activations it hands back to the fp32 GEMV: a NaN, an infinity, a value above 2^60. The
     * results must be the exact path's: NaN/inf where the reference has them, else within the
     * fp32 bound alone (no room for the 16-bit rounding, which would be about 2^60 / 2^16). */
    qmat_make(&m, LINEAR_FMT_INT4, 4, 12, 512, 128, 1, 0);
    assert_int_equal(qmat_linear(&L, &m), 0);
    assert_true(matmul__qgemv_i16_fits(&L));
    for (int which = 0; which < 3; which++) {
        const int T = 2, in = 512, out = 12;
        float *x = malloc(sizeof(float) * T * in), *ref = malloc(sizeof(float) * T * out);
        float *got = check_buf_new((size_t)T * out);
        assert_non_null(x);
        assert_non_null(ref);
        check_fill_normal(x, (size_t)T * in, 1.0f);
        x[in + 200] = which == 0 ? NAN : which == 1 ? INFINITY : 0x1p62f;
        x[in + 201] = which == 2 ? 1e-3f : x[in + 201];
        assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T, &L, 0), 0);
        assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, 0), 0);
        float *bound = mm_bound_new(x, m.w, ref, ref, T, out, in, 0, 2, 2.0);
        assert_like_ref(got, ref, T * out, bound, 0.0f);
        assert_int_equal(check_buf_guards("i16 fallback", got, (size_t)T * out), 0);
        free(bound);
        free(x);
        free(ref);
        check_buf_free(got);
    }
    linear_release(&L);
    qmat_free(&m);
}

/* NaN codes, an infinite scale and NaN/inf activations: the generic path and the NaN/inf
 * agreement with the reference. */
static void test_qmatmul_special(void **state)
{
    (void)state;
    const int out = 20, in = 70;
    for (int which = 0; which < 3; which++) {
        struct qmat m;
        struct linear L;
        enum linear_fmt fmt = which == 0   ? LINEAR_FMT_FP8
                              : which == 1 ? LINEAR_FMT_INT4
                                           : LINEAR_FMT_INT;
        qmat_make(&m, fmt, fmt == LINEAR_FMT_FP8 ? 8 : 4, out, in, 32, 0, 0);
        if (fmt == LINEAR_FMT_FP8) {
            m.fp8[3 * in + 9] = 0x7f;  /* NaN: row 3 becomes NaN */
            m.fp8[5 * in + 10] = 0x7e; /* 448, the largest */
            m.fp8[5 * in + 11] = 0x81; /* -2^-9, the smallest subnormal */
        } else {
            m.scale[7 * m.ngroups + 1] = 0x7f80; /* +inf scale: row 7 becomes inf or NaN */
        }
        assert_int_equal(qmat_linear(&L, &m), 0);
        assert_true(L.qflags & LINEAR_QF_GENERIC);
        for (int t = 0; t < 2; t++) {
            int T = t == 0 ? 1 : 8; /* GEMV and GEMM */
            float *x = malloc(sizeof(float) * (size_t)T * in);
            float *got = check_buf_new((size_t)T * out), *ref = malloc(sizeof(float) * T * out);
            assert_non_null(x);
            assert_non_null(ref);
            check_fill_normal(x, (size_t)T * in, 1.0f);
            x[(size_t)(T - 1) * in + 4] = NAN; /* the last token row becomes NaN */
            if (T > 1)
                x[2] = INFINITY;
            assert_int_equal(matmul(KERN_IMPL_CPU, got, x, T, &L, 0), 0);
            assert_int_equal(matmul(KERN_IMPL_REF, ref, x, T, &L, 0), 0);
            assert_like_ref(got, ref, T * out, NULL, 1e-4f);
            assert_true(isnan(ref[(size_t)(T - 1) * out]));
            assert_true(fmt == LINEAR_FMT_FP8 ? isnan(ref[3]) : !isfinite(ref[7]));
            assert_int_equal(check_buf_guards("special", got, (size_t)T * out), 0);
            free(x);
            check_buf_free(got);
            free(ref);
        }
        linear_release(&L);
        qmat_free(&m);
    }
}

static void test_qmatmul_errors(void **state)
{
    (void)state;
    struct qmat m;
    struct linear L;
    qmat_make(&m, LINEAR_FMT_INT, 8, 4, 40, 16, 1, 1);
    struct linear_qsrc src = { 4, 40, 8, m.q, NULL, m.scale, m.zp, 16, m.g_idx };
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), 0);
    assert_false(L.qflags & LINEAR_QF_GENERIC); /* g_idx: stored in group order instead */
    assert_non_null(L.perm);
    assert_non_null(L.owned);
    for (int j = 0; j < 40; j++) {
        assert_int_equal(L.pinv[L.perm[j]], j);
        assert_int_equal(L.gpos[j], m.g_idx[L.perm[j]]);
        assert_true(j == 0 || L.gpos[j] >= L.gpos[j - 1]);
    }
    assert_true(linear_weight_bytes(&L) < 4 * 40 * sizeof(float));
    linear_release(&L);
    /* 8-bit codes do not fit nibbles. */
    m.q[5] = 100;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT4), -ERANGE);
    assert_int_equal(L.fmt, 0);
    assert_null(L.owned);
    m.g_idx[3] = 3; /* ngroups = 3 */
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), -EINVAL);
    m.g_idx[3] = 0;
    src.group_size = -2;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), -EINVAL);
    src.group_size = -1; /* g_idx needs groups */
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), -EINVAL);
    src.group_size = 16;
    src.bits = 9;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), -EINVAL);
    src.bits = 8;
    src.fp8 = (const uint8_t *)m.q; /* both code arrays */
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_INT), -EINVAL);
    src.q = NULL;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_FP8), -EINVAL); /* zp with FP8 */
    src.zp = NULL;
    src.scale = NULL;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_FP8), -EINVAL);
    src.scale = m.scale;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_DENSE), -EINVAL);
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_FP8), 0);
    /* Unknown formats stay -ENOSYS in the dispatch. */
    float x[40] = { 0 }, y[4];
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 1, &L, 0), 0);
    assert_cuda_dispatch(matmul(KERN_IMPL_CUDA, y, x, 1, &L, 0));
    L.fmt = (enum linear_fmt)9;
    assert_int_equal(matmul(KERN_IMPL_CPU, y, x, 1, &L, 0), -ENOSYS);
    assert_int_equal(linear_to_f32(&L, x), -ENOSYS);
    L.fmt = LINEAR_FMT_FP8;
    linear_release(&L);
    qmat_free(&m);
}

/* The E4M3 -> half -> fp32 decode of the GEMV is exact for all 254 finite codes: a one-hot x
 * reads each weight back through the fast path (scale 1, one row, per-tensor). */
static void test_qmatmul_fp8_codes(void **state)
{
    (void)state;
    uint8_t codes[256];
    uint16_t one = kern_f32_to_bf16(1.0f);
    float x[256], y;
    for (int i = 0; i < 256; i++)
        codes[i] = (uint8_t)i;
    codes[0x7f] = 0x00;
    codes[0xff] = 0x80;
    struct linear_qsrc src = { 1, 256, 8, NULL, codes, &one, NULL, 0, NULL };
    struct linear L;
    assert_int_equal(linear_init_quant(&L, &src, LINEAR_FMT_FP8), 0);
    assert_false(L.qflags & LINEAR_QF_GENERIC);
    par_set_nthreads(1);
    for (int i = 0; i < 256; i++) {
        memset(x, 0, sizeof(x));
        x[i] = 1.0f;
        assert_int_equal(matmul(KERN_IMPL_CPU, &y, x, 1, &L, 0), 0);
        float want = kern_f8e4m3_to_f32(codes[i]);
        if (y != want) /* -0 reads back as +0 through the sum; the values are equal */
            fail_msg("fp8 code 0x%02x: got %.9g, want %.9g", codes[i], (double)y, (double)want);
    }
    par_set_nthreads(0);
    linear_release(&L);
}

/* ---- engine level ---------------------------------------------------------------------- */

/*
 * Quantizes every linear of mq with scheme s (RTN) and gives md the exact dequantization as
 * dense F32 (see the file comment for the W8A8 / FP8 construction).
 */
static void quantize_pair(struct model *mq, struct model *md, enum qscheme s, int gs)
{
    char *err = NULL;
    bool weight_only = s != QSCHEME_W8A8 && s != QSCHEME_FP8_DYNAMIC && s != QSCHEME_FP8;
    for (int l = 0; l < mq->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            const struct linear *L = model_linear(mq, l, (enum model_lin)w);
            int out = L->out, in = L->in;
            size_t n = (size_t)out * in;
            float *W = malloc(n * sizeof(float)), *deq = malloc(n * sizeof(float));
            float *got = malloc(n * sizeof(float));
            struct qweight qa, qb;
            assert_non_null(W);
            assert_non_null(deq);
            assert_non_null(got);
            assert_int_equal(model_linear_get_f32(mq, l, (enum model_lin)w, W, &err), 0);
            assert_int_equal(qweight_init(&qa, s, out, in, gs), 0);
            quant_rtn(&qa, W, QGRID_ABSMAX_HALF);
            qweight_dequant(&qa, deq);
            assert_int_equal(qweight_init(&qb, s, out, in, gs), 0);
            quant_rtn(&qb, W, QGRID_ABSMAX_HALF);
            assert_int_equal(model_linear_set_quant(mq, l, (enum model_lin)w, &qa, &err), 0);
            const struct linear *Lq = model_linear(mq, l, (enum model_lin)w);
            assert_int_equal(Lq->fmt, qscheme_bits(s) == 4 ? LINEAR_FMT_INT4
                                      : s == QSCHEME_FP8_DYNAMIC || s == QSCHEME_FP8
                                          ? LINEAR_FMT_FP8
                                          : LINEAR_FMT_INT);
            assert_true((Lq->zp != NULL) == !qscheme_symmetric(s));
            assert_false(Lq->qflags & LINEAR_QF_GENERIC);
            assert_true(linear_weight_bytes(Lq) < n * 2); /* fewer bytes than BF16 */
            assert_int_equal(model_linear_get_f32(mq, l, (enum model_lin)w, got, &err), 0);
            if (memcmp(got, deq, n * sizeof(float)))
                fail_msg("%s layer %d lin %d: model_linear_get_f32 is not the dequantization",
                         qscheme_name(s), l, w);
            if (weight_only) {
                qweight_release(&qb);
                assert_int_equal(
                    model_linear_set_f32(md, l, (enum model_lin)w, deq, KERN_F32, &err), 0);
            } else {
                /* Keep the qweight (activation scheme), compute from dense F32 weights. */
                assert_int_equal(model_linear_set_quant(md, l, (enum model_lin)w, &qb, &err), 0);
                struct linear *Ld = model_linear(md, l, (enum model_lin)w);
                float *own = malloc(n * sizeof(float));
                assert_non_null(own);
                memcpy(own, deq, n * sizeof(float));
                linear_release(Ld);
                linear_init_dense_take(Ld, out, in, KERN_F32, own);
            }
            free(W);
            free(deq);
            free(got);
        }
    free(err);
}

/* Teacher-forced decode of ids[P..P+G-1] after a prefill of ids[0..P-1] through the KV cache
 * on both models; returns max over steps of max|diff| and sets *mx to max|logit|. */
static double decode_diff(struct model *a, struct model *b, const int32_t *ids, int P, int G,
                          double *mx)
{
    char *err = NULL;
    int V = a->cfg.vocab_size;
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    struct model_kv *ka = model_kv_new(a, P + G), *kb = model_kv_new(b, P + G);
    double d = 0;
    assert_non_null(la);
    assert_non_null(lb);
    *mx = 0;
    assert_int_equal(model_forward(a, ids, P, ka, MODEL_LOGITS_NONE, NULL, NULL, &err), 0);
    assert_int_equal(model_forward(b, ids, P, kb, MODEL_LOGITS_NONE, NULL, NULL, &err), 0);
    for (int i = P; i < P + G; i++) {
        assert_int_equal(model_forward(a, ids + i, 1, ka, MODEL_LOGITS_LAST, la, NULL, &err), 0);
        assert_int_equal(model_forward(b, ids + i, 1, kb, MODEL_LOGITS_LAST, lb, NULL, &err), 0);
        d = fmax(d, check_max_diff(la, lb, (size_t)V));
        *mx = fmax(*mx, check_max_abs(lb, (size_t)V));
    }
    model_kv_free(ka);
    model_kv_free(kb);
    free(la);
    free(lb);
    free(err);
    return d;
}

static void engine_case(enum qscheme s, int gs)
{
    struct model *mq, *md;
    char *err = NULL;
    const int P = 16, G = 16;
    int32_t ids[32];
    assert_int_equal(model_load(&mq, TINY, NULL, &err), 0);
    assert_int_equal(model_load(&md, TINY, NULL, &err), 0);
    quantize_pair(mq, md, s, gs);
    bool weight_only = s != QSCHEME_W8A8 && s != QSCHEME_FP8_DYNAMIC && s != QSCHEME_FP8;
    int V = mq->cfg.vocab_size;
    for (int i = 0; i < P + G; i++)
        ids[i] = (int32_t)((10 + 37 * i) % V);

    /* Prefill, all positions: the GEMM path, bit for bit. */
    float *la = malloc(sizeof(float) * (size_t)P * V), *lb = malloc(sizeof(float) * (size_t)P * V);
    assert_non_null(la);
    assert_non_null(lb);
    assert_int_equal(model_forward(mq, ids, P, NULL, MODEL_LOGITS_ALL, la, NULL, &err), 0);
    assert_int_equal(model_forward(md, ids, P, NULL, MODEL_LOGITS_ALL, lb, NULL, &err), 0);
    double dp = check_max_diff(la, lb, (size_t)P * V), mp = check_max_abs(lb, (size_t)P * V);
    free(la);
    free(lb);

    /* Decode through the KV cache: the GEMV path (fp32 noise, see the file comment). */
    double mx, dd = decode_diff(mq, md, ids, P, G, &mx);
    /* The same with the reference kernels: bit for bit. */
    mq->impl = md->impl = KERN_IMPL_REF;
    double mr, dr = decode_diff(mq, md, ids, P, 4, &mr);
    printf("# %s g%d: prefill max|diff| %.3g (max|logit| %.3g); decode max|diff| %.3g = %.3g of "
           "max|logit|; reference decode max|diff| %.3g\n",
           qscheme_name(s), gs, dp, mp, dd, dd / mx, dr);
    if (dp != 0.0)
        fail_msg("%s: prefill logits differ from the dense F32 model (%.3g)", qscheme_name(s), dp);
    if (dr != 0.0)
        fail_msg("%s: reference decode differs from the dense F32 model (%.3g)", qscheme_name(s),
                 dr);
    double bound = weight_only ? 1e-4 : 5e-2;
    if (!(dd <= bound * mx))
        fail_msg("%s: decode logits differ by %.3g, more than %g of max|logit| %.3g",
                 qscheme_name(s), dd, bound, mx);
    model_free(mq);
    model_free(md);
    free(err);
}

static void test_engine_quantized(void **state)
{
    (void)state;
    if (access(TINY "/model.safetensors", R_OK) != 0) {
        printf("SKIP %s is missing\n", TINY);
        skip();
    }
    engine_case(QSCHEME_W4A16, 128);
    engine_case(QSCHEME_W4A16_ASYM, 256);
    engine_case(QSCHEME_W8A16_ASYM, 64);
    engine_case(QSCHEME_W8A8, -1);
    engine_case(QSCHEME_FP8_DYNAMIC, -1);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qmatmul_formats),  cmocka_unit_test(test_qmatmul_special),
        cmocka_unit_test(test_qmatmul_errors),   cmocka_unit_test(test_qmatmul_fp8_codes),
        cmocka_unit_test(test_engine_quantized), cmocka_unit_test(test_qmatmul_i16),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
