/*
 * special_cases: the special-value checks that a CPU kernel test and its _gpu twin both run,
 * each through the dispatch function with the implementation under test. Include after
 * cmocka.h.
 */
#ifndef EXAQ_TESTS_SPECIAL_CASES_H
#define EXAQ_TESTS_SPECIAL_CASES_H

#include <errno.h>
#include <math.h>

#include "kernels/lse.h"
#include "kernels/rmsnorm.h"

/* lse: an all -inf row gives -inf, a +inf gives +inf, a NaN gives NaN, a plain row its
 * log-sum-exp, one element itself. */
static inline void lse_check_special(enum kern_impl impl)
{
    float x[4 * 9], out[4];
    for (int i = 0; i < 36; i++)
        x[i] = (float)(i % 9) * 0.5f;
    for (int i = 0; i < 9; i++)
        x[i] = -INFINITY; /* row 0: all -inf */
    x[9 + 4] = INFINITY;  /* row 1: +inf */
    x[18 + 8] = NAN;      /* row 2: NaN */
    assert_int_equal(lse(impl, out, x, 4, 9), 0);
    assert_true(out[0] == -INFINITY);
    assert_true(out[1] == INFINITY);
    assert_true(isnan(out[2]));
    double s = 0;
    for (int i = 0; i < 9; i++)
        s += exp(i * 0.5);
    assert_true(fabs(out[3] - log(s)) < 1e-5);
    float one = -3.25f, r;
    assert_int_equal(lse(impl, &r, &one, 1, 1), 0);
    assert_true(r == -3.25f);
    assert_int_equal(lse(impl, out, x, 4, 0), -EINVAL);
}

/* rmsnorm: a NaN poisons its own row only; an all-zero row stays finite and zero (eps). */
static inline void rmsnorm_check_special(enum kern_impl impl)
{
    float x[16], y[16], r[16];
    for (int i = 0; i < 16; i++)
        x[i] = (float)i;
    x[3] = NAN;
    assert_int_equal(rmsnorm(impl, y, x, NULL, 2, 8, 1e-5f), 0);
    rmsnorm_ref(r, x, NULL, 2, 8, 1e-5f);
    for (int i = 0; i < 8; i++)
        assert_true(isnan(y[i]) && isnan(r[i]));
    for (int i = 8; i < 16; i++)
        assert_true(isfinite(y[i]) && fabsf(y[i] - r[i]) <= 1e-6f * fabsf(r[i]));
    float z[8] = { 0 };
    assert_int_equal(rmsnorm(impl, y, z, NULL, 1, 8, 1e-5f), 0);
    for (int i = 0; i < 8; i++)
        assert_true(y[i] == 0.0f);
    assert_int_equal(rmsnorm(impl, y, x, NULL, 1, 0, 1e-5f), -EINVAL);
}

#endif
