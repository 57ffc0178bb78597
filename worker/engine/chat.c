/*
 * chat: finds a model's chat template and renders conversations with it (see chat.h). The
 * Jinja work is jinja.c's; this file owns the transformers rules around it: where templates
 * come from, which one is used, which variables the template sees and how the messages are
 * normalised first.
 */
#include "worker/engine/chat.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "worker/engine/jinja.h"

const char *const chat_special_names[CHAT_NSPECIAL] = { "bos_token", "eos_token", "unk_token",
                                                        "sep_token", "pad_token", "cls_token",
                                                        "mask_token" };

static void ct_add(struct chat_template *ct, const char *name, const char *text)
{
    for (size_t i = 0; i < ct->n; i++)
        if (!strcmp(ct->names[i], name)) {
            free(ct->texts[i]);
            ct->texts[i] = xstrdup(text);
            return;
        }
    ct->names = xrealloc(ct->names, (ct->n + 1) * sizeof(*ct->names));
    ct->texts = xrealloc(ct->texts, (ct->n + 1) * sizeof(*ct->texts));
    ct->names[ct->n] = xstrdup(name);
    ct->texts[ct->n] = xstrdup(text);
    ct->n++;
}

static cJSON *read_json(const char *path, char **err)
{
    char *text = NULL;
    size_t len = 0;
    if (file_read_all(path, &text, &len) != 0) {
        err_setf(err, "cannot read '%s'", path);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j)
        err_setf(err, "'%s' is not valid JSON", path);
    return j;
}

/* A special token: a string, or an AddedToken object with "content". */
static char *token_text(const cJSON *v)
{
    if (cJSON_IsString(v))
        return xstrdup(v->valuestring);
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c))
            return xstrdup(c->valuestring);
    }
    return NULL;
}

static int load_specials(const char *dir, const cJSON *cfg, struct chat_template *ct, char **err)
{
    for (int i = 0; i < CHAT_NSPECIAL; i++)
        if (cfg)
            ct->special[i] =
                token_text(cJSON_GetObjectItemCaseSensitive(cfg, chat_special_names[i]));
    char *p = path_join(dir, "special_tokens_map.json");
    if (is_file(p)) {
        cJSON *m = read_json(p, err);
        if (!m) {
            free(p);
            return -1;
        }
        for (int i = 0; i < CHAT_NSPECIAL; i++)
            if (!ct->special[i])
                ct->special[i] =
                    token_text(cJSON_GetObjectItemCaseSensitive(m, chat_special_names[i]));
        cJSON_Delete(m);
    }
    free(p);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int load_jinja_files(const char *dir, struct chat_template *ct, char **err)
{
    char *p = path_join(dir, "chat_template.jinja");
    if (is_file(p)) {
        char *text = NULL;
        size_t len;
        if (file_read_all(p, &text, &len) != 0) {
            err_setf(err, "cannot read '%s'", p);
            free(p);
            return -1;
        }
        ct_add(ct, "default", text);
        free(text);
        ct->source = xstrdup(p);
    }
    free(p);
    char *d = path_join(dir, "additional_chat_templates");
    DIR *dh = opendir(d);
    if (dh) {
        char **names = NULL;
        size_t n = 0;
        struct dirent *e;
        while ((e = readdir(dh))) {
            size_t l = strlen(e->d_name);
            if (l > 6 && !strcmp(e->d_name + l - 6, ".jinja")) {
                names = xrealloc(names, (n + 1) * sizeof(*names));
                names[n++] = xstrdup(e->d_name);
            }
        }
        closedir(dh);
        qsort(names, n, sizeof(*names), cmp_str);
        for (size_t i = 0; i < n; i++) {
            char *f = path_join(d, names[i]), *text = NULL;
            size_t len;
            if (file_read_all(f, &text, &len) != 0) {
                err_setf(err, "cannot read '%s'", f);
                free(f);
                for (size_t k = i; k < n; k++)
                    free(names[k]);
                free(names);
                free(d);
                return -1;
            }
            names[i][strlen(names[i]) - 6] = 0;
            ct_add(ct, names[i], text);
            ct->named = true;
            if (!ct->source)
                ct->source = xstrdup(f);
            free(text);
            free(f);
            free(names[i]);
        }
        free(names);
    }
    free(d);
    return 0;
}

int chat_template_load(const char *dir, struct chat_template *ct, char **err)
{
    memset(ct, 0, sizeof(*ct));
    if (!is_dir(dir)) {
        err_setf(err, "model directory '%s' does not exist", dir);
        return -1;
    }
    cJSON *cfg = NULL;
    char *cp = path_join(dir, "tokenizer_config.json");
    if (is_file(cp) && !(cfg = read_json(cp, err))) {
        free(cp);
        return -1;
    }
    if (load_jinja_files(dir, ct, err) != 0)
        goto fail;
    if (ct->n == 0 && cfg) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(t))
            ct_add(ct, "default", t->valuestring);
        else if (cJSON_IsArray(t)) {
            const cJSON *e;
            cJSON_ArrayForEach(e, t)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (!cJSON_IsString(nm) || !cJSON_IsString(tx)) {
                    err_setf(err,
                             "'%s': chat_template list entries need string \"name\" and "
                             "\"template\"",
                             cp);
                    goto fail;
                }
                ct_add(ct, nm->valuestring, tx->valuestring);
            }
            ct->named = true;
        } else if (t && !cJSON_IsNull(t)) {
            err_setf(err, "'%s': chat_template must be a string or a list of named templates", cp);
            goto fail;
        }
        if (ct->n)
            ct->source = xstrdup(cp);
    }
    if (ct->n == 0) {
        err_setf(err,
                 "model '%s' has no chat template (no chat_template.jinja and no chat_template "
                 "in tokenizer_config.json)",
                 dir);
        goto fail;
    }
    if (ct->n == 1 && !strcmp(ct->names[0], "default"))
        ct->named = false;
    if (load_specials(dir, cfg, ct, err) != 0)
        goto fail;
    cJSON_Delete(cfg);
    free(cp);
    return 0;
fail:
    cJSON_Delete(cfg);
    free(cp);
    chat_template_release(ct);
    return -1;
}

void chat_template_release(struct chat_template *ct)
{
    for (size_t i = 0; i < ct->n; i++) {
        free(ct->names[i]);
        free(ct->texts[i]);
    }
    free(ct->names);
    free(ct->texts);
    for (int i = 0; i < CHAT_NSPECIAL; i++)
        free(ct->special[i]);
    free(ct->source);
    memset(ct, 0, sizeof(*ct));
}

static const char *find_named(const struct chat_template *ct, const char *name)
{
    for (size_t i = 0; i < ct->n; i++)
        if (!strcmp(ct->names[i], name))
            return ct->texts[i];
    return NULL;
}

const char *chat_template_pick(const struct chat_template *ct, const char *name, bool has_tools,
                               char **err)
{
    const char *t;
    if (name) {
        if ((t = find_named(ct, name)))
            return t;
        err_setf(err, "the model has no chat template named '%s'", name);
        return NULL;
    }
    if (!ct->named)
        return ct->texts[0];
    if (has_tools && (t = find_named(ct, "tool_use")))
        return t;
    if ((t = find_named(ct, "default")))
        return t;
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < ct->n; i++)
        buf_printf(&b, "%s'%s'", i ? ", " : "", ct->names[i]);
    err_setf(err, "the model has several chat templates and none is named 'default': %s",
             buf_cstr(&b));
    buf_release(&b);
    return NULL;
}

/* transformers' _normalize_chat_messages and _alias_reasoning_fields. */
static struct jval *normalize_message(struct jinja_ctx *c, struct jval *m)
{
    static const char *const reasoning[] = { "reasoning_content", "thinking", "reasoning" };
    struct jval *r = NULL;
    for (int k = 0; k < 3 && !r; k++) {
        struct jval *v = jinja_dict_get(m, reasoning[k]);
        if (v && jinja_kind(v) != JINJA_NONE)
            r = v;
    }
    struct jval *d = jinja_dict_new(c);
    if (r)
        jinja_dict_put(c, d, "thinking", r);
    for (size_t i = 0; i < jinja_len(m); i++) {
        struct jval *v = jinja_dict_val(m, i);
        const char *k = jinja_dict_key(m, i);
        if (jinja_kind(v) == JINJA_NONE || !k)
            continue;
        jinja_dict_put(c, d, k, v);
    }
    if (r)
        jinja_dict_put(c, d, "reasoning_content", r);
    return d;
}

int chat_render(const struct chat_template *ct, const struct chat_input *in, struct buf *out,
                char **err)
{
    int rc = -1;
    char *e = NULL;
    struct jinja_tpl *t = NULL;
    struct jinja_ctx *c = jinja_ctx_new();
    const char *text = chat_template_pick(ct, in->template_name, in->tools_json != NULL, err);
    if (!text)
        goto out;
    struct jval *msgs = jinja_json(c, in->messages_json, strlen(in->messages_json), &e);
    if (!msgs) {
        err_setf(err, "messages: %s", e);
        goto out;
    }
    if (jinja_kind(msgs) != JINJA_LIST) {
        err_setf(err, "messages: expected a JSON list of message objects");
        goto out;
    }
    if (jinja_len(msgs) == 0) {
        err_setf(err, "messages: cannot apply a chat template to an empty conversation");
        goto out;
    }
    struct jval *norm = jinja_list_new(c);
    for (size_t i = 0; i < jinja_len(msgs); i++) {
        struct jval *m = jinja_list_at(msgs, i);
        if (jinja_kind(m) != JINJA_DICT) {
            err_setf(err, "messages: item %zu is not an object", i);
            goto out;
        }
        jinja_list_push(c, norm, normalize_message(c, m));
    }
    struct jval *tools = jinja_none(c);
    if (in->tools_json) {
        if (!(tools = jinja_json(c, in->tools_json, strlen(in->tools_json), &e))) {
            err_setf(err, "tools: %s", e);
            goto out;
        }
        if (jinja_kind(tools) != JINJA_LIST) {
            err_setf(err, "tools: expected a JSON list of tool schemas");
            goto out;
        }
        for (size_t i = 0; i < jinja_len(tools); i++)
            if (jinja_kind(jinja_list_at(tools, i)) != JINJA_DICT) {
                err_setf(err, "tools: item %zu is not an object", i);
                goto out;
            }
    }
    for (int i = 0; i < CHAT_NSPECIAL; i++)
        if (ct->special[i])
            jinja_ctx_set(c, chat_special_names[i], jinja_str(c, ct->special[i]));
    if (in->kwargs_json) {
        struct jval *kw = jinja_json(c, in->kwargs_json, strlen(in->kwargs_json), &e);
        if (!kw) {
            err_setf(err, "kwargs: %s", e);
            goto out;
        }
        if (jinja_kind(kw) != JINJA_DICT) {
            err_setf(err, "kwargs: expected a JSON object");
            goto out;
        }
        for (size_t i = 0; i < jinja_len(kw); i++)
            jinja_ctx_set(c, jinja_dict_key(kw, i), jinja_dict_val(kw, i));
    }
    jinja_ctx_set(c, "messages", norm);
    jinja_ctx_set(c, "tools", tools);
    jinja_ctx_set(c, "documents", jinja_none(c));
    jinja_ctx_set(c, "add_generation_prompt", jinja_bool(c, in->add_generation_prompt));
    if (!(t = jinja_tpl_parse(text, &e))) {
        err_setf(err, "chat template (%s): %s", ct->source, e);
        goto out;
    }
    if (jinja_render(t, c, out, &e) != 0) {
        err_setf(err, "chat template (%s): %s", ct->source, e);
        goto out;
    }
    rc = 0;
out:
    free(e);
    jinja_tpl_free(t);
    jinja_ctx_free(c);
    return rc;
}
