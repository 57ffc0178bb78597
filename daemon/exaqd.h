/*
 * exaqd.h: the daemon's internal hub header: the in-memory model (sweeps, lanes, stages,
 * attempts), worker slots, client connections, and the functions each daemon file exports.
 *
 * Ownership: struct daemon owns everything. Stages are shared by every lane whose pipeline
 * reaches the same content key. All of it lives on the loop thread; only store.c and the
 * thread-pool bodies of submit.c run elsewhere, and they never touch these structs.
 */
#ifndef EXAQ_EXAQD_H
#define EXAQ_EXAQD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "common/hmap.h"
#include "common/util.h"
#include "lanes/lanes.h"
#include "proto/proto.h"
#include "proto/vocab.h"

struct daemon;
struct conn;
struct slot;
struct slurm;
struct slurm_att;

struct attempt {
    int64_t id;
    struct dstage *st;
    int n;             /* 1-based attempt number of this stage */
    struct slot *slot; /* NULL once finished */
    pid_t worker_pid;
    pid_t pgid;
    double started; /* wall clock */
    double started_mono;
    double pdone, ptotal; /* progress */
    double prog_t0_mono;
    double prog_d0; /* for the ETA */
    char *what;
    char *last_line;
    char *log_path;
    enum fail_class cancel_class; /* FAIL_NONE, or why we asked the worker to stop */
    double cancel_sent_mono;
    bool fail_stage; /* a cancelled/interrupted failure fails the stage (scancel from outside) */
    struct slurm_att *slurm; /* set when the attempt runs as a Slurm job (daemon/slurm.c) */
};

/* A finished attempt, kept for status (why did it retry?). */
struct attempt_rec {
    int64_t id;
    int n;
    bool ok;
    enum fail_class cls;
    char *msg;
    double started, ended;
};

struct lane_ref {
    struct dlane *lane;
    int pos;
};

struct dstage {
    char key[SHA256_HEX_LEN];
    char *kind;
    char *spec;    /* canonical parameter JSON */
    char *dep_key; /* producer of the input model, or NULL (base model) */
    struct dstage *dep;
    char *input_dir;
    bool produces_model;
    struct lanes_res res; /* LANES_RESOURCES */
    enum dstage_state state;
    int tries;     /* failed attempts counted against res.retries */
    int nattempts; /* attempts started, all kinds */
    enum fail_class err_class;
    char *err_msg;
    int64_t size_bytes; /* -1 unknown */
    double created, started, ended;
    struct proto_metrics metrics;
    struct attempt *att;      /* the running attempt */
    struct attempt_rec *hist; /* finished attempts, oldest first */
    int nhist;
    struct lane_ref *refs;
    int nrefs;
};

struct dlane {
    struct dsweep *sw;
    char *id;
    char *grp;
    int idx;
    bool baseline;
    bool cancelled;
    int n;
    struct dstage **st;
    char **names;
    bool *is_eval;
    bool *reused;
    enum lane_state last_state; /* for transition events */
};

struct dsweep {
    char *id;
    int64_t seq;
    char *name;
    char *yaml_path;
    char *base_model;
    char *base_key;
    int64_t base_size;
    int priority;
    char *settings; /* JSON: score, package, hooks */
    double created;
    double ended; /* 0 while running */
    int nlanes;
    struct dlane **lanes;
    bool finishing;   /* post-processing (rank, package, hooks) in flight */
    bool uncommitted; /* submitted, rows not yet committed: its lanes are not live */
};

enum slot_state {
    SLOT_DOWN = 0, /* no worker; respawn_at says when */
    SLOT_STARTING, /* spawned, waiting for hello */
    SLOT_IDLE,
    SLOT_BUSY,
    SLOT_QUARANTINED,
};

struct slot {
    int idx;
    int device; /* CUDA device index, or -1 for a CPU slot */
    enum slot_state state;
    uv_process_t *proc; /* heap; freed in its close callback */
    pid_t pid;
    int64_t pid_start;
    struct conn *conn;
    struct attempt *att;
    struct slot *reserved_by; /* this slot lends its GPU to a multi-GPU attempt */
    char *backend;
    char *gpu_name;
    double gpu_total_gb; /* device memory in GB (10^9 bytes); 0 for a CPU slot */
    double gpu_free_gb;  /* free device memory the idle worker last reported; < 0 unknown */
    int threads;
    double last_seen_mono;
    double conn_lost_mono;
    double spawned_mono;
    double respawn_at_mono;
    double backoff_s;
    int consecutive_failures;
    double quarantine_until_mono;
    bool kill_sent;
};

struct conn {
    uv_pipe_t pipe;
    struct daemon *d;
    struct proto_framer fr;
    struct slot *slot; /* set for a worker connection */
    bool closing;
    bool draining; /* replies flushing before close */
    pid_t peer_pid;
    uid_t peer_uid;
    struct conn *next, *prev;
    int pending_async; /* requests still waiting for work; the conn is kept until 0 */
    struct buf inq;    /* bytes read but not yet framed (reading paused mid-chunk) */
    size_t in_bytes;   /* inq plus the framer's partial line, counted in the input budget */
    bool paused;       /* its replies backed up: not reading until they drain */
    bool denied;       /* refused peer: its bytes are read and dropped until it closes */
    double paused_mono;
};

struct daemon {
    uv_loop_t *loop;
    char *home;
    char *sock_path;
    char *worker_bin;
    char *backend; /* auto | cpu | cuda */
    struct store *store;
    uv_pipe_t server;
    uv_timer_t tick;
    uv_signal_t sig_term, sig_int;
    uv_idle_t pump_idle;
    bool pump_queued;
    struct conn *conns;
    int nslots;
    struct slot *slots;
    bool gpu_slots;
    struct hmap stages;         /* key -> struct dstage * */
    struct hmap sweeps;         /* id -> struct dsweep * */
    struct dsweep **sweep_list; /* submission order */
    int nsweeps;
    int64_t next_seq;
    int64_t next_attempt_id;
    bool shutting_down;
    bool drain;
    double shutdown_started_mono;
    int ready_fd; /* pipe to the parent while daemonizing, else -1 */
    double hb_interval_s;
    double hb_grace_s;
    double kill_grace_s;
    int quarantine_after;
    double quarantine_s;
    double last_tick_mono;
    int pidfile_fd;
    double started_wall;
    /* Free space of the home's file system (min_free_gb), read by uv_fs_statfs off the loop. */
    uv_fs_t statfs_req;
    bool statfs_busy;
    double home_free_gb;   /* < 0: unknown or unreadable */
    double home_free_mono; /* when it was read; 0: never */
    struct http *http;     /* the dashboard (--http), or NULL */
    struct slurm *slurm;   /* stages with executor: slurm (daemon/slurm.c) */
};

/* ---- sched.c: the model and its state transitions ---- */
void sched_init(struct daemon *d);
void sched_release(struct daemon *d);
struct dstage *sched_stage_get(struct daemon *d, const char *key);
struct dsweep *sched_sweep_get(struct daemon *d, const char *id);
struct dlane *sched_lane_get(struct dsweep *sw, const char *id);
enum lane_state sched_lane_state(const struct dlane *l);
bool sched_sweep_ended(const struct dsweep *sw);
/* Whether any live (not cancelled, not failed) lane still needs the stage. */
bool sched_stage_needed(const struct dstage *st);
/* Queue a scheduling pass on the next loop iteration (coalesced). */
void sched_kick(struct daemon *d);
void sched_attempt_done(struct daemon *d, struct attempt *a, const struct proto_metrics *m,
                        int64_t size_bytes);
void sched_attempt_failed(struct daemon *d, struct attempt *a, enum fail_class c, const char *msg);
void sched_attempt_progress(struct daemon *d, struct attempt *a, double done, double total,
                            const char *what);
void sched_attempt_pgid(struct daemon *d, struct attempt *a, pid_t pgid);
int sched_cancel(struct daemon *d, struct dsweep *sw, struct dlane *only);
void sched_retry(struct daemon *d, struct dsweep *sw, struct dlane *only, bool failed_only,
                 int *nlanes, int *nstages);
/* Builds the status document (all sweeps, or one). */
char *sched_status_json(struct daemon *d, struct dsweep *only);
char *sched_logs_json(struct daemon *d, struct dlane *l, const char *stage);
/* Restores state from the database and recovers interrupted attempts (before the loop). */
int sched_load(struct daemon *d, char *err, size_t errlen);
int sched_running_count(const struct daemon *d);
void sched_event(struct daemon *d, const char *sweep, const char *lane, const char *key,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* A change of a stage's state, for sched_stage_set. */
struct stage_change {
    enum dstage_state to;
    enum fail_class cls;      /* the error that goes with it; FAIL_NONE clears err_class/msg */
    const char *msg;          /* its message */
    bool keep_error;          /* leave err_class/err_msg as they are (cls and msg ignored) */
    double t;                 /* wall time of the change; 0: now */
    const struct dlane *lane; /* names the sweep and lane in the event, or NULL */
};
/*
 * The one place a stage's state changes. It sets st->state and the error, records the time
 * (started when it starts running, ended when it is done or failed), writes every state column
 * of the stage's row (state, tries, err_class, err_msg, size_bytes, started, ended) from st and
 * emits the event fmt. Callers set st->tries and st->size_bytes before.
 */
void sched_stage_set(struct daemon *d, struct dstage *st, const struct stage_change *c,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Adds a lane-stage reference (used by submit and load). */
void sched_lane_add_stage(struct dlane *l, struct dstage *st, const char *name, bool is_eval,
                          bool reused);
void sched_stage_add(struct daemon *d, struct dstage *st);
void sched_sweep_add(struct daemon *d, struct dsweep *sw);
void sched_check_sweeps(struct daemon *d);
/* Takes a sweep whose rows could not be committed out of the model and frees it; its stages
 * stay (unreferenced ones are never dispatched). */
void sched_sweep_discard(struct daemon *d, struct dsweep *sw);
/* Lane metrics: union of its stages' metrics; size: its final model's bytes. */
int64_t sched_lane_size(const struct dlane *l);

/* ---- workers.c: slots and worker processes ---- */
int workers_init(struct daemon *d, int nslots, char *err, size_t errlen);
void workers_tick(struct daemon *d);
bool workers_dispatch(struct daemon *d, struct slot *s, struct dstage *st, struct slot **extra,
                      int nextra);
void workers_cancel_attempt(struct daemon *d, struct attempt *a, enum fail_class why);
/* The job message for attempt a of its stage (devs: CUDA_VISIBLE_DEVICES or ""); the lane it
 * runs for goes to *lane. Release m with proto_msg_release. */
void workers_job_msg(struct daemon *d, struct attempt *a, const char *devs, struct proto_msg *m,
                     struct dlane **lane);
void workers_on_conn_closed(struct daemon *d, struct conn *c);
void workers_on_msg(struct daemon *d, struct conn *c, struct proto_msg *m);
int workers_hello(struct daemon *d, struct conn *c, struct proto_msg *m, char *err, size_t errlen);
void workers_shutdown(struct daemon *d);
bool workers_all_exited(const struct daemon *d);
/* Number of CUDA devices (0 without a driver); when mem_gb is not NULL, mem_gb[i] gets the total
 * memory of device i in GB (10^9 bytes), for i < max. */
int workers_detect_gpus(double *mem_gb, int max);
/* The most GPU memory (GB) any slot has; 0 when exaqd has CPU slots only. */
double workers_max_gpu_gb(const struct daemon *d);
/* Why a stage asking want_gb of GPU memory can never run when the largest slot has max_gb (new
 * string); pure, so submit's worker threads use it too. */
char *sched_gpu_mem_refusal(double want_gb, double max_gb);
int64_t proc_start_time(pid_t pid);

/* ---- server.c: socket and connections ---- */
int server_listen(struct daemon *d, char *err, size_t errlen);
void server_send(struct conn *c, char *line_take); /* takes ownership of the line */
void server_reply(struct conn *c, struct proto_msg *m);
void server_reply_error(struct conn *c, const char *re, enum proto_err code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void server_close_conn(struct conn *c);
/* Ends one piece of queued work that refers to c (see pending_async); may free c. */
void server_conn_async_done(struct conn *c);
void server_close_all(struct daemon *d);

/* ---- handlers.c: exaqctl requests ---- */
void handlers_dispatch(struct daemon *d, struct conn *c, struct proto_msg *m);

/* ---- submit.c: lanes file -> sweep (parsing and hashing on the thread pool) ---- */
void submit_start(struct daemon *d, struct conn *c, const struct pm_submit *req);
int submit_init(struct daemon *d, char *err, size_t errlen); /* loads the file-hash cache */
void submit_release(void);

/* ---- finish.c: what happens when a sweep ends (rank, report, package, hooks) ---- */
void finish_sweep(struct daemon *d, struct dsweep *sw);
void finish_rank(struct daemon *d, struct conn *c, struct dsweep *sw);
void finish_package(struct daemon *d, struct conn *c, struct dsweep *sw, int top, const char *out);
void finish_gc(struct daemon *d, struct conn *c, struct dsweep *sw, const char *keep);
/* After sched_load, before store_start: loads the results table; a sweep that ended without a
 * results row is finished again once the loop runs. */
void finish_resume(struct daemon *d);

/* ---- main.c ---- */
void daemon_begin_shutdown(struct daemon *d, bool drain);
void daemon_maybe_exit(struct daemon *d);

#endif
