/*
 * mt_bank.c - threads moving money between accounts under mutexes.
 *
 * Provokes: contended pthread_mutex_lock on many mutexes, nested (two
 * account locks in index order, then the history lock), and a condition
 * variable for completion.
 *
 * -t threads (default 4) make transfers between -n accounts (default 16,
 * 1000 each) until -d ms (default 3000) have passed. Transfer i of thread t
 * is drawn from t's own splitmix64 stream (seed in the header): from a, to
 * b != a, amount; it is refused when a holds less than amount, so which
 * transfers are refused depends on the order the threads got the locks.
 * While still holding both account locks, the thread takes the history
 * lock and prints the transfer with the balances after it:
 *
 *     x THREAD I FROM TO AMOUNT OK BAL_FROM BAL_TO
 *
 * so the journal is the history in lock order. At the end: one line per
 * account with its balance and a hash of its own history (the journal
 * positions of the transfers that touched it), then
 *
 *     end transfers N refused R total T
 *
 * Self-check (exit 2): the total is invariant, no balance is negative, the
 * number of journal lines is the number of transfers. The driver replays
 * the journal (test_mt_bank.py).
 */
#include "mt_common.h"

#define MAX_ACCOUNTS 256
#define MAX_THREADS 64

static struct mt_opts opt = {.duration_ms = 3000, .threads = 4, .work = 20000, .extra = 16,
                              .rest_us = 200};
static long balance[MAX_ACCOUNTS];
static uint64_t account_hash[MAX_ACCOUNTS];
static pthread_mutex_t account_lock[MAX_ACCOUNTS];
static pthread_mutex_t history_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
static uint64_t seeds[MAX_THREADS];
static long history_len, refused;
static int done_threads;

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t s = seeds[t];
    int n = opt.extra;
    for (long i = 0;; i++) {
        if (i % 8 == 0 && mt_time_up())
            break;
        uint64_t r = mt_rand(&s);
        int a = (int)(r % (uint64_t)n);
        int b = (int)((r >> 16) % (uint64_t)(n - 1));
        if (b >= a)
            b++;
        long amount = (long)((r >> 32) % 300);
        int lo = a < b ? a : b, hi = a < b ? b : a;
        MT_CHECK(pthread_mutex_lock(&account_lock[lo]));
        MT_CHECK(pthread_mutex_lock(&account_lock[hi]));
        int ok = balance[a] >= amount;
        if (ok) {
            balance[a] -= amount;
            balance[b] += amount;
        }
        MT_CHECK(pthread_mutex_lock(&history_lock));
        long pos = history_len++;
        refused += !ok;
        account_hash[a] = mt_mix(account_hash[a], (uint64_t)pos);
        account_hash[b] = mt_mix(account_hash[b], (uint64_t)pos);
        printf("x %d %ld %d %d %ld %d %ld %ld\n", t, i, a, b, amount, ok, balance[a], balance[b]);
        MT_CHECK(pthread_mutex_unlock(&history_lock));
        MT_CHECK(pthread_mutex_unlock(&account_lock[hi]));
        MT_CHECK(pthread_mutex_unlock(&account_lock[lo]));
        mt_spin(opt.work);
        mt_rest(&opt);
    }
    MT_CHECK(pthread_mutex_lock(&history_lock));
    done_threads++;
    MT_CHECK(pthread_cond_signal(&all_done));
    MT_CHECK(pthread_mutex_unlock(&history_lock));
    return NULL;
}

int main(int argc, char **argv)
{
    mt_parse(argc, argv, &opt, "-n ACCOUNTS (2..256, default 16)");
    if (opt.threads < 1 || opt.threads > MAX_THREADS || opt.extra < 2 || opt.extra > MAX_ACCOUNTS)
        mt_usage(argv[0], "-t at most 64, -n 2..256");
    pthread_t th[MAX_THREADS];
    printf("mt_bank threads %d accounts %d initial 1000\n", opt.threads, opt.extra);
    for (int i = 0; i < opt.extra; i++) {
        balance[i] = 1000;
        account_hash[i] = MT_FNV_INIT;
        MT_CHECK(pthread_mutex_init(&account_lock[i], NULL));
    }
    for (int t = 0; t < opt.threads; t++) {
        seeds[t] = mt_seed();
        printf("seed %d %016llx\n", t, (unsigned long long)seeds[t]);
    }
    mt_header_done();
    mt_start_clock(opt.duration_ms);
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t));
    MT_CHECK(pthread_mutex_lock(&history_lock));
    while (done_threads < opt.threads)
        MT_CHECK(pthread_cond_wait(&all_done, &history_lock));
    MT_CHECK(pthread_mutex_unlock(&history_lock));
    for (int t = 0; t < opt.threads; t++)
        MT_CHECK(pthread_join(th[t], NULL));
    long total = 0;
    for (int i = 0; i < opt.extra; i++) {
        printf("account %d %ld %016llx\n", i, balance[i], (unsigned long long)account_hash[i]);
        total += balance[i];
        if (balance[i] < 0)
            mt_broken("account %d is negative: %ld", i, balance[i]);
    }
    printf("end transfers %ld refused %ld total %ld\n", history_len, refused, total);
    if (total != 1000L * opt.extra)
        mt_broken("total is %ld, expected %ld", total, 1000L * opt.extra);
    return 0;
}
