/* admin: adapter management over HTTP — list, describe, upload (multipart/form-data with
 * parts `config` and `weights`, streamed to the store through libmicrohttpd's post
 * processor, validated against the base before anything is published), replace, delete,
 * and vLLM's load_lora_adapter / unload_lora_adapter. Authorization is decided by the
 * HTTP layer (server/http.c) before these run.
 *
 * Threads: connection threads, any number at once (the store and the registry are
 * thread-safe; two uploads of one name race to the rename, the loser gets 409). */
#ifndef LORAD_ADMIN_H
#define LORAD_ADMIN_H

#include <microhttpd.h>

#include "server/api.h"
#include "server/app.h"

typedef struct admin_upload admin_upload;

/* GET /v1/adapters and GET /v1/adapters/{name}. */
void admin_list(app *a, api_reply *out);
void admin_get(app *a, const char *name, api_reply *out);

/* DELETE /v1/adapters/{name}: 200 with {"id","object":"adapter","deleted":true}, 404. */
void admin_delete(app *a, const char *name, api_reply *out);

/* POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's bodies and statuses). */
void admin_load_vllm(app *a, const char *body, size_t len, api_reply *out);
void admin_unload_vllm(app *a, const char *body, size_t len, api_reply *out);

/* PUT /v1/adapters/{name}[?replace=true], before its body: checks the name, the content
 * type and the declared length, and opens a temporary upload in the store. NULL with out
 * filled when the request is refused at once. */
admin_upload *admin_upload_begin(app *a, struct MHD_Connection *c, const char *name,
                                 api_reply *out);

/* Feeds body bytes. Returns 0, or -1 with out filled (413 past --max-upload-mb, 400 for an
 * unexpected part, 500 for a disk error): the rest of the body is then not read. */
int admin_upload_data(admin_upload *u, const char *data, size_t n, api_reply *out);

/* At the end of the body: validates, publishes, answers (201, 400, 409, 422, 500). Frees
 * u. */
void admin_upload_finish(app *a, admin_upload *u, api_reply *out);

/* Drops an unfinished upload (nothing is left in the store). Accepts NULL. */
void admin_upload_free(admin_upload *u);

#endif
