/*
 * rmsnorm_cpu: the fast RMSNorm and the rmsnorm() dispatch (see rmsnorm.h).
 */
#include "kernels/rmsnorm.h"

#include <errno.h>
#include <math.h>

#include "kernels/cuda.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

struct rms_job {
    float *y;
    const float *x, *w;
    int rows, n, rows_per_task;
    float eps;
};

static void rms_row(float *yr, const float *xr, const float *w, int n, float eps)
{
    v8f a = { 0 }, b = { 0 };
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        v8f x0 = v8_loadu(xr + i), x1 = v8_loadu(xr + i + 8);
        a += x0 * x0;
        b += x1 * x1;
    }
    for (; i + 8 <= n; i += 8) {
        v8f x0 = v8_loadu(xr + i);
        a += x0 * x0;
    }
    float ss = v8_hsum(a + b);
    for (; i < n; i++)
        ss += xr[i] * xr[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    v8f vi = v8_set1(inv);
    i = 0;
    if (w) {
        for (; i + 8 <= n; i += 8)
            v8_storeu(yr + i, v8_loadu(w + i) * (v8_loadu(xr + i) * vi));
        for (; i < n; i++)
            yr[i] = w[i] * (xr[i] * inv);
    } else {
        for (; i + 8 <= n; i += 8)
            v8_storeu(yr + i, v8_loadu(xr + i) * vi);
        for (; i < n; i++)
            yr[i] = xr[i] * inv;
    }
}

static void rms_task(void *arg, int task, int tid)
{
    struct rms_job *j = arg;
    (void)tid;
    int r0 = task * j->rows_per_task;
    int r1 = r0 + j->rows_per_task < j->rows ? r0 + j->rows_per_task : j->rows;
    for (int r = r0; r < r1; r++)
        rms_row(j->y + (size_t)r * j->n, j->x + (size_t)r * j->n, j->w, j->n, j->eps);
}

void rmsnorm_cpu(float *y, const float *x, const float *w, int rows, int n, float eps)
{
    /* Below ~64K elements a parallel launch costs more than the work. */
    int per = rows;
    if ((size_t)rows * n >= 65536) {
        int nt = 4 * par_nthreads();
        per = (rows + nt - 1) / nt;
    }
    struct rms_job j = { y, x, w, rows, n, per, eps };
    par_for((rows + per - 1) / per, rms_task, &j);
}

int rmsnorm(enum kern_impl impl, float *y, const float *x, const float *w, int rows, int n,
            float eps)
{
    if (rows < 0 || n <= 0 || (rows > 0 && (!y || !x)))
        return -EINVAL;
    if (rows == 0)
        return 0;
    switch (impl) {
    case KERN_IMPL_REF:
        rmsnorm_ref(y, x, w, rows, n, eps);
        return 0;
    case KERN_IMPL_CPU:
        rmsnorm_cpu(y, x, w, rows, n, eps);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_rmsnorm(y, x, w, rows, n, eps);
    default:
        return -ENOSYS;
    }
}
