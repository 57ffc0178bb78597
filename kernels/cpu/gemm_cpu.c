/*
 * gemm_cpu: the blocked fp32 GEMM driver and its 6x16 micro-kernel (see gemm.h).
 *
 * The micro-kernel is written with GCC vector extensions (8 x fp32 vectors): with -march=native
 * on an AVX2/FMA machine GCC emits vbroadcastss + vfmadd231ps on 12 accumulators (ymm0-11), and
 * without AVX it still compiles to SSE pairs, which is the portable fallback. It only touches
 * packed, 64-byte-aligned panels, so it has no bounds logic; partial edge tiles are computed in
 * full into a stack tile and copied out.
 */
#include "kernels/gemm.h"

#include <string.h>

#include "kernels/par.h"
#include "kernels/vmath.h"

/*
 * acc[6][16] = A_panel (kc x 6) . B_panel (kc x 16), then C (mr x nr valid) is written:
 * mode 0: C = alpha*acc; mode 1: C = beta*C + alpha*acc; mode 2: C += alpha*acc.
 */
static void micro_6x16(int kc, const float *restrict a, const float *restrict b, float *c,
                       size_t ldc, int mr, int nr, float alpha, float beta, int mode)
{
    v8f c00 = { 0 }, c01 = { 0 }, c10 = { 0 }, c11 = { 0 }, c20 = { 0 }, c21 = { 0 };
    v8f c30 = { 0 }, c31 = { 0 }, c40 = { 0 }, c41 = { 0 }, c50 = { 0 }, c51 = { 0 };
    const v8f *bv = (const v8f *)__builtin_assume_aligned(b, 64);
    for (int k = 0; k < kc; k++) {
        v8f b0 = bv[0], b1 = bv[1];
        float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];
        c00 += a0 * b0;
        c01 += a0 * b1;
        c10 += a1 * b0;
        c11 += a1 * b1;
        c20 += a2 * b0;
        c21 += a2 * b1;
        c30 += a3 * b0;
        c31 += a3 * b1;
        c40 += a4 * b0;
        c41 += a4 * b1;
        c50 += a5 * b0;
        c51 += a5 * b1;
        a += GEMM_MR;
        bv += 2;
    }
    v8f acc[GEMM_MR][2] = { { c00, c01 }, { c10, c11 }, { c20, c21 },
                            { c30, c31 }, { c40, c41 }, { c50, c51 } };
    if (mr == GEMM_MR && nr == GEMM_NR) {
        for (int i = 0; i < GEMM_MR; i++) {
            float *cr = c + (size_t)i * ldc;
            for (int h = 0; h < 2; h++) {
                v8f r = alpha * acc[i][h];
                if (mode == 1)
                    r += beta * v8_loadu(cr + 8 * h);
                else if (mode == 2)
                    r += v8_loadu(cr + 8 * h);
                v8_storeu(cr + 8 * h, r);
            }
        }
        return;
    }
    float tile[GEMM_MR][GEMM_NR];
    memcpy(tile, acc, sizeof(tile));
    for (int i = 0; i < mr; i++) {
        float *cr = c + (size_t)i * ldc;
        for (int j = 0; j < nr; j++) {
            float r = alpha * tile[i][j];
            if (mode == 1)
                r += beta * cr[j];
            else if (mode == 2)
                r += cr[j];
            cr[j] = r;
        }
    }
}

struct gemm_job {
    int M, N, K;
    const struct gemm_src *src;
    float *C;
    size_t ldc;
    float alpha, beta;
    int upper_only;
    /* Current K block. */
    int k0, kc;
    float *ap; /* packed A block: panel p at ap + p*GEMM_MR*kc */
    int npanels_a;
    int nchunk; /* columns per N task, a multiple of GEMM_NR */
    int ntasks_n;
};

static void pack_a_task(void *arg, int task, int tid)
{
    struct gemm_job *j = arg;
    (void)tid;
    /* One task packs 8 panels. */
    int p0 = task * 8, p1 = EXAQ_GEMM_MINI(p0 + 8, j->npanels_a);
    for (int p = p0; p < p1; p++) {
        int i0 = p * GEMM_MR;
        int mr = j->M - i0 < GEMM_MR ? j->M - i0 : GEMM_MR;
        j->src->pack_a(j->src->ctx, i0, mr, j->k0, j->kc, j->ap + (size_t)p * GEMM_MR * j->kc);
    }
}

static void n_task(void *arg, int task, int tid)
{
    struct gemm_job *j = arg;
    (void)tid;
    /* Tasks are numbered so that, with upper_only, the widest (rightmost) chunks go first. */
    int chunk = j->upper_only ? j->ntasks_n - 1 - task : task;
    int n0 = chunk * j->nchunk;
    int n1 = EXAQ_GEMM_MINI(n0 + j->nchunk, j->N);
    int npan = (n1 - n0 + GEMM_NR - 1) / GEMM_NR;
    int kc = j->kc;
    float *bp = par_scratch(GEMM_SCRATCH_B, (size_t)npan * GEMM_NR * kc * sizeof(float));
    for (int q = 0; q < npan; q++) {
        int c0 = n0 + q * GEMM_NR;
        int nr = n1 - c0 < GEMM_NR ? n1 - c0 : GEMM_NR;
        j->src->pack_b(j->src->ctx, c0, nr, j->k0, kc, bp + (size_t)q * GEMM_NR * kc);
    }
    int mode = j->k0 > 0 ? 2 : (j->beta == 0.0f ? 0 : 1);
    int m_end = j->M;
    if (j->upper_only && m_end > n1)
        m_end = n1; /* rows >= n1 lie entirely below the diagonal of this chunk */
    for (int ic = 0; ic < m_end; ic += GEMM_MC) {
        int ie = EXAQ_GEMM_MINI(ic + GEMM_MC, m_end);
        for (int q = 0; q < npan; q++) {
            int c0 = n0 + q * GEMM_NR;
            int nr = n1 - c0 < GEMM_NR ? n1 - c0 : GEMM_NR;
            const float *b = bp + (size_t)q * GEMM_NR * kc;
            for (int i0 = ic; i0 < ie; i0 += GEMM_MR) {
                if (j->upper_only && i0 >= c0 + nr)
                    break;
                int mr = j->M - i0 < GEMM_MR ? j->M - i0 : GEMM_MR;
                const float *a = j->ap + (size_t)(i0 / GEMM_MR) * GEMM_MR * kc;
                micro_6x16(kc, a, b, j->C + (size_t)i0 * j->ldc + c0, j->ldc, mr, nr, j->alpha,
                           j->beta, mode);
            }
        }
    }
}

static void scale_rows_task(void *arg, int task, int tid)
{
    struct gemm_job *j = arg;
    (void)tid;
    float *row = j->C + (size_t)task * j->ldc;
    for (int n = 0; n < j->N; n++)
        row[n] = j->beta == 0.0f ? 0.0f : j->beta * row[n];
}

void gemm_pack_rows(const float *P, size_t ld, int j0, int n, int w, int k0, int kc, float *dst)
{
    for (int k = 0; k < kc; k++) {
        const float *src = P + (size_t)(k0 + k) * ld + j0;
        float *d = dst + (size_t)k * (size_t)w;
        if (n == w) {
            memcpy(d, src, (size_t)w * sizeof(float));
        } else {
            int j = 0;
            for (; j < n; j++)
                d[j] = src[j];
            for (; j < w; j++)
                d[j] = 0.0f;
        }
    }
}

void gemm_cpu_run(int M, int N, int K, const struct gemm_src *src, float *C, size_t ldc,
                  float alpha, float beta, int upper_only)
{
    struct gemm_job j = {
        .M = M,
        .N = N,
        .K = K,
        .src = src,
        .C = C,
        .ldc = ldc,
        .alpha = alpha,
        .beta = beta,
        .upper_only = upper_only,
    };
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        par_for(M, scale_rows_task, &j);
        return;
    }
    int nth = par_nthreads();
    j.npanels_a = (M + GEMM_MR - 1) / GEMM_MR;
    /* N chunks: about 4 per thread for balance, at most 256 columns (a 256x256 fp32 B block is
     * 256 KiB, half of a Zen 3 L2), at least one micro-panel. */
    int want = (N + 4 * nth - 1) / (4 * nth);
    want = (want + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
    if (want > 256)
        want = 256;
    if (want < GEMM_NR)
        want = GEMM_NR;
    j.nchunk = want;
    j.ntasks_n = (N + want - 1) / want;
    size_t ap_floats = (size_t)j.npanels_a * GEMM_MR * GEMM_KC;
    j.ap = par_scratch(GEMM_SCRATCH_A, ap_floats * sizeof(float));
    for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
        j.k0 = k0;
        j.kc = EXAQ_GEMM_MINI(GEMM_KC, K - k0);
        par_for((j.npanels_a + 7) / 8, pack_a_task, &j);
        par_for(j.ntasks_n, n_task, &j);
    }
}
