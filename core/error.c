/* lr_error helpers. */
#include "error.h"

#include <stdio.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (1 to 4), 0 if it is invalid or cut off. */
static size_t utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    size_t k;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 1;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 2;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 3;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i <= k; i++) {
        if ((s[i] & 0xc0) != 0x80)   /* also stops at the NUL */
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k + 1;
}

void lr_text_tidy(char *s)
{
    unsigned char *u = (unsigned char *)s;
    while (*u) {
        size_t k = utf8_seq(u);
        if (k == 0)
            *u++ = '?';
        else if (k == 1 && (*u < 0x20 || *u == 0x7f))
            *u++ = ' ';
        else
            u += k;
    }
}

int lr_error_set(lr_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        lr_text_tidy(err->msg);
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
    lr_text_tidy(err->msg);
}
