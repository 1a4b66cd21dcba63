/* peft: PEFT LoRA adapter directory → validated lora_weights (fp32, scale per matrix).
 * Parses adapter_config.json with PEFT's own matching rules, checks every tensor of
 * adapter_model.safetensors against the config and the base model, then converts. */
#include "peft.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/log.h"
#include "core/safetensors.h"

#define PEFT_CONFIG_FILE "adapter_config.json"
#define PEFT_WEIGHTS_FILE "adapter_model.safetensors"
#define PEFT_PICKLE_FILE "adapter_model.bin"
#define PEFT_MAX_CONFIG_BYTES (1 << 20)  /* real configs are ~1 KB */
#define PEFT_MAX_PATTERNS 256            /* rank/alpha_pattern keys, layers_pattern items */
#define PEFT_MAX_INFERRED_LAYERS 4096    /* layer count accepted without a base model */
#define PEFT_MODULE_MAX 96               /* "model.layers.NNNNNNN.self_attn.gate_proj" */
#define PEFT_MAX_SCALE 1e5               /* |s| accepted; real adapters have s of 0.01 .. 100 */

/* The prefix PEFT's save_pretrained gives a causal LM's LoRA tensors: PeftModel
 * ("base_model") → LoraModel ("model") → LlamaForCausalLM, whose modules are named
 * "model.layers.L...." — the module names the config patterns are matched against. */
static const char tensor_prefix[] = "base_model.model.";
static const char layers_prefix[] = "model.layers.";

/* ---- regular expressions (PCRE2, standing in for Python's re) ---- */

/* Compiles pattern with options; on error names the config key and the source text
 * src it was built from, and quotes PCRE2's message. */
static pcre2_code *re_compile(const char *key, const char *src, const char *pattern,
                              uint32_t options, lr_error *err)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, options, &code,
                                   &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            snprintf((char *)msg, sizeof msg, "error %d", code);
        lr_error_set(err, LR_EINVAL, "adapter_config.json: %s regex '%.60s' is invalid: %s",
                     key, src, (const char *)msg);
    }
    return re;
}

/* 1 matched, 0 no match, negative: matching failed (limits); err filled. On a match,
 * ovector of md holds the groups. */
static int re_match(const pcre2_code *re, const char *s, pcre2_match_data *md,
                    const char *key, lr_error *err)
{
    int rc = pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL);
    if (rc >= 0)
        return 1;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    PCRE2_UCHAR msg[120];
    if (pcre2_get_error_message(rc, msg, sizeof msg) < 0)
        snprintf((char *)msg, sizeof msg, "error %d", rc);
    return lr_error_set(err, LR_EINVAL, "adapter_config.json: %s regex failed on '%s': %s", key,
                        s, (const char *)msg);
}

/* ---- adapter_config.json ---- */

enum { TM_LIST, TM_REGEX, TM_ALL };

typedef struct {
    const char *key;    /* borrowed from the JSON object */
    pcre2_code *re;     /* "(.*\.)?(key)$", anchored at the start: PEFT's get_pattern_key */
    json_t *value;      /* borrowed */
} pattern_entry;

typedef struct {
    json_t *root;                 /* owned; the strings below point into it */
    int r;
    double alpha;
    int use_rslora;
    const char *base_model;

    int target_kind;              /* TM_*: PEFT target_modules */
    json_t *target_list;          /* TM_LIST: borrowed array of strings */
    json_t *default_targets;      /* owned: PEFT's Llama default when target_modules is null */
    pcre2_code *target_re;        /* TM_REGEX, full match */

    json_t *exclude_list;         /* borrowed array of strings, or NULL */
    pcre2_code *exclude_re;       /* full match, or NULL */

    json_t *layers;               /* layers_to_transform (int or non-empty array), or NULL */
    pcre2_code *layer_re[PEFT_MAX_PATTERNS]; /* ".*\.P\.(\d+)\." per layers_pattern */
    int n_layer_re;

    pattern_entry rank_pat[PEFT_MAX_PATTERNS];
    int n_rank_pat;
    pattern_entry alpha_pat[PEFT_MAX_PATTERNS];
    int n_alpha_pat;

    pcre2_match_data *md;         /* scratch for every match above */
} peft_config;

static void config_release(peft_config *c)
{
    pcre2_code_free(c->target_re);
    pcre2_code_free(c->exclude_re);
    for (int i = 0; i < c->n_layer_re; i++)
        pcre2_code_free(c->layer_re[i]);
    for (int i = 0; i < c->n_rank_pat; i++)
        pcre2_code_free(c->rank_pat[i].re);
    for (int i = 0; i < c->n_alpha_pat; i++)
        pcre2_code_free(c->alpha_pat[i].re);
    pcre2_match_data_free(c->md);
    json_decref(c->default_targets);
    json_decref(c->root);
    memset(c, 0, sizeof *c);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int wrong_type(const char *key, const char *want, const json_t *v, lr_error *err)
{
    return lr_error_set(err, LR_EINVAL, "adapter_config.json: '%s' must be %s, not %s", key,
                        want, json_kind(v));
}

/* Absent or null → def. */
static int get_bool(json_t *root, const char *key, int def, int *out, lr_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return wrong_type(key, "true or false", v, err);
    *out = json_is_true(v);
    return 0;
}

/* A list of strings: every element must be a string. */
static int check_string_array(const char *key, json_t *v, lr_error *err)
{
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e))
            return lr_error_set(err, LR_EINVAL, "adapter_config.json: '%s' item %zu must be "
                                "a string, not %s", key, i, json_kind(e));
    }
    return 0;
}

/* A key PEFT would act on in a way lorad cannot reproduce: present and non-empty
 * (true, non-empty list/object/string) means refuse. */
static int refuse_if_set(json_t *root, const char *key, const char *why, lr_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || json_is_false(v))
        return 0;
    if ((json_is_array(v) && json_array_size(v) == 0) ||
        (json_is_object(v) && json_object_size(v) == 0))
        return 0;
    return lr_error_set(err, LR_ENOTSUP, "adapter_config.json: %s is set (%s); %s", key,
                        json_is_true(v) ? "true" : json_kind(v), why);
}

/* target_modules / exclude_modules: null, a list of names, or a regex string. */
static int parse_module_selector(json_t *root, const char *key, json_t **list, pcre2_code **re,
                                 int *is_null, int *is_all, lr_error *err)
{
    json_t *v = json_object_get(root, key);
    *list = NULL;
    *re = NULL;
    *is_null = !v || json_is_null(v);
    if (is_all)
        *is_all = 0;
    if (*is_null)
        return 0;
    if (json_is_array(v)) {
        *list = v;
        return check_string_array(key, v, err);
    }
    if (!json_is_string(v))
        return wrong_type(key, "a list of module names or a regex string", v, err);
    if (is_all && strcmp(json_string_value(v), "all-linear") == 0) {
        /* PEFT's shorthand: every nn.Linear but the output layer — for a Llama-family
         * decoder, exactly the seven projections. */
        *is_all = 1;
        return 0;
    }
    /* Python's re.fullmatch */
    *re = re_compile(key, json_string_value(v), json_string_value(v),
                     PCRE2_ANCHORED | PCRE2_ENDANCHORED, err);
    return *re ? 0 : LR_EINVAL;
}

/* rank_pattern (want_int) or alpha_pattern: null or {regex-key: value}. */
static int parse_pattern(json_t *root, const char *key, int want_int, pattern_entry *out, int *n,
                         lr_error *err)
{
    json_t *obj = json_object_get(root, key), *v;
    const char *k;
    *n = 0;
    if (!obj || json_is_null(obj))
        return 0;
    if (!json_is_object(obj))
        return wrong_type(key, "an object", obj, err);
    if (json_object_size(obj) > PEFT_MAX_PATTERNS)
        return lr_error_set(err, LR_EINVAL, "adapter_config.json: '%s' has %zu keys (limit %d)",
                            key, json_object_size(obj), PEFT_MAX_PATTERNS);
    /* jansson keeps insertion order: the first matching key wins, as in PEFT */
    json_object_foreach(obj, k, v) {
        if (want_int ? !json_is_integer(v) || json_integer_value(v) <= 0 ||
                           json_integer_value(v) > INT_MAX
                     : !json_is_number(v) || !isfinite(json_number_value(v)))
            return lr_error_set(err, LR_EINVAL, "adapter_config.json: '%s' value for '%.60s' "
                                "must be %s", key, k,
                                want_int ? "a positive integer" : "a number");
        size_t len = strlen(k);
        char *pat = malloc(len + 16);
        if (!pat)
            return lr_error_set(err, LR_ENOMEM, "out of memory");
        snprintf(pat, len + 16, "(.*\\.)?(%s)$", k);
        out[*n].re = re_compile(key, k, pat, PCRE2_ANCHORED, err);
        free(pat);
        if (!out[*n].re)
            return LR_EINVAL;
        out[*n].key = k;
        out[*n].value = v;
        (*n)++;
    }
    return 0;
}

static int parse_layers(peft_config *c, int target_is_string, lr_error *err)
{
    json_t *v = json_object_get(c->root, "layers_to_transform");
    json_t *pat = json_object_get(c->root, "layers_pattern");
    if (pat && json_is_null(pat))
        pat = NULL;
    if (v && json_is_null(v))
        v = NULL;
    /* LoraConfig.__post_init__ refuses both with a regex target_modules */
    if (target_is_string && (v || pat))
        return lr_error_set(err, LR_EINVAL, "adapter_config.json: '%s' cannot be used when "
                            "target_modules is a string (PEFT refuses this too)",
                            v ? "layers_to_transform" : "layers_pattern");
    if (v) {
        if (json_is_integer(v)) {
            if (json_integer_value(v) < 0)
                return lr_error_set(err, LR_EINVAL, "adapter_config.json: "
                                    "'layers_to_transform' must not be negative");
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_integer(e) || json_integer_value(e) < 0)
                    return lr_error_set(err, LR_EINVAL, "adapter_config.json: "
                                        "'layers_to_transform' item %zu must be a layer index",
                                        i);
            }
        } else {
            return wrong_type("layers_to_transform", "a layer index or a list of them", v, err);
        }
        /* an empty list restricts nothing (PEFT's is_using_layer_indexes) */
        if (!json_is_array(v) || json_array_size(v) > 0)
            c->layers = v;
    }
    if (pat) {
        size_t n = 1;
        if (json_is_array(pat)) {
            if (check_string_array("layers_pattern", pat, err) < 0)
                return LR_EINVAL;
            n = json_array_size(pat);
        } else if (!json_is_string(pat)) {
            return wrong_type("layers_pattern", "a string or a list of strings", pat, err);
        }
        if (n > PEFT_MAX_PATTERNS)
            return lr_error_set(err, LR_EINVAL, "adapter_config.json: 'layers_pattern' has too "
                                "many items");
        for (size_t i = 0; i < n; i++) {
            const char *p = json_string_value(json_is_array(pat) ? json_array_get(pat, i) : pat);
            size_t len = strlen(p) + 24;
            char *full = malloc(len);
            if (!full)
                return lr_error_set(err, LR_ENOMEM, "out of memory");
            snprintf(full, len, ".*\\.%s\\.(\\d+)\\.", p);   /* PEFT: re.match */
            c->layer_re[c->n_layer_re] = re_compile("layers_pattern", p, full, PCRE2_ANCHORED,
                                                    err);
            free(full);
            if (!c->layer_re[c->n_layer_re])
                return LR_EINVAL;
            c->n_layer_re++;
        }
    }
    if (c->layers && c->n_layer_re == 0) {
        /* PEFT without layers_pattern: the number after any "name." segment */
        c->layer_re[0] = re_compile("layers_to_transform", "(default)", ".*\\.[^.]*\\.(\\d+)\\.",
                                    PCRE2_ANCHORED, err);
        if (!c->layer_re[0])
            return LR_EINVAL;
        c->n_layer_re = 1;
    }
    return 0;
}

/* Reads and checks dir/adapter_config.json into c (zeroed by the caller). */
static int config_load(const char *path, peft_config *c, lr_error *err)
{
    struct stat sb;
    json_error_t jerr;
    int rc;

    if (stat(path, &sb) < 0)
        return lr_error_set(err, LR_EINVAL, "missing %s (%s; not a PEFT adapter directory?)",
                            path, strerror(errno));
    if (!S_ISREG(sb.st_mode) || sb.st_size > PEFT_MAX_CONFIG_BYTES)
        return lr_error_set(err, LR_EINVAL, "%s is not a regular file of at most %d bytes",
                            path, PEFT_MAX_CONFIG_BYTES);
    c->root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!c->root)
        return lr_error_set(err, LR_EINVAL, "adapter_config.json is not valid JSON (line %d "
                            "column %d: %s)", jerr.line, jerr.column, jerr.text);
    json_t *root = c->root;
    if (!json_is_object(root))
        return lr_error_set(err, LR_EINVAL, "adapter_config.json must hold a JSON object, not %s",
                            json_kind(root));

    json_t *v = json_object_get(root, "peft_type");
    if (!v || !json_is_string(v))
        return lr_error_set(err, LR_EINVAL, "adapter_config.json: 'peft_type' %s (expected "
                            "\"LORA\")", v ? "must be a string" : "is missing");
    if (strcmp(json_string_value(v), "LORA") != 0)
        return lr_error_set(err, LR_ENOTSUP, "peft_type is '%.40s'; lorad serves LORA adapters "
                            "only", json_string_value(v));

    v = json_object_get(root, "r");
    c->r = 8;  /* LoraConfig default */
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > INT_MAX)
            return lr_error_set(err, LR_EINVAL, "adapter_config.json: 'r' must be a positive "
                                "integer");
        c->r = (int)json_integer_value(v);
    }
    v = json_object_get(root, "lora_alpha");
    c->alpha = 8;  /* LoraConfig default */
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return wrong_type("lora_alpha", "a number", v, err);
        c->alpha = json_number_value(v);
        /* peft_adapter.alpha is a float; modules' scales are checked where they are made */
        if (fabs(c->alpha) > FLT_MAX)
            return lr_error_set(err, LR_EINVAL, "adapter_config.json: 'lora_alpha' %g does not "
                                "fit in a float", c->alpha);
    }
    if ((rc = get_bool(root, "use_rslora", 0, &c->use_rslora, err)) < 0)
        return rc;

    v = json_object_get(root, "base_model_name_or_path");
    if (v && !json_is_null(v) && !json_is_string(v))
        return wrong_type("base_model_name_or_path", "a string", v, err);
    c->base_model = v && json_is_string(v) ? json_string_value(v) : "";

    /* What lorad cannot apply as W x + s·B(A x). */
    int flag = 0;
    if ((rc = get_bool(root, "use_dora", 0, &flag, err)) < 0)
        return rc;
    if (flag)
        return lr_error_set(err, LR_ENOTSUP, "use_dora is true: DoRA adapters rescale the "
                            "weight norm and are not supported; train a plain LoRA");
    if ((rc = get_bool(root, "fan_in_fan_out", 0, &flag, err)) < 0)
        return rc;
    if (flag)  /* what PEFT does for nn.Linear targets (dispatch_default) */
        log_warn("%s: fan_in_fan_out is true but Llama projections are nn.Linear; "
                 "ignoring it, as PEFT does", path);
    if ((rc = get_bool(root, "lora_bias", 0, &flag, err)) < 0)
        return rc;
    if (flag)
        return lr_error_set(err, LR_ENOTSUP, "lora_bias is true: a bias on lora_B is not "
                            "supported");
    v = json_object_get(root, "bias");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return wrong_type("bias", "a string", v, err);
        if (strcmp(json_string_value(v), "none") != 0)
            return lr_error_set(err, LR_ENOTSUP, "bias is '%.20s': adapters that train biases "
                                "are not supported (only \"none\")", json_string_value(v));
    }
    v = json_object_get(root, "modules_to_save");
    if (v && !json_is_null(v)) {
        if (!json_is_array(v))
            return wrong_type("modules_to_save", "a list", v, err);
        if (json_array_size(v) > 0) {
            json_t *first = json_array_get(v, 0);
            return lr_error_set(err, LR_ENOTSUP, "modules_to_save is not empty (%.40s%s): fully "
                                "trained modules cannot be served as a LoRA delta",
                                json_is_string(first) ? json_string_value(first) : "?",
                                json_array_size(v) > 1 ? ", ..." : "");
        }
    }
    if ((rc = refuse_if_set(root, "trainable_token_indices", "trained embedding rows are not "
                            "supported", err)) < 0 ||
        (rc = refuse_if_set(root, "layer_replication", "it changes the model's layer stack",
                            err)) < 0 ||
        (rc = refuse_if_set(root, "target_parameters", "LoRA on raw parameters is not "
                            "supported", err)) < 0 ||
        (rc = refuse_if_set(root, "alora_invocation_tokens", "activated LoRA is not supported",
                            err)) < 0 ||
        (rc = refuse_if_set(root, "use_qalora", "QALoRA is not supported", err)) < 0)
        return rc;
    v = json_object_get(root, "init_lora_weights");
    if (v && !json_is_null(v) && !json_is_boolean(v)) {
        if (!json_is_string(v))
            return wrong_type("init_lora_weights", "a boolean or a string", v, err);
        /* These initialisations rewrite the base weights; the adapter only fits that
         * rewritten base unless it was converted on save (which resets this to true). */
        static const char *const mutating[] = {"pissa", "olora", "corda", "loftq"};
        const char *s = json_string_value(v);
        for (size_t i = 0; i < sizeof mutating / sizeof *mutating; i++)
            if (strncmp(s, mutating[i], strlen(mutating[i])) == 0)
                return lr_error_set(err, LR_ENOTSUP, "init_lora_weights is '%.30s', which "
                                    "modifies the base weights; convert it to a plain LoRA "
                                    "(save_pretrained(path_initial_model_for_weight_conversion"
                                    "=...))", s);
    }

    int is_null, is_all;
    if ((rc = parse_module_selector(root, "target_modules", &c->target_list, &c->target_re,
                                    &is_null, &is_all, err)) < 0)
        return rc;
    c->target_kind = c->target_re ? TM_REGEX : is_all ? TM_ALL : TM_LIST;
    if (is_null) {
        /* PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for llama, mistral, qwen2 */
        c->default_targets = json_pack("[ss]", "q_proj", "v_proj");
        if (!c->default_targets)
            return lr_error_set(err, LR_ENOMEM, "out of memory");
        c->target_list = c->default_targets;
    }
    int unused;
    if ((rc = parse_module_selector(root, "exclude_modules", &c->exclude_list, &c->exclude_re,
                                    &unused, NULL, err)) < 0)
        return rc;
    if ((rc = parse_layers(c, !is_null && c->target_kind != TM_LIST, err)) < 0)
        return rc;
    if ((rc = parse_pattern(root, "rank_pattern", 1, c->rank_pat, &c->n_rank_pat, err)) < 0)
        return rc;
    if ((rc = parse_pattern(root, "alpha_pattern", 0, c->alpha_pat, &c->n_alpha_pat, err)) < 0)
        return rc;
    if (!(c->md = pcre2_match_data_create(8, NULL)))
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    return 0;
}

/* m ends with "." name, or is name (PEFT: key in target_modules or endswith). */
static bool name_in_list(const json_t *list, const char *m)
{
    size_t i, mlen = strlen(m);
    json_t *e;
    json_array_foreach(list, i, e) {
        const char *t = json_string_value(e);
        size_t tlen = strlen(t);
        if (strcmp(m, t) == 0 ||
            (mlen > tlen && m[mlen - tlen - 1] == '.' && strcmp(m + mlen - tlen, t) == 0))
            return true;
    }
    return false;
}

/* PEFT's check_target_module_exists for module m: 1 targeted, 0 not, negative on error. */
static int config_targets(const peft_config *c, const char *m, lr_error *err)
{
    int rc;
    if (c->exclude_re) {
        if ((rc = re_match(c->exclude_re, m, c->md, "exclude_modules", err)) != 0)
            return rc < 0 ? rc : 0;
    } else if (c->exclude_list && name_in_list(c->exclude_list, m)) {
        return 0;
    }
    if (c->target_kind == TM_REGEX)
        return re_match(c->target_re, m, c->md, "target_modules", err);
    if (c->target_kind == TM_LIST && !name_in_list(c->target_list, m))
        return 0;
    if (!c->layers)
        return 1;
    /* layers_to_transform: the layer index as PEFT's layers_pattern regexes find it */
    long idx = -1;
    for (int i = 0; i < c->n_layer_re && idx < 0; i++) {
        if ((rc = re_match(c->layer_re[i], m, c->md, "layers_pattern", err)) < 0)
            return rc;
        if (rc == 0)
            continue;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        if (pcre2_get_ovector_count(c->md) < 2 || ov[2] == PCRE2_UNSET)
            return 0;
        const char *d = m + ov[2];
        size_t len = ov[3] - ov[2];
        if (len == 0 || len > 9)
            return 0;
        idx = 0;
        for (size_t k = 0; k < len; k++) {
            if (d[k] < '0' || d[k] > '9')
                return 0;
            idx = idx * 10 + (d[k] - '0');
        }
    }
    if (idx < 0)
        return 0;
    if (json_is_integer(c->layers))
        return json_integer_value(c->layers) == idx;
    size_t i;
    json_t *e;
    json_array_foreach(c->layers, i, e) {
        if (json_integer_value(e) == idx)
            return 1;
    }
    return 0;
}

/* PEFT's get_pattern_key + dict.get: value of the first matching key, or NULL. */
static json_t *pattern_lookup(const peft_config *c, const pattern_entry *pat, int n,
                              const char *key, const char *m, lr_error *err, int *rc)
{
    *rc = 0;
    for (int i = 0; i < n; i++) {
        int r = re_match(pat[i].re, m, c->md, key, err);
        if (r < 0) {
            *rc = r;
            return NULL;
        }
        if (r > 0)
            return pat[i].value;
    }
    return NULL;
}

/* ---- tensor names ---- */

enum { LORA_A = 0, LORA_B = 1 };

typedef struct {
    int layer;
    int proj;
    int ab;     /* LORA_A / LORA_B */
} tensor_slot;

static const char *const proj_parent[PROJ_COUNT] = {
    [PROJ_Q] = "self_attn", [PROJ_K] = "self_attn", [PROJ_V] = "self_attn",
    [PROJ_O] = "self_attn", [PROJ_GATE] = "mlp", [PROJ_UP] = "mlp", [PROJ_DOWN] = "mlp",
};

/* Parses a tensor name into its slot, refusing what lorad cannot serve. max_layers is
 * the base's layer count, or 0 when there is no base. */
static int parse_tensor_name(const char *name, int max_layers, tensor_slot *s, lr_error *err)
{
    if (strstr(name, "lora_embedding_") || strstr(name, "embed_tokens"))
        return lr_error_set(err, LR_ENOTSUP, "tensor '%.100s' is an embedding LoRA; embedding "
                            "LoRA is not supported (only the attention and MLP projections)",
                            name);
    if (strstr(name, "lm_head"))
        return lr_error_set(err, LR_ENOTSUP, "tensor '%.100s' is an lm_head LoRA; LoRA on the "
                            "output layer is not supported", name);

    size_t plen = sizeof tensor_prefix - 1, llen = sizeof layers_prefix - 1;
    if (strncmp(name, tensor_prefix, plen) != 0 || strncmp(name + plen, layers_prefix, llen) != 0)
        goto unknown;
    const char *p = name + plen + llen;
    size_t nd = 0;
    while (p[nd] >= '0' && p[nd] <= '9')
        nd++;
    if (nd == 0 || p[nd] != '.' || (nd > 1 && p[0] == '0'))
        goto unknown;
    long layer = 0;
    for (size_t i = 0; i < nd && i < 10; i++)
        layer = layer * 10 + (p[i] - '0');
    long limit = max_layers > 0 ? max_layers : PEFT_MAX_INFERRED_LAYERS;
    if (nd > 9 || layer >= limit) {
        if (max_layers > 0)
            return lr_error_set(err, LR_EINVAL, "adapter has layers.%.*s but the base model has "
                                "%d layers (adapter made for another base model?)", (int)nd, p,
                                max_layers);
        return lr_error_set(err, LR_EINVAL, "adapter has layers.%.*s; lorad accepts at most %d "
                            "layers", (int)nd, p, PEFT_MAX_INFERRED_LAYERS);
    }
    p += nd + 1;

    /* "<parent>.<proj>.lora_X.weight" */
    const char *dot1 = strchr(p, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot2)
        goto unknown;
    const char *tail = dot2 + 1;
    int ab;
    if (strcmp(tail, "lora_A.weight") == 0)
        ab = LORA_A;
    else if (strcmp(tail, "lora_B.weight") == 0)
        ab = LORA_B;
    else
        goto unknown;
    char parent[32], proj[32];
    size_t n1 = (size_t)(dot1 - p), n2 = (size_t)(dot2 - dot1 - 1);
    if (n1 == 0 || n1 >= sizeof parent || n2 == 0 || n2 >= sizeof proj)
        goto module;
    memcpy(parent, p, n1);
    parent[n1] = '\0';
    memcpy(proj, dot1 + 1, n2);
    proj[n2] = '\0';
    int pj = model_proj_from_name(proj);
    if (pj < 0 || strcmp(parent, proj_parent[pj]) != 0)
        goto module;
    s->layer = (int)layer;
    s->proj = pj;
    s->ab = ab;
    return 0;

module:
    return lr_error_set(err, LR_EINVAL, "tensor '%.100s' targets module %.*s, which a "
                        "Llama-family base does not have (adapter made for another "
                        "architecture?)", name, (int)(strlen(name) - plen - strlen(".lora_A.weight")),
                        name + plen);
unknown:
    return lr_error_set(err, LR_EINVAL, "unrecognized tensor '%.100s' (expected "
                        "base_model.model.model.layers.N.{self_attn,mlp}.<proj>.lora_{A,B}.weight)",
                        name);
}

/* ---- loading ---- */

/* Non-finite values anywhere in x? One branch-free pass; the fixed-length inner loop is
 * what GCC's -O2 (very cheap cost model) agrees to vectorise. */
static bool all_finite(const float *x, size_t n)
{
    int bad = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            bad |= !isfinite(x[i + (size_t)j]);
    for (; i < n; i++)
        bad |= !isfinite(x[i]);
    return !bad;
}

static int report_nonfinite(const float *x, size_t n, const char *what, lr_error *err)
{
    size_t i = 0;
    while (i < n && isfinite(x[i]))
        i++;
    return lr_error_set(err, LR_EINVAL, "%s contains %s at element %zu (a diverged training "
                        "run?)", what, i < n && isnan(x[i]) ? "NaN" : "Inf", i);
}

/* Symbolic sizes for the self-consistency check without a base model. */
enum { DIM_HIDDEN, DIM_Q, DIM_KV, DIM_INTER, DIM_COUNT };
static const int proj_dims[PROJ_COUNT][2] = {  /* {out, in} */
    [PROJ_Q] = {DIM_Q, DIM_HIDDEN},       [PROJ_K] = {DIM_KV, DIM_HIDDEN},
    [PROJ_V] = {DIM_KV, DIM_HIDDEN},      [PROJ_O] = {DIM_HIDDEN, DIM_Q},
    [PROJ_GATE] = {DIM_INTER, DIM_HIDDEN}, [PROJ_UP] = {DIM_INTER, DIM_HIDDEN},
    [PROJ_DOWN] = {DIM_HIDDEN, DIM_INTER},
};
static const char *const dim_names[DIM_COUNT] = {"hidden size", "query width", "key/value width",
                                                 "intermediate size"};

typedef struct {
    int64_t size;
    char where[PEFT_MODULE_MAX];   /* first module that fixed it */
} dim_seen;

/* Records or checks symbolic dimension d (no-base mode). */
static int check_dim(dim_seen *seen, int d, int64_t size, const char *where, lr_error *err)
{
    if (seen[d].size == 0) {
        seen[d].size = size;
        snprintf(seen[d].where, sizeof seen[d].where, "%s", where);
        return 0;
    }
    if (seen[d].size == size)
        return 0;
    return lr_error_set(err, LR_EINVAL, "%s implies %s %lld but %s implies %lld (tensors from "
                        "different models?)", where, dim_names[d], (long long)size,
                        seen[d].where, (long long)seen[d].size);
}

/* Validates one (layer, proj) pair and converts it into *m. mod is "layers.L.parent.proj". */
static int load_matrix(const peft_config *c, const model_config *base, const peft_options *opt,
                       const safetensors *st, int layer, int proj, const st_tensor *ta,
                       const st_tensor *tb,
                       dim_seen *seen, lora_weights *w, lora_matrix *m, lr_error *err)
{
    char module[PEFT_MODULE_MAX], what[PEFT_MODULE_MAX + 8];
    const char *mod;
    int rc;

    snprintf(module, sizeof module, "%s%d.%s.%s", layers_prefix, layer, proj_parent[proj],
             model_proj_name((model_proj)proj));
    mod = module + strlen("model.");  /* "layers.3.self_attn.q_proj" in messages */
    if (!ta || !tb)
        return lr_error_set(err, LR_EINVAL, "%s has lora_%c but no lora_%c (incomplete file?)",
                            mod, ta ? 'A' : 'B', ta ? 'B' : 'A');
    if ((rc = config_targets(c, module, err)) < 0)
        return rc;
    if (rc == 0)
        return lr_error_set(err, LR_EINVAL, "the file has LoRA tensors for %s but "
                            "adapter_config.json's target_modules/exclude_modules/"
                            "layers_to_transform do not select it (inconsistent config)", mod);

    int r = c->r;
    double alpha = c->alpha;
    json_t *v = pattern_lookup(c, c->rank_pat, c->n_rank_pat, "rank_pattern", module, err, &rc);
    if (rc < 0)
        return rc;
    if (v)
        r = (int)json_integer_value(v);
    v = pattern_lookup(c, c->alpha_pat, c->n_alpha_pat, "alpha_pattern", module, err, &rc);
    if (rc < 0)
        return rc;
    if (v)
        alpha = json_number_value(v);
    if (r > opt->max_rank)
        return lr_error_set(err, LR_EINVAL, "%s has rank %d, above the limit of %d (max_rank)",
                            mod, r, opt->max_rank);
    /* A scale that overflows a float (or merely an absurd one) would turn every output of
     * the adapter into Inf/NaN: refused here, before any weight is converted. */
    double scale = c->use_rslora ? alpha / sqrt((double)r) : alpha / (double)r;
    if (!isfinite(scale) || fabs(scale) > PEFT_MAX_SCALE)
        return lr_error_set(err, LR_EINVAL, "%s: scale %g = %s %g / %sr=%d is out of range "
                            "(|s| <= %g)", mod, scale, v ? "alpha_pattern" : "lora_alpha",
                            alpha, c->use_rslora ? "sqrt " : "", r, PEFT_MAX_SCALE);

    const st_tensor *t[2] = {ta, tb};
    for (int k = 0; k < 2; k++) {
        if (t[k]->dtype != ST_F32 && t[k]->dtype != ST_F16 && t[k]->dtype != ST_BF16)
            return lr_error_set(err, LR_ENOTSUP, "%s lora_%c has dtype %s; lorad reads F32, F16 "
                                "and BF16", mod, "AB"[k], st_dtype_name(t[k]->dtype));
        if (t[k]->ndim != 2)
            return lr_error_set(err, LR_EINVAL, "%s lora_%c has %d dimensions, expected 2", mod,
                                "AB"[k], t[k]->ndim);
    }
    int64_t a0 = ta->shape[0], a1 = ta->shape[1], b0 = tb->shape[0], b1 = tb->shape[1];
    int64_t out, in;
    if (base) {
        int o, i;
        model_config_proj_shape(base, (model_proj)proj, &o, &i);
        out = o;
        in = i;
        if (a1 != in)
            return lr_error_set(err, LR_EINVAL, "%s lora_A is [%lld,%lld], base expects [%d,%lld] "
                                "(adapter made for another base model?)", mod, (long long)a0,
                                (long long)a1, r, (long long)in);
        if (b0 != out)
            return lr_error_set(err, LR_EINVAL, "%s lora_B is [%lld,%lld], base expects [%lld,%d] "
                                "(adapter made for another base model?)", mod, (long long)b0,
                                (long long)b1, (long long)out, r);
    } else {
        out = b0;
        in = a1;
        if (out <= 0 || in <= 0 || out > INT_MAX || in > INT_MAX)
            return lr_error_set(err, LR_EINVAL, "%s has empty or huge lora_A/lora_B "
                                "([%lld,%lld], [%lld,%lld])", mod, (long long)a0, (long long)a1,
                                (long long)b0, (long long)b1);
        if ((rc = check_dim(seen, proj_dims[proj][0], out, mod, err)) < 0 ||
            (rc = check_dim(seen, proj_dims[proj][1], in, mod, err)) < 0)
            return rc;
    }
    if (a0 != r)
        return lr_error_set(err, LR_EINVAL, "%s lora_A is [%lld,%lld] but adapter_config.json "
                            "gives this module r=%d, so [%d,%lld] was expected (config and "
                            "weights disagree)", mod, (long long)a0, (long long)a1, r, r,
                            (long long)in);
    if (b1 != r)
        return lr_error_set(err, LR_EINVAL, "%s lora_B is [%lld,%lld] but adapter_config.json "
                            "gives this module r=%d, so [%lld,%d] was expected (config and "
                            "weights disagree)", mod, (long long)b0, (long long)b1, r,
                            (long long)out, r);

    /* One allocation per tensor, one conversion pass, one finiteness pass; B goes through
     * a temporary to be stored transposed, and A through one to be laid out in panels
     * when its rank allows (lora.h). */
    size_t na = (size_t)r * (size_t)in, nb = (size_t)out * (size_t)r;
    if (!m->a)  /* peft_load places A and B in the arena beforehand; this is a fallback */
        m->a = lora_weights_alloc(w, na);
    if (!m->bt)
        m->bt = lora_weights_alloc(w, nb);
    m->a_type = lora_a_type(r);
    float *b = malloc((m->a_type == WT_F32P && na > nb ? na : nb) * sizeof(float));
    if (!m->a || !m->bt || !b) {
        free(b);
        return lr_error_set(err, LR_ENOMEM, "%s: out of memory for %zu floats", mod, na + nb);
    }
    m->r = r;
    /* the file's A: read into place, or into b until it is laid out in panels */
    float *fa = m->a_type == WT_F32P ? b : m->a;
    if ((rc = st_tensor_read_f32(st, ta, fa, err)) < 0) {
        free(b);
        return rc;
    }
    if (!all_finite(fa, na)) {
        free(b);
        snprintf(what, sizeof what, "%s lora_A", mod);
        return report_nonfinite(fa, na, what, err);
    }
    if (m->a_type == WT_F32P)
        wtensor_from_f32(WT_F32P, fa, r, in, m->a, NULL);
    if ((rc = st_tensor_read_f32(st, tb, b, err)) < 0) {
        free(b);
        return rc;
    }
    if (!all_finite(b, nb)) {
        snprintf(what, sizeof what, "%s lora_B", mod);
        rc = report_nonfinite(b, nb, what, err);
        free(b);
        return rc;
    }
    /* In blocks of 16 outputs: the 16 rows of b read stay in L1 and each row of bt is
     * written 16 floats at a time (element by element, the writes' stride of `out` floats
     * made this loop most of the load's own time). */
    for (int64_t o0 = 0; o0 < out; o0 += 16) {
        int64_t o1 = o0 + 16 < out ? o0 + 16 : out;
        for (int j = 0; j < r; j++) {
            float *dst = m->bt + (size_t)j * (size_t)out;
            for (int64_t o = o0; o < o1; o++)
                dst[o] = b[(size_t)o * (size_t)r + (size_t)j];
        }
    }
    free(b);
    m->scale = (float)scale;
    return 0;
}

peft_options peft_options_default(void)
{
    peft_options o = {.max_rank = 256};
    return o;
}

/* dir shortened for messages (the error record is 256 bytes). */
static void show_dir(char *dst, size_t cap, const char *dir)
{
    size_t len = strlen(dir);
    if (len < cap)
        snprintf(dst, cap, "%s", dir);
    else
        snprintf(dst, cap, "...%s", dir + len - (cap - 4));
}

peft_adapter *peft_load(const char *dir, const model_config *base, const peft_options *opt,
                        lr_error *err)
{
    peft_config cfg;
    peft_adapter *a = NULL;
    safetensors *st = NULL;
    tensor_slot *slots = NULL;
    const st_tensor **table = NULL;   /* [n_layers * PROJ_COUNT][2]: A, B */
    char path[4200], shown[72];
    struct stat sb;
    int rc = 0;
    peft_options defaults = peft_options_default();

    memset(&cfg, 0, sizeof cfg);
    if (!opt)
        opt = &defaults;
    if (!dir || !dir[0]) {
        lr_error_set(err, LR_EINVAL, "peft_load: no adapter directory given");
        return NULL;
    }
    show_dir(shown, sizeof shown, dir);
    if (strlen(dir) >= sizeof a->path) {
        rc = lr_error_set(err, LR_EINVAL, "directory path too long");
        goto fail;
    }
    if (stat(dir, &sb) < 0) {
        rc = lr_error_set(err, LR_ENOTFOUND, "cannot open the directory: %s", strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(sb.st_mode)) {
        rc = lr_error_set(err, LR_EINVAL, "not a directory");
        goto fail;
    }
    if (base && (base->n_layers <= 0 || base->hidden <= 0 || base->intermediate <= 0 ||
                 base->n_heads <= 0 || base->n_kv_heads <= 0 || base->head_dim <= 0)) {
        rc = lr_error_set(err, LR_EINVAL, "base model config has non-positive sizes");
        goto fail;
    }

    snprintf(path, sizeof path, "%s/%s", dir, PEFT_CONFIG_FILE);
    if ((rc = config_load(path, &cfg, err)) < 0)
        goto fail;

    snprintf(path, sizeof path, "%s/%s", dir, PEFT_WEIGHTS_FILE);
    if (stat(path, &sb) < 0) {
        char bin[4200];
        snprintf(bin, sizeof bin, "%s/%s", dir, PEFT_PICKLE_FILE);
        if (stat(bin, &sb) == 0)
            rc = lr_error_set(err, LR_ENOTSUP, "pickle adapter_model.bin is not supported (it "
                              "can run code); convert it to safetensors");
        else
            rc = lr_error_set(err, LR_EINVAL, "missing %s", path);
        goto fail;
    }
    /* Read, not mapped: every tensor is read once, right now (see safetensors.h). */
    if (!(st = safetensors_open_unmapped(path, err))) {
        rc = err ? err->code : LR_EINVAL;
        goto fail;
    }

    /* Pass 1: names → slots, and the layer count. */
    int n = safetensors_count(st);
    int n_layers = base ? base->n_layers : 0;
    if (n == 0) {
        rc = lr_error_set(err, LR_EINVAL, "%s holds no tensors", PEFT_WEIGHTS_FILE);
        goto fail;
    }
    if (!(slots = malloc((size_t)n * sizeof *slots))) {
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        if ((rc = parse_tensor_name(safetensors_at(st, i)->name, base ? base->n_layers : 0,
                                    &slots[i], err)) < 0)
            goto fail;
        if (!base && slots[i].layer + 1 > n_layers)
            n_layers = slots[i].layer + 1;
    }
    if (!(table = calloc((size_t)n_layers * PROJ_COUNT * 2, sizeof *table))) {
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++)
        table[((size_t)slots[i].layer * PROJ_COUNT + (size_t)slots[i].proj) * 2 + slots[i].ab] =
            safetensors_at(st, i);

    if (!(a = calloc(1, sizeof *a)) || !(a->w = lora_weights_new(n_layers))) {
        rc = lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    snprintf(a->path, sizeof a->path, "%s", dir);
    snprintf(a->base_model, sizeof a->base_model, "%s", cfg.base_model);
    a->r = cfg.r;
    a->alpha = (float)cfg.alpha;
    a->use_rslora = cfg.use_rslora;

    /* Pass 2: validate and convert each (layer, proj) pair. */
    dim_seen seen[DIM_COUNT];
    memset(seen, 0, sizeof seen);
    int dtype = -1;
    /* One arena for every A and B, in the order the forward pass reads them. */
    size_t total = 0;
    for (size_t i = 0; i < (size_t)n_layers * PROJ_COUNT * 2; i++)
        if (table[i] && table[i ^ 1])
            total += ((size_t)table[i]->numel + 15) & ~(size_t)15;
    if (lora_weights_reserve(a->w, total) < 0) {
        rc = lr_error_set(err, LR_ENOMEM, "adapter '%s': out of memory for %zu MB of weights",
                          shown, total * sizeof(float) >> 20);
        goto fail;
    }
    /* Per layer: every A (q, k, v, o, gate, up, down), then every B. Projections that
     * share an input (q/k/v, gate/up) then have their A's back to back, so the forward
     * pass computes X·Aᵀ for the group in one product (variant_apply_group). */
    for (int l = 0; l < n_layers; l++)
        for (int ab = LORA_A; ab <= LORA_B; ab++)
            for (int p = 0; p < PROJ_COUNT; p++) {
                const st_tensor *ta = table[((size_t)l * PROJ_COUNT + (size_t)p) * 2 + LORA_A];
                const st_tensor *tb = table[((size_t)l * PROJ_COUNT + (size_t)p) * 2 + LORA_B];
                if (!ta || !tb)
                    continue;
                lora_matrix *m = lora_weights_at(a->w, l, (model_proj)p);
                if (ab == LORA_A)
                    m->a = lora_weights_alloc(a->w, (size_t)ta->numel);
                else
                    m->bt = lora_weights_alloc(a->w, (size_t)tb->numel);
            }
    for (int l = 0; l < n_layers; l++) {
        for (int p = 0; p < PROJ_COUNT; p++) {
            const st_tensor *ta = table[((size_t)l * PROJ_COUNT + (size_t)p) * 2 + LORA_A];
            const st_tensor *tb = table[((size_t)l * PROJ_COUNT + (size_t)p) * 2 + LORA_B];
            if (!ta && !tb)
                continue;
            lora_matrix *m = lora_weights_at(a->w, l, (model_proj)p);
            if ((rc = load_matrix(&cfg, base, opt, st, l, p, ta, tb, seen, a->w, m, err)) < 0)
                goto fail;
            a->proj_mask |= 1u << p;
            a->n_matrices++;
            a->w->bytes += ((size_t)m->r * (size_t)ta->shape[1] +
                            (size_t)tb->shape[0] * (size_t)m->r) * sizeof(float);
            if (m->r > a->w->max_rank)
                a->w->max_rank = m->r;
            for (int k = 0; k < 2; k++) {
                int dt = (int)(k ? tb : ta)->dtype;
                dtype = dtype == -1 || dtype == dt ? dt : -2;
            }
        }
    }
    snprintf(a->dtype, sizeof a->dtype, "%s", dtype == -2 ? "mixed"
                                              : st_dtype_name((st_dtype)dtype));
    log_info("adapter '%s': %d LoRA matrices over %d layers, r=%d, %s, %zu bytes", shown,
             a->n_matrices, n_layers, cfg.r, a->dtype, a->w->bytes);

    free(table);
    free(slots);
    safetensors_close(st);
    config_release(&cfg);
    return a;

fail:
    if (err && rc < 0)
        lr_error_prefix(err, "adapter '%s'", shown);
    free(table);
    free(slots);
    safetensors_close(st);
    config_release(&cfg);
    peft_free(a);
    return NULL;
}

void peft_free(peft_adapter *a)
{
    if (!a)
        return;
    lora_weights_free(a->w);
    free(a);
}

json_t *peft_describe(const peft_adapter *a)
{
    if (!a)
        return NULL;
    json_t *mods = json_array();
    if (!mods)
        return NULL;
    for (int p = 0; p < PROJ_COUNT; p++)
        if ((a->proj_mask & (1u << p)) &&
            json_array_append_new(mods, json_string(model_proj_name((model_proj)p))) < 0) {
            json_decref(mods);
            return NULL;
        }
    /* "o" steals mods, also on failure */
    return json_pack("{s:s, s:s, s:s, s:i, s:f, s:b, s:s, s:o, s:i, s:i, s:I}",
                     "type", "lora", "path", a->path, "base_model", a->base_model,
                     "r", a->r, "lora_alpha", (double)a->alpha, "use_rslora", a->use_rslora,
                     "dtype", a->dtype, "target_modules", mods,
                     "layers", a->w ? a->w->n_layers : 0, "matrices", a->n_matrices,
                     "bytes", (json_int_t)(a->w ? a->w->bytes : 0));
}
