/*
 * bench_qmatmul: CPU throughput of the quantized linear formats (kernels/matmul.h INT, INT4,
 * FP8) against BF16 (not a unit test).
 *
 * Built by `make bench` into $(O)/bench/bench_qmatmul (tests/bench.sh runs it), or with
 *   make O=build/bench build/bench/bench/bench_qmatmul
 *
 * Usage:
 *   bench_qmatmul [--threads N] [--reps R] gemv      T=1 GEMV on [2048x2048], [4096x2048],
 *                                                    [2048x4096] (out x in) and [16384x8192]
 *                                                    (DRAM-resident), every format
 *   bench_qmatmul [--threads N] [--reps R] gemm      T=128 on [2048x2048], every format
 *   bench_qmatmul [--threads N] [--reps R] one FMT T OUT IN    one format and shape (profiling)
 *   bench_qmatmul [--threads N] [--reps R] model DIR [SCHEME [GROUP]]
 *                                                    decode ms/token of a checkpoint after an
 *                                                    in-memory RTN quantization of every linear
 *                                                    (SCHEME: none (default), W4A16, W8A16, ...)
 * Formats: bf16 (dense), w8 (W8A16 per channel, int8 codes), w4i8 (W4A16 g128 with one int8 per
 * code), w4 (W4A16 g128 packed nibbles: what the engine uses), w4asym (W4A16_ASYM g128 packed,
 * zero points), fp8 (FP8_DYNAMIC per channel), w4gidx (w4 with an act-order g_idx: the generic
 * path). Weights are RTN codes of N(0, 0.02) values. Each figure is the median of R repeats
 * (default 5) of a >= 0.3 s timing loop after a warm-up call (W stays in cache between calls
 * when it fits: "L3-resident"); min and max are printed beside it, and the load average before
 * and after, because the machine is shared. Rows: CSV `op,variant,shape,dtype,us,GB/s,git_sha,
 * gpu` (STYLE 3.5) with GB/s = bytes of codes + scales streamed per second.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/matmul.h"
#include "kernels/par.h"
#include "worker/engine/model.h"
#include "worker/engine/quant.h"
#include "tests/bench/bench.h"

static int g_reps = 5;

static void loadavg(char *buf, size_t n)
{
    char *s = NULL;
    size_t len;
    snprintf(buf, n, "?");
    if (file_read_all("/proc/loadavg", &s, &len) == 0) {
        snprintf(buf, n, "%.*s", (int)strcspn(s, " "), s);
        free(s);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median, min and max over g_reps repeats of seconds per call (each repeat: >= min_s). */
static void timeit(void (*fn)(void *), void *arg, double min_s, double *med, double *lo, double *hi)
{
    double t[64];
    int reps = g_reps < 1 ? 1 : g_reps > 64 ? 64 : g_reps;
    fn(arg);
    for (int r = 0; r < reps; r++) {
        int n = 0;
        double t0 = now_mono(), t1;
        do {
            fn(arg);
            n++;
            t1 = now_mono();
        } while (t1 - t0 < min_s);
        t[r] = (t1 - t0) / n;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    *med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    *lo = t[0];
    *hi = t[reps - 1];
}

/* ---- one weight in every format -------------------------------------------------------------- */

enum bfmt { B_BF16, B_W8, B_W4I8, B_W4, B_W4ASYM, B_FP8, B_W4GIDX, B__COUNT };
static const char *bfmt_names[B__COUNT] = { "bf16", "w8", "w4i8", "w4", "w4asym", "fp8", "w4gidx" };

struct bweight {
    struct linear L;
    struct qweight q;
    uint16_t *bf16;
};

static void bweight_make(struct bweight *b, enum bfmt f, int out, int in, const float *W)
{
    static const enum qscheme sch[B__COUNT] = { 0,
                                                QSCHEME_W8A16,
                                                QSCHEME_W4A16,
                                                QSCHEME_W4A16,
                                                QSCHEME_W4A16_ASYM,
                                                QSCHEME_FP8_DYNAMIC,
                                                QSCHEME_W4A16 };
    size_t n = (size_t)out * in;
    memset(b, 0, sizeof(*b));
    if (f == B_BF16) {
        b->bf16 = xmalloc(n * 2);
        for (size_t i = 0; i < n; i++)
            b->bf16[i] = kern_f32_to_bf16(W[i]);
        linear_init_dense(&b->L, out, in, KERN_BF16, b->bf16);
        return;
    }
    int gs = (f == B_W4I8 || f == B_W4 || f == B_W4ASYM || f == B_W4GIDX) ? 128 : -1;
    if (qweight_init(&b->q, sch[f], out, in, gs) != 0) {
        fprintf(stderr, "bench_qmatmul: qweight_init failed\n");
        exit(1);
    }
    quant_rtn(&b->q, W, QGRID_ABSMAX_HALF);
    if (f == B_W4GIDX) {
        /* Act-order "group" layout: column c belongs to group (c * 7) % ngroups. */
        b->q.g_idx = xmalloc(sizeof(int32_t) * (size_t)in);
        for (int c = 0; c < in; c++)
            b->q.g_idx[c] = (int32_t)(((int64_t)c * 7) % b->q.ngroups);
    }
    struct linear_qsrc src = {
        out,        in,         b->q.bits, b->q.is_fp8 ? NULL : b->q.q,
        b->q.fp8,   b->q.scale, b->q.zp,   b->q.group_size,
        b->q.g_idx,
    };
    enum linear_fmt lf = f == B_FP8                 ? LINEAR_FMT_FP8
                         : f == B_W8 || f == B_W4I8 ? LINEAR_FMT_INT
                                                    : LINEAR_FMT_INT4;
    if (linear_init_quant(&b->L, &src, lf) != 0) {
        fprintf(stderr, "bench_qmatmul: linear_init_quant failed\n");
        exit(1);
    }
}

static void bweight_free(struct bweight *b)
{
    linear_release(&b->L);
    qweight_release(&b->q);
    free(b->bf16);
}

struct mm_arg {
    float *y, *x;
    int T;
    const struct linear *L;
};

static void run_mm(void *a)
{
    struct mm_arg *m = a;
    matmul(KERN_IMPL_CPU, m->y, m->x, m->T, m->L, 0);
}

/* Formats to run (bit mask over enum bfmt); `one` narrows it for profiling. */
static unsigned g_fmts = (1u << B__COUNT) - 1;

static void bench_shape(int T, int out, int in, double min_s)
{
    size_t n = (size_t)out * in;
    float *W = xmalloc(n * sizeof(float));
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        /* Irwin-Hall(4) ~ N(0, 0.02): cheap, and enough for realistic codes. */
        double v = 0;
        for (int k = 0; k < 4; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            v += (double)(s >> 11) / 9007199254740992.0;
        }
        W[i] = (float)((v - 2.0) * 0.02 * 1.7320508);
    }
    struct mm_arg a = { xmalloc(sizeof(float) * (size_t)T * out),
                        xmalloc(sizeof(float) * (size_t)T * in), T, NULL };
    for (size_t i = 0; i < (size_t)T * in; i++)
        a.x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    double base = 0;
    for (int f = 0; f < B__COUNT; f++) {
        struct bweight b;
        if (!(g_fmts & (1u << f)))
            continue;
        double med, lo, hi;
        bweight_make(&b, (enum bfmt)f, out, in, W);
        a.L = &b.L;
        timeit(run_mm, &a, min_s, &med, &lo, &hi);
        if (f == B_BF16)
            base = med;
        double bytes = (double)linear_weight_bytes(&b.L);
        char shape[64];
        snprintf(shape, sizeof(shape), "%dx%dx%d", T, out, in);
        printf("%-5s T=%-3d out=%-5d in=%-5d %-7s %9.1f us (min %.1f, max %.1f)  %6.1f GB/s  "
               "%5.2fx bf16  %6.1f MB\n",
               T < MATMUL_GEMV_MAX_T ? "gemv" : "gemm", T, out, in, bfmt_names[f], med * 1e6,
               lo * 1e6, hi * 1e6, bytes / med / 1e9, base / med, bytes / 1e6);
        printf("csv,%s,cpu,%s,%s,%.1f,%.2f,%s,none\n", T < MATMUL_GEMV_MAX_T ? "qgemv" : "qgemm",
               shape, bfmt_names[f], med * 1e6, bytes / med / 1e9, bench_git_sha());
        fflush(stdout);
        bweight_free(&b);
    }
    free(W);
    free(a.x);
    free(a.y);
}

/* ---- model decode ------------------------------------------------------------------------- */

static int cmd_model(const char *dir, const char *scheme, int gs)
{
    struct model *m;
    char *err = NULL;
    enum qscheme s = 0;
    int quant = scheme && strcmp(scheme, "none") != 0;
    if (quant && qscheme_parse(scheme, &s) != 0) {
        fprintf(stderr, "bench_qmatmul: unknown scheme '%s'\n", scheme);
        return 2;
    }
    if (model_load(&m, dir, NULL, &err) != 0)
        goto fail;
    double t0 = now_mono(), wbytes = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT && quant; w++) {
            const struct linear *L = model_linear(m, l, (enum model_lin)w);
            float *W = xmalloc(sizeof(float) * (size_t)L->out * L->in);
            struct qweight q;
            if (model_linear_get_f32(m, l, (enum model_lin)w, W, &err) ||
                qweight_init(&q, s, L->out, L->in, gs) != 0) {
                fprintf(stderr, "bench_qmatmul: cannot quantize layer %d\n", l);
                return 1;
            }
            quant_rtn(&q, W, QGRID_ABSMAX_HALF);
            free(W);
            if (model_linear_set_quant(m, l, (enum model_lin)w, &q, &err))
                goto fail;
        }
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++)
            wbytes += (double)linear_weight_bytes(model_linear(m, l, (enum model_lin)w));
    wbytes += (double)linear_weight_bytes(&m->lm_head);
    if (quant)
        printf("# quantized every linear to %s g%d (RTN) in %.1f s\n", scheme, gs, now_mono() - t0);
    const struct config *c = &m->cfg;
    int P = 128, G = 32;
    int32_t ids[128];
    for (int i = 0; i < P; i++)
        ids[i] = (int32_t)((i * 7919u + 13) % (unsigned)c->vocab_size);
    float *logits = xmalloc(sizeof(float) * (size_t)c->vocab_size);
    struct model_kv *kv = model_kv_new(m, P + G * (g_reps + 1));
    double t[64];
    int reps = g_reps < 1 ? 1 : g_reps > 64 ? 64 : g_reps;
    if (model_forward(m, ids, P, kv, MODEL_LOGITS_LAST, logits, NULL, &err))
        goto fail;
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
        double a = now_mono();
        for (int i = 0; i < G; i++) {
            int32_t tok = (int32_t)((i * 31u + 5) % (unsigned)c->vocab_size);
            if (model_forward(m, &tok, 1, kv, MODEL_LOGITS_LAST, logits, NULL, &err))
                goto fail;
        }
        if (r >= 0)
            t[r] = (now_mono() - a) / G;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
    printf("decode %s %s: %.3f ms/token (min %.3f, max %.3f), %.1f GB/s of weights "
           "(%.1f MB streamed per token)\n",
           dir, quant ? scheme : "bf16", med * 1e3, t[0] * 1e3, t[reps - 1] * 1e3,
           wbytes / med / 1e9, wbytes / 1e6);
    printf("csv,decode,%s,ctx%d,%s,%.1f,%.2f,%s,none\n", dir, P, quant ? scheme : "bf16", med * 1e6,
           wbytes / med / 1e9, bench_git_sha());
    model_kv_free(kv);
    free(logits);
    model_free(m);
    return 0;
fail:
    fprintf(stderr, "bench_qmatmul: %s\n", err ? err : "failed");
    free(err);
    return 1;
}

int main(int argc, char **argv)
{
    int i = 1, rc = 0;
    char la0[32], la1[32];
    while (i + 1 < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--threads") == 0)
            par_set_nthreads(atoi(argv[i + 1]));
        else if (strcmp(argv[i], "--reps") == 0)
            g_reps = atoi(argv[i + 1]);
        else
            break;
        i += 2;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: bench_qmatmul [--threads N] [--reps R] gemv | gemm | "
                        "model DIR [SCHEME [GROUP]]\n");
        return 2;
    }
    loadavg(la0, sizeof(la0));
    printf("# threads %d, repeats %d, load average %s\n", par_nthreads(), g_reps, la0);
    const char *cmd = argv[i++];
    if (strcmp(cmd, "gemv") == 0) {
        bench_shape(1, 2048, 2048, 0.3);
        bench_shape(1, 4096, 2048, 0.3);
        bench_shape(1, 2048, 4096, 0.3);
        bench_shape(1, 16384, 8192, 0.5);
    } else if (strcmp(cmd, "gemm") == 0) {
        bench_shape(128, 2048, 2048, 0.3);
    } else if (strcmp(cmd, "one") == 0 && i + 3 < argc) {
        g_fmts = 0;
        for (int f = 0; f < B__COUNT; f++)
            if (strcmp(argv[i], bfmt_names[f]) == 0)
                g_fmts = 1u << f;
        bench_shape(atoi(argv[i + 1]), atoi(argv[i + 2]), atoi(argv[i + 3]), 0.3);
    } else if (strcmp(cmd, "model") == 0 && i < argc) {
        rc = cmd_model(argv[i], i + 1 < argc ? argv[i + 1] : NULL,
                       i + 2 < argc ? atoi(argv[i + 2]) : 128);
    } else {
        fprintf(stderr, "bench_qmatmul: unknown command '%s'\n", cmd);
        rc = 2;
    }
    loadavg(la1, sizeof(la1));
    printf("# load average after: %s\n", la1);
    par_shutdown();
    return rc;
}
