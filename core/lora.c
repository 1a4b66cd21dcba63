/* lora: the in-memory table of an adapter's A/B matrices, one entry per
 * (layer, projection); every A and B is its own allocation, owned by the table. */
#include "lora.h"

#include <stdlib.h>

lora_weights *lora_weights_new(int n_layers)
{
    if (n_layers < 0)
        return NULL;
    lora_weights *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    /* calloc(0, ...) may return NULL; keep m non-NULL so callers need no special case */
    size_t n = (size_t)n_layers * PROJ_COUNT;
    w->m = calloc(n ? n : 1, sizeof *w->m);
    if (!w->m) {
        free(w);
        return NULL;
    }
    w->n_layers = n_layers;
    return w;
}

void lora_weights_free(lora_weights *w)
{
    if (!w)
        return;
    size_t n = (size_t)w->n_layers * PROJ_COUNT;
    for (size_t i = 0; i < n; i++) {
        free(w->m[i].a);
        free(w->m[i].b);
    }
    free(w->m);
    free(w);
}

lora_matrix *lora_weights_at(lora_weights *w, int layer, model_proj p)
{
    return &w->m[(size_t)layer * PROJ_COUNT + (size_t)p];
}

const lora_matrix *lora_weights_get(const lora_weights *w, int layer, model_proj p)
{
    return &w->m[(size_t)layer * PROJ_COUNT + (size_t)p];
}
