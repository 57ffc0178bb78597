/*
 * attention_ref: the specification of causal / sliding-window GQA attention (plain loops,
 * double scores, max-subtracted softmax in double).
 */
#include "kernels/attention.h"

#include <math.h>
#include <stdlib.h>

void attention_ref(const struct attn_args *a)
{
    int hd = a->head_dim, rep = a->n_heads / a->n_kv_heads;
    double *s = malloc(sizeof(double) * (size_t)(a->q_off + a->T));
    if (!s)
        abort();
    for (int t = 0; t < a->T; t++) {
        int p = a->q_off + t;
        int lo = 0;
        if (a->window > 0 && p - a->window + 1 > 0)
            lo = p - a->window + 1;
        for (int h = 0; h < a->n_heads; h++) {
            int g = h / rep;
            const float *q = a->q + ((size_t)t * a->n_heads + h) * hd;
            double m = -INFINITY;
            for (int j = lo; j <= p; j++) {
                const float *k = a->k + ((size_t)g * a->kv_cap + j) * hd;
                double d = 0.0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[i] * (double)k[i];
                s[j] = d * a->scale;
                if (s[j] > m)
                    m = s[j];
            }
            double sum = 0.0;
            for (int j = lo; j <= p; j++) {
                s[j] = exp(s[j] - m);
                sum += s[j];
            }
            float *o = a->out + ((size_t)t * a->n_heads + h) * hd;
            for (int i = 0; i < hd; i++) {
                double acc = 0.0;
                for (int j = lo; j <= p; j++)
                    acc += s[j] * (double)a->v[((size_t)g * a->kv_cap + j) * hd + i];
                o[i] = (float)(acc / sum);
            }
        }
    }
    free(s);
}
