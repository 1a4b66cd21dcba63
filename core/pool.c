/* pool: generation-tagged job dispatch. The owner writes (fn, ctx) and publishes a job as
 * one 64-bit word, `claim` = generation << 32 | task count << 16 | next task index;
 * workers see the generation change (spinning, or woken from the condvar) and claim
 * task indices with a CAS on that word. Because the count travels in the same word, a
 * worker holding a stale word can neither claim from it (the CAS fails) nor mistake the
 * next job's count for its own. The job is complete when every task has finished — not
 * when every worker has checked in — so a worker that wakes late costs the owner
 * nothing: the owner runs the tasks nobody claimed. */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* How long an idle worker polls before it sleeps on the condition variable. A decode
 * step is ~200 jobs (per layer: q/k/v, their adapters' B, attention, o, gate/up, down)
 * with a little serial work between them; a worker that fell asleep in such a gap costs
 * a futex wake-up (tens of microseconds on a VM) at the next job. So workers poll through
 * a whole step and sleep only when the engine has been idle this long. Nothing else
 * needs the cores meanwhile: OpenBLAS runs single-threaded, on these same workers. */
#define POOL_SPIN_NS 300000L
/* How long a waiting thread (a worker between jobs, the owner waiting for the tasks
 * others claimed) polls with PAUSE alone before it polls with sched_yield between looks.
 * Jobs of a step follow each other within a few microseconds, so this covers the common
 * wait. Past it, the thread being waited for may be runnable on this very CPU — another
 * process (an upload, a client) holds the other one and the scheduler has put both pool
 * threads here: without a yield, the waiter's spin takes the CPU from the thread it waits
 * for until a time slice ends. perf sched on the 2-vCPU guest, during an adapter upload
 * and during a prefill after idle, showed exactly that for milliseconds at a time: the
 * two pool threads alternating on one CPU, the woken worker preempting the engine thread
 * and then spinning its whole 300 µs for the next job, every job. */
#define POOL_PAUSE_NS 20000L
#if defined(__x86_64__) || defined(__i386__)
#define POOL_PAUSE() __builtin_ia32_pause()
#else
#define POOL_PAUSE() ((void)0)
#endif

struct pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;                 /* workers waiting on cv (under mu) */
    unsigned long naps;           /* times a worker began waiting on cv (under mu) */
    unsigned wakes;               /* pool_wake calls that found sleepers (under mu) */
    _Atomic uint64_t claim;       /* generation << 32 | n_tasks << 16 | next task index */
    atomic_int finished;          /* tasks of the current generation finished */
    atomic_int quit;
    /* the current job; written by the owner before it publishes a generation, read only
     * by a thread that has claimed one of its tasks */
    pool_fn fn;
    void *ctx;
    int first;                    /* task index of claim index 0 (jobs of > 65535 tasks) */
};

#define CLAIM_MAX 0xFFFF  /* tasks per published job */

typedef struct {
    pool *p;
    int id;
} worker_arg;

/* Claims and runs tasks of generation gen until none is left (or a newer job started,
 * which can only happen once this one's tasks are all finished). */
static void run_tasks(pool *p, uint32_t gen, int thread)
{
    uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != gen || (c & CLAIM_MAX) >= ((c >> 16) & CLAIM_MAX))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;  /* c now holds the current value */
        p->fn(p->ctx, p->first + (int)(c & CLAIM_MAX), thread);
        atomic_fetch_add_explicit(&p->finished, 1, memory_order_release);
        c = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static long ns_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

/* One look of a wait that began at t0 (*spins counts the looks): PAUSE, and every 64th
 * look a clock read; past POOL_PAUSE_NS, sched_yield instead of PAUSE at those looks, for
 * as long as the wait lasts. Returns 1 once POOL_SPIN_NS have passed (a worker then
 * sleeps; the owner, waiting for claimed tasks, goes on looking). */
static int wait_a_little(const struct timespec *t0, int *spins)
{
    if (++*spins % 64 != 0) {
        POOL_PAUSE();
        return 0;
    }
    long ns = ns_since(t0);
    if (ns >= POOL_PAUSE_NS)
        sched_yield();
    return ns >= POOL_SPIN_NS;
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    pool *p = wa->p;
    int id = wa->id;
    free(wa);
    uint32_t seen = 0;  /* generation at creation: a job published before this thread ran is not missed */
    for (;;) {
        uint32_t g;
        int spins = 0;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while ((g = (uint32_t)(atomic_load_explicit(&p->claim, memory_order_acquire) >> 32)) ==
                   seen &&
               !atomic_load(&p->quit)) {
            if (!wait_a_little(&t0, &spins))
                continue;
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            p->naps++;
            unsigned wakes = p->wakes;
            while ((uint32_t)(atomic_load(&p->claim) >> 32) == seen && !atomic_load(&p->quit) &&
                   p->wakes == wakes)
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            clock_gettime(CLOCK_MONOTONIC, &t0);  /* woken: spin afresh */
        }
        if (atomic_load(&p->quit))
            return NULL;
        seen = g;
        run_tasks(p, g, id);
    }
}

void pool_wait_for(atomic_int *count, int target)
{
    if (atomic_load_explicit(count, memory_order_acquire) >= target)
        return;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int spins = 0;
    while (atomic_load_explicit(count, memory_order_acquire) < target)
        wait_a_little(&t0, &spins);
}

void pool_wake(pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    if (p->sleepers) {
        p->wakes++;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
}

unsigned long pool_naps(pool *p)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->mu);
    unsigned long n = p->naps;
    pthread_mutex_unlock(&p->mu);
    return n;
}

int pool_sleepers(pool *p)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->mu);
    int n = p->sleepers;
    pthread_mutex_unlock(&p->mu);
    return n;
}

pool *pool_create(int n_threads, lr_error *err)
{
    pool *p = calloc(1, sizeof *p);
    if (!p || n_threads < 1) {
        free(p);
        lr_error_set(err, n_threads < 1 ? LR_EINVAL : LR_ENOMEM, "cannot create a pool of %d "
                     "threads", n_threads);
        return NULL;
    }
    p->n_threads = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads)
        goto fail;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa)
            goto fail;
        *wa = (worker_arg){p, i};
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            goto fail;
        }
        p->n_threads++;
    }
    return p;
fail:
    pool_free(p);
    lr_error_set(err, LR_ENOMEM, "cannot start %d worker threads", n_threads - 1);
    return NULL;
}

void pool_free(pool *p)
{
    if (!p)
        return;
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->threads);
    free(p);
}

int pool_threads(const pool *p)
{
    return p->n_threads;
}

void pool_run(pool *p, pool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    for (int first = 0; first < n_tasks; first += CLAIM_MAX) {
        int n = n_tasks - first < CLAIM_MAX ? n_tasks - first : CLAIM_MAX;
        /* No worker reads fn/ctx/first now: every task of the previous job has finished
         * and its word's claims are exhausted. */
        p->fn = fn;
        p->ctx = ctx;
        p->first = first;
        atomic_store_explicit(&p->finished, 0, memory_order_relaxed);
        uint32_t gen = (uint32_t)(atomic_load_explicit(&p->claim, memory_order_relaxed) >> 32) + 1;
        atomic_store_explicit(&p->claim, (uint64_t)gen << 32 | (uint64_t)n << 16,
                              memory_order_release);
        pthread_mutex_lock(&p->mu);
        if (p->sleepers)
            pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, gen, 0);
        pool_wait_for(&p->finished, n);   /* workers still on tasks they claimed */
    }
}
