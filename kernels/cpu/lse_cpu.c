/*
 * lse_cpu: the fast row log-sum-exp and the lse() dispatch (see lse.h).
 */
#include "kernels/lse.h"

#include <errno.h>
#include <math.h>

#include "kernels/cuda.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

#define LSE_CHUNK 512

struct lse_job {
    float *out;
    const float *x;
    int rows, n;
};

static float lse_row(const float *x, int n)
{
    v8f mv = v8_set1(-INFINITY);
    int i = 0;
    int nan = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v = v8_loadu(x + i);
        v8i bad = v != v;
        for (int k = 0; k < 8; k++)
            nan |= bad[k];
        mv = v8_max(mv, v);
    }
    float m = v8_hmax(mv);
    for (; i < n; i++) {
        if (isnan(x[i]))
            nan = 1;
        if (x[i] > m)
            m = x[i];
    }
    if (nan)
        return NAN;
    if (isinf(m))
        return m;
    /* Two-level sum: LSE_CHUNK values into 16 fp32 lanes (<= 32 terms each), chunks in double,
     * so the rounding error stays ~40 u whatever the row length. */
    v8f vm = v8_set1(m);
    double tot = 0.0;
    for (int c0 = 0; c0 < n; c0 += LSE_CHUNK) {
        int c1 = c0 + LSE_CHUNK < n ? c0 + LSE_CHUNK : n;
        v8f s0 = { 0 }, s1 = { 0 };
        i = c0;
        for (; i + 16 <= c1; i += 16) {
            s0 += v8_exp(v8_loadu(x + i) - vm);
            s1 += v8_exp(v8_loadu(x + i + 8) - vm);
        }
        for (; i + 8 <= c1; i += 8)
            s0 += v8_exp(v8_loadu(x + i) - vm);
        float s = v8_hsum(s0 + s1);
        for (; i < c1; i++)
            s += expf(x[i] - m);
        tot += s;
    }
    return (float)((double)m + log(tot));
}

static void lse_task(void *arg, int task, int tid)
{
    struct lse_job *j = arg;
    (void)tid;
    j->out[task] = lse_row(j->x + (size_t)task * j->n, j->n);
}

void lse_cpu(float *out, const float *x, int rows, int n)
{
    struct lse_job j = { out, x, rows, n };
    if ((size_t)rows * n < 65536) {
        for (int r = 0; r < rows; r++)
            out[r] = lse_row(x + (size_t)r * n, n);
        return;
    }
    par_for(rows, lse_task, &j);
}

int lse(enum kern_impl impl, float *out, const float *x, int rows, int n)
{
    if (rows < 0 || n <= 0 || rows > PAR_MAX_TASKS || (rows > 0 && (!out || !x)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        lse_ref(out, x, rows, n);
        return 0;
    case KERN_IMPL_CPU:
        lse_cpu(out, x, rows, n);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_lse(out, x, rows, n);
    default:
        return -ENOSYS;
    }
}
