/*
 * qa: items, prompts, normalization and scores of the question-answering eval (qa.h).
 */
#include "worker/evals/qa.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cJSON.h>

#include "worker/evals/mcqa_gen.h"

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- items ------------------------------------------------------------------------------- */

static int item_parse(void *arg, const cJSON *o, int line, char *msg, size_t msglen)
{
    struct qa_set *set = arg;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "context"),
                *q = cJSON_GetObjectItemCaseSensitive(o, "question"),
                *a = cJSON_GetObjectItemCaseSensitive(o, "answers"), *e;
    struct buf ctx;
    if (!cJSON_IsString(q)) {
        seterr(msg, msglen, "'question' must be a string");
        return -1;
    }
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) < 1) {
        seterr(msg, msglen, "'answers' must be a non-empty list of strings");
        return -1;
    }
    cJSON_ArrayForEach(e, a) if (!cJSON_IsString(e))
    {
        seterr(msg, msglen, "'answers' must be a non-empty list of strings");
        return -1;
    }
    buf_init(&ctx);
    if (cJSON_IsString(c)) {
        buf_puts(&ctx, c->valuestring);
    } else if (cJSON_IsArray(c)) {
        int k = 0;
        cJSON_ArrayForEach(e, c)
        {
            if (!cJSON_IsString(e)) {
                buf_release(&ctx);
                seterr(msg, msglen, "'context' must be a string or a list of strings");
                return -1;
            }
            buf_printf(&ctx, "%s%s", k++ ? "\n\n" : "", e->valuestring);
        }
    } else {
        seterr(msg, msglen, "'context' must be a string or a list of strings");
        return -1;
    }
    if (set->n % 64 == 0)
        set->items = xrealloc(set->items, sizeof(*set->items) * (size_t)(set->n + 64));
    struct qa_item *it = &set->items[set->n++];
    buf_puts(&ctx, "");
    it->context = buf_steal(&ctx);
    it->question = xstrdup(q->valuestring);
    it->nanswers = cJSON_GetArraySize(a);
    it->answers = xmalloc(sizeof(char *) * (size_t)it->nanswers);
    int k = 0;
    cJSON_ArrayForEach(e, a) it->answers[k++] = xstrdup(e->valuestring);
    it->line = line;
    return 0;
}

int qa_load(const char *path, int limit, struct qa_set *set, char *err, size_t errlen)
{
    memset(set, 0, sizeof(*set));
    return evgen_jsonl(path, limit, item_parse, set, err, errlen) < 0 ? -EINVAL : 0;
}

void qa_release(struct qa_set *set)
{
    for (int i = 0; i < set->n; i++) {
        free(set->items[i].context);
        free(set->items[i].question);
        for (int k = 0; k < set->items[i].nanswers; k++)
            free(set->items[i].answers[k]);
        free(set->items[i].answers);
    }
    free(set->items);
    memset(set, 0, sizeof(*set));
}

void qa_prompt(const char *tmpl, const char *context, const char *question, struct buf *out)
{
    const char *keys[2] = { "context", "question" }, *vals[2] = { context, question };
    evgen_fill(tmpl, keys, vals, 2, out);
}

/* ---- normalization ----------------------------------------------------------------------- */

/* One UTF-8 character at s: its code point (invalid bytes: the byte itself) and length. */
static uint32_t utf8_next(const unsigned char *s, int *len)
{
    int n = s[0] < 0x80             ? 1
            : (s[0] & 0xe0) == 0xc0 ? 2
            : (s[0] & 0xf0) == 0xe0 ? 3
            : (s[0] & 0xf8) == 0xf0 ? 4
                                    : 0;
    uint32_t c = n == 1 ? s[0] : n == 2 ? s[0] & 0x1fu : n == 3 ? s[0] & 0x0fu : s[0] & 0x07u;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            n = 0;
            break;
        }
        c = (c << 6) | (s[i] & 0x3fu);
    }
    if (n == 0) {
        *len = 1;
        return s[0];
    }
    *len = n;
    return c;
}

static int is_punct(uint32_t c)
{
    static const uint32_t uni[] = {
        0x00a1, 0x00a7, 0x00ab, 0x00b6, 0x00b7, 0x00bb, 0x00bf, 0x2010, 0x2011, 0x2012,
        0x2013, 0x2014, 0x2015, 0x2018, 0x2019, 0x201a, 0x201c, 0x201d, 0x201e, 0x2020,
        0x2021, 0x2022, 0x2026, 0x2030, 0x2032, 0x2033, 0x203b, 0x3001, 0x3002, 0x3003,
        0x3008, 0x3009, 0x300a, 0x300b, 0x300c, 0x300d, 0x300e, 0x300f, 0x3010, 0x3011,
        0x3014, 0x3015, 0x301c, 0x30fb, 0xff01, 0xff02, 0xff03, 0xff05, 0xff06, 0xff07,
        0xff08, 0xff09, 0xff0a, 0xff0c, 0xff0d, 0xff0e, 0xff0f, 0xff1a, 0xff1b, 0xff1f,
        0xff20, 0xff3b, 0xff3c, 0xff3d, 0xff3f, 0xff5b, 0xff5d, 0xff5e,
    };
    if (c < 0x80)
        return c > 0x20 && c < 0x7f && strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", (int)c);
    for (size_t i = 0; i < sizeof(uni) / sizeof(uni[0]); i++)
        if (uni[i] == c)
            return 1;
    return 0;
}

static int is_space(uint32_t c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || c == 0xa0 || c == 0x3000;
}

static int is_hangul(uint32_t c)
{
    return (c >= 0xac00 && c <= 0xd7a3) || (c >= 0x1100 && c <= 0x11ff) ||
           (c >= 0x3130 && c <= 0x318f);
}

char *qa_normalize(const char *s)
{
    struct buf a, out;
    int hangul = 0, len;
    buf_init(&a);
    buf_init(&out);
    /* Lowercase, drop punctuation, spaces to ' '. */
    for (const unsigned char *p = (const unsigned char *)s; *p; p += len) {
        uint32_t c = utf8_next(p, &len);
        hangul |= is_hangul(c);
        if (is_punct(c))
            continue;
        if (is_space(c))
            buf_append(&a, " ", 1);
        else if (c >= 'A' && c <= 'Z') {
            char l = (char)(c - 'A' + 'a');
            buf_append(&a, &l, 1);
        } else
            buf_append(&a, p, (size_t)len);
    }
    buf_puts(&a, "");
    /* Split on spaces, drop articles (no Hangul), join with one space. */
    char *save = NULL;
    for (char *w = strtok_r(a.data, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (!hangul && (!strcmp(w, "a") || !strcmp(w, "an") || !strcmp(w, "the")))
            continue;
        buf_printf(&out, "%s%s", out.len ? " " : "", w);
    }
    buf_puts(&out, "");
    buf_release(&a);
    return buf_steal(&out);
}

double qa_exact(const char *pred, const char *gold)
{
    char *p = qa_normalize(pred), *g = qa_normalize(gold);
    double r = strcmp(p, g) == 0;
    free(p);
    free(g);
    return r;
}

/* Pieces of a normalized string: words (chars = 0) or characters without spaces (chars = 1). */
static int pieces(char *s, int chars, char ***out)
{
    int n = 0, cap = 16, len;
    char **v = xmalloc(sizeof(char *) * (size_t)cap);
    for (char *p = s; *p;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        char *e = p;
        if (chars)
            utf8_next((unsigned char *)p, &len), e = p + len;
        else
            while (*e && *e != ' ')
                e++;
        if (n == cap)
            v = xrealloc(v, sizeof(char *) * (size_t)(cap *= 2));
        v[n++] = xasprintf("%.*s", (int)(e - p), p);
        p = e;
    }
    *out = v;
    return n;
}

static double f1_of(const char *pred, const char *gold, int chars)
{
    char *p = qa_normalize(pred), *g = qa_normalize(gold), **pv, **gv;
    int np = pieces(p, chars, &pv), ng = pieces(g, chars, &gv), common = 0;
    double r;
    /* Multiset intersection (Counter & Counter). */
    char *used = xcalloc((size_t)(ng > 0 ? ng : 1), 1);
    for (int i = 0; i < np; i++)
        for (int j = 0; j < ng; j++)
            if (!used[j] && !strcmp(pv[i], gv[j])) {
                used[j] = 1;
                common++;
                break;
            }
    if (np == 0 || ng == 0)
        r = np == ng; /* both empty: 1; one empty: 0 */
    else if (common == 0)
        r = 0;
    else {
        double prec = (double)common / np, rec = (double)common / ng;
        r = 2 * prec * rec / (prec + rec);
    }
    for (int i = 0; i < np; i++)
        free(pv[i]);
    for (int j = 0; j < ng; j++)
        free(gv[j]);
    free(pv);
    free(gv);
    free(used);
    free(p);
    free(g);
    return r;
}

double qa_f1(const char *pred, const char *gold)
{
    return f1_of(pred, gold, 0);
}

double qa_f1_char(const char *pred, const char *gold)
{
    return f1_of(pred, gold, 1);
}

void qa_score(const char *pred, const char *const *golds, int ngolds, struct qa_score *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < ngolds; i++) {
        double em = qa_exact(pred, golds[i]), f1 = qa_f1(pred, golds[i]),
               fc = qa_f1_char(pred, golds[i]);
        out->em = em > out->em ? em : out->em;
        out->f1 = f1 > out->f1 ? f1 : out->f1;
        out->f1_char = fc > out->f1_char ? fc : out->f1_char;
    }
}

char *qa_prediction(const char *generated)
{
    static const char *const labels[] = { "답변:", "정답:", "답:", "answer:", NULL };
    char *t = evgen_strip_thoughts(generated), *p = t, *e;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if ((e = strchr(p, '\n')))
        *e = '\0';
    for (const char *const *l = labels; *l; l++)
        if (!strncasecmp(p, *l, strlen(*l))) {
            p += strlen(*l);
            break;
        }
    while (*p == ' ' || *p == '\t')
        p++;
    e = p + strlen(p);
    while (e > p && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    char *r = xasprintf("%.*s", (int)(e - p), p);
    free(t);
    return r;
}

/* ---- truncation -------------------------------------------------------------------------- */

static int render_encode(const struct tok *t, const char *tmpl, const char *ctx, const char *q,
                         int (*wrap)(void *, const char *, struct buf *, char *, size_t), void *wa,
                         int32_t **ids, char *err, size_t errlen)
{
    struct buf u, w;
    int n;
    buf_init(&u);
    buf_init(&w);
    qa_prompt(tmpl, ctx, q, &u);
    if (wrap) {
        if (wrap(wa, buf_cstr(&u), &w, err, errlen) != 0) {
            buf_release(&u);
            buf_release(&w);
            return -1;
        }
    } else {
        buf_puts(&w, buf_cstr(&u));
    }
    n = tok_encode(t, w.data ? w.data : "", w.len, ids, err, errlen);
    buf_release(&u);
    buf_release(&w);
    return n;
}

int qa_fit(const struct tok *t, const char *tmpl, const char *context, const char *question,
           int budget,
           int (*wrap)(void *arg, const char *user, struct buf *out, char *err, size_t errlen),
           void *wrap_arg, int32_t **out, int *n, int *cut, char *err, size_t errlen)
{
    int32_t *ids = NULL, *cids = NULL;
    int len, nc, k;
    *out = NULL;
    *n = 0;
    *cut = 0;
    len = render_encode(t, tmpl, context, question, wrap, wrap_arg, &ids, err, errlen);
    if (len < 0)
        return -EINVAL;
    if (len <= budget) {
        *out = ids;
        *n = len;
        return 0;
    }
    free(ids);
    ids = NULL;
    nc = tok_encode(t, context, strlen(context), &cids, err, errlen);
    if (nc < 0)
        return -EINVAL;
    k = nc - (len - budget);
    for (;;) {
        if (k < 0)
            k = 0;
        size_t dl;
        char *d = tok_decode_n(t, cids, (size_t)k, &dl);
        /* Drop a trailing U+FFFD made by a character split between tokens, and a partial one. */
        while (dl >= 3 && !memcmp(d + dl - 3, "\xef\xbf\xbd", 3))
            d[dl -= 3] = '\0';
        len = render_encode(t, tmpl, d, question, wrap, wrap_arg, &ids, err, errlen);
        free(d);
        if (len < 0) {
            free(cids);
            return -EINVAL;
        }
        if (len <= budget) {
            *out = ids;
            *n = len;
            *cut = 1;
            free(cids);
            return 0;
        }
        free(ids);
        ids = NULL;
        if (k == 0) {
            free(cids);
            seterr(err, errlen,
                   "the prompt without any context has %d tokens, more than the budget of %d", len,
                   budget);
            return -EINVAL;
        }
        k -= len - budget > 0 ? len - budget : 1;
    }
}
