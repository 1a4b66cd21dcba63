/* engine: the inbox, the waiting queue, sequence slots, step scheduling, sampling and
 * finishing. */
#include "engine.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "forward.h"
#include "kv_cache.h"
#include "log.h"

typedef struct seq seq;
struct seq {
    uint64_t id;          /* submission order, > 0 */
    engine_request req;   /* prompt pointer replaced by our copy */
    int *prompt;          /* [n_prompt + most tokens it may generate] owned: the prompt,
                           * then the tokens generated so far */
    int cap;              /* KV positions it needs at most */
    int n_feed;           /* tokens of prompt[] to prefill: the prompt; after a preemption,
                           * the prompt and every generated token but the last */
    int n_fed;            /* of those, already in the cache */
    int n_generated;
    int last;             /* last sampled token, input of the next decode step */
    int slot;             /* index in slots while running */
    int chunk;            /* prompt rows this step feeds */
    const variant *w;     /* the merged W' this step runs it on (NULL: base + req.lora) */
    kv_cache kv;          /* its blocks; none unless running */
    sampler *smp;         /* from its first admission on, kept across preemptions (a
                           * seeded RNG continues where it was) */
    seq *next;            /* inbox / waiting list */
};

/* A token drawn from one sequence's logits row, not yet emitted. */
struct drawn {
    int slot;
    const float *lg;     /* its logits row */
    int finite;          /* 0: the row holds NaN or Inf (no token was drawn) */
    engine_token tok;
};

struct engine {
    const model *m;
    engine_options opt;
    int ctx;              /* positions per sequence */
    forward_ctx *fwd;

    /* Engine thread only. */
    seq **slots;          /* [max_seqs] running sequences, NULL = free */
    seq *wait_head, *wait_tail;
    kv_pool *kv;          /* every sequence's KV blocks */
    size_t block_bytes;   /* of one KV block */
    uint64_t preemptions;
    uint64_t decode_rows, prefill_rows;  /* engine_stats' */
    double step_seconds;
    float *logits;        /* [max_seqs, vocab] */
    forward_seq *batch;   /* [max_seqs] */
    seq **order;          /* [max_seqs] this step's sequences, in batch order */
    seq **prefill;        /* [max_seqs] prefill candidates, by arrival */
    struct drawn *drawn;  /* [max_seqs] this step's tokens, drawn before they are emitted */

    /* Shared: under lock. */
    pthread_mutex_t lock;
    pthread_cond_t wake;  /* signalled on submit, cancel and stop */
    seq *inbox_head, *inbox_tail;
    uint64_t *cancels;    /* ids to cancel at the next step */
    int n_cancels, cap_cancels;
    int cancel_all;
    int stop;
    uint64_t next_id;
    int accepted;         /* requests accepted and not yet finished */
    engine_stats st;      /* published after every step */
};

engine_options engine_options_default(void)
{
    engine_options o = {.max_batch_rows = 512, .max_seqs = 16, .max_queue = 64};
    return o;
}

engine *engine_create(const model *m, const engine_options *opt, lr_error *err)
{
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        lr_error_set(err, LR_ENOMEM, "out of memory creating the engine");
        return NULL;
    }
    e->m = m;
    e->opt = opt ? *opt : engine_options_default();
    e->next_id = 1;
    pthread_mutex_init(&e->lock, NULL);
    pthread_condattr_t ca;   /* monotonic: heartbeat timeouts ignore clock changes */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (e->opt.max_batch_rows < 1 || e->opt.max_seqs < 1 || e->opt.max_queue < 0 ||
        e->opt.max_ctx < 0 || e->opt.threads < 0 || e->opt.heartbeat_ms < 0) {
        lr_error_set(err, LR_EINVAL, "engine: max_batch_rows and max_seqs must be positive, "
                     "max_queue, max_ctx, threads and heartbeat_ms not negative");
        goto fail;
    }
    e->ctx = m->cfg.max_positions;
    if (e->opt.max_ctx > 0 && e->opt.max_ctx < e->ctx)
        e->ctx = e->opt.max_ctx;
    /* The KV pool: max_kv_bytes in whole blocks, or without a limit room for every slot's
     * full context — a bound that never preempts, and costs only what is used (blocks are
     * allocated on first use). */
    e->block_bytes = kv_block_bytes(&m->cfg);
    double n_blocks = e->opt.max_kv_bytes
                          ? (double)(e->opt.max_kv_bytes / e->block_bytes)
                          : (double)e->opt.max_seqs * kv_blocks_for(e->ctx);
    e->kv = kv_pool_new(&m->cfg, n_blocks > INT_MAX ? INT_MAX : (int)n_blocks, err);
    if (!e->kv) {
        if (e->opt.max_kv_bytes)
            lr_error_prefix(err, "engine: KV cache limit of %.2f MB", e->opt.max_kv_bytes / 1e6);
        goto fail;
    }
    /* A step holds at most max_seqs decode rows plus the prefill chunk. */
    int rows = e->opt.max_batch_rows + e->opt.max_seqs;
    e->fwd = forward_create(m, rows, e->opt.threads, err);
    if (!e->fwd)
        goto fail;
    size_t n = (size_t)e->opt.max_seqs;
    e->slots = calloc(n, sizeof *e->slots);
    e->logits = malloc(sizeof(float) * n * m->cfg.vocab_size);
    e->batch = calloc(n, sizeof *e->batch);
    e->order = calloc(n, sizeof *e->order);
    e->prefill = calloc(n, sizeof *e->prefill);
    e->drawn = calloc(n, sizeof *e->drawn);
    if (!e->slots || !e->logits || !e->batch || !e->order || !e->prefill || !e->drawn) {
        lr_error_set(err, LR_ENOMEM, "out of memory creating the engine");
        goto fail;
    }
    e->st.kv_limit = (size_t)kv_pool_total(e->kv) * e->block_bytes;
    e->st.kv_blocks_total = e->st.kv_blocks_free = kv_pool_total(e->kv);
    return e;
fail:
    engine_destroy(e);
    return NULL;
}

/* The KV counters of e->st; under e->lock. */
static void publish_kv(engine *e)
{
    int used = kv_pool_used(e->kv), total = kv_pool_total(e->kv);
    e->st.kv_bytes = (size_t)used * e->block_bytes;
    e->st.kv_blocks_used = used;
    e->st.kv_blocks_free = total - used;
    e->st.preemptions = e->preemptions;
}

/* Frees s (running or not) and reports its end; the caller has unlinked it. The
 * published counters are brought up to date first, so that whoever on_done wakes (a
 * client reading /metrics next) sees the request gone. */
static void seq_finish(engine *e, seq *s, engine_finish reason, const lr_error *err)
{
    if (s->kv.n_blocks)
        kv_cache_release(e->kv, &s->kv);
    kv_cache_clear(&s->kv);
    sampler_destroy(s->smp);
    free(s->prompt);
    int running = 0;
    for (int i = 0; e->slots && i < e->opt.max_seqs; i++)
        running += e->slots[i] != NULL;
    pthread_mutex_lock(&e->lock);
    e->accepted--;
    if (reason == ENGINE_FINISH_CANCELLED)
        e->st.cancelled++;
    e->st.running = running;
    e->st.waiting = e->accepted - running;
    publish_kv(e);
    pthread_mutex_unlock(&e->lock);
    if (s->req.on_done)
        s->req.on_done(s->req.user, reason, err);
    free(s);
}

static void finish_slot(engine *e, int i, engine_finish reason, const lr_error *err)
{
    seq *s = e->slots[i];
    e->slots[i] = NULL;
    seq_finish(e, s, reason, err);
}

static void finish_list(engine *e, seq *s, engine_finish reason, const lr_error *err)
{
    while (s) {
        seq *next = s->next;
        seq_finish(e, s, reason, err);
        s = next;
    }
}

void engine_set_profile(engine *e, forward_profile *p)
{
    forward_set_profile(e->fwd, p);
}

void engine_destroy(engine *e)
{
    if (!e)
        return;
    lr_error err;
    lr_error_set(&err, LR_EINVAL, "engine shut down");
    for (int i = 0; e->slots && i < e->opt.max_seqs; i++)
        if (e->slots[i])
            finish_slot(e, i, ENGINE_FINISH_ERROR, &err);
    finish_list(e, e->wait_head, ENGINE_FINISH_ERROR, &err);
    finish_list(e, e->inbox_head, ENGINE_FINISH_ERROR, &err);
    kv_pool_free(e->kv);
    forward_free(e->fwd);
    free(e->slots);
    free(e->logits);
    free(e->drawn);
    free(e->batch);
    free(e->order);
    free(e->prefill);
    free(e->cancels);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->wake);
    free(e);
}

int engine_ctx(const engine *e)
{
    return e->ctx;
}

int engine_threads(const engine *e)
{
    return forward_threads(e->fwd);
}

int engine_running(engine *e)
{
    pthread_mutex_lock(&e->lock);
    int n = e->accepted;
    pthread_mutex_unlock(&e->lock);
    return n;
}

void engine_stats_get(engine *e, engine_stats *st)
{
    pthread_mutex_lock(&e->lock);
    *st = e->st;
    pthread_mutex_unlock(&e->lock);
}

/* Checks everything about req that does not depend on the engine's state. */
static int check_request(const engine *e, const engine_request *req, lr_error *err)
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
    if (req->n_prompt >= e->ctx)
        return lr_error_set(err, LR_EINVAL, "the prompt has %d tokens; the context is %d "
                            "positions", req->n_prompt, e->ctx);
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= c->vocab_size)
            return lr_error_set(err, LR_EINVAL, "prompt token %d at index %d is out of range "
                                "[0, %d)", req->prompt[i], i, c->vocab_size);
    if (sampler_params_check(&req->sampling, err))
        return err ? err->code : LR_EINVAL;
    if (req->merged && req->merged->n_layers != c->n_layers)
        return lr_error_set(err, LR_EINVAL, "merged weights are for another model");
    if (req->merged_alone && (!req->merged || !req->lora))
        return lr_error_set(err, LR_EINVAL, "merged_alone needs both merged weights and "
                            "their adapter");
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
    return 0;
}

int engine_submit(engine *e, const engine_request *req, uint64_t *id, lr_error *err)
{
    if (check_request(e, req, err))
        return err ? err->code : LR_EINVAL;
    /* Prompt + output never exceed the context (the OpenAI / vLLM convention). The cache
     * holds the prompt and every generated token but the last, which is never fed. */
    long cap = (long)req->n_prompt + req->max_tokens - 1;
    if (cap > e->ctx - 1)
        cap = e->ctx - 1;
    /* Alone in the pool it always finishes: it is never preempted for a younger one. */
    int blocks = kv_blocks_for(cap), total = kv_pool_total(e->kv);
    if (blocks > total)
        return lr_error_set(err, LR_EINVAL, "the request needs %d KV cache blocks (%.1f MB) "
                            "for %ld positions; the server's KV cache holds %d (%.1f MB) in "
                            "all (ask for fewer tokens)", blocks, blocks * (e->block_bytes / 1e6),
                            cap, total, total * (e->block_bytes / 1e6));
    long max_new = req->max_tokens < e->ctx - req->n_prompt ? req->max_tokens
                                                             : e->ctx - req->n_prompt;
    seq *s = calloc(1, sizeof *s);
    int *prompt = malloc(sizeof(int) * (size_t)(req->n_prompt + max_new));
    if (!s || !prompt) {
        free(s);
        free(prompt);
        return lr_error_set(err, LR_ENOMEM, "out of memory for a request");
    }
    memcpy(prompt, req->prompt, sizeof(int) * (size_t)req->n_prompt);
    s->req = *req;
    s->req.prompt = s->prompt = prompt;
    s->cap = (int)cap;
    s->n_feed = req->n_prompt;

    pthread_mutex_lock(&e->lock);
    if (e->accepted >= e->opt.max_seqs + e->opt.max_queue) {
        int n = e->accepted;
        pthread_mutex_unlock(&e->lock);
        free(prompt);
        free(s);
        return lr_error_set(err, LR_EBUSY, "the server is busy: %d requests running or "
                            "waiting (at most %d + %d); retry later", n, e->opt.max_seqs,
                            e->opt.max_queue);
    }
    s->id = e->next_id++;
    if (e->inbox_tail)
        e->inbox_tail->next = s;
    else
        e->inbox_head = s;
    e->inbox_tail = s;
    e->accepted++;
    if (id)
        *id = s->id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    /* the workers too, in parallel with the engine thread: an idle engine's first step
     * otherwise runs alone until they wake (1.5-2 ms of a 16-token prompt's ~30 ms) */
    forward_wake(e->fwd);
    return 0;
}

void engine_cancel(engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->lock);
    if (e->n_cancels == e->cap_cancels) {
        int cap = e->cap_cancels ? 2 * e->cap_cancels : 16;
        uint64_t *c = realloc(e->cancels, sizeof *c * (size_t)cap);
        if (!c) {
            /* Cannot remember one id: cancel everything rather than leak a sequence. */
            e->cancel_all = 1;
            goto out;
        }
        e->cancels = c;
        e->cap_cancels = cap;
    }
    e->cancels[e->n_cancels++] = id;
out:
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

void engine_cancel_all(engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->cancel_all = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

void engine_stop(engine *e)
{
    pthread_mutex_lock(&e->lock);
    e->stop = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

static int cmp_id(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Finishes with CANCELLED every sequence whose id is in ids[n] (sorted), or every one. */
static void apply_cancels(engine *e, const uint64_t *ids, int n, int all)
{
    for (int i = 0; i < e->opt.max_seqs; i++)
        if (e->slots[i] && (all || (n && bsearch(&e->slots[i]->id, ids, (size_t)n,
                                                 sizeof *ids, cmp_id))))
            finish_slot(e, i, ENGINE_FINISH_CANCELLED, NULL);
    seq **link = &e->wait_head;
    e->wait_tail = NULL;
    while (*link) {
        seq *s = *link;
        if (all || (n && bsearch(&s->id, ids, (size_t)n, sizeof *ids, cmp_id))) {
            *link = s->next;
            seq_finish(e, s, ENGINE_FINISH_CANCELLED, NULL);
        } else {
            e->wait_tail = s;
            link = &s->next;
        }
    }
}

/* Moves submitted requests to the waiting queue and applies cancellations. */
static void take_inbox(engine *e)
{
    pthread_mutex_lock(&e->lock);
    seq *in = e->inbox_head, *in_tail = e->inbox_tail;
    e->inbox_head = e->inbox_tail = NULL;
    uint64_t *ids = e->cancels;
    int n = e->n_cancels, all = e->cancel_all;
    e->cancels = NULL;
    e->n_cancels = e->cap_cancels = 0;
    e->cancel_all = 0;
    pthread_mutex_unlock(&e->lock);

    if (in) {
        if (e->wait_tail)
            e->wait_tail->next = in;
        else
            e->wait_head = in;
        e->wait_tail = in_tail;
    }
    if (n || all) {
        if (n)
            qsort(ids, (size_t)n, sizeof *ids, cmp_id);
        apply_cancels(e, ids, n, all);
    }
    free(ids);
}

/* Starts waiting requests, in arrival order (preempted ones rejoin at the front), while
 * a slot is free and the pool has the blocks of the head's prefill: its prompt, or for a
 * preempted one everything it recomputes. Later positions get their blocks as they come
 * (grow). */
static void admit(engine *e)
{
    const model_config *c = &e->m->cfg;
    for (int i = 0; i < e->opt.max_seqs && e->wait_head; i++) {
        if (e->slots[i])
            continue;
        seq *s = e->wait_head;
        if (kv_blocks_for(s->n_feed) > kv_pool_total(e->kv) - kv_pool_used(e->kv))
            return;
        e->wait_head = s->next;
        if (!e->wait_head)
            e->wait_tail = NULL;
        s->next = NULL;
        lr_error err = {0};
        if ((!s->smp && !(s->smp = sampler_create(&s->req.sampling, c->vocab_size, &err))) ||
            kv_cache_reserve(e->kv, &s->kv, s->n_feed, &err)) {
            seq_finish(e, s, ENGINE_FINISH_ERROR, &err);
            i--;   /* the slot is still free */
            continue;
        }
        s->slot = i;
        e->slots[i] = s;
    }
}

/* Batch order: by the merged W' the step runs a sequence on (seq.w), then by adapter mix
 * content, then by arrival. */
static int cmp_batch(const void *a, const void *b)
{
    const seq *x = *(seq *const *)a, *y = *(seq *const *)b;
    if (x->w != y->w)
        return (uintptr_t)x->w < (uintptr_t)y->w ? -1 : 1;
    int c = x->w ? 0 : variant_mix_cmp(x->req.lora, y->req.lora);
    if (c)
        return c;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_arrival(const void *a, const void *b)
{
    const seq *x = *(seq *const *)a, *y = *(seq *const *)b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int is_eos(const model_config *c, int id)
{
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id)
            return 1;
    return 0;
}

static void publish(engine *e, int stepped)
{
    int running = 0;
    for (int i = 0; i < e->opt.max_seqs; i++)
        running += e->slots[i] != NULL;
    pthread_mutex_lock(&e->lock);
    e->st.running = running;
    e->st.waiting = e->accepted - running;
    publish_kv(e);
    e->st.steps += (uint64_t)stepped;
    e->st.decode_rows = e->decode_rows;
    e->st.prefill_rows = e->prefill_rows;
    e->st.step_seconds = e->step_seconds;
    pthread_mutex_unlock(&e->lock);
}

/* Draws the token of d's row: the sampling itself, its top alternatives and its logprob —
 * everything that reads the row. Touches only that sequence's sampler, so the rows of a
 * step are drawn in parallel (draw_task). One scan checks that the logits are finite and
 * finds the greedy token and the maximum, which the log-sum-exp reuses: a greedy row is
 * two passes over the vocabulary, not five (49152 logits: 53 -> 35 µs), and one where the
 * request wants no logprob (no_logprob: the API's requests without "logprobs"). */
static void draw_token(engine *e, struct drawn *d)
{
    const model_config *c = &e->m->cfg;
    seq *s = e->slots[d->slot];
    const float *lg = d->lg;
    int argmax;
    float max;
    d->finite = sampler_scan(lg, c->vocab_size, &argmax, &max);
    if (!d->finite)
        return;
    engine_token *tok = &d->tok;
    tok->id = sampler_is_greedy(s->smp) ? argmax : sampler_sample(s->smp, lg);
    tok->n_top = s->req.logprobs ? sampler_top_logprobs(lg, c->vocab_size, s->req.logprobs,
                                                        tok->top_ids, tok->top_logprobs)
                                 : 0;
    /* The chosen token's logprob, identical to its entry among the top ones. */
    int in_top = -1;
    for (int j = 0; j < tok->n_top && in_top < 0; j++)
        if (tok->top_ids[j] == tok->id)
            in_top = j;
    tok->logprob = in_top >= 0       ? tok->top_logprobs[in_top]
                   : s->req.no_logprob ? NAN
                                       : (float)((double)lg[tok->id] -
                                                 (double)sampler_logsumexp_from(
                                                     lg, c->vocab_size, max));
}

/* pool task: row `task` of the step's drawn tokens. */
static void draw_task(void *ctx, int task, int thread)
{
    (void)thread;
    engine *e = ctx;
    draw_token(e, &e->drawn[task]);
}

/* Emits a drawn token to its request and finishes the sequence when due (engine thread,
 * in batch order). */
static void emit_token(engine *e, const struct drawn *d)
{
    const model_config *c = &e->m->cfg;
    int slot = d->slot;
    seq *s = e->slots[slot];
    if (!d->finite) {
        lr_error err;
        lr_error_set(&err, LR_EINVAL, "the model produced non-finite logits (NaN or Inf) at "
                     "position %d; the weights or the adapter's scale are out of range",
                     s->req.n_prompt + s->n_generated);
        finish_slot(e, slot, ENGINE_FINISH_ERROR, &err);
        return;
    }
    const engine_token *tok = &d->tok;
    s->last = tok->id;
    s->prompt[s->req.n_prompt + s->n_generated++] = tok->id;   /* for a recompute */
    int stop = s->req.on_token ? s->req.on_token(s->req.user, tok) : 0;
    if (stop || (!s->req.ignore_eos && is_eos(c, tok->id)))
        finish_slot(e, slot, ENGINE_FINISH_STOP, NULL);
    else if (s->n_generated >= s->req.max_tokens || s->req.n_prompt + s->n_generated >= e->ctx)
        finish_slot(e, slot, ENGINE_FINISH_LENGTH, NULL);
}

/* The running sequence admitted last: the one with the highest id (admission takes the
 * queue in arrival order, and a preempted sequence rejoins it ahead of every later
 * arrival, so every running sequence arrived before every waiting one). */
static seq *newest_running(engine *e)
{
    seq *n = NULL;
    for (int i = 0; i < e->opt.max_seqs; i++)
        if (e->slots[i] && (!n || e->slots[i]->id > n->id))
            n = e->slots[i];
    return n;
}

/* Frees s's blocks and puts it at the front of the waiting queue, to be recomputed when
 * admitted again: its prompt and every generated token but the last become its prefill
 * (no logits wanted), the last one stays its next decode input. Its sampler is kept, so
 * it continues as if never interrupted and no token is produced twice. */
static void preempt(engine *e, seq *s)
{
    e->slots[s->slot] = NULL;
    kv_cache_release(e->kv, &s->kv);
    s->n_fed = 0;
    s->n_feed = s->req.n_prompt + (s->n_generated > 0 ? s->n_generated - 1 : 0);
    s->next = e->wait_head;
    e->wait_head = s;
    if (!e->wait_tail)
        e->wait_tail = s;
    e->preemptions++;
    log_debug("engine: request %llu preempted after %d tokens (KV cache full); %d positions "
              "to recompute", (unsigned long long)s->id, s->n_generated, s->n_feed);
}

/* Gives each decoding sequence whose blocks are full the block its next position needs,
 * oldest first; when the pool has none, preempts the newest running sequence (perhaps the
 * one asking) until it does. So the oldest sequence always progresses, and a request that
 * fits the pool alone always finishes. Returns the number of preemptions. */
static int grow(engine *e)
{
    int n = 0, preempted = 0;
    for (int i = 0; i < e->opt.max_seqs; i++)
        if (e->slots[i])
            e->prefill[n++] = e->slots[i];
    qsort(e->prefill, (size_t)n, sizeof *e->prefill, cmp_arrival);
    for (int k = 0; k < n; k++) {
        seq *s = e->prefill[k];
        /* skip: preempted above, prefilling (its blocks came at admission), or room left */
        if (e->slots[s->slot] != s || s->n_fed < s->n_feed ||
            s->kv.len < s->kv.n_blocks * KV_BLOCK)
            continue;
        while (kv_pool_used(e->kv) == kv_pool_total(e->kv) && e->slots[s->slot] == s) {
            preempt(e, newest_running(e));
            preempted++;
        }
        lr_error err = {0};
        if (e->slots[s->slot] == s && kv_cache_reserve(e->kv, &s->kv, s->kv.len + 1, &err))
            finish_slot(e, s->slot, ENGINE_FINISH_ERROR, &err);
    }
    return preempted;
}

int engine_step(engine *e, lr_error *err)
{
    take_inbox(e);
    /* Running sequences first; none starts in a step that had to preempt (it would only
     * take the blocks back from the one just preempted). */
    if (!grow(e))
        admit(e);

    /* Every decoding sequence gets its row; prefilling ones share max_batch_rows rows in
     * arrival order, so a crowd of decoders never starves a new prompt and a long prompt
     * holds the decoders up for one chunk per step at most. */
    int n = 0, n_pre = 0;
    for (int i = 0; i < e->opt.max_seqs; i++) {
        seq *s = e->slots[i];
        if (!s)
            continue;
        if (s->n_fed == s->n_feed)
            e->order[n++] = s;
        else
            e->prefill[n_pre++] = s;
    }
    qsort(e->prefill, (size_t)n_pre, sizeof *e->prefill, cmp_arrival);
    int n_decode = n;   /* the decoders' rows; the prompts' are the budget spent */
    int budget = e->opt.max_batch_rows;
    for (int k = 0; k < n_pre && budget > 0; k++) {
        seq *s = e->prefill[k];
        int chunk = s->n_feed - s->n_fed;
        chunk = chunk < budget ? chunk : budget;
        e->order[n++] = s;
        s->chunk = chunk;
        budget -= chunk;
    }
    if (n == 0) {
        publish(e, 0);
        return engine_running(e);
    }
    /* W' only alone: a step reads every weight it uses once for all its rows, so a step
     * with rows on a merged W' and rows on anything else reads W' and W — for the 135M
     * shape 538 MB more than the adapter's A and B (19.5 MB) that W' saves, twice the
     * weight traffic of a step bound by reading the weights (and in a step bound by the
     * FMAs, its rows split between two copies of every matrix, each product of fewer rows
     * and one more pass over memory). A request that may (merged_alone) takes its W' only
     * in steps where every row runs on that W', and its adapter on the fly in the others;
     * the two give the same results within rounding. Without this, requests that took a
     * W' while their adapter was alone kept it for the rest of their lives after a crowd
     * on other adapters arrived (bench_load, 32 clients over 100 adapters on the --merge
     * auto daemon right after its one-client case: 0.88-0.95 of --merge never). */
    const variant *only = e->order[0]->req.merged;
    for (int k = 1; k < n && only; k++)
        if (e->order[k]->req.merged != only)
            only = NULL;
    for (int k = 0; k < n; k++) {
        seq *s = e->order[k];
        s->w = s->req.merged && (!s->req.merged_alone || only) ? s->req.merged : NULL;
    }
    qsort(e->order, (size_t)n, sizeof *e->order, cmp_batch);

    double t0 = clock_seconds();
    for (int k = 0; k < n; k++) {
        seq *s = e->order[k];
        forward_seq *f = &e->batch[k];
        int decoding = s->n_fed == s->n_feed;
        f->n_tokens = decoding ? 1 : s->chunk;
        f->tokens = decoding ? &s->last : s->prompt + s->n_fed;
        f->kv = &s->kv;
        f->merged = s->w;
        f->lora = s->w ? NULL : s->req.lora;
        /* a recompute ends without a token: its next one comes from decoding s->last */
        f->want_logits = decoding || (s->n_fed + f->n_tokens == s->n_feed && !s->n_generated);
    }
    if (forward_batch(e->fwd, e->batch, n, e->logits, err)) {
        for (int k = 0; k < n; k++)
            finish_slot(e, e->order[k]->slot, ENGINE_FINISH_ERROR, err);
        publish(e, 1);
        return err ? err->code : LR_EINVAL;
    }

    /* Tokens are drawn on the pool, a row per task (each 20-100 µs on a 49k vocab: at
     * 64 rows, 5 ms serial), then emitted here in batch order. */
    int n_drawn = 0;
    for (int k = 0; k < n; k++) {
        seq *s = e->order[k];
        if (s->n_fed < s->n_feed)
            s->n_fed += e->batch[k].n_tokens;
        if (e->batch[k].want_logits) {
            int row = n_drawn++;
            e->drawn[row] = (struct drawn){
                .slot = s->slot, .lg = e->logits + (size_t)row * e->m->cfg.vocab_size};
        }
    }
    forward_phase_begin(e->fwd);
    forward_run(e->fwd, draw_task, e, n_drawn);
    for (int k = 0; k < n_drawn; k++)
        emit_token(e, &e->drawn[k]);
    e->decode_rows += (uint64_t)n_decode;
    e->prefill_rows += (uint64_t)(e->opt.max_batch_rows - budget);
    e->step_seconds += clock_seconds() - t0;
    publish(e, 1);
    forward_phase_end(e->fwd, FWD_PH_DRAW);
    return engine_running(e);
}

static struct timespec ms_later(const struct timespec *t, int ms)
{
    struct timespec r = {t->tv_sec + ms / 1000, t->tv_nsec + (long)(ms % 1000) * 1000000L};
    if (r.tv_nsec >= 1000000000L) {
        r.tv_sec++;
        r.tv_nsec -= 1000000000L;
    }
    return r;
}

static int is_due(const struct timespec *due)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > due->tv_sec || (now.tv_sec == due->tv_sec && now.tv_nsec >= due->tv_nsec);
}

void engine_run(engine *e)
{
    int hb = e->opt.on_heartbeat && e->opt.heartbeat_ms > 0;
    struct timespec due;   /* next heartbeat (CLOCK_MONOTONIC) */
    clock_gettime(CLOCK_MONOTONIC, &due);
    pthread_mutex_lock(&e->lock);
    while (!e->stop) {
        if (hb && is_due(&due)) {
            pthread_mutex_unlock(&e->lock);
            e->opt.on_heartbeat(e->opt.heartbeat_user);
            clock_gettime(CLOCK_MONOTONIC, &due);
            due = ms_later(&due, e->opt.heartbeat_ms);
            pthread_mutex_lock(&e->lock);
            continue;
        }
        if (e->accepted == 0 && e->n_cancels == 0 && !e->cancel_all) {
            if (hb)
                pthread_cond_timedwait(&e->wake, &e->lock, &due);
            else
                pthread_cond_wait(&e->wake, &e->lock);
            continue;
        }
        pthread_mutex_unlock(&e->lock);
        lr_error err = {0};
        if (engine_step(e, &err) < 0)
            log_error("engine step failed: %s", err.msg);
        pthread_mutex_lock(&e->lock);
    }
    pthread_mutex_unlock(&e->lock);
}
