/* bench_soak: lorad serve under a long mixed load, watched for leaks and drift (issue 13).
 *
 * The daemon serves the bundled demo model (models/demo) with a store of 24 adapters
 * (copies of its three) and --max-loaded-adapters 8, so loads and evictions never stop.
 * Client threads (closed loop) send, at random: streamed completions on an adapter, the
 * base or a weighted mix (70%); streams they abandon after a few tokens (10%, the daemon
 * must cancel them); whole chat completions (20%). One admin thread uploads new adapters,
 * replaces them (?replace=true) and deletes them, keeping up to 8 of its own, and asks
 * each new version for a token before going on.
 *
 * Every interval it samples the daemon's RSS (/proc/PID/status) and open file descriptors
 * (/proc/PID/fd) and prints the requests served, errors and p99 request latency of that
 * interval. At the end: totals, errors (any answer other than the one expected — the load
 * provokes none on purpose), the RSS slope after warm-up (least squares over the samples
 * after the first quarter, in MB per hour) and the fd range.
 *
 * Usage: bench_soak BUILD WORKDIR [--minutes M] [--clients N] [--interval S]
 * (defaults 5 minutes, 8 clients, 10 s). Exit status 1 when there were errors. */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/benchutil.h"

#define MAX_CLIENTS 64
#define STORE_ADAPTERS 24
#define OWN_MAX 8
#define MAX_LAT 65536

static const char *const demo[3] = {"shout", "german", "kjv"};
static const char *const prompts[] = {"Once upon a time", "The king said", "Tell me a story",
                                      "Why is the sky blue?", "In the beginning"};

static int port;
static atomic_int stop;

/* latencies of requests finished in the current interval, and counters */
static pthread_mutex_t lat_lock = PTHREAD_MUTEX_INITIALIZER;
static double lat[MAX_LAT];
static int n_lat;
static atomic_long served, abandoned, errors, uploads, replaces, deletes;

static void error_msg(const char *what, long status, const char *detail)
{
    if (atomic_fetch_add(&errors, 1) < 50)
        fprintf(stderr, "bench_soak: %s: status %ld %s\n", what, status, detail);
}

static void record_latency(double s)
{
    pthread_mutex_lock(&lat_lock);
    if (n_lat < MAX_LAT)
        lat[n_lat++] = s;
    pthread_mutex_unlock(&lat_lock);
}

typedef struct {
    size_t bytes;
    int tokens;
    int abandon_after;   /* tokens; 0: read to the end */
    int done;
    char tail[256];      /* the end of the body, for [DONE] and error messages */
} body_state;

static size_t on_body(char *data, size_t size, size_t nmemb, void *user)
{
    body_state *b = user;
    size_t n = size * nmemb;
    b->bytes += n;
    for (size_t i = 0; i + 6 <= n; i++)   /* one SSE event per token */
        b->tokens += memcmp(data + i, "data: ", 6) == 0;
    size_t keep = n < sizeof b->tail - 1 ? n : sizeof b->tail - 1;
    memcpy(b->tail, data + n - keep, keep);
    b->tail[keep] = '\0';
    if (strstr(b->tail, "[DONE]"))
        b->done = 1;
    if (b->abandon_after && b->tokens >= b->abandon_after)
        return 0;   /* curl aborts: the client goes away mid-stream */
    return n;
}

/* POST path body; returns the status (0: transport error or abandoned). */
static long post(CURL *c, const char *path, const char *body, body_state *b)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(h);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    return rc == CURLE_OK ? status : (rc == CURLE_WRITE_ERROR ? -1 : 0);
}

static void *client_main(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    CURL *c = curl_easy_init();
    char body[1024], pick_s[160];
    while (c && !atomic_load(&stop)) {
        unsigned kind = bench_rand(&seed) % 10, pick = bench_rand(&seed) % 8;
        unsigned a = bench_rand(&seed) % STORE_ADAPTERS;
        if (pick == 0)
            snprintf(pick_s, sizeof pick_s, "\"model\":\"base\"");
        else if (pick == 1)   /* two different adapters */
            snprintf(pick_s, sizeof pick_s, "\"adapters\":[{\"name\":\"s%02u\",\"weight\":0.6},"
                     "{\"name\":\"s%02u\",\"weight\":0.4}]", a,
                     (a + 1 + bench_rand(&seed) % (STORE_ADAPTERS - 1)) % STORE_ADAPTERS);
        else
            snprintf(pick_s, sizeof pick_s, "\"model\":\"s%02u\"", a);
        const char *prompt = prompts[bench_rand(&seed) % 5];
        int max_tokens = 8 + (int)(bench_rand(&seed) % 56);
        body_state b = {0};
        double t0 = bench_now();
        long st;
        if (kind < 8) {
            snprintf(body, sizeof body, "{%s,\"prompt\":\"%s\",\"max_tokens\":%d,\"stream\":true,"
                     "\"temperature\":0.8,\"seed\":%u}", pick_s, prompt, max_tokens,
                     bench_rand(&seed) % 1000);
            b.abandon_after = kind == 7 ? 2 + (int)(bench_rand(&seed) % 4) : 0;
            st = post(c, "/v1/completions", body, &b);
            if (b.abandon_after && st == -1) {
                atomic_fetch_add(&abandoned, 1);
                continue;
            }
            if (st != 200 || !b.done) {
                error_msg("streamed completion", st, b.tail);
                continue;
            }
        } else {
            snprintf(body, sizeof body, "{%s,\"messages\":[{\"role\":\"user\",\"content\":"
                     "\"%s\"}],\"max_tokens\":%d,\"temperature\":0}", pick_s, prompt, max_tokens);
            st = post(c, "/v1/chat/completions", body, &b);
            if (st != 200) {
                error_msg("chat completion", st, b.tail);
                continue;
            }
        }
        atomic_fetch_add(&served, 1);
        record_latency(bench_now() - t0);
    }
    curl_easy_cleanup(c);
    return NULL;
}

/* PUT /v1/adapters/name (?replace=true) with demo adapter k's files; returns the status. */
static long upload(CURL *c, const char *name, int k, int replace)
{
    char url[160], cfg[512], wts[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters/%s%s", port, name,
             replace ? "?replace=true" : "");
    snprintf(cfg, sizeof cfg, "models/demo/adapters/%s/adapter_config.json", demo[k]);
    snprintf(wts, sizeof wts, "models/demo/adapters/%s/adapter_model.safetensors", demo[k]);
    curl_easy_reset(c);
    curl_mime *mime = curl_mime_init(c);
    curl_mimepart *p = curl_mime_addpart(mime);
    curl_mime_name(p, "config");
    curl_mime_filedata(p, cfg);
    p = curl_mime_addpart(mime);
    curl_mime_name(p, "weights");
    curl_mime_filedata(p, wts);
    body_state b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_mime_free(mime);
    if (rc != CURLE_OK || (status != 201 && status != 200))
        error_msg(replace ? "replace" : "upload", status, b.tail);
    return status;
}

static long delete_adapter(CURL *c, const char *name)
{
    char url[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/adapters/%s", port, name);
    body_state b = {0};
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK || status != 200)
        error_msg("delete", status, b.tail);
    return status;
}

static void *admin_main(void *arg)
{
    (void)arg;
    unsigned seed = 12345;
    CURL *c = curl_easy_init();
    int own[OWN_MAX], n_own = 0, next = 0;
    char name[32], body[256];
    while (c && !atomic_load(&stop)) {
        unsigned op = bench_rand(&seed) % 3;
        if (op == 0 || n_own == 0) {
            if (n_own == OWN_MAX)
                continue;
            own[n_own++] = next;
            snprintf(name, sizeof name, "up%05d", next++);
            if (upload(c, name, (int)(bench_rand(&seed) % 3), 0) != 201) {
                n_own--;
                continue;
            }
            atomic_fetch_add(&uploads, 1);
        } else if (op == 1) {
            snprintf(name, sizeof name, "up%05d", own[bench_rand(&seed) % (unsigned)n_own]);
            if (upload(c, name, (int)(bench_rand(&seed) % 3), 1) != 201)
                continue;
            atomic_fetch_add(&replaces, 1);
        } else {
            int k = (int)(bench_rand(&seed) % (unsigned)n_own);
            snprintf(name, sizeof name, "up%05d", own[k]);
            own[k] = own[--n_own];
            delete_adapter(c, name);
            atomic_fetch_add(&deletes, 1);
            usleep(200000);
            continue;
        }
        /* the version just published answers */
        snprintf(body, sizeof body, "{\"model\":\"%s\",\"prompt\":\"Hello\",\"max_tokens\":2}",
                 name);
        body_state b = {0};
        long st = post(c, "/v1/completions", body, &b);
        if (st != 200)
            error_msg("first request on a new version", st, b.tail);
        usleep(200000);
    }
    curl_easy_cleanup(c);
    return NULL;
}

static long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static int proc_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));)
        n += de->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* dir/sNN for NN < STORE_ADAPTERS, hard links to the demo adapters' files. */
static int make_store(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        return -1;
    mkdir(dir, 0755);
    for (int i = 0; i < STORE_ADAPTERS; i++) {
        char sub[4200], src[512], dst[4300];
        snprintf(sub, sizeof sub, "%s/s%02d", dir, i);
        mkdir(sub, 0755);
        static const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
        for (int f = 0; f < 2; f++) {
            snprintf(src, sizeof src, "models/demo/adapters/%s/%s", demo[i % 3], files[f]);
            snprintf(dst, sizeof dst, "%s/%s", sub, files[f]);
            if (link(src, dst) != 0) {
                fprintf(stderr, "bench_soak: link %s: %s\n", dst, strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_soak BUILD WORKDIR [--minutes M] [--clients N] "
                "[--interval S]\n");
        return 2;
    }
    const char *build = argv[1], *work = argv[2];
    double minutes = 5, interval = 10;
    int clients = 8;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--minutes") == 0)
            minutes = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--clients") == 0)
            clients = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--interval") == 0)
            interval = atof(argv[i + 1]);
    }
    if (minutes <= 0 || clients < 1 || clients > MAX_CLIENTS || interval < 1) {
        fprintf(stderr, "bench_soak: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char store[4096];
    snprintf(store, sizeof store, "%s/soak-store", work);
    mkdir(work, 0755);
    if (make_store(store))
        return 1;
    const char *args[] = {"--model", "models/demo/base", "--served-model-name", "base",
                          "--adapter-dir", store, "--max-loaded-adapters", "8",
                          "--max-seqs", "16", "--max-queue", "256", NULL};
    pid_t pid = bench_start_daemon(build, args, &port);
    if (pid < 0)
        return 1;
    printf("lorad soak: demo model, %d adapters in the store (+ up to %d uploaded), "
           "--max-loaded-adapters 8, %d clients + 1 admin client, %.0f minutes\n\n",
           STORE_ADAPTERS, OWN_MAX, clients, minutes);
    printf("%8s %9s %9s %9s %9s %10s %6s %8s\n", "t (s)", "requests", "abandoned", "errors",
           "p99 s", "RSS MB", "fds", "uploads");
    pthread_t th[MAX_CLIENTS + 1];
    for (int i = 0; i < clients; i++)
        pthread_create(&th[i], NULL, client_main, (void *)(uintptr_t)(i + 1));
    pthread_create(&th[clients], NULL, admin_main, NULL);

    int n_samples = (int)(minutes * 60 / interval) + 1;
    double *ts = calloc((size_t)n_samples, sizeof *ts), *rss = calloc((size_t)n_samples, sizeof *rss);
    int fd_min = 1 << 30, fd_max = 0, n = 0;
    double t_start = bench_now();
    long last_served = 0;
    static double sorted[MAX_LAT];
    while (n < n_samples && ts && rss) {
        double wake = t_start + (n + 1) * interval;
        while (bench_now() < wake && waitpid(pid, NULL, WNOHANG) == 0)
            usleep(100000);
        if (waitpid(pid, NULL, WNOHANG) != 0) {
            fprintf(stderr, "bench_soak: the daemon died\n");
            atomic_fetch_add(&errors, 1);
            break;
        }
        long kb = proc_rss_kb(pid);
        int fds = proc_fds(pid);
        pthread_mutex_lock(&lat_lock);
        int k = n_lat;
        memcpy(sorted, lat, sizeof *lat * (size_t)k);
        n_lat = 0;
        pthread_mutex_unlock(&lat_lock);
        qsort(sorted, (size_t)k, sizeof *sorted, bench_cmp_double);
        double p99 = k ? sorted[(int)(0.99 * (k - 1))] : NAN;
        ts[n] = bench_now() - t_start;
        rss[n] = kb / 1024.0;
        fd_min = fds < fd_min ? fds : fd_min;
        fd_max = fds > fd_max ? fds : fd_max;
        long s = atomic_load(&served);
        printf("%8.0f %9ld %9ld %9ld %9.2f %10.1f %6d %8ld\n", ts[n], s - last_served,
               atomic_load(&abandoned), atomic_load(&errors), p99, rss[n], fds,
               atomic_load(&uploads));
        fflush(stdout);
        last_served = s;
        n++;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i <= clients; i++)
        pthread_join(th[i], NULL);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);

    /* RSS slope after warm-up: least squares over the last three quarters of the samples */
    int from = n / 4;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int m = n - from;
    for (int i = from; i < n; i++) {
        sx += ts[i];
        sy += rss[i];
        sxx += ts[i] * ts[i];
        sxy += ts[i] * rss[i];
    }
    double slope = m > 1 ? (m * sxy - sx * sy) / (m * sxx - sx * sx) : NAN;
    printf("\nrequests served %ld, abandoned on purpose %ld, errors %ld; uploads %ld, "
           "replaces %ld, deletes %ld\n", atomic_load(&served), atomic_load(&abandoned),
           atomic_load(&errors), atomic_load(&uploads), atomic_load(&replaces),
           atomic_load(&deletes));
    printf("RSS after warm-up: %.1f -> %.1f MB, slope %.2f MB/hour (least squares over %d "
           "samples); open fds %d..%d; daemon exit status %d\n", n > from ? rss[from] : NAN,
           n ? rss[n - 1] : NAN, slope * 3600, m, fd_min, fd_max,
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    free(ts);
    free(rss);
    curl_global_cleanup();
    return atomic_load(&errors) || !WIFEXITED(status) || WEXITSTATUS(status) ? 1 : 0;
}
