/* metrics: the daemon's counters and histograms, rendered in the Prometheus text format
 * (version 0.0.4) for GET /metrics. Gauges that other modules own (queue depth, KV
 * memory, loaded adapters) are passed in at render time rather than mirrored here.
 *
 * Threads: every function is thread-safe (one mutex; each call does O(buckets) work). */
#ifndef LORAD_METRICS_H
#define LORAD_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct metrics metrics;

typedef enum {
    METRICS_TTFT,        /* seconds from request arrival to its first token */
    METRICS_TPOT,        /* seconds between two consecutive output tokens */
    METRICS_LATENCY,     /* seconds from arrival to the last byte of the response */
    METRICS_LOAD,        /* seconds to load (and merge) one adapter */
    METRICS_N_HISTOGRAMS
} metrics_histogram;

/* Values owned elsewhere, sampled when /metrics is read. */
typedef struct {
    int running;
    int waiting;
    size_t kv_bytes;
    size_t kv_limit;
    int kv_blocks_used;
    int kv_blocks_free;
    int kv_blocks_total;
    uint64_t preemptions;
    int adapters_loaded;
    uint64_t adapter_loads;
    uint64_t adapter_evictions;
    int adapters_merged;          /* adapters with a merged W' serving new requests */
    uint64_t merges_built, merges_dropped;   /* by --merge auto */
    uint64_t cancelled;
    uint64_t steps;
    uint64_t decode_rows, prefill_rows;   /* engine_stats' */
    double step_seconds;
} metrics_gauges;

/* NULL when out of memory. Freed with metrics_free (accepts NULL). */
metrics *metrics_create(void);
void metrics_free(metrics *m);

void metrics_observe(metrics *m, metrics_histogram h, double value);

/* One HTTP response with this status. */
void metrics_http(metrics *m, int status);

/* One finished generation request on `adapter` ("" or the base id for the base; a mix is
 * counted once per member). */
void metrics_request(metrics *m, const char *adapter, uint64_t prompt_tokens,
                     uint64_t output_tokens);

/* An adapter load that failed validation. */
void metrics_load_failed(metrics *m);

/* The whole exposition; malloc'd, NUL-terminated, caller frees. NULL when out of
 * memory. */
char *metrics_render(metrics *m, const metrics_gauges *g, size_t *len);

#endif
