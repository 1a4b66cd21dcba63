/* lora: an adapter's weights in memory and the LoRA math on them.
 * For a projection with base weight W [out, in] an adapter adds s · B A, with
 * A [r, in] as stored in the PEFT file, B [out, r] kept transposed (Bᵀ [r, out]), and s
 * its scale (alpha / r, or alpha / sqrt(r) with rsLoRA, per-module overrides applied).
 * A is held in the F32P panels of the model's own matrices (wtensor.h) when r is a
 * multiple of 16 (a_type), for smallmm's panel tiles — the A's of a layer's q, k and v (and
 * of gate and up) lie back to back, and panels of 16 rows then lay out their
 * concatenation too, so the forward pass computes X·Aᵀ for the group in one product; a
 * smaller rank keeps A row-major rather than pad it. */
#ifndef LORAD_LORA_H
#define LORAD_LORA_H

#include <stddef.h>

#include "config.h"
#include "wtensor.h"

typedef struct {
    int r;          /* rank; 0 when this (layer, projection) is not targeted */
    float scale;    /* s, already including alpha/r or alpha/sqrt(r) */
    wt_type a_type; /* WT_F32P when r is a multiple of WT_P_ROWS, else WT_F32 (row-major) */
    float *a;       /* A [r, in] (owned) */
    float *bt;      /* Bᵀ [r, out] row-major: the file's lora_B [out, r] transposed, so
                     * that adding B·t to an output row streams r rows of out floats.
                     * (In panels of outputs it was 0-16% slower for one row of X per
                     * adapter and no faster for 8: docs/benchmarks.md) */
} lora_matrix;

/* A's layout for rank r. */
static inline wt_type lora_a_type(int r)
{
    return r % WT_P_ROWS == 0 ? WT_F32P : WT_F32;
}

/* Element (j, c) of A [r, in], whichever its layout. */
static inline float lora_a_at(const lora_matrix *m, int64_t in, int64_t j, int64_t c)
{
    return m->a[m->a_type == WT_F32P ? wtensor_f32p_offset(in, j, c) : (size_t)(j * in + c)];
}

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
