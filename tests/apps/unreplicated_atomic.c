/*
 * unreplicated_atomic.c - two threads that synchronise through an atomic
 * flag alone, where the outcome is timing.
 *
 * The main thread reads the clock until its worker, after a fixed amount of
 * busy work, sets a flag; then it prints how many reads that took. Nothing
 * understudy sees orders the store against the reads, so a backup, whose
 * reads come from the log at another pace, stops reading after another
 * number of them: at the first call that differs from the primary's log it
 * must report a divergence naming the thread and the call, and retire,
 * while the primary finishes normally (exit 0).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static atomic_int flag;

static void *worker(void *arg)
{
    (void)arg;
    volatile unsigned long x = 1;
    for (unsigned long i = 0; i < 30000000; i++)
        x = x * 6364136223846793005ul + 1;
    atomic_store(&flag, 1);
    return NULL;
}

int main(void)
{
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0)
        return 1;
    unsigned long polls = 0;
    while (!atomic_load(&flag)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        for (volatile int i = 0; i < 200; i++)
            ;
        polls++;
    }
    pthread_join(th, NULL);
    char line[64];
    int n = snprintf(line, sizeof(line), "polls %lu\n", polls);
    return write(1, line, (size_t)n) == n ? 0 : 1;
}
