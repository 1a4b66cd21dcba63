/* admin: the adapter management routes over the store (adapters/store) and the registry. */
#include "admin.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "adapters/peft.h"
#include "adapters/store.h"
#include "core/log.h"

#define POST_BUFFER 65536   /* libmicrohttpd's post processor buffer */

/* Publishing (the store's rename, then the registry's install) and deleting are one step
 * each under this lock, so two replaces of one name cannot leave the registry serving one
 * upload while the store holds the other. Uploading and validating run outside it. */
static pthread_mutex_t publish_lock = PTHREAD_MUTEX_INITIALIZER;

/* ------------------------------------------------------------------ listing --------- */

static const char *state_name(const registry_info *i)
{
    switch (i->state) {
    case REGISTRY_ON_DISK: return "on_disk";
    case REGISTRY_LOADING: return "loading";
    case REGISTRY_LOADED: return i->merged ? "merged" : "loaded";
    case REGISTRY_FAILED: return "failed";
    }
    return "on_disk";
}

static json_t *describe(const registry_info *i)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "id", i->name, "object", "adapter", "state",
                          state_name(i));
    if (!o)
        return NULL;
    if (i->state == REGISTRY_FAILED)
        json_object_set_new(o, "error", json_string(i->reason));
    int loaded = i->state == REGISTRY_LOADED;
    json_t *targets = json_array();
    for (int p = 0; loaded && p < PROJ_COUNT; p++)
        if (i->proj_mask & (1u << p))
            json_array_append_new(targets, json_string(model_proj_name((model_proj)p)));
    char version[24];
    snprintf(version, sizeof version, "%016" PRIx64, i->version);
    json_object_set_new(o, "r", loaded ? json_integer(i->r) : json_null());
    json_object_set_new(o, "lora_alpha", loaded ? json_real(i->alpha) : json_null());
    json_object_set_new(o, "use_rslora", loaded ? json_boolean(i->use_rslora) : json_null());
    json_object_set_new(o, "target_modules", loaded ? targets : json_null());
    if (!loaded)
        json_decref(targets);
    json_object_set_new(o, "matrices", loaded ? json_integer(i->n_matrices) : json_null());
    json_object_set_new(o, "dtype", loaded ? json_string(i->dtype) : json_null());
    json_object_set_new(o, "bytes_on_disk", loaded ? json_integer((json_int_t)i->disk_bytes)
                                                   : json_null());
    json_object_set_new(o, "bytes_in_memory", json_integer((json_int_t)i->bytes));
    json_object_set_new(o, "version", loaded && i->version ? json_string(version) : json_null());
    json_object_set_new(o, "in_use", json_integer(i->refs));
    json_object_set_new(o, "requests", json_integer((json_int_t)i->requests));
    json_object_set_new(o, "tokens", json_integer((json_int_t)i->tokens));
    json_object_set_new(o, "last_used", i->last_used ? json_integer((json_int_t)i->last_used)
                                                     : json_null());
    return o;
}

static void reply(api_reply *out, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!s) {
        api_error(out, 500, NULL, NULL, "out of memory");
        return;
    }
    free(out->body);
    out->body = s;
    out->len = strlen(s);
    out->status = status;
    out->content_type = "application/json";
}

static void reply_text(api_reply *out, int status, const char *fmt, const char *arg)
{
    char buf[512];
    snprintf(buf, sizeof buf, fmt, arg);
    free(out->body);
    out->body = strdup(buf);
    out->len = out->body ? strlen(out->body) : 0;
    out->status = status;
    out->content_type = "text/plain; charset=utf-8";
}

void admin_list(app *a, api_reply *out)
{
    int n = 0;
    registry_info *info = registry_list(a->reg, &n);
    json_t *data = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(data, describe(&info[i]));
    free(info);
    reply(out, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

/* Fills *found with name's entry; 0 when unknown. */
static int lookup(app *a, const char *name, registry_info *found)
{
    int n = 0, ok = 0;
    registry_info *info = registry_list(a->reg, &n);
    for (int i = 0; i < n && !ok; i++)
        if (strcmp(info[i].name, name) == 0) {
            *found = info[i];
            ok = 1;
        }
    free(info);
    return ok;
}

void admin_get(app *a, const char *name, api_reply *out)
{
    registry_info i;
    if (!lookup(a, name, &i)) {
        api_error(out, 404, "name", "adapter_not_found", "adapter '%.100s' does not exist",
                  name);
        return;
    }
    reply(out, 200, describe(&i));
}

/* Names an upload may take: the registry's rule, and not the base model's id. */
static int check_name(app *a, const char *name, const char *param, api_reply *out)
{
    if (!registry_name_valid(name)) {
        api_error(out, 400, param, "invalid_name", "adapter names are 1 to 64 of "
                  "[A-Za-z0-9._-], starting with a letter or digit (got '%.100s')", name);
        return -1;
    }
    if (strcmp(name, a->base_id) == 0) {
        api_error(out, 400, param, "invalid_name", "'%s' is the base model's id", name);
        return -1;
    }
    if (!a->opt.adapter_dir) {
        api_error(out, 400, NULL, "no_adapter_dir", "the server has no adapter directory "
                  "(start it with --adapter-dir)");
        return -1;
    }
    return 0;
}

void admin_delete(app *a, const char *name, api_reply *out)
{
    lr_error err = {0};
    registry_info known_info;
    /* Only an adapter (what GET lists) is deleted, never another entry of the directory
     * (a file, a directory without adapter_config.json, a link to one). */
    if (!registry_name_valid(name) || !a->opt.adapter_dir || !lookup(a, name, &known_info)) {
        api_error(out, 404, "name", "adapter_not_found", "adapter '%.100s' does not exist",
                  name);
        return;
    }
    pthread_mutex_lock(&publish_lock);
    int rc = store_remove(a->opt.adapter_dir, name, &err);
    int known = registry_remove(a->reg, name);
    pthread_mutex_unlock(&publish_lock);
    if (rc == LR_ENOTFOUND && !known) {
        api_error(out, 404, "name", "adapter_not_found", "adapter '%s' does not exist", name);
        return;
    }
    if (rc && rc != LR_ENOTFOUND) {
        api_error(out, 500, NULL, NULL, "%s", err.msg);
        return;
    }
    log_info("adapter '%s': deleted", name);
    reply(out, 200, json_pack("{s:s, s:s, s:b}", "id", name, "object", "adapter", "deleted", 1));
}

/* ------------------------------------------------------------------- upload --------- */

struct admin_upload {
    app *a;
    char name[REGISTRY_NAME_MAX + 1];
    int replace;
    struct MHD_PostProcessor *pp;
    store_upload *up;
    size_t total, limit;
    int failed;            /* out already holds the error */
    api_reply *err_out;    /* where the iterator reports (set during admin_upload_data) */
    double t_begin;        /* CLOCK_MONOTONIC at admin_upload_begin, for the debug log */
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int part_of(const char *key)
{
    if (strcmp(key, "config") == 0)
        return STORE_CONFIG;
    if (strcmp(key, "weights") == 0)
        return STORE_WEIGHTS;
    return -1;
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    admin_upload *u = cls;
    (void)kind;
    (void)filename;
    (void)content_type;
    (void)transfer_encoding;
    int file = part_of(key ? key : "");
    if (file < 0) {
        api_error(u->err_out, 400, key, "unexpected_part", "unexpected part '%.60s': send "
                  "the parts 'config' (adapter_config.json) and 'weights' "
                  "(adapter_model.safetensors)", key ? key : "");
        u->failed = 1;
        return MHD_NO;
    }
    if (off == 0 && store_upload_size(u->up, file) > 0) {
        api_error(u->err_out, 400, key, "duplicate_part", "part '%s' is given twice", key);
        u->failed = 1;
        return MHD_NO;
    }
    lr_error err = {0};
    if (size && store_upload_write(u->up, file, data, size, &err)) {
        api_error(u->err_out, err.code == LR_ENOSPC ? 507 : 500, NULL,
                  err.code == LR_ENOSPC ? "insufficient_storage" : NULL, "%s", err.msg);
        u->failed = 1;
        return MHD_NO;
    }
    return MHD_YES;
}

admin_upload *admin_upload_begin(app *a, struct MHD_Connection *c, const char *name,
                                 api_reply *out)
{
    if (check_name(a, name, "name", out))
        return NULL;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (!ct || strncasecmp(ct, "multipart/form-data", 19) != 0) {
        api_error(out, 415, NULL, "unsupported_media_type", "upload an adapter as "
                  "multipart/form-data with parts 'config' and 'weights' (got %s)",
                  ct ? ct : "no Content-Type");
        return NULL;
    }
    const char *rep = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "replace");
    int replace = rep && (strcmp(rep, "true") == 0 || strcmp(rep, "1") == 0);
    if (rep && !replace && strcmp(rep, "false") != 0 && strcmp(rep, "0") != 0) {
        api_error(out, 400, "replace", NULL, "'replace' must be true or false");
        return NULL;
    }
    registry_info existing;
    if (!replace && lookup(a, name, &existing)) {
        api_error(out, 409, "name", "adapter_exists", "adapter '%s' exists (replace it with "
                  "?replace=true)", name);
        return NULL;
    }
    size_t limit = (size_t)a->opt.max_upload_mb << 20;
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > (unsigned long long)limit) {
        api_error(out, 413, NULL, "request_too_large", "the upload is %s bytes; the limit is "
                  "%d MB (--max-upload-mb)", cl, a->opt.max_upload_mb);
        return NULL;
    }
    admin_upload *u = calloc(1, sizeof *u);
    lr_error err = {0};
    if (!u || !(u->up = store_upload_begin(a->opt.adapter_dir, &err))) {
        api_error(out, 500, NULL, NULL, "%s", u ? err.msg : "out of memory");
        free(u);
        return NULL;
    }
    u->a = a;
    u->t_begin = mono_now();
    u->replace = replace;
    u->limit = limit;
    snprintf(u->name, sizeof u->name, "%s", name);
    u->pp = MHD_create_post_processor(c, POST_BUFFER, on_part, u);
    if (!u->pp) {
        /* libmicrohttpd also refuses a one-character boundary (RFC 2046 allows 1 to 70) */
        api_error(out, 400, NULL, NULL, "the multipart/form-data body has no boundary "
                  "lorad can use (Content-Type needs boundary=... of 2 to 70 characters)");
        admin_upload_free(u);
        return NULL;
    }
    return u;
}

int admin_upload_data(admin_upload *u, const char *data, size_t n, api_reply *out)
{
    u->total += n;
    if (u->total > u->limit) {
        api_error(out, 413, NULL, "request_too_large", "the upload is larger than %d MB "
                  "(--max-upload-mb)", u->a->opt.max_upload_mb);
        return -1;
    }
    u->err_out = out;
    if (MHD_post_process(u->pp, data, n) != MHD_YES) {
        if (!u->failed)
            api_error(out, 400, NULL, NULL, "the multipart/form-data body is malformed");
        return -1;
    }
    return 0;
}

/* peft_load names the adapter, and files in it, by its path on the server (for an upload a
 * temporary directory); clients know it by name: "adapter '<path>': " becomes
 * "adapter 'NAME': " and any other "<path>/" is dropped. */
static void rename_in_message(lr_error *err, const char *path, const char *name)
{
    char prefix[4200], out[sizeof err->msg];
    snprintf(prefix, sizeof prefix, "adapter '%s': ", path);
    const char *m = err->msg;
    size_t n = strlen(prefix), k = 0;
    if (strncmp(m, prefix, n) == 0)
        m += n;
    k = (size_t)snprintf(out, sizeof out, "adapter '%s': ", name);
    size_t plen = strlen(path);
    while (*m && k + 1 < sizeof out) {
        if (strncmp(m, path, plen) == 0 && m[plen] == '/') {
            m += plen + 1;
            continue;
        }
        out[k++] = *m++;
    }
    out[k] = '\0';
    memcpy(err->msg, out, sizeof out);
}

void admin_upload_finish(app *a, admin_upload *u, api_reply *out)
{
    u->err_out = out;
    if (MHD_destroy_post_processor(u->pp) != MHD_YES && !u->failed) {
        u->pp = NULL;
        api_error(out, 400, NULL, NULL, "the multipart/form-data body ended early");
        admin_upload_free(u);
        return;
    }
    u->pp = NULL;
    if (u->failed) {
        admin_upload_free(u);
        return;
    }
    for (int f = 0; f < 2; f++)
        if (store_upload_size(u->up, f) == 0) {
            api_error(out, 400, f ? "weights" : "config", "missing_part", "the part '%s' "
                      "(%s) is missing or empty", f ? "weights" : "config", store_file_names[f]);
            admin_upload_free(u);
            return;
        }
    /* Validated against the base before anything is published. */
    lr_error err = {0};
    peft_options po = peft_options_default();
    po.max_rank = a->opt.max_rank;
    double t_received = mono_now();
    peft_adapter *ad = peft_load(store_upload_dir(u->up), &a->m->cfg, &po, &err);
    double t_validated = mono_now();
    if (!ad) {
        rename_in_message(&err, store_upload_dir(u->up), u->name);
        api_error(out, err.code == LR_ENOMEM ? 500 : 422, NULL, "adapter_invalid", "%s",
                  err.msg);
        admin_upload_free(u);
        return;
    }
    registry_info info = {0};
    snprintf(info.name, sizeof info.name, "%s", u->name);
    info.state = REGISTRY_LOADED;
    info.r = ad->r;
    info.alpha = ad->alpha;
    info.use_rslora = ad->use_rslora;
    memcpy(info.dtype, ad->dtype, sizeof info.dtype);
    info.proj_mask = ad->proj_mask;
    info.n_matrices = ad->n_matrices;
    info.bytes = ad->w->bytes;
    info.disk_bytes = store_upload_size(u->up, 0) + store_upload_size(u->up, 1);
    info.version = store_upload_version(u->up);
    store_upload *up = u->up;
    u->up = NULL;
    pthread_mutex_lock(&publish_lock);
    int rc = store_upload_commit(up, u->name, u->replace, &err);
    if (rc) {
        pthread_mutex_unlock(&publish_lock);
        peft_free(ad);
        api_error(out, rc == LR_EEXIST ? 409 : rc == LR_ENOSPC ? 507 : 500,
                  rc == LR_EEXIST ? "name" : NULL,
                  rc == LR_EEXIST ? "adapter_exists"
                  : rc == LR_ENOSPC ? "insufficient_storage" : NULL, "%s", err.msg);
        admin_upload_free(u);
        return;
    }
    double t_committed = mono_now();
    rc = registry_install(a->reg, u->name, ad, info.version, &err);
    pthread_mutex_unlock(&publish_lock);
    log_debug("adapter '%s': upload received in %.1f ms, validated and loaded in %.1f ms, "
              "committed (fsync, rename) in %.1f ms, published in %.1f ms", u->name,
              (t_received - u->t_begin) * 1e3, (t_validated - t_received) * 1e3,
              (t_committed - t_validated) * 1e3, (mono_now() - t_committed) * 1e3);
    if (rc) {
        api_error(out, 500, NULL, NULL, "%s", err.msg);
        admin_upload_free(u);
        return;
    }
    log_info("adapter '%s': uploaded (%zu bytes, version %016" PRIx64 "%s)", u->name,
             info.disk_bytes, info.version, u->replace ? ", replace" : "");
    json_t *o = describe(&info);
    json_object_set_new(o, "in_use", json_integer(0));
    reply(out, 201, o);
    admin_upload_free(u);
}

void admin_upload_free(admin_upload *u)
{
    if (!u)
        return;
    if (u->pp)
        MHD_destroy_post_processor(u->pp);
    store_upload_abort(u->up);
    free(u);
}

/* ------------------------------------------------------------------ vLLM's ---------- */

/* A string field of a small JSON body; NULL (and out filled) when missing. */
static json_t *parse_body(const char *body, size_t len, api_reply *out)
{
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        api_error(out, 400, NULL, NULL, "the body must be a JSON object%s%s",
                  o ? "" : ": ", o ? "" : je.text);
        json_decref(o);
        return NULL;
    }
    return o;
}

/* 1 if path (resolved, symlinks followed) is dir itself's child tree. */
static int inside(const char *real, const char *dir)
{
    char rd[PATH_MAX];
    if (!dir || !realpath(dir, rd))
        return 0;
    size_t n = strlen(rd);
    return strncmp(real, rd, n) == 0 && real[n] == '/';
}

void admin_load_vllm(app *a, const char *body, size_t len, api_reply *out)
{
    json_t *o = parse_body(body, len, out);
    if (!o)
        return;
    const char *name = json_string_value(json_object_get(o, "lora_name"));
    const char *path = json_string_value(json_object_get(o, "lora_path"));
    if (!name || !path || !*name || !*path) {
        api_error(out, 400, NULL, NULL, "Both 'lora_name' and 'lora_path' must be provided.");
        goto done;
    }
    if (check_name(a, name, "lora_name", out))
        goto done;
    registry_info existing;
    if (lookup(a, name, &existing)) {
        api_error(out, 400, "lora_name", NULL, "The lora adapter '%s' has already been "
                  "loaded.", name);
        goto done;
    }
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        api_error(out, 404, "lora_path", NULL, "lora_path '%.200s': %s", path,
                  strerror(errno));
        goto done;
    }
    int allowed = inside(real, a->opt.adapter_dir);
    for (int i = 0; i < a->opt.n_allow_paths && !allowed; i++)
        allowed = inside(real, a->opt.allow_paths[i]) || strcmp(real, a->opt.allow_paths[i]) == 0;
    if (!allowed) {
        api_error(out, 403, "lora_path", NULL, "lora_path must be inside the adapter "
                  "directory or a --allow-adapter-path directory");
        goto done;
    }
    lr_error err = {0};
    peft_options po = peft_options_default();
    po.max_rank = a->opt.max_rank;
    peft_adapter *ad = peft_load(real, &a->m->cfg, &po, &err);
    if (!ad) {
        rename_in_message(&err, real, name);
        api_error(out, 400, "lora_path", "adapter_invalid", "%s", err.msg);
        goto done;
    }
    peft_free(ad);
    uint64_t version = 0;
    if (store_copy_in(a->opt.adapter_dir, real, name, 0, &version, &err)) {
        api_error(out, err.code == LR_EEXIST ? 400 : 500, "lora_name", NULL, "%s", err.msg);
        goto done;
    }
    registry_rescan(a->reg);
    log_info("adapter '%s': loaded from %s (version %016" PRIx64 ")", name, real, version);
    reply_text(out, 200, "Success: LoRA adapter '%s' added successfully.", name);
done:
    json_decref(o);
}

void admin_unload_vllm(app *a, const char *body, size_t len, api_reply *out)
{
    json_t *o = parse_body(body, len, out);
    if (!o)
        return;
    const char *name = json_string_value(json_object_get(o, "lora_name"));
    if (!name || !*name) {
        api_error(out, 400, NULL, NULL, "'lora_name' needs to be provided to unload a LoRA "
                  "adapter.");
    } else {
        api_reply tmp = {0};
        admin_delete(a, name, &tmp);
        if (tmp.status == 200)
            reply_text(out, 200, "Success: LoRA adapter '%s' removed successfully.", name);
        else if (tmp.status == 404)
            api_error(out, 404, "lora_name", NULL, "The lora adapter '%.100s' cannot be "
                      "found.", name);
        else
            api_error(out, tmp.status, NULL, NULL, "unloading '%.100s' failed", name);
        free(tmp.body);
    }
    json_decref(o);
}
