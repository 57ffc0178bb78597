/*
 * rank: the scoring math of a sweep, on plain structs (no daemon state, no I/O).
 *
 * The caller (finish.c, on the loop thread) copies what ranking needs out of the model into a
 * struct rank_result: one struct rank_lane per lane with its status, metrics (the union of its
 * stages' metrics), size and final model dir, plus the baseline. rank_compute() then scores
 * every done lane with the formula of the lanes file's `score` block and sorts the lanes:
 *
 *   norm_i    = perf / base   (higher_is_better)      base / perf   (lower is better)
 *   PerfNorm  = sum_i (w_i / sum_j w_j) * norm_i      (only terms with w_i > 0)
 *   SpeedNorm = 1 - t / t_base                        (t: the speed metric)
 *             = 1 - speed_ratio                       (when the lane has a paired ratio)
 *   Score     = max(w_perf * PerfNorm + w_speed * SpeedNorm, 0)
 *
 * The paired ratio: for a speed metric P + "time_per_token" (P empty, or a named eval's
 * "NAME."), the lane's P + "speed_ratio", measured by the speed eval against the base model in
 * interleaved pairs (docs/evals.md "speed"); the baseline itself keeps SpeedNorm 0. Its spread
 * P + "speed_ratio_iqr" gives the lane's score spread w_speed * IQR; two neighbours in the
 * ranking whose scores differ by less than the larger of their spreads are a tie: every lane
 * of a run of such neighbours gets tie = the rank of the run's first lane.
 *
 * A done lane that lacks a metric the formula needs is not ranked: it gets a reason such as
 * "missing metric 'ppl'", never a silent 0. A baseline that did not finish, lacks a metric or
 * has a value that cannot be a denominator makes the whole ranking invalid (r->error).
 * Ranked lanes come first by descending score (ties: lane order), then the others in lane
 * order with rank 0 (printed as null).
 */
#ifndef EXAQ_RANK_H
#define EXAQ_RANK_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/proto.h"

/* One term of PerfNorm. */
struct rank_perf_term {
    char *metric;
    bool higher_is_better;
    double weight;
};

/* The sweep's settings (submit.c settings_json): score, package and hooks. */
struct rank_settings {
    struct rank_perf_term *perf;
    int nperf;
    char *speed_metric;
    double w_perf, w_speed;
    int top;                /* package.top */
    double max_zip_gb;      /* package.max_zip_gb (1 GB = 1e9 bytes) */
    double max_unzipped_gb; /* package.max_unzipped_gb */
    char *on_finish;        /* hook commands, NULL when not set */
    char *on_fail;
};

/*
 * Parses the settings JSON. Keys that are absent get the lanes file's defaults (perf ppl lower
 * is better weight 1, speed time_per_token, weights 0.5/0.5, top 3, 10 GB zip, 32 GB
 * unzipped). Returns 0, or -1 with *err set to a new string (s is then released and zeroed).
 */
int rank_settings_parse(const char *json, struct rank_settings *s, char **err);
/* Defaults only (what an empty settings object gives). */
void rank_settings_default(struct rank_settings *s);
void rank_settings_release(struct rank_settings *s);

struct rank_lane {
    /* Filled by the caller (rank_lane_set() copies them). */
    char *id;
    char *group;                  /* NULL when none */
    char *status;                 /* done | failed | cancelled | running | queued */
    char *model_dir;              /* final model dir, NULL when unknown */
    int64_t size_bytes;           /* bytes of the final model, -1 unknown */
    struct proto_metrics metrics; /* owned */
    int idx;                      /* lane order in the sweep */
    char *reason; /* why the lane is not ranked; the caller sets it for lanes that are not
                     done (failure message), rank_compute() for the others */
    /* Filled by rank_compute(). For r->baseline, ranked means "scored against itself". */
    bool ranked;
    int rank; /* 1-based; 0 when not ranked */
    double score;
    bool has_perf, has_speed;
    double perf_norm, speed_norm;
    bool paired;         /* speed_norm came from the paired ratio */
    double score_spread; /* w_speed * the ratio's IQR; 0 when unknown */
    int tie;             /* rank of the first lane of its tie run; 0 when not tied */
};

struct rank_result {
    char *sweep;
    struct rank_lane baseline;
    struct rank_lane *lanes;
    int nlanes;
    char *error; /* the ranking as a whole is invalid (baseline problem); NULL when fine */
};

/* Zeroes r and copies the sweep id. */
void rank_result_init(struct rank_result *r, const char *sweep);
void rank_result_release(struct rank_result *r);
/* Appends a zeroed lane (idx set to its position) and returns it; valid until the next add. */
struct rank_lane *rank_result_add_lane(struct rank_result *r);
/* Copies id, group (may be NULL), status and model_dir (may be NULL) into l. */
void rank_lane_set(struct rank_lane *l, const char *id, const char *group, const char *status,
                   const char *model_dir, int64_t size_bytes);
/* Sets l->reason (copied, replacing an earlier one). */
void rank_lane_set_reason(struct rank_lane *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The value of a metric of the lane; "size_bytes" falls back to l->size_bytes. */
bool rank_lane_metric(const struct rank_lane *l, const char *name, double *v);

/*
 * Scores every lane and sorts r->lanes (see the file comment). Sets r->error when the baseline
 * (r->baseline, whose status must be "done") or the settings make ranking impossible; then no
 * lane is ranked and done lanes get the reason "not ranked: <error>". Returns the number of
 * ranked lanes. Calling it twice recomputes from scratch.
 */
int rank_compute(struct rank_result *r, const struct rank_settings *s);

/*
 * The rank document (`exaqctl rank --json`, spec section 5) plus extra keys: "error" (when
 * the ranking is invalid), "settings" (settings_json verbatim when not NULL), per lane
 * "group", "reason", "model_dir", and for the baseline "status", "size_bytes" and, when the
 * ranking is valid, its own "score" (PerfNorm 1, SpeedNorm 0). Returns a new string.
 */
char *rank_result_json(const struct rank_result *r, const char *settings_json);

#endif
