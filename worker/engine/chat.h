/*
 * chat: a model's chat template, found and rendered as transformers'
 * tokenizer.apply_chat_template(messages, tools=..., tokenize=False, ...) does.
 *
 * Sources, in transformers' order: a chat_template.jinja file in the model directory (plus
 * additional_chat_templates/NAME.jinja as named templates) wins over the chat_template entry of
 * tokenizer_config.json (a string, or a list of {"name", "template"} objects). With named
 * templates, the one asked for by name is used; else "tool_use" when tools are passed and it
 * exists; else "default". The special tokens (bos_token, eos_token, unk_token, sep_token,
 * pad_token, cls_token, mask_token) come from tokenizer_config.json (strings or AddedToken
 * objects with "content"), then special_tokens_map.json for the ones it lacks.
 *
 * Rendering normalises the messages as transformers does: keys whose value is null are
 * dropped, and a message's reasoning under "reasoning_content", "thinking" or "reasoning" is
 * made visible under both "thinking" and "reasoning_content". docs/chat-templates.md has the
 * details.
 */
#ifndef EXAQ_ENGINE_CHAT_H
#define EXAQ_ENGINE_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common/util.h"

#define CHAT_NSPECIAL 7

struct chat_template {
    char **names; /* template names ("default" for a single template) */
    char **texts;
    size_t n;
    bool named; /* the templates came as a named set (a list, or extra .jinja files) */
    char *special[CHAT_NSPECIAL]; /* NULL when the model has none */
    char *source;                 /* where the templates came from, for messages */
};

extern const char *const chat_special_names[CHAT_NSPECIAL];

/* Loads the templates and special tokens of the model in dir. 0, or -1 with *err. */
int chat_template_load(const char *dir, struct chat_template *ct, char **err);
void chat_template_release(struct chat_template *ct);

/* Picks the template text by transformers' rules (name may be NULL); NULL with *err. */
const char *chat_template_pick(const struct chat_template *ct, const char *name, bool has_tools,
                               char **err);

struct chat_input {
    const char *messages_json; /* a JSON list of message objects */
    const char *tools_json;    /* a JSON list, or NULL for tools=None */
    const char *kwargs_json;   /* a JSON object of extra template variables, or NULL */
    const char *template_name; /* NULL: the default rules */
    bool add_generation_prompt;
};

/* Renders the conversation, appending the prompt to out. 0, or -1 with *err (bad JSON, a
 * template syntax or runtime error with its line:col, raise_exception's message). */
int chat_render(const struct chat_template *ct, const struct chat_input *in, struct buf *out,
                char **err);

#endif
