/*
 * matmul: y = x . W^T for one linear layer (PyTorch nn.Linear layout, W row-major [out][in]),
 * activations in fp32, weights in any format a `struct linear` can hold.
 *
 * `struct linear` is the engine's handle on a weight matrix. Formats (enum linear_fmt):
 *   DENSE  BF16, F16 or F32 elements;
 *   INT    integer codes (int4 or int8 values), one int8 per weight, with BF16 scales per
 *          group of columns / output channel / tensor, optional signed zero points and an
 *          optional g_idx (act-order "group": the group of each input column);
 *   INT4   the same with codes in [-8, 7] packed two per byte (layout below): half the bytes;
 *   FP8    E4M3FN bytes with BF16 scales (per channel or tensor; groups work too).
 * The value of a quantized weight is exactly W = (q - zp) * scale computed in fp32 from the
 * BF16 scale (FP8: e4m3(q) * scale), the same as worker/engine/quant.c qweight_dequant. Every
 * format computes that product; the fast kernels only differ from the reference by fp32 summation
 * order (see docs/engine.md "Quantized linears").
 *
 * Variants (dispatch: matmul()):
 *   matmul_ref   plain triple loop with double accumulation, single thread: the spec;
 *   matmul_cpu   (default) T < MATMUL_GEMV_MAX_T: bandwidth-bound GEMV that streams each W row
 *                once, converting BF16/F16 or decoding codes in registers (quantized: a group
 *                is summed in fp32 on the raw codes minus the zero point, then scaled);
 *                otherwise the blocked 6x16 GEMM of kernels/gemm.h with W converted, or
 *                dequantized exactly, while packed. Threads over output columns.
 *                kernels/cpu/qmatmul_cpu.c holds the quantized half.
 *
 * Ownership: a linear borrows what it is given (w, scale, zp, g_idx) unless the pointer is also
 * `owned`; linear_release() frees only `owned`. A borrowed array must outlive the linear. The
 * engine's quantized linears borrow the arrays of the model's struct qweight, which the model
 * keeps for exactly the linear's lifetime (worker/engine/model.c model_linear_set_quant); INT4 owns
 * its packed copy of the codes.
 */
#ifndef EXAQ_MATMUL_H
#define EXAQ_MATMUL_H

#include "kernels/kern.h"

enum linear_fmt {
    LINEAR_FMT_DENSE = 0, /* w: [out][in] elements of `dtype` */
    LINEAR_FMT_INT = 1,   /* w: int8_t [out][in] codes; scale, zp, g_idx as below */
    LINEAR_FMT_INT4 = 2,  /* w: packed nibbles, linear_int4_row_bytes(in) per row (owned) */
    LINEAR_FMT_FP8 = 3,   /* w: uint8_t [out][in] E4M3FN bytes; scale (and g_idx) as below */
};

/*
 * LINEAR_FMT_INT4 layout: each row is cut into blocks of 16 columns, 8 bytes per block (a last
 * partial block still takes 8 bytes). Byte i of block b holds column 16b+i in its low nibble and
 * column 16b+8+i in its high nibble, each as the 4-bit two's complement of q (q & 15). Eight
 * bytes sign-extended to 32-bit lanes give columns 16b+8..16b+15 with an arithmetic `>> 4` and
 * 16b..16b+7 with `<< 28` then an arithmetic `>> 28`.
 */
static inline size_t linear_int4_row_bytes(int in)
{
    return (size_t)((in + 15) / 16) * 8;
}

/*
 * g_idx (act-order "group"): a column's group is g_idx[c], so groups are scattered over the row.
 * linear_init_quant then stores the codes in group order (an owned copy): stored position j
 * holds original column perm[j], group gpos[j] (non-decreasing), and group g occupies positions
 * gstart[g]..gstart[g+1]-1. The kernels gather x into that order once per call and run the
 * contiguous-group code; pinv maps an original column to its position (for the decoder).
 */

/* qflags: set by linear_init_quant. GENERIC: the fast kernels must take the exact per-element
 * path (a scale outside [2^-100, 2^100] (other than 0) or not finite, or an FP8 NaN code). */
#define LINEAR_QF_GENERIC 1u

struct linear {
    enum linear_fmt fmt;
    int out, in;
    enum kern_dtype dtype; /* DENSE: element type */
    const void *w;         /* row-major data of the format (see enum linear_fmt) */
    void *owned;           /* heap block freed by linear_release(), or NULL */
    /* Quantized formats only (zero for DENSE). */
    int bits;              /* INT/INT4: code width, 2..8 (INT4: <= 4); FP8: 8 */
    int group_size;        /* > 0: groups of columns; -1: per output channel; 0: per tensor */
    int ngroups;           /* columns of scale/zp: ceil(in / group_size), else 1 */
    const uint16_t *scale; /* BF16 bits [out][ngroups] ([1] per tensor); borrowed */
    const int8_t *zp;      /* zero points, the shape of scale, or NULL (symmetric); borrowed */
    const int32_t *g_idx;  /* [in] group of each input column in [0, ngroups), or NULL */
    /* With g_idx (inside `owned`, else NULL): see the comment above. */
    const int32_t *perm, *pinv, *gpos; /* [in] */
    const int32_t *gstart;             /* [ngroups + 1] */
    unsigned qflags;                   /* LINEAR_QF_* */
};

/* What linear_init_quant reads: the fields of a worker/engine/quant.h struct qweight (kernels/
 * does not include worker/ headers, so the model copies them in). Every array is borrowed. */
struct linear_qsrc {
    int out, in;
    int bits;              /* integer codes: 2..8; ignored for FP8 */
    const int8_t *q;       /* [out][in] integer codes in [-2^(bits-1), 2^(bits-1) - 1], or NULL */
    const uint8_t *fp8;    /* [out][in] E4M3FN bytes, or NULL (exactly one of q, fp8) */
    const uint16_t *scale; /* BF16 [out][ngroups], [1] when group_size == 0 */
    const int8_t *zp;      /* as scale, or NULL; integer codes only */
    int group_size;        /* > 0, -1 (channel) or 0 (tensor) */
    const int32_t *g_idx;  /* [in] or NULL; only with group_size > 0 */
};

/* A dense linear that borrows w (e.g. from an mmapped checkpoint). */
void linear_init_dense(struct linear *L, int out, int in, enum kern_dtype dt, const void *w);
/* A dense linear that takes ownership of w (malloc'ed; freed by linear_release). */
void linear_init_dense_take(struct linear *L, int out, int in, enum kern_dtype dt, void *w);
/*
 * A quantized linear of format fmt (INT, INT4 or FP8) over src. INT and FP8 borrow the codes
 * (without g_idx); INT4 packs them into an owned block (codes outside [-8, 7] are -ERANGE);
 * with g_idx every format keeps an owned copy in group order. Scales, zero points and g_idx
 * are always borrowed. Validates the description (shapes, group size, g_idx range; -EINVAL)
 * and computes qflags (an O(out * in) pass for FP8, INT4 and g_idx, O(scales) otherwise).
 * Returns 0, -EINVAL, -ERANGE or -ENOMEM; on error *L is zeroed.
 */
int linear_init_quant(struct linear *L, const struct linear_qsrc *src, enum linear_fmt fmt);
/* Frees owned memory; the struct is left zeroed. NULL and released structs are fine. */
void linear_release(struct linear *L);
/* Writes W as fp32 [out][in] into dst (quantized formats: the exact dequantization); 0, or
 * -ENOSYS for a format without a decoder. */
int linear_to_f32(const struct linear *L, float *dst);
/* Bytes of weight data the kernels stream per product (codes + scales + zero points). */
size_t linear_weight_bytes(const struct linear *L);

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

/* ---- internal to kernels/matmul*.c and kernels/qmatmul*.c (not for the engine) ----------------
 */

/* The context the GEMM packing callbacks receive. */
struct matmul__ctx {
    const float *x;
    const struct linear *L;
};
/* gemm_src.pack_a for A = x (matmul_cpu.c). */
void matmul__pack_a_x(const void *ctx, int i0, int mr, int k0, int kc, float *dst);
/* matmul_cpu for the quantized formats (qmatmul_cpu.c); L->fmt is INT, INT4 or FP8. */
void matmul__cpu_quant(float *y, const float *x, int T, const struct linear *L, int accumulate);
/* The 16-bit-activation GEMV of INT and INT4 (qgemv_cpu.c): 0 when it computed y, 1 when L or
 * this x does not fit it (the caller then runs the fp32 GEMV). */
int matmul__qgemv_i16(float *y, const float *x, int T, const struct linear *L, int accumulate);
/* Whether this build has the 16-bit GEMV (the kernels were compiled with AVX2). */
int matmul__qgemv_i16_built(void);
/* Whether L's format and group layout fit matmul__qgemv_i16 (x aside). */
int matmul__qgemv_i16_fits(const struct linear *L);
/* Exact fp32 weights of row n, original columns k0..k1-1, of a quantized linear (matmul_ref.c). */
void matmul__qrow_f32(const struct linear *L, int n, int k0, int k1, float *dst);
/* Index of row n, group g in scale[] / zp[]. */
static inline size_t matmul__sidx(const struct linear *L, int n, int g)
{
    return L->group_size == 0 ? 0 : (size_t)n * (size_t)L->ngroups + (size_t)g;
}

#endif
