/*
 * engine.c - record (primary) and replay (backups) of system calls.
 *
 * us_syscall is the single entry point: the exported libc wrappers
 * (wrappers.c) and the Syscall User Dispatch handler (sud.c) both call it.
 * The primary executes the call, then logs its result and the buffers it
 * filled before the program sees them; a backup takes the next event of its
 * twin thread, checks it is the same call, and hands back the logged result.
 */
#include "engine.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>

#include "order.h"
#include "syscall_names.h"

/* xxHash (Debian libxxhash-dev) compiled in: no library state, no malloc. */
#define XXH_INLINE_ALL
#include <xxhash.h>

const char *us_sysname(long nr)
{
    if (nr >= 0 && nr < (long)(sizeof(us_syscall_names) / sizeof(us_syscall_names[0])) &&
        us_syscall_names[nr])
        return us_syscall_names[nr];
    return "unknown";
}

/* Bytes this TCP socket's kernel has taken from the program so far:
 * acknowledged by the peer plus still queued. -1 if not a TCP socket. */
int64_t us_tcp_sent_total(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int outq = 0;
    if (US_SYSCALL5(SYS_getsockopt, fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
        return -1;
    if (US_SYSCALL3(SYS_ioctl, fd, SIOCOUTQ, &outq) < 0)
        return -1;
    return (int64_t)ti.tcpi_bytes_acked + outq;
}

/* Where the next write to this regular file lands: its end with O_APPEND,
 * else its offset. */
int64_t us_file_write_pos(int fd)
{
    struct stat st;
    long fl = US_SYSCALL2(SYS_fcntl, fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND))
        return US_SYSCALL2(SYS_fstat, fd, &st) == 0 ? (int64_t)st.st_size : -1;
    return US_SYSCALL3(SYS_lseek, fd, 0, SEEK_CUR);
}

void us_fd_created(long fd, int kind)
{
    struct us_fd *f = us_fd_get(fd);
    if (!f)
        us_fatal("fd %ld is beyond the %d fds understudy tracks", fd, US_MAX_FDS);
    memset(f, 0, sizeof(*f));
    f->kind = (uint8_t)kind;
    f->fpos = -1;
}

/* The fds a FDNEW call created (most return it; pipe2/socketpair fill an array). */
static int new_fds(long nr, const long *a, long ret, int out[2])
{
    if (ret < 0)
        return 0;
    if (nr == SYS_pipe || nr == SYS_pipe2) {
        memcpy(out, (void *)a[0], 2 * sizeof(int));
        return 2;
    }
    if (nr == SYS_socketpair) {
        memcpy(out, (void *)a[3], 2 * sizeof(int));
        return 2;
    }
    out[0] = (int)ret;
    return 1;
}

/*
 * The fd table is shared by the program's threads, so operations on one fd
 * number are ordered across threads (order.h): otherwise a backup thread
 * could hold a placeholder at the number another thread closes later in the
 * primary's order but sooner here. A call closes its numbers before it runs
 * (close, the target of dup2/dup3) and creates them after (everything else);
 * the primary holds a number's order lock from before a close until the
 * record is published, so a creation that reuses the number comes after it.
 */
struct fd_versions {
    int fd[2];
    uint32_t v[2];
    int n;
};

static void fds_closed(long nr, const long *a, const struct us_sysdesc *d, struct fd_versions *o)
{
    o->n = 0;
    if (d->kind == K_CLOSE)
        o->fd[o->n++] = (int)a[0];
    else if (nr == SYS_dup2 || nr == SYS_dup3)
        o->fd[o->n++] = (int)a[1];
}

static void fds_created(long nr, const long *a, long ret, const struct us_sysdesc *d,
                        struct fd_versions *o)
{
    if (d->kind == K_FDNEW)
        o->n = new_fds(nr, a, ret, o->fd);
    else if (d->kind == K_DUP && nr != SYS_dup2 && nr != SYS_dup3 && ret >= 0)
        o->fd[o->n++] = (int)ret;
}

static struct us_ord *fd_ord(int fd)
{
    return fd >= 0 && fd < US_MAX_FDS ? &us_fd_ord[fd] : NULL;
}

/* Primary: take the numbers' order locks and their next versions. */
static void fds_lock(struct fd_versions *o)
{
    for (int i = 0; i < o->n; i++) {
        struct us_ord *ord = fd_ord(o->fd[i]);
        if (ord) {
            us_ord_lock(ord);
            o->v[i] = us_ord_bump(ord);
        }
    }
}

static void fds_unlock(const struct fd_versions *o)
{
    for (int i = 0; i < o->n; i++)
        if (fd_ord(o->fd[i]))
            us_ord_unlock(fd_ord(o->fd[i]));
}

static uint64_t fds_pack(const struct fd_versions *o)
{
    return (uint64_t)o->v[0] | (o->n > 1 ? (uint64_t)o->v[1] << 32 : 0);
}

/* Backup: wait for each number's turn (the versions come from the log);
 * -1 if replay was cut short meanwhile. */
static int fds_wait(long nr, const long *a, const struct us_sysdesc *d, const struct us_event *ev,
                    struct fd_versions *o)
{
    fds_closed(nr, a, d, o);
    if (!o->n)
        fds_created(nr, a, ev->ret, d, o);
    o->v[0] = (uint32_t)ev->order;
    o->v[1] = (uint32_t)(ev->order >> 32);
    for (int i = 0; i < o->n; i++)
        if (fd_ord(o->fd[i]) && us_ord_wait(fd_ord(o->fd[i]), o->v[i]) < 0)
            return -1;
    return 0;
}

static void fds_set(const struct fd_versions *o)
{
    for (int i = 0; i < o->n; i++)
        if (fd_ord(o->fd[i]))
            us_ord_set(fd_ord(o->fd[i]), o->v[i]);
}

/* Backup: placeholders and twins go to chosen numbers; a twin's open takes
 * the lowest free one for an instant, which no placeholder may take then. */
struct us_ord us_backup_fdtable_lock;

/* Primary: what kind of fd a FDNEW call made. */
static int classify_new_fd(long nr, const long *a, int fd)
{
    switch (nr) {
    case SYS_accept:
    case SYS_accept4:
        return US_FD_SOCKET;
    case SYS_socket:
    case SYS_socketpair:
        return ((a[1] & 0xf) == SOCK_STREAM) ? US_FD_SOCKET : US_FD_DGRAM;
    case SYS_open:
    case SYS_openat:
    case SYS_creat: {
        struct stat st;
        if (US_SYSCALL2(SYS_fstat, fd, &st) == 0 && S_ISREG(st.st_mode))
            return US_FD_FILE;
        return US_FD_OTHER;
    }
    case SYS_signalfd:
    case SYS_signalfd4:
        return US_FD_SIGNALFD;
    default:
        return US_FD_OTHER;
    }
}

static int new_fd_cloexec(long nr, const long *a)
{
    switch (nr) {
    case SYS_socket:
        return (a[1] & SOCK_CLOEXEC) != 0;
    case SYS_accept4:
        return (a[3] & SOCK_CLOEXEC) != 0;
    case SYS_open:
        return (a[1] & O_CLOEXEC) != 0;
    case SYS_openat:
        return (a[2] & O_CLOEXEC) != 0;
    case SYS_pipe2:
    case SYS_epoll_create1:
        return (a[1] & O_CLOEXEC) != 0 || (nr == SYS_epoll_create1 && (a[0] & O_CLOEXEC));
    default:
        return 0;
    }
}

static int is_file_op(long nr)
{
    switch (nr) {
    case SYS_read: case SYS_readv: case SYS_write: case SYS_writev:
    case SYS_lseek: case SYS_ftruncate:
        return 1;
    default:
        return 0;
    }
}

/*
 * Output after a promotion: the first f->skip bytes were already taken by
 * the kernel from the dead primary, so they are reported as written without
 * being sent again. Handles write/send/sendto (a buffer), writev and sendmsg
 * (iovecs).
 */
static long output_with_skip(long nr, long *a, struct us_fd *f)
{
    if (nr == SYS_write || nr == SYS_sendto || nr == SYS_pwrite64) {
        size_t n = (size_t)a[2];
        if ((uint64_t)f->skip >= n) {
            f->skip -= (int64_t)n;
            return (long)n;
        }
        long b[6] = {a[0], a[1] + f->skip, a[2] - f->skip, a[3], a[4], a[5]};
        long r = us_raw(nr, b);
        if (r >= 0) {
            r += f->skip;
            f->skip = 0;
        }
        return r;
    }
    if (nr == SYS_writev || nr == SYS_sendmsg) {
        const struct msghdr *mh = (const struct msghdr *)a[1];
        const struct iovec *iov = nr == SYS_writev ? (const struct iovec *)a[1] : mh->msg_iov;
        int cnt = nr == SYS_writev ? (int)a[2] : (int)mh->msg_iovlen;
        struct iovec rest[64];
        size_t total = 0, skip = (size_t)f->skip;
        int k = 0;
        if (cnt > 64)
            us_fatal("writev with %d buffers right after a failover is not supported", cnt);
        for (int i = 0; i < cnt; i++) {
            total += iov[i].iov_len;
            if (skip >= iov[i].iov_len) {
                skip -= iov[i].iov_len;
                continue;
            }
            rest[k].iov_base = (char *)iov[i].iov_base + skip;
            rest[k].iov_len = iov[i].iov_len - skip;
            skip = 0;
            k++;
        }
        if (k == 0) {
            f->skip -= (int64_t)total;
            return (long)total;
        }
        long r;
        if (nr == SYS_writev) {
            r = US_SYSCALL3(SYS_writev, a[0], rest, k);
        } else {
            struct msghdr m2 = *mh;
            m2.msg_iov = rest;
            m2.msg_iovlen = (size_t)k;
            r = US_SYSCALL3(SYS_sendmsg, a[0], &m2, a[2]);
        }
        if (r >= 0) {
            r += f->skip;
            f->skip = 0;
        }
        return r;
    }
    us_fatal("%s right after a failover with %ld bytes already sent is not supported",
             us_sysname(nr), (long)f->skip);
}

/*
 * The digest of what an output call wrote (its first `ret` bytes): the
 * primary logs it, a backup compares it with what it would have written.
 * Returns 0 for calls whose bytes are not in memory (sendfile, shutdown...).
 */
static int output_digest(long nr, const long *a, long ret, uint64_t *digest)
{
    const struct iovec *iov;
    long cnt;
    switch (nr) {
    case SYS_write:
    case SYS_pwrite64:
    case SYS_sendto:
        *digest = XXH3_64bits((const void *)a[1], ret > 0 ? (size_t)ret : 0);
        return 1;
    case SYS_writev:
    case SYS_pwritev:
        iov = (const struct iovec *)a[1];
        cnt = a[2];
        break;
    case SYS_sendmsg:
        iov = ((const struct msghdr *)a[1])->msg_iov;
        cnt = (long)((const struct msghdr *)a[1])->msg_iovlen;
        break;
    default:
        return 0;
    }
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (long i = 0, left = ret; i < cnt && left > 0; i++) {
        size_t len = iov[i].iov_len < (size_t)left ? iov[i].iov_len : (size_t)left;
        XXH3_64bits_update(&st, iov[i].iov_base, len);
        left -= (long)len;
    }
    *digest = XXH3_64bits_digest(&st);
    return 1;
}

/* Payload size of the blobs for these spans. */
static uint32_t blobs_size(const struct us_span *sp, int n)
{
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += sizeof(struct us_blob) + us_align8((uint32_t)sp[i].len);
    if (total > us_ring_max_payload(&us_log_))
        us_fatal("a call returned %lu bytes of results, more than one log record holds",
                 (unsigned long)total);
    return (uint32_t)total;
}

static void blobs_write(uint8_t *p, const struct us_span *sp, int n)
{
    for (int i = 0; i < n; i++) {
        struct us_blob *b = (struct us_blob *)p;
        b->len = (uint32_t)sp[i].len;
        b->reserved = 0;
        memcpy(b + 1, sp[i].p, sp[i].len);
        p += sizeof(*b) + us_align8(b->len);
    }
}

/* Copies the logged blobs into the backup's buffers; -1 if they do not match. */
static int blobs_read(const struct us_event *ev, const struct us_span *sp, int n)
{
    const uint8_t *p = (const uint8_t *)(ev + 1), *end = (const uint8_t *)ev + ev->size;
    for (int i = 0; i < n; i++) {
        if (p + sizeof(struct us_blob) > end)
            return -1;
        const struct us_blob *b = (const struct us_blob *)p;
        size_t len = b->len < sp[i].len ? b->len : sp[i].len;
        memcpy(sp[i].p, b + 1, len);
        p += sizeof(*b) + us_align8(b->len);
    }
    return p == end ? 0 : -1;
}

/* An output call that hands the kernel bytes for the peer or the file (not
 * an option or an epoll registration, also K_OUTPUT: they change state
 * outside the process, but carry no data). */
static inline int puts_bytes_out(long nr, const struct us_sysdesc *d)
{
    return d->kind == K_OUTPUT && nr != SYS_setsockopt && nr != SYS_epoll_ctl;
}

/* Bookkeeping shared by record and replay, once the result is known. */
static void track_fds(long nr, const long *a, long ret, const struct us_sysdesc *d,
                      const struct us_event *ev)
{
    struct us_fd *f = d->fd_arg >= 0 ? us_fd_get(a[d->fd_arg]) : NULL;
    switch (d->kind) {
    case K_OUTPUT:
        if (nr == SYS_epoll_ctl)
            us_note_epoll_ctl(a, ret);
        if (f && ret > 0 && puts_bytes_out(nr, d))
            f->written += ret;
        break;
    case K_CLOSE:
        if (f && ret == 0) {
            us_fd_unwake((int)a[0]);
            memset(f, 0, sizeof(*f));
        }
        break;
    case K_DUP:
        if (ret >= 0 && f)
            us_fd_created(ret, f->kind);
        break;
    default:
        break;
    }
    if (f && f->kind == US_FD_FILE && is_file_op(nr) && ev)
        f->fpos = (int64_t)ev->aux;
    (void)ev;
}

long us_record(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d)
{
    struct us_fd *f = d->fd_arg >= 0 ? us_fd_get(a[d->fd_arg]) : NULL;
    uint64_t aux = 0;
    uint16_t flags = 0;

    if (f && f->kind == US_FD_SHIM)
        us_fatal("the program used fd %ld, reserved by understudy, in %s", a[d->fd_arg],
                 us_sysname(nr));
    /* Before the first output on a TCP socket, note what its kernel had
     * already sent, so failover can tell how much of our output got out. */
    if (d->kind == K_OUTPUT && f && f->kind == US_FD_SOCKET && !f->base_known &&
        nr != SYS_setsockopt && nr != SYS_bind && nr != SYS_listen && nr != SYS_connect &&
        nr != SYS_epoll_ctl) {
        f->sent_base = us_tcp_sent_total((int)a[d->fd_arg]);
        f->base_known = 1;
        aux = (uint64_t)f->sent_base;
        flags |= US_EVF_SENT_BASE;
    }

    struct fd_versions fv;
    fds_closed(nr, a, d, &fv);
    fds_lock(&fv);

    long r;
    if (d->kind == K_OUTPUT && f && f->skip > 0)
        r = output_with_skip(nr, a, f);
    else if (d->kind == K_OUTPUT && f && f->in_flight &&
             (f->skip = (int64_t)us_output_in_file(nr, a, f)) > 0)
        r = output_with_skip(nr, a, f);
    else if (d->exec)
        r = d->exec(a);
    else
        r = us_raw(nr, a);
    /* `understudy inject ... crash-in-write`: the bytes are out, the log
     * will never say so */
    if (US_UNLIKELY(r > 0 && puts_bytes_out(nr, d) && us_take_injected(US_INJECT_CRASH_IN_WRITE)))
        US_SYSCALL2(SYS_kill, US_SYSCALL0(SYS_getpid), SIGKILL);

    if (!fv.n) {
        fds_created(nr, a, r, d, &fv);
        fds_lock(&fv);
    }
    if (d->kind == K_FDNEW && fv.n) {
        int kind = classify_new_fd(nr, a, fv.fd[0]);
        for (int i = 0; i < fv.n; i++)
            us_fd_created(fv.fd[i], kind);
        aux = (uint64_t)kind;
    }
    if (f && f->kind == US_FD_FILE && is_file_op(nr))
        aux = (uint64_t)US_SYSCALL3(SYS_lseek, a[d->fd_arg], 0, SEEK_CUR);

    struct us_span sp[US_MAX_SPANS];
    int n = d->out ? d->out(a, r, sp) : 0;
    uint32_t payload = blobs_size(sp, n);
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, payload);
    ev->type = US_EV_SYSCALL;
    ev->flags = flags;
    ev->nr = (uint32_t)nr;
    ev->fd = d->fd_arg >= 0 ? (int32_t)a[d->fd_arg] : -1;
    ev->check = d->size_arg >= 0 ? (uint64_t)a[d->size_arg] : 0;
    ev->ret = r;
    ev->aux = aux;
    if (d->kind == K_OUTPUT)
        output_digest(nr, a, r, &ev->digest);
    else if (fv.n)
        ev->order = fds_pack(&fv);
    blobs_write((uint8_t *)(ev + 1), sp, n);
    track_fds(nr, a, r, d, ev);
    us_publish_call(t, ev, payload);
    fds_unlock(&fv);
    return r;
}

/* A logged event as a divergence report shows it. */
static void seen(struct us_seen *out, const struct us_event *ev)
{
    *out = (struct us_seen){.type = ev->type, .nr = ev->nr, .fd = ev->fd, .ret = ev->ret,
                            .check = ev->check, .seq = ev->seq,
                            .site = ev->type == US_EV_SYNC ? ev->site : 0};
}

/* One line describing it. */
static void describe(char *buf, size_t cap, const struct us_seen *e)
{
    switch (e->type) {
    case US_EV_SYSCALL:
        us_fmt(buf, cap, "%s(%d) = %ld", us_sysname(e->nr), e->fd, (long)e->ret);
        break;
    case US_EV_SYNC:
        us_fmt(buf, cap, "%s on object #%u (version %lu) = %ld from %p", us_sync_op_name(e->fd),
               e->nr, (unsigned long)e->check, (long)e->ret, (void *)e->site);
        break;
    case US_EV_SIGNAL:
        us_fmt(buf, cap, "signal %d", e->fd);
        break;
    case US_EV_THREAD:
        us_fmt(buf, cap, "thread created (ring %d)", e->fd);
        break;
    case US_EV_EXIT:
        us_fmt(buf, cap, "thread exit");
        break;
    default:
        us_fmt(buf, cap, "event of type %u", e->type);
        break;
    }
}

/* The last records this thread replayed, then what the primary did after
 * the one that did not match (the next, reported below): both sides. */
static void say_recent(const struct us_thread *t)
{
    char line[160];
    for (unsigned k = t->nrecent > 16 ? t->nrecent - 16 : 0; k < t->nrecent; k++) {
        const struct us_seen *e = &t->recent[k % 16];
        describe(line, sizeof(line), e);
        us_say("  replayed event %lu: %s", (unsigned long)e->seq, line);
    }
    for (unsigned n = 1; n <= 4; n++) {
        const struct us_event *ev = us_ring_peek_ahead(&us_log_, t->ring, us_slot, n);
        if (!ev)
            break;
        struct us_seen e;
        seen(&e, ev);
        describe(line, sizeof(line), &e);
        us_say("  after the record below, the primary's log has event %lu: %s",
               (unsigned long)e.seq, line);
    }
}

/* What a divergence in a program with threads usually means. */
static void say_thread_hint(void)
{
    if (__atomic_load_n(&us_log_.hdr->nthreads, __ATOMIC_RELAXED) > 0)
        us_say("the program has threads: they probably synchronise through something understudy "
               "does not see (atomic variables, a spin loop, a variable written without a lock), "
               "whose outcome depends on timing; README, 'What is replicated'");
}

/* The one line that says what diverged. */
static void divergence_text(char *buf, size_t cap, const struct us_thread *t,
                            const struct us_event *ev, long nr, const long *a, const char *what,
                            const char *why)
{
    char logged[160] = "nothing";
    if (ev) {
        struct us_seen e;
        seen(&e, ev);
        describe(logged, sizeof(logged), &e);
    }
    if (what)
        us_fmt(buf, cap, "divergence on thread %u at event %lu: the program made %s, but the "
                         "primary's log has %s",
               t->ring, ev ? (unsigned long)ev->seq : 0ul, what, logged);
    else if (ev && ev->type == US_EV_SYSCALL)
        us_fmt(buf, cap, "divergence on thread %u at event %lu: the program called %s(%ld, ..., "
                         "%ld) but the primary's log has %s(%d, ..., %lu) (%s)",
               t->ring, (unsigned long)ev->seq, us_sysname(nr), a[0], a[2], us_sysname(ev->nr),
               ev->fd, (unsigned long)ev->check, why);
    else
        us_fmt(buf, cap, "divergence on thread %u at event %lu: the program called %s but the "
                         "log has %s (%s)",
               t->ring, ev ? (unsigned long)ev->seq : 0ul, us_sysname(nr), logged, why);
}

static void count_divergence(void)
{
    struct us_replica *me = &us_log_.hdr->replica[us_slot];
    if (!__atomic_load_n(&me->diverged, __ATOMIC_ACQUIRE))
        __atomic_add_fetch(&me->divergences, 1, __ATOMIC_RELEASE);
}

US_NORETURN static void retire(const char *text)
{
    count_divergence();
    us_fatal("%s", text);
}

/*
 * Majority vote (three replicas or more): a backup that diverges does not
 * retire at once. It says where (thread, event) and what it would have done
 * (sig), and waits for the supervisor, which compares it with the other
 * backups: if they diverged at the same event in the same way, the primary is
 * the faulty one, and this replica takes over (the promote flag); if another
 * backup went past that event as the primary did, this one is retired.
 * Once this replica takes over, the dead primary's records after the point
 * are its own: output bytes that differ are the faulty primary's (already
 * sent) and replay goes on; a call that differs ends the thread's replay.
 */
static int outvoted_primary; /* this replica won a vote against the primary */

/*
 * Once one thread of the winner goes live at a call the faulty primary's log
 * does not hold, what the other threads' rings say after this point may
 * depend on what that thread will now not replay (a lock it would have
 * released): each thread stops replaying at its next event or turn, which
 * leaves every object in a state some interleaving reached, and all go live
 * together from there (us_promote).
 */
int us_replay_cut;

void us_end_replay_here(unsigned ring)
{
    struct us_ring_ctl *c = &us_log_.hdr->ring[ring];
    struct us_ring_consumer *me = &c->consumer[us_slot];
    me->seen_head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
    __atomic_store_n(&me->seq, __atomic_load_n(&c->head_seq, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
    __atomic_store_n(&me->tail, me->seen_head, __ATOMIC_RELEASE);
}

int us_vote(struct us_thread *t, const struct us_event *ev, uint64_t sig, int output_only,
            const char *text)
{
    struct us_log_header *h = us_log_.hdr;
    struct us_replica *me = &h->replica[us_slot];
    if (!__atomic_load_n(&outvoted_primary, __ATOMIC_ACQUIRE)) {
        say_recent(t);
        say_thread_hint();
        if (h->nreplicas < 3 || !ev)
            retire(text);
        us_say("%s", text);
        count_divergence();
        uint32_t zero = 0;
        if (__atomic_compare_exchange_n(&me->diverged, &zero, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            me->diverged_ring = t->ring;
            me->diverged_seq = ev->seq;
            me->diverged_sig = sig;
            __atomic_store_n(&me->state, US_REPLICA_DIVERGED, __ATOMIC_RELEASE);
            us_say("waiting for the other replicas: which of us diverged?");
        }
        while (!__atomic_load_n(&me->promote, __ATOMIC_ACQUIRE)) {
            if (__atomic_load_n(&me->state, __ATOMIC_ACQUIRE) == US_REPLICA_RETIRED)
                retire("outvoted: the primary and another backup agree");
            struct timespec ts = {0, 1000000};
            US_SYSCALL2(SYS_nanosleep, &ts, 0);
        }
        __atomic_store_n(&outvoted_primary, 1, __ATOMIC_RELEASE);
    }
    if (output_only)
        return US_VOTE_REPLAY_ON;
    __atomic_store_n(&us_replay_cut, 1, __ATOMIC_RELEASE);
    return US_VOTE_GO_LIVE;
}

US_NORETURN void us_diverged_at(struct us_thread *t, const struct us_event *ev, const char *what)
{
    char text[512];
    divergence_text(text, sizeof(text), t, ev, 0, NULL, what, NULL);
    say_recent(t);
    say_thread_hint();
    retire(text);
}

US_NORETURN void us_diverged(struct us_thread *t, const struct us_event *ev, long nr,
                             const long *a, const char *why)
{
    char text[512];
    divergence_text(text, sizeof(text), t, ev, nr, a, NULL, why);
    say_recent(t);
    say_thread_hint();
    retire(text);
}

int us_vote_at(struct us_thread *t, const struct us_event *ev, const char *what, uint64_t sig)
{
    char text[512];
    divergence_text(text, sizeof(text), t, ev, 0, NULL, what, NULL);
    return us_vote(t, ev, sig, 0, text);
}

/* What a backup would have done where it diverged, to compare with others. */
static uint64_t call_sig(long nr, const long *a)
{
    long v[4] = {nr, a[0], a[1], a[2]};
    return XXH3_64bits(v, sizeof(v));
}

/* A mismatch in a replayed system call: retire, or the vote's outcome. */
static int call_mismatch(struct us_thread *t, const struct us_event *ev, long nr, const long *a,
                         const char *why, uint64_t sig, int output_only)
{
    char text[512];
    divergence_text(text, sizeof(text), t, ev, nr, a, NULL, why);
    return us_vote(t, ev, sig, output_only, text);
}

struct us_event *us_next_event(struct us_thread *t)
{
    if (US_UNLIKELY(__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE)))
        return NULL;
    struct us_event *ev = us_ring_next(&us_log_, t->ring, us_slot);
    if (US_UNLIKELY(ev == US_RING_CORRUPT || (ev && us_event_payload_check(ev) < 0)))
        us_fatal("corrupt record in the log of thread %u after event %lu: this replica "
                 "cannot follow the primary", t->ring, (unsigned long)t->recent[(t->nrecent - 1) % 16].seq);
    return ev;
}

struct us_event *us_expect(struct us_thread *t, long nr, const long *a, const struct us_sysdesc *d)
{
    struct us_event *ev = us_next_event(t);
    if (!ev)
        return NULL;
    if (ev->type == US_EV_CRASH) {
        /* The primary faulted here and we did not: not the program's own
         * bug. What it logged after the fault (its crash handler) is
         * dropped, and this replica takes over when the supervisor says so. */
        struct us_ring_ctl *c = &us_log_.hdr->ring[t->ring];
        while (!__atomic_load_n(&us_log_.hdr->replica[us_slot].promote, __ATOMIC_ACQUIRE)) {
            struct timespec ts = {0, 1000000};
            US_SYSCALL2(SYS_nanosleep, &ts, 0);
        }
        c->consumer[us_slot].seen_head = c->head;
        __atomic_store_n(&c->consumer[us_slot].tail, c->head, __ATOMIC_RELEASE);
        return NULL;
    }
    const char *why = ev->type != US_EV_SYSCALL || ev->nr != (uint32_t)nr ? "different call"
                      : d->fd_arg >= 0 && ev->fd != (int32_t)a[d->fd_arg]     ? "different fd"
                      : d->size_arg >= 0 && ev->check != (uint64_t)a[d->size_arg] ? "different size"
                                                                                : NULL;
    if (why && call_mismatch(t, ev, nr, a, why, call_sig(nr, a), 0) == US_VOTE_GO_LIVE)
        return NULL;
    return ev;
}

void us_consume(struct us_thread *t, struct us_event *ev)
{
    t->sigs_after = ev->flags & US_EVF_SIGNALS_NEXT;
    seen(&t->recent[t->nrecent++ % 16], ev);
    us_ring_consume(&us_log_, t->ring, us_slot, ev);
}

void us_publish_call(struct us_thread *t, struct us_event *ev, uint32_t payload)
{
    t->sigs_after = us_signals_take_pending();
    if (t->sigs_after)
        ev->flags |= US_EVF_SIGNALS_NEXT;
    us_ring_publish(&us_log_, t->ring, ev, payload);
}

/* Backup: make fd `fd` exist, as a placeholder, so numbering stays identical. */
static void placeholder(int fd, int cloexec)
{
    long r = US_SYSCALL3(SYS_dup3, us_null_fd, fd, cloexec ? O_CLOEXEC : 0); /* under the lock */
    if (r != fd)
        us_fatal("cannot hold fd %d for the program (dup3: %ld)", fd, r);
}

/*
 * Backup: a regular file the primary opened read-only is opened here too (no
 * side effect), so that a private read-only mmap of it works in every
 * replica. Its reads still come from the log.
 */
static int open_readonly_twin(long nr, const long *a, int fd, int kind)
{
    long path, flags;
    if (kind != US_FD_FILE)
        return 0;
    if (nr == SYS_openat) {
        path = a[1];
        flags = a[2];
    } else if (nr == SYS_open) {
        path = a[0];
        flags = a[1];
    } else {
        return 0;
    }
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC)))
        return 0;
    long mine = US_SYSCALL4(SYS_openat, nr == SYS_openat ? a[0] : AT_FDCWD, path,
                            O_RDONLY | O_CLOEXEC | O_NOCTTY, 0);
    if (mine < 0)
        return 0;
    if (mine == fd)
        return 1; /* the lowest free number: already where it belongs */
    long r = US_SYSCALL3(SYS_dup3, mine, fd, (flags & O_CLOEXEC) ? O_CLOEXEC : 0);
    US_SYSCALL1(SYS_close, mine);
    return r == fd;
}

long us_replay(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d)
{
    struct us_event *ev = us_expect(t, nr, a, d);
    if (!ev) {
        us_promote(t);
        return us_record(t, nr, a, d);
    }
    return us_replay_event(t, nr, a, d, ev);
}

long us_replay_event(struct us_thread *t, long nr, long *a, const struct us_sysdesc *d,
                     struct us_event *ev)
{
    long r = ev->ret;
    struct us_span sp[US_MAX_SPANS];
    int n = d->out ? d->out(a, r, sp) : 0;
    if (blobs_read(ev, sp, n) < 0)
        us_diverged(t, ev, nr, a, "different result buffers");

    struct us_fd *f = d->fd_arg >= 0 ? us_fd_get(a[d->fd_arg]) : NULL;
    if (f && (ev->flags & US_EVF_SENT_BASE)) {
        f->sent_base = (int64_t)ev->aux;
        f->base_known = 1;
    }
    uint64_t digest;
    switch (d->kind) {
    case K_OUTPUT:
        if (output_digest(nr, a, r, &digest) && digest != ev->digest)
            call_mismatch(t, ev, nr, a, "it would have written other bytes", digest, 1);
        break;
    case K_FDNEW: {
        struct fd_versions fv;
        if (fds_wait(nr, a, d, ev, &fv) < 0)
            goto live;
        us_ord_lock(&us_backup_fdtable_lock);
        for (int i = 0; i < fv.n; i++) {
            if (!open_readonly_twin(nr, a, fv.fd[i], (int)ev->aux))
                placeholder(fv.fd[i], new_fd_cloexec(nr, a));
            us_fd_created(fv.fd[i], (int)ev->aux);
        }
        us_ord_unlock(&us_backup_fdtable_lock);
        fds_set(&fv);
        break;
    }
    case K_CLOSE: {
        struct fd_versions fv;
        if (fds_wait(nr, a, d, ev, &fv) < 0)
            goto live;
        if (r == 0)
            US_SYSCALL1(SYS_close, a[0]);
        track_fds(nr, a, r, d, ev);
        fds_set(&fv);
        us_consume(t, ev);
        return r;
    }
    case K_DUP: {
        /* the same number as the primary's: not the lowest free one here,
         * where other threads may be ahead or behind */
        struct fd_versions fv;
        if (fds_wait(nr, a, d, ev, &fv) < 0)
            goto live;
        long mine = r;
        if (r >= 0) {
            int cloexec = nr == SYS_dup3 ? (int)(a[2] & O_CLOEXEC)
                          : (nr == SYS_fcntl && a[1] == F_DUPFD_CLOEXEC) ? O_CLOEXEC : 0;
            us_ord_lock(&us_backup_fdtable_lock);
            mine = (nr == SYS_dup2 && a[0] == a[1]) ? r : US_SYSCALL3(SYS_dup3, a[0], r, cloexec);
            us_ord_unlock(&us_backup_fdtable_lock);
        }
        if (mine != r)
            us_diverged(t, ev, nr, a, "dup gave another fd");
        track_fds(nr, a, r, d, ev);
        fds_set(&fv);
        us_consume(t, ev);
        return r;
    }
    default:
        break;
    }
    track_fds(nr, a, r, d, ev);
    us_consume(t, ev);
    return r;
live: /* replay cut short before this call's turn: it is done live */
    us_promote(t);
    return us_record(t, nr, a, d);
}

static __attribute__((noinline)) long unsupported(long nr)
{
    us_fatal("unsupported system call %s (%ld): understudy cannot replicate it faithfully",
             us_sysname(nr), nr);
}

/* `understudy inject --replica R spin`: the program is stuck computing (a
 * loop a fault made endless) and makes no more calls on this thread. */
static __attribute__((noinline, cold, noreturn)) void injected_spin(void)
{
    for (;;)
        __builtin_ia32_pause();
}

/*
 * Before the shim attaches (constructors of the program's libraries run
 * first: jemalloc starts its purge clock there) nothing can be logged, yet
 * what that code reads must be alike in every replica, or a backup decides
 * later from another start time. So time reads return the supervisor's
 * clocks at the program's start (US_ENV_START_*), advancing 1 us per read so
 * that a wait for time to pass still ends; CPU-time clocks count the reads
 * alone. Without them (not started by understudy run): real time.
 */
static long time_before_attach(long nr, const long *a)
{
    static long mono_ns = -2, real_ns = -2;
    static uint64_t reads;
    if (mono_ns == -2) {
        mono_ns = us_env_number(US_ENV_START_MONO);
        real_ns = us_env_number(US_ENV_START_REAL);
    }
    if (mono_ns < 0 || real_ns < 0)
        return us_raw(nr, a);
    uint64_t step = __atomic_add_fetch(&reads, 1, __ATOMIC_RELAXED) * 1000;
    long clk = nr == SYS_clock_gettime ? a[0] : CLOCK_REALTIME;
    uint64_t ns = clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE || clk == CLOCK_TAI ||
                          clk == CLOCK_REALTIME_ALARM
                      ? (uint64_t)real_ns + step
                  : clk == CLOCK_PROCESS_CPUTIME_ID || clk == CLOCK_THREAD_CPUTIME_ID || clk < 0
                      ? step
                      : (uint64_t)mono_ns + step;
    time_t sec = (time_t)(ns / 1000000000u);
    long sub_ns = (long)(ns % 1000000000u);
    if (nr == SYS_time) {
        if (a[0])
            *(time_t *)a[0] = sec;
        return (long)sec;
    }
    if (nr == SYS_gettimeofday && a[0])
        *(struct timeval *)a[0] = (struct timeval){sec, (suseconds_t)(sub_ns / 1000)};
    if (nr == SYS_clock_gettime && a[1])
        *(struct timespec *)a[1] = (struct timespec){sec, sub_ns};
    return 0;
}

long us_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
    struct us_thread *t = us_self;
    long a[6] = {a0, a1, a2, a3, a4, a5};
    if (US_UNLIKELY(!t || t->mode == US_MODE_OFF || t->in_engine)) {
        if (!t && !us_log_.hdr &&
            (nr == SYS_clock_gettime || nr == SYS_gettimeofday || nr == SYS_time))
            return time_before_attach(nr, a);
        return us_raw(nr, a);
    }
    if (US_UNLIKELY(us_take_injected(US_INJECT_SPIN)))
        injected_spin();
    if (US_UNLIKELY(nr < 0 || nr >= US_NSYSCALLS))
        unsupported(nr);
    const struct us_sysdesc *d = &us_systab[nr];
    if (d->kind == K_PASS)
        return us_raw(nr, a);

    t->in_engine = 1;
    long r;
    switch (d->kind) {
    case K_SPECIAL:
        r = d->special(t, nr, a);
        break;
    case K_UNSUPPORTED:
        r = unsupported(nr);
        break;
    default:
        r = t->mode == US_MODE_RECORD ? us_record(t, nr, a, d) : us_replay(t, nr, a, d);
        break;
    }
    t->in_engine = 0;
    if (t->sigs_after)
        us_signals_after_call(t);
    return r;
}
