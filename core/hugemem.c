/* huge_alloc, huge_free, huge_alloc_near (placing a block's pages), huge_cache: see
 * hugemem.h. */
#include "hugemem.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

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

/* ---- Near pages ---- */

#define PLACE_ROUNDS 10
#define PROBE_LINES 512   /* one line in each 4 KiB page of a 2 MB page */
#define PROBE_WALKS 2     /* a page's latency from one CPU: the fastest of these */
#define PROBE_CPUS 4
/* Read between passes of walks to empty the caches: 3 times the last-level cache a core
 * shares (32 MB on Zen 3-5; sysconf reports the host's whole L3 in these VMs, ~500 MB). */
#define SCRUB_BYTES ((size_t)96 << 20)
/* Smaller blocks are not placed: mapping and reading the scrub would cost more than their
 * speed could matter. */
#define PLACE_MIN_PAGES 16

/* Moves the 2 MB page mapped at from to to, leaving from mapped, empty (MREMAP_DONTUNMAP:
 * no hole another thread's mmap could take between two moves). */
static int page_move(char *from, char *to)
{
    void *r = mremap(from, HUGE_PAGE_BYTES, HUGE_PAGE_BYTES,
                     MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to);
    return r == (void *)to ? 0 : -1;
}

/* A far page of the block: its index and latency, sorted slowest first. */
typedef struct {
    double ns;
    size_t i;
} far_page;

static int cmp_slowest_first(const void *a, const void *b)
{
    double x = ((const far_page *)a)->ns, y = ((const far_page *)b)->ns;
    return (x < y) - (x > y);
}

/* Extra pages mapped to find near ones in: each is timed (ns) and, when near, swapped
 * for a far page of the block; the far page is kept here until all extra blocks are freed
 * at the end, so that a later round is not handed it again. */
typedef struct {
    char *p;       /* [pages × 2 MB] */
    size_t pages;
    char **pg;     /* [pages] each page's address */
    double *ns;    /* [pages] each page's latency */
} extra_block;

static void extra_free(extra_block *x)
{
    huge_free(x->p, x->pages * HUGE_PAGE_BYTES);
    free(x->pg);
    free(x->ns);
}

/* Maps pages extra pages into x and times them. -1 if they cannot be mapped. */
static int extra_map(extra_block *x, size_t pages, huge_probe_fn *probe, void *ctx)
{
    *x = (extra_block){huge_alloc(pages * HUGE_PAGE_BYTES), pages,
                       malloc(pages * sizeof(char *)), malloc(pages * sizeof(double))};
    if (!x->p || !x->pg || !x->ns) {
        extra_free(x);
        return -1;
    }
    for (size_t i = 0; i < pages; i++)
        x->pg[i] = x->p + i * HUGE_PAGE_BYTES;
    probe(x->pg, pages, x->ns, ctx);
    return 0;
}

/* Swaps the far pages far[*next..n_far) of the block (pg: its pages' addresses), slowest
 * first, for x's pages no slower than limit, through tmp; *next moves past each page
 * swapped. -1 if a page could not be moved. */
static int extra_swap(extra_block *x, char **pg, const far_page *far, size_t n_far,
                      size_t *next, double limit, char *tmp)
{
    for (size_t i = 0; i < x->pages && *next < n_far; i++) {
        if (x->ns[i] > limit)
            continue;
        char *slot = pg[far[*next].i];
        if (page_move(slot, tmp))
            return -1;
        if (page_move(x->pg[i], slot)) {
            page_move(tmp, slot);   /* the far page back, contents and all, if it can be */
            return -1;
        }
        (*next)++;   /* the slot holds the near page now, whatever happens to tmp's */
        if (page_move(tmp, x->pg[i]))
            return -1;
        x->ns[i] = far[*next - 1].ns;
    }
    return 0;
}

long huge_place(char *block, size_t pages, size_t max_extra, double ref_ns,
                huge_probe_fn *probe, void *ctx, huge_place_report *rep)
{
    double t0 = clock_seconds();
    memset(rep, 0, sizeof *rep);
    rep->pages = pages;
    if (pages == 0)
        return 0;
    long left = -1;
    extra_block xb[1 + PLACE_ROUNDS];
    int n_xb = 0;
    size_t n_far = 0, next = 0;   /* far[next..n_far) are still to replace */
    char **pg = malloc(pages * sizeof *pg);
    double *ns = malloc(pages * sizeof *ns);
    far_page *far = malloc(pages * sizeof *far);
    char *tmp = huge_alloc(HUGE_PAGE_BYTES);   /* where a far page waits during a swap */
    if (!pg || !ns || !far || !tmp)
        goto done;
    for (size_t i = 0; i < pages; i++)
        pg[i] = block + i * HUGE_PAGE_BYTES;
    probe(pg, pages, ns, ctx);
    rep->probed = pages;
    /* The first placement has no near latency to go by, and a block can be mostly far
     * (here the first gigabytes a new process is given often were): a sample of more
     * memory, half the block's size, is timed with it, and is the first to swap from. */
    if (ref_ns <= 0 && max_extra > 0) {
        size_t calib = pages / 2 > 0 ? pages / 2 : 1;
        calib = calib < max_extra ? calib : max_extra;
        if (extra_map(&xb[n_xb], calib, probe, ctx) == 0) {
            rep->extra += calib;
            rep->probed += calib;
            n_xb++;
        }
    }
    /* The reference: the third fastest page timed (not the fastest: one walk that
     * happened to run quick), or ref_ns if lower. */
    double low[3] = {1e300, 1e300, 1e300};
    for (int b = -1; b < n_xb; b++) {
        const double *t = b < 0 ? ns : xb[b].ns;
        size_t n = b < 0 ? pages : xb[b].pages;
        for (size_t i = 0; i < n; i++)
            for (int j = 0; j < 3; j++)
                if (t[i] < low[j]) {
                    memmove(low + j + 1, low + j, (size_t)(2 - j) * sizeof *low);
                    low[j] = t[i];
                    break;
                }
    }
    double own = low[pages + rep->extra > 2 ? 2 : 0];
    rep->near_ns = ref_ns > 0 && ref_ns < own ? ref_ns : own;
    double limit = HUGE_FAR_FACTOR * rep->near_ns;
    for (size_t i = 0; i < pages; i++)
        if (ns[i] > limit)
            far[n_far++] = (far_page){ns[i], i};
    rep->far = n_far;
    qsort(far, n_far, sizeof *far, cmp_slowest_first);
    /* Each round maps as many extra pages as the near share among extra pages so far (the
     * block's before any) says the far pages left need — taken as at least a fifth: a
     * share seen in few pages is no law — and 10% over. */
    size_t x_near = 0, x_seen = 0;   /* near pages among the extra pages timed */
    if (n_xb) {
        for (size_t i = 0; i < xb[0].pages; i++, x_seen++)
            x_near += xb[0].ns[i] <= limit;
        if (extra_swap(&xb[0], pg, far, n_far, &next, limit, tmp))
            goto done;
    }
    for (int round = 0; round < PLACE_ROUNDS && next < n_far && rep->extra < max_extra;
         round++) {
        double share = x_seen ? (double)x_near / (double)x_seen
                              : (double)(pages - n_far) / (double)pages;
        share = share > 0.2 ? share : 0.2;
        size_t want = (size_t)((double)(n_far - next) / share * 1.1) + 1;
        if (want > max_extra - rep->extra)
            want = max_extra - rep->extra;
        if (extra_map(&xb[n_xb], want, probe, ctx))
            break;
        rep->extra += want;
        rep->probed += want;
        for (size_t i = 0; i < want; i++, x_seen++)
            x_near += xb[n_xb].ns[i] <= limit;
        if (extra_swap(&xb[n_xb++], pg, far, n_far, &next, limit, tmp))
            goto done;
    }
    left = (long)(n_far - next);
done:
    rep->replaced = next;
    for (int i = 0; i < n_xb; i++)
        extra_free(&xb[i]);
    huge_free(tmp, HUGE_PAGE_BYTES);
    free(pg);
    free(ns);
    free(far);
    rep->seconds = clock_seconds() - t0;
    return left;
}

/* Offset in a 2 MB page of the line the chain visits in its 4 KiB page i: a different
 * line of each, so that the walk does not meet the same cache sets every time. */
static size_t probe_line(unsigned i)
{
    return (size_t)i * 4096 + (size_t)(i % 64) * 64;
}

/* The shuffled order the chains visit a page's 4 KiB pages in (fixed: a linear
 * congruential shuffle, so every page's chain is alike). */
static void probe_order(unsigned *perm)
{
    for (unsigned i = 0; i < PROBE_LINES; i++)
        perm[i] = i;
    uint32_t x = 12345;
    for (unsigned i = PROBE_LINES - 1; i > 0; i--) {
        x = x * 1664525u + 1013904223u;
        unsigned j = (x >> 8) % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* Nanoseconds per load of one walk of the chain in page. */
static double probe_walk(char *page, const unsigned *perm)
{
    char *start = page + probe_line(perm[0]), *p = start;
    double t0 = clock_seconds();
    for (unsigned i = 0; i < PROBE_LINES; i++)
        p = *(char *volatile *)p;
    double ns = (clock_seconds() - t0) / PROBE_LINES * 1e9;
    return p == start ? ns : 1e9;   /* a chain that did not close: treated as far */
}

/* Reads scrub (SCRUB_BYTES) whole, so that nothing a walk is about to meet is left in the
 * caches: neither the chains' lines nor the address translations of their pages — the
 * guest's, nor the host's, which the guest cannot flush. A far page is told apart by its
 * cold walk, translations and all: walked just after its page was faulted in (the host's
 * page tables for it freshly written), or after its lines were flushed with clflush
 * (which loads the translations), every page read alike here (~125 ns a load). */
static void probe_scrub(const char *scrub)
{
    const uint64_t *q = (const uint64_t *)scrub;
    uint64_t sum = 0;
    for (size_t i = 0; i < SCRUB_BYTES / sizeof *q; i += 8)
        sum += q[i];
    __asm__ volatile("" : : "r"(sum));
}

/* Control pages kept at most (probe_ctx, ctl_setup). */
#define CTL_PAGES 4

/* What probe_chains works with. */
typedef struct {
    char *scrub;     /* [SCRUB_BYTES] */
    double duty;     /* share of a core to use (1: all it can) */
    double mark;     /* when the work since the last pause began */
    double paused;   /* seconds slept so far */
    /* control pages (near ones the process keeps, ctl_pages below), timed in every pass
     * beside the pages asked for: each page's latency is scaled by ctl_ns (theirs, idle)
     * over theirs now, so that a pass made under load (a W' placed beside a decoding
     * engine, whose reads slow every walk) is judged as if idle. n_ctl 0: not scaled */
    char *ctl[CTL_PAGES];
    int n_ctl;
    double ctl_ns;
    double ctl_ratio;   /* out: the control pages' latency now over ctl_ns (the last pass) */
    /* probe_chains' lists of the control pages and the pages, and their latencies: kept
     * for the whole placement (huge_place_near frees them), grown when a pass needs more */
    char **all;
    double *all_ns;
    size_t all_cap;
} probe_ctx;

/* Every PACE_PAGES pages (and after each scrub), a probe with duty < 1 sleeps in
 * proportion to the work since the last pause, so that it takes that share of a core on
 * average, as the merge it serves does (variant_merge_paced). */
#define PACE_PAGES 16

static void pace(probe_ctx *c)
{
    if (c->duty >= 1.0)
        return;
    c->paused += clock_pace(c->mark, c->duty);
    c->mark = clock_seconds();
}

/* Lays a chain in each page, then times it from up to PROBE_CPUS of the calling thread's
 * CPUs, one after another; a page's latency is the mean over them of its fastest walk. */
static void probe_raw(char *const *pages, size_t n, double *ns, void *ctx)
{
    probe_ctx *pc = ctx;
    const char *scrub = pc->scrub;
    unsigned perm[PROBE_LINES];
    probe_order(perm);
    for (size_t k = 0; k < n; k++) {   /* the first write to a fresh page faults it in */
        for (unsigned i = 0; i < PROBE_LINES; i++)
            *(char **)(pages[k] + probe_line(perm[i])) =
                pages[k] + probe_line(perm[(i + 1) % PROBE_LINES]);
        if (k % PACE_PAGES == PACE_PAGES - 1)
            pace(pc);
    }
    cpu_set_t own;
    int pinned = pthread_getaffinity_np(pthread_self(), sizeof own, &own) == 0;
    int cpus[PROBE_CPUS], n_cpus = 0;
    if (pinned) {
        int count = CPU_COUNT(&own), seen = 0;
        for (int c = 0; c < CPU_SETSIZE && n_cpus < PROBE_CPUS; c++)
            if (CPU_ISSET(c, &own)) {
                /* spread over the set: every stride-th of its CPUs */
                int stride = (count + PROBE_CPUS - 1) / PROBE_CPUS;
                if (seen % stride == 0)
                    cpus[n_cpus++] = c;
                seen++;
            }
    }
    double *best = malloc(n * sizeof *best);
    for (size_t k = 0; k < n; k++)
        ns[k] = 0;
    if (!best)
        return;   /* all alike: none far */
    int runs = 0;
    for (int c = 0; c < (n_cpus ? n_cpus : 1); c++) {
        if (n_cpus) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpus[c], &one);
            if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0)
                continue;
        }
        for (int w = 0; w < PROBE_WALKS; w++) {
            probe_scrub(scrub);
            pace(pc);
            for (size_t k = 0; k < n; k++) {
                double t = probe_walk(pages[k], perm);
                best[k] = w == 0 || t < best[k] ? t : best[k];
                if (k % PACE_PAGES == PACE_PAGES - 1)
                    pace(pc);
            }
        }
        for (size_t k = 0; k < n; k++)
            ns[k] += best[k];
        runs++;
    }
    /* The thread's own CPUs back: left on one, every thread it starts later (for the
     * model, the engine's pool) would inherit that one. */
    if (pinned && pthread_setaffinity_np(pthread_self(), sizeof own, &own) != 0)
        log_warn("placing pages: cannot give this thread its CPUs back; it stays on one");
    if (runs == 0) {   /* no CPU could be pinned: time from wherever the thread runs */
        probe_scrub(scrub);
        for (size_t k = 0; k < n; k++)
            ns[k] = probe_walk(pages[k], perm);
        runs = 1;
    }
    free(best);
    for (size_t k = 0; k < n; k++)
        ns[k] /= runs;
}

/* huge_probe_fn: probe_raw of the pages and the control pages in the same passes, each
 * page's latency scaled by the control pages' idle latency over theirs now (the fastest
 * of them, so that one gone far does not count; the scale kept within 0.5-2). */
static void probe_chains(char *const *pages, size_t n, double *ns, void *ctx)
{
    probe_ctx *pc = ctx;
    size_t need = n + (size_t)pc->n_ctl;
    if (pc->n_ctl && need > pc->all_cap) {
        char **all = realloc(pc->all, need * sizeof *all);
        if (all)
            pc->all = all;
        double *all_ns = all ? realloc(pc->all_ns, need * sizeof *all_ns) : NULL;
        if (all_ns) {
            pc->all_ns = all_ns;
            pc->all_cap = need;
        }
    }
    if (!pc->n_ctl || need > pc->all_cap) {   /* none, or no memory for the lists: unscaled */
        probe_raw(pages, n, ns, ctx);
        return;
    }
    char **all = pc->all;
    double *t = pc->all_ns;
    memcpy(all, pc->ctl, (size_t)pc->n_ctl * sizeof *all);
    memcpy(all + pc->n_ctl, pages, n * sizeof *all);
    probe_raw(all, n + (size_t)pc->n_ctl, t, ctx);
    double now = t[0];
    for (int i = 1; i < pc->n_ctl; i++)
        now = t[i] < now ? t[i] : now;
    double scale = now > 0 ? pc->ctl_ns / now : 1;
    scale = scale < 0.5 ? 0.5 : scale > 2 ? 2 : scale;
    pc->ctl_ratio = 1 / scale;
    for (size_t k = 0; k < n; k++)
        ns[k] = t[pc->n_ctl + k] * scale;
}

long long huge_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1)
            break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* 0 when transparent huge pages are off ("[never]"): then a "2 MB page" is 512 pages of
 * 4 KiB, each timed once, and not what the placement is for. */
static int thp_possible(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return 1;
    char line[128] = "";
    int never = fgets(line, sizeof line, f) && strstr(line, "[never]");
    fclose(f);
    return !never;
}

/* huge_place_enable(0); atomic: set from any thread, read at each placement's start */
static int place_off;
/* Held by a placement from start to end: placements run one at a time, as they share the
 * control pages (each lays its chains in them) and two probing at once would slow each
 * other's walks. It alone guards what follows. Only one daemon-wide merge policy places
 * W's (--merge always where an adapter loads, or auto on its merge thread), so a paced auto
 * placement, up to ~30 s, never holds up a full-speed one; at start-up, W is placed
 * before any adapter loads. */
static pthread_mutex_t place_mu = PTHREAD_MUTEX_INITIALIZER;
static double near_ref_ns;   /* the last placement's reference; 0 before the first */
/* Control pages: up to CTL_PAGES near 2 MB pages kept from the first placement on (8 MB
 * for the process's life), and their fastest latency then, idle (probe_ctx). Set once. */
static char *ctl_pages[CTL_PAGES];
static int n_ctl_pages;
static double ctl_idle_ns;
static int ctl_tried;

/* Pages mapped to find the control pages among. */
#define CTL_CANDIDATES 16

/* After the process's first placement (reference ref_ns, found idle, at start-up): maps
 * CTL_CANDIDATES pages and keeps the first CTL_PAGES that read near as the control pages
 * (none if none does: then latencies are not scaled). Under place_mu. */
static void ctl_setup(probe_ctx *pc, double ref_ns)
{
    ctl_tried = 1;
    char *block = huge_alloc((size_t)CTL_CANDIDATES * HUGE_PAGE_BYTES);
    if (!block)
        return;
    char *pages[CTL_CANDIDATES];
    double ns[CTL_CANDIDATES];
    for (int i = 0; i < CTL_CANDIDATES; i++)
        pages[i] = block + (size_t)i * HUGE_PAGE_BYTES;
    probe_raw(pages, CTL_CANDIDATES, ns, pc);
    for (int i = 0; i < CTL_CANDIDATES; i++)
        if (n_ctl_pages < CTL_PAGES && ns[i] <= HUGE_FAR_FACTOR * ref_ns) {
            if (!n_ctl_pages || ns[i] < ctl_idle_ns)
                ctl_idle_ns = ns[i];
            ctl_pages[n_ctl_pages++] = pages[i];
        } else {
            huge_free(pages[i], HUGE_PAGE_BYTES);   /* far, or one too many */
        }
}

void huge_place_enable(int on)
{
    __atomic_store_n(&place_off, !on, __ATOMIC_RELAXED);
}

void huge_place_near(void *block, size_t bytes, double duty, huge_place_report *rep)
{
    double t0 = clock_seconds();
    huge_place_report own;
    if (!rep)
        rep = &own;
    memset(rep, 0, sizeof *rep);
    char *p = block;
    size_t pages = bytes / HUGE_PAGE_BYTES;
    if (__atomic_load_n(&place_off, __ATOMIC_RELAXED) || !thp_possible() ||
        pages < PLACE_MIN_PAGES)
        return;
    pthread_mutex_lock(&place_mu);
    double ref = near_ref_ns;
    probe_ctx pc = {.n_ctl = n_ctl_pages, .ctl_ns = ctl_idle_ns};
    memcpy(pc.ctl, ctl_pages, sizeof ctl_pages);
    rep->pages = pages;
    /* a quarter of what is left once the block and the scrub are backed (MemAvailable
     * does not count them yet: the probe faults them in) */
    int paced = duty > 0 && duty < 1;
    long long known = huge_mem_available();
    size_t max_extra = (paced ? 1 : 4) * pages, avail = known > 0 ? (size_t)known : 0;
    avail = avail > bytes + SCRUB_BYTES ? (avail - bytes - SCRUB_BYTES) / 4 : 0;
    if (max_extra > avail / HUGE_PAGE_BYTES)
        max_extra = avail / HUGE_PAGE_BYTES;
    pc.scrub = huge_alloc(SCRUB_BYTES);
    pc.duty = paced ? duty : 1.0;
    pc.mark = clock_seconds();
    if (!pc.scrub) {
        pthread_mutex_unlock(&place_mu);
        return;   /* not placed */
    }
    for (size_t at = 0; at < SCRUB_BYTES; at += (size_t)8 << 20) {
        memset(pc.scrub + at, 1, (size_t)8 << 20);
        pace(&pc);
    }
    rep->failed = huge_place(p, pages, max_extra, ref, probe_chains, &pc, rep) < 0;
    rep->load = pc.ctl_ratio;
    rep->controls = pc.n_ctl;
    if (rep->near_ns > 0) {
        near_ref_ns = rep->near_ns;
        if (!ctl_tried && ref == 0)   /* the first placement: idle, at start-up */
            ctl_setup(&pc, rep->near_ns);
    }
    pthread_mutex_unlock(&place_mu);
    free(pc.all);
    free(pc.all_ns);
    rep->paused = pc.paused;
    rep->seconds = clock_seconds() - t0;   /* the scrub's faults and any wait too */
    huge_free(pc.scrub, SCRUB_BYTES);
    /* the chains' pointers are the only bytes the probe wrote */
    for (size_t k = 0; k < pages; k++)
        for (unsigned i = 0; i < PROBE_LINES; i++)
            *(char **)(p + k * HUGE_PAGE_BYTES + probe_line(i)) = NULL;
}

void *huge_alloc_near(size_t bytes, double duty, huge_place_report *rep)
{
    void *p = huge_alloc(bytes);
    if (p)
        huge_place_near(p, bytes, duty, rep);
    else if (rep)
        memset(rep, 0, sizeof *rep);
    return p;
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

void huge_place_log(const char *what, const huge_place_report *rep)
{
    if (rep->pages == 0)
        return;   /* under PLACE_MIN_PAGES: not placed */
    if (rep->near_ns <= 0) {
        log_info("%s: %zu MB, pages not placed (probe unavailable)", what,
                 rep->pages * HUGE_PAGE_BYTES >> 20);
        return;
    }
    if (rep->failed)
        log_warn("%s: placing pages stopped: a page could not be moved (mremap), %zu of %zu "
                 "far ones swapped", what, rep->replaced, rep->far);
    char load[64] = "";
    if (rep->load > 0)
        snprintf(load, sizeof load, "; latencies scaled by 1/%.2f, %d control pages' now",
                 rep->load, rep->controls);
    log_info("%s: %zu pages of 2 MB placed in %.2f s: %zu far (over %.0f ns, %.2f x the near "
             "%.0f), %zu swapped for near ones of %zu extra%s", what, rep->pages, rep->seconds,
             rep->far, HUGE_FAR_FACTOR * rep->near_ns, HUGE_FAR_FACTOR, rep->near_ns,
             rep->replaced, rep->extra, load);
}
