/* watch: one inotify instance, a watch on the directory and one per subdirectory, and a
 * pipe to wake the thread (poke, stop). */
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "core/log.h"

#define DIR_EVENTS (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | \
                    IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

struct watch {
    char dir[4096];
    int fd;             /* inotify */
    int wake[2];        /* pipe: a byte = poke, close of [1] = stop */
    int quiet_ms;
    void (*fn)(void *user);
    void *user;
    pthread_t thread;
    int started;
};

/* (Re)adds a watch on every subdirectory; inotify ignores duplicates. */
static void watch_subdirs(watch *w)
{
    DIR *d = opendir(w->dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char p[4096 + 512];
        snprintf(p, sizeof p, "%s/%s", w->dir, de->d_name);
        inotify_add_watch(w->fd, p, DIR_EVENTS | IN_ONLYDIR);
    }
    closedir(d);
}

/* Drains pending events; returns 1 if there were any. */
static int drain(int fd)
{
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int any = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            return any;
        any = 1;
    }
}

static void *watch_main(void *arg)
{
    watch *w = arg;
    int dirty = 0;
    for (;;) {
        struct pollfd pf[2] = {{.fd = w->fd, .events = POLLIN}, {.fd = w->wake[0],
                                                                  .events = POLLIN}};
        /* While something changed recently, wait for a quiet period before the callback. */
        int rc = poll(pf, 2, dirty ? w->quiet_ms : -1);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc == 0) {
            watch_subdirs(w);
            w->fn(w->user);
            dirty = 0;
            continue;
        }
        if (pf[1].revents) {
            char c;
            ssize_t n = read(w->wake[0], &c, 1);
            if (n == 0)
                break;   /* stop */
            dirty = 1;
        }
        if (pf[0].revents && drain(w->fd))
            dirty = 1;
    }
    return NULL;
}

watch *watch_start(const char *dir, int quiet_ms, void (*fn)(void *user), void *user,
                   lr_error *err)
{
    watch *w = calloc(1, sizeof *w);
    if (!w) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    w->quiet_ms = quiet_ms;
    w->fn = fn;
    w->user = user;
    w->wake[0] = w->wake[1] = -1;
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0 || pipe2(w->wake, O_CLOEXEC) != 0 ||
        inotify_add_watch(w->fd, dir, DIR_EVENTS | IN_ONLYDIR) < 0) {
        lr_error_set(err, LR_EIO, "cannot watch %s: %s", dir, strerror(errno));
        goto fail;
    }
    watch_subdirs(w);
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        lr_error_set(err, LR_ENOMEM, "cannot start the directory watcher");
        goto fail;
    }
    w->started = 1;
    return w;
fail:
    watch_stop(w);
    return NULL;
}

void watch_poke(watch *w)
{
    char c = 1;
    if (w && write(w->wake[1], &c, 1) < 0)
        log_warn("watch: cannot wake the watcher: %s", strerror(errno));
}

void watch_stop(watch *w)
{
    if (!w)
        return;
    if (w->wake[1] >= 0) {
        close(w->wake[1]);
        w->wake[1] = -1;
    }
    if (w->started)
        pthread_join(w->thread, NULL);
    if (w->wake[0] >= 0)
        close(w->wake[0]);
    if (w->fd >= 0)
        close(w->fd);
    free(w);
}
