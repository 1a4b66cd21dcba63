/* smallmm: the decode-sized products, as two kinds of parallel pass over the pool. */
#include "smallmm.h"

#include <stddef.h>
#include <stdint.h>

#include "pool.h"
#include "vec16.h"

/* The vector the kernels work in: 16 floats (one zmm) with AVX-512, 8 (one ymm)
 * otherwise; a tile of X·Mᵀ is TI rows of X by TJ rows of M, TI·TJ = VL accumulators
 * (4×4 beat 4×6 by ~10% on AVX-512: 31 live registers leave the loop no slack). */
#ifdef __AVX512F__
#define VL 16
#define TI 4
#define TJ 4
typedef v16 vf;
#define LDV ld16
#else
#define VL 8
#define TI 2
#define TJ 4
typedef float vf __attribute__((vector_size(32)));
typedef float vfu __attribute__((vector_size(32), aligned(4), may_alias));
static inline vf ldv8(const float *p) { return *(const vfu *)p; }
#define LDV ldv8
#endif
typedef int vi __attribute__((vector_size(VL * 4)));

/* One level of the reduction tree. a and b each hold 2^(level-1) groups of partial sums
 * (group size g = VL / 2^(level-1), group k belonging to accumulator k); the result holds
 * a's groups then b's, each half as long: (first half + second half) of every group. */
static inline __attribute__((always_inline)) vf fold(vf a, vf b, int level)
{
#if VL == 16
    switch (level) {
    case 1:
        return __builtin_shuffle(a, b, (vi){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}) +
               __builtin_shuffle(a, b, (vi){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
    case 2:
        return __builtin_shuffle(a, b, (vi){0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27}) +
               __builtin_shuffle(a, b, (vi){4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31});
    case 3:
        return __builtin_shuffle(a, b, (vi){0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29}) +
               __builtin_shuffle(a, b, (vi){2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31});
    default:
        return __builtin_shuffle(a, b, (vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}) +
               __builtin_shuffle(a, b, (vi){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
    }
#else
    switch (level) {
    case 1:
        return __builtin_shuffle(a, b, (vi){0, 1, 2, 3, 8, 9, 10, 11}) +
               __builtin_shuffle(a, b, (vi){4, 5, 6, 7, 12, 13, 14, 15});
    case 2:
        return __builtin_shuffle(a, b, (vi){0, 1, 4, 5, 8, 9, 12, 13}) +
               __builtin_shuffle(a, b, (vi){2, 3, 6, 7, 10, 11, 14, 15});
    default:
        return __builtin_shuffle(a, b, (vi){0, 2, 4, 6, 8, 10, 12, 14}) +
               __builtin_shuffle(a, b, (vi){1, 3, 5, 7, 9, 11, 13, 15});
    }
#endif
}

/* Horizontal sums of the n <= VL accumulators acc[0..n): lane k of the result is the sum
 * of acc[k]'s lanes. A tree of folds (log2 VL levels, ~n folds of 2 permutes + 1 add)
 * instead of n scalar reductions. acc is clobbered. */
static inline __attribute__((always_inline)) vf reduce_lanes(vf *acc, int n)
{
    int p = 1, level = 1;
    while (p < n)
        p *= 2;
    for (int k = n; k < p && k < VL; k++)
        acc[k] = (vf){0};
#pragma GCC unroll 16
    for (; p > 1; p /= 2, level++)
#pragma GCC unroll 16
        for (int k = 0; k < p / 2; k++)
            acc[k] = fold(acc[2 * k], acc[2 * k + 1], level);
    for (; (1 << (level - 1)) < VL; level++)
        acc[0] = fold(acc[0], acc[0], level);
    return acc[0];
}

/* y[i·ldy + j] = x_i · m_j for ni <= NI rows x_i of X and nj <= NJ rows m_j of M (rows
 * past nj / ni repeat the last one and are not written; NI, NJ are constants at every
 * call so each shape compiles to its own register-blocked loop): every load of M feeds
 * NI FMAs and every load of X NJ, the NI·NJ accumulators stay in registers, and one tree
 * reduction ends the tile. With prefetch, the next NJ rows of M are prefetched as these
 * stream: ~10% more bandwidth than the hardware prefetchers alone reach on the NJ
 * interleaved streams (measured on the 2-core VM; prefetching past M's end is harmless). */
static inline __attribute__((always_inline)) void
dots_tile(const float *x, int ni, int in, const float *m, int nj, float *y, int ldy,
          int prefetch, int NI, int NJ)
{
    const float *mr[8], *xr[TI];
    for (int j = 0; j < NJ; j++)
        mr[j] = m + (size_t)(j < nj ? j : nj - 1) * in;
    for (int i = 0; i < NI; i++)
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
    vf acc[2 * VL];
    for (int k = 0; k < NI * NJ; k++)
        acc[k] = (vf){0};
    int d = 0;
    for (; d + VL <= in; d += VL) {
        vf mv[8];
        for (int j = 0; j < NJ; j++) {
            if (prefetch)
                __builtin_prefetch(mr[j] + d + (size_t)NJ * in, 0, 3);
            mv[j] = LDV(mr[j] + d);
        }
        for (int i = 0; i < NI; i++) {
            vf xv = LDV(xr[i] + d);
            /* in a register: GCC would otherwise fold this load into each of the NJ FMAs,
             * and the loads, not the FMAs, would bound the loop */
#if defined(__AVX512F__) || defined(__AVX__)   /* one register holds a vf */
            __asm__("" : "+v"(xv));
#endif
            for (int j = 0; j < NJ; j++)
                acc[i * NJ + j] += xv * mv[j];
        }
    }
    /* the accumulators VL at a time through the reduction tree; k = i·NJ + j */
    float sums[2 * VL];
    for (int c = 0; c < NI * NJ; c += VL) {
        vf part = reduce_lanes(acc + c, NI * NJ - c < VL ? NI * NJ - c : VL);
        for (int k = 0; k < VL; k++)
            sums[c + k] = part[k];
    }
    for (int i = 0; i < ni && i < NI; i++)
        for (int j = 0; j < nj && j < NJ; j++) {
            float s = sums[i * NJ + j];
            for (int e = d; e < in; e++)
                s += xr[i][e] * mr[j][e];
            y[(size_t)i * ldy + j] = s;
        }
}

/* Rows [lo, hi) of one product: blocks of TJ rows of M (8 for one or two rows of X, which
 * are bound by streaming M: more rows of M in flight, 17% faster for two rows), and for
 * each, every tile of TI rows of X (the block of M is in L1 by then; X, at most 64 rows,
 * in L2), the last tile with exactly the rows left. */
static void xmt_rows(const smallmm_xmt *jb, int in, int lo, int hi)
{
    if (jb->n == 1) {
        for (int j = lo; j < hi; j += 8)
            dots_tile(jb->x, 1, in, jb->m + (size_t)j * in, hi - j < 8 ? hi - j : 8, jb->y + j,
                      jb->ldy, 1, 1, 8);
        return;
    }
    if (jb->n == 2) {
        for (int j = lo; j < hi; j += 8)
            dots_tile(jb->x, 2, in, jb->m + (size_t)j * in, hi - j < 8 ? hi - j : 8, jb->y + j,
                      jb->ldy, 1, 2, 8);
        return;
    }
    for (int j = lo; j < hi; j += TJ) {
        const float *m = jb->m + (size_t)j * in;
        int nj = hi - j < TJ ? hi - j : TJ;
        for (int i = 0; i < jb->n; i += TI) {
            const float *x = jb->x + (size_t)i * in;
            float *y = jb->y + (size_t)i * jb->ldy + j;
            int ni = jb->n - i, pf = i == 0;
            if (ni >= TI)
                dots_tile(x, TI, in, m, nj, y, jb->ldy, pf, TI, TJ);
#if TI > 2
            else if (ni == 3)
                dots_tile(x, 3, in, m, nj, y, jb->ldy, pf, 3, TJ);
#endif
            else if (ni == 2)
                dots_tile(x, 2, in, m, nj, y, jb->ldy, pf, 2, TJ);
            else
                dots_tile(x, 1, in, m, nj, y, jb->ldy, pf, 1, TJ);
        }
    }
}

typedef struct {
    const smallmm_xmt *jobs;
    int n_jobs, in, n_tasks;
    int64_t rows;  /* Σ rows: task k takes global rows [rows·k/n_tasks, rows·(k+1)/n_tasks) */
} xmt_pass;

static void xmt_task(void *ctx, int task, int thread)
{
    (void)thread;
    const xmt_pass *ps = ctx;
    int64_t g0 = ps->rows * task / ps->n_tasks, g1 = ps->rows * (task + 1) / ps->n_tasks;
    int64_t base = 0;  /* global index of the current product's first row */
    for (int k = 0; k < ps->n_jobs && base < g1; base += ps->jobs[k].rows, k++) {
        int64_t lo = g0 - base, hi = g1 - base;
        if (hi <= 0 || lo >= ps->jobs[k].rows)
            continue;
        xmt_rows(&ps->jobs[k], ps->in, lo < 0 ? 0 : (int)lo,
                 hi > ps->jobs[k].rows ? ps->jobs[k].rows : (int)hi);
    }
}

void smallmm_xmt_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs)
{
    xmt_pass ps = {jobs, n_jobs, in, p ? 8 * pool_threads(p) : 1, 0};
    for (int k = 0; k < n_jobs; k++)
        ps.rows += jobs[k].rows;
    if (ps.rows == 0)
        return;
    if (ps.n_tasks > 1)
        pool_run(p, xmt_task, &ps, ps.n_tasks);
    else
        xmt_task(&ps, 0, 0);
}

/* Columns [c0, c1) of one product: 64 at a time, then 16, then a scalar tail; every load
 * of Bt feeds each row. */
static void tb_cols(const smallmm_tb *jb, int c0, int c1)
{
    int c = c0;
    for (; c + 64 <= c1; c += 64)
        for (int i = 0; i < jb->n; i++) {
            float *y = jb->y + (size_t)i * jb->out + c;
            const float *t = jb->t + (size_t)i * jb->ldt;
            v16 a0 = ld16(y), a1 = ld16(y + 16), a2 = ld16(y + 32), a3 = ld16(y + 48);
            const float *b = jb->bt + c;
            for (int j = 0; j < jb->r; j++, b += jb->out) {
                float tj = jb->alpha * t[j];
                a0 += tj * ld16(b);
                a1 += tj * ld16(b + 16);
                a2 += tj * ld16(b + 32);
                a3 += tj * ld16(b + 48);
            }
            st16(y, a0);
            st16(y + 16, a1);
            st16(y + 32, a2);
            st16(y + 48, a3);
        }
    for (; c + 16 <= c1; c += 16)
        for (int i = 0; i < jb->n; i++) {
            float *y = jb->y + (size_t)i * jb->out + c;
            const float *t = jb->t + (size_t)i * jb->ldt;
            v16 a0 = ld16(y);
            const float *b = jb->bt + c;
            for (int j = 0; j < jb->r; j++, b += jb->out)
                a0 += jb->alpha * t[j] * ld16(b);
            st16(y, a0);
        }
    for (; c < c1; c++)
        for (int i = 0; i < jb->n; i++) {
            const float *t = jb->t + (size_t)i * jb->ldt;
            float s = 0;
            for (int j = 0; j < jb->r; j++)
                s += jb->alpha * t[j] * jb->bt[(size_t)j * jb->out + c];
            jb->y[(size_t)i * jb->out + c] += s;
        }
}

typedef struct {
    const smallmm_tb *jobs;
    int n_jobs, n_tasks;
} tb_pass;

/* Task k: the k-th share of every product's columns, split at multiples of 16 — the same
 * split for every product with the same out, so no two tasks write one element. */
static void tb_task(void *ctx, int task, int thread)
{
    (void)thread;
    const tb_pass *ps = ctx;
    for (int k = 0; k < ps->n_jobs; k++) {
        const smallmm_tb *jb = &ps->jobs[k];
        int blocks = (jb->out + 15) / 16;
        int c0 = blocks * task / ps->n_tasks * 16, c1 = blocks * (task + 1) / ps->n_tasks * 16;
        tb_cols(jb, c0, c1 < jb->out ? c1 : jb->out);
    }
}

void smallmm_tb_run(struct pool *p, const smallmm_tb *jobs, int n_jobs)
{
    tb_pass ps = {jobs, n_jobs, p ? pool_threads(p) : 1};
    if (n_jobs == 0)
        return;
    if (ps.n_tasks > 1)
        pool_run(p, tb_task, &ps, ps.n_tasks);
    else
        tb_task(&ps, 0, 0);
}
