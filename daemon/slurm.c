/*
 * slurm: stages as Slurm batch jobs (see slurm.h and docs/slurm.md).
 *
 * Life of a Slurm attempt:
 *   1. dispatch: the attempt row and its slurm_jobs row (job name, no id) are queued and the
 *      stage goes running; sbatch starts only once store_barrier says they are committed.
 *   2. sbatch --parsable reads the batch script on stdin; its answer is the job id, recorded
 *      at once.
 *   3. every poll interval one squeue lists our jobs by name. A job in a terminal state, or one
 *      that left the queue, is resolved: sacct for its final state when squeue no longer knows
 *      it, then the outcome file the worker wrote in HOME/slurm/.
 *   4. on restart, running attempts with a slurm_jobs row are adopted (sched_load) and polled
 *      like new ones; one whose sbatch never answered is looked up by its name, and when Slurm
 *      has no such job after a grace period it was never submitted: the attempt is marked
 *      interrupted and the stage submitted again under a new attempt (and a new name).
 */
#include "daemon/slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/log.h"
#include "common/util.h"

/* A Slurm job that left squeue is looked up with sacct; when neither knows it after this many
 * polls (and the grace below), it is resolved from its files alone. */
#define SLURM_MISSING_POLLS 2
/* A re-adopted attempt whose sbatch never answered: how long Slurm may take to list it. */
#define SLURM_NAME_GRACE_S 10.0

struct slurm_att {
    struct slurm *sl;
    struct attempt *a;
    char *name;
    int64_t job_id;  /* 0 until sbatch answered (or squeue named it) */
    char *state;     /* last Slurm state seen, or NULL */
    bool submitting; /* sbatch running */
    bool resolving;  /* sacct or the outcome read in flight */
    bool scancel_wanted;
    int missing;       /* polls in a row that did not list it */
    double since_mono; /* submitted or adopted */
    struct slurm_att *next;
};

struct slurm {
    struct daemon *d;
    uv_timer_t timer;
    bool timer_on;
    double poll_s;
    bool polling; /* squeue in flight */
    struct slurm_att *atts;
    char *dir; /* HOME/slurm */
};

/* ===== child processes ===== */

struct child {
    uv_process_t proc;
    uv_pipe_t in, out, err;
    struct buf obuf, ebuf;
    char *input;
    uv_write_t wreq;
    int open;       /* handles not yet closed */
    int64_t status; /* exit status, or -1 when killed by a signal or not started */
    void (*cb)(void *arg, int64_t status, const char *out, const char *err);
    void *arg;
};

static void child_maybe_done(struct child *c)
{
    if (--c->open > 0)
        return;
    c->cb(c->arg, c->status, buf_cstr(&c->obuf), buf_cstr(&c->ebuf));
    buf_release(&c->obuf);
    buf_release(&c->ebuf);
    free(c->input);
    free(c);
}

static void child_closed(uv_handle_t *h)
{
    child_maybe_done(h->data);
}

static void child_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    b->base = xmalloc(hint);
    b->len = hint;
}

static void child_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct child *c = s->data;
    if (n > 0) {
        struct buf *dst = s == (uv_stream_t *)&c->out ? &c->obuf : &c->ebuf;
        if (dst->len < (1u << 20))
            buf_append(dst, b->base, (size_t)n);
    }
    free(b->base);
    if (n < 0)
        uv_close((uv_handle_t *)s, child_closed);
}

static void child_exit(uv_process_t *p, int64_t status, int sig)
{
    struct child *c = p->data;
    c->status = sig ? -1 : status;
    uv_close((uv_handle_t *)p, child_closed);
}

static void child_written(uv_write_t *w, int status)
{
    struct child *c = w->data;
    (void)status;
    uv_close((uv_handle_t *)&c->in, child_closed);
}

/* Runs argv (PATH lookup) with input on stdin (NULL: empty); cb gets the exit status and what
 * it printed. A command that cannot start reports status -1 and the reason as stderr. */
static void child_run(struct daemon *d, char **argv, const char *input,
                      void (*cb)(void *, int64_t, const char *, const char *), void *arg)
{
    struct child *c = xcalloc(1, sizeof(*c));
    uv_process_options_t o;
    uv_stdio_container_t io[3];
    int rc;
    buf_init(&c->obuf);
    buf_init(&c->ebuf);
    c->cb = cb;
    c->arg = arg;
    c->status = -1;
    c->input = xstrdup(input ? input : "");
    uv_pipe_init(d->loop, &c->in, 0);
    uv_pipe_init(d->loop, &c->out, 0);
    uv_pipe_init(d->loop, &c->err, 0);
    c->in.data = c->out.data = c->err.data = c->proc.data = c;
    memset(&o, 0, sizeof(o));
    io[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    io[0].data.stream = (uv_stream_t *)&c->in;
    io[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    io[1].data.stream = (uv_stream_t *)&c->out;
    io[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    io[2].data.stream = (uv_stream_t *)&c->err;
    o.file = argv[0];
    o.args = argv;
    o.stdio = io;
    o.stdio_count = 3;
    o.exit_cb = child_exit;
    rc = uv_spawn(d->loop, &c->proc, &o);
    c->open = 3;
    if (rc < 0) {
        char *msg = xasprintf("cannot run %s: %s", argv[0], uv_strerror(rc));
        buf_append(&c->ebuf, msg, strlen(msg));
        free(msg);
        c->open = 3;
        uv_close((uv_handle_t *)&c->in, child_closed);
        uv_close((uv_handle_t *)&c->out, child_closed);
        uv_close((uv_handle_t *)&c->err, child_closed);
        return;
    }
    c->open = 4;
    uv_read_start((uv_stream_t *)&c->out, child_alloc, child_read);
    uv_read_start((uv_stream_t *)&c->err, child_alloc, child_read);
    {
        uv_buf_t b = uv_buf_init(c->input, (unsigned)strlen(c->input));
        c->wreq.data = c;
        if (uv_write(&c->wreq, (uv_stream_t *)&c->in, &b, 1, child_written) < 0)
            uv_close((uv_handle_t *)&c->in, child_closed);
    }
}

/* ===== states ===== */

/* ===== bookkeeping ===== */

static void att_unlink(struct slurm *sl, struct slurm_att *x)
{
    for (struct slurm_att **p = &sl->atts; *p; p = &(*p)->next)
        if (*p == x) {
            *p = x->next;
            break;
        }
}

static void att_free(struct attempt *a)
{
    struct slurm_att *x = a->slurm;
    if (x) {
        free(x->name);
        free(x->state);
        free(x);
    }
    free(a->what);
    free(a->last_line);
    free(a->log_path);
    free(a);
}

static char *outcome_path(const struct slurm *sl, const struct slurm_att *x)
{
    return xasprintf("%s/%s.outcome", sl->dir, x->name);
}

static void set_state(struct slurm *sl, struct slurm_att *x, const char *state)
{
    if (x->state && !strcmp(x->state, state))
        return;
    free(x->state);
    x->state = xstrdup(state);
    store_exec(sl->d->store, "UPDATE slurm_jobs SET state=?, job_id=NULLIF(?, 0) WHERE attempt=?",
               "sii", state, x->job_id, x->a->id);
}

/* The attempt ended: into sched, then gone. */
static void att_done(struct slurm *sl, struct slurm_att *x, const struct proto_metrics *m,
                     int64_t size)
{
    att_unlink(sl, x);
    sched_attempt_done(sl->d, x->a, m, size);
    att_free(x->a);
}

static void att_failed(struct slurm *sl, struct slurm_att *x, enum fail_class c, const char *msg)
{
    att_unlink(sl, x);
    sched_attempt_failed(sl->d, x->a, c, msg);
    att_free(x->a);
}

/* ===== resolving an ended job: its Slurm state and its outcome file ===== */

struct resolve {
    struct slurm *sl;
    struct slurm_att *x;
    uv_work_t w;
    char *path;
    char *text; /* the outcome, or NULL */
};

static void resolve_read(uv_work_t *w)
{
    struct resolve *r = w->data;
    size_t len;
    if (file_read_all(r->path, &r->text, &len) < 0)
        r->text = NULL;
}

static void resolve_finish(uv_work_t *w, int status)
{
    struct resolve *r = w->data;
    struct slurm_att *x = r->x;
    struct slurm *sl = r->sl;
    struct proto_msg m;
    char err[256];
    bool have = false;
    enum fail_class cls;
    bool no_retry;
    bool term = vocab_slurm_state_ended(x->state, &cls, &no_retry);
    (void)status;

    x->resolving = false;
    if (r->text && proto_parse(r->text, strlen(r->text), PROTO_KIND_MSG, &m, err, sizeof(err)) == 0)
        have = m.type == PROTO_T_done || m.type == PROTO_T_failed;
    if (have && m.type == PROTO_T_done) {
        /* It finished (result.json written, dir renamed) whatever Slurm says came after. */
        att_done(sl, x, &m.u.done.metrics, m.u.done.has_size_bytes ? m.u.done.size_bytes : -1);
    } else if (term && cls == FAIL_CANCELLED) {
        if (x->a->cancel_class != FAIL_NONE) {
            att_failed(sl, x, x->a->cancel_class, "cancelled by exaqd (scancel)");
        } else {
            char *msg = xasprintf("slurm job %lld was cancelled from outside (scancel); "
                                  "exaqctl retry runs it again",
                                  (long long)x->job_id);
            x->a->fail_stage = true;
            att_failed(sl, x, FAIL_CANCELLED, msg);
            free(msg);
        }
    } else if (term && cls != FAIL_NONE && cls != FAIL_ERROR) {
        char *msg = xasprintf("slurm job %lld ended %s%s", (long long)x->job_id, x->state,
                              no_retry ? " (no retry used)" : "");
        att_failed(sl, x, cls, msg);
        free(msg);
    } else if (have) {
        enum fail_class fc = fail_class_parse(m.u.failed.class);
        if (fc == FAIL_NONE || fc == FAIL_INTERRUPTED || fc == FAIL_CANCELLED)
            fc = FAIL_LOST; /* stopped by a signal exaqd did not send */
        att_failed(sl, x, fc, m.u.failed.msg ? m.u.failed.msg : "failed");
    } else {
        char *msg = xasprintf("slurm job %lld ended (%s) without an outcome; see %s/%s.out",
                              (long long)x->job_id, x->state ? x->state : "state unknown", sl->dir,
                              x->name);
        att_failed(sl, x, FAIL_LOST, msg);
        free(msg);
    }
    if (have)
        proto_msg_release(&m);
    free(r->path);
    free(r->text);
    free(r);
    sched_kick(sl->d);
}

static void resolve_files(struct slurm *sl, struct slurm_att *x)
{
    struct resolve *r = xcalloc(1, sizeof(*r));
    r->sl = sl;
    r->x = x;
    r->path = outcome_path(sl, x);
    r->w.data = r;
    x->resolving = true;
    if (uv_queue_work(sl->d->loop, &r->w, resolve_read, resolve_finish) < 0) {
        x->resolving = false;
        free(r->path);
        free(r);
    }
}

struct sacct_ctx {
    struct slurm *sl;
    struct slurm_att *x;
};

static void on_sacct(void *arg, int64_t status, const char *out, const char *err)
{
    struct sacct_ctx *c = arg;
    struct slurm_att *x = c->x;
    char state[64] = "";
    (void)err;
    /* "-X -n -P -o State": the allocation's line only. */
    if (status == 0 && sscanf(out, "%63[^|\n]", state) == 1 && state[0])
        set_state(c->sl, x, state);
    resolve_files(c->sl, x);
    free(c);
}

/* The job left the queue (or ended): its state from accounting when squeue lost it, then the
 * files. */
static void resolve(struct slurm *sl, struct slurm_att *x, bool need_sacct)
{
    if (x->resolving)
        return;
    x->resolving = true;
    if (need_sacct && x->job_id > 0) {
        char id[32];
        char *argv[] = { "sacct", "-X", "-n", "-P", "-j", id, "-o", "State", NULL };
        struct sacct_ctx *c = xcalloc(1, sizeof(*c));
        snprintf(id, sizeof(id), "%lld", (long long)x->job_id);
        c->sl = sl;
        c->x = x;
        child_run(sl->d, argv, NULL, on_sacct, c);
        return;
    }
    resolve_files(sl, x);
}

/* ===== polling ===== */

static void on_squeue(void *arg, int64_t status, const char *out, const char *err)
{
    struct slurm *sl = arg;
    sl->polling = false;
    if (sl->d->shutting_down)
        return; /* the next exaqd adopts the jobs */
    if (status != 0) {
        log_warn("squeue failed (status %lld): %.200s; polling again in %.0fs", (long long)status,
                 err, sl->poll_s);
        return;
    }
    for (struct slurm_att *x = sl->atts, *next; x; x = next) {
        const char *p = out;
        bool seen = false;
        next = x->next;
        if (x->submitting || x->resolving)
            continue;
        while (p && *p) {
            long long id;
            char name[128], state[64], dir[4096];
            /* The name alone is not enough: another home's exaqd may have used it. */
            if (sscanf(p, "%lld|%127[^|]|%63[^|]|%4095[^\n]", &id, name, state, dir) == 4 &&
                !strcmp(name, x->name) && !strcmp(dir, sl->d->home) &&
                (x->job_id == 0 || x->job_id == id)) {
                seen = true;
                if (x->job_id == 0) {
                    x->job_id = id;
                    log_info("attempt %lld: found slurm job %lld by its name %s",
                             (long long)x->a->id, id, x->name);
                }
                set_state(sl, x, state);
            }
            p = strchr(p, '\n');
            if (p)
                p++;
        }
        if (seen) {
            enum fail_class cls;
            bool nr;
            x->missing = 0;
            if (vocab_slurm_state_ended(x->state, &cls, &nr))
                resolve(sl, x, false);
            continue;
        }
        x->missing++;
        if (x->job_id == 0) {
            /* Adopted without an id and Slurm has no job of that name: it was never
             * submitted (exaqd died before sbatch ran). Submit the stage again. */
            if (x->missing >= SLURM_MISSING_POLLS &&
                now_mono() - x->since_mono > SLURM_NAME_GRACE_S)
                att_failed(sl, x, FAIL_INTERRUPTED,
                           "exaqd stopped before the slurm job was submitted");
            continue;
        }
        if (x->missing >= SLURM_MISSING_POLLS)
            resolve(sl, x, true);
    }
    sched_kick(sl->d);
}

static void poll_now(struct slurm *sl)
{
    struct buf names;
    char **argv;
    if (sl->polling || !sl->atts)
        return;
    buf_init(&names);
    buf_append(&names, "--name=", 7);
    for (struct slurm_att *x = sl->atts; x; x = x->next) {
        if (names.len > 7)
            buf_append(&names, ",", 1);
        buf_append(&names, x->name, strlen(x->name));
    }
    argv = (char *[]){ "squeue", "-h", "-a",          "-t",
                       "all",    "-o", "%i|%j|%T|%Z", (char *)buf_cstr(&names),
                       NULL };
    sl->polling = true;
    child_run(sl->d, argv, NULL, on_squeue, sl);
    buf_release(&names);
}

static void on_timer(uv_timer_t *t)
{
    poll_now(t->data);
}

/* ===== submitting ===== */

/* Shell single-quoting for the batch script. */
static void sq(struct buf *b, const char *s)
{
    buf_append(b, "'", 1);
    for (; *s; s++) {
        if (*s == '\'')
            buf_append(b, "'\\''", 4);
        else
            buf_append(b, s, 1);
    }
    buf_append(b, "'", 1);
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring[0] ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

struct argv_b {
    char **v;
    int n;
};

static void av_add(struct argv_b *a, char *s)
{
    a->v = xrealloc(a->v, (size_t)(a->n + 2) * sizeof(*a->v));
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void av_free(struct argv_b *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

static void scancel(struct slurm *sl, struct slurm_att *x);

static void on_sbatch(void *arg, int64_t status, const char *out, const char *err)
{
    struct slurm_att *x = arg;
    struct slurm *sl = x->sl;
    long long id = 0;
    x->submitting = false;
    x->since_mono = now_mono();
    if (status != 0 || sscanf(out, "%lld", &id) != 1 || id <= 0) {
        char *msg = xasprintf("sbatch failed: %.500s", err[0] ? err : out);
        char *nl = strchr(msg, '\n');
        if (nl && !nl[1])
            *nl = 0;
        att_failed(sl, x, FAIL_ERROR, msg);
        free(msg);
        sched_kick(sl->d);
        return;
    }
    x->job_id = id;
    store_exec(sl->d->store, "UPDATE slurm_jobs SET job_id=? WHERE attempt=?", "ii", (int64_t)id,
               x->a->id);
    sched_event(sl->d, NULL, NULL, x->a->st->key, "%s attempt %d is slurm job %lld (%s)",
                x->a->st->kind, x->a->n, id, x->name);
    if (x->scancel_wanted)
        scancel(sl, x);
}

/* The batch script: the job message on stdin of exaq-worker run, in a quoted here-document
 * (one JSON line, so it never holds the end marker). */
static char *batch_script(struct slurm *sl, struct slurm_att *x, const char *job_line, bool gpu)
{
    struct buf b;
    char *outc = outcome_path(sl, x);
    buf_init(&b);
    buf_printf(&b, "#!/bin/sh\n# exaq attempt %lld of stage %s\n", (long long)x->a->id,
               x->a->st->key);
    buf_printf(&b, "exec ");
    sq(&b, sl->d->worker_bin);
    buf_printf(&b, " run --job - --outcome ");
    sq(&b, outc);
    buf_printf(&b,
               " --threads \"${SLURM_CPUS_PER_TASK:-1}\" --backend %s <<'EXAQ_JOB_END'\n%s\n"
               "EXAQ_JOB_END\n",
               gpu ? "cuda" : "cpu", job_line);
    free(outc);
    return buf_steal(&b);
}

static void after_commit(void *arg, int rc)
{
    struct slurm_att *x = arg;
    struct slurm *sl = x->sl;
    struct dstage *st = x->a->st;
    struct dlane *l = NULL;
    struct proto_msg m;
    struct argv_b av = { 0 };
    cJSON *set = NULL;
    const cJSON *so = NULL;
    char *line, *script;
    double tmin;
    const char *gres;

    if (rc < 0) {
        att_failed(sl, x, FAIL_INTERRUPTED, "the attempt could not be recorded; not submitted");
        sched_kick(sl->d);
        return;
    }
    workers_job_msg(sl->d, x->a, "", &m, &l);
    line = proto_encode(&m);
    proto_msg_release(&m);
    while (line[0] && line[strlen(line) - 1] == '\n')
        line[strlen(line) - 1] = 0;
    if (l && l->sw->settings && (set = cJSON_Parse(l->sw->settings)))
        so = cJSON_GetObjectItemCaseSensitive(set, "slurm");
    av_add(&av, xstrdup("sbatch"));
    av_add(&av, xstrdup("--parsable"));
    av_add(&av, xasprintf("--job-name=%s", x->name));
    av_add(&av, xasprintf("--output=%s/%s.out", sl->dir, x->name));
    av_add(&av, xasprintf("--chdir=%s", sl->d->home));
    av_add(&av, xstrdup("--ntasks=1"));
    /* A node failure or preemption ends the job, and exaqd submits a new attempt at once
     * (no retry used) instead of Slurm requeueing it with a delay; extra_args may say
     * --requeue. */
    av_add(&av, xstrdup("--no-requeue"));
    tmin = so && jnum(so, "time_min") > 0 ? jnum(so, "time_min") : st->res.timeout_min;
    av_add(&av, xasprintf("--time=%lld", (long long)EXAQ_MAX(1, (long long)ceil(tmin))));
    if (so) {
        static const char *const opt[][2] = { { "partition", "--partition" },
                                              { "account", "--account" },
                                              { "qos", "--qos" },
                                              { "constraint", "--constraint" } };
        const cJSON *ex = cJSON_GetObjectItemCaseSensitive(so, "extra_args"), *e;
        for (size_t i = 0; i < sizeof(opt) / sizeof(opt[0]); i++)
            if (jstr(so, opt[i][0]))
                av_add(&av, xasprintf("%s=%s", opt[i][1], jstr(so, opt[i][0])));
        if (jnum(so, "cpus_per_task") > 0)
            av_add(&av, xasprintf("--cpus-per-task=%d", (int)jnum(so, "cpus_per_task")));
        if (jnum(so, "mem_gb") > 0)
            av_add(&av, xasprintf("--mem=%lldM", (long long)ceil(jnum(so, "mem_gb") * 1000)));
        cJSON_ArrayForEach(e, ex)
        {
            if (cJSON_IsString(e))
                av_add(&av, xstrdup(e->valuestring));
        }
    }
    gres = so ? jstr(so, "gres") : NULL;
    if (gres)
        av_add(&av, xasprintf("--gres=%s", gres));
    else if (st->res.gpus > 0)
        av_add(&av, xasprintf("--gres=gpu:%d", st->res.gpus));
    script = batch_script(sl, x, line, gres || st->res.gpus > 0);
    x->submitting = true;
    child_run(sl->d, av.v, script, on_sbatch, x);
    cJSON_Delete(set);
    av_free(&av);
    free(script);
    free(line);
}

static struct slurm_att *att_new(struct slurm *sl, struct attempt *a, const char *name)
{
    struct slurm_att *x = xcalloc(1, sizeof(*x));
    x->sl = sl;
    x->a = a;
    x->name = xstrdup(name);
    x->since_mono = now_mono();
    a->slurm = x;
    x->next = sl->atts;
    sl->atts = x;
    return x;
}

void slurm_dispatch(struct daemon *d, struct dstage *st)
{
    struct slurm *sl = d->slurm;
    struct attempt *a;
    struct slurm_att *x;
    char name[64];
    if (!sl)
        return;
    a = xcalloc(1, sizeof(*a));
    a->id = d->next_attempt_id++;
    a->st = st;
    a->n = ++st->nattempts;
    a->started = now_wall();
    a->started_mono = now_mono();
    a->log_path = xasprintf("%s/logs/%s/attempt-%lld.log", d->home, st->key, (long long)a->id);
    snprintf(name, sizeof(name), "exaq-%lld-%.12s", (long long)a->id, st->key);
    x = att_new(sl, a, name);
    st->att = a;
    store_exec(d->store,
               "INSERT INTO attempts(id, key, n, state, started, log) "
               "VALUES (?, ?, ?, 'running', ?, ?)",
               "isids", a->id, st->key, (int64_t)a->n, a->started, a->log_path);
    store_exec(d->store, "INSERT INTO slurm_jobs(attempt, name, submitted) VALUES (?, ?, ?)", "isd",
               a->id, x->name, a->started);
    sched_stage_set(
        d, st, &(struct stage_change){ .to = DSTAGE_RUNNING, .keep_error = true, .t = a->started },
        "%s attempt %d goes to slurm as %s", st->kind, a->n, x->name);
    x->submitting = true; /* until sbatch answers; the poll leaves it alone */
    store_barrier(d->store, after_commit, x);
}

/* ===== cancel ===== */

static void on_scancel(void *arg, int64_t status, const char *out, const char *err)
{
    (void)arg;
    (void)out;
    if (status != 0)
        log_warn("scancel failed: %.200s", err);
}

static void scancel(struct slurm *sl, struct slurm_att *x)
{
    char id[32];
    char *argv[] = { "scancel", id, NULL };
    snprintf(id, sizeof(id), "%lld", (long long)x->job_id);
    x->scancel_wanted = false;
    child_run(sl->d, argv, NULL, on_scancel, NULL);
}

void slurm_cancel_attempt(struct daemon *d, struct attempt *a, enum fail_class why)
{
    struct slurm_att *x = a->slurm;
    if (!x || a->cancel_class != FAIL_NONE)
        return;
    a->cancel_class = why;
    a->cancel_sent_mono = now_mono();
    if (x->job_id > 0 && !x->submitting)
        scancel(d->slurm, x);
    else
        x->scancel_wanted = true;
}

void slurm_cancel_unneeded(struct daemon *d)
{
    if (!d->slurm)
        return;
    for (struct slurm_att *x = d->slurm->atts; x; x = x->next)
        if (x->a->cancel_class == FAIL_NONE && !sched_stage_needed(x->a->st))
            slurm_cancel_attempt(d, x->a, FAIL_CANCELLED);
}

/* ===== life cycle ===== */

bool slurm_any_runnable(const struct daemon *d)
{
    for (size_t i = 0; i < d->stages.cap; i++) {
        const struct dstage *st = d->stages.vals[i];
        if (d->stages.keys[i] && st->res.executor == LANES_EXEC_SLURM &&
            st->state == DSTAGE_PENDING)
            return true;
    }
    return false;
}

int slurm_init(struct daemon *d, char *err, size_t errlen)
{
    struct slurm *sl = xcalloc(1, sizeof(*sl));
    const char *e = getenv("EXAQ_SLURM_POLL_S");
    double v;
    sl->d = d;
    sl->poll_s = 5;
    if (e && *e) {
        if (parse_f64(e, &v) < 0 || !(v >= 0.1 && v <= 3600)) {
            snprintf(err, errlen, "EXAQ_SLURM_POLL_S='%s': want seconds from 0.1 to 3600", e);
            free(sl);
            return -1;
        }
        sl->poll_s = v;
    }
    sl->dir = xasprintf("%s/slurm", d->home);
    if (mkdir_p(sl->dir, 0755) < 0) {
        snprintf(err, errlen, "cannot create '%s': %s", sl->dir, strerror(errno));
        free(sl->dir);
        free(sl);
        return -1;
    }
    d->slurm = sl;
    return 0;
}

int slurm_adopt(struct daemon *d, const struct store_row *r)
{
    struct slurm *sl = d->slurm;
    struct dstage *st;
    struct attempt *a;
    struct slurm_att *x;
    if (!sl || !(st = hmap_get(&d->stages, store_text(r, "key"))) || st->att)
        return -1;
    a = xcalloc(1, sizeof(*a));
    a->id = store_i64(r, "id");
    a->st = st;
    a->n = (int)store_i64(r, "n");
    a->started = store_f64(r, "started");
    a->started_mono = now_mono() - EXAQ_MAX(0.0, now_wall() - a->started);
    a->log_path = xstrdup(store_text(r, "log"));
    x = att_new(sl, a, store_text(r, "slurm_name"));
    x->job_id = store_null(r, "slurm_job") ? 0 : store_i64(r, "slurm_job");
    if (store_text(r, "slurm_state"))
        x->state = xstrdup(store_text(r, "slurm_state"));
    st->att = a;
    log_info("attempt %lld: re-adopted slurm job %s (%s)", (long long)a->id,
             x->job_id ? "by id" : "by name", x->name);
    return 0;
}

void slurm_start(struct daemon *d)
{
    struct slurm *sl = d->slurm;
    if (!sl)
        return;
    uv_timer_init(d->loop, &sl->timer);
    sl->timer.data = sl;
    uv_timer_start(&sl->timer, on_timer, 200, (uint64_t)(sl->poll_s * 1000));
    sl->timer_on = true;
}

static void timer_closed(uv_handle_t *h)
{
    (void)h;
}

void slurm_close(struct daemon *d)
{
    struct slurm *sl = d->slurm;
    if (sl && sl->timer_on) {
        sl->timer_on = false;
        uv_close((uv_handle_t *)&sl->timer, timer_closed);
    }
}

void slurm_release(struct daemon *d)
{
    struct slurm *sl = d->slurm;
    if (!sl)
        return;
    while (sl->atts) {
        struct slurm_att *x = sl->atts;
        sl->atts = x->next;
        if (x->a->st && x->a->st->att == x->a)
            x->a->st->att = NULL;
        att_free(x->a);
    }
    free(sl->dir);
    free(sl);
    d->slurm = NULL;
}

bool slurm_owns_tmp(const struct daemon *d, const char *name)
{
    if (!d->slurm)
        return false;
    for (struct slurm_att *x = d->slurm->atts; x; x = x->next) {
        char want[128];
        snprintf(want, sizeof(want), "%s.tmp-%lld", x->a->st->key, (long long)x->a->id);
        if (!strcmp(name, want))
            return true;
    }
    return false;
}

void slurm_status_json(const struct attempt *a, struct jw *w)
{
    const struct slurm_att *x = a->slurm;
    jw_key(w, "slurm");
    jw_obj_begin(w);
    if (x->job_id > 0)
        jw_kint(w, "job_id", x->job_id);
    jw_kstr(w, "name", x->name);
    jw_kstr(w, "state", x->state ? x->state : (x->submitting ? "SUBMITTING" : "UNKNOWN"));
    jw_obj_end(w);
}
