/* bench_serve: what HTTP costs. One client streams completions from `lorad serve` (on
 * loopback, libcurl) on the base model and on one adapter applied on the fly, and the same
 * requests run through the engine in this process, exactly as `lorad generate` runs them
 * (one engine, one request). Cases are interleaved, rotating their order, so the
 * machine's noise hits them alike; medians over the repetitions, and paired ratios (the
 * median over repetitions of each repetition's HTTP / in-process ratio).
 *
 * Time per output token (TPOT) = (last token's arrival - first token's) / (tokens - 1),
 * over HTTP from the SSE chunks' arrival times (each chunk's tokens counted from its
 * logprobs). Time to first token (TTFT) over HTTP = from sending the request to the first
 * token's arrival; in process = from engine_submit to the first on_token.
 *
 * Then the admin API: an upload of a rank-16 adapter, and the first token of a request on
 * it, while 8 other clients stream — and how much those streams slow down meanwhile.
 *
 * Usage: bench_serve BUILD WORKDIR [--quick]; WORKDIR holds the model and adapters that
 * `bench_engine WORKDIR --prepare` writes. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "bench/benchutil.h"

#define PROMPT_LEN 16
#define MAX_TOKENS 128
#define MAX_REPS 32

#define now bench_now
#define median bench_median

/* Median over repetitions of a[r] / b[r]. */
static double paired(const double *a, const double *b, int n)
{
    double q[MAX_REPS];
    for (int r = 0; r < n; r++)
        q[r] = a[r] / b[r];
    return median(q, n);
}

/* ---- one streamed request's timings ---- */

typedef struct {
    double t0, t_first, t_last;
    int n;              /* tokens seen */
    bench_sse sse;      /* the SSE event being read */
    int done;
} timing;

static size_t on_data(char *data, size_t size, size_t nmemb, void *user)
{
    timing *t = user;
    size_t n = size * nmemb;
    double x = now();
    size_t i = 0;
    for (const char *ev; (ev = bench_sse_event(&t->sse, data, n, &i));) {
        if (strncmp(ev, "data: [DONE]", 12) == 0)
            t->done = 1;
        int k = bench_sse_tokens(ev);
        if (k > 0) {
            if (t->n == 0)
                t->t_first = x;
            t->t_last = x;
            t->n += k;
        }
    }
    return n;
}

static int http_run(CURL *c, int port, const char *name, double *ttft, double *tpot)
{
    char url[64], body[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", port);
    int k = snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":[", name);
    for (int i = 0; i < PROMPT_LEN; i++)
        k += snprintf(body + k, sizeof body - (size_t)k, "%s%d", i ? "," : "", 100 + 37 * i);
    snprintf(body + k, sizeof body - (size_t)k, "],\"max_tokens\":%d,\"temperature\":0,"
             "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0,"
             "\"return_tokens_as_token_ids\":true}", MAX_TOKENS);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    timing t = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    t.t0 = now();
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK || status != 200 || !t.done || t.n != MAX_TOKENS) {
        fprintf(stderr, "bench_serve: %s: %s, status %ld, %d tokens\n", name,
                curl_easy_strerror(rc), status, t.n);
        return -1;
    }
    *ttft = t.t_first - t.t0;
    *tpot = (t.t_last - t.t_first) / (t.n - 1);
    return 0;
}

static size_t discard(char *data, size_t size, size_t nmemb, void *user)
{
    (void)data;
    (void)user;
    return size * nmemb;
}

/* ---- the same request in process ---- */

static int engine_run_one(engine *e, const variant_mix *lora, double *ttft, double *tpot)
{
    int prompt[PROMPT_LEN];
    for (int i = 0; i < PROMPT_LEN; i++)
        prompt[i] = 100 + 37 * i;
    bench_timing t;
    double t0;
    if (bench_run_request(e, prompt, PROMPT_LEN, MAX_TOKENS, NULL, lora, &t, &t0) ||
        t.n != MAX_TOKENS)
        return -1;
    *ttft = t.t_first - t0;
    *tpot = (t.t_last - t.t_first) / (t.n - 1);
    return 0;
}

/* ---- the daemon ---- */



/* ---- upload while others stream ---- */

#define N_STREAMERS 8
#define MAX_TIMES 65536

typedef struct {
    int port, index;
    volatile int stop;
    int failed;
    double *times;          /* [MAX_TIMES] arrival time of every token */
    int n;
    bench_sse sse;
    pthread_t th;
} streamer;

static size_t on_stream_data(char *data, size_t size, size_t nmemb, void *user)
{
    streamer *s = user;
    size_t n = size * nmemb;
    double x = now();
    size_t i = 0;
    for (const char *ev; (ev = bench_sse_event(&s->sse, data, n, &i));)
        for (int k = bench_sse_tokens(ev); k > 0 && s->n < MAX_TIMES; k--)
            s->times[s->n++] = x;
    return n;
}

/* Streams 300-token completions on the base, one after another, until told to stop. */
static void *streamer_main(void *arg)
{
    streamer *s = arg;
    CURL *c = curl_easy_init();
    char url[64], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", s->port);
    snprintf(body, sizeof body, "{\"prompt\":[%d,7,9],\"max_tokens\":300,\"temperature\":0,"
             "\"ignore_eos\":true,\"stream\":true,\"logprobs\":0,"
             "\"return_tokens_as_token_ids\":true}", 100 + 7 * s->index);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    while (!s->stop && c) {
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stream_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
        s->sse.len = 0;
        if (curl_easy_perform(c) != CURLE_OK)
            s->failed = 1;
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return NULL;
}

/* Median gap between consecutive tokens of any streamer, both inside [t0, t1). */
static double median_gap(streamer *ss, double t0, double t1)
{
    static double gaps[N_STREAMERS * MAX_TIMES / 8];
    int n = 0;
    for (int k = 0; k < N_STREAMERS; k++)
        for (int i = 1; i < ss[k].n && n < (int)(sizeof gaps / sizeof *gaps); i++)
            if (ss[k].times[i - 1] >= t0 && ss[k].times[i] < t1 &&
                ss[k].times[i] > ss[k].times[i - 1])
                gaps[n++] = ss[k].times[i] - ss[k].times[i - 1];
    if (n == 0)
        return 0;
    return median(gaps, n);
}

/* PUT /v1/adapters/NAME with the two files of dir; returns the HTTP status. */
static long upload(CURL *c, int port, const char *name, const char *dir)
{
    char url[128], cfg[4200], wts[4200];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters/%s", port, name);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    snprintf(wts, sizeof wts, "%s/adapter_model.safetensors", dir);
    curl_mime *mime = curl_mime_init(c);
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_name(part, "config");
    curl_mime_filedata(part, cfg);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "weights");
    curl_mime_filedata(part, wts);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_mime_free(mime);
    return status;
}

/* One token on `name` (a one-token prompt: the first token of a request is then one
 * decode-sized step, not a prefill); returns the HTTP status. */
static long first_token(CURL *c, int port, const char *name)
{
    char url[64], body[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/completions", port);
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":[42],\"max_tokens\":1}", name);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    return status;
}

static void delete_adapter(CURL *c, int port, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters/%s", port, name);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_perform(c);
}

/* Upload of a rank-16 all-projection adapter -> first token of a request on it, while 8
 * clients stream; their token gaps during that time vs the same length just before. */
static int bench_upload(int port, const char *adapter_dir, int reps)
{
    streamer ss[N_STREAMERS];
    memset(ss, 0, sizeof ss);
    for (int k = 0; k < N_STREAMERS; k++) {
        ss[k].port = port;
        ss[k].index = k;
        ss[k].times = malloc(sizeof(double) * MAX_TIMES);
        if (!ss[k].times || pthread_create(&ss[k].th, NULL, streamer_main, &ss[k]))
            return -1;
    }
    CURL *c = curl_easy_init();
    double ms[MAX_REPS], ratio[MAX_REPS];
    int rc = 0;
    usleep(1500000);   /* all 8 streaming */
    for (int r = 0; r < reps && !rc; r++) {
        char name[32];
        snprintf(name, sizeof name, "upload-%d", r);
        delete_adapter(c, port, name);
        usleep(700000);
        double t0 = now();
        long st = upload(c, port, name, adapter_dir);
        long st2 = st == 201 ? first_token(c, port, name) : 0;
        double t1 = now();
        if (st != 201 || st2 != 200) {
            fprintf(stderr, "bench_serve: upload %ld, request %ld\n", st, st2);
            rc = -1;
            break;
        }
        double w = t1 - t0 > 0.3 ? t1 - t0 : 0.3;
        double during = median_gap(ss, t0, t0 + w), before = median_gap(ss, t0 - w, t0);
        ms[r] = (t1 - t0) * 1e3;
        ratio[r] = before > 0 ? during / before : 0;
        delete_adapter(c, port, name);
    }
    for (int k = 0; k < N_STREAMERS; k++)
        ss[k].stop = 1;
    for (int k = 0; k < N_STREAMERS; k++) {
        pthread_join(ss[k].th, NULL);
        rc |= -ss[k].failed;
        free(ss[k].times);
    }
    curl_easy_cleanup(c);
    if (rc)
        return rc;
    struct stat st;
    char wts[4200];
    snprintf(wts, sizeof wts, "%s/adapter_model.safetensors", adapter_dir);
    double mb = stat(wts, &st) == 0 ? st.st_size / 1e6 : 0;
    printf("\nupload of a rank-16 adapter on all 7 projections (%.1f MB) -> first token of a "
           "request on it, while %d clients stream (median of %d): %.1f ms; the streams' "
           "median gap between tokens meanwhile: %.1f%% of the same span just before\n",
           mb, N_STREAMERS, reps, median(ms, reps), 100.0 * median(ratio, reps));
    return 0;
}

enum { ENG_BASE, HTTP_BASE, ENG_AD, HTTP_AD, N_CASES };

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    if (argc < 3) {
        fprintf(stderr, "usage: bench_serve BUILD WORKDIR [--quick]\n");
        return 2;
    }
    const char *build = argv[1], *work = argv[2];
    int reps = argc > 3 && strcmp(argv[3], "--quick") == 0 ? 2 : 11;
    char mdir[4200], adir[4200], bdir[4200], sdir[4200], link[4300];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(adir, sizeof adir, "%s/adapter-r16-a", work);
    snprintf(bdir, sizeof bdir, "%s/adapter-r16-b", work);
    /* the daemon's adapter directory: adapter-r16-a, and room for uploads */
    snprintf(sdir, sizeof sdir, "%s/serve-adapters", work);
    snprintf(link, sizeof link, "%s/adapter-r16-a", sdir);
    mkdir(sdir, 0755);
    if (symlink("../adapter-r16-a", link) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench_serve: %s: %s\n", link, strerror(errno));
        return 1;
    }

    lr_error err = {0};
    model *m = model_load(mdir, &err);
    peft_adapter *ad = m ? peft_load(adir, &m->cfg, NULL, &err) : NULL;
    engine_options eo = engine_options_default();
    eo.max_seqs = 1;
    engine *e = ad ? engine_create(m, &eo, &err) : NULL;
    if (!e) {
        fprintf(stderr, "bench_serve: %s (run bench_engine %s --prepare first)\n", err.msg,
                work);
        return 1;
    }
    variant_mix one = {.n = 1, .t = {{ad->w, 1.0f}}};
    int port;
    const char *args[] = {"--model", mdir, "--adapter-dir", sdir, "--max-tokens", "1024", NULL};
    pid_t daemon = bench_start_daemon(build, args, &port);
    if (daemon < 0)
        return 1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *c = curl_easy_init();

    double ttft[N_CASES][MAX_REPS], tpot[N_CASES][MAX_REPS], x, y;
    /* warm-up: load the adapter in the daemon, fault in both copies of the weights */
    if (http_run(c, port, "adapter-r16-a", &x, &y) || engine_run_one(e, &one, &x, &y))
        goto fail;
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < N_CASES; k++) {
            int cs = (k + r) % N_CASES;
            int rc = cs == ENG_BASE  ? engine_run_one(e, NULL, &ttft[cs][r], &tpot[cs][r])
                     : cs == ENG_AD  ? engine_run_one(e, &one, &ttft[cs][r], &tpot[cs][r])
                     : http_run(c, port, cs == HTTP_BASE ? "smollm2-135m-random"
                                                         : "adapter-r16-a",
                                &ttft[cs][r], &tpot[cs][r]);
            if (rc)
                goto fail;
        }

    printf("bench_serve: SmolLM2-135M-shaped F32 model, %d-token prompt, %d tokens, greedy, "
           "one client streaming over loopback; %d interleaved repetitions, medians\n\n",
           PROMPT_LEN, MAX_TOKENS, reps);
    printf("%-28s %10s %10s %12s %12s\n", "case", "TTFT ms", "TPOT ms", "TPOT vs", "(paired)");
    static const char *const names[N_CASES] = {"base, in process", "base, HTTP",
                                               "1 adapter, in process", "1 adapter, HTTP"};
    for (int k = 0; k < N_CASES; k++) {
        int ref = k == HTTP_BASE ? ENG_BASE : k == HTTP_AD ? ENG_AD : k;
        printf("%-28s %10.2f %10.3f %11.1f%% %11.1f%%\n", names[k], median(ttft[k], reps) * 1e3,
               median(tpot[k], reps) * 1e3,
               100.0 * median(tpot[k], reps) / median(tpot[ref], reps),
               100.0 * paired(tpot[k], tpot[ref], reps));
    }
    for (int k = HTTP_BASE; k <= HTTP_AD; k += 2) {
        int ref = k - 1;
        double extra[MAX_REPS];
        for (int r = 0; r < reps; r++)
            extra[r] = ttft[k][r] - ttft[ref][r];
        printf("\n%s: HTTP adds %+.1f%% to time per output token (paired %+.1f%%); time to "
               "first token %.2f ms over HTTP, %+.2f ms vs in process (paired), = %.2f "
               "in-process decode steps (paired %.2f); in process the prefill alone is %.2f "
               "steps",
               k == HTTP_BASE ? "base" : "adapter",
               100.0 * (median(tpot[k], reps) / median(tpot[ref], reps) - 1),
               100.0 * (paired(tpot[k], tpot[ref], reps) - 1), median(ttft[k], reps) * 1e3,
               median(extra, reps) * 1e3, median(ttft[k], reps) / median(tpot[ref], reps),
               paired(ttft[k], tpot[ref], reps), paired(ttft[ref], tpot[ref], reps));
    }
    printf("\n");
    curl_easy_cleanup(c);
    if (bench_upload(port, bdir, reps < 5 ? reps : 5))
        goto fail;
    kill(daemon, SIGTERM);
    waitpid(daemon, NULL, 0);
    engine_destroy(e);
    peft_free(ad);
    model_free(m);
    return 0;
fail:
    kill(daemon, SIGKILL);
    waitpid(daemon, NULL, 0);
    return 1;
}
