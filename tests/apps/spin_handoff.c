/*
 * spin_handoff.c - two threads that hand a token back and forth by
 * busy-waiting on an atomic (Redis's io-threads do it so), or, with
 * --block, through a mutex and a condition variable.
 *
 * Usage: spin_handoff [--block] ROUNDS. After every 100 hand-overs the main
 * thread writes a line "handoffs N"; the output is the same whatever the
 * interleaving. Run under understudy, a backup on one CPU replays the
 * spinning version slowly until the supervisor slices its CPU (it says so
 * on stderr); the blocking version must not be sliced.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long turn; /* even: main's, odd: the worker's */
static long rounds;
static int block;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

/* Waits until turn has parity `mine`, then passes it on; 0 once turn
 * reached 2 * rounds. */
static int take_turn(long mine)
{
    if (block) {
        pthread_mutex_lock(&lock);
        while (turn % 2 != mine && turn < 2 * rounds)
            pthread_cond_wait(&changed, &lock);
        int more = turn < 2 * rounds;
        if (more)
            turn++;
        pthread_cond_signal(&changed);
        pthread_mutex_unlock(&lock);
        return more;
    }
    long t;
    while ((t = atomic_load(&turn)) % 2 != mine && t < 2 * rounds)
        ;
    if (t >= 2 * rounds)
        return 0;
    atomic_store(&turn, t + 1);
    return 1;
}

static void *worker(void *arg)
{
    (void)arg;
    while (take_turn(1))
        ;
    return NULL;
}

int main(int argc, char **argv)
{
    int a = 1;
    if (a < argc && strcmp(argv[a], "--block") == 0) {
        block = 1;
        a++;
    }
    if (a >= argc || (rounds = atol(argv[a])) <= 0) {
        fprintf(stderr, "usage: spin_handoff [--block] ROUNDS\n");
        return 2;
    }
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0)
        return 1;
    for (long n = 1; take_turn(0); n++) {
        if (n % 100)
            continue;
        char line[48];
        int len = snprintf(line, sizeof(line), "handoffs %ld\n", n);
        if (write(1, line, (size_t)len) != len)
            return 1;
    }
    pthread_join(th, NULL);
    return 0;
}
