/*
 * lanes_fuzz: libFuzzer target for the lanes file parser (lanes_parse_buf).
 *
 * Relative paths in the input resolve against $EXAQ_FUZZ_BASE_DIR, default "tests/data" (run
 * from the repository root), so the seeds in tests/fuzz/corpus/lanes/ can name the real test
 * model (base_model: tiny-exaone4) and data (tiny-a/calib.txt) and reach the success paths.
 * Beyond "no crash, no leak, no UB" it checks the contract: success means a file with lanes, no
 * diagnostics and valid JSON everywhere; failure means no file and at least one located,
 * formattable diagnostic. Inputs over 64 KiB are skipped.
 */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lanes/lanes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_json(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    if (!j)
        __builtin_trap();
    cJSON_Delete(j);
}

static void check_stage(const struct lanes_stage *s)
{
    if (!s->kind || !s->name || !s->spec_json || !s->key_json)
        __builtin_trap();
    check_json(s->spec_json);
    check_json(s->key_json);
    for (size_t i = 0; i < s->nfiles; i++)
        if (!s->files[i] || s->files[i][0] != '/')
            __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *base = getenv("EXAQ_FUZZ_BASE_DIR");
    struct lanes_diag d;
    struct lanes_file *lf = NULL;
    int rc;
    if (size > 65536)
        return 0;
    lanes_diag_init(&d);
    rc =
        lanes_parse_buf((const char *)data, size, "fuzz.yaml", base ? base : "tests/data", &lf, &d);
    if (rc == 0) {
        if (!lf || d.n != 0 || lf->nlanes == 0 || !lf->canonical_json)
            __builtin_trap();
        check_json(lf->canonical_json);
        for (size_t i = 0; i < lf->neval; i++)
            check_stage(&lf->eval[i]);
        for (size_t i = 0; i < lf->nlanes; i++) {
            if (lf->lanes[i].nstages == 0)
                __builtin_trap();
            for (size_t k = 0; k < lf->lanes[i].nstages; k++)
                check_stage(&lf->lanes[i].stages[k]);
        }
    } else {
        if (rc != -1 || lf || d.n == 0)
            __builtin_trap();
        for (size_t i = 0; i < d.n; i++) {
            char *s = lanes_diag_format(&d, i);
            if (!s || d.items[i].line < 0 || d.items[i].col < 0 || !d.items[i].msg[0])
                __builtin_trap();
            free(s);
        }
    }
    lanes_file_free(lf);
    lanes_diag_release(&d);
    return 0;
}
