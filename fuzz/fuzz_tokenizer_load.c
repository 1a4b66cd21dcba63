/* fuzz_tokenizer_load: tokenizer.json (and, after FUZZ_SEP, tokenizer_config.json) from the
 * input. tokenizer_load_files either refuses with an error record (LR_EIO / LR_EINVAL /
 * LR_ENOTSUP and a message), or gives a tokenizer whose BOS/EOS are tokens of its
 * vocabulary, whose token strings are valid UTF-8, and which encodes a
 * few texts (with and without special tokens) to ids in range — or refuses them with an
 * error record — that decode whole and streamed to the same valid UTF-8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[512];
    if (!dir[0])
        fuzz_path(dir, sizeof dir, "tokenizer");
    const uint8_t *part[2];
    size_t len[2];
    int n = fuzz_split(data, size, part, len, 2);
    char tj[600], tc[600];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
    fuzz_write(dir, "tokenizer.json", part[0], len[0]);
    if (n > 1)
        fuzz_write(dir, "tokenizer_config.json", part[1], len[1]);

    lr_error err = {0};
    tokenizer *t = tokenizer_load_files(tj, n > 1 ? tc : NULL, &err);
    if (!t) {
        fuzz_check_error(err.code, &err);
        return 0;
    }
    int vocab = tokenizer_vocab_size(t);
    FUZZ_CHECK(vocab >= 0, "vocab size %d", vocab);
    int bos = tokenizer_bos_id(t), eos = tokenizer_eos_id(t);
    FUZZ_CHECK(bos >= -1 && bos < vocab && eos >= -1 && eos < vocab, "bos %d eos %d vocab %d",
               bos, eos, vocab);
    for (int id = 0; id < vocab && id < 512; id++) {
        const char *s = tokenizer_id_token(t, id);
        if (!s)
            continue;
        /* Not a map back to id: an added token may reuse a vocab string (added first),
         * and a normalized one shows its normalized content. */
        FUZZ_CHECK(fuzz_utf8_valid(s, strlen(s)), "token %d is not valid UTF-8", id);
    }
    static const char *const texts[] = {"Hello world", " two  spaces\n\ttab", "ünïcödé 😀 ∑",
                                        "<s>[INST] hi [/INST]</s><|im_start|>", ""};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        for (int add = 0; add < 2; add++) {
            int *ids = NULL;
            size_t n_ids = 0;
            lr_error e2 = {0};
            int rc = tokenizer_encode(t, texts[i], strlen(texts[i]), add, &ids, &n_ids, &e2);
            if (rc) {
                fuzz_check_error(rc, &e2);
                continue;
            }
            for (size_t k = 0; k < n_ids; k++)
                FUZZ_CHECK(ids[k] >= 0 && ids[k] < vocab, "encoded id %d, vocab %d", ids[k],
                           vocab);
            free(tok_check_decode(t, ids, n_ids, add, NULL));
            free(ids);
        }
    tokenizer_free(t);
    return 0;
}
