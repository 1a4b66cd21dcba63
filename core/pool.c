/* pool: generation-counter job dispatch. The owner publishes (fn, ctx, n_tasks), bumps
 * `gen`; workers see the new generation (spinning, or woken from the condvar), claim
 * task indices from an atomic counter, and count themselves done. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define POOL_SPIN 256  /* polls before a worker sleeps (~10 us): OpenBLAS needs the cores */
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
    atomic_uint gen;              /* job generation */
    atomic_int next;              /* next task index to claim */
    atomic_int done;              /* workers finished with the current generation */
    atomic_int quit;
    pool_fn fn;
    void *ctx;
    int n_tasks;
};

typedef struct {
    pool *p;
    int id;
} worker_arg;

static void run_tasks(pool *p, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            break;
        p->fn(p->ctx, t, thread);
    }
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    pool *p = wa->p;
    int id = wa->id;
    free(wa);
    unsigned seen = 0;  /* gen at creation: a job published before this thread ran is not missed */
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->quit)) {
            if (++spins < POOL_SPIN) {
                POOL_PAUSE();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit))
            return NULL;
        seen = g;
        run_tasks(p, id);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
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
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    while (atomic_load_explicit(&p->done, memory_order_acquire) < p->n_threads - 1)
        POOL_PAUSE();
}
