/*
 * order.h - the order of operations on shared objects, recorded on the
 * primary and enforced on the backups.
 *
 * Threads that share something (a mutex, an fd number, the address space)
 * make the program's state depend on which thread got there first. Each such
 * object has a version: the number of ordered operations done on it. The
 * primary logs, in the acting thread's own ring, the version its operation
 * gave the object; a backup thread waits until the object reaches the version
 * before, does the operation, and sets the version. There is no global lock:
 * threads touching different objects never wait for each other.
 *
 * On the primary, the version must be taken atomically with the operation
 * and published before the next operation on the object can take the next
 * one, or a backup could wait for a version nobody logged. Exclusive objects
 * (a held mutex) give that for free; others take the object's order lock
 * around operation, bump and publish (us_ord_lock).
 *
 * Versions are 32-bit and compared modulo 2^32: a backup never lags two
 * billion operations behind on one object.
 */
#ifndef US_ORDER_H
#define US_ORDER_H

#include <stdint.h>

struct us_ord {
    uint32_t version; /* also the futex word backups sleep on */
    uint32_t waiters; /* backup threads asleep on version */
    uint32_t lock;    /* primary: the order lock (0 free, 1 held, 2 contended) */
    uint32_t pad;
};

/* Primary. */
void us_ord_lock(struct us_ord *o);
void us_ord_unlock(struct us_ord *o);
static inline uint32_t us_ord_bump(struct us_ord *o)
{
    uint32_t v = __atomic_load_n(&o->version, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&o->version, v, __ATOMIC_RELEASE);
    return v;
}

/* Backup: wait until the object has reached version - 1 (its predecessor
 * in the log's order is done), then, once the operation is done, set it.
 * us_ord_wait returns -1 instead if replay was cut short (us_replay_cut):
 * the thread then goes live without doing the logged operation. */
int us_ord_wait(struct us_ord *o, uint32_t version) __attribute__((warn_unused_result));
void us_ord_set(struct us_ord *o, uint32_t version);

/* The objects every replica orders: fd numbers and the address space. */
extern struct us_ord us_fd_ord[];
extern struct us_ord us_as_ord;
/* Backup: held while the shim puts an fd at a chosen number or opens one of
 * its own (which takes the lowest free number for an instant). */
extern struct us_ord us_backup_fdtable_lock;

#endif
