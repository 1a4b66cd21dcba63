/* bench_panel: an experiment, not lorad's code path. Measures what a different layout of
 * F32 weights would buy smallmm: M held in panels of 16 rows, element (r, k) at panel
 * r / 16, offset k·16 + r mod 16 — so one vector load is one element of 16 rows of M, and
 * each row of X meets it as a broadcast: a tile of NI rows of X by NP panels keeps NI·NP
 * accumulators with no reduction at the end, reads M as NP sequential streams, and needs
 * X as it is (no packing). The prototype kernel below (AVX-512 only, F32 only) runs
 * against smallmm's kernels on the same products, interleaved in one process (this
 * machine's bandwidth drifts), the weights of 30 layers on huge pages as lorad holds
 * them, so every product streams from memory as in decode:
 *   gate+up: [3072, 576] per layer, as one pass (two products for smallmm, as forward());
 *   down:    [576, 1536] per layer.
 * Prints the median over rounds of the time per layer, and panel ÷ smallmm.
 *
 * Usage: bench_panel [--rounds N] [--rows 1,8,16,...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/benchutil.h"
#include "core/hugemem.h"
#include "core/pool.h"
#include "core/smallmm.h"

#define PANEL 16     /* rows of M a panel */
#define TILE_NP 3    /* panels a tile: 48 rows of M */
#define GROUP_MAX 8  /* rows of X a tile: 8 × 3 = 24 accumulators */
#define PF_STEPS 64  /* elements ahead each panel's stream is prefetched */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
typedef float pv __attribute__((vector_size(64)));
typedef float pvu __attribute__((vector_size(64), aligned(4), may_alias));

/* y[i·ldy + 16p + q] (+)= Σ_k x[i·ldx + k] · panel p [k][q], k in [k0, k1), for NI rows of X
 * and NP panels from mp (panel stride ps floats); first: start from 0, else from y. */
static inline __attribute__((always_inline)) void
panel_tile(const float *x, int ldx, const float *mp, size_t ps, int k0, int k1, float *y,
           int ldy, int first, int NI, int NP)
{
    pv acc[GROUP_MAX][TILE_NP];
    for (int i = 0; i < NI; i++)
        for (int p = 0; p < NP; p++)
            acc[i][p] = first ? (pv){0} : (pv)(*(const pvu *)(y + (size_t)i * ldy + PANEL * p));
    const float *m = mp + (size_t)k0 * PANEL;
    for (int k = k0; k < k1; k++, m += PANEL) {
        pv w[TILE_NP];
        for (int p = 0; p < NP; p++) {
            w[p] = *(const pvu *)(m + p * ps);
            __builtin_prefetch(m + p * ps + PANEL * PF_STEPS, 0, 3);
        }
        for (int i = 0; i < NI; i++) {
            pv xb = (pv){0} + x[(size_t)i * ldx + k];
            for (int p = 0; p < NP; p++)
                acc[i][p] += xb * w[p];
        }
    }
    for (int i = 0; i < NI; i++)
        for (int p = 0; p < NP; p++)
            *(pvu *)(y + (size_t)i * ldy + PANEL * p) = acc[i][p];
}

/* Rows [r0, r1) of M (multiples of TILE_NP · PANEL) times n rows of X [n, in]: per tile of
 * M, the rows of X in balanced groups of at most GROUP_MAX; with more than one group the
 * elements in blocks of 64, so the tile's block of M stays in L1 for the next group. */
static void panel_rows(const float *x, int n, int in, const float *mp, int r0, int r1,
                       float *y, int ldy)
{
    size_t ps = (size_t)in * PANEL;
    int groups = (n + GROUP_MAX - 1) / GROUP_MAX, kc = groups > 1 ? 64 : in;
    for (int r = r0; r < r1; r += TILE_NP * PANEL) {
        const float *tp = mp + (size_t)r * in;
        for (int k0 = 0; k0 < in; k0 += kc) {
            int k1 = k0 + kc < in ? k0 + kc : in;
            for (int g = 0, i = 0; g < groups; g++) {
                int ni = (n - i + groups - g - 1) / (groups - g);
                const float *xi = x + (size_t)i * in;
                float *yi = y + (size_t)i * ldy + r;
                switch (ni) {
#define PANEL_CASE(N)                                                                      \
    case N:                                                                                \
        panel_tile(xi, in, tp, ps, k0, k1, yi, ldy, k0 == 0, N, TILE_NP);                  \
        break;
                    PANEL_CASE(1) PANEL_CASE(2) PANEL_CASE(3) PANEL_CASE(4)
                    PANEL_CASE(5) PANEL_CASE(6) PANEL_CASE(7) PANEL_CASE(8)
#undef PANEL_CASE
                default:
                    break;
                }
                i += ni;
            }
        }
    }
}
#pragma GCC pop_options
#define HAVE_PANEL 1
#endif

enum { LAYERS = 30, HIDDEN = 576, INTER = 1536, MAX_N = 64 };

typedef struct {
    const float *x;
    int n, in;
    const float *mp;
    int rows;
    float *y;
} panel_job;

static void panel_task(void *ctx, int task, int thread)
{
    (void)thread;
    const panel_job *j = ctx;
    int unit = TILE_NP * PANEL, half = j->rows / unit / 2 * unit;
#ifdef HAVE_PANEL
    panel_rows(j->x, j->n, j->in, j->mp, task ? half : 0, task ? j->rows : half, j->y, j->rows);
#else
    (void)half;
#endif
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One shape: rows × in per layer (smallmm_parts products of equal rows, as forward()
 * makes them), every n of ns. */
static void run_shape(pool *pl, const char *name, int rows, int in, int parts, const int *ns,
                      int n_ns, int rounds)
{
    float *rm[LAYERS], *pm[LAYERS];
    size_t count = (size_t)rows * in;
    for (int l = 0; l < LAYERS; l++) {
        rm[l] = huge_alloc(count * sizeof(float));
        pm[l] = huge_alloc(count * sizeof(float));
        if (!rm[l] || !pm[l]) {
            fprintf(stderr, "bench_panel: out of memory\n");
            exit(1);
        }
        for (size_t e = 0; e < count; e++)
            rm[l][e] = (float)((int)((e * 7 + (size_t)l) % 17) - 8) * 0.01f;
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < in; k++)
                pm[l][(size_t)(r / PANEL) * PANEL * in + (size_t)k * PANEL + r % PANEL] =
                    rm[l][(size_t)r * in + k];
    }
    float *x = malloc(sizeof(float) * MAX_N * in), *y = malloc(sizeof(float) * MAX_N * rows),
          *y2 = malloc(sizeof(float) * MAX_N * rows);
    double *ta = malloc(sizeof(double) * rounds), *tb = malloc(sizeof(double) * rounds);
    for (int e = 0; e < MAX_N * in; e++)
        x[e] = (float)(e % 13 - 6) / 7.0f;
    printf("%s: [%d, %d] per layer, %d layers from memory\n", name, rows, in, LAYERS);
    printf("%5s | %12s %12s %8s | %10s\n", "rows", "smallmm us", "panel us", "ratio", "max |diff|");
    for (int q = 0; q < n_ns; q++) {
        int n = ns[q];
        for (int rd = 0; rd < rounds; rd++) {
            double t0 = bench_now();
            for (int l = 0; l < LAYERS; l++) {
                smallmm_xmt jb[4];
                int pr = rows / parts;
                for (int p = 0; p < parts; p++)
                    jb[p] = (smallmm_xmt){x, n, (wtensor){WT_F32, rm[l] + (size_t)p * pr * in, NULL},
                                          pr, y + (size_t)p * pr, rows};
                smallmm_run(pl, in, jb, parts, NULL, 0);
            }
            double t1 = bench_now();
            for (int l = 0; l < LAYERS; l++) {
                panel_job j = {x, n, in, pm[l], rows, y2};
                pool_run(pl, panel_task, &j, 2);
            }
            double t2 = bench_now();
            ta[rd] = (t1 - t0) / LAYERS;
            tb[rd] = (t2 - t1) / LAYERS;
        }
        double diff = 0;
        for (size_t e = 0; e < (size_t)n * rows; e++) {
            double d = y[e] > y2[e] ? y[e] - y2[e] : y2[e] - y[e];
            diff = d > diff ? d : diff;
        }
        qsort(ta, (size_t)rounds, sizeof *ta, cmp_double);
        qsort(tb, (size_t)rounds, sizeof *tb, cmp_double);
        printf("%5d | %12.1f %12.1f %8.2f | %10.1e\n", n, ta[rounds / 2] * 1e6,
               tb[rounds / 2] * 1e6, tb[rounds / 2] / ta[rounds / 2], diff);
    }
    printf("\n");
    for (int l = 0; l < LAYERS; l++) {
        huge_free(rm[l], count * sizeof(float));
        huge_free(pm[l], count * sizeof(float));
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
#ifdef HAVE_PANEL
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) {
        printf("bench_panel: the prototype kernel needs AVX-512; this CPU has none\n");
        return 0;
    }
#else
    printf("bench_panel: the prototype kernel is built for x86-64 with GCC only\n");
    return 0;
#endif
    printf("panel-layout prototype against smallmm (%s kernels), F32, 2 threads, medians of "
           "%d interleaved rounds\n\n", smallmm_isa_name(smallmm_get_isa()), rounds);
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
