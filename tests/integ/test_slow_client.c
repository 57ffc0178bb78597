/*
 * Acceptance: one client cannot stall the daemon or make it hold unbounded memory. A real exaqd
 * runs in a temporary home (EXAQ_CLIENT_STALL_S=2). Cases: a client that pipelines 100,000
 * status requests and never reads its replies (another client's ping is still answered within
 * a second, exaqd's memory stays bounded, and the stalled client is dropped, so it never gets
 * all its replies); 300 connections that each send 900 KB of one unfinished frame (the daemon
 * caps what it holds and closes some of them; memory stays bounded; ping still answered).
 *
 * Usable outside `make test`: EXAQ_SLOW_ROUNDS=N repeats both cases N times (tests/torture.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "proto/proto.h"

#define STR_(x) #x
#define STR(x)  STR_(x)
#define V       "{\"v\":" STR(PROTO_VERSION)

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

/* Writes what the socket takes within timeout_s (non-blocking); returns the bytes written. */
static size_t send_for(int fd, const char *p, size_t n, double timeout_s)
{
    size_t off = 0;
    double t0 = now_mono();
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (off < n && now_mono() - t0 < timeout_s) {
        struct pollfd pf = { fd, POLLOUT, 0 };
        ssize_t w;
        if (poll(&pf, 1, 100) <= 0)
            continue;
        w = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            break;
    }
    return off;
}

/* One ping on a fresh connection; returns the seconds it took, or -1 without an answer. */
static double ping_time(void)
{
    int fd = connect_daemon();
    char buf[4096];
    size_t got = 0;
    double t0 = now_mono();
    if (fd < 0)
        return -1;
    static const char ping[] = V ",\"op\":\"ping\"}\n";
    send_for(fd, ping, sizeof(ping) - 1, 5);
    while (now_mono() - t0 < 10 && got < sizeof(buf) - 1) {
        struct pollfd pf = { fd, POLLIN, 0 };
        ssize_t n;
        if (poll(&pf, 1, 100) <= 0)
            continue;
        n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
        if (strchr(buf, '\n')) {
            close(fd);
            return strstr(buf, "\"ok\":true") ? now_mono() - t0 : -1;
        }
    }
    close(fd);
    return -1;
}

static long daemon_rss_kb(void)
{
    char path[64], *text = NULL, *p;
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)daemon_pid);
    if (file_read_all(path, &text, NULL) < 0)
        return -1;
    p = strstr(text, "VmRSS:");
    if (p)
        kb = strtol(p + 6, NULL, 10);
    free(text);
    return kb;
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
    signal(SIGPIPE, SIG_IGN);
    snprintf(home, sizeof(home), "/tmp/exaq-slow.XXXXXX");
    if (!mkdtemp(home))
        return -1;
    snprintf(sock_path, sizeof(sock_path), "%s/exaqd.sock", home);
    snprintf(exe, sizeof(exe), "%s/exaqd", bin);
    setenv("EXAQ_CLIENT_STALL_S", "2", 1);
    /* Under ASan, freed blocks wait in a quarantine (256 MB by default) before reuse, so the
     * daemon's RSS would measure the quarantine, not what exaqd holds: keep it small. */
    setenv("ASAN_OPTIONS", "quarantine_size_mb=4:detect_leaks=1", 0);
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
        kill(daemon_pid, SIGTERM);
        for (int i = 0; i < 100 && kill(daemon_pid, 0) == 0; i++)
            usleep(50000);
        kill(daemon_pid, SIGKILL);
    }
    rm_rf(home);
    return 0;
}

#define NREQ 100000

static void test_pipelining_non_reader(void **state)
{
    static const char req[] = V ",\"op\":\"status\"}\n";
    size_t rl = strlen(req), sent, replies = 0;
    char *all = xmalloc(rl * NREQ), buf[65536];
    long rss0 = daemon_rss_kb(), rss1;
    double t, t0;
    bool eof = false;
    int fd = connect_daemon();
    (void)state;
    assert_true(fd >= 0);
    for (size_t i = 0; i < NREQ; i++)
        memcpy(all + i * rl, req, rl);
    /* The daemon must stop reading from us once our replies back up. */
    sent = send_for(fd, all, rl * NREQ, 3);
    free(all);
    printf("# sent %zu of %zu request bytes\n", sent, rl * NREQ);
    t = ping_time();
    printf("# ping beside the stalled client: %.3fs\n", t);
    assert_true(t >= 0 && t < 1.0);
    rss1 = daemon_rss_kb();
    printf("# exaqd rss %ld kB -> %ld kB\n", rss0, rss1);
    assert_true(rss1 - rss0 < 64 * 1024);
    /* After EXAQ_CLIENT_STALL_S it is dropped: reading now ends in EOF before every reply. */
    sleep(3);
    t0 = now_mono();
    while (now_mono() - t0 < 20) {
        struct pollfd pf = { fd, POLLIN, 0 };
        ssize_t n;
        if (poll(&pf, 1, 200) <= 0)
            continue;
        n = read(fd, buf, sizeof(buf));
        if (n <= 0) {
            eof = true;
            break;
        }
        for (ssize_t i = 0; i < n; i++)
            replies += buf[i] == '\n';
    }
    close(fd);
    printf("# %zu replies before the daemon dropped the client (eof %d)\n", replies, eof);
    assert_true(eof);
    assert_true(replies < NREQ);
    assert_true(ping_time() >= 0);
}

#define NPARTIAL 300

static void test_partial_frames(void **state)
{
    size_t len = 900 * 1024, total = 0;
    char *junk = xmalloc(len);
    int fds[NPARTIAL];
    long rss0 = daemon_rss_kb(), rss1;
    double t;
    (void)state;
    memset(junk, 'x', len);
    static const char head[] = V ",\"op\":\"ping\",\"pad\":\"";
    memcpy(junk, head, sizeof(head) - 1);
    for (int i = 0; i < NPARTIAL; i++) {
        fds[i] = connect_daemon();
        if (fds[i] >= 0)
            total += send_for(fds[i], junk, len, 0.2);
    }
    free(junk);
    usleep(300000);
    rss1 = daemon_rss_kb();
    printf("# %d connections sent %zu MB of unfinished frames; exaqd rss %ld kB -> %ld kB\n",
           NPARTIAL, total >> 20, rss0, rss1);
    t = ping_time();
    printf("# ping: %.3fs\n", t);
    for (int i = 0; i < NPARTIAL; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    assert_true(t >= 0 && t < 2.0);
    assert_true(rss1 - rss0 < 160 * 1024);
    usleep(300000);
    assert_true(ping_time() >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelining_non_reader),
        cmocka_unit_test(test_partial_frames),
    };
    const char *r = getenv("EXAQ_SLOW_ROUNDS");
    int rounds = r ? atoi(r) : 1, rc = 0;
    for (int i = 0; i < (rounds > 0 ? rounds : 1) && rc == 0; i++)
        rc = cmocka_run_group_tests(tests, setup, teardown);
    return rc;
}
