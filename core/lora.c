/* lora: the in-memory table of an adapter's A/B matrices, one entry per
 * (layer, projection); every A and B is its own allocation, owned by the table. */
#include "lora.h"

#include <stdlib.h>

#include "hugemem.h"

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

/* Freed arenas kept for the next adapter: a fresh mapping costs a page fault and the
 * zeroing of every page on first touch (on the 2-core VM, a third of an upload's time:
 * the daemon's uploads and LRU reloads come in a steady stream), a reused one nothing.
 * At most 8 arenas and 256 MiB in all; contents are stale (every float is written before
 * it is read: lora_weights_alloc hands out only what peft_load fills). Process-wide, any
 * thread. */
static huge_cache arenas = HUGE_CACHE_INIT(8, (size_t)256 << 20);

static int in_arena(const lora_weights *w, const float *p)
{
    return w->arena && p >= w->arena && p < w->arena + w->arena_cap;
}

void lora_weights_free(lora_weights *w)
{
    if (!w)
        return;
    size_t n = (size_t)w->n_layers * PROJ_COUNT;
    for (size_t i = 0; i < n; i++) {
        if (!in_arena(w, w->m[i].a))
            free(w->m[i].a);
        if (!in_arena(w, w->m[i].bt))
            free(w->m[i].bt);
    }
    if (w->arena)
        huge_cache_put(&arenas, w->arena, w->arena_cap * sizeof(float));
    free(w->m);
    free(w);
}

int lora_weights_reserve(lora_weights *w, size_t n)
{
    if (w->arena || n == 0)
        return w->arena ? -1 : 0;
    size_t cap = 0;
    float *reused = huge_cache_take(&arenas, n * sizeof(float), &cap);
    if (reused) {
        w->arena = reused;
        w->arena_cap = cap / sizeof(float);
        w->arena_used = 0;
        return 0;
    }
    void *p = huge_alloc(n * sizeof(float));
    if (!p)
        return -1;
    w->arena = p;
    w->arena_cap = n;
    w->arena_used = 0;
    return 0;
}

float *lora_weights_alloc(lora_weights *w, size_t n)
{
    size_t padded = (n + 15) & ~(size_t)15;  /* keep every matrix 64-byte aligned */
    if (w->arena && w->arena_cap - w->arena_used >= padded) {
        float *p = w->arena + w->arena_used;
        w->arena_used += padded;
        return p;
    }
    void *p = NULL;
    return posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) == 0 ? p : NULL;
}

lora_matrix *lora_weights_at(lora_weights *w, int layer, model_proj p)
{
    return &w->m[(size_t)layer * PROJ_COUNT + (size_t)p];
}

const lora_matrix *lora_weights_get(const lora_weights *w, int layer, model_proj p)
{
    return &w->m[(size_t)layer * PROJ_COUNT + (size_t)p];
}
