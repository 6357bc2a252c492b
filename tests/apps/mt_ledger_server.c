/*
 * mt_ledger_server.c - a thread-per-connection TCP server over shared
 * accounts under mutexes, with a logger thread writing a journal file.
 *
 * Provokes: the shape of a real multithreaded server: an accept loop
 * (poll on the listener and a signalfd), one detached thread per
 * connection doing blocking reads and writes, shared state under per-object
 * mutexes taken in a fixed order plus a global sequence lock, and a
 * producer/consumer queue (mutex + two condition variables) to a logger
 * thread that writes every operation to a regular file. Replies depend on
 * the order in which the connection threads got the locks.
 *
 * usage: mt_ledger_server PORT JOURNAL
 *
 * Protocol, one request per line, one reply line each:
 *   T A B AMOUNT   move AMOUNT from account A to B (0..7, A != B), refused
 *                  when A holds less: "OK SEQ BAL_A BAL_B" / "NO SEQ BAL_A BAL_B"
 *   G A            "V SEQ BAL"
 *   S              sum of all accounts (all locks): "S SEQ TOTAL"
 *   anything else  "ERR" (no sequence number)
 * SEQ numbers every operation 1, 2, 3... in the order they took the
 * sequence lock, which they do while holding the locks of the accounts they
 * touch: the replies of all clients together are one serial history. The
 * journal has one line per operation, in SEQ order: "SEQ REQUEST | REPLY".
 * SIGTERM/SIGINT: the logger drains the queue, the journal is closed, exit 0.
 *
 * No malloc in the threads (fixed buffers): this program is about locks.
 */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>

#include "apps_common.h"

#define PROG "mt_ledger_server"
#define ACCOUNTS 8
#define QCAP 1024
#define LINE 128

static long balance[ACCOUNTS];
static pthread_mutex_t account_lock[ACCOUNTS];
static pthread_mutex_t seq_lock = PTHREAD_MUTEX_INITIALIZER;
static long seq;

static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_nonempty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_space = PTHREAD_COND_INITIALIZER;
static char queue[QCAP][2 * LINE];
static int qhead, qlen, qdone;
static FILE *journal;

static void check(int rc, const char *what)
{
    if (rc != 0) {
        errno = rc;
        app_die(PROG, what);
    }
}

/* Called with seq_lock held, so the queue's order is SEQ order. */
static void journal_push(long s, const char *req, const char *reply)
{
    check(pthread_mutex_lock(&qlock), "lock");
    while (qlen == QCAP)
        check(pthread_cond_wait(&q_space, &qlock), "cond_wait");
    snprintf(queue[(qhead + qlen) % QCAP], sizeof queue[0], "%ld %s | %s", s, req, reply);
    qlen++;
    check(pthread_cond_signal(&q_nonempty), "cond_signal");
    check(pthread_mutex_unlock(&qlock), "unlock");
}

static void *logger(void *arg)
{
    for (;;) {
        char line[2 * LINE];
        check(pthread_mutex_lock(&qlock), "lock");
        while (qlen == 0 && !qdone)
            check(pthread_cond_wait(&q_nonempty, &qlock), "cond_wait");
        if (qlen == 0) {
            check(pthread_mutex_unlock(&qlock), "unlock");
            return arg;
        }
        memcpy(line, queue[qhead], sizeof line);
        qhead = (qhead + 1) % QCAP;
        qlen--;
        int idle = qlen == 0;
        check(pthread_cond_signal(&q_space), "cond_signal");
        check(pthread_mutex_unlock(&qlock), "unlock");
        fprintf(journal, "%s\n", line);
        if (idle)
            fflush(journal);
    }
}

static long next_seq(void)
{
    check(pthread_mutex_lock(&seq_lock), "lock");
    return ++seq;
}

/* One request line -> reply (without newline). */
static void serve(const char *req, char *reply, size_t cap)
{
    int a, b;
    long amount;
    char tail;
    if (sscanf(req, "T %d %d %ld%c", &a, &b, &amount, &tail) == 3 && a >= 0 && a < ACCOUNTS &&
        b >= 0 && b < ACCOUNTS && a != b && amount >= 0) {
        int lo = a < b ? a : b, hi = a < b ? b : a;
        check(pthread_mutex_lock(&account_lock[lo]), "lock");
        check(pthread_mutex_lock(&account_lock[hi]), "lock");
        int ok = balance[a] >= amount;
        if (ok) {
            balance[a] -= amount;
            balance[b] += amount;
        }
        long s = next_seq();
        snprintf(reply, cap, "%s %ld %ld %ld", ok ? "OK" : "NO", s, balance[a], balance[b]);
        journal_push(s, req, reply);
        check(pthread_mutex_unlock(&seq_lock), "unlock");
        check(pthread_mutex_unlock(&account_lock[hi]), "unlock");
        check(pthread_mutex_unlock(&account_lock[lo]), "unlock");
    } else if (sscanf(req, "G %d%c", &a, &tail) == 1 && a >= 0 && a < ACCOUNTS) {
        check(pthread_mutex_lock(&account_lock[a]), "lock");
        long s = next_seq();
        snprintf(reply, cap, "V %ld %ld", s, balance[a]);
        journal_push(s, req, reply);
        check(pthread_mutex_unlock(&seq_lock), "unlock");
        check(pthread_mutex_unlock(&account_lock[a]), "unlock");
    } else if (strcmp(req, "S") == 0) {
        long total = 0;
        for (int i = 0; i < ACCOUNTS; i++)
            check(pthread_mutex_lock(&account_lock[i]), "lock");
        for (int i = 0; i < ACCOUNTS; i++)
            total += balance[i];
        long s = next_seq();
        snprintf(reply, cap, "S %ld %ld", s, total);
        journal_push(s, req, reply);
        check(pthread_mutex_unlock(&seq_lock), "unlock");
        for (int i = ACCOUNTS - 1; i >= 0; i--)
            check(pthread_mutex_unlock(&account_lock[i]), "unlock");
    } else {
        snprintf(reply, cap, "ERR");
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char in[16384], out[16384];
    size_t have = 0;
    for (;;) {
        ssize_t r = read(fd, in + have, sizeof in - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
        size_t used = 0, olen = 0;
        char *nl;
        while ((nl = memchr(in + used, '\n', have - used)) != NULL) {
            *nl = 0;
            char req[LINE];
            snprintf(req, sizeof req, "%s", in + used);
            used = (size_t)(nl - in) + 1;
            if (olen + LINE + 2 > sizeof out) {
                if (write_all(fd, out, olen) < 0)
                    goto done;
                olen = 0;
            }
            serve(req, out + olen, LINE);
            olen += strlen(out + olen);
            out[olen++] = '\n';
        }
        if (olen && write_all(fd, out, olen) < 0)
            break;
        memmove(in, in + used, have - used);
        have -= used;
        if (have == sizeof in) /* a line longer than the buffer: protocol error */
            break;
    }
done:
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT JOURNAL\n", PROG);
        return 2;
    }
    int port = app_parse_port(PROG, argv[1]);
    journal = fopen(argv[2], "w");
    if (!journal)
        app_die(PROG, argv[2]);
    for (int i = 0; i < ACCOUNTS; i++) {
        balance[i] = 1000;
        check(pthread_mutex_init(&account_lock[i], NULL), "mutex_init");
    }
    /* Signals go to the signalfd, in no thread. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGPIPE);
    check(pthread_sigmask(SIG_BLOCK, &mask, NULL), "pthread_sigmask");
    sigdelset(&mask, SIGPIPE);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0)
        app_die(PROG, "signalfd");
    int lfd = app_listen(PROG, port, SOCK_CLOEXEC);

    pthread_t log_thread;
    check(pthread_create(&log_thread, NULL, logger, NULL), "pthread_create");
    pthread_attr_t det;
    check(pthread_attr_init(&det), "attr_init");
    check(pthread_attr_setdetachstate(&det, PTHREAD_CREATE_DETACHED), "attr_setdetachstate");

    for (;;) {
        struct pollfd pfd[2] = {{lfd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            app_die(PROG, "poll");
        }
        if (pfd[1].revents & POLLIN)
            break;
        if (pfd[0].revents & POLLIN) {
            int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (cfd < 0) {
                if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
                    continue;
                app_die(PROG, "accept4");
            }
            pthread_t t;
            check(pthread_create(&t, &det, connection, (void *)(intptr_t)cfd), "pthread_create");
        }
    }
    check(pthread_mutex_lock(&qlock), "lock");
    qdone = 1;
    check(pthread_cond_signal(&q_nonempty), "cond_signal");
    check(pthread_mutex_unlock(&qlock), "unlock");
    check(pthread_join(log_thread, NULL), "pthread_join");
    if (fclose(journal) != 0)
        app_die(PROG, "fclose");
    return 0;
}
