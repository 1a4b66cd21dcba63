/* bench_place: how fast this machine streams blocks of memory that one process allocated
 * the same way (huge_alloc, as lorad holds the base's weights, a merged W' and the KV
 * cache), each the size of a W' — so that a difference between two allocations, such as
 * W and a W' built later, can be read against what placement alone gives here, and
 * where that difference comes from.
 *
 * Each block is filled once, then read whole by 2 threads (bench_read_seconds: a
 * wide-load sum, the way decode streams weights), block after block, in rounds: a drift
 * of the machine weighs on every block alike, and each block's figure is the median over
 * rounds. Its share of huge pages (/proc/self/smaps) is printed beside it, so that a slow
 * block is not mistaken for one the kernel left on 4 KiB pages. On the 2-vCPU VMs lorad is
 * benchmarked on, blocks on huge pages throughout read at medians 7-40% apart
 * (docs/benchmarks.md).
 *
 * Then the latency of each block's 2 MB pages: in each, a chain of dependent loads visits
 * one line of each of its 512 4 KiB pages in a shuffled order (one TLB fill, then 512 cold
 * misses; every block is walked before a page is visited again, so its lines have left the
 * caches), from each vCPU in turn; a page's figure is its fastest of three walks. On these
 * VMs the pages fall in two groups — most near ~200-250 ns, some ~1.5 times that, alike from
 * either vCPU; with its address translations warm a far page is no slower (hugemem.c): it
 * is the cold path through them that is slower, presumably by how the host backs the page,
 * not the memory itself. A page is counted far
 * above 1.25 times the first quartile of all pages (the near group's, while fewer than
 * three pages in four are far); each block's far share is printed beside its bandwidth,
 * with their correlation over the blocks.
 *
 * --near: every other block (in allocation order) comes from huge_alloc_near, as lorad
 * allocates W and each W' — its far pages swapped for near ones — and its placement is
 * printed beside it (far pages found / swapped, the near latency, seconds); the two
 * groups' medians and spreads are compared at the end.
 *
 * Usage: bench_place [--quick] [--near] [--blocks N] [--mb M]
 * Defaults: 8 blocks of 400 MB (a W' of the 135M shape is 405 MB), 15 rounds; --quick 5. */
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hugemem.h"
#include "bench/benchutil.h"

#define MAX_BLOCKS 32
#define MAX_ROUNDS 15
#define PAGE_2M ((size_t)2 << 20)
#define LINES_PER_PAGE 512   /* one per 4 KiB page of a 2 MB page */
#define WALKS 3
#define FAR_FACTOR 1.25

/* The share (0-1) of huge pages in [p, p + bytes), from /proc/self/smaps (-1: not found):
 * the mappings that lie in it, as a block's own do (one from huge_alloc; several after
 * huge_alloc_near moved pages into it). */
static double huge_share(const void *p, size_t bytes)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[512];
    uintptr_t lo = 0, hi = 0, at = (uintptr_t)p;
    long kb, huge_kb = 0;
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            lo = a;
            hi = b;
        } else if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1 && lo >= at &&
                   hi <= at + bytes) {
            huge_kb += kb;
            seen = 1;
        }
    }
    fclose(f);
    return seen ? (double)huge_kb * 1024 / (double)bytes : -1;
}

/* Offset in a 2 MB page of the line the chain visits in 4 KiB page i: a different line of
 * each, so that the walk does not always meet the same cache sets. */
static size_t line_at(unsigned i)
{
    return (size_t)i * 4096 + (size_t)(i % 64) * 64;
}

/* Lays a chain through each 2 MB page of blk (bytes long): the line of 4 KiB page perm[i]
 * holds the address of the line of perm[i + 1], the last back to the first. */
static void lay_chains(char *blk, size_t bytes, const unsigned *perm)
{
    for (size_t h = 0; h < bytes / PAGE_2M; h++) {
        char *page = blk + h * PAGE_2M;
        for (int i = 0; i < LINES_PER_PAGE; i++)
            *(char **)(page + line_at(perm[i])) =
                page + line_at(perm[(i + 1) % LINES_PER_PAGE]);
    }
}

/* Nanoseconds per load of one walk of the chain in the 2 MB page at page. */
static double walk_ns(char *page, const unsigned *perm)
{
    char *p = page + line_at(perm[0]);
    double t0 = bench_now();
    for (int i = 0; i < LINES_PER_PAGE; i++)
        p = *(char *volatile *)p;
    double ns = (bench_now() - t0) / LINES_PER_PAGE * 1e9;
    if (p != page + line_at(perm[0]))   /* the chain is a cycle: back where it started */
        fprintf(stderr, "bench_place: a chain did not close\n");
    return ns;
}

/* Pearson's correlation of x and y over n points (0 where either does not vary). */
static double correlation(const double *x, const double *y, int n)
{
    double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        mx += x[i] / n;
        my += y[i] / n;
    }
    for (int i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
    }
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : 0;
}

int main(int argc, char **argv)
{
    int quick = 0, near = 0, n_blocks = 8, mb = 400;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--near") == 0)
            near = 1;
        else if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc)
            n_blocks = atoi(argv[++i]);
        else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_place [--quick] [--near] [--blocks N] [--mb M]\n");
            return 2;
        }
    }
    if (n_blocks < 2 || n_blocks > MAX_BLOCKS || mb < 16 || mb > 4096) {
        fprintf(stderr, "bench_place: --blocks 2-%d, --mb 16-4096\n", MAX_BLOCKS);
        return 2;
    }
    int rounds = quick ? 5 : MAX_ROUNDS;
    size_t bytes = (size_t)mb << 20;
    float *blk[MAX_BLOCKS];
    huge_place_report rep[MAX_BLOCKS];
    int placed[MAX_BLOCKS];
    for (int k = 0; k < n_blocks; k++) {
        placed[k] = near && k % 2 == 1;   /* --near: every other block, in allocation order */
        if (!(blk[k] = placed[k] ? huge_alloc_near(bytes, 1.0, &rep[k]) : huge_alloc(bytes))) {
            fprintf(stderr, "bench_place: cannot allocate %d blocks of %d MB\n", n_blocks, mb);
            return 1;
        }
        memset(blk[k], 0x3c, bytes);   /* backed now, not during the first round */
    }
    static double gbs[MAX_BLOCKS][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < n_blocks; k++)
            gbs[k][r] = (double)bytes / bench_read_seconds(blk[k], bytes / sizeof(float)) / 1e9;
    /* the latency of each 2 MB page, from each vCPU (after the bandwidth, which the
     * chains' pointers would otherwise be summed into) */
    unsigned perm[LINES_PER_PAGE];
    for (unsigned i = 0; i < LINES_PER_PAGE; i++)
        perm[i] = i;
    srand(5);
    for (int i = LINES_PER_PAGE - 1; i > 0; i--) {
        int j = rand() % (i + 1);
        unsigned t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int k = 0; k < n_blocks; k++)
        lay_chains((char *)blk[k], bytes, perm);
    size_t pages = bytes / PAGE_2M, n_all = (size_t)n_blocks * pages;
    double *ns[2];
    for (int c = 0; c < 2; c++)
        ns[c] = malloc(n_all * sizeof(double));
    double *all = malloc(2 * n_all * sizeof(double));
    if (!ns[0] || !ns[1] || !all) {
        fprintf(stderr, "bench_place: out of memory\n");
        return 1;
    }
    int cpus = 0;
    for (int c = 0; c < 2; c++) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(c, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            break;   /* one vCPU only: the other column stays out */
        cpus++;
        for (int w = 0; w < WALKS; w++)
            for (size_t i = 0; i < n_all; i++) {
                double t = walk_ns((char *)blk[i / pages] + i % pages * PAGE_2M, perm);
                ns[c][i] = w == 0 || t < ns[c][i] ? t : ns[c][i];
            }
    }
    if (!cpus) {
        fprintf(stderr, "bench_place: cannot run on vCPU 0 (sched_setaffinity)\n");
        return 1;
    }
    for (int c = 0; c < cpus; c++)
        memcpy(all + c * n_all, ns[c], n_all * sizeof(double));
    qsort(all, (size_t)cpus * n_all, sizeof *all, bench_cmp_double);
    double far_ns = FAR_FACTOR * all[(size_t)cpus * n_all / 4];

    printf("read bandwidth of %d blocks of %d MB, each from huge_alloc in this process, 2 "
           "threads; medians of %d rounds, the blocks interleaved in each; then the latency of "
           "each block's 2 MB pages from each vCPU (dependent loads, one line of each 4 KiB "
           "page; the fastest of %d walks), far: over %.2f x the first quartile of all pages "
           "(%.0f ns)\n\n", n_blocks, mb, rounds, WALKS, FAR_FACTOR, far_ns);
    printf("block |  GB/s median   min    max | huge pages | ns/load vCPU 0  far | "
           "ns/load vCPU 1  far |%s\n", near ? " huge_alloc_near: far / swapped, near ns, s" : "");
    double med[MAX_BLOCKS], far[MAX_BLOCKS], lo, hi;
    size_t n_far[2] = {0, 0}, both = 0, one = 0;
    for (int k = 0; k < n_blocks; k++) {
        med[k] = bench_median(gbs[k], rounds);
        bench_range(gbs[k], rounds, &lo, &hi);
        printf("%5d | %12.1f %6.1f %6.1f | %9.0f%% |", k, med[k], lo, hi,
               100 * huge_share(blk[k], bytes));
        far[k] = 0;
        for (int c = 0; c < cpus; c++) {
            double sum = 0;
            size_t nf = 0;
            for (size_t h = 0; h < pages; h++) {
                sum += ns[c][k * pages + h];
                nf += ns[c][k * pages + h] > far_ns;
            }
            n_far[c] += nf;
            far[k] += (double)nf / (double)pages / cpus;
            printf(" %14.0f %3.0f%% |", sum / pages, 100.0 * nf / pages);
        }
        if (placed[k])
            printf(" %4zu / %4zu, %3.0f ns, %.2f s", rep[k].far, rep[k].replaced,
                   rep[k].near_ns, rep[k].seconds);
        printf("\n");
    }
    if (cpus == 2)
        for (size_t i = 0; i < n_all; i++) {
            int f0 = ns[0][i] > far_ns, f1 = ns[1][i] > far_ns;
            both += f0 && f1;
            one += f0 != f1;
        }
    bench_range(med, n_blocks, &lo, &hi);
    printf("\nfastest block / slowest, medians: %.2f (%.1f / %.1f GB/s)\n", hi / lo, hi, lo);
    printf("far pages: %.1f%% of %zu from vCPU 0", 100.0 * n_far[0] / n_all, n_all);
    if (cpus == 2)
        printf(", %.1f%% from vCPU 1; far from both %zu, from one only %zu", 100.0 * n_far[1] /
               n_all, both, one);
    printf("\ncorrelation over the blocks of GB/s and far share: %.2f\n",
           correlation(med, far, n_blocks));
    if (near) {
        double g[2][MAX_BLOCKS], m[2];
        int n_g[2] = {0, 0};
        for (int k = 0; k < n_blocks; k++)
            g[placed[k]][n_g[placed[k]]++] = med[k];
        for (int x = 0; x < 2; x++) {
            bench_range(g[x], n_g[x], &lo, &hi);
            m[x] = bench_median(g[x], n_g[x]);
            printf("%s: median %.1f GB/s, fastest / slowest %.2f\n",
                   x ? "huge_alloc_near" : "huge_alloc     ", m[x], hi / lo);
        }
        printf("huge_alloc_near / huge_alloc, medians: %.3f\n", m[1] / m[0]);
    }
    for (int c = 0; c < 2; c++)
        free(ns[c]);
    free(all);
    for (int k = 0; k < n_blocks; k++)
        huge_free(blk[k], bytes);
    return 0;
}
