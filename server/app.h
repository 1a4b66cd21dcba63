/* app: what the daemon holds while it serves — options, the model and its tokenizer and
 * chat template, the adapter registry, the engine, metrics — shared by the HTTP layer
 * (server/http.c) and the API handlers (server/api.c). Built and torn down by
 * server/serve.c; everything in it is either immutable while serving or thread-safe. */
#ifndef LORAD_APP_H
#define LORAD_APP_H

#include <stddef.h>
#include <time.h>

#include "adapters/registry.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/tokenizer.h"
#include "server/chat.h"
#include "server/metrics.h"

/* `lorad serve` options; defaults in serve_options_default (server/serve.h). */
typedef struct {
    const char *model_dir;
    const char *served_name;      /* id reported for the base; default: model dir's name */
    const char *adapter_dir;      /* NULL: no adapters */
    const char *host;
    int port;                     /* 0: any free port (printed at start) */
    const char *api_key_file;
    const char *admin_key_file;   /* NULL: adapter management from loopback clients only */
    const char *allow_paths[8];   /* --allow-adapter-path: where load_lora_adapter may read */
    int n_allow_paths;
    int max_upload_mb;
    long max_adapter_mb;          /* memory of loaded adapters; 0: no limit */
    const char *chat_template;    /* NULL: the model's tokenizer_config.json */
    int max_loaded;
    int max_rank;
    int weights;                  /* MODEL_WEIGHTS_AUTO (the checkpoint's) or a wt_type */
    int merge;                    /* registry_merge: never, always, auto */
    long merge_budget_mb;         /* --merge auto's W' memory; 0: room for one */
    int ctx;                      /* 0: the model's max_position_embeddings */
    int max_tokens;               /* default and upper limit of a request's max_tokens */
    int max_seqs;
    int max_queue;
    int max_body_kb;
    long kv_mb;                   /* KV cache pool in MiB; 0: max_seqs full contexts */
    int threads;                  /* 0: one per CPU */
    int max_connections;
    int drain_seconds;            /* SIGTERM: how long running requests may finish */
    int test_stall_engine;        /* test-only: SIGUSR1 wedges the engine thread (so a test
                                   * can see its watchdog pings stop) */
} serve_options;

typedef struct {
    serve_options opt;
    char base_id[256];
    model *m;
    tokenizer *tok;               /* NULL: no tokenizer.json (token ids only) */
    chat_template *chat;          /* NULL: chat answers 400 with chat_error */
    char chat_error[512];
    registry *reg;
    engine *eng;
    metrics *met;
    char *api_key;                /* NULL: no authentication */
    size_t api_key_len;
    char *admin_key;              /* NULL: see serve_options.admin_key_file */
    size_t admin_key_len;
    struct watch *watcher;        /* NULL when inotify is unavailable */
    volatile int draining;        /* set once at shutdown: new requests get 503 */
    int engine_stalled;           /* test_stall_engine: set by SIGUSR1, cleared at shutdown
                                   * (atomic builtins) */
    time_t started;
} app;

#endif
