/*
 * mm_test: what the matmul tests (test_matmul, test_qmatmul and their _gpu twins) share: random
 * dense weights, and the per-element error bound. Higham's dot-product bound (Accuracy and
 * Stability of Numerical Algorithms, 2nd ed., eq. 3.5): a sum of K terms in any order is within
 * gamma_K sum |terms|, gamma_K = K u / (1 - K u), u = 2^-24. For y (+)= x . W^T the bound of
 * element (t, o) is k_gamma * gamma_K * (sum_k |x_tk w_ok| + |y0_to| when accumulating) + u
 * |ref_to|, K = in + extra_terms (+1 when accumulating); each test's comment says why its k_gamma
 * and extra_terms hold. Include after cmocka.h and check.h.
 */
#ifndef EXAQ_TESTS_MM_TEST_H
#define EXAQ_TESTS_MM_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/matmul.h"

/* Random N(0, 1) weights [out][in] of dtype dt (malloc'ed) and their exact fp32 values in wf. */
static inline void *mm_make_weights(enum kern_dtype dt, int out, int in, float *wf)
{
    size_t n = (size_t)out * in;
    void *w = malloc(n * kern_dtype_size(dt) + 4);
    assert_non_null(w);
    for (size_t i = 0; i < n; i++) {
        float v = check_normal();
        switch (dt) {
        case KERN_F32:
            ((float *)w)[i] = v;
            wf[i] = v;
            break;
        case KERN_BF16:
            ((uint16_t *)w)[i] = kern_f32_to_bf16(v);
            wf[i] = kern_bf16_to_f32(((uint16_t *)w)[i]);
            break;
        case KERN_F16:
            ((uint16_t *)w)[i] = kern_f32_to_f16(v);
            wf[i] = kern_f16_to_f32(((uint16_t *)w)[i]);
            break;
        }
    }
    return w;
}

/* A malloc'ed [T][out] bound; w is W as fp32 [out][in], y0 the accumulated-into values. */
static inline float *mm_bound_new(const float *x, const float *w, const float *y0, const float *ref,
                                  int T, int out, int in, int accumulate, int extra_terms,
                                  double k_gamma)
{
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    float *ax = malloc(sizeof(float) * (nx + 1)), *aw = malloc(sizeof(float) * (nw + 1));
    float *bound = malloc(sizeof(float) * (ny + 1));
    assert_true(ax && aw && bound);
    for (size_t i = 0; i < nx; i++)
        ax[i] = fabsf(x[i]);
    for (size_t i = 0; i < nw; i++)
        aw[i] = fabsf(w[i]);
    struct linear LA;
    linear_init_dense(&LA, out, in, KERN_F32, aw);
    matmul_ref(bound, ax, T, &LA, 0);
    const double u = 1.0 / 16777216.0;
    double terms = in + extra_terms + (accumulate ? 1 : 0);
    double gamma = terms * u / (1.0 - terms * u);
    for (size_t i = 0; i < ny; i++)
        bound[i] = (float)(k_gamma * gamma * (bound[i] + (accumulate ? fabs(y0[i]) : 0.0)) +
                           u * fabs(ref[i]) + 1e-30);
    free(ax);
    free(aw);
    return bound;
}

#endif
