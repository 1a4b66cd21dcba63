/* model_config_load: config.json → model_config, refusing what lorad cannot run. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const proj_names[PROJ_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

const char *model_proj_name(model_proj p)
{
    return (unsigned)p < PROJ_COUNT ? proj_names[p] : "?";
}

int model_proj_from_name(const char *name)
{
    for (int p = 0; p < PROJ_COUNT; p++)
        if (strcmp(name, proj_names[p]) == 0)
            return p;
    return -1;
}

void model_config_proj_shape(const model_config *cfg, model_proj p, int *out, int *in)
{
    int q = cfg->n_heads * cfg->head_dim, kv = cfg->n_kv_heads * cfg->head_dim;
    switch (p) {
    case PROJ_Q:    *out = q; *in = cfg->hidden; break;
    case PROJ_K:
    case PROJ_V:    *out = kv; *in = cfg->hidden; break;
    case PROJ_O:    *out = cfg->hidden; *in = q; break;
    case PROJ_GATE:
    case PROJ_UP:   *out = cfg->intermediate; *in = cfg->hidden; break;
    default:        *out = cfg->hidden; *in = cfg->intermediate; break;
    }
}

/* Reads an integer field; absent → def (or error when def < 0 meaning required). */
static int get_int(json_t *root, const char *key, int def, int lo, int hi, int *out,
                   lr_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def == -1)
            return lr_error_set(err, LR_EINVAL, "config.json: missing required key '%s'", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return lr_error_set(err, LR_EINVAL, "config.json: '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lr_error_set(err, LR_EINVAL, "config.json: '%s' = %lld is out of range [%d, %d]",
                            key, (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_num(json_t *root, const char *key, double def, double lo, double hi,
                   float *out, lr_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(v))
        return lr_error_set(err, LR_EINVAL, "config.json: '%s' must be a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return lr_error_set(err, LR_EINVAL, "config.json: '%s' = %g is out of range [%g, %g]",
                            key, x, lo, hi);
    *out = (float)x;
    return 0;
}

static int get_bool(json_t *root, const char *key, int def, int *out, lr_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return lr_error_set(err, LR_EINVAL, "config.json: '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* eos_token_id may be an integer or a list of integers. */
/* A BOS/EOS id: an integer in [0, vocab_size), else -1 (an id no token has is of no use,
 * and a cast would turn 2^32 + 2 into token 2). */
static int token_id(json_t *v, const model_config *cfg)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= cfg->vocab_size)
        return -1;
    return (int)json_integer_value(v);
}

static int read_eos(json_t *v, model_config *cfg, const char *file, lr_error *err)
{
    if (!v || json_is_null(v))
        return 0;
    cfg->n_eos = 0;
    if (json_is_integer(v)) {
        if (token_id(v, cfg) >= 0)
            cfg->eos_ids[cfg->n_eos++] = token_id(v, cfg);
        return 0;
    }
    if (!json_is_array(v))
        return lr_error_set(err, LR_EINVAL, "%s: 'eos_token_id' must be an integer or a list",
                            file);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e))
            return lr_error_set(err, LR_EINVAL, "%s: 'eos_token_id' entries must be integers",
                                file);
        if (cfg->n_eos < CONFIG_MAX_EOS && token_id(e, cfg) >= 0)
            cfg->eos_ids[cfg->n_eos++] = token_id(e, cfg);
    }
    return 0;
}

static int read_rope_scaling(json_t *rs, model_config *cfg, lr_error *err)
{
    if (!rs || json_is_null(rs))
        return 0;
    if (!json_is_object(rs))
        return lr_error_set(err, LR_EINVAL, "config.json: 'rope_scaling' must be an object");
    json_t *t = json_object_get(rs, "rope_type");
    if (!t)
        t = json_object_get(rs, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (type && strcmp(type, "default") == 0)
        return 0;
    if (!type || strcmp(type, "llama3") != 0)
        return lr_error_set(err, LR_ENOTSUP,
                            "config.json: 'rope_scaling' type '%s' is not supported "
                            "(supported: llama3, default)", type ? type : "(missing)");
    cfg->rope_llama3 = 1;
    int rc = get_num(rs, "factor", 8.0, 1.0, 1e6, &cfg->rope_factor, err);
    if (!rc)
        rc = get_num(rs, "low_freq_factor", 1.0, 1e-6, 1e6, &cfg->rope_low_freq_factor, err);
    if (!rc)
        rc = get_num(rs, "high_freq_factor", 4.0, 1e-6, 1e6, &cfg->rope_high_freq_factor, err);
    if (!rc)
        rc = get_int(rs, "original_max_position_embeddings", 8192, 1, 1 << 24,
                     &cfg->rope_original_max_positions, err);
    if (!rc && cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        rc = lr_error_set(err, LR_EINVAL,
                          "config.json: rope_scaling high_freq_factor must exceed low_freq_factor");
    if (rc)
        lr_error_prefix(err, "rope_scaling");
    return rc;
}

static json_t *load_json_file(const char *dir, const char *name, int required, lr_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (required)
            lr_error_set(err, LR_ENOTFOUND, "%s: cannot open (not a Hugging Face model directory?)",
                         name);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root) {
        lr_error_set(err, LR_EINVAL, "%s: invalid JSON at line %d: %s", name, je.line, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        lr_error_set(err, LR_EINVAL, "%s: top level must be a JSON object", name);
        return NULL;
    }
    return root;
}

int model_config_load(const char *dir, model_config *cfg, lr_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_id = -1;
    json_t *root = load_json_file(dir, "config.json", 1, err);
    if (!root)
        return err ? err->code : LR_EINVAL;
    int rc = 0;

    json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) == 1 &&
        json_is_string(json_array_get(archs, 0)))
        arch = json_string_value(json_array_get(archs, 0));
    if (!arch) {
        rc = lr_error_set(err, LR_EINVAL,
                          "config.json: 'architectures' must be a list with one name");
        goto done;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", arch);
    if (strcmp(arch, "LlamaForCausalLM") == 0)
        cfg->arch = ARCH_LLAMA;
    else if (strcmp(arch, "MistralForCausalLM") == 0)
        cfg->arch = ARCH_MISTRAL;
    else if (strcmp(arch, "Qwen2ForCausalLM") == 0)
        cfg->arch = ARCH_QWEN2;
    else {
        rc = lr_error_set(err, LR_ENOTSUP,
                          "config.json: 'architectures' %s is not supported (supported: "
                          "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)", arch);
        goto done;
    }

    const int big = 1 << 24;
    if ((rc = get_int(root, "vocab_size", -1, 1, big, &cfg->vocab_size, err)) ||
        (rc = get_int(root, "hidden_size", -1, 1, 1 << 16, &cfg->hidden, err)) ||
        (rc = get_int(root, "intermediate_size", -1, 1, 1 << 18, &cfg->intermediate, err)) ||
        (rc = get_int(root, "num_hidden_layers", -1, 1, 1024, &cfg->n_layers, err)) ||
        (rc = get_int(root, "num_attention_heads", -1, 1, 1024, &cfg->n_heads, err)) ||
        (rc = get_int(root, "num_key_value_heads", cfg->n_heads, 1, 1024, &cfg->n_kv_heads,
                      err)) ||
        (rc = get_int(root, "max_position_embeddings", 2048, 1, big, &cfg->max_positions,
                      err)) ||
        (rc = get_num(root, "rope_theta", 10000.0, 1.0, 1e12, &cfg->rope_theta, err)))
        goto done;
    if ((rc = get_num(root, "rms_norm_eps", 1e-6, 1e-12, 1.0, &cfg->rms_eps, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", 0, &cfg->tie_embeddings, err)))
        goto done;
    if (cfg->hidden % cfg->n_heads != 0 && !json_object_get(root, "head_dim")) {
        rc = lr_error_set(err, LR_EINVAL,
                          "config.json: hidden_size %d is not a multiple of num_attention_heads %d",
                          cfg->hidden, cfg->n_heads);
        goto done;
    }
    if ((rc = get_int(root, "head_dim", cfg->hidden / cfg->n_heads, 2, 1 << 12, &cfg->head_dim,
                      err)))
        goto done;
    if (cfg->head_dim > 256) {
        rc = lr_error_set(err, LR_ENOTSUP, "config.json: 'head_dim' %d is not supported (at "
                          "most 256)", cfg->head_dim);
        goto done;
    }
    if (cfg->head_dim % 2) {
        rc = lr_error_set(err, LR_EINVAL, "config.json: 'head_dim' %d must be even for RoPE",
                          cfg->head_dim);
        goto done;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0) {
        rc = lr_error_set(err, LR_EINVAL,
                          "config.json: num_attention_heads %d is not a multiple of "
                          "num_key_value_heads %d", cfg->n_heads, cfg->n_kv_heads);
        goto done;
    }

    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0)) {
        rc = lr_error_set(err, LR_ENOTSUP,
                          "config.json: 'hidden_act' %s is not supported (supported: silu)",
                          json_is_string(act) ? json_string_value(act) : "(not a string)");
        goto done;
    }
    if (cfg->arch == ARCH_QWEN2)
        cfg->qkv_bias = 1;
    int flag = 0;
    if ((rc = get_bool(root, "attention_bias", 0, &flag, err)))
        goto done;
    if (flag) {
        if (cfg->arch == ARCH_QWEN2) {
            cfg->qkv_bias = 1;
        } else {
            rc = lr_error_set(err, LR_ENOTSUP,
                              "config.json: 'attention_bias' true is not supported for %s", arch);
            goto done;
        }
    }
    if ((rc = get_bool(root, "mlp_bias", 0, &flag, err)))
        goto done;
    if (flag) {
        rc = lr_error_set(err, LR_ENOTSUP, "config.json: 'mlp_bias' true is not supported");
        goto done;
    }

    /* Sliding window, as transformers reads it. Mistral: every layer, sliding_window
     * defaulting to 4096 when the key is absent (null = none). Qwen2: only with
     * use_sliding_window (sliding_window again 4096 when absent), and only in layers >=
     * max_window_layers (default 28) — or the sliding layers of an explicit layer_types,
     * which without use_sliding_window slide nothing (Qwen2Config sets the window to
     * None). A query at position p then sees keys p - W + 1 .. p. */
    int sw = 0, use_sw = cfg->arch == ARCH_MISTRAL;
    json_t *swj = json_object_get(root, "sliding_window");
    if ((rc = get_int(root, "sliding_window", 0, 0, big, &sw, err)))
        goto done;
    if ((cfg->arch == ARCH_MISTRAL || cfg->arch == ARCH_QWEN2) && !swj)
        sw = 4096;
    if (cfg->arch == ARCH_QWEN2) {
        if ((rc = get_bool(root, "use_sliding_window", 0, &use_sw, err)) ||
            (rc = get_int(root, "max_window_layers", 28, 0, 1 << 20, &cfg->window_from_layer,
                          err)))
            goto done;
    }
    if (json_object_get(root, "layer_types")) {
        /* transformers' explicit per-layer list: accept it when it is "full" up to some
         * layer and "sliding" from there on (what max_window_layers can express). */
        json_t *lt = json_object_get(root, "layer_types");
        size_t i, n_sliding = 0, first_sliding = json_array_size(lt);
        json_t *e;
        int ok = json_is_array(lt) && json_array_size(lt) == (size_t)cfg->n_layers;
        json_array_foreach(lt, i, e) {
            const char *t = json_is_string(e) ? json_string_value(e) : "";
            if (strcmp(t, "sliding_attention") == 0) {
                if (!n_sliding++)
                    first_sliding = i;
            } else if (strcmp(t, "full_attention") != 0 || n_sliding) {
                ok = 0;
            }
        }
        if (!ok) {
            rc = lr_error_set(err, LR_ENOTSUP, "config.json: 'layer_types' must list "
                              "full_attention then sliding_attention, one per layer (other "
                              "patterns are not supported)");
            goto done;
        }
        cfg->window_from_layer = (int)first_sliding;
        use_sw = use_sw && n_sliding > 0;
    }
    if (use_sw && sw > 0 && sw < cfg->max_positions && cfg->window_from_layer < cfg->n_layers)
        cfg->sliding_window = sw;

    if ((rc = read_rope_scaling(json_object_get(root, "rope_scaling"), cfg, err)))
        goto done;

    json_t *bos = json_object_get(root, "bos_token_id");
    if (json_is_integer(bos))
        cfg->bos_id = token_id(bos, cfg);
    if ((rc = read_eos(json_object_get(root, "eos_token_id"), cfg, "config.json", err)))
        goto done;

    /* generation_config.json, when present, has the final word on BOS/EOS. */
    lr_error gerr = {0};
    json_t *gen = load_json_file(dir, "generation_config.json", 0, &gerr);
    if (!gen && gerr.code == LR_EINVAL) {
        rc = lr_error_set(err, LR_EINVAL, "%s", gerr.msg);
        goto done;
    }
    if (gen) {
        bos = json_object_get(gen, "bos_token_id");
        if (json_is_integer(bos))
            cfg->bos_id = token_id(bos, cfg);
        rc = read_eos(json_object_get(gen, "eos_token_id"), cfg, "generation_config.json", err);
        json_decref(gen);
        if (rc)
            goto done;
    }
done:
    json_decref(root);
    return rc;
}
