/* vec16: 16-float vectors (GCC/Clang vector extensions) for the hot loops: one zmm with
 * AVX-512, two ymm with AVX2; and 8-float ones (one ymm) with a vector e^x for the
 * elementwise loops (SiLU, softmax, log-sum-exp). Explicit vector variables keep
 * accumulators in registers; loads and stores are unaligned and may alias any float. */
#ifndef LORAD_VEC16_H
#define LORAD_VEC16_H

/* Passing a 64-byte vector by value has no fixed ABI without AVX-512 (GCC warns); these
 * helpers are static inline, never called across objects. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

static inline v16 ld16(const float *p) { return *(const v16u *)p; }
static inline void st16(float *p, v16 v) { *(v16u *)p = v; }

/* 8-float vectors for elementwise code with comparisons and conversions, which GCC lowers
 * to scalar code on vectors wider than the machine's (v16 on AVX2): one ymm. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));
typedef int vi8 __attribute__((vector_size(32)));

static inline v8 ld8(const float *p) { return *(const v8u *)p; }
static inline void st8(float *p, v8 v) { *(v8u *)p = v; }

/* Lanes of a where mask is set (all ones), of b elsewhere. */
static inline v8 sel8(vi8 mask, v8 a, v8 b)
{
    return (v8)(((vi8)a & mask) | ((vi8)b & ~mask));
}

/* e^x lane by lane for the softmax/SiLU/log-sum-exp hot loops: Cephes-style range
 * reduction and a degree-6 polynomial, relative error ~2e-7 (below the fp32 rounding of
 * the sums it feeds). 0 below -87 (e^-87 ~ 1.6e-38, the smallest normal floats), e^88
 * above 88 (no overflow to infinity). Written on vectors rather than left to the
 * auto-vectorizer, which keeps a scalar loop around the float-to-int conversion unless FP
 * traps are declared off. */
static inline v8 exp8(v8 x)
{
    const v8 lo = (v8){0} - 87.0f, hi = (v8){0} + 88.0f;
    vi8 under = x < lo;
    x = sel8(under, lo, x);
    x = sel8(x > hi, hi, x);
    const float shift = 12582912.0f;  /* 1.5 · 2^23: adding it rounds to an integer */
    v8 n = (x * 1.44269504088896341f + shift) - shift;
    v8 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi8 scale = (__builtin_convertvector(n, vi8) + 127) << 23;
    return sel8(under, (v8){0}, p * (v8)scale);
}

#endif
