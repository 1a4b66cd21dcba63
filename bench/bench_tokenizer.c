/* bench_tokenizer: load time and encode throughput of core/tokenizer on the real Llama 2,
 * Llama 3 and Qwen3 files, over ~1 MB of English text made from the committed prose fixture
 * (its lines reshuffled by a fixed LCG, so the text is deterministic but not one repeated
 * block). Run from the repository root: build/bench/bench_tokenizer [fixture dir]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/tokenizer.h"
#include "bench/benchutil.h"

#define TARGET_BYTES (1u << 20)
#define RUNS 5

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ~1 MB: lines of the prose file in LCG order, numbers sprinkled in, joined by newlines. */
static char *make_text(const char *dir, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/prose.txt", dir);
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *src = malloc((size_t)n + 1);
    if (!src || fread(src, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(src); return NULL; }
    fclose(f);
    src[n] = '\0';
    size_t nl = 0, cap = 64;
    char **lines = malloc(cap * sizeof *lines);
    for (char *p = strtok(src, "\n"); p; p = strtok(NULL, "\n")) {
        if (nl == cap) lines = realloc(lines, (cap *= 2) * sizeof *lines);
        lines[nl++] = p;
    }
    char *out = malloc(TARGET_BYTES + 4096);
    size_t o = 0;
    unsigned long long seed = 42;
    while (o < TARGET_BYTES) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        const char *l = lines[(seed >> 33) % nl];
        size_t k = strlen(l);
        if (o + k + 32 > TARGET_BYTES + 4096) break;
        memcpy(out + o, l, k);
        o += k;
        if ((seed >> 20) % 7 == 0) o += (size_t)sprintf(out + o, " (section %llu)", (seed >> 40) % 1000);
        out[o++] = '\n';
    }
    out[o] = '\0';
    *len = o;
    free(lines);
    free(src);
    return out;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures/tokenizer";
    const char *names[] = {"llama3", "llama2", "qwen3"};
    size_t len;
    char *text = make_text(dir, &len);
    if (!text) return 1;
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char d[512];
        lr_error err = {0};
        snprintf(d, sizeof d, "%s/%s", dir, names[k]);
        double t0 = now_ms();
        tokenizer *t = tokenizer_load(d, &err);
        double load = now_ms() - t0;
        if (!t) { fprintf(stderr, "%s: %s\n", names[k], err.msg); return 1; }
        double ms[RUNS];
        size_t n_ids = 0;
        for (int r = 0; r < RUNS; r++) {
            int *ids;
            t0 = now_ms();
            if (tokenizer_encode(t, text, len, 1, &ids, &n_ids, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
            ms[r] = now_ms() - t0;
            free(ids);
        }
        qsort(ms, RUNS, sizeof ms[0], bench_cmp_double);
        double mb = len / 1048576.0, med = ms[RUNS / 2];
        printf("tokenizer %s: load %.1f ms\n", names[k], load);
        printf("tokenizer %s: encode %.2f MB in %.1f ms (median of %d) = %.1f MB/s, %.1f ms per MB, %zu tokens\n",
               names[k], mb, med, RUNS, mb / (med / 1e3), med / mb, n_ids);
        tokenizer_free(t);
    }
    free(text);
    return 0;
}
