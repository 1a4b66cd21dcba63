/* variant: the two ways an adapter (or a weighted mix of adapters) reaches the math.
 *   on the fly: Y += Σ weight_i · s_i · (X A_iᵀ) B_iᵀ for the rows that use the mix;
 *   merged:     W' = W + Σ weight_i · s_i · B_i A_i, a private copy per targeted matrix.
 * The base W is only ever read. */
#ifndef LORAD_VARIANT_H
#define LORAD_VARIANT_H

#include <stddef.h>

#include "lora.h"
#include "model.h"
#include "smallmm.h"

#define VARIANT_MAX_TERMS 8

typedef struct {
    const lora_weights *w;   /* borrowed; must outlive every use of the mix */
    float weight;            /* the mix weight (1.0 for a single adapter) */
} variant_term;

/* A weighted mix of adapters, applied on the fly or merged. */
typedef struct {
    int n;
    variant_term t[VARIANT_MAX_TERMS];
} variant_mix;

/* Merged weights: W' for every (layer, proj) some term touches, in the base's precision
 * (model.weights: the F32 sum rounded once to BF16 / requantized to Q8 with fresh
 * scales), data NULL elsewhere (use W). */
typedef struct {
    int n_layers;
    wtensor *w;        /* [n_layers * PROJ_COUNT], each [out, in] row-major */
    size_t bytes;      /* bytes of all W' */
    void *arena;       /* one read-only mapping holding every W' (private) */
    size_t arena_bytes;
} variant;

/* Orders mixes by content: the number of terms, then each term's adapter (by address:
 * one loaded adapter is one lora_weights) and weight. 0 when a and b apply exactly the
 * same thing, so requests that built their own copy of a mix still share its products.
 * NULL and an empty mix are equal (no adapter). Thread-safe (pure). */
int variant_mix_cmp(const variant_mix *a, const variant_mix *b);

/* Largest rank over all terms (scratch sizing: variant_scratch_floats). */
int variant_mix_max_rank(const variant_mix *mix);

/* Builds W' = W + Σ weight·s·B A for every targeted matrix (one sgemm each, in F32 on
 * the dequantized W), in memory that is made read-only once written. Returns a new variant owned by the caller
 * (variant_free); on error returns NULL and fills err. Costs 2·r·in·out flops per matrix.
 * Thread-safe (reads the model and the adapters only). */
variant *variant_merge(const model *m, const variant_mix *mix, lr_error *err);
/* The same, pacing itself to use at most `duty` (0 < duty <= 1) of one core: after each
 * matrix it sleeps in proportion to the time the matrix took, so a merge built beside a
 * decoding engine takes that share of the CPU from it (--merge auto builds at 0.1). */
variant *variant_merge_paced(const model *m, const variant_mix *mix, double duty,
                             lr_error *err);
/* Frees v (accepts NULL). The memory of its W' is kept for the next merge (variant.c:
 * one block, process-wide), as lora.c keeps adapters' arenas. */
void variant_free(variant *v);

/* Weight to use for (layer, p): W' when v has one, else the base W. v may be NULL. */
const wtensor *variant_weight(const model *m, const variant *v, int layer, model_proj p);

/* Floats of scratch variant_small_jobs needs for windows of up to max_rows rows (all
 * runs of sequences using mix together). */
size_t variant_scratch_floats(const variant_mix *mix, int max_rows);

/* On the fly, for a group of projections that read the same rows X [n, in] (q/k/v, or
 * gate/up, or one projection alone), n <= SMALLMM_MAX_ROWS, whose base outputs Y_k
 * [n, outs[k]] are computed first: Y_k += Σ weight·s·(X A_kᵀ) B_kᵀ over the terms of the
 * mix, as smallmm products for the caller to run. Appends to xa one X·Aᵀ product per term
 * — for the whole group when the term's A's are back to back and alike (as peft_load lays
 * them out), else one per projection the term touches — and to tb one ·Bᵀ product per
 * (term, projection) it touches; *n_xa and *n_tb say how many. Each term's T takes n·Σ r
 * floats from *scratch, which advances. Running every xa product, then every tb product,
 * applies the mix. */
#define VARIANT_GROUP_MAX 3
void variant_small_jobs(const variant_mix *mix, int layer, const model_proj *ps, int n_ps,
                        int in, const float *x, int n, float *const *ys, const int *outs,
                        float **scratch, smallmm_xmt *xa, smallmm_tb *tb, int *n_xa,
                        int *n_tb);

#endif
