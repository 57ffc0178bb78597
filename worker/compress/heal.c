/*
 * heal: least-squares healing of pruned layers. See heal.h for the method.
 *
 * DESIGN
 * A pass runs every calibration window through the teacher (up to the last target it needs)
 * and the student (from the first layer that differs from the teacher, up to the last gap it
 * needs), optionally capturing one student layer's internals through model hooks to accumulate
 * one gap's normal equations, and optionally measuring the residual error at every gap. Passes:
 *   1. error before, for every gap, plus the statistics of the first fold step of the first gap;
 *   2. one pass per further fold step (gap by gap, in order), each seeing the folds before it;
 *   3. error after, for every gap.
 * Memory: per window only [T][hidden] buffers (one target per gap) and [T][intermediate] for the
 * down_proj inputs; the normal equations are [inter][inter] + [inter][hidden] doubles.
 * Must not change anything in the teacher, nor any student weight other than the gap layers'
 * down_proj and post_feedforward_layernorm.
 */
#include "worker/compress/heal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/linalg.h"
#include "kernels/syrk.h"

/* ---- linear algebra ------------------------------------------------------------------------ */

int heal_cholesky(double *A, int n)
{
    return linalg_chol(KERN_IMPL_CPU, A, n, (size_t)n) == 0 ? 0 : -EDOM;
}

void heal_cholesky_solve(const double *L, int n, double *B, int nrhs)
{
    linalg_chol_solve(KERN_IMPL_CPU, L, n, (size_t)n, B, nrhs, (size_t)nrhs);
}

void heal_norm_scales(const double *A, const double *B, int n, double ridge, double *t)
{
    double mean = 0;
    for (int j = 0; j < n; j++)
        mean += A[j];
    mean /= n > 0 ? n : 1;
    double lam = ridge * mean;
    for (int j = 0; j < n; j++) {
        double den = A[j] + lam;
        t[j] = den > 0 ? (B[j] + lam) / den : 1.0;
    }
}

int heal_refit_solve(double *A, double *B, int in, int out, double ridge, float *W,
                     double *lam_used, char **err)
{
    double *diag = xmalloc(sizeof(double) * (size_t)in), *rhs = NULL, mean = 0, lam;
    int rc = -EDOM;
    for (int i = 0; i < in; i++) {
        diag[i] = A[(size_t)i * in + i];
        mean += diag[i];
    }
    mean /= in;
    if (!(mean > 0) || !isfinite(mean)) {
        err_setf(err, "refit: the down_proj inputs are all zero or not finite on the calibration "
                      "data");
        free(diag);
        return -EINVAL;
    }
    lam = ridge * mean;
    rhs = xmalloc(sizeof(double) * (size_t)in * out);
    for (int attempt = 0; attempt <= 8; attempt++) {
        /* Restore the lower triangle (Cholesky overwrote it) from the untouched upper one. */
        for (int i = 0; i < in; i++) {
            for (int k = 0; k < i; k++)
                A[(size_t)i * in + k] = A[(size_t)k * in + i];
            A[(size_t)i * in + i] = diag[i] + lam;
        }
        if (heal_cholesky(A, in) == 0) {
            for (int i = 0; i < in; i++)
                for (int o = 0; o < out; o++)
                    rhs[(size_t)i * out + o] = B[(size_t)i * out + o] + lam * W[(size_t)o * in + i];
            heal_cholesky_solve(A, in, rhs, out);
            rc = 0;
            break;
        }
        lam = lam > 0 ? lam * 10 : 1e-8 * mean;
    }
    if (rc == 0) {
        for (int i = 0; i < in && rc == 0; i++)
            for (int o = 0; o < out; o++) {
                double v = rhs[(size_t)i * out + o];
                if (!isfinite(v) || fabs(v) > 3e38) {
                    rc = -EDOM;
                    break;
                }
                W[(size_t)o * in + i] = (float)v;
            }
        if (rc)
            err_setf(err, "refit: the solution is not finite");
    } else {
        err_setf(err, "refit: the normal equations are not positive definite even with ridge %g",
                 lam / mean);
    }
    if (lam_used)
        *lam_used = lam;
    free(rhs);
    free(diag);
    return rc;
}

/* ---- the passes ------------------------------------------------------------------------------ */

enum collect {
    COLLECT_NONE = 0,
    COLLECT_NORM,
    COLLECT_REFIT,
};

enum measure {
    MEASURE_NONE = 0,
    MEASURE_BEFORE,
    MEASURE_AFTER,
};

struct heal_state {
    struct model *s, *t;
    const struct heal_opts *o;
    const int32_t *ids;
    int n, T, H, I, n_src;
    int n_gaps;
    struct heal_gap *gaps;
    int *gap_of_tlast;  /* [n_src]: gap whose target follows teacher layer l, or -1 */
    int *gap_of_slayer; /* [student layers]: gap healed by student layer j, or -1 */
    int prefix;         /* student layers 0..prefix-1 are the teacher's layers 0..prefix-1 */
    float *xs, *xt, **tgt;
    float *hmid, *hin, *dout; /* hook captures of the collected layer */
    /* Normal equations of the current step. */
    double *nA, *nB, *nC; /* [H]: sum u^2, sum u r, sum r^2 per channel */
    double *rA, *rB;      /* [I][I], [I][H] */
    float *gram, *cross, *hinT, *dT;
    int done, total;
    char line[512];
};

static void hlog(struct heal_state *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void hlog(struct heal_state *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->line, sizeof(st->line), fmt, ap);
    va_end(ap);
    if (st->o->log)
        st->o->log(st->o->arg, st->line);
}

static int capture_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T,
                        int n)
{
    struct heal_state *st = arg;
    float *dst = pt == MODEL_HOOK_GATEUP_IN ? st->hmid
                 : pt == MODEL_HOOK_DOWN_IN ? st->hin
                 : pt == MODEL_HOOK_MLP_OUT ? st->dout
                                            : NULL;
    (void)layer;
    if (dst)
        memcpy(dst, x, sizeof(float) * (size_t)T * n);
    return 0;
}

/* Norm statistics: A_j += sum u^2, B_j += sum u r with u = out - h_mid, r = y* - h_mid. */
static void acc_norm(struct heal_state *st, const float *tgt)
{
    int H = st->H;
    for (int t = 0; t < st->T; t++) {
        const float *o = st->xs + (size_t)t * H, *h = st->hmid + (size_t)t * H,
                    *y = tgt + (size_t)t * H;
        for (int j = 0; j < H; j++) {
            double u = (double)o[j] - h[j], r = (double)y[j] - h[j];
            st->nA[j] += u * u;
            st->nB[j] += u * r;
            st->nC[j] += r * r;
        }
    }
}

/* Refit statistics: A += a^T a, B += a^T D* with D*_tj = r_tj / g_j * rms(d_t). */
static int acc_refit(struct heal_state *st, int layer, const float *tgt, char **err)
{
    int H = st->H, I = st->I, T = st->T, rc;
    const float *g = model_norm(st->s, layer, MODEL_NORM_POST_FFN, NULL);
    double eps = st->s->eps;
    for (int t = 0; t < T; t++) {
        const float *d = st->dout + (size_t)t * H, *h = st->hmid + (size_t)t * H,
                    *y = tgt + (size_t)t * H;
        double ms = 0;
        for (int j = 0; j < H; j++)
            ms += (double)d[j] * d[j];
        double rms = sqrt(ms / H + eps);
        for (int j = 0; j < H; j++) {
            /* A (near) zero gain cannot be inverted: keep that channel's pre-norm output. */
            double v = fabs(g[j]) > 1e-12 ? ((double)y[j] - h[j]) / g[j] * rms : d[j];
            st->dT[(size_t)j * T + t] = (float)v;
        }
        for (int i = 0; i < I; i++)
            st->hinT[(size_t)i * T + t] = st->hin[(size_t)t * I + i];
    }
    if ((rc = syrk(st->s->impl, st->gram, st->hin, T, I, 1.0f, 0.0f))) {
        err_setf(err, "refit: syrk failed (%d)", rc);
        return rc;
    }
    struct linear Ld;
    linear_init_dense(&Ld, H, T, KERN_F32, st->dT);
    if ((rc = matmul(st->s->impl, st->cross, st->hinT, I, &Ld, 0))) {
        err_setf(err, "refit: matmul failed (%d)", rc);
        return rc;
    }
    for (size_t k = 0; k < (size_t)I * I; k++)
        st->rA[k] += st->gram[k];
    for (size_t k = 0; k < (size_t)I * H; k++)
        st->rB[k] += st->cross[k];
    return 0;
}

static void acc_err(struct heal_state *st, int g, enum measure ms)
{
    double e = 0, r = 0;
    const float *y = st->tgt[g];
    for (size_t k = 0; k < (size_t)st->T * st->H; k++) {
        double d = (double)st->xs[k] - y[k];
        e += d * d;
        r += (double)y[k] * y[k];
    }
    if (ms == MEASURE_BEFORE) {
        st->gaps[g].err_before += e;
        st->gaps[g].ref += r;
    } else {
        st->gaps[g].err_after += e;
    }
}

/* One pass over the windows; collects step `what` for gap `cg` (when what != NONE) and measures
 * every gap's error (when ms != NONE). */
static int run_pass(struct heal_state *st, int cg, enum collect what, enum measure ms, char **err)
{
    int rc = 0, T = st->T, H = st->H;
    int tmax = -1, smax = -1, start;
    if (ms != MEASURE_NONE) {
        for (int g = 0; g < st->n_gaps; g++) {
            tmax = EXAQ_MAX(tmax, st->gaps[g].t_last);
            smax = EXAQ_MAX(smax, st->gaps[g].s_layer);
        }
    }
    if (what != COLLECT_NONE) {
        tmax = EXAQ_MAX(tmax, st->gaps[cg].t_last);
        smax = EXAQ_MAX(smax, st->gaps[cg].s_layer);
    }
    /* The student runs from its first layer that differs from the teacher, or from the first
     * layer it must run itself (to hook it or to measure after it), whichever comes first. */
    start = st->prefix;
    for (int g = 0; g < st->n_gaps; g++)
        if (ms != MEASURE_NONE || g == cg)
            start = EXAQ_MIN(start, st->gaps[g].s_layer);
    start = EXAQ_MAX(start, 0);
    struct model_hooks hk = { capture_hook, st,
                              1u << MODEL_HOOK_GATEUP_IN | 1u << MODEL_HOOK_DOWN_IN |
                                  1u << MODEL_HOOK_MLP_OUT };
    if (what == COLLECT_NORM)
        hk.mask = 1u << MODEL_HOOK_GATEUP_IN;
    size_t nx = (size_t)T * H;
    for (int w = 0; w < st->n && rc == 0; w++) {
        const int32_t *ids = st->ids + (size_t)w * T;
        /* Teacher: targets, and the student's input at `start` when start > 0. */
        if ((rc = model_embed(st->t, ids, T, st->xt, err)))
            break;
        if (start == 0 && (rc = model_embed(st->s, ids, T, st->xs, err)))
            break;
        for (int l = 0; l <= tmax && rc == 0; l++) {
            if ((rc = model_layer_forward(st->t, l, st->xt, T, 0, NULL, NULL, err)))
                break;
            int g = st->gap_of_tlast[l];
            if (g >= 0 && (ms != MEASURE_NONE || g == cg))
                memcpy(st->tgt[g], st->xt, nx * sizeof(float));
            if (l == start - 1)
                memcpy(st->xs, st->xt, nx * sizeof(float));
        }
        if (rc)
            break;
        /* A gap before the first kept layer: the student's "output" is the embedding. */
        if (ms != MEASURE_NONE && st->gaps[0].s_layer < 0)
            acc_err(st, 0, ms);
        for (int j = start; j <= smax && rc == 0; j++) {
            int coll = what != COLLECT_NONE && j == st->gaps[cg].s_layer;
            if ((rc = model_layer_forward(st->s, j, st->xs, T, 0, NULL, coll ? &hk : NULL, err)))
                break;
            if (coll && what == COLLECT_NORM)
                acc_norm(st, st->tgt[cg]);
            else if (coll && (rc = acc_refit(st, j, st->tgt[cg], err)))
                break;
            int g = st->gap_of_slayer[j];
            if (g >= 0 && ms != MEASURE_NONE)
                acc_err(st, g, ms);
        }
        st->done++;
        if (rc == 0 && st->o->tick && st->o->tick(st->o->arg, st->done, st->total)) {
            err_setf(err, "cancelled");
            rc = -ECANCELED;
        }
    }
    return rc;
}

/* Rounds v to what the checkpoint dtype of m stores. */
static float round_to_model(const struct model *m, float v)
{
    if (m->embed.dtype == KERN_BF16)
        return kern_round_bf16(v);
    if (m->embed.dtype == KERN_F16)
        return kern_f16_to_f32(kern_f32_to_f16(v));
    return v;
}

static int fold_norm(struct heal_state *st, int g, char **err)
{
    int j = st->gaps[g].s_layer, H = st->H, n;
    float *gain = model_norm(st->s, j, MODEL_NORM_POST_FFN, &n);
    double *t = xmalloc(sizeof(double) * (size_t)H), tmin = INFINITY, tmax = -INFINITY;
    heal_norm_scales(st->nA, st->nB, H, st->o->ridge, t);
    for (int c = 0; c < H; c++) {
        float v = round_to_model(st->s, (float)(gain[c] * t[c]));
        if (!isfinite(t[c]) || !isfinite(v)) {
            err_setf(err, "norm fold of layer %d: channel %d gets a non-finite scale", j, c);
            free(t);
            return -EDOM;
        }
        tmin = fmin(tmin, t[c]);
        tmax = fmax(tmax, t[c]);
    }
    /* The gap's error after the fold follows from the statistics: out - y* = t u - r per
     * channel, with t the scale actually stored (after rounding). Nothing downstream of this
     * layer changes it, so this is the gap's final error when the norm fold is its last step. */
    double e = 0;
    for (int c = 0; c < H; c++) {
        float ng = round_to_model(st->s, (float)(gain[c] * t[c]));
        double te = gain[c] != 0 ? (double)ng / gain[c] : 1.0;
        e += te * te * st->nA[c] - 2 * te * st->nB[c] + st->nC[c];
        gain[c] = ng;
    }
    st->gaps[g].err_after = e;
    st->gaps[g].norm_folded = 1;
    st->prefix = EXAQ_MIN(st->prefix, j);
    hlog(st, "heal: layer %d post_feedforward_layernorm scaled by t in [%.4f, %.4f]", j, tmin,
         tmax);
    free(t);
    return 0;
}

static int fold_refit(struct heal_state *st, int g, char **err)
{
    int j = st->gaps[g].s_layer, H = st->H, I = st->I, rc;
    struct linear *L = model_linear(st->s, j, MODEL_LIN_DOWN);
    float *W = xmalloc(sizeof(float) * (size_t)H * I);
    double lam = 0, dw = 0, w2 = 0;
    enum kern_dtype dt = L->fmt == LINEAR_FMT_DENSE ? L->dtype : KERN_BF16;
    if ((rc = model_linear_get_f32(st->s, j, MODEL_LIN_DOWN, W, err)))
        goto out;
    float *W0 = xmalloc(sizeof(float) * (size_t)H * I);
    memcpy(W0, W, sizeof(float) * (size_t)H * I);
    rc = heal_refit_solve(st->rA, st->rB, I, H, st->o->ridge, W, &lam, err);
    if (rc == 0) {
        for (size_t k = 0; k < (size_t)H * I; k++) {
            dw += ((double)W[k] - W0[k]) * ((double)W[k] - W0[k]);
            w2 += (double)W0[k] * W0[k];
        }
        rc = model_linear_set_f32(st->s, j, MODEL_LIN_DOWN, W, dt, err);
    }
    free(W0);
    if (rc == 0) {
        st->gaps[g].refitted = 1;
        st->prefix = EXAQ_MIN(st->prefix, j);
        hlog(st, "heal: layer %d down_proj refitted (relative change %.4f, ridge lambda %.3g)", j,
             w2 > 0 ? sqrt(dw / w2) : 0.0, lam);
    }
out:
    free(W);
    return rc;
}

/* Whether two linears hold the same dense weights, byte for byte. */
static int same_linear(const struct linear *x, const struct linear *y)
{
    return x->fmt == LINEAR_FMT_DENSE && y->fmt == LINEAR_FMT_DENSE && x->dtype == y->dtype &&
           x->out == y->out && x->in == y->in &&
           !memcmp(x->w, y->w, (size_t)x->out * x->in * kern_dtype_size(x->dtype));
}

/* Whether student layer j and teacher layer j hold identical weights. */
static int same_layer(struct model *s, struct model *t, int j)
{
    const struct model_layer *a = &s->layers[j], *b = &t->layers[j];
    for (int w = 0; w < MODEL_LIN_COUNT; w++)
        if (!same_linear(&a->lin[w], &b->lin[w]))
            return 0;
    for (int k = 0; k <= MODEL_NORM_POST_FFN; k++) {
        int n = k <= MODEL_NORM_K ? s->cfg.head_dim : s->cfg.hidden_size;
        if (memcmp(a->norm[k], b->norm[k], sizeof(float) * (size_t)n))
            return 0;
    }
    return a->rope == b->rope && a->window == b->window;
}

void heal_report_release(struct heal_report *r)
{
    if (!r)
        return;
    free(r->gaps);
    memset(r, 0, sizeof(*r));
}

static int check_shapes(const struct model *s, const struct model *t, const int *kept, int n_kept,
                        char **err)
{
    const struct config *a = &s->cfg, *b = &t->cfg;
    if (a->hidden_size != b->hidden_size || a->intermediate_size != b->intermediate_size ||
        a->num_attention_heads != b->num_attention_heads ||
        a->num_key_value_heads != b->num_key_value_heads || a->head_dim != b->head_dim ||
        a->vocab_size != b->vocab_size) {
        err_setf(err, "the teacher's dimensions differ from the pruned model's");
        return -EINVAL;
    }
    if (n_kept != s->n_layers) {
        err_setf(err, "the pruned model has %d layers but the prune record keeps %d", s->n_layers,
                 n_kept);
        return -EINVAL;
    }
    if (n_kept >= t->n_layers) {
        err_setf(err, "the teacher has %d layers, no more than the pruned model: nothing to heal",
                 t->n_layers);
        return -EINVAL;
    }
    for (int i = 0; i < n_kept; i++) {
        if (kept[i] < 0 || kept[i] >= t->n_layers || (i > 0 && kept[i] <= kept[i - 1])) {
            err_setf(err, "kept layer indices must increase and lie below %d", t->n_layers);
            return -EINVAL;
        }
    }
    return 0;
}

int heal_lsq(struct model *student, struct model *teacher, const int *kept, int n_kept,
             const int32_t *ids, int n, int seq_len, const struct heal_opts *o,
             struct heal_report *rep, char **err)
{
    struct heal_state st;
    int rc;
    memset(rep, 0, sizeof(*rep));
    memset(&st, 0, sizeof(st));
    if (n < 1 || seq_len < 1 || !(o->ridge >= 0) || !isfinite(o->ridge)) {
        err_setf(err, "heal needs calibration windows and a finite ridge >= 0");
        return -EINVAL;
    }
    if ((rc = check_shapes(student, teacher, kept, n_kept, err)))
        return rc;
    st.s = student;
    st.t = teacher;
    st.o = o;
    st.ids = ids;
    st.n = n;
    st.T = seq_len;
    st.H = student->cfg.hidden_size;
    st.I = student->cfg.intermediate_size;
    st.n_src = teacher->n_layers;
    st.gap_of_tlast = xmalloc(sizeof(int) * (size_t)st.n_src);
    st.gap_of_slayer = xmalloc(sizeof(int) * (size_t)n_kept);
    for (int l = 0; l < st.n_src; l++)
        st.gap_of_tlast[l] = -1;
    for (int j = 0; j < n_kept; j++)
        st.gap_of_slayer[j] = -1;

    /* Gaps: removed runs before kept[0], between kept layers, and after the last one. */
    st.gaps = xcalloc((size_t)n_kept + 1, sizeof(*st.gaps));
    for (int j = -1; j < n_kept; j++) {
        int from = j < 0 ? 0 : kept[j] + 1, to = j + 1 < n_kept ? kept[j + 1] - 1 : st.n_src - 1;
        if (from > to)
            continue;
        struct heal_gap *g = &st.gaps[st.n_gaps];
        g->s_layer = j;
        g->t_first = from;
        g->t_last = to;
        st.gap_of_tlast[to] = st.n_gaps;
        if (j >= 0)
            st.gap_of_slayer[j] = st.n_gaps;
        st.n_gaps++;
    }
    /* The shared prefix: leading layers the student took unchanged from the teacher, behind an
     * identical embedding. */
    st.prefix = 0;
    if (same_linear(&student->embed, &teacher->embed))
        while (st.prefix < n_kept && kept[st.prefix] == st.prefix &&
               same_layer(student, teacher, st.prefix))
            st.prefix++;

    /* The fold steps, gap by gap. */
    int nsteps = 0;
    struct step {
        int gap;
        enum collect what;
    } *steps = xcalloc((size_t)st.n_gaps * 2 + 1, sizeof(*steps));
    for (int g = 0; g < st.n_gaps; g++) {
        if (st.gaps[g].s_layer < 0)
            continue;
        int both = o->fold == HEAL_FOLD_BOTH;
        if (o->fold == HEAL_FOLD_NORM || (both && o->norm_first))
            steps[nsteps++] = (struct step){ g, COLLECT_NORM };
        if (o->fold == HEAL_FOLD_REFIT || both)
            steps[nsteps++] = (struct step){ g, COLLECT_REFIT };
        if (both && !o->norm_first)
            steps[nsteps++] = (struct step){ g, COLLECT_NORM };
    }
    /* A norm fold as the last step of every gap gives the final errors from its statistics
     * (fold_norm), so only the other orders need a measuring pass at the end. */
    int final_pass = nsteps > 0 && steps[nsteps - 1].what != COLLECT_NORM;
    rep->passes = nsteps > 0 ? nsteps + final_pass : 1;
    st.total = rep->passes * n;

    size_t nx = (size_t)seq_len * st.H, nh = (size_t)seq_len * st.I;
    st.xs = xmalloc(nx * sizeof(float));
    st.xt = xmalloc(nx * sizeof(float));
    st.tgt = xcalloc((size_t)st.n_gaps, sizeof(float *));
    for (int g = 0; g < st.n_gaps; g++)
        st.tgt[g] = xmalloc(nx * sizeof(float));
    st.hmid = xmalloc(nx * sizeof(float));
    st.dout = xmalloc(nx * sizeof(float));
    st.hin = xmalloc(nh * sizeof(float));
    st.nA = xmalloc(sizeof(double) * (size_t)st.H);
    st.nB = xmalloc(sizeof(double) * (size_t)st.H);
    st.nC = xmalloc(sizeof(double) * (size_t)st.H);
    int need_refit = o->fold != HEAL_FOLD_NORM && nsteps > 0;
    if (need_refit) {
        st.rA = xmalloc(sizeof(double) * (size_t)st.I * st.I);
        st.rB = xmalloc(sizeof(double) * (size_t)st.I * st.H);
        st.gram = xmalloc(sizeof(float) * (size_t)st.I * st.I);
        st.cross = xmalloc(sizeof(float) * (size_t)st.I * st.H);
        st.hinT = xmalloc(sizeof(float) * nh);
        st.dT = xmalloc(sizeof(float) * nx);
    }
    /* The refit has inter x hidden unknowns fitted from tokens x hidden equations; with fewer
     * tokens than a few times inter it interpolates the calibration set. */
    if (need_refit && (int64_t)n * seq_len < 4 * (int64_t)st.I)
        hlog(&st,
             "heal: warning: %lld calibration tokens for a %d-input down_proj refit: expect "
             "overfitting (use at least %d tokens)",
             (long long)n * seq_len, st.I, 4 * st.I);
    for (int g = 0; g < st.n_gaps; g++) {
        if (st.gaps[g].s_layer < 0)
            hlog(&st,
                 "heal: layers %d..%d precede every kept layer: nothing to fold into, left "
                 "as is",
                 st.gaps[g].t_first, st.gaps[g].t_last);
        else
            hlog(&st, "heal: gap after layer %d (teacher layers %d..%d removed) -> pruned layer %d",
                 kept[st.gaps[g].s_layer], st.gaps[g].t_first, st.gaps[g].t_last,
                 st.gaps[g].s_layer);
    }

    for (int k = 0; k < rep->passes; k++) {
        enum collect what = k < nsteps ? steps[k].what : COLLECT_NONE;
        int g = k < nsteps ? steps[k].gap : -1;
        enum measure ms = k == 0 ? MEASURE_BEFORE : k == nsteps ? MEASURE_AFTER : MEASURE_NONE;
        if (ms == MEASURE_AFTER)
            for (int q = 0; q < st.n_gaps; q++)
                st.gaps[q].err_after = 0;
        if (what == COLLECT_NORM) {
            memset(st.nA, 0, sizeof(double) * (size_t)st.H);
            memset(st.nB, 0, sizeof(double) * (size_t)st.H);
            memset(st.nC, 0, sizeof(double) * (size_t)st.H);
        } else if (what == COLLECT_REFIT) {
            memset(st.rA, 0, sizeof(double) * (size_t)st.I * st.I);
            memset(st.rB, 0, sizeof(double) * (size_t)st.I * st.H);
        }
        if ((rc = run_pass(&st, g, what, ms, err)))
            goto out;
        if (what == COLLECT_NORM && (rc = fold_norm(&st, g, err)))
            goto out;
        if (what == COLLECT_REFIT && (rc = fold_refit(&st, g, err)))
            goto out;
    }
    /* Without a final pass, gaps that were not folded (before the first kept layer, or all of
     * them when nothing could be folded) keep their error. */
    if (!final_pass)
        for (int g = 0; g < st.n_gaps; g++)
            if (!st.gaps[g].norm_folded)
                st.gaps[g].err_after = st.gaps[g].err_before;

    double eb = 0, ea = 0, ref = 0;
    for (int g = 0; g < st.n_gaps; g++) {
        struct heal_gap *gp = &st.gaps[g];
        eb += gp->err_before;
        ea += gp->err_after;
        ref += gp->ref;
        hlog(&st, "heal: gap %d..%d: relative residual error %.6f -> %.6f", gp->t_first, gp->t_last,
             gp->ref > 0 ? gp->err_before / gp->ref : 0.0,
             gp->ref > 0 ? gp->err_after / gp->ref : 0.0);
    }
    rep->err_before = ref > 0 ? eb / ref : 0;
    rep->err_after = ref > 0 ? ea / ref : 0;
    if (!isfinite(rep->err_after)) {
        err_setf(err, "the healed model produces non-finite hidden states");
        rc = -EDOM;
        goto out;
    }
    rep->n_gaps = st.n_gaps;
    rep->gaps = st.gaps;
    st.gaps = NULL;
    rc = 0;
out:
    free(steps);
    if (st.tgt)
        for (int g = 0; g < st.n_gaps; g++)
            free(st.tgt[g]);
    free(st.tgt);
    free(st.gaps);
    free(st.gap_of_tlast);
    free(st.gap_of_slayer);
    free(st.xs);
    free(st.xt);
    free(st.hmid);
    free(st.dout);
    free(st.hin);
    free(st.nA);
    free(st.nB);
    free(st.nC);
    free(st.rA);
    free(st.rB);
    free(st.gram);
    free(st.cross);
    free(st.hinT);
    free(st.dT);
    return rc;
}
