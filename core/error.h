/* lr_error: the caller-owned error record every fallible lorad function fills.
 * Functions return 0 / a pointer on success and a negative value / NULL on error. */
#ifndef LORAD_ERROR_H
#define LORAD_ERROR_H

#include <stdarg.h>

enum {
    LR_OK = 0,
    LR_EINVAL = -1,   /* bad input: file, request, argument */
    LR_EIO = -2,      /* the operating system said no (open, mmap, write) */
    LR_ENOMEM = -3,   /* allocation failed */
    LR_ENOTSUP = -4,  /* valid but not supported by lorad (names what is supported) */
    LR_ENOTFOUND = -5, /* a named thing does not exist */
    LR_EBUSY = -6,     /* valid, but no capacity now (queue full); try again later */
    LR_EEXIST = -7,    /* a named thing exists already */
    LR_ENOSPC = -8     /* the disk (or quota) is full */
};

typedef struct {
    int code;       /* one of the LR_E* values, 0 when no error */
    char msg[256];  /* one line, names the object and suggests the cause */
} lr_error;

/* Fills err (if not NULL) with code and a printf-formatted message; returns code so
 * callers can write `return lr_error_set(err, LR_EINVAL, "...")`. */
int lr_error_set(lr_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an already set message (used to add a file or adapter name). */
void lr_error_prefix(lr_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Makes s (NUL-terminated) one line of valid UTF-8, in place: control characters become
 * spaces, bytes of an invalid or cut-off UTF-8 sequence become '?'. lr_error_set and
 * lr_error_prefix apply it to every message, which may quote file contents or a request
 * (so messages stay one log line, and JSON can carry them). */
void lr_text_tidy(char *s);

#endif
