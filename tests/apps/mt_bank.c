/*
 * mt_bank.c - threads moving money between accounts under mutexes.
 *
 * 4 threads each make 20000 (or argv[1]) transfers between random accounts (each thread's
 * randomness seeded from getrandom), locking the two accounts' mutexes in
 * index order, and append every transfer to a shared history under a global
 * mutex; a condition variable tells the main thread when all are done. The
 * output is the final balances and a hash of the history in the order the
 * threads got the history lock: it depends on the schedule. Under understudy
 * the backup must reproduce it exactly (its output digest is compared with
 * the primary's), and the total must be invariant.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#define ACCOUNTS 16
#define THREADS 4
static int transfers = 20000; /* argv[1] */

static long balance[ACCOUNTS];
static pthread_mutex_t account_lock[ACCOUNTS];
static pthread_mutex_t history_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
static uint64_t history_hash = 1469598103934665603ull;
static int done_threads;

static void *worker(void *arg)
{
    unsigned seed;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
        abort();
    seed ^= (unsigned)(uintptr_t)arg;
    for (int i = 0; i < transfers; i++) {
        int a = rand_r(&seed) % ACCOUNTS, b = rand_r(&seed) % ACCOUNTS;
        if (a == b)
            continue;
        long amount = rand_r(&seed) % 100;
        int lo = a < b ? a : b, hi = a < b ? b : a;
        pthread_mutex_lock(&account_lock[lo]);
        pthread_mutex_lock(&account_lock[hi]);
        balance[a] -= amount;
        balance[b] += amount;
        pthread_mutex_unlock(&account_lock[hi]);
        pthread_mutex_unlock(&account_lock[lo]);
        pthread_mutex_lock(&history_lock);
        history_hash = (history_hash ^ (uint64_t)(a * 131 + b * 7 + amount)) * 1099511628211ull;
        pthread_mutex_unlock(&history_lock);
    }
    pthread_mutex_lock(&history_lock);
    done_threads++;
    pthread_cond_signal(&all_done);
    pthread_mutex_unlock(&history_lock);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t[THREADS];
    if (argc > 1)
        transfers = atoi(argv[1]);
    for (int i = 0; i < ACCOUNTS; i++) {
        balance[i] = 1000;
        pthread_mutex_init(&account_lock[i], NULL);
    }
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
            return 1;
    pthread_mutex_lock(&history_lock);
    while (done_threads < THREADS)
        pthread_cond_wait(&all_done, &history_lock);
    pthread_mutex_unlock(&history_lock);
    long total = 0;
    for (int i = 0; i < ACCOUNTS; i++) {
        printf("account %2d: %ld\n", i, balance[i]);
        total += balance[i];
    }
    printf("total %ld\nhistory %016llx\n", total, (unsigned long long)history_hash);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    return total == ACCOUNTS * 1000 ? 0 : 2;
}
