/* model_config: the hyper-parameters of a Hugging Face Llama-family model, read from
 * config.json (+ generation_config.json / tokenizer_config.json for BOS/EOS). */
#ifndef LORAD_CONFIG_H
#define LORAD_CONFIG_H

#include "error.h"

typedef enum { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2 } model_arch;

/* The seven linear projections of a decoder layer that LoRA can target. */
typedef enum {
    PROJ_Q, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, PROJ_COUNT
} model_proj;

#define CONFIG_MAX_EOS 8

typedef struct {
    model_arch arch;
    char arch_name[64];       /* "LlamaForCausalLM", ... as in config.json */
    int vocab_size;
    int hidden;               /* hidden_size */
    int intermediate;         /* intermediate_size */
    int n_layers;             /* num_hidden_layers */
    int n_heads;              /* num_attention_heads */
    int n_kv_heads;           /* num_key_value_heads (defaults to n_heads) */
    int head_dim;             /* head_dim, or hidden / n_heads */
    int max_positions;        /* max_position_embeddings */
    float rope_theta;
    float rms_eps;
    int tie_embeddings;       /* lm_head shares embed_tokens */
    int qkv_bias;             /* Qwen2: q/k/v projections have a bias */
    int sliding_window;       /* 0 = full attention */
    int window_from_layer;    /* layers with index >= this use the sliding window (Qwen2's
                               * max_window_layers; 0 for Mistral) */
    /* rope_scaling {"rope_type": "llama3", ...}; rope_llama3 == 0 when absent */
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_positions;
    int bos_id;               /* -1 when unknown (or not an id of the vocabulary) */
    int eos_ids[CONFIG_MAX_EOS];  /* those of eos_token_id in [0, vocab_size) */
    int n_eos;
} model_config;

/* Reads DIR/config.json (required) and DIR/generation_config.json (optional, for
 * bos/eos). Unsupported architectures or config keys are refused with a message
 * naming the key. On error returns negative, fills err and leaves cfg unspecified. */
int model_config_load(const char *dir, model_config *cfg, lr_error *err);

/* Output and input sizes of projection p: W is [out, in]. */
void model_config_proj_shape(const model_config *cfg, model_proj p, int *out, int *in);

/* "q_proj", "k_proj", ...; and the reverse (returns -1 for an unknown name). */
const char *model_proj_name(model_proj p);
int model_proj_from_name(const char *name);

#endif
