/* bench_engine: prefill / decode throughput of the engine on a random model with the
 * SmolLM2-135M shape, base vs adapters (on the fly, merged, a mix of two), adapter load
 * and merge times, and the machine's bounds (memory bandwidth for decode, the FMA peak of
 * the engine's threads for prefill) measured in the same run.
 * Usage: bench_engine [WORKDIR] [--quick] [--prepare] (--prepare: only write the model and adapters a..h, for bench_serve and bench_load). */
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/smallmm.h"
#include "core/variant.h"
#include "bench/benchutil.h"

/* SmolLM2-135M: hidden 576, 30 layers, 9 heads, 3 KV heads, inter 1536, vocab 49152. */
static const model_config shape = {
    .hidden = 576, .intermediate = 1536, .n_layers = 30, .n_heads = 9, .n_kv_heads = 3,
    .head_dim = 64, .vocab_size = 49152};

#define now bench_now
#define median bench_median

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void)  /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *random_tensor(size_t n, float scale)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; p && i < n; i++)
        p[i] = frand() * scale;
    return p;
}


/* Writes the random F32 base model to dir (config.json + model.safetensors). */
static int make_model(const char *dir)
{
    const model_config *c = &shape;
    mkdir(dir, 0755);
    char path[4200];
    if (bench_write_llama_config(dir, c, 100000.0, 1, 1, 2, "float32"))
        return -1;
    int n_max = 2 + c->n_layers * (2 + PROJ_COUNT);
    st_write_tensor *tw = calloc((size_t)n_max, sizeof *tw);
    char (*names)[96] = calloc((size_t)n_max, 96);
    int n = 0;
    tw[n] = (st_write_tensor){.name = "model.embed_tokens.weight", .ndim = 2,
                              .shape = {c->vocab_size, c->hidden},
                              .data = random_tensor((size_t)c->vocab_size * c->hidden, 0.05f)};
    n++;
    float *ones = malloc(sizeof(float) * c->hidden);
    for (int i = 0; i < c->hidden; i++)
        ones[i] = 1.0f + 0.1f * frand();
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(names[n], 96, "model.layers.%d.input_layernorm.weight", l);
        tw[n] = (st_write_tensor){.name = names[n], .ndim = 1, .shape = {c->hidden}, .data = ones};
        n++;
        snprintf(names[n], 96, "model.layers.%d.post_attention_layernorm.weight", l);
        tw[n] = (st_write_tensor){.name = names[n], .ndim = 1, .shape = {c->hidden}, .data = ones};
        n++;
        for (int p = 0; p < PROJ_COUNT; p++) {
            int out, in;
            model_config_proj_shape(c, (model_proj)p, &out, &in);
            model_tensor_name(l, (model_proj)p, names[n], 96);
            tw[n] = (st_write_tensor){.name = names[n], .ndim = 2, .shape = {out, in},
                                      .data = random_tensor((size_t)out * in,
                                                            1.7f / sqrtf((float)in))};
            n++;
        }
    }
    tw[n] = (st_write_tensor){.name = "model.norm.weight", .ndim = 1, .shape = {c->hidden},
                              .data = ones};
    n++;
    lr_error err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = safetensors_write(path, tw, n, NULL, &err);
    if (rc)
        fprintf(stderr, "bench: %s\n", err.msg);
    for (int i = 0; i < n; i++)
        if (tw[i].data != ones)
            free((void *)tw[i].data);
    free(ones);
    free(tw);
    free(names);
    return rc;
}

/* Writes a rank-r PEFT adapter on all seven projections of every layer. */
static int make_adapter(const char *dir, int r)
{
    const model_config *c = &shape;
    mkdir(dir, 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"r\":%d,\"lora_alpha\":%d,"
             "\"lora_dropout\":0.0,\"bias\":\"none\",\"use_rslora\":false,\"use_dora\":false,"
             "\"modules_to_save\":null,\"fan_in_fan_out\":false,\"target_modules\":[\"q_proj\","
             "\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]}\n",
             r, 2 * r);
    if (bench_write_text(path, cfg))
        return -1;
    int n_max = c->n_layers * PROJ_COUNT * 2, n = 0;
    st_write_tensor *tw = calloc((size_t)n_max, sizeof *tw);
    char (*names)[128] = calloc((size_t)n_max, 128);
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            int out, in;
            model_config_proj_shape(c, (model_proj)p, &out, &in);
            const char *grp = p <= PROJ_O ? "self_attn" : "mlp";
            snprintf(names[n], 128, "base_model.model.model.layers.%d.%s.%s.lora_A.weight", l,
                     grp, model_proj_name((model_proj)p));
            tw[n] = (st_write_tensor){.name = names[n], .ndim = 2, .shape = {r, in},
                                      .data = random_tensor((size_t)r * in, 0.05f)};
            n++;
            snprintf(names[n], 128, "base_model.model.model.layers.%d.%s.%s.lora_B.weight", l,
                     grp, model_proj_name((model_proj)p));
            tw[n] = (st_write_tensor){.name = names[n], .ndim = 2, .shape = {out, r},
                                      .data = random_tensor((size_t)out * r, 0.05f)};
            n++;
        }
    lr_error err = {0};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    int rc = safetensors_write(path, tw, n, NULL, &err);
    if (rc)
        fprintf(stderr, "bench: %s\n", err.msg);
    for (int i = 0; i < n; i++)
        free((void *)tw[i].data);
    free(tw);
    free(names);
    return rc;
}

/* CPU time of the calling thread, in seconds. */
static double thread_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- machine bounds ---- */

/* ---- engine runs ---- */


/* Runs one request; returns prefill seconds and decode tokens/s (excluding the first). */
static int run_one(engine *e, const int *prompt, int n_prompt, int max_tokens,
                   const variant *merged, const variant_mix *lora, double *prefill_s,
                   double *decode_tps)
{
    bench_timing t;
    double t0;
    if (bench_run_request(e, prompt, n_prompt, max_tokens, merged, lora, &t, &t0))
        return -1;
    *prefill_s = t.t_first - t0;
    *decode_tps = t.n > 1 ? (t.n - 1) / (t.t_last - t.t_first) : 0;
    return 0;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data";
    int quick = 0, prepare = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--prepare") == 0)
            prepare = 1;
        else
            work = argv[i];
    }
    int reps = quick ? 2 : 11;
    char mdir[4096], a1[4096], a2[4096];
    mkdir(work, 0755);
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(a1, sizeof a1, "%s/adapter-r16-a", work);
    snprintf(a2, sizeof a2, "%s/adapter-r16-b", work);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", mdir);
    if (access(probe, F_OK) != 0) {
        printf("generating the random model and adapters in %s ...\n", work);
        if (make_model(mdir) || make_adapter(a1, 16) || make_adapter(a2, 16))
            return 1;
    }
    /* six more distinct adapters (c..h), for bench_load's 8 different adapters */
    for (char x = 'c'; x <= 'h'; x++) {
        char ad[4096];
        snprintf(ad, sizeof ad, "%s/adapter-r16-%c", work, x);
        snprintf(probe, sizeof probe, "%s/adapter_model.safetensors", ad);
        if (access(probe, F_OK) != 0 && make_adapter(ad, 16))
            return 1;
    }
    if (prepare)
        return 0;

    lr_error err = {0};
    model *m = model_load(mdir, &err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    const model_config *c = &m->cfg;

    /* Adapter load: median over repeated loads (page cache warm, as on a server), in wall
     * time and in this thread's CPU time (which other jobs on the machine do not inflate;
     * page faults included). */
    int n_loads = quick ? 5 : 15;
    double loads[32], load_cpu[32];
    peft_adapter *ad1 = NULL, *ad2 = NULL;
    for (int i = 0; i < n_loads; i++) {
        double t0 = now(), c0 = thread_cpu_seconds();
        peft_adapter *a = peft_load(a1, c, NULL, &err);
        loads[i] = now() - t0;
        load_cpu[i] = thread_cpu_seconds() - c0;
        if (!a) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
        if (i == 0)
            ad1 = a;
        else
            peft_free(a);
    }
    ad2 = peft_load(a2, c, NULL, &err);
    if (!ad2) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    double load_ms = median(loads, n_loads) * 1e3, load_cpu_ms = median(load_cpu, n_loads) * 1e3;

    variant_mix one = {.n = 1, .t = {{ad1->w, 1.0f}}};
    variant_mix two = {.n = 2, .t = {{ad1->w, 0.6f}, {ad2->w, 0.4f}}};
    double merges[8];
    variant *merged = NULL;
    for (int i = 0; i < (quick ? 1 : 3); i++) {
        variant_free(merged);
        double t0 = now();
        merged = variant_merge(m, &one, &err);
        merges[i] = now() - t0;
        if (!merged) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
    }
    double merge_ms = median(merges, quick ? 1 : 3) * 1e3;

    engine_options eo = engine_options_default();
    eo.max_seqs = 1;
    engine *e = engine_create(m, &eo, &err);
    if (!e) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    int prompt[512];
    for (int i = 0; i < 512; i++)
        prompt[i] = (int)((i * 7919u + 13) % (unsigned)c->vocab_size);

    enum { BASE, ONE_FLY, ONE_MERGED, MIX_FLY, N_CASES };
    const char *names[N_CASES] = {"base", "1 adapter on the fly", "1 adapter merged",
                                  "mix of 2 on the fly"};
    const variant *mg[N_CASES] = {NULL, NULL, merged, NULL};
    const variant_mix *lo[N_CASES] = {NULL, &one, NULL, &two};
    double pre[N_CASES][16], dec[N_CASES][16];
    double dummy;
    run_one(e, prompt, 16, 8, NULL, NULL, &dummy, &dummy);  /* warm up */
    /* Bytes decode must read per token: every layer matrix + norms + the lm_head (the
     * embedding row is negligible); with tied embeddings lm_head == embed_tokens. */
    size_t bytes_tok = m->weight_bytes;
    if (!c->tie_embeddings)
        bytes_tok -= (size_t)c->vocab_size * c->hidden * sizeof(float);
    /* The machine's bounds are measured before and after the runs; the higher of the two
     * is used (so the "of bound" ratios are conservative on a noisy shared machine). */
    /* Prefill's products run on smallmm on the engine's pool (lorad gives OpenBLAS one
     * thread, for merges in the background), so the compute bound is the FMA peak of as
     * many threads as the pool has — not OpenBLAS's sgemm, which measured here after the
     * engine started is one core's. */
    int pool_threads = engine_threads(e);
    double bw_before = bench_read_bandwidth(bytes_tok), peak_before = bench_fma_peak(pool_threads);
    /* Interleave the cases, rotating their order each repetition, so that machine noise
     * (this is a shared 2-core VM) hits them alike. */
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < N_CASES; kk++) {
            int k = (kk + r) % N_CASES;
            double p, d, p2;
            if (run_one(e, prompt, 512, 1, mg[k], lo[k], &p, &d) ||
                run_one(e, prompt, 16, 129, mg[k], lo[k], &p2, &d))
                return 1;
            pre[k][r] = 512 / p;
            dec[k][r] = d;
        }

    double bw = bench_read_bandwidth(bytes_tok);
    double peak = bench_fma_peak(pool_threads);
    if (bw < bw_before)
        bw = bw_before;
    if (peak < peak_before)
        peak = peak_before;
    /* Prefill must do, per prompt token, 2 flops per layer weight (the lm_head runs for
     * the last token only) plus causal attention: QKᵀ and SV over on average (n+1)/2 keys. */
    double layer_params = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out, in;
        model_config_proj_shape(c, (model_proj)p, &out, &in);
        layer_params += (double)out * in;
    }
    double flops_tok = 2.0 * layer_params * c->n_layers +
                       4.0 * c->n_layers * c->n_heads * c->head_dim * (512 + 1) / 2.0;
    double decode_bound = bw / (double)bytes_tok;
    double prefill_bound = peak / flops_tok;

    printf("\nlorad engine benchmark (random SmolLM2-135M shape, F32, %d layers, vocab %d; "
           "rank-16 adapters on all 7 projections; %d interleaved repetitions, medians)\n",
           c->n_layers, c->vocab_size, reps);
    printf("smallmm kernels: %s; OpenBLAS kernels (merges): %s\n",
           smallmm_isa_name(smallmm_get_isa()), blas_kernels());
    printf("machine (higher of before/after the runs): read bandwidth %.1f GB/s (best of 3 "
           "read kernels over a buffer the size of the weights), FMA peak %.1f GFLOP/s (%d "
           "threads, as the engine's pool)\n", bw / 1e9, peak / 1e9, pool_threads);
    printf("bounds:  decode %.1f tok/s (%.0f MB of weights per token), prefill %.0f tok/s "
           "(%.3f GFLOP per prompt token incl. causal attention)\n",
           decode_bound, (double)bytes_tok / 1e6, prefill_bound, flops_tok / 1e9);
    /* "vs base": the ratio of the medians, and the median of the ratios of each
     * repetition's runs (adjacent in time, so paired against the same machine noise);
     * the pairs are taken before median() sorts the runs. */
    double paired[N_CASES];
    for (int k = 0; k < N_CASES; k++) {
        double ratio[16];
        for (int r = 0; r < reps; r++)
            ratio[r] = dec[k][r] / dec[BASE][r];
        paired[k] = median(ratio, reps);
    }
    printf("\n%-24s %14s %10s %14s %10s %10s %10s\n", "case", "prefill tok/s", "of bound",
           "decode tok/s", "of bound", "vs base", "(paired)");
    double base_dec = median(dec[BASE], reps);
    for (int k = 0; k < N_CASES; k++) {
        double p = median(pre[k], reps), d = median(dec[k], reps);
        printf("%-24s %14.1f %9.0f%% %14.1f %9.0f%% %9.1f%% %9.1f%%\n", names[k], p,
               100 * p / prefill_bound, d, 100 * d / decode_bound, 100 * d / base_dec,
               100 * paired[k]);
    }
    printf("\nadapter load (rank 16, 7 projections x %d layers, %.1f MB fp32): %.2f ms median "
           "of %d (CPU %.2f ms median; goal < 30 ms)\n", c->n_layers, ad1->w->bytes / 1e6,
           load_ms, n_loads, load_cpu_ms);
    printf("merge (W' = W + s B A for %d matrices, %.0f MB): %.1f ms\n", ad1->n_matrices,
           merged->bytes / 1e6, merge_ms);

    engine_destroy(e);
    variant_free(merged);
    peft_free(ad1);
    peft_free(ad2);
    model_free(m);
    return 0;
}
