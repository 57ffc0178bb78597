/*
 * finish: what happens when every lane of a sweep has ended: ranking, reports, packaging and
 * hooks.
 *
 * NEEDSWORK: ranking, reports, packaging, gc and hooks are not implemented yet (issue: rank
 * and package). The requests answer with a clear error instead of pretending.
 */
#include "daemon/exaqd.h"

#include "common/log.h"

void finish_sweep(struct daemon *d, struct dsweep *sw)
{
    (void)d;
    log_info("sweep %s ended; ranking and packaging are not implemented in this build", sw->id);
}

void finish_rank(struct daemon *d, struct conn *c, struct dsweep *sw)
{
    (void)d;
    server_reply_error(c, "rank", PROTO_E_STATE, "ranking sweep '%s' is not implemented yet",
                       sw->id);
}

void finish_package(struct daemon *d, struct conn *c, struct dsweep *sw, int top, const char *out)
{
    (void)d;
    (void)top;
    (void)out;
    server_reply_error(c, "package", PROTO_E_STATE, "packaging sweep '%s' is not implemented yet",
                       sw->id);
}

void finish_gc(struct daemon *d, struct conn *c, struct dsweep *sw, const char *keep)
{
    (void)d;
    (void)keep;
    server_reply_error(c, "gc", PROTO_E_STATE, "gc of sweep '%s' is not implemented yet", sw->id);
}

void finish_resume(struct daemon *d)
{
    (void)d;
}
