/*
 * par: the persistent thread pool behind par_for (see par.h for the contract).
 *
 * DESIGN. One job is published at a time through a single 64-bit atomic word holding the job
 * generation (24 bits), the task count (20 bits) and the next unclaimed task (20 bits). A thread
 * claims a task with a compare-and-swap that also checks the generation, so a worker that wakes
 * late can never run a task of a newer job under an older job's function, nor the same task
 * twice. The function and argument of a generation are written before the word is published
 * (release) and stay unchanged until the caller has seen every task of it finish, so a thread
 * that claimed a task of generation g reads g's function. Completion is counted in a separate
 * atomic; the caller waits for it, spinning (the kernels' jobs are short) and yielding after a
 * while. Workers spin for about PAR_SPIN_NS after their last job, then sleep on a condition
 * variable; the publisher broadcasts only when someone sleeps.
 */
#include "kernels/par.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAR_SPIN_NS     200000L /* 0.2 ms: longer than the gaps between kernels of one token */
#define PAR_MAX_THREADS 256

#define GEN_SHIFT       40
#define NTASK_SHIFT     20
#define FIELD_MASK      ((UINT64_C(1) << 20) - 1)

struct pool {
    pthread_mutex_t run_mu; /* held by the thread inside par_for */
    pthread_mutex_t mu;     /* protects sleeping/stop for the condition variable */
    pthread_cond_t cv;
    int nthreads; /* total, the caller included */
    int started;
    pthread_t th[PAR_MAX_THREADS];
    _Atomic uint64_t state;
    _Atomic int done;
    _Atomic int sleeping;
    _Atomic int stop;
    par_fn fn;
    void *arg;
};

static struct pool g_pool = {
    .run_mu = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
};
static pthread_mutex_t g_cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_want_threads; /* 0: not chosen yet */
static __thread int t_in_task;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline uint64_t st_gen(uint64_t s)
{
    return s >> GEN_SHIFT;
}

static inline int st_ntasks(uint64_t s)
{
    return (int)((s >> NTASK_SHIFT) & FIELD_MASK);
}

static inline int st_next(uint64_t s)
{
    return (int)(s & FIELD_MASK);
}

/* Claims and runs tasks of generation gen until none is left. */
static void run_tasks(struct pool *p, uint64_t gen, int tid)
{
    for (;;) {
        uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
        if (st_gen(s) != gen || st_next(s) >= st_ntasks(s))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        t_in_task = 1;
        p->fn(p->arg, st_next(s), tid);
        t_in_task = 0;
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *argp)
{
    struct pool *p = &g_pool;
    int tid = (int)(intptr_t)argp;
    uint64_t seen = st_gen(atomic_load_explicit(&p->state, memory_order_acquire));
    for (;;) {
        long spin_start = now_ns();
        int iter = 0;
        uint64_t gen;
        for (;;) {
            if (atomic_load_explicit(&p->stop, memory_order_acquire))
                return NULL;
            gen = st_gen(atomic_load_explicit(&p->state, memory_order_acquire));
            if (gen != seen)
                break;
            cpu_relax();
            if (++iter % 256 == 0 && now_ns() - spin_start > PAR_SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleeping, 1);
                for (;;) {
                    gen = st_gen(atomic_load(&p->state));
                    if (gen != seen || atomic_load(&p->stop))
                        break;
                    pthread_cond_wait(&p->cv, &p->mu);
                }
                atomic_fetch_sub(&p->sleeping, 1);
                pthread_mutex_unlock(&p->mu);
                spin_start = now_ns();
            }
        }
        seen = gen;
        run_tasks(p, gen, tid);
    }
}

static int env_threads(void)
{
    const char *e = getenv("EXAQ_THREADS");
    if (e && *e) {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == '\0' && v > 0 && v <= PAR_MAX_THREADS)
            return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > PAR_MAX_THREADS)
        n = PAR_MAX_THREADS;
    return (int)n;
}

static void pool_stop_locked(struct pool *p)
{
    if (!p->started)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nthreads; i++)
        pthread_join(p->th[i], NULL);
    atomic_store(&p->stop, 0);
    p->started = 0;
}

/* Starts the pool with g_want_threads threads; run_mu is held. */
static void pool_start_locked(struct pool *p)
{
    if (g_want_threads <= 0)
        g_want_threads = env_threads();
    p->nthreads = g_want_threads;
    for (int i = 1; i < p->nthreads; i++) {
        int rc = pthread_create(&p->th[i], NULL, worker_main, (void *)(intptr_t)i);
        if (rc != 0) {
            /* Run with the threads we have rather than fail. */
            fprintf(stderr, "par: cannot start worker thread: %s\n", strerror(rc));
            p->nthreads = i;
            break;
        }
    }
    p->started = 1;
}

void par_set_nthreads(int n)
{
    struct pool *p = &g_pool;
    pthread_mutex_lock(&g_cfg_mu);
    pthread_mutex_lock(&p->run_mu);
    if (n <= 0)
        n = env_threads();
    if (n > PAR_MAX_THREADS)
        n = PAR_MAX_THREADS;
    if (!p->started || p->nthreads != n) {
        pool_stop_locked(p);
        g_want_threads = n;
    }
    pthread_mutex_unlock(&p->run_mu);
    pthread_mutex_unlock(&g_cfg_mu);
}

int par_nthreads(void)
{
    struct pool *p = &g_pool;
    /* Inside a task, or while another thread owns the pool, par_for runs serially. */
    if (t_in_task || pthread_mutex_trylock(&p->run_mu) != 0)
        return 1;
    if (!p->started)
        pool_start_locked(p);
    int n = p->nthreads;
    pthread_mutex_unlock(&p->run_mu);
    return n;
}

void par_for(int ntasks, par_fn fn, void *arg)
{
    struct pool *p = &g_pool;
    if (ntasks <= 0)
        return;
    if (ntasks > PAR_MAX_TASKS) {
        fprintf(stderr, "par: %d tasks exceed PAR_MAX_TASKS\n", ntasks);
        abort();
    }
    if (ntasks == 1 || t_in_task || pthread_mutex_trylock(&p->run_mu) != 0) {
        int saved = t_in_task;
        t_in_task = 1;
        for (int i = 0; i < ntasks; i++)
            fn(arg, i, 0);
        t_in_task = saved;
        return;
    }
    if (!p->started)
        pool_start_locked(p);
    if (p->nthreads == 1) {
        t_in_task = 1;
        for (int i = 0; i < ntasks; i++)
            fn(arg, i, 0);
        t_in_task = 0;
        pthread_mutex_unlock(&p->run_mu);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&p->state, memory_order_relaxed);
    uint64_t gen = (st_gen(old) + 1) & ((UINT64_C(1) << 24) - 1);
    uint64_t s = (gen << GEN_SHIFT) | ((uint64_t)ntasks << NTASK_SHIFT);
    atomic_store_explicit(&p->state, s, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleeping, memory_order_seq_cst) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p, gen, 0);
    int iter = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < ntasks) {
        cpu_relax();
        if (++iter > 4096)
            sched_yield();
    }
    pthread_mutex_unlock(&p->run_mu);
}

/* Per-thread scratch: freed by the key destructor when a worker exits. */
struct scratch {
    void *ptr[PAR_SCRATCH_SLOTS];
    size_t cap[PAR_SCRATCH_SLOTS];
};

static pthread_key_t g_scratch_key;
static pthread_once_t g_scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v)
{
    struct scratch *s = v;
    if (!s)
        return;
    for (int i = 0; i < PAR_SCRATCH_SLOTS; i++)
        free(s->ptr[i]);
    free(s);
}

static void scratch_key_init(void)
{
    if (pthread_key_create(&g_scratch_key, scratch_free) != 0)
        abort();
}

void *par_scratch(int slot, size_t bytes)
{
    pthread_once(&g_scratch_once, scratch_key_init);
    if (slot < 0 || slot >= PAR_SCRATCH_SLOTS)
        abort();
    struct scratch *s = pthread_getspecific(g_scratch_key);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(g_scratch_key, s) != 0) {
            fprintf(stderr, "par: out of memory\n");
            abort();
        }
    }
    if (bytes == 0)
        bytes = 64;
    if (s->cap[slot] < bytes) {
        size_t cap = (bytes + 4095) & ~(size_t)4095;
        void *p = NULL;
        free(s->ptr[slot]);
        s->ptr[slot] = NULL;
        s->cap[slot] = 0;
        if (posix_memalign(&p, 64, cap) != 0 || !p) {
            fprintf(stderr, "par: out of memory (%zu bytes of scratch)\n", cap);
            abort();
        }
        s->ptr[slot] = p;
        s->cap[slot] = cap;
    }
    return s->ptr[slot];
}

void par_shutdown(void)
{
    struct pool *p = &g_pool;
    pthread_mutex_lock(&g_cfg_mu);
    pthread_mutex_lock(&p->run_mu);
    pool_stop_locked(p);
    pthread_mutex_unlock(&p->run_mu);
    pthread_mutex_unlock(&g_cfg_mu);
    pthread_once(&g_scratch_once, scratch_key_init);
    struct scratch *s = pthread_getspecific(g_scratch_key);
    if (s) {
        scratch_free(s);
        pthread_setspecific(g_scratch_key, NULL);
    }
}
