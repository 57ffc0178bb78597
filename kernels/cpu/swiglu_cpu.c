/*
 * swiglu_cpu: the fast silu(g) * u and the swiglu() dispatch (see swiglu.h).
 */
#include "kernels/swiglu.h"

#include <errno.h>
#include <math.h>

#include "kernels/cuda.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

#define SWIGLU_CHUNK 16384

struct swiglu_job {
    float *h;
    const float *g, *u;
    size_t n;
};

static void swiglu_span(float *h, const float *g, const float *u, size_t n)
{
    size_t i = 0;
    const v8f one = v8_set1(1.0f);
    for (; i + 8 <= n; i += 8) {
        v8f gv = v8_loadu(g + i);
        v8f s = gv / (one + v8_exp(-gv));
        v8_storeu(h + i, s * v8_loadu(u + i));
    }
    for (; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void swiglu_task(void *arg, int task, int tid)
{
    struct swiglu_job *j = arg;
    (void)tid;
    size_t i0 = (size_t)task * SWIGLU_CHUNK;
    size_t n = j->n - i0 < SWIGLU_CHUNK ? j->n - i0 : SWIGLU_CHUNK;
    swiglu_span(j->h + i0, j->g + i0, j->u + i0, n);
}

void swiglu_cpu(float *h, const float *g, const float *u, size_t n)
{
    if (n <= SWIGLU_CHUNK) {
        swiglu_span(h, g, u, n);
        return;
    }
    struct swiglu_job j = { h, g, u, n };
    par_for((int)((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK), swiglu_task, &j);
}

int swiglu(enum kern_impl impl, float *h, const float *g, const float *u, size_t n)
{
    if (n > 0 && (!h || !g || !u))
        return -EINVAL;
    if ((n + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK > PAR_MAX_TASKS)
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        swiglu_ref(h, g, u, n);
        return 0;
    case KERN_IMPL_CPU:
        swiglu_cpu(h, g, u, n);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_swiglu(h, g, u, n);
    default:
        return -ENOSYS;
    }
}

void kern_vexp(float *out, const float *x, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        v8_storeu(out + i, v8_exp(v8_loadu(x + i)));
    if (i < n) {
        float tmp[8] = { 0 };
        for (size_t k = i; k < n; k++)
            tmp[k - i] = x[k];
        v8f r = v8_exp(v8_loadu(tmp));
        for (size_t k = i; k < n; k++)
            out[k] = r[k - i];
    }
}
