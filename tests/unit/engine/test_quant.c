/*
 * test_quant: the quantization grids and conversions of worker/engine/quant.c with hand-made
 * numbers.
 *
 * Proves:
 *   - scheme names round-trip; qweight_init allocates what each scheme stores and rejects
 *     group sizes the format cannot hold;
 *   - RTN per scheme against codes worked out by hand: symmetric absmax/7 (tiny-a reference)
 *     and absmax/7.5 (compressed-tensors), ties to even (2.5 -> 2, 3.5 -> 4, -7.5 -> -8),
 *     clamp before round (7.5 -> 7), codes chosen with the BF16-rounded scale (0.35 with
 *     scale bf16(0.1) = 0.10009765625 is 3.4966 -> 3), asymmetric with a signed zero point
 *     (range forced to include 0), per-channel int8 on both grids, FP8 per tensor and per
 *     channel, and zero rows (scale = fp32 eps 2^-23, never 0 or NaN, dequantizing to 0);
 *   - qweight_fit_search (GPTQ's range search) picks the least-error shrink of the range, never
 *     worse than min-max, on random groups with and without outliers;
 *   - RTN on a 100 x 300 matrix (several threads, a partial last group) equals the definition
 *     element by element for all six schemes;
 *   - T7: fp8_e4m3_from_f32 equals an independent reference (the nearest of the decoded E4M3
 *     values, ties to the even code, saturation at 448, NaN) on all 65,536 BF16 inputs and on
 *     200,000 random fp32 bit patterns, plus named boundaries (448, 464, 2^-9, 2^-10 ties);
 *     fp8_e4m3_to_f32 equals the format's formula on all 256 codes;
 *   - quant_act_inplace: per-token int8 absmax/127 in [-127, 127], per-token FP8, static FP8
 *     with saturation, the per-tensor fallback for an unset static scale, and that the threaded
 *     path equals the serial one.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "worker/engine/quant.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A standard normal draw (Box-Muller on two uniforms in (0, 1)). */
static float rng_normal(void)
{
    double u1 = ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
    double u2 = ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* ---- names and init ------------------------------------------------------------------------ */

static void test_names(void **state)
{
    (void)state;
    for (int s = 0; s < QSCHEME__COUNT; s++) {
        enum qscheme out = QSCHEME__COUNT;
        assert_int_equal(qscheme_parse(qscheme_name((enum qscheme)s), &out), 0);
        assert_int_equal(out, s);
    }
    enum qscheme out;
    assert_int_equal(qscheme_parse("fp8_dynamic", &out), 0);
    assert_int_equal(out, QSCHEME_FP8_DYNAMIC);
    assert_int_equal(qscheme_parse("W4A8", &out), -1);
    assert_int_equal(qscheme_parse(NULL, &out), -1);
    assert_string_equal(qscheme_name(QSCHEME__COUNT), "?");
}

static void test_init(void **state)
{
    (void)state;
    struct qweight w;
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 3, 300, 128), 0);
    assert_int_equal(w.bits, 4);
    assert_int_equal(w.ngroups, 3);
    assert_true(w.symmetric && !w.is_fp8 && w.q && !w.fp8 && w.scale && !w.zp && !w.g_idx);
    assert_int_equal(w.act, QACT_NONE);
    assert_int_equal(qweight_group_of(&w, 255), 1);
    assert_int_equal(qweight_group_of(&w, 299), 2);
    qweight_release(&w);
    assert_null(w.q);

    assert_int_equal(qweight_init(&w, QSCHEME_W4A16_ASYM, 2, 16, -1), 0);
    assert_true(!w.symmetric && w.zp && w.ngroups == 1 && w.group_size == -1);
    qweight_release(&w);

    assert_int_equal(qweight_init(&w, QSCHEME_W8A8, 2, 16, -1), 0);
    assert_true(w.bits == 8 && w.act == QACT_INT8_TOKEN);
    qweight_release(&w);

    /* FP8: the scheme fixes the strategy (lanes passes -1 for "not grouped"). */
    assert_int_equal(qweight_init(&w, QSCHEME_FP8, 2, 16, -1), 0);
    assert_true(w.is_fp8 && w.fp8 && !w.q && w.group_size == 0 && w.act == QACT_FP8_STATIC);
    qweight_release(&w);
    assert_int_equal(qweight_init(&w, QSCHEME_FP8_DYNAMIC, 2, 16, 0), 0);
    assert_true(w.is_fp8 && w.group_size == -1 && w.act == QACT_FP8_TOKEN);
    qweight_release(&w);

    assert_int_equal(qweight_init(&w, QSCHEME_W8A8, 2, 16, 128), -EINVAL);
    assert_int_equal(qweight_init(&w, QSCHEME_FP8, 2, 16, 128), -EINVAL);
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 2, 16, 0), -EINVAL);
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 0, 16, 8), -EINVAL);
    assert_int_equal(qweight_init(&w, QSCHEME__COUNT, 2, 16, 8), -EINVAL);
    qweight_release(&w); /* released or failed structs are fine */

    /* g_idx overrides c / group_size. */
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 1, 4, 2), 0);
    w.g_idx = malloc(4 * sizeof(int32_t));
    int32_t gi[4] = { 1, 0, 0, 1 };
    memcpy(w.g_idx, gi, sizeof(gi));
    assert_int_equal(qweight_group_of(&w, 0), 1);
    assert_int_equal(qweight_group_of(&w, 3), 1);
    qweight_release(&w);
}

/* ---- scalar grid functions ----------------------------------------------------------------- */

static void test_bf16_and_code(void **state)
{
    (void)state;
    assert_int_equal(quant_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(quant_f32_to_bf16(0.1f), 0x3dcd);
    assert_int_equal(quant_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie -> even */
    assert_int_equal(quant_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even */
    assert_true(isnan(quant_bf16_to_f32(quant_f32_to_bf16(NAN))));
    assert_true(quant_bf16_to_f32(0x3dcd) == 0.10009765625f);

    /* Symmetric scales: /7, /7.5, /127, /127.5; zero range -> fp32 eps; inf -> max finite. */
    assert_int_equal(quant_scale_sym(7.0f, 4, QGRID_ABSMAX_QMAX), 0x3f80);
    assert_int_equal(quant_scale_sym(7.5f, 4, QGRID_ABSMAX_HALF), 0x3f80);
    assert_int_equal(quant_scale_sym(127.0f, 8, QGRID_ABSMAX_QMAX), 0x3f80);
    assert_int_equal(quant_scale_sym(255.0f, 8, QGRID_ABSMAX_HALF), 0x4000);
    assert_int_equal(quant_scale_sym(0.0f, 4, QGRID_ABSMAX_HALF), 0x3400);
    assert_int_equal(quant_scale_sym(1e-40f, 4, QGRID_ABSMAX_HALF), 0x3400);
    assert_int_equal(quant_scale_sym(NAN, 4, QGRID_ABSMAX_HALF), 0x3400);
    assert_int_equal(quant_scale_sym(INFINITY, 4, QGRID_ABSMAX_HALF), 0x7f7f);

    uint16_t s;
    int8_t z;
    quant_scale_asym(-3.0f, 12.0f, 4, &s, &z);
    assert_int_equal(s, 0x3f80);
    assert_int_equal(z, -5);
    quant_scale_asym(1.0f, 7.5f, 4, &s, &z); /* min clamped to 0 */
    assert_int_equal(s, 0x3f00);
    assert_int_equal(z, -8);
    quant_scale_asym(-3.75f, -1.0f, 4, &s, &z); /* max clamped to 0 */
    assert_int_equal(s, 0x3e80);
    assert_int_equal(z, 7);
    quant_scale_asym(0.0f, 0.0f, 4, &s, &z);
    assert_int_equal(s, 0x3400);
    assert_int_equal(z, -8);
    /* The zero point comes from the BF16-rounded scale: range 3 -> 0.2 -> bf16 0.2001953125;
     * -min/s is 4.4976 with it (zp -8 + 4.4976 -> -4) but 4.502 without (-> -3). */
    quant_scale_asym(-0.9004f, 2.0996f, 4, &s, &z);
    assert_int_equal(s, 0x3e4d);
    assert_int_equal(z, -4);
    quant_scale_asym(-1.0f, 254.0f, 8, &s, &z); /* 255 / 255 = 1: zp = -128 + 1 */
    assert_int_equal(s, 0x3f80);
    assert_int_equal(z, -127);

    /* Clamp then round half to even; never roundf. */
    assert_int_equal(quant_code(2.5f, 1.0f, 0, 4), 2);
    assert_int_equal(quant_code(3.5f, 1.0f, 0, 4), 4);
    assert_int_equal(quant_code(-2.5f, 1.0f, 0, 4), -2);
    assert_int_equal(quant_code(-0.5f, 1.0f, 0, 4), 0);
    assert_int_equal(quant_code(7.5f, 1.0f, 0, 4), 7);
    assert_int_equal(quant_code(-7.5f, 1.0f, 0, 4), -8);
    assert_int_equal(quant_code(-9.0f, 1.0f, 0, 4), -8);
    assert_int_equal(quant_code(0.5f, 1.0f, -5, 4), -4); /* -4.5 -> -4 */
    assert_int_equal(quant_code(1.5f, 1.0f, -5, 4), -4); /* -3.5 -> -4 */
    assert_int_equal(quant_code(127.5f, 1.0f, 0, 8), 127);
    assert_int_equal(quant_code(-127.5f, 1.0f, 0, 8), -128);
    assert_int_equal(quant_code(-126.5f, 1.0f, 0, 8), -126);
    assert_int_equal(quant_code(NAN, 1.0f, 0, 4), -8);
}

/* ---- RTN ----------------------------------------------------------------------------------- */

/* Checks codes, and that dequant is exactly (q - zp) * scale. */
static void check_codes(const struct qweight *w, const int *want)
{
    float *dq = malloc(sizeof(float) * (size_t)w->out * w->in);
    qweight_dequant(w, dq);
    for (int r = 0; r < w->out; r++)
        for (int c = 0; c < w->in; c++) {
            size_t i = (size_t)r * w->in + c;
            if (w->q[i] != want[i])
                fail_msg("code [%d][%d] = %d, want %d", r, c, w->q[i], want[i]);
            int g = qweight_group_of(w, c);
            size_t k = w->group_size == 0 ? 0 : (size_t)r * w->ngroups + g;
            float s = quant_bf16_to_f32(w->scale[k]);
            int z = w->zp ? w->zp[k] : 0;
            assert_true(dq[i] == (float)(want[i] - z) * s);
        }
    free(dq);
}

static void test_rtn_sym_qmax(void **state)
{
    (void)state;
    struct qweight w;
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 3, 16, 8), 0);
    const float W[3 * 16] = {
        /* absmax 7 -> scale 1; absmax 14 -> scale 2 */
        7, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -7, 14, 5, 7, -5, -1, 1, 3, -14,
        /* zero group; absmax 0.7 -> scale bf16(0.1) = 0.10009765625 */
        0, 0, 0, 0, 0, 0, 0, 0, 0.7f, 0.35f, -0.25f, 0.05f, -0.7f, 0.65f, -0.45f, 0.15f,
        /* -7 is the absmax: the grid is symmetric, so -7 -> -7 and 6.99 -> 7 */
        -7, 6.99f, 0, 0, 0, 0, 0, 1, -1.75f, 1.75f, 0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 0
    };
    const int want[3 * 16] = { 7,  2, 4, -2, 0, 0, 2, -7, 7,  2, 4,  -2, 0,  0,  2,  -7,
                               0,  0, 0, 0,  0, 0, 0, 0,  7,  3, -2, 0,  -7, 6,  -4, 1,
                               -7, 7, 0, 0,  0, 0, 0, 1,  -7, 7, 1,  3,  5,  -1, -3, 0 };
    quant_rtn(&w, W, QGRID_ABSMAX_QMAX);
    check_codes(&w, want);
    assert_int_equal(w.scale[0], 0x3f80);
    assert_int_equal(w.scale[1], 0x4000);
    assert_int_equal(w.scale[2], 0x3400); /* zero group: fp32 eps, not 0 */
    assert_int_equal(w.scale[3], 0x3dcd);
    assert_int_equal(w.scale[5], 0x3e80); /* 1.75 / 7 = 0.25 */
    qweight_release(&w);
}

static void test_rtn_sym_half(void **state)
{
    (void)state;
    struct qweight w;
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 2, 8, -1), 0);
    const float W[16] = { 7.5, -7.5, 6.5, -6.5, 0.5, -0.5, 1.5, 2.5, 0, 0, 0, 0, 0, 0, 0, 0 };
    const int want[16] = { 7, -8, 6, -6, 0, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0 };
    quant_rtn(&w, W, QGRID_ABSMAX_HALF);
    check_codes(&w, want);
    assert_int_equal(w.scale[0], 0x3f80);
    assert_int_equal(w.scale[1], 0x3400);
    qweight_release(&w);
}

static void test_rtn_asym(void **state)
{
    (void)state;
    struct qweight w;
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16_ASYM, 2, 24, 8), 0);
    const float W[2 * 24] = { /* min -3, max 12: scale 1, zp -5 */
                              -3, 12, 0.5, 1.5, 2.5, -2.5, 4, 0,
                              /* all positive: min 0, max 7.5: scale 0.5, zp -8 */
                              1, 2, 3, 4, 5, 6, 7, 7.5,
                              /* all negative: min -3.75, max 0: scale 0.25, zp 7 */
                              -3.75, -1, -2, -0.125, -0.375, -3, -0.5, -1.625,
                              /* zero row */
                              0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    };
    const int want[2 * 24] = { -8, 7,  -4, -4, -2, -8, -1, -5, -6, -4, -2, 0,  2,  4,  6,  7,
                               -8, 3,  -1, 6,  6,  -5, 5,  0,  -8, -8, -8, -8, -8, -8, -8, -8,
                               -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8 };
    quant_rtn(&w, W, QGRID_ABSMAX_HALF);
    check_codes(&w, want);
    const int8_t zp[6] = { -5, -8, 7, -8, -8, -8 };
    const uint16_t sc[6] = { 0x3f80, 0x3f00, 0x3e80, 0x3400, 0x3400, 0x3400 };
    for (int i = 0; i < 6; i++) {
        assert_int_equal(w.zp[i], zp[i]);
        assert_int_equal(w.scale[i], sc[i]);
    }
    /* The zero row dequantizes to exactly 0. */
    float dq[48];
    qweight_dequant(&w, dq);
    for (int i = 24; i < 48; i++)
        assert_true(dq[i] == 0.0f);
    qweight_release(&w);
}

/* qweight_fit_rows (GPTQ and SparseGPT's per-channel / per-tensor ranges), by hand: each range
 * includes 0, asymmetric ranges give (scale, zero point) as quant_scale_asym, symmetric ones
 * use max(-min, max). */
/* The squared rounding error of v [n] with the BF16 scale s and zero point z, from the code
 * definition (quant_code, dequantized as (q - z) * s). */
static double sq_err(const float *v, int n, uint16_t s, int8_t z, int bits)
{
    float sv = kern_bf16_to_f32(s);
    double e = 0;
    for (int k = 0; k < n; k++) {
        double d = (double)v[k] - (double)((float)(quant_code(v[k], sv, z, bits) - z) * sv);
        e += d * d;
    }
    return e;
}

/*
 * qweight_fit_search: on random groups (normal, half of them with one outlier of 4-10 sigma; sym
 * and asym, 4 and 8 bits, both grids) the result is the candidate of least error among the
 * range shrunk by 0..tries-1 % (the first on ties), its error is never above min-max's, and
 * with tries 0 or 1 it is min-max itself. It must also find a better shrink somewhere (else the
 * search would be dead code).
 */
static void test_fit_search(void **state)
{
    (void)state;
    const enum qscheme schemes[] = { QSCHEME_W4A16, QSCHEME_W4A16_ASYM, QSCHEME_W8A16 };
    const enum qgrid grids[] = { QGRID_ABSMAX_QMAX, QGRID_ABSMAX_HALF };
    float v[128];
    int improved = 0, groups = 0;
    for (size_t si = 0; si < sizeof(schemes) / sizeof(schemes[0]); si++)
        for (size_t gi = 0; gi < 2; gi++) {
            struct qweight w;
            assert_int_equal(qweight_init(&w, schemes[si], 1, 128, -1), 0);
            for (int it = 0; it < 200; it++) {
                int n = it % 3 == 0 ? 128 : 32 + (int)(rng_next() % 97);
                float sigma = 0.01f + (float)(rng_next() % 1000) * 1e-4f;
                for (int k = 0; k < n; k++)
                    v[k] = sigma * rng_normal();
                if (it & 1)
                    v[rng_next() % (uint64_t)n] = sigma * (4.0f + (float)(rng_next() % 7));
                float mn = 0.0f, mx = 0.0f;
                for (int k = 0; k < n; k++) {
                    mn = fminf(mn, v[k]);
                    mx = fmaxf(mx, v[k]);
                }
                uint16_t s0, es = 0, s;
                int8_t z0, ez = 0, z;
                qweight_fit_range(&w, grids[gi], mn, mx, &s0, &z0);
                double e0 = sq_err(v, n, s0, z0, w.bits), best = -1;
                for (int t = 0; t < 20; t++) {
                    float f = 1.0f - 0.01f * (float)t;
                    uint16_t cs;
                    int8_t cz;
                    qweight_fit_range(&w, grids[gi], mn * f, mx * f, &cs, &cz);
                    double e = sq_err(v, n, cs, cz, w.bits);
                    if (best < 0 || e < best) {
                        best = e;
                        es = cs;
                        ez = cz;
                    }
                }
                double got = qweight_fit_search(&w, grids[gi], v, n, 20, &s, &z);
                assert_int_equal(s, es);
                assert_int_equal(z, ez);
                assert_true(fabs(got - best) <= 1e-12 * (best + 1e-30));
                assert_true(got <= e0);
                improved += got < e0;
                groups++;
                for (int tries = 0; tries <= 1; tries++) {
                    double g0 = qweight_fit_search(&w, grids[gi], v, n, tries, &s, &z);
                    assert_int_equal(s, s0);
                    assert_int_equal(z, z0);
                    assert_true(fabs(g0 - e0) <= 1e-12 * (e0 + 1e-30));
                }
            }
            qweight_release(&w);
        }
    printf("# fit_search: %d of %d groups found a better shrink than min-max\n", improved, groups);
    assert_true(improved > groups / 10);
}

static void test_fit_rows(void **state)
{
    (void)state;
    const float W[3 * 4] = { -3,    12, 0.5, 1.5, /* row 0: [-3, 12] */
                             1,     2,  3,   7.5, /* row 1: [0, 7.5] */
                             -3.75, -1, -2,  0 }; /* row 2: [-3.75, 0] */
    struct qweight w;
    uint16_t s;
    int8_t z;
    /* Asymmetric, per channel: the same values as RTN's groups in test_rtn_asym. */
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16_ASYM, 3, 4, -1), 0);
    qweight_fit_rows(&w, QGRID_ABSMAX_HALF, W, 3, 4, true);
    const int8_t zp[3] = { -5, -8, 7 };
    const uint16_t sc[3] = { 0x3f80, 0x3f00, 0x3e80 };
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w.zp[i], zp[i]);
        assert_int_equal(w.scale[i], sc[i]);
    }
    qweight_release(&w);
    /* Asymmetric, per tensor: one range [-3.75, 12], written to the first scale and zero point
     * (the scheme has no per-tensor layout; GPTQ's per-tensor mode uses the fit the same way). */
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16_ASYM, 3, 4, -1), 0);
    qweight_fit_rows(&w, QGRID_ABSMAX_HALF, W, 3, 4, false);
    quant_scale_asym(-3.75f, 12.0f, 4, &s, &z);
    assert_int_equal(w.scale[0], s);
    assert_int_equal(w.zp[0], z);
    qweight_release(&w);
    /* Symmetric, per tensor: absmax 12; per channel: 12, 7.5, 3.75. */
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 3, 4, -1), 0);
    qweight_fit_rows(&w, QGRID_ABSMAX_HALF, W, 3, 4, false);
    assert_int_equal(w.scale[0], quant_scale_sym(12.0f, 4, QGRID_ABSMAX_HALF));
    qweight_release(&w);
    assert_int_equal(qweight_init(&w, QSCHEME_W4A16, 3, 4, -1), 0);
    qweight_fit_rows(&w, QGRID_ABSMAX_HALF, W, 3, 4, true);
    const float am[3] = { 12.0f, 7.5f, 3.75f };
    for (int i = 0; i < 3; i++)
        assert_int_equal(w.scale[i], quant_scale_sym(am[i], 4, QGRID_ABSMAX_HALF));
    assert_null(w.zp);
    qweight_release(&w);
}

static void test_rtn_int8_channel(void **state)
{
    (void)state;
    struct qweight w;
    assert_int_equal(qweight_init(&w, QSCHEME_W8A16, 2, 8, -1), 0);
    const float W[16] = { 127, -127, 0.5,    1.5, -126.5, 2.5, 100.25, 3,
                          254, -254, -0.999, 1,   3,      5,   7,      -1.001f };
    const int want[16] = { 127, -127, 0, 2, -126, 2, 100, 3, 127, -127, 0, 0, 2, 2, 4, -1 };
    quant_rtn(&w, W, QGRID_ABSMAX_QMAX);
    check_codes(&w, want);
    assert_int_equal(w.scale[1], 0x4000);
    qweight_release(&w);

    /* W8A8 with the compressed-tensors grid: absmax / 127.5, codes down to -128. */
    assert_int_equal(qweight_init(&w, QSCHEME_W8A8, 1, 4, -1), 0);
    const float W2[4] = { 127.5, -127.5, 0.5, -1.5 };
    const int want2[4] = { 127, -128, 0, -2 };
    quant_rtn(&w, W2, QGRID_ABSMAX_HALF);
    check_codes(&w, want2);
    qweight_release(&w);
}

static void test_rtn_fp8(void **state)
{
    (void)state;
    struct qweight w;
    /* Per tensor: absmax 896 -> scale 2 (one scale for both rows). */
    assert_int_equal(qweight_init(&w, QSCHEME_FP8, 2, 4, -1), 0);
    const float W[8] = { 896, -2, 2.125, 0, 1.0f / 256, 36, 34, -1000 };
    const uint8_t want[8] = { 0x7e, 0xb8, 0x38, 0x00, 0x01, 0x59, 0x58, 0xfe };
    quant_rtn(&w, W, QGRID_ABSMAX_HALF);
    assert_int_equal(w.scale[0], 0x400f); /* 1000 / 448 = 2.232 -> bf16 2.234375 */
    float s = quant_bf16_to_f32(w.scale[0]);
    for (int i = 0; i < 8; i++)
        assert_int_equal(w.fp8[i], fp8_e4m3_from_f32(W[i] / s));
    qweight_release(&w);

    const float W1[8] = { 896, -2, 2.125, 0, 1.0f / 256, 36, 34, -896 };
    assert_int_equal(qweight_init(&w, QSCHEME_FP8, 2, 4, 0), 0);
    quant_rtn(&w, W1, QGRID_ABSMAX_HALF);
    assert_int_equal(w.scale[0], 0x4000);
    for (int i = 0; i < 8; i++)
        assert_int_equal(w.fp8[i], want[i]);
    float dq[8];
    qweight_dequant(&w, dq);
    for (int i = 0; i < 8; i++)
        assert_true(dq[i] == fp8_e4m3_to_f32(want[i]) * 2.0f);
    qweight_release(&w);

    /* Per channel: a zero row gets the eps scale and zero codes. */
    assert_int_equal(qweight_init(&w, QSCHEME_FP8_DYNAMIC, 2, 4, -1), 0);
    const float W2[8] = { 448, 1.0625, 17, -0.5, 0, 0, 0, 0 };
    quant_rtn(&w, W2, QGRID_ABSMAX_HALF);
    assert_int_equal(w.scale[0], 0x3f80);
    assert_int_equal(w.scale[1], 0x3400);
    const uint8_t want2[8] = { 0x7e, 0x38, 0x58, 0xb0, 0, 0, 0, 0 };
    for (int i = 0; i < 8; i++)
        assert_int_equal(w.fp8[i], want2[i]);
    qweight_release(&w);
}

/* RTN on a larger matrix (several threads' worth of rows, a partial last group) equals the
 * definition applied element by element. */
static void test_rtn_large(void **state)
{
    (void)state;
    const int r = 100, c = 300;
    float *W = malloc(sizeof(float) * r * c);
    for (int i = 0; i < r * c; i++)
        W[i] = (float)((int64_t)(rng_next() % 200001) - 100000) * 1e-6f * (i % 7 == 3 ? 9 : 1);
    const struct {
        enum qscheme s;
        int g;
        enum qgrid grid;
    } cases[] = { { QSCHEME_W4A16, 128, QGRID_ABSMAX_HALF },
                  { QSCHEME_W4A16_ASYM, 64, 0 },
                  { QSCHEME_W4A16_ASYM, 256, 0 },
                  { QSCHEME_W8A16_ASYM, 32, 0 },
                  { QSCHEME_W8A16_ASYM, -1, 0 },
                  { QSCHEME_W8A16, -1, QGRID_ABSMAX_QMAX },
                  { QSCHEME_W8A8, 0, 0 },
                  { QSCHEME_FP8_DYNAMIC, -1, 0 },
                  { QSCHEME_FP8, 0, 0 } };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct qweight w;
        assert_int_equal(qweight_init(&w, cases[k].s, r, c, cases[k].g), 0);
        quant_rtn(&w, W, cases[k].grid);
        int gs = w.group_size > 0 ? w.group_size : c;
        float tmn = 0, tmx = 0;
        for (int i = 0; i < r * c; i++) {
            tmn = fminf(tmn, W[i]);
            tmx = fmaxf(tmx, W[i]);
        }
        for (int i = 0; i < r; i++)
            for (int g = 0; g < w.ngroups; g++) {
                float mn = 0, mx = 0;
                for (int j = g * gs; j < EXAQ_MIN(c, (g + 1) * gs); j++) {
                    mn = fminf(mn, W[i * c + j]);
                    mx = fmaxf(mx, W[i * c + j]);
                }
                if (w.group_size == 0) {
                    mn = tmn;
                    mx = tmx;
                }
                uint16_t sb;
                int8_t zb = 0;
                if (w.is_fp8)
                    sb = quant_f32_to_bf16(fmaxf(-mn, mx) / 448.0f);
                else if (w.symmetric)
                    sb = quant_scale_sym(fmaxf(-mn, mx), w.bits, cases[k].grid);
                else
                    quant_scale_asym(mn, mx, w.bits, &sb, &zb);
                size_t si = w.group_size == 0 ? 0 : (size_t)i * w.ngroups + g;
                assert_int_equal(w.scale[si], sb);
                if (w.zp)
                    assert_int_equal(w.zp[si], zb);
                float sf = quant_bf16_to_f32(sb);
                for (int j = g * gs; j < EXAQ_MIN(c, (g + 1) * gs); j++) {
                    if (w.is_fp8)
                        assert_int_equal(w.fp8[i * c + j], fp8_e4m3_from_f32(W[i * c + j] / sf));
                    else
                        assert_int_equal(w.q[i * c + j], quant_code(W[i * c + j], sf, zb, w.bits));
                }
            }
        qweight_release(&w);
    }
    free(W);
}

/* ---- T7: FP8 E4M3FN ------------------------------------------------------------------------ */

/* The format's definition, written independently of the code under test. */
static double e4m3_value(int code)
{
    int e = (code >> 3) & 15, m = code & 7;
    double v = e == 0 ? ldexp(m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return (code & 0x80) ? -v : v;
}

/* Reference conversion: NaN -> S.1111.111; |x| >= 448 (and inf) -> +-448; otherwise the nearest
 * of the 127 non-negative finite codes, ties to the even code (even mantissa LSB). */
static uint8_t e4m3_ref(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0;
    if (isnan(x))
        return sign | 0x7f;
    double a = fabs((double)x);
    if (a >= 448.0)
        return sign | 0x7e;
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c <= 0x7e; c++) {
        double d = fabs(e4m3_value(c) - a);
        if (d < bd || (d == bd && (c & 1) == 0 && (best & 1))) {
            bd = d;
            best = c;
        }
    }
    return sign | (uint8_t)best;
}

static void test_fp8_decode_all(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) {
        float got = fp8_e4m3_to_f32((uint8_t)b);
        if ((b & 0x7f) == 0x7f) {
            assert_true(isnan(got));
            continue;
        }
        assert_true((double)got == e4m3_value(b));
        if (b == 0x80)
            assert_true(signbit(got));
    }
    assert_true(fp8_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(fp8_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(fp8_e4m3_to_f32(0x08) == 0x1p-6f);
}

static void test_fp8_exhaustive(void **state)
{
    (void)state;
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = kern_bf16_to_f32((uint16_t)h);
        uint8_t got = fp8_e4m3_from_f32(x), want = e4m3_ref(x);
        if (got != want && bad++ < 10)
            printf("bf16 0x%04x (%g): got 0x%02x want 0x%02x\n", h, (double)x, got, want);
    }
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)rng_next();
        /* Keep most samples inside the E4M3 range so the rounding paths are exercised. */
        if (i % 4 != 0)
            u = (u & 0x807fffffu) | ((uint32_t)(112 + (u >> 23) % 26) << 23);
        float x = f32_of(u);
        uint8_t got = fp8_e4m3_from_f32(x), want = e4m3_ref(x);
        if (got != want && bad++ < 10)
            printf("f32 0x%08x (%g): got 0x%02x want 0x%02x\n", u, (double)x, got, want);
    }
    assert_int_equal(bad, 0);

    /* Named boundaries. */
    struct {
        float x;
        uint8_t want;
    } cases[] = {
        { 448.0f, 0x7e },        { 464.0f, 0x7e }, /* halfway to 480: even -> 448 */
        { 480.0f, 0x7e },        { 1e30f, 0x7e },
        { INFINITY, 0x7e },      { -INFINITY, 0xfe },
        { -448.0f, 0xfe },       { 432.0f, 0x7e }, /* 416|448 tie */
        { 416.0f, 0x7d },        { 0x1p-9f, 0x01 },
        { 0x1p-10f, 0x00 }, /* 0|2^-9 tie */
        { -0x1p-10f, 0x80 },     { 0x1.000002p-10f, 0x01 },
        { 3 * 0x1p-10f, 0x02 },  { 5 * 0x1p-10f, 0x02 },
        { 15 * 0x1p-10f, 0x08 }, /* 7*2^-9 | 2^-6 tie */
        { 0x1p-6f, 0x08 },       { 1.0625f, 0x38 },
        { 1.1875f, 0x3a },       { 17.0f, 0x58 },
        { 0.0f, 0x00 },          { -0.0f, 0x80 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (fp8_e4m3_from_f32(cases[i].x) != cases[i].want)
            fail_msg("fp8(%a) = 0x%02x, want 0x%02x", (double)cases[i].x,
                     fp8_e4m3_from_f32(cases[i].x), cases[i].want);
    }
    assert_int_equal(fp8_e4m3_from_f32(NAN) & 0x7f, 0x7f);
    assert_int_equal(fp8_e4m3_from_f32(-NAN), 0xff);
}

/* ---- activation simulation ---------------------------------------------------------------- */

static void test_act(void **state)
{
    (void)state;
    float x[3 * 6] = {
        127, -63.5, 0.5, 1.5, -2.5, 100.2f, 0, 0, 0, 0, 0, 0, 254, 3, -3, 1, 5, -254
    };
    const float want[3 * 6] = { 127, -64, 0, 2, -2, 100, 0, 0, 0, 0, 0, 0, 254, 4, -4, 0, 4, -254 };
    quant_act_inplace(QACT_INT8_TOKEN, 0.0f, x, 3, 6);
    for (int i = 0; i < 18; i++)
        if (x[i] != want[i])
            fail_msg("int8 act [%d] = %g, want %g", i, (double)x[i], (double)want[i]);

    float y[2 * 4] = { 448, 1.0625, 17, 0.3f, 0, 0, 0, 0 };
    quant_act_inplace(QACT_FP8_TOKEN, 0.0f, y, 2, 4);
    assert_true(y[0] == 448 && y[1] == 1.0f && y[2] == 16.0f);
    assert_true(y[3] == fp8_e4m3_to_f32(fp8_e4m3_from_f32(0.3f)));
    for (int i = 4; i < 8; i++)
        assert_true(y[i] == 0.0f);

    float z[4] = { 900, 2.125, -1e6f, 0.25 };
    quant_act_inplace(QACT_FP8_STATIC, 2.0f, z, 1, 4);
    assert_true(z[0] == 896 && z[1] == 2.0f && z[2] == -896 && z[3] == 0.25f);

    /* Unset static scale: per-tensor absmax / 448 of this input. */
    float u[4] = { 896, 2.125, -448, 0.25 };
    quant_act_inplace(QACT_FP8_STATIC, 0.0f, u, 2, 2);
    assert_true(u[0] == 896 && u[1] == 2.0f && u[2] == -448 && u[3] == 0.25f);

    float v[2] = { 1.2345f, -7 };
    quant_act_inplace(QACT_NONE, 0.0f, v, 1, 2);
    assert_true(v[0] == 1.2345f && v[1] == -7);

    /* The threaded path (T * n >= 65536) equals row-by-row calls. */
    int T = 300, n = 512;
    float *a = malloc(sizeof(float) * T * n), *b = malloc(sizeof(float) * T * n);
    for (int i = 0; i < T * n; i++)
        a[i] = b[i] = (float)((int64_t)(rng_next() % 20001) - 10000) / 997.0f;
    for (int act = QACT_INT8_TOKEN; act <= QACT_FP8_STATIC; act++) {
        quant_act_inplace((enum qact)act, 0.05f, a, T, n);
        for (int t = 0; t < T; t++)
            quant_act_inplace((enum qact)act, 0.05f, b + (size_t)t * n, 1, n);
        assert_memory_equal(a, b, sizeof(float) * T * n);
    }
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_init),
        cmocka_unit_test(test_bf16_and_code),
        cmocka_unit_test(test_rtn_sym_qmax),
        cmocka_unit_test(test_rtn_sym_half),
        cmocka_unit_test(test_rtn_asym),
        cmocka_unit_test(test_fit_rows),
        cmocka_unit_test(test_fit_search),
        cmocka_unit_test(test_rtn_int8_channel),
        cmocka_unit_test(test_rtn_fp8),
        cmocka_unit_test(test_rtn_large),
        cmocka_unit_test(test_fp8_decode_all),
        cmocka_unit_test(test_fp8_exhaustive),
        cmocka_unit_test(test_act),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
