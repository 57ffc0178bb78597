/*
 * http: the read-only web dashboard. See http.h and docs/http.md.
 *
 * DESIGN. libmicrohttpd runs one thread per connection (so an event stream may block in its
 * content reader without holding anyone else up), capped at HTTP_MAX_CONNS. Every page and
 * /api/ document is read from exaq.db through one read-only SQLite connection (query_only, WAL)
 * owned by this module and serialized by db_mu; the store thread keeps writing meanwhile. A
 * watcher thread polls PRAGMA data_version every 200 ms; when another connection committed,
 * it reads the new rows of the events journal and wakes the event streams (ev_cv). What the
 * database does not hold (progress, ETA, last output line of running attempts) comes from the
 * loop thread through http_tick(), which only ever try-locks ev_mu.
 *
 * Files are served only by name from a fixed list under HOME/sweeps/<id>/ (report.html,
 * report.md, rank.csv, submissions/submit_topN.zip); logs only as HOME/logs/<key>/attempt-<n>
 * .log built from database values that are checked to be hex keys and integers. Any URL with
 * ".." is 404 before routing, and opened files must resolve (realpath) inside the home.
 */
#include "daemon/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/jw.h"
#include "common/log.h"
#include "daemon/exaqd.h"
#include "daemon/rank.h"

#define HTTP_MAX_CONNS     512
#define HTTP_LOG_CHUNK     (256 * 1024) /* most log bytes one request returns */
#define HTTP_LOG_TAIL      (64 * 1024)  /* without an offset: the last this many bytes */
#define HTTP_KEEPALIVE_S   15
#define HTTP_POLL_MS       200
#define HTTP_TOKEN_MIN_LEN 16

/* The compiled-in assets (Makefile: daemon/web/ -> $(O)/gen/web_assets.c). */
struct web_asset {
    const char *name;
    const char *type;
    const unsigned char *data;
    size_t len;
};
extern const struct web_asset exaq_web_assets[];

struct http {
    struct MHD_Daemon *mhd;
    char *home;
    char *home_real; /* realpath of the home, for the inside-the-home check */
    char *token;     /* NULL: none */
    bool loopback;
    int port;
    sqlite3 *db;
    pthread_mutex_t db_mu;
    /* Event streams: guarded by ev_mu, signalled through ev_cv. */
    pthread_mutex_t ev_mu;
    pthread_cond_t ev_cv;
    bool stopping;
    uint64_t change_gen; /* bumped when the database changed */
    char *change_msg;    /* the last change message (JSON) */
    uint64_t live_gen;
    char *live_msg; /* the last live document (JSON) from the loop */
    pthread_t watcher;
    bool watcher_started;
    /* Loop thread only: the live document not yet handed over, and the last one handed. */
    char *live_pending;
    char *live_last;
};

/* ===== options ===== */

struct addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool v6, loopback;
};

static int parse_addr(const char *s, struct addr *a, char *err, size_t errlen)
{
    char host[256];
    const char *port_s;
    int64_t port;
    struct addrinfo hints, *res = NULL;
    int rc;

    memset(a, 0, sizeof(*a));
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (!e || e[1] != ':' || (size_t)(e - s - 1) >= sizeof(host))
            goto bad;
        memcpy(host, s + 1, (size_t)(e - s - 1));
        host[e - s - 1] = '\0';
        port_s = e + 2;
    } else {
        const char *c = strrchr(s, ':');
        if (!c) {
            snprintf(host, sizeof(host), "127.0.0.1");
            port_s = s;
        } else {
            if ((size_t)(c - s) >= sizeof(host))
                goto bad;
            memcpy(host, s, (size_t)(c - s));
            host[c - s] = '\0';
            port_s = c + 1;
            if (!host[0])
                snprintf(host, sizeof(host), "127.0.0.1");
        }
    }
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof(host), "127.0.0.1");
    if (parse_i64(port_s, &port) < 0 || port < 0 || port > 65535)
        goto bad;
    memset(&hints, 0, sizeof(hints));
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, port_s, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "--http: '%s' is not a numeric IPv4 or IPv6 address", host);
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    a->v6 = res->ai_family == AF_INET6;
    if (a->v6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)res->ai_addr;
        a->loopback = IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)res->ai_addr;
        a->loopback = (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
    }
    freeaddrinfo(res);
    return 0;
bad:
    snprintf(err, errlen, "--http wants ADDR:PORT, [IPV6]:PORT or PORT (0 to 65535), got '%s'", s);
    return -1;
}

/* Reads the token: the file's first line without surrounding blanks. NULL with err on error. */
static char *read_token(const char *path, char *err, size_t errlen)
{
    char buf[1024];
    size_t n;
    char *s, *e;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open --http-token-file '%s': %s", path, strerror(errno));
        return NULL;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    for (s = buf; *s == ' ' || *s == '\t'; s++)
        ;
    for (e = s + strlen(s); e > s && (e[-1] == ' ' || e[-1] == '\t'); e--)
        ;
    *e = '\0';
    if (strlen(s) < HTTP_TOKEN_MIN_LEN) {
        snprintf(err, errlen, "the token in '%s' is too short (%zu characters, at least %d)", path,
                 strlen(s), HTTP_TOKEN_MIN_LEN);
        return NULL;
    }
    return xstrdup(s);
}

int http_check_opts(const struct http_opts *o, char *err, size_t errlen)
{
    struct addr a;
    if (parse_addr(o->addr, &a, err, errlen) < 0)
        return -1;
    if (o->token_file) {
        char *t = read_token(o->token_file, err, errlen);
        if (!t)
            return -1;
        free(t);
    } else if (!a.loopback) {
        snprintf(err, errlen,
                 "--http %s is not a loopback address: give --http-token-file FILE (a secret of "
                 "at least %d characters) so that only holders of the token can read it",
                 o->addr, HTTP_TOKEN_MIN_LEN);
        return -1;
    }
    return 0;
}

/* ===== small helpers ===== */

/* Compares in time that depends only on the length of want. */
static bool token_equal(const char *got, const char *want)
{
    size_t gl = strlen(got), wl = strlen(want);
    volatile unsigned char diff = (unsigned char)(gl != wl);
    for (size_t i = 0; i < wl; i++)
        diff |= (unsigned char)(want[i] ^ (gl ? got[i % gl] : 0));
    return diff == 0;
}

/* A path segment: the characters of sweep and lane ids ([A-Za-z0-9_.=:+-], lanes.c). */
static bool safe_name(const char *s)
{
    if (!s || !*s || !strcmp(s, ".") || !strcmp(s, "..") || strlen(s) > 200)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("-_.=:+", *s)))
            return false;
    return true;
}

static bool hex_key(const char *s)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == SHA256_HEX_LEN - 1;
}

/* ===== the database side (any MHD thread, under db_mu) ===== */

struct hstage {
    int pos;
    char *name, *kind, *key, *dep_state, *state, *err_class, *err_msg;
    bool eval, reused, produces_model;
    int64_t tries, retries, size_bytes, attempts;
    double started, ended;
    int64_t att_id, att_n, att_slot;
    double att_started;
    struct proto_metrics metrics;
};

struct hlane {
    char *id, *grp, *state;
    int idx;
    bool baseline, cancelled;
    struct hstage *st;
    int n;
};

struct hsweep {
    char *id, *name, *base_model, *settings, *rank, *pkg;
    int64_t priority, base_size;
    double created, ended;
    bool has_results;
    struct hlane *lanes;
    int nlanes;
};

static char *col_dup(sqlite3_stmt *q, int i)
{
    const unsigned char *t = sqlite3_column_text(q, i);
    return t ? xstrdup((const char *)t) : NULL;
}

static void hsweep_release(struct hsweep *s)
{
    for (int i = 0; i < s->nlanes; i++) {
        struct hlane *l = &s->lanes[i];
        for (int k = 0; k < l->n; k++) {
            struct hstage *st = &l->st[k];
            free(st->name);
            free(st->kind);
            free(st->key);
            free(st->dep_state);
            free(st->state);
            free(st->err_class);
            free(st->err_msg);
            proto_metrics_release(&st->metrics);
        }
        free(l->st);
        free(l->id);
        free(l->grp);
        free(l->state);
    }
    free(s->lanes);
    free(s->id);
    free(s->name);
    free(s->base_model);
    free(s->settings);
    free(s->rank);
    free(s->pkg);
    memset(s, 0, sizeof(*s));
}

static struct hlane *lane_find(struct hsweep *s, const char *id)
{
    for (int i = 0; i < s->nlanes; i++)
        if (!strcmp(s->lanes[i].id, id))
            return &s->lanes[i];
    return NULL;
}

/* The lane state (sched_lane_state) and the stage view states (stage_view_state), derived
 * from the rows the same way the daemon derives them from its model. */
static void derive_states(struct hlane *l)
{
    bool failed = false, all_done = true, running = false;
    for (int k = 0; k < l->n; k++) {
        const char *s = l->st[k].state;
        if (!strcmp(s, "failed"))
            failed = true;
        if (strcmp(s, "done"))
            all_done = false;
        if (!strcmp(s, "running"))
            running = true;
    }
    free(l->state);
    l->state = xstrdup(l->cancelled ? "cancelled"
                       : failed     ? "failed"
                       : all_done   ? "done"
                       : running    ? "running"
                                    : "queued");
    for (int k = 0; k < l->n; k++) {
        struct hstage *st = &l->st[k];
        const char *v = NULL;
        if (strcmp(st->state, "pending"))
            continue;
        if (l->cancelled)
            v = "cancelled";
        else if (failed)
            v = "skipped";
        else if (st->dep_state && strcmp(st->dep_state, "done"))
            v = "waiting";
        else
            v = "queued";
        free(st->state);
        st->state = xstrdup(v);
    }
}

static int64_t lane_size(const struct hsweep *s, const struct hlane *l)
{
    for (int k = l->n - 1; k >= 0; k--)
        if (!l->st[k].eval && l->st[k].produces_model)
            return !strcmp(l->st[k].state, "done") ? l->st[k].size_bytes : -1;
    return s->base_size;
}

/* Loads one sweep (all == false) or only its header and lane states. Returns 0, 1 when there
 * is no such sweep, -1 on a database error. Caller holds db_mu. */
static int load_sweep(struct http *h, const char *id, struct hsweep *s)
{
    sqlite3_stmt *q = NULL;
    int rc = -1;

    memset(s, 0, sizeof(*s));
    if (sqlite3_prepare_v2(h->db,
                           "SELECT id, name, base_model, base_size, priority, settings, created, "
                           "ended, (SELECT rank FROM results r WHERE r.sweep = s.id), (SELECT pkg "
                           "FROM results r WHERE r.sweep = s.id), EXISTS(SELECT 1 FROM results r "
                           "WHERE r.sweep = s.id) FROM sweeps s WHERE id = ?",
                           -1, &q, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_ROW) {
        rc = 1;
        goto out;
    }
    s->id = col_dup(q, 0);
    s->name = col_dup(q, 1);
    s->base_model = col_dup(q, 2);
    s->base_size = sqlite3_column_int64(q, 3);
    s->priority = sqlite3_column_int64(q, 4);
    s->settings = col_dup(q, 5);
    s->created = sqlite3_column_double(q, 6);
    s->ended = sqlite3_column_type(q, 7) == SQLITE_NULL ? 0 : sqlite3_column_double(q, 7);
    s->rank = col_dup(q, 8);
    s->pkg = col_dup(q, 9);
    s->has_results = sqlite3_column_int(q, 10) != 0;
    sqlite3_finalize(q);
    q = NULL;

    if (sqlite3_prepare_v2(h->db,
                           "SELECT id, grp, idx, baseline, cancelled FROM lanes WHERE sweep = ? "
                           "ORDER BY idx",
                           -1, &q, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW) {
        struct hlane *l;
        s->lanes = xrealloc(s->lanes, sizeof(*s->lanes) * (size_t)(s->nlanes + 1));
        l = &s->lanes[s->nlanes++];
        memset(l, 0, sizeof(*l));
        l->id = col_dup(q, 0);
        l->grp = col_dup(q, 1);
        l->idx = sqlite3_column_int(q, 2);
        l->baseline = sqlite3_column_int(q, 3) != 0;
        l->cancelled = sqlite3_column_int(q, 4) != 0;
    }
    sqlite3_finalize(q);
    q = NULL;

    if (sqlite3_prepare_v2(
            h->db,
            "SELECT ls.lane, ls.pos, ls.name, ls.eval, ls.reused, s.key, s.kind, s.state, "
            "s.tries, s.retries, s.err_class, s.err_msg, s.size_bytes, s.started, s.ended, "
            "s.produces_model, (SELECT d.state FROM stages d WHERE d.key = s.dep), a.id, a.n, "
            "a.slot, a.started, (SELECT count(*) FROM attempts c WHERE c.key = s.key) "
            "FROM lane_stages ls JOIN stages s ON s.key = ls.key "
            "LEFT JOIN attempts a ON a.id = (SELECT max(id) FROM attempts m WHERE m.key = s.key) "
            "WHERE ls.sweep = ? ORDER BY ls.lane, ls.pos",
            -1, &q, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW) {
        struct hlane *l = lane_find(s, (const char *)sqlite3_column_text(q, 0));
        struct hstage *st;
        if (!l)
            continue;
        l->st = xrealloc(l->st, sizeof(*l->st) * (size_t)(l->n + 1));
        st = &l->st[l->n++];
        memset(st, 0, sizeof(*st));
        st->pos = sqlite3_column_int(q, 1);
        st->name = col_dup(q, 2);
        st->eval = sqlite3_column_int(q, 3) != 0;
        st->reused = sqlite3_column_int(q, 4) != 0;
        st->key = col_dup(q, 5);
        st->kind = col_dup(q, 6);
        st->state = col_dup(q, 7);
        if (!st->state)
            st->state = xstrdup("pending");
        st->tries = sqlite3_column_int64(q, 8);
        st->retries = sqlite3_column_int64(q, 9);
        st->err_class = col_dup(q, 10);
        st->err_msg = col_dup(q, 11);
        st->size_bytes =
            sqlite3_column_type(q, 12) == SQLITE_NULL ? -1 : sqlite3_column_int64(q, 12);
        st->started = sqlite3_column_double(q, 13);
        st->ended = sqlite3_column_double(q, 14);
        st->produces_model = sqlite3_column_int(q, 15) != 0;
        st->dep_state = col_dup(q, 16);
        st->att_id = sqlite3_column_type(q, 17) == SQLITE_NULL ? 0 : sqlite3_column_int64(q, 17);
        st->att_n = sqlite3_column_int64(q, 18);
        st->att_slot = sqlite3_column_type(q, 19) == SQLITE_NULL ? -1 : sqlite3_column_int64(q, 19);
        st->att_started = sqlite3_column_double(q, 20);
        st->attempts = sqlite3_column_int64(q, 21);
    }
    sqlite3_finalize(q);
    q = NULL;

    if (sqlite3_prepare_v2(h->db,
                           "SELECT ls.lane, ls.pos, m.name, m.value FROM lane_stages ls JOIN "
                           "metrics m ON m.key = ls.key WHERE ls.sweep = ? ORDER BY ls.lane, "
                           "ls.pos, m.name",
                           -1, &q, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW) {
        struct hlane *l = lane_find(s, (const char *)sqlite3_column_text(q, 0));
        int pos = sqlite3_column_int(q, 1);
        if (!l)
            continue;
        for (int k = 0; k < l->n; k++)
            if (l->st[k].pos == pos)
                proto_metrics_add(&l->st[k].metrics, (const char *)sqlite3_column_text(q, 2),
                                  sqlite3_column_double(q, 3));
    }
    for (int i = 0; i < s->nlanes; i++)
        derive_states(&s->lanes[i]);
    rc = 0;
out:
    if (rc < 0)
        log_warn("http: reading sweep '%s': %s", id, sqlite3_errmsg(h->db));
    sqlite3_finalize(q);
    if (rc != 0)
        hsweep_release(s);
    return rc;
}

/* The live ranking: rank.c's formula over the lanes as they are now. */
static void rank_now(const struct hsweep *s, struct rank_result *r)
{
    struct rank_settings set;
    char *err = NULL;
    bool base_seen = false;

    rank_result_init(r, s->id);
    if (rank_settings_parse(s->settings, &set, &err) < 0) {
        free(err);
        rank_settings_default(&set);
    }
    for (int i = 0; i < s->nlanes; i++) {
        const struct hlane *l = &s->lanes[i];
        struct rank_lane *rl;
        int idx;
        if (l->baseline && !base_seen) {
            rl = &r->baseline;
            base_seen = true;
        } else {
            rl = rank_result_add_lane(r);
        }
        idx = rl->idx;
        rank_lane_set(rl, l->id, l->grp, l->state, NULL, lane_size(s, l));
        rl->idx = idx;
        for (int k = 0; k < l->n; k++)
            for (size_t m = 0; m < l->st[k].metrics.n; m++)
                proto_metrics_add(&rl->metrics, l->st[k].metrics.names[m],
                                  l->st[k].metrics.values[m]);
        if (strcmp(l->state, "done"))
            rank_lane_set_reason(rl, "not finished (%s)", l->state);
    }
    rank_compute(r, &set);
    rank_settings_release(&set);
}

static const char *sweep_state(const struct hsweep *s)
{
    return s->ended <= 0 ? "running" : s->has_results ? "ended" : "finishing";
}

static void write_counts(struct jw *w, const struct hsweep *s)
{
    static const char *names[] = { "queued", "running", "done", "failed", "cancelled" };
    int64_t done = 0, total = 0;
    jw_key(w, "counts");
    jw_obj_begin(w);
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        int64_t n = 0;
        for (int i = 0; i < s->nlanes; i++)
            n += !strcmp(s->lanes[i].state, names[k]);
        jw_kint(w, names[k], n);
    }
    jw_obj_end(w);
    for (int i = 0; i < s->nlanes; i++)
        for (int k = 0; k < s->lanes[i].n; k++) {
            total++;
            done += !strcmp(s->lanes[i].st[k].state, "done");
        }
    jw_key(w, "progress");
    jw_obj_begin(w);
    jw_kint(w, "stages_done", done);
    jw_kint(w, "stages_total", total);
    jw_obj_end(w);
}

static void write_best(struct jw *w, const struct rank_result *r)
{
    jw_key(w, "best");
    if (r->nlanes > 0 && r->lanes[0].ranked) {
        jw_obj_begin(w);
        jw_kstr(w, "lane", r->lanes[0].id);
        jw_knum(w, "score", r->lanes[0].score);
        jw_obj_end(w);
    } else {
        jw_null(w);
    }
}

static void write_sweep_head(struct jw *w, const struct hsweep *s, const struct rank_result *r)
{
    jw_kstr(w, "id", s->id);
    jw_kstr(w, "name", s->name);
    jw_kstr(w, "state", sweep_state(s));
    jw_kstr(w, "base_model", s->base_model);
    jw_kint(w, "priority", s->priority);
    jw_knum(w, "created", s->created);
    if (s->ended > 0)
        jw_knum(w, "ended", s->ended);
    jw_kint(w, "lanes_total", s->nlanes);
    write_counts(w, s);
    write_best(w, r);
}

/* Which of the sweep's result files exist (names relative to /sweeps/ID/). */
static void write_files(struct http *h, struct jw *w, const char *id)
{
    static const char *names[] = { "report.html", "report.md", "rank.csv" };
    char *dir = xasprintf("%s/sweeps/%s", h->home, id);
    char *sub = xasprintf("%s/submissions", dir);
    struct stat sb;
    jw_key(w, "files");
    jw_arr_begin(w);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char *p = xasprintf("%s/%s", dir, names[i]);
        if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            jw_str(w, names[i]);
        free(p);
    }
    for (int n = 1; n <= 100; n++) {
        char *p = xasprintf("%s/submit_top%d.zip", sub, n);
        if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
            char *rel = xasprintf("submissions/submit_top%d.zip", n);
            jw_str(w, rel);
            free(rel);
        }
        free(p);
    }
    jw_arr_end(w);
    free(sub);
    free(dir);
}

static char *api_sweeps(struct http *h, int *status)
{
    struct buf b;
    struct jw w;
    sqlite3_stmt *q = NULL;
    char **ids = NULL;
    int n = 0;

    buf_init(&b);
    jw_init(&w, &b);
    pthread_mutex_lock(&h->db_mu);
    if (sqlite3_prepare_v2(h->db, "SELECT id FROM sweeps ORDER BY seq DESC", -1, &q, NULL) ==
        SQLITE_OK) {
        while (sqlite3_step(q) == SQLITE_ROW) {
            ids = xrealloc(ids, sizeof(*ids) * (size_t)(n + 1));
            ids[n++] = col_dup(q, 0);
        }
    }
    sqlite3_finalize(q);
    jw_obj_begin(&w);
    jw_knum(&w, "t", now_wall());
    jw_key(&w, "sweeps");
    jw_arr_begin(&w);
    for (int i = 0; i < n; i++) {
        struct hsweep s;
        struct rank_result r;
        if (load_sweep(h, ids[i], &s) != 0)
            continue;
        rank_now(&s, &r);
        jw_obj_begin(&w);
        write_sweep_head(&w, &s, &r);
        jw_obj_end(&w);
        rank_result_release(&r);
        hsweep_release(&s);
    }
    pthread_mutex_unlock(&h->db_mu);
    jw_arr_end(&w);
    jw_obj_end(&w);
    for (int i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    *status = MHD_HTTP_OK;
    return buf_steal(&b);
}

static void write_stage(struct jw *w, const struct hstage *st)
{
    jw_obj_begin(w);
    jw_kstr(w, "name", st->name);
    jw_kstr(w, "kind", st->kind);
    jw_kstr(w, "key", st->key);
    jw_kstr(w, "state", st->state);
    jw_kbool(w, "eval", st->eval);
    jw_kbool(w, "reused", st->reused);
    jw_kint(w, "attempts", st->attempts);
    jw_kint(w, "tries", st->tries);
    jw_kint(w, "retries", st->retries);
    if (st->started > 0)
        jw_knum(w, "started", st->started);
    if (st->ended > 0 && strcmp(st->state, "running"))
        jw_knum(w, "ended", st->ended);
    if (st->att_id > 0) {
        jw_key(w, "attempt");
        jw_obj_begin(w);
        jw_kint(w, "id", st->att_id);
        jw_kint(w, "n", st->att_n);
        if (st->att_slot >= 0)
            jw_kint(w, "slot", st->att_slot);
        jw_knum(w, "started", st->att_started);
        jw_obj_end(w);
    }
    if (st->err_class) {
        jw_key(w, "error");
        jw_obj_begin(w);
        jw_kstr(w, "class", st->err_class);
        jw_kstr(w, "msg", st->err_msg);
        jw_obj_end(w);
    }
    if (st->size_bytes >= 0 && !strcmp(st->state, "done") && st->produces_model)
        jw_kint(w, "size_bytes", st->size_bytes);
    jw_key(w, "metrics");
    jw_obj_begin(w);
    for (size_t m = 0; m < st->metrics.n; m++)
        jw_knum(w, st->metrics.names[m], st->metrics.values[m]);
    jw_obj_end(w);
    jw_obj_end(w);
}

static char *api_sweep(struct http *h, const char *id, int *status)
{
    struct buf b;
    struct jw w;
    struct hsweep s;
    struct rank_result r;
    int rc;
    char *rank_json;

    pthread_mutex_lock(&h->db_mu);
    rc = load_sweep(h, id, &s);
    pthread_mutex_unlock(&h->db_mu);
    if (rc != 0) {
        *status = rc > 0 ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR;
        return rc > 0 ? xasprintf("{\"error\":\"no sweep '%s'\"}", id)
                      : xstrdup("{\"error\":\"cannot read the database\"}");
    }
    rank_now(&s, &r);
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_knum(&w, "t", now_wall());
    jw_key(&w, "sweep");
    jw_obj_begin(&w);
    write_sweep_head(&w, &s, &r);
    write_files(h, &w, s.id);
    jw_obj_end(&w);
    jw_key(&w, "lanes");
    jw_arr_begin(&w);
    for (int i = 0; i < s.nlanes; i++) {
        const struct hlane *l = &s.lanes[i];
        int64_t size = lane_size(&s, l);
        jw_obj_begin(&w);
        jw_kstr(&w, "id", l->id);
        if (l->grp)
            jw_kstr(&w, "group", l->grp);
        jw_kbool(&w, "baseline", l->baseline);
        jw_kstr(&w, "state", l->state);
        if (size >= 0)
            jw_kint(&w, "size_bytes", size);
        jw_key(&w, "stages");
        jw_arr_begin(&w);
        for (int k = 0; k < l->n; k++)
            write_stage(&w, &l->st[k]);
        jw_arr_end(&w);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    /* The ranking as the formula gives it now; "final" is the one written when the sweep
     * ended (results table), when it exists. */
    rank_json = rank_result_json(&r, NULL);
    jw_key(&w, "rank");
    jw_raw(&w, rank_json);
    free(rank_json);
    if (s.rank) {
        jw_key(&w, "final_rank");
        jw_raw(&w, s.rank);
    }
    jw_obj_end(&w);
    rank_result_release(&r);
    hsweep_release(&s);
    *status = MHD_HTTP_OK;
    return buf_steal(&b);
}

/* Reads up to max bytes of a log from offset (a negative offset: the last -offset bytes). */
static void write_log(struct http *h, struct jw *w, const char *key, int64_t att, int64_t offset)
{
    char *path = xasprintf("%s/logs/%s/attempt-%lld.log", h->home, key, (long long)att);
    char *real = path_abs(path);
    struct stat sb;
    int fd = -1;
    size_t hl = strlen(h->home_real);

    if (real && !strncmp(real, h->home_real, hl) && real[hl] == '/')
        fd = open(real, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode)) {
        int64_t size = sb.st_size, from = offset < 0 ? size + offset : offset;
        size_t want;
        char *data;
        ssize_t got;
        if (from < 0)
            from = 0;
        if (from > size)
            from = size;
        want = (size_t)(size - from > HTTP_LOG_CHUNK ? HTTP_LOG_CHUNK : size - from);
        data = xmalloc(want + 1);
        got = pread(fd, data, want, from);
        if (got < 0)
            got = 0;
        data[got] = '\0';
        jw_kint(w, "size", size);
        jw_kint(w, "offset", from);
        jw_kint(w, "next_offset", from + got);
        jw_kstr(w, "text", data);
        free(data);
    } else {
        jw_kint(w, "size", 0);
        jw_kint(w, "offset", 0);
        jw_kint(w, "next_offset", 0);
        jw_kstr(w, "text", "");
    }
    if (fd >= 0)
        close(fd);
    free(real);
    free(path);
}

static char *api_log(struct http *h, struct MHD_Connection *c, const char *id, const char *lane,
                     int *status)
{
    const char *stage = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "stage");
    const char *off_s = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "offset");
    int64_t offset = -HTTP_LOG_TAIL;
    struct hsweep s;
    struct hlane *l;
    struct buf b;
    struct jw w;
    int rc;

    if (off_s && (parse_i64(off_s, &offset) < 0 || offset < 0)) {
        *status = MHD_HTTP_BAD_REQUEST;
        return xstrdup("{\"error\":\"offset wants a byte offset (0 or more)\"}");
    }
    pthread_mutex_lock(&h->db_mu);
    rc = load_sweep(h, id, &s);
    pthread_mutex_unlock(&h->db_mu);
    if (rc != 0) {
        *status = rc > 0 ? MHD_HTTP_NOT_FOUND : MHD_HTTP_INTERNAL_SERVER_ERROR;
        return xasprintf("{\"error\":\"no sweep '%s'\"}", id);
    }
    l = lane_find(&s, lane);
    if (!l) {
        hsweep_release(&s);
        *status = MHD_HTTP_NOT_FOUND;
        return xasprintf("{\"error\":\"sweep '%s' has no lane '%s'\"}", id, lane);
    }
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "sweep", s.id);
    jw_kstr(&w, "lane", l->id);
    jw_kstr(&w, "state", l->state);
    jw_key(&w, "stages");
    jw_arr_begin(&w);
    for (int k = 0; k < l->n; k++) {
        const struct hstage *st = &l->st[k];
        if (stage && strcmp(stage, st->name))
            continue;
        jw_obj_begin(&w);
        jw_kstr(&w, "name", st->name);
        jw_kstr(&w, "state", st->state);
        if (st->att_id > 0 && hex_key(st->key)) {
            jw_kint(&w, "attempt", st->att_id);
            jw_kint(&w, "n", st->att_n);
            write_log(h, &w, st->key, st->att_id, off_s ? offset : -HTTP_LOG_TAIL);
        }
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    hsweep_release(&s);
    *status = MHD_HTTP_OK;
    return buf_steal(&b);
}

/* ===== the watcher thread: database changes -> change messages ===== */

static void *watcher_main(void *arg)
{
    struct http *h = arg;
    sqlite3_stmt *ver = NULL, *evq = NULL;
    int64_t last_ver = -1, last_ev = 0;

    pthread_mutex_lock(&h->db_mu);
    sqlite3_prepare_v2(h->db, "PRAGMA data_version", -1, &ver, NULL);
    sqlite3_prepare_v2(h->db,
                       "SELECT id, t, sweep, lane, key, what FROM events WHERE id > ? ORDER BY "
                       "id LIMIT 200",
                       -1, &evq, NULL);
    {
        sqlite3_stmt *q = NULL;
        if (sqlite3_prepare_v2(h->db, "SELECT coalesce(max(id), 0) FROM events", -1, &q, NULL) ==
                SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW)
            last_ev = sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&h->db_mu);

    for (;;) {
        struct timespec ts;
        int64_t v = -1;
        pthread_mutex_lock(&h->ev_mu);
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += HTTP_POLL_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (!h->stopping)
            pthread_cond_timedwait(&h->ev_cv, &h->ev_mu, &ts);
        if (h->stopping) {
            pthread_mutex_unlock(&h->ev_mu);
            break;
        }
        pthread_mutex_unlock(&h->ev_mu);

        pthread_mutex_lock(&h->db_mu);
        if (ver && sqlite3_step(ver) == SQLITE_ROW)
            v = sqlite3_column_int64(ver, 0);
        if (ver)
            sqlite3_reset(ver);
        if (v != last_ver && evq) {
            struct buf b;
            struct jw w;
            buf_init(&b);
            jw_init(&w, &b);
            jw_obj_begin(&w);
            jw_knum(&w, "t", now_wall());
            jw_key(&w, "events");
            jw_arr_begin(&w);
            sqlite3_bind_int64(evq, 1, last_ev);
            while (sqlite3_step(evq) == SQLITE_ROW) {
                last_ev = sqlite3_column_int64(evq, 0);
                jw_obj_begin(&w);
                jw_kint(&w, "id", last_ev);
                jw_knum(&w, "t", sqlite3_column_double(evq, 1));
                jw_kstr(&w, "sweep", (const char *)sqlite3_column_text(evq, 2));
                jw_kstr(&w, "lane", (const char *)sqlite3_column_text(evq, 3));
                jw_kstr(&w, "key", (const char *)sqlite3_column_text(evq, 4));
                jw_kstr(&w, "what", (const char *)sqlite3_column_text(evq, 5));
                jw_obj_end(&w);
            }
            sqlite3_reset(evq);
            jw_arr_end(&w);
            jw_obj_end(&w);
            pthread_mutex_unlock(&h->db_mu);
            if (last_ver >= 0) {
                pthread_mutex_lock(&h->ev_mu);
                free(h->change_msg);
                h->change_msg = buf_steal(&b);
                h->change_gen++;
                pthread_cond_broadcast(&h->ev_cv);
                pthread_mutex_unlock(&h->ev_mu);
            }
            buf_release(&b);
            last_ver = v;
        } else {
            pthread_mutex_unlock(&h->db_mu);
        }
    }
    pthread_mutex_lock(&h->db_mu);
    sqlite3_finalize(ver);
    sqlite3_finalize(evq);
    pthread_mutex_unlock(&h->db_mu);
    return NULL;
}

/* ===== the event stream (SSE) ===== */

struct stream {
    struct http *h;
    uint64_t change_seen, live_seen;
    struct buf out; /* formatted, not yet sent */
    size_t sent;
    bool hello;
};

static void stream_add(struct stream *s, const char *event, const char *data)
{
    buf_printf(&s->out, "event: %s\ndata: %s\n\n", event, data);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct stream *s = cls;
    struct http *h = s->h;
    (void)pos;

    if (s->sent >= s->out.len) {
        s->out.len = 0;
        s->sent = 0;
        if (!s->hello) {
            /* Tells the page the stream works; retry: reconnect after 1 s when it drops. */
            buf_puts(&s->out, "retry: 1000\n");
            pthread_mutex_lock(&h->ev_mu);
            s->change_seen = h->change_gen;
            s->live_seen = h->live_gen;
            if (h->live_msg)
                stream_add(s, "live", h->live_msg);
            pthread_mutex_unlock(&h->ev_mu);
            stream_add(s, "hello", "{}");
            s->hello = true;
        } else {
            struct timespec ts;
            int rc = 0;
            pthread_mutex_lock(&h->ev_mu);
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += HTTP_KEEPALIVE_S;
            while (!h->stopping && s->change_seen == h->change_gen && s->live_seen == h->live_gen &&
                   rc != ETIMEDOUT)
                rc = pthread_cond_timedwait(&h->ev_cv, &h->ev_mu, &ts);
            if (h->stopping) {
                pthread_mutex_unlock(&h->ev_mu);
                return MHD_CONTENT_READER_END_OF_STREAM;
            }
            if (s->change_seen != h->change_gen && h->change_msg) {
                stream_add(s, "change", h->change_msg);
                s->change_seen = h->change_gen;
            }
            if (s->live_seen != h->live_gen && h->live_msg) {
                stream_add(s, "live", h->live_msg);
                s->live_seen = h->live_gen;
            }
            pthread_mutex_unlock(&h->ev_mu);
            if (s->out.len == 0)
                buf_puts(&s->out, ": keepalive\n\n");
        }
    }
    {
        size_t n = s->out.len - s->sent;
        if (n > max)
            n = max;
        memcpy(dst, s->out.data + s->sent, n);
        s->sent += n;
        return (ssize_t)n;
    }
}

static void stream_free(void *cls)
{
    struct stream *s = cls;
    buf_release(&s->out);
    free(s);
}

/* ===== the loop side ===== */

void http_tick(struct http *h, struct daemon *d)
{
    struct buf b;
    struct jw w;
    char *doc;

    if (!h)
        return;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "running");
    jw_arr_begin(&w);
    for (int i = 0; i < d->nslots; i++) {
        const struct attempt *a = d->slots[i].att;
        double now = now_mono();
        if (!a || !a->st)
            continue;
        jw_obj_begin(&w);
        jw_kstr(&w, "key", a->st->key);
        jw_kint(&w, "attempt", a->id);
        jw_kint(&w, "n", a->n);
        jw_kint(&w, "slot", d->slots[i].idx);
        jw_knum(&w, "started", a->started);
        jw_knum(&w, "done", a->pdone);
        jw_knum(&w, "total", a->ptotal);
        jw_kstr(&w, "what", a->what);
        if (a->ptotal > 0 && a->pdone > a->prog_d0 && now > a->prog_t0_mono) {
            double rate = (a->pdone - a->prog_d0) / (now - a->prog_t0_mono);
            jw_knum(&w, "eta_s", (a->ptotal - a->pdone) / rate);
        }
        jw_kstr(&w, "last_line", a->last_line);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    doc = buf_steal(&b);
    /* Only what changed goes out; the elapsed time the page computes itself. */
    if (h->live_last && !strcmp(doc, h->live_last) && !h->live_pending) {
        free(doc);
        return;
    }
    free(h->live_pending);
    h->live_pending = doc;
    if (pthread_mutex_trylock(&h->ev_mu) != 0)
        return; /* busy: the next tick hands it over */
    free(h->live_msg);
    h->live_msg = xstrdup(h->live_pending);
    h->live_gen++;
    pthread_cond_broadcast(&h->ev_cv);
    pthread_mutex_unlock(&h->ev_mu);
    free(h->live_last);
    h->live_last = h->live_pending;
    h->live_pending = NULL;
}

static char *api_live(struct http *h, int *status)
{
    char *s;
    pthread_mutex_lock(&h->ev_mu);
    s = xstrdup(h->live_msg ? h->live_msg : "{\"running\":[]}");
    pthread_mutex_unlock(&h->ev_mu);
    *status = MHD_HTTP_OK;
    return s;
}

/* ===== requests ===== */

/* Set by on_request when the token came in the query: the response then sets it as a cookie,
 * so that the page's own requests (style, script, fetch, EventSource) carry it. One thread per
 * connection: the request and its response run on the same thread. */
static __thread const char *cookie_token;

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, struct MHD_Response *r)
{
    enum MHD_Result rc;
    if (cookie_token) {
        char *v = xasprintf("exaq_token=%s; Path=/; HttpOnly; SameSite=Strict", cookie_token);
        MHD_add_response_header(r, MHD_HTTP_HEADER_SET_COOKIE, v);
        free(v);
        cookie_token = NULL;
    }
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result send_text(struct MHD_Connection *c, int status, const char *type,
                                 char *body_take)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body_take), body_take, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    return queue(c, (unsigned)status, r);
}

static enum MHD_Result send_error(struct MHD_Connection *c, int status, const char *msg)
{
    return send_text(c, status, "text/plain; charset=utf-8", xasprintf("%s\n", msg));
}

static const struct web_asset *asset_get(const char *name)
{
    for (const struct web_asset *a = exaq_web_assets; a->name; a++)
        if (!strcmp(a->name, name))
            return a;
    return NULL;
}

static enum MHD_Result send_asset(struct MHD_Connection *c, const char *name)
{
    const struct web_asset *a = asset_get(name);
    struct MHD_Response *r;
    if (!a)
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
    r = MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", a->type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; style-src 'self'");
    return queue(c, MHD_HTTP_OK, r);
}

/* A result file of a sweep, by its name under HOME/sweeps/ID/. */
static enum MHD_Result send_sweep_file(struct http *h, struct MHD_Connection *c, const char *id,
                                       const char *rel)
{
    static const struct {
        const char *name, *type;
    } files[] = { { "report.html", "text/html; charset=utf-8" },
                  { "report.md", "text/markdown; charset=utf-8" },
                  { "rank.csv", "text/csv; charset=utf-8" } };
    const char *type = NULL;
    char *path, *real;
    size_t hl = strlen(h->home_real);
    int fd = -1;
    struct stat sb;
    struct MHD_Response *r;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (!strcmp(rel, files[i].name))
            type = files[i].type;
    if (!type && !strncmp(rel, "submissions/submit_top", 22)) {
        int64_t n;
        char num[16];
        const char *p = rel + 22, *e = strstr(p, ".zip");
        if (e && !e[4] && (size_t)(e - p) < sizeof(num)) {
            memcpy(num, p, (size_t)(e - p));
            num[e - p] = '\0';
            if (parse_i64(num, &n) == 0 && n > 0)
                type = "application/zip";
        }
    }
    if (!type)
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
    path = xasprintf("%s/sweeps/%s/%s", h->home, id, rel);
    real = path_abs(path);
    if (real && !strncmp(real, h->home_real, hl) && real[hl] == '/')
        fd = open(real, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    free(real);
    free(path);
    if (fd < 0)
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found (yet)");
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
    }
    r = MHD_create_response_from_fd((uint64_t)sb.st_size, fd); /* takes fd */
    if (!r) {
        close(fd);
        return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot send the file");
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    return queue(c, MHD_HTTP_OK, r);
}

static enum MHD_Result send_stream(struct http *h, struct MHD_Connection *c)
{
    struct stream *s = xcalloc(1, sizeof(*s));
    struct MHD_Response *r;
    s->h = h;
    buf_init(&s->out);
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, s, stream_free);
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    return queue(c, MHD_HTTP_OK, r);
}

static bool authorized(struct http *h, struct MHD_Connection *c)
{
    const char *q, *a;
    if (!h->token)
        return true;
    a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (a && !strncmp(a, "Bearer ", 7) && token_equal(a + 7, h->token))
        return true;
    a = MHD_lookup_connection_value(c, MHD_COOKIE_KIND, "exaq_token");
    if (a && token_equal(a, h->token))
        return true;
    q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token");
    if (q && token_equal(q, h->token)) {
        cookie_token = h->token;
        return true;
    }
    return false;
}

/* Splits url (after the leading '/') into at most n segments in buf. Returns the count, or -1
 * when there are more or one is empty. */
static int split_path(const char *url, char *buf, size_t buflen, char **seg, int n)
{
    int k = 0;
    char *p;
    if (strlen(url) >= buflen)
        return -1;
    snprintf(buf, buflen, "%s", url[0] == '/' ? url + 1 : url);
    if (!buf[0])
        return 0;
    p = buf;
    for (;;) {
        char *e = strchr(p, '/');
        if (k == n)
            return -1;
        seg[k++] = p;
        if (!e)
            break;
        *e = '\0';
        p = e + 1;
        if (!*p)
            break; /* a trailing slash */
    }
    for (int i = 0; i < k; i++)
        if (!seg[i][0])
            return -1;
    return k;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct http *h = cls;
    char buf[1024], *seg[6];
    int n, status = MHD_HTTP_OK;
    char *body = NULL;
    (void)version;
    (void)upload_data;
    (void)con_cls;

    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        if (*upload_data_size) {
            *upload_data_size = 0; /* read and dropped: nothing here takes a body */
            return MHD_YES;
        }
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "read-only: only GET and HEAD");
    }
    cookie_token = NULL;
    if (!authorized(h, c))
        return send_error(c, MHD_HTTP_UNAUTHORIZED,
                          "a token is needed: ?token=... or Authorization: Bearer ...");
    if (strstr(url, "..") || strchr(url, '\\'))
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
    n = split_path(url, buf, sizeof(buf), seg, 6);
    if (n < 0)
        return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
    for (int i = 0; i < n; i++)
        if (!safe_name(seg[i]))
            return send_error(c, MHD_HTTP_NOT_FOUND, "not found");

    /* pages: one document; app.js renders the view the path names */
    if (n == 0 || (n == 1 && !strcmp(seg[0], "sweeps")) || (n == 2 && !strcmp(seg[0], "sweeps")) ||
        (n == 5 && !strcmp(seg[0], "sweeps") && !strcmp(seg[2], "lanes") && !strcmp(seg[4], "log")))
        return send_asset(c, "index.html");
    if (n == 2 && !strcmp(seg[0], "static"))
        return send_asset(c, seg[1]);
    if (n == 3 && !strcmp(seg[0], "sweeps"))
        return send_sweep_file(h, c, seg[1], seg[2]);
    if (n == 4 && !strcmp(seg[0], "sweeps") && !strcmp(seg[2], "submissions")) {
        char rel[300];
        snprintf(rel, sizeof(rel), "submissions/%s", seg[3]);
        return send_sweep_file(h, c, seg[1], rel);
    }
    if (n >= 2 && !strcmp(seg[0], "api")) {
        if (n == 2 && !strcmp(seg[1], "events"))
            return send_stream(h, c);
        if (n == 2 && !strcmp(seg[1], "live"))
            body = api_live(h, &status);
        else if (n == 2 && !strcmp(seg[1], "sweeps"))
            body = api_sweeps(h, &status);
        else if (n == 3 && !strcmp(seg[1], "sweeps"))
            body = api_sweep(h, seg[2], &status);
        else if (n == 6 && !strcmp(seg[1], "sweeps") && !strcmp(seg[3], "lanes") &&
                 !strcmp(seg[5], "log"))
            body = api_log(h, c, seg[2], seg[4], &status);
        if (body)
            return send_text(c, status, "application/json; charset=utf-8", body);
    }
    return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    log_debug("http: %s", msg);
}

/* ===== start and stop ===== */

int http_start(const struct http_opts *o, const char *home, struct http **out, char *err,
               size_t errlen)
{
    struct http *h;
    struct addr a;
    char *db;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    const union MHD_DaemonInfo *info;

    *out = NULL;
    if (http_check_opts(o, err, errlen) < 0 || parse_addr(o->addr, &a, err, errlen) < 0)
        return -1;
    h = xcalloc(1, sizeof(*h));
    pthread_mutex_init(&h->db_mu, NULL);
    pthread_mutex_init(&h->ev_mu, NULL);
    pthread_cond_init(&h->ev_cv, NULL);
    h->home = xstrdup(home);
    h->home_real = path_abs(home);
    if (!h->home_real)
        h->home_real = xstrdup(home);
    h->loopback = a.loopback;
    if (o->token_file && !(h->token = read_token(o->token_file, err, errlen)))
        goto fail;

    db = xasprintf("%s/exaq.db", home);
    if (sqlite3_open_v2(db, &h->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "http: cannot open '%s' read-only: %s", db,
                 h->db ? sqlite3_errmsg(h->db) : "out of memory");
        free(db);
        goto fail;
    }
    free(db);
    sqlite3_busy_timeout(h->db, 2000);
    sqlite3_exec(h->db, "PRAGMA query_only = 1", NULL, NULL, NULL);

    if (a.v6)
        flags |= MHD_USE_IPv6;
    h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
                              on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&a.ss,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNS,
                              MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "http: cannot listen on %s (address in use or not local?)", o->addr);
        goto fail;
    }
    info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    if (pthread_create(&h->watcher, NULL, watcher_main, h) != 0) {
        snprintf(err, errlen, "http: cannot start the watcher thread");
        goto fail;
    }
    h->watcher_started = true;
    log_info("http: listening on %s (port %d)%s", o->addr, h->port,
             h->token ? ", token required" : "");
    *out = h;
    return 0;
fail:
    http_stop(h);
    return -1;
}

int http_port(const struct http *h)
{
    return h ? h->port : 0;
}

void http_stop(struct http *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->ev_mu);
    h->stopping = true;
    pthread_cond_broadcast(&h->ev_cv);
    pthread_mutex_unlock(&h->ev_mu);
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    if (h->watcher_started)
        pthread_join(h->watcher, NULL);
    if (h->db)
        sqlite3_close(h->db);
    pthread_mutex_destroy(&h->db_mu);
    pthread_mutex_destroy(&h->ev_mu);
    pthread_cond_destroy(&h->ev_cv);
    free(h->change_msg);
    free(h->live_msg);
    free(h->live_pending);
    free(h->live_last);
    free(h->token);
    free(h->home);
    free(h->home_real);
    free(h);
}
