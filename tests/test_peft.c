/* Tests for adapters/peft: PEFT adapter directories built here (testutil_write_safetensors)
 * against a tiny hand-filled Llama config. Expected
 * scales, shapes and sizes are worked out by hand from PEFT's rules, not by the loader. */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "tests/testutil.h"

/* hidden 16, intermediate 24, 4 heads × 4 = q width 16, 2 kv heads × 4 = kv width 8 */
static model_config tiny_config(int n_layers)
{
    model_config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_LLAMA;
    snprintf(c.arch_name, sizeof c.arch_name, "LlamaForCausalLM");
    c.vocab_size = 32;
    c.hidden = 16;
    c.intermediate = 24;
    c.n_layers = n_layers;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.max_positions = 64;
    c.rope_theta = 10000.0f;
    c.rms_eps = 1e-5f;
    c.bos_id = -1;
    return c;
}

/* Independent of core/config.c: names and {out, in} of the tiny model's projections. */
static const char *const pname[7] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"};
static const char *const pparent[7] = {"self_attn", "self_attn", "self_attn", "self_attn",
                                       "mlp", "mlp", "mlp"};
static const int tiny_out[7] = {16, 8, 8, 16, 24, 24, 16};
static const int tiny_in[7] = {16, 16, 16, 16, 16, 16, 24};
#define ALL7 0x7fu

#define ALL7_JSON "[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]"

/* ---- fixtures ---- */

#define TB_MAX 256

typedef struct {
    testutil_tensor t[TB_MAX];
    char name[TB_MAX][128];
    float *data[TB_MAX];
    int n;
    uint32_t seed;
} tbuild;

static float next_value(tbuild *b)
{
    b->seed = b->seed * 1664525u + 1013904223u;
    return (float)((int32_t)(b->seed >> 8) % 2001 - 1000) / 1000.0f;  /* [-1, 1] */
}

/* Adds a 2-D F32 tensor filled with deterministic values; returns its data. */
static float *tb_add(tbuild *b, const char *name, int rows, int cols)
{
    ck_assert_int_lt(b->n, TB_MAX);
    int i = b->n++;
    snprintf(b->name[i], sizeof b->name[i], "%s", name);
    b->data[i] = malloc((size_t)rows * (size_t)cols * sizeof(float));
    ck_assert_ptr_nonnull(b->data[i]);
    for (int k = 0; k < rows * cols; k++)
        b->data[i][k] = next_value(b);
    b->t[i].name = b->name[i];
    b->t[i].ndim = 2;
    b->t[i].shape[0] = rows;
    b->t[i].shape[1] = cols;
    b->t[i].data = b->data[i];
    return b->data[i];
}

static void key_name(char *dst, size_t cap, int layer, int p, char ab)
{
    snprintf(dst, cap, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer, pparent[p],
             pname[p], ab);
}

/* A [r, in] and B [out, r] for (layer, p) of the tiny model. */
static void tb_add_pair(tbuild *b, int layer, int p, int r)
{
    char nm[128];
    key_name(nm, sizeof nm, layer, p, 'A');
    tb_add(b, nm, r, tiny_in[p]);
    key_name(nm, sizeof nm, layer, p, 'B');
    tb_add(b, nm, tiny_out[p], r);
}

static void tb_add_all(tbuild *b, int n_layers, unsigned mask, int r)
{
    for (int l = 0; l < n_layers; l++)
        for (int p = 0; p < 7; p++)
            if (mask & (1u << p))
                tb_add_pair(b, l, p, r);
}

static float *tb_find(tbuild *b, const char *name)
{
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->name[i], name) == 0)
            return b->data[i];
    return NULL;
}

static void tb_write(tbuild *b, const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    testutil_write_safetensors(path, b->t, b->n, 0);
}

static void tb_free(tbuild *b)
{
    for (int i = 0; i < b->n; i++)
        free(b->data[i]);
    b->n = 0;
}

static void write_file(const char *dir, const char *file, const char *fmt, ...)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    ck_assert_int_eq(fclose(f), 0);
}

/* A plain config: r, alpha, all seven targets, extra JSON members spliced in. */
static void write_config(const char *dir, int r, double alpha, const char *extra)
{
    write_file(dir, "adapter_config.json",
               "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", "
               "\"base_model_name_or_path\": \"tiny/llama\", \"r\": %d, \"lora_alpha\": %g, "
               "\"lora_dropout\": 0.05, \"bias\": \"none\", \"fan_in_fan_out\": false, "
               "\"inference_mode\": true, \"modules_to_save\": null, \"init_lora_weights\": true, "
               "\"revision\": null, \"megatron_core\": \"megatron.core\"%s%s}",
               r, alpha, extra && extra[0] ? ", " : "", extra ? extra : "");
}

/* Loads dir, expects failure, and checks the message contains want. */
static void expect_fail(const char *dir, const model_config *base, const peft_options *opt,
                        const char *want)
{
    lr_error err = {0};
    peft_adapter *a = peft_load(dir, base, opt, &err);
    ck_assert_msg(a == NULL, "loaded, but expected failure with \"%s\"", want);
    ck_assert_int_lt(err.code, 0);
    ck_assert_msg(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
    ck_assert_msg(strstr(err.msg, "adapter '") == err.msg, "message \"%s\" does not name the "
                  "adapter", err.msg);
}

static peft_adapter *expect_load(const char *dir, const model_config *base)
{
    lr_error err = {0};
    peft_adapter *a = peft_load(dir, base, NULL, &err);
    ck_assert_msg(a != NULL, "peft_load failed: %s", err.msg);
    return a;
}

/* Writes dir/adapter_model.safetensors with tensors of any dtype. */
static void write_tensors(const char *dir, const testutil_tensor *t, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    testutil_write_safetensors(path, t, n, 0);
}

/* ---- core ---- */

START_TEST(test_all_seven_projections_load_with_scale_alpha_over_r)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 1};
    tb_add_all(&b, 2, ALL7, 4);
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": " ALL7_JSON);

    peft_adapter *a = expect_load(dir, &base);
    ck_assert_int_eq(a->r, 4);
    ck_assert_float_eq(a->alpha, 8.0f);
    ck_assert_int_eq(a->use_rslora, 0);
    ck_assert_uint_eq(a->proj_mask, ALL7);
    ck_assert_int_eq(a->n_matrices, 14);
    ck_assert_str_eq(a->dtype, "F32");
    ck_assert_str_eq(a->base_model, "tiny/llama");
    ck_assert_str_eq(a->path, dir);
    ck_assert_int_eq(a->w->n_layers, 2);
    ck_assert_int_eq(a->w->max_rank, 4);
    /* per layer r·(in+out): q 128, k 96, v 96, o 128, gate 160, up 160, down 160 = 928 */
    ck_assert_uint_eq(a->w->bytes, 2 * 928 * sizeof(float));
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 7; p++) {
            const lora_matrix *m = lora_weights_get(a->w, l, (model_proj)p);
            ck_assert_int_eq(m->r, 4);
            ck_assert_float_eq(m->scale, 2.0f);  /* 8 / 4 */
            ck_assert_ptr_nonnull(m->a);
            ck_assert_ptr_nonnull(m->bt);
        }
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_rslora_scale_is_alpha_over_sqrt_r)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 2};
    tb_add_all(&b, 2, 1u << PROJ_Q | 1u << PROJ_V, 16);
    tb_write(&b, dir);
    write_config(dir, 16, 8, "\"use_rslora\": true, \"target_modules\": [\"q_proj\", \"v_proj\"]");

    peft_adapter *a = expect_load(dir, &base);
    ck_assert_int_eq(a->use_rslora, 1);
    ck_assert_float_eq(lora_weights_get(a->w, 0, PROJ_Q)->scale, 2.0f);   /* 8 / sqrt(16) */
    ck_assert_float_eq(lora_weights_get(a->w, 1, PROJ_V)->scale, 2.0f);
    ck_assert_int_eq(lora_weights_get(a->w, 0, PROJ_K)->r, 0);            /* untargeted */
    ck_assert_ptr_null(lora_weights_get(a->w, 0, PROJ_K)->a);
    ck_assert_uint_eq(a->proj_mask, 1u << PROJ_Q | 1u << PROJ_V);
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_rank_and_alpha_pattern_override_per_module_first_key_wins)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 3};
    /* rank_pattern: layer 0's down_proj → 1 (first key wins over "down_proj"), other
     * down_proj → 2; alpha_pattern: q_proj → 16. Everything else r=4, alpha=8. */
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 7; p++)
            tb_add_pair(&b, l, p, p == PROJ_DOWN ? (l == 0 ? 1 : 2) : 4);
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": " ALL7_JSON ", "
                 "\"rank_pattern\": {\"model.layers.0.mlp.down_proj\": 1, \"down_proj\": 2}, "
                 "\"alpha_pattern\": {\"q_proj\": 16}");

    peft_adapter *a = expect_load(dir, &base);
    const lora_matrix *d0 = lora_weights_get(a->w, 0, PROJ_DOWN);
    const lora_matrix *d1 = lora_weights_get(a->w, 1, PROJ_DOWN);
    ck_assert_int_eq(d0->r, 1);
    ck_assert_float_eq(d0->scale, 8.0f);   /* 8 / 1 */
    ck_assert_int_eq(d1->r, 2);
    ck_assert_float_eq(d1->scale, 4.0f);   /* 8 / 2 */
    ck_assert_int_eq(lora_weights_get(a->w, 1, PROJ_Q)->r, 4);
    ck_assert_float_eq(lora_weights_get(a->w, 1, PROJ_Q)->scale, 4.0f);  /* 16 / 4 */
    ck_assert_float_eq(lora_weights_get(a->w, 1, PROJ_UP)->scale, 2.0f); /* 8 / 4 */
    ck_assert_int_eq(a->w->max_rank, 4);
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_pattern_keys_match_only_whole_dotted_suffixes)
{
    /* "proj" must not match "q_proj" ((.*\.)?(proj)$ needs a dot before it), while the
     * regex key "[qv]_proj" matches q and v. */
    model_config base = tiny_config(1);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 4};
    tb_add_pair(&b, 0, PROJ_Q, 2);
    tb_add_pair(&b, 0, PROJ_K, 4);
    tb_add_pair(&b, 0, PROJ_V, 2);
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\"], "
                 "\"rank_pattern\": {\"proj\": 3, \"[qv]_proj\": 2}");
    peft_adapter *a = expect_load(dir, &base);
    ck_assert_int_eq(lora_weights_get(a->w, 0, PROJ_Q)->r, 2);
    ck_assert_int_eq(lora_weights_get(a->w, 0, PROJ_K)->r, 4);
    ck_assert_int_eq(lora_weights_get(a->w, 0, PROJ_V)->r, 2);
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_target_modules_regex_selects_and_restricts)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 5};
    tb_add_pair(&b, 1, PROJ_Q, 4);
    tb_add_pair(&b, 1, PROJ_V, 4);
    tb_write(&b, dir);
    /* must match the whole module name: "self_attn\.(q|v)_proj" alone would not */
    write_config(dir, 4, 8, "\"target_modules\": \"model\\\\.layers\\\\.1\\\\.self_attn\\\\.(q|v)_proj\"");
    peft_adapter *a = expect_load(dir, &base);
    ck_assert_uint_eq(a->proj_mask, 1u << PROJ_Q | 1u << PROJ_V);
    ck_assert_int_eq(a->n_matrices, 2);
    peft_free(a);

    write_config(dir, 4, 8, "\"target_modules\": \"self_attn\\\\.(q|v)_proj\"");
    expect_fail(dir, &base, NULL, "do not select");

    tb_add_pair(&b, 0, PROJ_Q, 4);   /* layer 0 is outside the regex */
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": \".*\\\\.layers\\\\.1\\\\..*_proj\"");
    expect_fail(dir, &base, NULL, "layers.0.self_attn.q_proj but adapter_config.json");
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

/* Every element of A and B as in the file, in the layout lora.h gives them (written out
 * here, not through wtensor.h): rank 3 keeps A row-major, ranks 16 and 32 hold it in
 * panels of 16 rows; B is kept as Bᵀ [r, out]. */
static void check_round_trip(int r)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 6 + r};
    tb_add_all(&b, 2, ALL7, r);
    tb_write(&b, dir);
    write_config(dir, r, 2 * r, "\"target_modules\": " ALL7_JSON);

    peft_adapter *a = expect_load(dir, &base);
    char nm[128];
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 7; p++) {
            const lora_matrix *m = lora_weights_get(a->w, l, (model_proj)p);
            int in = tiny_in[p], out = tiny_out[p];
            ck_assert_int_eq(m->a_type, r % 16 ? WT_F32 : WT_F32P);
            key_name(nm, sizeof nm, l, p, 'A');
            const float *fa = tb_find(&b, nm);  /* [r, in] */
            for (int j = 0; j < r; j++)
                for (int i = 0; i < in; i++) {
                    size_t at = r % 16 ? (size_t)j * in + i
                                       : ((size_t)(j / 16) * in + i) * 16 + j % 16;
                    ck_assert(m->a[at] == fa[(size_t)j * in + i]);
                }
            key_name(nm, sizeof nm, l, p, 'B');
            const float *fb = tb_find(&b, nm);  /* [out, r] */
            for (int o = 0; o < out; o++)
                for (int j = 0; j < r; j++)
                    ck_assert(m->bt[(size_t)j * out + o] == fb[(size_t)o * r + j]);
        }
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}

START_TEST(test_lora_values_round_trip_exactly)
{
    check_round_trip(3);
    check_round_trip(16);
    check_round_trip(32);
}
END_TEST

/* A freed adapter's arena is reused by the next load of a similar size (lora.c keeps
 * it), and the new adapter's values are all its own: nothing of the old one shows. */
START_TEST(test_reused_arena_holds_only_the_new_adapters_values)
{
    model_config base = tiny_config(2);
    char *d1 = testutil_mkdtemp("peft_test"), *d2 = testutil_mkdtemp("peft_test");
    tbuild b1 = {.seed = 61}, b2 = {.seed = 62};
    tb_add_all(&b1, 2, ALL7, 3);
    tb_write(&b1, d1);
    write_config(d1, 3, 6, "\"target_modules\": " ALL7_JSON);
    tb_add_all(&b2, 2, ALL7, 3);
    tb_write(&b2, d2);
    write_config(d2, 3, 6, "\"target_modules\": " ALL7_JSON);

    peft_adapter *first = expect_load(d1, &base);
    const float *arena = first->w->arena;
    ck_assert_ptr_nonnull(arena);
    peft_free(first);
    peft_adapter *a = expect_load(d2, &base);      /* takes the cached arena */
    ck_assert_ptr_eq(a->w->arena, arena);
    peft_adapter *fresh = expect_load(d2, &base);  /* the cache is empty again: new memory */
    ck_assert_ptr_ne(fresh->w->arena, arena);
    char nm[128];
    int differ = 0;
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 7; p++) {
            const lora_matrix *m = lora_weights_get(a->w, l, (model_proj)p);
            const lora_matrix *f = lora_weights_get(fresh->w, l, (model_proj)p);
            ck_assert(memcmp(m->a, f->a, (size_t)3 * tiny_in[p] * sizeof(float)) == 0);
            ck_assert(memcmp(m->bt, f->bt, (size_t)3 * tiny_out[p] * sizeof(float)) == 0);
            key_name(nm, sizeof nm, l, p, 'A');
            differ |= memcmp(m->a, tb_find(&b1, nm), (size_t)3 * tiny_in[p] * sizeof(float));
        }
    ck_assert_msg(differ, "the two adapters must differ for this test to mean anything");
    peft_free(a);
    peft_free(fresh);
    tb_free(&b1);
    tb_free(&b2);
    testutil_rmdir(d1);
    testutil_rmdir(d2);
}
END_TEST

static uint16_t bf16_bits(int i)
{
    /* sign, exponent 126..129, mantissa: exact bf16 values like ±0.5 … ±7.x */
    return (uint16_t)(((i & 1) << 15) | ((126 + i % 4) << 7) | (i * 13 % 128));
}

static float bf16_ref(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

START_TEST(test_bf16_adapter_converts_exactly)
{
    model_config base = tiny_config(1);
    char *dir = testutil_mkdtemp("peft_test");
    uint16_t a_bits[4 * 16], b_bits[8 * 4];
    for (int i = 0; i < 64; i++)
        a_bits[i] = bf16_bits(i);
    for (int i = 0; i < 32; i++)
        b_bits[i] = bf16_bits(i + 7);
    testutil_tensor t[2] = {
        {"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "BF16", 2, {4, 16},
         a_bits},
        {"base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", "BF16", 2, {8, 4},
         b_bits},
    };
    write_tensors(dir, t, 2);
    write_config(dir, 4, 4, "\"target_modules\": [\"k_proj\"]");
    peft_adapter *a = expect_load(dir, &base);
    ck_assert_str_eq(a->dtype, "BF16");
    const lora_matrix *m = lora_weights_get(a->w, 0, PROJ_K);
    ck_assert_float_eq(m->scale, 1.0f);
    for (int i = 0; i < 64; i++)
        ck_assert_float_eq(m->a[i], bf16_ref(a_bits[i]));
    for (int o = 0; o < 8; o++)  /* lora_B [8, 4] in the file, Bᵀ [4, 8] in memory */
        for (int j = 0; j < 4; j++)
            ck_assert_float_eq(m->bt[j * 8 + o], bf16_ref(b_bits[o * 4 + j]));
    peft_free(a);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_describe_reports_every_field)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 7};
    tb_add_all(&b, 2, 1u << PROJ_Q | 1u << PROJ_O | 1u << PROJ_DOWN, 2);
    tb_write(&b, dir);
    write_config(dir, 2, 5, "\"use_rslora\": true, \"target_modules\": [\"down_proj\", \"o_proj\", \"q_proj\"]");

    peft_adapter *a = expect_load(dir, &base);
    json_t *j = peft_describe(a);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "lora");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")), dir);
    ck_assert_str_eq(json_string_value(json_object_get(j, "base_model")), "tiny/llama");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "r")), 2);
    ck_assert_double_eq(json_number_value(json_object_get(j, "lora_alpha")), 5.0);
    ck_assert(json_is_true(json_object_get(j, "use_rslora")));
    ck_assert_str_eq(json_string_value(json_object_get(j, "dtype")), "F32");
    json_t *mods = json_object_get(j, "target_modules");
    ck_assert_int_eq(json_array_size(mods), 3);
    ck_assert_str_eq(json_string_value(json_array_get(mods, 0)), "q_proj");
    ck_assert_str_eq(json_string_value(json_array_get(mods, 1)), "o_proj");
    ck_assert_str_eq(json_string_value(json_array_get(mods, 2)), "down_proj");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "layers")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "matrices")), 6);
    /* per layer 2·(32 + 32 + 40) = 208 floats */
    ck_assert_int_eq(json_integer_value(json_object_get(j, "bytes")), 2 * 208 * 4);
    ck_assert_int_eq(json_object_size(j), 11);
    json_decref(j);
    peft_free(a);
    peft_free(NULL);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_without_base_layer_count_is_inferred_from_keys)
{
    model_config base = tiny_config(3);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 8};
    tb_add_pair(&b, 0, PROJ_Q, 4);
    tb_add_pair(&b, 2, PROJ_DOWN, 4);
    tb_add_pair(&b, 2, PROJ_K, 4);
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": " ALL7_JSON);

    peft_adapter *a = expect_load(dir, NULL);
    ck_assert_int_eq(a->w->n_layers, 3);
    ck_assert_int_eq(a->n_matrices, 3);
    ck_assert_int_eq(lora_weights_get(a->w, 2, PROJ_DOWN)->r, 4);
    ck_assert_int_eq(lora_weights_get(a->w, 1, PROJ_DOWN)->r, 0);
    ck_assert_uint_eq(a->proj_mask, 1u << PROJ_Q | 1u << PROJ_K | 1u << PROJ_DOWN);
    peft_free(a);
    a = expect_load(dir, &base);   /* and it fits the base it was made for */
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_layers_to_transform_restricts_layers)
{
    model_config base = tiny_config(3);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 9};
    tb_add_pair(&b, 1, PROJ_Q, 4);
    tb_add_pair(&b, 2, PROJ_Q, 4);
    tb_write(&b, dir);
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\"], \"layers_to_transform\": [1, 2], "
                 "\"layers_pattern\": \"layers\"");
    peft_free(expect_load(dir, &base));
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\"], \"layers_to_transform\": [1, 2]");
    peft_free(expect_load(dir, &base));
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\"], \"layers_to_transform\": []");
    peft_free(expect_load(dir, &base));   /* empty list: no restriction */
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\"], \"layers_to_transform\": 1");
    expect_fail(dir, &base, NULL, "layers.2.self_attn.q_proj but adapter_config.json");
    write_config(dir, 4, 8, "\"target_modules\": [\"q_proj\"], \"layers_to_transform\": [1, 2], "
                 "\"layers_pattern\": [\"h\", \"blocks\"]");
    expect_fail(dir, &base, NULL, "do not select");
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_all_linear_null_targets_and_fan_in_fan_out_are_accepted)
{
    model_config base = tiny_config(1);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 10};
    tb_add_all(&b, 1, ALL7, 2);
    tb_write(&b, dir);
    write_config(dir, 2, 4, "\"target_modules\": \"all-linear\"");
    peft_free(expect_load(dir, &base));
    write_file(dir, "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": 2, "
               "\"target_modules\": " ALL7_JSON ", \"exclude_modules\": null, "
               "\"rank_pattern\": {}, \"alpha_pattern\": {}, \"layers_to_transform\": null, "
               "\"layers_pattern\": null, \"use_dora\": false, \"loftq_config\": {}, "
               "\"lora_bias\": false, \"layer_replication\": null, \"fan_in_fan_out\": true, "
               "\"some_future_peft_field\": {\"x\": [1]}}");
    peft_free(expect_load(dir, &base));
    tb_free(&b);

    /* target_modules null: PEFT's Llama default is q_proj and v_proj */
    tb_add_all(&b, 1, 1u << PROJ_Q | 1u << PROJ_V, 8);
    tb_write(&b, dir);
    write_file(dir, "adapter_config.json", "{\"peft_type\": \"LORA\", \"target_modules\": null}");
    peft_adapter *a = expect_load(dir, &base);
    ck_assert_int_eq(a->r, 8);                 /* LoraConfig defaults r=8, lora_alpha=8 */
    ck_assert_float_eq(a->alpha, 8.0f);
    ck_assert_str_eq(a->base_model, "");
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_exclude_modules_deselects)
{
    model_config base = tiny_config(1);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 11};
    tb_add_pair(&b, 0, PROJ_Q, 2);
    tb_add_pair(&b, 0, PROJ_K, 2);
    tb_write(&b, dir);
    write_config(dir, 2, 4, "\"target_modules\": [\"q_proj\", \"k_proj\"], "
                 "\"exclude_modules\": [\"v_proj\"]");
    peft_free(expect_load(dir, &base));
    write_config(dir, 2, 4, "\"target_modules\": [\"q_proj\", \"k_proj\"], "
                 "\"exclude_modules\": \".*k_proj\"");
    expect_fail(dir, &base, NULL, "layers.0.self_attn.k_proj but");
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

/* A real-sized adapter (its load time is measured by `make bench`, bench_engine). */
START_TEST(test_smollm2_shaped_rank16_adapter_loads_with_every_matrix)
{
    /* SmolLM2-135M: hidden 576, intermediate 1536, 9 heads × 64, 3 kv heads; 30 layers.
     * r=16 on all seven projections ≈ 20 MB of fp32. */
    model_config base = tiny_config(30);
    base.hidden = 576;
    base.intermediate = 1536;
    base.n_heads = 9;
    base.n_kv_heads = 3;
    base.head_dim = 64;
    const int out[7] = {576, 192, 192, 576, 1536, 1536, 576};
    const int in[7] = {576, 576, 576, 576, 576, 576, 1536};
    char *dir = testutil_mkdtemp("peft_test");
    testutil_tensor *t = calloc(30 * 7 * 2, sizeof *t);
    char (*names)[128] = calloc(30 * 7 * 2, sizeof *names);
    float *ones = malloc((size_t)1536 * 16 * sizeof(float));
    ck_assert(t && names && ones);
    for (int i = 0; i < 1536 * 16; i++)
        ones[i] = 0.001f * (float)(i % 17);
    int n = 0;
    for (int l = 0; l < 30; l++)
        for (int p = 0; p < 7; p++)
            for (int ab = 0; ab < 2; ab++, n++) {
                key_name(names[n], sizeof names[n], l, p, ab ? 'B' : 'A');
                t[n].name = names[n];
                t[n].ndim = 2;
                t[n].shape[0] = ab ? out[p] : 16;
                t[n].shape[1] = ab ? 16 : in[p];
                t[n].data = ones;
            }
    write_tensors(dir, t, n);
    write_config(dir, 16, 32, "\"target_modules\": " ALL7_JSON);

    peft_adapter *a = expect_load(dir, &base);
    ck_assert_int_eq(a->n_matrices, 210);
    /* 30 layers × r 16 × Σ(in+out) 10176 × 4 bytes */
    ck_assert_uint_eq(a->w->bytes, (size_t)30 * 16 * 10176 * 4);
    peft_free(a);
    free(t);
    free(names);
    free(ones);
    testutil_rmdir(dir);
}
END_TEST

/* ---- limits: one table of bad inputs, each checked by its message ---- */

/* Key of a LoRA tensor, e.g. KEY(1, "mlp.up_proj", A). */
#define KEY(layer, module, ab) \
    "base_model.model.model.layers." #layer "." module ".lora_" #ab ".weight"

typedef struct {
    const char *name;
    int rows, cols;
} tshape;

/* One refused adapter. It starts as a valid two-layer, all-seven adapter at r=4 (random
 * F32 tensors, adapter_config.json from write_config(dir, 4, alpha, members)), then each
 * field that is set changes it. */
typedef struct {
    const char *config;     /* adapter_config.json's whole text instead of write_config's */
    const char *members;    /* JSON members after r and lora_alpha; NULL: all seven targets */
    double alpha;           /* lora_alpha; 0: 8 */
    tshape tensors[4];      /* the file holds only these (random F32, or zeros of dtype) */
    const char *dtype;
    tshape add[2];          /* tensors added to the valid ones */
    const char *poison;     /* tensor whose element poison_at becomes poison_value */
    int poison_at;
    float poison_value;
    const char *remove;     /* a file removed from the directory */
    const char *file, *text;  /* a file written into it */
    const char *load;       /* the path loaded instead of the directory */
    int no_base;            /* peft_load without a base config */
    int max_rank;           /* peft_options.max_rank; 0: the default */
    const char *want;       /* in the message; a printf format, %s = the directory */
} peft_refusal;

#define ALL7_TARGETS "\"target_modules\": " ALL7_JSON

static const peft_refusal refusals[] = {
    /* adapter_config.json: what lorad cannot run */
    {.members = ALL7_TARGETS ", \"use_dora\": true", .want = "use_dora is true"},
    {.config = "{\"peft_type\": \"LORA\", \"r\": 4, " ALL7_TARGETS ", "
               "\"modules_to_save\": [\"lm_head\"]}",
     .want = "modules_to_save is not empty (lm_head)"},
    {.config = "{\"peft_type\": \"LORA\", \"r\": 4, " ALL7_TARGETS ", \"bias\": \"all\"}",
     .want = "bias is 'all'"},
    {.config = "{\"peft_type\": \"LORA\", \"r\": 4, " ALL7_TARGETS ", "
               "\"init_lora_weights\": \"pissa_niter_4\"}",
     .want = "modifies the base weights"},
    {.config = "{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"]}",
     .want = "peft_type is 'IA3'"},
    {.config = "{\"r\": 4}", .want = "'peft_type' is missing"},
    /* adapter_config.json: broken */
    {.config = "{\"peft_type\": \"LORA\", \"r\": 4,,}",
     .want = "adapter_config.json is not valid JSON (line 1"},
    {.config = "[1, 2]", .want = "must hold a JSON object"},
    {.config = "{\"peft_type\": \"LORA\", \"r\": \"4\"}", .want = "'r' must be a positive integer"},
    {.config = "{\"peft_type\": \"LORA\", \"r\": 0}", .want = "'r' must be a positive integer"},
    {.config = "{\"peft_type\": \"LORA\", \"use_rslora\": \"yes\"}",
     .want = "'use_rslora' must be true or false, not a string"},
    {.config = "{\"peft_type\": \"LORA\", \"lora_alpha\": [8]}",
     .want = "'lora_alpha' must be a number"},
    {.config = "{\"peft_type\": \"LORA\", \"target_modules\": 7}",
     .want = "'target_modules' must be"},
    {.config = "{\"peft_type\": \"LORA\", \"rank_pattern\": {\"q_proj\": 2.5}}",
     .want = "'rank_pattern' value for 'q_proj'"},
    {.members = "\"target_modules\": \"model.*(q_proj\"",
     .want = "target_modules regex 'model.*(q_proj' is invalid: missing closing parenthesis"},
    {.members = ALL7_TARGETS ", \"rank_pattern\": {\"[q\": 2}",
     .want = "rank_pattern regex '[q' is invalid"},
    {.members = "\"target_modules\": \".*_proj\", \"layers_to_transform\": [0]",
     .want = "'layers_to_transform' cannot be used when target_modules is a string"},
    {.members = "\"target_modules\": [\"q_proj\", \"v_proj\"]",
     .want = "LoRA tensors for layers.0.self_attn.k_proj but adapter_config.json's "
             "target_modules"},
    /* a scale s = alpha / r (or alpha / sqrt r) that overflows a float, or is absurd,
     * would make every output of the adapter Inf/NaN: refused, naming the module (found by
     * fuzzing); 4e5 / 4 = 1e5, the edge, is accepted (test_scale_at_the_limit_...) */
    {.alpha = 1e39, .want = "'lora_alpha' 1e+39 does not fit in a float"},
    {.alpha = 3e38, .want = "layers.0.self_attn.q_proj: scale 7.5e+37 = lora_alpha 3e+38 / r=4 "
                            "is out of range"},
    {.alpha = -4.4e5, .want = "scale -110000 = lora_alpha -440000 / r=4 is out of range "
                              "(|s| <= 100000)"},
    {.members = ALL7_TARGETS ", \"alpha_pattern\": {\"v_proj\": 1e300}",
     .want = "layers.0.self_attn.v_proj: scale 2.5e+299 = alpha_pattern 1e+300 / r=4"},
    {.members = ALL7_TARGETS ", \"alpha_pattern\": {\"down_proj\": 3.4e38}",
     .want = "layers.0.mlp.down_proj: scale 8.5e+37 = alpha_pattern 3.4e+38 / r=4"},
    {.members = ALL7_TARGETS ", \"use_rslora\": true", .alpha = 2.2e5,
     .want = "scale 110000 = lora_alpha 220000 / sqrt r=4"},
    /* the directory */
    {.remove = "adapter_config.json", .want = "missing %s/adapter_config.json ("},
    {.remove = "adapter_model.safetensors", .want = "missing %s/adapter_model.safetensors"},
    {.remove = "adapter_model.safetensors", .file = "adapter_model.bin",
     .text = "PK\003\004 not really a zip",
     .want = "pickle adapter_model.bin is not supported (it can run code); convert it to "
             "safetensors"},
    {.load = "/nonexistent/peft/dir", .want = "cannot open the directory"},
    /* tensors the base model has no place for */
    {.add = {{"base_model.model.model.embed_tokens.lora_embedding_A", 4, 32}},
     .want = "embedding LoRA is not supported"},
    {.add = {{"base_model.model.lm_head.lora_A.weight", 4, 16}}, .want = "lm_head LoRA"},
    {.add = {{KEY(40, "self_attn.q_proj", A), 4, 16}, {KEY(40, "self_attn.q_proj", B), 16, 4}},
     .want = "adapter has layers.40 but the base model has 2 layers (adapter made for another "
             "base model?)"},
    {.add = {{KEY(0, "self_attn.qkv_proj", A), 4, 16}},
     .want = "model.layers.0.self_attn.qkv_proj, which a Llama-family base does not have"},
    {.add = {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", 4, 16}},
     .want = "unrecognized tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A."
             "default.weight'"},
    /* tensors that do not fit together */
    {.tensors = {{KEY(0, "self_attn.q_proj", A), 4, 16}, {KEY(0, "self_attn.q_proj", B), 16, 4},
                 {KEY(1, "mlp.up_proj", A), 4, 16}},
     .want = "layers.1.mlp.up_proj has lora_A but no lora_B"},
    {.tensors = {{KEY(1, "self_attn.q_proj", A), 4, 12}, {KEY(1, "self_attn.q_proj", B), 16, 4}},
     .want = "layers.1.self_attn.q_proj lora_A is [4,12], base expects [4,16] (adapter made for "
             "another base model?)"},
    {.tensors = {{KEY(0, "mlp.down_proj", A), 4, 24}, {KEY(0, "mlp.down_proj", B), 16, 3}},
     .want = "layers.0.mlp.down_proj lora_B is [16,3] but adapter_config.json gives this module "
             "r=4"},
    {.tensors = {{KEY(0, "self_attn.k_proj", A), 4, 16}, {KEY(0, "self_attn.k_proj", B), 8, 4},
                 {KEY(1, "self_attn.v_proj", A), 4, 16}, {KEY(1, "self_attn.v_proj", B), 12, 4}},
     .no_base = 1,
     .want = "layers.1.self_attn.v_proj implies key/value width 12 but layers.0.self_attn.k_proj "
             "implies 8"},
    {.tensors = {{KEY(0, "self_attn.q_proj", A), 4, 16}, {KEY(0, "self_attn.q_proj", B), 16, 4}},
     .dtype = "I32", .members = "\"target_modules\": [\"q_proj\"]",
     .want = "layers.0.self_attn.q_proj lora_A has dtype I32"},
    /* values */
    {.poison = KEY(1, "mlp.gate_proj", B), .poison_at = 37, .poison_value = NAN,
     .want = "layers.1.mlp.gate_proj lora_B contains NaN at element 37"},
    {.poison = KEY(0, "self_attn.v_proj", A), .poison_at = 63, .poison_value = -INFINITY,
     .want = "layers.0.self_attn.v_proj lora_A contains Inf at element 63"},   /* the last */
    /* limits of the daemon */
    {.max_rank = 2, .want = "has rank 4, above the limit of 2"},
};

START_TEST(test_refused_adapter_message_names_the_adapter_and_the_cause)
{
    const peft_refusal *c = &refusals[_i];
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 42};
    if (c->tensors[0].name && c->dtype) {
        testutil_tensor t[4];
        int n = 0;
        for (; n < 4 && c->tensors[n].name; n++)
            t[n] = (testutil_tensor){c->tensors[n].name, c->dtype, 2,
                                     {c->tensors[n].rows, c->tensors[n].cols}, NULL};
        write_tensors(dir, t, n);
    } else {
        if (c->tensors[0].name)
            for (int i = 0; i < 4 && c->tensors[i].name; i++)
                tb_add(&b, c->tensors[i].name, c->tensors[i].rows, c->tensors[i].cols);
        else
            tb_add_all(&b, 2, ALL7, 4);
        for (int i = 0; i < 2 && c->add[i].name; i++)
            tb_add(&b, c->add[i].name, c->add[i].rows, c->add[i].cols);
        if (c->poison) {
            float *t = tb_find(&b, c->poison);
            ck_assert_msg(t != NULL, "case %d: no tensor %s", _i, c->poison);
            t[c->poison_at] = c->poison_value;
        }
        tb_write(&b, dir);
    }
    if (c->config)
        write_file(dir, "adapter_config.json", "%s", c->config);
    else
        write_config(dir, 4, c->alpha ? c->alpha : 8, c->members ? c->members : ALL7_TARGETS);
    char path[512];
    if (c->remove) {
        snprintf(path, sizeof path, "%s/%s", dir, c->remove);
        ck_assert_int_eq(unlink(path), 0);
    }
    if (c->file)
        write_file(dir, c->file, "%s", c->text);
    peft_options opt = peft_options_default();
    if (c->max_rank)
        opt.max_rank = c->max_rank;
    char want[512];
    snprintf(want, sizeof want, c->want, dir);

    lr_error err = {0};
    peft_adapter *a = peft_load(c->load ? c->load : dir, c->no_base ? NULL : &base, &opt, &err);
    ck_assert_msg(a == NULL, "case %d: loaded, but expected failure with \"%s\"", _i, want);
    ck_assert_int_lt(err.code, 0);
    ck_assert_msg(strstr(err.msg, want) != NULL, "case %d: message \"%s\" lacks \"%s\"", _i,
                  err.msg, want);
    ck_assert_msg(strstr(err.msg, "adapter '") == err.msg, "case %d: message \"%s\" does not "
                  "name the adapter", _i, err.msg);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

/* The edges next to the refusals: the largest scale (|s| = 1e5) and a rank at the limit
 * load, and give exactly that scale. */
START_TEST(test_scale_and_rank_at_the_limit_are_accepted)
{
    model_config base = tiny_config(2);
    char *dir = testutil_mkdtemp("peft_test");
    tbuild b = {.seed = 42};
    tb_add_all(&b, 2, ALL7, 4);
    tb_write(&b, dir);
    write_config(dir, 4, 4e5, ALL7_TARGETS);
    peft_adapter *a = expect_load(dir, &base);
    ck_assert_float_eq(lora_weights_get(a->w, 1, PROJ_DOWN)->scale, 1e5f);
    peft_free(a);

    write_config(dir, 4, 8, ALL7_TARGETS);
    peft_options opt = peft_options_default();
    ck_assert_int_eq(opt.max_rank, 256);
    opt.max_rank = 4;
    lr_error err = {0};
    a = peft_load(dir, &base, &opt, &err);
    ck_assert_msg(a != NULL, "rank 4 at max_rank 4 refused: %s", err.msg);
    peft_free(a);
    tb_free(&b);
    testutil_rmdir(dir);
}
END_TEST

static Suite *peft_suite(void)
{
    Suite *s = suite_create("peft");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_all_seven_projections_load_with_scale_alpha_over_r);
    tcase_add_test(core, test_rslora_scale_is_alpha_over_sqrt_r);
    tcase_add_test(core, test_rank_and_alpha_pattern_override_per_module_first_key_wins);
    tcase_add_test(core, test_pattern_keys_match_only_whole_dotted_suffixes);
    tcase_add_test(core, test_target_modules_regex_selects_and_restricts);
    tcase_add_test(core, test_lora_values_round_trip_exactly);
    tcase_add_test(core, test_reused_arena_holds_only_the_new_adapters_values);
    tcase_add_test(core, test_bf16_adapter_converts_exactly);
    tcase_add_test(core, test_describe_reports_every_field);
    tcase_add_test(core, test_without_base_layer_count_is_inferred_from_keys);
    tcase_add_test(core, test_layers_to_transform_restricts_layers);
    tcase_add_test(core, test_all_linear_null_targets_and_fan_in_fan_out_are_accepted);
    tcase_add_test(core, test_exclude_modules_deselects);
    tcase_add_test(core, test_smollm2_shaped_rank16_adapter_loads_with_every_matrix);
    suite_add_tcase(s, core);

    TCase *limits = tcase_create("limits");
    tcase_add_loop_test(limits, test_refused_adapter_message_names_the_adapter_and_the_cause, 0,
                        (int)(sizeof refusals / sizeof refusals[0]));
    tcase_add_test(limits, test_scale_and_rank_at_the_limit_are_accepted);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(peft_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
