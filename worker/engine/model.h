/*
 * model: the CPU engine of the decoder families (worker/engine/family.h: EXAONE-4, Llama,
 * Mistral, Qwen2, Qwen3, MiniCPM): weights (mmapped BF16/F16/F32, or replaced in memory), the KV
 * cache, the forward pass of spec sections 1.3-1.5 in fp32, and the layer-level API the
 * calibration, pruning and healing stages build on.
 *
 * Forward pass per layer (x is the residual stream, [T][hidden], updated in place), with the
 * family row deciding each bracketed step:
 *   a = [pre_attn norm](x); q,k,v = a.Wq^T [+ bq], ...; [per-head RMSNorm on q and k (q_norm,
 *   k_norm)] BEFORE RoPE; NeoX RoPE with the config's rope (llama3 scaling) on every layer
 *   (EXAONE-4 with a sliding window: only on sliding layers); k,v appended to the cache; causal
 *   (+ sliding window) GQA attention, scale head_dim^-0.5; o = attn.Wo^T [+ bo];
 *   x += res_scale * [post_attn norm](o); m = [pre_mlp norm](x);
 *   x += res_scale * [post_mlp norm](down(silu(m.Wg^T) * m.Wu^T)).
 * Embeddings are multiplied by embed_scale; then final norm, division by head_div and the tied
 * (or separate lm_head.weight) head. EXAONE-4 has no input_layernorm (post-norm); the pre-norm
 * families have no post_feedforward_layernorm.
 *
 * Consumers:
 *   eval:        model_load, model_forward (all or last logits, KV cache), model_nll,
 *                model_generate_greedy, kernels/lse.h for log-softmax.
 *   calibration: model_embed, then per layer model_layer_forward with hooks that receive the
 *                inputs of every linear as fp32 [T][in] blocks (q/k/v share one, gate/up share
 *                one), model_linear_get_f32 / model_linear_set_f32 / model_linear_replace to
 *                swap weights, and a re-run of the layer for the next layer's inputs.
 *   pruning:     MODEL_HOOK_LAYER_OUT (hidden after each layer, before the final norm),
 *                MODEL_HOOK_MLP_OUT (down_proj output before a post-norm and res_scale),
 *                model_keep_layers, model_norm (editable fp32 norm weights), model_save.
 *
 * Ownership and threads: a model is not reentrant (it owns scratch buffers); use one per thread
 * or serialise calls. Kernels run on the process-wide pool of kernels/par.h. Functions return 0
 * or a negative errno-style code and set *err (a new string, free() it) when err is not NULL.
 */
#ifndef EXAQ_MODEL_H
#define EXAQ_MODEL_H

#include <stdint.h>

#include "kernels/kern.h"
#include "kernels/matmul.h"
#include "worker/engine/config.h"
#include "worker/engine/quant.h"
#include "common/st.h"

enum model_lin {
    MODEL_LIN_Q = 0,
    MODEL_LIN_K,
    MODEL_LIN_V,
    MODEL_LIN_O,
    MODEL_LIN_GATE,
    MODEL_LIN_UP,
    MODEL_LIN_DOWN,
    MODEL_LIN_COUNT,
};

enum model_norm {
    MODEL_NORM_Q = 0,     /* self_attn.q_norm, [head_dim] */
    MODEL_NORM_K,         /* self_attn.k_norm, [head_dim] */
    MODEL_NORM_POST_ATTN, /* post_attention_layernorm, [hidden]: EXAONE-4's post-norm of the
                             attention branch, the MLP's input norm in pre-norm families */
    MODEL_NORM_POST_FFN,  /* post_feedforward_layernorm, [hidden] (EXAONE-4 only) */
    MODEL_NORM_INPUT,     /* input_layernorm, [hidden] (pre-norm families only) */
    MODEL_NORM_FINAL,     /* model.norm, [hidden]; the layer index is ignored */
    MODEL_NORM_COUNT,
};
#define MODEL_NORM_LAYER_COUNT MODEL_NORM_FINAL /* per-layer slots; absent ones are NULL */

enum model_hook_point {
    MODEL_HOOK_QKV_IN = 0, /* [T][hidden]: the input of q_proj, k_proj and v_proj (after
                              the pre-norm in pre-norm families) */
    MODEL_HOOK_O_IN,       /* [T][heads*head_dim]: attention output, the input of o_proj */
    MODEL_HOOK_ATTN_OUT,   /* [T][hidden]: o_proj output before post_attention_layernorm */
    MODEL_HOOK_GATEUP_IN,  /* [T][hidden]: input of gate/up_proj (EXAONE-4: the residual after
                              attention; pre-norm: post_attention_layernorm of it) */
    MODEL_HOOK_DOWN_IN,    /* [T][intermediate]: silu(gate) * up, the input of down_proj */
    MODEL_HOOK_MLP_OUT,    /* [T][hidden]: down_proj output before post_feedforward_layernorm */
    MODEL_HOOK_LAYER_OUT,  /* [T][hidden]: the residual stream after the layer */
    MODEL_HOOK_COUNT,
};

/* Called during a layer forward with a borrowed fp32 [T][n] block (valid only during the call;
 * copy what you keep). A non-zero return aborts the forward and is returned by it. */
struct model_hooks {
    int (*fn)(void *arg, int layer, enum model_hook_point pt, const float *x, int T, int n);
    void *arg;
    unsigned mask; /* bits (1u << point) to call; 0 means every point */
};

struct model_layer {
    struct linear lin[MODEL_LIN_COUNT];
    /* The quantized form of each linear (owned), or NULL when it is dense. lin[] then holds its
     * exact fp32 dequantization, and activations are quantized as quant->act says. */
    struct qweight *quant[MODEL_LIN_COUNT];
    float *norm[MODEL_NORM_LAYER_COUNT]; /* fp32, owned; NULL where the family has none */
    float *bias[MODEL_LIN_COUNT];        /* fp32 [out], owned; NULL without a bias */
    int rope;                            /* applies RoPE (config_layer_rope) */
    int window;                          /* sliding window, 0 = full causal */
    int src_index;                       /* index of this layer in the loaded checkpoint */
};

struct model_opts {
    int nthreads;        /* > 0: set the kernel pool size (process-wide); 0: leave it */
    enum kern_impl impl; /* kernels to use; KERN_IMPL_CPU unless testing the reference */
    int emulate_bf16;    /* round activations to bf16 at the reference's rounding points
                            (spec 1.3), to compare against transformers' bf16 outputs */
};

struct model_ws; /* scratch buffers */

struct model {
    struct config cfg; /* edits through config_* then model_* helpers keep it consistent */
    char *dir;         /* directory it was loaded from */
    struct st_dir *st; /* mmapped weights that dense linears may borrow */
    enum kern_impl impl;
    int emulate_bf16;
    int n_layers;
    struct model_layer *layers;
    struct linear embed;   /* [vocab][hidden] */
    struct linear lm_head; /* [vocab][hidden]; shares embed's data when tied */
    int tied;
    float *final_norm; /* [hidden], owned */
    float *inv_freq;   /* [head_dim / 2] RoPE inverse frequencies */
    float eps, attn_scale;
    /* MiniCPM's scalings (1 elsewhere): embeddings times embed_scale, each branch times
     * res_scale before its residual add, final hidden states divided by head_div. */
    float embed_scale, res_scale, head_div;
    struct model_ws *ws;
    /* KERN_IMPL_CUDA: the device-resident copy model_nll uses (worker/engine/model_gpu.c), built on
     * first use and dropped by every edit of the weights; gpu_off: this model cannot use it. */
    struct model_gpu *gpu;
    int gpu_off;
};

/* Loads config.json and the safetensors weights of a model directory. opts may be NULL. */
int model_load(struct model **out, const char *dir, const struct model_opts *opts, char **err);
void model_free(struct model *m);

/* "self_attn.q_proj", ..., "mlp.down_proj". */
const char *model_lin_name(enum model_lin w);

/* ---- KV cache ---------------------------------------------------------------------------- */

struct model_kv {
    int n_layers, n_kv_heads, head_dim, cap;
    int *len;     /* positions filled, per layer */
    float *k, *v; /* [n_layers][n_kv_heads][cap][head_dim], after k_norm and RoPE */
};

/* A cache for up to cap positions of m's current layer count. */
struct model_kv *model_kv_new(const struct model *m, int cap);
void model_kv_free(struct model_kv *kv);
void model_kv_reset(struct model_kv *kv);

/* ---- forward ----------------------------------------------------------------------------- */

/* x[T][hidden] = embed_tokens[ids] (times MiniCPM's scale_emb). -EINVAL for an id outside [0,
 * vocab). */
int model_embed(const struct model *m, const int32_t *ids, int T, float *x, char **err);

/*
 * Runs layer l on x[T][hidden] in place. Rows are at positions pos0 .. pos0+T-1. With kv, the
 * layer's keys and values are written at pos0 (which must be <= the positions already cached
 * for that layer; writing below the end truncates) and attention sees the cached positions
 * before pos0; without kv, the block attends only to itself. hooks may be NULL.
 */
int model_layer_forward(struct model *m, int l, float *x, int T, int pos0, struct model_kv *kv,
                        const struct model_hooks *hooks, char **err);
/* model.norm on x[T][hidden] in place. */
int model_final_norm(struct model *m, float *x, int T, char **err);
/* logits[T][vocab] = (xn / head_div) . lm_head^T (xn already final-normed). */
int model_lm_head(struct model *m, const float *xn, int T, float *logits, char **err);

enum model_logits {
    MODEL_LOGITS_NONE = 0,
    MODEL_LOGITS_LAST, /* logits has vocab floats: the last row only */
    MODEL_LOGITS_ALL,  /* logits has T*vocab floats */
};

/*
 * Embeds ids and runs every layer, the final norm and the head. With kv the block starts at the
 * cache's current length (prefill when empty, decode after); without kv at position 0.
 */
int model_forward(struct model *m, const int32_t *ids, int T, struct model_kv *kv,
                  enum model_logits which, float *logits, const struct model_hooks *hooks,
                  char **err);

/* In place: logits[rows][vocab] -> log-probabilities (logits - logsumexp per row). */
int model_log_softmax(struct model *m, float *logits, int rows, char **err);

/* Next-token negative log-likelihoods of one independent sequence: nll[t] = -log p(ids[t+1] |
 * ids[0..t]) for t = 0..n-2, computed from position 0 without a cache; the head runs in row
 * chunks so memory stays O(chunk * vocab). */
int model_nll(struct model *m, const int32_t *ids, int n, float *nll, char **err);

/* Greedy decoding: prefill the prompt, then n_new tokens by argmax (lowest id on ties) through
 * the KV cache. out receives the n_new generated ids. */
int model_generate_greedy(struct model *m, const int32_t *prompt, int n_prompt, int n_new,
                          int32_t *out, char **err);

/* ---- weights ----------------------------------------------------------------------------- */

/* The layer's linear (borrowed; any format). */
struct linear *model_linear(struct model *m, int l, enum model_lin w);
/* Writes the linear's weights as fp32 [out][in]. */
int model_linear_get_f32(const struct model *m, int l, enum model_lin w, float *out, char **err);
/* Replaces the weights by a copy of fp32 [out][in] values, stored as store (KERN_F32 exact,
 * KERN_BF16 / KERN_F16 rounded to nearest even). */
int model_linear_set_f32(struct model *m, int l, enum model_lin w, const float *wts,
                         enum kern_dtype store, char **err);
/* Replaces the linear by *take (same out/in), whose memory the model now owns; *take is
 * zeroed. The future quantized formats arrive this way. */
int model_linear_replace(struct model *m, int l, enum model_lin w, struct linear *take, char **err);
/* Makes the linear quantized: takes *take (same out/in; zeroed afterwards), computes with its
 * exact fp32 dequantization and its activation scheme, and model_save writes it in the
 * compressed-tensors format. */
int model_linear_set_quant(struct model *m, int l, enum model_lin w, struct qweight *take,
                           char **err);
/* The linear's quantized form, or NULL when dense. */
const struct qweight *model_linear_quant(const struct model *m, int l, enum model_lin w);
/* Number of quantized linears. */
int model_quantized_count(const struct model *m);
/* "model.layers.<l>.self_attn.q_proj" etc. into buf. */
void model_module_name(int l, enum model_lin w, char *buf, size_t n);

/* The linear's editable fp32 bias and its length (*n), or NULL when it has none. */
float *model_bias(struct model *m, int l, enum model_lin w, int *n);

/* Editable fp32 norm weights and their length (*n); l is ignored for MODEL_NORM_FINAL. NULL
 * for a slot the family does not have (worker/engine/family.h). */
float *model_norm(struct model *m, int l, enum model_norm which, int *n);

/* Keeps layers keep[0..n-1] (current indices, increasing) and drops the rest, updating the
 * config (num_hidden_layers, layer_types) as spec section 5 requires. KV caches made before
 * are invalid afterwards. */
int model_keep_layers(struct model *m, const int *keep, int n, char **err);

struct model_save_opts {
    uint64_t max_shard_bytes; /* 0: one model.safetensors */
    enum st_dtype dtype;      /* float tensors are written in this dtype (ST_BF16 default) */
    int copy_aux;             /* copy tokenizer / generation config files from the source dir */
};

/* Writes config.json and the current weights (layers renumbered 0..n-1) into dir, which must
 * exist. opts may be NULL (BF16, unsharded, aux files copied). */
int model_save(const struct model *m, const char *dir, const struct model_save_opts *opts,
               char **err);

#endif
