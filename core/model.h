/* model: the frozen base weights of a Hugging Face Llama-family checkpoint.
 * The matrices (projections, embeddings, lm_head) are held in one precision — F32, BF16 or
 * Q8 (wtensor.h), the checkpoint's own by default — and the vectors (norms, biases) in F32,
 * all copied once at load into one anonymous mapping on huge pages that is then
 * mprotect()ed read-only. A stray write crashes. */
#ifndef LORAD_MODEL_H
#define LORAD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "wtensor.h"

typedef struct {
    const float *attn_norm;      /* [hidden] input_layernorm */
    wtensor w[PROJ_COUNT];       /* [out, in] row-major per model_config_proj_shape */
    const float *bias[3];        /* q/k/v biases [out] (Qwen2), NULL otherwise */
    const float *ffn_norm;       /* [hidden] post_attention_layernorm */
} model_layer;

/* One checkpoint tensor as the model holds it (the list the loader checked; a tied
 * lm_head is not listed apart from embed_tokens). */
typedef struct {
    char name[128];        /* Hugging Face name, e.g. "model.layers.3.self_attn.q_proj.weight" */
    int ndim;              /* 1 or 2 */
    int64_t shape[2];      /* [out, in] for matrices, [n] for vectors */
    wtensor data;          /* read-only, owned by the model: F32 for vectors, the model's
                            * precision (model.weights) for matrices */
    int layer;             /* decoder layer, or -1 (embeddings, final norm, lm_head) */
    int proj;              /* model_proj of a projection weight, -1 for anything else */
} model_tensor;

typedef struct model_files model_files;  /* mappings owned by the model (private) */

typedef struct {
    model_config cfg;
    wtensor embed;         /* [vocab, hidden] embed_tokens */
    wtensor lm_head;       /* [vocab, hidden]; the same data as embed when tied */
    const float *norm;     /* [hidden] final norm */
    model_layer *layers;   /* [n_layers] */
    size_t weight_bytes;   /* bytes of all distinct weights as held (what decode reads) */
    char dtype[8];         /* dtype of the checkpoint's weights: "F32", "F16", "BF16", "mixed" */
    wt_type weights;       /* precision the matrices are held in */
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
 * total tensors copied (what = "tensors converted": converted where the precision changes,
 * the slow part). Called on the loading thread, done rising to total. */
typedef void (*model_progress_fn)(void *user, const char *what, int done, int total);

/* The matrices' precision when loading: the checkpoint's own (BF16 stays BF16; F32 stays
 * F32; F16 becomes F32, which holds every F16 value exactly — BF16 has 3 fewer mantissa
 * bits, so F16 → BF16 would round; ask for bf16 to have it), or one of wt_type. */
#define MODEL_WEIGHTS_AUTO (-1)

typedef struct {
    int weights;                /* MODEL_WEIGHTS_AUTO or a wt_type */
    model_progress_fn progress; /* NULL: none */
    void *user;                 /* passed to progress */
} model_load_opts;

/* model_load with options (NULL: the defaults), reporting progress for a daemon whose
 * supervisor shows it (systemd's STATUS=). */
model *model_load_with(const char *dir, const model_load_opts *o, lr_error *err);

/* Which precision MODEL_WEIGHTS_AUTO picks for a checkpoint of dtype ("F32", "BF16", ...). */
wt_type model_default_weights(const char *dtype);

/* The wtensor type the model's matrices are held in: its precision (m->weights), F32 as
 * WT_F32P and BF16 as WT_BF16P (panels, wtensor.h). */
wt_type model_matrix_type(const model *m);

/* Unmaps and frees everything; accepts NULL. */
void model_free(model *m);

/* Name of the HF tensor for (layer, proj), e.g. "model.layers.3.self_attn.q_proj.weight".
 * Writes into buf (size cap) and returns buf. */
char *model_tensor_name(int layer, model_proj p, char *buf, size_t cap);

#endif
