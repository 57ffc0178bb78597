/*
 * tokdata: token data of the stages (see tokdata.h).
 */
#include "worker/engine/tokdata.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* ---- token data -------------------------------------------------------------------------- */

int tokdata_ids_read(const char *path, int32_t **ids, size_t *n, char **err)
{
    char *data = NULL;
    size_t len = 0;
    int rc;
    *ids = NULL;
    *n = 0;
    rc = file_read_all(path, &data, &len);
    if (rc < 0) {
        err_setf(err, "cannot read ids file '%s': %s", path, strerror(-rc));
        return rc;
    }
    if (len % 4 != 0) {
        err_setf(err,
                 "ids file '%s' has %zu bytes, not a multiple of 4 (expected little-endian uint32 "
                 "token ids)",
                 path, len);
        free(data);
        return -EINVAL;
    }
    *n = len / 4;
    if (*n > 0)
        *ids = xmalloc(*n * sizeof(int32_t));
    for (size_t i = 0; i < *n; i++) {
        const unsigned char *p = (const unsigned char *)data + 4 * i;
        uint32_t v =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if (v > INT32_MAX) {
            err_setf(err, "ids file '%s': id %u at position %zu is not a token id", path, v, i);
            free(*ids);
            *ids = NULL;
            *n = 0;
            free(data);
            return -EINVAL;
        }
        (*ids)[i] = (int32_t)v;
    }
    free(data);
    return 0;
}

struct tok *tokdata_tok_load(const char *model_dir, char **err)
{
    char *path = path_join(model_dir, "tokenizer.json");
    struct tok *t = NULL;
    char *msg = NULL;
    if (!is_file(path)) {
        err_setf(err, "model dir '%s' has no tokenizer.json (needed to tokenize text)", model_dir);
        goto out;
    }
    t = tok_load(path, &msg);
    if (!t)
        err_setf(err, "cannot load tokenizer '%s': %s", path, msg);
    free(msg);
out:
    free(path);
    return t;
}

int tokdata_text_read(const char *path, const struct tok *t, int32_t **ids, size_t *n, char **err)
{
    char *data = NULL, msg[512] = "";
    size_t len = 0;
    int rc = file_read_all(path, &data, &len), cnt;
    *ids = NULL;
    *n = 0;
    if (rc < 0) {
        err_setf(err, "cannot read text file '%s': %s", path, strerror(-rc));
        return rc;
    }
    cnt = tok_encode(t, data, len, ids, msg, sizeof(msg));
    free(data);
    if (cnt < 0) {
        err_setf(err, "cannot tokenize '%s': %s", path, msg);
        *ids = NULL;
        return -EINVAL;
    }
    *n = (size_t)cnt;
    return 0;
}

int64_t tokdata_ids_check(const int32_t *ids, size_t n, int vocab)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return (int64_t)i;
    return -1;
}

int tokdata_load(const char *ids_path, const char *text_path, const char *model_dir, int vocab,
                 int32_t **ids, size_t *n, char **err)
{
    int rc;
    *ids = NULL;
    *n = 0;
    if (!ids_path == !text_path) {
        err_setf(err, "give exactly one of 'ids' and 'text'");
        return -EINVAL;
    }
    if (ids_path) {
        rc = tokdata_ids_read(ids_path, ids, n, err);
    } else {
        struct tok *t = tokdata_tok_load(model_dir, err);
        if (!t)
            return -ENOENT;
        rc = tokdata_text_read(text_path, t, ids, n, err);
        tok_free(t);
    }
    if (rc < 0)
        return rc;
    if (vocab > 0) {
        int64_t bad = tokdata_ids_check(*ids, *n, vocab);
        if (bad >= 0) {
            err_setf(err,
                     "'%s': token id %d at position %lld is outside the model's vocabulary (size "
                     "%d)",
                     ids_path ? ids_path : text_path, (*ids)[bad], (long long)bad, vocab);
            free(*ids);
            *ids = NULL;
            *n = 0;
            return -EINVAL;
        }
    }
    return 0;
}
