/* benchutil: see benchutil.h. */
#include "benchutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(const double *v, int n)
{
    double *t = malloc(sizeof *t * (size_t)n);
    if (!t)
        return 0;
    memcpy(t, v, sizeof *t * (size_t)n);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

static int on_token(void *user, const engine_token *tok)
{
    (void)tok;
    bench_timing *t = user;
    double x = bench_now();
    if (t->n++ == 0)
        t->t_first = x;
    t->t_last = x;
    return 0;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    (void)user;
    if (reason == ENGINE_FINISH_ERROR)
        fprintf(stderr, "bench: generation failed: %s\n", err ? err->msg : "?");
}

void bench_timing_attach(engine_request *req, bench_timing *t)
{
    memset(t, 0, sizeof *t);
    req->on_token = on_token;
    req->on_done = on_done;
    req->user = t;
}
