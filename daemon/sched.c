/*
 * sched: the daemon's model of sweeps, lanes, stages and attempts, and every state transition.
 *
 * DESIGN. State lives per stage attempt; a lane's state is derived from its stages every time
 * it is needed, so there is nothing to keep in sync. Stages are content-addressed and shared:
 * a stage runs when it is pending, its producer is done, and at least one live lane (not
 * cancelled, not failed) needs it. Each transition updates memory first, then queues the
 * matching SQLite write (store.c), then asks for a scheduling pass (sched_kick), which runs
 * once per loop iteration from an idle handle. Runs on the loop thread only; no blocking calls.
 *
 * Recovery (sched_load) runs before the loop: attempts that were running when exaqd died
 * become `interrupted`, their orphaned worker and command process group are killed, and their
 * stages return to pending without using a retry. A stage whose output was completed just
 * before the crash is adopted by the worker from artifacts/<key>/result.json, not re-run.
 */
#include "daemon/exaqd.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/jw.h"
#include "common/log.h"
#include "daemon/slurm.h"
#include "daemon/store.h"

void sched_event(struct daemon *d, const char *sweep, const char *lane, const char *key,
                 const char *fmt, ...)
{
    va_list ap;
    char *what;
    va_start(ap, fmt);
    what = xvasprintf(fmt, ap);
    va_end(ap);
    log_info("%s%s%s%s%.12s%s%s", sweep ? sweep : "", lane ? "/" : "", lane ? lane : "",
             (sweep || lane) && key ? " " : "", key ? key : "", sweep || lane || key ? ": " : "",
             what);
    store_exec(d->store, "INSERT INTO events(t, sweep, lane, key, what) VALUES (?, ?, ?, ?, ?)",
               "dssss", now_wall(), sweep, lane, key, what);
    free(what);
}

/* ===== lookups and derived state ===== */

void sched_init(struct daemon *d)
{
    hmap_init(&d->stages);
    hmap_init(&d->sweeps);
    d->sweep_list = NULL;
    d->nsweeps = 0;
    d->next_seq = 1;
    d->next_attempt_id = 1;
}

static void hist_add(struct dstage *st, int64_t id, int n, bool ok, enum fail_class c,
                     const char *msg, double started, double ended)
{
    struct attempt_rec *r;
    st->hist = xrealloc(st->hist, (size_t)(st->nhist + 1) * sizeof(*st->hist));
    r = &st->hist[st->nhist++];
    r->id = id;
    r->n = n;
    r->ok = ok;
    r->cls = c;
    r->msg = msg ? xstrdup(msg) : NULL;
    r->started = started;
    r->ended = ended;
}

static void stage_free(struct dstage *st)
{
    for (int i = 0; i < st->nhist; i++)
        free(st->hist[i].msg);
    free(st->hist);
    free(st->kind);
    free(st->spec);
    free(st->dep_key);
    free(st->input_dir);
    free(st->err_msg);
    proto_metrics_release(&st->metrics);
    free(st->refs);
    free(st);
}

static void lane_free(struct dlane *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    free(l->st);
    free(l->is_eval);
    free(l->reused);
    free(l->id);
    free(l->grp);
    free(l);
}

static void sweep_free(struct dsweep *sw)
{
    for (int i = 0; i < sw->nlanes; i++)
        lane_free(sw->lanes[i]);
    free(sw->lanes);
    free(sw->id);
    free(sw->name);
    free(sw->yaml_path);
    free(sw->base_model);
    free(sw->base_key);
    free(sw->settings);
    free(sw);
}

void sched_release(struct daemon *d)
{
    for (size_t i = 0; i < d->stages.cap; i++)
        if (d->stages.keys && d->stages.keys[i])
            stage_free(d->stages.vals[i]);
    for (int i = 0; i < d->nsweeps; i++)
        sweep_free(d->sweep_list[i]);
    free(d->sweep_list);
    hmap_release(&d->stages);
    hmap_release(&d->sweeps);
}

struct dstage *sched_stage_get(struct daemon *d, const char *key)
{
    return hmap_get(&d->stages, key);
}

struct dsweep *sched_sweep_get(struct daemon *d, const char *id)
{
    struct dsweep *sw = hmap_get(&d->sweeps, id);
    if (sw)
        return sw;
    /* Accept a unique prefix, or the bare sweep name when only one sweep has it. */
    struct dsweep *found = NULL;
    int n = 0;
    size_t len = strlen(id);
    for (int i = 0; i < d->nsweeps; i++) {
        struct dsweep *s = d->sweep_list[i];
        if (!strncmp(s->id, id, len) || !strcmp(s->name, id)) {
            found = s;
            n++;
        }
    }
    return n == 1 ? found : NULL;
}

struct dlane *sched_lane_get(struct dsweep *sw, const char *id)
{
    for (int i = 0; i < sw->nlanes; i++)
        if (!strcmp(sw->lanes[i]->id, id))
            return sw->lanes[i];
    return NULL;
}

static bool lane_has_failed(const struct dlane *l)
{
    for (int i = 0; i < l->n; i++)
        if (l->st[i]->state == DSTAGE_FAILED)
            return true;
    return false;
}

enum lane_state sched_lane_state(const struct dlane *l)
{
    bool all_done = true, running = false;
    if (l->cancelled)
        return LANE_CANCELLED;
    if (lane_has_failed(l))
        return LANE_FAILED;
    for (int i = 0; i < l->n; i++) {
        if (l->st[i]->state != DSTAGE_DONE)
            all_done = false;
        if (l->st[i]->state == DSTAGE_RUNNING)
            running = true;
    }
    if (all_done)
        return LANE_DONE;
    return running ? LANE_RUNNING : LANE_QUEUED;
}

static bool lane_ended(const struct dlane *l)
{
    enum lane_state s = sched_lane_state(l);
    return s == LANE_DONE || s == LANE_FAILED || s == LANE_CANCELLED;
}

bool sched_sweep_ended(const struct dsweep *sw)
{
    for (int i = 0; i < sw->nlanes; i++)
        if (!lane_ended(sw->lanes[i]))
            return false;
    return true;
}

static bool lane_live(const struct dlane *l)
{
    return !l->sw->uncommitted && !l->cancelled && !lane_has_failed(l);
}

bool sched_stage_needed(const struct dstage *st)
{
    for (int i = 0; i < st->nrefs; i++)
        if (lane_live(st->refs[i].lane))
            return true;
    return false;
}

int64_t sched_lane_size(const struct dlane *l)
{
    /* The final model is the last model-producing pipeline stage, else the base model. */
    for (int i = l->n - 1; i >= 0; i--)
        if (!l->is_eval[i] && l->st[i]->produces_model)
            return l->st[i]->state == DSTAGE_DONE ? l->st[i]->size_bytes : -1;
    return l->sw->base_size;
}

int sched_running_count(const struct daemon *d)
{
    int n = 0;
    for (int i = 0; i < d->nslots; i++)
        if (d->slots[i].att)
            n++;
    return n;
}

/* ===== building the model ===== */

void sched_stage_add(struct daemon *d, struct dstage *st)
{
    hmap_put(&d->stages, st->key, st);
}

void sched_sweep_add(struct daemon *d, struct dsweep *sw)
{
    hmap_put(&d->sweeps, sw->id, sw);
    d->sweep_list = xrealloc(d->sweep_list, (size_t)(d->nsweeps + 1) * sizeof(*d->sweep_list));
    d->sweep_list[d->nsweeps++] = sw;
    if (sw->seq >= d->next_seq)
        d->next_seq = sw->seq + 1;
}

void sched_lane_add_stage(struct dlane *l, struct dstage *st, const char *name, bool is_eval,
                          bool reused)
{
    int i = l->n++;
    l->st = xrealloc(l->st, (size_t)l->n * sizeof(*l->st));
    l->names = xrealloc(l->names, (size_t)l->n * sizeof(*l->names));
    l->is_eval = xrealloc(l->is_eval, (size_t)l->n * sizeof(*l->is_eval));
    l->reused = xrealloc(l->reused, (size_t)l->n * sizeof(*l->reused));
    l->st[i] = st;
    l->names[i] = xstrdup(name);
    l->is_eval[i] = is_eval;
    l->reused[i] = reused;
    st->refs = xrealloc(st->refs, (size_t)(st->nrefs + 1) * sizeof(*st->refs));
    st->refs[st->nrefs].lane = l;
    st->refs[st->nrefs].pos = i;
    st->nrefs++;
}

/* ===== scheduling ===== */

static void pump(struct daemon *d);

static void on_pump_idle(uv_idle_t *h)
{
    struct daemon *d = h->data;
    uv_idle_stop(h);
    d->pump_queued = false;
    pump(d);
}

void sched_kick(struct daemon *d)
{
    if (d->pump_queued)
        return;
    d->pump_queued = true;
    d->pump_idle.data = d;
    uv_idle_start(&d->pump_idle, on_pump_idle);
}

struct cand {
    struct dstage *st;
    int prio;
    int64_t seq;
    int lane_idx;
    int pos;
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->prio != y->prio)
        return x->prio > y->prio ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    if (x->lane_idx != y->lane_idx)
        return x->lane_idx < y->lane_idx ? -1 : 1;
    return x->pos - y->pos;
}

void sched_stage_set(struct daemon *d, struct dstage *st, const struct stage_change *c,
                     const char *fmt, ...)
{
    double t = c->t > 0 ? c->t : now_wall();
    va_list ap;
    char *what;
    st->state = c->to;
    if (!c->keep_error) {
        char *m = c->cls != FAIL_NONE ? xstrdup(c->msg ? c->msg : "") : NULL;
        free(st->err_msg);
        st->err_msg = m;
        st->err_class = c->cls;
    }
    if (c->to == DSTAGE_RUNNING)
        st->started = t;
    if (c->to == DSTAGE_DONE || c->to == DSTAGE_FAILED)
        st->ended = t;
    store_exec(d->store,
               "UPDATE stages SET state=?, tries=?, err_class=?, err_msg=?, "
               "size_bytes=NULLIF(?, -1), started=NULLIF(?, 0), ended=NULLIF(?, 0) WHERE key=?",
               "sissidds", dstage_state_name(st->state), (int64_t)st->tries,
               st->err_class != FAIL_NONE ? fail_class_name(st->err_class) : NULL, st->err_msg,
               st->size_bytes, st->started, st->ended, st->key);
    va_start(ap, fmt);
    what = xvasprintf(fmt, ap);
    va_end(ap);
    sched_event(d, c->lane ? c->lane->sw->id : NULL, c->lane ? c->lane->id : NULL, st->key, "%s",
                what);
    free(what);
}

static void stage_set_failed(struct daemon *d, struct dstage *st, enum fail_class c,
                             const char *msg)
{
    sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_FAILED, .cls = c, .msg = msg },
                    "%s failed (%s): %s", st->kind, fail_class_name(c), msg ? msg : "");
}

char *sched_gpu_mem_refusal(double want_gb, double max)
{
    if (max <= 0)
        return xasprintf("gpu_mem_gb=%g but exaqd has no GPU slot (CPU slots only); drop the "
                         "key or run exaqd on a GPU machine",
                         want_gb);
    return xasprintf("gpu_mem_gb=%g but the largest worker slot has %.1f GB of GPU memory", want_gb,
                     max);
}

/* The GPU memory (GB) a slot can give a stage now: what its idle worker last reported free, or
 * the device's total before the first report. */
static double slot_avail_gb(const struct slot *s)
{
    return s->gpu_free_gb >= 0 ? s->gpu_free_gb : s->gpu_total_gb;
}

/* Best-fit placement: the idle slots with the least free GPU memory that still fits. */
static int pick_slots(struct daemon *d, const struct dstage *st, struct slot **out, int want)
{
    int got = 0;
    bool used[1024] = { 0 };
    for (int k = 0; k < want; k++) {
        struct slot *best = NULL;
        for (int i = 0; i < d->nslots && i < 1024; i++) {
            struct slot *s = &d->slots[i];
            if (used[i] || s->state != SLOT_IDLE || s->reserved_by)
                continue;
            if (st->res.gpu_mem_gb > 0 && slot_avail_gb(s) + 1e-9 < st->res.gpu_mem_gb)
                continue;
            if (!best || (d->gpu_slots && slot_avail_gb(s) < slot_avail_gb(best)))
                best = s;
        }
        if (!best)
            break;
        used[best->idx] = true;
        out[got++] = best;
    }
    return got;
}

/* The home's free space for min_free_gb: statfs runs on libuv's thread pool, so the loop never
 * waits on a slow or hung file system; a reading is trusted for one second. */
#define HOME_FREE_MAX_AGE_S 1.0

static void on_statfs(uv_fs_t *req)
{
    struct daemon *d = req->data;
    const uv_statfs_t *s = req->ptr;
    d->home_free_gb = req->result == 0 && s ? (double)s->f_bavail * (double)s->f_bsize / 1e9 : -1;
    d->home_free_mono = now_mono();
    d->statfs_busy = false;
    uv_fs_req_cleanup(req);
    sched_kick(d);
}

/* True when d->home_free_gb is fresh; otherwise starts a reading (which kicks the pump). */
static bool home_free_fresh(struct daemon *d)
{
    if (d->home_free_mono > 0 && now_mono() - d->home_free_mono < HOME_FREE_MAX_AGE_S)
        return true;
    if (!d->statfs_busy) {
        d->statfs_req.data = d;
        d->statfs_busy = uv_fs_statfs(d->loop, &d->statfs_req, d->home, on_statfs) == 0;
    }
    return false;
}

static void pump(struct daemon *d)
{
    struct cand *c = NULL;
    size_t nc = 0;
    int idle = 0;

    if (d->shutting_down)
        return;
    for (int i = 0; i < d->nslots; i++)
        if (d->slots[i].state == SLOT_IDLE && !d->slots[i].reserved_by)
            idle++;
    if (!idle && !slurm_any_runnable(d))
        return;
    for (size_t i = 0; i < d->stages.cap; i++) {
        struct dstage *st;
        struct cand cd;
        if (!d->stages.keys[i])
            continue;
        st = d->stages.vals[i];
        if (st->state != DSTAGE_PENDING || (st->dep && st->dep->state != DSTAGE_DONE))
            continue;
        cd.st = st;
        cd.prio = -1000000;
        cd.seq = INT64_MAX;
        cd.lane_idx = 0;
        cd.pos = 0;
        for (int r = 0; r < st->nrefs; r++) {
            struct dlane *l = st->refs[r].lane;
            if (!lane_live(l))
                continue;
            if (l->sw->priority > cd.prio || (l->sw->priority == cd.prio && l->sw->seq < cd.seq)) {
                cd.prio = l->sw->priority;
                cd.seq = l->sw->seq;
                cd.lane_idx = l->idx;
                cd.pos = st->refs[r].pos;
            }
        }
        if (cd.seq == INT64_MAX)
            continue; /* not needed by any live lane */
        c = xrealloc(c, (nc + 1) * sizeof(*c));
        c[nc++] = cd;
    }
    if (nc > 1)
        qsort(c, nc, sizeof(*c), cand_cmp);
    for (size_t i = 0; i < nc; i++) {
        struct dstage *st = c[i].st;
        int want = d->gpu_slots ? EXAQ_MAX(1, st->res.gpus) : 1;
        struct slot *slots[64];
        int got;
        if (st->res.executor == LANES_EXEC_SLURM) {
            slurm_dispatch(d, st); /* Slurm places it; no slot, no local checks */
            continue;
        }
        if (idle <= 0)
            continue;
        if (want > d->nslots || want > 64) {
            char *msg =
                xasprintf("stage needs %d GPUs but exaqd has %d worker slot(s)", want, d->nslots);
            stage_set_failed(d, st, FAIL_ERROR, msg);
            free(msg);
            continue;
        }
        if (st->res.gpu_mem_gb > workers_max_gpu_gb(d)) {
            char *msg = sched_gpu_mem_refusal(st->res.gpu_mem_gb, workers_max_gpu_gb(d));
            stage_set_failed(d, st, FAIL_ERROR, msg);
            free(msg);
            continue;
        }
        got = pick_slots(d, st, slots, want);
        if (got < want)
            continue;
        if (st->res.min_free_gb > 0) {
            if (!home_free_fresh(d))
                continue; /* placed when the reading arrives */
            double f = d->home_free_gb;
            if (f >= 0 && f < st->res.min_free_gb) {
                char *msg = xasprintf("only %.1f GB free in '%s' but the stage needs "
                                      "min_free_gb=%.1f; free space, then retry",
                                      f, d->home, st->res.min_free_gb);
                stage_set_failed(d, st, FAIL_ERROR, msg);
                free(msg);
                continue;
            }
        }
        if (workers_dispatch(d, slots[0], st, slots + 1, want - 1))
            idle -= want;
    }
    free(c);
    sched_check_sweeps(d);
}

/* Cancels running attempts that no live lane needs any more. */
static void cancel_unneeded(struct daemon *d)
{
    for (int i = 0; i < d->nslots; i++) {
        struct attempt *a = d->slots[i].att;
        if (a && a->cancel_class == FAIL_NONE && !sched_stage_needed(a->st))
            workers_cancel_attempt(d, a, FAIL_CANCELLED);
    }
    slurm_cancel_unneeded(d);
}

static void note_lane_transitions(struct daemon *d, struct dsweep *sw)
{
    for (int i = 0; i < sw->nlanes; i++) {
        struct dlane *l = sw->lanes[i];
        enum lane_state s = sched_lane_state(l);
        if (s != l->last_state) {
            if (s == LANE_DONE || s == LANE_FAILED || s == LANE_CANCELLED)
                sched_event(d, sw->id, l->id, NULL, "lane %s", lane_state_name(s));
            l->last_state = s;
        }
    }
}

void sched_check_sweeps(struct daemon *d)
{
    for (int i = 0; i < d->nsweeps; i++) {
        struct dsweep *sw = d->sweep_list[i];
        note_lane_transitions(d, sw);
        if (sw->uncommitted || sw->ended > 0 || sw->finishing || !sched_sweep_ended(sw))
            continue;
        sw->ended = now_wall();
        store_exec(d->store, "UPDATE sweeps SET ended=? WHERE id=?", "ds", sw->ended, sw->id);
        sched_event(d, sw->id, NULL, NULL, "sweep ended");
        finish_sweep(d, sw);
    }
}

/* ===== attempt transitions (called by workers.c after the slot is released) ===== */

void sched_attempt_done(struct daemon *d, struct attempt *a, const struct proto_metrics *m,
                        int64_t size_bytes)
{
    struct dstage *st = a->st;
    double t = now_wall();

    store_exec(d->store, "UPDATE attempts SET state='done', ended=? WHERE id=?", "di", t, a->id);
    hist_add(st, a->id, a->n, true, FAIL_NONE, NULL, a->started, t);
    st->att = NULL;
    st->size_bytes = size_bytes;
    for (size_t i = 0; i < m->n; i++) {
        proto_metrics_add(&st->metrics, m->names[i], m->values[i]);
        store_exec(d->store, "INSERT OR REPLACE INTO metrics(key, name, value) VALUES (?, ?, ?)",
                   "ssd", st->key, m->names[i], m->values[i]);
    }
    sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_DONE, .t = t },
                    "%s done (attempt %d, %.1fs)", st->kind, a->n, t - a->started);
    sched_check_sweeps(d);
    sched_kick(d);
}

void sched_attempt_failed(struct daemon *d, struct attempt *a, enum fail_class c, const char *msg)
{
    struct dstage *st = a->st;
    double t = now_wall();
    const char *astate = attempt_state_name(c == FAIL_INTERRUPTED ? ATT_INTERRUPTED : ATT_FAILED);

    store_exec(d->store, "UPDATE attempts SET state=?, class=?, msg=?, ended=? WHERE id=?", "sssdi",
               astate, fail_class_name(c), msg, t, a->id);
    hist_add(st, a->id, a->n, false, c, msg, a->started, t);
    st->att = NULL;
    sched_event(d, NULL, NULL, st->key, "%s attempt %d %s: %s", st->kind, a->n, fail_class_name(c),
                msg ? msg : "");
    switch (c) {
    case FAIL_CANCELLED:
    case FAIL_INTERRUPTED:
        if (a->fail_stage) { /* e.g. scancel from outside: the user stopped it; retry re-runs */
            stage_set_failed(d, st, c, msg);
            break;
        }
        sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_PENDING, .keep_error = true },
                        "%s back to pending (%s; no retry used)", st->kind, fail_class_name(c));
        break;
    case FAIL_ERROR:
        st->tries++;
        stage_set_failed(d, st, c, msg);
        break;
    default:
        st->tries++;
        if (st->tries > st->res.retries) {
            char *m2 = xasprintf("%s (after %d attempt%s)", msg ? msg : fail_class_name(c),
                                 st->tries, st->tries == 1 ? "" : "s");
            stage_set_failed(d, st, c, m2);
            free(m2);
        } else {
            sched_stage_set(
                d, st, &(struct stage_change){ .to = DSTAGE_PENDING, .cls = c, .msg = msg },
                "%s will retry (%d of %d retries used)", st->kind, st->tries, st->res.retries);
        }
    }
    cancel_unneeded(d);
    sched_check_sweeps(d);
    sched_kick(d);
}

void sched_attempt_progress(struct daemon *d, struct attempt *a, double done, double total,
                            const char *what)
{
    (void)d;
    double t = now_mono();
    if (a->prog_t0_mono == 0 || done < a->pdone) {
        a->prog_t0_mono = t;
        a->prog_d0 = done;
    }
    a->pdone = done;
    a->ptotal = total;
    if (what) {
        free(a->what);
        a->what = xstrdup(what);
    }
}

void sched_attempt_pgid(struct daemon *d, struct attempt *a, pid_t pgid)
{
    a->pgid = pgid;
    store_exec(d->store, "UPDATE attempts SET pgid=? WHERE id=?", "ii", (int64_t)pgid, a->id);
}

/* ===== cancel and retry ===== */

int sched_cancel(struct daemon *d, struct dsweep *sw, struct dlane *only)
{
    int n = 0;
    for (int i = 0; i < sw->nlanes; i++) {
        struct dlane *l = sw->lanes[i];
        if (only && l != only)
            continue;
        if (l->cancelled || lane_ended(l))
            continue;
        l->cancelled = true;
        n++;
        store_exec(d->store, "UPDATE lanes SET cancelled=1 WHERE sweep=? AND id=?", "ss", sw->id,
                   l->id);
        sched_event(d, sw->id, l->id, NULL, "cancel requested");
    }
    cancel_unneeded(d);
    sched_check_sweeps(d);
    sched_kick(d);
    return n;
}

void sched_retry(struct daemon *d, struct dsweep *sw, struct dlane *only, bool failed_only,
                 int *nlanes, int *nstages)
{
    *nlanes = *nstages = 0;
    for (int i = 0; i < sw->nlanes; i++) {
        struct dlane *l = sw->lanes[i];
        enum lane_state s = sched_lane_state(l);
        bool touched = false;
        if (only && l != only)
            continue;
        if (s != LANE_FAILED && (failed_only || s != LANE_CANCELLED))
            continue;
        if (l->cancelled) {
            l->cancelled = false;
            store_exec(d->store, "UPDATE lanes SET cancelled=0 WHERE sweep=? AND id=?", "ss",
                       sw->id, l->id);
            touched = true;
        }
        for (int k = 0; k < l->n; k++) {
            struct dstage *st = l->st[k];
            if (st->state != DSTAGE_FAILED)
                continue;
            st->tries = 0;
            sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_PENDING, .lane = l },
                            "%s re-queued by retry", st->kind);
            (*nstages)++;
            touched = true;
        }
        if (touched) {
            (*nlanes)++;
            sched_event(d, sw->id, l->id, NULL, "retry requested");
        }
    }
    if (*nlanes && sw->ended > 0) {
        sw->ended = 0;
        store_exec(d->store, "UPDATE sweeps SET ended=NULL WHERE id=?", "s", sw->id);
    }
    sched_kick(d);
}

/* ===== status documents ===== */

static const char *stage_view_state(const struct dlane *l, const struct dstage *st)
{
    if (st->state == DSTAGE_PENDING) {
        if (l->cancelled)
            return view_state_name(VIEW_CANCELLED);
        if (lane_has_failed(l))
            return view_state_name(VIEW_SKIPPED);
        if (st->dep && st->dep->state != DSTAGE_DONE)
            return view_state_name(VIEW_WAITING);
        return view_state_name(VIEW_QUEUED);
    }
    return dstage_state_name(st->state);
}

static void write_metrics(struct jw *w, const struct proto_metrics *m)
{
    jw_obj_begin(w);
    for (size_t i = 0; i < m->n; i++)
        jw_knum(w, m->names[i], m->values[i]);
    jw_obj_end(w);
}

static void write_stage(struct jw *w, const struct dlane *l, int i)
{
    const struct dstage *st = l->st[i];
    const struct attempt *a = st->att;
    jw_obj_begin(w);
    jw_kstr(w, "name", l->names[i]);
    jw_kstr(w, "kind", st->kind);
    jw_kstr(w, "key", st->key);
    jw_kstr(w, "state", stage_view_state(l, st));
    jw_kbool(w, "eval", l->is_eval[i]);
    jw_kbool(w, "reused", l->reused[i]);
    jw_kint(w, "attempts", st->nattempts);
    jw_kint(w, "tries", st->tries);
    jw_kint(w, "retries", st->res.retries);
#define RES_JSON_INT(k, v)                jw_kint(w, k, v)
#define RES_JSON_NUM(k, v)                jw_knum(w, k, v)
#define RES_JSON_NUMPOS(k, v)             jw_knum(w, k, v)
#define RES_JSON_EXEC(k, v)               jw_kstr(w, k, lanes_exec_name(v))
#define RES_JSON(name, type, lo, hi, def) RES_JSON_##type(#name, st->res.name);
    jw_key(w, "res");
    jw_obj_begin(w);
    LANES_RESOURCES(RES_JSON)
    jw_obj_end(w);
#undef RES_JSON
    if (st->started > 0)
        jw_knum(w, "started", st->started);
    if (st->ended > 0 && st->state != DSTAGE_RUNNING)
        jw_knum(w, "ended", st->ended);
    if (a) {
        double now = now_mono();
        jw_key(w, "progress");
        jw_obj_begin(w);
        jw_knum(w, "done", a->pdone);
        jw_knum(w, "total", a->ptotal);
        jw_kstr(w, "what", a->what);
        jw_knum(w, "elapsed_s", now - a->started_mono);
        if (a->ptotal > 0 && a->pdone > a->prog_d0 && now > a->prog_t0_mono) {
            double rate = (a->pdone - a->prog_d0) / (now - a->prog_t0_mono);
            jw_knum(w, "eta_s", (a->ptotal - a->pdone) / rate);
        }
        jw_obj_end(w);
        jw_kint(w, "attempt", a->id);
        jw_kint(w, "slot", a->slot ? a->slot->idx : -1);
        if (a->slurm)
            slurm_status_json(a, w);
        if (a->last_line)
            jw_kstr(w, "last_line", a->last_line);
    }
    if (st->err_class != FAIL_NONE) {
        jw_key(w, "error");
        jw_obj_begin(w);
        jw_kstr(w, "class", fail_class_name(st->err_class));
        jw_kstr(w, "msg", st->err_msg);
        jw_obj_end(w);
    }
    if (st->size_bytes >= 0 && st->state == DSTAGE_DONE && st->produces_model)
        jw_kint(w, "size_bytes", st->size_bytes);
    jw_key(w, "history");
    jw_arr_begin(w);
    for (int k = 0; k < st->nhist; k++) {
        const struct attempt_rec *r = &st->hist[k];
        jw_obj_begin(w);
        jw_kint(w, "attempt", r->id);
        jw_kint(w, "n", r->n);
        jw_kstr(w, "state",
                attempt_state_name(r->ok                        ? ATT_DONE
                                   : r->cls == FAIL_INTERRUPTED ? ATT_INTERRUPTED
                                                                : ATT_FAILED));
        if (!r->ok) {
            jw_kstr(w, "class", fail_class_name(r->cls));
            jw_kstr(w, "msg", r->msg);
        }
        jw_knum(w, "started", r->started);
        jw_knum(w, "ended", r->ended);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_key(w, "metrics");
    write_metrics(w, &st->metrics);
    jw_obj_end(w);
}

static void write_lane(struct jw *w, const struct dlane *l)
{
    int64_t size = sched_lane_size(l);
    jw_obj_begin(w);
    jw_kstr(w, "id", l->id);
    if (l->grp)
        jw_kstr(w, "group", l->grp);
    jw_kbool(w, "baseline", l->baseline);
    jw_kstr(w, "state", lane_state_name(sched_lane_state(l)));
    if (size >= 0)
        jw_kint(w, "size_bytes", size);
    jw_key(w, "stages");
    jw_arr_begin(w);
    for (int i = 0; i < l->n; i++)
        write_stage(w, l, i);
    jw_arr_end(w);
    jw_obj_end(w);
}

static void write_sweep(struct jw *w, const struct dsweep *sw)
{
    int counts[5] = { 0 };
    for (int i = 0; i < sw->nlanes; i++)
        counts[sched_lane_state(sw->lanes[i])]++;
    jw_obj_begin(w);
    jw_kstr(w, "id", sw->id);
    jw_kstr(w, "name", sw->name);
    /* "finishing": every lane has ended; ranking, reports and packaging are still running. */
    jw_kstr(w, "state", sw->ended <= 0 ? "running" : sw->finishing ? "finishing" : "ended");
    jw_kstr(w, "yaml", sw->yaml_path);
    jw_kstr(w, "base_model", sw->base_model);
    jw_kint(w, "priority", sw->priority);
    jw_knum(w, "created", sw->created);
    if (sw->ended > 0)
        jw_knum(w, "ended", sw->ended);
    jw_key(w, "counts");
    jw_obj_begin(w);
    for (int s = 0; s < 5; s++)
        jw_kint(w, lane_state_name((enum lane_state)s), counts[s]);
    jw_obj_end(w);
    jw_key(w, "lanes");
    jw_arr_begin(w);
    for (int i = 0; i < sw->nlanes; i++)
        write_lane(w, sw->lanes[i]);
    jw_arr_end(w);
    jw_obj_end(w);
}

char *sched_status_json(struct daemon *d, struct dsweep *only)
{
    static const char *slot_names[] = { "down", "starting", "idle", "busy", "quarantined" };
    struct buf b;
    struct jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "daemon");
    jw_obj_begin(&w);
    jw_kint(&w, "pid", (int64_t)getpid());
    jw_kstr(&w, "version", EXAQ_VERSION);
    jw_kstr(&w, "home", d->home);
    jw_knum(&w, "uptime_s", now_wall() - d->started_wall);
    jw_kbool(&w, "shutting_down", d->shutting_down);
    jw_kint(&w, "store_failures", (int64_t)store_failures(d->store));
    jw_key(&w, "slots");
    jw_arr_begin(&w);
    for (int i = 0; i < d->nslots; i++) {
        const struct slot *s = &d->slots[i];
        jw_obj_begin(&w);
        jw_kint(&w, "slot", s->idx);
        jw_kstr(&w, "state", s->reserved_by ? "reserved" : slot_names[s->state]);
        jw_kstr(&w, "backend", s->backend ? s->backend : (s->device >= 0 ? "cuda" : "cpu"));
        if (s->device >= 0)
            jw_kint(&w, "device", s->device);
        if (s->gpu_name)
            jw_kstr(&w, "gpu", s->gpu_name);
        if (s->gpu_total_gb > 0)
            jw_knum(&w, "gpu_mem_gb", s->gpu_total_gb);
        if (s->gpu_total_gb > 0 && s->gpu_free_gb >= 0)
            jw_knum(&w, "gpu_free_gb", s->gpu_free_gb);
        if (s->pid > 0)
            jw_kint(&w, "pid", s->pid);
        if (s->threads > 0)
            jw_kint(&w, "threads", s->threads);
        if (s->att)
            jw_kint(&w, "attempt", s->att->id);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    jw_key(&w, "sweeps");
    jw_arr_begin(&w);
    for (int i = 0; i < d->nsweeps; i++)
        if (!only || d->sweep_list[i] == only)
            write_sweep(&w, d->sweep_list[i]);
    jw_arr_end(&w);
    jw_obj_end(&w);
    return buf_steal(&b);
}

char *sched_logs_json(struct daemon *d, struct dlane *l, const char *stage)
{
    struct buf b;
    struct jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "sweep", l->sw->id);
    jw_kstr(&w, "lane", l->id);
    jw_key(&w, "stages");
    jw_arr_begin(&w);
    for (int i = 0; i < l->n; i++) {
        const struct dstage *st = l->st[i];
        char *dir;
        if (stage && strcmp(stage, l->names[i]))
            continue;
        dir = xasprintf("%s/logs/%s", d->home, st->key);
        jw_obj_begin(&w);
        jw_kstr(&w, "name", l->names[i]);
        jw_kstr(&w, "kind", st->kind);
        jw_kstr(&w, "key", st->key);
        jw_kstr(&w, "state", stage_view_state(l, st));
        jw_kstr(&w, "log_dir", dir);
        jw_kint(&w, "attempts", st->nattempts);
        if (st->att)
            jw_kstr(&w, "current_log", st->att->log_path);
        jw_obj_end(&w);
        free(dir);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    return buf_steal(&b);
}

/* ===== loading and recovery ===== */

struct load_ctx {
    struct daemon *d;
    char *err;
    size_t errlen;
    int bad;
};

static int load_sweep(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dsweep *sw = xcalloc(1, sizeof(*sw));
    const char *settings = store_text(r, "settings");
    sw->id = xstrdup(store_text(r, "id"));
    sw->seq = store_i64(r, "seq");
    sw->name = xstrdup(store_text(r, "name"));
    sw->yaml_path = xstrdup(store_text(r, "yaml_path"));
    sw->base_model = xstrdup(store_text(r, "base_model"));
    sw->base_key = xstrdup(store_text(r, "base_key"));
    sw->base_size = store_i64(r, "base_size");
    sw->priority = (int)store_i64(r, "priority");
    sw->settings = xstrdup(settings ? settings : "{}");
    sw->created = store_f64(r, "created");
    sw->ended = store_null(r, "ended") ? 0 : store_f64(r, "ended");
    sched_sweep_add(lc->d, sw);
    return 0;
}

static int load_stage(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dstage *st = xcalloc(1, sizeof(*st));
    const char *dep = store_text(r, "dep"), *cls = store_text(r, "err_class");
    const char *msg = store_text(r, "err_msg");
    snprintf(st->key, sizeof(st->key), "%s", store_text(r, "key"));
    st->kind = xstrdup(store_text(r, "kind"));
    st->spec = xstrdup(store_text(r, "spec"));
    st->dep_key = dep ? xstrdup(dep) : NULL;
    st->input_dir = xstrdup(store_text(r, "input_dir"));
    st->produces_model = store_i64(r, "produces_model") != 0;
#define RES_GET_INT(r, n)                 (int)store_i64(r, n)
#define RES_GET_NUM(r, n)                 store_f64(r, n)
#define RES_GET_NUMPOS(r, n)              store_f64(r, n)
#define RES_GET_EXEC(r, n)                (int)store_i64(r, n)
#define RES_LOAD(name, type, lo, hi, def) st->res.name = RES_GET_##type(r, #name);
    LANES_RESOURCES(RES_LOAD)
#undef RES_LOAD
    st->state = dstage_state_parse(store_text(r, "state"));
    st->tries = (int)store_i64(r, "tries");
    st->err_class = cls ? fail_class_parse(cls) : FAIL_NONE;
    st->err_msg = msg ? xstrdup(msg) : NULL;
    st->size_bytes = store_null(r, "size_bytes") ? -1 : store_i64(r, "size_bytes");
    st->created = store_f64(r, "created");
    st->started = store_null(r, "started") ? 0 : store_f64(r, "started");
    st->ended = store_null(r, "ended") ? 0 : store_f64(r, "ended");
    sched_stage_add(lc->d, st);
    return 0;
}

static int load_lane(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dsweep *sw = hmap_get(&lc->d->sweeps, store_text(r, "sweep"));
    const char *grp = store_text(r, "grp");
    struct dlane *l;
    if (!sw) {
        lc->bad++;
        return 0;
    }
    l = xcalloc(1, sizeof(*l));
    l->sw = sw;
    l->id = xstrdup(store_text(r, "id"));
    l->idx = (int)store_i64(r, "idx");
    l->grp = grp ? xstrdup(grp) : NULL;
    l->baseline = store_i64(r, "baseline") != 0;
    l->cancelled = store_i64(r, "cancelled") != 0;
    sw->lanes = xrealloc(sw->lanes, (size_t)(sw->nlanes + 1) * sizeof(*sw->lanes));
    sw->lanes[sw->nlanes++] = l;
    return 0;
}

static int load_lane_stage(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dsweep *sw = hmap_get(&lc->d->sweeps, store_text(r, "sweep"));
    struct dlane *l = sw ? sched_lane_get(sw, store_text(r, "lane")) : NULL;
    struct dstage *st = hmap_get(&lc->d->stages, store_text(r, "key"));
    if (!l || !st) {
        lc->bad++;
        return 0;
    }
    sched_lane_add_stage(l, st, store_text(r, "name"), store_i64(r, "eval") != 0,
                         store_i64(r, "reused") != 0);
    return 0;
}

static int load_metric(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dstage *st = hmap_get(&lc->d->stages, store_text(r, "key"));
    if (st)
        proto_metrics_add(&st->metrics, store_text(r, "name"), store_f64(r, "value"));
    return 0;
}

static int load_attempt_hist(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dstage *st = hmap_get(&lc->d->stages, store_text(r, "key"));
    const char *state = store_text(r, "state"), *cls = store_text(r, "class");
    if (st)
        hist_add(st, store_i64(r, "id"), (int)store_i64(r, "n"),
                 state && !strcmp(state, attempt_state_name(ATT_DONE)),
                 cls ? fail_class_parse(cls) : FAIL_NONE, store_text(r, "msg"),
                 store_f64(r, "started"), store_f64(r, "ended"));
    return 0;
}

static int load_attempt_count(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    struct dstage *st = hmap_get(&lc->d->stages, store_text(r, "key"));
    int64_t max_id = store_i64(r, "max_id");
    if (st)
        st->nattempts = (int)store_i64(r, "n");
    if (max_id >= lc->d->next_attempt_id)
        lc->d->next_attempt_id = max_id + 1;
    return 0;
}

/* Finds processes of process group pgid whose environment names this attempt, and kills the
 * group. The environment check keeps a recycled pgid from hitting an unrelated process. */
static void kill_orphan_group(pid_t pgid, int64_t attempt)
{
    DIR *dir;
    struct dirent *de;
    char want[64];
    bool ours = false;
    if (pgid <= 1)
        return;
    snprintf(want, sizeof(want), "EXAQ_ATTEMPT=%lld", (long long)attempt);
    dir = opendir("/proc");
    if (!dir)
        return;
    while (!ours && (de = readdir(dir))) {
        pid_t pid = (pid_t)atoi(de->d_name);
        char path[64], *data = NULL;
        size_t len = 0;
        if (pid <= 0 || getpgid(pid) != pgid)
            continue;
        snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
        if (file_read_all(path, &data, &len) == 0) {
            for (size_t off = 0; off < len; off += strlen(data + off) + 1)
                if (!strcmp(data + off, want))
                    ours = true;
        }
        free(data);
    }
    closedir(dir);
    if (ours && kill(-pgid, SIGKILL) == 0)
        log_warn("killed orphaned process group %d of attempt %lld", (int)pgid, (long long)attempt);
}

static int recover_attempt(void *arg, const struct store_row *r)
{
    struct load_ctx *lc = arg;
    int64_t id = store_i64(r, "id");
    pid_t wpid = (pid_t)store_i64(r, "worker_pid");
    int64_t wstart = store_i64(r, "worker_start");
    pid_t pgid = (pid_t)store_i64(r, "pgid");

    if (!store_null(r, "slurm_name") && slurm_adopt(lc->d, r) == 0)
        return 0; /* a Slurm job outlives exaqd: polled again, not interrupted */
    if (!store_null(r, "pgid"))
        kill_orphan_group(pgid, id);
    if (wpid > 1 && wstart > 0 && proc_start_time(wpid) == wstart) {
        if (kill(wpid, SIGKILL) == 0)
            log_warn("killed orphaned worker %d of attempt %lld", (int)wpid, (long long)id);
    }
    {
        struct dstage *st = hmap_get(&lc->d->stages, store_text(r, "key"));
        double t = now_wall();
        const char *msg = "exaqd stopped while the attempt ran";
        store_exec(lc->d->store,
                   "UPDATE attempts SET state='interrupted', class='interrupted', msg=?, ended=? "
                   "WHERE id=?",
                   "sdi", msg, t, id);
        if (st)
            hist_add(st, id, (int)store_i64(r, "n"), false, FAIL_INTERRUPTED, msg,
                     store_f64(r, "started"), t);
    }
    return 0;
}

static void remove_stale_tmp(struct daemon *d)
{
    char *dir = xasprintf("%s/artifacts", d->home);
    DIR *dp = opendir(dir);
    struct dirent *de;
    if (dp) {
        while ((de = readdir(dp))) {
            if (strstr(de->d_name, ".tmp-") && !slurm_owns_tmp(d, de->d_name)) {
                char *p = path_join(dir, de->d_name);
                rm_rf(p);
                free(p);
            }
        }
        closedir(dp);
    }
    free(dir);
}

/* ", retries, timeout_min, ...": the resource columns of the stages table (LANES_RESOURCES). */
#define RES_COL(name, type, lo, hi, def) ", " #name

int sched_load(struct daemon *d, char *err, size_t errlen)
{
    struct load_ctx lc = { d, err, errlen, 0 };
    int rc = 0;

    rc |= store_query_sync(d->store,
                           "SELECT id, seq, name, yaml_path, base_model, base_key, base_size, "
                           "priority, settings, created, ended FROM sweeps ORDER BY seq",
                           load_sweep, &lc, err, errlen);
    rc |= store_query_sync(d->store,
                           "SELECT key, kind, spec, dep, input_dir, produces_model" LANES_RESOURCES(
                               RES_COL) ", state, tries, err_class, err_msg, size_bytes, created, "
                                        "started, ended FROM stages",
                           load_stage, &lc, err, errlen);
    rc |= store_query_sync(d->store,
                           "SELECT sweep, id, idx, grp, baseline, cancelled FROM lanes "
                           "ORDER BY sweep, idx",
                           load_lane, &lc, err, errlen);
    rc |= store_query_sync(d->store,
                           "SELECT sweep, lane, pos, name, key, eval, reused FROM lane_stages "
                           "ORDER BY sweep, lane, pos",
                           load_lane_stage, &lc, err, errlen);
    rc |= store_query_sync(d->store, "SELECT key, name, value FROM metrics", load_metric, &lc, err,
                           errlen);
    rc |= store_query_sync(d->store,
                           "SELECT key, COUNT(*) AS n, MAX(id) AS max_id FROM attempts "
                           "GROUP BY key",
                           load_attempt_count, &lc, err, errlen);
    rc |= store_query_sync(d->store,
                           "SELECT id, key, n, state, class, msg, started, ended FROM attempts "
                           "WHERE state != 'running' ORDER BY id",
                           load_attempt_hist, &lc, err, errlen);
    if (rc)
        return -1;
    if (lc.bad)
        log_warn("database: %d lane rows refer to missing sweeps or stages (ignored)", lc.bad);
    /* Resolve producers. */
    for (size_t i = 0; i < d->stages.cap; i++) {
        struct dstage *st;
        if (!d->stages.keys[i])
            continue;
        st = d->stages.vals[i];
        if (st->dep_key)
            st->dep = hmap_get(&d->stages, st->dep_key);
    }
    /* Recover attempts that were running when the previous exaqd died. */
    if (store_query_sync(d->store,
                         "SELECT a.id AS id, a.key AS key, worker_pid, worker_start, pgid, n, "
                         "started, log, s.name AS slurm_name, s.job_id AS slurm_job, s.state AS "
                         "slurm_state FROM attempts a LEFT JOIN slurm_jobs s ON s.attempt = a.id "
                         "WHERE a.state='running'",
                         recover_attempt, &lc, err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < d->stages.cap; i++) {
        struct dstage *st;
        if (!d->stages.keys[i])
            continue;
        st = d->stages.vals[i];
        if (st->state == DSTAGE_RUNNING && !st->att)
            sched_stage_set(d, st,
                            &(struct stage_change){ .to = DSTAGE_PENDING, .keep_error = true },
                            "%s was running when exaqd stopped: re-queued", st->kind);
    }
    remove_stale_tmp(d);
    for (int i = 0; i < d->nsweeps; i++)
        for (int k = 0; k < d->sweep_list[i]->nlanes; k++)
            d->sweep_list[i]->lanes[k]->last_state = sched_lane_state(d->sweep_list[i]->lanes[k]);
    return 0;
}

/* ===== a submit whose rows could not be committed (submit.c) ===== */

void sched_sweep_discard(struct daemon *d, struct dsweep *sw)
{
    int k = 0;
    hmap_put(&d->sweeps, sw->id, NULL); /* hmap has no delete: a NULL value reads as absent */
    for (int i = 0; i < d->nsweeps; i++)
        if (d->sweep_list[i] != sw)
            d->sweep_list[k++] = d->sweep_list[i];
    d->nsweeps = k;
    for (int i = 0; i < sw->nlanes; i++) {
        struct dlane *l = sw->lanes[i];
        for (int p = 0; p < l->n; p++) {
            struct dstage *st = l->st[p];
            int n = 0;
            for (int r = 0; r < st->nrefs; r++)
                if (st->refs[r].lane != l)
                    st->refs[n++] = st->refs[r];
            st->nrefs = n;
        }
    }
    sweep_free(sw);
}
