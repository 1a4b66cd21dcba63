/* bench_place: how fast this machine streams blocks of memory that one process allocated
 * the same way (huge_alloc, as lorad holds the base's weights, a merged W' and the KV
 * cache), each the size of a W' — so that a difference between two allocations, such as
 * W and a W' built later, can be read against what placement alone gives here.
 *
 * Each block is filled once, then read whole by 2 threads (bench_read_seconds: a
 * wide-load sum, the way decode streams weights), block after block, in rounds: a drift
 * of the machine weighs on every block alike, and each block's figure is the median over
 * rounds. Its share of huge
 * pages (/proc/self/smaps) is printed beside it, so that a slow block is not mistaken for
 * one the kernel left on 4 KiB pages. On the 2-vCPU VMs lorad is benchmarked on, blocks
 * on huge pages throughout read at medians 7-20% apart (docs/benchmarks.md): where the
 * hypervisor backs a block is not visible to the guest, and a process cannot choose it.
 *
 * Usage: bench_place [--quick] [--blocks N] [--mb M]
 * Defaults: 8 blocks of 400 MB (a W' of the 135M shape is 405 MB), 15 rounds; --quick 5. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hugemem.h"
#include "bench/benchutil.h"

#define MAX_BLOCKS 32
#define MAX_ROUNDS 15

/* The share (0-1) of huge pages in the mapping that holds p, from /proc/self/smaps (-1:
 * not found): the block's own where it is a mapping of its own, as huge_alloc's blocks
 * usually are (the kernel may merge neighbours with the same flags into one). */
static double huge_share(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[512];
    uintptr_t lo = 0, hi = 0, at = (uintptr_t)p;
    long size_kb = 0, kb;
    double share = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            lo = a;
            hi = b;
        } else if (sscanf(line, "Size: %ld kB", &kb) == 1) {
            size_kb = kb;
        } else if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1 && at >= lo && at < hi &&
                   size_kb > 0) {
            share = (double)kb / (double)size_kb;
            break;
        }
    }
    fclose(f);
    return share;
}

int main(int argc, char **argv)
{
    int quick = 0, n_blocks = 8, mb = 400;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc)
            n_blocks = atoi(argv[++i]);
        else if (strcmp(argv[i], "--mb") == 0 && i + 1 < argc)
            mb = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_place [--quick] [--blocks N] [--mb M]\n");
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
    for (int k = 0; k < n_blocks; k++) {
        if (!(blk[k] = huge_alloc(bytes))) {
            fprintf(stderr, "bench_place: cannot allocate %d blocks of %d MB\n", n_blocks, mb);
            return 1;
        }
        memset(blk[k], 0x3c, bytes);   /* backed now, not during the first round */
    }
    static double gbs[MAX_BLOCKS][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < n_blocks; k++)
            gbs[k][r] = (double)bytes / bench_read_seconds(blk[k], bytes / sizeof(float)) / 1e9;
    printf("read bandwidth of %d blocks of %d MB, each from huge_alloc in this process, 2 "
           "threads; medians of %d rounds, the blocks interleaved in each\n\n", n_blocks, mb,
           rounds);
    printf("block |  GB/s median   min    max | huge pages\n");
    double med[MAX_BLOCKS], lo, hi;
    for (int k = 0; k < n_blocks; k++) {
        med[k] = bench_median(gbs[k], rounds);
        bench_range(gbs[k], rounds, &lo, &hi);
        printf("%5d | %12.1f %6.1f %6.1f | %9.0f%%\n", k, med[k], lo, hi,
               100 * huge_share(blk[k]));
    }
    bench_range(med, n_blocks, &lo, &hi);
    printf("\nfastest block / slowest, medians: %.2f (%.1f / %.1f GB/s)\n", hi / lo, hi, lo);
    for (int k = 0; k < n_blocks; k++)
        huge_free(blk[k], bytes);
    return 0;
}
