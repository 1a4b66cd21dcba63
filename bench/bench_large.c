/* bench_large: an 8B-parameter model (Llama-3-8B shape, random BF16 weights: 16 GB in four
 * shards with an index, written on first use) loaded and run on this machine with
 * --weights bf16 and q8 — load time, resident memory, prefill and decode tokens/s against
 * the bandwidth bound — and f32, which must be refused up front (32 GB) with a message
 * naming the way out. Each precision runs in a child process of its own, so its peak RSS
 * (VmHWM) is its own and its memory is gone before the next.
 * Usage: bench_large [WORKDIR] [--quick]  (`make bench-large`; needs ~17 GB of disk and
 * ~18 GB of memory; never part of `make test`) */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/smallmm.h"
#include "core/wtensor.h"
#include "bench/benchutil.h"

/* Meta-Llama-3-8B's config.json (the fields lorad reads). */
enum { HIDDEN = 4096, INTER = 14336, LAYERS = 32, HEADS = 32, KV_HEADS = 8, HEAD_DIM = 128,
       VOCAB = 128256, SHARDS = 4 };

typedef struct {
    char name[96];
    int64_t rows, cols;   /* cols 0: a vector of rows */
    int shard;
    int64_t begin;        /* offset in its shard's data section */
    float scale;          /* values uniform in [-scale, scale); 0: all ones (norms) */
} big_tensor;

static uint64_t rng = 0x243F6A8885A308D3ull;

static int64_t numel(const big_tensor *t)
{
    return t->rows * (t->cols ? t->cols : 1);
}

/* The checkpoint's tensors, in Hugging Face's order, assigned to shards of ~4 GB. */
static int list_tensors(big_tensor *t)
{
    int n = 0;
    static const char *const projs[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                         "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    const int64_t shape[7][2] = {{HEADS * HEAD_DIM, HIDDEN}, {KV_HEADS * HEAD_DIM, HIDDEN},
                                 {KV_HEADS * HEAD_DIM, HIDDEN}, {HIDDEN, HEADS * HEAD_DIM},
                                 {INTER, HIDDEN}, {INTER, HIDDEN}, {HIDDEN, INTER}};
    t[n++] = (big_tensor){"model.embed_tokens.weight", VOCAB, HIDDEN, 0, 0, 0.02f};
    for (int l = 0; l < LAYERS; l++) {
        snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.input_layernorm.weight", l);
        t[n].rows = HIDDEN, t[n].cols = 0, t[n].scale = 0, n++;
        snprintf(t[n].name, sizeof t[n].name,
                 "model.layers.%d.post_attention_layernorm.weight", l);
        t[n].rows = HIDDEN, t[n].cols = 0, t[n].scale = 0, n++;
        for (int p = 0; p < 7; p++) {
            snprintf(t[n].name, sizeof t[n].name, "model.layers.%d.%s.weight", l, projs[p]);
            t[n].rows = shape[p][0], t[n].cols = shape[p][1];
            t[n].scale = 1.0f / 64;   /* ~ 1/sqrt(in): activations stay O(1) */
            n++;
        }
    }
    t[n++] = (big_tensor){"model.norm.weight", HIDDEN, 0, 0, 0, 0};
    t[n++] = (big_tensor){"lm_head.weight", VOCAB, HIDDEN, 0, 0, 0.02f};
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += numel(&t[i]) * 2;
    int64_t off[SHARDS] = {0}, done = 0;
    for (int i = 0; i < n; i++) {
        int s = (int)(done * SHARDS / total);
        t[i].shard = s < SHARDS ? s : SHARDS - 1;
        t[i].begin = off[t[i].shard];
        off[t[i].shard] += numel(&t[i]) * 2;
        done += numel(&t[i]) * 2;
    }
    return n;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}


/* Writes the model into dir: config.json, four BF16 shards, the index. */
static int make_model(const char *dir)
{
    big_tensor *t = calloc(400, sizeof *t);
    int n = list_tensors(t);
    mkdir(dir, 0755);
    char path[4200];
    const model_config cfg = {.hidden = HIDDEN, .intermediate = INTER, .n_layers = LAYERS,
                              .n_heads = HEADS, .n_kv_heads = KV_HEADS, .vocab_size = VOCAB};
    if (bench_write_llama_config(dir, &cfg, 500000.0, 0, 128000, 128001, "bfloat16"))
        return -1;
    size_t cap = 1 << 20;
    char *index = malloc(64 << 10), *hdr = malloc(cap);
    uint16_t *buf = malloc(sizeof(uint16_t) << 22);
    int ilen = snprintf(index, 64 << 10, "{\"metadata\":{},\"weight_map\":{");
    for (int s = 0; s < SHARDS; s++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, SHARDS);
        int len = snprintf(hdr, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
        for (int i = 0; i < n; i++) {
            if (t[i].shard != s)
                continue;
            char shape[64];
            if (t[i].cols)
                snprintf(shape, sizeof shape, "[%lld,%lld]", (long long)t[i].rows,
                         (long long)t[i].cols);
            else
                snprintf(shape, sizeof shape, "[%lld]", (long long)t[i].rows);
            len += snprintf(hdr + len, cap - (size_t)len,
                            ",\"%s\":{\"dtype\":\"BF16\",\"shape\":%s,\"data_offsets\":"
                            "[%lld,%lld]}", t[i].name, shape, (long long)t[i].begin,
                            (long long)(t[i].begin + numel(&t[i]) * 2));
            ilen += snprintf(index + ilen, (64 << 10) - (size_t)ilen, "%s\"%s\":\"%s\"",
                             ilen > 30 ? "," : "", t[i].name, file);
        }
        len += snprintf(hdr + len, cap - (size_t)len, "}");
        while (len % 8)
            hdr[len++] = ' ';
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        uint64_t hl = (uint64_t)len;
        if (fd < 0 || write_all(fd, &hl, 8) || write_all(fd, hdr, (size_t)len))
            return -1;
        for (int i = 0; i < n; i++) {
            if (t[i].shard != s)
                continue;
            for (int64_t e0 = 0; e0 < numel(&t[i]); e0 += 1 << 22) {
                int64_t k = numel(&t[i]) - e0 < (1 << 22) ? numel(&t[i]) - e0 : 1 << 22;
                for (int64_t e = 0; e < k; e++) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    float v = t[i].scale == 0 ? 1.0f
                              : t[i].scale * (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
                    buf[e] = wtensor_bf16_round(v);
                }
                if (write_all(fd, buf, (size_t)k * 2))
                    return -1;
            }
        }
        if (close(fd))
            return -1;
        printf("  wrote %s\n", path);
        fflush(stdout);
    }
    ilen += snprintf(index + ilen, (64 << 10) - (size_t)ilen, "}}\n");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int rc = bench_write_text(path, index);
    free(index);
    free(hdr);
    free(buf);
    free(t);
    return rc;
}

/* VmRSS / VmHWM of this process in MB. */
static double status_mb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = -1;
    size_t k = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, k) == 0 && line[k] == ':')
            v = atof(line + k + 1) / 1024;
    if (f)
        fclose(f);
    return v;
}

typedef struct {
    int ok;                 /* 1 loaded and ran; 0 refused (msg) */
    char msg[256];
    double load_s, rss_mb, hwm_mb, prefill_tps, decode_tps, gb_per_token;
} result;

/* One precision, in this (child) process. */
static void run_precision(const char *dir, wt_type w, int quick, result *r)
{
    lr_error err = {0};
    double t0 = bench_now();
    model *m = model_load_with(dir, &(model_load_opts){(int)w, NULL, NULL}, &err);
    r->load_s = bench_now() - t0;
    if (!m) {
        snprintf(r->msg, sizeof r->msg, "%s", err.msg);
        return;
    }
    r->gb_per_token = (m->weight_bytes - wtensor_data_bytes(w, VOCAB, HIDDEN) -
                       wtensor_scale_bytes(w, VOCAB, HIDDEN)) / 1e9;   /* embed: one row */
    engine_options eo = engine_options_default();
    eo.max_seqs = 1;
    eo.max_ctx = 1024;
    engine *e = engine_create(m, &eo, &err);
    if (!e) {
        snprintf(r->msg, sizeof r->msg, "%s", err.msg);
        model_free(m);
        return;
    }
    int n_prompt = quick ? 16 : 64, n_gen = quick ? 8 : 24;
    int prompt[64];
    for (int i = 0; i < n_prompt; i++)
        prompt[i] = (int)((i * 7919u + 13) % VOCAB);
    bench_timing t;
    if (bench_run_request(e, prompt, n_prompt, n_gen, NULL, NULL, &t, &t0)) {
        snprintf(r->msg, sizeof r->msg, "the request was refused (see above)");
    } else {
        r->prefill_tps = n_prompt / (t.t_first - t0);
        r->decode_tps = t.n > 1 ? (t.n - 1) / (t.t_last - t.t_first) : 0;
        r->ok = t.n == n_gen;
        if (!r->ok)
            snprintf(r->msg, sizeof r->msg, "generated %d of %d tokens", t.n, n_gen);
    }
    r->rss_mb = status_mb("VmRSS");
    r->hwm_mb = status_mb("VmHWM");
    engine_destroy(e);
    model_free(m);
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data";
    int quick;
    bench_args(argc, argv, &work, &quick);
    char dir[4096], probe[4200];
    mkdir(work, 0755);
    snprintf(dir, sizeof dir, "%s/llama3-8b-random", work);
    snprintf(probe, sizeof probe, "%s/model.safetensors.index.json", dir);
    if (access(probe, F_OK) != 0) {
        printf("writing the random 8B model (16 GB of BF16) to %s ...\n", dir);
        double t0 = bench_now();
        if (make_model(dir)) {
            fprintf(stderr, "bench_large: cannot write %s: %s\n", dir, strerror(errno));
            return 1;
        }
        printf("  done in %.0f s\n", bench_now() - t0);
    }
    double bw = bench_read_bandwidth((size_t)1 << 30);
    static const wt_type order[3] = {WT_BF16, WT_Q8, WT_F32};
    /* the children write their results here */
    result *res = mmap(NULL, 3 * sizeof *res, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED)
        return 1;
    memset(res, 0, 3 * sizeof *res);
    for (int k = 0; k < 3; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            run_precision(dir, order[k], quick, &res[k]);
            _exit(0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
            snprintf(res[k].msg, sizeof res[k].msg, "the child died (%s)",
                     pid > 0 && WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "fork failed");
    }
    long long mem_mb = sysconf(_SC_PHYS_PAGES) * (long long)sysconf(_SC_PAGE_SIZE) >> 20;
    printf("\nlorad on an 8B model (Llama-3-8B shape, random BF16 checkpoint of 16.1 GB in %d "
           "shards; %lld MB of memory; kernels %s; read bandwidth %.1f GB/s)\n", SHARDS,
           mem_mb, smallmm_isa_name(smallmm_get_isa()), bw / 1e9);
    printf("%-7s %8s %10s %10s %10s %14s %13s %9s\n", "weights", "load s", "RSS MB",
           "peak MB", "GB/token", "prefill tok/s", "decode tok/s", "of bound");
    int bad = 0;
    for (int k = 0; k < 3; k++) {
        const result *r = &res[k];
        if (!r->ok) {
            printf("%-7s refused: %s\n", wtensor_type_name(order[k]), r->msg);
            bad |= order[k] != WT_F32 || !r->msg[0];   /* f32 must be refused, with reason */
            continue;
        }
        double bound = bw / (r->gb_per_token * 1e9);
        printf("%-7s %8.1f %10.0f %10.0f %10.2f %14.2f %13.2f %8.0f%%\n",
               wtensor_type_name(order[k]), r->load_s, r->rss_mb, r->hwm_mb, r->gb_per_token,
               r->prefill_tps, r->decode_tps, 100 * r->decode_tps / bound);
        bad |= order[k] == WT_F32;   /* 32 GB cannot fit: loading it is a bug */
    }
    munmap(res, 3 * sizeof *res);
    return bad;
}
