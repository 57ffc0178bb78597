/*
 * stage_quant: native stages quantize.
 *
 * NEEDSWORK: not implemented yet; every entry point fails with a clear message.
 */
#include "worker/stage.h"

int stage_quantize_run(struct stage_ctx *ctx)
{
    return stage_fail(ctx, STAGE_ERR_ERROR,
                      "native stage 'quantize' is not implemented in this build");
}
