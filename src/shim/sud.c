/*
 * sud.c - the safety net: Syscall User Dispatch.
 *
 * Every syscall instruction outside the shim's exempt range (raw_syscall.S)
 * traps into on_sigsys while the thread's selector says BLOCK. That catches
 * what the interposed libc symbols miss: libc's internal calls (stdio,
 * getaddrinfo, thread creation), raw syscall(), code in other libraries.
 * Each trapped call goes through the same engine as the fast path, at about
 * 3 us apiece, so the hot calls have libc wrappers (wrappers.c).
 *
 * Thread and process creation need the interrupted context itself, so they
 * are handled here: a new thread is given its logical id by its parent and
 * starts in us_thread_entry (which arms the safety net for it) before glibc's
 * own start routine; a fork's child leaves the log and runs natively.
 */
#include <linux/sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <ucontext.h>

#include "engine.h"

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_OFF 0
#define PR_SYS_DISPATCH_ON 1
#endif

static long thread_entry(void *p)
{
    struct us_thread *c = p;
    us_thread_attach(c);
    us_sud_arm(c);
    return c->start_fn(c->start_arg);
}

/*
 * The ring of a thread being created. The primary takes a free ring, or one
 * whose thread ended and every live backup has read to the end, and logs it
 * with the thread's logical id (its creation number) in the parent's ring;
 * a backup reads both from there.
 */
static unsigned claim_ring(void)
{
    struct us_log_header *h = us_log_.hdr;
    for (long waited_us = 0;; waited_us += 100) {
        int exited = 0;
        for (unsigned r = 0; r < US_MAX_THREADS; r++) {
            uint32_t use = __atomic_load_n(&h->ring[r].in_use, __ATOMIC_ACQUIRE);
            if (use == US_RING_EXITED && !us_ring_consumed(&us_log_, r, us_slot)) {
                exited = 1; /* a backup has yet to replay that thread's end */
                continue;
            }
            if ((use == US_RING_FREE || use == US_RING_EXITED) &&
                __atomic_compare_exchange_n(&h->ring[r].in_use, &use, US_RING_LIVE, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                return r;
        }
        if (!exited || waited_us > 30000000)
            us_fatal("the program has more than %d threads at once, the most understudy "
                     "replicates", US_MAX_THREADS);
        struct timespec ts = {0, 100000};
        US_SYSCALL2(SYS_nanosleep, &ts, 0);
    }
}

static unsigned new_thread_ring(struct us_thread *t, uint32_t *id)
{
    if (t->mode == US_MODE_RECORD) {
        unsigned ring = claim_ring();
        *id = __atomic_add_fetch(&us_log_.hdr->nthreads, 1, __ATOMIC_SEQ_CST);
        struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
        ev->type = US_EV_THREAD;
        ev->fd = (int32_t)ring;
        ev->aux = *id;
        us_ring_publish(&us_log_, t->ring, ev, 0);
        return ring;
    }
    struct us_event *ev = us_next_event(t);
    if (!ev) {
        us_promote(t);
        return new_thread_ring(t, id);
    }
    if (ev->type != US_EV_THREAD || ev->fd < 0 || ev->fd >= US_MAX_THREADS)
        us_diverged_at(t, ev, "a new thread");
    unsigned ring = (unsigned)ev->fd;
    *id = (uint32_t)ev->aux;
    us_consume(t, ev);
    return ring;
}

static struct us_thread *prepare_thread(struct us_thread *t, long fn, long arg)
{
    uint32_t id;
    unsigned ring = new_thread_ring(t, &id);
    struct us_thread *c = &us_threads[ring];
    memset(c, 0, sizeof(*c));
    c->ring = ring;
    c->id = id;
    c->mode = t->mode;
    c->start_fn = (long (*)(void *))fn;
    c->start_arg = (void *)arg;
    c->new_stack = -1;
    return c;
}

/* Called by us_fork_stub in both processes after a fork-like clone. */
void us_fork_done(long r);
void us_fork_done(long r)
{
    struct us_thread *t = us_self;
    us_alloc_fork_done();
    if (r == 0) {
        /* The child is not replicated: it leaves the log and runs natively
         * (e.g. Redis's BGSAVE child writing its snapshot). */
        us_sud_disarm();
        for (unsigned i = 0; i < US_MAX_THREADS; i++)
            us_threads[i].mode = US_MODE_OFF;
        us_active = 0;
        US_SYSCALL2(SYS_munmap, us_log_.base, us_log_.size);
        US_SYSCALL1(SYS_close, us_ctl_fd);
        return;
    }
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
    ev->type = US_EV_SYSCALL;
    ev->nr = SYS_clone;
    ev->fd = -1;
    ev->ret = r;
    us_ring_publish(&us_log_, t->ring, ev, 0);
    t->in_engine = 0;
}

static const struct us_sysdesc d_fork = {K_INPUT, -1, -1, 0, 0, 0};

static void on_sigsys(int sig, siginfo_t *info, void *ucv)
{
    (void)sig;
    ucontext_t *uc = ucv;
    greg_t *g = uc->uc_mcontext.gregs;
    long nr = info->si_syscall;
    struct us_thread *t = us_self;

    if (nr == SYS_rt_sigreturn) {
        /* A frame set up by someone else's restorer: finish it from the exempt range. */
        g[REG_RIP] = (greg_t)us_sigreturn;
        return;
    }
    if (nr == SYS_rt_sigprocmask) {
        /* The mask in force is the one this handler's return restores: change
         * that one. SIGSYS itself stays deliverable. */
        uint64_t *cur = (uint64_t *)&uc->uc_sigmask;
        const uint64_t *set = (const uint64_t *)g[REG_RSI];
        uint64_t *old = (uint64_t *)g[REG_RDX];
        uint64_t keep = (1ull << (SIGSYS - 1)) | (1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1));
        uint64_t prev = *cur;
        if (set) {
            switch (g[REG_RDI]) {
            case SIG_BLOCK: *cur |= *set & ~keep; break;
            case SIG_UNBLOCK: *cur &= ~*set; break;
            case SIG_SETMASK: *cur = *set & ~keep; break;
            default: g[REG_RAX] = -22; return;
            }
        }
        if (old)
            *old = prev;
        g[REG_RAX] = 0;
        return;
    }
    if (t && t->mode != US_MODE_OFF && !t->in_engine) {
        if (nr == SYS_clone3) {
            struct clone_args *ca = (struct clone_args *)g[REG_RDI];
            if (!(ca->flags & CLONE_THREAD))
                us_fatal("clone3 without CLONE_THREAD (flags 0x%lx) is not supported",
                         (unsigned long)ca->flags);
            /* glibc's clone3 wrapper: the child calls rdx(r8). */
            us_thread_cloning(t, (int *)(uintptr_t)ca->child_tid);
            struct us_thread *c = prepare_thread(t, g[REG_RDX], g[REG_R8]);
            g[REG_RDX] = (greg_t)thread_entry;
            g[REG_R8] = (greg_t)c;
            g[REG_R9] = g[REG_RIP];
            g[REG_RIP] = (greg_t)us_clone_stub;
            g[REG_RAX] = SYS_clone3;
            return;
        }
        if (nr == SYS_clone) {
            unsigned long flags = (unsigned long)g[REG_RDI];
            if (flags & CLONE_THREAD) {
                /* glibc's clone wrapper: fn and arg are on the child's stack. */
                long *stack = (long *)g[REG_RSI];
                us_thread_cloning(t, (int *)g[REG_R10]);
                struct us_thread *c = prepare_thread(t, stack[0], stack[1]);
                stack[0] = (long)thread_entry;
                stack[1] = (long)c;
                g[REG_R9] = g[REG_RIP];
                g[REG_RIP] = (greg_t)us_clone_stub;
                g[REG_RAX] = SYS_clone;
                return;
            }
            if (flags & (CLONE_VM | CLONE_VFORK))
                us_fatal("clone with CLONE_VM or CLONE_VFORK (vfork, posix_spawn, system) is "
                         "not supported yet");
            if (t->mode == US_MODE_RECORD) {
                t->in_engine = 1; /* until us_fork_done */
                us_alloc_fork_prepare();
                g[REG_R9] = g[REG_RIP];
                g[REG_RIP] = (greg_t)us_fork_stub;
                g[REG_RAX] = SYS_clone;
                return;
            }
            long none[6] = {0};
            struct us_event *ev = us_expect(t, SYS_clone, none, &d_fork);
            if (!ev)
                us_fatal("failover while the program was forking is not supported");
            g[REG_RAX] = ev->ret;
            us_consume(t, ev);
            return;
        }
        if (nr == SYS_fork || nr == SYS_vfork || nr == SYS_execve || nr == SYS_execveat)
            us_fatal("unsupported system call %s: understudy does not replicate it yet",
                     us_sysname(nr));
    }
    g[REG_RAX] = us_syscall(nr, g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8],
                            g[REG_R9]);
}

void us_sud_install(void)
{
    struct {
        void *handler;
        unsigned long flags;
        void *restorer;
        uint64_t mask;
    } sa = {(void *)on_sigsys, SA_SIGINFO | 0x04000000ul /* SA_RESTORER */, (void *)us_sigreturn,
            0};
    if (US_SYSCALL4(SYS_rt_sigaction, SIGSYS, &sa, 0, 8) < 0)
        us_fatal("cannot install the SIGSYS handler");
}

void us_sud_arm(struct us_thread *t)
{
    t->selector = US_SUD_BLOCK;
    long r = US_SYSCALL5(SYS_prctl, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON,
                         (long)us_exempt_start, (long)(us_exempt_end - us_exempt_start),
                         &t->selector);
    if (r < 0)
        us_fatal("Syscall User Dispatch is not available (prctl: %ld); understudy needs "
                 "Linux 5.11 or later",
                 r);
}

void us_sud_disarm(void)
{
    US_SYSCALL5(SYS_prctl, PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0);
}
