/* benchutil: see benchutil.h. */
#include "benchutil.h"

#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(const double *v, int n)
{
    double *t = malloc(sizeof *t * (size_t)n);
    if (!t)
        return 0;
    memcpy(t, v, sizeof *t * (size_t)n);
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    double m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

void bench_range(const double *v, int n, double *lo, double *hi)
{
    *lo = *hi = v[0];
    for (int i = 1; i < n; i++) {
        *lo = v[i] < *lo ? v[i] : *lo;
        *hi = v[i] > *hi ? v[i] : *hi;
    }
}

static int on_token(void *user, const engine_token *tok)
{
    (void)tok;
    bench_timing *t = user;
    double x = bench_now();
    if (t->n++ == 0)
        t->t_first = x;
    t->t_last = x;
    return 0;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    (void)user;
    if (reason == ENGINE_FINISH_ERROR)
        fprintf(stderr, "bench: generation failed: %s\n", err ? err->msg : "?");
}

void bench_timing_attach(engine_request *req, bench_timing *t)
{
    memset(t, 0, sizeof *t);
    req->on_token = on_token;
    req->on_done = on_done;
    req->user = t;
}

/* ---- machine bounds ---- */

typedef struct {
    const float *p;
    size_t n;
    double sum;
} bw_job;

/* Sums j->p [n]: wide loads into independent accumulators, so memory is the limit. */
static void *bw_worker(void *arg)
{
    bw_job *j = arg;
    size_t n = j->n & ~(size_t)63;
#ifdef __AVX512F__
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(j->p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(j->p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(j->p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(j->p + i + 48));
    }
    j->sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
    float part[64] = {0};
    for (size_t i = 0; i < n; i += 64)
        for (int k = 0; k < 64; k++)
            part[k] += j->p[i + k];
    double s = 0;
    for (int k = 0; k < 64; k++)
        s += part[k];
    j->sum = s;
#endif
    return NULL;
}

double bench_read_seconds(const float *p, size_t n)
{
    double t0 = bench_now();
    pthread_t th[2];
    bw_job jobs[2];
    for (int t = 0; t < 2; t++) {
        jobs[t] = (bw_job){p + n / 2 * t, n / 2, 0};
        pthread_create(&th[t], NULL, bw_worker, &jobs[t]);
    }
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);
    return bench_now() - t0;
}

/* Read bandwidth (bytes/s) over a buffer of `bytes` (the weights' size, so cache effects
 * match decode's, on huge pages as the weights are): the best of three read kernels — our
 * 2-thread wide-load sum, OpenBLAS sasum and OpenBLAS sgemv over the buffer as a [n/576,
 * 576] matrix — each the median of 5 runs. */
double bench_read_bandwidth_keep(size_t bytes, int keep)
{
    size_t n = bytes / sizeof(float);
    /* on transparent huge pages, as lorad holds the weights (4 KB pages read slower); with
     * keep, kept for the next call of the same size */
    size_t cap = (n * sizeof(float) + 63) & ~(size_t)63;
    static float *buf;
    static size_t buf_cap;
    if (buf && buf_cap != cap) {
        munmap(buf, buf_cap);
        buf = NULL;
    }
    if (!buf) {
        buf = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buf == MAP_FAILED) {
            buf = NULL;
            return 0;
        }
        buf_cap = cap;
        madvise(buf, cap, MADV_HUGEPAGE);
        for (size_t i = 0; i < n; i++)
            buf[i] = (float)(i & 7);
    }
    float *x = malloc(576 * sizeof(float)), *y = malloc((n / 576 + 1) * sizeof(float));
    for (int i = 0; i < 576; i++)
        x[i] = 1.0f;
    double best = 0;
    for (int method = 0; method < 3; method++) {
        double runs[5];
        for (int r = 0; r < 5; r++) {
            if (method == 0) {
                runs[r] = (double)n * sizeof(float) / bench_read_seconds(buf, n);
                continue;
            }
            double t0 = bench_now();
            if (method == 1) {
                volatile float s = cblas_sasum((blasint)n, buf, 1);
                (void)s;
            } else {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)(n / 576), 576, 1.0f, buf, 576,
                            x, 1, 0.0f, y, 1);
            }
            runs[r] = (double)n * sizeof(float) / (bench_now() - t0);
        }
        double m = bench_median(runs, 5);
        best = m > best ? m : best;
    }
    free(x);
    free(y);
    if (!keep) {
        munmap(buf, buf_cap);
        buf = NULL;
    }
    return best;
}

double bench_read_bandwidth(size_t bytes)
{
    return bench_read_bandwidth_keep(bytes, 0);
}


typedef struct {
    double seconds;
    float sink;
} fma_job;

/* 12 independent chains of VL-lane FMAs on registers only: enough in flight to fill every
 * FMA unit (latency 4 × 2 units, with room), so the time is the core's FMA throughput. One
 * copy per vector width, each compiled for its instruction set (12 zmm on AVX-512; with
 * 16-lane vectors on AVX2 the 24 ymm would spill): the peak is the best the CPU has, as
 * smallmm's kernels are chosen. */
#define FMA_WORKER(NAME, VLEN)                                                             \
    static void *NAME(void *arg)                                                           \
    {                                                                                      \
        typedef float vec __attribute__((vector_size(VLEN * 4)));                          \
        fma_job *j = arg;                                                                  \
        vec a[12], x = {0}, y = {0};                                                       \
        for (int k = 0; k < VLEN; k++) {                                                   \
            x[k] = 0.999999f;                                                              \
            y[k] = 1e-7f * (float)k;                                                       \
        }                                                                                  \
        for (int i = 0; i < 12; i++)                                                       \
            a[i] = y + (float)i;                                                           \
        double t0 = bench_now();                                                           \
        for (long it = 0; it < 4000000; it++)                                              \
            for (int i = 0; i < 12; i++)                                                   \
                a[i] = a[i] * x + y;  /* -ffp-contract=fast: one FMA */                    \
        j->seconds = bench_now() - t0;                                                     \
        float s = 0;                                                                       \
        for (int i = 0; i < 12; i++)                                                       \
            s += a[i][0];                                                                  \
        j->sink = s;                                                                       \
        return NULL;                                                                       \
    }
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
FMA_WORKER(fma_worker16, 16)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
FMA_WORKER(fma_worker8, 8)
#pragma GCC pop_options

double bench_fma_peak(int threads)
{
    if (threads < 1 || threads > 64)
        threads = 1;
    __builtin_cpu_init();
    int wide = __builtin_cpu_supports("avx512f");
    double runs[5];
    for (int r = 0; r < 5; r++) {
        pthread_t th[64];
        fma_job jobs[64];
        for (int t = 0; t < threads; t++)
            pthread_create(&th[t], NULL, wide ? fma_worker16 : fma_worker8, &jobs[t]);
        double slowest = 0;
        for (int t = 0; t < threads; t++) {
            pthread_join(th[t], NULL);
            slowest = jobs[t].seconds > slowest ? jobs[t].seconds : slowest;
        }
        runs[r] = threads * 4000000.0 * 12 * (wide ? 16 : 8) * 2 / slowest;
    }
    return bench_median(runs, 5);
}

int bench_run_request(engine *e, const int *prompt, int n_prompt, int max_tokens,
                      const variant *merged, const variant_mix *lora, bench_timing *t,
                      double *t0)
{
    engine_request req = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = max_tokens,
                          .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1,
                          .merged = merged, .lora = lora};
    bench_timing_attach(&req, t);
    lr_error err = {0};
    *t0 = bench_now();
    if (engine_submit(e, &req, NULL, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return -1;
    }
    while (engine_step(e, &err) > 0)
        ;
    return 0;
}

static int client_token(void *user, const engine_token *tok)
{
    (void)tok;
    ((bench_client *)user)->tokens++;
    return 0;
}

static void client_done(void *user, engine_finish reason, const lr_error *err)
{
    bench_client *c = user;
    c->busy = 0;
    if (reason == ENGINE_FINISH_ERROR) {
        c->failed = 1;
        fprintf(stderr, "bench: a request failed: %s\n", err ? err->msg : "?");
    }
}

unsigned bench_rand(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

int bench_clients_submit(engine *e, bench_client *cl, int n, unsigned *seed, const char *who)
{
    lr_error err = {0};
    for (int i = 0; i < n; i++) {
        if (cl[i].failed)
            return -1;
        if (cl[i].busy)
            continue;
        for (int k = 0; k < BENCH_CLIENT_PROMPT; k++)
            cl[i].prompt[k] = 100 + (int)(bench_rand(seed) % 20000);
        engine_request req = {.prompt = cl[i].prompt, .n_prompt = BENCH_CLIENT_PROMPT,
                              .max_tokens = BENCH_CLIENT_TOKENS,
                              .sampling = {.temperature = 0, .top_p = 1},
                              .ignore_eos = 1, .on_token = client_token,
                              .on_done = client_done, .user = &cl[i]};
        if (engine_submit(e, &req, NULL, &err)) {
            fprintf(stderr, "%s: %s\n", who, err.msg);
            return -1;
        }
        cl[i].busy = 1;
    }
    return 0;
}

long bench_clients_tokens(const bench_client *cl, int n)
{
    long tok = 0;
    for (int i = 0; i < n; i++)
        tok += cl[i].tokens;
    return tok;
}

void bench_args(int argc, char **argv, const char **dir, int *quick)
{
    *quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            *quick = 1;
        else
            *dir = argv[i];
    }
}

int bench_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

int bench_write_llama_config(const char *dir, const model_config *c, double rope_theta,
                             int tied, int bos, int eos, const char *torch_dtype)
{
    char path[4200], cfg[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(cfg, sizeof cfg,
             "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\","
             "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
             "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"vocab_size\":%d,"
             "\"max_position_embeddings\":8192,\"rope_theta\":%.1f,\"rms_norm_eps\":1e-05,"
             "\"tie_word_embeddings\":%s,\"hidden_act\":\"silu\",\"bos_token_id\":%d,"
             "\"eos_token_id\":%d,\"torch_dtype\":\"%s\"}\n",
             c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
             rope_theta, tied ? "true" : "false", bos, eos, torch_dtype);
    return bench_write_text(path, cfg);
}

/* ---- the daemon ---- */

const char *bench_sse_event(bench_sse *s, const char *data, size_t n, size_t *pos)
{
    while (*pos < n) {
        if (s->len + 1 < sizeof s->line)
            s->line[s->len++] = data[*pos];
        (*pos)++;
        if (s->len >= 2 && s->line[s->len - 1] == '\n' && s->line[s->len - 2] == '\n') {
            s->line[s->len] = '\0';
            s->len = 0;
            return s->line;
        }
    }
    return NULL;
}

int bench_sse_tokens(const char *ev)
{
    const char *p = strstr(ev, "\"tokens\":[");
    if (!p)
        return 0;
    p += 10;
    int n = 0;
    for (; *p && *p != ']'; p++)
        n += *p == '"';
    return n / 2;
}

pid_t bench_start_daemon(const char *build, const char *const *args, int *port)
{
    int fds[2];
    if (pipe(fds))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        char exe[4200];
        const char *argv[64] = {exe, "serve", "--port", "0"};
        int n = 4;
        for (int i = 0; args[i] && n < 63; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        snprintf(exe, sizeof exe, "%s/lorad", build);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[1024];
    *port = 0;
    /* BENCH_DAEMON_LOG=FILE: every daemon's log appended to FILE (e.g. how its pages were
     * placed, hugemem.h) */
    const char *log_path = getenv("BENCH_DAEMON_LOG");
    FILE *log = log_path ? fopen(log_path, "a") : NULL;
    while (f && fgets(line, sizeof line, f)) {
        if (log)
            fputs(line, log);
        const char *p = strstr(line, "on http://");
        if (p && (p = strrchr(p, ':')) && sscanf(p + 1, "%d", port) == 1)
            break;
    }
    if (*port == 0) {
        fprintf(stderr, "bench: the daemon did not start\n");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (f)
            fclose(f);
        if (log)
            fclose(log);
        return -1;
    }
    /* keep draining its log (one line per request) so it never blocks on the pipe */
    if (log)
        fflush(log);
    if (fork() == 0) {
        while (fgets(line, sizeof line, f))
            if (log) {
                fputs(line, log);
                fflush(log);
            }
        _exit(0);
    }
    fclose(f);
    if (log)
        fclose(log);
    return pid;
}
