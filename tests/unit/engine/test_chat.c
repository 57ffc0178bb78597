/*
 * test_chat: chat templates rendered natively (worker/engine/chat, worker/engine/jinja) against
 * goldens made with transformers' apply_chat_template and jinja2 (tests/tools/
 * make_chat_goldens.py, committed in tests/data/chat/goldens.json).
 *
 * Every conversation case of every model (EXAONE-4.0, Llama-3.1/3.2, Qwen2.5, Qwen3, Mistral,
 * Gemma-2) must render byte for byte; a case whose template raises must fail with the same
 * message. Every Jinja case (one construct each, jinja2's own output) likewise. Constructs
 * outside the subset and syntax errors name the template line and column.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/jinja.h"

#define DATA "tests/data/chat"

static cJSON *goldens(void)
{
    size_t n = 0;
    char *text = NULL;
    cJSON *g;
    assert_int_equal(file_read_all(DATA "/goldens.json", &text, &n), 0);
    g = cJSON_Parse(text);
    free(text);
    assert_non_null(g);
    return g;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void test_conversations(void **state)
{
    cJSON *g = goldens(), *c;
    int n = 0, bad = 0, per_model = 0;
    const char *last = "";
    (void)state;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g, "cases"))
    {
        const char *model = jstr(c, "model"), *name = jstr(c, "name");
        const char *want = jstr(c, "expected"), *want_err = jstr(c, "error");
        char *dir = xasprintf(DATA "/%s", model), *err = NULL;
        struct chat_template ct;
        struct chat_input in = {
            .messages_json = jstr(c, "messages_json"),
            .tools_json = jstr(c, "tools_json"),
            .kwargs_json = jstr(c, "kwargs_json"),
            .add_generation_prompt =
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")),
        };
        struct buf out;
        int rc;
        if (strcmp(last, model) != 0) {
            if (*last)
                printf("# %s: %d cases\n", last, per_model);
            per_model = 0;
            last = model;
        }
        per_model++;
        buf_init(&out);
        assert_int_equal(chat_template_load(dir, &ct, &err), 0);
        rc = chat_render(&ct, &in, &out, &err);
        if (want && (rc != 0 || strcmp(out.data ? out.data : "", want) != 0)) {
            printf("# %s/%s: rendered differently (%s)\n", model, name, rc ? err : "text");
            bad++;
        } else if (want_err && (rc == 0 || !strstr(err, want_err))) {
            printf("# %s/%s: want error '%s', got %s\n", model, name, want_err,
                   rc ? err : "a rendering");
            bad++;
        }
        n++;
        free(err);
        buf_release(&out);
        chat_template_release(&ct);
        free(dir);
    }
    printf("# %s: %d cases\n# %d conversation cases, %d differ\n", last, per_model, n, bad);
    assert_true(n >= 400);
    assert_int_equal(bad, 0);
    cJSON_Delete(g);
}

/* jinja2's message without Python's exception class ("TypeError: ..."): ours names the line. */
static const char *py_message(const char *e)
{
    const char *colon = strstr(e, ": ");
    if (colon && colon - e > 5 && !strncmp(colon - 5, "Error", 5) && !memchr(e, ' ', colon - e))
        return colon + 2;
    return e;
}

static void test_jinja_cases(void **state)
{
    cJSON *g = goldens(), *c;
    int n = 0, bad = 0;
    (void)state;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g, "jinja_cases"))
    {
        const char *name = jstr(c, "name"), *want = jstr(c, "expected");
        const char *want_err = jstr(c, "error"), *vars = jstr(c, "vars_json");
        char *err = NULL;
        struct jinja_tpl *t = jinja_tpl_parse(jstr(c, "template"), &err);
        struct jinja_ctx *cx = jinja_ctx_new();
        struct buf out;
        int rc = -1;
        buf_init(&out);
        if (t) {
            struct jval *v = jinja_json(cx, vars, strlen(vars), &err);
            assert_non_null(v);
            for (size_t i = 0; i < jinja_len(v); i++)
                jinja_ctx_set(cx, jinja_dict_key(v, i), jinja_dict_val(v, i));
            rc = jinja_render(t, cx, &out, &err);
        }
        if (want && (rc != 0 || strcmp(out.data ? out.data : "", want) != 0)) {
            printf("# %s: got '%s' (%s), want '%s'\n", name, out.data ? out.data : "",
                   rc ? err : "ok", want);
            bad++;
        } else if (want_err && (rc == 0 || !strstr(err, py_message(want_err)))) {
            printf("# %s: want error '%s', got %s\n", name, want_err, rc ? err : "a rendering");
            bad++;
        }
        n++;
        free(err);
        buf_release(&out);
        jinja_ctx_free(cx);
        jinja_tpl_free(t);
    }
    printf("# %d jinja cases, %d differ\n", n, bad);
    assert_true(n >= 50);
    assert_int_equal(bad, 0);
    cJSON_Delete(g);
}

/* Syntax errors and constructs outside the subset name the template line and column. */
static void test_errors_name_position(void **state)
{
    static const struct {
        const char *src, *want;
    } cases[] = {
        { "ab\n{% if x %}\nc", "line 3:" },
        /* the end of the template, where the if is open */ { "{{ x | nosuchfilter }}", "line 1:" },
        { "a\nb\n  {% nosuchtag %}", "line 3:" },
        { "{{ (1 + }}", "line 1:" },
        { "{% for x in y %}no end", "line 1:" },
    };
    (void)state;
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(cases); i++) {
        char *err = NULL;
        struct jinja_tpl *t = jinja_tpl_parse(cases[i].src, &err);
        struct jinja_ctx *cx = NULL;
        struct buf out;
        buf_init(&out);
        if (t) {
            cx = jinja_ctx_new();
            assert_int_equal(jinja_render(t, cx, &out, &err), -1);
        }
        assert_non_null(err);
        printf("# %s -> %s\n", cases[i].src, err);
        assert_non_null(strstr(err, cases[i].want));
        free(err);
        buf_release(&out);
        jinja_ctx_free(cx);
        jinja_tpl_free(t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conversations),
        cmocka_unit_test(test_jinja_cases),
        cmocka_unit_test(test_errors_name_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
