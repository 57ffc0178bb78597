/*
 * cuda_loader: finds libexaq_cuda.so at run time, checks its ABI table, initialises it once,
 * and offers the host-pointer versions of the ops that the KERN_IMPL_CUDA dispatch cases call
 * (see kernels/cuda.h). This file holds no CUDA symbol: it only uses dlopen/dlsym, so every
 * binary that links it still starts on a machine without the CUDA runtime, where the backend
 * is simply unavailable with a reason ("no library: ...", "no driver: ...", "no device: ...").
 *
 * The library stays loaded once opened (also after a failed init): unloading the CUDA runtime
 * from a live process is not supported by NVIDIA and gains nothing. Host wrappers hold one
 * mutex for the whole upload/run/download, because the device-level table is single-threaded.
 * Each wrapper makes one device allocation per call, split into 256-byte-aligned views.
 */
#include "kernels/cuda.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/attention.h"
#include "kernels/kern.h"
#include "kernels/matmul.h"

_Static_assert(CUDA_QFMT_INT == LINEAR_FMT_INT && CUDA_QFMT_INT4 == LINEAR_FMT_INT4 &&
                   CUDA_QFMT_FP8 == LINEAR_FMT_FP8,
               "cuda.h CUDA_QFMT_* must equal enum linear_fmt");

_Static_assert(CUDA_DTYPE_F32 == KERN_F32 && CUDA_DTYPE_BF16 == KERN_BF16 &&
                   CUDA_DTYPE_F16 == KERN_F16,
               "CUDA_DTYPE_* must match enum kern_dtype");

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const struct cuda_api *g_api; /* non-NULL once loaded and initialised */
static char g_why[1024];             /* why g_api is NULL */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static __thread char t_err[1024];

static void set_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_err, sizeof(t_err), fmt, ap);
    va_end(ap);
}

static void set_why(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_why(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_why, sizeof(g_why), fmt, ap);
    va_end(ap);
}

/* The directory of the running executable into dir (no trailing slash); 0 or -1. */
static int exe_dir(char *dir, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", dir, len - 1);
    if (n <= 0)
        return -1;
    dir[n] = 0;
    char *slash = strrchr(dir, '/');
    if (!slash)
        return -1;
    *slash = 0;
    return 0;
}

/* dlopens path; on failure records "no library: ..." and returns NULL. */
static void *open_lib(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        set_why("no library: cannot load '%s': %s", path, e ? e : "unknown dlopen error");
    }
    return h;
}

static void load_once(void)
{
    char dir[4096], cand[3][4200];
    const char *used = CUDA_LIB_NAME;
    void *h = NULL;
    const char *env = getenv("EXAQ_CUDA_LIB");

    if (env && *env) {
        if (!strcmp(env, "off") || !strcmp(env, "0")) {
            set_why("disabled: EXAQ_CUDA_LIB=%s", env);
            return;
        }
        if (access(env, F_OK) != 0) {
            set_why("no library: EXAQ_CUDA_LIB '%s': %s", env, strerror(errno));
            return;
        }
        used = env;
        h = open_lib(env);
    } else {
        int nc = 0;
        if (exe_dir(dir, sizeof(dir)) == 0) {
            snprintf(cand[nc++], sizeof(cand[0]), "%s/../lib/" CUDA_LIB_NAME, dir);
            snprintf(cand[nc++], sizeof(cand[0]), "%s/../../lib/" CUDA_LIB_NAME, dir);
            /* The unit tests of build/CFG/tests/unit/AREA/. */
            snprintf(cand[nc++], sizeof(cand[0]), "%s/../../../lib/" CUDA_LIB_NAME, dir);
        }
        int found = 0;
        for (int i = 0; i < nc && !found; i++) {
            if (access(cand[i], F_OK) != 0)
                continue;
            found = 1;
            used = cand[i];
            h = open_lib(cand[i]);
        }
        if (!found) {
            /* Installed libraries: the dynamic linker's search path. */
            h = dlopen(CUDA_LIB_NAME, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                set_why("no library: %s is not at %s%s%s%s%s nor on the linker path (build it "
                        "with nvcc, or set EXAQ_CUDA_LIB)",
                        CUDA_LIB_NAME, nc ? cand[0] : "<exe dir unknown>", nc ? ", " : "",
                        nc ? cand[1] : "", nc ? " or " : "", nc ? cand[2] : "");
                return;
            }
        }
    }
    if (!h)
        return; /* open_lib set the reason */

    cuda_get_api_fn get;
    void *sym = dlsym(h, CUDA_ENTRY_SYMBOL);
    memcpy(&get, &sym, sizeof(get)); /* object -> function pointer without a cast warning */
    if (!sym) {
        set_why("no library: '%s' does not export %s", used, CUDA_ENTRY_SYMBOL);
        return;
    }
    const struct cuda_api *t = get();
    if (!t) {
        set_why("no library: %s() in '%s' returned NULL", CUDA_ENTRY_SYMBOL, used);
        return;
    }
    if (t->abi_version != CUDA_ABI_VERSION || t->size != sizeof(struct cuda_api)) {
        set_why("no library: '%s' has ABI version %u (table of %u bytes); this build needs "
                "version %u (%zu bytes): rebuild it",
                used, t->abi_version, t->size, CUDA_ABI_VERSION, sizeof(struct cuda_api));
        return;
    }
    int rc = t->init();
    if (rc) {
        const char *m = t->last_error();
        set_why("%s", m && *m ? m : "no device: init failed");
        return;
    }
    g_api = t;
}

const struct cuda_api *cuda_api_get(const char **why)
{
    pthread_once(&g_once, load_once);
    if (!g_api && why)
        *why = g_why;
    return g_api;
}

const char *cuda_last_error(void)
{
    pthread_once(&g_once, load_once);
    if (!g_api)
        return g_why;
    return t_err;
}

/* Copies the library's message for a failed call and returns rc. */
static int api_failed(const struct cuda_api *a, int rc)
{
    const char *m = a->last_error();
    set_err("%s", m && *m ? m : "cuda backend call failed");
    return rc;
}

int cuda_device_get_info(struct cuda_device_info *info, const char **why)
{
    const struct cuda_api *a = cuda_api_get(why);
    if (!a)
        return -ENOSYS;
    pthread_mutex_lock(&g_mu);
    int rc = a->device_info(info);
    if (rc) {
        api_failed(a, rc);
        if (why)
            *why = t_err;
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* ---- host-pointer wrappers --------------------------------------------------------------- */

/* One device block split into views. */
struct dev_block {
    size_t total;
    char *base;
};

static size_t view(struct dev_block *b, size_t bytes)
{
    size_t off = b->total;
    b->total += (bytes + 255) & ~(size_t)255;
    return off;
}

/* Starts a wrapper: the backend (or -ENOSYS) and the lock. */
static const struct cuda_api *begin(int *rc)
{
    const struct cuda_api *a = cuda_api_get(NULL);
    if (!a) {
        set_err("%s", g_why);
        *rc = -ENOSYS;
        return NULL;
    }
    pthread_mutex_lock(&g_mu);
    *rc = 0;
    return a;
}

static int block_alloc(const struct cuda_api *a, struct dev_block *b)
{
    void *p = NULL;
    int rc = a->mem_alloc(&p, b->total);
    b->base = p;
    return rc ? api_failed(a, rc) : 0;
}

/* Frees the block, unlocks, and returns the first failure. */
static int end(const struct cuda_api *a, struct dev_block *b, int rc)
{
    if (b->base) {
        int r2 = a->mem_free(b->base);
        b->base = NULL;
        if (r2 && !rc)
            rc = api_failed(a, r2);
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

#define API(call)                                                                                  \
    do {                                                                                           \
        rc = (call);                                                                               \
        if (rc) {                                                                                  \
            api_failed(a, rc);                                                                     \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

int cuda_host_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nb = sizeof(float) * (size_t)rows * (size_t)n;
    size_t ox = view(&b, nb), ow = w ? view(&b, sizeof(float) * (size_t)n) : 0;
    if (rows <= 0)
        goto out;
    API(block_alloc(a, &b));
    float *dx = (float *)(b.base + ox), *dw = w ? (float *)(b.base + ow) : NULL;
    API(a->copy_h2d(dx, x, nb));
    if (w)
        API(a->copy_h2d(dw, w, sizeof(float) * (size_t)n));
    API(a->rmsnorm(dx, dx, dw, rows, n, eps)); /* in place on the device: y may alias x */
    API(a->copy_d2h(y, dx, nb));
out:
    return end(a, &b, rc);
}

int cuda_host_rope(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq,
                   int cs_bf16)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nb = sizeof(float) * (size_t)T * (size_t)nheads * (size_t)head_dim;
    size_t nf = sizeof(float) * (size_t)(head_dim / 2);
    size_t ox = view(&b, nb), of = view(&b, nf);
    if (nb == 0)
        goto out;
    API(block_alloc(a, &b));
    float *dx = (float *)(b.base + ox), *df = (float *)(b.base + of);
    API(a->copy_h2d(dx, x, nb));
    API(a->copy_h2d(df, inv_freq, nf));
    API(a->rope(dx, T, nheads, head_dim, pos0, df, cs_bf16));
    API(a->copy_d2h(x, dx, nb));
out:
    return end(a, &b, rc);
}

int cuda_host_swiglu(float *h, const float *g, const float *u, size_t n)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nb = sizeof(float) * n;
    size_t og = view(&b, nb), ou = view(&b, nb);
    if (n == 0)
        goto out;
    API(block_alloc(a, &b));
    float *dg = (float *)(b.base + og), *du = (float *)(b.base + ou);
    API(a->copy_h2d(dg, g, nb));
    API(a->copy_h2d(du, u, nb));
    API(a->swiglu(dg, dg, du, n));
    API(a->copy_d2h(h, dg, nb));
out:
    return end(a, &b, rc);
}

int cuda_host_lse(float *out, const float *x, int rows, int n)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nx = sizeof(float) * (size_t)rows * (size_t)n, no = sizeof(float) * (size_t)rows;
    size_t ox = view(&b, nx), oo = view(&b, no);
    if (rows <= 0)
        goto out;
    API(block_alloc(a, &b));
    float *dx = (float *)(b.base + ox), *dout = (float *)(b.base + oo);
    API(a->copy_h2d(dx, x, nx));
    API(a->lse(dout, dx, rows, n));
    API(a->copy_d2h(out, dout, no));
out:
    return end(a, &b, rc);
}

int cuda_host_attention(const struct attn_args *h)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    /* Only keys 0 .. q_off + T - 1 are visible: upload those into a compact cache. */
    int keys = h->q_off + h->T;
    size_t hd = (size_t)h->head_dim;
    size_t nq = sizeof(float) * (size_t)h->T * (size_t)h->n_heads * hd;
    size_t nkv = sizeof(float) * (size_t)h->n_kv_heads * (size_t)keys * hd;
    size_t oq = view(&b, nq), ok = view(&b, nkv), ov = view(&b, nkv), oo = view(&b, nq);
    if (h->T <= 0)
        goto out;
    API(block_alloc(a, &b));
    struct cuda_attn d = {
        .T = h->T,
        .n_heads = h->n_heads,
        .n_kv_heads = h->n_kv_heads,
        .head_dim = h->head_dim,
        .q = (const float *)(b.base + oq),
        .k = (const float *)(b.base + ok),
        .v = (const float *)(b.base + ov),
        .kv_cap = keys,
        .q_off = h->q_off,
        .window = h->window,
        .scale = h->scale,
        .out = (float *)(b.base + oo),
    };
    API(a->copy_h2d(b.base + oq, h->q, nq));
    size_t per = sizeof(float) * (size_t)keys * hd;
    for (int g = 0; g < h->n_kv_heads; g++) {
        size_t src = (size_t)g * (size_t)h->kv_cap * hd;
        API(a->copy_h2d(b.base + ok + (size_t)g * per, h->k + src, per));
        API(a->copy_h2d(b.base + ov + (size_t)g * per, h->v + src, per));
    }
    API(a->attention(&d));
    API(a->copy_d2h(h->out, b.base + oo, nq));
out:
    return end(a, &b, rc);
}

int cuda_host_matmul(float *y, const float *x, int T, int out, int in, int dtype, const void *w,
                     int accumulate)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nx = sizeof(float) * (size_t)T * (size_t)in;
    size_t nw = kern_dtype_size((enum kern_dtype)dtype) * (size_t)out * (size_t)in;
    size_t ny = sizeof(float) * (size_t)T * (size_t)out;
    size_t ox = view(&b, nx), ow = view(&b, nw), oy = view(&b, ny);
    if (ny == 0)
        goto out;
    API(block_alloc(a, &b));
    float *dy = (float *)(b.base + oy);
    API(a->copy_h2d(b.base + ox, x, nx));
    API(a->copy_h2d(b.base + ow, w, nw));
    if (accumulate)
        API(a->copy_h2d(dy, y, ny));
    API(a->matmul(dy, (const float *)(b.base + ox), T, out, in, dtype, b.base + ow, accumulate));
    API(a->copy_d2h(y, dy, ny));
out:
    return end(a, &b, rc);
}

int cuda_host_syrk(float *H, const float *X, int T, int n, float alpha, float beta)
{
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t nh = sizeof(float) * (size_t)n * (size_t)n, nx = sizeof(float) * (size_t)T * (size_t)n;
    size_t oh = view(&b, nh), ox = view(&b, nx);
    if (n <= 0)
        goto out;
    API(block_alloc(a, &b));
    float *dh = (float *)(b.base + oh);
    if (beta != 0.0f)
        API(a->copy_h2d(dh, H, nh));
    API(a->copy_h2d(b.base + ox, X, nx));
    API(a->syrk(dh, (const float *)(b.base + ox), T, n, alpha, beta));
    API(a->copy_d2h(H, dh, nh));
out:
    return end(a, &b, rc);
}

int cuda_host_qmatmul(float *y, const float *x, int T, const struct linear *L, int accumulate)
{
    if (L->fmt != LINEAR_FMT_INT && L->fmt != LINEAR_FMT_INT4 && L->fmt != LINEAR_FMT_FP8) {
        set_err("qmatmul: format %d is not quantized", (int)L->fmt);
        return -EINVAL;
    }
    int rc;
    const struct cuda_api *a = begin(&rc);
    if (!a)
        return rc;
    struct dev_block b = { 0, NULL };
    size_t rows = (size_t)L->out;
    size_t nw =
        L->fmt == LINEAR_FMT_INT4 ? rows * linear_int4_row_bytes(L->in) : rows * (size_t)L->in;
    size_t ns = L->group_size == 0 ? 1 : rows * (size_t)L->ngroups;
    size_t nx = sizeof(float) * (size_t)T * (size_t)L->in;
    size_t ny = sizeof(float) * (size_t)T * rows;
    size_t ni = sizeof(int32_t) * (size_t)L->in;
    size_t ox = view(&b, nx), ow = view(&b, nw), os = view(&b, ns * sizeof(uint16_t));
    size_t oz = L->zp ? view(&b, ns) : 0, og = L->g_idx ? view(&b, ni) : 0;
    size_t op = L->pinv ? view(&b, ni) : 0, oy = view(&b, ny);
    if (ny == 0)
        goto out;
    API(block_alloc(a, &b));
    struct cuda_qlin q = {
        .fmt = (int)L->fmt,
        .out = L->out,
        .in = L->in,
        .bits = L->bits,
        .group_size = L->group_size,
        .ngroups = L->ngroups,
        .w = b.base + ow,
        .scale = (const uint16_t *)(b.base + os),
        .zp = L->zp ? (const int8_t *)(b.base + oz) : NULL,
        .g_idx = L->g_idx ? (const int32_t *)(b.base + og) : NULL,
        .pinv = L->pinv ? (const int32_t *)(b.base + op) : NULL,
    };
    float *dy = (float *)(b.base + oy);
    API(a->copy_h2d(b.base + ox, x, nx));
    API(a->copy_h2d(b.base + ow, L->w, nw));
    API(a->copy_h2d(b.base + os, L->scale, ns * sizeof(uint16_t)));
    if (L->zp)
        API(a->copy_h2d(b.base + oz, L->zp, ns));
    if (L->g_idx)
        API(a->copy_h2d(b.base + og, L->g_idx, ni));
    if (L->pinv)
        API(a->copy_h2d(b.base + op, L->pinv, ni));
    if (accumulate)
        API(a->copy_h2d(dy, y, ny));
    API(a->qmatmul(dy, (const float *)(b.base + ox), T, &q, accumulate));
    API(a->copy_d2h(y, dy, ny));
out:
    return end(a, &b, rc);
}

/* ---- guarded device buffers (tests) -------------------------------------------------------- */

int cuda_gbuf_new(struct cuda_gbuf *g, size_t n, const float *init)
{
    memset(g, 0, sizeof(*g));
    const struct cuda_api *a = cuda_api_get(NULL);
    if (!a) {
        set_err("%s", g_why);
        return -ENOSYS;
    }
    size_t tot = n + 2 * (size_t)CUDA_GUARD_FLOATS;
    float *hb = malloc(sizeof(float) * tot);
    if (!hb) {
        set_err("cannot allocate %zu host bytes", sizeof(float) * tot);
        return -ENOMEM;
    }
    for (size_t i = 0; i < CUDA_GUARD_FLOATS; i++)
        hb[i] = hb[CUDA_GUARD_FLOATS + n + i] = CUDA_GUARD_VALUE;
    for (size_t i = 0; i < n; i++)
        hb[CUDA_GUARD_FLOATS + i] = init ? init[i] : NAN;
    pthread_mutex_lock(&g_mu);
    void *p = NULL;
    int rc = a->mem_alloc(&p, sizeof(float) * tot);
    if (rc == 0) {
        rc = a->copy_h2d(p, hb, sizeof(float) * tot);
        if (rc)
            a->mem_free(p);
    }
    if (rc) {
        api_failed(a, rc);
    } else {
        g->base = p;
        g->d = g->base + CUDA_GUARD_FLOATS;
        g->n = n;
    }
    pthread_mutex_unlock(&g_mu);
    free(hb);
    return rc;
}

int cuda_gbuf_get(const struct cuda_gbuf *g, float *dst)
{
    const struct cuda_api *a = cuda_api_get(NULL);
    if (!a || !g->base) {
        set_err("%s", a ? "cuda_gbuf_get: buffer not allocated" : g_why);
        return a ? -EINVAL : -ENOSYS;
    }
    pthread_mutex_lock(&g_mu);
    int rc = a->copy_d2h(dst, g->d, sizeof(float) * g->n);
    if (rc)
        api_failed(a, rc);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

int cuda_gbuf_check(const struct cuda_gbuf *g, const char *what)
{
    const struct cuda_api *a = cuda_api_get(NULL);
    if (!a || !g->base) {
        set_err("%s", a ? "cuda_gbuf_check: buffer not allocated" : g_why);
        return a ? -EINVAL : -ENOSYS;
    }
    size_t tot = g->n + 2 * (size_t)CUDA_GUARD_FLOATS;
    float *hb = malloc(sizeof(float) * tot);
    if (!hb) {
        set_err("cannot allocate %zu host bytes", sizeof(float) * tot);
        return -ENOMEM;
    }
    pthread_mutex_lock(&g_mu);
    int rc = a->copy_d2h(hb, g->base, sizeof(float) * tot);
    if (rc)
        api_failed(a, rc);
    pthread_mutex_unlock(&g_mu);
    for (size_t i = 0; i < CUDA_GUARD_FLOATS && rc == 0; i++) {
        if (hb[i] != CUDA_GUARD_VALUE || hb[CUDA_GUARD_FLOATS + g->n + i] != CUDA_GUARD_VALUE) {
            set_err("%s: device sentinel overwritten (%s the buffer)", what,
                    hb[i] != CUDA_GUARD_VALUE ? "before" : "after");
            rc = -EFAULT;
        }
    }
    free(hb);
    return rc;
}

void cuda_gbuf_free(struct cuda_gbuf *g)
{
    if (!g || !g->base)
        return;
    const struct cuda_api *a = cuda_api_get(NULL);
    if (a) {
        pthread_mutex_lock(&g_mu);
        a->mem_free(g->base);
        pthread_mutex_unlock(&g_mu);
    }
    memset(g, 0, sizeof(*g));
}
