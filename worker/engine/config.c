/*
 * config: EXAONE-4 config.json parsing (both transformers styles), raw-document edits and the
 * transformers-compatible writer. See config.h for the contract.
 *
 * Numbers keep their spelling: after cJSON parses the text, a small lexer walks the same text
 * and stores each number's lexeme in its cJSON node's (otherwise unused) valuestring, in
 * document order, which is the order of a pre-order walk of the tree. cJSON_Delete frees
 * valuestring for every node type and cJSON_Duplicate copies it, so ownership stays cJSON's.
 */
#include "worker/engine/config.h"
#include "worker/engine/family.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

/* ---- input checks ---------------------------------------------------------------------- */

/* JSON text as Python's json.load accepts it: valid UTF-8 (RFC 3629) and no raw control
 * characters inside strings (cJSON would accept both). Returns the offending offset or -1. */
static long text_problem(const char *s, size_t n, const char **what)
{
    const unsigned char *u = (const unsigned char *)s;
    int in_str = 0;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c < 0x80) {
            if (in_str && c < 0x20) {
                *what = "a raw control character inside a string";
                return (long)i;
            }
            if (c == '"')
                in_str = !in_str;
            else if (c == '\\' && in_str)
                i++;
            i++;
            continue;
        }
        size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        unsigned cp = len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        int ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++) {
            if ((u[i + k] & 0xc0) != 0x80)
                ok = 0;
            cp = (cp << 6) | (u[i + k] & 0x3f);
        }
        if (ok && (cp < (len == 2   ? 0x80u
                         : len == 3 ? 0x800u
                                    : 0x10000u) ||
                   cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
            ok = 0;
        if (!ok) {
            *what = "invalid UTF-8";
            return (long)i;
        }
        i += len;
    }
    return -1;
}

/* ---- number lexemes ------------------------------------------------------------------ */

struct lexemes {
    char **v;
    int n, cap;
};

static void lex_numbers(const char *s, size_t n, struct lexemes *out)
{
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            i++;
            while (i < n && s[i] != '"') {
                if (s[i] == '\\')
                    i++;
                i++;
            }
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t b = i;
            while (i < n && (strchr("+-.eE", s[i]) || (s[i] >= '0' && s[i] <= '9')))
                i++;
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 32;
                out->v = xrealloc(out->v, sizeof(char *) * (size_t)out->cap);
            }
            out->v[out->n++] = xstrndup(s + b, i - b);
        } else {
            i++;
        }
    }
}

static void attach_lexemes(cJSON *node, struct lexemes *lx, int *next, int *ok)
{
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node)) {
            if (*next >= lx->n) {
                *ok = 0;
                return;
            }
            free(node->valuestring);
            node->valuestring = lx->v[*next];
            lx->v[(*next)++] = NULL;
        }
        if (node->child)
            attach_lexemes(node->child, lx, next, ok);
    }
}

static int numbers_finite(const cJSON *node)
{
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node) && !isfinite(node->valuedouble))
            return 0;
        if (node->child && !numbers_finite(node->child))
            return 0;
    }
    return 1;
}

static int count_numbers(const cJSON *node)
{
    int n = 0;
    for (; node; node = node->next) {
        if (cJSON_IsNumber(node))
            n++;
        if (node->child)
            n += count_numbers(node->child);
    }
    return n;
}

/* ---- Python-compatible float repr ------------------------------------------------------ */

void config_format_float(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (v == 0.0) {
        snprintf(buf, len, signbit(v) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest digit string that round-trips. */
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    /* e = [-]d[.ddd]e[+-]XX: split into digits and exponent. */
    char digits[24];
    int nd = 0, neg = 0;
    const char *p = e;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = '\0';
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (exp10 >= -5 && exp10 < 16) {
        /* Fixed notation (Python repr switches to exponent below 1e-4 and at 1e16). */
        if (exp10 < 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int k = 0; k < -exp10 - 1; k++)
                out[o++] = '0';
            for (int k = 0; k < nd; k++)
                out[o++] = digits[k];
        } else {
            for (int k = 0; k <= exp10; k++)
                out[o++] = k < nd ? digits[k] : '0';
            out[o++] = '.';
            if (nd > exp10 + 1)
                for (int k = exp10 + 1; k < nd; k++)
                    out[o++] = digits[k];
            else
                out[o++] = '0';
        }
        out[o] = '\0';
        if (exp10 == -5) {
            /* 1e-05 is printed in exponent form by Python. */
            o = neg ? 1 : 0;
            goto sci;
        }
        snprintf(buf, len, "%s", out);
        return;
    }
sci:
    out[o++] = digits[0];
    if (nd > 1) {
        out[o++] = '.';
        for (int k = 1; k < nd; k++)
            out[o++] = digits[k];
    }
    snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    snprintf(buf, len, "%s", out);
}

/* ---- printer ------------------------------------------------------------------------- */

static void put_str(struct buf *b, const char *s)
{
    buf_puts(b, "\"");
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        if (c == '"') {
            buf_puts(b, "\\\"");
            p++;
        } else if (c == '\\') {
            buf_puts(b, "\\\\");
            p++;
        } else if (c == '\n') {
            buf_puts(b, "\\n");
            p++;
        } else if (c == '\r') {
            buf_puts(b, "\\r");
            p++;
        } else if (c == '\t') {
            buf_puts(b, "\\t");
            p++;
        } else if (c == '\b') {
            buf_puts(b, "\\b");
            p++;
        } else if (c == '\f') {
            buf_puts(b, "\\f");
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            buf_printf(b, "\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            buf_append(b, p, 1);
            p++;
        } else {
            /* Decode UTF-8 and escape as \uXXXX (surrogate pairs above the BMP), as Python's
             * ensure_ascii does; an invalid byte is escaped as itself. */
            unsigned cp = c;
            int extra = (c & 0xe0) == 0xc0   ? 1
                        : (c & 0xf0) == 0xe0 ? 2
                        : (c & 0xf8) == 0xf0 ? 3
                                             : 0;
            int ok = extra > 0;
            cp = extra == 1 ? c & 0x1f : extra == 2 ? c & 0x0f : c & 0x07;
            for (int k = 1; k <= extra && ok; k++) {
                if ((p[k] & 0xc0) != 0x80)
                    ok = 0;
                else
                    cp = (cp << 6) | (p[k] & 0x3f);
            }
            if (!ok) {
                buf_printf(b, "\\u%04x", c);
                p++;
                continue;
            }
            if (cp >= 0x10000) {
                cp -= 0x10000;
                buf_printf(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                buf_printf(b, "\\u%04x", cp);
            }
            p += 1 + extra;
        }
    }
    buf_puts(b, "\"");
}

static void put_number(struct buf *b, const cJSON *n)
{
    if (n->valuestring && *n->valuestring) {
        buf_puts(b, n->valuestring);
        return;
    }
    double v = n->valuedouble;
    if (isfinite(v) && floor(v) == v && fabs(v) < 1e16) {
        buf_printf(b, "%lld", (long long)v);
        return;
    }
    char f[40];
    config_format_float(v, f, sizeof(f));
    buf_puts(b, f);
}

static int cmp_child_key(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

static void indent(struct buf *b, int lvl)
{
    for (int i = 0; i < lvl; i++)
        buf_puts(b, "  ");
}

static void put_value(struct buf *b, const cJSON *v, int lvl)
{
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        int obj = cJSON_IsObject(v);
        int n = cJSON_GetArraySize(v);
        if (n == 0) {
            buf_puts(b, obj ? "{}" : "[]");
            return;
        }
        const cJSON **kids = xcalloc((size_t)n, sizeof(*kids));
        int k = 0;
        for (const cJSON *c = v->child; c; c = c->next)
            kids[k++] = c;
        if (obj)
            qsort(kids, (size_t)n, sizeof(*kids), cmp_child_key);
        buf_puts(b, obj ? "{\n" : "[\n");
        for (int i = 0; i < n; i++) {
            indent(b, lvl + 1);
            if (obj) {
                put_str(b, kids[i]->string ? kids[i]->string : "");
                buf_puts(b, ": ");
            }
            put_value(b, kids[i], lvl + 1);
            buf_puts(b, i + 1 < n ? ",\n" : "\n");
        }
        indent(b, lvl);
        buf_puts(b, obj ? "}" : "]");
        free(kids);
    } else if (cJSON_IsString(v)) {
        put_str(b, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        put_number(b, v);
    } else if (cJSON_IsTrue(v)) {
        buf_puts(b, "true");
    } else if (cJSON_IsFalse(v)) {
        buf_puts(b, "false");
    } else {
        buf_puts(b, "null");
    }
}

char *config_print(const struct config *c)
{
    struct buf b;
    buf_init(&b);
    put_value(&b, c->raw, 0);
    buf_puts(&b, "\n");
    return buf_steal(&b);
}

int config_write(const struct config *c, const char *path, char **err)
{
    char *s = config_print(c);
    int rc = file_write_atomic(path, s, strlen(s));
    free(s);
    if (rc != 0)
        err_setf(err, "cannot write '%s': %s", path, strerror(-rc));
    return rc;
}

/* ---- field access --------------------------------------------------------------------- */

static const cJSON *field(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* An integer field: absent (or null when null_ok) gives def; must be an integer >= min. */
static int get_int(const cJSON *o, const char *ctx, const char *k, int required, int def, int min,
                   int *out, const char *lb, char **err)
{
    const cJSON *v = field(o, k);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            err_setf(err, "%s: missing required field '%s%s'", lb, ctx, k);
            return -EINVAL;
        }
        *out = def;
        return 0;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!cJSON_IsNumber(v) || !isfinite(d) || floor(d) != d) {
        err_setf(err, "%s: field '%s%s' must be an integer >= %d", lb, ctx, k, min);
        return -EINVAL;
    }
    /* An integer that does not fit: say so with the bound, not "must be an integer". */
    if (d < min) {
        err_setf(err, "%s: field '%s%s' is %.0f; it must be >= %d", lb, ctx, k, d, min);
        return -EINVAL;
    }
    if (d > INT_MAX) {
        err_setf(err, "%s: field '%s%s' is %.0f, out of range (at most %d)", lb, ctx, k, d,
                 INT_MAX);
        return -EINVAL;
    }
    *out = (int)d;
    return 0;
}

static int get_num(const cJSON *o, const char *ctx, const char *k, int required, double def,
                   double *out, const char *lb, char **err)
{
    const cJSON *v = field(o, k);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            err_setf(err, "%s: missing required field '%s%s'", lb, ctx, k);
            return -EINVAL;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        err_setf(err, "%s: field '%s%s' must be a number", lb, ctx, k);
        return -EINVAL;
    }
    *out = v->valuedouble;
    return 0;
}

static int token_id(const cJSON *o, const char *k)
{
    const cJSON *v = field(o, k);
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= INT_MAX &&
        floor(v->valuedouble) == v->valuedouble)
        return (int)v->valuedouble;
    return -1;
}

/* Parses one rope parameter object (v5 rope_parameters or v4 rope_scaling plus theta). */
static int parse_rope_obj(const cJSON *r, const char *ctx, int need_theta, double theta_def,
                          struct config_rope *out, const char *lb, char **err)
{
    memset(out, 0, sizeof(*out));
    out->theta = theta_def;
    const char *type = "default";
    const cJSON *t = field(r, "rope_type");
    if (!t)
        t = field(r, "type"); /* older spelling inside rope_scaling */
    if (t && !cJSON_IsNull(t)) {
        if (!cJSON_IsString(t)) {
            err_setf(err, "%s: field '%srope_type' must be a string", lb, ctx);
            return -EINVAL;
        }
        type = t->valuestring;
    }
    if (need_theta || field(r, "rope_theta")) {
        if (get_num(r, ctx, "rope_theta", need_theta, theta_def, &out->theta, lb, err))
            return -EINVAL;
    }
    if (!(out->theta > 0)) {
        err_setf(err, "%s: field '%srope_theta' must be positive", lb, ctx);
        return -EINVAL;
    }
    if (strcmp(type, "default") == 0) {
        out->type = CONFIG_ROPE_DEFAULT;
        return 0;
    }
    if (strcmp(type, "llama3") != 0) {
        err_setf(err, "%s: rope_type '%s' is not supported (only 'default' and 'llama3')", lb,
                 type);
        return -EINVAL;
    }
    out->type = CONFIG_ROPE_LLAMA3;
    if (get_num(r, ctx, "factor", 1, 0, &out->factor, lb, err) ||
        get_num(r, ctx, "low_freq_factor", 1, 0, &out->low_freq_factor, lb, err) ||
        get_num(r, ctx, "high_freq_factor", 1, 0, &out->high_freq_factor, lb, err) ||
        get_int(r, ctx, "original_max_position_embeddings", 1, 0, 1,
                &out->original_max_position_embeddings, lb, err))
        return -EINVAL;
    if (!(out->factor > 0) || !(out->low_freq_factor > 0) ||
        !(out->high_freq_factor > out->low_freq_factor)) {
        err_setf(err, "%s: llama3 rope needs factor > 0 and high_freq_factor > low_freq_factor > 0",
                 lb);
        return -EINVAL;
    }
    return 0;
}

static int rope_equal(const struct config_rope *a, const struct config_rope *b)
{
    return a->type == b->type && a->theta == b->theta && a->factor == b->factor &&
           a->low_freq_factor == b->low_freq_factor && a->high_freq_factor == b->high_freq_factor &&
           a->original_max_position_embeddings == b->original_max_position_embeddings;
}

/* EXAONE-4: sliding_window, sliding_window_pattern and layer_types (transformers defaults:
 * window 4096, pattern 4). */
static int derive_layers_exaone4(struct config *o, const cJSON *root, const char *lb, char **err)
{
    const cJSON *sw = field(root, "sliding_window");
    if (!sw)
        o->sliding_window = 4096;
    else if (cJSON_IsNull(sw))
        o->sliding_window = 0;
    else if (get_int(root, "", "sliding_window", 1, 0, 1, &o->sliding_window, lb, err))
        return -EINVAL;
    const cJSON *sp = field(root, "sliding_window_pattern");
    int pattern_is_string = 0;
    if (!sp)
        o->sliding_window_pattern = 4;
    else if (cJSON_IsNull(sp))
        o->sliding_window_pattern = 0;
    else if (cJSON_IsString(sp)) {
        o->sliding_window_pattern = 0;
        pattern_is_string = 1;
    } else if (get_int(root, "", "sliding_window_pattern", 1, 0, 0, &o->sliding_window_pattern, lb,
                       err))
        return -EINVAL;
    if (o->sliding_window == 0)
        o->sliding_window_pattern = 0; /* as transformers' __post_init__ */

    free(o->layer_types);
    o->layer_types = xcalloc((size_t)o->num_hidden_layers, sizeof(*o->layer_types));
    const cJSON *lt = field(root, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        if (!cJSON_IsArray(lt)) {
            err_setf(err, "%s: layer_types must be a list", lb);
            return -EINVAL;
        }
        int n = cJSON_GetArraySize(lt);
        if (n != o->num_hidden_layers) {
            err_setf(err, "%s: layer_types has %d entries but num_hidden_layers is %d", lb, n,
                     o->num_hidden_layers);
            return -EINVAL;
        }
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, lt)
        {
            if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0)
                o->layer_types[i] = CONFIG_LAYER_FULL;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0)
                o->layer_types[i] = CONFIG_LAYER_SLIDING;
            else {
                err_setf(err,
                         "%s: layer_types[%d] must be \"full_attention\" or "
                         "\"sliding_attention\"",
                         lb, i);
                return -EINVAL;
            }
            i++;
        }
        o->layer_types_explicit = 1;
    } else {
        if (pattern_is_string && o->sliding_window > 0) {
            err_setf(err,
                     "%s: layer_types is missing and sliding_window_pattern is a string; "
                     "transformers cannot derive layer_types from it, list them explicitly",
                     lb);
            return -EINVAL;
        }
        if (o->sliding_window_pattern == 0) {
            err_setf(err,
                     "%s: layer_types is missing and sliding_window_pattern is %s (sliding_"
                     "window is %s): the default rule (i+1) %% pattern divides by zero, list "
                     "layer_types explicitly",
                     lb, o->sliding_window == 0 ? "0" : "null or 0",
                     o->sliding_window == 0 ? "null" : "set");
            return -EINVAL;
        }
        for (int i = 0; i < o->num_hidden_layers; i++)
            o->layer_types[i] =
                (i + 1) % o->sliding_window_pattern != 0 ? CONFIG_LAYER_SLIDING : CONFIG_LAYER_FULL;
        o->layer_types_explicit = 0;
    }
    return 0;
}

/* layer_types as written (every entry full_attention or sliding_attention). */
static int parse_layer_types(struct config *o, const cJSON *lt, const char *lb, char **err)
{
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != o->num_hidden_layers) {
        err_setf(err, "%s: layer_types must be a list of %d entries (num_hidden_layers)", lb,
                 o->num_hidden_layers);
        return -EINVAL;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, lt)
    {
        if (cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0)
            o->layer_types[i] = CONFIG_LAYER_FULL;
        else if (cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0)
            o->layer_types[i] = CONFIG_LAYER_SLIDING;
        else {
            err_setf(err, "%s: layer_types[%d] must be \"full_attention\" or \"sliding_attention\"",
                     lb, i);
            return -EINVAL;
        }
        i++;
    }
    o->layer_types_explicit = 1;
    return 0;
}

/* The pre-norm families: no window (llama, minicpm), one window on every layer (mistral), or
 * Qwen's use_sliding_window with max_window_layers (or an explicit layer_types). */
static int derive_layers_other(struct config *o, const cJSON *root, const char *lb, char **err)
{
    const struct family *f = o->fam;
    o->sliding_window = 0;
    o->sliding_window_pattern = 0;
    free(o->layer_types);
    o->layer_types = xcalloc((size_t)o->num_hidden_layers + 1, sizeof(*o->layer_types));
    o->layer_types_explicit = 0;
    if (f->window == FAMILY_WINDOW_NONE)
        return 0;
    const cJSON *sw = field(root, "sliding_window");
    if (!sw)
        o->sliding_window = f->sliding_default;
    else if (!cJSON_IsNull(sw) &&
             get_int(root, "", "sliding_window", 1, 0, 1, &o->sliding_window, lb, err))
        return -EINVAL;
    if (f->window == FAMILY_WINDOW_ALL) {
        for (int i = 0; i < o->num_hidden_layers; i++)
            o->layer_types[i] = o->sliding_window > 0 ? CONFIG_LAYER_SLIDING : CONFIG_LAYER_FULL;
        return 0;
    }
    const cJSON *use = field(root, "use_sliding_window");
    if (use && !cJSON_IsBool(use) && !cJSON_IsNull(use)) {
        err_setf(err, "%s: use_sliding_window must be true or false", lb);
        return -EINVAL;
    }
    if (!cJSON_IsTrue(use))
        o->sliding_window = 0; /* as transformers' Qwen2Config / Qwen3Config */
    const cJSON *lt = field(root, "layer_types");
    if (lt && !cJSON_IsNull(lt))
        return parse_layer_types(o, lt, lb, err);
    int mwl;
    if (get_int(root, "", "max_window_layers", 0, 28, 0, &mwl, lb, err))
        return -EINVAL;
    for (int i = 0; i < o->num_hidden_layers; i++)
        o->layer_types[i] =
            o->sliding_window > 0 && i >= mwl ? CONFIG_LAYER_SLIDING : CONFIG_LAYER_FULL;
    return 0;
}

/* Derives every struct field from root into o (o->raw and o->label untouched). */
static int derive(struct config *o, const cJSON *root, const char *lb, char **err)
{
    if (!cJSON_IsObject(root)) {
        err_setf(err, "%s: not a JSON object", lb);
        return -EINVAL;
    }
    int rc;
    const cJSON *mt = field(root, "model_type");
    /* Without model_type: EXAONE-4, the engine's first family (older test configs). */
    o->fam = family_get(FAMILY_EXAONE4);
    if (mt) {
        o->fam = cJSON_IsString(mt) ? family_find(mt->valuestring) : NULL;
        if (!o->fam) {
            err_setf(err, "%s: model_type is '%s'; the engine loads %s", lb,
                     cJSON_IsString(mt) ? mt->valuestring : "(not a string)", family_list());
            return -EINVAL;
        }
    }
    const cJSON *act = field(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) {
        err_setf(err, "%s: hidden_act must be 'silu'", lb);
        return -EINVAL;
    }
    if (get_int(root, "", "hidden_size", 1, 0, 1, &o->hidden_size, lb, err) ||
        get_int(root, "", "intermediate_size", 1, 0, 1, &o->intermediate_size, lb, err) ||
        get_int(root, "", "num_hidden_layers", 1, 0, 1, &o->num_hidden_layers, lb, err) ||
        get_int(root, "", "num_attention_heads", 1, 0, 1, &o->num_attention_heads, lb, err) ||
        get_int(root, "", "vocab_size", 1, 0, 1, &o->vocab_size, lb, err))
        return -EINVAL;
    if (get_int(root, "", "num_key_value_heads", 0, o->num_attention_heads, 1,
                &o->num_key_value_heads, lb, err) ||
        get_int(root, "", "head_dim", 0,
                o->fam->head_dim_default ? o->fam->head_dim_default
                                         : o->hidden_size / o->num_attention_heads,
                2, &o->head_dim, lb, err) ||
        get_int(root, "", "max_position_embeddings", 0, 2048, 1, &o->max_position_embeddings, lb,
                err) ||
        get_num(root, "", "rms_norm_eps", 0, 1e-5, &o->rms_norm_eps, lb, err))
        return -EINVAL;
    if (o->num_attention_heads % o->num_key_value_heads != 0) {
        err_setf(err, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                 lb, o->num_attention_heads, o->num_key_value_heads);
        return -EINVAL;
    }
    if (o->head_dim % 2 != 0) {
        err_setf(err, "%s: head_dim (%d) must be even for rotary embeddings", lb, o->head_dim);
        return -EINVAL;
    }
    if (!(o->rms_norm_eps > 0)) {
        err_setf(err, "%s: rms_norm_eps must be positive", lb);
        return -EINVAL;
    }
    const cJSON *tie = field(root, "tie_word_embeddings");
    if (tie && !cJSON_IsBool(tie)) {
        err_setf(err, "%s: tie_word_embeddings must be true or false", lb);
        return -EINVAL;
    }
    o->tie_word_embeddings = tie ? cJSON_IsTrue(tie) : o->fam->tie_default;
    const cJSON *mb = field(root, "mlp_bias");
    if (mb && !cJSON_IsNull(mb) && !cJSON_IsFalse(mb)) {
        err_setf(err, "%s: mlp_bias must be false (MLP biases are not supported)", lb);
        return -EINVAL;
    }
    const cJSON *ab = field(root, "attention_bias");
    if (ab && !cJSON_IsNull(ab) && !cJSON_IsBool(ab)) {
        err_setf(err, "%s: attention_bias must be true or false", lb);
        return -EINVAL;
    }
    o->bias_mask = o->fam->bias_always;
    if (cJSON_IsTrue(ab)) {
        if (!o->fam->attention_bias) {
            err_setf(err, "%s: attention_bias is not supported for model_type %s", lb,
                     o->fam->model_type);
            return -EINVAL;
        }
        o->bias_mask |= 0xfu; /* q, k, v and o (enum model_lin order) */
    }
    o->scale_emb = 1.0;
    o->scale_depth = sqrt((double)o->num_hidden_layers);
    o->dim_model_base = o->hidden_size;
    if (o->fam->mup_scales) {
        if (get_num(root, "", "scale_emb", 0, 1.0, &o->scale_emb, lb, err) ||
            get_num(root, "", "scale_depth", 0, o->scale_depth, &o->scale_depth, lb, err) ||
            get_num(root, "", "dim_model_base", 0, o->dim_model_base, &o->dim_model_base, lb, err))
            return -EINVAL;
        if (!(o->scale_emb > 0) || !(o->scale_depth > 0) || !(o->dim_model_base > 0)) {
            err_setf(err, "%s: scale_emb, scale_depth and dim_model_base must be positive", lb);
            return -EINVAL;
        }
    }

    /* dtype: v5 "dtype", v4 "torch_dtype". */
    const cJSON *dt = field(root, "dtype");
    if (!dt || cJSON_IsNull(dt))
        dt = field(root, "torch_dtype");
    o->dtype[0] = '\0';
    if (dt && !cJSON_IsNull(dt)) {
        if (!cJSON_IsString(dt) || strlen(dt->valuestring) >= sizeof(o->dtype)) {
            err_setf(err, "%s: dtype must be a string such as \"bfloat16\"", lb);
            return -EINVAL;
        }
        snprintf(o->dtype, sizeof(o->dtype), "%s", dt->valuestring);
    }

    /* RoPE. */
    const cJSON *rp = field(root, "rope_parameters");
    if (rp) {
        o->style = CONFIG_STYLE_V5;
        if (cJSON_IsNull(rp)) {
            double th;
            if (get_num(root, "", "rope_theta", 0, 10000.0, &th, lb, err))
                return -EINVAL;
            memset(&o->rope, 0, sizeof(o->rope));
            o->rope.theta = th;
        } else if (!cJSON_IsObject(rp)) {
            err_setf(err, "%s: rope_parameters must be an object", lb);
            return -EINVAL;
        } else if (field(rp, "rope_type") || field(rp, "rope_theta")) {
            if (parse_rope_obj(rp, "rope_parameters.", 1, 0, &o->rope, lb, err))
                return -EINVAL;
        } else {
            /* Per layer type: {"full_attention": {...}, "sliding_attention": {...}}. */
            int n = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, rp)
            {
                struct config_rope r;
                char ctx[96];
                snprintf(ctx, sizeof(ctx), "rope_parameters.%.60s.", e->string);
                if (!cJSON_IsObject(e)) {
                    err_setf(err, "%s: rope_parameters.%s must be an object", lb, e->string);
                    return -EINVAL;
                }
                if (parse_rope_obj(e, ctx, 1, 0, &r, lb, err))
                    return -EINVAL;
                if (n++ == 0)
                    o->rope = r;
                else if (!rope_equal(&r, &o->rope)) {
                    err_setf(err,
                             "%s: rope_parameters differ between layer types, which EXAONE-4 "
                             "does not support",
                             lb);
                    return -EINVAL;
                }
            }
            if (n == 0) {
                err_setf(err, "%s: rope_parameters is empty", lb);
                return -EINVAL;
            }
        }
    } else {
        o->style = CONFIG_STYLE_V4;
        double th;
        if (get_num(root, "", "rope_theta", 0, 10000.0, &th, lb, err))
            return -EINVAL;
        const cJSON *rs = field(root, "rope_scaling");
        if (rs && !cJSON_IsNull(rs)) {
            if (!cJSON_IsObject(rs)) {
                err_setf(err, "%s: rope_scaling must be an object or null", lb);
                return -EINVAL;
            }
            if (parse_rope_obj(rs, "rope_scaling.", 0, th, &o->rope, lb, err))
                return -EINVAL;
            o->rope.theta = th;
        } else {
            memset(&o->rope, 0, sizeof(o->rope));
            o->rope.theta = th;
            o->rope.type = CONFIG_ROPE_DEFAULT;
        }
        if (!(o->rope.theta > 0)) {
            err_setf(err, "%s: rope_theta must be positive", lb);
            return -EINVAL;
        }
    }

    if (o->fam->window == FAMILY_WINDOW_EXAONE4)
        rc = derive_layers_exaone4(o, root, lb, err);
    else
        rc = derive_layers_other(o, root, lb, err);
    if (rc)
        return rc;
    o->bos_token_id = token_id(root, "bos_token_id");
    o->eos_token_id = token_id(root, "eos_token_id");
    o->pad_token_id = token_id(root, "pad_token_id");

    int nsliding = 0;
    for (int i = 0; i < o->num_hidden_layers; i++)
        nsliding += o->layer_types[i] == CONFIG_LAYER_SLIDING;
    if (o->fam->window != FAMILY_WINDOW_EXAONE4)
        return 0;
    if (o->sliding_window == 0 && nsliding > 0)
        log_warn("%s: %d sliding_attention layers but sliding_window is null: transformers "
                 "applies RoPE on every layer and no window; vLLM disagrees (spec 6.7)",
                 lb, nsliding);
    if (o->sliding_window > 0 && nsliding == 0)
        log_warn("%s: sliding_window is set but no layer is sliding: transformers applies no "
                 "RoPE at all (NoPE everywhere); vLLM disagrees (spec 6.7)",
                 lb);
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

void config_release(struct config *c)
{
    if (!c)
        return;
    free(c->layer_types);
    cJSON_Delete(c->raw);
    free(c->label);
    memset(c, 0, sizeof(*c));
}

int config_parse(struct config *c, const char *json, size_t len, const char *label, char **err)
{
    memset(c, 0, sizeof(*c));
    c->label = xstrdup(label ? label : "config.json");
    const char *what = NULL;
    long at = text_problem(json, len, &what);
    if (at >= 0) {
        err_setf(err, "%s: not valid JSON text: %s at byte %ld", c->label, what, at);
        config_release(c);
        return -EINVAL;
    }
    const char *end = NULL;
    c->raw = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!c->raw) {
        err_setf(err, "%s: not valid JSON", c->label);
        config_release(c);
        return -EINVAL;
    }
    for (; end && end < json + len; end++) {
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            err_setf(err, "%s: not valid JSON: extra data after the top-level value (byte %ld)",
                     c->label, (long)(end - json));
            config_release(c);
            return -EINVAL;
        }
    }
    if (!numbers_finite(c->raw)) {
        err_setf(err, "%s: a number is out of range (infinite or NaN)", c->label);
        config_release(c);
        return -EINVAL;
    }
    struct lexemes lx = { 0 };
    lex_numbers(json, len, &lx);
    if (lx.n == count_numbers(c->raw)) {
        int next = 0, ok = 1;
        attach_lexemes(c->raw, &lx, &next, &ok);
    }
    for (int i = 0; i < lx.n; i++)
        free(lx.v[i]);
    free(lx.v);
    int rc = derive(c, c->raw, c->label, err);
    if (rc != 0)
        config_release(c);
    return rc;
}

int config_load(struct config *c, const char *path, char **err)
{
    char *text;
    size_t len;
    memset(c, 0, sizeof(*c));
    int rc = file_read_all(path, &text, &len);
    if (rc != 0) {
        err_setf(err, "cannot read '%s': %s", path,
                 rc == -EINVAL ? "not a regular file" : strerror(-rc));
        return rc;
    }
    const char *slash = strrchr(path, '/');
    rc = config_parse(c, text, len, slash ? slash + 1 : path, err);
    free(text);
    return rc;
}

void config_copy(struct config *dst, const struct config *src)
{
    *dst = *src;
    dst->raw = cJSON_Duplicate(src->raw, 1);
    if (!dst->raw)
        EXAQ_BUG("out of memory duplicating config");
    dst->label = xstrdup(src->label);
    dst->layer_types = xcalloc((size_t)src->num_hidden_layers + 1, sizeof(*dst->layer_types));
    memcpy(dst->layer_types, src->layer_types,
           sizeof(*dst->layer_types) * (size_t)src->num_hidden_layers);
}

int config_reparse(struct config *c, char **err)
{
    struct config tmp;
    memset(&tmp, 0, sizeof(tmp));
    int rc = derive(&tmp, c->raw, c->label, err);
    if (rc != 0) {
        free(tmp.layer_types);
        return rc;
    }
    free(c->layer_types);
    tmp.raw = c->raw;
    tmp.label = c->label;
    *c = tmp;
    return 0;
}

/* ---- edits ------------------------------------------------------------------------------ */

/* Finds the parent object of a dotted key path, creating objects when create; *leaf is the last
 * component (points into path). */
static cJSON *parent_of(cJSON *root, const char *path, int create, const char **leaf)
{
    cJSON *cur = root;
    const char *p = path;
    for (;;) {
        const char *dot = strchr(p, '.');
        if (!dot) {
            *leaf = p;
            return *p ? cur : NULL;
        }
        if (dot == p)
            return NULL;
        char *comp = xstrndup(p, (size_t)(dot - p));
        cJSON *next = cJSON_GetObjectItemCaseSensitive(cur, comp);
        if (!next || !cJSON_IsObject(next)) {
            if (!create) {
                free(comp);
                return NULL;
            }
            next = cJSON_CreateObject();
            if (cJSON_GetObjectItemCaseSensitive(cur, comp))
                cJSON_ReplaceItemInObjectCaseSensitive(cur, comp, next);
            else
                cJSON_AddItemToObject(cur, comp, next);
        }
        free(comp);
        cur = next;
        p = dot + 1;
    }
}

static int set_item(struct config *c, const char *key, cJSON *item)
{
    const char *leaf;
    cJSON *parent = item ? parent_of(c->raw, key, 1, &leaf) : NULL;
    if (!item || !parent || !cJSON_IsObject(parent)) {
        cJSON_Delete(item);
        return -EINVAL;
    }
    if (cJSON_GetObjectItemCaseSensitive(parent, leaf))
        cJSON_ReplaceItemInObjectCaseSensitive(parent, leaf, item);
    else
        cJSON_AddItemToObject(parent, leaf, item);
    return 0;
}

static cJSON *number_with_lexeme(double v, const char *lexeme)
{
    cJSON *n = cJSON_CreateNumber(v);
    if (n)
        n->valuestring = xstrdup(lexeme);
    return n;
}

int config_set_int(struct config *c, const char *key, long long v)
{
    char s[32];
    snprintf(s, sizeof(s), "%lld", v);
    return set_item(c, key, number_with_lexeme((double)v, s));
}

int config_set_float(struct config *c, const char *key, double v)
{
    if (!isfinite(v))
        return -EINVAL; /* JSON has no infinities; transformers' Infinity would not reparse */
    char s[40];
    config_format_float(v, s, sizeof(s));
    return set_item(c, key, number_with_lexeme(v, s));
}

int config_set_string(struct config *c, const char *key, const char *v)
{
    return set_item(c, key, cJSON_CreateString(v));
}

int config_set_null(struct config *c, const char *key)
{
    return set_item(c, key, cJSON_CreateNull());
}

int config_set_json(struct config *c, const char *key, const char *json)
{
    const char *what;
    if (text_problem(json, strlen(json), &what) >= 0)
        return -EINVAL;
    cJSON *v = cJSON_Parse(json);
    if (!v)
        return -EINVAL;
    if (!numbers_finite(v)) {
        cJSON_Delete(v);
        return -EINVAL;
    }
    struct lexemes lx = { 0 };
    lex_numbers(json, strlen(json), &lx);
    if (lx.n == count_numbers(v)) {
        int next = 0, ok = 1;
        /* attach_lexemes walks siblings; a top-level value has none. */
        attach_lexemes(v, &lx, &next, &ok);
    }
    for (int i = 0; i < lx.n; i++)
        free(lx.v[i]);
    free(lx.v);
    return set_item(c, key, v);
}

int config_delete(struct config *c, const char *key)
{
    const char *leaf;
    cJSON *parent = parent_of(c->raw, key, 0, &leaf);
    if (!parent || !cJSON_GetObjectItemCaseSensitive(parent, leaf))
        return -ENOENT;
    cJSON_DeleteItemFromObjectCaseSensitive(parent, leaf);
    return 0;
}

static const char *layer_type_name(enum config_layer_type t)
{
    return t == CONFIG_LAYER_SLIDING ? "sliding_attention" : "full_attention";
}

int config_keep_layers(struct config *c, const int *keep, int n, char **err)
{
    if (n < 1) {
        err_setf(err, "%s: cannot keep %d layers", c->label, n);
        return -EINVAL;
    }
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        if (keep[i] < 0 || keep[i] >= c->num_hidden_layers || (i > 0 && keep[i] <= keep[i - 1])) {
            cJSON_Delete(arr);
            err_setf(err, "%s: layer list must be increasing indices below %d", c->label,
                     c->num_hidden_layers);
            return -EINVAL;
        }
        cJSON_AddItemToArray(arr, cJSON_CreateString(layer_type_name(c->layer_types[keep[i]])));
    }
    if (c->fam->layer_types_key)
        set_item(c, "layer_types", arr);
    else
        cJSON_Delete(arr);
    if (c->fam->mup_scales)
        config_set_float(c, "scale_depth",
                         c->scale_depth * sqrt((double)n / (double)c->num_hidden_layers));
    config_set_int(c, "num_hidden_layers", n);
    return config_reparse(c, err);
}

int config_convert_style(struct config *c, enum config_style style, char **err)
{
    const struct config_rope *r = &c->rope;
    char dtype[32];
    snprintf(dtype, sizeof(dtype), "%s", c->dtype[0] ? c->dtype : "bfloat16");
    if (style == CONFIG_STYLE_V5) {
        cJSON *rp = cJSON_CreateObject();
        cJSON_AddItemToObject(
            rp, "rope_type",
            cJSON_CreateString(r->type == CONFIG_ROPE_LLAMA3 ? "llama3" : "default"));
        char s[40];
        config_format_float(r->theta, s, sizeof(s));
        cJSON_AddItemToObject(rp, "rope_theta", number_with_lexeme(r->theta, s));
        if (r->type == CONFIG_ROPE_LLAMA3) {
            config_format_float(r->factor, s, sizeof(s));
            cJSON_AddItemToObject(rp, "factor", number_with_lexeme(r->factor, s));
            config_format_float(r->low_freq_factor, s, sizeof(s));
            cJSON_AddItemToObject(rp, "low_freq_factor", number_with_lexeme(r->low_freq_factor, s));
            config_format_float(r->high_freq_factor, s, sizeof(s));
            cJSON_AddItemToObject(rp, "high_freq_factor",
                                  number_with_lexeme(r->high_freq_factor, s));
            snprintf(s, sizeof(s), "%d", r->original_max_position_embeddings);
            cJSON_AddItemToObject(rp, "original_max_position_embeddings",
                                  number_with_lexeme(r->original_max_position_embeddings, s));
        }
        set_item(c, "rope_parameters", rp);
        config_delete(c, "rope_theta");
        config_delete(c, "rope_scaling");
        config_delete(c, "torch_dtype");
        config_set_string(c, "dtype", dtype);
    } else {
        config_set_float(c, "rope_theta", r->theta);
        if (r->type == CONFIG_ROPE_LLAMA3) {
            cJSON *rs = cJSON_CreateObject();
            char s[40];
            config_format_float(r->factor, s, sizeof(s));
            cJSON_AddItemToObject(rs, "factor", number_with_lexeme(r->factor, s));
            config_format_float(r->high_freq_factor, s, sizeof(s));
            cJSON_AddItemToObject(rs, "high_freq_factor",
                                  number_with_lexeme(r->high_freq_factor, s));
            config_format_float(r->low_freq_factor, s, sizeof(s));
            cJSON_AddItemToObject(rs, "low_freq_factor", number_with_lexeme(r->low_freq_factor, s));
            snprintf(s, sizeof(s), "%d", r->original_max_position_embeddings);
            cJSON_AddItemToObject(rs, "original_max_position_embeddings",
                                  number_with_lexeme(r->original_max_position_embeddings, s));
            cJSON_AddItemToObject(rs, "rope_type", cJSON_CreateString("llama3"));
            set_item(c, "rope_scaling", rs);
        } else {
            config_set_null(c, "rope_scaling");
        }
        config_delete(c, "rope_parameters");
        /* Both keys: torch_dtype for 4.5x readers, dtype for >= 4.56 (spec section 4). */
        config_set_string(c, "torch_dtype", dtype);
        config_set_string(c, "dtype", dtype);
    }
    return config_reparse(c, err);
}

/* ---- derived per-layer facts ------------------------------------------------------------- */

int config_layer_rope(const struct config *c, int l)
{
    if (c->fam->window != FAMILY_WINDOW_EXAONE4 || c->sliding_window == 0)
        return 1;
    return c->layer_types[l] == CONFIG_LAYER_SLIDING;
}

int config_layer_window(const struct config *c, int l)
{
    if (c->sliding_window > 0 && c->layer_types[l] == CONFIG_LAYER_SLIDING)
        return c->sliding_window;
    return 0;
}

void config_rope_inv_freq(const struct config *c, float *inv)
{
    int d = c->head_dim, half = d / 2;
    float base = (float)c->rope.theta;
    for (int i = 0; i < half; i++) {
        /* torch: base ** (arange(0, d, 2).float() / d), fp32, then 1.0 / that. */
        float e = (float)(2 * i) / (float)d;
        float p = (float)pow((double)base, (double)e);
        inv[i] = 1.0f / p;
    }
    if (c->rope.type != CONFIG_ROPE_LLAMA3)
        return;
    /* transformers _compute_llama3_parameters, in fp32. */
    float factor = (float)c->rope.factor, low = (float)c->rope.low_freq_factor;
    float high = (float)c->rope.high_freq_factor;
    float orig = (float)c->rope.original_max_position_embeddings;
    float low_wl = orig / low, high_wl = orig / high;
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int i = 0; i < half; i++) {
        float wl = two_pi / inv[i];
        float v = inv[i];
        if (wl > low_wl)
            v = inv[i] / factor;
        if (!(wl < high_wl) && !(wl > low_wl)) {
            float s = (orig / wl - low) / (high - low);
            /* (1 - s) * inv / factor + s * inv, evaluated left to right as in Python. */
            v = (1.0f - s) * inv[i] / factor + s * inv[i];
        }
        inv[i] = v;
    }
}
