/*
 * matmul_cpu: the fast CPU y = x . W^T (GEMV for decode-sized T, packed GEMM otherwise) for dense
 * weights, and the matmul() dispatch. See matmul.h for the variants; the quantized formats are
 * in qmatmul_cpu.c (matmul__cpu_quant), which shares the A packing below.
 *
 * BF16 is widened with GCC vector extensions (zero-extend 16 -> 32 bits, shift left 16), which
 * compiles to vpmovzxwd + vpslld under AVX2 and to SSE otherwise. F16 uses F16C when the build
 * has it (__F16C__) and a scalar conversion otherwise. Packing W into the GEMM's 16-column
 * panels is a transpose; under __AVX2__ it is done 8x8 in registers, else with scalar loops.
 */
#include "kernels/matmul.h"

#include <errno.h>

#include "kernels/cuda.h"
#include "kernels/gemm.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

static inline v8f bf16x8(const uint16_t *p)
{
#if defined(__AVX2__)
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return (v8f)_mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
#else
    v8u16 h;
    memcpy(&h, p, sizeof(h));
    v8u32 u = __builtin_convertvector(h, v8u32) << 16;
    return (v8f)u;
#endif
}

static inline v8f f16x8(const uint16_t *p)
{
#if defined(__F16C__)
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return (v8f)_mm256_cvtph_ps(h);
#else
    float f[8];
    for (int i = 0; i < 8; i++)
        f[i] = kern_f16_to_f32(p[i]);
    return v8_loadu(f);
#endif
}

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Eight consecutive weights of a row starting at column k, as fp32. Every caller passes a
 * compile-time constant dt (through the _bf16/_f16/_f32 wrappers), so the switch folds away. */
static ALWAYS_INLINE v8f w8(enum kern_dtype dt, const void *row, int k)
{
    switch (dt) {
    case KERN_BF16:
        return bf16x8((const uint16_t *)row + k);
    case KERN_F16:
        return f16x8((const uint16_t *)row + k);
    case KERN_F32:
    default:
        return v8_loadu((const float *)row + k);
    }
}

static ALWAYS_INLINE float w1(enum kern_dtype dt, const void *row, int k)
{
    switch (dt) {
    case KERN_BF16:
        return kern_bf16_to_f32(((const uint16_t *)row)[k]);
    case KERN_F16:
        return kern_f16_to_f32(((const uint16_t *)row)[k]);
    case KERN_F32:
    default:
        return ((const float *)row)[k];
    }
}

static inline float hsum(v8f v)
{
    return v8_hsum(v);
}

/* ---- GEMV: T < MATMUL_GEMV_MAX_T ------------------------------------------------------ */

struct gemv_job {
    float *y;
    const float *x;
    int T;
    const struct linear *L;
    int accumulate;
    int rows_per_task;
};

/* Four dot products of W rows n..n+3 with x (length in); two accumulators per row keep eight
 * independent FMA chains in flight. */
static ALWAYS_INLINE void dot4_dt(enum kern_dtype dt, const struct linear *L, int n, const float *x,
                                  float out[4])
{
    size_t esz = kern_dtype_size(dt);
    const char *r0 = (const char *)L->w + (size_t)n * L->in * esz;
    const char *r1 = r0 + (size_t)L->in * esz;
    const char *r2 = r1 + (size_t)L->in * esz;
    const char *r3 = r2 + (size_t)L->in * esz;
    v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
    v8f b0 = { 0 }, b1 = { 0 }, b2 = { 0 }, b3 = { 0 };
    int k = 0, in = L->in;
    const size_t ahead = 8 * (size_t)L->in * esz;
    for (; k + 16 <= in; k += 16) {
        if (!((k * esz) & 63)) {
            /* The same line of the next 8 rows into L2: rows are 4-16 KB, short enough that
             * the hardware prefetcher alone leaves DRAM idle at each row start. */
            __builtin_prefetch(r0 + ahead + k * esz, 0, 2);
            __builtin_prefetch(r1 + ahead + k * esz, 0, 2);
            __builtin_prefetch(r2 + ahead + k * esz, 0, 2);
            __builtin_prefetch(r3 + ahead + k * esz, 0, 2);
        }
        v8f x0 = v8_loadu(x + k), x1 = v8_loadu(x + k + 8);
        a0 += w8(dt, r0, k) * x0;
        b0 += w8(dt, r0, k + 8) * x1;
        a1 += w8(dt, r1, k) * x0;
        b1 += w8(dt, r1, k + 8) * x1;
        a2 += w8(dt, r2, k) * x0;
        b2 += w8(dt, r2, k + 8) * x1;
        a3 += w8(dt, r3, k) * x0;
        b3 += w8(dt, r3, k + 8) * x1;
    }
    for (; k + 8 <= in; k += 8) {
        v8f x0 = v8_loadu(x + k);
        a0 += w8(dt, r0, k) * x0;
        a1 += w8(dt, r1, k) * x0;
        a2 += w8(dt, r2, k) * x0;
        a3 += w8(dt, r3, k) * x0;
    }
    float s0 = hsum(a0 + b0), s1 = hsum(a1 + b1), s2 = hsum(a2 + b2), s3 = hsum(a3 + b3);
    for (; k < in; k++) {
        s0 += w1(dt, r0, k) * x[k];
        s1 += w1(dt, r1, k) * x[k];
        s2 += w1(dt, r2, k) * x[k];
        s3 += w1(dt, r3, k) * x[k];
    }
    out[0] = s0;
    out[1] = s1;
    out[2] = s2;
    out[3] = s3;
}

static ALWAYS_INLINE float dot1_dt(enum kern_dtype dt, const struct linear *L, int n,
                                   const float *x)
{
    size_t esz = kern_dtype_size(dt);
    const char *r = (const char *)L->w + (size_t)n * L->in * esz;
    v8f a = { 0 }, b = { 0 };
    int k = 0, in = L->in;
    for (; k + 16 <= in; k += 16) {
        a += w8(dt, r, k) * v8_loadu(x + k);
        b += w8(dt, r, k + 8) * v8_loadu(x + k + 8);
    }
    for (; k + 8 <= in; k += 8)
        a += w8(dt, r, k) * v8_loadu(x + k);
    float s = hsum(a + b);
    for (; k < in; k++)
        s += w1(dt, r, k) * x[k];
    return s;
}

static void dot4(const struct linear *L, int n, const float *x, float out[4])
{
    switch (L->dtype) {
    case KERN_BF16:
        dot4_dt(KERN_BF16, L, n, x, out);
        break;
    case KERN_F16:
        dot4_dt(KERN_F16, L, n, x, out);
        break;
    case KERN_F32:
    default:
        dot4_dt(KERN_F32, L, n, x, out);
        break;
    }
}

static float dot1(const struct linear *L, int n, const float *x)
{
    switch (L->dtype) {
    case KERN_BF16:
        return dot1_dt(KERN_BF16, L, n, x);
    case KERN_F16:
        return dot1_dt(KERN_F16, L, n, x);
    case KERN_F32:
    default:
        return dot1_dt(KERN_F32, L, n, x);
    }
}

static void gemv_task(void *arg, int task, int tid)
{
    struct gemv_job *j = arg;
    const struct linear *L = j->L;
    (void)tid;
    int n0 = task * j->rows_per_task;
    int n1 = EXAQ_GEMM_MINI(n0 + j->rows_per_task, L->out);
    for (int t = 0; t < j->T; t++) {
        const float *x = j->x + (size_t)t * L->in;
        float *y = j->y + (size_t)t * L->out;
        int n = n0;
        for (; n + 4 <= n1; n += 4) {
            float s[4];
            dot4(L, n, x, s);
            for (int r = 0; r < 4; r++)
                y[n + r] = j->accumulate ? y[n + r] + s[r] : s[r];
        }
        for (; n < n1; n++) {
            float s = dot1(L, n, x);
            y[n] = j->accumulate ? y[n] + s : s;
        }
    }
}

static void gemv(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    int nth = par_nthreads();
    /* About 8 tasks per thread for balance, rows a multiple of 4, at least 16 rows. */
    int rows = (L->out + 8 * nth - 1) / (8 * nth);
    rows = (rows + 3) / 4 * 4;
    if (rows < 16)
        rows = 16;
    struct gemv_job j = { y, x, T, L, accumulate, rows };
    par_for((L->out + rows - 1) / rows, gemv_task, &j);
}

/* ---- GEMM packing ---------------------------------------------------------------------- */

/* A = x: panel[k][i] = x[i0+i][k0+k]. */
void matmul__pack_a_x(const void *ctxp, int i0, int mr, int k0, int kc, float *dst)
{
    const struct matmul__ctx *c = ctxp;
    int in = c->L->in;
    for (int i = 0; i < GEMM_MR; i++) {
        if (i < mr) {
            const float *src = c->x + (size_t)(i0 + i) * in + k0;
            for (int k = 0; k < kc; k++)
                dst[k * GEMM_MR + i] = src[k];
        } else {
            for (int k = 0; k < kc; k++)
                dst[k * GEMM_MR + i] = 0.0f;
        }
    }
}

/* B = W^T: panel[k][j] = W[j0+j][k0+k]. */
static ALWAYS_INLINE void pack_b_dt(enum kern_dtype dt, const struct linear *L, int j0, int nr,
                                    int k0, int kc, float *dst)
{
    size_t esz = kern_dtype_size(dt);
    size_t rowb = (size_t)L->in * esz;
    const char *base = (const char *)L->w + (size_t)j0 * rowb;
    int k = 0;
#if defined(__AVX2__)
    if (nr == GEMM_NR) {
        for (; k + 8 <= kc; k += 8) {
            for (int h = 0; h < 2; h++) {
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = (__m256)w8(dt, base + (size_t)(8 * h + i) * rowb, k0 + k);
                v8_transpose8(r);
                for (int i = 0; i < 8; i++)
                    _mm256_store_ps(dst + (size_t)(k + i) * GEMM_NR + 8 * h, r[i]);
            }
        }
    }
#endif
    for (int j = 0; j < GEMM_NR; j++) {
        if (j < nr) {
            const char *row = base + (size_t)j * rowb;
            for (int kk = k; kk < kc; kk++)
                dst[(size_t)kk * GEMM_NR + j] = w1(dt, row, k0 + kk);
        } else {
            for (int kk = k; kk < kc; kk++)
                dst[(size_t)kk * GEMM_NR + j] = 0.0f;
        }
    }
}

static void pack_b_w(const void *ctxp, int j0, int nr, int k0, int kc, float *dst)
{
    const struct matmul__ctx *c = ctxp;
    switch (c->L->dtype) {
    case KERN_BF16:
        pack_b_dt(KERN_BF16, c->L, j0, nr, k0, kc, dst);
        break;
    case KERN_F16:
        pack_b_dt(KERN_F16, c->L, j0, nr, k0, kc, dst);
        break;
    case KERN_F32:
    default:
        pack_b_dt(KERN_F32, c->L, j0, nr, k0, kc, dst);
        break;
    }
}

void matmul_cpu(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    if (T <= 0 || L->out <= 0)
        return;
    if (L->fmt != LINEAR_FMT_DENSE) {
        matmul__cpu_quant(y, x, T, L, accumulate);
        return;
    }
    if (T < MATMUL_GEMV_MAX_T) {
        gemv(y, x, T, L, accumulate);
        return;
    }
    struct matmul__ctx ctx = { x, L };
    struct gemm_src src = { matmul__pack_a_x, pack_b_w, &ctx };
    gemm_cpu_run(T, L->out, L->in, &src, y, (size_t)L->out, 1.0f, accumulate ? 1.0f : 0.0f, 0);
}

int matmul(enum kern_impl impl, float *y, const float *x, int T, const struct linear *L,
           int accumulate)
{
    if (!L || T < 0 || (T > 0 && (!y || !x)))
        return -EINVAL;
    switch (L->fmt) {
    case LINEAR_FMT_DENSE:
    case LINEAR_FMT_INT:
    case LINEAR_FMT_INT4:
    case LINEAR_FMT_FP8:
        break;
    default:
        return -ENOSYS;
    }
    if (T == 0)
        return 0;
    switch (impl) {
    case KERN_IMPL_REF:
        matmul_ref(y, x, T, L, accumulate);
        return 0;
    case KERN_IMPL_CPU:
        matmul_cpu(y, x, T, L, accumulate);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a usable
         * CUDA backend. */
        if (L->fmt != LINEAR_FMT_DENSE)
            return cuda_host_qmatmul(y, x, T, L, accumulate);
        return cuda_host_matmul(y, x, T, L->out, L->in, (int)L->dtype, L->w, accumulate);
    default:
        return -ENOSYS;
    }
}
