/*
 * cdp: drives a headless Chromium through the DevTools protocol over --remote-debugging-pipe
 * (fd 3: commands to the browser, fd 4: replies and events, each message ended by a NUL byte),
 * for the dashboard tests. It reads a script from stdin, one command a line:
 *
 *   open URL            navigate the page and wait until the document has loaded
 *   wait MS JS          evaluate JS every 50 ms until it is truthy; fails after MS
 *   expect JS           evaluate JS once; fails unless it is truthy
 *   eval JS             evaluate JS and print "= VALUE" (JSON)
 *   shot FILE           save a PNG screenshot of the whole page
 *   sh CMD              run CMD with /bin/sh (e.g. to change the sweep while the page is open)
 *   # ...               a comment
 *
 * usage: cdp CHROMIUM PROFILE_DIR < SCRIPT      (Chromium's own output goes to PROFILE_DIR/log)
 * Exit status: 0 when every command succeeded, 1 at the first failure (with the reason).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int to_fd = -1, from_fd = -1;
static pid_t chrome_pid = -1;
static char *session;
static int next_id = 1;
static char *rbuf;
static size_t rlen, rcap;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cdp: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (chrome_pid > 0)
        kill(chrome_pid, SIGKILL);
    exit(1);
}

/* Reads one NUL-terminated message, waiting at most until deadline. NULL on timeout. */
static cJSON *read_msg(double deadline)
{
    for (;;) {
        char *z = rlen ? memchr(rbuf, '\0', rlen) : NULL;
        if (z) {
            size_t n = (size_t)(z - rbuf);
            cJSON *j = cJSON_ParseWithLength(rbuf, n);
            memmove(rbuf, z + 1, rlen - n - 1);
            rlen -= n + 1;
            if (!j)
                die("unparsable message from the browser");
            return j;
        }
        {
            struct pollfd p = { .fd = from_fd, .events = POLLIN };
            int ms = (int)((deadline - now_s()) * 1000);
            ssize_t got;
            if (ms <= 0)
                return NULL;
            if (poll(&p, 1, ms) <= 0)
                continue;
            if (rcap - rlen < 65536) {
                rcap = rcap ? rcap * 2 : 1 << 20;
                rbuf = realloc(rbuf, rcap);
                if (!rbuf)
                    die("out of memory");
            }
            got = read(from_fd, rbuf + rlen, rcap - rlen);
            if (got <= 0)
                die("the browser closed the pipe (see its log)");
            rlen += (size_t)got;
        }
    }
}

/* Sends method with params (taken; NULL for none) and returns the reply's "result" (the whole
 * reply is returned through *reply, to be deleted by the caller). Dies on an error reply. */
static cJSON *call(const char *method, cJSON *params, bool in_session, cJSON **reply,
                   double timeout_s)
{
    cJSON *m = cJSON_CreateObject();
    int id = next_id++;
    char *text;
    size_t len, off = 0;
    double deadline = now_s() + timeout_s;

    cJSON_AddNumberToObject(m, "id", id);
    cJSON_AddStringToObject(m, "method", method);
    if (params)
        cJSON_AddItemToObject(m, "params", params);
    if (in_session && session)
        cJSON_AddStringToObject(m, "sessionId", session);
    text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    len = strlen(text) + 1; /* the NUL ends the message */
    while (off < len) {
        ssize_t w = write(to_fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("cannot write to the browser: %s", strerror(errno));
        off += (size_t)w;
    }
    cJSON_free(text);
    for (;;) {
        cJSON *r = read_msg(deadline), *rid, *err;
        if (!r)
            die("no reply to %s within %.0f s", method, timeout_s);
        rid = cJSON_GetObjectItem(r, "id");
        if (!cJSON_IsNumber(rid) || rid->valueint != id) {
            cJSON_Delete(r); /* an event, or a reply to something else */
            continue;
        }
        err = cJSON_GetObjectItem(r, "error");
        if (err) {
            char *e = cJSON_PrintUnformatted(err);
            die("%s failed: %s", method, e);
        }
        *reply = r;
        return cJSON_GetObjectItem(r, "result");
    }
}

/* Evaluates js in the page; returns the value printed as JSON (new string), or NULL with the
 * exception text in *exc (new string). */
static char *evaluate(const char *js, char **exc)
{
    cJSON *p = cJSON_CreateObject(), *reply, *res, *val, *ex;
    char *out = NULL;
    cJSON_AddStringToObject(p, "expression", js);
    cJSON_AddBoolToObject(p, "returnByValue", 1);
    cJSON_AddBoolToObject(p, "awaitPromise", 1);
    res = call("Runtime.evaluate", p, true, &reply, 30);
    *exc = NULL;
    ex = cJSON_GetObjectItem(res, "exceptionDetails");
    if (ex) {
        cJSON *e = cJSON_GetObjectItem(ex, "exception");
        cJSON *d = e ? cJSON_GetObjectItem(e, "description") : NULL;
        *exc = strdup(cJSON_IsString(d) ? d->valuestring : "exception");
    } else {
        cJSON *r = cJSON_GetObjectItem(res, "result");
        val = r ? cJSON_GetObjectItem(r, "value") : NULL;
        out = val ? cJSON_PrintUnformatted(val) : strdup("undefined");
    }
    cJSON_Delete(reply);
    return out;
}

static bool truthy(const char *v)
{
    return v && strcmp(v, "false") && strcmp(v, "null") && strcmp(v, "undefined") &&
           strcmp(v, "0") && strcmp(v, "\"\"");
}

static void save_shot(const char *file)
{
    cJSON *p = cJSON_CreateObject(), *reply, *res, *data;
    unsigned char *bin;
    size_t len, pad = 0;
    int n;
    FILE *f;
    cJSON_AddStringToObject(p, "format", "png");
    cJSON_AddBoolToObject(p, "captureBeyondViewport", 1);
    res = call("Page.captureScreenshot", p, true, &reply, 60);
    data = cJSON_GetObjectItem(res, "data");
    if (!cJSON_IsString(data))
        die("no screenshot data");
    len = strlen(data->valuestring);
    bin = malloc(len);
    if (!bin)
        die("out of memory");
    n = EVP_DecodeBlock(bin, (const unsigned char *)data->valuestring, (int)len);
    if (n < 0)
        die("bad base64 in the screenshot");
    if (len >= 1 && data->valuestring[len - 1] == '=')
        pad++;
    if (len >= 2 && data->valuestring[len - 2] == '=')
        pad++;
    f = fopen(file, "wb");
    if (!f || fwrite(bin, 1, (size_t)n - pad, f) != (size_t)n - pad || fclose(f) != 0)
        die("cannot write '%s'", file);
    printf("shot %s (%zu bytes)\n", file, (size_t)n - pad);
    free(bin);
    cJSON_Delete(reply);
}

static void start_browser(const char *chrome, const char *profile)
{
    int to[2], from[2];
    char *udd, *logp;
    mkdir(profile, 0700);
    if (pipe(to) < 0 || pipe(from) < 0)
        die("pipe: %s", strerror(errno));
    if (asprintf(&udd, "--user-data-dir=%s", profile) < 0 || asprintf(&logp, "%s/log", profile) < 0)
        die("out of memory");
    chrome_pid = fork();
    if (chrome_pid < 0)
        die("fork: %s", strerror(errno));
    if (chrome_pid == 0) {
        int lf = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        /* above 4 first, so that the dup2s below cannot clobber each other */
        int a = fcntl(to[0], F_DUPFD, 10), b = fcntl(from[1], F_DUPFD, 10);
        dup2(a, 3);
        dup2(b, 4);
        if (lf >= 0) {
            dup2(lf, 1);
            dup2(lf, 2);
        }
        for (int fd = 5; fd < 1024; fd++)
            close(fd);
        execl(chrome, chrome, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
              "--remote-debugging-pipe", "--window-size=1280,1000", udd, "about:blank",
              (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    to_fd = to[1];
    from_fd = from[0];
    free(udd);
    free(logp);
}

static void attach_page(void)
{
    cJSON *p = cJSON_CreateObject(), *reply, *res, *tid, *sid;
    char *target;
    cJSON_AddStringToObject(p, "url", "about:blank");
    res = call("Target.createTarget", p, false, &reply, 60);
    tid = cJSON_GetObjectItem(res, "targetId");
    if (!cJSON_IsString(tid))
        die("no targetId");
    target = strdup(tid->valuestring);
    cJSON_Delete(reply);
    p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "targetId", target);
    cJSON_AddBoolToObject(p, "flatten", 1);
    res = call("Target.attachToTarget", p, false, &reply, 30);
    sid = cJSON_GetObjectItem(res, "sessionId");
    if (!cJSON_IsString(sid))
        die("no sessionId");
    session = strdup(sid->valuestring);
    cJSON_Delete(reply);
    free(target);
    call("Page.enable", NULL, true, &reply, 30);
    cJSON_Delete(reply);
}

static void cmd_wait(int ms, const char *js, bool once)
{
    double t0 = now_s(), deadline = t0 + ms / 1000.0;
    char *v = NULL, *exc = NULL;
    for (;;) {
        free(v);
        free(exc);
        v = evaluate(js, &exc);
        if (!exc && truthy(v)) {
            if (!once)
                printf("wait ok after %.0f ms: %s\n", (now_s() - t0) * 1000, js);
            break;
        }
        if (once || now_s() > deadline)
            die("%s %s: got %s", once ? "expected" : "timed out waiting for", js,
                exc ? exc
                : v ? v
                    : "nothing");
        usleep(50000);
    }
    free(v);
}

int main(int argc, char **argv)
{
    char line[8192];
    cJSON *reply;
    int st;

    if (argc != 3) {
        fprintf(stderr, "usage: cdp CHROMIUM PROFILE_DIR < SCRIPT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    start_browser(argv[1], argv[2]);
    attach_page();
    while (fgets(line, sizeof(line), stdin)) {
        char *arg;
        line[strcspn(line, "\n")] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        arg = strchr(line, ' ');
        if (arg)
            *arg++ = '\0';
        else
            arg = line + strlen(line);
        if (!strcmp(line, "open")) {
            cJSON *p = cJSON_CreateObject();
            cJSON_AddStringToObject(p, "url", arg);
            call("Page.navigate", p, true, &reply, 30);
            cJSON_Delete(reply);
            cmd_wait(20000, "document.readyState === 'complete'", false);
        } else if (!strcmp(line, "wait")) {
            char *js = strchr(arg, ' ');
            if (!js)
                die("wait wants MS JS");
            *js++ = '\0';
            cmd_wait(atoi(arg), js, false);
        } else if (!strcmp(line, "expect")) {
            cmd_wait(0, arg, true);
            printf("ok: %s\n", arg);
        } else if (!strcmp(line, "eval")) {
            char *exc = NULL, *v = evaluate(arg, &exc);
            if (exc)
                die("%s: %s", arg, exc);
            printf("= %s\n", v);
            free(v);
        } else if (!strcmp(line, "shot")) {
            save_shot(arg);
        } else if (!strcmp(line, "sh")) {
            int rc = system(arg);
            if (rc != 0)
                die("sh %s: exit %d", arg, rc);
        } else {
            die("unknown command '%s'", line);
        }
    }
    call("Browser.close", NULL, false, &reply, 10);
    cJSON_Delete(reply);
    for (int i = 0; i < 100; i++) {
        if (waitpid(chrome_pid, &st, WNOHANG) == chrome_pid)
            return 0;
        usleep(50000);
    }
    kill(chrome_pid, SIGKILL);
    waitpid(chrome_pid, &st, 0);
    return 0;
}
