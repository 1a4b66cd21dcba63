/* lora: an adapter's weights in memory and the LoRA math on them.
 * For a projection with base weight W [out, in] an adapter adds s · B A, with
 * A [r, in] as stored in the PEFT file, B [out, r] kept transposed (Bᵀ [r, out]), and s
 * its scale (alpha / r, or alpha / sqrt(r) with rsLoRA, per-module overrides applied). */
#ifndef LORAD_LORA_H
#define LORAD_LORA_H

#include <stddef.h>

#include "config.h"

typedef struct {
    int r;          /* rank; 0 when this (layer, projection) is not targeted */
    float scale;    /* s, already including alpha/r or alpha/sqrt(r) */
    float *a;       /* [r, in] row-major, as in the PEFT file (owned) */
    float *bt;      /* Bᵀ [r, out] row-major: the file's lora_B [out, r] transposed, so
                     * that adding B·t to an output row streams r rows of out floats */
} lora_matrix;

typedef struct {
    int n_layers;
    lora_matrix *m;  /* [n_layers * PROJ_COUNT]; entry (l, p) at m[l * PROJ_COUNT + p] */
    size_t bytes;    /* total bytes of all A and B */
    int max_rank;    /* largest r over all entries */
    /* Optional arena: A/B allocated with lora_weights_alloc live here, in the order they
     * were allocated (the forward pass's order), so decoding reads one sequential stream. */
    float *arena;
    size_t arena_cap, arena_used;  /* in floats */
} lora_weights;

/* Allocates an empty set (all r = 0) for n_layers; NULL on allocation failure. */
lora_weights *lora_weights_new(int n_layers);
/* Frees the set and every A/B; accepts NULL. */
void lora_weights_free(lora_weights *w);
/* Reserves one arena of n floats (huge-page backed where the kernel allows) for
 * lora_weights_alloc: an arena a freed set left behind when one of n .. 2n floats is
 * cached (up to 8 arenas, 256 MiB, are kept by lora_weights_free), else a fresh mapping.
 * Returns 0, or -1 when out of memory (w unchanged). */
int lora_weights_reserve(lora_weights *w, size_t n);
/* n floats, 64-byte aligned, from the arena when it has room, else from malloc. Owned by
 * w: freed by lora_weights_free, never by the caller. NULL when out of memory. */
float *lora_weights_alloc(lora_weights *w, size_t n);

/* Entry for (layer, proj); never NULL for valid indices. */
lora_matrix *lora_weights_at(lora_weights *w, int layer, model_proj p);
const lora_matrix *lora_weights_get(const lora_weights *w, int layer, model_proj p);

#endif
