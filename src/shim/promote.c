/*
 * promote.c - a backup becomes the primary (docs/failover.md).
 *
 * Each thread of the promoted backup replays its ring to the end; the first
 * to get there runs the process-wide step below while the others wait, and
 * then every thread goes on recording, as a primary does:
 *  1. ask the supervisor for the real fds at the numbers the program has
 *     open (they are held by the dead primary's keeper) and put them in place
 *     of the placeholders;
 *  2. settle what the dead primary had in flight: output the kernel already
 *     took is not sent again (per-fd skip), a file read is redone at the
 *     logged offset, a connection it accepted but never logged is handed to
 *     the next accept on its listening socket;
 *  3. start our own keeper and tell the supervisor we are live.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>

#include "engine.h"
#include "order.h"
#include "understudy/ctl_protocol.h"

long us_spawn_keeper(void);
static void wake_waiters(void);
static int orphan_for(int listen_fd);

static int promote_state; /* 0 not yet, 1 under way, 2 done */

#define MAX_ORPHANS 256
static int orphans[MAX_ORPHANS];
static int norphans;

/* Where the shim puts fds of its own after promotion: high, out of the
 * program's way, but under the program's RLIMIT_NOFILE as it is now: the
 * program may have lowered it since the shim placed us_ctl_fd (memcached
 * sets it to its -c). */
static long shim_fd_floor(void)
{
    struct rlimit rl;
    long floor = us_ctl_fd - 512;
    if (US_SYSCALL2(SYS_getrlimit, RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur - 64 < floor)
        floor = (long)rl.rlim_cur - 64 > 3 ? (long)rl.rlim_cur - 64 : 3;
    return floor;
}

static void ctl_send(const struct us_msg *m)
{
    size_t len = offsetof(struct us_msg, fd) + m->count * sizeof(int32_t);
    if (US_SYSCALL4(SYS_sendto, us_ctl_fd, m, len, MSG_NOSIGNAL) < 0)
        us_fatal("lost the supervisor during promotion");
}

/* Receives one message and the fds attached to it (into `fds`). */
static int ctl_recv(struct us_msg *m, int *fds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * US_MSG_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {m, sizeof(*m)};
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.buf;
    mh.msg_controllen = sizeof(cbuf.buf);
    long r = US_SYSCALL3(SYS_recvmsg, us_ctl_fd, &mh, MSG_CMSG_CLOEXEC);
    if (r < (long)offsetof(struct us_msg, fd))
        us_fatal("lost the supervisor during promotion (%ld)", r);
    int n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(c), (size_t)n * sizeof(int));
        }
    }
    return n;
}

/*
 * Output in flight on an inherited regular file (stdout to a file): the old
 * primary may have written it and died before logging it. The file is shared
 * with others (the supervisor's messages, the user's shell), so its offset
 * does not say how much was ours; its content does. What lies past the last
 * logged write is read at promotion, and the new primary's next writes to the
 * fd that are found there, one after the other from its start, are reported
 * written instead of being written again. The first write not found there
 * ends the check.
 */
#define IN_FILE_MAX (64u << 10) /* a stdio buffer or more per fd; kept small:
                                     the shim lives in the program's address space */
static uint8_t in_file_buf[IN_FILE_MAX]; /* what fds 0-2 hold past their last logged writes */
static size_t in_file_used;
static struct in_file {
    size_t off, len, at; /* its bytes in in_file_buf, of which matched */
} in_file[3];

static void note_output_in_file(int fd, struct us_fd *f)
{
    if (fd > 2)
        return;
    int64_t from = f->fpos >= 0 ? f->fpos : us_log_.hdr->stdio_pos[fd];
    int64_t to = us_file_write_pos(fd);
    if (from < 0 || to <= from)
        return;
    size_t len = (size_t)(to - from), got = 0;
    /* stdout is open for writing only: read it through a descriptor of our own */
    char path[] = "/proc/self/fd/N";
    path[sizeof(path) - 2] = (char)('0' + fd);
    long rfd = len <= IN_FILE_MAX - in_file_used
                   ? US_SYSCALL4(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0)
                   : -EFBIG;
    while (rfd >= 0 && got < len) {
        long r = US_SYSCALL4(SYS_pread64, rfd, in_file_buf + in_file_used + got, len - got,
                             from + (int64_t)got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (rfd >= 0)
        US_SYSCALL1(SYS_close, rfd);
    if (got < len) {
        us_say("fd %d: cannot read back the %lu bytes past its last logged write (%ld): output "
               "in flight at the failover may be written twice", fd, (unsigned long)len, rfd);
        return;
    }
    in_file[fd] = (struct in_file){in_file_used, len, 0};
    in_file_used += len;
    f->in_flight = 1;
}

/* How many of the first bytes of iov (n in all) equal p[0..len). */
static size_t iov_prefix_equal(const uint8_t *p, size_t len, const struct iovec *iov, int cnt)
{
    size_t done = 0;
    for (int i = 0; i < cnt && done < len; i++) {
        size_t k = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
        if (memcmp(p + done, iov[i].iov_base, k))
            return 0;
        done += k;
    }
    return done;
}

/* How many leading bytes of this output the old primary already wrote: they
 * come next in the file, from where the unmatched part begins (not anywhere
 * in it: a short write, a pid, could be found in text others wrote after
 * it). All of it, or the start of it when the old primary died in the
 * middle of the write (a write to a file can stop short at a fatal signal).
 * The first output not found there ends the check. */
size_t us_output_in_file(long nr, const long *a, struct us_fd *f)
{
    struct iovec one = {(void *)a[1], (size_t)a[2]};
    const struct iovec *iov = nr == SYS_writev ? (const struct iovec *)a[1] : &one;
    int cnt = nr == SYS_writev ? (int)a[2] : nr == SYS_write ? 1 : 0;
    size_t n = 0;
    for (int i = 0; i < cnt; i++)
        n += iov[i].iov_len;
    struct in_file *w = &in_file[a[0]]; /* in_flight is set on fds 0-2 only */
    size_t rest = w->len - w->at;
    size_t k = n ? iov_prefix_equal(in_file_buf + w->off + w->at, rest < n ? rest : n, iov, cnt) : 0;
    if (k)
        us_say("fd %ld: %lu of %lu bytes of output were already written by the old primary",
               a[0], (unsigned long)k, (unsigned long)n);
    w->at += k;
    if (!k || w->at == w->len)
        f->in_flight = 0;
    return k;
}

static void settle_fd(int fd, struct us_fd *f)
{
    if (f->inherited) {
        if (f->kind == US_FD_FILE)
            note_output_in_file(fd, f);
        return;
    }
    if (f->kind == US_FD_SOCKET) {
        int64_t total = us_tcp_sent_total(fd);
        if (total < 0)
            return; /* not TCP: nothing to measure */
        int64_t base = f->base_known ? f->sent_base : 0;
        int64_t skip = total - base - f->written;
        if (skip > 0) {
            f->skip = skip;
            us_say("fd %d: %ld bytes of output were already sent by the old primary", fd,
                   (long)skip);
        }
    } else if (f->kind == US_FD_FILE && f->fpos >= 0) {
        long fl = US_SYSCALL2(SYS_fcntl, fd, F_GETFL);
        if (fl >= 0 && (fl & O_APPEND)) {
            struct stat st;
            if (US_SYSCALL2(SYS_fstat, fd, &st) == 0 && st.st_size > f->fpos)
                f->skip = st.st_size - f->fpos;
        } else {
            US_SYSCALL3(SYS_lseek, fd, f->fpos, SEEK_SET);
        }
    }
}

/*
 * A signalfd wakes an epoll through the wait queue of the process that added
 * it to the epoll set: the dead primary. Registrations of signalfds are noted
 * as the log goes by and redone by the new primary.
 */
struct sigfd_reg {
    int epfd, fd;
    struct epoll_event ev;
};
static struct sigfd_reg sigfd_regs[16];

void us_note_epoll_ctl(const long *a, long ret)
{
    struct us_fd *f = us_fd_get(a[2]);
    if (ret < 0 || !f)
        return;
    /* where each fd waits, for a wake-up after a replay cut (below) */
    if (a[1] == EPOLL_CTL_DEL) {
        if (f->ep_fd1 == (int32_t)a[0] + 1) {
            f->ep_fd1 = 0;
            us_fd_unwake((int)a[2]);
        }
    } else if (a[3]) {
        struct epoll_event ev;
        memcpy(&ev, (const void *)a[3], sizeof(ev));
        f->ep_fd1 = (int32_t)a[0] + 1;
        f->ep_events = ev.events;
        f->ep_data = ev.data.u64;
    }
    if (f->kind != US_FD_SIGNALFD)
        return;
    struct sigfd_reg *free_slot = NULL;
    for (unsigned i = 0; i < sizeof(sigfd_regs) / sizeof(sigfd_regs[0]); i++) {
        struct sigfd_reg *r = &sigfd_regs[i];
        if (r->fd == 0 && r->epfd == 0) {
            if (!free_slot)
                free_slot = r;
            continue;
        }
        if (r->epfd == (int)a[0] && r->fd == (int)a[2]) {
            if (a[1] == EPOLL_CTL_DEL)
                memset(r, 0, sizeof(*r));
            else
                memcpy(&r->ev, (void *)a[3], sizeof(r->ev));
            return;
        }
    }
    if (a[1] == EPOLL_CTL_ADD && free_slot) {
        free_slot->epfd = (int)a[0];
        free_slot->fd = (int)a[2];
        memcpy(&free_slot->ev, (void *)a[3], sizeof(free_slot->ev));
    } else if (a[1] == EPOLL_CTL_ADD) {
        us_fatal("more than 16 signalfd registrations in epoll sets");
    }
}

void us_reregister_signalfds(void)
{
    for (unsigned i = 0; i < sizeof(sigfd_regs) / sizeof(sigfd_regs[0]); i++) {
        struct sigfd_reg *r = &sigfd_regs[i];
        if (r->fd == 0 && r->epfd == 0)
            continue;
        US_SYSCALL4(SYS_epoll_ctl, r->epfd, EPOLL_CTL_DEL, r->fd, 0);
        US_SYSCALL4(SYS_epoll_ctl, r->epfd, EPOLL_CTL_ADD, r->fd, &r->ev);
    }
}

static void promote_process(void)
{
    struct us_replica *me = &us_log_.hdr->replica[us_slot];
    __atomic_store_n(&me->state, US_REPLICA_PROMOTING, __ATOMIC_RELEASE);

    /* 1. the fds the program has open, by number */
    struct us_msg m;
    m.type = US_MSG_FDS_WANTED;
    m.count = 0;
    for (int fd = 3; fd < US_MAX_FDS; fd++) {
        uint8_t k = us_fds[fd].kind;
        if (k == US_FD_NONE || k == US_FD_SHIM)
            continue;
        m.fd[m.count++] = fd;
        if (m.count == US_MSG_MAX_FDS) {
            ctl_send(&m);
            m.count = 0;
        }
    }
    if (m.count)
        ctl_send(&m);
    m.type = US_MSG_FDS_END;
    m.count = 0;
    ctl_send(&m);

    int got[US_MSG_MAX_FDS];
    for (;;) {
        int n = ctl_recv(&m, got);
        if (m.type == US_MSG_FDS_END)
            break;
        if (n != (int)m.count)
            us_fatal("promotion: %u fds announced, %d received", m.count, n);
        for (int i = 0; i < n; i++) {
            if (m.type == US_MSG_FDS) {
                long fl = US_SYSCALL2(SYS_fcntl, m.fd[i], F_GETFD);
                if (US_SYSCALL3(SYS_dup3, got[i], m.fd[i], fl > 0 ? O_CLOEXEC : 0) != m.fd[i])
                    us_fatal("promotion: cannot install fd %d", m.fd[i]);
                US_SYSCALL1(SYS_close, got[i]);
            } else if (m.type == US_MSG_ORPHANS && norphans < MAX_ORPHANS) {
                /* keep it out of the program's way until an accept takes it */
                long hi = US_SYSCALL3(SYS_fcntl, got[i], F_DUPFD_CLOEXEC, shim_fd_floor());
                US_SYSCALL1(SYS_close, got[i]);
                if (hi >= 0) {
                    us_fds[hi].kind = US_FD_SHIM;
                    orphans[norphans++] = (int)hi;
                } else {
                    us_say("cannot keep a connection the old primary accepted (%ld): it is "
                           "closed, its client sees a reset", hi);
                }
            }
        }
    }
    US_SYSCALL1(SYS_close, us_null_fd);
    us_fds[us_null_fd].kind = US_FD_NONE;
    wake_waiters();

    /* 2. what the dead primary had in flight */
    for (int fd = 0; fd < US_MAX_FDS; fd++)
        if (us_fds[fd].kind == US_FD_SOCKET || us_fds[fd].kind == US_FD_FILE)
            settle_fd(fd, &us_fds[fd]);

    us_reregister_signalfds();

    /* 3. our own keeper, and live */
    me->keeper_pid = (int32_t)us_spawn_keeper();
    __atomic_store_n(&me->role, US_ROLE_PRIMARY, __ATOMIC_RELEASE);
    __atomic_store_n(&me->state, US_REPLICA_LIVE, __ATOMIC_RELEASE);
    m.type = US_MSG_LIVE;
    m.count = 1;
    m.fd[0] = me->keeper_pid;
    ctl_send(&m);
}

/* The threads parked in us_promote, by ring: after a replay
 * cut, promotion waits for every thread of the process instead of every
 * ring drained. */
static uint8_t parked[US_MAX_THREADS];

static int count_parked(void)
{
    int n = 0;
    for (unsigned r = 0; r < US_MAX_THREADS; r++)
        n += __atomic_load_n(&parked[r], __ATOMIC_ACQUIRE);
    return n;
}

/* Threads of this process, as the kernel counts them (a thread being
 * created is one already). */
static int count_tasks(void)
{
    us_ord_lock(&us_backup_fdtable_lock);
    long dir = US_SYSCALL4(SYS_openat, AT_FDCWD, "/proc/self/task",
                           O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dir < 0)
        us_fatal("promotion: cannot open /proc/self/task (%ld)", dir);
    int n = 0;
    char buf[4096];
    for (long got; (got = US_SYSCALL3(SYS_getdents64, dir, buf, sizeof(buf))) > 0;) {
        for (long off = 0; off < got;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *e = (void *)(buf + off);
            if (e->name[0] != '.')
                n++;
            off += e->reclen;
        }
    }
    US_SYSCALL1(SYS_close, dir);
    us_ord_unlock(&us_backup_fdtable_lock);
    return n;
}

/* After a cut, the rings of the dead primary's threads that have no thread
 * here (created after the cut) are dropped, free for new threads. */
static void drop_orphan_rings(void)
{
    struct us_log_header *h = us_log_.hdr;
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        if (parked[r] || __atomic_load_n(&h->ring[r].in_use, __ATOMIC_ACQUIRE) == US_RING_FREE)
            continue;
        us_end_replay_here(r);
        __atomic_store_n(&h->ring[r].in_use, US_RING_EXITED, __ATOMIC_RELEASE);
    }
}

/*
 * After a cut, what is left of the rings is the faulty primary's doing past
 * the point where this replica goes live, but the socket input it read there
 * is gone from the kernel: without it, requests would be lost and their
 * clients wait for ever. It is kept here, per fd in ring order, and handed
 * to the fd's next reads (us_sock_read); an fd the program waits for in an
 * epoll set gets an eventfd in that set with the same data, so its
 * epoll_wait reports the fd readable until the input is read. (Output the
 * faulty primary sent in reply is skipped as after any failover: a reply
 * that differs, the fault's own effect, cannot be recalled.)
 */
#define PUSHBACK_BYTES (8u << 20)
struct pb_chunk {
    int32_t fd;
    uint32_t len, used, pad;
};
static uint8_t pushback[PUSHBACK_BYTES] __attribute__((aligned(8)));
static uint32_t pushback_end;

static void stash_unread_input(unsigned r, uint64_t *kept, uint64_t *lost)
{
    const struct us_event *ev;
    while ((ev = us_ring_peek(&us_log_, r, us_slot)) && ev != US_RING_CORRUPT) {
        struct us_fd *f = us_fd_get(ev->fd);
        if (ev->type == US_EV_SYSCALL && (ev->flags & US_EVF_RECV_SLOT) && ev->ret > 0 && f &&
            f->kind == US_FD_SOCKET) {
            const struct us_blob *b = (const struct us_blob *)((const uint8_t *)(ev + 1) +
                                                               sizeof(struct us_recv_slot));
            uint32_t need = (uint32_t)sizeof(struct pb_chunk) + us_align8(b->len);
            if (b->len != (uint64_t)ev->ret || need > PUSHBACK_BYTES - pushback_end) {
                *lost += (uint64_t)ev->ret;
            } else {
                struct pb_chunk *c = (struct pb_chunk *)(pushback + pushback_end);
                c->fd = ev->fd;
                c->len = b->len;
                c->used = 0;
                memcpy(c + 1, b + 1, b->len);
                if (!f->pb_len)
                    f->pb_next = pushback_end;
                f->pb_len += b->len;
                pushback_end += need;
                *kept += b->len;
            }
        } else if (ev->type == US_EV_SYSCALL && ev->ret > 0 && f && f->kind == US_FD_SOCKET &&
                   (ev->nr == SYS_read || ev->nr == SYS_readv || ev->nr == SYS_recvfrom ||
                    ev->nr == SYS_recvmsg)) {
            *lost += (uint64_t)ev->ret; /* not kept: a read through iovecs */
        }
        us_ring_consume(&us_log_, r, us_slot, ev);
    }
    us_end_replay_here(r);
}

/* An eventfd in the epoll set `fd` waits in, with its data, so that the
 * program's epoll_wait reports `fd` readable until us_fd_unwake(fd). */
static void wake_fd(int fd, const char *why)
{
    struct us_fd *f = &us_fds[fd];
    long efd = US_SYSCALL2(SYS_eventfd2, 1, EFD_CLOEXEC | EFD_NONBLOCK);
    long hi = efd < 0 ? efd : US_SYSCALL3(SYS_fcntl, efd, F_DUPFD_CLOEXEC, shim_fd_floor());
    if (efd >= 0)
        US_SYSCALL1(SYS_close, efd);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = f->ep_data};
    if (hi < 0 || US_SYSCALL4(SYS_epoll_ctl, f->ep_fd1 - 1, EPOLL_CTL_ADD, hi, &ev) < 0) {
        us_say("fd %d: cannot wake its epoll set for the %s (%ld): it waits for new input", fd,
               why, hi);
        if (hi >= 0)
            US_SYSCALL1(SYS_close, hi);
        return;
    }
    us_fds[hi].kind = US_FD_SHIM;
    f->wake = (int32_t)hi;
}

/*
 * Once the real fds are in place, the program may wait in epoll_wait for
 * something that has already happened: input kept after a replay cut (the
 * kernel no longer has it), or a connection the dead primary accepted
 * without logging it (the listener no longer shows it). Each such fd gets
 * woken (wake_fd) until the program has taken what waits for it.
 */
static void wake_waiters(void)
{
    for (int fd = 0; fd < US_MAX_FDS; fd++) {
        struct us_fd *f = &us_fds[fd];
        if (!f->ep_fd1 || !(f->ep_events & EPOLLIN))
            continue;
        if (f->pb_len)
            wake_fd(fd, "input kept");
        else if (norphans && f->kind == US_FD_SOCKET && orphan_for(fd) >= 0)
            wake_fd(fd, "connection accepted by the old primary");
    }
}

void us_fd_unwake(int fd)
{
    struct us_fd *f = us_fd_get(fd);
    if (!f || !f->wake)
        return;
    if (f->ep_fd1)
        US_SYSCALL4(SYS_epoll_ctl, f->ep_fd1 - 1, EPOLL_CTL_DEL, f->wake, 0);
    US_SYSCALL1(SYS_close, f->wake);
    us_fds[f->wake].kind = US_FD_NONE;
    f->wake = 0;
}

uint32_t us_pushback_take(int fd, void *buf, uint32_t len, int peek)
{
    struct us_fd *f = us_fd_get(fd);
    uint32_t got = 0, off = f->pb_next;
    while (got < len && got < f->pb_len && off < pushback_end) {
        struct pb_chunk *c = (struct pb_chunk *)(pushback + off);
        if (c->fd == fd && c->used < c->len) {
            uint32_t n = c->len - c->used < len - got ? c->len - c->used : len - got;
            memcpy((uint8_t *)buf + got, (uint8_t *)(c + 1) + c->used, n);
            got += n;
            if (peek)
                break; /* a peek looks at the first chunk only: a short read */
            c->used += n;
            if (c->used < c->len)
                break;
        }
        off += (uint32_t)sizeof(*c) + us_align8(c->len);
    }
    if (peek)
        return got;
    f->pb_len -= got;
    f->pb_next = off;
    if (off >= pushback_end)
        f->pb_len = 0;
    if (!f->pb_len)
        us_fd_unwake(fd);
    return got;
}

/* Every thread's ring consumed: no thread of ours still has to replay. */
static int all_drained(void)
{
    struct us_log_header *h = us_log_.hdr;
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        if (__atomic_load_n(&h->ring[r].in_use, __ATOMIC_ACQUIRE) == US_RING_FREE)
            continue;
        if (__atomic_load_n(&h->ring[r].consumer[us_slot].tail, __ATOMIC_ACQUIRE) !=
            __atomic_load_n(&h->ring[r].head, __ATOMIC_ACQUIRE))
            return 0;
    }
    return 1;
}

/*
 * A thread of this backup has replayed its ring to the end. It waits until
 * every other thread has too: the fds the program holds are known only then,
 * and a thread that went live while another still replays could take a lock
 * out of the logged order. Whatever a replaying thread still waits for was
 * done, in the primary, before its last logged event, so it comes (a thread
 * parked here has run up to its next call, past anything it did unlogged).
 * Then one thread hands over the process (fds, in-flight calls, keeper) and
 * all go live together.
 */
void us_promote(struct us_thread *t)
{
    if (__atomic_load_n(&promote_state, __ATOMIC_ACQUIRE) == 0) {
        __atomic_store_n(&parked[t->ring], 1, __ATOMIC_RELEASE);
    }
    /* Once one thread has seen every ring drained (or, after a cut, every
     * thread parked) and begun, the others may not look again: a thread
     * already live writes its ring on. */
    for (unsigned n = 0; __atomic_load_n(&promote_state, __ATOMIC_ACQUIRE) == 0; n++) {
        if (__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE)) {
            if (n % 20 == 0 && count_parked() == count_tasks())
                break;
        } else if (all_drained()) {
            break;
        }
        struct timespec ts = {0, 50000};
        US_SYSCALL2(SYS_nanosleep, &ts, 0);
    }
    int expected = 0;
    if (__atomic_compare_exchange_n(&promote_state, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE)) {
            uint64_t kept = 0, lost = 0;
            for (unsigned r = 0; r < US_MAX_THREADS; r++)
                if (parked[r])
                    stash_unread_input(r, &kept, &lost);
            drop_orphan_rings();
            if (kept || lost)
                us_say("kept %lu bytes of input the faulty primary read past the point of "
                       "divergence for the program to read again%s", (unsigned long)kept,
                       lost ? "; more was lost (too much, or not a plain socket read)" : "");
        }
        promote_process();
        __atomic_store_n(&promote_state, 2, __ATOMIC_RELEASE);
    } else {
        while (__atomic_load_n(&promote_state, __ATOMIC_ACQUIRE) != 2) {
            struct timespec ts = {0, 100000};
            US_SYSCALL2(SYS_nanosleep, &ts, 0);
        }
    }
    us_log_.hdr->ring[t->ring].producer_tid = (int32_t)US_SYSCALL0(SYS_gettid);
    __atomic_store_n(&t->mode, US_MODE_RECORD, __ATOMIC_RELEASE);
}

/* The index in orphans[] of a connection the dead primary accepted on
 * `listen_fd` but never logged, or -1. Same family and port: a listener
 * bound to a wildcard address accepts connections whose local address is
 * specific. */
static int orphan_for(int listen_fd)
{
    struct sockaddr_in6 want, have; /* sin6_family/sin6_port overlay sockaddr_in */
    socklen_t wl = sizeof(want), hl;
    int listening = 0;
    socklen_t ll = sizeof(listening);
    if (US_SYSCALL5(SYS_getsockopt, listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 ||
        !listening || US_SYSCALL3(SYS_getsockname, listen_fd, &want, &wl) < 0)
        return -1;
    for (int i = 0; i < norphans; i++) {
        hl = sizeof(have);
        if (US_SYSCALL3(SYS_getsockname, orphans[i], &have, &hl) == 0 &&
            have.sin6_family == want.sin6_family && have.sin6_port == want.sin6_port)
            return i;
    }
    return -1;
}

/* A connection the dead primary accepted on `listen_fd` but never logged. */
long us_orphan_accept(int listen_fd, int flags)
{
    if (!norphans)
        return -1;
    int i = orphan_for(listen_fd);
    if (i < 0)
        return -1;
    long fd = US_SYSCALL3(SYS_fcntl, orphans[i], (flags & SOCK_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD,
                          0);
    US_SYSCALL1(SYS_close, orphans[i]);
    us_fds[orphans[i]].kind = US_FD_NONE;
    orphans[i] = orphans[--norphans];
    if (fd >= 0 && (flags & SOCK_NONBLOCK))
        US_SYSCALL3(SYS_fcntl, fd, F_SETFL, O_NONBLOCK | O_RDWR);
    if (orphan_for(listen_fd) < 0)
        us_fd_unwake(listen_fd);
    us_say("handed over a connection accepted by the old primary as fd %ld", fd);
    return fd;
}
