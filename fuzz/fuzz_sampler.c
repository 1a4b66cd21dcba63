/* fuzz_sampler: logits with NaN, ±Inf, huge and tiny values, and any sampling parameters.
 * Input: 12 bytes of parameters (temperature, top_k, top_p from tables that include NaN,
 * Inf, negatives and edges, or raw floats; a seed), then the logits as raw float bits, or
 * (mode byte) drawn from a table of special values. Checks what sampler.h promises:
 * sampler_params_check accepts exactly the valid parameters; a token is always in range,
 * never a NaN or -inf logit while a valid one exists (0 when none), the argmax (lowest id
 * on ties, NaN as -inf, +inf as FLT_MAX) when greedy, within the top k with top_k, the same
 * for the same seed; logsumexp is no NaN and >= the largest logit; top_logprobs are sorted,
 * distinct, <= 0, and start with the argmax. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampler.h"
#include "fuzz/fuzzutil.h"

static float key(float x)
{
    return isnan(x) ? -INFINITY : x > FLT_MAX ? FLT_MAX : x;
}

/* 1 if token a ranks above token b: larger key, or equal and lower id */
static int above(const float *l, int a, int b)
{
    float ka = key(l[a]), kb = key(l[b]);
    return ka > kb || (ka == kb && a < b);
}

static float rdf(const uint8_t *p)
{
    float f;
    memcpy(&f, p, 4);
    return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const float temps[] = {0.0f, 1.0f, 0.7f, 2.0f, 1e-30f, 1e-45f, 1e30f, -1.0f, NAN,
                                  INFINITY, -0.0f, 0.05f, 100.0f, FLT_MAX, 1e-38f, 0.5f};
    static const float tops[] = {1.0f, 0.9f, 0.5f, 1e-9f, 0.0f, 1.5f, NAN, -0.1f, 0.99f,
                                 1e-45f, 0.1f, INFINITY, 0.3f, 1.0f, 0.75f, 0.999999f};
    static const float specials[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, FLT_MAX,
                                     -FLT_MAX, 1e-45f, 1.0f, -1.0f, 88.0f, -88.0f, 1e30f,
                                     -1e30f, 3.0f, 3.0f};
    if (size < 12)
        return 0;
    sampler_params p;
    p.temperature = data[0] < 0xf0 ? temps[data[0] % 16] : rdf(data + 4);
    p.top_k = data[1] < 0xf0 ? data[1] % 12 : (int)(int8_t)data[5] * 1000;
    p.top_p = data[2] < 0xf0 ? tops[data[2] % 16] : rdf(data + 8);
    p.seed = (uint64_t)data[3] * 0x9e3779b97f4a7c15ull + data[6];
    int mode = data[7] & 1;
    const uint8_t *rest = data + 12;
    size_t nrest = size - 12;
    int vocab = (int)(mode ? nrest : nrest / 4);
    if (vocab > 4096)
        vocab = 4096;

    lr_error err = {0};
    int valid = p.temperature >= 0 && isfinite(p.temperature) && p.top_k >= 0 &&
                p.top_p > 0 && p.top_p <= 1;
    int rc = sampler_params_check(&p, &err);
    FUZZ_CHECK((rc == 0) == valid, "params (T %g, k %d, p %g) %s", (double)p.temperature,
               p.top_k, (double)p.top_p, rc ? "refused" : "accepted");
    if (rc)
        fuzz_check_error(rc, &err);
    sampler *s = sampler_create(&p, vocab, &err);
    FUZZ_CHECK((s != NULL) == (valid && vocab >= 1), "sampler_create (vocab %d): %s", vocab,
               s ? "made" : err.msg);
    if (!s) {
        FUZZ_CHECK(err.msg[0], "refused without a message");
        return 0;
    }
    float *l = malloc(sizeof(float) * (size_t)vocab);
    for (int i = 0; i < vocab; i++)
        l[i] = mode ? specials[rest[i] % 16] * (rest[i] >= 16 ? (float)(rest[i] >> 4) : 1.0f)
                    : rdf(rest + 4 * i);

    int best = 0, any = 0;
    for (int i = 0; i < vocab; i++) {
        any |= key(l[i]) > -INFINITY;
        if (above(l, i, best))
            best = i;
    }
    sampler *twin = sampler_create(&p, vocab, &err);
    FUZZ_CHECK(twin != NULL, "second sampler: %s", err.msg);
    for (int draw = 0; draw < 3; draw++) {
        int tok = sampler_sample(s, l);
        FUZZ_CHECK(tok >= 0 && tok < vocab, "token %d of %d", tok, vocab);
        FUZZ_CHECK(sampler_sample(twin, l) == tok, "same seed, different token");
        if (!any) {
            FUZZ_CHECK(tok == 0, "no valid logit, but token %d", tok);
            continue;
        }
        FUZZ_CHECK(key(l[tok]) > -INFINITY, "sampled token %d has logit %g", tok,
                   (double)l[tok]);
        if (p.temperature == 0 || p.top_k == 1 || !(1.0f / p.temperature <= FLT_MAX))
            FUZZ_CHECK(tok == best, "greedy gave %d, argmax %d", tok, best);
        if (p.top_k > 0) {
            int better = 0;
            for (int i = 0; i < vocab; i++)
                better += above(l, i, tok);
            FUZZ_CHECK(better < p.top_k, "token %d ranks %d, outside top_k %d", tok, better + 1,
                       p.top_k);
        }
    }
    sampler_destroy(twin);

    int finite = 1;
    for (int i = 0; i < vocab; i++)
        finite &= isfinite(l[i]) != 0;
    int scan_id = -1;
    float scan_max = 0;
    FUZZ_CHECK(sampler_scan(l, vocab, &scan_id, &scan_max) == finite, "scan: finite %d",
               finite);
    FUZZ_CHECK(sampler_is_greedy(s) == (vocab == 1 || p.temperature == 0 || p.top_k == 1 ||
                                        !(1.0f / p.temperature <= FLT_MAX)),
               "is_greedy %d", sampler_is_greedy(s));

    float lse = sampler_logsumexp(l, vocab);
    FUZZ_CHECK(!isnan(lse), "logsumexp is NaN");
    if (finite) {
        FUZZ_CHECK(scan_id == best && scan_max == l[best], "scan: %d (%g), argmax %d (%g)",
                   scan_id, (double)scan_max, best, (double)l[best]);
        FUZZ_CHECK(sampler_logsumexp_from(l, vocab, scan_max) == lse,
                   "logsumexp_from %g, logsumexp %g",
                   (double)sampler_logsumexp_from(l, vocab, scan_max), (double)lse);
    }
    FUZZ_CHECK(any ? lse >= key(l[best]) : lse == -INFINITY, "logsumexp %g, max %g",
               (double)lse, (double)key(l[best]));

    int ids[8];
    float lp[8];
    int k = (data[1] >> 4) % 9;
    int got = sampler_top_logprobs(l, vocab, k, ids, lp);
    FUZZ_CHECK(got == (k < vocab ? k : vocab), "top_logprobs gave %d of %d", got, k);
    for (int i = 0; i < got; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab && !isnan(lp[i]) && lp[i] <= 1e-5f,
                   "entry %d: id %d logprob %g", i, ids[i], (double)lp[i]);
        FUZZ_CHECK(any || lp[i] == -INFINITY, "no valid logit, logprob %g", (double)lp[i]);
        for (int j = 0; j < i; j++)
            FUZZ_CHECK(ids[j] != ids[i] && lp[j] >= lp[i] && above(l, ids[j], ids[i]),
                       "entries %d and %d out of order", j, i);
    }
    if (got && any)
        FUZZ_CHECK(ids[0] == best, "top logprob %d, argmax %d", ids[0], best);
    free(l);
    sampler_destroy(s);
    return 0;
}
