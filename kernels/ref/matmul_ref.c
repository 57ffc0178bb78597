/*
 * matmul_ref: the specification of y = x . W^T (plain loops, double accumulation, one thread),
 * plus the `struct linear` lifecycle helpers that have no fast variant: construction and
 * validation of the quantized formats and their exact decoder (linear_to_f32).
 *
 * The decoder here is the definition of a quantized weight: w = (float)(q - zp) * bf16(scale)
 * for integer codes and e4m3(b) * bf16(scale) for FP8, one fp32 multiply, exactly as
 * worker/engine/quant.c qweight_dequant computes it. The fast kernels (qmatmul_cpu.c) use it for
 * their generic paths and are tested against matmul_ref.
 */
#include "kernels/matmul.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

void linear_init_dense(struct linear *L, int out, int in, enum kern_dtype dt, const void *w)
{
    memset(L, 0, sizeof(*L));
    L->fmt = LINEAR_FMT_DENSE;
    L->out = out;
    L->in = in;
    L->dtype = dt;
    L->w = w;
}

void linear_init_dense_take(struct linear *L, int out, int in, enum kern_dtype dt, void *w)
{
    linear_init_dense(L, out, in, dt, w);
    L->owned = w;
}

void linear_release(struct linear *L)
{
    if (!L)
        return;
    free(L->owned);
    memset(L, 0, sizeof(*L));
}

/* Whether the folded GEMV (a group summed on raw codes, then scaled) and the packed GEMM give
 * the exact weights for this scale: 0, or a finite magnitude in [2^-100, 2^100], so that
 * (q - zp) * scale (at most 9 + 8 significant bits) and e4m3 * scale (4 + 8) are exact fp32
 * products with no overflow or underflow. Checkpoints never come near these limits. */
static int scale_ok(uint16_t b)
{
    float s = fabsf(kern_bf16_to_f32(b));
    return s == 0.0f || (s >= 0x1p-100f && s <= 0x1p100f);
}

int linear_init_quant(struct linear *L, const struct linear_qsrc *src, enum linear_fmt fmt)
{
    memset(L, 0, sizeof(*L));
    if (!src || src->out <= 0 || src->in <= 0 || !src->scale || src->group_size < -1)
        return -EINVAL;
    int fp8 = fmt == LINEAR_FMT_FP8;
    if (fmt != LINEAR_FMT_INT && fmt != LINEAR_FMT_INT4 && !fp8)
        return -EINVAL;
    if (fp8 ? (!src->fp8 || src->q || src->zp) : (!src->q || src->fp8))
        return -EINVAL;
    if (!fp8 && (src->bits < 2 || src->bits > 8))
        return -EINVAL;
    if (src->g_idx && src->group_size <= 0)
        return -EINVAL;
    const int out = src->out, in = src->in, gs = src->group_size;
    const int ngroups = gs > 0 ? (in + gs - 1) / gs : 1;
    const size_t n = (size_t)out * (size_t)in;
    const size_t ns = gs == 0 ? 1 : (size_t)out * (size_t)ngroups;
    unsigned flags = 0;
    if (src->g_idx)
        for (int c = 0; c < in; c++)
            if (src->g_idx[c] < 0 || src->g_idx[c] >= ngroups)
                return -EINVAL;
    if (fmt == LINEAR_FMT_INT4)
        for (size_t i = 0; i < n; i++)
            if (src->q[i] < -8 || src->q[i] > 7)
                return -ERANGE;
    for (size_t i = 0; i < ns && !flags; i++)
        if (!scale_ok(src->scale[i]))
            flags |= LINEAR_QF_GENERIC;
    if (fp8)
        for (size_t i = 0; i < n && !flags; i++)
            if ((src->fp8[i] & 0x7fu) == 0x7fu) /* the E4M3FN NaN, S.1111.111 */
                flags |= LINEAR_QF_GENERIC;

    /* The owned block: the g_idx maps (int32), then the codes (64-byte aligned). */
    size_t nmap = src->g_idx ? 3 * (size_t)in + (size_t)ngroups + 1 : 0;
    size_t map_bytes = (nmap * sizeof(int32_t) + 63) / 64 * 64;
    size_t rb = fmt == LINEAR_FMT_INT4 ? linear_int4_row_bytes(in) : (size_t)in;
    size_t code_bytes = fmt == LINEAR_FMT_INT4 || src->g_idx ? (size_t)out * rb : 0;
    uint8_t *blk = NULL;
    if (map_bytes + code_bytes > 0) {
        size_t total = map_bytes + (code_bytes + 63) / 64 * 64 + 64; /* a multiple of 64 */
        blk = aligned_alloc(64, total);
        if (!blk)
            return -ENOMEM;
        memset(blk, 0, total);
    }
    int32_t *perm = NULL, *pinv = NULL, *gpos = NULL, *gstart = NULL;
    if (src->g_idx) {
        /* Stable counting sort of the columns by group. */
        perm = (int32_t *)blk;
        pinv = perm + in;
        gpos = pinv + in;
        gstart = gpos + in;
        for (int c = 0; c < in; c++)
            gstart[src->g_idx[c] + 1]++;
        for (int g = 0; g < ngroups; g++)
            gstart[g + 1] += gstart[g];
        for (int c = 0; c < in; c++) {
            int g = src->g_idx[c], j = gstart[g] + gpos[g]++; /* gpos: a fill counter here */
            pinv[c] = j;
        }
        for (int c = 0; c < in; c++)
            perm[pinv[c]] = c;
        for (int j = 0; j < in; j++)
            gpos[j] = src->g_idx[perm[j]];
    }
    uint8_t *codes = blk ? blk + map_bytes : NULL;
    const uint8_t *from = fp8 ? src->fp8 : (const uint8_t *)src->q;
    if (fmt == LINEAR_FMT_INT4) {
        for (int r = 0; r < out; r++) {
            const int8_t *q = src->q + (size_t)r * in;
            uint8_t *d = codes + (size_t)r * rb;
            for (int j = 0; j < in; j++) {
                uint8_t u = (uint8_t)q[perm ? perm[j] : j] & 15u;
                d[(j >> 4) * 8 + (j & 7)] |= (uint8_t)((j & 8) ? u << 4 : u);
            }
        }
    } else if (perm) {
        for (int r = 0; r < out; r++)
            for (int j = 0; j < in; j++)
                codes[(size_t)r * in + j] = from[(size_t)r * in + perm[j]];
    }
    L->fmt = fmt;
    L->out = out;
    L->in = in;
    L->bits = fp8 ? 8 : fmt == LINEAR_FMT_INT4 && src->bits > 4 ? 4 : src->bits;
    L->group_size = gs;
    L->ngroups = ngroups;
    L->scale = src->scale;
    L->zp = src->zp;
    L->g_idx = src->g_idx;
    L->perm = perm;
    L->pinv = pinv;
    L->gpos = gpos;
    L->gstart = gstart;
    L->w = codes ? (const void *)codes : (const void *)from;
    L->owned = blk;
    L->qflags = flags;
    return 0;
}

/* The group of input column c. */
static inline int group_of(const struct linear *L, int c)
{
    if (L->g_idx)
        return L->g_idx[c];
    return L->group_size > 0 ? c / L->group_size : 0;
}

/* The raw code of row n, original column c as an integer: q (INT, INT4) or the E4M3 byte
 * (FP8). With g_idx the codes are stored in group order: column c sits at position pinv[c]. */
static inline int code_at(const struct linear *L, int n, int c)
{
    if (L->pinv)
        c = L->pinv[c];
    switch (L->fmt) {
    case LINEAR_FMT_INT:
        return ((const int8_t *)L->w)[(size_t)n * L->in + c];
    case LINEAR_FMT_INT4: {
        const uint8_t *row = (const uint8_t *)L->w + (size_t)n * linear_int4_row_bytes(L->in);
        int8_t b = (int8_t)row[(c >> 4) * 8 + (c & 7)];
        return (c & 8) ? b >> 4 : (int8_t)(b * 16) >> 4; /* the signed high / low nibble */
    }
    case LINEAR_FMT_FP8:
        return ((const uint8_t *)L->w)[(size_t)n * L->in + c];
    case LINEAR_FMT_DENSE:
    default:
        return 0;
    }
}

/* One exact quantized weight. */
static inline float qw_at(const struct linear *L, int n, int c)
{
    size_t k = matmul__sidx(L, n, group_of(L, c));
    float s = kern_bf16_to_f32(L->scale[k]);
    if (L->fmt == LINEAR_FMT_FP8)
        return kern_f8e4m3_to_f32((uint8_t)code_at(L, n, c)) * s;
    int z = L->zp ? L->zp[k] : 0;
    return (float)(code_at(L, n, c) - z) * s;
}

void matmul__qrow_f32(const struct linear *L, int n, int k0, int k1, float *dst)
{
    for (int c = k0; c < k1; c++)
        dst[c - k0] = qw_at(L, n, c);
}

int linear_to_f32(const struct linear *L, float *dst)
{
    switch (L->fmt) {
    case LINEAR_FMT_DENSE: {
        size_t esz = kern_dtype_size(L->dtype);
        for (int n = 0; n < L->out; n++)
            kern_row_to_f32(L->dtype, (const char *)L->w + (size_t)n * L->in * esz,
                            dst + (size_t)n * L->in, (size_t)L->in);
        return 0;
    }
    case LINEAR_FMT_INT:
    case LINEAR_FMT_INT4:
    case LINEAR_FMT_FP8:
        for (int n = 0; n < L->out; n++)
            matmul__qrow_f32(L, n, 0, L->in, dst + (size_t)n * L->in);
        return 0;
    default:
        return -ENOSYS;
    }
}

size_t linear_weight_bytes(const struct linear *L)
{
    size_t n = (size_t)L->out * (size_t)L->in;
    size_t ns = L->group_size == 0 ? 1 : (size_t)L->out * (size_t)L->ngroups;
    switch (L->fmt) {
    case LINEAR_FMT_DENSE:
        return n * kern_dtype_size(L->dtype);
    case LINEAR_FMT_INT:
    case LINEAR_FMT_FP8:
        return n + ns * (2 + (L->zp ? 1 : 0));
    case LINEAR_FMT_INT4:
        return (size_t)L->out * linear_int4_row_bytes(L->in) + ns * (2 + (L->zp ? 1 : 0));
    default:
        return 0;
    }
}

static float w_at(const struct linear *L, int n, int k)
{
    if (L->fmt != LINEAR_FMT_DENSE)
        return qw_at(L, n, k);
    size_t idx = (size_t)n * L->in + k;
    switch (L->dtype) {
    case KERN_F32:
        return ((const float *)L->w)[idx];
    case KERN_BF16:
        return kern_bf16_to_f32(((const uint16_t *)L->w)[idx]);
    case KERN_F16:
        return kern_f16_to_f32(((const uint16_t *)L->w)[idx]);
    }
    return 0.0f;
}

void matmul_ref(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    for (int t = 0; t < T; t++) {
        for (int n = 0; n < L->out; n++) {
            double s = 0.0;
            for (int k = 0; k < L->in; k++)
                s += (double)x[(size_t)t * L->in + k] * (double)w_at(L, n, k);
            float *yo = &y[(size_t)t * L->out + n];
            *yo = accumulate ? *yo + (float)s : (float)s;
        }
    }
}
