/*
 * data: the training windows of the distill and finetune stages.
 *
 * The source is the stage's `data` file or its calibration set (docs/training.md): a file
 * ending in .ids.u32 holds little-endian uint32 token ids; a .jsonl file holds chat
 * conversations (one {"messages": [...]} object a line), rendered with the model's chat
 * template, with the loss on the assistant turns only; anything else is UTF-8 text tokenized
 * with the model's tokenizer (worker/engine/tokdata.h). The token stream is cut into
 * consecutive windows of seq_len tokens (a trailing partial window is dropped); the last
 * `n_val` windows are held out for validation and the rest are visited in an order that is a
 * fresh Fisher-Yates permutation per epoch, drawn from (seed, epoch) alone. The position is
 * the count of windows handed out so far, so a resumed run calls tdata_seek(pos) and gets the
 * same windows an uninterrupted one would.
 */
#ifndef EXAQ_TRAIN_DATA_H
#define EXAQ_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

struct tdata {
    int32_t *ids;  /* the token stream */
    uint8_t *mask; /* NULL, or per token: 1 = this token is a target (an assistant turn) */
    size_t n;      /* tokens */
    int seq_len;
    int n_win; /* training windows */
    int n_val; /* validation windows, after the training ones */
    uint64_t seed;
    long pos;        /* windows handed out */
    uint32_t *order; /* this epoch's permutation of the n_win windows */
    long epoch;      /* the epoch `order` was drawn for; -1 none yet */
};

/* Opens path (format by its name, above) for the model in model_dir (tokenizer, chat
 * template; vocab bounds the ids), cut into seq_len windows of which a fraction val_fraction
 * (at least one when val_fraction > 0 and there are two windows or more) is held out.
 * Returns 0, or -1 with *err (new string). */
int tdata_open(struct tdata *d, const char *path, const char *model_dir, int vocab, int seq_len,
               double val_fraction, uint64_t seed, char **err);
void tdata_release(struct tdata *d);

/* The next training window (seq_len ids) and its mask (NULL: every position counts);
 * advances the position. */
const int32_t *tdata_next(struct tdata *d, const uint8_t **mask);
/* Index (0..n_win) of the training window at position pos, as tdata_next would hand it out. */
int tdata_window_at(struct tdata *d, long pos);
void tdata_seek(struct tdata *d, long pos);
/* Validation window i (0..n_val) and its mask. */
const int32_t *tdata_val(const struct tdata *d, int i, const uint8_t **mask);

/* The 64-bit mixer the trainer draws its randomness from (splitmix64): advances *s. */
uint64_t tdata_rand(uint64_t *s);

#endif
