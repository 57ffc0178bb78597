/*
 * test_reliability: the file-level promises behind docs/design.md "Promises and the tests that
 * check them".
 *
 * Proves: a FIFO or a link to /dev/zero where a regular file must be (model.safetensors,
 * config.json, a file hashed for a key) fails at once with a clear error instead of blocking in
 * open() or reading forever (st_file_open, config_load, file_read_all, sha256_file_hex); a
 * package never takes a file through a symlink that leaves the model dir (pkg_check_model), while
 * a symlink inside the dir is fine; an integer too large for a config field is reported as out
 * of range with the bound ("vocab_size": 2^40), not as "must be an integer".
 *
 * Every blocking case runs under alarm(10): a regression hangs into SIGALRM and fails.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "daemon/pkg.h"
#include "common/st.h"
#include "worker/engine/config.h"

#define TINY "tests/data/tiny-exaone4"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/exaq-rel.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(dir);
    return 0;
}

static char *in_dir(const char *name)
{
    return path_join(dir, name);
}

static void test_fifo_does_not_block(void **state)
{
    char *fifo = in_dir("model.safetensors"), *err = NULL, sha[SHA256_HEX_LEN], *text = NULL;
    struct st_file *f = NULL;
    (void)state;
    assert_int_equal(mkfifo(fifo, 0600), 0);
    alarm(10);
    assert_true(st_file_open(&f, fifo, &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(err, "not a regular file (a FIFO)"));
    free(err);
    assert_int_equal(file_read_all(fifo, &text, NULL), -EINVAL);
    assert_int_equal(sha256_file_hex(fifo, sha), -EINVAL);
    assert_int_equal(file_open_regular(fifo), -EINVAL);
    alarm(0);
    free(fifo);
}

static void test_dev_zero_link_refused(void **state)
{
    char *link = in_dir("config.json"), *err = NULL, sha[SHA256_HEX_LEN];
    struct config c;
    (void)state;
    assert_int_equal(symlink("/dev/zero", link), 0);
    alarm(10);
    assert_true(config_load(&c, link, &err) < 0);
    assert_non_null(err);
    assert_non_null(strstr(err, "not a regular file"));
    free(err);
    assert_int_equal(sha256_file_hex(link, sha), -EINVAL);
    alarm(0);
    free(link);
}

/* A valid model dir: the tiny test model's files copied in. */
static char *make_model(const char *name)
{
    static const char *files[] = { "config.json", "tokenizer.json", "tokenizer_config.json",
                                   "model.safetensors" };
    char *m = in_dir(name);
    assert_int_equal(mkdir_p(m, 0755), 0);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *s = path_join(TINY, files[i]), *t = path_join(m, files[i]);
        assert_int_equal(file_copy(s, t), 0);
        free(s);
        free(t);
    }
    return m;
}

static void expect_refused(const char *m, const char *want)
{
    char **files = NULL, *reason = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_true(pkg_check_model(m, true, 10, &files, &n, &total, &reason) < 0);
    assert_non_null(reason);
    if (!strstr(reason, want))
        fail_msg("reason '%s' lacks '%s'", reason, want);
    free(reason);
}

static void test_package_symlink_outside(void **state)
{
    char *m = make_model("out"), *notes = path_join(m, "notes.txt"), **files = NULL;
    char *reason = NULL, *tok = path_join(m, "tokenizer.json"), *elsewhere = in_dir("tok.json");
    size_t n = 0;
    int64_t total = 0;
    (void)state;
    /* A link inside the dir is packaged (as the file it names). */
    assert_int_equal(symlink("config.json", notes), 0);
    assert_int_equal(pkg_check_model(m, true, 10, &files, &n, &total, &reason), 0);
    assert_int_equal((int)n, 5);
    pkg_files_free(files, n);
    unlink(notes);
    /* A lane output linking out of its dir. */
    assert_int_equal(symlink("/etc/passwd", notes), 0);
    expect_refused(m, "'notes.txt' is a symlink to '/etc/passwd', outside the model dir");
    unlink(notes);
    /* A base model whose tokenizer is linked elsewhere. */
    assert_int_equal(rename(tok, elsewhere), 0);
    assert_int_equal(symlink(elsewhere, tok), 0);
    expect_refused(m, "'tokenizer.json' is a symlink to");
    free(m);
    free(notes);
    free(tok);
    free(elsewhere);
}

static void test_package_special_files(void **state)
{
    char *m = make_model("special"), *fifo = path_join(m, "pipe"), *z = path_join(m, "zero");
    (void)state;
    alarm(10);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    expect_refused(m, "'pipe' is not a regular file");
    unlink(fifo);
    assert_int_equal(symlink("/dev/zero", z), 0);
    expect_refused(m, "'zero'");
    alarm(0);
    free(m);
    free(fifo);
    free(z);
}

static void test_int_out_of_range(void **state)
{
    static const char *base = "{\"hidden_size\":64,\"intermediate_size\":128,"
                              "\"num_hidden_layers\":2,\"num_attention_heads\":4,";
    struct config c;
    char *err = NULL, *json;
    (void)state;
    /* 2^40 */
    json = xasprintf("%s\"vocab_size\":1099511627776}", base);
    assert_true(config_parse(&c, json, strlen(json), "config.json", &err) < 0);
    assert_non_null(err);
    if (!strstr(err, "field 'vocab_size' is 1099511627776, out of range (at most 2147483647)"))
        fail_msg("error '%s'", err);
    free(err);
    free(json);
    err = NULL;
    json = xasprintf("%s\"vocab_size\":-3}", base);
    assert_true(config_parse(&c, json, strlen(json), "config.json", &err) < 0);
    if (!strstr(err, "field 'vocab_size' is -3; it must be >= 1"))
        fail_msg("error '%s'", err);
    free(err);
    free(json);
    err = NULL;
    json = xasprintf("%s\"vocab_size\":2.5}", base);
    assert_true(config_parse(&c, json, strlen(json), "config.json", &err) < 0);
    if (!strstr(err, "field 'vocab_size' must be an integer"))
        fail_msg("error '%s'", err);
    free(err);
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fifo_does_not_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dev_zero_link_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_package_symlink_outside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_package_special_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int_out_of_range, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
