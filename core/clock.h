/* clock: seconds on the monotonic clock, for durations (profiles, paced merges, the
 * engine's step time). */
#ifndef LORAD_CLOCK_H
#define LORAD_CLOCK_H

#include <time.h>

static inline double clock_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#endif
