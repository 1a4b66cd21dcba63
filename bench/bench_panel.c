/* bench_panel: smallmm's F32 products with M row-major (WT_F32, the kernels BF16 weights
 * and adapters' A of ranks not a multiple of 16 take) against M in panels of 16 rows
 * (WT_F32P, how a model holds its F32 matrices: wtensor.h), on the same products,
 * interleaved in one process (this machine's bandwidth drifts), the weights of 30 layers on
 * huge pages as lorad holds them, so every product streams from memory as in decode:
 *   gate+up: [3072, 576] per layer, two products in one pass, as forward() makes them;
 *   down:    [576, 1536] per layer.
 * Prints the median over rounds of the time per layer, and panels ÷ row-major. (Its first
 * version, commit a237bb4, ran a prototype of the panel kernel before smallmm had one:
 * docs/benchmarks.md's table of that session comes from it.)
 *
 * Usage: bench_panel [--rounds N] [--rows 1,8,16,...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/benchutil.h"
#include "core/hugemem.h"
#include "core/pool.h"
#include "core/smallmm.h"

enum { LAYERS = 30, HIDDEN = 576, INTER = 1536, MAX_N = 64 };

/* One shape: rows × in per layer (smallmm_parts products of equal rows, as forward()
 * makes them), every n of ns. */
static void run_shape(pool *pl, const char *name, int rows, int in, int parts, const int *ns,
                      int n_ns, int rounds)
{
    float *rm[LAYERS], *pm[LAYERS];
    size_t count = (size_t)rows * in, pbytes = wtensor_data_bytes(WT_F32P, rows, in);
    for (int l = 0; l < LAYERS; l++) {
        rm[l] = huge_alloc(count * sizeof(float));
        pm[l] = huge_alloc(pbytes);
        if (!rm[l] || !pm[l]) {
            fprintf(stderr, "bench_panel: out of memory\n");
            exit(1);
        }
        for (size_t e = 0; e < count; e++)
            rm[l][e] = (float)((int)((e * 7 + (size_t)l) % 17) - 8) * 0.01f;
        wtensor_from_f32(WT_F32P, rm[l], rows, in, pm[l], NULL);
    }
    float *x = malloc(sizeof(float) * MAX_N * in), *y = malloc(sizeof(float) * MAX_N * rows),
          *y2 = malloc(sizeof(float) * MAX_N * rows);
    double *ta = malloc(sizeof(double) * rounds), *tb = malloc(sizeof(double) * rounds);
    for (int e = 0; e < MAX_N * in; e++)
        x[e] = (float)(e % 13 - 6) / 7.0f;
    printf("%s: [%d, %d] per layer, %d layers from memory\n", name, rows, in, LAYERS);
    printf("%5s | %12s %12s %8s | %10s\n", "rows", "rows us", "panels us", "ratio", "max |diff|");
    for (int q = 0; q < n_ns; q++) {
        int n = ns[q];
        for (int rd = 0; rd < rounds; rd++) {
            double t[3];
            for (int layout = 0; layout < 2; layout++) {
                t[layout] = bench_now();
                for (int l = 0; l < LAYERS; l++) {
                    smallmm_xmt jb[4];
                    int pr = rows / parts;   /* a multiple of 16: whole panels each */
                    for (int p = 0; p < parts; p++) {
                        wtensor w = layout ? (wtensor){WT_F32P, pm[l] + (size_t)p * pr * in, NULL}
                                           : (wtensor){WT_F32, rm[l] + (size_t)p * pr * in, NULL};
                        jb[p] = (smallmm_xmt){x, n, w, pr, (layout ? y2 : y) + (size_t)p * pr,
                                              rows};
                    }
                    smallmm_run(pl, in, jb, parts, NULL, 0);
                }
            }
            t[2] = bench_now();
            ta[rd] = (t[1] - t[0]) / LAYERS;
            tb[rd] = (t[2] - t[1]) / LAYERS;
        }
        double diff = 0;
        for (size_t e = 0; e < (size_t)n * rows; e++) {
            double d = y[e] > y2[e] ? y[e] - y2[e] : y2[e] - y[e];
            diff = d > diff ? d : diff;
        }
        qsort(ta, (size_t)rounds, sizeof *ta, bench_cmp_double);
        qsort(tb, (size_t)rounds, sizeof *tb, bench_cmp_double);
        printf("%5d | %12.1f %12.1f %8.2f | %10.1e\n", n, ta[rounds / 2] * 1e6,
               tb[rounds / 2] * 1e6, tb[rounds / 2] / ta[rounds / 2], diff);
    }
    printf("\n");
    for (int l = 0; l < LAYERS; l++) {
        huge_free(rm[l], count * sizeof(float));
        huge_free(pm[l], pbytes);
    }
    free(x);
    free(y);
    free(y2);
    free(ta);
    free(tb);
}

int main(int argc, char **argv)
{
    int rounds = 11, ns[32], n_ns = 0;
    const char *rows_arg = "1,2,4,8,12,16,17,24,32,48,64";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows_arg = argv[++i];
        else {
            fprintf(stderr, "usage: bench_panel [--rounds N] [--rows 1,8,...]\n");
            return 2;
        }
    }
    for (const char *s = rows_arg; *s && n_ns < 32;) {
        int n = atoi(s);
        if (n < 1 || n > MAX_N) {
            fprintf(stderr, "bench_panel: rows must be 1-%d\n", MAX_N);
            return 2;
        }
        ns[n_ns++] = n;
        s = strchr(s, ',');
        if (!s)
            break;
        s++;
    }
    if (rounds < 1 || rounds > 1000)
        rounds = 11;
    printf("smallmm, F32 weights row-major against in panels (%s kernels), 2 threads, medians "
           "of %d interleaved rounds\n\n", smallmm_isa_name(smallmm_get_isa()), rounds);
    lr_error err = {0};
    pool *pl = pool_create(2, &err);
    if (!pl) {
        fprintf(stderr, "bench_panel: %s\n", err.msg);
        return 1;
    }
    run_shape(pl, "gate+up", 2 * INTER, HIDDEN, 2, ns, n_ns, rounds);
    run_shape(pl, "down", HIDDEN, INTER, 1, ns, n_ns, rounds);
    pool_free(pl);
    return 0;
}
