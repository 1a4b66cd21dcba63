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
