/*
 * sync.c - pthread synchronisation, recorded on the primary and enforced on
 * the backups.
 *
 * Every pthread primitive whose outcome depends on the thread schedule is
 * interposed. Each synchronisation object gets a logical id when it is first
 * used, carried in the record, so that replicas agree on objects even where
 * their heaps differ; a backup binds its own address to the id it reads.
 * Acquisitions are ordered per object by versions (order.h): a backup thread
 * waits for the acquisition before its own in the primary's order, then
 * takes the object for real (blocking: a trylock that succeeded on the
 * primary may find the predecessor still holding it here). Results that are
 * the schedule's alone (a timed wait that timed out, which thread a barrier
 * picked, a semaphore's value) are replayed from the log.
 *
 * A backup checks that each call is the one the log holds next (same
 * operation, same call site in the program): synchronisation the shim does
 * not see (atomics, a raw futex) shows up there as a divergence.
 *
 * Shapes:
 *   exclusive  mutex, spinlock, rwlock: the version is bumped while the
 *              object is held (rwlock readers share it, so the object's order
 *              lock covers acquisition number and publication);
 *   counted    semaphores: the order lock covers number and publication;
 *   replayed   barrier result, sem_getvalue, tryjoin: the result is logged;
 *   once       pthread_once / call_once: logged only when not done yet;
 *   keys       pthread_key_create/delete: ordered on one object.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <string.h>
#include <threads.h>
#include <time.h>
#include <linux/futex.h>

#include "engine.h"
#include "order.h"

#define US_EXPORT __attribute__((visibility("default")))
#define SITE ((uintptr_t)__builtin_return_address(0))

/* ---- logical objects ------------------------------------------------------ */

#define MAX_OBJS (1u << 18)
#define KEYS_ID 1u /* the process's table of thread-specific data keys */
static struct us_ord objs[MAX_OBJS];
static uint32_t last_id = KEYS_ID; /* highest id handed out or seen */

/* address -> logical id, open addressing; an address keeps its id until a
 * backup learns from the log that the memory now holds another object */
#define NSLOTS (1u << 19)
static struct {
    uintptr_t addr;
    uint32_t id;
    uint32_t pad;
} slots[NSLOTS];

static unsigned slot_of(uintptr_t a)
{
    unsigned i = (unsigned)((a >> 3) * 0x9E3779B1u) & (NSLOTS - 1);
    for (unsigned n = 0; n < NSLOTS; n++, i = (i + 1) & (NSLOTS - 1)) {
        uintptr_t cur = __atomic_load_n(&slots[i].addr, __ATOMIC_ACQUIRE);
        if (cur == a)
            return i;
        if (cur == 0) {
            uintptr_t zero = 0;
            if (__atomic_compare_exchange_n(&slots[i].addr, &zero, a, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE) || zero == a)
                return i;
        }
    }
    us_fatal("more than %u synchronisation objects in use", NSLOTS);
}

/* Primary: the logical id of the object at `p`, given on first use. */
static uint32_t obj_id(const void *p)
{
    unsigned i = slot_of((uintptr_t)p);
    uint32_t id = __atomic_load_n(&slots[i].id, __ATOMIC_ACQUIRE);
    if (US_LIKELY(id))
        return id;
    uint32_t fresh = __atomic_add_fetch(&last_id, 1, __ATOMIC_ACQ_REL);
    if (fresh >= MAX_OBJS)
        us_fatal("more than %u synchronisation objects created", MAX_OBJS);
    uint32_t zero = 0;
    if (__atomic_compare_exchange_n(&slots[i].id, &zero, fresh, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return fresh;
    return zero; /* another thread bound it first; `fresh` stays unused */
}

/* Backup: the object at `p` is the log's `id` (kept for after a promotion,
 * when this replica hands out ids itself and must keep the old ones). */
static void obj_bind(const void *p, uint32_t id)
{
    unsigned i = slot_of((uintptr_t)p);
    __atomic_store_n(&slots[i].id, id, __ATOMIC_RELEASE);
    uint32_t seen = __atomic_load_n(&last_id, __ATOMIC_RELAXED);
    while (seen < id &&
           !__atomic_compare_exchange_n(&last_id, &seen, id, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
}

/* ---- the real functions ------------------------------------------------------ */

static struct {
    int (*mutex_lock)(pthread_mutex_t *);
    int (*mutex_trylock)(pthread_mutex_t *);
    int (*mutex_timedlock)(pthread_mutex_t *, const struct timespec *);
    int (*mutex_clocklock)(pthread_mutex_t *, clockid_t, const struct timespec *);
    int (*cond_wait)(pthread_cond_t *, pthread_mutex_t *);
    int (*cond_timedwait)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    int (*cond_clockwait)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
    int (*mutex_unlock)(pthread_mutex_t *);
    int (*rdlock)(pthread_rwlock_t *);
    int (*tryrdlock)(pthread_rwlock_t *);
    int (*timedrdlock)(pthread_rwlock_t *, const struct timespec *);
    int (*clockrdlock)(pthread_rwlock_t *, clockid_t, const struct timespec *);
    int (*wrlock)(pthread_rwlock_t *);
    int (*trywrlock)(pthread_rwlock_t *);
    int (*timedwrlock)(pthread_rwlock_t *, const struct timespec *);
    int (*clockwrlock)(pthread_rwlock_t *, clockid_t, const struct timespec *);
    int (*spin_lock)(pthread_spinlock_t *);
    int (*spin_trylock)(pthread_spinlock_t *);
    int (*sem_wait)(sem_t *);
    int (*sem_trywait)(sem_t *);
    int (*sem_timedwait)(sem_t *, const struct timespec *);
    int (*sem_clockwait)(sem_t *, clockid_t, const struct timespec *);
    int (*sem_getvalue)(sem_t *, int *);
    int (*barrier_wait)(pthread_barrier_t *);
    int (*once)(pthread_once_t *, void (*)(void));
    int (*key_create)(pthread_key_t *, void (*)(void *));
    int (*key_delete)(pthread_key_t);
    int (*join)(pthread_t, void **);
    int (*tryjoin)(pthread_t, void **);
    int (*timedjoin)(pthread_t, void **, const struct timespec *);
    int (*clockjoin)(pthread_t, void **, clockid_t, const struct timespec *);
} real;

static void *find(const char *name, const char *version)
{
    void *f = version ? dlvsym(RTLD_NEXT, name, version) : NULL;
    if (!f)
        f = dlsym(RTLD_NEXT, name);
    if (!f)
        us_fatal("cannot find %s in libc", name);
    return f;
}

static void sync_init(void)
{
    real.mutex_trylock = find("pthread_mutex_trylock", NULL);
    real.mutex_timedlock = find("pthread_mutex_timedlock", NULL);
    real.mutex_clocklock = find("pthread_mutex_clocklock", NULL);
    real.cond_wait = find("pthread_cond_wait", "GLIBC_2.3.2");
    real.cond_timedwait = find("pthread_cond_timedwait", "GLIBC_2.3.2");
    real.cond_clockwait = find("pthread_cond_clockwait", NULL);
    real.mutex_unlock = find("pthread_mutex_unlock", NULL);
    real.rdlock = find("pthread_rwlock_rdlock", NULL);
    real.tryrdlock = find("pthread_rwlock_tryrdlock", NULL);
    real.timedrdlock = find("pthread_rwlock_timedrdlock", NULL);
    real.clockrdlock = find("pthread_rwlock_clockrdlock", NULL);
    real.wrlock = find("pthread_rwlock_wrlock", NULL);
    real.trywrlock = find("pthread_rwlock_trywrlock", NULL);
    real.timedwrlock = find("pthread_rwlock_timedwrlock", NULL);
    real.clockwrlock = find("pthread_rwlock_clockwrlock", NULL);
    real.spin_lock = find("pthread_spin_lock", NULL);
    real.spin_trylock = find("pthread_spin_trylock", NULL);
    real.sem_wait = find("sem_wait", "GLIBC_2.34");
    real.sem_trywait = find("sem_trywait", "GLIBC_2.34");
    real.sem_timedwait = find("sem_timedwait", "GLIBC_2.34");
    real.sem_clockwait = find("sem_clockwait", NULL);
    real.sem_getvalue = find("sem_getvalue", "GLIBC_2.34");
    real.barrier_wait = find("pthread_barrier_wait", NULL);
    real.once = find("pthread_once", NULL);
    real.key_create = find("pthread_key_create", NULL);
    real.key_delete = find("pthread_key_delete", NULL);
    real.join = find("pthread_join", NULL);
    real.tryjoin = find("pthread_tryjoin_np", NULL);
    real.timedjoin = find("pthread_timedjoin_np", NULL);
    real.clockjoin = find("pthread_clockjoin_np", NULL);
    __atomic_store_n(&real.mutex_lock, find("pthread_mutex_lock", NULL), __ATOMIC_RELEASE);
}

/* This thread's synchronisation is recorded or replayed (not the shim's
 * own, not a thread outside the log). */
static struct us_thread *tracked(void)
{
    if (US_UNLIKELY(!__atomic_load_n(&real.mutex_lock, __ATOMIC_ACQUIRE)))
        sync_init(); /* another library's constructor runs before ours */
    struct us_thread *t = us_self;
    return (t && t->mode != US_MODE_OFF && !t->in_engine) ? t : NULL;
}

/* ---- records ------------------------------------------------------------------ */

void us_sync_record(struct us_thread *t, int op, uint32_t id, const void *addr, uint32_t version,
                    long ret, uintptr_t site)
{
    t->in_engine = 1;
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
    ev->type = US_EV_SYNC;
    ev->fd = op;
    ev->nr = id;
    ev->check = version;
    ev->ret = ret;
    ev->aux = (uint64_t)(uintptr_t)addr;
    ev->site = site;
    us_ring_publish(&us_log_, t->ring, ev, 0);
    t->in_engine = 0;
}

const char *us_sync_op_name(int op)
{
    static const char *const names[] = {
        [US_SYNC_LOCK] = "a mutex lock", [US_SYNC_TRYLOCK] = "a mutex trylock",
        [US_SYNC_COND_RELOCK] = "a condition wait", [US_SYNC_RDLOCK] = "an rwlock read lock",
        [US_SYNC_WRLOCK] = "an rwlock write lock", [US_SYNC_SEM_WAIT] = "a semaphore wait",
        [US_SYNC_SEM_VALUE] = "sem_getvalue", [US_SYNC_SPIN] = "a spinlock",
        [US_SYNC_BARRIER] = "a barrier wait", [US_SYNC_ONCE] = "a pthread_once",
        [US_SYNC_KEY] = "pthread_key_create/delete", [US_SYNC_JOIN] = "a try/timed join",
        [US_SYNC_BARRIER_PASSED] = "a barrier wait",
        [US_SYNC_HEAP_PUT] = "malloc's depot", [US_SYNC_HEAP_TAKE] = "malloc's depot",
        [US_SYNC_STACK] = "a thread's stack",
    };
    return op > 0 && op <= US_SYNC_STACK ? names[op] : "?";
}

US_NORETURN static void sync_diverged(struct us_thread *t, const struct us_event *ev, int op,
                                      uintptr_t site, const char *why)
{
    char what[160];
    us_fmt(what, sizeof(what), "%s at %p: %s", us_sync_op_name(op), (void *)site, why);
    us_diverged_at(t, ev, what);
}

/* A synchronisation call other than the log's: retire, or go live if this
 * replica outvoted the primary (engine.c, us_vote). */
static int sync_mismatch(struct us_thread *t, const struct us_event *ev, int op, uintptr_t site,
                         const char *why)
{
    char what[160];
    us_fmt(what, sizeof(what), "%s at %p: %s", us_sync_op_name(op), (void *)site, why);
    return us_vote_at(t, ev, what, ((uint64_t)op * 0x9E3779B97F4A7C15ull) ^ site);
}

struct us_event *us_sync_expect(struct us_thread *t, int op, uintptr_t site)
{
    struct us_event *ev = us_next_event(t);
    if (!ev)
        return NULL;
    char why[96] = "";
    if (ev->type != US_EV_SYNC || ev->fd != op)
        us_fmt(why, sizeof(why), "the primary did something else here");
    else if (ev->site != site)
        us_fmt(why, sizeof(why), "the primary made it from %p", (void *)ev->site);
    if (why[0] && sync_mismatch(t, ev, op, site, why) == US_VOTE_GO_LIVE)
        return NULL;
    if (ev->nr >= MAX_OBJS)
        us_fatal("corrupt synchronisation record in the log of thread %u", t->ring);
    return ev;
}

/* ---- exclusive and counted acquisitions ------------------------------------------ */

enum acq_kind { A_MUTEX, A_RDLOCK, A_WRLOCK, A_SPIN, A_SEM };

struct acquire {
    enum acq_kind kind;
    int op;
    void *obj;
    int (*attempt)(void *obj, const void *arg1, const void *arg2); /* the call the program made */
    const void *arg1, *arg2;
};

/* The blocking form, for a backup whose turn has come. */
static int take(const struct acquire *q)
{
    switch (q->kind) {
    case A_MUTEX: return real.mutex_lock(q->obj);
    case A_RDLOCK: return real.rdlock(q->obj);
    case A_WRLOCK: return real.wrlock(q->obj);
    case A_SPIN: return real.spin_lock(q->obj);
    case A_SEM:
        while (real.sem_wait(q->obj) < 0 && errno == EINTR)
            ;
        return 0;
    }
    return 0;
}

static int acquire(const struct acquire *q, uintptr_t site)
{
    struct us_thread *t = tracked();
    if (!t)
        return q->attempt(q->obj, q->arg1, q->arg2);
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, q->op, site);
        if (ev) {
            uint32_t id = ev->nr, version = (uint32_t)ev->check;
            int ret = (int)ev->ret;
            if (id == 0)
                us_fatal("corrupt synchronisation record in the log of thread %u", t->ring);
            obj_bind(q->obj, id);
            if (ret == 0) {
                if (us_ord_wait(&objs[id], version) < 0)
                    goto live;
                take(q);
                us_ord_set(&objs[id], version);
            }
            us_consume(t, ev);
            if (q->kind == A_SEM && ret != 0) {
                errno = ret;
                return -1;
            }
            return ret;
        }
    live:
        us_promote(t);
    }
    /* Exclusive holders number their acquisitions while they hold the
     * object; shared ones (readers, semaphore tokens) under its order lock.
     * pthread calls return 0 or an error, sem_* 0 or -1 with errno. */
    int shared = q->kind == A_RDLOCK || q->kind == A_WRLOCK || q->kind == A_SEM;
    uint32_t *spinning = &us_log_.hdr->ring[t->ring].producer_in_spin_lock;
    if (q->kind == A_SPIN) /* the supervisor's spin detection: not a hang */
        __atomic_store_n(spinning, 1, __ATOMIC_RELAXED);
    int r = q->attempt(q->obj, q->arg1, q->arg2);
    if (q->kind == A_SPIN)
        __atomic_store_n(spinning, 0, __ATOMIC_RELAXED);
    int err = q->kind == A_SEM ? (r == 0 ? 0 : errno) : r;
    uint32_t id = obj_id(q->obj);
    struct us_ord *o = &objs[id];
    if (r != 0) {
        us_sync_record(t, q->op, id, q->obj, 0, err, site);
        if (q->kind == A_SEM)
            errno = err;
        return r;
    }
    if (shared)
        us_ord_lock(o);
    us_sync_record(t, q->op, id, q->obj, us_ord_bump(o), 0, site);
    if (shared)
        us_ord_unlock(o);
    return r;
}

#define ACQ(kind_, op_, obj_, fn_, a1_, a2_) \
    acquire(&(struct acquire){kind_, op_, (void *)(obj_), fn_, a1_, a2_}, SITE)

static int do_mutex_lock(void *m, const void *a, const void *b) { (void)a; (void)b; return real.mutex_lock(m); }
static int do_mutex_trylock(void *m, const void *a, const void *b) { (void)a; (void)b; return real.mutex_trylock(m); }
static int do_mutex_timedlock(void *m, const void *ts, const void *b) { (void)b; return real.mutex_timedlock(m, ts); }
static int do_mutex_clocklock(void *m, const void *clk, const void *ts)
{
    return real.mutex_clocklock(m, *(const clockid_t *)clk, ts);
}

/*
 * An empty critical section's lock (empty_section.c): taken for real, not
 * ordered. A backup thread blocked here by a thread that stopped replaying at
 * a cut (us_replay_cut) and waits for every thread to park, parks too: it
 * has done nothing unlogged since its last call.
 */
static int lock_unordered(struct us_thread *t, pthread_mutex_t *m)
{
    if (t->mode != US_MODE_REPLAY)
        return real.mutex_lock(m);
    for (;;) {
        int r = real.mutex_trylock(m);
        if (r != EBUSY)
            return r;
        if (__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE)) {
            us_promote(t);
            return real.mutex_lock(m);
        }
        struct timespec ts;
        US_SYSCALL2(SYS_clock_gettime, CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        r = real.mutex_timedlock(m, &ts);
        if (r != ETIMEDOUT)
            return r;
    }
}

/* pthread_mutex_lock, from its entry stub (lock_entry.S). */
int us_mutex_lock_from(pthread_mutex_t *m, const struct us_callee_saved *saved, uintptr_t site)
{
    struct us_thread *t = tracked();
    if (t && us_empty_section(site, m, saved, (const void *)real.mutex_unlock))
        return lock_unordered(t, m);
    return acquire(&(struct acquire){A_MUTEX, US_SYNC_LOCK, m, do_mutex_lock, 0, 0}, site);
}
US_EXPORT int pthread_mutex_trylock(pthread_mutex_t *m)
{
    return ACQ(A_MUTEX, US_SYNC_TRYLOCK, m, do_mutex_trylock, 0, 0);
}
US_EXPORT int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abstime)
{
    return ACQ(A_MUTEX, US_SYNC_LOCK, m, do_mutex_timedlock, abstime, 0);
}
US_EXPORT int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clk, const struct timespec *abstime)
{
    return ACQ(A_MUTEX, US_SYNC_LOCK, m, do_mutex_clocklock, &clk, abstime);
}

static int do_rdlock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.rdlock(l); }
static int do_tryrdlock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.tryrdlock(l); }
static int do_timedrdlock(void *l, const void *ts, const void *b) { (void)b; return real.timedrdlock(l, ts); }
static int do_clockrdlock(void *l, const void *clk, const void *ts)
{
    return real.clockrdlock(l, *(const clockid_t *)clk, ts);
}
static int do_wrlock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.wrlock(l); }
static int do_trywrlock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.trywrlock(l); }
static int do_timedwrlock(void *l, const void *ts, const void *b) { (void)b; return real.timedwrlock(l, ts); }
static int do_clockwrlock(void *l, const void *clk, const void *ts)
{
    return real.clockwrlock(l, *(const clockid_t *)clk, ts);
}

US_EXPORT int pthread_rwlock_rdlock(pthread_rwlock_t *l)
{
    return ACQ(A_RDLOCK, US_SYNC_RDLOCK, l, do_rdlock, 0, 0);
}
US_EXPORT int pthread_rwlock_tryrdlock(pthread_rwlock_t *l)
{
    return ACQ(A_RDLOCK, US_SYNC_RDLOCK, l, do_tryrdlock, 0, 0);
}
US_EXPORT int pthread_rwlock_timedrdlock(pthread_rwlock_t *l, const struct timespec *abstime)
{
    return ACQ(A_RDLOCK, US_SYNC_RDLOCK, l, do_timedrdlock, abstime, 0);
}
US_EXPORT int pthread_rwlock_clockrdlock(pthread_rwlock_t *l, clockid_t clk, const struct timespec *abstime)
{
    return ACQ(A_RDLOCK, US_SYNC_RDLOCK, l, do_clockrdlock, &clk, abstime);
}
US_EXPORT int pthread_rwlock_wrlock(pthread_rwlock_t *l)
{
    return ACQ(A_WRLOCK, US_SYNC_WRLOCK, l, do_wrlock, 0, 0);
}
US_EXPORT int pthread_rwlock_trywrlock(pthread_rwlock_t *l)
{
    return ACQ(A_WRLOCK, US_SYNC_WRLOCK, l, do_trywrlock, 0, 0);
}
US_EXPORT int pthread_rwlock_timedwrlock(pthread_rwlock_t *l, const struct timespec *abstime)
{
    return ACQ(A_WRLOCK, US_SYNC_WRLOCK, l, do_timedwrlock, abstime, 0);
}
US_EXPORT int pthread_rwlock_clockwrlock(pthread_rwlock_t *l, clockid_t clk, const struct timespec *abstime)
{
    return ACQ(A_WRLOCK, US_SYNC_WRLOCK, l, do_clockwrlock, &clk, abstime);
}

static int do_spin_lock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.spin_lock(l); }
static int do_spin_trylock(void *l, const void *a, const void *b) { (void)a; (void)b; return real.spin_trylock(l); }

US_EXPORT int pthread_spin_lock(pthread_spinlock_t *l)
{
    return ACQ(A_SPIN, US_SYNC_SPIN, (void *)l, do_spin_lock, 0, 0);
}
US_EXPORT int pthread_spin_trylock(pthread_spinlock_t *l)
{
    return ACQ(A_SPIN, US_SYNC_SPIN, (void *)l, do_spin_trylock, 0, 0);
}

static int do_sem_wait(void *s, const void *a, const void *b) { (void)a; (void)b; return real.sem_wait(s); }
static int do_sem_trywait(void *s, const void *a, const void *b) { (void)a; (void)b; return real.sem_trywait(s); }
static int do_sem_timedwait(void *s, const void *ts, const void *b) { (void)b; return real.sem_timedwait(s, ts); }
static int do_sem_clockwait(void *s, const void *clk, const void *ts)
{
    return real.sem_clockwait(s, *(const clockid_t *)clk, ts);
}

US_EXPORT int sem_wait(sem_t *s) { return ACQ(A_SEM, US_SYNC_SEM_WAIT, s, do_sem_wait, 0, 0); }
US_EXPORT int sem_trywait(sem_t *s) { return ACQ(A_SEM, US_SYNC_SEM_WAIT, s, do_sem_trywait, 0, 0); }
US_EXPORT int sem_timedwait(sem_t *s, const struct timespec *abstime)
{
    return ACQ(A_SEM, US_SYNC_SEM_WAIT, s, do_sem_timedwait, abstime, 0);
}
US_EXPORT int sem_clockwait(sem_t *s, clockid_t clk, const struct timespec *abstime)
{
    return ACQ(A_SEM, US_SYNC_SEM_WAIT, s, do_sem_clockwait, &clk, abstime);
}

/* ---- condition variables ---------------------------------------------------------- */

/*
 * A wait is an unlock, then a re-acquisition of the mutex that is logged like
 * any other, with the outcome (woken, timed out) the primary saw. A backup
 * never sleeps on the condition: it releases the mutex as the primary did and
 * re-takes it at its turn. Signal and broadcast need no record.
 */
static int cond_common(pthread_cond_t *c, pthread_mutex_t *m, int clk, const struct timespec *abstime,
                       uintptr_t site)
{
    struct us_thread *t = tracked();
    int r;
    if (!t)
        goto native;
    if (t->mode == US_MODE_REPLAY) {
        real.mutex_unlock(m);
        struct us_event *ev = us_sync_expect(t, US_SYNC_COND_RELOCK, site);
        if (ev) {
            uint32_t id = ev->nr, version = (uint32_t)ev->check;
            int ret = (int)ev->ret;
            if (version == 0) { /* the wait failed (bad arguments) in the primary */
                real.mutex_lock(m);
                us_consume(t, ev);
                return ret;
            }
            obj_bind(m, id);
            if (us_ord_wait(&objs[id], version) < 0)
                goto live;
            real.mutex_lock(m);
            us_ord_set(&objs[id], version);
            us_consume(t, ev);
            return ret;
        }
        /* Promoted while waiting: wake up spuriously (allowed), holding the
         * mutex again, as a primary now. */
    live:
        us_promote(t);
        r = real.mutex_lock(m);
        if (r == 0) {
            uint32_t id = obj_id(m);
            us_sync_record(t, US_SYNC_COND_RELOCK, id, m, us_ord_bump(&objs[id]), 0, site);
        }
        return r;
    }
native:
    if (!abstime)
        r = real.cond_wait(c, m);
    else if (clk < 0)
        r = real.cond_timedwait(c, m, abstime);
    else
        r = real.cond_clockwait(c, m, clk, abstime);
    if (t) {
        /* the mutex is held again unless the wait failed outright */
        uint32_t id = obj_id(m);
        int held = r == 0 || r == ETIMEDOUT || r == EOWNERDEAD;
        us_sync_record(t, US_SYNC_COND_RELOCK, id, m, held ? us_ord_bump(&objs[id]) : 0, r, site);
    }
    return r;
}

US_EXPORT int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
    return cond_common(c, m, -1, NULL, SITE);
}
US_EXPORT int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abstime)
{
    return cond_common(c, m, -1, abstime, SITE);
}
US_EXPORT int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                                     const struct timespec *abstime)
{
    return cond_common(c, m, (int)clk, abstime, SITE);
}

/* ---- results replayed from the log ------------------------------------------------
 * A result of the schedule's alone: the primary logs it, a backup returns it,
 * after doing the part of the call that must happen in every replica. These
 * records order nothing and carry no object id. */


US_EXPORT int sem_getvalue(sem_t *restrict s, int *restrict value)
{
    uintptr_t site = SITE;
    struct us_thread *t = tracked();
    if (t && t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, US_SYNC_SEM_VALUE, site);
        if (ev) {
            *value = (int)ev->ret;
            us_consume(t, ev);
            return 0;
        }
        us_promote(t);
    }
    int r = real.sem_getvalue(s, value);
    if (t && r == 0)
        us_sync_record(t, US_SYNC_SEM_VALUE, 0, s, 0, *value, site);
    return r;
}

/*
 * Which thread a barrier names PTHREAD_BARRIER_SERIAL_THREAD is the
 * schedule's choice; every replica still waits at the barrier for real. The
 * arrival is logged before waiting, so that at a promotion a backup thread
 * whose twin passed the barrier is not left waiting for a partner whose
 * arrival the dead primary never logged: that partner goes live and arrives.
 *
 * A round a promotion splits (some threads' results logged, others' not)
 * must still name one serial thread: the logged results give the primary's
 * choice, not the barrier here. Per barrier, a backup numbers the arrivals
 * (round = arrival / count: every arrival of a round comes before any of
 * the next, which needs the round passed) and counts the rounds whose
 * serial thread it has named; a thread left without a logged result is its
 * round's serial one if the round has none yet. By then every logged result
 * of the round has been handed out (the promotion waited for every ring to
 * be replayed). Threads of that round that arrive live name theirs the same
 * way, and so does every later round of a barrier the replica replayed: the
 * barrier's own choice could be a second serial thread in the split round.
 */
#define BARRIER_SLOTS 64
static struct {
    uintptr_t addr;
    uint32_t arrivals, serials;
} barriers[BARRIER_SLOTS];

/* Threads per round: glibc's struct pthread_barrier {in, current_round,
 * count, shared, out} (nptl, since 2.23). */
static uint32_t barrier_count(const pthread_barrier_t *b)
{
    uint32_t count;
    memcpy(&count, (const char *)b + 2 * sizeof(uint32_t), sizeof(count));
    return count ? count : 1;
}

/* The barrier's slot; a new one if `add`, else -1 if it has none. */
static int barrier_slot(const pthread_barrier_t *b, int add)
{
    uintptr_t a = (uintptr_t)b, none = 0;
    unsigned i = (unsigned)((a >> 4) * 0x9E3779B1u) % BARRIER_SLOTS;
    for (unsigned n = 0; n < BARRIER_SLOTS; n++, i = (i + 1) % BARRIER_SLOTS) {
        uintptr_t cur = __atomic_load_n(&barriers[i].addr, __ATOMIC_ACQUIRE);
        if (cur == a)
            return (int)i;
        if (cur != 0)
            continue;
        if (!add)
            return -1;
        if (__atomic_compare_exchange_n(&barriers[i].addr, &none, a, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE) || none == a)
            return (int)i;
        none = 0;
    }
    if (add)
        us_fatal("more than %d barriers: understudy replicates no more", BARRIER_SLOTS);
    return -1;
}

static uint32_t barrier_arrive(int slot, const pthread_barrier_t *b)
{
    return __atomic_fetch_add(&barriers[slot].arrivals, 1, __ATOMIC_ACQ_REL) / barrier_count(b);
}

/* The first thread of `round` to ask is its serial thread. */
static int barrier_name_serial(int slot, uint32_t round)
{
    uint32_t unnamed = round; /* serials == round: the round's is not named yet */
    return __atomic_compare_exchange_n(&barriers[slot].serials, &unnamed, round + 1, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
               ? PTHREAD_BARRIER_SERIAL_THREAD : 0;
}

US_EXPORT int pthread_barrier_wait(pthread_barrier_t *b)
{
    uintptr_t site = SITE;
    struct us_thread *t = tracked();
    if (t && t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, US_SYNC_BARRIER, site);
        if (ev) {
            us_consume(t, ev);
            int slot = barrier_slot(b, 1);
            uint32_t round = barrier_arrive(slot, b);
            int r = real.barrier_wait(b);
            ev = us_sync_expect(t, US_SYNC_BARRIER_PASSED, site);
            if (ev) {
                r = (int)ev->ret;
                if (r == PTHREAD_BARRIER_SERIAL_THREAD)
                    __atomic_add_fetch(&barriers[slot].serials, 1, __ATOMIC_ACQ_REL);
                us_consume(t, ev);
                return r;
            }
            us_promote(t);
            if (r == 0 || r == PTHREAD_BARRIER_SERIAL_THREAD)
                r = barrier_name_serial(slot, round);
            us_sync_record(t, US_SYNC_BARRIER_PASSED, 0, b, 0, r, site);
            return r;
        }
        us_promote(t);
    }
    if (t)
        us_sync_record(t, US_SYNC_BARRIER, 0, b, 0, 0, site);
    int slot = t ? barrier_slot(b, 0) : -1; /* replayed here before: we name serials */
    uint32_t round = slot >= 0 ? barrier_arrive(slot, b) : 0;
    int r = real.barrier_wait(b);
    if (slot >= 0 && (r == 0 || r == PTHREAD_BARRIER_SERIAL_THREAD))
        r = barrier_name_serial(slot, round);
    if (t)
        us_sync_record(t, US_SYNC_BARRIER_PASSED, 0, b, 0, r, site);
    return r;
}

/* tryjoin/timedjoin: whether the thread had ended is the schedule's; a
 * backup that must succeed waits for its twin to end. */
static int join_common(pthread_t th, void **retval, int kind, clockid_t clk,
                       const struct timespec *abstime, uintptr_t site)
{
    struct us_thread *t = tracked();
    if (t && t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, US_SYNC_JOIN, site);
        if (ev) {
            int ret = (int)ev->ret;
            us_consume(t, ev);
            if (ret == 0 && (ret = real.join(th, retval)) == 0)
                us_thread_joined(th);
            return ret;
        }
        us_promote(t);
    }
    int r = kind == 0 ? real.tryjoin(th, retval)
            : kind == 1 ? real.timedjoin(th, retval, abstime)
                        : real.clockjoin(th, retval, clk, abstime);
    if (t)
        us_sync_record(t, US_SYNC_JOIN, 0, (void *)th, 0, r, site);
    if (r == 0)
        us_thread_joined(th);
    return r;
}

US_EXPORT int pthread_tryjoin_np(pthread_t th, void **retval)
{
    return join_common(th, retval, 0, 0, NULL, SITE);
}
US_EXPORT int pthread_timedjoin_np(pthread_t th, void **retval, const struct timespec *abstime)
{
    return join_common(th, retval, 1, 0, abstime, SITE);
}
US_EXPORT int pthread_clockjoin_np(pthread_t th, void **retval, clockid_t clk, const struct timespec *abstime)
{
    return join_common(th, retval, 2, clk, abstime, SITE);
}

/* ---- once ----------------------------------------------------------------------- */

#define ONCE_DONE 2 /* glibc's __PTHREAD_ONCE_DONE bit */

static int once_done(pthread_once_t *o)
{
    return (__atomic_load_n((int *)o, __ATOMIC_ACQUIRE) & ONCE_DONE) != 0;
}

/*
 * Which thread runs the initialiser is the schedule's choice. The primary
 * logs a call only when it finds the initialisation not done, and before
 * running it (its events follow in the same ring). A backup whose next event
 * is not that record knows the primary found it done: it waits until the
 * initialiser has run here too.
 */
static int once_common(pthread_once_t *o, void (*init)(void), uintptr_t site)
{
    struct us_thread *t = tracked();
    if (!t)
        return real.once(o, init);
    if (t->mode == US_MODE_REPLAY) {
        /* Ours if it is a once record of this call site and object (once
         * controls are static data, at one address in every replica). */
        struct us_event *ev = us_next_event(t);
        if (ev && ev->type == US_EV_SYNC && ev->fd == US_SYNC_ONCE && ev->site == site &&
            ev->aux == (uint64_t)(uintptr_t)o) {
            uint32_t id = ev->nr, version = (uint32_t)ev->check;
            if (id == 0 || id >= MAX_OBJS)
                us_fatal("corrupt synchronisation record in the log of thread %u", t->ring);
            obj_bind(o, id);
            if (us_ord_wait(&objs[id], version) < 0)
                goto live;
            us_consume(t, ev);
            int r = real.once(o, init);
            us_ord_set(&objs[id], version);
            return r;
        }
        if (ev) {
            while (!once_done(o)) {
                if (__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE))
                    goto live; /* the thread running it may be parked */
                struct timespec ts = {0, 50000};
                US_SYSCALL2(SYS_nanosleep, &ts, 0);
            }
            return 0;
        }
    live:
        us_promote(t);
    }
    if (once_done(o))
        return 0;
    uint32_t id = obj_id(o);
    struct us_ord *ord = &objs[id];
    us_ord_lock(ord);
    if (once_done(o)) {
        us_ord_unlock(ord);
        return 0;
    }
    us_sync_record(t, US_SYNC_ONCE, id, o, us_ord_bump(ord), 0, site);
    int r = real.once(o, init);
    us_ord_unlock(ord);
    return r;
}

US_EXPORT int pthread_once(pthread_once_t *o, void (*init)(void))
{
    return once_common(o, init, SITE);
}
US_EXPORT void call_once(once_flag *flag, void (*fn)(void))
{
    once_common((pthread_once_t *)flag, fn, SITE);
}

/* ---- thread-specific data keys --------------------------------------------------- */

/* Key numbers are handed out by a race between creating threads: ordered. */
static int key_common(pthread_key_t *key, pthread_key_t del, void (*dtor)(void *), uintptr_t site)
{
    struct us_thread *t = tracked();
    struct us_ord *o = &objs[KEYS_ID];
    if (!t)
        return key ? real.key_create(key, dtor) : real.key_delete(del);
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, US_SYNC_KEY, site);
        if (ev) {
            if (us_ord_wait(o, (uint32_t)ev->check) < 0)
                goto live;
            int r = key ? real.key_create(key, dtor) : real.key_delete(del);
            if (r != (int)ev->ret || (key && r == 0 && *key != (pthread_key_t)ev->aux))
                sync_diverged(t, ev, US_SYNC_KEY, site, "the primary got another key");
            us_ord_set(o, (uint32_t)ev->check);
            us_consume(t, ev);
            return r;
        }
    live:
        us_promote(t);
    }
    us_ord_lock(o);
    int r = key ? real.key_create(key, dtor) : real.key_delete(del);
    us_sync_record(t, US_SYNC_KEY, KEYS_ID, (void *)(uintptr_t)(key && r == 0 ? *key : del),
           us_ord_bump(o), r, site);
    us_ord_unlock(o);
    return r;
}

US_EXPORT int pthread_key_create(pthread_key_t *key, void (*dtor)(void *))
{
    return key_common(key, 0, dtor, SITE);
}
US_EXPORT int pthread_key_delete(pthread_key_t key)
{
    return key_common(NULL, key, NULL, SITE);
}

/* ---- C11 threads: glibc implements them on the pthread calls internally,
 * out of reach of interposition, so they are interposed too -------------------- */

static int thrd_result(int r)
{
    switch (r) {
    case 0: return thrd_success;
    case EBUSY: return thrd_busy;
    case ETIMEDOUT: return thrd_timedout;
    case ENOMEM: return thrd_nomem;
    default: return thrd_error;
    }
}

US_EXPORT int mtx_lock(mtx_t *m)
{
    return thrd_result(ACQ(A_MUTEX, US_SYNC_LOCK, m, do_mutex_lock, 0, 0));
}
US_EXPORT int mtx_trylock(mtx_t *m)
{
    return thrd_result(ACQ(A_MUTEX, US_SYNC_TRYLOCK, m, do_mutex_trylock, 0, 0));
}
US_EXPORT int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
    return thrd_result(ACQ(A_MUTEX, US_SYNC_LOCK, m, do_mutex_timedlock, ts, 0));
}
US_EXPORT int cnd_wait(cnd_t *c, mtx_t *m)
{
    return thrd_result(cond_common((pthread_cond_t *)c, (pthread_mutex_t *)m, -1, NULL, SITE));
}
US_EXPORT int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict ts)
{
    return thrd_result(cond_common((pthread_cond_t *)c, (pthread_mutex_t *)m, -1, ts, SITE));
}
