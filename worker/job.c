/*
 * job: one stage attempt: scratch dir, exec or native stage, result.json, atomic rename.
 * See job.h. Runs on the worker's job thread; never touches the daemon connection directly.
 */
#include "worker/job.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/jw.h"
#include "common/util.h"
#include "lanes/spec.h"
#include "proto/vocab.h"
#include "worker/stages/stage.h"

static int running_pgid; /* written by the job thread, read by the main thread (atomics) */

void job_kill_running(void)
{
    pid_t g = __atomic_load_n(&running_pgid, __ATOMIC_ACQUIRE);
    if (g > 0)
        kill(-g, SIGKILL);
}

void job_release(struct job *j)
{
    free(j->key);
    free(j->kind);
    free(j->spec);
    free(j->input);
    free(j->baseline);
    free(j->stage_dir);
    free(j->final_dir);
    free(j->log);
    free(j->devices);
    free(j->cwd);
    free(j->sweep);
    free(j->lane);
    free(j->stage);
    memset(j, 0, sizeof(*j));
}

int job_parse_metrics(const char *text, struct job_metric **out, int *n, char **err)
{
    cJSON *root = cJSON_Parse(text), *c;
    *out = NULL;
    *n = 0;
    if (!root || !cJSON_IsObject(root)) {
        err_setf(err, "metrics must be a JSON object of numbers, e.g. {\"acc\": 0.5}");
        cJSON_Delete(root);
        return -1;
    }
    cJSON_ArrayForEach(c, root)
    {
        if (!cJSON_IsNumber(c) || !isfinite(c->valuedouble)) {
            err_setf(err, "metric '%.60s' is not a finite number", c->string);
            goto fail;
        }
        if (!vocab_metric_name_ok(c->string)) {
            err_setf(err, VOCAB_METRIC_NAME_RULE " ('%.60s')", c->string);
            goto fail;
        }
        *out = xrealloc(*out, (size_t)(*n + 1) * sizeof(**out));
        snprintf((*out)[*n].name, sizeof((*out)[*n].name), "%s", c->string);
        (*out)[*n].value = c->valuedouble;
        (*n)++;
    }
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    free(*out);
    *out = NULL;
    *n = 0;
    return -1;
}

/* ===== reporting helpers ===== */

struct jctx {
    const struct job *j;
    const struct job_sink *sink;
    int *cancel; /* read with __atomic_load_n */
    FILE *log;
    char tail[8][512]; /* last lines of output, for failure messages */
    int ntail;
};

static void jlog(struct jctx *x, const char *line)
{
    if (x->log) {
        fprintf(x->log, "%s\n", line);
        fflush(x->log);
    }
    snprintf(x->tail[x->ntail % 8], sizeof(x->tail[0]), "%s", line);
    x->ntail++;
    if (x->sink->log_line)
        x->sink->log_line(x->sink->arg, x->j->attempt, line);
}

static void jlogf(struct jctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jlogf(struct jctx *x, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    jlog(x, line);
}

static const char *last_output(struct jctx *x)
{
    if (x->ntail == 0)
        return "";
    return x->tail[(x->ntail - 1) % 8];
}

static bool output_mentions_oom(struct jctx *x)
{
    int n = EXAQ_MIN(x->ntail, 8);
    for (int i = 0; i < n; i++) {
        char low[512];
        size_t k;
        for (k = 0; x->tail[i][k] && k < sizeof(low) - 1; k++)
            low[k] = (char)tolower((unsigned char)x->tail[i][k]);
        low[k] = '\0';
        if (strstr(low, "out of memory") || strstr(low, "outofmemoryerror") ||
            strstr(low, "cannot allocate memory"))
            return true;
    }
    return false;
}

/* ===== exec stages ===== */

struct exec_spec {
    char *run;
    char **env; /* "K=V" */
    int nenv;
};

static int exec_spec_parse(const char *json, struct exec_spec *es, char *err, size_t errlen)
{
    cJSON *root = cJSON_Parse(json), *run, *env, *c;
    memset(es, 0, sizeof(*es));
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, errlen, "exec stage spec is not a JSON object");
        cJSON_Delete(root);
        return -1;
    }
    run = cJSON_GetObjectItemCaseSensitive(root, "run");
    if (!cJSON_IsString(run) || !run->valuestring[0]) {
        snprintf(err, errlen, "exec stage has no 'run' command");
        cJSON_Delete(root);
        return -1;
    }
    es->run = xstrdup(run->valuestring);
    env = cJSON_GetObjectItemCaseSensitive(root, "env");
    if (cJSON_IsObject(env)) {
        cJSON_ArrayForEach(c, env)
        {
            if (!cJSON_IsString(c))
                continue;
            es->env = xrealloc(es->env, (size_t)(es->nenv + 1) * sizeof(char *));
            es->env[es->nenv++] = xasprintf("%s=%s", c->string, c->valuestring);
        }
    }
    cJSON_Delete(root);
    return 0;
}

static void exec_spec_release(struct exec_spec *es)
{
    free(es->run);
    for (int i = 0; i < es->nenv; i++)
        free(es->env[i]);
    free(es->env);
}

/* Replaces {input} {output} {metrics} {stage_dir} {progress}; other braces stay as written. */
static char *substitute(const char *run, const char *const *names, const char *const *vals, int n)
{
    struct buf b;
    buf_init(&b);
    for (const char *p = run; *p;) {
        int hit = -1;
        if (*p == '{') {
            for (int i = 0; i < n; i++) {
                size_t l = strlen(names[i]);
                if (!strncmp(p + 1, names[i], l) && p[1 + l] == '}') {
                    hit = i;
                    break;
                }
            }
        }
        if (hit >= 0) {
            buf_puts(&b, vals[hit]);
            p += strlen(names[hit]) + 2;
        } else {
            buf_append(&b, p, 1);
            p++;
        }
    }
    return buf_steal(&b);
}

/* Reads the last complete "done total" line of the progress file. */
static void poll_progress(struct jctx *x, const char *path, off_t *seen)
{
    char *data = NULL;
    size_t len = 0;
    struct stat st;
    if (stat(path, &st) < 0 || st.st_size == *seen)
        return;
    *seen = st.st_size;
    if (file_read_all(path, &data, &len) < 0)
        return;
    /* Find the last newline-terminated line. */
    while (len > 0 && data[len - 1] != '\n')
        len--;
    if (len > 0) {
        char *end = data + len - 1, *start;
        double done, total;
        *end = '\0';
        start = strrchr(data, '\n');
        start = start ? start + 1 : data;
        if (sscanf(start, "%lf %lf", &done, &total) == 2 && isfinite(done) && isfinite(total) &&
            x->sink->progress)
            x->sink->progress(x->sink->arg, x->j->attempt, done, total, NULL);
    }
    free(data);
}

/* Returns 0 on success, or sets cls/msg. */
static int run_exec(struct jctx *x, const char *model_out, const char *metrics_path,
                    const char **cls, char *msg, size_t msglen)
{
    const struct job *j = x->j;
    struct exec_spec es;
    char *progress = path_join(j->stage_dir, "progress");
    const char *names[] = { "input", "output", "metrics", "stage_dir", "progress" };
    const char *vals[] = { j->input, model_out ? model_out : "", metrics_path, j->stage_dir,
                           progress };
    char *cmd = NULL, err[512];
    int pipefd[2] = { -1, -1 }, status = 0, rc = -1;
    pid_t pid;
    off_t seen = 0;
    double term_at = 0;
    bool cancelled = false;
    struct buf partial;

    buf_init(&partial);
    if (exec_spec_parse(j->spec, &es, err, sizeof(err)) < 0) {
        *cls = fail_class_name(FAIL_ERROR);
        snprintf(msg, msglen, "%s", err);
        free(progress);
        return -1;
    }
    cmd = substitute(es.run, names, vals, 5);
    jlogf(x, "exaq: running: %s", cmd);
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        *cls = fail_class_name(FAIL_ERROR);
        snprintf(msg, msglen, "pipe: %s", strerror(errno));
        goto out;
    }
    pid = fork();
    if (pid < 0) {
        *cls = fail_class_name(FAIL_OOM);
        snprintf(msg, msglen, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        char buf[64];
        int devnull = open("/dev/null", O_RDONLY);
        setpgid(0, 0);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        if (j->cwd && chdir(j->cwd) < 0) {
            fprintf(stderr, "exaq: cannot enter '%s': %s\n", j->cwd, strerror(errno));
            _exit(126);
        }
        setenv("EXAQ_INPUT", j->input, 1);
        setenv("EXAQ_OUTPUT", model_out ? model_out : "", 1);
        setenv("EXAQ_METRICS", metrics_path, 1);
        setenv("EXAQ_STAGE_DIR", j->stage_dir, 1);
        setenv("EXAQ_PROGRESS", progress, 1);
        setenv("EXAQ_KEY", j->key, 1);
        snprintf(buf, sizeof(buf), "%lld", (long long)j->attempt);
        setenv("EXAQ_ATTEMPT", buf, 1);
        if (j->sweep)
            setenv("EXAQ_SWEEP", j->sweep, 1);
        if (j->lane)
            setenv("EXAQ_LANE", j->lane, 1);
        if (j->stage)
            setenv("EXAQ_STAGE", j->stage, 1);
        if (j->devices)
            setenv("CUDA_VISIBLE_DEVICES", j->devices, 1);
        for (int i = 0; i < es.nenv; i++)
            putenv(es.env[i]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    setpgid(pid, pid); /* also here, so the group exists before we report it */
    __atomic_store_n(&running_pgid, pid, __ATOMIC_RELEASE);
    close(pipefd[1]);
    pipefd[1] = -1;
    if (x->sink->started)
        x->sink->started(x->sink->arg, j->attempt, pid);
    for (;;) {
        struct pollfd pfd = { pipefd[0], POLLIN, 0 };
        int pr = poll(&pfd, 1, 200);
        if (pr > 0) {
            char buf[8192];
            ssize_t n = read(pipefd[0], buf, sizeof(buf));
            if (n > 0) {
                buf_append(&partial, buf, (size_t)n);
                for (;;) {
                    char *nl = memchr(partial.data, '\n', partial.len);
                    size_t l;
                    if (!nl)
                        break;
                    *nl = '\0';
                    jlog(x, partial.data);
                    l = (size_t)(nl - partial.data) + 1;
                    memmove(partial.data, nl + 1, partial.len - l);
                    partial.len -= l;
                }
                if (partial.len > 65536) {
                    jlog(x, buf_cstr(&partial));
                    partial.len = 0;
                }
            } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                break; /* every writer closed its end */
            }
        }
        poll_progress(x, progress, &seen);
        if (__atomic_load_n(x->cancel, __ATOMIC_ACQUIRE) && !cancelled) {
            cancelled = true;
            jlogf(x, "exaq: cancel requested; stopping the command (SIGTERM)");
            kill(-pid, SIGTERM);
            term_at = now_mono();
        }
        if (cancelled && term_at > 0 && now_mono() - term_at > 5) {
            kill(-pid, SIGKILL);
            term_at = 0;
        }
    }
    if (partial.len)
        jlog(x, buf_cstr(&partial));
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    kill(-pid, SIGKILL); /* background leftovers of the command */
    __atomic_store_n(&running_pgid, 0, __ATOMIC_RELEASE);
    poll_progress(x, progress, &seen);
    if (cancelled || __atomic_load_n(x->cancel, __ATOMIC_ACQUIRE)) {
        *cls = fail_class_name(FAIL_CANCELLED);
        snprintf(msg, msglen, "cancelled");
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        rc = 0;
    } else if (WIFEXITED(status)) {
        int code = WEXITSTATUS(status);
        *cls = fail_class_name(output_mentions_oom(x) ? FAIL_OOM : FAIL_ERROR);
        if (code == 127)
            snprintf(msg, msglen, "command not found (exit 127): %s", last_output(x));
        else if (code == 126)
            snprintf(msg, msglen, "command could not run (exit 126): %s", last_output(x));
        else
            snprintf(msg, msglen, "command exited with status %d: %s", code, last_output(x));
    } else {
        int sig = WTERMSIG(status);
        *cls = fail_class_name(sig == SIGKILL && output_mentions_oom(x) ? FAIL_OOM : FAIL_ERROR);
        snprintf(msg, msglen, "command killed by signal %d (%s)", sig, strsignal(sig));
    }
out:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    buf_release(&partial);
    free(cmd);
    free(progress);
    exec_spec_release(&es);
    return rc;
}

/* ===== native stages ===== */

static void nat_progress(void *arg, double done, double total, const char *what)
{
    struct jctx *x = arg;
    if (x->sink->progress)
        x->sink->progress(x->sink->arg, x->j->attempt, done, total, what);
}

static void nat_metric(void *arg, const char *name, double value)
{
    struct jctx *x = arg;
    struct job_metric m;
    snprintf(m.name, sizeof(m.name), "%s", name);
    m.value = value;
    if (x->sink->metrics)
        x->sink->metrics(x->sink->arg, x->j->attempt, &m, 1);
}

static void nat_log(void *arg, const char *line)
{
    jlog(arg, line);
}

static int run_native(struct jctx *x, const struct stage_def *def, const char *model_out,
                      struct job_metric **metrics, int *nmetrics, const char **cls, char *msg,
                      size_t msglen)
{
    static const struct stage_ops ops = { nat_progress, nat_metric, nat_log };
    struct stage_ctx ctx;
    char *err = NULL;
    int rc;
    stage_ctx_init(&ctx);
    ctx.kind = x->j->kind;
    ctx.spec_json = x->j->spec;
    ctx.input_dir = x->j->input;
    ctx.baseline_dir = x->j->baseline;
    ctx.output_dir = model_out;
    ctx.stage_dir = x->j->stage_dir;
    ctx.nthreads = x->j->nthreads > 0 ? x->j->nthreads : 1;
    ctx.backend = x->j->cuda ? STAGE_BACKEND_CUDA : STAGE_BACKEND_CPU;
    ctx.cancel_flag = x->cancel;
    ctx.ops = &ops;
    ctx.ops_arg = x;
    jlogf(x, "exaq: native stage %s (%d threads)", def->kind, ctx.nthreads);
    /* The spec must be complete, exactly as the lanes parser writes it: the stage applies no
     * default of its own, and a missing or unknown field is named here. */
    if (lanes_spec_check(def->kind, x->j->spec, &err) < 0) {
        stage_fail(&ctx, STAGE_ERR_ERROR, "%s", err);
        free(err);
        rc = STAGE_ERR_ERROR;
    } else {
        rc = def->run(&ctx);
    }
    if (rc == 0) {
        *nmetrics = ctx.nmetrics;
        *metrics = xcalloc((size_t)ctx.nmetrics + 1, sizeof(**metrics));
        for (int i = 0; i < ctx.nmetrics; i++) {
            snprintf((*metrics)[i].name, sizeof((*metrics)[i].name), "%s", ctx.metrics[i].name);
            (*metrics)[i].value = ctx.metrics[i].value;
        }
    } else {
        *cls = fail_class_name(rc == STAGE_ERR_OOM         ? FAIL_OOM
                               : rc == STAGE_ERR_CANCELLED ? FAIL_CANCELLED
                                                           : FAIL_ERROR);
        snprintf(msg, msglen, "%s", ctx.errmsg[0] ? ctx.errmsg : "native stage failed");
    }
    stage_ctx_release(&ctx);
    return rc == 0 ? 0 : -1;
}

/* ===== result files ===== */

static char *result_json(const struct job *j, const struct job_metric *m, int n, int64_t size)
{
    struct buf b;
    struct jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "key", j->key);
    jw_kstr(&w, "kind", j->kind);
    jw_kint(&w, "attempt", j->attempt);
    jw_knum(&w, "finished", now_wall());
    if (size >= 0)
        jw_kint(&w, "size_bytes", size);
    jw_key(&w, "metrics");
    jw_obj_begin(&w);
    for (int i = 0; i < n; i++)
        jw_knum(&w, m[i].name, m[i].value);
    jw_obj_end(&w);
    jw_obj_end(&w);
    buf_puts(&b, "\n");
    return buf_steal(&b);
}

/* A finished result from an earlier attempt: report it instead of running again. */
static bool adopt_existing(struct jctx *x)
{
    const struct job *j = x->j;
    char *path = path_join(j->final_dir, "result.json"), *text = NULL;
    cJSON *root = NULL, *met, *sz;
    struct job_metric *m = NULL;
    int n = 0;
    int64_t size = -1;
    bool ok = false;
    if (file_read_all(path, &text, NULL) < 0)
        goto out;
    root = cJSON_Parse(text);
    met = root ? cJSON_GetObjectItemCaseSensitive(root, "metrics") : NULL;
    if (!met) {
        jlogf(x, "exaq: ignoring unreadable '%s'", path);
        goto out;
    }
    {
        char *mt = cJSON_PrintUnformatted(met);
        int prc = job_parse_metrics(mt, &m, &n, NULL);
        cJSON_free(mt);
        if (prc < 0)
            goto out;
    }
    sz = cJSON_GetObjectItemCaseSensitive(root, "size_bytes");
    if (cJSON_IsNumber(sz))
        size = (int64_t)sz->valuedouble;
    jlogf(x, "exaq: '%s' already holds a finished result; adopting it", j->final_dir);
    if (x->sink->done)
        x->sink->done(x->sink->arg, j->attempt, m, n, size, true);
    ok = true;
out:
    cJSON_Delete(root);
    free(m);
    free(text);
    free(path);
    return ok;
}

void job_run(const struct job *j, const struct job_sink *sink, int *cancel)
{
    struct jctx x;
    char *logdir, *model_out = NULL, *metrics_path, *text = NULL, msg[2048] = "";
    const char *cls = fail_class_name(FAIL_ERROR);
    struct job_metric *m = NULL;
    int n = 0, rc;
    int64_t size = -1;

    memset(&x, 0, sizeof(x));
    x.j = j;
    x.sink = sink;
    x.cancel = cancel;
    logdir = path_dirname(j->log);
    if (mkdir_p(logdir, 0755) == 0)
        x.log = fopen(j->log, "a");
    free(logdir);
    jlogf(&x, "exaq: attempt %lld of %s stage %.12s%s%s%s%s%s", (long long)j->attempt, j->kind,
          j->key, j->lane ? " (lane " : "", j->lane ? j->lane : "", j->stage ? ", " : "",
          j->stage ? j->stage : "", j->lane ? ")" : "");
    if (j->lane)
        jlogf(&x, "exaq: input %s", j->input);

    if (adopt_existing(&x))
        goto out_nofiles;

    rm_rf(j->stage_dir);
    if (mkdir_p(j->stage_dir, 0755) < 0) {
        snprintf(msg, sizeof(msg), "cannot create '%s': %s", j->stage_dir, strerror(errno));
        goto fail;
    }
    metrics_path = path_join(j->stage_dir, "metrics.json");
    if (j->produces_model) {
        model_out = path_join(j->stage_dir, "model");
        if (mkdir_p(model_out, 0755) < 0) {
            snprintf(msg, sizeof(msg), "cannot create '%s': %s", model_out, strerror(errno));
            free(metrics_path);
            goto fail;
        }
    }
    if (!is_dir(j->input)) {
        snprintf(msg, sizeof(msg), "input model dir '%s' does not exist", j->input);
        free(metrics_path);
        goto fail;
    }

    if (!strcmp(j->kind, "exec")) {
        rc = run_exec(&x, model_out, metrics_path, &cls, msg, sizeof(msg));
        if (rc == 0 && is_file(metrics_path)) {
            char *err = NULL;
            if (file_read_all(metrics_path, &text, NULL) < 0 ||
                job_parse_metrics(text, &m, &n, &err) < 0) {
                snprintf(msg, sizeof(msg), "the command's metrics file '%s' is invalid: %s",
                         metrics_path, text ? err : "unreadable");
                cls = fail_class_name(FAIL_ERROR);
                rc = -1;
            }
            free(err);
        }
    } else {
        const struct stage_def *def = stage_find(j->kind);
        if (!def) {
            snprintf(msg, sizeof(msg), "unknown stage kind '%s'", j->kind);
            rc = -1;
        } else {
            rc = run_native(&x, def, model_out, &m, &n, &cls, msg, sizeof(msg));
            if (rc == 0) {
                char *mj = result_json(j, m, n, -1);
                file_write_all(metrics_path, mj, strlen(mj));
                free(mj);
            }
        }
    }
    free(metrics_path);
    if (rc < 0)
        goto fail;
    if (model_out) {
        char *cfg = path_join(model_out, "config.json");
        bool has_cfg = is_file(cfg);
        free(cfg);
        if (!has_cfg) {
            snprintf(msg, sizeof(msg),
                     "stage finished but wrote no model: '%s' has no config.json (an exec stage "
                     "with produces: model must write a model dir to {output})",
                     model_out);
            cls = fail_class_name(FAIL_ERROR);
            goto fail;
        }
        size = dir_size_bytes(model_out);
    }
    {
        char *res = result_json(j, m, n, size);
        char *rp = path_join(j->stage_dir, "result.json");
        char *lp = path_join(j->stage_dir, "log.txt");
        char *artdir = path_dirname(j->final_dir);
        int wrc = file_write_atomic(rp, res, strlen(res));
        free(res);
        free(rp);
        if (x.log)
            fflush(x.log);
        if (file_copy(j->log, lp) < 0)
            jlogf(&x, "exaq: could not copy the log into the artifact");
        free(lp);
        if (wrc == 0) {
            char *old = NULL;
            if (is_dir(j->final_dir)) {
                old = xasprintf("%s.old-%lld", j->final_dir, (long long)j->attempt);
                rename(j->final_dir, old);
            }
            if (rename(j->stage_dir, j->final_dir) < 0)
                wrc = -errno;
            else
                fsync_dir(artdir);
            if (old) {
                rm_rf(old);
                free(old);
            }
        }
        free(artdir);
        if (wrc < 0) {
            snprintf(msg, sizeof(msg), "cannot publish the result in '%s': %s", j->final_dir,
                     strerror(-wrc));
            cls = fail_class_name(FAIL_ERROR);
            goto fail;
        }
    }
    jlogf(&x, "exaq: done%s", size >= 0 ? "" : " (metrics only)");
    if (sink->done)
        sink->done(sink->arg, j->attempt, m, n, size, false);
    goto out;
fail:
    jlogf(&x, "exaq: failed (%s): %s", cls, msg);
    rm_rf(j->stage_dir);
    if (sink->failed)
        sink->failed(sink->arg, j->attempt, cls, msg);
out:
out_nofiles:
    free(model_out);
    free(text);
    free(m);
    if (x.log)
        fclose(x.log);
}
