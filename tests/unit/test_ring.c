/*
 * test_ring.c - unit tests of the log's per-thread rings (src/log/ring.c).
 *
 * The log lives in an anonymous MAP_SHARED mapping of us_log_total_size(65536)
 * bytes, formatted with three replica slots: 0 is the primary (the producer's
 * slot), 1 and 2 are backups (consumers). Threaded tests never use sleeps as
 * synchronisation: they poll shared counters with a bounded wait, and a
 * per-test watchdog turns a hang into a failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

#define EVSZ ((unsigned)sizeof(struct us_event))

#define RING 65536u
#define NSLOTS 3u
#define BIG_LAG (UINT64_C(1) << 40)
#define MAX_THREADS 4
#define EPROTO_NEG (-71)
#define WATCHDOG_S 20u

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ------------------------------------------------------------------ */
/* fixture                                                              */

struct fx {
    struct us_log log;
    size_t map_size;
    uintptr_t param;            /* from cmocka's initial state (prestate tests) */
    int stop;                   /* asks helper threads to finish */
    int nthreads;
    pthread_t threads[MAX_THREADS];
    int joined[MAX_THREADS];
};

static void on_watchdog(int sig)
{
    static const char m[] = "test_ring: watchdog: a test did not finish in time (ring hang?)\n";
    ssize_t r = write(2, m, sizeof(m) - 1);
    (void)r;
    (void)sig;
    _exit(3);
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    if (!fx)
        return -1;
    fx->param = (uintptr_t)*state;
    fx->map_size = (size_t)us_log_total_size(RING);
    void *m = mmap(NULL, fx->map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        free(fx);
        return -1;
    }
    fx->log.hdr = m;
    fx->log.base = m;
    fx->log.size = fx->map_size;
    us_log_format(&fx->log, RING, NSLOTS, BIG_LAG);
    struct us_log_header *h = fx->log.hdr;
    h->replica[0].role = US_ROLE_PRIMARY;
    h->replica[0].state = US_REPLICA_RUNNING;
    /* slot 1 is a running backup; slot 2 is unused unless a test enables it */
    h->replica[1].role = US_ROLE_BACKUP;
    h->replica[1].state = US_REPLICA_RUNNING;
    h->ring[0].in_use = 1;
    signal(SIGALRM, on_watchdog);
    alarm(WATCHDOG_S);
    *state = fx;
    return 0;
}

static void enable_backup2(struct fx *fx)
{
    fx->log.hdr->replica[2].role = US_ROLE_BACKUP;
    fx->log.hdr->replica[2].state = US_REPLICA_RUNNING;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    int leak = 0;
    /* Release any helper thread a failed test left blocked: dead consumers do
     * not hold producers back, promoted ones stop waiting. */
    STORE(&fx->stop, 1);
    for (unsigned s = 0; s < US_MAX_REPLICAS; s++) {
        STORE(&h->replica[s].state, (uint32_t)US_REPLICA_DEAD);
        STORE(&h->replica[s].promote, 1u);
    }
    us_log_wake_all(&fx->log);
    for (int i = 0; i < fx->nthreads; i++) {
        if (fx->joined[i])
            continue;
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 5;
        if (pthread_timedjoin_np(fx->threads[i], NULL, &dl) != 0)
            leak = 1; /* still running: keep its memory mapped */
    }
    if (!leak) {
        munmap(fx->log.base, fx->map_size);
        free(fx);
    }
    alarm(0);
    return 0;
}

static int start_thread(struct fx *fx, void *(*fn)(void *), void *arg)
{
    assert_true(fx->nthreads < MAX_THREADS);
    int i = fx->nthreads;
    assert_int_equal(pthread_create(&fx->threads[i], NULL, fn, arg), 0);
    fx->nthreads++;
    return i;
}

static void join_thread(struct fx *fx, int i)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    int rc = pthread_timedjoin_np(fx->threads[i], NULL, &dl);
    if (rc != 0)
        fail_msg("thread %d did not finish: %s", i, strerror(rc));
    fx->joined[i] = 1;
}

/* ------------------------------------------------------------------ */
/* bounded polling                                                      */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void tiny_pause(void)
{
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
}

/* ok = 1 once cond holds, 0 if it did not within ms milliseconds. */
#define POLL_UNTIL(ok, cond, ms)                                          \
    do {                                                                  \
        uint64_t dl_ = now_ns() + (uint64_t)(ms) * 1000000u;              \
        for (;;) {                                                        \
            if (cond) {                                                   \
                (ok) = 1;                                                 \
                break;                                                    \
            }                                                             \
            if (now_ns() > dl_) {                                         \
                (ok) = 0;                                                 \
                break;                                                    \
            }                                                             \
            tiny_pause();                                                 \
        }                                                                 \
    } while (0)

/* ok = 1 if cond held at every look during ms milliseconds. */
#define STAYS(ok, cond, ms)                                               \
    do {                                                                  \
        uint64_t dl_ = now_ns() + (uint64_t)(ms) * 1000000u;              \
        (ok) = 1;                                                         \
        while (now_ns() < dl_) {                                          \
            if (!(cond)) {                                                \
                (ok) = 0;                                                 \
                break;                                                    \
            }                                                             \
            tiny_pause();                                                 \
        }                                                                 \
    } while (0)

/* ------------------------------------------------------------------ */
/* record contents: everything derived from the sequence number         */

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t fnv1a(const uint8_t *p, uint32_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static uint8_t pat(uint64_t m, uint32_t j)
{
    return (uint8_t)((m >> ((j & 7u) * 8u)) + j * 31u + (j >> 8));
}

struct lenspec {
    uint32_t fixed;     /* payload length when rand_max is 0 */
    uint32_t rand_max;  /* else pseudo-random in [0, rand_max] */
    uint32_t big_every; /* every big_every-th record carries big_len bytes */
    uint32_t big_len;
};

static uint32_t rec_len(const struct lenspec *ls, uint64_t seq)
{
    uint32_t len = ls->rand_max ? (uint32_t)(mix(seq ^ 0x5eedu) % (ls->rand_max + 1u)) : ls->fixed;
    if (ls->big_every && seq % ls->big_every == 0)
        len = ls->big_len;
    return len;
}

static int64_t rec_ret(uint64_t seq)
{
    int64_t v = (int64_t)(mix(seq) >> 2);
    return (seq & 1) ? -v : v;
}

static void fill_record(struct us_event *ev, uint64_t seq, uint32_t len)
{
    uint8_t *p = (uint8_t *)(ev + 1);
    uint64_t m = mix(seq);
    for (uint32_t j = 0; j < len; j++)
        p[j] = pat(m, j);
    ev->type = US_EV_SYSCALL;
    ev->nr = (uint32_t)(seq % 451u);
    ev->fd = (int32_t)(seq % 1021u) - 7;
    ev->check = len;
    ev->ret = rec_ret(seq);
    ev->aux = fnv1a(p, len);
}

/* 0 if ev is record seq with a payload of len bytes, else 1 and a message. */
static int check_record(const struct us_event *ev, uint64_t seq, uint32_t len, char *err, size_t n)
{
    const uint8_t *p = (const uint8_t *)(ev + 1);
    uint64_t m = mix(seq);
    if (ev->seq != seq) {
        snprintf(err, n, "seq %llu, expected %llu", (unsigned long long)ev->seq,
                 (unsigned long long)seq);
        return 1;
    }
    if (ev->size != sizeof(struct us_event) + us_align8(len) || ev->size % 8u) {
        snprintf(err, n, "seq %llu: size %u, expected %u", (unsigned long long)seq, ev->size,
                 (unsigned)(sizeof(struct us_event) + us_align8(len)));
        return 1;
    }
    if (ev->type != US_EV_SYSCALL || ev->flags != 0 || ev->nr != (uint32_t)(seq % 451u) ||
        ev->fd != (int32_t)(seq % 1021u) - 7 || ev->check != len || ev->ret != rec_ret(seq)) {
        snprintf(err, n, "seq %llu: header fields differ (type %u flags %u nr %u fd %d check %llu)",
                 (unsigned long long)seq, ev->type, ev->flags, ev->nr, ev->fd,
                 (unsigned long long)ev->check);
        return 1;
    }
    for (uint32_t j = 0; j < len; j++) {
        if (p[j] != pat(m, j)) {
            snprintf(err, n, "seq %llu: payload byte %u is %#x, expected %#x",
                     (unsigned long long)seq, j, p[j], pat(m, j));
            return 1;
        }
    }
    if (fnv1a(p, len) != ev->aux) {
        snprintf(err, n, "seq %llu: payload checksum differs", (unsigned long long)seq);
        return 1;
    }
    return 0;
}

/* 0 if the record lies wholly inside the ring's data, 8-aligned. */
static int check_in_ring(const struct us_log *log, unsigned ring, const struct us_event *ev,
                         char *err, size_t n)
{
    const uint8_t *d = us_ring_data(log, ring);
    uint64_t off = (uint64_t)((const uint8_t *)ev - d);
    if ((const uint8_t *)ev < d || off % 8u || off + ev->size > log->hdr->ring_size) {
        snprintf(err, n, "record seq %llu at offset %llu size %u straddles the ring end",
                 (unsigned long long)ev->seq, (unsigned long long)off, ev->size);
        return 1;
    }
    return 0;
}

#define ASSERT_RECORD(log, ring, ev, seq, len)                              \
    do {                                                                    \
        char e_[256];                                                       \
        assert_non_null(ev);                                                \
        if (check_record((ev), (seq), (len), e_, sizeof(e_)) ||             \
            check_in_ring((log), (ring), (ev), e_, sizeof(e_)))             \
            fail_msg("%s", e_);                                             \
    } while (0)

/* Publishes record seq (= head_seq + 1) from the calling thread. */
static struct us_event *publish_one(struct us_log *log, unsigned ring, uint32_t len)
{
    uint64_t seq = log->hdr->ring[ring].head_seq + 1;
    struct us_event *ev = us_ring_reserve(log, ring, 0, len);
    assert_non_null(ev);
    fill_record(ev, seq, len);
    us_ring_publish(log, ring, ev, len);
    return ev;
}

static uint64_t ring_off(const struct us_log *log, unsigned ring, const void *p)
{
    return (uint64_t)((const uint8_t *)p - us_ring_data(log, ring));
}

/* ------------------------------------------------------------------ */
/* helper threads                                                       */

struct producer {
    struct fx *fx;
    unsigned ring, self;
    uint64_t count;
    struct lenspec ls;
    uint64_t attempted; /* records it has started to reserve */
    uint64_t published;
    int done;
};

static void *producer_main(void *arg)
{
    struct producer *p = arg;
    struct us_log *log = &p->fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[p->ring];
    for (uint64_t i = 0; i < p->count && !LOAD(&p->fx->stop); i++) {
        STORE(&p->attempted, i + 1);
        uint64_t seq = c->head_seq + 1; /* the producer owns head_seq */
        uint32_t len = rec_len(&p->ls, seq);
        struct us_event *ev = us_ring_reserve(log, p->ring, p->self, len);
        fill_record(ev, seq, len);
        us_ring_publish(log, p->ring, ev, len);
        STORE(&p->published, i + 1);
    }
    STORE(&p->done, 1);
    return NULL;
}

struct consumer {
    struct fx *fx;
    unsigned ring, slot;
    uint64_t first, count;
    struct lenspec ls;
    uint64_t verified;
    int done, got_null, failed;
    char err[256];
};

static void *consumer_main(void *arg)
{
    struct consumer *k = arg;
    struct us_log *log = &k->fx->log;
    for (uint64_t i = 0; i < k->count; i++) {
        struct us_event *ev = us_ring_next(log, k->ring, k->slot);
        if (!ev) {
            STORE(&k->got_null, 1);
            break;
        }
        uint64_t seq = k->first + i;
        if (check_record(ev, seq, rec_len(&k->ls, seq), k->err, sizeof(k->err)) ||
            check_in_ring(log, k->ring, ev, k->err, sizeof(k->err))) {
            STORE(&k->failed, 1);
            break;
        }
        us_ring_consume(log, k->ring, k->slot, ev);
        STORE(&k->verified, i + 1);
    }
    STORE(&k->done, 1);
    return NULL;
}

/* Consumes (with us_ring_peek, never blocking) on each of the slots until
 * each has verified records up to `last`; fails after timeout_ms. */
static void drain_slots(struct fx *fx, unsigned ring, const unsigned *slots, unsigned n,
                        uint64_t *next_seq, uint64_t last, const struct lenspec *ls,
                        int timeout_ms)
{
    uint64_t dl = now_ns() + (uint64_t)timeout_ms * 1000000u;
    for (;;) {
        int all = 1, progress = 0;
        for (unsigned i = 0; i < n; i++) {
            if (next_seq[i] > last)
                continue;
            all = 0;
            struct us_event *ev = us_ring_peek(&fx->log, ring, slots[i]);
            if (!ev)
                continue;
            ASSERT_RECORD(&fx->log, ring, ev, next_seq[i], rec_len(ls, next_seq[i]));
            us_ring_consume(&fx->log, ring, slots[i], ev);
            next_seq[i]++;
            progress = 1;
        }
        if (all)
            return;
        if (!progress) {
            if (now_ns() > dl)
                fail_msg("consumers stalled (slot %u at seq %llu, want %llu)", slots[0],
                         (unsigned long long)next_seq[0], (unsigned long long)last);
            tiny_pause();
        }
    }
}

/* ------------------------------------------------------------------ */
/* format and check                                                     */

static void test_format_then_check_accepts(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    assert_int_equal(us_log_check(&fx->log), 0);
    assert_true(h->magic == US_LOG_MAGIC);
    assert_int_equal(h->version, US_LOG_VERSION);
    assert_int_equal(h->header_size, US_LOG_HEADER_SIZE);
    assert_int_equal(h->ring_size, RING);
    assert_int_equal(h->total_size, (uint64_t)US_LOG_HEADER_SIZE + (uint64_t)RING * US_MAX_THREADS);
    assert_int_equal(h->total_size, fx->map_size);
    assert_int_equal(h->nreplicas, NSLOTS);
    assert_true(h->max_lag_events == BIG_LAG);
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        assert_true(h->ring[r].pending == US_NO_PENDING);
        assert_int_equal(h->ring[r].head, 0);
        assert_int_equal(h->ring[r].head_seq, 0);
    }
    /* the rings follow the header back to back and end with the mapping */
    assert_ptr_equal(us_ring_data(&fx->log, 0), fx->log.base + US_LOG_HEADER_SIZE);
    assert_ptr_equal(us_ring_data(&fx->log, 1), us_ring_data(&fx->log, 0) + RING);
    assert_ptr_equal(us_ring_data(&fx->log, US_MAX_THREADS - 1) + RING,
                     fx->log.base + fx->map_size);
    assert_int_equal(us_ring_max_payload(&fx->log), RING / 4 - sizeof(struct us_event));
}

static void test_format_resets_a_used_header(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    memset(h, 0xa5, sizeof(*h));
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    us_log_format(&fx->log, RING, 2, 100);
    assert_int_equal(us_log_check(&fx->log), 0);
    assert_int_equal(h->nreplicas, 2);
    assert_int_equal(h->max_lag_events, 100);
    assert_int_equal(h->epoch, 0);
    assert_int_equal(h->shutdown, 0);
    for (unsigned s = 0; s < US_MAX_REPLICAS; s++) {
        assert_int_equal(h->replica[s].role, US_ROLE_NONE);
        assert_int_equal(h->replica[s].promote, 0);
    }
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        assert_int_equal(h->ring[r].head, 0);
        assert_int_equal(h->ring[r].producer_waiting, 0);
        assert_true(h->ring[r].pending == US_NO_PENDING);
        for (unsigned s = 0; s < US_MAX_REPLICAS; s++) {
            assert_int_equal(h->ring[r].consumer[s].tail, 0);
            assert_int_equal(h->ring[r].consumer[s].seq, 0);
        }
    }
}

static void test_check_rejects_bad_magic(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    h->magic ^= 1;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->magic = 0;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->magic = US_LOG_MAGIC;
    assert_int_equal(us_log_check(&fx->log), 0);
}

static void test_check_rejects_bad_version(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    h->version = US_LOG_VERSION + 1;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->version = 0;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->version = US_LOG_VERSION;
    assert_int_equal(us_log_check(&fx->log), 0);
}

/* Only `log.size` is the mapping's size for us_log_check: it reads nothing
 * past the header, so the sizes below need not be really mapped. */
static void set_ring_size(struct fx *fx, uint64_t ring_size)
{
    fx->log.hdr->ring_size = ring_size;
    fx->log.hdr->total_size = us_log_total_size(ring_size);
    fx->log.size = fx->log.hdr->total_size;
}

static void test_check_rejects_ring_size_not_power_of_two(void **state)
{
    struct fx *fx = *state;
    /* control: another power of two with consistent sizes is accepted */
    set_ring_size(fx, 2u * RING);
    assert_int_equal(us_log_check(&fx->log), 0);
    set_ring_size(fx, 3u * 32768u);
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    set_ring_size(fx, RING + 8u);
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    set_ring_size(fx, 2u * RING - 8u);
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    set_ring_size(fx, 0);
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
}

static void test_check_rejects_bad_nreplicas(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    h->nreplicas = 0;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->nreplicas = US_MAX_REPLICAS + 1;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->nreplicas = UINT32_MAX;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->nreplicas = 1;
    assert_int_equal(us_log_check(&fx->log), 0);
    h->nreplicas = US_MAX_REPLICAS;
    assert_int_equal(us_log_check(&fx->log), 0);
}

static void test_check_rejects_short_mapping(void **state)
{
    struct fx *fx = *state;
    uint64_t total = fx->log.hdr->total_size;
    fx->log.size = total - 1;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    fx->log.size = total - RING; /* one ring missing */
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    fx->log.size = US_LOG_HEADER_SIZE;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    fx->log.size = 4096; /* smaller than the header itself */
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    fx->log.size = 0;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    fx->log.size = total + 4096; /* a larger mapping is fine */
    assert_int_equal(us_log_check(&fx->log), 0);
    fx->log.size = total;
    assert_int_equal(us_log_check(&fx->log), 0);
}

static void test_check_rejects_inconsistent_sizes(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    fx->log.size = 4 * fx->map_size;
    h->total_size += RING;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
    h->total_size = us_log_total_size(RING);
    assert_int_equal(us_log_check(&fx->log), 0);
    h->header_size = 4096;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
}

/* us_log_total_size(ring_size) computed in uint64_t would wrap for
 * ring_size = 2^58 to exactly US_LOG_HEADER_SIZE and pass against a mapping
 * of 64 KiB, ring addresses pointing 2^58 bytes beyond it: refused. */
static void test_check_rejects_ring_size_overflow(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    h->ring_size = UINT64_C(1) << 58;
    h->total_size = us_log_total_size(h->ring_size);
    fx->log.size = fx->map_size;
    assert_int_equal(us_log_check(&fx->log), EPROTO_NEG);
}

/* ------------------------------------------------------------------ */
/* one producer, one consumer, single-threaded                          */

static void test_spsc_order_and_contents(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    const uint32_t maxp = us_ring_max_payload(log);
    static const uint32_t fixed[] = {0, 1, 7, 8, 9, 15, 16, 47, 48, 49, 255, 256, 1000, 4095};
    enum { N = 600 };
    uint32_t lens[N];
    for (unsigned i = 0; i < N; i++) {
        if (i < sizeof(fixed) / sizeof(fixed[0]))
            lens[i] = fixed[i];
        else if (i % 50 == 0)
            lens[i] = maxp;
        else
            lens[i] = (uint32_t)(mix(i) % 2000u);
    }
    uint64_t published = 0, consumed = 0;
    while (consumed < N) {
        /* up to three records in flight: never more than the ring holds */
        for (int b = 0; b < 3 && published < N; b++) {
            uint64_t before = c->head;
            struct us_event *ev = us_ring_reserve(log, 0, 0, lens[published]);
            /* nothing is visible before publish (reserve may only have
             * published a pad up to the end of the ring) */
            if (c->head != before) {
                assert_int_equal(c->head - before, RING - (before & (RING - 1)));
                assert_int_equal(ring_off(log, 0, ev), 0);
                assert_int_equal(us_ring_at(log, 0, before)->type, US_EV_PAD);
            }
            assert_int_equal(c->head_seq, published);
            if (consumed == published)
                assert_null(us_ring_peek(log, 0, 1));
            fill_record(ev, published + 1, lens[published]);
            us_ring_publish(log, 0, ev, lens[published]);
            assert_int_equal(ev->seq, published + 1);
            assert_int_equal(c->head_seq, published + 1);
            published++;
            /* the consumer has all earlier ones pending (peek does not consume) */
            if (b == 0) {
                struct us_event *first = us_ring_peek(log, 0, 1);
                ASSERT_RECORD(log, 0, first, consumed + 1, lens[consumed]);
            }
        }
        while (consumed < published) {
            struct us_event *ev = us_ring_next(log, 0, 1);
            ASSERT_RECORD(log, 0, ev, consumed + 1, lens[consumed]);
            assert_int_equal(ev->size % 8u, 0);
            us_ring_consume(log, 0, 1, ev);
            consumed++;
            assert_int_equal(c->consumer[1].seq, consumed);
        }
        assert_null(us_ring_peek(log, 0, 1));
        assert_int_equal(c->consumer[1].tail, c->head);
    }
    assert_int_equal(c->head_seq, N);
}

static void test_first_seq_is_one_and_sizes_aligned(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[5];
    uint64_t head = 0;
    for (uint32_t len = 0; len < 40; len++) {
        struct us_event *ev = us_ring_reserve(log, 5, 0, len);
        assert_ptr_equal(ev, us_ring_data(log, 5) + head);
        fill_record(ev, len + 1u, len);
        us_ring_publish(log, 5, ev, len);
        assert_int_equal(ev->seq, len + 1u);
        assert_int_equal(ev->size, sizeof(struct us_event) + ((len + 7u) & ~7u));
        head += ev->size;
        assert_int_equal(c->head, head);
    }
    /* ring 5's records did not touch ring 0 */
    assert_int_equal(log->hdr->ring[0].head, 0);
    assert_null(us_ring_peek(log, 0, 1));
    for (uint32_t len = 0; len < 40; len++) {
        struct us_event *ev = us_ring_next(log, 5, 1);
        ASSERT_RECORD(log, 5, ev, len + 1u, len);
        us_ring_consume(log, 5, 1, ev);
    }
}

static void test_publish_shorter_than_reserved(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    struct us_event *ev = us_ring_reserve(log, 0, 0, 1000);
    assert_ptr_equal(ev, us_ring_data(log, 0));
    assert_int_equal(c->head, 0);          /* reserving publishes nothing */
    assert_null(us_ring_peek(log, 0, 1));
    fill_record(ev, 1, 10);
    us_ring_publish(log, 0, ev, 10);
    assert_int_equal(c->head, sizeof(struct us_event) + 16u);
    struct us_event *ev2 = us_ring_reserve(log, 0, 0, 1000);
    assert_ptr_equal(ev2, us_ring_data(log, 0) + sizeof(struct us_event) + 16u);
    fill_record(ev2, 2, 0);
    us_ring_publish(log, 0, ev2, 0);
    ASSERT_RECORD(log, 0, us_ring_next(log, 0, 1), 1, 10);
    us_ring_consume(log, 0, 1, us_ring_peek(log, 0, 1));
    ASSERT_RECORD(log, 0, us_ring_next(log, 0, 1), 2, 0);
}

static void test_reserve_clean_header_publish_clears_pending(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    memset(us_ring_data(log, 0), 0xff, 4096);
    struct us_event *ev = us_ring_reserve(log, 0, 0, 64);
    static const struct us_event zero;
    assert_memory_equal(ev, &zero, sizeof(zero));
    ev->type = US_EV_SYSCALL;
    ev->flags = US_EVF_PENDING | US_EVF_RECV_SLOT | US_EVF_SIGNALS_NEXT;
    us_ring_publish(log, 0, ev, 64);
    struct us_event *got = us_ring_next(log, 0, 1);
    assert_ptr_equal(got, ev);
    assert_int_equal(got->flags, US_EVF_RECV_SLOT | US_EVF_SIGNALS_NEXT);
    assert_int_equal(got->size, sizeof(struct us_event) + 64u);
}

/* ------------------------------------------------------------------ */
/* wrap-around                                                          */

static void test_wrap_many_records_small_ring(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    const uint32_t maxp = us_ring_max_payload(log);
    const struct lenspec ls = {.rand_max = 3000, .big_every = 101, .big_len = maxp};
    enum { N = 20000 };
    uint64_t pub = 0, seq = 1, pads = 0;
    while (seq <= N) {
        for (int b = 0; b < 3 && pub < N; b++)
            publish_one(log, 0, rec_len(&ls, ++pub));
        for (;;) {
            uint64_t pos = c->consumer[1].tail;
            struct us_event *ev = us_ring_peek(log, 0, 1);
            if (!ev)
                break;
            uint64_t at = pos & (RING - 1);
            if (ring_off(log, 0, ev) != at) {
                /* peek skipped a pad: it filled the tail from `at` exactly */
                struct us_event *pad = us_ring_at(log, 0, pos);
                assert_int_equal(pad->type, US_EV_PAD);
                assert_int_equal(pad->size, RING - at);
                assert_int_equal(ring_off(log, 0, ev), 0);
                assert_int_equal(c->consumer[1].tail, pos + (RING - at));
                pads++;
            }
            ASSERT_RECORD(log, 0, ev, seq, rec_len(&ls, seq));
            us_ring_consume(log, 0, 1, ev);
            seq++;
        }
        assert_int_equal(c->consumer[1].tail, c->head);
    }
    assert_int_equal(c->head_seq, N);
    assert_int_equal(c->consumer[1].seq, N);
    assert_true(c->head > 10u * RING); /* many wraps */
    assert_true(pads >= 10);
}

/* Eight records of 8000 + EVSZ bytes leave about 1 KiB at the end; a 2048-byte record
 * then goes to offset 0 behind a pad that peek and next skip. */
static void test_pad_written_and_skipped(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    enable_backup2(fx);
    for (uint64_t s = 1; s <= 8; s++) {
        publish_one(log, 0, 8000);
        for (unsigned slot = 1; slot <= 2; slot++) {
            struct us_event *ev = us_ring_next(log, 0, slot);
            ASSERT_RECORD(log, 0, ev, s, 8000);
            us_ring_consume(log, 0, slot, ev);
        }
    }
    assert_int_equal(c->head, 8u * (8000u + EVSZ));
    struct us_event *ev = publish_one(log, 0, 2000);
    assert_ptr_equal(ev, us_ring_data(log, 0));
    assert_int_equal(c->head, RING + 2000u + EVSZ);
    struct us_event *pad = us_ring_at(log, 0, 8u * (8000u + EVSZ));
    assert_int_equal(pad->type, US_EV_PAD);
    assert_int_equal(pad->size, RING - 8u * (8000u + EVSZ));
    assert_int_equal(c->head_seq, 9); /* pads are not events */

    struct us_event *p = us_ring_peek(log, 0, 1);
    assert_ptr_equal(p, ev);
    assert_int_equal(c->consumer[1].tail, RING);  /* peek moved past the pad */
    assert_int_equal(c->consumer[1].seq, 8);      /* ...without counting it */
    assert_ptr_equal(us_ring_peek(log, 0, 1), ev);
    assert_ptr_equal(us_ring_next(log, 0, 1), ev);
    ASSERT_RECORD(log, 0, ev, 9, 2000);
    /* the other backup still stands before the pad: next skips it too */
    assert_int_equal(c->consumer[2].tail, 8u * (8000u + EVSZ));
    assert_ptr_equal(us_ring_next(log, 0, 2), ev);
    us_ring_consume(log, 0, 1, ev);
    us_ring_consume(log, 0, 2, ev);
    assert_int_equal(c->consumer[1].tail, c->head);
    assert_int_equal(c->consumer[2].tail, c->head);
    assert_int_equal(c->consumer[1].seq, 9);
    assert_null(us_ring_peek(log, 0, 1));
}

/* Looking ahead (divergence reports): past pads, without consuming, and
 * nothing beyond what is published. */
static void test_peek_ahead_over_pad(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    for (int i = 0; i < 8; i++)
        publish_one(log, 0, 8000);
    for (int i = 0; i < 7; i++)
        us_ring_consume(log, 0, 1, us_ring_next(log, 0, 1));
    struct us_event *wrapped = publish_one(log, 0, 2000); /* after a pad */
    const struct us_event *e0 = us_ring_peek_ahead(log, 0, 1, 0);
    assert_non_null(e0);
    assert_int_equal(e0->seq, 8);
    assert_ptr_equal(us_ring_peek_ahead(log, 0, 1, 1), wrapped);
    assert_null(us_ring_peek_ahead(log, 0, 1, 2));
    assert_int_equal(log->hdr->ring[0].consumer[1].seq, 7); /* nothing consumed */
    assert_ptr_equal(us_ring_next(log, 0, 1), e0);
}

/* An 8-byte pad at the very end of a ring: no byte past the ring written. */
static void test_tiny_pad_at_ring_end(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    const unsigned rings[] = {0, US_MAX_THREADS - 1}; /* the last ends the mapping */
    const uint32_t maxp = us_ring_max_payload(log);
    for (unsigned k = 0; k < 2; k++) {
        unsigned r = rings[k];
        struct us_ring_ctl *c = &log->hdr->ring[r];
        uint8_t *next = r + 1 < US_MAX_THREADS ? us_ring_data(log, r + 1) : NULL;
        if (next)
            memset(next, 0x5a, 256);
        const uint32_t lens[4] = {maxp, maxp, maxp, maxp - 8u};
        for (unsigned i = 0; i < 4; i++) {
            publish_one(log, r, lens[i]);
            struct us_event *ev = us_ring_next(log, r, 1);
            ASSERT_RECORD(log, r, ev, i + 1u, lens[i]);
            us_ring_consume(log, r, 1, ev);
        }
        assert_int_equal(c->head, RING - 8u);
        struct us_event *ev = publish_one(log, r, 100);
        assert_ptr_equal(ev, us_ring_data(log, r));
        struct us_event *pad = us_ring_at(log, r, RING - 8u);
        assert_int_equal(pad->type, US_EV_PAD);
        assert_int_equal(pad->size, 8);
        for (unsigned i = 0; next && i < 256; i++)
            assert_int_equal(next[i], 0x5a);
        assert_ptr_equal(us_ring_next(log, r, 1), ev);
        ASSERT_RECORD(log, r, ev, 5, 100);
        us_ring_consume(log, r, 1, ev);
        assert_int_equal(c->consumer[1].tail, c->head);
    }
}

/* Largest records, alternating with small ones so that pads of many sizes
 * come up, keep working across wraps. */
static void test_max_payload_across_wraps(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    const uint32_t maxp = us_ring_max_payload(log);
    for (uint64_t s = 1; s <= 200; s++) {
        uint32_t len = (s % 2) ? maxp : (uint32_t)(s * 40u);
        publish_one(log, 0, len);
        struct us_event *ev = us_ring_next(log, 0, 1);
        ASSERT_RECORD(log, 0, ev, s, len);
        us_ring_consume(log, 0, 1, ev);
    }
    assert_true(log->hdr->ring[0].head > 20u * RING);
}

/* ------------------------------------------------------------------ */
/* back-pressure                                                        */

/* The producer (slot 0, in a thread) fills the ring to the byte with 4096-byte
 * records: the 17th waits until the backup consumes one. */
static void test_backpressure_ring_full(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    int ok;
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 20, .ls = {.fixed = 4096 - EVSZ}};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.published) == 16 && LOAD(&p.attempted) == 17, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 16 && LOAD(&c->head) == RING, 200);
    assert_true(ok);
    /* nothing unconsumed was overwritten */
    for (uint64_t s = 1; s <= 16; s++)
        ASSERT_RECORD(log, 0, us_ring_at(log, 0, (s - 1) * 4096u), s, 4096 - EVSZ);

    struct us_event *ev = us_ring_next(log, 0, 1);
    ASSERT_RECORD(log, 0, ev, 1, 4096 - EVSZ);
    us_ring_consume(log, 0, 1, ev);
    POLL_UNTIL(ok, LOAD(&p.published) == 17 && LOAD(&p.attempted) == 18, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 17, 100);
    assert_true(ok);
    for (uint64_t s = 2; s <= 17; s++)
        ASSERT_RECORD(log, 0, us_ring_at(log, 0, (s - 1) * 4096u), s, 4096 - EVSZ);

    unsigned slot = 1;
    uint64_t next = 2;
    drain_slots(fx, 0, &slot, 1, &next, 20, &p.ls, 5000);
    join_thread(fx, t);
    assert_int_equal(p.published, 20);
}

/* A record that needs a pad waits for room for the pad and the record: 63
 * records of 1024 bytes leave 1024 at the end, the backup consumed only the
 * first; a 2048-byte record would fit at offset 0 if the pad were free, but
 * it would overwrite record 2, so the producer must wait for it. */
static void test_backpressure_pad_needs_room(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    const struct lenspec ls = {.fixed = 1024 - EVSZ, .big_every = 64, .big_len = 2048 - EVSZ};
    int ok;
    for (uint64_t s = 1; s <= 63; s++)
        publish_one(log, 0, rec_len(&ls, s));
    assert_int_equal(c->head, 63u * 1024u);
    struct us_event *ev = us_ring_next(log, 0, 1);
    ASSERT_RECORD(log, 0, ev, 1, 1024 - EVSZ);
    us_ring_consume(log, 0, 1, ev);

    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 1, .ls = ls};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.attempted) == 1, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 0 && LOAD(&c->head) == 63u * 1024u, 200);
    assert_true(ok);
    ASSERT_RECORD(log, 0, us_ring_at(log, 0, 1024), 2, 1024 - EVSZ);

    ev = us_ring_next(log, 0, 1);
    ASSERT_RECORD(log, 0, ev, 2, 1024 - EVSZ);
    us_ring_consume(log, 0, 1, ev);
    POLL_UNTIL(ok, LOAD(&p.done), 5000);
    assert_true(ok);
    join_thread(fx, t);
    assert_int_equal(c->head, RING + 2048u);
    assert_int_equal(us_ring_at(log, 0, 63u * 1024u)->type, US_EV_PAD);
    assert_int_equal(us_ring_at(log, 0, 63u * 1024u)->size, 1024);
    unsigned slot = 1;
    uint64_t next = 3;
    drain_slots(fx, 0, &slot, 1, &next, 64, &ls, 5000);
    assert_int_equal(c->consumer[1].tail, c->head);
}

/* With max_lag_events = 5 the producer stops after 5 unconsumed records even
 * though the ring has plenty of room. Parametrised by the backup's state:
 * every state in which a backup still reads the log holds the producer. */
static void test_backpressure_max_lag(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    int ok;
    log->hdr->max_lag_events = 5;
    log->hdr->replica[1].state = (uint32_t)fx->param;
    log->hdr->replica[2].role = US_ROLE_NONE;
    log->hdr->replica[2].state = US_REPLICA_UNUSED;
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 12, .ls = {.fixed = 8}};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.published) == 5 && LOAD(&p.attempted) == 6, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 5, 200);
    assert_true(ok);
    assert_int_equal(LOAD(&c->head), 5u * (8u + EVSZ));

    struct us_event *ev = us_ring_next(log, 0, 1);
    ASSERT_RECORD(log, 0, ev, 1, 8);
    us_ring_consume(log, 0, 1, ev);
    POLL_UNTIL(ok, LOAD(&p.published) == 6 && LOAD(&p.attempted) == 7, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 6, 100);
    assert_true(ok);

    unsigned slot = 1;
    uint64_t next = 2;
    drain_slots(fx, 0, &slot, 1, &next, 12, &p.ls, 5000);
    join_thread(fx, t);
    assert_int_equal(p.published, 12);
}

/* A producer that publishes 16 records every millisecond. */
static void *trickle_main(void *arg)
{
    struct producer *p = arg;
    struct us_log *log = &p->fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[p->ring];
    for (uint64_t i = 0; i < p->count && !LOAD(&p->fx->stop); i++) {
        STORE(&p->attempted, i + 1);
        uint64_t seq = c->head_seq + 1;
        uint32_t len = rec_len(&p->ls, seq);
        struct us_event *ev = us_ring_reserve(log, p->ring, p->self, len);
        fill_record(ev, seq, len);
        us_ring_publish(log, p->ring, ev, len);
        STORE(&p->published, i + 1);
        if ((i & 15) == 15) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    STORE(&p->done, 1);
    return NULL;
}

/* max_lag_ns bounds in time what a backup may leave unreplayed: with 30 ms,
 * a producer of 16 records a millisecond, which no one consumes, stops after
 * about 30 ms of them, long before the ring is full or its 4000 records are
 * out (the event bound is far away), stays stopped, and goes on once the
 * backup has caught up. */
static void test_backpressure_time(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    log->hdr->max_lag_events = BIG_LAG;
    log->hdr->max_lag_ns = 30000000;
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 4000, .ls = {.fixed = 8}};
    int t = start_thread(fx, trickle_main, &p);
    uint64_t last = 0;
    for (int tries = 0; tries < 50; tries++) { /* until it has stood still for 100 ms */
        last = LOAD(&p.published);
        STAYS(ok, LOAD(&p.published) == last, 100);
        if (ok && LOAD(&p.attempted) > last)
            break;
        ok = 0;
    }
    assert_true(ok);
    assert_false(LOAD(&p.done));
    /* about 30 ms of records (480), give or take the stamps' spacing: well
     * before the ring is full (1024 records of 64 bytes) */
    assert_true(last >= 64 && last < 800);
    unsigned slot = 1;
    uint64_t next = 1;
    drain_slots(fx, 0, &slot, 1, &next, 4000, &p.ls, 20000);
    join_thread(fx, t);
    assert_int_equal(p.published, 4000);
}

/* The producer waits for the slowest live consumer, not the fastest. */
static void test_backpressure_slowest_consumer(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    enable_backup2(fx);
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 24, .ls = {.fixed = 4096 - EVSZ}};
    int t = start_thread(fx, producer_main, &p);
    unsigned s1 = 1;
    uint64_t next1 = 1;
    drain_slots(fx, 0, &s1, 1, &next1, 16, &p.ls, 5000); /* slot 1 keeps up */
    POLL_UNTIL(ok, LOAD(&p.published) == 16 && LOAD(&p.attempted) == 17, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 16, 200); /* slot 2 has read nothing */
    assert_true(ok);
    assert_null(us_ring_peek(log, 0, 1));

    struct us_event *ev = us_ring_next(log, 0, 2);
    ASSERT_RECORD(log, 0, ev, 1, 4096 - EVSZ);
    us_ring_consume(log, 0, 2, ev);
    POLL_UNTIL(ok, LOAD(&p.published) == 17, 5000);
    assert_true(ok);

    const unsigned slots[2] = {1, 2};
    uint64_t next[2] = {next1, 2};
    drain_slots(fx, 0, slots, 2, next, 24, &p.ls, 5000);
    join_thread(fx, t);
    assert_int_equal(p.published, 24);
}

/* A backup that is DEAD or RETIRED (fx->param) does not hold the producer back:
 * 200 records of 4096 bytes (12 wraps of the ring) with max_lag 5 go through
 * although nobody consumes. */
static void test_inactive_consumer_does_not_block(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    log->hdr->max_lag_events = 5;
    log->hdr->replica[1].state = (uint32_t)fx->param;
    log->hdr->replica[2].state = (uint32_t)fx->param;
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 200, .ls = {.fixed = 4096 - EVSZ}};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.done), 5000);
    assert_true(ok);
    join_thread(fx, t);
    assert_int_equal(p.published, 200);
    assert_int_equal(log->hdr->ring[0].head_seq, 200);
    assert_int_equal(log->hdr->ring[0].head, 200u * 4096u);
}

/* A blocked producer resumes when its only lagging backup dies or retires. */
static void test_consumer_death_releases_producer(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    log->hdr->max_lag_events = 5;
    log->hdr->replica[2].role = US_ROLE_NONE;
    log->hdr->replica[2].state = US_REPLICA_UNUSED;
    struct producer p = {.fx = fx, .ring = 0, .self = 0, .count = 50, .ls = {.fixed = 4096 - EVSZ}};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.published) == 5 && LOAD(&p.attempted) == 6, 5000);
    assert_true(ok);
    STAYS(ok, LOAD(&p.published) == 5, 100);
    assert_true(ok);
    STORE(&log->hdr->replica[1].state, (uint32_t)fx->param);
    POLL_UNTIL(ok, LOAD(&p.done), 5000);
    assert_true(ok);
    join_thread(fx, t);
    assert_int_equal(p.published, 50);
}

/* The producer's own slot is never waited for, even if marked a backup. */
static void test_producer_ignores_own_slot(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    log->hdr->max_lag_events = 5;
    log->hdr->replica[2].role = US_ROLE_NONE;
    log->hdr->replica[2].state = US_REPLICA_UNUSED;
    struct producer p = {.fx = fx, .ring = 0, .self = 1, .count = 100, .ls = {.fixed = 4096 - EVSZ}};
    int t = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, LOAD(&p.done), 5000);
    assert_true(ok);
    join_thread(fx, t);
    assert_int_equal(p.published, 100);
}

/* ------------------------------------------------------------------ */
/* two consumers                                                        */

static void test_two_consumers_independent(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    const struct lenspec ls = {.rand_max = 600};
    enum { N = 3000 };
    uint64_t pub = 0, n1 = 1, n2 = 1;
    enable_backup2(fx);
    while (n2 <= N) {
        for (int b = 0; b < 10 && pub < N; b++)
            publish_one(log, 0, rec_len(&ls, ++pub));
        /* slot 1 reads everything now; slot 2 only every third round */
        uint64_t tail2 = c->consumer[2].tail, seq2 = c->consumer[2].seq;
        while (n1 <= pub) {
            struct us_event *ev = us_ring_next(log, 0, 1);
            ASSERT_RECORD(log, 0, ev, n1, rec_len(&ls, n1));
            us_ring_consume(log, 0, 1, ev);
            n1++;
        }
        assert_int_equal(c->consumer[2].tail, tail2); /* untouched by slot 1 */
        assert_int_equal(c->consumer[2].seq, seq2);
        if ((pub / 10) % 3 == 0 || pub == N) {
            while (n2 <= pub) {
                struct us_event *ev = us_ring_next(log, 0, 2);
                ASSERT_RECORD(log, 0, ev, n2, rec_len(&ls, n2));
                us_ring_consume(log, 0, 2, ev);
                n2++;
            }
        }
    }
    assert_int_equal(c->consumer[1].seq, N);
    assert_int_equal(c->consumer[2].seq, N);
    assert_int_equal(c->consumer[1].tail, c->head);
    assert_int_equal(c->consumer[2].tail, c->head);
    assert_true(c->head > 10u * RING);
}

static void test_two_consumer_threads(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    enum { N = 30000 };
    const struct lenspec ls = {.rand_max = 700, .big_every = 499, .big_len = 9000};
    struct consumer k1 = {.fx = fx, .ring = 3, .slot = 1, .first = 1, .count = N, .ls = ls};
    struct consumer k2 = {.fx = fx, .ring = 3, .slot = 2, .first = 1, .count = N, .ls = ls};
    struct producer p = {.fx = fx, .ring = 3, .self = 0, .count = N, .ls = ls};
    log->hdr->max_lag_events = 64;
    enable_backup2(fx);
    int t1 = start_thread(fx, consumer_main, &k1);
    int t2 = start_thread(fx, consumer_main, &k2);
    int tp = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, (LOAD(&k1.done) && LOAD(&k2.done) && LOAD(&p.done)) || LOAD(&k1.failed) ||
                       LOAD(&k2.failed), 30000);
    if (LOAD(&k1.failed))
        fail_msg("slot 1: %s", k1.err);
    if (LOAD(&k2.failed))
        fail_msg("slot 2: %s", k2.err);
    assert_true(ok);
    join_thread(fx, tp);
    join_thread(fx, t1);
    join_thread(fx, t2);
    assert_int_equal(k1.verified, N);
    assert_int_equal(k2.verified, N);
    assert_false(k1.got_null || k2.got_null);
}

/* ------------------------------------------------------------------ */
/* promotion                                                            */

static void test_next_drains_then_null_on_promote(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[0];
    enable_backup2(fx);
    for (int i = 0; i < 3; i++)
        publish_one(log, 0, 100u * (uint32_t)i);
    STORE(&log->hdr->replica[1].promote, 1u);
    for (uint64_t s = 1; s <= 3; s++) {
        struct us_event *ev = us_ring_next(log, 0, 1);
        ASSERT_RECORD(log, 0, ev, s, 100u * (uint32_t)(s - 1));
        us_ring_consume(log, 0, 1, ev);
    }
    assert_null(us_ring_next(log, 0, 1));
    assert_null(us_ring_next(log, 0, 1));
    assert_int_equal(c->consumer[1].tail, c->head);
    assert_int_equal(c->consumer[1].seq, 3);
    /* another backup's flag is its own: slot 2 still gets all three */
    for (uint64_t s = 1; s <= 3; s++) {
        struct us_event *ev = us_ring_next(log, 0, 2);
        ASSERT_RECORD(log, 0, ev, s, 100u * (uint32_t)(s - 1));
        us_ring_consume(log, 0, 2, ev);
    }
}

/* A pending record behind a pad is still returned before NULL. */
static void test_next_promote_skips_pad_to_pending(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    for (uint64_t s = 1; s <= 8; s++) {
        publish_one(log, 0, 8000);
        us_ring_consume(log, 0, 1, us_ring_next(log, 0, 1));
    }
    publish_one(log, 0, 2000); /* behind a pad, at offset 0 */
    STORE(&log->hdr->replica[1].promote, 1u);
    struct us_event *ev = us_ring_next(log, 0, 1);
    ASSERT_RECORD(log, 0, ev, 9, 2000);
    us_ring_consume(log, 0, 1, ev);
    assert_null(us_ring_next(log, 0, 1));
}

/* A consumer blocked in us_ring_next on an empty ring returns NULL once its
 * replica's promote flag is set and the log woken. */
static void test_blocked_next_released_by_promote(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int ok;
    struct consumer k = {.fx = fx, .ring = 0, .slot = 1, .first = 1, .count = 10,
                         .ls = {.fixed = 24}};
    int t = start_thread(fx, consumer_main, &k);
    publish_one(log, 0, 24);
    publish_one(log, 0, 24);
    POLL_UNTIL(ok, LOAD(&k.verified) == 2 || LOAD(&k.failed), 5000);
    assert_false(k.failed);
    assert_true(ok);
    STAYS(ok, !LOAD(&k.done), 150); /* waits for more */
    assert_true(ok);
    publish_one(log, 0, 24); /* and picks up a later publish (it naps, unwoken) */
    POLL_UNTIL(ok, LOAD(&k.verified) == 3 || LOAD(&k.failed), 5000);
    assert_false(k.failed);
    assert_true(ok);
    STORE(&log->hdr->replica[1].promote, 1u);
    us_log_wake_all(log);
    POLL_UNTIL(ok, LOAD(&k.done), 5000);
    assert_true(ok);
    join_thread(fx, t);
    assert_true(k.got_null);
    assert_false(k.failed);
    assert_int_equal(k.verified, 3);
}

/* us_log_wake_all changes every ring's head_futex word, so that a backup
 * napping on any ring with the old value returns at once. */
static void test_wake_all_bumps_every_ring(void **state)
{
    struct fx *fx = *state;
    struct us_log_header *h = fx->log.hdr;
    uint32_t before[US_MAX_THREADS];
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        h->ring[r].head_futex = r * 7u;
        before[r] = h->ring[r].head_futex;
    }
    us_log_wake_all(&fx->log);
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        assert_int_not_equal(h->ring[r].head_futex, before[r]);
        assert_int_equal(h->ring[r].head, 0); /* nothing published by it */
    }
}

/* ------------------------------------------------------------------ */
/* cross-thread stress                                                  */

static void run_cross_thread(struct fx *fx, uint64_t n, uint64_t max_lag, unsigned ring)
{
    struct us_log *log = &fx->log;
    struct us_ring_ctl *c = &log->hdr->ring[ring];
    int ok;
    const struct lenspec ls = {.rand_max = 600, .big_every = 997, .big_len = 9000};
    log->hdr->max_lag_events = max_lag;
    log->hdr->replica[2].role = US_ROLE_NONE;
    log->hdr->replica[2].state = US_REPLICA_UNUSED;
    struct consumer k = {.fx = fx, .ring = ring, .slot = 1, .first = 1, .count = n, .ls = ls};
    struct producer p = {.fx = fx, .ring = ring, .self = 0, .count = n, .ls = ls};
    int tk = start_thread(fx, consumer_main, &k);
    int tp = start_thread(fx, producer_main, &p);
    POLL_UNTIL(ok, (LOAD(&k.done) && LOAD(&p.done)) || LOAD(&k.failed), 40000);
    if (LOAD(&k.failed))
        fail_msg("consumer: %s", k.err);
    assert_true(ok);
    join_thread(fx, tp);
    join_thread(fx, tk);
    assert_int_equal(k.verified, n);
    assert_int_equal(c->head_seq, n);
    assert_int_equal(c->consumer[1].seq, n);
    assert_int_equal(c->consumer[1].tail, c->head);
    assert_true(c->head > 10u * RING);
}

static void test_cross_thread_100k(void **state)
{
    run_cross_thread(*state, 100000, BIG_LAG, 0);
}

static void test_cross_thread_100k_small_lag(void **state)
{
    run_cross_thread(*state, 100000, 8, 7);
}

/* ------------------------------------------------------------------ */
/* event encoding                                                       */

static void test_event_layout(void **state)
{
    (void)state;
    assert_int_equal(sizeof(struct us_event), 56);
    assert_int_equal(offsetof(struct us_event, size), 0);
    assert_int_equal(offsetof(struct us_event, type), 4);
    assert_int_equal(offsetof(struct us_event, flags), 6);
    assert_int_equal(offsetof(struct us_event, nr), 8);
    assert_int_equal(offsetof(struct us_event, fd), 12);
    assert_int_equal(offsetof(struct us_event, check), 16);
    assert_int_equal(offsetof(struct us_event, ret), 24);
    assert_int_equal(offsetof(struct us_event, aux), 32);
    assert_int_equal(offsetof(struct us_event, seq), 40);
    assert_int_equal(offsetof(struct us_event, digest), 48);
    assert_int_equal(sizeof(struct us_event) % 8, 0);
    assert_int_equal(sizeof(struct us_blob), 8);
    assert_int_equal(offsetof(struct us_blob, len), 0);
    assert_int_equal(offsetof(struct us_blob, reserved), 4);
    assert_int_equal(US_EV_PAD, 0);
    assert_int_equal(us_align8(0), 0);
    assert_int_equal(us_align8(1), 8);
    assert_int_equal(us_align8(8), 8);
    assert_int_equal(us_align8(9), 16);
    assert_int_equal(us_align8(UINT32_MAX - 7u), UINT32_MAX - 7u);
}

static void test_recv_slot_matches_mmsghdr(void **state)
{
    (void)state;
    const size_t hdr = offsetof(struct mmsghdr, msg_hdr);
    assert_int_equal(sizeof(struct us_recv_slot), 208);
    assert_int_equal(offsetof(struct us_recv_slot, msg_name), hdr + offsetof(struct msghdr, msg_name));
    assert_int_equal(offsetof(struct us_recv_slot, msg_namelen),
                     hdr + offsetof(struct msghdr, msg_namelen));
    assert_int_equal(offsetof(struct us_recv_slot, msg_iov), hdr + offsetof(struct msghdr, msg_iov));
    assert_int_equal(offsetof(struct us_recv_slot, msg_iovlen),
                     hdr + offsetof(struct msghdr, msg_iovlen));
    assert_int_equal(offsetof(struct us_recv_slot, msg_control),
                     hdr + offsetof(struct msghdr, msg_control));
    assert_int_equal(offsetof(struct us_recv_slot, msg_controllen),
                     hdr + offsetof(struct msghdr, msg_controllen));
    assert_int_equal(offsetof(struct us_recv_slot, msg_flags),
                     hdr + offsetof(struct msghdr, msg_flags));
    assert_int_equal(offsetof(struct us_recv_slot, msg_len), 56);
    assert_int_equal(offsetof(struct us_recv_slot, msg_len), offsetof(struct mmsghdr, msg_len));
    assert_int_equal(sizeof(((struct mmsghdr *)0)->msg_len), sizeof(uint32_t));
    assert_int_equal(offsetof(struct us_recv_slot, iov_base), 64);
    assert_int_equal(offsetof(struct us_recv_slot, iov_base), sizeof(struct mmsghdr));
    assert_int_equal(offsetof(struct us_recv_slot, iov_base) + offsetof(struct iovec, iov_base), 64);
    assert_int_equal(offsetof(struct us_recv_slot, iov_len),
                     offsetof(struct us_recv_slot, iov_base) + offsetof(struct iovec, iov_len));
    assert_int_equal(sizeof(struct iovec), 16);
    assert_int_equal(offsetof(struct us_recv_slot, name), 80);
    assert_true(sizeof(((struct us_recv_slot *)0)->name) >= sizeof(struct sockaddr_storage));
}

/* The kernel writes msg_len and the data straight into a ring record laid
 * out as the shim does it, and a consumer reads them back. */
static void test_recv_slot_kernel_fills_record(void **state)
{
    struct fx *fx = *state;
    struct us_log *log = &fx->log;
    int sv[2];
    static const char msg[] = "hello, backup";
    const uint32_t want = 256;
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), 0);
    assert_int_equal(send(sv[1], msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
    struct us_event *ev = us_ring_reserve(log, 0, 0, sizeof(struct us_recv_slot) +
                                                         sizeof(struct us_blob) + want);
    struct us_recv_slot *s = (struct us_recv_slot *)(ev + 1);
    struct us_blob *b = (struct us_blob *)(s + 1);
    assert_int_equal((uintptr_t)s % 8u, 0);
    memset(s, 0, sizeof(*s));
    ev->type = US_EV_SYSCALL;
    ev->flags = US_EVF_PENDING | US_EVF_RECV_SLOT;
    s->msg_iov = (uint64_t)(uintptr_t)&s->iov_base;
    s->msg_iovlen = 1;
    s->iov_base = (uint64_t)(uintptr_t)(b + 1);
    s->iov_len = want;
    s->msg_len = US_RECV_UNSET;
    b->len = 0;
    b->reserved = 0;
    int r = recvmmsg(sv[0], (struct mmsghdr *)(void *)s, 1, 0, NULL);
    close(sv[0]);
    close(sv[1]);
    assert_int_equal(r, 1);
    assert_int_equal(s->msg_len, sizeof(msg));
    assert_memory_equal(b + 1, msg, sizeof(msg));
    b->len = s->msg_len;
    ev->ret = s->msg_len;
    us_ring_publish(log, 0, ev, (uint32_t)(sizeof(*s) + sizeof(*b) + s->msg_len));

    struct us_event *got = us_ring_next(log, 0, 1);
    assert_ptr_equal(got, ev);
    assert_int_equal(got->flags, US_EVF_RECV_SLOT);
    assert_int_equal(got->size, sizeof(struct us_event) +
                                    us_align8((uint32_t)(sizeof(*s) + sizeof(*b) + sizeof(msg))));
    const struct us_recv_slot *gs = (const struct us_recv_slot *)(got + 1);
    const struct us_blob *gb = (const struct us_blob *)(gs + 1);
    assert_int_equal(gb->len, sizeof(msg));
    assert_memory_equal(gb + 1, msg, sizeof(msg));
}

static void test_control_block_layout(void **state)
{
    (void)state;
    /* producer and each consumer write their own cache lines */
    assert_int_equal(sizeof(struct us_ring_consumer), US_CACHELINE);
    assert_int_equal(offsetof(struct us_ring_ctl, head), 0);
    assert_int_equal(offsetof(struct us_ring_ctl, pending) % US_CACHELINE, 0);
    assert_true(offsetof(struct us_ring_ctl, pending) >= US_CACHELINE);
    assert_int_equal(offsetof(struct us_ring_ctl, consumer) % US_CACHELINE, 0);
    assert_true(offsetof(struct us_ring_ctl, consumer) > offsetof(struct us_ring_ctl, pending));
    assert_int_equal(sizeof(struct us_ring_ctl) % US_CACHELINE, 0);
    assert_int_equal(offsetof(struct us_log_header, replica) % US_CACHELINE, 0);
    assert_int_equal(offsetof(struct us_log_header, ring) % US_CACHELINE, 0);
    assert_true(sizeof(struct us_log_header) <= US_LOG_HEADER_SIZE);
}

/* ------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
#define TP(f, p) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, (void *)(uintptr_t)(p))

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* the watchdog's _exit keeps what ran */
    const struct CMUnitTest tests[] = {
        T(test_format_then_check_accepts),
        T(test_format_resets_a_used_header),
        T(test_check_rejects_bad_magic),
        T(test_check_rejects_bad_version),
        T(test_check_rejects_ring_size_not_power_of_two),
        T(test_check_rejects_bad_nreplicas),
        T(test_check_rejects_short_mapping),
        T(test_check_rejects_inconsistent_sizes),
        T(test_check_rejects_ring_size_overflow),
        T(test_spsc_order_and_contents),
        T(test_first_seq_is_one_and_sizes_aligned),
        T(test_publish_shorter_than_reserved),
        T(test_reserve_clean_header_publish_clears_pending),
        T(test_wrap_many_records_small_ring),
        T(test_pad_written_and_skipped),
        T(test_peek_ahead_over_pad),
        T(test_tiny_pad_at_ring_end),
        T(test_max_payload_across_wraps),
        T(test_backpressure_ring_full),
        T(test_backpressure_pad_needs_room),
        T(test_backpressure_time),
        TP(test_backpressure_max_lag, US_REPLICA_RUNNING),
        TP(test_backpressure_max_lag, US_REPLICA_STARTING),
        TP(test_backpressure_max_lag, US_REPLICA_PROMOTING),
        T(test_backpressure_slowest_consumer),
        TP(test_inactive_consumer_does_not_block, US_REPLICA_DEAD),
        TP(test_inactive_consumer_does_not_block, US_REPLICA_RETIRED),
        TP(test_consumer_death_releases_producer, US_REPLICA_DEAD),
        TP(test_consumer_death_releases_producer, US_REPLICA_RETIRED),
        T(test_producer_ignores_own_slot),
        T(test_two_consumers_independent),
        T(test_two_consumer_threads),
        T(test_next_drains_then_null_on_promote),
        T(test_next_promote_skips_pad_to_pending),
        T(test_blocked_next_released_by_promote),
        T(test_wake_all_bumps_every_ring),
        T(test_cross_thread_100k),
        T(test_cross_thread_100k_small_lag),
        T(test_event_layout),
        T(test_recv_slot_matches_mmsghdr),
        T(test_recv_slot_kernel_fills_record),
        T(test_control_block_layout),
    };
    return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
