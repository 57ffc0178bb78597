/*
 * schema: stage kinds, their field tables and the rules between fields, and the value checkers
 * the rest of the lanes parser shares.
 *
 * Validation of a stage runs in two steps. First every key of the stage mapping is looked up
 * in the kind's table (resource keys go to res, never into the spec) and its value is type
 * checked into a struct fval. Then the kind's build function applies the cross-field rules
 * (method-specific fields, scheme/group_size, exactly-one-of groups, calibration needs) and
 * the defaults, and fills a jv object that becomes spec_json and key_json. The spec holds
 * exactly the documented fields of docs/lanes.md, so two stages that differ only in key order
 * or in spelled-out defaults print byte-identical JSON.
 */
#include "lanes/schema.h"

#include <cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "lanes/spec.h"

/* ===== diagnostics ============================================================================ */

static int same_error(const struct lanes_diag_item *it, int line, int col, const char *msg)
{
    size_t n = strlen(msg);
    if (it->line != line || it->col != col || strncmp(it->msg, msg, n) != 0)
        return 0;
    return it->msg[n] == '\0' || strncmp(it->msg + n, " (in lane '", 11) == 0;
}

static void add_item(struct lanes__ctx *c, int line, int col, char *msg)
{
    struct lanes_diag *d = c->diag;
    for (size_t i = c->diag_start; i < d->n; i++) {
        if (same_error(&d->items[i], line, col, msg)) {
            free(msg);
            return;
        }
    }
    if (c->nerr >= LANES_MAX_ERRORS) {
        /* lanes.c appends one "too many errors" item after sorting. */
        free(msg);
        c->capped = 1;
        return;
    }
    if (c->lane_note) {
        char *m = xasprintf("%s (in lane '%s')", msg, c->lane_note);
        free(msg);
        msg = m;
    }
    d->items = xrealloc(d->items, (d->n + 1) * sizeof(*d->items));
    d->items[d->n].file = xstrdup(c->file);
    d->items[d->n].line = line;
    d->items[d->n].col = col;
    d->items[d->n].msg = msg;
    d->n++;
    c->nerr++;
}

void lanes__err_at(struct lanes__ctx *c, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_item(c, line, col, xvasprintf(fmt, ap));
    va_end(ap);
}

void lanes__err(struct lanes__ctx *c, const struct ynode *at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add_item(c, at ? at->line : 0, at ? at->col : 0, xvasprintf(fmt, ap));
    va_end(ap);
}

char *lanes__hint(const char *word, const char *const *cands)
{
    const char *best = NULL;
    int bestd = INT_MAX;
    struct buf b;
    for (const char *const *p = cands; *p; p++) {
        int d = strcasecmp(word, *p) == 0 ? 0 : str_edit_distance(word, *p);
        size_t len = strlen(*p);
        int thr = len >= 10 ? 3 : len >= 5 ? 2 : 1;
        if (d <= thr && d < bestd) {
            best = *p;
            bestd = d;
        }
    }
    if (best)
        return xasprintf(" (did you mean '%s'?)", best);
    buf_init(&b);
    buf_puts(&b, " (expected one of: ");
    for (const char *const *p = cands; *p; p++)
        buf_printf(&b, "%s%s", p == cands ? "" : ", ", *p);
    buf_puts(&b, ")");
    return buf_steal(&b);
}

/* ===== paths ================================================================================== */

char *lanes__abs_path(const char *dir, const char *p)
{
    char *joined = p[0] == '/' ? xstrdup(p) : path_join(dir, p);
    char *real = path_abs(joined);
    char **parts;
    size_t nparts = 0;
    struct buf b;
    char *save = NULL, *tok;
    if (real) {
        free(joined);
        return real;
    }
    /* Lexical normalisation: drop empty and "." components, let ".." eat the previous one. */
    parts = xmalloc((strlen(joined) / 2 + 2) * sizeof(*parts));
    for (tok = strtok_r(joined, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (strcmp(tok, ".") == 0)
            continue;
        if (strcmp(tok, "..") == 0) {
            if (nparts)
                nparts--;
            continue;
        }
        parts[nparts++] = tok;
    }
    buf_init(&b);
    for (size_t i = 0; i < nparts; i++)
        buf_printf(&b, "/%s", parts[i]);
    if (nparts == 0)
        buf_puts(&b, "/");
    free(parts);
    free(joined);
    return buf_steal(&b);
}

/* ===== value checkers ========================================================================= */

static void type_err(struct lanes__ctx *c, const struct ynode *v, const char *want,
                     const char *name, const char *hint)
{
    char *what = lanes__ytree_describe(v);
    lanes__err(c, v, "expected %s for '%s', got %s%s", want, name, what, hint ? hint : "");
    free(what);
}

int lanes__get_str(struct lanes__ctx *c, const struct ynode *v, const char *name, const char **out)
{
    if (v->kind != YNODE_SCALAR || v->stype != YSCALAR_STR) {
        const char *hint = NULL;
        if (v->kind == YNODE_SCALAR && v->stype != YSCALAR_NULL)
            hint = " (quote it to make it a string)";
        type_err(c, v, "a string", name, hint);
        return -1;
    }
    if (v->has_nul) {
        lanes__err(c, v, "'%s' contains a NUL character", name);
        return -1;
    }
    *out = v->text;
    return 0;
}

int lanes__get_int(struct lanes__ctx *c, const struct ynode *v, const char *name, int64_t lo,
                   int64_t hi, int64_t *out)
{
    if (v->kind != YNODE_SCALAR || v->stype != YSCALAR_INT) {
        const char *hint = NULL;
        if (v->kind == YNODE_SCALAR && v->stype == YSCALAR_FLOAT && isfinite(v->fval) &&
            v->fval == floor(v->fval))
            hint = " (write it without a decimal point)";
        type_err(c, v, "an integer", name, hint);
        return -1;
    }
    if (v->int_overflow || v->ival < lo || v->ival > hi) {
        if (hi == INT64_MAX || hi == INT32_MAX)
            lanes__err(c, v, "'%s' must be >= %lld, got %s", name, (long long)lo, v->text);
        else
            lanes__err(c, v, "'%s' must be between %lld and %lld, got %s", name, (long long)lo,
                       (long long)hi, v->text);
        return -1;
    }
    *out = v->ival;
    return 0;
}

int lanes__get_num(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                   int lo_open, double hi, int hi_open, double *out)
{
    double d;
    int bad;
    if (v->kind != YNODE_SCALAR || (v->stype != YSCALAR_INT && v->stype != YSCALAR_FLOAT)) {
        type_err(c, v, "a number", name, NULL);
        return -1;
    }
    d = v->fval;
    if (!isfinite(d)) {
        lanes__err(c, v, "'%s' must be a finite number, got %s", name, v->text);
        return -1;
    }
    bad = lo_open ? !(d > lo) : !(d >= lo);
    if (isfinite(hi))
        bad |= hi_open ? !(d < hi) : !(d <= hi);
    if (bad) {
        if (isfinite(hi))
            lanes__err(c, v, "'%s' must be in %c%g, %g%c, got %s", name, lo_open ? '(' : '[', lo,
                       hi, hi_open ? ')' : ']', v->text);
        else
            lanes__err(c, v, "'%s' must be %s %g, got %s", name, lo_open ? ">" : ">=", lo, v->text);
        return -1;
    }
    *out = d;
    return 0;
}

int lanes__get_bool(struct lanes__ctx *c, const struct ynode *v, const char *name, int *out)
{
    if (v->kind != YNODE_SCALAR || v->stype != YSCALAR_BOOL) {
        type_err(c, v, "true or false", name, NULL);
        return -1;
    }
    *out = v->bval;
    return 0;
}

int lanes__get_file(struct lanes__ctx *c, const struct ynode *v, const char *name, char **abs)
{
    const char *p;
    struct stat st;
    char *a;
    *abs = NULL;
    if (v->kind != YNODE_SCALAR || v->stype != YSCALAR_STR) {
        type_err(c, v, "a file path", name, NULL);
        return -1;
    }
    if (lanes__get_str(c, v, name, &p) < 0)
        return -1;
    if (!*p) {
        lanes__err(c, v, "'%s' is an empty path", name);
        return -1;
    }
    a = lanes__abs_path(c->dir, p);
    if (stat(a, &st) < 0) {
        lanes__err(c, v,
                   "data file '%s' for '%s' not found (looked for '%s'; relative paths start at "
                   "the lanes file's directory)",
                   p, name, a);
        free(a);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        lanes__err(c, v, "'%s' must name a regular file, but '%s' is %s", name, a,
                   S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
        free(a);
        return -1;
    }
    *abs = a;
    return 0;
}

static const char *map_key_text(struct lanes__ctx *c, const struct ynode *k)
{
    /* Non-scalar keys are reported once by the duplicate-key pass of lanes.c. */
    (void)c;
    if (k->kind != YNODE_SCALAR || k->has_nul)
        return NULL;
    return k->text;
}

int lanes__check_keys(struct lanes__ctx *c, const struct ynode *map, const char *const *keys,
                      const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < YMAP_LEN(map); i++) {
        const char *k = map_key_text(c, YMAP_KEY(map, i));
        int found = 0;
        if (!k)
            continue;
        for (const char *const *p = keys; *p && !found; p++)
            found = strcmp(k, *p) == 0;
        if (!found) {
            char *h = lanes__hint(k, keys);
            lanes__err(c, YMAP_KEY(map, i), "unknown key '%s' in %s%s", k, what, h);
            free(h);
            bad++;
        }
    }
    return bad;
}

/* ===== resources ============================================================================== */

#define RES_KEY(name, type, lo, hi, def) #name,
const char *const lanes_res_keys[] = { LANES_RESOURCES(RES_KEY) NULL };
#undef RES_KEY
#define res_keys lanes_res_keys

int lanes__is_res_key(const char *name)
{
    for (const char *const *p = res_keys; *p; p++)
        if (strcmp(name, *p) == 0)
            return 1;
    return 0;
}

void lanes__res_default(struct lanes_res *res)
{
#define RES_DEFAULT(name, type, lo, hi, def) res->name = def;
    LANES_RESOURCES(RES_DEFAULT)
#undef RES_DEFAULT
}

/* The checker of each resource type; 0 and *out, or -1 after reporting. */
static int res_get_INT(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                       double hi, int *out)
{
    int64_t i;
    if (lanes__get_int(c, v, name, (int64_t)lo, (int64_t)hi, &i) < 0)
        return -1;
    *out = (int)i;
    return 0;
}

static int res_get_NUM(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                       double hi, double *out)
{
    return lanes__get_num(c, v, name, lo, 0, hi, 0, out);
}

static int res_get_NUMPOS(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                          double hi, double *out)
{
    return lanes__get_num(c, v, name, lo, 1, hi, 0, out);
}

static int res_get_EXEC(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                        double hi, int *out)
{
    static const char *const words[] = { "local", "slurm", NULL };
    const char *w;
    (void)lo;
    (void)hi;
    if (lanes__get_str(c, v, name, &w) < 0)
        return -1;
    for (int i = 0; words[i]; i++)
        if (!strcmp(w, words[i])) {
            *out = i;
            return 0;
        }
    char *hint = lanes__hint(w, words);
    lanes__err(c, v, "'%s' is not an executor%s", w, hint);
    free(hint);
    return -1;
}

const char *lanes_exec_name(int executor)
{
    return executor == LANES_EXEC_SLURM ? "slurm" : "local";
}

void lanes__res_apply(struct lanes__ctx *c, const char *name, const struct ynode *v,
                      struct lanes_res *res)
{
    if (v->kind == YNODE_SCALAR && v->stype == YSCALAR_NULL)
        return; /* null: keep the inherited value */
#define RES_APPLY(f, type, lo, hi, def)                                                            \
    if (strcmp(name, #f) == 0) {                                                                   \
        LANES_RES_CTYPE_##type x;                                                                  \
        if (res_get_##type(c, v, name, lo, hi, &x) == 0)                                           \
            res->f = x;                                                                            \
        return;                                                                                    \
    }
    LANES_RESOURCES(RES_APPLY)
#undef RES_APPLY
}

/* ===== calibration ============================================================================ */

static int is_null(const struct ynode *v)
{
    return v->kind == YNODE_SCALAR && v->stype == YSCALAR_NULL;
}

void lanes__calib_release(struct lanes__calib *cal)
{
    free(cal->src_abs);
    memset(cal, 0, sizeof(*cal));
}

void lanes__calib_parse(struct lanes__ctx *c, const struct ynode *v, const char *name, int top,
                        struct lanes__calib *out)
{
    static const char *const keys[] = { "text", "ids", "samples", "seq_len", NULL };
    const struct ynode *first_src = NULL;
    size_t nerr0 = c->nerr;
    memset(out, 0, sizeof(*out));
    if (is_null(v))
        return;
    out->present = 1;
    if (v->kind != YNODE_MAP) {
        type_err(c, v, "a mapping like {text: PATH, samples: 128, seq_len: 512}", name, NULL);
        out->bad = 1;
        return;
    }
    lanes__check_keys(c, v, keys, name);
    for (size_t i = 0; i < YMAP_LEN(v); i++) {
        const struct ynode *k = YMAP_KEY(v, i), *val = YMAP_VAL(v, i);
        const char *kn = map_key_text(c, k);
        char full[64];
        if (!kn || is_null(val))
            continue;
        snprintf(full, sizeof(full), "%s.%s", name, kn);
        if (strcmp(kn, "text") == 0 || strcmp(kn, "ids") == 0) {
            char *abs;
            if (first_src) {
                lanes__err(c, k,
                           "%s takes exactly one of 'text' or 'ids', found both (the other is at "
                           "line %d)",
                           name, first_src->line);
                continue;
            }
            first_src = k;
            if (lanes__get_file(c, val, full, &abs) == 0) {
                out->src = strcmp(kn, "text") == 0 ? "text" : "ids";
                out->src_abs = abs;
            }
        } else if (strcmp(kn, "samples") == 0) {
            if (lanes__get_int(c, val, full, 1, INT32_MAX, &out->samples) == 0)
                out->has_samples = 1;
        } else if (strcmp(kn, "seq_len") == 0) {
            if (lanes__get_int(c, val, full, 1, INT32_MAX, &out->seq_len) == 0)
                out->has_seq_len = 1;
        }
    }
    if (top && !first_src && c->nerr == nerr0)
        lanes__err(c, v, "%s needs a data file: 'text: PATH' or 'ids: PATH'", name);
    if (c->nerr != nerr0)
        out->bad = 1;
}

/* ===== stage kinds ============================================================================ */

const char *const lanes__kinds[] = { "quantize",   "prune",   "heal",    "config",   "exec",
                                     "ppl",        "mcqa",    "speed",   "mcqa_gen", "qa",
                                     "vllm_speed", "lm_eval", "distill", "finetune", NULL };
static const char *const eval_kinds[] = { "ppl", "mcqa",       "speed",   "exec", "mcqa_gen",
                                          "qa",  "vllm_speed", "lm_eval", NULL };
/* Every kind name a user could mean, for "did you mean" hints. */
static const char *const hint_kinds[] = { "quantize",   "prune",   "heal",     "config",   "exec",
                                          "ppl",        "mcqa",    "speed",    "mcqa_gen", "qa",
                                          "vllm_speed", "lm_eval", "finetune", "distill",  NULL };

int lanes__kind_known(const char *kind)
{
    for (const char *const *p = lanes__kinds; *p; p++)
        if (strcmp(kind, *p) == 0)
            return 1;
    return 0;
}

enum fty {
    FT_INT,      /* integer in [lo, hi] */
    FT_NUM,      /* finite number in lo..hi, bounds open per flags */
    FT_BOOL,     /* true or false */
    FT_STR,      /* string */
    FT_ENUM,     /* string from enums[] */
    FT_FILE,     /* data file path */
    FT_FILELIST, /* list of data file paths */
    FT_STRLIST,  /* list of strings */
    FT_STRS,     /* a string or a list of strings: always a list in the spec */
    FT_INTLIST,  /* list of integers in [lo, hi] */
    FT_ENV,      /* mapping NAME -> string */
    FT_CALIB,    /* calibration block */
};

struct fdef {
    const char *name;
    enum fty ty;
    double lo, hi;
    int lo_open, hi_open;
    const char *const *enums;
};

struct fval {
    const struct ynode *key;  /* NULL when the field was not written */
    const struct ynode *node; /* the value; NULL when not written or null */
    int ok;                   /* written and valid */
    int64_t i;
    double d;
    int b;
    const char *s;
    char *path;   /* FT_FILE, owned */
    struct jv *j; /* FT_*LIST and FT_ENV, owned */
    struct lanes__calib cal;
};

static const char *const e_methods[] = { "rtn", "gptq", "awq", "smoothquant", "sparsegpt", NULL };
static const char *const e_schemes[] = { "W4A16", "W4A16_ASYM",  "W8A16", "W8A16_ASYM", "W8A8",
                                         "FP8",   "FP8_DYNAMIC", "none",  NULL };
static const char *const e_salience[] = { "l1", "l2", NULL };
static const char *const e_rounding[] = { "nearest", "greedy", NULL };
static const char *const e_actorder[] = { "none", "static", "group", NULL };
static const char *const e_pattern[] = { "unstructured", "2:4", NULL };
static const char *const e_prune_metric[] = { "block_influence", "explicit", NULL };
static const char *const e_heal_method[] = { "lsq", NULL };
static const char *const e_fold[] = { "norm", "refit", "both", NULL };
static const char *const e_produces[] = { "model", "metrics", "both", NULL };
static const char *const e_lm_eval_model[] = { "vllm", "hf", NULL };
static const char *const e_teacher[] = { "base", "input", NULL };
static const char *const e_kd_loss[] = { "kl", "kl+ce", NULL };
static const char *const e_ft_method[] = { "lora", "full", "norms", NULL };

#define IMAX 2147483647.0
#define F_INT(n, lo)                                                                               \
    {                                                                                              \
        n, FT_INT, lo, IMAX, 0, 0, NULL                                                            \
    }
#define F_NUM(n, lo, lo_o, hi, hi_o)                                                               \
    {                                                                                              \
        n, FT_NUM, lo, hi, lo_o, hi_o, NULL                                                        \
    }
#define F_BOOL(n)                                                                                  \
    {                                                                                              \
        n, FT_BOOL, 0, 0, 0, 0, NULL                                                               \
    }
#define F_STR(n)                                                                                   \
    {                                                                                              \
        n, FT_STR, 0, 0, 0, 0, NULL                                                                \
    }
#define F_ENUM(n, e)                                                                               \
    {                                                                                              \
        n, FT_ENUM, 0, 0, 0, 0, e                                                                  \
    }
#define F_FILE(n)                                                                                  \
    {                                                                                              \
        n, FT_FILE, 0, 0, 0, 0, NULL                                                               \
    }
#define F_CALIB                                                                                    \
    {                                                                                              \
        "calibration", FT_CALIB, 0, 0, 0, 0, NULL                                                  \
    }
#define F_END                                                                                      \
    {                                                                                              \
        NULL, FT_INT, 0, 0, 0, 0, NULL                                                             \
    }

static const struct fdef f_quantize[] = {
    F_ENUM("method", e_methods),
    F_ENUM("scheme", e_schemes),
    { "group_size", FT_INT, -1, IMAX, 0, 0, NULL },
    { "ignore", FT_STRLIST, 0, 0, 0, 0, NULL },
    F_NUM("dampening", 0, 1, 1, 0),
    F_INT("block_size", 1),
    F_ENUM("actorder", e_actorder),
    F_BOOL("static_groups"),
    F_NUM("sparsity", 0, 1, 1, 1),
    F_ENUM("pattern", e_pattern),
    F_BOOL("duo_scaling"),
    F_INT("n_grid", 1),
    F_BOOL("clip"),
    F_NUM("alpha", 0, 0, 1, 0),
    F_ENUM("salience", e_salience),
    F_ENUM("rounding", e_rounding),
    F_NUM("outlier_percent", 0, 0, 100, 1),
    F_CALIB,
    F_END,
};
static const struct fdef f_prune[] = {
    F_INT("keep_layers", 1),
    F_INT("remove", 1),
    { "layers", FT_INTLIST, 0, IMAX, 0, 0, NULL },
    F_ENUM("metric", e_prune_metric),
    F_CALIB,
    F_END,
};
static const struct fdef f_heal[] = {
    F_ENUM("method", e_heal_method),
    F_ENUM("fold", e_fold),
    F_NUM("ridge", 0, 0, INFINITY, 0),
    F_CALIB,
    F_END,
};
/* Training stages (docs/training.md): the keys both share, then each one's own. */
#define F_TRAIN_COMMON                                                                             \
    F_FILE("data"), F_CALIB, F_INT("tokens", 1), F_INT("seq_len", 2), F_INT("batch", 1),           \
        F_NUM("lr", 0, 1, 1, 0), F_INT("warmup", 0), F_NUM("weight_decay", 0, 0, 1, 0),            \
        F_NUM("grad_clip", 0, 0, INFINITY, 0), F_INT("checkpoint_every", 0), F_INT("seed", 0),     \
        F_NUM("val_fraction", 0, 0, 0.5, 0)
static const struct fdef f_distill[] = {
    F_TRAIN_COMMON,
    F_ENUM("teacher", e_teacher),
    F_NUM("temperature", 0, 1, INFINITY, 0),
    F_ENUM("loss", e_kd_loss),
    F_NUM("ce_weight", 0, 0, 1, 0),
    { "trainable", FT_STRS, 0, 0, 0, 0, NULL },
    F_END,
};
static const struct fdef f_finetune[] = {
    F_TRAIN_COMMON,
    F_ENUM("method", e_ft_method),
    F_INT("rank", 1),
    F_NUM("alpha", 0, 1, INFINITY, 0),
    { "targets", FT_STRLIST, 0, 0, 0, 0, NULL },
    F_NUM("dropout", 0, 0, 1, 1),
    F_END,
};
static const struct fdef f_exec[] = {
    F_STR("run"),
    F_ENUM("produces", e_produces),
    { "inputs", FT_FILELIST, 0, 0, 0, 0, NULL },
    { "env", FT_ENV, 0, 0, 0, 0, NULL },
    F_END,
};
static const struct fdef f_ppl[] = {
    F_FILE("text"), F_FILE("ids"), F_INT("seq_len", 2), F_INT("max_windows", 0), F_END,
};
static const struct fdef f_mcqa[] = {
    F_FILE("items"),
    F_INT("limit", 0),
    F_END,
};
static const struct fdef f_mcqa_gen[] = {
    F_FILE("items"),
    F_INT("limit", 0),
    F_STR("template"),
    F_FILE("fewshot"),
    F_INT("num_fewshot", 0),
    F_BOOL("chat"),
    F_INT("max_new_tokens", 1),
    F_INT("batch", 1),
    F_END,
};
static const struct fdef f_qa[] = {
    F_FILE("items"),
    F_INT("limit", 0),
    F_STR("template"),
    F_BOOL("chat"),
    F_INT("max_new_tokens", 1),
    F_INT("batch", 1),
    F_INT("max_prompt_tokens", 1),
    F_END,
};
static const struct fdef f_speed[] = {
    F_INT("prompt_tokens", 1),
    F_INT("gen_tokens", 1),
    F_INT("repeats", 1),
    F_INT("pairs", 1),
    F_END,
};
static const struct fdef f_vllm_speed[] = {
    F_STR("command"),
    F_INT("input_len", 1),
    F_INT("output_len", 1),
    F_INT("batch_size", 1),
    F_INT("num_iters", 1),
    F_INT("num_iters_warmup", 0),
    { "args", FT_STRLIST, 0, 0, 0, 0, NULL },
    { "env", FT_ENV, 0, 0, 0, 0, NULL },
    F_END,
};
static const struct fdef f_lm_eval[] = {
    F_STR("command"),
    F_ENUM("model", e_lm_eval_model),
    { "tasks", FT_STRLIST, 0, 0, 0, 0, NULL },
    F_INT("num_fewshot", 0),
    F_NUM("limit", 0, 1, INFINITY, 0),
    F_INT("batch_size", 1),
    F_STR("model_args"),
    { "args", FT_STRLIST, 0, 0, 0, 0, NULL },
    { "env", FT_ENV, 0, 0, 0, 0, NULL },
    F_END,
};

/* Quantize fields that only some methods take. */
struct method_field {
    const char *field;
    const char *methods[3];
};
static const struct method_field quant_method_fields[] = {
    { "dampening", { "gptq", "sparsegpt", NULL } },
    { "block_size", { "gptq", "sparsegpt", NULL } },
    { "actorder", { "gptq", NULL, NULL } },
    { "static_groups", { "gptq", NULL, NULL } },
    { "sparsity", { "sparsegpt", NULL, NULL } },
    { "pattern", { "sparsegpt", NULL, NULL } },
    { "duo_scaling", { "awq", NULL, NULL } },
    { "n_grid", { "awq", NULL, NULL } },
    { "clip", { "awq", NULL, NULL } },
    { "alpha", { "smoothquant", NULL, NULL } },
    { "salience", { "awq", NULL, NULL } },
    { "rounding", { "rtn", "awq", NULL } },
    { "outlier_percent", { "rtn", "awq", NULL } },
};

/* State of one stage being built. */
struct sb {
    struct lanes__ctx *c;
    const char *kind;
    const struct ynode *at; /* the kind key */
    const struct fdef *f;
    struct fval *v;
    size_t nf;
    int in_eval;
    int ok;
    struct jv *spec;
    int produces_model, produces_metrics;
};

static struct fval *fv(struct sb *b, const char *name)
{
    for (size_t i = 0; i < b->nf; i++)
        if (strcmp(b->f[i].name, name) == 0)
            return &b->v[i];
    EXAQ_BUG("lanes: no field '%s' in kind '%s'", name, b->kind);
}

static void sb_err(struct sb *b, const struct ynode *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sb_err(struct sb *b, const struct ynode *at, const char *fmt, ...)
{
    va_list ap;
    char *m;
    va_start(ap, fmt);
    m = xvasprintf(fmt, ap);
    va_end(ap);
    lanes__err(b->c, at, "%s", m);
    free(m);
    b->ok = 0;
}

static int env_name_ok(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '_'))
        return 0;
    for (s++; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_'))
            return 0;
    return 1;
}

/* Type-checks one written field into *out. Returns 0 or -1 (reported). */
static int check_field(struct sb *b, const struct fdef *f, const struct ynode *val,
                       struct fval *out)
{
    struct lanes__ctx *c = b->c;
    char name[96];
    snprintf(name, sizeof(name), "%s", f->name);
    switch (f->ty) {
    case FT_INT:
        return lanes__get_int(c, val, name, (int64_t)f->lo, (int64_t)f->hi, &out->i);
    case FT_NUM:
        return lanes__get_num(c, val, name, f->lo, f->lo_open, f->hi, f->hi_open, &out->d);
    case FT_BOOL:
        return lanes__get_bool(c, val, name, &out->b);
    case FT_STR:
        return lanes__get_str(c, val, name, &out->s);
    case FT_ENUM: {
        const char *s;
        if (val->kind != YNODE_SCALAR || val->stype == YSCALAR_NULL ||
            (val->kind == YNODE_SCALAR && val->has_nul)) {
            char *h = lanes__hint("", f->enums);
            type_err(c, val, "a string", name, h);
            free(h);
            return -1;
        }
        /* Enum values are compared as written, so `pattern: 2:4` and `scheme: W8A8` work
         * unquoted whatever their YAML type. */
        s = val->text;
        for (const char *const *p = f->enums; *p; p++) {
            if (strcmp(s, *p) == 0) {
                out->s = *p;
                return 0;
            }
        }
        {
            char *h = lanes__hint(s, f->enums);
            lanes__err(c, val, "unknown %s '%s' in %s stage%s", name, s, b->kind, h);
            free(h);
        }
        return -1;
    }
    case FT_FILE:
        return lanes__get_file(c, val, name, &out->path);
    case FT_STRS:
        if (val->kind == YNODE_SCALAR) {
            const char *s;
            if (lanes__get_str(c, val, name, &s) < 0)
                return -1;
            out->j = lanes__jv_arr();
            lanes__jv_push(out->j, lanes__jv_str(s));
            return 0;
        }
        __attribute__((fallthrough)); /* a list */
    case FT_FILELIST:
    case FT_STRLIST:
    case FT_INTLIST: {
        int bad = 0;
        if (val->kind != YNODE_SEQ) {
            type_err(c, val, "a list", name, NULL);
            return -1;
        }
        out->j = lanes__jv_arr();
        for (size_t i = 0; i < val->n; i++) {
            char iname[128];
            snprintf(iname, sizeof(iname), "%s[%zu]", name, i);
            if (f->ty == FT_FILELIST) {
                char *abs;
                if (lanes__get_file(c, val->kids[i], iname, &abs) == 0) {
                    lanes__jv_push(out->j, lanes__jv_path(abs));
                    free(abs);
                } else {
                    bad = 1;
                }
            } else if (f->ty == FT_STRLIST || f->ty == FT_STRS) {
                const char *s;
                if (lanes__get_str(c, val->kids[i], iname, &s) == 0)
                    lanes__jv_push(out->j, lanes__jv_str(s));
                else
                    bad = 1;
            } else {
                int64_t x;
                if (lanes__get_int(c, val->kids[i], iname, (int64_t)f->lo, (int64_t)f->hi, &x) == 0)
                    lanes__jv_push(out->j, lanes__jv_int(x));
                else
                    bad = 1;
            }
        }
        return bad ? -1 : 0;
    }
    case FT_ENV: {
        int bad = 0;
        if (val->kind != YNODE_MAP) {
            type_err(c, val, "a mapping of environment variables", name, NULL);
            return -1;
        }
        out->j = lanes__jv_obj();
        for (size_t i = 0; i < YMAP_LEN(val); i++) {
            const char *k = map_key_text(c, YMAP_KEY(val, i)), *s;
            char iname[160];
            if (!k) {
                bad = 1;
                continue;
            }
            if (!env_name_ok(k)) {
                lanes__err(c, YMAP_KEY(val, i),
                           "'%s' is not a valid environment variable name (letters, digits and "
                           "'_', not starting with a digit)",
                           k);
                bad = 1;
                continue;
            }
            snprintf(iname, sizeof(iname), "env.%.100s", k);
            if (lanes__get_str(c, YMAP_VAL(val, i), iname, &s) == 0) {
                /* A duplicate name is reported by the duplicate-key pass and fails the file. */
                lanes__jv_set_new(out->j, k, lanes__jv_str(s));
            } else {
                bad = 1;
            }
        }
        return bad ? -1 : 0;
    }
    case FT_CALIB:
        lanes__calib_parse(c, val, "calibration", 0, &out->cal);
        return out->cal.bad ? -1 : 0;
    }
    return -1;
}

/* ---- calibration inheritance --------------------------------------------------------------- */

/*
 * Adds "calibration" to the spec when needed: the stage's own block overrides the top-level
 * one key by key (a stage source replaces the top-level source). why names the need in the
 * error when there is no source at all.
 */
static void want_calibration(struct sb *b, const char *why)
{
    struct fval *cf = fv(b, "calibration");
    const struct lanes__calib *own = &cf->cal, *top = &b->c->top_calib;
    const struct lanes__calib *srcc;
    struct jv *cal;
    if (own->bad || top->bad) {
        b->ok = 0; /* already reported */
        return;
    }
    srcc = own->src ? own : top->src ? top : NULL;
    if (!srcc) {
        sb_err(b, b->at,
               "%s needs calibration data: add 'calibration: {text: PATH}' (or ids: PATH) at the "
               "top level or in the stage",
               why);
        return;
    }
    cal = lanes__jv_obj();
    lanes__jv_set(cal, srcc->src, lanes__jv_path(srcc->src_abs));
    lanes__jv_set(cal, "samples",
                  lanes__jv_int(own->has_samples   ? own->samples
                                : top->has_samples ? top->samples
                                                   : 128));
    lanes__jv_set(cal, "seq_len",
                  lanes__jv_int(own->has_seq_len   ? own->seq_len
                                : top->has_seq_len ? top->seq_len
                                                   : 512));
    lanes__jv_set(b->spec, "calibration", cal);
}

/* Moves a checked list/map value into the spec, or sets the default. */
static void set_json(struct sb *b, const char *name, struct jv *dflt)
{
    struct fval *x = fv(b, name);
    if (x->ok && x->j) {
        lanes__jv_set(b->spec, name, x->j);
        x->j = NULL;
        lanes__jv_free(dflt);
    } else {
        lanes__jv_set(b->spec, name, dflt);
    }
}

static int64_t int_or(struct sb *b, const char *name, int64_t d)
{
    struct fval *x = fv(b, name);
    return x->ok ? x->i : d;
}

static double num_or(struct sb *b, const char *name, double d)
{
    struct fval *x = fv(b, name);
    return x->ok ? x->d : d;
}

static int bool_or(struct sb *b, const char *name, int d)
{
    struct fval *x = fv(b, name);
    return x->ok ? x->b : d;
}

static const char *str_or(struct sb *b, const char *name, const char *d)
{
    struct fval *x = fv(b, name);
    return x->ok ? x->s : d;
}

/* ---- kind builders --------------------------------------------------------------------------- */

static void build_quantize(struct sb *b)
{
    struct fval *m = fv(b, "method"), *sch = fv(b, "scheme"), *gs = fv(b, "group_size");
    struct fval *sal = fv(b, "salience"), *rnd = fv(b, "rounding"),
                *outl = fv(b, "outlier_percent");
    const char *method = str_or(b, "method", "gptq");
    int method_known = !m->node || m->ok;
    const char *scheme;
    int w4, grouped, greedy, gsize;
    struct jv *ign;

    if (m->node && !m->ok)
        b->ok = 0;
    /* Fields that belong to other methods. */
    if (method_known) {
        for (size_t i = 0; i < EXAQ_ARRAY_LEN(quant_method_fields); i++) {
            const struct method_field *mf = &quant_method_fields[i];
            struct fval *x = fv(b, mf->field);
            int applies = 0;
            if (!x->node)
                continue;
            for (int k = 0; k < 3 && mf->methods[k]; k++)
                applies |= strcmp(mf->methods[k], method) == 0;
            if (!applies)
                sb_err(b, x->key,
                       "'%s' does not apply to quantize method '%s' (it is a field of %s%s%s)",
                       mf->field, method, mf->methods[0], mf->methods[1] ? " and " : "",
                       mf->methods[1] ? mf->methods[1] : "");
        }
    }
    /* Scheme. */
    scheme = str_or(b, "scheme", strcmp(method, "smoothquant") == 0 ? "W8A8" : "W4A16");
    if (sch->node && !sch->ok)
        b->ok = 0;
    if (sch->ok && strcmp(scheme, "none") == 0 && method_known && strcmp(method, "sparsegpt") != 0)
        sb_err(b, sch->node,
               "scheme 'none' is only for method sparsegpt (sparsity without quantization), not "
               "'%s'",
               method);
    if (method_known && strcmp(method, "smoothquant") == 0 && strcmp(scheme, "W8A8") != 0 &&
        (!sch->node || sch->ok))
        sb_err(b, sch->node ? sch->node : b->at,
               "quantize method 'smoothquant' needs scheme W8A8, got '%s'", scheme);
    if (method_known && (!sch->node || sch->ok)) {
        int fp8 = strcmp(scheme, "FP8") == 0 || strcmp(scheme, "FP8_DYNAMIC") == 0;
        if (fp8 && (strcmp(method, "gptq") == 0 || strcmp(method, "sparsegpt") == 0))
            sb_err(b, sch->node ? sch->node : b->at,
                   "quantize method '%s' quantizes to integer grids; use method rtn for scheme "
                   "'%s'",
                   method, scheme);
        if (strcmp(method, "awq") == 0 && strcmp(scheme, "W4A16") != 0 &&
            strcmp(scheme, "W4A16_ASYM") != 0 && strcmp(scheme, "W8A16") != 0 &&
            strcmp(scheme, "W8A16_ASYM") != 0 && strcmp(scheme, "none") != 0)
            sb_err(b, sch->node ? sch->node : b->at,
                   "quantize method 'awq' is weight-only (W4A16, W4A16_ASYM, W8A16 or "
                   "W8A16_ASYM), not '%s' (use smoothquant for W8A8, rtn for FP8)",
                   scheme);
    }
    /* Group size. */
    w4 = strcmp(scheme, "W4A16") == 0 || strcmp(scheme, "W4A16_ASYM") == 0;
    /* W4 schemes and W8A16_ASYM (per-group zero points) take groups; the other schemes are not
     * grouped (-1) and the scheme fixes the strategy (FP8 static: one scale per tensor, see
     * worker/engine/quant.h). */
    grouped = w4 || strcmp(scheme, "W8A16_ASYM") == 0;
    gsize = w4 ? 128 : -1;
    if (gs->ok) {
        if (gs->i != 32 && gs->i != 64 && gs->i != 128 && gs->i != 256 && gs->i != -1)
            sb_err(b, gs->node, "'group_size' must be 32, 64, 128, 256 or -1 (per channel), got %s",
                   gs->node->text);
        else if (!grouped && gs->i != -1 && (!sch->node || sch->ok))
            sb_err(b, gs->node, "scheme '%s' only allows group_size -1 (per channel), got %s",
                   scheme, gs->node->text);
        gsize = (int)gs->i;
    } else if (gs->node) {
        b->ok = 0;
    }
    /* AWQ salience and greedy rounding: written to the spec only when not the default, so the
     * keys of the stages written before these fields existed do not change. */
    if (sal->node && !sal->ok)
        b->ok = 0;
    if (rnd->node && !rnd->ok)
        b->ok = 0;
    greedy = strcmp(str_or(b, "rounding", "nearest"), "greedy") == 0;
    if (outl->node && outl->ok && !greedy && method_known)
        sb_err(b, outl->key, "'outlier_percent' only applies with 'rounding: greedy'");

    lanes__jv_set(b->spec, "method", lanes__jv_str(method));
    lanes__jv_set(b->spec, "scheme", lanes__jv_str(scheme));
    lanes__jv_set(b->spec, "group_size", lanes__jv_int(gsize));
    ign = lanes__jv_arr();
    lanes__jv_push(ign, lanes__jv_str("lm_head"));
    set_json(b, "ignore", ign);
    if (strcmp(method, "gptq") == 0 || strcmp(method, "sparsegpt") == 0) {
        lanes__jv_set(b->spec, "dampening", lanes__jv_num(num_or(b, "dampening", 0.01)));
        lanes__jv_set(b->spec, "block_size", lanes__jv_int(int_or(b, "block_size", 128)));
    }
    if (strcmp(method, "gptq") == 0) {
        lanes__jv_set(b->spec, "actorder", lanes__jv_str(str_or(b, "actorder", "none")));
        lanes__jv_set(b->spec, "static_groups", lanes__jv_bool(bool_or(b, "static_groups", 1)));
    } else if (strcmp(method, "sparsegpt") == 0) {
        lanes__jv_set(b->spec, "sparsity", lanes__jv_num(num_or(b, "sparsity", 0.5)));
        lanes__jv_set(b->spec, "pattern", lanes__jv_str(str_or(b, "pattern", "unstructured")));
    } else if (strcmp(method, "awq") == 0) {
        lanes__jv_set(b->spec, "duo_scaling", lanes__jv_bool(bool_or(b, "duo_scaling", 1)));
        lanes__jv_set(b->spec, "n_grid", lanes__jv_int(int_or(b, "n_grid", 20)));
        lanes__jv_set(b->spec, "clip", lanes__jv_bool(bool_or(b, "clip", 1)));
        if (strcmp(str_or(b, "salience", "l1"), "l2") == 0)
            lanes__jv_set(b->spec, "salience", lanes__jv_str("l2"));
    } else if (strcmp(method, "smoothquant") == 0) {
        lanes__jv_set(b->spec, "alpha", lanes__jv_num(num_or(b, "alpha", 0.5)));
    }
    if (greedy && (strcmp(method, "rtn") == 0 || strcmp(method, "awq") == 0)) {
        lanes__jv_set(b->spec, "rounding", lanes__jv_str("greedy"));
        lanes__jv_set(b->spec, "outlier_percent", lanes__jv_num(num_or(b, "outlier_percent", 1.0)));
        if (strcmp(scheme, "FP8") == 0 || strcmp(scheme, "FP8_DYNAMIC") == 0 ||
            strcmp(scheme, "none") == 0)
            sb_err(b, rnd->node, "'rounding: greedy' needs an integer scheme, not '%s'", scheme);
    }
    if (method_known && strcmp(method, "rtn") == 0 && greedy) {
        want_calibration(b, "'rounding: greedy' (the output error on calibration data)");
    } else if (method_known && strcmp(method, "rtn") != 0) {
        char why[64];
        snprintf(why, sizeof(why), "quantize method '%s'", method);
        want_calibration(b, why);
    } else if (method_known && strcmp(scheme, "FP8") == 0) {
        want_calibration(b, "scheme 'FP8' (static input scales)");
    }
    b->produces_model = 1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = (*(struct jv *const *)a)->i, y = (*(struct jv *const *)b)->i;
    return x < y ? -1 : x > y;
}

static void build_prune(struct sb *b)
{
    static const char *const which[] = { "keep_layers", "remove", "layers" };
    const struct fval *first = NULL;
    const char *first_name = NULL;
    int nwhich = 0, have_layers = 0;
    struct fval *metric = fv(b, "metric");
    const char *met;

    for (int i = 0; i < 3; i++) {
        struct fval *x = fv(b, which[i]);
        if (!x->node)
            continue;
        if (!x->ok)
            b->ok = 0;
        if (first) {
            sb_err(b, x->key,
                   "prune takes exactly one of 'keep_layers', 'remove' or 'layers'; found '%s' "
                   "and '%s'",
                   first_name, which[i]);
            continue;
        }
        first = x;
        first_name = which[i];
        nwhich++;
        if (i == 2)
            have_layers = 1;
    }
    if (!nwhich)
        sb_err(b, b->at,
               "prune needs one of 'keep_layers: N' (layers to keep), 'remove: N' (layers to "
               "remove) or 'layers: [i, ...]' (explicit layers to remove)");
    if (have_layers && first->ok) {
        struct jv *l = first->j;
        if (l->n == 0)
            sb_err(b, first->node, "'layers' must list at least one layer");
        if (l->n > 1)
            qsort(l->v, l->n, sizeof(*l->v), cmp_i64);
        for (size_t i = 1; i < l->n; i++) {
            if (l->v[i]->i == l->v[i - 1]->i) {
                sb_err(b, first->node, "'layers' lists layer %lld twice", (long long)l->v[i]->i);
                break;
            }
        }
    }
    met = str_or(b, "metric", have_layers ? "explicit" : "block_influence");
    if (metric->node && !metric->ok)
        b->ok = 0;
    if (metric->ok && have_layers && strcmp(met, "explicit") != 0)
        sb_err(b, metric->node, "prune with 'layers' takes metric 'explicit', got '%s'", met);
    if (metric->ok && !have_layers && strcmp(met, "explicit") == 0 && nwhich)
        sb_err(b, metric->node,
               "metric 'explicit' needs 'layers: [i, ...]' (the layers to remove) instead of "
               "'%s'",
               first_name);
    if (first && first->ok) {
        if (have_layers)
            set_json(b, "layers", lanes__jv_arr());
        else
            lanes__jv_set(b->spec, first_name, lanes__jv_int(first->i));
    }
    lanes__jv_set(b->spec, "metric", lanes__jv_str(met));
    if (strcmp(met, "block_influence") == 0 && (!metric->node || metric->ok))
        want_calibration(b, "prune metric 'block_influence'");
    b->produces_model = 1;
}

static void build_heal(struct sb *b)
{
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    lanes__jv_set(b->spec, "method", lanes__jv_str(str_or(b, "method", "lsq")));
    lanes__jv_set(b->spec, "fold", lanes__jv_str(str_or(b, "fold", "both")));
    lanes__jv_set(b->spec, "ridge", lanes__jv_num(num_or(b, "ridge", 1e-4)));
    want_calibration(b, "heal");
    b->produces_model = 1;
}

/* The keys distill and finetune share; data is the stage's own file or the calibration set. */
static void build_train_common(struct sb *b)
{
    struct fval *d = fv(b, "data");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    if (d->ok)
        lanes__jv_set(b->spec, "data", lanes__jv_path(d->path));
    else if (!d->node)
        want_calibration(b, b->kind);
    lanes__jv_set(b->spec, "tokens", lanes__jv_int(int_or(b, "tokens", 262144)));
    lanes__jv_set(b->spec, "seq_len", lanes__jv_int(int_or(b, "seq_len", 256)));
    lanes__jv_set(b->spec, "batch", lanes__jv_int(int_or(b, "batch", 4)));
    lanes__jv_set(b->spec, "lr", lanes__jv_num(num_or(b, "lr", 1e-4)));
    lanes__jv_set(b->spec, "warmup", lanes__jv_int(int_or(b, "warmup", 10)));
    lanes__jv_set(b->spec, "weight_decay", lanes__jv_num(num_or(b, "weight_decay", 0.0)));
    lanes__jv_set(b->spec, "grad_clip", lanes__jv_num(num_or(b, "grad_clip", 1.0)));
    lanes__jv_set(b->spec, "checkpoint_every", lanes__jv_int(int_or(b, "checkpoint_every", 50)));
    lanes__jv_set(b->spec, "seed", lanes__jv_int(int_or(b, "seed", 0)));
    lanes__jv_set(b->spec, "val_fraction", lanes__jv_num(num_or(b, "val_fraction", 0.05)));
    b->produces_model = 1;
}

static void build_distill(struct sb *b)
{
    struct fval *cw = fv(b, "ce_weight");
    const char *loss = str_or(b, "loss", "kl");
    build_train_common(b);
    lanes__jv_set(b->spec, "teacher", lanes__jv_str(str_or(b, "teacher", "base")));
    lanes__jv_set(b->spec, "temperature", lanes__jv_num(num_or(b, "temperature", 1.0)));
    lanes__jv_set(b->spec, "loss", lanes__jv_str(loss));
    if (cw->ok && strcmp(loss, "kl+ce") != 0)
        sb_err(b, cw->key,
               "'ce_weight' mixes in the cross-entropy of loss 'kl+ce' (this stage has "
               "loss '%s')",
               loss);
    if (strcmp(loss, "kl+ce") == 0)
        lanes__jv_set(b->spec, "ce_weight", lanes__jv_num(num_or(b, "ce_weight", 0.5)));
    if (fv(b, "trainable")->ok && fv(b, "trainable")->j->n == 0)
        sb_err(b, fv(b, "trainable")->node, "'trainable' lists no parameter pattern");
    {
        struct jv *all = lanes__jv_arr();
        lanes__jv_push(all, lanes__jv_str("all"));
        set_json(b, "trainable", all);
    }
}

static void build_finetune(struct sb *b)
{
    const char *m = str_or(b, "method", "lora");
    int lora = strcmp(m, "lora") == 0;
    build_train_common(b);
    lanes__jv_set(b->spec, "method", lanes__jv_str(m));
    if (!lora) {
        const char *keys[] = { "rank", "alpha", "targets", "dropout" };
        for (size_t i = 0; i < EXAQ_ARRAY_LEN(keys); i++)
            if (fv(b, keys[i])->node)
                sb_err(b, fv(b, keys[i])->key, "'%s' is a LoRA key (this stage has method '%s')",
                       keys[i], m);
        return;
    }
    lanes__jv_set(b->spec, "rank", lanes__jv_int(int_or(b, "rank", 8)));
    lanes__jv_set(b->spec, "alpha", lanes__jv_num(num_or(b, "alpha", 16.0)));
    if (fv(b, "targets")->ok && fv(b, "targets")->j->n == 0)
        sb_err(b, fv(b, "targets")->node, "'targets' lists no module");
    {
        static const char *const dflt[] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
                                            "gate_proj", "up_proj", "down_proj" };
        struct jv *t = lanes__jv_arr();
        for (size_t i = 0; i < EXAQ_ARRAY_LEN(dflt); i++)
            lanes__jv_push(t, lanes__jv_str(dflt[i]));
        set_json(b, "targets", t);
    }
    lanes__jv_set(b->spec, "dropout", lanes__jv_num(num_or(b, "dropout", 0.0)));
}

static void build_exec(struct sb *b)
{
    struct fval *run = fv(b, "run"), *prod = fv(b, "produces");
    const char *p = str_or(b, "produces", b->in_eval ? "metrics" : "model");
    if (!run->node)
        sb_err(b, b->at, "exec stage needs 'run' (the shell command to run)");
    else if (run->ok && !run->s[0])
        sb_err(b, run->node, "'run' is an empty command");
    if (prod->ok && b->in_eval && strcmp(p, "model") == 0)
        sb_err(b, prod->node, "an eval stage must produce metrics (produces: metrics or both)");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    lanes__jv_set(b->spec, "run", lanes__jv_str(run->ok ? run->s : ""));
    lanes__jv_set(b->spec, "produces", lanes__jv_str(p));
    set_json(b, "inputs", lanes__jv_arr());
    set_json(b, "env", lanes__jv_obj());
    b->produces_model = strcmp(p, "metrics") != 0;
    b->produces_metrics = strcmp(p, "model") != 0;
}

static void build_ppl(struct sb *b)
{
    struct fval *t = fv(b, "text"), *ids = fv(b, "ids");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    if (t->node && ids->node)
        sb_err(b, ids->key, "ppl takes exactly one of 'text' or 'ids', found both");
    else if (!t->node && !ids->node)
        sb_err(b, b->at,
               "ppl needs its data: 'text: PATH' (UTF-8 text) or 'ids: PATH' (little-endian "
               "uint32 token ids)");
    else if (t->ok)
        lanes__jv_set(b->spec, "text", lanes__jv_path(t->path));
    else if (ids->ok)
        lanes__jv_set(b->spec, "ids", lanes__jv_path(ids->path));
    lanes__jv_set(b->spec, "seq_len", lanes__jv_int(int_or(b, "seq_len", 512)));
    lanes__jv_set(b->spec, "max_windows", lanes__jv_int(int_or(b, "max_windows", 0)));
    b->produces_metrics = 1;
}

static void build_mcqa(struct sb *b)
{
    struct fval *it = fv(b, "items");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    if (!it->node)
        sb_err(b, b->at, "mcqa needs 'items: PATH' (a JSONL file of prompt/choices/answer)");
    else if (it->ok)
        lanes__jv_set(b->spec, "items", lanes__jv_path(it->path));
    lanes__jv_set(b->spec, "limit", lanes__jv_int(int_or(b, "limit", 0)));
    b->produces_metrics = 1;
}

static void build_speed(struct sb *b)
{
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    lanes__jv_set(b->spec, "prompt_tokens", lanes__jv_int(int_or(b, "prompt_tokens", 128)));
    lanes__jv_set(b->spec, "gen_tokens", lanes__jv_int(int_or(b, "gen_tokens", 128)));
    lanes__jv_set(b->spec, "repeats", lanes__jv_int(int_or(b, "repeats", 3)));
    lanes__jv_set(b->spec, "pairs", lanes__jv_int(int_or(b, "pairs", 10)));
    b->produces_metrics = 1;
}

/* A command field: a non-empty string, else the default. */
static void set_command(struct sb *b, const char *dflt)
{
    struct fval *cmd = fv(b, "command");
    if (cmd->ok && !cmd->s[0])
        sb_err(b, cmd->node, "'command' is an empty command");
    lanes__jv_set(b->spec, "command", lanes__jv_str(cmd->ok && cmd->s[0] ? cmd->s : dflt));
}

static void build_vllm_speed(struct sb *b)
{
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    set_command(b, "vllm bench latency");
    lanes__jv_set(b->spec, "input_len", lanes__jv_int(int_or(b, "input_len", 128)));
    lanes__jv_set(b->spec, "output_len", lanes__jv_int(int_or(b, "output_len", 128)));
    lanes__jv_set(b->spec, "batch_size", lanes__jv_int(int_or(b, "batch_size", 1)));
    lanes__jv_set(b->spec, "num_iters", lanes__jv_int(int_or(b, "num_iters", 3)));
    lanes__jv_set(b->spec, "num_iters_warmup", lanes__jv_int(int_or(b, "num_iters_warmup", 1)));
    set_json(b, "args", lanes__jv_arr());
    set_json(b, "env", lanes__jv_obj());
    b->produces_metrics = 1;
}

static void build_lm_eval(struct sb *b)
{
    struct fval *t = fv(b, "tasks"), *lim = fv(b, "limit"), *fs = fv(b, "num_fewshot");
    struct fval *ma = fv(b, "model_args");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    set_command(b, "lm_eval");
    lanes__jv_set(b->spec, "model", lanes__jv_str(str_or(b, "model", "hf")));
    if (!t->node) {
        sb_err(b, b->at, "lm_eval needs 'tasks: [NAME, ...]' (lm-evaluation-harness task names)");
    } else if (t->ok) {
        if (t->j->n == 0)
            sb_err(b, t->node, "'tasks' must list at least one task");
        for (size_t i = 0; i < t->j->n; i++) {
            const char *n = t->j->v[i]->s;
            if (!n[0] || strpbrk(n, ", \t\n"))
                sb_err(b, t->node, "task name '%s' must be non-empty, without commas or spaces", n);
        }
    }
    set_json(b, "tasks", lanes__jv_arr());
    if (fs->ok)
        lanes__jv_set(b->spec, "num_fewshot", lanes__jv_int(fs->i));
    if (lim->ok)
        lanes__jv_set(b->spec, "limit", lanes__jv_num(lim->d));
    lanes__jv_set(b->spec, "batch_size", lanes__jv_int(int_or(b, "batch_size", 1)));
    if (ma->ok)
        lanes__jv_set(b->spec, "model_args", lanes__jv_str(ma->s));
    set_json(b, "args", lanes__jv_arr());
    set_json(b, "env", lanes__jv_obj());
    b->produces_metrics = 1;
}

/* The fields mcqa_gen and qa share (items, limit, template, chat, max_new_tokens, batch); each
 * placeholder in need[] must appear in the template. */
static void build_gen_common(struct sb *b, const char *what, const char *const *need)
{
    struct fval *it = fv(b, "items"), *tm = fv(b, "template");
    for (size_t i = 0; i < b->nf; i++)
        if (b->v[i].node && !b->v[i].ok)
            b->ok = 0;
    if (!it->node)
        sb_err(b, b->at, "%s needs 'items: PATH' (a JSONL file of %s)", b->kind, what);
    else if (it->ok)
        lanes__jv_set(b->spec, "items", lanes__jv_path(it->path));
    for (; tm->ok && *need; need++)
        if (!strstr(tm->s, *need))
            sb_err(b, tm->node, "the %s template must contain the placeholder %s", b->kind, *need);
    if (tm->ok)
        lanes__jv_set(b->spec, "template", lanes__jv_str(tm->s));
    lanes__jv_set(b->spec, "limit", lanes__jv_int(int_or(b, "limit", 0)));
    lanes__jv_set(b->spec, "chat", lanes__jv_bool(bool_or(b, "chat", 1)));
    lanes__jv_set(b->spec, "max_new_tokens", lanes__jv_int(int_or(b, "max_new_tokens", 32)));
    lanes__jv_set(b->spec, "batch", lanes__jv_int(int_or(b, "batch", 8)));
    b->produces_metrics = 1;
}

static void build_mcqa_gen(struct sb *b)
{
    static const char *const need[] = { "{question}", NULL };
    struct fval *fs = fv(b, "fewshot"), *nf = fv(b, "num_fewshot");
    build_gen_common(b, "question/choices/answer", need);
    if (nf->node && !fs->node)
        sb_err(b, nf->key, "'num_fewshot' needs 'fewshot: PATH' (the few-shot items)");
    /* num_fewshot belongs to fewshot: without it the complete spec has neither, so the
     * worker's check of a complete spec finds no num_fewshot without fewshot. */
    if (fs->ok) {
        lanes__jv_set(b->spec, "fewshot", lanes__jv_path(fs->path));
        lanes__jv_set(b->spec, "num_fewshot", lanes__jv_int(int_or(b, "num_fewshot", 5)));
    }
}

static void build_qa(struct sb *b)
{
    static const char *const need[] = { "{context}", "{question}", NULL };
    struct fval *mp = fv(b, "max_prompt_tokens");
    build_gen_common(b, "context/question/answers", need);
    if (mp->ok)
        lanes__jv_set(b->spec, "max_prompt_tokens", lanes__jv_int(mp->i));
}

struct kinddef {
    const char *kind;
    const struct fdef *fields;
    void (*build)(struct sb *b);
};

static const struct kinddef kinddefs[] = {
    { "quantize", f_quantize, build_quantize },
    { "prune", f_prune, build_prune },
    { "heal", f_heal, build_heal },
    { "exec", f_exec, build_exec },
    { "ppl", f_ppl, build_ppl },
    { "mcqa", f_mcqa, build_mcqa },
    { "speed", f_speed, build_speed },
    { "mcqa_gen", f_mcqa_gen, build_mcqa_gen },
    { "qa", f_qa, build_qa },
    { "vllm_speed", f_vllm_speed, build_vllm_speed },
    { "lm_eval", f_lm_eval, build_lm_eval },
    { "distill", f_distill, build_distill },
    { "finetune", f_finetune, build_finetune },
};

static const struct kinddef *kind_find(const char *kind)
{
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(kinddefs); i++)
        if (strcmp(kinddefs[i].kind, kind) == 0)
            return &kinddefs[i];
    return NULL;
}

/* ---- config: any keys, converted to JSON ----------------------------------------------------- */

static struct jv *yaml_to_jv(struct lanes__ctx *c, const struct ynode *n, const char *name, int *ok)
{
    struct jv *j;
    switch (n->kind) {
    case YNODE_SCALAR:
        if (n->has_nul) {
            lanes__err(c, n, "'%s' contains a NUL character", name);
            *ok = 0;
            return lanes__jv_null();
        }
        switch (n->stype) {
        case YSCALAR_NULL:
            return lanes__jv_null();
        case YSCALAR_BOOL:
            return lanes__jv_bool(n->bval);
        case YSCALAR_INT:
            if (n->int_overflow) {
                lanes__err(c, n, "integer %s for '%s' is out of range", n->text, name);
                *ok = 0;
            }
            return lanes__jv_int(n->ival);
        case YSCALAR_FLOAT:
            if (!isfinite(n->fval)) {
                lanes__err(c, n, "'%s' must be a finite number (JSON has no inf or nan), got %s",
                           name, n->text);
                *ok = 0;
                return lanes__jv_null();
            }
            return lanes__jv_num(n->fval);
        case YSCALAR_STR:
            return lanes__jv_str(n->text);
        }
        return lanes__jv_null();
    case YNODE_SEQ:
        j = lanes__jv_arr();
        for (size_t i = 0; i < n->n; i++)
            lanes__jv_push(j, yaml_to_jv(c, n->kids[i], name, ok));
        return j;
    case YNODE_MAP:
        j = lanes__jv_obj();
        for (size_t i = 0; i < YMAP_LEN(n); i++) {
            const char *k = map_key_text(c, YMAP_KEY(n, i));
            struct jv *x;
            if (!k) {
                *ok = 0;
                continue;
            }
            /* A duplicate key is reported by the duplicate-key pass and fails the file, so
             * the O(n) lookup is not needed. */
            x = yaml_to_jv(c, YMAP_VAL(n, i), name, ok);
            lanes__jv_set_new(j, k, x);
        }
        return j;
    }
    return lanes__jv_null();
}

/* The config stage's keys are config.json fields; resource keys still go to res. */
static void build_config(struct sb *b, const struct ynode *params, struct lanes_res *res)
{
    size_t nset = 0;
    for (size_t i = 0; params && i < YMAP_LEN(params); i++) {
        const struct ynode *k = YMAP_KEY(params, i);
        const char *kn = map_key_text(b->c, k);
        int ok = 1;
        struct jv *x;
        if (!kn) {
            b->ok = 0;
            continue;
        }
        if (lanes__is_res_key(kn)) {
            size_t e0 = b->c->nerr;
            lanes__res_apply(b->c, kn, YMAP_VAL(params, i), res);
            if (b->c->nerr != e0)
                b->ok = 0;
            continue;
        }
        if (!*kn) {
            sb_err(b, k, "config field names must not be empty");
            continue;
        }
        x = yaml_to_jv(b->c, YMAP_VAL(params, i), kn, &ok);
        if (!ok)
            b->ok = 0;
        lanes__jv_set_new(b->spec, kn, x);
        nset++;
    }
    if (!nset && b->ok)
        sb_err(b, b->at,
               "config stage sets no fields: give config.json fields, e.g. "
               "'config: {max_position_embeddings: 32768}'");
    b->produces_model = 1;
}

/* ===== stage parsing ========================================================================== */

const char *lanes__stage_item_kind(const struct ynode *item, const struct ynode **kind_key)
{
    const struct ynode *k;
    if (!item || item->kind != YNODE_MAP || YMAP_LEN(item) != 1)
        return NULL;
    k = YMAP_KEY(item, 0);
    if (k->kind != YNODE_SCALAR || k->has_nul)
        return NULL;
    if (kind_key)
        *kind_key = k;
    return k->text;
}

void lanes__stage_release(struct lanes_stage *s)
{
    free(s->kind);
    free(s->name);
    free(s->eval_name);
    for (size_t i = 0; i < s->nwrites; i++)
        free(s->writes[i]);
    free(s->writes);
    free(s->spec_json);
    free(s->key_json);
    for (size_t i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    memset(s, 0, sizeof(*s));
}

static void fvals_release(struct fval *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].path);
        lanes__jv_free(v[i].j);
        lanes__calib_release(&v[i].cal);
    }
    free(v);
}

/* An eval's `name` (docs/evals.md "Named evals"). */
static void eval_name_parse(struct sb *b, const struct ynode *val, char **out)
{
    const char *s;
    if (*out)
        return; /* duplicate key, already reported */
    if (lanes__get_str(b->c, val, "name", &s) < 0) {
        b->ok = 0;
        return;
    }
    if (!lanes__eval_name_ok(s)) {
        sb_err(b, val,
               "eval name '%s' must be 1 to %d characters of a-z, 0-9 and '_' (its metrics are "
               "named NAME.METRIC)",
               s, LANES_EVAL_NAME_MAX);
        return;
    }
    *out = xstrdup(s);
}

static void eval_writes(struct lanes_stage *out, struct sb *b)
{
    const char **tasks = NULL;
    size_t n = 0;
    if (strcmp(out->kind, "lm_eval") == 0) {
        const struct jv *t = NULL;
        for (size_t i = 0; i < b->spec->n; i++)
            if (strcmp(b->spec->keys[i], "tasks") == 0)
                t = b->spec->v[i];
        n = t ? t->n : 0;
        tasks = xcalloc(n + 1, sizeof(*tasks));
        for (size_t i = 0; i < n; i++)
            tasks[i] = t->v[i]->s;
    }
    lanes__eval_writes(out, tasks, n);
    free(tasks);
}

int lanes__stage_parse(struct lanes__ctx *c, const struct ynode *item, int in_eval,
                       struct lanes_stage *out)
{
    const struct ynode *kkey, *params;
    const struct kinddef *kd = NULL;
    const char *kind;
    struct sb b;
    struct jv_files files = { NULL, 0 };

    memset(out, 0, sizeof(*out));
    memset(&b, 0, sizeof(b));
    if (item->kind != YNODE_MAP || YMAP_LEN(item) == 0) {
        char *what = lanes__ytree_describe(item);
        lanes__err(c, item,
                   "a stage is a single-key mapping like '- quantize: {method: gptq}', got %s",
                   what);
        free(what);
        return -1;
    }
    if (YMAP_LEN(item) > 1) {
        const struct ynode *k0 = YMAP_KEY(item, 0), *k1 = YMAP_KEY(item, 1);
        lanes__err(c, k1,
                   "a stage has exactly one key, its kind; found '%s' and '%s' (indent the "
                   "fields under '%s:', or start a new stage with '- ')",
                   k0->kind == YNODE_SCALAR ? k0->text : "?",
                   k1->kind == YNODE_SCALAR ? k1->text : "?",
                   k0->kind == YNODE_SCALAR ? k0->text : "?");
        return -1;
    }
    kind = lanes__stage_item_kind(item, &kkey);
    if (!kind) {
        lanes__err(c, YMAP_KEY(item, 0), "a stage kind must be a plain name like 'quantize'");
        return -1;
    }
    out->line = kkey->line;
    out->col = kkey->col;
    if (!lanes__kind_known(kind)) {
        char *h = lanes__hint(kind, hint_kinds);
        lanes__err(c, kkey, "unknown stage kind '%s'%s", kind, h);
        free(h);
        return -1;
    }
    if (in_eval) {
        int ok = 0;
        for (const char *const *p = eval_kinds; *p; p++)
            ok |= strcmp(*p, kind) == 0;
        if (!ok) {
            lanes__err(c, kkey,
                       "stage kind '%s' cannot be used in eval (eval takes ppl, mcqa, mcqa_gen, "
                       "qa, speed, vllm_speed, lm_eval and exec)",
                       kind);
            return -1;
        }
    }
    params = YMAP_VAL(item, 0);
    if (is_null(params)) {
        params = NULL;
    } else if (params->kind != YNODE_MAP) {
        char *what = lanes__ytree_describe(params);
        lanes__err(c, params, "the '%s' stage takes a mapping of fields, got %s", kind, what);
        free(what);
        return -1;
    }

    b.c = c;
    b.kind = kind;
    b.at = kkey;
    b.in_eval = in_eval;
    b.ok = 1;
    b.spec = lanes__jv_obj();
    out->res = c->defaults;

    if (strcmp(kind, "config") == 0) {
        build_config(&b, params, &out->res);
    } else {
        kd = kind_find(kind);
        b.f = kd->fields;
        while (b.f[b.nf].name)
            b.nf++;
        b.v = xcalloc(b.nf, sizeof(*b.v));
        for (size_t i = 0; params && i < YMAP_LEN(params); i++) {
            const struct ynode *k = YMAP_KEY(params, i), *val = YMAP_VAL(params, i);
            const char *kn = map_key_text(c, k);
            size_t fi;
            if (!kn) {
                b.ok = 0;
                continue;
            }
            if (lanes__is_res_key(kn)) {
                size_t e0 = c->nerr;
                lanes__res_apply(c, kn, val, &out->res);
                if (c->nerr != e0)
                    b.ok = 0;
                continue;
            }
            if (in_eval && strcmp(kn, "name") == 0) {
                eval_name_parse(&b, val, &out->eval_name);
                continue;
            }
            for (fi = 0; fi < b.nf; fi++)
                if (strcmp(b.f[fi].name, kn) == 0)
                    break;
            if (fi == b.nf) {
                const char **cands = xcalloc(b.nf + EXAQ_ARRAY_LEN(res_keys) + 1, sizeof(*cands));
                size_t nc = 0;
                char *h;
                for (size_t j = 0; j < b.nf; j++)
                    cands[nc++] = b.f[j].name;
                for (size_t j = 0; res_keys[j]; j++)
                    cands[nc++] = res_keys[j];
                h = lanes__hint(kn, cands);
                sb_err(&b, k, "unknown key '%s' in %s stage%s", kn, kind, h);
                free(h);
                free(cands);
                continue;
            }
            if (b.v[fi].key)
                continue; /* duplicate key, already reported */
            b.v[fi].key = k;
            if (is_null(val) && b.f[fi].ty != FT_CALIB)
                continue; /* null means "not set" */
            b.v[fi].node = val;
            b.v[fi].ok = check_field(&b, &b.f[fi], val, &b.v[fi]) == 0;
            if (!b.v[fi].ok)
                b.ok = 0;
        }
        kd->build(&b);
    }

    if (!b.ok)
        goto fail;
    out->kind = xstrdup(kind);
    if (out->eval_name)
        lanes__jv_set(b.spec, "name", lanes__jv_str(out->eval_name));
    if (in_eval)
        eval_writes(out, &b);
    out->spec_json = lanes__jv_print_new(b.spec, NULL);
    out->key_json = lanes__jv_print_new(b.spec, &files);
    out->files = files.paths;
    out->nfiles = files.n;
    out->produces_model = b.produces_model;
    out->produces_metrics = b.produces_metrics;
    lanes__jv_free(b.spec);
    fvals_release(b.v, b.nf);
    return 0;
fail:
    lanes__jv_free(b.spec);
    fvals_release(b.v, b.nf);
    lanes__stage_release(out);
    return -1;
}

/* ===== matrix paths =========================================================================== */

int lanes__matrix_field_ok(const char *kind, const char *field, const char *sub, char **why)
{
    static const char *const calib_keys[] = { "text", "ids", "samples", "seq_len", NULL };
    const struct kinddef *kd;
    const char **cands;
    size_t nc = 0;
    char *h;
    *why = NULL;
    if (strcmp(kind, "config") == 0) {
        if (!*field) {
            *why = xstrdup("an empty config field name");
            return 0;
        }
        if (sub) {
            *why =
                xasprintf("config fields are set whole; use 'config.%s' with whole values", field);
            return 0;
        }
        return 1;
    }
    kd = kind_find(kind);
    if (!kd) {
        *why = xasprintf("'%s' is not a stage kind", kind);
        return 0;
    }
    if (lanes__is_res_key(field)) {
        if (sub) {
            *why = xasprintf("'%s' has no subfields", field);
            return 0;
        }
        return 1;
    }
    for (const struct fdef *f = kd->fields; f->name; f++) {
        if (strcmp(f->name, field) != 0)
            continue;
        if (!sub)
            return 1;
        if (f->ty == FT_CALIB) {
            for (const char *const *p = calib_keys; *p; p++)
                if (strcmp(*p, sub) == 0)
                    return 1;
            h = lanes__hint(sub, calib_keys);
            *why = xasprintf("calibration has no field '%s'%s", sub, h);
            free(h);
            return 0;
        }
        if (f->ty == FT_ENV) {
            if (env_name_ok(sub))
                return 1;
            *why = xasprintf("'%s' is not a valid environment variable name", sub);
            return 0;
        }
        *why = xasprintf("'%s' has no subfields", field);
        return 0;
    }
    cands = xcalloc(64, sizeof(*cands));
    for (const struct fdef *f = kd->fields; f->name && nc < 50; f++)
        cands[nc++] = f->name;
    for (size_t j = 0; res_keys[j]; j++)
        cands[nc++] = res_keys[j];
    h = lanes__hint(field, cands);
    if (strncmp(h, " (did you mean '", 16) == 0) {
        /* Rewrite the hint with the full path. */
        char *best = xstrndup(h + 16, strlen(h) - 16 - 3);
        free(h);
        h = xasprintf(" (did you mean '%s.%s'?)", kind, best);
        free(best);
    }
    *why = xasprintf("%s has no field '%s'%s", kind, field, h);
    free(h);
    free(cands);
    return 0;
}

/* ===== one spec on its own (lanes/spec.h) ===================================================== */

/* The first duplicate key of any object in the tree, or NULL. */
static const char *json_dup_key(const cJSON *n)
{
    const cJSON *a, *b;
    const char *d;
    if (!cJSON_IsObject(n) && !cJSON_IsArray(n))
        return NULL;
    for (a = n->child; a; a = a->next) {
        if (cJSON_IsObject(n))
            for (b = n->child; b != a; b = b->next)
                if (strcmp(a->string, b->string) == 0)
                    return a->string;
        if ((d = json_dup_key(a)))
            return d;
    }
    return NULL;
}

/* Compares a spec with its canonical form: the first key one has and the other lacks (by
 * dotted path, objects recursively), or the first value that differs. */
static int spec_diff(const cJSON *have, const cJSON *canon, struct buf *path, const char *kind,
                     char **err)
{
    size_t len = path->len;
    for (const cJSON *c = canon->child; c; c = c->next) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(have, c->string);
        buf_printf(path, "%s%s", len ? "." : "", c->string);
        if (!h) {
            *err = xasprintf("spec: missing field '%s' for %s (a complete spec names every "
                             "field; the lanes parser's default is used only in lanes files and "
                             "by `exaq-worker run`)",
                             path->data, kind);
            return 1;
        }
        if (cJSON_IsObject(c) && cJSON_IsObject(h)) {
            if (spec_diff(h, c, path, kind, err))
                return 1;
        } else if (!cJSON_Compare(h, c, 1)) {
            char *hv = cJSON_PrintUnformatted(h), *cv = cJSON_PrintUnformatted(c);
            *err = xasprintf("spec: field '%s' of %s is %s, which the lanes parser makes %s",
                             path->data, kind, hv, cv);
            free(hv);
            free(cv);
            return 1;
        }
        path->len = len;
        path->data[len] = '\0';
    }
    for (const cJSON *h = have->child; h; h = h->next) {
        if (cJSON_GetObjectItemCaseSensitive(canon, h->string))
            continue;
        buf_printf(path, "%s%s", len ? "." : "", h->string);
        *err = xasprintf("spec: field '%s' is not part of a %s spec (the lanes parser drops it)",
                         path->data, kind);
        return 1;
    }
    return 0;
}

int lanes_spec_complete(const char *kind, const char *json, const char *base_dir, char **out,
                        char **err)
{
    struct lanes__ctx c;
    struct lanes_diag diag;
    struct lanes_stage st;
    struct ynode *root = NULL, *item = NULL;
    cJSON *cj = NULL;
    char cwd[PATH_MAX], *yerr = NULL, *dir = NULL;
    const char *d;
    int line, col, rc = -1;
    struct buf b;

    buf_init(&b);
    memset(&c, 0, sizeof(c));
    memset(&st, 0, sizeof(st));
    lanes_diag_init(&diag);
    if (out)
        *out = NULL;
    *err = NULL;
    if (!kind || !lanes__kind_known(kind)) {
        char *h = lanes__hint(kind ? kind : "", lanes__kinds);
        *err = xasprintf("spec: unknown stage kind '%s'%s", kind ? kind : "", h);
        free(h);
        goto out;
    }
    cj = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsObject(cj)) {
        *err = xasprintf("spec: the %s spec is not a JSON object", kind);
        goto out;
    }
    if ((d = json_dup_key(cj))) {
        *err = xasprintf("spec: duplicate key '%s' in the %s spec", d, kind);
        goto out;
    }
    for (const cJSON *k = cj->child; k; k = k->next) {
        if (lanes__is_res_key(k->string)) {
            *err = xasprintf("spec: '%s' is a resource of a stage in a lanes file, not a field "
                             "of its %s spec",
                             k->string, kind);
            goto out;
        }
    }
    /* JSON is YAML: the lanes parser's own tree and checks read it (strings stay strings). */
    if (lanes__ytree_load(json, strlen(json), &root, &yerr, &line, &col) < 0 || !root) {
        *err = xasprintf("spec: the %s spec cannot be read: %s", kind, yerr ? yerr : "empty");
        goto out;
    }
    if (!getcwd(cwd, sizeof(cwd)))
        snprintf(cwd, sizeof(cwd), "/");
    dir = lanes__abs_path(cwd, base_dir && *base_dir ? base_dir : ".");
    c.diag = &diag;
    c.file = "spec";
    c.dir = dir;
    lanes__res_default(&c.defaults);
    item = lanes__ytree_map_new(1, 1);
    lanes__ytree_map_append(item, lanes__ytree_scalar_new(kind, 1, 1), root);
    root = NULL; /* owned by item */
    /* An eval kind's spec may carry its eval-only keys (name). */
    int in_eval = 0;
    for (const char *const *k = eval_kinds; *k; k++)
        in_eval |= strcmp(*k, kind) == 0 && strcmp(kind, "exec") != 0;
    if (lanes__stage_parse(&c, item, in_eval, &st) < 0) {
        size_t n = diag.n;
        buf_puts(&b, "spec: ");
        for (size_t i = 0; i < n; i++)
            buf_printf(&b, "%s%s", i ? "; " : "", diag.items[i].msg);
        if (n < diag.n)
            buf_printf(&b, " (and %zu more problem%s)", diag.n - n, diag.n - n > 1 ? "s" : "");
        if (!diag.n)
            buf_puts(&b, "invalid spec"); /* cannot happen; never fail silently */
        *err = buf_steal(&b);
        goto out;
    }
    if (out)
        *out = xstrdup(st.spec_json);
    rc = 0;
out:
    buf_release(&b);
    lanes__stage_release(&st);
    lanes_diag_release(&diag);
    lanes__ytree_free(item);
    lanes__ytree_free(root);
    cJSON_Delete(cj);
    free(yerr);
    free(dir);
    return rc;
}

int lanes_spec_check(const char *kind, const char *json, char **err)
{
    char *full = NULL;
    cJSON *have = NULL, *canon = NULL;
    struct buf path;
    int rc = -1;
    if (lanes_spec_complete(kind, json, "/", &full, err) < 0)
        return -1;
    buf_init(&path);
    have = cJSON_Parse(json);
    canon = cJSON_Parse(full);
    if (!have || !canon)
        *err = xasprintf("spec: the %s spec cannot be read back", kind); /* cannot happen */
    else if (!spec_diff(have, canon, &path, kind, err))
        rc = 0;
    buf_release(&path);
    cJSON_Delete(have);
    cJSON_Delete(canon);
    free(full);
    return rc;
}
