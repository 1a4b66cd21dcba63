/* fuzz_tokenizer_roundtrip: text through the real tokenizers. The first byte picks the
 * tokenizer and add_special; the rest is the text. Checks: invalid UTF-8 is refused with
 * a message, valid text encodes to ids of the vocabulary; the ids decode whole and streamed
 * to the same valid UTF-8 (with and without skip_special); decode(encode(s)) == s where the
 * tokenizer is lossless: Llama 3 (byte-level, no normalizer) always, Qwen3 for NFC text,
 * Llama 2 for text without '<' (its added tokens) and without U+2581 (its space marker);
 * with add_special, the ids are those without plus the special tokens only. */
#include <stdlib.h>
#include <string.h>
#include <unicase.h>
#include <uninorm.h>

#include "fuzz/tok_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tok_load_all();
    return 0;
}

static int lossless(int which, const char *s, size_t n)
{
    switch (which) {
    case TOK_LLAMA3:
        return 1;
    case TOK_QWEN3: {
        size_t nl = 0;
        uint8_t *nfc = u8_normalize(UNINORM_NFC, (const uint8_t *)s, n, NULL, &nl);
        int same = nfc && nl == n && memcmp(nfc, s, n) == 0;
        free(nfc);
        return same;
    }
    case TOK_LLAMA2:
        return !memchr(s, '<', n) && !memmem(s, n, "\xe2\x96\x81", 3);
    default:
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!toks[0])
        tok_load_all();
    if (size < 1 || size > 4096)
        return 0;
    int which = data[0] % TOK_COUNT, add = (data[0] >> 4) & 1;
    const tokenizer *t = toks[which];
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    int *ids = NULL;
    size_t n_ids = 0;
    lr_error err = {0};
    int rc = tokenizer_encode(t, text, n, add, &ids, &n_ids, &err);
    if (!fuzz_utf8_valid(text, n)) {
        FUZZ_CHECK(rc == LR_EINVAL, "invalid UTF-8 encoded (rc %d)", rc);
        fuzz_check_error(rc, &err);
        return 0;
    }
    FUZZ_CHECK(rc == 0, "%s: valid text refused: %s", tok_dirs[which], err.msg);
    int vocab = tokenizer_vocab_size(t);
    for (size_t i = 0; i < n_ids; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d out of range", ids[i]);

    size_t len = 0;
    char *back = tok_check_decode(t, ids, n_ids, 0, &len);
    char *skipped = tok_check_decode(t, ids, n_ids, 1, NULL);
    if (!add && lossless(which, text, n))
        FUZZ_CHECK(len == n && memcmp(back, text, n) == 0, "%s: decode(encode(s)) != s: "
                   "'%.*s' -> '%s'", tok_dirs[which], (int)n, text, back);
    if (add) {
        /* add_special only adds special tokens around what add_special=0 gives */
        int *plain = NULL;
        size_t n_plain = 0;
        FUZZ_CHECK(tokenizer_encode(t, text, n, 0, &plain, &n_plain, &err) == 0, "%s",
                   err.msg);
        size_t k = 0;
        for (size_t i = 0; i < n_ids; i++) {
            if (k < n_plain && ids[i] == plain[k])
                k++;
            else
                FUZZ_CHECK(tokenizer_is_special(t, ids[i]), "%s: add_special added id %d, "
                           "not a special token", tok_dirs[which], ids[i]);
        }
        FUZZ_CHECK(k == n_plain, "%s: add_special lost ids", tok_dirs[which]);
        free(plain);
    }
    free(back);
    free(skipped);
    free(ids);
    return 0;
}
