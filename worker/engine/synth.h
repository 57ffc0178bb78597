/*
 * synth: synthetic EXAONE-4 checkpoints for tests and benchmarks: config.json in either
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

struct synth_opts {
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int vocab_size;
    int max_position_embeddings;
    int tie_word_embeddings;
    enum config_rope_type rope_type; /* llama3 uses the 1.2B factors (16, 1, 4, 8192) */
    double rope_theta;
    int sliding_window;         /* 0: null, every layer full attention */
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

/* Writes config.json, generation_config.json, the weights and the optional tokenizer into dir
 * (created when missing). Returns 0 or a negative errno-style code with *err set. */
int synth_write(const struct synth_opts *o, const char *dir, char **err);

#endif
