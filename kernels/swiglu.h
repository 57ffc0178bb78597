/*
 * swiglu: h = silu(g) * u = g / (1 + exp(-g)) * u, elementwise over n values (the EXAONE-4 MLP
 * gate, hidden_act "silu").
 *
 * Variants (dispatch: swiglu()): swiglu_ref (libm exp in double), swiglu_cpu (default: 8-wide
 * with the polynomial exp of kernels/vmath.h, threaded for large n). h may alias g or u.
 */
#ifndef EXAQ_SWIGLU_H
#define EXAQ_SWIGLU_H

#include "kernels/kern.h"

int swiglu(enum kern_impl impl, float *h, const float *g, const float *u, size_t n);
void swiglu_ref(float *h, const float *g, const float *u, size_t n);
void swiglu_cpu(float *h, const float *g, const float *u, size_t n);

/* Exposed for tests: out[i] = exp(x[i]) with the vector exp of kernels/vmath.h. */
void kern_vexp(float *out, const float *x, size_t n);

#endif
