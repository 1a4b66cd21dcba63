/* sampler: turns one row of logits into a token id, with the semantics of Hugging Face
 * transformers' generate(): logits / temperature, then top-k, then top-p (nucleus), then a
 * draw from the renormalized distribution with a seeded RNG; plus log-softmax helpers
 * for the logprobs output.
 *
 * Logit conventions everywhere in this module: NaN is treated as -inf (never a valid
 * token), -inf is a masked token (probability 0), +inf is treated as FLT_MAX. */
#ifndef LORAD_SAMPLER_H
#define LORAD_SAMPLER_H

#include <stdint.h>

#include "error.h"

typedef struct {
    float temperature;  /* 0 = greedy (argmax; lowest id wins ties); otherwise finite > 0 */
    int top_k;          /* 0 = off; keeps exactly min(top_k, vocab) tokens, ties by lower id */
    float top_p;        /* 1.0 = off; (0,1] */
    uint64_t seed;      /* same seed + same logits sequence => same tokens */
} sampler_params;

/* Opaque; one per sequence. Holds a copy of the params, the RNG state and scratch
 * sized for the vocabulary. Not thread-safe: belongs to the engine thread. */
typedef struct sampler sampler;

/* Validates p: rejects temperature < 0, NaN or infinite, top_k < 0, top_p outside (0,1]
 * (or NaN), each with a message naming the parameter and its value.
 * Returns 0, or LR_EINVAL and fills err. Thread-safe (pure). */
int sampler_params_check(const sampler_params *p, lr_error *err);

/* Creates a sampler for a vocabulary of `vocab` (>= 1) tokens; copies *p and seeds the
 * RNG from p->seed. Allocates O(vocab) scratch (8 bytes per token) once, so sampling
 * never allocates. Returns a new sampler the caller frees with sampler_destroy; on
 * error (bad params, vocab < 1, out of memory) returns NULL and fills err.
 * Thread-safe (no shared state). */
sampler *sampler_create(const sampler_params *p, int vocab, lr_error *err);

/* Frees s and its scratch; accepts NULL. */
void sampler_destroy(sampler *s);

/* Returns a token id in [0, vocab) for logits [vocab] (read only, not kept).
 * Greedy (temperature 0, top_k 1, or a temperature so small that 1/T overflows) is one
 * pass and does not advance the RNG; otherwise exactly one RNG draw is consumed.
 * If every logit is -inf or NaN there is no valid token and 0 is returned.
 * Cost: one O(V) pass greedy; a few O(V) passes unfiltered; O(V log k) worst case with
 * top_k; top_p is a quickselect on probability mass (expected linear, never worse than
 * O(n log n)) over the tokens above a probability threshold — for a peaked distribution a
 * handful. Never allocates.
 * Engine thread only (mutates s). */
int sampler_sample(sampler *s, const float *logits /* [vocab] */);

/* 1 when s draws greedily (the largest logit, lowest id on ties, no RNG): temperature 0,
 * top_k 1, a temperature so small that 1/T overflows, or a vocabulary of one. */
int sampler_is_greedy(const sampler *s);

/* One pass over logits [vocab] (vocab >= 1): 1 when every logit is finite, else 0 (and
 * nothing else is meaningful); *argmax the token a greedy sampler draws (the largest
 * logit, lowest id on ties) and *max its logit. With sampler_logsumexp_from, the chosen
 * token and its log-probability of a greedy step in two passes instead of five.
 * Thread-safe (pure). */
int sampler_scan(const float *logits, int vocab, int *argmax, float *max);

/* sampler_logsumexp for finite logits whose maximum is max (from sampler_scan): the
 * same value, one pass fewer. Thread-safe (pure). */
float sampler_logsumexp_from(const float *logits, int vocab, float max);

/* log(sum_i exp(logits[i])) for logits [vocab], computed stably (max subtracted, double
 * accumulation); independent of any temperature. Returns -inf when every logit is -inf
 * or NaN (or vocab < 1). Thread-safe (pure). */
float sampler_logsumexp(const float *logits, int vocab);

/* Writes the min(k, vocab) most likely token ids to ids [k] and their natural-log
 * probabilities log_softmax(logits) to logprobs [k], sorted by descending probability,
 * ties by lower id; independent of any temperature. Uses only the caller's buffers
 * (no allocation), O(V log k). Returns the number written (0 when k < 1 or vocab < 1).
 * If every logit is -inf/NaN, all written logprobs are -inf. Thread-safe (pure). */
int sampler_top_logprobs(const float *logits, int vocab, int k, int *ids, float *logprobs);

#endif
