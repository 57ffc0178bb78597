/*
 * attn_case: one random attention case for test_attention and test_attention_gpu: q/k/v with
 * every cache slot no query may see filled with NaN (so a read outside the causal / sliding
 * window poisons the output), the reference output (attention_ref) and the per-element bound of
 * test_attention's file comment. Include after cmocka.h.
 */
#ifndef EXAQ_TESTS_ATTN_CASE_H
#define EXAQ_TESTS_ATTN_CASE_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/attention.h"
#include "tests/kernels/check.h"

struct attn_case {
    struct attn_args a; /* q, k, v and the shape; .out is NULL (the caller's) */
    float *q, *k, *v, *ref, *bound;
    size_t nq, nk;
};

static inline double attn_case_gamma(int n)
{
    const double u = 1.0 / 16777216.0;
    return n * u / (1.0 - n * u);
}

static inline void attn_case_new(struct attn_case *c, int T, int nh, int nkv, int hd, int q_off,
                                 int window)
{
    int cap = q_off + T + check_rand_int(0, 5);
    memset(c, 0, sizeof(*c));
    c->nq = (size_t)T * nh * hd;
    c->nk = (size_t)nkv * cap * hd;
    c->q = malloc(sizeof(float) * c->nq);
    c->k = malloc(sizeof(float) * c->nk);
    c->v = malloc(sizeof(float) * c->nk);
    c->ref = malloc(sizeof(float) * c->nq);
    c->bound = malloc(sizeof(float) * c->nq);
    assert_true(c->q && c->k && c->v && c->ref && c->bound);
    check_fill_normal(c->q, c->nq, 1.0f);
    check_fill_normal(c->k, c->nk, 1.0f);
    check_fill_normal(c->v, c->nk, 1.0f);
    /* Slots no query may see: after the last query, and before the first window. */
    int first_visible = window > 0 && q_off - window + 1 > 0 ? q_off - window + 1 : 0;
    for (int g = 0; g < nkv; g++)
        for (int j = 0; j < cap; j++)
            if (j >= q_off + T || j < first_visible)
                for (int i = 0; i < hd; i++) {
                    c->k[((size_t)g * cap + j) * hd + i] = NAN;
                    c->v[((size_t)g * cap + j) * hd + i] = NAN;
                }
    c->a = (struct attn_args){
        .T = T,
        .n_heads = nh,
        .n_kv_heads = nkv,
        .head_dim = hd,
        .q = c->q,
        .k = c->k,
        .v = c->v,
        .kv_cap = cap,
        .q_off = q_off,
        .window = window,
        .scale = 1.0f / sqrtf((float)hd),
        .out = c->ref,
    };
    assert_int_equal(attention(KERN_IMPL_REF, &c->a), 0);
    c->a.out = NULL;
    const double u = 1.0 / 16777216.0;
    for (int t = 0; t < T; t++) {
        int p = q_off + t, lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
        for (int h = 0; h < nh; h++) {
            int g = h / (nh / nkv);
            const float *qr = c->q + ((size_t)t * nh + h) * hd;
            double smax = 0, vmax = 0;
            for (int j = lo; j <= p; j++) {
                const float *kr = c->k + ((size_t)g * cap + j) * hd;
                const float *vr = c->v + ((size_t)g * cap + j) * hd;
                double s = 0;
                for (int i = 0; i < hd; i++) {
                    s += fabs(qr[i] * kr[i]);
                    if (fabs(vr[i]) > vmax)
                        vmax = fabs(vr[i]);
                }
                if (s > smax)
                    smax = s;
            }
            double ds = attn_case_gamma(hd) * c->a.scale * smax;
            int n = p - lo + 1;
            for (int i = 0; i < hd; i++) {
                size_t idx = ((size_t)t * nh + h) * hd + i;
                c->bound[idx] = (float)(2.0 * ((2 * ds + 2 * attn_case_gamma(n) + 8 * u) * vmax +
                                               u * fabs(c->ref[idx])));
            }
        }
    }
}

/* With window 1 each query sees only its own key: out must be exactly that value row. */
static inline int attn_case_window1_exact(const struct attn_case *c, const float *out)
{
    const struct attn_args *a = &c->a;
    for (int t = 0; t < a->T; t++)
        for (int h = 0; h < a->n_heads; h++) {
            int g = h / (a->n_heads / a->n_kv_heads);
            const float *vr = c->v + ((size_t)g * a->kv_cap + a->q_off + t) * a->head_dim;
            if (memcmp(out + ((size_t)t * a->n_heads + h) * a->head_dim, vr,
                       sizeof(float) * a->head_dim) != 0)
                return -1;
        }
    return 0;
}

static inline void attn_case_free(struct attn_case *c)
{
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->ref);
    free(c->bound);
    memset(c, 0, sizeof(*c));
}

#endif
