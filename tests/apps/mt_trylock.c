/*
 * mt_trylock.c - trylock and timedlock loops under contention; recursive
 * and error-checking mutexes.
 *
 * Provokes: pthread_mutex_trylock (EBUSY) and pthread_mutex_timedlock /
 * pthread_mutex_clocklock with 50 us timeouts (ETIMEDOUT) in loops, on a
 * mutex the holders keep for a while; a PTHREAD_MUTEX_RECURSIVE mutex
 * taken 1-3 deep (lock and trylock); a PTHREAD_MUTEX_ERRORCHECK mutex
 * (relock: EDEADLK, unlock by a non-owner or unlocked: EPERM).
 *
 * -t threads (default 4) until -d ms (default 3000) have passed. Operation
 * I of thread T is chosen by T's I-th draw (seed in the header):
 *   0 lock, 1 trylock loop, 2 timedlock loop (CLOCK_REALTIME), 3 clocklock
 *     loop (CLOCK_MONOTONIC), on mutex M; under it counter C1 is bumped:
 *         m T I C1 HOW FAILS
 *   4 the recursive mutex, DEPTH = 1..3 acquisitions (first lock, then
 *     trylock, which must succeed for the owner), C2 bumped at each:
 *         r T I C2 DEPTH
 *   5 the error-checking mutex: lock, relock -> EDEADLK, trylock -> EBUSY,
 *     unlock, unlock again -> EPERM, unlock of one main holds -> EPERM; C3
 *     bumped under it:
 *         e T I C3
 * A thread still trying when the time is up gives up: "x T I FAILS".
 * End line: "end m C1 r C2 e C3 fails F".
 * Self-check (exit 2): the error codes above; the counters match the
 * number of operations.
 */
#include "mt_common.h"

#define MAX_THREADS 64

static struct mt_opts opt = {.duration_ms = 3000, .threads = 4, .work = 20000, .extra = 0,
                              .rest_us = 200};
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t rec, errchk, mains; /* recursive, error-checking, error-checking */
static long c1, c2, c3, fails; /* c1 under m, c2 under rec, c3 under errchk; fails under mt_out */
static long ops[6];           /* under mt_out */
static uint64_t seeds[MAX_THREADS];

static int take_m(int how, long *nfail)
{
    for (;;) {
        int r;
        struct timespec ts;
        switch (how) {
        case 0:
            r = pthread_mutex_lock(&m);
            break;
        case 1:
            r = pthread_mutex_trylock(&m);
            break;
        case 2:
            ts = mt_abs_in_us(CLOCK_REALTIME, 50);
            r = pthread_mutex_timedlock(&m, &ts);
            break;
        default:
            ts = mt_abs_in_us(CLOCK_MONOTONIC, 50);
            r = pthread_mutex_clocklock(&m, CLOCK_MONOTONIC, &ts);
            break;
        }
        if (r == 0)
            return 0;
        if (r != EBUSY && r != ETIMEDOUT)
            mt_die("pthread_mutex_*lock", r);
        ++*nfail;
        if (how == 1) { /* back off a little: spin, then sleep */
            mt_spin(opt.work / 50);
            mt_sleep_us(20);
        }
        if (mt_time_up())
            return -1;
    }
}

static void expect(int got, int want, const char *what)
{
    if (got != want)
        mt_broken("%s returned %d (%s), expected %d (%s)", what, got, strerror(got), want,
                  strerror(want));
}

static void *thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t s = seeds[t];
    for (long i = 0; !mt_time_up(); i++) {
        uint64_t d = mt_rand(&s);
        int how = (int)(d % 6);
        long nfail = 0;
        if (how <= 3) {
            if (take_m(how, &nfail) != 0) {
                MT_CHECK(pthread_mutex_lock(mt_out_lock()));
                fails += nfail;
                printf("x %d %ld %ld\n", t, i, nfail);
                MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
                break;
            }
            long v = ++c1;
            MT_CHECK(pthread_mutex_lock(mt_out_lock()));
            fails += nfail;
            ops[how]++;
            printf("m %d %ld %ld %d %ld\n", t, i, v, how, nfail);
            MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
            /* hold it: the others' try/timed loops fail */
            if ((d >> 12) % 4 == 0)
                mt_rest(&opt);
            else
                mt_spin(opt.work / 4);
            MT_CHECK(pthread_mutex_unlock(&m));
        } else if (how == 4) {
            int depth = 1 + (int)((d >> 8) % 3);
            for (int k = 0; k < depth; k++) {
                if (k == 0)
                    MT_CHECK(pthread_mutex_lock(&rec));
                else
                    expect(pthread_mutex_trylock(&rec), 0, "trylock of an owned recursive mutex");
                long v = ++c2;
                MT_CHECK(pthread_mutex_lock(mt_out_lock()));
                ops[4]++;
                printf("r %d %ld %ld %d\n", t, i, v, k + 1);
                MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
                mt_spin(opt.work / 20);
            }
            for (int k = 0; k < depth; k++)
                MT_CHECK(pthread_mutex_unlock(&rec));
        } else {
            MT_CHECK(pthread_mutex_lock(&errchk));
            expect(pthread_mutex_lock(&errchk), EDEADLK, "relock of an error-checking mutex");
            expect(pthread_mutex_trylock(&errchk), EBUSY, "trylock of an owned error-checking mutex");
            long v = ++c3;
            MT_CHECK(pthread_mutex_lock(mt_out_lock()));
            ops[5]++;
            printf("e %d %ld %ld\n", t, i, v);
            MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
            mt_spin(opt.work / 20);
            MT_CHECK(pthread_mutex_unlock(&errchk));
            expect(pthread_mutex_unlock(&errchk), EPERM, "unlock of an unlocked error-checking mutex");
            expect(pthread_mutex_unlock(&mains), EPERM, "unlock of another thread's mutex");
        }
        mt_spin(opt.work);
        if ((d >> 16) & 1)
            mt_rest(&opt);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "");
    if (opt.threads < 1 || opt.threads > MAX_THREADS)
        mt_usage(argv[0], "at most 64 threads");
    pthread_mutexattr_t a;
    MT_CHECK(pthread_mutexattr_init(&a));
    MT_CHECK(pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE));
    MT_CHECK(pthread_mutex_init(&rec, &a));
    MT_CHECK(pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK));
    MT_CHECK(pthread_mutex_init(&errchk, &a));
    MT_CHECK(pthread_mutex_init(&mains, &a));
    MT_CHECK(pthread_mutex_lock(&mains)); /* held by main: a thread's unlock gets EPERM */
    MT_CHECK(pthread_mutexattr_destroy(&a));
    printf("mt_trylock threads %d\n", opt.threads);
    for (int t = 0; t < opt.threads; t++) {
        seeds[t] = mt_seed();
        printf("seed %d %016llx\n", t, (unsigned long long)seeds[t]);
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    pthread_t th[MAX_THREADS];
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_create(&th[t], NULL, thread, (void *)(intptr_t)t));
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_join(th[t], NULL));
    long rops = ops[4], mops = ops[0] + ops[1] + ops[2] + ops[3];
    MT_CHECK(pthread_mutex_unlock(&mains));
    if (c1 != mops || c2 != rops || c3 != ops[5])
        mt_broken("counters %ld %ld %ld, operations %ld %ld %ld", c1, c2, c3, mops, rops, ops[5]);
    printf("end m %ld r %ld e %ld fails %ld\n", c1, c2, c3, fails);
    return 0;
}
