/* tok_common: the real tokenizers of tests/fixtures/tokenizer (Llama 2 with and without
 * extra added tokens, Llama 3, Qwen3), loaded once, and the streaming-decode check. Included
 * by the tokenizer harnesses only. Paths are relative to the repository root, where make
 * runs the harnesses. */
#ifndef LORAD_FUZZ_TOK_COMMON_H
#define LORAD_FUZZ_TOK_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer.h"
#include "fuzz/fuzzutil.h"

enum { TOK_LLAMA2, TOK_LLAMA2_ADDED, TOK_LLAMA3, TOK_QWEN3, TOK_COUNT };
static const char *const tok_dirs[TOK_COUNT] = {
    "tests/fixtures/tokenizer/llama2", "tests/fixtures/tokenizer/llama2-added",
    "tests/fixtures/tokenizer/llama3", "tests/fixtures/tokenizer/qwen3"};
static tokenizer *toks[TOK_COUNT];

static inline void tok_load_all(void)
{
    for (int i = 0; i < TOK_COUNT; i++) {
        lr_error err = {0};
        if (!(toks[i] = tokenizer_load(tok_dirs[i], &err))) {
            fprintf(stderr, "fuzz: %s (run from the repository root)\n", err.msg);
            abort();
        }
    }
}

/* Decodes ids whole and through a stream (one push per id, then a flush) and checks the
 * two texts are the same, as tokenizer.h promises; ids out of range are refused by both
 * (the stream staying as it was). Returns the whole text (caller frees), NULL when refused. */
static char *tok_check_decode(const tokenizer *t, const int *ids, size_t n, int skip,
                              size_t *out_len)
{
    char *whole = NULL;
    size_t wlen = 0;
    lr_error err = {0};
    int vocab = tokenizer_vocab_size(t);
    int all_valid = 1;
    for (size_t i = 0; i < n; i++)
        all_valid &= ids[i] >= 0 && ids[i] < vocab;
    int rc = tokenizer_decode(t, ids, n, skip, &whole, &wlen, &err);
    if (!all_valid) {
        FUZZ_CHECK(rc == LR_EINVAL, "ids out of range decoded (rc %d)", rc);
        fuzz_check_error(rc, &err);
        FUZZ_CHECK(whole == NULL, "refused decode changed *text");
    } else {
        FUZZ_CHECK(rc == 0, "decode of valid ids failed: %s", err.msg);
        FUZZ_CHECK(whole[wlen] == '\0', "decoded text not terminated");
        FUZZ_CHECK(fuzz_utf8_valid(whole, wlen), "decoded text is not valid UTF-8");
    }

    /* The stream skips refused ids, so it must equal the whole decode of the valid ones. */
    int *valid = malloc(sizeof(int) * (n ? n : 1));
    size_t nv = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < vocab)
            valid[nv++] = ids[i];
    char *ref = NULL;
    size_t rlen = 0;
    if (all_valid) {
        ref = whole;
        rlen = wlen;
    } else {
        FUZZ_CHECK(tokenizer_decode(t, valid, nv, skip, &ref, &rlen, &err) == 0,
                   "decode of the valid ids failed: %s", err.msg);
    }
    tokenizer_stream *s = tokenizer_stream_new(t, skip);
    FUZZ_CHECK(s != NULL, "stream_new");
    size_t cap = rlen + 64, sl = 0;
    char *streamed = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        char *piece = NULL;
        size_t plen = 0;
        int prc = i < n ? tokenizer_stream_push(s, ids[i], &piece, &plen)
                        : tokenizer_stream_flush(s, &piece, &plen);
        if (i < n && (ids[i] < 0 || ids[i] >= vocab)) {
            FUZZ_CHECK(prc == LR_EINVAL && piece == NULL, "stream took id %d (rc %d)", ids[i],
                       prc);
            continue;
        }
        FUZZ_CHECK(prc == 0 && piece && piece[plen] == '\0', "stream push/flush failed (%d)",
                   prc);
        FUZZ_CHECK(fuzz_utf8_valid(piece, plen), "a streamed piece is not valid UTF-8 (a "
                   "character split between pieces?)");
        if (sl + plen + 1 > cap) {
            cap = (sl + plen + 1) * 2;
            streamed = realloc(streamed, cap);
        }
        memcpy(streamed + sl, piece, plen);
        sl += plen;
        free(piece);
    }
    tokenizer_stream_free(s);
    FUZZ_CHECK(sl == rlen && memcmp(streamed, ref, rlen) == 0, "streaming decode (%zu bytes) "
               "differs from whole decode (%zu bytes): '%.*s' vs '%.*s'", sl, rlen, (int)sl,
               streamed, (int)rlen, ref);
    free(streamed);
    if (ref != whole)
        free(ref);
    free(valid);
    if (out_len)
        *out_len = wlen;
    return whole;
}

#endif
