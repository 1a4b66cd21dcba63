/* Tests for core/model (config.json's own cases are test_config's): tiny Llama checkpoints
 * written here (testutil_write_safetensors, every dtype's bytes worked out here), loaded
 * back. Expected values come from a formula or from bit patterns worked out independently
 * (Python's struct module for F16, the bf16 = top half of an fp32 rule), never from the
 * loader. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/model.h"
#include "tests/testutil.h"

/* ---- the tiny model: its shape and its tensor list, written out independently of
 * core/model.c (names as in Hugging Face Llama checkpoints) ---- */

typedef struct {
    int vocab, hidden, inter, layers, heads, kv_heads, head_dim, tied;
} tiny;

static tiny tiny_default(void)
{
    tiny t = {.vocab = 16, .hidden = 8, .inter = 12, .layers = 2, .heads = 2, .kv_heads = 1,
              .head_dim = 4, .tied = 0};
    return t;
}

enum { R_EMBED, R_NORM, R_LM_HEAD, R_ATTN_NORM, R_FFN_NORM, R_PROJ };

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
    int role, layer, proj;   /* where model_load should put it */
    const char *dtype;       /* NULL: the file's dtype */
} tspec;

#define MAX_T 64

static const char *const proj_hf[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                       "self_attn.v_proj", "self_attn.o_proj",
                                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};

static void spec_add(tspec *s, int *n, int role, int layer, int proj, int64_t d0, int64_t d1,
                     const char *name)
{
    ck_assert_int_lt(*n, MAX_T);
    tspec *t = &s[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 < 0 ? 1 : 2;
    t->shape[0] = d0;
    t->shape[1] = d1 < 0 ? 0 : d1;
    t->role = role;
    t->layer = layer;
    t->proj = proj;
}

/* Every tensor of the tiny model, in a fixed order (the index k drives the values). */
static int tiny_tensors(const tiny *t, tspec *s)
{
    int n = 0, q = t->heads * t->head_dim, kv = t->kv_heads * t->head_dim;
    const int64_t outs[7] = {q, kv, kv, t->hidden, t->inter, t->inter, t->hidden};
    const int64_t ins[7] = {t->hidden, t->hidden, t->hidden, q, t->hidden, t->hidden, t->inter};
    spec_add(s, &n, R_EMBED, 0, 0, t->vocab, t->hidden, "model.embed_tokens.weight");
    spec_add(s, &n, R_NORM, 0, 0, t->hidden, -1, "model.norm.weight");
    if (!t->tied)
        spec_add(s, &n, R_LM_HEAD, 0, 0, t->vocab, t->hidden, "lm_head.weight");
    for (int l = 0; l < t->layers; l++) {
        char nm[96];
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        spec_add(s, &n, R_ATTN_NORM, l, 0, t->hidden, -1, nm);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        spec_add(s, &n, R_FFN_NORM, l, 0, t->hidden, -1, nm);
        for (int p = 0; p < 7; p++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, proj_hf[p]);
            spec_add(s, &n, R_PROJ, l, p, outs[p], ins[p], nm);
        }
    }
    return n;
}

static int64_t spec_numel(const tspec *s)
{
    return s->ndim == 1 ? s->shape[0] : s->shape[0] * s->shape[1];
}

static tspec *spec_find(tspec *s, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0)
            return &s[i];
    ck_abort_msg("test bug: no tensor %s", name);
    return NULL;
}

/* Element i of tensor k in F32 files: distinct, exactly representable values. */
static float f32_value(int k, int64_t i)
{
    return (float)((k * 131 + i * 7) % 257 - 128) / 64.0f;
}

/* Half-precision bit patterns and their exact values (Python struct '<e'). */
static const struct {
    uint16_t bits;
    float value;
} f16_table[] = {
    {0x0000, 0.0f},      {0x8000, -0.0f},          {0x3C00, 1.0f},
    {0xC000, -2.0f},     {0x3555, 0x1.554p-2f},    {0x7BFF, 65504.0f},
    {0x0001, 0x1p-24f},  {0x03FF, 0x1.ff8p-15f},   {0x0400, 0x1p-14f},
    {0xB800, -0.5f},     {0x4248, 3.140625f},      {0x7C00, INFINITY},
    {0xFC00, -INFINITY},
};

/* bfloat16 patterns: the value is the fp32 whose top 16 bits they are. */
static const struct {
    uint16_t bits;
    float value;
} bf16_table[] = {
    {0x3F80, 1.0f},       {0xC040, -3.0f},        {0x3EAB, 0x1.56p-2f},
    {0x0001, 0x1p-133f},  {0x7F7F, 0x1.fep+127f}, {0x8000, -0.0f},
    {0x4049, 3.140625f},  {0xBF00, -0.5f},        {0x0080, 0x1p-126f},
};

#define F16_N ((int)(sizeof f16_table / sizeof *f16_table))
#define BF16_N ((int)(sizeof bf16_table / sizeof *bf16_table))

/* The value model_load must produce for element i of tensor k in a file of dtype. */
static float expected_value(const char *dtype, int k, int64_t i)
{
    if (strcmp(dtype, "F16") == 0)
        return f16_table[(k + i) % F16_N].value;
    if (strcmp(dtype, "BF16") == 0)
        return bf16_table[(k + i) % BF16_N].value;
    return f32_value(k, i);
}

/* ---- files and directories ---- */

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
}

/* Writes the JSON object and drops the reference. */
static void write_json(const char *dir, const char *file, json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));
    ck_assert_ptr_nonnull(s);
    write_text(dir, file, s);
    free(s);
    json_decref(j);
}

/* config.json of the tiny model, as transformers writes it for LlamaForCausalLM. */
static json_t *tiny_config(const tiny *t)
{
    json_t *j = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, "
                          "s:i, s:i, s:s, s:b, s:b}",
                          "architectures", "LlamaForCausalLM", "model_type", "llama",
                          "vocab_size", t->vocab, "hidden_size", t->hidden,
                          "intermediate_size", t->inter, "num_hidden_layers", t->layers,
                          "num_attention_heads", t->heads, "num_key_value_heads", t->kv_heads,
                          "max_position_embeddings", 32, "rms_norm_eps", 1e-5,
                          "rope_theta", 10000.0, "hidden_act", "silu",
                          "tie_word_embeddings", t->tied, "bos_token_id", 1, "eos_token_id", 2,
                          "torch_dtype", "float32", "attention_bias", 0, "mlp_bias", 0);
    ck_assert_ptr_nonnull(j);
    return j;
}

/* Tensors s[0..n) (global indices k0..) in dtype — each tensor may override it — with
 * testutil_write_safetensors: F16/BF16 cycle through the tables, F32 uses f32_value, I32
 * holds the element index. skew 2 puts every tensor's data at an address that is not
 * 4-byte aligned in the mapping. */
static void write_tensors(const char *path, const tspec *s, int n, int k0, const char *dtype,
                          int skew)
{
    testutil_tensor t[MAX_T] = {{0}};
    unsigned char *data[MAX_T];
    for (int i = 0; i < n; i++) {
        const char *dt = s[i].dtype ? s[i].dtype : dtype;
        size_t es = strcmp(dt, "F16") == 0 || strcmp(dt, "BF16") == 0 ? 2 : 4;
        data[i] = malloc((size_t)spec_numel(&s[i]) * es);
        ck_assert_ptr_nonnull(data[i]);
        for (int64_t e = 0; e < spec_numel(&s[i]); e++) {
            uint32_t v;
            if (strcmp(dt, "F16") == 0)
                v = f16_table[(k0 + i + e) % F16_N].bits;
            else if (strcmp(dt, "BF16") == 0)
                v = bf16_table[(k0 + i + e) % BF16_N].bits;
            else if (strcmp(dt, "I32") == 0)
                v = (uint32_t)e;
            else {
                float f = f32_value(k0 + i, e);
                memcpy(&v, &f, 4);
            }
            for (size_t b = 0; b < es; b++)  /* little-endian */
                data[i][(size_t)e * es + b] = (unsigned char)(v >> (8 * b));
        }
        t[i] = (testutil_tensor){.name = s[i].name, .dtype = dt, .ndim = s[i].ndim,
                                 .shape = {s[i].shape[0], s[i].shape[1]}, .data = data[i]};
    }
    testutil_write_safetensors(path, t, n, skew);
    for (int i = 0; i < n; i++)
        free(data[i]);
}

/* Writes DIR/model.safetensors with tensors s in dtype. */
static void write_weights(const char *dir, const tspec *s, int n, const char *dtype)
{
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_tensors(path, s, n, 0, dtype, 0);
}

/* A complete tiny model directory (config.json + model.safetensors). */
static char *make_model(const tiny *t, const char *dtype)
{
    char *dir = testutil_mkdtemp("model_test");
    tspec s[MAX_T];
    int n = tiny_tensors(t, s);
    write_json(dir, "config.json", tiny_config(t));
    write_weights(dir, s, n, dtype);
    return dir;
}

static model *load_ok(const char *dir)
{
    lr_error err = {0};
    model *m = model_load(dir, &err);
    ck_assert_msg(m != NULL, "model_load(%s) failed: %s", dir, err.msg);
    return m;
}

/* The matrix model_load put at role s, or NULL for a vector. */
static const wtensor *loaded_matrix(const model *m, const tspec *s)
{
    switch (s->role) {
    case R_EMBED:     return &m->embed;
    case R_LM_HEAD:   return &m->lm_head;
    case R_NORM: case R_ATTN_NORM: case R_FFN_NORM: return NULL;
    default:          return &m->layers[s->layer].w[s->proj];
    }
}

/* Element e (row-major index) of F32 matrix s as model_load holds it, in panels: element
 * (r, c) of panel r / 16 at c·16 + r % 16 (written out here, not wtensor_f32p_offset). */
static float panel_elem(const wtensor *w, const tspec *s, int64_t e)
{
    int64_t cols = s->shape[1], r = e / cols, c = e % cols;
    size_t at = (size_t)(((r / 16) * cols + c) * 16 + r % 16);
    if (w->type == WT_BF16P) {  /* columns in pairs, an even number of them (wtensor.h) */
        int64_t ce = (cols + 1) / 2 * 2;
        at = (size_t)(((r / 16) * ce + c / 2 * 2) * 16 + r % 16 * 2 + c % 2);
        uint32_t u = (uint32_t)((const uint16_t *)w->data)[at] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    ck_assert_int_eq(w->type, WT_F32P);
    return ((const float *)w->data)[at];
}

/* Tensor s as model_load holds it, as floats: vectors as they are, F32 and BF16 matrices
 * laid out back from their panels (BF16 widened here: the bits shifted up) into buf
 * [numel]. */
static const float *loaded(const model *m, const tspec *s, float *buf)
{
    switch (s->role) {
    case R_NORM:      return m->norm;
    case R_ATTN_NORM: return m->layers[s->layer].attn_norm;
    case R_FFN_NORM:  return m->layers[s->layer].ffn_norm;
    default:          break;
    }
    const wtensor *w = loaded_matrix(m, s);
    ck_assert(w->type == WT_F32P || w->type == WT_BF16P);
    for (int64_t e = 0; e < spec_numel(s); e++)
        buf[e] = panel_elem(w, s, e);
    return buf;
}

/* Every element of every tensor equals the expected value, bit for bit (so -0.0 and
 * infinities count). */
static void check_all_one(const model *m, const tspec *s, int k, const char *dtype)
{
    float *buf = malloc(sizeof(float) * (size_t)spec_numel(s));
    ck_assert_ptr_nonnull(buf);
    const float *got = loaded(m, s, buf);
    ck_assert_msg(got != NULL, "%s not loaded", s->name);
    for (int64_t e = 0; e < spec_numel(s); e++) {
        float want = expected_value(dtype, k, e);
        uint32_t gb, wb;
        memcpy(&gb, &got[e], 4);
        memcpy(&wb, &want, 4);
        ck_assert_msg(gb == wb, "%s %s[%lld] = %a (0x%08x), expected %a (0x%08x)", dtype,
                      s->name, (long long)e, (double)got[e], gb, (double)want, wb);
    }
    free(buf);
}

static void check_all(const model *m, const tspec *s, int n, const char *dtype)
{
    for (int k = 0; k < n; k++)
        check_all_one(m, &s[k], k, dtype);
}

/* ================================ core ================================ */

START_TEST(test_untied_f32_model_loads_every_tensor_exactly)
{
    tiny t = tiny_default();
    char *dir = make_model(&t, "F32");
    model *m = load_ok(dir);
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    check_all(m, s, n, "F32");
    ck_assert_ptr_ne(m->lm_head.data, m->embed.data);
    ck_assert_str_eq(m->dtype, "F32");
    ck_assert_int_eq(m->n_shards, 1);
    /* 16·8 embed + 16·8 lm_head + 8 norm + 2 × (8+8 norms + 4 attn + 3 mlp matrices), the
     * matrices in whole panels of 16 rows (wtensor.h): q, k, v, o of 8, 4, 4, 8 rows and
     * gate, up of 12 take 16 × 8 floats each, down (8 rows of 12) 16 × 12 */
    ck_assert_uint_eq(m->weight_bytes,
                      (size_t)(128 + 128 + 8 + 2 * (16 + 6 * 16 * 8 + 16 * 12)) * 4);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_tied_model_shares_embedding_as_lm_head_without_lm_head_tensor)
{
    tiny t = tiny_default();
    t.tied = 1;
    char *dir = make_model(&t, "F32");
    model *m = load_ok(dir);
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    check_all(m, s, n, "F32");
    ck_assert_int_eq(m->cfg.tie_embeddings, 1);
    ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
    ck_assert_uint_eq(m->weight_bytes, (size_t)(128 + 8 + 2 * (16 + 6 * 16 * 8 + 16 * 12)) * 4);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_config_defaults_kv_heads_to_heads_and_head_dim_to_hidden_over_heads)
{
    /* A full load with num_key_value_heads absent: k/v_proj must then be [8, 8]. */
    tiny t = tiny_default();
    t.kv_heads = t.heads;
    char *dir = make_model(&t, "F32");
    json_t *j = tiny_config(&t);
    json_object_del(j, "num_key_value_heads");
    json_object_del(j, "max_position_embeddings");
    json_object_del(j, "rope_theta");
    json_object_del(j, "rms_norm_eps");
    json_object_del(j, "tie_word_embeddings");
    write_json(dir, "config.json", j);
    model *m = load_ok(dir);
    ck_assert_int_eq(m->cfg.n_kv_heads, 2);
    ck_assert_int_eq(m->cfg.head_dim, 4);
    ck_assert_int_eq(m->cfg.max_positions, 2048);   /* transformers' LlamaConfig defaults */
    ck_assert_float_eq(m->cfg.rope_theta, 10000.0f);
    ck_assert_float_eq(m->cfg.rms_eps, 1e-6f);
    ck_assert_int_eq(m->cfg.tie_embeddings, 0);
    int out, in;
    model_config_proj_shape(&m->cfg, PROJ_K, &out, &in);
    ck_assert_int_eq(out, 8);
    ck_assert_int_eq(in, 8);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_explicit_head_dim_sets_projection_shapes)
{
    /* head_dim 8 with hidden 8 and 2 heads: q is [16, 8], o is [8, 16], k/v [8, 8]. */
    tiny t = tiny_default();
    t.head_dim = 8;
    char *dir = make_model(&t, "F32");
    json_t *j = tiny_config(&t);
    json_object_set_new(j, "head_dim", json_integer(8));
    write_json(dir, "config.json", j);
    model *m = load_ok(dir);
    ck_assert_int_eq(m->cfg.head_dim, 8);
    int out, in;
    model_config_proj_shape(&m->cfg, PROJ_Q, &out, &in);
    ck_assert_int_eq(out, 16);
    ck_assert_int_eq(in, 8);
    model_config_proj_shape(&m->cfg, PROJ_O, &out, &in);
    ck_assert_int_eq(out, 8);
    ck_assert_int_eq(in, 16);
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    check_all(m, s, n, "F32");
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_f16_weights_convert_to_exact_fp32_values)
{
    tiny t = tiny_default();
    char *dir = make_model(&t, "F16");
    model *m = load_ok(dir);
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    check_all(m, s, n, "F16");
    ck_assert_str_eq(m->dtype, "F16");
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_bf16_weights_convert_to_exact_fp32_values)
{
    tiny t = tiny_default();
    t.tied = 1;
    char *dir = make_model(&t, "BF16");
    model *m = load_ok(dir);
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    check_all(m, s, n, "BF16");
    ck_assert_str_eq(m->dtype, "BF16");
    ck_assert_int_eq(m->weights, WT_BF16);   /* kept in the checkpoint's precision */
    ck_assert_ptr_eq(m->lm_head.data, m->embed.data);
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_unaligned_f32_tensors_are_copied_exactly)
{
    /* Safetensors does not promise alignment; an F32 tensor 2 bytes off must still load
     * (copied into the read-only arena, read without misaligned float access). */
    tiny t = tiny_default();
    char *dir = testutil_mkdtemp("model_test");
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_tensors(path, s, n, 0, "F32", 2);
    write_json(dir, "config.json", tiny_config(&t));
    model *m = load_ok(dir);
    ck_assert_str_eq(m->dtype, "F32");
    ck_assert_uint_eq((uintptr_t)m->embed.data % 4, 0);
    ck_assert_uint_eq((uintptr_t)m->layers[1].w[PROJ_UP].data % 4, 0);
    check_all(m, s, n, "F32");
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_mixed_dtype_checkpoint_loads_each_tensor_in_its_dtype)
{
    tiny t = tiny_default();
    char *dir = testutil_mkdtemp("model_test");
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    spec_find(s, n, "model.embed_tokens.weight")->dtype = "F16";
    spec_find(s, n, "model.layers.1.self_attn.o_proj.weight")->dtype = "F32";
    write_weights(dir, s, n, "BF16");
    write_json(dir, "config.json", tiny_config(&t));
    model *m = load_ok(dir);
    ck_assert_str_eq(m->dtype, "mixed");
    for (int k = 0; k < n; k++)
        check_all_one(m, &s[k], k, s[k].dtype ? s[k].dtype : "BF16");
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

/* Writes through a loaded weight pointer; the test expects the process to die of SIGSEGV.
 * The directory is removed first (the mapping outlives the unlinked file), and the
 * default SIGSEGV action is restored so ASan's handler does not turn it into exit(1). */
static void write_into_weight(char *dir, float *w)
{
    testutil_rmdir(dir);
    signal(SIGSEGV, SIG_DFL);
    *(volatile float *)w = 42.0f;
    ck_abort_msg("writing to a loaded weight did not fault: the weights are writable");
}

START_TEST(test_write_to_f32_mapped_weight_raises_sigsegv)
{
    tiny t = tiny_default();
    char *dir = make_model(&t, "F32");
    model *m = load_ok(dir);
    ck_assert_str_eq(m->dtype, "F32");
    write_into_weight(dir, (float *)m->layers[1].w[PROJ_DOWN].data);
}
END_TEST

START_TEST(test_write_to_bf16_converted_weight_raises_sigsegv)
{
    tiny t = tiny_default();
    char *dir = make_model(&t, "BF16");
    model *m = load_ok(dir);
    ck_assert_str_eq(m->dtype, "BF16");
    write_into_weight(dir, (float *)m->embed.data);
}
END_TEST

/* Two shards split after tensor `split`, and the index that names them. */
static char *make_sharded(const tiny *t, int split, json_t **index_out)
{
    char *dir = testutil_mkdtemp("model_test");
    tspec s[MAX_T];
    int n = tiny_tensors(t, s);
    write_json(dir, "config.json", tiny_config(t));
    char path[512];
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    write_tensors(path, s, split, 0, "F32", 0);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    write_tensors(path, s + split, n - split, split, "F32", 0);
    json_t *map = json_object();
    for (int k = 0; k < n; k++)
        json_object_set_new(map, s[k].name, json_string(k < split
                                                        ? "model-00001-of-00002.safetensors"
                                                        : "model-00002-of-00002.safetensors"));
    json_t *index = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 4 * 1000,
                              "weight_map", map);
    ck_assert_ptr_nonnull(index);
    if (index_out) {
        *index_out = index;
    } else {
        write_json(dir, "model.safetensors.index.json", index);
    }
    return dir;
}

START_TEST(test_sharded_model_with_index_loads_tensors_from_each_shard)
{
    tiny t = tiny_default();
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    int split = 3 + 2 + 7;   /* embed, norm, lm_head, all of layer 0 in shard 1 */
    char *dir = make_sharded(&t, split, NULL);
    model *m = load_ok(dir);
    ck_assert_int_eq(m->n_shards, 2);
    /* one tensor from each shard, spot-checked, then everything */
    const tspec *e = spec_find(s, n, "model.embed_tokens.weight");
    const tspec *d = spec_find(s, n, "model.layers.1.mlp.down_proj.weight");
    ck_assert_float_eq(panel_elem(&m->embed, e, 5), f32_value((int)(e - s), 5));
    ck_assert_float_eq(panel_elem(&m->layers[1].w[PROJ_DOWN], d, 95),
                       f32_value((int)(d - s), 95));
    check_all(m, s, n, "F32");
    model_free(m);
    testutil_rmdir(dir);
}
END_TEST

/* ================================ limits ================================ */

/* One refused model directory (config.json's own refusals are test_config's table). It
 * starts as the valid tiny F32 model, in one file or (sharded) two shards split after
 * layer 0 with their index; each field that is set changes it. */
typedef struct {
    int sharded;
    const char *dtype;          /* the file's dtype; NULL: F32 */
    const char *drop;           /* a tensor left out */
    const char *retype;         /* a tensor written as I32 */
    const char *reshape;        /* a tensor written with shape ndim/shape */
    int ndim;
    int64_t shape[2];
    const char *norm_shard;     /* the index's file name for model.norm.weight */
    const char *remove;         /* a file removed */
    const char *file;           /* a file written with len bytes (0: strlen) of text */
    const char *text;
    size_t len;
    long truncate;              /* model.safetensors cut to this many bytes */
    const char *want;           /* in the message; a printf format, %s = the directory */
} model_refusal;

/* header length 24 (little-endian), then 24 bytes that are not JSON */
#define BAD_HEADER "\x18\0\0\0\0\0\0\0{\"model.norm\":{\"dtype\"  "

static const model_refusal refusals[] = {
    {.remove = "config.json", .want = "config.json: cannot open"},   /* config errors pass */
    {.remove = "model.safetensors", .want = "no model.safetensors or "
     "model.safetensors.index.json"},
    {.remove = "model.safetensors", .file = "pytorch_model.bin",
     .text = "PK\003\004 not really a zip of pickles", .want = "only pickle pytorch_model.bin "
     "found"},
    {.drop = "model.layers.1.mlp.up_proj.weight",
     .want = "tensor 'model.layers.1.mlp.up_proj.weight' is missing"},
    {.reshape = "model.layers.0.self_attn.k_proj.weight", .ndim = 2, .shape = {8, 8},
     .want = "tensor 'model.layers.0.self_attn.k_proj.weight' is [8,8], config.json implies "
             "[4,8]"},
    {.reshape = "model.norm.weight", .ndim = 2, .shape = {1, 8},
     .want = "tensor 'model.norm.weight' is [1,8], config.json implies [8]"},
    {.dtype = "BF16", .retype = "model.layers.0.self_attn.v_proj.weight",
     .want = "tensor 'model.layers.0.self_attn.v_proj.weight' has dtype I32 (supported: F32, "
             "F16, BF16)"},
    {.file = "model.safetensors", .text = BAD_HEADER, .len = sizeof BAD_HEADER - 1,
     .want = "%s/model.safetensors: header is not valid JSON"},
    {.truncate = 200, .want = "%s/model.safetensors: header length"},  /* more than is left */
    {.sharded = 1, .norm_shard = "../x.safetensors",
     .want = "= '../x.safetensors' is not a plain file name"},
    {.sharded = 1, .remove = "model-00002-of-00002.safetensors",
     .want = "%s/model-00002-of-00002.safetensors: cannot open"},
    {.file = "generation_config.json", .text = "{\"eos_token_id\": [2, }",
     .want = "generation_config.json: invalid JSON"},
};

START_TEST(test_refused_model_message_names_the_file_and_cause)
{
    const model_refusal *c = &refusals[_i];
    tiny t = tiny_default();
    char *dir = testutil_mkdtemp("model_test");
    tspec s[MAX_T];
    int n = tiny_tensors(&t, s);
    if (c->drop) {
        tspec *d = spec_find(s, n, c->drop);
        *d = s[--n];
    }
    if (c->retype)
        spec_find(s, n, c->retype)->dtype = "I32";
    if (c->reshape) {
        tspec *r = spec_find(s, n, c->reshape);
        r->ndim = c->ndim;
        r->shape[0] = c->shape[0];
        r->shape[1] = c->shape[1];
    }
    char path[512];
    if (c->sharded) {
        testutil_rmdir(dir);
        json_t *index;
        dir = make_sharded(&t, 3 + 2 + 7, &index);
        if (c->norm_shard)
            json_object_set_new(json_object_get(index, "weight_map"), "model.norm.weight",
                                json_string(c->norm_shard));
        write_json(dir, "model.safetensors.index.json", index);
    } else {
        write_json(dir, "config.json", tiny_config(&t));
        write_weights(dir, s, n, c->dtype ? c->dtype : "F32");
    }
    if (c->remove) {
        snprintf(path, sizeof path, "%s/%s", dir, c->remove);
        ck_assert_int_eq(unlink(path), 0);
    }
    if (c->file) {
        snprintf(path, sizeof path, "%s/%s", dir, c->file);
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        size_t len = c->len ? c->len : strlen(c->text);
        ck_assert_uint_eq(fwrite(c->text, 1, len, f), len);
        ck_assert_int_eq(fclose(f), 0);
    }
    if (c->truncate) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        ck_assert_int_eq(truncate(path, c->truncate), 0);
    }
    char want[600];
    snprintf(want, sizeof want, c->want, dir);
    lr_error err = {0};
    model *m = model_load(dir, &err);
    model_free(m);
    ck_assert_msg(m == NULL, "case %d: loaded, expected failure with \"%s\"", _i, want);
    ck_assert_int_lt(err.code, 0);
    ck_assert_msg(strstr(err.msg, want) != NULL, "case %d: message \"%s\" lacks \"%s\"", _i,
                  err.msg, want);
    testutil_rmdir(dir);
}
END_TEST

static Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_untied_f32_model_loads_every_tensor_exactly);
    tcase_add_test(core, test_tied_model_shares_embedding_as_lm_head_without_lm_head_tensor);
    tcase_add_test(core, test_config_defaults_kv_heads_to_heads_and_head_dim_to_hidden_over_heads);
    tcase_add_test(core, test_explicit_head_dim_sets_projection_shapes);
    tcase_add_test(core, test_f16_weights_convert_to_exact_fp32_values);
    tcase_add_test(core, test_bf16_weights_convert_to_exact_fp32_values);
    tcase_add_test(core, test_unaligned_f32_tensors_are_copied_exactly);
    tcase_add_test(core, test_mixed_dtype_checkpoint_loads_each_tensor_in_its_dtype);
    tcase_add_test_raise_signal(core, test_write_to_f32_mapped_weight_raises_sigsegv, SIGSEGV);
    tcase_add_test_raise_signal(core, test_write_to_bf16_converted_weight_raises_sigsegv,
                                SIGSEGV);
    tcase_add_test(core, test_sharded_model_with_index_loads_tensors_from_each_shard);
    suite_add_tcase(s, core);

    TCase *lim = tcase_create("limits");
    tcase_add_loop_test(lim, test_refused_model_message_names_the_file_and_cause, 0,
                        (int)(sizeof refusals / sizeof refusals[0]));
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(model_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
