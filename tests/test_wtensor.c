/* Tests for core/wtensor: the weight precisions' conversions against definitions written
 * here — BF16 rounding as "the nearest BF16, ties to the even one" found by comparing
 * the two neighbours in double; Q8 by its properties (per block of 32: scale = max|x| /
 * 127, every q in [-127, 127], |q·scale − x| <= scale / 2, the largest element at ±127) —
 * and widening back to F32. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/wtensor.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rand32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* The BF16 nearest to f (finite, not near the overflow edge): of the two BF16 values
 * around it — its upper half, and one unit further from zero — the closer in exact
 * (double) arithmetic, the even one on a tie. */
static uint16_t nearest_bf16(float f)
{
    uint16_t lo = (uint16_t)(f_bits(f) >> 16), hi = (uint16_t)(lo + 1);
    double dl = fabs((double)f - bits_f((uint32_t)lo << 16));
    double dh = fabs((double)f - bits_f((uint32_t)hi << 16));
    if (dl != dh)
        return dl < dh ? lo : hi;
    return (lo & 1) ? hi : lo;
}

START_TEST(test_bf16_rounds_to_nearest_even)
{
    /* random bit patterns of finite floats below the largest BF16, plus exact ties */
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rand32();
        if (i % 4 == 0)
            u = (u & 0xffff0000u) | 0x8000u;          /* exactly halfway */
        float f = bits_f(u);
        if (!isfinite(f) || fabsf(f) > 3.0e38f)
            continue;
        uint16_t got = wtensor_bf16_round(f), want = nearest_bf16(f);
        ck_assert_msg(got == want, "bf16(%a) = 0x%04x, nearest is 0x%04x", (double)f, got,
                      want);
        ck_assert_uint_eq(f_bits(wtensor_bf16_to_f32(got)), (uint32_t)got << 16);
    }
    /* the edges: infinities stay, NaN stays NaN (not Inf), the largest float rounds up to
     * Inf as torch does, -0.0 keeps its sign */
    ck_assert_uint_eq(wtensor_bf16_round(INFINITY), 0x7f80);
    ck_assert_uint_eq(wtensor_bf16_round(-INFINITY), 0xff80);
    ck_assert(isnan(wtensor_bf16_to_f32(wtensor_bf16_round(NAN))));
    ck_assert(isnan(wtensor_bf16_to_f32(wtensor_bf16_round(bits_f(0x7f800001u)))));
    ck_assert_uint_eq(wtensor_bf16_round(3.4028235e38f), 0x7f80);
    ck_assert_uint_eq(wtensor_bf16_round(-0.0f), 0x8000);
}
END_TEST

/* Quantizes [rows, cols] random values (with some all-zero blocks and outliers) and checks
 * every block's properties and the widening back. */
static void check_q8(int rows, int cols)
{
    size_t n = (size_t)rows * cols;
    int nb = (int)wtensor_q8_blocks(cols);
    float *x = malloc(sizeof(float) * (n ? n : 1)), *back = malloc(sizeof(float) * (n ? n : 1));
    /* panels of 16 rows, blocks of 32 columns, padding included */
    size_t prow = (size_t)(rows + 15) / 16 * 16;
    int8_t *q = malloc(prow * nb * 32 + 1);
    float *scale = malloc(sizeof(float) * prow * nb + 1);
    ck_assert(x && back && q && scale);
    ck_assert_uint_eq(wtensor_data_bytes(WT_Q8, rows, cols), prow * nb * 32);
    ck_assert_uint_eq(wtensor_scale_bytes(WT_Q8, rows, cols), sizeof(float) * prow * nb);
    for (size_t i = 0; i < n; i++) {
        x[i] = ((int)(rand32() % 20001) - 10000) / 7919.0f;
        if (i % 97 == 0)
            x[i] *= 50;               /* an outlier coarsens its block only */
    }
    for (int c = 0; c < cols && c < 32; c++)
        x[c] = 0;                     /* row 0's first block: all zero */
    wtensor_from_f32(WT_Q8, x, rows, cols, q, scale);
    wtensor w = {WT_Q8, q, scale};
    wtensor_rows_f32(&w, cols, 0, rows, back);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < nb; b++) {
            int c0 = b * 32, c1 = c0 + 32 < cols ? c0 + 32 : cols;
            double amax = 0;
            for (int c = c0; c < c1; c++)
                amax = fmax(amax, fabs(x[(size_t)r * cols + c]));
            float s = scale[wtensor_q8_scale_index(cols, r, c0)];
            /* the layout, by its definition in wtensor.h */
            ck_assert_uint_eq(wtensor_q8_scale_index(cols, r, c0),
                              ((size_t)(r / 16) * nb + b) * 16 + r % 16);
            ck_assert_msg(fabs(s - amax / 127) <= 1e-6 * amax, "row %d block %d: scale %g, "
                          "max|x| / 127 = %g", r, b, (double)s, amax / 127);
            int at_max = 0;
            for (int c = c0; c < c1; c++) {
                size_t i = (size_t)r * cols + c, o = wtensor_q8_offset(cols, r, c);
                ck_assert_uint_eq(o, ((size_t)(r / 16) * nb + b) * 512 + (c % 32) / 4 * 64 +
                                         (size_t)(r % 16) * 4 + c % 4);
                int v = q[o];
                ck_assert(v >= -127 && v <= 127);
                ck_assert_msg(fabs((double)v * s - x[i]) <= s * 0.5 * (1 + 1e-5) + 1e-30,
                              "row %d col %d: %g quantized to %d × %g", r, c, (double)x[i],
                              v, (double)s);
                ck_assert_uint_eq(f_bits(back[i]), f_bits((float)v * s));
                at_max |= amax > 0 && fabs(x[i]) == amax && abs(v) == 127;
            }
            for (int c = c1; c < (b + 1) * 32; c++)   /* the block's padding */
                ck_assert_int_eq(q[wtensor_q8_offset(cols, r, c)], 0);
            ck_assert_msg(amax == 0 || at_max, "row %d block %d: max|x| not at ±127", r, b);
        }
    /* a range of rows that starts and ends inside panels (prefill converts blocks of rows) */
    for (int r0 = 1; r0 < rows; r0 += 17) {
        int r1 = r0 + (rows - r0 + 1) / 2;
        float *part = malloc(sizeof(float) * (size_t)(r1 - r0) * cols);
        ck_assert(part);
        wtensor_rows_f32(&w, cols, r0, r1, part);
        ck_assert(memcmp(part, back + (size_t)r0 * cols,
                         sizeof(float) * (size_t)(r1 - r0) * cols) == 0);
        free(part);
    }
    for (int r = rows; r < (int)prow; r++)   /* the last panel's padding rows */
        for (int c = 0; c < nb * 32; c++) {
            ck_assert_int_eq(q[wtensor_q8_offset(cols, r, c)], 0);
            ck_assert(scale[wtensor_q8_scale_index(cols, r, c)] == 0);
        }
    free(x);
    free(back);
    free(q);
    free(scale);
}

START_TEST(test_q8_blocks_hold_their_values_to_half_a_step)
{
    /* whole blocks, a short last block, a row shorter than one block */
    check_q8(5, 64);
    check_q8(3, 100);
    check_q8(7, 31);
    check_q8(37, 70);   /* panels: two whole, one padded */
    check_q8(2, 1);
}
END_TEST

START_TEST(test_bf16_matrix_round_trip_and_rows)
{
    enum { ROWS = 6, COLS = 37 };
    float x[ROWS * COLS], back[ROWS * COLS];
    uint16_t h[ROWS * COLS];
    for (int i = 0; i < ROWS * COLS; i++)
        x[i] = ((int)(rand32() % 2001) - 1000) / 337.0f;
    wtensor_from_f32(WT_BF16, x, ROWS, COLS, h, NULL);
    wtensor w = {WT_BF16, h, NULL};
    /* rows [2, 5) only: the others stay as they were */
    for (int i = 0; i < ROWS * COLS; i++)
        back[i] = -7.0f;
    wtensor_rows_f32(&w, COLS, 2, 5, back);
    for (int i = 0; i < ROWS * COLS; i++) {
        if (i >= 3 * COLS) {
            ck_assert(back[i] == -7.0f);
            continue;
        }
        float want = bits_f((uint32_t)nearest_bf16(x[i + 2 * COLS]) << 16);
        ck_assert_uint_eq(f_bits(back[i]), f_bits(want));
    }
    ck_assert_uint_eq(wtensor_data_bytes(WT_BF16, ROWS, COLS), sizeof h);
    ck_assert_uint_eq(wtensor_scale_bytes(WT_BF16, ROWS, COLS), 0);
}
END_TEST

/* F32 in panels of 16 rows: every element where the layout puts it (element (r, c) of
 * panel r / 16 at float (r / 16 · cols + c) · 16 + r % 16, written out here), the last
 * panel's padding rows zero, whole panels in the size, any range of rows back bit for bit
 * — for row counts around the panel's 16 and column counts of 1 and odd. */
START_TEST(test_f32_panels_hold_every_element_and_give_rows_back)
{
    static const int rows_of[] = {1, 15, 16, 17, 33}, cols_of[] = {1, 3, 37};
    for (size_t a = 0; a < sizeof rows_of / sizeof *rows_of; a++)
        for (size_t b = 0; b < sizeof cols_of / sizeof *cols_of; b++) {
            int rows = rows_of[a], cols = cols_of[b], padded = (rows + 15) / 16 * 16;
            size_t bytes = wtensor_data_bytes(WT_F32P, rows, cols);
            ck_assert_uint_eq(bytes, sizeof(float) * (size_t)padded * cols);
            ck_assert_uint_eq(wtensor_scale_bytes(WT_F32P, rows, cols), 0);
            float *x = malloc(sizeof(float) * rows * cols), *p = malloc(bytes),
                  *back = malloc(sizeof(float) * rows * cols);
            ck_assert(x && p && back);
            for (int i = 0; i < rows * cols; i++)
                x[i] = bits_f(rand32());   /* any bits: NaNs and -0 included */
            memset(p, 0xA5, bytes);
            wtensor_from_f32(WT_F32P, x, rows, cols, p, NULL);
            for (int r = 0; r < padded; r++)
                for (int c = 0; c < cols; c++) {
                    float got = p[((size_t)(r / 16) * cols + c) * 16 + r % 16];
                    ck_assert_uint_eq(f_bits(got), r < rows ? f_bits(x[r * cols + c]) : 0);
                }
            wtensor w = wtensor_at(WT_F32P, rows, cols, p);
            ck_assert_ptr_null(w.scale);
            for (int r0 = 0; r0 < rows; r0 += 7) {
                int r1 = r0 + 9 < rows ? r0 + 9 : rows;
                wtensor_rows_f32(&w, cols, r0, r1, back);
                ck_assert(memcmp(back, x + r0 * cols, sizeof(float) * (r1 - r0) * cols) == 0);
            }
            free(x);
            free(p);
            free(back);
        }
    ck_assert_str_eq(wtensor_type_name(WT_F32P), "f32");
}
END_TEST

/* BF16 in panels with the columns in pairs: every element's bits where the layout puts
 * them (uint16_t (r / 16 · ce + c / 2 · 2) · 16 + r % 16 · 2 + c % 2, ce the columns rounded
 * up to even, written out here), the padding (rows; the odd column) zero, whole panels of
 * ce 2-byte elements in the size, any range of rows back widened bit for bit. */
START_TEST(test_bf16_panels_hold_every_element_and_give_rows_back)
{
    static const int rows_of[] = {1, 15, 16, 17, 33}, cols_of[] = {1, 3, 37};
    for (size_t a = 0; a < sizeof rows_of / sizeof *rows_of; a++)
        for (size_t b = 0; b < sizeof cols_of / sizeof *cols_of; b++) {
            int rows = rows_of[a], cols = cols_of[b], padded = (rows + 15) / 16 * 16;
            int ce = (cols + 1) / 2 * 2;
            size_t bytes = wtensor_data_bytes(WT_BF16P, rows, cols);
            ck_assert_uint_eq(bytes, sizeof(uint16_t) * (size_t)padded * ce);
            ck_assert_uint_eq(wtensor_scale_bytes(WT_BF16P, rows, cols), 0);
            float *x = malloc(sizeof(float) * rows * cols),
                  *back = malloc(sizeof(float) * rows * cols);
            uint16_t *p = malloc(bytes);
            ck_assert(x && p && back);
            for (int i = 0; i < rows * cols; i++)  /* BF16 values: exact in and out */
                x[i] = bits_f(rand32() & 0xFFFF0000u);
            memset(p, 0xA5, bytes);
            wtensor_from_f32(WT_BF16P, x, rows, cols, p, NULL);
            for (int r = 0; r < padded; r++)
                for (int c = 0; c < ce; c++) {
                    uint32_t got = p[((size_t)(r / 16) * ce + c / 2 * 2) * 16 + r % 16 * 2 +
                                     c % 2];
                    uint32_t want = r < rows && c < cols ? f_bits(x[r * cols + c]) >> 16 : 0;
                    if (r < rows && c < cols && x[r * cols + c] != x[r * cols + c])
                        continue;  /* NaN: any NaN will do (wtensor_bf16_round) */
                    ck_assert_uint_eq(got, want);
                }
            wtensor w = wtensor_at(WT_BF16P, rows, cols, p);
            ck_assert_ptr_null(w.scale);
            for (int r0 = 0; r0 < rows; r0 += 7) {
                int r1 = r0 + 9 < rows ? r0 + 9 : rows;
                wtensor_rows_f32(&w, cols, r0, r1, back);
                for (int i = 0; i < (r1 - r0) * cols; i++)
                    if (x[r0 * cols + i] == x[r0 * cols + i])
                        ck_assert_uint_eq(f_bits(back[i]), f_bits(x[r0 * cols + i]));
            }
            free(x);
            free(p);
            free(back);
        }
    ck_assert_str_eq(wtensor_type_name(WT_BF16P), "bf16");
}
END_TEST

START_TEST(test_type_names_parse_and_refuse)
{
    static const char *const names[] = {"f32", "bf16", "q8"};
    for (int t = WT_F32; t <= WT_Q8; t++) {
        wt_type got;
        ck_assert_str_eq(wtensor_type_name((wt_type)t), names[t]);
        ck_assert_int_eq(wtensor_type_parse(names[t], &got), 0);
        ck_assert_int_eq(got, t);
    }
    static const char *const bad[] = {"", "F32", "fp32", "q4", "bf16 ", "int8"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        wt_type got = WT_Q8;
        ck_assert_int_eq(wtensor_type_parse(bad[i], &got), -1);
    }
}
END_TEST

static Suite *wtensor_suite(void)
{
    Suite *s = suite_create("wtensor");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_bf16_rounds_to_nearest_even);
    tcase_add_test(core, test_q8_blocks_hold_their_values_to_half_a_step);
    tcase_add_test(core, test_bf16_matrix_round_trip_and_rows);
    tcase_add_test(core, test_f32_panels_hold_every_element_and_give_rows_back);
    tcase_add_test(core, test_bf16_panels_hold_every_element_and_give_rows_back);
    suite_add_tcase(s, core);
    TCase *limits = tcase_create("limits");
    tcase_add_test(limits, test_type_names_parse_and_refuse);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(wtensor_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
