/*
 * start_clock_lib.c - a library that reads the clocks in its constructor, as
 * jemalloc does (it starts its purge clock when it initialises): this runs
 * before understudy's shim attaches, when nothing can be logged yet.
 */
#include <stdint.h>
#include <sys/time.h>
#include <time.h>

static uint64_t mono_ns, real_us, coarse_s;

__attribute__((constructor)) static void read_clocks(void)
{
    struct timespec ts;
    struct timeval tv;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    mono_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    gettimeofday(&tv, NULL);
    real_us = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    coarse_s = (uint64_t)time(NULL);
}

void start_clocks(uint64_t out[3])
{
    out[0] = mono_ns;
    out[1] = real_us;
    out[2] = coarse_s;
}
