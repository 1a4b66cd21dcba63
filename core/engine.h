/* engine: runs many generation requests over one model, a step at a time. Each step
 * decodes one token for every running sequence and prefills (a chunk of) new prompts,
 * all in one forward_batch, with sequences ordered by weight variant and adapter mix so
 * that rows sharing weights share GEMMs. A sequence's tokens do not depend on what else
 * is in the batch.
 *
 * Threads: every function here belongs to the engine thread (the one that calls
 * engine_step); callbacks run on that thread too. The daemon puts a request queue in
 * front of engine_submit. */
#ifndef LORAD_ENGINE_H
#define LORAD_ENGINE_H

#include "error.h"
#include "model.h"
#include "sampler.h"
#include "variant.h"

#define ENGINE_MAX_LOGPROBS 20

typedef struct {
    int max_batch_rows;  /* rows per step (prefill chunk budget); default 512 */
    int max_seqs;        /* sequences running at once; default 16 */
} engine_options;

typedef enum {
    ENGINE_FINISH_STOP,    /* EOS, or the token callback asked to stop (stop string) */
    ENGINE_FINISH_LENGTH,  /* max_tokens reached, or the context is full */
    ENGINE_FINISH_ERROR    /* see the error passed to on_done */
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
    int ignore_eos;             /* 1: do not stop on the model's EOS ids */
    const variant *merged;      /* borrowed, or NULL; valid until on_done */
    const variant_mix *lora;    /* borrowed, or NULL; valid until on_done */
    engine_token_fn on_token;
    engine_done_fn on_done;
    void *user;
} engine_request;

typedef struct engine engine;

engine_options engine_options_default(void);

/* Creates an engine over m (borrowed; must outlive the engine). NULL + err on failure. */
engine *engine_create(const model *m, const engine_options *opt, lr_error *err);

/* Frees the engine; running sequences are finished with ERROR first. Accepts NULL. */
void engine_destroy(engine *e);

/* Accepts a request (validates it: prompt ids in range, fits the context, sampling
 * parameters, capacity). On error returns negative, fills err and calls no callback. */
int engine_submit(engine *e, const engine_request *req, lr_error *err);

/* Runs one step. Returns the number of sequences still running afterwards, or negative
 * if the step itself failed (every sequence in it is then finished with ERROR). */
int engine_step(engine *e, lr_error *err);

/* Number of running sequences. */
int engine_running(const engine *e);

#endif
