/* fuzzutil: what the fuzz harnesses (fuzz/fuzz_*.c) share — a scratch directory, files
 * written from the input, the input split into parts, checks that turn a broken guarantee
 * into a crash (libFuzzer keeps the input; the replay in `make test` fails), and a small
 * daemon state (tiny model, adapter directory, registry) for the harnesses that need one.
 *
 * Each harness is one file defining LLVMFuzzerTestOneInput (and optionally
 * LLVMFuzzerInitialize); it is linked either with libFuzzer (clang, `make fuzz`) or with
 * fuzz/replay.c (any compiler, `make check`), which feeds it the files of the corpora. */
#ifndef LORAD_FUZZUTIL_H
#define LORAD_FUZZUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "server/app.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with the harness's file, line and a message when cond is false. */
#define FUZZ_CHECK(cond, ...)                                                              \
    do {                                                                                   \
        if (!(cond))                                                                       \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                             \
    } while (0)

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));

/* Checks the error-record contract: rc and err->code the same negative LR_E* value, and a
 * one-line, non-empty, NUL-terminated message. */
void fuzz_check_error(int rc, const lr_error *err);

/* A directory private to this process (under /dev/shm when there is one), made on first
 * use and removed with everything in it at exit. */
const char *fuzz_scratch(void);

/* sub inside the scratch directory, made if missing; returns a static path per call site
 * (copy it). */
void fuzz_path(char *out, size_t cap, const char *sub);
void fuzz_mkdir(const char *dir);

/* Writes n bytes as dir/name; a NULL data removes dir/name instead. */
void fuzz_write(const char *dir, const char *name, const void *data, size_t n);

/* Reads a whole file (malloc'd, NUL-terminated); NULL when it cannot be read. */
char *fuzz_read(const char *path, size_t *len);

/* Splits the input at each FUZZ_SEP into at most max parts; returns how many. Parts are
 * not NUL-terminated. */
#define FUZZ_SEP "\n--8<--\n"
int fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, int max);

/* 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
int fuzz_utf8_valid(const char *s, size_t n);

/* The daemon state of the HTTP-level harnesses, made once: the tiny model of tests/testutil
 * (served as "tiny"), an adapter directory holding one valid adapter "good" (r 4, all
 * projections), a registry over it, metrics. Directory paths are in the scratch directory:
 * fuzz_path(.., "adapters"); a copy of "good" outside it is in "outside/evil". */
app *fuzz_app(void);

#endif
