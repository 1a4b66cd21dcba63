/* Tests for core/pool: every task runs exactly once per pool_run, on a valid thread; a
 * pool can be created, used at once and destroyed repeatedly; sleeping workers wake. */
#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pool.h"

typedef struct {
    atomic_int *hits;     /* [n] times each task ran */
    atomic_int bad_thread;
    int n_threads;
} count_ctx;

static void count_task(void *ctx, int task, int thread)
{
    count_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
    if (thread < 0 || thread >= c->n_threads)
        atomic_fetch_add(&c->bad_thread, 1);
}

static void check_run(pool *p, int n_tasks)
{
    count_ctx c = {.n_threads = pool_threads(p)};
    c.hits = calloc((size_t)(n_tasks ? n_tasks : 1), sizeof *c.hits);
    ck_assert_ptr_nonnull(c.hits);
    pool_run(p, count_task, &c, n_tasks);
    for (int t = 0; t < n_tasks; t++)
        ck_assert_msg(atomic_load(&c.hits[t]) == 1, "task %d of %d ran %d times", t, n_tasks,
                      atomic_load(&c.hits[t]));
    ck_assert_int_eq(atomic_load(&c.bad_thread), 0);
    free(c.hits);
}

START_TEST(test_every_task_runs_exactly_once)
{
    for (int nt = 1; nt <= 4; nt++) {
        lr_error err = {0};
        pool *p = pool_create(nt, &err);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(pool_threads(p), nt);
        /* 70000: more than one published job holds (65535 tasks), run in two */
        static const int sizes[] = {0, 1, 2, 3, 7, 64, 1000, 70000};
        for (int rep = 0; rep < 48; rep++)
            check_run(p, sizes[rep % 8]);
        pool_free(p);
    }
}
END_TEST

START_TEST(test_create_run_free_at_once_does_not_hang)
{
    /* A job published right after creation, possibly before the workers have started,
     * must still be run by them (pool.c starts workers at generation 0 for this; the
     * race is timing-dependent and this loop does not force it). Bounded: 300 rounds. */
    for (int i = 0; i < 300; i++) {
        pool *p = pool_create(8, NULL);
        ck_assert_ptr_nonnull(p);
        check_run(p, 16);
        pool_free(p);
    }
}
END_TEST

START_TEST(test_workers_sleep_and_wake)
{
    /* Runs spaced out enough that workers go to sleep on the condvar between them. */
    pool *p = pool_create(2, NULL);
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < 20; i++) {
        struct timespec ts = {0, 2000000};  /* 2 ms */
        nanosleep(&ts, NULL);
        check_run(p, 8);
    }
    pool_free(p);
}
END_TEST

START_TEST(test_back_to_back_runs_never_run_a_task_twice)
{
    /* The owner completes a job by itself when a worker is late, then publishes the next
     * one at once: a worker still holding the old generation must claim nothing of the
     * new job through a stale index (claims carry the generation). Tiny jobs back to back
     * make that window as likely as this machine allows. Bounded: 20000 runs. */
    for (int nt = 2; nt <= 3; nt++) {
        pool *p = pool_create(nt, NULL);
        ck_assert_ptr_nonnull(p);
        for (int i = 0; i < 10000; i++)
            check_run(p, 1 + i % 5);
        pool_free(p);
    }
}
END_TEST

START_TEST(test_bad_thread_count_is_refused)
{
    lr_error err = {0};
    ck_assert_ptr_null(pool_create(0, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    pool_free(NULL);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_every_task_runs_exactly_once);
    tcase_add_test(core, test_create_run_free_at_once_does_not_hang);
    tcase_add_test(core, test_workers_sleep_and_wake);
    tcase_add_test(core, test_back_to_back_runs_never_run_a_task_twice);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_test(limits, test_bad_thread_count_is_refused);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pool_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
