/*
 * test_families: the pre-norm families of worker/engine/family.h (llama, qwen2, qwen3, mistral,
 * minicpm) against their references.
 *
 * tests/data/families/<family>/ holds a tiny random-weight checkpoint and golden.safetensors
 * made by tests/tools/make_families.py: transformers' own model class (minicpm: the reference
 * in tests/tools/minicpm_ref.py) in fp32 from the same BF16 weights. Proves, per family:
 *   1. logits of the two golden sequences: max|diff| <= 1e-3 of max|logit| (the engine's
 *      documented tolerance for fp32 goldens, docs/models.md) and the same argmax at >= 99% of
 *      positions (the measured values are printed);
 *   2. greedy generation through the KV cache reproduces the golden 12 tokens exactly;
 *   3. what the config row derives (sliding windows per layer, head_dim, biases, tying,
 *      MiniCPM's scalings) and that save + reload gives bit-identical logits (bias and norm
 *      tensor names written back);
 *   4. the pre-norm fold table: input_layernorm -> q/k/v, post_attention_layernorm -> gate/up,
 *      v -> o (qwen2: with its bias) and up -> down applied with random scales leave the
 *      logits unchanged (fp32 storage; 1e-4 of max|logit|), and an illegal pair is refused;
 *   5. synth's real shapes (llama-3.2-1b, qwen3-1.7b, minicpm-2b) have the released configs'
 *      dimensions, and a shrunk copy of each loads with its family's tensors;
 *   6. removing a layer of MiniCPM keeps scale_depth / sqrt(num_hidden_layers), so the kept
 *      layers compute what they did; an unknown model_type is a clear error.
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
#include "worker/compress/awq.h"
#include "worker/engine/family.h"
#include "worker/engine/model.h"
#include "worker/engine/synth.h"

#define FAM_DIR    "tests/data/families/"
#define TOL_REL    1e-3
#define TOL_ARGMAX 0.99

static struct model *load(const char *dir)
{
    struct model *m = NULL;
    char *err = NULL;
    int rc = model_load(&m, dir, NULL, &err);
    if (rc)
        printf("load %s: %s\n", dir, err);
    free(err);
    assert_int_equal(rc, 0);
    return m;
}

static const struct st_tensor *gt(struct st_file *g, const char *name)
{
    const struct st_tensor *t = st_file_find(g, name);
    if (!t)
        printf("golden tensor %s missing\n", name);
    assert_non_null(t);
    return t;
}

static int32_t argmax(const float *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

/* Logits of golden sequence s; returns a new [T][V] array and *T. */
static float *run_seq(struct model *m, struct st_file *g, int s, int *T, const int32_t **ids)
{
    char name[32];
    snprintf(name, sizeof(name), "ids_%d", s);
    const struct st_tensor *ti = gt(g, name);
    *T = (int)ti->shape[0];
    *ids = ti->data;
    float *lg = xmalloc(sizeof(float) * (size_t)*T * m->cfg.vocab_size);
    char *err = NULL;
    int rc = model_forward(m, *ids, *T, NULL, MODEL_LOGITS_ALL, lg, NULL, &err);
    if (rc)
        printf("forward: %s\n", err);
    assert_int_equal(rc, 0);
    return lg;
}

static void check_family(const char *fam)
{
    char dir[128], gpath[160];
    snprintf(dir, sizeof(dir), FAM_DIR "%s", fam);
    snprintf(gpath, sizeof(gpath), "%s/golden.safetensors", dir);
    struct st_file *g = NULL;
    char *err = NULL;
    assert_int_equal(st_file_open(&g, gpath, &err), 0);
    struct model *m = load(dir);
    assert_string_equal(m->cfg.fam->model_type, fam);
    int V = m->cfg.vocab_size;
    for (int s = 0; s < 2; s++) {
        int T;
        const int32_t *ids;
        float *lg = run_seq(m, g, s, &T, &ids);
        char name[32];
        snprintf(name, sizeof(name), "logits_%d", s);
        const struct st_tensor *tl = gt(g, name);
        assert_int_equal(tl->shape[0], T);
        assert_int_equal(tl->shape[1], V);
        const float *ref = tl->data;
        double dmax = 0, rmax = 0;
        int agree = 0;
        for (int t = 0; t < T; t++) {
            for (int v = 0; v < V; v++) {
                size_t i = (size_t)t * V + v;
                dmax = fmax(dmax, fabs((double)lg[i] - ref[i]));
                rmax = fmax(rmax, fabs((double)ref[i]));
            }
            agree += argmax(lg + (size_t)t * V, V) == argmax(ref + (size_t)t * V, V);
        }
        printf("%-8s seq %d: max|diff| %.3g of max|logit| %.3f (%.2e), argmax %d/%d\n", fam, s,
               dmax, rmax, dmax / rmax, agree, T);
        assert_true(rmax > 0.5); /* the goldens are not degenerate */
        assert_true(dmax <= TOL_REL * rmax);
        assert_true(agree >= TOL_ARGMAX * T);
        free(lg);
    }
    const struct st_tensor *tp = gt(g, "gen_prompt"), *tg = gt(g, "gen_ids");
    int np = (int)tp->shape[0], ng = (int)tg->shape[0];
    int32_t *out = xcalloc((size_t)ng, sizeof(int32_t));
    assert_int_equal(model_generate_greedy(m, tp->data, np, ng, out, &err), 0);
    const int32_t *want = tg->data;
    for (int i = 0; i < ng; i++) {
        if (out[i] != want[i])
            printf("%s: greedy token %d is %d, golden %d\n", fam, i, out[i], want[i]);
        assert_int_equal(out[i], want[i]);
    }
    printf("%-8s greedy %d/%d tokens equal\n", fam, ng, ng);

    /* Save and reload: the same logits bit for bit (norm and bias names written back). */
    char tmpl[] = "/tmp/exaq-fam-XXXXXX";
    char *tmp = mkdtemp(tmpl);
    assert_non_null(tmp);
    assert_int_equal(model_save(m, tmp, NULL, &err), 0);
    struct model *r = load(tmp);
    int T;
    const int32_t *ids;
    float *a = run_seq(m, g, 0, &T, &ids), *b = run_seq(r, g, 0, &T, &ids);
    assert_memory_equal(a, b, sizeof(float) * (size_t)T * V);
    free(a);
    free(b);
    model_free(r);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
    free(out);
    model_free(m);
    st_file_free(g);
}

static void test_llama(void **state)
{
    (void)state;
    check_family("llama");
    struct model *m = load(FAM_DIR "llama");
    assert_true(m->tied);
    assert_int_equal(m->cfg.rope.type, CONFIG_ROPE_LLAMA3);
    for (int l = 0; l < m->n_layers; l++) {
        assert_true(m->layers[l].rope);
        assert_int_equal(m->layers[l].window, 0);
        assert_non_null(model_norm(m, l, MODEL_NORM_INPUT, NULL));
        assert_null(model_norm(m, l, MODEL_NORM_POST_FFN, NULL));
        assert_null(model_norm(m, l, MODEL_NORM_Q, NULL));
        assert_null(model_bias(m, l, MODEL_LIN_Q, NULL));
    }
    model_free(m);
}

static void test_qwen2(void **state)
{
    (void)state;
    check_family("qwen2");
    struct model *m = load(FAM_DIR "qwen2");
    assert_false(m->tied);
    /* use_sliding_window with max_window_layers 2: only layer 2 slides (window 8). */
    assert_int_equal(m->layers[0].window, 0);
    assert_int_equal(m->layers[1].window, 0);
    assert_int_equal(m->layers[2].window, 8);
    int n = 0;
    assert_non_null(model_bias(m, 0, MODEL_LIN_V, &n));
    assert_int_equal(n, m->cfg.num_key_value_heads * m->cfg.head_dim);
    assert_null(model_bias(m, 0, MODEL_LIN_O, NULL));
    /* The biases matter: without the v bias the logits move far outside the tolerance. */
    float *bv = model_bias(m, 1, MODEL_LIN_V, &n);
    memset(bv, 0, sizeof(float) * (size_t)n);
    struct st_file *g = NULL;
    char *err = NULL;
    assert_int_equal(st_file_open(&g, FAM_DIR "qwen2/golden.safetensors", &err), 0);
    int T;
    const int32_t *ids;
    float *lg = run_seq(m, g, 0, &T, &ids);
    const float *ref = gt(g, "logits_0")->data;
    double dmax = 0;
    for (size_t i = 0; i < (size_t)T * m->cfg.vocab_size; i++)
        dmax = fmax(dmax, fabs((double)lg[i] - ref[i]));
    printf("qwen2 without one v bias: max|diff| %.3g\n", dmax);
    assert_true(dmax > 1e-2);
    free(lg);
    st_file_free(g);
    model_free(m);
}

static void test_qwen3(void **state)
{
    (void)state;
    check_family("qwen3");
    struct model *m = load(FAM_DIR "qwen3");
    assert_int_equal(m->cfg.head_dim, 32);
    assert_int_equal(model_linear(m, 0, MODEL_LIN_Q)->out, 4 * 32);
    assert_non_null(model_norm(m, 0, MODEL_NORM_Q, NULL));
    assert_int_equal(m->layers[0].window, 0);
    model_free(m);
}

static void test_mistral(void **state)
{
    (void)state;
    check_family("mistral");
    struct model *m = load(FAM_DIR "mistral");
    for (int l = 0; l < m->n_layers; l++) {
        assert_int_equal(m->layers[l].window, 8);
        assert_true(m->layers[l].rope);
    }
    model_free(m);
}

static void test_minicpm(void **state)
{
    (void)state;
    check_family("minicpm");
    struct model *m = load(FAM_DIR "minicpm");
    assert_true(m->tied);
    assert_float_equal(m->embed_scale, 3.0f, 1e-6);
    assert_float_equal(m->res_scale, (float)(1.4 / sqrt(3.0)), 1e-6);
    assert_float_equal(m->head_div, 4.0f, 1e-6);
    /* Dropping layer 1 keeps the per-branch scale (scale_depth rescaled in config.json). */
    float rs = m->res_scale;
    int keep[2] = { 0, 2 };
    char *err = NULL;
    assert_int_equal(model_keep_layers(m, keep, 2, &err), 0);
    assert_int_equal(m->cfg.num_hidden_layers, 2);
    assert_float_equal(m->res_scale, rs, 1e-6);
    char *json = config_print(&m->cfg);
    assert_non_null(strstr(json, "\"num_hidden_layers\": 2"));
    assert_null(strstr(json, "layer_types")); /* not a MiniCPM / Llama config key */
    free(json);
    model_free(m);
}

/* Every legal fold with random scales in [0.5, 2], applied to a model stored in fp32: the
 * function is unchanged. */
static void check_folds(const char *fam)
{
    char dir[128], gpath[160];
    snprintf(dir, sizeof(dir), FAM_DIR "%s", fam);
    snprintf(gpath, sizeof(gpath), "%s/golden.safetensors", dir);
    struct st_file *g = NULL;
    char *err = NULL;
    assert_int_equal(st_file_open(&g, gpath, &err), 0);
    struct model *m = load(dir);
    int T;
    const int32_t *ids;
    float *before = run_seq(m, g, 1, &T, &ids);
    static const struct {
        enum awq_prev prev;
        enum model_lin next[3];
        int n;
    } pairs[] = {
        { AWQ_PREV_INPUT_NORM, { MODEL_LIN_Q, MODEL_LIN_K, MODEL_LIN_V }, 3 },
        { AWQ_PREV_V_PROJ, { MODEL_LIN_O }, 1 },
        { AWQ_PREV_POST_ATTN_NORM, { MODEL_LIN_GATE, MODEL_LIN_UP }, 2 },
        { AWQ_PREV_UP_PROJ, { MODEL_LIN_DOWN }, 1 },
    };
    unsigned seed = 7;
    for (int l = 0; l < m->n_layers; l++)
        for (size_t p = 0; p < sizeof(pairs) / sizeof(pairs[0]); p++) {
            struct awq_fold f;
            assert_int_equal(awq_fold_resolve(&m->cfg, pairs[p].prev, pairs[p].next[0], &f, &err),
                             0);
            float *sc = xmalloc(sizeof(float) * (size_t)f.n);
            for (int i = 0; i < f.n; i++) {
                seed = seed * 1103515245u + 12345u;
                sc[i] = 0.5f + 1.5f * (float)((seed >> 8) & 0xffff) / 65535.0f;
            }
            if (pairs[p].prev == AWQ_PREV_INPUT_NORM || pairs[p].prev == AWQ_PREV_POST_ATTN_NORM) {
                /* One norm feeds several linears: scale every target's columns, the norm once. */
                int nn = 0;
                float *nw = model_norm(m, l,
                                       pairs[p].prev == AWQ_PREV_INPUT_NORM ? MODEL_NORM_INPUT
                                                                            : MODEL_NORM_POST_ATTN,
                                       &nn);
                float *keep = xmalloc(sizeof(float) * (size_t)nn);
                memcpy(keep, nw, sizeof(float) * (size_t)nn);
                for (int t = 0; t < pairs[p].n; t++) {
                    memcpy(nw, keep, sizeof(float) * (size_t)nn);
                    assert_int_equal(
                        awq_fold_apply(m, l, pairs[p].prev, pairs[p].next[t], sc, KERN_F32, &err),
                        0);
                }
                free(keep);
            } else {
                assert_int_equal(
                    awq_fold_apply(m, l, pairs[p].prev, pairs[p].next[0], sc, KERN_F32, &err), 0);
            }
            free(sc);
        }
    float *after = run_seq(m, g, 1, &T, &ids);
    double dmax = 0, rmax = 0;
    for (size_t i = 0; i < (size_t)T * m->cfg.vocab_size; i++) {
        dmax = fmax(dmax, fabs((double)after[i] - before[i]));
        rmax = fmax(rmax, fabs((double)before[i]));
    }
    printf("%-8s all folds, random scales: max|diff| %.3g of %.3f\n", fam, dmax, rmax);
    assert_true(dmax <= 1e-4 * rmax);
    /* Not a fold in a pre-norm block: the residual stream reaches gate/up through a norm. */
    struct awq_fold f;
    assert_int_equal(awq_fold_resolve(&m->cfg, AWQ_PREV_O_PROJ, MODEL_LIN_GATE, &f, &err), -EINVAL);
    assert_non_null(strstr(err, "pre-norm"));
    free(err);
    free(before);
    free(after);
    model_free(m);
    st_file_free(g);
}

static void test_folds(void **state)
{
    (void)state;
    check_folds("llama");
    check_folds("qwen2"); /* v_proj has a bias: it is divided with the rows */
    check_folds("minicpm");
    /* EXAONE-4 keeps its post-norm rules. */
    struct model *m = load("tests/data/tiny-exaone4");
    struct awq_fold f;
    char *err = NULL;
    assert_int_equal(awq_fold_resolve(&m->cfg, AWQ_PREV_POST_ATTN_NORM, MODEL_LIN_GATE, &f, &err),
                     -EINVAL);
    assert_non_null(strstr(err, "EXAONE-4"));
    free(err);
    model_free(m);
}

static void test_synth_shapes(void **state)
{
    (void)state;
    static const struct {
        const char *shape, *type;
        int L, H, nh, nkv, hd, V;
    } want[] = {
        { "llama-3.2-1b", "llama", 16, 2048, 32, 8, 64, 128256 },
        { "qwen3-1.7b", "qwen3", 28, 2048, 16, 8, 128, 151936 },
        { "minicpm-2b", "minicpm", 40, 2304, 36, 36, 64, 122753 },
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        struct synth_opts o;
        assert_int_equal(synth_opts_shape(&o, want[i].shape), 0);
        assert_string_equal(family_get(o.family)->model_type, want[i].type);
        assert_int_equal(o.num_hidden_layers, want[i].L);
        assert_int_equal(o.hidden_size, want[i].H);
        assert_int_equal(o.num_attention_heads, want[i].nh);
        assert_int_equal(o.num_key_value_heads, want[i].nkv);
        assert_int_equal(o.head_dim, want[i].hd);
        assert_int_equal(o.vocab_size, want[i].V);
        /* A shrunk copy: same family, config style and tensor set. */
        o.num_hidden_layers = 2;
        o.hidden_size = 64;
        o.intermediate_size = 96;
        o.num_attention_heads = 4;
        o.num_key_value_heads = want[i].nh == want[i].nkv ? 4 : 2;
        o.head_dim = want[i].hd == 128 ? 32 : 16;
        o.vocab_size = 256;
        o.max_shard_bytes = 0;
        char tmpl[] = "/tmp/exaq-synth-XXXXXX";
        char *tmp = mkdtemp(tmpl), *err = NULL;
        assert_non_null(tmp);
        int rc = synth_write(&o, tmp, &err);
        if (rc)
            printf("synth %s: %s\n", want[i].shape, err);
        assert_int_equal(rc, 0);
        struct model *m = load(tmp);
        assert_string_equal(m->cfg.fam->model_type, want[i].type);
        assert_true(m->tied);
        float lg[256];
        int32_t ids[3] = { 1, 7, 9 };
        assert_int_equal(model_forward(m, ids, 3, NULL, MODEL_LOGITS_LAST, lg, NULL, &err), 0);
        for (int v = 0; v < 256; v++)
            assert_true(isfinite(lg[v]));
        model_free(m);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
        assert_int_equal(system(cmd), 0);
    }
    struct synth_opts o;
    assert_int_equal(synth_opts_shape(&o, "llama-3-70b"), -ENOENT);
}

static void test_errors(void **state)
{
    (void)state;
    struct config c;
    char *err = NULL;
    const char *bad = "{\"model_type\":\"gpt2\",\"hidden_size\":64,\"intermediate_size\":128,"
                      "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":10}";
    assert_int_equal(config_parse(&c, bad, strlen(bad), "config.json", &err), -EINVAL);
    printf("%s\n", err);
    assert_non_null(strstr(err, "model_type is 'gpt2'"));
    assert_non_null(strstr(err, "qwen3"));
    free(err);
    err = NULL;
    const char *mlpb = "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                       "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":10,"
                       "\"mlp_bias\":true}";
    assert_int_equal(config_parse(&c, mlpb, strlen(mlpb), "config.json", &err), -EINVAL);
    assert_non_null(strstr(err, "mlp_bias"));
    free(err);
    err = NULL;
    /* qwen3 without head_dim: transformers' default 128, not hidden / heads. */
    const char *q3 = "{\"model_type\":\"qwen3\",\"hidden_size\":64,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":10}";
    assert_int_equal(config_parse(&c, q3, strlen(q3), "config.json", &err), 0);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.sliding_window, 0);
    config_release(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_qwen3),        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_minicpm),      cmocka_unit_test(test_folds),
        cmocka_unit_test(test_synth_shapes), cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
