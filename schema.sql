-- exaq state database (SQLite, WAL). exaqd owns it: one writer, on its store thread.
-- The schema version lives in PRAGMA user_version. exaqd creates this schema in an empty
-- database and refuses a database whose version it does not know.
-- Times are seconds since the epoch (REAL). Lanes derive their state from their stages;
-- state lives per stage attempt.

PRAGMA user_version = 1;

-- One row per submitted sweep.
CREATE TABLE sweeps (
    id         TEXT PRIMARY KEY,            -- name-<8 hex>
    seq        INTEGER NOT NULL UNIQUE,     -- submission order
    name       TEXT NOT NULL,
    yaml_path  TEXT NOT NULL,               -- as submitted (a copy lives in sweeps/<id>/)
    base_model TEXT NOT NULL,
    base_key   TEXT NOT NULL,               -- content hash of the base model dir
    base_size  INTEGER NOT NULL,            -- bytes of the base model dir
    priority   INTEGER NOT NULL DEFAULT 0,
    settings   TEXT NOT NULL,               -- JSON: score, package, hooks
    created    REAL NOT NULL,
    ended      REAL                         -- set when every lane has ended
);

-- Lanes of a sweep, the implicit baseline included (baseline = 1).
CREATE TABLE lanes (
    sweep      TEXT NOT NULL REFERENCES sweeps(id),
    id         TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    grp        TEXT,
    baseline   INTEGER NOT NULL DEFAULT 0,
    cancelled  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep, id)
);

-- Content-addressed stages: identical keys across lanes and sweeps share one row.
CREATE TABLE stages (
    key            TEXT PRIMARY KEY,        -- sha256 of spec, input key, data keys, version
    kind           TEXT NOT NULL,
    spec           TEXT NOT NULL,           -- canonical parameter JSON
    dep            TEXT,                    -- key of the stage producing the input model
    input_dir      TEXT NOT NULL,           -- base model dir when dep is NULL
    produces_model INTEGER NOT NULL,
    -- the stage resources: one column per entry of LANES_RESOURCES (lanes/lanes.h), which
    -- exaqd's queries name from that list (tests/unit/daemon/test_store.c checks the two agree)
    retries        INTEGER NOT NULL,
    timeout_min    REAL NOT NULL,
    gpus           INTEGER NOT NULL,
    gpu_mem_gb     REAL NOT NULL,
    min_free_gb    REAL NOT NULL,
    executor       INTEGER NOT NULL DEFAULT 0, -- 0 local, 1 slurm (added to old files by store.c)
    state          TEXT NOT NULL,           -- pending | running | done | failed
    tries          INTEGER NOT NULL DEFAULT 0,  -- failed attempts counted against retries
    err_class      TEXT,
    err_msg        TEXT,
    size_bytes     INTEGER,
    created        REAL NOT NULL,
    started        REAL,
    ended          REAL
);

-- Which stages make up each lane, in order (eval = 1 for the sweep's eval list).
CREATE TABLE lane_stages (
    sweep TEXT NOT NULL,
    lane  TEXT NOT NULL,
    pos   INTEGER NOT NULL,
    name  TEXT NOT NULL,
    key   TEXT NOT NULL REFERENCES stages(key),
    eval  INTEGER NOT NULL DEFAULT 0,
    reused INTEGER NOT NULL DEFAULT 0,      -- the key existed before this sweep
    PRIMARY KEY (sweep, lane, pos)
);
CREATE INDEX lane_stages_key ON lane_stages(key);

-- Every attempt to run a stage.
CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL,
    n            INTEGER NOT NULL,          -- 1 for the first attempt of the key
    slot         INTEGER,
    worker_pid   INTEGER,
    worker_start INTEGER,                   -- /proc start time, to tell a reused pid apart
    pgid         INTEGER,                   -- process group of an exec stage's command
    state        TEXT NOT NULL,             -- running | done | failed | interrupted
    class        TEXT,                      -- error | oom | timeout | lost | cancelled
    msg          TEXT,
    started      REAL NOT NULL,
    ended        REAL,
    log          TEXT NOT NULL
);
CREATE INDEX attempts_key ON attempts(key);

-- Attempts that run as Slurm batch jobs (daemon/slurm.c). The row, with the job name, is
-- committed before sbatch runs and job_id is set right after, so a restarted exaqd finds the
-- job by id, or by name when it died in between. store.c adds this table to older files.
CREATE TABLE IF NOT EXISTS slurm_jobs (
    attempt   INTEGER PRIMARY KEY,          -- attempts.id
    name      TEXT NOT NULL UNIQUE,         -- sbatch --job-name: exaq-<attempt>-<key prefix>
    job_id    INTEGER,                      -- NULL until sbatch answered
    state     TEXT,                         -- last Slurm state seen (PENDING, RUNNING, ...)
    submitted REAL NOT NULL
);

-- Metrics of finished stages.
CREATE TABLE metrics (
    key   TEXT NOT NULL,
    name  TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (key, name)
);

-- Content hashes of data files and model dirs, reused while size/mtime/inode are unchanged.
CREATE TABLE file_hashes (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    sha256   TEXT NOT NULL
);

-- Ranking and packaging results per sweep (JSON), written when a sweep ends.
CREATE TABLE results (
    sweep TEXT PRIMARY KEY,
    rank  TEXT,
    pkg   TEXT
);

-- An append-only journal of what happened, for post-mortems.
CREATE TABLE events (
    id    INTEGER PRIMARY KEY,
    t     REAL NOT NULL,
    sweep TEXT,
    lane  TEXT,
    key   TEXT,
    what  TEXT NOT NULL
);
