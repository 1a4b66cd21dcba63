/* wtensor: conversions between the weight precisions. Load-time code: plain loops. */
#include "wtensor.h"

#include <math.h>

const char *wtensor_type_name(wt_type t)
{
    return t == WT_BF16 ? "bf16" : t == WT_Q8 ? "q8" : "f32";
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

size_t wtensor_data_bytes(wt_type t, int64_t rows, int64_t cols)
{
    size_t n = (size_t)rows * (size_t)cols;
    return t == WT_F32 ? n * 4 : t == WT_BF16 ? n * 2 : n;
}

size_t wtensor_scale_bytes(wt_type t, int64_t rows, int64_t cols)
{
    return t == WT_Q8 ? (size_t)rows * (size_t)wtensor_q8_blocks(cols) * sizeof(float) : 0;
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
    case WT_BF16: {
        const uint16_t *h = (const uint16_t *)w->data + (size_t)r0 * cols;
        for (size_t i = 0; i < n; i++)
            dst[i] = wtensor_bf16_to_f32(h[i]);
        break;
    }
    case WT_Q8: {
        int64_t nb = wtensor_q8_blocks(cols);
        for (int64_t r = r0; r < r1; r++) {
            const int8_t *q = (const int8_t *)w->data + (size_t)r * cols;
            const float *s = w->scale + (size_t)r * nb;
            float *d = dst + (size_t)(r - r0) * cols;
            for (int64_t e = 0; e < cols; e++)
                d[e] = (float)q[e] * s[e / WT_Q8_BLOCK];
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
    case WT_BF16:
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)data)[i] = wtensor_bf16_round(src[i]);
        break;
    case WT_Q8: {
        int64_t nb = wtensor_q8_blocks(cols);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < nb; b++) {
                const float *x = src + (size_t)r * cols + b * WT_Q8_BLOCK;
                int8_t *q = (int8_t *)data + (size_t)r * cols + b * WT_Q8_BLOCK;
                int len = cols - b * WT_Q8_BLOCK < WT_Q8_BLOCK ? (int)(cols - b * WT_Q8_BLOCK)
                                                               : WT_Q8_BLOCK;
                float amax = 0;
                for (int i = 0; i < len; i++)
                    amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
                float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
                scale[(size_t)r * nb + b] = d;
                for (int i = 0; i < len; i++) {   /* |x·id| <= 127 up to rounding: clamp */
                    float v = nearbyintf(x[i] * id);
                    if (!(v >= -127.0f))     /* below the range, or NaN (then 0) */
                        v = v < 0 ? -127.0f : 0.0f;
                    else if (v > 127.0f)
                        v = 127.0f;
                    q[i] = (int8_t)v;
                }
            }
        break;
    }
    }
}
