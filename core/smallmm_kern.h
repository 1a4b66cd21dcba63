/* smallmm_kern.h: the smallmm kernels, written once and compiled once per instruction set
 * (included by smallmm.c with KSUF, VL, TI, TJ, TJ2, KPIN, KQ8 (and KDPBF16) defined and
 * the target set by #pragma GCC target; undefined again at the end). Every function here
 * is static and named with the KSUF suffix.
 *   VL    floats per vector (16: AVX-512 zmm; 8: AVX2 ymm, or two SSE registers)
 *   TI×TJ tile of X·Mᵀ: TI rows of X by TJ rows of M, TI·TJ accumulators; TJ2 the rows
 *         of M in a tile for two rows of X (8 with 32 registers; 4 with 16, where 2 × 8
 *         accumulators would spill)
 *   KPIN  1 when one register holds a vector (see the asm in dots_tile)
 *   KDPBF16 1: BF16 weights meet two rows of X in vdpbf16ps (AVX-512 BF16)
 *   KBC4(p) 4 floats from p repeated across the VL lanes
 *   KQ8(m, d)  VL int8 weights from byte d of m as floats (GCC's generic vector
 *         conversion scalarizes int8 → float, so the x86 builds use the intrinsics)
 * The weights M may be F32, BF16 or Q8 (wtensor.h). F32 and BF16 elements are widened to F32
 * in a register (BF16: a 16-bit shift) and multiplied in F32, so the products equal F32
 * products on the dequantized weights; Q8 ones too (integer → float, each block's sum
 * times its scale). */

#define KCAT2(a, b) a##_##b
#define KCAT(a, b) KCAT2(a, b)
#define K(name) KCAT(name, KSUF)

/* Rows of X up to which BF16 products take the even/odd tile (vdpbf16ps takes two rows
 * where the CPU has it). */
#if KDPBF16
#define K_EO_ROWS 1
#else
#define K_EO_ROWS 2
#endif

typedef float K(vf) __attribute__((vector_size(VL * 4)));
typedef float K(vfu) __attribute__((vector_size(VL * 4), aligned(4), may_alias));
typedef int K(vi) __attribute__((vector_size(VL * 4)));
typedef unsigned K(vu) __attribute__((vector_size(VL * 4)));
typedef unsigned short K(vh) __attribute__((vector_size(VL * 2), aligned(2), may_alias));

#define vf K(vf)
#define vi K(vi)

static inline __attribute__((always_inline)) vf K(ldf)(const float *p)
{
    return *(const K(vfu) *)p;
}

static inline __attribute__((always_inline)) void K(stf)(float *p, vf v)
{
    *(K(vfu) *)p = v;
}

/* x in every lane: one broadcast (`(vf){0} + x` adds zeros, -0 + 0 being +0, and a loop
 * over the lanes becomes VL masked inserts). */
static inline __attribute__((always_inline)) vf K(splat)(float x)
{
    vf v = {x};
    return __builtin_shuffle(v, (vi){0});
}

/* VL weights of row m from element d, as F32: type 0 F32, 1 BF16 (a compile-time constant
 * at every call, like the tile shape; Q8 has kernels of its own, below). */
static inline __attribute__((always_inline)) vf K(ldw)(const void *m, int d, int MT)
{
    if (MT == WT_F32)
        return K(ldf)((const float *)m + d);
    K(vu) w = __builtin_convertvector(*(const K(vh) *)((const uint16_t *)m + d), K(vu));
    return (vf)(w << 16);
}

/* One weight as F32 (the scalar tail). */
static inline __attribute__((always_inline)) float K(w1)(const void *m, int e, int MT)
{
    if (MT == WT_F32)
        return ((const float *)m)[e];
    return wtensor_bf16_to_f32(((const uint16_t *)m)[e]);
}

/* One level of the reduction tree. a and b each hold 2^(level-1) groups of partial sums
 * (group size g = VL / 2^(level-1), group k belonging to accumulator k); the result holds
 * a's groups then b's, each half as long: (first half + second half) of every group. */
static inline __attribute__((always_inline)) vf K(fold)(vf a, vf b, int level)
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
static inline __attribute__((always_inline)) vf K(reduce_lanes)(vf *acc, int n)
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
            acc[k] = K(fold)(acc[2 * k], acc[2 * k + 1], level);
    for (; (1 << (level - 1)) < VL; level++)
        acc[0] = K(fold)(acc[0], acc[0], level);
    return acc[0];
}

/* Ends a tile: the NI·NJ accumulators (k = i·NJ + j) VL at a time through the reduction
 * tree, the elements [d, in) past the last whole vector added one by one, and the ni × nj
 * results that are real written to y. */
static inline __attribute__((always_inline)) void
K(tile_store)(vf *acc, int ni, int nj, const float *const *xr, const void *const *mr,
              int d, int in, float *y, int ldy, int NI, int NJ, int MT)
{
    float sums[32];
    for (int c = 0; c < NI * NJ; c += VL) {
        vf part = K(reduce_lanes)(acc + c, NI * NJ - c < VL ? NI * NJ - c : VL);
        for (int k = 0; k < VL; k++)
            sums[c + k] = part[k];
    }
    for (int i = 0; i < ni && i < NI; i++)
        for (int j = 0; j < nj && j < NJ; j++) {
            float s = sums[i * NJ + j];
            for (int e = d; e < in; e++)
                s += xr[i][e] * K(w1)(mr[j], e, MT);
            y[(size_t)i * ldy + j] = s;
        }
}

/* y[i·ldy + j] = x_i · m_j for ni <= NI rows x_i of X and nj <= NJ rows m_j of M, F32 or
 * BF16 (rows past nj / ni repeat the last one and are not written; NI, NJ, MT are
 * constants at every call so each shape and weight type compiles to its own
 * register-blocked loop): every load of M feeds NI FMAs and every load of X NJ, the NI·NJ
 * accumulators stay in registers, and one tree reduction ends the tile. Rows j of M with
 * bit j set in pf_rows prefetch the row NJ further on (the same row of the next block of M)
 * as they stream: ~10% more bandwidth than the hardware prefetchers alone reach on the NJ
 * interleaved streams (measured on the 2-core VM; prefetching past M's end is harmless).
 * PFM (a constant) 0: pf_rows is 0 or every row (one- and two-row products); 1: any set of
 * rows, tested row by row. PIN (a constant) 1: the NJ vectors of M are held in registers
 * too, in products whose blocks of M meet more than one tile of X (more than TI rows:
 * every tile after a block's first finds it in L1; and the rows left after the
 * outer-product tiles, on the block just streamed): left to itself GCC folds
 * one row's load into each of the NI FMAs, 3 more loads a step than the FMAs need, and
 * a tile of 4 rows of X ran at ~55% of the FMA peak in cache. Pinned, the 8-row
 * products of decode's 30 layers went 2-14% faster with the weights in cache, the same
 * within noise from memory (builds alternated, 6 pairs); bench_batch, alternated, 4
 * pairs: 8 rows on 8 adapters 2-10% faster, 17 rows 2-11%, 8 on the base within noise.
 * Tiles that stream M from memory alone (T = 1) keep GCC's choice: pinned, 4 rows ran
 * 3-5% slower there. */
static inline __attribute__((always_inline)) void
K(dots_tile)(const float *x, int ni, int in, const wtensor *mt, int j0, int nj, float *y,
             int ldy, int pf_rows, int PFM, int PIN, int NI, int NJ, int MT)
{
    (void)PIN;  /* without KPIN, GCC's choice everywhere */
    size_t es = MT == WT_F32 ? 4 : 2;
    const void *mr[8];
    const float *xr[TI];
    for (int j = 0; j < NJ; j++) {
        int jj = j0 + (j < nj ? j : nj - 1);
        mr[j] = (const char *)mt->data + (size_t)jj * in * es;
    }
    for (int i = 0; i < NI; i++)
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
    vf acc[2 * VL];
    for (int k = 0; k < NI * NJ; k++)
        acc[k] = (vf){0};
    int d = 0;
    for (; d + VL <= in; d += VL) {
        vf mv[8];
        for (int j = 0; j < NJ; j++) {
            if (PFM ? pf_rows >> j & 1 : pf_rows)
                __builtin_prefetch((const char *)mr[j] + ((size_t)d + (size_t)NJ * in) * es,
                                   0, 3);
            mv[j] = K(ldw)(mr[j], d, MT);
#if KPIN
            if (PIN)
                __asm__("" : "+v"(mv[j]));
#endif
        }
        for (int i = 0; i < NI; i++) {
            vf xv = K(ldf)(xr[i] + d);
            /* in a register: GCC would otherwise fold this load into each of the NJ FMAs,
             * and the loads, not the FMAs, would bound the loop */
#if KPIN
            __asm__("" : "+v"(xv));
#endif
            for (int j = 0; j < NJ; j++)
                acc[i * NJ + j] += xv * mv[j];
        }
    }
    K(tile_store)(acc, ni, nj, xr, mr, d, in, y, ldy, NI, NJ, MT);
}

/* The BF16 tile for two rows of X without widening (one row: dots_seq, in the same order
 * of X): a vector of VL 32-bit lanes
 * loaded from BF16 weights holds 2·VL of them, lane k the pair (2k, 2k + 1); shifted left
 * 16 bits it is the even weights as F32, masked with 0xFFFF0000 the odd ones. xeo is X
 * with each whole block of 2·VL elements reordered into its VL even then its VL odd ones
 * (smallmm_xmt_run prepares it once per product), so one load, a shift, an AND and two
 * FMAs take 2·VL weights where widening takes a zero-extending load and a shift per VL —
 * and the products are the same exact F32 products. Decode of one sequence on the 135M
 * shape, BF16: ~10% faster than widening with AVX-512, 15% faster than vdpbf16ps, 30%
 * faster with AVX2 (measured with one row, before dots_seq; all 8 rows of M per tile: 16
 * rows streamed at once was slower). The elements past the last whole block come from x
 * in tile_store. */
static inline __attribute__((always_inline)) void
K(dots_bf16eo)(const float *xeo, const float *x, int ni, int in, const wtensor *mt, int j0,
               int nj, float *y, int ldy, int NI, int NJ)
{
    const void *mr[8];
    const float *xr[2], *er[2];
    for (int j = 0; j < NJ; j++)
        mr[j] = (const uint16_t *)mt->data + (size_t)(j0 + (j < nj ? j : nj - 1)) * in;
    for (int i = 0; i < NI; i++) {
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
        er[i] = xeo + (size_t)(i < ni ? i : ni - 1) * in;
    }
    vf acc[2 * VL];
    for (int k = 0; k < NI * NJ; k++)
        acc[k] = (vf){0};
    const K(vu) odd = (K(vu)){0} + 0xFFFF0000u;
    int d = 0;
    for (; d + 2 * VL <= in; d += 2 * VL) {
        for (int j = 0; j < NJ; j++) {
            __builtin_prefetch((const char *)mr[j] + ((size_t)d + (size_t)NJ * in) * 2, 0, 3);
            K(vu) w;
            __builtin_memcpy(&w, (const uint16_t *)mr[j] + d, sizeof w);
            vf we = (vf)(w << 16), wo = (vf)(w & odd);
            for (int i = 0; i < NI; i++)
                acc[i * NJ + j] += we * K(ldf)(er[i] + d) + wo * K(ldf)(er[i] + d + VL);
        }
    }
    K(tile_store)(acc, ni, nj, xr, mr, d, in, y, ldy, NI, NJ, WT_BF16);
}

/* The streams of weights of one row of X (dots_seq), the Q8 panels and the F32P panels
 * (panel_tile) are prefetched non-temporally (PREFETCHNTA, locality 0): the weights are
 * read once a step, so they should not push out of the caches what is read again — the
 * activations, the KV cache, an adapter's A and Bᵀ. Decode of one sequence, the builds
 * alternated (4 pairs each, the order reversed every other pair, medians): base step
 * f32 12.53 against 12.88 ms, bf16 5.14 against 5.38, q8 3.50 against 3.46; an adapter
 * cost 1.124 against 1.138 of the base step on bf16, 1.196 against 1.218 on q8. */
#define WPF_LOC 0

/* One or two rows of X (NI) times nj <= 8 rows of M, F32 or BF16, one row of M after the
 * other: each row of M is read from its start to its end into 4 accumulators per row of
 * X (4·VL elements a step; BF16 in the even/odd order of dots_bf16eo, xeo), which are
 * added into one vector per (row of X, row of M); the 8 rows' vectors end in one tree
 * reduction (tile_store), which also adds the elements past the last whole step. So a
 * task streams its rows of M as one sequential run of bytes, prefetched SEQ_PF bytes
 * ahead, where a tile of 8 rows of M read side by side makes 8 short interleaved streams.
 * Decode's products for one row of X (the 135M shape, 2 threads, Zen 5; the two kernels
 * alternated in one process, paired medians): F32 0.89–0.94 of the 1 × 8 tile's time,
 * BF16 0.78–0.94 of the even/odd tile's, in both slow and fast phases of the machine;
 * without the software prefetch, F32 0.93–1.00 and BF16 0.87–1.09. For two rows of X
 * the tiles stay (this order took 1.06–1.22 of their time). */
#ifndef SEQ_PF
#define SEQ_PF 4096
#endif
static inline __attribute__((always_inline)) void
K(dots_seq)(const float *x, const float *xeo, int ni, int in, const wtensor *mt, int j0,
            int nj, float *y, int ldy, int NI, int MT)
{
    enum { NJ = 8 };
    size_t es = MT == WT_F32 ? 4 : 2;
    const void *mr[NJ];
    const float *xr[2], *er[2];
    for (int j = 0; j < NJ; j++)
        mr[j] = (const char *)mt->data + (size_t)(j0 + (j < nj ? j : nj - 1)) * in * es;
    for (int i = 0; i < NI; i++) {
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
        er[i] = MT == WT_F32 ? xr[i] : xeo + (size_t)(i < ni ? i : ni - 1) * in;
    }
    vf acc[2 * NJ];
    int d = 0;
    for (int j = 0; j < nj; j++) {
        vf a[2][4] = {{(vf){0}}};
        d = 0;
        if (MT == WT_F32) {
            const float *m = mr[j];
            for (; d + 4 * VL <= in; d += 4 * VL)
                for (int u = 0; u < 4; u++) {
                    if (VL == 16 || u % 2 == 0)
                        __builtin_prefetch((const char *)(m + d + u * VL) + SEQ_PF, 0, WPF_LOC);
                    vf w = K(ldf)(m + d + u * VL);
                    for (int i = 0; i < NI; i++)
                        a[i][u] += w * K(ldf)(er[i] + d + u * VL);
                }
            for (; d + VL <= in; d += VL) {
                vf w = K(ldf)(m + d);
                for (int i = 0; i < NI; i++)
                    a[i][0] += w * K(ldf)(er[i] + d);
            }
        } else {
            const uint16_t *m = mr[j];
            const K(vu) odd = (K(vu)){0} + 0xFFFF0000u;
            for (; d + 4 * VL <= in; d += 4 * VL)
                for (int u = 0; u < 2; u++) {
                    if (VL == 16 || u == 0)   /* a line a prefetch */
                        __builtin_prefetch((const char *)(m + d + 2 * u * VL) + SEQ_PF, 0, WPF_LOC);
                    K(vu) w;
                    __builtin_memcpy(&w, m + d + 2 * u * VL, sizeof w);
                    vf we = (vf)(w << 16), wo = (vf)(w & odd);
                    for (int i = 0; i < NI; i++) {
                        a[i][2 * u] += we * K(ldf)(er[i] + d + 2 * u * VL);
                        a[i][2 * u + 1] += wo * K(ldf)(er[i] + d + 2 * u * VL + VL);
                    }
                }
            for (; d + 2 * VL <= in; d += 2 * VL) {
                K(vu) w;
                __builtin_memcpy(&w, m + d, sizeof w);
                for (int i = 0; i < NI; i++) {
                    a[i][0] += (vf)(w << 16) * K(ldf)(er[i] + d);
                    a[i][1] += (vf)(w & odd) * K(ldf)(er[i] + d + VL);
                }
            }
        }
        for (int i = 0; i < NI; i++)
            acc[i * NJ + j] = (a[i][0] + a[i][1]) + (a[i][2] + a[i][3]);
    }
    for (int j = nj; j < NJ; j++)
        for (int i = 0; i < NI; i++)
            acc[i * NJ + j] = (vf){0};
    K(tile_store)(acc, ni, nj, xr, mr, d, in, y, ldy, NI, NJ, MT);
}

#if KDPBF16
/* The BF16 tile with AVX-512 BF16's dot products (vdpbf16ps: 32 products a μop, in F32),
 * for two rows of X (decode of two sequences, where the widening kernel above runs out of
 * μops before memory runs out of bytes; as fast as the even/odd tile there, slower than it
 * for one row, measured on Zen 5). Each 32 elements of a row of X
 * are split into two BF16 vectors, hi = bf16(x) and lo = bf16(x − hi), and every weight
 * vector meets both: x·w to within 2^-17 of x (F32 would be 2^-24) — where rounding x
 * to BF16 alone (one vdpbf16ps) would cost 2^-9, too coarse to match the F32 reference.
 * The split costs ~12 μops per 32 elements of a row of X, shared by the NJ rows of M. */
static inline __attribute__((always_inline)) void
K(dots_dpbf16)(const float *x, int ni, int in, const wtensor *mt, int j0, int nj, float *y,
               int ldy, int NI, int NJ)
{
    const uint16_t *mr[16];
    const float *xr[2];
    for (int j = 0; j < NJ; j++)
        mr[j] = (const uint16_t *)mt->data + (size_t)(j0 + (j < nj ? j : nj - 1)) * in;
    for (int i = 0; i < NI; i++)
        xr[i] = x + (size_t)(i < ni ? i : ni - 1) * in;
    __m512 acc[32];
    for (int k = 0; k < NI * NJ; k++)
        acc[k] = _mm512_setzero_ps();
    int d = 0;
    for (; d + 32 <= in; d += 32) {
        __m512bh xh[2], xl[2];
        for (int i = 0; i < NI; i++) {
            __m512 x0 = _mm512_loadu_ps(xr[i] + d), x1 = _mm512_loadu_ps(xr[i] + d + 16);
            __m256bh h0 = _mm512_cvtneps_pbh(x0), h1 = _mm512_cvtneps_pbh(x1);
            __m512 f0 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32((__m256i)h0), 16));
            __m512 f1 = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32((__m256i)h1), 16));
            xh[i] = (__m512bh)_mm512_inserti64x4(_mm512_castsi256_si512((__m256i)h0),
                                                 (__m256i)h1, 1);
            xl[i] = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, f1), _mm512_sub_ps(x0, f0));
        }
        for (int j = 0; j < NJ; j++) {
            __builtin_prefetch(mr[j] + d + (size_t)NJ * in, 0, 3);
            __m512bh w = (__m512bh)_mm512_loadu_si512(mr[j] + d);
            for (int i = 0; i < NI; i++) {
                acc[i * NJ + j] = _mm512_dpbf16_ps(acc[i * NJ + j], xh[i], w);
                acc[i * NJ + j] = _mm512_dpbf16_ps(acc[i * NJ + j], xl[i], w);
            }
        }
    }
    const void *mv[16];
    for (int j = 0; j < NJ; j++)
        mv[j] = mr[j];
    K(tile_store)((vf *)acc, ni, nj, xr, mv, d, in, y, ldy, NI, NJ, WT_BF16);
}
#endif

/* P (1 or 2) weights of a row, k .. k + P - 1, as F32 in every group of P lanes (lane l:
 * weight k + l mod P) — one broadcast load for F32; for BF16 a broadcast of the 32-bit word
 * holding them, then each lane's half: shifted left 16 bits for an even weight, masked
 * with 0xFFFF0000 for an odd one. Past the row's end the weights read as 0 (tail: from a
 * zero-padded copy, never from beyond the row). */
static inline __attribute__((always_inline)) vf K(bcast)(const char *row, int k, int in,
                                                        int P, int TAIL, int MT)
{
#if VL == 16
    const K(vu) sh = {16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0, 16, 0};
#else
    const K(vu) sh = {16, 0, 16, 0, 16, 0, 16, 0};
#endif
    if (MT == WT_F32) {
        const float *w = (const float *)row + k;
        float t[2] = {0};
        if (TAIL) {  /* the group cut by the row's end: zeros past it */
            for (int q = 0; q < in - k; q++)
                t[q] = w[q];
            w = t;
        }
        return P == 1 ? K(splat)(w[0]) : KBC2(w);
    }
    const uint16_t *h = (const uint16_t *)row + k;
    uint16_t t[2] = {0};
    if (TAIL || (P == 1 && k + 2 > in)) {
        for (int q = 0; q < in - k; q++)
            t[q] = h[q];
        h = t;
    }
    uint32_t w0;
    __builtin_memcpy(&w0, h, 4);
    if (P == 1)
        return (vf)(((K(vu)){0} + w0) << 16);
    return (vf)((((K(vu)){0} + w0) << sh) & 0xFFFF0000u);
}

/* The outer-product tile, for products of 9 rows of X or more with F32 or BF16 weights.
 * X arrives packed (outer_prepare): a vector holds P consecutive elements k of each of VL/P
 * rows, so each group of P weights of a row of M, broadcast, meets NV such vectors: the
 * NV·OJ accumulators are Y itself, each lane a partial sum over every P-th element, and
 * no reduction tree ends the tile — only the sum of each row's P lanes as it is stored.
 * 2 vector loads and OJ broadcasts per 2·OJ FMAs (NV = 2), where the dot-product tile
 * needs 8 loads per 16 FMAs and a tree of folds per tile (NV = 3: 3 loads and OJ3
 * broadcasts per 3·OJ3 FMAs). P: see smallmm_outer_group. BF16 weights with
 * P = 1 are broadcast two at a time (a 32-bit word holds k and k + 1: shifted left 16
 * bits it is k's weight, masked with 0xFFFF0000 k + 1's). Q8 weights stay on the
 * dot-product tiles (a broadcast int8 needs three more operations). Rows m_j, j < nj, of
 * the block starting at row j0; vectors [v0, v0 + NV) of xp (np rows, a multiple of VL/P),
 * their rows past n not written. With pf, the same rows of the next block (OUTER_BLOCK
 * further on) are prefetched, a cache line per row as the tile crosses each. */
static inline __attribute__((always_inline)) void
K(outer_tile)(const float *xp, int np, int v0, int n, int in, const wtensor *mt, int j0,
              int nj, float *y, int ldy, int pf, int NV, int NJ, int P, int MT)
{
    size_t es = MT == WT_F32 ? 4 : 2;
    const char *mr[OJ];
    for (int j = 0; j < NJ; j++)
        mr[j] = (const char *)mt->data + (size_t)(j0 + (j < nj ? j : nj - 1)) * in * es;
    /* the same rows of the next block of OUTER_BLOCK */
    size_t next = (size_t)OUTER_BLOCK * in * es, gs = (size_t)np * P;  /* floats per group */
    const float *xv = xp + (size_t)v0 * VL;
    vf acc[3][OJ];
    for (int v = 0; v < NV; v++)
        for (int j = 0; j < NJ; j++)
            acc[v][j] = (vf){0};
    /* a cache line of every row per chunk: 16 F32 or 32 BF16 weights */
    int chunk = MT == WT_F32 ? 16 : 32, whole = in / P * P;
    for (int k0 = 0; k0 < in; k0 += chunk) {
        int k1 = k0 + chunk < whole ? k0 + chunk : whole, k = k0;
        if (pf)
            for (int j = 0; j < NJ; j++)
                __builtin_prefetch(mr[j] + next + (size_t)k0 * es, 0, 3);
        if (MT == WT_BF16 && P == 1) {
            const K(vu) odd = (K(vu)){0} + 0xFFFF0000u;
            for (; k + 2 <= k1; k += 2) {
                vf xa[3], xb[3];
                for (int v = 0; v < NV; v++) {
                    xa[v] = K(ldf)(xv + (size_t)k * gs + v * VL);
                    xb[v] = K(ldf)(xv + (size_t)(k + 1) * gs + v * VL);
                }
#pragma GCC unroll 16
                for (int j = 0; j < NJ; j++) {
                    uint32_t pair;
                    __builtin_memcpy(&pair, mr[j] + (size_t)k * 2, 4);
                    K(vu) w = (K(vu)){0} + pair;
                    vf we = (vf)(w << 16), wo = (vf)(w & odd);
                    for (int v = 0; v < NV; v++)
                        acc[v][j] += xa[v] * we + xb[v] * wo;
                }
            }
        }
        /* whole groups of P (F32; BF16 with P > 1; with P = 1 the last of an odd row) */
        for (; k < k1; k += P) {
            vf x[3];
            for (int v = 0; v < NV; v++)
                x[v] = K(ldf)(xv + (size_t)(k / P) * gs + v * VL);
#pragma GCC unroll 16
            for (int j = 0; j < NJ; j++) {
                vf w = K(bcast)(mr[j], k, in, P, 0, MT);
                for (int v = 0; v < NV; v++)
                    acc[v][j] += x[v] * w;
            }
        }
        if (P > 1 && k0 + chunk >= in && k < in) {  /* the group cut by the row's end */
            vf x[3];
            for (int v = 0; v < NV; v++)
                x[v] = K(ldf)(xv + (size_t)(k / P) * gs + v * VL);
            for (int j = 0; j < NJ; j++) {
                vf w = K(bcast)(mr[j], k, in, P, 1, MT);
                for (int v = 0; v < NV; v++)
                    acc[v][j] += x[v] * w;
            }
        }
    }
    float out[3][OJ][VL];
    for (int v = 0; v < NV; v++)
        for (int j = 0; j < NJ; j++)
            K(stf)(out[v][j], acc[v][j]);
    int rv = VL / P;  /* rows per vector */
    for (int v = 0; v < NV; v++)
        for (int i = 0; i < rv && (v0 + v) * rv + i < n; i++) {
            float *yr = y + (size_t)((v0 + v) * rv + i) * ldy + j0;
            for (int j = 0; j < nj; j++) {
                float sum = out[v][j][i * P];
                for (int q = 1; q < P; q++)
                    sum += out[v][j][i * P + q];
                yr[j] = sum;
            }
        }
}

/* One tile of min(ni, TI) rows of X (the last tile of a product has the rows left). */
static inline __attribute__((always_inline)) void
K(tile_rows)(const float *x, int ni, int in, const wtensor *m, int j, int nj, float *y,
             int ldy, int pf_rows, int PFM, int PIN, int MT)
{
    if (ni >= TI)
        K(dots_tile)(x, TI, in, m, j, nj, y, ldy, pf_rows, PFM, PIN, TI, TJ, MT);
#if TI > 2
    else if (ni == 3)
        K(dots_tile)(x, 3, in, m, j, nj, y, ldy, pf_rows, PFM, PIN, 3, TJ, MT);
#endif
    else if (ni == 2)
        K(dots_tile)(x, 2, in, m, j, nj, y, ldy, pf_rows, PFM, PIN, 2, TJ, MT);
    else
        K(dots_tile)(x, 1, in, m, j, nj, y, ldy, pf_rows, PFM, PIN, 1, TJ, MT);
}

/* Rows [lo, hi) of a product on the outer-product tiles with groups of P: blocks of
 * OUTER_BLOCK rows of M, each meeting the vectors of X three at a time (8 rows of M per
 * tile with AVX-512: 24 accumulators) while an odd number of them is left, then two at a
 * time (12 rows of M), a single one only when X has one; the first tile of a block
 * prefetches the next block's rows. */
static inline __attribute__((always_inline)) void
K(outer_rows_p)(const smallmm_xmt *jb, const float *xp, int in, int lo, int hi, int P, int MT)
{
    int no = smallmm_outer_rows(VL, jb->n, in);
    int rv = VL / P, np = (no + rv - 1) / rv * rv, nv = np / rv;
    for (int b = lo; b < hi; b += OUTER_BLOCK) {
        int be = hi - b < OUTER_BLOCK ? hi : b + OUTER_BLOCK;
        for (int v = 0; v < nv;) {
            int NV = nv - v == 1 ? 1 : (nv - v) % 2 ? 3 : 2;
            for (int j = b; j < be;)
                if (NV == 3) {
                    int nj = be - j < OJ3 ? be - j : OJ3;
                    K(outer_tile)(xp, np, v, no, in, &jb->m, j, nj, jb->y, jb->ldy, v == 0,
                                  3, OJ3, P, MT);
                    j += nj;
                } else {
                    int nj = be - j < OJ ? be - j : OJ;
                    if (NV == 2)
                        K(outer_tile)(xp, np, v, no, in, &jb->m, j, nj, jb->y, jb->ldy,
                                      v == 0, 2, OJ, P, MT);
                    else
                        K(outer_tile)(xp, np, v, no, in, &jb->m, j, nj, jb->y, jb->ldy,
                                      v == 0, 1, OJ, P, MT);
                    j += nj;
                }
            v += NV;
        }
        /* the rows past the whole vectors, on the block just streamed (in L1 / L2) */
        for (int i = no; i < jb->n; i += TI)
            for (int j = b; j < be; j += TJ)
                K(tile_rows)(jb->x + (size_t)i * in, jb->n - i, in, &jb->m, j,
                             be - j < TJ ? be - j : TJ, jb->y + (size_t)i * jb->ldy + j,
                             jb->ldy, 0, 0, 1, MT);
    }
}

static inline __attribute__((always_inline)) void
K(outer_rows_t)(const smallmm_xmt *jb, const float *xp, int in, int lo, int hi, int MT)
{
    /* a switch, not if / else: with if / else GCC laid out K(xmt_rows) so that the 8-row
     * dot-product tiles in it ran 12-18% slower (measured, alternated) */
    switch (smallmm_outer_group(VL, smallmm_outer_rows(VL, jb->n, in), in)) {
    case 1:
        K(outer_rows_p)(jb, xp, in, lo, hi, 1, MT);
        break;
    default:
        K(outer_rows_p)(jb, xp, in, lo, hi, 2, MT);
        break;
    }
}

/* Rows [lo, hi) of one product for weight type MT: for one row of X, M's rows one after
 * the other (dots_seq); otherwise blocks of TJ rows of M (TJ2 for two rows of X, which are
 * bound by streaming M: more rows of M in flight, 17% faster for two rows on AVX-512), and
 * for each, every tile of TI rows of X (the block of M is in L1 by then; X, at most 64
 * rows, in L2), the last tile with exactly the rows left. */
static inline __attribute__((always_inline)) void
K(xmt_rows_t)(const smallmm_xmt *jb, const float *xeo, int in, int lo, int hi, int MT)
{
    const wtensor *m = &jb->m;
#if KDPBF16
    if (MT == WT_BF16 && jb->n == 2) {  /* as fast as the even/odd tile for two rows */
        for (int j = lo; j < hi; j += 8)
            K(dots_dpbf16)(jb->x, 2, in, m, j, hi - j < 8 ? hi - j : 8, jb->y + j, jb->ldy,
                           2, 8);
        return;
    }
#endif
    if (MT == WT_BF16 && jb->n <= K_EO_ROWS && xeo) {
        for (int j = lo; j < hi; j += 8)
            if (jb->n == 1)
                K(dots_seq)(jb->x, xeo, 1, in, m, j, hi - j < 8 ? hi - j : 8, jb->y + j,
                            jb->ldy, 1, WT_BF16);
            else
                K(dots_bf16eo)(xeo, jb->x, 2, in, m, j, hi - j < 8 ? hi - j : 8, jb->y + j,
                               jb->ldy, 2, 8);
        return;
    }
    if (jb->n == 1) {
        for (int j = lo; j < hi; j += 8)
            K(dots_seq)(jb->x, NULL, 1, in, m, j, hi - j < 8 ? hi - j : 8, jb->y + j, jb->ldy,
                        1, MT);
        return;
    }
    if (jb->n == 2) {
        for (int j = lo; j < hi; j += TJ2)
            K(dots_tile)(jb->x, 2, in, m, j, hi - j < TJ2 ? hi - j : TJ2, jb->y + j, jb->ldy,
                         1, 0, 0, 2, TJ2, MT);
        return;
    }
    /* The next block of M is prefetched while this one meets the T tiles of X, spread
     * over them: row q of the block by tile q mod T (by tile q alone when T > TJ), so
     * that memory streams during every tile rather than only the first one's (measured
     * on the layer products of the 135M shape: 5-16 rows 8-20% faster, 20 rows 7%, 32
     * and 64 rows the same). */
    int T = (jb->n + TI - 1) / TI;
    for (int j = lo; j < hi; j += TJ) {
        int nj = hi - j < TJ ? hi - j : TJ;
        for (int i = 0; i < jb->n; i += TI) {
            int t = i / TI, pf = 0;
            for (int q = t % T; q < TJ && t < TJ; q += T)
                pf |= 1 << q;
            /* two calls, not one with PIN = T > 1: PIN must be a constant at the call */
            if (T > 1)
                K(tile_rows)(jb->x + (size_t)i * in, jb->n - i, in, m, j, nj,
                             jb->y + (size_t)i * jb->ldy + j, jb->ldy, pf, 1, 1, MT);
            else
                K(tile_rows)(jb->x + (size_t)i * in, jb->n - i, in, m, j, nj,
                             jb->y + (size_t)i * jb->ldy + j, jb->ldy, pf, 1, 0, MT);
        }
    }
}

/* Q8 weights (the panel layout, wtensor.h) times NI rows of X, widened to F32: the 16 rows
 * of the panel at d (scales sw). A vector of VL int8 from 64·k + v·VL of a block's 512
 * bytes is 4 consecutive weights of VL / 4 rows of the panel; widened to F32 it meets X's
 * same 4 elements repeated (KBC4), so each lane sums one row's products with every 4th
 * element of its block; per block the 4 vectors of sums are scaled (each lane by its row's
 * scale) into 4 running sums, and at the panel's end each row's 4 lanes are added. Groups
 * of 4 vectors (16 rows with AVX-512, 8 with 8-float vectors: 2 groups a panel, the second
 * from cache) keep within 16 registers. xz: X with each row zero-padded to nb·32 (row
 * stride ldx); rows of the panel from nrow on (the padding of the last) are not written.
 * The family with VNNI (avx512bf16) takes q8v_panel instead. */
static inline __attribute__((always_inline)) void
K(q8_panel)(const float *xz, int ldx, int nb, const int8_t *d, const float *sw, float *y,
            int ldy, int nrow, int NI)
{
    enum { RV = VL / 4, NG = WT_Q8_PANEL / (4 * RV) };   /* rows a vector; groups a panel */
    for (int g = 0; g < NG; g++) {
        vf f[2][4];
        for (int i = 0; i < NI; i++)
            for (int v = 0; v < 4; v++)
                f[i][v] = (vf){0};
        for (int b = 0; b < nb; b++) {
            const int8_t *db = d + (size_t)b * WT_Q8_PANEL * WT_Q8_BLOCK + g * 16 * RV;
            if (g == 0)
                for (int l = 0; l < WT_Q8_PANEL * WT_Q8_BLOCK; l += 64)
                    __builtin_prefetch(db + 4096 + l, 0, WPF_LOC);
            vf a[2][4];
            for (int i = 0; i < NI; i++)
                for (int v = 0; v < 4; v++)
                    a[i][v] = (vf){0};
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                vf w[4];
                for (int v = 0; v < 4; v++)
                    w[v] = KQ8(db, k * 64 + v * VL);
                for (int i = 0; i < NI; i++) {
                    vf xq = KBC4(xz + (size_t)i * ldx + b * WT_Q8_BLOCK + 4 * k);
                    for (int v = 0; v < 4; v++)
                        a[i][v] += xq * w[v];
                }
            }
            /* the scales of the group's rows, each in its 4 lanes */
            const float *sb = sw + (size_t)b * WT_Q8_PANEL + g * 4 * RV;
            for (int v = 0; v < 4; v++) {
                vf sv = K(ldf)(sb + v * RV / VL * VL);
                vi idx;
                for (int l = 0; l < VL; l++)
                    idx[l] = v * RV % VL + l / 4;
                vf sc = __builtin_shuffle(sv, idx);
                for (int i = 0; i < NI; i++)
                    f[i][v] += a[i][v] * sc;
            }
        }
        for (int i = 0; i < NI; i++)
            for (int v = 0; v < 4; v++)
                for (int r = 0; r < RV; r++) {
                    int row = g * 4 * RV + v * RV + r;
                    if (row < nrow)
                        y[(size_t)i * ldy + row] = (f[i][v][4 * r] + f[i][v][4 * r + 1]) +
                                                   (f[i][v][4 * r + 2] + f[i][v][4 * r + 3]);
                }
    }
}

#if KVNNI
/* Q8 with AVX-512 VNNI (vpdpbusd: in each 32-bit lane the sum of 4 products of unsigned by
 * signed bytes). In the panel layout one 64-byte run of a block is 4 consecutive weights
 * of each of the panel's 16 rows, a row to a lane — so one vpdpbusd against 4 activations
 * broadcast sums 4 products of every row into its own lane, and a panel is one vector of
 * 16 rows: no reduction at all. The weights are made unsigned (XOR 0x80: w + 128) and
 * the activations are the signed side, as integers: per block of 32, x_int = round(x ·
 * 8323072 / max|x|) (|x_int| <= 127·2^16), split into three balanced signed bytes d0 + d1·2^8
 * + d2·2^16, so that x = x_int · sx within 2^-24 of the block's largest element (sx = max|x|
 * / 8323072). Per plane p the lane sums Σ (w + 128)·d_p less 128·Σ d_p (from the
 * activations alone, prepared with them) are Σ w·d_p exactly in 32 bits; the three are
 * joined in F32 and scaled by the row's scale times sx.
 *
 * Measured on Zen 5 (one thread, a Q8 product in cache): 74–78 GB/s of Q8 against 52–55
 * for the widening kernel (two threads 149 against 100); decode's products alone, the two
 * alternated in one process (150 rounds of 15 pairs): 5–11% faster (median 7.5%) whenever
 * the machine's memory was fast (products at 2.2–2.5 ms), 1–2% slower in its slow phases,
 * where both stream at the bandwidth and the preparation (~10 ns a block) shows. (An
 * earlier version of this kernel was measured in decode only in slow phases — steps of
 * 3.2–4.2 ms — and lost there by 8%, so it was not kept then.)
 *
 * X as q8v_prepare leaves it: per row, per block, Q8V_BLOCK_BYTES — plane 0, 1, 2 (32
 * signed bytes each), the three offsets 128·Σ d_p (int32), sx (float), padding; a row is
 * nb·Q8V_BLOCK_BYTES, the same room as X zero-padded to whole blocks of floats (the
 * scratch smallmm_xmt_run sizes for both). */
#ifndef SMALLMM_Q8V_LAYOUT   /* once, whichever families have VNNI */
#define SMALLMM_Q8V_LAYOUT
enum { Q8V_OFF = 3 * WT_Q8_BLOCK, Q8V_SX = Q8V_OFF + 3 * 4, Q8V_BLOCK_BYTES = 128 };
_Static_assert(Q8V_BLOCK_BYTES == WT_Q8_BLOCK * sizeof(float) && Q8V_SX + 4 <= Q8V_BLOCK_BYTES,
               "a prepared block fills the room of a zero-padded one");
#endif
static void K(q8v_prepare)(const float *x, int n, int in, float *out)
{
    int nb = (int)wtensor_q8_blocks(in);
    for (int i = 0; i < n; i++)
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)i * in + (size_t)b * WT_Q8_BLOCK;
            int left = in - b * WT_Q8_BLOCK;
            __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
            __mmask16 m1 = left >= 32   ? 0xFFFF
                           : left <= 16 ? 0
                                        : (__mmask16)((1u << (left - 16)) - 1);
            __m512 v0 = _mm512_maskz_loadu_ps(m0, xb), v1 = _mm512_maskz_loadu_ps(m1, xb + 16);
            float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            if (_mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q))
                mx = NAN;   /* max drops NaNs */
            uint8_t *o = (uint8_t *)out + ((size_t)i * nb + b) * Q8V_BLOCK_BYTES;
            if (!(mx > 0 && mx <= FLT_MAX)) {
                /* all zero: adds nothing; a NaN or an infinity: sx NaN makes every row's
                 * result NaN, as F32 products would make it NaN or infinite */
                memset(o, 0, Q8V_BLOCK_BYTES);
                float sx = mx == 0 ? 0.0f : NAN;
                memcpy(o + Q8V_SX, &sx, sizeof sx);
                continue;
            }
            __m512 inv = _mm512_set1_ps(8323072.0f / mx);
            __m512i q[2] = {_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)),
                            _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv))};
            const __m512i c128 = _mm512_set1_epi32(128), c255 = _mm512_set1_epi32(255);
            __m512i sum[3] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                              _mm512_setzero_si512()};
            for (int h = 0; h < 2; h++) {
                __m512i r = q[h];
                for (int p = 0; p < 3; p++) {
                    __m512i d = p < 2 ? _mm512_sub_epi32(
                                            _mm512_and_si512(_mm512_add_epi32(r, c128), c255),
                                            c128)
                                      : r;
                    _mm_storeu_si128((__m128i *)(o + WT_Q8_BLOCK * p + 16 * h),
                                     _mm512_cvtepi32_epi8(d));
                    sum[p] = _mm512_add_epi32(sum[p], d);
                    r = _mm512_srai_epi32(_mm512_sub_epi32(r, d), 8);
                }
            }
            int32_t off[3];
            for (int p = 0; p < 3; p++)
                off[p] = 128 * _mm512_reduce_add_epi32(sum[p]);
            float sx = mx / 8323072.0f;
            memcpy(o + Q8V_OFF, off, sizeof off);
            memcpy(o + Q8V_SX, &sx, sizeof sx);
            memset(o + Q8V_SX + 4, 0, Q8V_BLOCK_BYTES - (Q8V_SX + 4));
        }
}

/* The 16 rows of the panel at d (scales sw) times NI rows of X in q8v_prepare's form (row
 * stride ldx bytes): y[i·ldy + r] for the rows r < nrow. */
static inline __attribute__((always_inline)) void
K(q8v_panel)(const uint8_t *xv, size_t ldx, int nb, const int8_t *d, const float *sw, float *y,
             int ldy, int nrow, int NI)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 f[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        const int8_t *db = d + (size_t)b * WT_Q8_PANEL * WT_Q8_BLOCK;
        for (int l = 0; l < WT_Q8_PANEL * WT_Q8_BLOCK; l += 64)
            __builtin_prefetch(db + 4096 + l, 0, WPF_LOC);
        __m512i a[2][3];
        for (int i = 0; i < NI; i++)
            for (int p = 0; p < 3; p++)
                a[i][p] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m512i u = _mm512_xor_si512(_mm512_loadu_si512(db + 64 * k), flip);
            for (int i = 0; i < NI; i++) {
                const uint8_t *xb = xv + (size_t)i * ldx + (size_t)b * Q8V_BLOCK_BYTES;
                for (int p = 0; p < 3; p++) {
                    int32_t dg;
                    __builtin_memcpy(&dg, xb + WT_Q8_BLOCK * p + 4 * k, sizeof dg);
                    a[i][p] = _mm512_dpbusd_epi32(a[i][p], u, _mm512_set1_epi32(dg));
                }
            }
        }
        __m512 s = _mm512_loadu_ps(sw + (size_t)b * WT_Q8_PANEL);
        for (int i = 0; i < NI; i++) {
            const uint8_t *xb = xv + (size_t)i * ldx + (size_t)b * Q8V_BLOCK_BYTES;
            int32_t off[3];
            float sx;
            __builtin_memcpy(off, xb + Q8V_OFF, sizeof off);
            __builtin_memcpy(&sx, xb + Q8V_SX, sizeof sx);
            __m512i t0 = _mm512_sub_epi32(a[i][0], _mm512_set1_epi32(off[0]));
            __m512i t1 = _mm512_sub_epi32(a[i][1], _mm512_set1_epi32(off[1]));
            __m512i t2 = _mm512_sub_epi32(a[i][2], _mm512_set1_epi32(off[2]));
            __m512i lo = _mm512_add_epi32(_mm512_slli_epi32(t1, 8), t0);
            __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t2), _mm512_set1_ps(65536.0f),
                                       _mm512_cvtepi32_ps(lo));
            f[i] = _mm512_fmadd_ps(t, _mm512_mul_ps(s, _mm512_set1_ps(sx)), f[i]);
        }
    }
    __mmask16 keep = nrow >= 16 ? 0xFFFF : (__mmask16)((1u << nrow) - 1);
    for (int i = 0; i < NI; i++)
        _mm512_mask_storeu_ps(y + (size_t)i * ldy, keep, f[i]);
}
#endif

/* Rows [lo, hi) of a Q8 product (lo a multiple of WT_Q8_PANEL; hi too, or the product's
 * last row), panel by panel, each meeting the rows of X two at a time (the panel is in
 * cache after the first). xq: X as this family's q8_prep left it (q8v_prepare with VNNI,
 * else q8x_prepare). */
static void K(q8_rows)(const smallmm_xmt *jb, const void *xq, int in, int lo, int hi)
{
    int nb = (int)wtensor_q8_blocks(in);
    for (int r = lo; r < hi; r += WT_Q8_PANEL) {
        const int8_t *d = (const int8_t *)jb->m.data + wtensor_q8_offset(in, r, 0);
        const float *sw = jb->m.scale + wtensor_q8_scale_index(in, r, 0);
        int nrow = hi - r < WT_Q8_PANEL ? hi - r : WT_Q8_PANEL;
        float *y = jb->y + r;
        int i = 0;
#if KVNNI
        const uint8_t *xv = xq;
        size_t ldb = (size_t)nb * Q8V_BLOCK_BYTES;
        for (; i + 2 <= jb->n; i += 2)
            K(q8v_panel)(xv + (size_t)i * ldb, ldb, nb, d, sw, y + (size_t)i * jb->ldy,
                         jb->ldy, nrow, 2);
        for (; i < jb->n; i++)
            K(q8v_panel)(xv + (size_t)i * ldb, ldb, nb, d, sw, y + (size_t)i * jb->ldy,
                         jb->ldy, nrow, 1);
#else
        const float *x = xq;
        int ldx = nb * WT_Q8_BLOCK;
        for (; VL == 16 && i + 2 <= jb->n; i += 2)
            K(q8_panel)(x + (size_t)i * ldx, ldx, nb, d, sw, y + (size_t)i * jb->ldy,
                        jb->ldy, nrow, 2);
        for (; i < jb->n; i++)
            K(q8_panel)(x + (size_t)i * ldx, ldx, nb, d, sw, y + (size_t)i * jb->ldy,
                        jb->ldy, nrow, 1);
#endif
    }
}

/* F32P weights (panels of WT_P_ROWS rows, wtensor.h), and BF16P ones (the same panels,
 * two elements a 32-bit lane: each load meets two broadcasts of every row of X): a tile
 * is NI <= PG rows of X by NV vectors of M — the PT panels of one tile of M, PVPP vectors
 * each; or, where PG2 is defined, NI <= PG2 rows by the vectors of PT - 1 panels
 * (panel_rows) — with NI·NV
 * accumulators that end as Y itself: at each element k the tile loads its NV vectors (16
 * rows of M each per panel) and meets each with row i's element k, broadcast. So NI + NV
 * loads feed NI·NV FMAs, no reduction ends the tile, M is read as PT sequential streams
 * (each prefetched PANEL_PF elements ahead, non-temporally as the streams above: WPF_LOC),
 * and X is read as it is. PREFETCHNTA against PREFETCHT0 here, switched between the
 * repetitions of one bench_batch process (Zen 5, 2 threads), tokens/s: the base step 1
 * row 1.05-1.08 ×, 8 rows 1.07-1.08 ×, 16-64 rows 0.99-1.05 ×; with 8 adapters 1 row
 * 1.06 ×, 8 rows 1.01 ×, more rows 1.00-1.02 ×. Gate, up and down of 30 layers from
 * memory alone, alternated in one process, 3 runs: 8 rows 0.84-0.91 × the time, 1 row
 * 0.90-0.98 × (PREFETCHT1 and T2 there: 0.98-1.06 × T0's). */
#define PVPP (WT_P_ROWS / VL)   /* vectors a panel */
#define PNV (PT * PVPP)         /* vectors a tile */
#ifndef PANEL_PF
#define PANEL_PF 64
#endif
#ifdef PG2
#define PGMAX PG2  /* rows of X a tile takes at most */
#else
#define PGMAX PG
#endif
static inline __attribute__((always_inline)) void
K(panel_tile)(const float *x, int in, const void *tp, float *y, int ldy, int NI, int NV, int MT)
{
    vf acc[PGMAX][PNV];
    for (int i = 0; i < NI; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = (vf){0};
    /* The last PANEL_PF elements prefetch the next tile's panels — it starts after this
     * tile's, a whole panel (in · WT_P_ROWS floats) further per panel — not the panels
     * after each of this tile's (its own others, already read), so that all of the next
     * tile's streams start in cache, not just its first. The decode step from memory
     * (Zen 5, 2 threads), alternated in one process, 3 rounds: 8 rows 3.6-5.5% faster
     * (11.01-11.72 -> 10.61-11.08 ms), one row 2.0-2.3%, 16-64 rows 1.3-3.2%; a product
     * of 8 rows of 576 alone from memory 58-60 -> 62-65 GB/s. */
    if (MT == WT_F32P) {
        size_t ps = (size_t)in * WT_P_ROWS;
        const float *m = tp;
        size_t wrap = (size_t)((NV + PVPP - 1) / PVPP - 1) * ps;
        for (int k = 0; k < in; k++, m += WT_P_ROWS) {
            vf w[PNV];
            size_t ahead = PANEL_PF * WT_P_ROWS + (k + PANEL_PF >= in ? wrap : 0);
            for (int v = 0; v < NV; v++) {
                const float *mv = m + (size_t)(v / PVPP) * ps + (v % PVPP) * VL;
                if (v % PVPP == 0)   /* a cache line a panel and element */
                    __builtin_prefetch(mv + ahead, 0, WPF_LOC);
                w[v] = K(ldf)(mv);
            }
            for (int i = 0; i < NI; i++) {
                vf xb = K(splat)(x[(size_t)i * in + k]);
                for (int v = 0; v < NV; v++)
                    acc[i][v] += xb * w[v];
            }
        }
    } else {
        /* BF16P: a pair of elements a step, each 32-bit lane a row's two weights
         * (wtensor_bf16p_offset), F32 by a shift (k) and an AND (k + 1); prefetched as
         * many bytes ahead as F32P (PANEL_PF pairs) */
        size_t ps = (size_t)((in + 1) & ~1) * WT_P_ROWS;   /* uint16_t a panel */
        const uint16_t *m = tp;
        const K(vu) odd = (K(vu)){0} + 0xFFFF0000u;
        size_t wrap = (size_t)((NV + PVPP - 1) / PVPP - 1) * ps;
        vf acco[PNV];
        for (int v = 0; v < NV; v++)
            acco[v] = (vf){0};
        for (int k = 0; k < in; k += 2, m += 2 * WT_P_ROWS) {
            vf we[PNV], wo[PNV];
            size_t ahead = (size_t)PANEL_PF * 2 * WT_P_ROWS +
                           (k + 2 * PANEL_PF >= in ? wrap : 0);
            for (int v = 0; v < NV; v++) {
                const uint16_t *mv = m + (size_t)(v / PVPP) * ps + (v % PVPP) * 2 * VL;
                if (v % PVPP == 0)   /* a cache line a panel and pair */
                    __builtin_prefetch(mv + ahead, 0, WPF_LOC);
                K(vu) w = (K(vu))K(ldf)((const float *)(const void *)mv);
                we[v] = (vf)(w << 16);
                wo[v] = (vf)(w & odd);
            }
            if (k + 1 < in && NI == 1) {  /* one row: the odd weights' own chains */
                vf x0 = K(splat)(x[k]), x1 = K(splat)(x[k + 1]);
                for (int v = 0; v < NV; v++) {
                    acc[0][v] += x0 * we[v];
                    acco[v] += x1 * wo[v];
                }
            } else if (k + 1 < in) {
                for (int i = 0; i < NI; i++) {
                    vf x0 = K(splat)(x[(size_t)i * in + k]);
                    vf x1 = K(splat)(x[(size_t)i * in + k + 1]);
                    for (int v = 0; v < NV; v++)
                        acc[i][v] += x0 * we[v] + x1 * wo[v];
                }
            } else {  /* an odd row's last element (its pair's other is the zero column) */
                for (int i = 0; i < NI; i++) {
                    vf x0 = K(splat)(x[(size_t)i * in + k]);
                    for (int v = 0; v < NV; v++)
                        acc[i][v] += x0 * we[v];
                }
            }
        }
        if (NI == 1)
            for (int v = 0; v < NV; v++)
                acc[0][v] += acco[v];
    }
    for (int i = 0; i < NI; i++)
        for (int v = 0; v < NV; v++)
            K(stf)(y + (size_t)i * ldy + v * VL, acc[i][v]);
}

/* panel_tile for ni rows of X (1..PG) and NV (a constant) vectors. */
static inline __attribute__((always_inline)) void
K(panel_ni)(const float *x, int in, const void *tp, float *y, int ldy, int ni, int NV, int MT)
{
    switch (ni) {
#define K_PANEL_CASE(N)                                                                    \
    case N:                                                                                \
        if (N <= PG || NV < PNV)  /* more rows only on the narrower tiles */               \
            K(panel_tile)(x, in, tp, y, ldy, N, NV, MT);                                   \
        break;
    K_PANEL_CASE(1) K_PANEL_CASE(2) K_PANEL_CASE(3) K_PANEL_CASE(4) K_PANEL_CASE(5)
    K_PANEL_CASE(6)
#if PGMAX > 6
    K_PANEL_CASE(7) K_PANEL_CASE(8)
#endif
#if PGMAX > 8
    K_PANEL_CASE(9) K_PANEL_CASE(10) K_PANEL_CASE(11) K_PANEL_CASE(12)
#endif
#if PGMAX > 12
    K_PANEL_CASE(13) K_PANEL_CASE(14)
#endif
#undef K_PANEL_CASE
    default:
        break;
    }
}

static inline __attribute__((always_inline)) void
K(panel_nv)(const float *x, int in, const void *tp, float *y, int ldy, int ni, int nv, int MT)
{
    switch (nv) {
    case 1:
        K(panel_ni)(x, in, tp, y, ldy, ni, 1, MT);
        break;
#if PNV > 1
    case 2:
        K(panel_ni)(x, in, tp, y, ldy, ni, 2, MT);
        break;
#endif
#if PNV > 2
    case 3:
        K(panel_ni)(x, in, tp, y, ldy, ni, 3, MT);
        break;
#endif
    default:
        break;
    }
}

/* One group of rows of X over one tile of panels: F32P, and BF16P (each its own code). */
static void K(panel_group)(const float *x, int in, const float *tp, float *y, int ldy, int ni,
                           int nv)
{
    K(panel_nv)(x, in, tp, y, ldy, ni, nv, WT_F32P);
}

static void K(panel_group_bf16)(const float *x, int in, const uint16_t *tp, float *y, int ldy,
                                int ni, int nv)
{
    K(panel_nv)(x, in, tp, y, ldy, ni, nv, WT_BF16P);
}

/* The tiles of M for n rows of X: *pg rows of X at most a group, *trows rows of M a tile
 * (PT panels, or PT - 1 where those need fewer groups). */
static inline void K(panel_shape)(int n, int *pg, int *trows)
{
    int tnv = PNV;
    *pg = PG;
#ifdef PG2
    if ((n + PG2 - 1) / PG2 < (n + PG - 1) / PG) {
        *pg = PG2;
        tnv = PNV - PVPP;
    }
#else
    (void)n;
#endif
    *trows = tnv / PVPP * WT_P_ROWS;
}

/* Every row of X over the tile of M whose rows r .. r + ny of the product start at tp (F32P,
 * or BF16P when bf), in balanced groups of at most pg rows. */
static void K(panel_tile_rows)(const smallmm_xmt *jb, int in, int r, int ny, const void *tp,
                               int bf, int pg)
{
    int n = jb->n, groups = (n + pg - 1) / pg;
    int nv = (ny + VL - 1) / VL, whole = ny == nv * VL;
    float t[PGMAX * PNV * VL];
    for (int g = 0, i = 0; g < groups; g++) {
        int ni = (n - i + groups - g - 1) / (groups - g);
        const float *x = jb->x + (size_t)i * in;
        float *y = jb->y + (size_t)i * jb->ldy + r;
        float *out = whole ? y : t;
        int ldo = whole ? jb->ldy : PNV * VL;
        if (bf)
            K(panel_group_bf16)(x, in, tp, out, ldo, ni, nv);
        else
            K(panel_group)(x, in, tp, out, ldo, ni, nv);
        for (int q = 0; !whole && q < ni; q++)
            memcpy(y + (size_t)q * jb->ldy, t + (size_t)q * PNV * VL,
                   sizeof(float) * (size_t)ny);
        i += ni;
    }
}

/* Rows [lo, hi) of an F32P product (lo a multiple of WT_P_ROWS): tile by tile of M, the n
 * rows of X in balanced groups of at most PG, each over all of a row's elements (the
 * second group finds the tile's panels in L2: blocks of 64 elements kept in L1 from one
 * group to the next made the 16- and 32-row decode steps 5-10% slower, the gate and up
 * products 12-27%, each block's accumulators reloaded); a last tile whose rows end inside
 * a vector goes through a buffer, so that no row of Y past hi is written.
 * Only the first group reads M from memory, and it waits on memory while the others find
 * M in L2 and wait on the FMAs; so where tiles one panel narrower (PG2 rows of X at
 * most) need fewer groups, they are taken: with AVX-512 (PG 8, PG2 14) every n from 9
 * but 15 and 16, where the groups are as many and the wider tile feeds more FMAs a load.
 * The decode products of the 135M shape from memory (30 layers and lm_head, 2 threads,
 * medians of 7, 3 rounds): 9 rows 14.4-16.2 -> 11.5-12.8 ms (one group instead of 5 + 4
 * rows), 17 rows 17.1 / 19.5 -> 14.9 / 18.4, 24 rows 21.0 / 24.5 -> 19.9 / 23.3, 32 rows
 * 3% faster, 48 and 64 rows within the noise; 16 rows in two groups of 8 on the narrower
 * tiles 3-10% slower. */
static void K(panel_rows)(const smallmm_xmt *jb, int in, int lo, int hi)
{
    int pg, trows, bf = jb->m.type == WT_BF16P;
    K(panel_shape)(jb->n, &pg, &trows);
    if (bf && jb->n == 1)  /* one panel at a time: the thread's rows as one sequential stream */
        trows = WT_P_ROWS;
    for (int r = lo; r < hi; r += trows) {
        /* the tile's first panel: r rows of in floats, or of in rounded up to even BF16 */
        const void *tp = bf ? (const void *)((const uint16_t *)jb->m.data +
                                             (size_t)r * ((in + 1) & ~1))
                            : (const void *)((const float *)jb->m.data + (size_t)r * in);
        K(panel_tile_rows)(jb, in, r, hi - r < trows ? hi - r : trows, tp, bf, pg);
    }
}

/* Q8 products of many rows of X (SMALLMM_Q8P_ROWS or more) on the F32P panel tiles: each
 * tile of M (PT panels of 16 rows, or PT - 1 as panel_rows takes them) dequantized first
 * into buf in the F32P layout, each weight q · s in F32 as the format defines it, then met
 * by every group of rows of X as an F32 model's panels are. q8_panel widens every weight
 * again for each pair of rows of X (32 times at 64 rows); here once, at ~5 operations a
 * vector of 16. */

/* The Q8 panel at d (scales sw; wtensor.h) as one F32P panel of in columns at out: the 64
 * bytes of a block at 64·k are a 32-bit lane a row, byte j its weight of column 4k + j. */
static void K(q8_to_panel)(const int8_t *d, const float *sw, int in, float *out)
{
    int nb = (int)wtensor_q8_blocks(in);
    for (int b = 0; b < nb; b++) {
        const int8_t *db = d + (size_t)b * WT_Q8_PANEL * WT_Q8_BLOCK;
        const float *sb = sw + (size_t)b * WT_Q8_PANEL;
        for (int l = 0; l < WT_Q8_PANEL * WT_Q8_BLOCK; l += 64)
            __builtin_prefetch(db + 4096 + l, 0, WPF_LOC);
        for (int k = 0; k < WT_Q8_BLOCK / 4 && b * WT_Q8_BLOCK + 4 * k < in; k++) {
            int c0 = b * WT_Q8_BLOCK + 4 * k;
            for (int h = 0; h < WT_Q8_PANEL / VL; h++) {
                vi w = (vi)K(ldf)((const float *)(const void *)(db + k * 64 + h * VL * 4));
                vf s = K(ldf)(sb + h * VL);
                for (int j = 0; j < 4 && c0 + j < in; j++) {
                    /* byte j, sign-extended: shifted up unsigned, down signed */
                    vi q = (vi)((K(vu))w << (24 - 8 * j)) >> 24;
                    K(stf)(out + (size_t)(c0 + j) * WT_P_ROWS + h * VL,
                           __builtin_convertvector(q, vf) * s);
                }
            }
        }
    }
}

/* Rows [lo, hi) of a Q8 product (lo a multiple of WT_Q8_PANEL) as panel_rows, each tile
 * dequantized into buf (PT · 16 · in floats) first. */
static void K(q8p_rows)(const smallmm_xmt *jb, int in, int lo, int hi, float *buf)
{
    int pg, trows;
    K(panel_shape)(jb->n, &pg, &trows);
    for (int r = lo; r < hi; r += trows) {
        int ny = hi - r < trows ? hi - r : trows;
        for (int p = 0; p * WT_P_ROWS < ny; p++) {
            int rp = r + p * WT_P_ROWS;
            K(q8_to_panel)((const int8_t *)jb->m.data + wtensor_q8_offset(in, rp, 0),
                           jb->m.scale + wtensor_q8_scale_index(in, rp, 0), in,
                           buf + (size_t)p * in * WT_P_ROWS);
        }
        K(panel_tile_rows)(jb, in, r, ny, buf, 0, pg);
    }
}

#undef PVPP
#undef PNV
#undef PGMAX

/* Rows [lo, hi) of one product; xop: X in the order its tiles read (transposed for the
 * outer-product tiles when smallmm_outer_group says so, the BF16 even/odd order for one
 * or two rows), NULL when X is read as it is. */
static void K(xmt_rows)(const smallmm_xmt *jb, const float *xop, float *tbuf, int in, int lo,
                        int hi)
{
    if (jb->m.type == WT_Q8) {
        if (tbuf && q8p_job(jb))
            K(q8p_rows)(jb, in, lo, hi, tbuf);
        else
            K(q8_rows)(jb, xop, in, lo, hi);
        return;
    }
    if (jb->m.type == WT_F32P || jb->m.type == WT_BF16P) {
        K(panel_rows)(jb, in, lo, hi);
        return;
    }
    if (xop && smallmm_outer_group(VL, jb->n, in)) {
        if (jb->m.type == WT_F32)
            K(outer_rows_t)(jb, xop, in, lo, hi, WT_F32);
        else
            K(outer_rows_t)(jb, xop, in, lo, hi, WT_BF16);
        return;
    }
    switch (jb->m.type) {
    case WT_F32:
        K(xmt_rows_t)(jb, NULL, in, lo, hi, WT_F32);
        break;
    default:
        K(xmt_rows_t)(jb, xop, in, lo, hi, WT_BF16);
        break;
    }
}

/* Rows [i, i + RB) of one ·Bᵀ product at columns [c, c + CV·VL): every load of Bᵀ feeds
 * the RB rows, and the RB·CV accumulators are independent chains. One row at a time kept
 * only 4 chains of r dependent FMAs in flight: 16 products of 4 rows × 1536 columns, in
 * cache, one thread, took 36 µs against 26 now (from memory, 2 threads: 59–62 against
 * 50–55). Each element still sums its r terms in order j = 0, 1, ..., so the result does
 * not depend on how the rows are grouped. The CV vectors of Bᵀ are pinned in registers:
 * left to itself GCC folded their loads into each of the RB rows' FMAs (RB·CV loads a
 * step instead of CV); 8 adapters' ·Bᵀ of 1536 columns, hot (1.2 MB), one thread: 4 rows
 * each 27.9 -> 19.0 µs, 8 rows 47.2 -> 29.5; bench_batch --quick, alternated, 3 pairs:
 * 64 rows on 8 adapters 76.4-81.4 -> 71.9-77.5 ms. */
static inline __attribute__((always_inline)) void
K(tb_block)(const smallmm_tb *jb, int i, int c, int RB, int CV)
{
    vf acc[TI][4];
    const float *t[TI];
    for (int q = 0; q < RB; q++) {
        t[q] = jb->t + (size_t)(i + q) * jb->ldt;
        for (int v = 0; v < CV; v++)
            acc[q][v] = K(ldf)(jb->y + (size_t)(i + q) * jb->out + c + v * VL);
    }
    const float *b = jb->bt + c;
    for (int j = 0; j < jb->r; j++, b += jb->out) {
        vf bv[4];
        for (int v = 0; v < CV; v++) {
            bv[v] = K(ldf)(b + v * VL);
#if KPIN
            if (RB > 1)  /* in a register: the comment above */
                __asm__("" : "+v"(bv[v]));
#endif
        }
        for (int q = 0; q < RB; q++) {
            vf tq = K(splat)(jb->alpha * t[q][j]);
            for (int v = 0; v < CV; v++)
                acc[q][v] += tq * bv[v];
        }
    }
    for (int q = 0; q < RB; q++)
        for (int v = 0; v < CV; v++)
            K(stf)(jb->y + (size_t)(i + q) * jb->out + c + v * VL, acc[q][v]);
}

/* Rows of one ·Bᵀ product at columns [c, c + CV·VL), TI at a time, then the rest. */
static inline __attribute__((always_inline)) void
K(tb_rows)(const smallmm_tb *jb, int c, int CV)
{
    int i = 0;
    for (; i + TI <= jb->n; i += TI)
        K(tb_block)(jb, i, c, TI, CV);
    switch (jb->n - i) {
#if TI > 3
    case 3:
        K(tb_block)(jb, i, c, 3, CV);
        break;
#endif
#if TI > 2
    case 2:
        K(tb_block)(jb, i, c, 2, CV);
        break;
#endif
    case 1:
        K(tb_block)(jb, i, c, 1, CV);
        break;
    default:
        break;
    }
}

/* Columns [c0, c1) of one ·Bᵀ product: 4·VL at a time, then VL, then a scalar tail. */
static void K(tb_cols)(const smallmm_tb *jb, int c0, int c1)
{
    int c = c0;
    for (; c + 4 * VL <= c1; c += 4 * VL)
        K(tb_rows)(jb, c, 4);
    for (; c + VL <= c1; c += VL)
        K(tb_rows)(jb, c, 1);
    for (; c < c1; c++)
        for (int i = 0; i < jb->n; i++) {
            const float *t = jb->t + (size_t)i * jb->ldt;
            float s = 0;
            for (int j = 0; j < jb->r; j++)
                s += jb->alpha * t[j] * jb->bt[(size_t)j * jb->out + c];
            jb->y[(size_t)i * jb->out + c] += s;
        }
}

#if KVNNI
static const smallmm_kernels K(kernels) = {K(xmt_rows), K(tb_cols), VL, K_EO_ROWS,
                                           K(q8v_prepare), 0};
#else
static const smallmm_kernels K(kernels) = {K(xmt_rows), K(tb_cols), VL, K_EO_ROWS, NULL, 0};
#endif
#undef K_EO_ROWS

#undef vf
#undef vi
#undef K
#undef KCAT
#undef KCAT2
/* the parameters too: the next family defines its own */
#undef KSUF
#undef VL
#undef TI
#undef TJ
#undef TJ2
#undef OJ
#undef OJ3
#undef PT
#undef PG
#undef PG2
#undef KPIN
#undef KDPBF16
#undef KVNNI
#undef KQ8
#undef KBC4
#undef KBC2
