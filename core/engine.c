/* engine: sequence slots, step scheduling, sampling and finishing. */
#include "engine.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "kv_cache.h"

typedef struct {
    int used;
    engine_request req;   /* prompt pointer replaced by our copy */
    int *prompt;          /* [n_prompt] owned copy */
    int n_fed;            /* prompt tokens already in the cache */
    int n_generated;
    int last;             /* last sampled token, input of the next decode step */
    kv_cache *kv;
    sampler *smp;
    long order;           /* submission order, for a stable batch order */
} seq;

struct engine {
    const model *m;
    engine_options opt;
    forward_ctx *fwd;
    seq *seqs;            /* [max_seqs] slots */
    int running;
    long submitted;
    float *logits;        /* [max_seqs, vocab] */
    forward_seq *batch;   /* [max_seqs] */
    int *slots;           /* [max_seqs] slots in this step's batch, in batch order */
    int *chunk_of;        /* [max_seqs] rows each slot feeds this step */
};

engine_options engine_options_default(void)
{
    engine_options o = {.max_batch_rows = 512, .max_seqs = 16};
    return o;
}

engine *engine_create(const model *m, const engine_options *opt, lr_error *err)
{
    engine *e = calloc(1, sizeof *e);
    if (!e)
        goto oom;
    e->m = m;
    e->opt = opt ? *opt : engine_options_default();
    if (e->opt.max_batch_rows < 1 || e->opt.max_seqs < 1) {
        lr_error_set(err, LR_EINVAL, "engine: max_batch_rows and max_seqs must be positive");
        goto fail;
    }
    /* A step holds at most max_seqs - 1 decode rows plus one prefill chunk. */
    int rows = e->opt.max_batch_rows + e->opt.max_seqs;
    e->fwd = forward_create(m, rows, err);
    if (!e->fwd)
        goto fail;
    e->seqs = calloc((size_t)e->opt.max_seqs, sizeof *e->seqs);
    e->logits = malloc(sizeof(float) * (size_t)e->opt.max_seqs * m->cfg.vocab_size);
    e->batch = calloc((size_t)e->opt.max_seqs, sizeof *e->batch);
    e->slots = calloc((size_t)e->opt.max_seqs, sizeof *e->slots);
    e->chunk_of = calloc((size_t)e->opt.max_seqs, sizeof *e->chunk_of);
    if (!e->seqs || !e->logits || !e->batch || !e->slots || !e->chunk_of)
        goto oom;
    return e;
oom:
    lr_error_set(err, LR_ENOMEM, "out of memory creating the engine");
fail:
    engine_destroy(e);
    return NULL;
}

static void seq_finish(engine *e, seq *s, engine_finish reason, const lr_error *err)
{
    engine_done_fn done = s->req.on_done;
    void *user = s->req.user;
    kv_cache_free(s->kv);
    sampler_destroy(s->smp);
    free(s->prompt);
    memset(s, 0, sizeof *s);
    e->running--;
    if (done)
        done(user, reason, err);
}

void engine_destroy(engine *e)
{
    if (!e)
        return;
    if (e->seqs) {
        lr_error err;
        lr_error_set(&err, LR_EINVAL, "engine shut down");
        for (int i = 0; i < e->opt.max_seqs; i++)
            if (e->seqs[i].used)
                seq_finish(e, &e->seqs[i], ENGINE_FINISH_ERROR, &err);
    }
    forward_free(e->fwd);
    free(e->seqs);
    free(e->logits);
    free(e->batch);
    free(e->slots);
    free(e->chunk_of);
    free(e);
}

int engine_running(const engine *e)
{
    return e->running;
}

int engine_submit(engine *e, const engine_request *req, lr_error *err)
{
    const model_config *c = &e->m->cfg;
    if (req->n_prompt < 1)
        return lr_error_set(err, LR_EINVAL, "the prompt is empty");
    if (req->max_tokens < 1)
        return lr_error_set(err, LR_EINVAL, "max_tokens must be at least 1 (got %d)",
                            req->max_tokens);
    if (req->logprobs < 0 || req->logprobs > ENGINE_MAX_LOGPROBS)
        return lr_error_set(err, LR_EINVAL, "logprobs must be between 0 and %d (got %d)",
                            ENGINE_MAX_LOGPROBS, req->logprobs);
    if (req->n_prompt >= c->max_positions)
        return lr_error_set(err, LR_EINVAL, "the prompt has %d tokens; the model's context "
                            "is %d positions", req->n_prompt, c->max_positions);
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= c->vocab_size)
            return lr_error_set(err, LR_EINVAL, "prompt token %d at index %d is out of range "
                                "[0, %d)", req->prompt[i], i, c->vocab_size);
    if (sampler_params_check(&req->sampling, err))
        return err ? err->code : LR_EINVAL;
    if (req->merged && req->merged->n_layers != c->n_layers)
        return lr_error_set(err, LR_EINVAL, "merged weights are for another model");
    if (req->lora) {
        if (req->lora->n < 0 || req->lora->n > VARIANT_MAX_TERMS)
            return lr_error_set(err, LR_EINVAL, "an adapter mix has %d terms (at most %d)",
                                req->lora->n, VARIANT_MAX_TERMS);
        for (int i = 0; i < req->lora->n; i++)
            if (!req->lora->t[i].w || req->lora->t[i].w->n_layers != c->n_layers)
                return lr_error_set(err, LR_EINVAL, "adapter %d of the mix has %d layers, the "
                                    "base model has %d", i,
                                    req->lora->t[i].w ? req->lora->t[i].w->n_layers : 0,
                                    c->n_layers);
    }
    int slot = -1;
    for (int i = 0; i < e->opt.max_seqs && slot < 0; i++)
        if (!e->seqs[i].used)
            slot = i;
    if (slot < 0)
        return lr_error_set(err, LR_ENOMEM, "engine is full (%d sequences running)",
                            e->opt.max_seqs);

    seq *s = &e->seqs[slot];
    /* Prompt + output never exceed the context (the OpenAI / vLLM convention). The cache
     * holds the prompt and every generated token but the last, which is never fed. */
    long cap = (long)req->n_prompt + req->max_tokens - 1;
    if (cap > c->max_positions - 1)
        cap = c->max_positions - 1;
    s->kv = kv_cache_new(c, (int)cap);
    s->smp = sampler_create(&req->sampling, c->vocab_size, err);
    s->prompt = malloc(sizeof(int) * (size_t)req->n_prompt);
    if (!s->kv || !s->smp || !s->prompt) {
        if (s->smp && (!s->kv || !s->prompt))
            lr_error_set(err, LR_ENOMEM, "out of memory for a sequence of %ld positions", cap);
        kv_cache_free(s->kv);
        sampler_destroy(s->smp);
        free(s->prompt);
        memset(s, 0, sizeof *s);
        return err ? err->code : LR_ENOMEM;
    }
    memcpy(s->prompt, req->prompt, sizeof(int) * (size_t)req->n_prompt);
    s->req = *req;
    s->req.prompt = s->prompt;
    s->used = 1;
    s->order = e->submitted++;
    e->running++;
    return 0;
}

/* Batch order: by merged variant, then by adapter mix, then by submission. */
static int cmp_batch(const void *a, const void *b, void *ctx)
{
    const seq *all = ctx;
    const seq *x = &all[*(const int *)a], *y = &all[*(const int *)b];
    if (x->req.merged != y->req.merged)
        return (uintptr_t)x->req.merged < (uintptr_t)y->req.merged ? -1 : 1;
    if (x->req.lora != y->req.lora)
        return (uintptr_t)x->req.lora < (uintptr_t)y->req.lora ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int is_eos(const model_config *c, int id)
{
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id)
            return 1;
    return 0;
}

int engine_step(engine *e, lr_error *err)
{
    const model_config *c = &e->m->cfg;
    int *slots = e->slots, *chunk_of = e->chunk_of;
    int n = 0;

    /* Decoding sequences first (one row each), then prefill chunks, in slot order, from
     * what is left of the row budget. */
    int budget = e->opt.max_batch_rows;
    for (int i = 0; i < e->opt.max_seqs; i++) {
        seq *s = &e->seqs[i];
        if (s->used && s->n_fed == s->req.n_prompt) {
            slots[n++] = i;
            chunk_of[i] = 1;
            budget--;
        }
    }
    for (int i = 0; i < e->opt.max_seqs && budget > 0; i++) {
        seq *s = &e->seqs[i];
        if (s->used && s->n_fed < s->req.n_prompt) {
            int chunk = s->req.n_prompt - s->n_fed;
            chunk = chunk < budget ? chunk : budget;
            slots[n++] = i;
            chunk_of[i] = chunk;
            budget -= chunk;
        }
    }
    if (n == 0)
        return 0;
    qsort_r(slots, (size_t)n, sizeof *slots, cmp_batch, e->seqs);

    for (int k = 0; k < n; k++) {
        seq *s = &e->seqs[slots[k]];
        forward_seq *f = &e->batch[k];
        int decoding = s->n_fed == s->req.n_prompt;
        f->n_tokens = chunk_of[slots[k]];
        f->tokens = decoding ? &s->last : s->prompt + s->n_fed;
        f->kv = s->kv;
        f->merged = s->req.merged;
        f->lora = s->req.lora;
        f->want_logits = decoding || s->n_fed + f->n_tokens == s->req.n_prompt;
    }
    if (forward_batch(e->fwd, e->batch, n, e->logits, err)) {
        for (int k = 0; k < n; k++)
            seq_finish(e, &e->seqs[slots[k]], ENGINE_FINISH_ERROR, err);
        return err ? err->code : LR_EINVAL;
    }

    int row = 0;
    for (int k = 0; k < n; k++) {
        seq *s = &e->seqs[slots[k]];
        if (s->n_fed < s->req.n_prompt)
            s->n_fed += e->batch[k].n_tokens;
        if (!e->batch[k].want_logits)
            continue;
        const float *lg = e->logits + (size_t)row++ * c->vocab_size;
        engine_token tok;
        tok.id = sampler_sample(s->smp, lg);
        tok.n_top = s->req.logprobs ? sampler_top_logprobs(lg, c->vocab_size, s->req.logprobs,
                                                           tok.top_ids, tok.top_logprobs)
                                    : 0;
        /* The chosen token's logprob, identical to its entry among the top ones. */
        int in_top = -1;
        for (int j = 0; j < tok.n_top && in_top < 0; j++)
            if (tok.top_ids[j] == tok.id)
                in_top = j;
        tok.logprob = in_top >= 0 ? tok.top_logprobs[in_top]
                                  : (float)((double)lg[tok.id] -
                                            (double)sampler_logsumexp(lg, c->vocab_size));
        s->last = tok.id;
        s->n_generated++;
        int stop = s->req.on_token ? s->req.on_token(s->req.user, &tok) : 0;
        if (stop || (!s->req.ignore_eos && is_eos(c, tok.id)))
            seq_finish(e, s, ENGINE_FINISH_STOP, NULL);
        else if (s->n_generated >= s->req.max_tokens ||
                 s->req.n_prompt + s->n_generated >= c->max_positions)
            seq_finish(e, s, ENGINE_FINISH_LENGTH, NULL);
    }
    return e->running;
}
