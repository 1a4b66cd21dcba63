/* bench_load: the serving benchmark. Closed-loop clients (one thread and one libcurl
 * handle each) stream completions from a running `lorad serve` on loopback, each request
 * on the base, an adapter or a weighted mix chosen by the scenario; the random
 * SmolLM2-135M-shaped F32 model and rank-16 adapters on all seven projections that
 * `bench_engine --prepare` writes.
 *
 * Scenarios (issue 10):
 *   1. one client: base, one adapter on the fly, the same adapter merged (--merge always);
 *   2. 8 clients: base; all on one adapter; 8 different adapters; 8 different mixes of 2;
 *   3. 32 and 64 clients over 100 adapters with Zipf popularity (s = 1), with
 *      --max-loaded-adapters 20, so the LRU churns;
 *   4. 32 clients over 1,000 adapters on disk, --max-loaded-adapters 50 (S-LoRA's case),
 *      against 32 clients on one adapter; and 32 and 64 clients on the base;
 *   5. fairness: 16 clients, 90% of requests on one adapter, 10% on 7 others.
 * Scenarios 1 and 3 also run with --merge auto; its one-client case is measured once the
 * merged W' serves (the window opens a second after /metrics shows it; the time the
 * policy and the paced build took is printed with the targets).
 * Scenario 1 is also measured paired: one client sends every other request to the base on
 * the --merge never daemon and the others to the adapter (on the fly, merged, or auto once
 * merged), and each request's tokens/s (from its start) on the adapter is divided by that
 * of the request next to it on the base. One client's speed here drifts by ±10% within
 * seconds to minutes (44-55 tok/s across one run's repetitions), more than the ±3% the
 * merged ÷ base target allows, so that target is the median of these pair ratios; the
 * ratio of the separate cases is printed beside it, and the on-the-fly pairs show that the
 * method sees a difference of a few percent. Two controls run the same way: the base on
 * the merged daemon against the base on D_MAIN (the two daemons' own difference, without
 * W': the same code, its memory placed elsewhere) and the base against itself on D_MAIN
 * (the method's A/A). That difference moved by up to 6% from run to run (1.017, 1.061:
 * where each process's memory landed), so the merged ÷ base target is read from pairs on
 * one daemon: the merged adapter and the base, both on the --merge always daemon. That
 * daemon is started afresh before that case in each repetition: W and W' are two
 * allocations, and one daemon's W' streams up to ±6% from its W by where its pages landed
 * (far from the vCPUs or not, bench_place), 0.947-1.060 over 10 fresh daemons in one hour
 * while the base against itself stayed within 0.995-1.007 over 6 (docs/benchmarks.md), so
 * the median is over as many placements as repetitions, and their range is printed.
 * --merge auto ÷ base cannot pair the adapter with the base on the auto daemon (the base's
 * rows would take half of the recent rows from the adapter, and the policy would drop its
 * W'), so it is a ratio of two paired cases on one fresh --merge auto daemon each
 * repetition, run back to back: first the base there against the base on D_MAIN (the
 * daemon's own W), then the adapter, once merged, against the base on D_MAIN (its W'); the
 * second over the first is the W' over its own W, with D_MAIN's base as the common measure
 * of the machine's drift. Against D_MAIN's base alone, W' differed from it by the two
 * daemons' own difference (1.032 in one run whose base-against-base control gave 1.019).
 * The adapter directories hold 100 and 1,000 adapters whose weight files are hard links
 * to the 8 distinct generated ones (the daemon loads each name on its own: a load reads
 * the file — from the page cache — parses, converts and allocates as for any adapter).
 *
 * Each case runs for a warm-up, then a measured window; then in-flight requests are
 * aborted. Throughput = tokens arriving inside the window / its length. Time to first
 * token (TTFT) and time per output token (TPOT = (last - first token) / (n - 1)) over
 * the requests that finished inside the window; p50 and p99 over them. The four
 * daemons (merge never, always, auto; the 1,000-adapter directory) start once and stay up
 * (but for the --merge always one, restarted before its one-daemon merged / base case, and
 * the --merge auto one, before its base / base case);
 * each repetition runs every case once, in an order rotated by one case per repetition;
 * the two cases of a target ratio that a drift over minutes would bias run back to back,
 * twice, in ABBA groups that no repetition starts inside (AGAIN, GROUPS): one client, 8 on
 * the base, 8 on 8 adapters and 64 on the base, nested (1-8-8x8-64-64-8x8-8-1); scenario
 * 3's --merge never and auto (never-auto-auto-never; the policy is expected to leave them
 * equal there: no adapter carries most of the rows).
 * The table gives medians over repetitions; each target ratio is the median of the
 * ratios within a repetition, whose cases ran minutes apart at most (this machine's
 * memory bandwidth drifts over minutes, so ratios of medians taken far apart mislead).
 * A tab-separated copy of the table goes to --tsv FILE for tools/plot_bench.py.
 * A second table gives the engine's side of each window from the daemon's /metrics
 * (lorad_engine_*): the share of the window spent in steps, the mean step, decode rows a
 * step, and prompt rows prefilled per generated token — so that a speed-up of many clients
 * over one can be read as rows a step against the cost of a step.
 *
 * Usage: bench_load BUILD WORKDIR [--quick] [--tsv FILE] [--reps N] [--warmup S] [--window S]
 * [--max-tokens N] [--only TEXT] [--merged-unplaced] (--only: the cases whose name contains
 * TEXT — or one of the alternatives of TEXT separated by '|' — and no targets;
 * --merged-unplaced: the --merge always daemon takes its pages as the kernel gives them,
 * --place-pages no, so that "base merged daemon/base" compares unplaced pages with placed
 * ones, hugemem.h).
 * Defaults: 5 repetitions, 3 s warm-up + 6 s window, 48 output tokens; the window is twice
 * as long for 32 and 64 clients, whose requests take 3.5-9 s (fast and slow phases of the
 * machine), so that it holds whole requests, and for the alternating cases, so that it
 * holds ~6 pairs; --quick: 1, 2 s + 4 s, 32. */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/benchutil.h"

#define MAX_CLIENTS 64
#define MAX_RECORDS 4096   /* requests per client per case */
#define MAX_REPS 5
#define PROMPT_LEN 16

/* How a request picks its model. */
typedef enum { PICK_BASE, PICK_ONE, PICK_DISTINCT8, PICK_MIX8, PICK_ZIPF, PICK_SKEW } pick_rule;

/* The daemon a case runs against. */
typedef enum { D_MAIN, D_MERGED, D_AUTO, D_MANY, N_DAEMONS } daemon_kind;

typedef struct {
    const char *name;
    int scenario;
    int clients;
    daemon_kind daemon;
    pick_rule pick;
    /* paired: every other request goes to the base instead — 1: on D_MAIN, 2: on the
     * case's own daemon */
    int alternate;
} bench_case;

static const bench_case cases[] = {
    /* the cases of the throughput targets over one client, nested ABBA (see AGAIN): 1,
     * 8 on the base, 8 on 8 adapters, 64 on the base, then each again in reverse */
    {"1 client, base", 1, 1, D_MAIN, PICK_BASE, 0},
    {"8 clients, base", 2, 8, D_MAIN, PICK_BASE, 0},
    {"8 clients, 8 adapters", 2, 8, D_MAIN, PICK_DISTINCT8, 0},
    {"64 clients, base", 4, 64, D_MANY, PICK_BASE, 0},
    {"64 clients, base (again)", 4, 64, D_MANY, PICK_BASE, 0},
    {"8 clients, 8 adapters (again)", 2, 8, D_MAIN, PICK_DISTINCT8, 0},
    {"8 clients, base (again)", 2, 8, D_MAIN, PICK_BASE, 0},
    {"1 client, base (again)", 1, 1, D_MAIN, PICK_BASE, 0},
    {"1 client, adapter on the fly", 1, 1, D_MAIN, PICK_ONE, 0},
    {"1 client, adapter merged", 1, 1, D_MERGED, PICK_ONE, 0},
    {"1 client, adapter, --merge auto", 1, 1, D_AUTO, PICK_ONE, 0},
    {"8 clients, one adapter", 2, 8, D_MAIN, PICK_ONE, 0},
    {"8 clients, 8 mixes of 2", 2, 8, D_MAIN, PICK_MIX8, 0},
    /* scenario 3: never, auto, auto again, never again (see AGAIN) */
    {"32 clients, 100 adapters (Zipf)", 3, 32, D_MAIN, PICK_ZIPF, 0},
    {"32 clients, 100 adapters, auto", 3, 32, D_AUTO, PICK_ZIPF, 0},
    {"32 clients, 100 adapters, auto (again)", 3, 32, D_AUTO, PICK_ZIPF, 0},
    {"32 clients, 100 adapters (Zipf) (again)", 3, 32, D_MAIN, PICK_ZIPF, 0},
    {"64 clients, 100 adapters (Zipf)", 3, 64, D_MAIN, PICK_ZIPF, 0},
    {"64 clients, 100 adapters, auto", 3, 64, D_AUTO, PICK_ZIPF, 0},
    {"64 clients, 100 adapters, auto (again)", 3, 64, D_AUTO, PICK_ZIPF, 0},
    {"64 clients, 100 adapters (Zipf) (again)", 3, 64, D_MAIN, PICK_ZIPF, 0},
    {"32 clients, base", 4, 32, D_MANY, PICK_BASE, 0},
    {"32 clients, one adapter", 4, 32, D_MANY, PICK_ONE, 0},
    {"32 clients, 1000 adapters (Zipf)", 4, 32, D_MANY, PICK_ZIPF, 0},
    {"16 clients, 90% on one adapter", 5, 16, D_MAIN, PICK_SKEW, 0},
    {"1 client, on the fly/base alternating", 1, 1, D_MAIN, PICK_ONE, 1},
    {"1 client, merged/base alternating", 1, 1, D_MERGED, PICK_ONE, 1},
    /* --merge auto / base with both sides on the --merge auto daemon: that daemon, started
     * afresh, first serves the base (its W, against the base on D_MAIN), then the adapter
     * (its W', once merged, against the base on D_MAIN); see GROUPS */
    {"1 client, base auto daemon/base alternating", 1, 1, D_AUTO, PICK_BASE, 1},
    {"1 client, auto/base alternating", 1, 1, D_AUTO, PICK_ONE, 1},
    /* controls for the paired ratios: the base on the merged daemon against the base on
     * D_MAIN (the daemons' own difference, without W'), and the base on D_MAIN against
     * itself (the method's A/A) */
    {"1 client, base merged daemon/base alternating", 1, 1, D_MERGED, PICK_BASE, 1},
    {"1 client, base/base alternating", 1, 1, D_MAIN, PICK_BASE, 1},
    /* merged / base with both sides on the --merge always daemon: without the daemons'
     * difference that the first control measures */
    {"1 client, merged/base alternating, one daemon", 1, 1, D_MERGED, PICK_ONE, 2},
};
#define N_CASES ((int)(sizeof cases / sizeof *cases))

/* The measured window [w0, w1): set before the clients start, or moved once by the case
 * (the --merge auto case starts it once the W' is ready) while they run. */
typedef struct {
    _Atomic double w0, w1;
} window_t;

typedef struct {
    double t0, t_first, t_last;
    int n;
    int popular;        /* PICK_SKEW: on the popular adapter */
    int on_base;        /* an alternating case: this request went to the base on D_MAIN */
} record;

typedef struct {
    /* set up by the case */
    int port, index, max_tokens;
    int base_port;              /* D_MAIN's, for the requests of an alternating case */
    const bench_case *bc;
    int n_adapters;             /* adapters in the daemon's directory (Zipf) */
    const double *zipf_cdf;
    const window_t *win;        /* the measured window */
    atomic_int *stop;
    unsigned seed;
    /* results */
    record rec[MAX_RECORDS];
    int n_rec;
    long tokens_in_window;
    int failures;
    /* the request being read */
    record cur;
    bench_sse sse;
    pthread_t th;
} client;

/* Zipf(s = 1) over n items: cdf[k] = Σ_{i <= k} 1/(i+1) / H_n. */
static double *zipf_cdf(int n)
{
    double *c = malloc(sizeof *c * (size_t)n), h = 0;
    for (int i = 0; c && i < n; i++)
        c[i] = h += 1.0 / (i + 1);
    for (int i = 0; c && i < n; i++)
        c[i] /= h;
    return c;
}

static int zipf_pick(const double *cdf, int n, unsigned *seed)
{
    double u = (bench_rand(seed) & 0xFFFFFF) / 16777216.0;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *user)
{
    client *c = user;
    size_t n = size * nmemb;
    double x = bench_now();
    size_t i = 0;
    for (const char *ev; (ev = bench_sse_event(&c->sse, data, n, &i));) {
        int k = bench_sse_tokens(ev);
        if (k > 0) {
            if (c->cur.n == 0)
                c->cur.t_first = x;
            c->cur.t_last = x;
            c->cur.n += k;
            if (x >= atomic_load(&c->win->w0) && x < atomic_load(&c->win->w1))
                c->tokens_in_window += k;
        }
    }
    return n;
}

/* Aborts the transfer once the case is over. */
static int on_progress(void *user, curl_off_t a, curl_off_t b, curl_off_t c2, curl_off_t d)
{
    (void)a, (void)b, (void)c2, (void)d;
    return atomic_load(((client *)user)->stop) != 0;
}

/* The request body's model part for this request. */
static void pick_model(client *c, char *out, size_t cap)
{
    switch (c->bc->pick) {
    case PICK_BASE:
        snprintf(out, cap, "\"model\":\"base\"");
        break;
    case PICK_ONE:
        snprintf(out, cap, "\"model\":\"%s\"", c->bc->daemon == D_MANY ? "b0000" : "a000");
        break;
    case PICK_DISTINCT8:
        snprintf(out, cap, "\"model\":\"a%03d\"", c->index % 8);
        break;
    case PICK_MIX8:
        snprintf(out, cap, "\"adapters\":[{\"name\":\"a%03d\",\"weight\":0.7},"
                 "{\"name\":\"a%03d\",\"weight\":0.3}]", c->index % 8, (c->index + 1) % 8);
        break;
    case PICK_SKEW:
        c->cur.popular = bench_rand(&c->seed) % 10 != 0;
        if (c->cur.popular)
            snprintf(out, cap, "\"model\":\"a000\"");
        else
            snprintf(out, cap, "\"model\":\"a%03d\"", 1 + (int)(bench_rand(&c->seed) % 7));
        break;
    case PICK_ZIPF: {
        int k = zipf_pick(c->zipf_cdf, c->n_adapters, &c->seed);
        if (c->bc->daemon == D_MANY)
            snprintf(out, cap, "\"model\":\"b%04d\"", k);
        else
            snprintf(out, cap, "\"model\":\"a%03d\"", k);
        break;
    }
    }
}

static void *client_main(void *arg)
{
    client *c = arg;
    CURL *h = curl_easy_init();
    if (!h) {
        c->failures++;
        return NULL;
    }
    char url[2][64], body[1024], pick[256];
    snprintf(url[0], sizeof url[0], "http://127.0.0.1:%d/v1/completions", c->port);
    snprintf(url[1], sizeof url[1], "http://127.0.0.1:%d/v1/completions", c->base_port);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    for (long sent = 0; !atomic_load(c->stop); sent++) {
        memset(&c->cur, 0, sizeof c->cur);
        c->cur.on_base = c->bc->alternate && sent % 2;
        if (c->cur.on_base)
            snprintf(pick, sizeof pick, "\"model\":\"base\"");
        else
            pick_model(c, pick, sizeof pick);
        int k = snprintf(body, sizeof body, "{%s,\"prompt\":[", pick);
        for (int i = 0; i < PROMPT_LEN; i++)
            k += snprintf(body + k, sizeof body - (size_t)k, "%s%u", i ? "," : "",
                          100 + bench_rand(&c->seed) % 20000);
        snprintf(body + k, sizeof body - (size_t)k, "],\"max_tokens\":%d,\"temperature\":0,"
                 "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0,"
                 "\"return_tokens_as_token_ids\":true}", c->max_tokens);
        curl_easy_setopt(h, CURLOPT_URL, url[c->cur.on_base]);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
        c->sse.len = 0;
        c->cur.t0 = bench_now();
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (atomic_load(c->stop))
            break;
        if (rc != CURLE_OK || status != 200 || c->cur.n != c->max_tokens) {
            if (c->failures++ < 3)
                fprintf(stderr, "bench_load: %s: %s, status %ld, %d tokens\n", c->bc->name,
                        curl_easy_strerror(rc), status, c->cur.n);
            usleep(100000);
            continue;
        }
        if (c->cur.t_last >= atomic_load(&c->win->w0) &&
            c->cur.t_last < atomic_load(&c->win->w1) && c->n_rec < MAX_RECORDS)
            c->rec[c->n_rec++] = c->cur;
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return NULL;
}

typedef struct {
    double tps, ttft50, ttft99, tpot50, tpot99;
    int requests;
    double tpot99_popular, tpot99_others;   /* PICK_SKEW */
    double merge_wait;  /* the --merge auto case: seconds until its W' was ready (NAN: none) */
    int merges;         /* a many-client --merge auto case: W' built from its start to its
                         * end (lorad_adapter_merges_total; -1: not read) */
    double paired;      /* an alternating case: the median over pairs of successive requests
                         * of (tokens/s of the one on the adapter) / (the one on the base) */
    int pairs;
    /* the engine over the window, from /metrics (NAN: not read): the fraction of it spent
     * in steps, the mean step, decode rows a step, and prefill rows per generated token;
     * the share of the daemon's anonymous memory in huge pages as the window closed */
    double busy, step_ms, decode_per_step, prefill_per_token, huge;
} result;

static double percentile(double *v, int n, double p)
{
    if (n == 0)
        return NAN;
    for (int i = 1; i < n; i++)  /* insertion sort: n is a few thousand at most */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    double r = p * (n - 1);
    int lo = (int)r;
    return lo + 1 < n ? v[lo] + (r - lo) * (v[lo + 1] - v[lo]) : v[lo];
}

static client clients_mem[MAX_CLIENTS];

/* The cases by index, in the order of cases[]. */
enum { B1, B8, D8, B64, B64R, D8R, B8R, B1R, A1, M1, AUTO1, O8, X8, Z32, ZA32, ZA32R, Z32R, Z64,
       ZA64, ZA64R, Z64R, B32, O32, Z1000, SKEW, A1ALT, M1ALT, BA1ALT, AUTO1ALT, BM1ALT,
       BB1ALT, M1ALT1 };
_Static_assert(M1ALT1 + 1 == sizeof cases / sizeof *cases, "one name per case");

/* Cases measured twice in every repetition, as groups in the order A, B, B, A (ABBA): a
 * drift of the machine that is linear over those minutes then weighs on both alike, and
 * each comparison has two windows a side. Their rows in the table and their ratio use both
 * windows; A / A and B / B in the same repetition (the same code, a minute or two apart)
 * show how far two identical cases differ here — the resolution against which a ratio is
 * read. Scenario 3's --merge never and auto: the policy is expected to build no W' there
 * (no adapter carries most of the rows; the count is printed), so auto / never should be 1
 * within that resolution. One client and 8 on the base: 8 clients' speed-up, a target, is a
 * ratio of two cases that the rotation below used to put up to a whole repetition apart
 * (~5 minutes), over which this machine's speed moves by ±15%: in the twenty-fourth
 * session's run, 1 client 48.7–63.5 tok/s, and the ratio 4.74–6.16 over repetitions.
 * Since the thirty-second session the other targets over one client or 8 on the base run
 * inside that group, nested: 1, 8 base, 8 on 8 adapters, 64 base, 64 base, 8 on 8
 * adapters, 8 base, 1 — each case's two windows lie symmetric about the group's middle,
 * so a linear drift cancels in every ratio among them. 8 on 8 adapters ÷ 8 on the base
 * had its cases up to two minutes apart, and moved 0.60–0.85 over one run's repetitions.
 * {repeat, first}: */
static const int AGAIN[][2] = {{B8R, B8},     {B1R, B1},     {D8R, D8},    {B64R, B64},
                               {ZA32R, ZA32}, {Z32R, Z32},   {ZA64R, ZA64}, {Z64R, Z64}};
#define N_AGAIN ((int)(sizeof AGAIN / sizeof *AGAIN))
/* The groups of cases that run back to back, first and last case: a repetition never starts
 * inside one (the rotation below). The ABBA groups, and the --merge auto daemon's two
 * alternating cases, the base then the adapter, on one fresh daemon. */
static const int GROUPS[][2] = {{B1, B1R}, {Z32, Z32R}, {Z64, Z64R}, {BA1ALT, AUTO1ALT}};
#define N_GROUPS ((int)(sizeof GROUPS / sizeof *GROUPS))

/* 1 when a repetition may start at case k, the case before it in the order being prev (-1:
 * none): not both inside one ABBA group. */
static int starts_unit(int prev, int k)
{
    for (int g = 0; g < N_GROUPS && prev >= 0; g++)
        if (prev >= GROUPS[g][0] && k <= GROUPS[g][1] && k > prev)
            return 0;
    return 1;
}

/* The other case of the pair in table[n][2] whose column col holds k (-1: none). */
static int pair_other(const int (*table)[2], int n, int col, int k)
{
    for (int i = 0; i < n; i++)
        if (table[i][col] == k)
            return table[i][!col];
    return -1;
}

/* The case k repeats (-1: none) and the repeat of case k (-1: none). */
static int first_of(int k)
{
    return pair_other(AGAIN, N_AGAIN, 0, k);
}

static int repeat_of(int k)
{
    return pair_other(AGAIN, N_AGAIN, 1, k);
}

/* Scenario 3's auto windows and the never window each is compared with, which draws the
 * same requests: {auto, never}. */
static const int AUTO_NEVER[][2] = {{ZA32, Z32}, {ZA32R, Z32R}, {ZA64, Z64}, {ZA64R, Z64R}};
#define N_AUTO_NEVER ((int)(sizeof AUTO_NEVER / sizeof *AUTO_NEVER))

/* The cases this run measures (--only may leave some out). */
static int measured[M1ALT1 + 1];

/* Case k's tokens/s in repetition r: the mean of its two windows where it has a repeat
 * that was measured. */
static double rep_tps(result res[][MAX_REPS], int k, int r)
{
    int k2 = repeat_of(k);
    return k2 < 0 || !measured[k2] ? res[k][r].tps : (res[k][r].tps + res[k2][r].tps) / 2;
}

/* Case a's tokens/s over case b's in each repetition, into v[0..reps). */
static void rep_ratios(result res[][MAX_REPS], int reps, int a, int b, double *v)
{
    for (int r = 0; r < reps; r++)
        v[r] = rep_tps(res, a, r) / rep_tps(res, b, r);
}

/* The median over repetitions of case a's tokens/s over case b's in the same repetition. */
static double rep_ratio(result res[][MAX_REPS], int reps, int a, int b)
{
    double v[MAX_REPS];
    rep_ratios(res, reps, a, b, v);
    return bench_median(v, reps);
}

/* The range over repetitions of the same ratios. */
static void rep_range(result res[][MAX_REPS], int reps, int a, int b, double *lo, double *hi)
{
    double v[MAX_REPS];
    rep_ratios(res, reps, a, b, v);
    bench_range(v, reps, lo, hi);
}

/* A case measured twice a repetition (AGAIN): its second window's tokens/s over its
 * first's, the median and range over repetitions — two identical cases a minute or two
 * apart, the resolution a ratio is read against. */
static void aa_spread(result res[][MAX_REPS], int reps, int k, double *med, double *lo,
                      double *hi)
{
    double v[MAX_REPS];
    for (int r = 0; r < reps; r++)
        v[r] = res[repeat_of(k)][r].tps / res[k][r].tps;
    bench_range(v, reps, lo, hi);
    *med = bench_median(v, reps);
}

typedef struct {
    char buf[65536];
    size_t len;
} text_buf;

static size_t on_text(char *data, size_t size, size_t nmemb, void *user)
{
    text_buf *b = user;
    size_t n = size * nmemb, room = sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, data, n < room ? n : room);
    b->len += n < room ? n : room;
    b->buf[b->len] = '\0';
    return n;
}

/* The daemon's /metrics text into b; 0, or -1 when it cannot be read. */
static int fetch_metrics(int port, text_buf *b)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    CURL *h = curl_easy_init();
    if (!h)
        return -1;
    b->len = 0;
    b->buf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_text);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 5L);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    return rc == CURLE_OK ? 0 : -1;
}

/* The value of metric `name` (a line "name VALUE") in the /metrics text b; -1 when absent. */
static double metric_in(const text_buf *b, const char *name)
{
    size_t n = strlen(name);
    for (const char *l = b->buf; l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, name, n) == 0 && l[n] == ' ')
            return atof(l + n + 1);
    return -1;
}

/* The value of metric `name` in the daemon's /metrics; -1 when it cannot be read. */
static double metric(int port, const char *name)
{
    static text_buf b;
    return fetch_metrics(port, &b) ? -1 : metric_in(&b, name);
}

/* The engine's counters at one moment; ok: every one of them was read. */
typedef struct {
    double at, steps, step_seconds, decode_rows, prefill_rows;
    double anon, huge;  /* lorad_memory_anon_bytes, _anon_huge_bytes (-1: not read) */
    int ok;
} engine_snap;

static engine_snap engine_counters(int port)
{
    static text_buf b;
    engine_snap s = {bench_now(), -1, -1, -1, -1, -1, -1, 0};
    if (fetch_metrics(port, &b))
        return s;
    s.steps = metric_in(&b, "lorad_engine_steps_total");
    s.step_seconds = metric_in(&b, "lorad_engine_step_seconds_total");
    s.decode_rows = metric_in(&b, "lorad_engine_decode_rows_total");
    s.prefill_rows = metric_in(&b, "lorad_engine_prefill_rows_total");
    s.anon = metric_in(&b, "lorad_memory_anon_bytes");
    s.huge = metric_in(&b, "lorad_memory_anon_huge_bytes");
    s.ok = s.steps >= 0 && s.step_seconds >= 0 && s.decode_rows >= 0 && s.prefill_rows >= 0;
    return s;
}

/* What the engine did between two snapshots, into out's engine fields (NAN where a counter
 * was not read or nothing ran); tokens: those the clients received meanwhile. */
static void engine_between(const engine_snap *a, const engine_snap *b, long tokens, result *out)
{
    double steps = b->steps - a->steps, sec = b->step_seconds - a->step_seconds;
    double dec = b->decode_rows - a->decode_rows, pre = b->prefill_rows - a->prefill_rows;
    int ok = a->ok && b->ok && steps > 0 && tokens > 0;
    out->busy = ok ? sec / (b->at - a->at) : NAN;
    out->step_ms = ok ? 1e3 * sec / steps : NAN;
    out->decode_per_step = ok ? dec / steps : NAN;
    out->prefill_per_token = ok ? pre / (double)tokens : NAN;
    out->huge = b->anon > 0 && b->huge >= 0 ? b->huge / b->anon : NAN;
}

/* The --merge auto case measures one client on its merged W' ("once merged"): its window
 * opens a second after the W' is ready (requests begun on the adapter on the fly finish
 * meanwhile), and no earlier than the warm-up's end; how long the merge took from the case's
 * start goes to the result. At most this long is waited for it. */
#define MERGE_WAIT_MAX 60.0

static int run_case(const bench_case *bc, int port, int base_port, int n_adapters,
                    const double *cdf, double warmup, double window, int max_tokens,
                    unsigned seed, result *out)
{
    atomic_int stop = 0;
    double t = bench_now();
    int wait_merge = bc->daemon == D_AUTO && bc->clients == 1 && bc->pick != PICK_BASE;
    window_t win;
    atomic_init(&win.w0, wait_merge ? HUGE_VAL : t + warmup);
    atomic_init(&win.w1, wait_merge ? HUGE_VAL : t + warmup + window);
    out->merge_wait = NAN;
    /* the policy is expected to build nothing here (no adapter has most of the rows): the
     * count shows it */
    int count_merges = bc->daemon == D_AUTO && bc->clients > 1;
    double merges0 = count_merges ? metric(port, "lorad_adapter_merges_total") : -1;
    out->merges = -1;
    for (int i = 0; i < bc->clients; i++) {
        client *c = &clients_mem[i];
        memset(c, 0, sizeof *c);
        *c = (client){.port = port, .base_port = base_port, .index = i,
                      .max_tokens = max_tokens, .bc = bc,
                      .n_adapters = n_adapters, .zipf_cdf = cdf, .win = &win, .stop = &stop,
                      .seed = seed * 7919u + (unsigned)i * 104729u + 1u};
        if (pthread_create(&c->th, NULL, client_main, c)) {
            fprintf(stderr, "bench_load: cannot start client threads\n");
            atomic_store(&stop, 1);
            for (int j = 0; j < i; j++)
                pthread_join(clients_mem[j].th, NULL);
            return -1;
        }
    }
    double end = t + warmup + window;
    if (wait_merge) {
        double now = t;
        while (now < t + MERGE_WAIT_MAX && metric(port, "lorad_adapters_merged") < 1) {
            usleep(100000);
            now = bench_now();
        }
        if (now < t + MERGE_WAIT_MAX)
            out->merge_wait = now - t;
        else
            fprintf(stderr, "bench_load: %s: no W' after %.0f s; measured without\n",
                    bc->name, MERGE_WAIT_MAX);
        double w0 = fmax(now + 1.0, t + warmup);
        atomic_store(&win.w1, w0 + window);
        atomic_store(&win.w0, w0);
        end = w0 + window;
    }
    /* the engine's counters as the window opens and closes (w0 moves in a --merge auto
     * case) */
    engine_snap at0 = {0}, at1;
    int opened = 0;
    for (double now = bench_now(); now < end; now = bench_now()) {
        if (!opened && now >= atomic_load(&win.w0)) {
            at0 = engine_counters(port);
            opened = 1;
        }
        usleep(20000);
    }
    at1 = engine_counters(port);
    if (merges0 >= 0) {
        double merges1 = metric(port, "lorad_adapter_merges_total");
        out->merges = merges1 >= 0 ? (int)(merges1 - merges0) : -1;
    }
    atomic_store(&stop, 1);
    static double ttft[MAX_CLIENTS * MAX_RECORDS], tpot[MAX_CLIENTS * MAX_RECORDS];
    static double tp_pop[MAX_CLIENTS * MAX_RECORDS], tp_oth[MAX_CLIENTS * MAX_RECORDS];
    static double paired[MAX_CLIENTS * MAX_RECORDS];
    int n = 0, failures = 0, n_pop = 0, n_oth = 0, n_paired = 0;
    long tokens = 0;
    for (int i = 0; i < bc->clients; i++) {
        client *c = &clients_mem[i];
        pthread_join(c->th, NULL);
        failures += c->failures;
        tokens += c->tokens_in_window;
        for (int k = 0; k < c->n_rec; k++, n++) {
            ttft[n] = c->rec[k].t_first - c->rec[k].t0;
            tpot[n] = (c->rec[k].t_last - c->rec[k].t_first) / (c->rec[k].n - 1);
            if (c->rec[k].popular)
                tp_pop[n_pop++] = tpot[n];
            else
                tp_oth[n_oth++] = tpot[n];
            /* successive requests, one on each side: tokens/s (from the request's start)
             * of the one on the adapter over the one on the base */
            const record *x = &c->rec[k], *y = k ? &c->rec[k - 1] : NULL;
            if (y && x->on_base != y->on_base) {
                const record *ad = x->on_base ? y : x, *base = x->on_base ? x : y;
                paired[n_paired++] = (ad->n / (ad->t_last - ad->t0)) /
                                     (base->n / (base->t_last - base->t0));
            }
        }
    }
    if (failures) {
        fprintf(stderr, "bench_load: %s: %d failed requests\n", bc->name, failures);
        return -1;
    }
    out->tps = tokens / window;
    if (opened)
        engine_between(&at0, &at1, tokens, out);
    else
        out->busy = out->step_ms = out->decode_per_step = out->prefill_per_token =
            out->huge = NAN;
    out->requests = n;
    out->ttft50 = percentile(ttft, n, 0.5);
    out->ttft99 = percentile(ttft, n, 0.99);
    out->tpot50 = percentile(tpot, n, 0.5);
    out->tpot99 = percentile(tpot, n, 0.99);
    out->tpot99_popular = percentile(tp_pop, n_pop, 0.99);
    out->tpot99_others = percentile(tp_oth, n_oth, 0.99);
    out->paired = percentile(paired, n_paired, 0.5);
    out->pairs = n_paired;
    return 0;
}

/* dir/NAME{i} for i < n, each with adapter_config.json and adapter_model.safetensors
 * hard-linked from the 8 generated adapters (i % 8). Existing entries are kept. */
static int make_adapter_dir(const char *work, const char *dir, const char *fmt, int n)
{
    mkdir(dir, 0755);
    for (int i = 0; i < n; i++) {
        char name[32], sub[4200], src[4200], dst[4300];
        snprintf(name, sizeof name, fmt, i);
        snprintf(sub, sizeof sub, "%s/%s", dir, name);
        mkdir(sub, 0755);
        static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
        for (int f = 0; f < 2; f++) {
            snprintf(src, sizeof src, "%s/adapter-r16-%c/%s", work, 'a' + i % 8, files[f]);
            snprintf(dst, sizeof dst, "%s/%s", sub, files[f]);
            if (link(src, dst) && errno != EEXIST) {
                fprintf(stderr, "bench_load: link %s: %s\n", dst, strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

static void stop_daemons(const pid_t *pid)
{
    for (int d = 0; d < N_DAEMONS; d++)
        if (pid[d] > 0)
            kill(pid[d], SIGTERM);
    for (int d = 0; d < N_DAEMONS; d++)
        if (pid[d] > 0)
            waitpid(pid[d], NULL, 0);
}

/* 1 when name contains one of only's alternatives (separated by '|'). */
static int selected(const char *name, const char *only)
{
    for (const char *a = only;; a++) {
        const char *e = strchr(a, '|');
        size_t len = e ? (size_t)(e - a) : strlen(a);
        if (len && memmem(name, strlen(name), a, len))
            return 1;
        if (!e)
            return 0;
        a = e;
    }
}

/* The tables' rows in order, scenario by scenario (the alternating cases have lines of
 * their own; an ABBA case's repeat shares its first's row). */
static const int ROWS[] = {B1, A1,  M1,  AUTO1, B8, O8, D8,   X8,   Z32,  ZA32,
                           Z64, ZA64, B32, B64, O32, Z1000, SKEW};
#define N_ROWS ((int)(sizeof ROWS / sizeof *ROWS))

/* The case of row i, or -1 when --only leaves it out. */
static int table_row(int i, const char *only)
{
    int k = ROWS[i];
    return only && !selected(cases[k].name, only) ? -1 : k;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_load BUILD WORKDIR [--quick] [--tsv FILE]\n");
        return 2;
    }
    const char *build = argv[1], *work = argv[2], *tsv = NULL, *only = NULL;
    int quick = 0, reps = 0, max_tokens = 0, merged_unplaced = 0;
    double warmup = 0, window = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--tsv") == 0 && i + 1 < argc)
            tsv = argv[++i];
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
            warmup = atof(argv[++i]);
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            window = atof(argv[++i]);
        else if (strcmp(argv[i], "--max-tokens") == 0 && i + 1 < argc)
            max_tokens = atoi(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else if (strcmp(argv[i], "--merged-unplaced") == 0)
            merged_unplaced = 1;
    }
    if (!reps)
        reps = quick ? 1 : 5;
    if (!max_tokens)
        max_tokens = quick ? 32 : 48;
    if (!warmup)
        warmup = quick ? 2 : 3;
    if (!window)
        window = quick ? 4 : 6;
    if (reps < 1 || reps > MAX_REPS || max_tokens < 2 || warmup < 0 || window < 1) {
        fprintf(stderr, "bench_load: --reps 1..%d, --max-tokens >= 2, --window >= 1\n",
                MAX_REPS);
        return 2;
    }
    for (int k = 0; k < N_CASES; k++) {   /* every case with a row of its own has one */
        int rows = 0;
        for (int i = 0; i < N_ROWS; i++)
            rows += ROWS[i] == k;
        if (rows != (!cases[k].alternate && first_of(k) < 0)) {
            fprintf(stderr, "bench_load: case '%s' has %d rows in ROWS\n", cases[k].name, rows);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    char mdir[4096], d100[4096], d1000[4096];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(d100, sizeof d100, "%s/load-100", work);
    snprintf(d1000, sizeof d1000, "%s/load-1000", work);
    if (make_adapter_dir(work, d100, "a%03d", 100) || make_adapter_dir(work, d1000, "b%04d", 1000))
        return 1;
    double *cdf100 = zipf_cdf(100), *cdf1000 = zipf_cdf(1000);

    /* Every daemon: 64 running requests, a queue for the rest, the base named "base". */
    const char *common[] = {"--model", mdir, "--served-model-name", "base", "--max-seqs", "64",
                            "--max-queue", "256", "--max-tokens", "1024"};
    const char *extra[N_DAEMONS][10] = {
        [D_MAIN] = {"--adapter-dir", d100, "--max-loaded-adapters", "20", "--merge", "never"},
        [D_MERGED] = {"--adapter-dir", d100, "--max-loaded-adapters", "20", "--merge", "always",
                      merged_unplaced ? "--place-pages" : NULL, "no"},
        [D_AUTO] = {"--adapter-dir", d100, "--max-loaded-adapters", "20", "--merge", "auto"},
        [D_MANY] = {"--adapter-dir", d1000, "--max-loaded-adapters", "50", "--merge", "never"},
    };

    /* Every daemon the selected cases need is started once and kept for the whole run, so
     * a repetition measures every case within a few minutes of the others: the ratios
     * below are taken within one repetition, then their median over repetitions. */
    int sel[N_CASES], n_sel = 0, need[N_DAEMONS] = {0};
    for (int k = 0; k < N_CASES; k++)
        if (!only || selected(cases[k].name, only)) {
            sel[n_sel++] = k;
            measured[k] = 1;
            need[cases[k].daemon] = 1;
            need[D_MAIN] |= cases[k].alternate == 1;
        }
    pid_t pid[N_DAEMONS];
    int port[N_DAEMONS];
    const char *args[N_DAEMONS][32];
    for (int d = 0; d < N_DAEMONS; d++) {
        pid[d] = -1;
        int n = 0;
        for (size_t i = 0; i < sizeof common / sizeof *common; i++)
            args[d][n++] = common[i];
        for (int i = 0; extra[d][i]; i++)
            args[d][n++] = extra[d][i];
        args[d][n] = NULL;
    }
    for (int d = 0; d < N_DAEMONS; d++)
        if (need[d] && (pid[d] = bench_start_daemon(build, args[d], &port[d])) < 0) {
            stop_daemons(pid);
            return 1;
        }
    /* rotating order: each repetition starts one case (or ABBA group) further on */
    int starts[N_CASES], n_starts = 0;
    for (int kk = 0; kk < n_sel; kk++)
        if (starts_unit(kk ? sel[kk - 1] : -1, sel[kk]))
            starts[n_starts++] = kk;
    static result res[N_CASES][MAX_REPS];
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < n_sel; kk++) {
            int k = sel[(kk + starts[r % n_starts]) % n_sel];
            const bench_case *bc = &cases[k];
            int many = bc->daemon == D_MANY;
            /* scenario 3's auto windows draw the same requests as their never window */
            int sk = pair_other(AUTO_NEVER, N_AUTO_NEVER, 0, k);
            sk = sk < 0 ? k : sk;
            /* merged / base and --merge auto / base on one daemon: a fresh daemon each
             * repetition, so that the median is over as many placements of W and W' (see
             * the top) */
            int fresh = bc->alternate == 2 && bc->daemon == D_MERGED ? D_MERGED
                        : k == BA1ALT                               ? D_AUTO
                                                                    : -1;
            if (fresh >= 0) {
                kill(pid[fresh], SIGTERM);
                waitpid(pid[fresh], NULL, 0);
                if ((pid[fresh] = bench_start_daemon(build, args[fresh], &port[fresh])) < 0) {
                    stop_daemons(pid);
                    return 1;
                }
            }
            /* an alternating case's window is twice as long: it holds ~6 pairs */
            int base_port = port[bc->alternate == 2 ? bc->daemon : D_MAIN];
            if (run_case(bc, port[bc->daemon], base_port, many ? 1000 : 100,
                         many ? cdf1000 : cdf100, warmup,
                         bc->clients >= 32 || bc->alternate ? 2 * window : window,
                         max_tokens, (unsigned)(r * 131 + sk), &res[k][r])) {
                stop_daemons(pid);
                return 1;
            }
            fprintf(stderr, "bench_load: repetition %d/%d: %-34s %7.1f tok/s", r + 1, reps,
                    bc->name, res[k][r].tps);
            if (!isnan(res[k][r].merge_wait))
                fprintf(stderr, " (W' ready after %.1f s)", res[k][r].merge_wait);
            if (res[k][r].merges >= 0)
                fprintf(stderr, " (W' built meanwhile: %d)", res[k][r].merges);
            if (bc->alternate)
                fprintf(stderr, " (adapter / base %.3f, median of %d pairs)",
                        res[k][r].paired, res[k][r].pairs);
            fprintf(stderr, "\n");
            usleep(200000);  /* the aborted requests' cancellations settle */
        }
    stop_daemons(pid);

    /* medians over repetitions */
    result med[N_CASES];
    /* the one-client --merge auto cases that built their W' (it may still be there from the
     * case before): how long until it was ready */
    double built[2 * MAX_REPS];
    int n_built = 0, n_auto1 = 0;
    for (int k = 0; k < N_CASES; k++) {
        /* a case measured twice a repetition (AGAIN): tokens/s the median of the
         * repetitions' means, the latencies the median over both windows of every one */
        int k2 = repeat_of(k), nw = k2 < 0 || !measured[k2] ? reps : 2 * reps;
        double v[13][2 * MAX_REPS];
        for (int w = 0; w < nw; w++) {
            const result *x = &res[w < reps ? k : k2][w % reps];
            v[0][w] = w < reps ? rep_tps(res, k, w) : NAN;
            v[1][w] = x->ttft50;
            v[2][w] = x->ttft99;
            v[3][w] = x->tpot50;
            v[4][w] = x->tpot99;
            v[5][w] = x->tpot99_popular;
            v[6][w] = x->tpot99_others;
            v[7][w] = x->requests;
            v[8][w] = x->busy;
            v[9][w] = x->step_ms;
            v[10][w] = x->decode_per_step;
            v[11][w] = x->prefill_per_token;
            v[12][w] = x->huge;
        }
        med[k] = (result){bench_median(v[0], reps), bench_median(v[1], nw),
                          bench_median(v[2], nw), bench_median(v[3], nw),
                          bench_median(v[4], nw), (int)bench_median(v[7], nw),
                          bench_median(v[5], nw), bench_median(v[6], nw),
                          NAN, -1, NAN, 0,    /* merge waits: `built` below */
                          bench_median(v[8], nw), bench_median(v[9], nw),
                          bench_median(v[10], nw), bench_median(v[11], nw),
                          bench_median(v[12], nw)};
        if (k == AUTO1 || k == AUTO1ALT)
            for (int r = 0; r < reps; r++) {
                double w = res[k][r].merge_wait;
                n_auto1 += !isnan(w);
                if (w > 0.05)
                    built[n_built++] = w;
            }
        double pr[MAX_REPS];   /* the alternating cases: the median of the repetitions' */
        int np = 0;
        med[k].pairs = 0;
        for (int r = 0; r < reps; r++)
            if (res[k][r].pairs) {
                pr[np++] = res[k][r].paired;
                med[k].pairs += res[k][r].pairs;
            }
        med[k].paired = np ? bench_median(pr, np) : NAN;
    }
    printf("\nlorad serving benchmark: random SmolLM2-135M shape, F32, rank-16 adapters on all 7 "
           "projections; loopback HTTP streaming, %d-token prompts, %d output tokens per "
           "request, closed-loop clients; %.0f s warm-up + %.0f s window (%.0f s for 32 and 64 "
           "clients); medians of %d repetitions\n\n", PROMPT_LEN, max_tokens, warmup, window,
           2 * window, reps);
    printf("%-2s %-34s %10s %10s %10s %10s %10s %9s\n", "#", "case", "tok/s", "TTFT p50",
           "TTFT p99", "TPOT p50", "TPOT p99", "requests");
    FILE *tf = tsv ? fopen(tsv, "w") : NULL;
    if (tf)
        fprintf(tf, "scenario\tcase\tclients\ttok_s\tttft_p50_ms\tttft_p99_ms\ttpot_p50_ms\t"
                "tpot_p99_ms\n");
    for (int kk = 0; kk < N_ROWS; kk++) {
        int k = table_row(kk, only);
        if (k < 0)
            continue;
        printf("%-2d %-34s %10.1f %8.0f ms %8.0f ms %7.1f ms %7.1f ms %9d\n", cases[k].scenario,
               cases[k].name, med[k].tps, med[k].ttft50 * 1e3, med[k].ttft99 * 1e3,
               med[k].tpot50 * 1e3, med[k].tpot99 * 1e3, med[k].requests);
        if (tf)
            fprintf(tf, "%d\t%s\t%d\t%.2f\t%.2f\t%.2f\t%.3f\t%.3f\n", cases[k].scenario,
                    cases[k].name, cases[k].clients, med[k].tps, med[k].ttft50 * 1e3,
                    med[k].ttft99 * 1e3, med[k].tpot50 * 1e3, med[k].tpot99 * 1e3);
    }
    if (tf)
        fclose(tf);
    /* Where a case's tokens/s comes from: tokens/s = 1000 / step ms × busy × (decode rows a
     * step + the steps' first tokens) — the speed-up of many clients over one is the rows a
     * step ÷ how much longer a step takes, times the ratio of their busy fractions. */
    printf("\nthe engine in each window (lorad_engine_* counters of /metrics, medians): busy = "
           "the share of the window in steps; a step's mean time and decode rows; prompt rows "
           "prefilled per generated token; the share of the daemon's anonymous memory in huge "
           "pages as the window closed (lorad_memory_anon_huge_bytes / _anon_bytes)\n");
    printf("%-2s %-34s %8s %10s %12s %14s %11s\n", "#", "case", "busy", "ms/step",
           "decode/step", "prefill/token", "huge pages");
    for (int kk = 0; kk < N_ROWS; kk++) {
        int k = table_row(kk, only);
        if (k < 0)
            continue;
        printf("%-2d %-34s %7.0f%% %10.2f %12.2f %14.2f %10.0f%%\n", cases[k].scenario,
               cases[k].name, 100 * med[k].busy, med[k].step_ms, med[k].decode_per_step,
               med[k].prefill_per_token, 100 * med[k].huge);
    }
    int any_alt = 0;
    for (int k = 0; k < N_CASES; k++) {
        if ((only && !selected(cases[k].name, only)) || !cases[k].alternate)
            continue;
        if (!any_alt++)
            printf("\none client, every other request on the base (on the --merge never daemon, "
                   "or with 'one daemon' on the case's own): tokens/s of a request on the case's "
                   "side / of the one next to it on the base, the median over such pairs, then "
                   "over repetitions\n");
        printf("%-2d %-46s %6.3f %6d pairs\n", cases[k].scenario, cases[k].name,
               med[k].paired, med[k].pairs);
    }

    if (only) {   /* a subset: no targets */
        free(cdf100);
        free(cdf1000);
        curl_global_cleanup();
        return 0;
    }
    /* The issue's targets: each ratio is taken within a repetition (its two cases measured
     * minutes apart at most), and the median of those ratios is printed. */
    double limit = 538.0 / (538.0 + 8 * 19.5);  /* reading the base once + 8 adapters */
    printf("\ntargets (each the median over repetitions of the ratio within a repetition):\n");
    double aa1, lo1, hi1, aa8, lo8, hi8, aad, lod, hid, aa64, lo64, hi64, rlo, rhi;
    aa_spread(res, reps, B1, &aa1, &lo1, &hi1);
    aa_spread(res, reps, B8, &aa8, &lo8, &hi8);
    aa_spread(res, reps, D8, &aad, &lod, &hid);
    aa_spread(res, reps, B64, &aa64, &lo64, &hi64);
    printf("  (1 client, 8 on the base, 8 on 8 adapters and 64 on the base run nested ABBA, "
           "1-8-8x8-64-64-8x8-8-1; A/A = a case's second window / its first, median and "
           "range over repetitions)\n");
    double d8_b8 = rep_ratio(res, reps, D8, B8);
    rep_range(res, reps, D8, B8, &rlo, &rhi);
    printf("  8 clients x 8 adapters / 8 on the base     %.2f (target >= 0.70; the bandwidth "
           "limit is %.2f: %.0f%% of it; %.2f-%.2f over repetitions; A/A 8 x 8 %.2f, "
           "%.2f-%.2f)\n", d8_b8, limit, 100 * d8_b8 / limit, rlo, rhi, aad, lod, hid);
    rep_range(res, reps, B8, B1, &rlo, &rhi);
    printf("  8 clients on the base / 1 client           %.2f (target >= 5.5; %.2f-%.2f over "
           "repetitions; A/A 1 client %.2f, %.2f-%.2f; 8 clients %.2f, %.2f-%.2f)\n",
           rep_ratio(res, reps, B8, B1), rlo, rhi, aa1, lo1, hi1, aa8, lo8, hi8);
    printf("  8 clients x 8 adapters / 1 client, base    %.2f (target >= 4)\n",
           rep_ratio(res, reps, D8, B1));
    rep_range(res, reps, B64, B1, &rlo, &rhi);
    printf("  64 clients on the base / 1 client          %.2f (target >= 8; %.2f-%.2f over "
           "repetitions; A/A 64 clients %.2f, %.2f-%.2f)\n", rep_ratio(res, reps, B64, B1),
           rlo, rhi, aa64, lo64, hi64);
    printf("  8 clients on the base vs llama.cpp server  %.2f (target >= 1.3; llama.cpp's "
           "142.6 tok/s is the figure from the issue, not measured here)\n",
           med[B8].tps / 142.6);
    double m_lo = NAN, m_hi = NAN;
    if (measured[M1ALT1]) {
        double m[MAX_REPS];
        for (int r = 0; r < reps; r++)
            m[r] = res[M1ALT1][r].paired;
        bench_range(m, reps, &m_lo, &m_hi);
    }
    printf("  1 client merged / 1 client base            %.3f (target 1 +- 0.03; alternating "
           "requests on a fresh --merge always daemon each repetition, its own W and W': "
           "%.3f-%.3f over repetitions; the base on the --merge never daemon instead: %.3f, "
           "and that daemon's difference, the base on the merged daemon / the base there: "
           "%.3f; the base / itself %.3f; the two cases apart: %.3f)\n", med[M1ALT1].paired,
           m_lo, m_hi, med[M1ALT].paired, med[BM1ALT].paired, med[BB1ALT].paired,
           rep_ratio(res, reps, M1, B1));
    double longest = 0;
    for (int i = 0; i < n_built; i++)
        longest = fmax(longest, built[i]);
    /* the auto daemon's W' over its own W: each alternated with the base on D_MAIN, one
     * after the other on a fresh --merge auto daemon, in each repetition */
    double au[MAX_REPS], au_lo = NAN, au_hi = NAN;
    for (int r = 0; r < reps; r++)
        au[r] = res[AUTO1ALT][r].paired / res[BA1ALT][r].paired;
    bench_range(au, reps, &au_lo, &au_hi);
    printf("  1 client, --merge auto / 1 client base     %.3f (target 1 +- 0.03; on a fresh "
           "--merge auto daemon each repetition, its W' once merged over its own W, each "
           "alternating with the base on the --merge never daemon: %.3f-%.3f over "
           "repetitions; the W' over that base alone: %.3f, and the daemons' difference, the "
           "auto daemon's W / that base: %.3f; the two cases apart: %.3f; the W' was built in "
           "%d of the %d one-client auto cases, in the others still there from the case "
           "before; ready %.1f s after the client started, median, longest %.1f s)\n",
           bench_median(au, reps), au_lo, au_hi, med[AUTO1ALT].paired, med[BA1ALT].paired,
           rep_ratio(res, reps, AUTO1, B1), n_built, n_auto1,
           n_built ? bench_median(built, n_built) : NAN, longest);
    int merges3 = 0, counted3 = 0;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < N_AUTO_NEVER; i++)
            if (res[AUTO_NEVER[i][0]][r].merges >= 0) {
                merges3 += res[AUTO_NEVER[i][0]][r].merges;
                counted3++;
            }
    /* auto / never in each repetition, beside A/A: the second window of a case over its
     * first in the same repetition; the median and range of each over repetitions */
    double ab[2][MAX_REPS], aa[2][2 * MAX_REPS];
    for (int c = 0; c < 2; c++) {
        int z = c ? Z64 : Z32, za = c ? ZA64 : ZA32;
        rep_ratios(res, reps, za, z, ab[c]);
        for (int r = 0; r < reps; r++) {
            aa[c][2 * r] = res[repeat_of(z)][r].tps / res[z][r].tps;
            aa[c][2 * r + 1] = res[repeat_of(za)][r].tps / res[za][r].tps;
        }
    }
    printf("  scenario 3, auto / never                   (target >= 1; each side two windows a "
           "repetition, never-auto-auto-never; W' built during the %d auto windows counted: "
           "%d)\n", counted3, merges3);
    for (int c = 0; c < 2; c++) {
        double lo, hi, aa_lo, aa_hi;
        bench_range(ab[c], reps, &lo, &hi);
        bench_range(aa[c], 2 * reps, &aa_lo, &aa_hi);
        printf("    %d clients                               %.2f (%.2f-%.2f over repetitions; "
               "A/A, the same case's second window / its first: %.2f, %.2f-%.2f)\n",
               c ? 64 : 32, bench_median(ab[c], reps), lo, hi, bench_median(aa[c], 2 * reps),
               aa_lo, aa_hi);
    }
    double skew[MAX_REPS], tail[MAX_REPS];
    for (int r = 0; r < reps; r++) {
        const result *x = res[SKEW] + r;
        skew[r] = x->tpot99_others / x->tpot99_popular;
        tail[r] = 0;
        for (int k = 0; k < N_CASES; k++)
            if (cases[k].scenario == 2)
                tail[r] = fmax(tail[r], res[k][r].tpot99 / res[k][r].tpot50);
    }
    printf("  skewed 90%%: others' TPOT p99 / popular's   %.2f (target <= 1.5)\n",
           bench_median(skew, reps));
    printf("  32 clients x 1000 adapters / 32 on one     %.2f (target >= 0.7)\n",
           rep_ratio(res, reps, Z1000, O32));
    printf("  scenario 2 TPOT p99 / p50 (worst case)     %.2f (target <= 2)\n",
           bench_median(tail, reps));
    free(cdf100);
    free(cdf1000);
    curl_global_cleanup();
    return 0;
}
