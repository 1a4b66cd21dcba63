/* tokenizer: Hugging Face tokenizer.json (BPE model) — text to token ids and back, exactly as
 * Hugging Face's reference `tokenizers` library encodes and decodes (checked against goldens
 * it produced on the real Llama 2, Llama 3 and Qwen3 files, tests/fixtures/tokenizer/).
 *
 * Supported (anything else is refused at load time with a message listing these):
 *   model          BPE: vocab, merges as "a b" strings or ["a","b"] pairs, unk_token, fuse_unk,
 *                  byte_fallback (<0xNN> tokens), ignore_merges, continuing_subword_prefix,
 *                  end_of_word_suffix (dropout is refused: it makes encoding random)
 *   added_tokens   special and not, matched leftmost-longest before the model, honouring
 *                  lstrip / rstrip / single_word / normalized (a normalized token is matched
 *                  in the normalized text as its normalized content, and decodes as that
 *                  content, e.g. "▁brown▁fox" under Llama 2's normalizer — as the reference)
 *   normalizer     Sequence, Prepend, Replace (String or Regex), NFC, NFD, NFKC, NFKD
 *   pre_tokenizer  Sequence, Split (String or Regex pattern, every behavior, invert),
 *                  ByteLevel (add_prefix_space, use_regex: GPT-2's regex), Metaspace
 *                  (replacement, prepend_scheme first/always/never, split)
 *   post_processor TemplateProcessing (single), ByteLevel (ids unchanged), RobertaProcessing,
 *                  BertProcessing, Sequence of these
 *   decoder        ByteLevel; Metaspace; Sequence of Replace/Metaspace/Strip, ByteFallback,
 *                  Fuse, Strip (the Llama 2 / Mistral chain); none (tokens joined by " ")
 * Regexes run on PCRE2 (UTF + Unicode properties, JIT); Unicode normalization uses
 * libunistring (its Unicode tables may lag the reference's for very new characters).
 * Text must be valid UTF-8 (the reference only ever sees Unicode strings). Not done, as in
 * the `tokenizers` library itself: transformers' clean_up_tokenization_spaces, chat templates,
 * truncation/padding, offsets. single_word's word test treats every non-ASCII non-space
 * character as a word character (an approximation of Rust's char::is_alphanumeric).
 * Cost: a min-heap merge loop per word (O(n log n)); the vocab and merges are hash maps.
 *
 * Special tokens on encode (add_special != 0): exactly what the `tokenizers` library does,
 * i.e. the post_processor of tokenizer.json decides (Llama 2's TemplateProcessing adds <s>;
 * the shipped Llama 3 file has only a ByteLevel post-processor and so adds nothing; Qwen3
 * adds nothing). Only when tokenizer.json has no post_processor at all are
 * tokenizer_config.json's add_bos_token / add_eos_token used (BOS prepended / EOS appended
 * when true). This differs from transformers' AutoTokenizer, which for LlamaTokenizerFast
 * rewrites the post-processor from add_bos_token/add_eos_token: callers that want that
 * behaviour add tokenizer_bos_id() themselves. Added-token strings that appear in the text
 * ("<s>", "<|im_start|>") are always matched as their token, with or without add_special.
 *
 * Threads: a tokenizer is immutable after load; every function taking a const tokenizer *
 * may be called from any number of threads at once. A tokenizer_stream belongs to one thread
 * at a time. */
#ifndef LORAD_TOKENIZER_H
#define LORAD_TOKENIZER_H

#include <stddef.h>

#include "core/error.h"

typedef struct tokenizer tokenizer;

/* Loads DIR/tokenizer.json and, when it exists, DIR/tokenizer_config.json.
 * Returns a new tokenizer owned by the caller (free with tokenizer_free), or NULL with err
 * set: LR_EIO (missing/unreadable file), LR_EINVAL (malformed JSON, bad merges, vocab ids out
 * of range or duplicated), LR_ENOTSUP (a model/normalizer/pre-tokenizer/decoder type lorad
 * does not implement; the message lists the supported ones). */
tokenizer *tokenizer_load(const char *dir, lr_error *err);

/* Same, from explicit paths; tokenizer_config_json may be NULL (no config). */
tokenizer *tokenizer_load_files(const char *tokenizer_json, const char *tokenizer_config_json,
                                lr_error *err);

/* Frees t and everything it owns. Accepts NULL. No stream of t may outlive it. */
void tokenizer_free(tokenizer *t);

/* Encodes text[0..len) (valid UTF-8; NUL bytes allowed) into token ids. add_special != 0
 * adds the special tokens described above. On success returns 0 and stores a malloc'd array
 * in *ids (caller frees; may be NULL when *n_ids == 0). On error returns a negative LR_E*
 * code, sets err, and leaves *ids / *n_ids unchanged. Thread-safe. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                     int **ids, size_t *n_ids, lr_error *err);

/* Decodes ids[0..n) into text as the reference's decode(ids, skip_special) does: invalid
 * byte sequences become U+FFFD like the reference; ids that name no token (gaps) are
 * skipped like the reference; ids < 0 or >= tokenizer_vocab_size() are refused (LR_EINVAL).
 * On success returns 0, *text is malloc'd and NUL-terminated (caller frees), *len is its
 * length without the NUL (len may be NULL). On error changes nothing. Thread-safe. */
int tokenizer_decode(const tokenizer *t, const int *ids, size_t n, int skip_special,
                     char **text, size_t *len, lr_error *err);

/* Max id + 1 over the model vocab and the added tokens. */
int tokenizer_vocab_size(const tokenizer *t);

/* BOS / EOS ids from tokenizer_config.json's bos_token / eos_token; without a config, BOS is
 * the first token the post-processor template prepends. -1 if none. */
int tokenizer_bos_id(const tokenizer *t);
int tokenizer_eos_id(const tokenizer *t);

/* Exact token string (as stored in the file: "▁the", "Ġthe", "<s>") → id, added tokens
 * first, then the model vocab; -1 if none. */
int tokenizer_token_id(const tokenizer *t, const char *token);

/* id → raw token string, borrowed from t (valid until tokenizer_free); NULL if none. */
const char *tokenizer_id_token(const tokenizer *t, int id);

/* 1 if id is an added token marked special (skipped by skip_special), else 0. */
int tokenizer_is_special(const tokenizer *t, int id);

/* Streaming decoder: feed ids one at a time, get the text that became final. Text is held
 * back while it may still change: an incomplete UTF-8 sequence (byte-level bytes) or a run of
 * <0xNN> byte-fallback tokens (the reference turns a whole run into U+FFFDs if any of it is
 * invalid), and trailing characters a Strip decoder may remove. The concatenation of every
 * push and the flush equals tokenizer_decode of the same ids with the same skip_special. */
typedef struct tokenizer_stream tokenizer_stream;

/* New stream over t (borrowed; must outlive the stream). NULL on allocation failure. */
tokenizer_stream *tokenizer_stream_new(const tokenizer *t, int skip_special);

/* Pushes one id. On success returns 0 and *out is a malloc'd NUL-terminated string (possibly
 * "") the caller frees, *len its length (len may be NULL). Returns LR_EINVAL for an id out of
 * range (stream unchanged) or LR_ENOMEM; *out is then NULL. */
int tokenizer_stream_push(tokenizer_stream *s, int id, char **out, size_t *len);

/* Emits everything still held back (an incomplete sequence as U+FFFD, like the reference)
 * and resets the stream to its initial state. Same ownership as push. */
int tokenizer_stream_flush(tokenizer_stream *s, char **out, size_t *len);

/* Frees s. Accepts NULL. */
void tokenizer_stream_free(tokenizer_stream *s);

#endif
