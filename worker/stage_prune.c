/*
 * stage_prune: native stages prune, heal.
 *
 * NEEDSWORK: not implemented yet; every entry point fails with a clear message.
 */
#include "worker/stage.h"

int stage_prune_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR,
                      "native stage 'prune' is not implemented in this build");
}

int stage_heal_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR, "native stage 'heal' is not implemented in this build");
}
