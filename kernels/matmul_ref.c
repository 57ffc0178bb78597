/*
 * matmul_ref: the specification of y = x . W^T (plain loops, double accumulation, one thread),
 * plus the small `struct linear` lifecycle helpers that have no fast variant.
 */
#include "kernels/matmul.h"

#include <errno.h>
#include <stdlib.h>

void linear_init_dense(struct linear *L, int out, int in, enum kern_dtype dt, const void *w)
{
    memset(L, 0, sizeof(*L));
    L->fmt = LINEAR_FMT_DENSE;
    L->out = out;
    L->in = in;
    L->dtype = dt;
    L->w = w;
}

void linear_init_dense_take(struct linear *L, int out, int in, enum kern_dtype dt, void *w)
{
    linear_init_dense(L, out, in, dt, w);
    L->owned = w;
}

void linear_release(struct linear *L)
{
    if (!L)
        return;
    free(L->owned);
    memset(L, 0, sizeof(*L));
}

int linear_to_f32(const struct linear *L, float *dst)
{
    if (L->fmt != LINEAR_FMT_DENSE)
        return -ENOSYS;
    size_t esz = kern_dtype_size(L->dtype);
    for (int n = 0; n < L->out; n++)
        kern_row_to_f32(L->dtype, (const char *)L->w + (size_t)n * L->in * esz,
                        dst + (size_t)n * L->in, (size_t)L->in);
    return 0;
}

static float w_at(const struct linear *L, int n, int k)
{
    size_t idx = (size_t)n * L->in + k;
    switch (L->dtype) {
    case KERN_F32:
        return ((const float *)L->w)[idx];
    case KERN_BF16:
        return kern_bf16_to_f32(((const uint16_t *)L->w)[idx]);
    case KERN_F16:
        return kern_f16_to_f32(((const uint16_t *)L->w)[idx]);
    }
    return 0.0f;
}

void matmul_ref(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    for (int t = 0; t < T; t++) {
        for (int n = 0; n < L->out; n++) {
            double s = 0.0;
            for (int k = 0; k < L->in; k++)
                s += (double)x[(size_t)t * L->in + k] * (double)w_at(L, n, k);
            float *yo = &y[(size_t)t * L->out + n];
            *yo = accumulate ? *yo + (float)s : (float)s;
        }
    }
}
