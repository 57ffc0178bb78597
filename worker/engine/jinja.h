/*
 * jinja: the subset of Jinja2 that model chat templates use, rendered the way transformers
 * renders them (an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
 * loopcontrols extension; its own tojson filter and raise_exception/strftime_now globals).
 *
 * Values follow Python: none, bools, 64-bit ints, doubles, UTF-8 strings indexed by code
 * point, lists (and tuples), dicts that keep insertion order. Undefined follows jinja2's
 * default Undefined: it prints as nothing, is false, iterates as empty, and is an error when
 * an attribute or item of it is read or it takes part in arithmetic. docs/chat-templates.md
 * lists the statements, operators, filters, tests and methods; anything else is an error that
 * names the template line and column.
 *
 * Ownership: a template owns its syntax tree; a context owns every value made in it (one
 * arena, freed with the context). Values are borrowed pointers into that arena.
 */
#ifndef EXAQ_ENGINE_JINJA_H
#define EXAQ_ENGINE_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

struct jinja_tpl;
struct jinja_ctx;
struct jval;

enum jinja_kind {
    JINJA_UNDEFINED = 0,
    JINJA_NONE,
    JINJA_BOOL,
    JINJA_INT,
    JINJA_FLOAT,
    JINJA_STR,
    JINJA_LIST,
    JINJA_DICT,
    JINJA_OTHER, /* macros, namespaces, functions, bound methods */
};

/* Parses src (UTF-8). NULL with *err = "line L:C: message" on a syntax error or a construct
 * outside the subset. */
struct jinja_tpl *jinja_tpl_parse(const char *src, char **err);
void jinja_tpl_free(struct jinja_tpl *t); /* NULL ok */

struct jinja_ctx *jinja_ctx_new(void);
void jinja_ctx_free(struct jinja_ctx *c); /* NULL ok; frees every value made in c */

/* Binds a template variable (replaces an earlier binding of the same name). */
void jinja_ctx_set(struct jinja_ctx *c, const char *name, struct jval *v);

/* Renders t with the variables of c, appending to out. 0, or -1 with *err set: "line L:C:
 * message" for template errors, the message of raise_exception(msg) included. */
int jinja_render(const struct jinja_tpl *t, struct jinja_ctx *c, struct buf *out, char **err);

/* Values made in c. jinja_json parses JSON text (ints stay ints, other numbers are doubles,
 * objects keep their key order; a repeated key keeps its first place and its last value);
 * NULL with *err on bad JSON. */
struct jval *jinja_json(struct jinja_ctx *c, const char *json, size_t len, char **err);
struct jval *jinja_str(struct jinja_ctx *c, const char *s);
struct jval *jinja_bool(struct jinja_ctx *c, int b);
struct jval *jinja_none(struct jinja_ctx *c);
struct jval *jinja_list_new(struct jinja_ctx *c);
struct jval *jinja_dict_new(struct jinja_ctx *c);
void jinja_list_push(struct jinja_ctx *c, struct jval *list, struct jval *v);
/* Sets key in dict: replaces the value in place when the key exists, else appends. */
void jinja_dict_put(struct jinja_ctx *c, struct jval *dict, const char *key, struct jval *v);

enum jinja_kind jinja_kind(const struct jval *v);
size_t jinja_len(const struct jval *v); /* items of a list, entries of a dict, else 0 */
struct jval *jinja_list_at(const struct jval *list, size_t i);
const char *jinja_dict_key(const struct jval *dict, size_t i); /* NULL for a non-string key */
struct jval *jinja_dict_val(const struct jval *dict, size_t i);
struct jval *jinja_dict_get(const struct jval *dict, const char *key); /* NULL if absent */
const char *jinja_str_get(const struct jval *v); /* the bytes of a string, else NULL */

/* Python's str(v) and json.dumps(v, ensure_ascii=False) of a value (for callers and tests). */
void jinja_print_str(struct buf *b, const struct jval *v);
int jinja_print_json(struct buf *b, const struct jval *v, char **err);

#endif
