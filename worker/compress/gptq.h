/*
 * gptq: Hessian-based quantization of one weight matrix (GPTQ, IST-DASLab `fasterquant`,
 * algorithms spec section 1), and the Hessian accumulator it shares with SparseGPT and AWQ.
 *
 * The caller accumulates H from the layer's calibration inputs (hess_add), then calls
 * gptq_quantize() for every Linear that reads those inputs (q/k/v share one H, gate/up share
 * one). The result goes into a `struct qweight` (worker/engine/quant.h), so the writer and the
 * engine see GPTQ and RTN output alike.
 */
#ifndef EXAQ_GPTQ_H
#define EXAQ_GPTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/engine/quant.h"

/* ---- Hessian ---------------------------------------------------------------------------- */

/* H = (2 / nsamples) * sum over rows x of x^T x, accumulated in fp32 as the references do. */
struct hessian {
    int n;            /* columns (the Linear's in_features) */
    float *H;         /* [n][n], full symmetric */
    int64_t nsamples; /* rows added */
};
int hess_init(struct hessian *h, int n);
void hess_release(struct hessian *h);
/* Adds rows x[T][n]. */
void hess_add(struct hessian *h, const float *x, int T);
/* Returns the normalised Hessian (2/nsamples * sum) in h->H, in place; call once at the end. */
void hess_finish(struct hessian *h);

/* ---- GPTQ -------------------------------------------------------------------------------- */

enum gptq_actorder {
    GPTQ_ACTORDER_NONE = 0, /* columns in order */
    GPTQ_ACTORDER_STATIC,   /* permute by diag(H) but keep contiguous groups (no g_idx) */
    GPTQ_ACTORDER_GROUP,    /* permute, groups over permuted columns, g_idx saved */
};

struct gptq_opts {
    double dampening; /* fraction of mean(diag H) added to the diagonal (0.01) */
    int block_size;   /* lazy-batch block (128) */
    enum gptq_actorder actorder;
    bool static_groups; /* fit every group's params on the original W up front */
    bool groups_on_w1;  /* dynamic groups fitted on the block-updated W1 instead of W (the
                           references use W; see algorithms spec 1.5). Default false. */
    enum qgrid grid;    /* symmetric integer grid convention */
    int scale_search;   /* static groups: try ranges shrunk by 0..n-1 % and keep the one with
                           the least squared rounding error of the group (0: min-max) */
    /* Added: compute stats->loss_rtn (one out x in x in fp32 GEMM, twice the flops of the
     * lazy updates). Default true; false leaves loss_rtn at -1. */
    bool compute_loss_rtn;
};
void gptq_opts_default(struct gptq_opts *o);

struct gptq_stats {
    double loss;       /* sum of (w - q)^2 / U_ii^2 / 2 over all elements (spec 1.6) */
    double loss_rtn;   /* the same objective for RTN on the same grid, for comparison:
                          1/2 tr(dW H_d dW^T) with dW = W0 - quant_rtn(W0), W0 = W with the
                          dead columns zeroed, contiguous groups (-1 when not computed) */
    int dead_cols;     /* columns with diag(H) == 0 */
    bool fallback_rtn; /* Cholesky failed even after retries: fell back to RTN */
    double damp_used;  /* the dampening fraction that succeeded (the last one tried when
                          fallback_rtn) */
    /* Added: wall time of the phases, in seconds: Hinv (with retries), the column loop with
     * the lazy updates, and the loss_rtn baseline. */
    double seconds_factor, seconds_quant, seconds_loss_rtn;
};

/*
 * Quantizes W (fp32 [out][in], not modified) with Hessian H (fp32 [in][in], not modified;
 * any positive scale) into w, which qweight_init() prepared for the scheme and group size.
 * Integer schemes only (W4A16, W4A16_ASYM, W8A16, W8A8). When Cholesky fails the dampening is
 * raised (x10, up to 1.0) and, if it still fails, RTN is used and reported in stats. Threads
 * over rows for the column loop and the lazy update. Returns 0 or a negative code with *err set.
 */
int gptq_quantize(struct qweight *w, const float *W, const float *H, const struct gptq_opts *o,
                  struct gptq_stats *stats, char **err);
/*
 * Details of the contract above (added; docs/quantization.md has the sources):
 *  - H must be the full symmetric matrix (hess_finish gives one); o == NULL means defaults.
 *  - Parameters: per channel / per tensor fitted on the original W; groups fitted when the
 *    column loop reaches them (IST), or up front on W with dead columns zeroed when
 *    static_groups. ACTORDER_STATIC always uses static contiguous groups (IST static_groups +
 *    act_order = llm-compressor "static"/"weight"). ACTORDER_GROUP groups consecutive permuted
 *    columns: fitted dynamically (IST/AutoGPTQ desc_act) or, with static_groups, up front on
 *    W (llm-compressor "group"); w->g_idx is then always allocated (even when it happens to be
 *    the identity) and qweight_group_of() follows it. Any previous w->g_idx is freed.
 *  - The act-order permutation sorts diag(H) descending with ties broken by column index.
 *  - Dead columns (diag(H) == 0) quantize to exactly 0.
 */

/*
 * Added: the same computation split in two, so that the Linears sharing one H (q/k/v, and
 * gate/up) factor it once. gptq_prepare() does everything that depends only on H and the
 * options (dead columns, the act-order permutation, the damped Hinv with its retries and the
 * RTN fallback); gptq_quantize_prep() quantizes one W [out][n] with it, using the options given
 * to gptq_prepare (NULL: defaults). H is borrowed and must stay unchanged until
 * gptq_prep_free(). A prepared Hessian is read-only, so several threads may use it at once.
 * gptq_quantize() is prepare + quantize_prep + free. In the stats of gptq_quantize_prep,
 * seconds_factor is 0 (the factorization belongs to gptq_prepare). Memory: n^2 doubles.
 */
struct gptq_prep;
int gptq_prepare(const float *H, int n, const struct gptq_opts *o, struct gptq_prep **out,
                 char **err);
int gptq_quantize_prep(struct qweight *w, const float *W, const struct gptq_prep *p,
                       struct gptq_stats *stats, char **err);
void gptq_prep_free(struct gptq_prep *p);

/*
 * Added for SparseGPT (worker/compress/sparsegpt.c), which runs the same column loop on the same
 * prepared Hessian (algorithms spec 3.3: same H, dead-column fix, damping and Hinv): a read-only
 * view of a prepared Hessian. Every pointer is borrowed from p and lives until gptq_prep_free(p).
 */
struct gptq_prep_view {
    int n;
    const float *H;      /* the Hessian given to gptq_prepare (borrowed by p) */
    const int *perm;     /* [n] position -> original column (identity without act-order) */
    const uint8_t *dead; /* [n] 1 for a dead column (diag(H) == 0), by original column */
    int dead_cols;
    const double *U;    /* [n][n] upper factor of H_d^-1 in permuted order; NULL after fallback */
    double lambda;      /* the absolute damping added to the diagonal: damp_used * mean(diag H) */
    double damp_used;   /* the dampening fraction that succeeded (the last tried on fallback) */
    bool fallback;      /* Cholesky failed at every dampening: Hinv = I (RTN) */
    struct gptq_opts o; /* the options gptq_prepare used */
};
void gptq_prep_get_view(const struct gptq_prep *p, struct gptq_prep_view *v);

/* ---- dense linear algebra used by GPTQ (double precision) -------------------------------- */

/* In place lower Cholesky of the SPD matrix A [n][n] (upper triangle left untouched). 0, or
 * -1 if A is not positive definite. */
int chol_lower(double *A, int n);
/* Hinv_upper = the upper Cholesky factor U of A^-1 (A^-1 = U^T U), from A [n][n] SPD.
 * 0 or -1. */
int chol_inverse_upper(const double *A, int n, double *U);

#endif
