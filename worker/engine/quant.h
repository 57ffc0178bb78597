/*
 * quant: quantized weights, the quantization grids and their conversions.
 *
 * A `struct qweight` is one quantized Linear as the compressed-tensors formats store it
 * (the exaone4-and-formats spec, section 3): integer codes (or FP8 E4M3 bytes), BF16
 * scales per tensor / output channel / group, optional signed zero points, optional g_idx, and
 * for W8A8/FP8 the activation scheme. It is the hand-off between the algorithms (RTN, GPTQ,
 * AWQ, SparseGPT: they produce codes and scales), the checkpoint writer/reader
 * (worker/engine/ctensors.c) and the engine (which dequantizes or runs it).
 *
 * Dequantization is exact by construction: w = (q - zp) * scale computed in fp32 from the BF16
 * scale, so what the writer stores is exactly what the algorithm chose (round the scale to BF16
 * first, then pick the codes with the rounded scale). Rounding is half to even everywhere.
 */
#ifndef EXAQ_QUANT_H
#define EXAQ_QUANT_H

#include <stdbool.h>
#include <stdint.h>

enum qscheme {
    QSCHEME_W4A16 = 0,   /* int4 symmetric, group or channel; pack-quantized */
    QSCHEME_W4A16_ASYM,  /* int4 with int8 zero points; pack-quantized */
    QSCHEME_W8A16,       /* int8 symmetric per channel; pack-quantized */
    QSCHEME_W8A8,        /* int8 per channel weights + dynamic per-token int8 activations */
    QSCHEME_FP8_DYNAMIC, /* E4M3 per channel + dynamic per-token E4M3 activations */
    QSCHEME_FP8,         /* E4M3 per tensor + static per-tensor input_scale */
    QSCHEME_W8A16_ASYM,  /* int8 with int8 zero points, group or channel; pack-quantized */
    QSCHEME__COUNT
};

/* "W4A16" ... "FP8"; parse returns -1 for an unknown name. */
const char *qscheme_name(enum qscheme s);
int qscheme_parse(const char *name, enum qscheme *out);
/* Code bits of a scheme (4 or 8), and whether its integer grid is symmetric (no zero points). */
int qscheme_bits(enum qscheme s);
bool qscheme_symmetric(enum qscheme s);

enum qact {
    QACT_NONE = 0,   /* weight-only */
    QACT_INT8_TOKEN, /* dynamic per-token int8, symmetric */
    QACT_FP8_TOKEN,  /* dynamic per-token E4M3 */
    QACT_FP8_STATIC, /* static per-tensor E4M3 with input_scale */
};

/* Symmetric scale convention for integer grids. */
enum qgrid {
    QGRID_ABSMAX_QMAX = 0, /* scale = absmax / (2^(b-1) - 1): /7, /127 (the tiny-a reference) */
    QGRID_ABSMAX_HALF, /* scale = absmax / ((qmax - qmin) / 2): /7.5, /127.5 (compressed-tensors) */
};

struct qweight {
    enum qscheme scheme;
    int bits; /* 4 or 8 */
    int out, in;
    int group_size; /* > 0: groups of columns; -1: per output channel; 0: per tensor */
    int ngroups;    /* columns of scale/zp: ceil(in / group_size), 1 for channel and tensor */
    bool symmetric;
    bool is_fp8;     /* codes are E4M3 bytes in fp8[], not integers in q[] */
    int8_t *q;       /* [out][in] integer codes in [-2^(b-1), 2^(b-1)-1], or NULL when is_fp8 */
    uint8_t *fp8;    /* [out][in] E4M3FN bit patterns, or NULL */
    uint16_t *scale; /* [out][ngroups] BF16 bits ([1] for per tensor) */
    int8_t *zp;      /* [out][ngroups] zero points (asymmetric only), else NULL */
    int32_t *g_idx;  /* [in] group of each input column (actorder "group" only), else NULL */
    enum qact act;
    float input_scale; /* QACT_FP8_STATIC: activation scale (BF16-representable) */
};

/* Allocates the arrays for the given shape and scheme (codes zeroed). 0 or -ENOMEM/-EINVAL. */
int qweight_init(struct qweight *w, enum qscheme s, int out, int in, int group_size);
/* (Added) Group sizes each scheme accepts: W4A16, W4A16_ASYM, W8A16, W8A16_ASYM: > 0 or -1; W8A8:
 * -1 or 0; FP8_DYNAMIC: -1 or 0, stored as -1 (channel); FP8: -1 or 0, stored as 0 (tensor). The
 * activation scheme (act) follows from the scheme; input_scale starts at 0 (unset). */
void qweight_release(struct qweight *w);

/* The group of input column c (g_idx when present, else c / group_size). */
int qweight_group_of(const struct qweight *w, int c);
/* Dequantizes to fp32 [out][in]: (q - zp) * scale, or fp8 * scale. Exact. */
void qweight_dequant(const struct qweight *w, float *dst);

/*
 * Round-to-nearest quantization of fp32 W [out][in] into w (already initialised for the
 * scheme): per group min-max (symmetric: absmax with grid g; asymmetric: compressed-tensors
 * min/max including 0 with a signed zero point; FP8: absmax/448). Scales are rounded to BF16
 * before the codes are chosen. A zero range uses a tiny positive scale (the dtype eps).
 */
void quant_rtn(struct qweight *w, const float *W, enum qgrid g);
/* (Added) The zero-range scale is fp32 eps 2^-23 (compressed-tensors clamps every scale to
 * torch.finfo(float32).eps); the FP8 scale is absmax/448 BF16-rounded and the codes are
 * fp8(w / scale) computed in fp32. quant_rtn frees any g_idx (RTN groups are contiguous). */

/* The scale for one group given its range, BF16-rounded (bits); and one code. Used by GPTQ. */
uint16_t quant_scale_sym(float absmax, int bits, enum qgrid g);
void quant_scale_asym(float xmin, float xmax, int bits, uint16_t *scale, int8_t *zp);
int quant_code(float x, float scale, int zp, int bits); /* clamp then round half to even */
/* The scale and zero point of one range [mn, mx] on w's grid: symmetric (zero point 0) or
 * asymmetric, by w->symmetric. Used by GPTQ and SparseGPT. */
void qweight_fit_range(const struct qweight *w, enum qgrid g, float mn, float mx, uint16_t *scale,
                       int8_t *zp);
/* The scale and zero point of one group of n values v with a range search: the range
 * [min(0, min v), max(0, max v)] shrunk by 0, 1, ..., tries - 1 %, keeping the shrink with the
 * least squared rounding error of v (the first on ties; tries <= 1: min-max alone). Returns that
 * error. Used by GPTQ's static groups (gptq_opts.scale_search). */
double qweight_fit_search(const struct qweight *w, enum qgrid g, const float *v, int n, int tries,
                          uint16_t *scale, int8_t *zp);
/* Per-channel (per_channel) or per-tensor scales and zero points of w fitted on W [r][c]: each
 * range is [min(0, min W), max(0, max W)] over the row or the whole tensor. */
void qweight_fit_rows(struct qweight *w, enum qgrid g, const float *W, int r, int c,
                      bool per_channel);

/* FP8 E4M3FN: round to nearest even, saturating at +-448, NaN stays NaN. */
uint8_t fp8_e4m3_from_f32(float x);
float fp8_e4m3_to_f32(uint8_t b);

/* Activation simulation for W8A8/FP8 (the engine calls it on each linear's input rows):
 * x[T][n] is replaced in place by its quantize-dequantize image. */
void quant_act_inplace(enum qact act, float input_scale, float *x, int T, int n);
/* (Added) Conventions: QACT_INT8_TOKEN is s = max(absmax, 1e-5) / 127, x = clamp(rint(x / s),
 * -127, 127) * s (SmoothQuant fake_quant and vLLM's dynamic int8 kernel, not compressed-tensors'
 * /127.5); QACT_FP8_TOKEN is s = max(absmax / 448, 1 / (448 * 512)) (vLLM), x = fp8(x / s) * s;
 * QACT_FP8_STATIC uses input_scale, or, when it is not a positive finite number, the per-tensor
 * absmax / 448 of x itself. Threaded over tokens when T * n >= 65536. */

/* BF16 helpers (round to nearest even). */
uint16_t quant_f32_to_bf16(float f);
float quant_bf16_to_f32(uint16_t b);

#endif
