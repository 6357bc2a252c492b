/*
 * Shared plumbing for the tests/apps multithreaded programs (mt_*.c).
 *
 * Like the servers, these stand in for ordinary programs: plain C11 + POSIX
 * threads, nothing that knows about understudy. Each program provokes one
 * kind of thread synchronisation and prints a journal whose bytes depend on
 * the thread schedule; the Python driver replays the journal and checks it
 * (tests/apps/README.md, "Multithreaded programs").
 *
 * Conventions shared by every mt_ program:
 *   - `-d MS`: work until MS milliseconds of CLOCK_MONOTONIC have passed
 *     since start (each thread reads the clock itself), so a run lasts as
 *     long as the driver needs to kill the primary mid-run, whatever the
 *     speed of the machine or of replay; `-t N` threads; `-w N` busy work
 *     and `-z US` sleep (mt_rest) between operations.
 *   - randomness from getrandom() (replicated by understudy), or from `-S
 *     SEED` so that two native runs differ by their schedule alone; one
 *     splitmix64 stream per thread, its seed printed in the header;
 *   - every journal line is printed under one mutex (mt_out), so stdio's own
 *     internal lock is never contended and the order of the lines is the
 *     order in which the threads got that mutex;
 *   - the header is flushed at once (the driver waits for it before it
 *     starts its clock), the rest goes out through stdio's buffer;
 *   - the last line starts with "end "; exit status 0, or 2 (and a line
 *     "invariant broken: ..." on stderr) when the program's own check fails.
 *
 * Everything is `static inline` so that a program that does not use a
 * helper does not trip -Wunused-function under -Werror.
 */
#ifndef UNDERSTUDY_TESTS_APPS_MT_COMMON_H
#define UNDERSTUDY_TESTS_APPS_MT_COMMON_H

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct mt_opts {
    long duration_ms; /* -d */
    int threads;      /* -t (each program checks its range) */
    long work;        /* -w: busy-loop iterations between operations */
    int extra;        /* -n: program-specific count (see each program) */
    long rest_us;     /* -z: sleep between operations (mt_rest), microseconds */
};

/* -S SEED: derive the per-thread seeds from SEED instead of getrandom(),
 * so that two runs differ only by their schedule. */
struct mt_seed_state {
    int fixed;
    uint64_t state;
};

static inline struct mt_seed_state *mt_seed_state(void)
{
    static struct mt_seed_state st;
    return &st;
}

static inline void mt_usage(const char *prog, const char *extra_help)
{
    fprintf(stderr, "usage: %s [-d MS] [-t THREADS] [-w WORK] [-z US] [-n N] [-S SEED]\n%s\n", prog,
            extra_help ? extra_help : "");
    exit(64);
}

/* Parse -d/-t/-w/-z/-n/-S over the defaults already in *o. */
static inline void mt_parse(int argc, char **argv, struct mt_opts *o, const char *extra_help)
{
    int c;
    while ((c = getopt(argc, argv, "d:t:w:z:n:S:")) != -1) {
        char *end;
        if (c == 'S') {
            mt_seed_state()->fixed = 1;
            mt_seed_state()->state = strtoull(optarg, &end, 0);
            if (*end)
                mt_usage(argv[0], extra_help);
            continue;
        }
        long v = strtol(optarg ? optarg : "", &end, 10);
        if (c == '?' || *end || v < 0)
            mt_usage(argv[0], extra_help);
        switch (c) {
        case 'd': o->duration_ms = v; break;
        case 't': o->threads = (int)v; break;
        case 'w': o->work = v; break;
        case 'z': o->rest_us = v; break;
        case 'n': o->extra = (int)v; break;
        default: mt_usage(argv[0], extra_help);
        }
    }
    if (optind != argc)
        mt_usage(argv[0], extra_help);
}

static inline void mt_die(const char *what, int err)
{
    fprintf(stderr, "fatal: %s: %s\n", what, strerror(err));
    exit(3);
}

/* Abort the run with exit status 2: one of the program's invariants broke. */
static inline void mt_broken(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static inline void mt_broken(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("invariant broken: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* pthread calls return an error number instead of setting errno. */
#define MT_CHECK(call)                                   \
    do {                                                 \
        int mt_rc_ = (call);                             \
        if (mt_rc_ != 0)                                 \
            mt_die(#call, mt_rc_);                       \
    } while (0)

/* ---- time */

static inline uint64_t mt_now_ns(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0)
        mt_die("clock_gettime", errno);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t *mt_deadline_ptr(void)
{
    static uint64_t deadline; /* written once by main before any thread starts */
    return &deadline;
}

static inline void mt_start_clock(long duration_ms)
{
    *mt_deadline_ptr() = mt_now_ns(CLOCK_MONOTONIC) + (uint64_t)duration_ms * 1000000ull;
}

/* Has the run's duration elapsed? Each caller reads the clock itself. */
static inline int mt_time_up(void)
{
    return mt_now_ns(CLOCK_MONOTONIC) >= *mt_deadline_ptr();
}

/* An absolute time `us` microseconds from now on clock `clk`, for the
 * timed waits (pthread_*_timed*: CLOCK_REALTIME unless said otherwise). */
static inline struct timespec mt_abs_in_us(clockid_t clk, long us)
{
    uint64_t t = mt_now_ns(clk) + (uint64_t)us * 1000ull;
    struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
    return ts;
}

/* ---- randomness: splitmix64 (the drivers reimplement it to check streams) */

static inline uint64_t mt_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A fresh seed: from getrandom(), or the next of the -S stream. */
static inline uint64_t mt_seed(void)
{
    uint64_t s;
    if (mt_seed_state()->fixed)
        return mt_rand(&mt_seed_state()->state);
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s)
        mt_die("getrandom", errno);
    return s;
}

/* 64-bit FNV-1a step over one 64-bit value, little-endian bytes. */
static inline uint64_t mt_mix(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        h ^= (v >> (8 * i)) & 0xff;
        h *= 1099511628211ull;
    }
    return h;
}
#define MT_FNV_INIT 14695981039346656037ull

/* ---- busy work: no system call, no shared memory */

static inline uint64_t mt_spin(long n)
{
    volatile uint64_t sink = 0;
    uint64_t x = (uint64_t)n;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        sink = x;
    }
    return sink;
}

/* Between two operations: sleep -z microseconds. Threads that only spun
 * would keep every CPU busy, and on a small machine the replicas of a
 * program compete for the same CPUs: resting leaves room for a backup to
 * keep up, while the threads still meet at their locks at random moments. */
static inline void mt_sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline void mt_rest(const struct mt_opts *o)
{
    if (o->rest_us > 0)
        mt_sleep_us(o->rest_us);
}

/* ---- the journal */

static inline pthread_mutex_t *mt_out_lock(void)
{
    static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    return &m;
}

static inline void mt_out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void mt_out(const char *fmt, ...)
{
    va_list ap;
    MT_CHECK(pthread_mutex_lock(mt_out_lock()));
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    MT_CHECK(pthread_mutex_unlock(mt_out_lock()));
}

/* Header lines, flushed so the driver sees that the program runs. Call from
 * main before the threads start (stdio allocates its buffer here, not in a
 * thread). */
static inline void mt_header_done(void)
{
    fflush(stdout);
}

#endif
