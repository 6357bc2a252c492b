/*
 * shim.h - internals of libunderstudy.so, the library preloaded into every
 * replica.
 *
 * Rules for all code in src/shim (it runs inside someone else's program):
 *  - syscalls only through us_raw_syscall (US_SYSCALLn), never libc's;
 *  - no malloc, no stdio, no locale: static memory and us_fmt only;
 *  - the application's errno is touched only by the exported wrappers;
 *  - everything is hidden except the libc names we interpose (version script).
 */
#ifndef US_SHIM_H
#define US_SHIM_H

#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"
#include "sys.h"

#define US_HIDDEN __attribute__((visibility("hidden")))
#define US_NORETURN __attribute__((noreturn))
#define US_LIKELY(x) __builtin_expect(!!(x), 1)
#define US_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Syscall User Dispatch selector values. */
#define US_SUD_ALLOW 0
#define US_SUD_BLOCK 1

enum us_mode { US_MODE_OFF = 0, US_MODE_RECORD = 1, US_MODE_REPLAY = 2 };

/* An event as a divergence report shows it. */
struct us_seen {
    uint16_t type;
    uint32_t nr;
    int32_t fd;
    int64_t ret;
    uint64_t check, seq, site;
};

/* One per logical thread; index = logical id = ring number. */
struct us_thread {
    unsigned ring;
    uint32_t id;           /* logical id: creation number (0: the main thread) */
    uint8_t mode;          /* enum us_mode */
    uint8_t in_engine;     /* inside us_syscall: signals are deferred */
    volatile char selector;/* SUD selector of this thread */
    int tid;               /* kernel tid in this replica */
    long (*start_fn)(void *); /* glibc's thread start, from the trapped clone3 */
    void *start_arg;
    int new_stack;         /* pthread_create under way: its stack's pool slot, or -1 */
    struct us_seen recent[16]; /* for divergence reports: the last events consumed */
    unsigned nrecent;
    uint64_t sigs_after;   /* primary: signals to hand to the program as the
                              current call returns; backup: nonzero if the
                              replayed call had US_EVF_SIGNALS_NEXT */
};

/* What the shim knows of each fd of the program. */
enum us_fd_kind {
    US_FD_NONE = 0,
    US_FD_SOCKET,   /* stream socket: reads go through recvmmsg into the log */
    US_FD_DGRAM,    /* other sockets */
    US_FD_FILE,     /* regular file: offsets tracked for failover */
    US_FD_OTHER,    /* pipes, eventfd, epoll, devices... */
    US_FD_SIGNALFD, /* wakes epoll through the process that registered it */
    US_FD_SHIM,     /* the shim's own: the program may not touch it */
};

struct us_fd {
    uint8_t kind;
    uint8_t base_known;  /* sent_base measured */
    uint8_t inherited;   /* open before the program started (stdin/out/err):
                            shared with others, so failover leaves its
                            offset alone */
    uint8_t in_flight;   /* after promotion, inherited file: output the old
                            primary may have written unlogged is looked for
                            in the file before writing (promote.c) */
    int64_t written;     /* bytes the program wrote to it (successful outputs) */
    int64_t sent_base;   /* TCP: kernel's sent count before the first write */
    int64_t fpos;        /* file: offset after the last logged op, -1 unknown */
    int64_t skip;        /* after promotion: output bytes already in the kernel */
    int32_t ep_fd1;      /* the epoll set it was last added to, + 1 (0: none), */
    uint32_t ep_events;  /* and its registration there */
    uint64_t ep_data;
    uint32_t pb_len;     /* after a replay cut: input the faulty primary read */
    uint32_t pb_next;    /* ahead, still to hand out (promote.c), where */
    int32_t wake;        /* after promotion: an eventfd that wakes ep_fd1 for
                            what waits for this fd (kept input, a connection
                            the old primary accepted), 0: none */
};

#define US_MAX_FDS 65536

/* Global state (shim.c). */
extern struct us_log us_log_;
extern unsigned us_slot;             /* this replica's slot */
extern int us_ctl_fd;                /* socket to the supervisor */
extern int us_null_fd;               /* backup: source of placeholder fds */
extern int us_active;                /* attached to a log */
extern int us_ncpus;                 /* CPUs this replica may run on */
extern int us_replay_cut;            /* backup that outvoted the primary: every
                                        thread stops replaying where it is */
extern struct us_thread us_threads[US_MAX_THREADS];
extern struct us_fd us_fds[US_MAX_FDS];
extern __thread struct us_thread *us_self __attribute__((tls_model("initial-exec")));
extern char us_exempt_start[], us_exempt_end[];

/* Raw helpers. */
long us_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
void us_sigreturn(void);
void us_clone_stub(void);
void us_fork_stub(void);

/* util.c: formatting without libc (supports %s %d %u %ld %lu %x %lx %p %%). */
size_t us_fmt(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
size_t us_vfmt(char *buf, size_t cap, const char *fmt, va_list ap);
void us_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
US_NORETURN void us_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* shim.c: a decimal number from the environment; -1 if unset (fatal if bad). */
long us_env_number(const char *name);

/* engine.c */
long us_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
/* Backup: the next record of this thread's ring, checked; NULL once promoted. */
struct us_event *us_next_event(struct us_thread *t);
void us_thread_attach(struct us_thread *t);
const char *us_sysname(long nr);
/* Called at a divergence: reports, retires this replica and exits. */
US_NORETURN void us_diverged(struct us_thread *t, const struct us_event *ev, long nr,
                             const long *a, const char *why);
/* A divergence that a majority vote may decide (three replicas or more):
 * reports it and waits; returns only if this replica won the vote against
 * the primary, telling the caller to replay on (the mismatch was only in
 * output bytes, output_only) or to go live at this call. `sig` is what this
 * replica would have done, compared with the other backups'. */
enum { US_VOTE_REPLAY_ON = 1, US_VOTE_GO_LIVE = 2 };
int us_vote(struct us_thread *t, const struct us_event *ev, uint64_t sig, int output_only,
            const char *text);
/* The same for something other than a system call, described by `what`. */
int us_vote_at(struct us_thread *t, const struct us_event *ev, const char *what, uint64_t sig);
/* us_diverged for something other than a system call, described by `what`. */
US_NORETURN void us_diverged_at(struct us_thread *t, const struct us_event *ev, const char *what);

/* sud.c */
void us_sud_install(void);
void us_sud_arm(struct us_thread *t);
void us_sud_disarm(void);

/* signals.c */
long us_rt_sigaction(int sig, const void *act, void *oldact, size_t sigsetsize);
void us_signals_after_call(struct us_thread *t);
uint64_t us_signals_take_pending(void);
void us_signals_crash(int sig);

/* sync.c: records of synchronisation (log_format.h, US_EV_SYNC). Primary:
 * log operation `op` on object `id`; backup: the logged operation for this
 * call, checked against op and call site, or NULL once promoted. */
void us_sync_record(struct us_thread *t, int op, uint32_t id, const void *addr, uint32_t version,
                    long ret, uintptr_t site);
struct us_event *us_sync_expect(struct us_thread *t, int op, uintptr_t site);
const char *us_sync_op_name(int op);

/* empty_section.c: whether the lock of `mutex` called from `site` opens a
 * critical section with nothing in it (the code at site passes the same
 * mutex to pthread_mutex_unlock straight away): such a lock is not ordered.
 * `saved` holds the caller's callee-saved registers (lock_entry.S). */
struct us_callee_saved {
    uint64_t r15, r14, r13, r12, rbp, rbx;
};
int us_empty_section(uintptr_t site, const void *mutex, const struct us_callee_saved *saved,
                     const void *unlock);

/* alloc.c: the program's malloc; its locks are held across a fork. */
void us_alloc_fork_prepare(void);
void us_alloc_fork_done(void);

/* threads.c: pool stacks for new threads */
void us_thread_cloning(struct us_thread *parent, int *child_tid);
void us_thread_joined(unsigned long thread);

/* promote.c: every thread ends its replay here and the process goes live;
 * us_end_replay_here (engine.c) drops what is left of the thread's ring. */
void us_promote(struct us_thread *t);
void us_end_replay_here(unsigned ring);
/* Input of fd that a faulty primary read past the cut: up to len bytes of
 * it into buf, left in place if peek (the fd's pb_len says if there is any). */
uint32_t us_pushback_take(int fd, void *buf, uint32_t len, int peek);
/* The fd is closed or leaves its epoll set: its wake-up goes. */
void us_fd_unwake(int fd);

/* Whether `understudy inject` asked for `fault` (enum us_inject) and this
 * thread is the one to play it. On every call of the primary: one load
 * inline, the rest out of line (util.c). */
int us_take_injected_slow(uint32_t fault);
static inline int us_take_injected(uint32_t fault)
{
    return US_UNLIKELY(__atomic_load_n(&us_log_.hdr->replica[us_slot].inject,
                                       __ATOMIC_RELAXED) == fault) &&
           us_take_injected_slow(fault);
}
long us_orphan_accept(int listen_fd, int flags);

/* fds */
static inline struct us_fd *us_fd_get(long fd)
{
    return (fd >= 0 && fd < US_MAX_FDS) ? &us_fds[fd] : 0;
}
void us_fd_created(long fd, int kind);
/* epoll registrations of signalfds, redone by a promoted backup (promote.c) */
void us_note_epoll_ctl(const long *a, long ret);
void us_reregister_signalfds(void);
int64_t us_tcp_sent_total(int fd);
int64_t us_file_write_pos(int fd);
/* after promotion, an inherited file's output the old primary may have
 * written unlogged: how many of its first bytes are in the file already, not
 * to be written again (promote.c) */
size_t us_output_in_file(long nr, const long *a, struct us_fd *f);

#endif
