/*
 * pkg: model checks and submission zips (see pkg.h). Blocking code for the thread pool only;
 * it never touches the daemon's model. libzip is used only here.
 */
#include "daemon/pkg.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <cJSON.h>

#include "common/jw.h"
#include "common/util.h"
#include "common/st.h"

#ifndef ZIP_LENGTH_TO_END
#define ZIP_LENGTH_TO_END (-1)
#endif

#define GB 1e9

bool pkg_entry_name_ok(const char *name)
{
    const char *p, *comp;
    size_t len;
    if (!name || !*name || name[0] == '/' || strlen(name) > 4096)
        return false;
    for (p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '\\')
            return false;
    comp = name;
    for (;;) {
        p = strchr(comp, '/');
        len = p ? (size_t)(p - comp) : strlen(comp);
        if (len == 0 || (len == 1 && comp[0] == '.') ||
            (len == 2 && comp[0] == '.' && comp[1] == '.'))
            return false;
        if (!p)
            break;
        comp = p + 1;
    }
    return true;
}

void pkg_files_free(char **files, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

struct walk {
    char **files;
    size_t n;
    int64_t total;
    char *reason;
    char *root_real; /* realpath of the model dir */
};

/* Whether the resolved path p lies inside the resolved dir root. */
static bool path_inside(const char *root, const char *p)
{
    size_t n = strlen(root);
    return !strncmp(p, root, n) && (p[n] == '/' || (n == 1 && root[0] == '/'));
}

/*
 * A symlink in a model dir may point to a file inside the dir, never outside it: a package
 * holds the model's own files, not /etc/shadow. NULL, or a new reason.
 */
static char *check_link(const struct walk *w, const char *full, const char *rel)
{
    char *real = path_abs(full), *why = NULL, target[4096];
    ssize_t n;
    if (!real)
        return xasprintf("cannot resolve symlink '%s': %s", rel, strerror(errno));
    if (!path_inside(w->root_real, real)) {
        n = readlink(full, target, sizeof(target) - 1);
        target[n > 0 ? n : 0] = '\0';
        why = xasprintf("'%s' is a symlink to '%s', outside the model dir; packages never "
                        "include files from outside it (copy the file in instead)",
                        rel, n > 0 ? target : real);
    }
    free(real);
    return why;
}

/* Lists the regular files under root/rel into w. 0, or -1 with w->reason. */
static int walk_dir(const char *root, const char *rel, struct walk *w, int depth)
{
    char *dir = rel ? path_join(root, rel) : xstrdup(root);
    DIR *dp = opendir(dir);
    struct dirent *de;
    int rc = 0;
    if (!dp) {
        w->reason = xasprintf("cannot list '%s': %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    if (depth > 16) {
        w->reason = xasprintf("'%s' is nested too deeply", dir);
        closedir(dp);
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
        if (!pkg_entry_name_ok(r)) {
            w->reason = xasprintf("file name '%s' cannot be a zip entry", r);
            rc = -1;
        } else if (lstat(full, &lst) < 0 || stat(full, &st) < 0) {
            w->reason = xasprintf("cannot stat '%s': %s", r, strerror(errno));
            rc = -1;
        } else if (S_ISDIR(st.st_mode) && S_ISLNK(lst.st_mode)) {
            w->reason = xasprintf("'%s' is a symlink to a directory", r);
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            rc = walk_dir(root, r, w, depth + 1);
        } else if (S_ISREG(st.st_mode) && S_ISLNK(lst.st_mode) &&
                   (w->reason = check_link(w, full, r))) {
            rc = -1;
        } else if (S_ISREG(st.st_mode)) {
            w->files = xrealloc(w->files, (w->n + 1) * sizeof(char *));
            w->files[w->n++] = r;
            w->total += st.st_size;
            r = NULL;
        } else {
            w->reason = xasprintf("'%s' is not a regular file", r);
            rc = -1;
        }
        free(r);
        free(full);
    }
    closedir(dp);
    free(dir);
    return rc;
}

static bool has_file(char **files, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(files[i], name))
            return true;
    return false;
}

bool pkg_has_tok_config(const char *dir)
{
    char *p = path_join(dir, "tokenizer_config.json");
    bool ok = is_file(p);
    free(p);
    return ok;
}

static char *human_bytes(int64_t n)
{
    if (n >= 1000000000)
        return xasprintf("%.2f GB", (double)n / GB);
    if (n >= 1000000)
        return xasprintf("%.1f MB", (double)n / 1e6);
    return xasprintf("%lld bytes", (long long)n);
}

/* Config, tokenizer and safetensors checks on a listed model dir. NULL, or a new reason. */
static char *check_contents(const char *dir, char **files, size_t n, bool need_tok_config)
{
    char *p, *text = NULL, *st_err = NULL, *reason = NULL;
    size_t len = 0;
    int nst = 0, rc;
    cJSON *cfg;

    if (!has_file(files, n, "config.json"))
        return xstrdup("config.json is missing");
    p = path_join(dir, "config.json");
    rc = file_read_all(p, &text, &len);
    free(p);
    if (rc < 0)
        return xasprintf("cannot read config.json: %s", strerror(-rc));
    cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return xstrdup("config.json is not a valid JSON object");
    }
    cJSON_Delete(cfg);
    if (!has_file(files, n, "tokenizer.json"))
        return xstrdup("tokenizer.json is missing");
    if (need_tok_config && !has_file(files, n, "tokenizer_config.json"))
        return xstrdup("tokenizer_config.json is missing (the base model has one)");
    for (size_t i = 0; i < n && !reason; i++) {
        struct st_file *f = NULL;
        if (!str_ends_with(files[i], ".safetensors"))
            continue;
        nst++;
        p = path_join(dir, files[i]);
        if (st_file_open(&f, p, &st_err) < 0) {
            /* st.h messages start with the file name. */
            reason = st_err ? xasprintf("invalid safetensors file: %s", st_err)
                            : xasprintf("invalid safetensors file '%s'", files[i]);
            free(st_err);
            st_err = NULL;
        }
        st_file_free(f);
        free(p);
    }
    if (reason)
        return reason;
    if (nst == 0)
        return xstrdup("no .safetensors file");
    if (has_file(files, n, "model.safetensors.index.json")) {
        struct st_dir *sd = NULL;
        if (st_dir_open(&sd, dir, &st_err) < 0) {
            reason = xasprintf("invalid safetensors index: %s", st_err ? st_err : "unreadable");
            free(st_err);
        }
        st_dir_free(sd);
    }
    return reason;
}

int pkg_check_model(const char *dir, bool need_tok_config, double max_unzipped_gb, char ***files,
                    size_t *nfiles, int64_t *total, char **reason)
{
    struct walk w = { NULL, 0, 0, NULL, NULL };
    char *why = NULL;

    *files = NULL;
    *nfiles = 0;
    *total = 0;
    *reason = NULL;
    if (!dir || !is_dir(dir)) {
        *reason = xasprintf("model dir '%s' does not exist", dir ? dir : "(none)");
        return -1;
    }
    w.root_real = path_abs(dir);
    if (!w.root_real) {
        why = xasprintf("cannot resolve '%s': %s", dir, strerror(errno));
        goto fail;
    }
    if (walk_dir(dir, NULL, &w, 0) < 0) {
        why = w.reason;
        goto fail;
    }
    qsort(w.files, w.n, sizeof(char *), cmp_str);
    /* The size first: it costs nothing, and an oversized model is out whatever else holds. */
    if ((double)w.total > max_unzipped_gb * GB) {
        char *h = human_bytes(w.total);
        why = xasprintf("model is %s unzipped (%lld bytes), over max_unzipped_gb %g", h,
                        (long long)w.total, max_unzipped_gb);
        free(h);
        goto fail;
    }
    why = check_contents(dir, w.files, w.n, need_tok_config);
    if (why)
        goto fail;
    *files = w.files;
    *nfiles = w.n;
    *total = w.total;
    free(w.root_real);
    return 0;
fail:
    free(w.root_real);
    pkg_files_free(w.files, w.n);
    *reason = why;
    return -1;
}

int pkg_write_zip(const char *src_dir, char *const *files, size_t n, const char *zip_path,
                  int64_t *zip_bytes, char **err)
{
    int zerr = 0;
    zip_t *za;
    struct stat st;

    *err = NULL;
    *zip_bytes = 0;
    unlink(zip_path);
    za = zip_open(zip_path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
    if (!za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        *err = xasprintf("cannot create '%s': %s", zip_path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char *src = path_join(src_dir, files[i]);
        char *entry = xasprintf("model/%s", files[i]);
        zip_source_t *zs = zip_source_file(za, src, 0, ZIP_LENGTH_TO_END);
        zip_int64_t idx = -1;
        if (!pkg_entry_name_ok(entry))
            *err = xasprintf("bad entry name '%s'", entry);
        else if (!zs)
            *err = xasprintf("cannot read '%s': %s", src, zip_strerror(za));
        else if ((idx = zip_file_add(za, entry, zs, ZIP_FL_ENC_UTF_8)) < 0)
            *err = xasprintf("cannot add '%s': %s", entry, zip_strerror(za));
        else if (zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0) < 0)
            *err = xasprintf("cannot store '%s': %s", entry, zip_strerror(za));
        if (zs && idx < 0)
            zip_source_free(zs);
        free(src);
        free(entry);
        if (*err) {
            zip_discard(za);
            unlink(zip_path);
            return -1;
        }
    }
    if (zip_close(za) < 0) {
        *err = xasprintf("cannot write '%s': %s", zip_path, zip_strerror(za));
        zip_discard(za);
        unlink(zip_path);
        return -1;
    }
    /* Read it back: the central directory must be consistent and hold every entry. */
    za = zip_open(zip_path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!za || zip_get_num_entries(za, 0) != (zip_int64_t)n) {
        *err = xasprintf("'%s' does not read back as a zip of %zu entries", zip_path, n);
        if (za)
            zip_discard(za);
        unlink(zip_path);
        return -1;
    }
    zip_discard(za);
    if (stat(zip_path, &st) < 0) {
        *err = xasprintf("cannot stat '%s': %s", zip_path, strerror(errno));
        unlink(zip_path);
        return -1;
    }
    *zip_bytes = st.st_size;
    return 0;
}

/*
 * Hard links (or copies) every file of src into dst (created). Symlinks are resolved and
 * checked against src again (it may have changed since pkg_check_model), so dst holds only
 * regular files from inside src. 0, or -1 with *err.
 */
static int link_tree(const char *src, const char *dst, char *const *files, size_t n, char **err)
{
    char *root = path_abs(src);
    if (!root) {
        *err = xasprintf("cannot resolve '%s': %s", src, strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char *s = path_join(src, files[i]), *t = path_join(dst, files[i]);
        char *td = path_dirname(t), *real = path_abs(s);
        int rc = mkdir_p(td, 0755);
        if (!real) {
            *err = xasprintf("cannot resolve '%s': %s", files[i], strerror(errno));
            rc = -1;
        } else if (!path_inside(root, real)) {
            *err = xasprintf("'%s' resolves to '%s', outside the model dir", files[i], real);
            rc = -1;
        } else if (rc == 0 && link(real, t) < 0) {
            rc = file_copy(real, t);
        }
        if (rc < 0 && !*err)
            *err = xasprintf("cannot copy '%s': %s", files[i], strerror(-rc));
        free(s);
        free(t);
        free(td);
        free(real);
        if (rc < 0) {
            free(root);
            return -1;
        }
    }
    free(root);
    return 0;
}

/* Parses "top<N>" / "submit_top<N>.zip" names; 0 when the name is neither. */
static long slot_of(const char *name)
{
    const char *p;
    char *end;
    long v;
    if (str_starts_with(name, "submit_top"))
        p = name + strlen("submit_top");
    else if (str_starts_with(name, "top"))
        p = name + 3;
    else
        return 0;
    if (*p < '1' || *p > '9')
        return 0;
    v = strtol(p, &end, 10);
    if (p == name + 3 ? *end != '\0' : strcmp(end, ".zip") != 0)
        return 0;
    return v;
}

/* Removes slots above `keep` and temporary leftovers of earlier runs. */
static void remove_stale(const char *out, int keep)
{
    DIR *dp = opendir(out);
    struct dirent *de;
    if (!dp)
        return;
    while ((de = readdir(dp))) {
        long k = slot_of(de->d_name);
        bool tmp = strstr(de->d_name, ".tmp-") && (str_starts_with(de->d_name, "top") ||
                                                   str_starts_with(de->d_name, "submit_top"));
        if (tmp || k > keep) {
            char *p = path_join(out, de->d_name);
            rm_rf(p);
            free(p);
        }
    }
    closedir(dp);
}

/* Makes temporary names unique across concurrent jobs of this process. */
static unsigned long tmp_seq;

/* Packages one candidate into slot n. 0, or -1 with *reason. */
static int package_one(const struct pkg_request *req, const struct pkg_cand *c, int n, struct jw *w)
{
    char **files = NULL, *reason = NULL;
    size_t nfiles = 0;
    int64_t total = 0, zbytes = 0;
    unsigned long seq = __atomic_add_fetch(&tmp_seq, 1, __ATOMIC_RELAXED);
    char *tmpdir = xasprintf("%s/top%d.tmp-%d-%lu", req->out_dir, n, (int)getpid(), seq);
    char *tmpmodel = path_join(tmpdir, "model");
    char *final_dir = xasprintf("%s/top%d", req->out_dir, n);
    char *zip_tmp =
        xasprintf("%s/submit_top%d.zip.tmp-%d-%lu", req->out_dir, n, (int)getpid(), seq);
    char *zip_final = xasprintf("%s/submit_top%d.zip", req->out_dir, n);
    char *model_final = path_join(final_dir, "model");
    int rc = -1;

    if (pkg_check_model(c->model_dir, req->need_tok_config, req->max_unzipped_gb, &files, &nfiles,
                        &total, &reason) < 0)
        goto out;
    rm_rf(tmpdir);
    if (link_tree(c->model_dir, tmpmodel, files, nfiles, &reason) < 0)
        goto out;
    if (pkg_write_zip(tmpmodel, files, nfiles, zip_tmp, &zbytes, &reason) < 0)
        goto out;
    if ((double)zbytes > req->max_zip_gb * GB) {
        char *h = human_bytes(zbytes);
        reason = xasprintf("zip is %s (%lld bytes), over max_zip_gb %g", h, (long long)zbytes,
                           req->max_zip_gb);
        free(h);
        goto out;
    }
    rm_rf(final_dir);
    if (rename(tmpdir, final_dir) < 0 || rename(zip_tmp, zip_final) < 0) {
        reason = xasprintf("cannot move the package into place: %s", strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (rc < 0) {
        rm_rf(tmpdir);
        unlink(zip_tmp);
    }
    jw_obj_begin(w);
    jw_kstr(w, "lane", c->lane);
    jw_kbool(w, "ok", rc == 0);
    if (rc == 0) {
        jw_kint(w, "top", n);
        jw_kstr(w, "zip", zip_final);
        jw_kstr(w, "model_dir", model_final);
        jw_kint(w, "zip_bytes", zbytes);
        jw_kint(w, "unzipped_bytes", total);
        jw_kint(w, "files", (int64_t)nfiles);
    } else {
        jw_kstr(w, "reason", reason ? reason : "unknown error");
    }
    jw_obj_end(w);
    pkg_files_free(files, nfiles);
    free(reason);
    free(tmpdir);
    free(tmpmodel);
    free(final_dir);
    free(zip_tmp);
    free(zip_final);
    free(model_final);
    return rc;
}

char *pkg_run(const struct pkg_request *req)
{
    struct buf b;
    struct jw w;
    int n = 0, rc;
    char *err = NULL;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "dir", req->out_dir);
    jw_kint(&w, "top", req->top);
    if (req->error) {
        err = xstrdup(req->error);
    } else if ((rc = mkdir_p(req->out_dir, 0755)) < 0) {
        err = xasprintf("cannot create '%s': %s", req->out_dir, strerror(-rc));
    }
    jw_key(&w, "lanes");
    jw_arr_begin(&w);
    for (int i = 0; !err && i < req->ncands && n < req->top; i++)
        if (package_one(req, &req->cands[i], n + 1, &w) == 0)
            n++;
    jw_arr_end(&w);
    if (!req->error && is_dir(req->out_dir))
        remove_stale(req->out_dir, n);
    jw_kint(&w, "packaged", n);
    if (err)
        jw_kstr(&w, "error", err);
    jw_obj_end(&w);
    free(err);
    return buf_steal(&b);
}
