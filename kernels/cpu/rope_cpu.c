/*
 * rope_cpu: the fast rotary embedding and the rope() dispatch (see rope.h). The per-row cos/sin
 * table is computed once (sincos in double, as the reference) and applied to every head.
 */
#include "kernels/rope.h"

#include <errno.h>
#include <math.h>

#include "kernels/cuda.h"
#include "kernels/par.h"

struct rope_job {
    float *x;
    int T, nheads, head_dim, pos0, cs_bf16, rows_per_task;
    const float *inv_freq;
};

static void rope_task(void *arg, int task, int tid)
{
    struct rope_job *j = arg;
    (void)tid;
    int half = j->head_dim / 2;
    float *cs = par_scratch(3, (size_t)j->head_dim * sizeof(float));
    float *sn = cs + half;
    int t0 = task * j->rows_per_task;
    int t1 = t0 + j->rows_per_task < j->T ? t0 + j->rows_per_task : j->T;
    for (int t = t0; t < t1; t++) {
        for (int i = 0; i < half; i++) {
            float ang = (float)(j->pos0 + t) * j->inv_freq[i];
            double s, c;
            sincos((double)ang, &s, &c);
            cs[i] = j->cs_bf16 ? kern_round_bf16((float)c) : (float)c;
            sn[i] = j->cs_bf16 ? kern_round_bf16((float)s) : (float)s;
        }
        for (int h = 0; h < j->nheads; h++) {
            float *v = j->x + ((size_t)t * j->nheads + h) * j->head_dim;
            float *v2 = v + half;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v2[i];
                v[i] = x1 * cs[i] - x2 * sn[i];
                v2[i] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

void rope_cpu(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
              int cs_bf16)
{
    int per = T;
    if ((size_t)T * nheads * head_dim >= 65536) {
        int nt = 4 * par_nthreads();
        per = (T + nt - 1) / nt;
    }
    struct rope_job j = { x, T, nheads, head_dim, pos0, cs_bf16, per, inv_freq };
    par_for((T + per - 1) / per, rope_task, &j);
}

int rope(enum kern_impl impl, float *x, int T, int nheads, int head_dim, int pos0,
         const float *inv_freq, int cs_bf16)
{
    if (T < 0 || nheads < 0 || head_dim <= 0 || head_dim % 2 || pos0 < 0 ||
        (T > 0 && (!x || !inv_freq)))
        return -EINVAL;
    if (T == 0 || nheads == 0)
        return 0;
    switch (impl) {
    case KERN_IMPL_REF:
        rope_ref(x, T, nheads, head_dim, pos0, inv_freq, cs_bf16);
        return 0;
    case KERN_IMPL_CPU:
        rope_cpu(x, T, nheads, head_dim, pos0, inv_freq, cs_bf16);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_rope(x, T, nheads, head_dim, pos0, inv_freq, cs_bf16);
    default:
        return -ENOSYS;
    }
}
