/* forward: one transformer pass over a batch of sequences.
 * Each sequence contributes n_tokens rows (a prefill chunk, or 1 when decoding); the rows
 * of all sequences are stacked into one activation matrix, so every projection is one
 * product per run of consecutive sequences sharing a weight variant (base W or a merged
 * W'), and every on-the-fly adapter two thin products per run of consecutive sequences
 * whose mixes have the same content (variant_mix_cmp: same adapters, same weights). Callers order sequences to make those runs long. A sequence's
 * result does not depend on the others in its batch (attention is per sequence; the
 * products of decode-sized and prompt-sized batches differ only in float rounding). */
#ifndef LORAD_FORWARD_H
#define LORAD_FORWARD_H

#include "error.h"
#include "kv_cache.h"
#include "model.h"
#include "variant.h"

typedef struct {
    const int *tokens;          /* [n_tokens] token ids */
    int n_tokens;               /* >= 1 */
    kv_cache *kv;               /* positions [kv->len, kv->len + n_tokens) are written;
                                 * its blocks must hold them (kv_cache_reserve) */
    const variant *merged;      /* merged W' or NULL (base W) */
    const variant_mix *lora;    /* adapters applied on the fly, or NULL */
    int want_logits;            /* 1: logits of the last token are produced */
} forward_seq;

typedef struct forward_ctx forward_ctx;

/* Scratch for batches of up to max_rows rows in total, and a pool of n_threads threads
 * (the caller's included; 0 = one per online CPU, at most 16). Owned by the caller
 * (forward_free); NULL + err on failure. Belongs to one thread (the engine's). */
forward_ctx *forward_create(const model *m, int max_rows, int n_threads, lr_error *err);
void forward_free(forward_ctx *f);  /* accepts NULL */

/* Threads of f's pool, the caller's included (what n_threads = 0 chose). */
int forward_threads(const forward_ctx *f);

/* Wakes the pool's sleeping workers ahead of a batch about to come (pool_wake). Unlike
 * everything else here, any thread may call it. */
void forward_wake(forward_ctx *f);

/* Runs fn(ctx, task, thread) for tasks [0, n_tasks) on the pool's threads (the caller's
 * included) and returns when all have finished; one task runs on the caller. Engine
 * thread, between batches. */
void forward_run(forward_ctx *f, void (*fn)(void *ctx, int task, int thread), void *ctx,
                 int n_tasks);

/* Where the time of forward passes goes, for profiling (forward_set_profile): seconds per
 * phase, summed over the passes run while it is set. Norms, the residual adds, SwiGLU,
 * attention and the KV stores (RoPE included) are their own phases — except that a
 * residual add followed by a norm is counted in the norm (they are one pass), and the
 * RoPE and KV store of a decode row whose attention is one task for all its heads (8 or
 * more sequences on 2 threads) in attention (the task does both); each projection group
 * (q/k/v, o, gate/up, down) is one, its adapters' products included; setup is the
 * embeddings and the batch's layout; draw is the engine's (sampling and emitting tokens,
 * filled by engine_step, not here). */
enum {
    FWD_PH_SETUP, FWD_PH_NORMS, FWD_PH_QKV, FWD_PH_KV, FWD_PH_ATTN, FWD_PH_O, FWD_PH_RESID,
    FWD_PH_GATE_UP, FWD_PH_SWIGLU, FWD_PH_DOWN, FWD_PH_LM_HEAD, FWD_PH_DRAW, FWD_PH_COUNT
};
typedef struct {
    double sec[FWD_PH_COUNT];
    long passes;
} forward_profile;
extern const char *const forward_phase_names[FWD_PH_COUNT];

/* Times every pass from now on into p (NULL: stop; the default). The timing is a clock
 * read per phase, ~12 per layer. Engine thread, between batches. */
void forward_set_profile(forward_ctx *f, forward_profile *p);
forward_profile *forward_get_profile(const forward_ctx *f);

/* Times a phase into the profile (no-ops when none is set): forward_phase_begin marks its
 * start, forward_phase_end adds the time since the last mark to phase ph and marks again.
 * forward_batch times its own phases; the engine its drawing of tokens. */
void forward_phase_begin(forward_ctx *f);
void forward_phase_end(forward_ctx *f, int ph);

/* Runs the batch: appends every sequence's keys/values to its cache (kv->len advances by
 * n_tokens) and writes, for each sequence with want_logits, in order, one row of
 * vocab_size logits to logits [n_want, vocab]. Fails (nothing written) when a
 * token id is out of range, a cache has too few blocks or the batch exceeds max_rows. */
int forward_batch(forward_ctx *f, forward_seq *seqs, int n_seqs, float *logits, lr_error *err);

#endif
