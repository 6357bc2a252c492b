/*
 * log_format.h - the layout of understudy's shared-memory log.
 *
 * This header is the only contract between the shim (libunderstudy.so, inside
 * every replica) and the supervisor. The log is one memfd mapped by all of
 * them:
 *
 *   [struct us_log_header]  control: replicas, per-thread ring positions
 *   [ring 0][ring 1]...     one byte ring per logical thread, ring_size each
 *
 * Each ring has one producer (the primary's thread with that logical id) and
 * one consumer per backup (the twin thread of each backup). Records are
 * struct us_event followed by their payload, 8-byte aligned, never straddling
 * the end of the ring (a US_EV_PAD record fills the tail instead).
 *
 * Rule for changing anything here: bump US_LOG_VERSION. A replica checks the
 * magic and version when it attaches and refuses a log it does not know.
 */
#ifndef UNDERSTUDY_LOG_FORMAT_H
#define UNDERSTUDY_LOG_FORMAT_H

#include <stdint.h>

#define US_LOG_MAGIC 0x474f4c5955445355ull /* "USDYLOG" little-endian-ish */
#define US_LOG_VERSION 5u

#define US_MAX_THREADS 64  /* logical threads per replicated program */
#define US_MAX_REPLICAS 8  /* primary + backups */
#define US_CACHELINE 64

/* Replica roles and states, in struct us_replica.role / .state. */
enum us_role { US_ROLE_NONE = 0, US_ROLE_PRIMARY = 1, US_ROLE_BACKUP = 2 };
enum us_replica_state {
    US_REPLICA_UNUSED = 0,
    US_REPLICA_STARTING = 1, /* spawned, shim not attached yet */
    US_REPLICA_RUNNING = 2,  /* attached: recording or replaying */
    US_REPLICA_PROMOTING = 3,/* draining the log before going live */
    US_REPLICA_LIVE = 4,     /* promoted: now the primary */
    US_REPLICA_DEAD = 5,
    US_REPLICA_RETIRED = 6,  /* diverged or failed: never promoted */
    US_REPLICA_DIVERGED = 7, /* found the primary's log disagreeing with it, and
                                waits for the majority vote (3+ replicas):
                                diverged_ring/seq/sig say where and how */
};

/* Event types (struct us_event.type). */
enum us_event_type {
    US_EV_PAD = 0,      /* filler up to the end of the ring: skip */
    US_EV_SYSCALL = 1,  /* nr = syscall number, ret = its result */
    US_EV_SIGNAL = 2,   /* fd = signal number, delivered at this point */
    US_EV_THREAD = 3,   /* a thread was created: fd = the ring it records into,
                           aux = its logical id (creation number) */
    US_EV_INFLIGHT = 4, /* reserved, never written (in-flight calls are settled
                           from the kernel's state, docs/failover.md) */
    US_EV_CRASH = 5,    /* primary took a synchronous fault (fd = signal) */
    US_EV_SYNC = 6,     /* an operation on a synchronisation object:
                           fd = operation (enum us_sync_op), nr = the object's
                           logical id, check = the version it reached, ret =
                           its result, aux = the object's address in the
                           primary, site = the program's call site */
    US_EV_EXIT = 7,     /* the thread ended (its ring may be reused) */
};
#define US_EV_LAST US_EV_EXIT

/* Operations of US_EV_SYNC records (src/shim/sync.c). */
enum us_sync_op {
    US_SYNC_LOCK = 1,        /* mutex lock / timedlock / clocklock */
    US_SYNC_TRYLOCK = 2,
    US_SYNC_COND_RELOCK = 3, /* a condition wait re-acquiring its mutex */
    US_SYNC_RDLOCK = 4,      /* rwlock, shared (all variants) */
    US_SYNC_WRLOCK = 5,      /* rwlock, exclusive (all variants) */
    US_SYNC_SEM_WAIT = 6,    /* sem_wait / trywait / timedwait / clockwait */
    US_SYNC_SEM_VALUE = 7,   /* sem_getvalue: ret = the value */
    US_SYNC_SPIN = 8,        /* pthread_spin_lock / trylock */
    US_SYNC_BARRIER = 9,     /* arrival at a barrier, logged before waiting */
    US_SYNC_ONCE = 10,       /* a pthread_once / call_once that was not done yet */
    US_SYNC_KEY = 11,        /* pthread_key_create / delete: aux = the key */
    US_SYNC_JOIN = 12,       /* pthread_tryjoin_np / timedjoin_np: ret */
    US_SYNC_BARRIER_PASSED = 13, /* ret = what pthread_barrier_wait returned */
    US_SYNC_HEAP_PUT = 14,   /* malloc: a batch of freed blocks of size class
                                aux into the shared depot (src/shim/alloc.c) */
    US_SYNC_HEAP_TAKE = 15,  /* malloc: a batch taken from the depot of size
                                class aux; ret = 1 if there was one */
    US_SYNC_STACK = 16,      /* pthread_create: the new thread's stack is pool
                                slot aux; ret = 1 if newly mapped (threads.c) */
};

/* Event flags. */
#define US_EVF_PENDING 0x1u /* reserved, not yet published (never seen by consumers) */
#define US_EVF_RECV_SLOT 0x2u /* payload starts with struct us_recv_slot */
#define US_EVF_SIGNALS_NEXT 0x4u /* US_EV_SIGNAL events follow: the program's
                                  handlers ran as this call returned */
#define US_EVF_SENT_BASE 0x100u /* aux is the socket's sent count before the
                                  program's first output on it */

/*
 * One record. The payload that follows is a sequence of blobs, each a
 * uint32_t length, uint32_t reserved, then the bytes, padded to 8: the
 * out-buffers the call filled, in the order the syscall table gives.
 */
struct us_event {
    uint32_t size;      /* whole record: header + payload, multiple of 8 */
    uint16_t type;      /* enum us_event_type */
    uint16_t flags;     /* US_EVF_* */
    uint32_t nr;        /* syscall number (US_EV_SYSCALL) */
    int32_t fd;         /* first argument, checked on replay */
    uint64_t check;     /* a size argument, checked on replay */
    int64_t ret;        /* the result the program saw (-errno on failure) */
    uint64_t aux;       /* per-call extra: file offset after a file op */
    uint64_t seq;       /* event number in this ring, from 1 */
    union {
        uint64_t digest; /* outputs: XXH3-64 of the bytes written, which the
                            backups compare with what they would have written */
        uint64_t order;  /* calls on the fd table or the address space: the
                            version(s) of the objects they changed (order.h) */
        uint64_t site;   /* SYNC: the program's call site, checked on replay */
    };
};
_Static_assert(sizeof(struct us_event) == 56, "us_event layout");

struct us_blob {
    uint32_t len;
    uint32_t reserved;
};
_Static_assert(sizeof(struct us_blob) == 8, "us_blob layout");

/*
 * A socket read is done by recvmmsg() straight into the ring, so that the
 * kernel itself writes the data and its length into shared memory: if the
 * primary dies right after the call, the supervisor finds msg_len set and
 * publishes the record, and the input is not lost. msg_len starts as
 * US_RECV_UNSET. Layout matches struct mmsghdr + one struct iovec.
 */
#define US_RECV_UNSET 0xffffffffu
struct us_recv_slot {
    uint64_t msg_name;       /* struct mmsghdr, as the kernel reads it */
    uint32_t msg_namelen;
    uint32_t pad0;
    uint64_t msg_iov;
    uint64_t msg_iovlen;
    uint64_t msg_control;
    uint64_t msg_controllen;
    int32_t msg_flags;
    uint32_t pad1;
    uint32_t msg_len;        /* written by the kernel: bytes received */
    uint32_t pad2;
    uint64_t iov_base;       /* the one iovec */
    uint64_t iov_len;
    uint8_t name[128];       /* peer address for recvfrom */
};
_Static_assert(sizeof(struct us_recv_slot) == 208, "us_recv_slot layout");

#define US_STAMPS 8

/* Whether a ring has a producer (struct us_ring_ctl.in_use). */
enum us_ring_use {
    US_RING_FREE = 0,
    US_RING_LIVE = 1,   /* a thread of the primary records into it */
    US_RING_EXITED = 2, /* its thread ended (US_EV_EXIT): reusable by a new
                           thread once every live backup has consumed it */
};

/* Per-consumer position in one ring (one per backup replica slot). */
struct us_ring_consumer {
    _Alignas(US_CACHELINE) uint64_t tail; /* bytes consumed */
    uint64_t seq;                         /* events consumed */
    uint64_t seen_head;                   /* consumer's copy of the head: it
                                             reads the producer's line only
                                             when it has used this up */
    uint64_t waiting_since_ns;            /* CLOCK_MONOTONIC when it found the
                                             ring empty and began to nap; 0
                                             while it has events (the
                                             supervisor's spin detection) */
    int32_t tid;                          /* kernel tid of the backup's thread
                                             replaying the ring (time
                                             slicing, supervisor/slicer.c) */
};

/* Control block of one ring. */
struct us_ring_ctl {
    _Alignas(US_CACHELINE) uint64_t head; /* bytes published (store-release) */
    uint64_t head_seq;                    /* events published */
    uint32_t head_futex;                  /* bumped by the supervisor to wake consumers */
    uint32_t producer_waiting;            /* producer sleeps on tail_futex */
    uint32_t tail_futex;                  /* bumped by consumers when producer waits */
    uint32_t in_use;                      /* enum us_ring_use */
    int32_t producer_tid;                 /* kernel tid of the primary's thread
                                             recording into it */
    uint32_t producer_in_spin_lock;       /* that thread spins in
                                             pthread_spin_lock: running without
                                             a call is then no sign of a hang */
    _Alignas(US_CACHELINE) uint64_t room_tail; /* producer's copy of the slowest
                                                  live consumer's position... */
    uint64_t room_seq;                    /* ...and event count: it reads the
                                             consumers' lines only when these
                                             say the ring may be full */
    _Alignas(US_CACHELINE) uint64_t pending; /* offset (in bytes, like head) of
                                                a reserved record, or US_NO_PENDING */
    struct us_ring_consumer consumer[US_MAX_REPLICAS];
    /* Producer's time stamps: event US_STAMPS[i].seq was published at
     * CLOCK_MONOTONIC ns; they tell how far behind in time a consumer is
     * (the time bound of back-pressure, and status). */
    _Alignas(US_CACHELINE) uint64_t stamp_seq[US_STAMPS];
    uint64_t stamp_ns[US_STAMPS];
    uint32_t stamp_next;
};
#define US_NO_PENDING UINT64_MAX

/* Faults the shim plays itself (struct us_replica.inject), once. */
enum us_inject {
    US_INJECT_NONE = 0,
    US_INJECT_SPIN = 1,            /* the next thread to make a call loops for
                                      ever instead, without calls */
    US_INJECT_CRASH_IN_ACCEPT = 2, /* the next accept that gets a connection
                                      kills the replica before it is logged */
    US_INJECT_CRASH_IN_WRITE = 3,  /* the next write or send that put bytes
                                      out kills the replica before it is
                                      logged */
};

struct us_replica {
    _Alignas(US_CACHELINE) int32_t pid;
    uint32_t role;        /* enum us_role */
    uint32_t state;       /* enum us_replica_state */
    uint32_t promote;     /* futex word: set by the supervisor to promote */
    int32_t keeper_pid;   /* primary only: process sharing its fd table */
    uint32_t attached;    /* shim constructor ran */
    uint32_t inject;      /* enum us_inject: a fault `understudy inject` asks
                             the replica's shim to play */
    uint64_t divergences;
    uint32_t diverged;      /* DIVERGED: the fields below are set */
    uint32_t diverged_ring; /* the thread (ring) ... */
    uint64_t diverged_seq;  /* ...and event where it found the log otherwise */
    uint64_t diverged_sig;  /* a hash of what it would have done instead */
    uint64_t cpus[16];    /* the CPUs it runs on once attached (a cpu_set_t):
                             applied by its shim, so that what the program
                             sees before the shim attaches is the same in
                             every replica */
};

struct us_log_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;   /* offset of ring 0 */
    uint64_t total_size;
    uint64_t ring_size;     /* bytes per ring, power of two */
    uint64_t max_lag_events;/* back-pressure bound per ring */
    uint64_t max_lag_ns;    /* ...and in time: how long ago the oldest event a
                               backup has not replayed was published (0: none) */
    uint32_t nreplicas;
    uint32_t primary_slot;  /* replica slot that currently records */
    uint32_t epoch;         /* bumped at every promotion */
    uint32_t nthreads;      /* threads created so far (logical ids) */
    uint32_t failovers;
    uint32_t shutdown;      /* supervisor asked the program to stop */
    int32_t program_pid;    /* the pid the program sees, whichever replica
                               serves it: the first primary's */
    int32_t supervisor_pid; /* keepers exit when it is gone */
    uint32_t program_exiting; /* the primary called exit_group: a backup that
                                 ends now is ending with it, not failing */
    int32_t program_exit_code;
    int64_t stdio_pos[3];   /* offsets of the program's fds 0-2 when the first
                               primary attached, -1 if not a regular file:
                               where failover looks for output in flight on
                               them when none was logged yet (promote.c) */
    struct us_replica replica[US_MAX_REPLICAS];
    struct us_ring_ctl ring[US_MAX_THREADS];
};

#define US_LOG_HEADER_SIZE 65536u
_Static_assert(sizeof(struct us_log_header) <= US_LOG_HEADER_SIZE, "header fits");

/* Environment passed from the supervisor to the shim. */
#define US_ENV_LOG_FD "UNDERSTUDY_LOG_FD"   /* memfd of the log */
#define US_ENV_CTL_FD "UNDERSTUDY_CTL_FD"   /* socketpair end to the supervisor */
#define US_ENV_SLOT "UNDERSTUDY_SLOT"       /* replica slot number */
/* The supervisor's clocks (ns) as it started the program, the same for
 * every replica: time read before the shim attaches (engine.c). */
#define US_ENV_START_MONO "UNDERSTUDY_START_MONO"
#define US_ENV_START_REAL "UNDERSTUDY_START_REAL"

#endif
