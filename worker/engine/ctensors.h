/*
 * ctensors: the compressed-tensors on-disk formats (pack-quantized
 * W4A16/W4A16_ASYM/W8A16/W8A16_ASYM, int-quantized W8A8, float-quantized FP8/FP8_DYNAMIC) as vLLM
 * ~0.14 and transformers + compressed-tensors load them (exaone4-and-formats spec, sections 3 and
 * 4).
 *
 * Reading turns a Linear's tensors into a `struct qweight`; writing lists the tensors of a
 * qweight (names, dtypes, shapes, packed bytes) for the safetensors writer, and builds the
 * portable `quantization_config` block (the field set common to compressed-tensors 0.11-0.13,
 * without scale_dtype/zp_dtype). Only the tensors a loader expects are written: no zero point
 * for symmetric schemes, no g_idx unless act-order "group", no input_scale for dynamic
 * activations (vLLM rejects unknown names).
 *
 * Bit layout (pack_to_int32): u = q + 2^(bits-1); element 8c+j of a row (4-bit) sits in bits
 * [4j, 4j+4) of word c (8-bit: 4 values per word); zero points are packed the same way along the
 * output dimension.
 */
#ifndef EXAQ_CTENSORS_H
#define EXAQ_CTENSORS_H

#include <stdint.h>

#include "worker/engine/quant.h"
#include "common/st.h"

struct cJSON;

/* The parts of a quantization_config the engine needs. */
struct ctensors_cfg {
    enum qscheme scheme;
    int group_size;      /* > 0 group, -1 channel, 0 tensor */
    bool actorder_group; /* weight_g_idx tensors present */
    char **ignore;       /* names and "re:" patterns */
    int nignore;
};

/* Parses config.json's "quantization_config" object (qc). 0, or -EINVAL with *err set (a new
 * string) naming what is unsupported. */
int ctensors_cfg_parse(const struct cJSON *qc, struct ctensors_cfg *out, char **err);
void ctensors_cfg_release(struct ctensors_cfg *c);
/* Whether module name (e.g. "model.layers.3.mlp.down_proj") is in the ignore list (exact names
 * and "re:" POSIX extended regexes, matched against the whole name). */
bool ctensors_ignored(const struct ctensors_cfg *c, const char *module);

/* Builds a quantization_config (compact JSON, new string) for weights quantized with scheme w
 * (group size and flags from w) and the given ignore list. */
char *ctensors_cfg_json(const struct qweight *w, const char *const *ignore, int nignore);

/* Decodes the tensors of module prefix (e.g. "model.layers.0.self_attn.q_proj") from st into
 * *qw (initialised here) for a [out][in] Linear. 0, or a negative code with *err set. */
int ctensors_read(const struct st_dir *st, const char *prefix, const struct ctensors_cfg *c,
                  int out, int in, struct qweight *qw, char **err);

/* The tensors a qweight is stored as. Appends up to CTENSORS_MAX_TENSORS entries to ts (names
 * are new strings the caller frees; .user points at qw, and ctensors_fill() produces the data)
 * and returns how many. */
#define CTENSORS_MAX_TENSORS 5
int ctensors_tensors(const struct qweight *qw, const char *prefix, struct st_wtensor *ts);
/* Fill callback for st_write_*: t must come from ctensors_tensors(). */
int ctensors_fill(const struct st_wtensor *t, void *dst, size_t nbytes, char **err);

/* Packing (exposed for the byte-level tests). dst has rows*ceil(cols*bits/32) words. */
void ctensors_pack(const int8_t *q, int rows, int cols, int bits, uint32_t *dst);
void ctensors_unpack(const uint32_t *src, int rows, int cols, int bits, int8_t *q);
/* Along dim 0: zp [rows][cols] -> [ceil(rows*bits/32)][cols]. */
void ctensors_pack_dim0(const int8_t *zp, int rows, int cols, int bits, uint32_t *dst);
void ctensors_unpack_dim0(const uint32_t *src, int rows, int cols, int bits, int8_t *zp);

#endif
