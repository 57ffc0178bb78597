/*
 * jv: the small JSON value tree the lanes parser builds stage specs in, and its canonical
 * printer.
 *
 * Canonical text is compact, objects have their keys sorted bytewise, integers print as
 * integers, other numbers print in the shortest form that reads back to the same double, and
 * strings escape only what JSON requires (UTF-8 passes through). Two trees with the same
 * content therefore print byte-identical text. A JV_PATH is a string that names a data file:
 * printed as itself, or as "@file:<i>" in key mode, where i indexes a file list built in print
 * order. Internal to lanes/ (functions are lanes__jv_*).
 */
#ifndef EXAQ_LANES_JV_H
#define EXAQ_LANES_JV_H

#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

enum jv_type {
    JV_NULL = 0,
    JV_BOOL,
    JV_INT,
    JV_NUM,
    JV_STR,
    JV_PATH,
    JV_ARR,
    JV_OBJ,
    JV_RAW, /* already canonical JSON text, printed verbatim */
};

struct jv {
    enum jv_type t;
    int b;
    int64_t i;
    double d;      /* finite */
    char *s;       /* JV_STR, JV_PATH, JV_RAW */
    char **keys;   /* JV_OBJ */
    struct jv **v; /* JV_ARR items, JV_OBJ values */
    size_t n, cap;
};

struct jv *lanes__jv_null(void);
struct jv *lanes__jv_bool(int b);
struct jv *lanes__jv_int(int64_t i);
struct jv *lanes__jv_num(double d); /* d must be finite */
struct jv *lanes__jv_str(const char *s);
struct jv *lanes__jv_path(const char *abs_path);
struct jv *lanes__jv_raw(const char *json);
struct jv *lanes__jv_arr(void);
struct jv *lanes__jv_obj(void);
void lanes__jv_free(struct jv *v); /* NULL ok */

/* Takes val. Setting a key that exists replaces its value. */
void lanes__jv_set(struct jv *obj, const char *key, struct jv *val);
/* Takes val; the caller guarantees key is not in obj yet (no O(n) check). */
void lanes__jv_set_new(struct jv *obj, const char *key, struct jv *val);
void lanes__jv_push(struct jv *arr, struct jv *val);

/* Print modes. In key mode *files collects the distinct paths in print order. */
struct jv_files {
    char **paths;
    size_t n;
};
void lanes__jv_print(struct buf *b, const struct jv *v, struct jv_files *key_files);
char *lanes__jv_print_new(const struct jv *v, struct jv_files *key_files); /* new string */

/* Appends a JSON string literal for s. */
void lanes__jv_print_string(struct buf *b, const char *s);
/* Appends a canonical number. */
void lanes__jv_print_num(struct buf *b, double d);

#endif
