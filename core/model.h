/* model: the frozen base weights of a Hugging Face Llama-family checkpoint.
 * Every weight is fp32 in memory that is mapped read-only: F32 tensors point straight
 * into the safetensors mapping, F16/BF16 ones are converted once at load into an
 * anonymous mapping that is then mprotect()ed read-only. A stray write crashes. */
#ifndef LORAD_MODEL_H
#define LORAD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"

typedef struct {
    const float *attn_norm;      /* [hidden] input_layernorm */
    const float *w[PROJ_COUNT];  /* [out, in] row-major per model_config_proj_shape */
    const float *bias[3];        /* q/k/v biases [out] (Qwen2), NULL otherwise */
    const float *ffn_norm;       /* [hidden] post_attention_layernorm */
} model_layer;

/* One checkpoint tensor as the model holds it (the list the loader checked; a tied
 * lm_head is not listed apart from embed_tokens). */
typedef struct {
    char name[128];        /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    int ndim;              /* 1 or 2 */
    int64_t shape[2];      /* [out, in] for matrices, [n] for vectors */
    const float *data;     /* fp32, read-only, owned by the model */
    int layer;             /* decoder layer, or -1 (embeddings, final norm, lm_head) */
    int proj;              /* model_proj of a projection weight, -1 for anything else */
} model_tensor;

typedef struct model_files model_files;  /* mappings owned by the model (private) */

typedef struct {
    model_config cfg;
    const float *embed;    /* [vocab, hidden] embed_tokens */
    const float *lm_head;  /* [vocab, hidden]; == embed when embeddings are tied */
    const float *norm;     /* [hidden] final norm */
    model_layer *layers;   /* [n_layers] */
    size_t weight_bytes;   /* fp32 bytes of all distinct weights (what decode reads) */
    char dtype[8];         /* dtype of the checkpoint's weights: "F32", "F16", "BF16", "mixed" */
    int n_shards;          /* number of safetensors files */
    char dir[4096];
    model_tensor *tensors; /* [n_tensors] every tensor read from the checkpoint */
    int n_tensors;
    model_files *files;
} model;

/* Loads DIR (config.json + model.safetensors or sharded files with
 * model.safetensors.index.json). Every tensor is checked for presence, dtype and shape.
 * Returns a model the caller frees with model_free; on error returns NULL and fills err
 * (message names the file and tensor). The returned model is immutable and may be read
 * from any thread. */
model *model_load(const char *dir, lr_error *err);

/* Told how far a load has come: done of total files mapped (what = "files"), then done of
 * total tensors converted to fp32 (what = "tensors converted", F16/BF16 checkpoints only,
 * the slow part). Called on the loading thread, done rising to total. */
typedef void (*model_progress_fn)(void *user, const char *what, int done, int total);

/* model_load, reporting its progress to progress(user, ...) (NULL: none), for a daemon
 * whose supervisor shows it (systemd's STATUS=). */
model *model_load_progress(const char *dir, model_progress_fn progress, void *user,
                           lr_error *err);

/* Unmaps and frees everything; accepts NULL. */
void model_free(model *m);

/* Name of the HF tensor for (layer, proj), e.g. "model.layers.3.self_attn.q_proj.weight".
 * Writes into buf (size cap) and returns buf. */
char *model_tensor_name(int layer, model_proj p, char *buf, size_t cap);

#endif
