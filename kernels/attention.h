/*
 * attention: causal (optionally sliding-window) scaled dot-product attention with grouped KV
 * heads, over queries that already had q-norm and RoPE applied and a KV cache that already
 * holds this block's keys and values.
 *
 * Query row t is at key index p = q_off + t. Key j is visible to it iff j <= p and, when
 * window > 0, j > p - window (transformers' sliding_window_overlay). Query head h reads KV head
 * h / (n_heads / n_kv_heads) (repeat_kv). out = softmax(q.k^T * scale) . v, the softmax in fp32
 * (double in the reference).
 *
 * Variants (dispatch: attention()):
 *   attention_ref   plain loops, double scores and sums: the spec;
 *   attention_cpu   (default) tasks over (head, 16-query block); prefill-sized blocks with
 *                   head_dim % 32 == 0 use transposed keys and 4x16 score tiles, decode-sized
 *                   ones a per-row path (head_dim % 8 == 0 vectorised, others scalar).
 */
#ifndef EXAQ_ATTENTION_H
#define EXAQ_ATTENTION_H

#include "kernels/kern.h"

struct attn_args {
    int T; /* query rows */
    int n_heads, n_kv_heads, head_dim;
    const float *q; /* [T][n_heads][head_dim] */
    /* Keys and values: [n_kv_heads][kv_cap][head_dim]; key j of KV head g starts at
     * k + ((size_t)g * kv_cap + j) * head_dim. Keys 0 .. q_off + T - 1 must be filled. */
    const float *k, *v;
    int kv_cap;
    int q_off;
    int window; /* 0: none */
    float scale;
    float *out; /* [T][n_heads][head_dim]; must not alias q, k or v */
};

/* Returns 0, -EINVAL for inconsistent arguments (including q_off + T > kv_cap), -ENOSYS. */
int attention(enum kern_impl impl, const struct attn_args *a);
void attention_ref(const struct attn_args *a);
void attention_cpu(const struct attn_args *a);

#endif
