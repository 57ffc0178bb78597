/*
 * rmsnorm: y = w * (x / sqrt(mean(x^2) + eps)) over each row of length n (Exaone4RMSNorm, used
 * both per head on q/k with n = head_dim and on the hidden state with n = hidden_size).
 *
 * Variants (dispatch: rmsnorm()):
 *   rmsnorm_ref   plain loops, sum of squares in double: the spec;
 *   rmsnorm_cpu   (default) 8-wide fp32 partial sums, threaded over rows for large inputs.
 * y may alias x (in place). w == NULL means a weight of 1.
 */
#ifndef EXAQ_RMSNORM_H
#define EXAQ_RMSNORM_H

#include "kernels/kern.h"

int rmsnorm(enum kern_impl impl, float *y, const float *x, const float *w, int rows, int n,
            float eps);
void rmsnorm_ref(float *y, const float *x, const float *w, int rows, int n, float eps);
void rmsnorm_cpu(float *y, const float *x, const float *w, int rows, int n, float eps);

#endif
