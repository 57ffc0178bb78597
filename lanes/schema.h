/*
 * schema: the per-kind stage field tables and stage validation, plus the parse context and the
 * value checkers shared by every part of the lanes parser. Internal to lanes/.
 *
 * A stage is validated from its YAML node (a single-key mapping, the key being its kind) into
 * a struct lanes_stage: type checks, ranges, enums, cross-field rules, defaults, calibration
 * inheritance from the top level, resource overrides. Errors go to the context's diagnostics;
 * validation always continues so that every problem of a file is reported at once.
 */
#ifndef EXAQ_LANES_SCHEMA_H
#define EXAQ_LANES_SCHEMA_H

#include <stdint.h>

#include "lanes/lanes.h"
#include "lanes/jv.h"
#include "lanes/ytree.h"

#define LANES_MAX_ERRORS 200

/* A calibration block after checking (top level or inside a stage). */
struct lanes__calib {
    int present;     /* the block was written */
    int bad;         /* it had errors (already reported) */
    const char *src; /* "text", "ids" or NULL when not given */
    char *src_abs;   /* absolute path of the source file (owned) */
    int has_samples, has_seq_len;
    int64_t samples, seq_len;
};

struct lanes__ctx {
    struct lanes_diag *diag;
    size_t diag_start;     /* index of the first item this parse added */
    size_t nerr;           /* items this parse added */
    int capped;            /* LANES_MAX_ERRORS reached */
    const char *file;      /* display name for diagnostics */
    const char *dir;       /* absolute directory for relative paths */
    const char *lane_note; /* "x-a=1": appended as " (in lane 'x-a=1')", or NULL */
    struct lanes__calib top_calib;
    struct lanes_res defaults;
};

/* Records an error at a node's position (or at line/col). Identical errors are kept once. */
void lanes__err(struct lanes__ctx *c, const struct ynode *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void lanes__err_at(struct lanes__ctx *c, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* " (did you mean 'x'?)" or " (expected one of: a, b, c)"; new string. */
char *lanes__hint(const char *word, const char *const *cands);

/* Absolute form of p relative to dir: realpath when it exists, else lexically normalised. */
char *lanes__abs_path(const char *dir, const char *p);

/* Value checkers: 0 and the value, or -1 after reporting. name is the key shown in messages. */
int lanes__get_str(struct lanes__ctx *c, const struct ynode *v, const char *name, const char **out);
int lanes__get_int(struct lanes__ctx *c, const struct ynode *v, const char *name, int64_t lo,
                   int64_t hi, int64_t *out);
/* Bounds: lo/hi are inclusive unless the matching *_open flag is set. */
int lanes__get_num(struct lanes__ctx *c, const struct ynode *v, const char *name, double lo,
                   int lo_open, double hi, int hi_open, double *out);
int lanes__get_bool(struct lanes__ctx *c, const struct ynode *v, const char *name, int *out);
/* A data file: must exist and be a regular file; *abs is new. */
int lanes__get_file(struct lanes__ctx *c, const struct ynode *v, const char *name, char **abs);

/* Checks that every key of a mapping is one of keys[]; reports the others with a hint. what
 * names the block in messages ("top level", "lane", "score"). Returns the number of bad keys. */
int lanes__check_keys(struct lanes__ctx *c, const struct ynode *map, const char *const *keys,
                      const char *what);

/* Resource keys (retries, timeout_min, gpus, gpu_mem_gb, min_free_gb). */
int lanes__is_res_key(const char *name);
/* Applies a resource key's value to res; reports bad values. */
void lanes__res_apply(struct lanes__ctx *c, const char *name, const struct ynode *v,
                      struct lanes_res *res);
void lanes__res_default(struct lanes_res *res);

/* Parses a calibration block (a mapping or null) into *out. top: this is the top-level one. */
void lanes__calib_parse(struct lanes__ctx *c, const struct ynode *v, const char *name, int top,
                        struct lanes__calib *out);
void lanes__calib_release(struct lanes__calib *cal);

/*
 * Validates one stage item (a single-key mapping) into *out. in_eval: the stage is in the eval
 * list (only ppl, mcqa, mcqa_gen, qa, speed and exec; exec defaults to produces: metrics).
 * Returns 0, or -1 after reporting (out is then released). out->name is left NULL for the
 * caller to set.
 */
int lanes__stage_parse(struct lanes__ctx *c, const struct ynode *item, int in_eval,
                       struct lanes_stage *out);
void lanes__stage_release(struct lanes_stage *s);

/* The kind of a stage item when it is well formed enough to tell (borrowed), else NULL. */
const char *lanes__stage_item_kind(const struct ynode *item, const struct ynode **kind_key);

/* Is kind a stage kind this build knows (native or exec)? */
int lanes__kind_known(const char *kind);

/* ---- eval names and the metrics evals write (evalnames.c) ---------------------------------- */

#define LANES_EVAL_NAME_MAX 24
/* 1 when s is a valid eval name: [a-z0-9_]+, at most LANES_EVAL_NAME_MAX bytes. */
int lanes__eval_name_ok(const char *s);
/* Fills st->writes from its kind and eval_name (tasks: an lm_eval stage's task names). */
void lanes__eval_writes(struct lanes_stage *st, const char *const *tasks, size_t ntasks);
/* Reports every eval of ev[0..n-1] that would write a metric an earlier one writes. */
void lanes__eval_collisions(struct lanes__ctx *c, const struct lanes_stage *ev, size_t n);
/* Names of the kinds, NULL-terminated. */
extern const char *const lanes__kinds[];
/*
 * Is kind.field[.sub] something a matrix may set? Returns 1, or 0 with *why set to a new
 * string explaining what is wrong (with a hint).
 */
int lanes__matrix_field_ok(const char *kind, const char *field, const char *sub, char **why);

#endif
