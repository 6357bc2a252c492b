/*
 * mt_park.c - worker threads that wait for work the way Redis's io-threads
 * do: spinning on an atomic counter, and parking on a mutex in between.
 *
 * Provokes: a hand-over through atomics (the main thread publishes a batch
 * by storing its size in the worker's `pending` counter; the worker stores 0
 * when done, while the main thread spins on it) and an empty critical
 * section: a worker that spun SPINS times without seeing work locks and at
 * once unlocks its park mutex, which the main thread holds while the workers
 * are stopped. How often a worker parks is timing alone; understudy does not
 * order empty sections (src/shim/empty_section.c), so the replicas need not
 * agree on it. The workers' batches also take a mutex around a counter (a
 * section that is not empty, which stays ordered).
 *
 * -t workers (default 2). Round R: the main thread gives every worker
 * 1 + R % 7 draws to make; worker T folds its next draws (its own stream,
 * seed in the header) into its running hash H_T, counts the batch under
 * `stats_lock`, and stores 0. Once every worker is done the main thread
 * prints
 *
 *     p R H_0 H_1 ...
 *
 * (the only thread that prints) and rests (-z us, default 300): with the
 * workers spinning, parking every SPINS polls, or, every 4th round, with the
 * workers stopped (the main thread holds their park mutexes; work is handed
 * out only to running workers, as Redis does). After -d ms (default 3000): per worker
 * "batches T N", then "end rounds N". Self-check (exit 2): each worker
 * counted one batch per round.
 */
#include <stdatomic.h>

#include "mt_common.h"

#define MAX_THREADS 16
#define SPINS 100000
#define QUIT (~0ul)

static struct mt_opts opt = {.duration_ms = 3000, .threads = 2, .work = 2000, .extra = 0,
                              .rest_us = 300};
static pthread_mutex_t park[MAX_THREADS];
static atomic_ulong pending[MAX_THREADS];
static unsigned long draws[MAX_THREADS]; /* written by main while pending is 0 */
static uint64_t seeds[MAX_THREADS], hash[MAX_THREADS];
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static long batches[MAX_THREADS];

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    pthread_mutex_t *my_park = &park[t];
    uint64_t s = seeds[t], h = MT_FNV_INIT;
    for (;;) {
        for (int j = 0; j < SPINS; j++)
            if (atomic_load_explicit(&pending[t], memory_order_acquire) != 0)
                break;
        if (atomic_load_explicit(&pending[t], memory_order_acquire) == 0) {
            /* nothing yet: let the main thread stop us */
            pthread_mutex_lock(my_park);
            pthread_mutex_unlock(my_park);
            continue;
        }
        if (draws[t] == QUIT)
            break;
        for (unsigned long i = 0; i < draws[t]; i++) {
            h = mt_mix(h, mt_rand(&s));
            mt_spin(opt.work);
        }
        hash[t] = h;
        MT_CHECK(pthread_mutex_lock(&stats_lock));
        batches[t]++;
        MT_CHECK(pthread_mutex_unlock(&stats_lock));
        atomic_store_explicit(&pending[t], 0, memory_order_release);
    }
    return NULL;
}

/* Publishes one batch to every worker and waits, spinning, for all. */
static void hand_out(unsigned long n)
{
    for (int t = 0; t < opt.threads; t++) {
        draws[t] = n;
        atomic_store_explicit(&pending[t], 1, memory_order_release);
    }
    for (int t = 0; t < opt.threads; t++)
        while (n != QUIT && atomic_load_explicit(&pending[t], memory_order_acquire) != 0)
            ;
}

static void set_stopped(int stop)
{
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(stop ? pthread_mutex_lock(&park[t]) : pthread_mutex_unlock(&park[t]));
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "");
    if (opt.threads < 1 || opt.threads > MAX_THREADS)
        mt_usage(argv[0], "at most 16 workers");
    printf("mt_park threads %d\n", opt.threads);
    for (int t = 0; t < opt.threads; t++) {
        seeds[t] = mt_seed();
        printf("seed %d %016llx\n", t, (unsigned long long)seeds[t]);
        MT_CHECK(pthread_mutex_init(&park[t], NULL));
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    set_stopped(1); /* the workers start stopped, as Redis's do */
    pthread_t th[MAX_THREADS];
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t));
    set_stopped(0);
    long rounds = 0;
    for (; !mt_time_up(); rounds++) {
        hand_out(1 + (unsigned long)rounds % 7);
        printf("p %ld", rounds);
        for (int t = 0; t < opt.threads; t++)
            printf(" %016llx", (unsigned long long)hash[t]);
        printf("\n");
        /* Rest: every 4th round with the workers stopped (a worker that
         * parks now waits until they start again), else spinning. */
        int stop = rounds % 4 == 3;
        if (stop)
            set_stopped(1);
        mt_rest(&opt);
        if (stop)
            set_stopped(0);
    }
    hand_out(QUIT);
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_join(th[t], NULL));
    for (int t = 0; t < opt.threads; t++) {
        printf("batches %d %ld\n", t, batches[t]);
        if (batches[t] != rounds)
            mt_broken("worker %d counted %ld batches in %ld rounds", t, batches[t], rounds);
    }
    printf("end rounds %ld\n", rounds);
    return 0;
}
