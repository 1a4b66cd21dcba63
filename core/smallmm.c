/* smallmm: the decode-sized products, as two kinds of parallel pass over the pool, with
 * kernels for the best instruction set this CPU has (chosen at run time, so one binary
 * runs on any x86-64 and uses AVX-512 and AMX where they are there). */
#include "smallmm.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pool.h"
#include "vec16.h"

/* One instruction set's kernels: rows [lo, hi) of an X·Mᵀ product (xop: X in the order
 * the tiles read — packed (outer_prepare) or the BF16 even/odd order (eo_prepare) — or NULL
 * when there is none); columns [c0, c1) of a ·Bᵀ product. vl: floats per vector; eo_rows:
 * BF16 products of up to this many rows of X read the even/odd order. */
typedef struct {
    /* tbuf: SMALLMM_Q8P_FLOATS(in) floats of the calling thread's own, or NULL */
    void (*xmt_rows)(const smallmm_xmt *jb, const float *xop, float *tbuf, int in, int lo,
                     int hi);
    void (*tb_cols)(const smallmm_tb *jb, int c0, int c1);
    int vl, eo_rows;
    /* X for the Q8 kernels (nb·32 floats of room a row); NULL: zero-padded (q8x_prepare) */
    void (*q8_prep)(const float *x, int n, int in, float *out);
    /* F32P products of at least this many rows of X read X split by amx_prepare (0: none) */
    int amx_rows;
} smallmm_kernels;

/* Q8 products of at least this many rows of X take the F32P panel tiles (q8p_job), each
 * tile of M dequantized first into a buffer of the thread of this many floats (at most 3
 * panels of 16 rows; smallmm_kern.h, q8p_rows). Writing the buffer costs ~12 ms a step
 * of the 135M shape whatever the rows (each 64-byte store a miss of L1: a tile of 3
 * panels is 110-295 KB), which the panel tiles repay from 16 rows on: bench_batch
 * --weights q8 --quick against q8_panel, the builds alternated, 4 rows 16.0 ms against
 * 7.2-7.5, 8 rows 15.2 against 12.9-14.4, 16 rows 22.3 against 22.3, 24 rows 26.8 against
 * 36.0, 64 rows 59.6-64.4 against 88.6-98.9. */
#define SMALLMM_Q8P_ROWS 16
#define SMALLMM_Q8P_FLOATS(in) ((size_t)3 * 16 * (size_t)(in))

/* 1 when job jb takes the Q8 → F32P tiles (and a thread's buffer). */
static inline int q8p_job(const smallmm_xmt *jb)
{
    return jb->m.type == WT_Q8 && jb->n >= SMALLMM_Q8P_ROWS;
}

/* Products of at least this many rows of X with F32 or BF16 weights take the
 * outer-product tiles (X packed once per product); fewer rows, and Q8 weights, the
 * dot-product tiles. */
#define SMALLMM_OUTER_ROWS 9
/* ... and from this many rows where the rows are at least OUTER_LONG_IN long (the down
 * projection's 1536 on the 135M shape): a dot-product tile keeps its block of M and the
 * tiles of X it meets in L1, and 5 or more rows of X that long with 4 rows of M do not fit
 * (5 × 6 KB + 24 KB), so every tile after a block's first read X from L2. The 30 down
 * products of a decode step from memory, 2 threads, alternated: 5-8 rows 1-22% faster
 * on the outer-product tiles (8 rows 2.79-3.31 ms against 3.59-3.82; 5 rows 2.68-2.75
 * against 2.92-3.14); with the weights in cache 5-7 rows were 2-25% slower (their vector
 * padded to 8 rows), which decode does not see; with the AVX2 kernels (LORAD_ISA=avx2)
 * 8 rows 4.38-4.46 ms against 6.64-6.80, 5 rows 4.35-4.44 against 4.25-4.76. bench_batch
 * --quick, alternated, 8 pairs: the 8-row step 2-27% faster in 6 (14.4-17.1 ms against
 * 15.3-19.9), 6 rows in 5 of 5 on 8 adapters. The shorter rows of q/k/v, o and gate/up
 * (576) were 0-30% slower on the outer-product tiles at 5-7 rows, from memory too. */
#define SMALLMM_OUTER_ROWS_LONG 5
#define OUTER_LONG_IN 1024
/* ... and from this many rows with 8-float vectors (AVX2, portable), whose dot-product
 * tiles take 2 rows of X: the products of a decode step from memory with the AVX2 kernels
 * (LORAD_ISA=avx2, 2 threads, alternated), 7 rows 2-30% faster on the outer-product tiles
 * for every projection (q/k/v 3.07-4.14 ms against 4.16-4.58, gate/up 8.61-13.46 against
 * 12.65-14.24), 8 rows 16-32%; 6 rows within noise either way. bench_batch --quick with
 * LORAD_ISA=avx2, 3 pairs: the 7-row step 26.5-27.7 ms against 33.0-34.8, 8 rows
 * 28.3-30.0 against 38.0-39.3. */
#define SMALLMM_OUTER_ROWS_8 7

/* Rows of M the outer-product tiles of one product take at a time: 2 tiles of OJ or 3 of
 * OJ3 rows (both families: 12 = 2·6 = 3·4, 24 = 2·12 = 3·8). */
#define OUTER_BLOCK 24

/* Rows of M a thread's share of an F32P product starts on: a panel (a tile takes PT of
 * them, 3 with AVX-512; shares cut at whole 48-row tiles split the o and down products,
 * 12 tiles each, unevenly between the threads). */
#define SMALLMM_P_UNIT 16

/* The group P of the outer-product tiles for n rows of X and vectors of vl floats (0:
 * the dot-product tiles): a vector holds P consecutive elements of vl / P rows and a tile
 * two or three vectors (the rows past the last whole one: smallmm_outer_rows), so P is 2
 * where three vectors of vl / 2 rows hold all n, else 1 —
 * with AVX-512 9-24 rows 2, 25 and more 1. From 9 rows, not 13: alone, 9-12 rows of the
 * 1536 × 576 product ran faster on the dot-product tiles (82-92 µs against 101-102), but
 * in a decode step, with the 576 × 1536 product and lm_head, the tile of 16 was faster
 * (bench_batch, alternated: 12 rows 28.4 / 27.7 ms against 36.1 / 32.0). Groups of 4 for
 * 5-8 rows were 25% slower than the dot-product tiles: their 128-bit broadcasts and the
 * 4-lane sums at the end of every tile cost more than the tree reduction they replace. */
static inline int smallmm_outer_group(int vl, int n, int in)
{
    if (n < (in >= OUTER_LONG_IN ? SMALLMM_OUTER_ROWS_LONG
             : vl <= 8           ? SMALLMM_OUTER_ROWS_8
                                 : SMALLMM_OUTER_ROWS))
        return 0;
    return n <= 3 * vl / 2 ? 2 : 1;
}

/* Rows of X past the outer-product tiles' last whole vector that take the dot-product
 * tiles instead, on each block of M while it is in cache, rather than a vector padded
 * with zero rows (see smallmm_outer_rows). */
#define OUTER_REM_MAX 4

/* The rows of a product of n rows of X that take the outer-product tiles (0: none), in
 * groups of smallmm_outer_group(vl, that number). Where n is a whole number (>= 2) of
 * vectors plus at most OUTER_REM_MAX rows — with the group n takes, or else with groups
 * of 2 — only the whole vectors do, and the rest take the dot-product tiles: 17 rows
 * with AVX-512 are 16 + 1 instead of 24 (three vectors of 8, 7 of their rows zero), 25
 * are 24 + 1 instead of 32. Otherwise all n do, the last vector padded. Without this the
 * step time jumped where the padding begins (bench_batch, 16 -> 17 rows: +24%; now +11%,
 * and 24 -> 25, 32 -> 33, 48 -> 49 +5-9%). */
static inline int smallmm_outer_rows(int vl, int n, int in)
{
    int P = smallmm_outer_group(vl, n, in);
    if (!P)
        return 0;
    for (int p = P; p <= 2; p *= 2) {
        int rv = vl / p, whole = n / rv * rv;
        if (whole >= 2 * rv && n - whole <= OUTER_REM_MAX &&
            smallmm_outer_group(vl, whole, in) == p)
            return whole;
    }
    return n;
}

/* The kernels, compiled four times: AVX-512, AVX-512 with BF16 dot products (the same
 * kernels but for BF16 weights times one or two rows), AVX2, portable. Tiles: 4×4 on
 * AVX-512 (16 accumulators of its 32 registers; 4×6 was ~10% slower: 31 live registers
 * leave the loop no slack), 2×4 with 16 registers. F32P tiles (PT panels by PG rows of X):
 * 3 panels by 8 rows on AVX-512 (24 accumulators) — or 2 panels by up to PG2 = 14 rows
 * (28) where that takes fewer groups of rows (panel_rows) — 1 panel (2 vectors) by 6 rows
 * with 16 registers. The portable build uses whatever the compiler's baseline gives (SSE2 on
 * x86-64, NEON on arm64) for the same 8-float vectors. */
#if defined(__x86_64__) && (defined(__GNUC__) && !defined(__clang__))
#define SMALLMM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
/* an unaligned double, for a broadcast of two floats */
typedef double double_u __attribute__((aligned(1), may_alias));

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")
#define KSUF avx512
#define VL 16
#define TI 4
#define TJ 4
#define TJ2 8
#define OJ 12
#define OJ3 8
#define PT 3
#define PG 8
#define PG2 14
#define KPIN 1
#define KQ8(m, d) ((vf_avx512)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(                   \
    _mm_loadu_si128((const __m128i *)((const int8_t *)(m) + (d))))))
#define KBC2(p) ((vf_avx512)_mm512_castpd_ps(_mm512_set1_pd(*(const double_u *)(p))))
#define KBC4(p) ((vf_avx512)_mm512_broadcast_f32x4(_mm_loadu_ps(p)))
#include "smallmm_kern.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,avx2,fma,bmi2")
#define KSUF avx512bf16
#define KVNNI 1
#define VL 16
#define TI 4
#define TJ 4
#define TJ2 8
#define OJ 12
#define OJ3 8
#define PT 3
#define PG 8
#define PG2 14
#define KPIN 1
#define KDPBF16 1
#define KQ8(m, d) ((vf_avx512bf16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(               \
    _mm_loadu_si128((const __m128i *)((const int8_t *)(m) + (d))))))
#define KBC2(p) ((vf_avx512bf16)_mm512_castpd_ps(_mm512_set1_pd(*(const double_u *)(p))))
#define KBC4(p) ((vf_avx512bf16)_mm512_broadcast_f32x4(_mm_loadu_ps(p)))
#include "smallmm_kern.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#define KSUF avx2
#define VL 8
#define TI 2
#define TJ 4
#define TJ2 4
#define OJ 6
#define OJ3 4
#define PT 1
#define PG 6
#define KPIN 1
#define KQ8(m, d) ((vf_avx2)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(                      \
    _mm_loadl_epi64((const __m128i *)((const int8_t *)(m) + (d))))))
#define KBC2(p) ((vf_avx2)_mm256_castpd_ps(_mm256_broadcast_sd((const double *)(p))))
#define KBC4(p) ((vf_avx2)_mm256_broadcast_ps((const __m128 *)(p)))
#include "smallmm_kern.h"
#pragma GCC pop_options

/* 1 when this CPU has AMX tiles with BF16 products, the kernel saves them (XCR0 bits 17
 * and 18) and grants this process their 8 KB of state (arch_prctl; Linux 5.16 and later
 * ask for it once per process, for every thread). Thread-safe. */
static int amx_usable(void)
{
    static _Atomic int state;  /* 0 not asked yet, 1 yes, -1 no */
    int s = atomic_load_explicit(&state, memory_order_acquire);
    if (s)
        return s > 0;
    unsigned a, b, c, d;
    int ok = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 22 & 1) &&
             __get_cpuid(1, &a, &b, &c, &d) && (c >> 27 & 1);   /* AMX-TILE, -BF16; OSXSAVE */
    if (ok) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        ok = (lo >> 17 & 3) == 3;
    }
#ifdef __linux__
    if (ok)  /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
        ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    ok = 0;
#endif
    atomic_store_explicit(&state, ok ? 1 : -1, memory_order_release);
    return ok;
}

/* AMX (the tile unit of Intel Xeons from Sapphire Rapids on): F32P products of many rows
 * of X as BF16 tile products, as exact as F32 arithmetic. Each F32 splits exactly into
 * three BF16 — h, its upper 16 bits; m, those of x - h; l = x - h - m, which has at most 8
 * significant bits — and a product x·w is taken as its six terms above 2^-21 of |x·w|
 * (hh, hm, mh, hl, mm, lh); the three left out (ml, lm, ll) sum to less than that, the
 * rounding of one F32 operation. On a 1536 × 576 product the largest error per Σ|x·w|
 * was 5-10e-8, against 2e-7 for the AVX-512 tiles; test_smallmm holds the family to the
 * same float64 reference as the others, and fails when one term is left out.
 * X is split once per product (amx_prepare); W block by block as it streams in, into three
 * B tiles (16 rows of M × 32 elements, in pairs: the VNNI order) — 14 vector operations a
 * pair of vectors, each block's split spread between the previous block's tile products
 * so that its loads of W go out while the tiles compute (one thread, 32 rows of X, from
 * L3: 266 → 226 µs against 284 for the AVX-512 tiles; 327 before X's planes started on
 * cache lines, when every row of a tile load straddled two).
 * The 1536 × 576 product, AMX against the AVX-512 tiles, medians of 5: one thread from L3,
 * 32 rows of X 226 / 284 µs, 64 rows 317 / 536, 17 rows 193 / 180; one thread from memory
 * 359 / 438, 508 / 725, 350 / 325; two threads from memory, 32 rows 190 / 218, 64 rows
 * 347 / 362. A tile takes 16 rows of X, so 17-32 rows cost one pair of tiles: the
 * crossover is between 24 and 28 rows (SMALLMM_AMX_ROWS). */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,avx2,fma,bmi2," \
                   "amx-tile,amx-bf16")

/* Products of at least this many rows of X take the AMX tiles (F32P weights).
 * bench_batch --quick on an Intel Xeon with AMX (2 vCPUs), alternated, 2 rounds: from 17
 * rows, 20 rows 31.5-32.3 ms against 29.8-30.6, 24 rows 33.5-34.1 against 32.2-33.5; 28
 * and 29 rows 34.1-35.5 against 34.9-38.8; from 25 rows, 32 rows 34.1-36.1 against
 * 40.0-40.2, 48 rows 45.1-51.4 against 53.1-54.4, 64 rows 59.8-60.0 against 67.1. */
#define SMALLMM_AMX_ROWS 25

/* The tiles' configuration (ldtilecfg's 64 bytes, palette 1): 8 tiles of 16 rows × 64
 * bytes. Tiles 0-3 accumulate, 4-6 hold W's h, m, l, 3 and 7 (when not accumulating) X. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Rows of X rounded up to whole tiles, elements to whole blocks of 32. */
static inline int amx_np(int n) { return (n + 15) / 16 * 16; }
static inline int amx_in32(int in) { return (in + 31) / 32 * 32; }

/* uint16 of X's three planes (h, m, l), each amx_np(n) rows of amx_in32(in) BF16, zero
 * past row n and element in, laid out as amx_x_at says. */
static size_t amx_x_halves(int n, int in)
{
    return 3 * (size_t)amx_np(n) * (size_t)amx_in32(in);
}

/* Where element k (a multiple of 16) of row i of plane lev of X's planes is: the planes
 * tile by tile in the order the products read them — block of 32 elements, then tile of 16
 * rows, then plane — each tile 16 rows of 64 bytes, one contiguous KB. Against each plane
 * row-major (a tile's rows 1.1 or 3 KB apart), the 1536 × 576 product of 32 / 64 rows,
 * two threads from memory, 3 rounds: 193-195 / 304-310 µs against 200-206 / 338-348; in
 * a decode step (bench_batch --quick, alternated, 3 rounds) 32 rows 33.0-34.1 ms against
 * 33.6-35.9, 48 rows 42.6-47.5 against 43.8-48.3, 64 rows within the noise. */
static inline size_t amx_x_at(int n, int k, int i, int lev)
{
    int nt = (n + 15) / 16;
    return ((((size_t)(k / 32) * nt + i / 16) * 3 + lev) * 16 + i % 16) * 32 + k % 32;
}

/* X [n, in] split into its three planes at out (amx_x_halves). */
static void amx_prepare(const float *x, int n, int in, uint16_t *out)
{
    int in32 = amx_in32(in);
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    for (int k = 0; n % 16 && k < in32; k += 32)   /* the last tile's rows past n */
        for (int lev = 0; lev < 3; lev++)
            memset(out + amx_x_at(n, k, n, lev), 0, sizeof *out * 32 * (size_t)(-n & 15));
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * in;
        for (int k = 0; k < in32; k += 16) {
            __mmask16 live = in - k >= 16 ? 0xffff
                             : in > k     ? (__mmask16)((1u << (in - k)) - 1)
                                          : 0;
            __m512i v = _mm512_castps_si512(_mm512_maskz_loadu_ps(live, xi + (k < in ? k : 0)));
            __m512i r = _mm512_castps_si512(_mm512_sub_ps(
                _mm512_castsi512_ps(v), _mm512_castsi512_ps(_mm512_and_si512(v, top))));
            __m512i l = _mm512_castps_si512(_mm512_sub_ps(
                _mm512_castsi512_ps(r), _mm512_castsi512_ps(_mm512_and_si512(r, top))));
            __m512i part[3] = {v, r, l};   /* h, m, l: each one's upper 16 bits */
            for (int q = 0; q < 3; q++)
                _mm256_storeu_si256((__m256i *)(out + amx_x_at(n, k, i, q)),
                                    _mm512_cvtepi32_epi16(_mm512_srli_epi32(part[q], 16)));
        }
    }
}

/* Pairs [j0, j1) of elements [k, k + 32) of the panel at pd (16 rows, in elements) split
 * into W's three B tiles at wb: row j of each holds elements k + 2j, k + 2j + 1 of the 16
 * rows, row r's pair at uint16 2r, 2r + 1 (elements past in are zero). W is prefetched
 * AMX_PF bytes ahead into L2 and AMX_PF1 into L1: bench_batch --quick, alternated, 2
 * rounds, 28 and 32 rows 34.1-35.8 ms against 38.5-39.7 without; 48 and 64 rows within the
 * noise (47.3-50.7 against 49.0-49.3, 58.5-63.0 against 59.6-59.9). */
#ifndef AMX_PF
#define AMX_PF 16384
#endif
#define AMX_PF1 2048
static inline __attribute__((always_inline)) void
amx_split(const float *pd, int in, int k, uint16_t wb[3][512], int j0, int j1)
{
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    for (int j = j0; j < j1; j++) {
        int c = k + 2 * j;
        __m512i a, b;
        if (k + 32 <= in) {
#if AMX_PF
            const char *at = (const char *)(pd + (size_t)c * 16);
            _mm_prefetch(at + AMX_PF, _MM_HINT_T1);
            _mm_prefetch(at + AMX_PF + 64, _MM_HINT_T1);
            _mm_prefetch(at + AMX_PF1, _MM_HINT_T0);
            _mm_prefetch(at + AMX_PF1 + 64, _MM_HINT_T0);
#endif
            a = _mm512_loadu_si512(pd + (size_t)c * 16);
            b = _mm512_loadu_si512(pd + (size_t)(c + 1) * 16);
        } else {
            a = c < in ? _mm512_loadu_si512(pd + (size_t)c * 16) : _mm512_setzero_si512();
            b = c + 1 < in ? _mm512_loadu_si512(pd + (size_t)(c + 1) * 16)
                           : _mm512_setzero_si512();
        }
        /* h of a pair: a's upper half shifted down, b's in place (0xF8: A | (B & C)) */
        __m512i hrow = _mm512_ternarylogic_epi32(_mm512_srli_epi32(a, 16), b, top, 0xF8);
        __m512 ra = _mm512_sub_ps(_mm512_castsi512_ps(a),
                                  _mm512_castsi512_ps(_mm512_and_si512(a, top)));
        __m512 rb = _mm512_sub_ps(_mm512_castsi512_ps(b),
                                  _mm512_castsi512_ps(_mm512_and_si512(b, top)));
        __m512i ria = _mm512_castps_si512(ra), rib = _mm512_castps_si512(rb);
        __m512i mrow = _mm512_ternarylogic_epi32(_mm512_srli_epi32(ria, 16), rib, top, 0xF8);
        __m512 la = _mm512_sub_ps(ra, _mm512_castsi512_ps(_mm512_and_si512(ria, top)));
        __m512 lb = _mm512_sub_ps(rb, _mm512_castsi512_ps(_mm512_and_si512(rib, top)));
        /* l's lower halves are zero: no mask needed */
        __m512i lrow = _mm512_or_si512(_mm512_srli_epi32(_mm512_castps_si512(la), 16),
                                       _mm512_castps_si512(lb));
        _mm512_store_si512(wb[0] + 32 * j, hrow);
        _mm512_store_si512(wb[1] + 32 * j, mrow);
        _mm512_store_si512(wb[2] + 32 * j, lrow);
    }
}

/* The tile of X (plane lev, rows 16·t..) at elements xk into tile T. */
#define AMX_X(T, t, lev) _tile_loadd(T, xk + ((size_t)(t) * 3 + (lev)) * 512, 64)

/* Rows [lo, hi) of an F32P product (lo a multiple of 16) from X split at xp (amx_prepare),
 * up to 64 rows of X at a time: one sweep of a panel keeps their tiles of Y in tiles
 * 0-3, and each block of W, split once, meets them all. The six products of a tile of X
 * go to more than one accumulator where there are fewer than 3 tiles of X (a product's
 * result is ready ~3 products later; one accumulator would wait for each). */
static void amx_rows(const smallmm_xmt *jb, const uint16_t *xp, int in, int lo, int hi)
{
    amx_config cfg = {.palette = 1};
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    int in32 = amx_in32(in), n = jb->n;
    _Alignas(64) uint16_t wbs[2][3][512];
    _Alignas(64) float acc[4][256];
    const float *w = jb->m.data;
    for (int p = lo / 16; p * 16 < hi; p++) {
        const float *pd = w + wtensor_f32p_offset(in, (int64_t)p * 16, 0);
        int cols = hi - p * 16 < 16 ? hi - p * 16 : 16;
        __mmask16 live = (__mmask16)((1u << cols) - 1);
        for (int i0 = 0; i0 < n; i0 += 64) {
            int nt = (n - i0 + 15) / 16 < 4 ? (n - i0 + 15) / 16 : 4;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            amx_split(pd, in, 0, wbs[0], 0, 16);
            for (int k = 0; k < in32; k += 32) {
                /* W's block k, split during block k - 32's products */
                uint16_t(*wb)[512] = wbs[k / 32 & 1];
                _tile_loadd(4, wb[0], 64);
                _tile_loadd(5, wb[1], 64);
                _tile_loadd(6, wb[2], 64);
                /* the next block's split, in parts between the tile products (the
                 * loads of W then go out while the tiles compute) */
                uint16_t(*nwb)[512] = wbs[(k / 32 + 1) & 1];
                int more = k + 32 < in32;
#define AMX_SPLIT(j0, j1)                                                                      \
    if (more)                                                                                  \
        amx_split(pd, in, k + 32, nwb, j0, j1);
                const uint16_t *xk = xp + amx_x_at(n, k, i0, 0);
                if (nt == 1) {  /* accumulators 0 1 2, X in 3 and 7 */
                    AMX_X(3, 0, 0);
                    _tile_dpbf16ps(0, 3, 4);
                    _tile_dpbf16ps(1, 3, 5);
                    _tile_dpbf16ps(2, 3, 6);
                    AMX_SPLIT(0, 6)
                    AMX_X(7, 0, 1);
                    _tile_dpbf16ps(0, 7, 4);
                    _tile_dpbf16ps(1, 7, 5);
                    AMX_SPLIT(6, 11)
                    AMX_X(3, 0, 2);
                    _tile_dpbf16ps(2, 3, 4);
                    AMX_SPLIT(11, 16)
                } else if (nt == 2) {  /* accumulators 0 1 (X's first tile), 2 3 */
                    AMX_X(7, 0, 0);
                    _tile_dpbf16ps(0, 7, 4);
                    _tile_dpbf16ps(1, 7, 5);
                    AMX_SPLIT(0, 2)
                    AMX_X(7, 1, 0);
                    _tile_dpbf16ps(2, 7, 4);
                    _tile_dpbf16ps(3, 7, 5);
                    AMX_SPLIT(2, 4)
                    AMX_X(7, 0, 1);
                    _tile_dpbf16ps(0, 7, 4);
                    _tile_dpbf16ps(1, 7, 5);
                    AMX_SPLIT(4, 6)
                    AMX_X(7, 1, 1);
                    _tile_dpbf16ps(2, 7, 4);
                    _tile_dpbf16ps(3, 7, 5);
                    AMX_SPLIT(6, 8)
                    AMX_X(7, 0, 2);
                    _tile_dpbf16ps(0, 7, 4);
                    AMX_SPLIT(8, 10)
                    AMX_X(7, 0, 0);
                    _tile_dpbf16ps(1, 7, 6);
                    AMX_SPLIT(10, 12)
                    AMX_X(7, 1, 2);
                    _tile_dpbf16ps(2, 7, 4);
                    AMX_SPLIT(12, 14)
                    AMX_X(7, 1, 0);
                    _tile_dpbf16ps(3, 7, 6);
                    AMX_SPLIT(14, 16)
                } else {  /* one accumulator per tile of X */
#define AMX_T(t)                                                                               \
    if ((t) < nt) {                                                                            \
        AMX_X(7, t, 0);                                                                        \
        _tile_dpbf16ps(t, 7, 4);                                                               \
        _tile_dpbf16ps(t, 7, 5);                                                               \
        _tile_dpbf16ps(t, 7, 6);                                                               \
        AMX_SPLIT(16 * (t) / nt, 16 * ((t) + 1) / nt)                                          \
        AMX_X(7, t, 1);                                                                        \
        _tile_dpbf16ps(t, 7, 4);                                                               \
        _tile_dpbf16ps(t, 7, 5);                                                               \
        AMX_X(7, t, 2);                                                                        \
        _tile_dpbf16ps(t, 7, 4);                                                               \
    }
                    AMX_T(0)
                    AMX_T(1)
                    AMX_T(2)
                    AMX_T(3)
#undef AMX_T
                }
#undef AMX_SPLIT
            }
            /* each tile of Y: the sum of its accumulators, rows past n and columns past
             * hi not written */
            _tile_stored(0, acc[0], 64);
            _tile_stored(1, acc[1], 64);
            _tile_stored(2, acc[2], 64);
            _tile_stored(3, acc[3], 64);
            for (int t = 0; t < nt; t++) {
                int a0 = nt == 1 ? 0 : nt == 2 ? 2 * t : t, na = nt == 1 ? 3 : nt == 2 ? 2 : 1;
                for (int r = 0; r < 16 && i0 + 16 * t + r < n; r++) {
                    __m512 s = _mm512_load_ps(acc[a0] + 16 * r);
                    for (int a = 1; a < na; a++)
                        s = _mm512_add_ps(s, _mm512_load_ps(acc[a0 + a] + 16 * r));
                    _mm512_mask_storeu_ps(jb->y + (size_t)(i0 + 16 * t + r) * jb->ldy + p * 16,
                                          live, s);
                }
            }
        }
    }
    _tile_release();
}
#undef AMX_X

/* The avx512bf16 family's kernels, but F32P products of SMALLMM_AMX_ROWS or more rows of X
 * on the tiles (xop: X split by amx_prepare). */
static void xmt_rows_amx(const smallmm_xmt *jb, const float *xop, float *tbuf, int in, int lo,
                         int hi)
{
    if (jb->m.type == WT_F32P && xop && lo % 16 == 0)
        amx_rows(jb, (const uint16_t *)(const void *)xop, in, lo, hi);
    else
        xmt_rows_avx512bf16(jb, xop, tbuf, in, lo, hi);
}

static const smallmm_kernels kernels_amx = {xmt_rows_amx, tb_cols_avx512bf16, 16,
                                            1 /* eo_rows, as avx512bf16's */,
                                            q8v_prepare_avx512bf16, SMALLMM_AMX_ROWS};
#pragma GCC pop_options
#endif

typedef float vf8_portable __attribute__((vector_size(32)));

/* p[0], p[1] repeated across 8 lanes. */
static inline vf8_portable bc2_portable(const float *p)
{
    return (vf8_portable){p[0], p[1], p[0], p[1], p[0], p[1], p[0], p[1]};
}

static inline vf8_portable q8_portable(const int8_t *q)
{
    return (vf8_portable){q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]};
}

/* p[0..3] twice. */
static inline vf8_portable bc4_portable(const float *p)
{
    return (vf8_portable){p[0], p[1], p[2], p[3], p[0], p[1], p[2], p[3]};
}

#define KSUF portable
#define VL 8
#define TI 2
#define TJ 4
#define TJ2 4
#define OJ 6
#define OJ3 4
#define PT 1
#define PG 6
#define KQ8(m, d) q8_portable((const int8_t *)(m) + (d))
#define KBC2(p) bc2_portable(p)
#define KBC4(p) bc4_portable(p)
#if defined(__AVX__)    /* the baseline itself has 32-byte registers */
#define KPIN 1
#else
#define KPIN 0
#endif
#include "smallmm_kern.h"

static const struct {
    const char *name;
    const smallmm_kernels *k;
} isas[] = {
    [SMALLMM_PORTABLE] = {"portable", &kernels_portable},
#ifdef SMALLMM_X86
    [SMALLMM_AVX2] = {"avx2", &kernels_avx2},
    [SMALLMM_AVX512] = {"avx512", &kernels_avx512},
    [SMALLMM_AVX512BF16] = {"avx512bf16", &kernels_avx512bf16},
    [SMALLMM_AMX] = {"amx", &kernels_amx},
#else
    [SMALLMM_AVX2] = {"avx2", NULL},
    [SMALLMM_AVX512] = {"avx512", NULL},
    [SMALLMM_AVX512BF16] = {"avx512bf16", NULL},
    [SMALLMM_AMX] = {"amx", NULL},
#endif
};

static smallmm_isa active = SMALLMM_AUTO;

int smallmm_isa_supported(smallmm_isa isa)
{
    if (isa == SMALLMM_PORTABLE)
        return 1;
#ifdef SMALLMM_X86
    __builtin_cpu_init();
    if (isa == SMALLMM_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (isa == SMALLMM_AVX512)
        return avx512;
    int bf16 = avx512 && __builtin_cpu_supports("avx512bf16") &&
               __builtin_cpu_supports("avx512vnni");
    if (isa == SMALLMM_AVX512BF16)
        return bf16;
    if (isa == SMALLMM_AMX)
        return bf16 && amx_usable();
#endif
    return 0;
}

const char *smallmm_isa_name(smallmm_isa isa)
{
    return isa >= SMALLMM_PORTABLE && isa <= SMALLMM_AMX ? isas[isa].name : "auto";
}

int smallmm_isa_parse(const char *s, smallmm_isa *isa)
{
    for (int i = SMALLMM_PORTABLE; i <= SMALLMM_AMX; i++)
        if (strcmp(s, isas[i].name) == 0) {
            *isa = (smallmm_isa)i;
            return 0;
        }
    return -1;
}

/* The best kernels this CPU runs, or LORAD_ISA's when it runs them. */
static smallmm_isa auto_isa(void)
{
    const char *env = getenv("LORAD_ISA");
    smallmm_isa want;
    if (env && *env) {
        if (smallmm_isa_parse(env, &want) == 0 && smallmm_isa_supported(want))
            return want;
        log_warn("LORAD_ISA=%s: not one of portable, avx2, avx512, avx512bf16, amx that this "
                 "CPU runs; choosing the best one", env);
    }
    for (int i = SMALLMM_AMX; i > SMALLMM_PORTABLE; i--)
        if (smallmm_isa_supported((smallmm_isa)i))
            return (smallmm_isa)i;
    return SMALLMM_PORTABLE;
}

int smallmm_set_isa(smallmm_isa isa)
{
    if (isa == SMALLMM_AUTO)
        isa = auto_isa();
    else if (!smallmm_isa_supported(isa))
        return -1;
    __atomic_store_n(&active, isa, __ATOMIC_RELAXED);
    return 0;
}

smallmm_isa smallmm_get_isa(void)
{
    smallmm_isa isa = __atomic_load_n(&active, __ATOMIC_RELAXED);
    if (isa == SMALLMM_AUTO) {
        isa = auto_isa();
        __atomic_store_n(&active, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

static const smallmm_kernels *kernels(void)
{
    return isas[smallmm_get_isa()].k;
}

/* Work (bytes of weights × rows of X, summed over a pass's products) per task of an X·Mᵀ
 * pass: a pass takes between 1 and 8 tasks per thread, as many as its work fills. Every
 * pass has a fixed cost — publishing it, each task's claim and completion (atomics on
 * lines the other CPU holds), each task starting on memory nothing prefetched, the wait
 * for the last task — about 8 µs on the 2-vCPU guest (bench_weights, "products alone":
 * a token's products in decode's 121 passes against the same products in 2). With 8
 * tasks per thread whatever the size, that cost took a quarter of a Q8 decode step
 * (151 MB: 4.2 ms against 3.2) and a sixth of a BF16 one. With 256 KB per task (a
 * one-row Q8 q/k/v pass takes 2 tasks, a gate/up pass 6, an F32 gate/up pass 16),
 * alternated quick runs of bench_weights: decode Q8 184 / 195 → 220 / 230 tok/s, BF16
 * 132 / 135 → 152 / 146, F32 83 / 87 → 91 / 90; 128 KB was between the two, 512 KB not
 * clearly apart from 256. Since one row of X streams each task's rows of M as one
 * sequential run (dots_seq; Q8 panels), fewer, longer tasks are faster still: 1 MB a task
 * (a one-row pass under 4 MB — every pass of the 135M shape but lm_head — takes one task
 * per thread), decode's products alone against 256 KB, the two alternated in one process
 * (21 pairs, paired medians): F32 0.95–0.97, BF16 0.94–0.99, Q8 0.94–0.99 in fast and slow
 * phases of the machine; 4 MB and 64 MB the same as 1 MB within noise; 2–32 rows of X
 * 0.95–1.00. Products of many rows of X are compute-bound and are cut into up to 8
 * chunks per thread (the work counts each row), which xmt_task hands out so that each
 * thread's are consecutive rows. Each thread's last chunk is cut again in TAIL_CUTS
 * smaller pieces (chunk_at). */
#define SMALLMM_TASK_BYTES ((size_t)1 << 20)
/* The pieces each thread's last chunk is cut in beyond the first (chunk_at). */
#define TAIL_CUTS 4

/* The chunks one thread owns in a pass: it takes them from the front, in order, and a
 * thread done with its own takes the others' from the back. front << 32 | back, on a
 * cache line of its own. */
typedef struct {
    _Alignas(64) _Atomic uint64_t fb;
    char pad[64 - sizeof(uint64_t)];
} chunk_range;

typedef struct {
    const smallmm_kernels *k;
    const smallmm_tb *jobs;
    int n_jobs, n_tasks;
    int64_t span;   /* the outputs' columns laid end to end: max(col0 + out) */
} tb_pass;

/* Task k: the k-th share of the span of columns, split at multiples of 16, and of each
 * product the columns that fall in it — the same for every product with the same out and
 * col0, so no two tasks write one element. Splitting each product's own columns in equal
 * shares instead had a thread add to columns the other had just written in the X·Mᵀ pass
 * (q's second half went to the thread that had done k and v). */
static void tb_task(void *ctx, int task, int thread)
{
    (void)thread;
    const tb_pass *ps = ctx;
    int64_t blocks = (ps->span + 15) / 16;
    int64_t g0 = blocks * task / ps->n_tasks * 16, g1 = blocks * (task + 1) / ps->n_tasks * 16;
    for (int k = 0; k < ps->n_jobs; k++) {
        const smallmm_tb *jb = &ps->jobs[k];
        int64_t c0 = g0 - jb->col0, c1 = g1 - jb->col0;
        c0 = c0 < 0 ? 0 : c0 > jb->out ? jb->out : c0;
        c1 = c1 < 0 ? 0 : c1 > jb->out ? jb->out : c1;
        if (c0 < c1)
            ps->k->tb_cols(jb, (int)c0, (int)c1);
    }
}

static tb_pass tb_pass_of(struct pool *p, const smallmm_tb *jobs, int n_jobs)
{
    tb_pass ps = {kernels(), jobs, n_jobs, p ? pool_threads(p) : 1, 0};
    for (int k = 0; k < n_jobs; k++)
        if ((int64_t)jobs[k].col0 + jobs[k].out > ps.span)
            ps.span = (int64_t)jobs[k].col0 + jobs[k].out;
    return ps;
}

typedef struct {
    const smallmm_kernels *k;
    const smallmm_xmt *jobs;
    const float *const *xop;  /* per job: X in the order its tiles read, or NULL (all NULL: NULL) */
    int n_jobs, in, n_chunks;
    int per_range;  /* chunks per thread's range (chunk_at) */
    int64_t work;  /* Σ rows · row_work, cut in n_chunks chunks (chunk_at) */
    int n_ranges;         /* one per thread; range i owns chunks [C·i/n, C·(i+1)/n) */
    chunk_range *ranges;
    const tb_pass *tb;    /* ·Bᵀ products after every chunk (NULL: none); task k does share k */
    atomic_int done;      /* chunks finished, counted when there is tb */
    float *tbuf;          /* per thread, SMALLMM_Q8P_FLOATS(in) floats each (NULL: none) */
} xmt_pass;

/* Rows [lo, hi) of a Q8 product with X as it is, one weight at a time (when there was no
 * memory for X in the kernels' form). */
static void q8_rows_plain(const smallmm_xmt *jb, int in, int lo, int hi)
{
    const int8_t *q = jb->m.data;
    for (int i = 0; i < jb->n; i++)
        for (int r = lo; r < hi; r++) {
            const float *x = jb->x + (size_t)i * in;
            float s = 0;
            for (int e = 0; e < in; e++)
                s += x[e] * ((float)q[wtensor_q8_offset(in, r, e)] *
                             jb->m.scale[wtensor_q8_scale_index(in, r, e)]);
            jb->y[(size_t)i * jb->ldy + r] = s;
        }
}

/* A boundary between two chunks' rows of a product, local row b, moved down to a whole
 * number of the product's tiles (both chunks move it alike, so the rows are still split
 * exactly): a Q8 product's to a whole panel; an F32P one's to SMALLMM_P_UNIT; one on the
 * outer-product tiles to a whole OUTER_BLOCK, else a chunk's last tile has fewer rows of M
 * but costs a whole one (a 16-row pass of 1,008 rows, cut in 16 chunks of 63, took 15%
 * longer than one of 960 cut in chunks of 60: the q/k/v products and an adapter's A's of a
 * 16-token prefill); the dot-product tiles' to 8 (they take 8, TJ2 or TJ rows of M at a
 * time). */
static int64_t task_edge(const xmt_pass *ps, const smallmm_xmt *jb, int64_t b)
{
    if (b <= 0)
        return 0;
    if (b >= jb->rows)
        return jb->rows;
    int64_t unit = jb->m.type == WT_Q8 ? WT_Q8_PANEL
                   : jb->m.type == WT_F32P || jb->m.type == WT_BF16P ? SMALLMM_P_UNIT
                   : smallmm_outer_group(ps->k->vl, jb->n, ps->in) ? OUTER_BLOCK : 8;
    return b / unit * unit;
}

/* What one row of M costs in a pass, in the units chunks are cut in: its n rows of X, at
 * least SMALLMM_ROW_WORK_MIN — with fewer the tiles wait on memory, not on the FMAs (a
 * weight read from memory feeds 2n flops, and the FMA peak is ~8 flops per byte of
 * bandwidth here). Cut by rows of M alone, a pass of 64 rows of X on the base and 8 rows
 * on each of 8 adapters' A's gave the thread whose range ends with the A's ~14% less
 * work, and only whole chunks (1/16 of the pass) to even it with. bench_batch --quick,
 * alternated, 3 pairs: 64 rows on 8 adapters 72.6-74.4 -> 71.0-73.3 ms (0.87-0.90 ->
 * 0.89-0.93 of the base's tokens/s), 32 rows 41.4-44.2 -> 40.4-44.1; on the base, where
 * every product has the same n, nothing changes. */
#define SMALLMM_ROW_WORK_MIN 16
static int64_t row_work(const smallmm_xmt *jb)
{
    return jb->n > SMALLMM_ROW_WORK_MIN ? jb->n : SMALLMM_ROW_WORK_MIN;
}

/* Where chunk c of a pass begins in its work (c = n_chunks: the end). Thread i's range
 * (smallmm_run) is the i-th equal share of the work, cut in per_range - TAIL_CUTS equal
 * chunks, of which the last is cut again at 1/2, 3/4, 7/8 and 15/16: so the thread that
 * runs out of its own chunks first takes small pieces off the end of the other's range,
 * and the two finish within a small piece of each other, not within a whole chunk. The
 * time between the two threads' ends of a pass, 8-row steps: median 4.2 µs, 90th
 * percentile 16 µs with equal chunks; 2.6 and 12.8 µs with three cuts. */
static int64_t chunk_at(const xmt_pass *ps, int c)
{
    int per = ps->per_range, t = ps->n_chunks / per, r = c / per, j = c % per;
    if (r >= t)
        return ps->work;
    int64_t a = ps->work * r / t, len = ps->work * (r + 1) / t - a;
    int u = per - TAIL_CUTS;
    if (u < 1 || j < u)  /* (u < 1: a pass without a pool, one chunk) */
        return a + len * j / (u < 1 ? per : u);
    static const int sixteenths[TAIL_CUTS + 1] = {0, 8, 12, 14, 15};
    int64_t s = a + len * (u - 1) / u;
    return s + (a + len - s) * sixteenths[j - u + 1] / 16;
}

/* Chunk c of a pass, on thread `thread`: its rows of every product they fall in. */
static void xmt_chunk(const xmt_pass *ps, int c, int thread)
{
    float *tbuf = ps->tbuf ? ps->tbuf + (size_t)thread * SMALLMM_Q8P_FLOATS(ps->in) : NULL;
    int64_t g0 = chunk_at(ps, c), g1 = chunk_at(ps, c + 1);
    int64_t next = 0;  /* global work before the next product's first row */
    for (int k = 0; k < ps->n_jobs && next < g1; k++) {
        const smallmm_xmt *jb = &ps->jobs[k];
        int64_t w = row_work(jb), base = next;  /* (g - base) / w: the row work g falls in */
        next += jb->rows * w;
        int lo = (int)task_edge(ps, jb, (g0 - base) / w);
        int hi = (int)task_edge(ps, jb, (g1 - base) / w);
        if (hi <= lo)
            continue;
        const float *xop = ps->xop ? ps->xop[k] : NULL;
        if (jb->m.type == WT_Q8 && !xop && !(tbuf && q8p_job(jb)))
            q8_rows_plain(jb, ps->in, lo, hi);
        else
            ps->k->xmt_rows(jb, xop, tbuf, ps->in, lo, hi);
    }
}

/* The next chunk of range r from its front (its owner) or its back (another thread), -1
 * when none is left. */
static int claim_chunk(chunk_range *r, int from_back)
{
    uint64_t v = atomic_load_explicit(&r->fb, memory_order_relaxed);
    for (;;) {
        uint32_t f = (uint32_t)(v >> 32), b = (uint32_t)v;
        if (f >= b)
            return -1;
        uint64_t next = from_back ? v - 1 : v + ((uint64_t)1 << 32);
        if (atomic_compare_exchange_weak_explicit(&r->fb, &v, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return (int)(from_back ? b - 1 : f);
    }
}

/* Task k of a pass (one per thread): the chunks of the calling thread's range in order,
 * then the other ranges' from their ends — by thread, not by task, so that a thread
 * starts where smallmm_lead said it would, whichever task it claimed (a thread that
 * claims a second task finds every chunk claimed). A thread's chunks are thus one run of
 * consecutive rows, as if the pass had one chunk per thread, while the pass still
 * balances: a thread that falls behind (preempted, slower) has its last chunks taken.
 * When every chunk was a task of the pool, claimed from one counter, the two threads'
 * chunks interleaved, and a 1536 × 576 product of 8, 16, 32 or 64 rows of X took 10–25%
 * longer than in one chunk per thread (measured alone, 2 threads, weights streamed from
 * memory); in runs of chunks it takes as long as in one. Which thread computes a row does
 * not change its result. */
static void xmt_task(void *ctx, int task, int thread)
{
    xmt_pass *ps = ctx;
    for (int k = 0; k < ps->n_ranges; k++) {
        chunk_range *r = &ps->ranges[(thread + k) % ps->n_ranges];
        for (int c; (c = claim_chunk(r, k > 0)) >= 0;) {
            xmt_chunk(ps, c, thread);
            if (ps->tb)
                atomic_fetch_add_explicit(&ps->done, 1, memory_order_release);
        }
    }
    if (ps->tb) {
        /* every chunk is claimed by now, by a thread that is running it: wait for them
         * (the ·Bᵀ products read T from the adapters' X·Aᵀ and add to the base's Y) */
        pool_wait_for(&ps->done, ps->n_chunks);
        tb_task((void *)ps->tb, task, thread);
    }
}

/* X [n, in] zero-padded to whole Q8 blocks (nb·32 floats a row) at out, as the Q8 kernels
 * read it. */
static void q8x_prepare(const float *x, int n, int in, float *out)
{
    int nb = (int)wtensor_q8_blocks(in);
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * nb * WT_Q8_BLOCK;
        memcpy(o, x + (size_t)i * in, sizeof(float) * (size_t)in);
        memset(o + in, 0, sizeof(float) * (size_t)(nb * WT_Q8_BLOCK - in));
    }
}

/* xeo [n, in] = X [n, in] with each whole block of `block` elements as its even elements
 * then its odd ones (the order the one- and two-row BF16 tiles read; the rest is left
 * out: they take it from X). */
static void eo_prepare(const float *x, int n, int in, int block, float *xeo)
{
    int half = block / 2;
    for (int i = 0; i < n; i++)
        for (int d = 0; d + block <= in; d += block) {
            const float *s = x + (size_t)i * in + d;
            float *o = xeo + (size_t)i * in + d;
            for (int k = 0; k < half; k++) {
                o[k] = s[2 * k];
                o[half + k] = s[2 * k + 1];
            }
        }
}

/* The 8 × 8 block of X at rows i, elements k (row stride in) into xt (row stride np),
 * transposed in registers: 24 shuffles, 8 loads and 8 stores for 64 elements. */
static inline void transpose8(const float *x, int in, float *xt, int np)
{
    v8 r[8], t[8];
    for (int a = 0; a < 8; a++)
        r[a] = ld8(x + (size_t)a * in);
    for (int a = 0; a < 8; a += 2) {  /* pairs of rows interleaved */
        t[a] = __builtin_shuffle(r[a], r[a + 1], (vi8){0, 8, 1, 9, 4, 12, 5, 13});
        t[a + 1] = __builtin_shuffle(r[a], r[a + 1], (vi8){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int a = 0; a < 8; a += 4)   /* then pairs of pairs */
        for (int b = 0; b < 2; b++) {
            r[a + 2 * b] = __builtin_shuffle(t[a + b], t[a + b + 2],
                                             (vi8){0, 1, 8, 9, 4, 5, 12, 13});
            r[a + 2 * b + 1] = __builtin_shuffle(t[a + b], t[a + b + 2],
                                                 (vi8){2, 3, 10, 11, 6, 7, 14, 15});
        }
    for (int c = 0; c < 4; c++) {    /* then the two halves */
        st8(xt + (size_t)c * np, __builtin_shuffle(r[c], r[c + 4],
                                                  (vi8){0, 1, 2, 3, 8, 9, 10, 11}));
        st8(xt + (size_t)(c + 4) * np, __builtin_shuffle(r[c], r[c + 4],
                                                        (vi8){4, 5, 6, 7, 12, 13, 14, 15}));
    }
}

/* xt [in, np] = X [n, in] transposed, rows n..np-1 zero (the outer-product tiles' order
 * with groups of 1): whole 8 × 8 blocks in registers, the edges one element at a time. */
static void transpose_prepare(const float *x, int n, int in, int np, float *xt)
{
    int n8 = n / 8 * 8, in8 = in / 8 * 8;
    for (int i = 0; i < n8; i += 8)
        for (int k = 0; k < in8; k += 8)
            transpose8(x + (size_t)i * in + k, in, xt + (size_t)k * np + i, np);
    for (int k = 0; k < in; k++)
        for (int i = k < in8 ? n8 : 0; i < np; i++)
            xt[(size_t)k * np + i] = i < n ? x[(size_t)i * in + k] : 0.0f;
}

/* Rows of X an outer-product tile's vectors hold: the rows that take them (n_o =
 * smallmm_outer_rows) rounded up to vl / P. */
static int outer_rows_padded(int vl, int n, int in)
{
    int no = smallmm_outer_rows(vl, n, in), rv = vl / smallmm_outer_group(vl, no, in);
    return (no + rv - 1) / rv * rv;
}

/* The first n_o rows of X [n, in] (n_o = smallmm_outer_rows) in the outer-product
 * tiles' order for groups of P: group g of element k holds elements [g·P, g·P + P) of rows
 * 0..np-1, row by row (P floats each), zero past row n_o and past element in — so a vector
 * of VL floats is P consecutive elements of VL / P rows. */
static void outer_prepare(const float *x, int n, int in, int vl, float *xp)
{
    int np = outer_rows_padded(vl, n, in);
    n = smallmm_outer_rows(vl, n, in);
    int P = smallmm_outer_group(vl, n, in);
    if (P == 1) {
        transpose_prepare(x, n, in, np, xp);
        return;
    }
    int groups = (in + P - 1) / P;
    for (int g = 0; g < groups; g++) {
        float *o = xp + (size_t)g * np * P;
        int k = g * P, w = in - k < P ? in - k : P;
        for (int i = 0; i < np; i++, o += P) {
            if (i < n && w == P) {
                memcpy(o, x + (size_t)i * in + k, sizeof(float) * (size_t)P);
                continue;
            }
            for (int q = 0; q < P; q++)
                o[q] = i < n && q < w ? x[(size_t)i * in + k + q] : 0.0f;
        }
    }
}

/* Floats of X in the tiles' orders that a pass keeps on the stack; more come from the
 * cached scratch below. */
#define XOP_STACK_FLOATS 8192

/* Scratch for X in the tiles' orders, kept from one pass to the next: a decode step of 64
 * rows makes ~120 passes, each with up to 400 KB of transposed X, which malloc would map
 * and unmap every time. A pass takes it with an atomic exchange and puts it back; one that
 * finds it taken (another thread's pass) allocates its own. */
typedef struct {
    size_t cap;  /* floats */
    float data[];
} xop_scratch;
static xop_scratch *_Atomic xop_cache;

static xop_scratch *scratch_take(size_t floats)
{
    xop_scratch *b = atomic_exchange(&xop_cache, NULL);
    if (b && b->cap >= floats)
        return b;
    free(b);
    b = malloc(sizeof *b + floats * sizeof(float));
    if (b)
        b->cap = floats;
    return b;
}

static void scratch_give_back(xop_scratch *b)
{
    free(atomic_exchange(&xop_cache, b));
}

/* How a job's X is read: 4 split for the AMX tiles, 3 zero-padded to whole Q8 blocks, 2
 * packed for the outer-product tiles, 1 in the BF16 even/odd order, 0 as it is (so on
 * every panel tile: F32P, BF16P, and Q8 dequantized a tile at a time, q8p_job). */
static int xop_kind(const smallmm_kernels *k, const smallmm_xmt *jb, int in)
{
    if (q8p_job(jb))
        return 0;
    if (jb->m.type == WT_Q8)
        return 3;
    if (jb->m.type == WT_F32P)
        return k->amx_rows && jb->n >= k->amx_rows ? 4 : 0;
    if (jb->m.type == WT_BF16P)
        return 0;
    if (smallmm_outer_group(k->vl, jb->n, in))
        return 2;
    return jb->m.type == WT_BF16 && jb->n <= k->eo_rows;
}

static size_t xop_floats(const smallmm_kernels *k, const smallmm_xmt *jb, int in)
{
    switch (xop_kind(k, jb, in)) {
#ifdef SMALLMM_X86
    case 4:  /* and up to 15 floats to start on a cache line */
        return (amx_x_halves(jb->n, in) + 1) / 2 + 15;
#endif
    case 3:
        return (size_t)jb->n * (size_t)wtensor_q8_blocks(in) * WT_Q8_BLOCK;
    case 2: {
        int P = smallmm_outer_group(k->vl, smallmm_outer_rows(k->vl, jb->n, in), in);
        return (size_t)outer_rows_padded(k->vl, jb->n, in) * (size_t)((in + P - 1) / P * P);
    }
    case 1:
        return (size_t)jb->n * (size_t)in;
    default:
        return 0;
    }
}

/* The X·Mᵀ pass of jobs[0..n_jobs) on pool p: its work (ps->work) and its chunks
 * (ps->n_chunks, 1 without a pool). */
static xmt_pass pass_of(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs)
{
    xmt_pass ps = {kernels(), jobs, NULL, n_jobs, in, 1, 1, 0, 0, NULL, NULL, 0, NULL};
    size_t bytes = 0;
    for (int k = 0; k < n_jobs; k++) {
        ps.work += jobs[k].rows * row_work(&jobs[k]);
        bytes += wtensor_data_bytes(jobs[k].m.type, jobs[k].rows, in) * (size_t)jobs[k].n;
    }
    if (p) {
        int t = pool_threads(p);
        size_t per = bytes / SMALLMM_TASK_BYTES / (size_t)t;
        ps.per_range = (per < 1 ? 1 : per > 8 ? 8 : (int)per) + TAIL_CUTS;
        ps.n_chunks = t * ps.per_range;
    }
    return ps;
}

size_t smallmm_lead(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs, int thread,
                    size_t max, const char **at)
{
    xmt_pass ps = pass_of(p, in, jobs, n_jobs);
    int t = p ? pool_threads(p) : 1;
    if (ps.work == 0 || thread < 0 || thread >= t)
        return 0;
    /* where range `thread` begins (smallmm_run: range i is chunks [C·i/t, C·(i+1)/t)) */
    int64_t g0 = chunk_at(&ps, ps.n_chunks * thread / t), next = 0;
    for (int k = 0; k < n_jobs; k++) {
        const smallmm_xmt *jb = &jobs[k];
        int64_t w = row_work(jb), base = next;
        next += jb->rows * w;
        if (g0 >= next)
            continue;
        int64_t lo = task_edge(&ps, jb, (g0 - base) / w);
        size_t off = wtensor_data_bytes(jb->m.type, lo, in);
        size_t len = wtensor_data_bytes(jb->m.type, jb->rows, in) - off;
        *at = (const char *)jb->m.data + off;
        return len < max ? len : max;
    }
    return 0;
}

void smallmm_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs,
                 const smallmm_tb *tb, int n_tb)
{
    xmt_pass ps = pass_of(p, in, jobs, n_jobs);
    if (ps.work == 0) {
        smallmm_tb_run(p, tb, n_tb);
        return;
    }
    int t = p ? pool_threads(p) : 1;
    tb_pass tp = tb_pass_of(p, tb, n_tb);
    if (n_tb)
        ps.tb = &tp;
    /* X in the order each job's tiles read, prepared here once per product rather than in
     * each task — once for all the jobs that share one X (q, k and v; a group's adapters),
     * for the two kinds that need it. Without memory the dot-product tiles read X as it
     * is. */
    const float *stack_ptrs[16];
    int stack_from[16];
    const float **xop = n_jobs <= 16 ? stack_ptrs : malloc((size_t)n_jobs * sizeof *xop);
    int *from = n_jobs <= 16 ? stack_from : malloc((size_t)n_jobs * sizeof *from);
    /* from[k]: the job whose prepared X job k reads (k itself, or an earlier job with the
     * same X, n and kind), -1 when it reads X as it is; memory for the first of each only */
    size_t need = 0;
    for (int k = 0; xop && from && k < n_jobs; k++) {
        int kind = xop_kind(ps.k, &jobs[k], in);
        from[k] = kind ? k : -1;
        for (int e = 0; e < k && kind && from[k] == k; e++)
            if (from[e] == e && jobs[e].x == jobs[k].x && jobs[e].n == jobs[k].n &&
                xop_kind(ps.k, &jobs[e], in) == kind)
                from[k] = e;
        if (from[k] == k)
            need += xop_floats(ps.k, &jobs[k], in);
    }
    /* a buffer a thread for the Q8 products on the panel tiles (q8p_job), after the X's */
    size_t xneed = need;
    for (int k = 0; k < n_jobs; k++)
        if (q8p_job(&jobs[k])) {
            need += (size_t)t * SMALLMM_Q8P_FLOATS(in);
            break;
        }
    float stack_buf[XOP_STACK_FLOATS];
    xop_scratch *heap = need > XOP_STACK_FLOATS ? scratch_take(need) : NULL;
    float *buf = need <= XOP_STACK_FLOATS ? stack_buf : heap ? heap->data : NULL;
    if (need > xneed && buf)
        ps.tbuf = buf + xneed;
    if (xneed && buf && xop && from) {
        size_t used = 0;
        for (int k = 0; k < n_jobs; k++) {
            xop[k] = from[k] < 0 ? NULL : from[k] < k ? xop[from[k]] : buf + used;
            if (from[k] != k)
                continue;
            int kind = xop_kind(ps.k, &jobs[k], in);
#ifdef SMALLMM_X86
            if (kind == 4) {  /* on a cache line: a tile's rows of 64 bytes each one line */
                float *a = buf + used + (-(uintptr_t)(buf + used) / sizeof(float) & 15);
                xop[k] = a;
                amx_prepare(jobs[k].x, jobs[k].n, in, (uint16_t *)(void *)a);
            } else
#endif
            if (kind == 3)
                (ps.k->q8_prep ? ps.k->q8_prep : q8x_prepare)(jobs[k].x, jobs[k].n, in,
                                                              buf + used);
            else if (kind == 2)
                outer_prepare(jobs[k].x, jobs[k].n, in, ps.k->vl, buf + used);
            else
                eo_prepare(jobs[k].x, jobs[k].n, in, 2 * ps.k->vl, buf + used);
            used += xop_floats(ps.k, &jobs[k], in);
        }
        ps.xop = xop;
    }
    /* On a pool, always in ranges: each thread starts on its own (smallmm_lead), and with
     * ·Bᵀ products a task may then wait only for chunks that another thread has claimed
     * (one chunk per task, it could wait for an unclaimed one) */
    chunk_range stack_ranges[8], *ranges = NULL;
    if (ps.n_chunks > 1)
        ranges = t <= 8 ? stack_ranges : aligned_alloc(64, sizeof *ranges * (size_t)t);
    if (ranges) {
        ps.n_ranges = t;
        ps.ranges = ranges;
        for (int i = 0; i < ps.n_ranges; i++) {
            uint64_t f = (uint64_t)ps.n_chunks * (uint64_t)i / (uint64_t)ps.n_ranges;
            uint64_t b = (uint64_t)ps.n_chunks * (uint64_t)(i + 1) / (uint64_t)ps.n_ranges;
            atomic_init(&ranges[i].fb, f << 32 | b);
        }
        pool_run(p, xmt_task, &ps, ps.n_ranges);
    } else {
        for (int c = 0; c < ps.n_chunks; c++)
            xmt_chunk(&ps, c, 0);
        for (int k = 0; ps.tb && k < tp.n_tasks; k++)
            tb_task(&tp, k, 0);
    }
    if (ranges != stack_ranges)
        free(ranges);
    if (heap)
        scratch_give_back(heap);
    if (xop != stack_ptrs)
        free(xop);
    if (from != stack_from)
        free(from);
}

void smallmm_xmt_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs)
{
    smallmm_run(p, in, jobs, n_jobs, NULL, 0);
}

void smallmm_tb_run(struct pool *p, const smallmm_tb *jobs, int n_jobs)
{
    tb_pass ps = tb_pass_of(p, jobs, n_jobs);
    if (n_jobs == 0)
        return;
    if (ps.n_tasks > 1)
        pool_run(p, tb_task, &ps, ps.n_tasks);
    else
        tb_task(&ps, 0, 0);
}
