/*
 * gemm: the blocked, packed fp32 GEMM driver shared by the fast CPU matmul and syrk kernels
 * (internal to kernels/; the engine calls matmul() and syrk()).
 *
 * C[M][N] = beta * C + alpha * A[M][K] . B[K][N], where A and B are never read directly: the
 * caller supplies packing callbacks that write the panels the 6x16 micro-kernel consumes, so
 * the same driver serves x.W^T with W in BF16/F16/F32 (B[k][n] = W[n][k]) and X^T.X (A[i][k] =
 * X[k][i]). Blocking (BLIS loop order): K in KC blocks; per block A is packed once (in
 * parallel) into MR-row panels, then tasks over N chunks each pack their B chunk into NR-column
 * panels and sweep MC row blocks with the micro-kernel. With upper_only the tiles entirely
 * below the diagonal are skipped (used by syrk, which mirrors afterwards).
 */
#ifndef EXAQ_GEMM_H
#define EXAQ_GEMM_H

#include <stddef.h>

#define GEMM_MR              6
#define GEMM_NR              16
#define GEMM_KC              256
#define GEMM_MC              144 /* 24 panels: an A block of 144x256 fp32 (144 KiB) stays in L2 */

#define EXAQ_GEMM_MINI(a, b) ((a) < (b) ? (a) : (b))

/* par_scratch slots used by the driver (other kernels use slots 2 and 3). */
#define GEMM_SCRATCH_A 0
#define GEMM_SCRATCH_B 1

struct gemm_src {
    /* Writes A rows i0..i0+mr-1 (mr <= GEMM_MR), k0..k0+kc-1 as dst[k][GEMM_MR]; rows >= mr must
     * be written as zeros. */
    void (*pack_a)(const void *ctx, int i0, int mr, int k0, int kc, float *dst);
    /* Writes B columns j0..j0+nr-1 (nr <= GEMM_NR), k0..k0+kc-1 as dst[k][GEMM_NR]; columns >=
     * nr must be written as zeros. */
    void (*pack_b)(const void *ctx, int j0, int nr, int k0, int kc, float *dst);
    const void *ctx;
};

/* A panel taken along the rows of a row-major P (rows k, leading dimension ld): dst[k][j] =
 * P[(k0 + k) * ld + j0 + j] for j < n, zeros up to w (GEMM_MR for A, GEMM_NR for B). A = P^T
 * and B = P packed this way need no transpose. */
void gemm_pack_rows(const float *P, size_t ld, int j0, int n, int w, int k0, int kc, float *dst);

/* Runs the blocked GEMM on the par pool. beta == 0 means C is not read (it may hold NaN).
 * M, N >= 1; K == 0 gives C = beta * C. */
void gemm_cpu_run(int M, int N, int K, const struct gemm_src *src, float *C, size_t ldc,
                  float alpha, float beta, int upper_only);

#endif
