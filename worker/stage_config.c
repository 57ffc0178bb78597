/*
 * stage_config: native stages config.
 *
 * NEEDSWORK: not implemented yet; every entry point fails with a clear message.
 */
#include "worker/stage.h"

int stage_config_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR,
                      "native stage 'config' is not implemented in this build");
}
