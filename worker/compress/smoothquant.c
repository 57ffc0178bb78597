/*
 * smoothquant: the smoothing scales of SmoothQuant (mit-han-lab/smoothquant `smooth.py`,
 * algorithms spec 3.1) reduced over the GQA repeat of the v_proj -> o_proj fold. Pure
 * arithmetic on the statistics it is given; no model access.
 */
#include "worker/compress/smoothquant.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "common/util.h"

int smoothquant_scales(const struct awq_fold *f, const float *act_absmax, const float *W, int out,
                       double alpha, float *s, char **err)
{
    float *wcol = NULL, *act = NULL, *wmax = NULL;
    int forced = 0;

    if (err)
        *err = NULL;
    if (!f || !act_absmax || !W || !s || out < 1 || f->n < 1 || f->next_in < 1 ||
        !(alpha >= 0.0 && alpha <= 1.0)) {
        if (err)
            *err = xasprintf("smoothquant: bad arguments (alpha must be in [0, 1], got %g)", alpha);
        return -EINVAL;
    }
    wcol = xcalloc((size_t)f->next_in, sizeof(float));
    act = xmalloc((size_t)f->n * sizeof(float));
    wmax = xmalloc((size_t)f->n * sizeof(float));
    for (int r = 0; r < out; r++) {
        const float *row = W + (size_t)r * f->next_in;
        for (int j = 0; j < f->next_in; j++)
            wcol[j] = fmaxf(wcol[j], fabsf(row[j]));
    }
    awq_fold_reduce(f, wcol, AWQ_REDUCE_MAX, wmax);
    awq_fold_reduce(f, act_absmax, AWQ_REDUCE_MAX, act);
    for (int i = 0; i < f->n; i++) {
        double v = pow((double)act[i], alpha) / pow((double)wmax[i], 1.0 - alpha);
        if (!(act[i] > 0.0f) || !(wmax[i] > 0.0f) || !isfinite(v)) {
            s[i] = 1.0f;
            forced++;
            continue;
        }
        s[i] = (float)fmax(v, 1e-5);
    }
    free(wcol);
    free(act);
    free(wmax);
    return forced;
}
