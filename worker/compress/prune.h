/*
 * prune: depth pruning by ShortGPT block influence (spec 3.4), the choice of layers to remove,
 * and the provenance record `exaq_prune.json` that lets `heal` find the unpruned teacher.
 *
 * Block influence of layer i is computed on the pre-norm residual stream: h_0 is the embedding
 * output and h_{i+1} the residual after layer i (before the final norm, which the HF
 * `hidden_states[-1]` quirk would otherwise fold into the last layer's score):
 *     BI_i = mean over calibration tokens t of (1 - cos(h_i[t], h_{i+1}[t])),
 * a cosine with a zero vector counts as 0.5, like ShortGPT's nan -> 0.5. The n layers with the
 * smallest BI are removed in one shot (ties: the lower index goes first).
 *
 * This module never writes model weights; the stage (stage_prune.c) calls model_keep_layers and
 * model_save. Functions return 0 or a negative errno-style code and set *err (a new string, free
 * it) when err is not NULL.
 */
#ifndef EXAQ_PRUNE_H
#define EXAQ_PRUNE_H

#include <stdint.h>

#include "worker/engine/model.h"
#include "common/st.h"

/* Name of the provenance record written next to a pruned model's config.json. */
#define PRUNE_RECORD_FILE "exaq_prune.json"

/* Progress and cancellation: called after each unit of work with done <= total; a non-zero
 * return stops the computation, which then returns -ECANCELED. */
typedef int (*prune_tick_fn)(void *arg, int done, int total);

/*
 * Block influence of every layer of m over n calibration windows of seq_len tokens each
 * (ids[n][seq_len], each window an independent sequence from position 0). bi has m->n_layers
 * entries. tick (may be NULL) is called once per window.
 */
int prune_block_influence(struct model *m, const int32_t *ids, int n, int seq_len, double *bi,
                          prune_tick_fn tick, void *arg, char **err);

/* The n_remove layers of smallest bi (ties: lower index first), written to removed[] in
 * increasing order. 0, or -EINVAL unless 1 <= n_remove < n_layers. */
int prune_select_smallest(const double *bi, int n_layers, int n_remove, int *removed, char **err);

/*
 * The kept layers (increasing) of an n_layers model after removing removed[0..n_removed-1]
 * (any order). *n_kept receives their count; keep must hold n_layers entries. Errors
 * (-EINVAL): an index out of range, a repeated index, no layer removed, every layer removed.
 */
int prune_keep_from_removed(int n_layers, const int *removed, int n_removed, int *keep, int *n_kept,
                            char **err);

/* The safetensors dtype that stores m's weights without a conversion (its embedding's dtype). */
enum st_dtype prune_model_st_dtype(const struct model *m);

/* The contents of exaq_prune.json. Indices refer to the source (teacher) model's layers. */
struct prune_record {
    char *source; /* absolute path of the unpruned model dir (owned) */
    int n_source; /* its num_hidden_layers */
    int *kept;    /* [n_kept] increasing (owned) */
    int n_kept;
    int *removed; /* [n_removed] increasing (owned) */
    int n_removed;
    char *metric; /* "block_influence" or "explicit" (owned) */
    double *bi;   /* [n_source] block influence, or NULL when not computed (owned) */
};

/* Frees the owned members; the struct is left zeroed. NULL members are fine. */
void prune_record_release(struct prune_record *r);

/*
 * Writes dir/exaq_prune.json atomically. extra_json (may be NULL) is a JSON object text whose
 * members are added at the top level (e.g. {"heal": {...}}).
 */
int prune_record_write(const char *dir, const struct prune_record *r, const char *extra_json,
                       char **err);

/* Reads and validates dir/exaq_prune.json into r (released on failure). -ENOENT when the file
 * does not exist (with a message that says heal must follow prune). */
int prune_record_read(const char *dir, struct prune_record *r, char **err);

/*
 * Records that a model already described by prev (its kept layers are prev->kept) is pruned
 * again, keeping its layers keep[0..n_keep-1] (indices into prev->kept): out describes the
 * result relative to prev's source, so the teacher stays the original unpruned model. out->bi
 * and out->metric are left NULL.
 */
void prune_record_compose(const struct prune_record *prev, const int *keep, int n_keep,
                          struct prune_record *out);

#endif
