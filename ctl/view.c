/*
 * view: human-readable status: one block per sweep, one line per lane, one line per stage,
 * progress bars with ETA for running stages, the last output line, and errors.
 */
#include "ctl/ctl.h"

#include <math.h>
#include <string.h>
#include <time.h>

const char *view_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

double view_num(const cJSON *o, const char *key, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

const cJSON *view_find_sweep(const cJSON *status, const char *id)
{
    const cJSON *sw, *list = cJSON_GetObjectItemCaseSensitive(status, "sweeps");
    cJSON_ArrayForEach(sw, list)
    {
        const char *sid = view_str(sw, "id");
        if (sid && (!id || !strcmp(sid, id) || !strncmp(sid, id, strlen(id))))
            return sw;
    }
    return NULL;
}

bool view_sweep_finished(const cJSON *sweep)
{
    const char *s = view_str(sweep, "state");
    return s && !strcmp(s, "ended");
}

static const char *color_of(const char *state, bool color)
{
    if (!color || !state)
        return "";
    switch (view_state_parse(state)) { /* lane states are view-state names too */
    case VIEW_DONE:
        return "\033[32m";
    case VIEW_RUNNING:
        return "\033[36m";
    case VIEW_FAILED:
        return "\033[31m";
    case VIEW_CANCELLED:
    case VIEW_SKIPPED:
        return "\033[33m";
    default:
        return "";
    }
}

static void fmt_dur(double s, char *out, size_t n)
{
    if (s < 0 || !isfinite(s))
        snprintf(out, n, "?");
    else if (s < 60)
        snprintf(out, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void fmt_bytes(double b, char *out, size_t n)
{
    const char *u[] = { "B", "KB", "MB", "GB", "TB" };
    int i = 0;
    while (b >= 1000 && i < 4) {
        b /= 1000;
        i++;
    }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void print_metrics(FILE *f, const cJSON *metrics)
{
    const cJSON *m;
    int n = 0;
    cJSON_ArrayForEach(m, metrics)
    {
        if (n >= 6) {
            fprintf(f, " ...");
            break;
        }
        fprintf(f, "%s%s=%.6g", n ? " " : "  ", m->string, m->valuedouble);
        n++;
    }
}

static void print_stage(FILE *f, const cJSON *st, bool bars, bool color)
{
    const char *state = view_str(st, "state");
    const char *reset = color ? "\033[0m" : "";
    const cJSON *prog = cJSON_GetObjectItemCaseSensitive(st, "progress");
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(st, "error");
    fprintf(f, "    %-20s %s%-9s%s", view_str(st, "name"), color_of(state, color), state, reset);
    if (prog) {
        double done = view_num(prog, "done", 0), total = view_num(prog, "total", 0);
        double el = view_num(prog, "elapsed_s", 0), eta = view_num(prog, "eta_s", -1);
        char e1[32], e2[32];
        fmt_dur(el, e1, sizeof(e1));
        if (total > 0) {
            double frac = done / total;
            if (frac > 1)
                frac = 1;
            if (bars) {
                int w = 24, k = (int)(frac * w + 0.5);
                fputs(" [", f);
                for (int i = 0; i < w; i++)
                    fputc(i < k ? '#' : '-', f);
                fputs("]", f);
            }
            fprintf(f, " %3.0f%%", frac * 100);
            if (eta >= 0) {
                fmt_dur(eta, e2, sizeof(e2));
                fprintf(f, " ETA %s", e2);
            }
        }
        fprintf(f, " (%s", e1);
        if (view_str(prog, "what"))
            fprintf(f, ", %s", view_str(prog, "what"));
        fputs(")", f);
    } else if (!strcmp(state, "done")) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "reused")))
            fputs(" (reused)", f);
        print_metrics(f, cJSON_GetObjectItemCaseSensitive(st, "metrics"));
    }
    if (view_num(st, "attempts", 0) > 1)
        fprintf(f, "  [attempt %.0f]", view_num(st, "attempts", 0));
    {
        const cJSON *sl = cJSON_GetObjectItemCaseSensitive(st, "slurm");
        if (sl && view_num(sl, "job_id", 0) > 0)
            fprintf(f, "  [slurm job %.0f %s]", view_num(sl, "job_id", 0), view_str(sl, "state"));
        else if (sl)
            fprintf(f, "  [slurm %s %s]", view_str(sl, "name"), view_str(sl, "state"));
    }
    fputc('\n', f);
    if (err && state && strcmp(state, "done")) {
        fprintf(f, "      %s: %s\n", view_str(err, "class"), view_str(err, "msg"));
    }
    if (prog && view_str(st, "last_line") && bars)
        fprintf(f, "      | %.110s\n", view_str(st, "last_line"));
}

void view_status(FILE *f, const cJSON *status, bool bars, bool color)
{
    const cJSON *sw, *sweeps = cJSON_GetObjectItemCaseSensitive(status, "sweeps");
    const cJSON *daemon = cJSON_GetObjectItemCaseSensitive(status, "daemon");
    const cJSON *slots = cJSON_GetObjectItemCaseSensitive(daemon, "slots"), *sl;
    const char *reset = color ? "\033[0m" : "";
    int nslots = 0, busy = 0;
    cJSON_ArrayForEach(sl, slots)
    {
        nslots++;
        busy += view_str(sl, "state") && !strcmp(view_str(sl, "state"), "busy");
    }
    fprintf(f, "exaqd pid %.0f, %d slot%s (%d busy)\n", view_num(daemon, "pid", 0), nslots,
            nslots == 1 ? "" : "s", busy);
    if (cJSON_GetArraySize(sweeps) == 0) {
        fprintf(f, "no sweeps (exaqctl submit FILE.yaml queues one)\n");
        return;
    }
    cJSON_ArrayForEach(sw, sweeps)
    {
        const cJSON *counts = cJSON_GetObjectItemCaseSensitive(sw, "counts");
        const cJSON *lanes = cJSON_GetObjectItemCaseSensitive(sw, "lanes"), *l;
        time_t t = (time_t)view_num(sw, "created", 0);
        char when[32];
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M", localtime(&t));
        fprintf(f,
                "\nsweep %s  %s  (%d lanes: %.0f done, %.0f running, %.0f queued, %.0f failed, "
                "%.0f cancelled; submitted %s)\n",
                view_str(sw, "id"), view_str(sw, "state"), cJSON_GetArraySize(lanes),
                view_num(counts, "done", 0), view_num(counts, "running", 0),
                view_num(counts, "queued", 0), view_num(counts, "failed", 0),
                view_num(counts, "cancelled", 0), when);
        cJSON_ArrayForEach(l, lanes)
        {
            const char *state = view_str(l, "state");
            const cJSON *stages = cJSON_GetObjectItemCaseSensitive(l, "stages"), *st;
            char sz[32] = "";
            if (view_num(l, "size_bytes", -1) >= 0)
                fmt_bytes(view_num(l, "size_bytes", 0), sz, sizeof(sz));
            fprintf(f, "  %-30s %s%-9s%s %s\n", view_str(l, "id"), color_of(state, color), state,
                    reset, sz);
            cJSON_ArrayForEach(st, stages) print_stage(f, st, bars, color);
        }
    }
}
