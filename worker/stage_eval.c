/*
 * stage_eval: native stages ppl, mcqa, speed.
 *
 * NEEDSWORK: not implemented yet; every entry point fails with a clear message.
 */
#include "worker/stage.h"

int stage_ppl_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR, "native stage 'ppl' is not implemented in this build");
}

int stage_mcqa_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR, "native stage 'mcqa' is not implemented in this build");
}

int stage_speed_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR,
                      "native stage 'speed' is not implemented in this build");
}
