/*
 * greedy: the global greedy rounding correction (see greedy.h for the algorithm and its
 * contract).
 *
 * Per row everything is in double: g = H e is computed exactly from scratch (O(in^2)), kept up
 * to date by g += d H[j] after each flip (H is symmetric), and the row's error e^T H e is
 * tracked by the exact change of a batch D: E' - E = D^T (g + g'). At the end the error is
 * recomputed from scratch and compared with the nearest-rounding one, so no rounding drift can
 * make the result worse than nearest rounding.
 */
#include "worker/compress/greedy.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "kernels/par.h"

/* Rows handed to one par_for task. */
#define GREEDY_ROWS_PER_TASK 4

void greedy_opts_default(struct greedy_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->outlier_percent = 1.0;
    o->max_rounds = 0;
}

static size_t scale_index(const struct qweight *w, int r, int c)
{
    if (w->group_size == 0)
        return 0;
    return (size_t)r * (size_t)w->ngroups + (size_t)qweight_group_of(w, c);
}

/* Error of row r: e[j] = deq(q[r][j]) - Wref[r][j]. */
static void row_error(const struct qweight *w, int r, const float *Wref, double *e)
{
    const int8_t *q = w->q + (size_t)r * w->in;
    const float *ref = Wref + (size_t)r * w->in;
    for (int j = 0; j < w->in; j++) {
        size_t k = scale_index(w, r, j);
        double s = kern_bf16_to_f32(w->scale[k]);
        int z = w->zp ? w->zp[k] : 0;
        e[j] = (double)(q[j] - z) * s - (double)ref[j];
    }
}

/* g = H e; returns e^T H e. */
static double row_gradient(const float *H, int n, const double *e, double *g)
{
    double E = 0.0;
    for (int a = 0; a < n; a++) {
        const float *h = H + (size_t)a * n;
        double acc = 0.0;
        for (int b = 0; b < n; b++)
            acc += (double)h[b] * e[b];
        g[a] = acc;
        E += e[a] * acc;
    }
    return E;
}

struct greedy_job {
    struct qweight *w;
    const float *Wround, *Wref, *H;
    const unsigned char *masked;
    int max_rounds;
    /* per row results */
    double *e0, *e1;
    long *flips, *cands;
    unsigned char *restored;
};

struct cand_cost {
    double cost;
    int j;
};

static int cmp_cost(const void *a, const void *b)
{
    const struct cand_cost *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost < y->cost ? -1 : 1;
    return x->j - y->j; /* deterministic order for equal costs */
}

static void greedy_row(struct greedy_job *jb, int r, double *e, double *g, int8_t *lo,
                       int8_t *nearest, double *step, struct cand_cost *cc, int *batch)
{
    struct qweight *w = jb->w;
    const int n = w->in, qmin = -(1 << (w->bits - 1)), qmax = (1 << (w->bits - 1)) - 1;
    int8_t *q = w->q + (size_t)r * n;
    const float *wr = jb->Wround + (size_t)r * n;
    const float *H = jb->H;
    long ncand = 0;

    memcpy(nearest, q, (size_t)n);
    /* The lower of the two neighbouring codes of each weight; step[j] = 0 marks a weight that
     * is not a candidate (masked, clamped at an end of the grid, or not finite). */
    for (int j = 0; j < n; j++) {
        size_t k = scale_index(w, r, j);
        float s = kern_bf16_to_f32(w->scale[k]);
        int z = w->zp ? w->zp[k] : 0;
        float v = wr[j] / s + (float)z;
        lo[j] = 0;
        step[j] = 0.0;
        if (jb->masked[j] || !isfinite(v))
            continue;
        float f = floorf(v);
        if (f < (float)qmin || f + 1.0f > (float)qmax || (q[j] != (int)f && q[j] != (int)f + 1))
            continue;
        lo[j] = (int8_t)f;
        step[j] = (double)s;
        ncand++;
    }
    jb->cands[r] = ncand;
    row_error(w, r, jb->Wref, e);
    double E0 = row_gradient(H, n, e, g);
    jb->e0[r] = E0;
    int B = n, rounds = 0, max_rounds = jb->max_rounds > 0 ? jb->max_rounds : 8 * n;
    while (ncand > 0 && rounds++ < max_rounds) {
        int nneg = 0;
        for (int j = 0; j < n; j++) {
            if (step[j] == 0.0)
                continue;
            /* d: the change of deq(q[j]) when q[j] moves to its other neighbour. */
            double d = q[j] == lo[j] ? step[j] : -step[j];
            double cost = 2.0 * d * g[j] + d * d * (double)H[(size_t)j * n + j];
            if (cost < 0.0)
                cc[nneg++] = (struct cand_cost){ cost, j };
        }
        if (nneg == 0)
            break;
        if (B > nneg)
            B = nneg;
        if (B < nneg)
            qsort(cc, (size_t)nneg, sizeof(*cc), cmp_cost);
        /* Apply the batch: delta = sum_b d_b (D^T g_old), then g += d_b H[j_b]. */
        double dg_old = 0.0, dg_new = 0.0;
        for (int b = 0; b < B; b++) {
            int j = cc[b].j;
            double d = q[j] == lo[j] ? step[j] : -step[j];
            batch[b] = j;
            dg_old += d * g[j];
            q[j] = q[j] == lo[j] ? (int8_t)(lo[j] + 1) : lo[j];
            e[j] += d;
            const float *h = H + (size_t)j * n;
            for (int a = 0; a < n; a++)
                g[a] += d * (double)h[a];
        }
        for (int b = 0; b < B; b++) {
            int j = batch[b];
            /* q[j] has moved: its change was +step when it is now lo + 1. */
            double d = q[j] == lo[j] ? -step[j] : step[j];
            dg_new += d * g[j];
        }
        double dE = dg_old + dg_new;
        if (dE < 0.0)
            continue;
        /* Undo the batch, then try a smaller one (a single flip of negative cost always
         * lowers E, up to rounding; when even that fails, stop). */
        for (int b = 0; b < B; b++) {
            int j = batch[b];
            double d = q[j] == lo[j] ? -step[j] : step[j]; /* the change that was applied */
            q[j] = q[j] == lo[j] ? (int8_t)(lo[j] + 1) : lo[j];
            e[j] -= d;
            const float *h = H + (size_t)j * n;
            for (int a = 0; a < n; a++)
                g[a] -= d * (double)h[a];
        }
        if (B == 1)
            break;
        B /= 2;
    }
    /* The final check, from scratch. */
    row_error(w, r, jb->Wref, e);
    double E1 = row_gradient(H, n, e, g);
    long flips = 0;
    for (int j = 0; j < n; j++)
        flips += q[j] != nearest[j];
    if (!(E1 < E0) && flips) {
        memcpy(q, nearest, (size_t)n);
        E1 = E0;
        flips = 0;
        jb->restored[r] = 1;
    }
    jb->e1[r] = E1;
    jb->flips[r] = flips;
}

static void greedy_task(void *arg, int task, int tid)
{
    struct greedy_job *jb = arg;
    int n = jb->w->in;
    (void)tid;
    double *e = xmalloc((size_t)n * sizeof(double));
    double *g = xmalloc((size_t)n * sizeof(double));
    double *step = xmalloc((size_t)n * sizeof(double));
    int8_t *lo = xmalloc((size_t)n);
    int8_t *nearest = xmalloc((size_t)n);
    struct cand_cost *cc = xmalloc((size_t)n * sizeof(*cc));
    int *batch = xmalloc((size_t)n * sizeof(int));
    int r0 = task * GREEDY_ROWS_PER_TASK, r1 = EXAQ_MIN(r0 + GREEDY_ROWS_PER_TASK, jb->w->out);
    for (int r = r0; r < r1; r++)
        greedy_row(jb, r, e, g, lo, nearest, step, cc, batch);
    free(e);
    free(g);
    free(step);
    free(lo);
    free(nearest);
    free(cc);
    free(batch);
}

struct sal_idx {
    double v;
    int j;
};

static int cmp_sal_desc(const void *a, const void *b)
{
    const struct sal_idx *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return x->j - y->j;
}

int greedy_round(struct qweight *w, const float *Wround, const float *Wref, const float *H,
                 const float *salience, const struct greedy_opts *o, struct greedy_stats *st,
                 char **err)
{
    struct greedy_opts def;
    struct greedy_stats res = { 0 };
    if (err)
        *err = NULL;
    if (!o) {
        greedy_opts_default(&def);
        o = &def;
    }
    if (!w || !Wround || !Wref || !H || w->out < 1 || w->in < 1) {
        err_setf(err, "greedy rounding: bad arguments");
        return -EINVAL;
    }
    if (w->is_fp8 || !w->q || (w->bits != 4 && w->bits != 8)) {
        err_setf(err, "greedy rounding needs an integer scheme (4 or 8 bits), not %s",
                 qscheme_name(w->scheme));
        return -EINVAL;
    }
    if (!(o->outlier_percent >= 0.0 && o->outlier_percent < 100.0)) {
        err_setf(err, "greedy rounding: outlier_percent %g is outside [0, 100)",
                 o->outlier_percent);
        return -EINVAL;
    }
    int out = w->out, in = w->in;
    unsigned char *masked = xcalloc((size_t)in, 1);
    int nmask = (int)ceil((double)in * o->outlier_percent / 100.0);
    if (nmask > 0) {
        struct sal_idx *si = xmalloc((size_t)in * sizeof(*si));
        for (int j = 0; j < in; j++) {
            double v = salience ? (double)salience[j] : (double)H[(size_t)j * in + j];
            si[j] = (struct sal_idx){ isnan(v) ? INFINITY : v, j };
        }
        qsort(si, (size_t)in, sizeof(*si), cmp_sal_desc);
        for (int k = 0; k < nmask && k < in; k++)
            masked[si[k].j] = 1;
        free(si);
    }
    struct greedy_job jb = {
        .w = w,
        .Wround = Wround,
        .Wref = Wref,
        .H = H,
        .masked = masked,
        .max_rounds = o->max_rounds,
        .e0 = xcalloc((size_t)out, sizeof(double)),
        .e1 = xcalloc((size_t)out, sizeof(double)),
        .flips = xcalloc((size_t)out, sizeof(long)),
        .cands = xcalloc((size_t)out, sizeof(long)),
        .restored = xcalloc((size_t)out, 1),
    };
    par_for((out + GREEDY_ROWS_PER_TASK - 1) / GREEDY_ROWS_PER_TASK, greedy_task, &jb);
    for (int r = 0; r < out; r++) {
        res.err_nearest += jb.e0[r];
        res.err_greedy += jb.e1[r];
        res.flips += jb.flips[r];
        res.candidates += jb.cands[r];
        res.rows_restored += jb.restored[r];
    }
    res.err_nearest /= 2.0 * out;
    res.err_greedy /= 2.0 * out;
    res.masked_cols = EXAQ_MIN(nmask, in);
    if (st)
        *st = res;
    free(jb.e0);
    free(jb.e1);
    free(jb.flips);
    free(jb.cands);
    free(jb.restored);
    free(masked);
    return 0;
}

double greedy_output_error(const struct qweight *w, const float *Wref, const float *H)
{
    int n = w->in;
    double *e = xmalloc((size_t)n * sizeof(double)), *g = xmalloc((size_t)n * sizeof(double));
    double acc = 0.0;
    for (int r = 0; r < w->out; r++) {
        row_error(w, r, Wref, e);
        acc += row_gradient(H, n, e, g);
    }
    free(e);
    free(g);
    return acc / (2.0 * w->out);
}
