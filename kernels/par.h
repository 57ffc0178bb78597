/*
 * par: one small persistent pthread pool for the CPU kernels (no OpenMP).
 *
 * par_for(n, fn, arg) runs fn(arg, task, tid) for task = 0..n-1 on the calling thread plus the
 * pool's workers and returns when every task has finished. Tasks are claimed dynamically, so
 * uneven tasks balance themselves. tid is in [0, par_nthreads()) and identifies the executing
 * thread for the duration of the call (the caller is tid 0), so a kernel may index per-thread
 * scratch by it. Workers spin briefly after a job and then sleep on a condition variable, which
 * keeps the per-call overhead of decode-sized jobs in the microseconds.
 *
 * Reentrancy: a par_for issued from inside a task, or while another thread is inside par_for,
 * runs its tasks serially on the calling thread (tid 0 of that nested call), so kernels may be
 * used from several threads without corrupting the pool; they then just do not parallelise.
 * The pool starts lazily with the number of online CPUs unless par_set_nthreads() or the
 * environment variable EXAQ_THREADS says otherwise.
 */
#ifndef EXAQ_PAR_H
#define EXAQ_PAR_H

#include <stddef.h>

typedef void (*par_fn)(void *arg, int task, int tid);

/* Sets the total thread count (the caller included); n <= 0 means the online CPU count. Joins
 * the old workers; must not be called from inside a task. */
void par_set_nthreads(int n);
/* Total threads the next par_for from this thread will use (>= 1); starts the pool if needed.
 * Returns 1 inside a task or while another thread is inside par_for (those calls run serially). */
int par_nthreads(void);
/* Runs fn for tasks 0..ntasks-1; ntasks <= 0 returns at once. At most PAR_MAX_TASKS tasks. */
void par_for(int ntasks, par_fn fn, void *arg);
#define PAR_MAX_TASKS (1 << 20)

/* A 64-byte-aligned scratch buffer private to the calling thread, at least `bytes` long. Each
 * thread has PAR_SCRATCH_SLOTS independent slots; the buffer stays valid (and keeps its
 * contents) until the same thread asks for the same slot with a larger size. Freed when the
 * thread exits (pool workers) or at par_shutdown() (the calling thread). Aborts on OOM. */
#define PAR_SCRATCH_SLOTS 5
void *par_scratch(int slot, size_t bytes);

/* Stops the workers and frees the calling thread's scratch; the pool restarts on next use. */
void par_shutdown(void);

#endif
