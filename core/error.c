/* lr_error helpers. */
#include "error.h"

#include <stdio.h>
#include <string.h>

int lr_error_set(lr_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void lr_error_prefix(lr_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char prefix[sizeof err->msg];
    char old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* prefix + ": " + old, cut to fit (explicit copies: the message is a fixed buffer) */
    size_t cap = sizeof err->msg - 1, n = strnlen(prefix, cap);
    memcpy(err->msg, prefix, n);
    for (const char *s = ": "; *s && n < cap; s++)
        err->msg[n++] = *s;
    size_t m = strnlen(old, sizeof old - 1);
    if (m > cap - n)
        m = cap - n;
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = '\0';
}
