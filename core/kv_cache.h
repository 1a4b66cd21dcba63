/* kv_cache: the keys and values of one sequence, every layer, every position so far.
 * Keys are stored transposed per KV head ([head_dim, cap]) so that attention scores for
 * one query are a sum of contiguous rows (vectorizes without reductions); values are
 * stored by position ([cap, kv_dim]) so that the weighted sum is too. */
#ifndef LORAD_KV_CACHE_H
#define LORAD_KV_CACHE_H

#include <stddef.h>

#include "config.h"

typedef struct {
    int n_layers;
    int cap;        /* positions it can hold */
    int stride;     /* cap rounded up to 16: row length of the transposed keys */
    int n_kv;       /* KV heads */
    int head_dim;
    int kv_dim;     /* n_kv · head_dim */
    int len;        /* positions filled (owned by the forward pass) */
    float *k;       /* [n_layers, n_kv, head_dim, stride] keys, transposed per head */
    float *v;       /* [n_layers, cap, kv_dim] values, row-major */
} kv_cache;

/* A cache for up to cap positions of a model with config c; NULL when out of memory.
 * Owned by the caller (kv_cache_free). Belongs to one engine thread. */
kv_cache *kv_cache_new(const model_config *c, int cap);
void kv_cache_free(kv_cache *kv);  /* accepts NULL */
size_t kv_cache_bytes(const model_config *c, int cap);

/* Layer l, KV head g: transposed keys [head_dim, stride]. */
static inline float *kv_cache_kt(kv_cache *kv, int l, int g)
{
    return kv->k + ((size_t)l * kv->n_kv + g) * kv->head_dim * kv->stride;
}
/* Layer l's values: [cap, kv_dim]. */
static inline float *kv_cache_v(kv_cache *kv, int l)
{
    return kv->v + (size_t)l * kv->cap * kv->kv_dim;
}

#endif
