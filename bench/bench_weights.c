/* bench_weights: the base weights held in F32, BF16 and Q8 (--weights) on the random
 * SmolLM2-135M-shaped model of bench_engine: decode (one sequence, base and one rank-16
 * adapter on the fly) and prefill (a 512-token prompt) per precision, each against its
 * own bandwidth bound (the bytes it holds per token ÷ the machine's read bandwidth,
 * measured in the same run), the three interleaved so machine noise hits them alike; then
 * decode per kernel family (portable, AVX2, AVX-512, AVX-512 BF16) this CPU runs.
 * Usage: bench_weights [WORKDIR] [--quick] (WORKDIR as bench_engine's, which writes the
 * model on first use: run `make bench` or bench_engine --prepare first). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/smallmm.h"
#include "bench/benchutil.h"

#define now bench_now
#define median bench_median

enum { MAX_REPS = 16 };

/* One request; prefill seconds and decode tokens/s (the first token excluded). */
static int run_one(engine *e, const int *prompt, int n_prompt, int max_tokens,
                   const variant_mix *lora, double *prefill_s, double *decode_tps)
{
    bench_timing t;
    double t0;
    if (bench_run_request(e, prompt, n_prompt, max_tokens, NULL, lora, &t, &t0))
        return -1;
    *prefill_s = t.t_first - t0;
    *decode_tps = t.n > 1 ? (t.n - 1) / (t.t_last - t.t_first) : 0;
    return 0;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    const char *work = "build/bench-data";
    int quick;
    bench_args(argc, argv, &work, &quick);
    int reps = quick ? 3 : 9, decode_tokens = quick ? 64 : 128;
    char mdir[4096], adir[4096];
    snprintf(mdir, sizeof mdir, "%s/smollm2-135m-random", work);
    snprintf(adir, sizeof adir, "%s/adapter-r16-a", work);

    enum { NW = 3 };
    static const wt_type types[NW] = {WT_F32, WT_BF16, WT_Q8};
    model *m[NW] = {0};
    engine *e[NW] = {0};
    peft_adapter *ad = NULL;
    lr_error err = {0};
    double load_s[NW];
    for (int k = 0; k < NW; k++) {
        double t0 = now();
        m[k] = model_load_with(mdir, &(model_load_opts){(int)types[k], NULL, NULL}, &err);
        load_s[k] = now() - t0;
        engine_options eo = engine_options_default();
        eo.max_seqs = 1;
        if (!m[k] || !(e[k] = engine_create(m[k], &eo, &err))) {
            fprintf(stderr, "bench_weights: %s (run bench_engine --prepare %s first)\n",
                    err.msg, work);
            return 1;
        }
    }
    const model_config *c = &m[0]->cfg;
    if (!(ad = peft_load(adir, c, NULL, &err))) {
        fprintf(stderr, "bench_weights: %s\n", err.msg);
        return 1;
    }
    variant_mix one = {.n = 1, .t = {{ad->w, 1.0f}}};
    int prompt[512];
    for (int i = 0; i < 512; i++)
        prompt[i] = (int)((i * 7919u + 13) % (unsigned)c->vocab_size);

    /* Bytes decode reads per token: every matrix once (tied: the embedding is the lm_head;
     * its one row looked up is negligible), plus the adapter's A and B with one. */
    size_t bytes[NW];
    for (int k = 0; k < NW; k++)
        bytes[k] = m[k]->weight_bytes;
    double bw = bench_read_bandwidth(bytes[0]);

    double dec[NW][2][MAX_REPS], pre[NW][MAX_REPS], dummy;
    for (int k = 0; k < NW; k++)
        run_one(e[k], prompt, 16, 8, NULL, &dummy, &dummy);   /* warm up */
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < NW; kk++) {
            int k = (kk + r) % NW;
            double p, d;
            if (run_one(e[k], prompt, 512, 1, NULL, &p, &d))
                return 1;
            pre[k][r] = 512 / p;
            for (int a = 0; a < 2; a++) {
                if (run_one(e[k], prompt, 16, decode_tokens + 1, a ? &one : NULL, &p, &d))
                    return 1;
                dec[k][a][r] = d;
            }
        }
    double bw_after = bench_read_bandwidth(bytes[0]);
    if (bw_after > bw)
        bw = bw_after;

    printf("\nlorad weight precisions (random SmolLM2-135M shape, %d layers; --weights; "
           "kernels %s; OpenBLAS %s; %d interleaved repetitions, medians)\n", c->n_layers,
           smallmm_isa_name(smallmm_get_isa()), blas_kernels(), reps);
    printf("read bandwidth %.1f GB/s (higher of before/after the runs)\n", bw / 1e9);
    printf("\n%-6s %9s %9s %12s %9s %9s %14s %10s %12s %9s\n", "weights", "MB/token",
           "load s", "decode tok/s", "of bound", "vs f32", "+adapter tok/s", "adapter",
           "prefill tok/s", "vs f32");
    double d0 = median(dec[0][0], reps), p0 = median(pre[0], reps);
    for (int k = 0; k < NW; k++) {
        double d = median(dec[k][0], reps), da = median(dec[k][1], reps);
        double p = median(pre[k], reps);
        double bound = bw / (double)bytes[k];
        /* the adapter's cost: the paired ratio of each repetition's two runs */
        double ratio[MAX_REPS];
        for (int r = 0; r < reps; r++)
            ratio[r] = dec[k][1][r] / dec[k][0][r];
        printf("%-7s %9.0f %9.2f %12.1f %8.0f%% %8.2fx %14.1f %9.1f%% %12.1f %8.2fx\n",
               wtensor_type_name(types[k]), bytes[k] / 1e6, load_s[k], d, 100 * d / bound,
               d / d0, da, 100 * (1 - median(ratio, reps)), p, p / p0);
    }
    printf("adapter: rank 16 on all 7 projections, %.1f MB of F32 A and B read per token "
           "(%.0f%% / %.0f%% / %.0f%% of the f32 / bf16 / q8 base bytes)\n",
           ad->w->bytes / 1e6, 100.0 * ad->w->bytes / bytes[0],
           100.0 * ad->w->bytes / bytes[1], 100.0 * ad->w->bytes / bytes[2]);

    /* Decode per kernel family, base only, fewer repetitions. */
    printf("\n%-9s %12s %12s %12s   (decode tok/s, base)\n", "kernels", "f32", "bf16", "q8");
    for (int isa = SMALLMM_PORTABLE; isa <= SMALLMM_AVX512BF16; isa++) {
        if (smallmm_set_isa((smallmm_isa)isa) != 0) {
            printf("%-9s %12s\n", smallmm_isa_name((smallmm_isa)isa), "(not on this CPU)");
            continue;
        }
        double v[NW][MAX_REPS];
        int n = quick ? 1 : 3;
        for (int r = 0; r < n; r++)
            for (int k = 0; k < NW; k++) {
                double p;
                if (run_one(e[k], prompt, 16, decode_tokens / 2 + 1, NULL, &p, &v[k][r]))
                    return 1;
            }
        printf("%-9s %12.1f %12.1f %12.1f\n", smallmm_isa_name((smallmm_isa)isa),
               median(v[0], n), median(v[1], n), median(v[2], n));
    }
    smallmm_set_isa(SMALLMM_AUTO);

    peft_free(ad);
    for (int k = 0; k < NW; k++) {
        engine_destroy(e[k]);
        model_free(m[k]);
    }
    return 0;
}
