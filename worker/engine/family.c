/*
 * family: the table of decoder families (worker/engine/family.h). Each row is what transformers'
 * modeling and configuration code of that model type does (docs/models.md lists the sources).
 */
#include "worker/engine/family.h"

#include <stddef.h>
#include <string.h>

#include "worker/engine/model.h"

#define BIT(w) (1u << (w))
#define NONE                                                                                       \
    {                                                                                              \
        FAMILY_FOLD_NONE, -1, -1                                                                   \
    }
#define FROM_NORM(n)                                                                               \
    {                                                                                              \
        FAMILY_FOLD_NORM, (n), -1                                                                  \
    }
#define FROM_LIN(w)                                                                                \
    {                                                                                              \
        FAMILY_FOLD_LIN, -1, (w)                                                                   \
    }

/* The pre-norm decoder of Llama and the families derived from it. */
#define PRE_NORM                                                                                   \
    .norm_pre_attn = MODEL_NORM_INPUT, .norm_post_attn = -1, .norm_pre_mlp = MODEL_NORM_POST_ATTN, \
    .norm_post_mlp = -1, .fold_qkv = FROM_NORM(MODEL_NORM_INPUT), .fold_o = FROM_LIN(MODEL_LIN_V), \
    .fold_gateup = FROM_NORM(MODEL_NORM_POST_ATTN), .fold_down = FROM_LIN(MODEL_LIN_UP)

static const struct family families[FAMILY_COUNT] = {
    [FAMILY_EXAONE4] = {
        .id = FAMILY_EXAONE4,
        .model_type = "exaone4",
        .architecture = "Exaone4ForCausalLM",
        /* Post-norm: q/k/v and gate/up read residual sums, so only v->o and up->down fold. */
        .norm_pre_attn = -1,
        .norm_post_attn = MODEL_NORM_POST_ATTN,
        .norm_pre_mlp = -1,
        .norm_post_mlp = MODEL_NORM_POST_FFN,
        .qk_norm = 1,
        .tie_default = 0,
        .window = FAMILY_WINDOW_EXAONE4,
        .layer_types_key = 1,
        .sliding_default = 4096,
        .fold_qkv = NONE,
        .fold_o = FROM_LIN(MODEL_LIN_V),
        .fold_gateup = NONE,
        .fold_down = FROM_LIN(MODEL_LIN_UP),
    },
    [FAMILY_LLAMA] = {
        .id = FAMILY_LLAMA,
        .model_type = "llama",
        .architecture = "LlamaForCausalLM",
        PRE_NORM,
        .attention_bias = 1,
        .tie_default = 0,
        .window = FAMILY_WINDOW_NONE,
    },
    [FAMILY_MISTRAL] = {
        .id = FAMILY_MISTRAL,
        .model_type = "mistral",
        .architecture = "MistralForCausalLM",
        PRE_NORM,
        .tie_default = 0,
        .window = FAMILY_WINDOW_ALL,
        .sliding_default = 4096,
    },
    [FAMILY_QWEN2] = {
        .id = FAMILY_QWEN2,
        .model_type = "qwen2",
        .architecture = "Qwen2ForCausalLM",
        PRE_NORM,
        .bias_always = BIT(MODEL_LIN_Q) | BIT(MODEL_LIN_K) | BIT(MODEL_LIN_V),
        .tie_default = 0,
        .window = FAMILY_WINDOW_QWEN,
        .layer_types_key = 1,
        .sliding_default = 4096,
    },
    [FAMILY_QWEN3] = {
        .id = FAMILY_QWEN3,
        .model_type = "qwen3",
        .architecture = "Qwen3ForCausalLM",
        PRE_NORM,
        .qk_norm = 1,
        .attention_bias = 1,
        .head_dim_default = 128,
        .tie_default = 0,
        .window = FAMILY_WINDOW_QWEN,
        .layer_types_key = 1,
        .sliding_default = 4096,
    },
    [FAMILY_MINICPM] = {
        .id = FAMILY_MINICPM,
        .model_type = "minicpm",
        .architecture = "MiniCPMForCausalLM",
        PRE_NORM,
        .tie_default = 1,
        .window = FAMILY_WINDOW_NONE,
        .mup_scales = 1,
    },
};

const struct family *family_find(const char *model_type)
{
    for (int i = 0; model_type && i < FAMILY_COUNT; i++)
        if (strcmp(families[i].model_type, model_type) == 0)
            return &families[i];
    return NULL;
}

const struct family *family_get(enum family_id id)
{
    return (int)id >= 0 && id < FAMILY_COUNT ? &families[id] : NULL;
}

const char *family_list(void)
{
    return "exaone4, llama, mistral, qwen2, qwen3, minicpm";
}
