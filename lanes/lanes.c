/*
 * lanes: the top level of the lanes file parser: sweep settings, eval list, score, package,
 * hooks, lanes with matrix expansion, duplicate checks, the canonical JSON of the whole sweep,
 * and the diagnostics API.
 *
 * DESIGN. The YAML text becomes a ytree (positions, resolved scalars, expanded aliases). One
 * pass reports duplicate and non-scalar mapping keys anywhere in the tree. The top level is
 * then read in a fixed order (defaults and calibration before eval and lanes, whatever the key
 * order in the file), and every stage goes through schema.c. A matrix lane is expanded by
 * copying each affected stage node and writing the matrix value into the copy, so substituted
 * values are validated by exactly the code that validates written ones, and errors point at
 * the matrix value. Errors are collected, deduplicated, sorted by position and capped; nothing
 * is returned when there is any.
 */
#include "lanes/lanes.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "lanes/jv.h"
#include "lanes/schema.h"
#include "lanes/ytree.h"

#define LANES_MAX_LANES  4096 /* lanes after matrix expansion */
#define LANES_MAX_ID_LEN 200
#define LANES_MAX_STAGES 256 /* per lane or in eval */

/* ===== diagnostics ============================================================================ */

void lanes_diag_init(struct lanes_diag *d)
{
    d->items = NULL;
    d->n = 0;
}

void lanes_diag_release(struct lanes_diag *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->items[i].file);
        free(d->items[i].msg);
    }
    free(d->items);
    lanes_diag_init(d);
}

char *lanes_diag_format(const struct lanes_diag *d, size_t i)
{
    const struct lanes_diag_item *it;
    if (!d || i >= d->n)
        return NULL;
    it = &d->items[i];
    if (it->line > 0)
        return xasprintf("%s:%d:%d: error: %s", it->file, it->line, it->col > 0 ? it->col : 1,
                         it->msg);
    return xasprintf("%s: error: %s", it->file, it->msg);
}

/* Stable insertion sort by position of the items this parse added (at most a few hundred). */
static void diag_sort(struct lanes_diag *d, size_t start)
{
    for (size_t i = start + 1; i < d->n; i++) {
        struct lanes_diag_item x = d->items[i];
        size_t j = i;
        while (j > start && (d->items[j - 1].line > x.line ||
                             (d->items[j - 1].line == x.line && d->items[j - 1].col > x.col))) {
            d->items[j] = d->items[j - 1];
            j--;
        }
        d->items[j] = x;
    }
}

/* ===== freeing ================================================================================ */

static void lane_release(struct lanes_lane *l)
{
    free(l->id);
    free(l->base_id);
    free(l->group);
    for (size_t i = 0; i < l->nstages; i++)
        lanes__stage_release(&l->stages[i]);
    free(l->stages);
    memset(l, 0, sizeof(*l));
}

void lanes_file_free(struct lanes_file *lf)
{
    if (!lf)
        return;
    free(lf->path);
    free(lf->dir);
    free(lf->sweep);
    free(lf->base_model);
    for (size_t i = 0; i < lf->neval; i++)
        lanes__stage_release(&lf->eval[i]);
    free(lf->eval);
    for (size_t i = 0; i < lf->nperf; i++)
        free(lf->perf[i].metric);
    free(lf->perf);
    free(lf->speed_metric);
    free(lf->on_finish);
    free(lf->on_fail);
    free(lf->slurm.partition);
    free(lf->slurm.account);
    free(lf->slurm.qos);
    free(lf->slurm.gres);
    free(lf->slurm.constraint);
    for (size_t i = 0; i < lf->slurm.nextra; i++)
        free(lf->slurm.extra_args[i]);
    free(lf->slurm.extra_args);
    for (size_t i = 0; i < lf->nlanes; i++)
        lane_release(&lf->lanes[i]);
    free(lf->lanes);
    free(lf->canonical_json);
    free(lf);
}

const struct lanes_lane *lanes_file_find_lane(const struct lanes_file *lf, const char *id)
{
    for (size_t i = 0; lf && i < lf->nlanes; i++)
        if (strcmp(lf->lanes[i].id, id) == 0)
            return &lf->lanes[i];
    return NULL;
}

/* ===== duplicate keys ========================================================================= */

struct keyref {
    const char *text;
    size_t order;
    const struct ynode *node;
};

static int cmp_keyref(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    int r = strcmp(x->text, y->text);
    if (r)
        return r;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Reports non-scalar keys and repeated keys in every mapping of the tree. */
static void check_dup_keys(struct lanes__ctx *c, const struct ynode *n)
{
    if (n->kind == YNODE_SCALAR)
        return;
    for (size_t i = 0; i < n->n; i++)
        check_dup_keys(c, n->kids[i]);
    if (n->kind != YNODE_MAP || YMAP_LEN(n) == 0)
        return;
    {
        size_t m = YMAP_LEN(n), k = 0;
        struct keyref *refs = xmalloc(m * sizeof(*refs));
        for (size_t i = 0; i < m; i++) {
            const struct ynode *key = YMAP_KEY(n, i);
            if (key->kind != YNODE_SCALAR) {
                lanes__err(c, key, "mapping keys must be plain names, got %s",
                           key->kind == YNODE_SEQ ? "a list" : "a mapping");
                continue;
            }
            if (key->has_nul) {
                lanes__err(c, key, "mapping key contains a NUL character");
                continue;
            }
            refs[k].text = key->text;
            refs[k].order = i;
            refs[k].node = key;
            k++;
        }
        qsort(refs, k, sizeof(*refs), cmp_keyref);
        for (size_t i = 1; i < k; i++) {
            size_t first = i - 1;
            while (first > 0 && strcmp(refs[first - 1].text, refs[i].text) == 0)
                first--;
            if (strcmp(refs[i - 1].text, refs[i].text) == 0)
                lanes__err(c, refs[i].node,
                           "duplicate key '%s' (first given at line %d, column %d)", refs[i].text,
                           refs[first].node->line, refs[first].node->col);
        }
        free(refs);
    }
}

/* ===== small readers ========================================================================== */

static int is_null(const struct ynode *v)
{
    return v->kind == YNODE_SCALAR && v->stype == YSCALAR_NULL;
}

/* The value of key name in map when written and not null. */
static const struct ynode *get(const struct ynode *map, const char *name, const struct ynode **key)
{
    const struct ynode *v = lanes__ytree_map_get(map, name, key);
    return v && !is_null(v) ? v : NULL;
}

static int name_ok(const char *s, const char *extra)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr(extra, *s))
            return 0;
    return 1;
}

static char *opt_str(struct lanes__ctx *c, const struct ynode *map, const char *name)
{
    const struct ynode *v = get(map, name, NULL);
    const char *s;
    if (!v || lanes__get_str(c, v, name, &s) < 0)
        return NULL;
    return xstrdup(s);
}

static void type_err(struct lanes__ctx *c, const struct ynode *v, const char *want,
                     const char *name)
{
    char *what = lanes__ytree_describe(v);
    lanes__err(c, v, "expected %s for '%s', got %s", want, name, what);
    free(what);
}

/* ===== parse state ============================================================================ */

struct lane_id_ref {
    char *id;
    size_t order;
    int line, col;
};

struct pstate {
    struct lanes__ctx c;
    struct lanes_file *lf;
    size_t lanes_cap;
    struct lane_id_ref *ids;
    size_t nids, ids_cap;
};

static void note_id(struct pstate *ps, const char *id, int line, int col)
{
    if (ps->nids == ps->ids_cap) {
        ps->ids_cap = ps->ids_cap ? ps->ids_cap * 2 : 16;
        ps->ids = xrealloc(ps->ids, ps->ids_cap * sizeof(*ps->ids));
    }
    ps->ids[ps->nids].id = xstrdup(id);
    ps->ids[ps->nids].order = ps->nids;
    ps->ids[ps->nids].line = line;
    ps->ids[ps->nids].col = col;
    ps->nids++;
}

static int cmp_idref(const void *a, const void *b)
{
    const struct lane_id_ref *x = a, *y = b;
    int r = strcmp(x->id, y->id);
    if (r)
        return r;
    return x->order < y->order ? -1 : x->order > y->order;
}

static void check_dup_ids(struct pstate *ps)
{
    if (ps->nids < 2)
        return;
    qsort(ps->ids, ps->nids, sizeof(*ps->ids), cmp_idref);
    for (size_t i = 1; i < ps->nids; i++) {
        size_t first = i - 1;
        if (strcmp(ps->ids[first].id, ps->ids[i].id) != 0)
            continue;
        while (first > 0 && strcmp(ps->ids[first - 1].id, ps->ids[i].id) == 0)
            first--;
        lanes__err_at(&ps->c, ps->ids[i].line, ps->ids[i].col,
                      "duplicate lane id '%s' (first defined at line %d, column %d)", ps->ids[i].id,
                      ps->ids[first].line, ps->ids[first].col);
    }
}

/* ===== top-level blocks ======================================================================= */

static void parse_version(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "version", NULL);
    if (!v) {
        lanes__err(&ps->c, root, "missing 'version: 1' at the top level");
        return;
    }
    if (v->kind != YNODE_SCALAR || v->stype != YSCALAR_INT) {
        type_err(&ps->c, v, "the integer 1", "version");
        return;
    }
    if (v->int_overflow || v->ival != 1)
        lanes__err(&ps->c, v, "unsupported lanes file version %s (this build reads version 1)",
                   v->text);
}

static void parse_sweep(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "sweep", NULL);
    const char *s;
    if (!v) {
        lanes__err(&ps->c, root, "missing 'sweep: NAME' at the top level");
        return;
    }
    if (lanes__get_str(&ps->c, v, "sweep", &s) < 0)
        return;
    if (!name_ok(s, "_.-") || strlen(s) > 100) {
        lanes__err(&ps->c, v, "sweep name '%.100s' must be 1 to 100 characters from [A-Za-z0-9_.-]",
                   s);
        return;
    }
    ps->lf->sweep = xstrdup(s);
}

static void parse_base_model(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "base_model", NULL);
    const char *s;
    char *abs, *cfg;
    if (!v) {
        lanes__err(&ps->c, root,
                   "missing 'base_model: DIR' at the top level (a Hugging Face checkpoint dir)");
        return;
    }
    if (lanes__get_str(&ps->c, v, "base_model", &s) < 0)
        return;
    if (!*s) {
        lanes__err(&ps->c, v, "'base_model' is an empty path");
        return;
    }
    abs = lanes__abs_path(ps->c.dir, s);
    cfg = path_join(abs, "config.json");
    if (access(abs, F_OK) != 0)
        lanes__err(&ps->c, v,
                   "base_model '%s' not found (looked for '%s'; relative paths start at the "
                   "lanes file's directory)",
                   s, abs);
    else if (!is_dir(abs))
        lanes__err(&ps->c, v,
                   "base_model '%s' is not a directory (it must be a Hugging Face checkpoint dir "
                   "with config.json)",
                   abs);
    else if (!is_file(cfg))
        lanes__err(&ps->c, v,
                   "base_model '%s' has no config.json (it must be a Hugging Face checkpoint dir)",
                   abs);
    else
        ps->lf->base_model = xstrdup(abs);
    free(cfg);
    free(abs);
}

static void parse_defaults(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "defaults", NULL);
    lanes__res_default(&ps->c.defaults);
    if (!v)
        return;
    if (v->kind != YNODE_MAP) {
        type_err(&ps->c, v, "a mapping like {retries: 1, timeout_min: 240, gpus: 1}", "defaults");
        return;
    }
    lanes__check_keys(&ps->c, v, lanes_res_keys, "defaults");
    for (size_t i = 0; i < YMAP_LEN(v); i++) {
        const struct ynode *k = YMAP_KEY(v, i);
        if (k->kind == YNODE_SCALAR && lanes__is_res_key(k->text))
            lanes__res_apply(&ps->c, k->text, YMAP_VAL(v, i), &ps->c.defaults);
    }
}

static void parse_score(struct pstate *ps, const struct ynode *root)
{
    static const char *const keys[] = { "perf", "speed", "weights", NULL };
    static const char *const term_keys[] = { "metric", "higher_is_better", "weight", NULL };
    static const char *const speed_keys[] = { "metric", NULL };
    static const char *const weight_keys[] = { "perf", "speed", NULL };
    struct lanes_file *lf = ps->lf;
    struct lanes__ctx *c = &ps->c;
    const struct ynode *v = get(root, "score", NULL), *perf = NULL, *speed = NULL, *w = NULL;

    lf->w_perf = 0.5;
    lf->w_speed = 0.5;
    if (v && v->kind != YNODE_MAP) {
        type_err(c, v, "a mapping with perf, speed and weights", "score");
        v = NULL;
    }
    if (v) {
        lanes__check_keys(c, v, keys, "score");
        perf = get(v, "perf", NULL);
        speed = get(v, "speed", NULL);
        w = get(v, "weights", NULL);
    }
    if (perf && perf->kind != YNODE_SEQ) {
        type_err(c, perf, "a list like [{metric: ppl, higher_is_better: false, weight: 1}]",
                 "score.perf");
    } else if (perf && perf->n == 0) {
        lanes__err(c, perf, "'score.perf' must list at least one metric");
    } else if (perf) {
        lf->perf = xcalloc(perf->n, sizeof(*lf->perf));
        for (size_t i = 0; i < perf->n; i++) {
            const struct ynode *t = perf->kids[i], *x;
            struct lanes_score_term *st = &lf->perf[lf->nperf];
            const char *s;
            if (t->kind != YNODE_MAP) {
                type_err(c, t, "a mapping like {metric: ppl, higher_is_better: false}",
                         "score.perf item");
                continue;
            }
            lanes__check_keys(c, t, term_keys, "score.perf item");
            st->higher_is_better = 0;
            st->weight = 1.0;
            if (!(x = get(t, "metric", NULL))) {
                lanes__err(c, t, "score.perf item needs 'metric: NAME' (e.g. ppl or mcqa_acc)");
                continue;
            }
            if (lanes__get_str(c, x, "metric", &s) < 0)
                continue;
            if (!*s) {
                lanes__err(c, x, "'metric' is an empty name");
                continue;
            }
            if ((x = get(t, "higher_is_better", NULL)))
                lanes__get_bool(c, x, "higher_is_better", &st->higher_is_better);
            if ((x = get(t, "weight", NULL)))
                lanes__get_num(c, x, "weight", 0, 0, INFINITY, 0, &st->weight);
            st->metric = xstrdup(s);
            lf->nperf++;
        }
    }
    if (!perf) {
        lf->perf = xcalloc(1, sizeof(*lf->perf));
        lf->perf[0].metric = xstrdup("ppl");
        lf->perf[0].higher_is_better = 0;
        lf->perf[0].weight = 1.0;
        lf->nperf = 1;
    }
    if (speed && speed->kind != YNODE_MAP) {
        type_err(c, speed, "a mapping like {metric: time_per_token}", "score.speed");
    } else if (speed) {
        const struct ynode *x;
        const char *s;
        lanes__check_keys(c, speed, speed_keys, "score.speed");
        if ((x = get(speed, "metric", NULL)) && lanes__get_str(c, x, "metric", &s) == 0) {
            if (*s)
                lf->speed_metric = xstrdup(s);
            else
                lanes__err(c, x, "'metric' is an empty name");
        }
    }
    if (!lf->speed_metric)
        lf->speed_metric = xstrdup("time_per_token");
    if (w && w->kind != YNODE_MAP) {
        type_err(c, w, "a mapping like {perf: 0.5, speed: 0.5}", "score.weights");
    } else if (w) {
        const struct ynode *x;
        size_t e0 = c->nerr;
        lanes__check_keys(c, w, weight_keys, "score.weights");
        if ((x = get(w, "perf", NULL)))
            lanes__get_num(c, x, "weights.perf", 0, 0, INFINITY, 0, &lf->w_perf);
        if ((x = get(w, "speed", NULL)))
            lanes__get_num(c, x, "weights.speed", 0, 0, INFINITY, 0, &lf->w_speed);
        if (c->nerr == e0 && lf->w_perf == 0 && lf->w_speed == 0)
            lanes__err(c, w, "score weights perf and speed are both 0; nothing would be ranked");
    }
}

static void parse_package(struct pstate *ps, const struct ynode *root)
{
    static const char *const keys[] = { "top", "max_zip_gb", "max_unzipped_gb", NULL };
    struct lanes_file *lf = ps->lf;
    struct lanes__ctx *c = &ps->c;
    const struct ynode *v = get(root, "package", NULL), *x;
    int64_t top;
    lf->package_top = 3;
    lf->max_zip_gb = 10;
    lf->max_unzipped_gb = 32;
    if (!v)
        return;
    if (v->kind != YNODE_MAP) {
        type_err(c, v, "a mapping like {top: 3, max_zip_gb: 10, max_unzipped_gb: 32}", "package");
        return;
    }
    lanes__check_keys(c, v, keys, "package");
    if ((x = get(v, "top", NULL)) && lanes__get_int(c, x, "top", 0, 1000, &top) == 0)
        lf->package_top = (int)top;
    if ((x = get(v, "max_zip_gb", NULL)))
        lanes__get_num(c, x, "max_zip_gb", 0, 1, INFINITY, 0, &lf->max_zip_gb);
    if ((x = get(v, "max_unzipped_gb", NULL)))
        lanes__get_num(c, x, "max_unzipped_gb", 0, 1, INFINITY, 0, &lf->max_unzipped_gb);
}

/* The slurm: mapping. Strings are passed to sbatch as they are, so they may not hold newlines
 * or start with '-' (they would read as another option). */
static void slurm_str(struct lanes__ctx *c, const struct ynode *v, const char *name, char **out)
{
    const char *s;
    if (lanes__get_str(c, v, name, &s) < 0)
        return;
    if (!*s || *s == '-' || strpbrk(s, "\n\r")) {
        lanes__err(c, v, "slurm.%s must be a non-empty word that does not start with '-'", name);
        return;
    }
    *out = xstrdup(s);
}

static void parse_slurm(struct pstate *ps, const struct ynode *root)
{
    static const char *const keys[] = { "partition", "account",    "qos",
                                        "time_min",  "gres",       "cpus_per_task",
                                        "mem_gb",    "constraint", "extra_args",
                                        NULL };
    struct lanes_slurm *sl = &ps->lf->slurm;
    struct lanes__ctx *c = &ps->c;
    const struct ynode *v = get(root, "slurm", NULL), *x;
    int64_t n;
    if (!v)
        return;
    if (v->kind != YNODE_MAP) {
        type_err(c, v, "a mapping like {partition: gpu, time_min: 60, gres: 'gpu:1'}", "slurm");
        return;
    }
    sl->present = 1;
    lanes__check_keys(c, v, keys, "slurm");
    if ((x = get(v, "partition", NULL)))
        slurm_str(c, x, "partition", &sl->partition);
    if ((x = get(v, "account", NULL)))
        slurm_str(c, x, "account", &sl->account);
    if ((x = get(v, "qos", NULL)))
        slurm_str(c, x, "qos", &sl->qos);
    if ((x = get(v, "gres", NULL)))
        slurm_str(c, x, "gres", &sl->gres);
    if ((x = get(v, "constraint", NULL)))
        slurm_str(c, x, "constraint", &sl->constraint);
    if ((x = get(v, "time_min", NULL)))
        lanes__get_num(c, x, "time_min", 0, 1, INFINITY, 0, &sl->time_min);
    if ((x = get(v, "cpus_per_task", NULL)) &&
        lanes__get_int(c, x, "cpus_per_task", 1, 4096, &n) == 0)
        sl->cpus_per_task = (int)n;
    if ((x = get(v, "mem_gb", NULL)))
        lanes__get_num(c, x, "mem_gb", 0, 1, INFINITY, 0, &sl->mem_gb);
    if ((x = get(v, "extra_args", NULL))) {
        if (x->kind != YNODE_SEQ) {
            type_err(c, x, "a list of sbatch arguments like ['--exclusive']", "slurm.extra_args");
            return;
        }
        sl->extra_args = xcalloc(x->n ? x->n : 1, sizeof(*sl->extra_args));
        for (size_t i = 0; i < x->n; i++) {
            const char *s;
            if (lanes__get_str(c, x->kids[i], "slurm.extra_args", &s) < 0)
                continue;
            if (strncmp(s, "--", 2) || strpbrk(s, "\n\r")) {
                lanes__err(c, x->kids[i],
                           "slurm.extra_args: '%s' is not a long sbatch option; write it as "
                           "'--name=value'",
                           s);
                continue;
            }
            sl->extra_args[sl->nextra++] = xstrdup(s);
        }
    }
}

/* Names stages kind, kind-2, ... (prefix "eval." for the eval list). */
static void name_stages(struct lanes_stage *st, size_t n, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        size_t same = 1;
        for (size_t j = 0; j < i; j++)
            same += strcmp(st[j].kind, st[i].kind) == 0;
        if (same == 1)
            st[i].name = xasprintf("%s%s", prefix, st[i].kind);
        else
            st[i].name = xasprintf("%s%s-%zu", prefix, st[i].kind, same);
    }
}

static void parse_eval(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "eval", NULL);
    struct lanes_file *lf = ps->lf;
    int bad = 0;
    if (!v)
        return;
    if (v->kind != YNODE_SEQ) {
        type_err(&ps->c, v, "a list of stages like '- ppl: {text: val.txt}'", "eval");
        return;
    }
    if (v->n > LANES_MAX_STAGES) {
        lanes__err(&ps->c, v, "eval lists %zu stages; the limit is %d", v->n, LANES_MAX_STAGES);
        return;
    }
    lf->eval = xcalloc(v->n ? v->n : 1, sizeof(*lf->eval));
    for (size_t i = 0; i < v->n; i++) {
        if (lanes__stage_parse(&ps->c, v->kids[i], 1, &lf->eval[lf->neval]) == 0)
            lf->neval++;
        else
            bad = 1;
    }
    if (!bad) {
        name_stages(lf->eval, lf->neval, "eval.");
        lanes__eval_collisions(&ps->c, lf->eval, lf->neval);
    }
}

/* ===== lanes and matrix ======================================================================= */

struct mentry {
    const struct ynode *key;  /* the path key */
    const struct ynode *vals; /* the list of values */
    char *kind, *field, *sub; /* split path; sub may be NULL */
    const char *disp;         /* path without "kind.", for lane ids */
};

static void mentries_free(struct mentry *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(m[i].kind);
        free(m[i].field);
        free(m[i].sub);
    }
    free(m);
}

/* Does the lane's stage list contain a stage of this kind? */
static int lane_has_kind(const struct ynode *stages, const char *kind)
{
    for (size_t i = 0; stages && stages->kind == YNODE_SEQ && i < stages->n; i++) {
        const char *k = lanes__stage_item_kind(stages->kids[i], NULL);
        if (k && strcmp(k, kind) == 0)
            return 1;
    }
    return 0;
}

/* Checks the matrix; returns the entries (and *n), or NULL after reporting. */
static struct mentry *parse_matrix(struct pstate *ps, const struct ynode *matrix,
                                   const struct ynode *stages, size_t *n)
{
    struct lanes__ctx *c = &ps->c;
    struct mentry *m;
    size_t nm = 0;
    int bad = 0;
    *n = 0;
    if (matrix->kind != YNODE_MAP) {
        type_err(c, matrix, "a mapping like {quantize.dampening: [0.01, 0.02]}", "matrix");
        return NULL;
    }
    if (YMAP_LEN(matrix) == 0) {
        lanes__err(c, matrix, "'matrix' is empty; remove it or give at least one path");
        return NULL;
    }
    m = xcalloc(YMAP_LEN(matrix), sizeof(*m));
    for (size_t i = 0; i < YMAP_LEN(matrix); i++) {
        const struct ynode *k = YMAP_KEY(matrix, i), *vals = YMAP_VAL(matrix, i);
        struct mentry *e = &m[nm];
        char *path, *dot1, *dot2, *why = NULL;
        if (k->kind != YNODE_SCALAR || k->has_nul) {
            bad = 1;
            continue;
        }
        path = xstrdup(k->text);
        dot1 = strchr(path, '.');
        dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        if (!dot1 || dot1 == path || !dot1[1] ||
            (dot2 && (dot2 == dot1 + 1 || !dot2[1] || strchr(dot2 + 1, '.')))) {
            lanes__err(c, k,
                       "matrix path '%s' names no field: write <kind>.<field> or "
                       "<kind>.<field>.<subfield>, e.g. 'quantize.dampening'",
                       k->text);
            free(path);
            bad = 1;
            continue;
        }
        *dot1 = '\0';
        if (dot2)
            *dot2 = '\0';
        if (!lanes__kind_known(path)) {
            char *h = lanes__hint(path, lanes__kinds);
            lanes__err(c, k, "matrix path '%s' names no field: '%s' is not a stage kind%s", k->text,
                       path, h);
            free(h);
            free(path);
            bad = 1;
            continue;
        }
        if (!lanes__matrix_field_ok(path, dot1 + 1, dot2 ? dot2 + 1 : NULL, &why)) {
            lanes__err(c, k, "matrix path '%s' names no field: %s", k->text, why);
            free(why);
            free(path);
            bad = 1;
            continue;
        }
        if (!lane_has_kind(stages, path)) {
            lanes__err(c, k, "matrix path '%s' names no field: the lane has no '%s' stage", k->text,
                       path);
            free(path);
            bad = 1;
            continue;
        }
        if (vals->kind != YNODE_SEQ || vals->n == 0) {
            char *what = lanes__ytree_describe(vals);
            lanes__err(c, vals, "matrix values for '%s' must be a non-empty list, got %s", k->text,
                       vals->kind == YNODE_SEQ ? "an empty list" : what);
            free(what);
            free(path);
            bad = 1;
            continue;
        }
        if (vals->n > LANES_MAX_LANES) {
            lanes__err(c, vals, "matrix lists %zu values for '%s'; the limit is %d lanes", vals->n,
                       k->text, LANES_MAX_LANES);
            free(path);
            bad = 1;
            continue;
        }
        for (size_t j = 0; j < vals->n; j++) {
            const struct ynode *vj = vals->kids[j];
            if (vj->kind != YNODE_SCALAR) {
                lanes__err(c, vj,
                           "matrix values must be scalars (numbers, names, true/false), got %s",
                           vj->kind == YNODE_SEQ ? "a list" : "a mapping");
                bad = 1;
                continue;
            }
            /* Repeated values would expand to duplicate lanes (quadratic, on at most
             * LANES_MAX_LANES values). */
            for (size_t q = 0; q < j; q++) {
                const struct ynode *vq = vals->kids[q];
                if (vq->kind == YNODE_SCALAR && vq->len == vj->len &&
                    memcmp(vq->text, vj->text, vj->len) == 0) {
                    lanes__err(c, vj,
                               "matrix value '%.60s' for '%s' is repeated (first at line %d, "
                               "column %d)",
                               vj->has_nul ? "?" : vj->text, k->text, vq->line, vq->col);
                    bad = 1;
                    break;
                }
            }
        }
        e->key = k;
        e->vals = vals;
        e->kind = xstrdup(path);
        e->field = xstrdup(dot1 + 1);
        e->sub = dot2 ? xstrdup(dot2 + 1) : NULL;
        e->disp = k->text + strlen(path) + 1;
        free(path);
        nm++;
    }
    if (bad) {
        mentries_free(m, nm);
        return NULL;
    }
    *n = nm;
    return m;
}

/* Sets key name in a mapping to val (takes val): replaces the first such key or appends. */
static void map_put(struct ynode *map, const char *name, struct ynode *val, const struct ynode *at)
{
    for (size_t i = 0; i < YMAP_LEN(map); i++) {
        struct ynode *k = YMAP_KEY(map, i);
        if (k->kind == YNODE_SCALAR && !k->has_nul && strcmp(k->text, name) == 0) {
            lanes__ytree_free(YMAP_VAL(map, i));
            map->kids[2 * i + 1] = val;
            return;
        }
    }
    lanes__ytree_map_append(map, lanes__ytree_scalar_new(name, at->line, at->col), val);
}

/* A copy of a stage item with the matrix values of combination idx written into it. */
static struct ynode *subst_stage(const struct ynode *item, const char *kind, const struct mentry *m,
                                 size_t nm, const size_t *idx)
{
    struct ynode *cp = lanes__ytree_copy(item);
    struct ynode *params = YMAP_VAL(cp, 0);
    if (is_null(params)) {
        struct ynode *nm_ = lanes__ytree_map_new(params->line, params->col);
        lanes__ytree_free(params);
        cp->kids[1] = params = nm_;
    }
    if (params->kind != YNODE_MAP)
        return cp; /* reported when the copy is parsed */
    for (size_t i = 0; i < nm; i++) {
        const struct ynode *val = m[i].vals->kids[idx[i]];
        struct ynode *sub;
        if (strcmp(m[i].kind, kind) != 0)
            continue;
        if (!m[i].sub) {
            map_put(params, m[i].field, lanes__ytree_copy(val), m[i].key);
            continue;
        }
        sub = lanes__ytree_map_get(params, m[i].field, NULL);
        if (sub && sub->kind != YNODE_MAP && !is_null(sub))
            continue; /* the block itself is wrong; reported when parsed */
        if (!sub || is_null(sub)) {
            sub = lanes__ytree_map_new(m[i].key->line, m[i].key->col);
            map_put(params, m[i].field, sub, m[i].key);
        }
        map_put(sub, m[i].sub, lanes__ytree_copy(val), m[i].key);
    }
    return cp;
}

static int matrix_uses_kind(const struct mentry *m, size_t nm, const char *kind)
{
    for (size_t i = 0; i < nm; i++)
        if (strcmp(m[i].kind, kind) == 0)
            return 1;
    return 0;
}

/* Parses the stages of one (possibly expanded) lane and appends it when valid. */
static void add_lane(struct pstate *ps, const char *id, const char *base_id, const char *group,
                     const struct ynode *lane, const struct ynode *stages, const struct mentry *m,
                     size_t nm, const size_t *idx, int id_ok)
{
    struct lanes_lane l;
    int bad = !id_ok;
    memset(&l, 0, sizeof(l));
    l.stages = xcalloc(stages->n, sizeof(*l.stages));
    for (size_t i = 0; i < stages->n; i++) {
        const struct ynode *item = stages->kids[i];
        const char *kind = lanes__stage_item_kind(item, NULL);
        struct ynode *cp = NULL;
        int r;
        if (m && kind && matrix_uses_kind(m, nm, kind))
            cp = subst_stage(item, kind, m, nm, idx);
        r = lanes__stage_parse(&ps->c, cp ? cp : item, 0, &l.stages[l.nstages]);
        lanes__ytree_free(cp);
        if (r == 0)
            l.nstages++;
        else
            bad = 1;
    }
    if (bad || ps->c.nerr) {
        /* Once the file has an error nothing is returned; stop keeping lanes. */
        lane_release(&l);
        return;
    }
    name_stages(l.stages, l.nstages, "");
    l.id = xstrdup(id);
    l.base_id = xstrdup(base_id);
    l.group = group ? xstrdup(group) : NULL;
    l.line = lane->line;
    l.col = lane->col;
    if (ps->lf->nlanes == ps->lanes_cap) {
        ps->lanes_cap = ps->lanes_cap ? ps->lanes_cap * 2 : 16;
        ps->lf->lanes = xrealloc(ps->lf->lanes, ps->lanes_cap * sizeof(*ps->lf->lanes));
    }
    ps->lf->lanes[ps->lf->nlanes++] = l;
}

static int id_char_ok(char ch)
{
    return isalnum((unsigned char)ch) || strchr("_.=:+-", ch) != NULL;
}

static void parse_lane(struct pstate *ps, const struct ynode *lane)
{
    static const char *const keys[] = { "id", "group", "description", "matrix", "stages", NULL };
    struct lanes__ctx *c = &ps->c;
    const struct ynode *idn, *stages, *matrix, *x;
    const char *id = NULL, *s;
    char *group = NULL;
    int id_ok = 0;

    if (lane->kind != YNODE_MAP) {
        char *what = lanes__ytree_describe(lane);
        lanes__err(c, lane, "a lane is a mapping with 'id' and 'stages', got %s", what);
        free(what);
        return;
    }
    lanes__check_keys(c, lane, keys, "lane");
    idn = get(lane, "id", NULL);
    if (!idn) {
        lanes__err(c, lane, "lane needs 'id: NAME'");
    } else if (lanes__get_str(c, idn, "id", &id) == 0) {
        if (!name_ok(id, "_.=-") || strlen(id) > LANES_MAX_ID_LEN)
            lanes__err(c, idn, "lane id '%.100s' must be 1 to %d characters from [A-Za-z0-9_.=-]",
                       id, LANES_MAX_ID_LEN);
        else if (strcmp(id, "baseline") == 0)
            lanes__err(c, idn,
                       "lane id 'baseline' is reserved for the implicit baseline (the eval stages "
                       "on base_model)");
        else
            id_ok = 1;
    }
    group = opt_str(c, lane, "group");
    if ((x = get(lane, "description", NULL)))
        lanes__get_str(c, x, "description", &s);
    stages = get(lane, "stages", NULL);
    matrix = get(lane, "matrix", NULL);
    if (!stages) {
        lanes__err(c, lane, "lane '%s' needs 'stages:' (a list like '- quantize: {...}')",
                   id ? id : "?");
        goto out;
    }
    if (stages->kind != YNODE_SEQ) {
        type_err(c, stages, "a list of stages like '- quantize: {method: gptq}'", "stages");
        goto out;
    }
    if (stages->n == 0) {
        lanes__err(c, stages, "lane '%s' has no stages", id ? id : "?");
        goto out;
    }
    if (stages->n > LANES_MAX_STAGES) {
        lanes__err(c, stages, "lane has %zu stages; the limit is %d", stages->n, LANES_MAX_STAGES);
        goto out;
    }
    if (!matrix) {
        if (ps->lf->nlanes >= LANES_MAX_LANES || ps->nids >= LANES_MAX_LANES) {
            lanes__err(c, lane, "more than %d lanes", LANES_MAX_LANES);
            goto out;
        }
        if (id_ok)
            note_id(ps, id, idn->line, idn->col);
        add_lane(ps, id ? id : "?", id ? id : "?", group, lane, stages, NULL, 0, NULL, id_ok);
        goto out;
    }
    {
        size_t nm, total = 1, *idx;
        struct mentry *m = parse_matrix(ps, matrix, stages, &nm);
        if (!m) {
            /* Still report what is wrong in the stages themselves. */
            add_lane(ps, "?", "?", group, lane, stages, NULL, 0, NULL, 0);
            goto out;
        }
        for (size_t i = 0; i < nm; i++) {
            total *= m[i].vals->n;
            if (total + ps->nids > LANES_MAX_LANES)
                break;
        }
        if (total + ps->nids > LANES_MAX_LANES) {
            lanes__err(c, matrix, "matrix expands to too many lanes (more than %d in the file)",
                       LANES_MAX_LANES);
            mentries_free(m, nm);
            goto out;
        }
        idx = xcalloc(nm, sizeof(*idx));
        for (size_t n = 0; n < total; n++) {
            struct buf b;
            int ok = id_ok;
            const struct ynode *last = m[nm - 1].vals->kids[idx[nm - 1]];
            buf_init(&b);
            buf_puts(&b, id ? id : "?");
            for (size_t i = 0; i < nm; i++) {
                const struct ynode *val = m[i].vals->kids[idx[i]];
                int chars_ok = val->len > 0 && !val->has_nul;
                for (size_t k = 0; chars_ok && k < val->len; k++)
                    chars_ok = id_char_ok(val->text[k]);
                if (!chars_ok) {
                    lanes__err(c, val,
                               "matrix value '%.60s' cannot be part of a lane id (use characters "
                               "from [A-Za-z0-9_.=:+-])",
                               val->has_nul ? "?" : val->text);
                    ok = 0;
                }
                buf_printf(&b, "-%s=%s", m[i].disp, val->has_nul ? "?" : val->text);
            }
            buf_cstr(&b);
            if (ok && b.len > LANES_MAX_ID_LEN) {
                lanes__err(c, last, "expanded lane id '%.60s...' is longer than %d characters",
                           b.data, LANES_MAX_ID_LEN);
                ok = 0;
            }
            if (ok)
                note_id(ps, b.data, last->line, last->col);
            c->lane_note = b.data;
            add_lane(ps, b.data, id ? id : "?", group, lane, stages, m, nm, idx, ok);
            c->lane_note = NULL;
            buf_release(&b);
            /* Next combination: the last key varies fastest. */
            for (size_t i = nm; i-- > 0;) {
                if (++idx[i] < m[i].vals->n)
                    break;
                idx[i] = 0;
            }
        }
        free(idx);
        mentries_free(m, nm);
    }
out:
    free(group);
}

static void parse_lanes(struct pstate *ps, const struct ynode *root)
{
    const struct ynode *v = get(root, "lanes", NULL);
    if (!v) {
        lanes__err(&ps->c, root, "missing 'lanes:' at the top level (a list of lanes)");
        return;
    }
    if (v->kind != YNODE_SEQ) {
        char *what = lanes__ytree_describe(v);
        lanes__err(&ps->c, v, "'lanes' must be a list of lanes ('- id: ...'), got %s", what);
        free(what);
        return;
    }
    if (v->n == 0) {
        lanes__err(&ps->c, v, "'lanes' is empty; give at least one lane");
        return;
    }
    for (size_t i = 0; i < v->n; i++)
        parse_lane(ps, v->kids[i]);
    check_dup_ids(ps);
}

/* ===== canonical JSON ========================================================================= */

static struct jv *res_jv(const struct lanes_res *r)
{
    struct jv *o = lanes__jv_obj();
#define RES_JV_INT(x)                   lanes__jv_int(x)
#define RES_JV_NUM(x)                   lanes__jv_num(x)
#define RES_JV_NUMPOS(x)                lanes__jv_num(x)
#define RES_JV_EXEC(x)                  lanes__jv_str(lanes_exec_name(x))
#define RES_JV(name, type, lo, hi, def) lanes__jv_set(o, #name, RES_JV_##type(r->name));
    LANES_RESOURCES(RES_JV)
#undef RES_JV
    return o;
}

static struct jv *stage_jv(const struct lanes_stage *s)
{
    struct jv *o = lanes__jv_obj(), *files = lanes__jv_arr();
    lanes__jv_set(o, "name", lanes__jv_str(s->name));
    lanes__jv_set(o, "kind", lanes__jv_str(s->kind));
    lanes__jv_set(o, "key", lanes__jv_raw(s->key_json));
    for (size_t i = 0; i < s->nfiles; i++)
        lanes__jv_push(files, lanes__jv_str(s->files[i]));
    lanes__jv_set(o, "files", files);
    lanes__jv_set(o, "produces_model", lanes__jv_bool(s->produces_model));
    lanes__jv_set(o, "produces_metrics", lanes__jv_bool(s->produces_metrics));
    lanes__jv_set(o, "res", res_jv(&s->res));
    return o;
}

static char *canonical(const struct lanes_file *lf)
{
    struct jv *o = lanes__jv_obj(), *a, *score, *perf, *x;
    char *text;
    lanes__jv_set(o, "version", lanes__jv_int(1));
    lanes__jv_set(o, "sweep", lanes__jv_str(lf->sweep));
    lanes__jv_set(o, "base_model", lanes__jv_str(lf->base_model));
    a = lanes__jv_arr();
    for (size_t i = 0; i < lf->neval; i++)
        lanes__jv_push(a, stage_jv(&lf->eval[i]));
    lanes__jv_set(o, "eval", a);
    score = lanes__jv_obj();
    perf = lanes__jv_arr();
    for (size_t i = 0; i < lf->nperf; i++) {
        x = lanes__jv_obj();
        lanes__jv_set(x, "metric", lanes__jv_str(lf->perf[i].metric));
        lanes__jv_set(x, "higher_is_better", lanes__jv_bool(lf->perf[i].higher_is_better));
        lanes__jv_set(x, "weight", lanes__jv_num(lf->perf[i].weight));
        lanes__jv_push(perf, x);
    }
    lanes__jv_set(score, "perf", perf);
    x = lanes__jv_obj();
    lanes__jv_set(x, "metric", lanes__jv_str(lf->speed_metric));
    lanes__jv_set(score, "speed", x);
    x = lanes__jv_obj();
    lanes__jv_set(x, "perf", lanes__jv_num(lf->w_perf));
    lanes__jv_set(x, "speed", lanes__jv_num(lf->w_speed));
    lanes__jv_set(score, "weights", x);
    lanes__jv_set(o, "score", score);
    x = lanes__jv_obj();
    lanes__jv_set(x, "top", lanes__jv_int(lf->package_top));
    lanes__jv_set(x, "max_zip_gb", lanes__jv_num(lf->max_zip_gb));
    lanes__jv_set(x, "max_unzipped_gb", lanes__jv_num(lf->max_unzipped_gb));
    lanes__jv_set(o, "package", x);
    x = lanes__jv_obj();
    lanes__jv_set(x, "on_finish", lf->on_finish ? lanes__jv_str(lf->on_finish) : lanes__jv_null());
    lanes__jv_set(x, "on_fail", lf->on_fail ? lanes__jv_str(lf->on_fail) : lanes__jv_null());
    lanes__jv_set(o, "hooks", x);
    a = lanes__jv_arr();
    for (size_t i = 0; i < lf->nlanes; i++) {
        const struct lanes_lane *l = &lf->lanes[i];
        struct jv *lj = lanes__jv_obj(), *st = lanes__jv_arr();
        lanes__jv_set(lj, "id", lanes__jv_str(l->id));
        lanes__jv_set(lj, "group", l->group ? lanes__jv_str(l->group) : lanes__jv_null());
        for (size_t k = 0; k < l->nstages; k++)
            lanes__jv_push(st, stage_jv(&l->stages[k]));
        lanes__jv_set(lj, "stages", st);
        lanes__jv_push(a, lj);
    }
    lanes__jv_set(o, "lanes", a);
    text = lanes__jv_print_new(o, NULL);
    lanes__jv_free(o);
    return text;
}

/* ===== entry points =========================================================================== */

static int parse_text(const char *buf, size_t len, const char *display, const char *path,
                      const char *dir, struct lanes_file **out, struct lanes_diag *diag)
{
    static const char *const top_keys[] = { "version",     "sweep",     "base_model", "description",
                                            "calibration", "eval",      "score",      "package",
                                            "defaults",    "on_finish", "on_fail",    "lanes",
                                            "slurm",       NULL };
    struct pstate ps;
    struct ynode *root = NULL;
    char *err = NULL;
    int line, col, rc = -1;
    const struct ynode *x;
    const char *s;

    memset(&ps, 0, sizeof(ps));
    ps.c.diag = diag;
    ps.c.diag_start = diag->n;
    ps.c.file = display;
    ps.c.dir = dir;
    lanes__res_default(&ps.c.defaults);
    *out = NULL;

    if (lanes__ytree_load(buf, len, &root, &err, &line, &col) < 0) {
        lanes__err_at(&ps.c, line, col, "%s", err);
        free(err);
        goto done;
    }
    if (!root) {
        lanes__err_at(&ps.c, 0, 0,
                      "the lanes file is empty (it needs version, sweep, base_model and lanes)");
        goto done;
    }
    if (root->kind != YNODE_MAP) {
        char *what = lanes__ytree_describe(root);
        lanes__err(&ps.c, root,
                   "a lanes file is a mapping with version, sweep, base_model and lanes; got %s",
                   what);
        free(what);
        goto done;
    }
    check_dup_keys(&ps.c, root);

    ps.lf = xcalloc(1, sizeof(*ps.lf));
    ps.lf->path = xstrdup(path);
    ps.lf->dir = xstrdup(dir);
    lanes__check_keys(&ps.c, root, top_keys, "the top level");
    parse_version(&ps, root);
    parse_sweep(&ps, root);
    parse_base_model(&ps, root);
    if ((x = get(root, "description", NULL)))
        lanes__get_str(&ps.c, x, "description", &s);
    ps.lf->on_finish = opt_str(&ps.c, root, "on_finish");
    ps.lf->on_fail = opt_str(&ps.c, root, "on_fail");
    if ((x = lanes__ytree_map_get(root, "calibration", NULL)))
        lanes__calib_parse(&ps.c, x, "calibration", 1, &ps.c.top_calib);
    parse_defaults(&ps, root);
    parse_score(&ps, root);
    parse_package(&ps, root);
    parse_slurm(&ps, root);
    parse_eval(&ps, root);
    parse_lanes(&ps, root);

    if (ps.c.nerr == 0) {
        ps.lf->canonical_json = canonical(ps.lf);
        *out = ps.lf;
        ps.lf = NULL;
        rc = 0;
    }
done:
    diag_sort(diag, ps.c.diag_start);
    if (ps.c.capped) {
        ps.c.capped = 0;
        ps.c.nerr = 0; /* let the note through */
        lanes__err_at(&ps.c, 0, 0, "too many errors; only the first %d are shown",
                      LANES_MAX_ERRORS);
    }
    if (rc != 0 && diag->n == ps.c.diag_start)
        lanes__err_at(&ps.c, 0, 0, "invalid lanes file"); /* cannot happen; never fail silently */
    lanes_file_free(ps.lf);
    lanes__ytree_free(root);
    lanes__calib_release(&ps.c.top_calib);
    for (size_t i = 0; i < ps.nids; i++)
        free(ps.ids[i].id);
    free(ps.ids);
    return rc;
}

int lanes_parse_buf(const char *buf, size_t len, const char *display_name, const char *base_dir,
                    struct lanes_file **out, struct lanes_diag *diag)
{
    char cwd[PATH_MAX];
    char *dir;
    int rc;
    const char *display = display_name ? display_name : "<buffer>";
    if (!getcwd(cwd, sizeof(cwd)))
        snprintf(cwd, sizeof(cwd), "/");
    dir = lanes__abs_path(cwd, base_dir && *base_dir ? base_dir : ".");
    rc = parse_text(buf ? buf : "", buf ? len : 0, display, display, dir, out, diag);
    free(dir);
    return rc;
}

int lanes_parse_file(const char *path, struct lanes_file **out, struct lanes_diag *diag)
{
    struct lanes__ctx c;
    char *text = NULL, *abs = NULL, *dir = NULL;
    size_t len = 0;
    struct stat st;
    char ebuf[128]; /* strerror_r (GNU): thread-safe, unlike strerror */
    int r, rc;

    *out = NULL;
    memset(&c, 0, sizeof(c));
    c.diag = diag;
    c.diag_start = diag->n;
    c.file = path;
    abs = path_abs(path);
    if (!abs) {
        int e = errno;
        lanes__err_at(&c, 0, 0, "cannot open lanes file: %s", strerror_r(e, ebuf, sizeof(ebuf)));
        return -1;
    }
    if (stat(abs, &st) < 0 || !S_ISREG(st.st_mode)) {
        lanes__err_at(&c, 0, 0, "cannot read lanes file: not a regular file");
        free(abs);
        return -1;
    }
    if (st.st_size > YTREE_MAX_BYTES) {
        lanes__err_at(&c, 0, 0, "lanes file too large (%lld bytes, the limit is %d)",
                      (long long)st.st_size, YTREE_MAX_BYTES);
        free(abs);
        return -1;
    }
    r = file_read_all(abs, &text, &len);
    if (r < 0) {
        lanes__err_at(&c, 0, 0, "cannot read lanes file: %s", strerror_r(-r, ebuf, sizeof(ebuf)));
        free(abs);
        return -1;
    }
    dir = path_dirname(abs);
    rc = parse_text(text, len, path, abs, dir, out, diag);
    free(dir);
    free(text);
    free(abs);
    return rc;
}
