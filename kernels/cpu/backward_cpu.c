/*
 * backward_cpu: the fast backward ops and the dispatch functions of kernels/backward.h.
 *
 * linear_bwd runs as two packed GEMMs on the driver of kernels/gemm.h with beta = 1 (so they
 * accumulate): dx[T][in] += dy[T][out] . W[out][in] (A = dy, B = W, both row-major), and
 * dW[out][in] += dy^T . x (A = dy transposed while packed, B = x). attention_bwd runs one task
 * per KV head (that head's query heads and every row), so each dk/dv row has one writer;
 * rmsnorm_bwd computes dx over row blocks and dw over column blocks (no shared sums); swiglu,
 * xent and kl are threaded over elements / rows, with per-row losses summed in row order so the
 * result does not depend on the thread count. Sums of a row (softmax normaliser, dot products)
 * are fp32 per element with double totals.
 */
#include "kernels/backward.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "kernels/gemm.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

/* par_scratch slot for the per-call arrays the caller shares with its tasks (slot 2: the
 * forward kernels' slots 2 and 3 are not live during a backward call). */
#define BWD_SCRATCH      2
#define BWD_TASK_SCRATCH 3

/* ---- linear -------------------------------------------------------------------------------- */

struct lin_ctx {
    const float *a; /* A source */
    int lda;
    const float *b; /* B source, row-major [K][N] */
    int ldb;
};

/* A row-major [M][K]: panel[k][i] = a[(i0+i) * lda + k0 + k]. */
static void pack_a_rm(const void *cp, int i0, int mr, int k0, int kc, float *dst)
{
    const struct lin_ctx *c = cp;
    for (int i = 0; i < GEMM_MR; i++) {
        if (i < mr) {
            const float *src = c->a + (size_t)(i0 + i) * c->lda + k0;
            for (int k = 0; k < kc; k++)
                dst[k * GEMM_MR + i] = src[k];
        } else {
            for (int k = 0; k < kc; k++)
                dst[k * GEMM_MR + i] = 0.0f;
        }
    }
}

/* A = P^T with P row-major [K][M]: panel[k][i] = a[(k0+k) * lda + i0 + i]. */
static void pack_a_tr(const void *cp, int i0, int mr, int k0, int kc, float *dst)
{
    const struct lin_ctx *c = cp;
    gemm_pack_rows(c->a, c->lda, i0, mr, GEMM_MR, k0, kc, dst);
}

/* B row-major [K][N]: panel[k][j] = b[(k0+k) * ldb + j0 + j]. */
static void pack_b_rm(const void *cp, int j0, int nr, int k0, int kc, float *dst)
{
    const struct lin_ctx *c = cp;
    gemm_pack_rows(c->b, c->ldb, j0, nr, GEMM_NR, k0, kc, dst);
}

void linear_bwd_cpu(float *dx, float *dW, const float *dy, const float *x, const float *W, int T,
                    int in, int out)
{
    if (T <= 0 || in <= 0 || out <= 0)
        return;
    if (dx) {
        struct lin_ctx c = { dy, out, W, in };
        struct gemm_src s = { pack_a_rm, pack_b_rm, &c };
        gemm_cpu_run(T, in, out, &s, dx, (size_t)in, 1.0f, 1.0f, 0);
    }
    if (dW) {
        struct lin_ctx c = { dy, out, x, in };
        struct gemm_src s = { pack_a_tr, pack_b_rm, &c };
        gemm_cpu_run(out, in, T, &s, dW, (size_t)in, 1.0f, 1.0f, 0);
    }
}

/* ---- rmsnorm ------------------------------------------------------------------------------- */

struct rms_job {
    float *dx, *dw;
    const float *dy, *x, *w;
    float *inv; /* [rows] */
    int rows, n, per;
    float eps;
};

static void rms_dx_task(void *arg, int task, int tid)
{
    struct rms_job *j = arg;
    (void)tid;
    int r0 = task * j->per, r1 = EXAQ_GEMM_MINI(r0 + j->per, j->rows), n = j->n;
    for (int r = r0; r < r1; r++) {
        const float *xr = j->x + (size_t)r * n, *gr = j->dy + (size_t)r * n;
        float ss = 0.0f, dot = 0.0f;
        for (int i = 0; i < n; i++) {
            ss += xr[i] * xr[i];
            dot += gr[i] * (j->w ? j->w[i] : 1.0f) * xr[i];
        }
        float inv = 1.0f / sqrtf(ss / (float)n + j->eps);
        j->inv[r] = inv;
        if (!j->dx)
            continue;
        float c = inv * inv * inv * dot / (float)n, *o = j->dx + (size_t)r * n;
        if (j->w)
            for (int i = 0; i < n; i++)
                o[i] += inv * j->w[i] * gr[i] - c * xr[i];
        else
            for (int i = 0; i < n; i++)
                o[i] += inv * gr[i] - c * xr[i];
    }
}

#define RMS_DW_COLS 64

static void rms_dw_task(void *arg, int task, int tid)
{
    struct rms_job *j = arg;
    (void)tid;
    int c0 = task * RMS_DW_COLS, c1 = EXAQ_GEMM_MINI(c0 + RMS_DW_COLS, j->n);
    float acc[RMS_DW_COLS] = { 0 };
    for (int r = 0; r < j->rows; r++) {
        const float *xr = j->x + (size_t)r * j->n, *gr = j->dy + (size_t)r * j->n;
        float inv = j->inv[r];
        for (int i = c0; i < c1; i++)
            acc[i - c0] += gr[i] * xr[i] * inv;
    }
    for (int i = c0; i < c1; i++)
        j->dw[i] += acc[i - c0];
}

void rmsnorm_bwd_cpu(float *dx, float *dw, const float *dy, const float *x, const float *w,
                     int rows, int n, float eps)
{
    if (rows <= 0 || n <= 0)
        return;
    float *inv = par_scratch(BWD_SCRATCH, sizeof(float) * (size_t)rows);
    int per = rows;
    if ((size_t)rows * n >= 16384) {
        int nt = 4 * par_nthreads();
        per = (rows + nt - 1) / nt;
    }
    struct rms_job j = { dx, dw, dy, x, w, inv, rows, n, per, eps };
    par_for((rows + per - 1) / per, rms_dx_task, &j);
    if (dw)
        par_for((n + RMS_DW_COLS - 1) / RMS_DW_COLS, rms_dw_task, &j);
}

/* ---- attention ----------------------------------------------------------------------------- */

struct att_job {
    const struct attn_args *a;
    const float *dout;
    float *dq, *dk, *dv;
};

/* 8-wide dot product (two accumulators) with a scalar tail. */
static inline float dotf(const float *a, const float *b, int n)
{
    v8f s0 = { 0 }, s1 = { 0 };
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 += v8_loadu(a + i) * v8_loadu(b + i);
        s1 += v8_loadu(a + i + 8) * v8_loadu(b + i + 8);
    }
    for (; i + 8 <= n; i += 8)
        s0 += v8_loadu(a + i) * v8_loadu(b + i);
    float s = v8_hsum(s0 + s1);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y += a * x. */
static inline void axpyf(float *restrict y, float a, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void att_task(void *arg, int g, int tid)
{
    struct att_job *j = arg;
    const struct attn_args *a = j->a;
    (void)tid;
    int hd = a->head_dim, rep = a->n_heads / a->n_kv_heads, nk = a->q_off + a->T;
    float *p = par_scratch(BWD_TASK_SCRATCH, sizeof(float) * (size_t)nk * 2);
    float *dp = p + nk;
    const float *kb = a->k + (size_t)g * a->kv_cap * hd, *vb = a->v + (size_t)g * a->kv_cap * hd;
    float *dkb = j->dk + (size_t)g * a->kv_cap * hd, *dvb = j->dv + (size_t)g * a->kv_cap * hd;
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int t = 0; t < a->T; t++) {
            int pos = a->q_off + t, lo = 0;
            if (a->window > 0 && pos - a->window + 1 > 0)
                lo = pos - a->window + 1;
            size_t qi = ((size_t)t * a->n_heads + h) * hd;
            const float *q = a->q + qi, *go = j->dout + qi;
            float m = -INFINITY;
            for (int k = lo; k <= pos; k++) {
                p[k] = dotf(q, kb + (size_t)k * hd, hd) * a->scale;
                m = p[k] > m ? p[k] : m;
            }
            double sum = 0.0;
            for (int k = lo; k <= pos; k++) {
                p[k] = expf(p[k] - m);
                sum += p[k];
            }
            float isum = (float)(1.0 / sum);
            double rs = 0.0;
            for (int k = lo; k <= pos; k++) {
                p[k] *= isum;
                dp[k] = dotf(go, vb + (size_t)k * hd, hd);
                rs += (double)p[k] * dp[k];
            }
            float frs = (float)rs, *dqr = j->dq + qi;
            for (int k = lo; k <= pos; k++) {
                float ds = p[k] * (dp[k] - frs) * a->scale;
                axpyf(dvb + (size_t)k * hd, p[k], go, hd);
                axpyf(dkb + (size_t)k * hd, ds, q, hd);
                axpyf(dqr, ds, kb + (size_t)k * hd, hd);
            }
        }
}

void attention_bwd_cpu(const struct attn_args *a, const float *dout, float *dq, float *dk,
                       float *dv)
{
    struct att_job j = { a, dout, dq, dk, dv };
    par_for(a->n_kv_heads, att_task, &j);
}

/* ---- swiglu -------------------------------------------------------------------------------- */

struct swi_job {
    float *dg, *du;
    const float *dh, *g, *u;
    size_t n, per;
};

static void swi_task(void *arg, int task, int tid)
{
    struct swi_job *j = arg;
    (void)tid;
    size_t i0 = (size_t)task * j->per, i1 = i0 + j->per < j->n ? i0 + j->per : j->n;
    for (size_t i = i0; i < i1; i++) {
        float gv = j->g[i], s = 1.0f / (1.0f + expf(-gv));
        j->dg[i] += j->dh[i] * j->u[i] * s * (1.0f + gv * (1.0f - s));
        j->du[i] += j->dh[i] * gv * s;
    }
}

void swiglu_bwd_cpu(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n)
{
    size_t per =
        n >= 65536 ? (n + 4 * (size_t)par_nthreads() - 1) / (4 * (size_t)par_nthreads()) : n;
    if (n == 0)
        return;
    struct swi_job j = { dg, du, dh, g, u, n, per };
    par_for((int)((n + per - 1) / per), swi_task, &j);
}

/* ---- cross-entropy and KL ------------------------------------------------------------------ */

struct loss_job {
    float *d;
    const float *x, *tl;
    const int32_t *tgt;
    const uint8_t *on;
    double *row_loss;
    int V;
    float tau, scale;
};

/* Returns log sum exp(x / tau) and leaves exp(x / tau - max) in e (V floats). */
static double row_lse_f(const float *x, int V, float itau, float *e, float *mx)
{
    float m = -INFINITY;
    for (int v = 0; v < V; v++)
        m = x[v] * itau > m ? x[v] * itau : m;
    double s = 0.0;
    float part = 0.0f;
    for (int v = 0; v < V; v++) {
        e[v] = expf(x[v] * itau - m);
        part += e[v];
        if ((v & 511) == 511) {
            s += part;
            part = 0.0f;
        }
    }
    *mx = m;
    return m + log(s + part);
}

static void xent_task(void *arg, int r, int tid)
{
    struct loss_job *j = arg;
    (void)tid;
    j->row_loss[r] = 0.0;
    if (j->tgt[r] < 0)
        return;
    const float *x = j->x + (size_t)r * j->V;
    float *d = j->d + (size_t)r * j->V;
    float *e = par_scratch(BWD_TASK_SCRATCH, sizeof(float) * (size_t)j->V);
    float m;
    double l = row_lse_f(x, j->V, 1.0f, e, &m);
    float f = j->scale * (float)exp((double)m - l); /* softmax = e * exp(m - lse) */
    for (int v = 0; v < j->V; v++)
        d[v] += f * e[v];
    d[j->tgt[r]] -= j->scale;
    j->row_loss[r] = l - x[j->tgt[r]];
}

static void kl_task(void *arg, int r, int tid)
{
    struct loss_job *j = arg;
    (void)tid;
    j->row_loss[r] = 0.0;
    if (j->on && !j->on[r])
        return;
    const float *x = j->x + (size_t)r * j->V, *tl = j->tl + (size_t)r * j->V;
    float *d = j->d + (size_t)r * j->V;
    float itau = 1.0f / j->tau, sc = j->scale * itau;
    float *e = par_scratch(BWD_TASK_SCRATCH, sizeof(float) * (size_t)j->V);
    float m;
    double l = row_lse_f(x, j->V, itau, e, &m), loss = 0.0, mass = 0.0;
    for (int v = 0; v < j->V; v++)
        mass += expf(tl[v]);
    float f = (float)(mass * exp((double)m - l)); /* mass * softmax = f * e (backward.h) */
    for (int v = 0; v < j->V; v++) {
        float ls = (float)((double)x[v] * itau - l), pt = expf(tl[v]);
        if (pt > 0.0f)
            loss += (double)(pt * (tl[v] - ls));
        d[v] += sc * (f * e[v] - pt);
    }
    j->row_loss[r] = loss;
}

static double sum_rows(const double *v, int rows)
{
    double s = 0.0;
    for (int r = 0; r < rows; r++)
        s += v[r];
    return s;
}

double xent_bwd_cpu(float *dlogits, const float *logits, const int32_t *targets, int rows, int V,
                    float scale)
{
    double *rl = par_scratch(BWD_SCRATCH, sizeof(double) * (size_t)(rows > 0 ? rows : 1));
    struct loss_job j = { dlogits, logits, NULL, targets, NULL, rl, V, 1.0f, scale };
    par_for(rows, xent_task, &j);
    return sum_rows(rl, rows);
}

double kl_bwd_cpu(float *dlogits, const float *logits, const float *teacher_logp, const uint8_t *on,
                  int rows, int V, float temperature, float scale)
{
    double *rl = par_scratch(BWD_SCRATCH, sizeof(double) * (size_t)(rows > 0 ? rows : 1));
    struct loss_job j = { dlogits, logits, teacher_logp, NULL, on, rl, V, temperature, scale };
    par_for(rows, kl_task, &j);
    return sum_rows(rl, rows);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

int embedding_bwd(enum kern_impl impl, float *dE, const float *dx, const int32_t *ids, int T, int H)
{
    if (T < 0 || H <= 0 || (T > 0 && (!dE || !dx || !ids)))
        return -EINVAL;
    if (impl != KERN_IMPL_REF && impl != KERN_IMPL_CPU)
        return -ENOSYS;
    /* A scatter-add over rows that may repeat: serial in every variant (T * H adds). */
    embedding_bwd_ref(dE, dx, ids, T, H);
    return 0;
}

int linear_bwd(enum kern_impl impl, float *dx, float *dW, const float *dy, const float *x,
               const float *W, int T, int in, int out)
{
    if (T < 0 || in <= 0 || out <= 0 || (T > 0 && !dy) || (dx && !W) || (dW && !x))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        linear_bwd_ref(dx, dW, dy, x, W, T, in, out);
        return 0;
    case KERN_IMPL_CPU:
        linear_bwd_cpu(dx, dW, dy, x, W, T, in, out);
        return 0;
    default:
        return -ENOSYS;
    }
}

int rmsnorm_bwd(enum kern_impl impl, float *dx, float *dw, const float *dy, const float *x,
                const float *w, int rows, int n, float eps)
{
    if (rows < 0 || n <= 0 || (rows > 0 && (!dy || !x)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        rmsnorm_bwd_ref(dx, dw, dy, x, w, rows, n, eps);
        return 0;
    case KERN_IMPL_CPU:
        rmsnorm_bwd_cpu(dx, dw, dy, x, w, rows, n, eps);
        return 0;
    default:
        return -ENOSYS;
    }
}

int rope_bwd(enum kern_impl impl, float *dx, int T, int nheads, int head_dim, int pos0,
             const float *inv_freq)
{
    if (T < 0 || nheads <= 0 || head_dim <= 0 || head_dim % 2 || pos0 < 0 ||
        (T > 0 && (!dx || !inv_freq)))
        return -EINVAL;
    if (impl != KERN_IMPL_REF && impl != KERN_IMPL_CPU)
        return -ENOSYS;
    /* O(T * heads * head_dim) with one cos/sin per (row, frequency): the reference is the
     * CPU variant too (the forward's share of the time is the same). */
    rope_bwd_ref(dx, T, nheads, head_dim, pos0, inv_freq);
    return 0;
}

int attention_bwd(enum kern_impl impl, const struct attn_args *a, const float *dout, float *dq,
                  float *dk, float *dv)
{
    if (!a || !dout || !dq || !dk || !dv || !a->q || !a->k || !a->v || a->T < 0 ||
        a->n_kv_heads <= 0 || a->n_heads <= 0 || a->n_heads % a->n_kv_heads || a->head_dim <= 0 ||
        a->q_off < 0 || a->q_off + a->T > a->kv_cap || a->window < 0)
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        attention_bwd_ref(a, dout, dq, dk, dv);
        return 0;
    case KERN_IMPL_CPU:
        attention_bwd_cpu(a, dout, dq, dk, dv);
        return 0;
    default:
        return -ENOSYS;
    }
}

int swiglu_bwd(enum kern_impl impl, float *dg, float *du, const float *dh, const float *g,
               const float *u, size_t n)
{
    if (n > 0 && (!dg || !du || !dh || !g || !u))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        swiglu_bwd_ref(dg, du, dh, g, u, n);
        return 0;
    case KERN_IMPL_CPU:
        swiglu_bwd_cpu(dg, du, dh, g, u, n);
        return 0;
    default:
        return -ENOSYS;
    }
}

int xent_bwd(enum kern_impl impl, double *loss, float *dlogits, const float *logits,
             const int32_t *targets, int rows, int V, float scale)
{
    if (!loss || rows < 0 || V <= 0 || (rows > 0 && (!dlogits || !logits || !targets)))
        return -EINVAL;
    for (int r = 0; r < rows; r++)
        if (targets[r] >= V)
            return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        *loss = xent_bwd_ref(dlogits, logits, targets, rows, V, scale);
        return 0;
    case KERN_IMPL_CPU:
        *loss = xent_bwd_cpu(dlogits, logits, targets, rows, V, scale);
        return 0;
    default:
        return -ENOSYS;
    }
}

int kl_bwd(enum kern_impl impl, double *loss, float *dlogits, const float *logits,
           const float *teacher_logp, const uint8_t *on, int rows, int V, float temperature,
           float scale)
{
    if (!loss || rows < 0 || V <= 0 || !(temperature > 0.0f) ||
        (rows > 0 && (!dlogits || !logits || !teacher_logp)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        *loss = kl_bwd_ref(dlogits, logits, teacher_logp, on, rows, V, temperature, scale);
        return 0;
    case KERN_IMPL_CPU:
        *loss = kl_bwd_cpu(dlogits, logits, teacher_logp, on, rows, V, temperature, scale);
        return 0;
    default:
        return -ENOSYS;
    }
}
