/* fuzz_tokenizer_decode: arbitrary token ids through the real tokenizers' decoders. The
 * first byte picks the tokenizer and skip_special; the rest are little-endian int32 ids —
 * the high bit of each id's last byte chooses between the raw value (negative, huge) and
 * one folded into the vocabulary. Checks (tok_common.h): ids out of range are refused by
 * decode and by the stream; valid ids decode to valid UTF-8, streamed == whole. */
#include <stdlib.h>

#include "fuzz/tok_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    tok_load_all();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!toks[0])
        tok_load_all();
    if (size < 1)
        return 0;
    int which = data[0] % TOK_COUNT, skip = (data[0] >> 4) & 1;
    const tokenizer *t = toks[which];
    int vocab = tokenizer_vocab_size(t);
    size_t n = (size - 1) / 4;
    if (n > 2048)
        n = 2048;
    int *ids = malloc(sizeof(int) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = data + 1 + 4 * i;
        uint32_t raw = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                       (uint32_t)p[3] << 24;
        ids[i] = (p[3] & 0x80) ? (int)raw : (int)(raw % (uint32_t)vocab);
    }
    free(tok_check_decode(t, ids, n, skip, NULL));
    free(ids);
    return 0;
}
