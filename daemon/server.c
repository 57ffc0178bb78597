/*
 * server: the Unix socket, client connections, framing and replies. Runs on the loop thread
 * and never blocks: reads and writes go through libuv streams.
 *
 * Every peer is checked with SO_PEERCRED: only the daemon's own uid may talk to it. A frame
 * that does not parse gets an error reply and the connection stays open; an over-long frame
 * gets an error reply and the connection is closed (its remaining bytes are unframed noise).
 * A connection is freed only after libuv closed it and no queued work still refers to it
 * (pending_async).
 *
 * One client cannot stall the others (docs/design.md, "Promises"): a connection whose queued
 * replies pass SERVER_PAUSE_BYTES is not read any more (its unframed bytes wait in inq) until
 * they drain below SERVER_RESUME_BYTES; one that stays paused for EXAQ_CLIENT_STALL_S (10 s)
 * is dropped. Partial frames of all connections together are capped at SERVER_INPUT_BUDGET,
 * and at most SERVER_MAX_CLIENTS connections (plus one per worker slot) are served at once.
 * A refused peer gets a "denied" error and its bytes are read and dropped until it closes, so
 * the error reaches it instead of a reset.
 */
#include "daemon/exaqd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

#define SERVER_PAUSE_BYTES  (1u << 20)   /* queued reply bytes that pause reading */
#define SERVER_RESUME_BYTES (256u << 10) /* ... and that resume it */
#define SERVER_DROP_BYTES   (2 * (size_t)PROTO_MAX_REPLY + SERVER_PAUSE_BYTES)
#define SERVER_INPUT_BUDGET (64u << 20) /* unframed bytes of all connections together */
#define SERVER_MAX_CLIENTS  256
#define SERVER_READ_CHUNK   65536

struct write_req {
    uv_write_t req;
    char *data;
};

static size_t input_total; /* sum of in_bytes over the connections */
static int nconns;
static double stall_s = 10;
static uv_timer_t stall_timer;

static void conn_pump(struct conn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void conn_count_input(struct conn *c)
{
    size_t now = c->inq.len + c->fr.buf.len;
    input_total = input_total - c->in_bytes + now;
    c->in_bytes = now;
}

static void conn_free(struct conn *c)
{
    input_total -= c->in_bytes;
    c->in_bytes = 0;
    proto_framer_release(&c->fr);
    buf_release(&c->inq);
    free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct daemon *d = c->d;
    if (c->prev)
        c->prev->next = c->next;
    else
        d->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    nconns--;
    if (c->pending_async == 0)
        conn_free(c);
    else
        c->d = NULL; /* the async owner frees it (see submit.c) */
    daemon_maybe_exit(d);
}

void server_conn_async_done(struct conn *c)
{
    EXAQ_ASSERT(c->pending_async > 0);
    if (--c->pending_async == 0 && !c->d)
        conn_free(c);
}

void server_close_conn(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->slot) {
        workers_on_conn_closed(c->d, c);
        c->slot = NULL;
    }
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_denied_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->handle->data;
    (void)status;
    free(req);
    server_close_conn(c);
}

/* Stops reading, lets queued replies drain, then closes. */
static void close_after_flush(struct conn *c)
{
    uv_shutdown_t *req;
    if (c->closing || c->draining)
        return;
    c->draining = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    req = xcalloc(1, sizeof(*req));
    if (uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0) {
        free(req);
        server_close_conn(c);
    }
}

static size_t queued_bytes(struct conn *c)
{
    return uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = req->handle->data;
    free(w->data);
    free(w);
    if (status < 0 && c && !c->closing) {
        log_debug("write to a client failed: %s", uv_strerror(status));
        server_close_conn(c);
        return;
    }
    if (c && c->paused && !c->closing && !c->draining && queued_bytes(c) <= SERVER_RESUME_BYTES) {
        c->paused = false;
        log_debug("client %d reads its replies again; resuming", (int)c->peer_pid);
        conn_pump(c);
        if (!c->paused && !c->closing && !c->draining)
            uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    }
}

/* Stops reading from a connection whose replies back up; drops it when they exceed any
 * reasonable amount (it cannot happen while paused unless one reply is huge). */
static void check_backlog(struct conn *c)
{
    size_t q;
    if (c->closing || c->draining)
        return;
    q = queued_bytes(c);
    if (q > SERVER_DROP_BYTES && !c->slot) {
        log_warn("dropping client pid %d: %zu reply bytes queued", (int)c->peer_pid, q);
        server_close_conn(c);
    } else if (q > SERVER_PAUSE_BYTES && !c->paused) {
        c->paused = true;
        c->paused_mono = now_mono();
        uv_read_stop((uv_stream_t *)&c->pipe);
        log_debug("client %d does not read its replies (%zu bytes queued); pausing",
                  (int)c->peer_pid, q);
    }
}

void server_send(struct conn *c, char *line)
{
    struct write_req *w;
    uv_buf_t b;
    int rc;
    if (c->closing) {
        free(line);
        return;
    }
    w = xcalloc(1, sizeof(*w));
    w->data = line;
    b = uv_buf_init(line, (unsigned)strlen(line));
    rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write);
    if (rc < 0) {
        free(line);
        free(w);
        server_close_conn(c);
        return;
    }
    check_backlog(c);
}

void server_reply(struct conn *c, struct proto_msg *m)
{
    server_send(c, proto_encode(m));
}

void server_reply_error(struct conn *c, const char *re, enum proto_err code, const char *fmt, ...)
{
    va_list ap;
    char *msg;
    va_start(ap, fmt);
    msg = xvasprintf(fmt, ap);
    va_end(ap);
    server_send(c, proto_encode_error(re, code, msg));
    free(msg);
}

static int on_line(void *arg, const char *line, size_t len)
{
    struct conn *c = arg;
    struct daemon *d = c->d;
    struct proto_msg m;
    char err[512];
    int rc;

    if (!line) {
        server_reply_error(c, NULL, PROTO_E_TOO_LONG, "frame longer than %u bytes; closing",
                           PROTO_MAX_LINE);
        close_after_flush(c);
        return 1;
    }
    rc = proto_parse(line, len, PROTO_KIND_MSG, &m, err, sizeof(err));
    if (rc) {
        if (c->slot)
            log_warn("slot %d: bad frame from worker: %s", c->slot->idx, err);
        server_reply_error(c, NULL, (enum proto_err)rc, "%s", err);
        return 0;
    }
    if (c->slot) {
        workers_on_msg(d, c, &m);
    } else if (m.type == PROTO_T_hello) {
        if (workers_hello(d, c, &m, err, sizeof(err)) < 0) {
            server_reply_error(c, "hello", PROTO_E_DENIED, "%s", err);
            close_after_flush(c);
            proto_msg_release(&m);
            return 1;
        }
    } else {
        handlers_dispatch(d, c, &m);
    }
    proto_msg_release(&m);
    return c->closing || c->draining || c->paused ? 1 : 0;
}

/* Frames what inq holds, one line at a time, until it is empty or the connection pauses. */
static void conn_pump(struct conn *c)
{
    size_t off = 0;
    while (off < c->inq.len && !c->closing && !c->draining && !c->paused) {
        const char *p = c->inq.data + off;
        const char *nl = memchr(p, '\n', c->inq.len - off);
        size_t n = nl ? (size_t)(nl - p) + 1 : c->inq.len - off;
        off += n;
        proto_framer_feed(&c->fr, p, n, on_line, c);
    }
    if (off == c->inq.len) {
        c->inq.len = 0;
    } else if (off > 0) {
        memmove(c->inq.data, c->inq.data + off, c->inq.len - off);
        c->inq.len -= off;
    }
    conn_count_input(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(SERVER_READ_CHUNK);
    b->len = SERVER_READ_CHUNK;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (n > 0 && c->denied) {
        /* dropped: a refused peer only gets its error */
    } else if (n > 0 && !c->closing && !c->draining) {
        buf_append(&c->inq, b->base, (size_t)n);
        conn_count_input(c);
        if (input_total > SERVER_INPUT_BUDGET && !c->slot) {
            log_warn("client pid %d: partial frames of all clients exceed %u MiB; closing it",
                     (int)c->peer_pid, SERVER_INPUT_BUDGET >> 20);
            server_reply_error(c, NULL, PROTO_E_TOO_LONG,
                               "exaqd holds too many unfinished requests; closing");
            close_after_flush(c);
        } else {
            conn_pump(c);
        }
    } else if (n < 0) {
        server_close_conn(c); /* EOF or error; a partial frame is dropped */
    }
    free(b->base);
}

/* Once a second: drops clients that stayed paused (not reading their replies) too long, and
 * refused peers that did not close. */
static void on_stall_timer(uv_timer_t *t)
{
    struct daemon *d = t->data;
    double now = now_mono();
    for (struct conn *c = d->conns; c; c = c->next) {
        if (c->closing || c->slot)
            continue;
        if (c->paused && now - c->paused_mono > stall_s) {
            log_warn("dropping client pid %d: it has not read its replies for %.0fs",
                     (int)c->peer_pid, now - c->paused_mono);
            server_close_conn(c);
        } else if (c->denied && now - c->paused_mono > 2) {
            server_close_conn(c);
        }
    }
}

/*
 * Refuses a peer: the error goes out first, then only our side is shut down, and whatever the
 * peer sends is read and dropped until it closes (or 2 s pass). Closing with its request still
 * unread would make the kernel reset the connection, and the peer would see a reset instead of
 * the message.
 */
static void deny(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void deny(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    char *msg;
    uv_shutdown_t *req;
    va_start(ap, fmt);
    msg = xvasprintf(fmt, ap);
    va_end(ap);
    server_send(c, proto_encode_error(NULL, PROTO_E_DENIED, msg));
    free(msg);
    c->denied = true;
    c->paused_mono = now_mono();
    req = xcalloc(1, sizeof(*req));
    if (uv_shutdown(req, (uv_stream_t *)&c->pipe, on_denied_shutdown) < 0)
        free(req);
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct daemon *d = server->data;
    struct conn *c;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    uv_os_fd_t fd;

    if (status < 0) {
        log_warn("accept failed: %s", uv_strerror(status));
        return;
    }
    c = xcalloc(1, sizeof(*c));
    c->d = d;
    nconns++;
    buf_init(&c->inq);
    proto_framer_init(&c->fr, PROTO_MAX_LINE);
    uv_pipe_init(d->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = d->conns;
    if (d->conns)
        d->conns->prev = c;
    d->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        server_close_conn(c);
        return;
    }
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        c->peer_pid = cred.pid;
        c->peer_uid = cred.uid;
        if (cred.uid != getuid() && cred.uid != 0) {
            log_warn("refused a connection from uid %d (pid %d)", (int)cred.uid, (int)cred.pid);
            deny(c,
                 "permission denied: exaqd runs as uid %d and serves only that uid and root, "
                 "not uid %d",
                 (int)getuid(), (int)cred.uid);
            return;
        }
    } else {
        deny(c, "permission denied: cannot check the peer's credentials");
        return;
    }
    if (nconns > SERVER_MAX_CLIENTS + d->nslots) {
        log_warn("refused a connection from pid %d: %d connections open", (int)c->peer_pid,
                 nconns - 1);
        deny(c, "exaqd serves %d connections already; try again later", nconns - 1);
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

int server_listen(struct daemon *d, char *err, size_t errlen)
{
    int rc;
    mode_t old;
    if (strlen(d->sock_path) >= 100) {
        snprintf(err, errlen,
                 "socket path '%s' is too long for a Unix socket; use a shorter --home",
                 d->sock_path);
        return -1;
    }
    unlink(d->sock_path); /* stale: the pid lock proved no exaqd owns it */
    uv_pipe_init(d->loop, &d->server, 0);
    d->server.data = d;
    old = umask(0177);
    rc = uv_pipe_bind(&d->server, d->sock_path);
    umask(old);
    if (rc == 0)
        rc = chmod(d->sock_path, 0600) < 0 ? uv_translate_sys_error(errno) : 0;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&d->server, 128, on_connection);
    if (rc == 0) {
        const char *e = getenv("EXAQ_CLIENT_STALL_S");
        double v;
        if (e && parse_f64(e, &v) == 0 && v > 0)
            stall_s = v;
        uv_timer_init(d->loop, &stall_timer);
        stall_timer.data = d;
        uv_timer_start(&stall_timer, on_stall_timer, 1000, 1000);
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", d->sock_path, uv_strerror(rc));
        return -1;
    }
    return 0;
}

void server_close_all(struct daemon *d)
{
    for (struct conn *c = d->conns; c; c = c->next)
        if (!c->slot)
            server_close_conn(c);
    if (!uv_is_closing((uv_handle_t *)&d->server))
        uv_close((uv_handle_t *)&d->server, NULL);
    if (uv_is_active((uv_handle_t *)&stall_timer) && !uv_is_closing((uv_handle_t *)&stall_timer))
        uv_close((uv_handle_t *)&stall_timer, NULL);
}
