/*
 * mt_sem.c - a counting semaphore guarding a pool of resources, whose free
 * list is under a spinlock; a pair of threads handing a token back and
 * forth through two semaphores.
 *
 * Provokes: sem_wait, sem_trywait (EAGAIN loops), sem_timedwait (100 us,
 * ETIMEDOUT loops), sem_post, sem_getvalue; pthread_spin_lock,
 * pthread_spin_trylock, pthread_spin_unlock; a semaphore posted by one
 * thread and waited for by another (ping-pong).
 *
 * -n resources (default 3) and -t threads (default 5) that, until -d ms
 * (default 3000) have passed, each take a slot of the semaphore (the way
 * operation I of thread T does it is T's I-th draw: 0 sem_wait, 1
 * sem_trywait in a loop, 2 sem_timedwait in a loop), pop a resource off the
 * free stack under the spinlock (spin_lock, or spin_trylock in a loop, by
 * the same draw), use it, push it back and sem_post. Under the spinlock,
 * and the journal mutex inside it:
 *
 *     a T I RES HOW FAILS VALUE       took RES (VALUE: sem_getvalue then)
 *     f T I RES                        gave RES back
 *
 * Two more threads play ping-pong: "ping" posts `ping` and waits for
 * `pong`, "pong" waits for `ping` and posts `pong`, each printing
 * "p N" / "q N" for exchange N, until the ping thread sees the time is up;
 * then ping posts a last `ping` with `done` set.
 * A worker still trying for a slot when the time is up gives up and prints
 * "x T I FAILS". End line: "end takes N fails F exchanges E".
 * Self-check (exit 2): a resource is never held twice, the semaphore value
 * never exceeds the free resources, all are free again at the end.
 */
#include <semaphore.h>

#include "mt_common.h"

#define MAX_THREADS 60
#define MAX_RES 64

static struct mt_opts opt = {.duration_ms = 3000, .threads = 5, .work = 20000, .extra = 3,
                              .rest_us = 200};
static sem_t slots, ping, pong;
static pthread_spinlock_t stack_lock;
static int stack[MAX_RES], top;
static int holder[MAX_RES];
static long takes, fails; /* under the journal mutex */
static uint64_t seeds[MAX_THREADS];
static int pingpong_done;
static long exchanges;

static int get_slot(int how, long *nfail)
{
    for (;;) {
        int r;
        if (how == 0) {
            r = sem_wait(&slots);
        } else if (how == 1) {
            r = sem_trywait(&slots);
        } else {
            struct timespec ts = mt_abs_in_us(CLOCK_REALTIME, 100);
            r = sem_timedwait(&slots, &ts);
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != ETIMEDOUT)
            mt_die("sem_*wait", errno);
        ++*nfail;
        if (how == 1) { /* back off a little: spin, then sleep */
            mt_spin(opt.work / 20);
            mt_sleep_us(20);
        }
        if (mt_time_up())
            return -1;
    }
}

static void lock_stack(int try)
{
    if (!try) {
        MT_CHECK(pthread_spin_lock(&stack_lock));
        return;
    }
    for (;;) {
        int r = pthread_spin_trylock(&stack_lock);
        if (r == 0)
            return;
        if (r != EBUSY)
            mt_die("pthread_spin_trylock", r);
    }
}

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t s = seeds[t];
    for (long i = 0; !mt_time_up(); i++) {
        uint64_t d = mt_rand(&s);
        int how = (int)(d % 3);
        long nfail = 0;
        if (get_slot(how, &nfail) != 0) {
            MT_CHECK(pthread_mutex_lock(mt_out_lock()));
            fails += nfail;
            printf("x %d %ld %ld\n", t, i, nfail);
            MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
            break;
        }
        lock_stack((d >> 8) & 1);
        if (top == 0)
            mt_broken("thread %d got a slot but no resource is free", t);
        int res = stack[--top];
        if (holder[res] != -1)
            mt_broken("resource %d given to %d while %d holds it", res, t, holder[res]);
        holder[res] = t;
        int value;
        if (sem_getvalue(&slots, &value) != 0)
            mt_die("sem_getvalue", errno);
        if (value > top)
            mt_broken("semaphore at %d with %d resources free", value, top);
        MT_CHECK(pthread_mutex_lock(mt_out_lock()));
        takes++;
        fails += nfail;
        printf("a %d %ld %d %d %ld %d\n", t, i, res, how, nfail, value);
        MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
        MT_CHECK(pthread_spin_unlock(&stack_lock));

        /* use it: busy, or (a third of the time) asleep, which keeps the
         * others waiting without keeping a CPU busy */
        if ((d >> 40) % 3 == 0)
            mt_rest(&opt);
        else
            mt_spin(opt.work / 2 + (long)((d >> 16) % (uint64_t)(opt.work + 1)));

        lock_stack((d >> 9) & 1);
        holder[res] = -1;
        stack[top++] = res;
        mt_out("f %d %ld %d\n", t, i, res);
        MT_CHECK(pthread_spin_unlock(&stack_lock));
        if (sem_post(&slots) != 0)
            mt_die("sem_post", errno);
        mt_spin(opt.work / 4);
        if ((d >> 44) & 1)
            mt_rest(&opt);
    }
    return NULL;
}

static void sem_wait_all(sem_t *sem)
{
    while (sem_wait(sem) != 0)
        if (errno != EINTR)
            mt_die("sem_wait", errno);
}

static void *pinger(void *arg)
{
    for (long n = 0;; n++) {
        int last = mt_time_up();
        if (last)
            pingpong_done = 1; /* published by the sem_post below */
        else
            mt_out("p %ld\n", n);
        if (sem_post(&ping) != 0)
            mt_die("sem_post", errno);
        if (last)
            return arg;
        sem_wait_all(&pong);
        mt_spin(opt.work);
        mt_rest(&opt);
    }
}

static void *ponger(void *arg)
{
    for (long n = 0;; n++) {
        sem_wait_all(&ping);
        if (pingpong_done) {
            exchanges = n;
            return arg;
        }
        mt_out("q %ld\n", n);
        mt_spin(opt.work / 2);
        if (sem_post(&pong) != 0)
            mt_die("sem_post", errno);
    }
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-n RESOURCES (default 3)");
    if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.extra < 1 || opt.extra > MAX_RES)
        mt_usage(argv[0], "at most 60 threads, 1..64 resources");
    if (sem_init(&slots, 0, (unsigned)opt.extra) != 0 || sem_init(&ping, 0, 0) != 0 ||
        sem_init(&pong, 0, 0) != 0)
        mt_die("sem_init", errno);
    MT_CHECK(pthread_spin_init(&stack_lock, PTHREAD_PROCESS_PRIVATE));
    for (int r = 0; r < opt.extra; r++) {
        stack[top++] = r;
        holder[r] = -1;
    }
    printf("mt_sem threads %d resources %d\n", opt.threads, opt.extra);
    for (int t = 0; t < opt.threads; t++) {
        seeds[t] = mt_seed();
        printf("seed %d %016llx\n", t, (unsigned long long)seeds[t]);
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    pthread_t th[MAX_THREADS + 2];
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t));
    MT_CHECK(pthread_create(&th[opt.threads], NULL, pinger, NULL));
    MT_CHECK(pthread_create(&th[opt.threads + 1], NULL, ponger, NULL));
    for (int t = 0; t < opt.threads + 2; t++)
        MT_CHECK(pthread_join(th[t], NULL));
    int value;
    if (sem_getvalue(&slots, &value) != 0)
        mt_die("sem_getvalue", errno);
    if (value != opt.extra || top != opt.extra)
        mt_broken("at the end the semaphore is %d, %d of %d resources free", value, top, opt.extra);
    printf("end takes %ld fails %ld exchanges %ld\n", takes, fails, exchanges);
    return 0;
}
