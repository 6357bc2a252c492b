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
 * bytes, while the other threads go on taking the mutex after it.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile uint64_t answer = 0x5eed5eed5eed5eedull;
static pthread_mutex_t served_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long served;

static void *serve(void *arg)
{
    int c = (int)(intptr_t)arg;
    char buf[256];
    ssize_t n;
    while ((n = read(c, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n')
                continue;
            pthread_mutex_lock(&served_lock);
            served++;
            pthread_mutex_unlock(&served_lock);
            uint64_t v = answer;
            char reply[64];
            int len = snprintf(reply, sizeof(reply), "answer %016llx %.*s\n",
                               (unsigned long long)v, __builtin_popcountll(v) % 7, "++++++");
            if (write(c, reply, (size_t)len) != len)
                break;
        }
    }
    close(c);
    return NULL;
}

int main(int argc, char **argv)
{
    int threaded = argc > 2 && strcmp(argv[2], "-t") == 0;
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 8) < 0) {
        perror("flip_target: bind/listen");
        return 1;
    }
    printf("addr %p\n", (void *)&answer);
    fflush(stdout);
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
