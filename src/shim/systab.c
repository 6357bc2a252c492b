/*
 * systab.c - how each system call is replicated (see engine.h for the kinds),
 * and the buffers each one fills.
 *
 * A syscall missing from this table is refused: the program stops with an
 * error naming it. Add a call only together with what it writes.
 */
#include "engine.h"
#include "order.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <termios.h>

/* ---- result buffers ------------------------------------------------------ */

static int add(struct us_span *sp, int n, long p, long len)
{
    if (p && len > 0) {
        sp[n].p = (void *)p;
        sp[n].len = (size_t)len;
        n++;
    }
    return n;
}

#define OUT_FIXED(name, arg, size) \
    static int name(const long *a, long r, struct us_span *sp) \
    { \
        return r < 0 ? 0 : add(sp, 0, a[arg], size); \
    }
/* buffer argument filled with `ret` bytes */
#define OUT_RET(name, arg) \
    static int name(const long *a, long r, struct us_span *sp) \
    { \
        return add(sp, 0, a[arg], r); \
    }

OUT_RET(out_buf1, 1)
OUT_RET(out_buf0, 0)
OUT_RET(out_buf2, 2)
OUT_FIXED(out_ts1, 1, 16)
OUT_FIXED(out_stat1, 1, 144)
OUT_FIXED(out_stat2, 2, 144)
OUT_FIXED(out_statx4, 4, 256)
OUT_FIXED(out_statfs1, 1, 120)
OUT_FIXED(out_sysinfo0, 0, 112)
OUT_FIXED(out_uname0, 0, 390)
OUT_FIXED(out_rusage1, 1, 144)
OUT_FIXED(out_tms0, 0, 32)
OUT_FIXED(out_time0, 0, 8)
OUT_FIXED(out_itimer2, 2, 32)
OUT_FIXED(out_itimerspec3, 3, 32)
OUT_FIXED(out_off2, 2, 8)

static int out_gettimeofday(const long *a, long r, struct us_span *sp)
{
    if (r < 0)
        return 0;
    return add(sp, add(sp, 0, a[0], 16), a[1], 8);
}

static int out_getcpu(const long *a, long r, struct us_span *sp)
{
    if (r < 0)
        return 0;
    return add(sp, add(sp, 0, a[0], 4), a[1], 4);
}

static int out_epoll(const long *a, long r, struct us_span *sp)
{
    return add(sp, 0, a[1], r > 0 ? r * (long)sizeof(struct epoll_event) : 0);
}

static int out_poll(const long *a, long r, struct us_span *sp)
{
    return r < 0 ? 0 : add(sp, 0, a[0], a[1] * (long)sizeof(struct pollfd));
}

static int out_select(const long *a, long r, struct us_span *sp)
{
    if (r < 0)
        return 0;
    long setlen = ((a[0] + 63) / 64) * 8;
    int n = add(sp, 0, a[1], setlen);
    n = add(sp, n, a[2], setlen);
    n = add(sp, n, a[3], setlen);
    return add(sp, n, a[4], 16);
}

/* An address and its length (accept, getsockname, getpeername). */
static int out_sockaddr(long addr, long lenp, long r, struct us_span *sp)
{
    if (r < 0 || !addr || !lenp)
        return 0;
    long len = *(socklen_t *)lenp;
    if (len > 128)
        len = 128;
    return add(sp, add(sp, 0, addr, len), lenp, sizeof(socklen_t));
}

static int out_accept(const long *a, long r, struct us_span *sp)
{
    return out_sockaddr(a[1], a[2], r, sp);
}

static int out_getsockopt(const long *a, long r, struct us_span *sp)
{
    return out_sockaddr(a[3], a[4], r, sp);
}

static int out_recvfrom(const long *a, long r, struct us_span *sp)
{
    int n = add(sp, 0, a[1], r);
    return n + out_sockaddr(a[4], a[5], r, sp + n);
}

static int out_iov(long iovp, long cnt, long r, struct us_span *sp)
{
    const struct iovec *iov = (const struct iovec *)iovp;
    int n = 0;
    for (long i = 0; i < cnt && r > 0; i++) {
        long len = (long)iov[i].iov_len < r ? (long)iov[i].iov_len : r;
        if (n == US_MAX_SPANS)
            us_fatal("a vectored read filled more than %d buffers", US_MAX_SPANS);
        n = add(sp, n, (long)iov[i].iov_base, len);
        r -= len;
    }
    return n;
}

static int out_readv(const long *a, long r, struct us_span *sp)
{
    return out_iov(a[1], a[2], r, sp);
}

static int out_recvmsg(const long *a, long r, struct us_span *sp)
{
    struct msghdr *m = (struct msghdr *)a[1];
    if (r < 0)
        return 0;
    if (m->msg_control && m->msg_controllen)
        us_fatal("recvmsg with ancillary data (fd passing, credentials) is not supported");
    int n = add(sp, 0, a[1], sizeof(*m)); /* namelen, flags */
    n = add(sp, n, (long)m->msg_name, m->msg_name ? m->msg_namelen : 0);
    return n + out_iov((long)m->msg_iov, (long)m->msg_iovlen, r, sp + n);
}

static int out_wait4(const long *a, long r, struct us_span *sp)
{
    if (r < 0)
        return 0;
    return add(sp, add(sp, 0, a[1], sizeof(int)), a[3], 144);
}

static int out_pipe(const long *a, long r, struct us_span *sp)
{
    return r < 0 ? 0 : add(sp, 0, a[0], 2 * sizeof(int));
}

static int out_socketpair(const long *a, long r, struct us_span *sp)
{
    return r < 0 ? 0 : add(sp, 0, a[3], 2 * sizeof(int));
}

static int out_ioctl(const long *a, long r, struct us_span *sp)
{
    if (r < 0)
        return 0;
    switch ((unsigned long)a[1]) {
    case FIONREAD:
    case TIOCOUTQ:
        return add(sp, 0, a[2], sizeof(int));
    case TCGETS:
        return add(sp, 0, a[2], 36); /* the kernel's struct termios */
    case TIOCGWINSZ:
        return add(sp, 0, a[2], 8);
    default:
        return 0;
    }
}

static int out_fcntl(const long *a, long r, struct us_span *sp)
{
    if (r < 0 || a[1] != F_GETLK)
        return 0;
    return add(sp, 0, a[2], sizeof(struct flock));
}

/* ---- special handlers -------------------------------------------------- */

static const struct us_sysdesc d_input_buf1 = {K_INPUT, 0, 2, out_buf1, 0, 0};
static const struct us_sysdesc d_recvfrom = {K_INPUT, 0, 2, out_recvfrom, 0, 0};

/*
 * Socket reads (read, recvfrom) go through recvmmsg() into the log itself:
 * the kernel writes the data and its length into shared memory, so a
 * primary killed right after the call leaves a record the supervisor can
 * complete (see log_format.h, struct us_recv_slot).
 */
long us_sock_read(struct us_thread *t, long nr, long *a)
{
    struct us_fd *f = us_fd_get(a[0]);
    const struct us_sysdesc *generic = nr == SYS_read ? &d_input_buf1 : &d_recvfrom;

    if (t->mode == US_MODE_REPLAY) {
        /* The record says which way the primary read: this replica's view
         * of the fd may lag behind another thread's replay. */
        struct us_event *ev = us_expect(t, nr, a, generic);
        if (!ev) {
            us_promote(t);
            return us_sock_read(t, nr, a);
        }
        if (!(ev->flags & US_EVF_RECV_SLOT))
            return us_replay_event(t, nr, a, generic, ev);
        long r = ev->ret;
        const struct us_blob *b = (const struct us_blob *)((const uint8_t *)(ev + 1) +
                                                           sizeof(struct us_recv_slot));
        if (r > 0) {
            if ((long)b->len != r || r > a[2])
                us_diverged(t, ev, nr, a, "socket read of another length");
            memcpy((void *)a[1], b + 1, (size_t)r);
        }
        us_consume(t, ev);
        return r;
    }

    if (!f || f->kind != US_FD_SOCKET || (nr == SYS_recvfrom && a[4]))
        return us_record(t, nr, a, generic);

    size_t want = (size_t)a[2];
    uint32_t cap = us_ring_max_payload(&us_log_) - (uint32_t)(sizeof(struct us_recv_slot) +
                                                               sizeof(struct us_blob));
    if (want > cap)
        want = cap; /* a short read: always allowed on a socket */
    struct us_ring_ctl *c = &us_log_.hdr->ring[t->ring];
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot,
                                          (uint32_t)(sizeof(struct us_recv_slot) +
                                                     sizeof(struct us_blob) + want));
    struct us_recv_slot *s = (struct us_recv_slot *)(ev + 1);
    struct us_blob *b = (struct us_blob *)(s + 1);
    memset(s, 0, sizeof(*s));
    ev->type = US_EV_SYSCALL;
    ev->flags = US_EVF_PENDING | US_EVF_RECV_SLOT;
    ev->nr = (uint32_t)nr;
    ev->fd = (int32_t)a[0];
    ev->check = (uint64_t)a[2];
    s->msg_iov = (uint64_t)&s->iov_base;
    s->msg_iovlen = 1;
    s->iov_base = (uint64_t)(b + 1);
    s->iov_len = want;
    s->msg_len = US_RECV_UNSET;
    b->len = 0;
    b->reserved = 0;
    __atomic_store_n(&c->pending, c->head, __ATOMIC_RELEASE);
    long flags = nr == SYS_recvfrom ? a[3] : 0;
    long r;
    if (US_UNLIKELY(f->pb_len)) {
        /* input a faulty primary read past a replay cut (promote.c) */
        r = us_pushback_take((int)a[0], b + 1, (uint32_t)want, (flags & MSG_PEEK) != 0);
        s->msg_len = (uint32_t)r;
    } else {
        r = US_SYSCALL5(SYS_recvmmsg, a[0], s, 1, flags, 0);
        if (r == 1)
            r = s->msg_len;
    }
    ev->ret = r;
    b->len = r > 0 ? (uint32_t)r : 0;
    us_publish_call(t, ev,
                    (uint32_t)(sizeof(*s) + sizeof(*b) + (r > 0 ? (uint32_t)r : 0)));
    __atomic_store_n(&c->pending, US_NO_PENDING, __ATOMIC_RELEASE);
    if (r > 0)
        memcpy((void *)a[1], b + 1, (size_t)r);
    return r;
}

/*
 * The address space: mmap, munmap, mremap and brk are ordered across threads
 * (the primary holds the address space's order lock from the call to the
 * publication of its record), so every replica's map changes in the same
 * order and stays identical. A backup maps at the very address the primary
 * got (MAP_FIXED_NOREPLACE) and checks every result, so a difference is
 * caught here instead of surfacing later as an odd divergence.
 */
static const struct us_sysdesc d_mmap = {K_INPUT, -1, 1, 0, 0, 0};
static const struct us_sysdesc d_munmap = {K_INPUT, -1, 1, 0, 0, 0};
static const struct us_sysdesc d_mremap = {K_INPUT, -1, 2, 0, 0, 0};
static const struct us_sysdesc d_brk = {K_INPUT, -1, -1, 0, 0, 0};

static const struct us_sysdesc *mm_desc(long nr)
{
    return nr == SYS_mmap ? &d_mmap : nr == SYS_munmap ? &d_munmap
           : nr == SYS_mremap ? &d_mremap : &d_brk;
}

static long sp_mm(struct us_thread *t, long nr, long *a)
{
    const struct us_sysdesc *d = mm_desc(nr);
    if (nr == SYS_mmap && !(a[3] & MAP_ANONYMOUS) && (int)a[4] >= 0) {
        /* A file mapping that cannot write the file (locale data, a library)
         * reads the same file in every replica (engine.c opens read-only files
         * in the backups too). A writable shared one would be a channel the
         * log does not see. */
        struct us_fd *f = us_fd_get(a[4]);
        if (!f || f->kind != US_FD_FILE || ((a[3] & MAP_SHARED) && (a[2] & PROT_WRITE)))
            us_fatal("mmap of fd %d (flags 0x%lx, prot 0x%lx) is not supported: only mappings "
                     "of regular files that cannot write them are replicated",
                     (int)a[4], (unsigned long)a[3], (unsigned long)a[2]);
    }
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_expect(t, nr, a, d);
        if (!ev) {
            us_promote(t);
            return sp_mm(t, nr, a);
        }
        uint32_t version = (uint32_t)ev->order;
        long want = ev->ret, r = want;
        if (us_ord_wait(&us_as_ord, version) < 0) {
            us_promote(t);
            return sp_mm(t, nr, a);
        }
        if (nr == SYS_mmap && !(want < 0 && want > -4096)) {
            long b[6] = {want, a[1], a[2], a[3], a[4], a[5]};
            if (!(a[3] & MAP_FIXED))
                b[3] |= MAP_FIXED_NOREPLACE;
            r = us_raw(nr, b);
        } else if (nr != SYS_mmap) {
            r = us_raw(nr, a);
        }
        if (r != want)
            us_diverged(t, ev, nr, a, "the address space differs from the primary's");
        us_ord_set(&us_as_ord, version);
        us_consume(t, ev);
        return r;
    }
    us_ord_lock(&us_as_ord);
    uint32_t version = us_ord_bump(&us_as_ord);
    long r = us_raw(nr, a);
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
    ev->type = US_EV_SYSCALL;
    ev->nr = (uint32_t)nr;
    ev->fd = -1;
    ev->check = d->size_arg >= 0 ? (uint64_t)a[d->size_arg] : 0;
    ev->ret = r;
    ev->order = version;
    us_publish_call(t, ev, 0);
    us_ord_unlock(&us_as_ord);
    return r;
}

/*
 * A thread's end: the primary logs it, so that its ring can be given to a
 * new thread once every backup has replayed it; a backup's twin ends at the
 * same point. Nothing may touch the thread's state once its end is logged
 * (primary) or consumed (backup): a new thread may already own it.
 */
static long sp_exit(struct us_thread *t, long nr, long *a)
{
    unsigned ring = t->ring;
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_next_event(t);
        if (ev && ev->type == US_EV_EXIT) {
            us_ring_consume(&us_log_, ring, us_slot, ev);
            for (;;)
                US_SYSCALL1(SYS_exit, a[0]);
        }
        if (ev)
            us_diverged(t, ev, nr, a, "the thread ended here");
        us_promote(t);
    }
    struct us_event *ev = us_ring_reserve(&us_log_, ring, us_slot, 0);
    ev->type = US_EV_EXIT;
    ev->fd = -1;
    ev->ret = a[0];
    us_ring_publish(&us_log_, ring, ev, 0);
    __atomic_store_n(&us_log_.hdr->ring[ring].in_use, US_RING_EXITED, __ATOMIC_RELEASE);
    for (;;)
        US_SYSCALL1(SYS_exit, a[0]);
}

/* The program's end: the primary says so in the header first, so that the
 * supervisor takes a backup that gets there before the primary is reaped
 * for one ending with it, not one failing. */
static long sp_exit_group(struct us_thread *t, long nr, long *a)
{
    (void)nr;
    struct us_log_header *h = us_log_.hdr;
    if (t->mode == US_MODE_REPLAY) {
        /* The primary's last record is out before it says it ends: wait for
         * that (or for its death, and end as the new primary). */
        while (!__atomic_load_n(&h->program_exiting, __ATOMIC_ACQUIRE) &&
               !__atomic_load_n(&h->replica[us_slot].promote, __ATOMIC_ACQUIRE)) {
            struct timespec ts = {0, 100000};
            US_SYSCALL2(SYS_nanosleep, &ts, 0);
        }
        if (!__atomic_load_n(&h->program_exiting, __ATOMIC_ACQUIRE))
            us_promote(t);
    }
    if (t->mode == US_MODE_RECORD) {
        h->program_exit_code = (int32_t)a[0];
        __atomic_store_n(&h->program_exiting, 1, __ATOMIC_RELEASE);
    }
    return US_SYSCALL1(SYS_exit_group, a[0]); /* does not return */
}

static long sp_rt_sigaction(struct us_thread *t, long nr, long *a)
{
    (void)t;
    (void)nr;
    return us_rt_sigaction((int)a[0], (const void *)a[1], (void *)a[2], (size_t)a[3]);
}

static const struct us_sysdesc d_ioctl = {K_INPUT, 0, 1, out_ioctl, 0, 0};
static long sp_ioctl(struct us_thread *t, long nr, long *a)
{
    switch ((unsigned long)a[1]) {
    case FIONREAD: case TIOCOUTQ: case TCGETS: case TIOCGWINSZ:
    case FIONBIO: case FIOCLEX: case FIONCLEX:
        break;
    default:
        us_fatal("unsupported ioctl 0x%lx on fd %ld", (unsigned long)a[1], a[0]);
    }
    return t->mode == US_MODE_RECORD ? us_record(t, nr, a, &d_ioctl) : us_replay(t, nr, a, &d_ioctl);
}

static const struct us_sysdesc d_fcntl = {K_INPUT, 0, 1, out_fcntl, 0, 0};
static const struct us_sysdesc d_fcntl_dup = {K_DUP, 0, 1, 0, 0, 0};
static long sp_fcntl(struct us_thread *t, long nr, long *a)
{
    const struct us_sysdesc *d = (a[1] == F_DUPFD || a[1] == F_DUPFD_CLOEXEC) ? &d_fcntl_dup : &d_fcntl;
    return t->mode == US_MODE_RECORD ? us_record(t, nr, a, d) : us_replay(t, nr, a, d);
}

/* accept on the primary: after a failover, connections the dead primary
 * accepted but never logged are handed out first (promote.c), so no client
 * is left hanging; they are logged like any accepted connection. */
static long accept_orphan_or(long nr, const long *a, int flags)
{
    long fd = us_orphan_accept((int)a[0], flags);
    if (fd < 0) {
        fd = us_raw(nr, a);
        /* `understudy inject ... crash-in-accept`: the kernel has handed
         * over the connection, the log will never say so */
        if (US_UNLIKELY(fd >= 0 && us_take_injected(US_INJECT_CRASH_IN_ACCEPT)))
            US_SYSCALL2(SYS_kill, US_SYSCALL0(SYS_getpid), SIGKILL);
        return fd;
    }
    if (a[1] && a[2])
        US_SYSCALL3(SYS_getpeername, fd, a[1], a[2]);
    return fd;
}

static long exec_accept(const long *a)
{
    return accept_orphan_or(SYS_accept, a, 0);
}

static long exec_accept4(const long *a)
{
    return accept_orphan_or(SYS_accept4, a, (int)a[3]);
}

/* ---- time through the vDSO ---------------------------------------------- */

/* libc's own clock functions read the vDSO: no syscall, so far cheaper than
 * us_raw on the primary's hot path (Redis reads the clock ~3 times per
 * request). Should libc fall back to a syscall, it traps into the engine,
 * which passes it through (we are inside the engine). */
static int (*libc_clock_gettime)(long, void *);
static int (*libc_gettimeofday)(void *, void *);

static void resolve_clock(void)
{
    libc_clock_gettime = (int (*)(long, void *))dlsym(RTLD_NEXT, "clock_gettime");
    libc_gettimeofday = (int (*)(void *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    if (!libc_clock_gettime || !libc_gettimeofday)
        us_fatal("cannot find libc's clock functions");
}

static long vdso_result(int r)
{
    return r == 0 ? 0 : -(long)errno;
}

static long exec_clock_gettime(const long *a)
{
    if (US_UNLIKELY(!libc_clock_gettime))
        resolve_clock();
    return vdso_result(libc_clock_gettime(a[0], (void *)a[1]));
}

static long exec_gettimeofday(const long *a)
{
    if (US_UNLIKELY(!libc_gettimeofday))
        resolve_clock();
    return vdso_result(libc_gettimeofday((void *)a[0], (void *)a[1]));
}

static long exec_time(const long *a)
{
    struct timespec ts;
    long r = exec_clock_gettime((const long[]){CLOCK_REALTIME, (long)&ts, 0, 0, 0, 0});
    if (r < 0)
        return r;
    if (a[0])
        *(long *)a[0] = ts.tv_sec;
    return ts.tv_sec;
}

/* ---- the program's pid ------------------------------------------------------ */

/* The program keeps the pid it first saw across failovers (it caches it:
 * Redis, shells); signals it sends to that pid reach whichever replica
 * serves it now. */
static long exec_getpid(const long *a)
{
    (void)a;
    return us_log_.hdr->program_pid;
}

static long exec_gettid(const long *a)
{
    (void)a;
    return us_self == &us_threads[0] ? us_log_.hdr->program_pid : US_SYSCALL0(SYS_gettid);
}

static long real_pid(long pid)
{
    return pid == us_log_.hdr->program_pid ? US_SYSCALL0(SYS_getpid) : pid;
}

static long exec_kill(const long *a)
{
    return US_SYSCALL2(SYS_kill, real_pid(a[0]), a[1]);
}

static long exec_tgkill(const long *a)
{
    long tid = a[1] == us_log_.hdr->program_pid ? US_SYSCALL0(SYS_gettid) : a[1];
    return US_SYSCALL3(SYS_tgkill, real_pid(a[0]), tid, a[2]);
}

/* ---- the table ---------------------------------------------------------- */

#define PASS(nr) [nr] = {K_PASS, -1, -1, 0, 0, 0}
#define IN(nr, fdarg, sizearg, out) [nr] = {K_INPUT, fdarg, sizearg, out, 0, 0}
#define OUT(nr, fdarg, sizearg, out) [nr] = {K_OUTPUT, fdarg, sizearg, out, 0, 0}
#define FDNEW(nr, fdarg, out) [nr] = {K_FDNEW, fdarg, -1, out, 0, 0}
#define SPECIAL(nr, fn) [nr] = {K_SPECIAL, -1, -1, 0, fn, 0}

const struct us_sysdesc us_systab[US_NSYSCALLS] = {
    /* memory, threads' own state, signals masks, exit: same in every replica */
    SPECIAL(SYS_munmap, sp_mm), PASS(SYS_mprotect), SPECIAL(SYS_mremap, sp_mm),
    SPECIAL(SYS_brk, sp_mm),
    PASS(SYS_madvise), PASS(SYS_mincore), PASS(SYS_mlock), PASS(SYS_munlock),
    PASS(SYS_mlockall), PASS(SYS_munlockall), PASS(SYS_msync), PASS(SYS_membarrier),
    PASS(SYS_futex), PASS(SYS_set_robust_list), PASS(SYS_get_robust_list), PASS(SYS_rseq),
    PASS(SYS_set_tid_address), PASS(SYS_arch_prctl), PASS(SYS_prctl),
    PASS(SYS_rt_sigprocmask), PASS(SYS_sigaltstack), PASS(SYS_rt_sigpending),
    PASS(SYS_sched_yield), PASS(SYS_nanosleep), PASS(SYS_clock_nanosleep),
    SPECIAL(SYS_exit, sp_exit), SPECIAL(SYS_exit_group, sp_exit_group),
    PASS(SYS_getuid), PASS(SYS_geteuid), PASS(SYS_getgid), PASS(SYS_getegid),
    PASS(SYS_getgroups), PASS(SYS_getresuid), PASS(SYS_getresgid), PASS(SYS_capget),
    /* dropping privileges: the same change of this process in every replica */
    PASS(SYS_setgroups), PASS(SYS_setuid), PASS(SYS_setgid), PASS(SYS_setreuid),
    PASS(SYS_setregid), PASS(SYS_setresuid), PASS(SYS_setresgid), PASS(SYS_capset),
    PASS(SYS_umask), PASS(SYS_chdir), PASS(SYS_fchdir), PASS(SYS_personality),
    PASS(SYS_getrlimit), PASS(SYS_setrlimit), PASS(SYS_prlimit64),
    PASS(SYS_getpriority), PASS(SYS_setpriority), PASS(SYS_sched_getparam),
    PASS(SYS_sched_getscheduler), PASS(SYS_sched_get_priority_min),
    PASS(SYS_sched_get_priority_max), PASS(SYS_sched_setaffinity), PASS(SYS_setsid),
    PASS(SYS_setpgid), PASS(SYS_pkey_alloc), PASS(SYS_pkey_free), PASS(SYS_pkey_mprotect),
    SPECIAL(SYS_mmap, sp_mm), SPECIAL(SYS_rt_sigaction, sp_rt_sigaction),

    /* inputs */
    SPECIAL(SYS_read, us_sock_read), SPECIAL(SYS_recvfrom, us_sock_read),
    IN(SYS_pread64, 0, 2, out_buf1), IN(SYS_readv, 0, 2, out_readv),
    IN(SYS_preadv, 0, 2, out_readv), IN(SYS_recvmsg, 0, -1, out_recvmsg),
    IN(SYS_epoll_wait, 0, 2, out_epoll), IN(SYS_epoll_pwait, 0, 2, out_epoll),
    IN(SYS_epoll_pwait2, 0, 2, out_epoll), IN(SYS_poll, -1, 1, out_poll),
    IN(SYS_ppoll, -1, 1, out_poll), IN(SYS_select, -1, 0, out_select),
    IN(SYS_pselect6, -1, 0, out_select),
    [SYS_clock_gettime] = {K_INPUT, -1, 0, out_ts1, 0, exec_clock_gettime},
    [SYS_gettimeofday] = {K_INPUT, -1, -1, out_gettimeofday, 0, exec_gettimeofday},
    [SYS_time] = {K_INPUT, -1, -1, out_time0, 0, exec_time},
    IN(SYS_clock_getres, -1, 0, out_ts1),
    IN(SYS_getrandom, -1, 1, out_buf0),
    IN(SYS_getsockname, 0, -1, out_accept), IN(SYS_getpeername, 0, -1, out_accept),
    IN(SYS_getsockopt, 0, 2, out_getsockopt),
    IN(SYS_fstat, 0, -1, out_stat1), IN(SYS_stat, -1, -1, out_stat1),
    IN(SYS_lstat, -1, -1, out_stat1), IN(SYS_newfstatat, 0, -1, out_stat2),
    IN(SYS_statx, 0, -1, out_statx4), IN(SYS_statfs, -1, -1, out_statfs1),
    IN(SYS_fstatfs, 0, -1, out_statfs1),
    IN(SYS_getdents64, 0, 2, out_buf1), IN(SYS_getdents, 0, 2, out_buf1),
    IN(SYS_readlink, -1, 2, out_buf1), IN(SYS_readlinkat, 0, 3, out_buf2),
    IN(SYS_lseek, 0, -1, 0), IN(SYS_access, -1, -1, 0), IN(SYS_faccessat, 0, -1, 0),
    IN(SYS_faccessat2, 0, -1, 0), IN(SYS_getcwd, -1, 1, out_buf0),
    [SYS_getpid] = {K_INPUT, -1, -1, 0, 0, exec_getpid},
    [SYS_gettid] = {K_INPUT, -1, -1, 0, 0, exec_gettid}, IN(SYS_getppid, -1, -1, 0),
    IN(SYS_getpgrp, -1, -1, 0), IN(SYS_getpgid, -1, -1, 0), IN(SYS_getsid, -1, -1, 0),
    IN(SYS_sysinfo, -1, -1, out_sysinfo0), IN(SYS_uname, -1, -1, out_uname0),
    IN(SYS_getrusage, -1, 0, out_rusage1), IN(SYS_times, -1, -1, out_tms0),
    IN(SYS_sched_getaffinity, -1, 1, out_buf2), IN(SYS_getcpu, -1, -1, out_getcpu),
    IN(SYS_wait4, -1, 0, out_wait4),
    SPECIAL(SYS_ioctl, sp_ioctl), SPECIAL(SYS_fcntl, sp_fcntl),

    /* fd creation */
    FDNEW(SYS_socket, -1, 0),
    [SYS_accept] = {K_FDNEW, 0, -1, out_accept, 0, exec_accept},
    [SYS_accept4] = {K_FDNEW, 0, -1, out_accept, 0, exec_accept4},
    FDNEW(SYS_open, -1, 0), FDNEW(SYS_openat, 0, 0), FDNEW(SYS_creat, -1, 0),
    FDNEW(SYS_pipe, -1, out_pipe), FDNEW(SYS_pipe2, -1, out_pipe),
    FDNEW(SYS_socketpair, -1, out_socketpair), FDNEW(SYS_epoll_create, -1, 0),
    FDNEW(SYS_epoll_create1, -1, 0), FDNEW(SYS_eventfd, -1, 0), FDNEW(SYS_eventfd2, -1, 0),
    FDNEW(SYS_timerfd_create, -1, 0), FDNEW(SYS_signalfd, -1, 0), FDNEW(SYS_signalfd4, -1, 0),
    [SYS_close] = {K_CLOSE, 0, -1, 0, 0, 0},
    [SYS_dup] = {K_DUP, 0, -1, 0, 0, 0}, [SYS_dup2] = {K_DUP, 0, 1, 0, 0, 0},
    [SYS_dup3] = {K_DUP, 0, 1, 0, 0, 0},

    /* outputs and other external effects: the primary's alone */
    OUT(SYS_write, 0, 2, 0), OUT(SYS_pwrite64, 0, 2, 0), OUT(SYS_writev, 0, 2, 0),
    OUT(SYS_pwritev, 0, 2, 0), OUT(SYS_sendto, 0, 2, 0), OUT(SYS_sendmsg, 0, -1, 0),
    OUT(SYS_sendfile, 0, 3, out_off2), OUT(SYS_shutdown, 0, 1, 0),
    OUT(SYS_bind, 0, 2, 0), OUT(SYS_listen, 0, 1, 0), OUT(SYS_connect, 0, 2, 0),
    OUT(SYS_setsockopt, 0, 2, 0), OUT(SYS_epoll_ctl, 0, 1, 0),
    OUT(SYS_fsync, 0, -1, 0), OUT(SYS_fdatasync, 0, -1, 0), OUT(SYS_ftruncate, 0, 1, 0),
    OUT(SYS_truncate, -1, 1, 0), OUT(SYS_fallocate, 0, -1, 0), OUT(SYS_flock, 0, 1, 0),
    OUT(SYS_fadvise64, 0, -1, 0),
    OUT(SYS_rename, -1, -1, 0), OUT(SYS_renameat, -1, -1, 0), OUT(SYS_renameat2, -1, -1, 0),
    OUT(SYS_mkdir, -1, 1, 0), OUT(SYS_mkdirat, 0, 2, 0), OUT(SYS_rmdir, -1, -1, 0),
    OUT(SYS_unlink, -1, -1, 0), OUT(SYS_unlinkat, 0, 2, 0), OUT(SYS_link, -1, -1, 0),
    OUT(SYS_symlink, -1, -1, 0), OUT(SYS_chmod, -1, 1, 0), OUT(SYS_fchmod, 0, 1, 0),
    OUT(SYS_chown, -1, -1, 0), OUT(SYS_fchown, 0, -1, 0), OUT(SYS_lchown, -1, -1, 0),
    OUT(SYS_utimensat, 0, -1, 0),
    [SYS_kill] = {K_OUTPUT, -1, 1, 0, 0, exec_kill},
    [SYS_tgkill] = {K_OUTPUT, -1, 2, 0, 0, exec_tgkill}, OUT(SYS_tkill, -1, 1, 0),
    OUT(SYS_setitimer, -1, 0, out_itimer2), OUT(SYS_alarm, -1, 0, 0),
    OUT(SYS_timerfd_settime, 0, 1, out_itimerspec3),
};
