/* generation: one request's output as it is produced — token ids, logprobs, text decoded
 * incrementally, stop strings — plugged into an engine_request's callbacks. Used by the
 * CLI and the daemon alike. */
#ifndef LORAD_GENERATION_H
#define LORAD_GENERATION_H

#include <stddef.h>

#include "core/engine.h"
#include "core/tokenizer.h"

#define GENERATION_MAX_STOP 8

typedef struct {
    const tokenizer *tok;       /* may be NULL: no text, no stop strings */
    const char *stop[GENERATION_MAX_STOP];   /* stop strings (borrowed), n_stop of them */
    int n_stop;
    /* Called with each piece of text that is final (never part of a stop string). */
    void (*on_text)(void *user, const char *text, size_t len);
    void *user;
} generation_options;

typedef struct generation generation;

/* NULL + err on failure (too many or empty stop strings, stop strings without tokenizer). */
generation *generation_new(const generation_options *opt, lr_error *err);
void generation_free(generation *g);  /* accepts NULL */

/* Points req->on_token / on_done / user at g. */
void generation_attach(generation *g, engine_request *req);

int generation_finished(const generation *g);
engine_finish generation_finish_reason(const generation *g);
const lr_error *generation_error(const generation *g);  /* set when reason is ERROR */
const engine_token *generation_tokens(const generation *g, int *n);
const char *generation_text(const generation *g, size_t *len);  /* stop string excluded */

#endif
