/*
 * exaq-worker: runs stages for exaqd (serve), or one native stage by hand (run).
 *
 *   exaq-worker serve --home DIR --socket PATH --slot N [--backend cpu|cuda]
 *   exaq-worker run KIND --input DIR [--output DIR] [--spec JSON] [--threads N]
 *                   [--backend cpu|cuda]
 *   exaq-worker run --job FILE|- --outcome FILE [--threads N] [--backend cpu|cuda]
 *   exaq-worker synth --out DIR [--shape 1.2b|tiny-a|tiny|llama-3.2-1b|qwen3-1.7b|minicpm-2b]
 *                     [--layers N] [--hybrid] [--v5] [--seed N]
 *                     [--tokenizer FILE] [--max-shard-mb N]
 *   exaq-worker --version
 *
 * serve: connects to exaqd, says hello, then runs one job at a time on a job thread while the
 * main thread reads the socket (jobs, cancels, exit) and sends heartbeats. When the daemon goes
 * away the worker kills its command's process group and exits: a worker never outlives its
 * daemon. Workers are crash-only: any failure costs one attempt, which the daemon retries.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "lanes/spec.h"
#include "proto/proto.h"
#include "proto/vocab.h"
#include "kernels/cuda.h"
#include "worker/cmd.h"
#include "worker/job.h"
#include "worker/stages/stage.h"
#include "worker/engine/synth.h"
#include "worker/engine/tokenizer.h"

struct worker {
    int fd;
    pthread_mutex_t wmu; /* serialises writes to fd */
    int slot;
    int nthreads;
    const char *backend;
    /* the running job */
    pthread_t thread;
    bool busy;
    bool joinable;
    struct job job;
    /* Flags shared by the main and job threads; accessed with __atomic builtins. */
    int cancel;
    int finished;
    int reported; /* done or failed sent: the thread is about to end */
    double hb_s;
};

static volatile sig_atomic_t got_term;

static void on_term(int sig)
{
    (void)sig;
    got_term = 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void wsend(struct worker *w, struct proto_msg *m)
{
    char *line = proto_encode(m);
    pthread_mutex_lock(&w->wmu);
    if (w->fd >= 0 && write_all(w->fd, line, strlen(line)) < 0)
        log_warn("cannot write to exaqd: %s", strerror(errno));
    pthread_mutex_unlock(&w->wmu);
    free(line);
    proto_msg_release(m);
}

/* ---- job sink: reports become protocol messages ---- */

static void s_started(void *arg, int64_t attempt, pid_t pgid)
{
    struct proto_msg m;
    proto_msg_init(&m, PROTO_T_started);
    m.u.started.attempt = attempt;
    m.u.started.has_attempt = true;
    m.u.started.pgid = pgid;
    m.u.started.has_pgid = true;
    wsend(arg, &m);
}

static void s_progress(void *arg, int64_t attempt, double done, double total, const char *what)
{
    struct proto_msg m;
    proto_msg_init(&m, PROTO_T_progress);
    m.u.progress.attempt = attempt;
    m.u.progress.has_attempt = true;
    m.u.progress.done = done;
    m.u.progress.has_done = true;
    m.u.progress.total = total;
    m.u.progress.has_total = true;
    if (what)
        proto_set_str(&m.u.progress.what, &m.u.progress.has_what, what);
    wsend(arg, &m);
}

static void s_log(void *arg, int64_t attempt, const char *line)
{
    /* The full output is in the log file; the daemon only shows the latest line, so send at
     * most a few lines per second. */
    static double last;
    double now = now_mono();
    struct proto_msg m;
    if (now - last < 0.2)
        return;
    last = now;
    proto_msg_init(&m, PROTO_T_log);
    m.u.log.attempt = attempt;
    m.u.log.has_attempt = true;
    m.u.log.line = xstrndup(line, EXAQ_MIN(strlen(line), 1000));
    m.u.log.has_line = true;
    wsend(arg, &m);
}

static void add_metrics(struct proto_metrics *pm, const struct job_metric *mt, int n)
{
    for (int i = 0; i < n; i++)
        proto_metrics_add(pm, mt[i].name, mt[i].value);
}

static void s_metrics(void *arg, int64_t attempt, const struct job_metric *mt, int n)
{
    struct proto_msg m;
    proto_msg_init(&m, PROTO_T_metrics);
    m.u.metrics.attempt = attempt;
    m.u.metrics.has_attempt = true;
    add_metrics(&m.u.metrics.metrics, mt, n);
    m.u.metrics.has_metrics = true;
    wsend(arg, &m);
}

/* The protocol `done` and `failed` reports, as the serve loop sends them and run --job writes
 * them to its outcome file. */
static void done_msg(struct proto_msg *m, int64_t attempt, const struct job_metric *mt, int n,
                     int64_t size, bool reused)
{
    proto_msg_init(m, PROTO_T_done);
    m->u.done.attempt = attempt;
    m->u.done.has_attempt = true;
    add_metrics(&m->u.done.metrics, mt, n);
    m->u.done.has_metrics = true;
    if (size >= 0) {
        m->u.done.size_bytes = size;
        m->u.done.has_size_bytes = true;
    }
    m->u.done.reused = reused;
    m->u.done.has_reused = true;
}

static void failed_msg(struct proto_msg *m, int64_t attempt, const char *cls, const char *msg)
{
    proto_msg_init(m, PROTO_T_failed);
    m->u.failed.attempt = attempt;
    m->u.failed.has_attempt = true;
    proto_set_str(&m->u.failed.class, &m->u.failed.has_class, cls);
    proto_set_str(&m->u.failed.msg, &m->u.failed.has_msg, msg);
}

static void s_done(void *arg, int64_t attempt, const struct job_metric *mt, int n, int64_t size,
                   bool reused)
{
    struct proto_msg m;
    __atomic_store_n(&((struct worker *)arg)->reported, 1, __ATOMIC_RELEASE);
    done_msg(&m, attempt, mt, n, size, reused);
    wsend(arg, &m);
}

static void s_failed(void *arg, int64_t attempt, const char *cls, const char *msg)
{
    struct proto_msg m;
    __atomic_store_n(&((struct worker *)arg)->reported, 1, __ATOMIC_RELEASE);
    failed_msg(&m, attempt, cls, msg);
    wsend(arg, &m);
}

static void *job_thread(void *arg)
{
    struct worker *w = arg;
    struct job_sink sink = { w, s_started, s_progress, s_log, s_metrics, s_done, s_failed };
    job_run(&w->job, &sink, &w->cancel);
    __atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void reap_job(struct worker *w)
{
    if (w->joinable && __atomic_load_n(&w->finished, __ATOMIC_ACQUIRE)) {
        pthread_join(w->thread, NULL);
        w->joinable = false;
        w->busy = false;
        job_release(&w->job);
    }
}

static void take(char **dst, char **src)
{
    *dst = *src;
    *src = NULL;
}

static void start_job(struct worker *w, struct proto_msg *m)
{
    struct pm_job *jm = &m->u.job;
    /* The daemon sends the next job as soon as it reads our report; the job thread may not
     * have returned yet. Once it has reported it only cleans up, so wait for it. */
    if (w->busy && __atomic_load_n(&w->reported, __ATOMIC_ACQUIRE))
        while (!__atomic_load_n(&w->finished, __ATOMIC_ACQUIRE))
            usleep(1000);
    reap_job(w);
    if (w->busy) {
        s_failed(w, jm->attempt, fail_class_name(FAIL_LOST), "worker is busy with another attempt");
        return;
    }
    memset(&w->job, 0, sizeof(w->job));
    w->job.attempt = jm->attempt;
    take(&w->job.key, &jm->key);
    take(&w->job.kind, &jm->kind);
    take(&w->job.spec, &jm->spec);
    take(&w->job.input, &jm->input);
    take(&w->job.stage_dir, &jm->stage_dir);
    take(&w->job.final_dir, &jm->final_dir);
    take(&w->job.log, &jm->log);
    take(&w->job.devices, &jm->devices);
    take(&w->job.cwd, &jm->cwd);
    take(&w->job.sweep, &jm->sweep);
    take(&w->job.lane, &jm->lane);
    take(&w->job.stage, &jm->stage);
    take(&w->job.baseline, &jm->baseline);
    w->job.produces_model = jm->produces_model;
    w->job.nthreads = w->nthreads;
    w->job.cuda = !strcmp(w->backend, "cuda");
    w->cancel = 0;
    w->finished = 0;
    w->reported = 0;
    w->busy = true;
    if (pthread_create(&w->thread, NULL, job_thread, w) != 0) {
        w->busy = false;
        s_failed(w, w->job.attempt, fail_class_name(FAIL_OOM), "cannot start a job thread");
        job_release(&w->job);
        return;
    }
    w->joinable = true;
}

struct rctx {
    struct worker *w;
    bool exit;
};

static int on_line(void *arg, const char *line, size_t len)
{
    struct rctx *rc = arg;
    struct worker *w = rc->w;
    struct proto_msg m;
    char err[512];
    if (!line) {
        log_error("over-long frame from exaqd");
        return 0;
    }
    /* Replies to our own messages (hello) come as "re" frames. */
    if (strstr(line, "\"re\"")) {
        if (proto_parse(line, len, PROTO_KIND_REPLY, &m, err, sizeof(err)) == 0) {
            if (!m.ok) {
                log_error("exaqd refused us: %s", m.errmsg ? m.errmsg : "?");
                rc->exit = true;
            } else if (m.type == PROTO_T_hello_r && m.u.hello_r.heartbeat_s > 0) {
                w->hb_s = m.u.hello_r.heartbeat_s;
            }
            proto_msg_release(&m);
        }
        return 0;
    }
    if (proto_parse(line, len, PROTO_KIND_MSG, &m, err, sizeof(err)) != 0) {
        log_error("bad frame from exaqd: %s", err);
        return 0;
    }
    switch (m.type) {
    case PROTO_T_job:
        start_job(w, &m);
        break;
    case PROTO_T_cancel_job:
        if (w->busy && w->job.attempt == m.u.cancel_job.attempt) {
            log_info("attempt %lld: cancel (%s)", (long long)w->job.attempt, m.u.cancel_job.reason);
            __atomic_store_n(&w->cancel, 1, __ATOMIC_RELEASE);
        }
        break;
    case PROTO_T_exit:
        rc->exit = true;
        break;
    default:
        log_warn("unexpected '%s' from exaqd", proto_type_wire(m.type));
    }
    proto_msg_release(&m);
    return 0;
}

static int connect_socket(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int serve(const char *home, const char *sock, int slot, const char *backend)
{
    struct worker w;
    struct proto_framer fr;
    struct rctx rc;
    struct proto_msg m;
    double last_hb = 0;
    char *logpath = xasprintf("%s/workers/slot-%d.log", home, slot);
    FILE *lf = fopen(logpath, "a");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    free(logpath);
    log_set_prefix("exaq-worker");
    if (lf) {
        log_set_stream(lf);
        dup2(fileno(lf), 2);
    }
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    memset(&w, 0, sizeof(w));
    pthread_mutex_init(&w.wmu, NULL);
    w.slot = slot;
    w.backend = backend;
    w.nthreads = ncpu > 0 ? (int)ncpu : 1;
    {
        /* exaqd gives each slot its share of the CPUs (daemon/workers.c). */
        const char *th = getenv("EXAQ_THREADS");
        int64_t v;
        if (th && parse_i64(th, &v) == 0 && v >= 1 && v <= 4096)
            w.nthreads = (int)v;
    }
    w.hb_s = 5;
    {
        const char *hb = getenv("EXAQ_HEARTBEAT_S");
        double v;
        if (hb && parse_f64(hb, &v) == 0 && v > 0)
            w.hb_s = v;
    }
    w.fd = connect_socket(sock);
    if (w.fd < 0) {
        log_error("cannot connect to exaqd at '%s': %s", sock, strerror(errno));
        return 1;
    }
    proto_msg_init(&m, PROTO_T_hello);
    m.u.hello.slot = slot;
    m.u.hello.has_slot = true;
    m.u.hello.pid = getpid();
    m.u.hello.has_pid = true;
    if (!strcmp(backend, "cuda")) {
        /* The slot was given a GPU: report it only if the CUDA backend really finds one
         * (kernels/cuda.h); otherwise say so and present ourselves as a CPU worker. */
        struct cuda_device_info gi;
        const char *why = NULL;
        if (cuda_device_get_info(&gi, &why) == 0) {
            proto_set_str(&m.u.hello.gpu_name, &m.u.hello.has_gpu_name, gi.name);
            m.u.hello.gpu_mem_mb = (int64_t)(gi.mem_total >> 20);
            m.u.hello.has_gpu_mem_mb = true;
            m.u.hello.gpu_free_mb = (int64_t)(gi.mem_free >> 20);
            m.u.hello.has_gpu_free_mb = true;
            log_info("slot %d: cuda device '%s', %lld MiB, compute capability %d.%d", slot, gi.name,
                     (long long)(gi.mem_total >> 20), gi.cc_major, gi.cc_minor);
        } else {
            log_warn("slot %d: --backend cuda but the cuda backend is unavailable (%s); reporting "
                     "backend cpu",
                     slot, why ? why : "unknown reason");
            backend = "cpu";
            w.backend = backend;
        }
    }
    proto_set_str(&m.u.hello.backend, &m.u.hello.has_backend, backend);
    m.u.hello.threads = w.nthreads;
    m.u.hello.has_threads = true;
    proto_set_str(&m.u.hello.version, &m.u.hello.has_version, EXAQ_VERSION);
    wsend(&w, &m);
    log_info("slot %d: connected to %s (pid %d, %d threads)", slot, sock, (int)getpid(),
             w.nthreads);

    proto_framer_init(&fr, PROTO_MAX_LINE);
    rc.w = &w;
    rc.exit = false;
    while (!rc.exit && !got_term) {
        struct pollfd pfd = { w.fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, 100);
        double now = now_mono();
        if (pr > 0) {
            char buf[65536];
            ssize_t n = read(w.fd, buf, sizeof(buf));
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                log_warn("exaqd went away; stopping");
                job_kill_running();
                _exit(0);
            }
            if (n > 0)
                proto_framer_feed(&fr, buf, (size_t)n, on_line, &rc);
        }
        reap_job(&w);
        if (now - last_hb >= w.hb_s) {
            proto_msg_init(&m, PROTO_T_heartbeat);
            if (w.busy) {
                m.u.heartbeat.attempt = w.job.attempt;
                m.u.heartbeat.has_attempt = true;
            } else if (!strcmp(w.backend, "cuda")) {
                /* Idle: no job holds the device, so the free memory the daemon places stages
                 * by (gpu_mem_gb) is read without waiting on one. */
                struct cuda_device_info gi;
                if (cuda_device_get_info(&gi, NULL) == 0) {
                    m.u.heartbeat.gpu_free_mb = (int64_t)(gi.mem_free >> 20);
                    m.u.heartbeat.has_gpu_free_mb = true;
                }
            }
            wsend(&w, &m);
            last_hb = now;
        }
    }
    if (got_term) {
        /* SIGTERM, also sent by the kernel when exaqd dies (PR_SET_PDEATHSIG): stop at once;
         * the daemon retries the attempt. */
        log_warn("terminated; killing the running command");
        job_kill_running();
        _exit(0);
    }
    /* Exit requested by exaqd: stop the running job and let it report. */
    if (w.busy) {
        __atomic_store_n(&w.cancel, 1, __ATOMIC_RELEASE);
        while (!__atomic_load_n(&w.finished, __ATOMIC_ACQUIRE))
            usleep(20000);
        reap_job(&w);
    }
    proto_framer_release(&fr);
    log_info("slot %d: exiting", slot);
    close(w.fd);
    return 0;
}

/* ---- run: one native stage by hand ---- */

static void r_progress(void *arg, int64_t a, double done, double total, const char *what)
{
    (void)arg;
    (void)a;
    fprintf(stderr, "progress %.0f/%.0f %s\n", done, total, what ? what : "");
}

static void r_log(void *arg, int64_t a, const char *line)
{
    (void)arg;
    (void)a;
    fprintf(stderr, "%s\n", line);
}

static void r_done(void *arg, int64_t a, const struct job_metric *m, int n, int64_t size,
                   bool reused)
{
    (void)a;
    (void)reused;
    *(int *)arg = 0;
    printf("{");
    for (int i = 0; i < n; i++)
        printf("%s\"%s\": %.17g", i ? ", " : "", m[i].name, m[i].value);
    if (size >= 0)
        printf("%s\"size_bytes\": %lld", n ? ", " : "", (long long)size);
    printf("}\n");
}

static void r_failed(void *arg, int64_t a, const char *cls, const char *msg)
{
    (void)a;
    *(int *)arg = 1;
    fprintf(stderr, "exaq-worker: stage failed (%s): %s\n", cls, msg);
}

#define RUN_SPEC_HELP                                                                              \
    "  --spec JSON  the stage's fields as in a lanes file (docs/lanes.md), e.g.\n"                 \
    "               '{\"method\":\"rtn\",\"scheme\":\"W8A16\"}'; fields left out get the lanes\n"  \
    "               parser's defaults, an unknown key is an error; default {}\n"
/* ---- run --job: one attempt that exaqd handed to a batch system (daemon/slurm.c) ----
 *
 * FILE holds the protocol `job` message exaqd would send a serving worker. The attempt runs
 * exactly as under serve (same dirs, same log, same adoption of a finished result), and its
 * report, the protocol `done` or `failed` message, is written atomically to the outcome file,
 * where exaqd reads it when the batch job ends. SIGTERM (scancel, a time limit) stops it like
 * a cancel. */

struct outcome {
    const char *path;
    int status;
};

static void o_write(struct outcome *o, struct proto_msg *m)
{
    char *line = proto_encode(m);
    if (file_write_atomic(o->path, line, strlen(line)) < 0)
        fprintf(stderr, "exaq-worker: cannot write the outcome '%s': %s\n", o->path,
                strerror(errno));
    free(line);
    proto_msg_release(m);
}

static void o_done(void *arg, int64_t attempt, const struct job_metric *mt, int n, int64_t size,
                   bool reused)
{
    struct outcome *o = arg;
    struct proto_msg m;
    o->status = 0;
    done_msg(&m, attempt, mt, n, size, reused);
    o_write(o, &m);
}

static void o_failed(void *arg, int64_t attempt, const char *cls, const char *msg)
{
    struct outcome *o = arg;
    struct proto_msg m;
    o->status = 1;
    fprintf(stderr, "exaq-worker: stage failed (%s): %s\n", cls, msg);
    failed_msg(&m, attempt, cls, msg);
    o_write(o, &m);
}

static int batch_cancel;

static void on_batch_term(int sig)
{
    (void)sig;
    __atomic_store_n(&batch_cancel, 1, __ATOMIC_RELEASE);
}

static int run_batch(const char *job_file, const char *outcome, int threads, bool cuda)
{
    struct outcome o = { outcome, 1 };
    struct job_sink sink = { &o, NULL, r_progress, NULL, NULL, o_done, o_failed };
    struct proto_msg m;
    struct pm_job *jm = &m.u.job;
    struct job j;
    char *text = NULL, err[512];
    size_t len = 0;
    int rc;

    if (!strcmp(job_file, "-")) {
        struct buf b;
        char chunk[4096];
        size_t n;
        buf_init(&b);
        while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
            buf_append(&b, chunk, n);
        len = b.len;
        text = buf_steal(&b);
        rc = 0;
    } else {
        rc = file_read_all(job_file, &text, &len);
    }
    if (rc < 0) {
        fprintf(stderr, "exaq-worker: cannot read the job '%s': %s\n", job_file, strerror(errno));
        return 1;
    }
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    if (proto_parse(text, len, PROTO_KIND_MSG, &m, err, sizeof(err)) != 0 ||
        m.type != PROTO_T_job) {
        fprintf(stderr, "exaq-worker: '%s' is not a job message: %s\n", job_file,
                m.type != PROTO_T_job ? "wrong type" : err);
        free(text);
        return 1;
    }
    free(text);
    memset(&j, 0, sizeof(j));
    j.attempt = jm->attempt;
    take(&j.key, &jm->key);
    take(&j.kind, &jm->kind);
    take(&j.spec, &jm->spec);
    take(&j.input, &jm->input);
    take(&j.stage_dir, &jm->stage_dir);
    take(&j.final_dir, &jm->final_dir);
    take(&j.log, &jm->log);
    take(&j.devices, &jm->devices);
    take(&j.cwd, &jm->cwd);
    take(&j.sweep, &jm->sweep);
    take(&j.lane, &jm->lane);
    take(&j.stage, &jm->stage);
    j.produces_model = jm->produces_model;
    j.nthreads = threads;
    j.cuda = cuda;
    proto_msg_release(&m);
    signal(SIGTERM, on_batch_term);
    signal(SIGINT, on_batch_term);
    job_run(&j, &sink, &batch_cancel);
    job_release(&j);
    return o.status;
}

static int run_one(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, NULL, 'i' },    { "output", required_argument, NULL, 'o' },
        { "spec", required_argument, NULL, 's' },     { "threads", required_argument, NULL, 't' },
        { "backend", required_argument, NULL, 'b' },  { "help", no_argument, NULL, 'h' },
        { "baseline", required_argument, NULL, 'B' }, { "job", required_argument, NULL, 'j' },
        { "outcome", required_argument, NULL, 'O' },  { NULL, 0, NULL, 0 },
    };
    const char *input = NULL, *output = NULL, *spec = "{}", *baseline = NULL;
    const char *job_file = NULL, *outcome = NULL;
    char *full = NULL, *err = NULL;
    bool cuda = false;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), c, status = 1;
    const struct stage_def *def;
    struct job j;
    char tmpl[] = "/tmp/exaq-run-XXXXXX";
    int cancel = 0;
    struct job_sink sink = { &status, NULL, r_progress, r_log, NULL, r_done, r_failed };

    optind = argc >= 2 && argv[1][0] == '-' ? 1 : 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int64_t v;
        switch (c) {
        case 'j':
            job_file = optarg;
            break;
        case 'O':
            outcome = optarg;
            break;
        case 'i':
            input = optarg;
            break;
        case 'o':
            output = optarg;
            break;
        case 'B':
            baseline = optarg;
            break;
        case 's':
            spec = optarg;
            break;
        case 't':
            if (parse_i64(optarg, &v) < 0 || v < 1) {
                fprintf(stderr, "exaq-worker: --threads wants a positive number\n");
                return 1;
            }
            threads = (int)v;
            break;
        case 'b':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "exaq-worker: --backend wants cpu or cuda, not '%s'\n", optarg);
                return 1;
            }
            cuda = !strcmp(optarg, "cuda");
            break;
        case 'h':
            printf("usage: exaq-worker run KIND --input DIR [--output DIR] [--spec JSON] "
                   "[--threads N] [--backend cpu|cuda]\n%s",
                   RUN_SPEC_HELP);
            return 0;
        default:
            return 1;
        }
    }
    if (job_file || outcome) {
        if (!job_file || !outcome) {
            fprintf(stderr, "exaq-worker: run --job FILE needs --outcome FILE (and the reverse)\n");
            return 1;
        }
        return run_batch(job_file, outcome, threads, cuda);
    }
    if (argc < 2 || !input) {
        fprintf(stderr,
                "usage: exaq-worker run KIND --input DIR [--output DIR] [--spec JSON] "
                "[--threads N] [--backend cpu|cuda] [--baseline DIR]\n%s",
                RUN_SPEC_HELP);
        return 1;
    }
    def = stage_find(argv[1]);
    if (!def) {
        fprintf(stderr, "exaq-worker: no native stage '%s'\n", argv[1]);
        return 1;
    }
    if (def->produces_model && !output) {
        fprintf(stderr, "exaq-worker: stage '%s' writes a model: give --output DIR\n", argv[1]);
        return 1;
    }
    /* The spec may be partial: the lanes parser's defaults and rules complete it (relative
     * paths start at the current directory), exactly as for the same stage in a lanes file. */
    if (lanes_spec_complete(argv[1], spec, NULL, &full, &err) < 0) {
        fprintf(stderr, "exaq-worker: %s\n", err);
        free(err);
        return 1;
    }
    fprintf(stderr, "exaq-worker: %s spec %s\n", argv[1], full);
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        free(full);
        return 1;
    }
    memset(&j, 0, sizeof(j));
    j.attempt = 0;
    j.key = xstrdup("manual");
    j.kind = xstrdup(argv[1]);
    j.spec = full;
    j.input = xstrdup(input);
    j.baseline = baseline ? xstrdup(baseline) : NULL;
    j.stage_dir = xasprintf("%s/stage", tmpl);
    j.final_dir = output ? xstrdup(output) : xasprintf("%s/result", tmpl);
    j.log = xasprintf("%s/log.txt", tmpl);
    j.produces_model = def->produces_model;
    j.nthreads = threads;
    j.cuda = cuda;
    if (output && is_dir(output)) {
        fprintf(stderr, "exaq-worker: '%s' already exists\n", output);
        job_release(&j);
        rmdir(tmpl);
        return 1;
    }
    job_run(&j, &sink, &cancel);
    if (!output)
        rm_rf(tmpl);
    else {
        /* The model is in OUTPUT/model; leave the run's scratch dir alone only on failure. */
        char *l = xasprintf("%s/log.txt", tmpl);
        unlink(l);
        free(l);
        rmdir(tmpl);
    }
    job_release(&j);
    return status;
}

/* ---- synth: a synthetic checkpoint for tests and benchmarks ---- */

#define SYNTH_USAGE                                                                                \
    "usage: exaq-worker synth --out DIR [--shape 1.2b|tiny-a|tiny|llama-3.2-1b|qwen3-1.7b|"        \
    "minicpm-2b]\n"                                                                                \
    "                         [--layers N] [--hybrid] "                                            \
    "[--v5]\n"                                                                                     \
    "                         [--seed N] [--tokenizer FILE] [--max-shard-mb N]\n"

/* Shapes: 1.2b is EXAONE-4.0-1.2B (synth_opts_default); tiny-a is the shape of the trained test
 * model in tests/data/tiny-exaone4; tiny is smaller still. The tiny shapes keep the tiny-a
 * vocabulary (4096) so the test tokenizer fits. --hybrid makes every 4th layer global (NoPE)
 * and the others sliding-window layers (window 4096 for 1.2b, 32 for the tiny shapes). */
static int synth_cmd(int argc, char **argv)
{
    static const struct option opts[] = {
        { "out", required_argument, NULL, 'o' },
        { "shape", required_argument, NULL, 's' },
        { "layers", required_argument, NULL, 'l' },
        { "hybrid", no_argument, NULL, 'h' },
        { "v5", no_argument, NULL, '5' },
        { "seed", required_argument, NULL, 'r' },
        { "tokenizer", required_argument, NULL, 't' },
        { "max-shard-mb", required_argument, NULL, 'm' },
        { NULL, 0, NULL, 0 },
    };
    const char *out = NULL, *shape = "1.2b", *tokenizer = NULL;
    int64_t layers = 0, seed = -1, shard_mb = -1;
    bool hybrid = false, v5 = false;
    struct synth_opts o;
    char *err = NULL;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 's':
            shape = optarg;
            break;
        case 'l':
            if (parse_i64(optarg, &layers) < 0 || layers < 1 || layers > 1024) {
                fprintf(stderr,
                        "exaq-worker synth: --layers wants a number from 1 to 1024, got "
                        "'%s'\n",
                        optarg);
                return 1;
            }
            break;
        case 'h':
            hybrid = true;
            break;
        case '5':
            v5 = true;
            break;
        case 'r':
            if (parse_i64(optarg, &seed) < 0 || seed < 0) {
                fprintf(stderr, "exaq-worker synth: --seed wants a non-negative number, got '%s'\n",
                        optarg);
                return 1;
            }
            break;
        case 't':
            tokenizer = optarg;
            break;
        case 'm':
            if (parse_i64(optarg, &shard_mb) < 0 || shard_mb < 0 || shard_mb > 1000000) {
                fprintf(stderr,
                        "exaq-worker synth: --max-shard-mb wants a number of MB (0: one file), "
                        "got '%s'\n",
                        optarg);
                return 1;
            }
            break;
        default:
            fprintf(stderr, SYNTH_USAGE);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "exaq-worker synth: unexpected argument '%s'\n" SYNTH_USAGE, argv[optind]);
        return 1;
    }
    if (!out) {
        fprintf(stderr, "exaq-worker synth: --out DIR is required\n" SYNTH_USAGE);
        return 1;
    }
    synth_opts_default(&o);
    if (!strcmp(shape, "1.2b")) {
        o.sliding_window = hybrid ? 4096 : 0;
    } else if (!strcmp(shape, "tiny-a") || !strcmp(shape, "tiny")) {
        bool a = !strcmp(shape, "tiny-a");
        o.hidden_size = a ? 256 : 64;
        o.intermediate_size = a ? 1024 : 128;
        o.num_hidden_layers = 4;
        o.num_attention_heads = 4;
        o.num_key_value_heads = 2;
        o.head_dim = a ? 64 : 16;
        o.vocab_size = 4096;
        o.max_position_embeddings = 2048;
        o.sliding_window = hybrid ? 32 : 0;
    } else if (synth_opts_shape(&o, shape) == 0) {
        if (hybrid) {
            fprintf(stderr, "exaq-worker synth: --hybrid is for the EXAONE-4 shapes\n");
            return 1;
        }
    } else {
        fprintf(stderr,
                "exaq-worker synth: unknown --shape '%s' (use 1.2b, tiny-a, tiny, llama-3.2-1b, "
                "qwen3-1.7b or minicpm-2b)\n",
                shape);
        return 1;
    }
    o.sliding_window_pattern = 4;
    if (layers > 0)
        o.num_hidden_layers = (int)layers;
    if (v5)
        o.style = CONFIG_STYLE_V5;
    if (seed >= 0)
        o.seed = (uint64_t)seed;
    if (shard_mb >= 0)
        o.max_shard_bytes = (uint64_t)shard_mb * 1000000u;
    if (tokenizer) {
        char *msg = NULL;
        struct tok *t = tok_load(tokenizer, &msg);
        if (!t) {
            fprintf(stderr, "exaq-worker synth: cannot use tokenizer '%s': %s\n", tokenizer, msg);
            free(msg);
            return 1;
        }
        int tv = tok_vocab_size(t);
        tok_free(t);
        if (tv > o.vocab_size) {
            fprintf(stderr,
                    "exaq-worker synth: tokenizer '%s' has %d tokens, more than the %s shape's "
                    "vocabulary (%d)\n",
                    tokenizer, tv, shape, o.vocab_size);
            return 1;
        }
        o.tokenizer_path = tokenizer;
    }
    if (is_dir(out)) {
        char *cfg = path_join(out, "config.json");
        bool exists = is_file(cfg);
        free(cfg);
        if (exists) {
            fprintf(stderr, "exaq-worker synth: '%s' already holds a model (config.json)\n", out);
            return 1;
        }
    }
    double t0 = now_mono();
    if (synth_write(&o, out, &err) != 0) {
        fprintf(stderr, "exaq-worker synth: %s\n", err ? err : "cannot write the model");
        free(err);
        return 1;
    }
    printf("wrote a synthetic %s%s model (%d layers, %s config) to %s in %.1f s (%.1f MB)\n", shape,
           hybrid ? " hybrid" : "", o.num_hidden_layers, v5 ? "transformers-5" : "4.57", out,
           now_mono() - t0, (double)dir_size_bytes(out) / 1e6);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: exaq-worker serve --home DIR --socket PATH --slot N [--backend cpu|cuda]\n"
        "       exaq-worker run KIND --input DIR [--output DIR] [--spec JSON] [--threads N]\n"
        "                       [--backend cpu|cuda]\n"
        "%s"
        "       exaq-worker run --job FILE|- --outcome FILE [--threads N] [--backend cpu|cuda]\n"
        "       exaq-worker synth --out DIR [--shape 1.2b|tiny-a|tiny|llama-3.2-1b|qwen3-1.7b|\n"
        "                         minicpm-2b] [--layers N]\n"
        "                   [--hybrid] [--v5] [--seed N] [--tokenizer FILE]\n"
        "                   [--max-shard-mb N]\n"
        "       exaq-worker logits --input DIR --ids FILE --out FILE [--n N] [--threads N]\n"
        "       exaq-worker chat-template --input DIR --messages FILE.json [--tools FILE.json]\n"
        "                   [--no-generation-prompt] [--template NAME] [--kwargs JSON]\n"
        "       exaq-worker generate --input DIR --prompt TEXT --max-new-tokens N ...\n"
        "       exaq-worker tokenize (--input DIR | --tokenizer FILE) (--text FILE | --ids FILE)\n"
        "                   [--out FILE]\n"
        "       exaq-worker --version\n",
        RUN_SPEC_HELP);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("exaq-worker %s (protocol %d)\n", EXAQ_VERSION, PROTO_VERSION);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return run_one(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "logits"))
        return cmd_logits(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "synth"))
        return synth_cmd(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "chat-template"))
        return cmd_chat_template(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "generate"))
        return cmd_generate(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "tokenize"))
        return cmd_tokenize(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "serve")) {
        static const struct option opts[] = {
            { "home", required_argument, NULL, 'h' },
            { "socket", required_argument, NULL, 's' },
            { "slot", required_argument, NULL, 'n' },
            { "backend", required_argument, NULL, 'b' },
            { NULL, 0, NULL, 0 },
        };
        const char *home = NULL, *sock = NULL, *backend = "cpu";
        int64_t slot = -1;
        int c;
        optind = 2;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
            switch (c) {
            case 'h':
                home = optarg;
                break;
            case 's':
                sock = optarg;
                break;
            case 'n':
                if (parse_i64(optarg, &slot) < 0)
                    slot = -1;
                break;
            case 'b':
                backend = optarg;
                break;
            default:
                usage(stderr);
                return 1;
            }
        }
        if (!home || !sock || slot < 0) {
            usage(stderr);
            return 1;
        }
        return serve(home, sock, (int)slot, backend);
    }
    usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
    return argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 1;
}
