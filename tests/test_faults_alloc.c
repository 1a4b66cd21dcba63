/* Allocation failure at every allocation (issue 13): the binary is linked with
 * -Wl,--wrap for malloc, calloc, realloc, posix_memalign, aligned_alloc and mmap (see the
 * Makefile), so every allocation lorad's own code makes goes through the counters below.
 * For an operation that makes N allocations, the test runs it N times, failing the k-th
 * allocation in run k: each run must end in a clean error (or succeed, where a failure
 * has a fallback), the module must work normally right after, and nothing may leak —
 * the ASan/UBSan build (LeakSanitizer) of `make test` checks that at each test's exit.
 * Operations: loading an adapter (peft_load), a request through the engine (submit, KV
 * cache, sampler, scratch), an adapter load through the registry's loader thread, and a
 * Q8 product whose activations need heap scratch. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "adapters/peft.h"
#include "adapters/registry.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/smallmm.h"
#include "core/wtensor.h"
#include "tests/testutil.h"

/* ---- the allocator hook ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t a, size_t n);
int __wrap_posix_memalign(void **p, size_t a, size_t n);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);

static atomic_int armed;      /* counting on */
static atomic_long counted;   /* allocations since arming */
static atomic_long fail_at;   /* 1-based index of the allocation to fail; 0: none */

/* 1 if this allocation is the one to fail. */
static int hit(void)
{
    if (!atomic_load(&armed))
        return 0;
    long k = atomic_fetch_add(&counted, 1) + 1;
    return k == atomic_load(&fail_at);
}

void *__wrap_malloc(size_t n) { return hit() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t m) { return hit() ? NULL : __real_calloc(n, m); }
void *__wrap_realloc(void *p, size_t n) { return hit() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t a, size_t n) { return hit() ? NULL : __real_aligned_alloc(a, n); }
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    return hit() ? ENOMEM : __real_posix_memalign(p, a, n);
}
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    /* only anonymous mappings are allocations; a file mapping failing is another test */
    if ((flags & MAP_ANONYMOUS) && hit()) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return __real_mmap(addr, len, prot, flags, fd, off);
}

static void arm(long k)
{
    atomic_store(&counted, 0);
    atomic_store(&fail_at, k);
    atomic_store(&armed, 1);
}

static long disarm(void)
{
    atomic_store(&armed, 0);
    return atomic_load(&counted);
}

/* ---- fixtures ---- */

static struct {
    char *model_dir, *adapter_dir, *store;
    model *m;
} g;

static void setup(void)
{
    lr_error err = {0};
    g.model_dir = testutil_mkdtemp("faults_model");
    testutil_write_tiny_model(g.model_dir);
    g.m = model_load(g.model_dir, &err);
    ck_assert_msg(g.m != NULL, "model_load: %s", err.msg);
    g.adapter_dir = testutil_mkdtemp("faults_adapter");
    testutil_write_tiny_adapter(g.adapter_dir, 4, 8.0, 0x7fu, 99, 0, "test/faults");
    g.store = testutil_mkdtemp("faults_store");
    char sub[600];
    snprintf(sub, sizeof sub, "%s/ad", g.store);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    testutil_write_tiny_adapter(sub, 4, 8.0, 0x7fu, 99, 0, "test/faults");
}

static void teardown(void)
{
    model_free(g.m);
    testutil_rmdir(g.model_dir);
    testutil_rmdir(g.adapter_dir);
    testutil_rmdir(g.store);
    memset(&g, 0, sizeof g);
}

/* ---- operations ---- */

START_TEST(test_adapter_load_fails_cleanly_at_every_allocation)
{
    lr_error err = {0};
    arm(0);
    peft_adapter *ok = peft_load(g.adapter_dir, &g.m->cfg, NULL, &err);
    long n = disarm();
    ck_assert_msg(ok != NULL, "peft_load: %s", err.msg);
    peft_free(ok);
    ck_assert_int_gt(n, 3);
    for (long k = 1; k <= n; k++) {
        memset(&err, 0, sizeof err);
        arm(k);
        peft_adapter *a = peft_load(g.adapter_dir, &g.m->cfg, NULL, &err);
        disarm();
        if (a) {
            peft_free(a);   /* this allocation had a fallback */
            continue;
        }
        ck_assert_msg(err.code != 0 && err.msg[0], "allocation %ld of %ld failed: NULL "
                      "without an error", k, n);
    }
    /* and loads normally afterwards */
    peft_adapter *again = peft_load(g.adapter_dir, &g.m->cfg, NULL, &err);
    ck_assert_msg(again != NULL, "peft_load after the faults: %s", err.msg);
    peft_free(again);
}
END_TEST

typedef struct {
    int tokens, done;
    engine_finish reason;
    char msg[256];
} outcome;

static int on_token(void *user, const engine_token *t)
{
    (void)t;
    ((outcome *)user)->tokens++;
    return 0;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    outcome *o = user;
    o->done++;
    o->reason = reason;
    if (err)
        snprintf(o->msg, sizeof o->msg, "%s", err->msg);
}

/* One request of 6 tokens through a fresh engine; returns 0 when it was accepted (o
 * filled once it finished), or the engine_submit error. Faults are armed around submit
 * and the steps only, not around the engine's own creation. */
static int run_request(long fail, outcome *o, long *allocs)
{
    lr_error err = {0};
    engine_options eo = engine_options_default();
    engine *e = engine_create(g.m, &eo, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    static const int prompt[] = {5, 9, 13, 17};
    engine_request req = {.prompt = prompt, .n_prompt = 4, .max_tokens = 6,
                          .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1,
                          .logprobs = 3, .on_token = on_token, .on_done = on_done, .user = o};
    memset(o, 0, sizeof *o);
    arm(fail);
    int rc = engine_submit(e, &req, NULL, &err);
    for (int i = 0; rc == 0 && i < 100 && engine_running(e) > 0; i++)
        engine_step(e, &err);
    *allocs = disarm();
    engine_destroy(e);
    return rc;
}

START_TEST(test_request_fails_cleanly_at_every_allocation_and_the_engine_goes_on)
{
    outcome o;
    long n;
    ck_assert_int_eq(run_request(0, &o, &n), 0);
    ck_assert_int_eq(o.reason, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(o.tokens, 6);
    ck_assert_int_gt(n, 0);
    for (long k = 1; k <= n; k++) {
        long m;
        int rc = run_request(k, &o, &m);
        if (rc != 0) {
            ck_assert_msg(rc == LR_ENOMEM, "allocation %ld of %ld: submit failed with %d, not "
                          "LR_ENOMEM", k, n, rc);
            ck_assert_int_eq(o.done, 0);
            continue;
        }
        ck_assert_msg(o.done == 1, "allocation %ld of %ld: on_done called %d times", k, n,
                      o.done);
        ck_assert_msg(o.reason == ENGINE_FINISH_LENGTH || o.reason == ENGINE_FINISH_ERROR,
                      "allocation %ld: finish %d", k, o.reason);
        if (o.reason == ENGINE_FINISH_ERROR)
            ck_assert_msg(o.msg[0], "allocation %ld: an error without a message", k);
    }
}
END_TEST

START_TEST(test_registry_load_fails_cleanly_at_every_allocation_and_retries)
{
    registry_options ro = registry_options_default();
    ro.dir = g.store;
    lr_error err = {0};
    registry *r = registry_create(g.m, &ro, &err);
    ck_assert_msg(r != NULL, "registry_create: %s", err.msg);
    /* count one load (the adapter is then unloaded by a rescan after a touch: simpler to
     * use fresh registries) */
    registry_destroy(r);
    long n = 0;
    {
        r = registry_create(g.m, &ro, &err);
        arm(0);
        registry_adapter *a = registry_acquire(r, "ad", &err);
        n = disarm();
        ck_assert_msg(a != NULL, "registry_acquire: %s", err.msg);
        registry_release(r, a, 0);
        registry_destroy(r);
    }
    ck_assert_int_gt(n, 3);
    for (long k = 1; k <= n; k++) {
        r = registry_create(g.m, &ro, &err);
        ck_assert_ptr_nonnull(r);
        memset(&err, 0, sizeof err);
        arm(k);
        registry_adapter *a = registry_acquire(r, "ad", &err);
        disarm();
        if (!a)
            ck_assert_msg(err.msg[0], "allocation %ld of %ld: no message", k, n);
        else
            registry_release(r, a, 0);
        /* a failed allocation is not a verdict on the adapter: the next acquire loads it */
        registry_adapter *b = registry_acquire(r, "ad", &err);
        ck_assert_msg(b != NULL, "allocation %ld of %ld failed once; the adapter stays "
                      "refused: %s", k, n, err.msg);
        registry_release(r, b, 0);
        registry_destroy(r);
    }
}
END_TEST

/* A Q8 product of 40 rows of X by 300 inputs needs 40 × 320 floats of zero-padded
 * activations, more than smallmm keeps on its stack: when that scratch cannot be had the
 * product is computed by the plain loop over the panels, and the same product right after
 * (the allocation succeeding) by the kernels; both equal the float64 reference. */
START_TEST(test_q8_product_without_memory_for_its_activations)
{
    enum { ROWS = 40, IN = 300, N = 40 };
    float *w = malloc(sizeof(float) * ROWS * IN), *deq = malloc(sizeof(float) * ROWS * IN);
    float *x = malloc(sizeof(float) * N * IN), *y = malloc(sizeof(float) * N * ROWS);
    void *arena = aligned_alloc(64, wtensor_arena_bytes(WT_Q8, ROWS, IN));
    ck_assert(w && deq && x && y && arena);
    for (int i = 0; i < ROWS * IN; i++)
        w[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    for (int i = 0; i < N * IN; i++)
        x[i] = (float)((i * 104729) % 1999 - 999) / 999.0f;
    wtensor q = wtensor_at(WT_Q8, ROWS, IN, arena);
    wtensor_from_f32(WT_Q8, w, ROWS, IN, (void *)q.data, (float *)q.scale);
    wtensor_rows_f32(&q, IN, 0, ROWS, deq);
    smallmm_xmt jb = {x, N, q, ROWS, y, ROWS};
    for (int run = 0; run < 2; run++) {
        memset(y, 0, sizeof(float) * N * ROWS);
        if (run == 0)
            arm(1);
        smallmm_xmt_run(NULL, IN, &jb, 1);
        long made = disarm();
        if (run == 0)
            ck_assert_int_ge(made, 1);   /* the scratch was asked for, and refused */
        for (int i = 0; i < N; i++)
            for (int r = 0; r < ROWS; r++) {
                double want = 0, mag = 0;
                for (int e = 0; e < IN; e++) {
                    want += (double)x[i * IN + e] * deq[r * IN + e];
                    mag += fabs((double)x[i * IN + e] * deq[r * IN + e]);
                }
                ck_assert_msg(fabs(y[i * ROWS + r] - want) <= 1e-5 * (1 + mag),
                              "run %d: Y[%d][%d] = %.7g, reference %.7g", run, i, r,
                              (double)y[i * ROWS + r], want);
            }
    }
    free(w);
    free(deq);
    free(x);
    free(y);
    free(arena);
}
END_TEST

static Suite *faults_suite(void)
{
    Suite *s = suite_create("faults_alloc");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_adapter_load_fails_cleanly_at_every_allocation);
    tcase_add_test(tc, test_request_fails_cleanly_at_every_allocation_and_the_engine_goes_on);
    tcase_add_test(tc, test_registry_load_fails_cleanly_at_every_allocation_and_retries);
    tcase_add_test(tc, test_q8_product_without_memory_for_its_activations);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(faults_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
