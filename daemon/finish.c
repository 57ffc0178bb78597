/*
 * finish: what happens when every lane of a sweep has ended, and the rank, package and gc
 * requests.
 *
 * DESIGN. Ranking is arithmetic on metrics already in memory, so it runs on the loop thread:
 * the model is copied into a struct rank_result (rank.h) and scored there. Everything that
 * touches the disk (model checks, copies, zips, rank.csv/report.md/report.html, hooks.log,
 * deleting artifacts) runs in one uv_queue_work job whose body sees only the strings copied
 * into struct fin_job, never struct daemon or the sweeps. The after-work callback brings the
 * results back to the loop. Hooks run through uv_spawn (/bin/sh -c, own session, output
 * appended to sweeps/<id>/hooks.log), watched by a timer that kills them after
 * EXAQ_HOOK_TIMEOUT_S seconds (default 600) or when exaqd shuts down.
 *
 * The order for an ended sweep: sw->finishing = true; rank (loop); package, then write the
 * reports with the package outcomes (thread pool); run the hook; sw->finishing = false; then
 * record {rank document + hook outcome, package document} in the results table. A sweep that
 * ended but has no results row (exaqd died while finishing it) is finished again at start-up
 * (finish_resume), so the packages and the hook happen at least once.
 *
 * Module state (loop thread only): per sweep, the latest package document of its default
 * submissions dir (shown by `rank`), the hook outcome, and whether a job is in flight.
 */
#include "daemon/exaqd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "common/jw.h"
#include "common/log.h"
#include "daemon/pkg.h"
#include "daemon/rank.h"
#include "proto/report.h"
#include "daemon/store.h"

extern char **environ;

/* ===== per-sweep records ===== */

struct fin_rec {
    char *pkg;            /* package document of sweeps/<id>/submissions, or NULL */
    char *hook;           /* hook outcome (JSON object text), or NULL */
    bool has_row;         /* the results table has a row for the sweep */
    double resumed_ended; /* > 0: finish_resume cleared sw->ended; restore this value */
    bool busy;            /* a package job of this sweep is in flight */
    bool finish_after;    /* the sweep ended during that job: finish it when the job is done */
};

static struct hmap recs;
static bool recs_ready;
static int jobs_running; /* finish and package jobs in flight */
static int gc_running;   /* gc jobs in flight */

static struct fin_rec *rec_get(const char *id)
{
    struct fin_rec *r;
    if (!recs_ready) {
        hmap_init(&recs);
        recs_ready = true;
    }
    r = hmap_get(&recs, id);
    if (!r) {
        r = xcalloc(1, sizeof(*r));
        hmap_put(&recs, id, r);
    }
    return r;
}

static void set_owned(char **dst, char *src_take)
{
    free(*dst);
    *dst = src_take;
}

/* ===== the model as a rank_result (loop thread) ===== */

static char *lane_model_dir(struct daemon *d, const struct dlane *l)
{
    for (int i = l->n - 1; i >= 0; i--)
        if (!l->is_eval[i] && l->st[i]->produces_model)
            return xasprintf("%s/artifacts/%s/model", d->home, l->st[i]->key);
    return xstrdup(l->sw->base_model);
}

/*
 * The `name` of an eval stage's spec (docs/evals.md "Named evals"), or NULL. This is the one
 * place where a named eval's metrics become NAME.METRIC: the worker, the stage cache and the
 * metrics table keep the kind's own names, and every lane view (rank, reports, packages, score)
 * is built here. New string.
 */
static char *eval_name(const char *spec)
{
    cJSON *root = spec ? cJSON_Parse(spec) : NULL;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "name");
    char *out = cJSON_IsString(n) && n->valuestring[0] ? xstrdup(n->valuestring) : NULL;
    cJSON_Delete(root);
    return out;
}

static void lane_fill(struct daemon *d, struct rank_lane *rl, const struct dlane *l)
{
    enum lane_state s = sched_lane_state(l);
    char *md = lane_model_dir(d, l);
    int idx = rl->idx;

    rank_lane_set(rl, l->id, l->grp, lane_state_name(s), md, sched_lane_size(l));
    rl->idx = idx;
    free(md);
    for (int i = 0; i < l->n; i++) {
        const struct proto_metrics *m = &l->st[i]->metrics;
        char *name = l->is_eval[i] ? eval_name(l->st[i]->spec) : NULL;
        for (size_t k = 0; k < m->n; k++) {
            if (name) {
                char *full = xasprintf("%s.%s", name, m->names[k]);
                proto_metrics_add(&rl->metrics, full, m->values[k]);
                free(full);
            } else {
                proto_metrics_add(&rl->metrics, m->names[k], m->values[k]);
            }
        }
        free(name);
    }
    switch (s) {
    case LANE_FAILED:
        for (int i = 0; i < l->n; i++) {
            const struct dstage *st = l->st[i];
            if (st->state == DSTAGE_FAILED) {
                rank_lane_set_reason(rl, "stage '%s' failed (%s): %s", l->names[i],
                                     fail_class_name(st->err_class),
                                     st->err_msg && *st->err_msg ? st->err_msg : "no message");
                break;
            }
        }
        break;
    case LANE_CANCELLED:
        rank_lane_set_reason(rl, "cancelled");
        break;
    case LANE_QUEUED:
    case LANE_RUNNING:
        rank_lane_set_reason(rl, "not finished (%s)", lane_state_name(s));
        break;
    case LANE_DONE:
        break;
    }
}

/* Fills r and s from the sweep and ranks it. Returns the number of ranked lanes. */
static int build_rank(struct daemon *d, struct dsweep *sw, struct rank_settings *s,
                      struct rank_result *r)
{
    char *err = NULL;
    int n;
    bool base_seen = false;

    rank_result_init(r, sw->id);
    if (rank_settings_parse(sw->settings, s, &err) < 0)
        rank_settings_default(s);
    for (int i = 0; i < sw->nlanes; i++) {
        struct dlane *l = sw->lanes[i];
        if (l->baseline && !base_seen) {
            lane_fill(d, &r->baseline, l);
            base_seen = true;
        } else {
            lane_fill(d, rank_result_add_lane(r), l);
        }
    }
    n = rank_compute(r, s);
    if (err) {
        /* Our own settings JSON does not parse: say so rather than rank with defaults. */
        free(r->error);
        r->error = xasprintf("cannot read the sweep's score settings: %s", err);
        for (int i = 0; i < r->nlanes; i++) {
            if (r->lanes[i].ranked)
                rank_lane_set_reason(&r->lanes[i], "not ranked: %s", r->error);
            r->lanes[i].ranked = false;
            r->lanes[i].rank = 0;
        }
        n = 0;
        free(err);
    }
    return n;
}

static bool sweep_has_failure(const struct dsweep *sw)
{
    for (int i = 0; i < sw->nlanes; i++)
        if (sched_lane_state(sw->lanes[i]) == LANE_FAILED)
            return true;
    return false;
}

/* ===== jobs ===== */

enum fin_kind {
    FJ_FINISH,  /* automatic: package, reports, hook, results */
    FJ_PACKAGE, /* exaqctl package */
    FJ_GC,      /* exaqctl gc */
};

struct fin_job {
    uv_work_t req;
    struct daemon *d;
    struct conn *c; /* the requesting client, or NULL */
    enum fin_kind kind;
    char *sweep;
    /* inputs, copied on the loop thread */
    char *sweep_dir;
    char *out_dir; /* the submissions dir */
    char *base_model;
    char *rank_json; /* the rank document without package outcomes */
    char *rank_error;
    int nranked;
    char **cand_lane, **cand_dir;
    int ncands;
    int top;
    double max_zip_gb, max_unzipped_gb;
    bool write_reports;
    bool default_out; /* out_dir is the sweep's own submissions dir */
    char *hook_name;  /* "on_finish" / "on_fail", or NULL */
    char *hook_cmd;
    char *hook_status; /* "done" / "failed" */
    char *hook_cwd;
    char **gc_keys;
    int ngc;
    char **gc_live_tmp; /* artifacts/<key>.tmp-<id> names of running attempts: kept */
    int nlive_tmp;
    char *home;
    /* outputs */
    char *pkg_json;
    char *final_json; /* rank document with package outcomes */
    char *report_err;
    int hook_fd;
    int64_t removed, removed_bytes;
    int packaged;
    /* hook outcome */
    char *hook_json;
};

static struct fin_job *job_new(struct daemon *d, struct conn *c, enum fin_kind kind,
                               const struct dsweep *sw)
{
    struct fin_job *j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->d = d;
    j->c = c;
    j->kind = kind;
    j->sweep = xstrdup(sw->id);
    j->home = xstrdup(d->home);
    j->sweep_dir = xasprintf("%s/sweeps/%s", d->home, sw->id);
    j->base_model = xstrdup(sw->base_model);
    j->hook_fd = -1;
    return j;
}

static void job_free(struct fin_job *j)
{
    for (int i = 0; i < j->ncands; i++) {
        free(j->cand_lane[i]);
        free(j->cand_dir[i]);
    }
    free(j->cand_lane);
    free(j->cand_dir);
    for (int i = 0; i < j->ngc; i++)
        free(j->gc_keys[i]);
    free(j->gc_keys);
    for (int i = 0; i < j->nlive_tmp; i++)
        free(j->gc_live_tmp[i]);
    free(j->gc_live_tmp);
    free(j->sweep);
    free(j->sweep_dir);
    free(j->out_dir);
    free(j->base_model);
    free(j->rank_json);
    free(j->rank_error);
    free(j->hook_name);
    free(j->hook_cmd);
    free(j->hook_status);
    free(j->hook_cwd);
    free(j->home);
    free(j->pkg_json);
    free(j->final_json);
    free(j->report_err);
    free(j->hook_json);
    if (j->hook_fd >= 0)
        close(j->hook_fd);
    free(j);
}

/* Copies the ranked lanes (rank order) into the job as packaging candidates. */
static void job_set_cands(struct fin_job *j, const struct rank_result *r)
{
    for (int i = 0; i < r->nlanes; i++) {
        if (!r->lanes[i].ranked || !r->lanes[i].model_dir)
            continue;
        j->cand_lane = xrealloc(j->cand_lane, (size_t)(j->ncands + 1) * sizeof(char *));
        j->cand_dir = xrealloc(j->cand_dir, (size_t)(j->ncands + 1) * sizeof(char *));
        j->cand_lane[j->ncands] = xstrdup(r->lanes[i].id);
        j->cand_dir[j->ncands] = xstrdup(r->lanes[i].model_dir);
        j->ncands++;
    }
}

static void now_text(char *out, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm);
}

/* Thread pool: package and write the reports (FJ_FINISH, FJ_PACKAGE). */
static void work_package(struct fin_job *j)
{
    struct pkg_request pr;
    struct pkg_cand *cands = xcalloc((size_t)(j->ncands + 1), sizeof(*cands));
    cJSON *pdoc;

    for (int i = 0; i < j->ncands; i++) {
        cands[i].lane = j->cand_lane[i];
        cands[i].model_dir = j->cand_dir[i];
    }
    memset(&pr, 0, sizeof(pr));
    pr.out_dir = j->out_dir;
    pr.need_tok_config = pkg_has_tok_config(j->base_model);
    pr.top = j->top;
    pr.max_zip_gb = j->max_zip_gb;
    pr.max_unzipped_gb = j->max_unzipped_gb;
    pr.cands = cands;
    pr.ncands = j->ncands;
    pr.error = j->rank_error;
    j->pkg_json = pkg_run(&pr);
    free(cands);
    pdoc = cJSON_Parse(j->pkg_json);
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(pdoc, "packaged")))
        j->packaged = cJSON_GetObjectItemCaseSensitive(pdoc, "packaged")->valueint;
    cJSON_Delete(pdoc);
    j->final_json = report_merge_package(j->rank_json, j->pkg_json);
    if (j->write_reports)
        report_write(j->sweep_dir, j->final_json, &j->report_err);
    if (j->hook_cmd) {
        char *p = path_join(j->sweep_dir, "hooks.log");
        j->hook_fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (j->hook_fd >= 0) {
            char ts[64];
            char *line;
            now_text(ts, sizeof(ts));
            line = xasprintf("[exaqd %s] %s of sweep %s (status %s): %s\n", ts, j->hook_name,
                             j->sweep, j->hook_status, j->hook_cmd);
            if (write(j->hook_fd, line, strlen(line)) < 0)
                log_warn("cannot write '%s': %s", p, strerror(errno));
            free(line);
        } else {
            log_warn("cannot open '%s': %s", p, strerror(errno));
        }
        free(p);
    }
}

static bool gc_is_live_tmp(const struct fin_job *j, const char *name)
{
    for (int i = 0; i < j->nlive_tmp; i++)
        if (!strcmp(j->gc_live_tmp[i], name))
            return true;
    return false;
}

/* Thread pool: partial outputs (artifacts/<key>.tmp-<id>/) of attempts that are not running:
 * left by a worker that was killed, they may hold gigabytes. */
static void work_gc_tmp(struct fin_job *j)
{
    char *dir = xasprintf("%s/artifacts", j->home);
    DIR *dp = opendir(dir);
    struct dirent *de;
    while (dp && (de = readdir(dp))) {
        char *p;
        if (!strstr(de->d_name, ".tmp-") || gc_is_live_tmp(j, de->d_name))
            continue;
        p = path_join(dir, de->d_name);
        if (is_dir(p)) {
            int64_t sz = dir_size_bytes(p);
            int rc = rm_rf(p);
            if (rc < 0) {
                log_warn("gc: cannot remove '%s': %s", p, strerror(-rc));
            } else {
                j->removed++;
                j->removed_bytes += sz > 0 ? sz : 0;
            }
        }
        free(p);
    }
    if (dp)
        closedir(dp);
    free(dir);
}

/* Thread pool: remove the artifact dirs (FJ_GC). */
static void work_gc(struct fin_job *j)
{
    work_gc_tmp(j);
    for (int i = 0; i < j->ngc; i++) {
        char *p = xasprintf("%s/artifacts/%s", j->home, j->gc_keys[i]);
        if (is_dir(p)) {
            int64_t sz = dir_size_bytes(p);
            int rc = rm_rf(p);
            if (rc < 0) {
                log_warn("gc: cannot remove '%s': %s", p, strerror(-rc));
            } else {
                j->removed++;
                j->removed_bytes += sz > 0 ? sz : 0;
            }
        }
        free(p);
    }
}

static void work_cb(uv_work_t *req)
{
    struct fin_job *j = req->data;
    if (j->kind == FJ_GC)
        work_gc(j);
    else
        work_package(j);
}

static void after_cb(uv_work_t *req, int status);

static int job_queue(struct fin_job *j)
{
    if (j->c)
        j->c->pending_async++;
    if (j->kind == FJ_GC)
        gc_running++;
    else
        jobs_running++;
    int rc = uv_queue_work(j->d->loop, &j->req, work_cb, after_cb);
    if (rc < 0) {
        if (j->c)
            j->c->pending_async--;
        if (j->kind == FJ_GC)
            gc_running--;
        else
            jobs_running--;
    }
    return rc;
}

/* ===== results ===== */

/* The rank document to store: final_json plus "hook". New string. */
static char *with_hook(const char *rank_json, const char *hook_json)
{
    cJSON *doc, *hook;
    char *out;
    if (!hook_json)
        return xstrdup(rank_json);
    doc = cJSON_Parse(rank_json);
    hook = cJSON_Parse(hook_json);
    if (!cJSON_IsObject(doc) || !hook) {
        cJSON_Delete(doc);
        cJSON_Delete(hook);
        return xstrdup(rank_json);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "hook");
    cJSON_AddItemToObject(doc, "hook", hook);
    out = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return out;
}

static void record_results(struct daemon *d, const char *sweep, const char *final_json,
                           const struct fin_rec *rec)
{
    char *rank = with_hook(final_json ? final_json : "{}", rec->hook);
    store_exec(d->store, "INSERT OR REPLACE INTO results(sweep, rank, pkg) VALUES (?, ?, ?)", "sss",
               sweep, rank, rec->pkg);
    free(rank);
}

/* The end of an automatic finish: clear `finishing`, record, look for more work. */
static void finish_done(struct fin_job *j, bool complete)
{
    struct daemon *d = j->d;
    struct dsweep *sw = hmap_get(&d->sweeps, j->sweep);
    struct fin_rec *rec = rec_get(j->sweep);

    if (sw)
        sw->finishing = false;
    if (j->hook_json)
        set_owned(&rec->hook, xstrdup(j->hook_json));
    if (complete) {
        record_results(d, j->sweep, j->final_json, rec);
        rec->has_row = true;
        sched_event(d, j->sweep, NULL, NULL, "ranked %d lane%s%s%s; packaged %d of top %d%s%s",
                    j->nranked, j->nranked == 1 ? "" : "s",
                    j->rank_error ? ", ranking failed: " : "", j->rank_error ? j->rank_error : "",
                    j->packaged, j->top, j->hook_name ? "; hook " : "",
                    j->hook_name ? j->hook_name : "");
    } else {
        log_info("sweep %s: finishing interrupted by shutdown; it is finished again at the "
                 "next start",
                 j->sweep);
    }
    job_free(j);
    if (!d->shutting_down)
        sched_check_sweeps(d); /* a retry may have ended again while we were busy */
}

/* ===== hooks ===== */

struct hook_run {
    uv_process_t proc;
    uv_timer_t timer;
    uv_fs_t fsreq;
    uv_buf_t ubuf;
    struct fin_job *j;
    double t0;
    double timeout_s;
    int64_t exit_status;
    int term_signal;
    bool spawned;
    char *error;   /* could not start */
    char *killed;  /* why it was killed */
    bool shutdown; /* killed because exaqd stops: run it again at the next start */
    char *trailer; /* text appended to hooks.log at the end */
    int pending;   /* handles and requests still open */
};

static void hook_finalize(struct hook_run *h)
{
    struct fin_job *j = h->j;
    bool again = h->shutdown;
    struct buf b;
    struct jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "name", j->hook_name);
    jw_kstr(&w, "cmd", j->hook_cmd);
    jw_kstr(&w, "status", j->hook_status);
    if (h->error) {
        jw_kstr(&w, "error", h->error);
    } else {
        jw_kint(&w, "exit_status", h->exit_status);
        jw_kint(&w, "term_signal", h->term_signal);
        if (h->killed)
            jw_kstr(&w, "killed", h->killed);
    }
    jw_kbool(&w, "ok", !h->error && !h->killed && h->exit_status == 0 && h->term_signal == 0);
    jw_knum(&w, "seconds", now_mono() - h->t0);
    jw_obj_end(&w);
    j->hook_json = buf_steal(&b);
    if (h->error || h->killed || h->exit_status || h->term_signal)
        log_warn("sweep %s: hook %s failed: %s", j->sweep, j->hook_name, h->trailer);
    else
        log_info("sweep %s: hook %s done", j->sweep, j->hook_name);
    free(h->error);
    free(h->killed);
    free(h->trailer);
    free(h);
    finish_done(j, !again);
}

static void hook_unref(struct hook_run *h)
{
    if (--h->pending == 0)
        hook_finalize(h);
}

static void on_hook_handle_closed(uv_handle_t *hd)
{
    hook_unref(hd->data);
}

static void on_hook_fd_closed(uv_fs_t *req)
{
    struct hook_run *h = req->data;
    uv_fs_req_cleanup(req);
    hook_unref(h);
}

static void on_hook_trailer_written(uv_fs_t *req)
{
    struct hook_run *h = req->data;
    uv_fs_req_cleanup(req);
    h->fsreq.data = h;
    if (uv_fs_close(h->j->d->loop, &h->fsreq, h->j->hook_fd, on_hook_fd_closed) < 0) {
        close(h->j->hook_fd);
        h->j->hook_fd = -1;
        hook_unref(h);
        return;
    }
    h->j->hook_fd = -1;
}

/* Appends the trailer to hooks.log (async), then closes it. */
static void hook_write_trailer(struct hook_run *h)
{
    char ts[64];
    char *line;
    now_text(ts, sizeof(ts));
    line = xasprintf("[exaqd %s] %s %s\n", ts, h->j->hook_name, h->trailer);
    free(h->trailer);
    h->trailer = line;
    if (h->j->hook_fd < 0)
        return;
    h->pending++;
    h->ubuf = uv_buf_init(h->trailer, (unsigned)strlen(h->trailer));
    h->fsreq.data = h;
    if (uv_fs_write(h->j->d->loop, &h->fsreq, h->j->hook_fd, &h->ubuf, 1, -1,
                    on_hook_trailer_written) < 0) {
        close(h->j->hook_fd);
        h->j->hook_fd = -1;
        h->pending--;
    }
}

static void on_hook_exit(uv_process_t *p, int64_t status, int sig)
{
    struct hook_run *h = p->data;
    h->exit_status = status;
    h->term_signal = sig;
    if (h->killed)
        h->trailer = xasprintf("killed (%s)", h->killed);
    else if (sig)
        h->trailer = xasprintf("killed by signal %d", sig);
    else
        h->trailer = xasprintf("exited with status %lld", (long long)status);
    {
        char *t = xasprintf("%s after %.1fs", h->trailer, now_mono() - h->t0);
        free(h->trailer);
        h->trailer = t;
    }
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, on_hook_handle_closed);
    uv_close((uv_handle_t *)p, on_hook_handle_closed);
    hook_write_trailer(h);
}

static void on_hook_timer(uv_timer_t *t)
{
    struct hook_run *h = t->data;
    struct daemon *d = h->j->d;
    const char *why = NULL;
    if (h->killed)
        return;
    if (d->shutting_down && !d->drain) {
        why = "exaqd is shutting down";
        h->shutdown = true;
    } else if (now_mono() - h->t0 > h->timeout_s)
        why = "timed out";
    if (!why)
        return;
    h->killed = xasprintf("%s after %.0fs", why, now_mono() - h->t0);
    if (h->proc.pid > 0)
        kill(-h->proc.pid, SIGKILL);
}

static double hook_timeout(void)
{
    const char *e = getenv("EXAQ_HOOK_TIMEOUT_S");
    double v;
    if (e && parse_f64(e, &v) == 0 && v > 0)
        return v;
    return 600;
}

static void hook_start(struct fin_job *j)
{
    struct daemon *d = j->d;
    struct hook_run *h = xcalloc(1, sizeof(*h));
    uv_process_options_t opt;
    uv_stdio_container_t stdio[3];
    char *args[] = { "/bin/sh", "-c", j->hook_cmd, NULL };
    char *ours[4];
    char **env;
    int ne = 0, rc;

    h->j = j;
    h->t0 = now_mono();
    h->timeout_s = hook_timeout();
    ours[0] = xasprintf("EXAQ_SWEEP=%s", j->sweep);
    ours[1] = xasprintf("EXAQ_STATUS=%s", j->hook_status);
    ours[2] = xasprintf("EXAQ_REPORT=%s/report.md", j->sweep_dir);
    ours[3] = xasprintf("EXAQ_HOME=%s", d->home);
    for (char **e = environ; *e; e++)
        ne++;
    env = xcalloc((size_t)ne + 5, sizeof(char *));
    ne = 0;
    for (char **e = environ; *e; e++)
        if (!str_starts_with(*e, "EXAQ_SWEEP=") && !str_starts_with(*e, "EXAQ_STATUS=") &&
            !str_starts_with(*e, "EXAQ_REPORT=") && !str_starts_with(*e, "EXAQ_HOME="))
            env[ne++] = *e;
    for (int i = 0; i < 4; i++)
        env[ne++] = ours[i];
    env[ne] = NULL;
    memset(&opt, 0, sizeof(opt));
    memset(stdio, 0, sizeof(stdio));
    stdio[0].flags = UV_IGNORE;
    for (int i = 1; i < 3; i++) {
        stdio[i].flags = j->hook_fd >= 0 ? UV_INHERIT_FD : UV_IGNORE;
        stdio[i].data.fd = j->hook_fd;
    }
    opt.file = args[0];
    opt.args = args;
    opt.env = env;
    opt.cwd = j->hook_cwd;
    opt.exit_cb = on_hook_exit;
    opt.flags = UV_PROCESS_DETACHED; /* own session, so a timeout kills its whole group */
    opt.stdio_count = 3;
    opt.stdio = stdio;
    h->proc.data = h;
    h->timer.data = h;
    uv_timer_init(d->loop, &h->timer);
    rc = uv_spawn(d->loop, &h->proc, &opt);
    for (int i = 0; i < 4; i++)
        free(ours[i]);
    free(env);
    h->pending = 2; /* the process and the timer handles */
    if (rc < 0) {
        h->error = xasprintf("cannot start /bin/sh in '%s': %s", j->hook_cwd, uv_strerror(rc));
        h->trailer = xstrdup(h->error);
        uv_close((uv_handle_t *)&h->proc, on_hook_handle_closed);
        uv_close((uv_handle_t *)&h->timer, on_hook_handle_closed);
        hook_write_trailer(h);
        return;
    }
    h->spawned = true;
    log_info("sweep %s: running hook %s (pid %d)", j->sweep, j->hook_name, (int)h->proc.pid);
    uv_timer_start(&h->timer, on_hook_timer, 250, 250);
}

/* ===== after the thread-pool work ===== */

static void reply_package(struct fin_job *j)
{
    struct proto_msg r;
    proto_msg_init(&r, PROTO_T_package_r);
    r.u.package_r.package = xstrdup(j->pkg_json ? j->pkg_json : "{}");
    r.u.package_r.has_package = true;
    server_reply(j->c, &r);
    proto_msg_release(&r);
}

static void after_cb(uv_work_t *req, int status)
{
    struct fin_job *j = req->data;
    struct daemon *d = j->d;
    struct fin_rec *rec = rec_get(j->sweep);

    if (j->kind == FJ_GC)
        gc_running--;
    else
        jobs_running--;
    if (j->report_err)
        log_warn("sweep %s: %s", j->sweep, j->report_err);
    switch (j->kind) {
    case FJ_FINISH:
        if (status < 0) {
            finish_done(j, false);
            return;
        }
        if (j->pkg_json && j->default_out)
            set_owned(&rec->pkg, xstrdup(j->pkg_json));
        if (j->hook_cmd && !d->shutting_down) {
            hook_start(j);
            return;
        }
        /* Without a hook everything is done; a hook skipped by shutdown runs next time. */
        finish_done(j, !j->hook_cmd);
        return;
    case FJ_PACKAGE:
        rec->busy = false;
        if (status == 0 && j->default_out && j->pkg_json) {
            set_owned(&rec->pkg, xstrdup(j->pkg_json));
            if (rec->has_row)
                record_results(d, j->sweep, j->final_json, rec);
        }
        if (status == 0)
            sched_event(d, j->sweep, NULL, NULL, "packaged %d of top %d into %s", j->packaged,
                        j->top, j->out_dir);
        if (j->c->d) {
            if (status < 0)
                server_reply_error(j->c, "package", PROTO_E_INTERNAL, "packaging was cancelled");
            else
                reply_package(j);
        }
        server_conn_async_done(j->c);
        if (rec->finish_after) {
            struct dsweep *sw = hmap_get(&d->sweeps, j->sweep);
            rec->finish_after = false;
            if (sw) {
                sw->finishing = false;
                finish_sweep(d, sw);
            }
        }
        job_free(j);
        return;
    case FJ_GC:
        if (status == 0)
            sched_event(d, j->sweep, NULL, NULL, "gc removed %lld artifact dirs (%lld bytes)",
                        (long long)j->removed, (long long)j->removed_bytes);
        if (j->c->d) {
            if (status < 0) {
                server_reply_error(j->c, "gc", PROTO_E_INTERNAL, "gc was cancelled");
            } else {
                struct proto_msg r;
                proto_msg_init(&r, PROTO_T_gc_r);
                r.u.gc_r.removed = j->removed;
                r.u.gc_r.has_removed = true;
                r.u.gc_r.bytes = j->removed_bytes;
                r.u.gc_r.has_bytes = true;
                server_reply(j->c, &r);
                proto_msg_release(&r);
            }
        }
        server_conn_async_done(j->c);
        job_free(j);
        return;
    }
}

/* ===== entry points ===== */

void finish_sweep(struct daemon *d, struct dsweep *sw)
{
    struct fin_rec *rec = rec_get(sw->id);
    struct rank_settings s;
    struct rank_result r;
    struct fin_job *j;
    bool failed;

    if (rec->resumed_ended > 0) {
        sw->ended = rec->resumed_ended;
        rec->resumed_ended = 0;
        store_exec(d->store, "UPDATE sweeps SET ended=? WHERE id=?", "ds", sw->ended, sw->id);
    }
    if (sw->finishing)
        return;
    if (rec->busy) {
        /* An `exaqctl package` job writes the same submissions dir: finish after it. */
        rec->finish_after = true;
        sw->finishing = true;
        return;
    }
    if (d->shutting_down) {
        log_info("sweep %s ended during shutdown; it is ranked and packaged at the next start",
                 sw->id);
        return;
    }
    j = job_new(d, NULL, FJ_FINISH, sw);
    j->nranked = build_rank(d, sw, &s, &r);
    j->rank_json = rank_result_json(&r, sw->settings);
    j->rank_error = r.error ? xstrdup(r.error) : NULL;
    if (!r.error)
        job_set_cands(j, &r);
    j->out_dir = path_join(j->sweep_dir, "submissions");
    j->default_out = true;
    j->write_reports = true;
    j->top = s.top;
    j->max_zip_gb = s.max_zip_gb;
    j->max_unzipped_gb = s.max_unzipped_gb;
    failed = sweep_has_failure(sw) || r.error;
    j->hook_status = xstrdup(failed ? "failed" : "done");
    if (failed ? s.on_fail : s.on_finish) {
        j->hook_name = xstrdup(failed ? "on_fail" : "on_finish");
        j->hook_cmd = xstrdup(failed ? s.on_fail : s.on_finish);
        j->hook_cwd = path_dirname(sw->yaml_path);
    }
    rank_result_release(&r);
    rank_settings_release(&s);
    sw->finishing = true;
    log_info("sweep %s: ranking and packaging", sw->id);
    if (job_queue(j) < 0) {
        log_error("sweep %s: cannot queue the finishing work", sw->id);
        sw->finishing = false;
        job_free(j);
    }
}

void finish_rank(struct daemon *d, struct conn *c, struct dsweep *sw)
{
    struct rank_settings s;
    struct rank_result r;
    struct fin_rec *rec = rec_get(sw->id);
    struct proto_msg m;
    char *json, *merged;

    build_rank(d, sw, &s, &r);
    if (r.error) {
        server_reply_error(c, "rank", PROTO_E_STATE, "cannot rank sweep '%s': %s", sw->id, r.error);
        goto out;
    }
    json = rank_result_json(&r, sw->settings);
    merged = report_merge_package(json, rec->pkg);
    free(json);
    json = with_hook(merged, rec->hook);
    free(merged);
    proto_msg_init(&m, PROTO_T_rank_r);
    m.u.rank_r.rank = json;
    m.u.rank_r.has_rank = true;
    server_reply(c, &m);
    proto_msg_release(&m);
out:
    rank_result_release(&r);
    rank_settings_release(&s);
}

void finish_package(struct daemon *d, struct conn *c, struct dsweep *sw, int top, const char *out)
{
    struct rank_settings s;
    struct rank_result r;
    struct fin_rec *rec = rec_get(sw->id);
    struct fin_job *j;

    if (sw->finishing) {
        server_reply_error(c, "package", PROTO_E_STATE,
                           "sweep '%s' is being ranked and packaged right now; try again when "
                           "exaqctl wait returns",
                           sw->id);
        return;
    }
    if (rec->busy || gc_running) {
        server_reply_error(c, "package", PROTO_E_STATE,
                           "a package or gc job is already running; try again when it is done");
        return;
    }
    if (out && out[0] != '/') {
        server_reply_error(c, "package", PROTO_E_INVALID, "--out '%s' must be an absolute path",
                           out);
        return;
    }
    if (!out && sw->ended <= 0) {
        server_reply_error(c, "package", PROTO_E_STATE,
                           "sweep '%s' is still running; wait until it ends (it is packaged "
                           "then), or write packages elsewhere with --out DIR",
                           sw->id);
        return;
    }
    build_rank(d, sw, &s, &r);
    if (r.error) {
        server_reply_error(c, "package", PROTO_E_STATE, "cannot package sweep '%s': %s", sw->id,
                           r.error);
        goto out;
    }
    j = job_new(d, c, FJ_PACKAGE, sw);
    j->rank_json = rank_result_json(&r, sw->settings);
    job_set_cands(j, &r);
    j->default_out = out == NULL;
    j->out_dir = out ? path_join(out, "submissions") : path_join(j->sweep_dir, "submissions");
    j->write_reports = out == NULL;
    j->top = top >= 0 ? top : s.top;
    j->max_zip_gb = s.max_zip_gb;
    j->max_unzipped_gb = s.max_unzipped_gb;
    if (job_queue(j) < 0) {
        server_reply_error(c, "package", PROTO_E_INTERNAL, "cannot queue the packaging work");
        job_free(j);
        goto out;
    }
    rec->busy = true;
out:
    rank_result_release(&r);
    rank_settings_release(&s);
}

/* Adds every stage key of lane l to the set. */
static void keep_lane(struct hmap *keep, const struct dlane *l)
{
    for (int i = 0; i < l->n; i++)
        hmap_put(keep, l->st[i]->key, (void *)1);
}

/* Keeps the top-k lanes (by rank) and the packaged lanes of a finished sweep. */
static void keep_best(struct daemon *d, struct hmap *keep, struct dsweep *sw)
{
    struct rank_settings s;
    struct rank_result r;
    struct fin_rec *rec = rec_get(sw->id);
    cJSON *pkg = rec->pkg ? cJSON_Parse(rec->pkg) : NULL;
    const cJSON *pl;

    build_rank(d, sw, &s, &r);
    for (int i = 0; i < r.nlanes; i++) {
        struct dlane *l;
        if (!r.lanes[i].ranked || r.lanes[i].rank > s.top)
            continue;
        if ((l = sched_lane_get(sw, r.lanes[i].id)))
            keep_lane(keep, l);
    }
    cJSON_ArrayForEach(pl, cJSON_GetObjectItemCaseSensitive(pkg, "lanes"))
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(pl, "lane");
        struct dlane *l;
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pl, "ok")) && cJSON_IsString(id) &&
            (l = sched_lane_get(sw, id->valuestring)))
            keep_lane(keep, l);
    }
    for (int i = 0; i < sw->nlanes; i++)
        if (sw->lanes[i]->baseline)
            keep_lane(keep, sw->lanes[i]);
    cJSON_Delete(pkg);
    rank_result_release(&r);
    rank_settings_release(&s);
}

void finish_gc(struct daemon *d, struct conn *c, struct dsweep *sw, const char *keep_mode)
{
    struct hmap keep, seen;
    struct fin_job *j;

    if (strcmp(keep_mode, "best")) {
        server_reply_error(c, "gc", PROTO_E_INVALID, "gc supports --keep best, not '%s'",
                           keep_mode);
        return;
    }
    if (sw->ended <= 0 || sw->finishing) {
        server_reply_error(c, "gc", PROTO_E_STATE,
                           "sweep '%s' has not finished ranking and packaging; gc runs after "
                           "that",
                           sw->id);
        return;
    }
    if (jobs_running || gc_running) {
        server_reply_error(c, "gc", PROTO_E_STATE,
                           "packaging or gc is in progress; try again when it is done");
        return;
    }
    hmap_init(&keep);
    hmap_init(&seen);
    for (int i = 0; i < d->nsweeps; i++) {
        struct dsweep *o = d->sweep_list[i];
        if (o->ended <= 0 || o->finishing) {
            /* An unfinished sweep may still need any of its stages. */
            for (int k = 0; k < o->nlanes; k++)
                keep_lane(&keep, o->lanes[k]);
        } else {
            keep_best(d, &keep, o);
        }
    }
    /* Stages that run or wait to run, whoever needs them. */
    for (size_t i = 0; i < d->stages.cap; i++) {
        struct dstage *st;
        if (!d->stages.keys[i])
            continue;
        st = d->stages.vals[i];
        if (st->state == DSTAGE_RUNNING || st->att ||
            (st->state == DSTAGE_PENDING && sched_stage_needed(st)))
            hmap_put(&keep, st->key, (void *)1);
    }
    j = job_new(d, c, FJ_GC, sw);
    for (int i = 0; i < d->nslots; i++) {
        const struct attempt *a = d->slots[i].att;
        if (!a)
            continue;
        j->gc_live_tmp =
            xrealloc(j->gc_live_tmp, (size_t)(j->nlive_tmp + 1) * sizeof(*j->gc_live_tmp));
        j->gc_live_tmp[j->nlive_tmp++] = xasprintf("%s.tmp-%lld", a->st->key, (long long)a->id);
    }
    for (int i = 0; i < sw->nlanes; i++) {
        const struct dlane *l = sw->lanes[i];
        for (int k = 0; k < l->n; k++) {
            const char *key = l->st[k]->key;
            if (hmap_get(&keep, key) || hmap_get(&seen, key))
                continue;
            hmap_put(&seen, key, (void *)1);
            j->gc_keys = xrealloc(j->gc_keys, (size_t)(j->ngc + 1) * sizeof(char *));
            j->gc_keys[j->ngc++] = xstrdup(key);
        }
    }
    hmap_release(&keep);
    hmap_release(&seen);
    if (job_queue(j) < 0) {
        server_reply_error(c, "gc", PROTO_E_INTERNAL, "cannot queue the gc work");
        job_free(j);
    }
}

/* ===== start-up ===== */

static int load_result(void *arg, const struct store_row *row)
{
    struct fin_rec *rec = rec_get(store_text(row, "sweep"));
    const char *pkg = store_text(row, "pkg"), *rank = store_text(row, "rank");
    cJSON *doc;
    (void)arg;
    rec->has_row = true;
    if (pkg)
        set_owned(&rec->pkg, xstrdup(pkg));
    doc = rank ? cJSON_Parse(rank) : NULL;
    if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(doc, "hook"))) {
        char *h = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(doc, "hook"));
        set_owned(&rec->hook, xstrdup(h));
        cJSON_free(h);
    }
    cJSON_Delete(doc);
    return 0;
}

void finish_resume(struct daemon *d)
{
    char err[512];
    if (store_query_sync(d->store, "SELECT sweep, rank, pkg FROM results", load_result, NULL, err,
                         sizeof(err)) < 0) {
        log_warn("cannot read the results table: %s", err);
        return;
    }
    for (int i = 0; i < d->nsweeps; i++) {
        struct dsweep *sw = d->sweep_list[i];
        struct fin_rec *rec = rec_get(sw->id);
        if (sw->ended <= 0 || rec->has_row)
            continue;
        /* sched_check_sweeps() sees the sweep end again once the loop runs, and calls
         * finish_sweep(), which restores the original end time. */
        log_info("sweep %s ended but was not ranked and packaged (exaqd stopped); finishing it "
                 "again",
                 sw->id);
        rec->resumed_ended = sw->ended;
        sw->ended = 0;
    }
}
