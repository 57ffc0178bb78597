/*
 * smoothquant: SmoothQuant's per-channel smoothing scales (algorithms spec 3.1) for the exact
 * folds of EXAONE-4 (worker/compress/awq.h: up_proj -> down_proj and v_proj -> o_proj only).
 *
 * s_j = max|X_j|^alpha / max|W_j|^(1-alpha) moves activation outliers of down_proj's and
 * o_proj's inputs into their weights before W8A8 quantization. q/k/v and gate/up get no
 * smoothing in EXAONE-4: they read the raw residual stream, and no op of the layer could absorb
 * 1/s exactly (spec 2.2). The module only computes s; awq_fold_weights() / awq_fold_apply()
 * apply it, and the quantize stage quantizes afterwards.
 */
#ifndef EXAQ_SMOOTHQUANT_H
#define EXAQ_SMOOTHQUANT_H

#include "worker/compress/awq.h"

/*
 * Smoothing scales for the legal fold f. act_absmax[f->next_in] is max |x| of each input column
 * of the next linear over the calibration tokens; W is the next linear's weight
 * [out][f->next_in]. Per scale index (GQA: over the query-head columns that read one KV
 * channel) act = max of act_absmax and w = max |W| over rows and those columns, then
 * s = max(act^alpha / w^(1-alpha), 1e-5) (mit-han-lab/smoothquant `smooth_ln_fcs`). A channel
 * whose act or w is 0, or whose s is not finite, gets s = 1 (the reference would divide by zero
 * or blow the previous op's row up by 1e5). alpha in [0, 1]. Writes s[f->n]; returns the number
 * of channels forced to 1, or -EINVAL with *err set.
 */
int smoothquant_scales(const struct awq_fold *f, const float *act_absmax, const float *W, int out,
                       double alpha, float *s, char **err);

#endif
