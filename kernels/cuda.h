/*
 * cuda: the C ABI of the optional CUDA backend, and the loader that finds it at run time.
 *
 * The kernels live in $(O)/lib/libexaq_cuda.so (built from the kernels/ .cu files by nvcc when it
 * exists). No binary links it: kernels/cuda_loader.c dlopens it on first use, so exaqd,
 * exaqctl, exaq-worker and the tests carry no CUDA symbol and run on machines without the CUDA
 * runtime. The library exports exactly one function, CUDA_ENTRY_SYMBOL, which returns a
 * `struct cuda_api`: a table of function pointers stamped with CUDA_ABI_VERSION and its size.
 * The loader refuses a table whose version or size differs from this header's. Bump
 * CUDA_ABI_VERSION whenever anything in struct cuda_api, cuda_device_info or cuda_attn changes.
 *
 * Two levels:
 *   - the table (device level): device pointers, stream-ordered on the backend's one stream,
 *     one calling thread at a time. This is what the device-resident engine will use;
 *   - cuda_host_<op>() (host level, below): host pointers in and out (allocate, upload, run,
 *     download, free), serialised by a mutex. The KERN_IMPL_CUDA case of each op's dispatch
 *     function calls these; they are meant for tests and tools, not for the forward pass
 *     (every call copies its operands over PCIe).
 * Every entry returns 0 or a negative errno-style code and never aborts: -ENODEV (no driver or
 * no device), -ENOMEM (device allocation), -EINVAL (arguments), -ENOSYS (not implemented, e.g.
 * head_dim > CUDA_ATTN_MAX_HEAD_DIM), -EIO (any other CUDA or cuBLAS failure). The message of
 * the last failure on the calling thread is cuda_last_error() (api->last_error()).
 *
 * Everything under `#ifdef __CUDACC__` at the end is private to the .cu files.
 */
#ifndef EXAQ_CUDA_H
#define EXAQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUDA_ABI_VERSION  3u
#define CUDA_ENTRY_SYMBOL "exaq_cuda_get_api"
#define CUDA_LIB_NAME     "libexaq_cuda.so"

/* The largest head_dim the attention kernel supports (128 threads x 4 dims each). */
#define CUDA_ATTN_MAX_HEAD_DIM 512

/* Weight element types of the matmul entries; the same values as enum kern_dtype. */
#define CUDA_DTYPE_F32  0
#define CUDA_DTYPE_BF16 1
#define CUDA_DTYPE_F16  2

/* Quantized weight formats of qmatmul; the same values as enum linear_fmt (kernels/matmul.h). */
#define CUDA_QFMT_INT  1
#define CUDA_QFMT_INT4 2
#define CUDA_QFMT_FP8  3

/* A quantized `struct linear` (kernels/matmul.h) with its arrays in device memory: same
 * meaning, same layouts. The weight is W[n][c] = (q - zp) * scale (FP8: e4m3(q) * scale) in
 * fp32 from the BF16 scale of row n, group g_idx[c] (or c / group_size; 0 per channel and per
 * tensor); the code of original column c sits at stored position pinv[c] (or c). */
struct cuda_qlin {
    int fmt;               /* CUDA_QFMT_* */
    int out, in, bits;     /* bits: INT 2..8, INT4 <= 4, FP8 8 */
    int group_size;        /* > 0, -1 (per output channel) or 0 (per tensor) */
    int ngroups;           /* columns of scale/zp */
    const void *w;         /* INT: int8 [out][in]; INT4: rows of linear_int4_row_bytes(in) bytes
                              of two's-complement nibbles; FP8: E4M3FN bytes [out][in] */
    const uint16_t *scale; /* BF16 [out][ngroups], [1] per tensor */
    const int8_t *zp;      /* the shape of scale, or NULL */
    const int32_t *g_idx;  /* [in] or NULL */
    const int32_t *pinv;   /* [in] or NULL */
};

struct cuda_device_info {
    char name[256]; /* cudaDeviceProp.name */
    int ordinal;    /* device index within CUDA_VISIBLE_DEVICES (always 0 today) */
    int cc_major, cc_minor;
    int sm_count;
    int kernel_arch;              /* the sm_XY the driver picked from the fat binary (e.g. 90) */
    uint64_t mem_total, mem_free; /* bytes */
    int driver_version, runtime_version, cublas_version; /* e.g. 13000 */
};

/* struct attn_args (kernels/attention.h) with device pointers: same shapes, same meaning. */
struct cuda_attn {
    int T, n_heads, n_kv_heads, head_dim;
    const float *q;     /* [T][n_heads][head_dim] */
    const float *k, *v; /* [n_kv_heads][kv_cap][head_dim] */
    int kv_cap, q_off, window;
    float scale;
    float *out; /* [T][n_heads][head_dim] */
};

/*
 * The table. Every pointer is set. Device pointers come from mem_alloc. Operations are issued on
 * the backend's stream in call order; copy_d2h and sync wait for it, so an error raised by a
 * kernel shows up at the latest there. Not thread-safe: one calling thread at a time.
 */
struct cuda_api {
    uint32_t abi_version; /* CUDA_ABI_VERSION */
    uint32_t size;        /* sizeof(struct cuda_api) */
    const char *build;    /* a line naming the CUDA version and architectures compiled */

    /* The message of the last failure on the calling thread ("" if none); borrowed. */
    const char *(*last_error)(void);
    /* Selects device 0, checks that a kernel image fits it, creates the stream and the cuBLAS
     * handle. Idempotent. -ENODEV with "no driver: ..." / "no device: ..." messages. */
    int (*init)(void);
    int (*device_info)(struct cuda_device_info *info);
    /* Frees the scratch, the cuBLAS handle and the stream (init may be called again). */
    int (*shutdown)(void);

    /* Memory. mem_free(NULL) is fine. copy_* move bytes and wait for the stream. */
    int (*mem_alloc)(void **dptr, size_t bytes);
    int (*mem_free)(void *dptr);
    int (*copy_h2d)(void *dst, const void *src, size_t bytes);
    int (*copy_d2h)(void *dst, const void *src, size_t bytes);
    int (*mem_set)(void *dptr, int byte, size_t bytes);
    int (*sync)(void);

    /* Ops on device pointers: the semantics of the CPU op of the same name (kernels/<op>.h). */
    int (*rmsnorm)(float *y, const float *x, const float *w, int rows, int n, float eps);
    int (*rope)(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
                int cs_bf16);
    int (*swiglu)(float *h, const float *g, const float *u, size_t n);
    int (*lse)(float *out, const float *x, int rows, int n);
    int (*attention)(const struct cuda_attn *a);
    /* y[T][out] (+)= x[T][in] . W^T, W [out][in] of CUDA_DTYPE_*: W is widened to fp32 on the
     * device and multiplied in fp32 (the CPU semantics). */
    int (*matmul)(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                  int accumulate);
    /* The same with x rounded to bf16 (RNE) and a BF16 x BF16 -> fp32 tensor-core GEMM with
     * fp32 accumulation; dtype must be CUDA_DTYPE_BF16 (else -ENOSYS). Not used by matmul(). */
    int (*matmul_bf16)(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                       int accumulate);
    /* H = beta * H + alpha * X^T X, X [T][n]; the full symmetric matrix is written (the upper
     * triangle is computed, then mirrored, as syrk_cpu does); beta == 0 does not read H. */
    int (*syrk)(float *H, const float *X, int T, int n, float alpha, float beta);
    /* y[T][out] (+)= x[T][in] . W^T for a quantized weight: W is dequantized exactly to fp32 on
     * the device (a chunk of rows at a time) and multiplied in fp32, the CPU semantics. */
    int (*qmatmul)(float *y, const float *x, int T, const struct cuda_qlin *w, int accumulate);
    /* y[i] += x[i] for i < n (fp32, IEEE): the residual update. */
    int (*add)(float *y, const float *x, size_t n);
};

/* The one symbol the library exports. */
typedef const struct cuda_api *(*cuda_get_api_fn)(void);
const struct cuda_api *exaq_cuda_get_api(void);

/* ---- loader (kernels/cuda_loader.c; C only, never inside the library) ------------------- */

struct attn_args;
struct linear;

/*
 * Loads and initialises the backend on first call (thread-safe, once per process) and returns
 * the table, or NULL when it is unavailable; then *why (if why != NULL) is a borrowed, static
 * reason such as "no library: ...", "no driver: ...", "no device: ...". The library is looked
 * up as $EXAQ_CUDA_LIB when set (only there; "off" disables the backend), else as
 * <exe dir>/../lib/libexaq_cuda.so, <exe dir>/../../lib/libexaq_cuda.so (test binaries in
 * $(O)/tests/<dir>/), then libexaq_cuda.so on the dynamic linker's path.
 */
const struct cuda_api *cuda_api_get(const char **why);
/* Device 0's description; 0, or -ENOSYS with *why set as above. */
int cuda_device_get_info(struct cuda_device_info *info, const char **why);
/* The last backend failure on this thread ("" if none, or the unavailable reason). */
const char *cuda_last_error(void);

/* Host-pointer versions of the ops: the KERN_IMPL_CUDA cases of the dispatch functions. The
 * arguments are the dispatch function's (already validated by it). -ENOSYS when the backend is
 * unavailable. */
int cuda_host_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps);
int cuda_host_rope(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
                   int cs_bf16);
int cuda_host_swiglu(float *h, const float *g, const float *u, size_t n);
int cuda_host_lse(float *out, const float *x, int rows, int n);
int cuda_host_attention(const struct attn_args *a);
int cuda_host_matmul(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                     int accumulate);
int cuda_host_syrk(float *H, const float *X, int T, int n, float alpha, float beta);
/* A quantized linear (LINEAR_FMT_INT, INT4 or FP8): its codes, scales, zero points and column
 * maps are uploaded with x. */
int cuda_host_qmatmul(float *y, const float *x, int T, const struct linear *L, int accumulate);

/*
 * Test support: a device buffer of n floats with CUDA_GUARD_FLOATS sentinel floats
 * (CUDA_GUARD_VALUE) on each side, the payload initialised from `init` or to NaN. gbuf_check
 * downloads the whole block and returns -EFAULT (message in cuda_last_error) when a sentinel
 * changed. gbuf_free accepts a zeroed or freed struct.
 */
#define CUDA_GUARD_FLOATS 64
#define CUDA_GUARD_VALUE  1234567.875f
struct cuda_gbuf {
    float *base; /* device block: guard, payload, guard */
    float *d;    /* device payload */
    size_t n;
};
int cuda_gbuf_new(struct cuda_gbuf *b, size_t n, const float *init);
int cuda_gbuf_get(const struct cuda_gbuf *b, float *dst);
int cuda_gbuf_check(const struct cuda_gbuf *b, const char *what);
void cuda_gbuf_free(struct cuda_gbuf *b);

#ifdef __cplusplus
}
#endif

/* ---- private to the .cu files --------------------------------------------------------------- */
#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_runtime.h>

/* The backend state shared by the .cu files (cuda_common.cu). */
cudaStream_t cudak__stream(void);
cublasHandle_t cudak__cublas(void);
/* Sets *p to a device scratch block of at least `bytes` (grow-only, freed by shutdown; the next
 * call may replace it). 0 or the failure. */
int cudak__scratch(size_t bytes, void **p);
/* Scratch for a chunk of rows: *rows = min(nrows, max(1, cap / row_bytes)) rows of row_bytes
 * each (nrows >= 1), then cudak__scratch of that size. */
int cudak__scratch_rows(size_t row_bytes, size_t nrows, size_t cap, size_t *rows, void **p);
/* Whether init succeeded; the ops return cudak__not_ready() otherwise. */
int cudak__ready(void);
int cudak__not_ready(void);
/* Record a failure and return its negative code. */
int cudak__fail_cuda(const char *file, int line, const char *call, cudaError_t e);
int cudak__fail_cublas(const char *file, int line, const char *call, cublasStatus_t s);
int cudak__fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Checks the launch just issued (cudaGetLastError): 0 or the failure. */
int cudak__launched(const char *file, int line, const char *kernel);

#define CUDAK_CHECK(call)                                                                          \
    do {                                                                                           \
        cudaError_t cudak_e_ = (call);                                                             \
        if (cudak_e_ != cudaSuccess)                                                               \
            return cudak__fail_cuda(__FILE__, __LINE__, #call, cudak_e_);                          \
    } while (0)
#define CUBLASK_CHECK(call)                                                                        \
    do {                                                                                           \
        cublasStatus_t cudak_s_ = (call);                                                          \
        if (cudak_s_ != CUBLAS_STATUS_SUCCESS)                                                     \
            return cudak__fail_cublas(__FILE__, __LINE__, #call, cudak_s_);                        \
    } while (0)
#define CUDAK_LAUNCHED(name)                                                                       \
    do {                                                                                           \
        int cudak_rc_ = cudak__launched(__FILE__, __LINE__, name);                                 \
        if (cudak_rc_)                                                                             \
            return cudak_rc_;                                                                      \
    } while (0)

/* y = 0 for an empty product (in == 0), or y unchanged when accumulating. */
static inline int cudak_empty_product(float *y, int T, int out, int accumulate)
{
    if (!accumulate)
        CUDAK_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * (size_t)T * out, cudak__stream()));
    return 0;
}

/* y[T][out] (+)= x[T][in] . W^T in fp32 (CUBLAS_DEFAULT_MATH: no TF32), W produced a chunk of
 * rows at a time into fp32 scratch of at most cap bytes: fill(dst, r0, m) launches the kernel
 * named `kernel` that writes rows r0..r0+m-1 of W to dst; each chunk is then one Sgemm into its
 * rows of y (cuBLAS is column-major: op(A) = W^T read as [in x m], ldc = out). */
template <typename Fill>
static int cudak_sgemm_rows(float *y, const float *x, int T, int out, int in, int accumulate,
                            size_t cap, const char *kernel, Fill fill)
{
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    size_t rows;
    void *scratch;
    int rc = cudak__scratch_rows(sizeof(float) * (size_t)in, (size_t)out, cap, &rows, &scratch);
    if (rc)
        return rc;
    float *wf = (float *)scratch;
    for (size_t r0 = 0; r0 < (size_t)out; r0 += rows) {
        size_t m = (size_t)out - r0 < rows ? (size_t)out - r0 : rows;
        fill(wf, r0, m);
        CUDAK_LAUNCHED(kernel);
        CUBLASK_CHECK(cublasSgemm(cudak__cublas(), CUBLAS_OP_T, CUBLAS_OP_N, (int)m, T, in, &one,
                                  wf, in, x, in, &beta, y + r0, out));
    }
    return 0;
}

/* Block-wide helpers (blockDim.x a multiple of 32, at most 1024). `sh` holds 32 values. */
static __device__ __forceinline__ float cudak_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ double cudak_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block, returned to every thread. Contains __syncthreads(): call it from every
 * thread of the block. */
static __device__ __forceinline__ float cudak_block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cudak_warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return cudak_warp_sum(v);
}

static __device__ __forceinline__ double cudak_block_sum_d(double v, double *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cudak_warp_sum_d(v);
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    return cudak_warp_sum_d(v);
}

/* fp32 -> bf16 bits, round to nearest even, NaN stays a quiet NaN (kern_f32_to_bf16). */
static __device__ __forceinline__ unsigned short cudak_f32_to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static __device__ __forceinline__ float cudak_bf16_to_f32(unsigned short h)
{
    return __uint_as_float((unsigned int)h << 16);
}

/* Grid size for n elements at `threads` per block, capped (grid-stride loops cover the rest). */
static inline unsigned int cudak_grid(size_t n, int threads)
{
    size_t g = (n + (size_t)threads - 1) / (size_t)threads;
    if (g < 1)
        g = 1;
    return (unsigned int)(g > 65535u * 16u ? 65535u * 16u : g);
}

/* The per-op device entries (one .cu each), collected into the table by cuda_common.cu. */
extern "C" {
int cudak_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps);
int cudak_rope(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
               int cs_bf16);
int cudak_swiglu(float *h, const float *g, const float *u, size_t n);
int cudak_lse(float *out, const float *x, int rows, int n);
int cudak_attention(const struct cuda_attn *a);
int cudak_matmul(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                 int accumulate);
int cudak_matmul_bf16(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                      int accumulate);
int cudak_syrk(float *H, const float *X, int T, int n, float alpha, float beta);
int cudak_qmatmul(float *y, const float *x, int T, const struct cuda_qlin *w, int accumulate);
int cudak_add(float *y, const float *x, size_t n);
}
#endif /* __CUDACC__ */

#endif
