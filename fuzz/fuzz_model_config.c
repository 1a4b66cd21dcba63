/* fuzz_model_config: a model directory from the input, split at FUZZ_SEP into config.json,
 * generation_config.json, model.safetensors.index.json and tokenizer_config.json (a part
 * left out is a file left out), beside the tiny model's weights (model.safetensors).
 * model_config_load either refuses with a message, or gives a config every module can
 * rely on (positive sizes, heads dividing evenly, finite RoPE and norm constants, BOS and
 * EOS ids that are tokens of the vocabulary); model_load (which also reads the index)
 * either refuses or gives exactly that config with every tensor of its shape; the chat
 * template of tokenizer_config.json either refuses or renders a conversation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/model.h"
#include "fuzz/fuzzutil.h"
#include "server/chat.h"
#include "tests/testutil.h"

static const char *const files[4] = {"config.json", "generation_config.json",
                                     "model.safetensors.index.json", "tokenizer_config.json"};

static void check_config(const model_config *c)
{
    FUZZ_CHECK(c->vocab_size > 0 && c->hidden > 0 && c->intermediate > 0 && c->n_layers > 0 &&
               c->n_heads > 0 && c->n_kv_heads > 0 && c->head_dim > 0 && c->max_positions > 0,
               "a size is not positive (vocab %d hidden %d inter %d layers %d heads %d/%d "
               "head_dim %d ctx %d)", c->vocab_size, c->hidden, c->intermediate, c->n_layers,
               c->n_heads, c->n_kv_heads, c->head_dim, c->max_positions);
    FUZZ_CHECK(c->n_heads % c->n_kv_heads == 0 && c->head_dim % 2 == 0, "heads %d/%d dim %d",
               c->n_heads, c->n_kv_heads, c->head_dim);
    FUZZ_CHECK(isfinite(c->rope_theta) && c->rope_theta > 0, "rope_theta %g",
               (double)c->rope_theta);
    FUZZ_CHECK(isfinite(c->rms_eps) && c->rms_eps > 0, "rms_norm_eps %g", (double)c->rms_eps);
    FUZZ_CHECK(c->sliding_window >= 0 && c->sliding_window < c->max_positions,
               "sliding_window %d", c->sliding_window);
    if (c->rope_llama3)
        FUZZ_CHECK(isfinite(c->rope_factor) && c->rope_factor > 0 &&
                   isfinite(c->rope_low_freq_factor) && isfinite(c->rope_high_freq_factor) &&
                   c->rope_high_freq_factor != c->rope_low_freq_factor &&
                   c->rope_original_max_positions > 0, "llama3 rope_scaling constants");
    FUZZ_CHECK(c->bos_id >= -1 && c->bos_id < c->vocab_size, "bos_id %d, vocab %d", c->bos_id,
               c->vocab_size);
    FUZZ_CHECK(c->n_eos >= 0 && c->n_eos <= CONFIG_MAX_EOS, "n_eos %d", c->n_eos);
    for (int i = 0; i < c->n_eos; i++)
        FUZZ_CHECK(c->eos_ids[i] >= 0 && c->eos_ids[i] < c->vocab_size, "eos id %d, vocab %d",
                   c->eos_ids[i], c->vocab_size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[512];
    if (!dir[0]) {
        fuzz_path(dir, sizeof dir, "model-config");
        testutil_write_tiny_model(dir);   /* config.json is replaced below */
    }
    const uint8_t *part[4];
    size_t len[4];
    int n = fuzz_split(data, size, part, len, 4);
    for (int i = 0; i < 4; i++)
        fuzz_write(dir, files[i], i < n ? part[i] : NULL, i < n ? len[i] : 0);

    model_config cfg;
    lr_error err = {0};
    int rc = model_config_load(dir, &cfg, &err);
    if (rc) {
        fuzz_check_error(rc, &err);
    } else {
        check_config(&cfg);
        model *m = model_load(dir, &err);
        if (!m) {
            fuzz_check_error(err.code, &err);
        } else {
            FUZZ_CHECK(memcmp(&m->cfg, &cfg, sizeof cfg) == 0, "model_load's config differs");
            for (int i = 0; i < m->n_tensors; i++) {
                const model_tensor *t = &m->tensors[i];
                int out = cfg.hidden, in = 0;
                if (t->proj >= 0)
                    model_config_proj_shape(&cfg, (model_proj)t->proj, &out, &in);
                FUZZ_CHECK(t->data.data && (t->proj < 0 || (t->ndim == 2 && t->shape[0] == out &&
                                                             t->shape[1] == in)),
                           "tensor %s shape", t->name);
            }
            /* the same files held as Q8: the same tensors, matrices quantized, or a clear
             * refusal (only memory can fail now) */
            model *q = model_load_with(dir, &(model_load_opts){WT_Q8, NULL, NULL}, &err);
            if (!q) {
                fuzz_check_error(err.code, &err);
            } else {
                FUZZ_CHECK(q->weights == WT_Q8 && q->n_tensors == m->n_tensors,
                           "q8 model differs in its tensors");
                for (int i = 0; i < q->n_tensors; i++)
                    FUZZ_CHECK(q->tensors[i].data.type == (q->tensors[i].ndim == 2 ? WT_Q8
                                                                                  : WT_F32),
                               "tensor %s held as %d", q->tensors[i].name,
                               q->tensors[i].data.type);
                model_free(q);
            }
            model_free(m);
        }
    }

    chat_template *ct = chat_template_load(dir, NULL, &err);
    if (!ct) {
        FUZZ_CHECK(err.code < 0 && err.msg[0], "chat template refused without a message");
        return 0;
    }
    chat_message msgs[3] = {{"system", "Be brief."}, {"user", "Hi <s> {{ x }}"},
                            {"assistant", "Hello."}};
    char *out = NULL;
    size_t olen = 0;
    lr_error rerr = {0};
    rc = chat_template_render(ct, msgs, 3, 1, &out, &olen, &rerr);
    if (rc == 0)
        FUZZ_CHECK(out && out[olen] == '\0', "rendered text is not terminated");
    else
        FUZZ_CHECK(!out && rerr.msg[0], "render failed (%d) without a message", rc);
    free(out);
    chat_template_free(ct);
    return 0;
}
