/* kv_cache: the keys and values of one sequence, every layer, every position so far. */
#ifndef LORAD_KV_CACHE_H
#define LORAD_KV_CACHE_H

#include <stddef.h>

#include "config.h"

typedef struct {
    int n_layers;
    int cap;        /* positions it can hold */
    int kv_dim;     /* n_kv_heads · head_dim */
    int len;        /* positions filled (owned by the forward pass) */
    float *k;       /* [n_layers, cap, kv_dim] row-major */
    float *v;       /* [n_layers, cap, kv_dim] row-major */
} kv_cache;

/* A cache for up to cap positions of a model with config c; NULL when out of memory.
 * Owned by the caller (kv_cache_free). Belongs to one engine thread. */
kv_cache *kv_cache_new(const model_config *c, int cap);
void kv_cache_free(kv_cache *kv);  /* accepts NULL */
size_t kv_cache_bytes(const model_config *c, int cap);

/* Layer l's K or V block: [cap, kv_dim]. */
static inline float *kv_cache_k(kv_cache *kv, int l)
{
    return kv->k + (size_t)l * kv->cap * kv->kv_dim;
}
static inline float *kv_cache_v(kv_cache *kv, int l)
{
    return kv->v + (size_t)l * kv->cap * kv->kv_dim;
}

#endif
