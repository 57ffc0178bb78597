/*
 * Acceptance: malformed protocol input never stops the daemon serving. A real exaqd runs in a
 * temporary home; each case writes raw bytes to its socket, checks the reply (or the closed
 * connection), and then checks that a fresh client still gets a ping answer and that exaqd's
 * pid is unchanged. Cases: invalid JSON, binary garbage, an unknown op, a 10 MB line, a client
 * that disconnects mid-message, plus a wrong protocol version, unknown fields, wrong field
 * types, a worker-only op from a client, and a forged worker hello.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"

static char home[64];
static char sock_path[100];
static pid_t daemon_pid;

static int connect_daemon(void)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the daemon may close on us (10 MB line): that is allowed */
        c += w;
        n -= (size_t)w;
    }
}

/* Reads one reply line (without newline) into a new string; NULL on EOF/timeout. */
static char *read_line(int fd, double timeout_s)
{
    struct buf b;
    double t0 = now_mono();
    struct timeval tv = { 0, 200000 };
    buf_init(&b);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (now_mono() - t0 < timeout_s) {
        char c;
        ssize_t n = read(fd, &c, 1);
        if (n == 1) {
            if (c == '\n')
                return buf_steal(&b);
            buf_append(&b, &c, 1);
        } else if (n == 0) {
            break;
        } else if (errno != EAGAIN && errno != EINTR) {
            break;
        }
    }
    buf_release(&b);
    return NULL;
}

/* Sends one request on a fresh connection and returns the reply line. */
static char *request(const char *line)
{
    int fd = connect_daemon();
    char *r;
    if (fd < 0)
        return NULL;
    send_all(fd, line, strlen(line));
    r = read_line(fd, 10);
    close(fd);
    return r;
}

static void assert_alive(void)
{
    char *r = request("{\"v\":2,\"op\":\"ping\"}\n");
    assert_non_null(r);
    assert_non_null(strstr(r, "\"ok\":true"));
    assert_non_null(strstr(r, "\"re\":\"ping\""));
    free(r);
    assert_int_equal(kill(daemon_pid, 0), 0);
}

static void assert_error(const char *reply, const char *code)
{
    char want[64];
    assert_non_null(reply);
    assert_non_null(strstr(reply, "\"ok\":false"));
    snprintf(want, sizeof(want), "\"err\":\"%s\"", code);
    if (!strstr(reply, want))
        fail_msg("reply %s lacks %s", reply, want);
}

static int setup(void **state)
{
    const char *bin = getenv("EXAQ_BIN");
    char exe[512], *pidtxt = NULL;
    pid_t p;
    int status;
    (void)state;
    if (!bin) {
        printf("SKIP: EXAQ_BIN is not set (run through make test)\n");
        exit(77);
    }
    snprintf(home, sizeof(home), "/tmp/exaq-proto.XXXXXX");
    if (!mkdtemp(home))
        return -1;
    snprintf(sock_path, sizeof(sock_path), "%s/exaqd.sock", home);
    snprintf(exe, sizeof(exe), "%s/exaqd", bin);
    p = fork();
    if (p == 0) {
        execl(exe, exe, "--home", home, (char *)NULL);
        _exit(127);
    }
    waitpid(p, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    {
        char *pf = xasprintf("%s/exaqd.pid", home);
        int rc = file_read_all(pf, &pidtxt, NULL);
        free(pf);
        if (rc < 0)
            return -1;
    }
    daemon_pid = (pid_t)atoi(pidtxt);
    free(pidtxt);
    return daemon_pid > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (daemon_pid > 0) {
        char *r = request("{\"v\":2,\"op\":\"shutdown\"}\n");
        free(r);
        for (int i = 0; i < 100 && kill(daemon_pid, 0) == 0; i++)
            usleep(50000);
        kill(daemon_pid, SIGKILL);
    }
    rm_rf(home);
    return 0;
}

static void test_invalid_json(void **state)
{
    int fd = connect_daemon();
    char *r;
    (void)state;
    send_all(fd, "{\"v\":2,\"op\":\"ping\"\n", 19);
    r = read_line(fd, 5);
    assert_error(r, "parse");
    free(r);
    /* The same connection keeps working after a bad frame. */
    send_all(fd, "{\"v\":2,\"op\":\"ping\"}\n", 20);
    r = read_line(fd, 5);
    assert_non_null(r);
    assert_non_null(strstr(r, "\"ok\":true"));
    free(r);
    close(fd);
    assert_alive();
}

static void test_binary_garbage(void **state)
{
    int fd = connect_daemon();
    unsigned char junk[4096];
    uint32_t x = 12345;
    (void)state;
    for (size_t i = 0; i < sizeof(junk); i++) {
        x = x * 1664525u + 1013904223u;
        junk[i] = (unsigned char)(x >> 24);
    }
    junk[sizeof(junk) - 1] = '\n';
    send_all(fd, junk, sizeof(junk));
    /* Some reply lines, then the daemon must still answer a ping on this connection. */
    send_all(fd, "\n{\"v\":2,\"op\":\"ping\"}\n", 21);
    for (int i = 0; i < 100; i++) {
        char *r = read_line(fd, 5);
        bool pong;
        if (!r)
            break;
        pong = strstr(r, "\"re\":\"ping\"") && strstr(r, "\"ok\":true");
        free(r);
        if (pong) {
            close(fd);
            assert_alive();
            return;
        }
    }
    close(fd);
    assert_alive();
}

static void test_unknown_op(void **state)
{
    char *r = request("{\"v\":2,\"op\":\"frobnicate\"}\n");
    (void)state;
    assert_error(r, "unknown_op");
    assert_non_null(strstr(r, "frobnicate"));
    free(r);
    assert_alive();
}

static void test_huge_line(void **state)
{
    size_t n = 10u << 20;
    char *big = xmalloc(n + 1);
    int fd = connect_daemon();
    char *r;
    (void)state;
    memcpy(big, "{\"v\":2,\"op\":\"ping\",\"pad\":\"", 26);
    memset(big + 26, 'x', n - 26);
    big[n] = '\n';
    send_all(fd, big, n + 1);
    free(big);
    r = read_line(fd, 10);
    assert_error(r, "too_long");
    free(r);
    close(fd);
    assert_alive();
}

static void test_disconnect_mid_message(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++) {
        int fd = connect_daemon();
        send_all(fd, "{\"v\":2,\"op\":\"sub", 16);
        close(fd);
    }
    {
        /* A half-written submit that would take the daemon's thread pool if it were parsed. */
        int fd = connect_daemon();
        send_all(fd, "{\"v\":2,\"op\":\"submit\",\"path\":\"/nonexistent/x.y", 46);
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    assert_alive();
}

static void test_field_checks(void **state)
{
    char *r;
    (void)state;
    r = request("{\"v\":99,\"op\":\"ping\"}\n");
    assert_error(r, "version");
    free(r);
    r = request("{\"op\":\"ping\"}\n");
    assert_error(r, "parse");
    free(r);
    r = request("{\"v\":2,\"op\":\"status\",\"sweep\":7}\n");
    assert_error(r, "parse");
    assert_non_null(strstr(r, "must be a string"));
    free(r);
    r = request("{\"v\":2,\"op\":\"status\",\"bogus\":1}\n");
    assert_error(r, "parse");
    assert_non_null(strstr(r, "unknown field"));
    free(r);
    r = request("{\"v\":2,\"op\":\"cancel\"}\n");
    assert_error(r, "parse");
    assert_non_null(strstr(r, "required field 'sweep'"));
    free(r);
    r = request("[1,2,3]\n");
    assert_error(r, "parse");
    free(r);
    r = request("{\"v\":2,\"op\":\"submit\",\"path\":\"relative.yaml\"}\n");
    assert_error(r, "invalid");
    free(r);
    r = request("{\"v\":2,\"op\":\"submit\",\"path\":\"/nonexistent/lanes.yaml\"}\n");
    assert_error(r, "invalid");
    assert_non_null(strstr(r, "/nonexistent/lanes.yaml"));
    free(r);
    assert_alive();
}

static void test_worker_ops_refused(void **state)
{
    char *r;
    (void)state;
    r = request("{\"v\":2,\"op\":\"done\",\"attempt\":1,\"metrics\":{}}\n");
    assert_error(r, "denied");
    free(r);
    r = request("{\"v\":2,\"op\":\"hello\",\"slot\":0,\"pid\":1,\"backend\":\"cpu\","
                "\"version\":\"0\"}\n");
    assert_error(r, "denied");
    free(r);
    r = request("{\"v\":2,\"op\":\"hello\",\"slot\":99,\"pid\":1,\"backend\":\"cpu\","
                "\"version\":\"0\"}\n");
    assert_error(r, "denied");
    free(r);
    assert_alive();
}

static void test_many_clients(void **state)
{
    int fds[64];
    (void)state;
    for (int i = 0; i < 64; i++)
        fds[i] = connect_daemon();
    for (int i = 0; i < 64; i++)
        if (fds[i] >= 0)
            send_all(fds[i], "{\"v\":2,\"op\":\"ping\"}\n", 20);
    for (int i = 0; i < 64; i++) {
        char *r = fds[i] >= 0 ? read_line(fds[i], 10) : NULL;
        assert_non_null(r);
        assert_non_null(strstr(r, "\"ok\":true"));
        free(r);
        close(fds[i]);
    }
    assert_alive();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_binary_garbage),
        cmocka_unit_test(test_unknown_op),
        cmocka_unit_test(test_huge_line),
        cmocka_unit_test(test_disconnect_mid_message),
        cmocka_unit_test(test_field_checks),
        cmocka_unit_test(test_worker_ops_refused),
        cmocka_unit_test(test_many_clients),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, setup, teardown);
}
