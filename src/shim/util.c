/*
 * util.c - messages from inside the application without stdio.
 *
 * us_fmt understands the few conversions the shim needs; us_say writes one
 * line to stderr with a single raw write(2), so it is async-signal-safe.
 * Pure libc string functions (memcpy, strlen, ...) are fine in the shim:
 * they touch no state, take no lock and make no syscall.
 */
#include <string.h>

#include "shim.h"

static size_t put_num(char *buf, size_t cap, size_t n, unsigned long v, int base, int neg)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = "0123456789abcdef"[v % (unsigned)base];
        v /= (unsigned)base;
    } while (v);
    if (neg)
        tmp[i++] = '-';
    while (i > 0) {
        if (n + 1 < cap)
            buf[n] = tmp[i - 1];
        n++;
        i--;
    }
    return n;
}

size_t us_vfmt(char *buf, size_t cap, const char *fmt, va_list ap)
{
    size_t n = 0;
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            if (n + 1 < cap)
                buf[n] = *p;
            n++;
            continue;
        }
        int lng = 0;
        p++;
        while (*p == 'l') {
            lng = 1;
            p++;
        }
        switch (*p) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            for (s = s ? s : "(null)"; *s; s++) {
                if (n + 1 < cap)
                    buf[n] = *s;
                n++;
            }
            break;
        }
        case 'd': {
            long v = lng ? va_arg(ap, long) : va_arg(ap, int);
            n = put_num(buf, cap, n, v < 0 ? -(unsigned long)v : (unsigned long)v, 10, v < 0);
            break;
        }
        case 'u':
            n = put_num(buf, cap, n, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 10, 0);
            break;
        case 'x':
            n = put_num(buf, cap, n, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 16, 0);
            break;
        case 'p':
            if (n + 2 < cap) {
                buf[n] = '0';
                buf[n + 1] = 'x';
            }
            n = put_num(buf, cap, n + 2, (unsigned long)va_arg(ap, void *), 16, 0);
            break;
        case '%':
            if (n + 1 < cap)
                buf[n] = '%';
            n++;
            break;
        default:
            break;
        }
    }
    if (cap)
        buf[n < cap ? n : cap - 1] = '\0';
    return n;
}

size_t us_fmt(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t n = us_vfmt(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}

static void say(const char *fmt, va_list ap)
{
    char line[512];
    size_t n = us_fmt(line, sizeof(line), "understudy[%d/%s]: ", (int)US_SYSCALL0(SYS_getpid),
                      us_active ? (us_log_.hdr->replica[us_slot].role == US_ROLE_PRIMARY ? "primary" : "backup") : "-");
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    n += us_vfmt(line + n, sizeof(line) - n, fmt, ap);
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    US_SYSCALL3(SYS_write, 2, line, n);
}

void us_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
}

void us_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    if (us_active)
        __atomic_store_n(&us_log_.hdr->replica[us_slot].state, US_REPLICA_RETIRED, __ATOMIC_RELEASE);
    US_SYSCALL1(SYS_exit_group, 70); /* EX_SOFTWARE */
    __builtin_unreachable();
}

int us_take_injected_slow(uint32_t fault)
{
    uint32_t want = fault;
    /* one thread takes it: the first to see it clears it */
    return __atomic_compare_exchange_n(&us_log_.hdr->replica[us_slot].inject, &want,
                                       US_INJECT_NONE, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}
