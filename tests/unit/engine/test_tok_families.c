/*
 * test_tok_families: the tokenizer families of tests/data/tokenizers/ against HF `tokenizers`.
 *
 * Each tokenizer there was trained, and its goldens made, by tests/tools/make_tokenizer_goldens.py
 * (tokenizers 0.23.3): SentencePiece-style BPE with byte_fallback in its three shapes (the
 * Prepend/Replace normalizers, Metaspace "first" without split, Metaspace "always" with split),
 * a Unigram with byte_fallback, and the Llama-3 and Qwen2 byte-level BPEs. For every one:
 *
 *   - encode(mixed.txt) (1.2 MB of code, English, Korean, emoji, whitespace runs, rare Unicode
 *     and literal special-token strings) equals the library's ids exactly;
 *   - decode of those ids equals the library's decode, byte for byte;
 *   - the same for every short probe of probes.txt (edge cases around spaces, ▁, special tokens,
 *     byte fallback);
 *   - encoding the 1.2 MB takes well under a second (printed; a loose bound is asserted).
 *
 * test_variants then edits those tokenizer.json files as variants.json says (no byte_fallback,
 * unk with and without fusing, prepend_scheme never, no decoder, Strip, normalized and
 * single_word added tokens, ignore_merges, a Unigram behind the legacy normalizers) and checks
 * each against the library on the first 150 KB of the text and on the probes.
 */
#include <cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zip.h>

#include <cmocka.h>

#include "common/util.h"
#include "worker/engine/tokenizer.h"

#define DIR "tests/data/tokenizers/"

static char *mixed, *probes;
static size_t mixed_len, probes_len;

/* Reads one member of a zip archive into a new buffer (NUL-terminated); fails the test if it
 * cannot. */
static char *zip_member(const char *path, const char *name, size_t *len)
{
    int zerr = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY, &zerr);
    if (!za)
        fail_msg("cannot open %s (libzip error %d)", path, zerr);
    zip_stat_t st;
    if (zip_stat(za, name, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
        fail_msg("%s has no member %s", path, name);
    zip_file_t *f = zip_fopen(za, name, 0);
    if (!f)
        fail_msg("cannot open %s in %s", name, path);
    char *data = xmalloc(st.size + 1);
    zip_int64_t got = zip_fread(f, data, st.size);
    if (got < 0 || (zip_uint64_t)got != st.size)
        fail_msg("short read of %s in %s", name, path);
    data[st.size] = 0;
    zip_fclose(f);
    zip_close(za);
    *len = st.size;
    return data;
}

static uint32_t rd32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Prints the first difference of two id lists with the text around it. */
static void report_ids(const char *name, const struct tok *t, const int32_t *got, size_t ngot,
                       const char *want_raw, size_t nwant)
{
    size_t i = 0;
    while (i < ngot && i < nwant && (uint32_t)got[i] == rd32(want_raw + 4 * i))
        i++;
    fprintf(stderr, "%s: %zu ids, want %zu; first difference at %zu\n", name, ngot, nwant, i);
    size_t lo = i > 5 ? i - 5 : 0;
    for (size_t k = lo; k < i + 5; k++) {
        const char *g = k < ngot ? tok_id_token(t, got[k]) : NULL;
        const char *w = k < nwant ? tok_id_token(t, (int32_t)rd32(want_raw + 4 * k)) : NULL;
        fprintf(stderr, "  [%zu] got %d '%s'  want %d '%s'\n", k, k < ngot ? got[k] : -1,
                g ? g : "", k < nwant ? (int)rd32(want_raw + 4 * k) : -1, w ? w : "");
    }
}

static void report_text(const char *name, const char *got, size_t ngot, const char *want,
                        size_t nwant)
{
    size_t i = 0;
    while (i < ngot && i < nwant && got[i] == want[i])
        i++;
    size_t lo = i > 20 ? i - 20 : 0;
    fprintf(stderr, "%s: decoded %zu bytes, want %zu; first difference at byte %zu\n", name, ngot,
            nwant, i);
    fprintf(stderr, "  got  '%.*s'\n  want '%.*s'\n", (int)(EXAQ_MIN(ngot, i + 20) - lo), got + lo,
            (int)(EXAQ_MIN(nwant, i + 20) - lo), want + lo);
}

/* Encode and decode of text against the goldens; returns true when both match. */
static bool check_one(const char *name, const struct tok *t, const char *text, size_t len,
                      const char *want_ids, size_t nwant, const char *want_dec, size_t ndec)
{
    int32_t *ids = NULL;
    char err[512] = "";
    int n = tok_encode(t, text, len, &ids, err, sizeof(err));
    if (n < 0) {
        fprintf(stderr, "%s: encode failed: %s\n", name, err);
        return false;
    }
    bool same = (size_t)n == nwant;
    for (size_t i = 0; same && i < nwant; i++)
        same = (uint32_t)ids[i] == rd32(want_ids + 4 * i);
    if (!same)
        report_ids(name, t, ids, (size_t)n, want_ids, nwant);
    size_t dl = 0;
    char *dec = tok_decode_n(t, ids, (size_t)n, &dl);
    bool dsame = dl == ndec && memcmp(dec, want_dec, ndec) == 0;
    if (!dsame)
        report_text(name, dec, dl, want_dec, ndec);
    free(dec);
    free(ids);
    return same && dsame;
}

/* The probes of probes.txt (one per line, "\n" written as a backslash and n) against their
 * goldens; returns true when all match. */
static bool check_probes(const char *fam, const struct tok *t, const char *pids, size_t npids,
                         const char *pdec, size_t npdec)
{
    bool ok = true;
    size_t pi = 0, pd = 0, line = 0;
    const char *p = probes, *end = probes + probes_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        assert_non_null(nl);
        struct buf b;
        buf_init(&b);
        for (const char *q = p; q < nl; q++) {
            if (q[0] == '\\' && q + 1 < nl && q[1] == 'n') {
                buf_append(&b, "\n", 1);
                q++;
            } else {
                buf_append(&b, q, 1);
            }
        }
        assert_true(pi + 4 <= npids && pd + 4 <= npdec);
        size_t k = rd32(pids + pi), dl = rd32(pdec + pd);
        assert_true(pi + 4 + 4 * k <= npids && pd + 4 + dl <= npdec);
        char label[96];
        snprintf(label, sizeof(label), "%s probe %zu", fam, line);
        if (!check_one(label, t, b.data ? b.data : "", b.len, pids + pi + 4, k, pdec + pd + 4, dl))
            ok = false;
        pi += 4 + 4 * k;
        pd += 4 + dl;
        buf_release(&b);
        p = nl + 1;
        line++;
    }
    assert_int_equal(pi, npids);
    assert_int_equal(pd, npdec);
    return ok;
}

static void run_family(const char *fam)
{
    char path[256];
    snprintf(path, sizeof(path), DIR "%s/tokenizer.json", fam);
    char *err = NULL;
    struct tok *t = tok_load(path, &err);
    if (!t)
        fail_msg("%s", err);
    snprintf(path, sizeof(path), DIR "%s/golden.zip", fam);
    size_t nids, ndec, npids, npdec;
    char *ids = zip_member(path, "ids.u32", &nids);
    char *dec = zip_member(path, "decoded.txt", &ndec);
    char *pids = zip_member(path, "probes.ids.u32", &npids);
    char *pdec = zip_member(path, "probes.decoded.txt", &npdec);
    assert_int_equal(nids % 4, 0);

    /* The big text, timed. */
    double t0 = now_s();
    int32_t *tmp = NULL;
    char msg[256];
    int cnt = tok_encode(t, mixed, mixed_len, &tmp, msg, sizeof(msg));
    double dt = now_s() - t0;
    free(tmp);
    assert_true(cnt > 0);
    printf("# %-15s %zu bytes -> %d ids in %.3f s (%.1f MB/s)\n", fam, mixed_len, cnt, dt,
           mixed_len / dt / 1e6);
    assert_true(dt < 5.0); /* loose: the machine may be shared; a quadratic path takes minutes */
    bool ok = check_one(fam, t, mixed, mixed_len, ids, nids / 4, dec, ndec);
    if (!check_probes(fam, t, pids, npids, pdec, npdec))
        ok = false;
    free(ids);
    free(dec);
    free(pids);
    free(pdec);
    tok_free(t);
    assert_true(ok);
}

/* Applies one variants.json patch ({"path": [...], "value": ...}) to a parsed tokenizer.json. */
static void apply_patch(cJSON *root, const cJSON *patch)
{
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(patch, "path");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(patch, "value");
    assert_true(cJSON_IsArray(path) && value);
    int n = cJSON_GetArraySize(path);
    cJSON *obj = root;
    for (int i = 0; i < n - 1; i++) {
        obj = cJSON_GetObjectItemCaseSensitive(obj, cJSON_GetArrayItem(path, i)->valuestring);
        assert_non_null(obj);
    }
    const char *key = cJSON_GetArrayItem(path, n - 1)->valuestring;
    cJSON *copy = cJSON_Duplicate(value, 1);
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, copy);
    else
        cJSON_AddItemToObject(obj, key, copy);
}

/* The variants: edits of the six tokenizers for the options they do not use, checked on the
 * first 150 KB of mixed.txt and on the probes. */
static void test_variants(void **state)
{
    (void)state;
    char *list = NULL;
    size_t list_len = 0;
    assert_int_equal(file_read_all(DIR "variants.json", &list, &list_len), 0);
    cJSON *vs = cJSON_ParseWithLength(list, list_len);
    assert_true(cJSON_IsArray(vs) && cJSON_GetArraySize(vs) >= 8);
    size_t slen;
    char *slice = zip_member(DIR "variants.zip", "slice.txt", &slen);
    bool ok = true;
    const cJSON *v;
    cJSON_ArrayForEach(v, vs)
    {
        const char *name = cJSON_GetObjectItemCaseSensitive(v, "name")->valuestring;
        const char *base = cJSON_GetObjectItemCaseSensitive(v, "base")->valuestring;
        char path[256], *json = NULL;
        size_t jlen;
        snprintf(path, sizeof(path), DIR "%s/tokenizer.json", base);
        assert_int_equal(file_read_all(path, &json, &jlen), 0);
        cJSON *root = cJSON_ParseWithLength(json, jlen);
        assert_non_null(root);
        const cJSON *patch;
        cJSON_ArrayForEach(patch, cJSON_GetObjectItemCaseSensitive(v, "patch"))
            apply_patch(root, patch);
        char *edited = cJSON_PrintUnformatted(root);
        char *err = NULL;
        struct tok *t = tok_load_buf(edited, strlen(edited), &err);
        if (!t)
            fail_msg("variant %s: %s", name, err);
        size_t nids, ndec, npids, npdec;
        char m1[128], m2[128], m3[128], m4[128];
        snprintf(m1, sizeof(m1), "%s.ids.u32", name);
        snprintf(m2, sizeof(m2), "%s.decoded.txt", name);
        snprintf(m3, sizeof(m3), "%s.probes.ids.u32", name);
        snprintf(m4, sizeof(m4), "%s.probes.decoded.txt", name);
        char *ids = zip_member(DIR "variants.zip", m1, &nids);
        char *dec = zip_member(DIR "variants.zip", m2, &ndec);
        char *pids = zip_member(DIR "variants.zip", m3, &npids);
        char *pdec = zip_member(DIR "variants.zip", m4, &npdec);
        bool vok = check_one(name, t, slice, slen, ids, nids / 4, dec, ndec) &&
                   check_probes(name, t, pids, npids, pdec, npdec);
        printf("# variant %-21s %s\n", name, vok ? "ok" : "FAILED");
        ok = ok && vok;
        free(ids);
        free(dec);
        free(pids);
        free(pdec);
        tok_free(t);
        cJSON_free(edited);
        cJSON_Delete(root);
        free(json);
    }
    cJSON_Delete(vs);
    free(list);
    free(slice);
    assert_true(ok);
}

static void test_spm_bpe_legacy(void **state)
{
    (void)state;
    run_family("spm-bpe-legacy");
}

static void test_spm_bpe_meta(void **state)
{
    (void)state;
    run_family("spm-bpe-meta");
}

static void test_spm_bpe_split(void **state)
{
    (void)state;
    run_family("spm-bpe-split");
}

static void test_unigram(void **state)
{
    (void)state;
    run_family("unigram");
}

static void test_llama3(void **state)
{
    (void)state;
    run_family("llama3");
}

static void test_qwen2(void **state)
{
    (void)state;
    run_family("qwen2");
}

/* Small hand-written tokenizers for paths the trained ones do not reach; the expected ids and
 * texts were printed by tokenizers 0.23.3 for the same JSON. */
#define J_HEAD                                                                                     \
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"               \
    "\"normalizer\":null,\"pre_tokenizer\":null,\"post_processor\":null,\"decoder\":null,"

static void expect_ids(const struct tok *t, const char *text, const int32_t *want, int n,
                       const char *want_dec)
{
    int32_t *ids = NULL;
    char err[256] = "";
    int got = tok_encode(t, text, strlen(text), &ids, err, sizeof(err));
    if (got != n)
        fail_msg("'%s': %d ids (%s), want %d", text, got, err, n);
    for (int i = 0; i < n; i++)
        if (ids[i] != want[i])
            fail_msg("'%s': id %d is %d, want %d", text, i, ids[i], want[i]);
    char *dec = tok_decode(t, ids, (size_t)n);
    assert_string_equal(dec, want_dec);
    free(dec);
    free(ids);
}

static void test_small_cases(void **state)
{
    (void)state;
    /* BPE byte fallback next to unk: a pending unk is not flushed by the <0xXX> symbols of the
     * next character (é has no byte tokens, b has); no decoder joins tokens with spaces. */
    const char *bpe =
        J_HEAD "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":false,"
               "\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<0x62>\":1,\"a\":2},"
               "\"merges\":[]}}";
    char *err = NULL;
    struct tok *t = tok_load_buf(bpe, strlen(bpe), &err);
    if (!t)
        fail_msg("%s", err);
    expect_ids(t,
               "\xc3\xa9"
               "b",
               (const int32_t[]){ 1, 0 }, 2, "<0x62> <unk>");
    expect_ids(t,
               "a\xc3\xa9"
               "b",
               (const int32_t[]){ 2, 1, 0 }, 3, "a <0x62> <unk>");
    expect_ids(t,
               "\xc3\xa9\xc3\xa9"
               "ba\xc3\xa9",
               (const int32_t[]){ 0, 1, 0, 2, 0 }, 5, "<unk> <0x62> <unk> a <unk>");
    tok_free(t);

    /* Unigram without unk_id: an unknown character is an encode error, as in the library. */
    const char *uni =
        J_HEAD "\"model\":{\"type\":\"Unigram\",\"unk_id\":null,\"byte_fallback\":false,"
               "\"vocab\":[[\"a\",-1.0],[\"b\",-2.0]]}}";
    t = tok_load_buf(uni, strlen(uni), &err);
    if (!t)
        fail_msg("%s", err);
    expect_ids(t, "ab", (const int32_t[]){ 0, 1 }, 2, "a b");
    int32_t *ids = NULL;
    char msg[256] = "";
    assert_int_equal(tok_encode(t, "abc", 3, &ids, msg, sizeof(msg)), -1);
    assert_null(ids);
    assert_non_null(strstr(msg, "unk_id is null"));
    tok_free(t);
}

static int setup(void **state)
{
    (void)state;
    FILE *f = fopen(DIR "mixed.zip", "rb");
    if (!f) {
        printf("SKIP %smixed.zip is missing (run from the repository root)\n", DIR);
        exit(77);
    }
    fclose(f);
    mixed = zip_member(DIR "mixed.zip", "mixed.txt", &mixed_len);
    probes = zip_member(DIR "mixed.zip", "probes.txt", &probes_len);
    return mixed_len >= 1000000 ? 0 : -1; /* acceptance: at least 1 MB of text */
}

static int teardown(void **state)
{
    (void)state;
    free(mixed);
    free(probes);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spm_bpe_legacy), cmocka_unit_test(test_spm_bpe_meta),
        cmocka_unit_test(test_spm_bpe_split),  cmocka_unit_test(test_unigram),
        cmocka_unit_test(test_llama3),         cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_variants),       cmocka_unit_test(test_small_cases),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
