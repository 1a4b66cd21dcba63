/* api: the OpenAI-compatible endpoints — request JSON parsed once into a typed struct
 * (every field validated; unknown fields refused), the adapter or mix resolved through
 * the registry, the request submitted to the engine, and the response formatted as
 * OpenAI does: one JSON object, or Server-Sent Events.
 *
 * Threads: called on libmicrohttpd's connection threads (one thread per connection), any
 * number at once. A generation request is shared between its connection thread and the
 * engine thread (refcounted; the last one frees it). */
#ifndef LORAD_API_H
#define LORAD_API_H

#include <stddef.h>
#include <sys/types.h>

#include "server/app.h"

typedef struct api_stream api_stream;

/* What a handler answers. Either a whole body (status, JSON), or a stream. */
typedef struct {
    int status;
    char *body;                 /* malloc'd, owned by the caller after return */
    size_t len;
    const char *content_type;   /* static */
    int retry_after;            /* seconds for Retry-After (429, 503), 0 = none */
    api_stream *stream;         /* non-NULL: an SSE response (status 200) */
    /* for the request log line and metrics */
    char adapter[160];
    int prompt_tokens;
    int output_tokens;
} api_reply;

/* The request as the HTTP layer received it. */
typedef struct {
    const char *method;
    const char *path;
    const char *body;           /* NUL-terminated, len bytes */
    size_t len;
    int fd;                     /* the client's socket: watched for a hang-up while
                                 * generating, so a vanished client cancels its request */
    double t_arrival;           /* CLOCK_MONOTONIC seconds */
} api_request;

/* Fills out with an OpenAI-shaped error {"error":{message,type,param,code}}. */
void api_error(api_reply *out, int status, const char *param, const char *code,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* POST /v1/completions and /v1/chat/completions. Non-streaming requests are generated
 * here (the caller's thread waits, watching rq->fd); streaming ones return a stream. */
void api_completions(app *a, const api_request *rq, int chat, api_reply *out);

/* GET /v1/models, and GET /v1/models/{id} (one entry, 404 when unknown). */
void api_models(app *a, api_reply *out);
void api_model(app *a, const char *id, api_reply *out);

/* Streams: api_stream_read writes up to max bytes of SSE into buf, blocking until there
 * is something to send. Returns the byte count, 0 at the end of the stream, or -1 when
 * the client went away (the request is then cancelled). api_stream_free cancels the
 * request if it still runs and drops the connection's reference; it fills the log
 * counters of reply (may be NULL). */
ssize_t api_stream_read(api_stream *s, char *buf, size_t max);
void api_stream_free(api_stream *s, api_reply *reply);

/* Monotonic clock in seconds. */
double api_now(void);

#endif
