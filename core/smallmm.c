/* smallmm: the decode-sized products, as two kinds of parallel pass over the pool. */
#include "smallmm.h"

#include <stddef.h>
#include <stdint.h>

#include "pool.h"
#include "vec16.h"

static inline float hsum16(v16 v)
{
    float s = 0;
    for (int k = 0; k < 16; k++)
        s += v[k];
    return s;
}

/* y[i·ldy + j] = x_i · m_j for NJ rows m_j of M (rows past nj repeat the last one and are
 * not written) and NI rows x_i (likewise past ni): every load of M feeds NI FMAs, NI·NJ
 * accumulators stay in registers. The next NJ rows of M are prefetched as these stream:
 * ~10% more bandwidth than the hardware prefetchers alone reach on the NJ interleaved
 * streams (measured on the 2-core VM; prefetching past M's end is harmless). */
static inline __attribute__((always_inline)) void
dots_block(const float *x, int ni, int in, const float *m, int nj, float *y, int ldy, int NI,
           int NJ)
{
    const float *mr[8], *xr[4];
    for (int j = 0; j < NJ; j++)
        mr[j] = m + (size_t)(j < nj ? j : nj - 1) * in;
    for (int i = 0; i < NI; i++)
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
    v16 acc[4][8];
    for (int i = 0; i < NI; i++)
        for (int j = 0; j < NJ; j++)
            acc[i][j] = (v16){0};
    int d = 0;
    for (; d + 16 <= in; d += 16) {
        v16 mv[8];
        for (int j = 0; j < NJ; j++) {
            __builtin_prefetch(mr[j] + d + (size_t)NJ * in, 0, 3);
            mv[j] = ld16(mr[j] + d);
        }
        for (int i = 0; i < NI; i++) {
            v16 xv = ld16(xr[i] + d);
            for (int j = 0; j < NJ; j++)
                acc[i][j] += xv * mv[j];
        }
    }
    for (int i = 0; i < ni && i < NI; i++)
        for (int j = 0; j < nj && j < NJ; j++) {
            float s = hsum16(acc[i][j]);
            for (int e = d; e < in; e++)
                s += xr[i][e] * mr[j][e];
            y[(size_t)i * ldy + j] = s;
        }
}

/* Rows [lo, hi) of one product. */
static void xmt_rows(const smallmm_xmt *jb, int in, int lo, int hi)
{
    if (jb->n == 1) {
        for (int j = lo; j < hi; j += 8)
            dots_block(jb->x, 1, in, jb->m + (size_t)j * in, hi - j < 8 ? hi - j : 8, jb->y + j,
                       jb->ldy, 1, 8);
        return;
    }
    for (int j = lo; j < hi; j += 4)
        for (int i = 0; i < jb->n; i += 4)
            dots_block(jb->x + (size_t)i * in, jb->n - i < 4 ? jb->n - i : 4, in,
                       jb->m + (size_t)j * in, hi - j < 4 ? hi - j : 4,
                       jb->y + (size_t)i * jb->ldy + j, jb->ldy, 4, 4);
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
    xmt_pass ps = {jobs, n_jobs, in, p ? pool_threads(p) : 1, 0};
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
