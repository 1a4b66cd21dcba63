/* Tests for core/lora: the (layer, projection) table, and the arena as lora.h describes
 * it — allocations 64-byte aligned, laid out in the order they were made, malloc once the
 * arena is full; a freed set's arena kept for a later set that asks for n floats when it
 * holds n .. 2n of them, at most 8 arenas and 256 MiB. Whether an arena was reused is seen
 * by a mark written into it before its set was freed (a fresh mapping is zeros, whatever
 * its address). The arena cache is process-wide: every test runs in its own fork
 * (libcheck's default), so each starts with an empty cache. LeakSanitizer (`make asan`)
 * checks that lora_weights_free frees what came from malloc and nothing else. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/lora.h"

#define MARK 1234.5f

static int aligned64(const void *p)
{
    return (uintptr_t)p % 64 == 0;
}

static int in_arena(const lora_weights *w, const float *p, size_t n)
{
    return w->arena && p >= w->arena && p + n <= w->arena + w->arena_cap;
}

/* A set with an arena of n floats, the mark at its first and last float, then freed:
 * the arena goes to the cache (or is unmapped). Returns its address, for comparison. */
static const float *leave_arena(size_t n)
{
    lora_weights *w = lora_weights_new(1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(lora_weights_reserve(w, n), 0);
    ck_assert_ptr_nonnull(w->arena);
    ck_assert_uint_ge(w->arena_cap, n);
    w->arena[0] = MARK;
    w->arena[n - 1] = MARK;
    const float *p = w->arena;
    lora_weights_free(w);
    return p;
}

/* Reserves n floats in a new set; *reused says whether its arena is a marked one. */
static lora_weights *take_arena(size_t n, int *reused)
{
    lora_weights *w = lora_weights_new(1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(lora_weights_reserve(w, n), 0);
    ck_assert_ptr_nonnull(w->arena);
    ck_assert_uint_ge(w->arena_cap, n);
    ck_assert_uint_eq(w->arena_used, 0);
    ck_assert_msg(w->arena[0] == MARK || w->arena[0] == 0.0f, "arena[0] = %g: neither a "
                  "marked arena nor a fresh mapping", w->arena[0]);
    *reused = w->arena[0] == MARK;
    return w;
}

/* ================================ core ================================ */

START_TEST(test_new_set_is_empty_and_entries_are_indexed_layer_major)
{
    lora_weights *w = lora_weights_new(3);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(w->n_layers, 3);
    ck_assert_uint_eq(w->bytes, 0);
    ck_assert_int_eq(w->max_rank, 0);
    ck_assert_ptr_null(w->arena);
    for (int l = 0; l < 3; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            lora_matrix *m = lora_weights_at(w, l, (model_proj)p);
            ck_assert_ptr_eq(m, &w->m[l * PROJ_COUNT + p]);
            ck_assert_ptr_eq(lora_weights_get(w, l, (model_proj)p), m);
            ck_assert_int_eq(m->r, 0);
            ck_assert_ptr_null(m->a);
            ck_assert_ptr_null(m->bt);
        }
    lora_weights_free(w);
    lora_weights_free(NULL);
    w = lora_weights_new(0);   /* a set without layers is still a set */
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(w->m);
    lora_weights_free(w);
}
END_TEST

START_TEST(test_arena_allocations_are_aligned_in_order_then_malloc)
{
    /* sizes of A's and Bᵀ's of odd ranks: r·in and r·out not multiples of 16 */
    static const size_t sizes[] = {3 * 16, 3 * 24, 5 * 7, 1, 17, 64, 2 * 13};
    enum { N = sizeof sizes / sizeof sizes[0] };
    size_t total = 0;
    for (int k = 0; k < N; k++)
        total += (sizes[k] + 15) / 16 * 16;   /* each rounded up to 64 bytes */
    lora_weights *w = lora_weights_new(2);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(lora_weights_reserve(w, total), 0);
    float *p[N + 2];
    for (int k = 0; k < N; k++) {
        p[k] = lora_weights_alloc(w, sizes[k]);
        ck_assert_ptr_nonnull(p[k]);
        ck_assert_msg(aligned64(p[k]), "allocation %d at %p", k, (void *)p[k]);
        ck_assert_msg(in_arena(w, p[k], sizes[k]), "allocation %d of %zu floats is outside the "
                      "arena of %zu", k, sizes[k], w->arena_cap);
        if (k == 0)
            ck_assert_ptr_eq(p[0], w->arena);
        else   /* right after the previous one: one sequential stream, gaps < 64 bytes */
            ck_assert_msg(p[k] >= p[k - 1] + sizes[k - 1] && p[k] < p[k - 1] + sizes[k - 1] + 16,
                          "allocation %d at +%td floats, the previous one ends at +%td", k,
                          p[k] - w->arena, p[k - 1] + sizes[k - 1] - w->arena);
        for (size_t i = 0; i < sizes[k]; i++)
            p[k][i] = (float)k;   /* every float is usable, and nothing overlaps (below) */
    }
    ck_assert_uint_le(w->arena_used, w->arena_cap);
    /* the arena is full: more comes from malloc, still aligned, still owned by w */
    p[N] = lora_weights_alloc(w, 40);
    p[N + 1] = lora_weights_alloc(w, 1);
    for (int k = N; k < N + 2; k++) {
        ck_assert_ptr_nonnull(p[k]);
        ck_assert(aligned64(p[k]));
        ck_assert_msg(!in_arena(w, p[k], 1), "allocation %d came from a full arena", k);
    }
    for (int k = 0; k < N; k++)
        for (size_t i = 0; i < sizes[k]; i++)
            ck_assert_msg(p[k][i] == (float)k, "allocation %d was overwritten at %zu", k, i);
    /* the set owns them all: malloc'd ones freed, the arena cached (LeakSanitizer) */
    lora_weights_at(w, 1, PROJ_DOWN)->a = p[N];
    lora_weights_at(w, 1, PROJ_DOWN)->bt = p[N + 1];
    lora_weights_at(w, 0, PROJ_Q)->a = p[0];
    lora_weights_at(w, 0, PROJ_Q)->bt = p[1];
    lora_weights_free(w);
}
END_TEST

START_TEST(test_without_an_arena_allocations_come_from_malloc_aligned)
{
    lora_weights *w = lora_weights_new(1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(lora_weights_reserve(w, 0), 0);   /* nothing to reserve */
    ck_assert_ptr_null(w->arena);
    for (int p = 0; p < PROJ_COUNT; p++) {
        lora_matrix *m = lora_weights_at(w, 0, (model_proj)p);
        m->a = lora_weights_alloc(w, (size_t)(3 + p));
        m->bt = lora_weights_alloc(w, (size_t)(5 * p + 1));
        ck_assert(m->a && m->bt && aligned64(m->a) && aligned64(m->bt));
        m->a[2 + p] = 1.0f;
        m->bt[5 * p] = 2.0f;
    }
    lora_weights_free(w);
}
END_TEST

START_TEST(test_freed_arena_is_reused_for_a_request_of_half_to_all_of_it)
{
    enum { CAP = 40000 };
    int reused;
    /* the same size */
    const float *old = leave_arena(CAP);
    lora_weights *w = take_arena(CAP, &reused);
    ck_assert_msg(reused && w->arena == old, "an arena of %d floats was freed, then %d were "
                  "reserved: not reused", CAP, CAP);
    ck_assert_uint_eq(w->arena_cap, CAP);   /* its whole size is usable */
    /* taken from the cache: the next set of that size gets fresh memory */
    int again;
    lora_weights *w2 = take_arena(CAP, &again);
    ck_assert_msg(!again, "one cached arena was handed out twice");
    lora_weights_free(w);    /* cached again, still marked */
    /* half of it: reused */
    lora_weights *h = take_arena(CAP / 2, &reused);
    ck_assert_msg(reused, "%d floats cached, %d reserved: not reused", CAP, CAP / 2);
    lora_weights_free(h);
    lora_weights_free(w2);
}
END_TEST

START_TEST(test_freed_arena_is_not_given_to_a_request_too_small_or_too_large)
{
    enum { CAP = 30000 };
    int reused;
    leave_arena(CAP);
    lora_weights *small = take_arena(CAP / 2 - 1, &reused);   /* it would waste over half */
    ck_assert_msg(!reused, "%d floats cached went to a request of %d", CAP, CAP / 2 - 1);
    lora_weights *large = take_arena(CAP + 1, &reused);       /* it would not fit */
    ck_assert_msg(!reused, "%d floats cached went to a request of %d", CAP, CAP + 1);
    lora_weights *exact = take_arena(CAP, &reused);           /* still there */
    ck_assert_msg(reused, "the cached arena was lost");
    lora_weights_free(small);
    lora_weights_free(large);
    lora_weights_free(exact);
}
END_TEST

START_TEST(test_at_most_eight_arenas_are_kept)
{
    enum { CAP = 20000, N = 10 };
    lora_weights *held[N];
    /* ten sets hold ten arenas at once, then all are freed, each marked */
    for (int i = 0; i < N; i++) {
        held[i] = lora_weights_new(1);
        ck_assert_ptr_nonnull(held[i]);
        ck_assert_int_eq(lora_weights_reserve(held[i], CAP), 0);
        held[i]->arena[0] = MARK;
    }
    for (int i = 0; i < N; i++)
        lora_weights_free(held[i]);
    int n_reused = 0;
    for (int i = 0; i < N; i++) {
        int reused;
        held[i] = take_arena(CAP, &reused);
        n_reused += reused;
    }
    ck_assert_int_eq(n_reused, 8);
    for (int i = 0; i < N; i++)
        lora_weights_free(held[i]);
}
END_TEST

START_TEST(test_an_arena_over_256_mib_is_not_kept)
{
    /* mapped, not touched beyond the two marked pages */
    size_t big = ((size_t)256 << 20) / sizeof(float) + 16;
    leave_arena(big);
    int reused;
    lora_weights *w = take_arena(big, &reused);
    ck_assert_msg(!reused, "an arena of 256 MiB + 64 bytes was kept");
    lora_weights_free(w);
}
END_TEST

static Suite *lora_suite(void)
{
    Suite *s = suite_create("lora");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_new_set_is_empty_and_entries_are_indexed_layer_major);
    tcase_add_test(core, test_arena_allocations_are_aligned_in_order_then_malloc);
    tcase_add_test(core, test_without_an_arena_allocations_come_from_malloc_aligned);
    tcase_add_test(core, test_freed_arena_is_reused_for_a_request_of_half_to_all_of_it);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_test(limits, test_freed_arena_is_not_given_to_a_request_too_small_or_too_large);
    tcase_add_test(limits, test_at_most_eight_arenas_are_kept);
    tcase_add_test(limits, test_an_arena_over_256_mib_is_not_kept);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lora_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
