/*
 * exaqd: the exaq background service. One per home directory.
 *
 * Start-up runs before the event loop and may block: it takes the pid lock, opens the
 * database, restores the model and recovers what a crash interrupted (sched_load), then
 * listens, spawns the workers and runs the loop. Unless --foreground is given it daemonizes
 * and its parent returns only once the socket accepts connections (or prints why not).
 */
#include "daemon/exaqd.h"
#include "daemon/slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "daemon/http.h"
#include "daemon/store.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: exaqd [--home DIR] [--foreground] [--slots N] [--backend auto|cpu|cuda]\n"
               "             [--http [ADDR:]PORT [--http-token-file FILE]]\n"
               "\n"
               "Runs the exaq service for one home directory (default $EXAQ_HOME, else\n"
               "./results). Control it with exaqctl. Worker slots default to one per CUDA\n"
               "device, else one CPU slot. --http serves a read-only dashboard (docs/http.md).\n");
}

static double env_num(const char *name, double def)
{
    const char *v = getenv(name);
    double x;
    if (v && parse_f64(v, &x) == 0 && x > 0)
        return x;
    return def;
}

static void on_closed_noop(uv_handle_t *h)
{
    (void)h;
}

void daemon_maybe_exit(struct daemon *d)
{
    if (!d->shutting_down || !workers_all_exited(d) || sched_running_count(d) > 0)
        return;
    if (uv_is_closing((uv_handle_t *)&d->tick))
        return;
    log_info("all workers stopped; exiting");
    uv_close((uv_handle_t *)&d->tick, on_closed_noop);
    uv_close((uv_handle_t *)&d->sig_term, on_closed_noop);
    uv_close((uv_handle_t *)&d->sig_int, on_closed_noop);
    uv_close((uv_handle_t *)&d->pump_idle, on_closed_noop);
    slurm_close(d);
    server_close_all(d);
    for (struct conn *c = d->conns; c; c = c->next)
        server_close_conn(c);
}

void daemon_begin_shutdown(struct daemon *d, bool drain)
{
    if (d->shutting_down) {
        if (!drain && d->drain) {
            d->drain = false;
            workers_shutdown(d);
        }
        return;
    }
    log_info("shutting down%s", drain ? " after the running stages finish" : "");
    d->shutting_down = true;
    d->drain = drain;
    d->shutdown_started_mono = now_mono();
    workers_shutdown(d);
    daemon_maybe_exit(d);
}

static void on_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;
    double now = now_mono();
    double lag = now - d->last_tick_mono - (double)uv_timer_get_repeat(t) / 1000.0;
    if (d->last_tick_mono > 0 && lag > 0.05)
        log_warn("event loop lagged %.0f ms", lag * 1000);
    d->last_tick_mono = now;
    workers_tick(d);
    http_tick(d->http, d);
    if (d->shutting_down && !d->drain && now - d->shutdown_started_mono > d->kill_grace_s) {
        for (int i = 0; i < d->nslots; i++) {
            if (d->slots[i].pid > 0 && !d->slots[i].kill_sent) {
                log_warn("slot %d: worker did not exit; killing it", i);
                if (d->slots[i].att && d->slots[i].att->pgid > 0)
                    kill(-d->slots[i].att->pgid, SIGKILL);
                kill(d->slots[i].pid, SIGKILL);
                d->slots[i].kill_sent = true;
            }
        }
    }
    daemon_maybe_exit(d);
}

static void on_signal(uv_signal_t *s, int sig)
{
    struct daemon *d = s->data;
    log_info("got %s", strsignal(sig));
    daemon_begin_shutdown(d, false);
}

static char *find_worker_bin(void)
{
    const char *env = getenv("EXAQ_WORKER");
    char self[4096];
    ssize_t n;
    if (env && *env)
        return xstrdup(env);
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        char *dir, *p;
        self[n] = '\0';
        dir = path_dirname(self);
        p = path_join(dir, "exaq-worker");
        free(dir);
        return p;
    }
    return xstrdup("exaq-worker");
}

/* Takes the pid-file lock: 0, or -1 with a message (another exaqd owns this home). */
static int lock_pidfile(struct daemon *d, char *err, size_t errlen)
{
    char *path = xasprintf("%s/exaqd.pid", d->home);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        free(path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        if (n > 0)
            buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        snprintf(err, errlen, "exaqd is already running for '%s' (pid %s)", d->home,
                 buf[0] ? buf : "?");
        close(fd);
        free(path);
        return -1;
    }
    free(path);
    d->pidfile_fd = fd;
    return 0;
}

static void write_pid(struct daemon *d)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(d->pidfile_fd, 0) == 0 && pwrite(d->pidfile_fd, buf, (size_t)n, 0) < 0)
        log_warn("cannot write the pid file: %s", strerror(errno));
}

/* Forks; the parent waits for one status byte from the child and exits with it. */
static int daemonize(struct daemon *d)
{
    int p[2];
    pid_t pid;
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0) {
        char msg[1024];
        ssize_t n;
        size_t got = 0;
        close(p[1]);
        while (got < sizeof(msg) - 1 && (n = read(p[0], msg + got, sizeof(msg) - 1 - got)) > 0)
            got += (size_t)n;
        msg[got] = '\0';
        if (got > 0 && msg[0] == '0') {
            printf("exaqd started (pid %d), home %s\n", (int)pid, d->home);
            exit(0);
        }
        fprintf(stderr, "exaqd: %s\n", got > 1 ? msg + 1 : "failed to start (see exaqd.log)");
        exit(1);
    }
    close(p[0]);
    d->ready_fd = p[1];
    setsid();
    return 0;
}

static void report_ready(struct daemon *d, const char *err)
{
    if (d->ready_fd < 0)
        return;
    if (err) {
        char *m = xasprintf("1%s", err);
        if (write(d->ready_fd, m, strlen(m)) < 0)
            (void)0;
        free(m);
    } else if (write(d->ready_fd, "0", 1) < 0) {
        (void)0;
    }
    close(d->ready_fd);
    d->ready_fd = -1;
}

static void detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR);
    if (fd < 0)
        return;
    dup2(fd, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2)
        close(fd);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "home", required_argument, NULL, 'h' },
        { "foreground", no_argument, NULL, 'f' },
        { "slots", required_argument, NULL, 's' },
        { "backend", required_argument, NULL, 'b' },
        { "http", required_argument, NULL, 'w' },
        { "http-token-file", required_argument, NULL, 't' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'H' },
        { NULL, 0, NULL, 0 },
    };
    struct daemon dd, *d = &dd;
    const char *home_arg = NULL;
    bool foreground = false;
    struct http_opts hopts = { NULL, NULL };
    int slots = 0, c, rc = 1;
    char err[1024], *home;
    FILE *logf = NULL;
    uv_loop_t *loop;

    memset(d, 0, sizeof(*d));
    d->ready_fd = -1;
    d->pidfile_fd = -1;
    d->backend = "auto";
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int64_t v;
        switch (c) {
        case 'h':
            home_arg = optarg;
            break;
        case 'f':
            foreground = true;
            break;
        case 's':
            if (parse_i64(optarg, &v) < 0 || v < 1 || v > 256) {
                fprintf(stderr, "exaqd: --slots wants a number from 1 to 256, got '%s'\n", optarg);
                return 1;
            }
            slots = (int)v;
            break;
        case 'b':
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "exaqd: --backend wants auto, cpu or cuda, got '%s'\n", optarg);
                return 1;
            }
            d->backend = optarg;
            break;
        case 'w':
            hopts.addr = optarg;
            break;
        case 't':
            hopts.token_file = optarg;
            break;
        case 'V':
            printf("exaqd %s (protocol %d, schema %d)\n", EXAQ_VERSION, PROTO_VERSION,
                   STORE_SCHEMA_VERSION);
            return 0;
        case 'H':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "exaqd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }

    if (hopts.token_file && !hopts.addr) {
        fprintf(stderr, "exaqd: --http-token-file needs --http\n");
        return 1;
    }
    if (hopts.addr && http_check_opts(&hopts, err, sizeof(err)) < 0) {
        fprintf(stderr, "exaqd: %s\n", err);
        return 1;
    }
    home = exaq_home_resolve(home_arg);
    if (mkdir_p(home, 0700) < 0 || chmod(home, 0700) < 0) {
        fprintf(stderr, "exaqd: cannot create home '%s': %s\n", home, strerror(errno));
        return 1;
    }
    d->home = path_abs(home);
    free(home);
    if (!d->home) {
        fprintf(stderr, "exaqd: cannot resolve the home directory: %s\n", strerror(errno));
        return 1;
    }
    d->sock_path = xasprintf("%s/exaqd.sock", d->home);
    d->worker_bin = find_worker_bin();
    d->hb_interval_s = env_num("EXAQ_HEARTBEAT_S", 5);
    d->hb_grace_s = env_num("EXAQ_HEARTBEAT_GRACE_S", 60);
    d->kill_grace_s = env_num("EXAQ_KILL_GRACE_S", 10);
    d->quarantine_after = (int)env_num("EXAQ_QUARANTINE_AFTER", 3);
    d->quarantine_s = env_num("EXAQ_QUARANTINE_S", 600);
    d->started_wall = now_wall();
    for (const char *sub = "artifacts\0logs\0sweeps\0workers\0"; *sub; sub += strlen(sub) + 1) {
        char *p = path_join(d->home, sub);
        if (mkdir_p(p, 0700) < 0) {
            fprintf(stderr, "exaqd: cannot create '%s': %s\n", p, strerror(errno));
            return 1;
        }
        free(p);
    }
    if (access(d->worker_bin, X_OK) < 0) {
        fprintf(stderr, "exaqd: worker program '%s' is not executable: %s\n", d->worker_bin,
                strerror(errno));
        return 1;
    }
    if (lock_pidfile(d, err, sizeof(err)) < 0) {
        fprintf(stderr, "exaqd: %s\n", err);
        return 1;
    }
    if (!foreground && daemonize(d) < 0) {
        fprintf(stderr, "exaqd: cannot daemonize: %s\n", strerror(errno));
        return 1;
    }
    write_pid(d);
    {
        char *lp = xasprintf("%s/exaqd.log", d->home);
        logf = fopen(lp, "a");
        free(lp);
    }
    log_set_prefix("exaqd");
    log_set_stream(logf ? logf : stderr);
    if (foreground && logf)
        log_set_tee(stderr);
    if (getenv("EXAQ_DEBUG"))
        log_set_level(LOG_LEVEL_DEBUG);
    if (!foreground)
        detach_stdio();
    signal(SIGPIPE, SIG_IGN);
    log_info("exaqd %s starting, home %s", EXAQ_VERSION, d->home);

    {
        char *db = xasprintf("%s/exaq.db", d->home);
        int orc = store_open(db, &d->store, err, sizeof(err));
        free(db);
        if (orc < 0)
            goto fail;
    }
    sched_init(d);
    if (submit_init(d, err, sizeof(err)) < 0 || slurm_init(d, err, sizeof(err)) < 0 ||
        sched_load(d, err, sizeof(err)) < 0)
        goto fail;
    finish_resume(d);

    loop = uv_default_loop();
    d->loop = loop;
    store_start(d->store, loop);
    if (hopts.addr && http_start(&hopts, d->home, &d->http, err, sizeof(err)) < 0)
        goto fail;
    slurm_start(d);
    if (server_listen(d, err, sizeof(err)) < 0)
        goto fail;
    uv_idle_init(loop, &d->pump_idle);
    uv_timer_init(loop, &d->tick);
    d->tick.data = d;
    uv_timer_start(&d->tick, on_tick, 1000, d->hb_interval_s < 2 ? 250 : 1000);
    uv_signal_init(loop, &d->sig_term);
    uv_signal_init(loop, &d->sig_int);
    d->sig_term.data = d->sig_int.data = d;
    uv_signal_start(&d->sig_term, on_signal, SIGTERM);
    uv_signal_start(&d->sig_int, on_signal, SIGINT);
    if (workers_init(d, slots, err, sizeof(err)) < 0)
        goto fail;
    sched_kick(d);
    sched_check_sweeps(d);
    report_ready(d, NULL);
    log_info("listening on %s", d->sock_path);

    uv_run(loop, UV_RUN_DEFAULT);
    rc = 0;
    log_info("stopped");
    goto out;
fail:
    log_error("%s", err);
    report_ready(d, err);
    if (foreground && !logf)
        fprintf(stderr, "exaqd: %s\n", err);
out:
    http_stop(d->http);
    store_close(d->store);
    if (d->loop) {
        uv_run(d->loop, UV_RUN_NOWAIT);
        if (rc == 0)
            unlink(d->sock_path);
    }
    if (rc == 0) {
        char *pp = xasprintf("%s/exaqd.pid", d->home);
        unlink(pp);
        free(pp);
    }
    slurm_release(d);
    sched_release(d);
    submit_release();
    for (int i = 0; i < d->nslots; i++) {
        free(d->slots[i].backend);
        free(d->slots[i].gpu_name);
    }
    free(d->slots);
    free(d->sock_path);
    free(d->worker_bin);
    free(d->home);
    if (logf)
        fclose(logf);
    return rc;
}
