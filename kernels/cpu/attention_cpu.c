/*
 * attention_cpu: the fast causal / sliding-window GQA attention and the attention() dispatch
 * (see attention.h).
 *
 * One task is one query head and a block of ATT_QB consecutive query rows; tasks of the last
 * blocks (the longest key ranges) are issued first so the dynamic scheduler balances them.
 *
 * Blocked path (T >= ATT_BLOCKED_MIN_T, head_dim a multiple of 32: prefill): the keys of each KV
 * head are first transposed to [head_dim][keys] (zero-padded to 16), so scores for a tile of 4
 * query rows x 16 keys are a GEMM micro-kernel (broadcast q, two key vectors, 8 accumulators, no
 * horizontal sums). Keys outside a row's causal / sliding range are computed but zeroed before
 * the value pass, which runs two rows x 32 dims at a time.
 *
 * Row path (decode-sized T, other head dims): per query row, scores for the visible keys go to a
 * per-thread scratch row (four keys per pass, two accumulators each, so eight FMA chains).
 *
 * Both: max, 8-wide exp and sum, value rows accumulated with the unnormalised weights, one
 * scale by 1/sum.
 */
#include "kernels/attention.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/cuda.h"
#include "kernels/par.h"
#include "kernels/vmath.h"

#define ATT_QB            16
#define ATT_BLOCKED_MIN_T 8

struct att_job {
    const struct attn_args *a;
    int nblocks;
};

static void scores_vec(const float *q, const float *k0, int hd, int n, float scale, float *s)
{
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        const float *ka = k0 + (size_t)j * hd, *kb = ka + hd, *kc = kb + hd, *kd = kc + hd;
        v8f a0 = { 0 }, a1 = { 0 }, b0 = { 0 }, b1 = { 0 };
        v8f c0 = { 0 }, c1 = { 0 }, d0 = { 0 }, d1 = { 0 };
        int i = 0;
        for (; i + 16 <= hd; i += 16) {
            v8f q0 = v8_loadu(q + i), q1 = v8_loadu(q + i + 8);
            a0 += q0 * v8_loadu(ka + i);
            a1 += q1 * v8_loadu(ka + i + 8);
            b0 += q0 * v8_loadu(kb + i);
            b1 += q1 * v8_loadu(kb + i + 8);
            c0 += q0 * v8_loadu(kc + i);
            c1 += q1 * v8_loadu(kc + i + 8);
            d0 += q0 * v8_loadu(kd + i);
            d1 += q1 * v8_loadu(kd + i + 8);
        }
        for (; i < hd; i += 8) {
            v8f q0 = v8_loadu(q + i);
            a0 += q0 * v8_loadu(ka + i);
            b0 += q0 * v8_loadu(kb + i);
            c0 += q0 * v8_loadu(kc + i);
            d0 += q0 * v8_loadu(kd + i);
        }
        s[j] = v8_hsum(a0 + a1) * scale;
        s[j + 1] = v8_hsum(b0 + b1) * scale;
        s[j + 2] = v8_hsum(c0 + c1) * scale;
        s[j + 3] = v8_hsum(d0 + d1) * scale;
    }
    for (; j < n; j++) {
        const float *kr = k0 + (size_t)j * hd;
        v8f a0 = { 0 };
        for (int i = 0; i < hd; i += 8)
            a0 += v8_loadu(q + i) * v8_loadu(kr + i);
        s[j] = v8_hsum(a0) * scale;
    }
}

static void scores_scalar(const float *q, const float *k0, int hd, int n, float scale, float *s)
{
    for (int j = 0; j < n; j++) {
        const float *kr = k0 + (size_t)j * hd;
        float d = 0.0f;
        for (int i = 0; i < hd; i++)
            d += q[i] * kr[i];
        s[j] = d * scale;
    }
}

/* s[0..n) <- exp(s - max); returns the sum. */
static float softmax_unnorm(float *s, int n)
{
    v8f mv = v8_set1(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8)
        mv = v8_max(mv, v8_loadu(s + j));
    float m = v8_hmax(mv);
    for (; j < n; j++)
        m = s[j] > m ? s[j] : m;
    v8f vm = v8_set1(m), sum = { 0 };
    j = 0;
    for (; j + 8 <= n; j += 8) {
        v8f e = v8_exp(v8_loadu(s + j) - vm);
        v8_storeu(s + j, e);
        sum += e;
    }
    float tot = v8_hsum(sum);
    for (; j < n; j++) {
        s[j] = expf(s[j] - m);
        tot += s[j];
    }
    return tot;
}

static void pv_vec(const float *s, const float *v0, int hd, int n, float inv, float *o)
{
    /* hd <= 256 here (checked by the caller): at most 32 vector accumulators on the stack. */
    v8f acc[32];
    int nv = hd / 8;
    for (int i = 0; i < nv; i++)
        acc[i] = (v8f){ 0 };
    for (int j = 0; j < n; j++) {
        const float *vr = v0 + (size_t)j * hd;
        v8f p = v8_set1(s[j]);
        for (int i = 0; i < nv; i++)
            acc[i] += p * v8_loadu(vr + 8 * i);
    }
    v8f vi = v8_set1(inv);
    for (int i = 0; i < nv; i++)
        v8_storeu(o + 8 * i, acc[i] * vi);
}

static void pv_scalar(const float *s, const float *v0, int hd, int n, float inv, float *o)
{
    for (int i = 0; i < hd; i++)
        o[i] = 0.0f;
    for (int j = 0; j < n; j++) {
        const float *vr = v0 + (size_t)j * hd;
        for (int i = 0; i < hd; i++)
            o[i] += s[j] * vr[i];
    }
    for (int i = 0; i < hd; i++)
        o[i] *= inv;
}

static void att_task(void *arg, int task, int tid)
{
    struct att_job *jb = arg;
    const struct attn_args *a = jb->a;
    (void)tid;
    int h = task % a->n_heads;
    int blk = jb->nblocks - 1 - task / a->n_heads;
    int hd = a->head_dim, rep = a->n_heads / a->n_kv_heads, g = h / rep;
    int vec = hd % 8 == 0 && hd <= 256;
    float *s = par_scratch(2, sizeof(float) * (size_t)(a->q_off + a->T));
    int t0 = blk * ATT_QB;
    int t1 = t0 + ATT_QB < a->T ? t0 + ATT_QB : a->T;
    const float *kbase = a->k + (size_t)g * a->kv_cap * hd;
    const float *vbase = a->v + (size_t)g * a->kv_cap * hd;
    for (int t = t0; t < t1; t++) {
        int p = a->q_off + t;
        int lo = 0;
        if (a->window > 0 && p - a->window + 1 > 0)
            lo = p - a->window + 1;
        int n = p - lo + 1;
        const float *q = a->q + ((size_t)t * a->n_heads + h) * hd;
        float *o = a->out + ((size_t)t * a->n_heads + h) * hd;
        const float *k0 = kbase + (size_t)lo * hd, *v0 = vbase + (size_t)lo * hd;
        if (vec)
            scores_vec(q, k0, hd, n, a->scale, s);
        else
            scores_scalar(q, k0, hd, n, a->scale, s);
        float inv = 1.0f / softmax_unnorm(s, n);
        if (vec)
            pv_vec(s, v0, hd, n, inv, o);
        else
            pv_scalar(s, v0, hd, n, inv, o);
    }
}

/* ---- blocked path (T >= ATT_BLOCKED_MIN_T, head_dim a multiple of 32) ----------------- */

#define ATT_TR 4 /* query rows per score tile */

struct blk_job {
    const struct attn_args *a;
    float *kt; /* [n_kv_heads][head_dim][kt_stride]: keys transposed, zero-padded */
    int kt_stride, nkeys, nblocks;
};

static void transpose_task(void *arg, int g, int tid)
{
    struct blk_job *jb = arg;
    const struct attn_args *a = jb->a;
    (void)tid;
    int hd = a->head_dim;
    const float *k = a->k + (size_t)g * a->kv_cap * hd;
    float *kt = jb->kt + (size_t)g * hd * jb->kt_stride;
    for (int j0 = 0; j0 < jb->kt_stride; j0 += 64) {
        int j1 = j0 + 64 < jb->nkeys ? j0 + 64 : jb->nkeys;
        for (int d = 0; d < hd; d++) {
            float *dst = kt + (size_t)d * jb->kt_stride;
            int j = j0;
            for (; j < j1; j++)
                dst[j] = k[(size_t)j * hd + d];
            for (; j < j0 + 64 && j < jb->kt_stride; j++)
                dst[j] = 0.0f;
        }
    }
}

static inline int row_lo(const struct attn_args *a, int p)
{
    return a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
}

/* S[r][j - lo] = scale * q_r . k_j for rows r < nr of the tile and keys lo .. lo + n - 1 (n
 * rounded up to 16; the padding is computed against zero keys and never used). */
static void tile_scores(const struct blk_job *jb, const float *q[ATT_TR], int nr, const float *kt,
                        int lo, int n, float *S, int ss)
{
    int hd = jb->a->head_dim;
    float scale = jb->a->scale;
    for (int j = 0; j < n; j += 16) {
        v8f c00 = { 0 }, c01 = { 0 }, c10 = { 0 }, c11 = { 0 };
        v8f c20 = { 0 }, c21 = { 0 }, c30 = { 0 }, c31 = { 0 };
        const float *kp = kt + lo + j;
        for (int d = 0; d < hd; d++) {
            v8f k0 = v8_loadu(kp), k1 = v8_loadu(kp + 8);
            float q0 = q[0][d], q1 = q[1][d], q2 = q[2][d], q3 = q[3][d];
            c00 += q0 * k0;
            c01 += q0 * k1;
            c10 += q1 * k0;
            c11 += q1 * k1;
            c20 += q2 * k0;
            c21 += q2 * k1;
            c30 += q3 * k0;
            c31 += q3 * k1;
            kp += jb->kt_stride;
        }
        v8f vs = v8_set1(scale);
        v8_storeu(S + j, c00 * vs);
        v8_storeu(S + j + 8, c01 * vs);
        if (nr > 1) {
            v8_storeu(S + ss + j, c10 * vs);
            v8_storeu(S + ss + j + 8, c11 * vs);
        }
        if (nr > 2) {
            v8_storeu(S + 2 * ss + j, c20 * vs);
            v8_storeu(S + 2 * ss + j + 8, c21 * vs);
        }
        if (nr > 3) {
            v8_storeu(S + 3 * ss + j, c30 * vs);
            v8_storeu(S + 3 * ss + j + 8, c31 * vs);
        }
    }
}

/* o_r = sum_j P[r][j] v_{lo+j} for two rows at a time, 32 dims (4 vectors) per pass. */
static void tile_pv(const float *P0, const float *P1, const float *v, int hd, int n, float *o0,
                    float *o1)
{
    for (int d = 0; d < hd; d += 32) {
        v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
        v8f b0 = { 0 }, b1 = { 0 }, b2 = { 0 }, b3 = { 0 };
        const float *vp = v + d;
        for (int j = 0; j < n; j++, vp += hd) {
            v8f v0 = v8_loadu(vp), v1 = v8_loadu(vp + 8), v2 = v8_loadu(vp + 16),
                v3 = v8_loadu(vp + 24);
            float p = P0[j], r = P1 ? P1[j] : 0.0f;
            a0 += p * v0;
            a1 += p * v1;
            a2 += p * v2;
            a3 += p * v3;
            b0 += r * v0;
            b1 += r * v1;
            b2 += r * v2;
            b3 += r * v3;
        }
        v8_storeu(o0 + d, a0);
        v8_storeu(o0 + d + 8, a1);
        v8_storeu(o0 + d + 16, a2);
        v8_storeu(o0 + d + 24, a3);
        if (o1) {
            v8_storeu(o1 + d, b0);
            v8_storeu(o1 + d + 8, b1);
            v8_storeu(o1 + d + 16, b2);
            v8_storeu(o1 + d + 24, b3);
        }
    }
}

static void blk_task(void *arg, int task, int tid)
{
    struct blk_job *jb = arg;
    const struct attn_args *a = jb->a;
    (void)tid;
    int h = task % a->n_heads;
    int blk = jb->nblocks - 1 - task / a->n_heads;
    int hd = a->head_dim, g = h / (a->n_heads / a->n_kv_heads);
    const float *kt = jb->kt + (size_t)g * hd * jb->kt_stride;
    const float *vbase = a->v + (size_t)g * a->kv_cap * hd;
    int ss = jb->kt_stride + 16;
    float *S = par_scratch(2, sizeof(float) * (size_t)ATT_TR * ss);
    int t0 = blk * ATT_QB, t1 = t0 + ATT_QB < a->T ? t0 + ATT_QB : a->T;
    for (int r0 = t0; r0 < t1; r0 += ATT_TR) {
        int nr = t1 - r0 < ATT_TR ? t1 - r0 : ATT_TR;
        const float *q[ATT_TR];
        for (int r = 0; r < ATT_TR; r++)
            q[r] = a->q + ((size_t)(r0 + (r < nr ? r : 0)) * a->n_heads + h) * hd;
        int lo = row_lo(a, a->q_off + r0), hi = a->q_off + r0 + nr - 1;
        int n = hi - lo + 1;
        tile_scores(jb, q, nr, kt, lo, (n + 15) & ~15, S, ss);
        float inv[ATT_TR];
        for (int r = 0; r < nr; r++) {
            int p = a->q_off + r0 + r, l = row_lo(a, p);
            float *Sr = S + (size_t)r * ss;
            /* Keys outside this row's [l, p] get weight 0. */
            for (int j = 0; j < l - lo; j++)
                Sr[j] = 0.0f;
            inv[r] = 1.0f / softmax_unnorm(Sr + (l - lo), p - l + 1);
            for (int j = p - lo + 1; j < n; j++)
                Sr[j] = 0.0f;
        }
        for (int r = 0; r < nr; r += 2) {
            float *o0 = a->out + ((size_t)(r0 + r) * a->n_heads + h) * hd;
            float *o1 = r + 1 < nr ? a->out + ((size_t)(r0 + r + 1) * a->n_heads + h) * hd : NULL;
            tile_pv(S + (size_t)r * ss, o1 ? S + (size_t)(r + 1) * ss : NULL,
                    vbase + (size_t)lo * hd, hd, n, o0, o1);
            for (int d = 0; d < hd; d++)
                o0[d] *= inv[r];
            if (o1)
                for (int d = 0; d < hd; d++)
                    o1[d] *= inv[r + 1];
        }
    }
}

void attention_cpu(const struct attn_args *a)
{
    int hd = a->head_dim;
    if (a->T >= ATT_BLOCKED_MIN_T && hd % 32 == 0 && hd <= 256) {
        struct blk_job jb;
        jb.a = a;
        jb.nkeys = a->q_off + a->T;
        /* A tile reads up to 15 keys past its last one: pad by 16 zero columns. */
        jb.kt_stride = ((jb.nkeys + 15) & ~15) + 16;
        jb.nblocks = (a->T + ATT_QB - 1) / ATT_QB;
        jb.kt = malloc(sizeof(float) * (size_t)a->n_kv_heads * hd * jb.kt_stride);
        if (jb.kt) {
            par_for(a->n_kv_heads, transpose_task, &jb);
            par_for(jb.nblocks * a->n_heads, blk_task, &jb);
            free(jb.kt);
            return;
        }
        /* Out of memory for the transposed keys: fall through to the row path. */
    }
    struct att_job j = { a, (a->T + ATT_QB - 1) / ATT_QB };
    par_for(j.nblocks * a->n_heads, att_task, &j);
}

int attention(enum kern_impl impl, const struct attn_args *a)
{
    if (!a || a->T < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0 ||
        a->n_heads % a->n_kv_heads || a->q_off < 0 || a->window < 0 ||
        (long)a->q_off + a->T > a->kv_cap)
        return -EINVAL;
    if (a->T == 0)
        return 0;
    if (!a->q || !a->k || !a->v || !a->out)
        return -EINVAL;
    if ((long)((a->T + ATT_QB - 1) / ATT_QB) * a->n_heads > PAR_MAX_TASKS)
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        attention_ref(a);
        return 0;
    case KERN_IMPL_CPU:
        attention_cpu(a);
        return 0;
    case KERN_IMPL_CUDA:
        /* Host pointers: upload, run, download (kernels/cuda.h); -ENOSYS without a
         * usable CUDA backend. */
        return cuda_host_attention(a);
    default:
        return -ENOSYS;
    }
}
