/*
 * stdio_append_server: appends client tokens to a file through stdio.
 *
 * Usage: stdio_append_server PORT FILE
 *
 * Protocol (one reply line per request line, in order):
 *   "APPEND <token>"  -> appends "<token>\n" to FILE, fflush()es, then
 *                        replies "OK <count>", count = lines appended so far
 *                        by this server (so the token is line <count> of the
 *                        lines this server wrote)
 *   "COUNT"           -> "COUNT <count>"
 *   anything else     -> "ERR unknown request"
 *
 * Situation provoked: an output side effect that is not a socket. FILE is
 * opened once, at startup, with fopen(path, "a") (O_APPEND) and every append
 * goes out as fprintf() + fflush(), i.e. a write(2) on a regular file whose
 * buffer lives in libc. Across a failover the file must contain every
 * acknowledged token exactly once: a backup that re-executes the primary's
 * writes duplicates lines, one that skips a write the primary never got to
 * finish loses one. Each reply is queued only after fflush() succeeded, so an
 * acknowledged token is always in the file.
 * Plumbing: epoll with a signalfd for SIGTERM (signals arrive as data, no
 * handler), accept4(SOCK_NONBLOCK), recv()/send(MSG_NOSIGNAL).
 */
#include "apps_common.h"

#include <inttypes.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#define PROG "stdio_append_server"

struct conn {
    int fd;
    uint32_t events;
    int read_eof;
    struct app_buf in, out;
    struct conn *prev, *next;
};

/* Distinguishes the two non-connection fds in epoll_event.data.ptr. */
static char g_listener_tag, g_signal_tag;

static struct conn *g_conns;
static int g_ep;
static FILE *g_file;
static uint64_t g_count;

static void conn_close(struct conn *c)
{
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

static void serve_line(struct conn *c, const char *line, size_t len)
{
    if (len > 7 && memcmp(line, "APPEND ", 7) == 0) {
        /* A failed append is fatal rather than reported: the test must never
         * see an acknowledgement for data that is not in the file. */
        if (fprintf(g_file, "%.*s\n", (int)(len - 7), line + 7) < 0)
            app_die(PROG, "fprintf");
        if (fflush(g_file) != 0)
            app_die(PROG, "fflush");
        g_count++;
        app_buf_printf(&c->out, "OK %" PRIu64 "\n", g_count);
    } else if (len == 5 && memcmp(line, "COUNT", 5) == 0) {
        app_buf_printf(&c->out, "COUNT %" PRIu64 "\n", g_count);
    } else {
        app_buf_printf(&c->out, "ERR unknown request\n");
    }
}

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

static int conn_flush(struct conn *c)
{
    while (c->out.len) {
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

static void conn_on_event(struct conn *c, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        while (!c->read_eof && c->out.len < APP_OUT_HIGH_WATER) {
            app_buf_reserve(&c->in, 65536);
            ssize_t r = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
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
                    fprintf(stderr, PROG ": recv: %s\n", strerror(errno));
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
    if (argc != 3) {
        fprintf(stderr, "usage: " PROG " PORT FILE\n");
        return 2;
    }
    int port = app_parse_port(PROG, argv[1]);

    /* signalfd only sees signals that are blocked. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        app_die(PROG, "sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        app_die(PROG, "signalfd");

    g_file = fopen(argv[2], "a");
    if (!g_file)
        app_die(PROG, "fopen");

    int lfd = app_listen(PROG, port, SOCK_NONBLOCK | SOCK_CLOEXEC);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        app_die(PROG, "epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g_listener_tag};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        app_die(PROG, "epoll_ctl(ADD listener)");
    ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &g_signal_tag};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, sfd, &ev) < 0)
        app_die(PROG, "epoll_ctl(ADD signalfd)");

    fprintf(stderr, PROG ": listening on 127.0.0.1:%d, appending to %s\n", port, argv[2]);

    int stop = 0;
    struct epoll_event evs[64];
    while (!stop) {
        int n = epoll_wait(g_ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            app_die(PROG, "epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &g_listener_tag) {
                accept_all(lfd);
            } else if (p == &g_signal_tag) {
                struct signalfd_siginfo si;
                ssize_t r = read(sfd, &si, sizeof si);
                if (r == (ssize_t)sizeof si)
                    stop = 1;
                else if (r < 0 && errno != EAGAIN && errno != EINTR)
                    app_die(PROG, "read(signalfd)");
            } else {
                conn_on_event(p, evs[i].events);
            }
        }
    }

    while (g_conns)
        conn_close(g_conns);
    if (fclose(g_file) != 0)
        app_die(PROG, "fclose");
    close(lfd);
    close(sfd);
    close(g_ep);
    return 0;
}
