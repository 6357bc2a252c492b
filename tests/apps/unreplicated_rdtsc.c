/*
 * unreplicated_rdtsc.c - output that depends on something understudy does
 * not replicate (the CPU's time-stamp counter, read without a syscall).
 *
 * Under understudy the backup computes other bytes than the primary wrote:
 * it must report a divergence and retire, while the primary finishes
 * normally (exit 0).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <x86intrin.h>

int main(void)
{
    for (int i = 0; i < 5; i++) {
        char line[64];
        int n = snprintf(line, sizeof(line), "tsc %llu\n", (unsigned long long)__rdtsc());
        if (write(1, line, (size_t)n) != n)
            return 1;
    }
    return 0;
}
