/*
 * test_heal: least-squares healing (worker/compress/heal.c and the `heal` stage of
 * worker/stages/stage_prune.c).
 *
 * Proves:
 *   1. the linear algebra: Cholesky + solve reproduce a known solution of random SPD systems
 *      (serial and threaded sizes) and reject an indefinite matrix; the norm scales recover a
 *      known per-channel gain and shrink toward 1 with the ridge; the refit solve recovers known
 *      weights from noise-free normal equations and falls back to the prior under a huge ridge;
 *   2. on tiny-a, prune (block influence) then heal (fold both) gives a lower perplexity than
 *      prune alone, for one and for two removed layers (30 windows of 512 of val.ids.u32,
 *      model_nll; 32 calibration windows of 512), with heal_err_after < heal_err_before, and the
 *      healed checkpoint has the pruned one's tensors, changed only in the gap layer's down_proj
 *      and post_feedforward_layernorm;
 *   3. the variants norm, refit and refit+norm (what `both` does) lower the calibration residual
 *      error, refit+norm the most, and refit+norm beats norm+refit; the errors heal reports
 *      equal an independent computation from full forward passes, before and after, with two
 *      gaps (so the shared-prefix shortcut and the per-gap targets are checked) and with a
 *      student whose first layer differs from the teacher's (no sharing then), and the saved
 *      model reproduces the in-memory healed one;
 *   4. a gap before the first kept layer is reported and left alone; errors (no exaq_prune.json,
 *      a teacher that is gone or has another layer count, a record that does not match the
 *      model, bad fold/method/ridge, calibration missing) fail clearly; cancellation works.
 * Takes about 25 s on an idle 2-core machine (two heals over 32 windows, four over 8, five
 * perplexity runs of 30 windows); up to 90 s when the machine is shared.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <cJSON.h>

#include "common/util.h"
#include "worker/engine/calib.h"
#include "worker/compress/heal.h"
#include "worker/engine/model.h"
#include "worker/compress/prune.h"
#include "common/st.h"
#include "worker/stages/stage.h"
#include "tests/unit/fixture.h"

#define NCAL (SANITIZED ? 8 : 32) /* calibration windows of 512 */
#define NVAL (SANITIZED ? 4 : 30) /* perplexity windows of 512 */
#define NVAR (SANITIZED ? 4 : 8)  /* calibration windows for the variant comparison */

static char tmp[64], cwd[4096];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/exaq-heal.XXXXXX");
    if (!getcwd(cwd, sizeof(cwd)))
        return -1;
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(tmp);
    return 0;
}

/* Deterministic pseudo-random numbers in [-1, 1). */
static uint64_t rng = 88172645463325252ull;
static double rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}

static double val_ppl(struct model *m, int W)
{
    int32_t *ids;
    int64_t n;
    char *err = NULL;
    float nll[512];
    double s = 0;
    assert_int_equal(calib_read_ids(VALIDS, &ids, &n, NULL), 0);
    for (int w = 0; w < W; w++) {
        assert_int_equal(model_nll(m, ids + (size_t)512 * w, 513, nll, &err), 0);
        for (int i = 0; i < 512; i++)
            s += nll[i];
    }
    free(ids);
    return exp(s / (512.0 * W));
}

static double dir_ppl(const char *dir)
{
    struct model *m = fx_load(dir, 2);
    double p = val_ppl(m, NVAL);
    model_free(m);
    return p;
}

/* ---- 1. linear algebra ---------------------------------------------------------------------- */

static void check_spd_solve(int n, int nrhs)
{
    /* A = M M^T + n I is SPD; B = A X for a known X. */
    double *M = xmalloc(sizeof(double) * (size_t)n * n), *A = xcalloc((size_t)n * n, 8);
    double *X = xmalloc(sizeof(double) * (size_t)n * nrhs), *B = xcalloc((size_t)n * nrhs, 8);
    for (size_t i = 0; i < (size_t)n * n; i++)
        M[i] = rnd();
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = i == j ? n : 0;
            for (int k = 0; k < n; k++)
                s += M[(size_t)i * n + k] * M[(size_t)j * n + k];
            A[(size_t)i * n + j] = s;
        }
    for (size_t i = 0; i < (size_t)n * nrhs; i++)
        X[i] = rnd();
    for (int i = 0; i < n; i++)
        for (int k = 0; k < n; k++)
            for (int c = 0; c < nrhs; c++)
                B[(size_t)i * nrhs + c] += A[(size_t)i * n + k] * X[(size_t)k * nrhs + c];
    double upper = A[1]; /* the upper triangle must survive */
    assert_int_equal(heal_cholesky(A, n), 0);
    assert_true(A[1] == upper);
    heal_cholesky_solve(A, n, B, nrhs);
    double maxerr = 0;
    for (size_t i = 0; i < (size_t)n * nrhs; i++)
        maxerr = fmax(maxerr, fabs(B[i] - X[i]));
    /* cond(A) is at most a few hundred here; double leaves 1e-16 * cond * n of error. */
    printf("cholesky n=%d nrhs=%d: max error %.2e\n", n, nrhs, maxerr);
    assert_true(maxerr < 1e-9);
    free(M);
    free(A);
    free(X);
    free(B);
}

static void test_cholesky(void **state)
{
    (void)state;
    check_spd_solve(7, 3);
    check_spd_solve(300, 70); /* big enough for the threaded row and column paths */
    /* Indefinite: [[1, 2], [2, 1]]. */
    double A[4] = { 1, 2, 2, 1 };
    assert_int_equal(heal_cholesky(A, 2), -EDOM);
}

static void test_norm_scales(void **state)
{
    (void)state;
    /* r = t_true * u exactly: the ridge-free scales are t_true. */
    enum { N = 500, H = 6 };
    const double t_true[H] = { 0.5, 1.0, 1.7, -0.3, 2.5, 1.1 };
    double A[H] = { 0 }, B[H] = { 0 }, t[H];
    for (int k = 0; k < N; k++)
        for (int j = 0; j < H; j++) {
            double u = rnd() * (j + 1), r = t_true[j] * u;
            A[j] += u * u;
            B[j] += u * r;
        }
    heal_norm_scales(A, B, H, 0, t);
    for (int j = 0; j < H; j++)
        assert_true(fabs(t[j] - t_true[j]) < 1e-12);
    /* A ridge pulls every scale toward 1, more for a larger ridge. */
    double t1[H], t2[H];
    heal_norm_scales(A, B, H, 0.1, t1);
    heal_norm_scales(A, B, H, 10, t2);
    for (int j = 0; j < H; j++) {
        if (t_true[j] == 1.0)
            continue;
        assert_true(fabs(t1[j] - 1) < fabs(t_true[j] - 1));
        assert_true(fabs(t2[j] - 1) < fabs(t1[j] - 1));
    }
    /* A channel without signal keeps its gain. */
    A[2] = B[2] = 0;
    heal_norm_scales(A, B, H, 0, t);
    assert_true(t[2] == 1.0);
}

static void test_refit_solve(void **state)
{
    (void)state;
    enum { N = 400, IN = 24, OUT = 5 };
    float *Wt = xmalloc(sizeof(float) * IN * OUT), *W = xmalloc(sizeof(float) * IN * OUT);
    float *W0 = xmalloc(sizeof(float) * IN * OUT);
    double *A = xcalloc(IN * IN, 8), *B = xcalloc(IN * OUT, 8), *A2 = xmalloc(8 * IN * IN),
           *B2 = xmalloc(8 * IN * OUT);
    double a[IN], lam;
    char *err = NULL;
    for (int i = 0; i < IN * OUT; i++) {
        Wt[i] = (float)rnd();
        W0[i] = (float)rnd();
    }
    for (int k = 0; k < N; k++) {
        for (int i = 0; i < IN; i++)
            a[i] = rnd();
        for (int o = 0; o < OUT; o++) {
            double d = 0;
            for (int i = 0; i < IN; i++)
                d += (double)Wt[o * IN + i] * a[i];
            for (int i = 0; i < IN; i++)
                B[i * OUT + o] += a[i] * d;
        }
        for (int i = 0; i < IN; i++)
            for (int j = 0; j < IN; j++)
                A[i * IN + j] += a[i] * a[j];
    }
    memcpy(A2, A, 8 * IN * IN);
    memcpy(B2, B, 8 * IN * OUT);
    memcpy(W, W0, sizeof(float) * IN * OUT);
    assert_int_equal(heal_refit_solve(A, B, IN, OUT, 0, W, &lam, &err), 0);
    assert_true(lam == 0);
    for (int i = 0; i < IN * OUT; i++)
        assert_true(fabs(W[i] - Wt[i]) < 1e-5);
    /* A huge ridge keeps the prior weights. */
    memcpy(W, W0, sizeof(float) * IN * OUT);
    assert_int_equal(heal_refit_solve(A2, B2, IN, OUT, 1e9, W, &lam, &err), 0);
    for (int i = 0; i < IN * OUT; i++)
        assert_true(fabs(W[i] - W0[i]) < 1e-5);
    /* Rank-deficient normal equations (a duplicated input) without a ridge: the solve raises
     * lambda until it is positive definite. */
    double *A3 = xcalloc(4, 8), *B3 = xcalloc(2, 8);
    float w3[2] = { 0.5f, 0.5f };
    A3[0] = A3[1] = A3[2] = A3[3] = 4; /* a = (2, 2) */
    B3[0] = B3[1] = 4;                 /* d = 1 * 2 */
    assert_int_equal(heal_refit_solve(A3, B3, 2, 1, 0, w3, &lam, &err), 0);
    assert_true(lam > 0);
    assert_true(fabs(2 * w3[0] + 2 * w3[1] - 2) < 1e-4);
    /* All-zero inputs cannot be fitted. */
    memset(A3, 0, 4 * 8);
    assert_int_equal(heal_refit_solve(A3, B3, 2, 1, 0, w3, &lam, &err), -EINVAL);
    assert_non_null(strstr(err, "all zero"));
    free(err);
    free(A3);
    free(B3);
    free(Wt);
    free(W);
    free(W0);
    free(A);
    free(B);
    free(A2);
    free(B2);
}

/* ---- stage harness -------------------------------------------------------------------------- */

static char *calib_json(int samples, int seq_len)
{
    return xasprintf("\"calibration\":{\"ids\":\"%s/" CALIDS "\",\"samples\":%d,\"seq_len\":%d}",
                     cwd, samples, seq_len);
}

/* ---- 2. heal lowers perplexity -------------------------------------------------------------- */

/* Tensors of a and b: the same names; the data differs only for the listed (name) tensors. */
static void check_changed_only(const char *a, const char *b, const char **changed, int nchanged)
{
    struct st_dir *da, *db;
    char *err = NULL;
    assert_int_equal(st_dir_open(&da, a, &err), 0);
    assert_int_equal(st_dir_open(&db, b, &err), 0);
    assert_int_equal(st_dir_count(da), st_dir_count(db));
    int ndiff = 0;
    for (int i = 0; i < st_dir_count(da); i++) {
        const struct st_tensor *x = st_dir_tensor(da, i), *y = st_dir_find(db, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        int may = 0;
        for (int k = 0; k < nchanged; k++)
            may |= !strcmp(x->name, changed[k]);
        int same = !memcmp(x->data, y->data, x->nbytes);
        if (!may && !same)
            printf("tensor %s changed\n", x->name);
        assert_true(may || same);
        ndiff += !same;
    }
    assert_int_equal(ndiff, nchanged);
    st_dir_free(da);
    st_dir_free(db);
}

static void heal_case(int keep_layers)
{
    char *pdir = xasprintf("%s/p%d", tmp, keep_layers),
         *hdir = xasprintf("%s/h%d", tmp, keep_layers);
    char *cal = calib_json(NCAL, 512);
    char *ps =
        xasprintf("{%s,\"keep_layers\":%d,\"metric\":\"block_influence\"}", cal, keep_layers);
    char *hs = xasprintf("{%s,\"fold\":\"both\",\"method\":\"lsq\",\"ridge\":0.0001}", cal);
    struct fx_run *r = fx_run_stage("prune", ps, TINY, pdir, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);
    double t0 = now_mono();
    r = fx_run_stage("heal", hs, pdir, hdir, NULL);
    assert_int_equal(r->rc, 0);
    double eb = fx_metric(r, "heal_err_before"), ea = fx_metric(r, "heal_err_after");
    printf("keep %d: heal took %.1f s; residual error %.4f -> %.4f\n", keep_layers, now_mono() - t0,
           eb, ea);
    assert_true(ea < eb);
    fx_run_free(r);
    static double full; /* the same for both cases */
    if (full == 0)
        full = dir_ppl(TINY);
    double pp = dir_ppl(pdir), hp = dir_ppl(hdir);
    printf("keep %d: ppl full %.4f, pruned %.4f, pruned+healed %.4f\n", keep_layers, full, pp, hp);
    assert_true(hp < pp);
    assert_true(hp > full);

    /* Only the gap layers' down_proj and post_feedforward_layernorm changed. */
    struct prune_record rec;
    char *err = NULL;
    assert_int_equal(prune_record_read(hdir, &rec, &err), 0);
    const char *changed[8];
    char names[8][96];
    int nc = 0;
    for (int j = 0; j < rec.n_kept; j++) {
        int next = j + 1 < rec.n_kept ? rec.kept[j + 1] : rec.n_source;
        if (next == rec.kept[j] + 1)
            continue;
        snprintf(names[nc], sizeof(names[nc]), "model.layers.%d.mlp.down_proj.weight", j);
        changed[nc] = names[nc];
        nc++;
        snprintf(names[nc], sizeof(names[nc]), "model.layers.%d.post_feedforward_layernorm.weight",
                 j);
        changed[nc] = names[nc];
        nc++;
    }
    assert_true(nc >= 2);
    check_changed_only(pdir, hdir, changed, nc);
    prune_record_release(&rec);
    /* The record is carried over with what heal did. */
    char *p = path_join(hdir, PRUNE_RECORD_FILE), *text = NULL;
    assert_int_equal(file_read_all(p, &text, NULL), 0);
    assert_non_null(strstr(text, "\"fold\":\"both\""));
    free(text);
    free(p);
    free(pdir);
    free(hdir);
    free(cal);
    free(ps);
    free(hs);
}

static void test_heal_one_layer(void **state)
{
    (void)state;
    heal_case(3);
}

static void test_heal_two_layers(void **state)
{
    (void)state;
    heal_case(2);
}

/* ---- 3. variants and an independent error computation -------------------------------------- */

/* Relative residual error at every gap, from full forward passes of both models. */
static double manual_err(struct model *s, struct model *t, const int *kept, int nk,
                         const int32_t *ids, int n, int T)
{
    int H = s->cfg.hidden_size, L = t->n_layers;
    size_t nx = (size_t)T * H;
    float *ht = xmalloc(sizeof(float) * nx * (L + 1)), *hs = xmalloc(sizeof(float) * nx * (nk + 1));
    char *err = NULL;
    double e = 0, r = 0;
    for (int w = 0; w < n; w++) {
        const int32_t *id = ids + (size_t)w * T;
        assert_int_equal(model_embed(t, id, T, ht, &err), 0);
        for (int l = 0; l < L; l++) {
            memcpy(ht + nx * (l + 1), ht + nx * l, nx * sizeof(float));
            assert_int_equal(model_layer_forward(t, l, ht + nx * (l + 1), T, 0, NULL, NULL, &err),
                             0);
        }
        assert_int_equal(model_embed(s, id, T, hs, &err), 0);
        for (int j = 0; j < nk; j++) {
            memcpy(hs + nx * (j + 1), hs + nx * j, nx * sizeof(float));
            assert_int_equal(model_layer_forward(s, j, hs + nx * (j + 1), T, 0, NULL, NULL, &err),
                             0);
        }
        /* Gap after student layer j (or before layer 0): student h_{j+1} vs the teacher's
         * residual after the gap's last removed layer. */
        for (int j = -1; j < nk; j++) {
            int from = j < 0 ? 0 : kept[j] + 1, to = j + 1 < nk ? kept[j + 1] - 1 : L - 1;
            if (from > to)
                continue;
            const float *a = hs + nx * (j + 1), *y = ht + nx * (to + 1);
            for (size_t k = 0; k < nx; k++) {
                e += ((double)a[k] - y[k]) * ((double)a[k] - y[k]);
                r += (double)y[k] * y[k];
            }
        }
    }
    free(ht);
    free(hs);
    return e / r;
}

struct variant {
    const char *name;
    enum heal_fold fold;
    int norm_first;
    double before, after;
};

static void test_variants_and_errors(void **state)
{
    (void)state;
    int32_t *cal;
    int64_t ncal;
    char *err = NULL;
    assert_int_equal(calib_read_ids(CALIDS, &cal, &ncal, NULL), 0);
    struct model *t = fx_load(TINY, 2);
    const int kept1[3] = { 0, 1, 3 }; /* one gap after layer 1, a shared prefix of 2 layers */
    struct variant v[] = {
        { "norm", HEAL_FOLD_NORM, 0, 0, 0 },
        { "refit", HEAL_FOLD_REFIT, 0, 0, 0 },
        { "refit+norm", HEAL_FOLD_BOTH, 0, 0, 0 },
        { "norm+refit", HEAL_FOLD_BOTH, 1, 0, 0 },
    };
    for (size_t k = 0; k < EXAQ_ARRAY_LEN(v); k++) {
        struct model *s = fx_load(TINY, 2);
        struct heal_report rep;
        struct heal_opts o = { v[k].fold, 1e-4, v[k].norm_first, NULL, NULL, NULL };
        assert_int_equal(model_keep_layers(s, kept1, 3, &err), 0);
        assert_int_equal(heal_lsq(s, t, kept1, 3, cal, NVAR, 512, &o, &rep, &err), 0);
        v[k].before = rep.err_before;
        v[k].after = rep.err_after;
        printf("remove layer 2, %-10s: residual error %.4f -> %.4f (%d passes)\n", v[k].name,
               rep.err_before, rep.err_after, rep.passes);
        assert_int_equal(rep.n_gaps, 1);
        assert_int_equal(rep.gaps[0].s_layer, 1);
        /* Norm then refit is the order `both` does not use: the norm fold can leave gains near 0,
         * which the refit's target r / g then blows up; it need not lower the error. */
        if (!v[k].norm_first)
            assert_true(rep.err_after < rep.err_before);
        /* Independent check of the reported errors. A final measuring pass sums exactly what
         * manual_err sums (1e-9: only the summation order of doubles may differ); when the norm
         * fold is the last step the error comes from its statistics, where u = out - h_mid is
         * a difference of fp32 values (rounding ~6e-8 of |out|): 1e-5 leaves a wide margin. */
        double m = manual_err(s, t, kept1, 3, cal, NVAR, 512);
        int analytic =
            v[k].fold == HEAL_FOLD_NORM || (v[k].fold == HEAL_FOLD_BOTH && !v[k].norm_first);
        int steps = v[k].fold == HEAL_FOLD_BOTH ? 2 : 1;
        assert_int_equal(rep.passes, steps + !analytic);
        double tol = analytic ? 1e-5 : 1e-9;
        printf("  reported %.9f, recomputed %.9f\n", rep.err_after, m);
        assert_true(fabs(m - rep.err_after) <= tol * m);
        heal_report_release(&rep);
        model_free(s);
    }
    /* Every variant starts from the same error, and the order matters: refit first. */
    for (size_t k = 1; k < EXAQ_ARRAY_LEN(v); k++)
        assert_true(v[k].before == v[0].before);
    assert_true(v[2].after < v[3].after);
    assert_true(v[2].after < v[0].after && v[2].after < v[1].after);

    /* Two gaps, the first at layer 0 so nothing is shared; before and after both checked; the
     * in-memory result is what the stage would save (same rounding). */
    const int kept2[2] = { 0, 2 };
    struct model *s = fx_load(TINY, 2);
    assert_int_equal(model_keep_layers(s, kept2, 2, &err), 0);
    double before = manual_err(s, t, kept2, 2, cal, 4, 256);
    struct heal_report rep;
    struct heal_opts o = { HEAL_FOLD_BOTH, 1e-4, 0, NULL, NULL, NULL };
    assert_int_equal(heal_lsq(s, t, kept2, 2, cal, 4, 256, &o, &rep, &err), 0);
    assert_int_equal(rep.n_gaps, 2);
    assert_int_equal(rep.passes, 4); /* refit, norm per gap; no final pass after a norm fold */
    assert_true(rep.gaps[0].refitted && rep.gaps[0].norm_folded);
    assert_true(rep.gaps[1].refitted && rep.gaps[1].norm_folded);
    assert_int_equal(rep.gaps[1].t_first, 3);
    assert_true(fabs(before - rep.err_before) <= 1e-9 * before);
    double after = manual_err(s, t, kept2, 2, cal, 4, 256);
    assert_true(fabs(after - rep.err_after) <= 1e-5 * after);
    assert_true(after < before);
    printf("remove layers 1 and 3: residual error %.4f -> %.4f\n", before, after);
    char *dir = xasprintf("%s/twogaps", tmp);
    mkdir_p(dir, 0755);
    struct model_save_opts so = { 0, ST_BF16, 1 };
    assert_int_equal(model_save(s, dir, &so, &err), 0);
    struct model *back = fx_load(dir, 2);
    double again = manual_err(back, t, kept2, 2, cal, 4, 256);
    assert_true(again == after);
    model_free(back);
    heal_report_release(&rep);
    model_free(s);
    free(dir);

    /* A student whose layer 0 differs from the teacher's (as after a stage that edits weights):
     * the teacher's layer-0 output must not stand in for the student's. */
    s = fx_load(TINY, 2);
    assert_int_equal(model_keep_layers(s, kept1, 3, &err), 0);
    int H = s->cfg.hidden_size;
    float *w = xmalloc(sizeof(float) * (size_t)H * H);
    assert_int_equal(model_linear_get_f32(s, 0, MODEL_LIN_Q, w, &err), 0);
    for (int i = 0; i < H * H; i++)
        w[i] *= 0.9f;
    assert_int_equal(model_linear_set_f32(s, 0, MODEL_LIN_Q, w, KERN_BF16, &err), 0);
    free(w);
    before = manual_err(s, t, kept1, 3, cal, 2, 256);
    struct heal_opts ro = { HEAL_FOLD_REFIT, 1e-4, 0, NULL, NULL, NULL };
    assert_int_equal(heal_lsq(s, t, kept1, 3, cal, 2, 256, &ro, &rep, &err), 0);
    assert_true(fabs(before - rep.err_before) <= 1e-9 * before);
    after = manual_err(s, t, kept1, 3, cal, 2, 256);
    assert_true(fabs(after - rep.err_after) <= 1e-9 * after);
    heal_report_release(&rep);
    model_free(s);
    model_free(t);
    free(cal);
}

/* ---- 4. leading gap, errors, cancellation --------------------------------------------------- */

static void test_leading_gap(void **state)
{
    (void)state;
    char *pdir = xasprintf("%s/lead", tmp), *hdir = xasprintf("%s/lead-h", tmp),
         *cal = calib_json(2, 128);
    char *hs = xasprintf("{%s,\"fold\":\"both\"}", cal);
    struct fx_run *r =
        fx_run_stage("prune", "{\"layers\":[0],\"metric\":\"explicit\"}", TINY, pdir, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);
    r = fx_run_stage("heal", hs, pdir, hdir, NULL);
    assert_int_equal(r->rc, 0);
    assert_non_null(strstr(r->log.data, "precede every kept layer: nothing to fold into"));
    assert_true(fx_metric(r, "heal_err_after") == fx_metric(r, "heal_err_before"));
    fx_run_free(r);
    check_changed_only(pdir, hdir, NULL, 0);
    free(pdir);
    free(hdir);
    free(cal);
    free(hs);
}

static void expect_heal_fail(const char *spec, const char *in, const char *needle)
{
    char *out = xasprintf("%s/herr", tmp);
    struct fx_run *r = fx_run_stage("heal", spec, in, out, NULL);
    if (!strstr(r->errmsg, needle))
        printf("got '%s', want '%s'\n", r->errmsg, needle);
    assert_int_equal(r->rc, STAGE_ERR_ERROR);
    assert_non_null(strstr(r->errmsg, needle));
    fx_run_free(r);
    free(out);
}

static void write_record(const char *dir, const char *text)
{
    char *p = path_join(dir, PRUNE_RECORD_FILE);
    assert_int_equal(file_write_all(p, text, strlen(text)), 0);
    free(p);
}

static void test_errors(void **state)
{
    (void)state;
    char *cal = calib_json(2, 64), *s, *pdir = xasprintf("%s/perr", tmp), *abs = path_abs(TINY);
    struct fx_run *r = fx_run_stage("prune", "{\"layers\":[3]}", TINY, pdir, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);

    s = xasprintf("{%s}", cal);
    expect_heal_fail(s, TINY, "'exaq_prune.json' is missing");
    expect_heal_fail(s, TINY, "heal must follow prune");
    free(s);
    expect_heal_fail("[]", pdir, "not a JSON object");
    expect_heal_fail("{\"method\":\"distill\"}", pdir, "unknown method distill");
    expect_heal_fail("{\"fold\":\"twice\"}", pdir, "unknown fold 'twice'");
    expect_heal_fail("{\"ridge\":-1}", pdir, "'ridge' must be a number >= 0");
    expect_heal_fail("{\"fold\":\"norm\"}", pdir, "heal needs calibration data");

    s = xasprintf("{%s}", cal);
    write_record(pdir, "{\"source\":\"/nonexistent/base\",\"source_layers\":4,\"kept\":[0,1,2],"
                       "\"removed\":[3]}");
    expect_heal_fail(s, pdir, "the unpruned teacher '/nonexistent/base'");
    char *rec = xasprintf("{\"source\":\"%s\",\"source_layers\":5,\"kept\":[0,1,2],"
                          "\"removed\":[3,4]}",
                          abs);
    write_record(pdir, rec);
    expect_heal_fail(s, pdir, "has 4 layers, but exaq_prune.json says 5");
    free(rec);
    rec =
        xasprintf("{\"source\":\"%s\",\"source_layers\":4,\"kept\":[0,1],\"removed\":[2,3]}", abs);
    write_record(pdir, rec);
    expect_heal_fail(s, pdir, "the pruned model has 3 layers but the prune record keeps 2");
    free(rec);
    write_record(pdir, "{\"source\":3}");
    expect_heal_fail(s, pdir, "malformed");

    /* Cancellation. */
    rec =
        xasprintf("{\"source\":\"%s\",\"source_layers\":4,\"kept\":[0,1,2],\"removed\":[3]}", abs);
    write_record(pdir, rec);
    free(rec);
    int cancel = 1;
    char *out = xasprintf("%s/hcancel", tmp);
    r = fx_run_stage("heal", s, pdir, out, &cancel);
    assert_int_equal(r->rc, STAGE_ERR_CANCELLED);
    fx_run_free(r);
    char *cfg = path_join(out, "config.json");
    assert_false(is_file(cfg));
    free(cfg);
    free(out);
    free(s);
    free(cal);
    free(pdir);
    free(abs);
}

int main(void)
{
    if (!is_file(TINY "/model.safetensors") || !is_file(VALIDS) || !is_file(CALIDS)) {
        printf("SKIP tiny-a data missing (run from the repository root)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cholesky),       cmocka_unit_test(test_norm_scales),
        cmocka_unit_test(test_refit_solve),    cmocka_unit_test(test_errors),
        cmocka_unit_test(test_leading_gap),    cmocka_unit_test(test_variants_and_errors),
        cmocka_unit_test(test_heal_one_layer), cmocka_unit_test(test_heal_two_layers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
