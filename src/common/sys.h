/*
 * sys.h - raw system calls for code shared by the shim and the supervisor.
 *
 * Inside a replica (US_IN_SHIM) every syscall must come from the shim's
 * exempt range (raw_syscall.S) or Syscall User Dispatch would trap it; the
 * supervisor simply uses libc's syscall().
 */
#ifndef US_SYS_H
#define US_SYS_H

#include <sys/syscall.h>

#ifdef US_IN_SHIM
long us_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
#define US_SYSCALL6(nr, a, b, c, d, e, f) \
    us_raw_syscall((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#else
#include <unistd.h>
#include <errno.h>
static inline long us_libc_syscall6(long nr, long a, long b, long c, long d, long e, long f)
{
    long r = syscall(nr, a, b, c, d, e, f);
    return r == -1 ? -errno : r;
}
#define US_SYSCALL6(nr, a, b, c, d, e, f) \
    us_libc_syscall6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#endif

#define US_SYSCALL0(nr) US_SYSCALL6(nr, 0, 0, 0, 0, 0, 0)
#define US_SYSCALL1(nr, a) US_SYSCALL6(nr, a, 0, 0, 0, 0, 0)
#define US_SYSCALL2(nr, a, b) US_SYSCALL6(nr, a, b, 0, 0, 0, 0)
#define US_SYSCALL3(nr, a, b, c) US_SYSCALL6(nr, a, b, c, 0, 0, 0)
#define US_SYSCALL4(nr, a, b, c, d) US_SYSCALL6(nr, a, b, c, d, 0, 0)
#define US_SYSCALL5(nr, a, b, c, d, e) US_SYSCALL6(nr, a, b, c, d, e, 0)

#endif
