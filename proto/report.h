/*
 * report: renders a rank document (the `exaqctl rank --json` object, with the package
 * outcomes merged in) as a text table, CSV, Markdown and a self-contained HTML page with
 * inline SVG charts, and writes rank.csv, report.md and report.html.
 *
 * The renderers are pure functions of the document, shared by exaqctl (rank --csv/--md print
 * exactly what rank.csv and the table of report.md hold) and exaqd. report_write() blocks
 * (file writes): call it from a uv_queue_work body. The HTML references nothing outside
 * itself: no scripts, no fonts, no http(s) URLs, so it renders offline.
 */
#ifndef EXAQ_REPORT_H
#define EXAQ_REPORT_H

#include <cJSON.h>

/*
 * Adds the package outcomes of a package document (pkg.h) to a rank document: each listed
 * lane gets "package": {"ok": ..., "top"|"reason": ..., ...}, and the document gets
 * "package": {"dir", "top", "packaged", "error"?}. pkg_json may be NULL (nothing added).
 * Returns a new string; an unreadable rank_json is returned copied as is.
 */
char *report_merge_package(const char *rank_json, const char *pkg_json);

/*
 * The rank table: format "table" (aligned columns for a terminal), "csv" (header + one row
 * per lane, numbers in shortest round-trip form, no baseline row) or "md" (a Markdown table
 * with a baseline row). Columns: rank, lane, status, score, perf_norm, speed_norm, size_bytes,
 * every metric name seen, package, package_reason, reason. Returns a new string.
 */
char *report_table(const cJSON *doc, const char *format);

/* The whole report.md / report.html text. Returns a new string. */
char *report_markdown(const cJSON *doc);
char *report_html(const cJSON *doc);

/* Writes dir/rank.csv, dir/report.md and dir/report.html atomically. 0, or -1 with *err (new
 * string). */
int report_write(const char *dir, const char *rank_json, char **err);

#endif
