/*
 * rank: scoring and ordering of a sweep's lanes on plain structs (see rank.h for the formula).
 * Pure computation: no daemon state, no I/O, safe on the loop thread and in unit tests.
 */
#include "daemon/rank.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/jw.h"
#include "common/util.h"

/* ===== settings ===== */

void rank_settings_default(struct rank_settings *s)
{
    memset(s, 0, sizeof(*s));
    s->perf = xcalloc(1, sizeof(*s->perf));
    s->perf[0].metric = xstrdup("ppl");
    s->perf[0].higher_is_better = false;
    s->perf[0].weight = 1.0;
    s->nperf = 1;
    s->speed_metric = xstrdup("time_per_token");
    s->w_perf = 0.5;
    s->w_speed = 0.5;
    s->top = 3;
    s->max_zip_gb = 10;
    s->max_unzipped_gb = 32;
}

void rank_settings_release(struct rank_settings *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nperf; i++)
        free(s->perf[i].metric);
    free(s->perf);
    free(s->speed_metric);
    free(s->on_finish);
    free(s->on_fail);
    memset(s, 0, sizeof(*s));
}

/* A number field: absent or null keeps *out; anything else but a finite number is an error. */
static int get_num(const cJSON *o, const char *key, double *out, char **err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        *err = xasprintf("settings: '%s' is not a number", key);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int get_str(const cJSON *o, const char *key, char **out, char **err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v)) {
        *err = xasprintf("settings: '%s' is not a string", key);
        return -1;
    }
    free(*out);
    *out = xstrdup(v->valuestring);
    return 0;
}

static int parse_perf(const cJSON *arr, struct rank_settings *s, char **err)
{
    const cJSON *t;
    int n = cJSON_GetArraySize(arr), i = 0;
    if (!cJSON_IsArray(arr)) {
        *err = xasprintf("settings: 'score.perf' is not a list");
        return -1;
    }
    for (int k = 0; k < s->nperf; k++)
        free(s->perf[k].metric);
    free(s->perf);
    s->perf = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*s->perf));
    s->nperf = 0;
    cJSON_ArrayForEach(t, arr)
    {
        struct rank_perf_term *p = &s->perf[i];
        const cJSON *hib = cJSON_GetObjectItemCaseSensitive(t, "higher_is_better");
        if (!cJSON_IsObject(t)) {
            *err = xasprintf("settings: score.perf[%d] is not an object", i);
            return -1;
        }
        s->nperf = ++i;
        p->weight = 1.0;
        if (get_str(t, "metric", &p->metric, err) < 0 || get_num(t, "weight", &p->weight, err) < 0)
            return -1;
        if (!p->metric) {
            *err = xasprintf("settings: score.perf[%d] has no metric", i - 1);
            return -1;
        }
        if (hib && !cJSON_IsNull(hib) && !cJSON_IsBool(hib)) {
            *err = xasprintf("settings: score.perf[%d].higher_is_better is not a boolean", i - 1);
            return -1;
        }
        p->higher_is_better = cJSON_IsTrue(hib);
        if (p->weight < 0) {
            *err = xasprintf("settings: score.perf[%d].weight is negative", i - 1);
            return -1;
        }
    }
    return 0;
}

int rank_settings_parse(const char *json, struct rank_settings *s, char **err)
{
    cJSON *doc = cJSON_Parse(json ? json : "{}");
    const cJSON *score, *pkg, *perf;
    double top;
    *err = NULL;
    rank_settings_default(s);
    if (!cJSON_IsObject(doc)) {
        *err = xstrdup("settings: not a JSON object");
        goto fail;
    }
    score = cJSON_GetObjectItemCaseSensitive(doc, "score");
    pkg = cJSON_GetObjectItemCaseSensitive(doc, "package");
    if (cJSON_IsObject(score)) {
        perf = cJSON_GetObjectItemCaseSensitive(score, "perf");
        if (perf && !cJSON_IsNull(perf) && parse_perf(perf, s, err) < 0)
            goto fail;
        if (get_str(score, "speed_metric", &s->speed_metric, err) < 0 ||
            get_num(score, "w_perf", &s->w_perf, err) < 0 ||
            get_num(score, "w_speed", &s->w_speed, err) < 0)
            goto fail;
    }
    if (cJSON_IsObject(pkg)) {
        top = s->top;
        if (get_num(pkg, "top", &top, err) < 0 ||
            get_num(pkg, "max_zip_gb", &s->max_zip_gb, err) < 0 ||
            get_num(pkg, "max_unzipped_gb", &s->max_unzipped_gb, err) < 0)
            goto fail;
        if (top < 0 || top > 1000000) {
            *err = xstrdup("settings: package.top is out of range");
            goto fail;
        }
        s->top = (int)top;
    }
    if (get_str(doc, "on_finish", &s->on_finish, err) < 0 ||
        get_str(doc, "on_fail", &s->on_fail, err) < 0)
        goto fail;
    if (s->w_perf < 0 || s->w_speed < 0) {
        *err = xstrdup("settings: score weights must not be negative");
        goto fail;
    }
    cJSON_Delete(doc);
    return 0;
fail:
    cJSON_Delete(doc);
    rank_settings_release(s);
    return -1;
}

/* ===== result structs ===== */

void rank_result_init(struct rank_result *r, const char *sweep)
{
    memset(r, 0, sizeof(*r));
    r->sweep = xstrdup(sweep ? sweep : "");
    r->baseline.size_bytes = -1;
}

static void lane_release(struct rank_lane *l)
{
    free(l->id);
    free(l->group);
    free(l->status);
    free(l->model_dir);
    free(l->reason);
    proto_metrics_release(&l->metrics);
}

void rank_result_release(struct rank_result *r)
{
    if (!r)
        return;
    lane_release(&r->baseline);
    for (int i = 0; i < r->nlanes; i++)
        lane_release(&r->lanes[i]);
    free(r->lanes);
    free(r->sweep);
    free(r->error);
    memset(r, 0, sizeof(*r));
}

struct rank_lane *rank_result_add_lane(struct rank_result *r)
{
    struct rank_lane *l;
    r->lanes = xrealloc(r->lanes, (size_t)(r->nlanes + 1) * sizeof(*r->lanes));
    l = &r->lanes[r->nlanes];
    memset(l, 0, sizeof(*l));
    l->idx = r->nlanes++;
    l->size_bytes = -1;
    return l;
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? xstrdup(src) : NULL;
}

void rank_lane_set(struct rank_lane *l, const char *id, const char *group, const char *status,
                   const char *model_dir, int64_t size_bytes)
{
    set_str(&l->id, id);
    set_str(&l->group, group);
    set_str(&l->status, status);
    set_str(&l->model_dir, model_dir);
    l->size_bytes = size_bytes;
}

void rank_lane_set_reason(struct rank_lane *l, const char *fmt, ...)
{
    va_list ap;
    free(l->reason);
    va_start(ap, fmt);
    l->reason = xvasprintf(fmt, ap);
    va_end(ap);
}

bool rank_lane_metric(const struct rank_lane *l, const char *name, double *v)
{
    for (size_t i = 0; i < l->metrics.n; i++) {
        if (!strcmp(l->metrics.names[i], name)) {
            *v = l->metrics.values[i];
            return true;
        }
    }
    if (!strcmp(name, "size_bytes") && l->size_bytes >= 0) {
        *v = (double)l->size_bytes;
        return true;
    }
    return false;
}

/* ===== scoring ===== */

/* Appends "'name'" to a comma-separated list. */
static void list_add(struct buf *b, int *n, const char *name)
{
    buf_printf(b, "%s'%s'", *n ? ", " : "", name);
    (*n)++;
}

/* Checks the baseline; returns a new error string or NULL. */
static char *check_baseline(const struct rank_lane *b, const struct rank_settings *s,
                            double perf_wsum)
{
    struct buf miss;
    int nmiss = 0;
    char *e = NULL;
    double v;

    if (!b->status)
        return xstrdup("the sweep has no baseline lane");
    if (strcmp(b->status, "done")) {
        if (!strcmp(b->status, "running") || !strcmp(b->status, "queued"))
            return xasprintf("the baseline lane has not finished yet (%s)", b->status);
        return xasprintf("the baseline lane %s%s%s: the scores need its metrics", b->status,
                         b->reason ? ": " : "", b->reason ? b->reason : "");
    }
    if (s->w_perf > 0 && perf_wsum <= 0)
        return xstrdup("score.perf has no metric with a weight above 0 but weights.perf is "
                       "above 0");
    buf_init(&miss);
    if (s->w_perf > 0)
        for (int i = 0; i < s->nperf; i++)
            if (s->perf[i].weight > 0 && !rank_lane_metric(b, s->perf[i].metric, &v))
                list_add(&miss, &nmiss, s->perf[i].metric);
    if (s->w_speed > 0 && !rank_lane_metric(b, s->speed_metric, &v))
        list_add(&miss, &nmiss, s->speed_metric);
    if (nmiss) {
        e = xasprintf("the baseline lacks metric%s %s (its eval stages did not write %s)",
                      nmiss > 1 ? "s" : "", buf_cstr(&miss), nmiss > 1 ? "them" : "it");
        buf_release(&miss);
        return e;
    }
    buf_release(&miss);
    /* Denominators must be usable. */
    for (int i = 0; s->w_perf > 0 && i < s->nperf; i++) {
        if (s->perf[i].weight > 0 && rank_lane_metric(b, s->perf[i].metric, &v) &&
            !(isfinite(v) && v > 0))
            return xasprintf("the baseline's metric '%s' is %g; normalising needs a positive "
                             "baseline value",
                             s->perf[i].metric, v);
    }
    if (s->w_speed > 0 && rank_lane_metric(b, s->speed_metric, &v) && !(isfinite(v) && v > 0))
        return xasprintf("the baseline's metric '%s' is %g; SpeedNorm needs a positive baseline "
                         "value",
                         s->speed_metric, v);
    return NULL;
}

/* PerfNorm of lane l, or false (with *bad naming a metric whose value is unusable). */
static bool perf_norm(const struct rank_lane *l, const struct rank_lane *b,
                      const struct rank_settings *s, double wsum, double *out, const char **bad)
{
    double acc = 0;
    *bad = NULL;
    if (wsum <= 0)
        return false;
    for (int i = 0; i < s->nperf; i++) {
        const struct rank_perf_term *t = &s->perf[i];
        double v, base, norm;
        if (t->weight <= 0)
            continue;
        if (!rank_lane_metric(l, t->metric, &v) || !rank_lane_metric(b, t->metric, &base))
            return false;
        if (!(isfinite(base) && base > 0))
            return false;
        if (t->higher_is_better) {
            norm = v / base;
        } else {
            if (v == 0) {
                *bad = t->metric;
                return false;
            }
            norm = base / v;
        }
        if (!isfinite(norm)) {
            *bad = t->metric;
            return false;
        }
        acc += (t->weight / wsum) * norm;
    }
    *out = acc;
    return true;
}

/* The name of the paired metric that goes with the speed metric: P + "time_per_token" gives
 * P + what; NULL when the speed metric is another one. New string. */
static char *paired_name(const char *speed_metric, const char *what)
{
    static const char tpt[] = "time_per_token";
    size_t n = strlen(speed_metric), k = sizeof(tpt) - 1;
    if (n < k || strcmp(speed_metric + n - k, tpt) != 0 ||
        (n > k && speed_metric[n - k - 1] != '.'))
        return NULL;
    return xasprintf("%.*s%s", (int)(n - k), speed_metric, what);
}

static bool speed_norm(struct rank_lane *l, const struct rank_lane *b,
                       const struct rank_settings *s, double *out)
{
    double t, tb, ratio, iqr;
    char *rn = paired_name(s->speed_metric, "speed_ratio");
    char *in = paired_name(s->speed_metric, "speed_ratio_iqr");
    bool have = rn && rank_lane_metric(l, rn, &ratio) && isfinite(ratio) && ratio > 0;
    free(rn);
    l->paired = false;
    l->score_spread = 0;
    if (have && l != b && rank_lane_metric(l, s->speed_metric, &t) && isfinite(t)) {
        l->paired = true;
        if (in && rank_lane_metric(l, in, &iqr) && isfinite(iqr) && iqr > 0)
            l->score_spread = s->w_speed * iqr;
        free(in);
        *out = 1.0 - ratio;
        return true;
    }
    free(in);
    if (!rank_lane_metric(l, s->speed_metric, &t) || !rank_lane_metric(b, s->speed_metric, &tb))
        return false;
    if (!(isfinite(tb) && tb > 0) || !isfinite(t))
        return false;
    *out = 1.0 - t / tb;
    return true;
}

static void score_lane(struct rank_lane *l, const struct rank_lane *b,
                       const struct rank_settings *s, double wsum)
{
    struct buf miss;
    int nmiss = 0;
    double v, score = 0;
    const char *bad = NULL;

    l->has_perf = perf_norm(l, b, s, wsum, &l->perf_norm, &bad);
    l->has_speed = speed_norm(l, b, s, &l->speed_norm);
    buf_init(&miss);
    if (s->w_perf > 0)
        for (int i = 0; i < s->nperf; i++)
            if (s->perf[i].weight > 0 && !rank_lane_metric(l, s->perf[i].metric, &v))
                list_add(&miss, &nmiss, s->perf[i].metric);
    if (s->w_speed > 0 && !rank_lane_metric(l, s->speed_metric, &v))
        list_add(&miss, &nmiss, s->speed_metric);
    if (nmiss) {
        rank_lane_set_reason(l, "missing metric%s %s", nmiss > 1 ? "s" : "", buf_cstr(&miss));
    } else if (s->w_perf > 0 && !l->has_perf) {
        rank_lane_set_reason(l, "metric '%s' is 0: base/perf is undefined", bad ? bad : "(perf)");
    } else if (s->w_speed > 0 && !l->has_speed) {
        rank_lane_set_reason(l, "metric '%s' is not a finite number", s->speed_metric);
    } else {
        if (s->w_perf > 0)
            score += s->w_perf * l->perf_norm;
        if (s->w_speed > 0)
            score += s->w_speed * l->speed_norm;
        if (!(score > 0))
            score = 0; /* also turns -0 into 0 */
        l->score = score;
        l->ranked = true;
    }
    buf_release(&miss);
}

static int lane_cmp(const void *a, const void *b)
{
    const struct rank_lane *x = a, *y = b;
    if (x->ranked != y->ranked)
        return x->ranked ? -1 : 1;
    if (x->ranked && x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->idx - y->idx;
}

int rank_compute(struct rank_result *r, const struct rank_settings *s)
{
    double wsum = 0;
    int n = 0;

    free(r->error);
    r->error = NULL;
    for (int i = 0; i < s->nperf; i++)
        if (s->perf[i].weight > 0)
            wsum += s->perf[i].weight;
    for (int i = 0; i < r->nlanes; i++) {
        struct rank_lane *l = &r->lanes[i];
        l->ranked = false;
        l->rank = 0;
        l->score = 0;
        l->has_perf = l->has_speed = false;
        if (l->status && !strcmp(l->status, "done")) {
            free(l->reason);
            l->reason = NULL;
        }
    }
    r->error = check_baseline(&r->baseline, s, wsum);
    r->baseline.ranked = r->baseline.has_perf = r->baseline.has_speed = false;
    if (!r->error) {
        /* The baseline against itself: PerfNorm 1, SpeedNorm 0 (for reports). */
        free(r->baseline.reason);
        r->baseline.reason = NULL;
        score_lane(&r->baseline, &r->baseline, s, wsum);
    }
    for (int i = 0; i < r->nlanes; i++) {
        struct rank_lane *l = &r->lanes[i];
        if (!l->status || strcmp(l->status, "done")) {
            if (!l->reason)
                rank_lane_set_reason(l, "%s", l->status ? l->status : "unknown status");
            continue;
        }
        if (r->error)
            rank_lane_set_reason(l, "not ranked: %s", r->error);
        else
            score_lane(l, &r->baseline, s, wsum);
    }
    if (r->nlanes > 1)
        qsort(r->lanes, (size_t)r->nlanes, sizeof(*r->lanes), lane_cmp);
    for (int i = 0; i < r->nlanes; i++) {
        r->lanes[i].tie = 0;
        if (r->lanes[i].ranked)
            r->lanes[i].rank = ++n;
    }
    /* Ties: neighbours closer than the larger of their score spreads (rank.h). */
    for (int i = 0; i + 1 < n; i++) {
        struct rank_lane *x = &r->lanes[i], *y = &r->lanes[i + 1];
        double spread = x->score_spread > y->score_spread ? x->score_spread : y->score_spread;
        if (spread > 0 && x->score - y->score < spread) {
            if (!x->tie)
                x->tie = x->rank;
            y->tie = x->tie;
        }
    }
    return n;
}

/* ===== JSON ===== */

static void write_metrics(struct jw *w, const struct proto_metrics *m)
{
    jw_obj_begin(w);
    for (size_t i = 0; i < m->n; i++)
        jw_knum(w, m->names[i], m->values[i]);
    jw_obj_end(w);
}

static void write_opt_num(struct jw *w, const char *key, bool has, double v)
{
    jw_key(w, key);
    if (has)
        jw_num(w, v);
    else
        jw_null(w);
}

char *rank_result_json(const struct rank_result *r, const char *settings_json)
{
    struct buf b;
    struct jw w;
    const struct rank_lane *bl = &r->baseline;
    cJSON *settings = settings_json ? cJSON_Parse(settings_json) : NULL;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "sweep", r->sweep);
    if (r->error)
        jw_kstr(&w, "error", r->error);
    jw_key(&w, "baseline");
    jw_obj_begin(&w);
    jw_key(&w, "metrics");
    write_metrics(&w, &bl->metrics);
    jw_kstr(&w, "status", bl->status);
    if (bl->reason)
        jw_kstr(&w, "reason", bl->reason);
    jw_key(&w, "size_bytes");
    if (bl->size_bytes >= 0)
        jw_int(&w, bl->size_bytes);
    else
        jw_null(&w);
    if (bl->model_dir)
        jw_kstr(&w, "model_dir", bl->model_dir);
    if (!r->error && bl->ranked) {
        /* The baseline scored against itself (PerfNorm 1, SpeedNorm 0), for the charts. */
        write_opt_num(&w, "score", true, bl->score);
        write_opt_num(&w, "perf_norm", bl->has_perf, bl->perf_norm);
        write_opt_num(&w, "speed_norm", bl->has_speed, bl->speed_norm);
    }
    jw_obj_end(&w);
    jw_key(&w, "lanes");
    jw_arr_begin(&w);
    for (int i = 0; i < r->nlanes; i++) {
        const struct rank_lane *l = &r->lanes[i];
        jw_obj_begin(&w);
        jw_kstr(&w, "lane", l->id);
        jw_key(&w, "rank");
        if (l->ranked)
            jw_int(&w, l->rank);
        else
            jw_null(&w);
        jw_kstr(&w, "status", l->status);
        write_opt_num(&w, "score", l->ranked, l->score);
        write_opt_num(&w, "perf_norm", l->has_perf, l->perf_norm);
        write_opt_num(&w, "speed_norm", l->has_speed, l->speed_norm);
        if (l->ranked && l->paired)
            jw_knum(&w, "score_spread", l->score_spread);
        if (l->ranked && l->tie)
            jw_kint(&w, "tie", l->tie);
        jw_key(&w, "metrics");
        write_metrics(&w, &l->metrics);
        jw_key(&w, "size_bytes");
        if (l->size_bytes >= 0)
            jw_int(&w, l->size_bytes);
        else
            jw_null(&w);
        if (l->group)
            jw_kstr(&w, "group", l->group);
        if (l->reason && !l->ranked)
            jw_kstr(&w, "reason", l->reason);
        if (l->model_dir)
            jw_kstr(&w, "model_dir", l->model_dir);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    if (cJSON_IsObject(settings)) {
        char *txt = cJSON_PrintUnformatted(settings);
        jw_key(&w, "settings");
        jw_raw(&w, txt);
        cJSON_free(txt);
    }
    jw_obj_end(&w);
    cJSON_Delete(settings);
    return buf_steal(&b);
}
