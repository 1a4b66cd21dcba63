/* bench_weights: the base weights held in F32, BF16 and Q8 (--weights) on the random
 * SmolLM2-135M-shaped model of bench_engine: decode (one sequence, base and one rank-16
 * adapter on the fly) and prefill (a 512-token prompt) per precision, each against its
 * own bandwidth bound (the bytes it holds per token ÷ the machine's read bandwidth,
 * measured just before that decode), the three interleaved so machine noise hits them
 * alike and every ratio taken within one repetition; where a decode step's time goes; the
 * products alone; then decode per kernel family (portable, AVX2, AVX-512, AVX-512 BF16)
 * this CPU runs.
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
#include "core/pool.h"
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

/* The products of one decode step alone (one row of X; no attention, norms or sampling),
 * on a pool of 2 threads: as decode issues them — per layer one pass for q/k/v, one for
 * o, one for gate/up, one for down, then lm_head: 4 · layers + 1 passes — and the same
 * products in 2 passes (all those reading a hidden-sized input, then every down). The
 * difference per extra pass is the fixed cost of a pass (dispatch, the tasks' claims,
 * each task starting on cold memory, the wait for the last one), which a precision with
 * fewer bytes does not shrink. */
static void products_alone(model *const *m, const wt_type *types, int nw, int reps)
{
    const model_config *c = &m[0]->cfg;
    int L = c->n_layers, H = c->hidden, I = c->intermediate;
    pool *p = pool_create(2, NULL);
    size_t n_jobs = (size_t)7 * L + 1;
    smallmm_xmt *jobs = calloc(n_jobs, sizeof *jobs);
    int *in = calloc(n_jobs, sizeof *in), *pass = calloc(n_jobs, sizeof *pass);
    float *x = calloc((size_t)I, sizeof *x);
    size_t ycap = (size_t)c->vocab_size +
                  (size_t)L * (4 * (size_t)H + 2 * (size_t)I + 2 * (size_t)H);
    float *y = calloc(ycap, sizeof *y);
    if (!p || !jobs || !in || !pass || !x || !y) {
        fprintf(stderr, "bench_weights: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < I; i++)
        x[i] = (float)((i * 37) % 17 - 8) / 8.0f;
    static const int group[PROJ_COUNT] = {[PROJ_Q] = 0, [PROJ_K] = 0, [PROJ_V] = 0,
                                          [PROJ_O] = 1, [PROJ_GATE] = 2, [PROJ_UP] = 2,
                                          [PROJ_DOWN] = 3};
    printf("\nproducts alone (one row, 2 threads; %d passes as decode issues them, then the "
           "same products in 2)\n", 4 * L + 1);
    printf("%-7s %9s %14s %9s %14s %9s %12s\n", "weights", "MB", "decode's ms", "GB/s",
           "2 passes ms", "GB/s", "us per pass");
    for (int k = 0; k < nw; k++) {
        size_t n = 0, yo = 0;
        double mb = 0;
        for (int l = 0; l < L; l++)
            for (int q = 0; q < PROJ_COUNT; q++) {
                int rows, cols;
                model_config_proj_shape(c, (model_proj)q, &rows, &cols);
                jobs[n] = (smallmm_xmt){x, 1, m[k]->layers[l].w[q], rows, y + yo, rows};
                in[n] = cols;
                pass[n] = 4 * l + group[q];
                yo += (size_t)rows;
                mb += wtensor_arena_bytes(types[k], rows, cols) / 1e6;
                n++;
            }
        jobs[n] = (smallmm_xmt){x, 1, m[k]->lm_head, c->vocab_size, y + yo, c->vocab_size};
        in[n] = H;
        pass[n] = 4 * L;
        mb += wtensor_arena_bytes(types[k], c->vocab_size, H) / 1e6;
        n++;
        /* the 2-pass order: every hidden-input product, then every down */
        smallmm_xmt *two = calloc(n, sizeof *two);
        if (!two) {
            fprintf(stderr, "bench_weights: out of memory\n");
            exit(1);
        }
        size_t nh = 0;
        for (size_t j = 0; j < n; j++)
            if (in[j] == H)
                two[nh++] = jobs[j];
        for (size_t j = 0, nd = nh; j < n; j++)
            if (in[j] != H)
                two[nd++] = jobs[j];
        double many[MAX_REPS], few[MAX_REPS];
        for (int r = 0; r < reps + 1; r++) {
            double t0 = now();
            for (size_t j = 0; j < n;) {
                size_t e = j;
                while (e < n && pass[e] == pass[j])
                    e++;
                smallmm_xmt_run(p, in[j], jobs + j, (int)(e - j));
                j = e;
            }
            double t1 = now();
            smallmm_xmt_run(p, H, two, (int)nh);
            smallmm_xmt_run(p, I, two + nh, (int)(n - nh));
            double t2 = now();
            if (r > 0) {  /* the first is a warm-up */
                many[r - 1] = t1 - t0;
                few[r - 1] = t2 - t1;
            }
        }
        double tm = median(many, reps), tf = median(few, reps);
        printf("%-7s %9.0f %14.2f %9.1f %14.2f %9.1f %12.2f\n", wtensor_type_name(types[k]), mb,
               tm * 1e3, mb / tm / 1e3, tf * 1e3, mb / tf / 1e3,
               (tm - tf) / (4 * L + 1 - 2) * 1e6);
        free(two);
    }
    pool_free(p);
    free(jobs);
    free(in);
    free(pass);
    free(x);
    free(y);
}

/* Where a decode step's time goes, per precision: one sequence on the base, a 1-token
 * prompt (so every pass is one row), `reps` rounds rotating the precisions; ms per pass,
 * the phases of forward_profile, each the mean over a round's passes, then the median over
 * rounds. What is not the products (norms, attention, the KV stores, SwiGLU, the residual
 * adds, drawing) does not shrink with the weights' bytes and bounds the ratios. */
static int phases(engine *const *e, const wt_type *types, int nw, const int *prompt,
                  int tokens, int reps)
{
    double ph[3][FWD_PH_COUNT][MAX_REPS] = {{{0}}};
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < nw; kk++) {
            int k = (kk + r) % nw;
            forward_profile prof = {0};
            double p, d;
            engine_set_profile(e[k], &prof);
            int rc = run_one(e[k], prompt, 1, tokens, NULL, &p, &d);
            engine_set_profile(e[k], NULL);
            if (rc || prof.passes <= 0)
                return -1;
            for (int i = 0; i < FWD_PH_COUNT; i++)
                ph[k][i][r] = prof.sec[i] / (double)prof.passes * 1e3;
        }
    printf("\nwhere a decode step's time goes (one sequence, base; ms per step, the median "
           "over %d rounds of each round's mean)\n%-7s", reps, "weights");
    for (int i = 0; i < FWD_PH_COUNT; i++)
        printf(" %9s", forward_phase_names[i]);
    printf(" | %9s %9s\n", "products", "others");
    static const int prod[] = {FWD_PH_QKV, FWD_PH_O, FWD_PH_GATE_UP, FWD_PH_DOWN,
                               FWD_PH_LM_HEAD};
    for (int k = 0; k < nw; k++) {
        double sum = 0, pr = 0;
        printf("%-7s", wtensor_type_name(types[k]));
        for (int i = 0; i < FWD_PH_COUNT; i++) {
            double v = median(ph[k][i], reps);
            printf(" %9.3f", v);
            sum += v;
            for (size_t j = 0; j < sizeof prod / sizeof *prod; j++)
                pr += i == prod[j] ? v : 0;
        }
        printf(" | %9.3f %9.3f\n", pr, sum - pr);
    }
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
    /* The machine's read bandwidth changes by up to 1.6x within minutes (shared host): it
     * is measured just before each precision's decode in every repetition, and each run is
     * held against the measurement next to it. */
    double dec[NW][2][MAX_REPS], pre[NW][MAX_REPS], bwr[NW][MAX_REPS], dummy;
    for (int k = 0; k < NW; k++)
        run_one(e[k], prompt, 16, 8, NULL, &dummy, &dummy);   /* warm up */
    for (int r = 0; r < reps; r++)
        for (int kk = 0; kk < NW; kk++) {
            int k = (kk + r) % NW;
            double p, d;
            if (run_one(e[k], prompt, 512, 1, NULL, &p, &d))
                return 1;
            pre[k][r] = 512 / p;
            bwr[k][r] = bench_read_bandwidth_keep(bytes[0], 1);
            for (int a = 0; a < 2; a++) {
                if (run_one(e[k], prompt, 16, decode_tokens + 1, a ? &one : NULL, &p, &d))
                    return 1;
                dec[k][a][r] = d;
            }
        }
    bench_read_bandwidth_keep(bytes[0], 0);   /* frees the buffer */
    double all_bw[NW * MAX_REPS];
    for (int k = 0; k < NW; k++)
        for (int r = 0; r < reps; r++)
            all_bw[k * reps + r] = bwr[k][r];
    double bw_lo, bw_hi;
    bench_range(all_bw, NW * reps, &bw_lo, &bw_hi);

    printf("\nlorad weight precisions (random SmolLM2-135M shape, %d layers; --weights; "
           "kernels %s; OpenBLAS %s; %d interleaved repetitions, medians)\n", c->n_layers,
           smallmm_isa_name(smallmm_get_isa()), blas_kernels(), reps);
    printf("read bandwidth %.1f GB/s (median; %.1f-%.1f: measured before each precision's "
           "decode in every repetition)\n", median(all_bw, NW * reps) / 1e9, bw_lo / 1e9,
           bw_hi / 1e9);
    printf("of bound: decode tok/s x bytes per token / the bandwidth measured next to the run; "
           "vs f32: against f32 in the same repetition (medians of those ratios)\n");
    printf("\n%-6s %9s %9s %12s %9s %9s %14s %10s %12s %9s\n", "weights", "MB/token",
           "load s", "decode tok/s", "of bound", "vs f32", "+adapter tok/s", "adapter",
           "prefill tok/s", "vs f32");
    for (int k = 0; k < NW; k++) {
        double d = median(dec[k][0], reps), da = median(dec[k][1], reps);
        double p = median(pre[k], reps);
        /* paired ratios: each repetition's runs against each other and the bandwidth */
        double ad_r[MAX_REPS], of_r[MAX_REPS], vs_r[MAX_REPS], pre_r[MAX_REPS];
        for (int r = 0; r < reps; r++) {
            ad_r[r] = dec[k][1][r] / dec[k][0][r];
            of_r[r] = dec[k][0][r] * (double)bytes[k] / bwr[k][r];
            vs_r[r] = dec[k][0][r] / dec[0][0][r];
            pre_r[r] = pre[k][r] / pre[0][r];
        }
        printf("%-7s %9.0f %9.2f %12.1f %8.0f%% %8.2fx %14.1f %9.1f%% %12.1f %8.2fx\n",
               wtensor_type_name(types[k]), bytes[k] / 1e6, load_s[k], d,
               100 * median(of_r, reps), median(vs_r, reps), da,
               100 * (1 - median(ad_r, reps)), p, median(pre_r, reps));
    }
    printf("adapter: rank 16 on all 7 projections, %.1f MB of F32 A and B read per token "
           "(%.0f%% / %.0f%% / %.0f%% of the f32 / bf16 / q8 base bytes)\n",
           ad->w->bytes / 1e6, 100.0 * ad->w->bytes / bytes[0],
           100.0 * ad->w->bytes / bytes[1], 100.0 * ad->w->bytes / bytes[2]);

    if (phases(e, types, NW, prompt, decode_tokens + 1, reps))
        return 1;
    products_alone(m, types, NW, reps);

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
