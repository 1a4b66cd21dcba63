/* bench_drift: how far holding the base weights in BF16 or Q8 moves a trained model's
 * outputs from F32 — the demo model (models/demo: trained here, a BF16 checkpoint, so
 * f32 and bf16 hold the same values and differ only where a merged W' is rounded) and
 * its adapters. For each case (the base; each adapter on the fly; each adapter merged)
 * and prompt, f32 decodes 256 tokens greedily; then every precision is fed the same
 * tokens one at a time (teacher forcing) and compared at each of the 256 positions:
 * |Δ logprob| of f32's token (mean and max), and whether its own argmax is f32's; and it
 * decodes greedily on its own, counting the positions where it chose f32's token before
 * the first difference.
 * Usage: bench_drift [MODEL_DIR (models/demo/base)] [--quick] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/forward.h"
#include "core/kv_cache.h"
#include "core/model.h"
#include "core/variant.h"
#include "bench/benchutil.h"

enum { GEN = 256, NW = 3 };

typedef struct {
    const model *m;
    forward_ctx *f;
    kv_pool *pool;
    kv_cache kv;
    float *logits;
} runner;

static int runner_open(runner *r, const model *m, lr_error *err)
{
    memset(r, 0, sizeof *r);
    r->m = m;
    r->f = forward_create(m, 64, 0, err);
    r->pool = kv_pool_new(&m->cfg, kv_blocks_for(m->cfg.max_positions), err);
    r->logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    return r->f && r->pool && r->logits ? 0 : -1;
}

static void runner_close(runner *r)
{
    kv_cache_release(r->pool, &r->kv);
    kv_cache_clear(&r->kv);
    kv_pool_free(r->pool);
    forward_free(r->f);
    free(r->logits);
}

/* Feeds tokens[0..n) from position 0 (the prompt as one chunk, then one at a time from
 * position n_prompt) and calls back with the logits after each token from n_prompt - 1. */
typedef void (*logits_fn)(void *user, int pos, const float *logits, int vocab);

static int feed(runner *r, const variant *merged, const variant_mix *mix, const int *tokens,
                int n_prompt, int n, logits_fn fn, void *user, lr_error *err)
{
    kv_cache_release(r->pool, &r->kv);
    if (kv_cache_reserve(r->pool, &r->kv, n, err))
        return -1;
    for (int p = 0; p < n;) {
        int len = p == 0 ? n_prompt : 1;
        forward_seq s = {tokens + p, len, &r->kv, merged, mix, 1};
        if (forward_batch(r->f, &s, 1, r->logits, err))
            return -1;
        p += len;
        fn(user, p - 1, r->logits, r->m->cfg.vocab_size);
    }
    return 0;
}

static int argmax(const float *z, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > z[best])
            best = i;
    return best;
}

static double logprob(const float *z, int n, int t)
{
    double mx = z[argmax(z, n)], s = 0;
    for (int i = 0; i < n; i++)
        s += exp((double)z[i] - mx);
    return (double)z[t] - mx - log(s);
}

/* Greedy decoding: extends seq[n_prompt..) to GEN tokens (seq has room). */
typedef struct {
    int *seq;
    int n;
} greedy_state;

static void on_greedy(void *user, int pos, const float *z, int vocab)
{
    greedy_state *g = user;
    if (pos + 1 == g->n)
        g->seq[g->n++] = argmax(z, vocab);
}

static int greedy(runner *r, const variant *merged, const variant_mix *mix, int *seq,
                  int n_prompt, lr_error *err)
{
    /* one token at a time: feed() is given the sequence as it grows */
    greedy_state g = {seq, n_prompt};
    kv_cache_release(r->pool, &r->kv);
    if (kv_cache_reserve(r->pool, &r->kv, n_prompt + GEN, err))
        return -1;
    for (int p = 0; g.n < n_prompt + GEN;) {
        int len = p == 0 ? n_prompt : 1;
        forward_seq s = {seq + p, len, &r->kv, merged, mix, 1};
        if (forward_batch(r->f, &s, 1, r->logits, err))
            return -1;
        p += len;
        on_greedy(&g, p - 1, r->logits, r->m->cfg.vocab_size);
    }
    return 0;
}

/* Teacher-forced comparison against f32's sequence and logprobs. */
typedef struct {
    const int *seq;
    int n_prompt;
    double *ref_lp;      /* [GEN] f32's logprob of its own tokens (filled when record) */
    int record;
    double sum, max;
    int agree, count;
} compare_state;

static void on_compare(void *user, int pos, const float *z, int vocab)
{
    compare_state *c = user;
    int k = pos - (c->n_prompt - 1);   /* the k-th generated token comes next */
    if (k < 0 || k >= GEN)
        return;
    int t = c->seq[pos + 1];
    double lp = logprob(z, vocab, t);
    if (c->record) {
        c->ref_lp[k] = lp;
        return;
    }
    double d = fabs(lp - c->ref_lp[k]);
    c->sum += d;
    c->max = d > c->max ? d : c->max;
    c->agree += argmax(z, vocab) == t;
    c->count++;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *dir = "models/demo/base";
    int quick;
    bench_args(argc, argv, &dir, &quick);
    static const wt_type types[NW] = {WT_F32, WT_BF16, WT_Q8};
    static const char *const adapter_names[] = {"shout", "kjv", "german"};
    enum { N_ADAPTERS = 3 };
    model *m[NW];
    runner r[NW];
    peft_adapter *ad[NW][N_ADAPTERS] = {{0}};
    lr_error err = {0};
    for (int k = 0; k < NW; k++) {
        if (!(m[k] = model_load_with(dir, &(model_load_opts){(int)types[k], NULL, NULL},
                                     &err)) ||
            runner_open(&r[k], m[k], &err))
            goto fail;
        for (int a = 0; a < N_ADAPTERS; a++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/../adapters/%s", dir, adapter_names[a]);
            if (!(ad[k][a] = peft_load(path, &m[k]->cfg, NULL, &err)))
                goto fail;
        }
    }
    const model_config *c = &m[0]->cfg;
    /* prompts: fixed token ids spread over the vocabulary (the model's own text tokens) */
    int n_prompts = quick ? 2 : 4, n_prompt = 16;
    printf("lorad: drift of --weights from f32 on the demo model (%s: %s checkpoint, %d "
           "layers, hidden %d, vocab %d); %d prompts of %d tokens, %d tokens each\n", dir,
           m[0]->dtype, c->n_layers, c->hidden, c->vocab_size, n_prompts, n_prompt, GEN);
    printf("%-18s %-7s %12s %12s %14s %14s\n", "case", "weights", "mean|dlp|", "max|dlp|",
           "argmax agree", "greedy prefix");
    for (int cs = 0; cs < 1 + 2 * N_ADAPTERS; cs++) {
        int a = cs == 0 ? -1 : (cs - 1) % N_ADAPTERS, merged = cs > N_ADAPTERS;
        char name[64];
        snprintf(name, sizeof name, "%s%s", cs == 0 ? "base" : adapter_names[a],
                 cs == 0 ? "" : merged ? " merged" : " on the fly");
        variant *mv[NW] = {0};
        variant_mix mix[NW];
        for (int k = 0; k < NW; k++) {
            mix[k] = (variant_mix){.n = a < 0 ? 0 : 1};
            if (a >= 0)
                mix[k].t[0] = (variant_term){ad[k][a]->w, 1.0f};
            if (merged && !(mv[k] = variant_merge(m[k], &mix[k], &err)))
                goto fail;
        }
        double sum[NW] = {0}, mx[NW] = {0};
        int agree[NW] = {0}, count[NW] = {0}, prefix[NW] = {0};
        for (int pr = 0; pr < n_prompts; pr++) {
            int seq[16 + GEN], own[16 + GEN];
            for (int i = 0; i < n_prompt; i++)
                seq[i] = 259 + (int)(((unsigned)(pr * 16 + i) * 2654435761u) %
                                     (unsigned)(c->vocab_size - 259));
            const variant_mix *lo0 = a >= 0 && !merged ? &mix[0] : NULL;
            if (greedy(&r[0], mv[0], lo0, seq, n_prompt, &err))
                goto fail;
            double ref_lp[GEN];
            compare_state rec = {seq, n_prompt, ref_lp, 1, 0, 0, 0, 0};
            if (feed(&r[0], mv[0], lo0, seq, n_prompt, n_prompt + GEN - 1, on_compare, &rec,
                     &err))
                goto fail;
            for (int k = 1; k < NW; k++) {
                const variant_mix *lo = a >= 0 && !merged ? &mix[k] : NULL;
                compare_state cmp = {seq, n_prompt, ref_lp, 0, 0, 0, 0, 0};
                if (feed(&r[k], mv[k], lo, seq, n_prompt, n_prompt + GEN - 1, on_compare,
                         &cmp, &err))
                    goto fail;
                sum[k] += cmp.sum;
                mx[k] = cmp.max > mx[k] ? cmp.max : mx[k];
                agree[k] += cmp.agree;
                count[k] += cmp.count;
                memcpy(own, seq, sizeof(int) * (size_t)n_prompt);
                if (greedy(&r[k], mv[k], lo, own, n_prompt, &err))
                    goto fail;
                int same = 0;
                while (same < GEN && own[n_prompt + same] == seq[n_prompt + same])
                    same++;
                prefix[k] += same;
            }
        }
        for (int k = 1; k < NW; k++)
            printf("%-18s %-7s %12.2e %12.2e %13.1f%% %10.1f/%d\n", name,
                   wtensor_type_name(types[k]), sum[k] / count[k], mx[k],
                   100.0 * agree[k] / count[k], (double)prefix[k] / n_prompts, GEN);
        for (int k = 0; k < NW; k++)
            variant_free(mv[k]);
    }
    for (int k = 0; k < NW; k++) {
        for (int a = 0; a < N_ADAPTERS; a++)
            peft_free(ad[k][a]);
        runner_close(&r[k]);
        model_free(m[k]);
    }
    return 0;
fail:
    fprintf(stderr, "bench_drift: %s\n", err.msg);
    return 1;
}
