/*
 * start_clock.c - output that depends on what a library read from the
 * clocks before understudy's shim attached (start_clock_lib.c).
 *
 * Under understudy every replica must have read the same start times: the
 * backup writes the same line as the primary (no divergence). The second
 * line is a time read after the shim attached (replicated as usual), which
 * must not be earlier than the start.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

void start_clocks(uint64_t out[3]);

int main(void)
{
    uint64_t c[3];
    start_clocks(c);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    char line[160];
    int n = snprintf(line, sizeof(line), "start %" PRIu64 " %" PRIu64 " %" PRIu64 "\nlater %s\n",
                     c[0], c[1], c[2], now >= c[0] ? "yes" : "no");
    return write(1, line, (size_t)n) == n ? 0 : 1;
}
