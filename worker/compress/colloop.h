/*
 * colloop: what the column loops of GPTQ (worker/compress/gptq.c) and SparseGPT
 * (worker/compress/sparsegpt.c) share: the AVX2+FMA clone switch and the row update of the loop.
 * Internal to those two files; everything is static and always inlined, so no vector crosses a call
 * boundary and each file's generic and AVX2 clones get their own code.
 */
#ifndef EXAQ_WORKER_COLLOOP_H
#define EXAQ_WORKER_COLLOOP_H

#include <stdlib.h>
#include <string.h>

#include "kernels/vmath.h" /* v8f */

#define ALWAYS_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define TARGET_AVX2
#endif

/* True when the AVX2+FMA clones may run (EXAQ_GPTQ_GENERIC=1 forces the generic code, which
 * the tests use to cover both). */
static inline int colloop_use_avx2(void)
{
    const char *e = getenv("EXAQ_GPTQ_GENERIC");
    if (e && *e == '1')
        return 0;
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* y[0..n) -= a * x[0..n). */
static ALWAYS_INLINE void axpy_neg(float *restrict y, const float *restrict x, float a, int n)
{
    v8f va = { a, a, a, a, a, a, a, a };
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        v8f xv, yv;
        memcpy(&xv, x + t, sizeof(xv));
        memcpy(&yv, y + t, sizeof(yv));
        yv -= va * xv;
        memcpy(y + t, &yv, sizeof(yv));
    }
    for (; t < n; t++)
        y[t] -= a * x[t];
}

#endif
