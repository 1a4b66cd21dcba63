/* testutil: helpers shared by the libcheck test files (linked into every test binary). */
#ifndef LORAD_TESTUTIL_H
#define LORAD_TESTUTIL_H

#include <jansson.h>
#include <stdint.h>

/* A new directory /tmp/<prefix>_XXXXXX; malloc'd path, freed by testutil_rmdir.
 * Fails the current test (ck_assert) when it cannot be made. */
char *testutil_mkdtemp(const char *prefix);

/* Removes the files in dir, then dir itself, and frees the path; accepts NULL. Only one
 * level: test directories hold plain files. */
void testutil_rmdir(char *dir);

/* One tensor for testutil_write_safetensors. */
typedef struct {
    const char *name;
    const char *dtype;     /* "F32" (also when NULL), "F16", "BF16", "I32", "F64", "U8", ... */
    int ndim;              /* 0 (a scalar) .. 2 */
    int64_t shape[2];
    const void *data;      /* the bytes the file holds (little-endian; for F32 a float array
                            * of this host); NULL: zeros */
} testutil_tensor;

/* Writes path as a safetensors file by hand (not with safetensors_write, which is code
 * under test): u64 little-endian header length, the JSON header naming every tensor in
 * order, padded with spaces to a multiple of 8 bytes and then `skew` spaces more (skew 2
 * puts every tensor's data 2 bytes past 4-byte alignment in a mapping), then the
 * tensors' bytes back to back. The one safetensors writer of the tests and fuzz
 * harnesses; aborts on failure. */
void testutil_write_safetensors(const char *path, const testutil_tensor *t, int n, int skew);

/* The same file layout from a given header text (written as is, however broken) and
 * data_len bytes of data (NULL: the bytes 0, 1, 2, ... mod 256, so a reader taking the
 * wrong offset shows). */
void testutil_write_safetensors_raw(const char *path, const char *header, size_t hlen,
                                    const void *data, size_t data_len);

/* A tiny random Llama-family model and PEFT adapters for it, written with
 * testutil_write_safetensors (the engine, registry and store tests share them): hidden 32,
 * intermediate 48, 2 layers, 4 heads x 8, 2 KV heads, vocab 64, context 64, EOS 2. */
enum { TINY_HIDDEN = 32, TINY_INTER = 48, TINY_LAYERS = 2, TINY_HEADS = 4, TINY_KV_HEADS = 2,
       TINY_HEAD_DIM = 8, TINY_VOCAB = 64, TINY_CTX = 64, TINY_EOS = 2 };
extern const char *const tiny_proj_hf[7];   /* "self_attn.q_proj", ... model_proj order */
extern const int tiny_proj_out[7], tiny_proj_in[7];

/* Deterministic numbers in [-1, 1) (xorshift32); advances *s. */
float testutil_rnd(uint32_t *s);

/* Writes j (stolen) as dir/file. */
void testutil_write_json(const char *dir, const char *file, json_t *j);

/* The model (config.json + model.safetensors) into dir; the same seed every time, so two
 * calls write the same weights. */
void testutil_write_tiny_model(const char *dir);

/* A random PEFT adapter of rank r and lora_alpha alpha on the projections in mask (bit p
 * for model_proj p), into dir. Tensors are drawn from seed in file order: for each layer,
 * each projection, A [r, in] then B [out, r], all 0.5 * rnd. in_extra != 0 widens every
 * lora_A (an adapter for another base model). base names base_model_name_or_path. */
void testutil_write_tiny_adapter(const char *dir, int r, double alpha, unsigned mask,
                                 uint32_t seed, int in_extra, const char *base);

#endif
