/*
 * slicer.c - finer time slices for a backup whose threads busy-wait on
 * each other.
 *
 * Some programs hand work between threads by spinning on a shared variable
 * (Redis's io-threads: the main thread and each io thread spin until the
 * other has set a counter). Natively each spinner has a CPU of its own. A
 * backup held to one CPU runs them on that one: a spinner keeps the CPU
 * until the scheduler's tick preempts it (4 ms at HZ=250), so every
 * hand-over costs a tick and the backup replays 50 times slower than the
 * primary ran; back-pressure then holds the primary back too.
 *
 * The shim cannot see such a spin (it makes no call), but its trace shows
 * in the scheduler's figures: two threads of one backup that both run a
 * large share of the time and both wait for a CPU a large share of it, in
 * long stretches (each holds the CPU until the tick). From then on, while they
 * compete, a ticker process of the supervisor's on the backup's CPUs wakes
 * every --slice-us: each wake-up preempts the spinner that holds the CPU,
 * and when the ticker sleeps again the scheduler picks the thread that
 * waited, so a hand-over costs a slice instead of a tick. Measured here
 * with two threads ping-ponging through an atomic on one CPU: about 500
 * hand-overs a second untouched, 5,900 with a 100 us ticker, 8,000 with
 * 50 us (`run --slice-us`, the default).
 *
 * The ticker is stopped whenever a replica dies, before it is reaped: with
 * one running, this kernel's reap of a killed Redis primary was seen to
 * spin in d_invalidate of its /proc entries for tens of seconds (3 of 13
 * sanitizer runs of redis_iothreads_failover; none of 18 with the ticker
 * stopped first). Why is not understood.
 */
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "supervisor.h"

#define SLICER_WINDOW_MS 50     /* how often the scheduler's figures are read */
#define SLICER_SHARE 5          /* "a large share": 1/5 of the window */
#define SLICER_STRETCH_NS 300000 /* a spinner's stretch on (and off) a CPU:
                                    most of a 4 ms tick */
#define SLICER_LINGER_MS 1000   /* stays on this long after the last sign */

/* The ticker: a process of its own (the supervisor stays single-threaded,
 * so its forks stay simple), on the backup's CPUs, sleeping on the shared
 * word `on` while it is 0. Only system calls: it runs in a fork. */
static void ticker(uint32_t *on, const cpu_set_t *cpus, long slice_us)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    prctl(PR_SET_NAME, "understudy-tick");
    syscall(SYS_close_range, 3, ~0u, 0);
    sched_setaffinity(0, sizeof(*cpus), cpus);
    const struct timespec slice = {slice_us / 1000000, slice_us % 1000000 * 1000L};
    for (;;) {
        if (__atomic_load_n(on, __ATOMIC_ACQUIRE))
            nanosleep(&slice, NULL);
        else
            syscall(SYS_futex, on, FUTEX_WAIT, 0, NULL, NULL, 0);
    }
}

static int start_ticker(struct us_supervisor *s, int b)
{
    static uint32_t *words; /* shared with the tickers: one `on` per slot */
    if (!words) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -1;
        words = p;
    }
    struct us_slicer *sl = &s->rep[b].slicer;
    sl->on = &words[b];
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        ticker(sl->on, &s->opt.cpus[b], s->opt.slice_us);
        _exit(0);
    }
    sl->ticker = pid;
    return 0;
}

static void set_on(struct us_slicer *sl, uint32_t on)
{
    if (!sl->ticker)
        return;
    __atomic_store_n(sl->on, on, __ATOMIC_RELEASE);
    syscall(SYS_futex, sl->on, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int is_on(const struct us_slicer *sl)
{
    return sl->ticker && __atomic_load_n(sl->on, __ATOMIC_ACQUIRE);
}

/* The scheduler's figures for one thread (its schedstat): ns on a CPU, ns
 * runnable but waiting for one, and the number of times it got one. */
static int thread_sched(pid_t pid, int tid, struct us_thread_sched *ts)
{
    char path[96], buf[96];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/schedstat", (int)pid, tid);
    unsigned long long r, w, k;
    if (!us_read_proc(path, buf, sizeof(buf)) || sscanf(buf, "%llu %llu %llu", &r, &w, &k) != 3)
        return -1;
    ts->tid = tid;
    ts->run_ns = r;
    ts->wait_ns = w;
    ts->slices = k;
    return 0;
}

/*
 * Over the last window_ns, how many threads of backup b competed for its
 * CPUs (each ran and waited for a CPU a large share of the window), and how
 * many of those did so as spinners do: holding the CPU for long stretches
 * and waiting long for it, the other spinner's stretch. A thread that
 * blocks, as most do, runs and waits some microseconds at a time. Each
 * thread is known by its ring (the tid the shim published there); the
 * figures are kept for the next window.
 */
static void competing_threads(struct us_supervisor *s, int b, uint64_t window_ns,
                              int *competing, int *spinning)
{
    struct us_slicer *sl = &s->rep[b].slicer;
    *competing = *spinning = 0;
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        const struct us_ring_ctl *c = &s->log.hdr->ring[r];
        struct us_thread_sched *prev = &sl->prev[r], now;
        int tid = __atomic_load_n(&c->consumer[b].tid, __ATOMIC_ACQUIRE);
        if (!tid || !__atomic_load_n(&c->in_use, __ATOMIC_ACQUIRE) ||
            thread_sched(s->rep[b].pid, tid, &now) < 0) {
            prev->tid = 0;
            continue;
        }
        if (prev->tid == tid) {
            uint64_t ran = now.run_ns - prev->run_ns, waited = now.wait_ns - prev->wait_ns;
            uint64_t slices = now.slices - prev->slices + 1;
            if (ran * SLICER_SHARE >= window_ns && waited * SLICER_SHARE >= window_ns) {
                (*competing)++;
                *spinning += ran / slices >= SLICER_STRETCH_NS && waited / slices >= SLICER_STRETCH_NS;
            }
        }
        *prev = now;
    }
}

void us_slicer_check(struct us_supervisor *s, long now)
{
    if (!s->opt.slice_us)
        return;
    for (int b = 0; b < s->opt.replicas; b++) {
        struct us_slicer *sl = &s->rep[b].slicer;
        int backup = b != s->primary && s->rep[b].alive;
        if (!backup) {
            if (is_on(sl))
                set_on(sl, 0);
            continue;
        }
        if (now - sl->checked_ms < SLICER_WINDOW_MS)
            continue;
        uint64_t window_ns = (uint64_t)(now - sl->checked_ms) * 1000000u;
        sl->checked_ms = now;
        int competing, spinning;
        competing_threads(s, b, window_ns, &competing, &spinning);
        /* On when two threads spin against each other; on, as long as they
         * compete: sliced, their stretches are short. */
        if (spinning >= 2 || (is_on(sl) && competing >= 2))
            sl->contended_ms = now;
        if (spinning >= 2 && !is_on(sl)) {
            if (!sl->ticker) {
                if (start_ticker(s, b) < 0)
                    continue;
                us_say_sup(s, "backup pid %d: %d of its threads compete for its CPUs as "
                              "busy-waiting threads do (each holds a CPU until preempted); "
                              "slicing them every %d us while that lasts",
                           (int)s->rep[b].pid, spinning, s->opt.slice_us);
            }
            set_on(sl, 1);
        } else if (is_on(sl) && now - sl->contended_ms > SLICER_LINGER_MS) {
            set_on(sl, 0);
        }
    }
}

void us_slicer_stop(struct us_supervisor *s)
{
    for (int b = 0; b < s->opt.replicas; b++) {
        struct us_slicer *sl = &s->rep[b].slicer;
        if (!sl->ticker)
            continue;
        kill(sl->ticker, SIGKILL);
        waitpid(sl->ticker, NULL, 0);
        sl->ticker = 0;
    }
}

int us_slicer_on(const struct us_supervisor *s, int slot)
{
    return is_on(&s->rep[slot].slicer);
}
