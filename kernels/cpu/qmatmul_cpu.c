/*
 * qmatmul_cpu: the fast CPU y = x . W^T for the quantized formats of `struct linear` (INT: int8
 * codes, INT4: packed nibbles, FP8: E4M3 bytes; see matmul.h), reached through matmul_cpu().
 * It never materialises W: codes are decoded in registers.
 *
 * DESIGN.
 *   Decode GEMV (T < MATMUL_GEMV_MAX_T, INT / INT4, aligned groups; qgemv_cpu.c): x is quantized to
 * int16 per 128-column chunk and the dot products run in integer lanes (VNNI where present); see
 * the comment there for its error bound. Everything it declines (matmul__qgemv_i16_fits) takes the
 * fp32 GEMV below. GEMV (T < MATMUL_GEMV_MAX_T). Tasks over output rows (par_for, as the dense
 * GEMV). Each W row is streamed once for all T token rows: 4 rows x 1 token (two FMA chains per
 * row) at T = 1, 2 rows x T tokens otherwise. Per group of columns the kernel sums x * (q - zp) in
 * fp32 lanes on the raw codes (int8 -> fp32 is vpmovsxbd + vcvtdq2ps; a nibble is `& 15` or `>> 4`
 *   of a vpmovzxbd lane, stored as q + 8 so the offset joins the zero point; E4M3 is moved into
 *   an IEEE half (byte << 8, arithmetic shift right by one, clear bit 14) and widened with
 *   F16C, which gives the E4M3 value / 256 exactly, subnormals included), then folds the
 *   group's lane sums into the row's vector accumulator with one multiply-add by the group's
 *   BF16 scale: no multiply per weight. FP8 multiplies the finished dot product by 256. With the
 *   preconditions linear_init_quant checks (scales 0 or in [2^-100, 2^100], no NaN codes) every
 *   weight (q - zp) * scale is an exact fp32 product, so this is the same sum as x . W^T with
 *   the exact W in another order: fp32 summation noise only (Higham's bound, tested).
 *   GEMM (T >= MATMUL_GEMV_MAX_T). The dense driver of kernels/gemm.h; B panels are filled with
 *   the exact fp32 weights (q - zp) * scale, decoded 8 columns x 8 rows at a time and transposed
 *   in registers (AVX2), so without g_idx the result is bit-identical to the dense F32 GEMM on
 *   the dequantized matrix.
 *   g_idx: the codes are stored in group order (matmul.h), so x is gathered into that order once
 *   per call and the same code runs with the group boundaries from gstart; group starts that
 *   are not multiples of 8 get a scalar head, and an 8-column packing step that straddles two
 *   groups is decoded per element.
 *   Generic path (LINEAR_QF_GENERIC: odd scales or FP8 NaN codes; and B packing without AVX2):
 *   rows are decoded element by element into fp32 scratch (exact weights), then the dense dot /
 *   pack runs on them. Slower, same results.
 * Scratch: par_scratch slot 2 of the calling thread (x in group order) and slot 3 (generic
 * rows and packing, any thread); the GEMM driver uses slots 0 and 1, qgemv_cpu.c slot 4.
 */
#include "kernels/matmul.h"

#include "kernels/gemm.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef int8_t v8i8 __attribute__((vector_size(8)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

#define QSLOT_XPERM 2
#define QSLOT_ROW   3

/* ---- decoding codes to fp32 lanes ------------------------------------------------------- */

/* Eight int8 codes as fp32. */
static ALWAYS_INLINE v8f i8x8(const int8_t *p)
{
#if defined(__AVX2__)
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    return (v8f)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
#else
    v8i8 b;
    memcpy(&b, p, sizeof(b));
    return __builtin_convertvector(b, v8f);
#endif
}

/* The 16 signed nibbles of one INT4 block (8 bytes) as fp32: columns 0..7 (low nibbles) and
 * 8..15 (high nibbles). Each byte is sign-extended to 32 bits: an arithmetic shift right by 4
 * gives the high nibble, a shift left by 28 and back the low one. */
static ALWAYS_INLINE void u4x16(const uint8_t *p, v8f *lo, v8f *hi)
{
#if defined(__AVX2__)
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    *lo = (v8f)_mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28));
    *hi = (v8f)_mm256_cvtepi32_ps(_mm256_srai_epi32(v, 4));
#else
    v8i8 b;
    memcpy(&b, p, sizeof(b));
    v8i v = __builtin_convertvector(b, v8i);
    *lo = __builtin_convertvector((v8i)((v8u32)v << 28) >> 28, v8f);
    *hi = __builtin_convertvector(v >> 4, v8f);
#endif
}

static ALWAYS_INLINE v8f u4lo8(const uint8_t *p)
{
#if defined(__AVX2__)
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return (v8f)_mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28), 28));
#else
    v8f lo, hi;
    u4x16(p, &lo, &hi);
    return lo;
#endif
}

static ALWAYS_INLINE v8f u4hi8(const uint8_t *p)
{
#if defined(__AVX2__)
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return (v8f)_mm256_cvtepi32_ps(_mm256_srai_epi32(v, 4));
#else
    v8f lo, hi;
    u4x16(p, &lo, &hi);
    return hi;
#endif
}

/* Eight E4M3FN bytes (no NaN among them) as fp32 value / 256, exactly: the byte's exponent and
 * mantissa bits land in an IEEE half's fields (bias 15 instead of 7, hence the 2^-8), and the
 * half's subnormals are the E4M3 subnormals. */
static ALWAYS_INLINE v8f e4m3x8(const uint8_t *p)
{
#if defined(__F16C__)
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m128i h = _mm_unpacklo_epi8(_mm_setzero_si128(), b); /* b << 8 in 16-bit lanes */
    h = _mm_srai_epi16(h, 1);                              /* sign also lands in bit 14 */
    h = _mm_and_si128(h, _mm_set1_epi16((short)0xbfff));   /* clear it */
    return (v8f)_mm256_cvtph_ps(h);
#else
    float f[8];
    for (int i = 0; i < 8; i++)
        f[i] = kern_f8e4m3_to_f32(p[i]) * (1.0f / 256.0f);
    return v8_loadu(f);
#endif
}

/* Start of row n's codes. */
static ALWAYS_INLINE const uint8_t *qrow(enum linear_fmt f, const struct linear *L, int n)
{
    size_t rb = f == LINEAR_FMT_INT4 ? linear_int4_row_bytes(L->in) : (size_t)L->in;
    return (const uint8_t *)L->w + (size_t)n * rb;
}

/* Raw values (q, or e4m3 / 256 for FP8) of columns k..k+7; k % 8 == 0 for INT4. */
static ALWAYS_INLINE v8f dec8(enum linear_fmt f, const uint8_t *row, int k)
{
    switch (f) {
    case LINEAR_FMT_INT4:
        return (k & 8) ? u4hi8(row + (k >> 4) * 8) : u4lo8(row + (k >> 4) * 8);
    case LINEAR_FMT_FP8:
        return e4m3x8(row + k);
    case LINEAR_FMT_INT:
    default:
        return i8x8((const int8_t *)row + k);
    }
}

/* Columns k..k+15; k % 16 == 0 for INT4. */
static ALWAYS_INLINE void dec16(enum linear_fmt f, const uint8_t *row, int k, v8f *a, v8f *b)
{
    if (f == LINEAR_FMT_INT4) {
        u4x16(row + (k >> 4) * 8, a, b);
    } else {
        *a = dec8(f, row, k);
        *b = dec8(f, row, k + 8);
    }
}

static ALWAYS_INLINE float dec1(enum linear_fmt f, const uint8_t *row, int k)
{
    switch (f) {
    case LINEAR_FMT_INT4: {
        int8_t b = (int8_t)row[(k >> 4) * 8 + (k & 7)];
        return (float)((k & 8) ? b >> 4 : (int8_t)(b * 16) >> 4);
    }
    case LINEAR_FMT_FP8:
        return kern_f8e4m3_to_f32(row[k]) * (1.0f / 256.0f);
    case LINEAR_FMT_INT:
    default:
        return (float)((const int8_t *)row)[k];
    }
}

/* The group of stored position j. */
static inline int gpos_of(const struct linear *L, int j)
{
    if (L->gpos)
        return L->gpos[j];
    return L->group_size > 0 ? j / L->group_size : 0;
}

/* The exact weight at stored position j of row n (whose codes start at row). */
static inline float qpos_exact(const struct linear *L, const uint8_t *row, int n, int j)
{
    size_t si = matmul__sidx(L, n, gpos_of(L, j));
    float s = kern_bf16_to_f32(L->scale[si]);
    switch (L->fmt) {
    case LINEAR_FMT_FP8:
        return kern_f8e4m3_to_f32(row[j]) * s;
    case LINEAR_FMT_INT4: {
        int8_t b = (int8_t)row[(j >> 4) * 8 + (j & 7)];
        int q = (j & 8) ? b >> 4 : (int8_t)(b * 16) >> 4;
        return (float)(q - (L->zp ? L->zp[si] : 0)) * s;
    }
    case LINEAR_FMT_INT:
    default:
        return (float)(((const int8_t *)row)[j] - (L->zp ? L->zp[si] : 0)) * s;
    }
}

/* Exact weights of row n, stored positions j0..j1-1 (the same products as matmul__qrow_f32,
 * in storage order). */
static void qrow_exact(const struct linear *L, int n, int j0, int j1, float *dst)
{
    const uint8_t *row = qrow(L->fmt, L, n);
    for (int j = j0; j < j1; j++)
        dst[j - j0] = qpos_exact(L, row, n, j);
}

/* Positions k0..k1-1 of group g. */
static ALWAYS_INLINE void group_range(const struct linear *L, int g, int G, int *k0, int *k1)
{
    if (L->gstart) {
        *k0 = L->gstart[g];
        *k1 = L->gstart[g + 1];
    } else {
        *k0 = g * G;
        *k1 = L->in - *k0 > G ? *k0 + G : L->in;
    }
}

/* ---- GEMV ------------------------------------------------------------------------------- */

/*
 * y[t][n + r] (r < R, t < T) for rows n..n+R-1 and token rows x[t] (stride in, in storage
 * order). zp: the linear has zero points. Each group is summed in fp32 lanes on the raw codes
 * minus the zero point (no multiply per weight), then folded into the row's vector accumulator
 * with one multiply-add by the group's scale; FP8 multiplies the finished sum by 256. Every
 * argument that selects code is a compile-time constant at each call site, so the loops over r
 * and t unroll into registers.
 */
static ALWAYS_INLINE void qdot(enum linear_fmt f, int zp, int R, int T, const struct linear *L,
                               int n, const float *x, float *y, int accumulate)
{
    const int in = L->in, out = L->out;
    const int G = L->group_size > 0 ? L->group_size : in;
    const int sub = zp;
    /* Fixed-size arrays (R <= 4, T <= 3) so that, once R and T are constants, they become
     * registers (a VLA would stay in memory). */
    const uint8_t *row[4];
    v8f acc[4][3];
    float tot[4][3];
    for (int r = 0; r < R; r++) {
        row[r] = qrow(f, L, n + r);
        for (int t = 0; t < T; t++) {
            acc[r][t] = (v8f){ 0 };
            tot[r][t] = 0.0f;
        }
    }
    for (int g = 0; g < L->ngroups; g++) {
        int k0, k1;
        group_range(L, g, G, &k0, &k1);
        if (k0 >= k1)
            continue;
        float s[4], zs[4];
        v8f zv[4];
        v8f ga[4][3], gb[4][3];
        float st[4][3];
        for (int r = 0; r < R; r++) {
            size_t si = matmul__sidx(L, n + r, g);
            s[r] = kern_bf16_to_f32(L->scale[si]);
            zs[r] = zp ? (float)L->zp[si] : 0.0f;
            zv[r] = v8_set1(zs[r]);
            for (int t = 0; t < T; t++) {
                ga[r][t] = (v8f){ 0 };
                gb[r][t] = (v8f){ 0 };
                st[r][t] = 0.0f;
            }
        }
        int k = k0;
        /* A group that does not start on a multiple of 8 (an odd group size, or g_idx): a
         * scalar head up to the next multiple of 8. */
        for (; k < k1 && (k & 7); k++) {
            for (int r = 0; r < R; r++) {
                float w = dec1(f, row[r], k) - zs[r];
                for (int t = 0; t < T; t++)
                    st[r][t] += w * x[(size_t)t * in + k];
            }
        }
        if (f == LINEAR_FMT_INT4 && (k & 15) && k + 8 <= k1) {
            /* A group that starts mid-block: its first 8 columns. */
            for (int r = 0; r < R; r++) {
                v8f d = dec8(f, row[r], k) - zv[r];
                for (int t = 0; t < T; t++)
                    ga[r][t] += d * v8_loadu(x + (size_t)t * in + k);
            }
            k += 8;
        }
        for (; k + 16 <= k1; k += 16) {
            v8f x0[3], x1[3];
            for (int t = 0; t < T; t++) {
                x0[t] = v8_loadu(x + (size_t)t * in + k);
                x1[t] = v8_loadu(x + (size_t)t * in + k + 8);
            }
            for (int r = 0; r < R; r++) {
                v8f d0, d1;
                dec16(f, row[r], k, &d0, &d1);
                if (sub) {
                    d0 -= zv[r];
                    d1 -= zv[r];
                }
                for (int t = 0; t < T; t++) {
                    if (T == 1) {
                        ga[r][t] += d0 * x0[t];
                        gb[r][t] += d1 * x1[t];
                    } else {
                        ga[r][t] += d0 * x0[t];
                        ga[r][t] += d1 * x1[t];
                    }
                }
            }
        }
        for (; k + 8 <= k1; k += 8) {
            for (int r = 0; r < R; r++) {
                v8f d = dec8(f, row[r], k);
                if (sub)
                    d -= zv[r];
                for (int t = 0; t < T; t++)
                    ga[r][t] += d * v8_loadu(x + (size_t)t * in + k);
            }
        }
        for (; k < k1; k++) {
            for (int r = 0; r < R; r++) {
                float w = dec1(f, row[r], k) - zs[r];
                for (int t = 0; t < T; t++)
                    st[r][t] += w * x[(size_t)t * in + k];
            }
        }
        for (int r = 0; r < R; r++) {
            v8f sv = v8_set1(s[r]);
            for (int t = 0; t < T; t++) {
                acc[r][t] += (ga[r][t] + gb[r][t]) * sv;
                tot[r][t] += st[r][t] * s[r];
            }
        }
    }
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < T; t++) {
            float v = v8_hsum(acc[r][t]) + tot[r][t];
            if (f == LINEAR_FMT_FP8)
                v *= 256.0f;
            float *yo = y + (size_t)t * out + n + r;
            *yo = accumulate ? *yo + v : v;
        }
    }
}

/* Rows n0..n1-1 for T <= 3 token rows. */
static ALWAYS_INLINE void qgemv_rows(enum linear_fmt f, int zp, const struct linear *L, int n0,
                                     int n1, const float *x, int T, float *y, int accumulate)
{
    int n = n0;
    switch (T) {
    case 1:
        for (; n + 4 <= n1; n += 4)
            qdot(f, zp, 4, 1, L, n, x, y, accumulate);
        for (; n < n1; n++)
            qdot(f, zp, 1, 1, L, n, x, y, accumulate);
        break;
    case 2:
        for (; n + 2 <= n1; n += 2)
            qdot(f, zp, 2, 2, L, n, x, y, accumulate);
        for (; n < n1; n++)
            qdot(f, zp, 1, 2, L, n, x, y, accumulate);
        break;
    case 3:
    default:
        for (; n + 2 <= n1; n += 2)
            qdot(f, zp, 2, 3, L, n, x, y, accumulate);
        for (; n < n1; n++)
            qdot(f, zp, 1, 3, L, n, x, y, accumulate);
        break;
    }
}

/* Dot product of an exact fp32 row with x (the generic path). */
static float dot_f32(const float *w, const float *x, int in)
{
    v8f a = { 0 }, b = { 0 };
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        a += v8_loadu(w + k) * v8_loadu(x + k);
        b += v8_loadu(w + k + 8) * v8_loadu(x + k + 8);
    }
    for (; k + 8 <= in; k += 8)
        a += v8_loadu(w + k) * v8_loadu(x + k);
    float s = v8_hsum(a + b);
    for (; k < in; k++)
        s += w[k] * x[k];
    return s;
}

struct qgemv_job {
    float *y;
    const float *x;
    int T;
    const struct linear *L;
    int accumulate;
    int rows_per_task;
};

static void qgemv_task(void *arg, int task, int tid)
{
    struct qgemv_job *j = arg;
    const struct linear *L = j->L;
    (void)tid;
    int n0 = task * j->rows_per_task;
    int n1 = EXAQ_GEMM_MINI(n0 + j->rows_per_task, L->out);
    if (L->qflags & LINEAR_QF_GENERIC) {
        float *w = par_scratch(QSLOT_ROW, sizeof(float) * (size_t)L->in);
        for (int n = n0; n < n1; n++) {
            qrow_exact(L, n, 0, L->in, w);
            for (int t = 0; t < j->T; t++) {
                float v = dot_f32(w, j->x + (size_t)t * L->in, L->in);
                float *yo = j->y + (size_t)t * L->out + n;
                *yo = j->accumulate ? *yo + v : v;
            }
        }
        return;
    }
    /* Token rows in chunks of at most 3 (callers pass T < MATMUL_GEMV_MAX_T = 4). */
    for (int t0 = 0; t0 < j->T; t0 += 3) {
        int T = EXAQ_GEMM_MINI(3, j->T - t0);
        const float *x = j->x + (size_t)t0 * L->in;
        float *y = j->y + (size_t)t0 * L->out;
        int acc = j->accumulate;
        switch (L->fmt) {
        case LINEAR_FMT_INT4:
            if (L->zp)
                qgemv_rows(LINEAR_FMT_INT4, 1, L, n0, n1, x, T, y, acc);
            else
                qgemv_rows(LINEAR_FMT_INT4, 0, L, n0, n1, x, T, y, acc);
            break;
        case LINEAR_FMT_FP8:
            qgemv_rows(LINEAR_FMT_FP8, 0, L, n0, n1, x, T, y, acc);
            break;
        case LINEAR_FMT_INT:
        default:
            if (L->zp)
                qgemv_rows(LINEAR_FMT_INT, 1, L, n0, n1, x, T, y, acc);
            else
                qgemv_rows(LINEAR_FMT_INT, 0, L, n0, n1, x, T, y, acc);
            break;
        }
    }
}

static void qgemv(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    int nth = par_nthreads();
    /* As the dense GEMV: about 8 tasks per thread, rows a multiple of 4, at least 16 rows. */
    int rows = (L->out + 8 * nth - 1) / (8 * nth);
    rows = (rows + 3) / 4 * 4;
    if (rows < 16)
        rows = 16;
    struct qgemv_job j = { y, x, T, L, accumulate, rows };
    par_for((L->out + rows - 1) / rows, qgemv_task, &j);
}

/* ---- GEMM B packing --------------------------------------------------------------------- */

#if defined(__AVX2__)
/*
 * Full 16-column panels, stored positions k0..k0+kc-1 in steps of 8. A step whose 8 positions
 * share a group is decoded as vectors: (raw - zp') * scale, or (raw * 256) * scale for FP8, the
 * exact fp32 weights, then transposed; a step that straddles two groups (odd group sizes,
 * g_idx) is decoded per element. Returns the number of positions done (kc rounded down to 8).
 */
static ALWAYS_INLINE int pack_b_fast(enum linear_fmt f, int zp, const struct linear *L, int j0,
                                     int k0, int kc, float *dst)
{
    const int sub = zp;
    const uint8_t *rows[GEMM_NR];
    for (int i = 0; i < GEMM_NR; i++)
        rows[i] = qrow(f, L, j0 + i);
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        int p = k0 + k, g = gpos_of(L, p);
        if (g != gpos_of(L, p + 7)) {
            for (int i = 0; i < GEMM_NR; i++)
                for (int kk = 0; kk < 8; kk++)
                    dst[(size_t)(k + kk) * GEMM_NR + i] = qpos_exact(L, rows[i], j0 + i, p + kk);
            continue;
        }
        for (int h = 0; h < 2; h++) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) {
                size_t si = matmul__sidx(L, j0 + 8 * h + i, g);
                v8f s = v8_set1(kern_bf16_to_f32(L->scale[si]));
                v8f d = dec8(f, rows[8 * h + i], p);
                if (sub)
                    d -= v8_set1((float)L->zp[si]);
                if (f == LINEAR_FMT_FP8)
                    d = d * v8_set1(256.0f) * s;
                else
                    d = d * s;
                r[i] = (__m256)d;
            }
            v8_transpose8(r);
            for (int i = 0; i < 8; i++)
                _mm256_store_ps(dst + (size_t)(k + i) * GEMM_NR + 8 * h, r[i]);
        }
    }
    return k;
}
#endif

/* B = W^T: panel[k][j] = W[j0+j][k0+k] with the exact weights; columns >= nr are zeros. */
static void pack_b_q(const void *ctxp, int j0, int nr, int k0, int kc, float *dst)
{
    const struct matmul__ctx *c = ctxp;
    const struct linear *L = c->L;
    int k = 0;
#if defined(__AVX2__)
    if (nr == GEMM_NR && !(L->qflags & LINEAR_QF_GENERIC)) {
        switch (L->fmt) {
        case LINEAR_FMT_INT4:
            k = L->zp ? pack_b_fast(LINEAR_FMT_INT4, 1, L, j0, k0, kc, dst)
                      : pack_b_fast(LINEAR_FMT_INT4, 0, L, j0, k0, kc, dst);
            break;
        case LINEAR_FMT_FP8:
            k = pack_b_fast(LINEAR_FMT_FP8, 0, L, j0, k0, kc, dst);
            break;
        case LINEAR_FMT_INT:
        default:
            k = L->zp ? pack_b_fast(LINEAR_FMT_INT, 1, L, j0, k0, kc, dst)
                      : pack_b_fast(LINEAR_FMT_INT, 0, L, j0, k0, kc, dst);
            break;
        }
    }
#endif
    if (k >= kc)
        return;
    float *w = par_scratch(QSLOT_ROW, sizeof(float) * (size_t)(kc - k));
    for (int j = 0; j < GEMM_NR; j++) {
        if (j < nr) {
            qrow_exact(L, j0 + j, k0 + k, k0 + kc, w);
            for (int kk = k; kk < kc; kk++)
                dst[(size_t)kk * GEMM_NR + j] = w[kk - k];
        } else {
            for (int kk = k; kk < kc; kk++)
                dst[(size_t)kk * GEMM_NR + j] = 0.0f;
        }
    }
}

/* ---- entry ------------------------------------------------------------------------------ */

void matmul__cpu_quant(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    if (T <= 0 || L->out <= 0)
        return;
    if (L->perm) {
        /* x in the codes' group order (slot QSLOT_XPERM of this thread; the tasks below only
         * use QSLOT_ROW and the GEMM driver's slots). */
        size_t in = (size_t)L->in;
        float *xp = par_scratch(QSLOT_XPERM, sizeof(float) * (size_t)T * in);
        for (int t = 0; t < T; t++)
            for (size_t j = 0; j < in; j++)
                xp[(size_t)t * in + j] = x[(size_t)t * in + (size_t)L->perm[j]];
        x = xp;
    }
    if (T < MATMUL_GEMV_MAX_T) {
        if (matmul__qgemv_i16(y, x, T, L, accumulate) != 0)
            qgemv(y, x, T, L, accumulate);
        return;
    }
    struct matmul__ctx ctx = { x, L };
    struct gemm_src src = { matmul__pack_a_x, pack_b_q, &ctx };
    gemm_cpu_run(T, L->out, L->in, &src, y, (size_t)L->out, 1.0f, accumulate ? 1.0f : 0.0f, 0);
}
