/* forward_batch: embedding → n_layers × (RMSNorm, attention, RMSNorm, SwiGLU) → norm →
 * lm_head, over the stacked rows of a batch of sequences. fp32 throughout; GEMMs by
 * OpenBLAS, the rest are plain loops the compiler vectorizes. */
#include "forward.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    float *lora;     /* [R, lora_rank_cap] on-the-fly scratch */
    int lora_rank_cap;
    float *scores;   /* [scores_cap] attention scores of one head of one sequence */
    size_t scores_cap;
    int *row0;       /* [n_seqs + 1] first row of each sequence */
    int row0_cap;
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

forward_ctx *forward_create(const model *m, int max_rows, lr_error *err)
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
    free(f->inv_freq); free(f->lora); free(f->scores); free(f->row0);
    free(f);
}

/* y [n, d] = x · rsqrt(mean(x²) + eps) · w, row by row (sum in double as HF does in fp32
 * with a wider accumulator; the difference is far below test tolerance). */
static void rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps)
{
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        float *yr = y + (size_t)r * d;
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        for (int i = 0; i < d; i++)
            yr[i] = xr[i] * inv * w[i];
    }
}

/* Y [n, out] = X [n, in] · Wᵀ, W [out, in] row-major. */
static void matmul(float *y, const float *x, const float *w, int n, int in, int out)
{
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in,
                    0.0f, y, out);
}

/* One projection over all rows of the batch: one GEMM per run of sequences sharing the
 * weight matrix, then the on-the-fly adapters per run of sequences sharing a mix. */
static void project(forward_ctx *f, const forward_seq *seqs, int n_seqs, int layer,
                    model_proj p, const float *x, float *y)
{
    const model *m = f->m;
    int out, in;
    model_config_proj_shape(&m->cfg, p, &out, &in);
    for (int s = 0; s < n_seqs;) {
        const float *w = variant_weight(m, seqs[s].merged, layer, p);
        int e = s + 1;
        while (e < n_seqs && variant_weight(m, seqs[e].merged, layer, p) == w)
            e++;
        int r0 = f->row0[s], nr = f->row0[e] - r0;
        matmul(y + (size_t)r0 * out, x + (size_t)r0 * in, w, nr, in, out);
        s = e;
    }
    for (int s = 0; s < n_seqs;) {
        const variant_mix *mix = seqs[s].lora;
        int e = s + 1;
        while (e < n_seqs && seqs[e].lora == mix)
            e++;
        if (mix) {
            int r0 = f->row0[s], nr = f->row0[e] - r0;
            variant_apply(mix, layer, p, x + (size_t)r0 * in, nr, in, y + (size_t)r0 * out, out,
                          f->lora);
        }
        s = e;
    }
    if (p <= PROJ_V && m->layers[layer].bias[p]) {
        const float *b = m->layers[layer].bias[p];
        int rows = f->row0[n_seqs];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < out; i++)
                y[(size_t)r * out + i] += b[i];
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

/* e^x for x <= 0 in the softmax/SiLU hot loops: Cephes-style range reduction and a
 * degree-6 polynomial, relative error ~2e-7 (below fp32 rounding of the sums it feeds),
 * written so the compiler vectorizes it (no libm call, no branches). Inputs below -87
 * are clamped (result ~1e-38, i.e. zero for a softmax). */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shift = 12582912.0f;  /* 1.5 · 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + shift) - shift;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

/* In place softmax of s [n]. */
static void softmax_row(float *s, int n)
{
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    for (int j = 0; j < n; j++)
        s[j] = exp_fast(s[j] - mx);
    /* 16 partial sums so the reduction vectorizes without reassociation flags */
    float part[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
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

#define ATTN_CHUNK 128

/* Causal attention of one sequence's n query rows (positions pos0 ..) against its cache
 * holding pos0 + n positions. q, att: [n, q_dim]. */
static void attend(forward_ctx *f, kv_cache *kv, int layer, int pos0, int n, const float *q,
                   float *att)
{
    const model_config *c = &f->m->cfg;
    int hd = c->head_dim, q_dim = c->n_heads * hd, kv_dim = kv->kv_dim;
    int group = c->n_heads / c->n_kv_heads;
    int ctx = pos0 + n;
    int win = c->sliding_window;
    float scale = 1.0f / sqrtf((float)hd);
    const float *K = kv_cache_k(kv, layer), *V = kv_cache_v(kv, layer);
    float *S = f->scores;
    for (int h = 0; h < c->n_heads; h++) {
        int g = h / group;
        const float *Qh = q + (size_t)h * hd;
        const float *Kg = K + (size_t)g * hd, *Vg = V + (size_t)g * hd;
        float *Oh = att + (size_t)h * hd;
        if (n == 1) {
            /* decode: plain dot products, no BLAS call overhead */
            int j0 = win && ctx > win ? ctx - win : 0;
            for (int j = j0; j < ctx; j++) {
                const float *kr = Kg + (size_t)j * kv_dim;
                float d = 0;
                for (int i = 0; i < hd; i++)
                    d += Qh[i] * kr[i];
                S[j - j0] = d * scale;
            }
            softmax_row(S, ctx - j0);
            memset(Oh, 0, sizeof(float) * hd);
            for (int j = j0; j < ctx; j++) {
                const float *vr = Vg + (size_t)j * kv_dim;
                float a = S[j - j0];
                for (int i = 0; i < hd; i++)
                    Oh[i] += a * vr[i];
            }
            continue;
        }
        /* prefill, in chunks of query rows so the causal upper triangle is mostly skipped:
         * rows [i0, i1) attend to keys [0, pos0 + i1): S = scale · Qh Kgᵀ, mask, softmax,
         * Oh = S Vg. Chunks of 128 rows do ~60% of the full-square work at n = 512. */
        for (int i0 = 0; i0 < n; i0 += ATTN_CHUNK) {
            int i1 = i0 + ATTN_CHUNK < n ? i0 + ATTN_CHUNK : n, rows = i1 - i0;
            int keys = pos0 + i1;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale,
                        Qh + (size_t)i0 * q_dim, q_dim, Kg, kv_dim, 0.0f, S, keys);
            for (int i = i0; i < i1; i++) {
                float *row = S + (size_t)(i - i0) * keys;
                int last = pos0 + i;  /* attends to keys first..last */
                int first = win && last + 1 > win ? last + 1 - win : 0;
                memset(row, 0, sizeof(float) * first);
                softmax_row(row + first, last + 1 - first);
                memset(row + last + 1, 0, sizeof(float) * (keys - last - 1));
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, S,
                        keys, Vg, kv_dim, 0.0f, Oh + (size_t)i0 * q_dim, q_dim);
        }
    }
}

static int ensure_capacity(forward_ctx *f, const forward_seq *seqs, int n_seqs, lr_error *err)
{
    if (n_seqs + 1 > f->row0_cap) {
        int *r = realloc(f->row0, sizeof(int) * (size_t)(n_seqs + 1));
        if (!r)
            return lr_error_set(err, LR_ENOMEM, "out of memory for %d sequences", n_seqs);
        f->row0 = r;
        f->row0_cap = n_seqs + 1;
    }
    size_t need_scores = 0;
    int rank = 0;
    for (int s = 0; s < n_seqs; s++) {
        size_t ctx = (size_t)seqs[s].kv->len + seqs[s].n_tokens;
        size_t need = (size_t)seqs[s].n_tokens * ctx;
        need_scores = need > need_scores ? need : need_scores;
        int r = variant_mix_max_rank(seqs[s].lora);
        rank = r > rank ? r : rank;
    }
    if (need_scores > f->scores_cap) {
        float *s = realloc(f->scores, need_scores * sizeof(float));
        if (!s)
            return lr_error_set(err, LR_ENOMEM, "out of memory for attention scores");
        f->scores = s;
        f->scores_cap = need_scores;
    }
    if (rank > f->lora_rank_cap) {
        float *l = realloc(f->lora, (size_t)f->max_rows * rank * sizeof(float));
        if (!l)
            return lr_error_set(err, LR_ENOMEM, "out of memory for adapter scratch");
        f->lora = l;
        f->lora_rank_cap = rank;
    }
    return 0;
}

int forward_batch(forward_ctx *f, forward_seq *seqs, int n_seqs, float *logits, lr_error *err)
{
    const model *m = f->m;
    const model_config *c = &m->cfg;
    int hd = c->head_dim, half = hd / 2;
    int q_dim = c->n_heads * hd, kv_dim = c->n_kv_heads * hd;

    /* Validate everything before touching any cache. */
    int rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        const forward_seq *sq = &seqs[s];
        if (sq->n_tokens < 1)
            return lr_error_set(err, LR_EINVAL, "sequence %d has no tokens", s);
        if (sq->kv->len + sq->n_tokens > sq->kv->cap)
            return lr_error_set(err, LR_EINVAL, "sequence %d: %d + %d tokens exceed its cache "
                                "of %d positions", s, sq->kv->len, sq->n_tokens, sq->kv->cap);
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
            memcpy(f->x + (size_t)(r0 + i) * c->hidden,
                   m->embed + (size_t)sq->tokens[i] * c->hidden, sizeof(float) * c->hidden);
            double pos = sq->kv->len + i;
            for (int j = 0; j < half; j++) {
                double a = pos * f->inv_freq[j];
                f->cos_t[(size_t)(r0 + i) * half + j] = (float)cos(a);
                f->sin_t[(size_t)(r0 + i) * half + j] = (float)sin(a);
            }
        }
    }

    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        rmsnorm(f->xn, f->x, L->attn_norm, rows, c->hidden, c->rms_eps);
        project(f, seqs, n_seqs, l, PROJ_Q, f->xn, f->q);
        project(f, seqs, n_seqs, l, PROJ_K, f->xn, f->k);
        project(f, seqs, n_seqs, l, PROJ_V, f->xn, f->v);
        rope(f->q, rows, c->n_heads, hd, f->cos_t, f->sin_t);
        rope(f->k, rows, c->n_kv_heads, hd, f->cos_t, f->sin_t);
        for (int s = 0; s < n_seqs; s++) {
            kv_cache *kv = seqs[s].kv;
            int r0 = f->row0[s], n = seqs[s].n_tokens;
            memcpy(kv_cache_k(kv, l) + (size_t)kv->len * kv_dim, f->k + (size_t)r0 * kv_dim,
                   sizeof(float) * n * kv_dim);
            memcpy(kv_cache_v(kv, l) + (size_t)kv->len * kv_dim, f->v + (size_t)r0 * kv_dim,
                   sizeof(float) * n * kv_dim);
            attend(f, kv, l, kv->len, n, f->q + (size_t)r0 * q_dim, f->att + (size_t)r0 * q_dim);
        }
        project(f, seqs, n_seqs, l, PROJ_O, f->att, f->out);
        for (size_t i = 0; i < (size_t)rows * c->hidden; i++)
            f->x[i] += f->out[i];

        rmsnorm(f->xn, f->x, L->ffn_norm, rows, c->hidden, c->rms_eps);
        project(f, seqs, n_seqs, l, PROJ_GATE, f->xn, f->gate);
        project(f, seqs, n_seqs, l, PROJ_UP, f->xn, f->up);
        for (size_t i = 0; i < (size_t)rows * c->intermediate; i++) {
            float g = f->gate[i];
            /* silu(g) = g / (1 + e^-g); e^-g via exp_fast for g >= 0, else e^g / (1 + e^g) */
            float e = exp_fast(g < 0 ? g : -g);
            float sig = g < 0 ? e / (1.0f + e) : 1.0f / (1.0f + e);
            f->gate[i] = g * sig * f->up[i];
        }
        project(f, seqs, n_seqs, l, PROJ_DOWN, f->gate, f->out);
        for (size_t i = 0; i < (size_t)rows * c->hidden; i++)
            f->x[i] += f->out[i];
    }
    for (int s = 0; s < n_seqs; s++)
        seqs[s].kv->len += seqs[s].n_tokens;

    /* Final norm and lm_head for the last row of each sequence that wants logits. */
    int n_out = 0;
    for (int s = 0; s < n_seqs; s++)
        if (seqs[s].want_logits) {
            int last = f->row0[s + 1] - 1;
            rmsnorm(f->xn + (size_t)n_out * c->hidden, f->x + (size_t)last * c->hidden, m->norm,
                    1, c->hidden, c->rms_eps);
            n_out++;
        }
    if (n_out)
        matmul(logits, f->xn, m->lm_head, n_out, c->hidden, c->vocab_size);
    return 0;
}
