/* bench_merge: how much a --merge auto build slows the decode that goes on beside it.
 * The daemon builds an adapter's merged W' on a thread of its own, paced to a tenth of a
 * core (variant_merge_paced, MERGE_DUTY in adapters/registry.c), while the engine keeps
 * decoding on both cores; issue 10 asks that this decode drop by no more than 10% while
 * the W' builds. Here, in one process: closed-loop clients on the base (bench_client:
 * 16 random prompt tokens, 48 greedy tokens, the next request as soon as one ends) stepped
 * by the engine on this thread, and the same paced build of adapter-r16-a's W' on
 * another, as the daemon runs them: pages placed as `lorad serve` places them (the base's
 * at load, each W' as it is built, paced alike), each W' freed after its build, so that
 * the next one reuses the kept block as the daemon's next W' does (the first builds on
 * fresh memory, which costs page faults).
 *
 * Each repetition, for 1 and then 8 clients: decode alone for IDLE_S seconds, decode
 * beside one build, beside another, alone again (ABBA: a drift of the machine linear over
 * those seconds weighs on both sides alike); tokens/s of each side is its tokens over its
 * time. The ratio (beside a build ÷ alone) is taken within each repetition; the median
 * and range over repetitions are printed with the builds' durations.
 * The random SmolLM2-135M-shaped F32 model and rank-16 adapter that `bench_engine
 * --prepare` writes.
 *
 * Usage: bench_merge [WORKDIR] [--quick] [--reps N]  (default 5 repetitions; --quick 1) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/hugemem.h"
#include "core/model.h"
#include "core/variant.h"
#include "bench/benchutil.h"

#define MAX_CLIENTS 8
#define MAX_REPS 9
#define MERGE_DUTY 0.1   /* as adapters/registry.c builds a --merge auto W' */
#define IDLE_S 3.0       /* seconds of decode alone on each side of a repetition's builds */
#define BUILD_MAX_S 300.0

/* The builder thread: builds one W' each time it is asked, then frees it. */
typedef struct {
    const model *m;
    const variant_mix *mix;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int asked, done, quit, failed;
    double seconds;  /* the last build's */
} builder;

static void *builder_main(void *arg)
{
    builder *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->asked && !b->quit)
            pthread_cond_wait(&b->cv, &b->mu);
        if (b->quit)
            break;
        b->asked = 0;
        pthread_mutex_unlock(&b->mu);
        lr_error err = {0};
        double t0 = bench_now();
        variant *v = variant_merge_paced(b->m, b->mix, MERGE_DUTY, &err);
        double t = bench_now() - t0;
        if (!v)
            fprintf(stderr, "bench_merge: the build failed: %s\n", err.msg);
        variant_free(v);
        pthread_mutex_lock(&b->mu);
        b->failed |= !v;
        b->seconds = t;
        b->done = 1;
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static int build_done(builder *b)
{
    pthread_mutex_lock(&b->mu);
    int d = b->done;
    pthread_mutex_unlock(&b->mu);
    return d;
}

/* n closed-loop clients (their state in cl, kept from phase to phase) stepped until
 * `seconds` have passed or, with b, until b's build (started here) is done; tokens/s over
 * the phase into *tps. 0, or -1 on a failure. */
static int run_phase(engine *e, bench_client *cl, int n, double seconds, builder *b, unsigned *seed,
                     double *tps)
{
    lr_error err = {0};
    long tok0 = bench_clients_tokens(cl, n);
    if (b) {
        pthread_mutex_lock(&b->mu);
        b->done = 0;
        b->asked = 1;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
    double t0 = bench_now(), now = t0;
    /* bounded: by the phase's time (a build by BUILD_MAX_S) and a step count */
    for (long guard = 0; guard < 10000000; guard++) {
        if (bench_clients_submit(e, cl, n, seed, "bench_merge"))
            return -1;
        if (engine_step(e, &err) < 0) {
            fprintf(stderr, "bench_merge: %s\n", err.msg);
            return -1;
        }
        now = bench_now();
        if (b ? build_done(b) || now - t0 > BUILD_MAX_S : now - t0 >= seconds)
            break;
    }
    if (b && (!build_done(b) || b->failed)) {
        fprintf(stderr, "bench_merge: the build did not finish\n");
        return -1;
    }
    *tps = (double)(bench_clients_tokens(cl, n) - tok0) / (now - t0);
    return 0;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data";
    int quick = 0, reps = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: bench_merge [WORKDIR] [--quick] [--reps N]\n");
            return 2;
        } else
            work = argv[i];
    }
    if (!reps)
        reps = quick ? 1 : 5;
    if (reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_merge: --reps takes 1..%d\n", MAX_REPS);
        return 2;
    }

    char mdir[4096], adir[4096];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(adir, sizeof adir, "%s/adapter-r16-a", work);
    huge_place_enable(1);   /* as `lorad serve` (--place-pages yes, its default) */
    lr_error err = {0};
    model *m = model_load(mdir, &err);
    if (!m) {
        fprintf(stderr, "bench_merge: %s (run `bench_engine %s --prepare` first)\n", err.msg,
                work);
        return 1;
    }
    peft_adapter *ad = peft_load(adir, &m->cfg, NULL, &err);
    if (!ad) {
        fprintf(stderr, "bench_merge: %s\n", err.msg);
        return 1;
    }
    variant_mix mix = {.n = 1, .t = {{ad->w, 1.0f}}};
    engine_options eo = engine_options_default();
    eo.max_seqs = 64;   /* as bench_load's daemons */
    engine *e = engine_create(m, &eo, &err);
    if (!e) {
        fprintf(stderr, "bench_merge: %s\n", err.msg);
        return 1;
    }
    builder b = {.m = m, .mix = &mix};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, builder_main, &b)) {
        fprintf(stderr, "bench_merge: cannot start the builder thread\n");
        return 1;
    }

    enum { N_SIZES = 2 };
    static const int clients[N_SIZES] = {1, MAX_CLIENTS};
    double idle[N_SIZES][MAX_REPS], busy[N_SIZES][MAX_REPS], ratio[N_SIZES][MAX_REPS];
    double builds[2 * N_SIZES * MAX_REPS];
    int n_builds = 0, rc = 0;
    unsigned seed = 12345;
    for (int r = 0; r < reps && !rc; r++)
        for (int k = 0; k < N_SIZES && !rc; k++) {
            static bench_client cl[MAX_CLIENTS];
            memset(cl, 0, sizeof cl);
            double v[4];   /* alone, beside a build, beside a build, alone */
            for (int p = 0; p < 4 && !rc; p++) {
                int with = p == 1 || p == 2;
                rc = run_phase(e, cl, clients[k], IDLE_S, with ? &b : NULL, &seed, &v[p]);
                if (!rc && with)
                    builds[n_builds++] = b.seconds;
            }
            engine_cancel_all(e);
            for (int guard = 0; guard < 100000 && engine_step(e, &err) > 0; guard++)
                ;
            if (rc)
                break;
            idle[k][r] = (v[0] + v[3]) / 2;
            busy[k][r] = (v[1] + v[2]) / 2;
            ratio[k][r] = busy[k][r] / idle[k][r];
            fprintf(stderr, "bench_merge: repetition %d/%d: %d client%s alone %.1f / %.1f "
                    "tok/s, beside a build %.1f / %.1f (builds %.2f, %.2f s)\n", r + 1, reps,
                    clients[k], clients[k] > 1 ? "s" : "", v[0], v[3], v[1], v[2],
                    builds[n_builds - 2], builds[n_builds - 1]);
        }
    pthread_mutex_lock(&b.mu);
    b.quit = 1;
    pthread_cond_signal(&b.cv);
    pthread_mutex_unlock(&b.mu);
    pthread_join(th, NULL);
    if (rc)
        return 1;

    printf("decode beside a --merge auto build (a W' of rank-16 adapter on all 7 projections, "
           "paced to %.0f%% of a core, its pages placed) against decode alone, in process: "
           "random SmolLM2-135M shape, F32, closed-loop clients on the base (%d-token "
           "prompts, %d output tokens); each repetition alone %.0f s, beside a build, beside "
           "a build, alone %.0f s; medians of %d repetitions\n\n", 100 * MERGE_DUTY,
           BENCH_CLIENT_PROMPT, BENCH_CLIENT_TOKENS, IDLE_S, IDLE_S, reps);
    printf("clients  alone tok/s  beside tok/s  beside / alone (range)   (target >= 0.90)\n");
    for (int k = 0; k < N_SIZES; k++) {
        double lo, hi;
        bench_range(ratio[k], reps, &lo, &hi);
        printf("%7d  %11.1f  %12.1f  %14.3f (%.3f-%.3f)\n", clients[k],
               bench_median(idle[k], reps), bench_median(busy[k], reps),
               bench_median(ratio[k], reps), lo, hi);
    }
    double lo, hi;
    bench_range(builds + 1, n_builds - 1, &lo, &hi);
    printf("\nbuilds: the first (fresh memory) %.2f s; the other %d in the kept block %.2f s "
           "median (%.2f-%.2f)\n", builds[0], n_builds - 1,
           bench_median(builds + 1, n_builds - 1), lo, hi);
    engine_destroy(e);
    peft_free(ad);
    model_free(m);
    return 0;
}
