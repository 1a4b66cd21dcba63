/* faultshim: an LD_PRELOAD library for tests/test_faults.py that makes the disk fail under
 * a running daemon. It wraps write(), fsync() and fdatasync(); for a file descriptor of a
 * regular file whose path contains "/.tmp-" (an upload being written into the adapter
 * store) it reads the control file named by $LORAD_FAULT_CTL and, if that holds
 * "write ENOSPC", "write EIO", "fsync ENOSPC" or "fsync EIO", fails the call with that
 * errno (a write at or past FAULT_AFTER bytes of the file, so the failure comes
 * mid-stream; a write across it is cut short there first).
 * Everything else passes through untouched. Built without sanitizers (see Makefile). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FAULT_AFTER 8192

/* The fault the control file asks for on `call` ("write" or "fsync"): an errno, or 0. */
static int wanted(int fd, const char *call)
{
    const char *ctl = getenv("LORAD_FAULT_CTL");
    struct stat st;
    if (!ctl || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    if (!strstr(path, "/.tmp-"))
        return 0;
    int cfd = open(ctl, O_RDONLY | O_CLOEXEC);
    if (cfd < 0)
        return 0;
    char buf[64] = {0};
    ssize_t got = pread(cfd, buf, sizeof buf - 1, 0);
    close(cfd);
    if (got <= 0)
        return 0;
    char want_call[16], err[16];
    if (sscanf(buf, "%15s %15s", want_call, err) != 2 || strcmp(want_call, call) != 0)
        return 0;
    if (strcmp(err, "ENOSPC") == 0)
        return ENOSPC;
    if (strcmp(err, "EIO") == 0)
        return EIO;
    return 0;
}

ssize_t write(int fd, const void *buf, size_t count)
{
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    int e = wanted(fd, "write");
    off_t pos = e ? lseek(fd, 0, SEEK_CUR) : 0;
    if (e && pos >= FAULT_AFTER) {
        errno = e;
        return -1;
    }
    /* a write across the limit is cut short there, as a filling disk cuts it: the caller
     * must come back for the rest, and that write fails (whatever size its chunks are) */
    if (e && pos >= 0 && (size_t)(FAULT_AFTER - pos) < count)
        count = (size_t)(FAULT_AFTER - pos);
    return real(fd, buf, count);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int e = wanted(fd, "fsync");
    if (e) {
        errno = e;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int e = wanted(fd, "fsync");
    if (e) {
        errno = e;
        return -1;
    }
    return real(fd);
}
