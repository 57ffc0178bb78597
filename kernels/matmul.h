/*
 * matmul: y = x . W^T for one linear layer (PyTorch nn.Linear layout, W row-major [out][in]),
 * activations in fp32, weights in any format a `struct linear` can hold.
 *
 * `struct linear` is the engine's handle on a weight matrix. Today only LINEAR_FMT_DENSE exists
 * (BF16, F16 or F32 elements); packed integer and FP8 formats are added as new enum values plus
 * fields here and a case in matmul()'s format switch, without touching the callers.
 *
 * Variants (dispatch: matmul()):
 *   matmul_ref   plain triple loop with double accumulation, single thread: the spec;
 *   matmul_cpu   (default) T < MATMUL_GEMV_MAX_T: bandwidth-bound GEMV that streams each W row
 *                once, converting BF16/F16 in registers; otherwise the blocked 6x16 GEMM of
 *                kernels/gemm.h with W converted while packed. Threads over output columns.
 */
#ifndef EXAQ_MATMUL_H
#define EXAQ_MATMUL_H

#include "kernels/kern.h"

enum linear_fmt {
    LINEAR_FMT_DENSE = 0, /* w: [out][in] elements of `dtype` */
    /* NEEDSWORK: LINEAR_FMT_INT_GROUP (packed int4/int8 codes + scales), LINEAR_FMT_FP8. */
};

struct linear {
    enum linear_fmt fmt;
    int out, in;
    enum kern_dtype dtype; /* DENSE: element type */
    const void *w;         /* DENSE: row-major [out][in]; borrowed unless == owned */
    void *owned;           /* heap block freed by linear_release(), or NULL */
};

/* A dense linear that borrows w (e.g. from an mmapped checkpoint). */
void linear_init_dense(struct linear *L, int out, int in, enum kern_dtype dt, const void *w);
/* A dense linear that takes ownership of w (malloc'ed; freed by linear_release). */
void linear_init_dense_take(struct linear *L, int out, int in, enum kern_dtype dt, void *w);
/* Frees owned memory; the struct is left zeroed. NULL and released structs are fine. */
void linear_release(struct linear *L);
/* Writes W as fp32 [out][in] into dst; 0, or -ENOSYS for a format without a decoder. */
int linear_to_f32(const struct linear *L, float *dst);

/*
 * y[T][out] = x[T][in] . W^T, or y += ... when accumulate != 0. x and y must not overlap.
 * T == 0 is a no-op. Returns 0, -ENOSYS (impl or format not available) or -EINVAL.
 */
int matmul(enum kern_impl impl, float *y, const float *x, int T, const struct linear *L,
           int accumulate);
void matmul_ref(float *y, const float *x, int T, const struct linear *L, int accumulate);
void matmul_cpu(float *y, const float *x, int T, const struct linear *L, int accumulate);

/* At or above this many rows matmul_cpu uses the packed GEMM (measured on the dev machine; see
 * docs/engine.md). */
#define MATMUL_GEMV_MAX_T 4

#endif
