/* Tests for core/hugemem's huge_cache, as hugemem.h describes it: a freed block is handed
 * to the next request of half to all of its size (the smallest such block), the oldest
 * blocks go first when the count or the bytes are full, a block over the byte limit is
 * never kept, a taken block is writable whatever its protection when it was put, and drain
 * empties the cache. Blocks are told apart by their address while the cache holds them
 * (a kept block is still mapped, so no other mapping can have its address). lora's arena
 * cache is one of these (tests/test_lora.c); variant's W' cache another
 * (tests/test_variant.c). */
#include <check.h>
#include <stdint.h>
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
