/*
 * submit: a lanes file becomes a sweep.
 *
 * The slow part (reading and validating the YAML, hashing the base model and every data file,
 * computing every stage key, copying the file into sweeps/<id>/) runs on the libuv thread pool
 * and touches nothing of the daemon's model. Back on the loop thread the plan is merged into
 * the model: stages whose key already exists are reused (a failed one is re-queued), new ones
 * are created, and the reply is sent only after the rows are committed.
 *
 * Keys: stage key = sha256("exaq-stage", exaq version, kind, key_json, input key, sha256 of
 * every data file, rerun salt). The input key is the key of the stage that produced the input
 * model, or "base:" + the content hash of the base model dir. The sweep id is the sweep name
 * plus 8 hex digits of a hash over the canonical file and every data hash, so submitting the
 * same file again names the same sweep and runs nothing new.
 *
 * File hashes are cached by (path, size, mtime, inode) in memory and in the file_hashes table.
 */
#include "daemon/exaqd.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/jw.h"
#include "common/log.h"
#include "daemon/store.h"
#include "lanes/lanes.h"

/* ===== file hash cache (shared with the thread pool, so under a mutex) ===== */

struct fhash {
    int64_t size, mtime_ns, ino;
    char sha[SHA256_HEX_LEN];
    bool dirty; /* not yet written to the database */
};

static pthread_mutex_t fh_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hmap fh_map;

static int fh_load_row(void *arg, const struct store_row *r)
{
    struct fhash *h = xcalloc(1, sizeof(*h));
    (void)arg;
    const char *sha = store_text(r, "sha256");
    h->size = store_i64(r, "size");
    h->mtime_ns = store_i64(r, "mtime_ns");
    h->ino = store_i64(r, "ino");
    snprintf(h->sha, sizeof(h->sha), "%s", sha ? sha : "");
    free(hmap_put(&fh_map, store_text(r, "path"), h));
    return 0;
}

int submit_init(struct daemon *d, char *err, size_t errlen)
{
    return store_query_sync(d->store, "SELECT path, size, mtime_ns, ino, sha256 FROM file_hashes",
                            fh_load_row, NULL, err, errlen);
}

void submit_release(void)
{
    for (size_t i = 0; i < fh_map.cap; i++)
        if (fh_map.keys && fh_map.keys[i])
            free(fh_map.vals[i]);
    hmap_release(&fh_map);
}

/* Hash of one regular file, cached. 0 or -errno. */
static int file_hash(const char *path, char out[SHA256_HEX_LEN], int64_t *size)
{
    struct stat st;
    struct fhash *h;
    int64_t mt;
    int rc;
    if (stat(path, &st) < 0)
        return -errno;
    mt = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    if (size)
        *size = st.st_size;
    pthread_mutex_lock(&fh_mu);
    h = hmap_get(&fh_map, path);
    if (h && h->size == st.st_size && h->mtime_ns == mt && h->ino == (int64_t)st.st_ino) {
        memcpy(out, h->sha, SHA256_HEX_LEN);
        pthread_mutex_unlock(&fh_mu);
        return 0;
    }
    pthread_mutex_unlock(&fh_mu);
    rc = sha256_file_hex(path, out);
    if (rc < 0)
        return rc;
    h = xcalloc(1, sizeof(*h));
    h->size = st.st_size;
    h->mtime_ns = mt;
    h->ino = (int64_t)st.st_ino;
    h->dirty = true;
    memcpy(h->sha, out, SHA256_HEX_LEN);
    pthread_mutex_lock(&fh_mu);
    free(hmap_put(&fh_map, path, h));
    pthread_mutex_unlock(&fh_mu);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Lists the files of a model dir (relative names, recursive), sorted. Only regular files and
 * directories may be in it: a symlink to a regular file is followed (Hugging Face caches link
 * into their blob store), but a symlink to a directory is refused (it may loop: `ln -s . m/a`)
 * and so is anything else (a FIFO, a device, a socket, a dangling link): such a file would
 * have no content to hash, so two different dirs could get one key. 0, or -1 with *why.
 */
static int list_files(const char *root, const char *rel, char ***names, size_t *n, int depth,
                      char **why)
{
    char *dir = rel ? path_join(root, rel) : xstrdup(root);
    DIR *dp;
    struct dirent *de;
    int rc = 0;
    if (depth > 32) {
        *why = xasprintf("'%s' is nested more than 32 directories deep", rel);
        free(dir);
        return -1;
    }
    dp = opendir(dir);
    if (!dp) {
        *why = xasprintf("cannot list '%s': %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    while (rc == 0 && (de = readdir(dp))) {
        char *r, *full;
        struct stat lst, st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        r = rel ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
        full = path_join(root, r);
        if (lstat(full, &lst) < 0) {
            *why = xasprintf("cannot stat '%s': %s", r, strerror(errno));
            rc = -1;
        } else if (S_ISDIR(lst.st_mode)) {
            rc = list_files(root, r, names, n, depth + 1, why);
        } else if (S_ISLNK(lst.st_mode) && stat(full, &st) < 0) {
            *why = xasprintf("'%s' is a symlink that does not resolve: %s", r, strerror(errno));
            rc = -1;
        } else if (S_ISLNK(lst.st_mode) && S_ISDIR(st.st_mode)) {
            *why = xasprintf("'%s' is a symlink to a directory; symlinked directories are not "
                             "followed (copy the directory instead)",
                             r);
            rc = -1;
        } else if (S_ISREG(lst.st_mode) || (S_ISLNK(lst.st_mode) && S_ISREG(st.st_mode))) {
            *names = xrealloc(*names, (*n + 1) * sizeof(char *));
            (*names)[(*n)++] = r;
            r = NULL;
        } else {
            *why = xasprintf("'%s' is a %s, not a regular file", r,
                             file_type_name(S_ISLNK(lst.st_mode) ? st.st_mode : lst.st_mode));
            rc = -1;
        }
        free(r);
        free(full);
    }
    closedir(dp);
    free(dir);
    if (rc == 0 && !rel && *n > 1)
        qsort(*names, *n, sizeof(char *), cmp_str);
    return rc;
}

/* Content key of a model dir: sha256 over "name\tsize\tsha256\n" of every file. 0, or -1 with
 * *why. */
static int dir_hash(const char *dir, char out[SHA256_HEX_LEN], int64_t *total, char **why)
{
    char **names = NULL;
    size_t n = 0;
    struct sha256_ctx *c;
    int rc = list_files(dir, NULL, &names, &n, 0, why);
    *total = 0;
    c = sha256_new();
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *p = path_join(dir, names[i]);
        char h[SHA256_HEX_LEN], line[512];
        int64_t sz = 0;
        int e = file_hash(p, h, &sz);
        free(p);
        if (e < 0) {
            *why = xasprintf("cannot read '%s': %s", names[i],
                             e == -EINVAL ? "not a regular file" : strerror(-e));
            rc = -1;
        } else {
            snprintf(line, sizeof(line), "%s\t%lld\t%s\n", names[i], (long long)sz, h);
            sha256_update(c, line, strlen(line));
            *total += sz;
        }
    }
    sha256_final_hex(c, out);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ===== the plan built on the thread pool ===== */

struct pstage {
    char key[SHA256_HEX_LEN];
    bool have_artifact; /* artifacts/<key>/result.json exists (checked on the thread pool) */
    char *dep_key;      /* NULL: base model */
    const struct lanes_stage *ls;
    char *name;
    bool is_eval;
};

struct plane {
    const char *id;
    const char *grp;
    bool baseline;
    struct pstage *st;
    int n;
};

struct submit_job {
    uv_work_t req;
    struct daemon *d;
    struct conn *c;
    char *path;
    bool rerun;
    int priority;
    /* results */
    char *err; /* newline-separated problems */
    struct lanes_file *lf;
    char *sweep_id;
    char base_key[SHA256_HEX_LEN + 8];
    int64_t base_size;
    char *settings;
    struct plane *lanes;
    int nlanes;
    char *home;
    double max_gpu_gb; /* the largest slot's GPU memory when the submit arrived */
    int nslots;
    bool gpu_slots;
};

static void add_err(struct submit_job *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void add_err(struct submit_job *j, const char *fmt, ...)
{
    va_list ap;
    char *m, *old = j->err;
    va_start(ap, fmt);
    m = xvasprintf(fmt, ap);
    va_end(ap);
    j->err = old ? xasprintf("%s\n%s", old, m) : xstrdup(m);
    free(old);
    free(m);
}

static void stage_key(const char *kind, const char *key_json, const char *input_key,
                      char **file_sha, size_t nfiles, const char *salt, char out[SHA256_HEX_LEN])
{
    struct sha256_ctx *c = sha256_new();
    const char *parts[] = { "exaq-stage\n", EXAQ_VERSION, "\n",      kind, "\n",
                            key_json,       "\n",         input_key, "\n" };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(parts); i++)
        sha256_update(c, parts[i], strlen(parts[i]));
    for (size_t i = 0; i < nfiles; i++) {
        sha256_update(c, file_sha[i], strlen(file_sha[i]));
        sha256_update(c, "\n", 1);
    }
    if (salt)
        sha256_update(c, salt, strlen(salt));
    sha256_final_hex(c, out);
}

/* Key of one stage; hashes its data files. 0, or -1 with an error added. */
static int plan_stage(struct submit_job *j, const struct lanes_stage *ls, const char *input_key,
                      const char *salt, struct sha256_ctx *sweep_hash, char out[SHA256_HEX_LEN])
{
    char **sha = xcalloc(ls->nfiles + 1, sizeof(char *));
    int rc = 0;
    for (size_t i = 0; i < ls->nfiles; i++) {
        char h[SHA256_HEX_LEN];
        int e = file_hash(ls->files[i], h, NULL);
        if (e < 0) {
            add_err(j, "%s:%d:%d: error: cannot read data file '%s': %s", j->lf->path, ls->line,
                    ls->col, ls->files[i], strerror(-e));
            rc = -1;
            h[0] = '\0';
        }
        sha[i] = xstrdup(h);
        sha256_update(sweep_hash, h, strlen(h));
    }
    if (rc == 0)
        stage_key(ls->kind, ls->key_json, input_key, sha, ls->nfiles, salt, out);
    for (size_t i = 0; i < ls->nfiles; i++)
        free(sha[i]);
    free(sha);
    return rc;
}

static void plan_lane(struct submit_job *j, struct plane *pl, const struct lanes_stage *pipe,
                      size_t npipe, const char *salt, struct sha256_ctx *sh)
{
    const struct lanes_file *lf = j->lf;
    char model_key[SHA256_HEX_LEN + 8];
    char *model_dep = NULL; /* key of the stage that produced the current model */
    snprintf(model_key, sizeof(model_key), "%s", j->base_key);
    pl->n = (int)(npipe + lf->neval);
    pl->st = xcalloc((size_t)pl->n, sizeof(*pl->st));
    for (size_t i = 0; i < npipe + lf->neval; i++) {
        bool is_eval = i >= npipe;
        const struct lanes_stage *ls = is_eval ? &lf->eval[i - npipe] : &pipe[i];
        struct pstage *ps = &pl->st[i];
        ps->ls = ls;
        ps->name = xstrdup(ls->name);
        ps->is_eval = is_eval;
        ps->dep_key = model_dep ? xstrdup(model_dep) : NULL;
        if (is_eval && !strcmp(ls->kind, "speed")) {
            /* The speed eval times its model against the base model in pairs
             * (docs/evals.md "speed"): its result depends on both. */
            char *in = xasprintf("%s\nbaseline %s", model_key, j->base_key);
            int rc = plan_stage(j, ls, in, salt, sh, ps->key);
            free(in);
            if (rc < 0)
                continue;
        } else if (plan_stage(j, ls, model_key, salt, sh, ps->key) < 0) {
            continue;
        }
        {
            char *rj = xasprintf("%s/artifacts/%s/result.json", j->home, ps->key);
            ps->have_artifact = is_file(rj);
            free(rj);
        }
        if (!is_eval && ls->produces_model) {
            snprintf(model_key, sizeof(model_key), "%s", ps->key);
            free(model_dep);
            model_dep = xstrdup(ps->key);
        }
    }
    free(model_dep);
}

static char *settings_json(const struct lanes_file *lf)
{
    struct buf b;
    struct jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "score");
    jw_obj_begin(&w);
    jw_key(&w, "perf");
    jw_arr_begin(&w);
    for (size_t i = 0; i < lf->nperf; i++) {
        jw_obj_begin(&w);
        jw_kstr(&w, "metric", lf->perf[i].metric);
        jw_kbool(&w, "higher_is_better", lf->perf[i].higher_is_better);
        jw_knum(&w, "weight", lf->perf[i].weight);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_kstr(&w, "speed_metric", lf->speed_metric);
    jw_knum(&w, "w_perf", lf->w_perf);
    jw_knum(&w, "w_speed", lf->w_speed);
    jw_obj_end(&w);
    jw_key(&w, "package");
    jw_obj_begin(&w);
    jw_kint(&w, "top", lf->package_top);
    jw_knum(&w, "max_zip_gb", lf->max_zip_gb);
    jw_knum(&w, "max_unzipped_gb", lf->max_unzipped_gb);
    jw_obj_end(&w);
    jw_kstr(&w, "on_finish", lf->on_finish);
    jw_kstr(&w, "on_fail", lf->on_fail);
    if (lf->slurm.present) {
        jw_key(&w, "slurm"); /* read back by daemon/slurm.c */
        jw_obj_begin(&w);
        jw_kstr(&w, "partition", lf->slurm.partition);
        jw_kstr(&w, "account", lf->slurm.account);
        jw_kstr(&w, "qos", lf->slurm.qos);
        jw_kstr(&w, "gres", lf->slurm.gres);
        jw_kstr(&w, "constraint", lf->slurm.constraint);
        jw_knum(&w, "time_min", lf->slurm.time_min);
        jw_kint(&w, "cpus_per_task", lf->slurm.cpus_per_task);
        jw_knum(&w, "mem_gb", lf->slurm.mem_gb);
        jw_key(&w, "extra_args");
        jw_arr_begin(&w);
        for (size_t i = 0; i < lf->slurm.nextra; i++)
            jw_str(&w, lf->slurm.extra_args[i]);
        jw_arr_end(&w);
        jw_obj_end(&w);
    }
    jw_obj_end(&w);
    return buf_steal(&b);
}

/* A stage whose resources no slot of this exaqd can ever give is refused here rather than left
 * waiting: gpu_mem_gb beyond the largest slot, or more GPUs than there are slots. */
static void check_resources(struct submit_job *j, const char *lane, const struct lanes_stage *ls)
{
    if (ls->res.executor == LANES_EXEC_SLURM)
        return; /* the cluster's nodes, not this exaqd's slots, give it */
    if (ls->res.gpu_mem_gb > j->max_gpu_gb) {
        char *why = sched_gpu_mem_refusal(ls->res.gpu_mem_gb, j->max_gpu_gb);
        add_err(j, "%s:%d:%d: error: stage '%s' of lane '%s': %s", j->lf->path, ls->line, ls->col,
                ls->name, lane, why);
        free(why);
    }
    if (j->gpu_slots && ls->res.gpus > j->nslots)
        add_err(j,
                "%s:%d:%d: error: stage '%s' of lane '%s' needs gpus=%d but exaqd has %d worker "
                "slot(s)",
                j->lf->path, ls->line, ls->col, ls->name, lane, ls->res.gpus, j->nslots);
}

static void work_cb(uv_work_t *req)
{
    struct submit_job *j = req->data;
    struct lanes_diag diag;
    struct sha256_ctx *sh;
    char salt[64], *saltp = NULL, hex[SHA256_HEX_LEN], *text = NULL;
    char bk[SHA256_HEX_LEN], *why = NULL;
    size_t tlen = 0;
    int rc;

    lanes_diag_init(&diag);
    if (lanes_parse_file(j->path, &j->lf, &diag) < 0) {
        for (size_t i = 0; i < diag.n; i++) {
            char *line = lanes_diag_format(&diag, i);
            add_err(j, "%s", line);
            free(line);
        }
        if (!j->err)
            add_err(j, "%s: error: invalid lanes file", j->path);
        lanes_diag_release(&diag);
        return;
    }
    lanes_diag_release(&diag);
    for (size_t i = 0; i < j->lf->nlanes; i++)
        if (!strcmp(j->lf->lanes[i].id, "baseline"))
            add_err(j,
                    "%s:%d:%d: error: lane id 'baseline' is reserved for the implicit "
                    "baseline lane (hint: rename the lane)",
                    j->lf->path, j->lf->lanes[i].line, j->lf->lanes[i].col);
    for (size_t i = 0; i < j->lf->nlanes; i++)
        for (size_t k = 0; k < j->lf->lanes[i].nstages; k++)
            check_resources(j, j->lf->lanes[i].id, &j->lf->lanes[i].stages[k]);
    for (size_t i = 0; i < j->lf->neval; i++)
        check_resources(j, "(eval)", &j->lf->eval[i]);
    if (j->err)
        return;
    rc = dir_hash(j->lf->base_model, bk, &j->base_size, &why);
    if (rc < 0) {
        add_err(j, "%s: error: base model '%s': %s", j->lf->path, j->lf->base_model,
                why ? why : "unreadable");
        free(why);
        return;
    }
    snprintf(j->base_key, sizeof(j->base_key), "base:%s", bk);
    if (j->rerun) {
        snprintf(salt, sizeof(salt), "rerun:%.6f", now_wall());
        saltp = salt;
    }
    sh = sha256_new();
    sha256_update(sh, j->lf->canonical_json, strlen(j->lf->canonical_json));
    sha256_update(sh, j->base_key, strlen(j->base_key));
    if (saltp)
        sha256_update(sh, saltp, strlen(saltp));
    j->nlanes = (int)j->lf->nlanes + 1;
    j->lanes = xcalloc((size_t)j->nlanes, sizeof(*j->lanes));
    j->lanes[0].id = "baseline";
    j->lanes[0].baseline = true;
    plan_lane(j, &j->lanes[0], NULL, 0, saltp, sh);
    for (size_t i = 0; i < j->lf->nlanes; i++) {
        const struct lanes_lane *ll = &j->lf->lanes[i];
        j->lanes[i + 1].id = ll->id;
        j->lanes[i + 1].grp = ll->group;
        plan_lane(j, &j->lanes[i + 1], ll->stages, ll->nstages, saltp, sh);
    }
    sha256_final_hex(sh, hex);
    if (j->err)
        return;
    j->sweep_id = xasprintf("%s-%.8s", j->lf->sweep, hex);
    j->settings = settings_json(j->lf);
    /* Keep the file as submitted beside the sweep's results. */
    if (file_read_all(j->path, &text, &tlen) == 0) {
        char *dir = xasprintf("%s/sweeps/%s", j->home, j->sweep_id);
        char *dst = path_join(dir, "lanes.yaml");
        if (mkdir_p(dir, 0700) == 0 && !is_file(dst))
            file_write_atomic(dst, text, tlen);
        free(dst);
        free(dir);
        free(text);
    }
}

static void job_free(struct submit_job *j)
{
    for (int i = 0; i < j->nlanes; i++) {
        for (int k = 0; k < j->lanes[i].n; k++) {
            free(j->lanes[i].st[k].name);
            free(j->lanes[i].st[k].dep_key);
        }
        free(j->lanes[i].st);
    }
    free(j->lanes);
    lanes_file_free(j->lf);
    free(j->err);
    free(j->path);
    free(j->sweep_id);
    free(j->settings);
    free(j->home);
    free(j);
}

/* Rows of a sweep whose commit failed: removed again (best effort; the disk may still be full,
 * and a sweep nobody was told about must not come back at the next start). */
static void forget_rows(struct daemon *d, const char *id)
{
    store_exec(d->store, "DELETE FROM lane_stages WHERE sweep=?", "s", id);
    store_exec(d->store, "DELETE FROM lanes WHERE sweep=?", "s", id);
    store_exec(d->store, "DELETE FROM sweeps WHERE id=?", "s", id);
}

static void reply_error_not_recorded(struct conn *c, const char *id)
{
    server_reply_error(c, "submit", PROTO_E_INTERNAL,
                       "sweep '%s' could not be recorded in the database (is the disk full? see "
                       "exaqd.log); nothing was queued, submit it again once that is fixed",
                       id);
}

/*
 * The acknowledgement of a submit: sent only once its rows are committed. When the commit
 * failed, the sweep leaves the model again, so it runs nowhere and a second submit starts over.
 */
static void reply_after_commit(void *arg, int rc)
{
    struct submit_job *j = arg;
    struct conn *c = j->c;
    struct dsweep *sw = hmap_get(&j->d->sweeps, j->sweep_id);
    if (rc < 0 && sw && sw->uncommitted) {
        log_error("sweep %s: its rows could not be committed; discarded", j->sweep_id);
        forget_rows(j->d, sw->id);
        sched_sweep_discard(j->d, sw);
        sw = NULL;
    } else if (sw) {
        sw->uncommitted = false;
        sched_kick(j->d);
    }
    if (c->d) {
        if (!sw) {
            reply_error_not_recorded(c, j->sweep_id);
        } else {
            struct proto_msg r;
            int nst = 0, reused = 0;
            for (int i = 0; i < sw->nlanes; i++)
                for (int k = 0; k < sw->lanes[i]->n; k++) {
                    nst++;
                    reused += sw->lanes[i]->reused[k];
                }
            proto_msg_init(&r, PROTO_T_submit_r);
            proto_set_str(&r.u.submit_r.sweep, &r.u.submit_r.has_sweep, j->sweep_id);
            r.u.submit_r.existed = false;
            r.u.submit_r.has_existed = true;
            r.u.submit_r.lanes = sw->nlanes;
            r.u.submit_r.has_lanes = true;
            r.u.submit_r.stages = nst;
            r.u.submit_r.has_stages = true;
            r.u.submit_r.reused = reused;
            r.u.submit_r.has_reused = true;
            server_reply(c, &r);
            proto_msg_release(&r);
        }
    }
    server_conn_async_done(c);
    job_free(j);
}

/* "Already submitted" is an acknowledgement too: it waits until the first submit's rows are
 * committed (or discarded). */
static void reply_existed_after_commit(void *arg, int rc)
{
    struct submit_job *j = arg;
    struct conn *c = j->c;
    struct dsweep *sw = hmap_get(&j->d->sweeps, j->sweep_id);
    (void)rc;
    if (c->d) {
        if (!sw || sw->uncommitted) {
            reply_error_not_recorded(c, j->sweep_id);
        } else {
            struct proto_msg r;
            proto_msg_init(&r, PROTO_T_submit_r);
            proto_set_str(&r.u.submit_r.sweep, &r.u.submit_r.has_sweep, sw->id);
            r.u.submit_r.existed = true;
            r.u.submit_r.has_existed = true;
            r.u.submit_r.lanes = sw->nlanes;
            r.u.submit_r.has_lanes = true;
            r.u.submit_r.has_stages = true;
            r.u.submit_r.has_reused = true;
            server_reply(c, &r);
            proto_msg_release(&r);
        }
    }
    server_conn_async_done(c);
    job_free(j);
}

static void persist_hashes(struct daemon *d)
{
    pthread_mutex_lock(&fh_mu);
    for (size_t i = 0; i < fh_map.cap; i++) {
        struct fhash *h;
        if (!fh_map.keys || !fh_map.keys[i])
            continue;
        h = fh_map.vals[i];
        if (!h->dirty)
            continue;
        h->dirty = false;
        store_exec(d->store,
                   "INSERT OR REPLACE INTO file_hashes(path, size, mtime_ns, ino, sha256) "
                   "VALUES (?, ?, ?, ?, ?)",
                   "siiis", fh_map.keys[i], h->size, h->mtime_ns, h->ino, h->sha);
    }
    pthread_mutex_unlock(&fh_mu);
}

static struct dstage *merge_stage(struct daemon *d, struct submit_job *j, struct pstage *ps,
                                  bool *reused)
{
    struct dstage *st = sched_stage_get(d, ps->key);
    const struct lanes_stage *ls = ps->ls;
    *reused = st != NULL;
    if (st && st->nrefs == 0 && st->nattempts == 0 && st->state == DSTAGE_PENDING) {
        /* Left by a submit whose rows could not be committed: its row may be missing. */
        *reused = false;
        store_exec(d->store,
                   "INSERT OR IGNORE INTO stages(key, kind, spec, dep, input_dir, produces_model, "
                   "retries, timeout_min, gpus, gpu_mem_gb, min_free_gb, state, created) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                   "sssssiididdd", st->key, st->kind, st->spec, st->dep_key, st->input_dir,
                   (int64_t)st->produces_model, (int64_t)st->res.retries, st->res.timeout_min,
                   (int64_t)st->res.gpus, st->res.gpu_mem_gb, st->res.min_free_gb, st->created);
        return st;
    }
    if (st) {
        if (st->state == DSTAGE_DONE && st->produces_model && !ps->have_artifact) {
            /* Its output was removed (exaqctl gc, or by hand): make it again. */
            st->tries = 0;
            sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_PENDING },
                            "%s output is gone; it will run again", st->kind);
        } else if (st->state == DSTAGE_FAILED) {
            st->tries = 0;
            sched_stage_set(d, st, &(struct stage_change){ .to = DSTAGE_PENDING },
                            "%s failed before; a new sweep needs it, re-queued", st->kind);
        }
        return st;
    }
    st = xcalloc(1, sizeof(*st));
    memcpy(st->key, ps->key, SHA256_HEX_LEN);
    st->kind = xstrdup(ls->kind);
    st->spec = xstrdup(ls->spec_json);
    st->dep_key = ps->dep_key ? xstrdup(ps->dep_key) : NULL;
    st->dep = ps->dep_key ? sched_stage_get(d, ps->dep_key) : NULL;
    st->input_dir = ps->dep_key ? xasprintf("%s/artifacts/%s/model", d->home, ps->dep_key)
                                : xstrdup(j->lf->base_model);
    st->produces_model = ls->produces_model != 0;
    st->res = ls->res;
    st->state = DSTAGE_PENDING;
    st->size_bytes = -1;
    st->created = now_wall();
    sched_stage_add(d, st);
    /* The resource columns, placeholders, format letters and values come from LANES_RESOURCES. */
#define RES_COL(name, type, lo, hi, def)   ", " #name
#define RES_QMARK(name, type, lo, hi, def) ", ?"
#define RES_FMT_INT                        "i"
#define RES_FMT_NUM                        "d"
#define RES_FMT_NUMPOS                     "d"
#define RES_FMT_EXEC                       "i"
#define RES_FMT(name, type, lo, hi, def)   RES_FMT_##type
#define RES_VAL_INT(x)                     (int64_t)(x)
#define RES_VAL_NUM(x)                     (double)(x)
#define RES_VAL_NUMPOS(x)                  (double)(x)
#define RES_VAL_EXEC(x)                    (int64_t)(x)
#define RES_VAL(name, type, lo, hi, def)   , RES_VAL_##type(st->res.name)
    store_exec(
        d->store,
        "INSERT INTO stages(key, kind, spec, dep, input_dir, produces_model" LANES_RESOURCES(
            RES_COL) ", state, created) VALUES (?, ?, ?, ?, ?, ?" LANES_RESOURCES(RES_QMARK) ", "
                                                                                             "'pend"
                                                                                             "ing',"
                                                                                             " ?)",
        "sssssi" LANES_RESOURCES(RES_FMT) "d", st->key, st->kind, st->spec, st->dep_key,
        st->input_dir, (int64_t)st->produces_model LANES_RESOURCES(RES_VAL), st->created);
    return st;
}

static void after_cb(uv_work_t *req, int status)
{
    struct submit_job *j = req->data;
    struct daemon *d = j->d;
    struct conn *c = j->c;
    struct dsweep *sw;

    persist_hashes(d);
    if (status < 0 || j->err || d->shutting_down) {
        if (c->d)
            server_reply_error(
                c, "submit", d->shutting_down ? PROTO_E_SHUTDOWN : PROTO_E_INVALID, "%s",
                d->shutting_down ? "exaqd is shutting down" : (j->err ? j->err : "cancelled"));
        server_conn_async_done(c);
        job_free(j);
        return;
    }
    sw = sched_sweep_get(d, j->sweep_id);
    if (sw && !strcmp(sw->id, j->sweep_id)) {
        store_barrier(d->store, reply_existed_after_commit, j);
        return;
    }
    sw = xcalloc(1, sizeof(*sw));
    sw->id = xstrdup(j->sweep_id);
    sw->seq = d->next_seq;
    sw->name = xstrdup(j->lf->sweep);
    sw->yaml_path = xstrdup(j->lf->path);
    sw->base_model = xstrdup(j->lf->base_model);
    sw->base_key = xstrdup(j->base_key);
    sw->base_size = j->base_size;
    sw->priority = j->priority;
    sw->settings = xstrdup(j->settings);
    sw->created = now_wall();
    sw->uncommitted = true; /* until reply_after_commit */
    store_exec(d->store,
               "INSERT INTO sweeps(id, seq, name, yaml_path, base_model, base_key, base_size, "
               "priority, settings, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               "sissssiisd", sw->id, sw->seq, sw->name, sw->yaml_path, sw->base_model, sw->base_key,
               sw->base_size, (int64_t)sw->priority, sw->settings, sw->created);
    for (int i = 0; i < j->nlanes; i++) {
        struct plane *pl = &j->lanes[i];
        struct dlane *l = xcalloc(1, sizeof(*l));
        l->sw = sw;
        l->id = xstrdup(pl->id);
        l->grp = pl->grp ? xstrdup(pl->grp) : NULL;
        l->idx = i;
        l->baseline = pl->baseline;
        sw->lanes = xrealloc(sw->lanes, (size_t)(sw->nlanes + 1) * sizeof(*sw->lanes));
        sw->lanes[sw->nlanes++] = l;
        store_exec(d->store,
                   "INSERT INTO lanes(sweep, id, idx, grp, baseline) VALUES (?, ?, ?, ?, ?)",
                   "ssisi", sw->id, l->id, (int64_t)i, l->grp, (int64_t)l->baseline);
        for (int k = 0; k < pl->n; k++) {
            bool reused;
            struct dstage *st = merge_stage(d, j, &pl->st[k], &reused);
            sched_lane_add_stage(l, st, pl->st[k].name, pl->st[k].is_eval, reused);
            store_exec(d->store,
                       "INSERT INTO lane_stages(sweep, lane, pos, name, key, eval, reused) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       "ssissii", sw->id, l->id, (int64_t)k, pl->st[k].name, st->key,
                       (int64_t)pl->st[k].is_eval, (int64_t)reused);
        }
        l->last_state = sched_lane_state(l);
    }
    sched_sweep_add(d, sw);
    sched_event(d, sw->id, NULL, NULL, "submitted (%d lanes incl. baseline, priority %d)",
                sw->nlanes, sw->priority);
    store_barrier(d->store, reply_after_commit, j);
}

void submit_start(struct daemon *d, struct conn *c, const struct pm_submit *req)
{
    struct submit_job *j;
    int rc;
    if (req->path[0] != '/') {
        server_reply_error(c, "submit", PROTO_E_INVALID, "submit path '%s' must be absolute",
                           req->path);
        return;
    }
    j = xcalloc(1, sizeof(*j));
    j->req.data = j;
    j->d = d;
    j->c = c;
    j->path = xstrdup(req->path);
    j->rerun = req->has_rerun && req->rerun;
    j->priority = req->has_priority ? (int)req->priority : 0;
    j->home = xstrdup(d->home);
    j->max_gpu_gb = workers_max_gpu_gb(d);
    j->nslots = d->nslots;
    j->gpu_slots = d->gpu_slots;
    c->pending_async++;
    rc = uv_queue_work(d->loop, &j->req, work_cb, after_cb);
    if (rc < 0) {
        c->pending_async--;
        server_reply_error(c, "submit", PROTO_E_INTERNAL, "cannot queue work: %s", uv_strerror(rc));
        job_free(j);
    }
}
