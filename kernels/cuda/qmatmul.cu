/*
 * qmatmul (CUDA): y[T][out] (+)= x[T][in] . W^T for a quantized weight (struct cuda_qlin: the
 * INT, INT4 and FP8 formats of kernels/matmul.h, in device memory).
 *
 * Variants:
 *   qmatmul (v1, default; what matmul() dispatches quantized linears to): exact CPU semantics.
 *          A chunk of MM rows of W is dequantized into fp32 scratch, one thread per weight,
 *          in original column order: (q - zp) * scale (FP8: e4m3(q) * scale) with the scale
 *          widened from BF16, the product that kernels/ref/matmul_ref.c qw_at computes. Each
 *          chunk is then a cublasSgemm into its rows of y (CUBLAS_DEFAULT_MATH: no TF32), so
 *          the result differs from the CPU only by the order of fp32 sums.
 * This is the correctness path that lets every format run on the GPU. It streams the fp32
 * dequantization through memory once per call (4 bytes per weight written and read), so it
 * is no faster than BF16; the GEMV that decodes codes in registers is the plan in docs/cuda.md.
 */
#include "kernels/cuda.h"

#include <errno.h>

#define QMM_THREADS       256
#define QMM_SCRATCH_BYTES ((size_t)64 << 20) /* dequantized rows per cuBLAS call */

/* torch.float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN (kern_f8e4m3_to_f32). */
static __device__ __forceinline__ float qmm_e4m3_to_f32(unsigned char b)
{
    unsigned int sign = (unsigned int)(b & 0x80u) << 24;
    unsigned int e = (b >> 3) & 0xfu, m = b & 7u;
    if (e == 15 && m == 7)
        return __uint_as_float(sign | 0x7fc00000u);
    if (e == 0) {
        float v = (float)m * (1.0f / 512.0f);
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

/* dst[r][c] = W[r0 + r][c] for r < m, every c < in. */
__global__ void qmm_dequant_kernel_v1(float *dst, struct cuda_qlin L, size_t r0, size_t m)
{
    size_t in = (size_t)L.in, n = m * in;
    size_t row_bytes = ((size_t)(L.in + 15) / 16) * 8; /* linear_int4_row_bytes */
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / in, row = r0 + r;
        int c = (int)(i - r * in);
        int g = L.g_idx ? L.g_idx[c] : (L.group_size > 0 ? c / L.group_size : 0);
        size_t k = L.group_size == 0 ? 0 : row * (size_t)L.ngroups + (size_t)g;
        float s = cudak_bf16_to_f32(L.scale[k]);
        size_t p = L.pinv ? (size_t)L.pinv[c] : (size_t)c;
        float v;
        if (L.fmt == CUDA_QFMT_FP8) {
            v = qmm_e4m3_to_f32(((const unsigned char *)L.w)[row * in + p]) * s;
        } else {
            int q;
            if (L.fmt == CUDA_QFMT_INT4) {
                signed char b =
                    ((const signed char *)L.w)[row * row_bytes + (p >> 4) * 8 + (p & 7)];
                q = (p & 8) ? b >> 4 : (signed char)(b * 16) >> 4; /* signed high / low nibble */
            } else {
                q = ((const signed char *)L.w)[row * in + p];
            }
            int z = L.zp ? L.zp[k] : 0;
            v = (float)(q - z) * s;
        }
        dst[i] = v;
    }
}

static int check_args(float *y, const float *x, int T, const struct cuda_qlin *L)
{
    if (!L)
        return cudak__fail(-EINVAL, "qmatmul: NULL weight");
    if (T < 0 || L->out < 0 || L->in < 0)
        return cudak__fail(-EINVAL, "qmatmul: negative shape (T %d, out %d, in %d)", T, L->out,
                           L->in);
    if (L->fmt != CUDA_QFMT_INT && L->fmt != CUDA_QFMT_INT4 && L->fmt != CUDA_QFMT_FP8)
        return cudak__fail(-EINVAL, "qmatmul: unknown weight format %d", L->fmt);
    if (L->group_size < -1 || L->ngroups < 1 ||
        (L->group_size > 0 && L->ngroups < (L->in + L->group_size - 1) / L->group_size))
        return cudak__fail(-EINVAL, "qmatmul: group size %d with %d groups for %d columns",
                           L->group_size, L->ngroups, L->in);
    if (T > 0 && L->out > 0 && (!y || (L->in > 0 && (!x || !L->w || !L->scale))))
        return cudak__fail(-EINVAL, "qmatmul: NULL pointer");
    return 0;
}

extern "C" int cudak_qmatmul(float *y, const float *x, int T, const struct cuda_qlin *L,
                             int accumulate)
{
    if (!cudak__ready())
        return cudak__not_ready();
    int rc = check_args(y, x, T, L);
    if (rc)
        return rc;
    int out = L->out, in = L->in;
    if (T == 0 || out == 0)
        return 0;
    if (in == 0)
        return cudak_empty_product(y, T, out, accumulate);
    return cudak_sgemm_rows(y, x, T, out, in, accumulate, QMM_SCRATCH_BYTES,
                            "qmm_dequant_kernel_v1", [&](float *dst, size_t r0, size_t m) {
                                size_t nel = m * (size_t)in;
                                qmm_dequant_kernel_v1<<<cudak_grid(nel, QMM_THREADS), QMM_THREADS,
                                                        0, cudak__stream()>>>(dst, *L, r0, m);
                            });
}
