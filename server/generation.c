/* generation: collects tokens; decodes text with a streaming decoder and holds back any
 * tail that could still become a stop string, so streamed text never needs retracting. */
#include "generation.h"

#include <stdlib.h>
#include <string.h>

struct generation {
    generation_options opt;
    tokenizer_stream *stream;
    engine_token *toks;
    int n_toks, cap_toks;
    char *text;           /* decoded so far; after a stop match, truncated before it */
    size_t len, cap;
    size_t emitted;       /* bytes of text already passed to on_text */
    size_t max_stop;      /* longest stop string */
    int finished;
    engine_finish reason;
    lr_error err;
    int failed;           /* out of memory while collecting */
    int stop_hit;         /* a stop string ended the text */
};

generation *generation_new(const generation_options *opt, lr_error *err)
{
    if (opt->n_stop < 0 || opt->n_stop > GENERATION_MAX_STOP) {
        lr_error_set(err, LR_EINVAL, "at most %d stop strings", GENERATION_MAX_STOP);
        return NULL;
    }
    if (opt->n_stop && !opt->tok) {
        lr_error_set(err, LR_EINVAL, "stop strings need the model's tokenizer.json");
        return NULL;
    }
    generation *g = calloc(1, sizeof *g);
    if (!g) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        return NULL;
    }
    g->opt = *opt;
    for (int i = 0; i < opt->n_stop; i++) {
        size_t n = strlen(opt->stop[i]);
        if (n == 0) {
            lr_error_set(err, LR_EINVAL, "stop strings must not be empty");
            generation_free(g);
            return NULL;
        }
        g->max_stop = n > g->max_stop ? n : g->max_stop;
    }
    if (opt->tok && !(g->stream = tokenizer_stream_new(opt->tok, 1))) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        generation_free(g);
        return NULL;
    }
    return g;
}

void generation_free(generation *g)
{
    if (!g)
        return;
    tokenizer_stream_free(g->stream);
    free(g->toks);
    free(g->text);
    free(g);
}

static int append_text(generation *g, const char *s, size_t n)
{
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 256;
        while (cap < g->len + n + 1)
            cap *= 2;
        char *t = realloc(g->text, cap);
        if (!t)
            return -1;
        g->text = t;
        g->cap = cap;
    }
    memcpy(g->text + g->len, s, n);
    g->len += n;
    g->text[g->len] = '\0';
    return 0;
}

/* Emits text up to `upto` bytes. */
static void emit(generation *g, size_t upto)
{
    if (upto > g->emitted && g->opt.on_text)
        g->opt.on_text(g->opt.user, g->text + g->emitted, upto - g->emitted);
    if (upto > g->emitted)
        g->emitted = upto;
}

/* Returns 1 when a stop string now occurs in the text (text is truncated before it). */
static int check_stop(generation *g, size_t old_len)
{
    size_t from = old_len > g->max_stop ? old_len - g->max_stop : 0;
    size_t best = (size_t)-1;
    for (int i = 0; i < g->opt.n_stop; i++) {
        const char *hit = memmem(g->text + from, g->len - from, g->opt.stop[i],
                                 strlen(g->opt.stop[i]));
        if (hit && (size_t)(hit - g->text) < best)
            best = (size_t)(hit - g->text);
    }
    if (best == (size_t)-1)
        return 0;
    g->len = best;
    g->text[best] = '\0';
    return 1;
}

static int on_token(void *user, const engine_token *tok)
{
    generation *g = user;
    if (g->n_toks == g->cap_toks) {
        int cap = g->cap_toks ? g->cap_toks * 2 : 64;
        engine_token *t = realloc(g->toks, sizeof *t * (size_t)cap);
        if (!t) {
            g->failed = 1;
            return 1;
        }
        g->toks = t;
        g->cap_toks = cap;
    }
    g->toks[g->n_toks++] = *tok;
    if (!g->stream)
        return 0;
    char *piece = NULL;
    size_t n = 0;
    if (tokenizer_stream_push(g->stream, tok->id, &piece, &n) != 0) {
        free(piece);
        return 0;
    }
    size_t old = g->len;
    int rc = append_text(g, piece, n);
    free(piece);
    if (rc) {
        g->failed = 1;
        return 1;
    }
    if (g->opt.n_stop && check_stop(g, old)) {
        g->stop_hit = 1;
        emit(g, g->len);
        return 1;
    }
    /* Hold back the last max_stop - 1 bytes: they could start a stop string. */
    size_t safe = g->len;
    if (g->max_stop > 1)
        safe = g->len > g->max_stop - 1 ? g->len - (g->max_stop - 1) : 0;
    /* never cut inside a UTF-8 character: back up over continuation bytes */
    while (safe > g->emitted && safe < g->len && ((unsigned char)g->text[safe] & 0xC0) == 0x80)
        safe--;
    emit(g, safe < g->emitted ? g->emitted : safe);
    return 0;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    generation *g = user;
    g->finished = 1;
    g->reason = reason;
    if (err)
        g->err = *err;
    if (g->failed && reason != ENGINE_FINISH_ERROR) {
        g->reason = ENGINE_FINISH_ERROR;
        lr_error_set(&g->err, LR_ENOMEM, "out of memory collecting the output");
    }
    /* Flush held-back bytes unless a stop string already ended the text. */
    if (g->stream && !g->stop_hit) {
        char *piece = NULL;
        size_t n = 0;
        if (tokenizer_stream_flush(g->stream, &piece, &n) == 0) {
            size_t old = g->len;
            if (append_text(g, piece, n) == 0 && g->opt.n_stop && check_stop(g, old) &&
                g->reason == ENGINE_FINISH_LENGTH)
                g->reason = ENGINE_FINISH_STOP;  /* the stop string was in the held-back tail */
        }
        free(piece);
    }
    emit(g, g->len);
}

void generation_attach(generation *g, engine_request *req)
{
    req->on_token = on_token;
    req->on_done = on_done;
    req->user = g;
}

int generation_finished(const generation *g) { return g->finished; }
engine_finish generation_finish_reason(const generation *g) { return g->reason; }
const lr_error *generation_error(const generation *g) { return &g->err; }

const engine_token *generation_tokens(const generation *g, int *n)
{
    *n = g->n_toks;
    return g->toks;
}

const char *generation_text(const generation *g, size_t *len)
{
    if (len)
        *len = g->len;
    return g->text ? g->text : "";
}
