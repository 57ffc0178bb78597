/*
 * rope (CUDA): NeoX (half-split) rotary embedding in place on x[T][nheads][head_dim], the exact
 * convention of rope_ref (kernels/rope.h): angle = float(pos0 + t) * inv_freq[i] as one fp32
 * product, cos/sin in double from that fp32 angle rounded to fp32 (or to bf16 with RNE when
 * cs_bf16), then
 *   x'[i]     = x[i] * c - x[i + d/2] * s
 *   x'[i+d/2] = x[i + d/2] * c + x[i] * s,     i < d/2.
 *
 * Variants:
 *   rope_kernel_v1   (default) one thread per (row, head, i < d/2) pair, grid-stride. The
 *                    products and sums use __fmul_rn / __fadd_rn so nvcc cannot contract them
 *                    into FMAs: each output is rounded exactly as the C expression in rope_ref.
 * The double cos/sin (CUDA: <= 2 ulp in double) rounded to fp32 equals the host's except in
 * rare double-rounding cases (1 fp32 ulp), inside the CPU test's bound 4u(|x1| + |x2|).
 * inv_freq is a device pointer with d/2 entries.
 *
 * Checked on an H100 (sm_90) by its tests/kernels test, also under compute-sanitizer
 * (docs/cuda.md).
 */
#include "kernels/cuda.h"

#include <errno.h>

#define ROPE_THREADS 256

__global__ void rope_kernel_v1(float *x, int T, int nheads, int head_dim, int pos0,
                               const float *inv_freq, int cs_bf16)
{
    const int half = head_dim / 2;
    const size_t total = (size_t)T * nheads * half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t row = idx / half; /* t * nheads + h */
        int t = (int)(row / nheads);
        float ang = __fmul_rn((float)(pos0 + t), inv_freq[i]);
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        float c = (float)cd, s = (float)sd;
        if (cs_bf16) {
            c = cudak_bf16_to_f32(cudak_f32_to_bf16(c));
            s = cudak_bf16_to_f32(cudak_f32_to_bf16(s));
        }
        float *v = x + row * head_dim;
        float x1 = v[i], x2 = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
        v[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
    }
}

extern "C" int cudak_rope(float *x, int T, int nheads, int head_dim, int pos0,
                          const float *inv_freq, int cs_bf16)
{
    if (!cudak__ready())
        return cudak__not_ready();
    if (T < 0 || nheads < 0 || head_dim <= 0 || head_dim % 2 || pos0 < 0 ||
        (T > 0 && nheads > 0 && (!x || !inv_freq)))
        return cudak__fail(-EINVAL, "rope: bad arguments (T %d, heads %d, head_dim %d, pos0 %d)", T,
                           nheads, head_dim, pos0);
    size_t total = (size_t)T * nheads * (head_dim / 2);
    if (total == 0)
        return 0;
    rope_kernel_v1<<<cudak_grid(total, ROPE_THREADS), ROPE_THREADS, 0, cudak__stream()>>>(
        x, T, nheads, head_dim, pos0, inv_freq, cs_bf16);
    CUDAK_LAUNCHED("rope_kernel_v1");
    return 0;
}
