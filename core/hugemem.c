/* huge_alloc, huge_free, huge_cache: see hugemem.h. */
#include "hugemem.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *huge_alloc(size_t bytes)
{
    if (bytes == 0)
        return NULL;
    /* Mapped with a huge page of room and trimmed to start on one: the kernel backs only
     * whole, aligned 2 MB pieces with huge pages, and mmap's 4 KB-aligned start left a
     * piece at each end of every block in 4 KB pages: in a daemon that had served 64
     * clients, 9% of its anonymous memory, most of it the ends of the KV cache's 22.5 MB
     * slabs (up to 4 MB of each; of a 19.5 MB adapter likewise). */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = (bytes + page - 1) / page * page, span = len + HUGE_PAGE_BYTES;
    if (span < len)
        return NULL;
    char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    char *p = (char *)(((uintptr_t)m + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1));
    if (p > m)
        munmap(m, (size_t)(p - m));
    if (m + span > p + len)
        munmap(p + len, (size_t)(m + span - (p + len)));
    madvise(p, len, MADV_HUGEPAGE);   /* a hint; failure leaves 4 KiB pages */
    return p;
}

void huge_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

/* Removes block i from c, oldest-first order kept. Under c->mu. */
static void cache_remove(huge_cache *c, int i)
{
    c->bytes -= c->cap[i];
    memmove(c->p + i, c->p + i + 1, (size_t)(c->n - i - 1) * sizeof *c->p);
    memmove(c->cap + i, c->cap + i + 1, (size_t)(c->n - i - 1) * sizeof *c->cap);
    c->n--;
}

void *huge_cache_take(huge_cache *c, size_t bytes, size_t *cap)
{
    pthread_mutex_lock(&c->mu);
    int best = -1;
    for (int i = 0; i < c->n; i++)
        if (c->cap[i] >= bytes && c->cap[i] / 2 <= bytes &&
            (best < 0 || c->cap[i] < c->cap[best]))
            best = i;
    void *p = NULL;
    if (best >= 0) {
        p = c->p[best];
        *cap = c->cap[best];
        cache_remove(c, best);
    }
    pthread_mutex_unlock(&c->mu);
    /* a W' is made read-only once written (variant.c) */
    if (p && mprotect(p, *cap, PROT_READ | PROT_WRITE) != 0) {
        huge_free(p, *cap);
        p = NULL;
    }
    return p;
}

void huge_cache_put(huge_cache *c, void *p, size_t cap)
{
    if (!p)
        return;
    void *drop[HUGE_CACHE_MAX + 1];
    size_t drop_cap[HUGE_CACHE_MAX + 1];
    int n_drop = 0;
    pthread_mutex_lock(&c->mu);
    if (cap > c->max_bytes || c->max_n < 1) {
        drop[n_drop] = p;
        drop_cap[n_drop++] = cap;
    } else {
        while (c->n > 0 && (c->n >= c->max_n || c->n >= HUGE_CACHE_MAX ||
                            c->bytes + cap > c->max_bytes)) {
            drop[n_drop] = c->p[0];
            drop_cap[n_drop++] = c->cap[0];
            cache_remove(c, 0);
        }
        c->p[c->n] = p;
        c->cap[c->n++] = cap;
        c->bytes += cap;
    }
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < n_drop; i++)   /* munmap outside the lock */
        huge_free(drop[i], drop_cap[i]);
}

void huge_cache_drain(huge_cache *c)
{
    for (;;) {
        pthread_mutex_lock(&c->mu);
        void *p = c->n ? c->p[0] : NULL;
        size_t cap = c->n ? c->cap[0] : 0;
        if (p)
            cache_remove(c, 0);
        pthread_mutex_unlock(&c->mu);
        if (!p)
            return;
        huge_free(p, cap);
    }
}
