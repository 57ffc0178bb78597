/*
 * eval: token data loading, the perplexity window protocol and lm-evaluation-harness style
 * multiple-choice scoring (see eval.h). Owns no global state; the model and tokenizer passed in
 * are borrowed. Never calls the worker's reporting functions (the stages do that).
 */
#include "worker/evals/eval.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common/util.h"

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

/* ---- perplexity windows ------------------------------------------------------------------ */

int64_t eval_ppl_windows(size_t n, int seq_len, int64_t max_windows)
{
    if (seq_len < 1 || n < 2)
        return 0;
    int64_t w = (int64_t)((n - 1) / (size_t)seq_len);
    if (max_windows > 0 && w > max_windows)
        w = max_windows;
    return w;
}

int64_t eval_seq_windows(size_t n, int seq_len, int64_t max_samples)
{
    if (seq_len < 1)
        return 0;
    int64_t w = (int64_t)(n / (size_t)seq_len);
    if (max_samples > 0 && w > max_samples)
        w = max_samples;
    return w;
}

int eval_ppl_run(struct model *m, const int32_t *ids, size_t n, int seq_len, int64_t max_windows,
                 eval_window_fn fn, void *arg, struct eval_ppl_result *res, char **err)
{
    int64_t W = eval_ppl_windows(n, seq_len, max_windows);
    float *nll;
    int rc = 0;
    memset(res, 0, sizeof(*res));
    if (W < 1) {
        err_setf(err,
                 "%zu tokens are not enough for one perplexity window of seq_len %d (it needs "
                 "%lld tokens: %d inputs and the next token as the last target)",
                 n, seq_len, seq_len < 1 ? 0LL : (long long)seq_len + 1, seq_len);
        return -EINVAL;
    }
    nll = xmalloc(sizeof(float) * (size_t)seq_len);
    for (int64_t w = 0; w < W; w++) {
        if (fn && (rc = fn(arg, w, W)) != 0)
            goto out;
        rc = model_nll(m, ids + (size_t)seq_len * (size_t)w, seq_len + 1, nll, err);
        if (rc)
            goto out;
        /* Per-window partial sums in double keep the total independent of the window count's
         * magnitude (102,400 terms of ~2.5 each for the reference run). */
        double s = 0;
        for (int i = 0; i < seq_len; i++)
            s += nll[i];
        res->nll_sum += s;
        res->tokens += seq_len;
        res->windows++;
    }
    if (fn)
        rc = fn(arg, W, W);
out:
    free(nll);
    return rc;
}

/* ---- multiple choice: items -------------------------------------------------------------- */

static void item_release(struct eval_mcqa_item *it)
{
    free(it->prompt);
    for (int c = 0; c < it->nchoices; c++)
        free(it->choices[c]);
    free(it->choices);
    memset(it, 0, sizeof(*it));
}

void eval_mcqa_release(struct eval_mcqa_set *set)
{
    for (int i = 0; i < set->n; i++)
        item_release(&set->items[i]);
    free(set->items);
    set->items = NULL;
    set->n = 0;
}

/* Parses one JSONL line into it; returns 0 or -1 with a message (without the position). */
static int item_parse(const char *text, size_t len, struct eval_mcqa_item *it, char *msg,
                      size_t msglen)
{
    cJSON *root = cJSON_ParseWithLength(text, len), *p, *ch, *ans, *c;
    int k = 0;
    memset(it, 0, sizeof(*it));
    if (!root) {
        seterr(msg, msglen, "bad JSON");
        return -1;
    }
    if (!cJSON_IsObject(root)) {
        seterr(msg, msglen, "expected a JSON object {\"prompt\", \"choices\", \"answer\"}");
        goto fail;
    }
    p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    ch = cJSON_GetObjectItemCaseSensitive(root, "choices");
    ans = cJSON_GetObjectItemCaseSensitive(root, "answer");
    if (!p || !ch || !ans) {
        seterr(msg, msglen, "missing field '%s'", !p ? "prompt" : !ch ? "choices" : "answer");
        goto fail;
    }
    if (!cJSON_IsString(p)) {
        seterr(msg, msglen, "'prompt' must be a string");
        goto fail;
    }
    if (!cJSON_IsArray(ch)) {
        seterr(msg, msglen, "'choices' must be a list of strings");
        goto fail;
    }
    it->nchoices = cJSON_GetArraySize(ch);
    if (it->nchoices < 2) {
        seterr(msg, msglen, "'choices' must hold at least two strings, it has %d", it->nchoices);
        it->nchoices = 0;
        goto fail;
    }
    it->choices = xcalloc((size_t)it->nchoices, sizeof(char *));
    cJSON_ArrayForEach(c, ch)
    {
        if (!cJSON_IsString(c)) {
            seterr(msg, msglen, "choice %d is not a string", k);
            goto fail;
        }
        it->choices[k++] = xstrdup(c->valuestring);
    }
    if (!cJSON_IsNumber(ans) || ans->valuedouble != floor(ans->valuedouble) ||
        !(ans->valuedouble >= 0 && ans->valuedouble < it->nchoices)) {
        char *s = cJSON_PrintUnformatted(ans);
        seterr(msg, msglen,
               "'answer' must be an integer index into the %d choices (0 to %d), got %s",
               it->nchoices, it->nchoices - 1, s ? s : "?");
        cJSON_free(s);
        goto fail;
    }
    it->answer = (int)ans->valuedouble;
    it->prompt = xstrdup(p->valuestring);
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    item_release(it);
    return -1;
}

int eval_mcqa_load(const char *path, int limit, struct eval_mcqa_set *set, char **err)
{
    char *data = NULL, msg[512];
    size_t len = 0, pos = 0;
    int rc = file_read_all(path, &data, &len), line = 0, cap = 0;
    memset(set, 0, sizeof(*set));
    if (rc < 0) {
        err_setf(err, "cannot read items file '%s': %s", path, strerror(-rc));
        return rc;
    }
    while (pos < len && (limit <= 0 || set->n < limit)) {
        const char *s = data + pos, *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos, k;
        pos += l + (nl ? 1 : 0);
        line++;
        for (k = 0; k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'); k++)
            ;
        if (k == l)
            continue; /* blank line */
        if (set->n == cap) {
            cap = cap ? 2 * cap : 64;
            set->items = xrealloc(set->items, (size_t)cap * sizeof(*set->items));
        }
        if (item_parse(s, l, &set->items[set->n], msg, sizeof(msg)) < 0) {
            err_setf(err, "%s:%d: %s", path, line, msg);
            free(data);
            return -EINVAL;
        }
        set->items[set->n++].line = line;
    }
    free(data);
    if (set->n == 0) {
        err_setf(err, "items file '%s' holds no items", path);
        return -EINVAL;
    }
    return 0;
}

/* ---- multiple choice: text helpers ------------------------------------------------------- */

/* Python's str.isspace() for one code point. */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the UTF-8 character s[0..n-1] (n from its lead byte); -1 when malformed. */
static int64_t utf8_decode(const unsigned char *s, size_t n)
{
    uint32_t c;
    if (n == 1)
        return s[0] < 0x80 ? s[0] : -1;
    if (n == 2 && (s[0] & 0xe0) == 0xc0)
        c = s[0] & 0x1fu;
    else if (n == 3 && (s[0] & 0xf0) == 0xe0)
        c = s[0] & 0x0fu;
    else if (n == 4 && (s[0] & 0xf8) == 0xf0)
        c = s[0] & 0x07u;
    else
        return -1;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return -1;
        c = c << 6 | (s[i] & 0x3fu);
    }
    return c;
}

size_t eval_trailing_space(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t end = len;
    while (end > 0) {
        size_t start = end - 1;
        /* Back over at most 3 continuation bytes to the lead byte. */
        while (start > 0 && end - start < 4 && (u[start] & 0xc0) == 0x80)
            start--;
        int64_t c = utf8_decode(u + start, end - start);
        if (c < 0 || !py_isspace((uint32_t)c))
            break;
        end = start;
    }
    return len - end;
}

size_t eval_utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *u = (const unsigned char *)s; *u; u++)
        if ((*u & 0xc0) != 0x80)
            n++;
    return n;
}

int eval_argmax_first(const double *v, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i]) && (best < 0 || v[i] > v[best]))
            best = i;
    return best < 0 ? 0 : best;
}

void eval_mcqa_pick(const struct eval_mcqa_item *it, const double *sums, int *pick, int *pick_norm)
{
    double *norm = xmalloc(sizeof(double) * (size_t)(it->nchoices > 0 ? it->nchoices : 1));
    for (int c = 0; c < it->nchoices; c++) {
        size_t chars = eval_utf8_chars(it->choices[c]);
        norm[c] = chars > 0 ? sums[c] / (double)chars : -INFINITY;
    }
    *pick = eval_argmax_first(sums, it->nchoices);
    *pick_norm = eval_argmax_first(norm, it->nchoices);
    free(norm);
}

/* ---- multiple choice: scoring ------------------------------------------------------------ */

struct eval_mcqa {
    struct model *m;
    const struct tok *t;
    struct model_kv *kv;
    float *first;  /* [vocab] log-probabilities after the context */
    float *logits; /* [rows][vocab] */
    int rows_cap;
};

struct eval_mcqa *eval_mcqa_new(struct model *m, const struct tok *t)
{
    struct eval_mcqa *s = xcalloc(1, sizeof(*s));
    s->m = m;
    s->t = t;
    s->first = xmalloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    return s;
}

void eval_mcqa_free(struct eval_mcqa *s)
{
    if (!s)
        return;
    model_kv_free(s->kv);
    free(s->first);
    free(s->logits);
    free(s);
}

static int encode(struct eval_mcqa *s, const char *text, size_t len, int32_t **ids, int *n,
                  const struct eval_mcqa_item *it, char **err)
{
    char msg[512] = "";
    int cnt = tok_encode(s->t, text, len, ids, msg, sizeof(msg));
    if (cnt < 0) {
        err_setf(err, "item at line %d: cannot tokenize: %s", it->line, msg);
        *ids = NULL;
        *n = 0;
        return -EINVAL;
    }
    *n = cnt;
    return 0;
}

int eval_mcqa_score(struct eval_mcqa *s, const struct eval_mcqa_item *it, double *sums, int *ntok,
                    char **err)
{
    struct model *m = s->m;
    const int V = m->cfg.vocab_size, nc = it->nchoices;
    size_t plen = strlen(it->prompt), ws = eval_trailing_space(it->prompt, plen), clen = plen - ws;
    int32_t *ctx = NULL, **cont = xcalloc((size_t)nc, sizeof(int32_t *));
    int nctx = 0, *ncont = xcalloc((size_t)nc, sizeof(int)), maxc = 0, rc = 0;
    bool no_context = clen == 0;
    struct buf b;

    buf_init(&b);
    if (!no_context) {
        if ((rc = encode(s, it->prompt, clen, &ctx, &nctx, it, err)))
            goto out;
    } else {
        /* lm-eval: an empty context becomes the prefix token (bos, else eos) and the
         * continuation is encoded alone. */
        int pre = m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : m->cfg.eos_token_id;
        if (pre < 0 || pre >= V) {
            err_setf(err,
                     "item at line %d: the prompt is empty (only whitespace) and the model "
                     "config has no bos_token_id or eos_token_id to use as context",
                     it->line);
            rc = -EINVAL;
            goto out;
        }
        ctx = xmalloc(sizeof(int32_t));
        ctx[0] = pre;
        nctx = 1;
    }
    for (int c = 0; c < nc; c++) {
        int32_t *whole = NULL;
        int nwhole = 0;
        /* context + continuation = context + moved whitespace + choice = prompt + choice; with
         * an empty context this is the continuation alone. */
        b.len = 0;
        buf_append(&b, it->prompt, plen);
        buf_puts(&b, it->choices[c]);
        if ((rc = encode(s, buf_cstr(&b), b.len, &whole, &nwhole, it, err)))
            goto out;
        if (no_context) {
            cont[c] = whole;
            ncont[c] = nwhole;
        } else {
            /* The continuation tokens are the whole's tokens after the first len(ctx) (lm-eval
             * does not check that the whole starts with the context's tokens). */
            ncont[c] = nwhole > nctx ? nwhole - nctx : 0;
            cont[c] = xmalloc(sizeof(int32_t) * (size_t)(ncont[c] > 0 ? ncont[c] : 1));
            if (ncont[c] > 0)
                memcpy(cont[c], whole + nctx, sizeof(int32_t) * (size_t)ncont[c]);
            free(whole);
        }
        if (ncont[c] > maxc)
            maxc = ncont[c];
        int64_t bad = tokdata_ids_check(cont[c], (size_t)ncont[c], V);
        if (bad >= 0) {
            err_setf(err, "item at line %d: token id %d is outside the model's vocabulary (%d)",
                     it->line, cont[c][bad], V);
            rc = -EINVAL;
            goto out;
        }
    }
    {
        int64_t bad = tokdata_ids_check(ctx, (size_t)nctx, V);
        if (bad >= 0) {
            err_setf(err, "item at line %d: token id %d is outside the model's vocabulary (%d)",
                     it->line, ctx[bad], V);
            rc = -EINVAL;
            goto out;
        }
    }
    /* The longest model input is the context plus all but the last continuation token. */
    if (nctx + maxc - 1 > m->cfg.max_position_embeddings) {
        err_setf(err,
                 "item at line %d: %d context and %d continuation tokens exceed the model's "
                 "max_position_embeddings (%d)",
                 it->line, nctx, maxc, m->cfg.max_position_embeddings);
        rc = -EINVAL;
        goto out;
    }
    if (!s->kv || s->kv->cap < nctx + maxc || s->kv->n_layers != m->n_layers) {
        model_kv_free(s->kv);
        s->kv = model_kv_new(m, ((nctx + maxc) / 256 + 1) * 256);
    }
    if (maxc - 1 > s->rows_cap) {
        s->rows_cap = maxc - 1;
        free(s->logits);
        s->logits = xmalloc(sizeof(float) * (size_t)s->rows_cap * (size_t)V);
    }
    model_kv_reset(s->kv);
    if ((rc = model_forward(m, ctx, nctx, s->kv, MODEL_LOGITS_LAST, s->first, NULL, err)) ||
        (rc = model_log_softmax(m, s->first, 1, err)))
        goto out;
    for (int c = 0; c < nc; c++) {
        double sum = 0;
        if (ntok)
            ntok[c] = ncont[c];
        if (ncont[c] > 0)
            sum = s->first[cont[c][0]];
        if (ncont[c] > 1) {
            int rows = ncont[c] - 1;
            /* Continue from the cached context: drop the previous choice's positions. */
            for (int l = 0; l < s->kv->n_layers; l++)
                s->kv->len[l] = nctx;
            if ((rc = model_forward(m, cont[c], rows, s->kv, MODEL_LOGITS_ALL, s->logits, NULL,
                                    err)) ||
                (rc = model_log_softmax(m, s->logits, rows, err)))
                goto out;
            for (int r = 0; r < rows; r++)
                sum += s->logits[(size_t)r * V + cont[c][r + 1]];
        }
        sums[c] = sum;
    }
out:
    buf_release(&b);
    free(ctx);
    for (int c = 0; c < nc; c++)
        free(cont[c]);
    free(cont);
    free(ncont);
    return rc;
}

/* ---- robust statistics ------------------------------------------------------------------- */

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double eval_quantile(double *v, int n, double q)
{
    double h;
    int lo;
    if (n < 1)
        return 0;
    qsort(v, (size_t)n, sizeof(double), cmp_dbl);
    q = q < 0 ? 0 : q > 1 ? 1 : q;
    h = q * (n - 1);
    lo = (int)floor(h);
    if (lo >= n - 1)
        return v[n - 1];
    return v[lo] + (h - lo) * (v[lo + 1] - v[lo]);
}

double eval_median(double *v, int n)
{
    return eval_quantile(v, n, 0.5);
}

double eval_iqr(double *v, int n)
{
    return eval_quantile(v, n, 0.75) - eval_quantile(v, n, 0.25);
}
