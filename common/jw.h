/*
 * jw: a minimal streaming JSON writer into a struct buf. It tracks commas, escapes strings
 * (UTF-8 passes through; control characters become \u00XX) and prints numbers so that integral
 * values print as integers and non-finite values as null. The caller nests begin/end calls
 * correctly; a writer does no validation beyond that.
 */
#ifndef EXAQ_JW_H
#define EXAQ_JW_H

#include <stdbool.h>
#include <stdint.h>

#include "common/util.h"

struct jw {
    struct buf *b;
    int depth;
    bool first[64]; /* per depth: no value written yet */
    bool after_key;
};

void jw_init(struct jw *w, struct buf *b);
void jw_obj_begin(struct jw *w);
void jw_obj_end(struct jw *w);
void jw_arr_begin(struct jw *w);
void jw_arr_end(struct jw *w);
void jw_key(struct jw *w, const char *k);
void jw_str(struct jw *w, const char *s); /* NULL writes null */
void jw_int(struct jw *w, int64_t v);
void jw_num(struct jw *w, double v);
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
void jw_raw(struct jw *w, const char *json); /* already-valid JSON text */

/* key + value shorthands */
void jw_kstr(struct jw *w, const char *k, const char *s);
void jw_kint(struct jw *w, const char *k, int64_t v);
void jw_knum(struct jw *w, const char *k, double v);
void jw_kbool(struct jw *w, const char *k, bool v);

/* Appends s as a JSON string literal (with quotes) to b. */
void json_escape(struct buf *b, const char *s);
/* Formats a double the way jw_num does into out (>= 32 bytes). */
void json_num_fmt(double v, char *out, size_t n);

#endif
