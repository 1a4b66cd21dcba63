/* http: libmicrohttpd in thread-per-connection mode; per-request state is made on the
 * first callback and freed in the completion callback. */
#include "http.h"

#include <microhttpd.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "server/admin.h"
#include "server/api.h"

#define IDLE_TIMEOUT_S 300     /* an idle keep-alive connection is closed after this */
/* Memory of a connection (libmicrohttpd's pool: headers, then the read buffer, mapped but
 * not touched until used). Upload bodies arrive in chunks of up to about this much: with
 * 256 KiB rather than the default 32 KiB, a 19.6 MB adapter is received in 23 ms instead
 * of 37 (8x fewer callbacks and write()s; 1 MiB gains nothing more). */
#define CONNECTION_MEMORY ((size_t)256 << 10)
#define STREAM_BLOCK 16384     /* bytes MHD asks the SSE reader for at most */

struct http_server {
    app *a;
    struct MHD_Daemon *d;
    char host[256];        /* numeric when the socket was passed, else --host */
    int port;
    int quiesced;
};

/* One request on a connection. */
typedef struct {
    char method[8];
    char path[256];
    double t0;
    int route;              /* index in routes, -1 unknown path, -2 wrong method */
    const char *arg;        /* the name in a /…/{name} route (points into path) */
    char allow[64];         /* the path's methods, for 405 */
    char *body;
    size_t len, cap;
    admin_upload *upload;   /* PUT /v1/adapters/{name} */
    int discarding;         /* an upload was refused mid-body: its reply waits for the end */
    api_reply reply;
    int sent;               /* status counted in metrics */
} request;

typedef enum {
    R_HEALTH, R_METRICS, R_MODELS, R_MODEL, R_COMPLETIONS, R_CHAT,
    R_ADAPTERS, R_ADAPTER_GET, R_ADAPTER_PUT, R_ADAPTER_DELETE, R_LOAD, R_UNLOAD,
    R_NONE,        /* no such path */
    R_BAD_METHOD   /* the path exists, not with this method */
} route_id;

typedef enum { OPEN, INFERENCE, ADMIN } route_access;

/* A path ending in '/' is a prefix: the rest is the route's argument (a name). */
static const struct {
    const char *path;
    const char *method;
    route_id id;
    route_access access;
} routes[] = {
    {"/health", "GET", R_HEALTH, OPEN},
    {"/metrics", "GET", R_METRICS, INFERENCE},
    {"/v1/models", "GET", R_MODELS, INFERENCE},
    {"/v1/models/", "GET", R_MODEL, INFERENCE},
    {"/v1/completions", "POST", R_COMPLETIONS, INFERENCE},
    {"/v1/chat/completions", "POST", R_CHAT, INFERENCE},
    {"/v1/adapters", "GET", R_ADAPTERS, ADMIN},
    {"/v1/adapters/", "GET", R_ADAPTER_GET, ADMIN},
    {"/v1/adapters/", "PUT", R_ADAPTER_PUT, ADMIN},
    {"/v1/adapters/", "DELETE", R_ADAPTER_DELETE, ADMIN},
    {"/v1/load_lora_adapter", "POST", R_LOAD, ADMIN},
    {"/v1/unload_lora_adapter", "POST", R_UNLOAD, ADMIN},
};
#define N_ROUTES (sizeof routes / sizeof *routes)

static int path_matches(const char *pattern, const char *path, const char **arg)
{
    size_t n = strlen(pattern);
    if (pattern[n - 1] != '/')
        return strcmp(pattern, path) == 0;
    if (strncmp(pattern, path, n) != 0 || !path[n] || strchr(path + n, '/'))
        return 0;
    *arg = path + n;
    return 1;
}

/* The route for (method, path): its index in routes, or -1 with *id R_NONE / R_BAD_METHOD
 * (allow then lists the methods the path has, for the Allow header). */
static int route_of(const char *method, const char *path, const char **arg, char *allow,
                    size_t cap)
{
    int path_known = 0;
    allow[0] = '\0';
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (!path_matches(routes[i].path, path, arg))
            continue;
        if (strcmp(routes[i].method, method) == 0)
            return (int)i;
        size_t n = strlen(allow);
        snprintf(allow + n, cap - n, "%s%s", n ? ", " : "", routes[i].method);
        path_known = 1;
    }
    return path_known ? -2 : -1;
}

/* Constant time in the length of the presented key: every byte is compared. */
static int key_is(const char *key, size_t key_len, const char *header)
{
    static const char bearer[] = "Bearer ";
    if (!key || !header || strncasecmp(header, bearer, sizeof bearer - 1) != 0)
        return 0;
    const char *k = header + sizeof bearer - 1;
    size_t n = strlen(k);
    unsigned char diff = n != key_len;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(k[i] ^ key[i % key_len]);
    return diff == 0;
}

static int from_loopback(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a6))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127;
    }
    return 0;
}

/* Who may do what: the inference key (or the admin key) for inference routes; the admin
 * key for management — or, without one, any client on this machine. Returns 0, or the
 * status to answer with (r filled). */
static int authorize(const app *a, struct MHD_Connection *c, route_access access,
                     api_reply *r)
{
    if (access == OPEN)
        return 0;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    int admin = key_is(a->admin_key, a->admin_key_len, h);
    int user = key_is(a->api_key, a->api_key_len, h);
    if (access == INFERENCE) {
        if (!a->api_key || user || admin)
            return 0;
        api_error(r, 401, NULL, "invalid_api_key", "a valid API key is required "
                  "(Authorization: Bearer <key>)");
        return 401;
    }
    if (a->admin_key) {
        if (admin)
            return 0;
        if (user) {
            api_error(r, 403, NULL, "permission_denied", "this key may not manage adapters "
                      "(the admin key may)");
            return 403;
        }
        api_error(r, 401, NULL, "invalid_api_key", "adapter management needs the admin key "
                  "(Authorization: Bearer <admin key>)");
        return 401;
    }
    if (!from_loopback(c)) {
        api_error(r, 403, NULL, "permission_denied", "adapter management is allowed from "
                  "this machine only (or start the server with --admin-key-file)");
        return 403;
    }
    if (a->api_key && !user) {
        api_error(r, 401, NULL, "invalid_api_key", "a valid API key is required "
                  "(Authorization: Bearer <key>)");
        return 401;
    }
    return 0;
}

static int is_json_type(const char *ct)
{
    static const char want[] = "application/json";
    if (!ct)
        return 0;
    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, want, sizeof want - 1) == 0 &&
           (ct[sizeof want - 1] == '\0' || ct[sizeof want - 1] == ';' ||
            ct[sizeof want - 1] == ' ');
}

/* SSE: blocks (this connection's own thread) until the stream has bytes to send. */
static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    request *rq = cls;
    (void)pos;
    ssize_t n = api_stream_read(rq->reply.stream, buf, max);
    if (n > 0)
        return n;
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static enum MHD_Result send_reply(app *a, struct MHD_Connection *c, request *rq)
{
    api_reply *r = &rq->reply;
    if (r->status == 499)
        return MHD_NO;   /* the client went away: close without an answer */
    struct MHD_Response *resp;
    if (r->stream)
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, read_stream,
                                                 rq, NULL);
    else
        resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    if (r->stream) {
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    }
    rq->sent = 1;
    MHD_add_response_header(resp, "Content-Type", r->content_type ? r->content_type
                                                                   : "application/json");
    if (r->retry_after) {
        char v[16];
        snprintf(v, sizeof v, "%d", r->retry_after);
        MHD_add_response_header(resp, "Retry-After", v);
    }
    if (r->status == 405)
        MHD_add_response_header(resp, "Allow", rq->allow);
    if (r->status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES)
        metrics_http(a->met, r->status);
    return ok;
}

/* Checks that need only the headers: route, method, authorization, shutdown, content
 * type and declared length; an upload is opened here. Returns 1 with rq->reply filled
 * when the request is refused (answered at once, the body left unread). */
static int refuse_early(app *a, struct MHD_Connection *c, request *rq)
{
    api_reply *r = &rq->reply;
    rq->route = route_of(rq->method, rq->path, &rq->arg, rq->allow, sizeof rq->allow);
    if (rq->route == -1) {
        api_error(r, 404, NULL, "not_found", "no route %s %s", rq->method, rq->path);
        return 1;
    }
    if (rq->route == -2) {
        api_error(r, 405, NULL, "method_not_allowed", "%s %s is not allowed; use %s",
                  rq->method, rq->path, rq->allow);
        return 1;
    }
    route_id id = routes[rq->route].id;
    if (authorize(a, c, routes[rq->route].access, r))
        return 1;
    if (a->draining && id != R_METRICS) {
        api_error(r, 503, NULL, "shutting_down", "the server is shutting down");
        r->retry_after = 5;
        return 1;
    }
    if (id == R_ADAPTER_PUT) {
        rq->upload = admin_upload_begin(a, c, rq->arg, r);
        return rq->upload == NULL;
    }
    if (strcmp(rq->method, "POST") != 0)
        return 0;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (!is_json_type(ct)) {
        api_error(r, 415, NULL, "unsupported_media_type", "Content-Type must be "
                  "application/json (got %s)", ct ? ct : "none");
        return 1;
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > (unsigned long long)a->opt.max_body_kb * 1024) {
        api_error(r, 413, NULL, "request_too_large", "the body is %s bytes; the limit is %d "
                  "KB (--max-body-kb)", cl, a->opt.max_body_kb);
        return 1;
    }
    return 0;
}

static void reply_static(api_reply *r, const char *body)
{
    r->status = 200;
    r->body = strdup(body);
    r->len = r->body ? strlen(r->body) : 0;
    r->content_type = "application/json";
    if (!r->body)
        api_error(r, 500, NULL, NULL, "out of memory");
}

static void handle(app *a, struct MHD_Connection *c, request *rq)
{
    api_reply *r = &rq->reply;
    const char *body = rq->body ? rq->body : "";
    switch (routes[rq->route].id) {
    case R_HEALTH:
        reply_static(r, "{\"status\":\"ok\"}");
        return;
    case R_METRICS: {
        engine_stats es;
        engine_stats_get(a->eng, &es);
        metrics_gauges g = {.running = es.running, .waiting = es.waiting,
                            .kv_bytes = es.kv_bytes, .kv_limit = es.kv_limit,
                            .kv_blocks_used = es.kv_blocks_used,
                            .kv_blocks_free = es.kv_blocks_free,
                            .kv_blocks_total = es.kv_blocks_total,
                            .preemptions = es.preemptions,
                            .cancelled = es.cancelled, .steps = es.steps,
                            .decode_rows = es.decode_rows, .prefill_rows = es.prefill_rows,
                            .step_seconds = es.step_seconds};
        registry_counts(a->reg, &g.adapters_loaded, &g.adapter_loads, &g.adapter_evictions);
        registry_merge_counts(a->reg, &g.adapters_merged, &g.merges_built, &g.merges_dropped);
        r->body = metrics_render(a->met, &g, &r->len);
        r->status = 200;
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        if (!r->body)
            api_error(r, 500, NULL, NULL, "out of memory");
        return;
    }
    case R_MODELS:
        api_models(a, r);
        return;
    case R_MODEL:
        api_model(a, rq->arg, r);
        return;
    case R_COMPLETIONS:
    case R_CHAT: {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        api_request q = {.method = rq->method, .path = rq->path, .body = body,
                         .len = rq->len, .fd = ci ? ci->connect_fd : -1, .t_arrival = rq->t0};
        api_completions(a, &q, routes[rq->route].id == R_CHAT, r);
        return;
    }
    case R_ADAPTERS:
        admin_list(a, r);
        return;
    case R_ADAPTER_GET:
        admin_get(a, rq->arg, r);
        return;
    case R_ADAPTER_PUT:
        admin_upload_finish(a, rq->upload, r);
        rq->upload = NULL;
        return;
    case R_ADAPTER_DELETE:
        admin_delete(a, rq->arg, r);
        return;
    case R_LOAD:
        admin_load_vllm(a, body, rq->len, r);
        return;
    case R_UNLOAD:
        admin_unload_vllm(a, body, rq->len, r);
        return;
    case R_NONE:
    case R_BAD_METHOD:
        break;
    }
    api_error(r, 404, NULL, "not_found", "no route %s %s", rq->method, rq->path);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload, size_t *upload_size, void **con_cls)
{
    app *a = cls;
    request *rq = *con_cls;
    (void)version;
    if (!rq) {
        if (!(rq = calloc(1, sizeof *rq)))
            return MHD_NO;
        *con_cls = rq;
        rq->t0 = api_now();
        snprintf(rq->method, sizeof rq->method, "%s", method);
        snprintf(rq->path, sizeof rq->path, "%s", url);
        if (refuse_early(a, c, rq))
            return send_reply(a, c, rq);
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (rq->sent)
            return MHD_YES;
        if (rq->upload) {
            /* streamed to the store, never held whole in memory */
            if (admin_upload_data(rq->upload, upload, n, &rq->reply) == 0)
                return MHD_YES;
            admin_upload_free(rq->upload);
            rq->upload = NULL;
            if (rq->reply.status == 413)
                return send_reply(a, c, rq) == MHD_YES ? MHD_YES : MHD_NO;
            /* A bad part: read (and drop) the rest, up to the limit, then answer. */
            rq->discarding = 1;
            rq->len = n;
            return MHD_YES;
        }
        if (rq->discarding) {
            rq->len += n;
            if (rq->len > (size_t)a->opt.max_upload_mb << 20)
                return MHD_NO;
            return MHD_YES;
        }
        size_t limit = (size_t)a->opt.max_body_kb * 1024;
        if (rq->len + n > limit) {
            /* No Content-Length (chunked): refuse as soon as the limit is passed. */
            api_error(&rq->reply, 413, NULL, "request_too_large", "the body is larger than "
                      "the limit of %d KB (--max-body-kb)", a->opt.max_body_kb);
            return send_reply(a, c, rq) == MHD_YES ? MHD_YES : MHD_NO;
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 4096;
            while (cap < rq->len + n + 1)
                cap *= 2;
            char *b = realloc(rq->body, cap);
            if (!b)
                return MHD_NO;
            rq->body = b;
            rq->cap = cap;
        }
        memcpy(rq->body + rq->len, upload, n);
        rq->len += n;
        rq->body[rq->len] = '\0';
        return MHD_YES;
    }
    if (rq->sent)
        return MHD_YES;
    if (!rq->discarding)
        handle(a, c, rq);
    return send_reply(a, c, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    app *a = cls;
    request *rq = *con_cls;
    (void)c;
    if (!rq)
        return;
    api_reply *r = &rq->reply;
    if (r->stream)
        api_stream_free(r->stream, r);
    admin_upload_free(rq->upload);   /* the client went away mid-upload */
    double ms = (api_now() - rq->t0) * 1e3;
    metrics_observe(a->met, METRICS_LATENCY, ms / 1e3);
    log_info("%s %s adapter=%s status=%d prompt_tokens=%d output_tokens=%d %.1f ms%s",
             rq->method, rq->path, r->adapter[0] ? r->adapter : "-", r->status,
             r->prompt_tokens, r->output_tokens, ms,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    free(rq->body);
    free(r->body);
    free(rq);
    *con_cls = NULL;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* libmicrohttpd's %XX decoding, except that %00 stays as it is: a decoded NUL would cut
 * the path short ("/v1/adapters/a%00b" must not name adapter "a"); left encoded it makes
 * an invalid name, answered with 400. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    char *w = s;
    for (const char *r = s; *r;) {
        int hi, lo;
        if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 &&
            (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_info("http: %s", line);
}

/* A passed listening socket's address, numeric. */
static int socket_address(int fd, char *host, size_t cap, int *port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        *port = ntohs(s6->sin6_port);
        return inet_ntop(AF_INET6, &s6->sin6_addr, host, (socklen_t)cap) ? 0 : -1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    *port = ntohs(s4->sin_port);
    return inet_ntop(AF_INET, &s4->sin_addr, host, (socklen_t)cap) ? 0 : -1;
}

/* Serves on fd, a listening TCP socket handed over by systemd. */
static http_server *start_on_socket(http_server *h, int fd, lr_error *err)
{
    app *a = h->a;
    if (socket_address(fd, h->host, sizeof h->host, &h->port) != 0) {
        lr_error_set(err, LR_EIO, "the passed listening socket: getsockname: %s",
                     strerror(errno));
        goto fail;
    }
    /* MHD polls before it accepts: a blocking socket could hang on a connection that
     * another process (or a reset) took first. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        lr_error_set(err, LR_EIO, "the passed listening socket: %s", strerror(errno));
        goto fail;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)a->opt.max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                            MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
                            MHD_OPTION_END);
    if (!h->d) {
        lr_error_set(err, LR_EIO, "cannot serve on the passed listening socket %s:%d",
                     h->host, h->port);
        goto fail;
    }
    return h;
fail:
    close(fd);
    free(h);
    return NULL;
}

http_server *http_start(app *a, int listen_fd, lr_error *err)
{
    http_server *h = calloc(1, sizeof *h);
    if (!h) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        if (listen_fd >= 0)
            close(listen_fd);
        return NULL;
    }
    h->a = a;
    if (listen_fd >= 0)
        return start_on_socket(h, listen_fd, err);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", a->opt.port);
    int rc = getaddrinfo(a->opt.host, port, &hints, &ai);
    if (rc) {
        lr_error_set(err, LR_EINVAL, "--host %s: %s", a->opt.host, gai_strerror(rc));
        free(h);
        return NULL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG |
                     (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, (uint16_t)a->opt.port, NULL, NULL, on_request, a,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)a->opt.max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                            MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->d) {
        lr_error_set(err, LR_EIO, "cannot listen on %s:%d (address in use, or not an "
                     "address of this machine?)", a->opt.host, a->opt.port);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : a->opt.port;
    snprintf(h->host, sizeof h->host, "%s", a->opt.host);
    return h;
}

const char *http_host(const http_server *h)
{
    return h->host;
}

int http_port(const http_server *h)
{
    return h->port;
}

void http_quiesce(http_server *h)
{
    if (!h || h->quiesced)
        return;
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    h->quiesced = 1;
}

void http_stop(http_server *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
