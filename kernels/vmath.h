/*
 * vmath: the one 8-wide fp32 vector type (v8f) and its helpers for the fast CPU kernels and the
 * column loops of worker/compress/: unaligned load/store, horizontal sum and max, exp, and
 * (under __AVX2__) the in-register 8x8 transpose.
 *
 * v8_exp is the Cephes expf scheme: n = round(x / ln 2), r = x - n ln 2 (in two parts), a
 * degree-5 polynomial for e^r on [-ln2/2, ln2/2], then scaling by 2^n through the exponent
 * bits. Relative error <= 2 ulp on [-87.3, 88.3] (checked in tests/kernels/test_swiglu.c
 * against exp() in double) on [-87.33, 88.72]; inputs below -87.34 give 0, inputs above
 * ln(FLT_MAX) = 88.7228 give +inf, and NaN stays NaN. 2^n is built in the exponent field, with
 * n = 128 (the top of the range) done as 2^127 * 2.
 */
#ifndef EXAQ_VMATH_H
#define EXAQ_VMATH_H

#include <stdint.h>
#include <string.h>

/* All helpers are static inline, so the 32-byte vector ABI warning clang gives for builds
 * without AVX (the sanitizer and fuzz configurations) does not apply. GCC still prints a
 * one-line note per file in those builds; it is not a warning. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f v8_loadu(const float *p)
{
    v8f v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void v8_storeu(float *p, v8f v)
{
    memcpy(p, &v, sizeof(v));
}

static inline v8f v8_set1(float f)
{
    return (v8f){ f, f, f, f, f, f, f, f };
}

static inline float v8_hsum(v8f v)
{
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline v8f v8_select(v8i m, v8f a, v8f b)
{
    return (v8f)((m & (v8i)a) | (~m & (v8i)b));
}

static inline v8f v8_max(v8f a, v8f b)
{
    return v8_select(a > b, a, b);
}

static inline v8f v8_min(v8f a, v8f b)
{
    return v8_select(a < b, a, b);
}

static inline float v8_hmax(v8f v)
{
    float m = v[0];
    for (int i = 1; i < 8; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static inline v8f v8_exp(v8f x)
{
    const v8f hi = v8_set1(88.7228391117f), lo = v8_set1(-87.3365447504f);
    v8f x0 = x;
    v8i under = x < lo;
    x = v8_min(v8_max(x, lo), hi);
    /* n = floor(x * log2(e) + 0.5) */
    v8f fx = x * v8_set1(1.44269504088896341f) + v8_set1(0.5f);
    v8i ti = __builtin_convertvector(fx, v8i);
    v8f tf = __builtin_convertvector(ti, v8f);
    v8i gt = tf > fx;
    tf -= (v8f)(gt & (v8i)v8_set1(1.0f));
    ti = __builtin_convertvector(tf, v8i);
    x -= tf * v8_set1(0.693359375f);
    x -= tf * v8_set1(-2.12194440e-4f);
    v8f z = x * x;
    v8f y = v8_set1(1.9875691500e-4f);
    y = y * x + v8_set1(1.3981999507e-3f);
    y = y * x + v8_set1(8.3334519073e-3f);
    y = y * x + v8_set1(4.1665795894e-2f);
    y = y * x + v8_set1(1.6666665459e-1f);
    y = y * x + v8_set1(5.0000001201e-1f);
    y = y * z + x + v8_set1(1.0f);
    v8i big = ti > 127;
    v8i e = (ti + (big & -1) + 127) << 23; /* 2^(n-1) when n = 128 (big is -1 there) */
    v8f r = y * (v8f)e;
    r = v8_select(big, r * v8_set1(2.0f), r);
    r = (v8f)((v8i)r & ~under);
    r = v8_select(x0 > hi, v8_set1(__builtin_inff()), r);
    return v8_select(x0 != x0, x0, r);
}

#if defined(__AVX2__)
#include <immintrin.h>

/* In-place 8x8 transpose: r[i][k] -> r[k][i] (the B-panel packing of the dense and quantized
 * GEMMs). */
static inline void v8_transpose8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

#endif
