/* testutil: temporary directories and the tiny model the tests share. */
#include "testutil.h"

#include <check.h>
#include <stdarg.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The model and adapter writers are also linked into the fuzz harnesses (fuzz/), which run
 * outside libcheck: a failure there aborts with a message instead of ck_assert. */
static void must(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void must(int ok, const char *fmt, ...)
{
    if (ok)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "testutil: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

char *testutil_mkdtemp(const char *prefix)
{
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/tmp/%s_XXXXXX", prefix);
    char *d = strdup(tmpl);
    ck_assert_ptr_nonnull(d);
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

void testutil_rmdir(char *dir)
{
    if (!dir)
        return;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

/* ---- safetensors files ---- */

/* Bytes per element of a safetensors dtype. */
static size_t dtype_size(const char *dtype)
{
    static const struct {
        const char *name;
        size_t size;
    } sizes[] = {{"F64", 8}, {"I64", 8}, {"U64", 8}, {"F32", 4}, {"I32", 4}, {"U32", 4},
                 {"F16", 2}, {"BF16", 2}, {"I16", 2}, {"U16", 2}, {"I8", 1}, {"U8", 1},
                 {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (strcmp(dtype, sizes[i].name) == 0)
            return sizes[i].size;
    must(0, "unknown dtype '%s'", dtype);
    return 0;
}

void testutil_write_safetensors_raw(const char *path, const char *header, size_t hlen,
                                    const void *data, size_t data_len)
{
    FILE *f = fopen(path, "wb");
    must(f != NULL, "cannot create %s", path);
    unsigned char len8[8];
    for (int b = 0; b < 8; b++)
        len8[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    int ok = fwrite(len8, 1, 8, f) == 8 && (hlen == 0 || fwrite(header, 1, hlen, f) == hlen);
    for (size_t i = 0; ok && i < data_len; i++)
        ok = putc(data ? ((const unsigned char *)data)[i] : (int)(i & 0xff), f) != EOF;
    must(fclose(f) == 0 && ok, "cannot write %s", path);
}

void testutil_write_safetensors(const char *path, const testutil_tensor *t, int n, int skew)
{
    size_t cap = 256 + (size_t)(n > 0 ? n : 0) * 256 + (size_t)skew, hlen = 0, off = 0;
    char *hdr = malloc(cap);
    must(hdr != NULL, "out of memory");
    hlen += (size_t)snprintf(hdr, cap, "{");
    for (int i = 0; i < n; i++) {
        const char *dt = t[i].dtype ? t[i].dtype : "F32";
        size_t numel = 1;
        char shape[64] = "[]";
        if (t[i].ndim == 1)
            snprintf(shape, sizeof shape, "[%lld]", (long long)t[i].shape[0]);
        else if (t[i].ndim == 2)
            snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)t[i].shape[0],
                     (long long)t[i].shape[1]);
        for (int d = 0; d < t[i].ndim; d++)
            numel *= (size_t)t[i].shape[d];
        size_t bytes = numel * dtype_size(dt);
        must(strlen(t[i].name) < 160 && t[i].ndim >= 0 && t[i].ndim <= 2,
             "tensor %d: name too long or ndim %d", i, t[i].ndim);
        hlen += (size_t)snprintf(hdr + hlen, cap - hlen,
                                 "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,"
                                 "\"data_offsets\":[%zu,%zu]}",
                                 i ? "," : "", t[i].name, dt, shape, off, off + bytes);
        off += bytes;
    }
    hlen += (size_t)snprintf(hdr + hlen, cap - hlen, "}");
    while (hlen % 8)
        hdr[hlen++] = ' ';
    for (int i = 0; i < skew; i++)
        hdr[hlen++] = ' ';
    unsigned char *data = calloc(off ? off : 1, 1);
    must(data != NULL, "out of memory for %zu bytes of tensors", off);
    off = 0;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++)
            numel *= (size_t)t[i].shape[d];
        size_t bytes = numel * dtype_size(t[i].dtype ? t[i].dtype : "F32");
        if (t[i].data)
            memcpy(data + off, t[i].data, bytes);
        off += bytes;
    }
    testutil_write_safetensors_raw(path, hdr, hlen, data, off);
    free(data);
    free(hdr);
}

/* ---- the tiny model ---- */

const char *const tiny_proj_hf[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                     "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
const int tiny_proj_out[7] = {TINY_HEADS * TINY_HEAD_DIM, TINY_KV_HEADS * TINY_HEAD_DIM,
                              TINY_KV_HEADS * TINY_HEAD_DIM, TINY_HIDDEN, TINY_INTER,
                              TINY_INTER, TINY_HIDDEN};
const int tiny_proj_in[7] = {TINY_HIDDEN, TINY_HIDDEN, TINY_HIDDEN, TINY_HEADS * TINY_HEAD_DIM,
                             TINY_HIDDEN, TINY_HIDDEN, TINY_INTER};

float testutil_rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

void testutil_write_json(const char *dir, const char *file, json_t *j)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    must(j != NULL, "%s: no JSON to write", path);
    must(json_dump_file(j, path, JSON_INDENT(2)) == 0, "cannot write %s", path);
    json_decref(j);
}

/* Tensors to write with testutil_write_safetensors; data owned here. */
#define MAX_T 64
typedef struct {
    testutil_tensor t[MAX_T];
    char name[MAX_T][160];
    float *data[MAX_T];
    int n;
} tlist;

/* Appends a [d0, d1] (d1 = 0: [d0]) tensor of offset + scale * rnd values. */
static void tl_add(tlist *l, const char *name, int d0, int d1, float scale, float offset,
                   uint32_t *s)
{
    must(l->n < MAX_T, "more than %d tensors", MAX_T);
    int i = l->n++;
    snprintf(l->name[i], sizeof l->name[i], "%s", name);
    size_t ne = (size_t)d0 * (d1 > 0 ? (size_t)d1 : 1);
    l->data[i] = malloc(ne * sizeof(float));
    must(l->data[i] != NULL, "out of memory");
    for (size_t k = 0; k < ne; k++)
        l->data[i][k] = offset + scale * testutil_rnd(s);
    memset(&l->t[i], 0, sizeof l->t[i]);
    l->t[i].name = l->name[i];
    l->t[i].ndim = d1 > 0 ? 2 : 1;
    l->t[i].shape[0] = d0;
    l->t[i].shape[1] = d1 > 0 ? d1 : 0;
    l->t[i].data = l->data[i];
}

static void tl_write(tlist *l, const char *dir, const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    testutil_write_safetensors(path, l->t, l->n, 0);
    for (int i = 0; i < l->n; i++)
        free(l->data[i]);
    l->n = 0;
}

void testutil_write_tiny_model(const char *dir)
{
    testutil_write_json(dir, "config.json",
               json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, "
                         "s:b, s:i, s:i}",
                         "architectures", "LlamaForCausalLM", "model_type", "llama",
                         "vocab_size", TINY_VOCAB, "hidden_size", TINY_HIDDEN,
                         "intermediate_size", TINY_INTER, "num_hidden_layers", TINY_LAYERS,
                         "num_attention_heads", TINY_HEADS, "num_key_value_heads",
                         TINY_KV_HEADS, "max_position_embeddings", TINY_CTX, "rms_norm_eps",
                         1e-5, "rope_theta", 10000.0, "hidden_act", "silu",
                         "tie_word_embeddings", 0, "bos_token_id", 1, "eos_token_id",
                         TINY_EOS));
    static tlist l;
    uint32_t s = 12345;
    char nm[128];
    tl_add(&l, "model.embed_tokens.weight", TINY_VOCAB, TINY_HIDDEN, 1.0f, 0, &s);
    tl_add(&l, "model.norm.weight", TINY_HIDDEN, 0, 0.1f, 1.0f, &s);
    tl_add(&l, "lm_head.weight", TINY_VOCAB, TINY_HIDDEN, 0.6f, 0, &s);
    for (int L = 0; L < TINY_LAYERS; L++) {
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", L);
        tl_add(&l, nm, TINY_HIDDEN, 0, 0.1f, 1.0f, &s);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", L);
        tl_add(&l, nm, TINY_HIDDEN, 0, 0.1f, 1.0f, &s);
        for (int p = 0; p < 7; p++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", L, tiny_proj_hf[p]);
            tl_add(&l, nm, tiny_proj_out[p], tiny_proj_in[p],
                   1.7f / sqrtf((float)tiny_proj_in[p]), 0, &s);
        }
    }
    tl_write(&l, dir, "model.safetensors");
}

void testutil_write_tiny_adapter(const char *dir, int r, double alpha, unsigned mask,
                                 uint32_t seed, int in_extra, const char *base)
{
    json_t *targets = json_array();
    for (int p = 0; p < 7; p++)
        if (mask & (1u << p))
            json_array_append_new(targets, json_string(strchr(tiny_proj_hf[p], '.') + 1));
    testutil_write_json(dir, "adapter_config.json",
               json_pack("{s:s, s:s, s:s, s:i, s:f, s:o, s:f, s:s, s:b, s:b, s:b, s:b}",
                         "peft_type", "LORA", "task_type", "CAUSAL_LM",
                         "base_model_name_or_path", base, "r", r, "lora_alpha", alpha,
                         "target_modules", targets, "lora_dropout", 0.0, "bias", "none",
                         "fan_in_fan_out", 0, "inference_mode", 1, "use_rslora", 0,
                         "use_dora", 0));
    static tlist l;
    char nm[160];
    for (int L = 0; L < TINY_LAYERS; L++)
        for (int p = 0; p < 7; p++) {
            if (!(mask & (1u << p)))
                continue;
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_A.weight", L,
                     tiny_proj_hf[p]);
            tl_add(&l, nm, r, tiny_proj_in[p] + in_extra, 0.5f, 0, &seed);
            snprintf(nm, sizeof nm, "base_model.model.model.layers.%d.%s.lora_B.weight", L,
                     tiny_proj_hf[p]);
            tl_add(&l, nm, tiny_proj_out[p], r, 0.5f, 0, &seed);
        }
    tl_write(&l, dir, "adapter_model.safetensors");
}
