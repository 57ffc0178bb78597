/*
 * ytree: a small YAML node tree for the lanes parser, built from libyaml events.
 *
 * It owns what the libyaml document API leaves to the caller: every node carries its 1-based
 * line and column, plain scalars are resolved to null/bool/int/float/string once (quoted
 * scalars are always strings), aliases are expanded into copies under a node budget (no
 * billion laughs, no cycles), nesting is bounded, and a file must hold exactly one document.
 * Nothing here knows the lanes schema. Internal to lanes/ (functions are lanes__ytree_*).
 */
#ifndef EXAQ_LANES_YTREE_H
#define EXAQ_LANES_YTREE_H

#include <stddef.h>
#include <stdint.h>

#define YTREE_MAX_DEPTH 64      /* nested collections; deeper input is an error */
#define YTREE_MAX_NODES 200000  /* nodes after alias expansion */
#define YTREE_MAX_BYTES 8388608 /* 8 MiB of YAML text */

enum ynode_kind {
    YNODE_SCALAR = 0,
    YNODE_SEQ,
    YNODE_MAP,
};

/* What a scalar resolved to (YAML 1.2 core schema, decimal integers only). */
enum yscalar_type {
    YSCALAR_NULL = 0,
    YSCALAR_BOOL,
    YSCALAR_INT,
    YSCALAR_FLOAT,
    YSCALAR_STR,
};

struct ynode {
    enum ynode_kind kind;
    int line, col; /* 1-based position of the node's first character */
    /* Scalars. text is NUL-terminated; has_nul is set when the value itself holds a NUL. */
    char *text;
    size_t len;
    enum yscalar_type stype;
    int64_t ival;     /* YSCALAR_INT */
    double fval;      /* YSCALAR_FLOAT, also set for YSCALAR_INT */
    int bval;         /* YSCALAR_BOOL */
    int int_overflow; /* YSCALAR_INT that does not fit in int64 */
    int has_nul;
    /* Collections: a sequence has n items; a mapping has n/2 pairs, kids[2i] the key and
     * kids[2i+1] the value. */
    struct ynode **kids;
    size_t n;
};

/*
 * Parses buf (len bytes, need not be NUL-terminated) into a tree. Returns 0 and sets *root
 * (NULL for an empty stream), or -1 and sets *err (new string), *line and *col (1-based; 0 when
 * unknown).
 */
int lanes__ytree_load(const char *buf, size_t len, struct ynode **root, char **err, int *line,
                      int *col);
void lanes__ytree_free(struct ynode *n); /* NULL ok */

/* Deep copy of a node (positions kept). */
struct ynode *lanes__ytree_copy(const struct ynode *n);
/* New empty mapping at the given position. */
struct ynode *lanes__ytree_map_new(int line, int col);
/* Appends a key/value pair to a mapping; takes both nodes. */
void lanes__ytree_map_append(struct ynode *map, struct ynode *key, struct ynode *value);
/* New plain scalar holding s, resolved like YAML text, at the given position. */
struct ynode *lanes__ytree_scalar_new(const char *s, int line, int col);

/* Number of pairs of a mapping, the i-th key and value. */
#define YMAP_LEN(m)    ((m)->n / 2)
#define YMAP_KEY(m, i) ((m)->kids[2 * (i)])
#define YMAP_VAL(m, i) ((m)->kids[2 * (i) + 1])

/* First value of a mapping whose key text is name, or NULL. Sets *key when key is not NULL. */
struct ynode *lanes__ytree_map_get(const struct ynode *map, const char *name,
                                   const struct ynode **key);

/* "string 'abc'", "integer 5", "a list" ...: what a node is, for error messages (new string). */
char *lanes__ytree_describe(const struct ynode *n);

#endif
