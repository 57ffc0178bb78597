/*
 * synth: synthetic checkpoints for tests and benchmarks (EXAONE-4 by default; the Llama,
 * Qwen3 and MiniCPM real shapes of synth_opts_shape): config.json in either
 * transformers style and seeded random BF16 weights with the real tensor names, shapes and file
 * layout (sharded above a size), optionally a hybrid sliding-window variant, a copied
 * tokenizer.json and a generation_config.json.
 *
 * Weights are N(0, std^2) (std 0.02 by default; an Irwin-Hall sum of four uniforms, which is
 * plenty for timing and plumbing tests), norm weights 1 + N(0, std^2). Every tensor's stream is
 * seeded from (seed, tensor name), so the bytes do not depend on the write order or sharding.
 * The numbers are meaningless: use synthetic models for shapes, speed and equivalence tests,
 * never for quality.
 */
#ifndef EXAQ_SYNTH_H
#define EXAQ_SYNTH_H

#include <stdint.h>

#include "worker/engine/config.h"
#include "worker/engine/family.h"

struct synth_opts {
    enum family_id family; /* FAMILY_EXAONE4 (default), FAMILY_LLAMA, _QWEN3 or _MINICPM */
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int vocab_size;
    int max_position_embeddings;
    int tie_word_embeddings;
    enum config_rope_type rope_type; /* llama3 with rope_factor, low/high 1 and 4, original 8192 */
    double rope_theta;
    double rope_factor; /* llama3 factor: 16 (EXAONE-4.0-1.2B), 32 (Llama-3.2-1B) */
    double rms_norm_eps;
    double scale_emb, scale_depth, dim_model_base; /* FAMILY_MINICPM only */
    int sliding_window;                            /* 0: null, every layer full attention */
    int sliding_window_pattern; /* with a window: layer i is global iff (i+1) % pattern == 0 */
    int explicit_layer_types;   /* write layer_types (default 1) */
    enum config_style style;    /* CONFIG_STYLE_V4 (default) or CONFIG_STYLE_V5 */
    uint64_t seed;
    float std;
    uint64_t max_shard_bytes;   /* 0: a single model.safetensors */
    const char *tokenizer_path; /* copied to tokenizer.json when not NULL */
};

/* The EXAONE-4.0-1.2B shape (spec section 1.1): 30 layers, hidden 2048, 32/8 heads of 64, MLP
 * 4096, vocab 102400, tied, llama3 rope theta 1e6, max_pos 65536; seed 1, std 0.02, v4 style,
 * shards of 2 GB. */
void synth_opts_default(struct synth_opts *o);

/* The real shapes for benchmarks, from the released config.json files (docs/models.md):
 *   llama-3.2-1b  16 layers, hidden 2048, 32/8 heads of 64, MLP 8192, vocab 128256, tied,
 *                 llama3 rope theta 500000 factor 32, max_pos 131072;
 *   qwen3-1.7b    28 layers, hidden 2048, 16/8 heads of 128 (QK-norm), MLP 6144, vocab 151936,
 *                 tied, theta 1e6, eps 1e-6, max_pos 40960;
 *   minicpm-2b    40 layers, hidden 2304, 36/36 heads of 64, MLP 5760, vocab 122753, tied,
 *                 theta 10000, scale_emb 12, scale_depth 1.4, dim_model_base 256, max_pos 4096.
 * Starts from synth_opts_default (seed, std, shards). -ENOENT for another name. */
int synth_opts_shape(struct synth_opts *o, const char *shape);

/* Writes config.json, generation_config.json, the weights and the optional tokenizer into dir
 * (created when missing). Returns 0 or a negative errno-style code with *err set. */
int synth_write(const struct synth_opts *o, const char *dir, char **err);

#endif
