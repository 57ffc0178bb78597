/*
 * tokenizer_fuzz: libFuzzer target for worker/engine/tokenizer.c (the tokenizer.json parser, encode
 * and decode).
 *
 * The first byte picks the mode, the rest is the payload (at most 64 KiB):
 *   0  payload is a tokenizer.json; when it loads, encode a few fixed texts and decode ids;
 *   1  payload is text for a built-in GPT-2-style tokenizer (every byte in the vocabulary,
 *      some merges, ASCII added tokens without strip flags): valid UTF-8 must encode, and
 *      decode(encode(x)) must give x back; invalid UTF-8 must be refused;
 *   2  payload is text for a built-in Llama-3-split tokenizer with an NFC normalizer and added
 *      tokens that use lstrip / rstrip / single_word / normalized (no round trip there);
 *   3  payload is a tokenizer.json, a NUL byte, then text to encode with it.
 * Build: make fuzz, or the clang line in docs/tokenizer.md.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT (64 * 1024)

static struct tok *tok_gpt2, *tok_llama3;

/* GPT-2's bytes_to_unicode, to write the 256 one-byte tokens. */
static uint32_t byte_char(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
        return (uint32_t)b;
    uint32_t n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff)))
            n++;
    return 256 + n;
}

static const char *const merges[][2] = {
    { "\\u0120", "t" },   { "h", "e" },
    { "\\u0120t", "he" }, { "i", "n" },
    { "\\u0120", "a" },   { "e", "r" },
    { "o", "n" },         { "\\u0120", "\\u0120" },
    { "r", "e" },         { "\\u010a", "\\u0120\\u0120" },
    { "1", "2" },         { "in", "g" },
};

/* A tokenizer.json with the 256 byte tokens, the merges above, the given pre-tokenizer,
 * normalizer and added tokens. */
static char *make_json(const char *pre, const char *normalizer, const char *added)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":%s,"
               "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":null,"
               "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{",
               added, normalizer, pre);
    for (int i = 0; i < 256; i++)
        buf_printf(&b, "%s\"\\u%04x\":%d", i ? "," : "", byte_char(i), i);
    int id = 256;
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(merges); i++)
        buf_printf(&b, ",\"%s%s\":%d", merges[i][0], merges[i][1], id++);
    buf_puts(&b, "},\"merges\":[");
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(merges); i++)
        buf_printf(&b, "%s[\"%s\",\"%s\"]", i ? "," : "", merges[i][0], merges[i][1]);
    buf_puts(&b, "]}}");
    return buf_steal(&b);
}

static struct tok *must_load(const char *json)
{
    char *err = NULL;
    struct tok *t = tok_load_buf(json, strlen(json), &err);
    if (!t) {
        fprintf(stderr, "built-in tokenizer does not load: %s\n", err);
        abort();
    }
    return t;
}

static void init_once(void)
{
    if (tok_gpt2)
        return;
    int first_added = 256 + (int)EXAQ_ARRAY_LEN(merges);
    char *added =
        xasprintf("[{\"id\":%d,\"content\":\"<|end|>\",\"special\":true,\"normalized\":false},"
                  "{\"id\":%d,\"content\":\"<|end|>x\",\"special\":true,\"normalized\":false},"
                  "{\"id\":%d,\"content\":\"ab c\",\"special\":false,\"normalized\":true}]",
                  first_added, first_added + 1, first_added + 2);
    char *json = make_json("{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}",
                           "null", added);
    tok_gpt2 = must_load(json);
    free(json);
    free(added);
    added = xasprintf(
        "[{\"id\":%d,\"content\":\"<s>\",\"special\":true,\"normalized\":false,\"lstrip\":true},"
        "{\"id\":%d,\"content\":\"</s>\",\"special\":true,\"normalized\":false,\"rstrip\":true},"
        "{\"id\":%d,\"content\":\"word\",\"normalized\":true,\"single_word\":true},"
        "{\"id\":%d,\"content\":\"in\",\"normalized\":true,\"lstrip\":true,\"rstrip\":true}]",
        first_added, first_added + 1, first_added + 2, 256 + 3 /* "in" is merges[3] */);
    json = make_json(
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
        "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":"
        "true,\"use_regex\":false}]}",
        "{\"type\":\"NFC\"}", added);
    tok_llama3 = must_load(json);
    free(json);
    free(added);
}

/* Encodes and decodes; returns the encode result so the caller can check it. */
static int encode_decode(const struct tok *t, const char *text, size_t len, char **dec,
                         size_t *dlen)
{
    int32_t *ids = NULL;
    char err[256] = "";
    int n = tok_encode(t, text, len, &ids, err, sizeof(err));
    *dec = NULL;
    if (n < 0) {
        if (ids || err[0] == 0)
            abort(); /* a failure must leave *ids NULL and say why */
        return n;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok_vocab_size(t) || !tok_id_token(t, ids[i]))
            abort(); /* every id names a token */
    *dec = tok_decode_n(t, ids, (size_t)n, dlen);
    free(ids);
    return n;
}

static int valid_utf8(const uint8_t *s, size_t n)
{
    /* A simple independent checker: decode and re-encode each scalar value. */
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], need, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        for (uint32_t k = 1; k <= need; k++) {
            if (i + k >= n || (s[i + k] & 0xc0) != 0x80)
                return 0;
            c = c << 6 | (s[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

static void with_json(const uint8_t *json, size_t jlen, const uint8_t *text, size_t tlen)
{
    char *err = NULL;
    struct tok *t = tok_load_buf((const char *)json, jlen, &err);
    if (!t) {
        free(err);
        return;
    }
    static const char *const fixed[] = { "Hello world", "  x\n\n\ty 123 'S \xc3\xa9 \xe4\xb8\xad",
                                         "" };
    char *dec;
    size_t dlen;
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(fixed); i++) {
        encode_decode(t, fixed[i], strlen(fixed[i]), &dec, &dlen);
        free(dec);
    }
    if (text) {
        encode_decode(t, (const char *)text, tlen, &dec, &dlen);
        free(dec);
    }
    int32_t ids[64];
    int vs = tok_vocab_size(t);
    for (int i = 0; i < 64; i++)
        ids[i] = (int32_t)((i * 7919) % (vs + 3)) - 1;
    dec = tok_decode_n(t, ids, 64, &dlen);
    free(dec);
    (void)tok_token_id(t, "a");
    tok_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > MAX_INPUT)
        return 0;
    init_once();
    int mode = data[0] % 4;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char *dec;
    size_t dlen;
    switch (mode) {
    case 0:
        with_json(p, n, NULL, 0);
        break;
    case 1: {
        int rc = encode_decode(tok_gpt2, (const char *)p, n, &dec, &dlen);
        if (valid_utf8(p, n) != (rc >= 0))
            abort(); /* valid UTF-8 encodes, invalid is refused */
        if (rc >= 0 && (dlen != n || memcmp(dec, p, n) != 0))
            abort(); /* round trip */
        free(dec);
        break;
    }
    case 2:
        encode_decode(tok_llama3, (const char *)p, n, &dec, &dlen);
        free(dec);
        break;
    default: {
        const uint8_t *nul = memchr(p, 0, n);
        if (nul)
            with_json(p, (size_t)(nul - p), nul + 1, n - (size_t)(nul - p) - 1);
        break;
    }
    }
    return 0;
}
