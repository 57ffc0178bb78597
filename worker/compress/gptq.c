/*
 * gptq: the Hessian accumulator, GPTQ (IST-DASLab `fasterquant`, algorithms spec 1.4) into a
 * `struct qweight`, and the upper Cholesky factor of an inverse it needs (on the Cholesky and
 * triangular inverse of kernels/linalg.h).
 *
 * DESIGN. The working weight is kept transposed, WT[c][r] (one contiguous row per input column,
 * in the act-order permuted order), for two reasons: the per-block column loop then works on
 * contiguous runs of rows (threads own row ranges, the updates are vector axpys over rows),
 * and the lazy update W[:, i2:] -= Err1 . Hinv[i1:i2, i2:] becomes WT[i2:] += X . Err1^T with
 * X = -Hinv[i1:i2, i2:]^T, which is exactly the shape of kernels/matmul.h (y[T][out] += x[T][in]
 * . W^T with y = WT[i2:], W = Err1 [r][b]), so it runs on the engine's blocked fp32 GEMM.
 *
 * Hinv = chol_upper(H_d^-1) is computed in double as U = R^-1 where H_d = R R^T with R upper:
 * R is the lower Cholesky factor of the index-reversed matrix, reversed back. By uniqueness of
 * the Cholesky factor this is the same U that cholesky -> cholesky_inverse -> cholesky(upper)
 * gives (tests/unit/compress/test_gptq.c checks it against that literal chain), at half the flops
 * and without forming H^-1. The blocked Cholesky and triangular inverse are kernels/linalg.h's.
 *
 * gptq_prepare() holds everything that depends only on H (dead columns, act-order permutation,
 * Hinv with the damping retries); gptq_quantize_prep() runs the column loop for one W with it;
 * gptq_quantize() is the two in sequence.
 *
 * Only the data passed in is touched; nothing here prints or aborts on bad numbers (a NaN in H
 * makes Cholesky fail, which ends in the documented RTN fallback).
 */
#include "worker/compress/gptq.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "kernels/linalg.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "kernels/syrk.h"
#include "worker/compress/colloop.h"

/* ---- Hessian -------------------------------------------------------------------------------- */

int hess_init(struct hessian *h, int n)
{
    if (!h)
        return -EINVAL;
    memset(h, 0, sizeof(*h));
    if (n <= 0)
        return -EINVAL;
    if ((uint64_t)n * (uint64_t)n > (uint64_t)SIZE_MAX / sizeof(float))
        return -ENOMEM;
    h->n = n;
    h->H = xcalloc((size_t)n * n, sizeof(float));
    return 0;
}

void hess_release(struct hessian *h)
{
    if (!h)
        return;
    free(h->H);
    memset(h, 0, sizeof(*h));
}

void hess_add(struct hessian *h, const float *x, int T)
{
    if (!h || !h->H || !x || T <= 0)
        return;
    /* Plain fp32 sum of x^T x (syrk's blocked GEMM accumulates in fp32, like the references
     * with TF32 off); the 2/n scaling happens once in hess_finish, as llm-compressor does. */
    syrk(KERN_IMPL_CPU, h->H, x, T, h->n, 1.0f, 1.0f);
    h->nsamples += T;
}

void hess_finish(struct hessian *h)
{
    if (!h || !h->H || h->nsamples <= 0)
        return;
    /* llm-compressor: H += 2 X^T X (the doubling is exact), then H / n once. */
    float n = (float)h->nsamples;
    size_t nn = (size_t)h->n * h->n;
    for (size_t i = 0; i < nn; i++)
        h->H[i] = (2.0f * h->H[i]) / n;
}

/* ---- the upper Cholesky factor of an inverse ------------------------------------------------ */

/* U holds, in its lower triangle, the index-reversed SPD matrix J A J, and zeros above.
 * Replaces it by the upper Cholesky factor of A^-1: J A J = L' L'^T gives A = R R^T with
 * R = J L' J upper, so A^-1 = R^-T R^-1 and U = R^-1 = J L'^-1 J. 0, or -1 when A is not
 * (numerically) positive definite or the result is not finite. */
static int upper_inv_factor_inplace(double *U, int n)
{
    if (linalg_chol(KERN_IMPL_CPU, U, n, (size_t)n) != 0)
        return -1;
    linalg_trtri(KERN_IMPL_CPU, U, n, (size_t)n);
    for (size_t i = 0; i < (size_t)n * n; i++)
        if (!isfinite(U[i]))
            return -1;
    /* Reverse: U[n-1-i][n-1-j] = X[i][j] for i > j (writes land in the zero strict upper
     * triangle, never on an unread source), then the diagonal, then clear the lower part. */
    for (int i = 1; i < n; i++) {
        const double *xi = U + (size_t)i * n;
        double *ui = U + (size_t)(n - 1 - i) * n;
        for (int j = 0; j < i; j++)
            ui[n - 1 - j] = xi[j];
    }
    for (int i = 0; i < n / 2; i++) {
        double *a = U + (size_t)i * n + i, *b = U + (size_t)(n - 1 - i) * n + (n - 1 - i);
        double tmp = *a;
        *a = *b;
        *b = tmp;
    }
    for (int i = 1; i < n; i++)
        memset(U + (size_t)i * n, 0, sizeof(double) * i);
    return 0;
}

int chol_lower(double *A, int n)
{
    if (!A || n <= 0)
        return -1;
    return linalg_chol(KERN_IMPL_CPU, A, n, (size_t)n) == 0 ? 0 : -1;
}

int chol_inverse_upper(const double *A, int n, double *U)
{
    if (!A || !U || n <= 0)
        return -1;
    /* Lower triangle of J A J from the lower triangle of A: (J A J)[i][j] = A[n-1-i][n-1-j] =
     * A[n-1-j][n-1-i] for i >= j. */
    for (int i = 0; i < n; i++) {
        double *ui = U + (size_t)i * n;
        for (int j = 0; j <= i; j++)
            ui[j] = A[(size_t)(n - 1 - j) * n + (n - 1 - i)];
        for (int j = i + 1; j < n; j++)
            ui[j] = 0.0;
    }
    return upper_inv_factor_inplace(U, n);
}

/* ---- GPTQ ------------------------------------------------------------------------------------ */

void gptq_opts_default(struct gptq_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->dampening = 0.01;
    o->block_size = 128;
    o->actorder = GPTQ_ACTORDER_NONE;
    o->static_groups = false;
    o->groups_on_w1 = false;
    o->grid = QGRID_ABSMAX_HALF;
    o->compute_loss_rtn = true;
}

/* Rows owned by one task of the column loop (a multiple of 8 for the vector axpy). */
#define GPTQ_ROWS 64
/* Tile edge for the transposes and the reversed-Hessian build. */
#define TILE 64

enum params_mode {
    PM_DYNAMIC = 0, /* fitted when the column loop reaches a group's first column */
    PM_STATIC,      /* every group fitted up front; gpos[] maps a position to its group */
    PM_CHANNEL,     /* one per row, fitted on the original W */
    PM_TENSOR,      /* one for the whole matrix, fitted on the original W */
};

struct gptq_ctx {
    struct qweight *w;
    const struct gptq_opts *o;
    int r, c, G, bits;
    enum params_mode pm;
    const int *perm;  /* position -> original column */
    const int *gpos;  /* PM_STATIC: position -> group */
    float *WT;        /* [c][r]: the "global" W, permuted, transposed */
    float *W1T;       /* [B][r]: the current block (W1) */
    float *E;         /* [r][b]: Err1 of the current block */
    int8_t *QT;       /* [c][r]: codes by position */
    float *U1;        /* [B][B]: the block's diagonal block of Hinv */
    float *cur_s;     /* [r]: PM_DYNAMIC current group scale */
    int *cur_z;       /* [r] */
    double *loss_row; /* [r] */
    int i1, b, B;
};

/* PM_DYNAMIC: fit the group that starts at position pos for rows r0..r1 on W (columns of the
 * current block from W1 when groups_on_w1). */
static void fit_dynamic(struct gptq_ctx *x, int pos, int r0, int r1)
{
    float mn[GPTQ_ROWS], mx[GPTQ_ROWS];
    int n = r1 - r0, end = EXAQ_MIN(pos + x->G, x->c), g = pos / x->G;
    for (int t = 0; t < n; t++)
        mn[t] = mx[t] = 0.0f;
    for (int k = pos; k < end; k++) {
        const float *src = (x->o->groups_on_w1 && k < x->i1 + x->b)
                               ? x->W1T + (size_t)(k - x->i1) * x->r + r0
                               : x->WT + (size_t)k * x->r + r0;
        for (int t = 0; t < n; t++) {
            mn[t] = src[t] < mn[t] ? src[t] : mn[t];
            mx[t] = src[t] > mx[t] ? src[t] : mx[t];
        }
    }
    struct qweight *w = x->w;
    for (int t = 0; t < n; t++) {
        size_t k = (size_t)(r0 + t) * w->ngroups + g;
        int8_t z;
        qweight_fit_range(w, x->o->grid, mn[t], mx[t], &w->scale[k], &z);
        if (w->zp)
            w->zp[k] = z;
        x->cur_s[r0 + t] = kern_bf16_to_f32(w->scale[k]);
        x->cur_z[r0 + t] = z;
    }
}

/* The column loop of one block for rows [r0, r1): quantize column i, record Err1, update the
 * remaining columns of the block (rank 1 per column). Rows are independent, so no
 * synchronisation is needed between the tasks of a block. */
static ALWAYS_INLINE void block_body(struct gptq_ctx *x, int task)
{
    int r0 = task * GPTQ_ROWS, r1 = EXAQ_MIN(x->r, r0 + GPTQ_ROWS), n = r1 - r0;
    struct qweight *w = x->w;
    float ev[GPTQ_ROWS], sv[GPTQ_ROWS];
    int zv[GPTQ_ROWS];
    double lacc[GPTQ_ROWS];
    for (int t = 0; t < n; t++)
        lacc[t] = 0.0;
    for (int i = 0; i < x->b; i++) {
        int pos = x->i1 + i;
        if (x->pm == PM_DYNAMIC) {
            if (pos % x->G == 0)
                fit_dynamic(x, pos, r0, r1);
            for (int t = 0; t < n; t++) {
                sv[t] = x->cur_s[r0 + t];
                zv[t] = x->cur_z[r0 + t];
            }
        } else {
            for (int t = 0; t < n; t++) {
                size_t k = x->pm == PM_TENSOR    ? 0
                           : x->pm == PM_CHANNEL ? (size_t)(r0 + t)
                                                 : (size_t)(r0 + t) * w->ngroups + x->gpos[pos];
                sv[t] = kern_bf16_to_f32(w->scale[k]);
                zv[t] = w->zp ? w->zp[k] : 0;
            }
        }
        float d = x->U1[(size_t)i * x->B + i];
        const float *w1 = x->W1T + (size_t)i * x->r + r0;
        int8_t *qt = x->QT + (size_t)pos * x->r + r0;
        float *e = x->E + (size_t)r0 * x->b + i;
        for (int t = 0; t < n; t++) {
            int q = quant_code(w1[t], sv[t], zv[t], x->bits);
            float diff = w1[t] - (float)(q - zv[t]) * sv[t];
            float err = diff / d;
            qt[t] = (int8_t)q;
            ev[t] = err;
            e[(size_t)t * x->b] = err;
            lacc[t] += (double)err * (double)err;
        }
        const float *u = x->U1 + (size_t)i * x->B;
        for (int j = i + 1; j < x->b; j++)
            axpy_neg(x->W1T + (size_t)j * x->r + r0, ev, u[j], n);
    }
    for (int t = 0; t < n; t++)
        x->loss_row[r0 + t] += 0.5 * lacc[t];
}

TARGET_AVX2 static void block_task_avx2(void *arg, int task, int tid)
{
    (void)tid;
    block_body(arg, task);
}

static void block_task_generic(void *arg, int task, int tid)
{
    (void)tid;
    block_body(arg, task);
}

/* ---- GPTQ set-up helpers ---- */

struct diag_key {
    double v;
    int i;
};

static int diag_cmp(const void *pa, const void *pb)
{
    const struct diag_key *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1; /* descending */
    return (a->i > b->i) - (a->i < b->i);
}

struct revh_job {
    const float *H;
    const int *perm;
    const uint8_t *dead;
    double lambda;
    int c;
    double *U;
};

/* One TILE x TILE tile (p-tile pt, q-tile qt <= pt) of the reversed damped permuted Hessian:
 * U[c-1-q][c-1-p] = Hp[p][q] for q <= p, Hp[p][q] = H[perm[p]][perm[q]]. */
static void revh_task(void *arg, int task, int tid)
{
    struct revh_job *j = arg;
    (void)tid;
    int pt = 0;
    while ((pt + 1) * (pt + 2) / 2 <= task)
        pt++;
    int qt = task - pt * (pt + 1) / 2;
    int c = j->c;
    int p0 = pt * TILE, p1 = EXAQ_MIN(c, p0 + TILE), q0 = qt * TILE, q1 = EXAQ_MIN(c, q0 + TILE);
    for (int p = p0; p < p1; p++) {
        const float *hrow = j->H + (size_t)j->perm[p] * c;
        int qe = EXAQ_MIN(q1, p + 1);
        for (int q = q0; q < qe; q++) {
            double v = hrow[j->perm[q]];
            if (p == q) {
                if (j->dead[j->perm[p]])
                    v = 1.0;
                v += j->lambda;
            }
            j->U[(size_t)(c - 1 - q) * c + (c - 1 - p)] = v;
        }
    }
}

/* Hinv for the damped, permuted H into U ([c][c] double). 0 or -1. */
static int hinv_build(const float *H, const int *perm, const uint8_t *dead, double lambda, int c,
                      double *U)
{
    memset(U, 0, sizeof(double) * (size_t)c * c);
    int nt = (c + TILE - 1) / TILE;
    struct revh_job j = { H, perm, dead, lambda, c, U };
    par_for(nt * (nt + 1) / 2, revh_task, &j);
    return upper_inv_factor_inplace(U, c);
}

static void set_err(char **err, const char *msg)
{
    if (err)
        *err = xstrdup(msg);
}

/* Loss 1/2 tr(D H_d D^T) of D = W0 - RTN(W0), W0 = W with the dead columns zeroed. */
static double rtn_loss(const struct qweight *w, const float *W0, const float *H, double lambda,
                       bool identity, enum qgrid g)
{
    int r = w->out, c = w->in;
    size_t n = (size_t)r * c;
    struct qweight t;
    if (qweight_init(&t, w->scheme, r, c, w->group_size) != 0)
        return NAN;
    float *D = xmalloc(n * sizeof(float));
    quant_rtn(&t, W0, g);
    qweight_dequant(&t, D);
    qweight_release(&t);
    double sq = 0.0, quad = 0.0;
    for (size_t i = 0; i < n; i++) {
        D[i] = W0[i] - D[i];
        sq += (double)D[i] * D[i];
    }
    if (identity) {
        free(D);
        return 0.5 * sq;
    }
    float *Y = xmalloc(n * sizeof(float));
    struct linear L;
    linear_init_dense(&L, c, c, KERN_F32, H);
    matmul(KERN_IMPL_CPU, Y, D, r, &L, 0);
    for (size_t i = 0; i < n; i++)
        quad += (double)D[i] * Y[i];
    free(Y);
    free(D);
    return 0.5 * quad + 0.5 * lambda * sq;
}

/* What gptq_prepare computes once per Hessian (opaque in gptq.h). */
struct gptq_prep {
    int n;
    struct gptq_opts o;
    const float *H; /* borrowed */
    int *perm;      /* position -> original column */
    uint8_t *dead;  /* [n] */
    int dead_cols;
    double *U;     /* [n][n] upper factor of H_d^-1 (permuted), NULL after the RTN fallback */
    double lambda; /* damp_used * mean(diag H) */
    double damp_used;
    bool fallback;
};

static int check_opts(const struct gptq_opts *o, char **err)
{
    if (o->block_size < 1 || !(o->dampening >= 0.0) || !isfinite(o->dampening) ||
        (int)o->actorder < GPTQ_ACTORDER_NONE || o->actorder > GPTQ_ACTORDER_GROUP ||
        (o->grid != QGRID_ABSMAX_QMAX && o->grid != QGRID_ABSMAX_HALF)) {
        set_err(err, "gptq: invalid options (block_size >= 1, dampening >= 0, known actorder "
                     "and grid)");
        return -EINVAL;
    }
    return 0;
}

void gptq_prep_free(struct gptq_prep *p)
{
    if (!p)
        return;
    free(p->perm);
    free(p->dead);
    free(p->U);
    free(p);
}

void gptq_prep_get_view(const struct gptq_prep *p, struct gptq_prep_view *v)
{
    memset(v, 0, sizeof(*v));
    if (!p)
        return;
    v->n = p->n;
    v->H = p->H;
    v->perm = p->perm;
    v->dead = p->dead;
    v->dead_cols = p->dead_cols;
    v->U = p->U;
    v->lambda = p->lambda;
    v->damp_used = p->damp_used;
    v->fallback = p->fallback;
    v->o = p->o;
}

int gptq_prepare(const float *H, int n, const struct gptq_opts *o, struct gptq_prep **out,
                 char **err)
{
    struct gptq_opts od;
    struct diag_key *keys = NULL;
    if (err)
        *err = NULL;
    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!o) {
        gptq_opts_default(&od);
        o = &od;
    }
    if (!H || n <= 0) {
        set_err(err, "gptq: missing hessian");
        return -EINVAL;
    }
    if ((uint64_t)n * (uint64_t)n > (uint64_t)SIZE_MAX / sizeof(double)) {
        set_err(err, "gptq: hessian too large");
        return -ENOMEM;
    }
    int rc = check_opts(o, err);
    if (rc)
        return rc;

    struct gptq_prep *p = xcalloc(1, sizeof(*p));
    p->n = n;
    p->o = *o;
    p->H = H;

    /* Dead columns (diag(H) == 0): H[i][i] = 1 and W[:, i] = 0 (spec 1.4); the damping mean is
     * taken after that fix. */
    p->dead = xcalloc((size_t)n, 1);
    double dsum = 0.0;
    for (int i = 0; i < n; i++) {
        double d = H[(size_t)i * n + i];
        if (d == 0.0) {
            p->dead[i] = 1;
            p->dead_cols++;
            d = 1.0;
        }
        dsum += d;
    }
    double mean_diag = dsum / n;

    /* Act-order: positions sorted by diag(H) descending (after the dead fix), ties by index so
     * the order is reproducible (torch.argsort is not stable on GPU). */
    p->perm = xmalloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        p->perm[i] = i;
    if (o->actorder != GPTQ_ACTORDER_NONE) {
        keys = xmalloc(sizeof(*keys) * (size_t)n);
        for (int i = 0; i < n; i++) {
            double d = p->dead[i] ? 1.0 : H[(size_t)i * n + i];
            keys[i].v = isnan(d) ? -INFINITY : d;
            keys[i].i = i;
        }
        qsort(keys, (size_t)n, sizeof(*keys), diag_cmp);
        for (int i = 0; i < n; i++)
            p->perm[i] = keys[i].i;
        free(keys);
    }

    /* Hinv with the damping retry (x10 up to 1.0), else RTN (Hinv = I, as llm-compressor). */
    p->U = xmalloc(sizeof(double) * (size_t)n * n);
    double damp = o->dampening;
    for (;;) {
        p->lambda = damp * mean_diag;
        if (hinv_build(H, p->perm, p->dead, p->lambda, n, p->U) == 0)
            break;
        if (damp >= 1.0) {
            p->fallback = true;
            break;
        }
        damp = damp > 0.0 ? EXAQ_MIN(damp * 10.0, 1.0) : 1e-4;
    }
    p->damp_used = damp;
    if (p->fallback) {
        free(p->U);
        p->U = NULL;
    }
    *out = p;
    return 0;
}

int gptq_quantize_prep(struct qweight *w, const float *W, const struct gptq_prep *p,
                       struct gptq_stats *stats, char **err)
{
    struct gptq_stats st;
    struct gptq_ctx x;
    int rc = -EINVAL;
    int *gpos = NULL;
    float *W0 = NULL, *Xb = NULL;

    memset(&x, 0, sizeof(x));
    memset(&st, 0, sizeof(st));
    st.loss_rtn = -1.0;
    if (err)
        *err = NULL;
    if (!w || !W || !p || !w->scale || w->out <= 0 || w->in <= 0) {
        set_err(err, "gptq: missing weight, hessian or quantized-weight storage");
        goto out;
    }
    if (w->is_fp8 || !w->q || (w->bits != 4 && w->bits != 8)) {
        set_err(err, "gptq: only integer schemes (W4A16, W4A16_ASYM, W8A16, W8A8) are supported");
        goto out;
    }
    if (w->symmetric == (w->zp != NULL) || w->group_size < -1) {
        set_err(err, "gptq: quantized weight is not initialised for its scheme");
        goto out;
    }
    if (w->in != p->n) {
        if (err)
            *err = xasprintf("gptq: weight has %d input columns but the hessian is %d x %d", w->in,
                             p->n, p->n);
        goto out;
    }

    const struct gptq_opts *o = &p->o;
    const int *perm = p->perm;
    const double *U = p->U;
    bool fallback = p->fallback;
    int r = w->out, c = w->in, G = w->group_size > 0 ? w->group_size : -1;
    int B = EXAQ_MIN(o->block_size, c);
    size_t rc_n = (size_t)r * c;
    double t1 = now_mono();
    x.w = w;
    x.o = o;
    x.r = r;
    x.c = c;
    x.G = G;
    x.bits = w->bits;
    x.B = B;
    x.perm = perm;
    free(w->g_idx);
    w->g_idx = NULL;
    st.dead_cols = p->dead_cols;
    st.fallback_rtn = fallback;
    st.damp_used = p->damp_used;

    /* W0: W with the dead columns zeroed, row-major. */
    W0 = xmalloc(rc_n * sizeof(float));
    memcpy(W0, W, rc_n * sizeof(float));
    if (p->dead_cols)
        for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++)
                if (p->dead[j])
                    W0[(size_t)i * c + j] = 0.0f;

    /* Where the quantization parameters come from (spec 1.4/1.5). */
    bool static_groups = o->static_groups || o->actorder == GPTQ_ACTORDER_STATIC;
    if (w->group_size == 0)
        x.pm = PM_TENSOR;
    else if (w->group_size < 0)
        x.pm = PM_CHANNEL;
    else
        x.pm = static_groups ? PM_STATIC : PM_DYNAMIC;
    if (x.pm == PM_TENSOR || x.pm == PM_CHANNEL) {
        /* Fitted on the original W before the dead-column fix, like IST find_params(W). */
        qweight_fit_rows(w, o->grid, W, r, c, x.pm == PM_CHANNEL);
    } else if (x.pm == PM_STATIC) {
        /* Groups fitted up front on W0: contiguous original columns, or (act-order "group")
         * consecutive permuted positions. */
        gpos = xmalloc(sizeof(int) * (size_t)c);
        bool permuted_groups = o->actorder == GPTQ_ACTORDER_GROUP;
        for (int q = 0; q < c; q++)
            gpos[q] = (permuted_groups ? q : perm[q]) / G;
        float *gv = xmalloc(sizeof(float) * (size_t)G);
        for (int i = 0; i < r; i++) {
            const float *row = W0 + (size_t)i * c;
            for (int g = 0; g < w->ngroups; g++) {
                int k0 = g * G, k1 = EXAQ_MIN(c, k0 + G);
                for (int k = k0; k < k1; k++)
                    gv[k - k0] = row[permuted_groups ? perm[k] : k];
                size_t k = (size_t)i * w->ngroups + g;
                int8_t z;
                qweight_fit_search(w, o->grid, gv, k1 - k0, o->scale_search, &w->scale[k], &z);
                if (w->zp)
                    w->zp[k] = z;
            }
        }
        free(gv);
        x.gpos = gpos;
    }

    /* Working buffers. WT[q][i] = W0[i][perm[q]]. */
    x.WT = xmalloc(rc_n * sizeof(float));
    x.QT = xmalloc(rc_n);
    x.W1T = xmalloc((size_t)B * r * sizeof(float));
    x.E = xmalloc((size_t)B * r * sizeof(float));
    x.U1 = xmalloc((size_t)B * B * sizeof(float));
    x.cur_s = xcalloc((size_t)r, sizeof(float));
    x.cur_z = xcalloc((size_t)r, sizeof(int));
    x.loss_row = xcalloc((size_t)r, sizeof(double));
    Xb = xmalloc((size_t)c * B * sizeof(float));
    for (int p0 = 0; p0 < c; p0 += TILE)
        for (int i0 = 0; i0 < r; i0 += TILE)
            for (int q = p0; q < EXAQ_MIN(c, p0 + TILE); q++) {
                float *dst = x.WT + (size_t)q * r;
                const float *src = W0 + perm[q];
                for (int i = i0; i < EXAQ_MIN(r, i0 + TILE); i++)
                    dst[i] = src[(size_t)i * c];
            }

    par_fn block_fn = colloop_use_avx2() ? block_task_avx2 : block_task_generic;
    int ntask = (r + GPTQ_ROWS - 1) / GPTQ_ROWS;
    for (int i1 = 0; i1 < c; i1 += B) {
        int i2 = EXAQ_MIN(c, i1 + B), b = i2 - i1;
        x.i1 = i1;
        x.b = b;
        memcpy(x.W1T, x.WT + (size_t)i1 * r, (size_t)b * r * sizeof(float));
        for (int i = 0; i < b; i++)
            for (int j = 0; j < b; j++)
                x.U1[(size_t)i * B + j] =
                    fallback ? (i == j ? 1.0f : 0.0f)
                             : (j >= i ? (float)U[(size_t)(i1 + i) * c + i1 + j] : 0.0f);
        par_for(ntask, block_fn, &x);
        if (i2 < c && !fallback) {
            /* W[:, i2:] -= Err1 . Hinv[i1:i2, i2:], i.e. WT[i2:] += Xb . E^T with
             * Xb[jj][k] = -Hinv[i1+k][i2+jj]. */
            int N = c - i2;
            for (int k = 0; k < b; k++) {
                const double *urow = U + (size_t)(i1 + k) * c + i2;
                for (int jj = 0; jj < N; jj++)
                    Xb[(size_t)jj * b + k] = -(float)urow[jj];
            }
            struct linear L;
            linear_init_dense(&L, r, b, KERN_F32, x.E);
            matmul(KERN_IMPL_CPU, x.WT + (size_t)i2 * r, Xb, N, &L, 1);
        }
    }

    /* Codes back to [r][c] in the original column order; g_idx for act-order "group". */
    for (int p0 = 0; p0 < c; p0 += TILE)
        for (int i0 = 0; i0 < r; i0 += TILE)
            for (int q = p0; q < EXAQ_MIN(c, p0 + TILE); q++) {
                const int8_t *src = x.QT + (size_t)q * r;
                int8_t *dst = w->q + perm[q];
                for (int i = i0; i < EXAQ_MIN(r, i0 + TILE); i++)
                    dst[(size_t)i * c] = src[i];
            }
    if (o->actorder == GPTQ_ACTORDER_GROUP && w->group_size > 0) {
        w->g_idx = xmalloc(sizeof(int32_t) * (size_t)c);
        for (int q = 0; q < c; q++)
            w->g_idx[perm[q]] = q / G;
    }
    for (int i = 0; i < r; i++)
        st.loss += x.loss_row[i];
    double t2 = now_mono();
    if (o->compute_loss_rtn)
        st.loss_rtn = rtn_loss(w, W0, p->H, p->lambda, fallback, o->grid);
    st.seconds_quant = t2 - t1;
    st.seconds_loss_rtn = now_mono() - t2;
    rc = 0;

out:
    if (stats)
        *stats = st;
    free(gpos);
    free(W0);
    free(Xb);
    free(x.WT);
    free(x.QT);
    free(x.W1T);
    free(x.E);
    free(x.U1);
    free(x.cur_s);
    free(x.cur_z);
    free(x.loss_row);
    return rc;
}

int gptq_quantize(struct qweight *w, const float *W, const float *H, const struct gptq_opts *o,
                  struct gptq_stats *stats, char **err)
{
    struct gptq_prep *p = NULL;
    double t0 = now_mono(), t1;
    int rc = -EINVAL;

    if (err)
        *err = NULL;
    if (!w || w->in <= 0) {
        set_err(err, "gptq: missing weight, hessian or quantized-weight storage");
        goto fail;
    }
    rc = gptq_prepare(H, w->in, o, &p, err);
    if (rc)
        goto fail;
    t1 = now_mono();
    rc = gptq_quantize_prep(w, W, p, stats, err);
    if (rc == 0 && stats)
        stats->seconds_factor = t1 - t0;
    gptq_prep_free(p);
    return rc;

fail:
    if (stats) {
        memset(stats, 0, sizeof(*stats));
        stats->loss_rtn = -1.0;
    }
    return rc;
}
