/*
 * flip_target.c - a server whose every reply shows one word of its memory.
 *
 * It prints the address of `answer` (the same in every replica: ASLR is off)
 * on stdout, then answers each line a client sends with "answer <hex>\n".
 * A test flips a bit of `answer` in one replica (understudy inject bitflip
 * --address): flipped in the primary, its next reply differs from what the
 * backups would send, and with three replicas the backups outvote it; flipped
 * in a backup, that backup is outvoted.
 *
 * With -t, every connection is served by a thread of its own, and every
 * request takes a mutex all threads share (a request counter); each reply
 * ends with popcount(answer) % 7 '+' signs, so a flipped bit changes the
 * reply's size: the diverged thread's call itself differs, not just its
 * bytes, while the other threads go on taking the mutex after it. A line
 * starting with 'p' is answered "pong <n>" instead, n counting that
 * connection's pings: a reply the flip does not touch. With -e, one thread
 * serves every connection from one epoll set, with the same replies.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t answer = 0x5eed5eed5eed5eedull;
static pthread_mutex_t served_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long served;

struct conn {
    int fd;
    unsigned long pings;
    int line_start, ping;
};

/* Answers every complete line in buf; -1 once the client is gone. */
static int handle(struct conn *k, const char *buf, ssize_t n)
{
    for (ssize_t i = 0; i < n; i++) {
        if (k->line_start)
            k->ping = buf[i] == 'p';
        k->line_start = buf[i] == '\n';
        if (buf[i] != '\n')
            continue;
        pthread_mutex_lock(&served_lock);
        served++;
        pthread_mutex_unlock(&served_lock);
        uint64_t v = answer;
        if (k->ping) {
            /* a pause between reading a ping and answering it: a primary
             * stopped in it read input it never answered */
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        char reply[64];
        int len = k->ping ? snprintf(reply, sizeof(reply), "pong %lu\n", ++k->pings)
                          : snprintf(reply, sizeof(reply), "answer %016llx %.*s\n",
                                     (unsigned long long)v, __builtin_popcountll(v) % 7,
                                     "++++++");
        if (write(k->fd, reply, (size_t)len) != len)
            return -1;
    }
    return 0;
}

static void *serve(void *arg)
{
    struct conn k = {.fd = (int)(intptr_t)arg, .line_start = 1};
    char buf[256];
    ssize_t n;
    while ((n = read(k.fd, buf, sizeof(buf))) > 0 && handle(&k, buf, n) == 0)
        ;
    close(k.fd);
    return NULL;
}

/* -e: one thread, every connection in one epoll set. */
static int serve_epoll(int ls)
{
    static struct conn conns[64];
    int ep = epoll_create1(0), one = 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
        return 1;
    for (;;) {
        /* one event per wait: after a takeover the program asks epoll again
         * before it reads any other connection */
        struct epoll_event got[1];
        int n = epoll_wait(ep, got, 1, -1);
        for (int i = 0; i < n; i++) {
            struct conn *k = got[i].data.ptr;
            if (!k) {
                int c = accept(ls, NULL, NULL);
                if (c < 0 || c >= 64)
                    return 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                conns[c] = (struct conn){.fd = c, .line_start = 1};
                ev.data.ptr = &conns[c];
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                continue;
            }
            char buf[256];
            ssize_t r = read(k->fd, buf, sizeof(buf));
            if (r <= 0 || handle(k, buf, r) < 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
                close(k->fd);
            }
        }
    }
}

int main(int argc, char **argv)
{
    int threaded = argc > 2 && strcmp(argv[2], "-t") == 0;
    int polled = argc > 2 && strcmp(argv[2], "-e") == 0;
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 8) < 0) {
        perror("flip_target: bind/listen");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a client that gave up is not the server's end */
    printf("addr %p\n", (void *)&answer);
    fflush(stdout);
    if (polled)
        return serve_epoll(ls);
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            return 1;
        if (threaded) {
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            pthread_t th;
            if (pthread_create(&th, NULL, serve, (void *)(intptr_t)c) != 0)
                return 1;
            pthread_detach(th);
            continue;
        }
        char buf[256];
        ssize_t n;
        while ((n = read(c, buf, sizeof(buf))) > 0) {
            for (ssize_t i = 0; i < n; i++) {
                if (buf[i] != '\n')
                    continue;
                char reply[64];
                int len = snprintf(reply, sizeof(reply), "answer %016llx\n",
                                   (unsigned long long)answer);
                if (write(c, reply, (size_t)len) != len)
                    break;
            }
        }
        close(c);
    }
}
