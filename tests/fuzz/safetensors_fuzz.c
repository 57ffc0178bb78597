/*
 * safetensors_fuzz: libFuzzer target for the safetensors reader (common/st.c).
 *
 * Every input is parsed from memory as a whole file. A rejected input must come with an error
 * message; an accepted one must describe tensors that lie inside the input, and reading every
 * (small) tensor back as fp32 must not fault. Seeds: tests/fuzz/corpus/safetensors/ (valid
 * files of several dtypes, a 0-d and an empty tensor, metadata, and near-misses). Run with
 * `make fuzz` (FUZZ_SECONDS each).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct st_file *f = NULL;
    char *err = NULL;
    if (st_file_parse(&f, data, size, "fuzz.safetensors", &err) != 0) {
        if (!err || f)
            abort(); /* a rejection always explains itself and returns no file */
        free(err);
        return 0;
    }
    size_t total = 0;
    for (int i = 0; i < st_file_count(f); i++) {
        const struct st_tensor *t = st_file_tensor(f, i);
        total += t->nbytes;
        if (total > size || st_file_find(f, t->name) != t)
            abort();
        if (t->numel > 0 && t->numel <= 65536) {
            float *out = malloc(sizeof(float) * (size_t)t->numel);
            if (!out)
                abort();
            st_tensor_to_f32(t, out);
            free(out);
        }
    }
    (void)st_file_metadata(f, "format");
    st_file_free(f);
    free(err);
    return 0;
}
