/* kv_cache allocation. */
#include "kv_cache.h"

#include <stdlib.h>

size_t kv_cache_bytes(const model_config *c, int cap)
{
    return 2 * (size_t)c->n_layers * cap * c->n_kv_heads * c->head_dim * sizeof(float);
}

kv_cache *kv_cache_new(const model_config *c, int cap)
{
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv || cap <= 0)
        goto fail;
    kv->n_layers = c->n_layers;
    kv->cap = cap;
    kv->kv_dim = c->n_kv_heads * c->head_dim;
    size_t n = (size_t)c->n_layers * cap * kv->kv_dim;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
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
