/* peft: loads a PEFT LoRA adapter directory (adapter_config.json +
 * adapter_model.safetensors) into a lora_weights, validated against the base model.
 *
 * PEFT semantics followed (huggingface/peft, tuners/lora and utils/other.py):
 *  - s = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; rank_pattern /
 *    alpha_pattern override r / alpha for module m when key k matches m with
 *    re.match("(.*\.)?(k)$") — first key in the object's order wins.
 *  - target_modules: a list (m == name or m ends with "." name), a regex string that
 *    must match all of m, or "all-linear"; null means PEFT's Llama default
 *    [q_proj, v_proj]. exclude_modules likewise. layers_to_transform (+ layers_pattern)
 *    restricts the layers, for list target_modules only, as in PEFT.
 *  - tensors are "base_model.model.model.layers.L.{self_attn,mlp}.P.lora_{A,B}.weight",
 *    the names PEFT's save_pretrained writes (the adapter name is stripped on save).
 * Module names m are those of the base model: "model.layers.3.self_attn.q_proj".
 *
 * Anything lorad cannot apply exactly as W x + s·B(A x) is refused (DoRA, bias
 * training, modules_to_save, embedding / lm_head LoRA, base-mutating initialisations
 * such as PiSSA, pickle files), with a message naming the adapter and the cause.
 *
 * Thread-safety: peft_load / peft_free / peft_describe share no state; different
 * adapters may be loaded on different threads at once. */
#ifndef LORAD_PEFT_H
#define LORAD_PEFT_H

#include <jansson.h>

#include "core/config.h"
#include "core/error.h"
#include "core/lora.h"

typedef struct {
    int max_rank;  /* refuse any module rank (after rank_pattern) above this */
} peft_options;

typedef struct peft_adapter {
    char path[4096];           /* the directory as given to peft_load */
    char base_model[256];      /* base_model_name_or_path, may be "" (truncated if longer) */
    int r;                     /* top-level r (modules may differ via rank_pattern) */
    float alpha;               /* top-level lora_alpha */
    int use_rslora;
    unsigned proj_mask;        /* bit (1u << p) for each model_proj present in the file */
    int n_matrices;            /* number of (layer, proj) pairs targeted */
    char dtype[8];             /* dtype of the file's tensors: "F32", "F16", "BF16"
                                * ("mixed" if they differ) */
    lora_weights *w;           /* owned; A/B converted to fp32, scale s per matrix;
                                * w->n_layers = base n_layers, or 1 + highest layer
                                * index in the file when loaded without a base */
} peft_adapter;

/* max_rank = 256. */
peft_options peft_options_default(void);

/* Loads and validates the adapter in directory dir. base may be NULL: then only the
 * adapter's self-consistency is checked (n_layers inferred from the keys, projection
 * sizes consistent across layers), as `lorad inspect` does on a lone adapter. opt may be
 * NULL for peft_options_default(). Returns a new adapter the caller frees with
 * peft_free; on error returns NULL, fills err (message starts "adapter 'DIR': ") and
 * leaves nothing allocated. */
peft_adapter *peft_load(const char *dir, const model_config *base, const peft_options *opt,
                        lr_error *err);

/* Frees the adapter and its weights; accepts NULL. */
void peft_free(peft_adapter *a);

/* New reference (caller json_decref's it), NULL on allocation failure:
 * {"type":"lora","path":..,"base_model":..,"r":..,"lora_alpha":..,"use_rslora":bool,
 *  "dtype":..,"target_modules":["q_proj",...] (projections present, model_proj order),
 *  "layers":w->n_layers,"matrices":n_matrices,"bytes":fp32 bytes of all A and B} */
json_t *peft_describe(const peft_adapter *a);

#endif
