/*
 * calib: calibration windows from a stage spec. See calib.h.
 */
#include "worker/engine/calib.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/tokdata.h"

int calib_read_ids(const char *path, int32_t **ids, int64_t *n, char **err)
{
    size_t len = 0;
    int rc = tokdata_ids_read(path, ids, &len, err);
    *n = rc < 0 ? 0 : (int64_t)len;
    return rc < 0 ? -1 : 0;
}

int calib_load(struct calib *c, const char *spec_json, const char *model_dir, int vocab, char **err)
{
    cJSON *spec = cJSON_Parse(spec_json), *cal, *s, *l;
    const cJSON *src;
    int32_t *all = NULL;
    int64_t n = 0;
    int rc = -1, samples, L;
    memset(c, 0, sizeof(*c));
    cal = spec ? cJSON_GetObjectItemCaseSensitive(spec, "calibration") : NULL;
    if (!cJSON_IsObject(cal)) {
        err_setf(err, "the stage spec has no 'calibration' block");
        goto out;
    }
    s = cJSON_GetObjectItemCaseSensitive(cal, "samples");
    l = cJSON_GetObjectItemCaseSensitive(cal, "seq_len");
    samples = cJSON_IsNumber(s) ? (int)s->valuedouble : 128;
    L = cJSON_IsNumber(l) ? (int)l->valuedouble : 512;
    if (samples < 1 || L < 2 || samples > 1 << 20 || L > 1 << 20) {
        err_setf(err, "calibration needs samples >= 1 and seq_len >= 2");
        goto out;
    }
    {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cal, "ids");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(cal, "text");
        size_t len = 0;
        src = cJSON_IsString(ids) ? ids : text;
        if (!cJSON_IsString(src)) {
            err_setf(err, "calibration needs 'ids' or 'text'");
            goto out;
        }
        if (tokdata_load(cJSON_IsString(ids) ? ids->valuestring : NULL,
                         cJSON_IsString(ids) ? NULL : text->valuestring, model_dir, 0, &all, &len,
                         err) < 0)
            goto out;
        n = (int64_t)len;
    }
    c->requested = samples;
    c->seq_len = L;
    c->n = (int)EXAQ_MIN((int64_t)samples, n / L);
    if (c->n < 1) {
        err_setf(err, "calibration data '%s' has %lld tokens, fewer than one window of %d",
                 src->valuestring, (long long)n, L);
        goto out;
    }
    for (int64_t i = 0; i < (int64_t)c->n * L; i++) {
        if (all[i] < 0 || (vocab > 0 && all[i] >= vocab)) {
            err_setf(err, "calibration token %lld has id %d, outside the vocabulary (%d)",
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
