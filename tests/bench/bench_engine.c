/*
 * bench_engine: CPU engine benchmarks (not a unit test): SGEMM / GEMV / SYRK kernel throughput,
 * and model prefill tokens/s, decode ms/token and the tiny-a perplexity run time.
 *
 * Built by `make bench` into $(O)/bench/bench_engine (tests/bench.sh runs it), or by hand from the
 * repository root:
 *   make O=build/bench build/bench/libexaqw.a build/bench/libexaq.a && \
 *   gcc -std=gnu11 -O2 -I. -I/usr/include/cjson -D_GNU_SOURCE -pthread \
 *       tests/bench/bench_engine.c build/bench/libexaqw.a build/bench/libexaq.a \
 *       -lcjson -lyaml -lsqlite3 -luv -lzip -lcrypto -lm -ldl -o build/bench/bench_engine
 *
 * Usage:
 *   bench_engine [--threads N] kernels             SGEMM (F32 and BF16 weights), GEMV, SYRK
 *   bench_engine [--threads N] model DIR [T]       prefill of T tokens (default 512), decode
 *   bench_engine [--threads N] ppl [DIR [IDS]]     tiny-a perplexity protocol, timed
 *   bench_engine synth DIR                         writes the 1.2B-shape synthetic checkpoint
 * Every measurement prints a human line and a CSV row
 *   op,variant,shape,dtype,us,GB/s,git_sha,gpu
 * (STYLE 3.5; GB/s is weight bytes streamed per second where that is the bound, else empty).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "kernels/syrk.h"
#include "worker/engine/model.h"
#include "worker/engine/synth.h"
#include "tests/bench/bench.h"

static void csv(const char *op, const char *variant, const char *shape, const char *dtype,
                double us, double gbs)
{
    if (gbs > 0)
        printf("csv,%s,%s,%s,%s,%.1f,%.2f,%s,none\n", op, variant, shape, dtype, us, gbs,
               bench_git_sha());
    else
        printf("csv,%s,%s,%s,%s,%.1f,,%s,none\n", op, variant, shape, dtype, us, bench_git_sha());
}

/* Runs fn until at least min_s seconds passed (after one warm-up call); seconds per call. */
static double timeit(void (*fn)(void *), void *arg, double min_s)
{
    fn(arg);
    int n = 0;
    double t0 = now_mono(), t;
    do {
        fn(arg);
        n++;
        t = now_mono();
    } while (t - t0 < min_s);
    return (t - t0) / n;
}

struct mm_arg {
    float *y, *x;
    int T;
    struct linear L;
};

static void run_mm(void *a)
{
    struct mm_arg *m = a;
    matmul(KERN_IMPL_CPU, m->y, m->x, m->T, &m->L, 0);
}

static void bench_matmul(int T, int out, int in, enum kern_dtype dt)
{
    struct mm_arg a;
    a.T = T;
    a.x = xmalloc(sizeof(float) * (size_t)T * in);
    a.y = xmalloc(sizeof(float) * (size_t)T * out);
    size_t n = (size_t)out * in;
    void *w = xmalloc(n * kern_dtype_size(dt));
    for (size_t i = 0; i < (size_t)T * in; i++)
        a.x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    for (size_t i = 0; i < n; i++) {
        float v = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
        if (dt == KERN_F32)
            ((float *)w)[i] = v;
        else
            ((uint16_t *)w)[i] = kern_f32_to_bf16(v);
    }
    linear_init_dense(&a.L, out, in, dt, w);
    double s = timeit(run_mm, &a, 1.0);
    double gflops = 2.0 * T * out * in / s / 1e9;
    double gbs = (double)n * kern_dtype_size(dt) / s / 1e9;
    char shape[64];
    snprintf(shape, sizeof(shape), "%dx%dx%d", T, out, in);
    const char *dts = dt == KERN_F32 ? "f32" : "bf16";
    printf("%-6s T=%-4d out=%-5d in=%-5d w=%-4s  %9.3f ms  %7.1f GFLOP/s  %6.1f GB/s of W\n",
           T < MATMUL_GEMV_MAX_T ? "gemv" : "sgemm", T, out, in, dts, s * 1e3, gflops, gbs);
    csv(T < MATMUL_GEMV_MAX_T ? "gemv" : "sgemm", "cpu", shape, dts, s * 1e6,
        T < MATMUL_GEMV_MAX_T ? gbs : 0);
    free(a.x);
    free(a.y);
    free(w);
}

struct syrk_arg {
    float *H, *X;
    int T, n;
};

static void run_syrk(void *a)
{
    struct syrk_arg *s = a;
    syrk(KERN_IMPL_CPU, s->H, s->X, s->T, s->n, 1.0f, 1.0f);
}

static void bench_syrk(int T, int n)
{
    struct syrk_arg a = { xcalloc((size_t)n * n, sizeof(float)),
                          xmalloc(sizeof(float) * (size_t)T * n), T, n };
    for (size_t i = 0; i < (size_t)T * n; i++)
        a.X[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    double s = timeit(run_syrk, &a, 1.0);
    /* Useful flops: the full n x n product, 2 T n^2 (the kernel does about half of them). */
    printf("syrk   T=%-4d n=%-5d         %9.3f ms  %7.1f GFLOP/s (full-product equivalent)\n", T, n,
           s * 1e3, 2.0 * T * n * n / s / 1e9);
    char shape[64];
    snprintf(shape, sizeof(shape), "%dx%d", T, n);
    csv("syrk", "cpu", shape, "f32", s * 1e6, 0);
    free(a.H);
    free(a.X);
}

static int cmd_kernels(void)
{
    printf("# threads %d\n", par_nthreads());
    bench_matmul(512, 2048, 2048, KERN_F32);
    bench_matmul(512, 2048, 2048, KERN_BF16);
    bench_matmul(128, 2048, 2048, KERN_BF16);
    bench_matmul(512, 1024, 256, KERN_BF16);
    bench_matmul(512, 4096, 256, KERN_BF16);
    bench_matmul(1, 2048, 2048, KERN_BF16);
    bench_matmul(1, 4096, 2048, KERN_BF16);
    bench_matmul(1, 2048, 4096, KERN_BF16);
    bench_matmul(1, 16384, 8192, KERN_BF16);
    bench_syrk(512, 1024);
    bench_syrk(512, 4096);
    return 0;
}

static int cmd_model(const char *dir, int T)
{
    struct model *m;
    char *err = NULL;
    double t0 = now_mono();
    if (model_load(&m, dir, NULL, &err) != 0) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    const struct config *c = &m->cfg;
    printf("# %s: %d layers, hidden %d, vocab %d, loaded (mmap) in %.2f s, threads %d\n", dir,
           c->num_hidden_layers, c->hidden_size, c->vocab_size, now_mono() - t0, par_nthreads());
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)((i * 7919u + 13) % (unsigned)c->vocab_size);
    float *logits = xmalloc(sizeof(float) * (size_t)c->vocab_size);
    int reps = T * c->hidden_size <= 512 * 256 ? 5 : 1;
    /* Prefill: a fresh sequence of T tokens, last-position logits (as a generation prompt). */
    struct model_kv *kv = model_kv_new(m, T + 64);
    if (model_forward(m, ids, T < 16 ? T : 16, kv, MODEL_LOGITS_LAST, logits, NULL, &err))
        goto fail; /* warm-up: page the weights in */
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        model_kv_reset(kv);
        t0 = now_mono();
        if (model_forward(m, ids, T, kv, MODEL_LOGITS_LAST, logits, NULL, &err))
            goto fail;
        double dt = now_mono() - t0;
        best = dt < best ? dt : best;
    }
    printf("prefill T=%d: %.3f s, %.1f tokens/s\n", T, best, T / best);
    char shape[64];
    snprintf(shape, sizeof(shape), "T%d", T);
    csv("prefill", dir, shape, "bf16", best * 1e6, 0);
    /* Decode: 64 tokens after the prefill, one at a time through the cache. */
    int nd = 64;
    t0 = now_mono();
    for (int i = 0; i < nd; i++) {
        int32_t tok = (int32_t)((i * 31u + 5) % (unsigned)c->vocab_size);
        if (model_forward(m, &tok, 1, kv, MODEL_LOGITS_LAST, logits, NULL, &err))
            goto fail;
    }
    double per = (now_mono() - t0) / nd;
    double wbytes = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            wbytes += (double)m->layers[l].lin[w].out * m->layers[l].lin[w].in *
                      kern_dtype_size(m->layers[l].lin[w].dtype);
    wbytes += (double)c->vocab_size * c->hidden_size * kern_dtype_size(m->lm_head.dtype);
    printf("decode after %d: %.3f ms/token (%.1f tokens/s, %.1f GB/s of weights)\n", T, per * 1e3,
           1 / per, wbytes / per / 1e9);
    snprintf(shape, sizeof(shape), "ctx%d", T);
    csv("decode", dir, shape, "bf16", per * 1e6, wbytes / per / 1e9);
    model_kv_free(kv);
    free(ids);
    free(logits);
    model_free(m);
    return 0;
fail:
    fprintf(stderr, "bench_engine: %s\n", err);
    return 1;
}

static int cmd_ppl(const char *dir, const char *ids_path)
{
    struct model *m;
    char *err = NULL, *buf;
    size_t len;
    if (model_load(&m, dir, NULL, &err) != 0) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    int rc = file_read_all(ids_path, &buf, &len);
    if (rc != 0 || len < (200 * 512 + 1) * 4) {
        fprintf(stderr, "bench_engine: cannot read 102401 ids from '%s'\n", ids_path);
        return 1;
    }
    const int32_t *ids = (const int32_t *)buf;
    float nll[512];
    double tot = 0, t0 = now_mono();
    for (int w = 0; w < 200; w++) {
        if (model_nll(m, ids + 512 * w, 513, nll, &err) != 0) {
            fprintf(stderr, "bench_engine: %s\n", err);
            return 1;
        }
        for (int i = 0; i < 512; i++)
            tot += nll[i];
    }
    double dt = now_mono() - t0;
    printf("ppl %.4f over 200 windows of 512 in %.2f s (%.0f tokens/s, %d threads)\n",
           exp(tot / 102400), dt, 102400 / dt, par_nthreads());
    csv("ppl", dir, "200x512", "bf16", dt * 1e6, 0);
    free(buf);
    model_free(m);
    return 0;
}

static int cmd_synth(const char *dir)
{
    struct synth_opts o;
    char *err = NULL;
    synth_opts_default(&o);
    double t0 = now_mono();
    if (synth_write(&o, dir, &err) != 0) {
        fprintf(stderr, "bench_engine: %s\n", err);
        return 1;
    }
    printf("wrote the 1.2B-shape synthetic checkpoint to %s in %.1f s (%.2f GB)\n", dir,
           now_mono() - t0, (double)dir_size_bytes(dir) / 1e9);
    return 0;
}

int main(int argc, char **argv)
{
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) {
        par_set_nthreads(atoi(argv[i + 1]));
        i += 2;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: bench_engine [--threads N] kernels | model DIR [T] | "
                        "ppl [DIR [IDS]] | synth DIR\n");
        return 2;
    }
    const char *cmd = argv[i++];
    int rc;
    if (strcmp(cmd, "kernels") == 0)
        rc = cmd_kernels();
    else if (strcmp(cmd, "model") == 0 && i < argc)
        rc = cmd_model(argv[i], i + 1 < argc ? atoi(argv[i + 1]) : 512);
    else if (strcmp(cmd, "ppl") == 0)
        rc = cmd_ppl(i < argc ? argv[i] : "tests/data/tiny-exaone4",
                     i + 1 < argc ? argv[i + 1] : "tests/data/tiny-a/val.ids.u32");
    else if (strcmp(cmd, "synth") == 0 && i < argc)
        rc = cmd_synth(argv[i]);
    else {
        fprintf(stderr, "bench_engine: unknown command '%s'\n", cmd);
        rc = 2;
    }
    par_shutdown();
    return rc;
}
