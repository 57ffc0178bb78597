/*
 * jw: streaming JSON writer. See jw.h.
 */
#include "common/jw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jw_init(struct jw *w, struct buf *b)
{
    memset(w, 0, sizeof(*w));
    w->b = b;
    w->first[0] = true;
}

static void sep(struct jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (!w->first[w->depth])
        buf_puts(w->b, ",");
    w->first[w->depth] = false;
}

static void push(struct jw *w, const char *c)
{
    sep(w);
    buf_puts(w->b, c);
    EXAQ_ASSERT(w->depth + 1 < (int)EXAQ_ARRAY_LEN(w->first));
    w->depth++;
    w->first[w->depth] = true;
}

static void pop(struct jw *w, const char *c)
{
    EXAQ_ASSERT(w->depth > 0);
    w->depth--;
    buf_puts(w->b, c);
}

void jw_obj_begin(struct jw *w)
{
    push(w, "{");
}

void jw_obj_end(struct jw *w)
{
    pop(w, "}");
}

void jw_arr_begin(struct jw *w)
{
    push(w, "[");
}

void jw_arr_end(struct jw *w)
{
    pop(w, "]");
}

void json_escape(struct buf *b, const char *s)
{
    buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
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
        default:
            if (*p < 0x20)
                buf_printf(b, "\\u%04x", *p);
            else
                buf_append(b, p, 1);
        }
    }
    buf_puts(b, "\"");
}

void jw_key(struct jw *w, const char *k)
{
    sep(w);
    json_escape(w->b, k);
    buf_puts(w->b, ":");
    w->after_key = true;
}

void jw_str(struct jw *w, const char *s)
{
    sep(w);
    if (s)
        json_escape(w->b, s);
    else
        buf_puts(w->b, "null");
}

void jw_int(struct jw *w, int64_t v)
{
    sep(w);
    buf_printf(w->b, "%lld", (long long)v);
}

void json_num_fmt(double v, char *out, size_t n)
{
    if (!isfinite(v)) {
        snprintf(out, n, "null");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, n, "%.0f", v);
        return;
    }
    /* Shortest of %.15g / %.17g that round-trips. */
    snprintf(out, n, "%.15g", v);
    if (strtod(out, NULL) != v)
        snprintf(out, n, "%.17g", v);
}

void jw_num(struct jw *w, double v)
{
    char tmp[40];
    sep(w);
    json_num_fmt(v, tmp, sizeof(tmp));
    buf_puts(w->b, tmp);
}

void jw_bool(struct jw *w, bool v)
{
    sep(w);
    buf_puts(w->b, v ? "true" : "false");
}

void jw_null(struct jw *w)
{
    sep(w);
    buf_puts(w->b, "null");
}

void jw_raw(struct jw *w, const char *json)
{
    sep(w);
    buf_puts(w->b, json);
}

void jw_kstr(struct jw *w, const char *k, const char *s)
{
    jw_key(w, k);
    jw_str(w, s);
}

void jw_kint(struct jw *w, const char *k, int64_t v)
{
    jw_key(w, k);
    jw_int(w, v);
}

void jw_knum(struct jw *w, const char *k, double v)
{
    jw_key(w, k);
    jw_num(w, v);
}

void jw_kbool(struct jw *w, const char *k, bool v)
{
    jw_key(w, k);
    jw_bool(w, v);
}
