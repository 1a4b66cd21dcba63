/* benchutil: what the benchmarks share — a monotonic clock, medians, and engine request
 * callbacks that record when tokens arrive. */
#ifndef LORAD_BENCHUTIL_H
#define LORAD_BENCHUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "core/engine.h"

/* CLOCK_MONOTONIC in seconds. */
double bench_now(void);

/* Median of v[0..n) (n >= 1); v is left as it was. */
double bench_median(const double *v, int n);
/* qsort's comparison of two doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);
/* The smallest and largest of v[0..n), n >= 1. */
void bench_range(const double *v, int n, double *lo, double *hi);

/* Token arrival times of one engine request. */
typedef struct {
    double t_first;   /* the first token (end of prefill) */
    double t_last;
    int n;
} bench_timing;

/* Points req's callbacks at t (zeroed); generation errors are reported on stderr. */
void bench_timing_attach(engine_request *req, bench_timing *t);

/* Runs one greedy request (EOS ignored) on e, stepping the engine until it is idle: t gets
 * its token times, *t0 the time it was submitted. 0, or -1 (message on stderr). */
int bench_run_request(engine *e, const int *prompt, int n_prompt, int max_tokens,
                      const variant *merged, const variant_mix *lora, bench_timing *t,
                      double *t0);

/* The next of an xorshift32 sequence in *s (nonzero): the benchmarks' random prompts and
 * picks, the same on every run. */
unsigned bench_rand(unsigned *s);

/* Closed-loop clients of the engine, as bench_load's over HTTP (bench_closed, bench_merge):
 * each keeps one request in the engine — BENCH_CLIENT_PROMPT random prompt tokens, then
 * BENCH_CLIENT_TOKENS greedy tokens with EOS ignored — and sends the next as soon as one
 * ends. Zero a client to start it. */
#define BENCH_CLIENT_PROMPT 16
#define BENCH_CLIENT_TOKENS 48
typedef struct {
    int busy;       /* a request is in the engine */
    long tokens;    /* tokens received so far */
    int failed;
    int prompt[BENCH_CLIENT_PROMPT];
} bench_client;

/* Submits a request for each of cl[0..n) that has none, its prompt drawn from *seed.
 * 0, or -1 when a client's request failed or cannot be submitted (message on stderr,
 * after who). */
int bench_clients_submit(engine *e, bench_client *cl, int n, unsigned *seed, const char *who);
/* Tokens cl[0..n) have received. */
long bench_clients_tokens(const bench_client *cl, int n);

/* The usual benchmark arguments, [DIR] [--quick]: a plain argument sets *dir (its default
 * is left otherwise), --quick sets *quick to 1. */
void bench_args(int argc, char **argv, const char **dir, int *quick);

/* Writes text to path (created or truncated); 0 or -1. */
int bench_write_text(const char *path, const char *text);

/* Writes dir/config.json of a LlamaForCausalLM shaped as c (hidden, intermediate, layers,
 * heads, KV heads, vocabulary; 8192 positions, RMSNorm eps 1e-5) with the given RoPE
 * theta, tied embeddings or not, BOS and EOS ids and torch_dtype. 0 or -1. */
int bench_write_llama_config(const char *dir, const model_config *c, double rope_theta,
                             int tied, int bos, int eos, const char *torch_dtype);

/* Read bandwidth (bytes/s) over a buffer of `bytes`: the best of three read kernels
 * (a 2-thread wide-load sum, OpenBLAS sasum, OpenBLAS sgemv), each the median of 5 runs. */
double bench_read_bandwidth(size_t bytes);
/* The same; keep 1 keeps the buffer (filled once) for the next call of the same size, so
 * that measuring before every run costs only the reads; keep 0 frees it, as
 * bench_read_bandwidth does. */
double bench_read_bandwidth_keep(size_t bytes, int keep);
/* Seconds to read p[0..n) once: 2 threads, each summing its half with wide loads into
 * independent accumulators (the first of bench_read_bandwidth's kernels). */
double bench_read_seconds(const float *p, size_t n);

/* Peak float32 FMA throughput (flop/s, an FMA counting 2) of `threads` threads running
 * register-only 16-lane FMA chains: the compute roofline of the kernels. Median of 5. */
double bench_fma_peak(int threads);

/* The server-sent event being read from a stream. */
typedef struct {
    char line[65536];   /* its text so far (longer events are cut, still delimited) */
    size_t len;
} bench_sse;

/* Feeds data[*pos, n) into s until an event (text ending in a blank line) is complete;
 * returns it, NUL-terminated and valid until the next call, with *pos past it, or NULL
 * once data is used up (the partial event is kept for the next chunk). */
const char *bench_sse_event(bench_sse *s, const char *data, size_t n, size_t *pos);

/* Tokens in one SSE event of a streamed completion that asked for logprobs: the entries
 * of its "tokens":[...] list. */
int bench_sse_tokens(const char *ev);

/* Starts BUILD/lorad serve --port 0 ARGS... (args NULL-terminated), waits until it
 * listens and stores the port; its log is drained in the background. Returns its pid,
 * or -1 (message on stderr). */
pid_t bench_start_daemon(const char *build, const char *const *args, int *port);

#endif
