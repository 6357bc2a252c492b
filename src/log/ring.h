/*
 * ring.h - the per-thread single-producer, multi-consumer byte rings of the
 * log (layout in include/understudy/log_format.h).
 *
 * One producer (the primary's thread) appends records; every backup replica
 * has its own read position. The producer never overwrites a record a live
 * backup has not consumed, and never runs more than max_lag_events ahead of
 * one (back-pressure). Consumers spin briefly, then sleep on a futex.
 */
#ifndef US_RING_H
#define US_RING_H

#include <stddef.h>
#include <stdint.h>
#include "understudy/log_format.h"

struct us_log {
    struct us_log_header *hdr;
    uint8_t *base;     /* start of the mapping */
    uint64_t size;     /* of the mapping */
};

/* Sizes the memfd needs for rings of ring_size bytes (a power of two). */
uint64_t us_log_total_size(uint64_t ring_size);
/* Fills a fresh header (supervisor side). */
void us_log_format(struct us_log *log, uint64_t ring_size, uint32_t nreplicas,
                   uint64_t max_lag_events);
/* Checks magic, version and sizes of an attached log: 0 or -EPROTO. */
int us_log_check(const struct us_log *log);

static inline uint8_t *us_ring_data(const struct us_log *log, unsigned ring)
{
    return log->base + log->hdr->header_size + (uint64_t)ring * log->hdr->ring_size;
}

static inline struct us_event *us_ring_at(const struct us_log *log, unsigned ring, uint64_t pos)
{
    return (struct us_event *)(us_ring_data(log, ring) + (pos & (log->hdr->ring_size - 1)));
}

/* Largest payload one record may carry. */
static inline uint32_t us_ring_max_payload(const struct us_log *log)
{
    return (uint32_t)(log->hdr->ring_size / 4) - (uint32_t)sizeof(struct us_event);
}

/*
 * Producer. us_ring_reserve returns room for a record with up to
 * payload_max payload bytes at the head (waiting for consumers if the ring is
 * full or they lag too far); nothing is visible to consumers until
 * us_ring_publish(size), which may be smaller than reserved. `self` is the
 * producer's replica slot (excluded from the consumers it waits for).
 */
struct us_event *us_ring_reserve(struct us_log *log, unsigned ring, unsigned self,
                                 uint32_t payload_max);
void us_ring_publish(struct us_log *log, unsigned ring, struct us_event *ev, uint32_t payload_len);

/*
 * Consumer `slot`. us_ring_next waits for the next record (skipping pads) and
 * returns it, or NULL when the replica has been told to stop waiting (its
 * promote flag is set and the ring is drained). us_ring_consume moves past it.
 */
struct us_event *us_ring_next(struct us_log *log, unsigned ring, unsigned slot);
/* Returned by us_ring_next/us_ring_peek for a record that fails us_event_check. */
#define US_RING_CORRUPT ((struct us_event *)1)
struct us_event *us_ring_peek(struct us_log *log, unsigned ring, unsigned slot);
/* The n-th record after the next one (n = 0: the next), if published; NULL
 * if not (or not sound). For reports: it does not wait. */
const struct us_event *us_ring_peek_ahead(const struct us_log *log, unsigned ring, unsigned slot,
                                          unsigned n);
void us_ring_consume(struct us_log *log, unsigned ring, unsigned slot, const struct us_event *ev);

/*
 * Checks that the record at position `pos` of `ring`, below `head`, is well
 * framed: its size fits the ring and what was published, its type is known.
 * 0 if so, -1 if not. Consumers run it on every record (us_ring_peek).
 */
int us_event_check(const struct us_log *log, unsigned ring, uint64_t pos, uint64_t head);
/* Checks that a framed record's payload (recv slot, blobs) lies inside it. */
int us_event_payload_check(const struct us_event *ev);

/* How long ago (ns) the oldest event of `ring` that consumer `slot` has not
 * consumed was published, to the precision of the producer's stamps; 0 when
 * it has consumed everything up to the last stamp. */
uint64_t us_ring_lag_ns(const struct us_log *log, unsigned ring, unsigned slot, uint64_t now_ns);
uint64_t us_monotonic_ns(void);

/* Every live consumer (other than `self`) has read `ring` to its head. */
int us_ring_consumed(const struct us_log *log, unsigned ring, unsigned self);

/* Wakes every consumer of every ring (after a promotion flag was set). */
void us_log_wake_all(struct us_log *log);

/* Payload blobs. */
static inline uint32_t us_align8(uint32_t n) { return (n + 7u) & ~7u; }

#endif
