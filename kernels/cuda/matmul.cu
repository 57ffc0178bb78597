/*
 * matmul (CUDA): y[T][out] (+)= x[T][in] . W^T with the engine's layout (x fp32 row-major, W
 * row-major [out][in] of F32, BF16 or F16: PyTorch nn.Linear), through cuBLAS with fp32
 * accumulation. cuBLAS is column-major: row-major y^T = W . x^T is the column-major product
 * op(A) = W (A = W's memory read as an [in x out] matrix, transposed), B = x's memory as an
 * [in x T] matrix, C = y's memory as an [out x T] matrix with ldc = out.
 *
 * Variants:
 *   matmul (v1, default; the one matmul() dispatches to): exact CPU semantics. F32 weights go
 *          straight to cublasSgemm; BF16/F16 weights are widened to fp32 (exactly) on the
 *          device, MM_SCRATCH_BYTES worth of rows at a time, and each chunk is an Sgemm into
 *          its rows of y. The handle's math mode is CUBLAS_DEFAULT_MATH, so no TF32: every
 *          product and sum is fp32 and the CPU test's Higham bound applies.
 *   matmul_bf16 (v2): x rounded to bf16 (RNE) on the device, then a BF16 x BF16 -> fp32
 *          cublasGemmEx with CUBLAS_COMPUTE_32F (tensor cores, fp32 accumulation), over chunks
 *          of rows of x. This is what a bf16-activation engine would run; it differs from the
 *          CPU semantics by the rounding of x (relative 2^-9 per product), so it is only used
 *          explicitly (the GPU test checks it against matmul_ref on the rounded x).
 * Quantized formats (LINEAR_FMT_INT/INT4/FP8) have no CUDA kernel yet: the dispatch returns
 * -ENOSYS for them (the W4A16 GEMV plan is in docs/cuda.md).
 *
 * Checked on an H100 (sm_90) by its tests/kernels test, also under compute-sanitizer
 * (docs/cuda.md).
 */
#include "kernels/cuda.h"

#include <cuda_fp16.h>
#include <errno.h>

#define MM_THREADS       256
#define MM_SCRATCH_BYTES ((size_t)64 << 20) /* widened W / rounded x per cuBLAS call */

__global__ void mm_widen_kernel_v1(float *dst, const void *src, int dtype, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned short b = ((const unsigned short *)src)[i];
        dst[i] =
            dtype == CUDA_DTYPE_BF16 ? cudak_bf16_to_f32(b) : __half2float(__ushort_as_half(b));
    }
}

__global__ void mm_round_bf16_kernel_v1(unsigned short *dst, const float *src, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = cudak_f32_to_bf16(src[i]);
}

static int check_args(const char *what, const float *y, const float *x, int T, int out, int in,
                      int dtype, const void *w)
{
    if (T < 0 || out < 0 || in < 0)
        return cudak__fail(-EINVAL, "%s: negative shape (T %d, out %d, in %d)", what, T, out, in);
    if (dtype != CUDA_DTYPE_F32 && dtype != CUDA_DTYPE_BF16 && dtype != CUDA_DTYPE_F16)
        return cudak__fail(-EINVAL, "%s: unknown weight dtype %d", what, dtype);
    if (T > 0 && out > 0 && (!y || (in > 0 && (!x || !w))))
        return cudak__fail(-EINVAL, "%s: NULL pointer", what);
    return 0;
}

extern "C" int cudak_matmul(float *y, const float *x, int T, int out, int in, int dtype,
                            const void *w, int accumulate)
{
    if (!cudak__ready())
        return cudak__not_ready();
    int rc = check_args("matmul", y, x, T, out, in, dtype, w);
    if (rc)
        return rc;
    if (T == 0 || out == 0)
        return 0;
    if (in == 0)
        return cudak_empty_product(y, T, out, accumulate);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasHandle_t hb = cudak__cublas();
    if (dtype == CUDA_DTYPE_F32) {
        CUBLASK_CHECK(cublasSgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &one, (const float *)w,
                                  in, x, in, &beta, y, out));
        return 0;
    }
    return cudak_sgemm_rows(
        y, x, T, out, in, accumulate, MM_SCRATCH_BYTES, "mm_widen_kernel_v1",
        [&](float *dst, size_t r0, size_t m) {
            size_t nel = m * (size_t)in;
            const unsigned short *src = (const unsigned short *)w + r0 * (size_t)in;
            mm_widen_kernel_v1<<<cudak_grid(nel, MM_THREADS), MM_THREADS, 0, cudak__stream()>>>(
                dst, src, dtype, nel);
        });
}

extern "C" int cudak_matmul_bf16(float *y, const float *x, int T, int out, int in, int dtype,
                                 const void *w, int accumulate)
{
    if (!cudak__ready())
        return cudak__not_ready();
    int rc = check_args("matmul_bf16", y, x, T, out, in, dtype, w);
    if (rc)
        return rc;
    if (dtype != CUDA_DTYPE_BF16)
        return cudak__fail(-ENOSYS, "matmul_bf16: weights must be BF16 (dtype %d)", dtype);
    if (T == 0 || out == 0)
        return 0;
    if (in == 0)
        return cudak_empty_product(y, T, out, accumulate);
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    size_t rows;
    void *scratch;
    rc = cudak__scratch_rows(sizeof(unsigned short) * (size_t)in, (size_t)T, MM_SCRATCH_BYTES,
                             &rows, &scratch);
    if (rc)
        return rc;
    unsigned short *xb = (unsigned short *)scratch;
    for (size_t t0 = 0; t0 < (size_t)T; t0 += rows) {
        size_t nt = (size_t)T - t0 < rows ? (size_t)T - t0 : rows;
        size_t nel = nt * (size_t)in;
        mm_round_bf16_kernel_v1<<<cudak_grid(nel, MM_THREADS), MM_THREADS, 0, cudak__stream()>>>(
            xb, x + t0 * (size_t)in, nel);
        CUDAK_LAUNCHED("mm_round_bf16_kernel_v1");
        CUBLASK_CHECK(cublasGemmEx(cudak__cublas(), CUBLAS_OP_T, CUBLAS_OP_N, out, (int)nt, in,
                                   &one, w, CUDA_R_16BF, in, xb, CUDA_R_16BF, in, &beta,
                                   y + t0 * (size_t)out, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}
