/* forward_batch: embedding → n_layers × (RMSNorm, attention, RMSNorm, SwiGLU) → norm →
 * lm_head, over the stacked rows of a batch of sequences. Activations and sums in F32;
 * the base matrices in the model's precision (F32, BF16 or Q8). Matrix products by
 * smallmm, base weights and adapters together, reading BF16/Q8 weights directly, in
 * windows of at most SMALLMM_MAX_ROWS rows (a prompt-sized batch takes several; see
 * project). Everything parallel runs on the engine's own pool: the products, attention
 * and, for prompt-sized batches, the row-wise steps; everything else plain loops the
 * compiler vectorizes. */
#include "forward.h"

#include <unistd.h>

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pool.h"
#include "smallmm.h"
#include "vec16.h"

/* A row-parallel elementwise job: y, x [n, d]; w [d] for RMSNorm; add [n, d]: for
 * RMSNorm, added into x (then not const: the residual stream) before x is normed. */
typedef struct {
    int op;
    float *y;
    const float *x;
    const float *w;
    const float *add;
    int d, n;
    int per_task;  /* rows per task */
} rows_job;

/* One unit of attention work: query rows [r0, r1) of sequence seq, head h; or, for a
 * sequence decoding one row (r0 = 0, r1 = 1), with heads > 1, the heads [head, head +
 * heads): one KV head's group (grouped-query attention), or all of them (many sequences);
 * the heads of a group meet each key and value in one pass, as consecutive positions do
 * in prefill. store: the task first applies RoPE to its row and stores its key and value
 * (kv_store_seq) — a task of all of a row's heads, which alone reads that row's cache. */
typedef struct {
    int seq, head, heads, r0, r1, store;
} attn_task;

#define ATTN_ROWS 4      /* query rows that share one pass over the keys */
#define ATTN_TASK_ROWS 32 /* rows per task during prefill */

/* Below this many multiply-adds per layer, attention runs on the calling thread: handing
 * tasks to the workers (spinning between the steps' jobs, so ~1 µs away) costs more than
 * it saves. A decode step of one sequence at position p is ~n_heads·hd·p: parallel from a
 * few dozen positions on. */
#define ATTN_INLINE_WORK 2e4

/* The bytes of the next product's weights a thread reads first, which it prefetches while
 * it works on what comes between two products (attention, a norm, SwiGLU): two lines per
 * step of those loops (lead_touch), up to where the cursor ends. A product's first reads
 * otherwise wait on memory that nothing had asked for, while memory idled through the
 * gap (~10% of an 8-row step). See plan_lead. One cache line per thread: each thread
 * moves only its own. */
typedef struct {
    _Alignas(64) const char *p;
    const char *end;
} lead_cursor;

static inline void lead_touch(lead_cursor *c)
{
    if (c->p < c->end) {
        __builtin_prefetch(c->p, 0, 2);
        __builtin_prefetch(c->p + 64, 0, 2);
        c->p += 128;
    }
}

/* Bytes a thread prefetches ahead of one product: 3/4 of a core's L2 (768 KB on Zen 4;
 * 384 KB on Zen 3), so the lines are still there when the product reads them, and so many
 * that the longest gap (attention) does not run out of them. Without the size from the
 * C library, 512 KB. */
static size_t lead_bytes_default(void)
{
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? (size_t)l2 / 4 * 3 : (size_t)512 << 10;
}

struct forward_ctx {
    const model *m;
    int max_rows;
    float *x;        /* [R, hidden] residual stream */
    float *xn;       /* [R, max(hidden, q_dim, inter)] normed input of a projection */
    float *q;        /* [R, q_dim] */
    float *k;        /* [R, kv_dim] */
    float *v;        /* [R, kv_dim] */
    float *att;      /* [R, q_dim] attention output before o_proj */
    float *gate;     /* [R, inter] */
    float *up;       /* [R, inter] */
    float *out;      /* [R, hidden] o_proj / down_proj output */
    float *cos_t;    /* [R, head_dim/2] rotary cos per row */
    float *sin_t;    /* [R, head_dim/2] */
    double *inv_freq;/* [head_dim/2] (llama3 scaling applied) */
    float *lora;     /* [lora_cap] on-the-fly adapter scratch */
    size_t lora_cap;
    /* the products of one decode-sized project() call: base W per (run, projection),
     * X·Aᵀ and ·Bᵀ per (run, adapter term, projection) */
    smallmm_xmt small_xmt[SMALLMM_MAX_ROWS * VARIANT_GROUP_MAX * (1 + VARIANT_MAX_TERMS)];
    smallmm_tb small_tb[SMALLMM_MAX_ROWS * VARIANT_GROUP_MAX * VARIANT_MAX_TERMS];
    pool *pool;      /* the engine's own threads: attention */
    forward_profile *prof;  /* NULL unless profiling (forward_set_profile) */
    double prof_t;          /* when the phase being timed began */
    float **scores;  /* per thread: [ATTN_ROWS, scores_cap] scores of a block of rows */
    size_t scores_cap;
    attn_task *tasks;/* [tasks_cap] (sequence, head, rows) units of attention work */
    int tasks_cap, n_tasks;
    int *row0;       /* [n_seqs + 1] first row of each sequence */
    int *kv_seqs;    /* [n_seqs] the sequences whose keys and values kv_store_task stores */
    int row0_cap, n_kv_seqs;
    /* the layer being computed, for the attention tasks */
    forward_seq *cur_seqs;
    int cur_layer;
    double attn_work;  /* multiply-adds of this batch's attention, per layer (about) */
    rows_job rows;     /* the current row-parallel elementwise job */
    lead_cursor *lead; /* per thread: what to prefetch before the next product (plan_lead) */
    size_t lead_bytes; /* bytes each thread prefetches ahead of a product */
};

static void *xmalloc_floats(size_t n)
{
    return malloc((n ? n : 1) * sizeof(float));
}

/* inv_freq as transformers computes it, including llama3 rope_scaling. */
static void rope_init(const model_config *c, double *inv_freq)
{
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (2.0 * i) / c->head_dim);
        if (c->rope_llama3) {
            double old_ctx = c->rope_original_max_positions;
            double low_wl = old_ctx / c->rope_low_freq_factor;
            double high_wl = old_ctx / c->rope_high_freq_factor;
            double wl = 2.0 * M_PI / f;
            if (wl > low_wl) {
                f = f / c->rope_factor;
            } else if (wl >= high_wl) {
                double smooth = (old_ctx / wl - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

forward_ctx *forward_create(const model *m, int max_rows, int n_threads, lr_error *err)
{
    const model_config *c = &m->cfg;
    forward_ctx *f = calloc(1, sizeof *f);
    if (!f)
        goto oom;
    f->m = m;
    f->max_rows = max_rows;
    size_t R = (size_t)max_rows;
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    int wide = c->hidden > q_dim ? c->hidden : q_dim;
    if (c->intermediate > wide)
        wide = c->intermediate;
    f->x = xmalloc_floats(R * c->hidden);
    f->xn = xmalloc_floats(R * wide);
    f->q = xmalloc_floats(R * q_dim);
    f->k = xmalloc_floats(R * kv_dim);
    f->v = xmalloc_floats(R * kv_dim);
    f->att = xmalloc_floats(R * q_dim);
    f->gate = xmalloc_floats(R * c->intermediate);
    f->up = xmalloc_floats(R * c->intermediate);
    f->out = xmalloc_floats(R * c->hidden);
    f->cos_t = xmalloc_floats(R * (c->head_dim / 2));
    f->sin_t = xmalloc_floats(R * (c->head_dim / 2));
    f->inv_freq = malloc(sizeof(double) * (size_t)(c->head_dim / 2));
    if (!f->x || !f->xn || !f->q || !f->k || !f->v || !f->att || !f->gate || !f->up ||
        !f->out || !f->cos_t || !f->sin_t || !f->inv_freq)
        goto oom;
    rope_init(c, f->inv_freq);
    long ncpu = n_threads > 0 ? n_threads : sysconf(_SC_NPROCESSORS_ONLN);
    int nt = ncpu < 1 ? 1 : ncpu > 16 ? 16 : (int)ncpu;
    f->pool = pool_create(nt, err);
    /* Every product of a step runs on the pool (smallmm). What lorad still gives OpenBLAS
     * is background work beside the engine — building a merged W' (variant.c) — which
     * must take one core at most: one thread, process-wide. */
    openblas_set_num_threads(1);
    f->scores = calloc((size_t)nt, sizeof *f->scores);
    f->lead = aligned_alloc(64, sizeof *f->lead * (size_t)nt);
    if (!f->pool || !f->scores || !f->lead)
        goto oom;
    for (int t = 0; t < nt; t++)
        f->lead[t] = (lead_cursor){NULL, NULL};
    f->lead_bytes = lead_bytes_default();
    return f;
oom:
    forward_free(f);
    lr_error_set(err, LR_ENOMEM, "out of memory for a batch of %d rows", max_rows);
    return NULL;
}

void forward_free(forward_ctx *f)
{
    if (!f)
        return;
    free(f->x); free(f->xn); free(f->q); free(f->k); free(f->v); free(f->att);
    free(f->gate); free(f->up); free(f->out); free(f->cos_t); free(f->sin_t);
    free(f->inv_freq); free(f->lora); free(f->row0); free(f->kv_seqs); free(f->tasks);
    if (f->scores && f->pool)
        for (int t = 0; t < pool_threads(f->pool); t++)
            free(f->scores[t]);
    free(f->scores);
    free(f->lead);
    pool_free(f->pool);
    free(f);
}

int forward_threads(const forward_ctx *f)
{
    return pool_threads(f->pool);
}

void forward_wake(forward_ctx *f)
{
    if (f)
        pool_wake(f->pool);
}

void forward_run(forward_ctx *f, void (*fn)(void *ctx, int task, int thread), void *ctx,
                 int n_tasks)
{
    pool_run(f->pool, fn, ctx, n_tasks);
}

/* Tasks [0, n_tasks) of fn over f: on the pool, or all on this thread when here (work too
 * small to be worth the other threads). */
static void run_tasks(forward_ctx *f, pool_fn fn, int n_tasks, int here)
{
    if (here)
        for (int t = 0; t < n_tasks; t++)
            fn(f, t, 0);
    else
        pool_run(f->pool, fn, f, n_tasks);
}

/* y [n, d] = x · rsqrt(mean(x²) + eps) · w, row by row; fp32 sums as transformers does
 * (hidden_states.to(float32).pow(2).mean()), 16 lanes at a time — as two 8-float vectors:
 * this file is built for AVX2, where GCC kept a 16-float accumulator on the stack, stored
 * in 16-byte halves and reloaded whole, so every iteration waited on a failed store
 * forward (a 64-row norm of 576 took 29-33 µs in cache; 7.8 µs so, the same sums). */
static void rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps,
                    lead_cursor *pf)
{
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        float *yr = y + (size_t)r * d;
        v8 lo = {0}, hi = {0};  /* lanes 0-7 and 8-15 */
        int i = 0;
        for (; i + 16 <= d; i += 16) {
            lead_touch(pf);
            v8 a = ld8(xr + i), b = ld8(xr + i + 8);
            lo += a * a;
            hi += b * b;
        }
        float ss = 0;
        for (; i < d; i++)
            ss += xr[i] * xr[i];
        for (int k = 0; k < 8; k++)
            ss += lo[k];
        for (int k = 0; k < 8; k++)
            ss += hi[k];
        float inv = 1.0f / sqrtf(ss / d + eps);
        for (i = 0; i < d; i++)
            yr[i] = xr[i] * inv * w[i];
    }
}

/* outs[k]: the outputs of projection ps[k], k < n_ps; returns their input length (the
 * same for all of a group). */
static int proj_shapes(const model_config *c, const model_proj *ps, int n_ps, int *outs)
{
    int in = 0;
    for (int k = 0; k < n_ps; k++)
        model_config_proj_shape(c, ps[k], &outs[k], &in);
    return in;
}

/* The products of rows [w0, w1) (at most SMALLMM_MAX_ROWS) of the projections
 * p[0..n_ps) of one layer, all reading x, as one smallmm pass, in f->small_xmt [*nx] and
 * f->small_tb [*nt]: the base W (or W') per run of sequences sharing it, and each
 * on-the-fly adapter term's X·Aᵀ per run of sequences sharing a mix, then every ·Bᵀ. A
 * run that straddles the window's edges contributes the rows inside it. */
static void window_jobs(forward_ctx *f, const forward_seq *seqs, int n_seqs, int layer,
                        const model_proj *ps, int n_ps, const int *outs, int in,
                        const float *x, float *const *ys, int w0, int w1, int *n_xmt,
                        int *n_tb)
{
    const model *m = f->m;
    int nx = 0, nt = 0;
    smallmm_xmt *xa = f->small_xmt;
    smallmm_tb *tb = f->small_tb;
    for (int k = 0; k < n_ps; k++)
        for (int s = 0; s < n_seqs;) {
            const wtensor *w = variant_weight(m, seqs[s].merged, layer, ps[k]);
            int e = s + 1;
            while (e < n_seqs &&
                   variant_weight(m, seqs[e].merged, layer, ps[k])->data == w->data)
                e++;
            int r0 = f->row0[s] > w0 ? f->row0[s] : w0;
            int r1 = f->row0[e] < w1 ? f->row0[e] : w1;
            if (r0 < r1)
                xa[nx++] = (smallmm_xmt){x + (size_t)r0 * in, r1 - r0, *w, outs[k],
                                         ys[k] + (size_t)r0 * outs[k], outs[k]};
            s = e;
        }
    float *scratch = f->lora;
    for (int s = 0; s < n_seqs;) {
        const variant_mix *mix = seqs[s].lora;
        int e = s + 1;
        while (e < n_seqs && variant_mix_cmp(seqs[e].lora, mix) == 0)
            e++;
        int r0 = f->row0[s] > w0 ? f->row0[s] : w0;
        int r1 = f->row0[e] < w1 ? f->row0[e] : w1;
        if (mix && r0 < r1) {
            float *y_run[VARIANT_GROUP_MAX];
            for (int k = 0; k < n_ps; k++)
                y_run[k] = ys[k] + (size_t)r0 * outs[k];
            int cx, ct;
            variant_small_jobs(mix, layer, ps, n_ps, in, x + (size_t)r0 * in, r1 - r0, y_run,
                               outs, &scratch, xa + nx, tb + nt, &cx, &ct);
            nx += cx;
            nt += ct;
        }
        s = e;
    }
    *n_xmt = nx;
    *n_tb = nt;
}

/* window_jobs as one smallmm pass (smallmm_run); the threads' leads end here. */
static void project_window(forward_ctx *f, const forward_seq *seqs, int n_seqs, int layer,
                           const model_proj *ps, int n_ps, const int *outs, int in,
                           const float *x, float *const *ys, int w0, int w1)
{
    int nx, nt;
    window_jobs(f, seqs, n_seqs, layer, ps, n_ps, outs, in, x, ys, w0, w1, &nx, &nt);
    for (int t = 0; t < pool_threads(f->pool); t++)
        f->lead[t].end = f->lead[t].p;
    smallmm_run(f->pool, in, f->small_xmt, nx, f->small_tb, nt);
}

/* Points each thread's lead cursor at the first f->lead_bytes of weights it will read in
 * project(f, seqs, n_seqs, layer, ps, n_ps, x, ys), to be prefetched by the work done
 * before it (lead_touch). Only batches of one window (decode steps): a prompt's products
 * are bound by the FMAs, not by memory. */
static void plan_lead(forward_ctx *f, const forward_seq *seqs, int n_seqs, int layer,
                      const model_proj *ps, int n_ps, const float *x, float *const *ys)
{
    int rows = f->row0[n_seqs];
    if (rows > SMALLMM_MAX_ROWS)
        return;
    int outs[VARIANT_GROUP_MAX], nx, nt;
    int in = proj_shapes(&f->m->cfg, ps, n_ps, outs);
    window_jobs(f, seqs, n_seqs, layer, ps, n_ps, outs, in, x, ys, 0, rows, &nx, &nt);
    for (int t = 0; t < pool_threads(f->pool); t++) {
        const char *at = NULL;
        size_t n = smallmm_lead(f->pool, in, f->small_xmt, nx, t, f->lead_bytes, &at);
        f->lead[t] = (lead_cursor){at, at ? at + n : NULL};
    }
}

/* Projections p[0..n_ps) of one layer over all rows of the batch, all reading x, then
 * biases. Every batch goes through smallmm, in windows of at most SMALLMM_MAX_ROWS rows
 * (project_window): a batch of more rows reads the weights once per window, which costs
 * little where its products are bound by the FMAs, and smallmm's tiles ran a prompt's
 * products faster than OpenBLAS's sgemm (README "Prompts in windows of 64 rows"). */
static void project(forward_ctx *f, const forward_seq *seqs, int n_seqs, int layer,
                    const model_proj *ps, int n_ps, const float *x, float *const *ys)
{
    const model *m = f->m;
    int outs[VARIANT_GROUP_MAX];
    int in = proj_shapes(&m->cfg, ps, n_ps, outs);
    int rows = f->row0[n_seqs];
    /* windows of (about) equal size, rounded up to 16 rows — the outer-product tiles' rows
     * per vector with AVX-512, two with AVX2 — so that no window is a sliver and none
     * pads a vector with zero rows (80 rows: 48 + 32 took 66 ms in process, 40 + 40 78 ms;
     * 160: 64 + 64 + 32 135 ms, 53 + 53 + 54 165 ms) */
    int n_win = (rows + SMALLMM_MAX_ROWS - 1) / SMALLMM_MAX_ROWS;
    int size = ((rows + n_win - 1) / n_win + 15) / 16 * 16;
    for (int w0 = 0; w0 < rows; w0 += size)
        project_window(f, seqs, n_seqs, layer, ps, n_ps, outs, in, x, ys, w0,
                       w0 + size < rows ? w0 + size : rows);
    for (int k = 0; k < n_ps; k++) {
        if (ps[k] > PROJ_V || !m->layers[layer].bias[ps[k]])
            continue;
        const float *b = m->layers[layer].bias[ps[k]];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < outs[k]; i++)
                ys[k][(size_t)r * outs[k] + i] += b[i];
    }
}

/* Rotate-half RoPE on n rows of n_h heads: v[i], v[i+half] ← rotation by the row's angle. */
static void rope(float *v, int n, int n_h, int hd, const float *cos_t, const float *sin_t)
{
    int half = hd / 2;
    for (int r = 0; r < n; r++) {
        const float *cs = cos_t + (size_t)r * half, *sn = sin_t + (size_t)r * half;
        for (int h = 0; h < n_h; h++) {
            float *x = v + ((size_t)r * n_h + h) * hd;
            for (int i = 0; i < half; i++) {
                float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cs[i] - x2 * sn[i];
                x[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
}

/* e^x (exp8 on one lane) for the tails of the loops below. */
static inline float exp_fast(float x)
{
    return exp8((v8){0} + x)[0];
}

/* gate [n, d] ← silu(gate) · up, elementwise: silu(g) = g / (1 + e^-g), with e^-g from
 * exp8 for g >= 0, else e^g / (1 + e^g) (no overflow either way). */
static void swiglu(float *gate, const float *up, size_t n, lead_cursor *pf)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        lead_touch(pf);
        v8 g = ld8(gate + i);
        vi8 neg = g < 0;
        v8 e = exp8(sel8(neg, g, -g));
        v8 num = sel8(neg, e, (v8){0} + 1.0f);
        st8(gate + i, g * (num / (1.0f + e)) * ld8(up + i));
    }
    for (; i < n; i++) {
        float g = gate[i];
        float e = exp_fast(g < 0 ? g : -g);
        float sig = g < 0 ? e / (1.0f + e) : 1.0f / (1.0f + e);
        gate[i] = g * sig * up[i];
    }
}

/* In place softmax of s [n]. */
static void softmax_row(float *s, int n)
{
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        st8(s + j, exp8(ld8(s + j) - mx));
    for (; j < n; j++)
        s[j] = exp_fast(s[j] - mx);
    /* 16 partial sums so the reduction vectorizes without reassociation flags */
    float part[16] = {0};
    for (j = 0; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++)
            part[k] += s[j + k];
    float sum = 0;
    for (; j < n; j++)
        sum += s[j];
    for (int k = 0; k < 16; k++)
        sum += part[k];
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++)
        s[j] *= inv;
}

/* The attention kernels keep NR·4 16-float accumulators in registers: 32 registers with
 * AVX-512, twice too many for AVX2's 16 (the spills cost ~2x). The build targets AVX2 so
 * that one binary runs everywhere; GCC compiles these kernels a second time for
 * x86-64-v4 (AVX-512) and picks the clone at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ATTN_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define ATTN_CLONES
#endif

/* Attention of up to NR query rows (consecutive positions pos0 .. pos0+nr-1 of one
 * sequence, one head; pstep 1) or up to NR heads of one position sharing a KV head (pstep
 * 0) against the cache: scores over the keys the rows may see, softmax per row, weighted
 * sum of values. q rows are rs apart; out likewise. blk is the sequence's block table:
 * block b holds positions [b·KV_BLOCK, (b+1)·KV_BLOCK), with this layer and head's
 * transposed keys at blk[b] + kofs ([hd, KV_BLOCK], finite past the last key) and its
 * values at blk[b] + vofs (position i of the block at + i·kv_dim).
 * S: [NR, ss] scratch, ss >= pos0 + nr rounded up to 16. Padding rows (r >= nr) repeat
 * the last real row and are not written out. */
/* Positions ahead whose values the weighted sum prefetches: a head's values are 256 bytes
 * of every 768-byte row (3 KV heads), a stride the hardware prefetchers follow poorly.
 * 64 sequences at 200 positions, the attention of a decode step: 25.9 ms against 29.4
 * without (8 at 300: 4.1 against 4.3). */
#define ATTN_VPF 4
#define ATTN_KERNEL(NAME, NR)                                                               \
ATTN_CLONES                                                                                 \
static void NAME(const float *q, int rs, int pstep, int nr, int pos0, float *const *blk,  \
                 size_t kofs, size_t vofs, int kv_dim, int hd, float scale, int win,       \
                 float *S, int ss, float *out, lead_cursor *pf)                            \
{                                                                                          \
    int first[NR], last[NR];                                                               \
    float qs[NR][256];                                                                     \
    for (int r = 0; r < NR; r++) {                                                         \
        int rr = r < nr ? r : nr - 1;                                                      \
        last[r] = pos0 + rr * pstep;                                                       \
        first[r] = win && last[r] + 1 > win ? last[r] + 1 - win : 0;                       \
        for (int d = 0; d < hd; d++)                                                       \
            qs[r][d] = q[(size_t)rr * rs + d] * scale;                                     \
    }                                                                                      \
    int j0 = first[0] & ~15, j1 = last[NR - 1] + 1;                                        \
    /* scores, 16 keys at a time (one block, or a part of one): NR rows share each load    \
     * of the keys */                                                                      \
    for (int jb = j0; jb < j1; jb += 16) {                                                 \
        /* NR·CH independent sums (CH chains over d for each row): with one row, a single  \
         * chain would wait out the FMA latency at every d */                              \
        enum { CH = NR >= 4 ? 1 : 4 };                                                     \
        v16 acc[NR][CH];                                                                   \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++)                               \
            _Pragma("GCC unroll 4") for (int u = 0; u < CH; u++)                           \
                acc[r][u] = (v16){0};                                                      \
        const float *kd = blk[jb / KV_BLOCK] + kofs + jb % KV_BLOCK;                       \
        /* the next 16 keys: another block, which the hardware does not prefetch */       \
        int jn = jb + 16 < j1 ? jb + 16 : jb;                                              \
        const float *kn = blk[jn / KV_BLOCK] + kofs + jn % KV_BLOCK;                       \
        int d = 0;                                                                         \
        for (; d + CH <= hd; d += CH) {                                                    \
            lead_touch(pf);                                                                \
            _Pragma("GCC unroll 4") for (int u = 0; u < CH; u++) {                         \
                __builtin_prefetch(kn + (size_t)(d + u) * KV_BLOCK);                       \
                v16 k = ld16(kd + (size_t)(d + u) * KV_BLOCK);                             \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++)                       \
                    acc[r][u] += qs[r][d + u] * k;                                         \
            }                                                                              \
        }                                                                                  \
        for (; d < hd; d++) {                                                              \
            v16 k = ld16(kd + (size_t)d * KV_BLOCK);                                       \
            _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++)                           \
                acc[r][0] += qs[r][d] * k;                                                 \
        }                                                                                  \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++) {                             \
            v16 sum = acc[r][0];                                                           \
            _Pragma("GCC unroll 4") for (int u = 1; u < CH; u++)                           \
                sum += acc[r][u];                                                          \
            st16(S + (size_t)r * ss + jb, sum);                                            \
        }                                                                                  \
    }                                                                                      \
    for (int r = 0; r < NR; r++) {                                                         \
        float *row = S + (size_t)r * ss;                                                   \
        for (int j = j0; j < first[r]; j++)                                                \
            row[j] = 0;                                                                    \
        softmax_row(row + first[r], last[r] + 1 - first[r]);                               \
        for (int j = last[r] + 1; j < j1; j++)                                             \
            row[j] = 0;                                                                    \
    }                                                                                      \
    /* out = S V, 64 output dims at a time (then 32, then a scalar tail), block by block:  \
     * NR rows share each load of a value row */                                           \
    int jv = j0 > first[0] ? j0 : first[0];                                                \
    int d0 = 0;                                                                            \
    for (; d0 + 64 <= hd; d0 += 64) {                                                      \
        v16 a0[NR], a1[NR], a2[NR], a3[NR];                                                \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++)                               \
            a0[r] = a1[r] = a2[r] = a3[r] = (v16){0};                                      \
        for (int j = jv; j < j1;) {                                                        \
            int b = j / KV_BLOCK, je = (b + 1) * KV_BLOCK < j1 ? (b + 1) * KV_BLOCK : j1;  \
            const float *vj = blk[b] + vofs + (size_t)(j - b * KV_BLOCK) * kv_dim + d0;    \
            for (; j < je; j++, vj += kv_dim) {                                            \
                int jp = j + ATTN_VPF < j1 ? j + ATTN_VPF : j;                             \
                const float *vp = blk[jp / KV_BLOCK] + vofs +                              \
                                  (size_t)(jp % KV_BLOCK) * kv_dim + d0;                   \
                __builtin_prefetch(vp);                                                    \
                __builtin_prefetch(vp + 16);                                               \
                __builtin_prefetch(vp + 32);                                               \
                __builtin_prefetch(vp + 48);                                               \
                lead_touch(pf);                                                            \
                v16 x0 = ld16(vj), x1 = ld16(vj + 16), x2 = ld16(vj + 32);                 \
                v16 x3 = ld16(vj + 48);                                                    \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++) {                     \
                    float p = S[(size_t)r * ss + j];                                       \
                    a0[r] += p * x0;                                                       \
                    a1[r] += p * x1;                                                       \
                    a2[r] += p * x2;                                                       \
                    a3[r] += p * x3;                                                       \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int r = 0; r < nr; r++) {                                                     \
            float *o = out + (size_t)r * rs + d0;                                          \
            st16(o, a0[r]);                                                                \
            st16(o + 16, a1[r]);                                                           \
            st16(o + 32, a2[r]);                                                           \
            st16(o + 48, a3[r]);                                                           \
        }                                                                                  \
    }                                                                                      \
    for (; d0 + 32 <= hd; d0 += 32) {                                                      \
        v16 a0[NR], a1[NR];                                                                \
        _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++)                               \
            a0[r] = a1[r] = (v16){0};                                                      \
        for (int j = jv; j < j1;) {                                                        \
            int b = j / KV_BLOCK, je = (b + 1) * KV_BLOCK < j1 ? (b + 1) * KV_BLOCK : j1;  \
            const float *vj = blk[b] + vofs + (size_t)(j - b * KV_BLOCK) * kv_dim + d0;    \
            for (; j < je; j++, vj += kv_dim) {                                            \
                v16 x0 = ld16(vj), x1 = ld16(vj + 16);                                     \
                _Pragma("GCC unroll 4") for (int r = 0; r < NR; r++) {                     \
                    float p = S[(size_t)r * ss + j];                                       \
                    a0[r] += p * x0;                                                       \
                    a1[r] += p * x1;                                                       \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (int r = 0; r < nr; r++) {                                                     \
            st16(out + (size_t)r * rs + d0, a0[r]);                                        \
            st16(out + (size_t)r * rs + d0 + 16, a1[r]);                                   \
        }                                                                                  \
    }                                                                                      \
    for (; d0 < hd; d0++) {                                                                \
        for (int r = 0; r < nr; r++) {                                                     \
            float a = 0;                                                                   \
            for (int j = jv; j < j1; j++)                                                  \
                a += S[(size_t)r * ss + j] *                                               \
                     blk[j / KV_BLOCK][vofs + (size_t)(j % KV_BLOCK) * kv_dim + d0];       \
            out[(size_t)r * rs + d0] = a;                                                  \
        }                                                                                  \
    }                                                                                      \
}
ATTN_KERNEL(attn_rows1, 1)
ATTN_KERNEL(attn_rows2, 2)
ATTN_KERNEL(attn_rows3, 3)
ATTN_KERNEL(attn_rows4, 4)

/* The heads of one KV group for one decode row (pstep 0): nh (<= ATTN_ROWS) of them on the
 * kernel of exactly nh rows, not one padded to 4 — a group of 3 (SmolLM2-135M) on the
 * 4-row kernel computed a fourth, copied head, and its one chain per row waited out the
 * FMA latency at every element (the 3-row kernel keeps 4 chains a row). An 8-row decode
 * step (3 heads a group; Zen 5, 2 threads), alternated in one process, 3 rounds: its
 * attention 1.00-1.15 ms against 1.25-1.30, the step 13.43-13.59 against 13.62-13.73 (the
 * o projection after it took 0.12-0.15 ms longer: less of its weights came in during the
 * shorter attention, see lead_cursor). Which kernel a group takes depends only on the
 * model, so a row's result does not depend on its batch. */
static void attn_group(int nh, const float *q, int pos, float *const *blk, size_t kofs,
                       size_t vofs, int kv_dim, int hd, float scale, int win, float *S, int ss,
                       float *out, lead_cursor *pf)
{
    switch (nh) {
    case 1:
        attn_rows1(q, hd, 0, 1, pos, blk, kofs, vofs, kv_dim, hd, scale, win, S, ss, out, pf);
        break;
    case 2:
        attn_rows2(q, hd, 0, 2, pos, blk, kofs, vofs, kv_dim, hd, scale, win, S, ss, out, pf);
        break;
    case 3:
        attn_rows3(q, hd, 0, 3, pos, blk, kofs, vofs, kv_dim, hd, scale, win, S, ss, out, pf);
        break;
    default:
        attn_rows4(q, hd, 0, nh, pos, blk, kofs, vofs, kv_dim, hd, scale, win, S, ss, out, pf);
        break;
    }
}

/* Batches of at least this many rows store their keys and values on the pool: each row
 * writes head_dim transposed keys per KV head, every one to its own cache line (a miss
 * when the cache is cold), ~1.5 ms per step at 32 rows on one thread. */
#define KV_STORE_POOL_ROWS 8

/* Sequence s of the layer being computed (cur_seqs, cur_layer): RoPE on its queries and
 * keys, then its keys (transposed) and values into its cache, positions kv->len .. +
 * n_tokens, one block's share at a time. */
static void kv_store_seq(forward_ctx *f, int s)
{
    const model_config *c = &f->m->cfg;
    int hd = c->head_dim, kv_dim = c->n_kv_heads * hd, half = hd / 2, l = f->cur_layer;
    kv_cache *kv = f->cur_seqs[s].kv;
    int r0 = f->row0[s], n = f->cur_seqs[s].n_tokens;
    rope(f->q + (size_t)r0 * c->n_heads * hd, n, c->n_heads, hd, f->cos_t + (size_t)r0 * half,
         f->sin_t + (size_t)r0 * half);
    rope(f->k + (size_t)r0 * kv_dim, n, c->n_kv_heads, hd, f->cos_t + (size_t)r0 * half,
         f->sin_t + (size_t)r0 * half);
    for (int i0 = 0; i0 < n;) {
        int p = kv->len + i0, off = p % KV_BLOCK;
        int nb = KV_BLOCK - off < n - i0 ? KV_BLOCK - off : n - i0;
        float *blk = kv->blocks[p / KV_BLOCK];
        for (int g = 0; g < c->n_kv_heads; g++) {
            float *kt = blk + kv_block_kt_offset(c, l, g) + off;
            const float *kg = f->k + (size_t)(r0 + i0) * kv_dim + (size_t)g * hd;
            for (int d = 0; d < hd; d++)  /* contiguous writes along positions */
                for (int i = 0; i < nb; i++)
                    kt[(size_t)d * KV_BLOCK + i] = kg[(size_t)i * kv_dim + d];
        }
        memcpy(blk + kv_block_v_offset(c, l) + (size_t)off * kv_dim,
               f->v + (size_t)(r0 + i0) * kv_dim, sizeof(float) * nb * kv_dim);
        i0 += nb;
    }
}

/* pool task: kv_store_seq of the task-th sequence of kv_seqs. */
static void kv_store_task(void *ctx, int task, int thread)
{
    (void)thread;
    forward_ctx *f = ctx;
    kv_store_seq(f, f->kv_seqs[task]);
}

/* pool task: rows [r0, r1) of one (sequence, head) for the current layer. */
static void attn_task_run(void *ctx, int task, int thread)
{
    forward_ctx *f = ctx;
    const model_config *c = &f->m->cfg;
    const attn_task *t = &f->tasks[task];
    const forward_seq *sq = &f->cur_seqs[t->seq];
    kv_cache *kv = sq->kv;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;
    int g = t->head / (c->n_heads / c->n_kv_heads);
    int pos_first = kv->len;  /* this step's rows are at kv->len ..; their keys are cached */
    /* offsets of this layer and KV head inside every block */
    size_t kofs = kv_block_kt_offset(c, f->cur_layer, g);
    size_t vofs = kv_block_v_offset(c, f->cur_layer) + (size_t)g * hd;
    float scale = 1.0f / sqrtf((float)hd);
    int win = f->cur_layer >= c->window_from_layer ? c->sliding_window : 0;
    int base = f->row0[t->seq];
    if (t->store)
        kv_store_seq(f, t->seq);
    if (t->heads > 1) {  /* one decode row, heads [head, head + heads): whole KV groups */
        int group = c->n_heads / c->n_kv_heads;
        for (int hg = t->head; hg < t->head + t->heads; hg += group) {
            int gg = hg / group;
            size_t kg = kv_block_kt_offset(c, f->cur_layer, gg);
            size_t vg = kv_block_v_offset(c, f->cur_layer) + (size_t)gg * hd;
            for (int h = 0; h < group; h += ATTN_ROWS) {
                int nh = group - h < ATTN_ROWS ? group - h : ATTN_ROWS;
                size_t off = (size_t)base * q_dim + (size_t)(hg + h) * hd;
                attn_group(nh, f->q + off, pos_first, kv->blocks, kg, vg, kv_dim, hd, scale,
                           win, f->scores[thread], (int)f->scores_cap, f->att + off,
                           &f->lead[thread]);
            }
        }
        return;
    }
    for (int r = t->r0; r < t->r1; r += ATTN_ROWS) {
        int nr = t->r1 - r < ATTN_ROWS ? t->r1 - r : ATTN_ROWS;
        const float *q = f->q + (size_t)(base + r) * q_dim + (size_t)t->head * hd;
        float *out = f->att + (size_t)(base + r) * q_dim + (size_t)t->head * hd;
        if (nr == 1)
            attn_rows1(q, q_dim, 1, 1, pos_first + r, kv->blocks, kofs, vofs, kv_dim, hd,
                       scale, win, f->scores[thread], (int)f->scores_cap, out, &f->lead[thread]);
        else
            attn_rows4(q, q_dim, 1, nr, pos_first + r, kv->blocks, kofs, vofs, kv_dim, hd,
                       scale, win, f->scores[thread], (int)f->scores_cap, out, &f->lead[thread]);
    }
}

static int ensure_capacity(forward_ctx *f, const forward_seq *seqs, int n_seqs, lr_error *err)
{
    if (n_seqs + 1 > f->row0_cap) {
        int *r = realloc(f->row0, sizeof(int) * (size_t)(n_seqs + 1));
        if (!r)
            return lr_error_set(err, LR_ENOMEM, "out of memory for %d sequences", n_seqs);
        f->row0 = r;
        int *k = realloc(f->kv_seqs, sizeof(int) * (size_t)(n_seqs + 1));
        if (!k)
            return lr_error_set(err, LR_ENOMEM, "out of memory for %d sequences", n_seqs);
        f->kv_seqs = k;
        f->row0_cap = n_seqs + 1;
    }
    size_t stride = 0;   /* scores of a row: every position it may see, rounded up to 16 */
    size_t lora = 0;
    int n_tasks = 0;
    for (int s = 0; s < n_seqs; s++) {
        size_t st = ((size_t)seqs[s].kv->len + seqs[s].n_tokens + 15) & ~(size_t)15;
        stride = st > stride ? st : stride;
        /* adapters' T for one window of project(): at most SMALLMM_MAX_ROWS rows */
        size_t need = variant_scratch_floats(seqs[s].lora, SMALLMM_MAX_ROWS);
        lora = need > lora ? need : lora;
        n_tasks += f->m->cfg.n_heads * ((seqs[s].n_tokens + ATTN_TASK_ROWS - 1) / ATTN_TASK_ROWS);
    }
    if (stride > f->scores_cap) {
        /* contexts grow 16 positions at a time: grow the scratch in larger steps */
        stride = stride > 2 * f->scores_cap ? stride : 2 * f->scores_cap;
        for (int t = 0; t < pool_threads(f->pool); t++) {
            float *s = realloc(f->scores[t], ATTN_ROWS * stride * sizeof(float));
            if (!s)
                return lr_error_set(err, LR_ENOMEM, "out of memory for attention scores");
            f->scores[t] = s;
        }
        f->scores_cap = stride;
    }
    if (n_tasks > f->tasks_cap) {
        attn_task *t = realloc(f->tasks, sizeof *t * (size_t)n_tasks);
        if (!t)
            return lr_error_set(err, LR_ENOMEM, "out of memory for attention tasks");
        f->tasks = t;
        f->tasks_cap = n_tasks;
    }
    if (lora > f->lora_cap) {
        float *l = realloc(f->lora, lora * sizeof(float));
        if (!l)
            return lr_error_set(err, LR_ENOMEM, "out of memory for adapter scratch");
        f->lora = l;
        f->lora_cap = lora;
    }
    return 0;
}

/* Row-parallel elementwise work on the pool, from ROWS_POOL_MIN rows: the RMSNorms and
 * SwiGLU of a 16-row step took ~1 ms on one thread (a fifth of the prefill's distance to
 * two decode steps). Tasks of up to ROWS_PER_TASK rows, at least one per thread. The
 * residual adds after o_proj and down_proj are done by the RMSNorm that follows each, in
 * its task, on rows it reads next (the add had been a pass of its own on the engine
 * thread: 0.9 ms of a 64-row step). */
enum { ROWS_RMSNORM, ROWS_SWIGLU };
#define ROWS_PER_TASK 32
#define ROWS_POOL_MIN 8

static void rows_task(void *ctx, int task, int thread)
{
    forward_ctx *f = ctx;
    const rows_job *j = &f->rows;
    int r0 = task * j->per_task;
    int n = j->n - r0 < j->per_task ? j->n - r0 : j->per_task;
    size_t off = (size_t)r0 * j->d;
    if (j->op == ROWS_RMSNORM) {
        if (j->add) {
            float *x = (float *)j->x + off;  /* the residual stream, f->x */
            for (size_t i = 0; i < (size_t)n * j->d; i++)
                x[i] += j->add[off + i];
        }
        rmsnorm(j->y + off, j->x + off, j->w, n, j->d, f->m->cfg.rms_eps, &f->lead[thread]);
    } else
        swiglu(j->y + off, j->x + off, (size_t)n * j->d, &f->lead[thread]);
}

/* op over rows [0, n) of y (and x) with row length d; add: see rows_job. */
static void run_rows(forward_ctx *f, int op, float *y, const float *x, const float *w,
                     const float *add, int d, int n)
{
    int threads = pool_threads(f->pool);
    int per = (n + threads - 1) / threads;
    per = per > ROWS_PER_TASK ? ROWS_PER_TASK : per < 1 ? 1 : per;
    f->rows = (rows_job){op, y, x, w, add, d, n, per};
    run_tasks(f, rows_task, (n + per - 1) / per, n < ROWS_POOL_MIN);
}

const char *const forward_phase_names[FWD_PH_COUNT] = {
    "setup", "norms", "qkv", "rope+kv", "attention", "o", "residual", "gate/up", "swiglu",
    "down", "lm_head", "draw"};

void forward_set_profile(forward_ctx *f, forward_profile *p)
{
    f->prof = p;
}

forward_profile *forward_get_profile(const forward_ctx *f)
{
    return f->prof;
}

void forward_phase_begin(forward_ctx *f)
{
    if (f->prof)
        f->prof_t = clock_seconds();
}

void forward_phase_end(forward_ctx *f, int ph)
{
    if (!f->prof)
        return;
    double t = clock_seconds();
    f->prof->sec[ph] += t - f->prof_t;
    f->prof_t = t;
}

int forward_batch(forward_ctx *f, forward_seq *seqs, int n_seqs, float *logits, lr_error *err)
{
    forward_phase_begin(f);
    const model *m = f->m;
    const model_config *c = &m->cfg;
    int hd = c->head_dim, half = hd / 2;

    /* Validate everything before touching any cache. */
    int rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        const forward_seq *sq = &seqs[s];
        if (sq->n_tokens < 1)
            return lr_error_set(err, LR_EINVAL, "sequence %d has no tokens", s);
        if (sq->kv->len + sq->n_tokens > sq->kv->n_blocks * KV_BLOCK)
            return lr_error_set(err, LR_EINVAL, "sequence %d: %d + %d tokens exceed its %d KV "
                                "blocks of %d positions", s, sq->kv->len, sq->n_tokens,
                                sq->kv->n_blocks, KV_BLOCK);
        for (int i = 0; i < sq->n_tokens; i++)
            if (sq->tokens[i] < 0 || sq->tokens[i] >= c->vocab_size)
                return lr_error_set(err, LR_EINVAL, "token id %d is out of range [0, %d)",
                                    sq->tokens[i], c->vocab_size);
        rows += sq->n_tokens;
    }
    if (rows > f->max_rows)
        return lr_error_set(err, LR_EINVAL, "batch of %d rows exceeds the maximum %d", rows,
                            f->max_rows);
    if (ensure_capacity(f, seqs, n_seqs, err))
        return err ? err->code : LR_ENOMEM;

    /* Row layout, embeddings and rotary tables. */
    f->row0[0] = 0;
    for (int s = 0; s < n_seqs; s++) {
        const forward_seq *sq = &seqs[s];
        int r0 = f->row0[s];
        f->row0[s + 1] = r0 + sq->n_tokens;
        for (int i = 0; i < sq->n_tokens; i++) {
            wtensor_rows_f32(&m->embed, c->hidden, sq->tokens[i], sq->tokens[i] + 1,
                             f->x + (size_t)(r0 + i) * c->hidden);
            double pos = sq->kv->len + i;
            for (int j = 0; j < half; j++) {
                double a = pos * f->inv_freq[j];
                f->cos_t[(size_t)(r0 + i) * half + j] = (float)cos(a);
                f->sin_t[(size_t)(r0 + i) * half + j] = (float)sin(a);
            }
        }
    }

    f->n_tasks = 0;
    f->attn_work = 0;
    for (int s = 0; s < n_seqs; s++)
        f->attn_work += (double)seqs[s].n_tokens * (seqs[s].kv->len + seqs[s].n_tokens) *
                        c->n_heads * hd;
    int group = c->n_heads / c->n_kv_heads;  /* query heads per KV head */
    /* A decode row's heads are one task per KV head — or, with many sequences (enough
     * tasks to share among the threads without them), one task for all of its heads, which
     * then read each block's keys and values of the layer as one contiguous 12 KB run
     * each instead of 4 KB and 256-byte pieces of rows: 64 sequences at 40 positions
     * 7.9 ms against 10.7, at 200 positions 34.9 against 52.2, 8 at 40 0.83 against 1.10
     * (the attention of a decode step, alternated in one process). Such a task also stores
     * its row's key and value first, on the thread that reads them next, instead of in a
     * pool job of its own before the attention: RoPE, the KV store and attention of a
     * 64-row step 8.7-9.3 ms -> 8.1-9.1 (bench_batch --steps 30, alternated, 3 pairs; the
     * whole step 67.5-68.7 -> 65.8-66.8 ms; at 32 rows no change). */
    int whole = n_seqs >= 4 * pool_threads(f->pool);
    f->n_kv_seqs = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (seqs[s].n_tokens == 1 && group > 1) {
            if (whole) {
                f->tasks[f->n_tasks++] = (attn_task){s, 0, c->n_heads, 0, 1, 1};
                continue;
            }
            f->kv_seqs[f->n_kv_seqs++] = s;
            for (int h = 0; h < c->n_heads; h += group)
                f->tasks[f->n_tasks++] = (attn_task){s, h, group, 0, 1, 0};
            continue;
        }
        f->kv_seqs[f->n_kv_seqs++] = s;
        for (int h = 0; h < c->n_heads; h++)
            for (int r = 0; r < seqs[s].n_tokens; r += ATTN_TASK_ROWS) {
                int r1 = r + ATTN_TASK_ROWS < seqs[s].n_tokens ? r + ATTN_TASK_ROWS
                                                               : seqs[s].n_tokens;
                f->tasks[f->n_tasks++] = (attn_task){s, h, 1, r, r1, 0};
            }
    }

    forward_phase_end(f, FWD_PH_SETUP);
    /* Before each stretch of work between two products, each thread is told the first
     * bytes it will read in the next product (plan_lead), and prefetches them as it goes. */
    static const model_proj qkv[3] = {PROJ_Q, PROJ_K, PROJ_V};
    static const model_proj gate_up[2] = {PROJ_GATE, PROJ_UP};
    static const model_proj o[1] = {PROJ_O}, down[1] = {PROJ_DOWN};
    float *const qkv_out[3] = {f->q, f->k, f->v}, *const gate_up_out[2] = {f->gate, f->up};
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        if (l == 0) {  /* later layers': after the last one's down_proj, with its residual */
            plan_lead(f, seqs, n_seqs, l, qkv, 3, f->xn, qkv_out);
            run_rows(f, ROWS_RMSNORM, f->xn, f->x, L->attn_norm, NULL, c->hidden, rows);
            forward_phase_end(f, FWD_PH_NORMS);
        }
        project(f, seqs, n_seqs, l, qkv, 3, f->xn, qkv_out);
        forward_phase_end(f, FWD_PH_QKV);
        f->cur_seqs = seqs;
        f->cur_layer = l;
        plan_lead(f, seqs, n_seqs, l, o, 1, f->att, &f->out);
        run_tasks(f, kv_store_task, f->n_kv_seqs, rows < KV_STORE_POOL_ROWS);
        forward_phase_end(f, FWD_PH_KV);
        /* inline: too little to wake another thread for */
        run_tasks(f, attn_task_run, f->n_tasks, f->attn_work < ATTN_INLINE_WORK);
        forward_phase_end(f, FWD_PH_ATTN);
        project(f, seqs, n_seqs, l, o, 1, f->att, &f->out);
        forward_phase_end(f, FWD_PH_O);
        plan_lead(f, seqs, n_seqs, l, gate_up, 2, f->xn, gate_up_out);
        run_rows(f, ROWS_RMSNORM, f->xn, f->x, L->ffn_norm, f->out, c->hidden, rows);
        forward_phase_end(f, FWD_PH_NORMS);
        project(f, seqs, n_seqs, l, gate_up, 2, f->xn, gate_up_out);
        forward_phase_end(f, FWD_PH_GATE_UP);
        plan_lead(f, seqs, n_seqs, l, down, 1, f->gate, &f->out);
        run_rows(f, ROWS_SWIGLU, f->gate, f->up, NULL, NULL, c->intermediate, rows);
        forward_phase_end(f, FWD_PH_SWIGLU);
        project(f, seqs, n_seqs, l, down, 1, f->gate, &f->out);
        forward_phase_end(f, FWD_PH_DOWN);
        if (l + 1 < c->n_layers) {
            plan_lead(f, seqs, n_seqs, l + 1, qkv, 3, f->xn, qkv_out);
            run_rows(f, ROWS_RMSNORM, f->xn, f->x, m->layers[l + 1].attn_norm, f->out,
                     c->hidden, rows);
            forward_phase_end(f, FWD_PH_NORMS);
        } else {
            for (size_t i = 0; i < (size_t)rows * c->hidden; i++)
                f->x[i] += f->out[i];
            forward_phase_end(f, FWD_PH_RESID);
        }
    }
    for (int s = 0; s < n_seqs; s++)
        seqs[s].kv->len += seqs[s].n_tokens;

    /* Final norm and lm_head for the last row of each sequence that wants logits. */
    int n_out = 0;
    for (int s = 0; s < n_seqs; s++)
        if (seqs[s].want_logits) {
            int last = f->row0[s + 1] - 1;
            rmsnorm(f->xn + (size_t)n_out * c->hidden, f->x + (size_t)last * c->hidden, m->norm,
                    1, c->hidden, c->rms_eps, &f->lead[0]);
            n_out++;
        }
    forward_phase_end(f, FWD_PH_NORMS);
    for (int w0 = 0; w0 < n_out; w0 += SMALLMM_MAX_ROWS) {
        int nw = n_out - w0 < SMALLMM_MAX_ROWS ? n_out - w0 : SMALLMM_MAX_ROWS;
        float *y = logits + (size_t)w0 * c->vocab_size;
        smallmm_xmt_run(f->pool, c->hidden, &(smallmm_xmt){f->xn + (size_t)w0 * c->hidden, nw,
                                                            m->lm_head, c->vocab_size, y,
                                                            c->vocab_size}, 1);
    }
    forward_phase_end(f, FWD_PH_LM_HEAD);
    if (f->prof)
        f->prof->passes++;
    return 0;
}
