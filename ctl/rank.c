/*
 * rank: exaqctl rank / package / gc. The daemon computes the ranking (rank --json is its
 * document, printed as is); the table, CSV and Markdown renderings come from proto/report.c,
 * the same code that writes rank.csv and report.md, so the two never disagree.
 */
#include "ctl/ctl.h"

#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "proto/report.h"

int ctl_rank(struct ctl *c, const char *sweep, const char *format)
{
    struct proto_msg m, r;
    cJSON *doc;
    char *text;
    int rc;
    proto_msg_init(&m, PROTO_T_rank);
    proto_set_str(&m.u.rank.sweep, &m.u.rank.has_sweep, sweep);
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    if (!strcmp(format, "json")) {
        printf("%s\n", r.u.rank_r.rank);
        proto_msg_release(&r);
        return CTL_OK;
    }
    doc = cJSON_Parse(r.u.rank_r.rank);
    proto_msg_release(&r);
    if (!doc) {
        fprintf(stderr, "exaqctl: exaqd sent an unreadable ranking\n");
        return CTL_EDAEMON;
    }
    text = report_table(doc, format);
    fputs(text, stdout);
    free(text);
    cJSON_Delete(doc);
    return CTL_OK;
}

/* Prints a package document; returns CTL_EUSER when nothing was packaged but some was asked. */
static int print_package(const char *json)
{
    cJSON *doc = cJSON_Parse(json);
    const cJSON *l;
    const char *err = view_str(doc, "error"), *dir = view_str(doc, "dir");
    double top = view_num(doc, "top", 0), n = view_num(doc, "packaged", 0);
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        fprintf(stderr, "exaqctl: exaqd sent an unreadable package report\n");
        return CTL_EDAEMON;
    }
    printf("packaged %.0f of the top %.0f into %s\n", n, top, dir ? dir : "?");
    cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(doc, "lanes"))
    {
        const char *lane = view_str(l, "lane");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "ok")))
            printf("  top%.0f  %s  %s  (%.1f MB)\n", view_num(l, "top", 0), lane ? lane : "?",
                   view_str(l, "zip") ? view_str(l, "zip") : "?",
                   view_num(l, "zip_bytes", 0) / 1e6);
        else
            printf("  skipped  %s: %s\n", lane ? lane : "?",
                   view_str(l, "reason") ? view_str(l, "reason") : "?");
    }
    if (err)
        fprintf(stderr, "exaqctl: nothing packaged: %s\n", err);
    else if (n < 1 && top > 0)
        fprintf(stderr, "exaqctl: no lane passed the package checks\n");
    cJSON_Delete(doc);
    return (err || (n < 1 && top > 0)) ? CTL_EUSER : CTL_OK;
}

int ctl_package(struct ctl *c, const char *sweep, int top, const char *out)
{
    struct proto_msg m, r;
    int rc;
    proto_msg_init(&m, PROTO_T_package);
    proto_set_str(&m.u.package.sweep, &m.u.package.has_sweep, sweep);
    if (top >= 0) {
        m.u.package.top = top;
        m.u.package.has_top = true;
    }
    if (out)
        proto_set_str(&m.u.package.out, &m.u.package.has_out, out);
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    rc = print_package(r.u.package_r.package);
    proto_msg_release(&r);
    return rc;
}

int ctl_gc(struct ctl *c, const char *sweep, const char *keep)
{
    struct proto_msg m, r;
    int rc;
    proto_msg_init(&m, PROTO_T_gc);
    proto_set_str(&m.u.gc.sweep, &m.u.gc.has_sweep, sweep);
    proto_set_str(&m.u.gc.keep, &m.u.gc.has_keep, keep);
    rc = ctl_request(c, &m, &r);
    proto_msg_release(&m);
    if (rc)
        return rc;
    printf("removed %lld artifact dir%s (%.1f MB)\n", (long long)r.u.gc_r.removed,
           r.u.gc_r.removed == 1 ? "" : "s", (double)r.u.gc_r.bytes / 1e6);
    proto_msg_release(&r);
    return CTL_OK;
}
