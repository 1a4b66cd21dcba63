/* kv_cache allocation. */
#include "kv_cache.h"

#include <stdlib.h>

static int round16(int n)
{
    return (n + 15) & ~15;
}

size_t kv_cache_bytes(const model_config *c, int cap)
{
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    return (size_t)c->n_layers * kv_dim * (round16(cap) + (size_t)cap) * sizeof(float);
}

kv_cache *kv_cache_new(const model_config *c, int cap)
{
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv || cap <= 0)
        goto fail;
    kv->n_layers = c->n_layers;
    kv->cap = cap;
    kv->stride = round16(cap);
    kv->n_kv = c->n_kv_heads;
    kv->head_dim = c->head_dim;
    kv->kv_dim = c->n_kv_heads * c->head_dim;
    /* Zeroed: attention reads whole 16-key blocks of the transposed keys and ignores the
     * lanes past the last position; zeros keep those lanes finite. */
    kv->k = calloc((size_t)c->n_layers * kv->kv_dim * kv->stride, sizeof(float));
    kv->v = malloc((size_t)c->n_layers * cap * kv->kv_dim * sizeof(float));
    if (!kv->k || !kv->v)
        goto fail;
    return kv;
fail:
    kv_cache_free(kv);
    return NULL;
}

void kv_cache_free(kv_cache *kv)
{
    if (!kv)
        return;
    free(kv->k);
    free(kv->v);
    free(kv);
}
