/*
 * fuzz_control.c - libFuzzer target for the control protocol: any request
 * line a client can send to `understudy run` (us_control_handle), against a
 * supervisor with no live replica, so that nothing is killed. It must never
 * crash, overflow its reply buffer or answer without a newline.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "supervisor.h"

static struct us_supervisor sup;

static void setup(void)
{
    uint64_t total = us_log_total_size(65536);
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    sup.log.base = p;
    sup.log.hdr = p;
    sup.log.size = total;
    us_log_format(&sup.log, 65536, 3, 1000);
    sup.opt.replicas = 3;
    sup.opt.quiet = 1;
    for (int i = 0; i < 3; i++) {
        sup.rep[i].pid = 999999; /* never signalled: no replica is alive */
        sup.rep[i].alive = 0;
        sup.rep[i].pidfd = -1;
        sup.rep[i].keeper_pidfd = -1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!sup.log.base)
        setup();
    char req[128];
    size_t n = size < sizeof(req) - 1 ? size : sizeof(req) - 1;
    memcpy(req, data, n);
    req[n] = '\0';
    req[strcspn(req, "\r\n")] = '\0';
    char out[8192];
    size_t len = us_control_handle(&sup, req, out, sizeof(out));
    if (len == 0 || len >= sizeof(out) || out[len - 1] != '\n')
        abort();
    if (sup.done)
        abort(); /* nothing a client says may stop the run here */
    return 0;
}
