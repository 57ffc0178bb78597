/*
 * fixture: what the stage-level unit tests share (test_awq, test_sparsegpt, test_prune,
 * test_heal, test_eval, test_model): the sanitizer switch that shrinks their workloads, the
 * tiny-a data paths, and an in-process harness that runs one native stage and records what it
 * reported. Include after cmocka.h.
 */
#ifndef EXAQ_TESTS_FIXTURE_H
#define EXAQ_TESTS_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "lanes/spec.h"
#include "worker/engine/model.h"
#include "worker/stages/stage.h"

/* Sanitizer builds (make check) run the kernels without AVX and 50-100x slower: the tests
 * shrink their calibration and perplexity runs there. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

/* A deterministic generator (splitmix64) for the tests' random inputs. */
static uint64_t fx_rng_s;

static inline void fx_rng_seed(uint64_t s)
{
    fx_rng_s = s * 0x9e3779b97f4a7c15ull + 12345;
}

static inline double fx_rng_unif(void) /* in [0, 1) */
{
    uint64_t z = (fx_rng_s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

static inline double fx_rng_normal(void)
{
    double u = fx_rng_unif(), v = fx_rng_unif();
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* The model in dir on the CPU kernels with nthreads threads (0: the default), or the test fails
 * with the loader's message. */
static inline struct model *fx_load(const char *dir, int nthreads)
{
    struct model *m = NULL;
    char *err = NULL;
    struct model_opts o = { nthreads, KERN_IMPL_CPU, 0 };
    int rc = model_load(&m, dir, &o, &err);
    if (rc)
        printf("load %s: %s\n", dir, err);
    free(err);
    assert_int_equal(rc, 0);
    return m;
}

/* The trained tiny EXAONE-4 model and its data (tests run from the repository root). */
#define TINY   "tests/data/tiny-exaone4"
#define VALIDS "tests/data/tiny-a/val.ids.u32"
#define CALIDS "tests/data/tiny-a/calib.ids.u32"

/* One native stage run in-process: its status, message, context (metrics) and what it
 * reported through the stage ops. */
struct fx_run {
    int rc;
    char errmsg[1024];
    struct stage_ctx ctx; /* released by fx_run_free */
    int progress_calls;
    double last_done, last_total;
    struct buf log; /* every log line, '\n'-terminated */
    char *spec;     /* the complete spec the stage ran with */
};

static inline void fx_progress(void *arg, double done, double total, const char *what)
{
    struct fx_run *r = arg;
    (void)what;
    r->progress_calls++;
    r->last_done = done;
    r->last_total = total;
}

static inline void fx_log(void *arg, const char *line)
{
    struct fx_run *r = arg;
    buf_printf(&r->log, "%s\n", line);
}

static const struct stage_ops fx_ops = { fx_progress, NULL, fx_log };

/*
 * Runs the native stage `kind` with spec on in -> out, on 2 threads, polling *cancel (may be
 * NULL). out, when given, is emptied first; the stage dir is a fresh temp dir removed again.
 * Prints the stage's message when it fails.
 */
static inline struct fx_run *fx_run_stage(const char *kind, const char *spec, const char *in,
                                          const char *out, int *cancel)
{
    const struct stage_def *def = stage_find(kind);
    assert_non_null(def);
    struct fx_run *r = xcalloc(1, sizeof(*r));
    char sd[] = "/tmp/exaq-fx-stage-XXXXXX";
    assert_non_null(mkdtemp(sd));
    if (out) {
        rm_rf(out);
        assert_int_equal(mkdir_p(out, 0755), 0);
    }
    buf_init(&r->log);
    stage_ctx_init(&r->ctx);
    r->ctx.kind = kind;
    r->ctx.spec_json = spec;
    r->ctx.input_dir = in;
    r->ctx.output_dir = out;
    r->ctx.stage_dir = sd;
    r->ctx.nthreads = 2;
    r->ctx.cancel_flag = cancel;
    r->ctx.ops = &fx_ops;
    r->ctx.ops_arg = r;
    /* As `exaq-worker run` does, the lanes parser completes the spec (the stage applies no
     * default). A spec the parser refuses goes to the stage as written, so that the stage's
     * own checks of what it cannot run are tested too. */
    char *err = NULL;
    if (lanes_spec_complete(kind, spec, NULL, &r->spec, &err) == 0)
        r->ctx.spec_json = r->spec;
    free(err);
    r->rc = def->run(&r->ctx);
    r->ctx.stage_dir = NULL;
    rm_rf(sd);
    snprintf(r->errmsg, sizeof(r->errmsg), "%s", r->ctx.errmsg);
    if (r->rc)
        printf("%s: %s\n", kind, r->errmsg);
    return r;
}

static inline void fx_run_free(struct fx_run *r)
{
    if (!r)
        return;
    stage_ctx_release(&r->ctx);
    buf_release(&r->log);
    free(r->spec);
    free(r);
}

/* A metric the stage must have reported. */
static inline double fx_metric(struct fx_run *r, const char *name)
{
    double v = NAN;
    if (stage_metric_get(&r->ctx, name, &v) < 0)
        fail_msg("metric %s missing", name);
    return v;
}

/* The quantize stage on tiny-a into out: its status, its message into errmsg, and, when keep
 * is given, its context (metrics), which the caller then releases with stage_ctx_release. */
static inline int fx_quantize(const char *spec, const char *out, char *errmsg, size_t n,
                              struct stage_ctx *keep)
{
    struct fx_run *r = fx_run_stage("quantize", spec, TINY, out, NULL);
    int rc = r->rc;
    snprintf(errmsg, n, "%s", r->errmsg);
    if (keep) {
        *keep = r->ctx;
        keep->ops = NULL; /* r, the ops' argument, is freed below */
        keep->ops_arg = NULL;
        stage_ctx_init(&r->ctx);
    }
    fx_run_free(r);
    return rc;
}

#endif
