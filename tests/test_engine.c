/* Tests for core/engine (with core/forward, core/variant, core/kv_cache and adapters/peft
 * underneath): a small random Llama model and two random PEFT adapters written here.
 * The references are the same requests run alone in a fresh engine: a request's tokens
 * and logprobs must not depend on what else shares its batch, on prefill chunking, or on
 * whether its adapter is merged or applied on the fly. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "core/engine.h"
#include "core/kv_cache.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/variant.h"
#include "tests/testutil.h"

/* The tiny model of tests/testutil.h. */
enum { HIDDEN = TINY_HIDDEN, INTER = TINY_INTER, LAYERS = TINY_LAYERS, HEADS = TINY_HEADS,
       KV_HEADS = TINY_KV_HEADS, HEAD_DIM = TINY_HEAD_DIM, VOCAB = TINY_VOCAB, CTX = TINY_CTX,
       EOS = TINY_EOS };

static void write_adapter(const char *dir, int r, double alpha, unsigned mask, uint32_t seed)
{
    testutil_write_tiny_adapter(dir, r, alpha, mask, seed, 0, "test/engine-tiny");
}

/* ---- shared fixture: model, two adapters, their mixes and merged variants ---- */

static struct {
    char *dir, *ad1, *ad2;
    model *m;
    peft_adapter *a1, *a2;
    variant_mix mix1, mix2, mix12;   /* adapter 1; adapter 2; 0.6·adapter 1 + 0.8·adapter 2 */
    variant *merged1, *merged2;
} g;

static void fixture_setup(void)
{
    lr_error err = {0};
    g.dir = testutil_mkdtemp("engine_test");
    testutil_write_tiny_model(g.dir);
    g.m = model_load(g.dir, &err);
    ck_assert_msg(g.m != NULL, "model_load: %s", err.msg);
    g.ad1 = testutil_mkdtemp("engine_test");
    write_adapter(g.ad1, 4, 8.0, 0x7fu, 777);               /* all seven, s = 2 */
    g.ad2 = testutil_mkdtemp("engine_test");
    write_adapter(g.ad2, 2, 4.0, 0x1u | 0x4u | 0x20u | 0x40u, 999);  /* q, v, up, down */
    g.a1 = peft_load(g.ad1, &g.m->cfg, NULL, &err);
    ck_assert_msg(g.a1 != NULL, "peft_load 1: %s", err.msg);
    g.a2 = peft_load(g.ad2, &g.m->cfg, NULL, &err);
    ck_assert_msg(g.a2 != NULL, "peft_load 2: %s", err.msg);
    g.mix1 = (variant_mix){.n = 1, .t = {{g.a1->w, 1.0f}}};
    g.mix2 = (variant_mix){.n = 1, .t = {{g.a2->w, 1.0f}}};
    g.mix12 = (variant_mix){.n = 2, .t = {{g.a1->w, 0.6f}, {g.a2->w, 0.8f}}};
    g.merged1 = variant_merge(g.m, &g.mix1, &err);
    ck_assert_msg(g.merged1 != NULL, "variant_merge 1: %s", err.msg);
    g.merged2 = variant_merge(g.m, &g.mix2, &err);
    ck_assert_msg(g.merged2 != NULL, "variant_merge 2: %s", err.msg);
}

static void fixture_teardown(void)
{
    variant_free(g.merged1);
    variant_free(g.merged2);
    peft_free(g.a1);
    peft_free(g.a2);
    model_free(g.m);
    testutil_rmdir(g.dir);
    testutil_rmdir(g.ad1);
    testutil_rmdir(g.ad2);
    memset(&g, 0, sizeof g);
}

/* ---- requests and what comes back ---- */

#define MAXTOK 80
#define NTOP 5

typedef struct {
    int n;
    int ids[MAXTOK];
    float lp[MAXTOK];
    int n_top[MAXTOK];
    int top_ids[MAXTOK][ENGINE_MAX_LOGPROBS];
    float top_lp[MAXTOK][ENGINE_MAX_LOGPROBS];
    int done_calls;
    int tokens_after_done;
    engine_finish reason;
    int stop_after;          /* on_token returns 1 at this many tokens (0: never) */
} collector;

static int on_token(void *user, const engine_token *t)
{
    collector *c = user;
    if (c->done_calls)
        c->tokens_after_done++;
    if (c->n < MAXTOK) {
        c->ids[c->n] = t->id;
        c->lp[c->n] = t->logprob;
        c->n_top[c->n] = t->n_top;
        for (int i = 0; i < t->n_top && i < ENGINE_MAX_LOGPROBS; i++) {
            c->top_ids[c->n][i] = t->top_ids[i];
            c->top_lp[c->n][i] = t->top_logprobs[i];
        }
    }
    c->n++;
    return c->stop_after && c->n == c->stop_after;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    collector *c = user;
    (void)err;
    c->done_calls++;
    c->reason = reason;
}

typedef struct {
    int prompt[CTX + 8];
    int n_prompt;
    int max_tokens;
    int logprobs;
    int no_logprob;
    int ignore_eos;
    sampler_params sp;
    const variant *merged;
    const variant_mix *lora;
    int merged_alone;
} job;

/* A greedy job on a random prompt of length n (ids in [3, VOCAB)). */
static job make_job(int n, uint32_t seed, int max_tokens)
{
    job j;
    memset(&j, 0, sizeof j);
    for (int i = 0; i < n; i++)
        j.prompt[i] = 3 + (int)((testutil_rnd(&seed) + 1.0f) * 0.5f * (VOCAB - 3)) % (VOCAB - 3);
    j.n_prompt = n;
    j.max_tokens = max_tokens;
    j.logprobs = NTOP;
    j.ignore_eos = 1;
    j.sp.temperature = 0.0f;
    j.sp.top_p = 1.0f;
    return j;
}

static engine_request make_request(const job *j, collector *c)
{
    engine_request r;
    memset(&r, 0, sizeof r);
    r.prompt = j->prompt;
    r.n_prompt = j->n_prompt;
    r.max_tokens = j->max_tokens;
    r.sampling = j->sp;
    r.logprobs = j->logprobs;
    r.no_logprob = j->no_logprob;
    r.ignore_eos = j->ignore_eos;
    r.merged = j->merged;
    r.lora = j->lora;
    r.merged_alone = j->merged_alone;
    r.on_token = on_token;
    r.on_done = on_done;
    r.user = c;
    return r;
}

static engine *new_engine(const model *m, int max_seqs, int max_batch_rows)
{
    engine_options o = engine_options_default();
    if (max_seqs)
        o.max_seqs = max_seqs;
    if (max_batch_rows)
        o.max_batch_rows = max_batch_rows;
    lr_error err = {0};
    engine *e = engine_create(m, &o, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    return e;
}

static void submit_ok(engine *e, const job *j, collector *c)
{
    engine_request r = make_request(j, c);
    lr_error err = {0};
    int rc = engine_submit(e, &r, NULL, &err);
    ck_assert_msg(rc == 0, "engine_submit: %s", err.msg);
}

static void run_to_end(engine *e)
{
    lr_error err = {0};
    for (int steps = 0; engine_running(e) > 0; steps++) {
        ck_assert_msg(steps < 2000, "engine did not finish");
        int rc = engine_step(e, &err);
        ck_assert_msg(rc >= 0, "engine_step: %s", err.msg);
    }
}

/* The job alone in a fresh engine over model m. */
static void run_alone(const model *m, const job *j, collector *c)
{
    memset(c, 0, sizeof *c);
    engine *e = new_engine(m, 0, 0);
    submit_ok(e, j, c);
    run_to_end(e);
    engine_destroy(e);
    ck_assert_int_eq(c->done_calls, 1);
}

/* Jobs in one engine; job i is submitted before step at_step[i] (NULL: all at once). */
static void run_together(const job *jobs, int n, const int *at_step, int max_seqs,
                         int max_batch_rows, collector *cs)
{
    engine *e = new_engine(g.m, max_seqs, max_batch_rows);
    memset(cs, 0, sizeof *cs * (size_t)n);
    int submitted = 0;
    lr_error err = {0};
    for (int step = 0; submitted < n || engine_running(e) > 0; step++) {
        ck_assert_msg(step < 2000, "engine did not finish");
        for (int i = 0; i < n; i++)
            if ((at_step ? at_step[i] : 0) == step) {
                submit_ok(e, &jobs[i], &cs[i]);
                submitted++;
            }
        int rc = engine_step(e, &err);
        ck_assert_msg(rc >= 0, "engine_step: %s", err.msg);
    }
    engine_destroy(e);
}

/* Same tokens, same finish, logprobs (chosen and top-k) within tol. */
static void assert_same(const collector *a, const collector *b, float tol, const char *what)
{
    ck_assert_msg(a->n == b->n, "%s: %d tokens vs %d", what, a->n, b->n);
    ck_assert_msg(a->reason == b->reason, "%s: finish %d vs %d", what, a->reason, b->reason);
    ck_assert_msg(a->done_calls == 1 && b->done_calls == 1, "%s: on_done called %d / %d times",
                  what, a->done_calls, b->done_calls);
    for (int i = 0; i < a->n && i < MAXTOK; i++) {
        ck_assert_msg(a->ids[i] == b->ids[i], "%s: token %d is %d vs %d", what, i, a->ids[i],
                      b->ids[i]);
        ck_assert_msg(fabsf(a->lp[i] - b->lp[i]) <= tol, "%s: logprob %d is %.7f vs %.7f", what,
                      i, (double)a->lp[i], (double)b->lp[i]);
        ck_assert_int_eq(a->n_top[i], b->n_top[i]);
        for (int k = 0; k < a->n_top[i]; k++) {
            ck_assert_msg(a->top_ids[i][k] == b->top_ids[i][k], "%s: token %d top %d is %d vs "
                          "%d", what, i, k, a->top_ids[i][k], b->top_ids[i][k]);
            ck_assert_msg(fabsf(a->top_lp[i][k] - b->top_lp[i][k]) <= tol, "%s: token %d top %d "
                          "logprob %.7f vs %.7f", what, i, k, (double)a->top_lp[i][k],
                          (double)b->top_lp[i][k]);
        }
    }
}

/* Largest logprob difference over the tokens both produced (to show adapters matter). */
static float max_lp_diff(const collector *a, const collector *b)
{
    float d = 0;
    for (int i = 0; i < a->n && i < b->n && i < MAXTOK; i++)
        if (fabsf(a->lp[i] - b->lp[i]) > d)
            d = fabsf(a->lp[i] - b->lp[i]);
    for (int i = 0; i < a->n && i < b->n && i < MAXTOK; i++)
        if (a->ids[i] != b->ids[i])
            return INFINITY;
    return d;
}

/* FNV-1a over every byte of every base weight, through the model's own pointers. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t weights_checksum(const model *m)
{
    uint64_t h = 1469598103934665603ull;
    h = fnv(h, m->embed.data, sizeof(float) * VOCAB * HIDDEN);
    h = fnv(h, m->lm_head.data, sizeof(float) * VOCAB * HIDDEN);
    h = fnv(h, m->norm, sizeof(float) * HIDDEN);
    for (int l = 0; l < LAYERS; l++) {
        h = fnv(h, m->layers[l].attn_norm, sizeof(float) * HIDDEN);
        h = fnv(h, m->layers[l].ffn_norm, sizeof(float) * HIDDEN);
        for (int p = 0; p < 7; p++)
            h = fnv(h, m->layers[l].w[p].data,
                    sizeof(float) * tiny_proj_out[p] * tiny_proj_in[p]);
    }
    return h;
}

/* ================================ core ================================ */

/* A base, B adapter 1 on the fly, C adapter 2 merged, D both on the fly, E adapter 1 on
 * the fly on a longer prompt. */
enum { NJOBS = 5 };

static void batch_jobs(job *j)
{
    j[0] = make_job(5, 11, 10);
    j[1] = make_job(7, 22, 10);
    j[1].lora = &g.mix1;
    j[2] = make_job(9, 33, 10);
    j[2].merged = g.merged2;
    j[3] = make_job(6, 44, 10);
    j[3].lora = &g.mix12;
    j[4] = make_job(13, 55, 10);
    j[4].lora = &g.mix1;
}

static const char *const job_name[NJOBS] = {"A (base)", "B (adapter 1 on the fly)",
                                            "C (adapter 2 merged)", "D (mix on the fly)",
                                            "E (adapter 1, longer prompt)"};

START_TEST(test_adapters_change_the_output_so_batch_tests_mean_something)
{
    job j[NJOBS];
    batch_jobs(j);
    collector base, with;
    /* same prompt, base vs each variant */
    for (int i = 1; i < 4; i++) {
        job b = j[i];
        b.merged = NULL;
        b.lora = NULL;
        run_alone(g.m, &b, &base);
        run_alone(g.m, &j[i], &with);
        ck_assert_msg(max_lp_diff(&base, &with) > 1e-2f, "%s: adapter has no visible effect",
                      job_name[i]);
    }
}
END_TEST

START_TEST(test_batch_invariance_mixed_variants_prefill_and_decode_in_one_step)
{
    job j[NJOBS];
    batch_jobs(j);
    collector alone[NJOBS], together[NJOBS];
    for (int i = 0; i < NJOBS; i++)
        run_alone(g.m, &j[i], &alone[i]);
    /* A-D start together; E arrives at step 2, so its prefill shares steps with the
     * others' decode rows. */
    const int at[NJOBS] = {0, 0, 0, 0, 2};
    run_together(j, NJOBS, at, 8, 0, together);
    for (int i = 0; i < NJOBS; i++) {
        ck_assert_int_eq(alone[i].n, 10);
        ck_assert_int_eq(alone[i].reason, ENGINE_FINISH_LENGTH);
        assert_same(&alone[i], &together[i], 1e-4f, job_name[i]);
    }
}
END_TEST

START_TEST(test_batch_invariance_with_prompts_prefilled_in_chunks_of_three_rows)
{
    job j[NJOBS];
    batch_jobs(j);
    collector alone[NJOBS], together[NJOBS];
    for (int i = 0; i < NJOBS; i++)
        run_alone(g.m, &j[i], &alone[i]);
    run_together(j, NJOBS, NULL, 5, 3, together);
    for (int i = 0; i < NJOBS; i++)
        assert_same(&alone[i], &together[i], 1e-4f, job_name[i]);
    /* and staggered, so chunks of late prompts interleave with decode rows */
    const int at[NJOBS] = {0, 1, 3, 4, 6};
    run_together(j, NJOBS, at, 5, 3, together);
    for (int i = 0; i < NJOBS; i++)
        assert_same(&alone[i], &together[i], 1e-4f, job_name[i]);
}
END_TEST

START_TEST(test_batch_invariance_of_seeded_sampling)
{
    job j[NJOBS];
    batch_jobs(j);
    for (int i = 0; i < NJOBS; i++) {
        j[i].sp.temperature = 1.3f;
        j[i].sp.top_p = 0.95f;
        j[i].sp.seed = 1000u + (unsigned)i;
    }
    collector alone[NJOBS], together[NJOBS];
    for (int i = 0; i < NJOBS; i++)
        run_alone(g.m, &j[i], &alone[i]);
    const int at[NJOBS] = {0, 0, 1, 1, 2};
    run_together(j, NJOBS, at, 8, 4, together);
    for (int i = 0; i < NJOBS; i++)
        assert_same(&alone[i], &together[i], 1e-4f, job_name[i]);
}
END_TEST

/* A crowd: n jobs of every kind (base, merged, single adapters and mixes with 8
 * different weightings — 8 distinct groups as far as the engine is concerned), prompts
 * of 3..17 tokens, all submitted at once (decode steps of n rows) or over the first
 * steps (late prompts' chunks beside many decode rows). Each must equal its run alone. */
static void check_crowd(int n, int max_batch_rows, int staggered)
{
    enum { CROWD_MAX = 80 };
    static job j[CROWD_MAX];
    static collector alone[CROWD_MAX], together[CROWD_MAX];
    static variant_mix mixes[CROWD_MAX];
    int at[CROWD_MAX];
    ck_assert_int_le(n, CROWD_MAX);
    for (int i = 0; i < n; i++) {
        j[i] = make_job(3 + i % 15, 1000 + (uint32_t)i, 6);
        float w = 0.5f + 0.125f * (float)(i % 8);
        switch (i % 5) {
        case 0: break;
        case 1: mixes[i] = (variant_mix){.n = 1, .t = {{g.a1->w, w}}}; j[i].lora = &mixes[i]; break;
        case 2: j[i].merged = g.merged2; break;
        case 3: mixes[i] = (variant_mix){.n = 2, .t = {{g.a1->w, w}, {g.a2->w, 0.8f}}};
                j[i].lora = &mixes[i]; break;
        default: mixes[i] = (variant_mix){.n = 1, .t = {{g.a2->w, w}}}; j[i].lora = &mixes[i];
        }
        at[i] = staggered ? i % 7 : 0;
        run_alone(g.m, &j[i], &alone[i]);
    }
    run_together(j, n, at, n, max_batch_rows, together);
    for (int i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "crowd of %d, job %d (kind %d)", n, i, i % 5);
        ck_assert_int_eq(alone[i].n, 6);
        assert_same(&alone[i], &together[i], 1e-4f, what);
    }
}

/* Decode batches past the old 16-row kernel limit (smallmm now takes up to 64 rows) and
 * past 64 (OpenBLAS products, split over the pool), with prompts chunked beside them. */
START_TEST(test_batch_invariance_in_crowds_of_24_and_80_sequences)
{
    check_crowd(24, 0, 0);
    check_crowd(24, 7, 1);
    check_crowd(80, 0, 0);
    check_crowd(80, 40, 1);
}
END_TEST

START_TEST(test_merged_equals_on_the_fly_for_each_adapter)
{
    collector fly, merged;
    job j = make_job(8, 66, 12);
    j.lora = &g.mix2;
    run_alone(g.m, &j, &fly);
    j.lora = NULL;
    j.merged = g.merged2;
    run_alone(g.m, &j, &merged);
    assert_same(&fly, &merged, 1e-4f, "adapter 2 merged vs on the fly");

    j.merged = NULL;
    j.lora = &g.mix1;
    run_alone(g.m, &j, &fly);
    j.lora = NULL;
    j.merged = g.merged1;
    run_alone(g.m, &j, &merged);
    assert_same(&fly, &merged, 1e-4f, "adapter 1 merged vs on the fly");
}
END_TEST

/* merged_alone: the request takes its W' only in steps whose every row runs on that W',
 * and its adapter on the fly in the others. Here the W' is adapter 2's and the adapter is
 * adapter 1 — not the same on purpose — so the tokens tell which one served each step. */
START_TEST(test_merged_alone_takes_w_only_in_steps_where_every_row_is_on_it)
{
    job j = make_job(8, 66, 12);
    j.merged = g.merged2;
    j.lora = &g.mix1;
    j.merged_alone = 1;
    job on_w = j, on_a1 = j;
    on_w.lora = NULL;
    on_w.merged_alone = 0;
    on_a1.merged = NULL;
    on_a1.merged_alone = 0;
    static collector got, want_w, want_a1, two[2];
    run_alone(g.m, &on_w, &want_w);
    run_alone(g.m, &on_a1, &want_a1);
    ck_assert_msg(max_lp_diff(&want_w, &want_a1) > 1e-2f, "the two adapters look alike");

    run_alone(g.m, &j, &got);
    assert_same(&got, &want_w, 0.0f, "alone: on W'");

    job both[2] = {j, j};   /* two rows, both on the same W': W' */
    both[1].prompt[0] = 3 + (both[1].prompt[0] - 3 + 1) % (VOCAB - 3);
    run_together(both, 2, NULL, 2, 0, two);
    assert_same(&two[0], &want_w, 1e-4f, "beside another request on the same W': on W'");

    job crowd[2] = {j, make_job(5, 77, 20)};   /* a base request runs through all its steps */
    run_together(crowd, 2, NULL, 2, 0, two);
    assert_same(&two[0], &want_a1, 1e-4f, "beside a base request: its adapter on the fly");

    job bad = j;   /* merged_alone needs both */
    bad.lora = NULL;
    engine *e = new_engine(g.m, 0, 0);
    engine_request r = make_request(&bad, &got);
    lr_error err = {0};
    uint64_t id;
    ck_assert_int_eq(engine_submit(e, &r, &id, &err), LR_EINVAL);
    ck_assert_msg(strstr(err.msg, "merged_alone") != NULL, "%s", err.msg);
    engine_destroy(e);
}
END_TEST

START_TEST(test_merged_mix_equals_on_the_fly_mix)
{
    lr_error err = {0};
    variant *v = variant_merge(g.m, &g.mix12, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    collector fly, merged;
    job j = make_job(6, 77, 12);
    j.lora = &g.mix12;
    run_alone(g.m, &j, &fly);
    j.lora = NULL;
    j.merged = v;
    run_alone(g.m, &j, &merged);
    assert_same(&fly, &merged, 1e-4f, "0.6·adapter 1 + 0.8·adapter 2, merged vs on the fly");
    variant_free(v);
}
END_TEST

START_TEST(test_greedy_token_is_top_logprob_and_logprobs_are_normalized)
{
    collector c;
    job j = make_job(5, 88, 6);
    j.logprobs = ENGINE_MAX_LOGPROBS;
    run_alone(g.m, &j, &c);
    for (int i = 0; i < c.n; i++) {
        ck_assert_int_eq(c.n_top[i], ENGINE_MAX_LOGPROBS);
        ck_assert_int_eq(c.ids[i], c.top_ids[i][0]);
        ck_assert_float_eq(c.lp[i], c.top_lp[i][0]);
        double mass = 0;
        for (int k = 0; k < c.n_top[i]; k++) {
            ck_assert(c.top_lp[i][k] <= 0.0f);
            if (k)
                ck_assert(c.top_lp[i][k] <= c.top_lp[i][k - 1]);
            mass += exp((double)c.top_lp[i][k]);
        }
        ck_assert(mass <= 1.0 + 1e-5 && mass > 0.2);
    }
}
END_TEST

/* no_logprob: the same tokens, greedy or sampled, without the chosen token's logprob —
 * unless it is among the alternatives asked for, which carry it as before. */
START_TEST(test_no_logprob_leaves_the_tokens_and_drops_only_the_logprob)
{
    for (int sampled = 0; sampled < 2; sampled++) {
        job j = make_job(6, 123 + (uint32_t)sampled, 8);
        j.logprobs = 0;
        if (sampled) {
            j.sp.temperature = 0.9f;
            j.sp.seed = 7;
        }
        collector with, without;
        run_alone(g.m, &j, &with);
        j.no_logprob = 1;
        run_alone(g.m, &j, &without);
        ck_assert_int_eq(with.n, without.n);
        for (int i = 0; i < with.n; i++) {
            ck_assert_int_eq(with.ids[i], without.ids[i]);
            ck_assert_msg(isfinite(with.lp[i]) && with.lp[i] <= 0.0f, "token %d: logprob %g", i,
                          (double)with.lp[i]);
            ck_assert_msg(isnan(without.lp[i]), "token %d: logprob %g without being wanted", i,
                          (double)without.lp[i]);
            ck_assert_int_eq(without.n_top[i], 0);
        }
    }
    job j = make_job(6, 321, 8);   /* greedy: the chosen token is the first alternative */
    j.logprobs = 3;
    j.no_logprob = 1;
    collector c;
    run_alone(g.m, &j, &c);
    for (int i = 0; i < c.n; i++) {
        ck_assert_int_eq(c.ids[i], c.top_ids[i][0]);
        ck_assert_float_eq(c.lp[i], c.top_lp[i][0]);
    }
}
END_TEST

START_TEST(test_finishes_with_length_after_exactly_max_tokens)
{
    for (int mt = 1; mt <= 9; mt += 4) {
        collector c;
        job j = make_job(4, 99, mt);
        run_alone(g.m, &j, &c);
        ck_assert_int_eq(c.n, mt);
        ck_assert_int_eq(c.reason, ENGINE_FINISH_LENGTH);
        ck_assert_int_eq(c.done_calls, 1);
        ck_assert_int_eq(c.tokens_after_done, 0);
    }
}
END_TEST

START_TEST(test_token_callback_returning_nonzero_finishes_with_stop)
{
    collector c;
    job j = make_job(4, 99, 10);
    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    engine *e = new_engine(g.m, 0, 0);
    submit_ok(e, &j, &c);
    run_to_end(e);
    engine_destroy(e);
    ck_assert_int_eq(c.n, 3);
    ck_assert_int_eq(c.reason, ENGINE_FINISH_STOP);
    ck_assert_int_eq(c.done_calls, 1);
}
END_TEST

START_TEST(test_eos_finishes_with_stop_unless_ignore_eos)
{
    /* Greedy run with EOS ignored; then make its 4th token (first occurrence) the EOS of
     * a second copy of the model via generation_config.json. */
    collector ref;
    job j = make_job(6, 123, 10);
    j.ignore_eos = 1;
    run_alone(g.m, &j, &ref);
    ck_assert_int_eq(ref.n, 10);
    int k = -1;
    for (int i = 3; i < ref.n && k < 0; i++) {
        int seen = 0;
        for (int q = 0; q < i; q++)
            seen |= ref.ids[q] == ref.ids[i];
        if (!seen && ref.ids[i] != EOS)
            k = i;
    }
    ck_assert_msg(k >= 0, "test setup: no fresh token in the greedy continuation");
    char *dir = testutil_mkdtemp("engine_test");
    testutil_write_tiny_model(dir);
    testutil_write_json(dir, "generation_config.json", json_pack("{s:i}", "eos_token_id", ref.ids[k]));
    lr_error err = {0};
    model *m2 = model_load(dir, &err);
    ck_assert_msg(m2 != NULL, "model_load: %s", err.msg);
    ck_assert_int_eq(m2->cfg.n_eos, 1);
    ck_assert_int_eq(m2->cfg.eos_ids[0], ref.ids[k]);

    collector c;
    j.ignore_eos = 0;
    run_alone(m2, &j, &c);
    ck_assert_int_eq(c.n, k + 1);
    ck_assert_int_eq(c.ids[k], ref.ids[k]);
    ck_assert_int_eq(c.reason, ENGINE_FINISH_STOP);
    ck_assert_int_eq(c.done_calls, 1);

    j.ignore_eos = 1;
    run_alone(m2, &j, &c);
    assert_same(&ref, &c, 0.0f, "ignore_eos on a copy of the model");
    model_free(m2);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_context_full_finishes_with_length)
{
    /* 60 prompt tokens + up to 20 new ones in a 64-position model: prompt + output may
     * not exceed the context (as vLLM and the OpenAI API count it), so 4 tokens. */
    collector c;
    job j = make_job(60, 321, 20);
    run_alone(g.m, &j, &c);
    ck_assert_int_eq(c.reason, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(c.done_calls, 1);
    ck_assert_int_eq(j.n_prompt + c.n, CTX);

    /* the longest accepted prompt still gets its token(s) */
    j = make_job(CTX - 1, 322, 20);
    run_alone(g.m, &j, &c);
    ck_assert_int_eq(c.reason, ENGINE_FINISH_LENGTH);
    ck_assert_int_eq(j.n_prompt + c.n, CTX);
}
END_TEST

START_TEST(test_seeded_sampling_is_reproducible_and_seed_dependent)
{
    job j = make_job(5, 555, 16);
    j.sp.temperature = 1.5f;
    j.sp.top_p = 1.0f;
    j.sp.seed = 42;
    collector a, b, c;
    run_alone(g.m, &j, &a);
    run_alone(g.m, &j, &b);
    assert_same(&a, &b, 0.0f, "same seed, two engines");
    j.sp.seed = 43;
    run_alone(g.m, &j, &c);
    int differ = 0;
    for (int i = 0; i < 16; i++)
        differ += a.ids[i] != c.ids[i];
    ck_assert_msg(differ > 0, "seeds 42 and 43 gave the same 16 tokens");
    /* and sampling is not greedy */
    j.sp.temperature = 0.0f;
    run_alone(g.m, &j, &c);
    differ = 0;
    for (int i = 0; i < 16; i++)
        differ += a.ids[i] != c.ids[i];
    ck_assert_msg(differ > 0, "temperature 1.5 gave the greedy tokens");
}
END_TEST

START_TEST(test_base_weights_untouched_by_merge_requests_and_variant_free)
{
    uint64_t before = weights_checksum(g.m);
    lr_error err = {0};
    variant *v = variant_merge(g.m, &g.mix12, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    ck_assert_uint_eq(weights_checksum(g.m), before);
    job j[4];
    j[0] = make_job(5, 1, 6);
    j[0].merged = v;
    j[1] = make_job(6, 2, 6);
    j[1].lora = &g.mix12;
    j[2] = make_job(7, 3, 6);
    j[2].merged = g.merged1;
    j[3] = make_job(8, 4, 6);
    j[3].lora = &g.mix2;
    collector cs[4];
    run_together(j, 4, NULL, 4, 0, cs);
    ck_assert_uint_eq(weights_checksum(g.m), before);
    /* merged W' is a separate copy from W */
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < 7; p++)
            ck_assert_ptr_ne(variant_weight(g.m, v, l, (model_proj)p)->data,
                             g.m->layers[l].w[p].data);
    variant_free(v);
    ck_assert_uint_eq(weights_checksum(g.m), before);
}
END_TEST

START_TEST(test_destroy_finishes_running_requests_with_error_once)
{
    collector c[2];
    memset(c, 0, sizeof c);
    job j = make_job(5, 7, 20);
    engine *e = new_engine(g.m, 0, 0);
    submit_ok(e, &j, &c[0]);
    submit_ok(e, &j, &c[1]);
    lr_error err = {0};
    ck_assert_int_eq(engine_step(e, &err), 2);
    engine_destroy(e);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(c[i].done_calls, 1);
        ck_assert_int_eq(c[i].reason, ENGINE_FINISH_ERROR);
        ck_assert_int_eq(c[i].n, 1);
    }
}
END_TEST

/* ---- the daemon's engine: queue, cancellation, KV budget, fairness ---- */

static engine *engine_with(int max_seqs, int max_queue, int max_batch_rows, size_t max_kv)
{
    engine_options o = engine_options_default();
    o.max_seqs = max_seqs;
    o.max_queue = max_queue;
    if (max_batch_rows)
        o.max_batch_rows = max_batch_rows;
    o.max_kv_bytes = max_kv;
    lr_error err = {0};
    engine *e = engine_create(g.m, &o, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    return e;
}

static uint64_t submit_id(engine *e, const job *j, collector *c)
{
    engine_request r = make_request(j, c);
    lr_error err = {0};
    uint64_t id = 0;
    ck_assert_msg(engine_submit(e, &r, &id, &err) == 0, "engine_submit: %s", err.msg);
    ck_assert_msg(id > 0, "engine_submit gave id 0");
    return id;
}

static void step_ok(engine *e)
{
    lr_error err = {0};
    ck_assert_msg(engine_step(e, &err) >= 0, "engine_step: %s", err.msg);
}

START_TEST(test_cancel_while_waiting_prefilling_and_decoding_frees_the_kv_cache)
{
    /* prefill chunk of 3 rows: a 10-token prompt is mid-prefill after one step */
    engine *e = engine_with(2, 4, 3, 0);
    collector c[4];
    memset(c, 0, sizeof c);
    job dec = make_job(2, 21, 30), pre = make_job(10, 22, 30), wait = make_job(3, 23, 5);
    uint64_t id_dec = submit_id(e, &dec, &c[0]);
    step_ok(e);
    step_ok(e);                      /* dec is decoding */
    ck_assert_int_ge(c[0].n, 1);
    uint64_t id_pre = submit_id(e, &pre, &c[1]);
    uint64_t id_wait = submit_id(e, &wait, &c[2]);
    step_ok(e);                      /* pre fed 3 of 10 rows; wait has no slot */
    engine_stats st;
    engine_stats_get(e, &st);
    ck_assert_int_eq(st.running, 2);
    ck_assert_int_eq(st.waiting, 1);
    ck_assert_uint_gt(st.kv_bytes, 0);
    ck_assert_int_eq(c[1].n, 0);

    engine_cancel(e, id_wait);
    engine_cancel(e, id_pre);
    step_ok(e);
    ck_assert_int_eq(c[1].done_calls, 1);
    ck_assert_int_eq(c[1].reason, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(c[1].n, 0);
    ck_assert_int_eq(c[2].done_calls, 1);
    ck_assert_int_eq(c[2].reason, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(c[2].n, 0);
    int before = c[0].n;
    engine_cancel(e, id_dec);
    step_ok(e);
    ck_assert_int_eq(c[0].done_calls, 1);
    ck_assert_int_eq(c[0].reason, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(c[0].n, before);
    engine_stats_get(e, &st);
    ck_assert_int_eq(st.running, 0);
    ck_assert_int_eq(st.waiting, 0);
    ck_assert_uint_eq(st.kv_bytes, 0);
    ck_assert_uint_eq(st.cancelled, 3);
    ck_assert_int_eq(engine_running(e), 0);

    /* a finished id is ignored; a new request runs normally */
    engine_cancel(e, id_dec);
    job ok = make_job(4, 24, 3);
    submit_id(e, &ok, &c[3]);
    run_to_end(e);
    ck_assert_int_eq(c[3].n, 3);
    ck_assert_int_eq(c[3].reason, ENGINE_FINISH_LENGTH);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(c[i].done_calls, 1);
    engine_destroy(e);
}
END_TEST

START_TEST(test_cancel_all_finishes_every_request_once)
{
    engine *e = engine_with(2, 4, 0, 0);
    collector c[4];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 4; i++) {
        job j = make_job(3 + i, 30 + (uint32_t)i, 20);
        submit_id(e, &j, &c[i]);
    }
    step_ok(e);
    engine_cancel_all(e);
    step_ok(e);
    ck_assert_int_eq(engine_running(e), 0);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c[i].done_calls, 1);
        ck_assert_int_eq(c[i].reason, ENGINE_FINISH_CANCELLED);
    }
    engine_destroy(e);
}
END_TEST

/* ---- the paged KV cache: blocks of KV_BLOCK positions from one pool ---- */

/* An engine whose KV pool holds exactly `blocks` blocks. */
static engine *engine_with_blocks(int max_seqs, int max_batch_rows, int blocks)
{
    engine *e = engine_with(max_seqs, 64, max_batch_rows,
                            (size_t)blocks * kv_block_bytes(&g.m->cfg));
    engine_stats st;
    engine_stats_get(e, &st);
    ck_assert_int_eq(st.kv_blocks_total, blocks);
    return e;
}

/* The pool's counters agree with each other. */
static engine_stats kv_stats(engine *e)
{
    engine_stats st;
    engine_stats_get(e, &st);
    ck_assert_int_eq(st.kv_blocks_used + st.kv_blocks_free, st.kv_blocks_total);
    ck_assert_uint_eq(st.kv_bytes, (size_t)st.kv_blocks_used * kv_block_bytes(&g.m->cfg));
    ck_assert_uint_eq(st.kv_limit, (size_t)st.kv_blocks_total * kv_block_bytes(&g.m->cfg));
    return st;
}

START_TEST(test_kv_blocks_follow_the_tokens_held_and_return_after_finish_and_cancel)
{
    /* No limit: still a bounded pool, one full context per slot. */
    engine *e = engine_with(4, 4, 4, 0);
    engine_stats st = kv_stats(e);
    ck_assert_int_eq(st.kv_blocks_total, 4 * kv_blocks_for(CTX));
    ck_assert_int_eq(st.kv_blocks_used, 0);
    /* 5 prompt tokens + 50 new ones: the cache grows to 54 positions, 4 blocks; at every
     * step it holds the blocks of the positions written so far, not of its maximum. */
    collector c[2];
    memset(c, 0, sizeof c);
    job a = make_job(5, 201, 50);
    submit_id(e, &a, &c[0]);
    int grew = 0, last_used = 0;
    while (c[0].done_calls == 0) {
        step_ok(e);
        st = kv_stats(e);
        if (c[0].done_calls)
            break;
        int held = a.n_prompt + c[0].n - 1;   /* positions written: all but the last token */
        ck_assert_msg(st.kv_blocks_used == kv_blocks_for(held), "%d tokens: %d blocks used, "
                      "the %d positions held need %d", c[0].n, st.kv_blocks_used, held,
                      kv_blocks_for(held));
        grew += st.kv_blocks_used > last_used;
        last_used = st.kv_blocks_used;
    }
    ck_assert_int_eq(c[0].n, 50);
    ck_assert_int_eq(grew, kv_blocks_for(a.n_prompt + 50 - 1));   /* one block at a time */
    st = kv_stats(e);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    ck_assert_uint_eq(st.kv_bytes, 0);

    /* cancelled mid-decode: every block comes back */
    job b = make_job(20, 202, 40);
    uint64_t id = submit_id(e, &b, &c[1]);
    for (int i = 0; i < 5; i++)
        step_ok(e);   /* 20 prompt rows in chunks of 4, then decoding */
    st = kv_stats(e);
    ck_assert_int_eq(c[1].n, 1);
    ck_assert_int_eq(st.kv_blocks_used, kv_blocks_for(20));
    engine_cancel(e, id);
    step_ok(e);
    st = kv_stats(e);
    ck_assert_int_eq(c[1].reason, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    ck_assert_int_eq(st.kv_blocks_free, st.kv_blocks_total);
    ck_assert_uint_eq(st.preemptions, 0);
    engine_destroy(e);
}
END_TEST

START_TEST(test_admission_waits_for_the_prompt_blocks_in_arrival_order)
{
    /* 3 blocks of 16 positions. a and b: 20-token prompts (2 blocks each), 8 new tokens
     * (27 positions: still 2 blocks). b must wait for a; c (one block) would fit beside
     * a but does not overtake b. */
    engine *e = engine_with_blocks(4, 0, 3);
    collector c[4];
    memset(c, 0, sizeof c);
    job a = make_job(20, 41, 8), b = make_job(20, 42, 8), cj = make_job(4, 43, 3);
    submit_id(e, &a, &c[0]);
    submit_id(e, &b, &c[1]);
    submit_id(e, &cj, &c[2]);
    for (int i = 0; i < 7; i++) {   /* a's first token, then 6 more: not yet done */
        step_ok(e);
        engine_stats st = kv_stats(e);
        ck_assert_int_eq(st.running, 1);
        ck_assert_int_eq(st.waiting, 2);
        ck_assert_int_eq(st.kv_blocks_used, 2);
        ck_assert_int_eq(c[1].n + c[2].n, 0);
    }
    run_to_end(e);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(c[i].done_calls, 1);
    ck_assert_int_eq(c[0].n, 8);
    ck_assert_int_eq(c[1].n, 8);
    ck_assert_int_eq(c[2].n, 3);
    engine_stats st = kv_stats(e);
    ck_assert_uint_eq(st.preemptions, 0);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    /* b, run after waiting, gives what it gives alone — within rounding: its prompt may
     * share a step with c's, and 20 rows alone take other tiles than 24 together (20 =
     * 16 on the outer-product tiles + 4 on the dot-product tiles, core/smallmm.c) */
    collector alone;
    run_alone(g.m, &b, &alone);
    assert_same(&c[1], &alone, 1e-4f, "after waiting for KV blocks");
    engine_destroy(e);
}
END_TEST

START_TEST(test_request_larger_than_the_whole_pool_is_refused_at_submit)
{
    engine *e = engine_with_blocks(4, 0, 3);
    collector c[2];
    memset(c, 0, sizeof c);
    /* 4 + 45 - 1 = 48 positions: exactly the pool, accepted and served alone */
    job fits = make_job(4, 44, 45);
    submit_id(e, &fits, &c[0]);
    /* 4 + 46 - 1 = 49 positions: 4 blocks, never */
    job big = make_job(4, 45, 46);
    engine_request r = make_request(&big, &c[1]);
    lr_error err = {0};
    ck_assert_int_eq(engine_submit(e, &r, NULL, &err), LR_EINVAL);
    ck_assert_msg(strstr(err.msg, "needs 4 KV cache blocks") && strstr(err.msg, "holds 3"),
                  "message \"%s\" does not say what the request needs and the pool holds",
                  err.msg);
    run_to_end(e);
    ck_assert_int_eq(c[0].n, 45);
    ck_assert_int_eq(c[1].done_calls, 0);
    ck_assert_uint_eq(kv_stats(e).preemptions, 0);
    engine_destroy(e);

    /* a limit below one block is refused when the engine is made */
    engine_options o = engine_options_default();
    o.max_kv_bytes = kv_block_bytes(&g.m->cfg) - 1;
    ck_assert_ptr_null(engine_create(g.m, &o, &err));
    ck_assert_msg(strstr(err.msg, "KV") != NULL, "message \"%s\" lacks \"KV\"", err.msg);
}
END_TEST

/* engine_threads: the pool's size as asked, and with threads = 0 one per online CPU (at
 * most 16), as bench_engine's compute bound assumes. */
START_TEST(test_engine_threads_reports_its_pool)
{
    lr_error err = {0};
    engine_options o = engine_options_default();
    o.threads = 3;
    engine *e = engine_create(g.m, &o, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    ck_assert_int_eq(engine_threads(e), 3);
    engine_destroy(e);
    o.threads = 0;
    e = engine_create(g.m, &o, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ck_assert_int_eq(engine_threads(e), ncpu < 1 ? 1 : ncpu > 16 ? 16 : (int)ncpu);
    engine_destroy(e);
}
END_TEST

/* A crowd that does not fit a pool of `blocks` blocks at once: n jobs of every kind
 * (base, merged, single adapters and mixes), prompts of 3..17 tokens and 12..40 new
 * ones, greedy or seeded sampling, submitted at once or staggered. Every one must give
 * what it gives alone — tokens, each seen once, and logprobs — and the engine must have
 * preempted. */
static void check_preemption_crowd(int n, int blocks, int max_batch_rows, int sampled,
                                   int staggered)
{
    enum { PCROWD_MAX = 24 };
    static job j[PCROWD_MAX];
    static collector alone[PCROWD_MAX], together[PCROWD_MAX];
    static variant_mix mixes[PCROWD_MAX];
    ck_assert_int_le(n, PCROWD_MAX);
    for (int i = 0; i < n; i++) {
        j[i] = make_job(3 + (i * 7) % 15, 3000 + (uint32_t)i, 12 + (i * 5) % 29);
        float w = 0.5f + 0.125f * (float)(i % 8);
        switch (i % 5) {
        case 0: break;
        case 1: mixes[i] = (variant_mix){.n = 1, .t = {{g.a1->w, w}}}; j[i].lora = &mixes[i]; break;
        case 2: j[i].merged = g.merged2; break;
        case 3: mixes[i] = (variant_mix){.n = 2, .t = {{g.a1->w, w}, {g.a2->w, 0.8f}}};
                j[i].lora = &mixes[i]; break;
        default: mixes[i] = (variant_mix){.n = 1, .t = {{g.a2->w, w}}}; j[i].lora = &mixes[i];
        }
        if (sampled) {
            j[i].sp.temperature = 1.2f;
            j[i].sp.top_p = 0.9f;
            j[i].sp.seed = 500u + (unsigned)i;
        }
        run_alone(g.m, &j[i], &alone[i]);
    }
    engine *e = engine_with_blocks(n, max_batch_rows, blocks);
    memset(together, 0, sizeof together);
    int submitted = 0, peak = 0;
    for (int step = 0; submitted < n || engine_running(e) > 0; step++) {
        ck_assert_msg(step < 5000, "engine did not finish");
        for (int i = 0; i < n; i++)
            if ((staggered ? i % 6 : 0) == step) {
                submit_id(e, &j[i], &together[i]);
                submitted++;
            }
        step_ok(e);
        engine_stats st = kv_stats(e);
        ck_assert_int_le(st.kv_blocks_used, blocks);
        peak = st.kv_blocks_used > peak ? st.kv_blocks_used : peak;
    }
    engine_stats st = kv_stats(e);
    ck_assert_msg(st.preemptions > 0, "crowd of %d in %d blocks: no preemption, the test "
                  "proves nothing", n, blocks);
    /* every token but a request's first came from one decode row, recomputed or not; the
     * recomputations ran prefill rows beyond the prompts */
    uint64_t decoded = 0, prompts = 0;
    for (int i = 0; i < n; i++) {
        decoded += (uint64_t)together[i].n - 1;
        prompts += (uint64_t)j[i].n_prompt;
    }
    ck_assert_uint_eq(st.decode_rows, decoded);
    ck_assert_uint_gt(st.prefill_rows, prompts);
    ck_assert_int_gt(peak, blocks / 2);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    for (int i = 0; i < n; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s crowd of %d in %d blocks, job %d (kind %d)",
                 sampled ? "sampled" : "greedy", n, blocks, i, i % 5);
        ck_assert_int_eq(together[i].tokens_after_done, 0);
        assert_same(&alone[i], &together[i], 1e-4f, what);
    }
    engine_destroy(e);
}

START_TEST(test_preemption_under_a_tiny_pool_gives_every_request_its_output_alone)
{
    /* a sequence holds 1..4 blocks; 10 blocks for 12 or 20 of them */
    check_preemption_crowd(12, 10, 0, 0, 0);
    check_preemption_crowd(20, 10, 5, 0, 1);
    check_preemption_crowd(12, 10, 0, 1, 0);
    check_preemption_crowd(20, 10, 5, 1, 1);
}
END_TEST

START_TEST(test_cancel_of_a_preempted_request_frees_everything)
{
    /* 2 blocks, 2 slots: a and b (14-token prompts, 23 positions each) take one block
     * each; at position 16 a (older) needs a second block and b is preempted. */
    engine *e = engine_with_blocks(2, 0, 2);
    collector c[3];
    memset(c, 0, sizeof c);
    job a = make_job(14, 61, 10), b = make_job(14, 62, 10);
    submit_id(e, &a, &c[0]);
    uint64_t id_b = submit_id(e, &b, &c[1]);
    for (int i = 0; i < 3; i++)
        step_ok(e);   /* tokens 1..3 of each: positions 14 and 15 written */
    engine_stats st = kv_stats(e);
    ck_assert_uint_eq(st.preemptions, 0);
    ck_assert_int_eq(st.kv_blocks_used, 2);
    step_ok(e);       /* a writes position 16 */
    st = kv_stats(e);
    ck_assert_uint_eq(st.preemptions, 1);
    ck_assert_int_eq(st.running, 1);
    ck_assert_int_eq(st.waiting, 1);
    ck_assert_int_eq(st.kv_blocks_used, 2);   /* both a's */
    ck_assert_int_eq(c[0].n, 4);
    ck_assert_int_eq(c[1].n, 3);
    ck_assert_int_eq(c[1].done_calls, 0);
    engine_cancel(e, id_b);
    step_ok(e);
    st = kv_stats(e);
    ck_assert_int_eq(c[1].done_calls, 1);
    ck_assert_int_eq(c[1].reason, ENGINE_FINISH_CANCELLED);
    ck_assert_int_eq(c[1].n, 3);
    ck_assert_int_eq(st.waiting, 0);
    ck_assert_int_eq(st.kv_blocks_used, 2);
    ck_assert_uint_eq(st.cancelled, 1);
    run_to_end(e);
    st = kv_stats(e);
    ck_assert_int_eq(c[0].n, 10);
    ck_assert_int_eq(st.kv_blocks_used, 0);
    collector alone;
    run_alone(g.m, &a, &alone);
    /* within rounding: alone, its 14-row prefill takes the dot-product tiles, beside b
     * (28 rows) the outer-product ones, which sum in another order */
    assert_same(&c[0], &alone, 1e-4f, "the sequence that kept its blocks");

    /* the same, but left alone b is recomputed and finishes as if never interrupted */
    memset(c, 0, 2 * sizeof *c);
    submit_id(e, &a, &c[0]);
    submit_id(e, &b, &c[1]);
    run_to_end(e);
    st = kv_stats(e);
    ck_assert_uint_ge(st.preemptions, 2);
    run_alone(g.m, &b, &alone);
    assert_same(&c[1], &alone, 1e-4f, "the preempted sequence");
    ck_assert_int_eq(st.kv_blocks_used, 0);
    engine_destroy(e);
}
END_TEST

START_TEST(test_decoders_never_starve_a_new_prompt_and_prefill_is_chunked)
{
    /* 3 decoding streams; a 20-token prompt arrives. With a 4-row prefill chunk it needs
     * exactly 5 steps to start, and every decoder gets one token in each of them. */
    engine *e = engine_with(4, 0, 4, 0);
    collector c[4];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 3; i++) {
        job d = make_job(2, 50 + (uint32_t)i, 40);
        submit_id(e, &d, &c[i]);
    }
    step_ok(e);
    step_ok(e);   /* 6 prompt rows: two steps of 4 */
    for (int i = 0; i < 3; i++)
        ck_assert_int_ge(c[i].n, 1);
    job longp = make_job(20, 60, 4);
    submit_id(e, &longp, &c[3]);
    int before[3];
    for (int i = 0; i < 3; i++)
        before[i] = c[i].n;
    for (int s = 0; s < 5; s++) {
        ck_assert_int_eq(c[3].n, 0);
        step_ok(e);
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(c[i].n, before[i] + s + 1);
    }
    ck_assert_int_eq(c[3].n, 1);   /* its first token came with its last chunk */
    engine_cancel_all(e);
    step_ok(e);
    engine_destroy(e);
}
END_TEST

START_TEST(test_stats_count_every_decode_and_prefill_row_once_and_the_steps_time)
{
    /* prompts in chunks of 4 rows beside decoders: 14 prompt rows, (6-1) + (3-1) + (9-1)
     * decode rows (a request's first token comes with its prompt's last row) */
    engine *e = engine_with(4, 0, 4, 0);
    collector c[3];
    memset(c, 0, sizeof c);
    static const int len[3] = {5, 7, 2}, max[3] = {6, 3, 9};
    for (int i = 0; i < 3; i++) {
        job jb = make_job(len[i], 70 + (uint32_t)i, max[i]);
        submit_id(e, &jb, &c[i]);
    }
    engine_stats st;
    engine_stats_get(e, &st);
    ck_assert_uint_eq(st.decode_rows + st.prefill_rows, 0);
    ck_assert(st.step_seconds == 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int steps = 0;
    for (; engine_running(e) > 0; steps++) {
        ck_assert_int_lt(steps, 100);
        step_ok(e);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(c[i].n, max[i]);
    engine_stats_get(e, &st);
    ck_assert_uint_eq(st.prefill_rows, 14);
    ck_assert_uint_eq(st.decode_rows, 15);
    ck_assert_uint_eq(st.steps, (uint64_t)steps);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    ck_assert_msg(st.step_seconds > 0 && st.step_seconds <= wall,
                  "step time %g s, the loop took %g s", st.step_seconds, wall);
    /* engine_step with nothing to run: no step, no rows, no time */
    step_ok(e);
    engine_stats idle;
    engine_stats_get(e, &idle);
    ck_assert_uint_eq(idle.steps, st.steps);
    ck_assert_uint_eq(idle.decode_rows + idle.prefill_rows, 29);
    ck_assert(idle.step_seconds == st.step_seconds);
    engine_destroy(e);
}
END_TEST

START_TEST(test_prompts_start_in_arrival_order)
{
    engine *e = engine_with(1, 8, 0, 0);
    collector c[4];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 4; i++) {
        job j = make_job(3, 70 + (uint32_t)i, 2);
        submit_id(e, &j, &c[i]);
    }
    for (int s = 0; s < 8; s++) {
        step_ok(e);
        /* after 2s+2 steps, exactly the first s+1 requests are done */
        for (int i = 0; i < 4; i++)
            ck_assert_int_eq(c[i].done_calls, i < (s + 1) / 2 ? 1 : 0);
    }
    engine_destroy(e);
}
END_TEST

START_TEST(test_mixes_equal_in_content_compare_equal_and_batch_alike)
{
    /* (the order of mixes itself: test_variant) */
    variant_mix copy = g.mix12;
    ck_assert_int_eq(variant_mix_cmp(&copy, &g.mix12), 0);

    /* two requests with their own copies of one mix, batched with others, give what they
     * give alone */
    job j[4];
    j[0] = make_job(5, 81, 6);
    j[0].lora = &g.mix12;
    j[1] = make_job(6, 82, 6);
    j[1].lora = &copy;
    j[2] = make_job(7, 83, 6);
    j[2].lora = &g.mix1;
    j[3] = make_job(4, 84, 6);
    collector together[4], alone;
    run_together(j, 4, NULL, 4, 0, together);
    for (int i = 0; i < 4; i++) {
        run_alone(g.m, &j[i], &alone);
        assert_same(&together[i], &alone, 1e-4f, "copied mixes in one batch");
    }
}
END_TEST

START_TEST(test_non_finite_logits_finish_that_request_with_an_error)
{
    /* An adapter whose scale overflows the activations to Inf/NaN. */
    lora_weights *w = lora_weights_new(LAYERS);
    ck_assert_ptr_nonnull(w);
    lora_matrix *lm = lora_weights_at(w, 1, PROJ_DOWN);
    lm->r = 1;
    lm->scale = 1e30f;
    lm->a = malloc(INTER * sizeof(float));
    lm->bt = malloc(HIDDEN * sizeof(float));
    ck_assert(lm->a && lm->bt);
    for (int i = 0; i < INTER; i++)
        lm->a[i] = 1e10f;
    for (int i = 0; i < HIDDEN; i++)
        lm->bt[i] = 1e10f;
    w->max_rank = 1;
    variant_mix bad = {.n = 1, .t = {{w, 1.0f}}};
    job j[2];
    j[0] = make_job(5, 91, 4);
    j[0].lora = &bad;
    j[1] = make_job(5, 92, 4);
    collector c[2], alone;
    run_together(j, 2, NULL, 2, 0, c);
    ck_assert_int_eq(c[0].done_calls, 1);
    ck_assert_int_eq(c[0].reason, ENGINE_FINISH_ERROR);
    ck_assert_int_eq(c[0].n, 0);
    run_alone(g.m, &j[1], &alone);
    /* within rounding: 10 rows together take other tiles (smallmm) than 5 alone; a NaN
     * leaking across rows would be far outside */
    assert_same(&c[1], &alone, 1e-4f, "beside a request with non-finite logits");
    lora_weights_free(w);
}
END_TEST

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    collector c;
} waiter;

static int w_token(void *user, const engine_token *t)
{
    waiter *w = user;
    pthread_mutex_lock(&w->mu);
    int r = on_token(&w->c, t);
    pthread_mutex_unlock(&w->mu);
    return r;
}

static void w_done(void *user, engine_finish reason, const lr_error *err)
{
    waiter *w = user;
    pthread_mutex_lock(&w->mu);
    on_done(&w->c, reason, err);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *run_thread(void *arg)
{
    engine_run(arg);
    return NULL;
}

START_TEST(test_engine_thread_serves_submissions_from_other_threads_and_sleeps_when_idle)
{
    engine *e = engine_with(4, 4, 0, 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, run_thread, e), 0);
    waiter w[3];
    job j[3];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3; i++) {
            memset(&w[i].c, 0, sizeof w[i].c);
            pthread_mutex_init(&w[i].mu, NULL);
            pthread_cond_init(&w[i].cv, NULL);
            j[i] = make_job(3 + i, 100 + (uint32_t)i, 5);
            engine_request r = make_request(&j[i], NULL);
            r.on_token = w_token;
            r.on_done = w_done;
            r.user = &w[i];
            lr_error err = {0};
            ck_assert_msg(engine_submit(e, &r, NULL, &err) == 0, "submit: %s", err.msg);
        }
        for (int i = 0; i < 3; i++) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += 20;
            pthread_mutex_lock(&w[i].mu);
            while (!w[i].c.done_calls)
                ck_assert_msg(pthread_cond_timedwait(&w[i].cv, &w[i].mu, &dl) == 0,
                              "request %d not done within 20 s", i);
            pthread_mutex_unlock(&w[i].mu);
            collector alone;
            run_alone(g.m, &j[i], &alone);
            /* within rounding: batched with the others their rows may take other tiles
             * (smallmm) than alone */
            assert_same(&w[i].c, &alone, 1e-4f, "on the engine thread");
        }
        /* idle: the thread sleeps, no step runs */
        engine_stats a, b;
        engine_stats_get(e, &a);
        usleep(50000);
        engine_stats_get(e, &b);
        ck_assert_uint_eq(a.steps, b.steps);
        for (int i = 0; i < 3; i++) {
            pthread_mutex_destroy(&w[i].mu);
            pthread_cond_destroy(&w[i].cv);
        }
    }
    engine_stop(e);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    engine_destroy(e);
}
END_TEST

/* ================================ limits ================================ */

/* engine_submit must refuse r with want in the message and call no callback; the engine
 * then still serves a valid request. */
static void expect_reject(engine *e, job *bad, const char *want)
{
    collector c;
    memset(&c, 0, sizeof c);
    int running = engine_running(e);
    engine_request r = make_request(bad, &c);
    lr_error err = {0};
    int rc = engine_submit(e, &r, NULL, &err);
    ck_assert_msg(rc < 0, "engine_submit accepted a request that should fail with \"%s\"",
                  want);
    ck_assert_int_eq(err.code, rc);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
    ck_assert_int_eq(engine_running(e), running);
    lr_error serr = {0};
    for (int i = 0; i < 4; i++)
        ck_assert_int_ge(engine_step(e, &serr), 0);
    ck_assert_msg(c.n == 0 && c.done_calls == 0, "a rejected request got callbacks");
}

static void expect_reject_then_serve(job *bad, const char *want)
{
    engine *e = new_engine(g.m, 4, 0);
    expect_reject(e, bad, want);
    job ok = make_job(4, 17, 3);
    collector c;
    memset(&c, 0, sizeof c);
    submit_ok(e, &ok, &c);
    run_to_end(e);
    ck_assert_int_eq(c.n, 3);
    ck_assert_int_eq(c.done_calls, 1);
    ck_assert_int_eq(c.reason, ENGINE_FINISH_LENGTH);
    engine_destroy(e);
}

START_TEST(test_submit_rejects_empty_prompt)
{
    job j = make_job(4, 5, 3);
    j.n_prompt = 0;
    expect_reject_then_serve(&j, "the prompt is empty");
}
END_TEST

START_TEST(test_submit_rejects_max_tokens_zero)
{
    job j = make_job(4, 5, 0);
    expect_reject_then_serve(&j, "max_tokens must be at least 1 (got 0)");
}
END_TEST

START_TEST(test_submit_rejects_negative_token_id)
{
    job j = make_job(4, 5, 3);
    j.prompt[2] = -1;
    expect_reject_then_serve(&j, "prompt token -1 at index 2 is out of range [0, 64)");
}
END_TEST

START_TEST(test_submit_rejects_token_id_equal_to_vocab)
{
    job j = make_job(4, 5, 3);
    j.prompt[3] = VOCAB;
    expect_reject_then_serve(&j, "prompt token 64 at index 3 is out of range [0, 64)");
}
END_TEST

START_TEST(test_submit_rejects_prompt_as_long_as_the_context)
{
    job j = make_job(CTX, 5, 3);
    expect_reject_then_serve(&j, "the prompt has 64 tokens; the context is 64 positions");
}
END_TEST

START_TEST(test_submit_rejects_prompt_longer_than_the_context)
{
    job j = make_job(CTX + 8, 5, 3);
    expect_reject_then_serve(&j, "the prompt has 72 tokens; the context is 64 positions");
}
END_TEST

START_TEST(test_submit_rejects_too_many_logprobs)
{
    job j = make_job(4, 5, 3);
    j.logprobs = ENGINE_MAX_LOGPROBS + 1;
    expect_reject_then_serve(&j, "logprobs must be between 0 and 20 (got 21)");
}
END_TEST

START_TEST(test_submit_rejects_negative_logprobs)
{
    job j = make_job(4, 5, 3);
    j.logprobs = -1;
    expect_reject_then_serve(&j, "logprobs must be between 0 and 20 (got -1)");
}
END_TEST

START_TEST(test_submit_rejects_negative_temperature)
{
    job j = make_job(4, 5, 3);
    j.sp.temperature = -1.0f;
    expect_reject_then_serve(&j, "temperature must be a finite number >= 0");
}
END_TEST

START_TEST(test_submit_rejects_top_p_zero)
{
    job j = make_job(4, 5, 3);
    j.sp.top_p = 0.0f;
    expect_reject_then_serve(&j, "top_p must be in (0, 1]");
}
END_TEST

START_TEST(test_submit_refuses_busy_beyond_max_seqs_plus_max_queue_then_accepts)
{
    engine_options o = engine_options_default();
    o.max_seqs = 2;
    o.max_queue = 1;
    lr_error err = {0};
    engine *e = engine_create(g.m, &o, &err);
    ck_assert_msg(e != NULL, "engine_create: %s", err.msg);
    collector c[4];
    memset(c, 0, sizeof c);
    job a = make_job(4, 8, 2), b = make_job(5, 9, 6), q = make_job(3, 11, 2);
    submit_ok(e, &a, &c[0]);
    submit_ok(e, &b, &c[1]);
    submit_ok(e, &q, &c[2]);   /* waits: both slots are taken */
    job fourth = make_job(3, 10, 3);
    engine_request r = make_request(&fourth, &c[3]);
    ck_assert_int_eq(engine_submit(e, &r, NULL, &err), LR_EBUSY);
    ck_assert_msg(strstr(err.msg, "busy") != NULL, "message \"%s\" lacks \"busy\"", err.msg);
    ck_assert_int_eq(engine_running(e), 3);
    engine_stats st;
    ck_assert_int_ge(engine_step(e, &err), 0);
    engine_stats_get(e, &st);
    ck_assert_int_eq(st.running, 2);
    ck_assert_int_eq(st.waiting, 1);
    ck_assert_int_eq(c[2].n, 0);
    /* a finishes after its second token; then the waiting one starts */
    ck_assert_int_ge(engine_step(e, &err), 0);
    ck_assert_int_eq(c[0].done_calls, 1);
    submit_ok(e, &fourth, &c[3]);
    run_to_end(e);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(c[i].done_calls, 1);
    ck_assert_int_eq(c[1].n, 6);
    ck_assert_int_eq(c[2].n, 2);
    ck_assert_int_eq(c[3].n, 3);
    engine_destroy(e);
}
END_TEST

START_TEST(test_submit_rejects_on_the_fly_adapter_with_fewer_layers_than_the_model)
{
    /* The same check engine_submit makes for merged weights ("merged weights are for
     * another model") and variant_merge makes for a mix ("adapter has 1 layers, base
     * model has 2"). Without it, the first step's variant_apply reads
     * lora_weights_get(w, 1, p) past the end of a 1-layer table. */
    lora_weights *w = lora_weights_new(1);
    ck_assert_ptr_nonnull(w);
    lora_matrix *lm = lora_weights_at(w, 0, PROJ_Q);
    lm->r = 2;
    lm->scale = 1.0f;
    lm->a = calloc(2 * HIDDEN, sizeof(float));
    lm->bt = calloc((size_t)tiny_proj_out[0] * 2, sizeof(float));
    ck_assert(lm->a && lm->bt);
    w->max_rank = 2;
    variant_mix mix = {.n = 1, .t = {{w, 1.0f}}};
    lr_error err = {0};
    ck_assert_ptr_null(variant_merge(g.m, &mix, &err));   /* merging it is refused */

    engine *e = new_engine(g.m, 4, 0);
    job j = make_job(4, 5, 3);
    j.lora = &mix;
    collector c;
    memset(&c, 0, sizeof c);
    engine_request r = make_request(&j, &c);
    memset(&err, 0, sizeof err);
    int rc = engine_submit(e, &r, NULL, &err);
    if (rc == 0) {
        engine_destroy(e);   /* finishes it with ERROR before any step reads the table */
        lora_weights_free(w);
        ck_abort_msg("engine_submit accepted an on-the-fly adapter with 1 layer for a "
                     "2-layer model (core/engine.c engine_submit checks req->merged but not "
                     "req->lora); engine_step would read past the adapter's table");
    }
    ck_assert_msg(strstr(err.msg, "layer") != NULL, "message \"%s\" does not name the layer "
                  "mismatch", err.msg);
    ck_assert_int_eq(c.done_calls, 0);
    engine_destroy(e);
    lora_weights_free(w);
}
END_TEST

static Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *core = tcase_create("core");
    tcase_add_unchecked_fixture(core, fixture_setup, fixture_teardown);
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_adapters_change_the_output_so_batch_tests_mean_something);
    tcase_add_test(core, test_batch_invariance_mixed_variants_prefill_and_decode_in_one_step);
    tcase_add_test(core, test_batch_invariance_with_prompts_prefilled_in_chunks_of_three_rows);
    tcase_add_test(core, test_batch_invariance_of_seeded_sampling);
    tcase_add_test(core, test_batch_invariance_in_crowds_of_24_and_80_sequences);
    tcase_add_test(core, test_merged_equals_on_the_fly_for_each_adapter);
    tcase_add_test(core, test_merged_mix_equals_on_the_fly_mix);
    tcase_add_test(core, test_merged_alone_takes_w_only_in_steps_where_every_row_is_on_it);
    tcase_add_test(core, test_greedy_token_is_top_logprob_and_logprobs_are_normalized);
    tcase_add_test(core, test_no_logprob_leaves_the_tokens_and_drops_only_the_logprob);
    tcase_add_test(core, test_finishes_with_length_after_exactly_max_tokens);
    tcase_add_test(core, test_token_callback_returning_nonzero_finishes_with_stop);
    tcase_add_test(core, test_eos_finishes_with_stop_unless_ignore_eos);
    tcase_add_test(core, test_context_full_finishes_with_length);
    tcase_add_test(core, test_seeded_sampling_is_reproducible_and_seed_dependent);
    tcase_add_test(core, test_base_weights_untouched_by_merge_requests_and_variant_free);
    tcase_add_test(core, test_destroy_finishes_running_requests_with_error_once);
    tcase_add_test(core, test_cancel_while_waiting_prefilling_and_decoding_frees_the_kv_cache);
    tcase_add_test(core, test_cancel_all_finishes_every_request_once);
    tcase_add_test(core, test_kv_blocks_follow_the_tokens_held_and_return_after_finish_and_cancel);
    tcase_add_test(core, test_admission_waits_for_the_prompt_blocks_in_arrival_order);
    tcase_add_test(core, test_preemption_under_a_tiny_pool_gives_every_request_its_output_alone);
    tcase_add_test(core, test_cancel_of_a_preempted_request_frees_everything);
    tcase_add_test(core, test_decoders_never_starve_a_new_prompt_and_prefill_is_chunked);
    tcase_add_test(core, test_stats_count_every_decode_and_prefill_row_once_and_the_steps_time);
    tcase_add_test(core, test_prompts_start_in_arrival_order);
    tcase_add_test(core, test_mixes_equal_in_content_compare_equal_and_batch_alike);
    tcase_add_test(core, test_non_finite_logits_finish_that_request_with_an_error);
    tcase_add_test(core, test_engine_thread_serves_submissions_from_other_threads_and_sleeps_when_idle);
    suite_add_tcase(s, core);

    TCase *lim = tcase_create("limits");
    tcase_add_unchecked_fixture(lim, fixture_setup, fixture_teardown);
    tcase_set_timeout(lim, 60);
    tcase_add_test(lim, test_engine_threads_reports_its_pool);
    tcase_add_test(lim, test_submit_rejects_empty_prompt);
    tcase_add_test(lim, test_submit_rejects_max_tokens_zero);
    tcase_add_test(lim, test_submit_rejects_negative_token_id);
    tcase_add_test(lim, test_submit_rejects_token_id_equal_to_vocab);
    tcase_add_test(lim, test_submit_rejects_prompt_as_long_as_the_context);
    tcase_add_test(lim, test_submit_rejects_prompt_longer_than_the_context);
    tcase_add_test(lim, test_submit_rejects_too_many_logprobs);
    tcase_add_test(lim, test_submit_rejects_negative_logprobs);
    tcase_add_test(lim, test_submit_rejects_negative_temperature);
    tcase_add_test(lim, test_submit_rejects_top_p_zero);
    tcase_add_test(lim, test_submit_refuses_busy_beyond_max_seqs_plus_max_queue_then_accepts);
    tcase_add_test(lim, test_request_larger_than_the_whole_pool_is_refused_at_submit);
    tcase_add_test(lim, test_submit_rejects_on_the_fly_adapter_with_fewer_layers_than_the_model);
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(engine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
