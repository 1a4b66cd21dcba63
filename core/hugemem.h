/* hugemem: large anonymous memory for weights — the base's (model.c), an adapter's
 * (lora.c), a merged W' (variant.c) — and for the KV cache's slabs (kv_cache.c), asking
 * for transparent huge pages. Decode streams these once per step: with 4 KiB pages, TLB
 * misses made a step streaming W' 5-10% slower than one streaming the base, and a 64-row
 * step's attention nearly twice as slow (THP is "madvise" on Debian, so it must be asked
 * for). */
#ifndef LORAD_HUGEMEM_H
#define LORAD_HUGEMEM_H

#include <pthread.h>
#include <stddef.h>

/* A transparent huge page on x86-64 (and arm64 with 4 KB pages). */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)

/* bytes (> 0) of zeroed memory, private to the process, backed as it is first written,
 * starting on a HUGE_PAGE_BYTES boundary; NULL when it cannot be mapped. Huge pages are a
 * hint: where the kernel declines, the memory is the same, in 4 KiB pages. Give it back
 * with huge_free(p, bytes). */
void *huge_alloc(size_t bytes);
void huge_free(void *p, size_t bytes);

/* Near pages. On the VMs lorad is benchmarked on, the guest sees one memory node, yet a
 * cold dependent load from some "far" 2 MB pages takes ~1.25-1.5 times as long as from
 * the others (~250-300 ns against ~165-230), from either vCPU — with the page's address
 * translations warm, no longer: it is the path through them, presumably how the host
 * backs the page — and a block streams slower by the share of its pages that are far:
 * blocks of the same size, allocated the same way, read up to 1.5 times apart
 * (bench_place; docs/benchmarks.md). Which pages are far is not visible to the guest
 * otherwise, and it stays put while they are held. So
 * a merged W' could stream 10% slower than the base's W it replaces, or faster, as its
 * pages fell. huge_alloc_near times each page with a chain of dependent loads and swaps
 * far ones for near ones from extra allocations (mremap moves a page's mapping, not its
 * contents), so that the weights lorad streams every step — W and each W' — are near. */

/* How a huge_place went. */
typedef struct {
    size_t pages;      /* whole 2 MB pages of the block (a partial last one is not placed) */
    size_t probed;     /* pages timed: the block's and the extra ones */
    size_t far;        /* of the block's pages, those found far */
    size_t replaced;   /* far pages swapped for near ones; far - replaced are left */
    size_t extra;      /* extra pages mapped to find near ones (all freed again) */
    double near_ns;    /* a near page's latency, the reference; far is over FAR × it */
    double seconds;
    double paused;     /* of those, slept to keep to a duty (huge_alloc_near) */
    double load;       /* huge_alloc_near: the control pages' latency in the last pass over
                        * theirs idle (each page's was divided by it); 0: none */
    int controls;      /* control pages timed beside the block's (0: not scaled) */
    int failed;        /* a page could not be moved: placement stopped there */
} huge_place_report;

/* A page is far when its latency is over this times the near pages'. */
#define HUGE_FAR_FACTOR 1.25

/* Times each of n pages (2 MB, writable, on HUGE_PAGE_BYTES boundaries) into ns[i]: a
 * dependent load's latency. May write into the pages. */
typedef void huge_probe_fn(char *const *pages, size_t n, double *ns, void *ctx);

/* Places block (HUGE_PAGE_BYTES-aligned, from huge_alloc, writable) of pages 2 MB pages:
 * times them with probe, and swaps each far one — slowest first — for a near one from
 * extra blocks mapped for it, at most max_extra pages in all, in up to 10 rounds (each
 * sized by the near share seen so far); the far pages are held until the end (so that a
 * later round is not handed them again), then freed with the rest of the extra blocks.
 * The reference is the third fastest page timed here, or ref_ns if lower (the near
 * latency an earlier placement found; 0: none — then half the block's size more is mapped
 * and timed first, so that a block of far pages alone is not taken for near). Contents of
 * the swapped pages come with them; the probe's writes stay. Each swapped page is a
 * mapping of its own from then on (vm.max_map_count bounds them: 65530 by default).
 * Fills *rep. Returns the number of far pages left in the block, or -1 if memory for the
 * bookkeeping could not be had (nothing moved) or a page could not be moved (the swaps
 * before it stay; the block is whole and mapped either way, and the page that failed is
 * put back where it can be, else it reads as zeros). Not for blocks another thread reads
 * or writes meanwhile. */
long huge_place(char *block, size_t pages, size_t max_extra, double ref_ns,
                huge_probe_fn *probe, void *ctx, huge_place_report *rep);

/* huge_alloc, then — for a block of 16 whole 2 MB pages or more, with transparent huge
 * pages not off, and placement enabled (huge_place_enable) — huge_place with a
 * chain-of-loads probe from up to 4 of the calling thread's CPUs in turn (the thread is
 * pinned to each, then given its own CPUs back), the extra pages at most 4 times the
 * block's and a quarter of the memory available beside it; the near latency is remembered
 * for the next call (thread-safe). The reference only falls; load is allowed for by
 * the control pages (below). With duty < 1 it paces itself to that share of a core
 * (as variant_merge_paced: a W' built beside a decoding engine), taking 1/duty times as
 * long, and maps at most the block's size in extra pages (their faults are most of its
 * work: ~2 s a GB here, 10 times that paced at 0.1); the extra pages and the 96 MB read
 * to empty the caches are not counted in any budget of the caller's. The block is zeroed
 * whether placed or not; placed, its whole 2 MB pages are backed already (a partial last
 * one is left as huge_alloc maps it). *rep (may be NULL) says how it went (pages 0: not
 * placed). NULL when it cannot be mapped. Give it back with huge_free.
 * The process's first placement (the base's weights, idle, at start-up) also keeps up to
 * 4 of the near pages it finds among 16 more as control pages (8 MB, never freed); every
 * later one times them in each pass beside its own pages and scales its latencies by
 * their idle latency over theirs now (kept within 0.5-2; rep->load is the inverse), so
 * that a block placed while the engine decodes — whose reads slow every walk — is not
 * found all far against the idle reference. Placements run one at a time, process-wide
 * (a second waits for the first). */
void *huge_alloc_near(size_t bytes, double duty, huge_place_report *rep);

/* huge_alloc_near's placement of a block that is already mapped: block (from huge_alloc,
 * writable, HUGE_PAGE_BYTES-aligned; e.g. one a huge_cache kept) of bytes, its whole 2 MB
 * pages placed as a fresh one's would be (same conditions, limits and duty). Its contents
 * are stale afterwards: a page swapped for a near one holds that page's zeros, and the
 * others keep theirs but for one pointer-sized slot in each 4 KiB page, which the probe
 * wrote and leaves zeroed. For a kept block reused: a block placed where the host had no
 * near pages to give would otherwise stay far for as long as the cache hands it out. */
void huge_place_near(void *block, size_t bytes, double duty, huge_place_report *rep);

/* Bytes the kernel could give now (MemAvailable: free memory and reclaimable caches), or
 * -1 when it does not say. */
long long huge_mem_available(void);

/* Whether huge_alloc_near places pages (on, the default) or is huge_alloc (off:
 * `lorad serve --place-pages no`). Thread-safe. */
void huge_place_enable(int on);

/* Logs (info) how the placement of what (e.g. "the weights") went. */
void huge_place_log(const char *what, const huge_place_report *rep);

/* Freed blocks kept for the next allocation of about their size. A block mapped afresh is
 * backed again page by page on first touch: the kernel faults and zeroes each page, and in
 * a VM that reports free pages to its host (virtio-balloon free page reporting, as on the
 * machines lorad is benchmarked on) the host backs each again too — there 200-400 MB/s, so
 * a 425 MB W' took 1-2 s of faults before any arithmetic. A kept block costs nothing.
 * Contents of a block taken are stale. Thread-safe; a cache lives as long as the process
 * (the blocks it keeps are never returned at exit). */
#define HUGE_CACHE_MAX 8
typedef struct {
    pthread_mutex_t mu;
    int max_n;          /* blocks kept at most (HUGE_CACHE_MAX if more) */
    size_t max_bytes;   /* bytes kept at most */
    int n;
    size_t bytes;
    void *p[HUGE_CACHE_MAX];   /* oldest first */
    size_t cap[HUGE_CACHE_MAX];
} huge_cache;
#define HUGE_CACHE_INIT(max_n, max_bytes) \
    {PTHREAD_MUTEX_INITIALIZER, (max_n), (max_bytes), 0, 0, {0}, {0}}

/* The smallest kept block of bytes .. 2·bytes, writable, its size in *cap; NULL if none
 * (then a huge_alloc of bytes is the caller's to make). */
void *huge_cache_take(huge_cache *c, size_t bytes, size_t *cap);
/* Keeps block p of cap bytes (from huge_alloc, any protection), the oldest kept ones
 * freed to make room; a block larger than the cache may hold is freed. */
void huge_cache_put(huge_cache *c, void *p, size_t cap);
/* Frees every kept block. */
void huge_cache_drain(huge_cache *c);

#endif
