/* Tests for core/smallmm: the decode-sized products against a float64 reference written
 * here, over row counts, input lengths and output widths that hit every blocking edge
 * (tails of 8 and 16 lanes, partial tiles of 1..3 rows of X and of 4 or 8 rows of M, splits
 * of a product between tasks, batches up to and past SMALLMM_MAX_ROWS, Q8 blocks cut by
 * the row's end), inline and on pools of 2 and 3 threads, with weights in F32, BF16 and
 * Q8, for every instruction set's kernels this CPU runs (each forced in turn; avx512bf16's
 * BF16 products of one and two rows are exact to 2^-17 of x, within the tolerance; amx's
 * F32P products of 25 rows and more, on the tiles, as exact as F32: leaving out one of
 * their six terms made test_bf16_and_q8_weights_match_reference_at_every_edge fail). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"
#include "core/smallmm.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void)  /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (2.0 / 16777216.0) - 1.0);
}

static float *rand_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

/* |got - want| within float rounding of a sum of `terms` products of magnitude <= 1. */
static void expect_near(float got, double want, int terms, const char *what, int i, int j)
{
    double tol = 1e-6 * (terms + 1) + 1e-6 * fabs(want);
    ck_assert_msg(fabs(got - want) <= tol, "%s[%d][%d] = %.9g, reference %.9g", what, i, j,
                  got, want);
}

/* jb's result Y against float64: X [n, in] times m [rows, in] (the weights as F32). */
static void expect_xmt(const smallmm_xmt *jb, const float *m, int in)
{
    for (int i = 0; i < jb->n; i++)
        for (int j = 0; j < jb->rows; j++) {
            double want = 0;
            for (int d = 0; d < in; d++)
                want += (double)jb->x[(size_t)i * in + d] * m[(size_t)j * in + d];
            expect_near(jb->y[(size_t)i * jb->ldy + j], want, in, "Y", i, j);
        }
}

static pool *make_pool(int threads)
{
    if (threads == 1)
        return NULL;
    pool *p = pool_create(threads, NULL);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* A random [rows, in] weight matrix of type t, built from its parts — BF16 bit patterns,
 * int8 values and scales — so the reference below (*deq, the F32 value of each element as
 * the format defines it: the bits shifted up; q · scale) does not use core/wtensor.c's
 * conversions (Q8's parts are laid out in panels by wtensor_q8_pack: a wrong layout
 * shows as wrong products). */
typedef struct {
    wtensor w;
    void *data;
    float *scale;
    float *deq;   /* [rows, in] */
} test_matrix;

static test_matrix make_matrix(wt_type t, int rows, int in)
{
    test_matrix tm = {0};
    size_t n = (size_t)rows * in;
    int nb = (in + 31) / 32;
    tm.deq = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(tm.deq);
    if (t == WT_F32) {
        tm.data = rand_floats(n);
        memcpy(tm.deq, tm.data, n * sizeof(float));
    } else if (t == WT_F32P) {
        /* panels of 16 rows, column by column (wtensor.h), the last padded with zeros —
         * laid out here, not by wtensor_from_f32 */
        size_t padded = (size_t)(rows + 15) / 16 * 16 * in;
        float *f = rand_floats(n), *pan = calloc(padded ? padded : 1, sizeof(float));
        ck_assert_ptr_nonnull(pan);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < in; c++)
                pan[((size_t)(r / 16) * in + c) * 16 + r % 16] = f[(size_t)r * in + c];
        memcpy(tm.deq, f, n * sizeof(float));
        free(f);
        tm.data = pan;
    } else if (t == WT_BF16 || t == WT_BF16P) {
        uint16_t *h = malloc((n ? n : 1) * 2);
        ck_assert_ptr_nonnull(h);
        for (size_t i = 0; i < n; i++) {
            float f = frand();
            uint32_t u;
            memcpy(&u, &f, 4);
            h[i] = (uint16_t)(u >> 16);
            u = (uint32_t)h[i] << 16;
            memcpy(&tm.deq[i], &u, 4);
        }
        tm.data = h;
        if (t == WT_BF16P) {
            /* the same bits in panels of 16 rows with the columns in pairs (wtensor.h):
             * columns c, c + 1 of a panel's row r at (c / 2 · 2 · 16 + 2r) and + 1, an
             * even number of columns (the last one zero when in is odd) */
            int ce = (in + 1) / 2 * 2;
            size_t padded = (size_t)(rows + 15) / 16 * 16 * ce;
            uint16_t *pan = calloc(padded ? padded : 1, sizeof(uint16_t));
            ck_assert_ptr_nonnull(pan);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < in; c++)
                    pan[((size_t)(r / 16) * ce + c / 2 * 2) * 16 + r % 16 * 2 + c % 2] =
                        h[(size_t)r * in + c];
            free(h);
            tm.data = pan;
        }
    } else {
        int8_t *q = malloc(n ? n : 1);
        float *s = malloc(sizeof(float) * (size_t)(rows * nb > 0 ? rows * nb : 1));
        tm.data = malloc(wtensor_data_bytes(WT_Q8, rows, in) + 1);
        tm.scale = malloc(wtensor_scale_bytes(WT_Q8, rows, in) + 4);
        ck_assert(q && s && tm.data && tm.scale);
        for (int b = 0; b < rows * nb; b++)
            s[b] = (frand() + 1.5f) / (2.5f * 127.0f);   /* |q · scale| <= 1 */
        for (int r = 0; r < rows; r++)
            for (int d = 0; d < in; d++) {
                size_t i = (size_t)r * in + d;
                q[i] = (int8_t)(int)(frand() * 127.0f);
                tm.deq[i] = (float)q[i] * s[r * nb + d / 32];
            }
        wtensor_q8_pack(q, s, rows, in, tm.data, tm.scale);   /* the panels */
        free(q);
        free(s);
    }
    tm.w = (wtensor){t, tm.data, tm.scale};
    return tm;
}

static void free_matrix(test_matrix *tm)
{
    free(tm->data);
    free(tm->scale);
    free(tm->deq);
}

/* Y = X Mᵀ for one product written into columns [off, off + rows) of a wider Y; the
 * columns around it must stay untouched. */
static void check_xmt_type(pool *p, int n, int in, int rows, wt_type t)
{
    int off = 3, ldy = rows + 5;
    float *x = rand_floats((size_t)n * in);
    test_matrix tm = make_matrix(t, rows, in);
    const float *m = tm.deq;
    float *y = malloc(sizeof(float) * n * ldy);
    ck_assert_ptr_nonnull(y);
    for (int i = 0; i < n * ldy; i++)
        y[i] = 1234.5f;
    smallmm_xmt jb = {x, n, tm.w, rows, y + off, ldy};
    smallmm_xmt_run(p, in, &jb, 1);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ldy; j++) {
            float got = y[(size_t)i * ldy + j];
            if (j < off || j >= off + rows) {
                ck_assert_msg(got == 1234.5f, "n=%d in=%d rows=%d: Y[%d][%d] outside the "
                              "product was written", n, in, rows, i, j);
                continue;
            }
            double want = 0;
            for (int d = 0; d < in; d++)
                want += (double)x[(size_t)i * in + d] * m[(size_t)(j - off) * in + d];
            expect_near(got, want, in, "Y", i, j - off);
        }
    free(x);
    free_matrix(&tm);
    free(y);
}

/* F32 weights row-major and in panels. */
static void check_xmt(pool *p, int n, int in, int rows)
{
    check_xmt_type(p, n, in, rows, WT_F32);
    check_xmt_type(p, n, in, rows, WT_F32P);
}

/* Forces the kernels of instruction set `isa` (the loop index of a test over all of them);
 * 0 when this CPU cannot run them (the test then checks nothing, and says so). */
static int use_isa(int isa)
{
    if (smallmm_set_isa((smallmm_isa)isa) != 0) {
        fprintf(stderr, "smallmm: this CPU has no %s; its kernels are not tested here\n",
                smallmm_isa_name((smallmm_isa)isa));
        return 0;
    }
    ck_assert_int_eq(smallmm_get_isa(), isa);
    return 1;
}

START_TEST(test_xmt_matches_reference_for_every_row_count_and_edge)
{
    if (!use_isa(_i))
        return;
    static const int ins[] = {1, 15, 16, 17, 40, 64, 100, 127};
    static const int rows[] = {1, 3, 4, 5, 7, 8, 9, 33};
    /* every remainder of the 4- (2-) row tiles of X; the outer-product tiles' vectors
     * whole, padded, and whole plus 1-4 rows on the dot-product tiles (17-20, 25, 28,
     * 33, 36, 49, 65 with AVX-512; 13, 17, 20, 25 with 8-float vectors) or one past
     * that (21, 29, 37); batches up to and past SMALLMM_MAX_ROWS */
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 16, 17, 20, 21, 24, 25,
                             28, 29, 31, 32, 33, 36, 37, 49, 63, SMALLMM_MAX_ROWS,
                             SMALLMM_MAX_ROWS + 1};
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        for (size_t k = 0; k < sizeof ns / sizeof *ns; k++)
            for (size_t a = 0; a < sizeof ins / sizeof *ins; a++)
                for (size_t b = 0; b < sizeof rows / sizeof *rows; b++)
                    check_xmt(p, ns[k], ins[a], rows[b]);
        pool_free(p);
    }
}
END_TEST

/* check_xmt_type for every weight type from t0 to WT_BF16P, every n, in and rows of the
 * arrays given, on 1 and 2 threads. */
static void check_types_over(wt_type t0, const int *ns, size_t n_ns, const int *ins,
                             size_t n_ins, const int *rows, size_t n_rows)
{
    for (int threads = 1; threads <= 2; threads++) {
        pool *p = make_pool(threads);
        for (int t = t0; t <= WT_BF16P; t++)
            for (size_t k = 0; k < n_ns; k++)
                for (size_t a = 0; a < n_ins; a++)
                    for (size_t b = 0; b < n_rows; b++)
                        check_xmt_type(p, ns[k], ins[a], rows[b], (wt_type)t);
        pool_free(p);
    }
}
#define CHECK_TYPES_OVER(t0, ns, ins, rows)                                                \
    check_types_over(t0, ns, sizeof ns / sizeof *ns, ins, sizeof ins / sizeof *ins, rows,  \
                     sizeof rows / sizeof *rows)

/* Rows of X at least OUTER_LONG_IN (1024) long take the outer-product tiles from 5 rows
 * instead of 9: 4-9 rows each side of that edge, rows 1023-1537 long (lane tails of the
 * packed groups), M of 1, 5 and 33 rows, every weight type, 1 and 2 threads. */
START_TEST(test_long_rows_match_reference_from_5_rows)
{
    if (!use_isa(_i))
        return;
    static const int ins[] = {1023, 1024, 1100, 1537};
    static const int rows[] = {1, 5, 33};
    static const int ns[] = {4, 5, 6, 7, 8, 9};
    CHECK_TYPES_OVER(WT_F32, ns, ins, rows);
}
END_TEST

START_TEST(test_bf16_and_q8_weights_match_reference_at_every_edge)
{
    if (!use_isa(_i))
        return;
    /* in: lane tails of 8 and 16, one-row steps of 4 vectors with 1-3 whole vectors after
     * them (40, 127), Q8 blocks of 32 cut short (31, 33, 100); rows: Q8
     * panels of 16 whole, padded, and split between tasks mid-panel (33, 40); ns: F32P
     * tiles of 3 panels by up to 8 rows (1-8, 15, 16 with AVX-512) and of 2 panels by up
     * to 14 (9, 13, 14 in one group; 17, 20, 25, 28 in two; 29, 33, 36 in three) */
    static const int ins[] = {1, 15, 16, 17, 31, 32, 33, 40, 64, 100, 127};
    static const int rows[] = {1, 3, 4, 5, 8, 9, 16, 17, 33, 40};
    static const int ns[] = {1,  2,  3,  4,  5,  8,  9,  13, 14, 15, 16,
                             17, 20, 25, 28, 29, 33, 36, SMALLMM_MAX_ROWS + 1};
    CHECK_TYPES_OVER(WT_BF16, ns, ins, rows);
}
END_TEST

/* Q8 products whose activations span many magnitudes — blocks of 32 scaled from 1e-8 to
 * 1e6, an outlier 1000 times its block, blocks of zeros, a lone nonzero — match float64
 * within the rounding of each block's largest activation (the VNNI kernels hold the
 * activations as integers per block, to 2^-24 of its largest); a NaN or an infinity among
 * a row's activations makes every output of that row non-finite, as F32 products would,
 * and leaves the other rows alone. */
START_TEST(test_q8_activations_of_every_magnitude_and_non_finite_ones)
{
    if (!use_isa(_i))
        return;
    enum { IN = 200, ROWS = 40, N = 5 };
    static const float scales[] = {1e-8f, 1e6f, 1.0f, 3e-3f, 0.0f, 7e2f, 1e-5f};
    float *x = rand_floats((size_t)N * IN);
    for (int d = 0; d < IN; d++) {
        x[d] *= scales[(d / 32) % 7];
        if (d % 32 == 5)
            x[d] *= 1000.0f;
        x[IN + d] = d == 77 ? 0.25f : 0.0f;
    }
    x[2 * IN + 101] = NAN;
    x[3 * IN + 33] = INFINITY;
    test_matrix tm = make_matrix(WT_Q8, ROWS, IN);
    float y[N * ROWS];
    for (int threads = 1; threads <= 2; threads++) {
        pool *p = make_pool(threads);
        smallmm_xmt jb = {x, N, tm.w, ROWS, y, ROWS};
        smallmm_xmt_run(p, IN, &jb, 1);
        for (int i = 0; i < N; i++)
            for (int j = 0; j < ROWS; j++) {
                float got = y[i * ROWS + j];
                if (i == 2 || i == 3) {
                    ck_assert_msg(!isfinite(got), "row %d (a %s activation): Y[%d] = %g", i,
                                  i == 2 ? "NaN" : "infinite", j, got);
                    continue;
                }
                double want = 0, tol = 0;
                for (int b = 0; b < IN; b += 32) {
                    double mx = 0;
                    for (int d = b; d < b + 32 && d < IN; d++)
                        mx = fmax(mx, fabs(x[i * IN + d]));
                    for (int d = b; d < b + 32 && d < IN; d++) {
                        double w = tm.deq[(size_t)j * IN + d];
                        want += (double)x[i * IN + d] * w;
                        tol += 1e-6 * mx * fabs(w);
                    }
                }
                ck_assert_msg(fabs(got - want) <= tol + 1e-30, "row %d: Y[%d] = %.9g, "
                              "reference %.9g (tolerance %.3g)", i, j, got, want, tol);
            }
        pool_free(p);
    }
    free(x);
    free_matrix(&tm);
}
END_TEST

START_TEST(test_isa_choice)
{
    /* portable always runs; an ISA the CPU lacks is refused and changes nothing */
    ck_assert_int_eq(smallmm_set_isa(SMALLMM_PORTABLE), 0);
    ck_assert_int_eq(smallmm_get_isa(), SMALLMM_PORTABLE);
    for (int i = SMALLMM_AVX2; i <= SMALLMM_AMX; i++)
        if (!smallmm_isa_supported((smallmm_isa)i)) {
            ck_assert_int_eq(smallmm_set_isa((smallmm_isa)i), -1);
            ck_assert_int_eq(smallmm_get_isa(), SMALLMM_PORTABLE);
        }
    /* auto takes the best one the CPU runs */
    ck_assert_int_eq(smallmm_set_isa(SMALLMM_AUTO), 0);
    int best = SMALLMM_PORTABLE;
    for (int i = SMALLMM_AVX2; i <= SMALLMM_AMX; i++)
        if (smallmm_isa_supported((smallmm_isa)i))
            best = i;
    if (!getenv("LORAD_ISA"))
        ck_assert_int_eq(smallmm_get_isa(), best);
    smallmm_isa parsed;
    ck_assert_int_eq(smallmm_isa_parse("avx2", &parsed), 0);
    ck_assert_int_eq(parsed, SMALLMM_AVX2);
    ck_assert_int_eq(smallmm_isa_parse("sse9", &parsed), -1);
}
END_TEST

START_TEST(test_xmt_many_products_in_one_pass)
{
    if (!use_isa(_i))
        return;
    /* Several products with their own X, n and M in one call (as project_small issues
     * for runs of sequences and adapter terms); the split between tasks falls inside
     * products of every size. */
    enum { IN = 40, JOBS = 6 };
    static const int ns[JOBS] = {1, 2, 5, 16, 1, 3}, rws[JOBS] = {7, 1, 30, 9, 64, 2};
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        smallmm_xmt jobs[JOBS];
        float *xs[JOBS], *ms[JOBS];
        for (int k = 0; k < JOBS; k++) {
            xs[k] = rand_floats((size_t)ns[k] * IN);
            ms[k] = rand_floats((size_t)rws[k] * IN);
            jobs[k] = (smallmm_xmt){xs[k], ns[k], {WT_F32, ms[k], NULL}, rws[k],
                                    malloc(sizeof(float) * ns[k] * rws[k]), rws[k]};
        }
        smallmm_xmt_run(p, IN, jobs, JOBS);
        for (int k = 0; k < JOBS; k++) {
            expect_xmt(&jobs[k], ms[k], IN);
            free(xs[k]);
            free(ms[k]);
            free(jobs[k].y);
        }
        pool_free(p);
    }
}
END_TEST

/* Products big enough to be cut into several chunks per thread (1 MB of weights times
 * rows of X each), each thread taking its own run of chunks and then the others' from
 * their ends: with 2 to 4 threads on this machine's cores some fall behind and have
 * chunks taken; every row must still be computed once, for every weight type (chunks end
 * on whole tiles: a Q8 or F32P panel, 24 rows of M from 9 rows of X, else 8) and rows that
 * do not divide evenly. */
START_TEST(test_products_cut_into_chunks_among_threads)
{
    if (!use_isa(_i))
        return;
    static const int ns[] = {1, 7, 16, 33};
    for (int threads = 2; threads <= 4; threads++) {
        pool *p = make_pool(threads);
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (int t = WT_F32; t <= WT_BF16P; t++)
                check_xmt_type(p, ns[a], 300, 1103, (wt_type)t);
        pool_free(p);
    }
}
END_TEST

/* One pass of products k < jobs (X xs[k] with ns[k] rows, weights of type ts[k] with
 * rws[k] rows) on a pool of 1 to 3 threads, each product against float64. Y starts as NaN,
 * so a row no chunk computed fails. */
static void check_pass(int in, int jobs, const float *const *xs, const int *ns,
                       const wt_type *ts, const int *rws)
{
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        smallmm_xmt job[16];
        test_matrix tm[16];
        ck_assert(jobs <= 16);
        for (int k = 0; k < jobs; k++) {
            tm[k] = make_matrix(ts[k], rws[k], in);
            job[k] = (smallmm_xmt){xs[k], ns[k], tm[k].w, rws[k],
                                   malloc(sizeof(float) * ns[k] * rws[k]), rws[k]};
            ck_assert_ptr_nonnull(job[k].y);
            for (int i = 0; i < ns[k] * rws[k]; i++)
                job[k].y[i] = NAN;
        }
        smallmm_xmt_run(p, in, job, jobs);
        for (int k = 0; k < jobs; k++) {
            expect_xmt(&job[k], tm[k].deq, in);
            free_matrix(&tm[k]);
            free(job[k].y);
        }
        pool_free(p);
    }
}

/* A pass cut into many chunks (up to 8 a thread) whose rows of M differ: Q8, BF16 and F32
 * weights (1.1, 2 and 4 bytes an element) met by 1, 3 and 20 rows of X, as decode mixes
 * the base with adapters' A's. Every row of every product is computed once (a row no
 * chunk took stays NaN), whichever chunk and thread it falls to, on 1 to 3 threads. */
START_TEST(test_a_pass_of_unlike_products_in_many_chunks)
{
    if (!use_isa(_i))
        return;
    enum { IN = 512, JOBS = 6 };
    float *x20 = rand_floats((size_t)20 * IN);
    static const int ns[JOBS] = {1, 1, 3, 20, 20, 1};
    static const wt_type ts[JOBS] = {WT_Q8, WT_F32, WT_BF16, WT_F32, WT_Q8, WT_F32};
    static const int rws[JOBS] = {2000, 48, 700, 1000, 37, 16};
    const float *xs[JOBS] = {x20, x20, x20, x20, x20, x20};
    check_pass(IN, JOBS, xs, ns, ts, rws);
    free(x20);
}
END_TEST

/* Products that read one X (q, k and v; a group's adapter A's) share its prepared copy:
 * here three X's, each met by several weight matrices of every type — 20 rows (the
 * outer-product tiles' packing, F32 and BF16), one row (BF16's even/odd order), the same
 * pointer with another row count (prepared apart) and Q8 (read as it is) — interleaved in
 * one pass of 1 to 3 threads, each product against float64. */
START_TEST(test_products_sharing_an_x_share_its_prepared_copy)
{
    if (!use_isa(_i))
        return;
    enum { IN = 100, JOBS = 9 };
    float *x20 = rand_floats((size_t)20 * IN), *x1 = rand_floats(IN);
    static const int ns[JOBS] = {20, 20, 1, 20, 1, 12, 20, 1, 12};
    static const wt_type ts[JOBS] = {WT_F32, WT_BF16, WT_BF16, WT_F32, WT_BF16, WT_F32,
                                     WT_Q8, WT_F32, WT_BF16};
    static const int rws[JOBS] = {7, 30, 9, 25, 3, 5, 8, 33, 26};
    const float *xs[JOBS];
    for (int k = 0; k < JOBS; k++)
        xs[k] = ns[k] == 1 ? x1 : x20;
    check_pass(IN, JOBS, xs, ns, ts, rws);
    free(x20);
    free(x1);
}
END_TEST

/* One- and two-row BF16 products read X reordered (even then odd elements of each block):
 * kept on the stack for a pass up to 8192 floats of it and 16 products, allocated beyond.
 * 20 products of 1 and 2 rows with in = 4100 (blocks cut short, 61,500 floats) in one
 * pass, and alone, each against float64. */
START_TEST(test_bf16_one_and_two_rows_with_x_reordered_on_the_stack_and_the_heap)
{
    if (!use_isa(_i))
        return;
    check_xmt_type(NULL, 2, 4100, 9, WT_BF16);   /* 8200 floats: the heap */
    check_xmt_type(NULL, 1, 4100, 9, WT_BF16);   /* 4100: the stack */
    enum { IN = 4100, JOBS = 20, ROWS = 6 };
    pool *p = make_pool(2);
    smallmm_xmt jobs[JOBS];
    float *xs[JOBS];
    test_matrix tm[JOBS];
    for (int k = 0; k < JOBS; k++) {
        int n = 1 + k % 2;
        xs[k] = rand_floats((size_t)n * IN);
        tm[k] = make_matrix(WT_BF16, ROWS, IN);
        jobs[k] = (smallmm_xmt){xs[k], n, tm[k].w, ROWS, malloc(sizeof(float) * n * ROWS),
                                ROWS};
    }
    smallmm_xmt_run(p, IN, jobs, JOBS);
    for (int k = 0; k < JOBS; k++) {
        expect_xmt(&jobs[k], tm[k].deq, IN);
        free(xs[k]);
        free_matrix(&tm[k]);
        free(jobs[k].y);
    }
    pool_free(p);
}
END_TEST

/* Y += alpha·T Bt for `terms` products on the same Y (the terms of an adapter mix). */
static void check_tb(pool *p, int n, int r, int out, int terms, int col0)
{
    int ldt = r + 2;
    float *y = rand_floats((size_t)n * out);
    double *want = malloc(sizeof(double) * n * out);
    ck_assert_ptr_nonnull(want);
    for (int i = 0; i < n * out; i++)
        want[i] = y[i];
    smallmm_tb jobs[2];
    float *ts[2], *bs[2];
    for (int k = 0; k < terms; k++) {
        ts[k] = rand_floats((size_t)n * ldt);
        bs[k] = rand_floats((size_t)r * out);
        float alpha = k ? -0.75f : 1.5f;
        jobs[k] = (smallmm_tb){ts[k], ldt, n, bs[k], r, out, alpha, y, col0};
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int j = 0; j < r; j++)
                    s += (double)ts[k][i * ldt + j] * bs[k][(size_t)j * out + o];
                want[(size_t)i * out + o] += alpha * s;
            }
    }
    smallmm_tb_run(p, jobs, terms);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++)
            expect_near(y[(size_t)i * out + o], want[(size_t)i * out + o], 2 * r * terms, "Y",
                        i, o);
    for (int k = 0; k < terms; k++) {
        free(ts[k]);
        free(bs[k]);
    }
    free(y);
    free(want);
}

START_TEST(test_tb_adds_to_outputs_for_every_edge_and_mix)
{
    if (!use_isa(_i))
        return;
    static const int rs[] = {1, 3, 16, 17};
    static const int outs[] = {1, 15, 16, 17, 63, 64, 65, 100, 130};
    /* every remainder of the row blocks (4 rows with AVX-512, 2 with 8-float vectors) */
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 16, 33, SMALLMM_MAX_ROWS};
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t b = 0; b < sizeof rs / sizeof *rs; b++)
                for (size_t c = 0; c < sizeof outs / sizeof *outs; c++)
                    for (int terms = 1; terms <= 2; terms++)
                        for (int col0 = 0; col0 <= 37; col0 += 37)
                            check_tb(p, ns[a], rs[b], outs[c], terms, col0);
        pool_free(p);
    }
}
END_TEST

/* Products of three outputs laid end to end (col0 0, 33, 49: the pass shares their span
 * among its threads, each product the columns that fall in a thread's share), two terms
 * on each output (the same columns of the same Y from two products), 1 to 3 threads. */
START_TEST(test_tb_outputs_laid_end_to_end)
{
    if (!use_isa(_i))
        return;
    enum { N = 5, R = 16, OUTS = 3, TERMS = 2 };
    static const int outs[OUTS] = {33, 16, 70}, col0s[OUTS] = {0, 33, 49};
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        float *ys[OUTS], *ts[OUTS][TERMS], *bs[OUTS][TERMS];
        double *want[OUTS];
        smallmm_tb jobs[OUTS * TERMS];
        for (int g = 0; g < OUTS; g++) {
            ys[g] = rand_floats((size_t)N * outs[g]);
            want[g] = malloc(sizeof(double) * N * outs[g]);
            ck_assert_ptr_nonnull(want[g]);
            for (int i = 0; i < N * outs[g]; i++)
                want[g][i] = ys[g][i];
            for (int k = 0; k < TERMS; k++) {
                ts[g][k] = rand_floats((size_t)N * R);
                bs[g][k] = rand_floats((size_t)R * outs[g]);
                float alpha = k ? 0.5f : -2.0f;
                jobs[g * TERMS + k] = (smallmm_tb){ts[g][k], R, N, bs[g][k], R, outs[g], alpha,
                                                   ys[g], col0s[g]};
                for (int i = 0; i < N; i++)
                    for (int o = 0; o < outs[g]; o++) {
                        double sum = 0;
                        for (int j = 0; j < R; j++)
                            sum += (double)ts[g][k][i * R + j] * bs[g][k][(size_t)j * outs[g] + o];
                        want[g][(size_t)i * outs[g] + o] += alpha * sum;
                    }
            }
        }
        smallmm_tb_run(p, jobs, OUTS * TERMS);
        for (int g = 0; g < OUTS; g++) {
            for (int i = 0; i < N; i++)
                for (int o = 0; o < outs[g]; o++)
                    expect_near(ys[g][(size_t)i * outs[g] + o], want[g][(size_t)i * outs[g] + o],
                                2 * R * TERMS, "Y", i, o);
            for (int k = 0; k < TERMS; k++) {
                free(ts[g][k]);
                free(bs[g][k]);
            }
            free(ys[g]);
            free(want[g]);
        }
        pool_free(p);
    }
}
END_TEST

/* An adapter's products as decode makes them: Y = X·Wᵀ and T = X·Aᵀ in the X·Mᵀ part,
 * then Y += alpha·T·Bᵀ, which reads what that part wrote. smallmm_run in one job of the
 * pool gives bit for bit what smallmm_xmt_run then smallmm_tb_run give — for 1 to 3
 * threads and passes of 2 to 8 chunks, where A's rows (the pass's last) are another
 * thread's than the first ·Bᵀ columns, so a ·Bᵀ share begun before every chunk is done
 * reads T and Y still holding the sentinel. Repeated: a race would not show every time. */
START_TEST(test_one_job_with_tb_equals_the_two_passes)
{
    if (!use_isa(_i))
        return;
    enum { IN = 576, R = 16, NMAX = 20 };
    static const int outs[] = {64, 1536, 4096}, ns[] = {1, 2, 8, NMAX};
    float *x = rand_floats((size_t)NMAX * IN), *a = rand_floats((size_t)R * IN);
    float *w = rand_floats((size_t)4096 * IN), *bt = rand_floats((size_t)R * 4096);
    float *y[2], *t[2];
    for (int v = 0; v < 2; v++) {
        y[v] = malloc(sizeof(float) * NMAX * 4096);
        t[v] = malloc(sizeof(float) * NMAX * R);
        ck_assert(y[v] && t[v]);
    }
    for (int threads = 1; threads <= 3; threads++) {
        pool *p = make_pool(threads);
        for (size_t o = 0; o < sizeof outs / sizeof *outs; o++)
            for (size_t k = 0; k < sizeof ns / sizeof *ns; k++)
                for (int rep = 0; rep < 4; rep++) {
                    int n = ns[k], out = outs[o];
                    for (int v = 0; v < 2; v++) {
                        for (int i = 0; i < n * out; i++)
                            y[v][i] = 1e6f;
                        for (int i = 0; i < n * R; i++)
                            t[v][i] = 1e6f;
                        smallmm_xmt xmt[2] = {{x, n, {WT_F32, w, NULL}, out, y[v], out},
                                              {x, n, {WT_F32, a, NULL}, R, t[v], R}};
                        smallmm_tb tb = {t[v], R, n, bt, R, out, 0.5f, y[v], 0};
                        if (v == 0) {
                            smallmm_xmt_run(p, IN, xmt, 2);
                            smallmm_tb_run(p, &tb, 1);
                        } else {
                            smallmm_run(p, IN, xmt, 2, &tb, 1);
                        }
                    }
                    for (int i = 0; i < n * out; i++)
                        ck_assert_msg(y[0][i] == y[1][i], "%d threads, %d rows, out %d: "
                                      "Y[%d] = %.9g in one job, %.9g in two passes", threads,
                                      n, out, i, y[1][i], y[0][i]);
                }
        pool_free(p);
    }
    for (int v = 0; v < 2; v++) {
        free(y[v]);
        free(t[v]);
    }
    free(x);
    free(a);
    free(w);
    free(bt);
}
END_TEST

/* No jobs (n_jobs 0, with and without a job array behind it): nothing is written. The
 * array holds real products, so a run that ignored n_jobs would change their outputs. */
START_TEST(test_empty_calls_write_nothing)
{
    enum { N = 3, IN = 16, ROWS = 5, OUT = 9, R = 2 };
    float *x = rand_floats(N * IN), *m = rand_floats(ROWS * IN);
    float *t = rand_floats(N * R), *bt = rand_floats(R * OUT);
    float y1[N * ROWS], y2[N * OUT];
    smallmm_xmt xmt = {x, N, {WT_F32, m, NULL}, ROWS, y1, ROWS};
    smallmm_tb tb = {t, R, N, bt, R, OUT, 1.0f, y2, 0};
    for (int threads = 1; threads <= 2; threads++) {
        pool *p = make_pool(threads);
        for (int i = 0; i < N * ROWS; i++)
            y1[i] = 1234.5f;
        for (int i = 0; i < N * OUT; i++)
            y2[i] = -77.25f;
        smallmm_xmt_run(p, IN, &xmt, 0);
        smallmm_xmt_run(p, IN, NULL, 0);
        smallmm_tb_run(p, &tb, 0);
        smallmm_tb_run(p, NULL, 0);
        for (int i = 0; i < N * ROWS; i++)
            ck_assert_msg(y1[i] == 1234.5f, "%d threads: X·Mᵀ with no jobs wrote Y[%d] = %g",
                          threads, i, y1[i]);
        for (int i = 0; i < N * OUT; i++)
            ck_assert_msg(y2[i] == -77.25f, "%d threads: T·Bt with no jobs wrote Y[%d] = %g",
                          threads, i, y2[i]);
        /* the same arrays with n_jobs 1 do write: the sentinels above could change */
        smallmm_xmt_run(p, IN, &xmt, 1);
        smallmm_tb_run(p, &tb, 1);
        ck_assert_msg(y1[0] != 1234.5f && y2[0] != -77.25f, "%d threads: one job wrote "
                      "nothing", threads);
        pool_free(p);
    }
    free(x);
    free(m);
    free(t);
    free(bt);
}
END_TEST

/* smallmm_lead: where each thread of a pass begins reading weights. Thread 0 at the first
 * product's first byte; thread t of T at the row of M where the t-th T-th of the pass's
 * work (rows of M × rows of X, here all >= 16) begins, moved down to a whole tile (< 64
 * rows) — computed here from the products' shapes — each lead inside one product's
 * weights, in order, at most max bytes and not past that product's end; no lead for a
 * thread the pool does not have, or without a pool beyond thread 0. */
START_TEST(test_each_thread_is_told_where_its_reads_begin)
{
    enum { IN = 512, JOBS = 3 };
    static const int ns[JOBS] = {16, 20, 16}, rws[JOBS] = {1000, 700, 500};
    static const wt_type ts[JOBS] = {WT_F32P, WT_BF16, WT_Q8};
    float *x = rand_floats((size_t)20 * IN);
    smallmm_xmt job[JOBS];
    test_matrix tm[JOBS];
    double work = 0;
    for (int k = 0; k < JOBS; k++) {
        tm[k] = make_matrix(ts[k], rws[k], IN);
        job[k] = (smallmm_xmt){x, ns[k], tm[k].w, rws[k], NULL, rws[k]};
        work += (double)rws[k] * ns[k];
    }
    const char *at = NULL;
    size_t whole = wtensor_data_bytes(ts[0], rws[0], IN);
    ck_assert_uint_eq(smallmm_lead(NULL, IN, job, JOBS, 0, SIZE_MAX, &at), whole);
    ck_assert_ptr_eq(at, tm[0].w.data);
    ck_assert_uint_eq(smallmm_lead(NULL, IN, job, JOBS, 1, SIZE_MAX, &at), 0);
    for (int threads = 1; threads <= 4; threads++) {
        pool *p = make_pool(threads);
        double prev = -1;  /* the previous thread's position in the work */
        for (int t = 0; t < threads; t++) {
            at = NULL;
            size_t n = smallmm_lead(p, IN, job, JOBS, t, (size_t)100 << 10, &at);
            int k = 0;
            while (k < JOBS && !(at >= (const char *)tm[k].w.data &&
                                 at < (const char *)tm[k].w.data +
                                          wtensor_data_bytes(ts[k], rws[k], IN)))
                k++;
            ck_assert_msg(k < JOBS, "%d threads: thread %d's lead is in no product", threads,
                          t);
            size_t off = (size_t)(at - (const char *)tm[k].w.data);
            size_t row_bytes = wtensor_data_bytes(ts[k], 16, IN) / 16;  /* whole panels */
            ck_assert_uint_eq(off % row_bytes, 0);
            double row = (double)(off / row_bytes), pos = row * ns[k];
            for (int e = 0; e < k; e++)
                pos += (double)rws[e] * ns[e];
            double want = work * t / threads;
            ck_assert_msg(pos <= want && want < pos + 64.0 * ns[k], "%d threads: thread %d "
                          "begins at work %.0f, its range at %.0f", threads, t, pos, want);
            ck_assert_msg(pos > prev, "%d threads: thread %d begins before thread %d",
                          threads, t, t - 1);
            prev = pos;
            size_t left = wtensor_data_bytes(ts[k], rws[k], IN) - off;
            ck_assert_uint_eq(n, left < ((size_t)100 << 10) ? left : (size_t)100 << 10);
        }
        ck_assert_uint_eq(smallmm_lead(p, IN, job, JOBS, threads, SIZE_MAX, &at), 0);
        pool_free(p);
    }
    for (int k = 0; k < JOBS; k++)
        free_matrix(&tm[k]);
    free(x);
}
END_TEST

static Suite *smallmm_suite(void)
{
    Suite *s = suite_create("smallmm");
    TCase *core = tcase_create("core");
    tcase_set_timeout(core, 300);
    /* each over every kernel family: loop index = smallmm_isa */
    tcase_add_loop_test(core, test_xmt_matches_reference_for_every_row_count_and_edge,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_bf16_and_q8_weights_match_reference_at_every_edge,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_long_rows_match_reference_from_5_rows,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_bf16_one_and_two_rows_with_x_reordered_on_the_stack_and_the_heap,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_xmt_many_products_in_one_pass, SMALLMM_PORTABLE,
                        SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_products_cut_into_chunks_among_threads, SMALLMM_PORTABLE,
                        SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_a_pass_of_unlike_products_in_many_chunks, SMALLMM_PORTABLE,
                        SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_products_sharing_an_x_share_its_prepared_copy,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_tb_adds_to_outputs_for_every_edge_and_mix,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_tb_outputs_laid_end_to_end, SMALLMM_PORTABLE,
                        SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_one_job_with_tb_equals_the_two_passes, SMALLMM_PORTABLE,
                        SMALLMM_AMX + 1);
    tcase_add_loop_test(core, test_q8_activations_of_every_magnitude_and_non_finite_ones,
                        SMALLMM_PORTABLE, SMALLMM_AMX + 1);
    tcase_add_test(core, test_isa_choice);
    tcase_add_test(core, test_each_thread_is_told_where_its_reads_begin);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_test(limits, test_empty_calls_write_nothing);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(smallmm_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
