/* serve: the daemon's lifetime. A signal handler only records the signal and writes a
 * byte to a pipe the main thread sleeps on (any thread may take a process signal:
 * OpenBLAS starts its threads before main). systemd's side goes through libsystemd
 * (sd_notify, sd_watchdog_enabled, sd_listen_fds), every call a no-op outside systemd. */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "adapters/store.h"
#include "adapters/watch.h"
#include "core/log.h"
#include "server/api.h"
#include "server/http.h"

#define WATCH_QUIET_MS 200   /* the adapter directory must be still this long */
#define START_EXTEND_S 60    /* each sign of loading progress gives systemd's start timeout
                              * this much more time: a big model may load for minutes, a
                              * hung load is still caught */

serve_options serve_options_default(void)
{
    serve_options o = {
        .host = "127.0.0.1", .port = 8080, .max_loaded = 64,
        .max_rank = peft_options_default().max_rank, .max_tokens = 256, .max_seqs = 16,
        .max_queue = 64, .max_body_kb = 1024, .kv_mb = 0, .max_connections = 256,
        .drain_seconds = 30, .max_upload_mb = 512, .weights = MODEL_WEIGHTS_AUTO};
    return o;
}

static volatile sig_atomic_t last_signal;
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    last_signal = sig;
    char c = 0;
    if (write(signal_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a wake-up is already pending */
    }
    errno = saved;
}

/* The watcher saw the adapter directory settle after a change. */
static void on_dir_changed(void *user)
{
    /* the watcher starts just before the registry exists */
    registry *r = __atomic_load_n(&((app *)user)->reg, __ATOMIC_ACQUIRE);
    if (r)
        registry_rescan(r);
}

/* Blocks until SIGTERM or SIGINT; SIGHUP rescans the adapter directory. */
static int wait_signal(app *a, const char *status)
{
    for (;;) {
        char c;
        ssize_t n = read(signal_pipe[0], &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        int sig = last_signal;
        if (sig == SIGHUP) {
            log_info("SIGHUP: rescanning the adapter directory");
            sd_notify(0, "RELOADING=1\nSTATUS=rescanning the adapter directory");
            registry_rescan(a->reg);
            sd_notifyf(0, "READY=1\nSTATUS=%s", status);
            continue;
        }
        if (sig == SIGUSR1 && a->opt.test_stall_engine) {
            log_warn("SIGUSR1: stalling the engine thread (--test-stall-engine)");
            __atomic_store_n(&a->engine_stalled, 1, __ATOMIC_RELEASE);
            continue;
        }
        if (sig == SIGTERM || sig == SIGINT)
            return sig;
    }
}

static int install_signals(int test_stall)
{
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    int fl = fcntl(signal_pipe[0], F_GETFL);
    fcntl(signal_pipe[0], F_SETFL, fl & ~O_NONBLOCK);   /* the reader blocks */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if (test_stall)
        sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void *engine_main(void *arg)
{
    engine_run(arg);
    return NULL;
}

/* The engine loop's heartbeat (engine thread): systemd's watchdog hears from the loop
 * itself, so a wedged step stops the pings and an idle engine goes on sending them. */
static void on_heartbeat(void *user)
{
    app *a = user;
    if (__atomic_load_n(&a->engine_stalled, __ATOMIC_ACQUIRE)) {
        /* --test-stall-engine: a wedged engine, released (without a ping) by shutdown */
        while (__atomic_load_n(&a->engine_stalled, __ATOMIC_ACQUIRE))
            usleep(10000);
        return;
    }
    sd_notify(0, "WATCHDOG=1");
}

/* Model loading progress as systemd STATUS= (what `systemctl status` shows), at most ten
 * a second, each extending the start timeout. */
typedef struct {
    double last;   /* api_now() of the last report */
} load_status;

static void on_load_progress(void *user, const char *what, int done, int total)
{
    load_status *ls = user;
    double now = api_now();
    if (done < total && now - ls->last < 0.1)
        return;
    ls->last = now;
    if (strcmp(what, "files") == 0)
        sd_notifyf(0, "STATUS=loading model: %d/%d files\nEXTEND_TIMEOUT_USEC=%llu", done,
                   total, START_EXTEND_S * 1000000ULL);
    else
        sd_notifyf(0, "STATUS=loading model: copying weights, %d/%d tensors\n"
                   "EXTEND_TIMEOUT_USEC=%llu", done, total, START_EXTEND_S * 1000000ULL);
}

/* Registry events (loader thread): load times, failures. */
static void on_registry_event(void *user, const char *name, double seconds, int code)
{
    app *a = user;
    (void)name;
    if (seconds < 0)
        return;   /* an eviction: counted by the registry */
    metrics_observe(a->met, METRICS_LOAD, seconds);
    if (code)
        metrics_load_failed(a->met);
}

/* The key: the file's first line, surrounding whitespace removed. */
static char *read_key(const char *path, size_t *len, lr_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        lr_error_set(err, LR_EIO, "--api-key-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    char *s = ok ? line : NULL;
    while (s && (*s == ' ' || *s == '\t'))
        s++;
    size_t n = s ? strcspn(s, "\r\n") : 0;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0) {
        lr_error_set(err, LR_EINVAL, "--api-key-file %s: the first line holds no key", path);
        return NULL;
    }
    char *k = strndup(s, n);
    if (!k)
        lr_error_set(err, LR_ENOMEM, "out of memory");
    *len = n;
    return k;
}

static int load_all(app *a, lr_error *err)
{
    const serve_options *o = &a->opt;
    sd_notifyf(0, "STATUS=loading model %s", o->model_dir);
    load_status ls = {0};
    model_load_opts lo = {o->weights, on_load_progress, &ls};
    if (!(a->m = model_load_with(o->model_dir, &lo, err)))
        return -1;
    sd_notify(0, "STATUS=loading tokenizer, chat template and adapter registry");
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
    if (access(path, F_OK) == 0) {
        if (!(a->tok = tokenizer_load(o->model_dir, err)))
            return -1;
    } else {
        log_warn("%s: not found; requests must give token ids, and chat is unavailable",
                 path);
    }
    lr_error cerr = {0};
    if (!a->tok) {
        snprintf(a->chat_error, sizeof a->chat_error, "chat needs the model's tokenizer.json");
    } else if (!(a->chat = chat_template_load(o->model_dir, o->chat_template, &cerr))) {
        if (o->chat_template) {
            *err = cerr;
            return -1;
        }
        snprintf(a->chat_error, sizeof a->chat_error, "this model has no usable chat "
                 "template (%s); use /v1/completions or start with --chat-template NAME",
                 cerr.msg);
        log_warn("%s", a->chat_error);
    }
    if (o->api_key_file && !(a->api_key = read_key(o->api_key_file, &a->api_key_len, err)))
        return -1;
    if (o->admin_key_file &&
        !(a->admin_key = read_key(o->admin_key_file, &a->admin_key_len, err)))
        return -1;
    if (o->adapter_dir) {
        int n = store_cleanup(o->adapter_dir);
        if (n > 0)
            log_warn("%s: removed %d unfinished uploads or deletions left by a crash",
                     o->adapter_dir, n);
    }
    if (!(a->met = metrics_create()))
        return lr_error_set(err, LR_ENOMEM, "out of memory");
    registry_options ro = registry_options_default();
    ro.dir = o->adapter_dir;
    ro.max_loaded = o->max_loaded;
    ro.merge = o->merge;
    ro.merge_budget = (size_t)o->merge_budget_mb << 20;
    ro.peft.max_rank = o->max_rank;
    ro.max_bytes = (size_t)o->max_adapter_mb << 20;
    ro.on_event = on_registry_event;
    ro.user = a;
    if (o->adapter_dir) {
        lr_error werr = {0};
        a->watcher = watch_start(o->adapter_dir, WATCH_QUIET_MS, on_dir_changed, a, &werr);
        if (!a->watcher)
            log_warn("%s; adapters added to the directory are found when first requested, "
                     "or after SIGHUP", werr.msg);
        ro.cached_list = a->watcher != NULL;
    }
    registry *reg = registry_create(a->m, &ro, err);
    if (!reg)
        return -1;
    __atomic_store_n(&a->reg, reg, __ATOMIC_RELEASE);
    engine_options eo = engine_options_default();
    eo.max_seqs = o->max_seqs;
    eo.max_queue = o->max_queue;
    eo.max_kv_bytes = (size_t)o->kv_mb << 20;
    eo.max_ctx = o->ctx;
    eo.threads = o->threads;
    uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0) {
        eo.heartbeat_ms = (int)(wd_usec / 2000) > 0 ? (int)(wd_usec / 2000) : 1;
        eo.on_heartbeat = on_heartbeat;
        eo.heartbeat_user = a;
        log_info("systemd watchdog: %.3f s; the engine loop pings every %d ms",
                 (double)wd_usec / 1e6, eo.heartbeat_ms);
    }
    if (!(a->eng = engine_create(a->m, &eo, err)))
        return -1;
    return 0;
}

static void free_all(app *a)
{
    watch_stop(a->watcher);
    engine_destroy(a->eng);
    registry_destroy(a->reg);
    metrics_free(a->met);
    chat_template_free(a->chat);
    tokenizer_free(a->tok);
    model_free(a->m);
    free(a->api_key);
    free(a->admin_key);
}

/* The listening socket systemd passed (socket activation), -1 when none; -2 + err when
 * what was passed cannot be served. The environment variables are cleared so that nothing
 * this process starts inherits them. */
static int passed_socket(lr_error *err)
{
    int n = sd_listen_fds(1);
    if (n < 0) {
        lr_error_set(err, LR_EINVAL, "socket activation: %s", strerror(-n));
        return -2;
    }
    if (n == 0)
        return -1;
    if (n > 1) {
        for (int i = 0; i < n; i++)
            close(SD_LISTEN_FDS_START + i);
        lr_error_set(err, LR_EINVAL, "socket activation passed %d sockets; lorad serves one "
                     "(one ListenStream= in lorad.socket)", n);
        return -2;
    }
    int fd = SD_LISTEN_FDS_START;
    if (sd_is_socket_inet(fd, 0, SOCK_STREAM, 1, 0) <= 0) {
        close(fd);
        lr_error_set(err, LR_EINVAL, "socket activation passed a socket that is not a "
                     "listening TCP socket (lorad.socket needs ListenStream=[ADDR:]PORT)");
        return -2;
    }
    return fd;
}

/* Waits until no request runs or waits, or the deadline (monotonic seconds) passes. */
static void wait_idle(app *a, double deadline)
{
    while (engine_running(a->eng) > 0 && api_now() < deadline)
        usleep(20000);
}

int serve_run(const serve_options *o)
{
    app *a = calloc(1, sizeof *a);
    if (!a) {
        log_error("out of memory");
        return 1;
    }
    a->opt = *o;
    a->started = time(NULL);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o->model_dir);
    snprintf(a->base_id, sizeof a->base_id, "%s", o->served_name ? o->served_name
                                                                   : basename(dir));

    if (install_signals(o->test_stall_engine)) {
        log_error("cannot create the signal pipe: %s", strerror(errno));
        free(a);
        return 1;
    }

    lr_error err = {0};
    int rc = 1;
    pthread_t engine_thread;
    int engine_started = 0;
    http_server *h = NULL;
    int listen_fd = passed_socket(&err);
    if (listen_fd == -2)
        goto out;
    if (load_all(a, &err)) {
        if (listen_fd >= 0)
            close(listen_fd);
        goto out;
    }
    if (pthread_create(&engine_thread, NULL, engine_main, a->eng) != 0) {
        lr_error_set(&err, LR_ENOMEM, "cannot start the engine thread");
        if (listen_fd >= 0)
            close(listen_fd);
        goto out;
    }
    engine_started = 1;
    if (!(h = http_start(a, listen_fd, &err)))
        goto out;
    /* Always printed: scripts and tests read the port from it. */
    char status[512];
    snprintf(status, sizeof status, "serving '%s' on http://%s:%d (context %d, %s weights "
             "held as %s)", a->base_id, http_host(h), http_port(h), engine_ctx(a->eng),
             a->m->dtype, wtensor_type_name(a->m->weights));
    fprintf(stderr, "lorad: %s%s\n", status, listen_fd >= 0 ? " (socket activation)" : "");
    fflush(stderr);
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);

    int sig = wait_signal(a, status);
    log_warn("%s: draining (up to %d s for running requests)", strsignal(sig),
             o->drain_seconds);
    /* The stop timeout covers the drain, whatever --drain-seconds is. */
    sd_notifyf(0, "STOPPING=1\nSTATUS=draining: %d requests running (up to %d s)\n"
               "EXTEND_TIMEOUT_USEC=%llu", engine_running(a->eng), o->drain_seconds,
               (o->drain_seconds + 15) * 1000000ULL);
    a->draining = 1;
    http_quiesce(h);
    wait_idle(a, api_now() + o->drain_seconds);
    if (engine_running(a->eng) > 0)
        log_warn("drain time over: cancelling %d requests", engine_running(a->eng));
    engine_cancel_all(a->eng);
    wait_idle(a, api_now() + 10);
    http_stop(h);   /* waits for every connection's thread */
    h = NULL;
    rc = 0;
out:
    if (rc) {
        log_error("%s", err.msg);
        sd_notifyf(0, "STATUS=failed to start: %s", err.msg);
    }
    http_stop(h);
    if (engine_started) {
        __atomic_store_n(&a->engine_stalled, 0, __ATOMIC_RELEASE);
        engine_cancel_all(a->eng);
        engine_stop(a->eng);
        pthread_join(engine_thread, NULL);
    }
    free_all(a);
    free(a);
    if (rc == 0)
        log_warn("stopped");
    return rc;
}
