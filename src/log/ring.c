/*
 * ring.c - producer and consumer sides of the log's per-thread rings.
 *
 * Shared by the shim (inside replicas: raw syscalls only, no libc state) and
 * the supervisor. Ordering: a record's bytes are written before the head
 * moves past it (store-release); a consumer reads the head with
 * load-acquire before reading the record.
 */
#include "ring.h"

#include <linux/futex.h>
#include <string.h>
#include <time.h>

#include "sys.h"

#define SPIN_ROUNDS 20000u /* producer under back-pressure: ~10-50 us */
#define CONSUMER_SPIN_ROUNDS 100u /* a backup spins a few us for the next event */
#define CONSUMER_NAP_MIN_NS 200000L  /* then naps, 200 us at first... */
#define CONSUMER_NAP_MAX_NS 2000000L /* ...up to 2 ms while the log stays idle */

#define US_UNLIKELY(x) __builtin_expect(!!(x), 0)

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static void futex_wait(uint32_t *word, uint32_t val, long timeout_ns)
{
    struct timespec ts = {0, timeout_ns};
    US_SYSCALL4(SYS_futex, word, FUTEX_WAIT, val, timeout_ns ? &ts : NULL);
}

static void futex_wake(uint32_t *word)
{
    US_SYSCALL3(SYS_futex, word, FUTEX_WAKE, 0x7fffffff);
}

uint64_t us_log_total_size(uint64_t ring_size)
{
    return US_LOG_HEADER_SIZE + ring_size * US_MAX_THREADS;
}

void us_log_format(struct us_log *log, uint64_t ring_size, uint32_t nreplicas,
                   uint64_t max_lag_events)
{
    struct us_log_header *h = log->hdr;
    memset(h, 0, sizeof(*h));
    h->magic = US_LOG_MAGIC;
    h->version = US_LOG_VERSION;
    h->header_size = US_LOG_HEADER_SIZE;
    h->total_size = us_log_total_size(ring_size);
    h->ring_size = ring_size;
    h->max_lag_events = max_lag_events;
    h->nreplicas = nreplicas;
    for (unsigned i = 0; i < 3; i++)
        h->stdio_pos[i] = -1;
    for (unsigned i = 0; i < US_MAX_THREADS; i++)
        h->ring[i].pending = US_NO_PENDING;
}

int us_log_check(const struct us_log *log)
{
    const struct us_log_header *h = log->hdr;
    if (log->size < US_LOG_HEADER_SIZE || h->magic != US_LOG_MAGIC ||
        h->version != US_LOG_VERSION || h->header_size != US_LOG_HEADER_SIZE ||
        h->ring_size < 65536 || h->ring_size > log->size ||
        (h->ring_size & (h->ring_size - 1)) ||
        h->total_size != us_log_total_size(h->ring_size) || h->total_size > log->size ||
        h->nreplicas == 0 || h->nreplicas > US_MAX_REPLICAS)
        return -71; /* -EPROTO */
    return 0;
}

/* A backup replica whose position the producer must respect. */
static int consumer_live(const struct us_log_header *h, unsigned s)
{
    uint32_t role = __atomic_load_n(&h->replica[s].role, __ATOMIC_ACQUIRE);
    uint32_t state = __atomic_load_n(&h->replica[s].state, __ATOMIC_ACQUIRE);
    /* a diverged backup waiting for the vote may yet take over: the primary
     * may not overwrite what it has to replay */
    return role == US_ROLE_BACKUP &&
           (state == US_REPLICA_STARTING || state == US_REPLICA_RUNNING ||
            state == US_REPLICA_PROMOTING || state == US_REPLICA_DIVERGED);
}

int us_ring_consumed(const struct us_log *log, unsigned ring, unsigned self)
{
    const struct us_log_header *h = log->hdr;
    const struct us_ring_ctl *c = &h->ring[ring];
    uint64_t head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
    for (unsigned s = 0; s < h->nreplicas; s++)
        if (s != self && consumer_live(h, s) &&
            __atomic_load_n(&c->consumer[s].tail, __ATOMIC_ACQUIRE) != head)
            return 0;
    return 1;
}

uint64_t us_monotonic_ns(void)
{
    struct timespec ts;
    US_SYSCALL2(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The stamp of the first event after `seq`: that event, not yet consumed,
 * was published no later than then. */
static uint64_t lag_since(const struct us_ring_ctl *c, uint64_t seq, uint64_t now)
{
    uint64_t first = UINT64_MAX, at = 0;
    for (unsigned i = 0; i < US_STAMPS; i++) {
        uint64_t s = __atomic_load_n(&c->stamp_seq[i], __ATOMIC_ACQUIRE);
        if (s > seq && s < first) {
            first = s;
            at = __atomic_load_n(&c->stamp_ns[i], __ATOMIC_RELAXED);
        }
    }
    return first == UINT64_MAX || at > now ? 0 : now - at;
}

uint64_t us_ring_lag_ns(const struct us_log *log, unsigned ring, unsigned slot, uint64_t now_ns)
{
    const struct us_ring_ctl *c = &log->hdr->ring[ring];
    return lag_since(c, __atomic_load_n(&c->consumer[slot].seq, __ATOMIC_ACQUIRE), now_ns);
}

/*
 * The time bound of back-pressure. Every 64 events the producer reads the
 * clock; it stamps its position often enough that its stamps span more than
 * max_lag_ns, and waits while the slowest live consumer has not consumed an
 * event published more than max_lag_ns ago: what a backup must replay before
 * it can take over, and so the failover time, stays bounded.
 */
static void time_bound(struct us_log *log, unsigned ring, unsigned self)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    uint64_t now = us_monotonic_ns();
    unsigned last = (c->stamp_next + US_STAMPS - 1) % US_STAMPS;
    if (now - c->stamp_ns[last] >= h->max_lag_ns / (US_STAMPS - 2)) {
        unsigned i = c->stamp_next % US_STAMPS;
        __atomic_store_n(&c->stamp_seq[i], UINT64_MAX, __ATOMIC_RELEASE);
        __atomic_store_n(&c->stamp_ns[i], now, __ATOMIC_RELEASE);
        __atomic_store_n(&c->stamp_seq[i], c->head_seq, __ATOMIC_RELEASE);
        c->stamp_next = (i + 1) % US_STAMPS;
    }
    for (unsigned waits = 0;; waits++) {
        uint64_t worst = 0;
        for (unsigned s = 0; s < h->nreplicas; s++) {
            if (s == self || !consumer_live(h, s))
                continue;
            uint64_t lag = lag_since(c, __atomic_load_n(&c->consumer[s].seq, __ATOMIC_ACQUIRE), now);
            if (lag > worst)
                worst = lag;
        }
        if (worst <= h->max_lag_ns)
            return;
        /* The slowest backup is more than max_lag_ns behind: let it catch up. */
        uint32_t v = __atomic_load_n(&c->tail_futex, __ATOMIC_SEQ_CST);
        __atomic_store_n(&c->producer_waiting, 1, __ATOMIC_SEQ_CST);
        futex_wait(&c->tail_futex, v, 200000);
        __atomic_store_n(&c->producer_waiting, 0, __ATOMIC_RELAXED);
        now = us_monotonic_ns();
    }
}

/* Refreshes the producer's copy of the slowest live consumer's position and
 * says whether `need` bytes fit and no consumer lags too far. */
static int room_now(struct us_log *log, unsigned ring, unsigned self, uint64_t need)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    uint64_t min_tail = c->head, min_seq = c->head_seq;
    for (unsigned s = 0; s < h->nreplicas; s++) {
        if (s == self || !consumer_live(h, s))
            continue;
        uint64_t tail = __atomic_load_n(&c->consumer[s].tail, __ATOMIC_SEQ_CST);
        uint64_t cseq = __atomic_load_n(&c->consumer[s].seq, __ATOMIC_ACQUIRE);
        if (tail < min_tail)
            min_tail = tail;
        if (cseq < min_seq)
            min_seq = cseq;
    }
    c->room_tail = min_tail;
    c->room_seq = min_seq;
    return c->head + need - min_tail <= h->ring_size && c->head_seq - min_seq < h->max_lag_events;
}

/*
 * Waits until `need` bytes fit at the head and no live consumer lags too far.
 * The fast path reads only the producer's own copy of the slowest consumer's
 * position; the consumers' cache lines are read when that copy says the ring
 * may be full, so producer and consumers do not bounce lines on every event.
 */
static void wait_for_room(struct us_log *log, unsigned ring, unsigned self, uint64_t need)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    if (c->head + need - c->room_tail <= h->ring_size &&
        c->head_seq - c->room_seq < h->max_lag_events)
        return;
    for (unsigned spins = 0; !room_now(log, ring, self, need); spins++) {
        if (spins < SPIN_ROUNDS) {
            cpu_relax();
            continue;
        }
        /* Announce the wait, then look once more before sleeping: a consumer
         * stores its tail, then reads producer_waiting (both seq_cst), so
         * either it sees us waiting and bumps tail_futex, or we see its tail. */
        uint32_t v = __atomic_load_n(&c->tail_futex, __ATOMIC_SEQ_CST);
        __atomic_store_n(&c->producer_waiting, 1, __ATOMIC_SEQ_CST);
        if (!room_now(log, ring, self, need))
            futex_wait(&c->tail_futex, v, 1000000); /* re-check replica states every ms */
        __atomic_store_n(&c->producer_waiting, 0, __ATOMIC_RELAXED);
    }
}

struct us_event *us_ring_reserve(struct us_log *log, unsigned ring, unsigned self,
                                 uint32_t payload_max)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    uint64_t need = sizeof(struct us_event) + us_align8(payload_max);
    if (US_UNLIKELY((c->head_seq & 63) == 0) && h->max_lag_ns)
        time_bound(log, ring, self);
    uint64_t room_to_end = h->ring_size - (c->head & (h->ring_size - 1));
    if (room_to_end < need) {
        /* The record may not straddle the end: pad the tail, start over at 0. */
        wait_for_room(log, ring, self, room_to_end + need);
        struct us_event *pad = us_ring_at(log, ring, c->head);
        pad->size = (uint32_t)room_to_end;
        pad->type = US_EV_PAD;
        __atomic_store_n(&c->head, c->head + room_to_end, __ATOMIC_RELEASE);
    } else {
        wait_for_room(log, ring, self, need);
    }
    struct us_event *ev = us_ring_at(log, ring, c->head);
    memset(ev, 0, sizeof(*ev));
    return ev;
}

void us_ring_publish(struct us_log *log, unsigned ring, struct us_event *ev, uint32_t payload_len)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    ev->size = (uint32_t)sizeof(struct us_event) + us_align8(payload_len);
    ev->seq = c->head_seq + 1;
    ev->flags &= (uint16_t)~US_EVF_PENDING;
    __atomic_store_n(&c->head_seq, c->head_seq + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&c->head, c->head + ev->size, __ATOMIC_RELEASE);
    (void)h;
}

struct us_event *us_ring_peek(struct us_log *log, unsigned ring, unsigned slot)
{
    struct us_ring_ctl *c = &log->hdr->ring[ring];
    struct us_ring_consumer *me = &c->consumer[slot];
    for (;;) {
        if (me->tail == me->seen_head) {
            me->seen_head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
            if (me->tail == me->seen_head)
                return NULL;
        }
        if (us_event_check(log, ring, me->tail, me->seen_head) < 0)
            return US_RING_CORRUPT;
        struct us_event *ev = us_ring_at(log, ring, me->tail);
        if (ev->type != US_EV_PAD)
            return ev;
        __atomic_store_n(&me->tail, me->tail + ev->size, __ATOMIC_RELEASE);
    }
}

const struct us_event *us_ring_peek_ahead(const struct us_log *log, unsigned ring, unsigned slot,
                                          unsigned n)
{
    const struct us_ring_ctl *c = &log->hdr->ring[ring];
    uint64_t pos = c->consumer[slot].tail, head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
    for (;;) {
        if (pos == head || us_event_check(log, ring, pos, head) < 0)
            return NULL;
        const struct us_event *ev = us_ring_at(log, ring, pos);
        if (ev->type != US_EV_PAD && n-- == 0)
            return ev;
        pos += ev->size;
    }
}

/*
 * A backup spins briefly for the next event, then naps on the futex with a
 * timeout that grows while the log stays idle. The primary never pays for a
 * wake-up (a futex wake is a syscall on its hot path, and a spinning backup
 * would take a whole core from a small machine); only the supervisor wakes
 * backups, when it promotes one.
 */
struct us_event *us_ring_next(struct us_log *log, unsigned ring, unsigned slot)
{
    struct us_log_header *h = log->hdr;
    struct us_ring_ctl *c = &h->ring[ring];
    struct us_ring_consumer *me = &c->consumer[slot];
    long nap = CONSUMER_NAP_MIN_NS;
    for (unsigned spins = 0;; spins++) {
        struct us_event *ev = us_ring_peek(log, ring, slot);
        if (ev || __atomic_load_n(&h->replica[slot].promote, __ATOMIC_ACQUIRE)) {
            if (spins > CONSUMER_SPIN_ROUNDS)
                __atomic_store_n(&me->waiting_since_ns, 0, __ATOMIC_RELAXED);
            return ev; /* or US_RING_CORRUPT, or NULL to promote */
        }
        if (spins < CONSUMER_SPIN_ROUNDS) {
            cpu_relax();
            continue;
        }
        if (spins == CONSUMER_SPIN_ROUNDS) /* the supervisor's spin detection */
            __atomic_store_n(&me->waiting_since_ns, us_monotonic_ns(), __ATOMIC_RELAXED);
        uint32_t v = __atomic_load_n(&c->head_futex, __ATOMIC_ACQUIRE);
        futex_wait(&c->head_futex, v, nap);
        if (nap < CONSUMER_NAP_MAX_NS)
            nap *= 2;
    }
}

void us_ring_consume(struct us_log *log, unsigned ring, unsigned slot, const struct us_event *ev)
{
    struct us_ring_ctl *c = &log->hdr->ring[ring];
    struct us_ring_consumer *me = &c->consumer[slot];
    __atomic_store_n(&me->seq, me->seq + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&me->tail, me->tail + ev->size, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->producer_waiting, __ATOMIC_SEQ_CST)) {
        __atomic_fetch_add(&c->tail_futex, 1, __ATOMIC_SEQ_CST);
        futex_wake(&c->tail_futex);
    }
}

static int blobs_ok(const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        if ((size_t)(end - p) < sizeof(struct us_blob))
            return -1;
        const struct us_blob *b = (const struct us_blob *)p;
        if ((size_t)(end - p) - sizeof(*b) < us_align8(b->len) || b->len > (1u << 30))
            return -1;
        p += sizeof(*b) + us_align8(b->len);
    }
    return 0;
}

int us_event_check(const struct us_log *log, unsigned ring, uint64_t pos, uint64_t head)
{
    /* framing only: what the payload holds is the decoder's business
     * (us_event_payload_check) */
    uint64_t ring_size = log->hdr->ring_size;
    uint64_t off = pos & (ring_size - 1);
    if (head <= pos || head - pos < 8 || (pos & 7))
        return -1;
    const struct us_event *ev = us_ring_at(log, ring, pos);
    uint64_t size = ev->size;
    if (size < 8 || (size & 7) || size > head - pos || off + size > ring_size)
        return -1;
    if (ev->type == US_EV_PAD)
        return 0;
    if (size < sizeof(struct us_event) || ev->type > US_EV_LAST)
        return -1;
    return 0;
}

int us_event_payload_check(const struct us_event *ev)
{
    const uint8_t *p = (const uint8_t *)(ev + 1), *end = (const uint8_t *)ev + ev->size;
    if (ev->type == US_EV_SYSCALL && (ev->flags & US_EVF_RECV_SLOT)) {
        if ((size_t)(end - p) < sizeof(struct us_recv_slot))
            return -1;
        p += sizeof(struct us_recv_slot);
    }
    if (ev->type == US_EV_SIGNAL && (size_t)(end - p) < sizeof(struct us_blob) + 128)
        return -1;
    return blobs_ok(p, end);
}

void us_log_wake_all(struct us_log *log)
{
    for (unsigned r = 0; r < US_MAX_THREADS; r++) {
        __atomic_fetch_add(&log->hdr->ring[r].head_futex, 1, __ATOMIC_SEQ_CST);
        futex_wake(&log->hdr->ring[r].head_futex);
    }
}
