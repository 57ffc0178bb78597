/*
 * tokdata: the token data that stages read: `ids:` files (little-endian uint32 token ids) and
 * `text:` files tokenized with the model's tokenizer.json (the whole file in one encode call, no
 * special tokens: the protocol of the reference ids). Used by the calibration windows
 * (calib.h) and by the evaluation stages (worker/evals/). Functions return 0 or a negative
 * errno-style code (NULL for tokdata_tok_load) and set *err (when err is not NULL) to a new
 * lowercase message naming the file, which the caller frees (docs/design.md, "Errors").
 */
#ifndef EXAQ_TOKDATA_H
#define EXAQ_TOKDATA_H

#include <stddef.h>
#include <stdint.h>

#include "worker/engine/tokenizer.h"

/* Reads a file of little-endian uint32 token ids into a new int32 array (*ids, free() it; NULL
 * when the file is empty) and its length *n. Errors: unreadable file, a length that is not a
 * multiple of 4, an id above INT32_MAX. */
int tokdata_ids_read(const char *path, int32_t **ids, size_t *n, char **err);

/* Loads <model_dir>/tokenizer.json; NULL with a message naming the dir when it has none or it
 * does not load. Free with tok_free(). */
struct tok *tokdata_tok_load(const char *model_dir, char **err);

/* Tokenizes a UTF-8 text file with t (the whole file in one encode() call, no special tokens,
 * the protocol of the reference ids). Same outputs as tokdata_ids_read. */
int tokdata_text_read(const char *path, const struct tok *t, int32_t **ids, size_t *n, char **err);

/* Loads the ids of a data source given as exactly one of ids_path and text_path (the other NULL);
 * text is tokenized with <model_dir>/tokenizer.json. With vocab > 0 every id must be below it
 * (the message names the first bad id and its position). */
int tokdata_load(const char *ids_path, const char *text_path, const char *model_dir, int vocab,
                 int32_t **ids, size_t *n, char **err);

/* Index of the first id outside [0, vocab), or -1 when all are inside. */
int64_t tokdata_ids_check(const int32_t *ids, size_t n, int vocab);

#endif
