/* wtensor: conversions between the weight precisions. Load-time code: plain loops. */
#include "wtensor.h"

#include <math.h>

const char *wtensor_type_name(wt_type t)
{
    return t == WT_BF16 || t == WT_BF16P ? "bf16" : t == WT_Q8 ? "q8" : "f32";  /* F32P too */
}

int wtensor_type_parse(const char *s, wt_type *t)
{
    static const wt_type all[] = {WT_F32, WT_BF16, WT_Q8};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (strcmp(s, wtensor_type_name(all[i])) == 0) {
            *t = all[i];
            return 0;
        }
    return -1;
}

/* Rows of a Q8 matrix with its last panel's padding. */
static size_t q8_rows(int64_t rows)
{
    return (size_t)((rows + WT_Q8_PANEL - 1) / WT_Q8_PANEL * WT_Q8_PANEL);
}

size_t wtensor_data_bytes(wt_type t, int64_t rows, int64_t cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    if (t == WT_Q8)
        return q8_rows(rows) * (size_t)wtensor_q8_blocks(cols) * WT_Q8_BLOCK;
    if (t == WT_F32P)
        return (size_t)((rows + WT_P_ROWS - 1) / WT_P_ROWS * WT_P_ROWS) * (size_t)cols * 4;
    if (t == WT_BF16P)  /* an even number of columns */
        return (size_t)((rows + WT_P_ROWS - 1) / WT_P_ROWS * WT_P_ROWS) *
               (size_t)((cols + 1) & ~(int64_t)1) * 2;
    return t == WT_F32 ? n * 4 : n * 2;
}

size_t wtensor_scale_bytes(wt_type t, int64_t rows, int64_t cols)
{
    return t == WT_Q8 ? q8_rows(rows) * (size_t)wtensor_q8_blocks(cols) * sizeof(float) : 0;
}

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

size_t wtensor_arena_bytes(wt_type t, int64_t rows, int64_t cols)
{
    return align64(wtensor_data_bytes(t, rows, cols)) +
           align64(wtensor_scale_bytes(t, rows, cols));
}

wtensor wtensor_at(wt_type t, int64_t rows, int64_t cols, void *dst)
{
    float *scale = NULL;
    if (t == WT_Q8)
        scale = (float *)((char *)dst + align64(wtensor_data_bytes(t, rows, cols)));
    return (wtensor){t, dst, scale};
}

void wtensor_rows_f32(const wtensor *w, int64_t cols, int64_t r0, int64_t r1, float *dst)
{
    size_t n = (size_t)(r1 - r0) * (size_t)cols;
    switch (w->type) {
    case WT_F32:
        memcpy(dst, (const float *)w->data + (size_t)r0 * cols, n * sizeof(float));
        break;
    case WT_F32P: {
        const float *p = w->data;
        for (int64_t r = r0; r < r1; r++) {
            const float *pr = p + wtensor_f32p_offset(cols, r, 0);
            float *d = dst + (size_t)(r - r0) * cols;
            for (int64_t c = 0; c < cols; c++)
                d[c] = pr[(size_t)c * WT_P_ROWS];
        }
        break;
    }
    case WT_BF16P: {
        const uint16_t *p = w->data;
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *pr = p + wtensor_bf16p_offset(cols, r, 0);
            float *d = dst + (size_t)(r - r0) * cols;
            for (int64_t c = 0; c < cols; c++)  /* pairs of columns 32 apart */
                d[c] = wtensor_bf16_to_f32(pr[(size_t)(c >> 1) * 2 * WT_P_ROWS + (c & 1)]);
        }
        break;
    }
    case WT_BF16: {
        const uint16_t *h = (const uint16_t *)w->data + (size_t)r0 * cols;
        for (size_t i = 0; i < n; i++)
            dst[i] = wtensor_bf16_to_f32(h[i]);
        break;
    }
    case WT_Q8: {
        /* Row by row, block by block: a row's 32 weights of a block are 8 quads of 4
         * bytes, 64 bytes apart (wtensor.h), gathered into t and widened in one loop the
         * compiler vectorizes. Prefill converts the whole matrix once per chunk; an element
         * at a time, with its offset computed, this took 0.62 ns per weight (a tenth of a
         * 512-token prefill on the 135M shape), this way 0.08. */
        const int8_t *q = w->data;
        int64_t nb = wtensor_q8_blocks(cols);
        for (int64_t r = r0; r < r1; r++) {
            float *d = dst + (size_t)(r - r0) * cols;
            const int8_t *qr = q + wtensor_q8_offset(cols, r, 0);
            const float *sr = w->scale + wtensor_q8_scale_index(cols, r, 0);
            for (int64_t b = 0; b < nb; b++) {
                const int8_t *qb = qr + (size_t)b * (WT_Q8_PANEL * WT_Q8_BLOCK);
                float s = sr[(size_t)b * WT_Q8_PANEL], *db = d + b * WT_Q8_BLOCK;
                int8_t t[WT_Q8_BLOCK];
                for (int k = 0; k < WT_Q8_BLOCK / 4; k++)
                    memcpy(t + 4 * k, qb + k * (4 * WT_Q8_PANEL), 4);
                int64_t len = cols - b * WT_Q8_BLOCK;
                if (len >= WT_Q8_BLOCK) {
                    for (int e = 0; e < WT_Q8_BLOCK; e++)
                        db[e] = (float)t[e] * s;
                } else {
                    for (int e = 0; e < len; e++)
                        db[e] = (float)t[e] * s;
                }
            }
        }
        break;
    }
    }
}

void wtensor_from_f32(wt_type t, const float *src, int64_t rows, int64_t cols, void *data,
                      float *scale)
{
    size_t n = (size_t)rows * (size_t)cols;
    switch (t) {
    case WT_F32:
        memcpy(data, src, n * sizeof(float));
        break;
    case WT_F32P: {
        float *p = data;
        /* the last panel's padding rows: zeros */
        size_t last = (size_t)(rows / WT_P_ROWS) * WT_P_ROWS * (size_t)cols;
        memset(p + last, 0, wtensor_data_bytes(t, rows, cols) - last * sizeof(float));
        for (int64_t p0 = 0; p0 < rows; p0 += WT_P_ROWS) {  /* panel by panel */
            int nr = rows - p0 < WT_P_ROWS ? (int)(rows - p0) : WT_P_ROWS;
            float *pp = p + (size_t)p0 * cols;
            const float *sp = src + (size_t)p0 * cols;
            for (int64_t c = 0; c < cols; c++)
                for (int r = 0; r < nr; r++)
                    pp[(size_t)c * WT_P_ROWS + r] = sp[(size_t)r * cols + c];
        }
        break;
    }
    case WT_BF16P: {
        uint16_t *p = data;
        /* the padding (rows of the last panel, the column that makes them even): zeros */
        memset(p, 0, wtensor_data_bytes(t, rows, cols));
        int64_t ce = (cols + 1) & ~(int64_t)1;
        for (int64_t p0 = 0; p0 < rows; p0 += WT_P_ROWS) {  /* panel by panel, in order */
            int nr = rows - p0 < WT_P_ROWS ? (int)(rows - p0) : WT_P_ROWS;
            uint16_t *pp = p + (size_t)p0 * ce;
            const float *sp = src + (size_t)p0 * cols;
            for (int64_t c = 0; c < cols; c++) {
                uint16_t *o = pp + (size_t)(c & ~(int64_t)1) * WT_P_ROWS + (c & 1);
                for (int r = 0; r < nr; r++)
                    o[2 * r] = wtensor_bf16_round(sp[(size_t)r * cols + c]);
            }
        }
        break;
    }
    case WT_BF16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)data)[i] = wtensor_bf16_round(src[i]);
        break;
    case WT_Q8: {
        int64_t nb = wtensor_q8_blocks(cols);
        memset(data, 0, wtensor_data_bytes(t, rows, cols));     /* the padding */
        memset(scale, 0, wtensor_scale_bytes(t, rows, cols));
        int8_t *q = data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < nb; b++) {
                int64_t c0 = b * WT_Q8_BLOCK;
                const float *x = src + (size_t)r * cols + c0;
                int len = cols - c0 < WT_Q8_BLOCK ? (int)(cols - c0) : WT_Q8_BLOCK;
                float amax = 0;
                for (int i = 0; i < len; i++)
                    amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
                float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
                scale[wtensor_q8_scale_index(cols, r, c0)] = d;
                for (int i = 0; i < len; i++) {   /* |x·id| <= 127 up to rounding: clamp */
                    float v = nearbyintf(x[i] * id);
                    if (!(v >= -127.0f))     /* below the range, or NaN (then 0) */
                        v = v < 0 ? -127.0f : 0.0f;
                    else if (v > 127.0f)
                        v = 127.0f;
                    q[wtensor_q8_offset(cols, r, c0 + i)] = (int8_t)v;
                }
            }
        break;
    }
    }
}

void wtensor_q8_pack(const int8_t *q, const float *s, int64_t rows, int64_t cols, void *data,
                     float *scale)
{
    int64_t nb = wtensor_q8_blocks(cols);
    memset(data, 0, wtensor_data_bytes(WT_Q8, rows, cols));
    memset(scale, 0, wtensor_scale_bytes(WT_Q8, rows, cols));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            ((int8_t *)data)[wtensor_q8_offset(cols, r, c)] = q[(size_t)r * cols + c];
            scale[wtensor_q8_scale_index(cols, r, c)] = s[(size_t)r * nb + c / WT_Q8_BLOCK];
        }
}
