/* Tests for core/sampler: greedy, top-k, top-p, seeding, empirical frequencies against
 * softmax(logits / T) computed here in double, and the log-softmax helpers. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampler.h"

#define N_DRAWS 20000

static sampler *make(float temperature, int top_k, float top_p, uint64_t seed, int vocab)
{
    sampler_params p = { .temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = seed };
    lr_error err = { 0 };
    sampler *s = sampler_create(&p, vocab, &err);
    ck_assert_msg(s != NULL, "sampler_create failed: %s", err.msg);
    return s;
}

/* counts [vocab] of n draws on fixed logits */
static void draw_counts(sampler *s, const float *logits, int vocab, int n, int *counts)
{
    memset(counts, 0, (size_t)vocab * sizeof *counts);
    for (int i = 0; i < n; i++) {
        int t = sampler_sample(s, logits);
        if (t < 0 || t >= vocab)
            ck_abort_msg("token %d outside [0, %d)", t, vocab);
        counts[t]++;
    }
}

/* Asserts count is within 5 standard errors (+1) of n * p, p the expected probability. */
static void assert_freq(int count, int n, double p, int id)
{
    double mean = n * p;
    double sd = sqrt(n * p * (1.0 - p));
    ck_assert_msg(fabs(count - mean) <= 5.0 * sd + 1.0,
                  "token %d: %d draws of %d, expected %.1f (p=%.4f, sd %.1f)", id, count, n, mean,
                  p, sd);
}

/* Independent reference: softmax(logits / T) in double over the kept ids. */
static void softmax_ref(const double *logits, int vocab, double t, double *p)
{
    double max = -INFINITY, sum = 0.0;
    for (int i = 0; i < vocab; i++)
        max = fmax(max, logits[i] / t);
    for (int i = 0; i < vocab; i++)
        sum += exp(logits[i] / t - max);
    for (int i = 0; i < vocab; i++)
        p[i] = exp(logits[i] / t - max) / sum;
}

/* ---- core ---- */

START_TEST(greedy_is_argmax_with_ties_to_lowest_id)
{
    float logits[6] = { 0.5f, 2.0f, -1.0f, 3.0f, 3.0f, 1.0f };
    sampler *s = make(0.0f, 0, 1.0f, 1, 6);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(sampler_sample(s, logits), 3);
    sampler_destroy(s);
    float equal[4] = { 7.0f, 7.0f, 7.0f, 7.0f };
    s = make(0.0f, 0, 1.0f, 1, 4);
    ck_assert_int_eq(sampler_sample(s, equal), 0);
    sampler_destroy(s);
}
END_TEST

START_TEST(greedy_skips_nan_and_masked_logits)
{
    float logits[5] = { -INFINITY, NAN, -3.0f, NAN, -INFINITY };
    sampler *s = make(0.0f, 0, 1.0f, 1, 5);
    ck_assert_int_eq(sampler_sample(s, logits), 2);
    sampler_destroy(s);
}
END_TEST

START_TEST(top_k_1_equals_greedy_at_any_temperature)
{
    float logits[8] = { 0.1f, 1.5f, 1.4f, -2.0f, 1.5f, 0.0f, NAN, 1.49f };
    const float temps[] = { 0.01f, 0.7f, 1.0f, 5.0f, 100.0f };
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        sampler *s = make(temps[t], 1, 1.0f, 42 + t, 8);
        sampler *sp = make(temps[t], 1, 0.5f, 42 + t, 8);
        for (int i = 0; i < 200; i++) {
            ck_assert_int_eq(sampler_sample(s, logits), 1);
            ck_assert_int_eq(sampler_sample(sp, logits), 1);
        }
        sampler_destroy(s);
        sampler_destroy(sp);
    }
}
END_TEST

START_TEST(same_seed_same_sequence_other_seed_differs)
{
    enum { V = 50, N = 200 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)((i * 37) % 11) * 0.3f;
    int a[N], b[N], c[N];
    /* every mode, including the sorted paths */
    const int ks[] = { 0, 10, 0 };
    const float ps[] = { 1.0f, 1.0f, 0.9f };
    for (int m = 0; m < 3; m++) {
        sampler *sa = make(1.0f, ks[m], ps[m], 1234, V);
        sampler *sb = make(1.0f, ks[m], ps[m], 1234, V);
        sampler *sc = make(1.0f, ks[m], ps[m], 1235, V);
        for (int i = 0; i < N; i++) {
            a[i] = sampler_sample(sa, logits);
            b[i] = sampler_sample(sb, logits);
            c[i] = sampler_sample(sc, logits);
        }
        ck_assert_msg(memcmp(a, b, sizeof a) == 0, "mode %d: same seed gave different tokens", m);
        ck_assert_msg(memcmp(a, c, sizeof a) != 0, "mode %d: different seeds gave equal tokens", m);
        sampler_destroy(sa);
        sampler_destroy(sb);
        sampler_destroy(sc);
    }
}
END_TEST

START_TEST(frequencies_match_softmax_over_temperature)
{
    enum { V = 5 };
    const double ref_logits[V] = { 1.0, 2.0, 0.5, -1.0, 1.7 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)ref_logits[i];
    const double temps[] = { 1.0, 0.6, 2.5 };
    int counts[V];
    double p[V];
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        softmax_ref(ref_logits, V, temps[t], p);
        sampler *s = make((float)temps[t], 0, 1.0f, 7 + t, V);
        draw_counts(s, logits, V, N_DRAWS, counts);
        for (int i = 0; i < V; i++)
            assert_freq(counts[i], N_DRAWS, p[i], i);
        sampler_destroy(s);
    }
}
END_TEST

START_TEST(all_equal_logits_sample_uniformly)
{
    enum { V = 4 };
    float logits[V] = { 2.5f, 2.5f, 2.5f, 2.5f };
    int counts[V];
    sampler *s = make(0.8f, 0, 1.0f, 99, V);
    draw_counts(s, logits, V, N_DRAWS, counts);
    for (int i = 0; i < V; i++)
        assert_freq(counts[i], N_DRAWS, 0.25, i);
    sampler_destroy(s);
}
END_TEST

START_TEST(masked_and_nan_logits_are_never_sampled)
{
    enum { V = 6 };
    float logits[V] = { -INFINITY, 1.0f, NAN, 0.0f, -INFINITY, NAN };
    const double ref[2] = { 1.0, 0.0 };
    double p[2];
    softmax_ref(ref, 2, 1.0, p);
    int counts[V];
    const int ks[] = { 0, 3, 0, 5 };
    const float ps[] = { 1.0f, 1.0f, 0.999f, 0.999f };
    for (int m = 0; m < 4; m++) {
        sampler *s = make(1.0f, ks[m], ps[m], 5, V);
        draw_counts(s, logits, V, N_DRAWS, counts);
        ck_assert_int_eq(counts[0] + counts[2] + counts[4] + counts[5], 0);
        assert_freq(counts[1], N_DRAWS, p[0], 1);
        assert_freq(counts[3], N_DRAWS, p[1], 3);
        sampler_destroy(s);
    }
}
END_TEST

START_TEST(top_k_2_never_yields_rank_2_or_more)
{
    enum { V = 6 };
    /* ranks: id 4 (3.0), id 1 (2.0), id 5 (1.9), ... */
    float logits[V] = { 0.0f, 2.0f, -1.0f, 1.0f, 3.0f, 1.9f };
    const double kept[2] = { 3.0, 2.0 };
    int counts[V];
    double p[2];
    const double t = 1.3;
    softmax_ref(kept, 2, t, p);
    sampler *s = make((float)t, 2, 1.0f, 11, V);
    draw_counts(s, logits, V, N_DRAWS, counts);
    ck_assert_int_eq(counts[0] + counts[2] + counts[3] + counts[5], 0);
    assert_freq(counts[4], N_DRAWS, p[0], 4);
    assert_freq(counts[1], N_DRAWS, p[1], 1);
    sampler_destroy(s);
}
END_TEST

START_TEST(top_k_ties_at_the_cut_keep_lowest_ids)
{
    enum { V = 5 };
    float logits[V] = { 1.0f, 3.0f, 3.0f, 3.0f, 3.0f };
    int counts[V];
    sampler *s = make(1.0f, 2, 1.0f, 3, V);
    draw_counts(s, logits, V, N_DRAWS, counts);
    ck_assert_int_eq(counts[0] + counts[3] + counts[4], 0);
    assert_freq(counts[1], N_DRAWS, 0.5, 1);
    assert_freq(counts[2], N_DRAWS, 0.5, 2);
    sampler_destroy(s);
}
END_TEST

/* probabilities 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1 (so sorting matters) */
static void nucleus_logits(float logits[4])
{
    logits[2] = (float)log(0.5);
    logits[0] = (float)log(0.3);
    logits[3] = (float)log(0.15);
    logits[1] = (float)log(0.05);
}

START_TEST(top_p_cuts_at_the_right_token)
{
    float logits[4];
    nucleus_logits(logits);
    int counts[4];
    /* 0.7: 0.5 < 0.7, 0.5+0.3 >= 0.7 -> ids 2, 0 renormalized to 5/8, 3/8 */
    /* 0.8: 0.5+0.3 = 0.8 >= 0.8 -> still ids 2, 0 */
    const float two[] = { 0.7f, 0.8f };
    for (int t = 0; t < 2; t++) {
        sampler *s = make(1.0f, 0, two[t], 21 + t, 4);
        draw_counts(s, logits, 4, N_DRAWS, counts);
        ck_assert_msg(counts[3] + counts[1] == 0, "top_p=%g kept a third token", (double)two[t]);
        assert_freq(counts[2], N_DRAWS, 0.5 / 0.8, 2);
        assert_freq(counts[0], N_DRAWS, 0.3 / 0.8, 0);
        sampler_destroy(s);
    }
    /* 0.81: needs the third token (0.95) */
    sampler *s = make(1.0f, 0, 0.81f, 23, 4);
    draw_counts(s, logits, 4, N_DRAWS, counts);
    ck_assert_int_eq(counts[1], 0);
    assert_freq(counts[2], N_DRAWS, 0.5 / 0.95, 2);
    assert_freq(counts[0], N_DRAWS, 0.3 / 0.95, 0);
    assert_freq(counts[3], N_DRAWS, 0.15 / 0.95, 3);
    sampler_destroy(s);
    /* tiny top_p keeps exactly the most likely token */
    s = make(1.0f, 0, 0.01f, 24, 4);
    for (int i = 0; i < 500; i++)
        ck_assert_int_eq(sampler_sample(s, logits), 2);
    sampler_destroy(s);
}
END_TEST

START_TEST(top_p_applies_after_temperature_and_top_k)
{
    /* probabilities 0.4, 0.3, 0.2, 0.1 */
    float logits[4] = { (float)log(0.4), (float)log(0.3), (float)log(0.2), (float)log(0.1) };
    int counts[4];
    /* top_p alone at 0.75: 0.4+0.3 = 0.7 < 0.75 -> three tokens */
    sampler *s = make(1.0f, 0, 0.75f, 31, 4);
    draw_counts(s, logits, 4, N_DRAWS, counts);
    ck_assert_int_eq(counts[3], 0);
    assert_freq(counts[2], N_DRAWS, 0.2 / 0.9, 2);
    sampler_destroy(s);
    /* top_k=3 first renormalizes to 4/9, 3/9, 2/9: 7/9 >= 0.75 -> two tokens */
    s = make(1.0f, 3, 0.75f, 32, 4);
    draw_counts(s, logits, 4, N_DRAWS, counts);
    ck_assert_int_eq(counts[2] + counts[3], 0);
    assert_freq(counts[0], N_DRAWS, 4.0 / 7.0, 0);
    sampler_destroy(s);
    /* temperature 2 flattens to sqrt(p): 0.632, 0.548, 0.447, 0.316 (sum 1.943) ->
     * cumulative 0.325, 0.607, 0.837; top_p 0.8 needs three tokens at T=2 but two at T=1 */
    const double ref[4] = { log(0.4), log(0.3), log(0.2), log(0.1) };
    double p[4];
    softmax_ref(ref, 4, 2.0, p);
    ck_assert(p[0] + p[1] < 0.8 && p[0] + p[1] + p[2] >= 0.8);
    s = make(2.0f, 0, 0.8f, 33, 4);
    draw_counts(s, logits, 4, N_DRAWS, counts);
    ck_assert_int_eq(counts[3], 0);
    double kept = p[0] + p[1] + p[2];
    for (int i = 0; i < 3; i++)
        assert_freq(counts[i], N_DRAWS, p[i] / kept, i);
    sampler_destroy(s);
}
END_TEST

START_TEST(top_p_on_a_flat_large_vocab_keeps_the_lowest_ids)
{
    /* uniform over 2000 tokens: each has probability 5e-4, below the first candidate
     * threshold, so this exercises the fallback passes; ties keep the lowest ids.
     * 2000 draws: missing the last 20 kept ids has probability ~e^-40. */
    enum { V = 2000, DRAWS = 2000 };
    float *logits = malloc(V * sizeof *logits);
    int *counts = malloc(V * sizeof *counts);
    ck_assert(logits && counts);
    for (int i = 0; i < V; i++)
        logits[i] = -2.0f;
    sampler *s = make(1.0f, 0, 0.5f, 41, V);
    draw_counts(s, logits, V, DRAWS, counts);
    int lo = V, hi = -1;
    for (int i = 0; i < V; i++) {
        if (counts[i]) {
            lo = i < lo ? i : lo;
            hi = i;
        }
    }
    ck_assert_int_lt(hi, 1000);
    ck_assert_int_lt(lo, 20);
    ck_assert_int_gt(hi, 980);
    sampler_destroy(s);
    free(logits);
    free(counts);
}
END_TEST

START_TEST(top_p_on_a_peaked_large_vocab_matches_reference)
{
    /* geometric distribution over 600 tokens in scrambled id order */
    enum { V = 600 };
    double *ref = malloc(V * sizeof *ref), *p = malloc(V * sizeof *p);
    float *logits = malloc(V * sizeof *logits);
    int *counts = malloc(V * sizeof *counts);
    ck_assert(ref && p && logits && counts);
    for (int i = 0; i < V; i++) {
        int rank = (i * 7919) % V;  /* 7919 is prime to 600, so a permutation */
        ref[i] = -0.05 * rank;
        logits[i] = (float)ref[i];
    }
    const double top_p = 0.9;
    softmax_ref(ref, V, 1.0, p);
    /* reference nucleus by rank: keep ranks 0..m-1 */
    double cum = 0.0, sum_rank[V];
    int m = 0;
    for (int r = 0; r < V; r++) {
        sum_rank[r] = exp(-0.05 * r);
    }
    double z = 0.0;
    for (int r = 0; r < V; r++)
        z += sum_rank[r];
    while (m < V && cum < top_p * z)
        cum += sum_rank[m++];
    sampler *s = make(1.0f, 0, (float)top_p, 51, V);
    draw_counts(s, logits, V, N_DRAWS, counts);
    for (int i = 0; i < V; i++) {
        int rank = (i * 7919) % V;
        if (rank >= m)
            ck_assert_msg(counts[i] == 0, "rank %d (beyond nucleus of %d) was sampled", rank, m);
        else
            assert_freq(counts[i], N_DRAWS, p[i] * z / cum, i);
    }
    sampler_destroy(s);
    free(ref);
    free(p);
    free(logits);
    free(counts);
}
END_TEST

typedef struct {
    double p;
    int id;
} ref_entry;

static int ref_entry_desc(const void *a, const void *b)
{
    const ref_entry *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

/* Reference nucleus by the textbook method: softmax in double, (top-k by sorted rank,
 * renormalize,) sort descending, smallest prefix reaching top_p. Writes keep [V] (1 = in
 * the nucleus); returns 0 when a cumulative sum lies too close to top_p for float inputs
 * to decide (the caller skips such a case). */
static int ref_nucleus(const double *logits, int vocab, double t, int top_k, double top_p,
                       int *keep)
{
    ref_entry *e = malloc((size_t)vocab * sizeof *e);
    double *p = malloc((size_t)vocab * sizeof *p);
    ck_assert(e && p);
    softmax_ref(logits, vocab, t, p);
    for (int i = 0; i < vocab; i++) {
        e[i].p = p[i];
        e[i].id = i;
    }
    qsort(e, (size_t)vocab, sizeof *e, ref_entry_desc);
    int n = top_k > 0 && top_k < vocab ? top_k : vocab;
    double mass = 0.0, cum = 0.0;
    for (int j = 0; j < n; j++)
        mass += e[j].p;
    int m = n, ok = 1;
    for (int j = 0; j < n; j++) {
        cum += e[j].p / mass;
        if (fabs(cum - top_p) < 1e-4)
            ok = 0;
        if (cum >= top_p) {
            m = j + 1;
            break;
        }
    }
    memset(keep, 0, (size_t)vocab * sizeof *keep);
    for (int j = 0; j < m; j++)
        keep[e[j].id] = 1;
    free(e);
    free(p);
    return ok;
}

START_TEST(top_p_matches_a_sorting_reference_on_random_distributions)
{
    enum { V = 400, CASES = 60, DRAWS = 400 };
    double ref[V];
    float logits[V];
    int keep[V], counts[V];
    uint64_t x = 12345;
    int checked = 0;
    for (int c = 0; c < CASES; c++) {
        /* shapes: random, sorted ascending, sorted descending, many ties */
        for (int i = 0; i < V; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            double u = (double)(x >> 11) * 0x1.0p-53;
            switch (c % 4) {
            case 0: ref[i] = 6.0 * u - 3.0; break;
            case 1: ref[i] = 0.01 * i; break;
            case 2: ref[i] = -0.01 * i; break;
            default: ref[i] = (double)(int)(4.0 * u); break;
            }
            logits[i] = (float)ref[i];
            ref[i] = logits[i];  /* the reference sees exactly what the sampler sees */
        }
        const double t = 0.5 + (c % 5) * 0.4;
        const int top_k = (c % 3 == 0) ? 0 : (c % 3 == 1 ? 50 : 300);
        const float top_p = (float)(0.2 + 0.75 * (double)((c * 37) % 100) / 100.0);
        if (!ref_nucleus(ref, V, t, top_k, top_p, keep))
            continue;
        checked++;
        sampler *s = make((float)t, top_k, top_p, 100 + c, V);
        draw_counts(s, logits, V, DRAWS, counts);
        for (int i = 0; i < V; i++)
            ck_assert_msg(!counts[i] || keep[i], "case %d: token %d outside the nucleus", c, i);
        sampler_destroy(s);
    }
    ck_assert_int_ge(checked, CASES / 2);
}
END_TEST

START_TEST(large_top_k_keeps_exactly_the_k_best)
{
    /* k above the heap limit takes the quickselect path; a flat-ish distribution puts
     * ~30% of the mass beyond rank k, so a leak would show at once */
    enum { V = 3000, K = 1200, DRAWS = 1500 };
    float *logits = malloc(V * sizeof *logits);
    int *counts = malloc(V * sizeof *counts);
    ck_assert(logits && counts);
    for (int i = 0; i < V; i++)
        logits[i] = -0.001f * (float)((i * 4999) % V);  /* rank (i*4999) % V */
    const float ps[] = { 1.0f, 0.95f };
    for (int m = 0; m < 2; m++) {
        sampler *s = make(1.0f, K, ps[m], 71 + m, V);
        draw_counts(s, logits, V, DRAWS, counts);
        int in_top = 0;
        for (int i = 0; i < V; i++) {
            if ((i * 4999) % V >= K)
                ck_assert_msg(counts[i] == 0, "rank %d sampled with top_k=%d", (i * 4999) % V, K);
            else
                in_top += counts[i];
        }
        ck_assert_int_eq(in_top, DRAWS);
        sampler_destroy(s);
    }
    /* all equal: ties keep the K lowest ids */
    for (int i = 0; i < V; i++)
        logits[i] = 1.0f;
    sampler *s = make(1.0f, K, 1.0f, 73, V);
    draw_counts(s, logits, V, DRAWS, counts);
    for (int i = K; i < V; i++)
        ck_assert_int_eq(counts[i], 0);
    sampler_destroy(s);
    free(logits);
    free(counts);
}
END_TEST

/* sampler_scan against a plain loop, for every vocab size around the 8-lane blocks, with
 * the maximum (tied or not) at every position and in the scalar tail; its log-sum-exp
 * equal to sampler_logsumexp. */
START_TEST(scan_finds_the_greedy_token_and_maximum)
{
    float l[40];
    for (int vocab = 1; vocab <= 40; vocab++)
        for (int at = 0; at < vocab; at++)
            for (int tie = 0; tie < 3; tie++) {
                for (int i = 0; i < vocab; i++)
                    l[i] = (float)((i * 37) % 11) * 0.25f - 1.0f;
                l[at] = 5.0f;
                int twin = tie == 1 ? (at + 9) % vocab : tie == 2 ? (at + 3) % vocab : at;
                l[twin] = 5.0f;   /* a second maximum: the lower id wins */
                int want = at < twin ? at : twin, got = -1;
                float max = 0;
                ck_assert_int_eq(sampler_scan(l, vocab, &got, &max), 1);
                ck_assert_msg(got == want, "vocab %d max at %d and %d: got %d", vocab, at, twin,
                              got);
                ck_assert(max == 5.0f);
                sampler *g = make(0.0f, 0, 1.0f, 1, vocab);
                ck_assert_int_eq(sampler_sample(g, l), got);   /* what greedy draws */
                sampler_destroy(g);
                ck_assert(sampler_logsumexp_from(l, vocab, max) == sampler_logsumexp(l, vocab));
            }
}
END_TEST

/* Any NaN or infinity, wherever it is (every lane of a block, the scalar tail), makes the
 * scan report non-finite logits; -FLT_MAX and FLT_MAX are finite. */
START_TEST(scan_reports_nan_and_infinities_anywhere)
{
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    float l[27];
    for (int vocab = 1; vocab <= 27; vocab++)
        for (int at = 0; at < vocab; at++) {
            for (int i = 0; i < vocab; i++)
                l[i] = i % 2 ? FLT_MAX : -FLT_MAX;
            int id;
            float max;
            ck_assert_int_eq(sampler_scan(l, vocab, &id, &max), 1);
            for (int b = 0; b < 3; b++) {
                l[at] = bad[b];
                ck_assert_msg(sampler_scan(l, vocab, &id, &max) == 0, "vocab %d: %g at %d not "
                              "seen", vocab, (double)bad[b], at);
            }
        }
}
END_TEST

START_TEST(is_greedy_matches_the_greedy_modes)
{
    struct { float t; int k; int vocab; int greedy; } c[] = {
        {0.0f, 0, 10, 1}, {0.0f, 5, 10, 1}, {1.0f, 1, 10, 1}, {1e-39f, 0, 10, 1},
        {0.7f, 0, 1, 1}, {0.7f, 0, 10, 0}, {1.0f, 2, 10, 0}, {1e-30f, 0, 10, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        sampler *s = make(c[i].t, c[i].k, 1.0f, 3, c[i].vocab);
        ck_assert_msg(sampler_is_greedy(s) == c[i].greedy, "case %zu", i);
        sampler_destroy(s);
    }
}
END_TEST

START_TEST(logsumexp_matches_hand_values)
{
    float uniform[10];
    for (int i = 0; i < 10; i++)
        uniform[i] = 0.0f;
    ck_assert_float_eq_tol(sampler_logsumexp(uniform, 10), (float)log(10.0), 1e-6f);
    float three[3] = { 1.0f, 2.0f, 3.0f };
    double want = log(exp(1.0) + exp(2.0) + exp(3.0));
    ck_assert_float_eq_tol(sampler_logsumexp(three, 3), (float)want, 1e-5f);
    /* large logits: 1e4 + log 2, no overflow */
    float big[2] = { 1e4f, 1e4f };
    float lse = sampler_logsumexp(big, 2);
    ck_assert(isfinite(lse));
    ck_assert_float_eq_tol(lse, 1e4f + (float)log(2.0), 2e-3f);
    /* masked tokens contribute nothing; NaN counts as masked */
    float masked[4] = { 0.0f, -INFINITY, NAN, 0.0f };
    ck_assert_float_eq_tol(sampler_logsumexp(masked, 4), (float)log(2.0), 1e-6f);
}
END_TEST

START_TEST(top_logprobs_match_hand_values)
{
    enum { V = 8 };
    float uniform[V];
    for (int i = 0; i < V; i++)
        uniform[i] = 3.0f;
    int ids[V];
    float lp[V];
    ck_assert_int_eq(sampler_top_logprobs(uniform, V, 3, ids, lp), 3);
    for (int j = 0; j < 3; j++) {
        ck_assert_int_eq(ids[j], j);  /* ties by lower id */
        ck_assert_float_eq_tol(lp[j], (float)-log((double)V), 1e-6f);
    }
    float three[3] = { 1.0f, 3.0f, 2.0f };
    double lse = log(exp(1.0) + exp(2.0) + exp(3.0));
    ck_assert_int_eq(sampler_top_logprobs(three, 3, 3, ids, lp), 3);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], 2);
    ck_assert_int_eq(ids[2], 0);
    ck_assert_float_eq_tol(lp[0], (float)(3.0 - lse), 1e-6f);
    ck_assert_float_eq_tol(lp[1], (float)(2.0 - lse), 1e-6f);
    ck_assert_float_eq_tol(lp[2], (float)(1.0 - lse), 1e-6f);
    /* k > vocab writes vocab entries */
    ck_assert_int_eq(sampler_top_logprobs(three, 3, 10, ids, lp), 3);
    /* large logits: two at 1e4, one far below */
    float big[3] = { 1e4f, -1e4f, 1e4f };
    ck_assert_int_eq(sampler_top_logprobs(big, 3, 3, ids, lp), 3);
    ck_assert_int_eq(ids[0], 0);
    ck_assert_int_eq(ids[1], 2);
    ck_assert_int_eq(ids[2], 1);
    ck_assert_float_eq_tol(lp[0], (float)-log(2.0), 1e-6f);
    ck_assert_float_eq_tol(lp[1], (float)-log(2.0), 1e-6f);
    ck_assert(lp[2] < -1e4f && isfinite(lp[2]));
}
END_TEST

START_TEST(top_logprobs_on_a_large_vocab_picks_the_k_best)
{
    enum { V = 1000, K = 5 };
    float logits[V];
    for (int i = 0; i < V; i++)
        logits[i] = (float)((i * 613) % V) * 0.01f;  /* permutation of 0 .. 9.99 */
    int ids[K];
    float lp[K];
    double sum = 0.0;
    for (int r = 0; r < V; r++)
        sum += exp(r * 0.01);
    double lse = log(sum);
    ck_assert_int_eq(sampler_top_logprobs(logits, V, K, ids, lp), K);
    for (int j = 0; j < K; j++) {
        int rank_value = V - 1 - j;  /* expected logit value index */
        ck_assert_int_eq((ids[j] * 613) % V, rank_value);
        ck_assert_float_eq_tol(lp[j], (float)(rank_value * 0.01 - lse), 1e-4f);
    }
}
END_TEST

START_TEST(vocab_of_one_works_in_every_mode)
{
    float logit[1] = { -5.0f };
    const float temps[] = { 0.0f, 1.0f, 1.0f, 1.0f };
    const int ks[] = { 0, 0, 1, 5 };
    const float ps[] = { 1.0f, 1.0f, 0.5f, 0.3f };
    for (int m = 0; m < 4; m++) {
        sampler *s = make(temps[m], ks[m], ps[m], 1, 1);
        for (int i = 0; i < 10; i++)
            ck_assert_int_eq(sampler_sample(s, logit), 0);
        sampler_destroy(s);
    }
    int id = -1;
    float lp = 1.0f;
    ck_assert_int_eq(sampler_top_logprobs(logit, 1, 4, &id, &lp), 1);
    ck_assert_int_eq(id, 0);
    ck_assert_float_eq_tol(lp, 0.0f, 1e-7f);
    ck_assert_float_eq_tol(sampler_logsumexp(logit, 1), -5.0f, 1e-6f);
}
END_TEST

/* ---- limits ---- */

static void assert_rejected(float temperature, int top_k, float top_p, const char *name)
{
    sampler_params p = { .temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = 0 };
    lr_error err = { 0 };
    ck_assert_int_eq(sampler_params_check(&p, &err), LR_EINVAL);
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_msg(strstr(err.msg, name) != NULL, "message '%s' does not name %s", err.msg, name);
    lr_error err2 = { 0 };
    ck_assert_ptr_null(sampler_create(&p, 10, &err2));
    ck_assert_int_eq(err2.code, LR_EINVAL);
}

START_TEST(params_check_rejects_bad_values_naming_the_parameter)
{
    assert_rejected(-0.5f, 0, 1.0f, "temperature");
    assert_rejected(NAN, 0, 1.0f, "temperature");
    assert_rejected(INFINITY, 0, 1.0f, "temperature");
    assert_rejected(1.0f, -1, 1.0f, "top_k");
    assert_rejected(1.0f, 0, 0.0f, "top_p");
    assert_rejected(1.0f, 0, -0.1f, "top_p");
    assert_rejected(1.0f, 0, 1.01f, "top_p");
    assert_rejected(1.0f, 0, NAN, "top_p");
    ck_assert_int_eq(sampler_params_check(NULL, NULL), LR_EINVAL);
}
END_TEST

START_TEST(params_check_accepts_the_boundaries)
{
    sampler_params p[] = {
        { .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0 },
        { .temperature = 1e-30f, .top_k = 1, .top_p = 1e-6f, .seed = UINT64_MAX },
        { .temperature = 1e30f, .top_k = 1 << 30, .top_p = 1.0f, .seed = 1 },
    };
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        lr_error err = { 0 };
        ck_assert_msg(sampler_params_check(&p[i], &err) == 0, "rejected: %s", err.msg);
        ck_assert_int_eq(err.code, 0);
    }
}
END_TEST

START_TEST(create_rejects_empty_vocab_and_destroy_accepts_null)
{
    sampler_params p = { .temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 0 };
    lr_error err = { 0 };
    ck_assert_ptr_null(sampler_create(&p, 0, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "vocab"));
    ck_assert_ptr_null(sampler_create(&p, -3, NULL));
    sampler_destroy(NULL);
}
END_TEST

START_TEST(all_masked_logits_return_0_in_every_mode)
{
    enum { V = 7 };
    float logits[V] = { -INFINITY, NAN, -INFINITY, -INFINITY, NAN, -INFINITY, -INFINITY };
    const float temps[] = { 0.0f, 1.0f, 1.0f, 1.0f, 1.0f };
    const int ks[] = { 0, 0, 3, 0, 3 };
    const float ps[] = { 1.0f, 1.0f, 1.0f, 0.9f, 0.9f };
    for (int m = 0; m < 5; m++) {
        sampler *s = make(temps[m], ks[m], ps[m], 2, V);
        ck_assert_int_eq(sampler_sample(s, logits), 0);
        sampler_destroy(s);
    }
    ck_assert(sampler_logsumexp(logits, V) == -INFINITY);
    int ids[2];
    float lp[2];
    ck_assert_int_eq(sampler_top_logprobs(logits, V, 2, ids, lp), 2);
    ck_assert(lp[0] == -INFINITY && lp[1] == -INFINITY);
    ck_assert_int_eq(sampler_top_logprobs(logits, V, 0, ids, lp), 0);
    ck_assert_int_eq(sampler_top_logprobs(logits, 0, 2, ids, lp), 0);
}
END_TEST

START_TEST(extreme_logits_and_temperatures_stay_valid)
{
    enum { V = 5 };
    float logits[V] = { FLT_MAX, -FLT_MAX, INFINITY, 1e30f, -1e30f };
    const float temps[] = { 1e-38f, 1e-30f, 1e-3f, 1.0f, 1e30f, FLT_MAX };
    const int ks[] = { 0, 2, 0, 3 };
    const float ps[] = { 1.0f, 1.0f, 0.5f, 0.5f };
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        for (int m = 0; m < 4; m++) {
            sampler *s = make(temps[t], ks[m], ps[m], 3, V);
            for (int i = 0; i < 50; i++) {
                int tok = sampler_sample(s, logits);
                ck_assert_int_ge(tok, 0);
                ck_assert_int_lt(tok, V);
            }
            sampler_destroy(s);
        }
    }
    /* a temperature so small that 1/T overflows behaves as greedy */
    float plain[3] = { 0.0f, 1e-3f, 0.0f };
    sampler *s = make(1e-40f, 0, 1.0f, 3, 3);
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(sampler_sample(s, plain), 1);
    sampler_destroy(s);
    /* +inf and FLT_MAX rank alike; log-softmax stays finite */
    int ids[V];
    float lp[V];
    ck_assert_int_eq(sampler_top_logprobs(logits, V, V, ids, lp), V);
    ck_assert_int_eq(ids[0], 0);
    ck_assert_int_eq(ids[1], 2);
    ck_assert_float_eq_tol(lp[0], (float)-log(2.0), 1e-6f);
    ck_assert(!isnan(sampler_logsumexp(logits, V)));
}
END_TEST

START_TEST(top_k_larger_than_vocab_is_no_filter)
{
    enum { V = 3 };
    const double ref[V] = { 0.0, 1.0, 0.5 };
    float logits[V] = { 0.0f, 1.0f, 0.5f };
    double p[V];
    softmax_ref(ref, V, 1.0, p);
    int counts[V];
    sampler *s = make(1.0f, 1000, 1.0f, 61, V);
    draw_counts(s, logits, V, N_DRAWS, counts);
    for (int i = 0; i < V; i++)
        assert_freq(counts[i], N_DRAWS, p[i], i);
    sampler_destroy(s);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 60);
    tcase_add_test(core, greedy_is_argmax_with_ties_to_lowest_id);
    tcase_add_test(core, scan_finds_the_greedy_token_and_maximum);
    tcase_add_test(core, scan_reports_nan_and_infinities_anywhere);
    tcase_add_test(core, is_greedy_matches_the_greedy_modes);
    tcase_add_test(core, greedy_skips_nan_and_masked_logits);
    tcase_add_test(core, top_k_1_equals_greedy_at_any_temperature);
    tcase_add_test(core, same_seed_same_sequence_other_seed_differs);
    tcase_add_test(core, frequencies_match_softmax_over_temperature);
    tcase_add_test(core, all_equal_logits_sample_uniformly);
    tcase_add_test(core, masked_and_nan_logits_are_never_sampled);
    tcase_add_test(core, top_k_2_never_yields_rank_2_or_more);
    tcase_add_test(core, top_k_ties_at_the_cut_keep_lowest_ids);
    tcase_add_test(core, top_p_cuts_at_the_right_token);
    tcase_add_test(core, top_p_applies_after_temperature_and_top_k);
    tcase_add_test(core, top_p_on_a_flat_large_vocab_keeps_the_lowest_ids);
    tcase_add_test(core, top_p_on_a_peaked_large_vocab_matches_reference);
    tcase_add_test(core, top_p_matches_a_sorting_reference_on_random_distributions);
    tcase_add_test(core, large_top_k_keeps_exactly_the_k_best);
    tcase_add_test(core, logsumexp_matches_hand_values);
    tcase_add_test(core, top_logprobs_match_hand_values);
    tcase_add_test(core, top_logprobs_on_a_large_vocab_picks_the_k_best);
    tcase_add_test(core, vocab_of_one_works_in_every_mode);
    suite_add_tcase(s, core);

    TCase *limits = tcase_create("limits");
    tcase_set_timeout(limits, 60);
    tcase_add_test(limits, params_check_rejects_bad_values_naming_the_parameter);
    tcase_add_test(limits, params_check_accepts_the_boundaries);
    tcase_add_test(limits, create_rejects_empty_vocab_and_destroy_accepts_null);
    tcase_add_test(limits, all_masked_logits_return_0_in_every_mode);
    tcase_add_test(limits, extreme_logits_and_temperatures_stay_valid);
    tcase_add_test(limits, top_k_larger_than_vocab_is_no_filter);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sampler_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
