/* wtensor: a weight matrix in the precision the model holds it — F32, BF16 (the upper half
 * of an F32, as Hugging Face checkpoints store it), or Q8 (8-bit integers with one F32
 * scale per block of 32 consecutive elements of a row, symmetric, as llama.cpp's Q8_0) —
 * and the conversions between them. Decode reads every weight once per token, so the
 * bytes per weight (4, 2, 1.125) set its speed; activations and sums stay F32. */
#ifndef LORAD_WTENSOR_H
#define LORAD_WTENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* WT_F32P: F32 in panels of WT_P_ROWS rows, the layout a model holds its F32 matrices in
 * (model.c); WT_F32 is row-major (adapters' A, tests). Both are the precision "f32".
 * WT_BF16P: BF16 in the same panels, the layout a model holds its BF16 matrices in; WT_BF16
 * is row-major (tests, the kernels' own cases). Both are the precision "bf16". */
typedef enum { WT_F32, WT_BF16, WT_Q8, WT_F32P, WT_BF16P } wt_type;

/* Rows of an F32P panel. An F32P matrix is stored in panels of 16 rows (the last one
 * padded with zero rows); in panel p the 16 rows' elements of column c are 16 consecutive
 * floats at (p·cols + c)·16. So one 64-byte load is one element of 16 rows of M, which
 * each row of X meets as a broadcast: smallmm's tiles keep rows of X × panels of
 * accumulators with no reduction at the end, and stream each panel front to back, where
 * rows one after the other need a tree of folds at the end of every tile and one short
 * stream per row (bench_panel: a decode step's down products 18-38% faster at 1-64 rows of
 * X, gate and up 8-21% at 1-12 rows; docs/benchmarks.md). */
#define WT_P_ROWS 16

/* Offset in floats, in an F32P matrix's data, of the element at row r, column c. */
static inline size_t wtensor_f32p_offset(int64_t cols, int64_t r, int64_t c)
{
    return (size_t)((r / WT_P_ROWS * cols + c) * WT_P_ROWS + r % WT_P_ROWS);
}

/* Offset in uint16_t, in a BF16P matrix's data, of the element at row r, column c. BF16P
 * panels are F32P's with the columns in pairs: a panel's columns c and c + 1 (c even) are
 * 32 consecutive BF16, row r's two at 2·(r mod 16) and + 1 — 16 32-bit lanes, one a row,
 * each the two weights, taken as F32 with a shift (c) and an AND (c + 1); the columns are
 * padded with a zero column to an even number. So a BF16 product streams each panel front
 * to back as F32P, each 64-byte load two elements of 16 rows that every row of X meets as
 * two broadcasts, where BF16 rows one after the other met each weight with few rows of X
 * (bench_batch --weights bf16, 64 rows: 56% of the bound; docs/benchmarks.md). */
static inline size_t wtensor_bf16p_offset(int64_t cols, int64_t r, int64_t c)
{
    int64_t ce = (cols + 1) & ~(int64_t)1;
    return (size_t)(((r / WT_P_ROWS) * ce + (c & ~(int64_t)1)) * WT_P_ROWS +
                    (r % WT_P_ROWS) * 2 + (c & 1));
}

/* Elements per Q8 scale. 32 as llama.cpp's Q8_0: a scale costs 4 bytes per 32 (12.5%
 * more bytes than the integers alone); blocks of 64 would save 6% of the bytes but let one
 * outlier coarsen twice as many weights. */
#define WT_Q8_BLOCK 32

/* Rows of a Q8 panel. A Q8 matrix is stored in panels of 16 rows (the last one padded with
 * zero rows), its columns padded with zeros to whole blocks of 32. Panel p holds its blocks
 * one after the other, 512 bytes each; in block b, the 64 bytes at 64·k hold columns
 * 32·b + 4·k .. + 3 of the panel's 16 rows, row r's four at bytes 4·r .. 4·r + 3. The
 * scales of panel p, block b are 16 consecutive floats (one per row, 0 for a padding row).
 * So a product streams the matrix front to back as one sequence of bytes, and 16 bytes
 * widened to 16 floats are 4 weights of 4 rows that meet the same 4 elements of X: each
 * lane sums products of one row, a block's sums take their rows' scales in one vector, and
 * only at the end of a panel are each row's 4 lanes added (smallmm_kern.h, q8_panel). Rows
 * one after the other needed a tree of folds at the end of every tile of 8 rows and 8
 * interleaved streams. One thread in cache (Zen 5): 49–52 GB/s against 30–44; a Q8 decode
 * step of the 135M shape, bound by memory, 3–6% faster (paired medians). */
#define WT_Q8_PANEL 16

typedef struct {
    wt_type type;
    const void *data;     /* F32 / BF16: [rows, cols] row-major, float or uint16_t (BF16
                           * bits); Q8: int8_t in panels (WT_Q8_PANEL); F32P / BF16P: float
                           * / uint16_t in panels (WT_P_ROWS) */
    const float *scale;   /* Q8: the blocks' scales in panels; NULL otherwise */
} wtensor;

/* Scales per row of a Q8 matrix (the last block of a row may be shorter than 32: its
 * missing columns are stored as zeros). */
static inline int64_t wtensor_q8_blocks(int64_t cols)
{
    return (cols + WT_Q8_BLOCK - 1) / WT_Q8_BLOCK;
}

/* Offset in a Q8 matrix's data of the weight at row r, column c, and in its scales of the
 * scale of that weight's block. */
static inline size_t wtensor_q8_offset(int64_t cols, int64_t r, int64_t c)
{
    int64_t nb = wtensor_q8_blocks(cols);
    return (size_t)((r / WT_Q8_PANEL * nb + c / WT_Q8_BLOCK) * WT_Q8_PANEL * WT_Q8_BLOCK +
                    c % WT_Q8_BLOCK / 4 * (4 * WT_Q8_PANEL) + r % WT_Q8_PANEL * 4 + c % 4);
}

static inline size_t wtensor_q8_scale_index(int64_t cols, int64_t r, int64_t c)
{
    return (size_t)((r / WT_Q8_PANEL * wtensor_q8_blocks(cols) + c / WT_Q8_BLOCK) *
                        WT_Q8_PANEL + r % WT_Q8_PANEL);
}

/* BF16 of f, rounded to nearest even (NaN stays a quiet NaN), as torch's .to(bfloat16). */
static inline uint16_t wtensor_bf16_round(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static inline float wtensor_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* "f32" (WT_F32 and WT_F32P), "bf16", "q8". */
const char *wtensor_type_name(wt_type t);

/* Parses "f32" | "bf16" | "q8" into *t; -1 for anything else. */
int wtensor_type_parse(const char *s, wt_type *t);

/* Bytes of the integers / floats, then of the scales, of a [rows, cols] matrix of type t
 * (Q8, F32P: whole panels and blocks, padding included; rows [r0, ...) of a matrix start at
 * wtensor_data_bytes(t, r0, cols) and scale + wtensor_scale_bytes(t, r0, cols) / 4 when r0
 * is a multiple of the panel's rows, 16 for both). */
size_t wtensor_data_bytes(wt_type t, int64_t rows, int64_t cols);
size_t wtensor_scale_bytes(wt_type t, int64_t rows, int64_t cols);

/* Bytes a [rows, cols] matrix of type t takes in an arena of weights: its data, then (Q8)
 * its scales, each rounded up to 64 bytes so the next one starts on a cache line. */
size_t wtensor_arena_bytes(wt_type t, int64_t rows, int64_t cols);

/* The [rows, cols] matrix of type t laid out at dst (wtensor_arena_bytes of room, 64-byte
 * aligned) as wtensor_arena_bytes counts it: data at dst, Q8 scales after it. */
wtensor wtensor_at(wt_type t, int64_t rows, int64_t cols, void *dst);

/* dst [r1 - r0, cols] = rows [r0, r1) of w as F32 (a Q8 element is q · scale, one F32
 * product). Thread-safe. */
void wtensor_rows_f32(const wtensor *w, int64_t cols, int64_t r0, int64_t r1, float *dst);

/* Writes src [rows, cols] (F32) as type t into data (wtensor_data_bytes) and, for Q8, scale
 * (wtensor_scale_bytes): BF16 rounds to nearest even; Q8 takes per block d = max|x| / 127
 * and q = round-half-even(x · (1/d)) (0 for an all-zero block), padding included.
 * Thread-safe. */
void wtensor_from_f32(wt_type t, const float *src, int64_t rows, int64_t cols, void *data,
                      float *scale);

/* Lays out a Q8 matrix given as q [rows, cols] and scales [rows, wtensor_q8_blocks(cols)],
 * both row-major, in panels into data and scale (tests; wtensor_from_f32 for real weights). */
void wtensor_q8_pack(const int8_t *q, const float *s, int64_t rows, int64_t cols, void *data,
                     float *scale);

#endif
