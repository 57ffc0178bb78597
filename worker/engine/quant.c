/*
 * quant: the quantization grids (integer symmetric/asymmetric, FP8 E4M3FN), round-to-nearest
 * quantization of a weight matrix into a `struct qweight`, exact dequantization, and the
 * activation simulation of W8A8/FP8 (see quant.h for the contracts, docs/quantization.md for
 * where each convention comes from).
 *
 * Everything that chooses a code goes through quant_scale_sym / quant_scale_asym / quant_code
 * (integers) or fp8_e4m3_from_f32 (FP8), so RTN, GPTQ and the writer agree bit for bit. Scales
 * are rounded to BF16 before any code is chosen. Rounding is half to even everywhere (rintf in
 * the default rounding mode; never roundf). This module never prints and never aborts on data:
 * NaN and infinite inputs give defined (if useless) codes.
 */
#include "worker/engine/quant.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "kernels/par.h"

/* Smallest scale compressed-tensors allows: calculate_qparams clamps every scale to
 * torch.finfo(float32).eps (compressed-tensors helpers.py); 2^-23 is exact in BF16 (0x3400). */
#define QUANT_SCALE_MIN FLT_EPSILON
/* Largest finite BF16: an infinite range is clamped here so no scale is ever inf. */
#define BF16_MAX_FINITE 0x7f7fu

/* Rows handed to one par_for task by quant_rtn. */
#define RTN_ROWS_PER_TASK 16

/* ---- names -------------------------------------------------------------------------------- */

static const char *const scheme_names[QSCHEME__COUNT] = {
    [QSCHEME_W4A16] = "W4A16",
    [QSCHEME_W4A16_ASYM] = "W4A16_ASYM",
    [QSCHEME_W8A16] = "W8A16",
    [QSCHEME_W8A8] = "W8A8",
    [QSCHEME_FP8_DYNAMIC] = "FP8_DYNAMIC",
    [QSCHEME_FP8] = "FP8",
    [QSCHEME_W8A16_ASYM] = "W8A16_ASYM",
};

const char *qscheme_name(enum qscheme s)
{
    if ((int)s < 0 || s >= QSCHEME__COUNT)
        return "?";
    return scheme_names[s];
}

int qscheme_parse(const char *name, enum qscheme *out)
{
    if (!name)
        return -1;
    for (int i = 0; i < QSCHEME__COUNT; i++)
        if (strcasecmp(name, scheme_names[i]) == 0) {
            if (out)
                *out = (enum qscheme)i;
            return 0;
        }
    return -1;
}

int qscheme_bits(enum qscheme s)
{
    return s == QSCHEME_W4A16 || s == QSCHEME_W4A16_ASYM ? 4 : 8;
}

bool qscheme_symmetric(enum qscheme s)
{
    return s != QSCHEME_W4A16_ASYM && s != QSCHEME_W8A16_ASYM;
}

/* ---- BF16 and FP8 ------------------------------------------------------------------------- */

uint16_t quant_f32_to_bf16(float f)
{
    return kern_f32_to_bf16(f);
}

float quant_bf16_to_f32(uint16_t b)
{
    return kern_bf16_to_f32(b);
}

uint8_t fp8_e4m3_from_f32(float x)
{
    uint32_t u = kern_f32_to_bits(x);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7fu; /* NaN: the only E4M3FN NaN pattern, S.1111.111 */
    if (a >= 0x43e00000u)
        return sign | 0x7eu; /* |x| >= 448 and +-inf saturate to +-448 (SATFINITE) */
    if (a < 0x3c800000u) {
        /* Below the smallest normal 2^-6: a multiple of 2^-9. x * 512 is exact, rintf rounds
         * half to even, and the result 0..8 is the code (8 = 0x08 is 2^-6, the carry into the
         * exponent field). */
        float m = rintf(kern_bits_to_f32(a) * 512.0f);
        return sign | (uint8_t)m;
    }
    /* Normal: round the 23-bit mantissa to 3 bits, half to even (a carry into the exponent is
     * the correct next binade), then rebias the exponent from 127 to 7. The result is at most
     * 0x7e because every value below 448 rounds to at most 448. */
    uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    return sign | (uint8_t)((r >> 20) - (120u << 3));
}

float fp8_e4m3_to_f32(uint8_t b)
{
    return kern_f8e4m3_to_f32(b);
}

/* ---- integer grids ------------------------------------------------------------------------ */

/* Rounds a positive fp32 scale to BF16, keeping it in [QUANT_SCALE_MIN, max finite]. */
static uint16_t scale_to_bf16(float s)
{
    if (!(s >= QUANT_SCALE_MIN)) /* also NaN */
        s = QUANT_SCALE_MIN;
    uint16_t b = kern_f32_to_bf16(s);
    if ((b & 0x7fffu) >= 0x7f80u)
        b = BF16_MAX_FINITE;
    return b;
}

uint16_t quant_scale_sym(float absmax, int bits, enum qgrid g)
{
    float qmax = (float)((1 << (bits - 1)) - 1);
    float denom = g == QGRID_ABSMAX_HALF ? qmax + 0.5f : qmax; /* 7.5 / 127.5, or 7 / 127 */
    return scale_to_bf16(fabsf(absmax) / denom);
}

void quant_scale_asym(float xmin, float xmax, int bits, uint16_t *scale, int8_t *zp)
{
    /* compressed-tensors calculate_qparams: the range always includes 0. */
    if (!(xmin < 0.0f))
        xmin = 0.0f;
    if (!(xmax > 0.0f))
        xmax = 0.0f;
    float qmin = (float)-(1 << (bits - 1)), qmax = (float)((1 << (bits - 1)) - 1);
    uint16_t sb = scale_to_bf16((xmax - xmin) / (qmax - qmin));
    float s = kern_bf16_to_f32(sb);
    float z = qmin - xmin / s;
    z = fminf(fmaxf(z, qmin), qmax);
    *scale = sb;
    *zp = (int8_t)rintf(z);
}

void qweight_fit_range(const struct qweight *w, enum qgrid g, float mn, float mx, uint16_t *scale,
                       int8_t *zp)
{
    if (w->symmetric) {
        *scale = quant_scale_sym(fmaxf(-mn, mx), w->bits, g);
        *zp = 0;
    } else {
        quant_scale_asym(mn, mx, w->bits, scale, zp);
    }
}

/* Squared rounding error of v [n] with scale s and zero point z on bits. */
static double group_sq_err(const float *v, int n, uint16_t s, int8_t z, int bits)
{
    float sv = kern_bf16_to_f32(s);
    double e = 0;
    for (int k = 0; k < n; k++) {
        float d = v[k] - (float)(quant_code(v[k], sv, z, bits) - z) * sv;
        e += (double)d * d;
    }
    return e;
}

double qweight_fit_search(const struct qweight *w, enum qgrid g, const float *v, int n, int tries,
                          uint16_t *scale, int8_t *zp)
{
    float mn = 0.0f, mx = 0.0f;
    for (int k = 0; k < n; k++) {
        mn = v[k] < mn ? v[k] : mn;
        mx = v[k] > mx ? v[k] : mx;
    }
    qweight_fit_range(w, g, mn, mx, scale, zp);
    double best = group_sq_err(v, n, *scale, *zp, w->bits);
    for (int t = 1; t < tries; t++) {
        float f = 1.0f - 0.01f * (float)t;
        uint16_t sc;
        int8_t z;
        qweight_fit_range(w, g, mn * f, mx * f, &sc, &z);
        double e = group_sq_err(v, n, sc, z, w->bits);
        if (e < best) {
            best = e;
            *scale = sc;
            *zp = z;
        }
    }
    return best;
}

void qweight_fit_rows(struct qweight *w, enum qgrid g, const float *W, int r, int c,
                      bool per_channel)
{
    float tmn = 0.0f, tmx = 0.0f;
    int8_t z;
    for (int i = 0; i < r; i++) {
        float mn = 0.0f, mx = 0.0f;
        const float *row = W + (size_t)i * c;
        for (int j = 0; j < c; j++) {
            mn = row[j] < mn ? row[j] : mn;
            mx = row[j] > mx ? row[j] : mx;
        }
        if (per_channel) {
            qweight_fit_range(w, g, mn, mx, &w->scale[i], &z);
            if (w->zp)
                w->zp[i] = z;
        }
        tmn = fminf(tmn, mn);
        tmx = fmaxf(tmx, mx);
    }
    if (!per_channel) {
        qweight_fit_range(w, g, tmn, tmx, &w->scale[0], &z);
        if (w->zp)
            w->zp[0] = z;
    }
}

int quant_code(float x, float scale, int zp, int bits)
{
    float qmin = (float)-(1 << (bits - 1)), qmax = (float)((1 << (bits - 1)) - 1);
    float v = x / scale + (float)zp;
    v = fminf(fmaxf(v, qmin), qmax); /* clamp first (NaN becomes qmin), then round */
    return (int)rintf(v);
}

/* ---- struct qweight ------------------------------------------------------------------------ */

int qweight_init(struct qweight *w, enum qscheme s, int out, int in, int group_size)
{
    if (!w)
        return -EINVAL;
    memset(w, 0, sizeof(*w));
    if ((int)s < 0 || s >= QSCHEME__COUNT || out <= 0 || in <= 0)
        return -EINVAL;
    if ((uint64_t)out * (uint64_t)in > (uint64_t)SIZE_MAX / 4)
        return -ENOMEM;
    w->scheme = s;
    w->out = out;
    w->in = in;
    w->symmetric = qscheme_symmetric(s);
    w->bits = qscheme_bits(s);
    w->is_fp8 = s == QSCHEME_FP8 || s == QSCHEME_FP8_DYNAMIC;
    switch (s) {
    case QSCHEME_W4A16:
    case QSCHEME_W4A16_ASYM:
    case QSCHEME_W8A16:
    case QSCHEME_W8A16_ASYM:
        /* pack-quantized: groups or channel. */
        if (group_size == 0 || group_size < -1)
            return -EINVAL;
        w->act = QACT_NONE;
        break;
    case QSCHEME_W8A8:
        /* int-quantized: vLLM's int8 W8A8 takes channel or tensor weight scales. */
        if (group_size != -1 && group_size != 0)
            return -EINVAL;
        w->act = QACT_INT8_TOKEN;
        break;
    case QSCHEME_FP8_DYNAMIC:
        /* The preset is channel; -1 and 0 both mean "not grouped" to the caller. */
        if (group_size > 0 || group_size < -1)
            return -EINVAL;
        group_size = -1;
        w->act = QACT_FP8_TOKEN;
        break;
    case QSCHEME_FP8:
        if (group_size > 0 || group_size < -1)
            return -EINVAL;
        group_size = 0;
        w->act = QACT_FP8_STATIC;
        break;
    default:
        return -EINVAL;
    }
    w->group_size = group_size;
    w->ngroups = group_size > 0 ? (in + group_size - 1) / group_size : 1;
    size_t n = (size_t)out * (size_t)in;
    size_t ns = group_size == 0 ? 1 : (size_t)out * (size_t)w->ngroups;
    if (w->is_fp8)
        w->fp8 = xcalloc(n, 1);
    else
        w->q = xcalloc(n, 1);
    w->scale = xcalloc(ns, sizeof(uint16_t));
    if (!w->symmetric)
        w->zp = xcalloc(ns, 1);
    w->input_scale = 0.0f;
    return 0;
}

void qweight_release(struct qweight *w)
{
    if (!w)
        return;
    free(w->q);
    free(w->fp8);
    free(w->scale);
    free(w->zp);
    free(w->g_idx);
    memset(w, 0, sizeof(*w));
}

int qweight_group_of(const struct qweight *w, int c)
{
    if (w->g_idx)
        return w->g_idx[c];
    return w->group_size > 0 ? c / w->group_size : 0;
}

/* Index into scale[]/zp[] of row r, group g. */
static inline size_t sidx(const struct qweight *w, int r, int g)
{
    return w->group_size == 0 ? 0 : (size_t)r * (size_t)w->ngroups + (size_t)g;
}

void qweight_dequant(const struct qweight *w, float *dst)
{
    for (int r = 0; r < w->out; r++) {
        float *d = dst + (size_t)r * w->in;
        size_t base = (size_t)r * w->in;
        for (int c = 0; c < w->in; c++) {
            size_t k = sidx(w, r, qweight_group_of(w, c));
            float s = kern_bf16_to_f32(w->scale[k]);
            if (w->is_fp8) {
                d[c] = kern_f8e4m3_to_f32(w->fp8[base + c]) * s;
            } else {
                int z = w->zp ? w->zp[k] : 0;
                d[c] = (float)(w->q[base + c] - z) * s;
            }
        }
    }
}

/* ---- RTN ---------------------------------------------------------------------------------- */

struct rtn_job {
    struct qweight *w;
    const float *W;
    enum qgrid g;
};

/* Fits the parameters of one group (symmetric, asymmetric or FP8) on x[0..n) and stores them at
 * scale[k] / zp[k]; returns the fp32 scale. */
static float fit_store(struct qweight *w, const float *x, int n, size_t k, enum qgrid g)
{
    float mn = 0.0f, mx = 0.0f;
    for (int i = 0; i < n; i++) {
        if (x[i] < mn)
            mn = x[i];
        if (x[i] > mx)
            mx = x[i];
    }
    if (w->is_fp8) {
        w->scale[k] = scale_to_bf16(fmaxf(-mn, mx) / 448.0f);
    } else if (w->symmetric) {
        w->scale[k] = quant_scale_sym(fmaxf(-mn, mx), w->bits, g);
    } else {
        quant_scale_asym(mn, mx, w->bits, &w->scale[k], &w->zp[k]);
    }
    return kern_bf16_to_f32(w->scale[k]);
}

/* Codes of x[0..n) (row r's columns c0..c0+n) with the parameters at index k. */
static void code_run(struct qweight *w, const float *x, int n, size_t off, size_t k)
{
    float s = kern_bf16_to_f32(w->scale[k]);
    if (w->is_fp8) {
        for (int i = 0; i < n; i++)
            w->fp8[off + i] = fp8_e4m3_from_f32(x[i] / s);
        return;
    }
    int z = w->zp ? w->zp[k] : 0;
    for (int i = 0; i < n; i++)
        w->q[off + i] = (int8_t)quant_code(x[i], s, z, w->bits);
}

static void rtn_task(void *arg, int task, int tid)
{
    struct rtn_job *j = arg;
    struct qweight *w = j->w;
    (void)tid;
    int r0 = task * RTN_ROWS_PER_TASK, r1 = EXAQ_MIN(r0 + RTN_ROWS_PER_TASK, w->out);
    for (int r = r0; r < r1; r++) {
        const float *x = j->W + (size_t)r * w->in;
        size_t off = (size_t)r * w->in;
        if (w->group_size > 0) {
            for (int g = 0; g < w->ngroups; g++) {
                int c0 = g * w->group_size, n = EXAQ_MIN(w->group_size, w->in - c0);
                size_t k = sidx(w, r, g);
                fit_store(w, x + c0, n, k, j->g);
                code_run(w, x + c0, n, off + c0, k);
            }
        } else if (w->group_size == -1) {
            size_t k = sidx(w, r, 0);
            fit_store(w, x, w->in, k, j->g);
            code_run(w, x, w->in, off, k);
        } else {
            code_run(w, x, w->in, off, 0); /* per tensor: parameters fitted up front */
        }
    }
}

void quant_rtn(struct qweight *w, const float *W, enum qgrid g)
{
    if (!w || !W || (!w->q && !w->fp8) || !w->scale)
        return;
    free(w->g_idx);
    w->g_idx = NULL;
    if (w->group_size == 0) {
        /* One range over the whole tensor. */
        float mn = 0.0f, mx = 0.0f;
        size_t n = (size_t)w->out * w->in;
        for (size_t i = 0; i < n; i++) {
            if (W[i] < mn)
                mn = W[i];
            if (W[i] > mx)
                mx = W[i];
        }
        float pair[2] = { mn, mx };
        fit_store(w, pair, 2, 0, g);
    }
    struct rtn_job j = { w, W, g };
    par_for((w->out + RTN_ROWS_PER_TASK - 1) / RTN_ROWS_PER_TASK, rtn_task, &j);
}

/* ---- activation simulation ----------------------------------------------------------------- */

/* SmoothQuant fake_quant.py quantize_activation_per_token_absmax: the absmax is clamped to 1e-5
 * before dividing by 127, so an all-zero token stays zero without a division by zero. */
#define ACT_INT8_ABSMAX_MIN 1e-5f
/* vLLM's dynamic per-token FP8 quantization floors the scale at 1 / (448 * 512). */
#define ACT_FP8_SCALE_MIN (1.0f / (448.0f * 512.0f))
/* Tokens per par_for task. */
#define ACT_ROWS_PER_TASK 8

struct act_job {
    enum qact act;
    float scale; /* static FP8 scale (already validated) */
    float *x;
    int T, n;
};

static float row_absmax(const float *x, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m)
            m = a;
    }
    return m;
}

static void act_row(const struct act_job *j, float *x)
{
    int n = j->n;
    switch (j->act) {
    case QACT_INT8_TOKEN: {
        float s = fmaxf(row_absmax(x, n), ACT_INT8_ABSMAX_MIN) / 127.0f;
        for (int i = 0; i < n; i++)
            x[i] = fminf(fmaxf(rintf(x[i] / s), -127.0f), 127.0f) * s;
        break;
    }
    case QACT_FP8_TOKEN: {
        float s = fmaxf(row_absmax(x, n) / 448.0f, ACT_FP8_SCALE_MIN);
        for (int i = 0; i < n; i++)
            x[i] = fp8_e4m3_to_f32(fp8_e4m3_from_f32(x[i] / s)) * s;
        break;
    }
    case QACT_FP8_STATIC: {
        float s = j->scale;
        for (int i = 0; i < n; i++)
            x[i] = fp8_e4m3_to_f32(fp8_e4m3_from_f32(x[i] / s)) * s;
        break;
    }
    case QACT_NONE:
    default:
        break;
    }
}

static void act_task(void *arg, int task, int tid)
{
    struct act_job *j = arg;
    (void)tid;
    int t0 = task * ACT_ROWS_PER_TASK, t1 = EXAQ_MIN(t0 + ACT_ROWS_PER_TASK, j->T);
    for (int t = t0; t < t1; t++)
        act_row(j, j->x + (size_t)t * j->n);
}

void quant_act_inplace(enum qact act, float input_scale, float *x, int T, int n)
{
    if (!x || T <= 0 || n <= 0 || act == QACT_NONE)
        return;
    struct act_job j = { act, input_scale, x, T, n };
    if (act == QACT_FP8_STATIC && !(input_scale > 0.0f && isfinite(input_scale))) {
        /* No valid calibrated scale: use the per-tensor absmax of this input, which is what
         * calibration would have measured on it (documented in docs/quantization.md). */
        float m = 0.0f;
        for (int t = 0; t < T; t++)
            m = fmaxf(m, row_absmax(x + (size_t)t * n, n));
        j.scale = fmaxf(m / 448.0f, ACT_FP8_SCALE_MIN);
    }
    if ((size_t)T * (size_t)n < 65536) {
        for (int t = 0; t < T; t++)
            act_row(&j, x + (size_t)t * n);
        return;
    }
    par_for((T + ACT_ROWS_PER_TASK - 1) / ACT_ROWS_PER_TASK, act_task, &j);
}
