/*
 * lse (CUDA): per-row log-sum-exp, out[r] = m + log(sum_i exp(x[r][i] - m)), m the row max; the
 * semantics of lse_ref (kernels/lse.h): a NaN anywhere in the row gives NaN, a row whose max is
 * +-inf gives that inf.
 *
 * Variants:
 *   lse_kernel_v1   (default) one block of 256 threads per row. Pass 1: max and a NaN flag
 *                   (fmaxf ignores NaN, so NaN is tracked apart). Pass 2: exp((double)x - m)
 *                   summed in double per thread and over the block, log in double, rounded
 *                   once to fp32. This is the reference's arithmetic except for the summation
 *                   order, so the result is within an ulp or two of lse_ref; fp64 throughput
 *                   hardly matters for a memory-bound row scan.
 *
 * Checked on an H100 (sm_90) by its tests/kernels test, also under compute-sanitizer
 * (docs/cuda.md).
 */
#include "kernels/cuda.h"

#include <errno.h>

#define LSE_THREADS 256

__global__ void lse_kernel_v1(float *out, const float *x, int n)
{
    __shared__ float shm[32];
    __shared__ double shs[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    float nan = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (isnan(v))
            nan = 1.0f;
        m = fmaxf(m, v);
    }
    /* Block max: warp shuffles, then one value per warp through shared memory. */
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0)
        shm[warp] = m;
    __syncthreads();
    m = lane < nw ? shm[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    nan = cudak_block_sum(nan, shm);
    if (nan > 0.0f) {
        if (threadIdx.x == 0)
            out[blockIdx.x] = NAN;
        return;
    }
    if (isinf(m)) {
        if (threadIdx.x == 0)
            out[blockIdx.x] = m;
        return;
    }
    double md = (double)m, s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += exp((double)xr[i] - md);
    s = cudak_block_sum_d(s, shs);
    if (threadIdx.x == 0)
        out[blockIdx.x] = (float)(md + log(s));
}

extern "C" int cudak_lse(float *out, const float *x, int rows, int n)
{
    if (!cudak__ready())
        return cudak__not_ready();
    if (rows < 0 || n <= 0 || (rows > 0 && (!out || !x)))
        return cudak__fail(-EINVAL, "lse: bad arguments (rows %d, n %d)", rows, n);
    if (rows == 0)
        return 0;
    lse_kernel_v1<<<(unsigned int)rows, LSE_THREADS, 0, cudak__stream()>>>(out, x, n);
    CUDAK_LAUNCHED("lse_kernel_v1");
    return 0;
}
