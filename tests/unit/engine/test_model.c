/*
 * test_model: the EXAONE-4 engine (worker/model*.c) against golden data and against a naive
 * implementation of the definition.
 *
 * Proves, on tiny-a (tests/data/tiny-exaone4, golden from transformers BF16 on GPU):
 *   1. logits of the 320 golden input_ids: max|diff| <= 2% of max|logit|, argmax equal at >= 99%
 *      of positions;
 *   2. hidden_0 (embedding) is exact; hidden_1..hidden_4 (hidden_4 after the final norm) are
 *      within 1.5% relative L2 and 1.5% of max|golden| elementwise. Source of the difference:
 *      the golden run rounds every activation to bf16 (spec 1.3; a bf16 rounding is up to 2^-9
 *      relative), we keep fp32. Measured: 0.41%, 0.58%, 0.69%, 0.83% relative L2 for layers 1-4
 *      (docs/engine.md), so the bounds leave ~2x margin while any real bug (a missing norm, RoPE
 *      on the wrong half, a wrong GQA mapping) moves them by tens of percent;
 *   3. greedy decoding of 32 tokens through the KV cache reproduces generate_greedy_32 exactly
 *      with bf16 activation emulation; in plain fp32 every golden token is within 0.1 logit of
 *      our argmax under teacher forcing (step 23 is a near tie: 0.03 apart, below bf16's 0.0625
 *      resolution at |logit| 8) and the fp32 generation matches up to that first near tie;
 *      KV-cache decode logits equal full-sequence logits within fp32 noise (1e-4 of max);
 *   4. perplexity over val.ids.u32 (200 windows of 512, README protocol) is 12.848 within 0.5%
 *      (this test takes ~10-25 s on 2 cores; the time is printed; 4 windows under sanitizers);
 *   5. a synthetic hybrid sliding-window model in the transformers-5 config style matches a naive
 *      double-precision implementation written here from the definition (explicit mask matrix)
 *      for full-sequence and KV-cache decoding; a v5-style config of tiny-a gives bit-identical
 *      logits to the 4.57 style;
 * plus the layer-level API used by calibration (hooks, weight get/set/replace, layer-by-layer
 * equals model_forward), layer removal + save + reload, and load/runtime errors.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/par.h"
#include "worker/engine/model.h"
#include "common/st.h"
#include "worker/engine/synth.h"
#include "tests/unit/fixture.h"

#define GOLDEN "tests/data/tiny-a/golden.safetensors"

static int have_tiny(void)
{
    if (!is_file(TINY "/model.safetensors") || !is_file(GOLDEN)) {
        printf("SKIP tiny-a data missing\n");
        return 0;
    }
    return 1;
}

static struct model *load(const char *dir, int emulate)
{
    struct model *m = NULL;
    char *err = NULL;
    struct model_opts o = { 0, KERN_IMPL_CPU, emulate };
    int rc = model_load(&m, dir, &o, &err);
    if (rc)
        printf("load %s: %s\n", dir, err);
    assert_int_equal(rc, 0);
    return m;
}

static const void *golden(struct st_file *g, const char *name)
{
    const struct st_tensor *t = st_file_find(g, name);
    assert_non_null(t);
    return t->data;
}

static char *tmpdir_new(void)
{
    char tmpl[] = "/tmp/exaq-model-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return xstrdup(d);
}

static int32_t argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* ---- 1, 2: golden logits and hidden states ------------------------------------------------ */

struct capture {
    float *h[5]; /* 64 x hidden after each layer */
};

static int capture_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T,
                        int n)
{
    struct capture *c = arg;
    assert_int_equal(pt, MODEL_HOOK_LAYER_OUT);
    assert_true(T >= 64);
    memcpy(c->h[layer + 1], x, sizeof(float) * 64 * (size_t)n);
    return 0;
}

static void test_golden_logits_and_hidden(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct model *m = load(TINY, 0);
    struct st_file *g;
    char *err = NULL;
    assert_int_equal(st_file_open(&g, GOLDEN, &err), 0);
    const int32_t *ids = golden(g, "input_ids");
    const float *gl = golden(g, "logits");
    const int T = 320, V = m->cfg.vocab_size, H = m->cfg.hidden_size;
    assert_int_equal(V, 4096);
    float *lg = malloc(sizeof(float) * T * V);
    struct capture cap;
    for (int i = 0; i < 5; i++)
        cap.h[i] = malloc(sizeof(float) * 64 * H);
    struct model_hooks hk = { capture_hook, &cap, 1u << MODEL_HOOK_LAYER_OUT };
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, lg, &hk, &err), 0);
    double maxd = 0, maxl = 0;
    int agree = 0;
    for (int t = 0; t < T; t++) {
        for (int v = 0; v < V; v++) {
            double d = fabs(lg[t * V + v] - gl[t * V + v]);
            maxd = d > maxd ? d : maxd;
            maxl = fabs(gl[t * V + v]) > maxl ? fabs(gl[t * V + v]) : maxl;
        }
        agree += argmax(lg + t * V, V) == argmax(gl + t * V, V);
    }
    printf("# logits: max|diff| %.4f = %.3f%% of max|logit| %.3f; argmax agrees at %d/%d\n", maxd,
           100 * maxd / maxl, maxl, agree, T);
    assert_true(maxd <= 0.02 * maxl);
    assert_true(agree >= (int)ceil(0.99 * T));
    /* Log-softmax rows are normalised log-probabilities. */
    assert_int_equal(model_log_softmax(m, lg, T, &err), 0);
    for (int t = 0; t < T; t += 37) {
        double sum = 0;
        for (int v = 0; v < V; v++)
            sum += exp(lg[t * V + v]);
        assert_true(fabs(sum - 1) < 1e-4);
    }

    assert_int_equal(model_embed(m, ids, 64, cap.h[0], &err), 0);
    assert_int_equal(model_final_norm(m, cap.h[4], 64, &err), 0);
    for (int k = 0; k < 5; k++) {
        char name[16];
        snprintf(name, sizeof(name), "hidden_%d", k);
        const float *gh = golden(g, name);
        double num = 0, den = 0, md = 0, mr = 0;
        for (int i = 0; i < 64 * H; i++) {
            double d = cap.h[k][i] - gh[i];
            num += d * d;
            den += (double)gh[i] * gh[i];
            md = fabs(d) > md ? fabs(d) : md;
            mr = fabs(gh[i]) > mr ? fabs(gh[i]) : mr;
        }
        double rel = sqrt(num / den);
        printf("# %s: relative L2 %.4f%%, max|diff| %.4f = %.3f%% of max %.3f\n", name, 100 * rel,
               md, 100 * md / mr, mr);
        if (k == 0) {
            assert_true(md == 0.0); /* the embedding is a bf16 table lookup */
        } else {
            assert_true(rel <= 0.015);
            assert_true(md <= 0.015 * mr);
        }
    }
    for (int i = 0; i < 5; i++)
        free(cap.h[i]);
    free(lg);
    st_file_free(g);
    model_free(m);
}

/* ---- 3: greedy decoding and KV-cache equivalence ------------------------------------------ */

static void test_greedy_and_kv(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct st_file *g;
    char *err = NULL;
    assert_int_equal(st_file_open(&g, GOLDEN, &err), 0);
    const int32_t *prompt = golden(g, "generate_prompt");
    const int32_t *want = golden(g, "generate_greedy_32");
    int32_t out[32];

    /* Exact reproduction with bf16 activation emulation. */
    struct model *me = load(TINY, 1);
    assert_int_equal(model_generate_greedy(me, prompt, 16, 32, out, &err), 0);
    for (int i = 0; i < 32; i++)
        assert_int_equal(out[i], want[i]);
    model_free(me);

    /* fp32: teacher-forced, each golden token is our argmax or within 0.1 of it. */
    struct model *m = load(TINY, 0);
    const int V = m->cfg.vocab_size;
    int32_t seq[48];
    memcpy(seq, prompt, 16 * sizeof(int32_t));
    memcpy(seq + 16, want, 32 * sizeof(int32_t));
    float *full = malloc(sizeof(float) * 48 * V);
    assert_int_equal(model_forward(m, seq, 48, NULL, MODEL_LOGITS_ALL, full, NULL, &err), 0);
    int first_tie = 32;
    for (int i = 0; i < 32; i++) {
        const float *r = full + (size_t)(15 + i) * V;
        int a = argmax(r, V);
        float margin = r[a] - r[want[i]];
        float second = -INFINITY;
        for (int v = 0; v < V; v++)
            if (v != a && r[v] > second)
                second = r[v];
        if (r[a] - second < 0.1f && first_tie == 32)
            first_tie = i;
        assert_true(margin <= 0.1f);
    }
    assert_int_equal(model_generate_greedy(m, prompt, 16, 32, out, &err), 0);
    int same = 0;
    while (same < 32 && out[same] == want[same])
        same++;
    printf("# fp32 greedy matches %d/32 tokens; first near tie (< 0.1) at step %d\n", same,
           first_tie);
    assert_true(same >= first_tie);

    /* KV-cache decoding (prefill 10, a block of 7, then single tokens) equals the full pass. */
    struct model_kv *kv = model_kv_new(m, 48);
    float *step = malloc(sizeof(float) * 48 * V);
    assert_int_equal(model_forward(m, seq, 10, kv, MODEL_LOGITS_ALL, step, NULL, &err), 0);
    assert_int_equal(model_forward(m, seq + 10, 7, kv, MODEL_LOGITS_ALL, step + 10 * V, NULL, &err),
                     0);
    for (int t = 17; t < 48; t++)
        assert_int_equal(
            model_forward(m, seq + t, 1, kv, MODEL_LOGITS_LAST, step + (size_t)t * V, NULL, &err),
            0);
    double md = 0, mx = 0;
    for (size_t i = 0; i < (size_t)48 * V; i++) {
        md = fabs(step[i] - full[i]) > md ? fabs(step[i] - full[i]) : md;
        mx = fabs(full[i]) > mx ? fabs(full[i]) : mx;
    }
    printf("# KV-cache decode vs full sequence: max|diff| %.3g (%.3g of max|logit|)\n", md,
           md / mx);
    assert_true(md <= 1e-4 * mx);
    /* The cache is full now: one more token must fail cleanly. */
    assert_int_equal(model_forward(m, seq, 1, kv, MODEL_LOGITS_LAST, step, NULL, &err), -ENOSPC);
    assert_non_null(strstr(err, "KV cache capacity 48 exceeded"));
    free(err);
    err = NULL;
    model_kv_free(kv);
    free(step);
    free(full);
    model_free(m);
    st_file_free(g);
}

/* ---- 4: perplexity ------------------------------------------------------------------------ */

static void test_perplexity(void **state)
{
    (void)state;
    if (!have_tiny() || !is_file(VALIDS))
        skip();
    struct model *m = load(TINY, 0);
    char *buf, *err = NULL;
    size_t len;
    assert_int_equal(file_read_all(VALIDS, &buf, &len), 0);
    assert_true(len >= (200 * 512 + 1) * 4);
    const int32_t *ids = (const int32_t *)buf;
    float nll[512];
    int nw = SANITIZED ? 4 : 200;
    double tot = 0, t0 = now_mono();
    for (int w = 0; w < nw; w++) {
        assert_int_equal(model_nll(m, ids + 512 * w, 513, nll, &err), 0);
        for (int i = 0; i < 512; i++)
            tot += nll[i];
    }
    double dt = now_mono() - t0, ppl = exp(tot / (512.0 * nw));
    printf("# perplexity %.4f over %d windows (reference 12.848 over 200, %+.3f%%) in %.1f s, "
           "%.0f tokens/s, %d threads\n",
           ppl, nw, 100 * (ppl / 12.848 - 1), dt, 512.0 * nw / dt, par_nthreads());
    if (SANITIZED)
        assert_true(ppl > 5 && ppl < 30); /* 4 windows: plausibility only */
    else
        assert_true(fabs(ppl / 12.848 - 1) <= 0.005);
    free(buf);
    model_free(m);
}

/* ---- 5: naive reference on a synthetic hybrid model ----------------------------------------- */

struct naive {
    int H, I, nh, nkv, hd, V, L, window;
    double eps;
    int *sliding;
    double *inv;
    float *emb, *fnorm, *head;
    float *w[16][7], *n[16][4];
};

static float *tensor_f32(struct st_dir *d, const char *name)
{
    const struct st_tensor *t = st_dir_find(d, name);
    assert_non_null(t);
    float *v = malloc(sizeof(float) * (size_t)t->numel);
    st_tensor_to_f32(t, v);
    return v;
}

/* Builds the naive model straight from the files and the definitions in spec 1.3-1.5. */
static void naive_load(struct naive *nv, const char *dir, int H, int I, int nh, int nkv, int hd,
                       int V, int L, int window, int pattern)
{
    static const char *lin[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                 "mlp.down_proj" };
    static const char *nn[] = { "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",
                                "post_feedforward_layernorm" };
    struct st_dir *d;
    char *err = NULL;
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    memset(nv, 0, sizeof(*nv));
    nv->H = H, nv->I = I, nv->nh = nh, nv->nkv = nkv, nv->hd = hd, nv->V = V, nv->L = L;
    nv->window = window;
    nv->eps = 1e-5;
    nv->sliding = calloc((size_t)L, sizeof(int));
    for (int l = 0; l < L; l++)
        nv->sliding[l] = (l + 1) % pattern != 0;
    /* llama3 rope with theta 1e6, factor 16, low 1, high 4, original 8192 (in double). */
    nv->inv = calloc((size_t)hd / 2, sizeof(double));
    for (int i = 0; i < hd / 2; i++) {
        double inv = 1.0 / pow(1e6, 2.0 * i / hd), wl = 2 * M_PI / inv;
        if (wl < 8192.0 / 4)
            nv->inv[i] = inv;
        else if (wl > 8192.0 / 1)
            nv->inv[i] = inv / 16;
        else {
            double s = (8192.0 / wl - 1) / (4 - 1);
            nv->inv[i] = (1 - s) * inv / 16 + s * inv;
        }
    }
    nv->emb = tensor_f32(d, "model.embed_tokens.weight");
    nv->fnorm = tensor_f32(d, "model.norm.weight");
    nv->head = tensor_f32(d, "lm_head.weight"); /* the synthetic model is untied */
    for (int l = 0; l < L; l++) {
        char name[96];
        for (int k = 0; k < 7; k++) {
            snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, lin[k]);
            nv->w[l][k] = tensor_f32(d, name);
        }
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, nn[k]);
            nv->n[l][k] = tensor_f32(d, name);
        }
    }
    st_dir_free(d);
}

static void naive_free(struct naive *nv)
{
    free(nv->sliding);
    free(nv->inv);
    free(nv->emb);
    free(nv->fnorm);
    free(nv->head);
    for (int l = 0; l < nv->L; l++) {
        for (int k = 0; k < 7; k++)
            free(nv->w[l][k]);
        for (int k = 0; k < 4; k++)
            free(nv->n[l][k]);
    }
}

/* y[T][out] = x[T][in] W^T in double. */
static void nmat(double *y, const double *x, int T, const float *W, int out, int in)
{
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < in; i++)
                s += x[t * in + i] * W[o * in + i];
            y[t * out + o] = s;
        }
}

static void nnorm(double *x, int rows, int n, const float *w, double eps)
{
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += x[r * n + i] * x[r * n + i];
        double inv = 1 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++)
            x[r * n + i] = w[i] * (x[r * n + i] * inv);
    }
}

static void nrope(double *x, int T, int heads, int hd, const double *inv)
{
    for (int t = 0; t < T; t++)
        for (int h = 0; h < heads; h++) {
            double *v = x + (t * heads + h) * hd;
            for (int i = 0; i < hd / 2; i++) {
                double a = t * inv[i], c = cos(a), s = sin(a), x1 = v[i], x2 = v[i + hd / 2];
                v[i] = x1 * c - x2 * s;
                v[i + hd / 2] = x2 * c + x1 * s;
            }
        }
}

/* logits[T][V] of the sequence ids[0..T-1] from position 0. */
static void naive_forward(const struct naive *nv, const int32_t *ids, int T, double *logits)
{
    int H = nv->H, I = nv->I, nh = nv->nh, nkv = nv->nkv, hd = nv->hd;
    double *x = calloc((size_t)T * H, sizeof(double)), *q = calloc((size_t)T * nh * hd, 8);
    double *k = calloc((size_t)T * nkv * hd, 8), *v = calloc((size_t)T * nkv * hd, 8);
    double *a = calloc((size_t)T * nh * hd, 8), *o = calloc((size_t)T * H, 8);
    double *g = calloc((size_t)T * I, 8), *u = calloc((size_t)T * I, 8);
    int *mask = calloc((size_t)T * T, sizeof(int));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H; i++)
            x[t * H + i] = nv->emb[ids[t] * H + i];
    for (int l = 0; l < nv->L; l++) {
        nmat(q, x, T, nv->w[l][0], nh * hd, H);
        nmat(k, x, T, nv->w[l][1], nkv * hd, H);
        nmat(v, x, T, nv->w[l][2], nkv * hd, H);
        nnorm(q, T * nh, hd, nv->n[l][0], nv->eps);
        nnorm(k, T * nkv, hd, nv->n[l][1], nv->eps);
        /* Hybrid model (sliding_window set): RoPE only on sliding layers, global ones NoPE. */
        if (nv->sliding[l]) {
            nrope(q, T, nh, hd, nv->inv);
            nrope(k, T, nkv, hd, nv->inv);
        }
        /* The mask, written out: causal, and on sliding layers kv > q - window. */
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++)
                mask[i * T + j] = j <= i && (!nv->sliding[l] || j > i - nv->window);
        for (int h = 0; h < nh; h++) {
            int gk = h / (nh / nkv);
            for (int i = 0; i < T; i++) {
                double s[64], mx = -1e300, sum = 0;
                for (int j = 0; j < T; j++) {
                    s[j] = -INFINITY;
                    if (!mask[i * T + j])
                        continue;
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += q[(i * nh + h) * hd + e] * k[(j * nkv + gk) * hd + e];
                    s[j] = d / sqrt((double)hd);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j < T; j++) {
                    s[j] = mask[i * T + j] ? exp(s[j] - mx) : 0;
                    sum += s[j];
                }
                for (int e = 0; e < hd; e++) {
                    double acc = 0;
                    for (int j = 0; j < T; j++)
                        acc += s[j] / sum * v[(j * nkv + gk) * hd + e];
                    a[(i * nh + h) * hd + e] = acc;
                }
            }
        }
        nmat(o, a, T, nv->w[l][3], H, nh * hd);
        nnorm(o, T, H, nv->n[l][2], nv->eps);
        for (int i = 0; i < T * H; i++)
            x[i] += o[i];
        nmat(g, x, T, nv->w[l][4], I, H);
        nmat(u, x, T, nv->w[l][5], I, H);
        for (int i = 0; i < T * I; i++)
            g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        nmat(o, g, T, nv->w[l][6], H, I);
        nnorm(o, T, H, nv->n[l][3], nv->eps);
        for (int i = 0; i < T * H; i++)
            x[i] += o[i];
    }
    nnorm(x, T, H, nv->fnorm, nv->eps);
    nmat(logits, x, T, nv->head, nv->V, H);
    free(x), free(q), free(k), free(v), free(a), free(o), free(g), free(u), free(mask);
}

static void test_hybrid_vs_naive(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    struct synth_opts so;
    synth_opts_default(&so);
    so.hidden_size = 64;
    so.intermediate_size = 96;
    so.num_hidden_layers = 4;
    so.num_attention_heads = 4;
    so.num_key_value_heads = 2;
    so.head_dim = 16;
    so.vocab_size = 97;
    so.max_position_embeddings = 128;
    so.tie_word_embeddings = 0;
    so.sliding_window = 5;
    so.sliding_window_pattern = 2; /* layers 0 and 2 sliding (RoPE), 1 and 3 global (NoPE) */
    so.explicit_layer_types = 0;   /* exercise the default rule */
    so.style = CONFIG_STYLE_V5;
    so.std = 0.2f;              /* large enough that attention is far from uniform */
    so.max_shard_bytes = 20000; /* several shards + index */
    so.seed = 7;
    assert_int_equal(synth_write(&so, dir, &err), 0);
    struct model *m = load(dir, 0);
    assert_int_equal(m->cfg.style, CONFIG_STYLE_V5);
    assert_int_equal(m->cfg.sliding_window, 5);
    assert_int_equal(m->layers[0].window, 5);
    assert_int_equal(m->layers[1].window, 0);
    assert_int_equal(m->layers[0].rope, 1);
    assert_int_equal(m->layers[1].rope, 0);
    assert_int_equal(m->tied, 0);

    struct naive nv;
    naive_load(&nv, dir, 64, 96, 4, 2, 16, 97, 4, 5, 2);
    enum { T = 24 };
    int32_t ids[T];
    for (int t = 0; t < T; t++)
        ids[t] = (t * 37 + 11) % 97;
    double *ref = malloc(sizeof(double) * T * 97);
    naive_forward(&nv, ids, T, ref);
    float *lg = malloc(sizeof(float) * T * 97);
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, lg, NULL, &err), 0);
    double md = 0, mx = 0;
    for (int i = 0; i < T * 97; i++) {
        md = fabs(lg[i] - ref[i]) > md ? fabs(lg[i] - ref[i]) : md;
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
    }
    printf("# hybrid full sequence vs naive: max|diff| %.3g of max|logit| %.3g\n", md, mx);
    /* fp32 vs double over 4 layers of <= 96-term dot products: ~1e-6 relative; allow 1e-4. */
    assert_true(md <= 1e-4 * mx);

    /* KV-cache decoding: prefill 3, then one token at a time, each step against the naive. */
    struct model_kv *kv = model_kv_new(m, T);
    float *st = malloc(sizeof(float) * T * 97);
    assert_int_equal(model_forward(m, ids, 3, kv, MODEL_LOGITS_ALL, st, NULL, &err), 0);
    for (int t = 3; t < T; t++)
        assert_int_equal(
            model_forward(m, ids + t, 1, kv, MODEL_LOGITS_LAST, st + t * 97, NULL, &err), 0);
    md = 0;
    for (int i = 0; i < T * 97; i++)
        md = fabs(st[i] - ref[i]) > md ? fabs(st[i] - ref[i]) : md;
    printf("# hybrid KV-cache decode vs naive: max|diff| %.3g\n", md);
    assert_true(md <= 1e-4 * mx);
    /* The window matters: without it (all layers global) the logits change. */
    for (int l = 0; l < 4; l++)
        m->layers[l].window = 0;
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, lg, NULL, &err), 0);
    md = 0;
    for (int i = 0; i < T * 97; i++)
        md = fabs(lg[i] - ref[i]) > md ? fabs(lg[i] - ref[i]) : md;
    assert_true(md > 1e-2 * mx);
    model_kv_free(kv);
    free(st);
    free(lg);
    free(ref);
    naive_free(&nv);
    model_free(m);
    rm_rf(dir);
    free(dir);
}

static void test_v5_config_same_logits(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    char *dir = tmpdir_new(), *err = NULL;
    struct config c;
    assert_int_equal(config_load(&c, TINY "/config.json", &err), 0);
    assert_int_equal(config_convert_style(&c, CONFIG_STYLE_V5, &err), 0);
    char *p = path_join(dir, "config.json");
    assert_int_equal(config_write(&c, p, &err), 0);
    free(p);
    config_release(&c);
    /* Same weights through an absolute symlink. */
    p = path_join(dir, "model.safetensors");
    char *abs = path_abs(TINY "/model.safetensors");
    assert_non_null(abs);
    assert_int_equal(symlink(abs, p), 0);
    free(abs);
    free(p);
    struct model *a = load(TINY, 0), *b = load(dir, 0);
    assert_int_equal(a->cfg.style, CONFIG_STYLE_V4);
    assert_int_equal(b->cfg.style, CONFIG_STYLE_V5);
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = (i * 101 + 7) % 4096;
    float *la = malloc(sizeof(float) * 40 * 4096), *lb = malloc(sizeof(float) * 40 * 4096);
    assert_int_equal(model_forward(a, ids, 40, NULL, MODEL_LOGITS_ALL, la, NULL, &err), 0);
    assert_int_equal(model_forward(b, ids, 40, NULL, MODEL_LOGITS_ALL, lb, NULL, &err), 0);
    assert_memory_equal(la, lb, sizeof(float) * 40 * 4096);
    free(la);
    free(lb);
    model_free(a);
    model_free(b);
    rm_rf(dir);
    free(dir);
}

/* ---- layer API, pruning, saving -------------------------------------------------------- */

struct calib {
    int seen[MODEL_HOOK_COUNT];
    int dims[MODEL_HOOK_COUNT];
    float *qkv_in; /* copy of the q/k/v input */
    float *mlp_out, *gateup_in, *layer_out;
};

static int calib_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T, int n)
{
    struct calib *c = arg;
    (void)layer;
    c->seen[pt]++;
    c->dims[pt] = n;
    size_t bytes = sizeof(float) * (size_t)T * n;
    if (pt == MODEL_HOOK_QKV_IN)
        memcpy(c->qkv_in, x, bytes);
    if (pt == MODEL_HOOK_MLP_OUT)
        memcpy(c->mlp_out, x, bytes);
    if (pt == MODEL_HOOK_GATEUP_IN)
        memcpy(c->gateup_in, x, bytes);
    if (pt == MODEL_HOOK_LAYER_OUT)
        memcpy(c->layer_out, x, bytes);
    return 0;
}

static int stop_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T, int n)
{
    (void)arg, (void)x, (void)T, (void)n;
    return layer == 1 && pt == MODEL_HOOK_DOWN_IN ? -ECANCELED : 0;
}

static void test_layer_api(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct model *m = load(TINY, 0);
    char *err = NULL;
    const int T = 33, H = 256, I = 1024, V = 4096;
    int32_t ids[33];
    for (int i = 0; i < T; i++)
        ids[i] = (i * 13 + 5) % V;
    /* Reference: hidden after every layer from model_forward. */
    float *full = malloc(sizeof(float) * T * V), *x = malloc(sizeof(float) * T * H);
    struct calib c = { { 0 },
                       { 0 },
                       malloc(sizeof(float) * T * H),
                       malloc(sizeof(float) * T * H),
                       malloc(sizeof(float) * T * H),
                       malloc(sizeof(float) * T * H) };
    struct model_hooks hk = { calib_hook, &c, 0 };
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, full, &hk, &err), 0);
    for (int p = 0; p < MODEL_HOOK_COUNT; p++)
        assert_int_equal(c.seen[p], 4);
    assert_int_equal(c.dims[MODEL_HOOK_QKV_IN], H);
    assert_int_equal(c.dims[MODEL_HOOK_O_IN], 4 * 64);
    assert_int_equal(c.dims[MODEL_HOOK_DOWN_IN], I);
    /* Relation of MLP_OUT to the stream: out = gateup_in + post_ffn_norm(mlp_out). */
    int nn;
    const float *pf = model_norm(m, 3, MODEL_NORM_POST_FFN, &nn);
    assert_int_equal(nn, H);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++)
            ss += (double)c.mlp_out[t * H + i] * c.mlp_out[t * H + i];
        double inv = 1 / sqrt(ss / H + 1e-5);
        for (int i = 0; i < H; i++) {
            double want = c.gateup_in[t * H + i] + pf[i] * c.mlp_out[t * H + i] * inv;
            assert_true(fabs(c.layer_out[t * H + i] - want) <= 1e-4 * (1 + fabs(want)));
        }
    }

    /* Calibration loop: embed, layer by layer, swap weights through fp32 (exact for F32 and
     * for BF16 re-rounding of BF16 values), re-run: identical to the unmodified forward. */
    assert_int_equal(model_embed(m, ids, T, x, &err), 0);
    float *w = malloc(sizeof(float) * I * H);
    for (int l = 0; l < m->n_layers; l++) {
        memset(c.seen, 0, sizeof(c.seen));
        float *x0 = malloc(sizeof(float) * T * H);
        memcpy(x0, x, sizeof(float) * T * H);
        hk.mask = (1u << MODEL_HOOK_QKV_IN) | (1u << MODEL_HOOK_DOWN_IN);
        assert_int_equal(model_layer_forward(m, l, x, T, 0, NULL, &hk, &err), 0);
        assert_int_equal(c.seen[MODEL_HOOK_QKV_IN], 1);
        assert_int_equal(c.seen[MODEL_HOOK_O_IN], 0); /* masked out */
        assert_memory_equal(c.qkv_in, x0, sizeof(float) * T * H);
        for (int k = 0; k < MODEL_LIN_COUNT; k++) {
            assert_int_equal(model_linear_get_f32(m, l, (enum model_lin)k, w, &err), 0);
            assert_int_equal(model_linear_set_f32(m, l, (enum model_lin)k, w,
                                                  k % 2 ? KERN_F32 : KERN_BF16, &err),
                             0);
        }
        memcpy(x, x0, sizeof(float) * T * H);
        assert_int_equal(model_layer_forward(m, l, x, T, 0, NULL, NULL, &err), 0);
        free(x0);
    }
    assert_int_equal(model_final_norm(m, x, T, &err), 0);
    float *lg = malloc(sizeof(float) * T * V);
    assert_int_equal(model_lm_head(m, x, T, lg, &err), 0);
    assert_memory_equal(lg, full, sizeof(float) * T * V);

    /* A changed weight changes the output; a replaced linear of the wrong shape is refused. */
    assert_int_equal(model_linear_get_f32(m, 2, MODEL_LIN_DOWN, w, &err), 0);
    for (int i = 0; i < H * I; i++)
        w[i] *= 0.5f;
    assert_int_equal(model_linear_set_f32(m, 2, MODEL_LIN_DOWN, w, KERN_F32, &err), 0);
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, lg, NULL, &err), 0);
    assert_true(memcmp(lg, full, sizeof(float) * T * V) != 0);
    struct linear bad;
    linear_init_dense_take(&bad, 3, 3, KERN_F32, calloc(9, sizeof(float)));
    assert_int_equal(model_linear_replace(m, 0, MODEL_LIN_Q, &bad, &err), -EINVAL);
    assert_non_null(strstr(err, "replacement is [3, 3], expected [256, 256]"));
    free(err);
    err = NULL;
    linear_release(&bad);
    struct linear good;
    float *wq = malloc(sizeof(float) * H * H);
    assert_int_equal(model_linear_get_f32(m, 0, MODEL_LIN_Q, wq, &err), 0);
    linear_init_dense_take(&good, H, H, KERN_F32, wq);
    assert_int_equal(model_linear_replace(m, 0, MODEL_LIN_Q, &good, &err), 0);
    assert_null(good.owned);

    /* A hook can stop the forward. */
    struct model_hooks stop = { stop_hook, NULL, 0 };
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_NONE, NULL, &stop, &err),
                     -ECANCELED);
    assert_non_null(strstr(err, "layer 1: forward stopped by a hook"));
    free(err);
    err = NULL;
    /* Bad token ids and layer indices are errors, not crashes. */
    int32_t bad_ids[2] = { 1, 4096 };
    assert_int_equal(model_forward(m, bad_ids, 2, NULL, MODEL_LOGITS_LAST, lg, NULL, &err),
                     -EINVAL);
    assert_non_null(strstr(err, "token id 4096 at position 1 is outside the vocabulary"));
    free(err);
    err = NULL;
    assert_int_equal(model_layer_forward(m, 4, x, T, 0, NULL, NULL, &err), -EINVAL);
    free(err);
    free(w);
    free(lg);
    free(x);
    free(full);
    free(c.qkv_in);
    free(c.mlp_out);
    free(c.gateup_in);
    free(c.layer_out);
    model_free(m);
}

static void test_prune_save_reload(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct model *m = load(TINY, 0);
    char *err = NULL, *dir = tmpdir_new();
    const int T = 20, V = 4096, H = 256;
    int32_t ids[20];
    for (int i = 0; i < T; i++)
        ids[i] = (i * 31 + 3) % V;
    /* Expected: embedding, layers 0, 2, 3, final norm, head. */
    float *x = malloc(sizeof(float) * T * H), *want = malloc(sizeof(float) * T * V);
    assert_int_equal(model_embed(m, ids, T, x, &err), 0);
    int keep[3] = { 0, 2, 3 };
    for (int i = 0; i < 3; i++)
        assert_int_equal(model_layer_forward(m, keep[i], x, T, 0, NULL, NULL, &err), 0);
    assert_int_equal(model_final_norm(m, x, T, &err), 0);
    assert_int_equal(model_lm_head(m, x, T, want, &err), 0);

    assert_int_equal(model_keep_layers(m, keep, 3, &err), 0);
    assert_int_equal(m->n_layers, 3);
    assert_int_equal(m->cfg.num_hidden_layers, 3);
    assert_int_equal(m->layers[1].src_index, 2);
    float *got = malloc(sizeof(float) * T * V);
    assert_int_equal(model_forward(m, ids, T, NULL, MODEL_LOGITS_ALL, got, NULL, &err), 0);
    assert_memory_equal(got, want, sizeof(float) * T * V);

    /* Save sharded as BF16 (exact: every weight is bf16), reload, same logits. */
    struct model_save_opts so = { 3000000, ST_BF16, 1 };
    assert_int_equal(model_save(m, dir, &so, &err), 0);
    char *idx = path_join(dir, "model.safetensors.index.json");
    assert_true(is_file(idx));
    free(idx);
    char *tok = path_join(dir, "tokenizer.json");
    assert_true(is_file(tok));
    free(tok);
    struct model *r = load(dir, 0);
    assert_int_equal(r->n_layers, 3);
    assert_int_equal(r->cfg.layer_types_explicit, 1);
    assert_int_equal(model_forward(r, ids, T, NULL, MODEL_LOGITS_ALL, got, NULL, &err), 0);
    assert_memory_equal(got, want, sizeof(float) * T * V);
    /* The written config is the pruned one; layer 3 does not exist in the files. */
    struct st_dir *d;
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    assert_non_null(st_dir_find(d, "model.layers.2.mlp.down_proj.weight"));
    assert_null(st_dir_find(d, "model.layers.3.mlp.down_proj.weight"));
    st_dir_free(d);

    /* Editing norm weights: doubling the final norm doubles every logit. */
    int n;
    float *fn = model_norm(r, 0, MODEL_NORM_FINAL, &n);
    assert_int_equal(n, H);
    for (int i = 0; i < n; i++)
        fn[i] *= 2.0f;
    float *dbl = malloc(sizeof(float) * T * V);
    assert_int_equal(model_forward(r, ids, T, NULL, MODEL_LOGITS_ALL, dbl, NULL, &err), 0);
    for (int i = 0; i < T * V; i++)
        assert_true(fabsf(dbl[i] - 2 * got[i]) <= 1e-5f * (1 + fabsf(got[i])));
    assert_null(model_norm(r, 3, MODEL_NORM_Q, &n));
    int bad_keep[2] = { 1, 1 };
    assert_true(model_keep_layers(r, bad_keep, 2, &err) < 0);
    free(err);
    free(dbl);
    model_free(r);
    free(got);
    free(want);
    free(x);
    model_free(m);
    rm_rf(dir);
    free(dir);
}

static void test_load_errors(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    struct model *m = NULL;
    assert_true(model_load(&m, dir, NULL, &err) < 0);
    assert_non_null(strstr(err, "cannot read"));
    assert_null(m);
    free(err);
    err = NULL;
    /* A valid tiny synthetic model, then break it in several ways. */
    struct synth_opts so;
    synth_opts_default(&so);
    so.hidden_size = 32;
    so.intermediate_size = 48;
    so.num_hidden_layers = 2;
    so.num_attention_heads = 2;
    so.num_key_value_heads = 1;
    so.head_dim = 16;
    so.vocab_size = 50;
    so.max_shard_bytes = 0;
    assert_int_equal(synth_write(&so, dir, &err), 0);
    m = load(dir, 0);
    model_free(m);
    m = NULL;
    /* Remove one tensor. */
    struct st_dir *d;
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    int n = st_dir_count(d), k = 0;
    struct st_wtensor *ts = calloc((size_t)n, sizeof(*ts));
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = st_dir_tensor(d, i);
        if (strcmp(t->name, "model.layers.1.mlp.up_proj.weight") == 0)
            continue;
        ts[k].name = t->name;
        ts[k].dtype = t->dtype;
        ts[k].ndim = t->ndim;
        memcpy(ts[k].shape, t->shape, sizeof(t->shape));
        ts[k].data = t->data;
        k++;
    }
    char *other = tmpdir_new();
    char *cfgsrc = path_join(dir, "config.json"), *cfgdst = path_join(other, "config.json");
    assert_int_equal(file_copy(cfgsrc, cfgdst), 0);
    assert_int_equal(st_write_dir(other, ts, k, 0, NULL, NULL, &err), 0);
    assert_true(model_load(&m, other, NULL, &err) < 0);
    assert_non_null(strstr(err, "missing tensor 'model.layers.1.mlp.up_proj.weight'"));
    free(err);
    err = NULL;
    /* A quantized-looking checkpoint. */
    struct st_wtensor q = { .name = "model.layers.1.mlp.up_proj.weight_packed",
                            .dtype = ST_I32,
                            .ndim = 2,
                            .shape = { 48, 4 } };
    int32_t packed[48 * 4] = { 0 };
    q.data = packed;
    ts[k] = q;
    assert_int_equal(st_write_dir(other, ts, k + 1, 0, NULL, NULL, &err), 0);
    assert_true(model_load(&m, other, NULL, &err) < 0);
    assert_non_null(strstr(err, "stored quantized (weight_packed)"));
    free(err);
    err = NULL;
    /* A wrong shape: claim the up_proj is [47, 32]. */
    static uint16_t wrong_data[47 * 32];
    struct st_wtensor wrong = { .name = "model.layers.1.mlp.up_proj.weight",
                                .dtype = ST_BF16,
                                .ndim = 2,
                                .shape = { 47, 32 },
                                .data = wrong_data };
    ts[k] = wrong;
    assert_int_equal(st_write_dir(other, ts, k + 1, 0, NULL, NULL, &err), 0);
    assert_true(model_load(&m, other, NULL, &err) < 0);
    assert_non_null(strstr(err, "tensor 'model.layers.1.mlp.up_proj.weight' should have shape "
                                "[48, 32]"));
    free(err);
    st_dir_free(d);
    free(ts);
    free(cfgsrc);
    free(cfgdst);
    rm_rf(other);
    free(other);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    /* The acceptance tests need the checked-in tiny-a model (tests are run from the root). */
    if (!is_file(TINY "/model.safetensors") || !is_file(GOLDEN)) {
        printf("SKIP %s or %s missing (run from the repository root)\n", TINY, GOLDEN);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_logits_and_hidden),
        cmocka_unit_test(test_greedy_and_kv),
        cmocka_unit_test(test_hybrid_vs_naive),
        cmocka_unit_test(test_v5_config_same_logits),
        cmocka_unit_test(test_layer_api),
        cmocka_unit_test(test_prune_save_reload),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_perplexity),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
