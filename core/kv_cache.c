/* kv_cache: the block pool (blocks cut from lazily mapped slabs, a stack of free ones)
 * and the per-sequence block tables. */
#include "kv_cache.h"

#include <stdlib.h>

#include "hugemem.h"

/* Blocks are cut from slabs of at least this many (fewer for a small pool; more where the
 * slab's last huge page has room for them, slab_new), each block starting on a page: a
 * sequence's blocks, taken in order, sit side by side, and attention's 16-key rows of one
 * head (4 KB for head_dim 64) never straddle a page. */
#define SLAB_BLOCKS 32
#define PAGE 4096

typedef struct {
    void *p;
    size_t bytes;
} slab;

struct kv_pool {
    size_t block_floats;
    size_t stride;    /* bytes from one block to the next in a slab: whole pages */
    slab *slabs;      /* [n_slabs] */
    int n_slabs;
    char *next;       /* the rest of the newest slab: room for `left` blocks */
    int left;
    int total;        /* blocks at most */
    int made;         /* blocks whose memory exists */
    int used;         /* blocks held by caches */
    float **spare;    /* [cap_spare >= made] made blocks held by no cache (a stack) */
    int n_spare, cap_spare;
};

size_t kv_block_bytes(const model_config *c)
{
    return (size_t)c->n_layers * c->n_kv_heads * c->head_dim * KV_BLOCK * 2 * sizeof(float);
}

kv_pool *kv_pool_new(const model_config *c, int n_blocks, lr_error *err)
{
    if (n_blocks < 1) {
        lr_error_set(err, LR_EINVAL, "a KV cache of %d blocks holds no token (one block of "
                     "%d positions is %.2f MB)", n_blocks, KV_BLOCK, kv_block_bytes(c) / 1e6);
        return NULL;
    }
    kv_pool *p = calloc(1, sizeof *p);
    if (!p) {
        lr_error_set(err, LR_ENOMEM, "out of memory for a KV pool");
        return NULL;
    }
    p->block_floats = kv_block_bytes(c) / sizeof(float);
    p->stride = (kv_block_bytes(c) + PAGE - 1) / PAGE * PAGE;
    p->total = n_blocks;
    return p;
}

void kv_pool_free(kv_pool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_slabs; i++)
        huge_free(p->slabs[i].p, p->slabs[i].bytes);
    free(p->slabs);
    free(p->spare);
    free(p);
}

int kv_pool_total(const kv_pool *p)
{
    return p->total;
}

int kv_pool_used(const kv_pool *p)
{
    return p->used;
}

/* A fresh slab for SLAB_BLOCKS or more blocks (no more than the pool has left); -1 when out
 * of memory. Anonymous memory: zero, and backed by pages only as blocks are written — huge
 * pages (2 MB at a time), as the weights are. With 4 KiB pages every head's 4 KB of keys in
 * a block was a page of its own, and a step of 64 sequences touched ~35,000 pages in
 * attention and the KV stores, most of them TLB misses: with huge pages a 64-row step's
 * attention took 4.9-5.2 ms instead of 8.5-13.4, its RoPE and KV stores 2.0-2.6 instead of
 * 4.5-7.4 (bench_batch --profile, builds alternated). */
static int slab_new(kv_pool *p)
{
    int n = p->total - p->made < SLAB_BLOCKS ? p->total - p->made : SLAB_BLOCKS;
    slab *t = realloc(p->slabs, sizeof *t * (size_t)(p->n_slabs + 1));
    if (!t)
        return -1;
    p->slabs = t;
    /* in whole huge pages (huge_alloc starts the slab on one): the room the last one has
     * past n blocks takes as many more as fit, and none of the slab is left in 4 KB pages
     * (32 blocks of the 135M shape are 22.5 MB: 34 fill 24 MB) */
    size_t bytes = (p->stride * (size_t)n + HUGE_PAGE_BYTES - 1) / HUGE_PAGE_BYTES *
                   HUGE_PAGE_BYTES;
    if ((size_t)(p->total - p->made) * p->stride < bytes)
        n = p->total - p->made;
    else
        n = (int)(bytes / p->stride);
    void *mem = huge_alloc(bytes);
    if (!mem)
        return -1;
    p->slabs[p->n_slabs++] = (slab){mem, bytes};
    p->next = mem;
    p->left = n;
    return 0;
}

/* A block for a cache: a spare one, or new memory while the pool may grow. Zero when
 * new: attention reads whole 16-key rows of the transposed keys and ignores the lanes past
 * the last position, which must hold finite numbers (zeros, or a former sequence's keys). */
static float *block_take(kv_pool *p)
{
    float *b = NULL;
    if (p->n_spare) {
        b = p->spare[--p->n_spare];
    } else if (p->made < p->total) {
        if (p->made == p->cap_spare) {   /* room to take every made block back */
            int cap = p->cap_spare ? 2 * p->cap_spare : 64;
            cap = cap < p->total ? cap : p->total;
            float **t = realloc(p->spare, sizeof *t * (size_t)cap);
            if (!t)
                return NULL;
            p->spare = t;
            p->cap_spare = cap;
        }
        if (!p->left && slab_new(p))
            return NULL;
        b = (float *)p->next;
        p->next += p->stride;
        p->left--;
        p->made++;
    }
    if (b)
        p->used++;
    return b;
}

int kv_cache_reserve(kv_pool *p, kv_cache *kv, int n, lr_error *err)
{
    int want = kv_blocks_for(n);
    if (want <= kv->n_blocks)
        return 0;
    if (want - kv->n_blocks > p->total - p->used)
        return lr_error_set(err, LR_EBUSY, "the KV cache has %d free blocks; %d more are "
                            "needed", p->total - p->used, want - kv->n_blocks);
    if (want > kv->cap_blocks) {
        int cap = kv->cap_blocks ? kv->cap_blocks : 4;
        while (cap < want)
            cap *= 2;
        float **t = realloc(kv->blocks, sizeof *t * (size_t)cap);
        if (!t)
            return lr_error_set(err, LR_ENOMEM, "out of memory for a block table of %d "
                                "blocks", cap);
        kv->blocks = t;
        kv->cap_blocks = cap;
    }
    int had = kv->n_blocks;
    while (kv->n_blocks < want) {
        float *b = block_take(p);
        if (!b) {
            while (kv->n_blocks > had) {   /* give back what this call took */
                p->spare[p->n_spare++] = kv->blocks[--kv->n_blocks];
                p->used--;
            }
            return lr_error_set(err, LR_ENOMEM, "out of memory for a KV block (%.2f MB)",
                                p->block_floats * sizeof(float) / 1e6);
        }
        kv->blocks[kv->n_blocks++] = b;
    }
    return 0;
}

void kv_cache_release(kv_pool *p, kv_cache *kv)
{
    while (kv->n_blocks > 0) {
        p->spare[p->n_spare++] = kv->blocks[--kv->n_blocks];
        p->used--;
    }
    kv->len = 0;
}

void kv_cache_clear(kv_cache *kv)
{
    free(kv->blocks);
    kv->blocks = NULL;
    kv->n_blocks = kv->cap_blocks = kv->len = 0;
}
