/* watch: follows the adapter directory with inotify, on a thread of its own, and calls
 * back once the directory has stopped changing for a moment — so an adapter copied in
 * file by file, or moved in, is picked up once, whole (and one removed disappears). The
 * callback (the daemon: registry_rescan) runs on the watcher's thread.
 *
 * Threads: watch_start / watch_stop belong to the owner; watch_poke is thread-safe. */
#ifndef LORAD_WATCH_H
#define LORAD_WATCH_H

#include "core/error.h"

typedef struct watch watch;

/* Starts watching dir (and its subdirectories, so writes into an adapter's files are
 * seen). quiet_ms: how long nothing may change before fn runs. NULL + err when inotify is
 * unavailable. */
watch *watch_start(const char *dir, int quiet_ms, void (*fn)(void *user), void *user,
                   lr_error *err);

/* Makes the watcher call fn soon, as if something changed (SIGHUP). Thread-safe. */
void watch_poke(watch *w);

/* Stops the thread and frees everything. Accepts NULL. */
void watch_stop(watch *w);

#endif
