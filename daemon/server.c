/*
 * server: the Unix socket, client connections, framing and replies. Runs on the loop thread
 * and never blocks: reads and writes go through libuv streams.
 *
 * Every peer is checked with SO_PEERCRED: only the daemon's own uid may talk to it. A frame
 * that does not parse gets an error reply and the connection stays open; an over-long frame
 * gets an error reply and the connection is closed (its remaining bytes are unframed noise).
 * A connection is freed only after libuv closed it and no queued work still refers to it
 * (pending_async).
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

struct write_req {
    uv_write_t req;
    char *data;
};

static void conn_free(struct conn *c)
{
    proto_framer_release(&c->fr);
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

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = req->handle->data;
    free(w->data);
    free(w);
    if (status < 0 && c && !c->closing) {
        log_debug("write to a client failed: %s", uv_strerror(status));
        server_close_conn(c);
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
    }
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
    return c->closing || c->draining ? 1 : 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(65536);
    b->len = 65536;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (n > 0 && !c->closing && !c->draining)
        proto_framer_feed(&c->fr, b->base, (size_t)n, on_line, c);
    else if (n < 0)
        server_close_conn(c); /* EOF or error; a partial frame is dropped */
    free(b->base);
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
            server_reply_error(c, NULL, PROTO_E_DENIED, "exaqd of uid %d refuses uid %d",
                               (int)getuid(), (int)cred.uid);
            close_after_flush(c);
            return;
        }
    } else {
        server_reply_error(c, NULL, PROTO_E_DENIED, "cannot check the peer's credentials");
        close_after_flush(c);
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
}
