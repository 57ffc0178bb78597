/*
 * rope: NeoX (half-split) rotary position embedding, in place on x[T][nheads][head_dim], row t
 * at position pos0 + t (transformers rotate_half / apply_rotary_pos_emb):
 *   angle_i = float(pos) * inv_freq[i]   (fp32 product, as torch's fp32 matmul of K = 1)
 *   x'[i]      = x[i] * cos_i - x[i + d/2] * sin_i
 *   x'[i+d/2]  = x[i + d/2] * cos_i + x[i] * sin_i,        i < d/2
 * cos/sin are evaluated in double from the fp32 angle and rounded to fp32, or to bf16 when
 * cs_bf16 != 0 (transformers casts them to the bf16 activation dtype). inv_freq has d/2 entries
 * (llama3 scaling is applied by the caller when it builds them, see worker/engine/model.c).
 *
 * Variants (dispatch: rope()): rope_ref (plain loops), rope_cpu (default: one cos/sin table
 * per row shared by all heads, threaded over rows).
 */
#ifndef EXAQ_ROPE_H
#define EXAQ_ROPE_H

#include "kernels/kern.h"

int rope(enum kern_impl impl, float *x, int T, int nheads, int head_dim, int pos0,
         const float *inv_freq, int cs_bf16);
void rope_ref(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
              int cs_bf16);
void rope_cpu(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
              int cs_bf16);

#endif
