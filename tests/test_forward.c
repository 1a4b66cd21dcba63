/* Tests for core/forward's attention paths against each other: a sequence decoding one
 * token per step takes the grouped-query path (the query heads that share a KV head meet
 * each key and value in one pass, ATTN_ROWS heads at a time), a prompt the per-head path
 * over blocks of positions. The logits after the same tokens must agree either way, for
 * every group size around the pass's edges (1, 2, 3, 4, 6, 8 heads per KV head), with and
 * without a sliding window, and with two sequences at different lengths in one batch.
 * (The numpy reference of tests/test_reference.py checks both paths independently on the
 * fixture models, whose groups are 1 and 2.) */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/forward.h"
#include "core/kv_cache.h"
#include "core/model.h"
#include "tests/testutil.h"

enum { VOCAB = 40, HD = 16, KVH = 2, INTER = 24, LAYERS = 2, T = 37 };

/* A random Llama model with KVH KV heads of KVH·group query heads (hidden = heads·HD);
 * window > 0: a Mistral-style sliding window on every layer. */
static char *write_model(int group, int window)
{
    int heads = KVH * group, hid = heads * HD;
    char *dir = testutil_mkdtemp("fwd_test");
    json_t *cfg = json_pack("{s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:i}",
                            "architectures", window ? "MistralForCausalLM" : "LlamaForCausalLM",
                            "vocab_size", VOCAB, "hidden_size", hid, "intermediate_size",
                            INTER, "num_hidden_layers", LAYERS, "num_attention_heads", heads,
                            "num_key_value_heads", KVH, "rope_theta", 10000.0,
                            "rms_norm_eps", 1e-5, "tie_word_embeddings", 1,
                            "max_position_embeddings", 128);
    if (window)
        json_object_set_new(cfg, "sliding_window", json_integer(window));
    testutil_write_json(dir, "config.json", cfg);
    const int outs[7] = {hid, KVH * HD, KVH * HD, hid, INTER, INTER, hid};
    const int ins[7] = {hid, hid, hid, hid, hid, hid, INTER};
    testutil_tensor t[2 + LAYERS * 9];
    char names[2 + LAYERS * 9][96];
    float *bufs[2 + LAYERS * 9];
    uint32_t s = 1234u + (unsigned)group * 7u + (unsigned)window;
    int n = 0;
    bufs[n] = malloc(sizeof(float) * VOCAB * hid);
    for (int i = 0; i < VOCAB * hid; i++)
        bufs[n][i] = testutil_rnd(&s);
    t[n] = (testutil_tensor){"model.embed_tokens.weight", NULL, 2, {VOCAB, hid}, bufs[n]};
    n++;
    for (int l = 0; l < LAYERS; l++) {
        for (int k = 0; k < 2; k++) {
            bufs[n] = malloc(sizeof(float) * hid);
            for (int i = 0; i < hid; i++)
                bufs[n][i] = 1.0f + 0.5f * testutil_rnd(&s);
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l,
                     k ? "post_attention_layernorm" : "input_layernorm");
            t[n] = (testutil_tensor){names[n], NULL, 1, {hid}, bufs[n]};
            n++;
        }
        for (int p = 0; p < 7; p++) {
            bufs[n] = malloc(sizeof(float) * outs[p] * ins[p]);
            /* q and k large enough that the softmax is far from uniform */
            float gain = p <= 1 ? 3.0f : 1.0f;
            for (int i = 0; i < outs[p] * ins[p]; i++)
                bufs[n][i] = gain * testutil_rnd(&s) / sqrtf((float)ins[p]);
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l,
                     tiny_proj_hf[p]);
            t[n] = (testutil_tensor){names[n], NULL, 2, {outs[p], ins[p]}, bufs[n]};
            n++;
        }
    }
    bufs[n] = malloc(sizeof(float) * hid);
    for (int i = 0; i < hid; i++)
        bufs[n][i] = 1.0f;
    t[n] = (testutil_tensor){"model.norm.weight", NULL, 1, {hid}, bufs[n]};
    n++;
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    testutil_write_safetensors(path, t, n, 0);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    return dir;
}

/* The logits after tokens[0..len) of sequence k (k = 0, 1: two token streams), for both
 * sequences at once: prefill of `first` tokens each, then one token per step (both
 * sequences in every step, the second stopping len1 - len0 steps later). */
static void run(const model *m, const int *const *tokens, const int *first, const int *len,
                float *const *out)
{
    lr_error err = {0};
    kv_pool *pool = kv_pool_new(&m->cfg, 16, &err);
    ck_assert_ptr_nonnull(pool);
    kv_cache kv[2] = {{0}, {0}};
    forward_ctx *f = forward_create(m, 2 * T, 2, &err);
    ck_assert_msg(f != NULL, "forward_create: %s", err.msg);
    float *logits = malloc(sizeof(float) * 2 * VOCAB);
    int done[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        ck_assert_int_eq(kv_cache_reserve(pool, &kv[k], len[k], &err), 0);
    while (done[0] < len[0] || done[1] < len[1]) {
        forward_seq sq[2];
        int who[2], n = 0;
        for (int k = 0; k < 2; k++) {
            if (done[k] >= len[k])
                continue;
            int step = done[k] == 0 ? first[k] : 1;
            sq[n] = (forward_seq){.tokens = tokens[k] + done[k], .n_tokens = step,
                                  .kv = &kv[k], .want_logits = 1};
            who[n++] = k;
        }
        ck_assert_msg(forward_batch(f, sq, n, logits, &err) == 0, "forward: %s", err.msg);
        for (int i = 0; i < n; i++) {
            done[who[i]] += sq[i].n_tokens;
            if (done[who[i]] == len[who[i]])
                memcpy(out[who[i]], logits + (size_t)i * VOCAB, sizeof(float) * VOCAB);
        }
    }
    free(logits);
    forward_free(f);
    for (int k = 0; k < 2; k++) {
        kv_cache_release(pool, &kv[k]);
        kv_cache_clear(&kv[k]);
    }
    kv_pool_free(pool);
}

static void check_group(int group, int window)
{
    char *dir = write_model(group, window);
    lr_error err = {0};
    model *m = model_load(dir, &err);
    ck_assert_msg(m != NULL, "model_load: %s", err.msg);
    ck_assert_int_eq(m->cfg.n_heads / m->cfg.n_kv_heads, group);
    int a[T], b[T];
    for (int i = 0; i < T; i++) {
        a[i] = (i * 7 + 3) % VOCAB;
        b[i] = (i * 11 + 5) % VOCAB;
    }
    const int *tok[2] = {a, b};
    int len[2] = {T, T - 9};
    float la[2][VOCAB], lb[2][VOCAB];
    /* all at once (the per-head path only), then 3 / 5 prompt tokens and the rest decoded */
    run(m, tok, len, len, (float *const[]){la[0], la[1]});
    run(m, tok, (const int[]){3, 5}, len, (float *const[]){lb[0], lb[1]});
    double mag = 0;
    for (int k = 0; k < 2; k++)
        for (int v = 0; v < VOCAB; v++) {
            mag = fmax(mag, fabs(la[k][v]));
            ck_assert_msg(fabsf(la[k][v] - lb[k][v]) <= 2e-4f * (1 + fabsf(la[k][v])),
                          "group %d window %d: sequence %d logit %d is %.7g after prefill, "
                          "%.7g after decoding", group, window, k, v, la[k][v], lb[k][v]);
        }
    ck_assert_msg(mag > 0.1, "logits near zero: the comparison would prove nothing");
    model_free(m);
    testutil_rmdir(dir);
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* forward_set_profile: a prefill and three decode passes, timed phase by phase, count 4
 * passes; the phases account for (nearly) all the time of the calls and no more; the
 * projections and lm_head take some; the logits are those of the same passes unprofiled;
 * after forward_set_profile(NULL) nothing more is added. */
START_TEST(test_profile_times_every_pass_and_changes_nothing)
{
    char *dir = write_model(2, 0);
    lr_error err = {0};
    model *m = model_load(dir, &err);
    ck_assert_msg(m != NULL, "model_load: %s", err.msg);
    int tok[T];
    for (int i = 0; i < T; i++)
        tok[i] = (i * 5 + 1) % VOCAB;
    float lg[2][VOCAB];
    forward_profile prof;
    memset(&prof, 0, sizeof prof);
    double wall = 0;
    for (int profiled = 0; profiled < 2; profiled++) {
        kv_pool *pool = kv_pool_new(&m->cfg, 16, &err);
        ck_assert_ptr_nonnull(pool);
        kv_cache kv = {0};
        ck_assert_int_eq(kv_cache_reserve(pool, &kv, 13, &err), 0);
        forward_ctx *f = forward_create(m, T, 2, &err);
        ck_assert_ptr_nonnull(f);
        forward_set_profile(f, profiled ? &prof : NULL);
        ck_assert(forward_get_profile(f) == (profiled ? &prof : NULL));
        for (int step = 0, done = 0; step < 4; step++) {
            int n = step ? 1 : 10;
            forward_seq sq = {.tokens = tok + done, .n_tokens = n, .kv = &kv,
                              .want_logits = 1};
            double t0 = wall_now();
            ck_assert_int_eq(forward_batch(f, &sq, 1, lg[profiled], &err), 0);
            wall += profiled ? wall_now() - t0 : 0;
            done += n;
        }
        forward_set_profile(f, NULL);
        forward_profile before = prof;
        forward_seq sq = {.tokens = tok + 13, .n_tokens = 1, .kv = &kv, .want_logits = 0};
        ck_assert_int_eq(kv_cache_reserve(pool, &kv, 14, &err), 0);
        ck_assert_int_eq(forward_batch(f, &sq, 1, lg[profiled], &err), 0);
        ck_assert(memcmp(&before, &prof, sizeof prof) == 0);
        forward_free(f);
        kv_cache_release(pool, &kv);
        kv_cache_clear(&kv);
        kv_pool_free(pool);
    }
    ck_assert_int_eq(prof.passes, 4);
    double sum = 0;
    for (int ph = 0; ph < FWD_PH_COUNT; ph++) {
        ck_assert_msg(prof.sec[ph] >= 0, "phase %s: %g s", forward_phase_names[ph],
                      prof.sec[ph]);
        sum += prof.sec[ph];
    }
    ck_assert(prof.sec[FWD_PH_DRAW] == 0);   /* the engine's, not forward's */
    ck_assert(prof.sec[FWD_PH_QKV] > 0 && prof.sec[FWD_PH_GATE_UP] > 0 &&
              prof.sec[FWD_PH_LM_HEAD] > 0);
    ck_assert_msg(sum <= wall * 1.001 + 1e-6 && sum >= 0.5 * wall,
                  "phases sum to %g s of %g s", sum, wall);
    for (int v = 0; v < VOCAB; v++)
        ck_assert(lg[0][v] == lg[1][v]);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_decode_grouped_heads_equal_prefill_for_every_group_size)
{
    static const int groups[] = {1, 2, 3, 4, 6, 8};
    for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
        check_group(groups[i], 0);
}
END_TEST

START_TEST(test_decode_grouped_heads_equal_prefill_with_a_sliding_window)
{
    check_group(3, 8);
    check_group(6, 20);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("attention paths");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_decode_grouped_heads_equal_prefill_for_every_group_size);
    tcase_add_test(tc, test_profile_times_every_pass_and_changes_nothing);
    tcase_add_test(tc, test_decode_grouped_heads_equal_prefill_with_a_sliding_window);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
