/*
 * client: exaqctl's connection to exaqd. One connection per request; the reply is one line.
 */
#include "ctl/ctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"

static int unreachable(struct ctl *c, const char *why)
{
    fprintf(stderr,
            "exaqctl: cannot reach exaqd at '%s': %s\n"
            "exaqctl: start it with: exaqd --home %s\n",
            c->sock, why, c->home);
    return CTL_EDAEMON;
}

/*
 * An error the daemon sends before it reads any request (a refused uid, too many connections)
 * answers no request, so its "re" is empty and proto_parse cannot place it. Prints its message
 * and returns the exit code, or -1 when the line is something else.
 */
static int connection_error(const char *line, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(line, len);
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(root, "re");
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(root, "ok");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "err");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(root, "msg");
    int rc = -1;
    if (cJSON_IsString(re) && !re->valuestring[0] && cJSON_IsFalse(ok) && cJSON_IsString(e) &&
        cJSON_IsString(msg)) {
        fprintf(stderr, "exaqctl: exaqd refused the request: %s\n", msg->valuestring);
        rc = !strcmp(e->valuestring, "denied") ? CTL_EDAEMON : CTL_EUSER;
    }
    cJSON_Delete(root);
    return rc;
}

int ctl_request(struct ctl *c, struct proto_msg *m, struct proto_msg *reply)
{
    struct sockaddr_un sa;
    char *line, err[512];
    struct buf in;
    int fd, rc, werr = 0;

    if (strlen(c->sock) >= sizeof(sa.sun_path))
        return unreachable(c, "socket path too long");
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return unreachable(c, strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->sock);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = errno;
        close(fd);
        return unreachable(c, errno == ENOENT || rc == ECONNREFUSED ? "exaqd is not running"
                                                                    : strerror(rc));
    }
    line = proto_encode(m);
    for (size_t off = 0, n = strlen(line); off < n;) {
        ssize_t w = write(fd, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            /* The daemon may have refused us and closed: its error is still to be read. */
            werr = errno ? errno : EPIPE;
            break;
        }
        off += (size_t)w;
    }
    free(line);
    buf_init(&in);
    for (;;) {
        char tmp[65536];
        ssize_t n = read(fd, tmp, sizeof(tmp));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        buf_append(&in, tmp, (size_t)n);
        if (memchr(tmp, '\n', (size_t)n) || in.len > PROTO_MAX_REPLY)
            break;
    }
    close(fd);
    if (in.len == 0 || !memchr(in.data, '\n', in.len)) {
        buf_release(&in);
        return unreachable(c,
                           werr ? strerror(werr) : "exaqd closed the connection without replying");
    }
    in.len = (size_t)((char *)memchr(in.data, '\n', in.len) - in.data);
    rc = connection_error(in.data, in.len);
    if (rc >= 0) {
        buf_release(&in);
        return rc;
    }
    rc = proto_parse(in.data, in.len, PROTO_KIND_REPLY, reply, err, sizeof(err));
    buf_release(&in);
    if (rc) {
        fprintf(stderr, "exaqctl: bad reply from exaqd: %s\n", err);
        return CTL_EDAEMON;
    }
    if (!reply->ok) {
        const char *msg = reply->errmsg ? reply->errmsg : "?";
        int code = !strcmp(reply->err, "shutdown") ? CTL_EDAEMON : CTL_EUSER;
        /* Multi-line messages (lanes file problems) come one problem per line. */
        for (const char *p = msg; *p;) {
            const char *nl = strchr(p, '\n');
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            fprintf(stderr, "%.*s\n", (int)l, p);
            p += l + (nl ? 1 : 0);
        }
        proto_msg_release(reply);
        return code;
    }
    return CTL_OK;
}

cJSON *ctl_status(struct ctl *c, const char *sweep, int *rc)
{
    struct proto_msg m, r;
    cJSON *doc;
    proto_msg_init(&m, PROTO_T_status);
    if (sweep)
        proto_set_str(&m.u.status.sweep, &m.u.status.has_sweep, sweep);
    *rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (*rc)
        return NULL;
    doc = cJSON_Parse(r.u.status_r.status);
    proto_msg_release(&r);
    if (!doc) {
        fprintf(stderr, "exaqctl: exaqd sent an unreadable status document\n");
        *rc = CTL_EDAEMON;
    }
    return doc;
}
