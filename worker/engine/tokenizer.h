/*
 * tokenizer: the tokenizers of a Hugging Face tokenizer.json (byte-level BPE as EXAONE-4,
 * Llama-3 and Qwen2 ship it; SentencePiece-style BPE with byte_fallback as Llama-2, Mistral and
 * MiniCPM ship it; Unigram), producing exactly the ids of the `tokenizers` library
 * (encode(text, add_special_tokens=False) and decode(ids, skip_special_tokens=False)).
 *
 * What is supported and what is refused is listed in docs/tokenizer.md. Anything outside that
 * subset is refused at load time with a message that names the field (and quotes a split
 * pattern it does not know), never approximated. A loaded tokenizer is immutable: every
 * function below may be called from several threads at once on the same struct tok.
 */
#ifndef EXAQ_TOKENIZER_H
#define EXAQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct tok; /* opaque */

/* Largest token id accepted in a tokenizer.json (exclusive bound). */
#define TOK_MAX_ID (1 << 22)

/*
 * Loads a tokenizer.json file (tok_load) or an in-memory copy of one (tok_load_buf; json need
 * not be NUL-terminated). Returns a new tokenizer, or NULL on any malformed or unsupported
 * input with *err set to a new lowercase message the caller frees (err may be NULL). Free the
 * tokenizer with tok_free().
 */
struct tok *tok_load(const char *path, char **err);
struct tok *tok_load_buf(const char *json, size_t len, char **err);
void tok_free(struct tok *t); /* NULL is fine */

/*
 * Encodes len bytes of UTF-8 text without adding special tokens. Added and special tokens that
 * appear in the text are recognised as the tokenizers library does. On success returns the
 * number of ids and sets *ids to a malloc'd array the caller frees (NULL when the count is 0).
 * Returns -1 with err set, and *ids NULL, when the text is not valid UTF-8, when the tokenizer
 * has an NFC normalizer and the text fails the NFC quick check, when a Unigram model meets a
 * character it has no piece for and no unk_id, or when the text is too long.
 */
int tok_encode(const struct tok *t, const char *text, size_t len, int32_t **ids, char *err,
               size_t errlen);

/*
 * Decodes ids to UTF-8 like decode(ids, skip_special_tokens=False): ids that name no token are
 * skipped and invalid byte sequences become U+FFFD. Returns a new NUL-terminated string; the
 * _n form also stores its length in *len, which tells the length when the text contains NUL.
 */
char *tok_decode(const struct tok *t, const int32_t *ids, size_t n);
char *tok_decode_n(const struct tok *t, const int32_t *ids, size_t n, size_t *len);

/* One more than the largest id of the vocabulary and the added tokens: the embedding rows. */
int tok_vocab_size(const struct tok *t);
/* Id of a token given by its exact string (added tokens first, then the vocabulary); -1 if
 * absent. For byte-level vocabularies the string is in the byte-level alphabet ("Ġthe"). */
int tok_token_id(const struct tok *t, const char *token);
/* The vocabulary (or added token) string of an id, borrowed from t; NULL if no such id. */
const char *tok_id_token(const struct tok *t, int32_t id);

/*
 * The pieces encode would hand to the model, for tests and diagnostics: calls fn once per piece
 * in order. An added token comes as its matched text with added_id set; any other piece comes
 * as UTF-8 after the normalizers and pre-tokenizers (Metaspace's replacement characters
 * included, any ByteLevel prefix space included, but before the byte-level mapping) and
 * added_id -1.
 * A non-zero return from fn stops the walk and is returned (without touching *err). Returns 0,
 * or -1 with *err set to a new message (the caller frees it; err may be NULL) on the same
 * input errors as tok_encode.
 */
typedef int (*tok_piece_fn)(void *arg, const char *piece, size_t len, int32_t added_id);
int tok_pretokenize(const struct tok *t, const char *text, size_t len, tok_piece_fn fn, void *arg,
                    char **err);

#endif
