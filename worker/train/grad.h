/* grad: a trainable fp32 copy of a model, with its forward and backward pass.
 *
 * EXAONE-4 first (the family of tests/data/tiny-exaone4; docs/training.md "Gradients"). The
 * forward matches the engine's exaone4 forward (worker/engine/model_fwd.c) in fp32; the backward
 * is built from the ops of kernels/backward.h. Activations are recomputed layer by layer: only
 * each layer's input is kept, so memory grows with T * hidden * layers, not with every
 * intermediate. Owns the weights and gradients; the engine's loader reads the checkpoint
 * (model_load, then every tensor copied out as fp32) and its writer saves one (model_save).
 * A tnet is not reentrant (it owns scratch buffers): one per thread.
 */
#ifndef EXAQ_TRAIN_GRAD_H
#define EXAQ_TRAIN_GRAD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kern.h"
#include "worker/engine/config.h"

/* A trainable fp32 copy of a model (EXAONE-4 first: the family of tests/data/tiny-exaone4). */
struct tnet;

struct tparam {
    const char *name; /* HF tensor name, e.g. "model.layers.0.mlp.up_proj.weight" */
    float *w;         /* fp32 master weights, n values, row-major as in the checkpoint */
    float *g;         /* gradient accumulator, n values */
    size_t n;
    int rows, cols; /* 2-D shape (cols = 1 for vectors) */
};

/* Reads config.json + safetensors (BF16/F32) from model_dir. NULL on failure with *err set
   (malloc'd; the caller frees it). Free the result with tnet_free. */
struct tnet *tnet_load(const char *model_dir, char **err);
void tnet_free(struct tnet *t);

/* The trainable parameters: model.embed_tokens.weight, then per layer q/k/v/o_proj, q_norm,
   k_norm, post_attention_layernorm, gate/up/down_proj, post_feedforward_layernorm, then
   model.norm.weight and (untied only) lm_head.weight. A tied lm_head is not a separate
   parameter (its gradient lands in model.embed_tokens.weight). Returned pointers are
   borrowed. */
int tnet_nparams(const struct tnet *t);
struct tparam *tnet_param(struct tnet *t, int i);
int tnet_vocab(const struct tnet *t);

struct tloss {
    const uint8_t
        *mask; /* T values: 1 = this position's next-token target counts; NULL = all T-1 */
    const float
        *teacher_logp; /* NULL, or T x V teacher log-probabilities at temperature `temperature` */
    float temperature; /* for KL: student logits / temperature */
    float ce_weight;   /* loss = ce_weight * CE + (1 - ce_weight) * temperature^2 * KL(teacher ||
                          student);   1 when teacher_logp is NULL */
};

/* Forward and backward of one sequence ids[0..T): loss averaged over counted positions; ADDS the
   gradients into every param's g (callers zero them). Recomputes activations layer by layer so
   memory stays bounded (keep only each layer's input; recompute inside during backward).
   L may be NULL (plain CE over all T-1 positions). As in transformers (nn.Embedding with
   padding_idx = pad_token_id), a position holding the pad token adds no lookup gradient to
   its embedding row. Returns 0, or -1 with *err set. */
int tnet_loss_grad(struct tnet *t, const int32_t *ids, int T, const struct tloss *L, double *loss,
                   char **err);

/* Forward only: logits (T x V, fp32) for eval and teacher use. Returns 0, or -1 with *err set. */
int tnet_logits(struct tnet *t, const int32_t *ids, int T, float *logits, char **err);

void tnet_zero_grad(struct tnet *t);

/* Superset of the first interface: */
/* The parameter named `name`, or NULL. */
struct tparam *tnet_param_find(struct tnet *t, const char *name);
/* The model's configuration (borrowed; the layer count is the checkpoint's). */
const struct config *tnet_config(const struct tnet *t);
/* Kernels for the forward and backward ops: KERN_IMPL_CPU (default, the fast variants) or
   KERN_IMPL_REF (the plain-loop references; tests). */
void tnet_set_impl(struct tnet *t, enum kern_impl impl);

/* Write the weights as an HF checkpoint (BF16 safetensors + config.json and the tokenizer files
   copied from src_dir, which must hold a model of the same shape: normally the directory the
   net was loaded from). out_dir is created if missing. Every linear is written dense (a
   quantized source's codes are replaced). Returns 0, or -1 with *err set. */
int tnet_save(const struct tnet *t, const char *src_dir, const char *out_dir, char **err);

#endif
