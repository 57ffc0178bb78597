/*
 * test_attention_gpu: the CUDA attention (kernels/cuda/attention.cu) against attention_ref on fresh
 * random q/k/v: GQA ratios 1, 2 and 6, head dims 10/64/128/256, query blocks at q_off > 0 (KV
 * decoding), sliding windows of 1, 3, 16, 100 and none, and key ranges longer than the kernel's
 * 128-key chunk (online-softmax rescaling); through the device table with guarded device
 * buffers (the full kv_cap cache, masked slots NaN) and through attention(KERN_IMPL_CUDA, ...),
 * which uploads only the visible keys. Masked cache slots are NaN, so any read of a key outside
 * the causal / sliding window poisons the output. Window 1 returns v[p] exactly.
 *
 * Tolerance: as test_attention (the CPU kernel is also fp32 with an fp32 softmax): per (row,
 * head), |d| <= 2((2 ds + 2 gamma_n + 8u) max|v| + u|ref|) with ds = gamma_hd * scale *
 * max_j sum_i |q_i k_ji|, n = visible keys; the kernel's chunked rescaling adds one rounding
 * per 128 keys to the sum and the accumulators, inside the gamma_n terms.
 *
 * Skips (exit 77, "SKIP: no CUDA device (<reason>)") when the backend is unavailable: no
 * libexaq_cuda.so, no driver or no device.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "kernels/attention.h"
#include "tests/kernels/check.h"
#include "tests/kernels/check_gpu.h"
#include "tests/kernels/attn_case.h"

static int run_case(int T, int nh, int nkv, int hd, int q_off, int window)
{
    char what[160];
    snprintf(what, sizeof(what), "cuda attention T=%d nh=%d nkv=%d hd=%d q_off=%d window=%d", T, nh,
             nkv, hd, q_off, window);
    struct attn_case c;
    attn_case_new(&c, T, nh, nkv, hd, q_off, window);
    size_t nq = c.nq, nk = c.nk;
    float *got = check_buf_new(nq);
    struct check_tol tol = { 1e-9, 0, 0 };

    /* Device level: the whole cache, NaN slots included. */
    struct cuda_gbuf dq, dk, dv, dout;
    LDR_OK(cuda_gbuf_new(&dq, nq, c.q));
    LDR_OK(cuda_gbuf_new(&dk, nk, c.k));
    LDR_OK(cuda_gbuf_new(&dv, nk, c.v));
    LDR_OK(cuda_gbuf_new(&dout, nq, NULL));
    struct cuda_attn da = {
        .T = T,
        .n_heads = nh,
        .n_kv_heads = nkv,
        .head_dim = hd,
        .q = dq.d,
        .k = dk.d,
        .v = dv.d,
        .kv_cap = c.a.kv_cap,
        .q_off = q_off,
        .window = window,
        .scale = c.a.scale,
        .out = dout.d,
    };
    GPU_OK(A->attention(&da));
    GPU_OK(A->sync());
    LDR_OK(cuda_gbuf_get(&dout, got));
    int rc = check_close(what, got, c.ref, nq, &tol, c.bound);
    rc |= check_buf_guards(what, got, nq);
    struct cuda_gbuf *bufs[] = { &dq, &dk, &dv, &dout };
    rc |= gbufs_done(what, bufs, 4);

    /* Dispatch with host pointers. */
    float *got2 = check_buf_new(nq);
    c.a.out = got2;
    assert_int_equal(attention(KERN_IMPL_CUDA, &c.a), 0);
    rc |= check_close(what, got2, c.ref, nq, &tol, c.bound);
    rc |= check_buf_guards(what, got2, nq);
    if (rc == 0 && window == 1 &&
        (attn_case_window1_exact(&c, got) || attn_case_window1_exact(&c, got2))) {
        printf("%s: window 1 output is not v[p]\n", what);
        rc = -1;
    }
    check_buf_free(got);
    check_buf_free(got2);
    attn_case_free(&c);
    return rc;
}

static void test_attention_gpu_vs_ref(void **state)
{
    (void)state;
    static const int heads[][2] = { { 4, 2 }, { 2, 2 }, { 6, 1 } };
    static const int hds[] = { 64, 128, 10 };
    static const int windows[] = { 0, 1, 3, 16 };
    int fails = 0, cases = 0;
    for (size_t a = 0; a < EXAQ_ARRAY_LEN(heads); a++)
        for (size_t b = 0; b < EXAQ_ARRAY_LEN(hds); b++)
            for (size_t c = 0; c < EXAQ_ARRAY_LEN(windows); c++) {
                int T = check_rand_int(1, 40);
                int q_off = check_rand_int(0, 1) ? 0 : check_rand_int(1, 60);
                fails += run_case(T, heads[a][0], heads[a][1], hds[b], q_off, windows[c]) != 0;
                cases++;
            }
    /* Prefill and decode shapes with more keys than one 128-key chunk; head_dim 256 (two
     * dims per thread); a window longer than a chunk. */
    fails += run_case(300, 4, 2, 64, 0, 0) != 0;
    fails += run_case(1, 4, 2, 64, 299, 0) != 0;
    fails += run_case(1, 4, 2, 64, 299, 100) != 0;
    fails += run_case(20, 2, 1, 256, 400, 0) != 0;
    fails += run_case(40, 4, 4, 64, 200, 130) != 0;
    cases += 5;
    printf("# %d cuda attention cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_attention_gpu_errors(void **state)
{
    (void)state;
    static float q[600], k[600], v[600], o[600];
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
    for (int i = 0; i < 64; i++)
        v[i] = (float)i;
    assert_int_equal(attention(KERN_IMPL_CUDA, &a), 0);
    for (int i = 0; i < 64; i++)
        assert_true(o[i] == (float)i); /* one key: weight exactly 1 */
    a.q_off = 1;                       /* needs key 1, cache holds 1 */
    assert_int_equal(attention(KERN_IMPL_CUDA, &a), -EINVAL);
    a.q_off = 0;
    a.head_dim = CUDA_ATTN_MAX_HEAD_DIM + 2; /* beyond the kernel's per-thread dims */
    assert_int_equal(attention(KERN_IMPL_CUDA, &a), -ENOSYS);
    assert_true(strstr(cuda_last_error(), "head_dim") != NULL);
}

int main(void)
{
    if (check_gpu_open() < 0)
        return 77;
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_gpu_vs_ref),
        cmocka_unit_test(test_attention_gpu_errors),
    };
    return check_gpu_close(cmocka_run_group_tests(tests, NULL, NULL));
}
