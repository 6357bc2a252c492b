/*
 * fuzz_log.c - libFuzzer target for the log decoder: what a backup does with
 * the bytes of a ring (us_event_check, us_event_payload_check, walking the
 * blobs) and with a log header (us_log_check). Whatever the bytes, it must
 * neither crash nor read outside the mapping (ASan, UBSan).
 */
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "ring.h"

#define RING 65536u
#define LAST (US_MAX_THREADS - 1) /* the last ring: past its end is past the mapping */

static struct us_log log_;

static void setup(void)
{
    uint64_t total = us_log_total_size(RING);
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        __builtin_trap();
    log_.base = p;
    log_.hdr = p;
    log_.size = total;
}

static void decode_ring(const uint8_t *data, size_t size)
{
    us_log_format(&log_, RING, 2, 1u << 30);
    struct us_log_header *h = log_.hdr;
    h->replica[1].role = US_ROLE_BACKUP;
    h->replica[1].state = US_REPLICA_RUNNING;
    h->replica[1].promote = 1; /* at the end of the data, stop instead of waiting */
    /* The first two bytes place the data in the ring, so that records near
     * its end (and ones that would straddle it) are easy to reach. */
    uint64_t start = 0;
    if (size >= 2) {
        start = ((uint64_t)data[0] | (uint64_t)data[1] << 8) * 8 % RING;
        data += 2;
        size -= 2;
    }
    if (size > RING)
        size = RING;
    uint8_t *ring = us_ring_data(&log_, LAST);
    for (size_t i = 0; i < size; i++)
        ring[(start + i) % RING] = data[i];
    size &= ~(size_t)7;
    h->ring[LAST].head = start + size;
    h->ring[LAST].head_seq = size / 8;
    for (unsigned s = 0; s < US_MAX_REPLICAS; s++) {
        h->ring[LAST].consumer[s].tail = start;
        h->ring[LAST].consumer[s].seen_head = start;
    }
    uint64_t sum = 0;
    for (int n = 0; n < 100000; n++) {
        struct us_event *ev = us_ring_next(&log_, LAST, 1);
        if (!ev || ev == US_RING_CORRUPT)
            break;
        if (us_event_payload_check(ev) == 0) {
            const uint8_t *p = (const uint8_t *)(ev + 1), *end = (const uint8_t *)ev + ev->size;
            if (ev->type == US_EV_SYSCALL && (ev->flags & US_EVF_RECV_SLOT))
                p += sizeof(struct us_recv_slot);
            while (p < end) {
                const struct us_blob *b = (const struct us_blob *)p;
                for (uint32_t i = 0; i < b->len; i++)
                    sum += ((const uint8_t *)(b + 1))[i];
                p += sizeof(*b) + us_align8(b->len);
            }
        }
        us_ring_consume(&log_, LAST, 1, ev);
    }
    __asm__ volatile("" : : "r"(sum));
}

static void decode_header(const uint8_t *data, size_t size)
{
    memset(log_.hdr, 0, US_LOG_HEADER_SIZE);
    memcpy(log_.hdr, data, size < US_LOG_HEADER_SIZE ? size : US_LOG_HEADER_SIZE);
    struct us_log probe = log_;
    if (size >= 8)
        probe.size = log_.size >> (data[0] & 15); /* mappings of several sizes */
    if (us_log_check(&probe) == 0 && probe.hdr->ring_size > probe.size)
        __builtin_trap(); /* accepted a ring that cannot be in the mapping */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!log_.base)
        setup();
    if (size == 0)
        return 0;
    if (data[0] & 1)
        decode_header(data + 1, size - 1);
    else
        decode_ring(data + 1, size - 1);
    return 0;
}
