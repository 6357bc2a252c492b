/*
 * signals.c - signals under replication.
 *
 * A signal reaches the primary at an arbitrary instruction, which a backup
 * could never reproduce. So the shim installs its own handler in place of
 * every handler the program sets: it only notes the signal, and the program's
 * handler runs as the current (or next) system call returns, where the
 * primary logs a US_EV_SIGNAL event and each backup, reaching the same point
 * of its log, runs the same handler. Faults (SIGSEGV...) are synchronous: the program's handler runs at
 * once, after a US_EV_CRASH marker is logged.
 */
#include <signal.h>
#include <time.h>
#include <string.h>
#include <ucontext.h>

#include "engine.h"

#define US_SA_RESTORER 0x04000000ul

struct ksigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

static struct ksigaction app_act[65]; /* what the program asked for */
static uint8_t app_act_known[65];
static uint64_t pending_mask;         /* caught by the primary, not yet delivered */
static siginfo_t pending_info[65];

static int is_fault(int sig, const siginfo_t *info)
{
    return (sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE || sig == SIGTRAP) &&
           info && info->si_code > 0;
}

static void call_app(int sig, siginfo_t *info, void *uc)
{
    struct ksigaction *act = &app_act[sig];
    if (act->handler == SIG_IGN)
        return;
    if (act->handler == SIG_DFL) {
        struct ksigaction dfl = {SIG_DFL, 0, 0, 0};
        US_SYSCALL4(SYS_rt_sigaction, sig, &dfl, 0, 8);
        US_SYSCALL3(SYS_tgkill, US_SYSCALL0(SYS_getpid), US_SYSCALL0(SYS_gettid), sig);
        return;
    }
    uint64_t old, mask = act->mask;
    if (!(act->flags & SA_NODEFER))
        mask |= 1ull << (sig - 1);
    US_SYSCALL4(SYS_rt_sigprocmask, SIG_BLOCK, &mask, &old, 8);
    ucontext_t fake;
    if (!uc) {
        memset(&fake, 0, sizeof(fake));
        uc = &fake;
    }
    if (act->flags & SA_SIGINFO)
        ((void (*)(int, siginfo_t *, void *))act->handler)(sig, info, uc);
    else
        ((void (*)(int))act->handler)(sig);
    US_SYSCALL4(SYS_rt_sigprocmask, SIG_SETMASK, &old, 0, 8);
}

static void on_signal(int sig, siginfo_t *info, void *uc)
{
    struct us_thread *t = us_self;
    if (is_fault(sig, info)) {
        if (t && t->in_engine)
            us_fatal("signal %d inside understudy at %p", sig, info->si_addr);
        us_signals_crash(sig);
        call_app(sig, info, uc);
        return;
    }
    if (!t || t->mode == US_MODE_OFF) {
        call_app(sig, info, uc);
        return;
    }
    if (t->mode == US_MODE_REPLAY)
        return; /* a backup takes its signals from the log only */
    pending_info[sig] = *info;
    __atomic_or_fetch(&pending_mask, 1ull << (sig - 1), __ATOMIC_SEQ_CST);
}

long us_rt_sigaction(int sig, const void *actp, void *oldp, size_t ss)
{
    if (sig < 1 || sig > 64 || sig == SIGKILL || sig == SIGSTOP)
        return US_SYSCALL4(SYS_rt_sigaction, sig, actp, oldp, ss);
    if (!app_act_known[sig]) {
        long r = US_SYSCALL4(SYS_rt_sigaction, sig, 0, &app_act[sig], ss);
        if (r < 0)
            return r;
        app_act_known[sig] = 1;
    }
    struct ksigaction old = app_act[sig];
    if (actp) {
        const struct ksigaction *act = actp;
        if (sig == SIGSYS)
            us_fatal("the program installs a SIGSYS handler, which understudy needs for itself");
        struct ksigaction mine = *act;
        if (act->handler != SIG_DFL && act->handler != SIG_IGN) {
            mine.handler = (void *)on_signal;
            mine.flags = act->flags | SA_SIGINFO | US_SA_RESTORER;
            mine.restorer = (void *)us_sigreturn;
        }
        long r = US_SYSCALL4(SYS_rt_sigaction, sig, &mine, 0, ss);
        if (r < 0)
            return r;
        app_act[sig] = *act;
    }
    if (oldp)
        memcpy(oldp, &old, sizeof(old));
    return 0;
}

uint64_t us_signals_take_pending(void)
{
    uint64_t m = __atomic_load_n(&pending_mask, __ATOMIC_ACQUIRE);
    if (m)
        __atomic_and_fetch(&pending_mask, ~m, __ATOMIC_SEQ_CST);
    return m;
}

/*
 * Runs the program's handlers for the signals caught during the call that
 * is returning, so that the program sees EINTR after its handler ran, as it
 * would natively. The primary logs one US_EV_SIGNAL per signal after the
 * call's record (which carries US_EVF_SIGNALS_NEXT); a backup reads them.
 */
void us_signals_after_call(struct us_thread *t)
{
    if (t->mode == US_MODE_RECORD) {
        uint64_t m = t->sigs_after;
        t->sigs_after = 0;
        while (m) {
            int sig = __builtin_ctzll(m) + 1;
            m &= m - 1;
            siginfo_t info = pending_info[sig];
            struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot,
                                                  sizeof(struct us_blob) + sizeof(info));
            ev->type = US_EV_SIGNAL;
            ev->fd = sig;
            ev->flags = m ? US_EVF_SIGNALS_NEXT : 0;
            struct us_blob *b = (struct us_blob *)(ev + 1);
            b->len = sizeof(info);
            b->reserved = 0;
            memcpy(b + 1, &info, sizeof(info));
            us_ring_publish(&us_log_, t->ring, ev, sizeof(*b) + sizeof(info));
            call_app(sig, &info, 0);
        }
        return;
    }
    while (t->sigs_after) {
        struct us_event *ev = us_next_event(t);
        if (!ev) {
            t->sigs_after = 0; /* the primary died before logging them */
            return;
        }
        if (ev->type != US_EV_SIGNAL || ev->fd < 1 || ev->fd > 64) {
            long none[6] = {0};
            us_diverged(t, ev, 0, none, "the log should hold a signal here");
        }
        int sig = ev->fd;
        t->sigs_after = ev->flags & US_EVF_SIGNALS_NEXT;
        siginfo_t info;
        memcpy(&info, (const uint8_t *)(ev + 1) + sizeof(struct us_blob), sizeof(info));
        us_ring_consume(&us_log_, t->ring, us_slot, ev);
        call_app(sig, &info, 0);
    }
}

void us_signals_crash(int sig)
{
    struct us_thread *t = us_self;
    if (!t || t->mode != US_MODE_RECORD)
        return;
    struct us_event *ev = us_ring_reserve(&us_log_, t->ring, us_slot, 0);
    ev->type = US_EV_CRASH;
    ev->fd = sig;
    us_ring_publish(&us_log_, t->ring, ev, 0);
}
