/* registry: adapter entries (one per subdirectory), the loaded versions they point to,
 * and the loader thread that loads, merges and frees them. */
#include "registry.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "adapters/store.h"
#include "core/log.h"

/* What identifies the files an adapter was loaded (or refused) from. */
typedef struct {
    dev_t dev[2];
    ino_t ino[2];
    off_t size[2];
    struct timespec mtime[2];
} file_sig;

/* --merge auto's memory: the shares are of the tokens of the last MERGE_WINDOW policy
 * ticks (see merge_tick) */
#define MERGE_WINDOW 8

struct registry_adapter {
    struct entry *entry;        /* the entry it was loaded for (entries live until destroy) */
    peft_adapter *ad;           /* owned */
    variant *merged;            /* owned; ALWAYS: built at load; AUTO: by the policy */
    int merged_users;           /* requests using merged (under lock) */
    int merge_dropped;          /* AUTO: no new users; freed once merged_users is 0 */
    _Atomic uint64_t noted;     /* tokens generated on it alone (registry_note_tokens) */
    uint64_t noted_seen;        /* merger: noted at the last policy tick */
    uint32_t window[MERGE_WINDOW];  /* merger: tokens in each of the last ticks */
    size_t bytes;               /* memory: A and B, + W' when merged */
    uint64_t version;           /* content hash of the files */
    file_sig sig;               /* the files it was loaded from */
    int refs;                   /* under lock */
    int retired;                /* no longer its entry's current version */
    registry_adapter *next_free;
};

typedef struct entry {
    char name[REGISTRY_NAME_MAX + 1];
    registry_state state;
    registry_adapter *cur;      /* LOADED: the current version */
    char reason[256];           /* FAILED */
    int fail_code;
    file_sig sig;               /* FAILED: the files that were refused */
    int loading;                /* the loader thread is on it */
    int waiters;                /* acquirers waiting for the load */
    int gone;                   /* its directory disappeared (not listed) */
    peft_adapter *pending;      /* LOADING: validated already (an upload), use this */
    uint64_t pending_version;
    uint64_t last_used, requests, tokens;
    time_t last_used_at;        /* wall clock, for listings */
    uint64_t attempts;          /* load attempts finished */
    int last_oom;               /* the last one ran out of memory: its waiters get that, but
                                 * it is no verdict on the files (the next acquire retries) */
    struct entry *next;
} entry;

struct registry {
    const model *m;
    registry_options opt;
    char dir[4096];
    int has_dir;
    pthread_mutex_t lock;
    pthread_cond_t changed;     /* a load finished */
    pthread_cond_t work;        /* the loader has something to do */
    entry *entries;
    registry_adapter *to_free;
    int stop;
    int thread_started;
    pthread_t loader;
    int merger_started;         /* --merge auto: the policy's own thread */
    pthread_t merger;
    pthread_cond_t merge_wake;  /* stop, for the merger's timed wait */
    uint64_t clock, loads, evictions;
    int loaded;
    size_t loaded_bytes;
    /* --merge auto */
    _Atomic uint64_t noted;     /* every generated token */
    uint64_t noted_seen;
    uint32_t window[MERGE_WINDOW];
    uint64_t ticks;             /* policy ticks so far: slot ticks % MERGE_WINDOW is now */
    size_t merged_bytes;        /* W' built by the policy and not yet freed */
    uint64_t merges_built, merges_dropped;
};

registry_options registry_options_default(void)
{
    registry_options o = {.max_loaded = 64, .merge_tick_ms = 250,
                          .peft = peft_options_default()};
    return o;
}

int registry_name_valid(const char *name)
{
    size_t n = strlen(name);
    char c0 = name[0];
    if (n == 0 || n > REGISTRY_NAME_MAX ||
        !((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') || (c0 >= '0' && c0 <= '9')))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *const sig_files[2] = {"adapter_config.json", "adapter_model.safetensors"};

/* The signature of name's files; missing files count as zeros. Returns 1 when the config
 * exists (the directory is an adapter). */
static int read_sig(const registry *r, const char *name, file_sig *sig)
{
    memset(sig, 0, sizeof *sig);
    int exists = 0;
    for (int i = 0; i < 2; i++) {
        char p[4096 + 2 * REGISTRY_NAME_MAX + 64];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s/%s", r->dir, name, sig_files[i]);
        if (stat(p, &st) != 0)
            continue;
        exists |= i == 0 && S_ISREG(st.st_mode);
        sig->dev[i] = st.st_dev;
        sig->ino[i] = st.st_ino;
        sig->size[i] = st.st_size;
        sig->mtime[i] = st.st_mtim;
    }
    return exists;
}

static int sig_equal(const file_sig *a, const file_sig *b)
{
    for (int i = 0; i < 2; i++)
        if (a->dev[i] != b->dev[i] || a->ino[i] != b->ino[i] || a->size[i] != b->size[i] ||
            a->mtime[i].tv_sec != b->mtime[i].tv_sec ||
            a->mtime[i].tv_nsec != b->mtime[i].tv_nsec)
            return 0;
    return 1;
}

static entry *find(registry *r, const char *name)
{
    for (entry *e = r->entries; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* The entry for name, created (ON_DISK) if needed. Under lock. NULL when out of memory. */
static entry *find_or_add(registry *r, const char *name)
{
    entry *e = find(r, name);
    if (e) {
        e->gone = 0;
        return e;
    }
    e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    snprintf(e->name, sizeof e->name, "%.*s", REGISTRY_NAME_MAX, name);
    e->state = REGISTRY_ON_DISK;
    e->next = r->entries;
    r->entries = e;
    return e;
}

static void retire(registry *r, entry *e);

/* Brings the entry list up to date with the directory. Under lock. */
static void rescan(registry *r)
{
    if (!r->has_dir)
        return;
    for (entry *e = r->entries; e; e = e->next)
        e->gone = 1;
    DIR *d = opendir(r->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            file_sig sig;
            if (registry_name_valid(de->d_name) && read_sig(r, de->d_name, &sig))
                find_or_add(r, de->d_name);
        }
        closedir(d);
    }
    /* Busy entries stay listed even if their directory went away. */
    for (entry *e = r->entries; e; e = e->next)
        if (e->state == REGISTRY_LOADING)
            e->gone = 0;
    /* A loaded adapter whose files changed (or went away) is dropped: requests running
     * keep their version, the next one loads the files as they are now. */
    for (entry *e = r->entries; e; e = e->next) {
        if (e->state != REGISTRY_LOADED)
            continue;
        file_sig sig;
        int exists = read_sig(r, e->name, &sig);
        if (exists && sig_equal(&sig, &e->cur->sig))
            continue;
        log_info("adapter '%s': %s on disk; dropping the loaded version", e->name,
                 exists ? "changed" : "removed");
        retire(r, e);
        e->gone = !exists;
    }
}

static void version_free(registry_adapter *v)
{
    variant_free(v->merged);
    peft_free(v->ad);
    free(v);
}

/* Drops an entry's current version; freed (by the loader) once no request holds it.
 * Under lock. */
static void retire(registry *r, entry *e)
{
    registry_adapter *v = e->cur;
    e->cur = NULL;
    e->state = REGISTRY_ON_DISK;
    r->loaded--;
    r->loaded_bytes -= v->bytes;
    if (v->merged && r->opt.merge == REGISTRY_MERGE_AUTO)
        r->merged_bytes -= v->merged->bytes;   /* freed with the version */
    v->retired = 1;
    if (v->refs == 0) {
        v->next_free = r->to_free;
        r->to_free = v;
        pthread_cond_signal(&r->work);
    }
}

/* Unloads least recently used idle adapters while more than max_loaded are loaded.
 * An adapter with waiters is not idle: it was just loaded for them, and unloading it
 * before they take their reference would send them back to load it again, forever.
 * Under lock. */
static int over_limit(const registry *r)
{
    return r->loaded > r->opt.max_loaded ||
           (r->opt.max_bytes && r->loaded > 1 && r->loaded_bytes > r->opt.max_bytes);
}

static void evict(registry *r)
{
    while (over_limit(r)) {
        entry *lru = NULL;
        for (entry *e = r->entries; e; e = e->next)
            if (e->state == REGISTRY_LOADED && e->cur->refs == 0 && e->waiters == 0 &&
                (!lru || e->last_used < lru->last_used))
                lru = e;
        if (!lru)
            return;   /* every loaded adapter is in use: stay above the limit for now */
        log_info("adapter '%s': unloaded (least recently used; %d loaded, %.1f MB)", lru->name,
                 r->loaded, r->loaded_bytes / 1e6);
        retire(r, lru);
        r->evictions++;
        if (r->opt.on_event)
            r->opt.on_event(r->opt.user, lru->name, -1.0, 0);
    }
}

/* Loads name's files into a new version (no lock held). NULL + err on failure. */
static registry_adapter *load_version(registry *r, const char *name, peft_adapter *pending,
                                      lr_error *err)
{
    char path[4096 + REGISTRY_NAME_MAX + 2];
    snprintf(path, sizeof path, "%s/%s", r->dir, name);
    registry_adapter *v = calloc(1, sizeof *v);
    if (!v) {
        peft_free(pending);
        lr_error_set(err, LR_ENOMEM, "adapter '%s': out of memory", name);
        return NULL;
    }
    v->ad = pending ? pending : peft_load(path, &r->m->cfg, &r->opt.peft, err);
    if (!v->ad) {
        /* name the adapter as clients know it, not by its path on the server */
        char prefix[sizeof path + 16];
        snprintf(prefix, sizeof prefix, "adapter '%s': ", path);
        size_t n = strlen(prefix);
        if (err && strncmp(err->msg, prefix, n) == 0) {
            char rest[sizeof err->msg];
            snprintf(rest, sizeof rest, "%s", err->msg + n);
            snprintf(err->msg, sizeof err->msg, "adapter '%s': %.*s", name,
                     (int)(sizeof err->msg - REGISTRY_NAME_MAX - 16), rest);
        }
        goto fail;
    }
    v->bytes = v->ad->w->bytes;
    if (r->opt.merge == REGISTRY_MERGE_ALWAYS) {
        variant_mix mix = {.n = 1, .t = {{v->ad->w, 1.0f}}};
        v->merged = variant_merge(r->m, &mix, err);
        if (!v->merged) {
            lr_error_prefix(err, "adapter '%s': merging", name);
            goto fail;
        }
        v->bytes += v->merged->bytes;
    }
    return v;
fail:
    version_free(v);
    return NULL;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void load_entry(registry *r, entry *e)
{
    char name[REGISTRY_NAME_MAX + 1];
    memcpy(name, e->name, sizeof name);
    file_sig sig;
    int exists = read_sig(r, name, &sig);
    peft_adapter *pending = e->pending;
    uint64_t version = e->pending_version;
    e->pending = NULL;
    e->loading = 1;
    pthread_mutex_unlock(&r->lock);

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lr_error err = {0};
    if (!exists)
        peft_free(pending);
    registry_adapter *v = exists ? load_version(r, name, pending, &err) : NULL;
    if (v) {
        /* an upload knows its hash; files found on disk are read once more for it */
        v->version = pending ? version : store_version(r->dir, name);
        v->sig = sig;
    }
    double secs = seconds_since(&t0);
    if (r->opt.on_event && exists)
        r->opt.on_event(r->opt.user, name, secs, v ? 0 : err.code);

    pthread_mutex_lock(&r->lock);
    e->loading = 0;
    r->loads += exists;
    if (!exists) {
        e->state = REGISTRY_ON_DISK;
        e->gone = 1;
    } else if (v) {
        v->entry = e;
        e->cur = v;
        e->state = REGISTRY_LOADED;
        e->last_used = ++r->clock;
        r->loaded++;
        r->loaded_bytes += v->bytes;
        log_info("adapter '%s': loaded in %.1f ms (%.1f MB%s)", name, secs * 1e3,
                 v->bytes / 1e6, v->merged ? ", merged" : "");
    } else if (err.code == LR_ENOMEM) {
        e->state = REGISTRY_ON_DISK;
        snprintf(e->reason, sizeof e->reason, "%s", err.msg);
        log_warn("%s (the next request for it tries again)", err.msg);
    } else {
        e->state = REGISTRY_FAILED;
        e->fail_code = LR_EINVAL;
        snprintf(e->reason, sizeof e->reason, "%s", err.msg);
        e->sig = sig;
        log_warn("%s", err.msg);
    }
    e->attempts++;
    e->last_oom = !v && exists && err.code == LR_ENOMEM;
    pthread_cond_broadcast(&r->changed);
    evict(r);
}

/* ---- --merge auto ----
 * Every tick (250 ms) the merge thread counts each loaded adapter's tokens (generated on it
 * alone, at weight 1) and all tokens, and merges the adapter whose share of the tokens of
 * the last MERGE_WINDOW ticks (2 s) reaches MERGE_ON, if it had tokens in at least
 * MERGE_ACTIVE of those ticks (not a trickle: one request's first tokens); a W' whose
 * share falls below MERGE_OFF is dropped. A window, not a decayed rate: with a decay of
 * 0.75 a tick, after 32 clients over 100 adapters gave way to one client on one of them,
 * the others' decayed tokens took ~18 ticks (4.5 s) to fall under 2% of its own, and a
 * minimum decayed rate held slow models (a few tokens a second) from ever merging; over a
 * window the share is exact 2 s after the traffic changed, whatever the speed.
 *
 * Why nearly all: a decode step reads every weight it uses once for all its rows. Rows on
 * W' and rows on anything else in one step would read both W' and W — twice the bytes of
 * a step that is bound by reading them — while what the merge saves is only the adapter's
 * own A and B and its two thin products per row (for a rank-16 adapter on all seven
 * projections of SmolLM2-135M: 3.6% of the bytes, ~2% of the flops). So W' pays only in
 * steps where the adapter's rows are alone, and the engine takes it in no other
 * (merged_alone: engine.c, "W' only alone"): with k rows decoding at a share p those are
 * p^k of the steps, and a W' that saves 3.6% of a few steps is not worth its build (a
 * tenth of a core for seconds) and its memory (a second copy of every matrix it touches).
 * One client (k = 1) on one adapter: merge (then TPOT equals the base's); a crowd shared
 * with anyone else: never. MERGE_ON = 0.98; the gap to MERGE_OFF keeps a W' from being
 * built and dropped over and over.
 *
 * W' is built on the registry's merge thread (not the loader: adapter loads must not wait
 * seconds behind it), paced to MERGE_DUTY of a core (variant_merge_paced), so that the
 * engine's decode slows little while it builds: by 3-9% (bench_merge, 1 and 8 clients on
 * the base beside a paced build; issue 10 allows 10%); a new W' waits until the budget
 * has room. */
#define MERGE_ON 0.98
#define MERGE_OFF 0.90
#define MERGE_ACTIVE (MERGE_WINDOW / 2)
#define MERGE_DUTY 0.1

/* Bytes of the W' a single adapter needs: every projection it touches. */
static size_t merged_size(const registry *r, const lora_weights *w)
{
    size_t n = 0;
    for (int l = 0; l < w->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++)
            if (lora_weights_get(w, l, (model_proj)p)->r) {
                int out, in;
                model_config_proj_shape(&r->m->cfg, (model_proj)p, &out, &in);
                n += (size_t)out * in * sizeof(float);
            }
    return n;
}

static size_t merge_budget(const registry *r)
{
    if (r->opt.merge_budget)
        return r->opt.merge_budget;
    size_t n = 0;
    for (int p = 0; p < PROJ_COUNT; p++) {
        int out, in;
        model_config_proj_shape(&r->m->cfg, (model_proj)p, &out, &in);
        n += (size_t)out * in * sizeof(float);
    }
    return n * (size_t)r->m->cfg.n_layers;
}

/* Frees the W' of dropped versions nobody uses any more (their memory is accounted until
 * then). Under lock; unlocks around each free. */
static void free_dropped_merges(registry *r)
{
    for (;;) {
        registry_adapter *v = NULL;
        for (entry *e = r->entries; e && !v; e = e->next)
            if (e->cur && e->cur->merged && e->cur->merge_dropped && e->cur->merged_users == 0)
                v = e->cur;
        if (!v)
            return;
        variant *w = v->merged;
        v->merged = NULL;
        v->merge_dropped = 0;
        v->bytes -= w->bytes;
        r->loaded_bytes -= w->bytes;
        r->merged_bytes -= w->bytes;
        pthread_mutex_unlock(&r->lock);
        variant_free(w);
        pthread_mutex_lock(&r->lock);
    }
}

/* One tick of the policy. Under lock; unlocks while a W' builds. */
static void merge_tick(registry *r)
{
    int slot = (int)(r->ticks++ % MERGE_WINDOW);
    uint64_t total = atomic_load_explicit(&r->noted, memory_order_relaxed);
    r->window[slot] = (uint32_t)(total - r->noted_seen);
    r->noted_seen = total;
    uint64_t all = 0;
    for (int i = 0; i < MERGE_WINDOW; i++)
        all += r->window[i];
    registry_adapter *best = NULL;
    uint64_t best_n = 0;
    for (entry *e = r->entries; e; e = e->next) {
        registry_adapter *v = e->cur;
        if (e->state != REGISTRY_LOADED || !v)
            continue;
        uint64_t t = atomic_load_explicit(&v->noted, memory_order_relaxed);
        v->window[slot] = (uint32_t)(t - v->noted_seen);
        v->noted_seen = t;
        if (all == 0)
            continue;   /* no tokens at all (an idle daemon): nothing to judge by */
        uint64_t n = 0;
        int active = 0;
        for (int i = 0; i < MERGE_WINDOW; i++) {
            n += v->window[i];
            active += v->window[i] > 0;
        }
        double share = (double)n / (double)all;
        if (v->merged && !v->merge_dropped && share < MERGE_OFF) {
            v->merge_dropped = 1;
            r->merges_dropped++;
            log_info("adapter '%s': merged W' dropped (%.0f%% of recent tokens; --merge auto)",
                     e->name, 100 * share);
        }
        if (!v->merged && share >= MERGE_ON && active >= MERGE_ACTIVE && n > best_n) {
            best = v;
            best_n = n;
        }
    }
    free_dropped_merges(r);
    if (!best)
        return;
    size_t need = merged_size(r, best->ad->w);
    if (r->merged_bytes + need > merge_budget(r))
        return;   /* the W' in the budget are still in use by running requests */
    char name[REGISTRY_NAME_MAX + 1];
    memcpy(name, best->entry->name, sizeof name);
    best->refs++;   /* keeps the version while it builds unlocked */
    r->merged_bytes += need;
    pthread_mutex_unlock(&r->lock);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    lr_error err = {0};
    variant_mix mix = {.n = 1, .t = {{best->ad->w, 1.0f}}};
    variant *w = variant_merge_paced(r->m, &mix, MERGE_DUTY, &err);
    double secs = seconds_since(&t0);
    pthread_mutex_lock(&r->lock);
    r->merged_bytes -= need;
    if (w && !best->retired) {
        best->merged = w;
        best->bytes += w->bytes;
        r->loaded_bytes += w->bytes;
        r->merged_bytes += w->bytes;
        r->merges_built++;
        log_info("adapter '%s': merged W' ready in %.0f ms (%.0f MB; --merge auto)", name,
                 secs * 1e3, w->bytes / 1e6);
        w = NULL;
    } else if (!w) {
        log_warn("adapter '%s': --merge auto could not merge: %s", name, err.msg);
    }
    if (--best->refs == 0 && best->retired) {
        best->next_free = r->to_free;
        r->to_free = best;
        pthread_cond_signal(&r->work);   /* the loader frees it */
    }
    if (w) {   /* retired while it built */
        pthread_mutex_unlock(&r->lock);
        variant_free(w);
        pthread_mutex_lock(&r->lock);
    }
}

/* --merge auto's thread: a policy tick every merge_tick_ms; builds run here, so loads on
 * the loader thread never wait behind a paced build (seconds long). */
static void *merger_main(void *arg)
{
    registry *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->stop) {
        merge_tick(r);
        struct timespec next;
        clock_gettime(CLOCK_MONOTONIC, &next);
        next.tv_nsec += (long)r->opt.merge_tick_ms * 1000000L;
        next.tv_sec += next.tv_nsec / 1000000000L;
        next.tv_nsec %= 1000000000L;
        if (!r->stop)
            pthread_cond_timedwait(&r->merge_wake, &r->lock, &next);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void *loader_main(void *arg)
{
    registry *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        if (r->to_free) {
            registry_adapter *list = r->to_free;
            r->to_free = NULL;
            pthread_mutex_unlock(&r->lock);
            while (list) {
                registry_adapter *next = list->next_free;
                version_free(list);
                list = next;
            }
            pthread_mutex_lock(&r->lock);
            continue;
        }
        entry *todo = NULL;
        for (entry *e = r->entries; e && !todo; e = e->next)
            if (e->state == REGISTRY_LOADING && !e->loading)
                todo = e;
        if (todo) {
            load_entry(r, todo);
            continue;
        }
        if (over_limit(r)) {
            evict(r);   /* a release left one idle */
            if (r->to_free)
                continue;
        }
        if (r->stop)
            break;
        pthread_cond_wait(&r->work, &r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

registry *registry_create(const model *m, const registry_options *opt, lr_error *err)
{
    registry *r = calloc(1, sizeof *r);
    if (!r) {
        lr_error_set(err, LR_ENOMEM, "out of memory creating the adapter registry");
        return NULL;
    }
    r->m = m;
    r->opt = opt ? *opt : registry_options_default();
    if (r->opt.max_loaded < 1)
        r->opt.max_loaded = 1;
    if (r->opt.merge_tick_ms < 1)
        r->opt.merge_tick_ms = 250;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->changed, NULL);
    pthread_cond_init(&r->work, NULL);
    /* the merger's timed waits are on the monotonic clock */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->merge_wake, &ca);
    pthread_condattr_destroy(&ca);
    if (r->opt.dir) {
        struct stat st;
        if (snprintf(r->dir, sizeof r->dir, "%s", r->opt.dir) >= (int)sizeof r->dir) {
            lr_error_set(err, LR_EINVAL, "adapter directory path is too long");
            goto fail;
        }
        int rc = stat(r->dir, &st);
        if (rc != 0 || !S_ISDIR(st.st_mode)) {
            lr_error_set(err, LR_EIO, "adapter directory %s: %s", r->dir,
                         rc != 0 ? strerror(errno) : "not a directory");
            goto fail;
        }
        r->has_dir = 1;
        r->opt.dir = r->dir;
    }
    pthread_mutex_lock(&r->lock);
    rescan(r);
    pthread_mutex_unlock(&r->lock);
    if (pthread_create(&r->loader, NULL, loader_main, r) != 0) {
        lr_error_set(err, LR_ENOMEM, "cannot start the adapter loader thread");
        goto fail;
    }
    r->thread_started = 1;
    if (r->opt.merge == REGISTRY_MERGE_AUTO) {
        if (pthread_create(&r->merger, NULL, merger_main, r) != 0) {
            lr_error_set(err, LR_ENOMEM, "cannot start the --merge auto thread");
            goto fail;
        }
        r->merger_started = 1;
    }
    return r;
fail:
    registry_destroy(r);
    return NULL;
}

void registry_destroy(registry *r)
{
    if (!r)
        return;
    if (r->thread_started) {
        pthread_mutex_lock(&r->lock);
        r->stop = 1;
        pthread_cond_signal(&r->work);
        pthread_cond_signal(&r->merge_wake);
        pthread_mutex_unlock(&r->lock);
        pthread_join(r->loader, NULL);
        if (r->merger_started)
            pthread_join(r->merger, NULL);
    }
    while (r->to_free) {
        registry_adapter *next = r->to_free->next_free;
        version_free(r->to_free);
        r->to_free = next;
    }
    while (r->entries) {
        entry *e = r->entries;
        r->entries = e->next;
        if (e->cur)
            version_free(e->cur);
        peft_free(e->pending);
        free(e);
    }
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->changed);
    pthread_cond_destroy(&r->work);
    pthread_cond_destroy(&r->merge_wake);
    free(r);
}

registry_adapter *registry_acquire(registry *r, const char *name, lr_error *err)
{
    if (!r->has_dir || !registry_name_valid(name)) {
        lr_error_set(err, LR_ENOTFOUND, "adapter '%.*s' does not exist", REGISTRY_NAME_MAX,
                     name);
        return NULL;
    }
    file_sig sig;
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, name);
    if (!e || e->gone) {
        if (!read_sig(r, name, &sig)) {
            pthread_mutex_unlock(&r->lock);
            lr_error_set(err, LR_ENOTFOUND, "adapter '%s' does not exist", name);
            return NULL;
        }
        if (!(e = find_or_add(r, name))) {
            pthread_mutex_unlock(&r->lock);
            lr_error_set(err, LR_ENOMEM, "adapter '%s': out of memory", name);
            return NULL;
        }
    }
    for (;;) {
        switch (e->state) {
        case REGISTRY_LOADED: {
            registry_adapter *v = e->cur;
            v->refs++;
            e->last_used = ++r->clock;
            e->last_used_at = time(NULL);
            pthread_mutex_unlock(&r->lock);
            return v;
        }
        case REGISTRY_FAILED:
            read_sig(r, name, &sig);
            if (sig_equal(&sig, &e->sig)) {
                lr_error_set(err, e->fail_code, "%s", e->reason);
                pthread_mutex_unlock(&r->lock);
                return NULL;
            }
            /* its files changed: try again */
            /* fall through */
        case REGISTRY_ON_DISK:
            e->state = REGISTRY_LOADING;
            pthread_cond_signal(&r->work);
            /* fall through */
        case REGISTRY_LOADING: {
            uint64_t attempts = e->attempts;
            e->waiters++;
            pthread_cond_wait(&r->changed, &r->lock);
            e->waiters--;
            if (e->gone) {
                pthread_mutex_unlock(&r->lock);
                lr_error_set(err, LR_ENOTFOUND, "adapter '%s' does not exist", name);
                return NULL;
            }
            if (e->attempts != attempts && e->last_oom && e->state != REGISTRY_LOADED) {
                lr_error_set(err, LR_ENOMEM, "%s", e->reason);
                pthread_mutex_unlock(&r->lock);
                return NULL;
            }
            break;
        }
        }
    }
}

void registry_release(registry *r, registry_adapter *v, uint64_t tokens)
{
    if (!v)
        return;
    pthread_mutex_lock(&r->lock);
    v->entry->requests++;
    v->entry->tokens += tokens;
    if (--v->refs == 0) {
        if (v->retired) {
            v->next_free = r->to_free;
            r->to_free = v;
            pthread_cond_signal(&r->work);
        } else if (over_limit(r)) {
            pthread_cond_signal(&r->work);   /* the loader evicts (and reports it) */
        }
    }
    pthread_mutex_unlock(&r->lock);
}

const char *registry_adapter_name(const registry_adapter *a)
{
    return a->entry->name;
}

const lora_weights *registry_adapter_weights(const registry_adapter *a)
{
    return a->ad->w;
}

const variant *registry_adapter_merged(const registry_adapter *a)
{
    return a->merged;
}

const variant *registry_use_merged(registry *r, registry_adapter *a)
{
    pthread_mutex_lock(&r->lock);
    const variant *w = a->merged && !a->merge_dropped ? a->merged : NULL;
    if (w)
        a->merged_users++;
    pthread_mutex_unlock(&r->lock);
    return w;
}

void registry_done_merged(registry *r, registry_adapter *a)
{
    pthread_mutex_lock(&r->lock);
    if (--a->merged_users == 0 && a->merge_dropped)
        pthread_cond_signal(&r->work);   /* the loader frees it */
    pthread_mutex_unlock(&r->lock);
}

void registry_note_tokens(registry *r, registry_adapter *a, int n)
{
    atomic_fetch_add_explicit(&r->noted, (uint64_t)n, memory_order_relaxed);
    if (a)
        atomic_fetch_add_explicit(&a->noted, (uint64_t)n, memory_order_relaxed);
}

void registry_merge_counts(registry *r, int *merged, uint64_t *built, uint64_t *dropped)
{
    pthread_mutex_lock(&r->lock);
    int n = 0;
    for (entry *e = r->entries; e; e = e->next)
        n += e->cur && e->cur->merged && !e->cur->merge_dropped;
    *merged = n;
    *built = r->merges_built;
    *dropped = r->merges_dropped;
    pthread_mutex_unlock(&r->lock);
}

static int cmp_info(const void *a, const void *b)
{
    return strcmp(((const registry_info *)a)->name, ((const registry_info *)b)->name);
}

registry_info *registry_list(registry *r, int *n)
{
    *n = 0;
    pthread_mutex_lock(&r->lock);
    if (!r->opt.cached_list)
        rescan(r);
    int count = 0;
    for (entry *e = r->entries; e; e = e->next)
        count += !e->gone;
    registry_info *out = count ? calloc((size_t)count, sizeof *out) : NULL;
    if (!out) {
        pthread_mutex_unlock(&r->lock);
        return NULL;
    }
    int k = 0;
    for (entry *e = r->entries; e; e = e->next) {
        if (e->gone)
            continue;
        registry_info *i = &out[k++];
        memcpy(i->name, e->name, sizeof i->name);
        i->state = e->state;
        if (e->state == REGISTRY_FAILED)
            memcpy(i->reason, e->reason, sizeof i->reason);
        i->requests = e->requests;
        i->tokens = e->tokens;
        i->last_used = e->last_used_at;
        if (e->cur) {
            const peft_adapter *ad = e->cur->ad;
            i->refs = e->cur->refs;
            i->r = ad->r;
            i->alpha = ad->alpha;
            i->bytes = e->cur->bytes;
            i->merged = e->cur->merged != NULL;
            i->version = e->cur->version;
            i->proj_mask = ad->proj_mask;
            i->n_matrices = ad->n_matrices;
            i->use_rslora = ad->use_rslora;
            memcpy(i->dtype, ad->dtype, sizeof i->dtype);
            for (int f = 0; f < 2; f++)
                i->disk_bytes += (size_t)e->cur->sig.size[f];
        }
    }
    pthread_mutex_unlock(&r->lock);
    qsort(out, (size_t)count, sizeof *out, cmp_info);
    *n = count;
    return out;
}

void registry_counts(registry *r, int *loaded, uint64_t *loads, uint64_t *evictions)
{
    pthread_mutex_lock(&r->lock);
    *loaded = r->loaded;
    *loads = r->loads;
    *evictions = r->evictions;
    pthread_mutex_unlock(&r->lock);
}

void registry_rescan(registry *r)
{
    pthread_mutex_lock(&r->lock);
    rescan(r);
    pthread_mutex_unlock(&r->lock);
}

int registry_install(registry *r, const char *name, peft_adapter *ad, uint64_t version,
                     lr_error *err)
{
    pthread_mutex_lock(&r->lock);
    entry *e = find_or_add(r, name);
    if (!e) {
        pthread_mutex_unlock(&r->lock);
        peft_free(ad);
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    }
    if (e->state == REGISTRY_LOADED)
        retire(r, e);
    peft_free(e->pending);   /* an older upload the loader has not taken yet */
    e->pending = ad;
    e->pending_version = version;
    e->state = REGISTRY_LOADING;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

int registry_remove(registry *r, const char *name)
{
    pthread_mutex_lock(&r->lock);
    entry *e = find(r, name);
    int found = e && !e->gone;
    if (e) {
        if (e->state == REGISTRY_LOADED)
            retire(r, e);
        if (e->state != REGISTRY_LOADING) {
            e->state = REGISTRY_ON_DISK;
            e->gone = 1;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}
