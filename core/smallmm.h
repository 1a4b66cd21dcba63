/* smallmm: matrix products for a handful of activation rows (decode steps), on the
 * engine's pool. Decoding reads every weight once per token, so these products are
 * bound by memory bandwidth: what counts is streaming everything a step needs — base W,
 * merged W', adapters' A and Bᵀ — in few parallel passes with every core pulling. One
 * call computes many independent products (q, k and v for every run of sequences, plus
 * every adapter's X·Aᵀ), split evenly over the threads; OpenBLAS would take one
 * threaded call, with its own start-up cost, per product. */
#ifndef LORAD_SMALLMM_H
#define LORAD_SMALLMM_H

struct pool;

/* Most activation rows forward() sends here (decode batches of up to 64 sequences, short
 * prompts); larger batches go to OpenBLAS. The kernels themselves take any n: each tile of
 * M is read from memory once and reused for every tile of X, which stays in L2 up to a
 * few hundred rows. */
#define SMALLMM_MAX_ROWS 64

/* Y [n, rows] (row stride ldy) = X [n, in] (row stride in) · Mᵀ, M [rows, in] row-major. */
typedef struct {
    const float *x;
    int n;            /* >= 1 */
    const float *m;
    int rows;
    float *y;
    int ldy;
} smallmm_xmt;

/* Y [n, out] (row stride out) += alpha · T [n, r] (row stride ldt) · Bt, Bt [r, out]
 * row-major (an adapter's Bᵀ). Products with the same y and out may appear together:
 * each thread owns the same columns of every product. */
typedef struct {
    const float *t;
    int ldt, n;       /* n >= 1 */
    const float *bt;
    int r, out;
    float alpha;
    float *y;
} smallmm_tb;

/* Computes every product (all with inputs of length in), the rows of all M split evenly
 * over the pool's threads (p NULL: on the caller). Engine thread. */
void smallmm_xmt_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs);

/* Computes every product, the columns of each split evenly over the pool's threads (p
 * NULL: on the caller). Engine thread. */
void smallmm_tb_run(struct pool *p, const smallmm_tb *jobs, int n_jobs);

#endif
