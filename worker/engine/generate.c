/*
 * generate: greedy decoding over a batch of prompts (generate.h).
 */
#include "worker/engine/generate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

struct seq {
    struct model_kv *kv;
    int32_t next; /* the token the next decode step feeds */
    int running;
};

static int32_t argmax_low(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static int is_eos(const struct gen_opts *o, int32_t t)
{
    for (int i = 0; i < o->n_eos; i++)
        if (o->eos[i] == t)
            return 1;
    return 0;
}

/* The earliest occurrence of any stop string in text, or NULL. */
static const char *find_stop(const struct gen_opts *o, const char *text)
{
    const char *best = NULL;
    for (int i = 0; i < o->n_stop; i++) {
        const char *p = o->stop[i][0] ? strstr(text, o->stop[i]) : NULL;
        if (p && (!best || p < best))
            best = p;
    }
    return best;
}

/* Appends t to r; returns 1 when the sequence stops here. */
static int push(const struct gen_opts *o, struct gen_result *r, int32_t t)
{
    r->ids[r->n++] = t;
    if (is_eos(o, t)) {
        r->why = GEN_STOP_EOS;
        return 1;
    }
    if (o->n_stop > 0 && o->tok) {
        char *text = tok_decode(o->tok, r->ids, (size_t)r->n);
        int hit = find_stop(o, text) != NULL;
        free(text);
        if (hit) {
            r->why = GEN_STOP_STRING;
            return 1;
        }
    }
    if (r->n >= o->max_new_tokens) {
        r->why = GEN_STOP_LENGTH;
        return 1;
    }
    return 0;
}

int gen_greedy(struct model *m, const int32_t *const *prompts, const int *n_prompt, int B,
               const struct gen_opts *o, struct gen_result *res, char **err)
{
    const int V = m->cfg.vocab_size, N = o->max_new_tokens;
    struct seq *s;
    float *logits;
    int rc = 0, running = 0;

    for (int b = 0; b < B; b++)
        memset(&res[b], 0, sizeof(res[b]));
    if (N < 0) {
        err_setf(err, "generate: max_new_tokens must be >= 0, got %d", N);
        return -EINVAL;
    }
    for (int b = 0; b < B; b++) {
        if (n_prompt[b] < 1) {
            err_setf(err, "generate: prompt %d is empty", b);
            return -EINVAL;
        }
        if ((int64_t)n_prompt[b] + N > m->cfg.max_position_embeddings) {
            err_setf(err,
                     "generate: prompt %d has %d tokens; with %d new tokens that exceeds the "
                     "model's max_position_embeddings (%d)",
                     b, n_prompt[b], N, m->cfg.max_position_embeddings);
            return -EINVAL;
        }
        for (int i = 0; i < n_prompt[b]; i++)
            if (prompts[b][i] < 0 || prompts[b][i] >= V) {
                err_setf(err,
                         "generate: prompt %d: token id %d at position %d is outside the "
                         "vocabulary [0, %d)",
                         b, (int)prompts[b][i], i, V);
                return -EINVAL;
            }
    }
    s = xcalloc((size_t)(B > 0 ? B : 1), sizeof(*s));
    logits = xmalloc(sizeof(float) * (size_t)V);
    for (int b = 0; b < B; b++)
        res[b].ids = xmalloc(sizeof(int32_t) * (size_t)(N > 0 ? N : 1));
    /* Prefill: every prompt in its own cache, its first new token from the last logits. */
    for (int b = 0; b < B && rc == 0 && N > 0; b++) {
        s[b].kv = model_kv_new(m, n_prompt[b] + N);
        rc = model_forward(m, prompts[b], n_prompt[b], s[b].kv, MODEL_LOGITS_LAST, logits, NULL,
                           err);
        if (rc)
            break;
        s[b].next = argmax_low(logits, V);
        s[b].running = !push(o, &res[b], s[b].next);
        running += s[b].running;
    }
    for (int step = 1; rc == 0 && running > 0; step++) {
        for (int b = 0; b < B && rc == 0; b++) {
            if (!s[b].running)
                continue;
            rc = model_forward(m, &s[b].next, 1, s[b].kv, MODEL_LOGITS_LAST, logits, NULL, err);
            if (rc)
                break;
            s[b].next = argmax_low(logits, V);
            if (push(o, &res[b], s[b].next)) {
                s[b].running = 0;
                running--;
            }
        }
        if (rc == 0 && o->step && (rc = o->step(o->arg, step, running)) > 0)
            break;
    }
    if (rc == 0 && o->tok)
        for (int b = 0; b < B; b++) {
            size_t len;
            res[b].text = tok_decode_n(o->tok, res[b].ids, (size_t)res[b].n, &len);
            const char *p = find_stop(o, res[b].text);
            if (p)
                res[b].text[p - res[b].text] = '\0';
        }
    for (int b = 0; b < B; b++)
        model_kv_free(s[b].kv);
    free(s);
    free(logits);
    return rc;
}

void gen_result_release(struct gen_result *r)
{
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof(*r));
}

/* eos_token_id of dir/file: 1 when the file exists (ids set when it names any), 0 when there
 * is no such file, -1 when it is bad. */
static int eos_from(const char *dir, const char *file, int32_t **ids, int *n, char **err)
{
    char *path = xasprintf("%s/%s", dir, file), *text = NULL;
    size_t len;
    int rc = 0;
    if (file_read_all(path, &text, &len) != 0) {
        free(path);
        return 0;
    }
    cJSON *root = cJSON_ParseWithLength(text, len), *v;
    if (!root || !cJSON_IsObject(root)) {
        err_setf(err, "generate: '%s' is not a JSON object", path);
        rc = -1;
        goto out;
    }
    rc = 1;
    v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!v || cJSON_IsNull(v))
        goto out;
    int cnt = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    *ids = xmalloc(sizeof(int32_t) * (size_t)(cnt > 0 ? cnt : 1));
    *n = 0;
    for (int i = 0; i < cnt; i++) {
        const cJSON *e = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, i) : v;
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX ||
            e->valuedouble != (double)(int32_t)e->valuedouble) {
            err_setf(err, "generate: '%s': eos_token_id must be an id or a list of ids", path);
            free(*ids);
            *ids = NULL;
            *n = 0;
            rc = -1;
            goto out;
        }
        (*ids)[(*n)++] = (int32_t)e->valuedouble;
    }
    rc = 1;
out:
    cJSON_Delete(root);
    free(text);
    free(path);
    return rc;
}

int gen_eos_load(const char *dir, int32_t **ids, int *n, char **err)
{
    int rc;
    *ids = NULL;
    *n = 0;
    rc = eos_from(dir, "generation_config.json", ids, n, err);
    if (rc == 0)
        rc = eos_from(dir, "config.json", ids, n, err);
    return rc < 0 ? -EINVAL : 0;
}

int gen_chat_wrap(const struct chat_template *ct, const char *text, struct buf *out, char **err)
{
    cJSON *msgs = cJSON_CreateArray(), *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddStringToObject(msg, "content", text);
    cJSON_AddItemToArray(msgs, msg);
    char *json = cJSON_PrintUnformatted(msgs);
    cJSON_Delete(msgs);
    if (!json) {
        err_setf(err, "generate: out of memory");
        return -ENOMEM;
    }
    struct chat_input in = { 0 };
    in.messages_json = json;
    in.add_generation_prompt = true;
    int rc = chat_render(ct, &in, out, err);
    free(json);
    return rc ? -EINVAL : 0;
}
