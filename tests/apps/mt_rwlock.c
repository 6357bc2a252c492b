/*
 * mt_rwlock.c - readers checking a table that writers rewrite, under a
 * pthread rwlock.
 *
 * Provokes: pthread_rwlock_rdlock / tryrdlock / timedrdlock / clockrdlock
 * and wrlock / trywrlock / timedwrlock / clockwrlock, contended; readers
 * holding the lock together.
 *
 * A table of 16 slots holds one version V: slot i = V * 1000 + i. A writer
 * bumps V and rewrites the slots one by one with busy work in between, so
 * a reader that got in during a write would see a torn table. -t readers
 * (default 4) and -n writers (default 2) work until -d ms (default 3000)
 * have passed; operation I of thread T picks how it takes the lock from
 * T's stream (seed in the header; writers are threads -t..-t+n-1):
 * 0 blocking, 1 try in a loop, 2 timed (CLOCK_REALTIME, 100 us) in a loop,
 * 3 pthread_rwlock_clock*lock (CLOCK_MONOTONIC, 100 us) in a loop. While
 * still holding the lock each prints (under the journal mutex):
 *
 *     r T I V HOW FAILS          reader T saw version V
 *     w T I V HOW FAILS          writer T wrote version V
 *
 * FAILS = busy / timed-out attempts before it got the lock. A thread still
 * trying when the time is up gives up and prints "x T I FAILS". The end
 * line gives the number of reads, writes and failed attempts.
 * Self-check (exit 2): a reader never sees a torn table or a version other
 * than the writers' last; versions written are 1, 2, 3...
 */
#include "mt_common.h"

#define SLOTS 16
#define MAX_THREADS 64

static struct mt_opts opt = {.duration_ms = 3000, .threads = 4, .work = 20000, .extra = 2,
                              .rest_us = 200};
static pthread_rwlock_t lock;
static long table[SLOTS];
static long version; /* under the write lock */
static long reads, writes, fails; /* under the journal mutex */
static uint64_t seeds[MAX_THREADS];

static int take(int write, int how, long *nfail)
{
    for (;;) {
        int r;
        struct timespec ts;
        switch (how) {
        case 0:
            r = write ? pthread_rwlock_wrlock(&lock) : pthread_rwlock_rdlock(&lock);
            break;
        case 1:
            r = write ? pthread_rwlock_trywrlock(&lock) : pthread_rwlock_tryrdlock(&lock);
            break;
        case 2:
            ts = mt_abs_in_us(CLOCK_REALTIME, 100);
            r = write ? pthread_rwlock_timedwrlock(&lock, &ts)
                      : pthread_rwlock_timedrdlock(&lock, &ts);
            break;
        default:
            ts = mt_abs_in_us(CLOCK_MONOTONIC, 100);
            r = write ? pthread_rwlock_clockwrlock(&lock, CLOCK_MONOTONIC, &ts)
                      : pthread_rwlock_clockrdlock(&lock, CLOCK_MONOTONIC, &ts);
            break;
        }
        if (r == 0)
            return 0;
        if (r != EBUSY && r != ETIMEDOUT)
            mt_die("pthread_rwlock_*lock", r);
        ++*nfail;
        if (how == 1) { /* back off a little: spin, then sleep */
            mt_spin(opt.work / 20);
            mt_sleep_us(20);
        }
        if (mt_time_up())
            return -1; /* gave up: the run is over */
    }
}

static void *thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    int write = t >= opt.threads;
    uint64_t s = seeds[t];
    for (long i = 0; !mt_time_up(); i++) {
        int how = (int)(mt_rand(&s) % 4);
        long nfail = 0;
        if (take(write, how, &nfail) != 0) {
            MT_CHECK(pthread_mutex_lock(mt_out_lock()));
            fails += nfail;
            printf("x %d %ld %ld\n", t, i, nfail);
            MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
            break;
        }
        long v;
        if (write) {
            v = ++version;
            for (int k = 0; k < SLOTS; k++) {
                table[k] = v * 1000 + k;
                mt_spin(opt.work / 40);
                if (k == SLOTS / 2 && (v & 3) == 0)
                    mt_rest(&opt); /* a slow write: the readers' try/timed loops fail */
            }
        } else {
            v = table[0] / 1000;
            for (int k = 0; k < SLOTS; k++)
                if (table[k] != v * 1000 + k)
                    mt_broken("reader %d saw slot %d = %ld in version %ld", t, k, table[k], v);
            if (v != version)
                mt_broken("reader %d saw version %ld, the last written is %ld", t, v, version);
            mt_spin(opt.work / 10);
            if ((i & 7) == 0)
                mt_rest(&opt); /* a slow read: the writers' loops fail */
        }
        MT_CHECK(pthread_mutex_lock(mt_out_lock()));
        if (write)
            writes++;
        else
            reads++;
        fails += nfail;
        printf("%c %d %ld %ld %d %ld\n", write ? 'w' : 'r', t, i, v, how, nfail);
        MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
        MT_CHECK(pthread_rwlock_unlock(&lock));
        mt_spin(write ? opt.work : opt.work / 2);
        mt_rest(&opt);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-t READERS (default 4) -n WRITERS (default 2)");
    int n = opt.threads + opt.extra;
    if (n > MAX_THREADS || opt.threads < 1 || opt.extra < 1)
        mt_usage(argv[0], "1.. writers, at most 64 threads in all");
    MT_CHECK(pthread_rwlock_init(&lock, NULL));
    for (int k = 0; k < SLOTS; k++)
        table[k] = k;
    printf("mt_rwlock readers %d writers %d slots %d\n", opt.threads, opt.extra, SLOTS);
    for (int t = 0; t < n; t++) {
        seeds[t] = mt_seed();
        printf("seed %d %016llx\n", t, (unsigned long long)seeds[t]);
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    pthread_t th[MAX_THREADS];
    for (int t = 0; t < n; t++)
        MT_CHECK(pthread_create(&th[t], NULL, thread, (void *)(intptr_t)t));
    for (int t = 0; t < n; t++)
        MT_CHECK(pthread_join(th[t], NULL));
    if (writes != version)
        mt_broken("%ld writes, version %ld", writes, version);
    printf("end reads %ld writes %ld fails %ld\n", reads, writes, fails);
    return 0;
}
