/*
 * inject.c - `understudy inject`: the faults replicas are built to survive.
 *
 *   crash    SIGKILL, as a dying core or a kernel kill would
 *   hang     SIGSTOP: the replica stops making progress; the supervisor's
 *            hang detection must notice it
 *   spin     the replica's next thread to make a call loops forever instead,
 *            running, without calls (a fault made a loop endless); the
 *            supervisor must notice that its backup got past that point
 *   crash-in-accept
 *            the replica dies in its next accept that gets a connection,
 *            after the kernel handed it over and before it is logged: the
 *            new primary must hand that connection to the program
 *   crash-in-write
 *            the replica dies right after its next write or send put bytes
 *            out, before it is logged: the new primary must not put them out
 *            again
 *   bitflip  one bit of the replica's writable memory flipped through
 *            process_vm_writev, at a given address or at a random one, as a
 *            memory fault would; output comparison must catch it if it ever
 *            changes what the replica writes
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "supervisor.h"

/* A random byte in a private writable mapping of `pid` (not the log, not the
 * kernel's pages); 0 if none. */
static unsigned long random_writable_byte(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    unsigned long lo[256], hi[256], total = 0;
    int n = 0;
    while (n < 256 && fgets(line, sizeof(line), f)) {
        unsigned long a, b;
        char perms[8] = "";
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) != 3 || perms[0] != 'r' ||
            perms[1] != 'w' || perms[3] != 'p' || strstr(line, "understudy") ||
            strstr(line, "[v"))
            continue;
        lo[n] = a;
        hi[n] = b;
        total += b - a;
        n++;
    }
    fclose(f);
    if (!total)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long pick = ((unsigned long)ts.tv_nsec * 2654435761ul ^ (unsigned long)random()) % total;
    for (int i = 0; i < n; i++) {
        if (pick < hi[i] - lo[i])
            return lo[i] + pick;
        pick -= hi[i] - lo[i];
    }
    return 0;
}

static int flip_bit(pid_t pid, unsigned long addr, int bit, char *out, size_t cap)
{
    unsigned char b;
    struct iovec local = {&b, 1}, remote = {(void *)addr, 1};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != 1)
        return snprintf(out, cap, "error: cannot read pid %d at 0x%lx: %s\n", (int)pid, addr,
                        strerror(errno));
    unsigned char was = b;
    b ^= (unsigned char)(1u << bit);
    if (process_vm_writev(pid, &local, 1, &remote, 1, 0) != 1)
        return snprintf(out, cap, "error: cannot write pid %d at 0x%lx: %s\n", (int)pid, addr,
                        strerror(errno));
    return snprintf(out, cap, "ok: flipped bit %d at 0x%lx in pid %d (0x%02x -> 0x%02x)\n", bit,
                    addr, (int)pid, was, b);
}

/* "inject WHO FAULT [ADDRESS]" -> reply in `out`. WHO: primary, backup
 * (the first live one) or a slot number. */
size_t us_inject(struct us_supervisor *s, const char *args, char *out, size_t cap)
{
    char who[32] = "", fault[32] = "";
    unsigned long addr = 0;
    if (sscanf(args, "%31s %31s %lx", who, fault, &addr) < 2)
        return (size_t)snprintf(out, cap, "error: inject needs a replica and a fault\n");
    int slot = -1;
    if (strcmp(who, "primary") == 0) {
        slot = s->primary;
    } else if (strcmp(who, "backup") == 0) {
        for (int i = 0; i < s->opt.replicas && slot < 0; i++)
            if (i != s->primary && s->rep[i].alive)
                slot = i;
    } else {
        char *end;
        long v = strtol(who, &end, 10);
        if (*end || v < 0 || v >= s->opt.replicas)
            return (size_t)snprintf(out, cap, "error: no replica '%s' (primary, backup or a slot)\n", who);
        slot = (int)v;
    }
    if (slot < 0 || !s->rep[slot].alive)
        return (size_t)snprintf(out, cap, "error: replica '%s' is not running\n", who);
    pid_t pid = s->rep[slot].pid;
    const char *role = slot == s->primary ? "primary" : "backup";
    if (strcmp(fault, "crash") == 0) {
        kill(pid, SIGKILL);
        us_say_sup(s, "injected: crash of the %s (pid %d)", role, (int)pid);
        return (size_t)snprintf(out, cap, "ok: killed the %s, pid %d\n", role, (int)pid);
    }
    if (strcmp(fault, "hang") == 0) {
        kill(pid, SIGSTOP);
        us_say_sup(s, "injected: hang of the %s (pid %d)", role, (int)pid);
        return (size_t)snprintf(out, cap, "ok: stopped the %s, pid %d\n", role, (int)pid);
    }
    static const struct {
        const char *name;
        uint32_t fault;
        const char *when;
    } played[] = {
        {"spin", US_INJECT_SPIN, "spins at its next call"},
        {"crash-in-accept", US_INJECT_CRASH_IN_ACCEPT, "dies in its next accept, before logging it"},
        {"crash-in-write", US_INJECT_CRASH_IN_WRITE, "dies after its next write, before logging it"},
    };
    for (size_t i = 0; i < sizeof(played) / sizeof(played[0]); i++) {
        if (strcmp(fault, played[i].name))
            continue;
        __atomic_store_n(&s->log.hdr->replica[slot].inject, played[i].fault, __ATOMIC_RELEASE);
        us_say_sup(s, "injected: the %s (pid %d) %s", role, (int)pid, played[i].when);
        return (size_t)snprintf(out, cap, "ok: the %s, pid %d, %s\n", role, (int)pid,
                                played[i].when);
    }
    if (strcmp(fault, "bitflip") == 0) {
        if (!addr)
            addr = random_writable_byte(pid);
        if (!addr)
            return (size_t)snprintf(out, cap, "error: no writable memory found in pid %d\n", (int)pid);
        size_t n = (size_t)flip_bit(pid, addr, (int)(random() % 8), out, cap);
        us_say_sup(s, "injected: bit flip in the %s: %s", role, out);
        return n;
    }
    return (size_t)snprintf(out, cap, "error: unknown fault '%s' (crash, hang, spin, crash-in-accept, crash-in-write, bitflip)\n", fault);
}
