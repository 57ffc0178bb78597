/*
 * swiglu_ref: the specification of silu(g) * u (plain loop, exp in double).
 */
#include "kernels/swiglu.h"

#include <math.h>

void swiglu_ref(float *h, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double gv = g[i];
        h[i] = (float)(gv / (1.0 + exp(-gv)) * (double)u[i]);
    }
}
