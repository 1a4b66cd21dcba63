/* registry: name → adapter for the daemon. Adapters are the subdirectories of one
 * adapter directory that hold adapter_config.json (+ adapter_model.safetensors); each is
 * named after its subdirectory. An adapter is loaded (validated against the base) the
 * first time a request needs it, on the registry's loader thread, and stays loaded while
 * requests use it; beyond max_loaded the least recently used idle one is unloaded. An
 * adapter that fails validation stays refused, with its reason, until its files change.
 *
 * Every request holds a reference (registry_acquire … registry_release) to the version it
 * started with; an unloaded (or, later, replaced) version lives on until its last
 * reference goes. Loads, merges and frees run on the loader thread (--merge auto's on its
 * own thread), so neither the HTTP threads' nor the engine thread's time is spent on big
 * allocations or frees.
 *
 * Threads: every function is thread-safe except registry_create / registry_destroy (the
 * owner's, with no reference outstanding). registry_acquire blocks its caller while the
 * adapter loads; registry_release never blocks and never frees (safe on the engine
 * thread). */
#ifndef LORAD_REGISTRY_H
#define LORAD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "adapters/peft.h"
#include "core/error.h"
#include "core/model.h"
#include "core/variant.h"

#define REGISTRY_NAME_MAX 64

typedef struct registry registry;
typedef struct registry_adapter registry_adapter;   /* one loaded version, refcounted */

/* When loaded adapters get a merged W' (the base's projections with s·B·A added). */
typedef enum {
    REGISTRY_MERGE_NEVER,   /* adapters are applied on the fly */
    REGISTRY_MERGE_ALWAYS,  /* every loaded adapter, as it loads */
    REGISTRY_MERGE_AUTO     /* the adapter that carries nearly all recent decode tokens (see
                             * registry.c, "--merge auto"), within merge_budget */
} registry_merge;

typedef struct {
    const char *dir;       /* adapter directory; NULL = no adapters */
    int max_loaded;        /* adapters kept loaded; default 64 */
    int merge;             /* registry_merge */
    size_t merge_budget;   /* AUTO: memory for merged W' in all (0: room for one W' of
                            * every projection) */
    int merge_tick_ms;     /* AUTO: how often the policy looks at the traffic (default 250) */
    size_t max_bytes;      /* memory of loaded adapters; beyond it LRU idle ones are
                            * unloaded (0 = no limit; one adapter always fits) */
    int cached_list;       /* 1: registry_list does not rescan the directory (someone calls
                            * registry_rescan when it changes: the watcher) */
    peft_options peft;     /* validation options (max_rank) */
    /* Called on the loader thread after every load attempt (seconds it took, 0 / error
     * code), and after each eviction (seconds < 0), with the registry's lock held: it must
     * not call back into the registry. May be NULL. */
    void (*on_event)(void *user, const char *name, double seconds, int code);
    void *user;
} registry_options;

typedef enum {
    REGISTRY_ON_DISK,    /* known, not loaded */
    REGISTRY_LOADING,
    REGISTRY_LOADED,
    REGISTRY_FAILED      /* refused; see reason */
} registry_state;

/* What a listing reports of one adapter. */
typedef struct {
    char name[REGISTRY_NAME_MAX + 1];
    registry_state state;
    char reason[256];      /* why it failed (FAILED) */
    int refs;              /* requests using it now */
    uint64_t requests;     /* requests served since the daemon started */
    uint64_t tokens;       /* tokens generated for them */
    time_t last_used;      /* wall clock of the last acquire, 0 if never */
    /* while loaded (zeros otherwise): */
    int r;                 /* rank and alpha from its config */
    float alpha;
    int use_rslora;
    char dtype[8];         /* of the file's tensors */
    unsigned proj_mask;    /* bit (1u << model_proj) per projection it touches */
    int n_matrices;
    size_t bytes;          /* memory of A and B (+ W' when merged) */
    size_t disk_bytes;     /* both files */
    int merged;
    uint64_t version;      /* content hash of the files */
} registry_info;

registry_options registry_options_default(void);

/* Creates a registry over m (borrowed, outlives it), scans opt->dir and starts the
 * loader thread. NULL + err on failure (the directory cannot be read). */
registry *registry_create(const model *m, const registry_options *opt, lr_error *err);

/* Stops the loader thread and frees everything. Every reference must have been released.
 * Accepts NULL. */
void registry_destroy(registry *r);

/* 1 if name is a valid adapter name: [A-Za-z0-9][A-Za-z0-9._-]{0,63} (so it is always
 * one path component, never "." or "..", never a store temporary ".tmp-…"). */
int registry_name_valid(const char *name);

/* A reference to the loaded adapter `name`, loading it first if needed (the caller
 * waits). On error returns NULL and fills err: LR_ENOTFOUND (no such adapter),
 * LR_EINVAL (it failed validation; the message gives the reason), LR_ENOMEM. */
registry_adapter *registry_acquire(registry *r, const char *name, lr_error *err);

/* Drops a reference taken by registry_acquire, counting the request and its tokens. Never
 * frees memory itself. Accepts NULL. */
void registry_release(registry *r, registry_adapter *a, uint64_t tokens);

/* What a reference gives (borrowed; valid while the reference is held). */
const char *registry_adapter_name(const registry_adapter *a);
const lora_weights *registry_adapter_weights(const registry_adapter *a);
const variant *registry_adapter_merged(const registry_adapter *a);   /* NULL unless merged */

/* The merged W' for a new request on a alone at weight 1, or NULL (not merged, or being
 * dropped by --merge auto): a request that gets one may run on it to its end (the engine
 * takes it in the steps whose every row is on it: engine_request.merged_alone) and then
 * calls registry_done_merged (before registry_release); W' lives until then. */
const variant *registry_use_merged(registry *r, registry_adapter *a);
void registry_done_merged(registry *r, registry_adapter *a);

/* Counts n generated tokens for --merge auto's policy: a is the adapter of a request on
 * that one adapter at weight 1 (the only kind a W' serves), NULL for any other request
 * (base, mixes), which count in the total only. Lock-free; any thread. */
void registry_note_tokens(registry *r, registry_adapter *a, int n);

/* Rescans the directory and returns every adapter known (loaded or not), sorted by name,
 * in a malloc'd array the caller frees; *n its length. NULL with *n = 0 when empty or
 * out of memory. */
registry_info *registry_list(registry *r, int *n);

/* Brings the registry up to date with the directory: new adapters appear, removed ones
 * disappear, loaded ones whose files changed are dropped (running requests keep their
 * version; the next request loads the new files). */
void registry_rescan(registry *r);

/* Publishes ad (validated against the base, now owned by the registry) as the current
 * version of `name`, e.g. right after an upload was committed to the directory; the
 * previous version lives on until its last request releases it. version: its content
 * hash. The loader thread finishes the install (and the merge, with opt.merge); a request
 * acquiring it meanwhile waits for that. 0, or LR_ENOMEM (ad is freed). */
int registry_install(registry *r, const char *name, peft_adapter *ad, uint64_t version,
                     lr_error *err);

/* Forgets `name` (after its directory was removed): running requests keep their version.
 * Returns 1 if it was known. */
int registry_remove(registry *r, const char *name);

/* Adapters merged now (W' ready), and merges built / dropped by --merge auto so far. */
void registry_merge_counts(registry *r, int *merged, uint64_t *built, uint64_t *dropped);

/* Adapters loaded now; loads and evictions so far. */
void registry_counts(registry *r, int *loaded, uint64_t *loads, uint64_t *evictions);

#endif
