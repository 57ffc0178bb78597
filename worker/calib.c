/*
 * calib: calibration windows from a stage spec. See calib.h.
 */
#include "worker/calib.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/tokenizer.h"

int calib_read_ids(const char *path, int32_t **ids, int64_t *n, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len = 0;
    int rc = file_read_all(path, &data, &len);
    *ids = NULL;
    *n = 0;
    if (rc < 0) {
        snprintf(err, errlen, "cannot read ids file '%s': %s", path, strerror(-rc));
        return -1;
    }
    if (len % 4) {
        snprintf(err, errlen, "ids file '%s' has %zu bytes, not a multiple of 4 (uint32 ids)", path,
                 len);
        free(data);
        return -1;
    }
    *n = (int64_t)(len / 4);
    *ids = xmalloc(len + 4);
    for (size_t i = 0; i < len / 4; i++) {
        const unsigned char *p = (const unsigned char *)data + 4 * i;
        uint32_t v =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if (v > INT32_MAX) {
            snprintf(err, errlen, "ids file '%s': id %u at position %zu is out of range", path, v,
                     i);
            free(data);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        (*ids)[i] = (int32_t)v;
    }
    free(data);
    return 0;
}

static int read_text_ids(const char *path, const char *model_dir, int32_t **ids, int64_t *n,
                         char *err, size_t errlen)
{
    char *tp = path_join(model_dir, "tokenizer.json"), *text = NULL, terr[512];
    struct tok *t = NULL;
    size_t len = 0;
    int rc = -1, cnt;
    if (!is_file(tp)) {
        snprintf(err, errlen,
                 "calibration text needs the model's tokenizer.json, but '%s' has none (use "
                 "'ids:' with pre-tokenized ids instead)",
                 model_dir);
        goto out;
    }
    t = tok_load(tp, terr, sizeof(terr));
    if (!t) {
        snprintf(err, errlen, "cannot load '%s': %s", tp, terr);
        goto out;
    }
    if (file_read_all(path, &text, &len) < 0) {
        snprintf(err, errlen, "cannot read calibration text '%s': %s", path, strerror(errno));
        goto out;
    }
    cnt = tok_encode(t, text, len, ids, terr, sizeof(terr));
    if (cnt < 0) {
        snprintf(err, errlen, "cannot tokenize '%s': %s", path, terr);
        goto out;
    }
    *n = cnt;
    rc = 0;
out:
    tok_free(t);
    free(text);
    free(tp);
    return rc;
}

int calib_load(struct calib *c, const char *spec_json, const char *model_dir, int vocab, char *err,
               size_t errlen)
{
    cJSON *spec = cJSON_Parse(spec_json), *cal, *src, *s, *l;
    int32_t *all = NULL;
    int64_t n = 0;
    int rc = -1, samples, L;
    memset(c, 0, sizeof(*c));
    cal = spec ? cJSON_GetObjectItemCaseSensitive(spec, "calibration") : NULL;
    if (!cJSON_IsObject(cal)) {
        snprintf(err, errlen, "the stage spec has no 'calibration' block");
        goto out;
    }
    s = cJSON_GetObjectItemCaseSensitive(cal, "samples");
    l = cJSON_GetObjectItemCaseSensitive(cal, "seq_len");
    samples = cJSON_IsNumber(s) ? (int)s->valuedouble : 128;
    L = cJSON_IsNumber(l) ? (int)l->valuedouble : 512;
    if (samples < 1 || L < 2 || samples > 1 << 20 || L > 1 << 20) {
        snprintf(err, errlen, "calibration needs samples >= 1 and seq_len >= 2");
        goto out;
    }
    if ((src = cJSON_GetObjectItemCaseSensitive(cal, "ids")) && cJSON_IsString(src)) {
        if (calib_read_ids(src->valuestring, &all, &n, err, errlen) < 0)
            goto out;
    } else if ((src = cJSON_GetObjectItemCaseSensitive(cal, "text")) && cJSON_IsString(src)) {
        if (read_text_ids(src->valuestring, model_dir, &all, &n, err, errlen) < 0)
            goto out;
    } else {
        snprintf(err, errlen, "calibration needs 'ids' or 'text'");
        goto out;
    }
    c->requested = samples;
    c->seq_len = L;
    c->n = (int)EXAQ_MIN((int64_t)samples, n / L);
    if (c->n < 1) {
        snprintf(err, errlen, "calibration data '%s' has %lld tokens, fewer than one window of %d",
                 src->valuestring, (long long)n, L);
        goto out;
    }
    for (int64_t i = 0; i < (int64_t)c->n * L; i++) {
        if (all[i] < 0 || (vocab > 0 && all[i] >= vocab)) {
            snprintf(err, errlen, "calibration token %lld has id %d, outside the vocabulary (%d)",
                     (long long)i, all[i], vocab);
            goto out;
        }
    }
    c->ids = all;
    all = NULL;
    rc = 0;
out:
    if (rc < 0)
        memset(c, 0, sizeof(*c));
    free(all);
    cJSON_Delete(spec);
    return rc;
}

void calib_release(struct calib *c)
{
    free(c->ids);
    memset(c, 0, sizeof(*c));
}
