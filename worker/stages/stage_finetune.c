/*
 * stage_finetune: the `finetune` stage: `method: full` (every weight), `norms` (the RMSNorm
 * weights, the one-dimensional parameters) or `lora` (low-rank adapters on the `targets`
 * linears, merged into the saved weights). The driver is stage_train_run (stage_distill.c);
 * the loss is the cross-entropy of the data (chat data: assistant turns only).
 *
 * LoRA on top of the full-weight gradient: with W = W0 + s*B*A (A: rank x in, B: out x rank,
 * s = alpha/rank; W0 frozen), tnet_loss_grad gives dL/dW and
 *     dB = s * dW * A^T,   dA = s * B^T * dW.
 * A starts uniform in +-1/sqrt(in) from the seed, B at zero (the first step starts from W0).
 * Dropout (p > 0) drops input features of the adapter path: each step draws a mask over A's
 * columns (kept ones scaled by 1/(1-p)), the same for every token of the step; the full-weight
 * gradient does not allow per-token masks. The merged weights are written without dropout.
 */
#include "worker/stages/stage.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/train/data.h"
#include "worker/train/grad.h"
#include "worker/train/loop.h"

struct lora_t {
    struct tparam *p; /* the target: p->w is W (materialized), p->g is dW */
    float *w0;        /* frozen W0, out x in */
    float *a, *b;     /* rank x in, out x rank */
    float *ga, *gb;
    float *keep; /* this step's column scale of A (dropout), in values */
    int out, in;
};

struct lora {
    struct lora_t *t;
    int n, rank;
    double scale, dropout;
};

/* W = W0 + s * B * (A . keep) for every target; rng NULL: the final merge, no dropout. */
static int lora_materialize(void *arg, uint64_t *rng, char **err)
{
    struct lora *L = arg;
    (void)err;
    for (int k = 0; k < L->n; k++) {
        struct lora_t *t = &L->t[k];
        for (int j = 0; j < t->in; j++) {
            if (rng && L->dropout > 0)
                t->keep[j] = (double)(tdata_rand(rng) >> 11) * 0x1.0p-53 < L->dropout
                                 ? 0.0f
                                 : (float)(1.0 / (1.0 - L->dropout));
            else
                t->keep[j] = 1.0f;
        }
        for (int o = 0; o < t->out; o++) {
            float *w = t->p->w + (size_t)o * t->in;
            const float *w0 = t->w0 + (size_t)o * t->in, *bo = t->b + (size_t)o * L->rank;
            for (int j = 0; j < t->in; j++)
                w[j] = w0[j];
            for (int r = 0; r < L->rank; r++) {
                float c = (float)(L->scale * bo[r]);
                if (c == 0)
                    continue;
                const float *ar = t->a + (size_t)r * t->in;
                for (int j = 0; j < t->in; j++)
                    w[j] += c * ar[j] * t->keep[j];
            }
        }
    }
    return 0;
}

/* dB = s * dW * A'^T, dA = s * (B^T * dW) . keep. */
static void lora_grads(void *arg)
{
    struct lora *L = arg;
    for (int k = 0; k < L->n; k++) {
        struct lora_t *t = &L->t[k];
        memset(t->ga, 0, sizeof(float) * (size_t)L->rank * t->in);
        for (int o = 0; o < t->out; o++) {
            const float *dw = t->p->g + (size_t)o * t->in;
            const float *bo = t->b + (size_t)o * L->rank;
            for (int r = 0; r < L->rank; r++) {
                const float *ar = t->a + (size_t)r * t->in;
                double s = 0;
                for (int j = 0; j < t->in; j++)
                    s += (double)dw[j] * ar[j] * t->keep[j];
                t->gb[(size_t)o * L->rank + r] = (float)(L->scale * s);
                float c = (float)(L->scale * bo[r]);
                if (c == 0)
                    continue;
                float *gar = t->ga + (size_t)r * t->in;
                for (int j = 0; j < t->in; j++)
                    gar[j] += c * dw[j];
            }
        }
        for (int r = 0; r < L->rank; r++)
            for (int j = 0; j < t->in; j++)
                t->ga[(size_t)r * t->in + j] *= t->keep[j];
    }
}

static void lora_release(void *arg)
{
    struct lora *L = arg;
    for (int k = 0; k < L->n; k++) {
        free(L->t[k].w0);
        free(L->t[k].a);
        free(L->t[k].b);
        free(L->t[k].ga);
        free(L->t[k].gb);
        free(L->t[k].keep);
    }
    free(L->t);
    free(L);
}

static int finetune_setup(struct stage_ctx *ctx, const cJSON *spec, struct tnet *net,
                          struct tslot **slots, int *nslots, struct tloop_hooks *h, void **state)
{
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(spec, "method");
    int np = tnet_nparams(net), k = 0;
    if (!cJSON_IsString(jm))
        return stage_fail(ctx, STAGE_ERR_ERROR, "finetune: spec field 'method' must be a string");
    const char *method = jm->valuestring;
    if (!strcmp(method, "full") || !strcmp(method, "norms")) {
        int norms = !strcmp(method, "norms");
        *slots = xcalloc((size_t)np, sizeof(**slots));
        for (int i = 0; i < np; i++) {
            struct tparam *tp = tnet_param(net, i);
            if (norms && tp->cols > 1)
                continue;
            struct tslot *s = &(*slots)[k++];
            snprintf(s->name, sizeof(s->name), "%s", tp->name);
            s->w = tp->w;
            s->g = tp->g;
            s->n = tp->n;
            s->wd = tp->cols > 1 ? 1.0 : 0.0;
        }
        *nslots = k;
        if (!k)
            return stage_fail(ctx, STAGE_ERR_ERROR, "finetune: the model has no norm weights");
        return 0;
    }
    if (strcmp(method, "lora"))
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "finetune: unknown method '%s' (use lora, full or norms)", method);
    const cJSON *jr = cJSON_GetObjectItemCaseSensitive(spec, "rank"),
                *ja = cJSON_GetObjectItemCaseSensitive(spec, "alpha"),
                *jd = cJSON_GetObjectItemCaseSensitive(spec, "dropout"),
                *jt = cJSON_GetObjectItemCaseSensitive(spec, "targets"),
                *js = cJSON_GetObjectItemCaseSensitive(spec, "seed"), *p;
    if (!cJSON_IsNumber(jr) || !cJSON_IsNumber(ja) || !cJSON_IsNumber(jd) || !cJSON_IsArray(jt) ||
        !cJSON_IsNumber(js))
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "finetune: lora needs the spec fields rank, alpha, dropout, targets");
    struct lora *L = xcalloc(1, sizeof(*L));
    *state = L;
    L->rank = (int)jr->valuedouble;
    L->scale = ja->valuedouble / L->rank;
    L->dropout = jd->valuedouble;
    L->t = xcalloc((size_t)np, sizeof(*L->t));
    uint64_t rng = (uint64_t)js->valuedouble * 0x9E3779B97F4A7C15ULL + 1;
    for (int i = 0; i < np; i++) {
        struct tparam *tp = tnet_param(net, i);
        int hit = 0;
        if (tp->cols <= 1 || strstr(tp->name, "embed_tokens") || strstr(tp->name, "lm_head"))
            continue;
        cJSON_ArrayForEach(p, jt) hit |=
            cJSON_IsString(p) && tloop_pattern_match(p->valuestring, tp->name);
        if (!hit)
            continue;
        struct lora_t *t = &L->t[L->n++];
        t->p = tp;
        t->out = tp->rows;
        t->in = tp->cols;
        t->w0 = xmalloc(sizeof(float) * tp->n);
        memcpy(t->w0, tp->w, sizeof(float) * tp->n);
        t->a = xmalloc(sizeof(float) * (size_t)L->rank * t->in);
        t->b = xcalloc((size_t)t->out * L->rank, sizeof(float));
        t->ga = xcalloc((size_t)L->rank * t->in, sizeof(float));
        t->gb = xcalloc((size_t)t->out * L->rank, sizeof(float));
        t->keep = xmalloc(sizeof(float) * (size_t)t->in);
        double bound = 1.0 / sqrt((double)t->in);
        for (size_t j = 0; j < (size_t)L->rank * t->in; j++)
            t->a[j] = (float)(((double)(tdata_rand(&rng) >> 11) * 0x1.0p-53 * 2 - 1) * bound);
    }
    if (!L->n)
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "finetune: no linear matches 'targets' (e.g. q_proj, up_proj)");
    *slots = xcalloc((size_t)L->n * 2, sizeof(**slots));
    for (int i = 0; i < L->n; i++) {
        struct lora_t *t = &L->t[i];
        struct tslot *a = &(*slots)[2 * i], *b = &(*slots)[2 * i + 1];
        snprintf(a->name, sizeof(a->name), "%s.lora_A", t->p->name);
        a->w = t->a;
        a->g = t->ga;
        a->n = (size_t)L->rank * t->in;
        a->wd = 1.0;
        snprintf(b->name, sizeof(b->name), "%s.lora_B", t->p->name);
        b->w = t->b;
        b->g = t->gb;
        b->n = (size_t)t->out * L->rank;
        b->wd = 1.0;
    }
    *nslots = 2 * L->n;
    h->materialize = lora_materialize;
    h->slot_grads = lora_grads;
    h->arg = L;
    stage_log(ctx, "finetune: LoRA rank %d, alpha %g (scale %g), dropout %g on %d linears", L->rank,
              ja->valuedouble, L->scale, L->dropout, L->n);
    return 0;
}

int stage_finetune_run(struct stage_ctx *ctx)
{
    static const struct stage_train_method m = { finetune_setup, lora_release };
    return stage_train_run(ctx, &m);
}
