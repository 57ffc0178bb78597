/*
 * mcqa_gen: multiple choice with a generated answer (KMMLU style), and the pieces the generated-
 * answer evals share (qa.h uses them): JSONL reading, template filling, thought-block removal.
 * The rules are written down in docs/evals.md ("mcqa_gen"); everything here is a pure function
 * of its inputs so the unit tests check it on recorded generations.
 *
 * Items (one JSON object per line, blank lines skipped): "question" (string); the choices as
 * "choices" (a list of 2 to 10 strings) or as fields "A", "B", ... (consecutive from "A", 2 to
 * 10); "answer": a letter "A".."J" (a string, case-insensitive) or a 1-based integer index (as
 * KMMLU ships it); optional "category" (a string; KMMLU's "Category" is taken too). Other keys are
 * ignored.
 *
 * Functions return 0 or a negative errno-style code with a lowercase message in err (a caller
 * buffer of errlen bytes).
 */
#ifndef EXAQ_EVALS_MCQA_GEN_H
#define EXAQ_EVALS_MCQA_GEN_H

#include <stddef.h>

#include "common/util.h"

#define MCQA_GEN_MAX_CHOICES 10

/* KMMLU's lm-evaluation-harness prompt: the question, one "X. choice" line per choice, then
 * "정답:". */
#define MCQA_GEN_DEFAULT_TEMPLATE "{question}\n{choices}\n정답:"

struct mcqa_gen_item {
    char *question;
    char **choices;
    int nchoices;
    int answer;     /* 0-based */
    char *category; /* NULL when the item has none */
    int line;       /* 1-based line of the file */
};

struct mcqa_gen_set {
    struct mcqa_gen_item *items;
    int n;
};

/* Reads the items (limit > 0: at most limit). Errors name the file and line. An empty file is
 * an error. Release with mcqa_gen_release, also after a failure. */
int mcqa_gen_load(const char *path, int limit, struct mcqa_gen_set *set, char *err, size_t errlen);
void mcqa_gen_release(struct mcqa_gen_set *set);

/*
 * The user text of one item: few-shot items shots[0..nshots-1] first, each as its filled
 * template followed by " " and its answer letter and a blank line ("\n\n"), then the item's
 * filled template. Filling replaces every "{question}" with the question and every "{choices}"
 * with the lines "A. choice" ... joined by "\n"; nothing else in the template changes.
 */
void mcqa_gen_prompt(const char *tmpl, const struct mcqa_gen_item *shots, int nshots,
                     const struct mcqa_gen_item *it, struct buf *out);

/*
 * The answer of a generated text, as a 0-based choice index, or -1 (a parse failure). After
 * evgen_strip_thoughts:
 *   1. marker rule: at every occurrence of a marker ("answer", any case, or "답", which also
 *      covers "정답"), skip what may sit between the marker and the letter (whitespace, the
 *      characters : ： * ( [ " ' = - and the words "is", "은", "는", "이", "으로", "는요"), then
 *      take an uppercase letter among the valid ones (A .. the nchoices-th letter) that is not
 *      followed by an ASCII letter or digit. The LAST marker that gives a letter wins (a
 *      reasoning text ends with its final answer);
 *   2. else the first standalone valid uppercase letter: neither the character before nor the
 *      one after is an ASCII letter or digit (Hangul next to it is fine: "B입니다");
 *   3. else -1.
 */
int mcqa_gen_parse(const char *text, int nchoices);

/* The metrics of a set given each item's generated text: acc (correct / n; a parse failure is
 * wrong), parse_fail (failures / n), and acc per category (items without a category count only
 * in the totals). Category names become metric pieces with evgen_slug ("cat<i>" when nothing
 * is left, <i> the first item's index); categories with the same slug are one. */
struct mcqa_gen_tally {
    int n, correct, fails;
    int ncat;
    char (*cat)[48];
    int *cat_n, *cat_correct;
};
void mcqa_gen_tally(const struct mcqa_gen_set *set, const char *const *texts,
                    struct mcqa_gen_tally *out);
void mcqa_gen_tally_release(struct mcqa_gen_tally *t);

/* ---- shared by the generated-answer evals --------------------------------------------------- */

/* Placeholder filling: appends tmpl to out with each "{name}" of keys[i] replaced by vals[i]. */
void evgen_fill(const char *tmpl, const char *const *keys, const char *const *vals, int n,
                struct buf *out);

/*
 * A new copy of text without thought blocks: every "<think>...</think>" is removed; a
 * "</think>" with no opening tag drops everything before it (templates put the opening tag in
 * the prompt); an unclosed "<think>" drops everything after it.
 */
char *evgen_strip_thoughts(const char *text);

/* Calls fn for every non-blank line of a JSONL file with the parsed object (borrowed) and its
 * 1-based line number; fn returns 0, or -1 with a message in msg (prefixed with path:line).
 * Stops after limit objects when limit > 0. Returns the number of objects, or -1 with err. */
struct cJSON;
int evgen_jsonl(const char *path, int limit,
                int (*fn)(void *arg, const struct cJSON *obj, int line, char *msg, size_t msglen),
                void *arg, char *err, size_t errlen);

/* A metric-name piece of a free-form name: ASCII letters lowercased, digits kept, every other
 * run of bytes one '_', at most max bytes; "" when nothing is left. */
void evgen_slug(const char *name, char *out, size_t max);

#endif
