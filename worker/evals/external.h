/*
 * external: the evals that run another engine on the lane's model (docs/evals.md "vllm_speed"
 * and "lm_eval"): the command line each tool gets, running it as a child process group with
 * its output as log lines and cancellation, and reading the tool's result file into metrics.
 *
 * The readers are pure functions of the file's text, so the tests feed them recorded outputs
 * in the tools' real formats (tests/data/external/). Like eval.h, nothing here talks to the
 * worker or the daemon; worker/stages/stage_external.c is the stage glue. Functions return 0
 * or a negative errno-style code with a lowercase message in err (errlen bytes).
 */
#ifndef EXAQ_EXTERNAL_H
#define EXAQ_EXTERNAL_H

#include <stddef.h>

/* Metrics read from a tool's output, in file order. */
struct ext_metrics {
    char **names;
    double *values;
    int n;
};
void ext_metrics_add(struct ext_metrics *m, const char *name, double v);
void ext_metrics_release(struct ext_metrics *m);

/* Splits a command string on blanks into a NULL-terminated argv (no quoting, no shell).
 * Returns the number of words; *argv is new (free with ext_argv_free). */
int ext_split(const char *cmd, char ***argv);
void ext_argv_free(char **argv);

/* The executable argv0 names: itself when it has a '/', else the first match in PATH. NULL
 * when there is none that this process may run. New string. */
char *ext_which(const char *argv0);

/* Called with each line of the child's stdout and stderr (without the newline). */
typedef void (*ext_line_fn)(void *arg, const char *line);

/*
 * Runs argv (argv[0] a path from ext_which) in a new process group with stdin from /dev/null,
 * extra environment entries env[0..nenv-1] ("NAME=value"), in cwd when not NULL. Polls *cancel
 * (may be NULL) every 200 ms: once it is set, the group gets SIGTERM, then SIGKILL 5 s later.
 * Returns the exit status (0..255), 256 + the signal when killed by one, -ECANCELED when
 * cancelled, or a negative errno when it could not start.
 */
int ext_run(char *const *argv, char *const *env, int nenv, const char *cwd, ext_line_fn fn,
            void *arg, const int *cancel);

/*
 * Reads the --output-json file of `vllm bench latency` (vllm/benchmarks/latency.py): an object
 * with "avg_latency", "latencies" (seconds per iteration: one batch of batch_size prompts, each
 * generating output_len tokens), "percentiles" ({"10": s, "25": ..., "50", "75", "90", "99"})
 * and, in newer vLLM, "std_latency". Metrics: time_per_token = median latency / output_len,
 * latency_avg, latency_std (when present), latency_pNN for each percentile, latency_min,
 * latency_max and vllm_iters.
 */
int ext_vllm_latency_parse(const char *text, int output_len, struct ext_metrics *out, char *err,
                           size_t errlen);

/*
 * Reads an lm-evaluation-harness results file (lm_eval/loggers/evaluation_tracker.py
 * save_results_aggregated): every task of "results" and "groups" gives TASK.METRIC for each
 * numeric entry "METRIC,FILTER"; filter "none" is dropped, another filter is appended as
 * METRIC_FILTER with characters outside [a-z0-9_] made '_' (exact_match,strict-match gives
 * exact_match_strict_match); non-numeric values ("N/A" stderr, aliases) are skipped, and so are
 * names longer than 63 bytes (counted in *skipped when not NULL). An empty "results" is an error.
 */
int ext_lm_eval_parse(const char *text, struct ext_metrics *out, int *skipped, char *err,
                      size_t errlen);

/* The newest results_*.json (by name, which carries the date) under dir and its subdirs one
 * level down, where lm_eval --output_path DIR writes it (DIR/MODEL_SANITIZED/). NULL when none. */
char *ext_lm_eval_results_file(const char *dir);

#endif
