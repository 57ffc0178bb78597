/*
 * store: the only module that talks to SQLite (exaq.db in the home dir).
 *
 * Before the event loop starts, exaqd opens the store, checks or creates the schema
 * (schema.sql, embedded at build time) and reads the saved state with store_query_sync().
 * After store_start(), every write is queued with store_exec() and executed in order on the
 * store's own thread, batched into transactions; the loop thread never waits for SQLite.
 * store_barrier() runs a callback on the loop thread once everything queued before it is
 * committed (submit replies only after its rows are durable).
 */
#ifndef EXAQ_STORE_H
#define EXAQ_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define STORE_SCHEMA_VERSION 1

struct store;

/* Opens (creating if needed) the database. Returns 0, or -1 with a message in err. */
int store_open(const char *path, struct store **out, char *err, size_t errlen);

/* A result row for store_query_sync(). Column i: text[i] (NULL when NULL), i64[i], f64[i], named
 * names[i]. Readers use the by-name accessors below, so a query's column order is free. */
struct store_row {
    int ncols;
    const char *const *text;
    const int64_t *i64;
    const double *f64;
    const char *const *names;
};
/* The column of r called name (as the query names it); a missing one is a bug (abort). */
int store_col(const struct store_row *r, const char *name);
/* Its value: text (NULL for SQL NULL), integer or real; store_null tells NULL apart. */
const char *store_text(const struct store_row *r, const char *name);
int64_t store_i64(const struct store_row *r, const char *name);
double store_f64(const struct store_row *r, const char *name);
bool store_null(const struct store_row *r, const char *name);

/* Runs a read query synchronously; only before store_start(). cb returns non-zero to stop.
 * Returns 0 or -1 (message in err). */
int store_query_sync(struct store *s, const char *sql,
                     int (*cb)(void *arg, const struct store_row *r), void *arg, char *err,
                     size_t errlen);

/* Starts the writer thread; completions are delivered on loop. */
void store_start(struct store *s, uv_loop_t *loop);

/*
 * Queues one statement. fmt has one letter per '?' parameter: 's' (const char *, NULL binds
 * NULL), 'i' (int64_t), 'd' (double), 'n' (NULL, no argument). Values are copied.
 */
void store_exec(struct store *s, const char *sql, const char *fmt, ...);
/* Calls cb(arg, rc) on the loop thread after everything queued so far is committed; rc is 0
 * or -1 when any of those statements failed. */
void store_barrier(struct store *s, void (*cb)(void *arg, int rc), void *arg);
/* Statements that failed since start (for status and tests). */
uint64_t store_failures(const struct store *s);

/* Flushes the queue, stops the thread and closes the database. NULL is fine. The uv handle is
 * closed with uv_close; run the loop once more afterwards if it is still running. */
void store_close(struct store *s);

extern const char exaq_schema_sql[];

#endif
