/*
 * syrk_ref: the specification of H = beta * H + alpha * X^T . X (plain loops, double sums).
 */
#include "kernels/syrk.h"

void syrk_ref(float *H, const float *X, int T, int n, float alpha, float beta)
{
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int t = 0; t < T; t++)
                s += (double)X[(size_t)t * n + i] * (double)X[(size_t)t * n + j];
            float *h = &H[(size_t)i * n + j];
            double prev = beta == 0.0f ? 0.0 : (double)beta * (double)*h;
            *h = (float)(prev + (double)alpha * s);
        }
    }
}
