/* Tests for core/variant: a tiny model whose weights W are drawn here, and two adapters
 * whose A, Bᵀ and scales are set here by hand (no PEFT file). The references are float64
 * products over those same arrays: merged W' = W + Σ weight·s·B·A, and on the fly
 * Y = X Wᵀ + Σ weight·s·(X Aᵀ) Bᵀ, equal (within float rounding) to X W'ᵀ. The order of
 * mixes is checked as the total order variant.h describes. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "core/pool.h"
#include "core/variant.h"
#include "tests/testutil.h"

/* The model: hidden 16, intermediate 24, 2 layers, 4 heads × 4, 2 KV heads, vocab 8. */
enum { HIDDEN = 16, INTER = 24, LAYERS = 2, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 4, VOCAB = 8 };
static const char *const proj_hf[PROJ_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
static const int proj_out[PROJ_COUNT] = {HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM,
                                         KV_HEADS * HEAD_DIM, HIDDEN, INTER, INTER, HIDDEN};
static const int proj_in[PROJ_COUNT] = {HIDDEN, HIDDEN, HIDDEN, HEADS * HEAD_DIM, HIDDEN,
                                        HIDDEN, INTER};

static struct {
    char *dir;
    model *m;
    float *w[LAYERS][PROJ_COUNT];   /* W [out, in] as written to the file */
    lora_weights *ad1, *ad2;
} g;

static uint32_t seed = 2024;

static float *random_floats(size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * testutil_rnd(&seed);
    return p;
}

/* One (layer, projection) of an adapter: rank r, scale s, A [r, in] (in the layout
 * lora.h gives it for rank r: the values are random) and Bᵀ [r, out] random, taken from
 * w's arena when it has one. */
static void set_lora(lora_weights *w, int l, model_proj p, int r, float s)
{
    lora_matrix *m = lora_weights_at(w, l, p);
    m->r = r;
    m->scale = s;
    m->a_type = lora_a_type(r);
    m->a = lora_weights_alloc(w, (size_t)r * proj_in[p]);
    ck_assert_ptr_nonnull(m->a);
    for (int i = 0; i < r * proj_in[p]; i++)
        m->a[i] = 0.5f * testutil_rnd(&seed);
    if (r > w->max_rank)
        w->max_rank = r;
}

static void set_bt(lora_weights *w, int l, model_proj p)
{
    lora_matrix *m = lora_weights_at(w, l, p);
    m->bt = lora_weights_alloc(w, (size_t)m->r * proj_out[p]);
    ck_assert_ptr_nonnull(m->bt);
    for (int i = 0; i < m->r * proj_out[p]; i++)
        m->bt[i] = 0.5f * testutil_rnd(&seed);
}

static int ad1_rank(int l, model_proj p)
{
    return l == 1 && p == PROJ_K ? 8 : l == 1 && p == PROJ_DOWN ? 2 : 16;
}

static void fixture_setup(void)
{
    memset(&g, 0, sizeof g);
    g.dir = testutil_mkdtemp("variant_test");
    testutil_write_json(g.dir, "config.json",
                        json_pack("{s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:b}", "architectures",
                                  "LlamaForCausalLM", "vocab_size", VOCAB, "hidden_size",
                                  HIDDEN, "intermediate_size", INTER, "num_hidden_layers",
                                  LAYERS, "num_attention_heads", HEADS, "num_key_value_heads",
                                  KV_HEADS, "tie_word_embeddings", 1));
    testutil_tensor t[3 + LAYERS * (2 + PROJ_COUNT)];
    char names[3 + LAYERS * (2 + PROJ_COUNT)][96];
    float *embed = random_floats(VOCAB * HIDDEN, 1.0f), *ones = random_floats(HIDDEN, 0.0f);
    for (int i = 0; i < HIDDEN; i++)
        ones[i] = 1.0f;
    int n = 0;
    t[n++] = (testutil_tensor){"model.embed_tokens.weight", "F32", 2, {VOCAB, HIDDEN}, embed};
    t[n++] = (testutil_tensor){"model.norm.weight", "F32", 1, {HIDDEN}, ones};
    for (int l = 0; l < LAYERS; l++) {
        snprintf(names[n], sizeof names[n], "model.layers.%d.input_layernorm.weight", l);
        t[n] = (testutil_tensor){names[n], "F32", 1, {HIDDEN}, ones};
        n++;
        snprintf(names[n], sizeof names[n], "model.layers.%d.post_attention_layernorm.weight",
                 l);
        t[n] = (testutil_tensor){names[n], "F32", 1, {HIDDEN}, ones};
        n++;
        for (int p = 0; p < PROJ_COUNT; p++) {
            g.w[l][p] = random_floats((size_t)proj_out[p] * proj_in[p],
                                      1.0f / sqrtf((float)proj_in[p]));
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l, proj_hf[p]);
            t[n] = (testutil_tensor){names[n], "F32", 2, {proj_out[p], proj_in[p]}, g.w[l][p]};
            n++;
        }
    }
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", g.dir);
    testutil_write_safetensors(path, t, n, 0);
    free(embed);
    free(ones);
    lr_error err = {0};
    g.m = model_load(g.dir, &err);
    ck_assert_msg(g.m != NULL, "model_load: %s", err.msg);

    /* Adapter 1: every projection of both layers, r 16 — A in panels — but layer 1's k_proj
     * r 8 and down_proj r 2 (A row-major), A's of a layer back to back in an arena (as
     * peft_load lays them out), then the Bᵀ's. */
    g.ad1 = lora_weights_new(LAYERS);
    ck_assert_ptr_nonnull(g.ad1);
    size_t floats = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            floats += (size_t)ad1_rank(l, (model_proj)p) * proj_in[p];   /* multiples of 16 */
            floats += (size_t)ad1_rank(l, (model_proj)p) * proj_out[p];
        }
    ck_assert_int_eq(lora_weights_reserve(g.ad1, floats), 0);
    for (int l = 0; l < LAYERS; l++) {
        for (int p = 0; p < PROJ_COUNT; p++)
            set_lora(g.ad1, l, (model_proj)p, ad1_rank(l, (model_proj)p), p % 2 ? 2.0f : 0.5f);
        for (int p = 0; p < PROJ_COUNT; p++)
            set_bt(g.ad1, l, (model_proj)p);
    }
    /* Adapter 2: q, k, v and up (a hole at gate in the gate/up group), r 3, scale 1.5,
     * every matrix its own allocation, each A followed by its Bᵀ: q/k/v's A's are not back
     * to back. */
    g.ad2 = lora_weights_new(LAYERS);
    ck_assert_ptr_nonnull(g.ad2);
    static const model_proj ad2_proj[4] = {PROJ_Q, PROJ_K, PROJ_V, PROJ_UP};
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < 4; k++) {
            set_lora(g.ad2, l, ad2_proj[k], 3, 1.5f);
            set_bt(g.ad2, l, ad2_proj[k]);
        }
}

static void fixture_teardown(void)
{
    lora_weights_free(g.ad1);
    lora_weights_free(g.ad2);
    model_free(g.m);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            free(g.w[l][p]);
    testutil_rmdir(g.dir);
    memset(&g, 0, sizeof g);
}

/* ---- float64 references ---- */

/* W'[o][i] = W[o][i] + Σ weight·s·Σ_j B[o][j]·A[j][i], and in *mag the sum of the
 * magnitudes of every term (the scale of float rounding). */
static double merged_ref(const variant_mix *mix, int l, model_proj p, int o, int i, double *mag)
{
    int in = proj_in[p], out = proj_out[p];
    double v = g.w[l][p][(size_t)o * in + i];
    *mag = fabs(v);
    for (int t = 0; t < mix->n; t++) {
        const lora_matrix *lm = lora_weights_get(mix->t[t].w, l, p);
        for (int j = 0; j < lm->r; j++) {
            double d = (double)mix->t[t].weight * lm->scale * lm->bt[(size_t)j * out + o] *
                       lora_a_at(lm, in, j, i);
            v += d;
            *mag += fabs(d);
        }
    }
    return v;
}

static int mix_touches(const variant_mix *mix, int l, model_proj p)
{
    for (int t = 0; t < mix->n; t++)
        if (lora_weights_get(mix->t[t].w, l, p)->r)
            return 1;
    return 0;
}

/* The weight forward() would use, as floats [out, in] row-major (the model is F32, held in
 * panels, so W' is too; laid out back by wtensor_rows_f32, which test_wtensor checks
 * against the layout): the one accessor of merged weights here. Four buffers in turn,
 * so that a caller may hold two results. */
static const float *weight_of(const variant *v, int l, model_proj p)
{
    static float *ring[4];
    static int next;
    const wtensor *w = variant_weight(g.m, v, l, p);
    ck_assert_int_eq(w->type, WT_F32P);
    float **slot = &ring[next++ % 4];
    float *buf = realloc(*slot, sizeof(float) * (size_t)proj_out[p] * (size_t)proj_in[p]);
    ck_assert_ptr_nonnull(buf);
    *slot = buf;
    wtensor_rows_f32(w, proj_in[p], 0, proj_out[p], buf);
    return buf;
}

/* Every W' of v against the float64 reference; untouched matrices are W itself. */
static void check_merged(const variant *v, const variant_mix *mix, const char *what)
{
    size_t bytes = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int in = proj_in[p], out = proj_out[p];
            const float *w = weight_of(v, l, (model_proj)p);
            if (!mix_touches(mix, l, (model_proj)p)) {
                ck_assert_msg(memcmp(w, g.w[l][p], sizeof(float) * out * in) == 0,
                              "%s: layer %d %s is untouched by the mix but is not W", what, l,
                              proj_hf[p]);
                continue;
            }
            bytes += wtensor_arena_bytes(WT_F32P, out, in);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    double mag, want = merged_ref(mix, l, (model_proj)p, o, i, &mag);
                    double got = w[(size_t)o * in + i];
                    ck_assert_msg(fabs(got - want) <= 1e-6 * (1 + mag), "%s: layer %d %s "
                                  "W'[%d][%d] = %.9g, reference %.9g", what, l, proj_hf[p], o,
                                  i, got, want);
                }
        }
    ck_assert_uint_eq(v->bytes, bytes);
    /* and W itself was never written */
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            ck_assert(memcmp(weight_of(NULL, l, (model_proj)p), g.w[l][p],
                             sizeof(float) * proj_out[p] * proj_in[p]) == 0);
}

/* ================================ core ================================ */

START_TEST(test_merged_mix_is_w_plus_weighted_scaled_deltas)
{
    variant_mix mix = {.n = 2, .t = {{g.ad1, 0.6f}, {g.ad2, -0.8f}}};
    lr_error err = {0};
    variant *v = variant_merge(g.m, &mix, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    check_merged(v, &mix, "0.6·ad1 - 0.8·ad2");
    /* the fixture matters: the deltas are far above the tolerance */
    double d = fabs(weight_of(v, 0, PROJ_Q)[5] - g.w[0][PROJ_Q][5]);
    ck_assert_msg(d > 1e-2, "the mix changes W by only %g", d);
    variant_free(v);

    variant_mix one = {.n = 1, .t = {{g.ad2, 1.0f}}};   /* o, gate, down stay W */
    v = variant_merge(g.m, &one, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    check_merged(v, &one, "ad2");
    for (int l = 0; l < LAYERS; l++)
        ck_assert_ptr_null(v->w[l * PROJ_COUNT + PROJ_GATE].data);
    variant_free(v);
}
END_TEST

START_TEST(test_empty_mix_merges_to_the_base_weights)
{
    variant_mix none = {0};
    lr_error err = {0};
    variant *v = variant_merge(g.m, &none, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    ck_assert_uint_eq(v->bytes, 0);
    check_merged(v, &none, "empty mix");
    variant_free(v);
    variant_free(NULL);
}
END_TEST

START_TEST(test_paced_merge_equals_merge_bit_for_bit)
{
    variant_mix mix = {.n = 2, .t = {{g.ad2, 0.3f}, {g.ad1, 1.0f}}};
    lr_error err = {0};
    variant *a = variant_merge(g.m, &mix, &err), *b = variant_merge_paced(g.m, &mix, 0.5, &err);
    ck_assert_msg(a && b, "variant_merge: %s", err.msg);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            ck_assert(memcmp(weight_of(a, l, (model_proj)p), weight_of(b, l, (model_proj)p),
                             sizeof(float) * proj_out[p] * proj_in[p]) == 0);
    check_merged(b, &mix, "paced");
    variant_free(a);
    variant_free(b);
}
END_TEST

/* Every matrix of two W' of the same mix: data and padding (and Q8 scales) byte for byte. */
static void check_same_merge(const variant *x, const variant *y)
{
    wt_type type = model_matrix_type(g.m);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            const wtensor *wx = &x->w[l * PROJ_COUNT + p], *wy = &y->w[l * PROJ_COUNT + p];
            ck_assert_msg(memcmp(wx->data, wy->data,
                                 wtensor_data_bytes(type, proj_out[p], proj_in[p])) == 0,
                          "layer %d projection %d differs from a fresh merge", l, p);
            size_t sb = wtensor_scale_bytes(type, proj_out[p], proj_in[p]);
            ck_assert(sb == 0 || memcmp(wx->scale, wy->scale, sb) == 0);
        }
}

/* variant.c keeps the memory of the last W' freed for the next merge. A W' built there
 * (over another mix's W') equals one built in fresh memory, byte for byte over every
 * matrix's data and padding: nothing of the old W' shows through; so does a smaller W'
 * built in the larger block. */
START_TEST(test_a_merge_in_a_freed_w_prime_memory_equals_a_fresh_one)
{
    variant_mix mix1 = {.n = 1, .t = {{g.ad1, 1.0f}}};
    variant_mix mix12 = {.n = 2, .t = {{g.ad1, 0.6f}, {g.ad2, -0.8f}}};
    lr_error err = {0};
    /* a takes the kept block if there is one; then none is kept and b is fresh memory */
    variant *a = variant_merge(g.m, &mix1, &err), *b = variant_merge(g.m, &mix12, &err);
    ck_assert_msg(a && b, "variant_merge: %s", err.msg);
    ck_assert_uint_eq(a->bytes, b->bytes);   /* both touch every projection */
    const void *a_mem = a->arena;
    variant_free(a);                          /* kept, holding mix1's W' */
    variant *c = variant_merge(g.m, &mix12, &err);
    ck_assert_msg(c != NULL, "variant_merge: %s", err.msg);
    ck_assert_msg(c->arena == a_mem, "the freed W' memory was not reused");
    check_same_merge(b, c);
    check_merged(c, &mix12, "in reused memory");
    variant_free(c);                          /* kept again */
    variant_mix two = {.n = 1, .t = {{g.ad2, 1.0f}}};   /* four projections: over half */
    variant *d = variant_merge(g.m, &two, &err);
    ck_assert_msg(d != NULL, "variant_merge: %s", err.msg);
    ck_assert_uint_lt(d->bytes, b->bytes);
    ck_assert_msg(d->arena == a_mem, "the freed W' memory was not reused for a smaller W'");
    check_merged(d, &two, "in a larger reused block");
    variant_free(d);                          /* kept: another layout, data where b pads */
    variant *e = variant_merge(g.m, &mix12, &err);
    ck_assert_msg(e != NULL, "variant_merge: %s", err.msg);
    ck_assert_ptr_eq(e->arena, a_mem);
    check_same_merge(b, e);
    variant_free(e);
    variant_free(b);
}
END_TEST

/* On the fly for one group of projections that read the same X: Y_k = X W_kᵀ (float,
 * as forward computes it), then variant_small_jobs + smallmm (pool NULL or 2 threads).
 * The result must equal the float64 Y_k + Σ weight·s·(X A_kᵀ) B_kᵀ, and X W'_kᵀ with the
 * merged W' of the same mix. */
static void check_on_the_fly(const variant_mix *mix, const variant *merged, int l,
                             const model_proj *ps, int n_ps, int n, pool *pl)
{
    int in = proj_in[ps[0]];
    float *x = random_floats((size_t)n * in, 1.0f);
    float *ys[VARIANT_GROUP_MAX];
    double *base[VARIANT_GROUP_MAX];
    int outs[VARIANT_GROUP_MAX];
    for (int k = 0; k < n_ps; k++) {
        outs[k] = proj_out[ps[k]];
        ys[k] = malloc(sizeof(float) * n * outs[k]);
        base[k] = malloc(sizeof(double) * n * outs[k]);
        ck_assert(ys[k] && base[k]);
        for (int r = 0; r < n; r++)
            for (int o = 0; o < outs[k]; o++) {
                float s = 0;
                for (int i = 0; i < in; i++)
                    s += x[(size_t)r * in + i] * g.w[l][ps[k]][(size_t)o * in + i];
                ys[k][(size_t)r * outs[k] + o] = s;
                base[k][(size_t)r * outs[k] + o] = s;
            }
    }
    /* exactly the scratch variant.h promises is enough (ASan sees one float more) */
    size_t cap = variant_scratch_floats(mix, n);
    float *scratch = malloc(sizeof(float) * (cap ? cap : 1));
    ck_assert_ptr_nonnull(scratch);
    smallmm_xmt xa[VARIANT_MAX_TERMS * VARIANT_GROUP_MAX];
    smallmm_tb tb[VARIANT_MAX_TERMS * VARIANT_GROUP_MAX];
    float *sp = scratch;
    int nxa, ntb;
    variant_small_jobs(mix, l, ps, n_ps, in, x, n, ys, outs, &sp, xa, tb, &nxa, &ntb);
    /* one ·Bᵀ per (term, projection) it touches; one X·Aᵀ per term whose A's are back to
     * back and alike in the group (ad1: every group but layer 1's q/k/v, whose k has rank
     * 8; ad2: none), else one per projection */
    int want_xa = 0, want_tb = 0;
    size_t want_floats = 0;
    for (int t = 0; t < mix->n; t++) {
        int touched = 0, back_to_back = 1;
        const lora_matrix *prev = NULL;
        for (int q = 0; q < n_ps; q++) {
            const lora_matrix *lm = lora_weights_get(mix->t[t].w, l, ps[q]);
            touched += lm->r > 0;
            want_floats += (size_t)n * lm->r;
            back_to_back &= lm->r > 0 && (!prev || (lm->a == prev->a + (size_t)prev->r * in &&
                                                    lm->a_type == prev->a_type));
            prev = lm;
        }
        want_tb += touched;
        want_xa += back_to_back ? 1 : touched;
    }
    ck_assert_int_eq(ntb, want_tb);
    ck_assert_int_eq(nxa, want_xa);
    ck_assert_msg(sp == scratch + want_floats && want_floats <= cap, "scratch advanced by "
                  "%td floats, want %zu (of %zu)", sp - scratch, want_floats, cap);
    smallmm_xmt_run(pl, in, xa, nxa);
    smallmm_tb_run(pl, tb, ntb);
    for (int q = 0; q < n_ps; q++) {
        model_proj p = ps[q];
        int out = outs[q];
        const float *wm = weight_of(merged, l, p);
        for (int r = 0; r < n; r++)
            for (int o = 0; o < out; o++) {
                double want = base[q][(size_t)r * out + o], mag = fabs(want), via_merged = 0;
                for (int t = 0; t < mix->n; t++) {
                    const lora_matrix *lm = lora_weights_get(mix->t[t].w, l, p);
                    for (int j = 0; j < lm->r; j++) {
                        double xaj = 0;
                        for (int i = 0; i < in; i++)
                            xaj += (double)x[(size_t)r * in + i] * lora_a_at(lm, in, j, i);
                        double d = (double)mix->t[t].weight * lm->scale * xaj *
                                   lm->bt[(size_t)j * out + o];
                        want += d;
                        mag += fabs(d);
                    }
                }
                for (int i = 0; i < in; i++)
                    via_merged += (double)x[(size_t)r * in + i] * wm[(size_t)o * in + i];
                double got = ys[q][(size_t)r * out + o];
                ck_assert_msg(fabs(got - want) <= 1e-5 * (1 + mag), "%s n=%d layer %d %s "
                              "Y[%d][%d] = %.9g, reference %.9g", pl ? "pool" : "inline", n,
                              l, proj_hf[p], r, o, got, want);
                ck_assert_msg(fabs(got - via_merged) <= 1e-5 * (1 + mag), "%s n=%d layer %d %s "
                              "Y[%d][%d] = %.9g on the fly, %.9g through merged W'",
                              pl ? "pool" : "inline", n, l, proj_hf[p], r, o, got,
                              via_merged);
            }
    }
    for (int k = 0; k < n_ps; k++) {
        free(ys[k]);
        free(base[k]);
    }
    free(scratch);
    free(x);
}

static const model_proj qkv[3] = {PROJ_Q, PROJ_K, PROJ_V}, gate_up[2] = {PROJ_GATE, PROJ_UP};
static const model_proj o_only[1] = {PROJ_O}, down_only[1] = {PROJ_DOWN};

static void check_every_group(const variant_mix *mix, pool *pl)
{
    lr_error err = {0};
    variant *merged = variant_merge(g.m, mix, &err);
    ck_assert_msg(merged != NULL, "variant_merge: %s", err.msg);
    static const int ns[] = {1, 3, 9, SMALLMM_MAX_ROWS};
    for (int l = 0; l < LAYERS; l++)
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++) {
            check_on_the_fly(mix, merged, l, qkv, 3, ns[k], pl);
            check_on_the_fly(mix, merged, l, gate_up, 2, ns[k], pl);
            check_on_the_fly(mix, merged, l, o_only, 1, ns[k], pl);
            check_on_the_fly(mix, merged, l, down_only, 1, ns[k], pl);
        }
    variant_free(merged);
}

START_TEST(test_small_jobs_equal_reference_and_merged_product)
{
    /* the fixture takes every path: adapter 1's q/k/v A's are back to back and in panels
     * (one X·Aᵀ for the group) but for layer 1, where k's rank 8 keeps it row-major (one
     * product per projection); adapter 2's are not back to back (one per projection;
     * gate/up with a hole at gate) */
    const lora_matrix *q = lora_weights_get(g.ad1, 0, PROJ_Q);
    ck_assert_int_eq(q->a_type, WT_F32P);
    ck_assert_ptr_eq(lora_weights_get(g.ad1, 0, PROJ_K)->a, q->a + (size_t)q->r * HIDDEN);
    ck_assert_ptr_eq(lora_weights_get(g.ad1, 1, PROJ_UP)->a,
                     lora_weights_get(g.ad1, 1, PROJ_GATE)->a + 16 * HIDDEN);
    ck_assert_int_eq(lora_weights_get(g.ad1, 1, PROJ_K)->a_type, WT_F32);
    q = lora_weights_get(g.ad2, 0, PROJ_Q);
    ck_assert_int_eq(q->a_type, WT_F32);
    ck_assert_ptr_ne(lora_weights_get(g.ad2, 0, PROJ_K)->a, q->a + (size_t)q->r * HIDDEN);
    variant_mix one = {.n = 1, .t = {{g.ad1, 1.0f}}};
    variant_mix mix = {.n = 2, .t = {{g.ad2, 1.25f}, {g.ad1, 0.5f}}};
    check_every_group(&one, NULL);
    check_every_group(&mix, NULL);
    pool *pl = pool_create(2, NULL);
    ck_assert_ptr_nonnull(pl);
    check_every_group(&mix, pl);
    pool_free(pl);
}
END_TEST

/* ---- the order of mixes ---- */

static int sign(int x)
{
    return (x > 0) - (x < 0);
}

START_TEST(test_mix_order_is_total_and_by_terms_then_adapter_then_weight)
{
    /* a and b: two adapters, in address order */
    const lora_weights *a = g.ad1 < g.ad2 ? g.ad1 : g.ad2, *b = g.ad1 < g.ad2 ? g.ad2 : g.ad1;
    const variant_mix m[] = {
        {0},                                        /* 0: no adapter */
        {.n = 1, .t = {{a, 0.5f}}},                 /* 1 */
        {.n = 1, .t = {{a, 1.0f}}},                 /* 2: same adapter, larger weight */
        {.n = 1, .t = {{b, -3.0f}}},                /* 3: the later adapter, any weight */
        {.n = 2, .t = {{a, 2.0f}, {b, 1.0f}}},      /* 4: two terms after every one term */
        {.n = 2, .t = {{b, 1.0f}, {a, 2.0f}}},      /* 5: the same terms in another order */
        {.n = 3, .t = {{a, 1.0f}, {a, 1.0f}, {a, 1.0f}}},   /* 6 */
    };
    enum { N = sizeof m / sizeof m[0] };
    /* the documented order, strictly increasing along the list */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            ck_assert_msg(sign(variant_mix_cmp(&m[i], &m[j])) == sign(i - j),
                          "cmp(mix %d, mix %d) = %d", i, j, variant_mix_cmp(&m[i], &m[j]));
    /* content, not identity: copies compare equal; NULL is the empty mix */
    for (int i = 0; i < N; i++) {
        variant_mix copy = m[i];
        ck_assert_int_eq(variant_mix_cmp(&copy, &m[i]), 0);
    }
    ck_assert_int_eq(variant_mix_cmp(NULL, &m[0]), 0);
    ck_assert_int_eq(variant_mix_cmp(NULL, NULL), 0);
    ck_assert_int_lt(variant_mix_cmp(NULL, &m[1]), 0);
    ck_assert_int_gt(variant_mix_cmp(&m[1], NULL), 0);
    /* weights equal as numbers are equal */
    variant_mix z1 = {.n = 1, .t = {{a, 0.0f}}}, z2 = {.n = 1, .t = {{a, -0.0f}}};
    ck_assert_int_eq(variant_mix_cmp(&z1, &z2), 0);

    ck_assert_int_eq(variant_mix_max_rank(NULL), 0);
    ck_assert_int_eq(variant_mix_max_rank(&m[0]), 0);
    ck_assert_int_eq(variant_mix_max_rank(&m[5]), 16);    /* ad1 16, ad2 3 */
    variant_mix only2 = {.n = 1, .t = {{g.ad2, 1.0f}}};
    ck_assert_int_eq(variant_mix_max_rank(&only2), 3);
}
END_TEST

/* ================================ limits ================================ */

START_TEST(test_merge_refuses_an_adapter_for_another_layer_count)
{
    lora_weights *w = lora_weights_new(LAYERS + 1);
    ck_assert_ptr_nonnull(w);
    variant_mix mix = {.n = 2, .t = {{g.ad1, 1.0f}, {w, 1.0f}}};
    lr_error err = {0};
    ck_assert_ptr_null(variant_merge(g.m, &mix, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_msg(strstr(err.msg, "adapter has 3 layers, base model has 2") != NULL, "%s",
                  err.msg);
    lora_weights_free(w);
}
END_TEST

/* W' is made read-only once written: a stray write dies (the test expects SIGSEGV; the
 * default action is restored so ASan does not turn it into exit(1)). */
START_TEST(test_merged_weights_are_read_only)
{
    variant_mix mix = {.n = 1, .t = {{g.ad1, 1.0f}}};
    lr_error err = {0};
    variant *v = variant_merge(g.m, &mix, &err);
    ck_assert_msg(v != NULL, "variant_merge: %s", err.msg);
    testutil_rmdir(g.dir);   /* no teardown after the signal */
    g.dir = NULL;
    signal(SIGSEGV, SIG_DFL);
    *(volatile float *)variant_weight(g.m, v, 1, PROJ_UP)->data = 42.0f;
    ck_abort_msg("writing to a merged weight did not fault");
}
END_TEST

static Suite *variant_suite(void)
{
    Suite *s = suite_create("variant");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 120);
    tcase_add_checked_fixture(core, fixture_setup, fixture_teardown);
    tcase_add_test(core, test_merged_mix_is_w_plus_weighted_scaled_deltas);
    tcase_add_test(core, test_empty_mix_merges_to_the_base_weights);
    tcase_add_test(core, test_paced_merge_equals_merge_bit_for_bit);
    tcase_add_test(core, test_a_merge_in_a_freed_w_prime_memory_equals_a_fresh_one);
    tcase_add_test(core, test_small_jobs_equal_reference_and_merged_product);
    tcase_add_test(core, test_mix_order_is_total_and_by_terms_then_adapter_then_weight);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_checked_fixture(limits, fixture_setup, fixture_teardown);
    tcase_add_test(limits, test_merge_refuses_an_adapter_for_another_layer_count);
    tcase_add_test_raise_signal(limits, test_merged_weights_are_read_only, SIGSEGV);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(variant_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
