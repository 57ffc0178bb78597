/*
 * The config stage: edits config.json fields (set, nested set, remove), copies every other
 * file unchanged, re-validates the result (a config the engine cannot load fails the stage),
 * and the output loads in the engine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/model.h"
#include "worker/stages/stage.h"

#define TINY "tests/data/tiny-exaone4"

static char tmp[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/exaq-cfgstage.XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(tmp);
    return 0;
}

static int run(const char *spec, const char *out, char *errmsg, size_t n)
{
    struct stage_ctx ctx;
    char *sd = xasprintf("%s/artifacts/x.tmp-1", tmp);
    int rc;
    mkdir_p(out, 0755);
    mkdir_p(sd, 0755);
    stage_ctx_init(&ctx);
    ctx.kind = "config";
    ctx.spec_json = spec;
    ctx.input_dir = TINY;
    ctx.output_dir = out;
    ctx.stage_dir = sd;
    rc = stage_config_run(&ctx);
    snprintf(errmsg, n, "%s", ctx.errmsg);
    stage_ctx_release(&ctx);
    free(sd);
    return rc;
}

static cJSON *read_json(const char *path)
{
    char *text = NULL;
    cJSON *j;
    assert_int_equal(file_read_all(path, &text, NULL), 0);
    j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static void test_edit_and_load(void **state)
{
    char *out = xasprintf("%s/out1", tmp), *p, err[1024];
    char h1[SHA256_HEX_LEN], h2[SHA256_HEX_LEN];
    cJSON *cfg;
    struct model *m;
    char *merr = NULL;
    (void)state;
    assert_int_equal(run("{\"max_position_embeddings\":4096,\"rope_scaling.factor\":8.0,"
                         "\"use_cache\":null}",
                         out, err, sizeof(err)),
                     STAGE_OK);
    p = path_join(out, "config.json");
    cfg = read_json(p);
    free(p);
    assert_int_equal(cJSON_GetObjectItem(cfg, "max_position_embeddings")->valueint, 4096);
    assert_true(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "rope_scaling"), "factor")->valuedouble ==
        8.0);
    assert_null(cJSON_GetObjectItem(cfg, "use_cache"));
    assert_non_null(cJSON_GetObjectItem(cfg, "layer_types")); /* untouched fields stay */
    cJSON_Delete(cfg);
    /* Every other file is there, byte for byte. */
    p = path_join(out, "model.safetensors");
    assert_int_equal(sha256_file_hex(p, h1), 0);
    free(p);
    assert_int_equal(sha256_file_hex(TINY "/model.safetensors", h2), 0);
    assert_string_equal(h1, h2);
    p = path_join(out, "tokenizer.json");
    assert_true(is_file(p));
    free(p);
    assert_int_equal(model_load(&m, out, NULL, &merr), 0);
    assert_int_equal(m->cfg.max_position_embeddings, 4096);
    model_free(m);
    free(out);
}

static void test_invalid_result_fails(void **state)
{
    char *out = xasprintf("%s/out2", tmp), err[1024];
    (void)state;
    /* 3 layers but 4 layer_types: the engine (and transformers) refuse it. */
    assert_int_equal(run("{\"num_hidden_layers\":3}", out, err, sizeof(err)), STAGE_ERR_ERROR);
    assert_non_null(strstr(err, "not a valid EXAONE-4 config"));
    free(out);
    out = xasprintf("%s/out3", tmp);
    assert_int_equal(run("[1,2]", out, err, sizeof(err)), STAGE_ERR_ERROR);
    assert_non_null(strstr(err, "non-empty object"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edit_and_load),
        cmocka_unit_test(test_invalid_result_fails),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
