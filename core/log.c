/* log_write: one line per call, prefixed with the level, written with a single fputs so
 * lines from different threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

int log_level = LOG_LEVEL_WARN;

void log_write(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[1024];
    int n = snprintf(line, sizeof line, "lorad %s: ", names[level & 3]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = 0;
    while (line[len])
        len++;
    if (len == 0 || line[len - 1] != '\n') {
        line[len] = '\n';
        line[len + 1] = '\0';
    }
    fputs(line, stderr);
}
