/*
 * bench_grad: training throughput of worker/train/grad.c (not a unit test): tokens per second
 * of one forward + backward (tnet_loss_grad, cross-entropy, every parameter's gradient) and of
 * the forward alone (tnet_logits), on one sequence of T tokens.
 *
 * Usage (from the repository root; `make bench` builds it into $(O)/bench/ and tests/bench.sh
 * runs it on tiny-a):
 *   bench_grad [--threads N] DIR [T] [IDS]
 * T defaults to 512; ids are the first T of IDS (little-endian uint32, default
 * tests/data/tiny-a/val.ids.u32), or seeded random ids when IDS cannot be read.
 * Prints a human line and CSV rows op,variant,shape,dtype,us,GB/s,git_sha,gpu (STYLE 3.5):
 *   train_fwd_bwd,<label>,T<T>,f32,<us per sequence>,...
 *   train_fwd,<label>,T<T>,f32,<us per sequence>,...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/par.h"
#include "worker/train/grad.h"
#include "tests/bench/bench.h"

static void csv(const char *op, const char *label, int T, double us)
{
    printf("csv,%s,%s,T%d,f32,%.1f,,%s,none\n", op, label, T, us, bench_git_sha());
}

int main(int argc, char **argv)
{
    int a = 1;
    if (a + 1 < argc && strcmp(argv[a], "--threads") == 0) {
        par_set_nthreads(atoi(argv[a + 1]));
        a += 2;
    }
    if (a >= argc) {
        fprintf(stderr, "usage: bench_grad [--threads N] DIR [T] [IDS]\n");
        return 2;
    }
    const char *dir = argv[a];
    int T = a + 1 < argc ? atoi(argv[a + 1]) : 512;
    const char *idsf = a + 2 < argc ? argv[a + 2] : "tests/data/tiny-a/val.ids.u32";
    if (T < 2) {
        fprintf(stderr, "bench_grad: T must be >= 2\n");
        return 2;
    }
    char *err = NULL;
    struct tnet *t = tnet_load(dir, &err);
    if (!t) {
        fprintf(stderr, "bench_grad: %s\n", err);
        return 1;
    }
    int V = tnet_vocab(t);
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)T);
    char *buf = NULL;
    size_t len = 0;
    int have = file_read_all(idsf, &buf, &len) == 0 && len >= 4 * (size_t)T;
    uint32_t s = 12345;
    for (int i = 0; i < T; i++) {
        uint32_t v;
        if (have)
            memcpy(&v, buf + 4 * (size_t)i, 4);
        else
            v = (s = s * 1664525u + 1013904223u) >> 8;
        ids[i] = (int32_t)(v % (uint32_t)V);
    }
    free(buf);
    const char *label = strstr(dir, "tiny-exaone4") ? "tiny-a" : "model";
    double loss = 0;
    /* Warm-up, then at least 3 runs and 3 s. */
    if (tnet_loss_grad(t, ids, T, NULL, &loss, &err)) {
        fprintf(stderr, "bench_grad: %s\n", err);
        return 1;
    }
    int n = 0;
    double t0 = now_mono(), t1;
    do {
        tnet_zero_grad(t);
        tnet_loss_grad(t, ids, T, NULL, &loss, &err);
        n++;
        t1 = now_mono();
    } while (n < 3 || t1 - t0 < 3.0);
    double fb = (t1 - t0) / n;
    float *lg = xmalloc(sizeof(float) * (size_t)T * V);
    tnet_logits(t, ids, T, lg, &err);
    n = 0;
    t0 = now_mono();
    do {
        tnet_logits(t, ids, T, lg, &err);
        n++;
        t1 = now_mono();
    } while (n < 3 || t1 - t0 < 2.0);
    double fw = (t1 - t0) / n;
    printf("%s T=%d, %d threads: forward+backward %.1f ms (%.0f tokens/s, loss %.4f), forward "
           "%.1f ms (%.0f tokens/s)\n",
           label, T, par_nthreads(), fb * 1e3, T / fb, loss, fw * 1e3, T / fw);
    csv("train_fwd_bwd", label, T, fb * 1e6);
    csv("train_fwd", label, T, fw * 1e6);
    free(lg);
    free(ids);
    tnet_free(t);
    par_shutdown();
    return 0;
}
