/*
 * config: a decoder's config.json (model_type exaone4, llama, mistral, qwen2, qwen3 or minicpm;
 * worker/engine/family.h), parsed from either transformers style into one struct, plus the
 * raw JSON document so later stages can edit fields and write config.json back.
 *
 * Styles (spec sections 1.5 and 4):
 *   CONFIG_STYLE_V4  transformers 4.54-4.57: rope_theta + rope_scaling, torch_dtype (and often
 *                    dtype too);
 *   CONFIG_STYLE_V5  transformers 5: rope_parameters {rope_type, rope_theta, factor, ...} (flat,
 *                    or one entry per layer type, which must then agree), dtype.
 * layer_types is taken as written or derived with transformers' default rule
 * ("sliding_attention" iff (i+1) % sliding_window_pattern != 0; sliding_window null makes the
 * pattern 0, which transformers turns into ZeroDivisionError and we into a clear error).
 * Optional fields take the defaults of transformers' Exaone4Config (including sliding_window
 * 4096 and pattern 4 when those keys are absent); the dimensions are required.
 *
 * Edits (config_set_*, config_delete) change only the raw document; config_reparse()
 * re-derives and re-validates the struct. Keys are top-level names or dotted paths
 * ("rope_scaling.factor"). config_print() writes JSON the way transformers does
 * (json.dumps(indent=2, sort_keys=True) + "\n", ASCII-escaped), keeping unknown fields and the
 * original spelling of numbers (1000000.0, 1e-05).
 */
#ifndef EXAQ_CONFIG_H
#define EXAQ_CONFIG_H

#include <stddef.h>

struct cJSON;
struct family;

enum config_style {
    CONFIG_STYLE_V4 = 0,
    CONFIG_STYLE_V5 = 1,
};

enum config_layer_type {
    CONFIG_LAYER_FULL = 0,    /* "full_attention" */
    CONFIG_LAYER_SLIDING = 1, /* "sliding_attention" */
};

enum config_rope_type {
    CONFIG_ROPE_DEFAULT = 0,
    CONFIG_ROPE_LLAMA3 = 1,
};

struct config_rope {
    enum config_rope_type type;
    double theta;
    /* llama3 only: */
    double factor, low_freq_factor, high_freq_factor;
    int original_max_position_embeddings;
};

struct config {
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    struct config_rope rope;
    int sliding_window;                  /* 0 when null */
    int sliding_window_pattern;          /* 0 when null (or not used) */
    enum config_layer_type *layer_types; /* num_hidden_layers entries, owned */
    int layer_types_explicit;            /* 1: the file lists them */
    int tie_word_embeddings;
    char dtype[32]; /* "bfloat16", "float16", "float32", or "" when absent */
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when null, absent or a list */
    enum config_style style;
    const struct family *fam; /* the model_type's row of worker/engine/family.h */
    unsigned bias_mask;       /* (1u << model_lin) linears with a bias tensor */
    /* MiniCPM (family mup_scales); 1, sqrt(num_hidden_layers) and hidden_size elsewhere, which
     * makes all three scalings the identity: */
    double scale_emb, scale_depth, dim_model_base;
    struct cJSON *raw; /* the document; owned */
    char *label;       /* file name used in error messages */
};

/* Reads and parses a config.json. On failure c is released and *err set. */
int config_load(struct config *c, const char *path, char **err);
/* Parses JSON text; label names it in errors ("config.json"). */
int config_parse(struct config *c, const char *json, size_t len, const char *label, char **err);
void config_release(struct config *c);
/* Deep copy (raw included). */
void config_copy(struct config *dst, const struct config *src);
/* Re-derives the struct from c->raw after edits; on failure the struct keeps its old values. */
int config_reparse(struct config *c, char **err);

/* Raw edits (no validation until config_reparse). Return 0, -EINVAL for a bad key path. */
int config_set_int(struct config *c, const char *key, long long v);
/* Written as Python's repr(); -EINVAL for NaN and infinities. */
int config_set_float(struct config *c, const char *key, double v);
int config_set_string(struct config *c, const char *key, const char *v);
int config_set_null(struct config *c, const char *key);
/* Any JSON value given as text, e.g. "[\"full_attention\"]". */
int config_set_json(struct config *c, const char *key, const char *json);
/* 0, or -ENOENT when the key is absent. */
int config_delete(struct config *c, const char *key);

/* Rewrites the raw document in the given style (rope fields and dtype keys), then reparses. */
int config_convert_style(struct config *c, enum config_style style, char **err);
/* Keeps layers keep[0..n-1] (original indices, in order): num_hidden_layers and, where the
 * family has the key, an explicit layer_types of the kept entries (spec section 5); MiniCPM's
 * scale_depth is rescaled so that scale_depth / sqrt(num_hidden_layers) stays the same. Then
 * reparses. */
int config_keep_layers(struct config *c, const int *keep, int n, char **err);

/* JSON text as transformers writes it; new string (free()). */
char *config_print(const struct config *c);
/* Atomically writes config_print() to path. */
int config_write(const struct config *c, const char *path, char **err);
/* Python repr() of a float (shortest round-trip, "1e-05", "1000000.0"); buf >= 32 bytes. */
void config_format_float(double v, char *buf, size_t len);

/* Whether layer l applies RoPE: every layer when sliding_window is null, else only sliding
 * layers (global layers are NoPE), as transformers' Exaone4Attention. */
int config_layer_rope(const struct config *c, int l);
/* Sliding window of layer l for the attention mask, 0 for full causal attention. */
int config_layer_window(const struct config *c, int l);
/* The head_dim/2 RoPE inverse frequencies in fp32, computed as transformers does (default and
 * llama3 rope types, spec section 1.4). */
void config_rope_inv_freq(const struct config *c, float *inv);

#endif
