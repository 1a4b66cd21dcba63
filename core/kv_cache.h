/* kv_cache: the keys and values of every sequence, in fixed-size blocks of KV_BLOCK
 * positions (every layer) from one pool, and per sequence a block table. Memory follows
 * the tokens held: a sequence takes blocks as its positions grow and gives them all back
 * at once.
 *
 * One block: the keys of its KV_BLOCK positions, transposed per layer and KV head
 * ([n_layers, n_kv, head_dim, KV_BLOCK]), so that attention scores for one query are a
 * sum of contiguous 16-key rows (vectorizes without reductions); then the values by
 * position ([n_layers, KV_BLOCK, kv_dim]), so that the weighted sum is too. */
#ifndef LORAD_KV_CACHE_H
#define LORAD_KV_CACHE_H

#include <stddef.h>

#include "config.h"
#include "error.h"

/* Positions per block, a multiple of 16 (attention reads keys 16 at a time). 16: the
 * attention of a decode step was fastest with it at 256 and 1024 positions (11-15% below
 * 32 and 64, 13-19% below the former contiguous cache), within 9% of 64 at 4096 (README
 * "Performance"); and a small block wastes least — half a block per sequence on
 * average — and lets preemption free memory in the finest steps. */
#ifndef KV_BLOCK
#define KV_BLOCK 16
#endif

typedef struct kv_pool kv_pool;

/* One sequence's cache: positions [0, len) hold keys and values; positions
 * [0, n_blocks · KV_BLOCK) may be written. */
typedef struct {
    int len;          /* positions filled (owned by the forward pass) */
    int n_blocks;     /* blocks in the table */
    int cap_blocks;   /* room in the table */
    float **blocks;   /* [n_blocks] the blocks of positions [b·KV_BLOCK, (b+1)·KV_BLOCK) */
} kv_cache;

/* Bytes of one block of a model with config c. */
size_t kv_block_bytes(const model_config *c);

/* Blocks that hold n positions. */
static inline int kv_blocks_for(long n)
{
    return (int)((n + KV_BLOCK - 1) / KV_BLOCK);
}

/* A pool of at most n_blocks blocks (>= 1). Blocks are cut from slabs of at least 32 (as
 * many as fill whole huge pages) mapped as needed (each block page-aligned; pages backed as
 * they are written) and kept for reuse until kv_pool_free, so the pool costs what the most
 * tokens ever held at once need, never more than n_blocks blocks. NULL + err when n_blocks
 * < 1 or out of memory. Owned by the caller; belongs to one thread (the engine's), as do
 * the caches it fills. */
kv_pool *kv_pool_new(const model_config *c, int n_blocks, lr_error *err);
/* Frees the pool and every block's memory; every cache must have been released.
 * Accepts NULL. */
void kv_pool_free(kv_pool *p);

int kv_pool_total(const kv_pool *p);  /* n_blocks; constant, so any thread may ask */
int kv_pool_used(const kv_pool *p);   /* blocks held by caches */

/* Grows kv's table until it holds positions [0, n): 0, or negative with nothing
 * changed — LR_EBUSY when the pool has fewer free blocks than that needs, LR_ENOMEM when
 * memory for a block or the table cannot be had (err filled). */
int kv_cache_reserve(kv_pool *p, kv_cache *kv, int n, lr_error *err);

/* Gives every block of kv back to p and empties it (len 0); the table's own memory is
 * kept for the next reserve. */
void kv_cache_release(kv_pool *p, kv_cache *kv);

/* Frees kv's table (after kv_cache_release). Accepts an empty cache. */
void kv_cache_clear(kv_cache *kv);

/* Where in a block (floats from its start) layer l's transposed keys of KV head g begin
 * ([head_dim, KV_BLOCK]), and layer l's values ([KV_BLOCK, kv_dim]). */
static inline size_t kv_block_kt_offset(const model_config *c, int l, int g)
{
    return ((size_t)l * c->n_kv_heads + g) * c->head_dim * KV_BLOCK;
}
static inline size_t kv_block_v_offset(const model_config *c, int l)
{
    size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    return ((size_t)c->n_layers + l) * kv_dim * KV_BLOCK;
}

#endif
