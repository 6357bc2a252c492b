/*
 * echo_server: line-based TCP echo for many concurrent clients.
 *
 * Usage: echo_server PORT [MAX_FDS]
 * Protocol: every line ("...\n") a client sends comes back unchanged.
 *
 * Situation provoked: the plainest single-threaded event-loop server.
 *   - epoll, level-triggered; accept4(SOCK_NONBLOCK|SOCK_CLOEXEC)
 *   - read()/write() on nonblocking sockets, SIGPIPE ignored (EPIPE instead)
 *   - lines split across reads, many lines in one read, partial writes
 *     finished later through EPOLLOUT
 *   - SIGTERM is blocked except inside epoll_pwait(), so a shutdown request
 *     can never slip in between "check flag" and "sleep"; it exits 0.
 *   - with MAX_FDS, RLIMIT_NOFILE is lowered to it at start, as memcached
 *     does to its -c: what understudy places at high fd numbers must fit.
 * The replies depend only on the input bytes, so after a failover any
 * corrupted, lost or duplicated byte is visible to the client.
 */
#include "apps_common.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#define PROG "echo_server"

struct conn {
    int fd;
    uint32_t events; /* interest set currently registered with epoll */
    int read_eof;    /* peer shut down its write side; flush, then close */
    struct app_buf in, out;
    struct conn *prev, *next;
};

static volatile sig_atomic_t g_stop;
static struct conn *g_conns; /* all open connections, for shutdown */
static int g_ep;

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void conn_close(struct conn *c)
{
    /* close() alone would drop the fd from the epoll set, but being explicit
     * keeps the epoll state obviously in sync with our list. */
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        g_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    app_buf_free(&c->in);
    app_buf_free(&c->out);
    free(c);
}

/* Returns 0 if the connection is still usable, -1 if it was closed. */
static int conn_flush(struct conn *c)
{
    while (c->out.len) {
        ssize_t w = write(c->fd, c->out.data, c->out.len);
        if (w > 0) {
            app_buf_consume(&c->out, (size_t)w);
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            if (!app_peer_gone(errno))
                fprintf(stderr, PROG ": write: %s\n", strerror(errno));
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

/* Register exactly the readiness we can act on: no EPOLLIN while we are
 * back-pressuring or after EOF (level-triggered EOF would spin), EPOLLOUT only
 * while replies are pending. */
static void conn_update_interest(struct conn *c)
{
    uint32_t want = 0;
    if (!c->read_eof && c->out.len < APP_OUT_HIGH_WATER)
        want |= EPOLLIN;
    if (c->out.len)
        want |= EPOLLOUT;
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        app_die(PROG, "epoll_ctl(MOD)");
    c->events = want;
}

/* Echo is line-based: move everything up to the last complete line into the
 * output buffer at once; a trailing partial line waits for more input. */
static int conn_process_input(struct conn *c)
{
    char *last_nl = c->in.len ? memrchr(c->in.data, '\n', c->in.len) : NULL;
    if (last_nl) {
        size_t n = (size_t)(last_nl - c->in.data) + 1;
        app_buf_append(&c->out, c->in.data, n);
        app_buf_consume(&c->in, n);
    }
    if (c->in.len > APP_MAX_LINE) {
        fprintf(stderr, PROG ": line too long, dropping client\n");
        conn_close(c);
        return -1;
    }
    return 0;
}

static void conn_on_event(struct conn *c, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        while (!c->read_eof && c->out.len < APP_OUT_HIGH_WATER) {
            app_buf_reserve(&c->in, 65536);
            ssize_t r = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
            if (r > 0) {
                c->in.len += (size_t)r;
                if (conn_process_input(c) < 0)
                    return;
            } else if (r == 0) {
                c->read_eof = 1;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else {
                if (!app_peer_gone(errno))
                    fprintf(stderr, PROG ": read: %s\n", strerror(errno));
                conn_close(c);
                return;
            }
        }
    }
    if (conn_flush(c) < 0)
        return;
    conn_update_interest(c);
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, PROG ": accept4: %s\n", strerror(errno));
            return;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            fprintf(stderr, PROG ": out of memory\n");
            exit(2);
        }
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = c->events, .data.ptr = c};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            app_die(PROG, "epoll_ctl(ADD)");
        c->next = g_conns;
        if (g_conns)
            g_conns->prev = c;
        g_conns = c;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: " PROG " PORT [MAX_FDS]\n");
        return 2;
    }
    int port = app_parse_port(PROG, argv[1]);
    if (argc == 3) {
        struct rlimit rl = {(rlim_t)atol(argv[2]), (rlim_t)atol(argv[2])};
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            app_die(PROG, "setrlimit");
    }

    signal(SIGPIPE, SIG_IGN);

    /* Keep SIGTERM/SIGINT blocked except while sleeping in epoll_pwait. */
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

    int lfd = app_listen(PROG, port, SOCK_NONBLOCK | SOCK_CLOEXEC);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        app_die(PROG, "epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        app_die(PROG, "epoll_ctl(ADD listener)");

    fprintf(stderr, PROG ": listening on 127.0.0.1:%d\n", port);

    struct epoll_event evs[64];
    while (!g_stop) {
        int n = epoll_pwait(g_ep, evs, 64, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            app_die(PROG, "epoll_pwait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                accept_all(lfd);
            else
                conn_on_event(evs[i].data.ptr, evs[i].events);
        }
    }

    while (g_conns)
        conn_close(g_conns);
    close(lfd);
    close(g_ep);
    return 0;
}
