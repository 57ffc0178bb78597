/*
 * vocab: the names of the shared vocabulary (vocab.h).
 */
#include "proto/vocab.h"

#include <string.h>

#include "common/util.h"

#define NAME(e, name, ...) [e] = name,
static const char *const fail_names[] = { VOCAB_FAIL_CLASSES(NAME) };
static const char *const stage_names[] = { VOCAB_STAGE_STATES(NAME) };
static const char *const lane_names[] = { VOCAB_LANE_STATES(NAME) };
static const char *const view_names[] = { VOCAB_VIEW_STATES(NAME) };
static const char *const attempt_names[] = { VOCAB_ATTEMPT_STATES(NAME) };
#undef NAME
#define RETRIED(e, name, r) [e] = r,
static const bool fail_retried[] = { VOCAB_FAIL_CLASSES(RETRIED) };
#undef RETRIED

/* Index of s in names[0..n), or -1. */
static int find(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; s && i < n; i++)
        if (!strcmp(s, names[i]))
            return (int)i;
    return -1;
}

const char *fail_class_name(enum fail_class c)
{
    return (size_t)c < EXAQ_ARRAY_LEN(fail_names) ? fail_names[c] : "error";
}

enum fail_class fail_class_parse(const char *s)
{
    int i = find(fail_names, EXAQ_ARRAY_LEN(fail_names), s);
    return i > 0 ? (enum fail_class)i : FAIL_ERROR;
}

bool fail_class_retried(enum fail_class c)
{
    return (size_t)c < EXAQ_ARRAY_LEN(fail_retried) && fail_retried[c];
}

const char *dstage_state_name(enum dstage_state s)
{
    return stage_names[s];
}

enum dstage_state dstage_state_parse(const char *s)
{
    int i = find(stage_names, EXAQ_ARRAY_LEN(stage_names), s);
    return i >= 0 ? (enum dstage_state)i : DSTAGE_PENDING;
}

const char *lane_state_name(enum lane_state s)
{
    return lane_names[s];
}

const char *view_state_name(enum view_state s)
{
    return (size_t)s < EXAQ_ARRAY_LEN(view_names) ? view_names[s] : "?";
}

enum view_state view_state_parse(const char *s)
{
    int i = find(view_names, EXAQ_ARRAY_LEN(view_names), s);
    return i >= 0 ? (enum view_state)i : VIEW__UNKNOWN;
}

const char *attempt_state_name(enum attempt_state s)
{
    return attempt_names[s];
}

bool vocab_metric_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    return n >= 1 && n <= VOCAB_METRIC_NAME_MAX;
}

bool vocab_slurm_state_ended(const char *state, enum fail_class *cls, bool *no_retry_used)
{
#define SLURM_ROW(n, c, nr) { n, c, nr },
    static const struct {
        const char *name;
        enum fail_class cls;
        bool no_retry;
    } map[] = { VOCAB_SLURM_END_STATES(SLURM_ROW) };
#undef SLURM_ROW
    *cls = FAIL_NONE;
    *no_retry_used = false;
    if (!state)
        return false;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        size_t n = strlen(map[i].name);
        if (!strncmp(state, map[i].name, n) && (state[n] == 0 || state[n] == ' ')) {
            *cls = map[i].cls;
            *no_retry_used = map[i].no_retry;
            return true;
        }
    }
    return false;
}
