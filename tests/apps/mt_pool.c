/*
 * mt_pool.c - a thread pool whose task completion order decides the output.
 *
 * Provokes: a task queue under a mutex with a "work" condition variable
 * (pthread_cond_signal per task, pthread_cond_broadcast for a batch and at
 * shutdown), an "idle" condition the submitter waits on, tasks submitting
 * tasks from inside the pool, and a shared accumulator every task folds
 * itself into under a second mutex.
 *
 * -t workers (default 4). Rounds until -d ms (default 3000) have passed:
 * the main thread submits 24 tasks (ids 0..23, each with an amount of work
 * drawn from the main thread's stream, seed in the header), alternately
 * one signal per task and one broadcast for the batch; a task whose id is
 * a multiple of 3 submits, after its work, a child (id + 100), which
 * submits a grandchild (id + 200) the same way. A task, when done, folds (round, id, worker) into the
 * accumulator and prints, under the accumulator's mutex:
 *
 *     d ROUND ID WORKER ACC        ACC = mix(mix(mix(ACC', ROUND), ID), WORKER)
 *
 * so the accumulator is a hash of the completion order. When the pool is
 * idle (queue empty, no task running) the main thread prints
 *
 *     r ROUND TASKS ACC
 *
 * and starts the next round; at the end it broadcasts the shutdown and
 * joins the workers: "end rounds R tasks N acc ACC".
 * Self-check (exit 2): every task of a round ran exactly once.
 */
#include "mt_common.h"

#define MAX_THREADS 64
#define TOP_TASKS 24
#define QCAP 256

struct task {
    int round, id;
    long work;
};

static struct mt_opts opt = {.duration_ms = 3000, .threads = 4, .work = 20000, .extra = 0,
                              .rest_us = 200};
static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t idle = PTHREAD_COND_INITIALIZER;
static struct task queue[QCAP];
static int qhead, qlen, active, shutting_down;

static pthread_mutex_t acc_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t acc = MT_FNV_INIT;
static long tasks_done;
static unsigned char ran[300]; /* per task id, this round */

/* Called with qlock held. */
static void push(struct task t)
{
    if (qlen == QCAP)
        mt_broken("task queue overflow");
    queue[(qhead + qlen) % QCAP] = t;
    qlen++;
}

static void *worker(void *arg)
{
    int w = (int)(intptr_t)arg;
    for (;;) {
        MT_CHECK(pthread_mutex_lock(&qlock));
        while (qlen == 0 && !shutting_down)
            MT_CHECK(pthread_cond_wait(&work_ready, &qlock));
        if (qlen == 0) {
            MT_CHECK(pthread_mutex_unlock(&qlock));
            return NULL;
        }
        struct task t = queue[qhead];
        qhead = (qhead + 1) % QCAP;
        qlen--;
        active++;
        MT_CHECK(pthread_mutex_unlock(&qlock));

        mt_spin(t.work);
        mt_rest(&opt);
        if ((t.id % 100) % 3 == 0 && t.id < 200) {
            MT_CHECK(pthread_mutex_lock(&qlock));
            push((struct task){t.round, t.id + 100, t.work / 2});
            MT_CHECK(pthread_cond_signal(&work_ready));
            MT_CHECK(pthread_mutex_unlock(&qlock));
        }
        MT_CHECK(pthread_mutex_lock(&acc_lock));
        if (ran[t.id]++)
            mt_broken("task %d of round %d ran twice", t.id, t.round);
        acc = mt_mix(mt_mix(mt_mix(acc, (uint64_t)t.round), (uint64_t)t.id), (uint64_t)w);
        tasks_done++;
        printf("d %d %d %d %016llx\n", t.round, t.id, w, (unsigned long long)acc);
        MT_CHECK(pthread_mutex_unlock(&acc_lock));

        MT_CHECK(pthread_mutex_lock(&qlock));
        active--;
        if (qlen == 0 && active == 0)
            MT_CHECK(pthread_cond_broadcast(&idle));
        MT_CHECK(pthread_mutex_unlock(&qlock));
    }
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-t WORKERS (default 4)");
    if (opt.threads < 1 || opt.threads > MAX_THREADS)
        mt_usage(argv[0], "at most 64 workers");
    uint64_t seed = mt_seed();
    printf("mt_pool workers %d tasks %d\nseed 0 %016llx\n", opt.threads, TOP_TASKS,
           (unsigned long long)seed);
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    pthread_t th[MAX_THREADS];
    for (int w = 0; w < opt.threads; w++)
        MT_CHECK(pthread_create(&th[w], NULL, worker, (void *)(intptr_t)w));
    int round = 0;
    for (; !mt_time_up(); round++) {
        MT_CHECK(pthread_mutex_lock(&qlock));
        for (int j = 0; j < TOP_TASKS; j++) {
            long work = (long)(mt_rand(&seed) % (uint64_t)(2 * opt.work + 1));
            push((struct task){round, j, work});
            if (round % 2 == 0)
                MT_CHECK(pthread_cond_signal(&work_ready));
        }
        if (round % 2 == 1)
            MT_CHECK(pthread_cond_broadcast(&work_ready));
        while (qlen != 0 || active != 0)
            MT_CHECK(pthread_cond_wait(&idle, &qlock));
        MT_CHECK(pthread_mutex_unlock(&qlock));

        MT_CHECK(pthread_mutex_lock(&acc_lock));
        int n = 0;
        for (int id = 0; id < 300; id++) {
            int want = id % 100 < TOP_TASKS && (id < 100 || (id % 100) % 3 == 0);
            if (ran[id] != want)
                mt_broken("round %d: task %d ran %d times", round, id, ran[id]);
            n += ran[id];
            ran[id] = 0;
        }
        printf("r %d %d %016llx\n", round, n, (unsigned long long)acc);
        MT_CHECK(pthread_mutex_unlock(&acc_lock));
    }
    MT_CHECK(pthread_mutex_lock(&qlock));
    shutting_down = 1;
    MT_CHECK(pthread_cond_broadcast(&work_ready));
    MT_CHECK(pthread_mutex_unlock(&qlock));
    for (int w = 0; w < opt.threads; w++)
        MT_CHECK(pthread_join(th[w], NULL));
    printf("end rounds %d tasks %ld acc 0x%016llx\n", round, tasks_done, (unsigned long long)acc);
    return 0;
}
