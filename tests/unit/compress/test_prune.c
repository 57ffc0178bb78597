/*
 * test_prune: depth pruning (worker/compress/prune.c and the `prune` stage of
 * worker/stages/stage_prune.c).
 *
 * Proves, on tiny-a (tests/data/tiny-exaone4):
 *   1. block influence picks the layer whose removal costs the least perplexity, or one within
 *      2% of it: the best is found by brute force (each layer removed in turn, perplexity over
 *      30 windows of 512 of val.ids.u32 with model_nll); BI from 32 windows of calib.ids.u32;
 *   2. an explicit prune writes a checkpoint that loads back, whose config is consistent
 *      (num_hidden_layers, layer_types = the kept original entries in order, checked on a hybrid
 *      synthetic model whose layer types differ), whose safetensors hold exactly the renumbered
 *      kept layers (no stale names, bytes equal to the source layers), whose tokenizer files are
 *      copied, and whose logits equal those of the in-memory pruned model;
 *   3. the stage reports bi_layer_<i> and layers_removed, removes the smallest-BI layer, writes
 *      exaq_prune.json (source, kept, removed) and composes it when the input was pruned before;
 *   4. errors (keep every layer or none, an index out of range or repeated, removing every layer,
 *      calibration missing, malformed specs) fail clearly, and cancellation is honoured;
 * plus the selection helpers and the record reader on malformed files.
 * Takes about 10-20 s on 2 cores (most of it the brute-force perplexities).
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

#include <cJSON.h>

#include "common/util.h"
#include "worker/engine/calib.h"
#include "worker/engine/model.h"
#include "worker/compress/prune.h"
#include "worker/stages/stage.h"
#include "common/st.h"
#include "worker/engine/synth.h"
#include "tests/unit/fixture.h"

#define NCAL (SANITIZED ? 8 : 32) /* calibration windows of 512 */
#define NVAL (SANITIZED ? 4 : 30) /* perplexity windows of 512 */

static char tmp[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/exaq-prune.XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(tmp);
    return 0;
}

/* Perplexity over the first W windows of 512 of val.ids.u32 (README protocol). */
static double val_ppl(struct model *m, int W)
{
    int32_t *ids;
    int64_t n;
    char *err = NULL;
    float nll[512];
    double s = 0;
    assert_int_equal(calib_read_ids(VALIDS, &ids, &n, NULL), 0);
    assert_true(n >= (int64_t)512 * W + 1);
    for (int w = 0; w < W; w++) {
        assert_int_equal(model_nll(m, ids + (size_t)512 * w, 513, nll, &err), 0);
        for (int i = 0; i < 512; i++)
            s += nll[i];
    }
    free(ids);
    return exp(s / (512.0 * W));
}

/* ---- a small stage harness ------------------------------------------------------------------ */

static cJSON *read_json(const char *dir, const char *file)
{
    char *p = path_join(dir, file), *text = NULL;
    assert_int_equal(file_read_all(p, &text, NULL), 0);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    free(text);
    free(p);
    return j;
}

static void int_array_eq(const cJSON *a, const int *want, int n)
{
    assert_true(cJSON_IsArray(a));
    assert_int_equal(cJSON_GetArraySize(a), n);
    for (int i = 0; i < n; i++)
        assert_int_equal(cJSON_GetArrayItem(a, i)->valueint, want[i]);
}

/* ---- 1. block influence against brute force ------------------------------------------------- */

static void test_bi_picks_cheapest_layer(void **state)
{
    (void)state;
    struct model *m = fx_load(TINY, 2);
    int L = m->n_layers, removed, keep[16], nk;
    int32_t *cal;
    int64_t ncal;
    char *err = NULL;
    double bi[16] = { 0 }, ppl[16] = { 0 }, best = INFINITY;
    assert_true(L >= 2 && L <= 16);
    assert_int_equal(calib_read_ids(CALIDS, &cal, &ncal, NULL), 0);
    assert_int_equal(prune_block_influence(m, cal, NCAL, 512, bi, NULL, NULL, &err), 0);
    assert_int_equal(prune_select_smallest(bi, L, 1, &removed, &err), 0);
    double full = val_ppl(m, NVAL);
    printf("full model: ppl %.4f (%d windows)\n", full, NVAL);
    for (int l = 0; l < L; l++) {
        struct model *p = fx_load(TINY, 2);
        assert_true(bi[l] > 0 && bi[l] < 2);
        assert_int_equal(prune_keep_from_removed(L, &l, 1, keep, &nk, &err), 0);
        assert_int_equal(model_keep_layers(p, keep, nk, &err), 0);
        ppl[l] = val_ppl(p, NVAL);
        best = fmin(best, ppl[l]);
        printf("layer %d: BI %.5f, ppl without it %.4f\n", l, bi[l], ppl[l]);
        model_free(p);
    }
    printf("BI removes layer %d: ppl %.4f, best %.4f\n", removed, ppl[removed], best);
    assert_true(ppl[removed] <= best * 1.02);
    /* The removal really costs something: each pruned model is worse than the full one. */
    for (int l = 0; l < L; l++)
        assert_true(ppl[l] > full);
    free(cal);
    model_free(m);
}

/* ---- 2. explicit pruning: checkpoint, config, tensors, logits -------------------------------- */

static void test_explicit_checkpoint(void **state)
{
    (void)state;
    char *out = xasprintf("%s/explicit", tmp), *err = NULL;
    struct fx_run *r =
        fx_run_stage("prune", "{\"layers\":[1,2],\"metric\":\"explicit\"}", TINY, out, NULL);
    assert_int_equal(r->rc, 0);
    assert_int_equal((int)fx_metric(r, "layers_removed"), 2);
    assert_int_equal((int)fx_metric(r, "layers_kept"), 2);
    /* No calibration in an explicit spec: no block influence either. */
    double v;
    assert_int_equal(stage_metric_get(&r->ctx, "bi_layer_0", &v), -1);
    assert_non_null(strstr(r->log.data, "removing 2 of 4 layers (1, 2) by explicit"));
    fx_run_free(r);

    /* config.json */
    cJSON *cfg = read_json(out, "config.json"), *src = read_json(TINY, "config.json");
    assert_int_equal(cJSON_GetObjectItem(cfg, "num_hidden_layers")->valueint, 2);
    cJSON *lt = cJSON_GetObjectItem(cfg, "layer_types");
    assert_int_equal(cJSON_GetArraySize(lt), 2);
    cJSON *slt = cJSON_GetObjectItem(src, "layer_types");
    assert_string_equal(cJSON_GetArrayItem(lt, 0)->valuestring,
                        cJSON_GetArrayItem(slt, 0)->valuestring);
    assert_string_equal(cJSON_GetArrayItem(lt, 1)->valuestring,
                        cJSON_GetArrayItem(slt, 3)->valuestring);
    /* Everything else is unchanged. */
    cJSON_DeleteItemFromObject(cfg, "num_hidden_layers");
    cJSON_DeleteItemFromObject(cfg, "layer_types");
    cJSON_DeleteItemFromObject(src, "num_hidden_layers");
    cJSON_DeleteItemFromObject(src, "layer_types");
    assert_true(cJSON_Compare(cfg, src, 1));
    cJSON_Delete(cfg);
    cJSON_Delete(src);

    /* Aux files copied. */
    char *p = path_join(out, "tokenizer.json");
    assert_true(is_file(p));
    free(p);
    p = path_join(out, "generation_config.json");
    assert_true(is_file(p));
    free(p);

    /* Tensors: exactly the renumbered kept layers, bytes equal to the source's. */
    struct st_dir *so, *ss;
    assert_int_equal(st_dir_open(&so, out, &err), 0);
    assert_int_equal(st_dir_open(&ss, TINY, &err), 0);
    const int kept[2] = { 0, 3 };
    int nlayer_tensors = 0;
    for (int i = 0; i < st_dir_count(so); i++) {
        const struct st_tensor *t = st_dir_tensor(so, i);
        int l;
        char rest[200];
        if (sscanf(t->name, "model.layers.%d.%199s", &l, rest) == 2) {
            assert_true(l >= 0 && l < 2);
            char *sn = xasprintf("model.layers.%d.%s", kept[l], rest);
            const struct st_tensor *u = st_dir_find(ss, sn);
            assert_non_null(u);
            assert_int_equal(t->nbytes, u->nbytes);
            assert_memory_equal(t->data, u->data, t->nbytes);
            free(sn);
            nlayer_tensors++;
        } else {
            const struct st_tensor *u = st_dir_find(ss, t->name);
            assert_non_null(u);
            assert_memory_equal(t->data, u->data, t->nbytes);
        }
    }
    /* 7 linears + 4 norms per layer. */
    assert_int_equal(nlayer_tensors, 2 * 11);
    assert_int_equal(st_dir_count(so), st_dir_count(ss) - 2 * 11);
    st_dir_free(so);
    st_dir_free(ss);

    /* The record. */
    cJSON *rec = read_json(out, PRUNE_RECORD_FILE);
    char *abs = path_abs(TINY);
    assert_string_equal(cJSON_GetObjectItem(rec, "source")->valuestring, abs);
    assert_int_equal(cJSON_GetObjectItem(rec, "source_layers")->valueint, 4);
    int_array_eq(cJSON_GetObjectItem(rec, "kept"), kept, 2);
    const int rem[2] = { 1, 2 };
    int_array_eq(cJSON_GetObjectItem(rec, "removed"), rem, 2);
    assert_string_equal(cJSON_GetObjectItem(rec, "metric")->valuestring, "explicit");
    free(abs);
    cJSON_Delete(rec);

    /* Logits of the saved model equal those of the in-memory pruned model. */
    struct model *mem = fx_load(TINY, 2), *disk = fx_load(out, 2);
    assert_int_equal(model_keep_layers(mem, kept, 2, &err), 0);
    int32_t *ids;
    int64_t n;
    assert_int_equal(calib_read_ids(VALIDS, &ids, &n, NULL), 0);
    int T = 96, V = mem->cfg.vocab_size;
    float *a = xmalloc(sizeof(float) * (size_t)T * V), *b = xmalloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(model_forward(mem, ids, T, NULL, MODEL_LOGITS_ALL, a, NULL, &err), 0);
    assert_int_equal(model_forward(disk, ids, T, NULL, MODEL_LOGITS_ALL, b, NULL, &err), 0);
    /* BF16 weights are copied bit for bit and norms are BF16-exact, so the forward passes are
     * identical, not merely close. */
    assert_memory_equal(a, b, sizeof(float) * (size_t)T * V);
    free(a);
    free(b);
    free(ids);
    model_free(mem);
    model_free(disk);
    free(out);
}

/* A hybrid synthetic model has distinct layer types, so the kept entries can be told apart. */
static void test_layer_types_hybrid(void **state)
{
    (void)state;
    struct synth_opts o;
    char *src = xasprintf("%s/hybrid", tmp), *out = xasprintf("%s/hybrid-pruned", tmp), *err = NULL;
    synth_opts_default(&o);
    o.hidden_size = 64;
    o.intermediate_size = 128;
    o.num_hidden_layers = 6;
    o.num_attention_heads = 2;
    o.num_key_value_heads = 1;
    o.head_dim = 32;
    o.vocab_size = 256;
    o.max_position_embeddings = 512;
    o.sliding_window = 16;
    o.sliding_window_pattern = 3;
    o.max_shard_bytes = 0;
    assert_int_equal(synth_write(&o, src, &err), 0);
    struct fx_run *r =
        fx_run_stage("prune", "{\"layers\":[4,1],\"metric\":\"explicit\"}", src, out, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);
    cJSON *a = read_json(src, "config.json"), *b = read_json(out, "config.json");
    cJSON *la = cJSON_GetObjectItem(a, "layer_types"), *lb = cJSON_GetObjectItem(b, "layer_types");
    const int kept[4] = { 0, 2, 3, 5 };
    assert_int_equal(cJSON_GetObjectItem(b, "num_hidden_layers")->valueint, 4);
    assert_int_equal(cJSON_GetArraySize(lb), 4);
    int sliding = 0;
    for (int i = 0; i < 4; i++) {
        const char *want = cJSON_GetArrayItem(la, kept[i])->valuestring;
        assert_string_equal(cJSON_GetArrayItem(lb, i)->valuestring, want);
        sliding += !strcmp(want, "sliding_attention");
    }
    assert_true(sliding > 0 && sliding < 4); /* the check can tell the types apart */
    assert_true(cJSON_Compare(cJSON_GetObjectItem(a, "sliding_window"),
                              cJSON_GetObjectItem(b, "sliding_window"), 1));
    cJSON_Delete(a);
    cJSON_Delete(b);
    /* It loads, and the engine sees the kept layers' attention windows. */
    struct model *m = fx_load(out, 2), *s = fx_load(src, 2);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(m->layers[i].window, s->layers[kept[i]].window);
        assert_int_equal(m->layers[i].rope, s->layers[kept[i]].rope);
    }
    model_free(m);
    model_free(s);
    free(src);
    free(out);
}

/* ---- 3. the block-influence stage ----------------------------------------------------------- */

static void test_stage_block_influence(void **state)
{
    (void)state;
    char *out = xasprintf("%s/bi", tmp), *out2 = xasprintf("%s/bi2", tmp), cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    char *spec = xasprintf("{\"calibration\":{\"ids\":\"%s/" CALIDS "\",\"samples\":8,\"seq_len\":"
                           "256},\"keep_layers\":3,\"metric\":\"block_influence\"}",
                           cwd);
    struct fx_run *r = fx_run_stage("prune", spec, TINY, out, NULL);
    assert_int_equal(r->rc, 0);
    double bi[4];
    int argmin = 0;
    for (int l = 0; l < 4; l++) {
        char name[64];
        snprintf(name, sizeof(name), "bi_layer_%d", l);
        bi[l] = fx_metric(r, name);
        assert_true(isfinite(bi[l]) && bi[l] > 0);
        if (bi[l] < bi[argmin])
            argmin = l;
        snprintf(name, sizeof(name), "layer %d block influence", l);
        assert_non_null(strstr(r->log.data, name));
    }
    assert_int_equal((int)fx_metric(r, "layers_removed"), 1);
    assert_int_equal(r->progress_calls, 8);
    assert_true(r->last_done == 8 && r->last_total == 8);
    fx_run_free(r);
    cJSON *rec = read_json(out, PRUNE_RECORD_FILE);
    int_array_eq(cJSON_GetObjectItem(rec, "removed"), &argmin, 1);
    assert_string_equal(cJSON_GetObjectItem(rec, "metric")->valuestring, "block_influence");
    cJSON *jb = cJSON_GetObjectItem(rec, "block_influence");
    assert_int_equal(cJSON_GetArraySize(jb), 4);
    for (int l = 0; l < 4; l++)
        assert_true(fabs(cJSON_GetArrayItem(jb, l)->valuedouble - bi[l]) <= 1e-12 * bi[l]);
    cJSON_Delete(rec);

    /* Pruning the pruned model again: the record still points at the original, with indices
     * of the original. */
    free(spec);
    spec = xasprintf("{\"metric\":\"explicit\",\"layers\":[0]}");
    r = fx_run_stage("prune", spec, out, out2, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);
    rec = read_json(out2, PRUNE_RECORD_FILE);
    char *abs = path_abs(TINY);
    assert_string_equal(cJSON_GetObjectItem(rec, "source")->valuestring, abs);
    int k1[3], nk1 = 0, k2[2], rem2[2];
    for (int l = 0; l < 4; l++)
        if (l != argmin)
            k1[nk1++] = l;
    /* The second prune removed layer 0 of the pruned model, which is original layer k1[0]. */
    k2[0] = k1[1];
    k2[1] = k1[2];
    rem2[0] = EXAQ_MIN(argmin, k1[0]);
    rem2[1] = EXAQ_MAX(argmin, k1[0]);
    int_array_eq(cJSON_GetObjectItem(rec, "kept"), k2, 2);
    int_array_eq(cJSON_GetObjectItem(rec, "removed"), rem2, 2);
    cJSON_Delete(rec);
    free(abs);
    free(spec);
    free(out);
    free(out2);
}

/* ---- 4. errors and cancellation ------------------------------------------------------------- */

static void expect_fail(const char *spec, const char *in, const char *needle)
{
    char *out = xasprintf("%s/err", tmp);
    struct fx_run *r = fx_run_stage("prune", spec, in, out, NULL);
    if (!strstr(r->errmsg, needle))
        printf("spec %s: got '%s', want '%s'\n", spec, r->errmsg, needle);
    assert_int_equal(r->rc, STAGE_ERR_ERROR);
    assert_non_null(strstr(r->errmsg, needle));
    fx_run_free(r);
    free(out);
}

static void test_errors(void **state)
{
    (void)state;
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    char *cal =
        xasprintf("\"calibration\":{\"ids\":\"%s/" CALIDS "\",\"samples\":2,\"seq_len\":64}", cwd);
    char *s;
    expect_fail("not json", TINY, "not a JSON object");
    expect_fail("{}", TINY, "exactly one of");
    expect_fail("{\"keep_layers\":2,\"remove\":1}", TINY, "exactly one of");
    expect_fail("{\"keep_layers\":2.5}", TINY, "must be an integer");
    s = xasprintf("{%s,\"keep_layers\":4}", cal);
    expect_fail(s, TINY, "keeps every layer of the 4-layer model");
    free(s);
    s = xasprintf("{%s,\"keep_layers\":9}", cal);
    expect_fail(s, TINY, "keeps every layer");
    free(s);
    s = xasprintf("{%s,\"keep_layers\":0}", cal);
    expect_fail(s, TINY, "would remove every layer");
    free(s);
    s = xasprintf("{%s,\"remove\":4}", cal);
    expect_fail(s, TINY, "at least one must stay");
    free(s);
    expect_fail("{\"layers\":[0,1,2,3],\"metric\":\"explicit\"}", TINY,
                "removing all 4 layers would leave an empty model");
    expect_fail("{\"layers\":[1,4],\"metric\":\"explicit\"}", TINY,
                "layer index 4 is out of range (the model has 4 layers, 0..3)");
    expect_fail("{\"layers\":[-1],\"metric\":\"explicit\"}", TINY,
                "layer index -1 is out of range");
    expect_fail("{\"layers\":[2,2],\"metric\":\"explicit\"}", TINY,
                "layer index 2 is listed twice");
    expect_fail("{\"layers\":[],\"metric\":\"explicit\"}", TINY, "non-empty list");
    expect_fail("{\"layers\":[\"a\"],\"metric\":\"explicit\"}", TINY, "must hold integers");
    expect_fail("{\"keep_layers\":3,\"metric\":\"explicit\"}", TINY, "needs the list 'layers'");
    expect_fail("{\"layers\":[1],\"metric\":\"block_influence\"}", TINY, "needs metric 'explicit'");
    expect_fail("{\"keep_layers\":3,\"metric\":\"angular\"}", TINY, "unknown metric 'angular'");
    expect_fail("{\"keep_layers\":3}", TINY, "block influence needs calibration data");
    expect_fail("{\"keep_layers\":3,\"calibration\":{\"ids\":\"/nonexistent/x.u32\"}}", TINY,
                "cannot read ids file '/nonexistent/x.u32'");
    s = xasprintf("{%s,\"keep_layers\":3}", cal);
    expect_fail(s, "/nonexistent/model", "cannot load the model '/nonexistent/model'");
    free(s);

    /* No output dir. */
    struct fx_run *r =
        fx_run_stage("prune", "{\"layers\":[1],\"metric\":\"explicit\"}", TINY, NULL, NULL);
    assert_int_equal(r->rc, STAGE_ERR_ERROR);
    assert_non_null(strstr(r->errmsg, "needs an output model dir"));
    fx_run_free(r);
    free(cal);
}

static void test_explicit_single_layer_ok(void **state)
{
    /* A list without a metric defaults to explicit. */
    (void)state;
    char *out = xasprintf("%s/one", tmp);
    struct fx_run *r = fx_run_stage("prune", "{\"layers\":[1]}", TINY, out, NULL);
    assert_int_equal(r->rc, 0);
    fx_run_free(r);
    free(out);
}

static void test_cancel(void **state)
{
    (void)state;
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    char *spec = xasprintf("{\"calibration\":{\"ids\":\"%s/" CALIDS "\",\"samples\":4,"
                           "\"seq_len\":64},\"keep_layers\":3}",
                           cwd);
    char *out = xasprintf("%s/cancel", tmp);
    int cancel = 1;
    struct fx_run *r = fx_run_stage("prune", spec, TINY, out, &cancel);
    assert_int_equal(r->rc, STAGE_ERR_CANCELLED);
    assert_true(r->progress_calls <= 1);
    fx_run_free(r);
    /* Nothing was written. */
    char *cfg = path_join(out, "config.json");
    assert_false(is_file(cfg));
    free(cfg);
    free(out);
    free(spec);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static void test_select_and_keep(void **state)
{
    (void)state;
    char *err = NULL;
    int rem[8], keep[8], nk;
    const double bi[6] = { 0.9, 0.2, 0.3, 0.2, NAN, 0.25 };
    assert_int_equal(prune_select_smallest(bi, 6, 1, rem, &err), 0);
    assert_int_equal(rem[0], 1); /* tie 0.2/0.2: the lower index first */
    assert_int_equal(prune_select_smallest(bi, 6, 3, rem, &err), 0);
    assert_int_equal(rem[0], 1);
    assert_int_equal(rem[1], 3);
    assert_int_equal(rem[2], 5);
    assert_int_equal(prune_select_smallest(bi, 6, 5, rem, &err), 0);
    for (int i = 0; i < 5; i++)
        assert_int_not_equal(rem[i], 4); /* NaN is never chosen while others remain */
    assert_int_equal(prune_select_smallest(bi, 6, 6, rem, &err), -EINVAL);
    assert_non_null(strstr(err, "cannot remove 6 of 6 layers"));
    assert_int_equal(prune_select_smallest(bi, 6, 0, rem, &err), -EINVAL);

    const int r1[2] = { 4, 1 };
    assert_int_equal(prune_keep_from_removed(6, r1, 2, keep, &nk, &err), 0);
    assert_int_equal(nk, 4);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 2);
    assert_int_equal(keep[2], 3);
    assert_int_equal(keep[3], 5);
    assert_int_equal(prune_keep_from_removed(6, r1, 0, keep, &nk, &err), -EINVAL);
    free(err);
}

static void write_text(const char *dir, const char *text)
{
    char *p = path_join(dir, PRUNE_RECORD_FILE);
    assert_int_equal(file_write_all(p, text, strlen(text)), 0);
    free(p);
}

static void test_record(void **state)
{
    (void)state;
    char *dir = xasprintf("%s/rec", tmp), *err = NULL;
    struct prune_record r = { 0 }, back, comp;
    int kept[3] = { 0, 2, 5 }, removed[3] = { 1, 3, 4 };
    double bi[6] = { 1, 0.1, 0.2, 0.3, 0.4, 0.5 };
    mkdir_p(dir, 0755);
    assert_int_equal(prune_record_read(dir, &back, &err), -ENOENT);
    assert_non_null(strstr(err, "heal must follow prune"));
    r.source = "/models/base";
    r.n_source = 6;
    r.kept = kept;
    r.n_kept = 3;
    r.removed = removed;
    r.n_removed = 3;
    r.metric = "block_influence";
    r.bi = bi;
    assert_int_equal(prune_record_write(dir, &r, "{\"heal\":{\"fold\":\"both\"}}", &err), 0);
    assert_int_equal(prune_record_read(dir, &back, &err), 0);
    assert_string_equal(back.source, "/models/base");
    assert_int_equal(back.n_source, 6);
    assert_int_equal(back.n_kept, 3);
    assert_int_equal(back.kept[2], 5);
    assert_int_equal(back.removed[1], 3);
    assert_non_null(back.bi);
    assert_true(back.bi[3] == 0.3);
    cJSON *j = read_json(dir, PRUNE_RECORD_FILE);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "heal"), "fold")->valuestring,
                        "both");
    cJSON_Delete(j);
    /* Keep layers 0 and 2 of the 3-layer pruned model: original 0 and 5. */
    const int k2[2] = { 0, 2 };
    prune_record_compose(&back, k2, 2, &comp);
    assert_int_equal(comp.n_kept, 2);
    assert_int_equal(comp.kept[0], 0);
    assert_int_equal(comp.kept[1], 5);
    assert_int_equal(comp.n_removed, 4);
    assert_int_equal(comp.removed[3], 4);
    prune_record_release(&comp);
    prune_record_release(&back);

    /* Malformed records. */
    const char *bad[] = {
        "nonsense",
        "{\"source\":\"/x\"}",
        "{\"source\":\"/x\",\"source_layers\":4,\"kept\":[0,1],\"removed\":[2]}",
        "{\"source\":\"/x\",\"source_layers\":4,\"kept\":[0,1,2],\"removed\":[2]}",
        "{\"source\":\"/x\",\"source_layers\":4,\"kept\":[1,0,2],\"removed\":[3]}",
        "{\"source\":\"/x\",\"source_layers\":4,\"kept\":[0,1,2],\"removed\":[7]}",
        "{\"source\":\"/x\",\"source_layers\":4,\"kept\":[0,1,2,3],\"removed\":[]}",
    };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(bad); i++) {
        write_text(dir, bad[i]);
        assert_int_equal(prune_record_read(dir, &back, &err), -EINVAL);
        assert_non_null(strstr(err, "malformed"));
        assert_null(back.kept);
    }
    free(err);
    free(dir);
}

int main(void)
{
    if (!is_file(TINY "/model.safetensors") || !is_file(VALIDS) || !is_file(CALIDS)) {
        printf("SKIP tiny-a data missing (run from the repository root)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_and_keep),
        cmocka_unit_test(test_record),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_explicit_single_layer_ok),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_explicit_checkpoint),
        cmocka_unit_test(test_layer_types_hybrid),
        cmocka_unit_test(test_stage_block_influence),
        cmocka_unit_test(test_bi_picks_cheapest_layer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
