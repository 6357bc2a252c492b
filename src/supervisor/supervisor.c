/*
 * supervisor.c - the life of a replicated program.
 *
 * The supervisor creates the log (a memfd), starts the primary and the
 * backups with the shim preloaded, ASLR off and each on its own CPUs, and
 * then watches: a replica's death wakes it through its pidfd, a stopped
 * primary is noticed by polling its state. When the primary fails, the most
 * advanced backup is promoted (docs/failover.md): the supervisor completes
 * what the dead primary's log had in flight, tells the backup to take over,
 * and hands it the real fds, which it takes from the dead primary's keeper.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "understudy/ctl_protocol.h"

long us_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void us_say_sup(struct us_supervisor *s, const char *fmt, ...)
{
    if (s && s->opt.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("understudy: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int fd_numbers(int *log_fd, int *ctl_fd)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < 64)
        return -1;
    *ctl_fd = (int)rl.rlim_cur - 1;
    *log_fd = (int)rl.rlim_cur - 2;
    return 0;
}

/* Where libunderstudy.so is: beside the understudy binary. */
static int find_shim(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 32);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    strcpy(slash + 1, "libunderstudy.so");
    return access(buf, R_OK);
}

static void spawn_replica(struct us_supervisor *s, int slot, int role)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) {
        perror("understudy: socketpair");
        exit(1);
    }
    struct us_replica *r = &s->log.hdr->replica[slot];
    memset(r, 0, sizeof(*r));
    r->role = (uint32_t)role;
    r->state = US_REPLICA_STARTING;
    _Static_assert(sizeof(r->cpus) == sizeof(cpu_set_t), "cpu mask size");
    memcpy(r->cpus, &s->opt.cpus[slot], sizeof(r->cpus));

    int log_fd = 1021, ctl_fd = 1022;
    fd_numbers(&log_fd, &ctl_fd);
    pid_t pid = fork();
    if (pid < 0) {
        perror("understudy: fork");
        exit(1);
    }
    if (pid == 0) {
        setpgid(0, 0);
        /* No replica outlives its supervisor: without it there is no failover
         * and no one to stop them. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        personality(ADDR_NO_RANDOMIZE);
        signal(SIGPIPE, SIG_DFL);
        if (role == US_ROLE_BACKUP && s->opt.backup_nice)
            setpriority(PRIO_PROCESS, 0, s->base_nice + s->opt.backup_nice);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (dup2(s->memfd, log_fd) < 0 || dup2(sp[1], ctl_fd) < 0) {
            perror("understudy: dup2");
            _exit(127);
        }
        char num[16];
        snprintf(num, sizeof(num), "%d", log_fd);
        setenv(US_ENV_LOG_FD, num, 1);
        snprintf(num, sizeof(num), "%d", ctl_fd);
        setenv(US_ENV_CTL_FD, num, 1);
        snprintf(num, sizeof(num), "%d", slot);
        setenv(US_ENV_SLOT, num, 1);
        setenv(US_ENV_START_MONO, s->start_mono, 1);
        setenv(US_ENV_START_REAL, s->start_real, 1);
        setenv("LD_PRELOAD", s->shim_path, 1);
        execvp(s->opt.argv[0], s->opt.argv);
        fprintf(stderr, "understudy: cannot run %s: %s\n", s->opt.argv[0], strerror(errno));
        _exit(127);
    }
    close(sp[1]);
    struct us_proc *p = &s->rep[slot];
    memset(p, 0, sizeof(*p));
    p->pid = pid;
    p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    p->ctl = sp[0];
    p->alive = 1;
    p->keeper_pidfd = -1;
}

uint64_t us_backup_lag(struct us_supervisor *s, int slot)
{
    uint64_t lag = 0;
    struct us_log_header *h = s->log.hdr;
    for (unsigned i = 0; i < US_MAX_THREADS; i++) {
        if (!h->ring[i].in_use)
            continue;
        uint64_t d = h->ring[i].head_seq - h->ring[i].consumer[slot].seq;
        if (d > lag)
            lag = d;
    }
    return lag;
}

uint64_t us_backup_lag_ms(struct us_supervisor *s, int slot)
{
    uint64_t worst = 0, now = us_monotonic_ns();
    for (unsigned i = 0; i < US_MAX_THREADS; i++) {
        uint64_t lag = us_ring_lag_ns(&s->log, i, (unsigned)slot, now);
        if (s->log.hdr->ring[i].in_use && lag > worst)
            worst = lag;
    }
    return worst / 1000000;
}

/* Events replayed so far by all live backups (to tell progress). */
static uint64_t backups_replayed(struct us_supervisor *s)
{
    uint64_t n = 0;
    for (int b = 0; b < s->opt.replicas; b++)
        if (b != s->primary && s->rep[b].alive)
            for (unsigned i = 0; i < US_MAX_THREADS; i++)
                n += s->log.hdr->ring[i].consumer[b].seq;
    return n;
}

/* Completes a socket read the dead primary had received into the log but
 * not yet published (see struct us_recv_slot), so its input is not lost. */
static void complete_pending(struct us_supervisor *s)
{
    struct us_log_header *h = s->log.hdr;
    for (unsigned i = 0; i < US_MAX_THREADS; i++) {
        struct us_ring_ctl *c = &h->ring[i];
        if (!c->in_use || c->pending == US_NO_PENDING)
            continue;
        if (c->pending == c->head) {
            struct us_event *ev = us_ring_at(&s->log, i, c->head);
            struct us_recv_slot *slot = (struct us_recv_slot *)(ev + 1);
            if ((ev->flags & US_EVF_RECV_SLOT) && slot->msg_len != US_RECV_UNSET) {
                struct us_blob *b = (struct us_blob *)(slot + 1);
                ev->ret = slot->msg_len;
                b->len = slot->msg_len;
                us_ring_publish(&s->log, i, ev, (uint32_t)(sizeof(*slot) + sizeof(*b) + slot->msg_len));
                us_say_sup(s, "completed a read of %u bytes the old primary had in flight on fd %d",
                           slot->msg_len, ev->fd);
            }
        }
        c->pending = US_NO_PENDING;
    }
}

static int send_msg(int sock, struct us_msg *m, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * US_MSG_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {m, offsetof(struct us_msg, fd) + m->count * sizeof(int32_t)};
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds) {
        mh.msg_control = cbuf.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

static int recv_msg(int sock, struct us_msg *m, int timeout_ms)
{
    struct pollfd pfd = {sock, POLLIN, 0};
    if (poll(&pfd, 1, timeout_ms) <= 0)
        return -1;
    ssize_t n = recv(sock, m, sizeof(*m), 0);
    return n >= (ssize_t)offsetof(struct us_msg, fd) ? 0 : -1;
}

static int is_orphan_connection(int fd)
{
    int v = 0;
    socklen_t len = sizeof(v);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) < 0 || v != SOCK_STREAM)
        return 0;
    len = sizeof(v);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || v)
        return 0;
    struct sockaddr_storage ss;
    len = sizeof(ss);
    return getpeername(fd, (struct sockaddr *)&ss, &len) == 0;
}

/* Hands backup `b` the real fds it asks for, from the old keeper. */
static int transfer_fds(struct us_supervisor *s, int b, int keeper_pidfd, pid_t keeper)
{
    static uint8_t wanted[65536];
    memset(wanted, 0, sizeof(wanted));
    struct us_msg m;
    for (;;) {
        if (recv_msg(s->rep[b].ctl, &m, 10000) < 0)
            return -1;
        if (m.type == US_MSG_FDS_END)
            break;
        for (uint32_t i = 0; i < m.count && i < US_MSG_MAX_FDS; i++)
            if (m.fd[i] >= 0 && m.fd[i] < 65536)
                wanted[m.fd[i]] = 1;
    }
    int log_fd = 1021, ctl_fd = 1022;
    fd_numbers(&log_fd, &ctl_fd);
    int shim_low = ctl_fd - 1024; /* the shim's own fds live above this */

    struct us_msg out = {.type = US_MSG_FDS};
    int fds[US_MSG_MAX_FDS];
    int nsent = 0;
    for (int fd = 0; fd < 65536; fd++) {
        if (!wanted[fd])
            continue;
        int got = keeper_pidfd >= 0 ? (int)syscall(SYS_pidfd_getfd, keeper_pidfd, fd, 0) : -1;
        if (got < 0)
            continue; /* closed by the old primary just before it died */
        out.fd[out.count] = fd;
        fds[out.count++] = got;
        if (out.count == US_MSG_MAX_FDS) {
            if (send_msg(s->rep[b].ctl, &out, fds, (int)out.count) < 0)
                return -1;
            for (uint32_t i = 0; i < out.count; i++)
                close(fds[i]);
            nsent += (int)out.count;
            out.count = 0;
        }
    }
    if (out.count) {
        if (send_msg(s->rep[b].ctl, &out, fds, (int)out.count) < 0)
            return -1;
        for (uint32_t i = 0; i < out.count; i++)
            close(fds[i]);
        nsent += (int)out.count;
    }

    /* Connections the old primary accepted but never logged. */
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)keeper);
    DIR *d = keeper_pidfd >= 0 ? opendir(dir) : NULL;
    struct us_msg orph = {.type = US_MSG_ORPHANS};
    int ofds[US_MSG_MAX_FDS];
    for (struct dirent *e; d && (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd < 3 || fd >= shim_low || fd >= 65536 || wanted[fd])
            continue;
        int got = (int)syscall(SYS_pidfd_getfd, keeper_pidfd, fd, 0);
        if (got < 0)
            continue;
        if (!is_orphan_connection(got) || orph.count == US_MSG_MAX_FDS) {
            close(got);
            continue;
        }
        orph.fd[orph.count] = fd;
        ofds[orph.count++] = got;
    }
    if (d)
        closedir(d);
    if (orph.count) {
        us_say_sup(s, "handing %u connection(s) accepted but not logged to the new primary",
                   orph.count);
        if (send_msg(s->rep[b].ctl, &orph, ofds, (int)orph.count) < 0)
            return -1;
        for (uint32_t i = 0; i < orph.count; i++)
            close(ofds[i]);
    }
    struct us_msg end = {.type = US_MSG_FDS_END};
    if (send_msg(s->rep[b].ctl, &end, NULL, 0) < 0)
        return -1;
    if (recv_msg(s->rep[b].ctl, &m, 10000) < 0 || m.type != US_MSG_LIVE || m.count != 1)
        return -1;
    s->rep[b].keeper = m.fd[0];
    s->rep[b].keeper_pidfd = (int)syscall(SYS_pidfd_open, m.fd[0], 0);
    return nsent;
}

static void kill_keeper(struct us_proc *p)
{
    if (p->keeper > 0) {
        kill(p->keeper, SIGKILL);
        waitpid(p->keeper, NULL, __WALL);
    }
    if (p->keeper_pidfd >= 0)
        close(p->keeper_pidfd);
    p->keeper = 0;
    p->keeper_pidfd = -1;
}

/* Gives every thread of `pid` the nice value `nice` and, unless `set` is
 * NULL, the CPUs `set`: a promoted backup gets the primary's priority and
 * CPUs. (Linux keeps both per thread; new threads inherit their creator's.) */
static void place_threads(pid_t pid, const cpu_set_t *set, int nice)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        setpriority(PRIO_PROCESS, (id_t)atoi(e->d_name), nice);
        if (set)
            sched_setaffinity(atoi(e->d_name), sizeof(*set), set);
    }
    if (d)
        closedir(d);
}

/*
 * Backups are off the clients' path (they run behind the log by design), so
 * they run nicer than the primary: on a machine with fewer free CPUs than
 * busy processes the primary and its clients come first, and a backup
 * catches up when they wait (back-pressure bounds how far it may fall
 * behind). A promoted backup must get the primary's priority back, which
 * an ordinary user may not be allowed to do (RLIMIT_NICE, CAP_SYS_NICE):
 * try it in a child first and keep backups at the primary's priority if it
 * fails.
 */
static void check_backup_nice(struct us_supervisor *s)
{
    errno = 0;
    s->base_nice = getpriority(PRIO_PROCESS, 0);
    if (errno)
        s->base_nice = 0;
    if (!s->opt.backup_nice)
        return;
    if (s->base_nice + s->opt.backup_nice > 19)
        s->opt.backup_nice = 19 - s->base_nice;
    pid_t pid = fork();
    if (pid == 0)
        _exit(setpriority(PRIO_PROCESS, 0, s->base_nice + s->opt.backup_nice) == 0 &&
                      setpriority(PRIO_PROCESS, 0, s->base_nice) == 0
                  ? 0
                  : 1);
    int st = 1;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (!s->opt.quiet)
            fprintf(stderr, "understudy: backups run at the primary's priority: a promoted "
                            "backup could not get it back (needs CAP_SYS_NICE or RLIMIT_NICE)\n");
        s->opt.backup_nice = 0;
    }
}

int us_pick_backup(struct us_supervisor *s)
{
    if (s->vote_winner >= 0 && s->rep[s->vote_winner].alive)
        return s->vote_winner;
    int best = -1;
    uint64_t best_lag = UINT64_MAX;
    for (int i = 0; i < s->opt.replicas; i++) {
        if (i == s->primary || !s->rep[i].alive)
            continue;
        uint32_t st = s->log.hdr->replica[i].state;
        if (st != US_REPLICA_RUNNING && st != US_REPLICA_STARTING)
            continue;
        uint64_t lag = us_backup_lag(s, i);
        if (lag < best_lag) {
            best = i;
            best_lag = lag;
        }
    }
    return best;
}

/* The primary is dead (reaped). Promote a backup; -1 if none could take over. */
int us_failover(struct us_supervisor *s, const char *why, int death_signal)
{
    long t0 = us_now_ms();
    int old = s->primary;
    struct us_proc *op = &s->rep[old];
    us_slicer_stop(s); /* before the old primary is reaped: see us_run */
    __atomic_store_n(&s->log.hdr->replica[old].state, US_REPLICA_DEAD, __ATOMIC_RELEASE);
    complete_pending(s);
    for (;;) {
        int b = us_pick_backup(s);
        if (b < 0) {
            us_say_sup(s, "the primary failed (%s) and no backup is left to take over", why);
            return -1;
        }
        if (s->opt.backup_nice)
            place_threads(s->rep[b].pid, NULL, s->base_nice); /* drain at full speed */
        __atomic_store_n(&s->log.hdr->replica[b].promote, 1, __ATOMIC_RELEASE);
        us_log_wake_all(&s->log);
        int n = transfer_fds(s, b, op->keeper_pidfd, op->keeper);
        int st;
        if (n < 0 && death_signal && s->rep[b].pidfd >= 0 &&
            poll(&(struct pollfd){s->rep[b].pidfd, POLLIN, 0}, 1, 100) == 1 &&
            waitpid(s->rep[b].pid, &st, __WALL) == s->rep[b].pid) {
            s->rep[b].alive = 0;
            close(s->rep[b].pidfd);
            s->rep[b].pidfd = -1;
            if (WIFSIGNALED(st) && WTERMSIG(st) == death_signal) {
                /* Replaying the same log, the backup died the same way: the
                 * program's own bug, which every replica would repeat. */
                us_say_sup(s, "deterministic crash: the backup (pid %d) died of signal %d "
                              "replaying the primary's log, as the primary did: this is the "
                              "program's bug, not a fault of the machine; not failing over",
                           (int)s->rep[b].pid, death_signal);
                return -2;
            }
        }
        if (n < 0) {
            us_say_sup(s, "backup %d (pid %d) failed to take over; trying another", b,
                       (int)s->rep[b].pid);
            kill(s->rep[b].pid, SIGKILL);
            __atomic_store_n(&s->log.hdr->replica[b].state, US_REPLICA_RETIRED, __ATOMIC_RELEASE);
            if (b == s->vote_winner)
                s->vote_winner = -1; /* killed, though not reaped yet: not again */
            continue;
        }
        kill_keeper(op);
        s->vote_winner = -1;
        s->opt.cpus[b] = s->opt.cpus[old];
        place_threads(s->rep[b].pid, &s->opt.cpus[b], s->base_nice);
        s->primary = b;
        s->log.hdr->primary_slot = (uint32_t)b;
        s->log.hdr->failovers++;
        s->log.hdr->epoch++;
        s->last_failover_ms = us_now_ms() - t0;
        /* Whatever starved the other backups may have been the old primary
         * (hung, spinning on a CPU): their stuck windows begin again. */
        long now = us_now_ms();
        for (int i = 0; i < s->opt.replicas; i++) {
            s->rep[i].replayed_at_ms = now;
            s->rep[i].cpu_at.run_ns = 0;
        }
        us_say_sup(s, "primary (pid %d) %s; backup pid %d took over with %d fds in %ld ms",
                   (int)op->pid, why, (int)s->rep[b].pid, n, s->last_failover_ms);
        return 0;
    }
}

static void stop_all(struct us_supervisor *s)
{
    for (int i = 0; i < s->opt.replicas; i++) {
        if (s->rep[i].alive) {
            kill(s->rep[i].pid, SIGKILL);
            waitpid(s->rep[i].pid, NULL, 0);
            s->rep[i].alive = 0;
        }
        kill_keeper(&s->rep[i]);
    }
}


static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 1;
}

static void on_exit_of(struct us_supervisor *s, int slot, int st)
{
    struct us_proc *p = &s->rep[slot];
    p->alive = 0;
    if (p->pidfd >= 0)
        close(p->pidfd);
    p->pidfd = -1;
    uint32_t state = s->log.hdr->replica[slot].state;
    if (slot != s->primary) {
        if (state == US_REPLICA_RETIRED) {
            us_say_sup(s, "backup pid %d retired (see above)", (int)p->pid);
            return;
        }
        if (s->done) {
            if (status_code(st) != s->exit_status)
                us_say_sup(s, "backup pid %d ended with status %d, the primary with %d: they "
                              "diverged", (int)p->pid, status_code(st), s->exit_status);
            return;
        }
        __atomic_store_n(&s->log.hdr->replica[slot].state, US_REPLICA_DEAD, __ATOMIC_RELEASE);
        if (WIFEXITED(st) && __atomic_load_n(&s->log.hdr->program_exiting, __ATOMIC_ACQUIRE)) {
            /* it replayed the program's end before the primary was reaped */
            if (WEXITSTATUS(st) != (s->log.hdr->program_exit_code & 0xff))
                us_say_sup(s, "backup pid %d ended with status %d, the primary with %d: they "
                              "diverged", (int)p->pid, WEXITSTATUS(st),
                           s->log.hdr->program_exit_code & 0xff);
            return;
        }
        if (!s->shutting_down)
            us_say_sup(s, "backup pid %d died (%s %d); running with fewer replicas",
                       (int)p->pid, WIFSIGNALED(st) ? "signal" : "status",
                       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        return;
    }
    if (state == US_REPLICA_RETIRED) {
        us_say_sup(s, "the program stopped on a call understudy cannot replicate (see above)");
        s->exit_status = 70;
        s->done = 1;
        return;
    }
    if (s->shutting_down || WIFEXITED(st)) {
        s->exit_status = status_code(st);
        s->done = 1;
        return;
    }
    char why[64];
    if (s->primary_hung)
        snprintf(why, sizeof(why), "hung");
    else if (s->primary_faulty)
        snprintf(why, sizeof(why), "was outvoted by its backups");
    else
        snprintf(why, sizeof(why), "was killed by signal %d", WTERMSIG(st));
    int faulty = s->primary_faulty;
    s->primary_hung = 0;
    s->primary_faulty = 0;
    /* Only a fault a replica can repeat on its own makes a deterministic crash. */
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    int fault = !faulty && (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE ||
                            sig == SIGABRT || sig == SIGTRAP || sig == SIGSYS);
    if (us_failover(s, why, fault ? sig : 0) < 0) {
        s->exit_status = status_code(st);
        s->done = 1;
    }
}

static void reap(struct us_supervisor *s)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG | __WALL)) > 0) {
        for (int i = 0; i < s->opt.replicas; i++)
            if (s->rep[i].alive && s->rep[i].pid == pid)
                on_exit_of(s, i, st);
    }
}

static void retire_backup(struct us_supervisor *s, int b, const char *why)
{
    us_say_sup(s, "backup pid %d retired: %s", (int)s->rep[b].pid, why);
    __atomic_store_n(&s->log.hdr->replica[b].state, US_REPLICA_RETIRED, __ATOMIC_RELEASE);
    kill(s->rep[b].pid, SIGKILL);
}

/*
 * The majority vote. A backup that found the log disagreeing with it waits
 * (US_REPLICA_DIVERGED) at (thread, event) with a hash of what it would have
 * done. The primary counts as one voice with every backup that replayed past
 * that event; the backups that stopped there the same way are the other
 * side. When they are more, the primary is the faulty one: it is stopped and
 * one of them takes over (the others, stopped at the point, cannot follow the
 * new primary's log: retired). Otherwise, or with no other backup to ask, the
 * diverged backup is retired once no backup is still on its way to the event.
 */
#define VOTE_TIMEOUT_MS 2000
static void check_divergences(struct us_supervisor *s)
{
    struct us_log_header *h = s->log.hdr;
    if (s->vote_winner >= 0)
        return; /* decided: the winner (still "diverged") waits for the failover */
    for (int b = 0; b < s->opt.replicas; b++) {
        struct us_replica *rb = &h->replica[b];
        if (b == s->primary || !s->rep[b].alive ||
            __atomic_load_n(&rb->state, __ATOMIC_ACQUIRE) != US_REPLICA_DIVERGED)
            continue;
        if (!s->rep[b].diverged_since_ms)
            s->rep[b].diverged_since_ms = us_now_ms();
        unsigned ring = rb->diverged_ring;
        uint64_t seq = rb->diverged_seq;
        int agree = 0, behind = 0, with_primary = 1, first_agree = -1;
        for (int o = 0; o < s->opt.replicas; o++) {
            struct us_replica *ro = &h->replica[o];
            if (o == s->primary || !s->rep[o].alive || ring >= US_MAX_THREADS)
                continue;
            uint32_t st = __atomic_load_n(&ro->state, __ATOMIC_ACQUIRE);
            if (st == US_REPLICA_DIVERGED && ro->diverged_ring == ring &&
                ro->diverged_seq == seq && ro->diverged_sig == rb->diverged_sig) {
                agree++;
                if (first_agree < 0)
                    first_agree = o;
            } else if (st == US_REPLICA_RUNNING || st == US_REPLICA_STARTING) {
                if (h->ring[ring].consumer[o].seq >= seq)
                    with_primary++;
                else
                    behind++;
            }
        }
        if (agree > with_primary) {
            us_say_sup(s, "majority vote: %d backups agree with each other and not with the "
                          "primary (pid %d) at thread %u event %lu: the primary is faulty; "
                          "backup pid %d takes over",
                       agree, (int)s->rep[s->primary].pid, ring, (unsigned long)seq,
                       (int)s->rep[first_agree].pid);
            for (int o = 0; o < s->opt.replicas; o++)
                if (o != s->primary && o != first_agree && s->rep[o].alive)
                    retire_backup(s, o, "stopped where the faulty primary diverged, it cannot "
                                        "follow the new primary");
            s->vote_winner = first_agree;
            s->primary_faulty = 1;
            kill(s->rep[s->primary].pid, SIGKILL);
            return;
        }
        if (behind == 0 || us_now_ms() - s->rep[b].diverged_since_ms > VOTE_TIMEOUT_MS)
            retire_backup(s, b, with_primary > 1 ? "outvoted: the primary and another backup agree"
                                                 : "the primary disagrees and no other backup "
                                                   "can settle it");
    }
}

char *us_read_proc(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return buf;
}

/* The fields of a /proc/.../stat file after the command's ")", in buf; NULL
 * if it cannot be read (the process or thread is gone). */
static const char *stat_fields(const char *path, char *buf, size_t cap)
{
    if (!us_read_proc(path, buf, cap))
        return NULL;
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp + 2 : NULL;
}

/* A replica stopped (SIGSTOP, a debugger, a frozen core) for longer than
 * --hang-timeout is hung: killed, and for the primary, failed over. A hung
 * backup must go too: it would hold the primary back (back-pressure). */
static char proc_state(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    const char *f = stat_fields(path, buf, sizeof(buf));
    return f ? f[0] : '?';
}

/* What the threads of `pid` got from the scheduler so far, and how many are
 * runnable now. */
static struct us_cpu_use cpu_use(pid_t pid)
{
    struct us_cpu_use u = {0, 0};
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return u;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char f[320], buf[128];
        snprintf(f, sizeof(f), "/proc/%d/task/%s/stat", (int)pid, e->d_name);
        const char *st = stat_fields(f, buf, sizeof(buf));
        u.runnable += st && st[0] == 'R';
        snprintf(f, sizeof(f), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        unsigned long long run; /* ns on a CPU, first of the three fields */
        if (us_read_proc(f, buf, sizeof(buf)) && sscanf(buf, "%llu", &run) == 1)
            u.run_ns += run;
    }
    closedir(d);
    return u;
}

/* The primary waits, now, for a backup to catch up (room in a ring, or the
 * lag bound). */
static int primary_held_back(const struct us_supervisor *s)
{
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        const struct us_ring_ctl *c = &s->log.hdr->ring[r];
        if (c->in_use && __atomic_load_n(&c->producer_waiting, __ATOMIC_ACQUIRE))
            return 1;
    }
    return 0;
}

/* A backup that runs but replays nothing while the log holds events for it
 * is as hung as a stopped one, and holds the primary back (back-pressure):
 * past --hang-timeout it is retired. Both must hold: no event replayed and
 * the oldest event waiting for it older than that (a backup computing as
 * long as the primary did between two calls replays nothing either, but
 * stays within the lag bound). */
static void check_stuck(struct us_supervisor *s, int b, long now)
{
    struct us_proc *p = &s->rep[b];
    uint64_t seq = 0;
    for (unsigned r = 0; r < US_MAX_THREADS; r++)
        seq += s->log.hdr->ring[r].consumer[b].seq;
    if (seq != p->replayed || us_backup_lag(s, b) == 0 ||
        __atomic_load_n(&s->log.hdr->replica[b].state, __ATOMIC_ACQUIRE) != US_REPLICA_RUNNING) {
        p->replayed = seq;
        p->replayed_at_ms = now;
        p->cpu_at.run_ns = 0; /* sampled once it stops replaying */
        return;
    }
    if (!p->cpu_at.run_ns)
        p->cpu_at = cpu_use(p->pid);
    if (now - p->replayed_at_ms <= s->opt.hang_timeout_ms ||
        us_backup_lag_ms(s, b) <= (uint64_t)s->opt.hang_timeout_ms)
        return;
    /* Starved (runnable, but the CPUs went to others) or stuck (asleep, or
     * spinning on its own): said, for whoever must fix it. Stuck, it is
     * retired; starved, only if the primary waits for it (back-pressure) as
     * the window ends, and after twice the window, so that a primary thread
     * hung spinning on its CPU (which starves it) is found first: otherwise
     * (a primary idle, or itself hung) it costs nothing, and a new window
     * begins. */
    struct us_cpu_use u = cpu_use(p->pid);
    long ran_ms = (long)((u.run_ns - p->cpu_at.run_ns) / 1000000);
    long window = now - p->replayed_at_ms;
    int starved = u.runnable && ran_ms < window / 10;
    if (starved && !primary_held_back(s)) {
        p->replayed_at_ms = now;
        p->cpu_at = u;
        return;
    }
    if (starved && window <= 2 * s->opt.hang_timeout_ms)
        return;
    char why[512];
    int n = snprintf(why, sizeof(why), "it has replayed nothing for longer than --hang-timeout "
                                       "though the log holds events for it (threads");
    for (unsigned r = 0; r < US_MAX_THREADS && n < (int)sizeof(why) - 64; r++) {
        const struct us_ring_ctl *c = &s->log.hdr->ring[r];
        if (c->in_use && c->consumer[b].seq != c->head_seq)
            n += snprintf(why + n, sizeof(why) - (size_t)n, " %u at event %lu of %lu", r,
                          (unsigned long)c->consumer[b].seq, (unsigned long)c->head_seq);
    }
    if (starved)
        snprintf(why + n, sizeof(why) - (size_t)n, "): starved, it was ready to run but got %ld "
                 "ms of CPU in %ld ms (the machine is overloaded); the primary goes on without "
                 "it", ran_ms, window);
    else
        snprintf(why + n, sizeof(why) - (size_t)n, "): stuck; the primary goes on without it");
    retire_backup(s, b, why);
}

/* A thread's CPU time in user mode, in ms; -1 if it is gone. */
static long thread_user_ms(pid_t pid, int tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", (int)pid, tid);
    const char *f = stat_fields(path, buf, sizeof(buf));
    unsigned long utime = 0;
    /* from the state (field 3) to utime (field 14) */
    if (!f || sscanf(f, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu", &utime) != 1)
        return -1;
    return (long)(utime * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

/*
 * A primary that runs without making calls, while a backup replaying the
 * same log has long got past the same point and waits for the primary's
 * next event, is hung (a loop a fault made endless): the backup executed
 * the same deterministic code from the same state and finished it. A
 * primary merely computing for long is not taken for one, because its
 * backup computes just as long before it waits; a primary in a call is not
 * either: blocked, it uses no CPU, and a long call (a big read) runs in the
 * kernel, not in user mode. Declared when the backup has waited longer than
 * --hang-timeout and, over the last --hang-timeout, the primary thread
 * published nothing and ran in user mode at least a tenth of the time (a
 * share a spinning thread gets even on a crowded machine).
 */
static int check_spinning(struct us_supervisor *s, long now)
{
    struct us_log_header *h = s->log.hdr;
    pid_t pid = s->rep[s->primary].pid;
    uint64_t now_ns = us_monotonic_ns();
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        struct us_ring_ctl *c = &h->ring[r];
        struct us_spin_sample *sp = &s->spin[r];
        uint64_t since = 0, head = __atomic_load_n(&c->head_seq, __ATOMIC_ACQUIRE);
        int waiter = -1;
        if (__atomic_load_n(&c->in_use, __ATOMIC_ACQUIRE) == US_RING_LIVE && c->producer_tid > 0 &&
            !__atomic_load_n(&c->producer_in_spin_lock, __ATOMIC_RELAXED))
            for (int b = 0; b < s->opt.replicas; b++) {
                if (b == s->primary || !s->rep[b].alive ||
                    __atomic_load_n(&h->replica[b].state, __ATOMIC_ACQUIRE) != US_REPLICA_RUNNING)
                    continue;
                uint64_t w = __atomic_load_n(&c->consumer[b].waiting_since_ns, __ATOMIC_RELAXED);
                if (w && __atomic_load_n(&c->consumer[b].seq, __ATOMIC_ACQUIRE) == head &&
                    (!since || w < since)) {
                    since = w;
                    waiter = b;
                }
            }
        if (!since) {
            sp->at_ms = 0;
            continue;
        }
        /* /proc is read when the primary thread's last event is first seen
         * waited for, and then once every --hang-timeout */
        int fresh = !sp->at_ms || sp->head_seq != head || sp->tid != c->producer_tid;
        if (!fresh && now - sp->at_ms < s->opt.hang_timeout_ms)
            continue;
        long cpu = thread_user_ms(pid, c->producer_tid);
        if (cpu < 0)
            continue;
        long waited = now_ns > since ? (long)((now_ns - since) / 1000000u) : 0;
        if (fresh || waited < s->opt.hang_timeout_ms ||
            cpu - sp->cpu_ms < (now - sp->at_ms) / 10) {
            *sp = (struct us_spin_sample){head, c->producer_tid, cpu, now};
            continue;
        }
        us_say_sup(s, "primary pid %d: thread %d (tid %d) has run %ld ms in user mode of the "
                      "last %ld without making a call, while backup pid %d, past the same "
                      "point, has waited %ld ms for its next event: declaring the primary hung",
                   (int)pid, r, c->producer_tid, cpu - sp->cpu_ms, now - sp->at_ms,
                   (int)s->rep[waiter].pid, waited);
        sp->at_ms = 0;
        return 1;
    }
    return 0;
}

static void check_hang(struct us_supervisor *s)
{
    long now = us_now_ms();
    for (int i = 0; i < s->opt.replicas; i++) {
        struct us_proc *p = &s->rep[i];
        if (!p->alive)
            continue;
        char state = proc_state(p->pid);
        if (state != 'T' && state != 't') {
            p->stopped_since_ms = 0;
            if (i != s->primary) {
                check_stuck(s, i, now);
            } else if (check_spinning(s, now)) {
                s->primary_hung = 1;
                kill(p->pid, SIGKILL);
            }
            continue;
        }
        if (!p->stopped_since_ms) {
            p->stopped_since_ms = now;
            continue;
        }
        if (now - p->stopped_since_ms < s->opt.hang_timeout_ms)
            continue;
        us_say_sup(s, "%s pid %d has been stopped for %d ms: declaring it hung",
                   i == s->primary ? "primary" : "backup", (int)p->pid, s->opt.hang_timeout_ms);
        p->stopped_since_ms = 0;
        if (i == s->primary)
            s->primary_hung = 1;
        else
            __atomic_store_n(&s->log.hdr->replica[i].state, US_REPLICA_RETIRED, __ATOMIC_RELEASE);
        kill(p->pid, SIGKILL);
    }
}

int us_run(struct us_run_options *opt)
{
    static struct us_supervisor sup;
    struct us_supervisor *s = &sup;
    s->opt = *opt;
    s->listen_fd = -1;
    s->vote_winner = -1;
    if (find_shim(s->shim_path, sizeof(s->shim_path)) < 0) {
        fprintf(stderr, "understudy: cannot find libunderstudy.so beside the understudy binary\n");
        return 1;
    }
    if (us_control_listen(s) < 0)
        return 1;
    check_backup_nice(s);
    if (opt->cpus_shared && !opt->quiet)
        fprintf(stderr, "understudy: %d replicas on %ld CPUs: the primary may use every CPU, "
                        "each backup one (give --cpus to choose)\n", opt->replicas,
                (long)sysconf(_SC_NPROCESSORS_ONLN));

    uint64_t total = us_log_total_size(opt->ring_size);
    s->memfd = memfd_create("understudy-log", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (s->memfd < 0 || ftruncate(s->memfd, (off_t)total) < 0) {
        fprintf(stderr, "understudy: cannot create the log (%lu bytes): %s\n",
                (unsigned long)total, strerror(errno));
        us_control_close(s);
        return 1;
    }
    fcntl(s->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
    if (p == MAP_FAILED) {
        perror("understudy: mmap");
        us_control_close(s);
        return 1;
    }
    s->log.base = p;
    s->log.hdr = p;
    s->log.size = total;
    us_log_format(&s->log, opt->ring_size, (uint32_t)opt->replicas, opt->max_lag_events);
    s->log.hdr->max_lag_ns = opt->max_lag_ms * 1000000ull;
    s->log.hdr->supervisor_pid = (int32_t)getpid();

    prctl(PR_SET_CHILD_SUBREAPER, 1);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    s->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    signal(SIGPIPE, SIG_IGN);

    s->primary = 0;
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    snprintf(s->start_mono, sizeof(s->start_mono), "%llu",
             (unsigned long long)mono.tv_sec * 1000000000ull + (unsigned long long)mono.tv_nsec);
    snprintf(s->start_real, sizeof(s->start_real), "%llu",
             (unsigned long long)real.tv_sec * 1000000000ull + (unsigned long long)real.tv_nsec);
    for (int i = 0; i < opt->replicas; i++)
        spawn_replica(s, i, i == 0 ? US_ROLE_PRIMARY : US_ROLE_BACKUP);
    /* The keeper pid is published by the primary's shim when it attaches. */
    for (long t0 = us_now_ms(); !s->log.hdr->replica[0].attached && us_now_ms() - t0 < 5000;) {
        reap(s);
        if (s->done)
            break;
        usleep(1000);
    }
    if (s->log.hdr->replica[0].attached) {
        s->rep[0].keeper = s->log.hdr->replica[0].keeper_pid;
        s->rep[0].keeper_pidfd = (int)syscall(SYS_pidfd_open, s->rep[0].keeper, 0);
        us_say_sup(s, "running %s as primary pid %d with %d backup(s); control socket %s",
                   opt->argv[0], (int)s->rep[0].pid, opt->replicas - 1, s->control_path);
    } else if (!s->done) {
        us_say_sup(s, "the primary did not attach to the log within 5 s");
    }

    while (!s->done) {
        struct pollfd pfd[2 + US_MAX_REPLICAS];
        int n = 0;
        pfd[n++] = (struct pollfd){s->sigfd, POLLIN, 0};
        pfd[n++] = (struct pollfd){s->listen_fd, POLLIN, 0};
        for (int i = 0; i < opt->replicas; i++)
            if (s->rep[i].alive && s->rep[i].pidfd >= 0)
                pfd[n++] = (struct pollfd){s->rep[i].pidfd, POLLIN, 0};
        poll(pfd, (nfds_t)n, 20);
        struct signalfd_siginfo si;
        while (read(s->sigfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGCHLD)
                continue;
            if (!s->shutting_down)
                us_say_sup(s, "signal %u: stopping the program", si.ssi_signo);
            s->shutting_down = 1;
            if (s->rep[s->primary].alive)
                kill(s->rep[s->primary].pid, (int)si.ssi_signo);
        }
        /* A replica died: no time slicing while it is reaped and replaced
         * (with a ticker running, this kernel's reap of a dead primary was
         * seen to spin in d_invalidate of its /proc entries for tens of
         * seconds). */
        for (int i = 2; i < n; i++)
            if (pfd[i].revents)
                us_slicer_stop(s);
        reap(s);
        if (s->done)
            break;
        if (pfd[1].revents & POLLIN)
            us_control_serve(s);
        check_hang(s);
        check_divergences(s);
        us_slicer_check(s, us_now_ms());
    }
    /* A program that ended by itself: its backups replay to the same end,
     * for as long as they make progress; say so if one ended differently. */
    uint64_t replayed = backups_replayed(s);
    for (long t0 = us_now_ms(); !s->shutting_down && us_now_ms() - t0 < 3000;) {
        int left = 0;
        for (int i = 0; i < opt->replicas; i++)
            left += s->rep[i].alive && i != s->primary;
        if (!left)
            break;
        reap(s);
        /* status still answers while backups finish */
        if (poll(&(struct pollfd){s->listen_fd, POLLIN, 0}, 1, 1) == 1)
            us_control_serve(s);
        us_slicer_check(s, us_now_ms());
        uint64_t now = backups_replayed(s);
        if (now != replayed) {
            replayed = now;
            t0 = us_now_ms();
        }
    }
    if (!s->shutting_down)
        for (int i = 0; i < opt->replicas; i++)
            if (s->rep[i].alive && i != s->primary)
                us_say_sup(s, "backup pid %d had not finished replaying when the program ended "
                              "(%lu events behind, no progress for 3 s); stopped",
                           (int)s->rep[i].pid, (unsigned long)us_backup_lag(s, i));
    s->log.hdr->shutdown = 1;
    us_slicer_stop(s);
    stop_all(s);
    reap(s);
    us_control_close(s);
    return s->exit_status;
}
