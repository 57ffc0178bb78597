/*
 * model_internal: what model.c and model_fwd.c share and nobody else uses (the scratch
 * buffers of a model and the error helper).
 */
#ifndef EXAQ_MODEL_INTERNAL_H
#define EXAQ_MODEL_INTERNAL_H

#include "worker/engine/model.h"

/* Scratch for a forward of up to `rows` rows; grown on demand, freed with the model. */
struct model_ws {
    int rows;
    float *q, *k, *v, *att, *o, *g, *u, *kl, *vl;
    float *xn;     /* a pre-norm's output / the scaled head input, [rows][hidden] */
    float *x;      /* residual stream for model_forward / model_nll */
    float *logits; /* head output chunk */
    size_t logits_cap;
    float *xq; /* quantized activations of one linear's input */
    size_t xq_cap;
};

void model__ws_reserve(struct model *m, int rows);
void model__ws_free(struct model *m);

/* model_nll on the device-resident copy (worker/engine/model_gpu.c): 0 or an error, or -ENOSYS when
 * the model cannot run there (activation quantization, bf16 emulation, no backend); the caller
 * then takes the op-by-op path. */
int model__gpu_nll(struct model *m, const int32_t *ids, int n, float *nll, char **err);
/* Frees the device-resident copy; called by model_free and every edit of the model. */
void model__gpu_drop(struct model *m);

#endif
