/*
 * compressed-tensors format: hand-made byte-level packing cases fix the bit order; every scheme
 * round-trips exactly through safetensors; a quantized model saved and loaded back computes
 * with exactly the weights the quantizer produced (and the same logits); the written tensor
 * set and quantization_config are exactly what vLLM expects (no extra tensors, no
 * scale_dtype/zp_dtype); and on tiny-a GPTQ reconstructs every linear better than RTN on
 * held-out calibration tokens (algorithms spec T4).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/calib.h"
#include "worker/engine/ctensors.h"
#include "worker/compress/gptq.h"
#include "worker/engine/model.h"

#define TINY "tests/data/tiny-exaone4"
#define DATA "tests/data/tiny-a"

static char tmp[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof(tmp), "/tmp/exaq-ct.XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_rf(tmp);
    return 0;
}

static uint32_t rng = 12345;
static uint32_t rnd(void)
{
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

/* ---- byte-level packing ---- */

static void test_pack_bytes(void **state)
{
    int8_t q4[16], q8[4] = { -128, -1, 0, 127 }, back[16];
    uint32_t w[4];
    (void)state;
    for (int i = 0; i < 16; i++)
        q4[i] = (int8_t)(i - 8); /* u = q + 8 = 0..15 */
    ctensors_pack(q4, 1, 16, 4, w);
    assert_int_equal(w[0], 0x76543210u); /* element 8c+j in bits [4j, 4j+4) */
    assert_int_equal(w[1], 0xFEDCBA98u);
    ctensors_unpack(w, 1, 16, 4, back);
    assert_memory_equal(back, q4, 16);
    ctensors_pack(q8, 1, 4, 8, w);
    assert_int_equal(w[0], 0xFF807F00u); /* u = q + 128: 0, 127, 128, 255 */
    /* A partial last word pads with u = 0. */
    ctensors_pack(q4, 1, 3, 4, w);
    assert_int_equal(w[0], 0x00000210u);
    /* Two rows of 9 columns: 2 words per row. */
    {
        int8_t r[18];
        uint32_t ww[4];
        for (int i = 0; i < 18; i++)
            r[i] = (int8_t)((i % 16) - 8);
        ctensors_pack(r, 2, 9, 4, ww);
        assert_int_equal(ww[0], 0x76543210u);
        assert_int_equal(ww[1], 0x00000008u);
        /* Row 1 holds elements 9..17: u = 9, 10, ..., 15, 0 in word 0, then u = 1. */
        assert_int_equal(ww[2], 0x0FEDCBA9u);
        assert_int_equal(ww[3], 0x00000001u);
    }
    /* Zero points pack along dim 0: zp[8*r8 + j][g] in bits [4j, 4j+4) of word [r8][g]. */
    {
        int8_t zp[9 * 2], zb[9 * 2];
        uint32_t zw[2 * 2];
        for (int r = 0; r < 9; r++) {
            zp[r * 2 + 0] = (int8_t)(r - 8);
            zp[r * 2 + 1] = 7;
        }
        ctensors_pack_dim0(zp, 9, 2, 4, zw);
        assert_int_equal(zw[0], 0x76543210u);
        assert_int_equal(zw[1], 0xFFFFFFFFu);
        assert_int_equal(zw[2], 0x00000008u);
        assert_int_equal(zw[3], 0x0000000Fu);
        ctensors_unpack_dim0(zw, 9, 2, 4, zb);
        assert_memory_equal(zb, zp, sizeof(zp));
    }
    /* 8-bit zero points (W8A16_ASYM): 4 rows per word, u = zp + 128 in bits [8j, 8j+8) of word
     * [r4][g] (compressed-tensors pack_to_int32(zp, 8, packed_dim=0)). */
    {
        int8_t zp[5] = { -128, -1, 0, 127, 5 }, zb[5];
        uint32_t zw[2];
        ctensors_pack_dim0(zp, 5, 1, 8, zw);
        assert_int_equal(zw[0], 0xFF807F00u);
        assert_int_equal(zw[1], 0x00000085u);
        ctensors_unpack_dim0(zw, 5, 1, 8, zb);
        assert_memory_equal(zb, zp, sizeof(zp));
    }
}

/* ---- every scheme round-trips through a safetensors file ---- */

static void random_qweight(struct qweight *w, enum qscheme s, int out, int in, int gs, bool gidx)
{
    assert_int_equal(qweight_init(w, s, out, in, gs), 0);
    int64_t ns = (int64_t)(w->group_size == 0 ? 1 : out) * w->ngroups;
    for (int64_t i = 0; i < ns; i++)
        w->scale[i] = quant_f32_to_bf16(0.001f + (float)(rnd() % 1000) * 1e-5f);
    for (int64_t i = 0; i < (int64_t)out * in; i++) {
        if (w->is_fp8)
            w->fp8[i] = (uint8_t)(rnd() % 256 == 127 ? 0 : rnd() % 256) & 0x7E; /* no NaN */
        else
            w->q[i] = (int8_t)((int)(rnd() % (1u << w->bits)) - (1 << (w->bits - 1)));
    }
    if (!w->symmetric)
        for (int64_t i = 0; i < (int64_t)out * w->ngroups; i++)
            w->zp[i] = (int8_t)((int)(rnd() % (1u << w->bits)) - (1 << (w->bits - 1)));
    if (gidx) {
        w->g_idx = malloc((size_t)in * sizeof(int32_t));
        for (int c = 0; c < in; c++)
            w->g_idx[c] = (int32_t)(rnd() % (unsigned)w->ngroups);
    }
    if (s == QSCHEME_FP8)
        w->input_scale = quant_bf16_to_f32(quant_f32_to_bf16(0.0123f));
}

static int fill_cb(void *arg, const struct st_wtensor *t, void *dst, size_t n, char **err)
{
    (void)arg;
    return ctensors_fill(t, dst, n, err);
}

static void roundtrip(enum qscheme s, int gs, bool gidx)
{
    struct qweight a, b;
    struct st_wtensor ts[CTENSORS_MAX_TENSORS];
    struct ctensors_cfg cfg;
    struct st_dir *d;
    char *path = xasprintf("%s/rt.safetensors", tmp), *err = NULL;
    int out = 24, in = 200, n;
    float *fa, *fb;
    random_qweight(&a, s, out, in, gs, gidx);
    n = ctensors_tensors(&a, "model.layers.0.mlp.down_proj", ts);
    assert_int_equal(st_write_file(path, ts, n, fill_cb, NULL, &err), 0);
    for (int i = 0; i < n; i++)
        free((char *)ts[i].name);
    assert_int_equal(st_dir_open(&d, path, &err), 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.scheme = s;
    cfg.group_size = a.group_size;
    cfg.actorder_group = gidx;
    if (ctensors_read(d, "model.layers.0.mlp.down_proj", &cfg, out, in, &b, &err) != 0)
        fail_msg("%s: %s", qscheme_name(s), err);
    fa = malloc((size_t)out * in * sizeof(float));
    fb = malloc((size_t)out * in * sizeof(float));
    qweight_dequant(&a, fa);
    qweight_dequant(&b, fb);
    assert_memory_equal(fa, fb, (size_t)out * in * sizeof(float));
    if (a.q)
        assert_memory_equal(a.q, b.q, (size_t)out * in);
    if (a.zp)
        assert_memory_equal(a.zp, b.zp, (size_t)out * a.ngroups);
    if (a.g_idx)
        assert_memory_equal(a.g_idx, b.g_idx, (size_t)in * sizeof(int32_t));
    assert_true(a.input_scale == b.input_scale);
    st_dir_free(d);
    qweight_release(&a);
    qweight_release(&b);
    free(fa);
    free(fb);
    free(path);
}

static void test_roundtrip_schemes(void **state)
{
    (void)state;
    roundtrip(QSCHEME_W4A16, 128, false);
    roundtrip(QSCHEME_W4A16, 32, true);
    roundtrip(QSCHEME_W4A16, -1, false);
    roundtrip(QSCHEME_W4A16_ASYM, 64, false);
    roundtrip(QSCHEME_W4A16_ASYM, 256, false);
    roundtrip(QSCHEME_W8A16_ASYM, 32, false);
    roundtrip(QSCHEME_W8A16_ASYM, -1, false);
    roundtrip(QSCHEME_W8A16, -1, false);
    roundtrip(QSCHEME_W8A8, -1, false);
    roundtrip(QSCHEME_FP8_DYNAMIC, -1, false);
    roundtrip(QSCHEME_FP8, 0, false);
}

/* ---- a whole model ---- */

static cJSON *read_json(const char *path)
{
    char *text = NULL;
    cJSON *j;
    assert_int_equal(file_read_all(path, &text, NULL), 0);
    j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static bool has_key(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k) != NULL;
}

/* Quantizes every linear of tiny-a with scheme s (RTN; asym and g_idx variants), saves, loads
 * back, and checks the weights, the logits and the file's tensor set. */
static void model_roundtrip(enum qscheme s, int gs, bool ignore_layer0)
{
    struct model *m, *r;
    char *dir = xasprintf("%s/m-%s-%d-%d", tmp, qscheme_name(s), gs, ignore_layer0), *err = NULL;
    int32_t ids[16];
    float *la, *lb;
    struct st_dir *d;
    cJSON *cfg, *qc, *wts;
    assert_int_equal(model_load(&m, TINY, NULL, &err), 0);
    for (int l = 0; l < m->n_layers; l++) {
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            struct linear *L = model_linear(m, l, (enum model_lin)w);
            struct qweight qw;
            float *W = malloc((size_t)L->out * L->in * sizeof(float));
            if (ignore_layer0 && l == 0) {
                free(W);
                continue;
            }
            assert_int_equal(model_linear_get_f32(m, l, (enum model_lin)w, W, &err), 0);
            assert_int_equal(qweight_init(&qw, s, L->out, L->in, gs), 0);
            quant_rtn(&qw, W, QGRID_ABSMAX_QMAX);
            if (s == QSCHEME_FP8)
                qw.input_scale = 0.03125f;
            assert_int_equal(model_linear_set_quant(m, l, (enum model_lin)w, &qw, &err), 0);
            free(W);
        }
    }
    mkdir_p(dir, 0755);
    if (model_save(m, dir, NULL, &err) != 0)
        fail_msg("save: %s", err);
    assert_int_equal(model_load(&r, dir, NULL, &err), 0);
    assert_int_equal(model_quantized_count(r), model_quantized_count(m));
    for (int l = 0; l < m->n_layers; l++)
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            const struct linear *A = model_linear(m, l, (enum model_lin)w);
            const struct linear *B = model_linear(r, l, (enum model_lin)w);
            size_t n = (size_t)A->out * A->in;
            float *fa = malloc(n * sizeof(float)), *fb = malloc(n * sizeof(float));
            model_linear_get_f32(m, l, (enum model_lin)w, fa, &err);
            model_linear_get_f32(r, l, (enum model_lin)w, fb, &err);
            if (memcmp(fa, fb, n * sizeof(float)))
                fail_msg("%s layer %d lin %d: reloaded weights differ", qscheme_name(s), l, w);
            (void)B;
            free(fa);
            free(fb);
        }
    for (int i = 0; i < 16; i++)
        ids[i] = 10 + 37 * i;
    la = malloc(16 * 4096 * sizeof(float));
    lb = malloc(16 * 4096 * sizeof(float));
    assert_int_equal(model_forward(m, ids, 16, NULL, MODEL_LOGITS_ALL, la, NULL, &err), 0);
    assert_int_equal(model_forward(r, ids, 16, NULL, MODEL_LOGITS_ALL, lb, NULL, &err), 0);
    assert_memory_equal(la, lb, 16 * 4096 * sizeof(float));
    free(la);
    free(lb);

    /* The tensor set: exactly what the scheme stores. */
    assert_int_equal(st_dir_open(&d, dir, &err), 0);
    for (int i = 0; i < st_dir_count(d); i++) {
        const char *name = st_dir_tensor(d, i)->name;
        const char *suf = strrchr(name, '.') + 1;
        bool in_layer0 = strstr(name, "layers.0.") != NULL;
        bool is_lin = strstr(name, "_proj.") != NULL;
        if (!is_lin || (ignore_layer0 && in_layer0)) {
            assert_true(!strcmp(suf, "weight"));
            continue;
        }
        if (s == QSCHEME_W8A8 || s == QSCHEME_FP8_DYNAMIC)
            assert_true(!strcmp(suf, "weight") || !strcmp(suf, "weight_scale"));
        else if (s == QSCHEME_FP8)
            assert_true(!strcmp(suf, "weight") || !strcmp(suf, "weight_scale") ||
                        !strcmp(suf, "input_scale"));
        else if (s == QSCHEME_W4A16_ASYM || s == QSCHEME_W8A16_ASYM)
            assert_true(!strcmp(suf, "weight_packed") || !strcmp(suf, "weight_scale") ||
                        !strcmp(suf, "weight_shape") || !strcmp(suf, "weight_zero_point"));
        else
            assert_true(!strcmp(suf, "weight_packed") || !strcmp(suf, "weight_scale") ||
                        !strcmp(suf, "weight_shape"));
    }
    assert_null(st_dir_find(d, "lm_head.weight"));
    st_dir_free(d);

    /* The config block. */
    {
        char *p = path_join(dir, "config.json");
        cfg = read_json(p);
        free(p);
    }
    qc = cJSON_GetObjectItemCaseSensitive(cfg, "quantization_config");
    assert_non_null(qc);
    assert_string_equal(cJSON_GetObjectItem(qc, "quant_method")->valuestring, "compressed-tensors");
    assert_string_equal(cJSON_GetObjectItem(qc, "quantization_status")->valuestring, "compressed");
    wts = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(qc, "config_groups"), "group_0"), "weights");
    assert_false(has_key(wts, "scale_dtype"));
    assert_false(has_key(wts, "zp_dtype"));
    assert_true(has_key(wts, "observer_kwargs"));
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(qc, "ignore"), 0)->valuestring,
                        "lm_head");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(qc, "ignore")),
                     1 + (ignore_layer0 ? MODEL_LIN_COUNT : 0));
    assert_true(has_key(cfg, "torch_dtype") || has_key(cfg, "dtype"));
    cJSON_Delete(cfg);
    model_free(m);
    model_free(r);
    free(dir);
    free(err);
}

static void test_model_roundtrip(void **state)
{
    (void)state;
    model_roundtrip(QSCHEME_W4A16, 128, false);
    model_roundtrip(QSCHEME_W4A16, 64, true);
    model_roundtrip(QSCHEME_W4A16_ASYM, 128, false);
    model_roundtrip(QSCHEME_W8A16_ASYM, 64, false);
    model_roundtrip(QSCHEME_W8A16, -1, false);
    model_roundtrip(QSCHEME_W8A8, -1, false);
    model_roundtrip(QSCHEME_FP8_DYNAMIC, -1, false);
    model_roundtrip(QSCHEME_FP8, 0, false);
}

static void test_fused_rule(void **state)
{
    struct model *m;
    struct qweight qw;
    char *err = NULL, *dir = xasprintf("%s/fused", tmp);
    float *W;
    (void)state;
    assert_int_equal(model_load(&m, TINY, NULL, &err), 0);
    W = malloc(256 * 256 * sizeof(float));
    model_linear_get_f32(m, 1, MODEL_LIN_Q, W, &err);
    qweight_init(&qw, QSCHEME_W4A16, 256, 256, 128);
    quant_rtn(&qw, W, QGRID_ABSMAX_QMAX);
    assert_int_equal(model_linear_set_quant(m, 1, MODEL_LIN_Q, &qw, &err), 0);
    mkdir_p(dir, 0755);
    assert_int_not_equal(model_save(m, dir, NULL, &err), 0);
    assert_non_null(strstr(err, "quantized alike"));
    free(W);
    free(err);
    free(dir);
    model_free(m);
}

/* ---- T4 on tiny-a: GPTQ beats RTN on every linear, on held-out calibration tokens ---- */

struct cap {
    int want_layer;
    float *buf[4]; /* inputs of qkv, o, gateup, down */
    int n[4];
    int rows;
};

static int cap_hook(void *arg, int layer, enum model_hook_point pt, const float *x, int T, int n)
{
    struct cap *c = arg;
    int k = pt == MODEL_HOOK_QKV_IN      ? 0
            : pt == MODEL_HOOK_O_IN      ? 1
            : pt == MODEL_HOOK_GATEUP_IN ? 2
                                         : 3;
    (void)layer;
    memcpy(c->buf[k] + (size_t)c->rows * n, x, (size_t)T * n * sizeof(float));
    c->n[k] = n;
    return 0;
}

static double recon_err(const float *W, const float *Q, const float *X, int rows, int out, int in)
{
    double e = 0;
    for (int t = 0; t < rows; t++)
        for (int o = 0; o < out; o++) {
            double d = 0;
            for (int i = 0; i < in; i++)
                d +=
                    (double)(W[(size_t)o * in + i] - Q[(size_t)o * in + i]) * X[(size_t)t * in + i];
            e += d * d;
        }
    return e;
}

static void test_gptq_beats_rtn_on_tiny_a(void **state)
{
    struct model *m;
    struct calib cal;
    char *err = NULL;
    const int ntrain = 24, nheld = 4, L = 256;
    (void)state;
    assert_int_equal(model_load(&m, TINY, NULL, &err), 0);
    assert_int_equal(calib_load(&cal,
                                "{\"calibration\":{\"ids\":\"" DATA "/calib.ids.u32\","
                                "\"samples\":28,\"seq_len\":256}}",
                                TINY, 4096, NULL),
                     0);
    for (int l = 0; l < m->n_layers; l++) {
        struct cap c;
        const int H = 256, I = 1024, win = ntrain + nheld;
        float *x = malloc((size_t)L * H * sizeof(float));
        memset(&c, 0, sizeof(c));
        c.buf[0] = malloc((size_t)win * L * H * sizeof(float));
        c.buf[1] = malloc((size_t)win * L * H * sizeof(float));
        c.buf[2] = malloc((size_t)win * L * H * sizeof(float));
        c.buf[3] = malloc((size_t)win * L * I * sizeof(float));
        struct model_hooks hk = { cap_hook, &c,
                                  (1u << MODEL_HOOK_QKV_IN) | (1u << MODEL_HOOK_O_IN) |
                                      (1u << MODEL_HOOK_GATEUP_IN) | (1u << MODEL_HOOK_DOWN_IN) };
        for (int wdx = 0; wdx < win; wdx++) {
            assert_int_equal(model_embed(m, cal.ids + (size_t)wdx * L, L, x, &err), 0);
            for (int k = 0; k < l; k++)
                assert_int_equal(model_layer_forward(m, k, x, L, 0, NULL, NULL, &err), 0);
            c.rows = wdx * L;
            assert_int_equal(model_layer_forward(m, l, x, L, 0, NULL, &hk, &err), 0);
        }
        for (int w = 0; w < MODEL_LIN_COUNT; w++) {
            const struct linear *Lin = model_linear(m, l, (enum model_lin)w);
            int k = w <= MODEL_LIN_V ? 0 : w == MODEL_LIN_O ? 1 : w == MODEL_LIN_DOWN ? 3 : 2;
            int out = Lin->out, in = Lin->in;
            struct hessian h;
            struct qweight qr, qg;
            struct gptq_opts o;
            struct gptq_stats st;
            float *W = malloc((size_t)out * in * sizeof(float));
            float *Qr = malloc((size_t)out * in * sizeof(float));
            float *Qg = malloc((size_t)out * in * sizeof(float));
            const float *held = c.buf[k] + (size_t)ntrain * L * in;
            double er, eg;
            model_linear_get_f32(m, l, (enum model_lin)w, W, &err);
            hess_init(&h, in);
            hess_add(&h, c.buf[k], ntrain * L);
            hess_finish(&h);
            qweight_init(&qr, QSCHEME_W4A16, out, in, 128);
            qweight_init(&qg, QSCHEME_W4A16, out, in, 128);
            quant_rtn(&qr, W, QGRID_ABSMAX_QMAX);
            gptq_opts_default(&o);
            assert_int_equal(gptq_quantize(&qg, W, h.H, &o, &st, &err), 0);
            qweight_dequant(&qr, Qr);
            qweight_dequant(&qg, Qg);
            er = recon_err(W, Qr, held, nheld * L, out, in);
            eg = recon_err(W, Qg, held, nheld * L, out, in);
            print_message("layer %d %-22s held-out E_gptq/E_rtn = %.3f\n", l,
                          model_lin_name((enum model_lin)w), eg / er);
            if (!(eg < er))
                fail_msg("layer %d %s: GPTQ %.6g is not below RTN %.6g", l,
                         model_lin_name((enum model_lin)w), eg, er);
            hess_release(&h);
            qweight_release(&qr);
            qweight_release(&qg);
            free(W);
            free(Qr);
            free(Qg);
        }
        for (int k = 0; k < 4; k++)
            free(c.buf[k]);
        free(x);
    }
    calib_release(&cal);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_bytes),
        cmocka_unit_test(test_roundtrip_schemes),
        cmocka_unit_test(test_model_roundtrip),
        cmocka_unit_test(test_fused_rule),
        cmocka_unit_test(test_gptq_beats_rtn_on_tiny_a),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
