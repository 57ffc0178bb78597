/*
 * handlers: the exaqctl requests. Each handler validates its request against the model and
 * replies exactly once (submit replies later, from submit.c, after its rows are committed).
 * Loop thread only; no blocking calls.
 */
#include "daemon/exaqd.h"

#include <string.h>
#include <unistd.h>

#include "common/log.h"

static struct dsweep *need_sweep(struct daemon *d, struct conn *c, const char *re, const char *id)
{
    struct dsweep *sw = sched_sweep_get(d, id);
    if (!sw)
        server_reply_error(c, re, PROTO_E_NOT_FOUND,
                           "no sweep '%s' (exaqctl status lists the sweeps)", id);
    return sw;
}

static struct dlane *need_lane(struct conn *c, const char *re, struct dsweep *sw, const char *id)
{
    struct dlane *l = sched_lane_get(sw, id);
    if (!l) {
        struct buf b;
        buf_init(&b);
        for (int i = 0; i < sw->nlanes; i++)
            buf_printf(&b, "%s%s", i ? ", " : "", sw->lanes[i]->id);
        server_reply_error(c, re, PROTO_E_NOT_FOUND, "sweep '%s' has no lane '%s' (lanes: %s)",
                           sw->id, id, buf_cstr(&b));
        buf_release(&b);
    }
    return l;
}

static void reply_json(struct conn *c, enum proto_type t, char *json)
{
    struct proto_msg r;
    proto_msg_init(&r, t);
    switch (t) {
    case PROTO_T_status_r:
        r.u.status_r.status = json;
        r.u.status_r.has_status = true;
        break;
    case PROTO_T_logs_r:
        r.u.logs_r.logs = json;
        r.u.logs_r.has_logs = true;
        break;
    default:
        EXAQ_BUG("reply_json: unexpected type");
    }
    server_reply(c, &r);
    proto_msg_release(&r);
}

void handlers_dispatch(struct daemon *d, struct conn *c, struct proto_msg *m)
{
    const char *re = proto_type_wire(m->type);
    struct proto_msg r;
    struct dsweep *sw;
    struct dlane *l = NULL;

    if (d->shutting_down && m->type != PROTO_T_ping && m->type != PROTO_T_status &&
        m->type != PROTO_T_shutdown && m->type != PROTO_T_logs) {
        server_reply_error(c, re, PROTO_E_SHUTDOWN, "exaqd is shutting down");
        return;
    }
    switch (m->type) {
    case PROTO_T_ping:
        proto_msg_init(&r, PROTO_T_ping_r);
        proto_set_str(&r.u.ping_r.version, &r.u.ping_r.has_version, EXAQ_VERSION);
        r.u.ping_r.pid = getpid();
        r.u.ping_r.has_pid = true;
        proto_set_str(&r.u.ping_r.home, &r.u.ping_r.has_home, d->home);
        r.u.ping_r.slots = d->nslots;
        r.u.ping_r.has_slots = true;
        server_reply(c, &r);
        proto_msg_release(&r);
        return;
    case PROTO_T_submit:
        submit_start(d, c, &m->u.submit);
        return;
    case PROTO_T_status:
        sw = NULL;
        if (m->u.status.has_sweep && !(sw = need_sweep(d, c, re, m->u.status.sweep)))
            return;
        reply_json(c, PROTO_T_status_r, sched_status_json(d, sw));
        return;
    case PROTO_T_logs:
        if (!(sw = need_sweep(d, c, re, m->u.logs.sweep)) ||
            !(l = need_lane(c, re, sw, m->u.logs.lane)))
            return;
        if (m->u.logs.has_stage) {
            bool found = false;
            for (int i = 0; i < l->n; i++)
                found |= !strcmp(l->names[i], m->u.logs.stage);
            if (!found) {
                struct buf b;
                buf_init(&b);
                for (int i = 0; i < l->n; i++)
                    buf_printf(&b, "%s%s", i ? ", " : "", l->names[i]);
                server_reply_error(c, re, PROTO_E_NOT_FOUND,
                                   "lane '%s' has no stage '%s' (stages: %s)", l->id,
                                   m->u.logs.stage, buf_cstr(&b));
                buf_release(&b);
                return;
            }
        }
        reply_json(c, PROTO_T_logs_r,
                   sched_logs_json(d, l, m->u.logs.has_stage ? m->u.logs.stage : NULL));
        return;
    case PROTO_T_cancel:
        if (!(sw = need_sweep(d, c, re, m->u.cancel.sweep)))
            return;
        if (m->u.cancel.has_lane && !(l = need_lane(c, re, sw, m->u.cancel.lane)))
            return;
        proto_msg_init(&r, PROTO_T_cancel_r);
        r.u.cancel_r.lanes = sched_cancel(d, sw, l);
        r.u.cancel_r.has_lanes = true;
        server_reply(c, &r);
        return;
    case PROTO_T_retry: {
        int nl, ns;
        if (!(sw = need_sweep(d, c, re, m->u.retry.sweep)))
            return;
        if (m->u.retry.has_lane && !(l = need_lane(c, re, sw, m->u.retry.lane)))
            return;
        sched_retry(d, sw, l, m->u.retry.has_failed && m->u.retry.failed, &nl, &ns);
        proto_msg_init(&r, PROTO_T_retry_r);
        r.u.retry_r.lanes = nl;
        r.u.retry_r.has_lanes = true;
        r.u.retry_r.stages = ns;
        r.u.retry_r.has_stages = true;
        server_reply(c, &r);
        return;
    }
    case PROTO_T_rank:
        if ((sw = need_sweep(d, c, re, m->u.rank.sweep)))
            finish_rank(d, c, sw);
        return;
    case PROTO_T_package:
        if ((sw = need_sweep(d, c, re, m->u.package.sweep)))
            finish_package(d, c, sw, m->u.package.has_top ? (int)m->u.package.top : -1,
                           m->u.package.has_out ? m->u.package.out : NULL);
        return;
    case PROTO_T_gc:
        if ((sw = need_sweep(d, c, re, m->u.gc.sweep)))
            finish_gc(d, c, sw, m->u.gc.has_keep ? m->u.gc.keep : "best");
        return;
    case PROTO_T_shutdown:
        proto_msg_init(&r, PROTO_T_shutdown_r);
        r.u.shutdown_r.running = sched_running_count(d);
        r.u.shutdown_r.has_running = true;
        server_reply(c, &r);
        daemon_begin_shutdown(d, m->u.shutdown.has_drain && m->u.shutdown.drain);
        return;
    default:
        server_reply_error(c, re, PROTO_E_DENIED, "'%s' is not a client request", re);
        return;
    }
}
