/*
 * backward_ref: the specification of every backward op of kernels/backward.h (plain loops,
 * double accumulation, one thread). Gradients are accumulated (+=) into the outputs.
 */
#include "kernels/backward.h"

#include <math.h>
#include <stdlib.h>

void embedding_bwd_ref(float *dE, const float *dx, const int32_t *ids, int T, int H)
{
    for (int t = 0; t < T; t++) {
        float *row = dE + (size_t)ids[t] * H;
        for (int i = 0; i < H; i++)
            row[i] += dx[(size_t)t * H + i];
    }
}

void linear_bwd_ref(float *dx, float *dW, const float *dy, const float *x, const float *W, int T,
                    int in, int out)
{
    if (dx)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < in; i++) {
                double acc = 0.0;
                for (int o = 0; o < out; o++)
                    acc += (double)dy[(size_t)t * out + o] * (double)W[(size_t)o * in + i];
                dx[(size_t)t * in + i] += (float)acc;
            }
    if (dW)
        for (int o = 0; o < out; o++)
            for (int i = 0; i < in; i++) {
                double acc = 0.0;
                for (int t = 0; t < T; t++)
                    acc += (double)dy[(size_t)t * out + o] * (double)x[(size_t)t * in + i];
                dW[(size_t)o * in + i] += (float)acc;
            }
}

void rmsnorm_bwd_ref(float *dx, float *dw, const float *dy, const float *x, const float *w,
                     int rows, int n, float eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *gr = dy + (size_t)r * n;
        double ss = 0.0, dot = 0.0;
        for (int i = 0; i < n; i++)
            ss += (double)xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / n + (double)eps);
        for (int i = 0; i < n; i++)
            dot += (double)gr[i] * (w ? w[i] : 1.0) * xr[i];
        if (dx) {
            float *o = dx + (size_t)r * n;
            double c = inv * inv * inv * dot / n;
            for (int i = 0; i < n; i++)
                o[i] += (float)(inv * (w ? w[i] : 1.0) * gr[i] - c * xr[i]);
        }
        if (dw)
            for (int i = 0; i < n; i++)
                dw[i] += (float)((double)gr[i] * xr[i] * inv);
    }
}

void rope_bwd_ref(float *dx, int T, int nheads, int head_dim, int pos0, const float *inv_freq)
{
    int half = head_dim / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nheads; h++) {
            float *v = dx + ((size_t)t * nheads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                /* The same fp32 cos/sin as the forward (rope_ref with cs_bf16 = 0). */
                float ang = (float)(pos0 + t) * inv_freq[i];
                float c = (float)cos((double)ang), s = (float)sin((double)ang);
                double g1 = v[i], g2 = v[i + half];
                v[i] = (float)(g1 * c + g2 * s);
                v[i + half] = (float)(g2 * c - g1 * s);
            }
        }
}

void attention_bwd_ref(const struct attn_args *a, const float *dout, float *dq, float *dk,
                       float *dv)
{
    int hd = a->head_dim, rep = a->n_heads / a->n_kv_heads, nk = a->q_off + a->T;
    double *p = malloc(sizeof(double) * (size_t)nk * 2);
    if (!p)
        abort();
    double *dp = p + nk;
    for (int t = 0; t < a->T; t++) {
        int pos = a->q_off + t, lo = 0;
        if (a->window > 0 && pos - a->window + 1 > 0)
            lo = pos - a->window + 1;
        for (int h = 0; h < a->n_heads; h++) {
            int g = h / rep;
            size_t qi = ((size_t)t * a->n_heads + h) * hd;
            const float *q = a->q + qi, *go = dout + qi;
            double m = -INFINITY, sum = 0.0;
            for (int j = lo; j <= pos; j++) {
                const float *k = a->k + ((size_t)g * a->kv_cap + j) * hd;
                double d = 0.0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[i] * k[i];
                p[j] = d * a->scale;
                if (p[j] > m)
                    m = p[j];
            }
            for (int j = lo; j <= pos; j++) {
                p[j] = exp(p[j] - m);
                sum += p[j];
            }
            double rs = 0.0;
            for (int j = lo; j <= pos; j++) {
                const float *v = a->v + ((size_t)g * a->kv_cap + j) * hd;
                double d = 0.0;
                p[j] /= sum;
                for (int i = 0; i < hd; i++)
                    d += (double)go[i] * v[i];
                dp[j] = d;
                rs += p[j] * d;
            }
            for (int j = lo; j <= pos; j++) {
                size_t kj = ((size_t)g * a->kv_cap + j) * hd;
                double ds = p[j] * (dp[j] - rs) * a->scale;
                for (int i = 0; i < hd; i++) {
                    dv[kj + i] += (float)(p[j] * go[i]);
                    dk[kj + i] += (float)(ds * q[i]);
                }
            }
            for (int i = 0; i < hd; i++) {
                double acc = 0.0;
                for (int j = lo; j <= pos; j++)
                    acc += p[j] * (dp[j] - rs) * a->k[((size_t)g * a->kv_cap + j) * hd + i];
                dq[qi + i] += (float)(acc * a->scale);
            }
        }
    }
    free(p);
}

void swiglu_bwd_ref(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double gv = g[i], s = 1.0 / (1.0 + exp(-gv));
        dg[i] += (float)((double)dh[i] * u[i] * s * (1.0 + gv * (1.0 - s)));
        du[i] += (float)((double)dh[i] * gv * s);
    }
}

/* Row r: max, then log-sum-exp of x / temp in double. */
static double row_lse(const float *x, int V, double temp, double *mx)
{
    double m = -INFINITY, s = 0.0;
    for (int v = 0; v < V; v++)
        if (x[v] / temp > m)
            m = x[v] / temp;
    for (int v = 0; v < V; v++)
        s += exp(x[v] / temp - m);
    *mx = m;
    return m + log(s);
}

double xent_bwd_ref(float *dlogits, const float *logits, const int32_t *targets, int rows, int V,
                    float scale)
{
    double loss = 0.0, m;
    for (int r = 0; r < rows; r++) {
        if (targets[r] < 0)
            continue;
        const float *x = logits + (size_t)r * V;
        float *d = dlogits + (size_t)r * V;
        double l = row_lse(x, V, 1.0, &m);
        loss += l - x[targets[r]];
        for (int v = 0; v < V; v++)
            d[v] += (float)(scale * (exp(x[v] - l) - (v == targets[r] ? 1.0 : 0.0)));
    }
    return loss;
}

double kl_bwd_ref(float *dlogits, const float *logits, const float *teacher_logp, const uint8_t *on,
                  int rows, int V, float temperature, float scale)
{
    double loss = 0.0, m, tau = temperature;
    for (int r = 0; r < rows; r++) {
        if (on && !on[r])
            continue;
        const float *x = logits + (size_t)r * V, *tl = teacher_logp + (size_t)r * V;
        float *d = dlogits + (size_t)r * V;
        double l = row_lse(x, V, tau, &m), mass = 0.0;
        /* mass = sum pt: 1 for a full teacher, less for a truncated (top-k) one, where the
           gradient of sum pt (log pt - log ps) is (mass * ps - pt) / tau. */
        for (int v = 0; v < V; v++)
            mass += exp((double)tl[v]);
        for (int v = 0; v < V; v++) {
            double ls = x[v] / tau - l, pt = exp((double)tl[v]);
            if (pt > 0.0)
                loss += pt * ((double)tl[v] - ls);
            d[v] += (float)(scale * (mass * exp(ls) - pt) / tau);
        }
    }
    return loss;
}
