/*
 * optim: AdamW, global-norm clipping and the warmup + cosine schedule (optim.h).
 */
#include "worker/train/optim.h"

#include <math.h>

void adamw_step(const struct adamw *o, long t, double lr, double wd_scale, float *w, const float *g,
                float *m, float *v, size_t n)
{
    double b1 = o->beta1, b2 = o->beta2;
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    double decay = 1.0 - lr * o->weight_decay * wd_scale;
    double step = lr / bc1, sbc2 = sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        double mi = b1 * m[i] + (1.0 - b1) * gi;
        double vi = b2 * v[i] + (1.0 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        /* torch: denom = sqrt(v)/sqrt(bc2) + eps; w -= lr/bc1 * m / denom */
        w[i] = (float)(w[i] * decay - step * mi / (sqrt(vi) / sbc2 + o->eps));
    }
}

double optim_sumsq(const float *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    return s;
}

void optim_scale(float *g, size_t n, double s)
{
    float f = (float)s;
    for (size_t i = 0; i < n; i++)
        g[i] *= f;
}

double optim_clip_factor(double norm, double max_norm)
{
    if (max_norm <= 0)
        return 1.0;
    double c = max_norm / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

double optim_lr(long step, long total, long warmup, double lr, double min_ratio)
{
    if (step < warmup)
        return lr * (double)(step + 1) / (double)warmup;
    long span = total - warmup > 1 ? total - warmup : 1;
    double p = (double)(step - warmup) / (double)span;
    if (p > 1)
        p = 1;
    return lr * (min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + cos(M_PI * p)));
}
