/*
 * rope_ref: the specification of NeoX rotary embedding (plain loops).
 */
#include "kernels/rope.h"

#include <math.h>

void rope_ref(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
              int cs_bf16)
{
    int half = head_dim / 2;
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < nheads; h++) {
            float *v = x + ((size_t)t * nheads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float ang = (float)(pos0 + t) * inv_freq[i];
                float c = (float)cos((double)ang), s = (float)sin((double)ang);
                if (cs_bf16) {
                    c = kern_round_bf16(c);
                    s = kern_round_bf16(s);
                }
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}
