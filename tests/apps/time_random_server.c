/*
 * time_random_server: serves random numbers and wall-clock times, and keeps
 * a running hash of everything it has served.
 *
 * Usage: time_random_server PORT
 *
 * Situation provoked: nondeterministic inputs that do not come from a socket.
 * A backup replica that re-executes the primary's history must see exactly
 * the random values and times the primary saw (and sent to clients), or its
 * running hash diverges from what clients were told, which the client notices
 * after a failover. The inputs come from:
 *   - getrandom(2)                     (a syscall via its libc wrapper)
 *   - getentropy(3)                    (libc; uses the getrandom syscall)
 *   - clock_gettime(CLOCK_REALTIME)    (normally vDSO, no syscall at all)
 *   - gettimeofday(2)                  (normally vDSO, no syscall at all)
 * Plumbing differs from echo_server on purpose, to cover other common
 * shapes: poll()/ppoll() with a pollfd array rebuilt every iteration,
 * accept() + fcntl(O_NONBLOCK), recv()/send(MSG_NOSIGNAL) with SIGPIPE left
 * at its default.
 *
 * Protocol (one reply line per request line, in order):
 *   "STATE" ->
 *     "S seq=<seq> gc=<counter> h=<state>"
 *   any other line (clients send "GET") ->
 *     "R seq=<seq> gc=<gc> rnd=<r> ent=<e> rt=<sec>.<nsec9> tv=<sec>.<usec6> h=<state>"
 * where
 *   seq     per-connection request number, 1, 2, 3, ... (STATE counts too)
 *   gc      global counter of non-STATE requests, 1, 2, 3, ... across all
 *           connections; for STATE: the number served so far (not advanced)
 *   r, e    64-bit values from getrandom() and getentropy(), native byte
 *           order, printed as unsigned decimal
 *   rt      clock_gettime(CLOCK_REALTIME): seconds '.' nanoseconds (9 digits)
 *   tv      gettimeofday(): seconds '.' microseconds (6 digits)
 *   state   the running hash after this request, 16 lowercase hex digits
 *
 * The running hash (mirror this exactly in the client):
 *   FNV-1a 64: state starts at 14695981039346656037 (0xcbf29ce484222325);
 *   mixing one byte b is  state ^= b; state *= 1099511628211 (mod 2^64).
 *   For each non-STATE request, in the order the server handles them (which
 *   is the order of gc), the server mixes the bytes of these seven values,
 *   each written as unsigned decimal ASCII without leading zeros and followed
 *   by a ';' byte:
 *       gc; r; e; rt_sec; rt_nsec; tv_sec; tv_usec;
 *   e.g. gc=1, r=42, ... mixes the bytes "1;42;...". STATE mixes nothing.
 */
#include "apps_common.h"

#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#define PROG "time_random_server"

#define FNV_OFFSET UINT64_C(14695981039346656037)
#define FNV_PRIME UINT64_C(1099511628211)

struct conn {
    int fd;
    int read_eof;
    uint64_t seq;
    struct app_buf in, out;
};

static volatile sig_atomic_t g_stop;
static uint64_t g_state = FNV_OFFSET;
static uint64_t g_counter;

/* Indexed by fd: fds are small and dense, so this is the simplest table. */
static struct conn **g_conns;
static size_t g_nconns;

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void mix_u64(uint64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64 ";", v);
    for (int i = 0; i < n; i++) {
        g_state ^= (unsigned char)tmp[i];
        g_state *= FNV_PRIME;
    }
}

static uint64_t random_from_getrandom(void)
{
    uint64_t v;
    unsigned char *p = (unsigned char *)&v;
    size_t got = 0;
    while (got < sizeof v) {
        ssize_t r = getrandom(p + got, sizeof v - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            app_die(PROG, "getrandom");
        }
        got += (size_t)r;
    }
    return v;
}

static uint64_t random_from_getentropy(void)
{
    uint64_t v;
    if (getentropy(&v, sizeof v) < 0)
        app_die(PROG, "getentropy");
    return v;
}

static void serve_line(struct conn *c, const char *line, size_t len)
{
    c->seq++;
    if (len == 5 && memcmp(line, "STATE", 5) == 0) {
        app_buf_printf(&c->out, "S seq=%" PRIu64 " gc=%" PRIu64 " h=%016" PRIx64 "\n",
                       c->seq, g_counter, g_state);
        return;
    }
    uint64_t r = random_from_getrandom();
    uint64_t e = random_from_getentropy();
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
        app_die(PROG, "clock_gettime");
    struct timeval tv;
    if (gettimeofday(&tv, NULL) < 0)
        app_die(PROG, "gettimeofday");

    uint64_t gc = ++g_counter;
    mix_u64(gc);
    mix_u64(r);
    mix_u64(e);
    mix_u64((uint64_t)ts.tv_sec);
    mix_u64((uint64_t)ts.tv_nsec);
    mix_u64((uint64_t)tv.tv_sec);
    mix_u64((uint64_t)tv.tv_usec);

    app_buf_printf(&c->out,
                   "R seq=%" PRIu64 " gc=%" PRIu64 " rnd=%" PRIu64 " ent=%" PRIu64
                   " rt=%lld.%09ld tv=%lld.%06ld h=%016" PRIx64 "\n",
                   c->seq, gc, r, e, (long long)ts.tv_sec, (long)ts.tv_nsec,
                   (long long)tv.tv_sec, (long)tv.tv_usec, g_state);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    g_conns[c->fd] = NULL;
    app_buf_free(&c->in);
    app_buf_free(&c->out);
    free(c);
}

/* Returns -1 if the connection was closed. */
static int conn_process_input(struct conn *c)
{
    size_t start = 0;
    for (;;) {
        char *nl = memchr(c->in.data + start, '\n', c->in.len - start);
        if (!nl)
            break;
        size_t end = (size_t)(nl - c->in.data);
        serve_line(c, c->in.data + start, end - start);
        start = end + 1;
    }
    app_buf_consume(&c->in, start);
    if (c->in.len > APP_MAX_LINE) {
        fprintf(stderr, PROG ": line too long, dropping client\n");
        conn_close(c);
        return -1;
    }
    return 0;
}

static int conn_read(struct conn *c)
{
    while (!c->read_eof && c->out.len < APP_OUT_HIGH_WATER) {
        app_buf_reserve(&c->in, 65536);
        ssize_t r = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (r > 0) {
            c->in.len += (size_t)r;
            if (conn_process_input(c) < 0)
                return -1;
        } else if (r == 0) {
            c->read_eof = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            if (!app_peer_gone(errno))
                fprintf(stderr, PROG ": recv: %s\n", strerror(errno));
            conn_close(c);
            return -1;
        }
    }
    return 0;
}

static int conn_flush(struct conn *c)
{
    while (c->out.len) {
        /* MSG_NOSIGNAL instead of ignoring SIGPIPE process-wide. */
        ssize_t w = send(c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
        if (w > 0) {
            app_buf_consume(&c->out, (size_t)w);
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            if (!app_peer_gone(errno))
                fprintf(stderr, PROG ": send: %s\n", strerror(errno));
            conn_close(c);
            return -1;
        }
    }
    if (c->read_eof && !c->out.len) {
        conn_close(c);
        return -1;
    }
    return 0;
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, PROG ": accept: %s\n", strerror(errno));
            return;
        }
        app_set_nonblocking(PROG, fd);
        if ((size_t)fd >= g_nconns) {
            size_t n = g_nconns ? g_nconns : 64;
            while (n <= (size_t)fd)
                n *= 2;
            struct conn **p = realloc(g_conns, n * sizeof *p);
            if (!p) {
                fprintf(stderr, PROG ": out of memory\n");
                exit(2);
            }
            memset(p + g_nconns, 0, (n - g_nconns) * sizeof *p);
            g_conns = p;
            g_nconns = n;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            fprintf(stderr, PROG ": out of memory\n");
            exit(2);
        }
        c->fd = fd;
        g_conns[fd] = c;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: " PROG " PORT\n");
        return 2;
    }
    int port = app_parse_port(PROG, argv[1]);

    /* SIGTERM/SIGINT are only deliverable inside ppoll(), see echo_server. */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    if (sigprocmask(SIG_BLOCK, &block, &waitmask) < 0)
        app_die(PROG, "sigprocmask");
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
        app_die(PROG, "sigaction");

    /* Plain blocking socket made nonblocking afterwards, unlike echo_server. */
    int lfd = app_listen(PROG, port, 0);
    app_set_nonblocking(PROG, lfd);

    fprintf(stderr, PROG ": listening on 127.0.0.1:%d\n", port);

    struct pollfd *pfds = NULL;
    size_t pfds_cap = 0;
    while (!g_stop) {
        /* Rebuild the pollfd array from the fd table every time: simple, and
         * fine for tens of connections. */
        if (pfds_cap < g_nconns + 1) {
            pfds_cap = g_nconns + 1;
            pfds = realloc(pfds, pfds_cap * sizeof *pfds);
            if (!pfds) {
                fprintf(stderr, PROG ": out of memory\n");
                exit(2);
            }
        }
        nfds_t n = 0;
        pfds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (size_t fd = 0; fd < g_nconns; fd++) {
            struct conn *c = g_conns[fd];
            if (!c)
                continue;
            short ev = 0;
            if (!c->read_eof && c->out.len < APP_OUT_HIGH_WATER)
                ev |= POLLIN;
            if (c->out.len)
                ev |= POLLOUT;
            pfds[n++] = (struct pollfd){.fd = c->fd, .events = ev};
        }

        int r = ppoll(pfds, n, NULL, &waitmask);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            app_die(PROG, "ppoll");
        }
        for (nfds_t i = 1; i < n; i++) {
            if (!pfds[i].revents)
                continue;
            struct conn *c = g_conns[pfds[i].fd];
            if (!c)
                continue;
            if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) && conn_read(c) < 0)
                continue;
            conn_flush(c);
        }
        /* Accept last so new fds never alias a stale pfds[] entry above. */
        if (pfds[0].revents & POLLIN)
            accept_all(lfd);
    }

    for (size_t fd = 0; fd < g_nconns; fd++)
        if (g_conns[fd])
            conn_close(g_conns[fd]);
    free(g_conns);
    free(pfds);
    close(lfd);
    return 0;
}
