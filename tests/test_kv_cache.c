/* Tests for core/kv_cache: the block layout kv_cache.h describes — walked region by
 * region here and, through a forward pass over a model whose weights are drawn here, found
 * holding layer 0's keys (RoPE'd, transposed per KV head) and values (by position) as a
 * float64 computation of them says — and the pool's accounting: blocks page-aligned,
 * disjoint and zero when new, taken as positions grow and all given back at release,
 * reused rather than made anew, refused (LR_EBUSY, nothing changed) past the pool. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/forward.h"
#include "core/kv_cache.h"
#include "core/model.h"
#include "tests/testutil.h"

static model_config shape(int layers, int kv_heads, int head_dim)
{
    model_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = layers;
    c.n_heads = 2 * kv_heads;
    c.n_kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.hidden = c.n_heads * head_dim;
    return c;
}

/* ================================ core ================================ */

START_TEST(test_block_layout_is_transposed_keys_then_values_by_position)
{
    /* keys [n_layers, n_kv, head_dim, KV_BLOCK], then values [n_layers, KV_BLOCK, kv_dim]:
     * each region where the walk so far ends, and the two cover the block exactly */
    static const int shapes[][3] = {{1, 1, 2}, {2, 2, 8}, {3, 4, 16}, {30, 3, 64}, {2, 8, 128}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        model_config c = shape(shapes[k][0], shapes[k][1], shapes[k][2]);
        size_t off = 0;
        for (int l = 0; l < c.n_layers; l++)
            for (int g = 0; g < c.n_kv_heads; g++) {
                ck_assert_uint_eq(kv_block_kt_offset(&c, l, g), off);
                off += (size_t)c.head_dim * KV_BLOCK;
            }
        for (int l = 0; l < c.n_layers; l++) {
            ck_assert_uint_eq(kv_block_v_offset(&c, l), off);
            off += (size_t)KV_BLOCK * c.n_kv_heads * c.head_dim;
        }
        ck_assert_uint_eq(kv_block_bytes(&c), off * sizeof(float));
    }
    ck_assert_int_eq(KV_BLOCK % 16, 0);
    ck_assert_int_eq(kv_blocks_for(0), 0);
    ck_assert_int_eq(kv_blocks_for(1), 1);
    ck_assert_int_eq(kv_blocks_for(KV_BLOCK), 1);
    ck_assert_int_eq(kv_blocks_for(KV_BLOCK + 1), 2);
    ck_assert_int_eq(kv_blocks_for(10L * KV_BLOCK), 10);
}
END_TEST

/* ---- what a forward pass leaves in the blocks ---- */

/* hidden 32, 4 heads × 8, 2 KV heads, intermediate 16, 2 layers, vocab 10 */
enum { HID = 32, HEADS = 4, KVH = 2, HD = 8, INTER = 16, LAYERS = 2, VOCAB = 10 };
#define THETA 10000.0
#define EPS 1e-5

static const char *const proj_hf[PROJ_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};

START_TEST(test_forward_writes_keys_and_values_where_the_layout_says)
{
    static const int outs[PROJ_COUNT] = {HEADS * HD, KVH * HD, KVH * HD, HID, INTER, INTER,
                                         HID};
    static const int ins[PROJ_COUNT] = {HID, HID, HID, HEADS * HD, HID, HID, INTER};
    char *dir = testutil_mkdtemp("kv_test");
    testutil_write_json(dir, "config.json",
                        json_pack("{s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b}",
                                  "architectures", "LlamaForCausalLM", "vocab_size", VOCAB,
                                  "hidden_size", HID, "intermediate_size", INTER,
                                  "num_hidden_layers", LAYERS, "num_attention_heads", HEADS,
                                  "num_key_value_heads", KVH, "rope_theta", THETA,
                                  "rms_norm_eps", EPS, "tie_word_embeddings", 1));
    uint32_t s = 99;
    static float embed[VOCAB * HID], norm[LAYERS][2][HID];
    static float w[LAYERS][PROJ_COUNT][HEADS * HD * HID];   /* the largest: q and o */
    for (int i = 0; i < VOCAB * HID; i++)
        embed[i] = testutil_rnd(&s);
    testutil_tensor t[2 + LAYERS * (2 + PROJ_COUNT)];
    char names[2 + LAYERS * (2 + PROJ_COUNT)][96];
    int n = 0;
    t[n++] = (testutil_tensor){"model.embed_tokens.weight", NULL, 2, {VOCAB, HID}, embed};
    t[n++] = (testutil_tensor){"model.norm.weight", NULL, 1, {HID}, norm[0][0]};
    for (int l = 0; l < LAYERS; l++) {
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < HID; i++)
                norm[l][k][i] = 1.0f + 0.5f * testutil_rnd(&s);
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l,
                     k ? "post_attention_layernorm" : "input_layernorm");
            t[n] = (testutil_tensor){names[n], NULL, 1, {HID}, norm[l][k]};
            n++;
        }
        for (int p = 0; p < PROJ_COUNT; p++) {
            for (int i = 0; i < outs[p] * ins[p]; i++)
                w[l][p][i] = testutil_rnd(&s) / sqrtf((float)ins[p]);
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l, proj_hf[p]);
            t[n] = (testutil_tensor){names[n], NULL, 2, {outs[p], ins[p]}, w[l][p]};
            n++;
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    testutil_write_safetensors(path, t, n, 0);
    lr_error err = {0};
    model *m = model_load(dir, &err);
    ck_assert_msg(m != NULL, "model_load: %s", err.msg);

    /* a prompt over three blocks, run in two passes (the second appends at len) */
    enum { T = 2 * KV_BLOCK + 5, FIRST = KV_BLOCK - 3 };
    int tokens[T];
    for (int i = 0; i < T; i++)
        tokens[i] = (i * 7 + 3) % VOCAB;
    kv_pool *pool = kv_pool_new(&m->cfg, 8, &err);
    ck_assert_ptr_nonnull(pool);
    kv_cache kv = {0};
    ck_assert_int_eq(kv_cache_reserve(pool, &kv, T, &err), 0);
    ck_assert_int_eq(kv.n_blocks, 3);
    forward_ctx *f = forward_create(m, T, 1, &err);
    ck_assert_msg(f != NULL, "forward_create: %s", err.msg);
    float *logits = malloc(sizeof(float) * VOCAB);
    forward_seq a = {.tokens = tokens, .n_tokens = FIRST, .kv = &kv, .want_logits = 1};
    ck_assert_msg(forward_batch(f, &a, 1, logits, &err) == 0, "forward: %s", err.msg);
    ck_assert_int_eq(kv.len, FIRST);
    forward_seq b = {.tokens = tokens + FIRST, .n_tokens = T - FIRST, .kv = &kv,
                     .want_logits = 1};
    ck_assert_msg(forward_batch(f, &b, 1, logits, &err) == 0, "forward: %s", err.msg);
    ck_assert_int_eq(kv.len, T);

    /* Layer 0's input at position p is embed[token p] alone: its keys and values are
     * RoPE(W_k · h) and W_v · h, h = RMSNorm(embed) * input_layernorm (float64 here). */
    const model_config *c = &m->cfg;
    for (int p = 0; p < T; p++) {
        const float *blk = kv.blocks[p / KV_BLOCK];
        int lane = p % KV_BLOCK;
        double h[HID], ss = 0;
        for (int i = 0; i < HID; i++)
            ss += (double)embed[tokens[p] * HID + i] * embed[tokens[p] * HID + i];
        double inv = 1.0 / sqrt(ss / HID + EPS);
        for (int i = 0; i < HID; i++)
            h[i] = embed[tokens[p] * HID + i] * inv * norm[0][0][i];
        for (int g = 0; g < KVH; g++) {
            double k[HD], v[HD];
            for (int d = 0; d < HD; d++) {
                k[d] = v[d] = 0;
                for (int i = 0; i < HID; i++) {
                    k[d] += (double)w[0][PROJ_K][(g * HD + d) * HID + i] * h[i];
                    v[d] += (double)w[0][PROJ_V][(g * HD + d) * HID + i] * h[i];
                }
            }
            for (int d = 0; d < HD / 2; d++) {   /* rotate-half pairs (d, d + HD/2) */
                double ang = p * pow(THETA, -2.0 * d / HD), x = k[d], y = k[d + HD / 2];
                k[d] = x * cos(ang) - y * sin(ang);
                k[d + HD / 2] = y * cos(ang) + x * sin(ang);
            }
            for (int d = 0; d < HD; d++) {
                /* keys: [head_dim, KV_BLOCK] for (layer 0, head g); values: [KV_BLOCK,
                 * kv_dim] for layer 0, head g's at columns g·HD .. */
                float kg = blk[kv_block_kt_offset(c, 0, g) + (size_t)d * KV_BLOCK + lane];
                float vg = blk[kv_block_v_offset(c, 0) + (size_t)lane * KVH * HD + g * HD + d];
                ck_assert_msg(fabs(kg - k[d]) <= 1e-4 * (1 + fabs(k[d])), "position %d head %d "
                              "key[%d] = %.7g in the block, %.7g computed", p, g, d, kg, k[d]);
                ck_assert_msg(fabs(vg - v[d]) <= 1e-4 * (1 + fabs(v[d])), "position %d head %d "
                              "value[%d] = %.7g in the block, %.7g computed", p, g, d, vg, v[d]);
            }
        }
        /* layer 1 (its input went through attention) is written at every position too */
        double kmag = 0, vmag = 0;
        for (int g = 0; g < KVH; g++)
            for (int d = 0; d < HD; d++) {
                kmag += fabs(blk[kv_block_kt_offset(c, 1, g) + (size_t)d * KV_BLOCK + lane]);
                vmag += fabs(blk[kv_block_v_offset(c, 1) + (size_t)lane * KVH * HD + g * HD + d]);
            }
        ck_assert_msg(kmag > 0 && vmag > 0, "position %d: layer 1 keys/values are zero", p);
    }
    free(logits);
    forward_free(f);
    kv_cache_release(pool, &kv);
    kv_cache_clear(&kv);
    kv_pool_free(pool);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

/* ---- the pool ---- */

/* Fills every float of kv's blocks with a value naming (who, block); checks them later. */
static void fill(const kv_cache *kv, size_t block_floats, int who)
{
    for (int b = 0; b < kv->n_blocks; b++)
        for (size_t i = 0; i < block_floats; i++)
            kv->blocks[b][i] = (float)(who * 1000 + b);
}

static void check_fill(const kv_cache *kv, size_t block_floats, int who)
{
    for (int b = 0; b < kv->n_blocks; b++)
        for (size_t i = 0; i < block_floats; i++)
            ck_assert_msg(kv->blocks[b][i] == (float)(who * 1000 + b), "cache %d block %d "
                          "float %zu was overwritten: blocks overlap", who, b, i);
}

START_TEST(test_blocks_are_page_aligned_disjoint_zero_and_follow_the_positions)
{
    model_config c = shape(3, 2, 24);   /* a block of 9 KB: not a whole number of pages */
    size_t bf = kv_block_bytes(&c) / sizeof(float);
    lr_error err = {0};
    kv_pool *p = kv_pool_new(&c, 40, &err);   /* more than one slab of 32 */
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(kv_pool_total(p), 40);
    ck_assert_int_eq(kv_pool_used(p), 0);
    kv_cache a = {0}, b = {0};
    /* positions → blocks, one at a time as they grow */
    static const int grow[][2] = {{1, 1}, {KV_BLOCK, 1}, {KV_BLOCK + 1, 2}, {3, 2},
                                  {5 * KV_BLOCK, 5}, {0, 5}, {20 * KV_BLOCK - 1, 20}};
    for (size_t k = 0; k < sizeof grow / sizeof grow[0]; k++) {
        ck_assert_int_eq(kv_cache_reserve(p, &a, grow[k][0], &err), 0);
        ck_assert_msg(a.n_blocks == grow[k][1], "%d positions: %d blocks, want %d", grow[k][0],
                      a.n_blocks, grow[k][1]);
        ck_assert_int_ge(a.cap_blocks, a.n_blocks);
        ck_assert_int_eq(kv_pool_used(p), a.n_blocks);
    }
    ck_assert_int_eq(kv_cache_reserve(p, &b, 20 * KV_BLOCK, &err), 0);   /* the other 20 */
    ck_assert_int_eq(kv_pool_used(p), 40);
    const kv_cache *both[2] = {&a, &b};
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < both[w]->n_blocks; k++) {
            const float *blk = both[w]->blocks[k];
            ck_assert_msg((uintptr_t)blk % 4096 == 0, "block %d is not page-aligned", k);
            for (size_t i = 0; i < bf; i++)   /* new anonymous memory */
                ck_assert_msg(blk[i] == 0.0f, "new block %d holds %g at %zu", k, blk[i], i);
        }
    fill(&a, bf, 1);
    fill(&b, bf, 2);
    check_fill(&a, bf, 1);
    check_fill(&b, bf, 2);
    a.len = 20 * KV_BLOCK - 1;   /* as the forward pass would have filled it */
    kv_cache_release(p, &a);
    ck_assert_int_eq(a.n_blocks, 0);
    ck_assert_int_eq(a.len, 0);
    ck_assert_int_ge(a.cap_blocks, 20);   /* the table is kept for the next reserve */
    ck_assert_int_eq(kv_pool_used(p), 20);
    kv_cache_release(p, &b);
    ck_assert_int_eq(kv_pool_used(p), 0);
    kv_cache_clear(&a);
    kv_cache_clear(&b);
    ck_assert_ptr_null(a.blocks);
    kv_cache_clear(&a);   /* an empty cache too */
    kv_pool_free(p);
    kv_pool_free(NULL);
}
END_TEST

START_TEST(test_released_blocks_are_reused_and_never_shared)
{
    /* Four caches grow and release in a fixed pseudo-random order (bounded: 400 steps). At
     * every step no block is in two caches, the pool counts what they hold, and the
     * distinct blocks ever handed out never exceed the most held at once: the pool reuses
     * memory instead of making more. */
    enum { CACHES = 4, TOTAL = 24, STEPS = 400, MAX_SEEN = 64 };
    model_config c = shape(1, 1, 16);
    lr_error err = {0};
    kv_pool *p = kv_pool_new(&c, TOTAL, &err);
    ck_assert_ptr_nonnull(p);
    kv_cache kv[CACHES];
    memset(kv, 0, sizeof kv);
    int len[CACHES] = {0};
    const float *seen[MAX_SEEN];
    int n_seen = 0, peak = 0, busy = 0;
    uint32_t s = 7;
    for (int step = 0; step < STEPS; step++) {
        int i = (int)((testutil_rnd(&s) + 1.0f) * 2.0f) % CACHES;
        if (testutil_rnd(&s) < -0.6f) {
            kv_cache_release(p, &kv[i]);
            len[i] = 0;
        } else {
            int want = len[i] + 1 + (int)((testutil_rnd(&s) + 1.0f) * KV_BLOCK * 1.5f);
            int held = kv[i].n_blocks, rc = kv_cache_reserve(p, &kv[i], want, &err);
            if (rc == 0) {
                len[i] = want;
            } else {
                busy++;
                ck_assert_int_eq(rc, LR_EBUSY);
                ck_assert_int_eq(kv[i].n_blocks, held);
            }
        }
        int used = 0;
        for (int k = 0; k < CACHES; k++) {
            ck_assert_int_eq(kv[k].n_blocks, kv_blocks_for(len[k]));
            used += kv[k].n_blocks;
            for (int b = 0; b < kv[k].n_blocks; b++) {
                for (int k2 = 0; k2 <= k; k2++)
                    for (int b2 = 0; b2 < (k2 == k ? b : kv[k2].n_blocks); b2++)
                        ck_assert_msg(kv[k2].blocks[b2] != kv[k].blocks[b], "step %d: a block "
                                      "is in two places", step);
                int known = 0;
                for (int j = 0; j < n_seen && !known; j++)
                    known = seen[j] == kv[k].blocks[b];
                if (!known && n_seen < MAX_SEEN)
                    seen[n_seen++] = kv[k].blocks[b];
            }
        }
        ck_assert_int_eq(kv_pool_used(p), used);
        ck_assert_int_le(used, TOTAL);
        peak = used > peak ? used : peak;
        ck_assert_msg(n_seen <= peak, "step %d: %d distinct blocks handed out, at most %d held "
                      "at once", step, n_seen, peak);
    }
    ck_assert_msg(busy > 0 && peak > TOTAL / 2, "the walk must fill the pool (busy %d, peak %d)",
                  busy, peak);
    for (int k = 0; k < CACHES; k++) {
        kv_cache_release(p, &kv[k]);
        kv_cache_clear(&kv[k]);
    }
    ck_assert_int_eq(kv_pool_used(p), 0);
    kv_pool_free(p);
}
END_TEST

/* ================================ limits ================================ */

START_TEST(test_reserve_past_the_pool_is_refused_busy_and_changes_nothing)
{
    model_config c = shape(2, 1, 8);
    lr_error err = {0};
    kv_pool *p = kv_pool_new(&c, 5, &err);
    ck_assert_ptr_nonnull(p);
    kv_cache a = {0}, b = {0};
    ck_assert_int_eq(kv_cache_reserve(p, &a, 3 * KV_BLOCK, &err), 0);
    ck_assert_int_eq(kv_cache_reserve(p, &b, KV_BLOCK + 1, &err), 0);
    float *a0 = a.blocks[0], *b1 = b.blocks[1];
    /* b wants 2 more blocks, the pool has none: refused, b and the pool as they were */
    ck_assert_int_eq(kv_cache_reserve(p, &b, 4 * KV_BLOCK, &err), LR_EBUSY);
    ck_assert_int_eq(err.code, LR_EBUSY);
    ck_assert_msg(strstr(err.msg, "0 free blocks; 2 more are needed") != NULL, "%s", err.msg);
    ck_assert_int_eq(b.n_blocks, 2);
    ck_assert_ptr_eq(b.blocks[1], b1);
    ck_assert_int_eq(kv_pool_used(p), 5);
    /* a whole pool plus one, asked by an empty cache */
    kv_cache_release(p, &a);
    kv_cache c2 = {0};
    ck_assert_int_eq(kv_cache_reserve(p, &c2, 5 * KV_BLOCK + 1, &err), LR_EBUSY);
    ck_assert_int_eq(c2.n_blocks, 0);
    ck_assert_int_eq(kv_pool_used(p), 2);
    /* what fits is given, from the released blocks */
    ck_assert_int_eq(kv_cache_reserve(p, &b, 4 * KV_BLOCK, &err), 0);
    ck_assert_int_eq(kv_pool_used(p), 4);
    int from_a = b.blocks[2] == a0 || b.blocks[3] == a0;
    ck_assert_msg(from_a, "a's released blocks were not reused");
    kv_cache_release(p, &b);
    kv_cache_clear(&a);
    kv_cache_clear(&b);
    kv_cache_clear(&c2);
    kv_pool_free(p);
}
END_TEST

START_TEST(test_pool_without_a_block_is_refused)
{
    model_config c = shape(2, 2, 64);
    lr_error err = {0};
    ck_assert_ptr_null(kv_pool_new(&c, 0, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_msg(strstr(err.msg, "a KV cache of 0 blocks holds no token") != NULL, "%s",
                  err.msg);
    ck_assert_ptr_null(kv_pool_new(&c, -3, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
}
END_TEST

static Suite *kv_suite(void)
{
    Suite *s = suite_create("kv_cache");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_block_layout_is_transposed_keys_then_values_by_position);
    tcase_add_test(core, test_forward_writes_keys_and_values_where_the_layout_says);
    tcase_add_test(core, test_blocks_are_page_aligned_disjoint_zero_and_follow_the_positions);
    tcase_add_test(core, test_released_blocks_are_reused_and_never_shared);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_test(limits, test_reserve_past_the_pool_is_refused_busy_and_changes_nothing);
    tcase_add_test(limits, test_pool_without_a_block_is_refused);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(kv_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
