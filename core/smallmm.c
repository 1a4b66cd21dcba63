/* smallmm: the decode-sized products, as two kinds of parallel pass over the pool, with
 * kernels for the best instruction set this CPU has (chosen at run time, so one binary
 * runs on any x86-64 and uses AVX-512 where it is there). */
#include "smallmm.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pool.h"

/* One instruction set's kernels: rows [lo, hi) of an X·Mᵀ product (xeo: X reordered for
 * BF16 weights, see eo_prepare; NULL for other weights or when there is none); columns
 * [c0, c1) of a ·Bᵀ product. eo_block: the block of the BF16 even/odd order (2 vectors);
 * eo_rows: BF16 products of up to this many rows of X read that order. */
typedef struct {
    void (*xmt_rows)(const smallmm_xmt *jb, const float *xeo, int in, int lo, int hi);
    void (*tb_cols)(const smallmm_tb *jb, int c0, int c1);
    int eo_block, eo_rows;
} smallmm_kernels;

/* The kernels, compiled four times: AVX-512, AVX-512 with BF16 dot products (the same
 * kernels but for BF16 weights times one or two rows), AVX2, portable. Tiles: 4×4 on
 * AVX-512 (16 accumulators of its 32 registers; 4×6 was ~10% slower: 31 live registers
 * leave the loop no slack), 2×4 with 16 registers. The portable build uses whatever the
 * compiler's baseline gives (SSE2 on x86-64, NEON on arm64) for the same 8-float vectors. */
#if defined(__x86_64__) && (defined(__GNUC__) && !defined(__clang__))
#define SMALLMM_X86 1
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")
#define KSUF avx512
#define VL 16
#define TI 4
#define TJ 4
#define TJ2 8
#define KPIN 1
#define KQ8(m, d) ((vf_avx512)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(                   \
    _mm_loadu_si128((const __m128i *)((const int8_t *)(m) + (d))))))
#include "smallmm_kern.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,bmi2")
#define KSUF avx512bf16
#define VL 16
#define TI 4
#define TJ 4
#define TJ2 8
#define KPIN 1
#define KDPBF16 1
#define KQ8(m, d) ((vf_avx512bf16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(               \
    _mm_loadu_si128((const __m128i *)((const int8_t *)(m) + (d))))))
#include "smallmm_kern.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#define KSUF avx2
#define VL 8
#define TI 2
#define TJ 4
#define TJ2 4
#define KPIN 1
#define KQ8(m, d) ((vf_avx2)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(                      \
    _mm_loadl_epi64((const __m128i *)((const int8_t *)(m) + (d))))))
#include "smallmm_kern.h"
#pragma GCC pop_options
#endif

typedef float vf8_portable __attribute__((vector_size(32)));

static inline vf8_portable q8_portable(const int8_t *q)
{
    return (vf8_portable){q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]};
}

#define KSUF portable
#define VL 8
#define TI 2
#define TJ 4
#define TJ2 4
#define KQ8(m, d) q8_portable((const int8_t *)(m) + (d))
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
#else
    [SMALLMM_AVX2] = {"avx2", NULL},
    [SMALLMM_AVX512] = {"avx512", NULL},
    [SMALLMM_AVX512BF16] = {"avx512bf16", NULL},
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
    if (isa == SMALLMM_AVX512BF16)
        return avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    return 0;
}

const char *smallmm_isa_name(smallmm_isa isa)
{
    return isa >= SMALLMM_PORTABLE && isa <= SMALLMM_AVX512BF16 ? isas[isa].name : "auto";
}

int smallmm_isa_parse(const char *s, smallmm_isa *isa)
{
    for (int i = SMALLMM_PORTABLE; i <= SMALLMM_AVX512BF16; i++)
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
        log_warn("LORAD_ISA=%s: not one of portable, avx2, avx512, avx512bf16 that this CPU "
                 "runs; choosing the best one", env);
    }
    for (int i = SMALLMM_AVX512BF16; i > SMALLMM_PORTABLE; i--)
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

typedef struct {
    const smallmm_kernels *k;
    const smallmm_xmt *jobs;
    const float *const *xeo;  /* per job: X in the BF16 even/odd order or NULL (all NULL: NULL) */
    int n_jobs, in, n_tasks;
    int64_t rows;  /* Σ rows: task k takes global rows [rows·k/n_tasks, rows·(k+1)/n_tasks) */
} xmt_pass;

static void xmt_task(void *ctx, int task, int thread)
{
    (void)thread;
    const xmt_pass *ps = ctx;
    int64_t g0 = ps->rows * task / ps->n_tasks, g1 = ps->rows * (task + 1) / ps->n_tasks;
    int64_t base = 0;  /* global index of the current product's first row */
    for (int k = 0; k < ps->n_jobs && base < g1; base += ps->jobs[k].rows, k++) {
        int64_t lo = g0 - base, hi = g1 - base;
        if (hi <= 0 || lo >= ps->jobs[k].rows)
            continue;
        ps->k->xmt_rows(&ps->jobs[k], ps->xeo ? ps->xeo[k] : NULL, ps->in, lo < 0 ? 0 : (int)lo,
                        hi > ps->jobs[k].rows ? ps->jobs[k].rows : (int)hi);
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

/* Floats of X in the even/odd order that a pass keeps on the stack; more are allocated. */
#define EO_STACK_FLOATS 8192

void smallmm_xmt_run(struct pool *p, int in, const smallmm_xmt *jobs, int n_jobs)
{
    xmt_pass ps = {kernels(), jobs, NULL, n_jobs, in, p ? 8 * pool_threads(p) : 1, 0};
    for (int k = 0; k < n_jobs; k++)
        ps.rows += jobs[k].rows;
    if (ps.rows == 0)
        return;
    /* The BF16 products of one (or two) rows read X in the even/odd order: prepared here,
     * once per product rather than in each task. */
    size_t need = 0;
    for (int k = 0; k < n_jobs; k++)
        if (jobs[k].m.type == WT_BF16 && jobs[k].n <= ps.k->eo_rows)
            need += (size_t)jobs[k].n * (size_t)in;
    float stack_buf[EO_STACK_FLOATS];
    const float *stack_ptrs[16];
    float *buf = need <= EO_STACK_FLOATS ? stack_buf : malloc(need * sizeof(float));
    const float **xeo = n_jobs <= 16 ? stack_ptrs : malloc((size_t)n_jobs * sizeof *xeo);
    if (need && buf && xeo) {  /* (out of memory: the widening kernels, which need none) */
        size_t used = 0;
        for (int k = 0; k < n_jobs; k++) {
            xeo[k] = NULL;
            if (jobs[k].m.type == WT_BF16 && jobs[k].n <= ps.k->eo_rows) {
                eo_prepare(jobs[k].x, jobs[k].n, in, ps.k->eo_block, buf + used);
                xeo[k] = buf + used;
                used += (size_t)jobs[k].n * (size_t)in;
            }
        }
        ps.xeo = xeo;
    }
    if (ps.n_tasks > 1)
        pool_run(p, xmt_task, &ps, ps.n_tasks);
    else
        xmt_task(&ps, 0, 0);
    if (buf != stack_buf)
        free(buf);
    if (xeo != stack_ptrs)
        free(xeo);
}

typedef struct {
    const smallmm_kernels *k;
    const smallmm_tb *jobs;
    int n_jobs, n_tasks;
} tb_pass;

/* Task k: the k-th share of every product's columns, split at multiples of 16 — the same
 * split for every product with the same out, so no two tasks write one element. */
static void tb_task(void *ctx, int task, int thread)
{
    (void)thread;
    const tb_pass *ps = ctx;
    for (int k = 0; k < ps->n_jobs; k++) {
        const smallmm_tb *jb = &ps->jobs[k];
        int blocks = (jb->out + 15) / 16;
        int c0 = blocks * task / ps->n_tasks * 16, c1 = blocks * (task + 1) / ps->n_tasks * 16;
        ps->k->tb_cols(jb, c0, c1 < jb->out ? c1 : jb->out);
    }
}

void smallmm_tb_run(struct pool *p, const smallmm_tb *jobs, int n_jobs)
{
    tb_pass ps = {kernels(), jobs, n_jobs, p ? pool_threads(p) : 1};
    if (n_jobs == 0)
        return;
    if (ps.n_tasks > 1)
        pool_run(p, tb_task, &ps, ps.n_tasks);
    else
        tb_task(&ps, 0, 0);
}
