/* vec16: 16-float vectors (GCC/Clang vector extensions) for the hot loops: one zmm with
 * AVX-512, two ymm with AVX2. Explicit vector variables keep accumulators in registers;
 * loads and stores are unaligned and may alias any float. */
#ifndef LORAD_VEC16_H
#define LORAD_VEC16_H

/* Passing a 64-byte vector by value has no fixed ABI without AVX-512 (GCC warns); these
 * helpers are static inline, never called across objects. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

static inline v16 ld16(const float *p) { return *(const v16u *)p; }
static inline void st16(float *p, v16 v) { *(v16u *)p = v; }

#endif
