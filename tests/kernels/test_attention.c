/*
 * test_attention: attention_cpu against attention_ref on fresh random q/k/v: GQA ratios 1, 2
 * and 6, head dims 64/128 (vector path) and 10 (scalar path), query blocks starting at q_off > 0
 * (KV-cache decoding), sliding windows of 1, 3 and 16 and none. Masked cache slots are filled
 * with NaN, so any read of a key outside the causal / sliding window poisons the output and
 * fails the test. Also: window 1 returns v of the query's own position exactly.
 *
 * Tolerance, per (row, head), from the error chain: scores carry at most
 * ds = gamma_hd * scale * max_j sum_i |q_i k_ji| (dot-product bound); the softmax weights are
 * then off by a relative 2 ds + 4u (exp, 2 ulp) + gamma_n (the sum); the weighted sum of values
 * adds gamma_n relative. So |d| <= (2 ds + 2 gamma_n + 8u) max|v| + u|ref|, and we allow twice
 * that (u = 2^-24, n = visible keys).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/attention.h"
#include "kernels/par.h"
#include "tests/kernels/check.h"
#include "tests/kernels/attn_case.h"

static int run_case(int T, int nh, int nkv, int hd, int q_off, int window)
{
    char what[160];
    snprintf(what, sizeof(what), "attention T=%d nh=%d nkv=%d hd=%d q_off=%d window=%d", T, nh, nkv,
             hd, q_off, window);
    struct attn_case c;
    attn_case_new(&c, T, nh, nkv, hd, q_off, window);
    float *got = check_buf_new(c.nq);
    c.a.out = got;
    assert_int_equal(attention(KERN_IMPL_CPU, &c.a), 0);
    struct check_tol tol = { 1e-9, 0, 0 };
    int rc = check_close(what, got, c.ref, c.nq, &tol, c.bound);
    rc |= check_buf_guards(what, got, c.nq);
    if (rc == 0 && window == 1 && attn_case_window1_exact(&c, got)) {
        printf("%s: window 1 output is not v[p]\n", what);
        rc = -1;
    }
    check_buf_free(got);
    attn_case_free(&c);
    return rc;
}

static void test_attention_vs_ref(void **state)
{
    (void)state;
    static const int heads[][2] = { { 4, 2 }, { 2, 2 }, { 6, 1 } };
    static const int hds[] = { 64, 128, 10 };
    static const int windows[] = { 0, 1, 3, 16 };
    int fails = 0, cases = 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(heads); a++)
            for (size_t b = 0; b < EXAQ_ARRAY_LEN(hds); b++)
                for (size_t c = 0; c < EXAQ_ARRAY_LEN(windows); c++) {
                    int T = check_rand_int(1, 40);
                    int q_off = check_rand_int(0, 1) ? 0 : check_rand_int(1, 60);
                    fails += run_case(T, heads[a][0], heads[a][1], hds[b], q_off, windows[c]) != 0;
                    cases++;
                }
        /* Prefill-sized and decode-sized blocks. */
        fails += run_case(300, 4, 2, 64, 0, 0) != 0;
        fails += run_case(1, 4, 2, 64, 299, 0) != 0;
        fails += run_case(1, 4, 2, 64, 299, 100) != 0;
        cases += 3;
    }
    par_set_nthreads(0);
    printf("# %d attention cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_attention_errors(void **state)
{
    (void)state;
    float q[64] = { 0 }, k[64] = { 0 }, v[64] = { 0 }, o[64];
    struct attn_args a = {
        .T = 1,
        .n_heads = 1,
        .n_kv_heads = 1,
        .head_dim = 64,
        .q = q,
        .k = k,
        .v = v,
        .kv_cap = 1,
        .q_off = 0,
        .window = 0,
        .scale = 0.125f,
        .out = o,
    };
    assert_int_equal(attention(KERN_IMPL_CPU, &a), 0);
    assert_cuda_dispatch(attention(KERN_IMPL_CUDA, &a));
    a.q_off = 1; /* needs key 1, cache holds 1 */
    assert_int_equal(attention(KERN_IMPL_CPU, &a), -EINVAL);
    a.q_off = 0;
    a.n_heads = 3;
    a.n_kv_heads = 2;
    assert_int_equal(attention(KERN_IMPL_CPU, &a), -EINVAL);
    assert_int_equal(attention(KERN_IMPL_CPU, NULL), -EINVAL);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_vs_ref),
        cmocka_unit_test(test_attention_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
