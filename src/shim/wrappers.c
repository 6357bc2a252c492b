/*
 * wrappers.c - the libc entry points the shim exports.
 *
 * Only the calls on a server's hot path are here: each is one jump into the
 * engine, far cheaper than a trap into the safety net (sud.c), which catches
 * everything else. A wrapper converts the engine's -errno into errno.
 */
#include <errno.h>
#include <stdarg.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <poll.h>
#include <time.h>

#include "shim.h"

#define US_EXPORT __attribute__((visibility("default")))

static inline long errno_ret(long r)
{
    if ((unsigned long)r > -4096ul) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

#define SC(nr, a, b, c, d, e, f) \
    errno_ret(us_syscall(nr, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)))

US_EXPORT ssize_t read(int fd, void *buf, size_t n) { return SC(SYS_read, fd, buf, n, 0, 0, 0); }
US_EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
    if (n > buflen)
        __builtin_trap();
    return SC(SYS_read, fd, buf, n, 0, 0, 0);
}
US_EXPORT ssize_t write(int fd, const void *buf, size_t n) { return SC(SYS_write, fd, buf, n, 0, 0, 0); }
US_EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) { return SC(SYS_readv, fd, iov, cnt, 0, 0, 0); }
US_EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) { return SC(SYS_writev, fd, iov, cnt, 0, 0, 0); }
US_EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t off) { return SC(SYS_pread64, fd, buf, n, off, 0, 0); }
US_EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) { return SC(SYS_pread64, fd, buf, n, off, 0, 0); }
US_EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return SC(SYS_pwrite64, fd, buf, n, off, 0, 0); }
US_EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return SC(SYS_pwrite64, fd, buf, n, off, 0, 0); }
US_EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags) { return SC(SYS_recvfrom, fd, buf, n, flags, 0, 0); }
US_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
    if (n > buflen)
        __builtin_trap();
    return SC(SYS_recvfrom, fd, buf, n, flags, 0, 0);
}
US_EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *alen)
{
    return SC(SYS_recvfrom, fd, buf, n, flags, addr, alen);
}
US_EXPORT ssize_t recvmsg(int fd, struct msghdr *m, int flags) { return SC(SYS_recvmsg, fd, m, flags, 0, 0, 0); }
US_EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags) { return SC(SYS_sendto, fd, buf, n, flags, 0, 0); }
US_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t alen)
{
    return SC(SYS_sendto, fd, buf, n, flags, addr, alen);
}
US_EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags) { return SC(SYS_sendmsg, fd, m, flags, 0, 0, 0); }
US_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *alen) { return (int)SC(SYS_accept, fd, addr, alen, 0, 0, 0); }
US_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *alen, int flags)
{
    return (int)SC(SYS_accept4, fd, addr, alen, flags, 0, 0);
}
US_EXPORT int epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout)
{
    return (int)SC(SYS_epoll_wait, epfd, ev, max, timeout, 0, 0);
}
US_EXPORT int epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout, const sigset_t *ss)
{
    return (int)SC(SYS_epoll_pwait, epfd, ev, max, timeout, ss, 8);
}
US_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) { return (int)SC(SYS_epoll_ctl, epfd, op, fd, ev, 0, 0); }
US_EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    struct timespec ts = {timeout / 1000, (timeout % 1000) * 1000000L};
    return (int)SC(SYS_ppoll, fds, n, timeout < 0 ? NULL : &ts, 0, 8, 0);
}
US_EXPORT int close(int fd) { return (int)SC(SYS_close, fd, 0, 0, 0, 0, 0); }
US_EXPORT int clock_gettime(clockid_t clk, struct timespec *ts) { return (int)SC(SYS_clock_gettime, clk, ts, 0, 0, 0, 0); }
US_EXPORT int gettimeofday(struct timeval *tv, void *tz) { return (int)SC(SYS_gettimeofday, tv, tz, 0, 0, 0, 0); }
US_EXPORT time_t time(time_t *t) { return (time_t)SC(SYS_time, t, 0, 0, 0, 0, 0); }
US_EXPORT ssize_t getrandom(void *buf, size_t n, unsigned flags) { return SC(SYS_getrandom, buf, n, flags, 0, 0, 0); }
US_EXPORT int getentropy(void *buf, size_t n)
{
    if (n > 256) {
        errno = EIO;
        return -1;
    }
    for (size_t done = 0; done < n;) {
        long r = SC(SYS_getrandom, (char *)buf + done, n - done, 0, 0, 0, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}
US_EXPORT pid_t getpid(void) { return (pid_t)SC(SYS_getpid, 0, 0, 0, 0, 0, 0); }
US_EXPORT pid_t gettid(void) { return (pid_t)SC(SYS_gettid, 0, 0, 0, 0, 0, 0); }
US_EXPORT int setsockopt(int fd, int lvl, int opt, const void *val, socklen_t len)
{
    return (int)SC(SYS_setsockopt, fd, lvl, opt, val, len, 0);
}
US_EXPORT int getsockopt(int fd, int lvl, int opt, void *val, socklen_t *len)
{
    return (int)SC(SYS_getsockopt, fd, lvl, opt, val, len, 0);
}
US_EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return (int)SC(SYS_fcntl, fd, cmd, arg, 0, 0, 0);
}
US_EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return (int)SC(SYS_fcntl, fd, cmd, arg, 0, 0, 0);
}
