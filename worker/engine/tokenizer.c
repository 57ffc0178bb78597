/*
 * tokenizer: BPE and Unigram from a Hugging Face tokenizer.json, bit-exact with `tokenizers`.
 *
 * This module owns parsing tokenizer.json into plain C tables (the cJSON tree never outlives
 * tok_load_buf), the encode pipeline and the decoders. It does no I/O besides reading the file
 * in tok_load, keeps no global state, and never aborts on bad input.
 *
 * DESIGN. encode() follows the library's pipeline step by step:
 *
 *   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest,
 *      with single_word / lstrip / rstrip as in added_vocabulary.rs);
 *   2. each remaining piece is normalized: Prepend and Replace rewrite it into a scratch
 *      buffer, NFC is accepted only as a proven no-op (the UAX #15 quick check must answer
 *      YES); then the normalized=true added tokens are cut;
 *   3. each remaining piece runs through the pre-tokenizer steps (Split with a known pattern,
 *      Metaspace, then ByteLevel, which may add a prefix space and split with the GPT-2
 *      pattern). The split patterns are matched by hand-written matchers, one per recognised
 *      pattern string, that reproduce what Oniguruma's backtracking does for that pattern (see
 *      match_gpt2 and match_cl100k); empty pieces are dropped like PreTokenizedString::split;
 *   4. each piece goes to the model. BPE runs exactly as models/bpe/word.rs merge_all does: a
 *      min-heap of (rank, position) with stale entries skipped, so ties resolve the same way;
 *      its symbols are the bytes of the piece after ByteLevel, else its characters (with
 *      <0xXX> byte fallback). Unigram is the Viterbi search of unigram/model.rs over a hash
 *      of every piece prefix (a trie's common-prefix walk). Results are cached per piece in
 *      a hash map local to the call (texts are megabytes, and the same words come back all
 *      the time); the cache is per call so that a struct tok stays immutable and shareable
 *      between threads. A long piece of character-level BPE (legacy SentencePiece text is one
 *      piece) is first cut where no merge can join across (bpe_chunked).
 *
 * decode() maps ids to token strings and runs the decoder: ByteLevel through a per-id table of
 * decoded bytes, the SentencePiece decoders (Replace, ByteFallback, Fuse, Strip, Metaspace) on
 * the list of token strings as decode_chain does.
 *
 * The byte-level alphabet (GPT-2's bytes_to_unicode) is rebuilt in every struct tok; all
 * per-id strings are stored once in one arena.
 */
#include "worker/engine/tokenizer.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/unicode_tab.h"

#define MAX_STEPS         8         /* pre-tokenizer steps after flattening Sequence */
#define CACHE_MAX_KEY     256       /* pieces longer than this are not cached (as the library) */
#define CACHE_MAX_ENTRIES (1 << 18) /* per encode call */
#define ERR_MAX           1024      /* error messages are built in a buffer this long */

/* ============================================================================================
 * Errors and small helpers
 * ========================================================================================== */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Quotes at most 60 bytes of s for an error message (new string). */
static char *quote(const char *s, size_t n)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "'");
    size_t lim = n > 60 ? 60 : n;
    for (size_t i = 0; i < lim; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == '\'')
            buf_printf(&b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            buf_printf(&b, "\\x%02x", c);
        else
            buf_append(&b, &s[i], 1);
    }
    buf_puts(&b, n > lim ? "'..." : "'");
    return buf_steal(&b);
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    /* FNV-1a, then a final mix so that the low bits used for the table index are good. */
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ============================================================================================
 * UTF-8
 * ========================================================================================== */

/*
 * Length of the valid UTF-8 sequence at s[i] (1..4), or 0 when the bytes there are not a valid
 * sequence; then *bad is the length of the maximal subpart to replace by one U+FFFD (the rule
 * of Rust's String::from_utf8_lossy and of Unicode's "substitution of maximal subparts").
 */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t i, size_t *bad)
{
    unsigned char b = s[i];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf;
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
        need = 2;
        if (b == 0xe0)
            lo = 0xa0;
        else if (b == 0xed)
            hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        need = 3;
        if (b == 0xf0)
            lo = 0x90;
        else if (b == 0xf4)
            hi = 0x8f;
    } else {
        *bad = 1;
        return 0;
    }
    size_t k = 1;
    for (; k <= need; k++) {
        if (i + k >= n)
            break;
        unsigned char c = s[i + k];
        if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf))
            break;
    }
    if (k > need)
        return need + 1;
    *bad = k;
    return 0;
}

/* Offset of the first invalid byte, or n when s is valid UTF-8. */
static size_t utf8_check(const unsigned char *s, size_t n)
{
    size_t i = 0, bad;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t l = utf8_seq(s, n, i, &bad);
        if (l == 0)
            return i;
        i += l;
    }
    return n;
}

/* Decodes the code point at s[i] of valid UTF-8; *len gets its byte length. */
static inline uint32_t utf8_dec(const unsigned char *s, size_t i, size_t *len)
{
    unsigned char b = s[i];
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    if (b < 0xe0) {
        *len = 2;
        return ((uint32_t)(b & 0x1f) << 6) | (s[i + 1] & 0x3f);
    }
    if (b < 0xf0) {
        *len = 3;
        return ((uint32_t)(b & 0x0f) << 12) | ((uint32_t)(s[i + 1] & 0x3f) << 6) |
               (s[i + 2] & 0x3f);
    }
    *len = 4;
    return ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3f) << 12) |
           ((uint32_t)(s[i + 2] & 0x3f) << 6) | (s[i + 3] & 0x3f);
}

/* Start of the code point that ends right before s[i] (i > 0) in valid UTF-8. */
static size_t utf8_prev(const unsigned char *s, size_t i)
{
    do {
        i--;
    } while (i > 0 && (s[i] & 0xc0) == 0x80);
    return i;
}

static size_t utf8_enc(uint32_t cp, char *out)
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

static inline unsigned cls_at(const unsigned char *s, size_t i, size_t *len)
{
    if (s[i] < 0x80) {
        *len = 1;
        return utab_ascii[s[i]];
    }
    return utab_class_slow(utf8_dec(s, i, len));
}

/* ============================================================================================
 * Split patterns
 * ========================================================================================== */

enum pat_kind {
    PAT_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    PAT_CL100K, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s...]+[\r\n]*|... */
};

struct pat {
    enum pat_kind kind;
    int max_digits;   /* CL100K: 3 (Llama-3) or 1 (Qwen2) */
    bool marks;       /* CL100K: letters are [\p{L}\p{M}] and M is not punctuation (Qwen3.5) */
    bool no_trailing; /* GPT2: the final |\s+ alternative is absent */
};

/* The pattern strings recognised exactly (as they read after JSON unescaping). */
static const struct {
    const char *re;
    struct pat pat;
} known_patterns[] = {
    { "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      { PAT_GPT2, 0, false, false } },
    { "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
      { PAT_GPT2, 0, false, true } },
    { "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      { PAT_CL100K, 3, false, false } },
    { "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      { PAT_CL100K, 1, false, false } },
    { "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| "
      "?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      { PAT_CL100K, 1, true, false } },
};

static const struct pat gpt2_pattern = { PAT_GPT2, 0, false, false };

/* End of the run of characters whose class has a bit of `need` (or any class when need is 0)
 * and no bit of `forbid`, starting at j. */
static size_t run_end(const unsigned char *s, size_t n, size_t j, unsigned need, unsigned forbid)
{
    while (j < n) {
        size_t l;
        unsigned c = cls_at(s, j, &l);
        if ((need && !(c & need)) || (c & forbid))
            break;
        j += l;
    }
    return j;
}

static inline bool cls_ok(unsigned c, unsigned need, unsigned forbid)
{
    return (!need || (c & need)) && !(c & forbid);
}

/*
 * The whitespace alternatives \s+(?!\S)|\s+ at i, where s[i] is whitespace: the greedy run
 * backs off one character when a non-space follows it (so that the last space can lead the
 * next word), unless the run is a single character. Returns 0 when the pattern has no final
 * \s+ and nothing matches at i.
 */
static size_t match_ws_tail(const unsigned char *s, size_t n, size_t i, bool no_trailing)
{
    size_t j = i, last = i, count = 0;
    while (j < n) {
        size_t l;
        if (!(cls_at(s, j, &l) & UTAB_WS))
            break;
        last = j;
        j += l;
        count++;
    }
    if (j == n)
        return n;
    if (count >= 2)
        return last;
    return no_trailing ? 0 : j;
}

/* GPT-2's pattern at i (case-sensitive contractions first, then ` ?X+` for letters, numbers
 * and other symbols, then whitespace). Every alternative is greedy with nothing after it, so
 * the first alternative that matches at i is the match. */
static size_t match_gpt2(const unsigned char *s, size_t n, size_t i, const struct pat *p)
{
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 2;
        if (i + 2 < n) {
            unsigned char b = s[i + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 3;
        }
    }
    size_t l0;
    unsigned c0 = cls_at(s, i, &l0);
    size_t j = i;
    unsigned c = c0;
    if (s[i] == ' ' && i + 1 < n) {
        size_t l1;
        unsigned c1 = cls_at(s, i + 1, &l1);
        if (!(c1 & UTAB_WS)) {
            j = i + 1;
            c = c1;
        }
    }
    if (!(c & UTAB_WS)) {
        if (c & UTAB_L)
            return run_end(s, n, j, UTAB_L, 0);
        if (c & UTAB_N)
            return run_end(s, n, j, UTAB_N, 0);
        return run_end(s, n, j, 0, UTAB_WS | UTAB_L | UTAB_N);
    }
    return match_ws_tail(s, n, i, p->no_trailing);
}

/* ASCII case folding plus U+017F LATIN SMALL LETTER LONG S, whose simple case fold is 's'
 * (Oniguruma and the regex crate both match it for (?i)s). */
static uint32_t fold_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    if (i >= n) {
        *len = 0;
        return 0;
    }
    uint32_t c = utf8_dec(s, i, len);
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c == 0x17f)
        return 's';
    return c;
}

/* The Llama-3 / cl100k family at i (see known_patterns for the exact strings). */
static size_t match_cl100k(const unsigned char *s, size_t n, size_t i, const struct pat *p)
{
    if (s[i] == '\'') {
        size_t l1, l2;
        uint32_t a = fold_at(s, n, i + 1, &l1);
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
            return i + 1 + l1;
        if (a == 'r' || a == 'v' || a == 'l') {
            uint32_t b = fold_at(s, n, i + 1 + l1, &l2);
            if ((a != 'l' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 1 + l1 + l2;
        }
    }
    unsigned letters = p->marks ? (UTAB_L | UTAB_M) : UTAB_L;
    unsigned punct_forbid = UTAB_WS | UTAB_L | UTAB_N | (p->marks ? UTAB_M : 0);
    size_t l0;
    unsigned c0 = cls_at(s, i, &l0);
    /* [^\r\n\p{L}\p{N}]?LETTERS+ */
    if (s[i] != '\r' && s[i] != '\n' && !(c0 & (UTAB_L | UTAB_N)) && i + l0 < n) {
        size_t l1;
        if (cls_at(s, i + l0, &l1) & letters)
            return run_end(s, n, i + l0, letters, 0);
    }
    if (c0 & letters)
        return run_end(s, n, i, letters, 0);
    /* \p{N}{1,max} */
    if (c0 & UTAB_N) {
        size_t j = i;
        for (int k = 0; k < p->max_digits && j < n; k++) {
            size_t l;
            if (!(cls_at(s, j, &l) & UTAB_N))
                break;
            j += l;
        }
        return j;
    }
    /* ` ?PUNCT+[\r\n]*` */
    size_t j = i;
    unsigned c = c0;
    if (s[i] == ' ' && i + 1 < n) {
        size_t l1;
        unsigned c1 = cls_at(s, i + 1, &l1);
        if (cls_ok(c1, 0, punct_forbid)) {
            j = i + 1;
            c = c1;
        }
    }
    if (cls_ok(c, 0, punct_forbid)) {
        j = run_end(s, n, j, 0, punct_forbid);
        while (j < n && (s[j] == '\r' || s[j] == '\n'))
            j++;
        return j;
    }
    /* s[i] is whitespace here. \s*[\r\n]+ : the run up to and including its last CR or LF. */
    size_t k = i, last_nl = 0;
    while (k < n) {
        size_t l;
        if (!(cls_at(s, k, &l) & UTAB_WS))
            break;
        if (s[k] == '\r' || s[k] == '\n')
            last_nl = k + 1;
        k += l;
    }
    if (last_nl)
        return last_nl;
    return match_ws_tail(s, n, i, false);
}

/* End of the match at i (> i), or i when nothing matches at i. */
static size_t pat_match(const struct pat *p, const unsigned char *s, size_t n, size_t i)
{
    size_t e = p->kind == PAT_GPT2 ? match_gpt2(s, n, i, p) : match_cl100k(s, n, i, p);
    return e > i ? e : i;
}

/* ============================================================================================
 * The tokenizer
 * ========================================================================================== */

enum step_kind { STEP_SPLIT, STEP_BYTELEVEL, STEP_METASPACE };

/* Metaspace's prepend_scheme. */
enum prepend { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

struct step {
    enum step_kind kind;
    struct pat pat;        /* SPLIT */
    bool removed;          /* SPLIT: behavior Removed (else Isolated) */
    bool add_prefix_space; /* BYTELEVEL */
    bool use_regex;        /* BYTELEVEL */
    char repl[4];          /* METASPACE: the replacement character's UTF-8 */
    size_t repl_len;
    enum prepend prepend; /* METASPACE */
    bool split;           /* METASPACE: split before every replacement character */
};

enum norm_kind { NORM_NFC, NORM_PREPEND, NORM_REPLACE };

/* One normalizer of the flattened Sequence; strings are malloc'd and NUL-terminated. */
struct norm {
    enum norm_kind kind;
    char *a; /* PREPEND: the prefix; REPLACE: the pattern */
    size_t alen;
    char *b; /* REPLACE: the content */
    size_t blen;
};

enum dec_kind { DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };

/* One decoder of the flattened Sequence (decoders other than ByteLevel). */
struct dec {
    enum dec_kind kind;
    char *a; /* REPLACE: pattern; STRIP / METASPACE: the character */
    size_t alen;
    char *b; /* REPLACE: content */
    size_t blen;
    size_t start, stop; /* STRIP */
    bool never;         /* METASPACE: prepend_scheme never */
};

enum model_kind { MODEL_BPE, MODEL_UNIGRAM };

/* Unigram's trie as a hash of every prefix of every piece: id of the piece equal to the prefix,
 * or -1 when the prefix only leads to longer pieces. */
struct pfx_slot {
    uint64_t h; /* FNV-1a state of the prefix (not mixed), 0 with len 0 when empty */
    const char *s;
    uint32_t len;
    int32_t id;
};

struct added {
    const char *content; /* in the arena (set once the arena stops growing) */
    size_t off;          /* arena offset of content, used while loading */
    size_t len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
};

struct merge_slot {
    uint64_t key; /* a << 32 | b, UINT64_MAX when empty */
    uint32_t rank;
    int32_t new_id;
};

struct tok {
    enum model_kind model;
    bool byte_level;      /* the pre-tokenizer ends with ByteLevel: pieces are raw bytes */
    bool byte_fallback;   /* unknown characters become their <0xXX> tokens */
    int32_t fb_id[256];   /* id of "<0xXX>" of each byte, -1 if absent */
    double *score;        /* Unigram: [n_ids] piece scores */
    double min_score;     /* Unigram: the lowest score (unk scores 10 below it) */
    struct pfx_slot *pfx; /* Unigram: prefix table (strings borrowed from id_str) */
    size_t pfx_mask;
    uint64_t *bigram; /* character-level BPE: the adjacent character pairs inside tokens */
    size_t bigram_mask;
    struct norm norms[MAX_STEPS];
    int n_norms;
    bool norm_copy; /* some normalizer changes the text (Prepend / Replace) */
    struct dec decs[MAX_STEPS];
    int n_decs;
    int dec_mode;         /* 0: ByteLevel, 1: the decs list, 2: none (tokens joined by spaces) */
    int32_t n_ids;        /* max id + 1 */
    int32_t n_vocab;      /* entries in model.vocab */
    const char **id_str;  /* [n_ids] token string (added content wins), NULL for gaps */
    uint32_t *id_len;     /* [n_ids] */
    const char **id_dec;  /* [n_ids] decoded bytes of the token (ByteLevel decoder) */
    uint32_t *id_declen;  /* [n_ids] */
    struct buf arena;     /* owns every string above; offsets fixed up after loading */
    uint32_t *vocab_slot; /* open addressing: id + 1 of a model.vocab entry, 0 empty */
    size_t vocab_mask;
    struct merge_slot *merges;
    size_t merge_mask;
    int32_t byte_id[256]; /* id of the one-character token of each byte, -1 if absent */
    uint32_t b2c[256];    /* GPT-2 bytes_to_unicode */
    bool ignore_merges, fuse_unk;
    int32_t unk_id; /* -1 none, -2 named but absent from the vocabulary (error when needed) */
    char *unk_name;
    bool nfc;
    struct added *added;
    int n_added;
    /* Per pass (0: normalized=false, 1: normalized=true): added indices sorted by first byte,
     * then by length descending; bucket[pass][b] .. bucket[pass][b + 1] index into it. */
    int *order[2];
    int bucket[2][257];
    struct step steps[MAX_STEPS];
    int n_steps;
};

static void bytes_to_unicode(uint32_t b2c[256])
{
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))
            b2c[b] = (uint32_t)b;
        else
            b2c[b] = 256 + n++;
    }
}

static int32_t vocab_find(const struct tok *t, const char *s, size_t n)
{
    if (!t->vocab_slot)
        return -1;
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;;) {
        uint32_t v = t->vocab_slot[i];
        if (v == 0)
            return -1;
        int32_t id = (int32_t)v - 1;
        if (t->id_len[id] == n && memcmp(t->id_str[id], s, n) == 0)
            return id;
        i = (i + 1) & t->vocab_mask;
    }
}

static const struct merge_slot *merge_find(const struct tok *t, int32_t a, int32_t b)
{
    if (!t->merges)
        return NULL;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = hash_u64(key) & t->merge_mask;
    for (;;) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == UINT64_MAX)
            return NULL;
        if (m->key == key)
            return m;
        i = (i + 1) & t->merge_mask;
    }
}

void tok_free(struct tok *t)
{
    if (!t)
        return;
    free(t->id_str);
    free(t->id_len);
    free(t->id_dec);
    free(t->id_declen);
    buf_release(&t->arena);
    free(t->vocab_slot);
    free(t->merges);
    free(t->unk_name);
    free(t->added);
    free(t->order[0]);
    free(t->order[1]);
    free(t->score);
    free(t->pfx);
    free(t->bigram);
    for (int k = 0; k < t->n_norms; k++) {
        free(t->norms[k].a);
        free(t->norms[k].b);
    }
    for (int k = 0; k < t->n_decs; k++) {
        free(t->decs[k].a);
        free(t->decs[k].b);
    }
    free(t);
}

/* ============================================================================================
 * Loading
 * ========================================================================================== */

/* A parse in progress: strings go to the arena as offsets until the arena stops growing. */
struct loader {
    struct tok *t;
    size_t *str_off; /* [n_ids] arena offset + 1 of id_str, 0 none */
    size_t *dec_off; /* [n_ids] arena offset of id_dec */
    char *err;
    size_t errlen;
};

static size_t arena_add(struct buf *a, const void *p, size_t n)
{
    size_t off = a->len;
    buf_append(a, p, n);
    buf_append(a, "", 1); /* NUL-terminate every string */
    return off;
}

/* Fetches an optional boolean member: absent or null gives def. */
static int get_bool(struct loader *L, const cJSON *obj, const char *where, const char *key,
                    bool def, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        seterr(L->err, L->errlen, "%s.%s must be true or false", where, key);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A JSON number that is an integer in [0, TOK_MAX_ID). */
static int get_id(const cJSON *v, int32_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TOK_MAX_ID) || d != (double)(int32_t)d)
        return -1;
    *out = (int32_t)d;
    return 0;
}

static const char *type_of(const cJSON *obj)
{
    if (!cJSON_IsObject(obj))
        return NULL;
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

/* A string member holding exactly one character (Metaspace's replacement, Strip's content). */
static int get_char(struct loader *L, const cJSON *obj, const char *where, const char *key,
                    char out[4], size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    size_t l = 0;
    if (cJSON_IsString(v) && v->valuestring[0]) {
        utf8_dec((const unsigned char *)v->valuestring, 0, &l);
        if (v->valuestring[l] != 0)
            l = 0;
    }
    if (l == 0) {
        seterr(L->err, L->errlen, "%s.%s must be a string of one character", where, key);
        return -1;
    }
    memcpy(out, v->valuestring, l);
    *len = l;
    return 0;
}

/* A string member copied to a new string (empty allowed unless nonempty). */
static int get_str(struct loader *L, const cJSON *obj, const char *where, const char *key,
                   bool nonempty, char **out, size_t *len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v) || (nonempty && !v->valuestring[0])) {
        seterr(L->err, L->errlen, "%s.%s must be a%s string", where, key,
               nonempty ? " non-empty" : "");
        return -1;
    }
    *len = strlen(v->valuestring);
    *out = xstrdup(v->valuestring);
    return 0;
}

/* A {"String": "..."} pattern (Replace); Regex patterns are refused. */
static int get_string_pattern(struct loader *L, const cJSON *obj, const char *where, char **out,
                              size_t *len)
{
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
    if (cJSON_IsObject(pattern) && cJSON_GetObjectItemCaseSensitive(pattern, "Regex")) {
        seterr(L->err, L->errlen, "%s with a Regex pattern is not supported (only String)", where);
        return -1;
    }
    if (!cJSON_IsObject(pattern)) {
        seterr(L->err, L->errlen, "%s.pattern must be an object", where);
        return -1;
    }
    char w[96];
    snprintf(w, sizeof(w), "%s.pattern", where);
    return get_str(L, pattern, w, "String", true, out, len);
}

/* Metaspace's prepend_scheme, or the older add_prefix_space (true: always, false: never). */
static int get_prepend(struct loader *L, const cJSON *obj, const char *where, enum prepend *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, "prepend_scheme");
    if (!v || cJSON_IsNull(v)) {
        bool aps;
        if (get_bool(L, obj, where, "add_prefix_space", true, &aps) < 0)
            return -1;
        *out = aps ? PREPEND_ALWAYS : PREPEND_NEVER;
        return 0;
    }
    const char *sv = cJSON_IsString(v) ? v->valuestring : "";
    if (strcmp(sv, "always") == 0)
        *out = PREPEND_ALWAYS;
    else if (strcmp(sv, "first") == 0)
        *out = PREPEND_FIRST;
    else if (strcmp(sv, "never") == 0)
        *out = PREPEND_NEVER;
    else {
        seterr(L->err, L->errlen, "%s.prepend_scheme must be \"always\", \"first\" or \"never\"",
               where);
        return -1;
    }
    return 0;
}

static int parse_pattern(struct loader *L, const cJSON *split, struct pat *out)
{
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    if (!cJSON_IsObject(pattern)) {
        seterr(L->err, L->errlen, "pre_tokenizer Split.pattern must be an object");
        return -1;
    }
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    if (!re) {
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pattern, "String");
        if (cJSON_IsString(str)) {
            char *q = quote(str->valuestring, strlen(str->valuestring));
            seterr(L->err, L->errlen,
                   "pre_tokenizer Split with a String pattern (%s) is not supported", q);
            free(q);
        } else {
            seterr(L->err, L->errlen, "pre_tokenizer Split.pattern needs a Regex string");
        }
        return -1;
    }
    if (!cJSON_IsString(re)) {
        seterr(L->err, L->errlen, "pre_tokenizer Split.pattern.Regex must be a string");
        return -1;
    }
    for (size_t k = 0; k < EXAQ_ARRAY_LEN(known_patterns); k++) {
        if (strcmp(re->valuestring, known_patterns[k].re) == 0) {
            *out = known_patterns[k].pat;
            return 0;
        }
    }
    seterr(L->err, L->errlen,
           "pre_tokenizer Split pattern \"%s\" is not supported (known: GPT-2, Llama-3/cl100k, "
           "Qwen2 and Qwen3.5 patterns)",
           re->valuestring);
    return -1;
}

/* A `Sequence` step (what: "normalizer", "pre_tokenizer" or "decoder") whose array under key
 * lists the steps: each goes through parse, flattened, at most 4 levels deep. */
static int parse_sequence(struct loader *L, const cJSON *seq, const char *what, const char *key,
                          int depth, int (*parse)(struct loader *, const cJSON *, int))
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(seq, key);
    if (!cJSON_IsArray(list)) {
        seterr(L->err, L->errlen, "%s Sequence.%s must be an array", what, key);
        return -1;
    }
    if (depth > 4) {
        seterr(L->err, L->errlen, "%s Sequence nested too deeply", what);
        return -1;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        if (parse(L, e, depth + 1) < 0)
            return -1;
    }
    return 0;
}

static int parse_pretok(struct loader *L, const cJSON *pt, int depth)
{
    struct tok *t = L->t;
    const char *ty = type_of(pt);
    if (!cJSON_IsObject(pt) || !ty) {
        seterr(L->err, L->errlen, "pre_tokenizer must be an object with a string \"type\"");
        return -1;
    }
    if (strcmp(ty, "Sequence") == 0)
        return parse_sequence(L, pt, "pre_tokenizer", "pretokenizers", depth, parse_pretok);
    if (t->n_steps == MAX_STEPS) {
        seterr(L->err, L->errlen, "pre_tokenizer has more than %d steps", MAX_STEPS);
        return -1;
    }
    struct step *st = &t->steps[t->n_steps];
    memset(st, 0, sizeof(*st));
    if (strcmp(ty, "ByteLevel") == 0) {
        st->kind = STEP_BYTELEVEL;
        if (get_bool(L, pt, "pre_tokenizer ByteLevel", "add_prefix_space", true,
                     &st->add_prefix_space) < 0 ||
            get_bool(L, pt, "pre_tokenizer ByteLevel", "use_regex", true, &st->use_regex) < 0)
            return -1;
    } else if (strcmp(ty, "Metaspace") == 0) {
        st->kind = STEP_METASPACE;
        if (get_char(L, pt, "pre_tokenizer Metaspace", "replacement", st->repl, &st->repl_len) <
                0 ||
            get_prepend(L, pt, "pre_tokenizer Metaspace", &st->prepend) < 0 ||
            get_bool(L, pt, "pre_tokenizer Metaspace", "split", true, &st->split) < 0)
            return -1;
    } else if (strcmp(ty, "Split") == 0) {
        st->kind = STEP_SPLIT;
        if (parse_pattern(L, pt, &st->pat) < 0)
            return -1;
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(pt, "behavior");
        if (!cJSON_IsString(beh)) {
            seterr(L->err, L->errlen, "pre_tokenizer Split.behavior must be a string");
            return -1;
        }
        if (strcmp(beh->valuestring, "Removed") == 0) {
            st->removed = true;
        } else if (strcmp(beh->valuestring, "Isolated") != 0) {
            seterr(L->err, L->errlen,
                   "pre_tokenizer Split.behavior '%s' is not supported (only Isolated and "
                   "Removed)",
                   beh->valuestring);
            return -1;
        }
        const cJSON *inv = cJSON_GetObjectItemCaseSensitive(pt, "invert");
        if (!cJSON_IsBool(inv)) {
            seterr(L->err, L->errlen, "pre_tokenizer Split.invert must be true or false");
            return -1;
        }
        if (cJSON_IsTrue(inv)) {
            seterr(L->err, L->errlen, "pre_tokenizer Split with invert=true is not supported");
            return -1;
        }
    } else {
        seterr(L->err, L->errlen,
               "pre_tokenizer type '%s' is not supported (only ByteLevel, Split, Metaspace and "
               "Sequence)",
               ty);
        return -1;
    }
    t->n_steps++;
    return 0;
}

/* Parses model.vocab into ids, strings and the vocab hash table. */
static int parse_vocab(struct loader *L, const cJSON *vocab)
{
    struct tok *t = L->t;
    if (!cJSON_IsObject(vocab)) {
        seterr(L->err, L->errlen, "model.vocab must be an object mapping tokens to ids");
        return -1;
    }
    int n = cJSON_GetArraySize(vocab);
    if (n <= 0) {
        seterr(L->err, L->errlen, "model.vocab is empty");
        return -1;
    }
    int32_t max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        int32_t id;
        if (get_id(e, &id) < 0) {
            char *q = quote(e->string, strlen(e->string));
            seterr(L->err, L->errlen,
                   "model.vocab: token %s has id that is not an integer in [0, %d)", q, TOK_MAX_ID);
            free(q);
            return -1;
        }
        if (id > max_id)
            max_id = id;
    }
    t->n_vocab = n;
    t->n_ids = max_id + 1;
    L->str_off = xcalloc((size_t)t->n_ids, sizeof(size_t));
    t->id_len = xcalloc((size_t)t->n_ids, sizeof(uint32_t));
    size_t cap = pow2_at_least((size_t)n * 2);
    t->vocab_slot = xcalloc(cap, sizeof(uint32_t));
    t->vocab_mask = cap - 1;
    cJSON_ArrayForEach(e, vocab)
    {
        int32_t id = 0;
        get_id(e, &id); /* checked in the first pass */
        size_t len = strlen(e->string);
        if (L->str_off[id]) {
            char *q1 = quote(t->arena.data + L->str_off[id] - 1, t->id_len[id]);
            char *q2 = quote(e->string, len);
            seterr(L->err, L->errlen, "model.vocab: id %d is used by both %s and %s", id, q1, q2);
            free(q1);
            free(q2);
            return -1;
        }
        /* Duplicate keys: look the string up among the entries inserted so far. */
        uint64_t h = hash_bytes(e->string, len);
        size_t i = h & t->vocab_mask;
        while (t->vocab_slot[i]) {
            int32_t other = (int32_t)t->vocab_slot[i] - 1;
            if (t->id_len[other] == len &&
                memcmp(t->arena.data + L->str_off[other] - 1, e->string, len) == 0) {
                char *q = quote(e->string, len);
                seterr(L->err, L->errlen, "model.vocab: token %s appears twice (ids %d and %d)", q,
                       other, id);
                free(q);
                return -1;
            }
            i = (i + 1) & t->vocab_mask;
        }
        t->vocab_slot[i] = (uint32_t)id + 1;
        L->str_off[id] = arena_add(&t->arena, e->string, len) + 1;
        t->id_len[id] = (uint32_t)len;
    }
    return 0;
}

/* Vocab lookup during loading, while id_str is not yet set (strings are arena offsets). */
static int32_t load_vocab_find(struct loader *L, const char *s, size_t n)
{
    struct tok *t = L->t;
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;;) {
        uint32_t v = t->vocab_slot[i];
        if (v == 0)
            return -1;
        int32_t id = (int32_t)v - 1;
        if (t->id_len[id] == n && memcmp(t->arena.data + L->str_off[id] - 1, s, n) == 0)
            return id;
        i = (i + 1) & t->vocab_mask;
    }
}

static int add_merge(struct loader *L, size_t rank, const char *a, const char *b)
{
    struct tok *t = L->t;
    size_t la = strlen(a), lb = strlen(b);
    int32_t ia = load_vocab_find(L, a, la), ib = load_vocab_find(L, b, lb);
    char *ab = xmalloc(la + lb + 1);
    memcpy(ab, a, la);
    memcpy(ab + la, b, lb + 1);
    int32_t iab = load_vocab_find(L, ab, la + lb);
    if (ia < 0 || ib < 0 || iab < 0) {
        const char *missing = ia < 0 ? a : ib < 0 ? b : ab;
        char *q = quote(missing, strlen(missing));
        seterr(L->err, L->errlen, "model.merges[%zu]: token %s is not in the vocabulary", rank, q);
        free(q);
        free(ab);
        return -1;
    }
    free(ab);
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    size_t i = hash_u64(key) & t->merge_mask;
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key)
        i = (i + 1) & t->merge_mask;
    /* A repeated pair takes its last rank, as the library's HashMap collect does. */
    t->merges[i].key = key;
    t->merges[i].rank = (uint32_t)rank;
    t->merges[i].new_id = iab;
    return 0;
}

static int parse_merges(struct loader *L, const cJSON *merges)
{
    struct tok *t = L->t;
    if (!cJSON_IsArray(merges)) {
        seterr(L->err, L->errlen, "model.merges must be an array");
        return -1;
    }
    int n = cJSON_GetArraySize(merges);
    size_t cap = pow2_at_least((size_t)(n > 0 ? n : 1) * 2);
    t->merges = xmalloc(cap * sizeof(*t->merges));
    for (size_t i = 0; i < cap; i++)
        t->merges[i].key = UINT64_MAX;
    t->merge_mask = cap - 1;
    int form = 0; /* 1: "a b" strings, 2: ["a", "b"] pairs */
    size_t rank = 0, index = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges)
    {
        int this_form = cJSON_IsString(e) ? 1 : cJSON_IsArray(e) ? 2 : 0;
        if (this_form == 0 || (form && this_form != form)) {
            seterr(L->err, L->errlen,
                   "model.merges[%zu] must be a \"a b\" string or an [\"a\", \"b\"] pair, all "
                   "of the same form",
                   index);
            return -1;
        }
        form = this_form;
        if (form == 1) {
            const char *s = e->valuestring;
            if (strncmp(s, "#version", 8) == 0) {
                index++;
                continue; /* the library skips these lines without counting them */
            }
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                char *q = quote(s, strlen(s));
                seterr(L->err, L->errlen,
                       "model.merges[%zu] %s is not two tokens separated by one space", index, q);
                free(q);
                return -1;
            }
            char *a = xstrndup(s, (size_t)(sp - s));
            int rc = add_merge(L, rank, a, sp + 1);
            free(a);
            if (rc < 0)
                return -1;
        } else {
            const cJSON *a = cJSON_GetArrayItem(e, 0), *b = cJSON_GetArrayItem(e, 1);
            if (cJSON_GetArraySize(e) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b)) {
                seterr(L->err, L->errlen, "model.merges[%zu] must be a pair of two strings", index);
                return -1;
            }
            if (add_merge(L, rank, a->valuestring, b->valuestring) < 0)
                return -1;
        }
        rank++;
        index++;
    }
    return 0;
}

/*
 * A score as the library holds it. serde_json (without its float_roundtrip feature) reads a
 * decimal as its digits in a u64 converted to f64, then one multiply or divide by a power of
 * ten, which can be one ulp away from the correctly rounded value cJSON gives; Viterbi ties
 * then break differently. The digits are those of the shortest form of the value, which is
 * how the library (ryu) and Python write scores.
 */
static double serde_f64(double d)
{
    if (d == 0 || !isfinite(d))
        return d;
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof(buf), "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    /* buf is [-]D[.DDD]e[+-]X */
    const char *q = buf;
    bool neg = *q == '-';
    if (neg)
        q++;
    uint64_t sig = 0;
    int nd = 0;
    for (; *q && *q != 'e'; q++) {
        if (*q == '.')
            continue;
        sig = sig * 10 + (uint64_t)(*q - '0');
        nd++;
    }
    int exp = atoi(q + 1) - (nd - 1);
    double f = (double)sig;
    while (exp < -308) { /* f /= 1e308 until the table covers it, as serde_json does */
        f /= 1e308;
        exp += 308;
    }
    char pw[16];
    snprintf(pw, sizeof(pw), "1e%d", exp < 0 ? -exp : exp);
    double pow10 = strtod(pw, NULL);
    f = exp >= 0 ? f * pow10 : f / pow10;
    return neg ? -f : f;
}

/* Unigram's model.vocab: an array of [piece, score]; ids are the positions. */
static int parse_unigram(struct loader *L, const cJSON *model)
{
    struct tok *t = L->t;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsArray(vocab) || cJSON_GetArraySize(vocab) == 0) {
        seterr(L->err, L->errlen, "model.vocab must be a non-empty array of [piece, score]");
        return -1;
    }
    int n = cJSON_GetArraySize(vocab);
    if (n >= TOK_MAX_ID) {
        seterr(L->err, L->errlen, "model.vocab has more than %d pieces", TOK_MAX_ID);
        return -1;
    }
    t->n_vocab = n;
    t->n_ids = n;
    L->str_off = xcalloc((size_t)n, sizeof(size_t));
    t->id_len = xcalloc((size_t)n, sizeof(uint32_t));
    t->score = xcalloc((size_t)n, sizeof(double));
    size_t cap = pow2_at_least((size_t)n * 2);
    t->vocab_slot = xcalloc(cap, sizeof(uint32_t));
    t->vocab_mask = cap - 1;
    t->min_score = INFINITY;
    int32_t id = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        const cJSON *p = cJSON_GetArrayItem(e, 0), *sc = cJSON_GetArrayItem(e, 1);
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2 || !cJSON_IsString(p) ||
            !cJSON_IsNumber(sc) || !isfinite(sc->valuedouble)) {
            seterr(L->err, L->errlen, "model.vocab[%d] must be a [string, number] pair", id);
            return -1;
        }
        size_t len = strlen(p->valuestring);
        if (len == 0) {
            seterr(L->err, L->errlen, "model.vocab[%d] is an empty piece", id);
            return -1;
        }
        /* A piece listed twice maps to its last id (the library's HashMap insert), while
         * both ids keep their string. */
        size_t i = hash_bytes(p->valuestring, len) & t->vocab_mask;
        while (t->vocab_slot[i]) {
            int32_t other = (int32_t)t->vocab_slot[i] - 1;
            if (t->id_len[other] == len &&
                memcmp(t->arena.data + L->str_off[other] - 1, p->valuestring, len) == 0)
                break;
            i = (i + 1) & t->vocab_mask;
        }
        t->vocab_slot[i] = (uint32_t)id + 1;
        L->str_off[id] = arena_add(&t->arena, p->valuestring, len) + 1;
        t->id_len[id] = (uint32_t)len;
        t->score[id] = serde_f64(sc->valuedouble);
        if (t->score[id] < t->min_score)
            t->min_score = t->score[id];
        id++;
    }
    t->unk_id = -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "unk_id");
    if (v && !cJSON_IsNull(v)) {
        if (get_id(v, &t->unk_id) < 0 || t->unk_id >= n) {
            seterr(L->err, L->errlen, "model.unk_id must be null or an index into model.vocab");
            return -1;
        }
    }
    return get_bool(L, model, "model", "byte_fallback", false, &t->byte_fallback);
}

static int parse_model(struct loader *L, const cJSON *model)
{
    struct tok *t = L->t;
    if (!cJSON_IsObject(model)) {
        seterr(L->err, L->errlen, "tokenizer.json has no \"model\" object");
        return -1;
    }
    const char *ty = type_of(model);
    if (ty && strcmp(ty, "Unigram") == 0) {
        t->model = MODEL_UNIGRAM;
        return parse_unigram(L, model);
    }
    if (!ty || strcmp(ty, "BPE") != 0) {
        seterr(L->err, L->errlen, "model.type is '%s'; only BPE and Unigram are supported",
               ty ? ty : "(missing)");
        return -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0)) {
        seterr(L->err, L->errlen, "model.dropout must be null (BPE dropout is not supported)");
        return -1;
    }
    static const char *const affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (size_t k = 0; k < 2; k++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affixes[k]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0)) {
            seterr(L->err, L->errlen, "model.%s must be null (not supported)", affixes[k]);
            return -1;
        }
    }
    if (get_bool(L, model, "model", "byte_fallback", false, &t->byte_fallback) < 0 ||
        get_bool(L, model, "model", "fuse_unk", false, &t->fuse_unk) < 0 ||
        get_bool(L, model, "model", "ignore_merges", false, &t->ignore_merges) < 0)
        return -1;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!vocab || !merges) {
        seterr(L->err, L->errlen, "model needs both \"vocab\" and \"merges\"");
        return -1;
    }
    if (parse_vocab(L, vocab) < 0 || parse_merges(L, merges) < 0)
        return -1;
    t->unk_id = -1;
    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v)) {
            seterr(L->err, L->errlen, "model.unk_token must be a string or null");
            return -1;
        }
        t->unk_name = xstrdup(v->valuestring);
        t->unk_id = load_vocab_find(L, v->valuestring, strlen(v->valuestring));
        if (t->unk_id < 0)
            t->unk_id = -2; /* the library fails only when an unknown character shows up */
    }
    return 0;
}

static int parse_added(struct loader *L, const cJSON *list)
{
    struct tok *t = L->t;
    if (!list || cJSON_IsNull(list))
        return 0;
    if (!cJSON_IsArray(list)) {
        seterr(L->err, L->errlen, "added_tokens must be an array");
        return -1;
    }
    int n = cJSON_GetArraySize(list);
    t->added = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*t->added));
    int32_t next_id = t->n_vocab; /* what AddedVocabulary::add_tokens hands out */
    int index = -1, rc = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        index++;
        const cJSON *c = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "content") : NULL;
        const cJSON *idv = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "id") : NULL;
        int32_t id;
        if (!cJSON_IsString(c) || get_id(idv, &id) < 0) {
            seterr(L->err, L->errlen,
                   "added_tokens[%d] needs a string \"content\" and an integer \"id\" in [0, %d)",
                   index, TOK_MAX_ID);
            goto out;
        }
        struct added a = { 0 };
        char where[64];
        snprintf(where, sizeof(where), "added_tokens[%d]", index);
        if (get_bool(L, e, where, "special", false, &a.special) < 0 ||
            get_bool(L, e, where, "single_word", false, &a.single_word) < 0 ||
            get_bool(L, e, where, "lstrip", false, &a.lstrip) < 0 ||
            get_bool(L, e, where, "rstrip", false, &a.rstrip) < 0 ||
            get_bool(L, e, where, "normalized", !a.special, &a.normalized) < 0)
            goto out;
        a.len = strlen(c->valuestring);
        if (a.len == 0)
            continue; /* the library ignores empty added tokens */
        /* Which id does the library give it? An earlier added token, then the vocabulary,
         * then the next free id. */
        int32_t lib_id = -1;
        int dup = -1;
        for (int k = 0; k < t->n_added; k++) {
            if (t->added[k].len == a.len &&
                memcmp(t->arena.data + t->added[k].off, c->valuestring, a.len) == 0) {
                dup = k;
                lib_id = t->added[k].id;
            }
        }
        int32_t vid = load_vocab_find(L, c->valuestring, a.len);
        if (lib_id < 0)
            lib_id = vid >= 0 ? vid : next_id++;
        if (id != lib_id) {
            char *q = quote(c->valuestring, a.len);
            seterr(L->err, L->errlen,
                   "added_tokens[%d] %s has id %d but the vocabulary order gives it id %d", index,
                   q, id, lib_id);
            free(q);
            goto out;
        }
        if (vid < 0 && id < t->n_ids && L->str_off[id]) {
            char *q1 = quote(c->valuestring, a.len);
            char *q2 = quote(t->arena.data + L->str_off[id] - 1, t->id_len[id]);
            seterr(L->err, L->errlen, "added_tokens[%d] %s has id %d, which belongs to %s", index,
                   q1, id, q2);
            free(q1);
            free(q2);
            goto out;
        }
        a.id = id;
        if (dup >= 0) {
            a.off = t->added[dup].off;
            t->added[dup] = a; /* later properties win, as in the library */
            continue;
        }
        a.off = arena_add(&t->arena, c->valuestring, a.len);
        t->added[t->n_added++] = a;
    }
    /* Grow the id tables over the added ids and give them their strings. */
    int32_t max_id = t->n_ids - 1;
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].id > max_id)
            max_id = t->added[k].id;
    if (max_id + 1 > t->n_ids) {
        size_t old = (size_t)t->n_ids, nn = (size_t)max_id + 1;
        L->str_off = xrealloc(L->str_off, nn * sizeof(size_t));
        t->id_len = xrealloc(t->id_len, nn * sizeof(uint32_t));
        memset(L->str_off + old, 0, (nn - old) * sizeof(size_t));
        memset(t->id_len + old, 0, (nn - old) * sizeof(uint32_t));
        t->n_ids = max_id + 1;
    }
    for (int k = 0; k < t->n_added; k++) {
        L->str_off[t->added[k].id] = t->added[k].off + 1;
        t->id_len[t->added[k].id] = (uint32_t)t->added[k].len;
    }
    rc = 0;
out:
    return rc;
}

struct added_key {
    unsigned char first;
    size_t len;
    int32_t id;
    int index;
};

static int cmp_added(const void *pa, const void *pb)
{
    const struct added_key *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Builds the per-pass first-byte buckets of the added tokens (longest first in a bucket). */
static void index_added(struct tok *t)
{
    struct added_key *keys = xmalloc(sizeof(*keys) * (size_t)(t->n_added + 1));
    for (int pass = 0; pass < 2; pass++) {
        int *ord = xmalloc(sizeof(int) * (size_t)(t->n_added + 1));
        int m = 0;
        for (int k = 0; k < t->n_added; k++) {
            const struct added *a = &t->added[k];
            if (a->normalized == (pass == 1))
                keys[m++] = (struct added_key){ (unsigned char)a->content[0], a->len, a->id, k };
        }
        qsort(keys, (size_t)m, sizeof(*keys), cmp_added);
        for (int k = 0; k < m; k++)
            ord[k] = keys[k].index;
        int k = 0;
        for (int b = 0; b < 256; b++) {
            t->bucket[pass][b] = k;
            while (k < m && (unsigned char)t->added[ord[k]].content[0] == b)
                k++;
        }
        t->bucket[pass][256] = m;
        t->order[pass] = ord;
    }
    free(keys);
}

/* Decoded bytes of a token for the ByteLevel decoder: every character mapped back to its
 * byte, or the token's own UTF-8 when some character is outside the byte-level alphabet. */
static void decode_token_bytes(const int16_t *c2b, const char *s, size_t n, struct buf *out)
{
    size_t start = out->len;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t l, bad;
        if (utf8_seq(u, n, i, &bad) == 0)
            break;
        uint32_t cp = utf8_dec(u, i, &l);
        if (cp >= 512 || c2b[cp] < 0)
            break;
        unsigned char byte = (unsigned char)c2b[cp];
        buf_append(out, &byte, 1);
        i += l;
    }
    if (i < n) {
        out->len = start;
        buf_append(out, s, n);
    }
}

static int parse_normalizer(struct loader *L, const cJSON *nz, int depth)
{
    struct tok *t = L->t;
    const char *ty = type_of(nz);
    if (!ty) {
        seterr(L->err, L->errlen, "normalizer must be an object with a string \"type\"");
        return -1;
    }
    if (strcmp(ty, "Sequence") == 0)
        return parse_sequence(L, nz, "normalizer", "normalizers", depth, parse_normalizer);
    if (t->n_norms == MAX_STEPS) {
        seterr(L->err, L->errlen, "normalizer has more than %d steps", MAX_STEPS);
        return -1;
    }
    struct norm *nm = &t->norms[t->n_norms];
    memset(nm, 0, sizeof(*nm));
    if (strcmp(ty, "NFC") == 0) {
        nm->kind = NORM_NFC;
        t->nfc = true;
    } else if (strcmp(ty, "Prepend") == 0) {
        nm->kind = NORM_PREPEND;
        t->norm_copy = true;
        if (get_str(L, nz, "normalizer Prepend", "prepend", false, &nm->a, &nm->alen) < 0)
            return -1;
    } else if (strcmp(ty, "Replace") == 0) {
        nm->kind = NORM_REPLACE;
        t->norm_copy = true;
        if (get_string_pattern(L, nz, "normalizer Replace", &nm->a, &nm->alen) < 0 ||
            get_str(L, nz, "normalizer Replace", "content", false, &nm->b, &nm->blen) < 0) {
            t->n_norms++; /* so that tok_free releases what was copied */
            return -1;
        }
    } else {
        seterr(L->err, L->errlen,
               "normalizer '%s' is not supported (only NFC on text it leaves unchanged, Prepend, "
               "Replace with a String pattern, and Sequence)",
               ty);
        return -1;
    }
    t->n_norms++;
    return 0;
}

static int parse_decoder(struct loader *L, const cJSON *d, int depth)
{
    struct tok *t = L->t;
    const char *ty = type_of(d);
    if (!ty) {
        seterr(L->err, L->errlen, "decoder must be null or an object with a string \"type\"");
        return -1;
    }
    if (strcmp(ty, "Sequence") == 0)
        return parse_sequence(L, d, "decoder", "decoders", depth, parse_decoder);
    if (strcmp(ty, "ByteLevel") == 0) {
        seterr(L->err, L->errlen, "decoder ByteLevel is only supported alone, not in a Sequence");
        return -1;
    }
    if (t->n_decs == MAX_STEPS) {
        seterr(L->err, L->errlen, "decoder has more than %d steps", MAX_STEPS);
        return -1;
    }
    struct dec *dc = &t->decs[t->n_decs++];
    memset(dc, 0, sizeof(*dc));
    char ch[4];
    size_t chl;
    if (strcmp(ty, "Replace") == 0) {
        dc->kind = DEC_REPLACE;
        return get_string_pattern(L, d, "decoder Replace", &dc->a, &dc->alen) < 0 ||
                       get_str(L, d, "decoder Replace", "content", false, &dc->b, &dc->blen) < 0
                   ? -1
                   : 0;
    }
    if (strcmp(ty, "ByteFallback") == 0) {
        dc->kind = DEC_BYTEFALLBACK;
        return 0;
    }
    if (strcmp(ty, "Fuse") == 0) {
        dc->kind = DEC_FUSE;
        return 0;
    }
    if (strcmp(ty, "Strip") == 0) {
        dc->kind = DEC_STRIP;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(d, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(d, "stop");
        int32_t start, stop;
        if (get_char(L, d, "decoder Strip", "content", ch, &chl) < 0)
            return -1;
        if (get_id(a, &start) < 0 || get_id(b, &stop) < 0) {
            seterr(L->err, L->errlen, "decoder Strip.start and .stop must be integers >= 0");
            return -1;
        }
        dc->a = xstrndup(ch, chl);
        dc->alen = chl;
        dc->start = (size_t)start;
        dc->stop = (size_t)stop;
        return 0;
    }
    if (strcmp(ty, "Metaspace") == 0) {
        dc->kind = DEC_METASPACE;
        enum prepend pr;
        if (get_char(L, d, "decoder Metaspace", "replacement", ch, &chl) < 0 ||
            get_prepend(L, d, "decoder Metaspace", &pr) < 0)
            return -1;
        dc->a = xstrndup(ch, chl);
        dc->alen = chl;
        dc->never = pr == PREPEND_NEVER;
        return 0;
    }
    t->n_decs--;
    seterr(L->err, L->errlen,
           "decoder '%s' is not supported (only ByteLevel alone, or Replace, ByteFallback, Fuse, "
           "Strip and Metaspace, in a Sequence or alone)",
           ty);
    return -1;
}

static int parse_root(struct loader *L, const cJSON *root)
{
    struct tok *t = L->t;
    if (!cJSON_IsObject(root)) {
        seterr(L->err, L->errlen, "tokenizer.json: the top level is not a JSON object");
        return -1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "1.0") == 0)) {
        seterr(L->err, L->errlen, "tokenizer.json: version must be \"1.0\"");
        return -1;
    }
    static const char *const must_be_null[] = { "truncation", "padding" };
    for (size_t k = 0; k < 2; k++) {
        v = cJSON_GetObjectItemCaseSensitive(root, must_be_null[k]);
        if (v && !cJSON_IsNull(v)) {
            seterr(L->err, L->errlen, "tokenizer.json: %s must be null (not supported)",
                   must_be_null[k]);
            return -1;
        }
    }
    if (parse_model(L, cJSON_GetObjectItemCaseSensitive(root, "model")) < 0)
        return -1;

    v = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (v && !cJSON_IsNull(v) && parse_normalizer(L, v, 0) < 0)
        return -1;

    v = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (v && !cJSON_IsNull(v) && parse_pretok(L, v, 0) < 0)
        return -1;
    for (int k = 0; k < t->n_steps; k++) {
        if (t->steps[k].kind == STEP_BYTELEVEL && k != t->n_steps - 1) {
            seterr(L->err, L->errlen,
                   "pre_tokenizer ByteLevel must be the last step (Split and Metaspace steps may "
                   "come before it)");
            return -1;
        }
    }
    t->byte_level = t->n_steps > 0 && t->steps[t->n_steps - 1].kind == STEP_BYTELEVEL;

    v = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const char *dty = v ? type_of(v) : NULL;
    if (!v || cJSON_IsNull(v)) {
        t->dec_mode = 2;
    } else if (dty && strcmp(dty, "ByteLevel") == 0) {
        t->dec_mode = 0;
    } else {
        t->dec_mode = 1;
        if (parse_decoder(L, v, 0) < 0)
            return -1;
    }

    if (parse_added(L, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) < 0)
        return -1;

    /* Added tokens that are matched on normalized text must be NFC themselves. */
    if (t->nfc) {
        for (int k = 0; k < t->n_added; k++) {
            const char *s = t->arena.data + t->added[k].off;
            const unsigned char *u = (const unsigned char *)s;
            for (size_t i = 0; i < t->added[k].len;) {
                size_t l;
                unsigned qc, ccc;
                utab_nfc(utf8_dec(u, i, &l), &qc, &ccc);
                if (t->added[k].normalized && (qc != UTAB_NFC_YES || ccc != 0)) {
                    char *q = quote(s, t->added[k].len);
                    seterr(L->err, L->errlen,
                           "added token %s is not plain NFC text; not supported with the NFC "
                           "normalizer",
                           q);
                    free(q);
                    return -1;
                }
                i += l;
            }
        }
    }
    return 0;
}

static inline uint64_t fnv_step(uint64_t h, unsigned char c)
{
    return (h ^ c) * 0x100000001b3ull;
}
#define FNV_INIT 0xcbf29ce484222325ull

static inline size_t pfx_index(uint64_t h, size_t mask)
{
    return hash_u64(h) & mask;
}

/* The prefix table of a Unigram vocabulary: every prefix of every piece, so that a walk over
 * the text can stop as soon as no piece starts with what it has read (a trie's common prefix
 * search, in the same order: shorter matches first). */
static void build_prefixes(struct tok *t)
{
    size_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        total += t->id_len[id];
    size_t cap = pow2_at_least(total * 2 + 1);
    t->pfx = xcalloc(cap, sizeof(*t->pfx));
    t->pfx_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->id_str[id];
        uint64_t h = FNV_INIT;
        for (uint32_t k = 1; k <= t->id_len[id]; k++) {
            h = fnv_step(h, (unsigned char)s[k - 1]);
            size_t i = pfx_index(h, t->pfx_mask);
            for (;;) {
                struct pfx_slot *p = &t->pfx[i];
                if (p->len == 0) {
                    *p = (struct pfx_slot){ h, s, k, k == t->id_len[id] ? id : -1 };
                    break;
                }
                if (p->h == h && p->len == k && memcmp(p->s, s, k) == 0) {
                    if (k == t->id_len[id])
                        p->id = id;
                    break;
                }
                i = (i + 1) & t->pfx_mask;
            }
        }
    }
}

/* The set of adjacent character pairs inside vocabulary tokens (see bpe_chunked). */
static void build_bigrams(struct tok *t)
{
    size_t total = 0;
    for (int32_t id = 0; id < t->n_ids; id++)
        total += t->id_len[id];
    size_t cap = pow2_at_least(total * 2 + 1);
    t->bigram = xcalloc(cap, sizeof(uint64_t));
    t->bigram_mask = cap - 1;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const unsigned char *u = (const unsigned char *)t->id_str[id];
        if (!u || vocab_find(t, t->id_str[id], t->id_len[id]) != id)
            continue; /* gaps, and added tokens outside the vocabulary */
        size_t l;
        uint32_t prev = utf8_dec(u, 0, &l);
        for (size_t i = l; i < t->id_len[id]; i += l) {
            uint32_t cp = utf8_dec(u, i, &l);
            uint64_t key = ((uint64_t)prev << 21 | cp) + 1;
            size_t k = hash_u64(key) & t->bigram_mask;
            while (t->bigram[k] && t->bigram[k] != key)
                k = (k + 1) & t->bigram_mask;
            t->bigram[k] = key;
            prev = cp;
        }
    }
}

/* The prefix slot of s[0..k) given its FNV state h, or NULL. */
static const struct pfx_slot *pfx_find(const struct tok *t, uint64_t h, const char *s, uint32_t k)
{
    size_t i = pfx_index(h, t->pfx_mask);
    for (;;) {
        const struct pfx_slot *p = &t->pfx[i];
        if (p->len == 0)
            return NULL;
        if (p->h == h && p->len == k && memcmp(p->s, s, k) == 0)
            return p;
        i = (i + 1) & t->pfx_mask;
    }
}

/* tok_load_buf with the message in a caller buffer. */
static struct tok *load_buf(const char *json, size_t len, char *err, size_t errlen)
{
    seterr(err, errlen, "unknown error");
    size_t bad = utf8_check((const unsigned char *)json, len);
    if (bad < len) {
        seterr(err, errlen, "tokenizer.json is not valid UTF-8 (byte %zu)", bad);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        /* On failure cJSON points end at the error (cJSON_GetErrorPtr is a global). */
        const char *at = end;
        size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0;
        seterr(err, errlen, "tokenizer.json is not valid JSON (near byte %zu)", off);
        return NULL;
    }
    while (end && end < json + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (!end || end != json + len) {
        seterr(err, errlen, "tokenizer.json has data after the JSON value");
        cJSON_Delete(root);
        return NULL;
    }
    struct tok *t = xcalloc(1, sizeof(*t));
    buf_init(&t->arena);
    struct loader L = { .t = t, .err = err, .errlen = errlen };
    bytes_to_unicode(t->b2c);
    if (parse_root(&L, root) < 0)
        goto fail;
    cJSON_Delete(root);
    root = NULL;

    /* The arena no longer grows except for the decoded strings: build those as offsets. */
    int16_t c2b[512];
    for (int c = 0; c < 512; c++)
        c2b[c] = -1;
    for (int b = 0; b < 256; b++)
        c2b[t->b2c[b]] = (int16_t)b;
    L.dec_off = xcalloc((size_t)t->n_ids, sizeof(size_t));
    t->id_declen = xcalloc((size_t)t->n_ids, sizeof(uint32_t));
    for (int32_t id = 0; id < t->n_ids && t->dec_mode == 0; id++) {
        if (!L.str_off[id])
            continue;
        struct buf tmp;
        buf_init(&tmp);
        decode_token_bytes(c2b, t->arena.data + L.str_off[id] - 1, t->id_len[id], &tmp);
        L.dec_off[id] = arena_add(&t->arena, tmp.data ? tmp.data : "", tmp.len);
        t->id_declen[id] = (uint32_t)tmp.len;
        buf_release(&tmp);
    }
    t->id_str = xcalloc((size_t)t->n_ids, sizeof(char *));
    t->id_dec = xcalloc((size_t)t->n_ids, sizeof(char *));
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (!L.str_off[id])
            continue;
        t->id_str[id] = t->arena.data + L.str_off[id] - 1;
        t->id_dec[id] = t->dec_mode == 0 ? t->arena.data + L.dec_off[id] : NULL;
    }
    for (int k = 0; k < t->n_added; k++)
        t->added[k].content = t->arena.data + t->added[k].off;
    index_added(t);

    /* The one-character tokens of the 256 bytes, and their <0xXX> fallback tokens. */
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n = utf8_enc(t->b2c[b], s);
        t->byte_id[b] = vocab_find(t, s, n);
        snprintf(s, sizeof(s), "<0x%02X>", b);
        t->fb_id[b] = t->byte_fallback ? vocab_find(t, s, 6) : -1;
    }
    if (t->model == MODEL_UNIGRAM)
        build_prefixes(t);
    if (t->model == MODEL_BPE && !t->byte_level)
        build_bigrams(t);
    free(L.str_off);
    free(L.dec_off);
    return t;

fail:
    cJSON_Delete(root);
    free(L.str_off);
    free(L.dec_off);
    tok_free(t);
    return NULL;
}

struct tok *tok_load_buf(const char *json, size_t len, char **err)
{
    char msg[ERR_MAX] = "";
    struct tok *t = load_buf(json, len, msg, sizeof(msg));
    if (!t && err)
        *err = xstrdup(msg);
    return t;
}

struct tok *tok_load(const char *path, char **err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = file_read_all(path, &data, &len);
    if (rc < 0) {
        if (err)
            *err = xasprintf("cannot read tokenizer '%s': %s", path, strerror(-rc));
        return NULL;
    }
    char msg[ERR_MAX] = "";
    struct tok *t = load_buf(data, len, msg, sizeof(msg));
    if (!t && err)
        *err = xasprintf("%s: %s", path, msg);
    free(data);
    return t;
}

/* ============================================================================================
 * BPE
 * ========================================================================================== */

struct sym {
    int32_t c;
    int32_t prev, next; /* -1 none */
    uint32_t len;       /* bytes; 0 once merged into its left neighbour */
};

struct hent {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
};

/* Output ids and the reusable scratch of one encode call. */
struct enc {
    const struct tok *t;
    int32_t *ids;
    size_t n, cap;
    struct sym *sym;
    size_t sym_cap;
    struct hent *heap;
    size_t heap_cap;
    char *tmp; /* prefix-space copy of a piece */
    size_t tmp_cap;
    struct buf bl; /* byte-level string of a word (ignore_merges) */
    /* Word cache: key bytes and id lists in two arenas, open addressing on top. */
    struct cslot {
        uint64_t h;
        uint32_t koff, klen, ioff, nids;
    } * slots;
    size_t slot_mask, used;
    struct buf keys;
    int32_t *cids;
    size_t cn, ccap;
    tok_piece_fn fn; /* tok_pretokenize: pieces go here instead of BPE */
    void *fn_arg;
    char *err;
    size_t errlen;
    const char *text;         /* the whole input (Metaspace's "first" piece starts there) */
    struct buf norm, norm2;   /* normalized text of the current pass-0 chunk, and a spare */
    bool norm_first;          /* that chunk starts the input */
    struct buf ms[MAX_STEPS]; /* Metaspace output of step k */
    double *best;             /* Unigram Viterbi: [n + 1] best score ending at each byte */
    int32_t *from, *bid;      /* start and id of that best last piece, -1 none */
    size_t best_cap;
    bool chunking; /* inside bpe_chunked: a long chunk goes to BPE whole */
};

static void push_id(struct enc *e, int32_t id)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 1024;
        e->ids = xrealloc(e->ids, e->cap * sizeof(int32_t));
    }
    e->ids[e->n++] = id;
}

static bool hent_less(const struct hent *a, const struct hent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct enc *e, size_t *hn, struct hent h)
{
    if (*hn == e->heap_cap) {
        e->heap_cap = e->heap_cap ? e->heap_cap * 2 : 64;
        e->heap = xrealloc(e->heap, e->heap_cap * sizeof(*e->heap));
    }
    size_t i = (*hn)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&h, &e->heap[p]))
            break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = h;
}

static struct hent heap_pop(struct enc *e, size_t *hn)
{
    struct hent top = e->heap[0];
    struct hent last = e->heap[--(*hn)];
    size_t i = 0, n = *hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct hent *best = &last;
        if (l < n && hent_less(&e->heap[l], best)) {
            m = l;
            best = &e->heap[l];
        }
        if (r < n && hent_less(&e->heap[r], best))
            m = r;
        if (m == i)
            break;
        e->heap[i] = e->heap[m];
        i = m;
    }
    if (n > 0)
        e->heap[i] = last;
    return top;
}

static void try_push_pair(struct enc *e, size_t *hn, int32_t pos)
{
    const struct sym *s = &e->sym[pos];
    if (s->next < 0)
        return;
    const struct merge_slot *m = merge_find(e->t, s->c, e->sym[s->next].c);
    if (m)
        heap_push(e, hn, (struct hent){ m->rank, (uint32_t)pos, m->new_id });
}

/* BPE of one piece (raw bytes), appending its ids to e; the algorithm of word.rs merge_all. */
static int bpe_merge(struct enc *e, const unsigned char *w, size_t n);

static int bpe_word(struct enc *e, const unsigned char *w, size_t n)
{
    const struct tok *t = e->t;
    if (t->ignore_merges) {
        e->bl.len = 0;
        for (size_t i = 0; i < n && t->byte_level; i++) {
            char s[4];
            buf_append(&e->bl, s, utf8_enc(t->b2c[w[i]], s));
        }
        int32_t id = t->byte_level ? vocab_find(t, e->bl.data, e->bl.len)
                                   : vocab_find(t, (const char *)w, n);
        if (id >= 0) {
            push_id(e, id);
            return 0;
        }
    }
    return bpe_merge(e, w, n);
}

/* The merges of word.rs on the symbols of one piece (or of an independent chunk of one). */
static int bpe_merge(struct enc *e, const unsigned char *w, size_t n)
{
    const struct tok *t = e->t;
    if (2 * n > e->sym_cap) { /* a byte gives at most two byte-fallback symbols */
        e->sym_cap = 2 * n < 64 ? 64 : 2 * n;
        e->sym = xrealloc(e->sym, e->sym_cap * sizeof(*e->sym));
    }
    /* The symbols, as BPE::merge_word builds them: one per character (a byte of the piece when
     * byte-level), an unknown character as its <0xXX> tokens (byte_fallback, all of them
     * present), else dropped (no unk_token) or an unk symbol (fused if fuse_unk). A pending unk
     * is not flushed by byte-fallback symbols, as in the library. */
    int32_t ns = 0;
    uint32_t unk_len = 0; /* bytes of the pending unk symbol, 0 when none */
    size_t cl = 1;        /* bytes of the character at i */
    for (size_t i = 0; i <= n; i += cl) {
        int32_t id = -1;
        cl = 1;
        if (i < n && t->byte_level) {
            id = t->byte_id[w[i]];
        } else if (i < n) {
            utf8_dec(w, i, &cl);
            id = vocab_find(t, (const char *)w + i, cl);
        }
        if (i < n && id < 0 && t->byte_fallback) {
            char bl[4];
            const unsigned char *u = w + i;
            size_t ul = cl;
            if (t->byte_level) { /* the byte-level character's own UTF-8 */
                ul = utf8_enc(t->b2c[w[i]], bl);
                u = (const unsigned char *)bl;
            }
            size_t k = 0;
            while (k < ul && t->fb_id[u[k]] >= 0)
                k++;
            if (k == ul) {
                if ((size_t)ns + ul > e->sym_cap) {
                    e->sym_cap = (ns + ul) * 2;
                    e->sym = xrealloc(e->sym, e->sym_cap * sizeof(*e->sym));
                }
                for (k = 0; k < ul; k++, ns++)
                    e->sym[ns] = (struct sym){ t->fb_id[u[k]], ns - 1, ns + 1, 1 };
                continue;
            }
        }
        if (i < n && id < 0) {
            if (t->unk_id == -1)
                continue;
            if (t->unk_id == -2) {
                seterr(e->err, e->errlen,
                       "byte 0x%02x has no token and unk_token '%s' is not in the vocabulary", w[i],
                       t->unk_name);
                return -1;
            }
            if (unk_len && t->fuse_unk) {
                unk_len += (uint32_t)cl;
                continue;
            }
        }
        if (unk_len) { /* flush the pending unk before a known symbol, a new unk or the end */
            e->sym[ns] = (struct sym){ t->unk_id, ns - 1, ns + 1, unk_len };
            ns++;
            unk_len = 0;
        }
        if (i == n)
            break;
        if (id < 0) {
            unk_len = (uint32_t)cl;
            continue;
        }
        e->sym[ns] = (struct sym){ id, ns - 1, ns + 1, (uint32_t)cl };
        ns++;
    }
    if (ns > 0)
        e->sym[ns - 1].next = -1;

    size_t hn = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        try_push_pair(e, &hn, i);
    while (hn > 0) {
        struct hent top = heap_pop(e, &hn);
        struct sym *cur = &e->sym[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        int32_t next_pos = cur->next;
        struct sym right = e->sym[next_pos];
        const struct merge_slot *m = merge_find(t, cur->c, right.c);
        if (!m || m->new_id != top.new_id)
            continue; /* expired entry */
        cur->c = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        e->sym[next_pos].len = 0;
        if (right.next >= 0)
            e->sym[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0)
            try_push_pair(e, &hn, cur->prev);
        try_push_pair(e, &hn, (int32_t)top.pos);
    }
    for (int32_t i = 0; i < ns; i++)
        if (e->sym[i].len)
            push_id(e, e->sym[i].c);
    return 0;
}

/* Pushes the id of one Unigram piece (Model::tokenize): its vocabulary id, else its <0xXX>
 * tokens (byte_fallback, all present), else unk. */
static int unigram_push(struct enc *e, const char *p, size_t n)
{
    const struct tok *t = e->t;
    int32_t id = vocab_find(t, p, n);
    if (id >= 0 && id < t->n_vocab) {
        push_id(e, id);
        return 0;
    }
    if (t->byte_fallback) {
        size_t k = 0;
        while (k < n && t->fb_id[(unsigned char)p[k]] >= 0)
            k++;
        if (k == n) {
            for (k = 0; k < n; k++)
                push_id(e, t->fb_id[(unsigned char)p[k]]);
            return 0;
        }
    }
    if (t->unk_id < 0) {
        seterr(e->err, e->errlen, "an unknown character needs model.unk_id, which is null");
        return -1;
    }
    push_id(e, t->unk_id);
    return 0;
}

/*
 * Unigram of one piece: the Viterbi search of unigram/model.rs encode_optimized. For every
 * character start (left to right), every piece that matches there (shorter first) offers
 * best[start] + score to best[end], taken only when strictly better; a character no piece of
 * its exact length covers offers unk at min_score - 10. Then the best path is read back,
 * adjacent unk pieces fused into one string.
 */
static int unigram_word(struct enc *e, const unsigned char *w0, size_t n0)
{
    const struct tok *t = e->t;
    const char *w = (const char *)w0;
    size_t n = n0;
    if (t->byte_level) { /* the model sees the byte-level string */
        e->bl.len = 0;
        for (size_t i = 0; i < n0; i++) {
            char s[4];
            buf_append(&e->bl, s, utf8_enc(t->b2c[w0[i]], s));
        }
        w = e->bl.data;
        n = e->bl.len;
    }
    if (n + 1 > e->best_cap) {
        e->best_cap = (n + 1) * 2;
        e->best = xrealloc(e->best, e->best_cap * sizeof(double));
        e->from = xrealloc(e->from, e->best_cap * sizeof(int32_t));
        e->bid = xrealloc(e->bid, e->best_cap * sizeof(int32_t));
    }
    for (size_t i = 0; i <= n; i++) {
        e->best[i] = 0;
        e->from[i] = -1;
        e->bid[i] = 0;
    }
    const double unk_score = t->min_score - 10.0;
    const unsigned char *u = (const unsigned char *)w;
    for (size_t i = 0; i < n;) {
        size_t cl;
        utf8_dec(u, i, &cl);
        double here = e->best[i];
        bool single = false;
        uint64_t h = FNV_INIT;
        for (size_t k = 1; i + k <= n; k++) {
            h = fnv_step(h, u[i + k - 1]);
            const struct pfx_slot *p = pfx_find(t, h, w + i, (uint32_t)k);
            if (!p)
                break;
            if (p->id < 0)
                continue;
            double cand = t->score[p->id] + here;
            if (e->from[i + k] < 0 || cand > e->best[i + k]) {
                e->best[i + k] = cand;
                e->from[i + k] = (int32_t)i;
                e->bid[i + k] = p->id;
            }
            if (k == cl)
                single = true;
        }
        if (!single) {
            if (t->unk_id < 0) {
                seterr(e->err, e->errlen,
                       "a character has no piece and model.unk_id is null (byte %zu of a piece)",
                       i);
                return -1;
            }
            double cand = unk_score + here;
            if (e->from[i + cl] < 0 || cand > e->best[i + cl]) {
                e->best[i + cl] = cand;
                e->from[i + cl] = (int32_t)i;
                e->bid[i + cl] = t->unk_id;
            }
        }
        i += cl;
    }
    /* Back from the end: the piece boundaries, in reverse (kept in from[] as a chain). */
    size_t end = n, npieces = 0;
    while (end > 0) {
        npieces++;
        end = (size_t)e->from[end];
    }
    /* Walk forwards by collecting the ends first. */
    size_t *ends = xmalloc((npieces + 1) * sizeof(size_t));
    end = n;
    for (size_t k = npieces; k > 0; k--) {
        ends[k] = end;
        end = (size_t)e->from[end];
    }
    ends[0] = 0;
    int rc = 0;
    for (size_t k = 1; k <= npieces && rc == 0; k++) {
        size_t a = ends[k - 1], b = ends[k];
        if (e->bid[b] == t->unk_id) { /* fuse the run of unk pieces */
            while (k < npieces && e->bid[ends[k + 1]] == t->unk_id)
                b = ends[++k];
        }
        rc = unigram_push(e, w + a, b - a);
    }
    free(ends);
    return rc;
}

static int model_word(struct enc *e, const unsigned char *w, size_t n)
{
    return e->t->model == MODEL_UNIGRAM ? unigram_word(e, w, n) : bpe_word(e, w, n);
}

static void cache_grow(struct enc *e)
{
    size_t cap = e->slots ? (e->slot_mask + 1) * 2 : 4096;
    struct cslot *ns = xcalloc(cap, sizeof(*ns));
    if (e->slots) {
        for (size_t i = 0; i <= e->slot_mask; i++) {
            if (!e->slots[i].klen)
                continue;
            size_t j = e->slots[i].h & (cap - 1);
            while (ns[j].klen)
                j = (j + 1) & (cap - 1);
            ns[j] = e->slots[i];
        }
        free(e->slots);
    }
    e->slots = ns;
    e->slot_mask = cap - 1;
}

/* BPE of a piece through the per-call cache. */
static int bpe_cached(struct enc *e, const unsigned char *w, size_t n);

static bool bigram_has(const struct tok *t, uint32_t a, uint32_t b)
{
    uint64_t key = ((uint64_t)a << 21 | b) + 1;
    size_t i = hash_u64(key) & t->bigram_mask;
    while (t->bigram[i]) {
        if (t->bigram[i] == key)
            return true;
        i = (i + 1) & t->bigram_mask;
    }
    return false;
}

/*
 * A long piece of a character-level BPE (SentencePiece-style without a splitting pre-tokenizer,
 * where the whole text is one piece): cut it where no merge can ever join across, and run BPE
 * on the chunks (through the cache). A merge result is a vocabulary token, so nothing joins two
 * adjacent characters unless some token contains them side by side; both must also be tokens
 * themselves (no byte fallback or unk run there). Merges on the two sides never interact, so
 * the ids are the same as for the whole piece.
 */
static int bpe_chunked(struct enc *e, const unsigned char *w, size_t n)
{
    const struct tok *t = e->t;
    if (t->ignore_merges) { /* only the whole piece may be looked up */
        int32_t id = vocab_find(t, (const char *)w, n);
        if (id >= 0) {
            push_id(e, id);
            return 0;
        }
    }
    size_t start = 0, l;
    uint32_t prev = utf8_dec(w, 0, &l);
    bool prev_ok = vocab_find(t, (const char *)w, l) >= 0;
    for (size_t i = l; i < n; i += l) {
        uint32_t cp = utf8_dec(w, i, &l);
        bool ok = vocab_find(t, (const char *)w + i, l) >= 0;
        if (prev_ok && ok && !bigram_has(t, prev, cp)) {
            int rc = t->ignore_merges ? bpe_merge(e, w + start, i - start)
                                      : bpe_cached(e, w + start, i - start);
            if (rc < 0)
                return rc;
            start = i;
        }
        prev = cp;
        prev_ok = ok;
    }
    return t->ignore_merges ? bpe_merge(e, w + start, n - start)
                            : bpe_cached(e, w + start, n - start);
}

static int bpe_cached(struct enc *e, const unsigned char *w, size_t n)
{
    if (n >= CACHE_MAX_KEY && e->t->bigram && !e->chunking) {
        e->chunking = true;
        int rc = bpe_chunked(e, w, n);
        e->chunking = false;
        return rc;
    }
    if (n >= CACHE_MAX_KEY)
        return model_word(e, w, n);
    if (!e->slots || e->used * 2 >= e->slot_mask + 1) {
        if (e->used >= CACHE_MAX_ENTRIES)
            return model_word(e, w, n);
        cache_grow(e);
    }
    uint64_t h = hash_bytes(w, n);
    size_t i = h & e->slot_mask;
    while (e->slots[i].klen) {
        struct cslot *s = &e->slots[i];
        if (s->h == h && s->klen == n && memcmp(e->keys.data + s->koff, w, n) == 0) {
            for (uint32_t k = 0; k < s->nids; k++)
                push_id(e, e->cids[s->ioff + k]);
            return 0;
        }
        i = (i + 1) & e->slot_mask;
    }
    size_t before = e->n;
    if (model_word(e, w, n) < 0)
        return -1;
    size_t nids = e->n - before;
    if (e->cn + nids > e->ccap) {
        e->ccap = (e->cn + nids) * 2;
        e->cids = xrealloc(e->cids, e->ccap * sizeof(int32_t));
    }
    memcpy(e->cids + e->cn, e->ids + before, nids * sizeof(int32_t));
    struct cslot s = { h, (uint32_t)e->keys.len, (uint32_t)n, (uint32_t)e->cn, (uint32_t)nids };
    buf_append(&e->keys, w, n);
    e->cn += nids;
    e->slots[i] = s;
    e->used++;
    return 0;
}

/* ============================================================================================
 * Encode pipeline
 * ========================================================================================== */

static int emit_piece(struct enc *e, const char *s, size_t n, int32_t added_id)
{
    if (e->fn)
        return e->fn(e->fn_arg, s, n, added_id);
    if (added_id >= 0) {
        push_id(e, added_id);
        return 0;
    }
    return bpe_cached(e, (const unsigned char *)s, n);
}

static int pretok(struct enc *e, int k, const char *s, size_t n);
static int metaspace(struct enc *e, int k, const char *s, size_t n);

/* Splits s with pattern p and hands the pieces to step k (matches dropped when removed). */
static int split_with(struct enc *e, int k, const struct pat *p, bool removed, const char *s,
                      size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, gap = 0;
    while (i < n) {
        size_t end = pat_match(p, u, n, i);
        if (end == i) { /* no match here: the character joins the current gap */
            size_t l;
            utf8_dec(u, i, &l);
            i += l;
            continue;
        }
        int rc;
        if (gap < i && (rc = pretok(e, k, s + gap, i - gap)) != 0)
            return rc;
        if (!removed && (rc = pretok(e, k, s + i, end - i)) != 0)
            return rc;
        i = gap = end;
    }
    return gap < n ? pretok(e, k, s + gap, n - gap) : 0;
}

/*
 * Metaspace (step k): every space becomes the replacement character, which is also put in
 * front when the scheme says so and the piece does not already start with it ("first": only
 * the piece that starts the input), then with split the piece is cut before every replacement
 * character (MergedWithNext).
 */
static int metaspace(struct enc *e, int k, const char *s, size_t n)
{
    const struct step *st = &e->t->steps[k];
    struct buf *b = &e->ms[k];
    b->len = 0;
    bool first = s == e->text || (e->norm_first && e->norm.data && s == e->norm.data);
    bool starts = s[0] == ' ' || (n >= st->repl_len && memcmp(s, st->repl, st->repl_len) == 0);
    if (!starts && (st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && first)))
        buf_append(b, st->repl, st->repl_len);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != ' ')
            continue;
        if (i > run)
            buf_append(b, s + run, i - run);
        buf_append(b, st->repl, st->repl_len);
        run = i + 1;
    }
    if (n > run)
        buf_append(b, s + run, n - run);
    if (!st->split)
        return pretok(e, k + 1, b->data, b->len);
    const char *m = b->data;
    size_t mn = b->len, start = 0;
    for (size_t i = 1; i + st->repl_len <= mn; i++) {
        if (memcmp(m + i, st->repl, st->repl_len) != 0)
            continue;
        int rc = pretok(e, k + 1, m + start, i - start);
        if (rc != 0)
            return rc;
        start = i;
        i += st->repl_len - 1;
    }
    return pretok(e, k + 1, m + start, mn - start);
}

/* Runs pre-tokenizer step k (and the ones after it) on the piece s; pieces that come out of
 * the last step go to the model. Empty pieces are dropped, as in PreTokenizedString::split. */
static int pretok(struct enc *e, int k, const char *s, size_t n)
{
    const struct tok *t = e->t;
    if (n == 0)
        return 0;
    if (k == t->n_steps)
        return emit_piece(e, s, n, -1);
    const struct step *st = &t->steps[k];
    if (st->kind == STEP_SPLIT)
        return split_with(e, k + 1, &st->pat, st->removed, s, n);
    if (st->kind == STEP_METASPACE)
        return metaspace(e, k, s, n);
    /* ByteLevel, always the last step. */
    if (st->add_prefix_space && s[0] != ' ') {
        if (n + 1 > e->tmp_cap) {
            e->tmp_cap = (n + 1) * 2;
            e->tmp = xrealloc(e->tmp, e->tmp_cap);
        }
        e->tmp[0] = ' ';
        memcpy(e->tmp + 1, s, n);
        s = e->tmp;
        n++;
    }
    if (st->use_regex)
        return split_with(e, k + 1, &gpt2_pattern, false, s, n);
    return pretok(e, k + 1, s, n);
}

/* Does a code point count as \w (Rust regex) for single_word? */
static bool word_before(const char *s, size_t start)
{
    if (start == 0)
        return false;
    size_t l;
    size_t p = utf8_prev((const unsigned char *)s, start);
    return utab_class(utf8_dec((const unsigned char *)s, p, &l)) & UTAB_W;
}

static bool word_after(const char *s, size_t n, size_t stop)
{
    if (stop >= n)
        return false;
    size_t l;
    return utab_class(utf8_dec((const unsigned char *)s, stop, &l)) & UTAB_W;
}

static int after_added(struct enc *e, int pass, const char *s, size_t n);

/* Leftmost-longest search for the added tokens of a pass in s[pos..n): the first position
 * where one matches, and the longest one there (buckets are sorted longest first). */
static const struct added *find_added(const struct tok *t, int pass, const char *s, size_t n,
                                      size_t pos, size_t *at)
{
    const unsigned char *u = (const unsigned char *)s;
    const int *ord = t->order[pass];
    const int *bk = t->bucket[pass];
    for (size_t q = pos; q < n; q++) {
        for (int k = bk[u[q]]; k < bk[u[q] + 1]; k++) {
            const struct added *a = &t->added[ord[k]];
            if (a->len <= n - q && memcmp(s + q, a->content, a->len) == 0) {
                *at = q;
                return a;
            }
        }
    }
    return NULL;
}

/* Cuts the added tokens of one pass out of s (AddedVocabulary::find_matches) and passes the
 * text in between on. */
static int split_added(struct enc *e, int pass, const char *s, size_t n)
{
    const struct tok *t = e->t;
    const unsigned char *u = (const unsigned char *)s;
    size_t start_offset = 0, pos = 0;
    int rc;
    if (t->bucket[pass][256] == 0)
        return after_added(e, pass, s, n);
    while (pos < n) {
        /* Leftmost-longest: the first position where some token matches, longest there. */
        size_t q;
        const struct added *hit = find_added(t, pass, s, n, pos, &q);
        if (!hit)
            break;
        size_t start = q, stop = start + hit->len;
        pos = stop; /* the search resumes after the match, even when it is discarded */
        if (hit->single_word && (word_before(s, start) || word_after(s, n, stop)))
            continue;
        if (hit->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t p = utf8_prev(u, ns), l;
                if (!(utab_class(utf8_dec(u, p, &l)) & UTAB_WS))
                    break;
                ns = p;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (hit->rstrip) {
            while (stop < n) {
                size_t l;
                if (!(utab_class(utf8_dec(u, stop, &l)) & UTAB_WS))
                    break;
                stop += l;
            }
        }
        if (start_offset < start &&
            (rc = after_added(e, pass, s + start_offset, start - start_offset)) != 0)
            return rc;
        if (start > stop)
            start = stop;
        if ((rc = emit_piece(e, s + start, stop - start, hit->id)) != 0)
            return rc;
        start_offset = stop;
    }
    if (start_offset < n)
        return after_added(e, pass, s + start_offset, n - start_offset);
    return 0;
}

/* The UAX #15 NFC quick check; 0 when it answers YES (NFC would not change s). */
static int nfc_check(struct enc *e, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned last = 0;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80) {
            last = 0;
            i++;
            continue;
        }
        size_t l;
        uint32_t cp = utf8_dec(u, i, &l);
        unsigned qc, ccc;
        utab_nfc(cp, &qc, &ccc);
        if ((ccc != 0 && last > ccc) || qc != UTAB_NFC_YES) {
            seterr(e->err, e->errlen,
                   "text is not provably NFC at U+%04X (byte %zu); the NFC normalizer is only "
                   "supported on text it leaves unchanged",
                   (unsigned)cp, i);
            return -1;
        }
        last = ccc;
        i += l;
    }
    return 0;
}

/* Text left over by pass 0 is normalized and goes to pass 1; text left by pass 1 is
 * pre-tokenized. */
static int after_added(struct enc *e, int pass, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (pass == 0) {
        const struct tok *t = e->t;
        if (!t->norm_copy) {
            if (t->nfc && nfc_check(e, s, n) < 0)
                return -1;
            return split_added(e, 1, s, n);
        }
        /* The normalizers in order, into e->norm (e->norm2 is the spare of Replace). */
        e->norm.len = 0;
        buf_append(&e->norm, s, n);
        for (int k = 0; k < t->n_norms; k++) {
            const struct norm *nm = &t->norms[k];
            struct buf *a = &e->norm;
            if (nm->kind == NORM_NFC) {
                if (nfc_check(e, a->data, a->len) < 0)
                    return -1;
            } else if (nm->kind == NORM_PREPEND) {
                if (a->len > 0) {
                    e->norm2.len = 0;
                    buf_append(&e->norm2, nm->a, nm->alen);
                    buf_append(&e->norm2, a->data, a->len);
                    struct buf tmp = e->norm;
                    e->norm = e->norm2;
                    e->norm2 = tmp;
                }
            } else {
                struct buf *o = &e->norm2;
                o->len = 0;
                size_t run = 0;
                for (size_t i = 0; i + nm->alen <= a->len;) {
                    if (memcmp(a->data + i, nm->a, nm->alen) == 0) {
                        buf_append(o, a->data + run, i - run);
                        buf_append(o, nm->b, nm->blen);
                        i += nm->alen;
                        run = i;
                    } else {
                        i++;
                    }
                }
                buf_append(o, a->data + run, a->len - run);
                struct buf tmp = e->norm;
                e->norm = e->norm2;
                e->norm2 = tmp;
            }
        }
        e->norm_first = s == e->text;
        if (e->norm.len == 0)
            return 0;
        return split_added(e, 1, e->norm.data, e->norm.len);
    }
    return pretok(e, 0, s, n);
}

static void enc_release(struct enc *e)
{
    buf_release(&e->norm);
    buf_release(&e->norm2);
    for (int k = 0; k < MAX_STEPS; k++)
        buf_release(&e->ms[k]);
    free(e->best);
    free(e->from);
    free(e->bid);
    free(e->ids);
    free(e->sym);
    free(e->heap);
    free(e->tmp);
    buf_release(&e->bl);
    free(e->slots);
    buf_release(&e->keys);
    free(e->cids);
}

static int run_pipeline(struct enc *e, const char *text, size_t len)
{
    if (len > (size_t)INT_MAX / 2) {
        seterr(e->err, e->errlen, "text of %zu bytes is too long to encode", len);
        return -1;
    }
    if (len && !text) {
        seterr(e->err, e->errlen, "text is NULL");
        return -1;
    }
    size_t bad = utf8_check((const unsigned char *)text, len);
    if (bad < len) {
        seterr(e->err, e->errlen, "text is not valid UTF-8 (byte %zu)", bad);
        return -1;
    }
    if (len == 0)
        return 0;
    e->text = text;
    return split_added(e, 0, text, len);
}

int tok_encode(const struct tok *t, const char *text, size_t len, int32_t **ids, char *err,
               size_t errlen)
{
    struct enc e = { .t = t, .err = err, .errlen = errlen };
    buf_init(&e.bl);
    buf_init(&e.keys);
    *ids = NULL;
    int rc = run_pipeline(&e, text, len);
    if (rc != 0 || e.n > (size_t)INT_MAX) {
        if (rc == 0)
            seterr(err, errlen, "too many tokens");
        enc_release(&e);
        return -1;
    }
    int count = (int)e.n;
    *ids = e.ids;
    e.ids = NULL;
    enc_release(&e);
    return count;
}

int tok_pretokenize(const struct tok *t, const char *text, size_t len, tok_piece_fn fn, void *arg,
                    char **err)
{
    char msg[ERR_MAX] = "";
    struct enc e = { .t = t, .fn = fn, .fn_arg = arg, .err = msg, .errlen = sizeof(msg) };
    buf_init(&e.bl);
    buf_init(&e.keys);
    int rc = run_pipeline(&e, text, len);
    enc_release(&e);
    if (rc == -1 && msg[0] && err) /* not when fn returned -1 */
        *err = xstrdup(msg);
    return rc;
}

/* ============================================================================================
 * Decode and lookups
 * ========================================================================================== */

/* A list of token strings for the decoders: bytes in one buffer, offsets beside. */
struct tlist {
    struct buf s;
    size_t *off, *len;
    size_t n, cap;
};

static void tl_push(struct tlist *l, const char *p, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->off = xrealloc(l->off, l->cap * sizeof(size_t));
        l->len = xrealloc(l->len, l->cap * sizeof(size_t));
    }
    l->off[l->n] = l->s.len;
    l->len[l->n] = n;
    buf_append(&l->s, p, n);
    l->n++;
}

static void tl_release(struct tlist *l)
{
    buf_release(&l->s);
    free(l->off);
    free(l->len);
    memset(l, 0, sizeof(*l));
}

/* Ends a token whose bytes were appended to l->s from offset start on. */
static void tl_end(struct tlist *l, size_t start)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->off = xrealloc(l->off, l->cap * sizeof(size_t));
        l->len = xrealloc(l->len, l->cap * sizeof(size_t));
    }
    l->off[l->n] = start;
    l->len[l->n] = l->s.len - start;
    l->n++;
}

/* The value of a <0xXX> token (u8::from_str_radix of its two characters), or -1. */
static int byte_token(const char *p, size_t n)
{
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = p[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (k == 3 && c == '+') /* Rust accepts a leading '+' */
            continue;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Flushes the pending bytes of ByteFallback: one string if valid UTF-8, else one U+FFFD per
 * byte. */
static void flush_bytes(struct tlist *o, struct buf *pend)
{
    if (pend->len == 0)
        return;
    if (utf8_check((const unsigned char *)pend->data, pend->len) == pend->len) {
        tl_push(o, pend->data, pend->len);
    } else {
        for (size_t k = 0; k < pend->len; k++)
            tl_push(o, "\xef\xbf\xbd", 3);
    }
    pend->len = 0;
}

/* One decoder of a Sequence (decode_chain): in -> out. */
static void dec_step(const struct dec *d, const struct tlist *in, struct tlist *o)
{
    if (d->kind == DEC_FUSE) { /* vec![tokens.join("")] */
        size_t start = o->s.len;
        for (size_t i = 0; i < in->n; i++)
            buf_append(&o->s, in->s.data + in->off[i], in->len[i]);
        tl_end(o, start);
        return;
    }
    struct buf pend;
    buf_init(&pend);
    for (size_t i = 0; i < in->n; i++) {
        const char *p = in->s.data + in->off[i];
        size_t n = in->len[i];
        if (d->kind == DEC_BYTEFALLBACK) {
            int v = byte_token(p, n);
            if (v >= 0) {
                unsigned char c = (unsigned char)v;
                buf_append(&pend, &c, 1);
                continue;
            }
            flush_bytes(o, &pend);
            tl_push(o, p, n);
        } else if (d->kind == DEC_STRIP) {
            /* strip.rs: up to start leading and up to stop trailing copies of the character
             * (counted in characters); the trailing cut never reaches into the leading one,
             * as in the library's later versions (0.23 panics there). */
            size_t a = 0, cut = 0, b = n;
            while (cut < d->start && a + d->alen <= n && memcmp(p + a, d->a, d->alen) == 0) {
                a += d->alen;
                cut++;
            }
            for (cut = 0;
                 cut < d->stop && b >= a + d->alen && memcmp(p + b - d->alen, d->a, d->alen) == 0;
                 cut++)
                b -= d->alen;
            size_t start = o->s.len;
            buf_append(&o->s, p + a, b - a);
            tl_end(o, start);
        } else if (d->kind == DEC_REPLACE) {
            size_t start = o->s.len, run = 0;
            for (size_t k = 0; k + d->alen <= n;) {
                if (memcmp(p + k, d->a, d->alen) == 0) {
                    buf_append(&o->s, p + run, k - run);
                    buf_append(&o->s, d->b, d->blen);
                    k += d->alen;
                    run = k;
                } else {
                    k++;
                }
            }
            buf_append(&o->s, p + run, n - run);
            tl_end(o, start);
        } else { /* METASPACE */
            size_t start = o->s.len, run = 0;
            for (size_t k = 0; k + d->alen <= n;) {
                if (memcmp(p + k, d->a, d->alen) == 0) {
                    buf_append(&o->s, p + run, k - run);
                    if (i != 0 || d->never)
                        buf_append(&o->s, " ", 1);
                    k += d->alen;
                    run = k;
                } else {
                    k++;
                }
            }
            buf_append(&o->s, p + run, n - run);
            tl_end(o, start);
        }
    }
    if (d->kind == DEC_BYTEFALLBACK)
        flush_bytes(o, &pend);
    buf_release(&pend);
}

/* Decoders other than ByteLevel: the token strings through the decs list (or joined by spaces
 * when there is no decoder), then concatenated. */
static char *decode_tokens(const struct tok *t, const int32_t *ids, size_t n, size_t *len)
{
    struct tlist a = { 0 }, b = { 0 };
    buf_init(&a.s);
    buf_init(&b.s);
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_str[id])
            continue;
        if (t->dec_mode == 2 && a.n > 0) /* no decoder: tokens.join(" ") */
            tl_push(&a, " ", 1);
        tl_push(&a, t->id_str[id], t->id_len[id]);
    }
    for (int k = 0; k < t->n_decs && t->dec_mode == 1; k++) {
        tl_release(&b);
        buf_init(&b.s);
        dec_step(&t->decs[k], &a, &b);
        struct tlist tmp = a;
        a = b;
        b = tmp;
    }
    tl_release(&b);
    size_t out_len = 0;
    for (size_t i = 0; i < a.n; i++)
        out_len += a.len[i];
    char *out = xmalloc(out_len + 1);
    size_t o = 0;
    for (size_t i = 0; i < a.n; i++) {
        memcpy(out + o, a.s.data + a.off[i], a.len[i]);
        o += a.len[i];
    }
    out[o] = 0;
    tl_release(&a);
    if (len)
        *len = o;
    return out;
}

char *tok_decode_n(const struct tok *t, const int32_t *ids, size_t n, size_t *len)
{
    if (t->dec_mode != 0)
        return decode_tokens(t, ids, n, len);
    struct buf raw, out;
    buf_init(&raw);
    buf_init(&out);
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->id_dec[id])
            continue;
        buf_append(&raw, t->id_dec[id], t->id_declen[id]);
    }
    /* String::from_utf8_lossy. */
    const unsigned char *u = (const unsigned char *)raw.data;
    size_t i = 0;
    while (i < raw.len) {
        size_t start = i;
        while (i < raw.len && u[i] < 0x80)
            i++;
        size_t bad = 0, l;
        while (i < raw.len && (l = utf8_seq(u, raw.len, i, &bad)) > 0)
            i += l;
        if (i > start)
            buf_append(&out, raw.data + start, i - start);
        if (i < raw.len && bad) {
            buf_append(&out, "\xef\xbf\xbd", 3);
            i += bad;
        }
    }
    buf_release(&raw);
    if (len)
        *len = out.len;
    return buf_steal(&out);
}

char *tok_decode(const struct tok *t, const int32_t *ids, size_t n)
{
    return tok_decode_n(t, ids, n, NULL);
}

int tok_vocab_size(const struct tok *t)
{
    return t->n_ids;
}

int tok_token_id(const struct tok *t, const char *token)
{
    size_t n = strlen(token);
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].len == n && memcmp(t->added[k].content, token, n) == 0)
            return t->added[k].id;
    return vocab_find(t, token, n);
}

const char *tok_id_token(const struct tok *t, int32_t id)
{
    if (id < 0 || id >= t->n_ids)
        return NULL;
    return t->id_str[id];
}
