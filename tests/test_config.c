/* Tests for core/config: config.json (+ generation_config.json) texts written here, read
 * by model_config_load. The refusals are one table of (config.json, generation_config.json,
 * what the message must say); the accepted configs one table of texts and the values
 * transformers' configuration classes give them (LlamaConfig, MistralConfig, Qwen2Config
 * defaults; generation_config.json overriding BOS/EOS), written down here, never read
 * back from the parser. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "tests/testutil.h"

/* The tiny Llama of test_model: vocab 16, hidden 8, intermediate 12, 2 layers, 2 heads, 1
 * KV head; SIZES(...) spells other sizes. */
#define LLAMA "\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\""
#define MISTRAL "\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\""
#define QWEN2 "\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\""
#define SIZES(vocab, hidden, inter, layers, heads, kv)                                     \
    "\"vocab_size\": " #vocab ", \"hidden_size\": " #hidden ", \"intermediate_size\": "    \
    #inter ", \"num_hidden_layers\": " #layers ", \"num_attention_heads\": " #heads        \
    ", \"num_key_value_heads\": " #kv
#define TINY SIZES(16, 8, 12, 2, 2, 1)
/* config.json of a tiny model: {arch, sizes, more members} */
#define CFG(arch, sizes, more) "{" arch ", " sizes more "}"

/* Writes text as dir/file (NULL: removes it). */
static void put(const char *dir, const char *file, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (!text) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
}

/* ================================ limits ================================ */

static const struct {
    const char *config;      /* config.json; NULL: none */
    const char *generation;  /* generation_config.json; NULL: none */
    const char *want;        /* in the message */
} refusals[] = {
    /* the files */
    {NULL, NULL, "config.json: cannot open"},
    {"{\"architectures\": [\"LlamaForCausalLM\"], hidden_size", NULL,
     "config.json: invalid JSON at line 1"},
    {"[" CFG(LLAMA, TINY, "") "]", NULL, "config.json: top level must be a JSON object"},
    {CFG(LLAMA, TINY, ", \"hidden_size\": 16"), NULL, "config.json: invalid JSON at line 1: "
     "duplicate object key"},
    {CFG(LLAMA, TINY, ""), "{\"eos_token_id\": [2, }", "generation_config.json: invalid JSON"},
    {CFG(LLAMA, TINY, ""), "[2]", "generation_config.json: top level must be a JSON object"},
    /* the architecture */
    {CFG("\"model_type\": \"llama\"", TINY, ""), NULL,
     "config.json: 'architectures' must be a list with one name"},
    {CFG("\"architectures\": [\"LlamaForCausalLM\", \"MistralForCausalLM\"]", TINY, ""), NULL,
     "'architectures' must be a list with one name"},
    {CFG("\"architectures\": \"LlamaForCausalLM\"", TINY, ""), NULL,
     "'architectures' must be a list with one name"},
    {CFG("\"architectures\": [\"GPT2LMHeadModel\"]", TINY, ""), NULL,
     "'architectures' GPT2LMHeadModel is not supported (supported: LlamaForCausalLM, "
     "MistralForCausalLM, Qwen2ForCausalLM)"},
    /* sizes */
    {CFG(LLAMA, "\"vocab_size\": 16, \"intermediate_size\": 12, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 2", ""), NULL, "missing required key 'hidden_size'"},
    {CFG(LLAMA, "\"hidden_size\": 8, \"intermediate_size\": 12, \"num_hidden_layers\": 2, "
         "\"num_attention_heads\": 2", ""), NULL, "missing required key 'vocab_size'"},
    {CFG(LLAMA, SIZES("16", 8, 12, 2, 2, 1), ""), NULL, "'vocab_size' must be an integer"},
    {CFG(LLAMA, SIZES(16, 8.0, 12, 2, 2, 1), ""), NULL, "'hidden_size' must be an integer"},
    {CFG(LLAMA, SIZES(16, 8, 12, 0, 2, 1), ""), NULL, "'num_hidden_layers' = 0 is out of range"},
    {CFG(LLAMA, SIZES(16, 8, -12, 2, 2, 1), ""), NULL,
     "'intermediate_size' = -12 is out of range"},
    {CFG(LLAMA, SIZES(16, 8, 12, 2, 1025, 1), ""), NULL,
     "'num_attention_heads' = 1025 is out of range"},
    {CFG(LLAMA, SIZES(16, 8, 12, 2, 2, 0), ""), NULL,
     "'num_key_value_heads' = 0 is out of range"},
    {CFG(LLAMA, SIZES(4294967312, 8, 12, 2, 2, 1), ""), NULL,
     "'vocab_size' = 4294967312 is out of range"},   /* 2^32 + 16: not cast to 16 */
    {CFG(LLAMA, SIZES(16, 8, 12, 2, 3, 1), ""), NULL,
     "hidden_size 8 is not a multiple of num_attention_heads 3"},
    {CFG(LLAMA, SIZES(16, 8, 12, 2, 4, 3), ""), NULL,
     "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
    {CFG(LLAMA, TINY, ", \"head_dim\": 5"), NULL, "'head_dim' 5 must be even for RoPE"},
    {CFG(LLAMA, TINY, ", \"head_dim\": 1"), NULL, "'head_dim' = 1 is out of range"},
    {CFG(LLAMA, TINY, ", \"head_dim\": 512"), NULL,
     "'head_dim' 512 is not supported (at most 256)"},
    {CFG(LLAMA, TINY, ", \"max_position_embeddings\": 0"), NULL,
     "'max_position_embeddings' = 0 is out of range"},
    /* numbers and flags */
    {CFG(LLAMA, TINY, ", \"rms_norm_eps\": 0.0"), NULL,   /* RMSNorm of a zero row: NaN */
     "'rms_norm_eps' = 0 is out of range"},
    {CFG(LLAMA, TINY, ", \"rms_norm_eps\": \"1e-5\""), NULL, "'rms_norm_eps' must be a number"},
    {CFG(LLAMA, TINY, ", \"rope_theta\": 0.5"), NULL, "'rope_theta' = 0.5 is out of range"},
    {CFG(LLAMA, TINY, ", \"tie_word_embeddings\": \"yes\""), NULL,
     "'tie_word_embeddings' must be true or false"},
    {CFG(LLAMA, TINY, ", \"hidden_act\": \"gelu\""), NULL,
     "'hidden_act' gelu is not supported (supported: silu)"},
    {CFG(LLAMA, TINY, ", \"hidden_act\": 7"), NULL, "'hidden_act' (not a string) is not supported"},
    {CFG(LLAMA, TINY, ", \"attention_bias\": true"), NULL,
     "'attention_bias' true is not supported for LlamaForCausalLM"},
    {CFG(MISTRAL, TINY, ", \"attention_bias\": true"), NULL,
     "'attention_bias' true is not supported for MistralForCausalLM"},
    {CFG(LLAMA, TINY, ", \"mlp_bias\": true"), NULL, "'mlp_bias' true is not supported"},
    /* RoPE scaling */
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}"), NULL,
     "'rope_scaling' type 'yarn' is not supported (supported: llama3, default)"},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}"), NULL,
     "'rope_scaling' type 'linear' is not supported (supported: llama3, default)"},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"factor\": 2.0}"), NULL,
     "'rope_scaling' type '(missing)' is not supported"},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": \"llama3\""), NULL,
     "'rope_scaling' must be an object"},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 0.5}"), NULL,
     "rope_scaling: config.json: 'factor' = 0.5 is out of range"},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"low_freq_factor\": 4, "
         "\"high_freq_factor\": 4}"), NULL,
     "rope_scaling high_freq_factor must exceed low_freq_factor"},
    /* sliding window */
    {CFG(MISTRAL, TINY, ", \"sliding_window\": -1"), NULL, "'sliding_window' = -1 is out of range"},
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": \"yes\""), NULL,
     "'use_sliding_window' must be true or false"},
    {CFG(QWEN2, TINY, ", \"max_window_layers\": -1"), NULL,
     "'max_window_layers' = -1 is out of range"},
    {CFG(QWEN2, TINY, ", \"sliding_window\": 4, \"layer_types\": [\"sliding_attention\", "
         "\"full_attention\"]"), NULL,
     "'layer_types' must list full_attention then sliding_attention, one per layer"},
    {CFG(QWEN2, TINY, ", \"layer_types\": [\"full_attention\"]"), NULL,
     "'layer_types' must list full_attention then sliding_attention, one per layer"},
    {CFG(QWEN2, TINY, ", \"layer_types\": [\"full_attention\", \"chunked_attention\"]"), NULL,
     "'layer_types' must list"},
    /* special tokens */
    {CFG(LLAMA, TINY, ", \"eos_token_id\": \"2\""), NULL,
     "config.json: 'eos_token_id' must be an integer or a list"},
    {CFG(LLAMA, TINY, ", \"eos_token_id\": [2, \"3\"]"), NULL,
     "config.json: 'eos_token_id' entries must be integers"},
    {CFG(LLAMA, TINY, ""), "{\"eos_token_id\": {\"id\": 2}}",
     "generation_config.json: 'eos_token_id' must be an integer or a list"},
};

START_TEST(test_refused_config_message_names_the_file_key_and_cause)
{
    char *dir = testutil_mkdtemp("config_test");
    put(dir, "config.json", refusals[_i].config);
    put(dir, "generation_config.json", refusals[_i].generation);
    model_config c;
    lr_error err = {0};
    int rc = model_config_load(dir, &c, &err);
    ck_assert_msg(rc < 0, "case %d accepted; expected a refusal with \"%s\"", _i,
                  refusals[_i].want);
    ck_assert_int_eq(err.code, rc);
    ck_assert_msg(strstr(err.msg, refusals[_i].want) != NULL, "case %d: message \"%s\" lacks "
                  "\"%s\"", _i, err.msg, refusals[_i].want);
    testutil_rmdir(dir);
}
END_TEST

/* ================================ core ================================ */

/* What a config must read as. Fields the parser leaves alone when they mean nothing
 * (window_from_layer without a window, the llama3 factors without llama3) are compared
 * only where they mean something. */
typedef struct {
    const char *config, *generation;
    model_config want;
} accepted_case;

/* The tiny model's sizes (n_kv_heads apart), and LlamaConfig's defaults of rope_theta and
 * rms_norm_eps; every case states max_positions, n_kv_heads and bos_id itself. */
#define LLAMA_IS .arch = ARCH_LLAMA, .arch_name = "LlamaForCausalLM"
#define MISTRAL_IS .arch = ARCH_MISTRAL, .arch_name = "MistralForCausalLM"
#define QWEN2_IS .arch = ARCH_QWEN2, .arch_name = "Qwen2ForCausalLM", .qkv_bias = 1
#define TINY_IS .vocab_size = 16, .hidden = 8, .intermediate = 12, .n_layers = 2, .n_heads = 2, \
    .head_dim = 4
#define NORMS_IS .rope_theta = 10000.0f, .rms_eps = 1e-6f

static const accepted_case accepted[] = {
    /* as transformers writes a LlamaForCausalLM config.json */
    {CFG(LLAMA, TINY, ", \"max_position_embeddings\": 32, \"rms_norm_eps\": 1e-05, "
         "\"rope_theta\": 500000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false, "
         "\"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"float32\", "
         "\"attention_bias\": false, \"mlp_bias\": false, \"pretraining_tp\": 1, "
         "\"initializer_range\": 0.02, \"use_cache\": true"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 32, .rope_theta = 500000.0f,
      .rms_eps = 1e-5f, .bos_id = 1, .n_eos = 1, .eos_ids = {2}}},
    /* only the required keys: num_key_value_heads = heads, head_dim = hidden / heads,
     * max_position_embeddings 2048, no BOS or EOS */
    {"{" LLAMA ", \"vocab_size\": 16, \"hidden_size\": 8, \"intermediate_size\": 12, "
     "\"num_hidden_layers\": 2, \"num_attention_heads\": 2}", NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 2, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* null is the key's absence */
    {CFG(LLAMA, SIZES(16, 8, 12, 2, 2, null), ", \"rope_theta\": null, \"sliding_window\": "
         "null, \"rope_scaling\": null, \"eos_token_id\": null, \"bos_token_id\": null"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 2, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* an explicit head_dim, which may make q wider than hidden (hidden 10 is no multiple
     * of 4 heads then) */
    {CFG(LLAMA, SIZES(16, 10, 12, 2, 4, 2), ", \"head_dim\": 6, \"tie_word_embeddings\": true"),
     NULL, {LLAMA_IS, .vocab_size = 16, .hidden = 10, .intermediate = 12, .n_layers = 2,
            .n_heads = 4, .n_kv_heads = 2, .head_dim = 6, .tie_embeddings = 1,
            .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* eos_token_id as a list; ids no token has are dropped, never cast into one (2^32 + 2
     * is not token 2) */
    {CFG(LLAMA, TINY, ", \"bos_token_id\": 4294967297, \"eos_token_id\": [4294967298, -3, "
         "16, 2, 15]"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .n_eos = 2, .eos_ids = {2, 15}}},
    /* at most CONFIG_MAX_EOS (8) ids, the first ones */
    {CFG(LLAMA, TINY, ", \"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .n_eos = 8, .eos_ids = {1, 2, 3, 4, 5, 6, 7, 8}}},
    /* generation_config.json has the final word on BOS/EOS ... */
    {CFG(LLAMA, TINY, ", \"bos_token_id\": 1, \"eos_token_id\": 2"),
     "{\"_from_model_config\": true, \"bos_token_id\": 3, \"eos_token_id\": [4, 11], "
     "\"do_sample\": true, \"temperature\": 0.6}",
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = 3,
      .n_eos = 2, .eos_ids = {4, 11}}},
    /* ... an integer there replaces config.json's list; what it does not name stays */
    {CFG(LLAMA, TINY, ", \"bos_token_id\": 1, \"eos_token_id\": [2, 5]"),
     "{\"eos_token_id\": 13}",
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = 1,
      .n_eos = 1, .eos_ids = {13}}},
    /* ... and its ids outside the vocabulary are dropped too */
    {CFG(LLAMA, TINY, ", \"bos_token_id\": 1, \"eos_token_id\": 2"),
     "{\"bos_token_id\": -5, \"eos_token_id\": -1}",
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* RoPE scaling llama3, every key given; with the defaults of the keys left out
     * (low 1, high 4, original context 8192); "default" is none */
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
         "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
         "\"original_max_position_embeddings\": 64}"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .rope_llama3 = 1, .rope_factor = 8.0f, .rope_low_freq_factor = 1.0f,
      .rope_high_freq_factor = 4.0f, .rope_original_max_positions = 64}},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, "
         "\"high_freq_factor\": 2.5}"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .rope_llama3 = 1, .rope_factor = 32.0f, .rope_low_freq_factor = 1.0f,
      .rope_high_freq_factor = 2.5f, .rope_original_max_positions = 8192}},
    {CFG(LLAMA, TINY, ", \"rope_scaling\": {\"rope_type\": \"default\"}"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* Llama has no sliding window, whatever the keys say */
    {CFG(LLAMA, TINY, ", \"sliding_window\": 4, \"use_sliding_window\": true"), NULL,
     {LLAMA_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    /* Mistral: every layer slides, sliding_window 4096 when the key is missing (null: no
     * window); a window no shorter than the context is no window */
    {CFG(MISTRAL, TINY, ", \"sliding_window\": 6, \"max_position_embeddings\": 64"), NULL,
     {MISTRAL_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 64, NORMS_IS, .bos_id = -1,
      .sliding_window = 6, .window_from_layer = 0}},
    {CFG(MISTRAL, TINY, ", \"max_position_embeddings\": 32768"), NULL,
     {MISTRAL_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 32768, NORMS_IS, .bos_id = -1,
      .sliding_window = 4096, .window_from_layer = 0}},
    {CFG(MISTRAL, TINY, ", \"sliding_window\": null, \"max_position_embeddings\": 32768"),
     NULL, {MISTRAL_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 32768, NORMS_IS,
            .bos_id = -1}},
    {CFG(MISTRAL, TINY, ", \"sliding_window\": 64, \"max_position_embeddings\": 64"), NULL,
     {MISTRAL_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 64, NORMS_IS, .bos_id = -1}},
    /* Qwen2: q/k/v biases always; a window only with use_sliding_window, in the layers
     * from max_window_layers (default 28) on, or as layer_types says */
    {CFG(QWEN2, TINY, ", \"sliding_window\": 5, \"max_window_layers\": 0"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1}},
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": true, \"sliding_window\": 5, "
         "\"max_window_layers\": 0, \"attention_bias\": true"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .sliding_window = 5, .window_from_layer = 0}},
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": true, \"sliding_window\": 5, "
         "\"max_window_layers\": 1"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .sliding_window = 5, .window_from_layer = 1}},
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": true, \"sliding_window\": 5"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS,
      .bos_id = -1}},   /* 2 layers, both below max_window_layers 28 */
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": true, \"sliding_window\": 5, "
         "\"layer_types\": [\"full_attention\", \"sliding_attention\"]"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .sliding_window = 5, .window_from_layer = 1}},
    /* Qwen2Config: sliding_window 4096 when absent; layer_types without use_sliding_window
     * slides nothing (the window is None) */
    {CFG(QWEN2, TINY, ", \"use_sliding_window\": true, \"max_window_layers\": 1, "
         "\"max_position_embeddings\": 8192"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 8192, NORMS_IS, .bos_id = -1,
      .sliding_window = 4096, .window_from_layer = 1}},
    {CFG(QWEN2, TINY, ", \"sliding_window\": 5, "
         "\"layer_types\": [\"full_attention\", \"sliding_attention\"]"), NULL,
     {QWEN2_IS, TINY_IS, .n_kv_heads = 1, .max_positions = 2048, NORMS_IS, .bos_id = -1,
      .window_from_layer = 1}},
};

static void check_accepted(int i, const model_config *got, const model_config *want)
{
#define SAME_INT(f) ck_assert_msg(got->f == want->f, "case %d: " #f " %d, want %d", i, \
                                  (int)got->f, (int)want->f)
#define SAME_FLOAT(f) ck_assert_msg(got->f == want->f, "case %d: " #f " %g, want %g", i, \
                                    (double)got->f, (double)want->f)
    SAME_INT(arch);
    ck_assert_str_eq(got->arch_name, want->arch_name);
    SAME_INT(vocab_size);
    SAME_INT(hidden);
    SAME_INT(intermediate);
    SAME_INT(n_layers);
    SAME_INT(n_heads);
    SAME_INT(n_kv_heads);
    SAME_INT(head_dim);
    SAME_INT(max_positions);
    SAME_FLOAT(rope_theta);
    SAME_FLOAT(rms_eps);
    SAME_INT(tie_embeddings);
    SAME_INT(qkv_bias);
    SAME_INT(sliding_window);
    if (want->sliding_window)
        SAME_INT(window_from_layer);
    SAME_INT(rope_llama3);
    if (want->rope_llama3) {
        SAME_FLOAT(rope_factor);
        SAME_FLOAT(rope_low_freq_factor);
        SAME_FLOAT(rope_high_freq_factor);
        SAME_INT(rope_original_max_positions);
    }
    SAME_INT(bos_id);
    SAME_INT(n_eos);
    for (int k = 0; k < want->n_eos; k++)
        SAME_INT(eos_ids[k]);
#undef SAME_INT
#undef SAME_FLOAT
}

START_TEST(test_accepted_config_reads_as_transformers_reads_it)
{
    char *dir = testutil_mkdtemp("config_test");
    put(dir, "config.json", accepted[_i].config);
    put(dir, "generation_config.json", accepted[_i].generation);
    model_config c;
    lr_error err = {0};
    int rc = model_config_load(dir, &c, &err);
    ck_assert_msg(rc == 0, "case %d refused: %s", _i, err.msg);
    check_accepted(_i, &c, &accepted[_i].want);
    testutil_rmdir(dir);
}
END_TEST

START_TEST(test_projection_shapes_follow_heads_and_head_dim)
{
    /* q [heads·head_dim, hidden], k/v [kv·head_dim, hidden], o [hidden, heads·head_dim],
     * gate/up [inter, hidden], down [hidden, inter] — with head_dim 6 ≠ hidden 10 / 4 */
    model_config c = {.hidden = 10, .intermediate = 12, .n_heads = 4, .n_kv_heads = 2,
                      .head_dim = 6};
    static const int want[PROJ_COUNT][2] = {{24, 10}, {12, 10}, {12, 10}, {10, 24},
                                            {12, 10}, {12, 10}, {10, 12}};
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out = -1, in = -1;
        model_config_proj_shape(&c, (model_proj)p, &out, &in);
        ck_assert_msg(out == want[p][0] && in == want[p][1], "%s: [%d, %d], want [%d, %d]",
                      model_proj_name((model_proj)p), out, in, want[p][0], want[p][1]);
    }
}
END_TEST

START_TEST(test_projection_names_are_pefts_and_round_trip)
{
    static const char *const names[PROJ_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};
    for (int p = 0; p < PROJ_COUNT; p++) {
        ck_assert_str_eq(model_proj_name((model_proj)p), names[p]);
        ck_assert_int_eq(model_proj_from_name(names[p]), p);
    }
    ck_assert_int_eq(model_proj_from_name("qkv_proj"), -1);
    ck_assert_int_eq(model_proj_from_name("q_proj "), -1);
    ck_assert_int_eq(model_proj_from_name(""), -1);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *core = tcase_create("core");
    tcase_add_loop_test(core, test_accepted_config_reads_as_transformers_reads_it, 0,
                        (int)(sizeof accepted / sizeof accepted[0]));
    tcase_add_test(core, test_projection_shapes_follow_heads_and_head_dim);
    tcase_add_test(core, test_projection_names_are_pefts_and_round_trip);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_loop_test(limits, test_refused_config_message_names_the_file_key_and_cause, 0,
                        (int)(sizeof refusals / sizeof refusals[0]));
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
