/*
 * store: SQLite behind one writer thread. See store.h.
 *
 * DESIGN. exaqd keeps its working state in memory (sched.c) and journals every change here.
 * Writes are queued as (sql, copied parameters) and the writer thread drains the queue in
 * batches, one transaction per batch, so a burst of progress updates costs one fsync. The
 * database runs in WAL mode with synchronous=FULL: a committed batch survives kill -9 and a
 * power cut. Completions of barriers travel back to the loop through a uv_async handle.
 * Queued writes are never dropped; a failed statement is logged and counted.
 */
#include "daemon/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "common/log.h"
#include "common/util.h"

struct store_val {
    char type; /* s i d n */
    char *s;
    int64_t i;
    double d;
};

struct store_op {
    struct store_op *next;
    const char *sql; /* static string */
    struct store_val *vals;
    int nvals;
    /* barrier: */
    void (*cb)(void *arg, int rc);
    void *arg;
    int rc;
};

struct store {
    sqlite3 *db;
    int started;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct store_op *head, *tail;           /* queued, guarded by mu */
    struct store_op *done_head, *done_tail; /* finished barriers, guarded by mu */
    int stopping;
    int batch_failed; /* failures since the last barrier, writer thread only */
    uint64_t failures;
    uv_async_t *async; /* heap: freed in its close callback, after the store */
};

static int set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int user_version(sqlite3 *db, int *v)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return -1;
    rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* Additions to schema version 1 made after files were written with it: each is added when
 * missing (schema.sql has them all for new files), so older homes keep working. */
static int upgrade(sqlite3 *db, char **msg)
{
    if (sqlite3_exec(db, "SELECT executor FROM stages LIMIT 0", NULL, NULL, NULL) != SQLITE_OK &&
        sqlite3_exec(db, "ALTER TABLE stages ADD COLUMN executor INTEGER NOT NULL DEFAULT 0", NULL,
                     NULL, msg) != SQLITE_OK)
        return -1;
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS slurm_jobs (attempt INTEGER PRIMARY KEY, name "
                     "TEXT NOT NULL UNIQUE, job_id INTEGER, state TEXT, submitted REAL NOT NULL)",
                     NULL, NULL, msg) != SQLITE_OK)
        return -1;
    return 0;
}

int store_open(const char *path, struct store **out, char *err, size_t errlen)
{
    struct store *s = xcalloc(1, sizeof(*s));
    char *msg = NULL;
    int v, rc;

    *out = NULL;
    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "cannot open database '%s': %s", path,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    if (sqlite3_exec(s->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;",
                     NULL, NULL, &msg) != SQLITE_OK) {
        set_err(err, errlen, "cannot configure database '%s': %s", path, msg ? msg : "?");
        goto fail;
    }
    if (user_version(s->db, &v) < 0) {
        set_err(err, errlen,
                "cannot read the schema version of '%s': %s (is it a SQLite database?)", path,
                sqlite3_errmsg(s->db));
        goto fail;
    }
    if (v == 0) {
        char *sql = xasprintf("BEGIN; %s COMMIT;", exaq_schema_sql);
        rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
        free(sql);
        if (rc != SQLITE_OK) {
            set_err(err, errlen, "cannot create the schema in '%s': %s", path, msg ? msg : "?");
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            goto fail;
        }
    } else if (v == STORE_SCHEMA_VERSION && upgrade(s->db, &msg) < 0) {
        set_err(err, errlen, "cannot upgrade the schema in '%s': %s", path, msg ? msg : "?");
        goto fail;
    } else if (v != STORE_SCHEMA_VERSION) {
        set_err(err, errlen,
                "database '%s' has schema version %d but this exaqd (%s) knows version %d; use a "
                "matching exaqd or another --home",
                path, v, EXAQ_VERSION, STORE_SCHEMA_VERSION);
        goto fail;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    *out = s;
    return 0;
fail:
    sqlite3_free(msg);
    if (s->db)
        sqlite3_close(s->db);
    free(s);
    return -1;
}

int store_col(const struct store_row *r, const char *name)
{
    for (int i = 0; i < r->ncols; i++)
        if (r->names[i] && !strcmp(r->names[i], name))
            return i;
    EXAQ_BUG("store: the query has no column '%s'", name);
}

const char *store_text(const struct store_row *r, const char *name)
{
    return r->text[store_col(r, name)];
}

int64_t store_i64(const struct store_row *r, const char *name)
{
    return r->i64[store_col(r, name)];
}

double store_f64(const struct store_row *r, const char *name)
{
    return r->f64[store_col(r, name)];
}

bool store_null(const struct store_row *r, const char *name)
{
    return r->text[store_col(r, name)] == NULL;
}

int store_query_sync(struct store *s, const char *sql,
                     int (*cb)(void *arg, const struct store_row *r), void *arg, char *err,
                     size_t errlen)
{
    sqlite3_stmt *st;
    int rc, n;
    EXAQ_ASSERT(!s->started);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return set_err(err, errlen, "query failed: %s", sqlite3_errmsg(s->db));
    n = sqlite3_column_count(st);
    {
        const char **text = xcalloc((size_t)n + 1, sizeof(char *));
        int64_t *i64 = xcalloc((size_t)n + 1, sizeof(int64_t));
        double *f64 = xcalloc((size_t)n + 1, sizeof(double));
        const char **names = xcalloc((size_t)n + 1, sizeof(char *));
        for (int i = 0; i < n; i++)
            names[i] = sqlite3_column_name(st, i);
        struct store_row row = { n, text, i64, f64, names };
        int stop = 0;
        while (!stop && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            for (int i = 0; i < n; i++) {
                text[i] = (const char *)sqlite3_column_text(st, i);
                i64[i] = sqlite3_column_int64(st, i);
                f64[i] = sqlite3_column_double(st, i);
            }
            stop = cb(arg, &row);
        }
        free(text);
        free(i64);
        free(f64);
        free(names);
        if (!stop && rc != SQLITE_DONE) {
            set_err(err, errlen, "query failed: %s", sqlite3_errmsg(s->db));
            sqlite3_finalize(st);
            return -1;
        }
    }
    sqlite3_finalize(st);
    return 0;
}

/* ---- writer thread ---- */

static void op_free(struct store_op *op)
{
    for (int i = 0; i < op->nvals; i++)
        free(op->vals[i].s);
    free(op->vals);
    free(op);
}

static int run_op(struct store *s, struct store_op *op)
{
    sqlite3_stmt *st;
    int rc;
    if (sqlite3_prepare_v2(s->db, op->sql, -1, &st, NULL) != SQLITE_OK) {
        log_error("store: cannot prepare '%.80s': %s", op->sql, sqlite3_errmsg(s->db));
        return -1;
    }
    for (int i = 0; i < op->nvals; i++) {
        struct store_val *v = &op->vals[i];
        switch (v->type) {
        case 's':
            if (v->s)
                sqlite3_bind_text(st, i + 1, v->s, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, i + 1);
            break;
        case 'i':
            sqlite3_bind_int64(st, i + 1, v->i);
            break;
        case 'd':
            sqlite3_bind_double(st, i + 1, v->d);
            break;
        default:
            sqlite3_bind_null(st, i + 1);
        }
    }
    do {
        rc = sqlite3_step(st);
    } while (rc == SQLITE_ROW);
    if (rc != SQLITE_DONE)
        log_error("store: statement '%.80s' failed: %s", op->sql, sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void *writer_main(void *arg)
{
    struct store *s = arg;
    for (;;) {
        struct store_op *batch;
        int stopping, failed = 0;

        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->cv, &s->mu);
        batch = s->head;
        s->head = s->tail = NULL;
        stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (!batch && stopping)
            break;

        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            log_error("store: cannot begin a transaction: %s", sqlite3_errmsg(s->db));
        /* Run statements up to each barrier; commit before completing the barrier. */
        while (batch) {
            struct store_op *op = batch;
            batch = op->next;
            if (op->cb) {
                if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
                    log_error("store: commit failed: %s", sqlite3_errmsg(s->db));
                    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                    failed = 1;
                }
                op->rc = (failed || s->batch_failed) ? -1 : 0;
                s->batch_failed = 0;
                failed = 0;
                op->next = NULL;
                pthread_mutex_lock(&s->mu);
                if (s->done_tail)
                    s->done_tail->next = op;
                else
                    s->done_head = op;
                s->done_tail = op;
                pthread_mutex_unlock(&s->mu);
                uv_async_send(s->async);
                sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
                continue;
            }
            if (run_op(s, op) < 0) {
                s->batch_failed = 1;
                __atomic_add_fetch(&s->failures, 1, __ATOMIC_RELAXED);
            }
            op_free(op);
        }
        if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            log_error("store: commit failed: %s", sqlite3_errmsg(s->db));
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            __atomic_add_fetch(&s->failures, 1, __ATOMIC_RELAXED);
            /* The next barrier may cover statements of this batch (the queue was taken while
             * a submit was still queueing its rows): it must report the loss. */
            s->batch_failed = 1;
        }
    }
    return NULL;
}

static void on_async(uv_async_t *h)
{
    struct store *s = h->data;
    struct store_op *list;
    pthread_mutex_lock(&s->mu);
    list = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        struct store_op *op = list;
        list = op->next;
        op->cb(op->arg, op->rc);
        op_free(op);
    }
}

void store_start(struct store *s, uv_loop_t *loop)
{
    EXAQ_ASSERT(!s->started);
    s->async = xcalloc(1, sizeof(*s->async));
    uv_async_init(loop, s->async, on_async);
    s->async->data = s;
    /* The store must not keep the loop alive: exaqd stops when its other handles close, and
     * store_close() then drains what is left. */
    uv_unref((uv_handle_t *)s->async);
    s->started = 1;
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0)
        EXAQ_BUG("cannot start the store thread");
}

static void enqueue(struct store *s, struct store_op *op)
{
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void store_exec(struct store *s, const char *sql, const char *fmt, ...)
{
    struct store_op *op = xcalloc(1, sizeof(*op));
    va_list ap;
    op->sql = sql;
    op->nvals = (int)strlen(fmt);
    op->vals = xcalloc((size_t)op->nvals + 1, sizeof(struct store_val));
    va_start(ap, fmt);
    for (int i = 0; i < op->nvals; i++) {
        struct store_val *v = &op->vals[i];
        v->type = fmt[i];
        switch (fmt[i]) {
        case 's': {
            const char *str = va_arg(ap, const char *);
            v->s = str ? xstrdup(str) : NULL;
            break;
        }
        case 'i':
            v->i = va_arg(ap, int64_t);
            break;
        case 'd':
            v->d = va_arg(ap, double);
            break;
        case 'n':
            break;
        default:
            EXAQ_BUG("store_exec: bad format letter '%c'", fmt[i]);
        }
    }
    va_end(ap);
    if (!s->started) {
        /* Before the loop runs (recovery at start-up) statements execute synchronously. */
        if (run_op(s, op) < 0)
            s->failures++;
        op_free(op);
        return;
    }
    enqueue(s, op);
}

void store_barrier(struct store *s, void (*cb)(void *arg, int rc), void *arg)
{
    struct store_op *op = xcalloc(1, sizeof(*op));
    op->cb = cb;
    op->arg = arg;
    EXAQ_ASSERT(s->started);
    enqueue(s, op);
}

uint64_t store_failures(const struct store *s)
{
    return __atomic_load_n(&s->failures, __ATOMIC_RELAXED);
}

static void on_async_closed(uv_handle_t *h)
{
    free(h);
}

void store_close(struct store *s)
{
    if (!s)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        /* Barriers completed during the final drain are run now. */
        on_async(s->async);
        uv_close((uv_handle_t *)s->async, on_async_closed);
    }
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
