/* sampler: temperature / top-k / top-p sampling and log-softmax helpers over one row of
 * logits, without allocating per token (all scratch is sized for the vocab at create). */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "vec16.h"

/* The nucleus comparison cum >= top_p is made with this slack (relative to the total
 * mass). top_p arrives as a float (0.8f is 0.800000012) and probabilities come from
 * float logits (a few ulp of error each), so an exact comparison would let rounding
 * decide whether 0.5 + 0.3 "reaches" 0.8. The slack is far below any meaningful
 * difference between two top_p values. */
#define SAMPLER_TOP_P_SLACK 1e-6

/* Up to this top_k the k best are kept in a min-heap while streaming the logits (one
 * comparison per token once the heap is warm); above it a quickselect over a copy of all
 * keys is cheaper than O(V log k) heap updates. */
#define SAMPLER_HEAP_K_MAX 1024

/* Quickselects give up and sort the remaining range after touching this many times n
 * elements (median-of-3 needs about 3 on average); bounds the worst case to O(n log n).
 * Overridable at compile time only to exercise the fallback in testing. */
#ifndef SAMPLER_SELECT_WORK
#define SAMPLER_SELECT_WORK 8L
#endif

/* Probability thresholds (relative to the total mass) tried in turn by top-p without
 * top-k: only tokens at or above the threshold enter the nucleus selection, enough once
 * their mass reaches top_p. The final 0 means "every token with non-zero weight". */
static const double sampler_top_p_thresholds[] = { 1e-3, 1e-6, 0.0 };

struct sampler {
    sampler_params p;  /* copied at create; never changes */
    int vocab;
    uint64_t rng[4];   /* xoshiro256** state; advanced once per non-greedy sample */
    float *w;          /* [vocab] scratch: logit keys or unnormalized weights */
    int *id;           /* [vocab] scratch: token id of the matching w entry */
};

/* ---- RNG: xoshiro256** (Blackman & Vigna), seeded with splitmix64 ---- */

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform double in [0, 1) from the top 53 bits. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* ---- logits ---- */

/* The value a logit is ranked by: NaN is never a valid token (-inf), +inf is clamped so
 * that differences with the maximum stay defined. */
static inline float logit_key(float l)
{
    if (l != l)
        return -INFINITY;
    return l > FLT_MAX ? FLT_MAX : l;
}

/* logit_key on 8 lanes. */
static inline v8 logit_key8(v8 l)
{
    const v8 ninf = (v8){0} - INFINITY, big = (v8){0} + FLT_MAX;
    return sel8(l != l, ninf, sel8(l > big, big, l));
}

/* Argmax over keys; lowest id wins ties; 0 when every logit is -inf/NaN. One pass: the
 * maximum over 8 lanes, then the first id holding it. */
static int logits_argmax(const float *logits, int vocab, float *max_out)
{
    float best = -INFINITY;
    int i = 0;
    if (vocab >= 8) {
        v8 m = logit_key8(ld8(logits));
        for (i = 8; i + 8 <= vocab; i += 8) {
            v8 x = logit_key8(ld8(logits + i));
            m = sel8(x > m, x, m);
        }
        for (int k = 0; k < 8; k++)
            best = m[k] > best ? m[k] : best;
    }
    for (; i < vocab; i++) {
        float x = logit_key(logits[i]);
        best = x > best ? x : best;
    }
    int best_id = 0;
    if (best > -INFINITY)
        while (logit_key(logits[best_id]) != best)
            best_id++;
    if (max_out)
        *max_out = best;
    return best_id;
}

/* log(sum_i e^(logits[i] - max)) for max the largest key (> -inf). The terms come from
 * exp8 (relative error ~2e-7), summed in 8 float lanes for at most 128 vectors at a time
 * and then in double: within ~1e-6 of the sum in double, at a twentieth of the time (this
 * runs for every generated token). */
static double logits_log_sum(const float *logits, int vocab, float max)
{
    double sum = 0.0;
    const v8 m = (v8){0} + max, ninf = (v8){0} - INFINITY;
    int i = 0;
    while (i + 8 <= vocab) {
        v8 part = {0};
        for (int n = 0; n < 128 && i + 8 <= vocab; n++, i += 8) {
            v8 x = logit_key8(ld8(logits + i));
            part += sel8(x == ninf, (v8){0}, exp8(x - m));
        }
        for (int k = 0; k < 8; k++)
            sum += part[k];
    }
    for (; i < vocab; i++) {
        float x = logit_key(logits[i]);
        if (x != -INFINITY)
            sum += exp((double)x - (double)max);
    }
    return log(sum);
}

/* log-sum-exp split as *max + log_sum so that log-probabilities can be formed as
 * (x - max) - log_sum without losing log_sum against a huge max. Returns 0 and sets
 * *max = -inf when there is no finite mass. */
static int logits_lse_parts(const float *logits, int vocab, float *max, double *log_sum)
{
    logits_argmax(logits, vocab, max);
    *log_sum = 0.0;
    if (*max == -INFINITY)
        return 0;
    *log_sum = logits_log_sum(logits, vocab, *max);
    return 1;
}

/* ---- candidate heap over parallel arrays v [n] / id [n] ----
 * Order: a is better than b when it has the larger value, ties by lower id. The heap
 * keeps the worst element at the root, so it holds the k best seen so far. */

static inline int cand_better(float va, int ia, float vb, int ib)
{
    return va > vb || (va == vb && ia < ib);
}

static void heap_sift_down(float *v, int *id, int n, int i)
{
    float xv = v[i];
    int xi = id[i];
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_better(v[c], id[c], v[c + 1], id[c + 1]))
            c++;  /* the worse child must rise */
        if (!cand_better(xv, xi, v[c], id[c]))
            break;
        v[i] = v[c];
        id[i] = id[c];
        i = c;
    }
    v[i] = xv;
    id[i] = xi;
}

static void heap_make(float *v, int *id, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        heap_sift_down(v, id, n, i);
}

/* Sorts v/id best first (descending value, ties by lower id). O(n log n), in place. */
static void cand_sort_desc(float *v, int *id, int n)
{
    heap_make(v, id, n);
    for (int m = n - 1; m > 0; m--) {
        float tv = v[0];
        int ti = id[0];
        v[0] = v[m];
        id[0] = id[m];
        v[m] = tv;
        id[m] = ti;
        heap_sift_down(v, id, m, 0);
    }
}

/* Leaves the k (1 <= k <= vocab) best logit keys in v [k] / id [k], heap-ordered (worst
 * at v[0]). O(V) when most tokens lose against the root, O(V log k) worst case. */
static void logits_select_top_k(const float *logits, int vocab, int k, float *v, int *id)
{
    for (int i = 0; i < k; i++) {
        v[i] = logit_key(logits[i]);
        id[i] = i;
    }
    heap_make(v, id, k);
    for (int i = k; i < vocab; i++) {
        float x = logit_key(logits[i]);
        /* i is larger than every id in the heap, so only a strictly larger value wins */
        if (x > v[0]) {
            v[0] = x;
            id[0] = i;
            heap_sift_down(v, id, k, 0);
        }
    }
}

/* Turns keys v [n] into unnormalized weights exp((v - max) / T) in place; returns their
 * sum. max is finite and >= every key, inv_t finite > 0, so no NaN can arise. */
static double cand_weights(float *v, int n, float max, float inv_t)
{
    double sum = 0.0;
    const v8 m = (v8){0} + max, ninf = (v8){0} - INFINITY;
    int j = 0;
    while (j + 8 <= n) {
        v8 part = {0};
        for (int c = 0; c < 128 && j + 8 <= n; c++, j += 8) {
            v8 x = ld8(v + j);
            v8 w = sel8(x == ninf, (v8){0}, exp8((x - m) * inv_t));
            st8(v + j, w);
            part += w;
        }
        for (int k = 0; k < 8; k++)
            sum += part[k];
    }
    for (; j < n; j++) {
        float x = v[j];
        float w = x == -INFINITY ? 0.0f : expf((x - max) * inv_t);
        v[j] = w;
        sum += w;
    }
    return sum;
}

static inline void cand_swap(float *w, int *id, int a, int b)
{
    float tw = w[a];
    int ti = id[a];
    w[a] = w[b];
    id[a] = id[b];
    w[b] = tw;
    id[b] = ti;
}

/* Draws from the weights w [n] (any order) whose sum is total; never returns a token of
 * weight 0. */
static int cand_draw(uint64_t rng[4], const float *w, const int *id, int n, double total)
{
    double r = rng_uniform(rng) * total;
    double acc = 0.0;
    int last = id[0];
    for (int j = 0; j < n; j++) {
        if (w[j] <= 0.0f)
            continue;
        acc += w[j];
        last = id[j];
        if (r < acc)
            return id[j];
    }
    return last;  /* r landed past the rounded sum */
}

/* Moves a median-of-3 pivot of [lo, hi) (hi - lo >= 2) into place and partitions around
 * it: on return [lo, a) is better than the pivot, a holds it, (a, hi) is worse. Adds the
 * weights of [lo, a) to *mass when mass is not NULL. Returns a. */
static int cand_partition(float *w, int *id, int lo, int hi, double *mass)
{
    int mid = lo + (hi - lo) / 2, last = hi - 1;
    if (cand_better(w[mid], id[mid], w[lo], id[lo]))
        cand_swap(w, id, mid, lo);
    if (cand_better(w[last], id[last], w[lo], id[lo]))
        cand_swap(w, id, last, lo);
    if (cand_better(w[mid], id[mid], w[last], id[last]))
        cand_swap(w, id, mid, last);  /* lo best, last the median */
    const float pw = w[last];
    const int pid = id[last];
    int a = lo;
    double m = 0.0;
    for (int i = lo; i < last; i++) {
        if (cand_better(w[i], id[i], pw, pid)) {
            m += w[i];
            cand_swap(w, id, i, a++);
        }
    }
    cand_swap(w, id, a, last);
    if (mass)
        *mass += m;
    return a;
}

/* Rearranges v/id [n] so that [0, k) holds the k best (unordered), 1 <= k <= n.
 * Quickselect: expected O(n); sorts instead when partitioning degenerates. */
static void cand_select_k(float *v, int *id, int n, int k)
{
    int lo = 0, hi = n;
    long work = 0, work_max = SAMPLER_SELECT_WORK * n + 64;
    while (hi - lo > 1) {
        if (work > work_max) {
            cand_sort_desc(v + lo, id + lo, hi - lo);
            return;
        }
        work += hi - lo;
        int a = cand_partition(v, id, lo, hi, NULL);
        if (a == k || a == k - 1)
            return;  /* [0, a) or [0, a] are the k best */
        if (a > k)
            hi = a;
        else
            lo = a + 1;
    }
}

/* Nucleus selection over weights w [n] (any order; the best token has weight > 0):
 * rearranges w/id so that [0, m) holds the m best candidates (descending weight, ties by
 * lower id) for the smallest m whose mass reaches target, stores that mass in *mass and
 * returns m (>= 1; n if the whole mass falls short by rounding). [0, m) is left
 * unordered: the draw does not need it sorted. Quickselect on mass: expected O(n); sorts
 * the remaining range when partitioning degenerates, so never worse than O(n log n). */
static int cand_nucleus_select(float *w, int *id, int n, double target, double *mass)
{
    if (target < DBL_MIN)
        target = DBL_MIN;  /* at least one token */
    int lo = 0, hi = n;
    double acc = 0.0;      /* mass of [0, lo), always < target */
    long work = 0, work_max = SAMPLER_SELECT_WORK * n + 64;
    while (hi - lo > 1) {
        if (work > work_max) {
            cand_sort_desc(w + lo, id + lo, hi - lo);
            int j = lo;
            while (j < hi && acc < target)
                acc += w[j++];
            *mass = acc;
            return j;
        }
        work += hi - lo;
        double better = acc;
        int a = cand_partition(w, id, lo, hi, &better);
        if (better >= target) {
            hi = a;  /* the cut lies among the better ones (a > lo since acc < target) */
            continue;
        }
        acc = better + w[a];
        if (acc >= target) {
            *mass = acc;
            return a + 1;
        }
        lo = a + 1;
    }
    if (hi - lo == 1)
        acc += w[lo++];
    *mass = acc;
    return lo;
}

/* ---- public API ---- */

int sampler_params_check(const sampler_params *p, lr_error *err)
{
    if (!p)
        return lr_error_set(err, LR_EINVAL, "sampler: no parameters given");
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return lr_error_set(err, LR_EINVAL,
                            "sampler: temperature must be a finite number >= 0 (0 = greedy), got %g",
                            (double)p->temperature);
    if (p->top_k < 0)
        return lr_error_set(err, LR_EINVAL, "sampler: top_k must be >= 0 (0 = off), got %d",
                            p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return lr_error_set(err, LR_EINVAL, "sampler: top_p must be in (0, 1] (1 = off), got %g",
                            (double)p->top_p);
    return 0;
}

sampler *sampler_create(const sampler_params *p, int vocab, lr_error *err)
{
    sampler *s = NULL;
    if (sampler_params_check(p, err) < 0)
        return NULL;
    if (vocab < 1) {
        lr_error_set(err, LR_EINVAL, "sampler: vocab must be >= 1, got %d", vocab);
        return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->p = *p;
    s->vocab = vocab;
    s->w = malloc((size_t)vocab * sizeof *s->w);
    s->id = malloc((size_t)vocab * sizeof *s->id);
    if (!s->w || !s->id)
        goto fail;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64_next(&x);
    return s;

fail:
    lr_error_set(err, LR_ENOMEM, "sampler: out of memory for a vocab of %d tokens", vocab);
    sampler_destroy(s);
    return NULL;
}

void sampler_destroy(sampler *s)
{
    if (!s)
        return;
    free(s->w);
    free(s->id);
    free(s);
}

int sampler_sample(sampler *s, const float *logits)
{
    const int vocab = s->vocab;
    const float top_p = s->p.top_p;
    int k = s->p.top_k;
    if (k >= vocab)
        k = 0;  /* keeping every token is no filter (as in HF: min(top_k, vocab)) */
    if (sampler_is_greedy(s))
        return logits_argmax(logits, vocab, NULL);
    const float inv_t = 1.0f / s->p.temperature;
    float *w = s->w;
    int *id = s->id;

    if (k > 1) {
        if (k <= SAMPLER_HEAP_K_MAX) {
            logits_select_top_k(logits, vocab, k, w, id);
        } else {
            for (int i = 0; i < vocab; i++) {
                w[i] = logit_key(logits[i]);
                id[i] = i;
            }
            cand_select_k(w, id, vocab, k);
        }
        float max = -INFINITY;
        for (int j = 0; j < k; j++)
            max = w[j] > max ? w[j] : max;
        if (max == -INFINITY)
            return 0;  /* no valid token at all */
        double total = cand_weights(w, k, max, inv_t);
        if (top_p < 1.0f)
            k = cand_nucleus_select(w, id, k, ((double)top_p - SAMPLER_TOP_P_SLACK) * total,
                                    &total);
        return cand_draw(s->rng, w, id, k, total);
    }

    float max;
    int best = logits_argmax(logits, vocab, &max);
    if (max == -INFINITY)
        return best;  /* no valid token at all: 0 */
    for (int i = 0; i < vocab; i++) {
        w[i] = logit_key(logits[i]);
        id[i] = i;
    }
    double total = cand_weights(w, vocab, max, inv_t);
    if (top_p >= 1.0f)
        return cand_draw(s->rng, w, id, vocab, total);

    /* Top-p alone: move the tokens at or above a probability threshold to the front
     * (swapping, so the rest stays intact for a lower threshold). They precede every
     * other token in descending order, so once their mass reaches top_p the nucleus
     * lies within them and only they need selecting; for a peaked distribution that is
     * a handful of tokens. */
    const double target = ((double)top_p - SAMPLER_TOP_P_SLACK) * total;
    const int n_thresholds = (int)(sizeof sampler_top_p_thresholds / sizeof sampler_top_p_thresholds[0]);
    int n = 0;
    double mass = 0.0;
    for (int t = 0; t < n_thresholds; t++) {
        const float thr = (float)(sampler_top_p_thresholds[t] * total);
        const int last_pass = t == n_thresholds - 1;
        for (int i = n; i < vocab; i++) {
            if (last_pass ? w[i] > 0.0f : w[i] >= thr) {
                mass += w[i];
                cand_swap(w, id, i, n++);
            }
        }
        if (mass >= target)
            break;
    }
    n = cand_nucleus_select(w, id, n, target, &total);
    return cand_draw(s->rng, w, id, n, total);
}

int sampler_is_greedy(const sampler *s)
{
    /* top_k 1 with a vocabulary of one is the vocab == 1 case; a T so small that 1/T
     * overflows leaves nothing but the maximum after exp underflows */
    return s->vocab == 1 || s->p.temperature == 0.0f || s->p.top_k == 1 ||
           !(1.0f / s->p.temperature <= FLT_MAX);
}

int sampler_scan(const float *logits, int vocab, int *argmax, float *max)
{
    /* per lane: the largest logit and the lowest id holding it; x - x is 0 for a finite
     * x and NaN for an infinite or NaN one, so bad stays 0 only if all are finite */
    v8 bad = {0};
    int i = 0, best_id = 0;
    float best = -INFINITY;
    if (vocab >= 8) {
        v8 m = ld8(logits);
        vi8 id = {0, 1, 2, 3, 4, 5, 6, 7}, at = id;
        bad += m - m;
        for (i = 8; i + 8 <= vocab; i += 8) {
            v8 x = ld8(logits + i);
            at += 8;
            bad += x - x;
            vi8 gt = x > m;
            m = sel8(gt, x, m);
            id = (id & ~gt) | (at & gt);
        }
        best = m[0];
        best_id = id[0];
        for (int k = 1; k < 8; k++)
            if (m[k] > best || (m[k] == best && id[k] < best_id)) {
                best = m[k];
                best_id = id[k];
            }
    }
    for (; i < vocab; i++) {
        float x = logits[i];
        bad[0] += x - x;
        if (x > best) {
            best = x;
            best_id = i;
        }
    }
    for (int k = 0; k < 8; k++)
        if (bad[k] != 0.0f)   /* NaN compares unequal */
            return 0;
    *argmax = best_id;
    *max = best;
    return 1;
}

float sampler_logsumexp_from(const float *logits, int vocab, float max)
{
    return (float)((double)max + logits_log_sum(logits, vocab, max));
}

float sampler_logsumexp(const float *logits, int vocab)
{
    if (vocab < 1)
        return -INFINITY;
    float max;
    double log_sum;
    if (!logits_lse_parts(logits, vocab, &max, &log_sum))
        return -INFINITY;
    return (float)((double)max + log_sum);
}

int sampler_top_logprobs(const float *logits, int vocab, int k, int *ids, float *logprobs)
{
    if (k < 1 || vocab < 1)
        return 0;
    if (k > vocab)
        k = vocab;
    /* the caller's buffers serve as the selection heap: keys in logprobs, ids in ids */
    logits_select_top_k(logits, vocab, k, logprobs, ids);
    cand_sort_desc(logprobs, ids, k);
    float max;
    double log_sum;
    int any = logits_lse_parts(logits, vocab, &max, &log_sum);
    for (int j = 0; j < k; j++) {
        float x = logprobs[j];
        logprobs[j] = (!any || x == -INFINITY) ? -INFINITY
                                               : (float)(((double)x - (double)max) - log_sum);
    }
    return k;
}
