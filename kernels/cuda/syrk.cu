/*
 * syrk (CUDA): H = beta * H + alpha * X^T . X for the GPTQ Hessian, X [T][n] fp32 row-major,
 * H [n][n] fp32; the semantics of syrk_cpu (kernels/syrk.h): the upper triangle is computed and
 * then mirrored into the lower one, so the full symmetric matrix is written and, like the CPU
 * kernel, only the upper triangle of the incoming H is read (a running Hessian is symmetric).
 * beta == 0 does not read H.
 *
 * Variants:
 *   syrk (v1, default): cublasSsyrk in fp32 (CUBLAS_DEFAULT_MATH: no TF32). X's row-major
 *        memory read column-major is the [n x T] matrix A = X^T, so C = A A^T = X^T X; the
 *        row-major upper triangle of H is the column-major lower one, hence
 *        CUBLAS_FILL_MODE_LOWER. Then syrk_mirror_kernel_v1 copies H[j][i] (j < i) into H[i][j].
 *        T == 0 scales the upper triangle by beta (0 when beta == 0) and mirrors.
 * Numerics: fp32 products and sums in cuBLAS's order: the CPU test's Higham bound
 * 2 gamma_{T+1} (|alpha| sum |x_ti x_tj| + |beta h_ij|) + u|ref| applies.
 * NEEDSWORK: for the 1.2B down_proj (n = 8192) a TF32 or BF16 variant would be 4-8x faster;
 * whether GPTQ tolerates it is an open question (docs/cuda.md).
 *
 * Checked on an H100 (sm_90) by its tests/kernels test, also under compute-sanitizer
 * (docs/cuda.md).
 */
#include "kernels/cuda.h"

#include <errno.h>

#define SYRK_THREADS 256

/* Row-major lower triangle (i > j) from the upper one. */
__global__ void syrk_mirror_kernel_v1(float *H, int n)
{
    const size_t total = (size_t)n * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / n, j = idx % n;
        if (j < i)
            H[idx] = H[j * n + i];
    }
}

/* T == 0: upper triangle (j >= i) = beta * H, or 0 when beta == 0 (H not read). */
__global__ void syrk_scale_upper_kernel_v1(float *H, int n, float beta)
{
    const size_t total = (size_t)n * n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / n, j = idx % n;
        if (j >= i)
            H[idx] = beta == 0.0f ? 0.0f : beta * H[idx];
    }
}

extern "C" int cudak_syrk(float *H, const float *X, int T, int n, float alpha, float beta)
{
    if (!cudak__ready())
        return cudak__not_ready();
    if (n < 0 || T < 0 || (n > 0 && !H) || (n > 0 && T > 0 && !X))
        return cudak__fail(-EINVAL, "syrk: bad arguments (T %d, n %d)", T, n);
    if (n == 0)
        return 0;
    size_t total = (size_t)n * n;
    if (T == 0) {
        syrk_scale_upper_kernel_v1<<<cudak_grid(total, SYRK_THREADS), SYRK_THREADS, 0,
                                     cudak__stream()>>>(H, n, beta);
        CUDAK_LAUNCHED("syrk_scale_upper_kernel_v1");
    } else {
        CUBLASK_CHECK(cublasSsyrk(cudak__cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, T,
                                  &alpha, X, n, &beta, H, n));
    }
    syrk_mirror_kernel_v1<<<cudak_grid(total, SYRK_THREADS), SYRK_THREADS, 0, cudak__stream()>>>(H,
                                                                                                 n);
    CUDAK_LAUNCHED("syrk_mirror_kernel_v1");
    return 0;
}
