/*
 * sync.c - the order in which threads acquire mutexes, recorded and enforced.
 *
 * Threads that share memory under a mutex make the program's state depend
 * on which thread got the mutex first. Each mutex has a version: the number
 * of times it was acquired. The primary logs, in the acquiring thread's own
 * ring, the version it got (no global lock: the version is bumped while the
 * mutex is held). A backup thread waits until the mutex reaches the version
 * before the logged one, then takes it. Condition variables need no record
 * of their own: a wait is an unlock, then a re-acquisition that is logged
 * like any other, with the outcome (woken or timed out) the primary saw; a
 * backup never sleeps on the condition itself, it follows the log.
 *
 * Objects are identified by address (the address spaces of the replicas are
 * identical); a mismatch is reported as a divergence. Not yet covered:
 * rwlocks, semaphores, barriers, spinlocks (docs/design.md).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>

#include "engine.h"

#define US_EXPORT __attribute__((visibility("default")))

enum sync_op { SYNC_LOCK = 1, SYNC_TRYLOCK = 2, SYNC_COND_RELOCK = 3, SYNC_TIMEDLOCK = 4 };

/* Versions of the mutexes of this replica: open addressing on the address. */
#define NSLOTS 65536
struct version {
    uint32_t lo, hi;     /* the version; `lo` doubles as the futex word */
    uint32_t waiters;    /* backup threads sleeping on `lo` */
    uint32_t pad;
};

static struct {
    uintptr_t addr;
    struct version v;
} slots[NSLOTS];

static inline uint64_t version_get(const struct version *v)
{
    uint32_t hi, lo;
    do {
        hi = __atomic_load_n(&v->hi, __ATOMIC_ACQUIRE);
        lo = __atomic_load_n(&v->lo, __ATOMIC_ACQUIRE);
    } while (hi != __atomic_load_n(&v->hi, __ATOMIC_ACQUIRE));
    return (uint64_t)hi << 32 | lo;
}

/* Only the holder of the mutex sets its version. */
static inline void version_set(struct version *v, uint64_t value)
{
    __atomic_store_n(&v->hi, (uint32_t)(value >> 32), __ATOMIC_RELEASE);
    __atomic_store_n(&v->lo, (uint32_t)value, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&v->waiters, __ATOMIC_SEQ_CST))
        US_SYSCALL3(SYS_futex, &v->lo, FUTEX_WAKE_PRIVATE, 0x7fffffff);
}

static struct version *version_of(const void *m)
{
    uintptr_t a = (uintptr_t)m;
    unsigned i = (unsigned)((a >> 3) * 0x9E3779B1u) & (NSLOTS - 1);
    for (unsigned n = 0; n < NSLOTS; n++, i = (i + 1) & (NSLOTS - 1)) {
        uintptr_t cur = __atomic_load_n(&slots[i].addr, __ATOMIC_ACQUIRE);
        if (cur == a)
            return &slots[i].v;
        if (cur == 0) {
            uintptr_t zero = 0;
            if (__atomic_compare_exchange_n(&slots[i].addr, &zero, a, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE) || zero == a)
                return &slots[i].v;
        }
    }
    us_fatal("more than %d mutexes in use", NSLOTS);
}

static int (*real_lock)(pthread_mutex_t *);
static int (*real_trylock)(pthread_mutex_t *);
static int (*real_timedlock)(pthread_mutex_t *, const struct timespec *);
static int (*real_unlock)(pthread_mutex_t *);
static int (*real_cond_wait)(pthread_cond_t *, pthread_mutex_t *);
static int (*real_cond_timedwait)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);

void us_sync_init(void);
void us_sync_init(void)
{
    real_lock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
    real_trylock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_trylock");
    real_timedlock = (int (*)(pthread_mutex_t *, const struct timespec *))dlsym(
        RTLD_NEXT, "pthread_mutex_timedlock");
    real_unlock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_unlock");
    real_cond_wait = (int (*)(pthread_cond_t *, pthread_mutex_t *))dlvsym(
        RTLD_NEXT, "pthread_cond_wait", "GLIBC_2.3.2");
    real_cond_timedwait = (int (*)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *))
        dlvsym(RTLD_NEXT, "pthread_cond_timedwait", "GLIBC_2.3.2");
    if (!real_lock || !real_trylock || !real_timedlock || !real_unlock || !real_cond_wait ||
        !real_cond_timedwait)
        us_fatal("cannot find the pthread functions in libc");
}

/* Is this thread's sync to be recorded or replayed? */
static struct us_thread *tracked(void)
{
    struct us_thread *t = us_self;
    if (US_UNLIKELY(!real_lock))
        us_sync_init(); /* called by another library's constructor, before ours */
    return (t && t->mode != US_MODE_OFF && !t->in_engine) ? t : NULL;
}

static void record(struct us_thread *t, int op, const void *m, uint64_t version, int ret)
{
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
    ev->type = US_EV_SYNC;
    ev->fd = op;
    ev->aux = (uint64_t)(uintptr_t)m;
    ev->check = version;
    ev->ret = ret;
    us_ring_publish(&us_log_, t->ring, ev, 0);
}

/* Backup: the logged acquisition for this call; NULL once promoted. */
static struct us_event *expect(struct us_thread *t, int op, const void *m)
{
    struct us_event *ev = us_next_event(t);
    if (!ev)
        return NULL;
    if (ev->type != US_EV_SYNC || ev->fd != op || ev->aux != (uint64_t)(uintptr_t)m) {
        long a[6] = {(long)(uintptr_t)m, 0, 0, 0, 0, 0};
        us_diverged(t, ev, 0, a, "the primary took another lock here");
    }
    return ev;
}

/* Backup: take `m` as the acquisition number `version` of it. The thread
 * before us in the log's order wakes us when it sets its version. */
static void acquire_in_order(pthread_mutex_t *m, uint64_t version)
{
    struct version *v = version_of(m);
    for (unsigned spins = 0;; spins++) {
        uint64_t cur = version_get(v);
        if (cur == version - 1)
            break;
        if (spins < 100) {
            __builtin_ia32_pause();
            continue;
        }
        if (spins < 200) {
            /* the thread we wait for may be runnable on this very CPU */
            US_SYSCALL0(SYS_sched_yield);
            continue;
        }
        __atomic_add_fetch(&v->waiters, 1, __ATOMIC_SEQ_CST);
        if (version_get(v) == cur) {
            struct timespec ts = {0, 10000000}; /* re-check at least every 10 ms */
            US_SYSCALL4(SYS_futex, &v->lo, FUTEX_WAIT_PRIVATE, (uint32_t)cur, &ts);
        }
        __atomic_sub_fetch(&v->waiters, 1, __ATOMIC_SEQ_CST);
    }
    real_lock(m);
    version_set(v, version);
}

/* Primary: we hold `m` now; log which acquisition of it this is. */
static void note_acquired(struct us_thread *t, int op, pthread_mutex_t *m, int ret)
{
    struct version *v = version_of(m);
    uint64_t mine = version_get(v) + 1;
    version_set(v, mine);
    t->in_engine = 1;
    record(t, op, m, mine, ret);
    t->in_engine = 0;
}

static int lock_common(pthread_mutex_t *m, int op, const struct timespec *abstime)
{
    struct us_thread *t = tracked();
    if (!t)
        return op == SYNC_TRYLOCK ? real_trylock(m)
               : op == SYNC_TIMEDLOCK ? real_timedlock(m, abstime) : real_lock(m);
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = expect(t, op, m);
        if (ev) {
            int ret = (int)ev->ret;
            uint64_t version = ev->check;
            us_consume(t, ev);
            if (ret == 0)
                acquire_in_order(m, version);
            return ret;
        }
        us_promote(t);
    }
    int r = op == SYNC_TRYLOCK ? real_trylock(m)
            : op == SYNC_TIMEDLOCK ? real_timedlock(m, abstime) : real_lock(m);
    if (r == 0)
        note_acquired(t, op, m, 0);
    else {
        t->in_engine = 1;
        record(t, op, m, 0, r);
        t->in_engine = 0;
    }
    return r;
}

US_EXPORT int pthread_mutex_lock(pthread_mutex_t *m) { return lock_common(m, SYNC_LOCK, NULL); }
US_EXPORT int pthread_mutex_trylock(pthread_mutex_t *m) { return lock_common(m, SYNC_TRYLOCK, NULL); }
US_EXPORT int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abstime)
{
    return lock_common(m, SYNC_TIMEDLOCK, abstime);
}
US_EXPORT int pthread_mutex_unlock(pthread_mutex_t *m) { return real_unlock(m); }

static int cond_common(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abstime)
{
    struct us_thread *t = tracked();
    if (!t)
        return abstime ? real_cond_timedwait(c, m, abstime) : real_cond_wait(c, m);
    if (t->mode == US_MODE_REPLAY) {
        /* The wait releases the mutex first, as the primary's did, before
         * the re-acquisition is even logged. */
        real_unlock(m);
        struct us_event *ev = expect(t, SYNC_COND_RELOCK, m);
        if (ev) {
            int ret = (int)ev->ret;
            uint64_t version = ev->check;
            us_consume(t, ev);
            acquire_in_order(m, version);
            return ret;
        }
        /* Promoted while waiting: wake up spuriously (allowed), holding the
         * mutex again, as a primary now. */
        us_promote(t);
        int r = real_lock(m);
        if (r == 0)
            note_acquired(t, SYNC_COND_RELOCK, m, 0);
        return r;
    }
    int r = abstime ? real_cond_timedwait(c, m, abstime) : real_cond_wait(c, m);
    note_acquired(t, SYNC_COND_RELOCK, m, r);
    return r;
}

US_EXPORT int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m) { return cond_common(c, m, NULL); }
US_EXPORT int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abstime)
{
    return cond_common(c, m, abstime);
}
