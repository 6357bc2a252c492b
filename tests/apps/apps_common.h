/*
 * Shared plumbing for the tests/apps servers.
 *
 * Each server is meant to look like an ordinary, unmodified Linux server
 * program: plain libc, no knowledge of understudy. Only the boring parts
 * (buffers, listener setup, fatal errors) live here so that each server file
 * shows just the situation it provokes.
 *
 * Everything is `static inline` so that a server that does not use a helper
 * does not trip -Wunused-function under -Werror.
 */
#ifndef UNDERSTUDY_TESTS_APPS_COMMON_H
#define UNDERSTUDY_TESTS_APPS_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A single request line longer than this is treated as a protocol error;
 * it bounds memory if a client misbehaves. */
#define APP_MAX_LINE (1u << 20)

/* Stop reading from a client whose unsent replies exceed this, so a client
 * that pipelines without reading cannot make the server grow without bound. */
#define APP_OUT_HIGH_WATER (1u << 20)

static inline void app_die(const char *prog, const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(2);
}

/* Growable byte buffer; data[0..len) is valid. */
struct app_buf {
    char *data;
    size_t len;
    size_t cap;
};

static inline void app_buf_reserve(struct app_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    b->data = p;
    b->cap = cap;
}

static inline void app_buf_append(struct app_buf *b, const void *src, size_t n)
{
    app_buf_reserve(b, n);
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

static inline void app_buf_printf(struct app_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static inline void app_buf_printf(struct app_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        fprintf(stderr, "vsnprintf failed\n");
        exit(2);
    }
    app_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Drop the first n bytes. memmove keeps the code simple; buffers stay small
 * because lines are consumed as soon as they are complete. */
static inline void app_buf_consume(struct app_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static inline void app_buf_free(struct app_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static inline int app_parse_port(const char *prog, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v <= 0 || v > 65535) {
        fprintf(stderr, "%s: bad port '%s'\n", prog, s);
        exit(2);
    }
    return (int)v;
}

static inline void app_set_nonblocking(const char *prog, int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        app_die(prog, "fcntl(O_NONBLOCK)");
}

/*
 * Listen on 127.0.0.1:port. sock_type_flags is OR-ed into SOCK_STREAM so a
 * server can choose between SOCK_NONBLOCK|SOCK_CLOEXEC at creation time and
 * the older fcntl() dance (both show up in real programs; the shim must cope
 * with either).
 */
static inline int app_listen(const char *prog, int port, int sock_type_flags)
{
    int fd = socket(AF_INET, SOCK_STREAM | sock_type_flags, 0);
    if (fd < 0)
        app_die(prog, "socket");
    int one = 1;
    /* Tests restart servers on recently used ports. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        app_die(prog, "setsockopt(SO_REUSEADDR)");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        app_die(prog, "bind");
    if (listen(fd, 128) < 0)
        app_die(prog, "listen");
    return fd;
}

/* Errors on a client socket that just mean "the peer went away". */
static inline int app_peer_gone(int err)
{
    return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT ||
           err == ENOTCONN;
}

#endif
