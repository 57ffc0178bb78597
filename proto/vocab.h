/*
 * vocab: the words exaqd, exaqctl and exaq-worker share besides the messages of proto.def:
 * failure classes, stage and lane states (stored, and as clients see them), attempt states and
 * the rule for metric names. Each list is written once here (X-macros); the daemon stores and
 * sends these names, the worker reports failure classes by them and exaqctl reads them back.
 */
#ifndef EXAQ_PROTO_VOCAB_H
#define EXAQ_PROTO_VOCAB_H

#include <stdbool.h>

/* Failure classes of an attempt (docs/design.md "Failures"). X(enum, name, retried) */
#define VOCAB_FAIL_CLASSES(X)                                                                      \
    X(FAIL_NONE, "none", false)                                                                    \
    X(FAIL_ERROR, "error", false) /* deterministic */                                              \
    X(FAIL_OOM, "oom", true)                                                                       \
    X(FAIL_TIMEOUT, "timeout", true)                                                               \
    X(FAIL_LOST, "lost", true)                /* worker died or went silent */                     \
    X(FAIL_CANCELLED, "cancelled", false)     /* no lane needs it: back to pending, no retry */    \
    X(FAIL_INTERRUPTED, "interrupted", false) /* exaqd stopped: back to pending, no retry */

/* A stage's stored state (the stages table). */
#define VOCAB_STAGE_STATES(X)                                                                      \
    X(DSTAGE_PENDING, "pending")                                                                   \
    X(DSTAGE_RUNNING, "running")                                                                   \
    X(DSTAGE_DONE, "done")                                                                         \
    X(DSTAGE_FAILED, "failed")

/* A lane's state, derived from its stages. */
#define VOCAB_LANE_STATES(X)                                                                       \
    X(LANE_QUEUED, "queued")                                                                       \
    X(LANE_RUNNING, "running")                                                                     \
    X(LANE_DONE, "done")                                                                           \
    X(LANE_FAILED, "failed")                                                                       \
    X(LANE_CANCELLED, "cancelled")

/* A stage as a lane shows it in status documents (docs/cli.md). */
#define VOCAB_VIEW_STATES(X)                                                                       \
    X(VIEW_QUEUED, "queued")   /* runnable, waiting for a slot */                                  \
    X(VIEW_WAITING, "waiting") /* its input model is not made yet */                               \
    X(VIEW_RUNNING, "running")                                                                     \
    X(VIEW_DONE, "done")                                                                           \
    X(VIEW_FAILED, "failed")                                                                       \
    X(VIEW_SKIPPED, "skipped")     /* its lane failed elsewhere */                                 \
    X(VIEW_CANCELLED, "cancelled") /* its lane was cancelled */

/* An attempt's stored state (the attempts table). */
#define VOCAB_ATTEMPT_STATES(X)                                                                    \
    X(ATT_RUNNING, "running")                                                                      \
    X(ATT_DONE, "done")                                                                            \
    X(ATT_FAILED, "failed")                                                                        \
    X(ATT_INTERRUPTED, "interrupted")

#define VOCAB_ENUM(e, ...) e,
enum fail_class { VOCAB_FAIL_CLASSES(VOCAB_ENUM) };
enum dstage_state { VOCAB_STAGE_STATES(VOCAB_ENUM) };
enum lane_state { VOCAB_LANE_STATES(VOCAB_ENUM) };
enum view_state { VOCAB_VIEW_STATES(VOCAB_ENUM) VIEW__UNKNOWN };
enum attempt_state { VOCAB_ATTEMPT_STATES(VOCAB_ENUM) };
#undef VOCAB_ENUM

const char *fail_class_name(enum fail_class c);
/* The class named s; FAIL_ERROR for NULL or an unknown name (a worker's word is not trusted). */
enum fail_class fail_class_parse(const char *s);
/* oom, timeout and lost count against `retries`; the others do not retry or use no retry. */
bool fail_class_retried(enum fail_class c);

const char *dstage_state_name(enum dstage_state s);
/* DSTAGE_PENDING for NULL or an unknown name. */
enum dstage_state dstage_state_parse(const char *s);
const char *lane_state_name(enum lane_state s);
const char *view_state_name(enum view_state s);
/* VIEW__UNKNOWN for NULL or an unknown name. */
enum view_state view_state_parse(const char *s);
const char *attempt_state_name(enum attempt_state s);

/* Slurm's job states that end a job, and what exaqd makes of each (daemon/slurm.c, docs/slurm.md):
 * X(name, failure class, no retry used). COMPLETED and FAILED are decided by the outcome file
 * the worker wrote; the class here applies when there is none. */
#define VOCAB_SLURM_END_STATES(X)                                                                  \
    X("COMPLETED", FAIL_NONE, false)                                                               \
    X("FAILED", FAIL_ERROR, false)                                                                 \
    X("CANCELLED", FAIL_CANCELLED, false)                                                          \
    X("TIMEOUT", FAIL_TIMEOUT, false)                                                              \
    X("DEADLINE", FAIL_TIMEOUT, false)                                                             \
    X("OUT_OF_MEMORY", FAIL_OOM, false)                                                            \
    X("NODE_FAIL", FAIL_INTERRUPTED, true) /* the cluster's fault: back to pending */              \
    X("PREEMPTED", FAIL_INTERRUPTED, true)                                                         \
    X("BOOT_FAIL", FAIL_INTERRUPTED, true)

/* Whether a Slurm job state (as squeue or sacct write it: "CANCELLED by 0" too) ends the job;
 * then *cls and *no_retry_used say what the attempt becomes. PENDING, RUNNING and the other live
 * states, and NULL, return false with FAIL_NONE. */
bool vocab_slurm_state_ended(const char *state, enum fail_class *cls, bool *no_retry_used);

/* Metric names: 1 to VOCAB_METRIC_NAME_MAX bytes. */
#define VOCAB_METRIC_NAME_MAX 63
bool vocab_metric_name_ok(const char *name);
#define VOCAB_METRIC_NAME_RULE "metric names must be 1 to 63 characters"

#endif
