/* variant: merged W' construction (OpenBLAS) and the on-the-fly LoRA products (smallmm
 * products, run by the caller). */
#include "variant.h"

#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "clock.h"
#include "hugemem.h"

int variant_mix_max_rank(const variant_mix *mix)
{
    int r = 0;
    for (int i = 0; mix && i < mix->n; i++)
        if (mix->t[i].w->max_rank > r)
            r = mix->t[i].w->max_rank;
    return r;
}

int variant_mix_cmp(const variant_mix *a, const variant_mix *b)
{
    int na = a ? a->n : 0, nb = b ? b->n : 0;
    if (na != nb)
        return na < nb ? -1 : 1;
    for (int i = 0; i < na; i++) {
        uintptr_t x = (uintptr_t)a->t[i].w, y = (uintptr_t)b->t[i].w;
        if (x != y)
            return x < y ? -1 : 1;
        if (a->t[i].weight != b->t[i].weight)
            return a->t[i].weight < b->t[i].weight ? -1 : 1;
    }
    return 0;
}

const wtensor *variant_weight(const model *m, const variant *v, int layer, model_proj p)
{
    if (v && v->w[layer * PROJ_COUNT + p].data)
        return &v->w[layer * PROJ_COUNT + p];
    return &m->layers[layer].w[p];
}


/* Whether any term of the mix has a LoRA matrix on (layer, p). */
static int mix_touches(const variant_mix *mix, int layer, model_proj p)
{
    for (int i = 0; i < mix->n; i++)
        if (lora_weights_get(mix->t[i].w, layer, p)->r > 0)
            return 1;
    return 0;
}

/* The memory of the last W' freed, kept for the next merge: --merge auto drops a W' when
 * its adapter's share falls and builds one again when it rises, --merge always builds one
 * per adapter loaded after an eviction; each would otherwise be backed again page by page
 * (hugemem.h: 1-2 s for a 425 MB W' in a VM with free page reporting). One block, of any
 * size; a merge that cannot use it frees it first, so at most one W' is kept beside the
 * ones in use. */
static huge_cache spare = HUGE_CACHE_INIT(1, (size_t)-1);

variant *variant_merge(const model *m, const variant_mix *mix, lr_error *err)
{
    return variant_merge_paced(m, mix, 1.0, err);
}

variant *variant_merge_paced(const model *m, const variant_mix *mix, double duty,
                             lr_error *err)
{
    const model_config *c = &m->cfg;
    float *f32 = NULL;  /* [out, in] staging: W' row-major before its layout */
    variant *v = calloc(1, sizeof *v);
    if (!v || !(v->w = calloc((size_t)c->n_layers * PROJ_COUNT, sizeof *v->w))) {
        lr_error_set(err, LR_ENOMEM, "out of memory merging adapters");
        goto fail;
    }
    v->n_layers = c->n_layers;
    for (int i = 0; i < mix->n; i++)
        if (mix->t[i].w->n_layers != c->n_layers) {
            lr_error_set(err, LR_EINVAL, "adapter has %d layers, base model has %d",
                         mix->t[i].w->n_layers, c->n_layers);
            goto fail;
        }

    /* First pass: which matrices are touched, and how much memory W' needs. */
    size_t total = 0, stage = 0, stage_a = 0;
    wt_type type = model_matrix_type(m);   /* W' as W: F32 in panels, BF16, Q8 */
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            if (mix_touches(mix, l, (model_proj)p)) {
                int out, in;
                model_config_proj_shape(c, (model_proj)p, &out, &in);
                total += wtensor_arena_bytes(type, out, in);
                if ((size_t)out * in > stage)
                    stage = (size_t)out * in;
                for (int i = 0; i < mix->n; i++) {
                    size_t r = (size_t)lora_weights_get(mix->t[i].w, l, (model_proj)p)->r;
                    if (r * (size_t)in > stage_a)
                        stage_a = r * (size_t)in;
                }
            }
        }
    v->bytes = total;
    if (total == 0)
        return v;
    size_t cap = total;
    huge_place_report place;
    void *arena = huge_cache_take(&spare, total, &cap);
    if (arena) {
        /* placed afresh: where the kept block's pages were far when it was first placed
         * (a --merge auto W' once found no near pages in its 1x extra memory), every
         * W' built in it would be slow for as long as the block is kept */
        huge_place_near(arena, total, duty, &place);
        huge_place_log("merged weights (in a kept block)", &place);
    } else {
        huge_cache_drain(&spare);   /* a kept W' of another size: not held beside a new one */
        if ((arena = huge_alloc_near(total, duty, &place)))
            huge_place_log("merged weights", &place);
    }
    if (!arena) {
        lr_error_set(err, LR_ENOMEM, "cannot allocate %zu MB for merged weights", total >> 20);
        goto fail;
    }
    /* on huge pages as the base's weights (hugemem.h): with 4 KiB pages a decode step
     * that streamed W' took 5-10% longer than one streaming W, so "merged adds no
     * latency" did not hold */
    v->arena = arena;
    v->arena_bytes = cap;
    /* The sum is made in F32 in a row-major staging matrix, then laid out in panels (F32P)
     * or rounded once (BF16, Q8): a model's matrices are never row-major F32. After it,
     * room for an adapter's A laid out row-major for the GEMM (lora.h may hold it in
     * panels). */
    if (!(f32 = malloc((stage + stage_a) * sizeof(float)))) {
        lr_error_set(err, LR_ENOMEM, "out of memory merging adapters");
        goto fail;
    }

    /* Second pass: W' = W, then W' += (weight·s) B A per term. */
    char *next = arena;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            if (!mix_touches(mix, l, (model_proj)p))
                continue;
            int out, in;
            model_config_proj_shape(c, (model_proj)p, &out, &in);
            double t0 = duty < 1.0 ? clock_seconds() : 0;
            const wtensor *w = &m->layers[l].w[p];
            wtensor_rows_f32(w, in, 0, out, f32);
            for (int i = 0; i < mix->n; i++) {
                const lora_matrix *lm = lora_weights_get(mix->t[i].w, l, (model_proj)p);
                if (lm->r == 0)
                    continue;
                /* f32 [out, in] += alpha · (Bᵀ [r, out])ᵀ · A [r, in] */
                float *a = f32 + stage;
                wtensor_rows_f32(&(wtensor){lm->a_type, lm->a, NULL}, in, 0, lm->r, a);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, lm->r,
                            mix->t[i].weight * lm->scale, lm->bt, out, a, in, 1.0f, f32, in);
            }
            wtensor wp = wtensor_at(type, out, in, next);
            wtensor_from_f32(type, f32, out, in, next, (float *)wp.scale);
            v->w[l * PROJ_COUNT + p] = wp;
            next += wtensor_arena_bytes(type, out, in);
            if (duty < 1.0)
                clock_pace(t0, duty);
        }
    if (mprotect(arena, total, PROT_READ) != 0) {
        lr_error_set(err, LR_EIO, "mprotect of merged weights failed");
        goto fail;
    }
    free(f32);
    return v;
fail:
    free(f32);
    variant_free(v);
    return NULL;
}

void variant_free(variant *v)
{
    if (!v)
        return;
    if (v->arena)
        huge_cache_put(&spare, v->arena, v->arena_bytes);
    free(v->w);
    free(v);
}

/* ---- on the fly ---- */

/* Term i's matrices for projections ps[0..n_ps) into lm, their total rank into *total_r;
 * 1 when the group's A's are back to back (as peft_load lays them out), so that one
 * product X·[A_0; A_1; ...]ᵀ gives the whole T [n, total_r]. */
static int term_group(const variant_mix *mix, int i, int layer, const model_proj *ps,
                      int n_ps, int in, const lora_matrix **lm, int *total_r)
{
    int contiguous = n_ps > 0;
    *total_r = 0;
    for (int k = 0; k < n_ps; k++) {
        lm[k] = lora_weights_get(mix->t[i].w, layer, ps[k]);
        contiguous &= lm[k]->r > 0 && (k == 0 || (lm[k]->a == lm[k - 1]->a +
                                                          (size_t)lm[k - 1]->r * in &&
                                                      lm[k]->a_type == lm[0]->a_type));
        *total_r += lm[k]->r;
    }
    return contiguous;
}

void variant_small_jobs(const variant_mix *mix, int layer, const model_proj *ps, int n_ps,
                        int in, const float *x, int n, float *const *ys, const int *outs,
                        float **scratch, smallmm_xmt *xa, smallmm_tb *tb, int *n_xa,
                        int *n_tb)
{
    int nx = 0, nt = 0;
    for (int i = 0; i < mix->n; i++) {
        const lora_matrix *lm[VARIANT_GROUP_MAX];
        int total_r;
        int contiguous = term_group(mix, i, layer, ps, n_ps, in, lm, &total_r);
        /* T [n, total_r]: one X·Aᵀ for the group when its A's are back to back (the A
         * products of 16 rows each had taken the outer-product tiles' 12-row tile and a
         * second one for 4 rows), else one per projection into T's columns; each
         * projection's ·Bᵀ reads its columns */
        float *t = *scratch;
        *scratch += (size_t)n * total_r;
        if (contiguous)
            xa[nx++] = (smallmm_xmt){x, n, {lm[0]->a_type, lm[0]->a, NULL}, total_r, t, total_r};
        for (int g = 0, col0 = 0, off = 0; g < n_ps; col0 += outs[g], off += lm[g]->r, g++) {
            if (lm[g]->r == 0)
                continue;
            if (!contiguous)
                xa[nx++] = (smallmm_xmt){x, n, {lm[g]->a_type, lm[g]->a, NULL}, lm[g]->r,
                                         t + off, total_r};
            tb[nt++] = (smallmm_tb){t + off, total_r, n, lm[g]->bt, lm[g]->r, outs[g],
                                    mix->t[i].weight * lm[g]->scale, ys[g], col0};
        }
    }
    *n_xa = nx;
    *n_tb = nt;
}

size_t variant_scratch_floats(const variant_mix *mix, int max_rows)
{
    /* every term's T [rows, Σ r of the group] at once */
    int r = variant_mix_max_rank(mix), terms = mix ? mix->n : 0;
    return (size_t)max_rows * terms * VARIANT_GROUP_MAX * r;
}
