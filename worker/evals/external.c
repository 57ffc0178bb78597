/*
 * external: running vLLM's latency benchmark and lm-evaluation-harness, and reading their
 * result files (external.h).
 */
#include "worker/evals/external.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/util.h"
#include "proto/vocab.h"

void ext_metrics_add(struct ext_metrics *m, const char *name, double v)
{
    m->names = xrealloc(m->names, (size_t)(m->n + 1) * sizeof(*m->names));
    m->values = xrealloc(m->values, (size_t)(m->n + 1) * sizeof(*m->values));
    m->names[m->n] = xstrdup(name);
    m->values[m->n++] = v;
}

void ext_metrics_release(struct ext_metrics *m)
{
    for (int i = 0; i < m->n; i++)
        free(m->names[i]);
    free(m->names);
    free(m->values);
    memset(m, 0, sizeof(*m));
}

/* ===== command lines ===== */

int ext_split(const char *cmd, char ***argv)
{
    int n = 0;
    char **v = xcalloc(1, sizeof(*v));
    const char *p = cmd ? cmd : "";
    while (*p) {
        const char *q;
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        q = p;
        while (*q && *q != ' ' && *q != '\t' && *q != '\n')
            q++;
        v = xrealloc(v, (size_t)(n + 2) * sizeof(*v));
        v[n++] = xstrndup(p, (size_t)(q - p));
        v[n] = NULL;
        p = q;
    }
    *argv = v;
    return n;
}

void ext_argv_free(char **argv)
{
    for (char **p = argv; p && *p; p++)
        free(*p);
    free(argv);
}

char *ext_which(const char *argv0)
{
    const char *path = getenv("PATH"), *p;
    if (!argv0 || !*argv0)
        return NULL;
    if (strchr(argv0, '/'))
        return access(argv0, X_OK) == 0 && !is_dir(argv0) ? xstrdup(argv0) : NULL;
    for (p = path ? path : "/usr/bin:/bin"; p;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        char *cand = len ? xasprintf("%.*s/%s", (int)len, p, argv0) : xasprintf("./%s", argv0);
        if (access(cand, X_OK) == 0 && !is_dir(cand))
            return cand;
        free(cand);
        p = colon ? colon + 1 : NULL;
    }
    return NULL;
}

/* ===== running ===== */

static void emit_lines(struct buf *partial, ext_line_fn fn, void *arg, int flush)
{
    for (;;) {
        char *nl = partial->len ? memchr(partial->data, '\n', partial->len) : NULL;
        size_t l;
        if (!nl)
            break;
        *nl = '\0';
        if (fn)
            fn(arg, partial->data);
        l = (size_t)(nl - partial->data) + 1;
        memmove(partial->data, nl + 1, partial->len - l);
        partial->len -= l;
    }
    if (partial->len && (flush || partial->len > 65536)) {
        if (fn)
            fn(arg, buf_cstr(partial));
        partial->len = 0;
    }
}

int ext_run(char *const *argv, char *const *env, int nenv, const char *cwd, ext_line_fn fn,
            void *arg, const int *cancel)
{
    int pipefd[2], status = 0;
    pid_t pid;
    struct buf partial;
    int cancelled = 0;
    double term_at = 0;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return -e;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        setpgid(0, 0);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        if (cwd && chdir(cwd) < 0) {
            fprintf(stderr, "exaq: cannot enter '%s': %s\n", cwd, strerror(errno));
            _exit(126);
        }
        for (int i = 0; i < nenv; i++)
            putenv(env[i]);
        execv(argv[0], argv);
        fprintf(stderr, "exaq: cannot run '%s': %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(pipefd[1]);
    buf_init(&partial);
    for (;;) {
        struct pollfd pfd = { pipefd[0], POLLIN, 0 };
        int pr = poll(&pfd, 1, 200);
        if (pr > 0) {
            char b[8192];
            ssize_t n = read(pipefd[0], b, sizeof(b));
            if (n > 0) {
                buf_append(&partial, b, (size_t)n);
                emit_lines(&partial, fn, arg, 0);
            } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                break;
            }
        }
        if (cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE) && !cancelled) {
            cancelled = 1;
            kill(-pid, SIGTERM);
            term_at = now_mono();
        }
        if (cancelled && term_at > 0 && now_mono() - term_at > 5) {
            kill(-pid, SIGKILL);
            term_at = 0;
        }
    }
    emit_lines(&partial, fn, arg, 1);
    buf_release(&partial);
    close(pipefd[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    kill(-pid, SIGKILL); /* leftovers of the tool (engine workers) */
    if (cancelled)
        return -ECANCELED;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 256 + WTERMSIG(status);
}

/* ===== vllm bench latency ===== */

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int ext_vllm_latency_parse(const char *text, int output_len, struct ext_metrics *out, char *err,
                           size_t errlen)
{
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *lat, *avg, *std, *pct, *x;
    double *v = NULL, med;
    int n = 0, rc = -EINVAL;

    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "the latency JSON is not a JSON object");
        goto out;
    }
    lat = cJSON_GetObjectItemCaseSensitive(root, "latencies");
    avg = cJSON_GetObjectItemCaseSensitive(root, "avg_latency");
    std = cJSON_GetObjectItemCaseSensitive(root, "std_latency");
    pct = cJSON_GetObjectItemCaseSensitive(root, "percentiles");
    if (!cJSON_IsArray(lat) || cJSON_GetArraySize(lat) < 1) {
        snprintf(err, errlen, "the latency JSON has no 'latencies' list");
        goto out;
    }
    if (!cJSON_IsNumber(avg)) {
        snprintf(err, errlen, "the latency JSON has no number 'avg_latency'");
        goto out;
    }
    if (output_len < 1) {
        snprintf(err, errlen, "output_len must be >= 1");
        goto out;
    }
    v = xcalloc((size_t)cJSON_GetArraySize(lat), sizeof(double));
    cJSON_ArrayForEach(x, lat)
    {
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) || x->valuedouble <= 0) {
            snprintf(err, errlen, "latency %d is not a positive number", n + 1);
            goto out;
        }
        v[n++] = x->valuedouble;
    }
    qsort(v, (size_t)n, sizeof(double), cmp_dbl);
    med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    ext_metrics_add(out, "time_per_token", med / output_len);
    ext_metrics_add(out, "latency_avg", avg->valuedouble);
    if (cJSON_IsNumber(std))
        ext_metrics_add(out, "latency_std", std->valuedouble);
    cJSON_ArrayForEach(x, pct)
    {
        char name[64];
        int ok = x->string && *x->string && cJSON_IsNumber(x);
        for (const char *p = x->string; ok && *p; p++)
            ok = isdigit((unsigned char)*p);
        if (!ok || strlen(x->string) > 3)
            continue;
        snprintf(name, sizeof(name), "latency_p%s", x->string);
        ext_metrics_add(out, name, x->valuedouble);
    }
    ext_metrics_add(out, "latency_min", v[0]);
    ext_metrics_add(out, "latency_max", v[n - 1]);
    ext_metrics_add(out, "vllm_iters", n);
    rc = 0;
out:
    free(v);
    cJSON_Delete(root);
    return rc;
}

/* ===== lm-evaluation-harness ===== */

static int import_section(const cJSON *sec, struct ext_metrics *out, int *skipped)
{
    const cJSON *task, *e;
    int added = 0;
    cJSON_ArrayForEach(task, sec)
    {
        if (!cJSON_IsObject(task) || !task->string || !*task->string)
            continue;
        cJSON_ArrayForEach(e, task)
        {
            const char *k = e->string, *comma;
            struct buf name;
            bool dup = false;
            if (!k || !cJSON_IsNumber(e) || !isfinite(e->valuedouble))
                continue; /* alias, "N/A" stderr, ... */
            comma = strchr(k, ',');
            buf_init(&name);
            buf_printf(&name, "%s.%.*s", task->string, (int)(comma ? comma - k : (long)strlen(k)),
                       k);
            if (comma && strcmp(comma + 1, "none") != 0) {
                buf_puts(&name, "_");
                for (const char *p = comma + 1; *p; p++) {
                    char c = (char)tolower((unsigned char)*p);
                    buf_append(&name, isalnum((unsigned char)c) || c == '_' ? &c : "_", 1);
                }
            }
            for (int i = 0; i < out->n && !dup; i++)
                dup = strcmp(out->names[i], buf_cstr(&name)) == 0;
            if (dup) {
                /* A group listed in both "results" and "groups": the first one counts. */
            } else if (!vocab_metric_name_ok(buf_cstr(&name))) {
                if (skipped)
                    (*skipped)++;
            } else {
                ext_metrics_add(out, buf_cstr(&name), e->valuedouble);
                added++;
            }
            buf_release(&name);
        }
    }
    return added;
}

int ext_lm_eval_parse(const char *text, struct ext_metrics *out, int *skipped, char *err,
                      size_t errlen)
{
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *res;
    int rc = -EINVAL;
    if (skipped)
        *skipped = 0;
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "the lm_eval results file is not a JSON object");
        goto out;
    }
    res = cJSON_GetObjectItemCaseSensitive(root, "results");
    if (!cJSON_IsObject(res) || !res->child) {
        snprintf(err, errlen, "the lm_eval results file has no task in 'results'");
        goto out;
    }
    import_section(res, out, skipped);
    import_section(cJSON_GetObjectItemCaseSensitive(root, "groups"), out, skipped);
    if (out->n == 0) {
        snprintf(err, errlen, "the lm_eval results file has no numeric metric");
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static void newest_in(const char *dir, char **best, int depth)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d))) {
        char *p;
        size_t n = strlen(e->d_name);
        if (e->d_name[0] == '.')
            continue;
        p = path_join(dir, e->d_name);
        if (depth > 0 && is_dir(p)) {
            newest_in(p, best, depth - 1);
        } else if (n > 13 && strncmp(e->d_name, "results_", 8) == 0 &&
                   strcmp(e->d_name + n - 5, ".json") == 0) {
            const char *bn = *best ? strrchr(*best, '/') + 1 : NULL;
            if (!bn || strcmp(e->d_name, bn) > 0) {
                free(*best);
                *best = p;
                p = NULL;
            }
        }
        free(p);
    }
    closedir(d);
}

char *ext_lm_eval_results_file(const char *dir)
{
    char *best = NULL;
    newest_in(dir, &best, 1);
    return best;
}
