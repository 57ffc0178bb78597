/*
 * loop: the training loop of the distill and finetune stages.
 *
 * Each optimizer step takes `batch` windows from the data (data.h), runs tnet_loss_grad on
 * each (gradient accumulation: the gradients add up and the sum is scaled by 1/batch), lets a
 * hook turn the full-weight gradients into the gradients of what actually trains (LoRA's A and
 * B, say), clips the global norm of those, and steps AdamW on them with the warmup + cosine
 * learning rate (optim.h). With a teacher, each window's teacher log-probabilities at the
 * temperature come from tnet_logits on the teacher net and the loss is the distillation loss
 * of grad.h.
 *
 * Crash safety: every checkpoint_every steps the trainable arrays, their AdamW moments, the
 * step, the data position, the RNG state and the running loss go to ckpt_path (ckpt.h); a run
 * that finds a checkpoint of the same fingerprint resumes from it and logs "resumed from step
 * N". The caller removes the checkpoint once the stage's output is in place.
 *
 * Progress: a line every log_every steps (loss, learning rate, tokens/s, ETA) through the log
 * callback and the same figures through the progress callback.
 */
#ifndef EXAQ_TRAIN_LOOP_H
#define EXAQ_TRAIN_LOOP_H

#include <stddef.h>
#include <stdint.h>

#include "worker/train/data.h"
#include "worker/train/grad.h"

/* One trainable array: what AdamW updates (w), its gradient (g, filled by the loop from the
 * tnet's gradients or by the hook) and its moments (m, v, owned by the loop). */
struct tslot {
    char name[160];
    float *w, *g;
    size_t n;
    double wd; /* 1: weight decay applies, 0: not */
    float *m, *v;
};

struct tloop_hooks {
    /* Before the step's forward passes: make the tnet's weights from the slots (LoRA:
     * W = W0 + s*B*A). May be NULL. */
    int (*materialize)(void *arg, uint64_t *rng, char **err);
    /* After the step's gradients are in the tnet: fill each slot's g (LoRA: from dW). NULL:
     * the slots' g point into the tnet's gradients already. */
    void (*slot_grads)(void *arg);
    void *arg;
};

struct tloop_opts {
    long steps;
    int batch;
    double lr, min_lr_ratio;
    long warmup;
    double weight_decay, grad_clip;
    long checkpoint_every; /* 0: no checkpoints */
    uint64_t seed;
    /* distillation: teacher == NULL trains on CE alone */
    struct tnet *teacher;
    float temperature, ce_weight;
    const char *ckpt_path;   /* NULL: no checkpoints */
    const char *fingerprint; /* what a checkpoint must match to be resumed */
    long log_every;
    /* reporting */
    void (*log)(void *arg, const char *line);
    void (*progress)(void *arg, double done, double total, const char *what);
    int (*cancelled)(void *arg);
    void *cb_arg;
};

struct tloop_result {
    long steps;       /* steps run in total (including those before a resume) */
    long resumed_at;  /* the step a checkpoint resumed from, 0 when none */
    double last_loss; /* the mean loss of the last step */
    double avg_loss;  /* the mean loss over the last tenth of the steps (at least one step) */
    double seconds;   /* this run's training time */
    double tok_per_s;
};

/* Runs the loop on net with the slots. Returns 0, -ECANCELED when cancelled, or another
 * negative value with *err set. */
int tloop_run(struct tnet *net, struct tslot *slots, int nslots, const struct tloop_hooks *h,
              struct tdata *data, const struct tloop_opts *o, struct tloop_result *res, char **err);

/* Mean next-token cross-entropy (nats per counted target) of net over windows
 * [first, first + count) of the training data (val = 0) or the validation windows (val = 1),
 * with the data's mask. Returns 0 with *ce, or -1 with *err. */
int tloop_eval_ce(struct tnet *net, const struct tdata *data, int val, int first, int count,
                  double *ce, char **err);

/* The teacher's log-softmax of its logits / temperature for ids[0..T) into logp (T x V). */
int tloop_teacher_logp(struct tnet *teacher, const int32_t *ids, int T, float temperature,
                       float *logp, char **err);

/* Whether the HF tensor name matches a trainable pattern: "all" and "*" match every name;
 * else a glob (fnmatch) on the whole name, or a plain substring when it has no '*?['. */
int tloop_pattern_match(const char *pattern, const char *name);

#endif
