/*
 * ckpt: the trainer's crash checkpoint: trainable weights, AdamW moments, step, data position
 * and RNG state, written atomically (a temporary file in the same directory, fsync, rename,
 * fsync of the directory) so that a kill -9 at any moment leaves either the previous
 * checkpoint or the new one, never a torn file.
 *
 * File layout (little-endian, as the host writes it; the reader refuses another host's):
 *   "EXAQTCK1", u32 header length H, H bytes of JSON header (step, data_pos, rng, the
 *   fingerprint and free-form values the trainer keeps: loss sums...), u32 array count, then
 *   per array: u32 name length, name, u64 count, count floats; then a u64 FNV-1a hash of every
 *   byte before it.
 * The fingerprint (the stage's spec and input, say) must match on reading: a checkpoint of
 * another run is refused, and the trainer then starts from step 0.
 */
#ifndef EXAQ_TRAIN_CKPT_H
#define EXAQ_TRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>

#define CKPT_NVALS 8

struct ckpt_state {
    long step;
    long data_pos;
    uint64_t rng;
    double vals[CKPT_NVALS]; /* the trainer's own running values */
};

struct ckpt_arr {
    const char *name;
    float *p; /* written from / read into */
    size_t n;
};

/* Writes path atomically. Returns 0, or -1 with *err (new string). */
int ckpt_write(const char *path, const char *fingerprint, const struct ckpt_state *st,
               const struct ckpt_arr *a, int na, char **err);

/* Reads path into *st and the arrays, which must be the same names and sizes in the same
 * order. Returns 0; 1 when there is no checkpoint; -1 with *err when it is unreadable,
 * corrupt, of another fingerprint or of other arrays (the arrays are then untouched). */
int ckpt_read(const char *path, const char *fingerprint, struct ckpt_state *st, struct ckpt_arr *a,
              int na, char **err);

#endif
