/* pool: a few persistent worker threads for the engine's own parallel loops (decode-sized
 * matrix products, attention, norms) — the work OpenBLAS does not do. The calling thread
 * takes part, so a pool of n threads starts n - 1 workers. Workers spin briefly after a
 * job (jobs come every few microseconds while decoding) and then sleep; a job never
 * waits for a sleeping worker to wake (the caller runs the tasks nobody claimed). */
#ifndef LORAD_POOL_H
#define LORAD_POOL_H

#include <stdatomic.h>

#include "error.h"

typedef struct pool pool;

/* One task: runs task index `task` on thread `thread` (0 = the caller). */
typedef void (*pool_fn)(void *ctx, int task, int thread);

/* n_threads >= 1 in total (1 = no workers, pool_run runs inline). NULL + err on failure.
 * Owned by the caller (pool_free). */
pool *pool_create(int n_threads, lr_error *err);
void pool_free(pool *p);  /* joins the workers; accepts NULL */
int pool_threads(const pool *p);

/* Runs fn for tasks 0 .. n_tasks-1, spread over the threads, and returns when all are
 * done. Not reentrant: one pool_run at a time, from the pool's owner thread. */
void pool_run(pool *p, pool_fn fn, void *ctx, int n_tasks);

/* Returns once *count >= target, waiting as pool_run waits for tasks that other threads
 * claimed (PAUSE, then yielding, however long). For a task of a job that depends on work
 * other tasks of the same job have already claimed — never on work nobody has claimed yet
 * (the caller may be the only thread running the job's tasks). Any thread. */
void pool_wait_for(atomic_int *count, int target);

/* Wakes the sleeping workers so that they spin, ready for the jobs about to come (they
 * sleep again if none comes). Any thread; accepts NULL. A worker asleep on an idle CPU
 * takes 1.5-2 ms to wake on the 2-vCPU VM, and until it does the first jobs of a step
 * run on the caller alone: woken when a request arrives, it is awake by the first job. */
void pool_wake(pool *p);

/* Workers asleep right now (0 for NULL); any thread. For tests and diagnostics. */
int pool_sleepers(pool *p);

/* How many times workers have gone to sleep since the pool was created (0 for NULL); any
 * thread. For tests and diagnostics: unlike pool_sleepers, it records a wake-up that was
 * followed by sleep again before anyone looked. */
unsigned long pool_naps(pool *p);

#endif
