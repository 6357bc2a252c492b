/*
 * alloc.c - the program's malloc, deterministic across replicas.
 *
 * glibc's malloc is not deterministic under threads: which arena a thread
 * gets, where a new heap is mapped and which freed chunk comes back all
 * depend on races on its internal locks and variables, which understudy does
 * not see. Replicas would soon have different heaps, then different mmaps.
 * So when the program would use glibc's malloc, the shim serves it instead,
 * with an allocator whose every result depends only on the calling thread's
 * own calls and on operations that are ordered and logged:
 *
 *  - each ring (thread) has its own heap: free lists per size class, and its
 *    own stretch (16 GiB, less under an RLIMIT_AS) of one reserved range of
 *    address space, carved into 256 KiB spans of one class each;
 *  - free() puts a block on the freeing thread's own list, whichever heap it
 *    came from;
 *  - a list grown too long gives a batch to the class's shared depot, and a
 *    thread whose list is empty takes a batch from the depot before carving
 *    new memory; depot operations are ordered (order.h) and logged, so every
 *    replica moves the same batches in the same order;
 *  - blocks above 32 KiB are mmaps of their own, ordered like any mmap.
 *
 * A program that brings its own allocator (Redis links jemalloc, whose locks
 * are pthread mutexes and so are ordered) keeps it: every call is forwarded.
 * So is a program not started by understudy run.
 */
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine.h"
#include "order.h"

#define US_EXPORT __attribute__((visibility("default")))

#define PAGE 4096ul
#define SPAN_SHIFT 18
#define SPAN (1ul << SPAN_SHIFT)
#define SPAN_HDR 64ul /* objects start one cache line into their span */
#define SMALL_MAX 32768ul
#define NCLASS 40
#define SHARED_HEAP US_MAX_THREADS /* for threads outside the log */
#define NHEAPS (US_MAX_THREADS + 1)
#define HEAP_SHIFT_MAX 34 /* 16 GiB of address space per heap... */
#define HEAP_SHIFT_MIN 24 /* ...or less, down to 16 MiB, under an RLIMIT_AS */
#define SPAN_MAGIC 0x4e415053u

struct span {
    uint32_t magic;
    uint32_t cls;
};

struct heap {
    void *free[NCLASS]; /* singly linked through each block's first word */
    uint32_t nfree[NCLASS];
    char *carve[NCLASS], *carve_end[NCLASS];
    uint64_t spans; /* spans taken from this heap's range so far */
};

/* A depot holds batches of exactly batch_of(c) blocks: a batch is linked
 * through the blocks' first words, batches through the head's second. */
#define DEPOT_LATER 8

struct depot {
    struct us_ord ord;
    void *top;
    /* backup: PUTs that came before their turn, done by whoever takes the
     * turn before them (depot_op) */
    uint32_t nlater;
    struct {
        uint32_t version;
        void *batch;
    } later[DEPOT_LATER];
};

static struct heap heaps[NHEAPS];
static struct us_ord shared_heap_lock;
static struct depot depots[NCLASS];
static uintptr_t arena_base, arena_end;
static unsigned heap_shift; /* log2 of each heap's stretch of the arena */

static enum { A_UNSET, A_INIT, A_OWN, A_FORWARD } amode;

/* The allocator the program would have had. */
static struct {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*usable_size)(void *);
    int (*mallopt)(int, int);
    int (*trim)(size_t);
} next;

/* ---- size classes: 16-byte steps to 128, then four per doubling ---------------- */

static inline unsigned class_of(size_t n)
{
    if (n <= 128)
        return n ? (unsigned)((n + 15) >> 4) - 1 : 0;
    unsigned lg = 63u - (unsigned)__builtin_clzl(n - 1); /* n in (2^lg, 2^(lg+1)] */
    return 8 + (lg - 7) * 4 + (unsigned)((n - 1) >> (lg - 2)) - 4;
}

static inline size_t class_size(unsigned c)
{
    if (c < 8)
        return 16ul * (c + 1);
    unsigned lg = 7 + (c - 8) / 4;
    return (size_t)((c - 8) % 4 + 5) << (lg - 2);
}

/* Blocks moved to or from the depot at a time. */
static inline uint32_t batch_of(unsigned c)
{
    size_t n = 32768 / class_size(c);
    return n < 4 ? 4 : n > 32 ? 32 : (uint32_t)n;
}

/* ---- bootstrap: what dlsym allocates while we look for the next malloc -------- */

static char boot[1u << 16] __attribute__((aligned(16)));
static size_t boot_used;

static void *boot_alloc(size_t n)
{
    size_t need = 16 + ((n + 15) & ~15ul);
    size_t at = __atomic_fetch_add(&boot_used, need, __ATOMIC_RELAXED);
    if (at + need > sizeof(boot))
        us_fatal("understudy's early allocation buffer is exhausted");
    *(size_t *)(boot + at) = n;
    return boot + at + 16;
}

static int in_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + sizeof(boot);
}

/* ---- choosing between our allocator and the next one ------------------------------ */

static void *next_sym(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

static void alloc_init(void)
{
    int unset = A_UNSET;
    if (!__atomic_compare_exchange_n(&amode, &unset, A_INIT, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return; /* another caller is at it, or done */
    void *m = next_sym("malloc");
    Dl_info di;
    int glibc = m && dladdr(m, &di) && di.dli_fname && strstr(di.dli_fname, "libc.so");
    if (!getenv(US_ENV_LOG_FD) || !glibc) {
        next.malloc = m;
        next.free = next_sym("free");
        next.calloc = next_sym("calloc");
        next.realloc = next_sym("realloc");
        next.reallocarray = next_sym("reallocarray");
        next.posix_memalign = next_sym("posix_memalign");
        next.memalign = next_sym("memalign");
        next.aligned_alloc = next_sym("aligned_alloc");
        next.valloc = next_sym("valloc");
        next.pvalloc = next_sym("pvalloc");
        next.usable_size = next_sym("malloc_usable_size");
        next.mallopt = next_sym("mallopt");
        next.trim = next_sym("malloc_trim");
        if (!next.malloc || !next.free || !next.calloc || !next.realloc)
            us_fatal("cannot find the program's malloc");
        __atomic_store_n(&amode, A_FORWARD, __ATOMIC_RELEASE);
        return;
    }
    /* One reservation, made while the program is still starting on one
     * thread: the same address in every replica (and the same size: the
     * replicas have the same limits). */
    long r = -12;
    for (heap_shift = HEAP_SHIFT_MAX; heap_shift >= HEAP_SHIFT_MIN; heap_shift--) {
        r = US_SYSCALL6(SYS_mmap, 0, ((uint64_t)NHEAPS << heap_shift) + SPAN, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (r >= 0 || r <= -4096)
            break;
    }
    if (r < 0 && r > -4096)
        us_fatal("cannot reserve address space for the program's heap (mmap: %ld)", r);
    arena_base = ((uintptr_t)r + SPAN - 1) & ~(SPAN - 1);
    arena_end = arena_base + ((uint64_t)NHEAPS << heap_shift);
    __atomic_store_n(&amode, A_OWN, __ATOMIC_RELEASE);
}

static inline int own(void)
{
    int m = __atomic_load_n(&amode, __ATOMIC_ACQUIRE);
    if (US_UNLIKELY(m == A_UNSET)) {
        alloc_init();
        m = __atomic_load_n(&amode, __ATOMIC_ACQUIRE);
    }
    return m == A_OWN;
}

static inline int booting(void)
{
    return __atomic_load_n(&amode, __ATOMIC_ACQUIRE) == A_INIT;
}

/* ---- heaps ------------------------------------------------------------------------ */

/* The heap of the calling thread; *t is set when its depot operations are
 * logged or replayed; *shared when the heap is the shared one (locked). */
static struct heap *my_heap(struct us_thread **t, int *shared)
{
    struct us_thread *self = us_self;
    *shared = 0;
    if (self) {
        *t = (self->mode != US_MODE_OFF && !self->in_engine) ? self : NULL;
        return &heaps[self->ring];
    }
    *t = NULL;
    if (!us_log_.hdr)
        return &heaps[0]; /* the program starting, before the shim attached: one thread */
    *shared = 1; /* a thread outside the log (in a forked child, say) */
    return &heaps[SHARED_HEAP];
}

static char *new_span(struct heap *h, unsigned c)
{
    unsigned idx = (unsigned)(h - heaps);
    if ((h->spans + 1) << SPAN_SHIFT > (1ul << heap_shift))
        return NULL; /* this thread's stretch is full of small blocks: ENOMEM */
    char *s = (char *)(arena_base + ((uintptr_t)idx << heap_shift) + (h->spans++ << SPAN_SHIFT));
    long r = US_SYSCALL3(SYS_mprotect, s, SPAN, PROT_READ | PROT_WRITE);
    if (r < 0)
        return NULL;
    struct span *sp = (struct span *)s;
    sp->magic = SPAN_MAGIC;
    sp->cls = c;
    return s;
}

/* ---- the depots: ordered, logged ---------------------------------------------------- */

static void depot_push(struct depot *d, void *batch)
{
    ((void **)batch)[1] = d->top;
    d->top = batch;
}

static void *depot_pop(struct depot *d)
{
    void *b = d->top;
    if (b)
        d->top = ((void **)b)[1];
    return b;
}

/*
 * Backup: a PUT whose turn has not come is left for the thread whose turn
 * comes before it, and the free returns at once. It must not wait: glibc
 * frees a thread's TLS holding a lock of its own (the stack list's, as a
 * detached thread ends or a joiner reaps one), and the thread whose turn
 * comes first may be waiting for that very lock, which it took first in the
 * primary but not here. 1 if left; under the depot's order lock.
 */
static int put_later(struct depot *d, uint32_t version, void *batch)
{
    uint32_t cur = __atomic_load_n(&d->ord.version, __ATOMIC_ACQUIRE);
    if ((int32_t)(cur - (version - 1)) >= 0 || d->nlater == DEPOT_LATER)
        return 0;
    d->later[d->nlater].version = version;
    d->later[d->nlater].batch = batch;
    d->nlater++;
    return 1;
}

/* The PUTs left for after `version`, in their order; the depot's version
 * when done. Under the depot's order lock. */
static uint32_t put_left(struct depot *d, uint32_t version)
{
    for (unsigned i = 0; i < d->nlater;) {
        if (d->later[i].version != version + 1) {
            i++;
            continue;
        }
        depot_push(d, d->later[i].batch);
        version++;
        d->later[i] = d->later[--d->nlater];
        i = 0;
    }
    return version;
}

/* One depot operation: PUT of `batch`, or TAKE (returns the batch or NULL).
 * The primary holds the depot's order lock over operation and record; a
 * backup waits for its turn (a PUT need not: put_later) and checks it got
 * what the primary got. */
static void *depot_op(struct us_thread *t, int op, unsigned c, void *batch)
{
    struct depot *d = &depots[c];
    if (t && t->mode == US_MODE_REPLAY) {
        struct us_event *ev = us_sync_expect(t, op, 0);
        if (ev) {
            if (ev->aux != c)
                us_diverged_at(t, ev, "a malloc of another size class");
            uint32_t version = (uint32_t)ev->check;
            if (op == US_SYNC_HEAP_PUT) {
                us_ord_lock(&d->ord);
                int later = put_later(d, version, batch);
                us_ord_unlock(&d->ord);
                if (later) {
                    us_consume(t, ev);
                    return batch;
                }
            }
            if (us_ord_wait(&d->ord, version) < 0)
                goto live;
            us_ord_lock(&d->ord);
            void *got = op == US_SYNC_HEAP_PUT ? (depot_push(d, batch), batch) : depot_pop(d);
            /* the version is set under the lock, where put_later looks */
            uint32_t done = put_left(d, version);
            __atomic_store_n(&d->ord.version, done, __ATOMIC_RELEASE);
            us_ord_unlock(&d->ord);
            if (op == US_SYNC_HEAP_TAKE && (got != NULL) != (ev->ret != 0))
                us_diverged_at(t, ev, "a malloc that found the depot otherwise");
            us_ord_set(&d->ord, done);
            us_consume(t, ev);
            return got;
        }
    live:
        us_promote(t);
    }
    us_ord_lock(&d->ord);
    void *got = op == US_SYNC_HEAP_PUT ? (depot_push(d, batch), batch) : depot_pop(d);
    if (t)
        us_sync_record(t, op, 0, (void *)(uintptr_t)c, us_ord_bump(&d->ord), got != NULL, 0);
    us_ord_unlock(&d->ord);
    return got;
}

/* The heap's list for class c is empty: a batch from the depot, or new blocks. */
static int refill(struct heap *h, struct us_thread *t, unsigned c)
{
    uint32_t n = batch_of(c);
    void *b = depot_op(t, US_SYNC_HEAP_TAKE, c, NULL);
    if (b) {
        h->free[c] = b;
        h->nfree[c] = n;
        return 0;
    }
    size_t size = class_size(c);
    void *head = NULL, **link = &head;
    for (uint32_t i = 0; i < n; i++) {
        if (!h->carve[c] || h->carve[c] + size > h->carve_end[c]) {
            char *s = new_span(h, c);
            if (!s)
                break;
            h->carve[c] = s + SPAN_HDR;
            h->carve_end[c] = s + SPAN;
        }
        *link = h->carve[c];
        link = (void **)h->carve[c];
        h->carve[c] += size;
        h->nfree[c]++;
    }
    *link = NULL;
    h->free[c] = head;
    return head ? 0 : -1;
}

static void *small_alloc(unsigned c)
{
    struct us_thread *t;
    int shared;
    struct heap *h = my_heap(&t, &shared);
    if (shared)
        us_ord_lock(&shared_heap_lock);
    void *p = h->free[c];
    if (!p && refill(h, t, c) == 0)
        p = h->free[c];
    if (p) {
        h->free[c] = *(void **)p;
        h->nfree[c]--;
    }
    if (shared)
        us_ord_unlock(&shared_heap_lock);
    return p;
}

static void small_free(void *p)
{
    struct span *sp = (struct span *)((uintptr_t)p & ~(SPAN - 1));
    unsigned c = sp->cls;
    if (sp->magic != SPAN_MAGIC || c >= NCLASS)
        us_fatal("free() of %p, which malloc did not return", p);
    size_t size = class_size(c);
    char *objs = (char *)sp + SPAN_HDR;
    p = objs + (size_t)((char *)p - objs) / size * size; /* an aligned block's start */
    struct us_thread *t;
    int shared;
    struct heap *h = my_heap(&t, &shared);
    if (shared)
        us_ord_lock(&shared_heap_lock);
    *(void **)p = h->free[c];
    h->free[c] = p;
    uint32_t n = batch_of(c);
    if (++h->nfree[c] >= 2 * n) {
        void *batch = h->free[c], **last = (void **)batch;
        for (uint32_t i = 1; i < n; i++)
            last = (void **)*last;
        h->free[c] = *last;
        *last = NULL;
        h->nfree[c] -= n;
        depot_op(t, US_SYNC_HEAP_PUT, c, batch);
    }
    if (shared)
        us_ord_unlock(&shared_heap_lock);
}

static size_t small_usable(const void *p)
{
    struct span *sp = (struct span *)((uintptr_t)p & ~(SPAN - 1));
    size_t size = class_size(sp->cls);
    const char *objs = (const char *)sp + SPAN_HDR;
    return size - (size_t)((const char *)p - objs) % size;
}

/* ---- large blocks: mmaps of their own, registered so free() can tell them ------- */

struct large {
    uintptr_t p;   /* what the program got; 0 free, 1 deleted */
    uintptr_t base;
    size_t len;
};
#define NLARGE (1u << 20)
static struct large large[NLARGE];
static struct us_ord large_lock;

static struct large *large_find(uintptr_t p, int insert)
{
    unsigned i = (unsigned)((p >> 12) * 0x9E3779B1u) & (NLARGE - 1);
    struct large *tomb = NULL;
    for (unsigned n = 0; n < NLARGE; n++, i = (i + 1) & (NLARGE - 1)) {
        if (large[i].p == p)
            return &large[i];
        if (large[i].p == 1 && !tomb)
            tomb = &large[i];
        if (large[i].p == 0)
            return insert ? (tomb ? tomb : &large[i]) : NULL;
    }
    if (insert && tomb)
        return tomb;
    us_fatal("more than %u large blocks allocated", NLARGE);
}

static void *large_alloc(size_t n, size_t align)
{
    if (align < PAGE)
        align = PAGE;
    if (n > (1ul << 46))
        return NULL;
    size_t len = ((n + PAGE - 1) & ~(PAGE - 1)) + (align > PAGE ? align : 0);
    long base = us_syscall(SYS_mmap, 0, (long)len, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base < 0 && base > -4096)
        return NULL;
    uintptr_t p = ((uintptr_t)base + align - 1) & ~(align - 1);
    us_ord_lock(&large_lock);
    struct large *l = large_find(p, 1);
    l->p = p;
    l->base = (uintptr_t)base;
    l->len = len;
    us_ord_unlock(&large_lock);
    return (void *)p;
}

/* 1: freed; 0: not a large block of ours. */
static int large_free(void *p)
{
    us_ord_lock(&large_lock);
    struct large *l = large_find((uintptr_t)p, 0);
    uintptr_t base = l ? l->base : 0;
    size_t len = l ? l->len : 0;
    if (l)
        l->p = 1;
    us_ord_unlock(&large_lock);
    if (!l)
        return 0;
    us_syscall(SYS_munmap, (long)base, (long)len, 0, 0, 0, 0);
    return 1;
}

static size_t large_usable(const void *p)
{
    us_ord_lock(&large_lock);
    struct large *l = large_find((uintptr_t)p, 0);
    size_t n = l ? l->len - ((uintptr_t)p - l->base) : 0;
    us_ord_unlock(&large_lock);
    return n;
}

/* ---- the allocator ------------------------------------------------------------------ */

static inline int in_arena(const void *p)
{
    return (uintptr_t)p >= arena_base && (uintptr_t)p < arena_end;
}

static void *own_alloc(size_t n, size_t align)
{
    void *p;
    if (align <= 16 && n <= SMALL_MAX) {
        p = small_alloc(class_of(n));
    } else if (align <= PAGE && n + align <= SMALL_MAX) {
        p = small_alloc(class_of(n + align - 16));
        if (p)
            p = (void *)(((uintptr_t)p + align - 1) & ~(align - 1));
    } else {
        p = large_alloc(n, align);
    }
    if (!p)
        errno = ENOMEM;
    return p;
}

static size_t own_usable(void *p)
{
    if (!p)
        return 0;
    if (in_arena(p))
        return small_usable(p);
    if (in_boot(p))
        return *(size_t *)((char *)p - 16);
    return large_usable(p);
}

static void own_free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (in_arena(p)) {
        small_free(p);
        return;
    }
    if (!large_free(p))
        us_fatal("free() of %p, which malloc did not return", p);
}

US_EXPORT void *malloc(size_t n)
{
    if (own())
        return own_alloc(n, 16);
    return booting() ? boot_alloc(n) : next.malloc(n);
}

US_EXPORT void free(void *p)
{
    if (own())
        own_free(p);
    else if (!in_boot(p) && next.free)
        next.free(p);
}

US_EXPORT void *calloc(size_t n, size_t m)
{
    size_t total;
    if (__builtin_mul_overflow(n, m, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    if (own()) {
        void *p = own_alloc(total, 16);
        if (p && in_arena(p))
            memset(p, 0, total); /* large blocks are fresh mmaps: zero already */
        return p;
    }
    if (booting())
        return memset(boot_alloc(total), 0, total);
    return next.calloc(n, m);
}

US_EXPORT void *realloc(void *p, size_t n)
{
    if (!own()) {
        if (booting() || in_boot(p)) {
            void *q = booting() ? boot_alloc(n) : next.malloc(n);
            if (p && q) {
                size_t old = *(size_t *)((char *)p - 16);
                memcpy(q, p, old < n ? old : n);
            }
            return q;
        }
        return next.realloc(p, n);
    }
    if (!p)
        return own_alloc(n, 16);
    if (n == 0) {
        own_free(p);
        return NULL;
    }
    size_t old = own_usable(p);
    if (in_arena(p) && n <= old && n <= SMALL_MAX && class_of(n) == class_of(old))
        return p;
    void *q = own_alloc(n, 16);
    if (!q)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    own_free(p);
    return q;
}

US_EXPORT void *reallocarray(void *p, size_t n, size_t m)
{
    size_t total;
    if (__builtin_mul_overflow(n, m, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    if (!own() && !booting() && next.reallocarray)
        return next.reallocarray(p, n, m);
    return realloc(p, total);
}

static int valid_align(size_t a)
{
    return a && !(a & (a - 1));
}

US_EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (!own() && !booting())
        return next.posix_memalign(out, align, n);
    if (!valid_align(align) || align % sizeof(void *))
        return EINVAL;
    void *p = own() ? own_alloc(n, align) : boot_alloc(n + align);
    if (!p)
        return ENOMEM;
    if (!own())
        p = (void *)(((uintptr_t)p + align - 1) & ~(align - 1));
    *out = p;
    return 0;
}

US_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    if (!own() && !booting())
        return next.aligned_alloc(align, n);
    void *p = NULL;
    int r = valid_align(align) ? posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, n)
                               : EINVAL;
    if (r)
        errno = r;
    return p;
}

US_EXPORT void *memalign(size_t align, size_t n)
{
    if (!own() && !booting())
        return next.memalign(align, n);
    return aligned_alloc(align, n);
}

US_EXPORT void *valloc(size_t n)
{
    if (!own() && !booting())
        return next.valloc(n);
    return aligned_alloc(PAGE, n);
}

US_EXPORT void *pvalloc(size_t n)
{
    if (!own() && !booting())
        return next.pvalloc(n);
    return aligned_alloc(PAGE, (n + PAGE - 1) & ~(PAGE - 1));
}

US_EXPORT size_t malloc_usable_size(void *p)
{
    if (own())
        return own_usable(p);
    if (in_boot(p))
        return *(size_t *)((char *)p - 16);
    return next.usable_size ? next.usable_size(p) : 0;
}

/* Tuning knobs of glibc's malloc mean nothing to this one. */
US_EXPORT int mallopt(int param, int value)
{
    if (!own() && next.mallopt)
        return next.mallopt(param, value);
    return 1;
}

US_EXPORT int malloc_trim(size_t pad)
{
    if (!own() && next.trim)
        return next.trim(pad);
    return 0;
}

/* fork() while another thread is inside the allocator: the child must not
 * inherit a held lock (the fork path in sud.c brackets the clone). */
void us_alloc_fork_prepare(void)
{
    if (__atomic_load_n(&amode, __ATOMIC_ACQUIRE) != A_OWN)
        return;
    us_ord_lock(&shared_heap_lock);
    us_ord_lock(&large_lock);
    for (unsigned c = 0; c < NCLASS; c++)
        us_ord_lock(&depots[c].ord);
}

void us_alloc_fork_done(void)
{
    if (__atomic_load_n(&amode, __ATOMIC_ACQUIRE) != A_OWN)
        return;
    for (unsigned c = 0; c < NCLASS; c++)
        us_ord_unlock(&depots[c].ord);
    us_ord_unlock(&large_lock);
    us_ord_unlock(&shared_heap_lock);
}
