/*
 * stage: the native stage table and the reporting helpers of stage.h.
 */
#include "worker/stages/stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const struct stage_def stage_table[] = {
    { "ppl", stage_ppl_run, 0 },
    { "mcqa", stage_mcqa_run, 0 },
    { "speed", stage_speed_run, 0 },
    { "quantize", stage_quantize_run, 1 },
    { "prune", stage_prune_run, 1 },
    { "heal", stage_heal_run, 1 },
    { "config", stage_config_run, 1 },
    { "mcqa_gen", stage_mcqa_gen_run, 0 },
    { "qa", stage_qa_run, 0 },
    { "vllm_speed", stage_vllm_speed_run, 0 },
    { "lm_eval", stage_lm_eval_run, 0 },
    { "distill", stage_distill_run, 1 },
    { "finetune", stage_finetune_run, 1 },
};

const struct stage_def *stage_find(const char *kind)
{
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(stage_table); i++)
        if (!strcmp(stage_table[i].kind, kind))
            return &stage_table[i];
    return NULL;
}

void stage_ctx_init(struct stage_ctx *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->nthreads = 1;
}

void stage_ctx_release(struct stage_ctx *ctx)
{
    free(ctx->metrics);
    ctx->metrics = NULL;
    ctx->nmetrics = 0;
}

void stage_progress(struct stage_ctx *ctx, double done, double total, const char *what)
{
    if (ctx->ops && ctx->ops->progress)
        ctx->ops->progress(ctx->ops_arg, done, total, what);
}

void stage_metric(struct stage_ctx *ctx, const char *name, double value)
{
    int i;
    for (i = 0; i < ctx->nmetrics; i++)
        if (!strcmp(ctx->metrics[i].name, name))
            break;
    if (i == ctx->nmetrics) {
        ctx->metrics = xrealloc(ctx->metrics, (size_t)(ctx->nmetrics + 1) * sizeof(*ctx->metrics));
        snprintf(ctx->metrics[i].name, sizeof(ctx->metrics[i].name), "%s", name);
        ctx->nmetrics++;
    }
    ctx->metrics[i].value = value;
    if (ctx->ops && ctx->ops->metric)
        ctx->ops->metric(ctx->ops_arg, name, value);
}

int stage_metric_get(const struct stage_ctx *ctx, const char *name, double *value)
{
    for (int i = 0; i < ctx->nmetrics; i++) {
        if (!strcmp(ctx->metrics[i].name, name)) {
            *value = ctx->metrics[i].value;
            return 0;
        }
    }
    return -1;
}

static void stage_vlog(struct stage_ctx *ctx, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof(line), fmt, ap);
    if (ctx->ops && ctx->ops->log_line)
        ctx->ops->log_line(ctx->ops_arg, line);
    else
        fprintf(stderr, "%s\n", line);
}

void stage_log(struct stage_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    stage_vlog(ctx, fmt, ap);
    va_end(ap);
}

int stage_fail(struct stage_ctx *ctx, enum stage_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->errmsg, sizeof(ctx->errmsg), fmt, ap);
    va_end(ap);
    stage_log(ctx, "error: %s", ctx->errmsg);
    return err;
}

int stage_cancelled(const struct stage_ctx *ctx)
{
    return ctx->cancel_flag && __atomic_load_n(ctx->cancel_flag, __ATOMIC_ACQUIRE);
}
