/*
 * rmsnorm_ref: the specification of RMSNorm (plain loops, double sum of squares).
 */
#include "kernels/rmsnorm.h"

#include <math.h>

void rmsnorm_ref(float *y, const float *x, const float *w, int rows, int n, float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        double ss = 0.0;
        for (int i = 0; i < n; i++)
            ss += (double)xr[i] * (double)xr[i];
        float inv = (float)(1.0 / sqrt(ss / n + (double)eps));
        for (int i = 0; i < n; i++)
            yr[i] = (w ? w[i] : 1.0f) * (xr[i] * inv);
    }
}
