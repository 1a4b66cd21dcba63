/* Tests for core/hugemem's huge_cache, as hugemem.h describes it: a freed block is handed
 * to the next request of half to all of its size (the smallest such block), the oldest
 * blocks go first when the count or the bytes are full, a block over the byte limit is
 * never kept, a taken block is writable whatever its protection when it was put, and drain
 * empties the cache. Blocks are told apart by their address while the cache holds them
 * (a kept block is still mapped, so no other mapping can have its address). lora's arena
 * cache is one of these (tests/test_lora.c); variant's W' cache another
 * (tests/test_variant.c).
 *
 * huge_place is driven by a probe that stands in for the chain of loads: it gives the
 * k-th page it is handed the latency lat[k] and writes k into the page, so that a test
 * can tell which page — the block's own or an extra one — ended in each slot, and that
 * its contents came with it. huge_alloc_near is run with the real probe: what it must
 * give whatever the machine's pages are like (zeroed, aligned, whole, every count
 * consistent). */
#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/hugemem.h"

enum { KB = 1024 };

static void *block(size_t bytes)
{
    void *p = huge_alloc(bytes);
    ck_assert_ptr_nonnull(p);
    memset(p, 0x5a, bytes);
    return p;
}

/* Every block starts on a huge page (the kernel backs only whole aligned 2 MB pieces with
 * one), is zeroed and writable to its last byte, and the room mapped past it to align it
 * is gone: the page after it is not mapped (msync fails with ENOMEM on an unmapped page;
 * that page was always part of the room, so nothing else can have it). */
START_TEST(test_a_block_starts_on_a_huge_page_and_the_room_past_it_is_unmapped)
{
    static const size_t sizes[] = {1, 4 * KB, 5 * KB * KB + 123, 22 * KB * KB + 512 * KB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = huge_alloc(n);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % HUGE_PAGE_BYTES, 0);
        ck_assert(p[0] == 0 && p[n - 1] == 0);
        p[0] = 1;
        p[n - 1] = 2;
        size_t page = (size_t)sysconf(_SC_PAGESIZE), end = (n + page - 1) / page * page;
        ck_assert_int_eq(msync(p, n, MS_ASYNC), 0);
        ck_assert_int_ne(msync(p + end, page, MS_ASYNC), 0);
        huge_free(p, n);
    }
    ck_assert_ptr_null(huge_alloc(0));
}
END_TEST

START_TEST(test_a_block_goes_to_a_request_of_half_to_all_of_it_smallest_first)
{
    huge_cache c = HUGE_CACHE_INIT(4, (size_t)64 << 20);
    size_t cap = 0;
    ck_assert_ptr_null(huge_cache_take(&c, 100 * KB, &cap));   /* empty */
    void *big = block(400 * KB), *mid = block(200 * KB);
    huge_cache_put(&c, big, 400 * KB);
    huge_cache_put(&c, mid, 200 * KB);
    ck_assert_int_eq(c.n, 2);
    ck_assert_uint_eq(c.bytes, 600 * KB);
    /* 150 KB: only mid (200 <= 2·150) qualifies; big would waste over half */
    void *p = huge_cache_take(&c, 150 * KB, &cap);
    ck_assert_ptr_eq(p, mid);
    ck_assert_uint_eq(cap, 200 * KB);
    huge_cache_put(&c, p, cap);
    /* 200 KB: both qualify, the smaller is taken */
    p = huge_cache_take(&c, 200 * KB, &cap);
    ck_assert_ptr_eq(p, mid);
    /* 401 KB: none is large enough; 199 KB: big is too large, mid is taken */
    ck_assert_ptr_null(huge_cache_take(&c, 401 * KB, &cap));
    ck_assert_ptr_null(huge_cache_take(&c, 199 * KB, &cap));
    ck_assert_ptr_eq(huge_cache_take(&c, 399 * KB, &cap), big);
    ck_assert_int_eq(c.n, 0);
    ck_assert_uint_eq(c.bytes, 0);
    huge_free(p, 200 * KB);
    huge_free(big, 400 * KB);
}
END_TEST

START_TEST(test_a_taken_block_is_writable_with_its_old_contents)
{
    huge_cache c = HUGE_CACHE_INIT(1, (size_t)64 << 20);
    unsigned char *p = block(256 * KB);
    p[0] = 7;
    p[256 * KB - 1] = 9;
    ck_assert_int_eq(mprotect(p, 256 * KB, PROT_READ), 0);   /* as a finished W' is */
    huge_cache_put(&c, p, 256 * KB);
    size_t cap = 0;
    unsigned char *q = huge_cache_take(&c, 256 * KB, &cap);
    ck_assert_ptr_eq(q, p);
    ck_assert_int_eq(q[0], 7);                 /* stale, as documented */
    ck_assert_int_eq(q[256 * KB - 1], 9);
    memset(q, 1, cap);                         /* writable again (SIGSEGV otherwise) */
    huge_free(q, cap);
}
END_TEST

START_TEST(test_the_oldest_blocks_go_when_the_count_or_the_bytes_are_full)
{
    huge_cache c = HUGE_CACHE_INIT(2, 300 * KB);
    void *a = block(100 * KB), *b = block(100 * KB), *d = block(100 * KB);
    huge_cache_put(&c, a, 100 * KB);
    huge_cache_put(&c, b, 100 * KB);
    huge_cache_put(&c, d, 100 * KB);   /* count full: a is freed */
    ck_assert_int_eq(c.n, 2);
    ck_assert_ptr_eq(c.p[0], b);
    ck_assert_ptr_eq(c.p[1], d);
    void *e = block(250 * KB);
    huge_cache_put(&c, e, 250 * KB);   /* bytes: 450 KB > 300 KB until b and d go */
    ck_assert_int_eq(c.n, 1);
    ck_assert_ptr_eq(c.p[0], e);
    ck_assert_uint_eq(c.bytes, 250 * KB);
    void *f = block(301 * KB);
    huge_cache_put(&c, f, 301 * KB);   /* over the limit alone: freed, e stays */
    ck_assert_int_eq(c.n, 1);
    ck_assert_ptr_eq(c.p[0], e);
    huge_cache_put(&c, NULL, 100 * KB);   /* nothing */
    ck_assert_int_eq(c.n, 1);
    huge_cache_drain(&c);
    ck_assert_int_eq(c.n, 0);
    ck_assert_uint_eq(c.bytes, 0);
    size_t cap;
    ck_assert_ptr_null(huge_cache_take(&c, 250 * KB, &cap));
    huge_cache_drain(&c);   /* an empty cache */
}
END_TEST

START_TEST(test_a_cache_of_no_blocks_keeps_nothing)
{
    huge_cache c = HUGE_CACHE_INIT(0, (size_t)64 << 20);
    huge_cache_put(&c, block(64 * KB), 64 * KB);
    ck_assert_int_eq(c.n, 0);
    ck_assert_uint_eq(c.bytes, 0);
}
END_TEST

START_TEST(test_a_cache_asked_for_more_blocks_than_it_has_room_for_keeps_the_newest)
{
    huge_cache c = HUGE_CACHE_INIT(HUGE_CACHE_MAX + 4, (size_t)64 << 20);
    void *last = NULL;
    for (int i = 0; i < HUGE_CACHE_MAX + 3; i++)
        huge_cache_put(&c, last = block(16 * KB), 16 * KB);
    ck_assert_int_eq(c.n, HUGE_CACHE_MAX);
    ck_assert_ptr_eq(c.p[HUGE_CACHE_MAX - 1], last);
    huge_cache_drain(&c);
}
END_TEST

/* The stand-in probe: page k (in the order pages are handed to it, over every call) takes
 * lat[k] (near: 200 ns, far: 300 + k, so the far ones are told apart by speed), and has k
 * written at TAG_AT. */
enum { TAG_AT = 4096 + 64, MAX_PROBED = 256 };
typedef struct {
    double lat[MAX_PROBED];
    int n;                     /* pages probed so far */
    char *page[MAX_PROBED];    /* where the k-th page was when it was probed */
} fake_probe;

static void probe_fake(char *const *pages, size_t n, double *ns, void *ctx)
{
    fake_probe *f = ctx;
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_lt(f->n, MAX_PROBED);
        ck_assert_uint_eq((uintptr_t)pages[i] % HUGE_PAGE_BYTES, 0);
        *(int *)(pages[i] + TAG_AT) = f->n;
        f->page[f->n] = pages[i];
        ns[i] = f->lat[f->n++];
    }
}

/* lat[k] = 200 (near) unless k is in far[0..n_far): then 300 + k. */
static void fake_init(fake_probe *f, const int *far, int n_far)
{
    memset(f, 0, sizeof *f);
    for (int k = 0; k < MAX_PROBED; k++)
        f->lat[k] = 200;
    for (int i = 0; i < n_far; i++)
        f->lat[far[i]] = 300 + far[i];
}

static int tag(const char *block, size_t page)
{
    return *(const int *)(block + page * HUGE_PAGE_BYTES + TAG_AT);
}

START_TEST(test_a_block_of_near_pages_is_left_as_it_is)
{
    enum { PAGES = 6 };
    char *b = block(PAGES * HUGE_PAGE_BYTES);
    fake_probe f;
    fake_init(&f, NULL, 0);
    huge_place_report r;
    ck_assert_int_eq(huge_place(b, PAGES, 2 * PAGES, 200, probe_fake, &f, &r), 0);
    ck_assert_uint_eq(r.pages, PAGES);
    ck_assert_uint_eq(r.probed, PAGES);   /* a reference given: no sample of more memory */
    ck_assert_uint_eq(r.far, 0);
    ck_assert_uint_eq(r.replaced, 0);
    ck_assert_uint_eq(r.extra, 0);
    for (int k = 0; k < PAGES; k++)
        ck_assert_int_eq(tag(b, (size_t)k), k);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);
}
END_TEST

/* Pages 1, 4 and 5 of 8 are far; every extra page is near: each far page is swapped for
 * one, the others stay where they were, and what the pages hold moves with them. */
START_TEST(test_each_far_page_is_swapped_for_a_near_one_with_its_contents)
{
    enum { PAGES = 8 };
    static const int far[] = {1, 4, 5};
    char *b = block(PAGES * HUGE_PAGE_BYTES);
    fake_probe f;
    fake_init(&f, far, 3);
    huge_place_report r;
    ck_assert_int_eq(huge_place(b, PAGES, 2 * PAGES, 200, probe_fake, &f, &r), 0);
    ck_assert_uint_eq(r.far, 3);
    ck_assert_uint_eq(r.replaced, 3);
    ck_assert_uint_ge(r.extra, 3);
    ck_assert_uint_le(r.extra, 2 * PAGES);
    ck_assert_uint_eq(r.probed, PAGES + r.extra);
    ck_assert(r.near_ns == 200);
    for (int k = 0; k < PAGES; k++) {
        int t = tag(b, (size_t)k);
        if (k == 1 || k == 4 || k == 5)
            ck_assert_int_ge(t, PAGES);   /* an extra page, near */
        else
            ck_assert_int_eq(t, k);
        ck_assert(f.lat[t] == 200);
    }
    /* the block is whole: every byte of it mapped and writable */
    memset(b, 0x11, PAGES * HUGE_PAGE_BYTES);
    ck_assert_int_eq(msync(b, PAGES * HUGE_PAGE_BYTES, MS_ASYNC), 0);
    /* and the extra pages, those swapped out with them, are unmapped again */
    for (int k = PAGES; k < f.n; k++)
        ck_assert_int_ne(msync(f.page[k], HUGE_PAGE_BYTES, MS_ASYNC), 0);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);
}
END_TEST

/* Four far pages, room for two extra ones: the two slowest are swapped, two are left and
 * counted. */
START_TEST(test_with_too_few_extra_pages_the_slowest_far_ones_go_first)
{
    enum { PAGES = 6 };
    static const int far[] = {0, 2, 3, 5};   /* latencies 300, 302, 303, 305 */
    char *b = block(PAGES * HUGE_PAGE_BYTES);
    fake_probe f;
    fake_init(&f, far, 4);
    huge_place_report r;
    ck_assert_int_eq(huge_place(b, PAGES, 2, 200, probe_fake, &f, &r), 2);
    ck_assert_uint_eq(r.far, 4);
    ck_assert_uint_eq(r.replaced, 2);
    ck_assert_uint_eq(r.extra, 2);
    ck_assert_int_eq(tag(b, 0), 0);
    ck_assert_int_eq(tag(b, 2), 2);
    ck_assert_int_ge(tag(b, 3), PAGES);
    ck_assert_int_ge(tag(b, 5), PAGES);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);
}
END_TEST

/* Extra pages that are far as well are not swapped in: the far pages stay, and the extra
 * pages mapped never exceed max_extra. */
START_TEST(test_far_extra_pages_are_not_swapped_in)
{
    enum { PAGES = 4 };
    int far[MAX_PROBED - 4];
    for (int i = 0; i < MAX_PROBED - 4; i++)
        far[i] = 4 + i;   /* every page after the block */
    char *b = block(PAGES * HUGE_PAGE_BYTES);
    fake_probe f;
    fake_init(&f, far, MAX_PROBED - 4);
    f.lat[1] = 301;   /* one far page in the block */
    huge_place_report r;
    ck_assert_int_eq(huge_place(b, PAGES, 8, 200, probe_fake, &f, &r), 1);
    ck_assert_uint_eq(r.far, 1);
    ck_assert_uint_eq(r.replaced, 0);
    ck_assert_uint_eq(r.extra, 8);   /* it looked as far as it was let */
    ck_assert_uint_eq(r.probed, PAGES + r.extra);
    ck_assert_int_eq(tag(b, 1), 1);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);
}
END_TEST

/* No reference yet (ref_ns 0) and a block whose pages are all alike but slow: half the
 * block's size more is sampled, its faster pages set the reference, and the block's pages
 * are swapped for them. With a reference, a block of pages all alike is left alone. */
START_TEST(test_the_first_placement_samples_more_memory_for_its_reference)
{
    enum { PAGES = 8 };
    char *b = block(PAGES * HUGE_PAGE_BYTES);
    fake_probe f;
    fake_init(&f, NULL, 0);
    for (int k = 0; k < PAGES; k++)
        f.lat[k] = 300;   /* the block: alike, slow */
    huge_place_report r;
    huge_place(b, PAGES, 2 * PAGES, 0, probe_fake, &f, &r);
    ck_assert_uint_ge(r.extra, PAGES / 2);
    ck_assert(r.near_ns == 200);
    ck_assert_uint_eq(r.far, PAGES);
    ck_assert_uint_eq(r.replaced, PAGES);
    for (int k = 0; k < PAGES; k++)
        ck_assert_int_ge(tag(b, (size_t)k), PAGES);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);

    /* a reference lower than any page here is used: all are far by it */
    b = block(PAGES * HUGE_PAGE_BYTES);
    fake_init(&f, NULL, 0);
    for (int k = 0; k < MAX_PROBED; k++)
        f.lat[k] = 300;
    ck_assert_int_eq(huge_place(b, PAGES, 0, 200, probe_fake, &f, &r), PAGES);
    ck_assert(r.near_ns == 200);
    ck_assert_uint_eq(r.extra, 0);
    /* a higher one is not: the third fastest page here is */
    fake_init(&f, NULL, 0);
    for (int k = 0; k < MAX_PROBED; k++)
        f.lat[k] = 300;
    ck_assert_int_eq(huge_place(b, PAGES, 0, 500, probe_fake, &f, &r), 0);
    ck_assert(r.near_ns == 300);
    huge_free(b, PAGES * HUGE_PAGE_BYTES);
}
END_TEST

/* 1 when transparent huge pages are off here: huge_alloc_near then does not place. */
static int thp_never(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char line[128] = "";
    int never = f && fgets(line, sizeof line, f) && strstr(line, "[never]");
    if (f)
        fclose(f);
    return never;
}

/* The real probe, on whatever pages this machine gives: the block is as huge_alloc's
 * (aligned, zeroed to its last byte, writable, the room past it unmapped) and the counts
 * agree with each other. */
START_TEST(test_a_near_block_is_zeroed_whole_and_its_report_consistent)
{
    size_t n = 17 * HUGE_PAGE_BYTES + 12345;   /* 17 whole pages and a partial one */
    cpu_set_t before, after;
    ck_assert_int_eq(pthread_getaffinity_np(pthread_self(), sizeof before, &before), 0);
    huge_place_report r;
    unsigned char *p = huge_alloc_near(n, 1.0, &r);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t)p % HUGE_PAGE_BYTES, 0);
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            ck_abort_msg("byte %zu of the block is %d, not 0", i, p[i]);
    memset(p, 0x22, n);
    size_t page = (size_t)sysconf(_SC_PAGESIZE), end = (n + page - 1) / page * page;
    ck_assert_int_ne(msync(p + end, page, MS_ASYNC), 0);
    /* the probe pinned this thread to each CPU in turn: it has all of its own back */
    ck_assert_int_eq(pthread_getaffinity_np(pthread_self(), sizeof after, &after), 0);
    ck_assert(CPU_EQUAL(&before, &after));
    if (!thp_never()) {
        ck_assert_uint_eq(r.pages, 17);
        ck_assert(r.near_ns > 0);
        ck_assert(!r.failed);
        ck_assert(r.paused == 0);   /* duty 1: never slept */
    }
    ck_assert_uint_le(r.replaced, r.far);
    ck_assert_uint_le(r.far, r.pages);
    ck_assert_uint_le(r.extra, 4 * r.pages);
    ck_assert_uint_eq(r.probed, r.pages + r.extra);
    huge_free(p, n);
    /* under 16 pages: not placed, as huge_alloc gives it */
    ck_assert_ptr_nonnull(p = huge_alloc_near(3 * HUGE_PAGE_BYTES, 1.0, &r));
    ck_assert(p[0] == 0 && p[3 * HUGE_PAGE_BYTES - 1] == 0);
    ck_assert_uint_eq(r.pages, 0);
    ck_assert_uint_eq(r.probed, 0);
    huge_free(p, 3 * HUGE_PAGE_BYTES);
    /* placement off (--place-pages no): not placed either */
    huge_place_enable(0);
    ck_assert_ptr_nonnull(p = huge_alloc_near(17 * HUGE_PAGE_BYTES, 1.0, &r));
    huge_place_enable(1);
    ck_assert_uint_eq(r.pages, 0);
    ck_assert_uint_eq(r.probed, 0);
    ck_assert(p[0] == 0 && p[17 * HUGE_PAGE_BYTES - 1] == 0);
    huge_free(p, 17 * HUGE_PAGE_BYTES);
}
END_TEST

/* fill()'s byte i: never 0. */
static unsigned char fill_byte(size_t i)
{
    return (unsigned char)(i % 251 + 1);
}

static void fill(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = fill_byte(i);
}

/* 1 when each byte of p [from, to) is as fill(p, ...) wrote it, or zero in at most one
 * pointer-sized slot of each 4 KiB page (the probe's); from a multiple of 4 KiB. */
static int filled_but_probe_slots(const unsigned char *p, size_t from, size_t to)
{
    for (size_t pg = from; pg < to; pg += 4096) {
        size_t changed = 0;
        for (size_t i = pg; i < pg + 4096 && i < to; i++)
            if (p[i] != fill_byte(i)) {
                if (p[i] != 0)
                    return 0;
                changed++;
            }
        if (changed > sizeof(void *))
            return 0;
    }
    return 1;
}

/* 1 when p [n] is all zero. */
static int zeros(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* A block already mapped (one a cache kept) is placed where it lies, as a fresh one would
 * be: each 2 MB page keeps its contents but for the probe's zeroed slots, or is a near
 * page swapped in, zeros; with placement off, or under 16 pages, it is left alone. */
START_TEST(test_a_mapped_block_is_placed_where_it_lies_and_keeps_its_contents)
{
    size_t n = 17 * HUGE_PAGE_BYTES;
    unsigned char *p = huge_alloc(n);
    ck_assert_ptr_nonnull(p);
    fill(p, n);
    huge_place_report r;
    huge_place_near(p, n, 1.0, &r);
    if (!thp_never()) {
        ck_assert_uint_eq(r.pages, 17);
        ck_assert(r.near_ns > 0);
        ck_assert(!r.failed);
    }
    ck_assert_uint_le(r.replaced, r.far);
    ck_assert_uint_eq(r.probed, r.pages + r.extra);
    size_t swapped = 0;
    for (size_t k = 0; k < 17; k++) {
        const unsigned char *pg = p + k * HUGE_PAGE_BYTES;
        if (zeros(pg, HUGE_PAGE_BYTES))
            swapped++;
        else
            ck_assert_msg(filled_but_probe_slots(p, k * HUGE_PAGE_BYTES,
                                                 (k + 1) * HUGE_PAGE_BYTES),
                          "page %zu of the placed block is neither its own nor zeros", k);
    }
    ck_assert_uint_eq(swapped, r.replaced);
    /* the first placement of this process (a forked test) kept near control pages; a
     * later one times them beside its own and scales its latencies by theirs */
    ck_assert(r.load == 0 && r.controls == 0);
    huge_place_near(p, n, 1.0, &r);
    if (!thp_never()) {
        ck_assert_uint_eq(r.pages, 17);
        /* none when all 16 candidates read far: then nothing is scaled */
        ck_assert_int_le(r.controls, 4);
        if (r.controls)
            ck_assert_msg(r.load >= 0.5 && r.load <= 2, "control pages read %g x idle",
                          r.load);
        else
            ck_assert(r.load == 0);
    }
    fill(p, n);
    huge_place_enable(0);
    huge_place_near(p, n, 1.0, &r);
    huge_place_enable(1);
    ck_assert_uint_eq(r.pages, 0);
    for (size_t i = 0; i < n; i++)
        if (p[i] != fill_byte(i))
            ck_abort_msg("byte %zu changed with placement off", i);
    huge_place_near(p, 3 * HUGE_PAGE_BYTES, 1.0, &r);   /* under 16 pages */
    ck_assert_uint_eq(r.pages, 0);
    ck_assert(p[0] == fill_byte(0));
    huge_free(p, n);
}
END_TEST

/* A placement from another thread, for the test below. */
typedef struct {
    size_t n;
    unsigned char *p;
    huge_place_report r;
} place_job;

static void *place_thread(void *arg)
{
    place_job *j = arg;
    j->p = huge_alloc_near(j->n, 1.0, &j->r);
    return NULL;
}

/* Two placements at once (the loader thread's W' beside a --merge auto build): they run
 * one after the other, sharing the control pages, and each block comes out whole, zeroed
 * and placed. */
START_TEST(test_two_placements_at_once_both_complete)
{
    place_job j[2] = {{.n = 16 * HUGE_PAGE_BYTES}, {.n = 18 * HUGE_PAGE_BYTES}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, place_thread, &j[i]), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_ptr_nonnull(j[i].p);
        if (!thp_never()) {
            ck_assert_uint_eq(j[i].r.pages, j[i].n / HUGE_PAGE_BYTES);
            ck_assert(j[i].r.near_ns > 0);
            ck_assert(!j[i].r.failed);
        }
        ck_assert_msg(zeros(j[i].p, j[i].n), "block %d is not zeroed", i);
        huge_free(j[i].p, j[i].n);
    }
}
END_TEST

/* A placement paced to a quarter of a core (a W' built beside a decoding engine) sleeps
 * between pieces of its work; one at a whole core never does (above). */
START_TEST(test_a_paced_placement_sleeps_between_its_pieces_of_work)
{
    if (thp_never())
        return;   /* nothing placed, nothing paced */
    size_t n = 24 * HUGE_PAGE_BYTES;
    huge_place_report r;
    char *p = huge_alloc_near(n, 0.25, &r);
    ck_assert_ptr_nonnull(p);
    ck_assert(r.near_ns > 0);   /* it was placed */
    ck_assert(r.paused > 0);
    ck_assert(r.paused < r.seconds);
    huge_free(p, n);
}
END_TEST

static Suite *hugemem_suite(void)
{
    Suite *s = suite_create("hugemem");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_a_block_starts_on_a_huge_page_and_the_room_past_it_is_unmapped);
    tcase_add_test(core, test_a_block_goes_to_a_request_of_half_to_all_of_it_smallest_first);
    tcase_add_test(core, test_a_taken_block_is_writable_with_its_old_contents);
    tcase_add_test(core, test_the_oldest_blocks_go_when_the_count_or_the_bytes_are_full);
    tcase_add_test(core, test_a_cache_of_no_blocks_keeps_nothing);
    tcase_add_test(core, test_a_cache_asked_for_more_blocks_than_it_has_room_for_keeps_the_newest);
    suite_add_tcase(s, core);
    TCase *place = tcase_create("place");
    tcase_set_timeout(place, 60);
    tcase_add_test(place, test_a_block_of_near_pages_is_left_as_it_is);
    tcase_add_test(place, test_each_far_page_is_swapped_for_a_near_one_with_its_contents);
    tcase_add_test(place, test_with_too_few_extra_pages_the_slowest_far_ones_go_first);
    tcase_add_test(place, test_far_extra_pages_are_not_swapped_in);
    tcase_add_test(place, test_the_first_placement_samples_more_memory_for_its_reference);
    tcase_add_test(place, test_a_near_block_is_zeroed_whole_and_its_report_consistent);
    tcase_add_test(place, test_a_paced_placement_sleeps_between_its_pieces_of_work);
    tcase_add_test(place, test_a_mapped_block_is_placed_where_it_lies_and_keeps_its_contents);
    tcase_add_test(place, test_two_placements_at_once_both_complete);
    suite_add_tcase(s, place);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(hugemem_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
