/* lorad command line: generate, inspect, merge. Only this file exits. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "core/blas.h"
#include "core/engine.h"
#include "core/hugemem.h"
#include "core/log.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"
#include "core/variant.h"
#include "server/generation.h"
#include "server/serve.h"

static const char usage[] =
    "usage:\n"
    "  lorad generate --model DIR [--adapter PATH[:WEIGHT]]... [--merge]\n"
    "                 (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]\n"
    "                 [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                 [--logprobs K] [--stop STR]... [--ignore-eos] [--max-rank R]\n"
    "                 [--weights f32|bf16|q8] [--place-pages yes|no] [--json] [-v]\n"
    "  lorad inspect PATH          model dir or adapter dir: JSON description\n"
    "  lorad merge --model DIR --adapter PATH[:WEIGHT]... --out DIR [--max-rank R]\n"
    "              [--weights f32|bf16]\n"
    "  lorad serve --model DIR [options]   the OpenAI-compatible daemon (lorad serve --help)\n";

static int fail(const char *what, const lr_error *err)
{
    fprintf(stderr, "lorad: %s%s%s\n", what ? what : "", what ? ": " : "", err->msg);
    return 1;
}

static int bad_arg(const char *fmt, const char *arg)
{
    fprintf(stderr, "lorad: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage);
    return 2;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* "yes" -> 1, "no" -> 0 (the --place-pages values of generate and serve); -1 otherwise */
static int parse_yes_no(const char *s, int *out)
{
    if (strcmp(s, "yes") != 0 && strcmp(s, "no") != 0)
        return -1;
    *out = strcmp(s, "yes") == 0;
    return 0;
}

static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return -1;
    *out = (float)v;
    return 0;
}

/* "1,2,3" → ids (malloc'd). */
static int parse_ids(const char *s, int **ids, int *n)
{
    int cap = 16, k = 0;
    int *v = malloc(sizeof(int) * cap);
    if (!v)
        return -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        if (k == cap) {
            int *t = realloc(v, sizeof(int) * (cap *= 2));
            if (!t) {
                free(v);
                return -1;
            }
            v = t;
        }
        v[k++] = (int)x;
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p) {
            free(v);
            return -1;
        }
    }
    if (k == 0) {
        free(v);
        return -1;
    }
    *ids = v;
    *n = k;
    return 0;
}

/* --adapter PATH[:WEIGHT]: the weight is what follows the last ':' when it is a number. */
static void split_adapter(const char *arg, char *path, size_t cap, float *weight)
{
    *weight = 1.0f;
    snprintf(path, cap, "%s", arg);
    char *colon = strrchr(path, ':');
    float w;
    if (colon && parse_float(colon + 1, &w) == 0) {
        *colon = '\0';
        *weight = w;
    }
}

#define MAX_ADAPTERS VARIANT_MAX_TERMS

typedef struct {
    const char *model_dir;
    const char *adapters[MAX_ADAPTERS];
    int n_adapters;
    int merge;
    const char *prompt;
    const char *prompt_ids;
    long max_tokens;
    sampler_params sp;
    long logprobs;
    const char *stop[GENERATION_MAX_STOP];
    int n_stop;
    int ignore_eos;
    int json;
    const char *out_dir;
    long max_rank;
    int weights;      /* MODEL_WEIGHTS_AUTO or a wt_type */
    int place;        /* generate --place-pages yes (hugemem.h); merge never places */
} cli_args;

/* Parses the options shared by generate and merge. Returns 0, or an exit code. */
static int parse_args(int argc, char **argv, cli_args *a, int is_merge)
{
    memset(a, 0, sizeof *a);
    a->max_tokens = 64;
    a->sp.top_p = 1.0f;
    a->max_rank = peft_options_default().max_rank;
    a->weights = MODEL_WEIGHTS_AUTO;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        int has = i + 1 < argc;
        const char *v = has ? argv[i + 1] : NULL;
        long x;
        if (strcmp(o, "-v") == 0) {
            log_level = LOG_LEVEL_INFO;
            continue;
        }
        if (strcmp(o, "--merge") == 0 && !is_merge) {
            a->merge = 1;
            continue;
        }
        if (strcmp(o, "--json") == 0 && !is_merge) {
            a->json = 1;
            continue;
        }
        if (strcmp(o, "--ignore-eos") == 0 && !is_merge) {
            a->ignore_eos = 1;
            continue;
        }
        if (!has)
            return bad_arg("option %s needs a value (or is unknown)", o);
        i++;
        if (strcmp(o, "--model") == 0) {
            a->model_dir = v;
        } else if (strcmp(o, "--adapter") == 0) {
            if (a->n_adapters == MAX_ADAPTERS)
                return bad_arg("at most %s adapters", "8");
            a->adapters[a->n_adapters++] = v;
        } else if (strcmp(o, "--max-rank") == 0) {
            if (parse_long(v, 1, 1 << 16, &a->max_rank))
                return bad_arg("--max-rank must be a positive integer, got '%s'", v);
        } else if (strcmp(o, "--weights") == 0) {
            wt_type t;
            if (wtensor_type_parse(v, &t))
                return bad_arg("--weights must be f32, bf16 or q8, got '%s'", v);
            /* a safetensors file has no 8-bit block format Hugging Face loaders read */
            if (is_merge && t == WT_Q8)
                return bad_arg("merge writes f32 or bf16 (safetensors has no q8 format "
                               "transformers reads), got '%s'", v);
            a->weights = (int)t;
        } else if (!is_merge && strcmp(o, "--place-pages") == 0) {
            if (parse_yes_no(v, &a->place))
                return bad_arg("--place-pages must be yes or no, got '%s'", v);
        } else if (is_merge && strcmp(o, "--out") == 0) {
            a->out_dir = v;
        } else if (is_merge) {
            return bad_arg("unknown option %s", o);
        } else if (strcmp(o, "--prompt") == 0) {
            a->prompt = v;
        } else if (strcmp(o, "--prompt-ids") == 0) {
            a->prompt_ids = v;
        } else if (strcmp(o, "--max-tokens") == 0) {
            if (parse_long(v, 1, 1 << 24, &a->max_tokens))
                return bad_arg("--max-tokens must be a positive integer, got '%s'", v);
        } else if (strcmp(o, "--temperature") == 0) {
            if (parse_float(v, &a->sp.temperature) || a->sp.temperature < 0)
                return bad_arg("--temperature must be a number >= 0, got '%s'", v);
        } else if (strcmp(o, "--top-k") == 0) {
            if (parse_long(v, 0, INT_MAX, &x))
                return bad_arg("--top-k must be an integer >= 0, got '%s'", v);
            a->sp.top_k = (int)x;
        } else if (strcmp(o, "--top-p") == 0) {
            if (parse_float(v, &a->sp.top_p) || !(a->sp.top_p > 0 && a->sp.top_p <= 1))
                return bad_arg("--top-p must be in (0, 1], got '%s'", v);
        } else if (strcmp(o, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-')
                return bad_arg("--seed must be a non-negative integer, got '%s'", v);
            a->sp.seed = s;
        } else if (strcmp(o, "--logprobs") == 0) {
            if (parse_long(v, 0, ENGINE_MAX_LOGPROBS, &a->logprobs))
                return bad_arg("--logprobs must be an integer in [0, 20], got '%s'", v);
        } else if (strcmp(o, "--stop") == 0) {
            if (a->n_stop == GENERATION_MAX_STOP)
                return bad_arg("at most %s stop strings", "8");
            if (!*v)
                return bad_arg("--stop needs a non-empty string%s", "");
            a->stop[a->n_stop++] = v;
        } else {
            return bad_arg("unknown option %s", o);
        }
    }
    if (!a->model_dir)
        return bad_arg("--model DIR is required%s", "");
    return 0;
}

typedef struct {
    peft_adapter *ad[MAX_ADAPTERS];
    variant_mix mix;
} loaded_adapters;

static void adapters_free(loaded_adapters *la)
{
    for (int i = 0; i < la->mix.n; i++)
        peft_free(la->ad[i]);
    la->mix.n = 0;
}

static int adapters_load(const cli_args *a, const model *m, loaded_adapters *la, lr_error *err)
{
    memset(la, 0, sizeof *la);
    peft_options opt = peft_options_default();
    opt.max_rank = (int)a->max_rank;
    for (int i = 0; i < a->n_adapters; i++) {
        char path[4096];
        float w;
        split_adapter(a->adapters[i], path, sizeof path, &w);
        peft_adapter *ad = peft_load(path, &m->cfg, &opt, err);
        if (!ad) {
            adapters_free(la);
            return -1;
        }
        la->ad[i] = ad;
        la->mix.t[i].w = ad->w;
        la->mix.t[i].weight = w;
        la->mix.n = i + 1;
    }
    return 0;
}

static void print_text(void *user, const char *text, size_t len)
{
    (void)user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

static int cmd_generate(int argc, char **argv)
{
    cli_args a;
    int rc = parse_args(argc, argv, &a, 0);
    if (rc)
        return rc;
    if (!!a.prompt == !!a.prompt_ids)
        return bad_arg("give exactly one of --prompt TEXT or --prompt-ids 1,2,3%s", "");

    lr_error err = {0};
    model *m = NULL;
    tokenizer *tok = NULL;
    loaded_adapters la = {0};
    variant *merged = NULL;
    engine *e = NULL;
    generation *g = NULL;
    int *ids = NULL;
    int n_ids = 0;
    rc = 1;

    /* Placing the pages of W (and of a --merge W') costs 0.2-5 s at start-up for ~5% on
     * each token (README "Page placement"): the daemon's trade, not a one-shot run's
     * unless asked for. */
    huge_place_enable(a.place);
    if (!(m = model_load_with(a.model_dir, &(model_load_opts){a.weights, NULL, NULL}, &err)))
        goto out_err;
    char tpath[4096 + 32];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", a.model_dir);
    if (access(tpath, F_OK) == 0) {
        if (!(tok = tokenizer_load(a.model_dir, &err))) {
            if (a.prompt || a.n_stop)
                goto out_err;
            log_warn("%s; output text disabled", err.msg);
        }
    } else if (a.prompt || a.n_stop) {
        lr_error_set(&err, LR_ENOTFOUND, "%s: not found (--prompt and --stop need the "
                     "tokenizer; use --prompt-ids)", tpath);
        goto out_err;
    }
    if (a.prompt) {
        size_t n = 0;
        if (tokenizer_encode(tok, a.prompt, strlen(a.prompt), 1, &ids, &n, &err))
            goto out_err;
        n_ids = (int)n;
    } else if (parse_ids(a.prompt_ids, &ids, &n_ids)) {
        rc = bad_arg("--prompt-ids must be comma-separated token ids, got '%s'", a.prompt_ids);
        goto out;
    }
    if (adapters_load(&a, m, &la, &err))
        goto out_err;
    if (a.merge && la.mix.n && !(merged = variant_merge(m, &la.mix, &err)))
        goto out_err;

    engine_options eo = engine_options_default();
    eo.max_seqs = 1;
    if (!(e = engine_create(m, &eo, &err)))
        goto out_err;
    generation_options go = {.tok = tok, .n_stop = a.n_stop,
                             .on_text = a.json ? NULL : print_text};
    memcpy(go.stop, a.stop, sizeof a.stop);
    if (!(g = generation_new(&go, &err)))
        goto out_err;
    engine_request req = {
        .prompt = ids, .n_prompt = n_ids, .max_tokens = (int)a.max_tokens, .sampling = a.sp,
        .logprobs = (int)a.logprobs, .ignore_eos = a.ignore_eos,
        .merged = merged, .lora = merged || !la.mix.n ? NULL : &la.mix};
    generation_attach(g, &req);
    if (engine_submit(e, &req, NULL, &err))
        goto out_err;
    while (engine_step(e, &err) > 0)
        ;
    if (generation_finish_reason(g) == ENGINE_FINISH_ERROR) {
        err = *generation_error(g);
        goto out_err;
    }

    int n_tok;
    const engine_token *toks = generation_tokens(g, &n_tok);
    if (!a.json) {
        if (!tok) {
            for (int i = 0; i < n_tok; i++)
                printf("%s%d", i ? " " : "", toks[i].id);
        }
        printf("\n");
        rc = 0;
        goto out;
    }
    json_t *o = json_object(), *pj = json_array(), *gj = json_array();
    for (int i = 0; i < n_ids; i++)
        json_array_append_new(pj, json_integer(ids[i]));
    for (int i = 0; i < n_tok; i++)
        json_array_append_new(gj, json_integer(toks[i].id));
    json_object_set_new(o, "prompt_ids", pj);
    json_object_set_new(o, "ids", gj);
    size_t tlen;
    const char *text = generation_text(g, &tlen);
    json_object_set_new(o, "text", json_stringn(text, tlen));
    json_object_set_new(o, "finish_reason", json_string(
        generation_finish_reason(g) == ENGINE_FINISH_STOP ? "stop" : "length"));
    if (a.logprobs) {
        json_t *lp = json_array();
        for (int i = 0; i < n_tok; i++) {
            json_t *t = json_object(), *top = json_array();
            json_object_set_new(t, "id", json_integer(toks[i].id));
            json_object_set_new(t, "logprob", json_real(toks[i].logprob));
            for (int k = 0; k < toks[i].n_top; k++) {
                json_t *alt = json_object();
                json_object_set_new(alt, "id", json_integer(toks[i].top_ids[k]));
                json_object_set_new(alt, "logprob", json_real(toks[i].top_logprobs[k]));
                json_array_append_new(top, alt);
            }
            json_object_set_new(t, "top", top);
            json_array_append_new(lp, t);
        }
        json_object_set_new(o, "logprobs", lp);
    }
    json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    printf("\n");
    json_decref(o);
    rc = 0;
    goto out;
out_err:
    rc = fail(NULL, &err);
out:
    generation_free(g);
    engine_destroy(e);
    variant_free(merged);
    adapters_free(&la);
    free(ids);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}

static int is_file(const char *dir, const char *name)
{
    char p[4096 + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int cmd_inspect(int argc, char **argv)
{
    if (argc != 3)
        return bad_arg("inspect takes exactly one PATH%s", "");
    const char *path = argv[2];
    lr_error err = {0};
    json_t *o = NULL;
    if (is_file(path, "adapter_config.json") || is_file(path, "adapter_model.safetensors") ||
        is_file(path, "adapter_model.bin")) {
        peft_adapter *ad = peft_load(path, NULL, NULL, &err);
        if (!ad)
            return fail(NULL, &err);
        o = peft_describe(ad);
        peft_free(ad);
    } else if (is_file(path, "config.json")) {
        model *m = model_load(path, &err);
        if (!m)
            return fail(NULL, &err);
        const model_config *c = &m->cfg;
        o = json_object();
        json_object_set_new(o, "type", json_string("model"));
        json_object_set_new(o, "path", json_string(path));
        json_object_set_new(o, "architecture", json_string(c->arch_name));
        json_object_set_new(o, "dtype", json_string(m->dtype));
        json_object_set_new(o, "weights", json_string(wtensor_type_name(m->weights)));
        json_object_set_new(o, "files", json_integer(m->n_shards));
        json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
        json_object_set_new(o, "hidden_size", json_integer(c->hidden));
        json_object_set_new(o, "intermediate_size", json_integer(c->intermediate));
        json_object_set_new(o, "layers", json_integer(c->n_layers));
        json_object_set_new(o, "heads", json_integer(c->n_heads));
        json_object_set_new(o, "kv_heads", json_integer(c->n_kv_heads));
        json_object_set_new(o, "head_dim", json_integer(c->head_dim));
        json_object_set_new(o, "max_position_embeddings", json_integer(c->max_positions));
        json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
        json_object_set_new(o, "rope_scaling", json_string(c->rope_llama3 ? "llama3" : "none"));
        json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_embeddings));
        json_object_set_new(o, "qkv_bias", json_boolean(c->qkv_bias));
        json_object_set_new(o, "bos_token_id", json_integer(c->bos_id));
        json_t *eos = json_array();
        for (int i = 0; i < c->n_eos; i++)
            json_array_append_new(eos, json_integer(c->eos_ids[i]));
        json_object_set_new(o, "eos_token_id", eos);
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)m->weight_bytes));
        json_object_set_new(o, "tokenizer", json_boolean(is_file(path, "tokenizer.json")));
        model_free(m);
    } else {
        fprintf(stderr, "lorad: %s: neither a model directory (config.json) nor an adapter "
                "directory (adapter_config.json)\n", path);
        return 1;
    }
    if (!o) {
        fprintf(stderr, "lorad: out of memory\n");
        return 1;
    }
    json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("\n");
    json_decref(o);
    return 0;
}

/* Copies DIR/name to OUT/name if it exists; rewrites nothing. */
static int copy_file(const char *from_dir, const char *to_dir, const char *name, lr_error *err)
{
    char src[4096 + 64], dst[4096 + 64];
    snprintf(src, sizeof src, "%s/%s", from_dir, name);
    snprintf(dst, sizeof dst, "%s/%s", to_dir, name);
    FILE *in = fopen(src, "rb");
    if (!in)
        return 0;
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return lr_error_set(err, LR_EIO, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            rc = lr_error_set(err, LR_EIO, "%s: write failed", dst);
            break;
        }
    fclose(in);
    if (fclose(out) && !rc)
        rc = lr_error_set(err, LR_EIO, "%s: write failed", dst);
    return rc;
}

static int cmd_merge(int argc, char **argv)
{
    cli_args a;
    int rc = parse_args(argc, argv, &a, 1);
    if (rc)
        return rc;
    if (!a.out_dir || a.n_adapters == 0)
        return bad_arg("merge needs --model DIR, at least one --adapter and --out DIR%s", "");
    lr_error err = {0};
    model *m = NULL;
    loaded_adapters la = {0};
    variant *v = NULL;
    st_write_tensor *tw = NULL;
    void **unpacked = NULL;    /* [n_tensors]: F32P / BF16P matrices laid out row-major */
    json_t *cfg = NULL;
    rc = 1;
    huge_place_enable(0);   /* W and W' are read once, to be written out: nothing to place */
    if (!(m = model_load_with(a.model_dir, &(model_load_opts){a.weights, NULL, NULL}, &err)) ||
        adapters_load(&a, m, &la, &err) ||
        !(v = variant_merge(m, &la.mix, &err)))
        goto out_err;
    if (mkdir(a.out_dir, 0755) != 0 && errno != EEXIST) {
        lr_error_set(&err, LR_EIO, "%s: cannot create: %s", a.out_dir, strerror(errno));
        goto out_err;
    }
    /* Every tensor of the base, each projection replaced by its merged W' where an
     * adapter touched it. */
    tw = calloc((size_t)m->n_tensors, sizeof *tw);
    unpacked = calloc((size_t)m->n_tensors, sizeof *unpacked);
    if (!tw || !unpacked) {
        lr_error_set(&err, LR_ENOMEM, "out of memory");
        goto out_err;
    }
    int n = m->n_tensors;
    for (int i = 0; i < n; i++) {
        const model_tensor *mt = &m->tensors[i];
        tw[i].name = mt->name;
        tw[i].ndim = mt->ndim;
        tw[i].shape[0] = mt->shape[0];
        tw[i].shape[1] = mt->shape[1];
        const wtensor *w = mt->proj < 0 ? &mt->data
                                        : variant_weight(m, v, mt->layer, (model_proj)mt->proj);
        tw[i].data = w->data;
        tw[i].bf16 = w->type == WT_BF16 || w->type == WT_BF16P;
        if (w->type == WT_F32P || w->type == WT_BF16P) {  /* panels: row-major in the file */
            size_t count = (size_t)mt->shape[0] * (size_t)mt->shape[1];
            float *rows = malloc(sizeof(float) * count);
            uint16_t *half = w->type == WT_BF16P ? malloc(sizeof(uint16_t) * count) : NULL;
            if (!rows || (w->type == WT_BF16P && !half)) {
                free(rows);
                free(half);
                lr_error_set(&err, LR_ENOMEM, "out of memory");
                goto out_err;
            }
            wtensor_rows_f32(w, mt->shape[1], 0, mt->shape[0], rows);
            if (half) {  /* BF16 widened to F32 and back: exact */
                for (size_t e = 0; e < count; e++)
                    half[e] = wtensor_bf16_round(rows[e]);
                free(rows);
            }
            unpacked[i] = half ? (void *)half : (void *)rows;
            tw[i].data = unpacked[i];
        }
    }
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/model.safetensors", a.out_dir);
    const char *meta[] = {"format", "pt", NULL};
    if (safetensors_write(path, tw, n, meta, &err))
        goto out_err;
    /* config.json with the torch_dtype written; the other files verbatim. */
    snprintf(path, sizeof path, "%s/config.json", a.model_dir);
    json_error_t je;
    if (!(cfg = json_load_file(path, 0, &je))) {
        lr_error_set(&err, LR_EINVAL, "%s: %s", path, je.text);
        goto out_err;
    }
    json_object_set_new(cfg, "torch_dtype",
                        json_string(m->weights == WT_BF16 ? "bfloat16" : "float32"));
    snprintf(path, sizeof path, "%s/config.json", a.out_dir);
    if (json_dump_file(cfg, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER)) {
        lr_error_set(&err, LR_EIO, "%s: write failed", path);
        goto out_err;
    }
    static const char *const extra[] = {"generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++)
        if (copy_file(a.model_dir, a.out_dir, extra[i], &err))
            goto out_err;
    rc = 0;
    goto out;
out_err:
    rc = fail(NULL, &err);
out:
    json_decref(cfg);
    for (int i = 0; unpacked && i < m->n_tensors; i++)
        free(unpacked[i]);
    free(unpacked);
    free(tw);
    variant_free(v);
    adapters_free(&la);
    model_free(m);
    return rc;
}

/* ------------------------------------------------------------------ serve ---------- */

/* `lorad serve` flags: one table for getopt_long and for --help (the README lists the
 * same). */
enum {
    OPT_MODEL = 256, OPT_NAME, OPT_ADAPTER_DIR, OPT_HOST, OPT_PORT, OPT_KEY, OPT_MAX_LOADED,
    OPT_MAX_RANK, OPT_MERGE, OPT_MERGE_BUDGET, OPT_CTX, OPT_MAX_TOKENS, OPT_MAX_SEQS, OPT_MAX_QUEUE,
    OPT_MAX_BODY, OPT_KV_MB, OPT_TEMPLATE, OPT_THREADS, OPT_MAX_CONN, OPT_DRAIN, OPT_HELP,
    OPT_ADMIN_KEY, OPT_MAX_UPLOAD, OPT_ALLOW_PATH, OPT_ADAPTER_MB, OPT_TEST_STALL, OPT_WEIGHTS,
    OPT_PLACE
};

static const struct {
    struct option o;
    const char *arg;
    const char *help;
} serve_flags[] = {
    {{"model", required_argument, NULL, OPT_MODEL}, "DIR",
     "Hugging Face model directory (required)"},
    {{"weights", required_argument, NULL, OPT_WEIGHTS}, "f32|bf16|q8",
     "precision the base matrices are held in (default: the checkpoint's; F16 becomes f32)"},
    {{"place-pages", required_argument, NULL, OPT_PLACE}, "yes|no",
     "yes: time each 2 MB page of the weights and of each merged W' and swap slow ones "
     "(memory a VM's host backs from afar) for fast ones; no: as the kernel gives them "
     "(default yes)"},
    {{"served-model-name", required_argument, NULL, OPT_NAME}, "NAME",
     "id of the base model in the API (default: the directory's name)"},
    {{"adapter-dir", required_argument, NULL, OPT_ADAPTER_DIR}, "DIR",
     "directory of PEFT adapters, one per subdirectory, named after it (default: none)"},
    {{"host", required_argument, NULL, OPT_HOST}, "ADDR",
     "address to listen on (default 127.0.0.1: this machine only)"},
    {{"port", required_argument, NULL, OPT_PORT}, "N", "TCP port (default 8080; 0: any free)"},
    {{"api-key-file", required_argument, NULL, OPT_KEY}, "FILE",
     "require 'Authorization: Bearer KEY', KEY the file's first line (default: no key)"},
    {{"admin-key-file", required_argument, NULL, OPT_ADMIN_KEY}, "FILE",
     "adapter management needs 'Authorization: Bearer KEY' (default: from this machine "
     "only)"},
    {{"max-upload-mb", required_argument, NULL, OPT_MAX_UPLOAD}, "N",
     "largest adapter upload in MiB; larger ones get 413 (default 512)"},
    {{"allow-adapter-path", required_argument, NULL, OPT_ALLOW_PATH}, "DIR",
     "load_lora_adapter may copy adapters from DIR (repeatable, up to 8; default: the "
     "adapter directory only)"},
    {{"max-loaded-adapters", required_argument, NULL, OPT_MAX_LOADED}, "N",
     "adapters kept in memory; the least recently used idle one is unloaded (default 64)"},
    {{"max-adapter-memory-mb", required_argument, NULL, OPT_ADAPTER_MB}, "N",
     "memory of loaded adapters in MiB, likewise (default: no limit)"},
    {{"max-rank", required_argument, NULL, OPT_MAX_RANK}, "R",
     "refuse adapters of a higher rank (default 256)"},
    {{"merge", required_argument, NULL, OPT_MERGE}, "never|always|auto",
     "never: adapters on the fly; always: a merged W' per loaded adapter; auto: a W' for the "
     "adapter that carries nearly all recent tokens (default never)"},
    {{"merge-budget-mb", required_argument, NULL, OPT_MERGE_BUDGET}, "N",
     "memory for --merge auto's W' in MiB (default: room for one)"},
    {{"ctx", required_argument, NULL, OPT_CTX}, "N",
     "context per request, prompt + output (default: the model's max_position_embeddings)"},
    {{"max-tokens", required_argument, NULL, OPT_MAX_TOKENS}, "N",
     "largest max_tokens a request may ask, and the default (default 256)"},
    {{"max-seqs", required_argument, NULL, OPT_MAX_SEQS}, "N",
     "requests generated at once (default 16)"},
    {{"max-queue", required_argument, NULL, OPT_MAX_QUEUE}, "N",
     "requests waiting beyond those; more get 429 (default 64)"},
    {{"max-body-kb", required_argument, NULL, OPT_MAX_BODY}, "N",
     "largest request body in KiB; larger ones get 413 (default 1024)"},
    {{"kv-cache-mb", required_argument, NULL, OPT_KV_MB}, "N",
     "KV cache pool in MiB, blocks of 16 positions; requests wait for their prompt's "
     "blocks, and the newest running one is preempted when they run out (default: "
     "max-seqs full contexts, allocated as used)"},
    {{"chat-template", required_argument, NULL, OPT_TEMPLATE}, "NAME",
     "chatml, llama3, llama2, mistral or a template file (default: the model's "
     "tokenizer_config.json)"},
    {{"threads", required_argument, NULL, OPT_THREADS}, "N",
     "threads for the model's math (default: one per CPU)"},
    {{"max-connections", required_argument, NULL, OPT_MAX_CONN}, "N",
     "open HTTP connections at most (default 256)"},
    {{"drain-seconds", required_argument, NULL, OPT_DRAIN}, "N",
     "on SIGTERM/SIGINT, time running requests get to finish (default 30)"},
    {{"verbose", no_argument, NULL, 'v'}, NULL, "debug logging"},
    {{"help", no_argument, NULL, OPT_HELP}, NULL, "this help"},
    /* Test-only, not in --help: SIGUSR1 then wedges the engine thread, so that
     * tests/test_systemd.py can show the watchdog pings stop. */
    {{"test-stall-engine", no_argument, NULL, OPT_TEST_STALL}, NULL, NULL},
};
#define N_SERVE_FLAGS (sizeof serve_flags / sizeof *serve_flags)

static void serve_help(FILE *f)
{
    fputs("usage: lorad serve --model DIR [options]\n\n"
          "The OpenAI-compatible daemon: POST /v1/completions, POST /v1/chat/completions,\n"
          "GET /v1/models, GET /health, GET /metrics. Every request names the base model or\n"
          "an adapter in 'model' (or a weighted mix in 'adapters').\n\noptions:\n", f);
    for (size_t i = 0; i < N_SERVE_FLAGS; i++) {
        char left[64];
        if (!serve_flags[i].help)
            continue;
        if (serve_flags[i].o.val == 'v')
            snprintf(left, sizeof left, "-v, --verbose");
        else
            snprintf(left, sizeof left, "--%s%s%s", serve_flags[i].o.name,
                     serve_flags[i].arg ? " " : "", serve_flags[i].arg ? serve_flags[i].arg : "");
        fprintf(f, "  %-30s %s\n", left, serve_flags[i].help);
    }
    fputs("\nEvery option may also come from the environment as LORAD_ and its name in\n"
          "capitals, '-' as '_' (LORAD_MODEL, LORAD_MAX_SEQS; LORAD_VERBOSE=1; paths of\n"
          "LORAD_ALLOW_ADAPTER_PATH separated by ':'); the command line wins. The systemd\n"
          "unit reads them from /etc/lorad/lorad.env.\n", f);
}

static int flag_int(const char *name, const char *v, long lo, long hi, int *out)
{
    long x;
    if (parse_long(v, lo, hi, &x)) {
        fprintf(stderr, "lorad serve: --%s must be an integer in [%ld, %ld], got '%s'\n", name,
                lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* What parsing `serve`'s flags builds beside serve_options. */
typedef struct {
    int kv, adapter_mb, merge_mb;
    int no_place;   /* --place-pages no */
    int help;
    char *allow_env;   /* LORAD_ALLOW_ADAPTER_PATH split in place; owned, freed by cmd_serve */
} serve_extra;

/* Applies flag c with argument v (NULL for a flag without one). Returns 0, or -1 after
 * printing why v is wrong. */
static int serve_flag(serve_options *o, serve_extra *x, int c, const char *v)
{
    int bad = 0;
    switch (c) {
    case OPT_MODEL: o->model_dir = v; break;
    case OPT_WEIGHTS: {
        wt_type t;
        if (wtensor_type_parse(v, &t)) {
            fprintf(stderr, "lorad serve: --weights must be f32, bf16 or q8\n");
            bad = 1;
        } else {
            o->weights = (int)t;
        }
        break;
    }
    case OPT_PLACE: {
        int yes = 1;
        if (parse_yes_no(v, &yes)) {
            fprintf(stderr, "lorad serve: --place-pages must be yes or no\n");
            bad = 1;
        }
        x->no_place = !yes;
        break;
    }
    case OPT_NAME: o->served_name = v; break;
    case OPT_ADAPTER_DIR: o->adapter_dir = v; break;
    case OPT_HOST: o->host = v; break;
    case OPT_PORT: bad = flag_int("port", v, 0, 65535, &o->port); break;
    case OPT_KEY: o->api_key_file = v; break;
    case OPT_ADMIN_KEY: o->admin_key_file = v; break;
    case OPT_MAX_UPLOAD: bad = flag_int("max-upload-mb", v, 1, 1 << 20, &o->max_upload_mb);
        break;
    case OPT_ALLOW_PATH:
        if (o->n_allow_paths == 8) {
            fprintf(stderr, "lorad serve: at most 8 --allow-adapter-path\n");
            bad = 1;
        } else {
            o->allow_paths[o->n_allow_paths++] = v;
        }
        break;
    case OPT_ADAPTER_MB: bad = flag_int("max-adapter-memory-mb", v, 0, 1 << 24,
                                        &x->adapter_mb); break;
    case OPT_MAX_LOADED: bad = flag_int("max-loaded-adapters", v, 1, 1 << 20, &o->max_loaded);
        break;
    case OPT_MAX_RANK: bad = flag_int("max-rank", v, 1, 1 << 16, &o->max_rank); break;
    case OPT_MERGE:
        if (strcmp(v, "never") && strcmp(v, "always") && strcmp(v, "auto")) {
            fprintf(stderr, "lorad serve: --merge must be never, always or auto\n");
            bad = 1;
        }
        o->merge = strcmp(v, "always") == 0   ? REGISTRY_MERGE_ALWAYS
                   : strcmp(v, "auto") == 0 ? REGISTRY_MERGE_AUTO
                                            : REGISTRY_MERGE_NEVER;
        break;
    case OPT_MERGE_BUDGET: bad = flag_int("merge-budget-mb", v, 1, 1 << 24, &x->merge_mb);
        break;
    case OPT_CTX: bad = flag_int("ctx", v, 2, 1 << 24, &o->ctx); break;
    case OPT_MAX_TOKENS: bad = flag_int("max-tokens", v, 1, 1 << 24, &o->max_tokens); break;
    case OPT_MAX_SEQS: bad = flag_int("max-seqs", v, 1, 4096, &o->max_seqs); break;
    case OPT_MAX_QUEUE: bad = flag_int("max-queue", v, 0, 1 << 20, &o->max_queue); break;
    case OPT_MAX_BODY: bad = flag_int("max-body-kb", v, 1, 1 << 20, &o->max_body_kb); break;
    case OPT_KV_MB: bad = flag_int("kv-cache-mb", v, 0, 1 << 24, &x->kv); break;
    case OPT_TEMPLATE: o->chat_template = v; break;
    case OPT_THREADS: bad = flag_int("threads", v, 0, 256, &o->threads); break;
    case OPT_MAX_CONN: bad = flag_int("max-connections", v, 1, 1 << 16, &o->max_connections);
        break;
    case OPT_DRAIN: bad = flag_int("drain-seconds", v, 0, 86400, &o->drain_seconds); break;
    case OPT_TEST_STALL: o->test_stall_engine = 1; break;
    case 'v': log_level = LOG_LEVEL_DEBUG; break;
    case OPT_HELP: x->help = 1; break;
    default: bad = 1; break;
    }
    return bad ? -1 : 0;
}

/* LORAD_<FLAG> environment variables (systemd's EnvironmentFile=), applied before the
 * command line; an empty one is unset. Returns 0, or -1 after printing which is wrong. */
static int serve_env(serve_options *o, serve_extra *x)
{
    for (size_t i = 0; i < N_SERVE_FLAGS; i++) {
        const struct option *f = &serve_flags[i].o;
        if (!serve_flags[i].help || f->val == OPT_HELP)
            continue;
        char name[64] = "LORAD_";
        size_t k = strlen(name);
        for (const char *p = f->name; *p && k + 1 < sizeof name; p++)
            name[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        name[k] = '\0';
        const char *v = getenv(name);
        if (!v || !*v)
            continue;
        int rc = 0;
        if (f->has_arg == no_argument) {
            if (strcmp(v, "1") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0) {
                rc = serve_flag(o, x, f->val, NULL);
            } else if (strcmp(v, "0") && strcmp(v, "no") && strcmp(v, "false")) {
                fprintf(stderr, "lorad serve: %s must be 1 or 0, got '%s'\n", name, v);
                rc = -1;
            }
        } else if (f->val == OPT_ALLOW_PATH) {
            /* several directories, ':'-separated */
            if (!(x->allow_env = strdup(v))) {
                fprintf(stderr, "lorad serve: out of memory\n");
                return -1;
            }
            char *save = NULL;
            for (char *d = strtok_r(x->allow_env, ":", &save); d && rc == 0;
                 d = strtok_r(NULL, ":", &save))
                rc = serve_flag(o, x, f->val, d);
        } else {
            rc = serve_flag(o, x, f->val, v);
        }
        if (rc) {
            fprintf(stderr, "lorad serve: (%s=%s in the environment)\n", name, v);
            return -1;
        }
    }
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    struct option longopts[N_SERVE_FLAGS + 1];
    for (size_t i = 0; i < N_SERVE_FLAGS; i++)
        longopts[i] = serve_flags[i].o;
    memset(&longopts[N_SERVE_FLAGS], 0, sizeof longopts[0]);
    serve_options o = serve_options_default();
    serve_extra x = {0};
    log_level = LOG_LEVEL_INFO;   /* one line per request */
    int rc = 2;
    if (serve_env(&o, &x))
        goto out;
    int env_allow = o.n_allow_paths;   /* replaced by the first --allow-adapter-path */
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "v", longopts, NULL)) != -1) {
        if (c == OPT_ALLOW_PATH && env_allow) {
            o.n_allow_paths = 0;
            env_allow = 0;
        }
        if (serve_flag(&o, &x, c, optarg)) {
            serve_help(stderr);
            goto out;
        }
        if (x.help) {
            serve_help(stdout);
            rc = 0;
            goto out;
        }
    }
    o.kv_mb = x.kv;
    o.max_adapter_mb = x.adapter_mb;
    o.merge_budget_mb = x.merge_mb;
    huge_place_enable(!x.no_place);
    if (optind < argc) {
        fprintf(stderr, "lorad serve: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (!o.model_dir) {
        fprintf(stderr, "lorad serve: --model DIR is required (LORAD_MODEL in "
                "/etc/lorad/lorad.env under systemd)\n");
        serve_help(stderr);
        goto out;
    }
    rc = serve_run(&o);
out:
    free(x.allow_env);
    return rc;
}

int main(int argc, char **argv)
{
    blas_select_kernels(argv);
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc, argv);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc, argv);
    if (strcmp(cmd, "merge") == 0)
        return cmd_merge(argc, argv);
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc, argv);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    fprintf(stderr, "lorad: unknown command '%s'\n%s", cmd, usage);
    return 2;
}
