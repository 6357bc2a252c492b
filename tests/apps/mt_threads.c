/*
 * mt_threads.c - threads created and joined in bursts, detached threads,
 * thread-specific data with destructors.
 *
 * Provokes: pthread_create / pthread_join in bursts (thread stacks and ids
 * reused all the time), detached threads ending by themselves,
 * pthread_key_create / pthread_key_delete (keys recycled),
 * pthread_setspecific / pthread_getspecific, destructors run at thread exit
 * (one of which sets its key again, so it runs a second time).
 *
 * Rounds until -d ms (default 3000) have passed. In round R the main thread
 * starts -t detached threads (default 1; 0: none), then -n joinable threads
 * (default 8), and joins those in order. Joinable thread J sets key A to its (R, J), odd
 * ones also key B, does some work (amount from a hash of R and J) and
 * prints, under the mutex, with the global order number:
 *
 *     t R J ORDER                when it ran
 *     k R J                      key A's destructor
 *     l R J PASS                 key B's destructor, PASS 1 then 2
 *     x R ORDER                  a detached thread of round R
 *     j R                        main: round R's threads joined
 *
 * Key B is deleted and created again every 16 rounds. At the end main
 * waits (condition variable) for the last detached threads: "end rounds N
 * threads T detached D".
 * Self-check (exit 2): join returns each thread's own value, a thread sees
 * its own specific values, every destructor ran as described.
 */
#include "mt_common.h"

#define MAX_BURST 64

static struct mt_opts opt = {.duration_ms = 3000, .threads = 1, .work = 20000, .extra = 8,
                              .rest_us = 200};
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t detached_cv = PTHREAD_COND_INITIALIZER;
static pthread_key_t key_a, key_b;
static long order, detached_done, destructors_a, destructors_b;

struct slot {
    long round;
    int j;
    int pass;
};
static struct slot slots_a[MAX_BURST], slots_b[MAX_BURST];

static void dtor_a(void *p)
{
    struct slot *s = p;
    MT_CHECK(pthread_mutex_lock(&lock));
    destructors_a++;
    printf("k %ld %d\n", s->round, s->j);
    MT_CHECK(pthread_mutex_unlock(&lock));
}

static void dtor_b(void *p)
{
    struct slot *s = p;
    MT_CHECK(pthread_mutex_lock(&lock));
    destructors_b++;
    printf("l %ld %d %d\n", s->round, s->j, ++s->pass);
    MT_CHECK(pthread_mutex_unlock(&lock));
    if (s->pass == 1)
        MT_CHECK(pthread_setspecific(key_b, s)); /* run me again */
}

static void *joinable(void *arg)
{
    struct slot *a = arg;
    MT_CHECK(pthread_setspecific(key_a, a));
    if (a->j & 1) {
        slots_b[a->j] = (struct slot){a->round, a->j, 0};
        MT_CHECK(pthread_setspecific(key_b, &slots_b[a->j]));
    }
    mt_spin((long)(mt_mix(MT_FNV_INIT, (uint64_t)(a->round * MAX_BURST + a->j)) %
                   (uint64_t)(opt.work + 1)));
    if (pthread_getspecific(key_a) != a)
        mt_broken("thread %ld/%d lost its key A value", a->round, a->j);
    MT_CHECK(pthread_mutex_lock(&lock));
    printf("t %ld %d %ld\n", a->round, a->j, order++);
    MT_CHECK(pthread_mutex_unlock(&lock));
    return (void *)(intptr_t)(a->round * MAX_BURST + a->j);
}

static void *detached(void *arg)
{
    long r = (long)(intptr_t)arg;
    mt_spin(opt.work / 2);
    MT_CHECK(pthread_mutex_lock(&lock));
    printf("x %ld %ld\n", r, order++);
    detached_done++;
    MT_CHECK(pthread_cond_signal(&detached_cv));
    MT_CHECK(pthread_mutex_unlock(&lock));
    return NULL;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-n BURST (joinable threads per round, default 8), "
                               "-t DETACHED (per round, default 1)");
    if (opt.extra < 1 || opt.extra > MAX_BURST || opt.threads > 64)
        mt_usage(argv[0], "-n 1..64, -t 0..64");
    pthread_attr_t det;
    MT_CHECK(pthread_attr_init(&det));
    MT_CHECK(pthread_attr_setdetachstate(&det, PTHREAD_CREATE_DETACHED));
    MT_CHECK(pthread_key_create(&key_a, dtor_a));
    MT_CHECK(pthread_key_create(&key_b, dtor_b));
    printf("mt_threads burst %d detached %d\n", opt.extra, opt.threads);
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    long r = 0, threads = 0;
    for (; !mt_time_up(); r++) {
        if (r % 16 == 15) {
            MT_CHECK(pthread_key_delete(key_b));
            MT_CHECK(pthread_key_create(&key_b, dtor_b));
        }
        pthread_t d, th[MAX_BURST];
        for (int k = 0; k < opt.threads; k++)
            MT_CHECK(pthread_create(&d, &det, detached, (void *)(intptr_t)r));
        for (int j = 0; j < opt.extra; j++) {
            slots_a[j] = (struct slot){r, j, 0};
            MT_CHECK(pthread_create(&th[j], NULL, joinable, &slots_a[j]));
        }
        for (int j = 0; j < opt.extra; j++) {
            void *ret;
            MT_CHECK(pthread_join(th[j], &ret));
            if ((intptr_t)ret != r * MAX_BURST + j)
                mt_broken("join of thread %ld/%d returned %ld", r, j, (long)(intptr_t)ret);
        }
        threads += opt.extra + opt.threads;
        MT_CHECK(pthread_mutex_lock(&lock));
        for (int j = 1; j < opt.extra; j += 2)
            if (slots_b[j].round != r || slots_b[j].pass != 2)
                mt_broken("key B's destructor of thread %ld/%d ran %d times", r, j, slots_b[j].pass);
        printf("j %ld\n", r);
        MT_CHECK(pthread_mutex_unlock(&lock));
        mt_rest(&opt);
    }
    MT_CHECK(pthread_mutex_lock(&lock));
    while (detached_done < r * opt.threads)
        MT_CHECK(pthread_cond_wait(&detached_cv, &lock));
    long want_a = r * opt.extra, want_b = 2 * r * (opt.extra / 2);
    if (destructors_a != want_a || destructors_b != want_b)
        mt_broken("%ld/%ld key A and %ld/%ld key B destructor calls", destructors_a, want_a,
                  destructors_b, want_b);
    printf("end rounds %ld threads %ld detached %ld\n", r, threads, detached_done);
    MT_CHECK(pthread_mutex_unlock(&lock));
    return 0;
}
