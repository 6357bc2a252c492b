/*
 * engine.h - the record/replay engine's view of one system call.
 *
 * Every syscall the program makes, whether through an interposed libc symbol
 * or trapped by Syscall User Dispatch, is looked up in the syscall table
 * (systab.c), whose entry says how it is replicated:
 *
 *   PASS     executed in every replica: deterministic given the same state
 *            (memory management, futex, signal masks, exit)
 *   INPUT    executed by the primary only; its result and the buffers it
 *            filled are logged and handed to the backups
 *   OUTPUT   an external effect: executed by the primary only, its result
 *            logged; backups check they would have made the same call
 *   FDNEW    INPUT that creates fds: backups hold placeholders at the same
 *            numbers, so that the fd tables stay identical
 *   CLOSE    closes in every replica (placeholders in the backups)
 *   DUP      executed in every replica (on placeholders in the backups)
 *   SPECIAL  a handler of its own
 *   anything else is refused: the program stops, naming the call.
 */
#ifndef US_ENGINE_H
#define US_ENGINE_H

#include "shim.h"

enum us_kind { K_UNSUPPORTED = 0, K_PASS, K_INPUT, K_OUTPUT, K_FDNEW, K_CLOSE, K_DUP, K_SPECIAL };

struct us_span {
    void *p;
    size_t len;
};
#define US_MAX_SPANS 8

/* Lists the buffers a call filled, given its arguments and result. */
typedef int (*us_outbufs_fn)(const long *a, long ret, struct us_span *sp);
typedef long (*us_special_fn)(struct us_thread *t, long nr, long *a);

struct us_sysdesc {
    uint8_t kind;
    int8_t fd_arg;   /* argument holding the fd, checked on replay; -1 none */
    int8_t size_arg; /* argument holding a size, checked on replay; -1 none */
    us_outbufs_fn out;
    us_special_fn special;
    long (*exec)(const long *a); /* the primary's way to make the call, if not
                                    a raw syscall (time through the vDSO) */
};

#define US_NSYSCALLS 512
extern const struct us_sysdesc us_systab[US_NSYSCALLS];

static inline long us_raw(long nr, const long *a)
{
    return us_raw_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* Generic paths, used by special handlers too. */
long us_record(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d);
long us_replay(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d);
/* The rest of us_replay, for an event already taken by us_expect. */
long us_replay_event(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d,
                     struct us_event *ev);
/* Next event for a replayed call, checked against it; NULL: promoted, go live. */
struct us_event *us_expect(struct us_thread *t, long nr, const long *a, const struct us_sysdesc *d);
void us_consume(struct us_thread *t, struct us_event *ev);
/* Publishes a syscall record, noting signals to run as the call returns. */
void us_publish_call(struct us_thread *t, struct us_event *ev, uint32_t payload);

/* Special handlers (systab.c). */
long us_sock_read(struct us_thread *t, long nr, long *a);

#endif
