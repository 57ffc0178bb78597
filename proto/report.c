/*
 * report: rank documents rendered as tables, Markdown and HTML with inline SVG charts (see
 * report.h). Everything but report_write() is a pure function of the cJSON document.
 *
 * DESIGN. One table builder (struct table) feeds the terminal table, CSV, Markdown and HTML
 * so the four never disagree. The charts are scatter plots drawn by hand in SVG: score
 * against the speed metric and score against the model size, one dot per ranked lane
 * (labelled with its rank), the baseline as a red diamond with a dashed line at its x value.
 */
#include "proto/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/jw.h"
#include "common/util.h"

/* ===== small helpers ===== */

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jnum(const cJSON *o, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        return false;
    *out = v->valuedouble;
    return true;
}

static const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static void html_esc(struct buf *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&':
            buf_puts(b, "&amp;");
            break;
        case '<':
            buf_puts(b, "&lt;");
            break;
        case '>':
            buf_puts(b, "&gt;");
            break;
        case '"':
            buf_puts(b, "&quot;");
            break;
        case '\'':
            buf_puts(b, "&#39;");
            break;
        default:
            buf_append(b, s, 1);
        }
    }
}

/* Markdown table cell text: pipes escaped, line breaks flattened. */
static void md_esc(struct buf *b, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|')
            buf_puts(b, "\\|");
        else if (*s == '\n' || *s == '\r')
            buf_puts(b, " ");
        else
            buf_append(b, s, 1);
    }
}

static void csv_field(struct buf *b, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        buf_puts(b, s);
        return;
    }
    buf_puts(b, "\"");
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            buf_puts(b, "\"");
        buf_append(b, p, 1);
    }
    buf_puts(b, "\"");
}

static char *human_bytes(double n)
{
    if (n >= 1e9)
        return xasprintf("%.2f GB", n / 1e9);
    if (n >= 1e6)
        return xasprintf("%.1f MB", n / 1e6);
    if (n >= 1e3)
        return xasprintf("%.1f kB", n / 1e3);
    return xasprintf("%.0f bytes", n);
}

/* ===== merging the package document ===== */

char *report_merge_package(const char *rank_json, const char *pkg_json)
{
    cJSON *doc = cJSON_Parse(rank_json), *pkg, *lane, *summary;
    const cJSON *pl;
    char *out;
    if (!doc)
        return xstrdup(rank_json ? rank_json : "{}");
    pkg = pkg_json ? cJSON_Parse(pkg_json) : NULL;
    if (!cJSON_IsObject(pkg)) {
        cJSON_Delete(pkg);
        out = cJSON_PrintUnformatted(doc);
        cJSON_Delete(doc);
        return out;
    }
    cJSON_ArrayForEach(lane, cJSON_GetObjectItemCaseSensitive(doc, "lanes"))
    {
        const char *id = jstr(lane, "lane");
        cJSON_ArrayForEach(pl, jget(pkg, "lanes"))
        {
            const char *pid = jstr(pl, "lane");
            if (id && pid && !strcmp(id, pid)) {
                cJSON *copy = cJSON_Duplicate(pl, 1);
                cJSON_DeleteItemFromObjectCaseSensitive(copy, "lane");
                cJSON_DeleteItemFromObjectCaseSensitive(lane, "package");
                cJSON_AddItemToObject(lane, "package", copy);
                break;
            }
        }
    }
    summary = cJSON_CreateObject();
    for (const char *const *k = (const char *const[]){ "dir", "top", "packaged", "error", NULL };
         *k; k++) {
        const cJSON *v = jget(pkg, *k);
        if (v)
            cJSON_AddItemToObject(summary, *k, cJSON_Duplicate(v, 1));
    }
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "package");
    cJSON_AddItemToObject(doc, "package", summary);
    out = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    cJSON_Delete(pkg);
    return out;
}

/* ===== the table ===== */

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

static void table_free(struct table *t)
{
    for (int r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++)
            free(t->cell[r][c]);
        free(t->cell[r]);
    }
    free(t->cell);
}

enum numfmt {
    NF_SCORE, /* score, perf_norm, speed_norm */
    NF_METRIC,
    NF_INT,
};

static void set_num(struct table *t, int col, const cJSON *o, const char *key, enum numfmt nf,
                    const char *format)
{
    double v;
    if (!jnum(o, key, &v))
        return;
    if (nf == NF_INT) {
        table_set(t, col, "%.0f", v);
    } else if (!strcmp(format, "csv")) {
        char tmp[40];
        json_num_fmt(v, tmp, sizeof(tmp));
        table_set(t, col, "%s", tmp);
    } else if (nf == NF_SCORE) {
        /* 12 significant digits keep the Markdown numbers within 1e-9 of the JSON. */
        table_set(t, col, !strcmp(format, "table") ? "%.4f" : "%.12g", v);
    } else {
        table_set(t, col, "%.6g", v);
    }
}

#define MAX_METRICS 64

static void add_names(const cJSON *metrics, const char **names, int *n)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, metrics)
    {
        bool seen = false;
        for (int i = 0; i < *n; i++)
            seen |= !strcmp(names[i], m->string);
        if (!seen && *n < MAX_METRICS)
            names[(*n)++] = m->string;
    }
}

/* Metric names of the baseline and every lane, in first-seen order. */
/* Metric columns. CSV (for machines) has every metric of every lane; the terminal table and
 * Markdown (for people) have the metrics the baseline has too, i.e. the eval metrics that
 * compare lanes, and leave out stage diagnostics such as per-layer GPTQ losses. */
static int metric_names(const cJSON *doc, const char **names, bool all)
{
    const cJSON *l, *base = jget(jget(doc, "baseline"), "metrics");
    int n = 0;
    add_names(base, names, &n);
    if (all || !cJSON_IsObject(base) || !base->child)
        cJSON_ArrayForEach(l, jget(doc, "lanes")) add_names(jget(l, "metrics"), names, &n);
    return n;
}

/* "tie": "~N" when the lane is within the measured speed noise of its neighbour, N being the
 * rank of the first lane of the tied run (daemon/rank.h). */
static const char *fixed_cols[] = { "rank", "lane",      "status",     "score",
                                    "tie",  "perf_norm", "speed_norm", "size_bytes" };
#define NFIXED ((int)EXAQ_ARRAY_LEN(fixed_cols))

static void build_table(struct table *t, const cJSON *doc, const char *format, bool base_row)
{
    const char *names[MAX_METRICS];
    int nm = metric_names(doc, names, !strcmp(format, "csv"));
    const cJSON *l, *base = jget(doc, "baseline");

    memset(t, 0, sizeof(*t));
    t->ncols = NFIXED + nm + 3;
    table_add_row(t);
    for (int i = 0; i < NFIXED; i++)
        table_set(t, i, "%s", fixed_cols[i]);
    for (int i = 0; i < nm; i++)
        table_set(t, NFIXED + i, "%s", names[i]);
    table_set(t, NFIXED + nm, "package");
    table_set(t, NFIXED + nm + 1, "package_reason");
    table_set(t, NFIXED + nm + 2, "reason");
    if (base && base_row) {
        const cJSON *bm = jget(base, "metrics");
        table_add_row(t);
        table_set(t, 0, "-");
        table_set(t, 1, "baseline");
        table_set(t, 2, "%s", jstr(base, "status") ? jstr(base, "status") : "");
        set_num(t, 3, base, "score", NF_SCORE, format);
        set_num(t, 5, base, "perf_norm", NF_SCORE, format);
        set_num(t, 6, base, "speed_norm", NF_SCORE, format);
        set_num(t, 7, base, "size_bytes", NF_INT, format);
        for (int i = 0; i < nm; i++)
            set_num(t, NFIXED + i, bm, names[i], NF_METRIC, format);
        if (jstr(base, "reason"))
            table_set(t, NFIXED + nm + 2, "%s", jstr(base, "reason"));
    }
    cJSON_ArrayForEach(l, jget(doc, "lanes"))
    {
        const cJSON *rank = jget(l, "rank"), *metrics = jget(l, "metrics");
        const cJSON *pkg = jget(l, "package");
        double top;
        table_add_row(t);
        if (cJSON_IsNumber(rank))
            table_set(t, 0, "%d", rank->valueint);
        else
            table_set(t, 0, "-");
        table_set(t, 1, "%s", jstr(l, "lane") ? jstr(l, "lane") : "");
        table_set(t, 2, "%s", jstr(l, "status") ? jstr(l, "status") : "");
        set_num(t, 3, l, "score", NF_SCORE, format);
        if (jnum(l, "tie", &top))
            table_set(t, 4, "~%.0f", top);
        set_num(t, 5, l, "perf_norm", NF_SCORE, format);
        set_num(t, 6, l, "speed_norm", NF_SCORE, format);
        set_num(t, 7, l, "size_bytes", NF_INT, format);
        for (int i = 0; i < nm; i++)
            set_num(t, NFIXED + i, metrics, names[i], NF_METRIC, format);
        if (cJSON_IsObject(pkg)) {
            if (cJSON_IsTrue(jget(pkg, "ok")) && jnum(pkg, "top", &top))
                table_set(t, NFIXED + nm, "top%.0f", top);
            else
                table_set(t, NFIXED + nm, "skipped");
            if (jstr(pkg, "reason"))
                table_set(t, NFIXED + nm + 1, "%s", jstr(pkg, "reason"));
        }
        if (jstr(l, "reason"))
            table_set(t, NFIXED + nm + 2, "%s", jstr(l, "reason"));
    }
}

static void table_print(struct buf *b, const struct table *t, const char *format)
{
    bool csv = !strcmp(format, "csv"), md = !strcmp(format, "md");
    int *w = xcalloc((size_t)t->ncols, sizeof(int));
    for (int r = 0; r < t->nrows; r++)
        for (int c = 0; c < t->ncols; c++)
            if (t->cell[r][c] && (int)strlen(t->cell[r][c]) > w[c])
                w[c] = (int)strlen(t->cell[r][c]);
    for (int r = 0; r < t->nrows; r++) {
        /* The terminal table drops trailing empty cells. */
        int last = t->ncols - 1;
        if (!csv && !md)
            while (last > 0 && !t->cell[r][last])
                last--;
        for (int c = 0; c <= last; c++) {
            const char *s = t->cell[r][c] ? t->cell[r][c] : "";
            if (csv) {
                if (c)
                    buf_puts(b, ",");
                csv_field(b, s);
            } else if (md) {
                buf_puts(b, "| ");
                md_esc(b, s);
                buf_puts(b, " ");
            } else {
                buf_printf(b, "%s%-*s", c ? "  " : "", c == last ? 0 : w[c], s);
            }
        }
        buf_puts(b, md ? "|\n" : "\n");
        if (md && r == 0) {
            for (int c = 0; c < t->ncols; c++)
                buf_puts(b, "|---");
            buf_puts(b, "|\n");
        }
    }
    free(w);
}

char *report_table(const cJSON *doc, const char *format)
{
    struct table t;
    struct buf b;
    buf_init(&b);
    build_table(&t, doc, format, strcmp(format, "csv") != 0);
    table_print(&b, &t, format);
    table_free(&t);
    buf_cstr(&b);
    return buf_steal(&b);
}

/* ===== shared report text ===== */

/* The sentences about the paired speed ratio and the tie marks, when the document has them. */
static void noise_text(struct buf *b, const cJSON *doc)
{
    const cJSON *l;
    bool paired = false, tie = false;
    cJSON_ArrayForEach(l, jget(doc, "lanes"))
    {
        paired |= jget(l, "score_spread") != NULL;
        tie |= jget(l, "tie") != NULL;
    }
    if (paired)
        buf_puts(b, " Where the speed eval timed a lane in interleaved pairs with the baseline, "
                    "SpeedNorm = 1 − the median paired ratio, and the score's spread is "
                    "w_speed × the ratios' IQR.");
    if (tie)
        buf_puts(b, " A tie mark ~N: the lane's score is within that spread of its "
                    "neighbour's, in the run of ties that starts at rank N.");
}

/* "max(0.5 × PerfNorm + 0.5 × SpeedNorm, 0); PerfNorm: ppl (lower is better, weight 1)..." */
static void formula_text(struct buf *b, const cJSON *doc)
{
    const cJSON *score = jget(jget(doc, "settings"), "score"), *t;
    double wp = 0.5, ws = 0.5, w;
    const char *sm = jstr(score, "speed_metric");
    int i = 0;
    if (!score) {
        buf_puts(b, "Score = max(w_perf × PerfNorm + w_speed × SpeedNorm, 0).");
        noise_text(b, doc);
        return;
    }
    jnum(score, "w_perf", &wp);
    jnum(score, "w_speed", &ws);
    buf_printf(b, "Score = max(%g × PerfNorm + %g × SpeedNorm, 0); PerfNorm = ", wp, ws);
    cJSON_ArrayForEach(t, jget(score, "perf"))
    {
        const char *m = jstr(t, "metric");
        bool hib = cJSON_IsTrue(jget(t, "higher_is_better"));
        if (!jnum(t, "weight", &w))
            w = 1;
        buf_printf(b, "%s%s (%s, weight %g)", i++ ? " + " : "", m ? m : "?",
                   hib ? "perf/base" : "base/perf", w);
    }
    if (i > 1)
        buf_puts(b, " with weights normalised to sum 1");
    buf_printf(b, "; SpeedNorm = 1 − %s / baseline %s.", sm ? sm : "?", sm ? sm : "?");
    noise_text(b, doc);
}

static const char *speed_metric(const cJSON *doc)
{
    const char *s = jstr(jget(jget(doc, "settings"), "score"), "speed_metric");
    return s ? s : "time_per_token";
}

/* Lines about packages: one per examined lane. */
static void package_lines(struct buf *b, const cJSON *doc, bool html)
{
    const cJSON *pkg = jget(doc, "package"), *l;
    double packaged = 0, top = 0;
    const char *dir = jstr(pkg, "dir"), *err = jstr(pkg, "error");
    bool any = false;
    if (!cJSON_IsObject(pkg)) {
        buf_puts(b, html ? "<p>No packages were written.</p>\n" : "No packages were written.\n");
        return;
    }
    jnum(pkg, "packaged", &packaged);
    jnum(pkg, "top", &top);
    if (html) {
        buf_printf(b, "<p>Packaged %.0f of the top %.0f into <code>", packaged, top);
        html_esc(b, dir ? dir : "?");
        buf_puts(b, "</code>.</p>\n");
        if (err) {
            buf_puts(b, "<p class=\"err\">Nothing packaged: ");
            html_esc(b, err);
            buf_puts(b, "</p>\n");
        }
        buf_puts(b, "<ul>\n");
    } else {
        buf_printf(b, "Packaged %.0f of the top %.0f into `%s`.\n\n", packaged, top,
                   dir ? dir : "?");
        if (err)
            buf_printf(b, "**Nothing packaged:** %s\n\n", err);
    }
    cJSON_ArrayForEach(l, jget(doc, "lanes"))
    {
        const cJSON *p = jget(l, "package");
        const char *id = jstr(l, "lane");
        double t = 0, zb = 0;
        if (!cJSON_IsObject(p))
            continue;
        any = true;
        if (cJSON_IsTrue(jget(p, "ok"))) {
            char *h;
            jnum(p, "top", &t);
            jnum(p, "zip_bytes", &zb);
            h = human_bytes(zb);
            if (html) {
                buf_printf(b, "<li>top%.0f: <b>", t);
                html_esc(b, id);
                buf_printf(b, "</b> &rarr; <code>submit_top%.0f.zip</code> (%s)</li>\n", t, h);
            } else {
                buf_printf(b, "- top%.0f: **%s** → `submit_top%.0f.zip` (%s)\n", t, id ? id : "?",
                           t, h);
            }
            free(h);
        } else {
            const char *why = jstr(p, "reason");
            if (html) {
                buf_puts(b, "<li class=\"err\">");
                html_esc(b, id);
                buf_puts(b, ": not packaged: ");
                html_esc(b, why ? why : "?");
                buf_puts(b, "</li>\n");
            } else {
                buf_printf(b, "- %s: not packaged: %s\n", id ? id : "?", why ? why : "?");
            }
        }
    }
    if (html)
        buf_puts(b, any ? "</ul>\n" : "<li>no lane was examined</li></ul>\n");
    else if (!any)
        buf_puts(b, "- no lane was examined\n");
}

/* ===== Markdown ===== */

char *report_markdown(const cJSON *doc)
{
    struct buf b;
    const char *sweep = jstr(doc, "sweep"), *err = jstr(doc, "error");
    const cJSON *l;
    int nun = 0;
    char *tab;

    buf_init(&b);
    buf_printf(&b, "# Sweep %s\n\n", sweep ? sweep : "?");
    formula_text(&b, doc);
    buf_puts(&b, "\n\n");
    if (err)
        buf_printf(&b, "**Ranking failed:** %s\n\n", err);
    buf_puts(&b, "## Ranking\n\n");
    tab = report_table(doc, "md");
    buf_puts(&b, tab);
    free(tab);
    buf_puts(&b, "\n## Packages\n\n");
    package_lines(&b, doc, false);
    cJSON_ArrayForEach(l, jget(doc, "lanes"))
    {
        if (cJSON_IsNumber(jget(l, "rank")))
            continue;
        if (!nun++)
            buf_puts(&b, "\n## Lanes without a rank\n\n");
        buf_printf(&b, "- %s (%s): %s\n", jstr(l, "lane") ? jstr(l, "lane") : "?",
                   jstr(l, "status") ? jstr(l, "status") : "?",
                   jstr(l, "reason") ? jstr(l, "reason") : "no reason recorded");
    }
    buf_puts(&b, "\nWritten by exaqd " EXAQ_VERSION ". `exaqctl rank SWEEP --json` prints the same "
                 "data.\n");
    return buf_steal(&b);
}

/* ===== SVG charts ===== */

struct pt {
    double x, y;
    int rank;
    const char *label;
};

/* A "nice" step (1, 2 or 5 times a power of ten) for about n ticks over span. */
static double nice_step(double span, int n)
{
    double raw = span / n, mag, f;
    if (!(raw > 0) || !isfinite(raw))
        return 1;
    mag = pow(10, floor(log10(raw)));
    f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/* Significant digits that tell ticks `step` apart over [a, b]. */
static int tick_digits(double a, double b, double step)
{
    double m = fmax(fabs(a), fabs(b));
    int d;
    if (!(step > 0) || !(m > 0))
        return 3;
    d = (int)ceil(log10(m / step + 1e-9)) + 1;
    return d < 1 ? 1 : d > 15 ? 15 : d;
}

static void axis_range(double lo, double hi, double *a, double *b, double *step)
{
    if (!(hi > lo)) {
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.1 : 1;
        lo -= pad;
        hi += pad;
    }
    *step = nice_step(hi - lo, 5);
    *a = floor(lo / *step) * *step;
    *b = ceil(hi / *step) * *step;
    if (*b <= *a)
        *b = *a + *step;
}

#define SVG_W  560
#define SVG_H  360
#define SVG_ML 70
#define SVG_MR 24
#define SVG_MT 40
#define SVG_MB 56

/* A placed label's box, for overlap checks. */
struct lbox {
    double x0, y0, x1, y1;
};

/*
 * Writes a label next to the point (px, py): to the right, or to the left near the right
 * edge, moved up or down in 13-pixel steps until it overlaps no label placed before.
 */
static void place_label(struct buf *b, struct lbox *boxes, int *nb, double px, double py,
                        const char *label, int rank, const char *cls)
{
    char *text = rank ? xasprintf("#%d %s", rank, label) : xstrdup(label);
    double w = 6.2 * (double)strlen(text) + 4, h = 13, x0, y = py + 4;
    bool left = px + 10 + w > SVG_W - 4;
    x0 = left ? px - 10 - w : px + 10;
    for (int k = 0; k < 40; k++) {
        double dy = (k % 2 ? -1 : 1) * 13.0 * ((k + 1) / 2);
        bool clash = false;
        double yy = py + 4 + dy;
        for (int i = 0; i < *nb && !clash; i++)
            clash = x0 < boxes[i].x1 && x0 + w > boxes[i].x0 && yy - h + 3 < boxes[i].y1 &&
                    yy + 3 > boxes[i].y0;
        if (!clash) {
            y = yy;
            break;
        }
    }
    boxes[*nb].x0 = x0;
    boxes[*nb].x1 = x0 + w;
    boxes[*nb].y0 = y - h + 3;
    boxes[*nb].y1 = y + 3;
    (*nb)++;
    buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" class=\"%s\"%s>", left ? px - 10 : px + 10, y, cls,
               left ? " text-anchor=\"end\"" : "");
    html_esc(b, text);
    buf_puts(b, "</text>\n");
    free(text);
}

/*
 * A scatter plot of pts (score on y), the baseline (bx, by) as a red diamond with a dashed
 * vertical line when has_base.
 */
static void svg_scatter(struct buf *b, const char *title, const char *xlabel, const struct pt *pts,
                        int n, bool has_base, double bx, double by)
{
    double xmin = INFINITY, xmax = -INFINITY, ymin = 0, ymax = -INFINITY;
    double x0, x1, xs, y0, y1, ys;
    double pw = SVG_W - SVG_ML - SVG_MR, ph = SVG_H - SVG_MT - SVG_MB;

    for (int i = 0; i < n; i++) {
        xmin = fmin(xmin, pts[i].x);
        xmax = fmax(xmax, pts[i].x);
        ymin = fmin(ymin, pts[i].y);
        ymax = fmax(ymax, pts[i].y);
    }
    if (has_base) {
        xmin = fmin(xmin, bx);
        xmax = fmax(xmax, bx);
        ymin = fmin(ymin, by);
        ymax = fmax(ymax, by);
    }
    if (!isfinite(xmin)) {
        xmin = 0;
        xmax = 1;
    }
    if (!isfinite(ymax))
        ymax = 1;
    axis_range(xmin, xmax, &x0, &x1, &xs);
    axis_range(ymin, ymax, &y0, &y1, &ys);
#define PX(v) (SVG_ML + ((v)-x0) / (x1 - x0) * pw)
#define PY(v) (SVG_MT + ph - ((v)-y0) / (y1 - y0) * ph)
    buf_printf(b,
               "<svg class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
               "role=\"img\" aria-label=\"",
               SVG_W, SVG_H, SVG_W, SVG_H);
    html_esc(b, title);
    buf_puts(b, "\">\n");
    buf_printf(b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", SVG_W,
               SVG_H);
    buf_printf(b, "<text x=\"%d\" y=\"22\" text-anchor=\"middle\" class=\"title\">", SVG_W / 2);
    html_esc(b, title);
    buf_puts(b, "</text>\n");
    /* Grid, ticks and tick labels (enough significant digits to tell the ticks apart). */
    for (int k = 0, dig = tick_digits(x0, x1, xs); k <= 50; k++) {
        double v = x0 + k * xs, px = PX(v);
        if (v > x1 + xs * 1e-6)
            break;
        buf_printf(
            b,
            "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" class=\"tick\">%.*g</text>\n",
            px, SVG_MT, px, SVG_MT + ph, px, SVG_MT + ph + 16, dig, fabs(v) < xs * 1e-9 ? 0 : v);
    }
    for (int k = 0, dig = tick_digits(y0, y1, ys); k <= 50; k++) {
        double v = y0 + k * ys, py = PY(v);
        if (v > y1 + ys * 1e-6)
            break;
        buf_printf(b,
                   "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" class=\"tick\">%.*g</text>\n",
                   SVG_ML, py, SVG_ML + pw, py, SVG_ML - 6, py + 4, dig,
                   fabs(v) < ys * 1e-9 ? 0 : v);
    }
    buf_printf(b,
               "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
               "stroke=\"#333333\"/>\n",
               SVG_ML, SVG_MT, pw, ph);
    buf_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" class=\"axis\">",
               SVG_ML + pw / 2, SVG_H - 12);
    html_esc(b, xlabel);
    buf_printf(b,
               "</text>\n<text x=\"16\" y=\"%.1f\" text-anchor=\"middle\" class=\"axis\" "
               "transform=\"rotate(-90 16 %.1f)\">score</text>\n",
               SVG_MT + ph / 2, SVG_MT + ph / 2);
    if (has_base) {
        double px = PX(bx), py = PY(by);
        buf_printf(b,
                   "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\" class=\"baseline\"/>\n"
                   "<polygon points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f\" "
                   "fill=\"#dc2626\"><title>baseline</title></polygon>\n",
                   px, SVG_MT, px, SVG_MT + ph, px, py - 8, px + 8, py, px, py + 8, px - 8, py);
    }
    for (int i = 0; i < n; i++) {
        double px = PX(pts[i].x), py = PY(pts[i].y);
        buf_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"6\" fill=\"#2563eb\"><title>#%d ", px,
                   py, pts[i].rank);
        html_esc(b, pts[i].label);
        buf_printf(b, ": score %.6g, x %.6g</title></circle>\n", pts[i].y, pts[i].x);
    }
    /* Labels last, placed so they do not overlap each other (baseline first). */
    {
        struct lbox *boxes = xcalloc((size_t)(2 * n + 2), sizeof(*boxes));
        int nb = 0;
        /* The markers themselves are obstacles too. */
        for (int i = 0; i <= n; i++) {
            double px, py;
            if (i == n && !has_base)
                break;
            px = i < n ? PX(pts[i].x) : PX(bx);
            py = i < n ? PY(pts[i].y) : PY(by);
            boxes[nb].x0 = px - 8;
            boxes[nb].x1 = px + 8;
            boxes[nb].y0 = py - 8;
            boxes[nb].y1 = py + 8;
            nb++;
        }
        if (has_base)
            place_label(b, boxes, &nb, PX(bx), PY(by), "baseline", 0, "blabel");
        for (int i = 0; i < n; i++)
            place_label(b, boxes, &nb, PX(pts[i].x), PY(pts[i].y), pts[i].label, pts[i].rank,
                        "plabel");
        free(boxes);
    }
    if (n == 0)
        buf_printf(b,
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" class=\"axis\">no ranked "
                   "lane to plot</text>\n",
                   SVG_ML + pw / 2, SVG_MT + ph / 2);
    buf_puts(b, "</svg>\n");
#undef PX
#undef PY
}

/* Points of ranked lanes whose x value exists: metrics[metric], or size_bytes / size_div. */
static int collect_points(const cJSON *doc, const char *metric, double size_div, struct pt **out)
{
    const cJSON *l;
    int n = 0;
    *out = NULL;
    cJSON_ArrayForEach(l, jget(doc, "lanes"))
    {
        double x, y;
        const cJSON *rank = jget(l, "rank");
        bool size = size_div > 0;
        bool ok = size ? jnum(l, "size_bytes", &x) : jnum(jget(l, "metrics"), metric, &x);
        if (!cJSON_IsNumber(rank) || !ok || !jnum(l, "score", &y))
            continue;
        *out = xrealloc(*out, (size_t)(n + 1) * sizeof(**out));
        (*out)[n].x = size ? x / size_div : x;
        (*out)[n].y = y;
        (*out)[n].rank = rank->valueint;
        (*out)[n].label = jstr(l, "lane") ? jstr(l, "lane") : "?";
        n++;
    }
    return n;
}

/* The score chart against a metric, or against the model size when metric is NULL. */
static void chart(struct buf *b, const cJSON *doc, const char *title, const char *metric)
{
    const cJSON *base = jget(doc, "baseline"), *l;
    struct pt *pts;
    int n;
    double bx = 0, by = 0, div = 0, v, vmax = 0;
    const char *unit = "bytes";
    char *xlabel;
    bool has_base;

    if (!metric) {
        /* Pick the unit from the largest size. */
        if (jnum(base, "size_bytes", &v))
            vmax = v;
        cJSON_ArrayForEach(l, jget(doc, "lanes")) if (jnum(l, "size_bytes", &v) && v > vmax) vmax =
            v;
        div = vmax >= 1e9 ? 1e9 : vmax >= 1e6 ? 1e6 : vmax >= 1e3 ? 1e3 : 1;
        unit = div == 1e9 ? "GB" : div == 1e6 ? "MB" : div == 1e3 ? "kB" : "bytes";
    }
    n = collect_points(doc, metric, div, &pts);
    has_base = jnum(base, "score", &by) &&
               (metric ? jnum(jget(base, "metrics"), metric, &bx) : jnum(base, "size_bytes", &bx));
    if (!metric)
        bx /= div;
    xlabel = metric ? xstrdup(metric) : xasprintf("model size (%s)", unit);
    buf_puts(b, "<figure>\n");
    svg_scatter(b, title, xlabel, pts, n, has_base, bx, by);
    buf_puts(b, "</figure>\n");
    free(xlabel);
    free(pts);
}

/* ===== HTML ===== */

static const char html_style[] =
    "body{font-family:sans-serif;margin:24px;color:#111;background:#fafafa}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px}"
    "table{border-collapse:collapse;font-size:13px;background:#fff}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td.l{max-width:360px}"
    "th{background:#eee}td.l,th.l{text-align:left}"
    "tr.base td{background:#fff1f1}tr.unranked td{color:#777}"
    ".err{color:#b91c1c}.charts{display:flex;flex-wrap:wrap;gap:16px}"
    "figure{margin:0;background:#fff;border:1px solid #ddd}"
    "svg text{font-family:sans-serif}.title{font-size:15px;font-weight:bold}"
    ".tick{font-size:11px;fill:#444}.axis{font-size:13px;fill:#222}"
    ".grid{stroke:#e5e5e5}.baseline{stroke:#dc2626;stroke-dasharray:6 4}"
    ".plabel{font-size:11px;fill:#1e3a8a}.blabel{font-size:12px;fill:#dc2626}"
    "code{background:#eee;padding:1px 3px}.wide{overflow-x:auto}";

static void html_table(struct buf *b, const cJSON *doc)
{
    struct table t;
    build_table(&t, doc, "md", true);
    buf_puts(b, "<table>\n<tr>");
    for (int c = 0; c < t.ncols; c++) {
        buf_puts(b, c == 1 || c == 2 || c >= t.ncols - 3 ? "<th class=\"l\">" : "<th>");
        html_esc(b, t.cell[0][c]);
        buf_puts(b, "</th>");
    }
    buf_puts(b, "</tr>\n");
    for (int r = 1; r < t.nrows; r++) {
        bool base = !strcmp(t.cell[r][1] ? t.cell[r][1] : "", "baseline") &&
                    !strcmp(t.cell[r][0] ? t.cell[r][0] : "", "-") && r == 1;
        bool unranked = !strcmp(t.cell[r][0] ? t.cell[r][0] : "", "-");
        buf_printf(b, "<tr%s>", base ? " class=\"base\"" : unranked ? " class=\"unranked\"" : "");
        for (int c = 0; c < t.ncols; c++) {
            buf_puts(b, c == 1 || c == 2 || c >= t.ncols - 3 ? "<td class=\"l\">" : "<td>");
            html_esc(b, t.cell[r][c] ? t.cell[r][c] : "");
            buf_puts(b, "</td>");
        }
        buf_puts(b, "</tr>\n");
    }
    buf_puts(b, "</table>\n");
    table_free(&t);
}

char *report_html(const cJSON *doc)
{
    struct buf b, f;
    const char *sweep = jstr(doc, "sweep"), *err = jstr(doc, "error"), *sm = speed_metric(doc);
    char *title;

    buf_init(&b);
    buf_init(&f);
    buf_puts(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    buf_puts(&b, "<title>exaq sweep ");
    html_esc(&b, sweep ? sweep : "?");
    buf_printf(&b, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>Sweep ", html_style);
    html_esc(&b, sweep ? sweep : "?");
    buf_puts(&b, "</h1>\n<p>");
    formula_text(&f, doc);
    html_esc(&b, buf_cstr(&f));
    buf_puts(&b, "</p>\n");
    if (err) {
        buf_puts(&b, "<p class=\"err\"><b>Ranking failed:</b> ");
        html_esc(&b, err);
        buf_puts(&b, "</p>\n");
    }
    buf_puts(&b, "<h2>Charts</h2>\n<div class=\"charts\">\n");
    title = xasprintf("score vs %s", sm);
    chart(&b, doc, title, sm);
    free(title);
    chart(&b, doc, "score vs model size", NULL);
    buf_puts(&b, "</div>\n<h2>Ranking</h2>\n<div class=\"wide\">\n");
    html_table(&b, doc);
    buf_puts(&b, "</div>\n");
    buf_puts(&b, "<h2>Packages</h2>\n");
    package_lines(&b, doc, true);
    buf_puts(&b, "<p>Written by exaqd " EXAQ_VERSION ".</p>\n</body>\n</html>\n");
    buf_release(&f);
    return buf_steal(&b);
}

/* ===== files ===== */

static int write_one(const char *dir, const char *name, char *text_take, char **err)
{
    char *p = path_join(dir, name);
    int rc = file_write_atomic(p, text_take, strlen(text_take));
    if (rc < 0)
        *err = xasprintf("cannot write '%s': %s", p, strerror(-rc));
    free(p);
    free(text_take);
    return rc < 0 ? -1 : 0;
}

int report_write(const char *dir, const char *rank_json, char **err)
{
    cJSON *doc = cJSON_Parse(rank_json);
    int rc;
    *err = NULL;
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        *err = xstrdup("the rank document is not a JSON object");
        return -1;
    }
    rc = mkdir_p(dir, 0755);
    if (rc < 0) {
        *err = xasprintf("cannot create '%s': %s", dir, strerror(-rc));
        cJSON_Delete(doc);
        return -1;
    }
    rc = write_one(dir, "rank.csv", report_table(doc, "csv"), err);
    if (rc == 0)
        rc = write_one(dir, "report.md", report_markdown(doc), err);
    if (rc == 0)
        rc = write_one(dir, "report.html", report_html(doc), err);
    cJSON_Delete(doc);
    return rc;
}
