/*
 * test_config: worker/engine/config.c on both transformers styles.
 *
 * Proves: the checked-in 4.57-style config parses to the expected struct and prints back
 * byte-identical (sorted keys, indent 2, number spellings kept); conversion to the v5 style
 * (rope_parameters, dtype) and back preserves every derived field; the llama3 inverse
 * frequencies match the values in spec section 1.4 for the 1.2B shape; the default layer_types
 * rule and the RoPE / window rule per layer follow transformers; every invalid input named in
 * the brief gets a clear error (divide-by-zero pattern, missing or invalid fields, unsupported
 * rope types); edits by dotted path, deletion, layer pruning and Python float formatting work.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <cmocka.h>

#include "common/util.h"
#include "worker/engine/config.h"

#define TINY "tests/data/tiny-exaone4/config.json"

static const char *cfg_12b =
    "{\"architectures\":[\"Exaone4ForCausalLM\"],\"model_type\":\"exaone4\","
    "\"hidden_size\":2048,\"intermediate_size\":4096,\"num_hidden_layers\":30,"
    "\"num_attention_heads\":32,\"num_key_value_heads\":8,\"head_dim\":64,"
    "\"vocab_size\":102400,\"max_position_embeddings\":65536,\"rms_norm_eps\":1e-05,"
    "\"rope_scaling\":{\"factor\":16.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
    "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},"
    "\"rope_theta\":1000000.0,\"sliding_window\":null,\"sliding_window_pattern\":null,"
    "\"tie_word_embeddings\":true,\"dtype\":\"bfloat16\",\"layer_types\":"
    "[\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\",\"full_attention\",\"full_attention\","
    "\"full_attention\",\"full_attention\"]}";

static int parse(struct config *c, const char *json, char **err)
{
    return config_parse(c, json, strlen(json), "config.json", err);
}

static void expect_error(const char *json, const char *want)
{
    struct config c;
    char *err = NULL;
    int rc = parse(&c, json, &err);
    if (rc == 0 || !err || !strstr(err, want))
        printf("json %s\n  rc %d err '%s', want '%s'\n", json, rc, err ? err : "(none)", want);
    assert_true(rc < 0);
    assert_non_null(err);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "config.json: "));
    free(err);
}

static void test_tiny_config(void **state)
{
    (void)state;
    if (!is_file(TINY)) {
        printf("SKIP %s missing\n", TINY);
        skip();
    }
    struct config c;
    char *err = NULL;
    assert_int_equal(config_load(&c, TINY, &err), 0);
    assert_int_equal(c.hidden_size, 256);
    assert_int_equal(c.intermediate_size, 1024);
    assert_int_equal(c.num_hidden_layers, 4);
    assert_int_equal(c.num_attention_heads, 4);
    assert_int_equal(c.num_key_value_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.vocab_size, 4096);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_int_equal(c.rope.type, CONFIG_ROPE_LLAMA3);
    assert_true(c.rope.theta == 1e6 && c.rope.factor == 16.0 && c.rope.low_freq_factor == 1.0 &&
                c.rope.high_freq_factor == 4.0);
    assert_int_equal(c.rope.original_max_position_embeddings, 8192);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_string_equal(c.dtype, "bfloat16");
    assert_int_equal(c.style, CONFIG_STYLE_V4);
    assert_int_equal(c.eos_token_id, 2);
    for (int l = 0; l < 4; l++) {
        assert_int_equal(c.layer_types[l], CONFIG_LAYER_FULL);
        assert_int_equal(config_layer_rope(&c, l), 1);
        assert_int_equal(config_layer_window(&c, l), 0);
    }
    /* Printing gives back the file exactly (transformers' json.dumps(indent=2, sort_keys)); the
     * checked-in copy lacks the final newline transformers adds, so compare without it. */
    char *text;
    size_t len;
    assert_int_equal(file_read_all(TINY, &text, &len), 0);
    while (len > 0 && text[len - 1] == '\n')
        text[--len] = '\0';
    char *out = config_print(&c);
    assert_true(out[strlen(out) - 1] == '\n');
    out[strlen(out) - 1] = '\0';
    if (strcmp(out, text) != 0)
        printf("--- printed:\n%s--- file:\n%s", out, text);
    assert_string_equal(out, text);
    free(out);
    free(text);
    config_release(&c);
}

static void test_style_conversion(void **state)
{
    (void)state;
    struct config c, v5, back;
    char *err = NULL;
    assert_int_equal(parse(&c, cfg_12b, &err), 0);
    config_copy(&v5, &c);
    assert_int_equal(config_convert_style(&v5, CONFIG_STYLE_V5, &err), 0);
    assert_int_equal(v5.style, CONFIG_STYLE_V5);
    char *s = config_print(&v5);
    assert_null(strstr(s, "rope_theta\": 1000000.0,\n  \"rope_scaling"));
    assert_non_null(strstr(s, "\"rope_parameters\": {\n    \"factor\": 16.0,"));
    assert_non_null(strstr(s, "\"rope_theta\": 1000000.0"));
    assert_null(strstr(s, "torch_dtype"));
    assert_null(strstr(s, "rope_scaling"));
    /* Reparse the printed text from scratch: same derived fields. */
    struct config re;
    assert_int_equal(parse(&re, s, &err), 0);
    free(s);
    assert_int_equal(re.style, CONFIG_STYLE_V5);
    assert_true(re.rope.theta == c.rope.theta && re.rope.factor == c.rope.factor &&
                re.rope.type == c.rope.type && re.rope.original_max_position_embeddings == 8192);
    assert_string_equal(re.dtype, "bfloat16");
    config_copy(&back, &re);
    assert_int_equal(config_convert_style(&back, CONFIG_STYLE_V4, &err), 0);
    s = config_print(&back);
    assert_non_null(strstr(s, "\"torch_dtype\": \"bfloat16\""));
    assert_non_null(strstr(s, "\"dtype\": \"bfloat16\""));
    assert_non_null(strstr(s, "\"rope_type\": \"llama3\""));
    assert_null(strstr(s, "rope_parameters"));
    free(s);
    assert_int_equal(back.style, CONFIG_STYLE_V4);
    assert_true(back.rope.theta == 1e6 && back.rope.factor == 16.0);
    /* v5 with rope_parameters per layer type (must agree). */
    struct config nested;
    const char *nj = "{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                     "\"num_attention_heads\":2,\"vocab_size\":50,\"sliding_window\":null,"
                     "\"layer_types\":[\"full_attention\",\"full_attention\"],\"rope_parameters\":"
                     "{\"full_attention\":{\"rope_type\":\"default\",\"rope_theta\":10000.0},"
                     "\"sliding_attention\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}}}";
    assert_int_equal(parse(&nested, nj, &err), 0);
    assert_int_equal(nested.head_dim, 32);
    assert_true(nested.rope.theta == 10000.0 && nested.rope.type == CONFIG_ROPE_DEFAULT);
    config_release(&nested);
    config_release(&c);
    config_release(&v5);
    config_release(&re);
    config_release(&back);
}

static void test_llama3_inv_freq(void **state)
{
    (void)state;
    struct config c;
    char *err = NULL;
    assert_int_equal(parse(&c, cfg_12b, &err), 0);
    float inv[32];
    config_rope_inv_freq(&c, inv);
    /* Spec section 1.4: i = 0..13 unchanged, 14..16 smoothed, 17..31 divided by 16. */
    for (int i = 0; i <= 13; i++)
        assert_true(fabs(inv[i] - 1.0 / pow(1e6, 2.0 * i / 64)) <= 2e-7 * inv[i]);
    const double want[][2] = { { 14, 1.698341e-3 },
                               { 15, 5.812029e-4 },
                               { 16, 1.574367e-4 },
                               { 17, 4.058635e-5 },
                               { 31, 9.624541e-8 } };
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        int i = (int)want[k][0];
        if (fabs(inv[i] - want[k][1]) > 1e-6 * want[k][1])
            printf("inv[%d] = %.7g, spec %.7g\n", i, inv[i], want[k][1]);
        assert_true(fabs(inv[i] - want[k][1]) <= 1e-6 * want[k][1]);
    }
    for (int i = 17; i < 32; i++)
        assert_true(fabs(inv[i] - 1.0 / pow(1e6, 2.0 * i / 64) / 16) <= 2e-7 * inv[i]);
    /* Default rope: no scaling. */
    assert_int_equal(config_set_null(&c, "rope_scaling"), 0);
    assert_int_equal(config_reparse(&c, &err), 0);
    config_rope_inv_freq(&c, inv);
    assert_true(fabs(inv[31] - 1.0 / pow(1e6, 62.0 / 64)) <= 2e-7 * inv[31]);
    config_release(&c);
}

static void test_hybrid_layer_types(void **state)
{
    (void)state;
    const char *j = "{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":8,"
                    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
                    "\"vocab_size\":50,\"sliding_window\":5,\"sliding_window_pattern\":4,"
                    "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}}";
    struct config c;
    char *err = NULL;
    assert_int_equal(parse(&c, j, &err), 0);
    assert_int_equal(c.layer_types_explicit, 0);
    for (int l = 0; l < 8; l++) {
        int sliding = (l + 1) % 4 != 0;
        assert_int_equal(c.layer_types[l], sliding ? CONFIG_LAYER_SLIDING : CONFIG_LAYER_FULL);
        assert_int_equal(config_layer_rope(&c, l), sliding); /* global layers are NoPE */
        assert_int_equal(config_layer_window(&c, l), sliding ? 5 : 0);
    }
    /* Keep layers 1, 3, 4: layer_types follow the kept layers, not the pattern. */
    int keep[3] = { 1, 3, 4 };
    assert_int_equal(config_keep_layers(&c, keep, 3, &err), 0);
    assert_int_equal(c.num_hidden_layers, 3);
    assert_int_equal(c.layer_types_explicit, 1);
    assert_int_equal(c.layer_types[0], CONFIG_LAYER_SLIDING);
    assert_int_equal(c.layer_types[1], CONFIG_LAYER_FULL);
    assert_int_equal(c.layer_types[2], CONFIG_LAYER_SLIDING);
    int bad[2] = { 2, 1 };
    assert_true(config_keep_layers(&c, bad, 2, &err) < 0);
    free(err);
    config_release(&c);
    /* Absent sliding_window: transformers' default 4096 with pattern 4. */
    const char *d = "{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":4,"
                    "\"num_attention_heads\":4,\"vocab_size\":50}";
    assert_int_equal(parse(&c, d, &err), 0);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.layer_types[3], CONFIG_LAYER_FULL);
    assert_int_equal(c.layer_types[0], CONFIG_LAYER_SLIDING);
    assert_true(c.rope.theta == 10000.0);
    config_release(&c);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"sliding_window\":null}",
                 "default rule (i+1) % pattern divides by zero");
    expect_error("{\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":50}",
                 "missing required field 'hidden_size'");
    expect_error("{\"hidden_size\":\"64\",\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":50}",
                 "field 'hidden_size' must be an integer >= 1");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"sliding_window\":null,"
                 "\"layer_types\":[\"full_attention\"]}",
                 "layer_types has 1 entries but num_hidden_layers is 2");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"sliding_window\":null,"
                 "\"layer_types\":[\"chunked_attention\"]}",
                 "layer_types[0] must be");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"layer_types\":[\"full_attention\"],"
                 "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}",
                 "rope_type 'yarn' is not supported");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"layer_types\":[\"full_attention\"],"
                 "\"rope_scaling\":{\"rope_type\":\"llama3\",\"low_freq_factor\":1.0,"
                 "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}",
                 "missing required field 'rope_scaling.factor'");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"layer_types\":[\"full_attention\"],"
                 "\"rope_parameters\":{\"rope_type\":\"default\"}}",
                 "missing required field 'rope_parameters.rope_theta'");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":50}",
                 "not a multiple of num_key_value_heads");
    expect_error("{\"model_type\":\"gpt2\",\"hidden_size\":64}",
                 "model_type is 'gpt2'; the engine loads");
    expect_error("{\"hidden_size\":64,", "not valid JSON");
    expect_error("[1]", "not a JSON object");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"sliding_window\":8,"
                 "\"sliding_window_pattern\":\"LLLG\"}",
                 "sliding_window_pattern is a string");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"layer_types\":[\"full_attention\"],"
                 "\"tie_word_embeddings\":1}",
                 "tie_word_embeddings must be true or false");
    expect_error("{\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":1,"
                 "\"num_attention_heads\":4,\"vocab_size\":50,\"layer_types\":[\"full_attention\"],"
                 "\"head_dim\":15}",
                 "head_dim (15) must be even");
    struct config c;
    char *err = NULL;
    assert_true(config_load(&c, "/nonexistent/config.json", &err) < 0);
    assert_non_null(strstr(err, "cannot read '/nonexistent/config.json'"));
    free(err);
}

static void test_edits_and_floats(void **state)
{
    (void)state;
    struct config c;
    char *err = NULL;
    assert_int_equal(parse(&c, cfg_12b, &err), 0);
    assert_int_equal(config_set_float(&c, "rope_theta", 500000), 0);
    assert_int_equal(config_set_float(&c, "rope_scaling.factor", 8), 0);
    assert_int_equal(config_set_int(&c, "max_position_embeddings", 4096), 0);
    assert_int_equal(config_set_json(&c, "custom", "{\"b\": [1, 2.50, null], \"a\": true}"), 0);
    assert_int_equal(config_set_string(&c, "note", "caf\xc3\xa9 \"q\"\n\xf0\x9f\x98\x80"), 0);
    assert_int_equal(config_delete(&c, "architectures"), 0);
    assert_int_equal(config_delete(&c, "architectures"), -ENOENT);
    assert_int_equal(config_delete(&c, "no.such.key"), -ENOENT);
    assert_int_equal(config_set_int(&c, "", 1), -EINVAL);
    assert_int_equal(config_reparse(&c, &err), 0);
    assert_true(c.rope.theta == 500000.0 && c.rope.factor == 8.0);
    assert_int_equal(c.max_position_embeddings, 4096);
    char *s = config_print(&c);
    assert_non_null(strstr(s, "\"rope_theta\": 500000.0,"));
    assert_non_null(strstr(s, "\"factor\": 8.0,"));
    assert_non_null(strstr(s, "\"rms_norm_eps\": 1e-05,"));
    assert_non_null(strstr(s,
                           "\"custom\": {\n    \"a\": true,\n    \"b\": [\n      1,\n      2.50,\n"
                           "      null\n    ]\n  },"));
    assert_non_null(strstr(s, "\"note\": \"caf\\u00e9 \\\"q\\\"\\n\\ud83d\\ude00\""));
    assert_null(strstr(s, "architectures"));
    assert_true(s[strlen(s) - 1] == '\n');
    free(s);
    /* A failing reparse leaves the struct as it was. */
    assert_int_equal(config_set_string(&c, "hidden_size", "x"), 0);
    assert_true(config_reparse(&c, &err) < 0);
    free(err);
    assert_int_equal(c.hidden_size, 2048);
    config_release(&c);

    static const struct {
        double v;
        const char *s;
    } f[] = { { 1e-5, "1e-05" },
              { 1e6, "1000000.0" },
              { 0.02, "0.02" },
              { 16.0, "16.0" },
              { 1e16, "1e+16" },
              { 1.5e-7, "1.5e-07" },
              { 1e-4, "0.0001" },
              { 0.1, "0.1" },
              { -2.5, "-2.5" },
              { 0.0, "0.0" },
              { 123.456, "123.456" },
              { 1.2345678901234568e+17, "1.2345678901234568e+17" },
              { 9999999999999998.0, "9999999999999998.0" },
              { 5e-324, "5e-324" } };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        char b[40];
        config_format_float(f[i].v, b, sizeof(b));
        if (strcmp(b, f[i].s) != 0)
            printf("format %.17g: got %s want %s\n", f[i].v, b, f[i].s);
        assert_string_equal(b, f[i].s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_config),     cmocka_unit_test(test_style_conversion),
        cmocka_unit_test(test_llama3_inv_freq), cmocka_unit_test(test_hybrid_layer_types),
        cmocka_unit_test(test_errors),          cmocka_unit_test(test_edits_and_floats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
