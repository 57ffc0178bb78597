/*
 * jv: JSON values for stage specs and their canonical printer (see jv.h for the rules).
 *
 * Objects keep insertion order; keys are sorted only when printing, on a private index, so the
 * tree is easy to build and to debug.
 */
#include "lanes/jv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct jv *jv_new(enum jv_type t)
{
    struct jv *v = xcalloc(1, sizeof(*v));
    v->t = t;
    return v;
}

struct jv *lanes__jv_null(void)
{
    return jv_new(JV_NULL);
}

struct jv *lanes__jv_bool(int b)
{
    struct jv *v = jv_new(JV_BOOL);
    v->b = b ? 1 : 0;
    return v;
}

struct jv *lanes__jv_int(int64_t i)
{
    struct jv *v = jv_new(JV_INT);
    v->i = i;
    return v;
}

struct jv *lanes__jv_num(double d)
{
    struct jv *v = jv_new(JV_NUM);
    v->d = isfinite(d) ? d : 0.0;
    return v;
}

struct jv *lanes__jv_str(const char *s)
{
    struct jv *v = jv_new(JV_STR);
    v->s = xstrdup(s);
    return v;
}

struct jv *lanes__jv_path(const char *abs_path)
{
    struct jv *v = jv_new(JV_PATH);
    v->s = xstrdup(abs_path);
    return v;
}

struct jv *lanes__jv_raw(const char *json)
{
    struct jv *v = jv_new(JV_RAW);
    v->s = xstrdup(json);
    return v;
}

struct jv *lanes__jv_arr(void)
{
    return jv_new(JV_ARR);
}

struct jv *lanes__jv_obj(void)
{
    return jv_new(JV_OBJ);
}

void lanes__jv_free(struct jv *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        lanes__jv_free(v->v[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->v);
    free(v->keys);
    free(v->s);
    free(v);
}

static void grow(struct jv *v)
{
    if (v->n < v->cap)
        return;
    v->cap = v->cap ? v->cap * 2 : 8;
    v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
    if (v->t == JV_OBJ)
        v->keys = xrealloc(v->keys, v->cap * sizeof(*v->keys));
}

void lanes__jv_set(struct jv *obj, const char *key, struct jv *val)
{
    for (size_t i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0) {
            lanes__jv_free(obj->v[i]);
            obj->v[i] = val;
            return;
        }
    }
    grow(obj);
    obj->keys[obj->n] = xstrdup(key);
    obj->v[obj->n++] = val;
}

void lanes__jv_set_new(struct jv *obj, const char *key, struct jv *val)
{
    grow(obj);
    obj->keys[obj->n] = xstrdup(key);
    obj->v[obj->n++] = val;
}

void lanes__jv_push(struct jv *arr, struct jv *val)
{
    grow(arr);
    arr->v[arr->n++] = val;
}

void lanes__jv_print_string(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        switch (c) {
        case '"':
            buf_append(b, "\\\"", 2);
            break;
        case '\\':
            buf_append(b, "\\\\", 2);
            break;
        case '\n':
            buf_append(b, "\\n", 2);
            break;
        case '\t':
            buf_append(b, "\\t", 2);
            break;
        case '\r':
            buf_append(b, "\\r", 2);
            break;
        case '\b':
            buf_append(b, "\\b", 2);
            break;
        case '\f':
            buf_append(b, "\\f", 2);
            break;
        default:
            if (c < 0x20) {
                char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
                buf_append(b, esc, 6);
            } else {
                buf_append(b, p, 1);
            }
        }
    }
    buf_append(b, "\"", 1);
}

void lanes__jv_print_num(struct buf *b, double d)
{
    char tmp[64];
    if (!isfinite(d))
        d = 0.0;
    /* Integral values print as integers (2^53 is where doubles stop being exact). */
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        if (d == 0.0)
            d = 0.0; /* no "-0" */
        snprintf(tmp, sizeof(tmp), "%.0f", d);
        buf_puts(b, tmp);
        return;
    }
    /* Shortest of 15..17 significant digits that reads back to the same double. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    buf_puts(b, tmp);
}

static size_t file_index(struct jv_files *f, const char *path)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->paths[i], path) == 0)
            return i;
    f->paths = xrealloc(f->paths, (f->n + 1) * sizeof(*f->paths));
    f->paths[f->n] = xstrdup(path);
    return f->n++;
}

struct kv {
    const char *key;
    const struct jv *val;
};

static int cmp_kv(const void *a, const void *b)
{
    return strcmp(((const struct kv *)a)->key, ((const struct kv *)b)->key);
}

void lanes__jv_print(struct buf *b, const struct jv *v, struct jv_files *key_files)
{
    char tmp[32];
    switch (v->t) {
    case JV_NULL:
        buf_puts(b, "null");
        break;
    case JV_BOOL:
        buf_puts(b, v->b ? "true" : "false");
        break;
    case JV_INT:
        snprintf(tmp, sizeof(tmp), "%lld", (long long)v->i);
        buf_puts(b, tmp);
        break;
    case JV_NUM:
        lanes__jv_print_num(b, v->d);
        break;
    case JV_STR:
        lanes__jv_print_string(b, v->s);
        break;
    case JV_PATH:
        if (key_files) {
            snprintf(tmp, sizeof(tmp), "@file:%zu", file_index(key_files, v->s));
            lanes__jv_print_string(b, tmp);
        } else {
            lanes__jv_print_string(b, v->s);
        }
        break;
    case JV_RAW:
        buf_puts(b, v->s);
        break;
    case JV_ARR:
        buf_append(b, "[", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_append(b, ",", 1);
            lanes__jv_print(b, v->v[i], key_files);
        }
        buf_append(b, "]", 1);
        break;
    case JV_OBJ: {
        /* Sort a private index (no shared state: parsers may run on several threads). */
        struct kv *kv = xmalloc((v->n ? v->n : 1) * sizeof(*kv));
        for (size_t i = 0; i < v->n; i++) {
            kv[i].key = v->keys[i];
            kv[i].val = v->v[i];
        }
        qsort(kv, v->n, sizeof(*kv), cmp_kv);
        buf_append(b, "{", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_append(b, ",", 1);
            lanes__jv_print_string(b, kv[i].key);
            buf_append(b, ":", 1);
            lanes__jv_print(b, kv[i].val, key_files);
        }
        buf_append(b, "}", 1);
        free(kv);
        break;
    }
    }
}

char *lanes__jv_print_new(const struct jv *v, struct jv_files *key_files)
{
    struct buf b;
    buf_init(&b);
    lanes__jv_print(&b, v, key_files);
    buf_cstr(&b);
    return buf_steal(&b);
}
