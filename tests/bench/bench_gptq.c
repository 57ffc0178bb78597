/*
 * bench_gptq: GPTQ W4A16 g128 (defaults) on the linears of one tiny-a layer (hidden 256, MLP
 * 1024: q/k/v share one Hessian, o has its own, gate/up share one, down has its own), the
 * factorization (gptq_prepare) and the column loop (gptq_quantize_prep) timed apart.
 *
 *   bench_gptq          one CSV row per linear and per factorization, then the layer's total
 *   bench_gptq big      also a 4096-column Hessian from 8192 rows (syrk) and a 2048 x 4096
 *                       down-like weight, with and without the RTN-loss comparison
 *
 * Rows: csv,op,variant,shape,dtype,us,GB/s,git_sha,gpu,derived (STYLE 3.5; tests/bench.sh).
 * EXAQ_GPTQ_GENERIC=1 selects the generic kernels instead of AVX2.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "tests/bench/bench.h"
#include "worker/compress/gptq.h"
#include "worker/engine/quant.h"

static uint64_t rng_s;

static double rng_normal(void)
{
    double u[2];
    for (int k = 0; k < 2; k++) {
        uint64_t z = (rng_s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        u[k] = (((z ^ (z >> 31)) >> 11) + 0.5) * 0x1p-53;
    }
    return sqrt(-2.0 * log(u[0])) * cos(2.0 * M_PI * u[1]);
}

static void *xmalloc_or_die(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "bench_gptq: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* Rows with every 13th channel 8x larger (outlier channels), T rows of width n. */
static float *make_x(int T, int n, uint64_t seed)
{
    rng_s = seed * 0x9e3779b97f4a7c15ull + 12345;
    float *X = xmalloc_or_die(sizeof(float) * (size_t)T * n);
    for (size_t i = 0; i < (size_t)T * n; i++)
        X[i] = (float)rng_normal() * (i % n % 13 == 5 ? 8.0f : 1.0f);
    return X;
}

static float *make_h(const float *X, int T, int n)
{
    struct hessian h;
    if (hess_init(&h, n) < 0) {
        fprintf(stderr, "bench_gptq: hess_init failed\n");
        exit(1);
    }
    hess_add(&h, X, T);
    hess_finish(&h);
    float *H = h.H;
    h.H = NULL;
    hess_release(&h);
    return H;
}

static void row(const char *op, const char *variant, int r, int c, double s, const char *extra)
{
    printf("csv,%s,%s,%dx%d,w4a16,%.1f,,%s,none,%s\n", op, variant, r, c, s * 1e6, bench_git_sha(),
           extra);
}

static struct gptq_prep *prep(const char *name, const float *H, int c, bool loss_rtn, double *total)
{
    struct gptq_opts o;
    gptq_opts_default(&o);
    o.compute_loss_rtn = loss_rtn;
    struct gptq_prep *p = NULL;
    char *err = NULL;
    double t0 = now_mono();
    if (gptq_prepare(H, c, &o, &p, &err) < 0) {
        fprintf(stderr, "bench_gptq: gptq_prepare %s: %s\n", name, err ? err : "failed");
        exit(1);
    }
    double dt = now_mono() - t0;
    *total += dt;
    row("gptq_prepare", name, c, c, dt, "");
    return p;
}

static void quantize(const char *name, int r, const struct gptq_prep *p, int c, double *total)
{
    rng_s = (uint64_t)r * 7 + c;
    float *W = xmalloc_or_die(sizeof(float) * (size_t)r * c);
    for (size_t i = 0; i < (size_t)r * c; i++)
        W[i] = (float)(0.05 * rng_normal());
    struct qweight w;
    struct gptq_stats st;
    char *err = NULL;
    if (qweight_init(&w, QSCHEME_W4A16, r, c, 128) < 0) {
        fprintf(stderr, "bench_gptq: qweight_init failed\n");
        exit(1);
    }
    double t0 = now_mono();
    if (gptq_quantize_prep(&w, W, p, &st, &err) < 0) {
        fprintf(stderr, "bench_gptq: %s: %s\n", name, err ? err : "failed");
        exit(1);
    }
    double dt = now_mono() - t0;
    *total += dt;
    char extra[96];
    snprintf(extra, sizeof(extra), "loss/loss_rtn %.3f",
             st.loss_rtn > 0 ? st.loss / st.loss_rtn : NAN);
    row("gptq_quantize", name, r, c, dt, extra);
    qweight_release(&w);
    free(W);
}

int main(int argc, char **argv)
{
    bool big = argc > 1 && !strcmp(argv[1], "big");
    fprintf(stderr, "bench_gptq: one tiny-a layer, %s\n",
            getenv("EXAQ_GPTQ_GENERIC") ? "generic kernels" : "AVX2 kernels where available");
    float *X1 = make_x(512, 256, 61), *X2 = make_x(512, 1024, 62);
    float *H1 = make_h(X1, 512, 256), *H2 = make_h(X2, 512, 1024);
    double total = 0.0;
    struct gptq_prep *p = prep("qkv", H1, 256, true, &total);
    quantize("q_proj", 256, p, 256, &total);
    quantize("k_proj", 128, p, 256, &total);
    quantize("v_proj", 128, p, 256, &total);
    gptq_prep_free(p);
    p = prep("o", H1, 256, true, &total);
    quantize("o_proj", 256, p, 256, &total);
    gptq_prep_free(p);
    p = prep("mlp", H1, 256, true, &total);
    quantize("gate_proj", 1024, p, 256, &total);
    quantize("up_proj", 1024, p, 256, &total);
    gptq_prep_free(p);
    p = prep("down", H2, 1024, true, &total);
    quantize("down_proj", 256, p, 1024, &total);
    gptq_prep_free(p);
    row("gptq_layer", "tiny-a", 256, 1024, total, "");
    free(X1);
    free(X2);
    free(H1);
    free(H2);
    if (!big)
        return 0;

    int n = 4096, T = 8192;
    float *X = make_x(T, n, 5);
    double t0 = now_mono();
    float *H = make_h(X, T, n);
    row("hessian_syrk", "T8192", n, n, now_mono() - t0, "");
    free(X);
    for (int k = 0; k < 2; k++) {
        total = 0.0;
        p = prep(k == 0 ? "down-like+rtnloss" : "down-like", H, n, k == 0, &total);
        quantize(k == 0 ? "down-like+rtnloss" : "down-like", 2048, p, n, &total);
        gptq_prep_free(p);
    }
    free(H);
    return 0;
}
