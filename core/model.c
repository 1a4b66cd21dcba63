/* model_load: a Hugging Face model directory → read-only weights in one arena. */
#include "model.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hugemem.h"
#include "log.h"
#include "safetensors.h"

#define MAX_SHARDS 512

struct model_files {
    safetensors *st[MAX_SHARDS];
    int n;
    void *converted;          /* anonymous mapping holding every weight, read-only */
    size_t converted_cap;
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

/* Every weight is copied out of the file mapping into one anonymous arena (converted on
 * the way when the precision changes): the arena is backed by transparent huge pages, the
 * page cache's mapping by 4 KB pages, and decode streams all the weights every step — on
 * 4 KB pages the hardware prefetchers stop at every page boundary and every page costs a
 * TLB miss (measured: decode read W' of a merged adapter, an anonymous copy, 48% faster
 * than the identical W in the file mapping). The files are unmapped once copied, so RSS
 * is the weights once and a file changed under the daemon changes nothing. */

/* Looks up a tensor and checks dtype + shape ([d0] or [d0, d1]). */
static int check_tensor(const model *m, const char *name, int64_t d0, int64_t d1,
                        const st_tensor **out, lr_error *err)
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
    *out = t;
    return 0;
}

wt_type model_matrix_type(const model *m)
{
    return m->weights == WT_F32 ? WT_F32P : m->weights == WT_BF16 ? WT_BF16P : m->weights;
}

/* The tensor's type in memory: vectors F32, matrices the model's (model_matrix_type). */
static wt_type held_type(const model *m, const model_tensor *mt)
{
    return mt->ndim == 2 ? model_matrix_type(m) : WT_F32;
}


/* Rows converted per step when the precision or the layout changes (an F32 staging buffer
 * this size instead of a whole embedding matrix: 2 GB for a 128k vocabulary). */
#define CONVERT_ROWS 256
_Static_assert(CONVERT_ROWS % WT_Q8_PANEL == 0, "a step of rows starts a Q8 panel");
_Static_assert(CONVERT_ROWS % WT_P_ROWS == 0, "a step of rows starts an F32P panel");

/* Copies a checked tensor into the arena at dst in the type it is held in. stage:
 * CONVERT_ROWS · cols floats, for a change of precision or layout (F32 matrices into
 * panels). */
static int materialize(const model *m, const st_tensor *t, model_tensor *mt, char *dst,
                       float *stage, lr_error *err)
{
    wt_type type = held_type(m, mt);
    int64_t rows = mt->shape[0], cols = mt->ndim == 2 ? mt->shape[1] : 1;
    mt->data = wtensor_at(type, rows, cols, dst);
    float *scale = (float *)mt->data.scale;
    if (type == WT_F32)
        return st_tensor_to_f32(t, (float *)dst, err);
    size_t esize = st_dtype_size(t->dtype);
    for (int64_t r0 = 0; r0 < rows; r0 += CONVERT_ROWS) {
        int64_t n = rows - r0 < CONVERT_ROWS ? rows - r0 : CONVERT_ROWS;
        st_tensor part = *t;
        part.data = (const char *)t->data + (size_t)r0 * cols * esize;
        part.numel = n * cols;
        part.nbytes = (size_t)part.numel * esize;
        if (st_tensor_to_f32(&part, stage, err))
            return -1;
        wtensor_from_f32(type, stage, n, cols,
                         dst + wtensor_data_bytes(type, r0, cols),
                         scale ? scale + wtensor_scale_bytes(type, r0, cols) / sizeof(float)
                               : NULL);
    }
    return 0;
}

/* Unmaps the whole pages of a copied tensor from the file mapping: they stay in the page
 * cache (reclaimable) but leave this process's RSS, which would otherwise hold the file
 * and its copy at once while a large model loads (22 GB peak for a 16 GB model). */
static void drop_file_pages(const st_tensor *t)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)t->data + page - 1) & ~(page - 1);
    uintptr_t e = ((uintptr_t)t->data + t->nbytes) & ~(page - 1);
    if (e > b)
        madvise((void *)b, e - b, MADV_DONTNEED);
}

wt_type model_default_weights(const char *dtype)
{
    return strcmp(dtype, "BF16") == 0 ? WT_BF16 : WT_F32;
}

/* Loader state for m->tensors[i]: where its pointer goes, and its file entry. */
typedef struct {
    wtensor *wdst;          /* matrices */
    const float **fdst;     /* vectors */
    const st_tensor *t;
} wanted;

/* Copying every tensor into the arena, on a few threads (converting an 8B model to Q8
 * is ~1 minute of one core): each takes the next tensor in order, so the files are read
 * about sequentially. */
typedef struct {
    model *m;
    wanted *want;
    const size_t *offset;   /* [n] each tensor's place in the arena */
    size_t n, stage_floats;
    size_t next, done;      /* atomic: the next tensor to take; tensors copied */
    int failed;             /* atomic: stop taking tensors */
    pthread_mutex_t lock;
    lr_error err;           /* the first failure */
} copy_job;

/* Takes and copies tensors until none are left; with pr (the loading thread), reports
 * the progress of all threads after each of its own. */
static int copy_tensors(copy_job *j, const progress *pr)
{
    float *stage = j->stage_floats ? malloc(j->stage_floats * sizeof(float)) : NULL;
    lr_error err = {0};
    int rc = j->stage_floats && !stage
             ? lr_error_set(&err, LR_ENOMEM, "out of memory loading %s", j->m->dir) : 0;
    while (rc == 0 && !__atomic_load_n(&j->failed, __ATOMIC_RELAXED)) {
        size_t i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (i >= j->n)
            break;
        model_tensor *mt = &j->m->tensors[i];
        rc = materialize(j->m, j->want[i].t, mt, (char *)j->m->files->converted + j->offset[i],
                         stage, &err);
        drop_file_pages(j->want[i].t);
        size_t done = __atomic_add_fetch(&j->done, 1, __ATOMIC_RELAXED);
        if (pr && rc == 0)
            report(pr, "tensors converted", (int)done, (int)j->n);
    }
    if (rc) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&j->lock);
        if (j->err.code == 0)
            j->err = err;
        pthread_mutex_unlock(&j->lock);
    }
    free(stage);
    return rc;
}

static void *copy_worker(void *arg)
{
    copy_tensors(arg, NULL);
    return NULL;
}

/* Runs copy_tensors on up to 8 threads (one per CPU), the caller's included. */
static int copy_all(copy_job *j, const progress *pr, lr_error *err)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = ncpu < 1 ? 1 : ncpu > 8 ? 8 : (int)ncpu, started = 0;
    pthread_t th[8];
    pthread_mutex_init(&j->lock, NULL);
    for (; started < nt - 1 && (size_t)started + 1 < j->n; started++)
        if (pthread_create(&th[started], NULL, copy_worker, j) != 0)
            break;   /* fewer threads: slower, not wrong */
    copy_tensors(j, pr);
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&j->lock);
    if (j->err.code) {
        if (err)
            *err = j->err;
        return j->err.code;
    }
    report(pr, "tensors converted", (int)j->n, (int)j->n);
    return 0;
}

model *model_load(const char *dir, lr_error *err)
{
    return model_load_with(dir, NULL, err);
}

model *model_load_with(const char *dir, const model_load_opts *opts, lr_error *err)
{
    model_load_opts defaults = {MODEL_WEIGHTS_AUTO, NULL, NULL};
    const model_load_opts *o = opts ? opts : &defaults;
    progress pr = {o->progress, o->user};
    model *m = calloc(1, sizeof *m);
    wanted *want = NULL;
    size_t *offset = NULL;
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
     * `lorad merge` walk alike. d1 < 0 for vectors (fdst), matrices go to wdst. */
#define WANT(wdst_, fdst_, layer_, proj_, d0_, d1_, ...)                               \
    do {                                                                               \
        model_tensor *mt = &m->tensors[n];                                             \
        snprintf(mt->name, sizeof mt->name, __VA_ARGS__);                              \
        mt->ndim = (d1_) < 0 ? 1 : 2;                                                  \
        mt->shape[0] = (d0_);                                                          \
        mt->shape[1] = (d1_) < 0 ? 0 : (d1_);                                          \
        mt->layer = (layer_);                                                          \
        mt->proj = (proj_);                                                            \
        want[n].wdst = (wdst_);                                                        \
        want[n].fdst = (fdst_);                                                        \
        n++;                                                                           \
    } while (0)
    WANT(&m->embed, NULL, -1, -1, c->vocab_size, c->hidden, "model.embed_tokens.weight");
    WANT(NULL, &m->norm, -1, -1, c->hidden, -1, "model.norm.weight");
    if (!c->tie_embeddings)
        WANT(&m->lm_head, NULL, -1, -1, c->vocab_size, c->hidden, "lm_head.weight");
    for (int l = 0; l < c->n_layers; l++) {
        model_layer *L = &m->layers[l];
        WANT(NULL, &L->attn_norm, l, -1, c->hidden, -1,
             "model.layers.%d.input_layernorm.weight", l);
        WANT(NULL, &L->ffn_norm, l, -1, c->hidden, -1,
             "model.layers.%d.post_attention_layernorm.weight", l);
        for (int p = 0; p < PROJ_COUNT; p++) {
            int out, in;
            model_config_proj_shape(c, (model_proj)p, &out, &in);
            char name[128];
            WANT(&L->w[p], NULL, l, p, out, in, "%s",
                 model_tensor_name(l, (model_proj)p, name, sizeof name));
        }
        if (c->qkv_bias)
            for (int p = 0; p < 3; p++) {
                int out, in;
                model_config_proj_shape(c, (model_proj)p, &out, &in);
                WANT(NULL, &L->bias[p], l, -1, out, -1, "model.layers.%d.self_attn.%s.bias",
                     l, model_proj_name((model_proj)p));
            }
    }
#undef WANT
    m->n_tensors = (int)n;

    int dtypes = 0;  /* bit per dtype seen */
    for (size_t i = 0; i < n; i++) {
        const model_tensor *mt = &m->tensors[i];
        if (check_tensor(m, mt->name, mt->shape[0], mt->ndim == 1 ? -1 : mt->shape[1],
                         &want[i].t, err))
            goto fail;
        dtypes |= 1 << want[i].t->dtype;
    }
    snprintf(m->dtype, sizeof m->dtype, "%s",
             dtypes == 1 << ST_F32 ? "F32" : dtypes == 1 << ST_F16 ? "F16"
             : dtypes == 1 << ST_BF16 ? "BF16" : "mixed");
    if (o->weights != MODEL_WEIGHTS_AUTO && o->weights != WT_F32 && o->weights != WT_BF16 &&
        o->weights != WT_Q8) {
        lr_error_set(err, LR_EINVAL, "%s: unknown weight precision %d", dir, o->weights);
        goto fail;
    }
    m->weights = o->weights == MODEL_WEIGHTS_AUTO ? model_default_weights(m->dtype)
                                                  : (wt_type)o->weights;

    size_t arena = 0;
    int64_t max_cols = 1;
    if (!(offset = malloc(n * sizeof *offset))) {
        lr_error_set(err, LR_ENOMEM, "out of memory loading %s", dir);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const model_tensor *mt = &m->tensors[i];
        wt_type t = held_type(m, mt);
        int64_t cols = mt->ndim == 2 ? mt->shape[1] : 1;
        offset[i] = arena;
        arena += wtensor_arena_bytes(t, mt->shape[0], cols);
        m->weight_bytes += wtensor_data_bytes(t, mt->shape[0], cols) +
                           wtensor_scale_bytes(t, mt->shape[0], cols);
        if (mt->ndim == 2 && mt->shape[1] > max_cols)
            max_cols = mt->shape[1];
    }
    /* refusing a model larger than the memory available up front beats the OOM killer
     * finding it half-copied */
    long long avail = huge_mem_available();
    if (avail >= 0 && arena > (unsigned long long)avail) {
        lr_error_set(err, LR_ENOMEM, "%s: the weights need %zu MB as %s, the machine has %lld MB "
                     "available%s", dir, arena >> 20, wtensor_type_name(m->weights),
                     avail >> 20, m->weights == WT_Q8 ? "" : " (try --weights q8, 1.125 "
                     "bytes per weight)");
        goto fail;
    }
    huge_place_report place;
    void *mem = huge_alloc_near(arena, 1.0, &place);   /* W is streamed every step: hugemem.h */
    if (!mem) {
        lr_error_set(err, LR_ENOMEM, "%s: cannot allocate %zu MB for the weights", dir,
                     arena >> 20);
        goto fail;
    }
    m->files->converted = mem;
    m->files->converted_cap = arena;
    huge_place_log("the weights", &place);
    copy_job job = {.m = m, .want = want, .offset = offset, .n = n,
                    .stage_floats = (size_t)CONVERT_ROWS * (size_t)max_cols};
    if (copy_all(&job, &pr, err))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (want[i].wdst)
            *want[i].wdst = m->tensors[i].data;
        else
            *want[i].fdst = m->tensors[i].data.data;
    }
    if (mprotect(mem, arena, PROT_READ) != 0) {
        lr_error_set(err, LR_EIO, "%s: mprotect of the weights failed", dir);
        goto fail;
    }
    if (c->tie_embeddings)
        m->lm_head = m->embed;
    /* Everything is copied: the files' mappings would only hold page cache in RSS. */
    for (int i = 0; i < m->files->n; i++)
        safetensors_close(m->files->st[i]);
    m->files->n = 0;
    free(offset);
    free(want);
    log_info("loaded %s: %s, %d layers, hidden %d, %zu MB of weights (%s held as %s, "
             "%d file%s)", dir, c->arch_name, c->n_layers, c->hidden, m->weight_bytes >> 20,
             m->dtype, wtensor_type_name(m->weights), m->n_shards, m->n_shards == 1 ? "" : "s");
    return m;
fail:
    free(offset);
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
            huge_free(m->files->converted, m->files->converted_cap);
        free(m->files);
    }
    free(m->layers);
    free(m->tensors);
    free(m);
}
