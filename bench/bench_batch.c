/* bench_batch: the cost of one decode step against the number of sequences decoding
 * together, on the base and on 8 different adapters (--adapters N: N of them), each
 * printed beside its roofline bound — max(bytes read ÷ read bandwidth, flops ÷ FMA peak)
 * — both measured just before each row count's runs in every repetition (the shared
 * machine's bandwidth moves by 1.6x). Uses the random SmolLM2-135M-shaped model and
 * rank-16 adapters that `bench_engine --prepare` writes. Usage: bench_batch [WORKDIR]
 * [--quick] [--rows N,N,...] [--steps N] [--tsv FILE] [--profile] [--adapters N]
 * [--weights f32|bf16|q8] (--weights: the base held in that precision, as `lorad serve
 * --weights`; the checkpoint's F32 by default; the bound counts the bytes it holds;
 * --steps: timed steps per run, default 12, e.g. many for profiling one row count;
 * --tsv: the table, tab-separated, for tools/plot_bench.py; --profile: also where each
 * step's time goes, phase by phase — engine_set_profile). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/variant.h"
#include "bench/benchutil.h"

#define MAX_SEQS 64
#define MAX_ADAPTERS MAX_SEQS
#define PROMPT 16

typedef struct {
    int tokens;  /* tokens received so far */
} counter;

static int on_token(void *user, const engine_token *tok)
{
    (void)tok;
    ((counter *)user)->tokens++;
    return 0;
}

static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    (void)user;
    if (reason == ENGINE_FINISH_ERROR)
        fprintf(stderr, "bench: generation failed: %s\n", err ? err->msg : "?");
}

/* Starts n sequences (sequence i on mixes[i % n_mixes], or the base when n_mixes is 0),
 * steps until every one has its first token, then times `steps` steps in which all n
 * decode one token each; returns the median step time in seconds (negative on error). */
static double time_steps(engine *e, int n, const variant_mix *mixes, int n_mixes, int steps,
                         const int *prompt, forward_profile *prof)
{
    counter cnt[MAX_SEQS] = {{0}};
    lr_error err = {0};
    for (int i = 0; i < n; i++) {
        engine_request req = {.prompt = prompt + i, .n_prompt = PROMPT, .max_tokens = 4096,
                              .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1,
                              .lora = n_mixes ? &mixes[i % n_mixes] : NULL,
                              .on_token = on_token, .on_done = on_done, .user = &cnt[i]};
        if (engine_submit(e, &req, NULL, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return -1;
        }
    }
    for (int guard = 0;; guard++) {
        int started = 0;
        for (int i = 0; i < n; i++)
            started += cnt[i].tokens > 0;
        if (started == n)
            break;
        if (guard > 10000 || engine_step(e, &err) < 0) {
            fprintf(stderr, "bench: prefill did not finish: %s\n", err.msg);
            return -1;
        }
    }
    double t[1000];
    engine_set_profile(e, prof);
    for (int s = 0; s < steps; s++) {
        double t0 = bench_now();
        if (engine_step(e, &err) < 0) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return -1;
        }
        t[s] = bench_now() - t0;
    }
    engine_set_profile(e, NULL);
    engine_cancel_all(e);
    while (engine_step(e, &err) > 0)
        ;
    return bench_median(t, steps);
}

static int parse_rows(const char *s, int *rows)
{
    int n = 0;
    for (char *end; *s && n < 32; s = *end ? end + 1 : end) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > MAX_SEQS)
            return -1;
        rows[n++] = (int)v;
    }
    return n;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data", *tsv = NULL;
    int quick = 0, steps = 0, profile = 0, n_ad = 8;
    int weights = MODEL_WEIGHTS_AUTO;  /* --weights: the checkpoint's own (F32) */
    static forward_profile prof[2][32];   /* [adapters][row count] */
    int rows[32] = {1, 2, 4, 8, 12, 16, 17, 24, 32, 48, 64}, n_rows = 11;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
            if ((n_rows = parse_rows(argv[++i], rows)) <= 0) {
                fprintf(stderr, "bench: --rows takes numbers 1..%d separated by commas\n",
                        MAX_SEQS);
                return 2;
            }
        } else if (strcmp(argv[i], "--tsv") == 0 && i + 1 < argc) {
            tsv = argv[++i];
        } else if (strcmp(argv[i], "--adapters") == 0 && i + 1 < argc) {
            n_ad = atoi(argv[++i]);
            if (n_ad < 1 || n_ad > MAX_ADAPTERS) {
                fprintf(stderr, "bench: --adapters takes 1..%d\n", MAX_ADAPTERS);
                return 2;
            }
        } else if (strcmp(argv[i], "--weights") == 0 && i + 1 < argc) {
            wt_type t;
            if (wtensor_type_parse(argv[++i], &t)) {
                fprintf(stderr, "bench: --weights takes f32, bf16 or q8\n");
                return 2;
            }
            weights = (int)t;
        } else if (strcmp(argv[i], "--profile") == 0) {
            profile = 1;
        } else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) {
            steps = atoi(argv[++i]);
            if (steps < 1 || steps > 1000) {
                fprintf(stderr, "bench: --steps takes 1..1000\n");
                return 2;
            }
        } else
            work = argv[i];
    }
    int reps = quick ? 2 : 5;
    if (!steps)
        steps = quick ? 6 : 12;

    char mdir[4096], adir[2][4096];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(adir[0], sizeof adir[0], "%s/adapter-r16-a", work);
    snprintf(adir[1], sizeof adir[1], "%s/adapter-r16-b", work);
    lr_error err = {0};
    model *m = model_load_with(mdir, &(model_load_opts){weights, NULL, NULL}, &err);
    if (!m) {
        fprintf(stderr, "bench: %s (run `bench_engine %s --prepare` first)\n", err.msg, work);
        return 1;
    }
    const model_config *c = &m->cfg;
    /* n_ad adapters (--adapters, default 8), each its own copy in memory (the two files
     * loaded n_ad / 2 times each), so a step really reads n_ad sets of A and B. */
    peft_adapter *ad[MAX_ADAPTERS];
    variant_mix mixes[MAX_ADAPTERS];
    for (int i = 0; i < n_ad; i++) {
        if (!(ad[i] = peft_load(adir[i % 2], c, NULL, &err))) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
        mixes[i] = (variant_mix){.n = 1, .t = {{ad[i]->w, 1.0f}}};
    }
    engine_options eo = engine_options_default();
    eo.max_seqs = MAX_SEQS;
    eo.max_ctx = 1024;
    engine *e = engine_create(m, &eo, &err);
    if (!e) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    int prompt[PROMPT + MAX_SEQS];
    for (int i = 0; i < PROMPT + MAX_SEQS; i++)
        prompt[i] = (int)((i * 7919u + 13) % (unsigned)c->vocab_size);

    /* Per step: every layer matrix once, the lm_head (tied: the embedding) once, plus
     * each distinct adapter's A and B once; 2 flops per weight per row, the same for
     * each row's adapter, plus attention over ~PROMPT + steps/2 keys (small here). */
    double base_bytes = (double)m->weight_bytes, params = 0;
    if (!c->tie_embeddings)
        base_bytes -= (double)c->vocab_size * c->hidden * sizeof(float);
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out, in;
        model_config_proj_shape(c, (model_proj)p, &out, &in);
        params += (double)out * in;
    }
    params = params * c->n_layers + (double)c->vocab_size * c->hidden;
    double ad_params = (double)ad[0]->w->bytes / sizeof(float);
    double attn_flops = 4.0 * c->n_layers * c->n_heads * c->head_dim * (PROMPT + steps / 2.0);

    /* The machine's bandwidth and FMA peak move within minutes (a shared host): both are
     * measured just before each row count's runs in every repetition, and each step time
     * is held against the bound from the measurements next to it. */
    double t_base[32][8], t_ad[32][8], bw_at[32][8], peak_at[32][8];
    time_steps(e, 4, NULL, 0, 2, prompt, NULL);  /* warm up */
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < n_rows; kk++) {
            int k = (kk + r) % n_rows;
            bw_at[k][r] = bench_read_bandwidth_keep((size_t)base_bytes, 1);
            peak_at[k][r] = bench_fma_peak(2);
            /* alternate which case runs first, so drift hits both alike */
            for (int c2 = 0; c2 < 2; c2++) {
                int adapters = (c2 + r) % 2;
                double t = time_steps(e, rows[k], mixes, adapters ? n_ad : 0, steps,
                                      prompt, profile && (r > 0 || reps == 1)
                                                  ? &prof[adapters][k] : NULL);
                if (t < 0)
                    return 1;
                (adapters ? t_ad : t_base)[k][r] = t;
            }
        }
    bench_read_bandwidth_keep((size_t)base_bytes, 0);   /* frees the buffer */
    double all_bw[32 * 8], all_peak[32 * 8];
    int n_all = 0;
    for (int k = 0; k < n_rows; k++)
        for (int r = 0; r < reps; r++, n_all++) {
            all_bw[n_all] = bw_at[k][r];
            all_peak[n_all] = peak_at[k][r];
        }
    double bw = bench_median(all_bw, n_all), peak = bench_median(all_peak, n_all);
    double bw_lo, bw_hi, pk_lo, pk_hi;
    bench_range(all_bw, n_all, &bw_lo, &bw_hi);
    bench_range(all_peak, n_all, &pk_lo, &pk_hi);

    printf("\nlorad decode step against batch size (random SmolLM2-135M shape, %s weights; "
           "rank-16 adapters on all 7 projections; %d interleaved repetitions x %d steps, "
           "medians)\n", wtensor_type_name(model_matrix_type(m)), reps, steps);
    printf("machine (medians of the measurements before each row count's runs): read "
           "bandwidth %.1f GB/s (%.1f-%.1f), FMA peak %.1f GFLOP/s (%.1f-%.1f; 2 threads)\n",
           bw / 1e9, bw_lo / 1e9, bw_hi / 1e9, peak / 1e9, pk_lo / 1e9, pk_hi / 1e9);
    printf("bound = max(bytes / bandwidth, flops / peak) per step with the measurements next "
           "to the run; 'of bound' = the median over repetitions of bound / step time; 'bound "
           "ms' the median bound\n\n");
    char ad_ms[16], ad_ratio[16];
    snprintf(ad_ms, sizeof ad_ms, "%d ad. ms", n_ad);
    snprintf(ad_ratio, sizeof ad_ratio, "%d ad/base", n_ad);
    printf("%5s | %10s %10s %9s %9s | %10s %10s %9s %9s | %8s\n", "rows", "base ms", "bound ms",
           "of bound", "tok/s", ad_ms, "bound ms", "of bound", "tok/s", ad_ratio);
    FILE *tf = tsv ? fopen(tsv, "w") : NULL;
    if (tf)
        fprintf(tf, "rows\tbase_ms\tbase_bound_ms\tadapters_ms\tadapters_bound_ms\n");
    for (int k = 0; k < n_rows; k++) {
        int n = rows[k], distinct = n < n_ad ? n : n_ad;
        double tb = bench_median(t_base[k], reps), ta = bench_median(t_ad[k], reps);
        double fb = n * (2 * params + attn_flops), fa = fb + n * 2 * ad_params;
        double bb = base_bytes, ba = base_bytes + distinct * ad_params * sizeof(float);
        double lbr[8], lar[8], ofb[8], ofa[8], pair[8];
        for (int r = 0; r < reps; r++) {
            double w = bw_at[k][r], f = peak_at[k][r];
            lbr[r] = bb / w > fb / f ? bb / w : fb / f;
            lar[r] = ba / w > fa / f ? ba / w : fa / f;
            ofb[r] = lbr[r] / t_base[k][r];
            ofa[r] = lar[r] / t_ad[k][r];
            pair[r] = t_base[k][r] / t_ad[k][r];
        }
        double lb = bench_median(lbr, reps), la = bench_median(lar, reps);
        printf("%5d | %10.2f %10.2f %8.0f%% %9.1f | %10.2f %10.2f %8.0f%% %9.1f | %7.2fx\n", n,
               tb * 1e3, lb * 1e3, 100 * bench_median(ofb, reps), n / tb, ta * 1e3, la * 1e3,
               100 * bench_median(ofa, reps), n / ta, bench_median(pair, reps));
        if (tf)
            fprintf(tf, "%d\t%.3f\t%.3f\t%.3f\t%.3f\n", n, tb * 1e3, lb * 1e3, ta * 1e3,
                    la * 1e3);
    }
    if (tf)
        fclose(tf);
    for (int a = 0; profile && a < 2; a++) {
        printf("\nwhere a step's time goes, %s (--profile; ms per step, the mean over the "
               "timed steps of every repetition but the first, whose steps also map the KV "
               "cache's fresh memory)\n%5s |", a ? "adapters" : "base", "rows");
        for (int ph = 0; ph < FWD_PH_COUNT; ph++)
            printf(" %9s", forward_phase_names[ph]);
        printf(" | %9s\n", "sum");
        for (int k = 0; k < n_rows; k++) {
            double sum = 0, per = 1e3 / (double)((reps > 1 ? reps - 1 : 1) * steps);
            printf("%5d |", rows[k]);
            for (int ph = 0; ph < FWD_PH_COUNT; ph++) {
                printf(" %9.2f", prof[a][k].sec[ph] * per);
                sum += prof[a][k].sec[ph] * per;
            }
            printf(" | %9.2f\n", sum);
        }
    }
    engine_destroy(e);
    for (int i = 0; i < n_ad; i++)
        peft_free(ad[i]);
    model_free(m);
    return 0;
}
