/*
 * syrk_cpu: the fast H = beta * H + alpha * X^T . X and the syrk() dispatch (see syrk.h).
 *
 * A = X^T and B = X are both packed straight from X's rows (each packed k-row is a contiguous
 * run of X), so packing costs one pass over X per K block. The driver computes only tiles that
 * touch the upper triangle; the mirror then copies the strict upper triangle down in 64x64
 * tiles so that both the reads and the writes stay in cache.
 */
#include "kernels/syrk.h"

#include <errno.h>

#include "kernels/gemm.h"
#include "kernels/cuda.h"
#include "kernels/par.h"

struct syrk_ctx {
    const float *X;
    int n;
};

/* A[i][t] = X[t][i]: panel[k][i] = X[k0+k][i0+i]. */
static void pack_a_xt(const void *ctxp, int i0, int mr, int k0, int kc, float *dst)
{
    const struct syrk_ctx *c = ctxp;
    gemm_pack_rows(c->X, (size_t)c->n, i0, mr, GEMM_MR, k0, kc, dst);
}

/* B[t][j] = X[t][j]: panel[k][j] = X[k0+k][j0+j]. */
static void pack_b_x(const void *ctxp, int j0, int nr, int k0, int kc, float *dst)
{
    const struct syrk_ctx *c = ctxp;
    gemm_pack_rows(c->X, (size_t)c->n, j0, nr, GEMM_NR, k0, kc, dst);
}

#define MIRROR_TILE 64

struct mirror_job {
    float *H;
    int n, nt;
};

/* Task = one tile (bi, bj) with bj < bi of the lower triangle, plus the diagonal tiles. */
static void mirror_task(void *arg, int task, int tid)
{
    struct mirror_job *m = arg;
    (void)tid;
    /* Decode task -> (bi, bj) with 0 <= bj <= bi. */
    int bi = 0;
    while ((bi + 1) * (bi + 2) / 2 <= task)
        bi++;
    int bj = task - bi * (bi + 1) / 2;
    int i0 = bi * MIRROR_TILE, i1 = EXAQ_GEMM_MINI(i0 + MIRROR_TILE, m->n);
    int j0 = bj * MIRROR_TILE, j1 = EXAQ_GEMM_MINI(j0 + MIRROR_TILE, m->n);
    for (int i = i0; i < i1; i++) {
        int je = bi == bj ? i : j1;
        for (int j = j0; j < je; j++)
            m->H[(size_t)i * m->n + j] = m->H[(size_t)j * m->n + i];
    }
}

void syrk_cpu(float *H, const float *X, int T, int n, float alpha, float beta)
{
    if (n <= 0)
        return;
    struct syrk_ctx ctx = { X, n };
    struct gemm_src src = { pack_a_xt, pack_b_x, &ctx };
    gemm_cpu_run(n, n, T, &src, H, (size_t)n, alpha, beta, 1);
    struct mirror_job m = { H, n, (n + MIRROR_TILE - 1) / MIRROR_TILE };
    par_for(m.nt * (m.nt + 1) / 2, mirror_task, &m);
}

int syrk(enum kern_impl impl, float *H, const float *X, int T, int n, float alpha, float beta)
{
    if (n < 0 || T < 0 || (n > 0 && !H) || (n > 0 && T > 0 && !X))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        syrk_ref(H, X, T, n, alpha, beta);
        return 0;
    case KERN_IMPL_CPU:
        syrk_cpu(H, X, T, n, alpha, beta);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_syrk(H, X, T, n, alpha, beta);
    default:
        return -ENOSYS;
    }
}
