/*
 * slurm: stages with `executor: slurm` run as Slurm batch jobs (docs/slurm.md).
 *
 * An attempt's row and its job name (exaq-<attempt>-<key prefix>) are committed to SQLite
 * before sbatch runs, and the job id is recorded right after, so a restarted exaqd re-adopts
 * the job by id, or by name when it died in between, and never submits an attempt twice. The
 * job runs `exaq-worker run --job - --outcome FILE` on the node against the shared home; it
 * writes the attempt's output, log and metrics exactly as a local worker does, plus the
 * outcome file (the protocol done/failed message). squeue, sacct, sbatch and scancel run as
 * child processes (uv_spawn); the loop never waits for them. Loop thread only.
 */
#ifndef EXAQ_DAEMON_SLURM_H
#define EXAQ_DAEMON_SLURM_H

#include "common/jw.h"
#include "daemon/exaqd.h"
#include "daemon/store.h"

/* Before sched_load: reads EXAQ_SLURM_POLL_S and creates HOME/slurm/. 0, or -1 with err. */
int slurm_init(struct daemon *d, char *err, size_t errlen);
/* Once the loop runs (after store_start): starts polling the adopted and new jobs. */
void slurm_start(struct daemon *d);
/* Closes the poll timer (shutdown); jobs keep running and are re-adopted on the next start. */
void slurm_close(struct daemon *d);
/* Frees what is left after the loop ended (before sched_release). */
void slurm_release(struct daemon *d);
/* sched_load: a running attempt row with a slurm_jobs row (columns id, key, n, started, log,
 * slurm_name, slurm_job, slurm_state). 0 when it was adopted (its stage stays running). */
int slurm_adopt(struct daemon *d, const struct store_row *r);
/* Whether the pump has Slurm stages to look at (they need no idle slot). */
bool slurm_any_runnable(const struct daemon *d);
/* Starts an attempt of a runnable Slurm stage: records it, then submits it. */
void slurm_dispatch(struct daemon *d, struct dstage *st);
/* scancel of a Slurm attempt; why is what the attempt ends as (FAIL_CANCELLED: not needed). */
void slurm_cancel_attempt(struct daemon *d, struct attempt *a, enum fail_class why);
/* Cancels the Slurm attempts no live lane needs any more. */
void slurm_cancel_unneeded(struct daemon *d);
/* Whether artifacts/NAME (a *.tmp-<attempt> dir) belongs to an adopted Slurm attempt. */
bool slurm_owns_tmp(const struct daemon *d, const char *name);
/* The attempt's "slurm" object in status documents: job id, name, state. */
void slurm_status_json(const struct attempt *a, struct jw *w);

#endif
