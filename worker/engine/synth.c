/*
 * synth: the synthetic checkpoint writer (see synth.h). The config is built as 4.57-style JSON
 * text, parsed and validated by worker/engine/config.c (so a synthetic config is always one the
 * engine accepts), converted when the v5 style is asked for, and written in transformers' format.
 */
#include "worker/engine/synth.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/kern.h"
#include "common/st.h"

void synth_opts_default(struct synth_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->hidden_size = 2048;
    o->intermediate_size = 4096;
    o->num_hidden_layers = 30;
    o->num_attention_heads = 32;
    o->num_key_value_heads = 8;
    o->head_dim = 64;
    o->vocab_size = 102400;
    o->max_position_embeddings = 65536;
    o->tie_word_embeddings = 1;
    o->rope_type = CONFIG_ROPE_LLAMA3;
    o->rope_theta = 1000000.0;
    o->rope_factor = 16.0;
    o->rms_norm_eps = 1e-5;
    o->family = FAMILY_EXAONE4;
    o->scale_emb = 1.0;
    o->scale_depth = 1.0;
    o->dim_model_base = 1.0;
    o->sliding_window = 0;
    o->sliding_window_pattern = 4;
    o->explicit_layer_types = 1;
    o->style = CONFIG_STYLE_V4;
    o->seed = 1;
    o->std = 0.02f;
    o->max_shard_bytes = 2000000000ull;
}

int synth_opts_shape(struct synth_opts *o, const char *shape)
{
    static const struct {
        const char *name;
        enum family_id fam;
        int H, I, L, nh, nkv, hd, V, maxpos;
        enum config_rope_type rope;
        double theta, factor, eps, semb, sdepth, dbase;
    } shapes[] = {
        { "llama-3.2-1b", FAMILY_LLAMA, 2048, 8192, 16, 32, 8, 64, 128256, 131072,
          CONFIG_ROPE_LLAMA3, 500000.0, 32.0, 1e-5, 1, 1, 1 },
        { "qwen3-1.7b", FAMILY_QWEN3, 2048, 6144, 28, 16, 8, 128, 151936, 40960,
          CONFIG_ROPE_DEFAULT, 1000000.0, 1, 1e-6, 1, 1, 1 },
        { "minicpm-2b", FAMILY_MINICPM, 2304, 5760, 40, 36, 36, 64, 122753, 4096,
          CONFIG_ROPE_DEFAULT, 10000.0, 1, 1e-5, 12.0, 1.4, 256.0 },
    };
    for (size_t i = 0; i < EXAQ_ARRAY_LEN(shapes); i++) {
        if (strcmp(shapes[i].name, shape) != 0)
            continue;
        synth_opts_default(o);
        o->family = shapes[i].fam;
        o->hidden_size = shapes[i].H;
        o->intermediate_size = shapes[i].I;
        o->num_hidden_layers = shapes[i].L;
        o->num_attention_heads = shapes[i].nh;
        o->num_key_value_heads = shapes[i].nkv;
        o->head_dim = shapes[i].hd;
        o->vocab_size = shapes[i].V;
        o->max_position_embeddings = shapes[i].maxpos;
        o->tie_word_embeddings = 1;
        o->rope_type = shapes[i].rope;
        o->rope_theta = shapes[i].theta;
        o->rope_factor = shapes[i].factor;
        o->rms_norm_eps = shapes[i].eps;
        o->scale_emb = shapes[i].semb;
        o->scale_depth = shapes[i].sdepth;
        o->dim_model_base = shapes[i].dbase;
        o->explicit_layer_types = 0;
        return 0;
    }
    return -ENOENT;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Approximately standard normal: sum of four 16-bit uniforms, centred and scaled to unit
 * variance (Irwin-Hall, variance 4/12). */
static inline float fast_normal(uint64_t r)
{
    float s = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) +
              (float)(r >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

struct synth_fill {
    const struct synth_opts *o;
};

static int fill_tensor(void *arg, const struct st_wtensor *t, void *dst, size_t nbytes, char **err)
{
    const struct synth_fill *f = arg;
    (void)err;
    uint64_t s = f->o->seed * 0x2545f4914f6cdd1dull ^ fnv1a(t->name);
    uint16_t *d = dst;
    size_t n = nbytes / 2;
    int is_norm = t->ndim == 1;
    float mean = is_norm ? 1.0f : 0.0f, std = f->o->std;
    for (size_t i = 0; i < n; i++)
        d[i] = kern_f32_to_bf16(mean + std * fast_normal(splitmix64(&s)));
    return 0;
}

static char *config_json(const struct synth_opts *o)
{
    struct buf b;
    buf_init(&b);
    char theta[40], eps[40], factor[40];
    const struct family *fam = family_get(o->family);
    config_format_float(o->rope_theta, theta, sizeof(theta));
    config_format_float(o->rms_norm_eps, eps, sizeof(eps));
    config_format_float(o->rope_factor, factor, sizeof(factor));
    buf_printf(&b,
               "{\"architectures\":[\"%s\"],\"model_type\":\"%s\","
               "\"attention_dropout\":0.0,\"bos_token_id\":1,\"eos_token_id\":%d,"
               "\"pad_token_id\":0,\"torch_dtype\":\"bfloat16\",\"dtype\":\"bfloat16\","
               "\"head_dim\":%d,\"hidden_act\":\"silu\",\"hidden_size\":%d,"
               "\"initializer_range\":0.02,\"intermediate_size\":%d,"
               "\"max_position_embeddings\":%d,\"num_attention_heads\":%d,"
               "\"num_hidden_layers\":%d,\"num_key_value_heads\":%d,\"rms_norm_eps\":%s,",
               fam->architecture, fam->model_type, o->family == FAMILY_EXAONE4 ? 361 : 2,
               o->head_dim, o->hidden_size, o->intermediate_size, o->max_position_embeddings,
               o->num_attention_heads, o->num_hidden_layers, o->num_key_value_heads, eps);
    if (o->rope_type == CONFIG_ROPE_LLAMA3)
        buf_printf(&b,
                   "\"rope_scaling\":{\"factor\":%s,\"high_freq_factor\":4.0,"
                   "\"low_freq_factor\":1.0,\"original_max_position_embeddings\":8192,"
                   "\"rope_type\":\"llama3\"},",
                   factor);
    else
        buf_puts(&b, "\"rope_scaling\":null,");
    buf_printf(&b, "\"rope_theta\":%s,", theta);
    if (fam->mup_scales) {
        char a[40], d[40], m[40];
        config_format_float(o->scale_emb, a, sizeof(a));
        config_format_float(o->scale_depth, d, sizeof(d));
        config_format_float(o->dim_model_base, m, sizeof(m));
        buf_printf(&b, "\"scale_emb\":%s,\"scale_depth\":%s,\"dim_model_base\":%s,", a, d, m);
    }
    if (fam->window == FAMILY_WINDOW_QWEN)
        buf_puts(&b, "\"use_sliding_window\":false,\"sliding_window\":null,");
    if (fam->window != FAMILY_WINDOW_EXAONE4) {
        /* No window keys for llama / minicpm. */
    } else if (o->sliding_window > 0)
        buf_printf(&b, "\"sliding_window\":%d,\"sliding_window_pattern\":%d,", o->sliding_window,
                   o->sliding_window_pattern);
    else
        buf_puts(&b, "\"sliding_window\":null,\"sliding_window_pattern\":null,");
    if (fam->window == FAMILY_WINDOW_EXAONE4 &&
        (o->explicit_layer_types || o->sliding_window == 0)) {
        buf_puts(&b, "\"layer_types\":[");
        for (int i = 0; i < o->num_hidden_layers; i++) {
            int sliding = o->sliding_window > 0 && o->sliding_window_pattern > 0 &&
                          (i + 1) % o->sliding_window_pattern != 0;
            buf_printf(&b, "%s\"%s\"", i ? "," : "",
                       sliding ? "sliding_attention" : "full_attention");
        }
        buf_puts(&b, "],");
    }
    buf_printf(&b,
               "\"tie_word_embeddings\":%s,\"transformers_version\":\"4.57.3\","
               "\"use_cache\":true,\"vocab_size\":%d}",
               o->tie_word_embeddings ? "true" : "false", o->vocab_size);
    return buf_steal(&b);
}

int synth_write(const struct synth_opts *o, const char *dir, char **err)
{
    struct config cfg;
    int rc = mkdir_p(dir, 0755);
    if (rc != 0) {
        err_setf(err, "cannot create '%s': %s", dir, strerror(-rc));
        return rc;
    }
    char *json = config_json(o);
    rc = config_parse(&cfg, json, strlen(json), "config.json", err);
    free(json);
    if (rc != 0)
        return rc;
    if (o->style == CONFIG_STYLE_V5) {
        rc = config_convert_style(&cfg, CONFIG_STYLE_V5, err);
        if (rc == 0)
            rc = config_set_string(&cfg, "transformers_version", "5.0.0");
        if (rc != 0)
            goto out;
    }
    /* Tensors in file order: embedding, layers, final norm, untied head. */
    static const char *lin[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                 "mlp.down_proj" };
    static const char *norms[] = { "self_attn.q_norm", "self_attn.k_norm",
                                   "post_attention_layernorm", "post_feedforward_layernorm",
                                   "input_layernorm" };
    const struct family *fam = family_get(o->family);
    int H = o->hidden_size, I = o->intermediate_size, hd = o->head_dim;
    int qd = o->num_attention_heads * hd, kd = o->num_key_value_heads * hd;
    int shapes[7][2] = { { qd, H }, { kd, H }, { kd, H }, { H, qd }, { I, H }, { I, H }, { H, I } };
    int cap = 3 + o->num_hidden_layers * 12;
    struct st_wtensor *ts = xcalloc((size_t)cap, sizeof(*ts));
    char **names = xcalloc((size_t)cap, sizeof(char *));
    int n = 0;
#define ADD(nm, d0, d1)                                                                            \
    do {                                                                                           \
        names[n] = (nm);                                                                           \
        ts[n].name = names[n];                                                                     \
        ts[n].dtype = ST_BF16;                                                                     \
        ts[n].ndim = (d1) > 0 ? 2 : 1;                                                             \
        ts[n].shape[0] = (d0);                                                                     \
        ts[n].shape[1] = (d1) > 0 ? (d1) : 0;                                                      \
        n++;                                                                                       \
    } while (0)
    ADD(xstrdup("model.embed_tokens.weight"), o->vocab_size, H);
    for (int l = 0; l < o->num_hidden_layers; l++) {
        for (int w = 0; w < 7; w++)
            ADD(xasprintf("model.layers.%d.%s.weight", l, lin[w]), shapes[w][0], shapes[w][1]);
        for (int k = 0; k < 5; k++) {
            /* The family's norms (worker/engine/family.h): q/k norms with QK-norm, and the
             * slots its two branches use (the model_norm order of norms[]). */
            int has = k < 2 ? fam->qk_norm
                            : (k == fam->norm_pre_attn || k == fam->norm_post_attn ||
                               k == fam->norm_pre_mlp || k == fam->norm_post_mlp);
            if (has)
                ADD(xasprintf("model.layers.%d.%s.weight", l, norms[k]), k < 2 ? hd : H, 0);
        }
    }
    ADD(xstrdup("model.norm.weight"), H, 0);
    if (!o->tie_word_embeddings)
        ADD(xstrdup("lm_head.weight"), o->vocab_size, H);
#undef ADD
    struct synth_fill f = { o };
    rc = st_write_dir(dir, ts, n, o->max_shard_bytes, fill_tensor, &f, err);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(ts);
    if (rc != 0)
        goto out;
    char *p = path_join(dir, "config.json");
    rc = config_write(&cfg, p, err);
    free(p);
    if (rc != 0)
        goto out;
    p = path_join(dir, "generation_config.json");
    char *gen = xasprintf("{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
                          "  \"pad_token_id\": %d\n}\n",
                          cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id);
    rc = file_write_atomic(p, gen, strlen(gen));
    if (rc != 0)
        err_setf(err, "cannot write '%s': %s", p, strerror(-rc));
    free(gen);
    free(p);
    if (rc == 0 && o->tokenizer_path) {
        p = path_join(dir, "tokenizer.json");
        rc = file_copy(o->tokenizer_path, p);
        if (rc != 0)
            err_setf(err, "cannot copy '%s' to '%s': %s", o->tokenizer_path, p, strerror(-rc));
        free(p);
    }
out:
    config_release(&cfg);
    return rc;
}
