/* bench_tiles: how close smallmm's F32P products come to the FMA peak — the compute side
 * of bench_batch's roofline bound. A decode step of many rows is bound by the FMAs, and
 * bench_batch's "of bound" mixes the products' rate with everything else a step does
 * (attention, norms, the draw); this measures the products alone, through smallmm_xmt_run
 * on a pool of 2 threads, as forward() calls it, for 8 to 64 rows of X:
 *   - in cache: one 1536 × 576 matrix (up_proj's shape, 3.5 MB: each thread's half, 1.8
 *     MB, in its L2 and the L3) multiplied again and again;
 *   - from memory: 32 different 1536 × 576 matrices (113 MB) one after the other, each
 *     read once per round (a decode step's products, a layer at a time).
 * Each repetition measures the FMA peak (bench_fma_peak, 2 threads) next to the products,
 * and the ratio is taken per repetition (the shared machine's peak moves by 2x within
 * minutes); medians over repetitions. Usage: bench_tiles [--quick] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hugemem.h"
#include "core/pool.h"
#include "core/smallmm.h"
#include "bench/benchutil.h"

#define IN 576
#define ROWS 1536
#define N_MEM 32   /* matrices streamed from memory */
#define MAX_X 64

/* flop/s of products of n rows of X with each of mats[0..n_mats) in turn, `passes` times
 * over the list. */
static double rate(pool *p, float *const *mats, int n_mats, int passes, const float *x,
                   float *y, int n)
{
    double t0 = bench_now();
    for (int r = 0; r < passes; r++)
        for (int k = 0; k < n_mats; k++) {
            smallmm_xmt jb = {x, n, {WT_F32P, mats[k], NULL}, ROWS, y, ROWS};
            smallmm_xmt_run(p, IN, &jb, 1);
        }
    double s = bench_now() - t0;
    return 2.0 * n * ROWS * IN * (double)n_mats * passes / s;
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int reps = quick ? 3 : 7;
    lr_error err = {0};
    pool *p = pool_create(2, &err);
    if (!p) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    size_t bytes = sizeof(float) * ROWS * IN;
    float *mats[N_MEM];
    uint32_t seed = 12345;
    for (int k = 0; k < N_MEM; k++) {
        if (!(mats[k] = huge_alloc(bytes))) {
            fprintf(stderr, "bench: out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < (size_t)ROWS * IN; i++) {
            seed = seed * 1664525u + 1013904223u;
            mats[k][i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
        }
    }
    float *x = malloc(sizeof(float) * MAX_X * IN), *y = malloc(sizeof(float) * MAX_X * ROWS);
    if (!x || !y)
        return 1;
    for (int i = 0; i < MAX_X * IN; i++)
        x[i] = (float)(i % 17) * 0.01f;
    static const int ns[] = {8, 16, 32, 64};
    enum { NN = sizeof ns / sizeof ns[0] };
    double peak[16], hot[NN][16], cold[NN][16], hot_r[NN][16], cold_r[NN][16];
    for (int r = 0; r < reps; r++) {
        peak[r] = bench_fma_peak(2);
        for (int i = 0; i < NN; i++) {
            /* ~0.1 s in cache (warmed by the first pass), 20-80 ms from memory */
            int passes = (int)(4e10 / (2.0 * ns[i] * ROWS * IN));
            rate(p, mats, 1, 1, x, y, ns[i]);
            hot[i][r] = rate(p, mats, 1, passes, x, y, ns[i]);
            cold[i][r] = rate(p, mats, N_MEM, 8, x, y, ns[i]);
            hot_r[i][r] = hot[i][r] / peak[r];
            cold_r[i][r] = cold[i][r] / peak[r];
        }
    }
    double lo, hi;
    bench_range(peak, reps, &lo, &hi);
    printf("smallmm F32P products against the FMA peak (%s kernels; X [n, %d] times the "
           "transpose of %d x %d; 2 threads; %d repetitions, medians)\n",
           smallmm_isa_name(smallmm_get_isa()), IN, ROWS, IN, reps);
    printf("FMA peak %.1f GFLOP/s (%.1f-%.1f), measured next to each repetition's products; "
           "'of peak' = the median of each repetition's ratio\n\n",
           bench_median(peak, reps) / 1e9, lo / 1e9, hi / 1e9);
    printf(" rows | in cache GFLOP/s  of peak | from memory GFLOP/s  of peak    GB/s\n");
    for (int i = 0; i < NN; i++) {
        double c = bench_median(cold[i], reps);
        printf(" %4d |          %7.1f     %3.0f%% |             %7.1f     %3.0f%%  %6.1f\n",
               ns[i], bench_median(hot[i], reps) / 1e9, 100 * bench_median(hot_r[i], reps),
               c / 1e9, 100 * bench_median(cold_r[i], reps), c / (2.0 * ns[i]) * 4 / 1e9);
    }
    for (int k = 0; k < N_MEM; k++)
        huge_free(mats[k], bytes);
    free(x);
    free(y);
    pool_free(p);
    return 0;
}
