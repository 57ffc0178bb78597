/*
 * jinja: a Jinja2 subset for chat templates (see jinja.h and docs/chat-templates.md).
 *
 * DESIGN. Three passes over a template: the lexer turns the source into tokens and applies
 * the whitespace rules (newline normalisation, one trailing newline dropped, trim_blocks,
 * lstrip_blocks, '-' and '+' markers) exactly as jinja2's lexer does, so the parser never sees
 * whitespace questions; the parser builds a tree of statements and expressions with jinja2's
 * operator precedence (filters and tests bind tighter than arithmetic, '~' tighter than '+');
 * the renderer walks the tree. Scopes follow jinja2: the body of a for loop gets a fresh scope
 * on every iteration (so a `set` inside a loop does not outlive the iteration), a macro call
 * gets its own scope whose parent is the template's top level, `if` makes no scope. Every value
 * lives in the context's arena and is never freed alone; rendering a chat template allocates a
 * few hundred kilobytes at most.
 */
#include "worker/engine/jinja.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/engine/unicode_tab.h"

/* ============================================================================================
 * Arena
 * ========================================================================================== */

struct ablock {
    struct ablock *next;
    size_t used, cap;
    max_align_t data[];
};

struct arena {
    struct ablock *head;
};

static void *amalloc(struct arena *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 32768 ? n : 32768;
        struct ablock *b = xmalloc(sizeof(*b) + cap);
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

static void arena_release(struct arena *a)
{
    while (a->head) {
        struct ablock *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

static char *astrndup(struct arena *a, const char *s, size_t n)
{
    char *p = amalloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ============================================================================================
 * Values
 * ========================================================================================== */

enum vk {
    V_UNDEF = 0,
    V_NONE,
    V_BOOL,
    V_INT,
    V_FLOAT,
    V_STR,
    V_LIST,
    V_DICT,
    V_MACRO,
    V_NS,     /* namespace(): attributes, settable */
    V_LOOP,   /* the loop variable: attributes */
    V_FUNC,   /* a global function */
    V_METHOD, /* a bound method of a str, list or dict */
};

enum gfn { G_RANGE = 1, G_NAMESPACE, G_RAISE, G_STRFTIME, G_DICT };

struct node;

struct jval {
    enum vk k;
    bool tuple; /* a V_LIST that prints as a tuple */
    int64_t i;  /* V_BOOL, V_INT, V_FUNC id */
    double f;
    const char *s; /* V_STR bytes (NUL-terminated); V_UNDEF hint; V_METHOD name */
    size_t n;      /* V_STR byte length; V_LIST/V_DICT/V_NS/V_LOOP entries */
    size_t cap;
    struct jval **items; /* V_LIST items; V_DICT/V_NS/V_LOOP values */
    struct jval **keys;  /* V_DICT/V_NS/V_LOOP keys (strings; dicts may hold other keys) */
    struct jval *self;   /* V_METHOD */
    const struct node *macro;
};

struct jinja_ctx {
    struct arena a;
    struct jval *vars; /* a dict of the bound variables */
};

static struct jval g_none = { .k = V_NONE };
static struct jval g_true = { .k = V_BOOL, .i = 1 };
static struct jval g_false = { .k = V_BOOL, .i = 0 };

static struct jval *vnew(struct arena *a, enum vk k)
{
    struct jval *v = amalloc(a, sizeof(*v));
    v->k = k;
    return v;
}

static struct jval *vstrn(struct arena *a, const char *s, size_t n)
{
    struct jval *v = vnew(a, V_STR);
    v->s = astrndup(a, s, n);
    v->n = n;
    return v;
}

static struct jval *vstr(struct arena *a, const char *s)
{
    return vstrn(a, s, strlen(s));
}

static struct jval *vint(struct arena *a, int64_t i)
{
    struct jval *v = vnew(a, V_INT);
    v->i = i;
    return v;
}

static struct jval *vfloat(struct arena *a, double f)
{
    struct jval *v = vnew(a, V_FLOAT);
    v->f = f;
    return v;
}

static struct jval *vbool(bool b)
{
    return b ? &g_true : &g_false;
}

static struct jval *vundef(struct arena *a, const char *hint)
{
    struct jval *v = vnew(a, V_UNDEF);
    v->s = hint ? astrndup(a, hint, strlen(hint)) : NULL;
    return v;
}

static void vgrow(struct arena *a, struct jval *v, bool keys)
{
    if (v->n < v->cap)
        return;
    size_t cap = v->cap ? v->cap * 2 : 4;
    struct jval **it = amalloc(a, cap * sizeof(*it));
    if (v->n)
        memcpy(it, v->items, v->n * sizeof(*it));
    v->items = it;
    if (keys) {
        struct jval **ks = amalloc(a, cap * sizeof(*ks));
        if (v->n)
            memcpy(ks, v->keys, v->n * sizeof(*ks));
        v->keys = ks;
    }
    v->cap = cap;
}

static void lpush(struct arena *a, struct jval *l, struct jval *x)
{
    vgrow(a, l, false);
    l->items[l->n++] = x;
}

static bool veq(const struct jval *x, const struct jval *y);

static long dfind(const struct jval *d, const struct jval *key)
{
    for (size_t i = 0; i < d->n; i++)
        if (veq(d->keys[i], key))
            return (long)i;
    return -1;
}

static long dfind_s(const struct jval *d, const char *key, size_t n)
{
    for (size_t i = 0; i < d->n; i++) {
        const struct jval *k = d->keys[i];
        if (k->k == V_STR && k->n == n && !memcmp(k->s, key, n))
            return (long)i;
    }
    return -1;
}

static void dput(struct arena *a, struct jval *d, struct jval *key, struct jval *val)
{
    long i = dfind(d, key);
    if (i >= 0) {
        d->items[i] = val;
        return;
    }
    vgrow(a, d, true);
    d->keys[d->n] = key;
    d->items[d->n++] = val;
}

static struct jval *dget_s(const struct jval *d, const char *key)
{
    long i = dfind_s(d, key, strlen(key));
    return i < 0 ? NULL : d->items[i];
}

static const char *kind_name(const struct jval *v)
{
    switch (v->k) {
    case V_UNDEF:
        return "Undefined";
    case V_NONE:
        return "NoneType";
    case V_BOOL:
        return "bool";
    case V_INT:
        return "int";
    case V_FLOAT:
        return "float";
    case V_STR:
        return "str";
    case V_LIST:
        return v->tuple ? "tuple" : "list";
    case V_DICT:
        return "dict";
    case V_MACRO:
        return "Macro";
    case V_NS:
        return "Namespace";
    case V_LOOP:
        return "LoopContext";
    case V_FUNC:
        return "function";
    case V_METHOD:
        return "method";
    }
    return "object";
}

static bool is_num(const struct jval *v)
{
    return v->k == V_INT || v->k == V_FLOAT || v->k == V_BOOL;
}

static double num_f(const struct jval *v)
{
    return v->k == V_FLOAT ? v->f : (double)v->i;
}

static bool truthy(const struct jval *v)
{
    switch (v->k) {
    case V_UNDEF:
    case V_NONE:
        return false;
    case V_BOOL:
    case V_INT:
        return v->i != 0;
    case V_FLOAT:
        return v->f != 0.0;
    case V_STR:
        return v->n > 0;
    case V_LIST:
    case V_DICT:
        return v->n > 0;
    default:
        return true;
    }
}

static bool veq(const struct jval *x, const struct jval *y)
{
    if (is_num(x) && is_num(y)) {
        if (x->k != V_FLOAT && y->k != V_FLOAT)
            return x->i == y->i;
        return num_f(x) == num_f(y);
    }
    if (x->k != y->k)
        return false;
    switch (x->k) {
    case V_UNDEF:
    case V_NONE:
        return true;
    case V_STR:
        return x->n == y->n && !memcmp(x->s, y->s, x->n);
    case V_LIST:
        if (x->n != y->n || x->tuple != y->tuple)
            return false;
        for (size_t i = 0; i < x->n; i++)
            if (!veq(x->items[i], y->items[i]))
                return false;
        return true;
    case V_DICT:
        if (x->n != y->n)
            return false;
        for (size_t i = 0; i < x->n; i++) {
            long j = dfind(y, x->keys[i]);
            if (j < 0 || !veq(x->items[i], y->items[j]))
                return false;
        }
        return true;
    default:
        return x == y;
    }
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

static size_t u8_dec(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) {
        *cp = u[0];
        return 1;
    }
    if ((u[0] & 0xE0) == 0xC0) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if ((u[0] & 0xF0) == 0xE0 && n >= 3) {
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    if ((u[0] & 0xF8) == 0xF0 && n >= 4) {
        *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
              ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
        return 4;
    }
    *cp = u[0];
    return 1;
}

static void u8_put(struct buf *b, uint32_t cp)
{
    char t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (char)(0xC0 | (cp >> 6));
        t[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (char)(0xE0 | (cp >> 12));
        t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | (cp >> 18));
        t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        t[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(b, t, n);
}

/* Byte offsets of each code point of s, plus one past the end (caller frees). */
static size_t *u8_offsets(const char *s, size_t n, size_t *ncp)
{
    size_t *off = xmalloc((n + 1) * sizeof(*off)), k = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        off[k++] = i;
        i += u8_dec(s + i, n - i, &cp);
    }
    off[k] = n;
    *ncp = k;
    return off;
}

static size_t u8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static bool py_space(uint32_t cp)
{
    /* str.isspace(): White_Space plus the separators Python adds (U+001C..U+001F). */
    if (cp >= 0x1C && cp <= 0x1F)
        return true;
    return cp < 0x110000 && (utab_class(cp) & UTAB_WS);
}

static uint32_t cp_upper(uint32_t c)
{
    if (c >= 'a' && c <= 'z')
        return c - 32;
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7))
        return c - 32;
    if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2)
        return c - 32;
    if (c >= 0x430 && c <= 0x44F)
        return c - 32;
    if (c >= 0x450 && c <= 0x45F)
        return c - 80;
    return c;
}

static uint32_t cp_lower(uint32_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if ((c >= 0xC0 && c <= 0xDE && c != 0xD7))
        return c + 32;
    if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2)
        return c + 32;
    if (c >= 0x410 && c <= 0x42F)
        return c + 32;
    if (c >= 0x400 && c <= 0x40F)
        return c + 80;
    return c;
}

static bool cp_cased(uint32_t c)
{
    return cp_upper(c) != c || cp_lower(c) != c;
}

/* ---- printing: Python str()/repr() ------------------------------------------------------- */

static void print_float(struct buf *b, double d)
{
    if (isnan(d)) {
        buf_puts(b, "nan");
        return;
    }
    if (isinf(d)) {
        buf_puts(b, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0) {
        buf_puts(b, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest digits that read back to d, then Python's repr layout. */
    char t[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(t, sizeof(t), "%.*e", prec - 1, d);
        if (strtod(t, NULL) == d)
            break;
    }
    /* t is [-]D[.DDD]e[+-]XX */
    char digits[24];
    int nd = 0, neg = 0;
    const char *p = t;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    int exp = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    if (neg)
        buf_puts(b, "-");
    if (exp < -4 || exp >= 16) {
        buf_append(b, digits, 1);
        if (nd > 1) {
            buf_puts(b, ".");
            buf_append(b, digits + 1, (size_t)nd - 1);
        }
        buf_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        buf_puts(b, "0.");
        for (int i = 0; i < -exp - 1; i++)
            buf_puts(b, "0");
        buf_append(b, digits, (size_t)nd);
    } else {
        if (nd <= exp + 1) {
            buf_append(b, digits, (size_t)nd);
            for (int i = nd; i < exp + 1; i++)
                buf_puts(b, "0");
            buf_puts(b, ".0");
        } else {
            buf_append(b, digits, (size_t)exp + 1);
            buf_puts(b, ".");
            buf_append(b, digits + exp + 1, (size_t)(nd - exp - 1));
        }
    }
}

static void print_repr(struct buf *b, const struct jval *v);

static void print_str_repr(struct buf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = (sq && !dq) ? '"' : '\'';
    buf_append(b, &q, 1);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = u8_dec(s + i, n - i, &cp);
        if (cp == (uint32_t)q || cp == '\\')
            buf_printf(b, "\\%c", (char)cp);
        else if (cp == '\n')
            buf_puts(b, "\\n");
        else if (cp == '\r')
            buf_puts(b, "\\r");
        else if (cp == '\t')
            buf_puts(b, "\\t");
        else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0))
            buf_printf(b, "\\x%02x", cp);
        else
            buf_append(b, s + i, l);
        i += l;
    }
    buf_append(b, &q, 1);
}

static void print_seq(struct buf *b, const struct jval *v)
{
    if (v->k == V_LIST) {
        buf_puts(b, v->tuple ? "(" : "[");
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_puts(b, ", ");
            print_repr(b, v->items[i]);
        }
        if (v->tuple && v->n == 1)
            buf_puts(b, ",");
        buf_puts(b, v->tuple ? ")" : "]");
        return;
    }
    buf_puts(b, "{");
    for (size_t i = 0; i < v->n; i++) {
        if (i)
            buf_puts(b, ", ");
        print_repr(b, v->keys[i]);
        buf_puts(b, ": ");
        print_repr(b, v->items[i]);
    }
    buf_puts(b, "}");
}

/* Python str(v); Undefined prints as nothing. */
static void print_str(struct buf *b, const struct jval *v)
{
    switch (v->k) {
    case V_UNDEF:
        return;
    case V_NONE:
        buf_puts(b, "None");
        return;
    case V_BOOL:
        buf_puts(b, v->i ? "True" : "False");
        return;
    case V_INT:
        buf_printf(b, "%lld", (long long)v->i);
        return;
    case V_FLOAT:
        print_float(b, v->f);
        return;
    case V_STR:
        buf_append(b, v->s, v->n);
        return;
    case V_LIST:
    case V_DICT:
        print_seq(b, v);
        return;
    case V_NS:
        buf_puts(b, "<Namespace ");
        {
            struct jval d = *v;
            d.k = V_DICT;
            print_seq(b, &d);
        }
        buf_puts(b, ">");
        return;
    default:
        buf_printf(b, "<%s>", kind_name(v));
        return;
    }
}

static void print_repr(struct buf *b, const struct jval *v)
{
    if (v->k == V_STR)
        print_str_repr(b, v->s, v->n);
    else
        print_str(b, v);
}

/* ---- JSON out: Python json.dumps ---------------------------------------------------------- */

struct jopt {
    const char *indent; /* NULL: no newlines */
    const char *item_sep, *key_sep;
    bool ascii, sort_keys;
};

static void json_string(struct buf *b, const char *s, size_t n, bool ascii)
{
    buf_puts(b, "\"");
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = u8_dec(s + i, n - i, &cp);
        switch (cp) {
        case '"':
            buf_puts(b, "\\\"");
            break;
        case '\\':
            buf_puts(b, "\\\\");
            break;
        case '\n':
            buf_puts(b, "\\n");
            break;
        case '\r':
            buf_puts(b, "\\r");
            break;
        case '\t':
            buf_puts(b, "\\t");
            break;
        case '\b':
            buf_puts(b, "\\b");
            break;
        case '\f':
            buf_puts(b, "\\f");
            break;
        default:
            if (cp < 0x20)
                buf_printf(b, "\\u%04x", cp);
            else if (ascii && cp >= 0x7F) {
                if (cp >= 0x10000) {
                    uint32_t c = cp - 0x10000;
                    buf_printf(b, "\\u%04x\\u%04x", 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF));
                } else
                    buf_printf(b, "\\u%04x", cp);
            } else
                buf_append(b, s + i, l);
        }
        i += l;
    }
    buf_puts(b, "\"");
}

static void json_nl(struct buf *b, const struct jopt *o, int level)
{
    buf_puts(b, "\n");
    for (int i = 0; i < level; i++)
        buf_puts(b, o->indent);
}

static int str_cmp(const struct jval *x, const struct jval *y)
{
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->n < y->n ? -1 : x->n > y->n);
}

static int json_dump(struct buf *b, const struct jval *v, const struct jopt *o, int level,
                     char **err)
{
    switch (v->k) {
    case V_NONE:
        buf_puts(b, "null");
        return 0;
    case V_BOOL:
        buf_puts(b, v->i ? "true" : "false");
        return 0;
    case V_INT:
        buf_printf(b, "%lld", (long long)v->i);
        return 0;
    case V_FLOAT:
        if (isnan(v->f))
            buf_puts(b, "NaN");
        else if (isinf(v->f))
            buf_puts(b, v->f < 0 ? "-Infinity" : "Infinity");
        else
            print_float(b, v->f);
        return 0;
    case V_STR:
        json_string(b, v->s, v->n, o->ascii);
        return 0;
    case V_LIST:
        if (!v->n) {
            buf_puts(b, "[]");
            return 0;
        }
        buf_puts(b, "[");
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_puts(b, o->item_sep);
            if (o->indent)
                json_nl(b, o, level + 1);
            if (json_dump(b, v->items[i], o, level + 1, err))
                return -1;
        }
        if (o->indent)
            json_nl(b, o, level);
        buf_puts(b, "]");
        return 0;
    case V_DICT:
    case V_NS: {
        if (!v->n) {
            buf_puts(b, "{}");
            return 0;
        }
        size_t *ord = xmalloc(v->n * sizeof(*ord));
        for (size_t i = 0; i < v->n; i++)
            ord[i] = i;
        if (o->sort_keys) /* insertion sort: dicts in templates are small */
            for (size_t i = 1; i < v->n; i++)
                for (size_t j = i; j > 0; j--) {
                    const struct jval *a = v->keys[ord[j - 1]], *c = v->keys[ord[j]];
                    if (a->k == V_STR && c->k == V_STR && str_cmp(a, c) > 0) {
                        size_t t = ord[j];
                        ord[j] = ord[j - 1];
                        ord[j - 1] = t;
                    } else
                        break;
                }
        buf_puts(b, "{");
        for (size_t x = 0; x < v->n; x++) {
            size_t i = ord[x];
            const struct jval *k = v->keys[i];
            if (x)
                buf_puts(b, o->item_sep);
            if (o->indent)
                json_nl(b, o, level + 1);
            if (k->k == V_STR)
                json_string(b, k->s, k->n, o->ascii);
            else if (k->k == V_INT || k->k == V_FLOAT || k->k == V_BOOL || k->k == V_NONE) {
                struct buf t;
                buf_init(&t);
                if (k->k == V_NONE || k->k == V_BOOL)
                    json_dump(&t, k, o, 0, err);
                else
                    print_str(&t, k);
                json_string(b, t.data ? t.data : "", t.len, o->ascii);
                buf_release(&t);
            } else {
                free(ord);
                err_setf(err, "keys must be str, int, float, bool or None, not %s", kind_name(k));
                return -1;
            }
            buf_puts(b, o->key_sep);
            if (json_dump(b, v->items[i], o, level + 1, err)) {
                free(ord);
                return -1;
            }
        }
        free(ord);
        if (o->indent)
            json_nl(b, o, level);
        buf_puts(b, "}");
        return 0;
    }
    default:
        err_setf(err, "Object of type %s is not JSON serializable", kind_name(v));
        return -1;
    }
}

/* ---- JSON in ------------------------------------------------------------------------------ */

struct jparse {
    struct arena *a;
    const char *s, *end;
    const char *err;
};

static void jp_ws(struct jparse *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static struct jval *jp_value(struct jparse *p, int depth);

static struct jval *jp_string(struct jparse *p)
{
    struct buf b;
    buf_init(&b);
    p->s++; /* opening quote */
    while (p->s < p->end && *p->s != '"') {
        unsigned char c = (unsigned char)*p->s;
        if (c < 0x20) {
            p->err = "control character in a string";
            goto fail;
        }
        if (c != '\\') {
            buf_append(&b, p->s++, 1);
            continue;
        }
        if (p->end - p->s < 2) {
            p->err = "unterminated string";
            goto fail;
        }
        char e = p->s[1];
        p->s += 2;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            buf_append(&b, &e, 1);
            break;
        case 'n':
            buf_puts(&b, "\n");
            break;
        case 't':
            buf_puts(&b, "\t");
            break;
        case 'r':
            buf_puts(&b, "\r");
            break;
        case 'b':
            buf_puts(&b, "\b");
            break;
        case 'f':
            buf_puts(&b, "\f");
            break;
        case 'u': {
            uint32_t cp, lo;
            if (p->end - p->s < 4 || hex4(p->s, &cp)) {
                p->err = "bad \\u escape";
                goto fail;
            }
            p->s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p->end - p->s >= 6 && p->s[0] == '\\' &&
                p->s[1] == 'u' && !hex4(p->s + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p->s += 6;
            }
            u8_put(&b, cp);
            break;
        }
        default:
            p->err = "bad escape in a string";
            goto fail;
        }
    }
    if (p->s >= p->end) {
        p->err = "unterminated string";
        goto fail;
    }
    p->s++;
    struct jval *v = vstrn(p->a, b.data ? b.data : "", b.len);
    buf_release(&b);
    return v;
fail:
    buf_release(&b);
    return NULL;
}

static struct jval *jp_value(struct jparse *p, int depth)
{
    if (depth > 512) {
        p->err = "nesting too deep";
        return NULL;
    }
    jp_ws(p);
    if (p->s >= p->end) {
        p->err = "unexpected end of input";
        return NULL;
    }
    char c = *p->s;
    if (c == '"')
        return jp_string(p);
    if (c == '{' || c == '[') {
        bool obj = c == '{';
        struct jval *v = vnew(p->a, obj ? V_DICT : V_LIST);
        p->s++;
        jp_ws(p);
        if (p->s < p->end && *p->s == (obj ? '}' : ']')) {
            p->s++;
            return v;
        }
        for (;;) {
            struct jval *k = NULL;
            if (obj) {
                jp_ws(p);
                if (p->s >= p->end || *p->s != '"') {
                    p->err = "expected a string key";
                    return NULL;
                }
                if (!(k = jp_string(p)))
                    return NULL;
                jp_ws(p);
                if (p->s >= p->end || *p->s != ':') {
                    p->err = "expected ':'";
                    return NULL;
                }
                p->s++;
            }
            struct jval *x = jp_value(p, depth + 1);
            if (!x)
                return NULL;
            if (obj)
                dput(p->a, v, k, x);
            else
                lpush(p->a, v, x);
            jp_ws(p);
            if (p->s < p->end && *p->s == ',') {
                p->s++;
                continue;
            }
            if (p->s < p->end && *p->s == (obj ? '}' : ']')) {
                p->s++;
                return v;
            }
            p->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
            return NULL;
        }
    }
    if (!strncmp(p->s, "true", 4) && p->end - p->s >= 4) {
        p->s += 4;
        return &g_true;
    }
    if (!strncmp(p->s, "false", 5) && p->end - p->s >= 5) {
        p->s += 5;
        return &g_false;
    }
    if (!strncmp(p->s, "null", 4) && p->end - p->s >= 4) {
        p->s += 4;
        return &g_none;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        const char *q = p->s;
        bool flt = false;
        if (*q == '-')
            q++;
        if (q >= p->end || !(*q >= '0' && *q <= '9')) {
            p->err = "bad number";
            return NULL;
        }
        while (q < p->end && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' ||
                              *q == '+' || *q == '-')) {
            if (*q == '.' || *q == 'e' || *q == 'E')
                flt = true;
            q++;
        }
        char t[64];
        size_t n = (size_t)(q - p->s);
        if (n >= sizeof(t)) {
            flt = true;
            n = sizeof(t) - 1;
        }
        memcpy(t, p->s, n);
        t[n] = 0;
        p->s = q;
        char *e;
        errno = 0;
        if (!flt) {
            long long i = strtoll(t, &e, 10);
            if (!*e && errno != ERANGE)
                return vint(p->a, i);
        }
        double d = strtod(t, &e);
        if (*e) {
            p->err = "bad number";
            return NULL;
        }
        return vfloat(p->a, d);
    }
    p->err = "unexpected character";
    return NULL;
}

/* ============================================================================================
 * Lexer
 * ========================================================================================== */

enum tt {
    T_EOF = 0,
    T_DATA,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
};

struct token {
    enum tt t;
    int line, col;
    const char *s; /* NUL-terminated text: data, name, string value, operator */
    size_t n;
    int64_t i;
    double f;
};

struct node;

struct jinja_tpl {
    struct arena a;
    struct node *body;
};

struct lexer {
    struct arena *a;
    const char *src;
    size_t n;
    size_t *lines; /* offsets of line starts */
    size_t nlines;
    struct token *toks;
    size_t ntoks, cap;
    char *err;
};

static void lex_pos(const struct lexer *L, size_t off, int *line, int *col)
{
    size_t lo = 0, hi = L->nlines;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (L->lines[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    *line = (int)lo + 1;
    *col = (int)u8_len(L->src + L->lines[lo], off - L->lines[lo]) + 1;
}

static struct token *lex_add(struct lexer *L, enum tt t, size_t off, const char *s, size_t n)
{
    if (L->ntoks == L->cap) {
        L->cap = L->cap ? L->cap * 2 : 256;
        L->toks = xrealloc(L->toks, L->cap * sizeof(*L->toks));
    }
    struct token *k = &L->toks[L->ntoks++];
    memset(k, 0, sizeof(*k));
    k->t = t;
    lex_pos(L, off, &k->line, &k->col);
    k->s = astrndup(L->a, s, n);
    k->n = n;
    return k;
}

static int lex_fail(struct lexer *L, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int lex_fail(struct lexer *L, size_t off, const char *fmt, ...)
{
    int line, col;
    lex_pos(L, off, &line, &col);
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    free(L->err);
    L->err = xasprintf("line %d:%d: %s", line, col, m);
    free(m);
    return -1;
}

static bool c_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool c_name0(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool c_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Python's "unicode-escape" decoding of a string literal body. */
static int lex_unescape(struct lexer *L, size_t off, const char *s, size_t n, struct buf *b)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            buf_append(b, s + i, 1);
            continue;
        }
        char e = s[++i];
        uint32_t cp = 0;
        int hex = 0;
        switch (e) {
        case '\n':
            break;
        case '\\':
        case '\'':
        case '"':
            buf_append(b, &e, 1);
            break;
        case 'n':
            buf_puts(b, "\n");
            break;
        case 't':
            buf_puts(b, "\t");
            break;
        case 'r':
            buf_puts(b, "\r");
            break;
        case 'a':
            buf_puts(b, "\a");
            break;
        case 'b':
            buf_puts(b, "\b");
            break;
        case 'f':
            buf_puts(b, "\f");
            break;
        case 'v':
            buf_puts(b, "\v");
            break;
        case 'x':
            hex = 2;
            break;
        case 'u':
            hex = 4;
            break;
        case 'U':
            hex = 8;
            break;
        default:
            if (e >= '0' && e <= '7') {
                int k = 0;
                while (k < 3 && i < n && s[i] >= '0' && s[i] <= '7') {
                    cp = cp * 8 + (uint32_t)(s[i] - '0');
                    i++;
                    k++;
                }
                i--;
                u8_put(b, cp);
            } else {
                buf_puts(b, "\\");
                buf_append(b, &e, 1);
            }
        }
        if (hex) {
            if (i + (size_t)hex >= n)
                return lex_fail(L, off, "truncated \\%c escape in a string", e);
            for (int k = 1; k <= hex; k++) {
                char c = s[i + (size_t)k];
                cp <<= 4;
                if (c >= '0' && c <= '9')
                    cp |= (uint32_t)(c - '0');
                else if (c >= 'a' && c <= 'f')
                    cp |= (uint32_t)(c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                    cp |= (uint32_t)(c - 'A' + 10);
                else
                    return lex_fail(L, off, "bad \\%c escape in a string", e);
            }
            if (cp >= 0x110000)
                return lex_fail(L, off, "bad \\%c escape in a string", e);
            i += (size_t)hex;
            u8_put(b, cp);
        }
    }
    return 0;
}

static const char *const OPS[] = { "**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                   "/",  "%",  "~",  "<",  ">",  "(",  ")", "[", "]",
                                   "{",  "}",  ",",  ".",  ":",  "|",  "=", ";", NULL };

/* Tokens inside a tag from *pp up to and including its end marker. */
static int lex_tag(struct lexer *L, size_t *pp, bool block, bool *line_starting)
{
    const char *s = L->src;
    size_t p = *pp, n = L->n;
    int depth = 0;
    for (;;) {
        while (p < n && c_space(s[p]))
            p++;
        if (p >= n)
            return lex_fail(L, p, "unexpected end of template: tag not closed");
        if (depth == 0) {
            const char *end = block ? "%}" : "}}";
            if (s[p] == '-' && p + 2 < n && !strncmp(s + p + 1, end, 2)) {
                lex_add(L, block ? T_BLOCK_END : T_VAR_END, p, "", 0);
                p += 3;
                while (p < n && c_space(s[p]))
                    p++;
                *line_starting = p > 0 && s[p - 1] == '\n';
                *pp = p;
                return 0;
            }
            if (block && s[p] == '+' && p + 2 < n && !strncmp(s + p + 1, end, 2)) {
                lex_add(L, T_BLOCK_END, p, "", 0);
                p += 3;
                *line_starting = false;
                *pp = p;
                return 0;
            }
            if (p + 1 < n && !strncmp(s + p, end, 2)) {
                lex_add(L, block ? T_BLOCK_END : T_VAR_END, p, "", 0);
                p += 2;
                if (block && p < n && s[p] == '\n')
                    p++; /* trim_blocks */
                *line_starting = s[p - 1] == '\n';
                *pp = p;
                return 0;
            }
        }
        char c = s[p];
        if (c_name0(c)) {
            size_t q = p;
            while (q < n && (c_name0(s[q]) || c_digit(s[q])))
                q++;
            lex_add(L, T_NAME, p, s + p, q - p);
            p = q;
            continue;
        }
        if (c_digit(c)) {
            size_t q = p;
            bool flt = false;
            while (q < n && (c_digit(s[q]) || s[q] == '_'))
                q++;
            if (q + 1 < n && s[q] == '.' && c_digit(s[q + 1])) {
                flt = true;
                q++;
                while (q < n && (c_digit(s[q]) || s[q] == '_'))
                    q++;
            }
            if (q < n && (s[q] == 'e' || s[q] == 'E')) {
                size_t r = q + 1;
                if (r < n && (s[r] == '+' || s[r] == '-'))
                    r++;
                if (r < n && c_digit(s[r])) {
                    flt = true;
                    q = r;
                    while (q < n && c_digit(s[q]))
                        q++;
                }
            }
            char t[64];
            size_t k = 0;
            for (size_t r = p; r < q && k < sizeof(t) - 1; r++)
                if (s[r] != '_')
                    t[k++] = s[r];
            t[k] = 0;
            struct token *tk = lex_add(L, flt ? T_FLOAT : T_INT, p, s + p, q - p);
            if (flt)
                tk->f = strtod(t, NULL);
            else
                tk->i = strtoll(t, NULL, 10);
            p = q;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t q = p + 1;
            while (q < n && s[q] != c) {
                if (s[q] == '\\' && q + 1 < n)
                    q++;
                q++;
            }
            if (q >= n)
                return lex_fail(L, p, "unterminated string");
            struct buf b;
            buf_init(&b);
            if (lex_unescape(L, p, s + p + 1, q - p - 1, &b)) {
                buf_release(&b);
                return -1;
            }
            lex_add(L, T_STRING, p, b.data ? b.data : "", b.len);
            buf_release(&b);
            p = q + 1;
            continue;
        }
        const char *op = NULL;
        for (int k = 0; OPS[k]; k++)
            if (!strncmp(s + p, OPS[k], strlen(OPS[k]))) {
                op = OPS[k];
                break;
            }
        if (!op)
            return lex_fail(L, p, "unexpected character '%c'", c);
        if (*op == '(' || *op == '[' || *op == '{')
            depth++;
        else if ((*op == ')' || *op == ']' || *op == '}') && depth > 0)
            depth--;
        else if (*op == ')' || *op == ']' || *op == '}')
            return lex_fail(L, p, "unexpected '%c'", *op);
        lex_add(L, T_OP, p, op, strlen(op));
        p += strlen(op);
    }
}

static bool all_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!c_space(s[i]))
            return false;
    return true;
}

static int lex_run(struct lexer *L)
{
    const char *s = L->src;
    size_t n = L->n, p = 0;
    bool line_starting = true;
    while (p < n) {
        size_t o = p;
        while (o + 1 < n &&
               !(s[o] == '{' && (s[o + 1] == '{' || s[o + 1] == '%' || s[o + 1] == '#')))
            o++;
        if (o + 1 >= n) {
            lex_add(L, T_DATA, p, s + p, n - p);
            break;
        }
        char kind = s[o + 1];
        char sign = (o + 2 < n && (s[o + 2] == '-' || s[o + 2] == '+')) ? s[o + 2] : 0;
        size_t tlen = o - p;
        if (sign == '-') {
            while (tlen > 0 && c_space(s[p + tlen - 1]))
                tlen--;
        } else if (sign != '+' && kind != '{') {
            size_t lpos = tlen;
            while (lpos > 0 && s[p + lpos - 1] != '\n')
                lpos--;
            bool has_nl = lpos > 0;
            if ((has_nl || line_starting) && lpos < tlen && all_space(s + p + lpos, tlen - lpos))
                tlen = lpos;
        }
        if (tlen)
            lex_add(L, T_DATA, p, s + p, tlen);
        size_t q = o + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t e = q;
            for (;;) {
                while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}'))
                    e++;
                if (e + 1 >= n)
                    return lex_fail(L, o, "missing end of comment tag");
                break;
            }
            if (e > q && s[e - 1] == '-') {
                p = e + 2;
                while (p < n && c_space(s[p]))
                    p++;
            } else if (e > q && s[e - 1] == '+') {
                p = e + 2;
            } else {
                p = e + 2;
                if (p < n && s[p] == '\n')
                    p++;
            }
            line_starting = s[p - 1] == '\n';
            continue;
        }
        lex_add(L, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, o, "", 0);
        p = q;
        if (lex_tag(L, &p, kind == '%', &line_starting))
            return -1;
    }
    lex_add(L, T_EOF, n, "", 0);
    return 0;
}

/* ============================================================================================
 * Syntax tree
 * ========================================================================================== */

enum nk {
    /* statements */
    N_TEXT = 1,
    N_OUTPUT,
    N_IF,
    N_FOR,
    N_SET,
    N_SET_ATTR,
    N_SET_BLOCK,
    N_MACRO,
    N_BREAK,
    N_CONTINUE,
    N_BLOCK, /* a body rendered as is ({% generation %}) */
    /* expressions */
    E_LIT,
    E_NAME,
    E_ATTR,
    E_ITEM,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_BIN,
    E_NOT,
    E_NEG,
    E_POS,
    E_AND,
    E_OR,
    E_COND,
    E_LIST,
    E_TUPLE,
    E_DICT,
    E_CONCAT,
    E_COMPARE,
};

struct nlist {
    struct node **v;
    size_t n, cap;
};

struct node {
    enum nk k;
    int line, col;
    const char *s;    /* text, name, operator, filter/test/attribute name */
    struct jval *lit; /* E_LIT */
    struct node *a, *b, *c;
    struct nlist kids;  /* body, items, positional args, elif conditions, compare operands */
    struct nlist kids2; /* else body, dict values, keyword values, elif bodies */
    const char **names; /* keyword names, for targets, macro params, compare ops */
    size_t nnames;
    bool neg; /* E_TEST: `is not` */
};

static void nl_push(struct arena *a, struct nlist *l, struct node *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct node **v = amalloc(a, cap * sizeof(*v));
        if (l->n)
            memcpy(v, l->v, l->n * sizeof(*v));
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static void names_push(struct arena *a, struct node *x, const char *name)
{
    const char **v = amalloc(a, (x->nnames + 1) * sizeof(*v));
    if (x->nnames)
        memcpy(v, x->names, x->nnames * sizeof(*v));
    v[x->nnames++] = name;
    x->names = v;
}

/* ============================================================================================
 * Parser
 * ========================================================================================== */

struct parser {
    struct arena *a;
    struct token *t;
    size_t i, n;
    char *err;
};

static struct token *cur(struct parser *P)
{
    return &P->t[P->i];
}

static struct token *peek(struct parser *P, size_t k)
{
    return &P->t[P->i + k < P->n ? P->i + k : P->n - 1];
}

static struct token *advance(struct parser *P)
{
    struct token *t = &P->t[P->i];
    if (P->i + 1 < P->n)
        P->i++;
    return t;
}

static void *pfail(struct parser *P, const struct token *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void *pfail(struct parser *P, const struct token *t, const char *fmt, ...)
{
    if (P->err)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    P->err = xasprintf("line %d:%d: %s", t->line, t->col, m);
    free(m);
    return NULL;
}

static const char *tok_desc(const struct token *t)
{
    switch (t->t) {
    case T_EOF:
        return "end of template";
    case T_VAR_END:
        return "'}}'";
    case T_BLOCK_END:
        return "'%}'";
    case T_DATA:
        return "template data";
    default:
        return t->s;
    }
}

static bool is_op(const struct token *t, const char *op)
{
    return t->t == T_OP && !strcmp(t->s, op);
}

static bool is_name(const struct token *t, const char *name)
{
    return t->t == T_NAME && !strcmp(t->s, name);
}

static bool expect_op(struct parser *P, const char *op)
{
    if (!is_op(cur(P), op)) {
        pfail(P, cur(P), "expected '%s', got %s", op, tok_desc(cur(P)));
        return false;
    }
    advance(P);
    return true;
}

static struct node *mk(struct parser *P, enum nk k, const struct token *t)
{
    struct node *x = amalloc(P->a, sizeof(*x));
    x->k = k;
    x->line = t->line;
    x->col = t->col;
    return x;
}

static struct node *p_expr(struct parser *P);
static struct node *p_or(struct parser *P);
static struct node *p_unary(struct parser *P, bool with_filter);
static struct node *p_tuple(struct parser *P, bool with_cond);

static const char *const FILTERS[] = {
    "trim",  "tojson",     "length",     "count",  "default",    "d",        "first",   "last",
    "join",  "selectattr", "rejectattr", "select", "reject",     "map",      "list",    "string",
    "int",   "float",      "upper",      "lower",  "capitalize", "title",    "replace", "reverse",
    "items", "safe",       "abs",        "unique", "sort",       "dictsort", "indent",  "wordcount",
    "sum",   "min",        "max",        "round",  "center",     "truncate", NULL
};
static const char *const TESTS[] = { "defined",  "undefined", "none",     "string",  "mapping",
                                     "iterable", "number",    "sequence", "true",    "false",
                                     "boolean",  "integer",   "float",    "equalto", "eq",
                                     "==",       "ne",        "!=",       "lt",      "<",
                                     "le",       "<=",        "gt",       ">",       "ge",
                                     ">=",       "in",        "odd",      "even",    "divisibleby",
                                     "callable", "lower",     "upper",    "sameas",  "filter",
                                     "test",     NULL };

static bool in_list(const char *const *l, const char *s)
{
    for (; *l; l++)
        if (!strcmp(*l, s))
            return true;
    return false;
}

/* Call arguments after '(' up to ')': positional into x->kids, keywords into names/kids2. */
static bool p_args(struct parser *P, struct node *x)
{
    if (!expect_op(P, "("))
        return false;
    while (!is_op(cur(P), ")")) {
        if (x->kids.n || x->kids2.n)
            if (!expect_op(P, ","))
                return false;
        if (is_op(cur(P), ")"))
            break;
        if (is_op(cur(P), "*") || is_op(cur(P), "**"))
            return pfail(P, cur(P), "unsupported: '*' and '**' arguments"), false;
        if (cur(P)->t == T_NAME && is_op(peek(P, 1), "=")) {
            names_push(P->a, x, advance(P)->s);
            advance(P);
            struct node *v = p_expr(P);
            if (!v)
                return false;
            nl_push(P->a, &x->kids2, v);
        } else {
            if (x->kids2.n)
                return pfail(P, cur(P), "positional argument after a keyword argument"), false;
            struct node *v = p_expr(P);
            if (!v)
                return false;
            nl_push(P->a, &x->kids, v);
        }
    }
    advance(P);
    return true;
}

static struct node *p_primary(struct parser *P)
{
    struct token *t = cur(P);
    struct node *x;
    switch (t->t) {
    case T_NAME:
        advance(P);
        x = mk(P, E_LIT, t);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True"))
            x->lit = &g_true;
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False"))
            x->lit = &g_false;
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None"))
            x->lit = &g_none;
        else {
            x->k = E_NAME;
            x->s = t->s;
        }
        return x;
    case T_STRING: {
        struct buf b;
        buf_init(&b);
        while (cur(P)->t == T_STRING) {
            buf_append(&b, cur(P)->s, cur(P)->n);
            advance(P);
        }
        x = mk(P, E_LIT, t);
        x->lit = vstrn(P->a, b.data ? b.data : "", b.len);
        buf_release(&b);
        return x;
    }
    case T_INT:
        advance(P);
        x = mk(P, E_LIT, t);
        x->lit = vint(P->a, t->i);
        return x;
    case T_FLOAT:
        advance(P);
        x = mk(P, E_LIT, t);
        x->lit = vfloat(P->a, t->f);
        return x;
    case T_OP:
        if (is_op(t, "(")) {
            advance(P);
            if (is_op(cur(P), ")")) {
                advance(P);
                return mk(P, E_TUPLE, t);
            }
            x = p_tuple(P, true);
            if (!x || !expect_op(P, ")"))
                return NULL;
            return x;
        }
        if (is_op(t, "[")) {
            advance(P);
            x = mk(P, E_LIST, t);
            while (!is_op(cur(P), "]")) {
                if (x->kids.n && !expect_op(P, ","))
                    return NULL;
                if (is_op(cur(P), "]"))
                    break;
                struct node *v = p_expr(P);
                if (!v)
                    return NULL;
                nl_push(P->a, &x->kids, v);
            }
            advance(P);
            return x;
        }
        if (is_op(t, "{")) {
            advance(P);
            x = mk(P, E_DICT, t);
            while (!is_op(cur(P), "}")) {
                if (x->kids.n && !expect_op(P, ","))
                    return NULL;
                if (is_op(cur(P), "}"))
                    break;
                struct node *k = p_expr(P);
                if (!k || !expect_op(P, ":"))
                    return NULL;
                struct node *v = p_expr(P);
                if (!v)
                    return NULL;
                nl_push(P->a, &x->kids, k);
                nl_push(P->a, &x->kids2, v);
            }
            advance(P);
            return x;
        }
        break;
    default:
        break;
    }
    return pfail(P, t, "unexpected %s", tok_desc(t));
}

static struct node *p_subscript_part(struct parser *P)
{
    if (is_op(cur(P), ":") || is_op(cur(P), "]") || is_op(cur(P), ","))
        return NULL;
    return p_expr(P);
}

static struct node *p_postfix(struct parser *P, struct node *x)
{
    for (;;) {
        struct token *t = cur(P);
        if (is_op(t, ".")) {
            advance(P);
            struct token *nm = cur(P);
            if (nm->t != T_NAME && nm->t != T_INT)
                return pfail(P, nm, "expected an attribute name after '.'");
            advance(P);
            struct node *y = mk(P, E_ATTR, nm);
            y->a = x;
            if (nm->t == T_INT) {
                y->k = E_ITEM;
                y->b = mk(P, E_LIT, nm);
                y->b->lit = vint(P->a, nm->i);
            } else
                y->s = nm->s;
            x = y;
        } else if (is_op(t, "[")) {
            advance(P);
            struct node *start = p_subscript_part(P);
            if (P->err)
                return NULL;
            if (is_op(cur(P), ":")) {
                struct node *y = mk(P, E_SLICE, t);
                y->a = x;
                advance(P);
                y->kids.n = 0;
                struct node *stop = p_subscript_part(P), *step = NULL;
                if (P->err)
                    return NULL;
                if (is_op(cur(P), ":")) {
                    advance(P);
                    step = p_subscript_part(P);
                    if (P->err)
                        return NULL;
                }
                y->b = start;
                y->c = stop;
                nl_push(P->a, &y->kids, step); /* kids.v[0]: the step (NULL when absent) */
                if (!expect_op(P, "]"))
                    return NULL;
                x = y;
            } else {
                if (!start)
                    return pfail(P, cur(P), "expected a subscript");
                if (!expect_op(P, "]"))
                    return NULL;
                struct node *y = mk(P, E_ITEM, t);
                y->a = x;
                y->b = start;
                x = y;
            }
        } else if (is_op(t, "(")) {
            struct node *y = mk(P, E_CALL, t);
            y->a = x;
            if (!p_args(P, y))
                return NULL;
            x = y;
        } else
            return x;
    }
}

static struct node *p_filters(struct parser *P, struct node *x)
{
    for (;;) {
        struct token *t = cur(P);
        if (is_op(t, "|")) {
            advance(P);
            struct token *nm = cur(P);
            if (nm->t != T_NAME)
                return pfail(P, nm, "expected a filter name after '|'");
            advance(P);
            if (!in_list(FILTERS, nm->s))
                return pfail(P, nm, "unsupported filter '%s'", nm->s);
            struct node *y = mk(P, E_FILTER, nm);
            y->s = nm->s;
            y->a = x;
            if (is_op(cur(P), "(") && !p_args(P, y))
                return NULL;
            x = y;
        } else if (is_name(t, "is")) {
            advance(P);
            struct node *y = mk(P, E_TEST, t);
            if (is_name(cur(P), "not")) {
                y->neg = true;
                advance(P);
            }
            struct token *nm = cur(P);
            if (nm->t != T_NAME && !(nm->t == T_OP && in_list(TESTS, nm->s)))
                return pfail(P, nm, "expected a test name after 'is'");
            advance(P);
            if (!in_list(TESTS, nm->s))
                return pfail(P, nm, "unsupported test '%s'", nm->s);
            y->s = nm->s;
            y->a = x;
            struct token *c = cur(P);
            if (is_op(c, "(")) {
                if (!p_args(P, y))
                    return NULL;
            } else if ((c->t == T_NAME || c->t == T_STRING || c->t == T_INT || c->t == T_FLOAT ||
                        is_op(c, "[") || is_op(c, "{")) &&
                       !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and") &&
                       !is_name(c, "if") && !is_name(c, "in") && !is_name(c, "is") &&
                       !is_name(c, "not")) {
                struct node *arg = p_primary(P);
                if (!arg || !(arg = p_postfix(P, arg)))
                    return NULL;
                nl_push(P->a, &y->kids, arg);
            }
            x = y;
        } else
            return x;
    }
}

static struct node *p_unary(struct parser *P, bool with_filter)
{
    struct token *t = cur(P);
    struct node *x;
    if (is_op(t, "-") || is_op(t, "+")) {
        advance(P);
        x = mk(P, is_op(t, "-") ? E_NEG : E_POS, t);
        if (!(x->a = p_unary(P, false)))
            return NULL;
    } else if (!(x = p_primary(P)))
        return NULL;
    if (!(x = p_postfix(P, x)))
        return NULL;
    if (with_filter)
        x = p_filters(P, x);
    return x;
}

static struct node *bin(struct parser *P, const struct token *t, const char *op, struct node *l,
                        struct node *r)
{
    struct node *x = mk(P, E_BIN, t);
    x->s = op;
    x->a = l;
    x->b = r;
    return x;
}

static struct node *p_pow(struct parser *P)
{
    struct node *x = p_unary(P, true);
    while (x && is_op(cur(P), "**")) {
        struct token *t = advance(P);
        struct node *r = p_unary(P, true);
        if (!r)
            return NULL;
        x = bin(P, t, "**", x, r);
    }
    return x;
}

static struct node *p_math2(struct parser *P)
{
    struct node *x = p_pow(P);
    while (x && (is_op(cur(P), "*") || is_op(cur(P), "/") || is_op(cur(P), "//") ||
                 is_op(cur(P), "%"))) {
        struct token *t = advance(P);
        struct node *r = p_pow(P);
        if (!r)
            return NULL;
        x = bin(P, t, t->s, x, r);
    }
    return x;
}

static struct node *p_concat(struct parser *P)
{
    struct node *x = p_math2(P);
    if (!x || !is_op(cur(P), "~"))
        return x;
    struct node *c = mk(P, E_CONCAT, cur(P));
    nl_push(P->a, &c->kids, x);
    while (is_op(cur(P), "~")) {
        advance(P);
        struct node *r = p_math2(P);
        if (!r)
            return NULL;
        nl_push(P->a, &c->kids, r);
    }
    return c;
}

static struct node *p_math1(struct parser *P)
{
    struct node *x = p_concat(P);
    while (x && (is_op(cur(P), "+") || is_op(cur(P), "-"))) {
        struct token *t = advance(P);
        struct node *r = p_concat(P);
        if (!r)
            return NULL;
        x = bin(P, t, t->s, x, r);
    }
    return x;
}

static struct node *p_compare(struct parser *P)
{
    struct node *x = p_math1(P);
    if (!x)
        return NULL;
    struct node *c = NULL;
    for (;;) {
        struct token *t = cur(P);
        const char *op = NULL;
        if (t->t == T_OP && (!strcmp(t->s, "==") || !strcmp(t->s, "!=") || !strcmp(t->s, "<") ||
                             !strcmp(t->s, "<=") || !strcmp(t->s, ">") || !strcmp(t->s, ">="))) {
            op = t->s;
            advance(P);
        } else if (is_name(t, "in")) {
            op = "in";
            advance(P);
        } else if (is_name(t, "not") && is_name(peek(P, 1), "in")) {
            op = "not in";
            advance(P);
            advance(P);
        } else
            break;
        if (!c) {
            c = mk(P, E_COMPARE, t);
            nl_push(P->a, &c->kids, x);
        }
        struct node *r = p_math1(P);
        if (!r)
            return NULL;
        nl_push(P->a, &c->kids, r);
        names_push(P->a, c, op);
    }
    return c ? c : x;
}

static struct node *p_not(struct parser *P)
{
    if (is_name(cur(P), "not")) {
        struct node *x = mk(P, E_NOT, advance(P));
        if (!(x->a = p_not(P)))
            return NULL;
        return x;
    }
    return p_compare(P);
}

static struct node *p_and(struct parser *P)
{
    struct node *x = p_not(P);
    while (x && is_name(cur(P), "and")) {
        struct node *y = mk(P, E_AND, advance(P));
        y->a = x;
        if (!(y->b = p_not(P)))
            return NULL;
        x = y;
    }
    return x;
}

static struct node *p_or(struct parser *P)
{
    struct node *x = p_and(P);
    while (x && is_name(cur(P), "or")) {
        struct node *y = mk(P, E_OR, advance(P));
        y->a = x;
        if (!(y->b = p_and(P)))
            return NULL;
        x = y;
    }
    return x;
}

static struct node *p_condexpr(struct parser *P)
{
    struct node *x = p_or(P);
    while (x && is_name(cur(P), "if")) {
        struct node *y = mk(P, E_COND, advance(P));
        y->b = x; /* value when true */
        if (!(y->a = p_or(P)))
            return NULL;
        if (is_name(cur(P), "else")) {
            advance(P);
            if (!(y->c = p_condexpr(P)))
                return NULL;
        }
        x = y;
    }
    return x;
}

static struct node *p_expr(struct parser *P)
{
    return p_condexpr(P);
}

static struct node *p_tuple(struct parser *P, bool with_cond)
{
    struct token *t = cur(P);
    struct node *x = with_cond ? p_expr(P) : p_or(P);
    if (!x || !is_op(cur(P), ","))
        return x;
    struct node *tu = mk(P, E_TUPLE, t);
    nl_push(P->a, &tu->kids, x);
    while (is_op(cur(P), ",")) {
        advance(P);
        struct token *c = cur(P);
        if (c->t == T_VAR_END || c->t == T_BLOCK_END || is_op(c, ")") || is_name(c, "in"))
            break;
        struct node *y = with_cond ? p_expr(P) : p_or(P);
        if (!y)
            return NULL;
        nl_push(P->a, &tu->kids, y);
    }
    return tu;
}

/* ---- statements --------------------------------------------------------------------------- */

static bool p_body(struct parser *P, struct nlist *body, const char *const *ends,
                   const char **ended);

static bool expect_block_end(struct parser *P)
{
    if (cur(P)->t != T_BLOCK_END) {
        pfail(P, cur(P), "expected '%%}', got %s", tok_desc(cur(P)));
        return false;
    }
    advance(P);
    return true;
}

static bool p_targets(struct parser *P, struct node *x)
{
    bool paren = is_op(cur(P), "(");
    if (paren)
        advance(P);
    do {
        if (x->nnames && !is_op(cur(P), ","))
            break;
        if (x->nnames)
            advance(P);
        if (cur(P)->t != T_NAME)
            return pfail(P, cur(P), "expected a variable name, got %s", tok_desc(cur(P))), false;
        names_push(P->a, x, advance(P)->s);
    } while (is_op(cur(P), ","));
    if (paren && !expect_op(P, ")"))
        return false;
    return true;
}

static struct node *p_stmt(struct parser *P, struct token *kw)
{
    const char *k = kw->s;
    if (!strcmp(k, "if")) {
        struct node *x = mk(P, N_IF, kw);
        for (;;) {
            struct node *cond = p_tuple(P, false);
            if (!cond || !expect_block_end(P))
                return NULL;
            struct node *body = mk(P, N_BLOCK, kw);
            static const char *const ends[] = { "elif", "else", "endif", NULL };
            const char *ended;
            if (!p_body(P, &body->kids, ends, &ended))
                return NULL;
            nl_push(P->a, &x->kids, cond);
            nl_push(P->a, &x->kids2, body);
            if (!strcmp(ended, "elif"))
                continue;
            if (!strcmp(ended, "else")) {
                if (!expect_block_end(P))
                    return NULL;
                struct node *eb = mk(P, N_BLOCK, kw);
                static const char *const ends2[] = { "endif", NULL };
                if (!p_body(P, &eb->kids, ends2, &ended))
                    return NULL;
                x->c = eb;
            }
            return expect_block_end(P) ? x : NULL;
        }
    }
    if (!strcmp(k, "for")) {
        struct node *x = mk(P, N_FOR, kw);
        if (!p_targets(P, x))
            return NULL;
        if (!is_name(cur(P), "in"))
            return pfail(P, cur(P), "expected 'in', got %s", tok_desc(cur(P)));
        advance(P);
        if (!(x->a = p_tuple(P, false)))
            return NULL;
        if (is_name(cur(P), "if")) {
            advance(P);
            if (!(x->b = p_expr(P)))
                return NULL;
        }
        if (is_name(cur(P), "recursive"))
            return pfail(P, cur(P), "unsupported: recursive loops");
        if (!expect_block_end(P))
            return NULL;
        static const char *const ends[] = { "else", "endfor", NULL };
        const char *ended;
        struct node *body = mk(P, N_BLOCK, kw);
        if (!p_body(P, &body->kids, ends, &ended))
            return NULL;
        x->c = body;
        if (!strcmp(ended, "else")) {
            if (!expect_block_end(P))
                return NULL;
            static const char *const ends2[] = { "endfor", NULL };
            struct node *eb = mk(P, N_BLOCK, kw);
            if (!p_body(P, &eb->kids, ends2, &ended))
                return NULL;
            nl_push(P->a, &x->kids2, eb);
        }
        return expect_block_end(P) ? x : NULL;
    }
    if (!strcmp(k, "set")) {
        struct token *nm = cur(P);
        if (nm->t != T_NAME)
            return pfail(P, nm, "expected a variable name after 'set'");
        if (is_op(peek(P, 1), ".")) {
            struct node *x = mk(P, N_SET_ATTR, kw);
            x->s = advance(P)->s;
            advance(P);
            if (cur(P)->t != T_NAME)
                return pfail(P, cur(P), "expected an attribute name");
            names_push(P->a, x, advance(P)->s);
            if (!expect_op(P, "="))
                return NULL;
            if (!(x->a = p_tuple(P, true)) || !expect_block_end(P))
                return NULL;
            return x;
        }
        struct node *x = mk(P, N_SET, kw);
        if (!p_targets(P, x))
            return NULL;
        if (cur(P)->t == T_BLOCK_END && x->nnames == 1) {
            advance(P);
            x->k = N_SET_BLOCK;
            static const char *const ends[] = { "endset", NULL };
            const char *ended;
            struct node *body = mk(P, N_BLOCK, kw);
            if (!p_body(P, &body->kids, ends, &ended))
                return NULL;
            x->c = body;
            return expect_block_end(P) ? x : NULL;
        }
        if (!expect_op(P, "="))
            return NULL;
        if (!(x->a = p_tuple(P, true)) || !expect_block_end(P))
            return NULL;
        return x;
    }
    if (!strcmp(k, "macro")) {
        struct node *x = mk(P, N_MACRO, kw);
        if (cur(P)->t != T_NAME)
            return pfail(P, cur(P), "expected a macro name");
        x->s = advance(P)->s;
        if (!expect_op(P, "("))
            return NULL;
        while (!is_op(cur(P), ")")) {
            if (x->nnames && !expect_op(P, ","))
                return NULL;
            if (cur(P)->t != T_NAME)
                return pfail(P, cur(P), "expected a parameter name, got %s", tok_desc(cur(P)));
            names_push(P->a, x, advance(P)->s);
            struct node *def = NULL;
            if (is_op(cur(P), "=")) {
                advance(P);
                if (!(def = p_expr(P)))
                    return NULL;
            }
            nl_push(P->a, &x->kids2, def); /* kids2.v[i]: default of parameter i or NULL */
        }
        advance(P);
        if (!expect_block_end(P))
            return NULL;
        static const char *const ends[] = { "endmacro", NULL };
        const char *ended;
        struct node *body = mk(P, N_BLOCK, kw);
        if (!p_body(P, &body->kids, ends, &ended))
            return NULL;
        x->c = body;
        if (cur(P)->t == T_NAME && !strcmp(cur(P)->s, x->s))
            advance(P);
        return expect_block_end(P) ? x : NULL;
    }
    if (!strcmp(k, "break") || !strcmp(k, "continue")) {
        struct node *x = mk(P, !strcmp(k, "break") ? N_BREAK : N_CONTINUE, kw);
        return expect_block_end(P) ? x : NULL;
    }
    if (!strcmp(k, "generation")) {
        if (!expect_block_end(P))
            return NULL;
        struct node *x = mk(P, N_BLOCK, kw);
        static const char *const ends[] = { "endgeneration", NULL };
        const char *ended;
        if (!p_body(P, &x->kids, ends, &ended))
            return NULL;
        return expect_block_end(P) ? x : NULL;
    }
    return pfail(P, kw, "unsupported tag '%s'", k);
}

static bool p_body(struct parser *P, struct nlist *body, const char *const *ends,
                   const char **ended)
{
    for (;;) {
        struct token *t = cur(P);
        if (t->t == T_EOF) {
            if (!ends) {
                *ended = NULL;
                return true;
            }
            struct buf b;
            buf_init(&b);
            for (size_t i = 0; ends[i]; i++)
                buf_printf(&b, "%s'%s'", i ? (ends[i + 1] ? ", " : " or ") : "", ends[i]);
            pfail(P, t, "unexpected end of template: expected %s", b.data);
            buf_release(&b);
            return false;
        }
        if (t->t == T_DATA) {
            advance(P);
            struct node *x = mk(P, N_TEXT, t);
            x->s = t->s;
            x->lit = vstrn(P->a, t->s, t->n);
            nl_push(P->a, body, x);
            continue;
        }
        if (t->t == T_VAR_BEGIN) {
            advance(P);
            struct node *x = mk(P, N_OUTPUT, t);
            if (!(x->a = p_tuple(P, true)))
                return false;
            if (cur(P)->t != T_VAR_END) {
                pfail(P, cur(P), "expected '}}', got %s", tok_desc(cur(P)));
                return false;
            }
            advance(P);
            nl_push(P->a, body, x);
            continue;
        }
        if (t->t == T_BLOCK_BEGIN) {
            advance(P);
            struct token *kw = cur(P);
            if (kw->t != T_NAME) {
                pfail(P, kw, "expected a tag name, got %s", tok_desc(kw));
                return false;
            }
            if (ends && in_list(ends, kw->s)) {
                advance(P);
                *ended = kw->s;
                return true;
            }
            static const char *const closers[] = { "elif",     "else",   "endif",         "endfor",
                                                   "endmacro", "endset", "endgeneration", NULL };
            if (in_list(closers, kw->s)) {
                pfail(P, kw, "unexpected '%s'", kw->s);
                return false;
            }
            advance(P);
            struct node *x = p_stmt(P, kw);
            if (!x)
                return false;
            nl_push(P->a, body, x);
            continue;
        }
        pfail(P, t, "unexpected %s", tok_desc(t));
        return false;
    }
}

struct jinja_tpl *jinja_tpl_parse(const char *src, char **err)
{
    struct jinja_tpl *t = xcalloc(1, sizeof(*t));
    struct lexer L = { 0 };
    L.a = &t->a;
    /* Newlines become \n; one trailing newline goes (keep_trailing_newline=False). */
    size_t n = strlen(src), k = 0;
    char *s = amalloc(&t->a, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < n && src[i + 1] == '\n')
                i++;
        } else
            s[k++] = src[i];
    }
    if (k > 0 && s[k - 1] == '\n')
        k--;
    s[k] = 0;
    L.src = s;
    L.n = k;
    L.lines = xmalloc((k + 2) * sizeof(*L.lines));
    L.lines[L.nlines++] = 0;
    for (size_t i = 0; i < k; i++)
        if (s[i] == '\n')
            L.lines[L.nlines++] = i + 1;
    int rc = lex_run(&L);
    free(L.lines);
    L.lines = NULL;
    if (rc) {
        err_setf(err, "%s", L.err);
        free(L.err);
        free(L.toks);
        jinja_tpl_free(t);
        return NULL;
    }
    /* Token positions were computed while lines[] existed. */
    struct parser P = { &t->a, L.toks, 0, L.ntoks, NULL };
    t->body = amalloc(&t->a, sizeof(*t->body));
    t->body->k = N_BLOCK;
    const char *ended;
    bool ok = p_body(&P, &t->body->kids, NULL, &ended);
    free(L.toks);
    if (!ok) {
        err_setf(err, "%s", P.err ? P.err : "syntax error");
        free(P.err);
        jinja_tpl_free(t);
        return NULL;
    }
    return t;
}

void jinja_tpl_free(struct jinja_tpl *t)
{
    if (!t)
        return;
    arena_release(&t->a);
    free(t);
}

/* ============================================================================================
 * Renderer
 * ========================================================================================== */

struct scope {
    struct scope *parent;
    struct jval *vars; /* V_DICT */
};

struct rs {
    struct arena *a;
    struct scope *root;
    struct jval *globals; /* the context's variables */
    char *err;
    int depth;
};

enum { R_OK = 0, R_BREAK = 1, R_CONTINUE = 2, R_ERR = -1 };

static void *rfail(struct rs *R, const struct node *x, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void *rfail(struct rs *R, const struct node *x, const char *fmt, ...)
{
    if (R->err)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    R->err = xasprintf("line %d:%d: %s", x->line, x->col, m);
    free(m);
    return NULL;
}

static struct scope *scope_new(struct rs *R, struct scope *parent)
{
    struct scope *s = amalloc(R->a, sizeof(*s));
    s->parent = parent;
    s->vars = vnew(R->a, V_DICT);
    return s;
}

static void scope_set(struct rs *R, struct scope *s, const char *name, struct jval *v)
{
    dput(R->a, s->vars, vstr(R->a, name), v);
}

static struct jval *lookup(struct rs *R, struct scope *s, const char *name)
{
    for (; s; s = s->parent) {
        struct jval *v = dget_s(s->vars, name);
        if (v)
            return v;
    }
    struct jval *v = dget_s(R->globals, name);
    if (v)
        return v;
    static const struct {
        const char *name;
        enum gfn id;
    } G[] = { { "range", G_RANGE },
              { "namespace", G_NAMESPACE },
              { "raise_exception", G_RAISE },
              { "strftime_now", G_STRFTIME },
              { "dict", G_DICT } };
    for (size_t i = 0; i < sizeof(G) / sizeof(G[0]); i++)
        if (!strcmp(G[i].name, name)) {
            struct jval *f = vnew(R->a, V_FUNC);
            f->i = G[i].id;
            f->s = G[i].name;
            return f;
        }
    char *h = xasprintf("'%s' is undefined", name);
    v = vundef(R->a, h);
    free(h);
    return v;
}

static struct jval *undef_error(struct rs *R, const struct node *x, const struct jval *u)
{
    return rfail(R, x, "UndefinedError: %s", u->s ? u->s : "value is undefined");
}

static struct jval *eval(struct rs *R, struct scope *s, const struct node *x);
static int exec_body(struct rs *R, struct scope *s, const struct nlist *body, struct buf *out);

/* Arguments of a call, evaluated. */
struct args {
    struct jval **pos;
    size_t npos;
    const char **kwn;
    struct jval **kwv;
    size_t nkw;
};

static bool eval_args(struct rs *R, struct scope *s, const struct node *x, struct args *a)
{
    a->npos = x->kids.n;
    a->nkw = x->kids2.n;
    a->pos = amalloc(R->a, (a->npos + 1) * sizeof(*a->pos));
    a->kwv = amalloc(R->a, (a->nkw + 1) * sizeof(*a->kwv));
    a->kwn = x->names;
    for (size_t i = 0; i < a->npos; i++)
        if (!(a->pos[i] = eval(R, s, x->kids.v[i])))
            return false;
    for (size_t i = 0; i < a->nkw; i++)
        if (!(a->kwv[i] = eval(R, s, x->kids2.v[i])))
            return false;
    return true;
}

/* Argument i by position or by keyword name (NULL when absent). */
static struct jval *arg(const struct args *a, size_t i, const char *name)
{
    if (i < a->npos)
        return a->pos[i];
    for (size_t k = 0; k < a->nkw; k++)
        if (!strcmp(a->kwn[k], name))
            return a->kwv[k];
    return NULL;
}

static struct jval *to_str(struct rs *R, const struct jval *v)
{
    if (v->k == V_STR)
        return (struct jval *)v;
    struct buf b;
    buf_init(&b);
    print_str(&b, v);
    struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
    buf_release(&b);
    return r;
}

/* The items a for loop or a filter walks: list items, dict keys, string characters. */
static struct jval *iter_list(struct rs *R, const struct node *x, struct jval *v)
{
    switch (v->k) {
    case V_UNDEF:
        return vnew(R->a, V_LIST);
    case V_LIST:
        return v;
    case V_DICT: {
        struct jval *l = vnew(R->a, V_LIST);
        for (size_t i = 0; i < v->n; i++)
            lpush(R->a, l, v->keys[i]);
        return l;
    }
    case V_STR: {
        struct jval *l = vnew(R->a, V_LIST);
        for (size_t i = 0; i < v->n;) {
            uint32_t cp;
            size_t n = u8_dec(v->s + i, v->n - i, &cp);
            lpush(R->a, l, vstrn(R->a, v->s + i, n));
            i += n;
        }
        return l;
    }
    default:
        return rfail(R, x, "'%s' object is not iterable", kind_name(v));
    }
}

static int64_t py_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

static struct jval *arith(struct rs *R, const struct node *x, const char *op, struct jval *l,
                          struct jval *r)
{
    if (l->k == V_UNDEF)
        return undef_error(R, x, l);
    if (r->k == V_UNDEF)
        return undef_error(R, x, r);
    bool plus = !strcmp(op, "+");
    if (plus && l->k == V_STR && r->k == V_STR) {
        struct jval *v = vnew(R->a, V_STR);
        char *p = amalloc(R->a, l->n + r->n + 1);
        memcpy(p, l->s, l->n);
        memcpy(p + l->n, r->s, r->n);
        v->s = p;
        v->n = l->n + r->n;
        return v;
    }
    if (plus && l->k == V_LIST && r->k == V_LIST && l->tuple == r->tuple) {
        struct jval *v = vnew(R->a, V_LIST);
        v->tuple = l->tuple;
        for (size_t i = 0; i < l->n; i++)
            lpush(R->a, v, l->items[i]);
        for (size_t i = 0; i < r->n; i++)
            lpush(R->a, v, r->items[i]);
        return v;
    }
    if (!strcmp(op, "*") &&
        ((l->k == V_STR || l->k == V_LIST) && (r->k == V_INT || r->k == V_BOOL))) {
        struct buf b;
        buf_init(&b);
        struct jval *v = vnew(R->a, l->k);
        for (int64_t k = 0; k < r->i; k++) {
            if (l->k == V_STR)
                buf_append(&b, l->s, l->n);
            else
                for (size_t i = 0; i < l->n; i++)
                    lpush(R->a, v, l->items[i]);
        }
        if (l->k == V_STR) {
            v = vstrn(R->a, b.data ? b.data : "", b.len);
        }
        buf_release(&b);
        return v;
    }
    if (!is_num(l) || !is_num(r))
        return rfail(R, x, "unsupported operand type(s) for %s: '%s' and '%s'", op, kind_name(l),
                     kind_name(r));
    bool fl = l->k == V_FLOAT || r->k == V_FLOAT;
    if (!strcmp(op, "/")) {
        if (num_f(r) == 0)
            return rfail(R, x, "division by zero");
        return vfloat(R->a, num_f(l) / num_f(r));
    }
    if (fl) {
        double a = num_f(l), b = num_f(r);
        if ((!strcmp(op, "//") || !strcmp(op, "%")) && b == 0)
            return rfail(R, x, "float division by zero");
        switch (op[0]) {
        case '+':
            return vfloat(R->a, a + b);
        case '-':
            return vfloat(R->a, a - b);
        case '*':
            return vfloat(R->a, op[1] == '*' ? pow(a, b) : a * b);
        case '/':
            return vfloat(R->a, floor(a / b));
        case '%': {
            double m = fmod(a, b);
            if (m != 0 && ((m < 0) != (b < 0)))
                m += b;
            return vfloat(R->a, m);
        }
        }
    } else {
        int64_t a = l->i, b = r->i;
        if ((!strcmp(op, "//") || !strcmp(op, "%")) && b == 0)
            return rfail(R, x, "integer division or modulo by zero");
        switch (op[0]) {
        case '+':
            return vint(R->a, a + b);
        case '-':
            return vint(R->a, a - b);
        case '*':
            if (op[1] == '*') {
                if (b < 0)
                    return vfloat(R->a, pow((double)a, (double)b));
                int64_t p = 1;
                for (int64_t k = 0; k < b; k++)
                    p *= a;
                return vint(R->a, p);
            }
            return vint(R->a, a * b);
        case '/':
            return vint(R->a, py_floordiv(a, b));
        case '%':
            return vint(R->a, a - py_floordiv(a, b) * b);
        }
    }
    return rfail(R, x, "unsupported operator '%s'", op);
}

/* a < b etc. for numbers and strings; -2 on a type error. */
static int order(const struct jval *a, const struct jval *b)
{
    if (is_num(a) && is_num(b)) {
        if (a->k != V_FLOAT && b->k != V_FLOAT)
            return a->i < b->i ? -1 : a->i > b->i;
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a->k == V_STR && b->k == V_STR) {
        int c = str_cmp(a, b);
        return c < 0 ? -1 : c > 0;
    }
    if (a->k == V_LIST && b->k == V_LIST) {
        for (size_t i = 0; i < a->n && i < b->n; i++) {
            if (veq(a->items[i], b->items[i]))
                continue;
            return order(a->items[i], b->items[i]);
        }
        return a->n < b->n ? -1 : a->n > b->n;
    }
    return -2;
}

static int contains(struct rs *R, const struct node *x, struct jval *needle, struct jval *hay)
{
    switch (hay->k) {
    case V_UNDEF:
        return 0;
    case V_STR:
        if (needle->k != V_STR) {
            rfail(R, x, "'in <string>' requires string as left operand, not %s", kind_name(needle));
            return -1;
        }
        if (!needle->n)
            return 1;
        for (size_t i = 0; i + needle->n <= hay->n; i++)
            if (!memcmp(hay->s + i, needle->s, needle->n))
                return 1;
        return 0;
    case V_LIST:
        for (size_t i = 0; i < hay->n; i++)
            if (veq(hay->items[i], needle))
                return 1;
        return 0;
    case V_DICT:
    case V_NS:
        return dfind(hay, needle) >= 0;
    default:
        rfail(R, x, "argument of type '%s' is not iterable", kind_name(hay));
        return -1;
    }
}

static bool is_method(const struct jval *obj, const char *name)
{
    static const char *const STR_M[] = {
        "strip",   "lstrip",     "rstrip",  "split",   "rsplit",     "startswith", "endswith",
        "upper",   "lower",      "replace", "title",   "capitalize", "find",       "rfind",
        "count",   "join",       "isdigit", "isspace", "isalpha",    "isalnum",    "islower",
        "isupper", "splitlines", "index",   NULL
    };
    static const char *const DICT_M[] = { "items", "get", "keys", "values", NULL };
    static const char *const LIST_M[] = { "index", "count", NULL };
    if (obj->k == V_STR)
        return in_list(STR_M, name);
    if (obj->k == V_DICT)
        return in_list(DICT_M, name);
    if (obj->k == V_LIST)
        return in_list(LIST_M, name);
    return false;
}

/* obj.name: attribute first, then item (jinja2's environment.getattr). */
static struct jval *get_attr(struct rs *R, const struct node *x, struct jval *obj, const char *name)
{
    if (obj->k == V_UNDEF)
        return undef_error(R, x, obj);
    if (is_method(obj, name)) {
        struct jval *m = vnew(R->a, V_METHOD);
        m->self = obj;
        m->s = name;
        return m;
    }
    if (obj->k == V_DICT || obj->k == V_NS || obj->k == V_LOOP) {
        struct jval *v = dget_s(obj, name);
        if (v)
            return v;
    }
    char *h = xasprintf("'%s object' has no attribute '%s'",
                        obj->k == V_DICT ? "dict" : kind_name(obj), name);
    struct jval *u = vundef(R->a, h);
    free(h);
    return u;
}

/* obj[key]: item first, then attribute (jinja2's environment.getitem). */
static struct jval *get_item(struct rs *R, const struct node *x, struct jval *obj, struct jval *key)
{
    if (obj->k == V_UNDEF)
        return undef_error(R, x, obj);
    if ((obj->k == V_LIST || obj->k == V_STR) && (key->k == V_INT || key->k == V_BOOL)) {
        int64_t i = key->i;
        if (obj->k == V_LIST) {
            if (i < 0)
                i += (int64_t)obj->n;
            if (i >= 0 && i < (int64_t)obj->n)
                return obj->items[i];
        } else {
            size_t ncp, *off = u8_offsets(obj->s, obj->n, &ncp);
            if (i < 0)
                i += (int64_t)ncp;
            struct jval *r = NULL;
            if (i >= 0 && i < (int64_t)ncp)
                r = vstrn(R->a, obj->s + off[i], off[i + 1] - off[i]);
            free(off);
            if (r)
                return r;
        }
        char *h = xasprintf("%s object has no element %lld", kind_name(obj), (long long)key->i);
        struct jval *u = vundef(R->a, h);
        free(h);
        return u;
    }
    if (obj->k == V_DICT) {
        long i = dfind(obj, key);
        if (i >= 0)
            return obj->items[i];
    }
    if (key->k == V_STR)
        return get_attr(R, x, obj, key->s);
    struct buf b;
    buf_init(&b);
    print_repr(&b, key);
    char *h = xasprintf("'%s object' has no attribute %s",
                        obj->k == V_DICT ? "dict" : kind_name(obj), b.data ? b.data : "");
    buf_release(&b);
    struct jval *u = vundef(R->a, h);
    free(h);
    return u;
}

static bool slice_idx(struct rs *R, const struct node *x, struct jval *v, int64_t len, int64_t *out,
                      bool has)
{
    if (!has || v->k == V_NONE)
        return false;
    if (v->k != V_INT && v->k != V_BOOL) {
        rfail(R, x, "slice indices must be integers or None");
        return false;
    }
    (void)len;
    *out = v->i;
    return true;
}

static struct jval *do_slice(struct rs *R, const struct node *x, struct jval *obj,
                             struct jval *vstart, struct jval *vstop, struct jval *vstep)
{
    if (obj->k == V_UNDEF)
        return undef_error(R, x, obj);
    if (obj->k != V_LIST && obj->k != V_STR)
        return rfail(R, x, "'%s' object is not subscriptable", kind_name(obj));
    size_t ncp = 0, *off = NULL;
    int64_t len;
    if (obj->k == V_STR) {
        off = u8_offsets(obj->s, obj->n, &ncp);
        len = (int64_t)ncp;
    } else
        len = (int64_t)obj->n;
    int64_t step = 1, start = 0, stop = 0;
    if (vstep && vstep->k != V_NONE) {
        if (vstep->k != V_INT) {
            free(off);
            return rfail(R, x, "slice indices must be integers or None");
        }
        step = vstep->i;
        if (step == 0) {
            free(off);
            return rfail(R, x, "slice step cannot be zero");
        }
    }
    bool hs = vstart && slice_idx(R, x, vstart, len, &start, true);
    bool he = vstop && slice_idx(R, x, vstop, len, &stop, true);
    if (R->err) {
        free(off);
        return NULL;
    }
    if (step > 0) {
        if (!hs)
            start = 0;
        else if (start < 0 && (start += len) < 0)
            start = 0;
        else if (start > len)
            start = len;
        if (!he)
            stop = len;
        else if (stop < 0 && (stop += len) < 0)
            stop = 0;
        else if (stop > len)
            stop = len;
    } else {
        if (!hs)
            start = len - 1;
        else if (start < 0 && (start += len) < 0)
            start = -1;
        else if (start >= len)
            start = len - 1;
        if (!he)
            stop = -1;
        else if (stop < 0 && (stop += len) < 0)
            stop = -1;
        else if (stop >= len)
            stop = len - 1;
    }
    struct jval *r;
    if (obj->k == V_LIST) {
        r = vnew(R->a, V_LIST);
        r->tuple = obj->tuple;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            lpush(R->a, r, obj->items[i]);
    } else {
        struct buf b;
        buf_init(&b);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            buf_append(&b, obj->s + off[i], off[i + 1] - off[i]);
        r = vstrn(R->a, b.data ? b.data : "", b.len);
        buf_release(&b);
    }
    free(off);
    return r;
}

/* ---- string helpers ----------------------------------------------------------------------- */

static bool in_chars(uint32_t cp, const struct jval *chars)
{
    if (!chars)
        return py_space(cp);
    for (size_t i = 0; i < chars->n;) {
        uint32_t c;
        i += u8_dec(chars->s + i, chars->n - i, &c);
        if (c == cp)
            return true;
    }
    return false;
}

static struct jval *str_strip(struct rs *R, const struct jval *s, const struct jval *chars,
                              bool left, bool right)
{
    size_t ncp, *off = u8_offsets(s->s, s->n, &ncp);
    size_t a = 0, b = ncp;
    uint32_t cp;
    while (left && a < b) {
        u8_dec(s->s + off[a], s->n - off[a], &cp);
        if (!in_chars(cp, chars))
            break;
        a++;
    }
    while (right && b > a) {
        u8_dec(s->s + off[b - 1], s->n - off[b - 1], &cp);
        if (!in_chars(cp, chars))
            break;
        b--;
    }
    struct jval *r = vstrn(R->a, s->s + off[a], off[b] - off[a]);
    free(off);
    return r;
}

static struct jval *str_case(struct rs *R, const struct jval *s, int mode)
{
    /* mode 0 lower, 1 upper, 2 capitalize, 3 str.title, 4 jinja title filter */
    struct buf b;
    buf_init(&b);
    bool prev_cased = false, word_start = true;
    size_t k = 0;
    for (size_t i = 0; i < s->n; k++) {
        uint32_t cp;
        i += u8_dec(s->s + i, s->n - i, &cp);
        uint32_t o = cp;
        switch (mode) {
        case 0:
            o = cp_lower(cp);
            break;
        case 1:
            /* Python's full upper case: U+00DF (sharp s) has no one-letter capital. */
            if (cp == 0xDF) {
                buf_puts(&b, "SS");
                continue;
            }
            o = cp_upper(cp);
            break;
        case 2:
            o = k == 0 ? cp_upper(cp) : cp_lower(cp);
            break;
        case 3:
            o = prev_cased ? cp_lower(cp) : cp_upper(cp);
            prev_cased = cp_cased(cp);
            break;
        case 4: {
            bool sep =
                py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            o = sep ? cp : (word_start ? cp_upper(cp) : cp_lower(cp));
            word_start = sep;
            break;
        }
        }
        u8_put(&b, o);
    }
    struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
    buf_release(&b);
    return r;
}

static const char *memfind(const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0)
        return h;
    for (size_t i = 0; i + nn <= hn; i++)
        if (!memcmp(h + i, n, nn))
            return h + i;
    return NULL;
}

static struct jval *str_replace(struct rs *R, const struct jval *s, const struct jval *old,
                                const struct jval *new, int64_t count)
{
    struct buf b;
    buf_init(&b);
    if (old->n == 0) {
        /* Python inserts new between characters (and at both ends). */
        int64_t done = 0;
        for (size_t i = 0;;) {
            if (count < 0 || done < count) {
                buf_append(&b, new->s, new->n);
                done++;
            }
            if (i >= s->n)
                break;
            uint32_t cp;
            size_t l = u8_dec(s->s + i, s->n - i, &cp);
            buf_append(&b, s->s + i, l);
            i += l;
        }
    } else {
        size_t i = 0;
        int64_t done = 0;
        while (i < s->n) {
            const char *f =
                (count < 0 || done < count) ? memfind(s->s + i, s->n - i, old->s, old->n) : NULL;
            if (!f) {
                buf_append(&b, s->s + i, s->n - i);
                break;
            }
            buf_append(&b, s->s + i, (size_t)(f - (s->s + i)));
            buf_append(&b, new->s, new->n);
            i = (size_t)(f - s->s) + old->n;
            done++;
        }
    }
    struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
    buf_release(&b);
    return r;
}

static struct jval *str_split(struct rs *R, const struct jval *s, const struct jval *sep,
                              int64_t maxsplit)
{
    struct jval *l = vnew(R->a, V_LIST);
    if (!sep || sep->k == V_NONE) {
        size_t i = 0;
        int64_t done = 0;
        for (;;) {
            uint32_t cp;
            while (i < s->n) {
                size_t n = u8_dec(s->s + i, s->n - i, &cp);
                if (!py_space(cp))
                    break;
                i += n;
            }
            if (i >= s->n)
                break;
            if (maxsplit >= 0 && done >= maxsplit) {
                /* the rest, right-stripped */
                struct jval rest = { .k = V_STR, .s = s->s + i, .n = s->n - i };
                lpush(R->a, l, str_strip(R, &rest, NULL, false, true));
                break;
            }
            size_t j = i;
            while (j < s->n) {
                size_t n = u8_dec(s->s + j, s->n - j, &cp);
                if (py_space(cp))
                    break;
                j += n;
            }
            lpush(R->a, l, vstrn(R->a, s->s + i, j - i));
            done++;
            i = j;
        }
        return l;
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *f =
            (maxsplit < 0 || done < maxsplit) ? memfind(s->s + i, s->n - i, sep->s, sep->n) : NULL;
        if (!f) {
            lpush(R->a, l, vstrn(R->a, s->s + i, s->n - i));
            break;
        }
        lpush(R->a, l, vstrn(R->a, s->s + i, (size_t)(f - (s->s + i))));
        i = (size_t)(f - s->s) + sep->n;
        done++;
    }
    return l;
}

static bool want_str(struct rs *R, const struct node *x, const struct jval *v, const char *what)
{
    if (v && v->k == V_STR)
        return true;
    rfail(R, x, "%s expects a string argument, got %s", what, v ? kind_name(v) : "nothing");
    return false;
}

static struct jval *call_method(struct rs *R, const struct node *x, struct jval *self,
                                const char *m, struct args *a)
{
    if (self->k == V_STR) {
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            struct jval *chars = arg(a, 0, "chars");
            if (chars && chars->k == V_NONE)
                chars = NULL;
            if (chars && !want_str(R, x, chars, m))
                return NULL;
            return str_strip(R, self, chars, m[0] != 'r', m[0] != 'l');
        }
        if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
            struct jval *sep = arg(a, 0, "sep"), *mx = arg(a, 1, "maxsplit");
            if (sep && sep->k != V_NONE && !want_str(R, x, sep, m))
                return NULL;
            if (sep && sep->k == V_STR && sep->n == 0)
                return rfail(R, x, "ValueError: empty separator");
            if (!strcmp(m, "rsplit") && mx && mx->i >= 0)
                return rfail(R, x, "unsupported: rsplit with maxsplit");
            return str_split(R, self, sep, mx && mx->k == V_INT ? mx->i : -1);
        }
        if (!strcmp(m, "splitlines")) {
            struct jval *l = vnew(R->a, V_LIST);
            size_t i = 0;
            while (i < self->n) {
                size_t j = i;
                while (j < self->n && self->s[j] != '\n' && self->s[j] != '\r')
                    j++;
                lpush(R->a, l, vstrn(R->a, self->s + i, j - i));
                if (j < self->n && self->s[j] == '\r' && j + 1 < self->n && self->s[j + 1] == '\n')
                    j++;
                i = j + 1;
            }
            return l;
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            struct jval *p = arg(a, 0, "prefix");
            if (!p)
                return rfail(R, x, "%s() takes at least 1 argument", m);
            struct jval one = *p, *cands = p;
            if (p->k == V_STR) {
                struct jval *l = vnew(R->a, V_LIST);
                lpush(R->a, l, &one);
                cands = l;
            }
            if (cands->k != V_LIST)
                return rfail(R, x, "%s first arg must be str or a tuple of str", m);
            for (size_t i = 0; i < cands->n; i++) {
                const struct jval *c = cands->items[i];
                if (c->k != V_STR)
                    return rfail(R, x, "%s first arg must be str or a tuple of str", m);
                if (c->n <= self->n &&
                    !memcmp(m[0] == 's' ? self->s : self->s + self->n - c->n, c->s, c->n))
                    return &g_true;
            }
            return &g_false;
        }
        if (!strcmp(m, "upper"))
            return str_case(R, self, 1);
        if (!strcmp(m, "lower"))
            return str_case(R, self, 0);
        if (!strcmp(m, "capitalize"))
            return str_case(R, self, 2);
        if (!strcmp(m, "title"))
            return str_case(R, self, 3);
        if (!strcmp(m, "replace")) {
            struct jval *o = arg(a, 0, "old"), *n = arg(a, 1, "new"), *c = arg(a, 2, "count");
            if (!want_str(R, x, o, m) || !want_str(R, x, n, m))
                return NULL;
            return str_replace(R, self, o, n, c && c->k == V_INT ? c->i : -1);
        }
        if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") ||
            !strcmp(m, "count")) {
            struct jval *sub = arg(a, 0, "sub");
            if (!want_str(R, x, sub, m))
                return NULL;
            if (!strcmp(m, "count")) {
                int64_t k = 0;
                if (!sub->n)
                    return vint(R->a, (int64_t)u8_len(self->s, self->n) + 1);
                for (const char *p = self->s;
                     (p = memfind(p, self->n - (size_t)(p - self->s), sub->s, sub->n)); p += sub->n)
                    k++;
                return vint(R->a, k);
            }
            const char *f = NULL;
            if (m[0] == 'r') {
                for (size_t i = self->n + 1; i-- > 0;)
                    if (i + sub->n <= self->n && !memcmp(self->s + i, sub->s, sub->n)) {
                        f = self->s + i;
                        break;
                    }
            } else
                f = memfind(self->s, self->n, sub->s, sub->n);
            if (!f && !strcmp(m, "index"))
                return rfail(R, x, "ValueError: substring not found");
            return vint(R->a, f ? (int64_t)u8_len(self->s, (size_t)(f - self->s)) : -1);
        }
        if (!strcmp(m, "join")) {
            struct jval *it = arg(a, 0, "iterable");
            if (!it)
                return rfail(R, x, "join() takes exactly one argument");
            struct jval *l = iter_list(R, x, it);
            if (!l)
                return NULL;
            struct buf b;
            buf_init(&b);
            for (size_t i = 0; i < l->n; i++) {
                if (l->items[i]->k != V_STR) {
                    buf_release(&b);
                    return rfail(R, x, "sequence item %zu: expected str instance, %s found", i,
                                 kind_name(l->items[i]));
                }
                if (i)
                    buf_append(&b, self->s, self->n);
                buf_append(&b, l->items[i]->s, l->items[i]->n);
            }
            struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
            buf_release(&b);
            return r;
        }
        if (!strncmp(m, "is", 2)) {
            if (!self->n)
                return &g_false;
            bool any_cased = false;
            for (size_t i = 0; i < self->n;) {
                uint32_t cp;
                i += u8_dec(self->s + i, self->n - i, &cp);
                unsigned cls = cp < 0x110000 ? utab_class(cp) : 0;
                bool ok = true;
                if (!strcmp(m, "isdigit"))
                    ok = cp >= '0' && cp <= '9';
                else if (!strcmp(m, "isspace"))
                    ok = py_space(cp);
                else if (!strcmp(m, "isalpha"))
                    ok = cls & UTAB_L;
                else if (!strcmp(m, "isalnum"))
                    ok = cls & (UTAB_L | UTAB_N);
                else if (!strcmp(m, "islower") || !strcmp(m, "isupper")) {
                    if (cp_cased(cp)) {
                        any_cased = true;
                        ok = m[2] == 'l' ? cp_lower(cp) == cp : cp_upper(cp) == cp;
                    }
                }
                if (!ok)
                    return &g_false;
            }
            if ((!strcmp(m, "islower") || !strcmp(m, "isupper")) && !any_cased)
                return &g_false;
            return &g_true;
        }
    }
    if (self->k == V_DICT) {
        if (!strcmp(m, "get")) {
            struct jval *k = arg(a, 0, "key"), *d = arg(a, 1, "default");
            if (!k)
                return rfail(R, x, "get expected at least 1 argument");
            long i = dfind(self, k);
            return i >= 0 ? self->items[i] : (d ? d : &g_none);
        }
        struct jval *l = vnew(R->a, V_LIST);
        for (size_t i = 0; i < self->n; i++) {
            if (!strcmp(m, "keys"))
                lpush(R->a, l, self->keys[i]);
            else if (!strcmp(m, "values"))
                lpush(R->a, l, self->items[i]);
            else {
                struct jval *t = vnew(R->a, V_LIST);
                t->tuple = true;
                lpush(R->a, t, self->keys[i]);
                lpush(R->a, t, self->items[i]);
                lpush(R->a, l, t);
            }
        }
        return l;
    }
    if (self->k == V_LIST) {
        struct jval *v = arg(a, 0, "value");
        if (!v)
            return rfail(R, x, "%s() takes exactly one argument", m);
        int64_t k = 0;
        for (size_t i = 0; i < self->n; i++)
            if (veq(self->items[i], v)) {
                if (!strcmp(m, "index"))
                    return vint(R->a, (int64_t)i);
                k++;
            }
        if (!strcmp(m, "index"))
            return rfail(R, x, "ValueError: value is not in list");
        return vint(R->a, k);
    }
    return rfail(R, x, "unsupported method '%s' of %s", m, kind_name(self));
}

static struct jval *call_macro(struct rs *R, const struct node *x, struct jval *mv, struct args *a)
{
    const struct node *m = mv->macro;
    if (a->npos > m->nnames)
        return rfail(R, x, "macro '%s' takes not more than %zu argument(s)", m->s, m->nnames);
    if (++R->depth > 200) {
        R->depth--;
        return rfail(R, x, "macro recursion too deep");
    }
    struct scope *s = scope_new(R, R->root);
    for (size_t k = 0; k < a->nkw; k++) {
        bool found = false;
        for (size_t i = 0; i < m->nnames; i++)
            found |= !strcmp(m->names[i], a->kwn[k]);
        if (!found) {
            R->depth--;
            return rfail(R, x, "macro '%s' takes no keyword argument '%s'", m->s, a->kwn[k]);
        }
    }
    for (size_t i = 0; i < m->nnames; i++) {
        struct jval *v = arg(a, i, m->names[i]);
        if (!v && m->kids2.v[i]) {
            if (!(v = eval(R, s, m->kids2.v[i]))) {
                R->depth--;
                return NULL;
            }
        }
        if (!v) {
            char *h = xasprintf("parameter '%s' was not provided", m->names[i]);
            v = vundef(R->a, h);
            free(h);
        }
        scope_set(R, s, m->names[i], v);
    }
    struct buf out;
    buf_init(&out);
    int rc = exec_body(R, s, &m->c->kids, &out);
    R->depth--;
    struct jval *r = rc == R_ERR ? NULL : vstrn(R->a, out.data ? out.data : "", out.len);
    buf_release(&out);
    return r;
}

static struct jval *call_func(struct rs *R, const struct node *x, struct jval *f, struct args *a)
{
    switch ((enum gfn)f->i) {
    case G_RANGE: {
        int64_t v[3] = { 0, 0, 1 };
        if (a->npos < 1 || a->npos > 3 || a->nkw)
            return rfail(R, x, "range expected 1 to 3 integer arguments");
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i]->k != V_INT && a->pos[i]->k != V_BOOL)
                return rfail(R, x, "range() arguments must be integers, not %s",
                             kind_name(a->pos[i]));
        }
        if (a->npos == 1)
            v[1] = a->pos[0]->i;
        else {
            v[0] = a->pos[0]->i;
            v[1] = a->pos[1]->i;
            if (a->npos == 3)
                v[2] = a->pos[2]->i;
        }
        if (v[2] == 0)
            return rfail(R, x, "range() arg 3 must not be zero");
        struct jval *l = vnew(R->a, V_LIST);
        for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
            if (l->n > 10000000)
                return rfail(R, x, "range too big");
            lpush(R->a, l, vint(R->a, i));
        }
        return l;
    }
    case G_NAMESPACE:
    case G_DICT: {
        struct jval *ns = vnew(R->a, f->i == G_NAMESPACE ? V_NS : V_DICT);
        for (size_t i = 0; i < a->npos; i++) {
            struct jval *d = a->pos[i];
            if (d->k != V_DICT)
                return rfail(R, x, "%s() positional argument must be a dict", f->s);
            for (size_t k = 0; k < d->n; k++)
                dput(R->a, ns, d->keys[k], d->items[k]);
        }
        for (size_t i = 0; i < a->nkw; i++)
            dput(R->a, ns, vstr(R->a, a->kwn[i]), a->kwv[i]);
        return ns;
    }
    case G_RAISE: {
        struct jval *m = arg(a, 0, "message");
        struct buf b;
        buf_init(&b);
        if (m)
            print_str(&b, m);
        rfail(R, x, "%s", b.data ? b.data : "");
        buf_release(&b);
        return NULL;
    }
    case G_STRFTIME: {
        struct jval *fmt = arg(a, 0, "format");
        if (!want_str(R, x, fmt, "strftime_now"))
            return NULL;
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char out[512];
        size_t n = strftime(out, sizeof(out), fmt->s, &tm);
        return vstrn(R->a, out, n);
    }
    }
    return rfail(R, x, "unknown function");
}

static struct jval *call(struct rs *R, struct scope *s, const struct node *x)
{
    struct jval *f = eval(R, s, x->a);
    if (!f)
        return NULL;
    struct args a;
    if (!eval_args(R, s, x, &a))
        return NULL;
    switch (f->k) {
    case V_METHOD:
        return call_method(R, x, f->self, f->s, &a);
    case V_MACRO:
        return call_macro(R, x, f, &a);
    case V_FUNC:
        return call_func(R, x, f, &a);
    case V_UNDEF:
        return undef_error(R, x, f);
    default:
        return rfail(R, x, "'%s' object is not callable", kind_name(f));
    }
}

/* ---- tests -------------------------------------------------------------------------------- */

static int run_test(struct rs *R, const struct node *x, const char *name, struct jval *v,
                    struct args *a)
{
    struct jval *o = a->npos ? a->pos[0] : NULL;
    if (!strcmp(name, "defined"))
        return v->k != V_UNDEF;
    if (!strcmp(name, "undefined"))
        return v->k == V_UNDEF;
    if (!strcmp(name, "none"))
        return v->k == V_NONE;
    if (!strcmp(name, "string"))
        return v->k == V_STR;
    if (!strcmp(name, "mapping"))
        return v->k == V_DICT;
    if (!strcmp(name, "iterable"))
        return v->k == V_STR || v->k == V_LIST || v->k == V_DICT || v->k == V_UNDEF;
    if (!strcmp(name, "sequence"))
        return v->k == V_STR || v->k == V_LIST || v->k == V_DICT || v->k == V_UNDEF;
    if (!strcmp(name, "number"))
        return is_num(v);
    if (!strcmp(name, "integer"))
        return v->k == V_INT;
    if (!strcmp(name, "float"))
        return v->k == V_FLOAT;
    if (!strcmp(name, "boolean"))
        return v->k == V_BOOL;
    if (!strcmp(name, "true"))
        return v->k == V_BOOL && v->i;
    if (!strcmp(name, "false"))
        return v->k == V_BOOL && !v->i;
    if (!strcmp(name, "callable"))
        return v->k == V_MACRO || v->k == V_FUNC || v->k == V_METHOD;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v->k != V_STR)
            return rfail(R, x, "test '%s' needs a string", name), -1;
        struct jval *c = str_case(R, v, name[0] == 'l' ? 0 : 1);
        return veq(c, v);
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (v->k != V_INT && v->k != V_BOOL)
            return rfail(R, x, "test '%s' needs an integer", name), -1;
        if (!strcmp(name, "divisibleby")) {
            if (!o || (o->k != V_INT) || o->i == 0)
                return rfail(R, x, "divisibleby needs a non-zero integer"), -1;
            return v->i % o->i == 0;
        }
        return (v->i % 2 != 0) == (name[0] == 'o');
    }
    if (!o)
        return rfail(R, x, "test '%s' needs an argument", name), -1;
    if (!strcmp(name, "sameas"))
        return v == o || (v->k == o->k && (v->k == V_NONE || v->k == V_BOOL) && v->i == o->i);
    if (!strcmp(name, "in"))
        return contains(R, x, v, o);
    if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "=="))
        return veq(v, o);
    if (!strcmp(name, "ne") || !strcmp(name, "!="))
        return !veq(v, o);
    int c = order(v, o);
    if (c == -2)
        return rfail(R, x, "'%s' not supported between instances of '%s' and '%s'", name,
                     kind_name(v), kind_name(o)),
               -1;
    if (!strcmp(name, "lt") || !strcmp(name, "<"))
        return c < 0;
    if (!strcmp(name, "le") || !strcmp(name, "<="))
        return c <= 0;
    if (!strcmp(name, "gt") || !strcmp(name, ">"))
        return c > 0;
    if (!strcmp(name, "ge") || !strcmp(name, ">="))
        return c >= 0;
    return rfail(R, x, "unsupported test '%s'", name), -1;
}

/* ---- filters ------------------------------------------------------------------------------ */

static struct jval *attr_path(struct rs *R, const struct node *x, struct jval *v, const char *path)
{
    /* "a.b" walks attributes; a numeric part indexes */
    const char *p = path;
    while (v && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char *part = xstrndup(p, n);
        char *e;
        long idx = strtol(part, &e, 10);
        if (*part && !*e)
            v = get_item(R, x, v, vint(R->a, idx));
        else
            v = get_item(R, x, v, vstr(R->a, part));
        free(part);
        p += n + (dot ? 1 : 0);
    }
    return v;
}

static struct jval *apply_filter(struct rs *R, struct scope *s, const struct node *x,
                                 const char *name, struct jval *v, struct args *a);

/* select/reject/selectattr/rejectattr */
static struct jval *filter_select(struct rs *R, const struct node *x, struct jval *v,
                                  struct args *a, bool attr, bool keep)
{
    struct jval *l = iter_list(R, x, v);
    if (!l)
        return NULL;
    size_t first = 0;
    struct jval *an = NULL;
    if (attr) {
        an = arg(a, 0, "attribute");
        if (!want_str(R, x, an, "selectattr"))
            return NULL;
        first = 1;
    }
    struct jval *tn = a->npos > first ? a->pos[first] : NULL;
    if (tn && !want_str(R, x, tn, "select"))
        return NULL;
    if (tn && !in_list(TESTS, tn->s))
        return rfail(R, x, "unsupported test '%s'", tn->s);
    struct args ta = { 0 };
    ta.npos = a->npos > first + 1 ? a->npos - first - 1 : 0;
    ta.pos = a->pos + first + 1;
    struct jval *r = vnew(R->a, V_LIST);
    for (size_t i = 0; i < l->n; i++) {
        struct jval *item = l->items[i], *t = item;
        if (attr && !(t = attr_path(R, x, item, an->s)))
            return NULL;
        int ok = tn ? run_test(R, x, tn->s, t, &ta) : truthy(t);
        if (ok < 0)
            return NULL;
        if ((ok != 0) == keep)
            lpush(R->a, r, item);
    }
    return r;
}

static struct jval *apply_filter(struct rs *R, struct scope *s, const struct node *x,
                                 const char *name, struct jval *v, struct args *a)
{
    if (!strcmp(name, "safe"))
        return v;
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        struct jval *dv = arg(a, 0, "default_value"), *bo = arg(a, 1, "boolean");
        bool use = v->k == V_UNDEF || (bo && truthy(bo) && !truthy(v));
        return use ? (dv ? dv : vstr(R->a, "")) : v;
    }
    if (!strcmp(name, "tojson")) {
        struct jopt o = { NULL, ", ", ": ", false, false };
        struct jval *ind = arg(a, 1, "indent"), *asc = arg(a, 0, "ensure_ascii"),
                    *sep = arg(a, 2, "separators"), *sk = arg(a, 3, "sort_keys");
        char spaces[64];
        if (ind && ind->k == V_INT) {
            int n = (int)(ind->i < 0 ? 0 : ind->i > 32 ? 32 : ind->i);
            memset(spaces, ' ', (size_t)n);
            spaces[n] = 0;
            o.indent = spaces;
        } else if (ind && ind->k == V_STR)
            o.indent = ind->s;
        else if (ind && ind->k != V_NONE)
            return rfail(R, x, "tojson: indent must be an integer, a string or none");
        if (o.indent)
            o.item_sep = ",";
        if (asc)
            o.ascii = truthy(asc);
        if (sk)
            o.sort_keys = truthy(sk);
        if (sep && sep->k == V_LIST && sep->n == 2 && sep->items[0]->k == V_STR &&
            sep->items[1]->k == V_STR) {
            o.item_sep = sep->items[0]->s;
            o.key_sep = sep->items[1]->s;
        } else if (sep && sep->k != V_NONE)
            return rfail(R, x, "tojson: separators must be a pair of strings");
        struct buf b;
        buf_init(&b);
        char *e = NULL;
        if (json_dump(&b, v, &o, 0, &e)) {
            buf_release(&b);
            rfail(R, x, "TypeError: %s", e);
            free(e);
            return NULL;
        }
        struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
        buf_release(&b);
        return r;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        switch (v->k) {
        case V_UNDEF:
            return vint(R->a, 0);
        case V_STR:
            return vint(R->a, (int64_t)u8_len(v->s, v->n));
        case V_LIST:
        case V_DICT:
        case V_NS:
            return vint(R->a, (int64_t)v->n);
        default:
            return rfail(R, x, "object of type '%s' has no len()", kind_name(v));
        }
    }
    if (!strcmp(name, "map")) {
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        struct jval *at = arg(a, 99, "attribute"), *dflt = arg(a, 99, "default");
        struct jval *r = vnew(R->a, V_LIST);
        if (at) {
            if (!want_str(R, x, at, "map"))
                return NULL;
            for (size_t i = 0; i < l->n; i++) {
                struct jval *y = attr_path(R, x, l->items[i], at->s);
                if (!y)
                    return NULL;
                if (y->k == V_UNDEF && dflt)
                    y = dflt;
                lpush(R->a, r, y);
            }
            return r;
        }
        if (!a->npos || !want_str(R, x, a->pos[0], "map"))
            return NULL;
        const char *fn = a->pos[0]->s;
        if (!in_list(FILTERS, fn))
            return rfail(R, x, "unsupported filter '%s'", fn);
        struct args fa = { a->pos + 1, a->npos - 1, a->kwn, a->kwv, a->nkw };
        for (size_t i = 0; i < l->n; i++) {
            struct jval *y = apply_filter(R, s, x, fn, l->items[i], &fa);
            if (!y)
                return NULL;
            lpush(R->a, r, y);
        }
        return r;
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return filter_select(R, x, v, a, true, name[0] == 's');
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return filter_select(R, x, v, a, false, name[0] == 's');
    if (!strcmp(name, "items")) {
        if (v->k == V_UNDEF)
            return vnew(R->a, V_LIST);
        if (v->k != V_DICT)
            return rfail(R, x, "items: can only get item pairs from a mapping");
        struct args none = { 0 };
        return call_method(R, x, v, "items", &none);
    }
    if (!strcmp(name, "list")) {
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        struct jval *r = vnew(R->a, V_LIST);
        for (size_t i = 0; i < l->n; i++)
            lpush(R->a, r, l->items[i]);
        return r;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        if (!l->n)
            return vundef(R->a, name[0] == 'f' ? "No first item, sequence was empty."
                                               : "No last item, sequence was empty.");
        return l->items[name[0] == 'f' ? 0 : l->n - 1];
    }
    if (!strcmp(name, "join")) {
        struct jval *sep = arg(a, 0, "d"), *at = arg(a, 1, "attribute");
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        struct buf b;
        buf_init(&b);
        for (size_t i = 0; i < l->n; i++) {
            struct jval *it = l->items[i];
            if (at && !(it = attr_path(R, x, it, to_str(R, at)->s))) {
                buf_release(&b);
                return NULL;
            }
            if (i && sep)
                print_str(&b, sep);
            print_str(&b, it);
        }
        struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
        buf_release(&b);
        return r;
    }
    if (!strcmp(name, "string"))
        return to_str(R, v);
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        bool isint = name[0] == 'i';
        struct jval *dv = arg(a, 0, "default");
        if (v->k == V_INT || v->k == V_BOOL)
            return isint ? vint(R->a, v->i) : vfloat(R->a, (double)v->i);
        if (v->k == V_FLOAT)
            return isint ? vint(R->a, (int64_t)v->f) : v;
        if (v->k == V_STR) {
            struct jval *t = str_strip(R, v, NULL, true, true);
            char *e;
            errno = 0;
            if (isint) {
                long long i = strtoll(t->s, &e, 10);
                if (t->n && !*e && errno != ERANGE)
                    return vint(R->a, i);
            }
            double d = strtod(t->s, &e);
            if (t->n && !*e)
                return isint ? vint(R->a, (int64_t)d) : vfloat(R->a, d);
        }
        return dv ? dv : (isint ? vint(R->a, 0) : vfloat(R->a, 0.0));
    }
    if (!strcmp(name, "abs")) {
        if (v->k == V_INT || v->k == V_BOOL)
            return vint(R->a, v->i < 0 ? -v->i : v->i);
        if (v->k == V_FLOAT)
            return vfloat(R->a, fabs(v->f));
        return rfail(R, x, "bad operand type for abs(): '%s'", kind_name(v));
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") ||
        !strcmp(name, "title")) {
        struct jval *t = to_str(R, v);
        int mode = name[0] == 'l' ? 0 : name[0] == 'u' ? 1 : name[0] == 'c' ? 2 : 4;
        return str_case(R, t, mode);
    }
    if (!strcmp(name, "trim")) {
        struct jval *chars = arg(a, 0, "chars");
        if (chars && chars->k == V_NONE)
            chars = NULL;
        if (chars && !want_str(R, x, chars, "trim"))
            return NULL;
        return str_strip(R, to_str(R, v), chars, true, true);
    }
    if (!strcmp(name, "replace")) {
        struct jval *o = arg(a, 0, "old"), *n = arg(a, 1, "new"), *c = arg(a, 2, "count");
        if (!o || !n)
            return rfail(R, x, "replace needs two arguments");
        return str_replace(R, to_str(R, v), to_str(R, o), to_str(R, n),
                           c && c->k == V_INT ? c->i : -1);
    }
    if (!strcmp(name, "reverse")) {
        if (v->k == V_STR) {
            struct jval *m1 = vint(R->a, -1);
            return do_slice(R, x, v, NULL, NULL, m1);
        }
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        struct jval *r = vnew(R->a, V_LIST);
        for (size_t i = l->n; i-- > 0;)
            lpush(R->a, r, l->items[i]);
        return r;
    }
    if (!strcmp(name, "unique")) {
        struct jval *l = iter_list(R, x, v);
        if (!l)
            return NULL;
        struct jval *r = vnew(R->a, V_LIST);
        for (size_t i = 0; i < l->n; i++) {
            bool seen = false;
            for (size_t j = 0; j < r->n && !seen; j++)
                seen = veq(r->items[j], l->items[i]);
            if (!seen)
                lpush(R->a, r, l->items[i]);
        }
        return r;
    }
    if (!strcmp(name, "indent")) {
        struct jval *w = arg(a, 0, "width"), *fst = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
        struct jval *t = to_str(R, v);
        struct buf pad, b;
        buf_init(&pad);
        buf_init(&b);
        if (w && w->k == V_STR)
            buf_append(&pad, w->s, w->n);
        else
            for (int64_t i = 0; i < (w && w->k == V_INT ? w->i : 4); i++)
                buf_puts(&pad, " ");
        bool first = fst && truthy(fst), bl = blank && truthy(blank);
        size_t i = 0;
        bool line0 = true;
        while (i <= t->n) {
            size_t j = i;
            while (j < t->n && t->s[j] != '\n')
                j++;
            bool empty = j == i;
            if ((line0 ? first : true) && (bl || !empty) && !(line0 && !first))
                buf_append(&b, pad.data ? pad.data : "", pad.len);
            buf_append(&b, t->s + i, j - i);
            if (j < t->n)
                buf_puts(&b, "\n");
            line0 = false;
            i = j + 1;
        }
        struct jval *r = vstrn(R->a, b.data ? b.data : "", b.len);
        buf_release(&pad);
        buf_release(&b);
        return r;
    }
    return rfail(R, x, "unsupported filter '%s'", name);
}

/* ---- expressions -------------------------------------------------------------------------- */

static struct jval *eval(struct rs *R, struct scope *s, const struct node *x)
{
    struct jval *l, *r;
    switch (x->k) {
    case E_LIT:
        return x->lit;
    case E_NAME:
        return lookup(R, s, x->s);
    case E_ATTR:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        return get_attr(R, x, l, x->s);
    case E_ITEM:
        if (!(l = eval(R, s, x->a)) || !(r = eval(R, s, x->b)))
            return NULL;
        return get_item(R, x, l, r);
    case E_SLICE: {
        struct jval *a = NULL, *b = NULL, *c = NULL;
        if (!(l = eval(R, s, x->a)))
            return NULL;
        if (x->b && !(a = eval(R, s, x->b)))
            return NULL;
        if (x->c && !(b = eval(R, s, x->c)))
            return NULL;
        if (x->kids.v[0] && !(c = eval(R, s, x->kids.v[0])))
            return NULL;
        return do_slice(R, x, l, a, b, c);
    }
    case E_CALL:
        return call(R, s, x);
    case E_FILTER: {
        if (!(l = eval(R, s, x->a)))
            return NULL;
        struct args a;
        if (!eval_args(R, s, x, &a))
            return NULL;
        return apply_filter(R, s, x, x->s, l, &a);
    }
    case E_TEST: {
        if (!(l = eval(R, s, x->a)))
            return NULL;
        struct args a;
        if (!eval_args(R, s, x, &a))
            return NULL;
        int t = run_test(R, x, x->s, l, &a);
        if (t < 0)
            return NULL;
        return vbool((t != 0) != x->neg);
    }
    case E_BIN:
        if (!(l = eval(R, s, x->a)) || !(r = eval(R, s, x->b)))
            return NULL;
        return arith(R, x, x->s, l, r);
    case E_NOT:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        return vbool(!truthy(l));
    case E_NEG:
    case E_POS:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        if (l->k == V_UNDEF)
            return undef_error(R, x, l);
        if (!is_num(l))
            return rfail(R, x, "bad operand type for unary %c: '%s'", x->k == E_NEG ? '-' : '+',
                         kind_name(l));
        if (x->k == E_POS)
            return l->k == V_BOOL ? vint(R->a, l->i) : l;
        return l->k == V_FLOAT ? vfloat(R->a, -l->f) : vint(R->a, -l->i);
    case E_AND:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        return truthy(l) ? eval(R, s, x->b) : l;
    case E_OR:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        return truthy(l) ? l : eval(R, s, x->b);
    case E_COND:
        if (!(l = eval(R, s, x->a)))
            return NULL;
        if (truthy(l))
            return eval(R, s, x->b);
        if (x->c)
            return eval(R, s, x->c);
        return vundef(R->a, "the inline if-expression evaluated to false and no else section "
                            "was defined.");
    case E_LIST:
    case E_TUPLE: {
        struct jval *v = vnew(R->a, V_LIST);
        v->tuple = x->k == E_TUPLE;
        for (size_t i = 0; i < x->kids.n; i++) {
            if (!(l = eval(R, s, x->kids.v[i])))
                return NULL;
            lpush(R->a, v, l);
        }
        return v;
    }
    case E_DICT: {
        struct jval *v = vnew(R->a, V_DICT);
        for (size_t i = 0; i < x->kids.n; i++) {
            if (!(l = eval(R, s, x->kids.v[i])) || !(r = eval(R, s, x->kids2.v[i])))
                return NULL;
            if (l->k == V_LIST && !l->tuple)
                return rfail(R, x, "unhashable type: 'list'");
            if (l->k == V_DICT)
                return rfail(R, x, "unhashable type: 'dict'");
            dput(R->a, v, l, r);
        }
        return v;
    }
    case E_CONCAT: {
        struct buf b;
        buf_init(&b);
        for (size_t i = 0; i < x->kids.n; i++) {
            if (!(l = eval(R, s, x->kids.v[i]))) {
                buf_release(&b);
                return NULL;
            }
            print_str(&b, l);
        }
        struct jval *v = vstrn(R->a, b.data ? b.data : "", b.len);
        buf_release(&b);
        return v;
    }
    case E_COMPARE: {
        if (!(l = eval(R, s, x->kids.v[0])))
            return NULL;
        for (size_t i = 0; i < x->nnames; i++) {
            const char *op = x->names[i];
            if (!(r = eval(R, s, x->kids.v[i + 1])))
                return NULL;
            int ok;
            if (!strcmp(op, "==") || !strcmp(op, "!="))
                ok = veq(l, r) == (op[0] == '=');
            else if (!strcmp(op, "in") || !strcmp(op, "not in")) {
                ok = contains(R, x, l, r);
                if (ok < 0)
                    return NULL;
                if (op[0] == 'n')
                    ok = !ok;
            } else {
                if (l->k == V_UNDEF)
                    return undef_error(R, x, l);
                if (r->k == V_UNDEF)
                    return undef_error(R, x, r);
                int c = order(l, r);
                if (c == -2)
                    return rfail(R, x, "'%s' not supported between instances of '%s' and '%s'", op,
                                 kind_name(l), kind_name(r));
                ok = !strcmp(op, "<")    ? c < 0
                     : !strcmp(op, "<=") ? c <= 0
                     : !strcmp(op, ">")  ? c > 0
                                         : c >= 0;
            }
            if (!ok)
                return &g_false;
            l = r;
        }
        return &g_true;
    }
    default:
        return rfail(R, x, "internal error: not an expression");
    }
}

/* ---- statements --------------------------------------------------------------------------- */

static bool assign(struct rs *R, struct scope *s, const struct node *x, struct jval *v)
{
    if (x->nnames == 1) {
        scope_set(R, s, x->names[0], v);
        return true;
    }
    struct jval *l = iter_list(R, x, v);
    if (!l)
        return false;
    if (l->n != x->nnames) {
        rfail(R, x, "cannot unpack %zu value(s) into %zu name(s)", l->n, x->nnames);
        return false;
    }
    for (size_t i = 0; i < x->nnames; i++)
        scope_set(R, s, x->names[i], l->items[i]);
    return true;
}

static struct jval *loop_obj(struct rs *R, struct jval *items, size_t i)
{
    struct jval *o = vnew(R->a, V_LOOP);
    size_t n = items->n;
    dput(R->a, o, vstr(R->a, "index"), vint(R->a, (int64_t)i + 1));
    dput(R->a, o, vstr(R->a, "index0"), vint(R->a, (int64_t)i));
    dput(R->a, o, vstr(R->a, "revindex"), vint(R->a, (int64_t)(n - i)));
    dput(R->a, o, vstr(R->a, "revindex0"), vint(R->a, (int64_t)(n - i - 1)));
    dput(R->a, o, vstr(R->a, "first"), vbool(i == 0));
    dput(R->a, o, vstr(R->a, "last"), vbool(i + 1 == n));
    dput(R->a, o, vstr(R->a, "length"), vint(R->a, (int64_t)n));
    dput(R->a, o, vstr(R->a, "depth"), vint(R->a, 1));
    dput(R->a, o, vstr(R->a, "depth0"), vint(R->a, 0));
    dput(R->a, o, vstr(R->a, "previtem"),
         i > 0 ? items->items[i - 1] : vundef(R->a, "there is no previous item"));
    dput(R->a, o, vstr(R->a, "nextitem"),
         i + 1 < n ? items->items[i + 1] : vundef(R->a, "there is no next item"));
    return o;
}

static int exec_node(struct rs *R, struct scope *s, const struct node *x, struct buf *out)
{
    switch (x->k) {
    case N_TEXT:
        buf_append(out, x->lit->s, x->lit->n);
        return R_OK;
    case N_OUTPUT: {
        struct jval *v = eval(R, s, x->a);
        if (!v)
            return R_ERR;
        print_str(out, v);
        return R_OK;
    }
    case N_IF:
        for (size_t i = 0; i < x->kids.n; i++) {
            struct jval *c = eval(R, s, x->kids.v[i]);
            if (!c)
                return R_ERR;
            if (truthy(c))
                return exec_body(R, s, &x->kids2.v[i]->kids, out);
        }
        return x->c ? exec_body(R, s, &x->c->kids, out) : R_OK;
    case N_FOR: {
        struct jval *it = eval(R, s, x->a);
        if (!it)
            return R_ERR;
        struct jval *all = iter_list(R, x->a, it);
        if (!all)
            return R_ERR;
        struct jval *items = all;
        if (x->b) { /* for ... if cond: filter first, so loop.* count the kept items */
            items = vnew(R->a, V_LIST);
            for (size_t i = 0; i < all->n; i++) {
                struct scope *fs = scope_new(R, s);
                if (!assign(R, fs, x, all->items[i]))
                    return R_ERR;
                struct jval *c = eval(R, fs, x->b);
                if (!c)
                    return R_ERR;
                if (truthy(c))
                    lpush(R->a, items, all->items[i]);
            }
        }
        for (size_t i = 0; i < items->n; i++) {
            struct scope *ls = scope_new(R, s);
            scope_set(R, ls, "loop", loop_obj(R, items, i));
            if (!assign(R, ls, x, items->items[i]))
                return R_ERR;
            int rc = exec_body(R, ls, &x->c->kids, out);
            if (rc == R_ERR)
                return R_ERR;
            if (rc == R_BREAK)
                break;
        }
        if (!items->n && x->kids2.n)
            return exec_body(R, s, &x->kids2.v[0]->kids, out);
        return R_OK;
    }
    case N_SET: {
        struct jval *v = eval(R, s, x->a);
        if (!v)
            return R_ERR;
        return assign(R, s, x, v) ? R_OK : R_ERR;
    }
    case N_SET_ATTR: {
        struct jval *ns = lookup(R, s, x->s);
        if (ns->k != V_NS) {
            rfail(R, x, "cannot assign attribute on non-namespace object '%s'", x->s);
            return R_ERR;
        }
        struct jval *v = eval(R, s, x->a);
        if (!v)
            return R_ERR;
        dput(R->a, ns, vstr(R->a, x->names[0]), v);
        return R_OK;
    }
    case N_SET_BLOCK: {
        struct buf b;
        buf_init(&b);
        int rc = exec_body(R, s, &x->c->kids, &b);
        if (rc == R_ERR) {
            buf_release(&b);
            return R_ERR;
        }
        scope_set(R, s, x->names[0], vstrn(R->a, b.data ? b.data : "", b.len));
        buf_release(&b);
        return R_OK;
    }
    case N_MACRO: {
        struct jval *m = vnew(R->a, V_MACRO);
        m->macro = x;
        scope_set(R, s, x->s, m);
        return R_OK;
    }
    case N_BREAK:
        return R_BREAK;
    case N_CONTINUE:
        return R_CONTINUE;
    case N_BLOCK:
        return exec_body(R, s, &x->kids, out);
    default:
        rfail(R, x, "internal error: not a statement");
        return R_ERR;
    }
}

static int exec_body(struct rs *R, struct scope *s, const struct nlist *body, struct buf *out)
{
    for (size_t i = 0; i < body->n; i++) {
        int rc = exec_node(R, s, body->v[i], out);
        if (rc != R_OK)
            return rc;
    }
    return R_OK;
}

int jinja_render(const struct jinja_tpl *t, struct jinja_ctx *c, struct buf *out, char **err)
{
    struct rs R = { 0 };
    R.a = &c->a;
    R.globals = c->vars;
    R.root = scope_new(&R, NULL);
    struct buf b;
    buf_init(&b);
    int rc = exec_body(&R, R.root, &t->body->kids, &b);
    if (rc == R_ERR) {
        err_setf(err, "%s", R.err ? R.err : "render error");
        free(R.err);
        buf_release(&b);
        return -1;
    }
    /* break/continue outside a loop end the template as jinja2's loopcontrols would refuse
     * them at compile time; they cannot reach here from inside a loop. */
    buf_append(out, b.data ? b.data : "", b.len);
    buf_release(&b);
    return 0;
}

/* ============================================================================================
 * Context and value API
 * ========================================================================================== */

struct jinja_ctx *jinja_ctx_new(void)
{
    struct jinja_ctx *c = xcalloc(1, sizeof(*c));
    c->vars = vnew(&c->a, V_DICT);
    return c;
}

void jinja_ctx_free(struct jinja_ctx *c)
{
    if (!c)
        return;
    arena_release(&c->a);
    free(c);
}

void jinja_ctx_set(struct jinja_ctx *c, const char *name, struct jval *v)
{
    dput(&c->a, c->vars, vstr(&c->a, name), v);
}

struct jval *jinja_json(struct jinja_ctx *c, const char *json, size_t len, char **err)
{
    struct jparse p = { &c->a, json, json + len, NULL };
    struct jval *v = jp_value(&p, 0);
    if (v) {
        jp_ws(&p);
        if (p.s != p.end) {
            p.err = "trailing characters after the value";
            v = NULL;
        }
    }
    if (!v) {
        size_t off = (size_t)(p.s - json), line = 1, col = 1;
        for (size_t i = 0; i < off && i < len; i++) {
            if (json[i] == '\n') {
                line++;
                col = 1;
            } else
                col++;
        }
        err_setf(err, "bad JSON at line %zu:%zu: %s", line, col, p.err ? p.err : "error");
    }
    return v;
}

struct jval *jinja_str(struct jinja_ctx *c, const char *s)
{
    return vstr(&c->a, s);
}

struct jval *jinja_bool(struct jinja_ctx *c, int b)
{
    (void)c;
    return vbool(b != 0);
}

struct jval *jinja_none(struct jinja_ctx *c)
{
    (void)c;
    return &g_none;
}

struct jval *jinja_list_new(struct jinja_ctx *c)
{
    return vnew(&c->a, V_LIST);
}

struct jval *jinja_dict_new(struct jinja_ctx *c)
{
    return vnew(&c->a, V_DICT);
}

void jinja_list_push(struct jinja_ctx *c, struct jval *list, struct jval *v)
{
    EXAQ_ASSERT(list->k == V_LIST);
    lpush(&c->a, list, v);
}

void jinja_dict_put(struct jinja_ctx *c, struct jval *dict, const char *key, struct jval *v)
{
    EXAQ_ASSERT(dict->k == V_DICT);
    dput(&c->a, dict, vstr(&c->a, key), v);
}

enum jinja_kind jinja_kind(const struct jval *v)
{
    switch (v->k) {
    case V_UNDEF:
        return JINJA_UNDEFINED;
    case V_NONE:
        return JINJA_NONE;
    case V_BOOL:
        return JINJA_BOOL;
    case V_INT:
        return JINJA_INT;
    case V_FLOAT:
        return JINJA_FLOAT;
    case V_STR:
        return JINJA_STR;
    case V_LIST:
        return JINJA_LIST;
    case V_DICT:
        return JINJA_DICT;
    default:
        return JINJA_OTHER;
    }
}

size_t jinja_len(const struct jval *v)
{
    return (v->k == V_LIST || v->k == V_DICT) ? v->n : 0;
}

struct jval *jinja_list_at(const struct jval *list, size_t i)
{
    EXAQ_ASSERT(list->k == V_LIST && i < list->n);
    return list->items[i];
}

const char *jinja_dict_key(const struct jval *dict, size_t i)
{
    EXAQ_ASSERT(dict->k == V_DICT && i < dict->n);
    return dict->keys[i]->k == V_STR ? dict->keys[i]->s : NULL;
}

struct jval *jinja_dict_val(const struct jval *dict, size_t i)
{
    EXAQ_ASSERT(dict->k == V_DICT && i < dict->n);
    return dict->items[i];
}

struct jval *jinja_dict_get(const struct jval *dict, const char *key)
{
    return dict->k == V_DICT ? dget_s(dict, key) : NULL;
}

const char *jinja_str_get(const struct jval *v)
{
    return v->k == V_STR ? v->s : NULL;
}

void jinja_print_str(struct buf *b, const struct jval *v)
{
    print_str(b, v);
}

int jinja_print_json(struct buf *b, const struct jval *v, char **err)
{
    struct jopt o = { NULL, ", ", ": ", false, false };
    return json_dump(b, v, &o, 0, err);
}
