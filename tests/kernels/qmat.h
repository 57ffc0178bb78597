/*
 * qmat: random quantized weights for the quantized-matmul tests (test_qmatmul.c and
 * test_qmatmul_gpu.c): codes of every format of `struct linear`, BF16 scales, zero points,
 * g_idx, and the exact dequantization computed here, independently of kernels/. Include after
 * cmocka.h and check.h.
 */
#ifndef EXAQ_TESTS_QMAT_H
#define EXAQ_TESTS_QMAT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern.h"
#include "kernels/matmul.h"

/* ---- random quantized weights ---------------------------------------------------------- */

struct qmat {
    enum linear_fmt fmt;
    int out, in, bits, gs, ngroups;
    int8_t *q;
    uint8_t *fp8;
    uint16_t *scale;
    int8_t *zp;
    int32_t *g_idx;
    float *w; /* the exact dequantization, computed here */
};

static inline void qmat_free(struct qmat *m)
{
    free(m->q);
    free(m->fp8);
    free(m->scale);
    free(m->zp);
    free(m->g_idx);
    free(m->w);
    memset(m, 0, sizeof(*m));
}

/* Random codes, scales (BF16, both signs, magnitudes 2^-12..2^-2), zero points and g_idx. The
 * arrays have their exact sizes so ASan builds see any over-read. */
static inline void qmat_make(struct qmat *m, enum linear_fmt fmt, int bits, int out, int in, int gs,
                             int with_zp, int with_gidx)
{
    memset(m, 0, sizeof(*m));
    m->fmt = fmt;
    m->out = out;
    m->in = in;
    m->bits = bits;
    m->gs = gs;
    m->ngroups = gs > 0 ? (in + gs - 1) / gs : 1;
    size_t n = (size_t)out * in, ns = gs == 0 ? 1 : (size_t)out * m->ngroups;
    int qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
    if (fmt == LINEAR_FMT_FP8) {
        m->fp8 = malloc(n);
        assert_non_null(m->fp8);
        for (size_t i = 0; i < n; i++) {
            uint8_t b;
            do
                b = (uint8_t)check_rand_int(0, 255);
            while ((b & 0x7f) == 0x7f);
            m->fp8[i] = b;
        }
    } else {
        m->q = malloc(n);
        assert_non_null(m->q);
        for (size_t i = 0; i < n; i++)
            m->q[i] = (int8_t)check_rand_int(qmin, qmax);
    }
    m->scale = malloc(ns * sizeof(uint16_t));
    assert_non_null(m->scale);
    for (size_t i = 0; i < ns; i++) {
        float s = ldexpf(check_uniform(1.0f, 2.0f), check_rand_int(-12, -3));
        m->scale[i] = kern_f32_to_bf16(check_rand_int(0, 7) == 0 ? -s : s);
    }
    if (with_zp) {
        m->zp = malloc(ns);
        assert_non_null(m->zp);
        for (size_t i = 0; i < ns; i++)
            m->zp[i] = (int8_t)check_rand_int(qmin, qmax);
    }
    if (with_gidx) {
        m->g_idx = malloc(sizeof(int32_t) * (size_t)in);
        assert_non_null(m->g_idx);
        for (int c = 0; c < in; c++)
            m->g_idx[c] = check_rand_int(0, m->ngroups - 1);
    }
    m->w = malloc(sizeof(float) * n);
    assert_non_null(m->w);
    for (int r = 0; r < out; r++)
        for (int c = 0; c < in; c++) {
            int g = m->g_idx ? m->g_idx[c] : gs > 0 ? c / gs : 0;
            size_t k = gs == 0 ? 0 : (size_t)r * m->ngroups + g;
            float s = kern_bf16_to_f32(m->scale[k]);
            size_t i = (size_t)r * in + c;
            if (fmt == LINEAR_FMT_FP8)
                m->w[i] = kern_f8e4m3_to_f32(m->fp8[i]) * s;
            else
                m->w[i] = (float)(m->q[i] - (m->zp ? m->zp[k] : 0)) * s;
        }
}

static inline int qmat_linear(struct linear *L, const struct qmat *m)
{
    struct linear_qsrc src = { m->out,   m->in, m->bits, m->q,    m->fp8,
                               m->scale, m->zp, m->gs,   m->g_idx };
    return linear_init_quant(L, &src, m->fmt);
}

static inline const char *fmt_name(enum linear_fmt f)
{
    return f == LINEAR_FMT_INT ? "int" : f == LINEAR_FMT_INT4 ? "int4" : "fp8";
}

#endif
