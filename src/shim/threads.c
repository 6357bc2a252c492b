/*
 * threads.c - thread stacks that every replica reuses alike.
 *
 * glibc keeps the stacks of ended threads in a cache and reuses one once its
 * thread is gone, which is when the kernel clears the thread's tid: a matter
 * of timing. One replica would reuse a stack where another maps a new one,
 * and their address spaces would part. So the shim gives each new thread a
 * stack from a pool of its own (pthread_attr_setstack): the primary logs
 * which one it chose, reusing one only when its previous thread has ended
 * and been joined (or was detached); a backup takes the very same one, once
 * that is true here too. New stacks are mmaps, ordered like any other.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <threads.h>
#include <time.h>

#include "engine.h"
#include "order.h"

#define US_EXPORT __attribute__((visibility("default")))

#define MAX_STACKS 1024

struct stack {
    char *base;     /* the mapping: guard pages, then the stack */
    size_t size;    /* usable bytes above the guard */
    size_t guard;
    uint32_t busy;  /* a thread was created on it and is not yet done with it */
    uint32_t ended; /* its thread was joined or detached: gone once *tid is 0 */
    int *tid;       /* the thread's tid, which the kernel clears as it ends */
};

static struct stack stacks[MAX_STACKS];
static uint32_t nstacks;
static struct us_ord stacks_ord;
static int no_tid; /* for a slot whose thread never started */

static int (*real_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int (*real_join)(pthread_t, void **);
static int (*real_detach)(pthread_t);

static void threads_init(void)
{
    real_create = dlsym(RTLD_NEXT, "pthread_create");
    real_join = dlsym(RTLD_NEXT, "pthread_join");
    real_detach = dlsym(RTLD_NEXT, "pthread_detach");
    if (!real_create || !real_join || !real_detach)
        us_fatal("cannot find pthread_create in libc");
}

static int reusable(const struct stack *s)
{
    if (!__atomic_load_n(&s->busy, __ATOMIC_ACQUIRE))
        return 1;
    /* glibc's own test of a dead thread (FREE_P): the kernel cleared the tid
     * at exit, a join may have set it to -1 */
    return __atomic_load_n(&s->ended, __ATOMIC_ACQUIRE) && s->tid &&
           __atomic_load_n(s->tid, __ATOMIC_ACQUIRE) <= 0;
}

/* The slot holding thread `th` (its descriptor lives at the top of its stack). */
static struct stack *stack_of(pthread_t th)
{
    char *p = (char *)th;
    uint32_t n = __atomic_load_n(&nstacks, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n; i++)
        if (p >= stacks[i].base && p < stacks[i].base + stacks[i].guard + stacks[i].size)
            return &stacks[i];
    return NULL;
}

static void mark_ended(pthread_t th)
{
    struct stack *s = stack_of(th);
    if (s)
        __atomic_store_n(&s->ended, 1, __ATOMIC_RELEASE);
}

/* Called after a successful join through any of the join calls. */
void us_thread_joined(unsigned long th)
{
    mark_ended(th);
}

static int map_stack(struct stack *s)
{
    long r = us_syscall(SYS_mmap, 0, (long)(s->guard + s->size), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (r < 0 && r > -4096)
        return (int)-r;
    s->base = (char *)r;
    if (s->guard)
        US_SYSCALL3(SYS_mprotect, s->base, s->guard, PROT_NONE);
    return 0;
}

/*
 * The stack for a new thread: the primary takes the first reusable one of
 * the right size, or a new one, and logs its choice (aux = slot, ret = 1 if
 * new) before mapping it; a backup follows, waiting if the slot's previous
 * thread is not gone here yet. Returns the slot, or -errno.
 */
static long choose_stack(struct us_thread *t, size_t size, size_t guard)
{
    if (t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, US_SYNC_STACK, 0);
        if (ev) {
            uint32_t version = (uint32_t)ev->check, i = (uint32_t)ev->aux;
            int fresh = ev->ret != 0;
            if (i >= MAX_STACKS)
                us_fatal("corrupt thread stack record in the log of thread %u", t->ring);
            if (us_ord_wait(&stacks_ord, version) < 0)
                goto live;
            struct stack *s = &stacks[i];
            if (!fresh && (s->size != size || s->guard != guard))
                us_diverged_at(t, ev, "a thread with another stack size");
            while (!fresh && !reusable(s)) {
                if (__atomic_load_n(&us_replay_cut, __ATOMIC_ACQUIRE))
                    goto live; /* its old thread may be parked for good */
                struct timespec ts = {0, 100000};
                US_SYSCALL2(SYS_nanosleep, &ts, 0);
            }
            s->busy = 1;
            s->ended = 0;
            s->tid = NULL;
            us_consume(t, ev);
            if (fresh) {
                s->size = size;
                s->guard = guard;
                __atomic_store_n(&nstacks, i + 1, __ATOMIC_RELEASE);
                int err = map_stack(s);
                if (err)
                    return -err;
            }
            us_ord_set(&stacks_ord, version);
            return i;
        }
    live:
        us_promote(t);
    }
    us_ord_lock(&stacks_ord);
    uint32_t i, n = nstacks;
    for (i = 0; i < n; i++)
        if (stacks[i].size == size && stacks[i].guard == guard && reusable(&stacks[i]))
            break;
    int fresh = i == n;
    if (fresh && n == MAX_STACKS) {
        us_ord_unlock(&stacks_ord);
        return -EAGAIN;
    }
    struct stack *s = &stacks[i];
    s->busy = 1;
    s->ended = 0;
    s->tid = NULL;
    us_sync_record(t, US_SYNC_STACK, 0, (void *)(uintptr_t)i, us_ord_bump(&stacks_ord), fresh, 0);
    int err = 0;
    if (fresh) {
        s->size = size;
        s->guard = guard;
        __atomic_store_n(&nstacks, i + 1, __ATOMIC_RELEASE);
        err = map_stack(s);
    }
    us_ord_unlock(&stacks_ord);
    return err ? -err : (long)i;
}

/* The clone of the thread being created on a pool stack: note where the
 * kernel will clear its tid (clone3's child_tid). */
void us_thread_cloning(struct us_thread *parent, int *child_tid)
{
    if (parent->new_stack >= 0)
        stacks[parent->new_stack].tid = child_tid;
}

/* A copy of the program's attributes with our stack in place of glibc's. */
static void copy_attr(pthread_attr_t *dst, const pthread_attr_t *src, struct stack *s)
{
    pthread_attr_init(dst);
    if (src) {
        int v;
        struct sched_param sp;
        sigset_t ss;
        if (pthread_attr_getdetachstate(src, &v) == 0)
            pthread_attr_setdetachstate(dst, v);
        if (pthread_attr_getinheritsched(src, &v) == 0)
            pthread_attr_setinheritsched(dst, v);
        if (pthread_attr_getschedpolicy(src, &v) == 0)
            pthread_attr_setschedpolicy(dst, v);
        if (pthread_attr_getschedparam(src, &sp) == 0)
            pthread_attr_setschedparam(dst, &sp);
        if (pthread_attr_getscope(src, &v) == 0)
            pthread_attr_setscope(dst, v);
        if (pthread_attr_getsigmask_np(src, &ss) == 0)
            pthread_attr_setsigmask_np(dst, &ss);
    }
    pthread_attr_setstack(dst, s->base + s->guard, s->size);
}

static int attr_has_affinity(const pthread_attr_t *attr)
{
    cpu_set_t cs;
    return attr && pthread_attr_getaffinity_np(attr, sizeof(cs), &cs) == 0 &&
           CPU_COUNT(&cs) < CPU_SETSIZE;
}

US_EXPORT int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *),
                             void *arg)
{
    if (US_UNLIKELY(!real_create))
        threads_init();
    struct us_thread *t = us_self;
    void *user_stack = NULL;
    size_t size = 0, guard = 0;
    if (attr)
        pthread_attr_getstack(attr, &user_stack, &size);
    /* Stacks the program gave itself, and threads outside the log, keep
     * glibc's way (so does an affinity in the attributes: its copy would
     * need glibc's allocator state). */
    if (!t || t->mode == US_MODE_OFF || t->in_engine || user_stack || attr_has_affinity(attr))
        return real_create(th, attr, fn, arg);
    pthread_attr_t def;
    const pthread_attr_t *a = attr;
    if (!a) {
        pthread_getattr_default_np(&def);
        a = &def;
    }
    pthread_attr_getstacksize(a, &size);
    pthread_attr_getguardsize(a, &guard);
    size = (size + 4095) & ~4095ul;
    guard = (guard + 4095) & ~4095ul;
    int detached = PTHREAD_CREATE_JOINABLE;
    pthread_attr_getdetachstate(a, &detached);

    long slot = choose_stack(t, size, guard);
    if (a == &def)
        pthread_attr_destroy(&def);
    if (slot < 0)
        return (int)-slot;
    struct stack *s = &stacks[slot];
    pthread_attr_t mine;
    copy_attr(&mine, attr, s);
    t->new_stack = (int)slot;
    int r = real_create(th, &mine, fn, arg);
    t->new_stack = -1;
    pthread_attr_destroy(&mine);
    if (r != 0) {
        s->tid = &no_tid; /* never started: free again */
        __atomic_store_n(&s->ended, 1, __ATOMIC_RELEASE);
    } else if (detached == PTHREAD_CREATE_DETACHED) {
        __atomic_store_n(&s->ended, 1, __ATOMIC_RELEASE);
    }
    return r;
}

US_EXPORT int pthread_join(pthread_t th, void **retval)
{
    if (US_UNLIKELY(!real_join))
        threads_init();
    int r = real_join(th, retval);
    if (r == 0)
        mark_ended(th);
    return r;
}

US_EXPORT int pthread_detach(pthread_t th)
{
    if (US_UNLIKELY(!real_detach))
        threads_init();
    int r = real_detach(th);
    if (r == 0)
        mark_ended(th);
    return r;
}

/* C11 threads: glibc starts them through its internal pthread_create, out
 * of reach of interposition. */
US_EXPORT int thrd_create(thrd_t *thr, thrd_start_t fn, void *arg)
{
    /* An int-returning start routine: its result comes back in the low half
     * of the register thrd_join reads. */
    int r = pthread_create(thr, NULL, (void *(*)(void *))(void (*)(void))fn, arg);
    return r == 0 ? thrd_success : r == ENOMEM ? thrd_nomem : thrd_error;
}

US_EXPORT int thrd_join(thrd_t thr, int *res)
{
    void *ret;
    if (pthread_join(thr, &ret) != 0)
        return thrd_error;
    if (res)
        *res = (int)(intptr_t)ret;
    return thrd_success;
}

US_EXPORT int thrd_detach(thrd_t thr)
{
    return pthread_detach(thr) == 0 ? thrd_success : thrd_error;
}
