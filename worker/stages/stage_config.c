/*
 * stage_config: the `config` stage: the input model with config.json fields set or removed.
 *
 * Spec: a JSON object; each key is a config.json field (a dotted key edits a nested field,
 * e.g. "rope_scaling.factor"), each value its new JSON value, null removes the field. The
 * edited config is re-validated with the engine's parser (a change that makes the model
 * unloadable, such as a layer_types list of the wrong length, fails the stage). The other
 * files are hard-linked when the input is an artifact of the same home (artifacts are never
 * modified in place) and copied otherwise.
 */
#include "worker/stages/stage.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/engine/config.h"

/* Whether dir lies under the artifacts directory that holds stage_dir. */
static bool is_artifact(const char *dir, const char *stage_dir)
{
    char *art = path_dirname(stage_dir);
    size_t n = strlen(art);
    bool r = !strncmp(dir, art, n) && dir[n] == '/';
    free(art);
    return r;
}

static int copy_tree(const char *src, const char *dst, bool link_ok, char *err, size_t errlen)
{
    DIR *d = opendir(src);
    struct dirent *de;
    int rc = 0;
    if (!d) {
        snprintf(err, errlen, "cannot read model dir '%s': %s", src, strerror(errno));
        return -1;
    }
    while (rc == 0 && (de = readdir(d))) {
        char *s, *t;
        struct stat st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strcmp(de->d_name, "config.json"))
            continue;
        s = path_join(src, de->d_name);
        t = path_join(dst, de->d_name);
        if (stat(s, &st) < 0) {
            rc = -errno;
        } else if (S_ISDIR(st.st_mode)) {
            rc = mkdir_p(t, 0755);
            if (rc == 0)
                rc = copy_tree(s, t, link_ok, err, errlen) < 0 ? -EIO : 0;
        } else if (S_ISREG(st.st_mode)) {
            if (!link_ok || link(s, t) < 0)
                rc = file_copy(s, t);
        }
        if (rc < 0 && !err[0])
            snprintf(err, errlen, "cannot copy '%s' to '%s': %s", s, t, strerror(-rc));
        free(s);
        free(t);
    }
    closedir(d);
    return rc < 0 ? -1 : 0;
}

int stage_config_run(struct stage_ctx *ctx)
{
    struct config cfg;
    cJSON *spec, *it;
    char *path, *cerr = NULL, msg[1024] = "";
    int rc = STAGE_ERR_ERROR, n = 0;

    if (!ctx->output_dir)
        return stage_fail(ctx, STAGE_ERR_ERROR, "config stage needs an output model dir");
    spec = cJSON_Parse(ctx->spec_json);
    if (!cJSON_IsObject(spec) || !spec->child) {
        cJSON_Delete(spec);
        return stage_fail(ctx, STAGE_ERR_ERROR,
                          "config stage spec must be a non-empty object of config fields");
    }
    path = path_join(ctx->input_dir, "config.json");
    if (config_load(&cfg, path, &cerr) < 0) {
        stage_fail(ctx, STAGE_ERR_ERROR, "%s", cerr ? cerr : "cannot read config.json");
        free(cerr);
        free(path);
        cJSON_Delete(spec);
        return STAGE_ERR_ERROR;
    }
    free(path);
    cJSON_ArrayForEach(it, spec)
    {
        int e;
        if (cJSON_IsNull(it)) {
            e = config_delete(&cfg, it->string);
            if (e == -ENOENT)
                e = 0;
            stage_log(ctx, "config: remove %s", it->string);
        } else {
            char *v = cJSON_PrintUnformatted(it);
            e = config_set_json(&cfg, it->string, v);
            stage_log(ctx, "config: %s = %s", it->string, v);
            cJSON_free(v);
        }
        if (e < 0) {
            snprintf(msg, sizeof(msg), "cannot set config field '%s' (bad key path)", it->string);
            goto out;
        }
        n++;
    }
    if (config_reparse(&cfg, &cerr) < 0) {
        snprintf(msg, sizeof(msg), "the edited config.json is not a valid EXAONE-4 config: %s",
                 cerr ? cerr : "?");
        goto out;
    }
    if (copy_tree(ctx->input_dir, ctx->output_dir, is_artifact(ctx->input_dir, ctx->stage_dir), msg,
                  sizeof(msg)) < 0)
        goto out;
    path = path_join(ctx->output_dir, "config.json");
    if (config_write(&cfg, path, &cerr) < 0) {
        snprintf(msg, sizeof(msg), "cannot write '%s': %s", path, cerr ? cerr : "?");
        free(path);
        goto out;
    }
    free(path);
    stage_metric(ctx, "config_fields_changed", n);
    rc = STAGE_OK;
out:
    if (rc != STAGE_OK)
        stage_fail(ctx, STAGE_ERR_ERROR, "%s", msg);
    free(cerr);
    config_release(&cfg);
    cJSON_Delete(spec);
    return rc;
}
