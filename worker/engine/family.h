/*
 * family: the decoder families the engine loads, as one table. Every place that differs between
 * EXAONE-4, Llama, Mistral, Qwen2, Qwen3 and MiniCPM reads its row here (config parsing, the
 * CPU and GPU forward passes, loading and saving, the AWQ / SmoothQuant fold rules, healing);
 * nothing else tests the model type. docs/models.md describes the families.
 *
 * Norm placement: a layer has up to four RMSNorms around its two branches, each one of the
 * model_norm slots (worker/engine/model.h) or -1 when the family has none there:
 *   pre_attn   on the residual before q/k/v (pre-norm: input_layernorm)
 *   post_attn  on o_proj's output before the residual add (EXAONE-4: post_attention_layernorm)
 *   pre_mlp    on the residual before gate/up (pre-norm: post_attention_layernorm)
 *   post_mlp   on down_proj's output before the add (EXAONE-4: post_feedforward_layernorm)
 * The tensor called post_attention_layernorm is therefore a post-norm in EXAONE-4 and the MLP's
 * input norm in the pre-norm families; the slot keeps the tensor's name.
 */
#ifndef EXAQ_FAMILY_H
#define EXAQ_FAMILY_H

enum family_id {
    FAMILY_EXAONE4 = 0,
    FAMILY_LLAMA,
    FAMILY_MISTRAL,
    FAMILY_QWEN2,
    FAMILY_QWEN3,
    FAMILY_MINICPM,
    FAMILY_COUNT,
};

/* How sliding-window attention is configured. */
enum family_window {
    FAMILY_WINDOW_NONE = 0, /* no sliding window (llama, minicpm) */
    FAMILY_WINDOW_EXAONE4,  /* layer_types or sliding_window_pattern; global layers are NoPE */
    FAMILY_WINDOW_ALL,      /* sliding_window (or null) on every layer (mistral) */
    FAMILY_WINDOW_QWEN,     /* use_sliding_window + max_window_layers, or layer_types (qwen2/3) */
};

/* The legal smoothing folds (AWQ, SmoothQuant): a per-channel scale s on a linear's input can
 * be moved into the op that produces that input (divide) when nothing else reads it. */
enum family_fold_src {
    FAMILY_FOLD_NONE = 0,
    FAMILY_FOLD_NORM, /* the RMSNorm weight of a norm slot */
    FAMILY_FOLD_LIN,  /* the output rows (and bias) of a linear */
};

struct family_fold {
    enum family_fold_src src;
    int norm; /* FAMILY_FOLD_NORM: the model_norm slot */
    int lin;  /* FAMILY_FOLD_LIN: the model_lin that produces the input */
};

struct family {
    enum family_id id;
    const char *model_type;   /* config.json "model_type" */
    const char *architecture; /* transformers' class, for docs and errors */
    int norm_pre_attn, norm_post_attn, norm_pre_mlp, norm_post_mlp; /* model_norm slot or -1 */
    int qk_norm;          /* per-head RMSNorm on q and k before RoPE (q_norm, k_norm) */
    unsigned bias_always; /* (1u << model_lin) linears that always carry a bias (qwen2 q/k/v) */
    int attention_bias;   /* honours config attention_bias: biases on q/k/v/o */
    int head_dim_default; /* head_dim when absent: 0 = hidden_size / num_attention_heads */
    int tie_default;      /* tie_word_embeddings when absent */
    enum family_window window;
    int layer_types_key; /* config.json may carry layer_types (written back after pruning) */
    int sliding_default; /* sliding_window when the key is absent (0 = none) */
    int mup_scales;      /* MiniCPM: scale_emb, scale_depth / sqrt(layers), dim_model_base */
    /* Fold sources of the four input groups (model_hook_point order: QKV_IN, O_IN, GATEUP_IN,
     * DOWN_IN). EXAONE-4 has none for q/k/v and gate/up: their inputs are residual sums. */
    struct family_fold fold_qkv, fold_o, fold_gateup, fold_down;
};

/* The row for a model_type, or NULL. */
const struct family *family_find(const char *model_type);
const struct family *family_get(enum family_id id);
/* "exaone4, llama, ..." for error messages (static string). */
const char *family_list(void);

#endif
