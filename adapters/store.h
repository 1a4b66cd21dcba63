/* store: the adapter directory on disk, written so that a crash at any instant leaves
 * either no adapter or the complete one. An upload goes to a temporary directory inside
 * the store (".tmp-PID-TID-N": a name no adapter can have), both files are fsynced, the
 * directory is renamed into place (renameat2: NOREPLACE, or EXCHANGE to replace) and the
 * store directory fsynced. A removal renames the adapter to ".del-…" first, so it
 * disappears in one step. store_cleanup removes what a crash left behind.
 *
 * Also the content hash that versions an adapter: 64 bits over both files' bytes.
 *
 * Threads: every function is thread-safe (temporary names are unique per process and
 * thread); one store_upload belongs to one thread at a time. */
#ifndef LORAD_STORE_H
#define LORAD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

enum { STORE_CONFIG = 0, STORE_WEIGHTS = 1 };   /* the two files of an adapter */
extern const char *const store_file_names[2];  /* adapter_config.json, ...safetensors */

typedef struct store_upload store_upload;

/* Removes the temporaries and half-removed adapters a crash left in dir; returns how many
 * (or negative when dir cannot be read). Call at start, before serving. */
int store_cleanup(const char *dir);

/* A new temporary directory in dir. NULL + err on failure. */
store_upload *store_upload_begin(const char *dir, lr_error *err);

/* Appends n bytes to one of the two files (STORE_CONFIG / STORE_WEIGHTS). 0, or negative +
 * err (disk full, ...). */
int store_upload_write(store_upload *u, int file, const void *data, size_t n, lr_error *err);

/* Bytes written to a file so far (0 if never written). */
size_t store_upload_size(const store_upload *u, int file);

/* The temporary directory (for validating the files before they are published). */
const char *store_upload_dir(const store_upload *u);

/* The content hash of what was written (both files). */
uint64_t store_upload_version(const store_upload *u);

/* Makes the upload the adapter `name`: fsyncs the files and the temporary directory,
 * renames it into place and fsyncs the store. If name exists: LR_EEXIST unless replace,
 * in which case the old directory is swapped out atomically and removed. Frees u in every
 * case (on error the temporary directory is removed). */
int store_upload_commit(store_upload *u, const char *name, int replace, lr_error *err);

/* Removes the temporary directory and frees u. Accepts NULL. */
void store_upload_abort(store_upload *u);

/* Removes adapter `name` from dir: LR_ENOTFOUND if there is none. */
int store_remove(const char *dir, const char *name, lr_error *err);

/* Copies the two files of the adapter in src_dir into dir as `name`, durably (an upload
 * from a path on the server). Errors as store_upload_commit. *version gets the hash. */
int store_copy_in(const char *dir, const char *src_dir, const char *name, int replace,
                  uint64_t *version, lr_error *err);

/* The content hash of the adapter in dir/name (both files read once); 0 if unreadable. */
uint64_t store_version(const char *dir, const char *name);

#endif
