/*
 * qa: extractive / generative question answering over contexts (Ko-LongRAG style), scored with
 * SQuAD's exact match and F1 under a normalization that also suits Korean. docs/evals.md
 * ("qa") has the rules; all but qa_fit are pure string functions.
 *
 * Items (JSONL): "context" (a string, or a list of passage strings joined with "\n\n"),
 * "question" (string), "answers" (a non-empty list of strings). Other keys are ignored.
 */
#ifndef EXAQ_EVALS_QA_H
#define EXAQ_EVALS_QA_H

#include <stddef.h>

#include "common/util.h"
#include "worker/engine/tokenizer.h"

#define QA_DEFAULT_TEMPLATE                                                                        \
    "다음 글을 읽고 질문에 짧게 답하세요.\n\n{context}\n\n질문: {question}\n답:"

struct qa_item {
    char *context;
    char *question;
    char **answers;
    int nanswers;
    int line;
};

struct qa_set {
    struct qa_item *items;
    int n;
};

int qa_load(const char *path, int limit, struct qa_set *set, char *err, size_t errlen);
void qa_release(struct qa_set *set);

/* The template with {context} and {question} filled. */
void qa_prompt(const char *tmpl, const char *context, const char *question, struct buf *out);

/*
 * SQuAD's normalize_answer, adapted: ASCII letters lowercased (Hangul has no case; other
 * scripts are kept as they are); punctuation removed: ASCII punctuation (Python's
 * string.punctuation) and the Unicode punctuation Korean text uses (listed in qa.c: · … ‘ ’ “ ”
 * 「 」 『 』 《 》 〈 〉 【 】 、 。 ， ！ ？ ： ； （ ） ［ ］ ～ and the like); the English
 * articles "a", "an", "the" removed as whole words only when the text holds no Hangul;
 * whitespace (ASCII whitespace, U+00A0, U+3000) collapsed to single spaces and trimmed.
 * Returns a new string.
 */
char *qa_normalize(const char *s);

/* SQuAD exact match (1 or 0) and token F1 (tokens: the normalized text split on spaces) of
 * one prediction against one gold answer; and the KorQuAD-style character F1 (the characters of
 * the normalized tokens, spaces excluded). Both empty normalized: 1. */
double qa_exact(const char *pred, const char *gold);
double qa_f1(const char *pred, const char *gold);
double qa_f1_char(const char *pred, const char *gold);

struct qa_score {
    double em, f1, f1_char; /* the maximum over the gold answers, as SQuAD */
};
void qa_score(const char *pred, const char *const *golds, int ngolds, struct qa_score *out);

/*
 * The prediction of a generated text: thought blocks removed (evgen_strip_thoughts), leading
 * whitespace skipped, then the first line (up to "\n"), with a leading answer label ("답변:",
 * "정답:", "답:", "Answer:", any case, and the whitespace after it) removed, and trimmed.
 * Returns a new string.
 */
char *qa_prediction(const char *generated);

/*
 * Fits the prompt into budget tokens by cutting the context's end (the context's beginning is
 * kept). Renders tmpl with the whole context; when its encoding has more than budget tokens,
 * the context is replaced by the decode of its first k token ids, cut back to the last whole
 * UTF-8 character, with k = len(context ids) - (excess), then reduced until the rendered
 * prompt fits. wrap (may be NULL) turns the filled template into the model's prompt (the chat
 * template) before it is encoded. *out receives the prompt's ids (new array), *n their count, *cut
 * 1 when the context was cut. -EINVAL with err when even an empty context does not fit.
 */
int qa_fit(const struct tok *t, const char *tmpl, const char *context, const char *question,
           int budget,
           int (*wrap)(void *arg, const char *user, struct buf *out, char *err, size_t errlen),
           void *wrap_arg, int32_t **out, int *n, int *cut, char *err, size_t errlen);

#endif
