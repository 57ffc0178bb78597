/*
 * sparsegpt: Hessian-based pruning of one weight matrix (SparseGPT, IST-DASLab `fasterprune`,
 * algorithms spec 3.3), optionally joint with integer quantization, and the magnitude-pruning
 * baseline it is measured against.
 *
 * It runs on a Hessian prepared by gptq_prepare() (worker/compress/gptq.h: the same dead-column
 * fix, relative damping with retries and Hinv = upper Cholesky factor of H_d^-1), so q/k/v and
 * gate/up share one factorization exactly as with GPTQ. The caller accumulates H layer by layer
 * with the earlier layers already pruned (error propagation, like GPTQ).
 */
#ifndef EXAQ_SPARSEGPT_H
#define EXAQ_SPARSEGPT_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/compress/gptq.h"
#include "worker/engine/quant.h"

struct sparsegpt_opts {
    double sparsity;             /* unstructured: fraction pruned in every block, [0, 1) */
    int prune_n, prune_m;        /* N:M: prune_n of every prune_m consecutive input columns of
                                    each row (2, 4 for "2:4"); 0, 0 means unstructured */
    enum qgrid grid;             /* symmetric grid when quantizing jointly */
    bool compute_loss_magnitude; /* fill stats.loss_magnitude (one out x in x in GEMM) */
};
/* sparsity 0.5, unstructured, QGRID_ABSMAX_HALF, compute_loss_magnitude true. */
void sparsegpt_opts_default(struct sparsegpt_opts *o);

struct sparsegpt_stats {
    double loss;           /* sum of (w - q)^2 / U_ii^2 / 2 (q = 0 where pruned), as GPTQ's */
    double loss_magnitude; /* the same objective 1/2 tr(dW H_d dW^T) for magnitude pruning with
                              the same budget (+ RTN when quantizing); -1 when not computed */
    int64_t pruned;        /* weights the mask removed */
    int64_t zeros;         /* weights exactly 0 in the result (>= pruned: dead columns, and
                              kept weights that quantize to 0) */
    int64_t total;         /* out * in */
    int dead_cols;
    bool fallback_rtn; /* Cholesky failed at every dampening: Hinv = I (magnitude per block) */
    double damp_used;
    double seconds;
};

/*
 * Prunes W (fp32 [out][p->n], not modified) with the prepared Hessian p, which must have been
 * prepared without act-order. Block size and dampening come from p's options. Per block of B
 * columns (spec 3.3):
 *  - unstructured: at the block start the mask takes the floor(out * b * sparsity) weights of
 *    the block with the smallest W1^2 / diag(U1)^2, W1 being the block as updated so far (so
 *    every block loses exactly that fraction; ties go to the lower index; the reference's
 *    `tmp <= sort(tmp)[k]` would take k + 1 plus ties);
 *  - N:M: at every column i with i % M == 0, each row masks the N of columns i..i+M-1 with the
 *    smallest W1^2 / diag(U1)^2 (needs in % M == 0 and B % M == 0);
 *  - then the GPTQ column step: q = 0 where masked, else w (or, when qw != NULL, w quantized on
 *    qw's grid), e = (w - q) / U_ii, the rest of the block updated by -e U[i, i:], and the lazy
 *    update of the later blocks after each block.
 * With qw (initialised by qweight_init for an integer scheme, shape [out][n]): per-channel /
 * per-tensor parameters are fitted on the original W (IST), groups when the loop reaches their
 * first column, on the updated values (W1 inside the block) with the already-known masked
 * entries counted as 0. Pruned weights get the code of the zero point, so they dequantize to
 * exactly 0. Outputs (each may be NULL): Wout [out][n], the result in fp32 (the dequantized
 * values with qw); mask [out][n], 1 where pruned. Returns 0 or a negative errno code with *err.
 */
int sparsegpt_prune(const float *W, int out, const struct gptq_prep *p,
                    const struct sparsegpt_opts *o, float *Wout, struct qweight *qw, uint8_t *mask,
                    struct sparsegpt_stats *st, char **err);

/*
 * The magnitude baseline with the same mask budget, in place on W [out][in]: unstructured
 * prunes floor(in * sparsity) weights of smallest |w| in every row; N:M prunes prune_n of every
 * prune_m consecutive columns of each row. Ties go to the lower column. mask [out][in] (1 where
 * pruned) may be NULL. Returns the number pruned, or -EINVAL.
 */
int64_t sparsegpt_magnitude(float *W, int out, int in, const struct sparsegpt_opts *o,
                            uint8_t *mask);

#endif
