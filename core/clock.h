/* clock: seconds on the monotonic clock, for durations (profiles, paced merges, the
 * engine's step time), and the pause that paces work to a share of a core. */
#ifndef LORAD_CLOCK_H
#define LORAD_CLOCK_H

#include <time.h>

static inline double clock_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* For work paced to duty (0 < duty < 1) of a core: after a piece of work that began at
 * since (clock_seconds), sleeps in proportion to it — busy for t, then idle
 * t·(1 − duty)/duty, on average a core's duty — and returns the seconds it slept. */
static inline double clock_pace(double since, double duty)
{
    double idle = (clock_seconds() - since) * (1.0 - duty) / duty;
    struct timespec ts = {(time_t)idle, (long)((idle - (double)(time_t)idle) * 1e9)};
    nanosleep(&ts, NULL);
    return idle;
}

#endif
