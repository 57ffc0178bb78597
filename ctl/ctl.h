/*
 * ctl.h: exaqctl internals. client.c talks to exaqd (one request, one reply); view.c turns
 * status documents into tables and progress bars; main.c has the commands.
 *
 * Exit codes (contract): 0 success, 1 user error, 2 exaqd unreachable, 3 wait timeout.
 */
#ifndef EXAQ_CTL_H
#define EXAQ_CTL_H

#include <stdbool.h>
#include <stdio.h>

#include <cJSON.h>

#include "proto/proto.h"
#include "proto/vocab.h"

enum {
    CTL_OK = 0,
    CTL_EUSER = 1,
    CTL_EDAEMON = 2,
    CTL_ETIMEOUT = 3,
};

struct ctl {
    char *home;
    char *sock;
};

/* Sends m and waits for the reply. Returns CTL_OK with *reply parsed (caller releases it), or
 * an exit code after printing the problem on stderr (an error reply is printed, line by line). */
int ctl_request(struct ctl *c, struct proto_msg *m, struct proto_msg *reply);

/* Status document of one sweep (or all when sweep is NULL): parsed JSON, or NULL after
 * printing why; *rc gets the exit code. */
cJSON *ctl_status(struct ctl *c, const char *sweep, int *rc);

/* Renders a status document. With bars, running stages get progress bars. */
void view_status(FILE *f, const cJSON *status, bool bars, bool color);
/* Finds a sweep object in a status document by id. */
const cJSON *view_find_sweep(const cJSON *status, const char *id);
bool view_sweep_finished(const cJSON *sweep);
const char *view_str(const cJSON *o, const char *key);
double view_num(const cJSON *o, const char *key, double def);

/* rank.c: rank, package and gc commands. format: table, json, csv or md. */
int ctl_rank(struct ctl *c, const char *sweep, const char *format);
int ctl_package(struct ctl *c, const char *sweep, int top, const char *out);
int ctl_gc(struct ctl *c, const char *sweep, const char *keep);

#endif
