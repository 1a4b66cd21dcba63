/* registry: name → adapter for the daemon. Adapters are the subdirectories of one
 * adapter directory that hold adapter_config.json (+ adapter_model.safetensors); each is
 * named after its subdirectory. An adapter is loaded (validated against the base) the
 * first time a request needs it, on the registry's loader thread, and stays loaded while
 * requests use it; beyond max_loaded the least recently used idle one is unloaded. An
 * adapter that fails validation stays refused, with its reason, until its files change.
 *
 * Every request holds a reference (registry_acquire … registry_release) to the version it
 * started with; an unloaded (or, later, replaced) version lives on until its last
 * reference goes. Loads, merges and frees all run on the loader thread, so neither the
 * HTTP threads' nor the engine thread's time is spent on big allocations or frees.
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

typedef struct {
    const char *dir;       /* adapter directory; NULL = no adapters */
    int max_loaded;        /* adapters kept loaded; default 64 */
    int merge;             /* 1: also build the merged W' of every loaded adapter */
    peft_options peft;     /* validation options (max_rank) */
    /* Called on the loader thread after every load attempt (seconds it took, 0 / error
     * code), and after each eviction (seconds < 0). May be NULL. */
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
    int r;                 /* rank and alpha from its config (0 unless loaded) */
    float alpha;
    size_t bytes;          /* memory of A and B (+ W' when merged) while loaded */
} registry_info;

registry_options registry_options_default(void);

/* Creates a registry over m (borrowed, outlives it), scans opt->dir and starts the
 * loader thread. NULL + err on failure (the directory cannot be read). */
registry *registry_create(const model *m, const registry_options *opt, lr_error *err);

/* Stops the loader thread and frees everything. Every reference must have been released.
 * Accepts NULL. */
void registry_destroy(registry *r);

/* 1 if name is a valid adapter name: 1..REGISTRY_NAME_MAX of [A-Za-z0-9._-], not
 * starting with '.' (so it is always one path component). */
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
const variant *registry_adapter_merged(const registry_adapter *a);   /* NULL unless merge */

/* Rescans the directory and returns every adapter known (loaded or not), sorted by name,
 * in a malloc'd array the caller frees; *n its length. NULL with *n = 0 when empty or
 * out of memory. */
registry_info *registry_list(registry *r, int *n);

/* Adapters loaded now; loads and evictions so far. */
void registry_counts(registry *r, int *loaded, uint64_t *loads, uint64_t *evictions);

#endif
