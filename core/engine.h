/* engine: runs many generation requests over one model, a step at a time. Each step
 * decodes one token for every running sequence and prefills (a chunk of) waiting prompts,
 * all in one forward_batch, with sequences ordered by weight variant and adapter mix so
 * that rows sharing weights share products. A sequence's tokens do not depend on what
 * else is in the batch.
 *
 * Requests pass three stages: submitted (in the inbox, thread-safe), waiting (admitted to
 * the queue in arrival order, no KV memory held) and running (a slot, KV blocks and a
 * sampler). The KV cache is one pool of blocks of KV_BLOCK positions (core/kv_cache.h):
 * a waiting request starts when a slot is free and the pool has the blocks of its
 * prompt; the head of the queue is never overtaken, so prompts start in arrival order.
 * A running sequence takes one more block each time its positions fill the last; when
 * the pool has none, the most recently admitted running sequence is preempted — its
 * blocks freed, itself put back at the front of the queue — and later recomputed (its
 * prompt and the tokens it had generated prefilled again) and continued: never failed,
 * no token produced twice, and with the same tokens as if it had never been interrupted.
 *
 * Threads: engine_submit, engine_cancel, engine_cancel_all, engine_stop and engine_stats
 * may be called from any thread. engine_step and engine_run belong to one thread, the
 * engine thread; on_token and on_done are called on it. engine_create / engine_destroy
 * belong to the owner, with no engine thread running. */
#ifndef LORAD_ENGINE_H
#define LORAD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "forward.h"
#include "model.h"
#include "sampler.h"
#include "variant.h"

#define ENGINE_MAX_LOGPROBS 20

typedef struct {
    int max_batch_rows;   /* prompt rows fed per step over all prefilling sequences (the
                           * prefill chunk; decode rows come on top); default 512 */
    int max_seqs;         /* sequences running at once; default 16 */
    int max_queue;        /* requests waiting beyond those; more are refused with
                           * LR_EBUSY; default 64 */
    size_t max_kv_bytes;  /* KV cache memory of all running sequences, in whole blocks
                           * (at least one); 0 = room for max_seqs full contexts. Either
                           * way blocks are allocated on first use, then reused */
    int max_ctx;          /* positions per sequence (prompt + output), at most the model's
                           * max_position_embeddings; 0 = the model's */
    int threads;          /* threads of the engine's pool, its own included; 0 = one per
                           * CPU */
    /* A liveness signal from the loop itself (the systemd watchdog): engine_run calls
     * on_heartbeat(heartbeat_user) on the engine thread at least every heartbeat_ms while
     * it turns — between steps, and on a timer while idle — never from inside a step, so
     * a step that hangs stops the heartbeats and an idle engine keeps them. 0 / NULL =
     * none. */
    int heartbeat_ms;
    void (*on_heartbeat)(void *user);
    void *heartbeat_user;
} engine_options;

typedef enum {
    ENGINE_FINISH_STOP,      /* EOS, or the token callback asked to stop (stop string) */
    ENGINE_FINISH_LENGTH,    /* max_tokens reached, or the context is full */
    ENGINE_FINISH_ERROR,     /* see the error passed to on_done */
    ENGINE_FINISH_CANCELLED  /* engine_cancel / engine_cancel_all */
} engine_finish;

typedef struct {
    int id;                 /* the sampled token */
    float logprob;          /* its log-probability under the model (before temperature) */
    int n_top;              /* number of alternatives below (0 unless logprobs requested) */
    int top_ids[ENGINE_MAX_LOGPROBS];
    float top_logprobs[ENGINE_MAX_LOGPROBS];
} engine_token;

/* Called for every generated token; return nonzero to finish the sequence (STOP). */
typedef int (*engine_token_fn)(void *user, const engine_token *tok);
/* Called exactly once per accepted request, last; err is NULL unless reason is ERROR. */
typedef void (*engine_done_fn)(void *user, engine_finish reason, const lr_error *err);

typedef struct {
    const int *prompt;          /* [n_prompt] token ids; copied by engine_submit */
    int n_prompt;               /* >= 1 */
    int max_tokens;             /* >= 1 */
    sampler_params sampling;
    int logprobs;               /* top alternatives per token, 0..ENGINE_MAX_LOGPROBS */
    int no_logprob;             /* 1: the tokens' logprob is not wanted (NAN, unless it is
                                 * among the alternatives): one pass over the vocabulary
                                 * less per token */
    int ignore_eos;             /* 1: do not stop on the model's EOS ids */
    const variant *merged;      /* borrowed, or NULL; valid until on_done */
    const variant_mix *lora;    /* borrowed, or NULL; valid until on_done (the mix struct
                                 * itself too) */
    /* 1: merged (set, with lora its adapter at weight 1) serves only the steps whose every
     * row runs on it; in the others the request's rows take lora on the fly (see
     * engine.c, "W' only alone") */
    int merged_alone;
    engine_token_fn on_token;
    engine_done_fn on_done;
    void *user;
} engine_request;

typedef struct {
    int running;           /* sequences with a slot */
    int waiting;           /* accepted, not yet running (preempted ones included) */
    size_t kv_bytes;       /* KV cache memory held by the running sequences:
                            * kv_blocks_used blocks */
    size_t kv_limit;       /* the KV pool: kv_blocks_total blocks */
    int kv_blocks_used;    /* KV blocks held by running sequences */
    int kv_blocks_free;    /* kv_blocks_total - kv_blocks_used */
    int kv_blocks_total;   /* blocks of KV_BLOCK positions in the pool (max_kv_bytes /
                            * the block size, or max_seqs full contexts); constant */
    uint64_t steps;        /* steps run so far */
    uint64_t decode_rows;  /* rows the steps decoded so far: one per sequence and step */
    uint64_t prefill_rows; /* rows of prompt (and of recomputation after a preemption) the
                            * steps ran so far */
    double step_seconds;   /* wall time of the steps that ran rows, so far: with steps
                            * and rows, the mean step and its rows (/metrics) */
    uint64_t cancelled;    /* requests finished with CANCELLED so far */
    uint64_t preemptions;  /* running sequences preempted for want of KV blocks so far */
} engine_stats;

typedef struct engine engine;

engine_options engine_options_default(void);

/* Creates an engine over m (borrowed; must outlive the engine). NULL + err on failure,
 * among them a max_kv_bytes below one KV block. */
engine *engine_create(const model *m, const engine_options *opt, lr_error *err);

/* Frees the engine; running and waiting requests are finished with ERROR first. The
 * engine thread must have returned from engine_run. Accepts NULL. */
void engine_destroy(engine *e);

/* Accepts a request: validates it (prompt ids in range, prompt + max_tokens within the
 * context, the KV blocks of prompt + max_tokens within the whole pool, sampling
 * parameters, adapters for this model) and
 * queues it. On success returns 0, stores a request id (> 0, for engine_cancel) in *id
 * when id is not NULL, and on_done will be called exactly once. On error returns negative
 * (LR_EBUSY when running + waiting requests already fill max_seqs + max_queue, LR_EINVAL
 * for a bad request), fills err and calls no callback. Thread-safe. */
int engine_submit(engine *e, const engine_request *req, uint64_t *id, lr_error *err);

/* Asks the engine to finish request id with CANCELLED at its next step, wherever it is
 * (waiting, preempted, prefilling, decoding); its KV blocks are freed then. An id that has already
 * finished (or never existed) is ignored. Thread-safe. */
void engine_cancel(engine *e, uint64_t id);

/* Cancels every request accepted so far. Thread-safe. */
void engine_cancel_all(engine *e);

/* Times the steps from now on, phase by phase, into p (forward.h; NULL: stop): the forward
 * passes' phases and the drawing and emitting of tokens. Engine thread, between steps
 * (bench_batch --profile). */
void engine_set_profile(engine *e, forward_profile *p);

/* Runs one step: takes in submitted requests and cancellations, starts waiting requests
 * that fit, feeds one batch. Returns the number of requests still running or waiting
 * afterwards, or negative if the step itself failed (every sequence in it is then
 * finished with ERROR). Engine thread. */
int engine_step(engine *e, lr_error *err);

/* The engine thread's loop: steps while there is work, sleeps on a condition variable
 * (no polling; with a heartbeat, it wakes to call it) when there is none, returns after
 * engine_stop. */
void engine_run(engine *e);

/* Makes engine_run return after its current step; requests stay where they are.
 * Thread-safe. */
void engine_stop(engine *e);

/* Requests running or waiting (submitted ones included). Thread-safe. */
int engine_running(engine *e);

/* A consistent snapshot of the counters. Thread-safe. */
void engine_stats_get(engine *e, engine_stats *st);

/* Context length in positions (prompt + output) the engine serves. Thread-safe. */
int engine_ctx(const engine *e);

/* Threads of the engine's pool, its own included (what threads = 0 chose). Thread-safe. */
int engine_threads(const engine *e);

#endif
