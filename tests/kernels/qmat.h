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

/* with_gidx: 0 none, 1 each column in a random group, QMAT_GIDX_BALANCED as the comment below. */
#define QMAT_GIDX_BALANCED 2

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
        if (with_gidx == QMAT_GIDX_BALANCED) {
            /* Every group exactly gs columns (the last one the rest), at random positions: the
             * act-order g_idx GPTQ writes, whose groups stay aligned in storage order. */
            for (int c = 0; c < in; c++)
                m->g_idx[c] = c / gs;
            for (int c = in - 1; c > 0; c--) {
                int o = check_rand_int(0, c), tmp = m->g_idx[c];
                m->g_idx[c] = m->g_idx[o];
                m->g_idx[o] = tmp;
            }
        }
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

/* The formats, group sizes and shapes the quantized-matmul tests draw their cases from. */
static const struct {
    enum linear_fmt fmt;
    int bits;
} QMAT_FMTS[] = {
    { LINEAR_FMT_INT, 8 }, { LINEAR_FMT_INT, 4 }, { LINEAR_FMT_INT4, 4 }, { LINEAR_FMT_FP8, 8 }
};
/* 40 is 8 mod 16 (half an INT4 block), 7 is odd (the generic path), -1 channel, 0 tensor; 256 is
 * the largest group the quantize stage writes. */
static const int QMAT_GROUPS[] = { 32, 64, 128, 256, 40, 7, -1, 0 };
static const int QMAT_OUTS[5] = { 1, 5, 17, 33, 100 };
static const int QMAT_INS[5] = { 7, 33, 136, 300, 515 };

/* One test case: format, code bits, group size, zero points?, g_idx?, T, out, in, accumulate?;
 * 0 when it passes. */
typedef int (*qmat_case_fn)(enum linear_fmt fmt, int bits, int gs, int with_zp, int with_gidx,
                            int T, int out, int in, int accumulate);

/* Runs fn over every format x group size x zero point (not FP8) x g_idx (groups only) x T in
 * Ts, each case with a random shape from QMAT_OUTS x QMAT_INS and a random accumulate flag.
 * Returns the number of failed cases and adds the number run to *cases. */
static inline int qmat_sweep(qmat_case_fn fn, const int *Ts, size_t nT, int *cases)
{
    int fails = 0;
    for (size_t f = 0; f < sizeof(QMAT_FMTS) / sizeof(QMAT_FMTS[0]); f++)
        for (size_t g = 0; g < sizeof(QMAT_GROUPS) / sizeof(QMAT_GROUPS[0]); g++)
            for (int zp = 0; zp <= (QMAT_FMTS[f].fmt != LINEAR_FMT_FP8); zp++)
                for (int gi = 0; gi <= (QMAT_GROUPS[g] > 0); gi++)
                    for (size_t a = 0; a < nT; a++) {
                        int out = QMAT_OUTS[check_rand_int(0, 4)];
                        int in = QMAT_INS[check_rand_int(0, 4)];
                        fails += fn(QMAT_FMTS[f].fmt, QMAT_FMTS[f].bits, QMAT_GROUPS[g], zp, gi,
                                    Ts[a], out, in, check_rand_int(0, 1)) != 0;
                        (*cases)++;
                    }
    return fails;
}

static inline const char *fmt_name(enum linear_fmt f)
{
    return f == LINEAR_FMT_INT ? "int" : f == LINEAR_FMT_INT4 ? "int4" : "fp8";
}

#endif
