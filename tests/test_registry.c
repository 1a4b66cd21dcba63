/* Tests for adapters/registry: a small random Llama model and random PEFT adapters, each
 * in a subdirectory of one adapter directory, written here. Expected weights are replayed
 * from the generator's seed (and compared with peft_load of the same directory); merged
 * weights are recomputed here in double precision from the replayed A and B. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/peft.h"
#include "adapters/registry.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/variant.h"
#include "tests/testutil.h"

/* The tiny model of tests/testutil.h. */
enum { HIDDEN = TINY_HIDDEN, INTER = TINY_INTER, LAYERS = TINY_LAYERS, HEADS = TINY_HEADS,
       KV_HEADS = TINY_KV_HEADS, HEAD_DIM = TINY_HEAD_DIM, VOCAB = TINY_VOCAB, CTX = TINY_CTX,
       EOS = TINY_EOS };

static void write_adapter(const char *dir, int r, double alpha, unsigned mask, uint32_t seed,
                          int in_extra)
{
    testutil_write_tiny_adapter(dir, r, alpha, mask, seed, in_extra, "test/registry-tiny");
}
#define ALL_PROJ 0x7fu

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* The first matrix write_adapter writes (layer 0, lowest projection in the mask), replayed
 * from the seed: a [r, in], b [out, r] as in the file. */
static void replay_first_matrix(uint32_t seed, int r, int in, int out, float *a, float *b)
{
    for (int i = 0; i < r * in; i++)
        a[i] = 0 + 0.5f * testutil_rnd(&seed);
    for (int i = 0; i < out * r; i++)
        b[i] = 0 + 0.5f * testutil_rnd(&seed);
}

/* dir/name, made and filled with an adapter. */
static void add_adapter(const char *dir, const char *name, int r, double alpha, unsigned mask,
                        uint32_t seed)
{
    char sub[512];
    snprintf(sub, sizeof sub, "%s/%s", dir, name);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    write_adapter(sub, r, alpha, mask, seed, 0);
}

/* Replaces dir/name's two files by those of a fresh valid adapter, each renamed over the
 * old one (new inodes, as a deploy tool would do it). */
static void replace_adapter(const char *dir, const char *name, int r, uint32_t seed)
{
    char *stage = testutil_mkdtemp("registry_stage");
    write_adapter(stage, r, 2.0 * r, ALL_PROJ, seed, 0);
    const char *files[2] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char from[512], to[512];
        snprintf(from, sizeof from, "%s/%s", stage, files[i]);
        snprintf(to, sizeof to, "%s/%s/%s", dir, name, files[i]);
        ck_assert_msg(rename(from, to) == 0, "rename %s → %s failed", from, to);
    }
    testutil_rmdir(stage);
}

/* A new adapter directory (for one test). */
static char *adir_new(void)
{
    return testutil_mkdtemp("registry_test");
}

/* Removes an adapter directory: its subdirectories (one level of plain files each), then
 * its own files and itself. Accepts NULL. */
static void adir_free(char *dir)
{
    if (!dir)
        return;
    char subs[32][512];
    int n = 0;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL && n < 32) {
            struct stat st;
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(subs[n], sizeof subs[n], "%s/%s", dir, de->d_name);
            if (lstat(subs[n], &st) == 0 && S_ISDIR(st.st_mode))
                n++;
        }
        closedir(d);
    }
    for (int i = 0; i < n; i++)
        testutil_rmdir(strdup(subs[i]));
    testutil_rmdir(dir);
}

/* ---- shared fixture: the base model ---- */

static struct {
    char *dir;
    model *m;
} g;

static void fixture_setup(void)
{
    lr_error err = {0};
    g.dir = testutil_mkdtemp("registry_model");
    testutil_write_tiny_model(g.dir);
    g.m = model_load(g.dir, &err);
    ck_assert_msg(g.m != NULL, "model_load: %s", err.msg);
}

static void fixture_teardown(void)
{
    model_free(g.m);
    testutil_rmdir(g.dir);
    memset(&g, 0, sizeof g);
}

/* ---- what on_event reports ---- */

typedef struct {
    pthread_mutex_t lock;
    pthread_t caller;         /* the test's thread */
    pthread_t first;          /* thread of the first event */
    int n;                    /* events */
    int other_threads;        /* events on another thread than the first one's */
    int on_caller;            /* events on the test's thread */
    int loads, failures;      /* load events with code 0 / with an error code */
    int evictions;            /* events with seconds < 0 */
    int bad_load_code;        /* failure events whose code is not LR_EINVAL */
    char last_load[REGISTRY_NAME_MAX + 1], last_failed[REGISTRY_NAME_MAX + 1];
    char evicted[256];        /* names evicted, in order, each followed by ' ' */
} events;

static void on_event(void *user, const char *name, double seconds, int code)
{
    events *ev = user;
    pthread_mutex_lock(&ev->lock);
    pthread_t self = pthread_self();
    if (ev->n++ == 0)
        ev->first = self;
    else if (!pthread_equal(self, ev->first))
        ev->other_threads++;
    if (pthread_equal(self, ev->caller))
        ev->on_caller++;
    if (seconds < 0) {
        ev->evictions++;
        size_t used = strlen(ev->evicted);
        snprintf(ev->evicted + used, sizeof ev->evicted - used, "%s ", name);
    } else if (code == 0) {
        ev->loads++;
        snprintf(ev->last_load, sizeof ev->last_load, "%s", name);
    } else {
        ev->failures++;
        ev->bad_load_code += code != LR_EINVAL;
        snprintf(ev->last_failed, sizeof ev->last_failed, "%s", name);
    }
    pthread_mutex_unlock(&ev->lock);
}

static void events_init(events *ev)
{
    memset(ev, 0, sizeof *ev);
    pthread_mutex_init(&ev->lock, NULL);
    ev->caller = pthread_self();
}

/* A copy taken under the lock (the loader thread may still be writing). */
static events events_get(events *ev)
{
    pthread_mutex_lock(&ev->lock);
    events c = *ev;
    pthread_mutex_unlock(&ev->lock);
    return c;
}

/* ---- registry helpers ---- */

static registry *open_registry(const char *dir, int max_loaded, int merge, events *ev)
{
    registry_options o = registry_options_default();
    o.dir = dir;
    o.max_loaded = max_loaded;
    o.merge = merge;
    if (ev) {
        o.on_event = on_event;
        o.user = ev;
    }
    lr_error err = {0};
    registry *r = registry_create(g.m, &o, &err);
    ck_assert_msg(r != NULL, "registry_create: %s", err.msg);
    return r;
}

static registry_adapter *acquire_ok(registry *r, const char *name)
{
    lr_error err = {0};
    registry_adapter *a = registry_acquire(r, name, &err);
    ck_assert_msg(a != NULL, "registry_acquire '%s': %s", name, err.msg);
    ck_assert_str_eq(registry_adapter_name(a), name);
    return a;
}

typedef struct {
    int loaded;
    uint64_t loads, evictions;
} counts;

static counts counts_get(registry *r)
{
    counts c;
    registry_counts(r, &c.loaded, &c.loads, &c.evictions);
    return c;
}

/* Loaded count once it is at most want, polling for up to 5 s: an eviction a release
 * makes possible may be done by the loader thread after registry_release returns. */
static int wait_loaded_at_most(registry *r, int want)
{
    counts c = counts_get(r);
    for (int i = 0; i < 5000 && c.loaded > want; i++) {
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        c = counts_get(r);
    }
    return c.loaded;
}

/* name's line of a listing (copied), or state -1 when it is not listed. */
static registry_info info_of(registry *r, const char *name)
{
    int n = 0;
    registry_info *list = registry_list(r, &n);
    registry_info out;
    memset(&out, 0, sizeof out);
    out.state = (registry_state)-1;
    for (int i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            out = list[i];
    free(list);
    return out;
}

static int state_of(registry *r, const char *name)
{
    return (int)info_of(r, name).state;
}

/* 1 if w holds exactly what peft_load reads from dir for the same base. */
static int weights_equal_peft_load(const lora_weights *w, const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    lr_error err = {0};
    peft_adapter *ref = peft_load(path, &g.m->cfg, NULL, &err);
    ck_assert_msg(ref != NULL, "peft_load %s: %s", path, err.msg);
    int same = w->n_layers == ref->w->n_layers;
    for (int l = 0; same && l < LAYERS; l++)
        for (int p = 0; same && p < PROJ_COUNT; p++) {
            const lora_matrix *x = lora_weights_get(w, l, (model_proj)p);
            const lora_matrix *y = lora_weights_get(ref->w, l, (model_proj)p);
            same = x->r == y->r && x->scale == y->scale;
            if (same && x->r) {
                same = x->a_type == y->a_type &&
                       memcmp(x->a, y->a, sizeof(float) * x->r * tiny_proj_in[p]) == 0 &&
                       memcmp(x->bt, y->bt, sizeof(float) * x->r * tiny_proj_out[p]) == 0;
            }
        }
    peft_free(ref);
    return same;
}

/* 1 if w's (layer 0, q_proj) matrix is the one write_adapter drew from seed with rank r. */
static int q0_matches_seed(const lora_weights *w, uint32_t seed, int r)
{
    float a[8 * HIDDEN], b[HEADS * HEAD_DIM * 8];
    ck_assert_int_le(r, 8);
    replay_first_matrix(seed, r, HIDDEN, HEADS * HEAD_DIM, a, b);
    const lora_matrix *lm = lora_weights_get(w, 0, PROJ_Q);
    if (lm->r != r)
        return 0;
    for (int j = 0; j < r; j++)
        for (int i = 0; i < HIDDEN; i++)
            if (lora_a_at(lm, HIDDEN, j, i) != a[j * HIDDEN + i])
                return 0;
    for (int o = 0; o < HEADS * HEAD_DIM; o++)
        for (int k = 0; k < r; k++)
            if (lm->bt[k * HEADS * HEAD_DIM + o] != b[o * r + k])
                return 0;
    return 1;
}

/* ================================ core ================================ */

START_TEST(test_list_shows_valid_subdirectories_sorted_and_on_disk_before_use)
{
    char *dir = adir_new();
    add_adapter(dir, "beta", 2, 4.0, ALL_PROJ, 1);
    add_adapter(dir, "alpha", 2, 4.0, ALL_PROJ, 2);
    add_adapter(dir, "Gamma", 2, 4.0, ALL_PROJ, 3);
    add_adapter(dir, "ok-name_1.2", 2, 4.0, ALL_PROJ, 4);
    /* valid adapters under names registry_name_valid refuses */
    add_adapter(dir, ".hidden", 2, 4.0, ALL_PROJ, 5);
    add_adapter(dir, "has space", 2, 4.0, ALL_PROJ, 6);
    char long_name[REGISTRY_NAME_MAX + 2];
    memset(long_name, 'x', REGISTRY_NAME_MAX + 1);
    long_name[REGISTRY_NAME_MAX + 1] = '\0';
    add_adapter(dir, long_name, 2, 4.0, ALL_PROJ, 7);
    /* a directory with the weights but no adapter_config.json, one whose config is a
     * directory, and a plain file */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/no-config", dir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    write_adapter(sub, 2, 4.0, ALL_PROJ, 8, 0);
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", sub);
    ck_assert_int_eq(unlink(cfg), 0);
    snprintf(sub, sizeof sub, "%s/config-is-dir", dir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", sub);
    ck_assert_int_eq(mkdir(cfg, 0755), 0);
    write_text(dir, "plain-file", "{}");

    registry *r = open_registry(dir, 8, 0, NULL);
    int n = 0;
    registry_info *list = registry_list(r, &n);
    const char *want[] = {"Gamma", "alpha", "beta", "ok-name_1.2"};   /* strcmp order */
    ck_assert_int_eq(n, 4);
    ck_assert_ptr_nonnull(list);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(list[i].name, want[i]);
        ck_assert_int_eq(list[i].state, REGISTRY_ON_DISK);
        ck_assert_int_eq(list[i].refs, 0);
        ck_assert_int_eq(list[i].r, 0);
        ck_assert_uint_eq(list[i].bytes, 0);
        ck_assert_uint_eq(list[i].requests, 0);
    }
    free(list);
    counts c = counts_get(r);
    ck_assert_int_eq(c.loaded, 0);
    ck_assert_uint_eq(c.loads, 0);   /* listing loads nothing */
    registry_destroy(r);
    rmdir(cfg);   /* the directory standing for a config file */
    adir_free(dir);
}
END_TEST

START_TEST(test_list_and_acquire_see_subdirectories_added_or_removed_after_create)
{
    char *dir = adir_new();
    add_adapter(dir, "first", 2, 4.0, ALL_PROJ, 11);
    registry *r = open_registry(dir, 8, 0, NULL);
    int n = 0;
    free(registry_list(r, &n));
    ck_assert_int_eq(n, 1);

    add_adapter(dir, "listed-later", 2, 4.0, ALL_PROJ, 12);
    add_adapter(dir, "acquired-later", 2, 4.0, ALL_PROJ, 13);
    ck_assert_int_eq(state_of(r, "listed-later"), REGISTRY_ON_DISK);
    registry_release(r, acquire_ok(r, "listed-later"), 1);
    /* never listed before: acquire finds it on disk by itself */
    registry_adapter *a = acquire_ok(r, "acquired-later");
    ck_assert(q0_matches_seed(registry_adapter_weights(a), 13, 2));
    registry_release(r, a, 1);
    registry_info *list = registry_list(r, &n);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(list[0].name, "acquired-later");
    ck_assert_int_eq(list[0].state, REGISTRY_LOADED);
    ck_assert_str_eq(list[1].name, "first");
    ck_assert_int_eq(list[1].state, REGISTRY_ON_DISK);
    ck_assert_str_eq(list[2].name, "listed-later");
    ck_assert_int_eq(list[2].state, REGISTRY_LOADED);
    free(list);

    /* an adapter removed while on disk is neither listed nor found */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/first", dir);
    testutil_rmdir(strdup(sub));
    ck_assert_int_eq(state_of(r, "first"), -1);
    lr_error err = {0};
    ck_assert_ptr_null(registry_acquire(r, "first", &err));
    ck_assert_int_eq(err.code, LR_ENOTFOUND);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_acquire_loads_once_and_weights_equal_the_files_and_peft_load)
{
    char *dir = adir_new();
    add_adapter(dir, "sql", 4, 8.0, ALL_PROJ, 777);       /* s = 2 */
    add_adapter(dir, "other", 2, 4.0, ALL_PROJ, 778);
    registry *r = open_registry(dir, 8, 0, NULL);
    ck_assert_int_eq(state_of(r, "sql"), REGISTRY_ON_DISK);

    registry_adapter *a = acquire_ok(r, "sql");
    counts c = counts_get(r);
    ck_assert_int_eq(c.loaded, 1);
    ck_assert_uint_eq(c.loads, 1);
    const lora_weights *w = registry_adapter_weights(a);
    ck_assert_ptr_nonnull(w);
    ck_assert(q0_matches_seed(w, 777, 4));
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            ck_assert_float_eq(lora_weights_get(w, l, (model_proj)p)->scale, 2.0f);
    ck_assert(weights_equal_peft_load(w, dir, "sql"));
    ck_assert_ptr_null(registry_adapter_merged(a));

    registry_info in = info_of(r, "sql");
    ck_assert_int_eq(in.state, REGISTRY_LOADED);
    ck_assert_int_eq(in.refs, 1);
    ck_assert_int_eq(in.r, 4);
    ck_assert_float_eq(in.alpha, 8.0f);
    ck_assert_uint_eq(in.bytes, w->bytes);
    ck_assert_int_eq(state_of(r, "other"), REGISTRY_ON_DISK);   /* only what is asked for */

    /* a second acquire, with the first still held and after it is released */
    registry_adapter *b = acquire_ok(r, "sql");
    ck_assert_ptr_eq(b, a);
    ck_assert_int_eq(info_of(r, "sql").refs, 2);
    registry_release(r, a, 0);
    registry_release(r, b, 0);
    a = acquire_ok(r, "sql");
    ck_assert_ptr_eq(registry_adapter_weights(a), w);
    registry_release(r, a, 0);
    c = counts_get(r);
    ck_assert_uint_eq(c.loads, 1);
    ck_assert_int_eq(c.loaded, 1);
    ck_assert_int_eq(info_of(r, "sql").refs, 0);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_release_counts_requests_and_tokens_in_the_listing)
{
    char *dir = adir_new();
    add_adapter(dir, "a", 2, 4.0, ALL_PROJ, 21);
    add_adapter(dir, "b", 2, 4.0, ALL_PROJ, 22);
    registry *r = open_registry(dir, 8, 0, NULL);
    const uint64_t tokens[3] = {5, 0, 1000000007ull};
    for (int i = 0; i < 3; i++)
        registry_release(r, acquire_ok(r, "a"), tokens[i]);
    registry_adapter *held = acquire_ok(r, "b");
    registry_info a = info_of(r, "a"), b = info_of(r, "b");
    ck_assert_uint_eq(a.requests, 3);
    ck_assert_uint_eq(a.tokens, 5 + 0 + 1000000007ull);
    ck_assert_uint_eq(b.requests, 0);   /* counted at release, not at acquire */
    ck_assert_int_eq(b.refs, 1);
    registry_release(r, held, 7);
    b = info_of(r, "b");
    ck_assert_uint_eq(b.requests, 1);
    ck_assert_uint_eq(b.tokens, 7);
    ck_assert_int_eq(b.refs, 0);

    /* releasing nothing changes nothing */
    registry_release(r, NULL, 99);
    ck_assert_uint_eq(info_of(r, "a").requests, 3);
    ck_assert_uint_eq(info_of(r, "b").tokens, 7);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_lru_evicts_the_least_recently_used_idle_adapter)
{
    char *dir = adir_new();
    add_adapter(dir, "a", 2, 4.0, ALL_PROJ, 31);
    add_adapter(dir, "b", 2, 4.0, ALL_PROJ, 32);
    add_adapter(dir, "c", 2, 4.0, ALL_PROJ, 33);
    events ev;
    events_init(&ev);
    registry *r = open_registry(dir, 2, 0, &ev);
    registry_release(r, acquire_ok(r, "a"), 1);
    registry_release(r, acquire_ok(r, "b"), 1);
    registry_release(r, acquire_ok(r, "c"), 1);
    ck_assert_int_eq(wait_loaded_at_most(r, 2), 2);
    counts c = counts_get(r);
    ck_assert_uint_eq(c.loads, 3);
    ck_assert_uint_eq(c.evictions, 1);
    ck_assert_int_eq(state_of(r, "a"), REGISTRY_ON_DISK);
    ck_assert_int_eq(state_of(r, "b"), REGISTRY_LOADED);
    ck_assert_int_eq(state_of(r, "c"), REGISTRY_LOADED);
    ck_assert_uint_eq(info_of(r, "a").bytes, 0);

    /* recency, not load order: b, loaded before c, is used again, so c goes for a */
    registry_release(r, acquire_ok(r, "b"), 1);
    registry_adapter *a = acquire_ok(r, "a");
    ck_assert(q0_matches_seed(registry_adapter_weights(a), 31, 2));   /* loaded afresh */
    registry_release(r, a, 1);
    ck_assert_int_eq(wait_loaded_at_most(r, 2), 2);
    c = counts_get(r);
    ck_assert_uint_eq(c.loads, 4);
    ck_assert_uint_eq(c.evictions, 2);
    ck_assert_int_eq(state_of(r, "a"), REGISTRY_LOADED);
    ck_assert_int_eq(state_of(r, "b"), REGISTRY_LOADED);
    ck_assert_int_eq(state_of(r, "c"), REGISTRY_ON_DISK);
    events e = events_get(&ev);
    ck_assert_str_eq(e.evicted, "a c ");
    ck_assert_uint_eq(info_of(r, "a").requests, 2);   /* counts survive an eviction */
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_adapter_in_use_is_never_evicted_and_stays_readable)
{
    char *dir = adir_new();
    add_adapter(dir, "a", 4, 8.0, ALL_PROJ, 41);
    add_adapter(dir, "b", 2, 4.0, ALL_PROJ, 42);
    add_adapter(dir, "c", 2, 4.0, ALL_PROJ, 43);
    registry *r = open_registry(dir, 1, 1, NULL);   /* merged too: more to free */
    registry_adapter *ha = acquire_ok(r, "a");
    const char *others[2] = {"b", "c"};
    for (int i = 0; i < 2; i++) {
        registry_adapter *h = acquire_ok(r, others[i]);
        ck_assert_int_eq(state_of(r, "a"), REGISTRY_LOADED);
        registry_release(r, h, 1);
        ck_assert_int_eq(wait_loaded_at_most(r, 1), 1);
        ck_assert_int_eq(state_of(r, "a"), REGISTRY_LOADED);
        ck_assert_int_eq(state_of(r, others[i]), REGISTRY_ON_DISK);
    }
    counts c = counts_get(r);
    ck_assert_uint_eq(c.loads, 3);
    ck_assert_uint_eq(c.evictions, 2);
    /* a's weights, read after the evictions, are still those of its files */
    ck_assert(q0_matches_seed(registry_adapter_weights(ha), 41, 4));
    ck_assert(weights_equal_peft_load(registry_adapter_weights(ha), dir, "a"));
    ck_assert_ptr_nonnull(registry_adapter_merged(ha));

    /* two held with max_loaded 1: both stay; releasing a (now least recently used)
     * brings the registry back to the limit */
    registry_adapter *hb = acquire_ok(r, "b");
    c = counts_get(r);
    ck_assert_int_eq(c.loaded, 2);
    ck_assert_int_eq(state_of(r, "a"), REGISTRY_LOADED);
    ck_assert_int_eq(state_of(r, "b"), REGISTRY_LOADED);
    registry_release(r, ha, 1);
    ck_assert_int_eq(wait_loaded_at_most(r, 1), 1);
    ck_assert_int_eq(state_of(r, "a"), REGISTRY_ON_DISK);
    ck_assert_int_eq(state_of(r, "b"), REGISTRY_LOADED);
    ck_assert(q0_matches_seed(registry_adapter_weights(hb), 42, 2));
    registry_release(r, hb, 1);
    c = counts_get(r);
    ck_assert_int_eq(c.loaded, 1);
    ck_assert_uint_eq(c.loads, 4);
    ck_assert_uint_eq(c.evictions, 3);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

/* ---- threads ---- */

typedef struct {
    registry *r;
    pthread_barrier_t *start;
    const char *name;
    registry_adapter *got;
    int code;
} grabber;

static void *grab_main(void *arg)
{
    grabber *gr = arg;
    lr_error err = {0};
    pthread_barrier_wait(gr->start);
    gr->got = registry_acquire(gr->r, gr->name, &err);
    gr->code = err.code;
    return NULL;
}

START_TEST(test_eight_threads_acquiring_one_unloaded_adapter_share_one_load)
{
    enum { N = 8 };
    char *dir = adir_new();
    add_adapter(dir, "shared", 4, 8.0, ALL_PROJ, 51);
    events ev;
    events_init(&ev);
    registry *r = open_registry(dir, 4, 1, &ev);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    grabber gr[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        gr[i] = (grabber){.r = r, .start = &start, .name = "shared"};
        ck_assert_int_eq(pthread_create(&th[i], NULL, grab_main, &gr[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(gr[i].got != NULL, "thread %d: code %d", i, gr[i].code);
        ck_assert_ptr_eq(gr[i].got, gr[0].got);
    }
    counts c = counts_get(r);
    ck_assert_uint_eq(c.loads, 1);
    ck_assert_int_eq(c.loaded, 1);
    ck_assert_int_eq(events_get(&ev).loads, 1);
    ck_assert_int_eq(info_of(r, "shared").refs, N);
    ck_assert(q0_matches_seed(registry_adapter_weights(gr[0].got), 51, 4));
    for (int i = 0; i < N; i++)
        registry_release(r, gr[i].got, (uint64_t)i);
    registry_info in = info_of(r, "shared");
    ck_assert_int_eq(in.refs, 0);
    ck_assert_uint_eq(in.requests, N);
    ck_assert_uint_eq(in.tokens, N * (N - 1) / 2);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

enum { CYCLE_ADAPTERS = 5, CYCLE_THREADS = 6, CYCLE_ITERS = 200 };
static const char *const cycle_names[CYCLE_ADAPTERS] = {"c0", "c1", "c2", "c3", "c4"};

typedef struct {
    registry *r;
    int id;
    int failed, wrong;     /* acquires that failed; adapters whose weights were not theirs */
    uint64_t requests[CYCLE_ADAPTERS], tokens[CYCLE_ADAPTERS];
    float q0_first[CYCLE_ADAPTERS];   /* expected A[0][0] of (layer 0, q_proj) */
} cycler;

static void *cycle_main(void *arg)
{
    cycler *cy = arg;
    for (int i = 0; i < CYCLE_ITERS; i++) {
        int k = (cy->id * 7 + i * (1 + cy->id % 3)) % CYCLE_ADAPTERS;
        lr_error err = {0};
        registry_adapter *a = registry_acquire(cy->r, cycle_names[k], &err);
        if (!a) {
            cy->failed++;
            continue;
        }
        const lora_weights *w = registry_adapter_weights(a);
        const lora_matrix *lm = lora_weights_get(w, LAYERS - 1, PROJ_DOWN);
        float sum = 0;   /* touch all of one matrix: ASan sees a freed one */
        for (int j = 0; j < lm->r * INTER; j++)
            sum += lm->a[j];
        if (lora_weights_get(w, 0, PROJ_Q)->a[0] != cy->q0_first[k] || !isfinite(sum) ||
            strcmp(registry_adapter_name(a), cycle_names[k]) != 0)
            cy->wrong++;
        uint64_t t = (uint64_t)(i % 4);
        registry_release(cy->r, a, t);
        cy->requests[k]++;
        cy->tokens[k] += t;
    }
    return NULL;
}

START_TEST(test_threads_cycling_more_adapters_than_max_loaded_keep_counts_exact)
{
    char *dir = adir_new();
    float first[CYCLE_ADAPTERS];
    for (int k = 0; k < CYCLE_ADAPTERS; k++) {
        add_adapter(dir, cycle_names[k], 2, 4.0, ALL_PROJ, 600u + (uint32_t)k);
        uint32_t s = 600u + (uint32_t)k;
        first[k] = 0 + 0.5f * testutil_rnd(&s);
    }
    events ev;
    events_init(&ev);
    registry *r = open_registry(dir, 2, 0, &ev);
    cycler cy[CYCLE_THREADS];
    pthread_t th[CYCLE_THREADS];
    memset(cy, 0, sizeof cy);
    for (int t = 0; t < CYCLE_THREADS; t++) {
        cy[t].r = r;
        cy[t].id = t;
        memcpy(cy[t].q0_first, first, sizeof first);
        ck_assert_int_eq(pthread_create(&th[t], NULL, cycle_main, &cy[t]), 0);
    }
    for (int t = 0; t < CYCLE_THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < CYCLE_THREADS; t++) {
        ck_assert_int_eq(cy[t].failed, 0);
        ck_assert_int_eq(cy[t].wrong, 0);
    }
    ck_assert_int_le(wait_loaded_at_most(r, 2), 2);
    int n = 0;
    registry_info *list = registry_list(r, &n);
    ck_assert_int_eq(n, CYCLE_ADAPTERS);
    int loaded = 0;
    for (int k = 0; k < CYCLE_ADAPTERS; k++) {
        uint64_t req = 0, tok = 0;
        for (int t = 0; t < CYCLE_THREADS; t++) {
            req += cy[t].requests[k];
            tok += cy[t].tokens[k];
        }
        ck_assert_str_eq(list[k].name, cycle_names[k]);
        ck_assert_uint_eq(list[k].requests, req);
        ck_assert_uint_eq(list[k].tokens, tok);
        ck_assert_int_eq(list[k].refs, 0);
        loaded += list[k].state == REGISTRY_LOADED;
    }
    free(list);
    counts c = counts_get(r);
    ck_assert_int_eq(c.loaded, loaded);
    ck_assert_uint_eq(c.loads - c.evictions, (uint64_t)c.loaded);
    ck_assert_uint_ge(c.loads, CYCLE_ADAPTERS);   /* each was loaded at least once */
    events e = events_get(&ev);
    ck_assert_int_eq(e.failures, 0);
    ck_assert_uint_eq((uint64_t)e.loads, c.loads);
    ck_assert_uint_eq((uint64_t)e.evictions, c.evictions);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

/* ---- merge and events ---- */

START_TEST(test_merge_builds_w_plus_s_b_a_for_targeted_matrices_only)
{
    enum { R = 4 };
    const unsigned mask = (1u << PROJ_Q) | (1u << PROJ_V) | (1u << PROJ_DOWN);
    char *dir = adir_new();
    add_adapter(dir, "m", R, 8.0, mask, 4242);   /* s = alpha / r = 2 */
    registry *r = open_registry(dir, 4, 1, NULL);
    registry_adapter *a = acquire_ok(r, "m");
    const variant *v = registry_adapter_merged(a);
    ck_assert_ptr_nonnull(v);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            const float *base = g.m->layers[l].w[p].data;
            const float *wp = variant_weight(g.m, v, l, (model_proj)p)->data;
            if (!(mask & (1u << p))) {
                ck_assert_ptr_eq(wp, base);
                continue;
            }
            ck_assert_ptr_ne(wp, base);
            float maxd = 0;
            for (int i = 0; i < tiny_proj_out[p] * tiny_proj_in[p]; i++)
                maxd = fmaxf(maxd, fabsf(wp[i] - base[i]));
            ck_assert_msg(maxd > 1e-2f, "layer %d proj %d: merged equals base", l, p);
        }

    /* (layer 0, q_proj): W + s·B·A from the replayed file contents, in double */
    enum { OUT = HEADS * HEAD_DIM, IN = HIDDEN };
    float A[R * IN], B[OUT * R];
    replay_first_matrix(4242, R, IN, OUT, A, B);
    /* both in panels in memory (wtensor.h): laid out back row-major */
    float W[OUT * IN], Wm[OUT * IN];
    wtensor_rows_f32(&g.m->layers[0].w[PROJ_Q], IN, 0, OUT, W);
    wtensor_rows_f32(variant_weight(g.m, v, 0, PROJ_Q), IN, 0, OUT, Wm);
    double worst = 0;
    for (int o = 0; o < OUT; o++)
        for (int i = 0; i < IN; i++) {
            double ba = 0;
            for (int k = 0; k < R; k++)
                ba += (double)B[o * R + k] * (double)A[k * IN + i];
            double want = (double)W[o * IN + i] + 2.0 * ba;
            worst = fmax(worst, fabs((double)Wm[o * IN + i] - want));
        }
    ck_assert_msg(worst < 1e-4, "merged q_proj differs from W + s·B·A by %g", worst);
    ck_assert_uint_eq(info_of(r, "m").bytes, registry_adapter_weights(a)->bytes + v->bytes);
    registry_release(r, a, 0);
    registry_destroy(r);

    r = open_registry(dir, 4, 0, NULL);
    a = acquire_ok(r, "m");
    ck_assert_ptr_null(registry_adapter_merged(a));
    ck_assert_uint_eq(info_of(r, "m").bytes, registry_adapter_weights(a)->bytes);
    registry_release(r, a, 0);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

/* --merge auto, with a fast policy tick: feeds token counts as a decoding engine would
 * (registry_note_tokens) and waits, for at most 5 s, until the merged count is want. */
static registry *open_auto(const char *dir, size_t budget)
{
    registry_options o = registry_options_default();
    o.dir = dir;
    o.max_loaded = 8;
    o.merge = REGISTRY_MERGE_AUTO;
    o.merge_budget = budget;
    o.merge_tick_ms = 10;
    lr_error err = {0};
    registry *r = registry_create(g.m, &o, &err);
    ck_assert_msg(r != NULL, "registry_create: %s", err.msg);
    return r;
}

/* Notes n_a tokens on a and n_other on nothing in particular (base, mixes) every 5 ms,
 * until the registry has `want` merged adapters (1) or `rounds` rounds pass (0); 100
 * rounds are 50 policy ticks, long past the window the shares are taken over (8). */
static int feed_until_merged(registry *r, registry_adapter *a, int n_a, int n_other, int want,
                             int rounds)
{
    for (int i = 0; i < rounds; i++) {
        registry_note_tokens(r, a, n_a);
        registry_note_tokens(r, NULL, n_other);
        int merged;
        uint64_t built, dropped;
        registry_merge_counts(r, &merged, &built, &dropped);
        if (merged == want)
            return 1;
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    }
    return 0;
}

START_TEST(test_merge_auto_merges_an_adapter_with_all_the_tokens_and_drops_it_when_shared)
{
    char *dir = adir_new();
    add_adapter(dir, "hot", 4, 8.0, ALL_PROJ, 51);
    add_adapter(dir, "cold", 4, 8.0, ALL_PROJ, 52);
    registry *r = open_auto(dir, 0);
    registry_adapter *hot = acquire_ok(r, "hot"), *cold = acquire_ok(r, "cold");
    ck_assert_ptr_null(registry_use_merged(r, hot));   /* nothing merged before traffic */

    /* 80% of the tokens is far from "nearly all": never merged */
    ck_assert_int_eq(feed_until_merged(r, hot, 8, 2, 1, 100), 0);
    /* all of them: merged, and the W' equals variant_merge's exactly */
    ck_assert_int_eq(feed_until_merged(r, hot, 10, 0, 1, 1000), 1);
    const variant *w = registry_use_merged(r, hot);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_null(registry_use_merged(r, cold));
    lr_error err = {0};
    variant_mix mix = {.n = 1, .t = {{registry_adapter_weights(hot), 1.0f}}};
    variant *ref = variant_merge(g.m, &mix, &err);
    ck_assert_ptr_nonnull(ref);
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            ck_assert(memcmp(variant_weight(g.m, w, l, (model_proj)p)->data,
                             variant_weight(g.m, ref, l, (model_proj)p)->data,
                             sizeof(float) * tiny_proj_out[p] * tiny_proj_in[p]) == 0);
    ck_assert_int_eq(info_of(r, "hot").merged, 1);

    /* the traffic turns to the other adapter: dropped for new requests, while the request
     * using it keeps reading it (checked again after the drop), freed after its end */
    ck_assert_int_eq(feed_until_merged(r, cold, 1, 9, 0, 1000), 1);
    ck_assert_ptr_null(registry_use_merged(r, hot));
    for (int l = 0; l < LAYERS; l++)
        ck_assert(memcmp(variant_weight(g.m, w, l, PROJ_Q)->data,
                         variant_weight(g.m, ref, l, PROJ_Q)->data,
                         sizeof(float) * tiny_proj_out[PROJ_Q] * tiny_proj_in[PROJ_Q]) == 0);
    ck_assert_int_eq(info_of(r, "hot").merged, 1);   /* still in memory: one user */
    registry_done_merged(r, hot);
    int freed = 0;
    for (int i = 0; i < 500 && !freed; i++) {
        freed = !info_of(r, "hot").merged;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    ck_assert_msg(freed, "the dropped W' was not freed after its last user");
    ck_assert_uint_eq(info_of(r, "hot").bytes, registry_adapter_weights(hot)->bytes);
    int merged;
    uint64_t built, dropped;
    registry_merge_counts(r, &merged, &built, &dropped);
    ck_assert_int_eq(merged, 0);
    ck_assert_uint_eq(built, 1);
    ck_assert_uint_eq(dropped, 1);
    variant_free(ref);
    registry_release(r, hot, 0);
    registry_release(r, cold, 0);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_merge_auto_stays_within_its_budget)
{
    char *dir = adir_new();
    add_adapter(dir, "hot", 4, 8.0, ALL_PROJ, 53);
    registry *r = open_auto(dir, 1000);   /* bytes: less than any W' */
    registry_adapter *hot = acquire_ok(r, "hot");
    ck_assert_int_eq(feed_until_merged(r, hot, 10, 0, 1, 100), 0);
    ck_assert_ptr_null(registry_use_merged(r, hot));
    registry_release(r, hot, 0);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_on_event_reports_each_load_failure_and_eviction_on_the_loader_thread)
{
    char *dir = adir_new();
    add_adapter(dir, "a", 2, 4.0, ALL_PROJ, 71);
    add_adapter(dir, "b", 2, 4.0, ALL_PROJ, 72);
    add_adapter(dir, "bad", 2, 4.0, ALL_PROJ, 73);
    char sub[512];
    snprintf(sub, sizeof sub, "%s/bad", dir);
    write_text(sub, "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": ");
    events ev;
    events_init(&ev);
    registry *r = open_registry(dir, 1, 0, &ev);
    ck_assert_int_eq(events_get(&ev).n, 0);   /* create and list load nothing */

    registry_release(r, acquire_ok(r, "a"), 1);
    events e = events_get(&ev);
    ck_assert_int_eq(e.loads, 1);
    ck_assert_str_eq(e.last_load, "a");
    ck_assert_int_eq(e.evictions, 0);
    registry_release(r, acquire_ok(r, "a"), 1);   /* already loaded: no event */
    ck_assert_int_eq(events_get(&ev).n, 1);

    /* loading b evicts a (on the loader thread, right after the load) */
    registry_release(r, acquire_ok(r, "b"), 1);
    ck_assert_int_eq(wait_loaded_at_most(r, 1), 1);
    e = events_get(&ev);
    ck_assert_int_eq(e.loads, 2);
    ck_assert_str_eq(e.last_load, "b");
    ck_assert_int_eq(e.evictions, 1);
    ck_assert_str_eq(e.evicted, "a ");

    /* a failure: one event with its code, none when it is refused again */
    lr_error err = {0};
    for (int i = 0; i < 2; i++)
        ck_assert_ptr_null(registry_acquire(r, "bad", &err));
    e = events_get(&ev);
    ck_assert_int_eq(e.failures, 1);
    ck_assert_int_eq(e.bad_load_code, 0);
    ck_assert_str_eq(e.last_failed, "bad");

    /* an eviction a release makes possible: a held while b is used, b goes at release */
    registry_adapter *ha = acquire_ok(r, "a");
    registry_release(r, acquire_ok(r, "b"), 1);
    ck_assert_int_eq(wait_loaded_at_most(r, 1), 1);
    registry_release(r, ha, 1);
    e = events_get(&ev);
    counts c = counts_get(r);
    ck_assert_int_eq(e.loads, 4);
    ck_assert_int_eq(e.evictions, 3);
    ck_assert_str_eq(e.evicted, "a b b ");
    ck_assert_uint_eq(c.loads, (uint64_t)(e.loads + e.failures));
    ck_assert_uint_eq(c.evictions, (uint64_t)e.evictions);
    ck_assert_msg(e.on_caller == 0 && e.other_threads == 0,
                  "on_event ran %d times on the caller's thread, %d times on a thread other "
                  "than the first event's (header: called on the loader thread)",
                  e.on_caller, e.other_threads);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

START_TEST(test_destroy_right_after_evictions_frees_loaded_and_pending_versions)
{
    /* LSan fails the test on a leak; ASan on a double free. */
    static const char *const names[4] = {"d0", "d1", "d2", "d3"};
    char *dir = adir_new();
    for (int k = 0; k < 4; k++)
        add_adapter(dir, names[k], 2, 4.0, ALL_PROJ, 80u + (uint32_t)k);
    registry *r = open_registry(dir, 1, 1, NULL);
    for (int k = 0; k < 4; k++)
        registry_release(r, acquire_ok(r, names[k]), 1);
    lr_error err = {0};
    ck_assert_ptr_null(registry_acquire(r, "missing", &err));
    registry_destroy(r);   /* evicted versions may not have been freed by the loader yet */
    registry_destroy(NULL);
    adir_free(dir);
}
END_TEST

/* ================================ limits ================================ */

START_TEST(test_name_valid_accepts_one_safe_path_component_only)
{
    char max[REGISTRY_NAME_MAX + 1], over[REGISTRY_NAME_MAX + 2];
    memset(max, 'a', REGISTRY_NAME_MAX);
    max[REGISTRY_NAME_MAX] = '\0';
    memset(over, 'a', REGISTRY_NAME_MAX + 1);
    over[REGISTRY_NAME_MAX + 1] = '\0';
    static const struct {
        const char *name;
        int valid;
    } cases[] = {
        {"ok-name_1.2", 1}, {"a", 1}, {"Z9", 1}, {"-dash-first", 0}, {"_under", 0},
        {"a..b", 1}, {"v1.0", 1},
        {"", 0}, {".hidden", 0}, {".", 0}, {"..", 0}, {"a/b", 0}, {"/abs", 0},
        {"../up", 0}, {"a b", 0}, {"tab\there", 0}, {"a\\b", 0}, {"caf\xc3\xa9", 0},
        {"semi;colon", 0}, {"star*", 0}, {"new\nline", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(registry_name_valid(cases[i].name) == cases[i].valid,
                      "registry_name_valid(\"%s\") should be %d", cases[i].name,
                      cases[i].valid);
    ck_assert_int_eq(registry_name_valid(max), 1);
    ck_assert_int_eq(registry_name_valid(over), 0);
}
END_TEST

START_TEST(test_unknown_or_invalid_names_are_not_found_even_if_the_path_exists)
{
    char *dir = adir_new();
    add_adapter(dir, "real", 2, 4.0, ALL_PROJ, 91);
    add_adapter(dir, ".hidden", 2, 4.0, ALL_PROJ, 92);
    /* a valid adapter next to the adapter directory, reachable as "../<name>" */
    char *outside = testutil_mkdtemp("registry_outside");
    write_adapter(outside, 2, 4.0, ALL_PROJ, 93, 0);
    char escape[300];
    snprintf(escape, sizeof escape, "../%s", strrchr(outside, '/') + 1);
    registry *r = open_registry(dir, 4, 0, NULL);
    const char *names[] = {"nope", ".hidden", escape, "real/", "", "real/../real"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        lr_error err = {0};
        ck_assert_msg(registry_acquire(r, names[i], &err) == NULL, "'%s' was found",
                      names[i]);
        ck_assert_int_eq(err.code, LR_ENOTFOUND);
        ck_assert_msg(strstr(err.msg, "does not exist") != NULL, "message \"%s\"", err.msg);
    }
    counts c = counts_get(r);
    ck_assert_uint_eq(c.loads, 0);
    registry_release(r, acquire_ok(r, "real"), 0);   /* the directory itself works */
    registry_destroy(r);
    testutil_rmdir(outside);
    adir_free(dir);
}
END_TEST

START_TEST(test_registry_without_dir_finds_nothing)
{
    registry_options o = registry_options_default();
    ck_assert_ptr_null(o.dir);
    ck_assert_int_eq(o.max_loaded, 64);
    lr_error err = {0};
    registry *r = registry_create(g.m, &o, &err);
    ck_assert_msg(r != NULL, "registry_create: %s", err.msg);
    const char *names[] = {"anything", "a", "ok-name_1.2"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        memset(&err, 0, sizeof err);
        ck_assert_ptr_null(registry_acquire(r, names[i], &err));
        ck_assert_int_eq(err.code, LR_ENOTFOUND);
    }
    int n = -1;
    ck_assert_ptr_null(registry_list(r, &n));
    ck_assert_int_eq(n, 0);
    counts c = counts_get(r);
    ck_assert_int_eq(c.loaded, 0);
    ck_assert_uint_eq(c.loads, 0);
    registry_destroy(r);
}
END_TEST

START_TEST(test_create_refuses_a_missing_directory_and_a_regular_file)
{
    char *parent = adir_new();
    char missing[512], file[512];
    snprintf(missing, sizeof missing, "%s/missing", parent);
    snprintf(file, sizeof file, "%s/file", parent);
    write_text(parent, "file", "{}");
    static const struct {
        const char *what;
        int stale_errno;   /* left by some earlier failed call of the caller's */
        const char *needle;
    } cases[] = {
        {"missing", 0, "No such file"},
        {"file", 0, "not a directory"},
        {"file", ENOENT, "not a directory"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = strcmp(cases[i].what, "file") == 0 ? file : missing;
        registry_options o = registry_options_default();
        o.dir = path;
        lr_error err = {0};
        errno = cases[i].stale_errno;
        ck_assert_ptr_null(registry_create(g.m, &o, &err));
        ck_assert_int_eq(err.code, LR_EIO);
        ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, cases[i].needle),
                      "case %zu: message \"%s\" does not name %s and say \"%s\"", i, err.msg,
                      path, cases[i].needle);
    }
    adir_free(parent);
}
END_TEST

/* Invalid adapters: each is refused with peft's reason, stays refused without a reload
 * while its files are unchanged, and loads once they are replaced by a valid adapter. */
static void make_broken_json(const char *sub)
{
    write_adapter(sub, 2, 4.0, ALL_PROJ, 101, 0);
    write_text(sub, "adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": 2,");
}

static void make_other_base(const char *sub)
{
    write_adapter(sub, 2, 4.0, ALL_PROJ, 102, 8);
}

static void make_rank_above_limit(const char *sub)
{
    write_adapter(sub, 4, 8.0, ALL_PROJ, 103, 0);   /* the registry's max_rank is 2 */
}

static void make_missing_weights(const char *sub)
{
    write_adapter(sub, 2, 4.0, ALL_PROJ, 104, 0);
    char p[600];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", sub);
    ck_assert_int_eq(unlink(p), 0);
}

static const struct {
    const char *what;
    void (*make)(const char *sub);
    const char *needle;   /* in peft's message */
} BAD[] = {
    {"broken JSON", make_broken_json, "not valid JSON"},
    {"shapes of another base", make_other_base, "another base model"},
    {"rank above max_rank", make_rank_above_limit, "above the limit"},
    {"no weights file", make_missing_weights, "missing"},
};

START_TEST(test_invalid_adapter_is_refused_with_reason_until_its_files_change)
{
    char *dir = adir_new();
    char sub[512];
    snprintf(sub, sizeof sub, "%s/bad", dir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    BAD[_i].make(sub);
    events ev;
    events_init(&ev);
    registry_options o = registry_options_default();
    o.dir = dir;
    o.peft.max_rank = 2;
    o.on_event = on_event;
    o.user = &ev;
    lr_error err = {0};
    registry *r = registry_create(g.m, &o, &err);
    ck_assert_msg(r != NULL, "registry_create: %s", err.msg);

    ck_assert_ptr_null(registry_acquire(r, "bad", &err));
    ck_assert_msg(err.code == LR_EINVAL, "%s: code %d (%s)", BAD[_i].what, err.code, err.msg);
    ck_assert_msg(strstr(err.msg, BAD[_i].needle) && strstr(err.msg, "bad"),
                  "%s: message \"%s\" lacks \"%s\" or the name", BAD[_i].what, err.msg,
                  BAD[_i].needle);
    lr_error first = err;
    registry_info in = info_of(r, "bad");
    ck_assert_int_eq(in.state, REGISTRY_FAILED);
    ck_assert_str_eq(in.reason, first.msg);
    ck_assert_uint_eq(counts_get(r).loads, 1);

    /* refused again, from memory, across a rescan */
    for (int i = 0; i < 3; i++) {
        memset(&err, 0, sizeof err);
        ck_assert_ptr_null(registry_acquire(r, "bad", &err));
        ck_assert_int_eq(err.code, LR_EINVAL);
        ck_assert_str_eq(err.msg, first.msg);
        ck_assert_int_eq(state_of(r, "bad"), REGISTRY_FAILED);
    }
    ck_assert_uint_eq(counts_get(r).loads, 1);
    events e = events_get(&ev);
    ck_assert_int_eq(e.failures, 1);
    ck_assert_int_eq(e.bad_load_code, 0);

    replace_adapter(dir, "bad", 2, 105);
    registry_adapter *a = acquire_ok(r, "bad");
    ck_assert(q0_matches_seed(registry_adapter_weights(a), 105, 2));
    counts c = counts_get(r);
    ck_assert_uint_eq(c.loads, 2);
    ck_assert_int_eq(c.loaded, 1);
    in = info_of(r, "bad");
    ck_assert_int_eq(in.state, REGISTRY_LOADED);
    ck_assert_str_eq(in.reason, "");
    ck_assert_int_eq(events_get(&ev).loads, 1);
    registry_release(r, a, 0);
    registry_destroy(r);
    adir_free(dir);
}
END_TEST

static Suite *registry_suite(void)
{
    Suite *s = suite_create("registry");
    TCase *core = tcase_create("core");
    tcase_add_unchecked_fixture(core, fixture_setup, fixture_teardown);
    tcase_set_timeout(core, 60);
    tcase_add_test(core, test_list_shows_valid_subdirectories_sorted_and_on_disk_before_use);
    tcase_add_test(core, test_list_and_acquire_see_subdirectories_added_or_removed_after_create);
    tcase_add_test(core, test_acquire_loads_once_and_weights_equal_the_files_and_peft_load);
    tcase_add_test(core, test_release_counts_requests_and_tokens_in_the_listing);
    tcase_add_test(core, test_lru_evicts_the_least_recently_used_idle_adapter);
    tcase_add_test(core, test_adapter_in_use_is_never_evicted_and_stays_readable);
    tcase_add_test(core, test_eight_threads_acquiring_one_unloaded_adapter_share_one_load);
    tcase_add_test(core, test_threads_cycling_more_adapters_than_max_loaded_keep_counts_exact);
    tcase_add_test(core, test_merge_builds_w_plus_s_b_a_for_targeted_matrices_only);
    tcase_add_test(core, test_merge_auto_merges_an_adapter_with_all_the_tokens_and_drops_it_when_shared);
    tcase_add_test(core, test_merge_auto_stays_within_its_budget);
    tcase_add_test(core, test_on_event_reports_each_load_failure_and_eviction_on_the_loader_thread);
    tcase_add_test(core, test_destroy_right_after_evictions_frees_loaded_and_pending_versions);
    suite_add_tcase(s, core);

    TCase *lim = tcase_create("limits");
    tcase_add_unchecked_fixture(lim, fixture_setup, fixture_teardown);
    tcase_set_timeout(lim, 60);
    tcase_add_test(lim, test_name_valid_accepts_one_safe_path_component_only);
    tcase_add_test(lim, test_unknown_or_invalid_names_are_not_found_even_if_the_path_exists);
    tcase_add_test(lim, test_registry_without_dir_finds_nothing);
    tcase_add_test(lim, test_create_refuses_a_missing_directory_and_a_regular_file);
    tcase_add_loop_test(lim, test_invalid_adapter_is_refused_with_reason_until_its_files_change,
                        0, (int)(sizeof BAD / sizeof BAD[0]));
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(registry_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
