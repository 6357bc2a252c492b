/*
 * mt_prodcons.c - producers and consumers on a bounded FIFO under one mutex
 * and two condition variables.
 *
 * Provokes: pthread_cond_wait (producers, buffer full), pthread_cond_timedwait
 * on a CLOCK_MONOTONIC condition variable with a 1 ms timeout (consumers,
 * buffer empty: whether a wait times out depends on the schedule),
 * pthread_cond_signal and pthread_cond_broadcast on both conditions.
 *
 * -t producers (default 2) push items until -d ms (default 3000) have
 * passed; -n consumers (default 3) pop them; the FIFO holds 4 items. Item K
 * of producer P has the value of P's K-th draw (seed in the header); its
 * work before the push is random, in bursts, so the buffer is full at times
 * and empty at others. Under the mutex:
 *
 *     p P K VALUE COUNT        pushed; COUNT = items in the FIFO after it
 *     g C P K COUNT            consumer C popped item K of P
 *     w C                      consumer C's timed wait timed out
 *     f P                      producer P waited for room
 *     q P N                    producer P is done after N items
 *
 * Every 8th push wakes the consumers with a broadcast instead of a signal;
 * the last producer to finish broadcasts, and consumers leave when the
 * FIFO is empty and every producer is done. End line:
 *
 *     end produced N consumed N timeouts T fullwaits F
 *
 * Self-check (exit 2): each producer's items are consumed in its order,
 * exactly once; the FIFO is empty at the end.
 */
#include "mt_common.h"

#define CAP 4
#define MAX_THREADS 32

struct item {
    int producer;
    long k;
    uint64_t value;
};

static struct mt_opts opt = {.duration_ms = 3000, .threads = 2, .work = 20000, .extra = 3,
                              .rest_us = 200};
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty; /* CLOCK_MONOTONIC, set up in main */
static struct item fifo[CAP];
static int head, count;
static int producers_done;
static long produced, consumed, timeouts, fullwaits;
static long next_k[MAX_THREADS]; /* per producer: next item a consumer must see */
static uint64_t seeds[MAX_THREADS];

static void *producer(void *arg)
{
    int p = (int)(intptr_t)arg;
    uint64_t s = seeds[p];
    long k = 0;
    for (;; k++) {
        if (mt_time_up())
            break;
        uint64_t v = mt_rand(&s);
        /* bursts: mostly quick, sometimes a pause longer than the
         * consumers' 1 ms timed waits */
        mt_spin(opt.work / 4);
        if ((v & 31) == 0)
            mt_sleep_us(2000);
        else if ((v & 7) == 0)
            mt_rest(&opt);
        MT_CHECK(pthread_mutex_lock(&lock));
        if (count == CAP) {
            fullwaits++;
            printf("f %d\n", p);
            while (count == CAP)
                MT_CHECK(pthread_cond_wait(&not_full, &lock));
        }
        fifo[(head + count) % CAP] = (struct item){p, k, v};
        count++;
        produced++;
        printf("p %d %ld %016llx %d\n", p, k, (unsigned long long)v, count);
        if (k % 8 == 7)
            MT_CHECK(pthread_cond_broadcast(&not_empty));
        else
            MT_CHECK(pthread_cond_signal(&not_empty));
        MT_CHECK(pthread_mutex_unlock(&lock));
    }
    MT_CHECK(pthread_mutex_lock(&lock));
    printf("q %d %ld\n", p, k);
    if (++producers_done == opt.threads)
        MT_CHECK(pthread_cond_broadcast(&not_empty));
    MT_CHECK(pthread_mutex_unlock(&lock));
    return NULL;
}

static void *consumer(void *arg)
{
    int c = (int)(intptr_t)arg;
    uint64_t sum = 0;
    for (;;) {
        MT_CHECK(pthread_mutex_lock(&lock));
        while (count == 0 && producers_done < opt.threads) {
            struct timespec ts = mt_abs_in_us(CLOCK_MONOTONIC, 1000);
            int r = pthread_cond_timedwait(&not_empty, &lock, &ts);
            if (r == ETIMEDOUT) {
                timeouts++;
                printf("w %d\n", c);
            } else if (r != 0) {
                mt_die("pthread_cond_timedwait", r);
            }
        }
        if (count == 0) {
            MT_CHECK(pthread_mutex_unlock(&lock));
            break;
        }
        struct item it = fifo[head];
        head = (head + 1) % CAP;
        count--;
        consumed++;
        if (it.k != next_k[it.producer])
            mt_broken("consumer %d got item %ld of producer %d, expected %ld", c, it.k,
                      it.producer, next_k[it.producer]);
        next_k[it.producer]++;
        printf("g %d %d %ld %d\n", c, it.producer, it.k, count);
        if (count == CAP - 1 && (it.k & 1))
            MT_CHECK(pthread_cond_broadcast(&not_full));
        else
            MT_CHECK(pthread_cond_signal(&not_full));
        MT_CHECK(pthread_mutex_unlock(&lock));
        sum += it.value;
        mt_spin(opt.work / 8 + (long)(it.value % (uint64_t)(opt.work / 2 + 1)));
        if ((it.value & 3) == 0)
            mt_rest(&opt);
    }
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-t PRODUCERS (default 2) -n CONSUMERS (default 3)");
    if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.extra < 1 || opt.extra > MAX_THREADS)
        mt_usage(argv[0], "at most 32 producers and 32 consumers");
    pthread_condattr_t ca;
    MT_CHECK(pthread_condattr_init(&ca));
    MT_CHECK(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC));
    MT_CHECK(pthread_cond_init(&not_empty, &ca));
    MT_CHECK(pthread_condattr_destroy(&ca));

    printf("mt_prodcons producers %d consumers %d capacity %d\n", opt.threads, opt.extra, CAP);
    for (int p = 0; p < opt.threads; p++) {
        seeds[p] = mt_seed();
        printf("seed %d %016llx\n", p, (unsigned long long)seeds[p]);
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    pthread_t pt[MAX_THREADS], ct[MAX_THREADS];
    for (int c = 0; c < opt.extra; c++)
        MT_CHECK(pthread_create(&ct[c], NULL, consumer, (void *)(intptr_t)c));
    for (int p = 0; p < opt.threads; p++)
        MT_CHECK(pthread_create(&pt[p], NULL, producer, (void *)(intptr_t)p));
    for (int p = 0; p < opt.threads; p++)
        MT_CHECK(pthread_join(pt[p], NULL));
    for (int c = 0; c < opt.extra; c++)
        MT_CHECK(pthread_join(ct[c], NULL));
    if (count != 0 || produced != consumed)
        mt_broken("produced %ld, consumed %ld, %d left in the FIFO", produced, consumed, count);
    printf("end produced %ld consumed %ld timeouts %ld fullwaits %ld\n", produced, consumed,
           timeouts, fullwaits);
    return 0;
}
