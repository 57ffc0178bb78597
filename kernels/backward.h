/*
 * backward: the gradients of the engine's ops, for training (worker/train/grad.c).
 *
 * Convention: every gradient output is ACCUMULATED (+=), activation gradients and parameter
 * gradients alike, so the callers zero what must start from zero and the branches of a residual
 * stream or a shared weight (the tied head and the embedding, GQA's shared KV heads) add up by
 * themselves. The one exception is rope_bwd, which transforms dx in place (RoPE is a rotation:
 * its backward rotates by the negative angle). Every op recomputes what it needs from the
 * forward's inputs (no saved softmax), so the caller keeps only inputs.
 *
 * Ops (forward definition: the matching kernels/ header):
 *   embedding_bwd  dE[ids[t]] += dx[t]                         (x = E[ids])
 *   linear_bwd     dx += dy . W,  dW += dy^T . x               (y = x . W^T, W [out][in]);
 *                  the tied head is linear_bwd with W = E, whose dW adds to embedding_bwd's
 *   rmsnorm_bwd    y = w * x * r, r = (mean(x^2) + eps)^-1/2, per row of n (also QK-norm: rows
 *                  = T * heads, n = head_dim): dx += r * (w dy) - r^3 / n * x * sum(w dy x),
 *                  dw += sum over rows of dy * x * r
 *   rope_bwd       NeoX RoPE (kernels/rope.h, fp32 cos/sin): dx rotated by -angle, in place
 *   attention_bwd  causal / sliding-window GQA attention (kernels/attention.h's arguments):
 *                  P = softmax(S), S = scale q.k^T; dv += P^T dO, dS = P * (dO.v^T - rowsum),
 *                  dq += scale dS.k, dk += scale dS^T.q (dk, dv in the [kv head][cap][hd] layout
 *                  of the keys and values)
 *   swiglu_bwd     h = silu(g) * u: dg += dh * u * s * (1 + g (1 - s)), s = sigmoid(g);
 *                  du += dh * silu(g)
 *   xent_bwd       loss = sum over rows with targets[r] >= 0 of lse(x_r) - x_r[targets[r]];
 *                  dlogits += scale * (softmax(x_r) - onehot(targets[r]))
 *   kl_bwd         loss = sum over rows with on[r] (on NULL: all) of KL(pt || ps), pt =
 *                  exp(teacher_logp_r), ps = softmax(x_r / temperature);
 *                  dlogits += scale * (mass * ps - pt) / temperature, mass = sum pt (1 for a
 *                  full teacher; less for a truncated top-k one, whose holes are -inf)
 * The losses come back as the unscaled sums in double; the caller divides and weights.
 *
 * Variants (dispatch: the function without suffix):
 *   *_ref  plain loops, double accumulation, one thread: the spec (kernels/ref/backward_ref.c);
 *   *_cpu  (default) kernels/cpu/backward_cpu.c: linear_bwd through the packed GEMM of
 *          kernels/gemm.h (dx = dy . W and dW = dy^T . x as two GEMMs with beta 1), the others
 *          threaded over rows (attention_bwd over KV heads, so dk/dv have one writer each).
 * KERN_IMPL_CUDA: -ENOSYS (no CUDA backward yet).
 * Dispatch returns 0, -EINVAL for bad shapes or missing buffers, -ENOSYS.
 */
#ifndef EXAQ_BACKWARD_H
#define EXAQ_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/attention.h"
#include "kernels/kern.h"

int embedding_bwd(enum kern_impl impl, float *dE, const float *dx, const int32_t *ids, int T,
                  int H);
void embedding_bwd_ref(float *dE, const float *dx, const int32_t *ids, int T, int H);

/* dx (may be NULL: not wanted) [T][in], dW (may be NULL) [out][in], dy [T][out], x [T][in],
 * W [out][in] fp32. */
int linear_bwd(enum kern_impl impl, float *dx, float *dW, const float *dy, const float *x,
               const float *W, int T, int in, int out);
void linear_bwd_ref(float *dx, float *dW, const float *dy, const float *x, const float *W, int T,
                    int in, int out);
void linear_bwd_cpu(float *dx, float *dW, const float *dy, const float *x, const float *W, int T,
                    int in, int out);

/* dx (may be NULL) and x [rows][n]; dw (may be NULL) and w [n] (w NULL: weight 1). */
int rmsnorm_bwd(enum kern_impl impl, float *dx, float *dw, const float *dy, const float *x,
                const float *w, int rows, int n, float eps);
void rmsnorm_bwd_ref(float *dx, float *dw, const float *dy, const float *x, const float *w,
                     int rows, int n, float eps);
void rmsnorm_bwd_cpu(float *dx, float *dw, const float *dy, const float *x, const float *w,
                     int rows, int n, float eps);

/* dx [T][nheads][head_dim], in place; head_dim even. */
int rope_bwd(enum kern_impl impl, float *dx, int T, int nheads, int head_dim, int pos0,
             const float *inv_freq);
void rope_bwd_ref(float *dx, int T, int nheads, int head_dim, int pos0, const float *inv_freq);

/* a: the forward's arguments (a->out is not read); dout [T][n_heads][head_dim]; dq like q;
 * dk, dv like k and v (keys 0 .. q_off + T - 1 receive gradient). */
int attention_bwd(enum kern_impl impl, const struct attn_args *a, const float *dout, float *dq,
                  float *dk, float *dv);
void attention_bwd_ref(const struct attn_args *a, const float *dout, float *dq, float *dk,
                       float *dv);
void attention_bwd_cpu(const struct attn_args *a, const float *dout, float *dq, float *dk,
                       float *dv);

int swiglu_bwd(enum kern_impl impl, float *dg, float *du, const float *dh, const float *g,
               const float *u, size_t n);
void swiglu_bwd_ref(float *dg, float *du, const float *dh, const float *g, const float *u,
                    size_t n);
void swiglu_bwd_cpu(float *dg, float *du, const float *dh, const float *g, const float *u,
                    size_t n);

/* logits, dlogits [rows][V]; targets [rows] (< 0: the row does not count). */
int xent_bwd(enum kern_impl impl, double *loss, float *dlogits, const float *logits,
             const int32_t *targets, int rows, int V, float scale);
double xent_bwd_ref(float *dlogits, const float *logits, const int32_t *targets, int rows, int V,
                    float scale);
double xent_bwd_cpu(float *dlogits, const float *logits, const int32_t *targets, int rows, int V,
                    float scale);

/* teacher_logp [rows][V] (log-probabilities at the same temperature); on [rows] or NULL. */
int kl_bwd(enum kern_impl impl, double *loss, float *dlogits, const float *logits,
           const float *teacher_logp, const uint8_t *on, int rows, int V, float temperature,
           float scale);
double kl_bwd_ref(float *dlogits, const float *logits, const float *teacher_logp, const uint8_t *on,
                  int rows, int V, float temperature, float scale);
double kl_bwd_cpu(float *dlogits, const float *logits, const float *teacher_logp, const uint8_t *on,
                  int rows, int V, float temperature, float scale);

#endif
