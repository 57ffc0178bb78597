/*
 * check_gpu: what every tests/kernels/test_*_gpu.c shares: the backend table, the call checks,
 * the guarded device buffers' release, and the start that skips (exit 77) without a usable
 * CUDA backend. Include after check.h.
 */
#ifndef EXAQ_TESTS_CHECK_GPU_H
#define EXAQ_TESTS_CHECK_GPU_H

#include <stdio.h>

#include "kernels/cuda.h"

static const struct cuda_api *A;

/* A device-table call that must succeed; prints the backend's message otherwise. */
#define GPU_OK(call)                                                                               \
    do {                                                                                           \
        int gpu_rc_ = (call);                                                                      \
        if (gpu_rc_) {                                                                             \
            printf("%s: %d: %s\n", #call, gpu_rc_, A->last_error());                               \
            fail();                                                                                \
        }                                                                                          \
    } while (0)
/* A loader call (kernels/cuda_loader.c) that must succeed. */
#define LDR_OK(call)                                                                               \
    do {                                                                                           \
        int gpu_rc_ = (call);                                                                      \
        if (gpu_rc_) {                                                                             \
            printf("%s: %d: %s\n", #call, gpu_rc_, cuda_last_error());                             \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* Checks the sentinels of every allocated buffer, then frees them all. */
static inline int gbufs_done(const char *what, struct cuda_gbuf **b, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (b[i]->base && cuda_gbuf_check(b[i], what) != 0) {
            printf("%s\n", cuda_last_error());
            rc = -1;
        }
    for (int i = 0; i < n; i++)
        cuda_gbuf_free(b[i]);
    return rc;
}

/* Loads the backend into A and prints the build and the device. Returns -1, having printed
 * the SKIP line, when there is no usable backend: main then returns 77. */
static inline int check_gpu_open(void)
{
    const char *why = NULL;
    struct cuda_device_info info;
    A = cuda_api_get(&why);
    if (!A) {
        printf("SKIP: no CUDA device (%s)\n", why);
        return -1;
    }
    printf("# %s\n", A->build);
    if (A->device_info(&info) == 0)
        printf("# %s, sm_%d%d (kernels sm_%d), %llu MiB\n", info.name, info.cc_major, info.cc_minor,
               info.kernel_arch, (unsigned long long)(info.mem_total >> 20));
    return 0;
}

/* Releases the backend's device state (stream, cuBLAS handle, scratch) so that
 * `compute-sanitizer --leak-check full` sees only what a test forgot to free. Returns the tests'
 * status, or 1 when the shutdown itself fails. */
static inline int check_gpu_close(int rc)
{
    if (A && A->shutdown() != 0) {
        printf("shutdown: %s\n", A->last_error());
        return 1;
    }
    return rc;
}

#endif
