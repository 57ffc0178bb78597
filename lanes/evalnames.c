/*
 * evalnames: the metric names an eval stage writes, as its lane sees them, and the check that
 * no two evals of a sweep write the same one (docs/evals.md "Named evals").
 *
 * A named eval (`name: wiki`) writes every metric as NAME.METRIC; exaqd applies the prefix in
 * one place, when it gathers a lane's metrics from its stages (daemon/finish.c lane_fill), so
 * the worker, the stage cache and the metrics table keep the kind's own names. Here, at parse
 * time, each eval gets the list of names it will write: "NAME." (a family: every NAME.x) for a
 * named eval, the kind's fixed names for an unnamed native or vLLM eval, "TASK." per task for
 * an unnamed lm_eval, nothing for an unnamed exec eval (its names are known only when it runs).
 * Two evals whose lists meet are an error at the second one's position.
 */
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "lanes/schema.h"

/* The fixed metric names of each eval kind (NULL-terminated), as the worker writes them. */
struct kind_writes {
    const char *kind;
    const char *names[16];
};
static const struct kind_writes kind_writes[] = {
    { "ppl", { "ppl", "nll_mean", "eval_tokens", NULL } },
    { "mcqa", { "mcqa_acc", "mcqa_acc_norm", "mcqa_items", NULL } },
    { "speed",
      { "time_per_token", "decode_tok_s", "prefill_tok_s", "baseline_time_per_token", "speed_ratio",
        "speed_ratio_iqr", "speed_pairs", NULL } },
    { "vllm_speed",
      { "time_per_token", "latency_avg", "latency_std", "latency_p10", "latency_p25", "latency_p50",
        "latency_p75", "latency_p90", "latency_p99", "latency_min", "latency_max", "vllm_iters",
        NULL } },
    /* mcqa_gen also writes mcqa_gen_acc_CATEGORY per item category: two unnamed mcqa_gen
     * evals already meet on the fixed names. */
    { "mcqa_gen", { "mcqa_gen_acc", "mcqa_gen_parse_fail", "mcqa_gen_n", NULL } },
    { "qa", { "qa_f1", "qa_exact_match", "qa_f1_char", "qa_n", "qa_truncated", NULL } },
};

int lanes__eval_name_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_'))
            return 0;
    return n >= 1 && n <= LANES_EVAL_NAME_MAX;
}

static void writes_add(struct lanes_stage *st, char *s)
{
    st->writes = xrealloc(st->writes, (st->nwrites + 1) * sizeof(*st->writes));
    st->writes[st->nwrites++] = s;
}

void lanes__eval_writes(struct lanes_stage *st, const char *const *tasks, size_t ntasks)
{
    if (st->eval_name) {
        writes_add(st, xasprintf("%s.", st->eval_name));
        return;
    }
    if (strcmp(st->kind, "lm_eval") == 0) {
        for (size_t i = 0; i < ntasks; i++)
            writes_add(st, xasprintf("%s.", tasks[i]));
        return;
    }
    for (size_t k = 0; k < EXAQ_ARRAY_LEN(kind_writes); k++)
        if (strcmp(kind_writes[k].kind, st->kind) == 0)
            for (const char *const *p = kind_writes[k].names; *p; p++)
                writes_add(st, xstrdup(*p));
}

/* Whether two written names meet: equal, or one is a family ("x.") the other falls in. */
static int names_meet(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (strcmp(a, b) == 0)
        return 1;
    if (la && a[la - 1] == '.' && strncmp(a, b, la) == 0)
        return 1;
    return lb && b[lb - 1] == '.' && strncmp(a, b, lb) == 0;
}

/* The name to show for a meeting: the exact one when one side is a family. */
static char *shown(const char *a, const char *b)
{
    size_t la = strlen(a);
    if (la && a[la - 1] == '.') {
        size_t lb = strlen(b);
        return lb && b[lb - 1] == '.' ? xasprintf("%s*", a) : xstrdup(b);
    }
    return xstrdup(a);
}

void lanes__eval_collisions(struct lanes__ctx *c, const struct lanes_stage *ev, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        int found = 0;
        for (size_t j = 0; j < i && !found; j++)
            for (size_t a = 0; a < ev[i].nwrites && !found; a++)
                for (size_t b = 0; b < ev[j].nwrites && !found; b++) {
                    char *m;
                    if (!names_meet(ev[i].writes[a], ev[j].writes[b]))
                        continue;
                    found = 1;
                    m = shown(ev[i].writes[a], ev[j].writes[b]);
                    lanes__err_at(c, ev[i].line, ev[i].col,
                                  "eval '%s' would write metric '%s', which eval '%s' (line %d) "
                                  "also writes (hint: give one of them 'name: NAME' so its "
                                  "metrics become NAME.METRIC)",
                                  ev[i].name, m, ev[j].name, ev[j].line);
                    free(m);
                }
    }
}
