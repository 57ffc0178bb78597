/*
 * test_rope: rope_cpu against rope_ref (NeoX half-split rotation) on fresh random q/k blocks,
 * several head dims, positions far from 0, fp32 and bf16 cos/sin; plus two checks against the
 * definition: position 0 is the identity, and rotating by p then reading the dot product of q
 * at position p with k at position p' depends only on p - p' (the relative-position property).
 *
 * Tolerance: both variants use the same fp32 angle and the same double cos/sin rounded to fp32,
 * so the only difference is how x1*c - x2*s is rounded (FMA contraction may differ): at most
 * 2u(|x1| + |x2|) per output; we allow 4u(|x1| + |x2|), u = 2^-24.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/par.h"
#include "kernels/rope.h"
#include "tests/kernels/check.h"

static void make_inv(float *inv, int hd, double theta)
{
    for (int i = 0; i < hd / 2; i++)
        inv[i] = (float)(1.0 / pow(theta, (2.0 * i) / hd));
}

static int run_case(int T, int nh, int hd, int pos0, int cs_bf16)
{
    char what[128];
    snprintf(what, sizeof(what), "rope T=%d nh=%d hd=%d pos0=%d bf16=%d", T, nh, hd, pos0, cs_bf16);
    size_t n = (size_t)T * nh * hd;
    float *x = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    float *got = check_buf_new(n), *bound = malloc(sizeof(float) * n);
    float inv[128];
    assert_true(x && ref && bound);
    make_inv(inv, hd, 1e6);
    check_fill_normal(x, n, 3.0f);
    memcpy(ref, x, sizeof(float) * n);
    memcpy(got, x, sizeof(float) * n);
    rope_ref(ref, T, nh, hd, pos0, inv, cs_bf16);
    assert_int_equal(rope(KERN_IMPL_CPU, got, T, nh, hd, pos0, inv, cs_bf16), 0);
    const double u = 1.0 / 16777216.0;
    int half = hd / 2;
    for (size_t r = 0; r < n / hd; r++)
        for (int i = 0; i < half; i++) {
            float b = (float)(4.0 * u * (fabs(x[r * hd + i]) + fabs(x[r * hd + i + half])));
            bound[r * hd + i] = bound[r * hd + i + half] = b + 1e-37f;
        }
    struct check_tol tol = { 1e-9, 0, 0 }; /* NMSE: gross-error backstop (observed ~1e-12) */
    int rc = check_close(what, got, ref, n, &tol, bound);
    rc |= check_buf_guards(what, got, n);
    free(x);
    free(ref);
    check_buf_free(got);
    free(bound);
    return rc;
}

static void test_rope_vs_ref(void **state)
{
    (void)state;
    static const int hds[] = { 2, 8, 10, 64, 128 };
    int fails = 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(hds); a++) {
            fails += run_case(check_rand_int(1, 40), check_rand_int(1, 5), hds[a],
                              check_rand_int(0, 70000), check_rand_int(0, 1)) != 0;
            fails += run_case(300, 4, hds[a], 0, 0) != 0;
        }
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
}

static double dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void test_rope_definition(void **state)
{
    (void)state;
    const int hd = 64;
    float inv[32], q[64], k[64], x[64];
    make_inv(inv, hd, 1e4);
    check_fill_normal(q, hd, 1.0f);
    check_fill_normal(k, hd, 1.0f);
    /* Position 0: cos = 1, sin = 0, so the identity. */
    memcpy(x, q, sizeof(q));
    assert_int_equal(rope(KERN_IMPL_CPU, x, 1, 1, hd, 0, inv, 0), 0);
    for (int i = 0; i < hd; i++)
        assert_true(x[i] == q[i]);
    /* <R(p) q, R(p') k> depends only on p - p'. */
    double ref = 0;
    for (int s = 0; s < 4; s++) {
        int p = 10 + 37 * s, pk = p - 7;
        float qa[64], ka[64];
        memcpy(qa, q, sizeof(q));
        memcpy(ka, k, sizeof(k));
        assert_int_equal(rope(KERN_IMPL_CPU, qa, 1, 1, hd, p, inv, 0), 0);
        assert_int_equal(rope(KERN_IMPL_CPU, ka, 1, 1, hd, pk, inv, 0), 0);
        double d = dot(qa, ka, hd);
        if (s == 0)
            ref = d;
        else
            assert_true(fabs(d - ref) <= 1e-4 * (1.0 + fabs(ref)));
    }
    /* Norm is preserved by a rotation. */
    memcpy(x, q, sizeof(q));
    assert_int_equal(rope(KERN_IMPL_CPU, x, 1, 1, hd, 12345, inv, 0), 0);
    assert_true(fabs(dot(x, x, hd) - dot(q, q, hd)) <= 1e-5 * dot(q, q, hd));
    assert_int_equal(rope(KERN_IMPL_CPU, x, 1, 1, 63, 0, inv, 0), -EINVAL);
    assert_cuda_dispatch(rope(KERN_IMPL_CUDA, x, 1, 1, hd, 0, inv, 0));
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_vs_ref),
        cmocka_unit_test(test_rope_definition),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
