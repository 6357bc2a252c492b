/*
 * mt_barrier.c - rounds of threads meeting at a pthread barrier, with a
 * pthread_once per round.
 *
 * Provokes: pthread_barrier_wait (which thread gets
 * PTHREAD_BARRIER_SERIAL_THREAD depends on the order of arrival) and
 * pthread_once called by every thread at once (which thread runs the init
 * routine depends on the schedule).
 *
 * -t threads (default 4). In round R every thread calls
 * pthread_once(&once[R], init) (init notes the caller), does a random
 * amount of work, stores its contribution (the R-th draw of its stream,
 * seed in the header) in its own slot, and waits at the barrier. The one
 * serial thread combines the slots, decides whether -d ms (default 3000)
 * have passed, and prints
 *
 *     b R SERIAL ONCE COMBINED
 *
 * (ONCE: the thread that ran round R's init); a second barrier makes every
 * thread see the decision before the next round. At the end, per thread,
 * "serial T N" (how often T was the serial thread), then "end rounds N".
 * Self-check (exit 2): exactly one serial thread per barrier, the init ran
 * once per round, every thread sees the same decision.
 */
#include "mt_common.h"

#define MAX_THREADS 64
#define MAX_ROUNDS 200000

static struct mt_opts opt = {.duration_ms = 3000, .threads = 4, .work = 20000, .extra = 0,
                              .rest_us = 200};
static pthread_barrier_t barrier;
static uint64_t seeds[MAX_THREADS];
static uint64_t contrib[MAX_THREADS];
static pthread_once_t once[MAX_ROUNDS];
static int once_runner[MAX_ROUNDS];
static int once_runs[MAX_ROUNDS];
static int stop;                       /* written by the serial thread between barriers */
static long serial_count[MAX_THREADS]; /* likewise */
static unsigned char serials[MAX_ROUNDS];
static long rounds;
static _Thread_local int my_id;
static _Thread_local long my_round;

static void init_round(void)
{
    once_runner[my_round] = my_id;
    once_runs[my_round]++;
}

static int wait_barrier(void)
{
    int r = pthread_barrier_wait(&barrier);
    if (r != 0 && r != PTHREAD_BARRIER_SERIAL_THREAD)
        mt_die("pthread_barrier_wait", r);
    return r == PTHREAD_BARRIER_SERIAL_THREAD;
}

static void *thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t s = seeds[t];
    my_id = t;
    for (long r = 0;; r++) {
        my_round = r;
        MT_CHECK(pthread_once(&once[r], init_round));
        uint64_t v = mt_rand(&s);
        mt_spin((long)(v % (uint64_t)(opt.work + 1)));
        if (v & 1)
            mt_rest(&opt);
        contrib[t] = v;
        if (wait_barrier()) {
            /* alone until the second barrier: every other thread waits */
            serials[r]++;
            if (once_runs[r] != 1)
                mt_broken("round %ld's init ran %d times", r, once_runs[r]);
            uint64_t h = MT_FNV_INIT;
            for (int k = 0; k < opt.threads; k++)
                h = mt_mix(h, contrib[k]);
            serial_count[t]++;
            rounds = r + 1;
            stop = mt_time_up() || r + 1 == MAX_ROUNDS;
            mt_out("b %ld %d %d %016llx\n", r, t, once_runner[r], (unsigned long long)h);
        }
        wait_barrier();
        /* `stop` is written again only after the next round's first
         * barrier, which every thread reaches after reading it here */
        if (stop)
            break;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "");
    if (opt.threads < 1 || opt.threads > MAX_THREADS)
        mt_usage(argv[0], "at most 64 threads");
    MT_CHECK(pthread_barrier_init(&barrier, NULL, (unsigned)opt.threads));
    for (long r = 0; r < MAX_ROUNDS; r++)
        once[r] = PTHREAD_ONCE_INIT;
    printf("mt_barrier threads %d\n", opt.threads);
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
    long sum = 0;
    for (int t = 0; t < opt.threads; t++) {
        printf("serial %d %ld\n", t, serial_count[t]);
        sum += serial_count[t];
    }
    if (sum != rounds)
        mt_broken("%ld serial threads in %ld rounds", sum, rounds);
    for (long r = 0; r < rounds; r++)
        if (serials[r] != 1)
            mt_broken("round %ld had %d serial threads", r, serials[r]);
    printf("end rounds %ld\n", rounds);
    return 0;
}
