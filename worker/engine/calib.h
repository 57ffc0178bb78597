/*
 * calib: calibration windows for native stages (quantize, prune, heal).
 *
 * A stage's spec carries `"calibration": {"ids"|"text": PATH, "samples": N, "seq_len": L}`
 * (docs/lanes.md). The windows are taken consecutively from the start of the token stream,
 * window w = ids[w*L .. w*L+L-1], as the tiny-a reference GPTQ did ("128 calibration windows
 * of 512 tokens taken consecutively from calib.ids.u32"). Text is tokenized with the model's
 * tokenizer.json. Fewer tokens than N*L give fewer windows (reported in *note); none is an
 * error.
 */
#ifndef EXAQ_CALIB_H
#define EXAQ_CALIB_H

#include <stddef.h>
#include <stdint.h>

struct calib {
    int n;         /* windows */
    int seq_len;   /* tokens per window */
    int32_t *ids;  /* [n][seq_len] */
    int requested; /* samples asked for */
};

/*
 * Reads the "calibration" member of the stage's spec JSON. model_dir is where a text source
 * finds tokenizer.json; vocab (> 0) bounds the ids. Returns 0, or -1 with *err set to a new message
 * (the caller frees it).
 */
int calib_load(struct calib *c, const char *spec_json, const char *model_dir, int vocab,
               char **err);
void calib_release(struct calib *c);

/* Reads a little-endian uint32 id file; *n ids. 0, or -1 with *err set to a new message. */
int calib_read_ids(const char *path, int32_t **ids, int64_t *n, char **err);

#endif
