/*
 * check: the fast-vs-reference comparison every kernel test uses (STYLE 3.5, ggml/llm.c style).
 *
 * check_close() compares `got` to `ref` elementwise and over the whole buffer:
 *   - NaN/inf: where ref is NaN got must be NaN, where ref is +-inf got must be the same inf,
 *     and got must be finite wherever ref is finite;
 *   - NMSE = sum (got-ref)^2 / sum ref^2 <= tol->nmse, a whole-buffer backstop against gross
 *     errors, applied from CHECK_NMSE_MIN_N values on (a handful of values with cancellation
 *     makes it meaningless; the elementwise bound is the criterion there);
 *   - max-abs, magnitude scaled: |got-ref| <= tol->atol * max|ref| + tol->rtol * |ref|, or, when
 *     a per-element bound array is given (e.g. the Higham bound gamma_K * sum|x_k w_k| of a dot
 *     product, computed by the test), |got-ref| <= bound[i].
 * The first 10 mismatches are printed, then the call returns non-zero so the cmocka assertion
 * in the test fails. Guarded buffers (check_buf_new) carry sentinel floats on both sides so a
 * kernel writing out of bounds is caught by check_buf_guards().
 *
 * Inputs are drawn from a xorshift generator seeded from the clock (fresh every run) unless
 * EXAQ_TEST_SEED is set; the seed is printed so a failure can be replayed.
 */
#ifndef EXAQ_TEST_CHECK_H
#define EXAQ_TEST_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda.h"

/* The CPU tests call each dispatch function once with KERN_IMPL_CUDA: it computes (0) where
 * the CUDA backend loads, and returns -ENOSYS everywhere else (the _gpu tests check the
 * results). */
#define assert_cuda_dispatch(call) assert_int_equal((call), cuda_api_get(NULL) ? 0 : -ENOSYS)

struct check_tol {
    double nmse;
    double atol; /* times max|ref| */
    double rtol; /* times |ref| */
};

static uint64_t check_rng_state = 0x9e3779b97f4a7c15ull;

/* Seeds the generator (fresh per run, or EXAQ_TEST_SEED) and prints the seed. */
static inline void check_seed(void)
{
    const char *e = getenv("EXAQ_TEST_SEED");
    uint64_t s;
    if (e && *e) {
        s = strtoull(e, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    }
    if (s == 0)
        s = 1;
    check_rng_state = s;
    printf("# seed %llu (set EXAQ_TEST_SEED to replay)\n", (unsigned long long)s);
}

static inline uint64_t check_rand_u64(void)
{
    uint64_t x = check_rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    check_rng_state = x;
    return x;
}

/* Uniform in [lo, hi). */
static inline float check_uniform(float lo, float hi)
{
    double u = (double)(check_rand_u64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

/* Standard normal (Box-Muller). */
static inline float check_normal(void)
{
    double u1 = ((double)(check_rand_u64() >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(check_rand_u64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline void check_fill_normal(float *x, size_t n, float std)
{
    for (size_t i = 0; i < n; i++)
        x[i] = std * check_normal();
}

static inline int check_rand_int(int lo, int hi) /* inclusive */
{
    return lo + (int)(check_rand_u64() % (uint64_t)(hi - lo + 1));
}

#define CHECK_GUARD       64
#define CHECK_NMSE_MIN_N  64
#define CHECK_GUARD_VALUE 1234567.875f

/* max_i |a_i| and max_i |a_i - b_i|, in double. */
static inline double check_max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i]));
    return m;
}

static inline double check_max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

/* A buffer of n floats with CHECK_GUARD sentinel floats before and after; free with
 * check_buf_free. The payload is filled with NaN so a kernel that skips an element is seen. */
static inline float *check_buf_new(size_t n)
{
    float *b = malloc((n + 2 * CHECK_GUARD) * sizeof(float));
    if (!b)
        abort();
    for (size_t i = 0; i < CHECK_GUARD; i++) {
        b[i] = CHECK_GUARD_VALUE;
        b[CHECK_GUARD + n + i] = CHECK_GUARD_VALUE;
    }
    for (size_t i = 0; i < n; i++)
        b[CHECK_GUARD + i] = NAN;
    return b + CHECK_GUARD;
}

static inline int check_buf_guards(const char *what, const float *p, size_t n)
{
    const float *b = p - CHECK_GUARD;
    for (size_t i = 0; i < CHECK_GUARD; i++) {
        if (b[i] != CHECK_GUARD_VALUE || b[CHECK_GUARD + n + i] != CHECK_GUARD_VALUE) {
            printf("%s: sentinel overwritten (%s the buffer)\n", what,
                   b[i] != CHECK_GUARD_VALUE ? "before" : "after");
            return -1;
        }
    }
    return 0;
}

static inline void check_buf_free(float *p)
{
    if (p)
        free(p - CHECK_GUARD);
}

static inline int check_close(const char *what, const float *got, const float *ref, size_t n,
                              const struct check_tol *tol, const float *bound)
{
    double maxref = 0.0, num = 0.0, den = 0.0, worst = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > maxref)
            maxref = fabs(ref[i]);
    double scale = maxref > 0.0 ? maxref : 1.0;
    for (size_t i = 0; i < n; i++) {
        double r = ref[i], g = got[i];
        int ok;
        if (isnan(r))
            ok = isnan(g);
        else if (isinf(r))
            ok = g == r;
        else if (!isfinite(g))
            ok = 0;
        else {
            double d = fabs(g - r);
            num += d * d;
            den += r * r;
            ok = d <= (bound ? (double)bound[i] : tol->atol * scale + tol->rtol * fabs(r));
            if (d / scale > worst)
                worst = d / scale;
        }
        if (!ok) {
            if (bad < 10)
                printf("%s: mismatch at %zu: got %.9g ref %.9g (|d| %.3g, allowed %.3g)\n", what, i,
                       g, r, fabs(g - r),
                       bound ? (double)bound[i] : tol->atol * scale + tol->rtol * fabs(r));
            bad++;
        }
    }
    double nmse = den > 0.0 ? num / den : 0.0;
    if (n >= CHECK_NMSE_MIN_N && nmse > tol->nmse) {
        printf("%s: NMSE %.3g exceeds %.3g\n", what, nmse, tol->nmse);
        bad++;
    }
    if (bad)
        printf("%s: FAILED (%d mismatches over %zu values; max|d|/max|ref| %.3g, NMSE %.3g)\n",
               what, bad, n, worst, nmse);
    return bad ? -1 : 0;
}

#endif
