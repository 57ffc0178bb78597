/*
 * test_data: training windows from ids, text and chat JSONL; the seeded per-epoch order; the
 * resumable position; the assistant-only mask of chat data.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/tokdata.h"
#include "worker/engine/tokenizer.h"
#include "worker/train/data.h"

#define TINY   "tests/data/tiny-exaone4"
#define CALIDS "tests/data/tiny-a/calib.ids.u32"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/exaq-tdata.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rm_rf(dir);
}

static void test_ids_order_and_resume(void **state)
{
    (void)state;
    struct tdata d, e;
    char *err = NULL;
    assert_int_equal(tdata_open(&d, CALIDS, TINY, 50000, 64, 0.1, 7, &err), 0);
    int nw = (int)(d.n / 64);
    assert_int_equal(d.n_val, (int)(0.1 * nw));
    assert_int_equal(d.n_win + d.n_val, nw);
    assert_null(d.mask);
    /* Each epoch visits every training window once, in a different order. */
    int *seen = xcalloc((size_t)d.n_win, sizeof(int));
    int first[8], moved = 0;
    for (int k = 0; k < d.n_win; k++) {
        int w = tdata_window_at(&d, k);
        assert_true(w >= 0 && w < d.n_win);
        seen[w]++;
        if (k < 8)
            first[k] = w;
    }
    for (int w = 0; w < d.n_win; w++)
        assert_int_equal(seen[w], 1);
    for (int k = 0; k < 8; k++)
        moved += tdata_window_at(&d, d.n_win + k) != first[k];
    assert_true(moved > 0);
    /* The window handed out is the stream at that index; the val windows follow the training
     * ones. */
    const uint8_t *m;
    tdata_seek(&d, 0);
    const int32_t *p = tdata_next(&d, &m);
    assert_ptr_equal(p, d.ids + (size_t)first[0] * 64);
    assert_ptr_equal(tdata_val(&d, 0, &m), d.ids + (size_t)d.n_win * 64);
    /* Same seed: same order, from any position; another seed: another order. */
    assert_int_equal(tdata_open(&e, CALIDS, TINY, 50000, 64, 0.1, 7, &err), 0);
    tdata_seek(&d, 123);
    tdata_seek(&e, 123);
    for (int k = 0; k < 50; k++)
        assert_ptr_equal(tdata_next(&d, NULL) - d.ids, tdata_next(&e, NULL) - e.ids);
    tdata_release(&e);
    assert_int_equal(tdata_open(&e, CALIDS, TINY, 50000, 64, 0.1, 8, &err), 0);
    moved = 0;
    for (int k = 0; k < 8; k++)
        moved += tdata_window_at(&e, k) != first[k];
    assert_true(moved > 0);
    tdata_release(&e);
    tdata_release(&d);
    free(seen);

    /* Errors: too short for one window, ids outside the vocabulary, a missing file. */
    assert_int_equal(tdata_open(&d, CALIDS, TINY, 50000, 1 << 30, 0, 0, &err), -1);
    assert_non_null(strstr(err, "fewer than one window"));
    assert_int_equal(tdata_open(&d, CALIDS, TINY, 10, 64, 0, 0, &err), -1);
    assert_int_equal(tdata_open(&d, "/nonexistent.ids.u32", TINY, 50000, 64, 0, 0, &err), -1);
    free(err);
}

static void test_text(void **state)
{
    (void)state;
    char *path = path_join(dir, "t.txt"), *err = NULL;
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 200; i++)
        buf_printf(&b, "The quick brown fox %d jumps over the lazy dog. ", i);
    assert_int_equal(file_write_all(path, b.data, b.len), 0);
    struct tdata d;
    assert_int_equal(tdata_open(&d, path, TINY, 100000, 32, 0, 1, &err), 0);
    assert_int_equal(d.n_val, 0);
    assert_int_equal(d.n_win, (int)(d.n / 32));
    char msg[256];
    struct tok *t = tokdata_tok_load(TINY, NULL);
    int32_t *ids = NULL;
    int n = tok_encode(t, b.data, b.len, &ids, msg, sizeof(msg));
    assert_int_equal((size_t)n, d.n);
    assert_memory_equal(ids, d.ids, sizeof(int32_t) * d.n);
    free(ids);
    tok_free(t);
    tdata_release(&d);
    buf_release(&b);
    free(path);
    free(err);
}

static void test_chat_mask(void **state)
{
    (void)state;
    char *md = path_join(dir, "model"), *err = NULL;
    assert_int_equal(mkdir_p(md, 0755), 0);
    const char *files[][2] = {
        { TINY "/tokenizer.json", "tokenizer.json" },
        { TINY "/tokenizer_config.json", "tokenizer_config.json" },
        { "tests/data/chat/exaone-4.0-1.2b/chat_template.jinja", "chat_template.jinja" },
    };
    for (size_t i = 0; i < 3; i++) {
        char *dst = path_join(md, files[i][1]);
        assert_int_equal(file_copy(files[i][0], dst), 0);
        free(dst);
    }
    char *path = path_join(dir, "c.jsonl");
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 20; i++)
        buf_printf(&b,
                   "{\"messages\": [{\"role\": \"user\", \"content\": \"question %d about "
                   "apples\"}, {\"role\": \"assistant\", \"content\": \"zebra answer %d\"}]}\n",
                   i, i);
    assert_int_equal(file_write_all(path, b.data, b.len), 0);
    struct tdata d;
    assert_int_equal(tdata_open(&d, path, md, 100000, 16, 0, 1, &err), 0);
    assert_non_null(d.mask);
    /* The masked tokens decode to the assistant turns (plus the template's end of turn), and
     * no user text. */
    struct tok *t = tokdata_tok_load(md, NULL);
    int32_t *sel = xmalloc(sizeof(int32_t) * d.n), *un = xmalloc(sizeof(int32_t) * d.n);
    size_t ns = 0, nu = 0;
    for (size_t i = 0; i < d.n; i++) {
        if (d.mask[i])
            sel[ns++] = d.ids[i];
        else
            un[nu++] = d.ids[i];
    }
    char *s = tok_decode(t, sel, ns), *u = tok_decode(t, un, nu);
    assert_non_null(strstr(s, "zebra answer 7"));
    assert_null(strstr(s, "apples"));
    assert_null(strstr(s, "user"));
    assert_non_null(strstr(u, "question 7 about apples"));
    assert_null(strstr(u, "zebra"));
    free(s), free(u), free(sel), free(un);
    tok_free(t);
    tdata_release(&d);

    /* A line without messages, and a model without a chat template. */
    assert_int_equal(file_write_all(path, "{\"x\": 1}\n", 9), 0);
    assert_int_equal(tdata_open(&d, path, md, 100000, 16, 0, 1, &err), -1);
    assert_non_null(strstr(err, ":1:"));
    free(err);
    err = NULL;
    assert_int_equal(tdata_open(&d, path, TINY, 100000, 16, 0, 1, &err), -1);
    assert_non_null(strstr(err, "chat template"));
    buf_release(&b);
    free(path);
    free(md);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_order_and_resume),
        cmocka_unit_test_setup_teardown(test_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chat_mask, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
