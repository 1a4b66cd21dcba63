/* http: the daemon's HTTP side on libmicrohttpd — listening socket, one thread per
 * connection (a connection waiting for its tokens blocks only itself), request bodies
 * read up to --max-body-kb and refused (413) as soon as they are known to be larger,
 * authentication, routing to server/api.c, one log line per request.
 *
 * Routes: GET /health (no authentication), GET /metrics, GET /v1/models,
 * GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions. Errors have OpenAI's shape.
 *
 * Threads: http_start / http_quiesce / http_stop belong to the daemon's main thread. */
#ifndef LORAD_HTTP_H
#define LORAD_HTTP_H

#include "core/error.h"
#include "server/app.h"

typedef struct http_server http_server;

/* Serves a (borrowed, outlives the server) on listen_fd, a listening TCP socket that the
 * server owns from then on (socket activation), or, when listen_fd is -1, listens on
 * --host:--port itself (port 0: a free port, see http_port). NULL + err when the address
 * cannot be bound (listen_fd is then closed). */
http_server *http_start(app *a, int listen_fd, lr_error *err);

/* The address served (--host as given; numeric for a passed socket) and the port bound. */
const char *http_host(const http_server *h);
int http_port(const http_server *h);

/* Stops accepting connections (the listening socket is closed); open connections go on. */
void http_quiesce(http_server *h);

/* Waits for every connection to finish, then frees the server. Accepts NULL. */
void http_stop(http_server *h);

#endif
