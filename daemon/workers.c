/*
 * workers: worker slots and their exaq-worker processes.
 *
 * One slot per GPU (or one CPU slot). Each slot has at most one worker process, spawned with
 * uv_spawn in its own session, which connects back over the socket and says hello. A slot
 * runs one attempt at a time. The daemon learns of a dead worker from libuv's exit callback;
 * the attempt it ran fails as `lost` (or as the reason the daemon had asked it to stop), the
 * command's process group is killed, and the slot is respawned with a backoff. A worker that
 * stays silent past the heartbeat grace is killed. A slot whose attempts fail as lost, oom or
 * timeout K times in a row is quarantined for a while. Loop thread only; nothing blocks.
 */
#include "daemon/exaqd.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "daemon/store.h"

int64_t proc_start_time(pid_t pid)
{
    char path[64], *data = NULL, *p;
    int64_t v = -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (file_read_all(path, &data, NULL) < 0)
        return -1;
    p = strrchr(data, ')');
    if (p) {
        /* Fields after ')' start at field 3 (state); starttime is field 22. */
        int field = 2;
        for (char *q = p + 1; *q; q++) {
            if (*q == ' ') {
                field++;
                if (field == 22) {
                    v = strtoll(q + 1, NULL, 10);
                    break;
                }
            }
        }
    }
    free(data);
    return v;
}

/* Counts CUDA devices through the driver API, loaded at run time so exaqd needs no CUDA. */
int workers_detect_gpus(double *mem_gb, int max)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    int (*init)(unsigned);
    int (*count)(int *);
    int (*get)(int *, int);
    int (*total)(size_t *, int);
    int n = 0;
    if (!h)
        return 0;
    *(void **)&init = dlsym(h, "cuInit");
    *(void **)&count = dlsym(h, "cuDeviceGetCount");
    *(void **)&get = dlsym(h, "cuDeviceGet");
    *(void **)&total = dlsym(h, "cuDeviceTotalMem_v2");
    if (!init || !count || init(0) != 0 || count(&n) != 0)
        n = 0;
    for (int i = 0; mem_gb && i < n && i < max; i++) {
        int dev = 0;
        size_t bytes = 0;
        mem_gb[i] = 0;
        if (get && total && get(&dev, i) == 0 && total(&bytes, dev) == 0)
            mem_gb[i] = (double)bytes / 1e9;
    }
    dlclose(h);
    return n;
}

double workers_max_gpu_gb(const struct daemon *d)
{
    double m = 0;
    for (int i = 0; i < d->nslots; i++)
        m = EXAQ_MAX(m, d->slots[i].gpu_total_gb);
    return m;
}

static void spawn_worker(struct daemon *d, struct slot *s);

static void on_proc_closed(uv_handle_t *h)
{
    free(h);
}

static void release_slot(struct slot *s)
{
    s->att = NULL;
    if (s->state == SLOT_BUSY)
        s->state = SLOT_IDLE;
}

static void unreserve(struct daemon *d, struct slot *owner)
{
    for (int i = 0; i < d->nslots; i++)
        if (d->slots[i].reserved_by == owner)
            d->slots[i].reserved_by = NULL;
}

static void note_failure(struct daemon *d, struct slot *s, enum fail_class c)
{
    if (fail_class_retried(c)) {
        s->consecutive_failures++;
        if (s->consecutive_failures >= d->quarantine_after) {
            s->quarantine_until_mono = now_mono() + d->quarantine_s;
            log_warn("slot %d: %d failures in a row; quarantined for %.0fs", s->idx,
                     s->consecutive_failures, d->quarantine_s);
            s->consecutive_failures = 0;
            if (s->pid > 0 && !s->kill_sent) {
                kill(s->pid, SIGKILL);
                s->kill_sent = true;
            }
        }
    } else if (c == FAIL_NONE) {
        s->consecutive_failures = 0;
    }
}

/* ===== removing a lost attempt's partial output (on the thread pool: it may be gigabytes) ===== */

struct rm_job {
    uv_work_t req;
    char *path;
};

static void rm_work(uv_work_t *req)
{
    struct rm_job *r = req->data;
    int rc = rm_rf(r->path);
    if (rc < 0 && rc != -ENOENT)
        log_warn("cannot remove '%s': %s", r->path, strerror(-rc));
}

static void rm_after(uv_work_t *req, int status)
{
    struct rm_job *r = req->data;
    (void)status;
    free(r->path);
    free(r);
}

/* The worker of a lost attempt never cleaned its artifacts/<key>.tmp-<id>/: remove it now (a
 * restart or `exaqctl gc` removes it too, should this not run). */
static void remove_attempt_tmp(struct daemon *d, const struct attempt *a)
{
    struct rm_job *r = xcalloc(1, sizeof(*r));
    r->req.data = r;
    r->path = xasprintf("%s/artifacts/%s.tmp-%lld", d->home, a->st->key, (long long)a->id);
    if (uv_queue_work(d->loop, &r->req, rm_work, rm_after) < 0) {
        free(r->path);
        free(r);
    }
}

static void on_worker_exit(uv_process_t *p, int64_t status, int sig)
{
    struct slot *s = p->data;
    struct daemon *d = (struct daemon *)p->loop->data;
    struct attempt *a = s->att;
    double lived = now_mono() - s->spawned_mono;

    log_info("slot %d: worker %d exited (status %lld, signal %d)", s->idx, (int)s->pid,
             (long long)status, sig);
    uv_close((uv_handle_t *)p, on_proc_closed);
    s->proc = NULL;
    s->pid = 0;
    s->pid_start = 0;
    s->kill_sent = false;
    if (s->conn) {
        struct conn *c = s->conn;
        s->conn = NULL;
        c->slot = NULL;
        server_close_conn(c);
    }
    if (a) {
        enum fail_class c = a->cancel_class != FAIL_NONE ? a->cancel_class : FAIL_LOST;
        char *msg = sig ? xasprintf("worker killed by signal %d (%s)", sig, strsignal(sig))
                        : xasprintf("worker exited with status %lld", (long long)status);
        if (a->pgid > 0)
            kill(-a->pgid, SIGKILL);
        remove_attempt_tmp(d, a);
        s->att = NULL;
        unreserve(d, s);
        note_failure(d, s, c);
        sched_attempt_failed(d, a, c, msg);
        free(msg);
        free(a->what);
        free(a->last_line);
        free(a->log_path);
        free(a);
    }
    s->state = s->quarantine_until_mono > now_mono() ? SLOT_QUARANTINED : SLOT_DOWN;
    s->backoff_s = lived > 10 ? 1 : EXAQ_MIN(30, EXAQ_MAX(1, s->backoff_s * 2));
    s->respawn_at_mono = now_mono() + (lived > 10 ? 0 : s->backoff_s);
    if (d->shutting_down)
        daemon_maybe_exit(d);
}

static void spawn_worker(struct daemon *d, struct slot *s)
{
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    char slotbuf[16], hb[32], devbuf[32], thbuf[40];
    char *args[12];
    char **env;
    extern char **environ;
    int n = 0, ne = 0, rc;

    memset(&opt, 0, sizeof(opt));
    snprintf(slotbuf, sizeof(slotbuf), "%d", s->idx);
    args[n++] = d->worker_bin;
    args[n++] = "serve";
    args[n++] = "--home";
    args[n++] = d->home;
    args[n++] = "--socket";
    args[n++] = d->sock_path;
    args[n++] = "--slot";
    args[n++] = slotbuf;
    args[n++] = "--backend";
    args[n++] = s->device >= 0 ? "cuda" : "cpu";
    args[n] = NULL;
    for (char **e = environ; *e; e++)
        ne++;
    env = xcalloc((size_t)ne + 5, sizeof(char *));
    ne = 0;
    for (char **e = environ; *e; e++)
        if (!str_starts_with(*e, "CUDA_VISIBLE_DEVICES=") &&
            !str_starts_with(*e, "EXAQ_HEARTBEAT_S="))
            env[ne++] = *e;
    snprintf(hb, sizeof(hb), "EXAQ_HEARTBEAT_S=%g", d->hb_interval_s);
    env[ne++] = hb;
    if (!getenv("EXAQ_THREADS")) {
        /* The slots share the CPUs: each worker's compute threads get an equal part, so N
         * slots never run N x ncpu threads (an EXAQ_THREADS of the daemon's passes through). */
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(thbuf, sizeof(thbuf), "EXAQ_THREADS=%ld",
                 EXAQ_MAX(1, (ncpu > 0 ? ncpu : 1) / d->nslots));
        env[ne++] = thbuf;
    }
    if (s->device >= 0) {
        snprintf(devbuf, sizeof(devbuf), "CUDA_VISIBLE_DEVICES=%d", s->device);
        env[ne++] = devbuf;
    }
    env[ne] = NULL;
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_IGNORE;
    stdio[2].flags = UV_IGNORE;
    opt.file = d->worker_bin;
    opt.args = args;
    opt.env = env;
    opt.exit_cb = on_worker_exit;
    opt.flags = UV_PROCESS_DETACHED; /* own session: terminal signals do not reach it */
    opt.stdio_count = 3;
    opt.stdio = stdio;
    s->proc = xcalloc(1, sizeof(*s->proc));
    s->proc->data = s;
    rc = uv_spawn(d->loop, s->proc, &opt);
    free(env);
    if (rc < 0) {
        log_error("slot %d: cannot start worker '%s': %s", s->idx, d->worker_bin, uv_strerror(rc));
        uv_close((uv_handle_t *)s->proc, on_proc_closed);
        s->proc = NULL;
        s->state = SLOT_DOWN;
        s->backoff_s = EXAQ_MIN(30, EXAQ_MAX(1, s->backoff_s * 2));
        s->respawn_at_mono = now_mono() + s->backoff_s;
        return;
    }
    s->pid = s->proc->pid;
    s->pid_start = proc_start_time(s->pid);
    s->state = SLOT_STARTING;
    s->spawned_mono = now_mono();
    s->kill_sent = false;
    log_info("slot %d: started worker %d (%s)", s->idx, (int)s->pid, args[9]);
}

int workers_init(struct daemon *d, int nslots, char *err, size_t errlen)
{
    int ngpu = 0;
    double mem_gb[256] = { 0 };
    if (strcmp(d->backend, "cpu") != 0)
        ngpu = workers_detect_gpus(mem_gb, 256);
    if (!strcmp(d->backend, "cuda") && ngpu == 0) {
        snprintf(err, errlen, "--backend cuda: no CUDA device found (is the driver loaded?)");
        return -1;
    }
    d->gpu_slots = ngpu > 0;
    if (nslots <= 0)
        nslots = ngpu > 0 ? ngpu : 1;
    d->nslots = nslots;
    d->slots = xcalloc((size_t)nslots, sizeof(*d->slots));
    d->loop->data = d;
    for (int i = 0; i < nslots; i++) {
        struct slot *s = &d->slots[i];
        s->idx = i;
        s->device = ngpu > 0 ? i % ngpu : -1;
        s->gpu_total_gb = s->device >= 0 && s->device < 256 ? mem_gb[s->device] : 0;
        s->gpu_free_gb = -1;
        s->backoff_s = 1;
        spawn_worker(d, s);
    }
    log_info("%d worker slot(s), %s", nslots, ngpu > 0 ? "CUDA" : "CPU");
    return 0;
}

int workers_hello(struct daemon *d, struct conn *c, struct proto_msg *m, char *err, size_t errlen)
{
    const struct pm_hello *h = &m->u.hello;
    struct slot *s;
    struct proto_msg r;
    if (h->slot < 0 || h->slot >= d->nslots) {
        snprintf(err, errlen, "no worker slot %lld", (long long)h->slot);
        return -1;
    }
    s = &d->slots[h->slot];
    if (s->state != SLOT_STARTING || s->pid != (pid_t)h->pid || c->peer_pid != s->pid) {
        snprintf(err, errlen, "slot %lld did not spawn pid %lld", (long long)h->slot,
                 (long long)h->pid);
        return -1;
    }
    if (strcmp(h->version, EXAQ_VERSION) != 0)
        log_warn("slot %d: worker version %s differs from exaqd %s", s->idx, h->version,
                 EXAQ_VERSION);
    c->slot = s;
    s->conn = c;
    s->state = SLOT_IDLE;
    s->last_seen_mono = now_mono();
    free(s->backend);
    s->backend = xstrdup(h->backend);
    free(s->gpu_name);
    s->gpu_name = h->has_gpu_name ? xstrdup(h->gpu_name) : NULL;
    if (h->has_gpu_mem_mb)
        s->gpu_total_gb = (double)h->gpu_mem_mb * 1048576.0 / 1e9;
    s->gpu_free_gb = h->has_gpu_free_mb ? (double)h->gpu_free_mb * 1048576.0 / 1e9 : -1;
    s->threads = h->has_threads ? (int)h->threads : 0;
    proto_msg_init(&r, PROTO_T_hello_r);
    r.u.hello_r.slot = s->idx;
    r.u.hello_r.has_slot = true;
    r.u.hello_r.heartbeat_s = d->hb_interval_s;
    r.u.hello_r.has_heartbeat_s = true;
    server_reply(c, &r);
    log_info("slot %d: worker %d ready (%s%s%s)", s->idx, (int)s->pid, s->backend,
             s->gpu_name ? ", " : "", s->gpu_name ? s->gpu_name : "");
    if (d->shutting_down) {
        struct proto_msg x;
        proto_msg_init(&x, PROTO_T_exit);
        server_reply(c, &x);
    }
    sched_kick(d);
    return 0;
}

/*
 * The lane a job runs for: a live lane that needs the stage, of the newest such sweep (the
 * sweep that re-queued it). Its sweep gives the working directory and, for a stage on the base
 * model, the input dir.
 */
static struct dlane *job_lane(const struct dstage *st, int *pos)
{
    struct dlane *best = NULL;
    *pos = 0;
    for (int i = 0; i < st->nrefs; i++) {
        struct dlane *l = st->refs[i].lane;
        enum lane_state ls = sched_lane_state(l);
        if (ls == LANE_CANCELLED || ls == LANE_FAILED || l->sw->uncommitted)
            continue;
        if (!best || l->sw->seq > best->sw->seq) {
            best = l;
            *pos = st->refs[i].pos;
        }
    }
    if (!best && st->nrefs) {
        best = st->refs[0].lane;
        *pos = st->refs[0].pos;
    }
    return best;
}

/*
 * The input dir of a stage, resolved from its key at dispatch: the producer's artifact, or the
 * base model of the sweep the job runs for. Never a path remembered from the sweep that first
 * created the stage: that dir may since have changed or gone, while every sweep that needs the
 * stage had the same content (the key covers it) when it was submitted. New string.
 */
static char *job_input_dir(const struct daemon *d, const struct dstage *st, const struct dlane *l)
{
    if (st->dep_key)
        return xasprintf("%s/artifacts/%s/model", d->home, st->dep_key);
    if (l && l->sw->base_model)
        return xstrdup(l->sw->base_model);
    return xstrdup(st->input_dir);
}

void workers_job_msg(struct daemon *d, struct attempt *a, const char *devs, struct proto_msg *m,
                     struct dlane **lane)
{
    struct dstage *st = a->st;
    struct pm_job *j = &m->u.job;
    struct dlane *l;
    int pos = 0;

    proto_msg_init(m, PROTO_T_job);
    j->attempt = a->id;
    j->has_attempt = true;
    proto_set_str(&j->key, &j->has_key, st->key);
    proto_set_str(&j->kind, &j->has_kind, st->kind);
    proto_set_str(&j->spec, &j->has_spec, st->spec);
    l = job_lane(st, &pos);
    *lane = l;
    j->input = job_input_dir(d, st, l);
    j->has_input = true;
    j->stage_dir = xasprintf("%s/artifacts/%s.tmp-%lld", d->home, st->key, (long long)a->id);
    j->has_stage_dir = true;
    j->final_dir = xasprintf("%s/artifacts/%s", d->home, st->key);
    j->has_final_dir = true;
    proto_set_str(&j->log, &j->has_log, a->log_path);
    j->produces_model = st->produces_model;
    j->has_produces_model = true;
    j->timeout_s = st->res.timeout_min * 60.0;
    j->has_timeout_s = true;
    if (devs[0])
        proto_set_str(&j->devices, &j->has_devices, devs);
    if (l) {
        char *cwd = path_dirname(l->sw->yaml_path);
        proto_set_str(&j->cwd, &j->has_cwd, cwd);
        free(cwd);
        proto_set_str(&j->sweep, &j->has_sweep, l->sw->id);
        proto_set_str(&j->lane, &j->has_lane, l->id);
        proto_set_str(&j->stage, &j->has_stage, l->names[pos]);
        if (l->sw->base_model)
            proto_set_str(&j->baseline, &j->has_baseline, l->sw->base_model);
    }
}

bool workers_dispatch(struct daemon *d, struct slot *s, struct dstage *st, struct slot **extra,
                      int nextra)
{
    struct attempt *a;
    struct proto_msg m;
    struct dlane *l;
    char devs[256] = "";

    if (!s->conn)
        return false;
    a = xcalloc(1, sizeof(*a));
    a->id = d->next_attempt_id++;
    a->st = st;
    a->n = ++st->nattempts;
    a->slot = s;
    a->worker_pid = s->pid;
    a->started = now_wall();
    a->started_mono = now_mono();
    a->log_path = xasprintf("%s/logs/%s/attempt-%lld.log", d->home, st->key, (long long)a->id);
    if (s->device >= 0) {
        size_t off = (size_t)snprintf(devs, sizeof(devs), "%d", s->device);
        for (int i = 0; i < nextra && off < sizeof(devs); i++)
            off += (size_t)snprintf(devs + off, sizeof(devs) - off, ",%d", extra[i]->device);
    }

    workers_job_msg(d, a, devs, &m, &l);
    server_reply(s->conn, &m);
    proto_msg_release(&m);

    s->state = SLOT_BUSY;
    s->att = a;
    for (int i = 0; i < nextra; i++)
        extra[i]->reserved_by = s;
    st->att = a;
    store_exec(
        d->store,
        "INSERT INTO attempts(id, key, n, slot, worker_pid, worker_start, state, started, log) "
        "VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
        "isiiiids", a->id, st->key, (int64_t)a->n, (int64_t)s->idx, (int64_t)s->pid, s->pid_start,
        a->started, a->log_path);
    sched_stage_set(d, st,
                    &(struct stage_change){
                        .to = DSTAGE_RUNNING, .keep_error = true, .t = a->started, .lane = l },
                    "%s attempt %d started on slot %d", st->kind, a->n, s->idx);
    return true;
}

void workers_cancel_attempt(struct daemon *d, struct attempt *a, enum fail_class why)
{
    struct proto_msg m;
    (void)d;
    if (!a->slot || a->cancel_class != FAIL_NONE)
        return;
    a->cancel_class = why;
    a->cancel_sent_mono = now_mono();
    if (!a->slot->conn)
        return;
    proto_msg_init(&m, PROTO_T_cancel_job);
    m.u.cancel_job.attempt = a->id;
    m.u.cancel_job.has_attempt = true;
    proto_set_str(&m.u.cancel_job.reason, &m.u.cancel_job.has_reason, fail_class_name(why));
    server_reply(a->slot->conn, &m);
    proto_msg_release(&m);
}

static void finish_attempt(struct daemon *d, struct slot *s, struct attempt *a)
{
    (void)d;
    release_slot(s);
    unreserve(d, s);
    free(a->what);
    free(a->last_line);
    free(a->log_path);
    free(a);
    if (d->shutting_down && s->conn) {
        struct proto_msg x;
        proto_msg_init(&x, PROTO_T_exit);
        server_reply(s->conn, &x);
    }
}

void workers_on_msg(struct daemon *d, struct conn *c, struct proto_msg *m)
{
    struct slot *s = c->slot;
    struct attempt *a = s->att;
    int64_t id = -1;

    s->last_seen_mono = now_mono();
    switch (m->type) {
    case PROTO_T_heartbeat:
        /* An idle CUDA worker reports its device's free memory (docs/lanes.md: gpu_mem_gb). */
        if (m->u.heartbeat.has_gpu_free_mb)
            s->gpu_free_gb = (double)m->u.heartbeat.gpu_free_mb * 1048576.0 / 1e9;
        return;
    case PROTO_T_started:
        id = m->u.started.attempt;
        break;
    case PROTO_T_progress:
        id = m->u.progress.attempt;
        break;
    case PROTO_T_log:
        id = m->u.log.attempt;
        break;
    case PROTO_T_metrics:
        id = m->u.metrics.attempt;
        break;
    case PROTO_T_done:
        id = m->u.done.attempt;
        break;
    case PROTO_T_failed:
        id = m->u.failed.attempt;
        break;
    default:
        log_warn("slot %d: unexpected '%s' from worker", s->idx, proto_type_wire(m->type));
        return;
    }
    if (!a || a->id != id) {
        log_warn("slot %d: '%s' for attempt %lld, which it is not running", s->idx,
                 proto_type_wire(m->type), (long long)id);
        return;
    }
    switch (m->type) {
    case PROTO_T_started:
        if (m->u.started.has_pgid)
            sched_attempt_pgid(d, a, (pid_t)m->u.started.pgid);
        break;
    case PROTO_T_progress:
        sched_attempt_progress(d, a, m->u.progress.done, m->u.progress.total,
                               m->u.progress.has_what ? m->u.progress.what : NULL);
        break;
    case PROTO_T_log:
        free(a->last_line);
        a->last_line = xstrndup(m->u.log.line, EXAQ_MIN(strlen(m->u.log.line), 300));
        break;
    case PROTO_T_metrics:
        for (size_t i = 0; i < m->u.metrics.metrics.n; i++)
            proto_metrics_add(&a->st->metrics, m->u.metrics.metrics.names[i],
                              m->u.metrics.metrics.values[i]);
        break;
    case PROTO_T_done:
        s->att = NULL;
        note_failure(d, s, FAIL_NONE);
        sched_attempt_done(d, a, &m->u.done.metrics,
                           m->u.done.has_size_bytes ? m->u.done.size_bytes : -1);
        finish_attempt(d, s, a);
        sched_kick(d);
        break;
    case PROTO_T_failed: {
        enum fail_class fc = fail_class_parse(m->u.failed.class);
        if (a->cancel_class != FAIL_NONE && (fc == FAIL_CANCELLED || fc == FAIL_ERROR))
            fc = a->cancel_class;
        else if (fc == FAIL_INTERRUPTED || fc == FAIL_NONE)
            fc = FAIL_ERROR;
        s->att = NULL;
        note_failure(d, s, fc);
        sched_attempt_failed(d, a, fc, m->u.failed.msg);
        finish_attempt(d, s, a);
        sched_kick(d);
        break;
    }
    default:
        break;
    }
}

void workers_on_conn_closed(struct daemon *d, struct conn *c)
{
    struct slot *s = c->slot;
    (void)d;
    if (!s)
        return;
    s->conn = NULL;
    /* A worker that loses its connection exits by itself; workers_tick kills it if it has not
     * after a short grace. The exit callback fails its attempt. */
    s->conn_lost_mono = now_mono();
}

static void kill_slot(struct slot *s, const char *why)
{
    if (s->pid <= 0 || s->kill_sent)
        return;
    log_warn("slot %d: killing worker %d: %s", s->idx, (int)s->pid, why);
    if (s->att && s->att->pgid > 0)
        kill(-s->att->pgid, SIGKILL);
    kill(s->pid, SIGKILL);
    s->kill_sent = true;
}

void workers_tick(struct daemon *d)
{
    double now = now_mono();
    for (int i = 0; i < d->nslots; i++) {
        struct slot *s = &d->slots[i];
        struct attempt *a = s->att;
        switch (s->state) {
        case SLOT_DOWN:
            if (!d->shutting_down && now >= s->respawn_at_mono)
                spawn_worker(d, s);
            break;
        case SLOT_QUARANTINED:
            if (now >= s->quarantine_until_mono) {
                log_info("slot %d: quarantine over", s->idx);
                s->state = SLOT_DOWN;
                s->respawn_at_mono = now;
            }
            break;
        case SLOT_STARTING:
            if (now - s->spawned_mono > d->hb_grace_s)
                kill_slot(s, "no hello within the heartbeat grace");
            break;
        case SLOT_IDLE:
        case SLOT_BUSY:
            if (!s->conn && s->pid > 0 && now - s->conn_lost_mono > 5) {
                kill_slot(s, "connection closed but the process did not exit");
            } else if (s->conn && now - s->last_seen_mono > d->hb_grace_s) {
                char why[96];
                snprintf(why, sizeof(why), "silent for %.0fs (heartbeat grace %.0fs)",
                         now - s->last_seen_mono, d->hb_grace_s);
                kill_slot(s, why);
            }
            break;
        }
        if (!a)
            continue;
        if (a->cancel_class == FAIL_NONE && a->st->res.timeout_min > 0 &&
            now - a->started_mono > a->st->res.timeout_min * 60.0) {
            log_warn("attempt %lld of %.12s passed its timeout of %g min", (long long)a->id,
                     a->st->key, a->st->res.timeout_min);
            workers_cancel_attempt(d, a, FAIL_TIMEOUT);
        } else if (a->cancel_class != FAIL_NONE && now - a->cancel_sent_mono > d->kill_grace_s) {
            kill_slot(s, "did not stop after cancel");
        }
    }
}

void workers_shutdown(struct daemon *d)
{
    for (int i = 0; i < d->nslots; i++) {
        struct slot *s = &d->slots[i];
        if (s->att && !d->drain)
            workers_cancel_attempt(d, s->att, FAIL_INTERRUPTED);
        if (!s->att && s->conn) {
            struct proto_msg x;
            proto_msg_init(&x, PROTO_T_exit);
            server_reply(s->conn, &x);
        }
        if (s->state == SLOT_STARTING)
            kill_slot(s, "shutting down");
    }
}

bool workers_all_exited(const struct daemon *d)
{
    for (int i = 0; i < d->nslots; i++)
        if (d->slots[i].proc)
            return false;
    return true;
}
