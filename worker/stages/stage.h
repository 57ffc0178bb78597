/*
 * stage: the interface between exaq-worker and the native stage implementations.
 *
 * A native stage is one function `int stage_<kind>_run(struct stage_ctx *ctx)`. It reads the
 * model in ctx->input_dir, writes a complete model dir into ctx->output_dir when the stage
 * produces a model (the dir exists and is empty; the worker renames it into place only on
 * success), and reports metrics, progress and log lines through the stage_* calls below, which
 * are thread-safe. It returns 0 on success or a negative enum stage_err (use stage_fail()).
 *
 * ctx->spec_json is the stage's parameter object exactly as the lanes parser canonicalised it:
 * defaults applied, file paths absolute (see docs/lanes.md for every kind's fields). A stage
 * parses it with cJSON and must reject what it cannot do with a clear message, never crash.
 *
 * Long loops check stage_cancelled(ctx) and return STAGE_ERR_CANCELLED promptly.
 */
#ifndef EXAQ_STAGE_H
#define EXAQ_STAGE_H

#include <signal.h>
#include <stdarg.h>

enum stage_err {
    STAGE_OK = 0,
    STAGE_ERR_ERROR = -1,     /* deterministic failure, bad input: not retried */
    STAGE_ERR_OOM = -2,       /* out of host or device memory: retried */
    STAGE_ERR_CANCELLED = -3, /* cancel requested */
};

enum stage_backend {
    STAGE_BACKEND_CPU = 0,
    STAGE_BACKEND_CUDA = 1,
};

struct stage_ops; /* worker-provided sinks for progress, metrics and log lines */

struct stage_ctx {
    const char *kind;         /* "ppl", "quantize", ... */
    const char *spec_json;    /* canonical parameter object */
    const char *input_dir;    /* model dir to read */
    const char *baseline_dir; /* the sweep's base model (paired speed eval), or NULL */
    const char *output_dir; /* empty model dir to fill, or NULL when the stage produces no model */
    const char *stage_dir;  /* scratch dir of this attempt; removed or renamed by the worker */
    int nthreads;           /* CPU threads the stage may use (>= 1) */
    enum stage_backend backend;
    int *cancel_flag; /* non-zero once cancelled (read it through stage_cancelled()); may be NULL */
    const struct stage_ops *ops; /* NULL: progress ignored, metrics kept below, logs to stderr */
    void *ops_arg;
    char errmsg[1024]; /* set by stage_fail() */
    /* Metrics reported so far (also forwarded through ops). Owned by the ctx. */
    struct stage_metric {
        char name[64];
        double value;
    } * metrics;
    int nmetrics;
};

struct stage_ops {
    void (*progress)(void *arg, double done, double total, const char *what);
    void (*metric)(void *arg, const char *name, double value);
    void (*log_line)(void *arg, const char *line);
};

typedef int (*stage_fn)(struct stage_ctx *ctx);

struct stage_def {
    const char *kind;
    stage_fn run;
    int produces_model; /* 1: output_dir is a model; 0: metrics only */
};

/* The native stage table; NULL when the kind has no native implementation. */
const struct stage_def *stage_find(const char *kind);

void stage_ctx_init(struct stage_ctx *ctx);
void stage_ctx_release(struct stage_ctx *ctx);

void stage_progress(struct stage_ctx *ctx, double done, double total, const char *what);
void stage_metric(struct stage_ctx *ctx, const char *name, double value);
/* Looks up a metric reported so far; returns 0 and sets *value when found, -1 otherwise. */
int stage_metric_get(const struct stage_ctx *ctx, const char *name, double *value);
void stage_log(struct stage_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records the message in ctx->errmsg, logs it, and returns err (a negative enum stage_err). */
int stage_fail(struct stage_ctx *ctx, enum stage_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int stage_cancelled(const struct stage_ctx *ctx);

/* Native stage entry points (worker/stage_*.c). */
int stage_ppl_run(struct stage_ctx *ctx);
int stage_mcqa_run(struct stage_ctx *ctx);
int stage_speed_run(struct stage_ctx *ctx);
int stage_mcqa_gen_run(struct stage_ctx *ctx); /* stage_evalgen.c */
int stage_qa_run(struct stage_ctx *ctx);
/* External engines (stage_external.c, docs/evals.md "vllm_speed" and "lm_eval"). */
int stage_vllm_speed_run(struct stage_ctx *ctx);
int stage_lm_eval_run(struct stage_ctx *ctx);
int stage_quantize_run(struct stage_ctx *ctx);
int stage_prune_run(struct stage_ctx *ctx);
int stage_heal_run(struct stage_ctx *ctx);
int stage_config_run(struct stage_ctx *ctx);
/* Training (docs/training.md): stage_distill.c holds the driver both share. */
int stage_distill_run(struct stage_ctx *ctx);
int stage_finetune_run(struct stage_ctx *ctx);
struct cJSON;
struct tnet;
struct tslot;
struct tloop_hooks;
struct stage_train_method {
    /* Picks what trains: sets *slots (xmalloc'd array the driver frees), *nslots and the loop
     * hooks; *state is handed to release. Returns 0 or a stage_fail() code. */
    int (*setup)(struct stage_ctx *ctx, const struct cJSON *spec, struct tnet *net,
                 struct tslot **slots, int *nslots, struct tloop_hooks *h, void **state);
    void (*release)(void *state);
};
int stage_train_run(struct stage_ctx *ctx, const struct stage_train_method *m);

#endif
