/*
 * optim: what the trainer does with gradients once tnet_loss_grad has added them up.
 *
 *   AdamW (Loshchilov & Hutter; torch.optim.AdamW's update): decoupled weight decay
 *   w -= lr*wd*w, then m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2, and
 *   w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps), t the 1-based step.
 *   Global-norm clipping as torch.nn.utils.clip_grad_norm_: every gradient scaled by
 *   min(1, max_norm / (norm + 1e-6)).
 *   The schedule: linear warmup over `warmup` steps to lr, then a cosine to lr*min_ratio at
 *   step `total`.
 *   Gradient accumulation: the trainer adds the micro-batches' gradients and scales the sum by
 *   1/accum (optim_scale) before clipping.
 *
 * The moments and master weights are fp32 arrays the caller owns (the checkpoint saves them);
 * the update arithmetic is in double per element. tests/unit/train/test_optim.c checks all of
 * this against PyTorch (tests/tools/make_optim_goldens.py).
 */
#ifndef EXAQ_TRAIN_OPTIM_H
#define EXAQ_TRAIN_OPTIM_H

#include <stddef.h>

struct adamw {
    double beta1, beta2, eps;
    double weight_decay; /* decoupled; a tensor with decay 0 passes wd_scale 0 to adamw_step */
};

/* One AdamW update of n weights at 1-based step t with learning rate lr. wd_scale multiplies
 * the weight decay (1: decay this tensor, 0: not; torch's per-group weight_decay). */
void adamw_step(const struct adamw *o, long t, double lr, double wd_scale, float *w, const float *g,
                float *m, float *v, size_t n);

/* The sum of squares of n floats (double accumulation). */
double optim_sumsq(const float *g, size_t n);
/* Multiplies n floats by s. */
void optim_scale(float *g, size_t n, double s);
/* The clip factor for a global norm: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0. */
double optim_clip_factor(double norm, double max_norm);

/* The learning rate of 0-based step `step` of `total`: (step+1)/warmup * lr during warmup,
 * then lr * (min_ratio + (1-min_ratio) * (1+cos(pi*p))/2), p = (step-warmup)/(total-warmup). */
double optim_lr(long step, long total, long warmup, double lr, double min_ratio);

#endif
