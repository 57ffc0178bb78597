/*
 * ytree: builds the lanes parser's YAML node tree from the libyaml event stream.
 *
 * The event API is used rather than yaml_parser_load so that positions, alias expansion,
 * nesting depth and node counts stay under our control: an anchor is registered only when its
 * node is complete (so an alias can never refer to an enclosing node), an alias becomes a deep
 * copy charged against YTREE_MAX_NODES, and the depth of open collections is capped at
 * YTREE_MAX_DEPTH so every recursive walk over the tree is bounded.
 */
#include "lanes/ytree.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/util.h"

static struct ynode *node_new(enum ynode_kind kind, int line, int col)
{
    struct ynode *n = xcalloc(1, sizeof(*n));
    n->kind = kind;
    n->line = line;
    n->col = col;
    return n;
}

void lanes__ytree_free(struct ynode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n; i++)
        lanes__ytree_free(n->kids[i]);
    free(n->kids);
    free(n->text);
    free(n);
}

static void kid_append(struct ynode *parent, struct ynode *kid)
{
    /* Grow by powers of two; n is the count. */
    if ((parent->n & (parent->n - 1)) == 0) {
        size_t cap = parent->n ? parent->n * 2 : 4;
        if (parent->n < 4)
            cap = 4;
        parent->kids = xrealloc(parent->kids, cap * sizeof(*parent->kids));
    }
    parent->kids[parent->n++] = kid;
}

/* Levels of collections in a subtree (a scalar has 0). */
static int tree_height(const struct ynode *n)
{
    int h = 0;
    if (n->kind == YNODE_SCALAR)
        return 0;
    for (size_t i = 0; i < n->n; i++) {
        int k = tree_height(n->kids[i]);
        if (k > h)
            h = k;
    }
    return h + 1;
}

/* Counts nodes of a subtree, stopping once limit is passed. */
static size_t count_nodes(const struct ynode *n, size_t limit)
{
    size_t c = 1;
    for (size_t i = 0; i < n->n && c <= limit; i++)
        c += count_nodes(n->kids[i], limit - c);
    return c;
}

struct ynode *lanes__ytree_copy(const struct ynode *n)
{
    struct ynode *c = node_new(n->kind, n->line, n->col);
    c->len = n->len;
    c->stype = n->stype;
    c->ival = n->ival;
    c->fval = n->fval;
    c->bval = n->bval;
    c->int_overflow = n->int_overflow;
    c->has_nul = n->has_nul;
    if (n->text) {
        c->text = xmalloc(n->len + 1);
        memcpy(c->text, n->text, n->len + 1);
    }
    for (size_t i = 0; i < n->n; i++)
        kid_append(c, lanes__ytree_copy(n->kids[i]));
    return c;
}

struct ynode *lanes__ytree_map_new(int line, int col)
{
    return node_new(YNODE_MAP, line, col);
}

void lanes__ytree_map_append(struct ynode *map, struct ynode *key, struct ynode *value)
{
    kid_append(map, key);
    kid_append(map, value);
}

/* ---- scalar resolution --------------------------------------------------------------------- */

static int is_digits(const char *s, const char *end)
{
    if (s >= end)
        return 0;
    for (; s < end; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

/* [-+]?[0-9]+ */
static int looks_int(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    return is_digits(s, s + strlen(s));
}

/* [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static int looks_float(const char *s)
{
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return 0;
        while (isdigit((unsigned char)*p))
            p++;
    } else {
        if (!isdigit((unsigned char)*p))
            return 0;
        while (isdigit((unsigned char)*p))
            p++;
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p))
                p++;
        }
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!isdigit((unsigned char)*p))
            return 0;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

static int str_in(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(s, *set) == 0)
            return 1;
    return 0;
}

static void resolve_plain(struct ynode *n)
{
    static const char *const nulls[] = { "", "~", "null", "Null", "NULL", NULL };
    static const char *const trues[] = { "true", "True", "TRUE", NULL };
    static const char *const falses[] = { "false", "False", "FALSE", NULL };
    static const char *const infs[] = { ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", NULL };
    static const char *const ninfs[] = { "-.inf", "-.Inf", "-.INF", NULL };
    static const char *const nans[] = { ".nan", ".NaN", ".NAN", NULL };
    const char *s = n->text;

    n->stype = YSCALAR_STR;
    if (n->has_nul)
        return;
    if (str_in(s, nulls)) {
        n->stype = YSCALAR_NULL;
    } else if (str_in(s, trues)) {
        n->stype = YSCALAR_BOOL;
        n->bval = 1;
    } else if (str_in(s, falses)) {
        n->stype = YSCALAR_BOOL;
        n->bval = 0;
    } else if (looks_int(s)) {
        char *end;
        long long v;
        n->stype = YSCALAR_INT;
        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno == ERANGE)
            n->int_overflow = 1;
        n->ival = v;
        n->fval = strtod(s, NULL);
    } else if (looks_float(s)) {
        n->stype = YSCALAR_FLOAT;
        n->fval = strtod(s, NULL);
    } else if (str_in(s, infs)) {
        n->stype = YSCALAR_FLOAT;
        n->fval = INFINITY;
    } else if (str_in(s, ninfs)) {
        n->stype = YSCALAR_FLOAT;
        n->fval = -INFINITY;
    } else if (str_in(s, nans)) {
        n->stype = YSCALAR_FLOAT;
        n->fval = NAN;
    }
}

struct ynode *lanes__ytree_scalar_new(const char *s, int line, int col)
{
    struct ynode *n = node_new(YNODE_SCALAR, line, col);
    n->text = xstrdup(s);
    n->len = strlen(s);
    resolve_plain(n);
    return n;
}

/* ---- lookups and descriptions -------------------------------------------------------------- */

struct ynode *lanes__ytree_map_get(const struct ynode *map, const char *name,
                                   const struct ynode **key)
{
    if (!map || map->kind != YNODE_MAP)
        return NULL;
    for (size_t i = 0; i < YMAP_LEN(map); i++) {
        const struct ynode *k = YMAP_KEY(map, i);
        if (k->kind == YNODE_SCALAR && !k->has_nul && strcmp(k->text, name) == 0) {
            if (key)
                *key = k;
            return YMAP_VAL(map, i);
        }
    }
    return NULL;
}

/* Quotes at most 40 characters of s, escaping anything unprintable. */
static void quote_short(struct buf *b, const char *s, size_t len)
{
    size_t shown = len > 40 ? 37 : len;
    buf_puts(b, "'");
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            buf_printf(b, "\\x%02x", c);
        else
            buf_append(b, &s[i], 1);
    }
    if (shown < len)
        buf_puts(b, "...");
    buf_puts(b, "'");
}

char *lanes__ytree_describe(const struct ynode *n)
{
    struct buf b;
    buf_init(&b);
    if (n->kind == YNODE_SEQ) {
        buf_puts(&b, "a list");
    } else if (n->kind == YNODE_MAP) {
        buf_puts(&b, "a mapping");
    } else {
        switch (n->stype) {
        case YSCALAR_NULL:
            buf_puts(&b, "null");
            break;
        case YSCALAR_BOOL:
            buf_printf(&b, "boolean %s", n->text);
            break;
        case YSCALAR_INT:
            buf_puts(&b, "integer ");
            quote_short(&b, n->text, n->len);
            break;
        case YSCALAR_FLOAT:
            buf_puts(&b, "number ");
            quote_short(&b, n->text, n->len);
            break;
        case YSCALAR_STR:
            buf_puts(&b, "string ");
            quote_short(&b, n->text, n->len);
            break;
        }
    }
    return buf_steal(&b);
}

/* ---- loading ------------------------------------------------------------------------------- */

struct anchor {
    char *name;
    struct ynode *node; /* borrowed: a node of the tree being built */
};

struct loader {
    const char *buf;
    size_t len;
    struct ynode *root;
    struct ynode *stack[YTREE_MAX_DEPTH + 1];
    char *stack_anchor[YTREE_MAX_DEPTH + 1];
    int depth;
    struct anchor *anchors;
    size_t nanchors;
    size_t nnodes;
    int ndocs;
    char *err;
    int line, col;
};

static void load_fail(struct loader *L, const yaml_mark_t *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void load_fail(struct loader *L, const yaml_mark_t *m, const char *fmt, ...)
{
    va_list ap;
    if (L->err)
        return;
    va_start(ap, fmt);
    L->err = xvasprintf(fmt, ap);
    va_end(ap);
    L->line = m ? (int)m->line + 1 : 0;
    L->col = m ? (int)m->column + 1 : 0;
}

/* 1-based line and column of a byte offset (columns count bytes here). */
static void offset_pos(const struct loader *L, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < L->len; i++) {
        if (L->buf[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static void register_anchor(struct loader *L, char *name, struct ynode *n)
{
    L->anchors = xrealloc(L->anchors, (L->nanchors + 1) * sizeof(*L->anchors));
    L->anchors[L->nanchors].name = name;
    L->anchors[L->nanchors].node = n;
    L->nanchors++;
}

/* Attaches a complete or just-opened node to the open collection (or makes it the root). */
static void attach(struct loader *L, struct ynode *n)
{
    if (L->depth == 0) {
        if (!L->root)
            L->root = n;
        else
            lanes__ytree_free(n); /* cannot happen: one root per document */
        return;
    }
    kid_append(L->stack[L->depth - 1], n);
}

static int tag_ok(const char *tag, enum ynode_kind kind, int *force_str)
{
    *force_str = 0;
    if (!tag)
        return 1;
    if (kind == YNODE_SCALAR) {
        if (strcmp(tag, "!") == 0 || strcmp(tag, YAML_STR_TAG) == 0) {
            *force_str = 1;
            return 1;
        }
        return 0;
    }
    if (kind == YNODE_SEQ)
        return strcmp(tag, YAML_SEQ_TAG) == 0 || strcmp(tag, "!") == 0;
    return strcmp(tag, YAML_MAP_TAG) == 0 || strcmp(tag, "!") == 0;
}

static int charge(struct loader *L, size_t n, const yaml_mark_t *m)
{
    if (n > YTREE_MAX_NODES || L->nnodes + n > YTREE_MAX_NODES) {
        load_fail(L, m, "document too large (more than %d nodes once aliases are expanded)",
                  YTREE_MAX_NODES);
        return -1;
    }
    L->nnodes += n;
    return 0;
}

static void on_scalar(struct loader *L, yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    int force_str;
    struct ynode *n;
    if (charge(L, 1, m) < 0)
        return;
    if (!tag_ok((const char *)ev->data.scalar.tag, YNODE_SCALAR, &force_str)) {
        load_fail(L, m, "unsupported YAML tag '%s' (only !!str is allowed on scalars)",
                  (const char *)ev->data.scalar.tag);
        return;
    }
    n = node_new(YNODE_SCALAR, (int)m->line + 1, (int)m->column + 1);
    n->len = ev->data.scalar.length;
    n->text = xmalloc(n->len + 1);
    memcpy(n->text, ev->data.scalar.value, n->len);
    n->text[n->len] = '\0';
    n->has_nul = memchr(n->text, '\0', n->len) != NULL;
    if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !force_str)
        resolve_plain(n);
    else
        n->stype = YSCALAR_STR;
    attach(L, n);
    if (ev->data.scalar.anchor)
        register_anchor(L, xstrdup((const char *)ev->data.scalar.anchor), n);
}

static void on_start(struct loader *L, yaml_event_t *ev, enum ynode_kind kind)
{
    const yaml_mark_t *m = &ev->start_mark;
    const char *tag, *anchor;
    int force_str;
    struct ynode *n;
    if (kind == YNODE_SEQ) {
        tag = (const char *)ev->data.sequence_start.tag;
        anchor = (const char *)ev->data.sequence_start.anchor;
    } else {
        tag = (const char *)ev->data.mapping_start.tag;
        anchor = (const char *)ev->data.mapping_start.anchor;
    }
    if (L->depth >= YTREE_MAX_DEPTH) {
        load_fail(L, m, "nesting deeper than %d levels", YTREE_MAX_DEPTH);
        return;
    }
    if (charge(L, 1, m) < 0)
        return;
    if (!tag_ok(tag, kind, &force_str)) {
        load_fail(L, m, "unsupported YAML tag '%s'", tag);
        return;
    }
    n = node_new(kind, (int)m->line + 1, (int)m->column + 1);
    attach(L, n);
    L->stack_anchor[L->depth] = anchor ? xstrdup(anchor) : NULL;
    L->stack[L->depth++] = n;
}

static void on_end(struct loader *L)
{
    struct ynode *n;
    char *anchor;
    if (L->depth == 0)
        return;
    L->depth--;
    n = L->stack[L->depth];
    anchor = L->stack_anchor[L->depth];
    L->stack_anchor[L->depth] = NULL;
    if (anchor)
        register_anchor(L, anchor, n);
}

static void on_alias(struct loader *L, yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    const char *name = (const char *)ev->data.alias.anchor;
    struct ynode *target = NULL, *c;
    for (size_t i = L->nanchors; i-- > 0;) {
        if (strcmp(L->anchors[i].name, name) == 0) {
            target = L->anchors[i].node;
            break;
        }
    }
    if (!target) {
        /* Either undefined, or it names a collection that is still open (a cycle). */
        load_fail(L, m, "alias '*%s' refers to no complete anchor '&%s'", name, name);
        return;
    }
    if (L->depth + tree_height(target) > YTREE_MAX_DEPTH) {
        load_fail(L, m, "nesting deeper than %d levels once alias '*%s' is expanded",
                  YTREE_MAX_DEPTH, name);
        return;
    }
    if (charge(L, count_nodes(target, YTREE_MAX_NODES + 1), m) < 0)
        return;
    c = lanes__ytree_copy(target);
    c->line = (int)m->line + 1;
    c->col = (int)m->column + 1;
    attach(L, c);
}

/* A hint for the libyaml problems people hit most, or "". */
static const char *problem_hint(const char *problem)
{
    static const struct {
        const char *problem, *hint;
    } hints[] = {
        { "mapping values are not allowed", " (check the indentation, and quote values that "
                                            "contain ': ')" },
        { "did not find expected key", " (check the indentation of this block)" },
        { "cannot start any token", " (tabs cannot indent YAML; quote values that start with "
                                    "'@' or '`')" },
        { "did not find expected ',' or ']'", " (a [ list is not closed)" },
        { "did not find expected ',' or '}'", " (a { mapping is not closed)" },
        { "found unexpected end of stream", " (a quote is not closed)" },
        { "did not find expected '-' indicator", " (list items of one block must line up)" },
    };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(hints); i++)
        if (strstr(problem, hints[i].problem))
            return hints[i].hint;
    return "";
}

static void parser_fail(struct loader *L, const yaml_parser_t *p)
{
    const char *problem = p->problem ? p->problem : "unknown error";
    const char *hint = problem_hint(problem);
    if (p->error == YAML_MEMORY_ERROR) {
        load_fail(L, NULL, "out of memory while reading YAML");
    } else if (p->error == YAML_READER_ERROR) {
        int line, col;
        offset_pos(L, p->problem_offset, &line, &col);
        if (p->problem_value != -1)
            load_fail(L, NULL, "invalid YAML text: %s (byte 0x%02x)", problem,
                      (unsigned)p->problem_value & 0xffu);
        else
            load_fail(L, NULL, "invalid YAML text: %s", problem);
        L->line = line;
        L->col = col;
    } else if (p->context) {
        load_fail(L, &p->problem_mark, "invalid YAML: %s %s (started at line %d, column %d)%s",
                  problem, p->context, (int)p->context_mark.line + 1,
                  (int)p->context_mark.column + 1, hint);
    } else {
        load_fail(L, &p->problem_mark, "invalid YAML: %s%s", problem, hint);
    }
}

int lanes__ytree_load(const char *buf, size_t len, struct ynode **root, char **err, int *line,
                      int *col)
{
    struct loader L;
    yaml_parser_t parser;
    int done = 0;

    memset(&L, 0, sizeof(L));
    L.buf = buf;
    L.len = len;
    *root = NULL;
    *err = NULL;
    *line = *col = 0;
    if (len > YTREE_MAX_BYTES) {
        *err = xasprintf("lanes file too large (%zu bytes, the limit is %d)", len, YTREE_MAX_BYTES);
        return -1;
    }
    if (!yaml_parser_initialize(&parser)) {
        *err = xstrdup("cannot initialize the YAML parser");
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    while (!done && !L.err) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            parser_fail(&L, &parser);
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++L.ndocs > 1)
                load_fail(&L, &ev.start_mark,
                          "a lanes file holds a single YAML document; found a second one");
            break;
        case YAML_SCALAR_EVENT:
            on_scalar(&L, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
            on_start(&L, &ev, YNODE_SEQ);
            break;
        case YAML_MAPPING_START_EVENT:
            on_start(&L, &ev, YNODE_MAP);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            on_end(&L);
            break;
        case YAML_ALIAS_EVENT:
            on_alias(&L, &ev);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    for (size_t i = 0; i < L.nanchors; i++)
        free(L.anchors[i].name);
    free(L.anchors);
    for (int i = 0; i <= YTREE_MAX_DEPTH; i++)
        free(L.stack_anchor[i]);
    if (L.err) {
        lanes__ytree_free(L.root);
        *err = L.err;
        *line = L.line;
        *col = L.col;
        return -1;
    }
    *root = L.root;
    return 0;
}
