/*
 * eval: the pieces of the native evaluation stages (worker/stages/stage_eval.c): the perplexity
 * window protocol of
 * tests/data/tiny-a/README.md, and multiple-choice scoring with lm-evaluation-harness
 * conventions (JSONL items, whitespace moved to the continuation, context computed once in the
 * KV cache and every choice scored from the cached state).
 *
 * Nothing here talks to the worker or the daemon: functions return 0 or a negative errno-style
 * code with a new lowercase message in *err that the caller frees (docs/design.md, "Errors");
 * the message names the file and line where there is one. Never a crash on bad input.
 */
#ifndef EXAQ_EVAL_H
#define EXAQ_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "worker/engine/model.h"
#include "worker/engine/tokdata.h"
#include "worker/engine/tokenizer.h"

/* ---- perplexity windows ------------------------------------------------------------------ */

/*
 * The perplexity protocol: window w has inputs ids[L*w .. L*w+L-1] and targets
 * ids[L*w+1 .. L*w+L], so it needs the ids up to index L*w+L and n ids hold (n - 1) / L full
 * windows. Every window is an independent sequence starting at position 0. Returns the number
 * of windows to evaluate: all that fit, capped by max_windows when max_windows > 0 (0 when not
 * even one fits or seq_len < 1).
 */
int64_t eval_ppl_windows(size_t n, int seq_len, int64_t max_windows);

/* Calibration sequences: window w is ids[L*w .. L*w+L-1] (consecutive, no overlap), so n ids
 * hold n / L of them; capped by max_samples when > 0. */
int64_t eval_seq_windows(size_t n, int seq_len, int64_t max_samples);

struct eval_ppl_result {
    double nll_sum;  /* sum of the token NLLs, in nats */
    int64_t tokens;  /* targets scored: windows * seq_len */
    int64_t windows; /* windows evaluated */
};

/* Called before each window and once at the end (done = windows finished so far, of total); a
 * positive return stops the run, which then returns that value (positive, so it never collides
 * with the negative errno-style codes). */
typedef int (*eval_window_fn)(void *arg, int64_t done, int64_t total);

/*
 * Runs the perplexity protocol over ids[0..n-1] with model_nll (one independent sequence per
 * window, no cache): every window of eval_ppl_windows(n, seq_len, max_windows). fn may be NULL.
 * Returns 0 (res filled), a negative errno-style code with *err set (-EINVAL when not even one
 * window fits), or fn's positive value.
 */
int eval_ppl_run(struct model *m, const int32_t *ids, size_t n, int seq_len, int64_t max_windows,
                 eval_window_fn fn, void *arg, struct eval_ppl_result *res, char **err);

/* ---- multiple choice (lm-evaluation-harness conventions) ---------------------------------- */

struct eval_mcqa_item {
    char *prompt;
    char **choices;
    int nchoices; /* >= 2 */
    int answer;   /* index into choices */
    int line;     /* 1-based line of the JSONL file */
};

struct eval_mcqa_set {
    struct eval_mcqa_item *items;
    int n;
};

/*
 * Reads a JSONL file of {"prompt": string, "choices": [string, ...], "answer": integer} objects
 * (other keys are ignored, blank lines skipped) into set (release with eval_mcqa_release, also
 * after a failure). Stops after limit items when limit > 0. Each line is validated; the message
 * names the file and line: bad JSON, not an object, a missing or mistyped field, fewer than two
 * choices, an answer that is not an integer index into choices. An empty file is an error.
 */
int eval_mcqa_load(const char *path, int limit, struct eval_mcqa_set *set, char **err);
void eval_mcqa_release(struct eval_mcqa_set *set);

/* Bytes of trailing whitespace of s[0..len-1], where whitespace is what Python's str.isspace()
 * accepts (so prompt.rstrip() is s[0 .. len - result]). s is UTF-8. */
size_t eval_trailing_space(const char *s, size_t len);

/* Characters (Unicode code points, Python's len()) of a UTF-8 string; an invalid byte counts as
 * one character. */
size_t eval_utf8_chars(const char *s);

/* Index of the first maximum of v[0..n-1] (NaN never wins); 0 when n < 1. */
int eval_argmax_first(const double *v, int n);

struct eval_mcqa; /* a scorer: model, tokenizer, KV cache and scratch buffers */

/* A scorer for model m and tokenizer t (both borrowed; they must outlive it). */
struct eval_mcqa *eval_mcqa_new(struct model *m, const struct tok *t);
void eval_mcqa_free(struct eval_mcqa *s);

/*
 * Scores one item as lm-evaluation-harness does. With n = len(prompt) - len(prompt.rstrip()):
 * context = prompt[:-n], continuation = prompt[-n:] + choice (n = 0: the prompt as is); the
 * continuation tokens are encode(context + continuation)[len(encode(context)):] and the model
 * input is encode(context) followed by them. sums[c] = the sum of the log-probabilities of
 * choice c's continuation tokens. The context runs once (prefill into the KV cache); every
 * choice continues from the cached state. ntok[c] (may be NULL) receives the token count of the
 * continuation. An empty context gets the model's bos_token_id (else eos_token_id) as a
 * one-token context and the continuation is encoded alone, as lm-eval does.
 */
int eval_mcqa_score(struct eval_mcqa *s, const struct eval_mcqa_item *it, double *sums, int *ntok,
                    char **err);

/* Picks for one item: acc picks argmax sums[c]; acc_norm picks argmax sums[c] / chars(choice c)
 * (lm-eval's acc_norm: the length of the choice string in characters, without the moved
 * whitespace). Ties go to the first maximum. An empty choice has norm score -inf. */
void eval_mcqa_pick(const struct eval_mcqa_item *it, const double *sums, int *pick, int *pick_norm);

/* ---- robust statistics of repeated timings (the speed eval) ------------------------------ */

/* The q-quantile (0 <= q <= 1) of v[0..n-1] with linear interpolation between order statistics
 * (NumPy's default, "type 7"): sorts v in place. 0 when n < 1. */
double eval_quantile(double *v, int n, double q);
/* The median (eval_quantile 0.5) and the interquartile range (q0.75 - q0.25); sort v in place. */
double eval_median(double *v, int n);
double eval_iqr(double *v, int n);

#endif
