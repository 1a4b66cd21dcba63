/* smallmm: matrix products for a handful of activation rows (decode steps), on the
 * engine's pool. Decoding reads every weight once per token, so these products are
 * bound by memory bandwidth: what counts is streaming everything a step needs — base W,
 * merged W', adapters' A and Bᵀ — in few parallel passes with every core pulling. One
 * call computes many independent products (q, k and v for every run of sequences, plus
 * every adapter's X·Aᵀ), split evenly over the threads; OpenBLAS would take one
 * threaded call, with its own start-up cost, per product. */
#ifndef LORAD_SMALLMM_H
#define LORAD_SMALLMM_H

#include "wtensor.h"

struct pool;

/* Most activation rows forward() sends here in one pass (decode batches of up to 64
 * sequences, short prompts); a larger batch goes in windows of at most this many rows, one
 * pass each. The kernels themselves take any n: each tile of M is read from memory once
 * and reused for every tile of X, which stays in L2 up to a few hundred rows (windows of
 * 128 or 256 rows were no faster than 64 for a 512-token prompt). */
#define SMALLMM_MAX_ROWS 64

/* Y [n, rows] (row stride ldy) = X [n, in] (row stride in) · Mᵀ, M [rows, in] in F32 or
 * BF16 row-major, or F32P or Q8 in panels (wtensor.h; products in F32 on the dequantized
 * weights). */
typedef struct {
    const float *x;
    int n;            /* >= 1 */
    wtensor m;
    int rows;
    float *y;
    int ldy;
} smallmm_xmt;

/* Y [n, out] (row stride out) += alpha · T [n, r] (row stride ldt) · Bt, Bt [r, out]
 * row-major (an adapter's Bᵀ). col0: where the product's columns start when the outputs
 * of the pass are laid end to end (q's, then k's, then v's): the pass shares that span
 * among its threads in order, as smallmm_xmt_run shares its rows, so that a thread adds
 * to the columns it most likely wrote there (0 for all: every product split alike).
 * Products that write the same elements must have the same out and col0: each thread
 * then owns the same columns of all of them. */
typedef struct {
    const float *t;
    int ldt, n;       /* n >= 1 */
    const float *bt;
    int r, out;
    float alpha;
    float *y;
    int col0;
} smallmm_tb;

/* Computes every product (all with inputs of length in), the rows of all M split evenly
 * over the pool's threads (p NULL: on the caller). Engine thread. */
void smallmm_xmt_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs);

/* Computes every product, the columns of each split evenly over the pool's threads (p
 * NULL: on the caller). Engine thread. */
void smallmm_tb_run(struct pool *p, const smallmm_tb *jobs, int n_jobs);

/* smallmm_xmt_run(xmt), then smallmm_tb_run(tb), in one job of the pool: each thread,
 * once every X·Mᵀ row is done, takes its share of the ·Bᵀ columns, so an adapter's ·Bᵀ
 * (which reads T from its X·Aᵀ and adds to the base's Y) costs no second dispatch of the
 * pool. The same results as the two calls. Engine thread. */
void smallmm_run(struct pool *p, int in, const smallmm_xmt *xmt, int n_xmt,
                 const smallmm_tb *tb, int n_tb);

/* Where thread `thread` of pool p will begin reading weights in smallmm_run(p, in, xmt,
 * n_xmt, ...): *at, and how many bytes (at most max) it reads from there in order, within
 * the first product it touches. 0 when it reads none (a thread smallmm_run would not use,
 * no work). forward() prefetches these bytes while the threads do the work between two
 * products. */
size_t smallmm_lead(struct pool *p, int in, const smallmm_xmt *xmt, int n_xmt, int thread,
                    size_t max, const char **at);

/* The kernel families, each for an instruction set; SMALLMM_AUTO picks the best this CPU
 * runs (or the one named by the environment variable LORAD_ISA, when the CPU runs it). */
typedef enum {
    SMALLMM_AUTO = -1,
    SMALLMM_PORTABLE = 0,  /* plain C with vector extensions, the compiler's baseline ISA */
    SMALLMM_AVX2,          /* AVX2 + FMA, 8-float vectors */
    SMALLMM_AVX512,        /* AVX-512 F/BW/DQ/VL, 16-float vectors */
    SMALLMM_AVX512BF16,    /* the same, BF16 weights × one or two rows in vdpbf16ps */
    SMALLMM_AMX,           /* the same, F32P products of many rows on AMX tiles (AMX-BF16,
                            * F32 split exactly into three BF16: the error of F32) */
} smallmm_isa;

/* 1 when this CPU (and this build) can run isa. Thread-safe. */
int smallmm_isa_supported(smallmm_isa isa);

/* Chooses the kernels every later product uses (tests and benchmarks force each in turn);
 * -1 when the CPU cannot run them (nothing changes). Call with no product running. */
int smallmm_set_isa(smallmm_isa isa);

/* The kernels in use (chosen on first use when nobody set them). */
smallmm_isa smallmm_get_isa(void);

/* "portable", "avx2", "avx512", "avx512bf16", "amx" ("auto" for SMALLMM_AUTO); parse: -1 for
 * anything else. */
const char *smallmm_isa_name(smallmm_isa isa);
int smallmm_isa_parse(const char *s, smallmm_isa *isa);

#endif
