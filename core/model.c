/* model_load: a Hugging Face model directory → read-only fp32 weights. */
#include "model.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"
#include "safetensors.h"

#define MAX_SHARDS 512

struct model_files {
    safetensors *st[MAX_SHARDS];
    int n;
    void *converted;          /* anonymous mapping holding converted weights, read-only */
    size_t converted_cap;
    size_t converted_used;
};

char *model_tensor_name(int layer, model_proj p, char *buf, size_t cap)
{
    const char *group = p <= PROJ_O ? "self_attn" : "mlp";
    snprintf(buf, cap, "model.layers.%d.%s.%s.weight", layer, group, model_proj_name(p));
    return buf;
}

static int file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

typedef struct {
    model_progress_fn fn;   /* NULL: nobody listens */
    void *user;
} progress;

static void report(const progress *p, const char *what, int done, int total)
{
    if (p->fn)
        p->fn(p->user, what, done, total);
}

/* Number of distinct file names in weight_map (for progress; 0 on any oddity, which
 * open_sharded then reports). */
static int count_shards(json_t *map)
{
    const char *seen[MAX_SHARDS];
    int n = 0;
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        const char *f = json_string_value(v);
        if (!f)
            return 0;
        int dup = 0;
        for (int i = 0; i < n && !dup; i++)
            dup = strcmp(seen[i], f) == 0;
        if (dup)
            continue;
        if (n == MAX_SHARDS)
            return 0;
        seen[n++] = f;
    }
    return n;
}

/* Opens the shards named by model.safetensors.index.json (each once, in order). */
static int open_sharded(model *m, const char *index_path, const progress *pr, lr_error *err)
{
    json_error_t je;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return lr_error_set(err, LR_EINVAL, "%s: invalid JSON at line %d: %s", index_path,
                            je.line, je.text);
    int rc = 0;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        rc = lr_error_set(err, LR_EINVAL, "%s: 'weight_map' must be an object", index_path);
        goto done;
    }
    int total = count_shards(map);
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        if (!json_is_string(v)) {
            rc = lr_error_set(err, LR_EINVAL, "%s: weight_map['%s'] must be a file name",
                              index_path, name);
            goto done;
        }
        const char *file = json_string_value(v);
        if (strchr(file, '/') || strcmp(file, "..") == 0 || strcmp(file, ".") == 0 || !*file) {
            rc = lr_error_set(err, LR_EINVAL, "%s: weight_map['%s'] = '%s' is not a plain file "
                              "name in the model directory", index_path, name, file);
            goto done;
        }
        char path[4096 + 256];
        snprintf(path, sizeof path, "%s/%s", m->dir, file);
        int seen = 0;
        for (int i = 0; i < m->files->n && !seen; i++)
            seen = strcmp(safetensors_path(m->files->st[i]), path) == 0;
        if (seen)
            continue;
        if (m->files->n == MAX_SHARDS) {
            rc = lr_error_set(err, LR_ENOTSUP, "%s: more than %d shards", index_path, MAX_SHARDS);
            goto done;
        }
        safetensors *st = safetensors_open(path, err);
        if (!st) {
            rc = err ? err->code : LR_EINVAL;
            goto done;
        }
        m->files->st[m->files->n++] = st;
        report(pr, "files", m->files->n, total);
    }
    if (m->files->n == 0)
        rc = lr_error_set(err, LR_EINVAL, "%s: 'weight_map' is empty", index_path);
done:
    json_decref(root);
    return rc;
}

static const st_tensor *find_tensor(const model *m, const char *name)
{
    for (int i = 0; i < m->files->n; i++) {
        const st_tensor *t = safetensors_find(m->files->st[i], name);
        if (t)
            return t;
    }
    return NULL;
}

static const char *tensor_file(const model *m, const st_tensor *t)
{
    for (int i = 0; i < m->files->n; i++)
        if (safetensors_find(m->files->st[i], t->name) == t)
            return safetensors_path(m->files->st[i]);
    return "?";
}

/* Needs conversion (not F32, or F32 not 4-byte aligned in the mapping). */
/* Every weight is copied out of the file mapping into one anonymous arena (converted to
 * F32 on the way when it is F16/BF16): the arena is backed by transparent huge pages,
 * the page cache's mapping by 4 KB pages, and decode streams all the weights every step —
 * on 4 KB pages the hardware prefetchers stop at every page boundary and every page costs
 * a TLB miss (measured: decode read W' of a merged adapter, an anonymous copy, 48% faster
 * than the identical W in the file mapping). The page cache's copy is dropped by the
 * kernel as it needs the memory; RSS is the weights once. */
static int needs_copy(const st_tensor *t)
{
    (void)t;
    return 1;
}

/* Looks up a tensor and checks dtype + shape ([d0] or [d0, d1]); adds its converted size
 * to *convert_bytes when it cannot be used in place. */
static int check_tensor(const model *m, const char *name, int64_t d0, int64_t d1,
                        const st_tensor **out, size_t *convert_bytes, lr_error *err)
{
    const st_tensor *t = find_tensor(m, name);
    if (!t)
        return lr_error_set(err, LR_EINVAL, "%s: tensor '%s' is missing from the checkpoint",
                            m->dir, name);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return lr_error_set(err, LR_ENOTSUP, "%s: tensor '%s' has dtype %s (supported: F32, "
                            "F16, BF16)", tensor_file(m, t), name, st_dtype_name(t->dtype));
    int ndim = d1 < 0 ? 1 : 2;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[96] = "[";
        for (int i = 0; i < t->ndim && i < 4; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "",
                     (long long)t->shape[i]);
        strcat(got, "]");
        if (ndim == 1)
            return lr_error_set(err, LR_EINVAL, "%s: tensor '%s' is %s, config.json implies "
                                "[%lld]", tensor_file(m, t), name, got, (long long)d0);
        return lr_error_set(err, LR_EINVAL, "%s: tensor '%s' is %s, config.json implies "
                            "[%lld,%lld]", tensor_file(m, t), name, got, (long long)d0,
                            (long long)d1);
    }
    if (needs_copy(t))
        *convert_bytes += (size_t)t->numel * sizeof(float);
    *out = t;
    return 0;
}

/* Returns the fp32 data of a checked tensor: in place, or converted into the arena. */
static const float *materialize(model *m, const st_tensor *t, lr_error *err)
{
    if (!needs_copy(t))
        return t->data;
    float *dst = (float *)((char *)m->files->converted + m->files->converted_used);
    if (st_tensor_to_f32(t, dst, err))
        return NULL;
    m->files->converted_used += (size_t)t->numel * sizeof(float);
    return dst;
}

/* Loader state for m->tensors[i]: where its fp32 pointer goes, and its file entry. */
typedef struct {
    const float **dst;
    const st_tensor *t;
} wanted;

model *model_load(const char *dir, lr_error *err)
{
    return model_load_progress(dir, NULL, NULL, err);
}

model *model_load_progress(const char *dir, model_progress_fn progress_fn, void *user,
                           lr_error *err)
{
    progress pr = {progress_fn, user};
    model *m = calloc(1, sizeof *m);
    wanted *want = NULL;
    if (!m || !(m->files = calloc(1, sizeof *m->files))) {
        lr_error_set(err, LR_ENOMEM, "out of memory loading %s", dir);
        goto fail;
    }
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    if (model_config_load(dir, &m->cfg, err)) {
        lr_error_prefix(err, "%s", dir);
        goto fail;
    }
    const model_config *c = &m->cfg;

    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (file_exists(path)) {
        if (open_sharded(m, path, &pr, err))
            goto fail;
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (!file_exists(path)) {
            char bin[4096 + 64];
            snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
            if (file_exists(bin))
                lr_error_set(err, LR_ENOTSUP, "%s: only pickle pytorch_model.bin found; lorad "
                             "reads safetensors (pickle can run code): convert the checkpoint",
                             dir);
            else
                lr_error_set(err, LR_ENOTFOUND, "%s: no model.safetensors or "
                             "model.safetensors.index.json", dir);
            goto fail;
        }
        safetensors *st = safetensors_open(path, err);
        if (!st)
            goto fail;
        m->files->st[m->files->n++] = st;
        report(&pr, "files", 1, 1);
    }
    m->n_shards = m->files->n;

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    size_t n_max = 3 + (size_t)c->n_layers * (2 + PROJ_COUNT + 3);
    want = calloc(n_max, sizeof *want);
    m->tensors = calloc(n_max, sizeof *m->tensors);
    if (!m->layers || !want || !m->tensors) {
        lr_error_set(err, LR_ENOMEM, "out of memory loading %s", dir);
        goto fail;
    }
    size_t n = 0;
    /* Every tensor the model reads, in one table (m->tensors) that checking, loading and
     * `lorad merge` walk alike. d1 < 0 for vectors. */
#define WANT(ptr, layer_, proj_, d0_, d1_, ...)                                        \
    do {                                                                               \
        model_tensor *mt = &m->tensors[n];                                             \
        snprintf(mt->name, sizeof mt->name, __VA_ARGS__);                              \
        mt->ndim = (d1_) < 0 ? 1 : 2;                                                  \
        mt->shape[0] = (d0_);                                                          \
        mt->shape[1] = (d1_) < 0 ? 0 : (d1_);                                          \
        mt->layer = (layer_);                                                          \
        mt->proj = (proj_);                                                            \
        want[n].dst = (ptr);                                                           \
        n++;                                                                           \
    } while (0)
    WANT(&m->embed, -1, -1, c->vocab_size, c->hidden, "model.embed_tokens.weight");
    WANT(&m->norm, -1, -1, c->hidden, -1, "model.norm.weight");
    if (!c->tie_embeddings)
        WANT(&m->lm_head, -1, -1, c->vocab_size, c->hidden, "lm_head.weight");
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &m->layers[l];
        WANT(&L->attn_norm, l, -1, c->hidden, -1, "model.layers.%d.input_layernorm.weight", l);
        WANT(&L->ffn_norm, l, -1, c->hidden, -1,
             "model.layers.%d.post_attention_layernorm.weight", l);
        for (int p = 0; p < PROJ_COUNT; p++) {
            int out, in;
            model_config_proj_shape(c, (model_proj)p, &out, &in);
            char name[128];
            WANT(&L->w[p], l, p, out, in, "%s",
                 model_tensor_name(l, (model_proj)p, name, sizeof name));
        }
        if (c->qkv_bias)
            for (int p = 0; p < 3; p++) {
                int out, in;
                model_config_proj_shape(c, (model_proj)p, &out, &in);
                WANT(&L->bias[p], l, -1, out, -1, "model.layers.%d.self_attn.%s.bias", l,
                     model_proj_name((model_proj)p));
            }
    }
#undef WANT
    m->n_tensors = (int)n;

    size_t convert = 0;
    int dtypes = 0;  /* bit per dtype seen */
    int n_convert = 0;
    for (size_t i = 0; i < n; i++) {
        const model_tensor *mt = &m->tensors[i];
        if (check_tensor(m, mt->name, mt->shape[0], mt->ndim == 1 ? -1 : mt->shape[1],
                         &want[i].t, &convert, err))
            goto fail;
        dtypes |= 1 << want[i].t->dtype;
        n_convert += needs_copy(want[i].t);
        m->weight_bytes += (size_t)want[i].t->numel * sizeof(float);
    }
    snprintf(m->dtype, sizeof m->dtype, "%s",
             dtypes == 1 << ST_F32 ? "F32" : dtypes == 1 << ST_F16 ? "F16"
             : dtypes == 1 << ST_BF16 ? "BF16" : "mixed");

    if (convert) {
        void *arena = mmap(NULL, convert, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           -1, 0);
        if (arena == MAP_FAILED) {
            lr_error_set(err, LR_ENOMEM, "%s: cannot allocate %zu MB for converted weights",
                         dir, convert >> 20);
            goto fail;
        }
        madvise(arena, convert, MADV_HUGEPAGE);   /* optional: fewer TLB misses */
        m->files->converted = arena;
        m->files->converted_cap = convert;
    }
    int converted = 0;
    for (size_t i = 0; i < n; i++) {
        *want[i].dst = m->tensors[i].data = materialize(m, want[i].t, err);
        if (!*want[i].dst)
            goto fail;
        if (needs_copy(want[i].t))
            report(&pr, "tensors converted", ++converted, n_convert);
    }
    if (convert && mprotect(m->files->converted, convert, PROT_READ) != 0) {
        lr_error_set(err, LR_EIO, "%s: mprotect of converted weights failed", dir);
        goto fail;
    }
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    free(want);
    log_info("loaded %s: %s, %d layers, hidden %d, %zu MB of fp32 weights (%s, %d file%s)",
             dir, c->arch_name, c->n_layers, c->hidden, m->weight_bytes >> 20, m->dtype,
             m->n_shards, m->n_shards == 1 ? "" : "s");
    return m;
fail:
    free(want);
    model_free(m);
    return NULL;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->files) {
        for (int i = 0; i < m->files->n; i++)
            safetensors_close(m->files->st[i]);
        if (m->files->converted)
            munmap(m->files->converted, m->files->converted_cap);
        free(m->files);
    }
    free(m->layers);
    free(m->tensors);
    free(m);
}
