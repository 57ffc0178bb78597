/*
 * exaqctl: the command-line client of exaqd.
 *
 *   exaqctl [--home DIR] COMMAND ...     (see usage() and docs/cli.md)
 *
 * Exit codes: 0 success, 1 user error (one line per problem on stderr), 2 exaqd unreachable
 * (with the command that starts it), 3 wait timeout.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "ctl/ctl.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: exaqctl [--home DIR] COMMAND [ARGS]\n"
               "\n"
               "  submit FILE.yaml [--rerun] [--priority N]   queue a sweep; prints its id\n"
               "  status [SWEEP] [--json]                     sweeps, lanes, stages, progress\n"
               "  watch [SWEEP]                               live view until the sweep ends\n"
               "  wait SWEEP [--timeout SEC]                  block until every lane has ended\n"
               "  logs SWEEP LANE [STAGE] [-f] [--all]        a lane's stage logs\n"
               "  rank SWEEP [--json|--csv|--md]              lanes ranked by score\n"
               "  package SWEEP [--top N] [--out DIR]         write the top-N submission zips\n"
               "  cancel SWEEP [LANE]                         cancel a sweep or one lane\n"
               "  retry SWEEP [LANE] [--failed]               re-queue failed or cancelled lanes\n"
               "  gc SWEEP [--keep best]                      remove artifacts nobody needs\n"
               "  shutdown [--drain]                          stop exaqd (--drain: finish first)\n"
               "  ping                                        is exaqd up?\n"
               "\n"
               "The home directory is --home, else $EXAQ_HOME, else ./results.\n"
               "Exit codes: 0 ok, 1 user error, 2 exaqd unreachable, 3 wait timed out.\n");
}

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "exaqctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nexaqctl: see 'exaqctl --help'\n");
    return CTL_EUSER;
}

/* Splits argv into positional args and flags. Flags take a value when listed in with_value. */
struct args {
    const char *pos[8];
    int npos;
    const char *flag[16];
    const char *val[16];
    int nflag;
};

static int parse_args(int argc, char **argv, const char *known, const char *with_value,
                      struct args *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (s[0] == '-' && s[1]) {
            char pat[64];
            const char *eq = strchr(s, '=');
            size_t l = eq ? (size_t)(eq - s) : strlen(s);
            snprintf(pat, sizeof(pat), " %.*s ", (int)l, s);
            if (!strstr(known, pat))
                return bad_usage("unknown option '%s'", s);
            if (a->nflag >= 16)
                return bad_usage("too many options%s", "");
            a->flag[a->nflag] = xstrndup(s, l);
            if (strstr(with_value, pat)) {
                if (eq)
                    a->val[a->nflag] = eq + 1;
                else if (i + 1 < argc)
                    a->val[a->nflag] = argv[++i];
                else
                    return bad_usage("option '%s' needs a value", s);
            }
            a->nflag++;
        } else {
            if (a->npos >= 8)
                return bad_usage("too many arguments (at '%s')", s);
            a->pos[a->npos++] = s;
        }
    }
    return 0;
}

static void free_args(struct args *a)
{
    for (int i = 0; i < a->nflag; i++)
        free((char *)a->flag[i]);
}

static const char *flag(const struct args *a, const char *name, bool *present)
{
    for (int i = 0; i < a->nflag; i++) {
        if (!strcmp(a->flag[i], name)) {
            if (present)
                *present = true;
            return a->val[i] ? a->val[i] : "";
        }
    }
    if (present)
        *present = false;
    return NULL;
}

static int need_pos(const struct args *a, int min, int max, const char *what)
{
    if (a->npos < min)
        return bad_usage("missing %s", what);
    if (a->npos > max)
        return bad_usage("unexpected argument '%s'", a->pos[max]);
    return 0;
}

/* ---- commands ---- */

static int cmd_submit(struct ctl *c, struct args *a)
{
    struct proto_msg m, r;
    const char *prio;
    char *abs;
    bool rerun;
    int rc;
    if ((rc = need_pos(a, 1, 1, "the lanes file (exaqctl submit FILE.yaml)")))
        return rc;
    abs = path_abs(a->pos[0]);
    if (!abs) {
        fprintf(stderr, "exaqctl: cannot read '%s': %s\n", a->pos[0], strerror(errno));
        return CTL_EUSER;
    }
    proto_msg_init(&m, PROTO_T_submit);
    proto_set_str(&m.u.submit.path, &m.u.submit.has_path, abs);
    free(abs);
    flag(a, "--rerun", &rerun);
    if (rerun) {
        m.u.submit.rerun = true;
        m.u.submit.has_rerun = true;
    }
    if ((prio = flag(a, "--priority", NULL))) {
        int64_t p;
        if (parse_i64(prio, &p) < 0) {
            proto_msg_release(&m);
            return bad_usage("--priority wants an integer, got '%s'", prio);
        }
        m.u.submit.priority = p;
        m.u.submit.has_priority = true;
    }
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    printf("%s\n", r.u.submit_r.sweep);
    if (r.u.submit_r.existed)
        fprintf(stderr, "exaqctl: sweep %s was already submitted; nothing new queued\n",
                r.u.submit_r.sweep);
    else
        fprintf(stderr,
                "exaqctl: queued %lld lanes (baseline included), %lld stages, %lld reused\n",
                (long long)r.u.submit_r.lanes, (long long)r.u.submit_r.stages,
                (long long)r.u.submit_r.reused);
    proto_msg_release(&r);
    return CTL_OK;
}

static int cmd_status(struct ctl *c, struct args *a)
{
    bool json;
    int rc;
    cJSON *doc;
    if ((rc = need_pos(a, 0, 1, "")))
        return rc;
    flag(a, "--json", &json);
    doc = ctl_status(c, a->npos ? a->pos[0] : NULL, &rc);
    if (!doc)
        return rc;
    if (json) {
        char *s = cJSON_Print(doc);
        printf("%s\n", s);
        cJSON_free(s);
    } else {
        view_status(stdout, doc, true, isatty(1));
    }
    cJSON_Delete(doc);
    return CTL_OK;
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int s)
{
    (void)s;
    interrupted = 1;
}

static bool all_finished(const cJSON *doc, const char *sweep)
{
    const cJSON *sw, *list = cJSON_GetObjectItemCaseSensitive(doc, "sweeps");
    cJSON_ArrayForEach(sw, list)
    {
        if (sweep && strcmp(view_str(sw, "id"), sweep))
            continue;
        if (!view_sweep_finished(sw))
            return false;
    }
    return true;
}

static int cmd_watch(struct ctl *c, struct args *a)
{
    bool tty = isatty(1);
    int rc;
    char *id = NULL;
    if ((rc = need_pos(a, 0, 1, "")))
        return rc;
    signal(SIGINT, on_sigint);
    for (;;) {
        cJSON *doc = ctl_status(c, a->npos ? a->pos[0] : NULL, &rc);
        bool fin;
        if (!doc)
            return rc;
        if (a->npos && !id) {
            const cJSON *sw = view_find_sweep(doc, a->pos[0]);
            id = sw ? xstrdup(view_str(sw, "id")) : NULL;
        }
        fin = all_finished(doc, id);
        if (tty)
            fputs("\033[H\033[2J", stdout);
        view_status(stdout, doc, true, tty);
        fflush(stdout);
        cJSON_Delete(doc);
        if (fin || interrupted)
            break;
        if (!tty)
            printf("---\n");
        usleep(tty ? 500000 : 2000000);
    }
    free(id);
    return CTL_OK;
}

static int cmd_wait(struct ctl *c, struct args *a)
{
    const char *ts = flag(a, "--timeout", NULL);
    double timeout = -1, t0 = now_mono(), delay = 0.1;
    char *id = NULL;
    int rc;
    if ((rc = need_pos(a, 1, 1, "the sweep id (exaqctl wait SWEEP)")))
        return rc;
    if (ts && (parse_f64(ts, &timeout) < 0 || timeout < 0))
        return bad_usage("--timeout wants seconds, got '%s'", ts);
    for (;;) {
        cJSON *doc = ctl_status(c, a->pos[0], &rc);
        const cJSON *sw;
        bool fin;
        if (!doc)
            return rc;
        sw = view_find_sweep(doc, a->pos[0]);
        if (!id && sw)
            id = xstrdup(view_str(sw, "id"));
        fin = sw && view_sweep_finished(sw);
        cJSON_Delete(doc);
        if (fin)
            break;
        if (timeout >= 0 && now_mono() - t0 >= timeout) {
            fprintf(stderr, "exaqctl: sweep %s still running after %.0fs\n", id ? id : a->pos[0],
                    timeout);
            free(id);
            return CTL_ETIMEOUT;
        }
        usleep((useconds_t)(delay * 1e6));
        if (delay < 1)
            delay *= 1.5;
    }
    free(id);
    return CTL_OK;
}

/* The newest attempt log in dir, or NULL. */
static char *latest_log(const char *dir, long *attempt)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    long best = -1;
    if (!d)
        return NULL;
    while ((de = readdir(d))) {
        long n;
        if (sscanf(de->d_name, "attempt-%ld.log", &n) == 1 && n > best)
            best = n;
    }
    closedir(d);
    if (best < 0)
        return NULL;
    *attempt = best;
    return xasprintf("%s/attempt-%ld.log", dir, best);
}

static int list_logs(const char *dir, long **ids)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    *ids = NULL;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        long id;
        if (sscanf(de->d_name, "attempt-%ld.log", &id) == 1) {
            *ids = xrealloc(*ids, (size_t)(n + 1) * sizeof(long));
            (*ids)[n++] = id;
        }
    }
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && (*ids)[k - 1] > (*ids)[k]; k--) {
            long t = (*ids)[k];
            (*ids)[k] = (*ids)[k - 1];
            (*ids)[k - 1] = t;
        }
    return n;
}

static off_t print_from(const char *path, off_t off)
{
    FILE *f = fopen(path, "r");
    char buf[65536];
    size_t n;
    if (!f)
        return off;
    if (fseeko(f, off, SEEK_SET) == 0) {
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
            fwrite(buf, 1, n, stdout);
            off += (off_t)n;
        }
    }
    fclose(f);
    fflush(stdout);
    return off;
}

static cJSON *get_logs(struct ctl *c, struct args *a, int *rc)
{
    struct proto_msg m, r;
    cJSON *doc;
    proto_msg_init(&m, PROTO_T_logs);
    proto_set_str(&m.u.logs.sweep, &m.u.logs.has_sweep, a->pos[0]);
    proto_set_str(&m.u.logs.lane, &m.u.logs.has_lane, a->pos[1]);
    if (a->npos > 2)
        proto_set_str(&m.u.logs.stage, &m.u.logs.has_stage, a->pos[2]);
    *rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (*rc)
        return NULL;
    doc = cJSON_Parse(r.u.logs_r.logs);
    proto_msg_release(&r);
    if (!doc)
        *rc = CTL_EDAEMON;
    return doc;
}

static bool stage_active(const char *state)
{
    enum view_state v = view_state_parse(state);
    return v == VIEW_RUNNING || v == VIEW_QUEUED || v == VIEW_WAITING;
}

static int cmd_logs(struct ctl *c, struct args *a)
{
    bool follow, all;
    int rc;
    cJSON *doc;
    const cJSON *stages, *st;
    if ((rc = need_pos(a, 2, 3, "SWEEP and LANE (exaqctl logs SWEEP LANE [STAGE])")))
        return rc;
    flag(a, "-f", &follow);
    if (!follow)
        flag(a, "--follow", &follow);
    flag(a, "--all", &all);
    doc = get_logs(c, a, &rc);
    if (!doc)
        return rc;
    stages = cJSON_GetObjectItemCaseSensitive(doc, "stages");
    if (!follow) {
        cJSON_ArrayForEach(st, stages)
        {
            const char *dir = view_str(st, "log_dir");
            long *ids = NULL;
            int n = list_logs(dir, &ids);
            printf("==> %s/%s (%s, %s) <==\n", view_str(doc, "lane"), view_str(st, "name"),
                   view_str(st, "kind"), view_str(st, "state"));
            if (n == 0)
                printf("(no output yet)\n");
            for (int i = all ? 0 : EXAQ_MAX(0, n - 1); i < n; i++) {
                char *p = xasprintf("%s/attempt-%ld.log", dir, ids[i]);
                if (all && n > 1)
                    printf("--- attempt log %ld ---\n", ids[i]);
                print_from(p, 0);
                free(p);
            }
            free(ids);
        }
        cJSON_Delete(doc);
        return CTL_OK;
    }
    /* Follow: print what each stage's newest log gains until no listed stage is active. */
    {
        int n = cJSON_GetArraySize(stages);
        char **path = xcalloc((size_t)n + 1, sizeof(char *));
        off_t *off = xcalloc((size_t)n + 1, sizeof(off_t));
        signal(SIGINT, on_sigint);
        for (;;) {
            bool active = false;
            int i = 0;
            stages = cJSON_GetObjectItemCaseSensitive(doc, "stages");
            cJSON_ArrayForEach(st, stages)
            {
                long att = 0;
                char *p = latest_log(view_str(st, "log_dir"), &att);
                if (p && (!path[i] || strcmp(p, path[i]))) {
                    printf("==> %s/%s (attempt log %ld) <==\n", view_str(doc, "lane"),
                           view_str(st, "name"), att);
                    free(path[i]);
                    path[i] = p;
                    off[i] = 0;
                } else {
                    free(p);
                }
                if (path[i])
                    off[i] = print_from(path[i], off[i]);
                active |= stage_active(view_str(st, "state"));
                i++;
            }
            if (!active || interrupted)
                break;
            usleep(300000);
            cJSON_Delete(doc);
            doc = get_logs(c, a, &rc);
            if (!doc)
                break;
        }
        for (int i = 0; i < n; i++)
            free(path[i]);
        free(path);
        free(off);
    }
    cJSON_Delete(doc);
    return rc;
}

static int cmd_cancel(struct ctl *c, struct args *a)
{
    struct proto_msg m, r;
    int rc;
    if ((rc = need_pos(a, 1, 2, "the sweep id (exaqctl cancel SWEEP [LANE])")))
        return rc;
    proto_msg_init(&m, PROTO_T_cancel);
    proto_set_str(&m.u.cancel.sweep, &m.u.cancel.has_sweep, a->pos[0]);
    if (a->npos > 1)
        proto_set_str(&m.u.cancel.lane, &m.u.cancel.has_lane, a->pos[1]);
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    printf("cancelled %lld lane%s\n", (long long)r.u.cancel_r.lanes,
           r.u.cancel_r.lanes == 1 ? "" : "s");
    proto_msg_release(&r);
    return CTL_OK;
}

static int cmd_retry(struct ctl *c, struct args *a)
{
    struct proto_msg m, r;
    bool failed;
    int rc;
    if ((rc = need_pos(a, 1, 2, "the sweep id (exaqctl retry SWEEP [LANE])")))
        return rc;
    proto_msg_init(&m, PROTO_T_retry);
    proto_set_str(&m.u.retry.sweep, &m.u.retry.has_sweep, a->pos[0]);
    if (a->npos > 1)
        proto_set_str(&m.u.retry.lane, &m.u.retry.has_lane, a->pos[1]);
    flag(a, "--failed", &failed);
    m.u.retry.failed = failed;
    m.u.retry.has_failed = true;
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    printf("re-queued %lld lane%s (%lld stage%s)\n", (long long)r.u.retry_r.lanes,
           r.u.retry_r.lanes == 1 ? "" : "s", (long long)r.u.retry_r.stages,
           r.u.retry_r.stages == 1 ? "" : "s");
    proto_msg_release(&r);
    return CTL_OK;
}

static int cmd_rank(struct ctl *c, struct args *a)
{
    bool j, csv, md;
    int rc;
    if ((rc = need_pos(a, 1, 1, "the sweep id (exaqctl rank SWEEP)")))
        return rc;
    flag(a, "--json", &j);
    flag(a, "--csv", &csv);
    flag(a, "--md", &md);
    if (j + csv + md > 1)
        return bad_usage("choose one of --json, --csv and --md%s", "");
    return ctl_rank(c, a->pos[0], j ? "json" : csv ? "csv" : md ? "md" : "table");
}

static int cmd_package(struct ctl *c, struct args *a)
{
    const char *top = flag(a, "--top", NULL), *out = flag(a, "--out", NULL);
    int64_t n = -1;
    int rc;
    char *abs = NULL;
    if ((rc = need_pos(a, 1, 1, "the sweep id (exaqctl package SWEEP)")))
        return rc;
    if (top && (parse_i64(top, &n) < 0 || n < 0 || n > 1000))
        return bad_usage("--top wants a number from 0 to 1000, got '%s'", top);
    if (out) {
        if (mkdir_p(out, 0755) < 0 || !(abs = path_abs(out))) {
            fprintf(stderr, "exaqctl: cannot create '%s': %s\n", out, strerror(errno));
            return CTL_EUSER;
        }
    }
    rc = ctl_package(c, a->pos[0], (int)n, abs);
    free(abs);
    return rc;
}

static int cmd_gc(struct ctl *c, struct args *a)
{
    const char *keep = flag(a, "--keep", NULL);
    int rc;
    if ((rc = need_pos(a, 1, 1, "the sweep id (exaqctl gc SWEEP --keep best)")))
        return rc;
    if (keep && strcmp(keep, "best"))
        return bad_usage("--keep supports 'best', got '%s'", keep);
    return ctl_gc(c, a->pos[0], keep ? keep : "best");
}

static int cmd_shutdown(struct ctl *c, struct args *a)
{
    struct proto_msg m, r;
    bool drain;
    int rc;
    if ((rc = need_pos(a, 0, 0, "")))
        return rc;
    proto_msg_init(&m, PROTO_T_shutdown);
    flag(a, "--drain", &drain);
    m.u.shutdown.drain = drain;
    m.u.shutdown.has_drain = true;
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    if (drain && r.u.shutdown_r.running > 0)
        printf("exaqd stops after %lld running stage%s finish\n", (long long)r.u.shutdown_r.running,
               r.u.shutdown_r.running == 1 ? "" : "s");
    else
        printf("exaqd is stopping\n");
    proto_msg_release(&r);
    return CTL_OK;
}

static int cmd_ping(struct ctl *c, struct args *a)
{
    struct proto_msg m, r;
    int rc;
    (void)a;
    proto_msg_init(&m, PROTO_T_ping);
    rc = ctl_request(c, &m, &r);
    if (rc)
        return rc;
    printf("exaqd %s (pid %lld) home %s, %lld slot%s\n", r.u.ping_r.version,
           (long long)r.u.ping_r.pid, r.u.ping_r.home, (long long)r.u.ping_r.slots,
           r.u.ping_r.slots == 1 ? "" : "s");
    proto_msg_release(&r);
    return CTL_OK;
}

struct cmd {
    const char *name;
    int (*fn)(struct ctl *c, struct args *a);
    const char *known;      /* " --flag ... " */
    const char *with_value; /* flags that take a value */
};

static const struct cmd cmds[] = {
    { "submit", cmd_submit, " --rerun --priority ", " --priority " },
    { "status", cmd_status, " --json ", "" },
    { "watch", cmd_watch, " ", "" },
    { "wait", cmd_wait, " --timeout ", " --timeout " },
    { "logs", cmd_logs, " -f --follow --all ", "" },
    { "rank", cmd_rank, " --json --csv --md ", "" },
    { "package", cmd_package, " --top --out ", " --top --out " },
    { "cancel", cmd_cancel, " ", "" },
    { "retry", cmd_retry, " --failed ", "" },
    { "gc", cmd_gc, " --keep ", " --keep " },
    { "shutdown", cmd_shutdown, " --drain ", "" },
    { "ping", cmd_ping, " ", "" },
};

int main(int argc, char **argv)
{
    struct ctl c;
    const char *home_arg = NULL;
    struct args a;
    int i = 1, rc;
    char *home;

    /* A daemon that refuses us closes the socket: the write must fail with EPIPE (and the
     * daemon's message still be read), not kill exaqctl. */
    signal(SIGPIPE, SIG_IGN);
    while (i < argc && argv[i][0] == '-') {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--protocol")) {
            /* Every message and field of proto.def; docs/protocol.md is checked against it. */
            char *d = proto_describe();
            fputs(d, stdout);
            free(d);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("exaqctl %s (protocol %d)\n", EXAQ_VERSION, PROTO_VERSION);
            return 0;
        }
        if (!strcmp(argv[i], "--home") && i + 1 < argc) {
            home_arg = argv[i + 1];
            i += 2;
        } else if (!strncmp(argv[i], "--home=", 7)) {
            home_arg = argv[i] + 7;
            i++;
        } else {
            return bad_usage("unknown option '%s'", argv[i]);
        }
    }
    if (i >= argc) {
        usage(stderr);
        return CTL_EUSER;
    }
    for (size_t k = 0; k < EXAQ_ARRAY_LEN(cmds); k++) {
        if (strcmp(cmds[k].name, argv[i]))
            continue;
        /* --home may also follow the command. */
        {
            char **rest = xcalloc((size_t)argc, sizeof(char *));
            int nrest = 0;
            for (int j = i + 1; j < argc; j++) {
                if (!strcmp(argv[j], "--home") && j + 1 < argc)
                    home_arg = argv[++j];
                else if (!strncmp(argv[j], "--home=", 7))
                    home_arg = argv[j] + 7;
                else
                    rest[nrest++] = argv[j];
            }
            rc = parse_args(nrest, rest, cmds[k].known, cmds[k].with_value, &a);
            free(rest);
        }
        if (rc)
            return rc;
        home = exaq_home_resolve(home_arg);
        c.home = path_abs(home);
        if (!c.home)
            c.home = home;
        else
            free(home);
        c.sock = xasprintf("%s/exaqd.sock", c.home);
        rc = cmds[k].fn(&c, &a);
        free_args(&a);
        free(c.sock);
        free(c.home);
        return rc;
    }
    return bad_usage("unknown command '%s'", argv[i]);
}
