/*
 * swiglu (CUDA): h = silu(g) * u = g / (1 + exp(-g)) * u elementwise over n values, the
 * semantics of swiglu_ref (kernels/swiglu.h) in fp32.
 *
 * Also add (y += x elementwise, one IEEE fp32 addition per element: the residual update of
 * worker/engine/model_fwd.c), which the device-resident forward uses.
 *
 * Variants:
 *   swiglu_kernel_v1   (default) one element per thread, grid-stride; expf (CUDA: <= 2 ulp, no
 *                      fast-math), IEEE division. h may alias g or u (elementwise).
 * Numerics: as swiglu_cpu (exp within 2 ulp, three more roundings), so the CPU test's bound
 * 16u|ref| + 1e-36 (1 + |u|) applies; for g < -88.72 exp(-g) overflows and h is +-0, as in
 * torch's fp32 silu.
 *
 * Checked on an H100 (sm_90) by its tests/kernels test, also under compute-sanitizer
 * (docs/cuda.md).
 */
#include "kernels/cuda.h"

#include <errno.h>

#define SWIGLU_THREADS 256

__global__ void swiglu_kernel_v1(float *h, const float *g, const float *u, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gv = g[i], uv = u[i];
        float s = __fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv)));
        h[i] = __fmul_rn(s, uv);
    }
}

extern "C" int cudak_swiglu(float *h, const float *g, const float *u, size_t n)
{
    if (!cudak__ready())
        return cudak__not_ready();
    if (n == 0)
        return 0;
    if (!h || !g || !u)
        return cudak__fail(-EINVAL, "swiglu: NULL pointer for %zu values", n);
    swiglu_kernel_v1<<<cudak_grid(n, SWIGLU_THREADS), SWIGLU_THREADS, 0, cudak__stream()>>>(h, g, u,
                                                                                            n);
    CUDAK_LAUNCHED("swiglu_kernel_v1");
    return 0;
}

__global__ void add_kernel_v1(float *y, const float *x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], x[i]);
}

extern "C" int cudak_add(float *y, const float *x, size_t n)
{
    if (!cudak__ready())
        return cudak__not_ready();
    if (n == 0)
        return 0;
    if (!y || !x)
        return cudak__fail(-EINVAL, "add: NULL pointer for %zu values", n);
    add_kernel_v1<<<cudak_grid(n, SWIGLU_THREADS), SWIGLU_THREADS, 0, cudak__stream()>>>(y, x, n);
    CUDAK_LAUNCHED("add_kernel_v1");
    return 0;
}
