/*
 * test_optim: AdamW, clipping, the schedule and gradient accumulation against PyTorch
 * (tests/data/train/optim_goldens.txt from tests/tools/make_optim_goldens.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/train/optim.h"

#define GOLDENS "tests/data/train/optim_goldens.txt"

struct arr {
    char name[32];
    int n;
    double *v;
};
static struct arr arrs[64];
static int narrs;
static double P_lr, P_minr, P_b1, P_b2, P_eps, P_wd, P_maxn;
static int P_steps, P_accum, P_rows, P_din, P_dout, P_warmup;

static void load(void)
{
    FILE *f = fopen(GOLDENS, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        if (line[0] == '#')
            continue;
        if (!strncmp(line, "params ", 7)) {
            int k = sscanf(line,
                           "params steps %d accum %d rows %d din %d dout %d lr %lf lr_min_ratio "
                           "%lf warmup %d beta1 %lf beta2 %lf eps %lf wd %lf max_norm %lf",
                           &P_steps, &P_accum, &P_rows, &P_din, &P_dout, &P_lr, &P_minr, &P_warmup,
                           &P_b1, &P_b2, &P_eps, &P_wd, &P_maxn);
            assert_int_equal(k, 13);
            continue;
        }
        assert_true(narrs < 64);
        struct arr *a = &arrs[narrs++];
        char *p = line, *e;
        int off = 0;
        assert_int_equal(sscanf(p, "%31s %d %n", a->name, &a->n, &off), 2);
        p += off;
        a->v = xcalloc((size_t)a->n, sizeof(double));
        for (int i = 0; i < a->n; i++) {
            a->v[i] = strtod(p, &e);
            assert_true(e != p);
            p = e;
        }
    }
    free(line);
    fclose(f);
}

static const struct arr *get(const char *name)
{
    for (int i = 0; i < narrs; i++)
        if (!strcmp(arrs[i].name, name))
            return &arrs[i];
    fail_msg("golden %s missing", name);
    return NULL;
}

/* dW, db of 0.5*mean_r ||x_r W + b - y_r||^2 / accum, ADDED; returns the loss. */
static double grad_add(const double *x, const double *y, const float *W, const float *b, float *gW,
                       float *gb)
{
    double loss = 0, inv = 1.0 / (P_rows * P_accum);
    for (int r = 0; r < P_rows; r++) {
        for (int o = 0; o < P_dout; o++) {
            double z = b[o];
            for (int i = 0; i < P_din; i++)
                z += x[r * P_din + i] * W[i * P_dout + o];
            double res = z - y[r * P_dout + o];
            loss += 0.5 * res * res * inv;
            gb[o] += (float)(res * inv);
            for (int i = 0; i < P_din; i++)
                gW[i * P_dout + o] += (float)(res * inv * x[r * P_din + i]);
        }
    }
    return loss;
}

static void test_against_torch(void **state)
{
    (void)state;
    load();
    int nW = P_din * P_dout, nb = P_dout;
    float *W = xcalloc((size_t)nW, 4), *b = xcalloc((size_t)nb, 4);
    float *gW = xcalloc((size_t)nW, 4), *gb = xcalloc((size_t)nb, 4);
    float *mW = xcalloc((size_t)nW, 4), *vW = xcalloc((size_t)nW, 4);
    float *mb = xcalloc((size_t)nb, 4), *vb = xcalloc((size_t)nb, 4);
    for (int i = 0; i < nW; i++)
        W[i] = (float)get("W0")->v[i];
    for (int i = 0; i < nb; i++)
        b[i] = (float)get("b0")->v[i];
    const double *x = get("x")->v, *y = get("y")->v;
    struct adamw o = { P_b1, P_b2, P_eps, P_wd };
    for (int s = 0; s < P_steps; s++) {
        memset(gW, 0, (size_t)nW * 4);
        memset(gb, 0, (size_t)nb * 4);
        double loss = 0;
        for (int a = 0; a < P_accum; a++) {
            size_t mb_i = (size_t)(s * P_accum + a);
            loss += grad_add(x + mb_i * P_rows * P_din, y + mb_i * P_rows * P_dout, W, b, gW, gb);
        }
        double norm = sqrt(optim_sumsq(gW, nW) + optim_sumsq(gb, nb));
        double c = optim_clip_factor(norm, P_maxn);
        optim_scale(gW, nW, c);
        optim_scale(gb, nb, c);
        double lr = optim_lr(s, P_steps, P_warmup, P_lr, P_minr);
        assert_float_equal(loss, get("loss")->v[s], 1e-5 * fabs(get("loss")->v[s]));
        assert_float_equal(norm, get("norm")->v[s], 1e-5 * get("norm")->v[s]);
        assert_float_equal(lr, get("lr")->v[s], 1e-12);
        adamw_step(&o, s + 1, lr, 1.0, W, gW, mW, vW, nW);
        adamw_step(&o, s + 1, lr, 0.0, b, gb, mb, vb, nb);
        char nm[16];
        snprintf(nm, sizeof(nm), "W%d", s + 1);
        const struct arr *ew = get(nm);
        for (int i = 0; i < nW; i++)
            assert_float_equal(W[i], ew->v[i], 2e-6 + 2e-6 * fabs(ew->v[i]));
        snprintf(nm, sizeof(nm), "b%d", s + 1);
        const struct arr *eb = get(nm);
        for (int i = 0; i < nb; i++)
            assert_float_equal(b[i], eb->v[i], 2e-6 + 2e-6 * fabs(eb->v[i]));
    }
    /* Every step's gradient was clipped: the goldens exercise the clip, not only AdamW. */
    for (int s = 0; s < P_steps; s++)
        assert_true(get("norm")->v[s] > P_maxn);
    free(W), free(b), free(gW), free(gb), free(mW), free(vW), free(mb), free(vb);
    for (int i = 0; i < narrs; i++)
        free(arrs[i].v);
}

static void test_schedule_and_clip(void **state)
{
    (void)state;
    /* Warmup ramps linearly, the peak is lr, the cosine ends at lr*min_ratio. */
    assert_float_equal(optim_lr(0, 100, 10, 1.0, 0.1), 0.1, 1e-12);
    assert_float_equal(optim_lr(9, 100, 10, 1.0, 0.1), 1.0, 1e-12);
    assert_float_equal(optim_lr(10, 100, 10, 1.0, 0.1), 1.0, 1e-12);
    assert_float_equal(optim_lr(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);
    assert_float_equal(optim_lr(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
    assert_float_equal(optim_lr(0, 1, 0, 2.0, 0.0), 2.0, 1e-12);
    assert_float_equal(optim_clip_factor(0.5, 1.0), 1.0, 0);
    assert_float_equal(optim_clip_factor(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-12);
    assert_float_equal(optim_clip_factor(4.0, 0.0), 1.0, 0);
    /* Weight decay is decoupled: a zero gradient still shrinks a decayed weight by lr*wd. */
    struct adamw o = { 0.9, 0.999, 1e-8, 0.5 };
    float w[2] = { 2.0f, 2.0f }, g[2] = { 0, 0 }, m[2] = { 0 }, v[2] = { 0 };
    adamw_step(&o, 1, 0.1, 1.0, w, g, m, v, 1);
    adamw_step(&o, 1, 0.1, 0.0, w + 1, g + 1, m + 1, v + 1, 1);
    assert_float_equal(w[0], 2.0 * (1 - 0.1 * 0.5), 1e-6);
    assert_float_equal(w[1], 2.0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_torch),
        cmocka_unit_test(test_schedule_and_clip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
