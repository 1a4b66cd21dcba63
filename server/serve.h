/* serve: `lorad serve` from start to exit — loads the model, tokenizer, chat template and
 * API key, starts the registry's loader, the engine thread and the HTTP server, waits for
 * SIGTERM / SIGINT, then drains: stops accepting, lets running requests finish for
 * --drain-seconds, cancels the rest, and frees everything.
 *
 * Under systemd (libsystemd; each is a no-op without it): serves on a socket passed by
 * socket activation (sd_listen_fds) instead of binding --host/--port; tells the manager
 * STATUS= while loading, READY=1 once the socket serves, RELOADING=1 / READY=1 around a
 * SIGHUP rescan, STOPPING=1 on SIGTERM; and when the watchdog is on (WATCHDOG_USEC), the
 * engine thread's own loop sends WATCHDOG=1 at half the interval. */
#ifndef LORAD_SERVE_H
#define LORAD_SERVE_H

#include "server/app.h"

/* The defaults `lorad serve --help` and the README list. */
serve_options serve_options_default(void);

/* Runs the daemon; returns the process exit status (0 after a clean shutdown, 1 when it
 * could not start; the reason is logged). Call once, from the main thread (it installs
 * the SIGTERM / SIGINT / SIGHUP handlers). */
int serve_run(const serve_options *o);

#endif
