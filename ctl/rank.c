/*
 * rank: exaqctl rank / package / gc. The daemon computes the ranking (rank --json is its
 * document, printed as is); this file renders it as a table, CSV or Markdown.
 */
#include "ctl/ctl.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

/* Metric names that appear in any lane or the baseline, in first-seen order. */
static void add_names(const cJSON *metrics, const char **names, int *n, int max)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, metrics)
    {
        bool seen = false;
        for (int i = 0; i < *n; i++)
            seen |= !strcmp(names[i], m->string);
        if (!seen && *n < max)
            names[(*n)++] = m->string;
    }
}

static int metric_names(const cJSON *doc, const char **names, int max)
{
    const cJSON *l, *base = cJSON_GetObjectItemCaseSensitive(doc, "baseline");
    int n = 0;
    add_names(cJSON_GetObjectItemCaseSensitive(base, "metrics"), names, &n, max);
    cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(doc, "lanes"))
        add_names(cJSON_GetObjectItemCaseSensitive(l, "metrics"), names, &n, max);
    return n;
}

/* A rendered table: rows of cells (row 0 is the header). */
struct table {
    char ***cell;
    int nrows, ncols;
};

static void table_add_row(struct table *t)
{
    t->cell = xrealloc(t->cell, (size_t)(t->nrows + 1) * sizeof(*t->cell));
    t->cell[t->nrows] = xcalloc((size_t)t->ncols, sizeof(char *));
    t->nrows++;
}

static void table_set(struct table *t, int col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void table_set(struct table *t, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(t->cell[t->nrows - 1][col]);
    t->cell[t->nrows - 1][col] = xvasprintf(fmt, ap);
    va_end(ap);
}

static void set_num(struct table *t, int col, const cJSON *o, const char *key, const char *fmt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(v))
        table_set(t, col, fmt, v->valuedouble);
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

static void table_print(FILE *f, const struct table *t, const char *format)
{
    bool csv = !strcmp(format, "csv"), md = !strcmp(format, "md");
    int *w = xcalloc((size_t)t->ncols, sizeof(int));
    for (int r = 0; r < t->nrows; r++)
        for (int c = 0; c < t->ncols; c++)
            if (t->cell[r][c] && (int)strlen(t->cell[r][c]) > w[c])
                w[c] = (int)strlen(t->cell[r][c]);
    for (int r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            const char *s = t->cell[r][c] ? t->cell[r][c] : "";
            if (csv) {
                if (c)
                    fputc(',', f);
                csv_field(f, s);
            } else if (md) {
                fprintf(f, "| %s ", s);
            } else {
                fprintf(f, "%s%-*s", c ? "  " : "", c == t->ncols - 1 ? 0 : w[c], s);
            }
        }
        fputs(md ? "|\n" : "\n", f);
        if (md && r == 0) {
            for (int c = 0; c < t->ncols; c++)
                fputs("|---", f);
            fputs("|\n", f);
        }
    }
    free(w);
}

static void table_free(struct table *t)
{
    for (int r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++)
            free(t->cell[r][c]);
        free(t->cell[r]);
    }
    free(t->cell);
}

static void render(FILE *f, const cJSON *doc, const char *format)
{
    static const char *fixed[] = { "rank", "lane", "status", "score", "perf_norm", "speed_norm",
                                   "size_bytes" };
    const char *names[64];
    int nm = metric_names(doc, names, 64), nf = (int)EXAQ_ARRAY_LEN(fixed);
    const cJSON *lanes = cJSON_GetObjectItemCaseSensitive(doc, "lanes"), *l;
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(doc, "baseline");
    struct table t = { NULL, 0, nf + nm + 1 };

    table_add_row(&t);
    for (int i = 0; i < nf; i++)
        table_set(&t, i, "%s", fixed[i]);
    for (int i = 0; i < nm; i++)
        table_set(&t, nf + i, "%s", names[i]);
    table_set(&t, nf + nm, "reason");
    if (base && strcmp(format, "csv")) {
        const cJSON *bm = cJSON_GetObjectItemCaseSensitive(base, "metrics");
        table_add_row(&t);
        table_set(&t, 0, "-");
        table_set(&t, 1, "baseline");
        set_num(&t, 6, base, "size_bytes", "%.0f");
        for (int i = 0; i < nm; i++)
            set_num(&t, nf + i, bm, names[i], "%.6g");
    }
    cJSON_ArrayForEach(l, lanes)
    {
        const cJSON *rank = cJSON_GetObjectItemCaseSensitive(l, "rank");
        const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(l, "metrics");
        const char *prec = strcmp(format, "table") ? "%.10g" : "%.4f";
        table_add_row(&t);
        if (cJSON_IsNumber(rank))
            table_set(&t, 0, "%d", rank->valueint);
        else
            table_set(&t, 0, "-");
        table_set(&t, 1, "%s", view_str(l, "lane") ? view_str(l, "lane") : "");
        table_set(&t, 2, "%s", view_str(l, "status") ? view_str(l, "status") : "");
        set_num(&t, 3, l, "score", prec);
        set_num(&t, 4, l, "perf_norm", prec);
        set_num(&t, 5, l, "speed_norm", prec);
        set_num(&t, 6, l, "size_bytes", "%.0f");
        for (int i = 0; i < nm; i++)
            set_num(&t, nf + i, metrics, names[i], "%.6g");
        if (view_str(l, "reason"))
            table_set(&t, nf + nm, "%s", view_str(l, "reason"));
    }
    table_print(f, &t, format);
    table_free(&t);
}

int ctl_rank(struct ctl *c, const char *sweep, const char *format)
{
    struct proto_msg m, r;
    cJSON *doc;
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
    render(stdout, doc, format);
    cJSON_Delete(doc);
    return CTL_OK;
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
    printf("%s\n", r.u.package_r.package);
    proto_msg_release(&r);
    return CTL_OK;
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
