/*
 * test_safetensors: common/st.c reading, validation, directory lookup and writing.
 *
 * Proves: every dtype round-trips through write -> read (bytes, shapes, 0-d and empty tensors,
 * header padded to 8, descending-alignment order, aligned data pointers); each class of corrupt
 * file (truncated, overlapping offsets, header longer than the file, unknown dtype, giant header
 * length, non-object header, shape/offset mismatch, duplicate keys, holes, bad UTF-8, trailing
 * bytes, non-string metadata, negative or fractional numbers) yields its specific error and no
 * crash; sharded writing produces model-0000k-of-0000n files and an index whose total_size is
 * the sum of tensor bytes, and reading resolves every name across shards; index errors
 * (missing file, tensor not in its file) are reported; the checked-in tiny model opens.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>
#include <cmocka.h>

#include "common/util.h"
#include "common/st.h"

static char *tmpdir_new(void)
{
    char tmpl[] = "/tmp/exaq-st-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return xstrdup(d);
}

/* An in-memory file: 8-byte length, the header (padded to pad_to if > 0), data_len bytes. */
static unsigned char *make_image(const char *header, size_t data_len, size_t *len)
{
    size_t hn = strlen(header);
    *len = 8 + hn + data_len;
    unsigned char *b = xcalloc(*len + 1, 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    memcpy(b + 8, header, hn);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hn + i] = (unsigned char)(i * 7 + 1);
    return b;
}

/* Parses the image and checks that it fails with an error containing `want`. */
static void expect_error(const char *header, size_t data_len, const char *want)
{
    size_t len;
    unsigned char *b = make_image(header, data_len, &len);
    struct st_file *f = NULL;
    char *err = NULL;
    int rc = st_file_parse(&f, b, len, "bad.safetensors", &err);
    if (rc == 0 || !err || !strstr(err, want))
        printf("header %s\n  rc %d err '%s', want '%s'\n", header, rc, err ? err : "(none)", want);
    assert_true(rc < 0);
    assert_null(f);
    assert_non_null(err);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "bad.safetensors: "));
    free(err);
    free(b);
}

static void test_corrupt_headers(void **state)
{
    (void)state;
    /* Baseline: this one is valid. */
    size_t len;
    unsigned char *b =
        make_image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &len);
    struct st_file *f = NULL;
    char *err = NULL;
    assert_int_equal(st_file_parse(&f, b, len, "ok.safetensors", &err), 0);
    assert_int_equal(st_file_count(f), 1);
    st_file_free(f);
    free(b);

    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 12, "data_offsets [4,12] overlap the previous tensor 'a'");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                 20, "leave a hole after the previous tensor 'a'");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                 "leave a hole at the start");
    expect_error("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                 "unknown or unsupported dtype 'Q4'");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                 "hold 8 bytes but dtype F32 and shape [3] need 12");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                 16, "duplicate tensor name 'a'");
    expect_error("{\"__metadata__\":{\"format\":\"pt\"},\"__metadata__\":{}}", 0,
                 "duplicate key '__metadata__'");
    expect_error("[1,2,3]", 0, "not a JSON object");
    expect_error(" {}", 0, "not a JSON object");
    expect_error("{\"a\":", 0, "not valid JSON");
    expect_error("{} x", 0, "trailing bytes");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
                 "header describes 8 data bytes but the file holds 12");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                 "shape entry 0 is not a non-negative integer");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8,
                 "shape entry 0 is not a non-negative integer");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                 "\"data_offsets\":[0,8]}}",
                 8, "overflows");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                 "end before they begin");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                 "needs 'data_offsets'");
    expect_error("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "no string 'dtype'");
    expect_error("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "no 'shape' array");
    expect_error("{\"a\":7}", 0, "tensor 'a' is not a JSON object");
    expect_error("{\"__metadata__\":{\"format\":1}}", 0,
                 "__metadata__ value 'format' is not a "
                 "string");
    expect_error("{\"__metadata__\":[]}", 0, "__metadata__ is not an object");
    expect_error("{\"a\xff\":{}}", 0, "not valid UTF-8");
    expect_error("{\"\xed\xa0\x80\":{}}", 0, "not valid UTF-8"); /* a UTF-16 surrogate */
    expect_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                 "\"data_offsets\":[0,4]}}",
                 4, "9 dimensions");

    /* Header length larger than the file, giant header length, truncated length field. */
    unsigned char small[16] = { 0 };
    small[0] = 100; /* N = 100, file has 16 bytes */
    memcpy(small + 8, "{}      ", 8);
    err = NULL;
    assert_true(st_file_parse(&f, small, sizeof(small), "bad.safetensors", &err) < 0);
    assert_non_null(strstr(err, "header length 100 exceeds the file size (16 bytes)"));
    free(err);
    err = NULL;
    memset(small, 0xff, 8); /* N = 2^64 - 1 */
    assert_true(st_file_parse(&f, small, sizeof(small), "bad.safetensors", &err) < 0);
    assert_non_null(strstr(err, "exceeds the limit of 100000000 bytes"));
    free(err);
    err = NULL;
    assert_true(st_file_parse(&f, small, 5, "bad.safetensors", &err) < 0);
    assert_non_null(strstr(err, "file too small (5 bytes)"));
    free(err);
    err = NULL;
    memset(small, 0, 8); /* N = 0 */
    assert_true(st_file_parse(&f, small, 8, "bad.safetensors", &err) < 0);
    assert_non_null(strstr(err, "not a JSON object"));
    free(err);
}

static void test_truncated_file_on_disk(void **state)
{
    (void)state;
    char *dir = tmpdir_new();
    char *p = path_join(dir, "model.safetensors");
    float data[6] = { 1, 2, 3, 4, 5, 6 };
    struct st_wtensor t = {
        .name = "w", .dtype = ST_F32, .ndim = 2, .shape = { 2, 3 }, .data = data
    };
    char *err = NULL;
    assert_int_equal(st_write_file(p, &t, 1, NULL, NULL, &err), 0);
    /* Cut the last 4 bytes off. */
    char *text;
    size_t len;
    assert_int_equal(file_read_all(p, &text, &len), 0);
    assert_int_equal(file_write_all(p, text, len - 4), 0);
    struct st_file *f = NULL;
    assert_true(st_file_open(&f, p, &err) < 0);
    assert_null(f);
    assert_non_null(strstr(err, "model.safetensors: header describes 24 data bytes but the file "
                                "holds 20"));
    free(err);
    err = NULL;
    /* A file shorter than the length field, and one that does not exist. */
    assert_int_equal(file_write_all(p, text, 3), 0);
    assert_true(st_file_open(&f, p, &err) < 0);
    assert_non_null(strstr(err, "file too small (3 bytes)"));
    free(err);
    err = NULL;
    assert_int_equal(st_file_open(&f, "/nonexistent/x.safetensors", &err), -ENOENT);
    assert_non_null(strstr(err, "cannot open '/nonexistent/x.safetensors'"));
    free(err);
    free(text);
    free(p);
    rm_rf(dir);
    free(dir);
}

static void test_roundtrip_all_dtypes(void **state)
{
    (void)state;
    char *dir = tmpdir_new();
    char *p = path_join(dir, "all.safetensors");
    struct st_wtensor ts[ST_DTYPE_COUNT + 2];
    unsigned char *bufs[ST_DTYPE_COUNT + 2];
    int n = 0;
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        struct st_wtensor *t = &ts[n];
        memset(t, 0, sizeof(*t));
        t->name = xasprintf("t.%s", st_dtype_name((enum st_dtype)d));
        t->dtype = (enum st_dtype)d;
        t->ndim = 2;
        t->shape[0] = 3;
        t->shape[1] = 1 + d;
        int ok;
        size_t nb = (size_t)st_wtensor_nbytes(t, &ok);
        assert_true(ok);
        bufs[n] = xmalloc(nb);
        for (size_t i = 0; i < nb; i++)
            bufs[n][i] = (unsigned char)(rand() & 0xff);
        t->data = bufs[n];
        n++;
    }
    /* A 0-d scalar and an empty tensor. */
    float scalar = 3.5f;
    memset(&ts[n], 0, sizeof(ts[n]));
    ts[n].name = xstrdup("scalar");
    ts[n].dtype = ST_F32;
    ts[n].ndim = 0;
    ts[n].data = &scalar;
    bufs[n++] = NULL;
    memset(&ts[n], 0, sizeof(ts[n]));
    ts[n].name = xstrdup("empty");
    ts[n].dtype = ST_BF16;
    ts[n].ndim = 2;
    ts[n].shape[0] = 0;
    ts[n].shape[1] = 5;
    ts[n].data = "";
    bufs[n++] = NULL;

    char *err = NULL;
    assert_int_equal(st_write_file(p, ts, n, NULL, NULL, &err), 0);
    assert_null(err);
    struct st_file *f = NULL;
    assert_int_equal(st_file_open(&f, p, &err), 0);
    assert_int_equal(st_file_count(f), n);
    assert_string_equal(st_file_metadata(f, "format"), "pt");
    size_t prev_align = 64;
    const char *prev_name = "";
    for (int i = 0; i < n; i++) {
        /* File order: descending element size, then name. */
        const struct st_tensor *t = st_file_tensor(f, i);
        size_t al = st_dtype_size(t->dtype);
        assert_true(al <= prev_align);
        if (al == prev_align)
            assert_true(strcmp(prev_name, t->name) < 0);
        prev_align = al;
        prev_name = t->name;
        assert_true((uintptr_t)t->data % al == 0);
    }
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = st_file_find(f, ts[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        for (int k = 0; k < t->ndim; k++)
            assert_int_equal(t->shape[k], ts[i].shape[k]);
        if (t->nbytes)
            assert_memory_equal(t->data, ts[i].data, t->nbytes);
    }
    const struct st_tensor *sc = st_file_find(f, "scalar");
    assert_int_equal(sc->numel, 1);
    float v;
    st_tensor_to_f32(sc, &v);
    assert_true(v == 3.5f);
    assert_int_equal(st_file_find(f, "empty")->numel, 0);
    assert_null(st_file_find(f, "nope"));
    st_file_free(f);

    /* Header padded with spaces to a multiple of 8. */
    char *text;
    size_t len;
    assert_int_equal(file_read_all(p, &text, &len), 0);
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--)
        hn = (hn << 8) | (unsigned char)text[i];
    assert_int_equal(hn % 8, 0);
    assert_true(text[8] == '{');
    assert_true(strncmp(text + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31) == 0);
    free(text);
    for (int i = 0; i < n; i++) {
        free((char *)ts[i].name);
        free(bufs[i]);
    }
    free(p);
    rm_rf(dir);
    free(dir);
}

static void test_misaligned_copy_and_convert(void **state)
{
    (void)state;
    /* Header of 61 bytes puts the F32 data at offset 69: misaligned in the buffer. */
    const char *h = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}     ";
    size_t hn = strlen(h), len = 8 + hn + 8;
    unsigned char *b = xcalloc(len + 8, 1);
    unsigned char *img = b + 1; /* also misalign the base */
    for (int i = 0; i < 8; i++)
        img[i] = (unsigned char)((uint64_t)hn >> (8 * i));
    memcpy(img + 8, h, hn);
    float vals[2] = { -1.25f, 7.0f };
    memcpy(img + 8 + hn, vals, 8);
    struct st_file *f = NULL;
    char *err = NULL;
    assert_int_equal(st_file_parse(&f, img, len, "m.safetensors", &err), 0);
    const struct st_tensor *t = st_file_find(f, "x");
    assert_true((uintptr_t)t->data % 4 == 0);
    float out[2];
    st_tensor_to_f32(t, out);
    assert_true(out[0] == -1.25f && out[1] == 7.0f);
    st_file_free(f);
    free(b);
}

struct fill_ctx {
    int calls;
    int fail_on;
};

static int fill_pattern(void *arg, const struct st_wtensor *t, void *dst, size_t nbytes, char **err)
{
    struct fill_ctx *c = arg;
    if (++c->calls == c->fail_on) {
        *err = xasprintf("fill failed for '%s'", t->name);
        return -EIO;
    }
    for (size_t i = 0; i < nbytes; i++)
        ((unsigned char *)dst)[i] = (unsigned char)(i + strlen(t->name));
    return 0;
}

static void test_sharded_write_read(void **state)
{
    (void)state;
    char *dir = tmpdir_new();
    enum { N = 10 };
    struct st_wtensor ts[N];
    char names[N][32];
    for (int i = 0; i < N; i++) {
        memset(&ts[i], 0, sizeof(ts[i]));
        snprintf(names[i], sizeof(names[i]), "model.layers.%d.w", i);
        ts[i].name = names[i];
        ts[i].dtype = i % 2 ? ST_BF16 : ST_F32;
        ts[i].ndim = 2;
        ts[i].shape[0] = 16 + i;
        ts[i].shape[1] = 8;
    }
    uint64_t total = 0;
    for (int i = 0; i < N; i++) {
        int ok;
        total += st_wtensor_nbytes(&ts[i], &ok);
    }
    struct fill_ctx fc = { 0, 0 };
    char *err = NULL;
    assert_int_equal(st_write_dir(dir, ts, N, 1500, fill_pattern, &fc, &err), 0);
    assert_int_equal(fc.calls, N);
    char *ip = path_join(dir, "model.safetensors.index.json");
    char *text;
    size_t len;
    assert_int_equal(file_read_all(ip, &text, &len), 0);
    cJSON *idx = cJSON_Parse(text);
    assert_non_null(idx);
    const cJSON *ts_json = cJSON_GetObjectItem(cJSON_GetObjectItem(idx, "metadata"), "total_size");
    assert_true(cJSON_IsNumber(ts_json) && (uint64_t)ts_json->valuedouble == total);
    const cJSON *wm = cJSON_GetObjectItem(idx, "weight_map");
    assert_int_equal(cJSON_GetArraySize(wm), N);
    const char *first = cJSON_GetObjectItem(wm, "model.layers.0.w")->valuestring;
    assert_true(strncmp(first, "model-00001-of-0000", 19) == 0);
    cJSON_Delete(idx);
    free(text);

    struct st_dir *d = NULL;
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    assert_true(st_dir_nfiles(d) > 1);
    assert_int_equal(st_dir_count(d), N);
    for (int i = 0; i < N; i++) {
        const struct st_tensor *t = st_dir_find(d, names[i]);
        assert_non_null(t);
        assert_int_equal(t->shape[0], 16 + i);
        const unsigned char *p = t->data;
        for (size_t k = 0; k < t->nbytes; k++)
            assert_int_equal(p[k], (unsigned char)(k + strlen(names[i])));
    }
    st_dir_free(d);

    /* Index naming a file that does not exist. */
    char *bad =
        xstrdup("{\"metadata\":{\"total_size\":1},\"weight_map\":{\"a\":\"gone.safetensors\"}}");
    assert_int_equal(file_write_all(ip, bad, strlen(bad)), 0);
    assert_true(st_dir_open(&d, dir, &err) < 0);
    assert_non_null(strstr(err, "weight_map names 'gone.safetensors', which does not exist"));
    free(err);
    err = NULL;
    free(bad);
    /* Index mapping a tensor to a shard that does not hold it. */
    bad = xstrdup("{\"weight_map\":{\"model.layers.9.w\":\"model-00001-of-00004.safetensors\"}}");
    assert_int_equal(file_write_all(ip, bad, strlen(bad)), 0);
    char *shard1 = path_join(dir, "model-00001-of-00004.safetensors");
    if (is_file(shard1)) {
        assert_true(st_dir_open(&d, dir, &err) < 0);
        assert_non_null(strstr(err, "tensor 'model.layers.9.w' is mapped to "
                                    "'model-00001-of-00004.safetensors' but that file does not "
                                    "contain it"));
        free(err);
        err = NULL;
    }
    free(shard1);
    free(bad);
    /* Without the index: all *.safetensors are read. */
    unlink(ip);
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    assert_int_equal(st_dir_count(d), N);
    st_dir_free(d);

    /* Rewriting unsharded removes the stale shards; a fill error leaves nothing behind. */
    fc.calls = 0;
    assert_int_equal(st_write_dir(dir, ts, N, 0, fill_pattern, &fc, &err), 0);
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    assert_int_equal(st_dir_nfiles(d), 1);
    st_dir_free(d);
    fc.calls = 0;
    fc.fail_on = 3;
    char *one = path_join(dir, "x.safetensors");
    assert_int_equal(st_write_file(one, ts, N, fill_pattern, &fc, &err), -EIO);
    /* File order is F32 first (layers 0, 2, 4, ...), so the third fill is layer 4. */
    assert_string_equal(err, "fill failed for 'model.layers.4.w'");
    free(err);
    err = NULL;
    assert_false(is_file(one));
    free(one);

    /* Duplicate tensor across two files without an index. */
    char *a = path_join(dir, "a.safetensors"), *b = path_join(dir, "model.safetensors");
    unlink(b);
    struct st_wtensor dup = {
        .name = "same", .dtype = ST_U8, .ndim = 1, .shape = { 1 }, .data = "z"
    };
    assert_int_equal(st_write_file(a, &dup, 1, NULL, NULL, &err), 0);
    char *c = path_join(dir, "c.safetensors");
    assert_int_equal(st_write_file(c, &dup, 1, NULL, NULL, &err), 0);
    assert_true(st_dir_open(&d, dir, &err) < 0);
    assert_non_null(strstr(err, "tensor 'same' appears in both 'a.safetensors' and "
                                "'c.safetensors'"));
    free(err);
    err = NULL;
    /* Writer rejects duplicate names and bad shapes. */
    struct st_wtensor two[2] = { dup, dup };
    assert_true(st_write_file(a, two, 2, NULL, NULL, &err) < 0);
    assert_non_null(strstr(err, "duplicate tensor name 'same'"));
    free(err);
    err = NULL;
    struct st_wtensor neg = {
        .name = "neg", .dtype = ST_F32, .ndim = 1, .shape = { -1 }, .data = ""
    };
    assert_true(st_write_file(a, &neg, 1, NULL, NULL, &err) < 0);
    free(err);
    free(a);
    free(b);
    free(c);
    free(ip);
    rm_rf(dir);
    free(dir);
}

static void test_tiny_model_opens(void **state)
{
    (void)state;
    if (!is_dir("tests/data/tiny-exaone4")) {
        printf("SKIP tests/data/tiny-exaone4 missing\n");
        skip();
    }
    struct st_dir *d = NULL;
    char *err = NULL;
    assert_int_equal(st_dir_open(&d, "tests/data/tiny-exaone4", &err), 0);
    const struct st_tensor *t = st_dir_find(d, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_BF16);
    assert_int_equal(t->shape[0], 4096);
    assert_int_equal(t->shape[1], 256);
    assert_non_null(st_dir_find(d, "model.layers.3.self_attn.k_norm.weight"));
    assert_null(st_dir_find(d, "lm_head.weight"));
    st_dir_free(d);
    struct st_file *g = NULL;
    assert_int_equal(st_file_open(&g, "tests/data/tiny-a/golden.safetensors", &err), 0);
    assert_int_equal(st_file_find(g, "logits")->shape[1], 4096);
    st_file_free(g);
    assert_true(st_dir_open(&d, "/nonexistent-dir", &err) < 0);
    assert_non_null(strstr(err, "does not exist"));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corrupt_headers),
        cmocka_unit_test(test_truncated_file_on_disk),
        cmocka_unit_test(test_roundtrip_all_dtypes),
        cmocka_unit_test(test_misaligned_copy_and_convert),
        cmocka_unit_test(test_sharded_write_read),
        cmocka_unit_test(test_tiny_model_opens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
