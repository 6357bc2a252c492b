/*
 * order.c - versions of shared objects (order.h): the primary's order lock
 * and the backups' wait for their turn.
 */
#include "order.h"

#include <linux/futex.h>
#include <time.h>

#include "shim.h"

struct us_ord us_fd_ord[US_MAX_FDS];
struct us_ord us_as_ord;

void us_ord_lock(struct us_ord *o)
{
    uint32_t c = 0;
    if (__atomic_compare_exchange_n(&o->lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    for (int spins = 0; spins < 200; spins++) {
        __builtin_ia32_pause();
        c = 0;
        if (__atomic_compare_exchange_n(&o->lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
    }
    while (__atomic_exchange_n(&o->lock, 2, __ATOMIC_ACQUIRE) != 0)
        US_SYSCALL4(SYS_futex, &o->lock, FUTEX_WAIT_PRIVATE, 2, 0);
}

void us_ord_unlock(struct us_ord *o)
{
    if (__atomic_exchange_n(&o->lock, 0, __ATOMIC_RELEASE) == 2)
        US_SYSCALL3(SYS_futex, &o->lock, FUTEX_WAKE_PRIVATE, 1);
}

/* cur has reached want, modulo 2^32 */
static inline int reached(uint32_t cur, uint32_t want)
{
    return (int32_t)(cur - want) >= 0;
}

/*
 * The thread we wait for is another thread of this backup, replaying its own
 * ring: spin briefly (it may be running on the other CPU), then yield (it
 * may be runnable on this one), then sleep until it sets its version.
 */
int us_ord_wait(struct us_ord *o, uint32_t version)
{
    uint32_t want = version - 1;
    /* On one CPU the thread we wait for cannot run while we spin. */
    unsigned spin = us_ncpus > 1 ? 100 : 0;
    for (unsigned spins = 0;; spins++) {
        uint32_t cur = __atomic_load_n(&o->version, __ATOMIC_ACQUIRE);
        if (reached(cur, want))
            return 0;
        if (US_UNLIKELY(__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE)))
            return -1; /* the thread we wait for went live instead */
        if (spins < spin) {
            __builtin_ia32_pause();
            continue;
        }
        if (spins < spin + 100) {
            US_SYSCALL0(SYS_sched_yield);
            continue;
        }
        __atomic_add_fetch(&o->waiters, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&o->version, __ATOMIC_SEQ_CST) == cur) {
            struct timespec ts = {0, 10000000}; /* look again at least every 10 ms */
            US_SYSCALL4(SYS_futex, &o->version, FUTEX_WAIT_PRIVATE, cur, &ts);
        }
        __atomic_sub_fetch(&o->waiters, 1, __ATOMIC_SEQ_CST);
    }
}

void us_ord_set(struct us_ord *o, uint32_t version)
{
    __atomic_store_n(&o->version, version, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&o->waiters, __ATOMIC_SEQ_CST))
        US_SYSCALL3(SYS_futex, &o->version, FUTEX_WAKE_PRIVATE, 0x7fffffff);
}
