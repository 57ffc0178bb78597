/*
 * cuda_common: the backend's shared state and the ABI table (see kernels/cuda.h): device
 * selection and information, the one stream and cuBLAS handle, device memory, the grow-only
 * scratch block, and turning CUDA/cuBLAS failures into negative codes plus a message.
 *
 * Nothing in the library aborts or prints: every CUDA and cuBLAS call is checked, and a failure
 * returns -ENODEV/-ENOMEM/-EINVAL/-EIO with its text kept per thread for last_error(). The
 * caller (the worker) decides what a failure costs. A sticky error (an illegal address in a
 * kernel) leaves the context unusable; every later call then fails with the same message.
 *
 * Run on an H100 (sm_90) by every GPU test, also under compute-sanitizer (docs/cuda.md); the
 * no-driver path of init() runs on every machine without a driver.
 */
#include "kernels/cuda.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#ifndef EXAQ_CUDA_ARCHS
#define EXAQ_CUDA_ARCHS "unknown"
#endif
#define CUDAK_STR2(x) #x
#define CUDAK_STR(x)  CUDAK_STR2(x)

static struct {
    int ready;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *scratch;
    size_t scratch_bytes;
    int kernel_arch;
} g;

static thread_local char g_err[512];

/* ---- errors ---------------------------------------------------------------------------- */

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int cudak__fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof(g_err), fmt, ap);
    va_end(ap);
    return code;
}

static int cuda_code(cudaError_t e)
{
    switch (e) {
    case cudaErrorMemoryAllocation:
        return -ENOMEM;
    case cudaErrorInvalidValue:
        return -EINVAL;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
        return -ENODEV;
    default:
        return -EIO;
    }
}

int cudak__fail_cuda(const char *file, int line, const char *call, cudaError_t e)
{
    return cudak__fail(cuda_code(e), "%s failed: %s (%s) at %s:%d", call, cudaGetErrorString(e),
                       cudaGetErrorName(e), base_name(file), line);
}

static const char *cublas_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
        return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
        return "unknown cuBLAS status";
    }
}

int cudak__fail_cublas(const char *file, int line, const char *call, cublasStatus_t s)
{
    int code = s == CUBLAS_STATUS_ALLOC_FAILED    ? -ENOMEM
               : s == CUBLAS_STATUS_INVALID_VALUE ? -EINVAL
               : s == CUBLAS_STATUS_NOT_SUPPORTED ? -ENOSYS
                                                  : -EIO;
    return cudak__fail(code, "%s failed: %s (%d) at %s:%d", call, cublas_name(s), (int)s,
                       base_name(file), line);
}

int cudak__launched(const char *file, int line, const char *kernel)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        return 0;
    return cudak__fail(cuda_code(e), "launch of %s failed: %s (%s) at %s:%d", kernel,
                       cudaGetErrorString(e), cudaGetErrorName(e), base_name(file), line);
}

int cudak__ready(void)
{
    return g.ready;
}

int cudak__not_ready(void)
{
    return cudak__fail(-ENODEV, "the cuda backend is not initialised (call init first)");
}

cudaStream_t cudak__stream(void)
{
    return g.stream;
}

cublasHandle_t cudak__cublas(void)
{
    return g.cublas;
}

int cudak__scratch_rows(size_t row_bytes, size_t nrows, size_t cap, size_t *rows, void **p)
{
    size_t r = cap / row_bytes;
    if (r < 1)
        r = 1;
    if (r > nrows)
        r = nrows;
    *rows = r;
    return cudak__scratch(r * row_bytes, p);
}

int cudak__scratch(size_t bytes, void **p)
{
    *p = NULL;
    if (bytes <= g.scratch_bytes) {
        *p = g.scratch;
        return 0;
    }
    /* The old block may still be in use by queued work: wait before freeing it. */
    CUDAK_CHECK(cudaStreamSynchronize(g.stream));
    if (g.scratch) {
        cudaError_t e = cudaFree(g.scratch);
        g.scratch = NULL;
        g.scratch_bytes = 0;
        if (e != cudaSuccess)
            return cudak__fail_cuda(__FILE__, __LINE__, "cudaFree(scratch)", e);
    }
    cudaError_t e = cudaMalloc(&g.scratch, bytes);
    if (e != cudaSuccess) {
        g.scratch = NULL;
        return cudak__fail(cuda_code(e), "cannot allocate %zu bytes of device scratch: %s (%s)",
                           bytes, cudaGetErrorString(e), cudaGetErrorName(e));
    }
    g.scratch_bytes = bytes;
    *p = g.scratch;
    return 0;
}

/* ---- init and device information ---------------------------------------------------- */

/* A kernel whose attributes tell whether the fat binary has an image for this device. */
__global__ void cudak_probe_kernel(int *p)
{
    if (p)
        *p = 1;
}

static int api_shutdown(void);

static int api_init(void)
{
    if (g.ready)
        return 0;
    g_err[0] = 0;
    int drv = 0, rt = 0, count = 0;
    cudaDriverGetVersion(&drv); /* 0 when libcuda.so.1 cannot be loaded */
    cudaRuntimeGetVersion(&rt);
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorInsufficientDriver) {
        if (drv == 0)
            return cudak__fail(-ENODEV, "no driver: libcuda.so.1 cannot be loaded (is the NVIDIA "
                                        "driver installed?)");
        return cudak__fail(-ENODEV,
                           "no driver: the installed driver supports CUDA %d.%d, the library "
                           "needs %d.%d",
                           drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0))
        return cudak__fail(-ENODEV, "no device: the driver sees no CUDA device (check "
                                    "CUDA_VISIBLE_DEVICES)");
    if (e != cudaSuccess)
        return cudak__fail(-ENODEV, "no device: cudaGetDeviceCount failed: %s (%s)",
                           cudaGetErrorString(e), cudaGetErrorName(e));
    e = cudaSetDevice(0);
    if (e != cudaSuccess)
        return cudak__fail(-ENODEV, "no device: cudaSetDevice(0) failed: %s (%s)",
                           cudaGetErrorString(e), cudaGetErrorName(e));
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, cudak_probe_kernel);
    if (e != cudaSuccess) {
        cudaDeviceProp p;
        int ok = cudaGetDeviceProperties(&p, 0) == cudaSuccess;
        return cudak__fail(-ENODEV,
                           "no device: '%s' (compute capability %d.%d) cannot run this "
                           "library (built for " EXAQ_CUDA_ARCHS "): %s (%s)",
                           ok ? p.name : "device 0", ok ? p.major : 0, ok ? p.minor : 0,
                           cudaGetErrorString(e), cudaGetErrorName(e));
    }
    g.kernel_arch = fa.binaryVersion;
    e = cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        g.stream = NULL;
        return cudak__fail_cuda(__FILE__, __LINE__, "cudaStreamCreateWithFlags", e);
    }
    cublasStatus_t s = cublasCreate(&g.cublas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        g.cublas = NULL;
        int rc = cudak__fail_cublas(__FILE__, __LINE__, "cublasCreate", s);
        cudaStreamDestroy(g.stream);
        g.stream = NULL;
        return rc;
    }
    /* CUBLAS_DEFAULT_MATH: fp32 GEMMs stay fp32 (no TF32). */
    s = cublasSetStream(g.cublas, g.stream);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetMathMode(g.cublas, CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS) {
        int rc = cudak__fail_cublas(__FILE__, __LINE__, "cublasSetStream/SetMathMode", s);
        g.ready = 1; /* so that shutdown releases what exists */
        api_shutdown();
        return rc;
    }
    g.ready = 1;
    return 0;
}

static int api_shutdown(void)
{
    int rc = 0;
    if (!g.ready)
        return 0;
    if (g.stream) {
        cudaError_t e = cudaStreamSynchronize(g.stream);
        if (e != cudaSuccess && rc == 0)
            rc = cudak__fail_cuda(__FILE__, __LINE__, "cudaStreamSynchronize", e);
    }
    if (g.scratch) {
        cudaError_t e = cudaFree(g.scratch);
        if (e != cudaSuccess && rc == 0)
            rc = cudak__fail_cuda(__FILE__, __LINE__, "cudaFree(scratch)", e);
        g.scratch = NULL;
        g.scratch_bytes = 0;
    }
    if (g.cublas) {
        cublasStatus_t s = cublasDestroy(g.cublas);
        if (s != CUBLAS_STATUS_SUCCESS && rc == 0)
            rc = cudak__fail_cublas(__FILE__, __LINE__, "cublasDestroy", s);
        g.cublas = NULL;
    }
    if (g.stream) {
        cudaError_t e = cudaStreamDestroy(g.stream);
        if (e != cudaSuccess && rc == 0)
            rc = cudak__fail_cuda(__FILE__, __LINE__, "cudaStreamDestroy", e);
        g.stream = NULL;
    }
    g.ready = 0;
    return rc;
}

static int api_device_info(struct cuda_device_info *info)
{
    if (!info)
        return cudak__fail(-EINVAL, "device_info: info is NULL");
    if (!g.ready)
        return cudak__not_ready();
    memset(info, 0, sizeof(*info));
    cudaDeviceProp p;
    CUDAK_CHECK(cudaGetDeviceProperties(&p, 0));
    size_t fr = 0, tot = 0;
    CUDAK_CHECK(cudaMemGetInfo(&fr, &tot));
    snprintf(info->name, sizeof(info->name), "%s", p.name);
    info->ordinal = 0;
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->sm_count = p.multiProcessorCount;
    info->kernel_arch = g.kernel_arch;
    info->mem_total = tot;
    info->mem_free = fr;
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    int v = 0;
    if (cublasGetVersion(g.cublas, &v) == CUBLAS_STATUS_SUCCESS)
        info->cublas_version = v;
    return 0;
}

/* ---- memory -------------------------------------------------------------------------- */

static int api_mem_alloc(void **dptr, size_t bytes)
{
    if (!dptr)
        return cudak__fail(-EINVAL, "mem_alloc: dptr is NULL");
    *dptr = NULL;
    if (!g.ready)
        return cudak__not_ready();
    if (bytes == 0)
        return 0;
    cudaError_t e = cudaMalloc(dptr, bytes);
    if (e != cudaSuccess) {
        *dptr = NULL;
        return cudak__fail(cuda_code(e), "cannot allocate %zu bytes on the device: %s (%s)", bytes,
                           cudaGetErrorString(e), cudaGetErrorName(e));
    }
    return 0;
}

static int api_mem_free(void *dptr)
{
    if (!dptr)
        return 0;
    CUDAK_CHECK(cudaFree(dptr));
    return 0;
}

static int api_copy_h2d(void *dst, const void *src, size_t bytes)
{
    if (!g.ready)
        return cudak__not_ready();
    if (bytes == 0)
        return 0;
    if (!dst || !src)
        return cudak__fail(-EINVAL, "copy_h2d: NULL pointer for %zu bytes", bytes);
    CUDAK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g.stream));
    CUDAK_CHECK(cudaStreamSynchronize(g.stream));
    return 0;
}

static int api_copy_d2h(void *dst, const void *src, size_t bytes)
{
    if (!g.ready)
        return cudak__not_ready();
    if (bytes == 0)
        return 0;
    if (!dst || !src)
        return cudak__fail(-EINVAL, "copy_d2h: NULL pointer for %zu bytes", bytes);
    CUDAK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g.stream));
    CUDAK_CHECK(cudaStreamSynchronize(g.stream));
    return 0;
}

static int api_mem_set(void *dptr, int byte, size_t bytes)
{
    if (!g.ready)
        return cudak__not_ready();
    if (bytes == 0)
        return 0;
    if (!dptr)
        return cudak__fail(-EINVAL, "mem_set: NULL pointer for %zu bytes", bytes);
    CUDAK_CHECK(cudaMemsetAsync(dptr, byte, bytes, g.stream));
    return 0;
}

static int api_sync(void)
{
    if (!g.ready)
        return cudak__not_ready();
    CUDAK_CHECK(cudaStreamSynchronize(g.stream));
    return 0;
}

static const char *api_last_error(void)
{
    return g_err;
}

/* ---- the table ----------------------------------------------------------------------- */

static struct cuda_api make_api(void)
{
    struct cuda_api a;
    memset(&a, 0, sizeof(a));
    a.abi_version = CUDA_ABI_VERSION;
    a.size = (uint32_t)sizeof(struct cuda_api);
    a.build = "exaq cuda backend, CUDA " CUDAK_STR(__CUDACC_VER_MAJOR__) "." CUDAK_STR(
        __CUDACC_VER_MINOR__) ", kernels for " EXAQ_CUDA_ARCHS;
    a.last_error = api_last_error;
    a.init = api_init;
    a.device_info = api_device_info;
    a.shutdown = api_shutdown;
    a.mem_alloc = api_mem_alloc;
    a.mem_free = api_mem_free;
    a.copy_h2d = api_copy_h2d;
    a.copy_d2h = api_copy_d2h;
    a.mem_set = api_mem_set;
    a.sync = api_sync;
    a.rmsnorm = cudak_rmsnorm;
    a.rope = cudak_rope;
    a.swiglu = cudak_swiglu;
    a.lse = cudak_lse;
    a.attention = cudak_attention;
    a.matmul = cudak_matmul;
    a.matmul_bf16 = cudak_matmul_bf16;
    a.syrk = cudak_syrk;
    a.qmatmul = cudak_qmatmul;
    a.add = cudak_add;
    return a;
}

extern "C" __attribute__((visibility("default"))) const struct cuda_api *exaq_cuda_get_api(void)
{
    static const struct cuda_api api = make_api(); /* thread-safe static initialisation */
    return &api;
}
