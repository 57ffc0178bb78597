/*
 * greedy: a global greedy rounding correction for integer weight quantization (the `rounding:
 * greedy` option of the quantize stage, with RTN and AWQ).
 *
 * Nearest rounding minimises each weight's own error; what matters is the layer's output error
 * on the calibration activations. For one output row with weight error e = Q(w) - w (in the
 * basis the linear reads its input) that error is e^T H e, H the Gram matrix of the input (the
 * Hessian GPTQ accumulates, 2/n sum x^T x). The correction keeps the scales and zero points of
 * the nearest-rounded weight and changes codes only:
 *   - candidates: every weight whose value lies between two codes of the grid (a weight clamped
 *     at the grid's end has one neighbour and is not a candidate), in a column outside the
 *     outlier mask; its flip moves the code to the other of the two neighbours;
 *   - the cost of flipping weight j by d (d = +-scale) is exactly 2 d (H e)_j + d^2 H_jj;
 *   - per row, repeatedly take the candidates of lowest (most negative) cost, a batch at a time,
 *     flip them, and keep the batch only when the row's error e^T H e fell (otherwise undo it
 *     and halve the batch); stop when the best single flip no longer lowers the error. A flipped
 *     weight may flip back (it is then again a candidate with its own cost).
 *   - outlier mask: the columns of the top outlier_percent of the input channels by salience
 *     (the activation statistic the caller passes, e.g. E[x^2]) keep their nearest rounding.
 * Every accepted step lowers the row's error, and a row whose final error (recomputed) is not
 * below its nearest-rounding error is restored, so the result is never worse than nearest
 * rounding on the calibration data. Rows are independent (par_for over rows).
 */
#ifndef EXAQ_GREEDY_H
#define EXAQ_GREEDY_H

#include "worker/engine/quant.h"

struct greedy_opts {
    double outlier_percent; /* [0, 100): share of input columns (by salience) never flipped */
    int max_rounds;         /* per row; <= 0 means 8 * in */
};
/* outlier_percent 1, max_rounds 0. */
void greedy_opts_default(struct greedy_opts *o);

struct greedy_stats {
    double err_nearest; /* sum over rows of e^T H e / (2 * out) at nearest rounding */
    double err_greedy;  /* the same after the correction (<= err_nearest) */
    long flips;         /* codes that differ from nearest rounding at the end */
    long candidates;    /* weights that could flip (outside the mask, two neighbours) */
    int masked_cols;    /* columns excluded by the outlier mask */
    int rows_restored;  /* rows put back to nearest rounding by the final check */
};

/*
 * Corrects the codes of w (integer scheme, already quantized by nearest rounding from Wround
 * with its scales and zero points) in place. Wround [out][in] are the values that were rounded
 * (they fix each weight's two neighbouring codes); Wref [out][in] the values the error is
 * measured against (often the same array; AWQ passes the weights before its clip); H [in][in]
 * the full symmetric Gram matrix of the linear's input; salience [in] (NULL: diag(H)) ranks the
 * columns for the outlier mask. Returns 0, or -EINVAL with *err set (a new string) for an FP8
 * scheme, missing codes or bad arguments.
 */
int greedy_round(struct qweight *w, const float *Wround, const float *Wref, const float *H,
                 const float *salience, const struct greedy_opts *o, struct greedy_stats *st,
                 char **err);

/* sum over rows of (deq(w) - Wref)_r^T H (deq(w) - Wref)_r / (2 * out), in double. */
double greedy_output_error(const struct qweight *w, const float *Wref, const float *H);

#endif
