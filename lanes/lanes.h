/*
 * lanes: the lanes file (version 1) parser and validator, the contract of spec section 4.
 *
 * It turns a YAML lanes file into plain C structs: the sweep settings, the eval list and every
 * lane after matrix expansion, each stage with its canonical parameter JSON (defaults applied,
 * data paths absolute) and the same JSON with data paths replaced by "@file:<i>" for the cache
 * key. All validation happens here, at parse time, and every problem is reported with its
 * file:line:column and a hint; a file with any error yields no lanes at all. It never crashes
 * and never aborts on any input (only on running out of memory, like every x* allocation).
 * It reads the file system (stat/realpath of data paths) but writes nothing, keeps no global
 * state and is safe to call from several threads at once. The user reference is docs/lanes.md.
 */
#ifndef EXAQ_LANES_H
#define EXAQ_LANES_H

#include <stddef.h>

/* ---- diagnostics --------------------------------------------------------------------------- */

struct lanes_diag_item {
    char *file; /* display name of the lanes file */
    int line;   /* 1-based; 0 when the problem has no position (e.g. unreadable file) */
    int col;    /* 1-based; 0 when unknown */
    char *msg;  /* lowercase, no trailing period, with a hint where one helps */
};
struct lanes_diag {
    struct lanes_diag_item *items;
    size_t n;
};
void lanes_diag_init(struct lanes_diag *d);
void lanes_diag_release(struct lanes_diag *d); /* frees the items; d is left empty */
/* "FILE:LINE:COL: error: MSG" for item i ("FILE: error: MSG" without a position); new string,
 * NULL when i is out of range. */
char *lanes_diag_format(const struct lanes_diag *d, size_t i);

/* ---- parsed file --------------------------------------------------------------------------- */

/*
 * The stage resources: the one list of them. X(name, type, lo, hi, default) with type INT (an
 * int in [lo, hi]), NUM (a double >= lo; hi is INFINITY) or NUMPOS (a double > lo). From it
 * come the lanes keys, their checks and defaults (lanes/schema.c), struct lanes_res (which
 * exaqd keeps per stage too), the stages table's columns in exaqd's queries and the "res"
 * object of status --json. schema.sql has one column per entry; docs/lanes.md documents them.
 */
#define LANES_RESOURCES(X)                                                                         \
    X(retries, INT, 0, 1000, 1)              /* attempts after the first */                        \
    X(timeout_min, NUMPOS, 0, INFINITY, 240) /* minutes per attempt */                             \
    X(gpus, INT, 0, 1024, 1)                 /* GPUs the stage reserves on a GPU exaqd */          \
    X(gpu_mem_gb, NUM, 0, INFINITY, 0)       /* free GPU memory on one device, GB (10^9 bytes) */  \
    X(min_free_gb, NUM, 0, INFINITY, 0)      /* free disk in the home dir, GB (10^9 bytes) */      \
    X(executor, EXEC, 0, 1, 0)               /* 0 local, 1 slurm (LANES_EXEC_*) */

/* EXEC: a word, local or slurm, kept as an int (LANES_EXEC_*). */
#define LANES_EXEC_LOCAL                         0
#define LANES_EXEC_SLURM                         1
#define LANES_RES_CTYPE_INT                      int
#define LANES_RES_CTYPE_EXEC                     int
#define LANES_RES_CTYPE_NUM                      double
#define LANES_RES_CTYPE_NUMPOS                   double
#define LANES_RES_FIELD(name, type, lo, hi, def) LANES_RES_CTYPE_##type name;
struct lanes_res {
    LANES_RESOURCES(LANES_RES_FIELD)
};
#undef LANES_RES_FIELD
/* The resource keys, NULL-terminated, in LANES_RESOURCES order. */
extern const char *const lanes_res_keys[];
/* "local" or "slurm". */
const char *lanes_exec_name(int executor);

/* The top-level slurm: mapping (docs/slurm.md): how stages with executor: slurm are submitted. */
struct lanes_slurm {
    int present;
    char *partition, *account, *qos, *gres, *constraint; /* NULL when not given */
    double time_min;                                     /* 0: the stage's timeout_min */
    int cpus_per_task;                                   /* 0: not given */
    double mem_gb;                                       /* 0: not given */
    char **extra_args;                                   /* more sbatch arguments, as written */
    size_t nextra;
};

struct lanes_stage {
    char *kind;      /* quantize prune heal config exec ppl mcqa speed */
    char *name;      /* unique within its lane: kind, kind-2, ...; eval.kind, eval.kind-2 ... */
    char *spec_json; /* canonical parameter object: defaults applied, file paths absolute */
    char *key_json;  /* the same object, every file path replaced by "@file:<i>" */
    char **files;    /* absolute paths of the data files the stage reads, in @file order */
    size_t nfiles;
    int produces_model;   /* 1 when it outputs a model dir */
    int produces_metrics; /* 1 when it may output metrics */
    struct lanes_res res;
    int line, col; /* where the stage was written (the kind key), 1-based */
    /* Eval stages only (docs/evals.md "Named evals"): the optional `name`, NULL when not
     * written, and the metric names the stage writes as the lane sees them: "NAME." (every
     * metric NAME.*) for a named eval, else the kind's fixed names, "TASK." per lm_eval task;
     * empty when they are known only at run time (an unnamed exec eval). */
    char *eval_name;
    char **writes;
    size_t nwrites;
};

struct lanes_lane {
    char *id;      /* after matrix expansion: base id + "-field=value"... */
    char *base_id; /* the id as written (equal to id when the lane has no matrix) */
    char *group;   /* may be NULL */
    struct lanes_stage *stages;
    size_t nstages; /* pipeline, in order, >= 1 */
    int line, col;  /* where the lane was written */
};

struct lanes_score_term {
    char *metric;
    int higher_is_better;
    double weight;
};

struct lanes_file {
    char *path;       /* absolute path of the YAML (or the display name for a buffer) */
    char *dir;        /* absolute directory relative paths resolve against */
    char *sweep;      /* sweep name */
    char *base_model; /* absolute path */
    struct lanes_stage *eval;
    size_t neval; /* eval list, applied to the baseline and to every lane */
    struct lanes_score_term *perf;
    size_t nperf;                       /* score.perf, >= 1 */
    char *speed_metric;                 /* score.speed.metric, default "time_per_token" */
    double w_perf, w_speed;             /* score.weights, default 0.5/0.5 */
    int package_top;                    /* default 3 */
    double max_zip_gb, max_unzipped_gb; /* default 10, 32 */
    char *on_finish, *on_fail;          /* hook commands or NULL */
    struct lanes_slurm slurm;
    struct lanes_lane *lanes;
    size_t nlanes;        /* after matrix expansion; no baseline */
    char *canonical_json; /* the whole expanded sweep, canonical (sorted keys, compact) */
};

/*
 * Parses and validates a lanes file. Returns 0 with *out set (free with lanes_file_free), or
 * -1 with every problem found appended to diag (not just the first) and *out NULL. Relative
 * paths resolve against the file's directory. Never crashes on any input.
 */
int lanes_parse_file(const char *path, struct lanes_file **out, struct lanes_diag *diag);
/*
 * The same for a buffer of len bytes (need not be NUL-terminated). display_name names it in
 * diagnostics (NULL: "<buffer>"); base_dir is what relative paths resolve against (NULL: the
 * current directory).
 */
int lanes_parse_buf(const char *buf, size_t len, const char *display_name, const char *base_dir,
                    struct lanes_file **out, struct lanes_diag *diag);
void lanes_file_free(struct lanes_file *lf); /* NULL ok */

/* The lane with this id, or NULL. */
const struct lanes_lane *lanes_file_find_lane(const struct lanes_file *lf, const char *id);

#endif
