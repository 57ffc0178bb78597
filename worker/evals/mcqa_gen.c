/*
 * mcqa_gen: items, prompts and answer parsing of the generated multiple-choice eval
 * (mcqa_gen.h), and the helpers the generated-answer evals share.
 */
#include "worker/evals/mcqa_gen.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

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

/* ---- shared ----------------------------------------------------------------------------- */

int evgen_jsonl(const char *path, int limit,
                int (*fn)(void *arg, const struct cJSON *obj, int line, char *msg, size_t msglen),
                void *arg, char *err, size_t errlen)
{
    char *data = NULL, msg[512];
    size_t len = 0, pos = 0;
    int rc = file_read_all(path, &data, &len), line = 0, n = 0;
    if (rc < 0) {
        seterr(err, errlen, "cannot read items file '%s': %s", path, strerror(-rc));
        return -1;
    }
    while (pos < len && (limit <= 0 || n < limit)) {
        const char *s = data + pos, *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos, k;
        pos += l + (nl ? 1 : 0);
        line++;
        for (k = 0; k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'); k++)
            ;
        if (k == l)
            continue;
        cJSON *obj = cJSON_ParseWithLength(s, l);
        if (!obj || !cJSON_IsObject(obj)) {
            seterr(err, errlen, "%s:%d: %s", path, line,
                   obj ? "not a JSON object" : "not valid JSON");
            cJSON_Delete(obj);
            free(data);
            return -1;
        }
        msg[0] = '\0';
        rc = fn(arg, obj, line, msg, sizeof(msg));
        cJSON_Delete(obj);
        if (rc < 0) {
            seterr(err, errlen, "%s:%d: %s", path, line, msg);
            free(data);
            return -1;
        }
        n++;
    }
    free(data);
    if (n == 0) {
        seterr(err, errlen, "items file '%s' holds no items", path);
        return -1;
    }
    return n;
}

void evgen_fill(const char *tmpl, const char *const *keys, const char *const *vals, int n,
                struct buf *out)
{
    const char *p = tmpl;
    while (*p) {
        int hit = -1;
        size_t kl = 0;
        if (*p == '{')
            for (int i = 0; i < n && hit < 0; i++) {
                kl = strlen(keys[i]);
                if (!strncmp(p + 1, keys[i], kl) && p[1 + kl] == '}')
                    hit = i;
            }
        if (hit >= 0) {
            buf_puts(out, vals[hit]);
            p += kl + 2;
        } else {
            buf_append(out, p, 1);
            p++;
        }
    }
}

char *evgen_strip_thoughts(const char *text)
{
    struct buf b;
    const char *p = text, *close;
    buf_init(&b);
    /* A closing tag before any opening one: the block began in the prompt. */
    close = strstr(p, "</think>");
    if (close) {
        const char *open = strstr(p, "<think>");
        if (!open || open > close)
            p = close + strlen("</think>");
    }
    for (;;) {
        const char *open = strstr(p, "<think>");
        if (!open) {
            buf_puts(&b, p);
            break;
        }
        buf_append(&b, p, (size_t)(open - p));
        close = strstr(open, "</think>");
        if (!close)
            break; /* unclosed: the rest is thought */
        p = close + strlen("</think>");
    }
    buf_puts(&b, "");
    return buf_steal(&b);
}

void evgen_slug(const char *name, char *out, size_t max)
{
    size_t n = 0;
    int sep = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p && n + 1 < max; p++) {
        if (isalnum(*p) && *p < 0x80) {
            if (sep && n > 0 && n + 2 < max)
                out[n++] = '_';
            sep = 0;
            out[n++] = (char)tolower(*p);
        } else {
            sep = 1;
        }
    }
    out[n] = '\0';
}

/* ---- items ------------------------------------------------------------------------------- */

static int item_parse(void *arg, const cJSON *o, int line, char *msg, size_t msglen)
{
    struct mcqa_gen_set *set = arg;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question"),
                *ch = cJSON_GetObjectItemCaseSensitive(o, "choices"),
                *a = cJSON_GetObjectItemCaseSensitive(o, "answer"),
                *cat = cJSON_GetObjectItemCaseSensitive(o, "category");
    const cJSON *cv[MCQA_GEN_MAX_CHOICES];
    int nc = 0, ans = -1;
    if (!cat)
        cat = cJSON_GetObjectItemCaseSensitive(o, "Category"); /* KMMLU's column name */
    if (!cJSON_IsString(q)) {
        seterr(msg, msglen, "'question' must be a string");
        return -1;
    }
    if (ch) {
        if (!cJSON_IsArray(ch)) {
            seterr(msg, msglen, "'choices' must be a list of strings");
            return -1;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, ch)
        {
            if (!cJSON_IsString(e) || nc == MCQA_GEN_MAX_CHOICES) {
                seterr(msg, msglen, "'choices' must be a list of 2 to %d strings",
                       MCQA_GEN_MAX_CHOICES);
                return -1;
            }
            cv[nc++] = e;
        }
    } else {
        for (; nc < MCQA_GEN_MAX_CHOICES; nc++) {
            char key[2] = { (char)('A' + nc), 0 };
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, key);
            if (!e)
                break;
            if (!cJSON_IsString(e)) {
                seterr(msg, msglen, "choice '%s' must be a string", key);
                return -1;
            }
            cv[nc] = e;
        }
    }
    if (nc < 2) {
        seterr(msg, msglen, "an item needs 2 to %d choices ('choices' or fields A, B, ...)",
               MCQA_GEN_MAX_CHOICES);
        return -1;
    }
    if (cJSON_IsNumber(a) && a->valuedouble == (double)(int)a->valuedouble)
        ans = (int)a->valuedouble - 1;
    else if (cJSON_IsString(a) && a->valuestring[0] && !a->valuestring[1])
        ans = toupper((unsigned char)a->valuestring[0]) - 'A';
    else {
        seterr(msg, msglen, "'answer' must be a letter A-%c or a 1-based index", 'A' + nc - 1);
        return -1;
    }
    if (ans < 0 || ans >= nc) {
        seterr(msg, msglen, "'answer' names no choice (the item has %d: A-%c, or 1-%d)", nc,
               'A' + nc - 1, nc);
        return -1;
    }
    if (cat && !cJSON_IsNull(cat) && !cJSON_IsString(cat)) {
        seterr(msg, msglen, "'category' must be a string");
        return -1;
    }
    if (set->n % 64 == 0)
        set->items = xrealloc(set->items, sizeof(*set->items) * (size_t)(set->n + 64));
    struct mcqa_gen_item *it = &set->items[set->n++];
    it->question = xstrdup(q->valuestring);
    it->choices = xmalloc(sizeof(char *) * (size_t)nc);
    for (int i = 0; i < nc; i++)
        it->choices[i] = xstrdup(cv[i]->valuestring);
    it->nchoices = nc;
    it->answer = ans;
    it->category = cJSON_IsString(cat) && cat->valuestring[0] ? xstrdup(cat->valuestring) : NULL;
    it->line = line;
    return 0;
}

int mcqa_gen_load(const char *path, int limit, struct mcqa_gen_set *set, char *err, size_t errlen)
{
    memset(set, 0, sizeof(*set));
    return evgen_jsonl(path, limit, item_parse, set, err, errlen) < 0 ? -EINVAL : 0;
}

void mcqa_gen_release(struct mcqa_gen_set *set)
{
    for (int i = 0; i < set->n; i++) {
        struct mcqa_gen_item *it = &set->items[i];
        free(it->question);
        for (int c = 0; c < it->nchoices; c++)
            free(it->choices[c]);
        free(it->choices);
        free(it->category);
    }
    free(set->items);
    memset(set, 0, sizeof(*set));
}

/* ---- prompt ------------------------------------------------------------------------------ */

static void fill_item(const char *tmpl, const struct mcqa_gen_item *it, struct buf *out)
{
    struct buf ch;
    buf_init(&ch);
    for (int c = 0; c < it->nchoices; c++)
        buf_printf(&ch, "%s%c. %s", c ? "\n" : "", 'A' + c, it->choices[c]);
    const char *keys[2] = { "question", "choices" };
    const char *vals[2] = { it->question, buf_cstr(&ch) };
    evgen_fill(tmpl, keys, vals, 2, out);
    buf_release(&ch);
}

void mcqa_gen_prompt(const char *tmpl, const struct mcqa_gen_item *shots, int nshots,
                     const struct mcqa_gen_item *it, struct buf *out)
{
    for (int s = 0; s < nshots; s++) {
        fill_item(tmpl, &shots[s], out);
        buf_printf(out, " %c\n\n", 'A' + shots[s].answer);
    }
    fill_item(tmpl, it, out);
}

/* ---- answer parsing ---------------------------------------------------------------------- */

static int is_alnum_ascii(unsigned char c)
{
    return c < 0x80 && isalnum(c);
}

/* A valid answer letter at p (uppercase, in range, not followed by an ASCII letter/digit). */
static int letter_at(const char *p, int nchoices)
{
    unsigned char c = (unsigned char)*p;
    if (c < 'A' || c >= 'A' + nchoices)
        return -1;
    if (is_alnum_ascii((unsigned char)p[1]))
        return -1;
    return c - 'A';
}

/* After a marker: skip separators and particles, then a letter. */
static int after_marker(const char *p, int nchoices)
{
    static const char *const words[] = { "으로", "는요", "은", "는", "이", "：", NULL };
    for (int guard = 0; guard < 16; guard++) {
        unsigned char c = (unsigned char)*p;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || (c && strchr(":*([\"'=-", c))) {
            p++;
            continue;
        }
        if ((c == 'i' || c == 'I') && (p[1] == 's' || p[1] == 'S') &&
            !is_alnum_ascii((unsigned char)p[2])) {
            p += 2;
            continue;
        }
        int w = 0;
        for (const char *const *k = words; *k && !w; k++)
            if (!strncmp(p, *k, strlen(*k))) {
                p += strlen(*k);
                w = 1;
            }
        if (!w)
            break;
    }
    return letter_at(p, nchoices);
}

int mcqa_gen_parse(const char *text, int nchoices)
{
    char *t = evgen_strip_thoughts(text);
    int best = -1;
    if (nchoices > MCQA_GEN_MAX_CHOICES)
        nchoices = MCQA_GEN_MAX_CHOICES;
    for (const char *p = t; *p; p++) {
        int r = -1;
        if (!strncasecmp(p, "answer", 6))
            r = after_marker(p + 6, nchoices);
        else if (!strncmp(p, "답", strlen("답")))
            r = after_marker(p + strlen("답"), nchoices);
        if (r >= 0)
            best = r;
    }
    if (best < 0)
        for (const char *p = t; *p && best < 0; p++)
            if ((p == t || !is_alnum_ascii((unsigned char)p[-1])))
                best = letter_at(p, nchoices);
    free(t);
    return best;
}

void mcqa_gen_tally(const struct mcqa_gen_set *set, const char *const *texts,
                    struct mcqa_gen_tally *out)
{
    memset(out, 0, sizeof(*out));
    out->n = set->n;
    out->cat = xcalloc((size_t)(set->n > 0 ? set->n : 1), sizeof(*out->cat));
    out->cat_n = xcalloc((size_t)(set->n > 0 ? set->n : 1), sizeof(int));
    out->cat_correct = xcalloc((size_t)(set->n > 0 ? set->n : 1), sizeof(int));
    for (int i = 0; i < set->n; i++) {
        const struct mcqa_gen_item *it = &set->items[i];
        int pick = mcqa_gen_parse(texts[i], it->nchoices), c = 0;
        char slug[48];
        out->correct += pick == it->answer;
        out->fails += pick < 0;
        if (!it->category)
            continue;
        evgen_slug(it->category, slug, sizeof(slug));
        if (!slug[0])
            snprintf(slug, sizeof(slug), "cat%d", i);
        while (c < out->ncat && strcmp(out->cat[c], slug))
            c++;
        if (c == out->ncat)
            snprintf(out->cat[out->ncat++], sizeof(out->cat[0]), "%s", slug);
        out->cat_n[c]++;
        out->cat_correct[c] += pick == it->answer;
    }
}

void mcqa_gen_tally_release(struct mcqa_gen_tally *t)
{
    free(t->cat);
    free(t->cat_n);
    free(t->cat_correct);
    memset(t, 0, sizeof(*t));
}
