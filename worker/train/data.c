/*
 * data: training windows from ids, text or chat JSONL, in a seeded, resumable order (data.h).
 */
#include "worker/train/data.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/tokdata.h"

uint64_t tdata_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Appends the ids of text[0..len) to the stream with mask value m. */
static int push_text(struct tdata *d, size_t *cap, const struct tok *t, const char *text,
                     size_t len, uint8_t m, char *msg, size_t msglen)
{
    int32_t *ids = NULL;
    int n = len ? tok_encode(t, text, len, &ids, msg, msglen) : 0;
    if (n < 0)
        return -1;
    if (n == 0) {
        free(ids);
        return 0;
    }
    if (d->n + (size_t)n > *cap) {
        *cap = (d->n + (size_t)n) * 2 + 1024;
        d->ids = xrealloc(d->ids, *cap * sizeof(int32_t));
        d->mask = xrealloc(d->mask, *cap);
    }
    memcpy(d->ids + d->n, ids, (size_t)n * sizeof(int32_t));
    memset(d->mask + d->n, m, (size_t)n);
    d->n += (size_t)n;
    free(ids);
    return 0;
}

/*
 * Chat JSONL: each conversation is rendered turn by turn. With R(k, gen) the template applied
 * to the first k messages, the segment of message k is R(k+1) minus its prefix R(k) (for an
 * assistant message, minus R(k, add_generation_prompt) instead: the generation prompt is
 * context, not target). Each segment is tokenized on its own; an assistant segment's tokens
 * are targets. A template whose renderings are not prefixes of each other is an error.
 */
static int load_chat(struct tdata *d, const char *path, const char *model_dir, char **err)
{
    struct chat_template ct = { 0 };
    struct tok *t = NULL;
    char msg[512], *text = NULL, *e = NULL;
    size_t cap = 0, len = 0;
    int rc = -1, lineno = 0;
    if (chat_template_load(model_dir, &ct, &e) < 0) {
        *err = xasprintf("chat data '%s' needs the model's chat template: %s", path, e);
        free(e);
        return -1;
    }
    if (!(t = tokdata_tok_load(model_dir, err)))
        goto out;
    if (file_read_all(path, &text, &len) < 0) {
        *err = xasprintf("cannot read '%s'", path);
        goto out;
    }
    for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        lineno++;
        if (!line[strspn(line, " \t\r")])
            continue;
        cJSON *o = cJSON_Parse(line), *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
        int nm = cJSON_IsArray(msgs) ? cJSON_GetArraySize(msgs) : 0;
        if (nm < 1) {
            *err = xasprintf("%s:%d: a line must be {\"messages\": [...]} with one message or more",
                             path, lineno);
            cJSON_Delete(o);
            goto out;
        }
        struct buf prev;
        buf_init(&prev);
        int bad = 0;
        for (int k = 0; k < nm && !bad; k++) {
            cJSON *role = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(msgs, k), "role");
            int asst = cJSON_IsString(role) && !strcmp(role->valuestring, "assistant");
            struct buf ctxb, full;
            buf_init(&ctxb);
            buf_init(&full);
            cJSON *head = cJSON_CreateArray();
            for (int j = 0; j <= k; j++)
                cJSON_AddItemToArray(head, cJSON_Duplicate(cJSON_GetArrayItem(msgs, j), 1));
            char *all = cJSON_PrintUnformatted(head);
            cJSON_DeleteItemFromArray(head, k);
            char *before = cJSON_PrintUnformatted(head);
            struct chat_input in_full = { all, NULL, NULL, NULL, false };
            struct chat_input in_ctx = { before, NULL, NULL, NULL, true };
            if (chat_render(&ct, &in_full, &full, &e) < 0 ||
                (asst && chat_render(&ct, &in_ctx, &ctxb, &e) < 0)) {
                *err = xasprintf("%s:%d: %s", path, lineno, e);
                free(e);
                e = NULL;
                bad = 1;
            } else {
                const char *f = buf_cstr(&full);
                size_t pl = prev.len, cl = asst ? ctxb.len : pl;
                if (cl < pl || strncmp(f, buf_cstr(&prev), pl) ||
                    (asst && strncmp(f, buf_cstr(&ctxb), cl))) {
                    *err = xasprintf("%s:%d: the chat template's rendering of message %d does not "
                                     "extend that of the messages before it",
                                     path, lineno, k + 1);
                    bad = 1;
                } else if (push_text(d, &cap, t, f + pl, cl - pl, 0, msg, sizeof(msg)) < 0 ||
                           push_text(d, &cap, t, f + cl, full.len - cl, (uint8_t)asst, msg,
                                     sizeof(msg)) < 0) {
                    *err = xasprintf("%s:%d: %s", path, lineno, msg);
                    bad = 1;
                }
                prev.len = 0;
                buf_append(&prev, f, full.len);
            }
            cJSON_free(all);
            cJSON_free(before);
            cJSON_Delete(head);
            buf_release(&ctxb);
            buf_release(&full);
        }
        buf_release(&prev);
        cJSON_Delete(o);
        if (bad)
            goto out;
    }
    rc = 0;
out:
    free(text);
    if (t)
        tok_free(t);
    chat_template_release(&ct);
    return rc;
}

int tdata_open(struct tdata *d, const char *path, const char *model_dir, int vocab, int seq_len,
               double val_fraction, uint64_t seed, char **err)
{
    memset(d, 0, sizeof(*d));
    d->epoch = -1;
    d->seq_len = seq_len;
    d->seed = seed;
    if (seq_len < 2) {
        *err = xasprintf("seq_len must be 2 or more, got %d", seq_len);
        return -1;
    }
    if (ends_with(path, ".jsonl")) {
        if (load_chat(d, path, model_dir, err) < 0)
            goto fail;
        int64_t bad = tokdata_ids_check(d->ids, d->n, vocab);
        if (bad >= 0) {
            *err = xasprintf("'%s': token %d at %lld is outside the vocabulary of %d", path,
                             d->ids[bad], (long long)bad, vocab);
            goto fail;
        }
    } else {
        int ids = ends_with(path, ".ids.u32") || ends_with(path, ".u32");
        if (tokdata_load(ids ? path : NULL, ids ? NULL : path, model_dir, vocab, &d->ids, &d->n,
                         err) < 0)
            goto fail;
    }
    size_t nw = d->n / (size_t)seq_len;
    if (nw > INT32_MAX)
        nw = INT32_MAX;
    if (nw < 1) {
        *err = xasprintf("'%s' has %zu tokens, fewer than one window of seq_len %d", path, d->n,
                         seq_len);
        goto fail;
    }
    d->n_val = val_fraction > 0 && nw >= 2 ? (int)(val_fraction * (double)nw) : 0;
    if (val_fraction > 0 && nw >= 2 && d->n_val < 1)
        d->n_val = 1;
    d->n_win = (int)nw - d->n_val;
    d->order = xmalloc(sizeof(uint32_t) * (size_t)d->n_win);
    if (d->mask) {
        /* A window whose targets are all masked out teaches nothing but is kept: the order
         * must not depend on the mask. Check that some target counts at all. */
        size_t any = 0;
        for (size_t i = 0; i < d->n && !any; i++)
            any = d->mask[i];
        if (!any) {
            *err = xasprintf("'%s' has no assistant turn to train on", path);
            goto fail;
        }
    }
    return 0;
fail:
    tdata_release(d);
    return -1;
}

void tdata_release(struct tdata *d)
{
    free(d->ids);
    free(d->mask);
    free(d->order);
    memset(d, 0, sizeof(*d));
}

static void draw_epoch(struct tdata *d, long epoch)
{
    uint64_t s = d->seed * 0x100000001B3ULL + (uint64_t)epoch;
    for (int i = 0; i < d->n_win; i++)
        d->order[i] = (uint32_t)i;
    for (int i = d->n_win - 1; i > 0; i--) {
        int j = (int)(tdata_rand(&s) % (uint64_t)(i + 1));
        uint32_t x = d->order[i];
        d->order[i] = d->order[j];
        d->order[j] = x;
    }
    d->epoch = epoch;
}

int tdata_window_at(struct tdata *d, long pos)
{
    long e = pos / d->n_win;
    if (e != d->epoch)
        draw_epoch(d, e);
    return (int)d->order[pos % d->n_win];
}

const int32_t *tdata_next(struct tdata *d, const uint8_t **mask)
{
    int w = tdata_window_at(d, d->pos++);
    size_t off = (size_t)w * (size_t)d->seq_len;
    if (mask)
        *mask = d->mask ? d->mask + off : NULL;
    return d->ids + off;
}

void tdata_seek(struct tdata *d, long pos)
{
    d->pos = pos;
}

const int32_t *tdata_val(const struct tdata *d, int i, const uint8_t **mask)
{
    size_t off = (size_t)(d->n_win + i) * (size_t)d->seq_len;
    if (mask)
        *mask = d->mask ? d->mask + off : NULL;
    return d->ids + off;
}
