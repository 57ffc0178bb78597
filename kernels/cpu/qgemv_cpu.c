/*
 * qgemv_cpu: the decode GEMV (T < MATMUL_GEMV_MAX_T) of the integer formats (INT: int8 codes,
 * INT4: packed nibbles) with 16-bit activations, reached through matmul__cpu_quant().
 *
 * WHY. The fp32 GEMV of qmatmul_cpu.c converts every code to fp32 before its multiply-add: for
 * W4 that is a widening, three shifts, two conversions and two FMAs per 16 weights, which caps
 * it at about half the DRAM bandwidth the BF16 path reaches on 2 cores (docs/perf.md). Here the
 * codes stay integers. With VNNI (AVX512-VNNI or AVX-VNNI) each 16-bit activation code is split
 * into two signed bytes and the products are u8 x s8 (vpdpbusd): 64 nibbles are one load, one
 * xor, two ands, one shift and four dot products, about half the instructions of the 16-bit
 * form (32 nibbles: zero-extension, xor, and, shift, two vpdpwssd), which is what AVX2 alone
 * runs (vpmaddwd + vpaddd).
 *
 * NUMERICS. Per token row, x is cut into chunks: each group of columns (storage order, so g_idx
 * groups too) in pieces of at most XQ_CHUNK. A chunk with m = max|x| gets the scale sx = m / XQ_MAX
 * (32639) and codes xi = round(x / sx), so |x - xi * sx| <= sx / 2 (plus a few units of fp32
 * rounding in computing it): 15 bits below the chunk's largest activation, finer than the fp16
 * activations of vLLM's W4A16 kernels (11 bits of each value). The chunk's dot product sum (q - zp)
 * * xi is exact in int32 (|q - zp| <= 255, 128 columns: < 2^31), and is added to the row's fp32
 * accumulator with one multiply-add by s_w * sx. The result therefore differs from the exact x .
 * W^T by the activation rounding, at most sum_k |w_k| * sx_k / 2, and fp32 noise;
 * tests/kernels/test_qmatmul.c checks that bound. The prefill GEMM (T >= MATMUL_GEMV_MAX_T) and
 * the reference are untouched, so perplexity evaluations see the exact product.
 *
 * WHEN. matmul__qgemv_i16_fits(): INT or INT4 without LINEAR_QF_GENERIC, every non-empty group
 * starting on a multiple of 32 with a length that is a multiple of 32, an AVX2 build. Per call,
 * a chunk whose max|x| is not finite or outside [2^-60, 2^60] (zero is fine) sends the whole call
 * back to the fp32 GEMV, which handles NaN, infinities and extreme ranges exactly.
 *
 * LAYOUT. The INT4 row stores block b (16 columns) as 8 bytes, column 16b+i in the low nibble of
 * byte i and 16b+8+i in the high one (matmul.h). Sixteen bytes zero-extended to 16-bit lanes and
 * xor'ed with 0x88 give q + 8 in each nibble; `& 15` holds columns {0..7, 16..23} of the 32-column
 * step and `>> 4` columns {8..15, 24..31}, so the activation codes of each 32-column step are
 * stored in that order, and the + 8 joins the zero point (sum (q + 8 - (zp + 8)) * xi, with
 * sum xi kept per chunk). INT codes are sign-extended bytes in column order.
 * With VNNI: xi = 256 xh + xl with xl = ((xi + 128) mod 256) - 128 and xh both in [-127, 127]
 * (hence XQ_MAX), laid out by put16 in byte planes that match the weight bytes as loaded:
 * the nibbles masked at byte level (`& 15`, `>> 4 & 15`: the low nibbles of a 32-byte step are
 * columns 16b + i, the high ones 16b + 8 + i), INT bytes xor 0x80 (q + 128, joining the zero
 * point as the + 8 does). The two dot products, 256 sum w xh + sum w xl, give the same int32 as
 * the 16-bit form, so both forms give the same y bit for bit.
 *
 * Scratch: par_scratch slot 4 of the calling thread (the activation codes, scales and sums).
 */
#include "kernels/matmul.h"

#include <math.h>
#include <string.h>

#include "kernels/par.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

#define QSLOT_XQ      4
/* Columns per activation scale: with |q - zp| <= 255 and |xi| <= 32767 a chunk's sum stays far
 * inside int32 (128 * 255 * 32767 < 2^30). */
#define XQ_CHUNK 128
/* The largest activation code: 32639 = 127 * 256 + 127, so that with VNNI every code splits
 * into two signed bytes, xi = 256 * xh + xl (see LAYOUT). */
#define XQ_MAX 32639
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)
#define QG_VNNI 1
#endif
/* Rows per step at T = 1, and tasks per thread (as the fp32 GEMV). */
#define QR_MAX 4
#define QTASKS 8
/* Software prefetch distance (whole blocks of R rows, at least this many bytes), into L2:
 * measured on the 2-core machine, L2 beats L1 by 25-30% at model level and 16 KiB beats 8 and
 * 32 (docs/perf.md). */
#define QPF_BYTES 16384

/* Positions k0..k1-1 of group g (G: the group size, in for channel and tensor scales). */
static ALWAYS_INLINE __attribute__((unused)) void grange(const struct linear *L, int g, int G,
                                                         int *k0, int *k1)
{
    if (L->gstart) {
        *k0 = L->gstart[g];
        *k1 = L->gstart[g + 1];
    } else {
        *k0 = g * G;
        *k1 = L->in - *k0 > G ? *k0 + G : L->in;
    }
}

static __attribute__((unused)) int gsize(const struct linear *L)
{
    return L->group_size > 0 ? L->group_size : L->in;
}

int matmul__qgemv_i16_built(void)
{
#if defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}

int matmul__qgemv_i16_fits(const struct linear *L)
{
#if defined(__AVX2__)
    if ((L->fmt != LINEAR_FMT_INT && L->fmt != LINEAR_FMT_INT4) || (L->qflags & LINEAR_QF_GENERIC))
        return 0;
    int G = gsize(L);
    for (int g = 0; g < L->ngroups; g++) {
        int k0, k1;
        grange(L, g, G, &k0, &k1);
        if (k1 > k0 && ((k0 & 31) || ((k1 - k0) & 31)))
            return 0;
    }
    return 1;
#else
    (void)L;
    return 0;
#endif
}

#if defined(__AVX2__)

/* The activation codes of T token rows: q [T][in] (INT4: permuted per 32 columns, see LAYOUT),
 * per chunk c the scale s[t * nc + c] and the code sum sum[t * nc + c]. */
struct xq16 {
    const int16_t *q;
    const float *s;
    const int32_t *sum;
    int nc;
};

static int nchunks(const struct linear *L)
{
    int G = gsize(L), nc = 0;
    for (int g = 0; g < L->ngroups; g++) {
        int k0, k1;
        grange(L, g, G, &k0, &k1);
        if (k1 > k0)
            nc += (k1 - k0 + XQ_CHUNK - 1) / XQ_CHUNK;
    }
    return nc;
}

/* Eight activations times inv, rounded to nearest (even) int16 lanes of the low half. */
static ALWAYS_INLINE __m128i q8(const float *x, __m256 inv)
{
    __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inv));
    return _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
}

#if defined(QG_VNNI)
#define QG_BYTES 1
/*
 * INT4 with VNNI: the products are u8 x s8 (vpdpbusd), so a chunk's n codes are stored as byte
 * planes in the 2n bytes the int16 codes would take: per step of S columns from the chunk start
 * (64, a last step of 32 where 32 columns are left), at byte offset 2j of the chunk for the step
 * at column j, [xh lo][xh hi][xl lo][xl hi] of S / 2 bytes each, where "lo" holds the columns of
 * the low nibbles (16b + i, i < 8, at byte 8b + i of the step) and "hi" those of the high ones
 * (16b + 8 + i). put16 stores the 16 codes v of chunk columns j..j+15 (j a multiple of 16; n the
 * chunk's length). (INT keeps the 16-bit form: measured, bytes gained it nothing, docs/perf.md.)
 */
static ALWAYS_INLINE void put16(int8_t *cb, int j, int n, __m256i v)
{
    const int js = j & ~63, S = n - js >= 64 ? 64 : 32, p = ((j - js) >> 4) * 8;
    int8_t *b = cb + 2 * js;
    /* w = xi + 128: its high byte is xh, its low byte xl ^ 0x80. Per 128-bit lane (8 columns):
     * the low bytes, then the high ones. */
    const __m256i shuf = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0,
                                          2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m256i lo80 = _mm256_setr_epi64x(0x8080808080808080LL, 0, 0x8080808080808080LL, 0);
    __m256i w = _mm256_add_epi16(v, _mm256_set1_epi16(128));
    w = _mm256_xor_si256(_mm256_shuffle_epi8(w, shuf), lo80);
    __m128i c0 = _mm256_castsi256_si128(w), c1 = _mm256_extracti128_si256(w, 1);
    __m128i h0 = _mm_srli_si128(c0, 8), h1 = _mm_srli_si128(c1, 8);
    /* columns 0..7 of the block to the "lo" planes, 8..15 to the "hi" ones */
    _mm_storel_epi64((__m128i *)(b + p), h0);
    _mm_storel_epi64((__m128i *)(b + S / 2 + p), h1);
    _mm_storel_epi64((__m128i *)(b + S + p), c0);
    _mm_storel_epi64((__m128i *)(b + S + S / 2 + p), c1);
}
#else
#define QG_BYTES 0
static ALWAYS_INLINE void put16(int8_t *cb, int j, int n, __m256i v)
{
    (void)cb;
    (void)j;
    (void)n;
    (void)v;
}
#endif

/* Quantizes x [T][in] into scratch; 0, or 1 when a chunk's range is out of bounds. */
static int xq_prepare(const struct linear *L, const float *x, int T, struct xq16 *o)
{
    const int in = L->in, G = gsize(L), nc = nchunks(L);
    size_t qb = ((size_t)T * (size_t)in * sizeof(int16_t) + 63) / 64 * 64;
    size_t sb = (size_t)T * (size_t)nc * sizeof(float);
    char *buf = par_scratch(QSLOT_XQ, qb + 2 * sb);
    int16_t *q = (int16_t *)buf;
    float *s = (float *)(buf + qb);
    int32_t *sum = (int32_t *)(buf + qb + sb);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * in;
        int16_t *qt = q + (size_t)t * in;
        int c = 0;
        for (int g = 0; g < L->ngroups; g++) {
            int k0, k1;
            grange(L, g, G, &k0, &k1);
            for (int c0 = k0; c0 < k1; c0 += XQ_CHUNK, c++) {
                int c1 = c0 + XQ_CHUNK < k1 ? c0 + XQ_CHUNK : k1;
                __m256 mx = _mm256_setzero_ps();
                for (int k = c0; k < c1; k += 8)
                    mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xt + k), absmask));
                /* max_ps can drop a NaN (it returns its second operand when either is one);
                 * the plain sum keeps any NaN or infinity. */
                float lane[8], m = 0.0f, tot = 0.0f;
                _mm256_storeu_ps(lane, mx);
                for (int i = 0; i < 8; i++)
                    m = lane[i] > m ? lane[i] : m;
                for (int k = c0; k < c1; k++)
                    tot += xt[k];
                if (!isfinite(tot) || !(m <= 0x1p60f) || (m != 0.0f && m < 0x1p-60f))
                    return 1;
                float inv = m > 0.0f ? (float)XQ_MAX / m : 0.0f;
                s[(size_t)t * nc + c] = m / (float)XQ_MAX;
                __m256 vi = _mm256_set1_ps(inv);
                __m256i acc = _mm256_setzero_si256();
                for (int k = c0; k < c1; k += 32) {
                    __m128i a = q8(xt + k, vi), b = q8(xt + k + 8, vi);
                    __m128i cc = q8(xt + k + 16, vi), d = q8(xt + k + 24, vi);
                    if (QG_BYTES && L->fmt == LINEAR_FMT_INT4) {
                        int8_t *cb = (int8_t *)(qt + c0);
                        put16(cb, k - c0, c1 - c0, _mm256_set_m128i(b, a));
                        put16(cb, k - c0 + 16, c1 - c0, _mm256_set_m128i(d, cc));
                    } else if (L->fmt == LINEAR_FMT_INT4) { /* low nibbles {a, cc}, high {b, d} */
                        _mm_storeu_si128((__m128i *)(qt + k), a);
                        _mm_storeu_si128((__m128i *)(qt + k + 8), cc);
                        _mm_storeu_si128((__m128i *)(qt + k + 16), b);
                        _mm_storeu_si128((__m128i *)(qt + k + 24), d);
                    } else {
                        _mm_storeu_si128((__m128i *)(qt + k), a);
                        _mm_storeu_si128((__m128i *)(qt + k + 8), b);
                        _mm_storeu_si128((__m128i *)(qt + k + 16), cc);
                        _mm_storeu_si128((__m128i *)(qt + k + 24), d);
                    }
                    __m256i ab = _mm256_set_m128i(b, a), cd = _mm256_set_m128i(d, cc);
                    __m256i ones = _mm256_set1_epi16(1);
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(ab, ones));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(cd, ones));
                }
                int32_t al[8], st = 0;
                _mm256_storeu_si256((__m256i *)al, acc);
                for (int i = 0; i < 8; i++)
                    st += al[i];
                sum[(size_t)t * nc + c] = st;
            }
        }
    }
    o->q = q;
    o->s = s;
    o->sum = sum;
    o->nc = nc;
    return 0;
}

/* acc + the pairwise 16-bit products of a and b, summed into 32-bit lanes. */
static ALWAYS_INLINE __m256i dp16(__m256i acc, __m256i a, __m256i b)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

static ALWAYS_INLINE float hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/*
 * y[t][n + r] (r < R, t < T) for rows n..n+R-1. Every argument that selects code is a
 * compile-time constant at each call site, so the loops over r and t unroll into registers.
 */
static ALWAYS_INLINE void qdot16(enum linear_fmt f, int zp, int R, int T, const struct linear *L,
                                 int n, const struct xq16 *xq, float *y, int accumulate)
{
    const int in = L->in, out = L->out, G = gsize(L), nc = xq->nc;
    const size_t rb = f == LINEAR_FMT_INT4 ? linear_int4_row_bytes(in) : (size_t)in;
    const uint8_t *row[QR_MAX];
    __m256 acc[QR_MAX][3];
    for (int r = 0; r < R; r++) {
        row[r] = (const uint8_t *)L->w + (size_t)(n + r) * rb;
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    }
    const __m256i lo4 = _mm256_set1_epi16(15), x88 = _mm256_set1_epi16(0x88);
    /* Prefetch distance: whole blocks of R rows, at least QPF_BYTES. */
    const size_t blk = (size_t)R * rb, ahead = (QPF_BYTES + blk - 1) / blk * blk;
    int c = 0;
    for (int g = 0; g < L->ngroups; g++) {
        int k0, k1;
        grange(L, g, G, &k0, &k1);
        if (k0 >= k1)
            continue;
        float s[QR_MAX];
        int zc[QR_MAX];
        for (int r = 0; r < R; r++) {
            size_t si = matmul__sidx(L, n + r, g);
            s[r] = kern_bf16_to_f32(L->scale[si]);
            zc[r] = (zp ? L->zp[si] : 0) + (f == LINEAR_FMT_INT4 ? 8 : 0);
        }
        for (int c0 = k0; c0 < k1; c0 += XQ_CHUNK, c++) {
            int c1 = c0 + XQ_CHUNK < k1 ? c0 + XQ_CHUNK : k1;
            __m256i ai[QR_MAX][3];
            for (int r = 0; r < R; r++)
                for (int t = 0; t < T; t++)
                    ai[r][t] = _mm256_setzero_si256();
            for (int k = c0; k < c1; k += 32) {
                __m256i xa[3], xb[3];
                for (int t = 0; t < T; t++) {
                    xa[t] = _mm256_loadu_si256((const __m256i *)(xq->q + (size_t)t * in + k));
                    xb[t] = _mm256_loadu_si256((const __m256i *)(xq->q + (size_t)t * in + k + 16));
                }
                /* Each 64-byte line of the next R rows' same columns, as this step reaches
                 * it: rows are short (1-4 KB), so the hardware prefetcher alone restarts too
                 * often to keep DRAM busy. */
                if (!(k & (f == LINEAR_FMT_INT4 ? 127 : 63)))
                    for (int r = 0; r < R; r++)
                        _mm_prefetch((const char *)row[r] + ahead +
                                         (f == LINEAR_FMT_INT4 ? (size_t)k / 2 : (size_t)k),
                                     _MM_HINT_T1);
                for (int r = 0; r < R; r++) {
                    __m256i w0, w1;
                    if (f == LINEAR_FMT_INT4) {
                        __m256i v = _mm256_cvtepu8_epi16(
                            _mm_loadu_si128((const __m128i *)(row[r] + (k >> 1))));
                        v = _mm256_xor_si256(v, x88);
                        w0 = _mm256_and_si256(v, lo4);
                        w1 = _mm256_srli_epi16(v, 4);
                    } else {
                        w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row[r] + k)));
                        w1 = _mm256_cvtepi8_epi16(
                            _mm_loadu_si128((const __m128i *)(row[r] + k + 16)));
                    }
                    for (int t = 0; t < T; t++) {
                        ai[r][t] = dp16(ai[r][t], w0, xa[t]);
                        ai[r][t] = dp16(ai[r][t], w1, xb[t]);
                    }
                }
            }
            for (int t = 0; t < T; t++) {
                float sx = xq->s[(size_t)t * nc + c];
                int32_t sm = xq->sum[(size_t)t * nc + c];
                for (int r = 0; r < R; r++) {
                    __m256i a = ai[r][t];
                    if (f == LINEAR_FMT_INT4 || zp)
                        a = _mm256_sub_epi32(a, _mm256_setr_epi32(zc[r] * sm, 0, 0, 0, 0, 0, 0, 0));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(s[r] * sx),
                                                acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float v = hsum8(acc[r][t]);
            float *yo = y + (size_t)t * out + n + r;
            *yo = accumulate ? *yo + v : v;
        }
}

#if defined(QG_VNNI)
/* acc + the sums of four u8 x s8 products, in 32-bit lanes. */
static ALWAYS_INLINE __m256i dpbu(__m256i acc, __m256i u, __m256i v)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, v);
#else
    return _mm256_dpbusd_avx_epi32(acc, u, v);
#endif
}

/* n bytes (16 or 32) at p, zero above. */
static ALWAYS_INLINE __m256i ld(const void *p, int n)
{
    return n == 32 ? _mm256_loadu_si256((const __m256i *)p)
                   : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)p));
}

/*
 * One step of qdot8: 2 nb columns (nb = 32 or 16 weight bytes per row) from column k, for R rows
 * and T token rows.
 */
static ALWAYS_INLINE void step8(const int nb, int R, int T, const uint8_t *const *row, int k,
                                int in, const struct xq16 *xq, size_t ahead, __m256i ah[QR_MAX][3],
                                __m256i al[QR_MAX][3])
{
    const __m256i lo4 = _mm256_set1_epi8(15), flip = _mm256_set1_epi8((char)0x88);
    const int S = 2 * nb;
    const size_t wo = (size_t)k / 2;
    /* Each 64-byte line of the next R rows' same columns, as this step reaches it: rows are
     * short (1-4 KB), so the hardware prefetcher alone restarts too often to keep DRAM busy. */
    const size_t to_line = (size_t)(-(ptrdiff_t)wo) & 63;
    if (to_line < (size_t)nb)
        for (int r = 0; r < R; r++)
            _mm_prefetch((const char *)row[r] + ahead + wo + to_line, _MM_HINT_T1);
    __m256i x[3][4];
    for (int t = 0; t < T; t++) {
        const int8_t *xp = (const int8_t *)(xq->q + (size_t)t * in + k);
        x[t][0] = ld(xp, nb);
        x[t][1] = ld(xp + nb, nb);
        x[t][2] = ld(xp + S, nb);
        x[t][3] = ld(xp + S + nb, nb);
    }
    for (int r = 0; r < R; r++) {
        __m256i v = _mm256_xor_si256(ld(row[r] + wo, nb), flip);
        __m256i wl = _mm256_and_si256(v, lo4);
        __m256i wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
        for (int t = 0; t < T; t++) {
            ah[r][t] = dpbu(ah[r][t], wl, x[t][0]);
            al[r][t] = dpbu(al[r][t], wl, x[t][2]);
            ah[r][t] = dpbu(ah[r][t], wh, x[t][1]);
            al[r][t] = dpbu(al[r][t], wh, x[t][3]);
        }
    }
}

/*
 * The VNNI form of qdot16 for INT4: weights as unsigned bytes (nibbles xor 8: q + 8), activations
 * as the byte planes of put16; per row and token row two int32 accumulators, hi (xh) and lo
 * (xl), combined per chunk as 256 hi + lo: the same integer as qdot16's sum, so the same result
 * bit for bit.
 */
static ALWAYS_INLINE void qdot8(int zp, int R, int T, const struct linear *L, int n,
                                const struct xq16 *xq, float *y, int accumulate)
{
    const int in = L->in, out = L->out, G = gsize(L), nc = xq->nc;
    const size_t rb = linear_int4_row_bytes(in);
    const uint8_t *row[QR_MAX];
    __m256 acc[QR_MAX][3];
    for (int r = 0; r < R; r++) {
        row[r] = (const uint8_t *)L->w + (size_t)(n + r) * rb;
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    }
    const size_t blk = (size_t)R * rb, ahead = (QPF_BYTES + blk - 1) / blk * blk;
    int c = 0;
    for (int g = 0; g < L->ngroups; g++) {
        int k0, k1;
        grange(L, g, G, &k0, &k1);
        if (k0 >= k1)
            continue;
        float s[QR_MAX];
        int zc[QR_MAX];
        for (int r = 0; r < R; r++) {
            size_t si = matmul__sidx(L, n + r, g);
            s[r] = kern_bf16_to_f32(L->scale[si]);
            zc[r] = (zp ? L->zp[si] : 0) + 8;
        }
        for (int c0 = k0; c0 < k1; c0 += XQ_CHUNK, c++) {
            int c1 = c0 + XQ_CHUNK < k1 ? c0 + XQ_CHUNK : k1;
            __m256i ah[QR_MAX][3], al[QR_MAX][3];
            for (int r = 0; r < R; r++)
                for (int t = 0; t < T; t++)
                    ah[r][t] = al[r][t] = _mm256_setzero_si256();
            int k = c0;
            for (; k + 64 <= c1; k += 64)
                step8(32, R, T, row, k, in, xq, ahead, ah, al);
            if (k < c1) /* a last 32 columns */
                step8(16, R, T, row, k, in, xq, ahead, ah, al);
            for (int t = 0; t < T; t++) {
                float sx = xq->s[(size_t)t * nc + c];
                int32_t sm = xq->sum[(size_t)t * nc + c];
                for (int r = 0; r < R; r++) {
                    /* Wrapping int32 arithmetic: exact, since the true sum fits (WHY above). */
                    __m256i a = _mm256_add_epi32(_mm256_slli_epi32(ah[r][t], 8), al[r][t]);
                    a = _mm256_sub_epi32(
                        a, _mm256_setr_epi32((int32_t)((uint32_t)zc[r] * (uint32_t)sm), 0, 0, 0, 0,
                                             0, 0, 0));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(s[r] * sx),
                                                acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float v = hsum8(acc[r][t]);
            float *yo = y + (size_t)t * out + n + r;
            *yo = accumulate ? *yo + v : v;
        }
}
/* f is a constant at every call site: one of the two remains. */
#define QDOT(f, zp, R, T, L, n, xq, y, acc)                                                        \
    ((f) == LINEAR_FMT_INT4 ? qdot8(zp, R, T, L, n, xq, y, acc)                                    \
                            : qdot16(f, zp, R, T, L, n, xq, y, acc))
#else
#define QDOT qdot16
#endif

static ALWAYS_INLINE void rows16(enum linear_fmt f, int zp, const struct linear *L, int n0, int n1,
                                 const struct xq16 *xq, int T, float *y, int accumulate)
{
    int n = n0;
    switch (T) {
    case 1:
        for (; n + QR_MAX <= n1; n += QR_MAX)
            QDOT(f, zp, QR_MAX, 1, L, n, xq, y, accumulate);
        for (; n < n1; n++)
            QDOT(f, zp, 1, 1, L, n, xq, y, accumulate);
        break;
    case 2:
        for (; n + 2 <= n1; n += 2)
            QDOT(f, zp, 2, 2, L, n, xq, y, accumulate);
        for (; n < n1; n++)
            QDOT(f, zp, 1, 2, L, n, xq, y, accumulate);
        break;
    case 3:
    default:
        for (; n + 2 <= n1; n += 2)
            QDOT(f, zp, 2, 3, L, n, xq, y, accumulate);
        for (; n < n1; n++)
            QDOT(f, zp, 1, 3, L, n, xq, y, accumulate);
        break;
    }
}

struct job16 {
    float *y;
    const struct xq16 *xq;
    int T;
    const struct linear *L;
    int accumulate;
    int rows_per_task;
};

static void task16(void *arg, int task, int tid)
{
    struct job16 *j = arg;
    const struct linear *L = j->L;
    (void)tid;
    int n0 = task * j->rows_per_task;
    int n1 = n0 + j->rows_per_task < L->out ? n0 + j->rows_per_task : L->out;
    int zp = L->zp != NULL;
    for (int t0 = 0; t0 < j->T; t0 += 3) {
        int T = j->T - t0 < 3 ? j->T - t0 : 3;
        struct xq16 xq = *j->xq;
        xq.q += (size_t)t0 * L->in;
        xq.s += (size_t)t0 * xq.nc;
        xq.sum += (size_t)t0 * xq.nc;
        float *y = j->y + (size_t)t0 * L->out;
        if (L->fmt == LINEAR_FMT_INT4) {
            if (zp)
                rows16(LINEAR_FMT_INT4, 1, L, n0, n1, &xq, T, y, j->accumulate);
            else
                rows16(LINEAR_FMT_INT4, 0, L, n0, n1, &xq, T, y, j->accumulate);
        } else {
            if (zp)
                rows16(LINEAR_FMT_INT, 1, L, n0, n1, &xq, T, y, j->accumulate);
            else
                rows16(LINEAR_FMT_INT, 0, L, n0, n1, &xq, T, y, j->accumulate);
        }
    }
}

int matmul__qgemv_i16(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    if (!matmul__qgemv_i16_fits(L))
        return 1;
    struct xq16 xq;
    if (xq_prepare(L, x, T, &xq))
        return 1;
    int nth = par_nthreads();
    /* As the fp32 GEMV: about 8 tasks per thread, rows a multiple of 4, at least 16 rows. */
    int rows = (L->out + QTASKS * nth - 1) / (QTASKS * nth);
    rows = (rows + QR_MAX - 1) / QR_MAX * QR_MAX;
    if (rows < 16)
        rows = 16;
    struct job16 j = { y, &xq, T, L, accumulate, rows };
    par_for((L->out + rows - 1) / rows, task16, &j);
    return 0;
}

#else

int matmul__qgemv_i16(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    (void)y;
    (void)x;
    (void)T;
    (void)L;
    (void)accumulate;
    return 1;
}

#endif
