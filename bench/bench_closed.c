/* bench_closed: bench_load's closed-loop clients without the server — the same requests
 * (16 random prompt tokens, 48 greedy tokens with ignore_eos, a new request as soon as one
 * ends) submitted to the engine in this process and stepped here, so that serving's
 * speed-up of many clients over one can be read against what the engine and this machine
 * give without HTTP, JSON, SSE and the clients' own threads. The same random
 * SmolLM2-135M-shaped F32 model as bench_load (`bench_engine --prepare` writes it), the
 * daemon's engine settings of bench_load (--max-seqs 64, the default prefill budget).
 *
 * Each repetition runs the cases in the order 1, 8, 64, 64, 8, 1 clients on the base, each
 * a warm-up then a measured window: a drift of the machine that is linear over that minute
 * weighs on both sides of each ratio alike. A case's tokens/s is that of its two windows;
 * the ratios (8 ÷ 1, 64 ÷ 1) are taken within each repetition, then the median over
 * repetitions. Beside each case, as bench_load's engine table: the mean step, decode rows a
 * step and prompt rows prefilled per generated token over its windows.
 *
 * Usage: bench_closed [WORKDIR] [--quick] [--reps N] [--warmup S] [--window S]
 * Defaults: 5 repetitions, 3 s warm-up + 6 s window (12 s for 64 clients, as bench_load);
 * --quick: 1 repetition, 2 s + 4 s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "bench/benchutil.h"

#define MAX_CLIENTS 64
#define MAX_REPS 9
typedef struct {
    double tps, step_ms, decode_per_step, prefill_per_token;
} window_result;

/* n closed-loop clients for warmup + window seconds; the window's figures into *out.
 * 0, or -1 when a request failed. */
static int run_case(engine *e, int n, double warmup, double window, unsigned *seed,
                    window_result *out)
{
    static bench_client cl[MAX_CLIENTS];
    memset(cl, 0, sizeof cl);
    lr_error err = {0};
    double t0 = bench_now(), w0 = 0;
    long tok0 = 0;
    engine_stats s0 = {0}, s1;
    int in_window = 0;
    /* bounded: a step takes at least a few ms, the case at most warmup + window seconds */
    for (long guard = 0; guard < 10000000; guard++) {
        if (bench_clients_submit(e, cl, n, seed, "bench_closed"))
            return -1;
        if (engine_step(e, &err) < 0) {
            fprintf(stderr, "bench_closed: %s\n", err.msg);
            return -1;
        }
        double now = bench_now();
        long tok = bench_clients_tokens(cl, n);
        if (!in_window && now - t0 >= warmup) {
            in_window = 1;
            w0 = now;
            tok0 = tok;
            engine_stats_get(e, &s0);
        } else if (in_window && now - w0 >= window) {
            engine_stats_get(e, &s1);
            double steps = (double)(s1.steps - s0.steps);
            double rows = (double)(s1.decode_rows - s0.decode_rows);
            *out = (window_result){
                (double)(tok - tok0) / (now - w0), (s1.step_seconds - s0.step_seconds) /
                steps * 1e3, rows / steps,
                (double)(s1.prefill_rows - s0.prefill_rows) / (double)(tok - tok0)};
            break;
        }
    }
    engine_cancel_all(e);
    for (int guard = 0; guard < 100000 && engine_step(e, &err) > 0; guard++)
        ;
    return in_window ? 0 : -1;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data";
    int quick = 0, reps = 0;
    double warmup = 0, window = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = atof(argv[++i]);
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            window = atof(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: bench_closed [WORKDIR] [--quick] [--reps N] "
                            "[--warmup S] [--window S]\n");
            return 2;
        } else
            work = argv[i];
    }
    if (!reps)
        reps = quick ? 1 : 5;
    if (warmup <= 0)
        warmup = quick ? 2 : 3;
    if (window <= 0)
        window = quick ? 4 : 6;
    if (reps < 1 || reps > MAX_REPS || warmup > 600 || window > 600) {
        fprintf(stderr, "bench_closed: --reps takes 1..%d, --warmup and --window up to 600 s\n",
                MAX_REPS);
        return 2;
    }

    char mdir[4096];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    lr_error err = {0};
    model *m = model_load(mdir, &err);
    if (!m) {
        fprintf(stderr, "bench_closed: %s (run `bench_engine %s --prepare` first)\n", err.msg,
                work);
        return 1;
    }
    engine_options eo = engine_options_default();
    eo.max_seqs = MAX_CLIENTS;   /* bench_load's daemons run with --max-seqs 64 */
    engine *e = engine_create(m, &eo, &err);
    if (!e) {
        fprintf(stderr, "bench_closed: %s\n", err.msg);
        return 1;
    }

    enum { C1, C8, C64, N_SIZES };
    static const int clients[N_SIZES] = {1, 8, 64};
    static const int order[] = {C1, C8, C64, C64, C8, C1};
    window_result res[N_SIZES][MAX_REPS][2];
    unsigned seed = 12345;
    for (int r = 0; r < reps; r++) {
        int seen[N_SIZES] = {0};
        for (int o = 0; o < (int)(sizeof order / sizeof *order); o++) {
            int k = order[o];
            double win = clients[k] >= 32 ? 2 * window : window;
            if (run_case(e, clients[k], warmup, win, &seed, &res[k][r][seen[k]]) < 0)
                return 1;
            fprintf(stderr, "bench_closed: repetition %d/%d: %2d client%s %7.1f tok/s\n", r + 1,
                    reps, clients[k], clients[k] > 1 ? "s" : " ", res[k][r][seen[k]].tps);
            seen[k]++;
        }
    }

    printf("closed-loop clients in process (no server): random SmolLM2-135M shape, F32, "
           "base; %d-token prompts, %d output tokens, a new request as soon as one ends; "
           "%.0f s warm-up + %.0f s window (%.0f s for 64 clients), order 1-8-64-64-8-1; "
           "medians of %d repetitions\n\n",
           BENCH_CLIENT_PROMPT, BENCH_CLIENT_TOKENS, warmup, window, 2 * window, reps);
    printf("clients     tok/s   ms/step  decode/step  prefill/token\n");
    double tps[N_SIZES][MAX_REPS];
    for (int k = 0; k < N_SIZES; k++) {
        double st[MAX_REPS], dr[MAX_REPS], pf[MAX_REPS];
        for (int r = 0; r < reps; r++) {
            const window_result *a = &res[k][r][0], *b = &res[k][r][1];
            tps[k][r] = (a->tps + b->tps) / 2;
            st[r] = (a->step_ms + b->step_ms) / 2;
            dr[r] = (a->decode_per_step + b->decode_per_step) / 2;
            pf[r] = (a->prefill_per_token + b->prefill_per_token) / 2;
        }
        printf("%7d  %8.1f  %8.2f  %11.2f  %13.2f\n", clients[k], bench_median(tps[k], reps),
               bench_median(st, reps), bench_median(dr, reps), bench_median(pf, reps));
    }
    printf("\nratios within each repetition (median; range over repetitions):\n");
    for (int k = C8; k < N_SIZES; k++) {
        double v[MAX_REPS], lo, hi;
        for (int r = 0; r < reps; r++)
            v[r] = tps[k][r] / tps[C1][r];
        bench_range(v, reps, &lo, &hi);
        printf("  %2d clients / 1 client   %5.2f (%.2f-%.2f)\n", clients[k],
               bench_median(v, reps), lo, hi);
    }
    engine_destroy(e);
    model_free(m);
    return 0;
}
