/*
 * store: creates the schema in an empty database, refuses an unknown schema version, runs
 * queued writes in order on its thread, completes barriers only after commit, and everything
 * written is there after a reopen.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/store.h"
#include "lanes/lanes.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/exaq-store.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(dir);
    return 0;
}

static int count_cb(void *arg, const struct store_row *r)
{
    *(int64_t *)arg = r->i64[0];
    return 0;
}

static int64_t count(struct store *s, const char *sql)
{
    int64_t n = -1;
    char err[256];
    assert_int_equal(store_query_sync(s, sql, count_cb, &n, err, sizeof(err)), 0);
    return n;
}

struct barrier {
    int calls;
    int rc;
    uv_loop_t *loop;
};

static void on_barrier(void *arg, int rc)
{
    struct barrier *b = arg;
    b->calls++;
    b->rc = rc;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* The store's async handle does not keep a loop alive (by design), so a timer does. */
static void run_until(uv_loop_t *loop, const int *flag)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_tick, 10, 10);
    while (*flag == 0)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void test_schema_and_writes(void **state)
{
    char *path = xasprintf("%s/a.db", dir), err[512];
    struct store *s;
    uv_loop_t loop;
    struct barrier b = { 0, 99, &loop };
    (void)state;

    assert_int_equal(store_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(count(s, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM sqlite_master WHERE name='stages'"), 1);
    /* Before start: synchronous. */
    store_exec(s, "INSERT INTO metrics(key, name, value) VALUES (?, ?, ?)", "ssd", "k0", "m", 1.0);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM metrics"), 1);

    uv_loop_init(&loop);
    store_start(s, &loop);
    for (int i = 0; i < 1000; i++)
        store_exec(s, "INSERT OR REPLACE INTO metrics(key, name, value) VALUES (?, ?, ?)", "ssd",
                   "k1", i % 2 ? "odd" : "even", (double)i); /* last write per name wins */
    store_exec(s, "INSERT INTO events(t, what) VALUES (?, ?)", "ds", 1.0, "it's \"quoted\"");
    store_exec(s, "INSERT INTO nosuchtable VALUES (1)", "");
    store_barrier(s, on_barrier, &b);
    run_until(&loop, &b.calls);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.rc, -1); /* the bad statement is reported ... */
    assert_int_equal(store_failures(s), 1);
    b.calls = 0;
    store_exec(s, "INSERT INTO events(t, what) VALUES (?, ?)", "ds", 2.0, "after");
    store_barrier(s, on_barrier, &b);
    run_until(&loop, &b.calls);
    assert_int_equal(b.rc, 0); /* ... and later batches are clean again */
    store_close(s);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);

    assert_int_equal(store_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM metrics"), 3);
    assert_int_equal(count(s, "SELECT CAST(value AS INTEGER) FROM metrics WHERE name='odd'"), 999);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM events"), 2);
    store_close(s);
    free(path);
}

struct cols {
    char names[64][64];
    int n;
};

static int col_cb(void *arg, const struct store_row *r)
{
    struct cols *c = arg;
    if (c->n < 64)
        snprintf(c->names[c->n++], sizeof(c->names[0]), "%s", store_text(r, "name"));
    return 0;
}

/* The stages table has a column for every resource of LANES_RESOURCES (exaqd's queries name them
 * from that list), and rows are read by column name whatever the query's order. */
static void test_resource_columns_and_names(void **state)
{
    char *path = xasprintf("%s/r.db", dir), err[512];
    struct store *s;
    struct cols c = { .n = 0 };
    (void)state;
    assert_int_equal(store_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(store_query_sync(s, "PRAGMA table_info(stages)", col_cb, &c, err, sizeof(err)),
                     0);
    assert_true(c.n > 5);
    for (const char *const *k = lanes_res_keys; *k; k++) {
        bool found = false;
        for (int i = 0; i < c.n; i++)
            found |= !strcmp(c.names[i], *k);
        if (!found)
            fail_msg("schema.sql: the stages table has no column '%s' (LANES_RESOURCES)", *k);
    }
    /* By name: the same value whichever position the column has. */
    store_exec(s, "INSERT INTO metrics(key, name, value) VALUES (?, ?, ?)", "ssd", "k", "m", 2.5);
    c.n = 0;
    assert_int_equal(
        store_query_sync(s, "SELECT value, key AS name FROM metrics", col_cb, &c, err, sizeof(err)),
        0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.names[0], "k");
    store_close(s);
    free(path);
}

static void test_version_refused(void **state)
{
    char *path = xasprintf("%s/b.db", dir), err[512];
    struct store *s;
    sqlite3 *db;
    (void)state;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(store_open(path, &s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "schema version 99"));
    free(path);
}

static void test_not_a_database(void **state)
{
    char *path = xasprintf("%s/c.db", dir), err[512];
    struct store *s;
    (void)state;
    assert_int_equal(file_write_all(path, "this is not sqlite, just text padding it out....", 48),
                     0);
    assert_int_equal(store_open(path, &s, err, sizeof(err)), -1);
    assert_true(strlen(err) > 0);
    free(path);
}

/* A version-1 file written before the Slurm executor: opening it adds stages.executor (0 for the
 * old rows) and the slurm_jobs table, and keeps the rows. */
static void test_upgrade_adds_slurm(void **state)
{
    char *path = path_join(dir, "old.db"), err[256];
    sqlite3 *db;
    struct store *s;
    (void)state;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE stages (key TEXT PRIMARY KEY, state TEXT NOT NULL);"
                                  "INSERT INTO stages VALUES ('k1', 'done');"
                                  "PRAGMA user_version=1;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(store_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM stages WHERE executor = 0 AND key = 'k1'"), 1);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM slurm_jobs"), 0);
    store_close(s);
    /* Opening it again changes nothing. */
    assert_int_equal(store_open(path, &s, err, sizeof(err)), 0);
    assert_int_equal(count(s, "SELECT COUNT(*) FROM stages"), 1);
    store_close(s);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_and_writes),
        cmocka_unit_test(test_resource_columns_and_names),
        cmocka_unit_test(test_version_refused),
        cmocka_unit_test(test_not_a_database),
        cmocka_unit_test(test_upgrade_adds_slurm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
