/*
 * job: runs one stage attempt inside exaq-worker and reports it.
 *
 * The output goes to the attempt's scratch dir (artifacts/<key>.tmp-<attempt>/, the model in
 * its model/ subdir) and is renamed to artifacts/<key>/ only after result.json is written, so
 * a crash never leaves a half model that looks finished. If artifacts/<key>/result.json
 * already exists (a previous attempt finished just before a crash), the job adopts it instead
 * of running again. Every report goes through struct job_sink, which exaq-worker wires to the
 * daemon connection (or to stdout for `exaq-worker run`).
 */
#ifndef EXAQ_JOB_H
#define EXAQ_JOB_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct job {
    int64_t attempt;
    char *key, *kind, *spec, *input, *stage_dir, *final_dir, *log;
    char *devices, *cwd, *sweep, *lane, *stage; /* may be NULL */
    char *baseline; /* the sweep's base model dir, for the paired speed eval; may be NULL */
    bool produces_model;
    int nthreads;
    bool cuda; /* the slot has a GPU (--backend cuda): the eval stages may use it */
};

struct job_metric {
    char name[64];
    double value;
};

/* Where a job's reports go. Every callback may be NULL. Called from the job's thread. */
struct job_sink {
    void *arg;
    void (*started)(void *arg, int64_t attempt, pid_t pgid);
    void (*progress)(void *arg, int64_t attempt, double done, double total, const char *what);
    void (*log_line)(void *arg, int64_t attempt, const char *line);
    void (*metrics)(void *arg, int64_t attempt, const struct job_metric *m, int n);
    void (*done)(void *arg, int64_t attempt, const struct job_metric *m, int n, int64_t size,
                 bool reused);
    void (*failed)(void *arg, int64_t attempt, const char *cls, const char *msg);
};

/* Runs the job to completion, reporting done or failed exactly once. cancel is polled; when
 * it becomes non-zero (set it with __atomic_store_n from another thread) the stage is stopped and
 * reported as failed with class "cancelled". */
void job_run(const struct job *j, const struct job_sink *sink, int *cancel);

/* Kills the process group of the exec command currently running, if any (daemon gone). */
void job_kill_running(void);

/* Parses a metrics JSON document (an object of finite numbers). 0, or -1 with *err set to a new
 * message (the caller frees it and names the file). */
int job_parse_metrics(const char *text, struct job_metric **out, int *n, char **err);

void job_release(struct job *j);

#endif
