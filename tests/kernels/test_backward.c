/*
 * test_backward: every backward op of kernels/backward.h against central finite differences of
 * a double-precision forward written here from the definition, then the fast CPU variants
 * against the reference, on fresh random inputs (seed printed; EXAQ_TEST_SEED replays).
 *
 * Finite differences: f(p) = sum(dy * op(p)) in double (the losses: the loss itself), and
 * g_i = (f(p + h e_i) - f(p - h e_i)) / 2h with h = 1e-5 * max(1, |p_i|): truncation error
 * O(h^2 f''') ~ 1e-10 and cancellation ~ 1e-16 / h ~ 1e-11 relative, far below fp32.
 * Tolerance of the reference against FD: |d| <= 2e-5 * max|fd| + 2e-5 * |fd|. The reference
 * accumulates in double and rounds each output once (2^-24 relative); what is left comes from
 * the fp32 inputs of intermediate terms (the cos/sin of RoPE are fp32 in both) and the prefill
 * (outputs accumulate onto random values of the same magnitude: one more fp32 rounding).
 * Measured worst case over 6 seeds (build with -DFD_TOL=... to see): 1.3e-6 of max|fd| for
 * KL, <= 5e-7 for the others, so the bound has a 15x margin while a wrong sign, factor or index
 * is off by O(1). The tied-head composite runs fp32 forward steps, hence 1e-4 there.
 * Fast vs reference: fp32 sums of K terms against double, bounded by gamma_K * sum |a b|; we
 * allow 1e-5 * K^0.5 of max|ref| + 1e-5 |ref| (random-sign sums grow as sqrt(K)) with K the
 * longest sum of the op, and an NMSE backstop of 1e-9.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/backward.h"
#include "kernels/par.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/check.h"

#ifndef FD_TOL
#define FD_TOL 2e-5
#endif

typedef double (*fwd_fn)(void *ctx, const double *p);

/* Compares got[0..n) with the central differences of f over p[off .. off+n) (p is restored). */
static int fd_check(const char *what, fwd_fn f, void *ctx, double *p, size_t off, size_t n,
                    const float *got)
{
    float *fd = malloc(sizeof(float) * n);
    assert_non_null(fd);
    for (size_t i = 0; i < n; i++) {
        double v = p[off + i], h = 1e-5 * fmax(1.0, fabs(v));
        p[off + i] = v + h;
        double fp = f(ctx, p);
        p[off + i] = v - h;
        double fm = f(ctx, p);
        p[off + i] = v;
        fd[i] = (float)((fp - fm) / (2.0 * h));
    }
    struct check_tol tol = { 1e-8, FD_TOL, FD_TOL };
    int rc = check_close(what, got, fd, n, &tol, NULL);
    free(fd);
    return rc;
}

static float *randv(size_t n, float std)
{
    float *v = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(v);
    check_fill_normal(v, n, std);
    return v;
}

static double *to_d(const float *a, size_t n, double *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = a[i];
    return dst;
}

/* got = after - before (the accumulated part). */
static float *delta(const float *after, const float *before, size_t n)
{
    float *d = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = after[i] - before[i];
    return d;
}

static float *dup(const float *a, size_t n)
{
    float *d = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(d);
    memcpy(d, a, sizeof(float) * n);
    return d;
}

static int fast_check(const char *what, const float *got, const float *ref, size_t n, int K)
{
    struct check_tol tol = { 1e-9, 1e-5 * sqrt((double)(K > 1 ? K : 1)), 1e-5 };
    return check_close(what, got, ref, n, &tol, NULL);
}

/* ---- embedding ---------------------------------------------------------------------------- */

struct emb_ctx {
    const int32_t *ids;
    const float *dy;
    int T, H;
};

static double emb_f(void *cp, const double *E)
{
    struct emb_ctx *c = cp;
    double s = 0;
    for (int t = 0; t < c->T; t++)
        for (int i = 0; i < c->H; i++)
            s += c->dy[(size_t)t * c->H + i] * E[(size_t)c->ids[t] * c->H + i];
    return s;
}

static void test_embedding(void **state)
{
    (void)state;
    int V = 11, H = 6, T = 9;
    int32_t ids[9];
    for (int t = 0; t < T; t++)
        ids[t] = check_rand_int(0, V - 1);
    ids[3] = ids[1]; /* a repeated id sums its rows */
    float *E = randv((size_t)V * H, 1), *dy = randv((size_t)T * H, 1);
    float *pre = randv((size_t)V * H, 1), *dE = dup(pre, (size_t)V * H);
    assert_int_equal(embedding_bwd(KERN_IMPL_CPU, dE, dy, ids, T, H), 0);
    float *got = delta(dE, pre, (size_t)V * H);
    double *p = to_d(E, (size_t)V * H, malloc(sizeof(double) * V * H));
    struct emb_ctx c = { ids, dy, T, H };
    assert_int_equal(fd_check("embedding dE", emb_f, &c, p, 0, (size_t)V * H, got), 0);
    assert_int_equal(embedding_bwd(KERN_IMPL_CUDA, dE, dy, ids, T, H), -ENOSYS);
    free(E), free(dy), free(pre), free(dE), free(got), free(p);
}

/* ---- linear ------------------------------------------------------------------------------- */

struct lin_ctx {
    const float *dy;
    int T, in, out;
};

/* p = x [T][in] then W [out][in]. */
static double lin_f(void *cp, const double *p)
{
    struct lin_ctx *c = cp;
    const double *x = p, *W = p + (size_t)c->T * c->in;
    double s = 0;
    for (int t = 0; t < c->T; t++)
        for (int o = 0; o < c->out; o++) {
            double y = 0;
            for (int i = 0; i < c->in; i++)
                y += x[(size_t)t * c->in + i] * W[(size_t)o * c->in + i];
            s += c->dy[(size_t)t * c->out + o] * y;
        }
    return s;
}

static int lin_case(int T, int in, int out, int fd)
{
    char what[96];
    size_t nx = (size_t)T * in, nw = (size_t)out * in, ny = (size_t)T * out;
    float *x = randv(nx, 1), *W = randv(nw, 0.3f), *dy = randv(ny, 1);
    float *px = randv(nx, 1), *pw = randv(nw, 1);
    float *dx = dup(px, nx), *dW = dup(pw, nw);
    int rc = 0;
    linear_bwd_ref(dx, dW, dy, x, W, T, in, out);
    float *gx = delta(dx, px, nx), *gw = delta(dW, pw, nw);
    if (fd) {
        double *p = malloc(sizeof(double) * (nx + nw));
        to_d(x, nx, p);
        to_d(W, nw, p + nx);
        struct lin_ctx c = { dy, T, in, out };
        snprintf(what, sizeof(what), "linear T=%d in=%d out=%d dx", T, in, out);
        rc |= fd_check(what, lin_f, &c, p, 0, nx, gx);
        snprintf(what, sizeof(what), "linear T=%d in=%d out=%d dW", T, in, out);
        rc |= fd_check(what, lin_f, &c, p, nx, nw, gw);
        free(p);
    }
    /* Fast vs reference, accumulating onto the same prefill. */
    float *fx = dup(px, nx), *fw = dup(pw, nw);
    assert_int_equal(linear_bwd(KERN_IMPL_CPU, fx, fw, dy, x, W, T, in, out), 0);
    snprintf(what, sizeof(what), "linear_cpu T=%d in=%d out=%d dx", T, in, out);
    rc |= fast_check(what, fx, dx, nx, out);
    snprintf(what, sizeof(what), "linear_cpu T=%d in=%d out=%d dW", T, in, out);
    rc |= fast_check(what, fw, dW, nw, T);
    /* dx or dW alone. */
    float *ox = dup(px, nx);
    assert_int_equal(linear_bwd(KERN_IMPL_CPU, ox, NULL, dy, x, W, T, in, out), 0);
    rc |= fast_check("linear_cpu dx only", ox, dx, nx, out);
    free(x), free(W), free(dy), free(px), free(pw), free(dx), free(dW), free(gx), free(gw);
    free(fx), free(fw), free(ox);
    return rc;
}

static void test_linear(void **state)
{
    (void)state;
    int fails = 0;
    fails += lin_case(5, 7, 6, 1) != 0;
    fails += lin_case(1, 16, 3, 1) != 0;
    fails += lin_case(13, 33, 17, 1) != 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        fails += lin_case(64, 256, 96, 0) != 0;
        fails += lin_case(100, 300, 257, 0) != 0;
        fails += lin_case(7, 1024, 256, 0) != 0;
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
    float a[4] = { 0 };
    assert_int_equal(linear_bwd(KERN_IMPL_CPU, a, NULL, a, a, NULL, 1, 2, 2), -EINVAL);
    assert_int_equal(linear_bwd(KERN_IMPL_CUDA, a, a, a, a, a, 1, 2, 2), -ENOSYS);
}

/* ---- rmsnorm (hidden and per-head QK-norm) ------------------------------------------------- */

struct rms_ctx {
    const float *dy;
    int rows, n, with_w;
    float eps;
};

/* p = x [rows][n] then w [n]. */
static double rms_f(void *cp, const double *p)
{
    struct rms_ctx *c = cp;
    const double *x = p, *w = p + (size_t)c->rows * c->n;
    double s = 0;
    for (int r = 0; r < c->rows; r++) {
        const double *xr = x + (size_t)r * c->n;
        double ss = 0;
        for (int i = 0; i < c->n; i++)
            ss += xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / c->n + c->eps);
        for (int i = 0; i < c->n; i++)
            s += c->dy[(size_t)r * c->n + i] * (c->with_w ? w[i] : 1.0) * xr[i] * inv;
    }
    return s;
}

static int rms_case(int rows, int n, int with_w, int fd)
{
    char what[96];
    size_t nx = (size_t)rows * n;
    float *x = randv(nx, check_uniform(0.05f, 3.0f)), *w = randv((size_t)n, 0.2f);
    for (int i = 0; i < n; i++)
        w[i] += 1.0f;
    float *dy = randv(nx, 1), *px = randv(nx, 1), *pw = randv((size_t)n, 1);
    float *dx = dup(px, nx), *dw = dup(pw, (size_t)n);
    float eps = 1e-5f;
    int rc = 0;
    rmsnorm_bwd_ref(dx, with_w ? dw : NULL, dy, x, with_w ? w : NULL, rows, n, eps);
    if (fd) {
        float *gx = delta(dx, px, nx), *gw = delta(dw, pw, (size_t)n);
        double *p = malloc(sizeof(double) * (nx + n));
        to_d(x, nx, p);
        to_d(w, (size_t)n, p + nx);
        struct rms_ctx c = { dy, rows, n, with_w, eps };
        snprintf(what, sizeof(what), "rmsnorm rows=%d n=%d w=%d dx", rows, n, with_w);
        rc |= fd_check(what, rms_f, &c, p, 0, nx, gx);
        if (with_w) {
            snprintf(what, sizeof(what), "rmsnorm rows=%d n=%d dw", rows, n);
            rc |= fd_check(what, rms_f, &c, p, nx, (size_t)n, gw);
        }
        free(gx), free(gw), free(p);
    }
    float *fx = dup(px, nx), *fw = dup(pw, (size_t)n);
    assert_int_equal(
        rmsnorm_bwd(KERN_IMPL_CPU, fx, with_w ? fw : NULL, dy, x, with_w ? w : NULL, rows, n, eps),
        0);
    snprintf(what, sizeof(what), "rmsnorm_cpu rows=%d n=%d dx", rows, n);
    rc |= fast_check(what, fx, dx, nx, n);
    snprintf(what, sizeof(what), "rmsnorm_cpu rows=%d n=%d dw", rows, n);
    rc |= fast_check(what, fw, dw, (size_t)n, rows);
    free(x), free(w), free(dy), free(px), free(pw), free(dx), free(dw), free(fx), free(fw);
    return rc;
}

static void test_rmsnorm(void **state)
{
    (void)state;
    int fails = 0;
    fails += rms_case(3, 8, 1, 1) != 0;
    fails += rms_case(12, 16, 1, 1) != 0; /* QK-norm shape: T * heads rows of head_dim */
    fails += rms_case(2, 37, 0, 1) != 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        fails += rms_case(300, 64, 1, 0) != 0;
        fails += rms_case(64, 2048, 1, 0) != 0;
        fails += rms_case(5, 100, 0, 0) != 0;
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
}

/* ---- RoPE --------------------------------------------------------------------------------- */

struct rope_ctx {
    const float *dy, *inv;
    int T, nh, hd, pos0;
};

static double rope_f(void *cp, const double *x)
{
    struct rope_ctx *c = cp;
    int half = c->hd / 2;
    double s = 0;
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->nh; h++) {
            size_t b = ((size_t)t * c->nh + h) * c->hd;
            for (int i = 0; i < half; i++) {
                float ang = (float)(c->pos0 + t) * c->inv[i];
                double cs = (float)cos((double)ang), sn = (float)sin((double)ang);
                double x1 = x[b + i], x2 = x[b + i + half];
                s += c->dy[b + i] * (x1 * cs - x2 * sn) + c->dy[b + i + half] * (x2 * cs + x1 * sn);
            }
        }
    return s;
}

static void test_rope(void **state)
{
    (void)state;
    int T = 6, nh = 3, hd = 8, pos0 = 5;
    size_t n = (size_t)T * nh * hd;
    float inv[4];
    for (int i = 0; i < hd / 2; i++)
        inv[i] = (float)pow(10000.0, -2.0 * i / hd);
    float *x = randv(n, 1), *dy = randv(n, 1), *g = dup(dy, n);
    assert_int_equal(rope_bwd(KERN_IMPL_CPU, g, T, nh, hd, pos0, inv), 0);
    double *p = to_d(x, n, malloc(sizeof(double) * n));
    struct rope_ctx c = { dy, inv, T, nh, hd, pos0 };
    assert_int_equal(fd_check("rope dx", rope_f, &c, p, 0, n, g), 0);
    assert_int_equal(rope_bwd(KERN_IMPL_CPU, g, T, nh, 7, 0, inv), -EINVAL);
    free(x), free(dy), free(g), free(p);
}

/* ---- attention ---------------------------------------------------------------------------- */

struct att_ctx {
    const float *dy;
    int T, nh, nkv, hd, cap, q_off, window;
    float scale;
};

/* p = q [T][nh][hd], k [nkv][cap][hd], v [nkv][cap][hd]; an explicit mask from the definition. */
static double att_f(void *cp, const double *p)
{
    struct att_ctx *c = cp;
    int hd = c->hd, rep = c->nh / c->nkv, nk = c->q_off + c->T;
    const double *q = p, *k = q + (size_t)c->T * c->nh * hd, *v = k + (size_t)c->nkv * c->cap * hd;
    double s = 0, *sc = malloc(sizeof(double) * nk);
    for (int t = 0; t < c->T; t++)
        for (int h = 0; h < c->nh; h++) {
            int g = h / rep, pos = c->q_off + t;
            double m = -INFINITY, z = 0;
            for (int j = 0; j < nk; j++) {
                int vis = j <= pos && (c->window == 0 || j > pos - c->window);
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += q[((size_t)t * c->nh + h) * hd + i] * k[((size_t)g * c->cap + j) * hd + i];
                sc[j] = vis ? d * c->scale : -INFINITY;
                m = fmax(m, sc[j]);
            }
            for (int j = 0; j < nk; j++)
                z += (sc[j] = exp(sc[j] - m));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int j = 0; j < nk; j++)
                    o += sc[j] / z * v[((size_t)g * c->cap + j) * hd + i];
                s += c->dy[((size_t)t * c->nh + h) * hd + i] * o;
            }
        }
    free(sc);
    return s;
}

static int att_case(int T, int nh, int nkv, int hd, int cap, int q_off, int window, int fd)
{
    char what[128];
    snprintf(what, sizeof(what), "attention T=%d h=%d/%d hd=%d cap=%d off=%d win=%d", T, nh, nkv,
             hd, cap, q_off, window);
    size_t nq = (size_t)T * nh * hd, nkv_ = (size_t)nkv * cap * hd;
    float *q = randv(nq, 1), *k = randv(nkv_, 1), *v = randv(nkv_, 1), *dy = randv(nq, 1);
    float *pq = randv(nq, 1), *pk = randv(nkv_, 1), *pv = randv(nkv_, 1);
    float *dq = dup(pq, nq), *dk = dup(pk, nkv_), *dv = dup(pv, nkv_);
    struct attn_args a = { T,   nh, nkv, hd, q, k, v, cap, q_off, window, 1.0f / sqrtf((float)hd),
                           NULL };
    int rc = 0;
    attention_bwd_ref(&a, dy, dq, dk, dv);
    if (fd) {
        float *g = malloc(sizeof(float) * (nq + 2 * nkv_));
        float *gq = delta(dq, pq, nq), *gk = delta(dk, pk, nkv_), *gv = delta(dv, pv, nkv_);
        memcpy(g, gq, sizeof(float) * nq);
        memcpy(g + nq, gk, sizeof(float) * nkv_);
        memcpy(g + nq + nkv_, gv, sizeof(float) * nkv_);
        double *p = malloc(sizeof(double) * (nq + 2 * nkv_));
        to_d(q, nq, p);
        to_d(k, nkv_, p + nq);
        to_d(v, nkv_, p + nq + nkv_);
        struct att_ctx c = { dy, T, nh, nkv, hd, cap, q_off, window, a.scale };
        rc |= fd_check(what, att_f, &c, p, 0, nq + 2 * nkv_, g);
        free(g), free(gq), free(gk), free(gv), free(p);
    }
    float *fq = dup(pq, nq), *fk = dup(pk, nkv_), *fv = dup(pv, nkv_);
    assert_int_equal(attention_bwd(KERN_IMPL_CPU, &a, dy, fq, fk, fv), 0);
    rc |= fast_check("attention_cpu dq", fq, dq, nq, q_off + T);
    rc |= fast_check("attention_cpu dk", fk, dk, nkv_, q_off + T);
    rc |= fast_check("attention_cpu dv", fv, dv, nkv_, q_off + T);
    free(q), free(k), free(v), free(dy), free(pq), free(pk), free(pv), free(dq), free(dk);
    free(dv), free(fq), free(fk), free(fv);
    return rc;
}

static void test_attention(void **state)
{
    (void)state;
    int fails = 0;
    fails += att_case(7, 4, 2, 8, 7, 0, 0, 1) != 0;  /* GQA, causal */
    fails += att_case(9, 4, 1, 4, 9, 0, 3, 1) != 0;  /* sliding window */
    fails += att_case(4, 2, 2, 6, 10, 3, 0, 1) != 0; /* cached keys before the block */
    fails += att_case(5, 6, 3, 4, 8, 2, 4, 1) != 0;
    for (int th = 1; th <= 2; th++) {
        par_set_nthreads(th);
        fails += att_case(64, 4, 2, 64, 64, 0, 0, 0) != 0;
        fails += att_case(100, 8, 2, 32, 128, 20, 48, 0) != 0;
    }
    par_set_nthreads(0);
    assert_int_equal(fails, 0);
    float x[8] = { 0 };
    struct attn_args bad = { 2, 3, 2, 4, x, x, x, 2, 0, 0, 1.0f, NULL };
    assert_int_equal(attention_bwd(KERN_IMPL_CPU, &bad, x, x, x, x), -EINVAL);
}

/* ---- SwiGLU ------------------------------------------------------------------------------- */

struct swi_ctx {
    const float *dy;
    size_t n;
};

static double swi_f(void *cp, const double *p)
{
    struct swi_ctx *c = cp;
    double s = 0;
    for (size_t i = 0; i < c->n; i++) {
        double g = p[i], u = p[c->n + i];
        s += c->dy[i] * g / (1.0 + exp(-g)) * u;
    }
    return s;
}

static void test_swiglu(void **state)
{
    (void)state;
    size_t n = 200;
    float *g = randv(n, 3), *u = randv(n, 1), *dy = randv(n, 1);
    float *pg = randv(n, 1), *pu = randv(n, 1), *dg = dup(pg, n), *du = dup(pu, n);
    swiglu_bwd_ref(dg, du, dy, g, u, n);
    float *gg = delta(dg, pg, n), *gu = delta(du, pu, n);
    double *p = malloc(sizeof(double) * 2 * n);
    to_d(g, n, p);
    to_d(u, n, p + n);
    struct swi_ctx c = { dy, n };
    assert_int_equal(fd_check("swiglu dg", swi_f, &c, p, 0, n, gg), 0);
    assert_int_equal(fd_check("swiglu du", swi_f, &c, p, n, n, gu), 0);
    /* Fast vs reference on a large threaded case. */
    size_t N = 300001;
    float *G = randv(N, 3), *U = randv(N, 1), *DY = randv(N, 1);
    float *rg = calloc(N, sizeof(float)), *ru = calloc(N, sizeof(float));
    float *fg = calloc(N, sizeof(float)), *fu = calloc(N, sizeof(float));
    swiglu_bwd_ref(rg, ru, DY, G, U, N);
    assert_int_equal(swiglu_bwd(KERN_IMPL_CPU, fg, fu, DY, G, U, N), 0);
    assert_int_equal(fast_check("swiglu_cpu dg", fg, rg, N, 4), 0);
    assert_int_equal(fast_check("swiglu_cpu du", fu, ru, N, 4), 0);
    free(g), free(u), free(dy), free(pg), free(pu), free(dg), free(du), free(gg), free(gu);
    free(p), free(G), free(U), free(DY), free(rg), free(ru), free(fg), free(fu);
}

/* ---- cross-entropy and KL ------------------------------------------------------------------ */

struct loss_ctx {
    const int32_t *tgt;
    const float *tl;
    const uint8_t *on;
    int rows, V;
    double tau, scale;
};

static double lse_d(const double *x, int V, double tau)
{
    double m = -INFINITY, s = 0;
    for (int v = 0; v < V; v++)
        m = fmax(m, x[v] / tau);
    for (int v = 0; v < V; v++)
        s += exp(x[v] / tau - m);
    return m + log(s);
}

static double xent_f(void *cp, const double *x)
{
    struct loss_ctx *c = cp;
    double s = 0;
    for (int r = 0; r < c->rows; r++)
        if (c->tgt[r] >= 0)
            s += lse_d(x + (size_t)r * c->V, c->V, 1.0) - x[(size_t)r * c->V + c->tgt[r]];
    return c->scale * s;
}

static double kl_f(void *cp, const double *x)
{
    struct loss_ctx *c = cp;
    double s = 0;
    for (int r = 0; r < c->rows; r++) {
        if (c->on && !c->on[r])
            continue;
        const double *xr = x + (size_t)r * c->V;
        double l = lse_d(xr, c->V, c->tau);
        for (int v = 0; v < c->V; v++) {
            double tl = c->tl[(size_t)r * c->V + v];
            if (exp(tl) > 0)
                s += exp(tl) * (tl - (xr[v] / c->tau - l));
        }
    }
    return c->scale * s;
}

/* Teacher log-probabilities of random logits at temperature tau; one entry of row 0 at -inf
 * (a top-k cache leaves such holes). */
static float *teacher(int rows, int V, double tau)
{
    float *t = randv((size_t)rows * V, 2);
    for (int r = 0; r < rows; r++) {
        double x[64];
        for (int v = 0; v < V; v++)
            x[v] = t[(size_t)r * V + v];
        double l = lse_d(x, V, tau);
        for (int v = 0; v < V; v++)
            t[(size_t)r * V + v] = (float)(x[v] / tau - l);
    }
    t[1] = -INFINITY;
    return t;
}

static void test_losses(void **state)
{
    (void)state;
    int rows = 5, V = 13;
    size_t n = (size_t)rows * V;
    int32_t tgt[5] = { 3, -1, 0, 12, 7 };
    uint8_t on[5] = { 1, 1, 0, 1, 1 };
    float *x = randv(n, 2), *pre = randv(n, 1);
    double *p = to_d(x, n, malloc(sizeof(double) * n)), loss;
    /* Cross-entropy. */
    float *d = dup(pre, n);
    assert_int_equal(xent_bwd(KERN_IMPL_REF, &loss, d, x, tgt, rows, V, 0.25f), 0);
    struct loss_ctx c = { tgt, NULL, NULL, rows, V, 1.0, 0.25 };
    float *g = delta(d, pre, n);
    assert_int_equal(fd_check("xent dlogits", xent_f, &c, p, 0, n, g), 0);
    assert_true(fabs(0.25 * loss - xent_f(&c, p)) <= 1e-12 * fabs(loss) + 1e-12);
    float *f = dup(pre, n);
    double lf;
    assert_int_equal(xent_bwd(KERN_IMPL_CPU, &lf, f, x, tgt, rows, V, 0.25f), 0);
    assert_int_equal(fast_check("xent_cpu", f, d, n, V), 0);
    assert_true(fabs(lf - loss) <= 1e-5 * fabs(loss));
    free(d), free(g), free(f);
    /* KL at temperature 2, with a mask. */
    double tau = 2.0;
    float *tl = teacher(rows, V, tau);
    d = dup(pre, n);
    assert_int_equal(kl_bwd(KERN_IMPL_REF, &loss, d, x, tl, on, rows, V, (float)tau, 0.5f), 0);
    struct loss_ctx k = { NULL, tl, on, rows, V, tau, 0.5 };
    g = delta(d, pre, n);
    assert_int_equal(fd_check("kl dlogits", kl_f, &k, p, 0, n, g), 0);
    assert_true(fabs(0.5 * loss - kl_f(&k, p)) <= 1e-12 * fabs(loss) + 1e-12);
    assert_true(loss > 0);
    f = dup(pre, n);
    assert_int_equal(kl_bwd(KERN_IMPL_CPU, &lf, f, x, tl, on, rows, V, (float)tau, 0.5f), 0);
    assert_int_equal(fast_check("kl_cpu", f, d, n, V), 0);
    assert_true(fabs(lf - loss) <= 1e-5 * fabs(loss) + 1e-7);
    /* KL of a distribution against itself is 0 with zero gradient (rows 1.., row 0 has a hole). */
    float *xs = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        xs[i] = (float)tau * tl[i];
    uint8_t full[5] = { 0, 1, 1, 1, 1 };
    float *z = calloc(n, sizeof(float));
    assert_int_equal(kl_bwd(KERN_IMPL_CPU, &lf, z, xs, tl, full, rows, V, (float)tau, 1.0f), 0);
    assert_true(fabs(lf) < 1e-5);
    assert_true(check_max_abs(z, n) < 1e-5);
    /* Large rows, threaded. */
    int R = 64, BV = 4096;
    size_t N = (size_t)R * BV;
    float *X = randv(N, 3), *TL = randv(N, 1), *r1 = calloc(N, 4), *r2 = calloc(N, 4);
    int32_t *T = malloc(sizeof(int32_t) * R);
    for (int r = 0; r < R; r++)
        T[r] = check_rand_int(-1, BV - 1);
    double a1, a2;
    xent_bwd(KERN_IMPL_REF, &a1, r1, X, T, R, BV, 1.0f / R);
    xent_bwd(KERN_IMPL_CPU, &a2, r2, X, T, R, BV, 1.0f / R);
    assert_int_equal(fast_check("xent_cpu large", r2, r1, N, BV), 0);
    assert_true(fabs(a1 - a2) <= 1e-5 * fabs(a1));
    assert_int_equal(xent_bwd(KERN_IMPL_CPU, &a1, r1, X, (int32_t[]){ BV }, 1, BV, 1.0f), -EINVAL);
    assert_int_equal(kl_bwd(KERN_IMPL_CPU, &a1, r1, X, TL, NULL, 1, BV, 0.0f, 1.0f), -EINVAL);
    free(x), free(pre), free(p), free(d), free(g), free(f), free(tl), free(xs), free(z);
    free(X), free(TL), free(r1), free(r2), free(T);
}

/* ---- tied head: embedding + RMSNorm + head sharing E, under cross-entropy ------------------ */

struct tied_ctx {
    const int32_t *ids, *tgt;
    const float *w;
    int T, V, H;
};

static double tied_f(void *cp, const double *E)
{
    struct tied_ctx *c = cp;
    double s = 0, lg[32], xn[16];
    for (int t = 0; t < c->T; t++) {
        const double *x = E + (size_t)c->ids[t] * c->H;
        double ss = 0;
        for (int i = 0; i < c->H; i++)
            ss += x[i] * x[i];
        double inv = 1.0 / sqrt(ss / c->H + 1e-5);
        for (int i = 0; i < c->H; i++)
            xn[i] = c->w[i] * x[i] * inv;
        for (int v = 0; v < c->V; v++) {
            lg[v] = 0;
            for (int i = 0; i < c->H; i++)
                lg[v] += xn[i] * E[(size_t)v * c->H + i];
        }
        s += lse_d(lg, c->V, 1.0) - lg[c->tgt[t]];
    }
    return s / c->T;
}

static void test_tied_head(void **state)
{
    (void)state;
    enum { V = 19, H = 10, T = 6 };
    int32_t ids[T], tgt[T];
    for (int t = 0; t < T; t++) {
        ids[t] = check_rand_int(0, V - 1);
        tgt[t] = check_rand_int(0, V - 1);
    }
    float *E = randv((size_t)V * H, 1), *w = randv(H, 0.2f);
    for (int i = 0; i < H; i++)
        w[i] += 1;
    float x[T * H], xn[T * H], lg[T * V], dlg[T * V] = { 0 }, dxn[T * H] = { 0 };
    float dx[T * H] = { 0 }, *dE = calloc((size_t)V * H, sizeof(float)), dw[H] = { 0 };
    for (int t = 0; t < T; t++)
        memcpy(x + t * H, E + (size_t)ids[t] * H, sizeof(float) * H);
    rmsnorm_ref(xn, x, w, T, H, 1e-5f);
    for (int t = 0; t < T; t++)
        for (int v = 0; v < V; v++) {
            double a = 0;
            for (int i = 0; i < H; i++)
                a += (double)xn[t * H + i] * E[(size_t)v * H + i];
            lg[t * V + v] = (float)a;
        }
    double loss;
    assert_int_equal(xent_bwd(KERN_IMPL_REF, &loss, dlg, lg, tgt, T, V, 1.0f / T), 0);
    assert_int_equal(linear_bwd(KERN_IMPL_REF, dxn, dE, dlg, xn, E, T, H, V), 0);
    assert_int_equal(rmsnorm_bwd(KERN_IMPL_REF, dx, dw, dxn, x, w, T, H, 1e-5f), 0);
    assert_int_equal(embedding_bwd(KERN_IMPL_REF, dE, dx, ids, T, H), 0);
    double *p = to_d(E, (size_t)V * H, malloc(sizeof(double) * V * H));
    struct tied_ctx c = { ids, tgt, w, T, V, H };
    /* Composite of fp32 forward steps: the logits are fp32, so allow 1e-4. */
    float *fd = malloc(sizeof(float) * V * H);
    for (size_t i = 0; i < (size_t)V * H; i++) {
        double v = p[i], h = 1e-5;
        p[i] = v + h;
        double a = tied_f(&c, p);
        p[i] = v - h;
        double b = tied_f(&c, p);
        p[i] = v;
        fd[i] = (float)((a - b) / (2 * h));
    }
    struct check_tol tol = { 1e-7, 1e-4, 1e-4 };
    assert_int_equal(check_close("tied head dE", dE, fd, (size_t)V * H, &tol, NULL), 0);
    free(E), free(w), free(dE), free(p), free(fd);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding), cmocka_unit_test(test_linear),
        cmocka_unit_test(test_rmsnorm),   cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention), cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_losses),    cmocka_unit_test(test_tied_head),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
