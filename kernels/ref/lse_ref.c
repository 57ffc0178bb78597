/*
 * lse_ref: the specification of row log-sum-exp (plain loops, double arithmetic).
 */
#include "kernels/lse.h"

#include <math.h>

void lse_ref(float *out, const float *x, int rows, int n)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        double m = -INFINITY;
        int nan = 0;
        for (int i = 0; i < n; i++) {
            if (isnan(xr[i]))
                nan = 1;
            if (xr[i] > m)
                m = xr[i];
        }
        if (nan) {
            out[r] = NAN;
            continue;
        }
        if (isinf(m)) {
            out[r] = (float)m;
            continue;
        }
        double s = 0.0;
        for (int i = 0; i < n; i++)
            s += exp((double)xr[i] - m);
        out[r] = (float)(m + log(s));
    }
}
