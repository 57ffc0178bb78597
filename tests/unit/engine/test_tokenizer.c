/*
 * test_tokenizer: the byte-level BPE tokenizer against the Hugging Face `tokenizers` library.
 *
 * Expected ids and splits below were derived by hand from the regex semantics and then checked
 * once against tokenizers 0.23.3 (pip, in a throwaway venv); nothing calls Python at test time.
 * The big check is tests/data/tiny-a: val.txt and calib.txt (1.5 MB each) must encode to
 * exactly val.ids.u32 and calib.ids.u32, which the library produced. Runs in about a second.
 */
#include <cJSON.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/util.h"
#include "worker/engine/tokenizer.h"
#include "worker/engine/unicode_tab.h"

#define TINY_JSON "tests/data/tiny-exaone4/tokenizer.json"
#define DATA_DIR  "tests/data/tiny-a/"

/* The split patterns as C strings (one backslash each) ... */
#define PAT_LLAMA3                                                                                 \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                     \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define PAT_QWEN2                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "                          \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* ... and as JSON string contents (backslashes escaped once more). */
#define PAT_LLAMA3_JSON                                                                            \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "         \
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"

static struct tok *tiny; /* the tiny-a tokenizer as shipped (ByteLevel with the GPT-2 regex) */
static char *tiny_json;  /* its text */
static size_t tiny_json_len;

/* ---- helpers ------------------------------------------------------------------------------ */

static struct tok *load_json_or_fail(const char *json)
{
    char *err = NULL;
    struct tok *t = tok_load_buf(json, strlen(json), &err);
    if (!t)
        fail_msg("tok_load_buf failed: %s", err);
    return t;
}

/* The tiny tokenizer.json with pre_tokenizer (and optionally normalizer / extra added tokens)
 * replaced; returns the new JSON text. */
static char *tiny_variant(const char *pre_tokenizer, const char *normalizer, const char *added)
{
    cJSON *root = cJSON_ParseWithLength(tiny_json, tiny_json_len);
    assert_non_null(root);
    if (pre_tokenizer) {
        cJSON *p = cJSON_Parse(pre_tokenizer);
        assert_non_null(p);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "pre_tokenizer", p);
    }
    if (normalizer) {
        cJSON *p = cJSON_Parse(normalizer);
        assert_non_null(p);
        cJSON_ReplaceItemInObjectCaseSensitive(root, "normalizer", p);
    }
    if (added) {
        cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
        cJSON *more = cJSON_Parse(added);
        assert_non_null(more);
        cJSON *e;
        while ((e = cJSON_DetachItemFromArray(more, 0)) != NULL)
            cJSON_AddItemToArray(list, e);
        cJSON_Delete(more);
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    char *out = xstrdup(s);
    cJSON_free(s);
    return out;
}

static char *split_pretok(const char *pattern, bool rx_in_bytelevel)
{
    /* Built with cJSON so that the pattern's backslashes get escaped. */
    cJSON *pt = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(pt, "pretokenizers");
    cJSON_AddStringToObject(pt, "type", "Sequence");
    cJSON *split = cJSON_CreateObject(), *pat = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", pattern);
    cJSON_AddItemToObject(split, "pattern", pat);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddFalseToObject(split, "invert");
    cJSON_AddItemToArray(list, split);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddFalseToObject(bl, "add_prefix_space");
    cJSON_AddBoolToObject(bl, "use_regex", rx_in_bytelevel);
    cJSON_AddItemToArray(list, bl);
    char *text = cJSON_PrintUnformatted(pt);
    cJSON_Delete(pt);
    char *json = tiny_variant(text, NULL, NULL);
    cJSON_free(text);
    return json;
}

struct pieces {
    char *p[64];
    int32_t id[64];
    int n;
};

static int collect(void *arg, const char *piece, size_t len, int32_t added_id)
{
    struct pieces *ps = arg;
    if (ps->n == 64)
        return 1;
    ps->p[ps->n] = xstrndup(piece, len);
    ps->id[ps->n++] = added_id;
    return 0;
}

static void pieces_release(struct pieces *ps)
{
    for (int i = 0; i < ps->n; i++)
        free(ps->p[i]);
    ps->n = 0;
}

/* Checks the pieces of text against a NULL-terminated list. */
static void check_split(const struct tok *t, const char *text, const char *const *want)
{
    struct pieces ps = { .n = 0 };
    assert_int_equal(tok_pretokenize(t, text, strlen(text), collect, &ps, NULL), 0);
    int nw = 0;
    while (want[nw])
        nw++;
    bool same = ps.n == nw;
    for (int i = 0; same && i < nw; i++)
        same = strcmp(ps.p[i], want[i]) == 0;
    if (!same) {
        fprintf(stderr, "split of \"%s\":\n", text);
        for (int i = 0; i < ps.n; i++)
            fprintf(stderr, "  got  [%s]\n", ps.p[i]);
        for (int i = 0; i < nw; i++)
            fprintf(stderr, "  want [%s]\n", want[i]);
    }
    pieces_release(&ps);
    assert_true(same);
}

static void check_ids(const struct tok *t, const char *text, const int32_t *want, int nwant)
{
    int32_t *ids = NULL;
    char err[256];
    int n = tok_encode(t, text, strlen(text), &ids, err, sizeof(err));
    if (n != nwant || (n > 0 && memcmp(ids, want, (size_t)n * sizeof(int32_t)) != 0)) {
        fprintf(stderr, "encode \"%s\": got", text);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, nwant);
    if (n > 0)
        assert_memory_equal(ids, want, (size_t)n * sizeof(int32_t));
    free(ids);
}

static void check_roundtrip(const struct tok *t, const char *text, size_t len)
{
    int32_t *ids = NULL;
    char err[256];
    int n = tok_encode(t, text, len, &ids, err, sizeof(err));
    if (n < 0)
        fail_msg("encode failed: %s", err);
    size_t dlen;
    char *dec = tok_decode_n(t, ids, (size_t)n, &dlen);
    assert_int_equal(dlen, len);
    assert_memory_equal(dec, text, len);
    free(dec);
    free(ids);
}

/* ---- setup -------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    if (file_read_all(TINY_JSON, &tiny_json, &tiny_json_len) < 0) {
        printf("SKIP %s is missing (run from the repository root)\n", TINY_JSON);
        exit(77);
    }
    char *err = NULL;
    tiny = tok_load(TINY_JSON, &err);
    if (!tiny) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tok_free(tiny);
    free(tiny_json);
    return 0;
}

/* ---- the reference data ------------------------------------------------------------------- */

static void check_file(const char *txt_path, const char *ids_path)
{
    char *txt, *ref;
    size_t len, rlen;
    assert_int_equal(file_read_all(txt_path, &txt, &len), 0);
    assert_int_equal(file_read_all(ids_path, &ref, &rlen), 0);
    assert_int_equal(rlen % 4, 0);
    char err[256];
    int32_t *ids = NULL;
    double t0 = now_mono();
    int n = tok_encode(tiny, txt, len, &ids, err, sizeof(err));
    double dt = now_mono() - t0;
    assert_true(n > 0);
    printf("encode %s: %zu bytes -> %d ids in %.3f s\n", txt_path, len, n, dt);
    assert_int_equal((size_t)n, rlen / 4);
    size_t mismatches = 0, first = 0;
    for (size_t i = 0; i < (size_t)n; i++) {
        const unsigned char *p = (const unsigned char *)ref + 4 * i;
        uint32_t r =
            (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if ((uint32_t)ids[i] != r && mismatches++ == 0)
            first = i;
    }
    if (mismatches)
        fprintf(stderr, "%zu mismatching ids, the first at %zu\n", mismatches, first);
    assert_int_equal(mismatches, 0);
    /* The library takes about 1.4 s for this file; anything over 2 s means something broke. */
    assert_true(dt < 2.0);
    size_t dlen;
    char *dec = tok_decode_n(tiny, ids, (size_t)n, &dlen);
    assert_int_equal(dlen, len);
    assert_memory_equal(dec, txt, len);
    free(dec);
    free(ids);
    free(txt);
    free(ref);
}

static void test_val_ids_exact(void **state)
{
    (void)state;
    check_file(DATA_DIR "val.txt", DATA_DIR "val.ids.u32");
}

static void test_calib_ids_exact(void **state)
{
    (void)state;
    check_file(DATA_DIR "calib.txt", DATA_DIR "calib.ids.u32");
}

static void test_api_basics(void **state)
{
    (void)state;
    assert_int_equal(tok_vocab_size(tiny), 4096);
    assert_int_equal(tok_token_id(tiny, "[PAD]"), 0);
    assert_int_equal(tok_token_id(tiny, "|endofturn|"), 2);
    assert_int_equal(tok_token_id(tiny, "!"), 4);
    assert_int_equal(tok_token_id(tiny, "\xc4\xa0"), 224); /* "Ġ", the space byte */
    assert_int_equal(tok_token_id(tiny, "no such token"), -1);
    assert_string_equal(tok_id_token(tiny, 4), "!");
    assert_null(tok_id_token(tiny, 4096));
    assert_null(tok_id_token(tiny, -1));
    int32_t *ids = (int32_t *)1;
    char err[128];
    assert_int_equal(tok_encode(tiny, "", 0, &ids, err, sizeof(err)), 0);
    assert_null(ids);
    /* "Hello world" with the GPT-2 split, then BPE: checked against the library. */
    static const int32_t hello[] = { 43, 448, 314, 322, 268, 1889 };
    check_ids(tiny, "Hello world", hello, 6);
}

/* ---- GPT-2 split (ByteLevel use_regex) ---------------------------------------------------- */

static void test_gpt2_split(void **state)
{
    (void)state;
#define SPLIT(text, ...) check_split(tiny, text, (const char *const[]){ __VA_ARGS__, NULL })
    SPLIT("Hello world", "Hello", " world");
    /* Contractions come first and are case-sensitive. */
    SPLIT("I'm can't we've they'll he'd you're", "I", "'m", " can", "'t", " we", "'ve", " they",
          "'ll", " he", "'d", " you", "'re");
    SPLIT("'S 'sand", "'", "S", " '", "sand");
    SPLIT("''s", "''", "s");
    SPLIT("abc123def 4567", "abc", "123", "def", " 4567");
    /* A whitespace run gives its last space to the next word (\s+(?!\S) backs off one). */
    SPLIT("a   b", "a", "  ", " b");
    SPLIT("a \t b", "a", " \t", " b");
    SPLIT("  leading", " ", " leading");
    SPLIT("x  ", "x", "  ");
    SPLIT("a\n\nb", "a", "\n", "\n", "b");
    SPLIT("def f():\n    return 1\n", "def", " f", "():", "\n   ", " return", " 1", "\n");
    SPLIT(" !!! ??", " !!!", " ??");
    SPLIT("\n", "\n");
    /* Unicode letters, numbers and spaces; U+001C is not \s for the regex engines. */
    SPLIT("h\xc3\xa9llo w\xc3\xb6rld \xe4\xb8\xad\xe6\x96\x87 \xd9\xa3\xd9\xa4 \xc2\xbd",
          "h\xc3\xa9llo", " w\xc3\xb6rld", " \xe4\xb8\xad\xe6\x96\x87", " \xd9\xa3\xd9\xa4",
          " \xc2\xbd");
    SPLIT("a\xc2\xa0"
          "b",
          "a", "\xc2\xa0", "b");
    SPLIT("a\xe3\x80\x80\xe3\x80\x80"
          "b",
          "a", "\xe3\x80\x80", "\xe3\x80\x80", "b");
    SPLIT("x\x1cy", "x", "\x1c", "y");
    /* A combining mark is neither a letter nor a number. */
    SPLIT("e\xcc\x81t\xc3\xa9", "e", "\xcc\x81", "t\xc3\xa9");
    /* Added tokens are cut out before the split. */
    struct pieces ps = { .n = 0 };
    assert_int_equal(tok_pretokenize(tiny, "a[PAD] b", 8, collect, &ps, NULL), 0);
    assert_int_equal(ps.n, 3);
    assert_string_equal(ps.p[1], "[PAD]");
    assert_int_equal(ps.id[0], -1);
    assert_int_equal(ps.id[1], 0);
    assert_string_equal(ps.p[2], " b");
    pieces_release(&ps);
#undef SPLIT
}

static void test_bytelevel_prefix_space(void **state)
{
    (void)state;
    char *json = tiny_variant("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":"
                              "true,\"use_regex\":true}",
                              NULL, NULL);
    struct tok *t = load_json_or_fail(json);
    /* The space is added to every piece between added tokens that lacks one. */
    check_split(t, "hi", (const char *const[]){ " hi", NULL });
    check_split(t, " hi", (const char *const[]){ " hi", NULL });
    check_split(t, "a[PAD]b", (const char *const[]){ " a", "[PAD]", " b", NULL });
    tok_free(t);
    free(json);
}

/* ---- Split (Sequence of Split + ByteLevel) ------------------------------------------------ */

static void test_llama3_split(void **state)
{
    (void)state;
    char *json = split_pretok(PAT_LLAMA3, false);
    struct tok *t = load_json_or_fail(json);
#define SPLIT(text, ...) check_split(t, text, (const char *const[]){ __VA_ARGS__, NULL })
    SPLIT("Hello world", "Hello", " world");
    /* Case-insensitive contractions, which win over the letter run. */
    SPLIT("I'M DON'T they'Re", "I", "'M", " DON", "'T", " they", "'Re");
    SPLIT("'sand", "'s", "and");
    SPLIT("'\xc5\xbfx", "'\xc5\xbf", "x"); /* U+017F folds to s */
    /* Numbers in groups of at most three; a lone space before them stays alone. */
    SPLIT("12345 1234567", "123", "45", " ", "123", "456", "7");
    /* One non-letter, non-newline character may lead a word (a tab, a '$'). */
    SPLIT("\tfoo", "\tfoo");
    SPLIT("$hello", "$hello");
    SPLIT("  $x", " ", " $", "x");
    /* Newlines: punctuation takes the newlines after it; \s*[\r\n]+ ends at the last one. */
    SPLIT("a  \n\n  b", "a", "  \n\n", " ", " b");
    SPLIT("foo!!\n\nbar", "foo", "!!\n\n", "bar");
    SPLIT(" ?\r\n", " ?\r\n");
    SPLIT("x = 1;\n", "x", " =", " ", "1", ";\n");
    SPLIT("line1\r\nline2", "line", "1", "\r\n", "line", "2");
    SPLIT("  \n", "  \n");
    SPLIT("end   ", "end", "   ");
    SPLIT("h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87 \xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6", "h\xc3\xa9llo",
          " \xe4\xb8\xad\xe6\x96\x87", " ", "\xd9\xa3\xd9\xa4\xd9\xa5", "\xd9\xa6");
    SPLIT("a\xc2\xa0"
          "b",
          "a",
          "\xc2\xa0"
          "b");
    SPLIT("e\xcc\x81t\xc3\xa9", "e", "\xcc\x81t\xc3\xa9");
#undef SPLIT
    /* Whole encodes, ids from the library with this pre-tokenizer. */
    static const int32_t e1[] = { 43, 448, 314, 322, 268, 1889 };
    static const int32_t e2[] = { 328, 285, 11, 91, 327, 202, 262, 353, 465, 260, 202 };
    static const int32_t e3[] = { 44, 10, 48, 224, 955, 22, 2635 };
    check_ids(t, "Hello world", e1, 6);
    check_ids(t, "def f(x):\n    return x  \n", e2, 11);
    check_ids(t, "I'M 12345", e3, 7);
    tok_free(t);
    free(json);
}

static void test_qwen2_split(void **state)
{
    (void)state;
    char *json = split_pretok(PAT_QWEN2, false);
    struct tok *t = load_json_or_fail(json);
    check_split(t, "12345 x1", (const char *const[]){ "1", "2", "3", "4", "5", " x", "1", NULL });
    check_split(t, "a1b22", (const char *const[]){ "a", "1", "b", "2", "2", NULL });
    tok_free(t);
    free(json);
    /* The same pattern with ByteLevel's own regex after it: pieces are split again. */
    json = split_pretok(PAT_LLAMA3, true);
    t = load_json_or_fail(json);
    check_split(t, "\tfoo", (const char *const[]){ "\t", "foo", NULL });
    tok_free(t);
    free(json);
}

/* ---- added tokens ------------------------------------------------------------------------- */

static void test_added_tokens(void **state)
{
    (void)state;
    char *json = tiny_variant(
        NULL, NULL,
        "[{\"id\":4096,\"content\":\"<think>\",\"single_word\":false,\"lstrip\":false,"
        "\"rstrip\":false,\"normalized\":false,\"special\":true},"
        "{\"id\":4097,\"content\":\"<think>x\",\"single_word\":false,\"lstrip\":false,"
        "\"rstrip\":false,\"normalized\":false,\"special\":true},"
        "{\"id\":4098,\"content\":\"LS\",\"single_word\":false,\"lstrip\":true,\"rstrip\":false,"
        "\"normalized\":false,\"special\":true},"
        "{\"id\":4099,\"content\":\"RS\",\"single_word\":false,\"lstrip\":false,\"rstrip\":true,"
        "\"normalized\":false,\"special\":true},"
        "{\"id\":4100,\"content\":\"sw\",\"single_word\":true,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":false,\"special\":false},"
        "{\"id\":373,\"content\":\"ab\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
        "\"normalized\":true,\"special\":false}]");
    struct tok *t = load_json_or_fail(json);
    assert_int_equal(tok_vocab_size(t), 4101);
    assert_int_equal(tok_token_id(t, "<think>"), 4096);
    /* Expected ids from the library. Longest match wins at the leftmost position. */
    check_ids(t, "a<think>b", (const int32_t[]){ 68, 4096, 69 }, 3);
    check_ids(t, "a<think>xb", (const int32_t[]){ 68, 4097, 69 }, 3);
    /* lstrip takes the spaces before the token, rstrip the ones after. */
    check_ids(t, "x   LS  y", (const int32_t[]){ 91, 4098, 224, 627 }, 4);
    check_ids(t, "x  RS   y", (const int32_t[]){ 91, 260, 4099, 92 }, 4);
    /* single_word: "sw" inside a word is not the token (and its span stays text). */
    check_ids(t, "sw swx xsw sw.",
              (const int32_t[]){ 4100, 303, 90, 91, 465, 86, 90, 224, 4100, 17 }, 10);
    check_ids(t, "\xc3\xa9 sw", (const int32_t[]){ 131, 106, 224, 4100 }, 4);
    /* An added token that is also in the vocabulary (normalized=true: second pass). */
    check_ids(t, "cab ab", (const int32_t[]){ 70, 373, 224, 373 }, 4);
    check_ids(t, "[PAD]|endofturn|[BOS]", (const int32_t[]){ 0, 2, 1 }, 3);
    check_ids(t, "<think", (const int32_t[]){ 31, 380, 2562 }, 3);
    /* The pieces, to see the stripped spaces go with the token. */
    struct pieces ps = { .n = 0 };
    assert_int_equal(tok_pretokenize(t, "x   LS  y", 9, collect, &ps, NULL), 0);
    assert_int_equal(ps.n, 4);
    assert_string_equal(ps.p[1], "   LS");
    assert_int_equal(ps.id[1], 4098);
    pieces_release(&ps);
    /* Decoding keeps special tokens. */
    char *d = tok_decode(t, (const int32_t[]){ 4096, 68, 0, 2 }, 4);
    assert_string_equal(d, "<think>a[PAD]|endofturn|");
    free(d);
    tok_free(t);
    free(json);
}

/* ---- round trips -------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static size_t put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A random valid UTF-8 string: code, whitespace, Latin, Cyrillic, CJK, Hangul, marks, emoji,
 * any scalar value, and now and then an added token. */
static size_t random_text(char *out, size_t max_chars)
{
    static const char *const specials[] = { "[PAD]", "|endofturn|", "[BOS]", "[UNK]", "'s" };
    size_t n = 0, chars = rnd((uint32_t)max_chars + 1);
    for (size_t i = 0; i < chars; i++) {
        uint32_t cp, k = rnd(100);
        if (k < 40)
            cp = 0x20 + rnd(0x5f);
        else if (k < 50)
            cp = " \t\n\r"[rnd(4)];
        else if (k < 58)
            cp = 0xa0 + rnd(0x160);
        else if (k < 64)
            cp = 0x400 + rnd(0x100);
        else if (k < 70)
            cp = 0x4e00 + rnd(0x5000);
        else if (k < 76)
            cp = 0xac00 + rnd(0x2ba4);
        else if (k < 80)
            cp = 0x300 + rnd(0x70);
        else if (k < 84)
            cp = 0x1f300 + rnd(0x300);
        else if (k < 88)
            cp = (uint32_t[]){ 0x85, 0xa0, 0x1680, 0x2000, 0x2028, 0x3000, 0x17f, 0x1c }[rnd(8)];
        else if (k < 95) {
            do
                cp = rnd(0x110000);
            while (cp >= 0xd800 && cp <= 0xdfff);
        } else {
            const char *s = specials[rnd(5)];
            memcpy(out + n, s, strlen(s));
            n += strlen(s);
            continue;
        }
        n += put_utf8(cp, out + n);
    }
    return n;
}

static void test_roundtrip_random(void **state)
{
    (void)state;
    char *json = split_pretok(PAT_LLAMA3, false);
    struct tok *cl = load_json_or_fail(json);
    char text[4 * 300 + 64];
    for (int i = 0; i < 2000; i++) {
        size_t n = random_text(text, 300 / 12 * (1 + (size_t)(i % 12)));
        check_roundtrip(tiny, text, n);
        check_roundtrip(cl, text, n);
    }
    tok_free(cl);
    free(json);
}

/* ---- decode ------------------------------------------------------------------------------- */

static void test_decode_lossy(void **state)
{
    (void)state;
    /* "é" is two byte tokens; one of them alone is invalid UTF-8 and becomes U+FFFD, as with
     * String::from_utf8_lossy. Unknown ids are skipped. */
    int32_t e_acute[2] = { tok_token_id(tiny, "\xc3\x83"), tok_token_id(tiny, "\xc2\xa9") };
    assert_true(e_acute[0] >= 0 && e_acute[1] >= 0);
    char *d = tok_decode(tiny, e_acute, 2);
    assert_string_equal(d, "\xc3\xa9");
    free(d);
    int32_t partial[4] = { 68, e_acute[0], 99999, 69 };
    d = tok_decode(tiny, partial, 4);
    assert_string_equal(d, "a\xef\xbf\xbd"
                           "b");
    free(d);
    int32_t lone[2] = { e_acute[1], -5 };
    d = tok_decode(tiny, lone, 2);
    assert_string_equal(d, "\xef\xbf\xbd");
    free(d);
    d = tok_decode(tiny, NULL, 0);
    assert_string_equal(d, "");
    free(d);
}

/* ---- NFC ---------------------------------------------------------------------------------- */

static void test_nfc(void **state)
{
    (void)state;
    char *json = tiny_variant(NULL, "{\"type\":\"NFC\"}", NULL);
    struct tok *t = load_json_or_fail(json);
    /* Text that passes the quick check gives the same ids as without a normalizer. */
    static const char *const ok[] = { "plain ascii\n", "caf\xc3\xa9 \xed\x95\x9c\xea\xb5\xad",
                                      "\xe4\xb8\xad\xe6\x96\x87" };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(ok); i++) {
        int32_t *a = NULL, *b = NULL;
        char err[256];
        int na = tok_encode(t, ok[i], strlen(ok[i]), &a, err, sizeof(err));
        int nb = tok_encode(tiny, ok[i], strlen(ok[i]), &b, err, sizeof(err));
        assert_true(na > 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, (size_t)na * sizeof(int32_t));
        free(a);
        free(b);
    }
    /* e + COMBINING ACUTE (quick check MAYBE) and ANGSTROM SIGN (NO) are refused. */
    static const char *const bad[] = { "e\xcc\x81", "\xe2\x84\xab" };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(bad); i++) {
        int32_t *ids = (int32_t *)1;
        char err[256] = "";
        assert_int_equal(tok_encode(t, bad[i], strlen(bad[i]), &ids, err, sizeof(err)), -1);
        assert_null(ids);
        assert_non_null(strstr(err, "NFC"));
    }
    tok_free(t);
    free(json);
    /* The table agrees with what the generator checked. */
    unsigned qc, ccc;
    utab_nfc(0x301, &qc, &ccc);
    assert_int_equal(qc, UTAB_NFC_MAYBE);
    assert_int_equal(ccc, 230);
    utab_nfc(0x212b, &qc, &ccc);
    assert_int_equal(qc, UTAB_NFC_NO);
    assert_true(utab_class(0x3000) & UTAB_WS);
    assert_false(utab_class(0x1c) & UTAB_WS);
    assert_true(utab_class(0xac00) & UTAB_L);
    assert_true(utab_class(0x2167) & UTAB_N);
}

/* ---- bad input ---------------------------------------------------------------------------- */

static void test_bad_text(void **state)
{
    (void)state;
    static const char *const bad[] = { "\xff", "ab\xc3", "\xed\xa0\x80", "\xc0\xaf",
                                       "\xf4\x90\x80\x80" };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(bad); i++) {
        int32_t *ids = (int32_t *)1;
        char err[256] = "";
        assert_int_equal(tok_encode(tiny, bad[i], strlen(bad[i]), &ids, err, sizeof(err)), -1);
        assert_null(ids);
        assert_non_null(strstr(err, "not valid UTF-8"));
    }
}

/* A minimal valid tokenizer.json with one part replaced. */
#define J_VOCAB "{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3}"
#define J_MODEL "{\"type\":\"BPE\",\"vocab\":" J_VOCAB ",\"merges\":[\"a b\"]}"
#define J_PRE   "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}"
#define J_DEC   "{\"type\":\"ByteLevel\"}"
#define J(model, pre, dec, norm, added)                                                            \
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":" added            \
    ",\"normalizer\":" norm ",\"pre_tokenizer\":" pre ",\"post_processor\":null,\"decoder\":" dec  \
    ",\"model\":" model "}"
#define JM(model)          J(model, J_PRE, J_DEC, "null", "[]")
#define JP(pre)            J(J_MODEL, pre, J_DEC, "null", "[]")
#define JA(added)          J(J_MODEL, J_PRE, J_DEC, "null", added)
#define BPE(vocab, merges) "{\"type\":\"BPE\",\"vocab\":" vocab ",\"merges\":" merges "}"

static void test_malformed(void **state)
{
    (void)state;
    /* The template itself is fine, and works. */
    struct tok *t = load_json_or_fail(JM(J_MODEL));
    check_ids(t, "ab a", (const int32_t[]){ 2, 3, 0 }, 3);
    tok_free(t);

    static const struct {
        const char *json, *want;
    } cases[] = {
        { "not json", "not valid JSON" },
        { "", "not valid JSON" },
        { "[]", "top level is not a JSON object" },
        { "{}", "no \"model\" object" },
        { JM(J_MODEL) " x", "data after the JSON value" },
        { "{\"model\":\"\xff\"}", "not valid UTF-8" },
        { JM("{\"type\":\"WordPiece\",\"vocab\":{}}"), "only BPE and Unigram are supported" },
        { JM("{\"type\":\"Unigram\",\"vocab\":[[\"a\",\"x\"]]}"),
          "model.vocab[0] must be a [string, number] pair" },
        { JM("{\"type\":\"Unigram\",\"vocab\":{}}"), "must be a non-empty array" },
        { JM("{\"type\":\"Unigram\",\"unk_id\":3,\"vocab\":[[\"a\",-1.0]]}"),
          "model.unk_id must be null or an index" },
        { JM("{\"type\":\"BPE\",\"vocab\":{\"a\":0}}"), "needs both \"vocab\" and \"merges\"" },
        { JM(BPE("[]", "[]")), "model.vocab must be an object" },
        { JM(BPE("{}", "[]")), "model.vocab is empty" },
        { JM(BPE("{\"a\":\"x\"}", "[]")), "token 'a' has id that is not an integer" },
        { JM(BPE("{\"a\":-1}", "[]")), "not an integer in [0, 4194304)" },
        { JM(BPE("{\"a\":1.5}", "[]")), "not an integer" },
        { JM(BPE("{\"a\":1e12}", "[]")), "not an integer" },
        { JM(BPE("{\"a\":0,\"b\":0}", "[]")), "id 0 is used by both 'a' and 'b'" },
        { JM(BPE("{\"a\":0,\"a\":1}", "[]")), "token 'a' appears twice" },
        { JM(BPE(J_VOCAB, "[\"a z\"]")), "model.merges[0]: token 'z' is not in the vocabulary" },
        { JM(BPE("{\"a\":0,\"b\":1}", "[[\"a\",\"b\"]]")), "token 'ab' is not in the vocabulary" },
        { JM(BPE(J_VOCAB, "[1]")), "model.merges[0] must be" },
        { JM(BPE(J_VOCAB, "{}")), "model.merges must be an array" },
        { JM(BPE(J_VOCAB, "[\"a  b\"]")), "not two tokens separated by one space" },
        { JM(BPE(J_VOCAB, "[\"ab\"]")), "not two tokens separated by one space" },
        { JM(BPE(J_VOCAB, "[\"a b\",[\"a\",\"b\"]]")), "all of the same form" },
        { JM(BPE(J_VOCAB, "[[\"a\",\"b\",\"c\"]]")), "must be a pair of two strings" },
        { JM(BPE(J_VOCAB, "[[\"a\",1]]")), "must be a pair of two strings" },
        { JM("{\"type\":\"BPE\",\"byte_fallback\":1,\"vocab\":" J_VOCAB ",\"merges\":[]}"),
          "model.byte_fallback must be true or false" },
        { JM("{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":" J_VOCAB ",\"merges\":[]}"), "dropout" },
        { JM("{\"type\":\"BPE\",\"fuse_unk\":1,\"vocab\":" J_VOCAB ",\"merges\":[]}"),
          "model.fuse_unk must be true or false" },
        { JM("{\"type\":\"BPE\",\"unk_token\":5,\"vocab\":" J_VOCAB ",\"merges\":[]}"),
          "unk_token must be a string" },
        { JM("{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"vocab\":" J_VOCAB
             ",\"merges\":[]}"),
          "continuing_subword_prefix must be null" },
        { J(J_MODEL, J_PRE, J_DEC, "{\"type\":\"Lowercase\"}", "[]"),
          "normalizer 'Lowercase' is not supported" },
        { J(J_MODEL, J_PRE, J_DEC, "{\"type\":\"NFKC\"}", "[]"),
          "normalizer 'NFKC' is not supported" },
        { JP("{\"type\":\"Whitespace\"}"), "pre_tokenizer type 'Whitespace' is not supported" },
        { JP("{\"type\":\"Metaspace\"}"), "Metaspace.replacement must be a string of one" },
        { JP("{\"type\":\"Metaspace\",\"replacement\":\"ab\"}"), "of one character" },
        { JP("{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"x\"}"),
          "prepend_scheme must be \"always\", \"first\" or \"never\"" },
        { J(J_MODEL, J_PRE, J_DEC,
            "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" \"},\"content\":\"_\"}", "[]"),
          "normalizer Replace with a Regex pattern is not supported" },
        { J(J_MODEL, J_PRE, J_DEC, "{\"type\":\"Prepend\"}", "[]"),
          "normalizer Prepend.prepend must be a string" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
             "\"\\\\w+\"},\"behavior\":\"Isolated\",\"invert\":false}," J_PRE "]}"),
          "Split pattern \"\\w+\" is not supported" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
             "\"String\":"
             "\" \"},\"behavior\":\"Isolated\",\"invert\":false}," J_PRE "]}"),
          "String pattern (' ') is not supported" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
             "\"" PAT_LLAMA3_JSON "\"},\"behavior\":\"MergedWithPrevious\",\"invert\":false}," J_PRE
             "]}"),
          "behavior 'MergedWithPrevious' is not supported" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
             "\"" PAT_LLAMA3_JSON "\"},\"behavior\":\"Isolated\",\"invert\":true}," J_PRE "]}"),
          "invert=true is not supported" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
             "\"" PAT_LLAMA3_JSON "\"},\"behavior\":\"Isolated\",\"invert\":false}," J_PRE "," J_PRE
             "]}"),
          "ByteLevel must be the last step" },
        { JP("{\"type\":\"Sequence\",\"pretokenizers\":{}}"), "pretokenizers must be an array" },
        { JP("{\"type\":\"ByteLevel\",\"add_prefix_space\":\"yes\"}"),
          "add_prefix_space must be true or false" },
        { J(J_MODEL, J_PRE, "{\"type\":\"Sequence\",\"decoders\":[" J_DEC "]}", "null", "[]"),
          "decoder ByteLevel is only supported alone" },
        { J(J_MODEL, J_PRE, "{\"type\":\"Strip\",\"content\":\" \",\"start\":-1,\"stop\":0}",
            "null", "[]"),
          "Strip.start and .stop must be integers" },
        { J(J_MODEL, J_PRE, "{\"type\":\"WordPiece\"}", "null", "[]"),
          "decoder 'WordPiece' is not supported" },
        { JA("{}"), "added_tokens must be an array" },
        { JA("[{\"id\":9,\"content\":\"<x>\"}]"), "'<x>' has id 9 but the vocabulary order gives "
                                                  "it id 4" },
        { JA("[{\"id\":1,\"content\":\"a\"}]"), "'a' has id 1 but the vocabulary order gives it "
                                                "id 0" },
        { JA("[{\"id\":4,\"content\":\"<x>\",\"lstrip\":\"no\"}]"),
          "added_tokens[0].lstrip must be true or false" },
        { JA("[{\"content\":\"<x>\"}]"), "added_tokens[0] needs a string \"content\"" },
        { JA("[5]"), "added_tokens[0] needs a string \"content\"" },
        { "{\"version\":\"2.0\",\"model\":" J_MODEL "}", "version must be \"1.0\"" },
        { "{\"truncation\":{\"max_length\":5},\"model\":" J_MODEL "}", "truncation must be null" },
    };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(cases); i++) {
        char *err = NULL;
        struct tok *bad = tok_load_buf(cases[i].json, strlen(cases[i].json), &err);
        if (bad || !err || !strstr(err, cases[i].want))
            fprintf(stderr, "case %zu: %s\n  error: \"%s\"\n  wanted: \"%s\"\n", i, cases[i].json,
                    err ? err : "(none)", cases[i].want);
        assert_null(bad);
        assert_non_null(err);
        assert_non_null(strstr(err, cases[i].want));
        free(err);
    }
    /* A missing file names the path. */
    char *err = NULL;
    assert_null(tok_load("/nonexistent/tokenizer.json", &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "cannot read tokenizer '/nonexistent/tokenizer.json'"));
    free(err);
    /* err may be NULL. */
    assert_null(tok_load_buf("x", 1, NULL));
}

static void test_unk_token(void **state)
{
    (void)state;
    /* No unk token: bytes without a token are dropped (as the library does), and what is
     * left still merges: "axb" is "ab". */
    struct tok *t = load_json_or_fail(JM(J_MODEL));
    check_ids(t, "axb", (const int32_t[]){ 2 }, 1);
    tok_free(t);
    /* unk_token present: unknown bytes map to it, fused when fuse_unk. */
    t = load_json_or_fail(
        JM("{\"type\":\"BPE\",\"unk_token\":\"b\",\"vocab\":" J_VOCAB ",\"merges\":[]}"));
    check_ids(t, "axyb", (const int32_t[]){ 0, 1, 1, 1 }, 4);
    tok_free(t);
    t = load_json_or_fail(
        JM("{\"type\":\"BPE\",\"unk_token\":\"b\",\"fuse_unk\":true,\"vocab\":" J_VOCAB
           ",\"merges\":[]}"));
    check_ids(t, "axyb", (const int32_t[]){ 0, 1, 1 }, 3);
    tok_free(t);
    /* unk_token missing from the vocabulary: an error when it is needed, like the library. */
    t = load_json_or_fail(JM("{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":" J_VOCAB
                             ",\"merges\":[\"a b\"]}"));
    check_ids(t, "ab", (const int32_t[]){ 2 }, 1);
    int32_t *ids;
    char err[256];
    assert_int_equal(tok_encode(t, "x", 1, &ids, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unk_token '<unk>' is not in the vocabulary"));
    tok_free(t);
}

static void test_merge_ranks(void **state)
{
    (void)state;
    /* The lowest rank merges first; a repeated pair takes its last rank (the library collects
     * the merges into a hash map); "#version" lines are skipped. Checked with the library. */
#define V3 "{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4,\"\\u0120\":5,\"abc\":6}"
    static const struct {
        const char *json;
        int32_t want[2];
    } cases[] = {
        { JM(BPE(V3, "[\"a b\",\"b c\"]")), { 3, 2 } },
        { JM(BPE(V3, "[\"a b\",\"b c\",\"a b\"]")), { 0, 4 } },
        { JM(BPE(V3, "[\"#version: 0.2\",\"b c\",\"a b\"]")), { 0, 4 } },
        { JM(BPE(V3, "[[\"b\",\"c\"],[\"a\",\"b\"]]")), { 0, 4 } },
    };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(cases); i++) {
        struct tok *t = load_json_or_fail(cases[i].json);
        check_ids(t, "abc", cases[i].want, 2);
        tok_free(t);
    }
    /* ignore_merges: a word that is in the vocabulary is taken whole. */
    struct tok *t = load_json_or_fail(JM("{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":" V3
                                         ",\"merges\":[\"a b\",\"b c\"]}"));
    check_ids(t, "abc bc", (const int32_t[]){ 6, 5, 4 }, 3);
    tok_free(t);
#undef V3
}

/* ---- threads ------------------------------------------------------------------------------ */

struct job {
    const char *text;
    size_t len;
    int n;
    int32_t *ids;
};

static void *encode_job(void *arg)
{
    struct job *j = arg;
    char err[128];
    j->n = tok_encode(tiny, j->text, j->len, &j->ids, err, sizeof(err));
    return NULL;
}

static void test_threads_share_tokenizer(void **state)
{
    (void)state;
    char *txt;
    size_t len;
    assert_int_equal(file_read_all(DATA_DIR "val.txt", &txt, &len), 0);
    len = len > 300000 ? 300000 : len;
    struct job jobs[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = (struct job){ txt, len, 0, NULL };
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_true(jobs[0].n > 0);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(jobs[i].n, jobs[0].n);
        assert_memory_equal(jobs[i].ids, jobs[0].ids, (size_t)jobs[0].n * sizeof(int32_t));
    }
    for (int i = 0; i < 3; i++)
        free(jobs[i].ids);
    free(txt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_val_ids_exact),
        cmocka_unit_test(test_calib_ids_exact),
        cmocka_unit_test(test_api_basics),
        cmocka_unit_test(test_gpt2_split),
        cmocka_unit_test(test_bytelevel_prefix_space),
        cmocka_unit_test(test_llama3_split),
        cmocka_unit_test(test_qwen2_split),
        cmocka_unit_test(test_added_tokens),
        cmocka_unit_test(test_roundtrip_random),
        cmocka_unit_test(test_decode_lossy),
        cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_bad_text),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_unk_token),
        cmocka_unit_test(test_merge_ranks),
        cmocka_unit_test(test_threads_share_tokenizer),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
