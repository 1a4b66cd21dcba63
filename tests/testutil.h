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

/* A tiny random Llama-family model and PEFT adapters for it, written with
 * safetensors_write (the engine, registry and store tests share them): hidden 32,
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
