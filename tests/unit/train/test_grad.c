/*
 * test_grad: the trainable model of worker/train/grad.c.
 *
 * Proves:
 *   1. tnet_logits equals the engine's fp32 forward (model_forward) on the 320 golden ids of
 *      tiny-a within 1e-5 of max|logit| (the same kernels in the same order on the same fp32
 *      values; measured: identical), and the transformers goldens within the engine's bound
 *      (2% of max|logit|, argmax at >= 99%; bf16 GPU reference, docs/engine.md);
 *   2. tnet_loss_grad against central finite differences of a double-precision forward written
 *      here from the definition (spec 1.3), for CE and for KL+CE with a mask:
 *      a. on a synthetic hybrid model (sliding window 4, global NoPE layers, untied head,
 *         random weights of std 0.3 so every path carries gradient): 8 random coordinates of
 *         every parameter;
 *         and a 150-token sequence (three head chunks, the middle one masked out) with KD;
 *      b. on tiny-a (the trained model): 2 coordinates of every parameter of layers 0 and 3,
 *         the embedding (a row in the sequence and a random one) and the final norm.
 *      FD: h = 1e-4 * max(1, |w|) in double (truncation ~1e-8 relative). Bound:
 *      |g - fd| <= 1e-4 |fd| + 1e-4 * rms(g of the tensor): the fp32 forward and backward
 *      round every op at 2^-24 (6e-8) and sum thousands of terms; measured worst
 *      |g - fd| / (|fd| + rms) = 5.9e-6 (synthetic) and 3.8e-6 (tiny-a), a 17x margin;
 *   3. the gradients of the fast kernels (KERN_IMPL_CPU) equal the references' (KERN_IMPL_REF)
 *      within 1e-4 of each tensor's max|g| (fp32 sums against double ones);
 *   4. PyTorch autograd (float64, tests/tools/make_grad_goldens.py) on tiny-a (48 tokens) and
 *      on a small hybrid model made by transformers (sliding-window RoPE layers, a global NoPE
 *      layer, GQA, untied head; 40 tokens), CE and KD: loss within 1e-5 relative, each tensor's
 * gradient norm within 1e-4 relative, the stored subset of every gradient within 1e-4 of the
 * tensor's max|g| + 1e-4 |g| (fp32 against float64; measured worst: norm 2.9e-6, element 5.4e-6 of
 * max|g|);
 *   5. gradients accumulate across calls, a mask with no counted position gives loss 0 and no
 *      gradient, bad ids and shapes are clear errors;
 *   6. tnet_save writes a checkpoint the engine loads with the (BF16-rounded) weights.
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

#include "common/st.h"
#include "common/util.h"
#include "kernels/par.h"
#include "worker/engine/model.h"
#include "worker/engine/synth.h"
#include "worker/train/grad.h"
#include "tests/unit/fixture.h"

#define GOLDEN  "tests/data/tiny-a/golden.safetensors"
#define GGOLDEN "tests/data/grad/tiny_grads.safetensors"
#define HYBRID  "tests/data/grad/hybrid"
#define HGOLDEN "tests/data/grad/hybrid_grads.safetensors"

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double rnd_normal(void)
{
    double u1 = ((double)(rnd_u64() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rnd_u64() >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int have_tiny(void)
{
    if (!is_file(TINY "/model.safetensors") || !is_file(GOLDEN) || !is_file(VALIDS)) {
        printf("SKIP tiny-a data missing\n");
        return 0;
    }
    return 1;
}

static struct tnet *load(const char *dir)
{
    char *err = NULL;
    struct tnet *t = tnet_load(dir, &err);
    if (!t)
        printf("tnet_load %s: %s\n", dir, err);
    assert_non_null(t);
    return t;
}

static int32_t *read_ids(int n)
{
    char *buf;
    size_t len;
    assert_int_equal(file_read_all(VALIDS, &buf, &len), 0);
    assert_true(len >= 4 * (size_t)n);
    int32_t *ids = malloc(sizeof(int32_t) * n);
    memcpy(ids, buf, sizeof(int32_t) * n);
    free(buf);
    return ids;
}

/* ---- a double-precision forward from the definition (spec 1.3) --------------------------- */

struct dnet {
    const struct config *c;
    int L, H, I, nh, nkv, hd, V;
    double eps, scale;
    float inv[256];
    double *embed, *norm, *head;
    double *embed_const; /* unperturbed copy: the pad token's lookup passes no gradient */
    int pad;
    double **lw; /* [L * 11]: q k v o qn kn pa g u d pf */
};

static const char *dslots[11] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",           "self_attn.o_proj",
    "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",   "mlp.gate_proj",
    "mlp.up_proj",      "mlp.down_proj",    "post_feedforward_layernorm",
};

/* Double copies of the tnet's weights, one per parameter index (dp[i]). */
static double **dcopy(struct tnet *t)
{
    int np = tnet_nparams(t);
    double **dp = calloc((size_t)np, sizeof(double *));
    for (int i = 0; i < np; i++) {
        struct tparam *p = tnet_param(t, i);
        dp[i] = malloc(sizeof(double) * p->n);
        for (size_t j = 0; j < p->n; j++)
            dp[i][j] = p->w[j];
    }
    return dp;
}

static int pindex(struct tnet *t, const char *name)
{
    for (int i = 0; i < tnet_nparams(t); i++)
        if (strcmp(tnet_param(t, i)->name, name) == 0)
            return i;
    return -1;
}

static void dnet_init(struct dnet *d, struct tnet *t, double **dp)
{
    const struct config *c = tnet_config(t);
    d->c = c;
    d->L = c->num_hidden_layers, d->H = c->hidden_size, d->I = c->intermediate_size;
    d->nh = c->num_attention_heads, d->nkv = c->num_key_value_heads, d->hd = c->head_dim;
    d->V = c->vocab_size;
    d->eps = (float)c->rms_norm_eps;
    d->scale = (float)pow((double)d->hd, -0.5);
    config_rope_inv_freq(c, d->inv);
    d->embed = dp[pindex(t, "model.embed_tokens.weight")];
    size_t ne = (size_t)d->V * d->H;
    d->embed_const = malloc(sizeof(double) * ne);
    memcpy(d->embed_const, d->embed, sizeof(double) * ne);
    d->pad = c->pad_token_id;
    d->norm = dp[pindex(t, "model.norm.weight")];
    int h = pindex(t, "lm_head.weight");
    d->head = h >= 0 ? dp[h] : d->embed;
    d->lw = calloc((size_t)d->L * 11, sizeof(double *));
    for (int l = 0; l < d->L; l++)
        for (int s = 0; s < 11; s++) {
            char name[128];
            snprintf(name, sizeof(name), "model.layers.%d.%s.weight", l, dslots[s]);
            int i = pindex(t, name);
            assert_true(i >= 0);
            d->lw[l * 11 + s] = dp[i];
        }
}

static void dmm(double *y, const double *x, int T, const double *w, int out, int in)
{
    for (int t = 0; t < T; t++)
        for (int o = 0; o < out; o++) {
            double a = 0;
            for (int i = 0; i < in; i++)
                a += x[(size_t)t * in + i] * w[(size_t)o * in + i];
            y[(size_t)t * out + o] = a;
        }
}

static void drms(double *y, const double *x, const double *w, int rows, int n, double eps)
{
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += x[(size_t)r * n + i] * x[(size_t)r * n + i];
        double inv = 1.0 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] = w[i] * x[(size_t)r * n + i] * inv;
    }
}

static void drope(double *x, int T, int nh, int hd, const float *inv)
{
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            double *v = x + ((size_t)t * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                float ang = (float)t * inv[i];
                double c = cos((double)ang), s = sin((double)ang), a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

/* The loss of grad.h's struct tloss, from the definition. */
static double dloss(const struct dnet *d, const int32_t *ids, int T, const struct tloss *L)
{
    int H = d->H, I = d->I, nh = d->nh, nkv = d->nkv, hd = d->hd, V = d->V;
    int qd = nh * hd, kd = nkv * hd, rep = nh / nkv;
    double *x = malloc(sizeof(double) * T * H), *q = malloc(sizeof(double) * T * qd);
    double *k = malloc(sizeof(double) * T * kd), *v = malloc(sizeof(double) * T * kd);
    double *att = malloc(sizeof(double) * T * qd), *o = malloc(sizeof(double) * T * H);
    double *on = malloc(sizeof(double) * T * H), *g = malloc(sizeof(double) * T * I);
    double *u = malloc(sizeof(double) * T * I), *lg = malloc(sizeof(double) * V);
    double *sc = malloc(sizeof(double) * T);
    for (int t = 0; t < T; t++)
        memcpy(x + (size_t)t * H,
               (ids[t] == d->pad ? d->embed_const : d->embed) + (size_t)ids[t] * H,
               sizeof(double) * H);
    for (int l = 0; l < d->L; l++) {
        double **w = d->lw + l * 11;
        int window = config_layer_window(d->c, l);
        dmm(q, x, T, w[0], qd, H);
        dmm(k, x, T, w[1], kd, H);
        dmm(v, x, T, w[2], kd, H);
        drms(q, q, w[4], T * nh, hd, d->eps);
        drms(k, k, w[5], T * nkv, hd, d->eps);
        if (config_layer_rope(d->c, l)) {
            drope(q, T, nh, hd, d->inv);
            drope(k, T, nkv, hd, d->inv);
        }
        for (int t = 0; t < T; t++)
            for (int h = 0; h < nh; h++) {
                int gi = h / rep;
                double m = -INFINITY, z = 0;
                for (int j = 0; j < T; j++) {
                    int vis = j <= t && (window == 0 || j > t - window);
                    double a = 0;
                    for (int i = 0; i < hd; i++)
                        a += q[((size_t)t * nh + h) * hd + i] * k[((size_t)j * nkv + gi) * hd + i];
                    sc[j] = vis ? a * d->scale : -INFINITY;
                    m = fmax(m, sc[j]);
                }
                for (int j = 0; j < T; j++)
                    z += (sc[j] = exp(sc[j] - m));
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    for (int j = 0; j < T; j++)
                        a += sc[j] / z * v[((size_t)j * nkv + gi) * hd + i];
                    att[((size_t)t * nh + h) * hd + i] = a;
                }
            }
        dmm(o, att, T, w[3], H, qd);
        drms(on, o, w[6], T, H, d->eps);
        for (int i = 0; i < T * H; i++)
            x[i] += on[i];
        dmm(g, x, T, w[7], I, H);
        dmm(u, x, T, w[8], I, H);
        for (int i = 0; i < T * I; i++)
            g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
        dmm(o, g, T, w[9], H, I);
        drms(on, o, w[10], T, H, d->eps);
        for (int i = 0; i < T * H; i++)
            x[i] += on[i];
    }
    drms(x, x, d->norm, T, H, d->eps);
    double ce = 0, kl = 0, cw = L && L->teacher_logp ? L->ce_weight : 1.0;
    double tau = L && L->teacher_logp ? L->temperature : 1.0;
    int n = 0;
    for (int t = 0; t < T - 1; t++) {
        if (L && L->mask && !L->mask[t])
            continue;
        n++;
        dmm(lg, x + (size_t)t * H, 1, d->head, V, H);
        double m = -INFINITY, z = 0;
        for (int i = 0; i < V; i++)
            m = fmax(m, lg[i]);
        for (int i = 0; i < V; i++)
            z += exp(lg[i] - m);
        ce += m + log(z) - lg[ids[t + 1]];
        if (cw < 1.0) {
            const float *tl = L->teacher_logp + (size_t)t * V;
            m = -INFINITY, z = 0;
            for (int i = 0; i < V; i++)
                m = fmax(m, lg[i] / tau);
            for (int i = 0; i < V; i++)
                z += exp(lg[i] / tau - m);
            for (int i = 0; i < V; i++)
                kl += exp((double)tl[i]) * (tl[i] - (lg[i] / tau - m - log(z)));
        }
    }
    free(x), free(q), free(k), free(v), free(att), free(o), free(on), free(g), free(u);
    free(lg), free(sc);
    return n ? cw * ce / n + (1 - cw) * tau * tau * kl / n : 0.0;
}

/* Central difference of dloss in parameter pi, flat index j (dp is restored). */
static double fd_at(const struct dnet *d, double **dp, int pi, size_t j, const int32_t *ids, int T,
                    const struct tloss *L)
{
    double w = dp[pi][j], h = 1e-4 * fmax(1.0, fabs(w));
    dp[pi][j] = w + h;
    double a = dloss(d, ids, T, L);
    dp[pi][j] = w - h;
    double b = dloss(d, ids, T, L);
    dp[pi][j] = w;
    return (a - b) / (2 * h);
}

static double rms_of(const float *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    return sqrt(s / (double)(n ? n : 1));
}

/* Checks coordinates coords[0..nc) of parameter pi; returns the number of failures and raises
 * *worst to the largest |g - fd| / (|fd| + rms). */
static int check_coords(struct tnet *t, const struct dnet *d, double **dp, int pi,
                        const size_t *coords, int nc, const int32_t *ids, int T,
                        const struct tloss *L, const char *tag, double *worst)
{
    struct tparam *p = tnet_param(t, pi);
    double rms = rms_of(p->g, p->n);
    int bad = 0;
    for (int c = 0; c < nc; c++) {
        size_t j = coords[c];
        double fd = fd_at(d, dp, pi, j, ids, T, L), g = p->g[j];
        double allowed = 1e-4 * fabs(fd) + 1e-4 * rms, r = fabs(g - fd) / (fabs(fd) + rms);
        if (r > *worst)
            *worst = r;
        if (!(fabs(g - fd) <= allowed)) {
            printf("%s %s[%zu]: grad %.9g, finite difference %.9g (|d| %.3g, allowed %.3g)\n", tag,
                   p->name, j, g, fd, fabs(g - fd), allowed);
            bad++;
        }
    }
    return bad;
}

static void dfree(double **dp, int np, struct dnet *d)
{
    for (int i = 0; i < np; i++)
        free(dp[i]);
    free(dp);
    free(d->lw);
    free(d->embed_const);
}

/* ---- 1: logits ------------------------------------------------------------------------------ */

static void test_logits(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct tnet *t = load(TINY);
    struct model *m = NULL;
    char *err = NULL;
    struct model_opts o = { 0, KERN_IMPL_CPU, 0 };
    assert_int_equal(model_load(&m, TINY, &o, &err), 0);
    struct st_file *g;
    assert_int_equal(st_file_open(&g, GOLDEN, &err), 0);
    const struct st_tensor *gi = st_file_find(g, "input_ids"), *gl = st_file_find(g, "logits");
    assert_non_null(gi);
    assert_non_null(gl);
    const int T = 320, V = tnet_vocab(t);
    assert_int_equal(V, 4096);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    assert_int_equal(tnet_logits(t, gi->data, T, a, &err), 0);
    assert_int_equal(model_forward(m, gi->data, T, NULL, MODEL_LOGITS_ALL, b, NULL, &err), 0);
    const float *gold = gl->data;
    double md = 0, mg = 0, ml = 0;
    int agree = 0;
    for (int s = 0; s < T; s++) {
        int am = 0, ag = 0;
        for (int v = 0; v < V; v++) {
            size_t i = (size_t)s * V + v;
            md = fmax(md, fabs(a[i] - b[i]));
            mg = fmax(mg, fabs(a[i] - gold[i]));
            ml = fmax(ml, fabs(gold[i]));
            am = a[i] > a[(size_t)s * V + am] ? v : am;
            ag = gold[i] > gold[(size_t)s * V + ag] ? v : ag;
        }
        agree += am == ag;
    }
    printf("# tnet vs engine: max|d| %.3g; vs transformers: max|d| %.4f = %.3f%% of %.3f, argmax "
           "%d/%d\n",
           md, mg, 100 * mg / ml, ml, agree, T);
    assert_true(md <= 1e-5 * ml);
    assert_true(mg <= 0.02 * ml);
    assert_true(agree >= (int)ceil(0.99 * T));
    free(a), free(b);
    st_file_free(g);
    model_free(m);
    tnet_free(t);
}

/* ---- 2a, 3: finite differences on a synthetic hybrid model; REF vs CPU -------------------- */

static char *tmpdir_new(void)
{
    char tmpl[] = "/tmp/exaq-grad-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return xstrdup(d);
}

static void make_synth(const char *dir)
{
    struct synth_opts so;
    char *err = NULL;
    synth_opts_default(&so);
    so.hidden_size = 32;
    so.intermediate_size = 48;
    so.num_hidden_layers = 3;
    so.num_attention_heads = 4;
    so.num_key_value_heads = 2;
    so.head_dim = 8;
    so.vocab_size = 61;
    so.max_position_embeddings = 64;
    so.tie_word_embeddings = 0;
    so.sliding_window = 4;
    so.sliding_window_pattern = 3; /* layers 0, 1 sliding (RoPE), 2 global (NoPE) */
    so.std = 0.3f;
    so.seed = 7;
    so.max_shard_bytes = 0;
    assert_int_equal(synth_write(&so, dir, &err), 0);
}

/* Random teacher log-probabilities at temperature tau, [T][V]. */
static float *rand_teacher(int T, int V, double tau)
{
    float *tl = malloc(sizeof(float) * T * V);
    for (int s = 0; s < T; s++) {
        double m = -INFINITY, z = 0, x[256];
        for (int v = 0; v < V; v++)
            m = fmax(m, x[v] = 2.0 * rnd_normal() / tau);
        for (int v = 0; v < V; v++)
            z += exp(x[v] - m);
        for (int v = 0; v < V; v++)
            tl[(size_t)s * V + v] = (float)(x[v] - m - log(z));
    }
    return tl;
}

static void test_fd_synth(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    make_synth(dir);
    struct tnet *t = load(dir);
    const struct config *c = tnet_config(t);
    assert_int_equal(c->sliding_window, 4);
    assert_true(tnet_param_find(t, "lm_head.weight") != NULL);
    enum { T = 11 };
    int V = tnet_vocab(t);
    int32_t ids[T];
    for (int s = 0; s < T; s++)
        ids[s] = (int32_t)(rnd_u64() % (uint64_t)V);
    ids[4] = c->pad_token_id; /* the pad token's lookup passes no gradient (grad.h) */
    uint8_t mask[T] = { 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1 };
    float *tl = rand_teacher(T, V, 2.0);
    struct tloss ce = { NULL, NULL, 1.0f, 1.0f }, kd = { mask, tl, 2.0f, 0.3f };
    const struct tloss *losses[2] = { &ce, &kd };
    double **dp = dcopy(t);
    struct dnet d;
    dnet_init(&d, t, dp);
    int bad = 0, np = tnet_nparams(t);
    double worst = 0;
    for (int li = 0; li < 2; li++) {
        double loss, want = dloss(&d, ids, T, losses[li]);
        tnet_zero_grad(t);
        assert_int_equal(tnet_loss_grad(t, ids, T, losses[li], &loss, &err), 0);
        printf("# synth %s: loss %.7f (double forward %.7f)\n", li ? "kd" : "ce", loss, want);
        assert_true(fabs(loss - want) <= 1e-5 * fabs(want));
        for (int pi = 0; pi < np; pi++) {
            size_t coords[8], n = tnet_param(t, pi)->n;
            for (int k = 0; k < 8; k++)
                coords[k] = (size_t)(rnd_u64() % n);
            if (pi == 0) /* the pad token's row */
                coords[0] = (size_t)c->pad_token_id * tnet_param(t, 0)->cols + 1;
            bad += check_coords(t, &d, dp, pi, coords, 8, ids, T, losses[li],
                                li ? "synth kd" : "synth ce", &worst);
        }
        /* 3: the reference kernels give the same gradients. */
        float *gcpu = malloc(sizeof(float) * 2000000);
        size_t off = 0;
        for (int pi = 0; pi < np; pi++) {
            memcpy(gcpu + off, tnet_param(t, pi)->g, sizeof(float) * tnet_param(t, pi)->n);
            off += tnet_param(t, pi)->n;
        }
        tnet_set_impl(t, KERN_IMPL_REF);
        tnet_zero_grad(t);
        double lref;
        assert_int_equal(tnet_loss_grad(t, ids, T, losses[li], &lref, &err), 0);
        tnet_set_impl(t, KERN_IMPL_CPU);
        assert_true(fabs(lref - loss) <= 1e-5 * fabs(loss));
        off = 0;
        for (int pi = 0; pi < np; pi++) {
            struct tparam *p = tnet_param(t, pi);
            double mx = 0, md = 0;
            for (size_t j = 0; j < p->n; j++) {
                mx = fmax(mx, fabs(p->g[j]));
                md = fmax(md, fabs(p->g[j] - gcpu[off + j]));
            }
            if (md > 1e-4 * mx) {
                printf("ref vs cpu %s: max|d| %.3g of max %.3g\n", p->name, md, mx);
                bad++;
            }
            off += p->n;
        }
        free(gcpu);
    }
    printf("# synth: worst |g - fd| / (|fd| + rms) = %.3g\n", worst);
    assert_int_equal(bad, 0);
    dfree(dp, np, &d);
    free(tl);
    tnet_free(t);
    rm_rf(dir);
    free(dir);
}

/* A longer sequence: three head chunks (64 rows each), the middle one entirely masked out, the
 * sliding window far shorter than the sequence. KD with a mask; 2 coordinates per parameter. */
static void test_fd_synth_long(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    make_synth(dir);
    struct tnet *t = load(dir);
    enum { T = 150 };
    int V = tnet_vocab(t);
    int32_t ids[T];
    uint8_t mask[T];
    for (int s = 0; s < T; s++) {
        ids[s] = (int32_t)(rnd_u64() % (uint64_t)V);
        mask[s] = (uint8_t)((s < 64 || s >= 128) && s % 7 != 3);
    }
    float *tl = rand_teacher(T, V, 1.5);
    struct tloss kd = { mask, tl, 1.5f, 0.6f };
    double loss;
    tnet_zero_grad(t);
    assert_int_equal(tnet_loss_grad(t, ids, T, &kd, &loss, &err), 0);
    double **dp = dcopy(t);
    struct dnet d;
    dnet_init(&d, t, dp);
    double want = dloss(&d, ids, T, &kd);
    printf("# synth T=%d kd: loss %.7f (double forward %.7f)\n", T, loss, want);
    assert_true(fabs(loss - want) <= 1e-5 * fabs(want));
    int bad = 0, np = tnet_nparams(t);
    double worst = 0;
    for (int pi = 0; pi < np; pi++) {
        size_t n = tnet_param(t, pi)->n, coords[2] = { (size_t)(rnd_u64() % n), 0 };
        coords[1] = (size_t)(rnd_u64() % n);
        if (pi == 0) /* a token inside the masked chunk: later counted positions still see it */
            coords[1] = (size_t)ids[100] * tnet_param(t, 0)->cols;
        bad += check_coords(t, &d, dp, pi, coords, 2, ids, T, &kd, "synth long", &worst);
    }
    printf("# synth T=%d: worst |g - fd| / (|fd| + rms) = %.3g\n", T, worst);
    assert_int_equal(bad, 0);
    dfree(dp, np, &d);
    free(tl);
    tnet_free(t);
    rm_rf(dir);
    free(dir);
}

/* ---- 2b: finite differences on tiny-a ------------------------------------------------------ */

static void test_fd_tiny(void **state)
{
    (void)state;
    if (!have_tiny())
        skip();
    struct tnet *t = load(TINY);
    enum { T = SANITIZED ? 6 : 12 };
    int32_t *ids = read_ids(1000);
    const int32_t *seq = ids + 500;
    char *err = NULL;
    double loss;
    struct tloss ce = { NULL, NULL, 1.0f, 1.0f };
    tnet_zero_grad(t);
    assert_int_equal(tnet_loss_grad(t, seq, T, &ce, &loss, &err), 0);
    double **dp = dcopy(t);
    struct dnet d;
    dnet_init(&d, t, dp);
    double want = dloss(&d, seq, T, &ce);
    printf("# tiny-a ce over %d tokens: loss %.7f (double forward %.7f)\n", T, loss, want);
    assert_true(fabs(loss - want) <= 1e-5 * want);
    int bad = 0, np = tnet_nparams(t);
    double worst = 0;
    for (int pi = 0; pi < np; pi++) {
        struct tparam *p = tnet_param(t, pi);
        int in_layer0 = strncmp(p->name, "model.layers.0.", 15) == 0;
        int in_layer3 = strncmp(p->name, "model.layers.3.", 15) == 0;
        int is_embed = strcmp(p->name, "model.embed_tokens.weight") == 0;
        if (!in_layer0 && !in_layer3 && !is_embed && strcmp(p->name, "model.norm.weight"))
            continue;
        size_t coords[2] = { (size_t)(rnd_u64() % p->n), (size_t)(rnd_u64() % p->n) };
        if (is_embed) /* a coordinate of a row in the sequence: embedding and head paths */
            coords[0] = (size_t)seq[3] * p->cols + (size_t)(rnd_u64() % (uint64_t)p->cols);
        bad += check_coords(t, &d, dp, pi, coords, 2, seq, T, &ce, "tiny ce", &worst);
    }
    printf("# tiny-a: worst |g - fd| / (|fd| + rms) = %.3g\n", worst);
    assert_int_equal(bad, 0);
    dfree(dp, np, &d);
    free(ids);
    tnet_free(t);
}

/* ---- 4: PyTorch autograd goldens ------------------------------------------------------------ */

static const float *gget(struct st_file *g, const char *name, int64_t *n)
{
    const struct st_tensor *x = st_file_find(g, name);
    if (!x)
        printf("golden tensor '%s' missing\n", name);
    assert_non_null(x);
    if (n)
        *n = x->numel;
    return x->data;
}

static void check_torch(const char *model_dir, const char *golden)
{
    struct st_file *g;
    char *err = NULL;
    printf("# %s against %s\n", model_dir, golden);
    assert_int_equal(st_file_open(&g, golden, &err), 0);
    int64_t T, nt;
    const int32_t *ids = (const int32_t *)gget(g, "ids", &T);
    const int32_t *m32 = (const int32_t *)gget(g, "mask", NULL);
    const float *tl = gget(g, "teacher_logp", &nt);
    float tau = gget(g, "temperature", NULL)[0], cw = gget(g, "ce_weight", NULL)[0];
    struct tnet *t = load(model_dir);
    assert_int_equal(nt, T * tnet_vocab(t));
    uint8_t *mask = malloc((size_t)T);
    for (int s = 0; s < T; s++)
        mask[s] = (uint8_t)m32[s];
    struct tloss ce = { NULL, NULL, 1.0f, 1.0f }, kd = { mask, tl, tau, cw };
    const char *tags[2] = { "ce", "kd" };
    const struct tloss *losses[2] = { &ce, &kd };
    int bad = 0;
    for (int li = 0; li < 2; li++) {
        char name[160];
        double loss;
        tnet_zero_grad(t);
        assert_int_equal(tnet_loss_grad(t, ids, (int)T, losses[li], &loss, &err), 0);
        snprintf(name, sizeof(name), "%s.loss", tags[li]);
        double want = gget(g, name, NULL)[0];
        printf("# %s: loss %.7f, PyTorch %.7f\n", tags[li], loss, want);
        if (!(fabs(loss - want) <= 1e-5 * fabs(want)))
            bad++;
        double worst_norm = 0, worst_el = 0;
        for (int pi = 0; pi < tnet_nparams(t); pi++) {
            struct tparam *p = tnet_param(t, pi);
            int64_t ns;
            snprintf(name, sizeof(name), "%s.%s", tags[li], p->name);
            const float *sub = gget(g, name, &ns);
            snprintf(name, sizeof(name), "%s.norm.%s", tags[li], p->name);
            double wn = gget(g, name, NULL)[0], gn = 0, mx = 0;
            for (size_t j = 0; j < p->n; j++) {
                gn += (double)p->g[j] * p->g[j];
                mx = fmax(mx, fabs(p->g[j]));
            }
            gn = sqrt(gn);
            worst_norm = fmax(worst_norm, fabs(gn - wn) / wn);
            if (!(fabs(gn - wn) <= 1e-4 * wn)) {
                printf("%s %s: |g| %.7g, PyTorch %.7g\n", tags[li], p->name, gn, wn);
                bad++;
            }
            size_t stride = p->n / 1024 > 1 ? p->n / 1024 : 1;
            int64_t k = 0;
            for (size_t j = 0; j < p->n; j += stride, k++) {
                assert_true(k < ns);
                double d = fabs(p->g[j] - sub[k]);
                worst_el = fmax(worst_el, d / mx);
                if (!(d <= 1e-4 * mx + 1e-4 * fabs(sub[k]))) {
                    if (bad < 20)
                        printf("%s %s[%zu]: %.7g, PyTorch %.7g\n", tags[li], p->name, j, p->g[j],
                               sub[k]);
                    bad++;
                }
            }
            assert_int_equal(k, ns);
        }
        printf("# %s: worst gradient norm %.3g relative, worst element %.3g of max|g|\n", tags[li],
               worst_norm, worst_el);
    }
    assert_int_equal(bad, 0);
    free(mask);
    tnet_free(t);
    st_file_free(g);
}

static void test_torch_goldens(void **state)
{
    (void)state;
    if (!have_tiny() || !is_file(GGOLDEN))
        skip();
    check_torch(TINY, GGOLDEN);
}

static void test_torch_goldens_hybrid(void **state)
{
    (void)state;
    if (!is_file(HGOLDEN) || !is_file(HYBRID "/model.safetensors")) {
        printf("SKIP %s missing\n", HGOLDEN);
        skip();
    }
    struct tnet *t = load(HYBRID);
    const struct config *c = tnet_config(t);
    /* The shape the goldens promise: sliding, sliding, global NoPE; untied head. */
    assert_int_equal(c->num_hidden_layers, 3);
    assert_int_equal(config_layer_window(c, 0), 4);
    assert_int_equal(config_layer_window(c, 2), 0);
    assert_int_equal(config_layer_rope(c, 0), 1);
    assert_int_equal(config_layer_rope(c, 2), 0);
    assert_non_null(tnet_param_find(t, "lm_head.weight"));
    tnet_free(t);
    check_torch(HYBRID, HGOLDEN);
}

/* ---- 5: accumulation, masks, errors -------------------------------------------------------- */

static void test_accumulate_and_errors(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    make_synth(dir);
    struct tnet *t = load(dir);
    int32_t ids[6] = { 1, 5, 9, 2, 60, 3 };
    double l1, l2;
    tnet_zero_grad(t);
    assert_int_equal(tnet_loss_grad(t, ids, 6, NULL, &l1, &err), 0);
    struct tparam *p = tnet_param(t, 3);
    float *g1 = malloc(sizeof(float) * p->n);
    memcpy(g1, p->g, sizeof(float) * p->n);
    assert_int_equal(tnet_loss_grad(t, ids, 6, NULL, &l2, &err), 0);
    assert_true(l1 == l2);
    for (size_t j = 0; j < p->n; j++)
        assert_true(fabs(p->g[j] - 2 * g1[j]) <= 1e-6 * (fabs(g1[j]) + 1e-6));
    /* A mask with nothing counted (the last position never counts). */
    uint8_t none[6] = { 0, 0, 0, 0, 0, 1 };
    struct tloss L = { none, NULL, 1.0f, 1.0f };
    tnet_zero_grad(t);
    assert_int_equal(tnet_loss_grad(t, ids, 6, &L, &l1, &err), 0);
    assert_true(l1 == 0.0);
    for (int i = 0; i < tnet_nparams(t); i++)
        for (size_t j = 0; j < tnet_param(t, i)->n; j++)
            assert_true(tnet_param(t, i)->g[j] == 0.0f);
    /* Errors. */
    int32_t badid[3] = { 1, 61, 2 };
    assert_int_equal(tnet_loss_grad(t, badid, 3, NULL, &l1, &err), -1);
    assert_non_null(strstr(err, "outside the vocabulary"));
    free(err), err = NULL;
    assert_int_equal(tnet_loss_grad(t, ids, 1, NULL, &l1, &err), -1);
    free(err), err = NULL;
    float tlp[6 * 61] = { 0 };
    struct tloss badt = { NULL, tlp, 0.0f, 0.5f };
    assert_int_equal(tnet_loss_grad(t, ids, 6, &badt, &l1, &err), -1);
    assert_non_null(strstr(err, "temperature"));
    free(err), err = NULL;
    assert_null(tnet_load("/nonexistent-model-dir", &err));
    assert_non_null(err);
    free(err);
    free(g1);
    tnet_free(t);
    rm_rf(dir);
    free(dir);
}

/* ---- 6: save ------------------------------------------------------------------------------- */

static void test_save(void **state)
{
    (void)state;
    char *dir = tmpdir_new(), *err = NULL;
    make_synth(dir);
    char *out = path_join(dir, "out/model");
    struct tnet *t = load(dir);
    /* Change some weights (as a training step would). */
    for (int i = 0; i < tnet_nparams(t); i++) {
        struct tparam *p = tnet_param(t, i);
        for (size_t j = 0; j < p->n; j += 7)
            p->w[j] += 0.01f * (float)(j % 5);
    }
    assert_int_equal(tnet_save(t, dir, out, &err), 0);
    struct tnet *r = load(out);
    assert_int_equal(tnet_nparams(r), tnet_nparams(t));
    for (int i = 0; i < tnet_nparams(t); i++) {
        struct tparam *a = tnet_param(t, i), *b = tnet_param(r, i);
        assert_string_equal(a->name, b->name);
        assert_int_equal(a->n, b->n);
        for (size_t j = 0; j < a->n; j++)
            assert_true(b->w[j] == kern_round_bf16(a->w[j]));
    }
    /* The engine reads the same model. */
    struct model *m = NULL;
    struct model_opts o = { 0, KERN_IMPL_CPU, 0 };
    assert_int_equal(model_load(&m, out, &o, &err), 0);
    int32_t ids[9] = { 3, 1, 4, 1, 5, 9, 2, 6, 5 };
    int V = tnet_vocab(r);
    float *a = malloc(sizeof(float) * 9 * V), *b = malloc(sizeof(float) * 9 * V);
    assert_int_equal(tnet_logits(r, ids, 9, a, &err), 0);
    assert_int_equal(model_forward(m, ids, 9, NULL, MODEL_LOGITS_ALL, b, NULL, &err), 0);
    for (int i = 0; i < 9 * V; i++)
        assert_true(fabs(a[i] - b[i]) <= 1e-4 * (1 + fabs(b[i])));
    /* A source of another shape is refused. */
    char *other = path_join(dir, "other");
    struct synth_opts so;
    synth_opts_default(&so);
    so.hidden_size = 16, so.intermediate_size = 32, so.num_hidden_layers = 1;
    so.num_attention_heads = 2, so.num_key_value_heads = 1, so.head_dim = 8, so.vocab_size = 61;
    so.max_shard_bytes = 0;
    assert_int_equal(synth_write(&so, other, &err), 0);
    assert_int_equal(tnet_save(t, other, out, &err), -1);
    assert_non_null(strstr(err, "another shape"));
    free(err);
    free(a), free(b), free(other), free(out);
    model_free(m);
    tnet_free(r);
    tnet_free(t);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits),
        cmocka_unit_test(test_fd_synth),
        cmocka_unit_test(test_fd_synth_long),
        cmocka_unit_test(test_fd_tiny),
        cmocka_unit_test(test_torch_goldens),
        cmocka_unit_test(test_torch_goldens_hybrid),
        cmocka_unit_test(test_accumulate_and_errors),
        cmocka_unit_test(test_save),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
