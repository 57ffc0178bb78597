/*
 * lse: per-row log-sum-exp, out[r] = log(sum_i exp(x[r][i])), computed stably as
 * m + log(sum exp(x - m)) with m the row max. The engine turns logits into log-probabilities
 * with it: log p(i) = x[i] - lse (perplexity, multiple-choice scoring).
 *
 * Variants (dispatch: lse()): lse_ref (double exp and sums), lse_cpu (default: 8-wide
 * polynomial exp, fp32 lane sums over 512-value chunks added in double, threaded over rows).
 * Rows of -inf give -inf; NaN propagates.
 */
#ifndef EXAQ_LSE_H
#define EXAQ_LSE_H

#include "kernels/kern.h"

int lse(enum kern_impl impl, float *out, const float *x, int rows, int n);
void lse_ref(float *out, const float *x, int rows, int n);
void lse_cpu(float *out, const float *x, int rows, int n);

#endif
