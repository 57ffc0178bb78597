/*
 * generate: greedy decoding through the KV cache, batched over prompts, with the stop
 * conditions transformers' generate(do_sample=False) applies: EOS ids (from the model's
 * generation_config.json), stop strings and max_new_tokens.
 *
 * Every prompt of a batch has its own KV cache; each decode step advances every sequence that
 * is still running by one token. The argmax takes the lowest id on ties (torch.argmax's
 * rule). A sequence's tokens depend only on its own prompt: a batch gives exactly the ids of
 * the same prompts run one by one (tests/unit/engine/test_generate.c checks it), whatever the batch
 * size and the order.
 *
 * Stop rules, checked after each new token, in this order:
 *   - EOS: the token is one of the EOS ids; it is kept as the last id (transformers keeps it);
 *   - stop string: the decoded new text (decode of all new ids so far) contains one of the
 *     stop strings; the ids are kept up to the token that completed it, and the text is cut
 *     before the earliest occurrence of any stop string;
 *   - length: max_new_tokens ids were generated.
 * Functions return 0 or a negative errno-style code with *err set (a new string, free() it).
 */
#ifndef EXAQ_ENGINE_GENERATE_H
#define EXAQ_ENGINE_GENERATE_H

#include <stdint.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/model.h"
#include "worker/engine/tokenizer.h"

enum gen_stop {
    GEN_STOP_LENGTH = 0, /* max_new_tokens reached */
    GEN_STOP_EOS,        /* an EOS id was generated (it is the last id) */
    GEN_STOP_STRING,     /* a stop string appeared in the decoded text */
};

struct gen_opts {
    int max_new_tokens; /* >= 0 */
    const int32_t *eos; /* EOS ids (may be NULL: no EOS stop) */
    int n_eos;
    const char *const *stop; /* stop strings (may be NULL); needs tok */
    int n_stop;
    const struct tok *tok; /* decodes the text of each result when set */
    /* Called after every decode step with the number of sequences still running; a positive
     * return stops the run, which then returns that value. May be NULL. */
    int (*step)(void *arg, int step, int running);
    void *arg;
};

struct gen_result {
    int32_t *ids;      /* the new ids (owned) */
    int n;             /* their count */
    enum gen_stop why; /* what ended the sequence */
    char *text;        /* with opts.tok: the decoded new text, cut before a stop string */
};

/*
 * Greedy generation for B prompts (prompts[b] of n_prompt[b] >= 1 ids) into res[0..B-1]
 * (release each with gen_result_release, also after a failure). -EINVAL when a prompt is
 * empty, holds an id outside the vocabulary, or n_prompt + max_new_tokens exceeds the model's
 * max_position_embeddings.
 */
int gen_greedy(struct model *m, const int32_t *const *prompts, const int *n_prompt, int B,
               const struct gen_opts *o, struct gen_result *res, char **err);
void gen_result_release(struct gen_result *r);

/* The EOS ids of the model in dir as transformers' generate takes them: eos_token_id of
 * generation_config.json (an integer or a list) when that file exists, else of config.json.
 * *ids is a new array (NULL when the model names none). */
int gen_eos_load(const char *dir, int32_t **ids, int *n, char **err);

/* Appends to out the prompt of one user message `text`, rendered with the model's chat
 * template and the generation prompt (apply_chat_template([{"role": "user", "content": text}],
 * add_generation_prompt=True, tokenize=False)). */
int gen_chat_wrap(const struct chat_template *ct, const char *text, struct buf *out, char **err);

#endif
