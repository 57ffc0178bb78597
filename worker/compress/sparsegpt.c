/*
 * sparsegpt: SparseGPT's column loop (IST-DASLab `sparsegpt.py: fasterprune`, llm-compressor
 * `sgpt_sparsify.py`; algorithms spec 3.3) with optional joint quantization, and the magnitude
 * baseline.
 *
 * DESIGN. Same layout as worker/compress/gptq.c: the working weight is transposed, WT[c][r], so a
 * block's column loop runs over contiguous rows (tasks own 64-row ranges; rows are independent, and
 * the N:M mask is chosen per row), and the lazy update W[:, i2:] -= Err1 . Hinv[i1:i2, i2:] is one
 * fp32 GEMM through kernels/matmul.h. The unstructured mask is chosen once per block across all
 * rows (a selection of the k smallest saliencies), before the row tasks start. Hinv, dead
 * columns and damping come from gptq_prepare() through gptq_prep_get_view().
 */
#include "worker/compress/sparsegpt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "worker/compress/colloop.h"

/* Rows owned by one task of the column loop. */
#define SG_ROWS 64

void sparsegpt_opts_default(struct sparsegpt_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->sparsity = 0.5;
    o->grid = QGRID_ABSMAX_HALF;
    o->compute_loss_magnitude = true;
}

/* ---- selection helpers --------------------------------------------------------------------- */

struct sal {
    float v;
    int i;
};

static ALWAYS_INLINE int sal_less(const struct sal *a, const struct sal *b)
{
    return a->v < b->v || (a->v == b->v && a->i < b->i);
}

static ALWAYS_INLINE void sal_swap(struct sal *a, struct sal *b)
{
    struct sal t = *a;
    *a = *b;
    *b = t;
}

/* Reorders a[0..n) so that a[0..k) are the k smallest (by value, then index). Quickselect with
 * a median-of-three pivot; the keys are distinct (the index breaks ties), so it terminates. */
static void select_k(struct sal *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    if (k <= 0 || k >= n)
        return;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sal_less(&a[mid], &a[lo]))
            sal_swap(&a[mid], &a[lo]);
        if (sal_less(&a[hi], &a[lo]))
            sal_swap(&a[hi], &a[lo]);
        if (sal_less(&a[hi], &a[mid]))
            sal_swap(&a[hi], &a[mid]);
        struct sal piv = a[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (sal_less(&a[i], &piv))
                i++;
            while (sal_less(&piv, &a[j]))
                j--;
            if (i <= j) {
                sal_swap(&a[i], &a[j]);
                i++;
                j--;
            }
        }
        /* a[lo..j] <= piv <= a[i..hi]; the k-th smallest (index k-1) lies in one part. */
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            return;
    }
}

/* Marks in m[0..len) the n entries of smallest key (ties: lower position), len <= 64. */
static void mark_n_smallest(const float *key, int len, int n, uint8_t *m)
{
    for (int t = 0; t < len; t++)
        m[t] = 0;
    for (int c = 0; c < n && c < len; c++) {
        int best = -1;
        for (int t = 0; t < len; t++)
            if (!m[t] && (best < 0 || key[t] < key[best]))
                best = t;
        m[best] = 1;
    }
}

static float nan_to_inf(float v)
{
    return isnan(v) ? INFINITY : v;
}

/* ---- the column loop ----------------------------------------------------------------------- */

enum sg_params {
    SGP_NONE = 0, /* no quantization */
    SGP_DYNAMIC,  /* groups fitted when the loop reaches their first column */
    SGP_CHANNEL,  /* per row, fitted on the original W */
    SGP_TENSOR,   /* one, fitted on the original W */
};

struct sg_ctx {
    const struct sparsegpt_opts *o;
    struct qweight *w; /* NULL without quantization */
    enum sg_params pm;
    int r, c, G, bits, B, i1, b;
    float *WT;        /* [c][r] global working weight */
    float *W1T;       /* [B][r] the current block */
    float *E;         /* [r][b] Err1 */
    float *U1;        /* [B][B] the block's diagonal block of Hinv (upper) */
    float *RT;        /* [c][r] result values (0 where pruned, q or w elsewhere) */
    int8_t *QT;       /* [c][r] codes (with quantization) */
    uint8_t *MT;      /* [c][r] mask, 1 = pruned */
    float *cur_s;     /* [r] SGP_DYNAMIC current group scale */
    int *cur_z;       /* [r] */
    double *loss_row; /* [r] */
};

/* SGP_DYNAMIC: fit the group starting at column pos for rows r0..r1 on the updated values
 * (W1 inside the current block, W beyond it), the known masked entries counted as 0. */
static void fit_dynamic(struct sg_ctx *x, int pos, int r0, int r1)
{
    float mn[SG_ROWS], mx[SG_ROWS];
    int n = r1 - r0, end = EXAQ_MIN(pos + x->G, x->c), g = pos / x->G;
    for (int t = 0; t < n; t++)
        mn[t] = mx[t] = 0.0f;
    for (int k = pos; k < end; k++) {
        bool inblk = k < x->i1 + x->b;
        const float *src =
            inblk ? x->W1T + (size_t)(k - x->i1) * x->r + r0 : x->WT + (size_t)k * x->r + r0;
        const uint8_t *msk = x->MT + (size_t)k * x->r + r0;
        for (int t = 0; t < n; t++) {
            float v = inblk && msk[t] ? 0.0f : src[t];
            mn[t] = v < mn[t] ? v : mn[t];
            mx[t] = v > mx[t] ? v : mx[t];
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

static ALWAYS_INLINE void block_body(struct sg_ctx *x, int task)
{
    int r0 = task * SG_ROWS, r1 = EXAQ_MIN(x->r, r0 + SG_ROWS), n = r1 - r0;
    int pn = x->o->prune_n, pm = x->o->prune_m;
    struct qweight *w = x->w;
    float ev[SG_ROWS], sv[SG_ROWS];
    int zv[SG_ROWS];
    double lacc[SG_ROWS];
    for (int t = 0; t < n; t++) {
        lacc[t] = 0.0;
        sv[t] = 1.0f;
        zv[t] = 0;
    }
    for (int i = 0; i < x->b; i++) {
        int pos = x->i1 + i;
        if (pm > 0 && i % pm == 0) {
            /* N:M: each row masks the pn smallest W1^2 / U_jj^2 of columns i..i+pm-1. */
            for (int t = 0; t < n; t++) {
                float key[64];
                uint8_t mk[64];
                for (int j = 0; j < pm; j++) {
                    float v = x->W1T[(size_t)(i + j) * x->r + r0 + t];
                    float d = x->U1[(size_t)(i + j) * x->B + i + j];
                    key[j] = nan_to_inf(v * v / (d * d));
                }
                mark_n_smallest(key, pm, pn, mk);
                for (int j = 0; j < pm; j++)
                    x->MT[(size_t)(pos + j) * x->r + r0 + t] = mk[j];
            }
        }
        if (x->pm == SGP_DYNAMIC) {
            if (pos % x->G == 0)
                fit_dynamic(x, pos, r0, r1);
            for (int t = 0; t < n; t++) {
                sv[t] = x->cur_s[r0 + t];
                zv[t] = x->cur_z[r0 + t];
            }
        } else if (x->pm == SGP_CHANNEL || x->pm == SGP_TENSOR) {
            for (int t = 0; t < n; t++) {
                size_t k = x->pm == SGP_TENSOR ? 0 : (size_t)(r0 + t);
                sv[t] = kern_bf16_to_f32(w->scale[k]);
                zv[t] = w->zp ? w->zp[k] : 0;
            }
        }
        float d = x->U1[(size_t)i * x->B + i];
        const float *w1 = x->W1T + (size_t)i * x->r + r0;
        const uint8_t *mk = x->MT + (size_t)pos * x->r + r0;
        float *rt = x->RT + (size_t)pos * x->r + r0;
        int8_t *qt = x->QT ? x->QT + (size_t)pos * x->r + r0 : NULL;
        float *e = x->E + (size_t)r0 * x->b + i;
        for (int t = 0; t < n; t++) {
            float q;
            if (mk[t]) {
                q = 0.0f;
                if (qt)
                    qt[t] = (int8_t)zv[t];
            } else if (qt) {
                int code = quant_code(w1[t], sv[t], zv[t], x->bits);
                qt[t] = (int8_t)code;
                q = (float)(code - zv[t]) * sv[t];
            } else {
                q = w1[t];
            }
            float err = (w1[t] - q) / d;
            rt[t] = q;
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

/* Unstructured: mask the k = floor(r * b * sparsity) smallest W1^2 / U_ii^2 of the block. */
static void block_mask_unstructured(struct sg_ctx *x, struct sal *keys)
{
    int64_t nb = (int64_t)x->r * x->b;
    int64_t k = (int64_t)floor((double)nb * x->o->sparsity);
    if (k <= 0)
        return;
    for (int i = 0; i < x->b; i++) {
        float d = x->U1[(size_t)i * x->B + i];
        const float *w1 = x->W1T + (size_t)i * x->r;
        for (int t = 0; t < x->r; t++) {
            struct sal *s = &keys[(size_t)i * x->r + t];
            s->v = nan_to_inf(w1[t] * w1[t] / (d * d));
            s->i = i * x->r + t;
        }
    }
    select_k(keys, nb, k);
    for (int64_t q = 0; q < EXAQ_MIN(k, nb); q++)
        x->MT[(size_t)x->i1 * x->r + (size_t)keys[q].i] = 1;
}

static void set_err(char **err, const char *msg)
{
    if (err)
        *err = xstrdup(msg);
}

/* 1/2 tr(D H_d D^T) for D = W0 - B (the fallback: 1/2 |D|^2), as gptq.c's rtn_loss. */
static double quad_loss(const float *W0, const float *B, int r, int c,
                        const struct gptq_prep_view *v)
{
    size_t n = (size_t)r * c;
    float *D = xmalloc(n * sizeof(float));
    double sq = 0.0, quad = 0.0;
    for (size_t i = 0; i < n; i++) {
        D[i] = W0[i] - B[i];
        sq += (double)D[i] * D[i];
    }
    if (v->fallback) {
        free(D);
        return 0.5 * sq;
    }
    float *Y = xmalloc(n * sizeof(float));
    struct linear L;
    linear_init_dense(&L, c, c, KERN_F32, v->H);
    matmul(KERN_IMPL_CPU, Y, D, r, &L, 0);
    for (size_t i = 0; i < n; i++)
        quad += (double)D[i] * Y[i];
    free(Y);
    free(D);
    return 0.5 * quad + 0.5 * v->lambda * sq;
}

int64_t sparsegpt_magnitude(float *W, int out, int in, const struct sparsegpt_opts *o,
                            uint8_t *mask)
{
    int64_t pruned = 0;
    if (!W || !o || out < 1 || in < 1)
        return -EINVAL;
    if (o->prune_m > 0) {
        if (o->prune_m > 64 || o->prune_n < 0 || o->prune_n > o->prune_m || in % o->prune_m)
            return -EINVAL;
        for (int r = 0; r < out; r++)
            for (int k0 = 0; k0 < in; k0 += o->prune_m) {
                float key[64];
                uint8_t mk[64];
                float *g = W + (size_t)r * in + k0;
                for (int j = 0; j < o->prune_m; j++)
                    key[j] = nan_to_inf(fabsf(g[j]));
                mark_n_smallest(key, o->prune_m, o->prune_n, mk);
                for (int j = 0; j < o->prune_m; j++) {
                    if (mk[j])
                        g[j] = 0.0f;
                    if (mask)
                        mask[(size_t)r * in + k0 + j] = mk[j];
                    pruned += mk[j];
                }
            }
        return pruned;
    }
    if (!(o->sparsity >= 0.0 && o->sparsity < 1.0))
        return -EINVAL;
    int64_t k = (int64_t)floor((double)in * o->sparsity);
    struct sal *keys = xmalloc((size_t)in * sizeof(*keys));
    for (int r = 0; r < out; r++) {
        float *row = W + (size_t)r * in;
        for (int j = 0; j < in; j++) {
            keys[j].v = nan_to_inf(fabsf(row[j]));
            keys[j].i = j;
        }
        select_k(keys, in, k);
        if (mask)
            memset(mask + (size_t)r * in, 0, (size_t)in);
        for (int64_t q = 0; q < k; q++) {
            row[keys[q].i] = 0.0f;
            if (mask)
                mask[(size_t)r * in + keys[q].i] = 1;
        }
        pruned += k;
    }
    free(keys);
    return pruned;
}

int sparsegpt_prune(const float *W, int out, const struct gptq_prep *p,
                    const struct sparsegpt_opts *o, float *Wout, struct qweight *qw, uint8_t *mask,
                    struct sparsegpt_stats *st, char **err)
{
    struct sparsegpt_stats res;
    struct gptq_prep_view v;
    struct sg_ctx x;
    struct sal *keys = NULL;
    float *W0 = NULL, *Xb = NULL, *Bl = NULL;
    int rc = -EINVAL;
    double t0 = now_mono();

    memset(&x, 0, sizeof(x));
    memset(&res, 0, sizeof(res));
    res.loss_magnitude = -1.0;
    if (err)
        *err = NULL;
    if (!W || !p || !o || out < 1) {
        set_err(err, "sparsegpt: missing weight or prepared hessian");
        goto out;
    }
    gptq_prep_get_view(p, &v);
    int r = out, c = v.n, B = EXAQ_MIN(v.o.block_size, c);
    size_t rc_n = (size_t)r * c;
    bool nm = o->prune_m > 0;
    if (v.o.actorder != GPTQ_ACTORDER_NONE) {
        set_err(err, "sparsegpt: the hessian was prepared with act-order; sparsegpt keeps the "
                     "column order");
        goto out;
    }
    if (nm && (o->prune_m > 64 || o->prune_n < 0 || o->prune_n > o->prune_m)) {
        set_err(err, "sparsegpt: N:M pattern needs 0 <= N <= M <= 64");
        goto out;
    }
    if (nm && (c % o->prune_m || B % o->prune_m)) {
        if (err)
            *err = xasprintf("sparsegpt: the %d:%d pattern needs the input size (%d) and the "
                             "block size (%d) to be multiples of %d",
                             o->prune_n, o->prune_m, c, B, o->prune_m);
        goto out;
    }
    if (!nm && !(o->sparsity >= 0.0 && o->sparsity < 1.0)) {
        set_err(err, "sparsegpt: sparsity must be in [0, 1)");
        goto out;
    }
    if (qw) {
        if (qw->is_fp8 || !qw->q || (qw->bits != 4 && qw->bits != 8) || qw->out != r ||
            qw->in != c || qw->symmetric == (qw->zp != NULL) || qw->group_size < -1) {
            set_err(err, "sparsegpt: the quantized weight must be an integer scheme of the "
                         "weight's shape (W4A16, W4A16_ASYM, W8A16, W8A8)");
            goto out;
        }
        free(qw->g_idx);
        qw->g_idx = NULL;
    }

    x.o = o;
    x.w = qw;
    x.r = r;
    x.c = c;
    x.B = B;
    x.bits = qw ? qw->bits : 0;
    x.G = qw && qw->group_size > 0 ? qw->group_size : -1;
    x.pm = !qw                   ? SGP_NONE
           : qw->group_size == 0 ? SGP_TENSOR
           : qw->group_size < 0  ? SGP_CHANNEL
                                 : SGP_DYNAMIC;
    res.dead_cols = v.dead_cols;
    res.fallback_rtn = v.fallback;
    res.damp_used = v.damp_used;
    res.total = (int64_t)rc_n;

    /* W0: W with the dead columns zeroed. */
    W0 = xmalloc(rc_n * sizeof(float));
    memcpy(W0, W, rc_n * sizeof(float));
    if (v.dead_cols)
        for (int i = 0; i < r; i++)
            for (int j = 0; j < c; j++)
                if (v.dead[j])
                    W0[(size_t)i * c + j] = 0.0f;
    if (x.pm == SGP_CHANNEL || x.pm == SGP_TENSOR) /* on the original W, like IST find_params(W) */
        qweight_fit_rows(qw, o->grid, W, r, c, x.pm == SGP_CHANNEL);

    x.WT = xmalloc(rc_n * sizeof(float));
    x.RT = xmalloc(rc_n * sizeof(float));
    x.MT = xcalloc(rc_n, 1);
    x.QT = qw ? xmalloc(rc_n) : NULL;
    x.W1T = xmalloc((size_t)B * r * sizeof(float));
    x.E = xmalloc((size_t)B * r * sizeof(float));
    x.U1 = xmalloc((size_t)B * B * sizeof(float));
    x.cur_s = xcalloc((size_t)r, sizeof(float));
    x.cur_z = xcalloc((size_t)r, sizeof(int));
    x.loss_row = xcalloc((size_t)r, sizeof(double));
    Xb = xmalloc((size_t)c * B * sizeof(float));
    if (!nm)
        keys = xmalloc((size_t)B * r * sizeof(*keys));
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++)
            x.WT[(size_t)j * r + i] = W0[(size_t)i * c + j];

    par_fn block_fn = colloop_use_avx2() ? block_task_avx2 : block_task_generic;
    int ntask = (r + SG_ROWS - 1) / SG_ROWS;
    for (int i1 = 0; i1 < c; i1 += B) {
        int i2 = EXAQ_MIN(c, i1 + B), b = i2 - i1;
        x.i1 = i1;
        x.b = b;
        memcpy(x.W1T, x.WT + (size_t)i1 * r, (size_t)b * r * sizeof(float));
        for (int i = 0; i < b; i++)
            for (int j = 0; j < b; j++)
                x.U1[(size_t)i * B + j] =
                    v.fallback ? (i == j ? 1.0f : 0.0f)
                               : (j >= i ? (float)v.U[(size_t)(i1 + i) * c + i1 + j] : 0.0f);
        if (!nm)
            block_mask_unstructured(&x, keys);
        par_for(ntask, block_fn, &x);
        if (i2 < c && !v.fallback) {
            /* W[:, i2:] -= Err1 . Hinv[i1:i2, i2:] as WT[i2:] += Xb . E^T (see gptq.c). */
            int N = c - i2;
            for (int k = 0; k < b; k++) {
                const double *urow = v.U + (size_t)(i1 + k) * c + i2;
                for (int jj = 0; jj < N; jj++)
                    Xb[(size_t)jj * b + k] = -(float)urow[jj];
            }
            struct linear L;
            linear_init_dense(&L, r, b, KERN_F32, x.E);
            matmul(KERN_IMPL_CPU, x.WT + (size_t)i2 * r, Xb, N, &L, 1);
        }
    }

    /* Results back to [r][c]. */
    Bl = xmalloc(rc_n * sizeof(float));
    for (int i = 0; i < r; i++)
        for (int j = 0; j < c; j++) {
            size_t src = (size_t)j * r + i, dst = (size_t)i * c + j;
            Bl[dst] = x.RT[src];
            res.pruned += x.MT[src];
            res.zeros += x.RT[src] == 0.0f;
            if (mask)
                mask[dst] = x.MT[src];
            if (qw)
                qw->q[dst] = x.QT[src];
        }
    if (Wout)
        memcpy(Wout, Bl, rc_n * sizeof(float));
    for (int i = 0; i < r; i++)
        res.loss += x.loss_row[i];
    if (o->compute_loss_magnitude) {
        /* Magnitude pruning with the same budget, then RTN on the same grid when quantizing. */
        memcpy(Bl, W0, rc_n * sizeof(float));
        if (sparsegpt_magnitude(Bl, r, c, o, NULL) >= 0) {
            if (qw) {
                struct qweight t;
                if (qweight_init(&t, qw->scheme, r, c, qw->group_size) == 0) {
                    quant_rtn(&t, Bl, o->grid);
                    qweight_dequant(&t, Bl);
                    qweight_release(&t);
                }
            }
            res.loss_magnitude = quad_loss(W0, Bl, r, c, &v);
        }
    }
    res.seconds = now_mono() - t0;
    rc = 0;
out:
    if (st)
        *st = res;
    free(keys);
    free(W0);
    free(Xb);
    free(Bl);
    free(x.WT);
    free(x.RT);
    free(x.MT);
    free(x.QT);
    free(x.W1T);
    free(x.E);
    free(x.U1);
    free(x.cur_s);
    free(x.cur_z);
    free(x.loss_row);
    return rc;
}
