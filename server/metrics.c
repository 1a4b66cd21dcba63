/* metrics: fixed-bucket histograms, per-adapter and per-status counters, and the text
 * exposition. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_BUCKETS 14
#define MAX_ADAPTER_NAME 128

typedef struct {
    const char *name;
    const char *help;
    double le[N_BUCKETS];        /* upper bounds; +Inf is implicit */
    uint64_t count[N_BUCKETS];   /* per bucket (not cumulative) */
    uint64_t inf;                /* above the last bound */
    double sum;
} histogram;

typedef struct adapter_counts {
    char name[MAX_ADAPTER_NAME];
    uint64_t requests, prompt_tokens, output_tokens;
    struct adapter_counts *next;
} adapter_counts;

typedef struct status_count {
    int status;
    uint64_t n;
    struct status_count *next;
} status_count;

struct metrics {
    pthread_mutex_t lock;
    histogram h[METRICS_N_HISTOGRAMS];
    adapter_counts *adapters;
    status_count *statuses;
    uint64_t load_failures;
};

static const histogram templates[METRICS_N_HISTOGRAMS] = {
    [METRICS_TTFT] = {"lorad_time_to_first_token_seconds",
                      "Time from request arrival to its first generated token.",
                      {0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
                       10.24, 20.48, 40.96}},
    [METRICS_TPOT] = {"lorad_time_per_output_token_seconds",
                      "Time between consecutive generated tokens of a request.",
                      {0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16,
                       0.24, 0.5, 1.0}},
    [METRICS_LATENCY] = {"lorad_request_duration_seconds",
                         "Time from request arrival to the end of its response.",
                         {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250}},
    [METRICS_LOAD] = {"lorad_adapter_load_seconds",
                      "Time to load, validate (and merge) one adapter.",
                      {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                       10, 30}},
};

metrics *metrics_create(void)
{
    metrics *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    memcpy(m->h, templates, sizeof m->h);
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    while (m->adapters) {
        adapter_counts *a = m->adapters;
        m->adapters = a->next;
        free(a);
    }
    while (m->statuses) {
        status_count *s = m->statuses;
        m->statuses = s->next;
        free(s);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_observe(metrics *m, metrics_histogram which, double v)
{
    if (which < 0 || which >= METRICS_N_HISTOGRAMS)
        return;
    pthread_mutex_lock(&m->lock);
    histogram *h = &m->h[which];
    int b = 0;
    while (b < N_BUCKETS && v > h->le[b])
        b++;
    if (b < N_BUCKETS)
        h->count[b]++;
    else
        h->inf++;
    h->sum += v;
    pthread_mutex_unlock(&m->lock);
}

void metrics_http(metrics *m, int status)
{
    pthread_mutex_lock(&m->lock);
    status_count *s = m->statuses;
    while (s && s->status != status)
        s = s->next;
    if (!s && (s = calloc(1, sizeof *s))) {
        s->status = status;
        s->next = m->statuses;
        m->statuses = s;
    }
    if (s)
        s->n++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_request(metrics *m, const char *adapter, uint64_t prompt_tokens,
                     uint64_t output_tokens)
{
    pthread_mutex_lock(&m->lock);
    adapter_counts *a = m->adapters;
    while (a && strcmp(a->name, adapter) != 0)
        a = a->next;
    if (!a && (a = calloc(1, sizeof *a))) {
        snprintf(a->name, sizeof a->name, "%s", adapter);
        a->next = m->adapters;
        m->adapters = a;
    }
    if (a) {
        a->requests++;
        a->prompt_tokens += prompt_tokens;
        a->output_tokens += output_tokens;
    }
    pthread_mutex_unlock(&m->lock);
}

void metrics_load_failed(metrics *m)
{
    pthread_mutex_lock(&m->lock);
    m->load_failures++;
    pthread_mutex_unlock(&m->lock);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *t = realloc(b->buf, cap);
        if (!t) {
            b->oom = 1;
            return;
        }
        b->buf = t;
        b->cap = cap;
    }
}

/* Adapter names are [A-Za-z0-9._-] (registry_name_valid) or the base id, which may hold
 * anything: escape what the exposition format requires in a label value. */
static void put_label(sbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            put(b, "\\%c", *s);
        else if (*s == '\n')
            put(b, "\\n");
        else
            put(b, "%c", *s);
    }
}

static void put_gauge(sbuf *b, const char *name, const char *help, double v)
{
    put(b, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

static void put_counter(sbuf *b, const char *name, const char *help, double v)
{
    put(b, "# HELP %s %s\n# TYPE %s counter\n%s %.17g\n", name, help, name, name, v);
}

/* The process's resident anonymous memory and the part of it in transparent huge pages
 * (Anonymous and AnonHugePages of /proc/self/smaps_rollup, in bytes): the weights, a merged
 * W', the adapters and the KV cache are all anonymous memory asking for huge pages
 * (hugemem.h), and a step streaming them from 4 KB pages runs 5-10% slower; -1 each where
 * the file cannot be read (not Linux 4.14+). The kernel walks the process's page tables
 * for it: 0.1-0.2 ms for a daemon of 550 MB on huge pages, longer on 4 KB pages. */
static void memory_pages(double *anon, double *huge)
{
    *anon = *huge = -1;
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f)
        return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "Anonymous: %llu kB", &kb) == 1)
            *anon = (double)kb * 1024;
        else if (sscanf(line, "AnonHugePages: %llu kB", &kb) == 1)
            *huge = (double)kb * 1024;
    }
    fclose(f);
}

char *metrics_render(metrics *m, const metrics_gauges *g, size_t *len)
{
    sbuf b = {malloc(4096), 0, 4096, 0};
    if (!b.buf)
        return NULL;
    put_gauge(&b, "lorad_running_sequences", "Sequences being generated now.", g->running);
    put_gauge(&b, "lorad_queue_depth", "Accepted requests waiting for a sequence slot.",
              g->waiting);
    put_gauge(&b, "lorad_kv_cache_bytes", "KV cache memory held by running sequences.",
              (double)g->kv_bytes);
    put_gauge(&b, "lorad_kv_cache_limit_bytes",
              "KV cache pool size (--kv-cache-mb, or room for --max-seqs full contexts).",
              (double)g->kv_limit);
    put_gauge(&b, "lorad_kv_cache_blocks_used", "KV cache blocks held by running sequences.",
              g->kv_blocks_used);
    put_gauge(&b, "lorad_kv_cache_blocks_free", "KV cache blocks free in the pool.",
              g->kv_blocks_free);
    put_gauge(&b, "lorad_kv_cache_blocks_total", "KV cache blocks in the pool.",
              g->kv_blocks_total);
    put_counter(&b, "lorad_preemptions_total",
                "Running sequences preempted for want of KV blocks (recomputed later).",
                (double)g->preemptions);
    put_gauge(&b, "lorad_adapters_loaded", "Adapters loaded in memory now.",
              g->adapters_loaded);
    put_counter(&b, "lorad_adapter_loads_total", "Adapter load attempts.",
                (double)g->adapter_loads);
    put_counter(&b, "lorad_adapter_evictions_total",
                "Adapters unloaded to stay within --max-loaded-adapters.",
                (double)g->adapter_evictions);
    put_gauge(&b, "lorad_adapters_merged", "Adapters with a merged W' serving new requests.",
              g->adapters_merged);
    put_counter(&b, "lorad_adapter_merges_total", "Merged W' built by --merge auto.",
                (double)g->merges_built);
    put_counter(&b, "lorad_adapter_merge_drops_total",
                "Merged W' dropped by --merge auto (its adapter's share of tokens fell).",
                (double)g->merges_dropped);
    put_counter(&b, "lorad_requests_cancelled_total",
                "Requests cancelled (client gone, or shutdown).", (double)g->cancelled);
    put_counter(&b, "lorad_engine_steps_total", "Engine steps run.", (double)g->steps);
    put_counter(&b, "lorad_engine_step_seconds_total",
                "Wall time of the engine steps that ran rows (the model, drawing tokens).",
                g->step_seconds);
    put_counter(&b, "lorad_engine_decode_rows_total",
                "Rows the engine steps decoded: one per sequence and step.",
                (double)g->decode_rows);
    put_counter(&b, "lorad_engine_prefill_rows_total",
                "Rows of prompt, and of recomputation after a preemption, the steps ran.",
                (double)g->prefill_rows);

    double anon, huge;
    memory_pages(&anon, &huge);
    if (anon >= 0 && huge >= 0) {
        put_gauge(&b, "lorad_memory_anon_bytes",
                  "Resident anonymous memory: weights, merged W', adapters, KV cache, heap.",
                  anon);
        put_gauge(&b, "lorad_memory_anon_huge_bytes",
                  "The part of lorad_memory_anon_bytes in transparent huge pages.", huge);
    }

    pthread_mutex_lock(&m->lock);
    put_counter(&b, "lorad_adapter_load_failures_total", "Adapter loads refused (invalid).",
                (double)m->load_failures);
    static const char *const per[3][2] = {
        {"lorad_requests_total", "Finished generation requests, by adapter."},
        {"lorad_prompt_tokens_total", "Prompt tokens of finished requests, by adapter."},
        {"lorad_generated_tokens_total", "Generated tokens, by adapter."}};
    for (int k = 0; k < 3; k++) {
        put(&b, "# HELP %s %s\n# TYPE %s counter\n", per[k][0], per[k][1], per[k][0]);
        for (adapter_counts *a = m->adapters; a; a = a->next) {
            uint64_t v = k == 0 ? a->requests : k == 1 ? a->prompt_tokens : a->output_tokens;
            put(&b, "%s{adapter=\"", per[k][0]);
            put_label(&b, a->name);
            put(&b, "\"} %llu\n", (unsigned long long)v);
        }
    }
    put(&b, "# HELP lorad_http_responses_total HTTP responses, by status.\n"
            "# TYPE lorad_http_responses_total counter\n");
    for (status_count *s = m->statuses; s; s = s->next)
        put(&b, "lorad_http_responses_total{code=\"%d\"} %llu\n", s->status,
            (unsigned long long)s->n);
    for (int i = 0; i < METRICS_N_HISTOGRAMS; i++) {
        const histogram *h = &m->h[i];
        put(&b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
        uint64_t cum = 0;
        for (int k = 0; k < N_BUCKETS; k++) {
            cum += h->count[k];
            put(&b, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->le[k], (unsigned long long)cum);
        }
        cum += h->inf;
        put(&b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", h->name,
            (unsigned long long)cum, h->name, h->sum, h->name, (unsigned long long)cum);
    }
    pthread_mutex_unlock(&m->lock);
    if (b.oom) {
        free(b.buf);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.buf;
}
