/*
 * control.c - the control socket of a run: `understudy status` and
 * `understudy failover` connect to it.
 *
 * A unix stream socket, mode 0600, one request line per connection, one
 * reply. Only the run's own user (or root) is served: SO_PEERCRED.
 */
#include "supervisor.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int us_default_control_path(char *buf, size_t cap)
{
    char cwd[4096];
    if (!getcwd(cwd, sizeof(cwd)))
        return -1;
    int n = snprintf(buf, cap, "%s/.understudy.sock", cwd);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

static int fill_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(a->sun_path))
        return -1;
    strcpy(a->sun_path, path);
    return 0;
}

int us_control_listen(struct us_supervisor *s)
{
    const char *path = s->opt.control_path;
    char def[108];
    if (!path) {
        if (us_default_control_path(def, sizeof(def)) < 0) {
            fprintf(stderr, "understudy: the working directory's path is too long for a control "
                            "socket; give one with --control PATH\n");
            return -1;
        }
        path = def;
    }
    struct sockaddr_un a;
    if (fill_addr(&a, path) < 0) {
        fprintf(stderr, "understudy: control socket path too long: %s\n", path);
        return -1;
    }
    snprintf(s->control_path, sizeof(s->control_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    mode_t old = umask(077);
    int r = bind(fd, (struct sockaddr *)&a, sizeof(a));
    if (r < 0 && errno == EADDRINUSE) {
        /* In use by a live run, or left behind by a dead one? */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(probe, (struct sockaddr *)&a, sizeof(a)) == 0) {
            close(probe);
            umask(old);
            close(fd);
            fprintf(stderr, "understudy: another run is using the control socket %s "
                            "(stop it, or give this one --control PATH)\n", path);
            return -1;
        }
        close(probe);
        unlink(path);
        r = bind(fd, (struct sockaddr *)&a, sizeof(a));
    }
    umask(old);
    if (r < 0 || listen(fd, 16) < 0) {
        fprintf(stderr, "understudy: cannot listen on %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    chmod(path, 0600);
    s->listen_fd = fd;
    return 0;
}

void us_control_close(struct us_supervisor *s)
{
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        unlink(s->control_path);
        s->listen_fd = -1;
    }
}

static const char *state_name(uint32_t st)
{
    static const char *names[] = {"unused", "starting", "running", "promoting",
                                  "live", "dead", "retired", "diverged"};
    return st < sizeof(names) / sizeof(names[0]) ? names[st] : "unknown";
}

/* Divergences found by any replica so far (each counts once). */
static unsigned long divergences(const struct us_supervisor *s)
{
    unsigned long n = 0;
    for (int i = 0; i < s->opt.replicas; i++)
        n += s->log.hdr->replica[i].divergences;
    return n;
}

static size_t status_json(struct us_supervisor *s, char *out, size_t cap)
{
    struct us_log_header *h = s->log.hdr;
    size_t n = (size_t)snprintf(out, cap,
        "{\"mode\":\"record\",\"replicas\":%d,\"max_lag_events\":%lu,\"max_lag_ms\":%lu,"
        "\"backup_nice\":%d,\"failovers\":%u,\"divergences\":%lu,\"last_failover_ms\":%ld,"
        "\"primary\":{\"slot\":%d,\"pid\":%d,\"keeper_pid\":%d},\"backups\":[",
        s->opt.replicas, (unsigned long)h->max_lag_events, (unsigned long)s->opt.max_lag_ms,
        s->opt.backup_nice, h->failovers, divergences(s), s->last_failover_ms,
        s->primary, (int)s->rep[s->primary].pid, (int)s->rep[s->primary].keeper);
    int first = 1;
    for (int i = 0; i < s->opt.replicas && n < cap; i++) {
        if (i == s->primary || !s->rep[i].alive)
            continue;
        n += (size_t)snprintf(out + n, cap - n,
                              "%s{\"slot\":%d,\"pid\":%d,\"state\":\"%s\",\"lag_events\":%lu,"
                              "\"lag_ms\":%lu,\"sliced\":%s}",
                              first ? "" : ",", i, (int)s->rep[i].pid,
                              state_name(h->replica[i].state),
                              (unsigned long)us_backup_lag(s, i),
                              (unsigned long)us_backup_lag_ms(s, i),
                              us_slicer_on(s, i) ? "true" : "false");
        first = 0;
    }
    if (n < cap)
        n += (size_t)snprintf(out + n, cap - n, "]}\n");
    return n < cap ? n : cap - 1;
}

static size_t status_text(struct us_supervisor *s, char *out, size_t cap)
{
    struct us_log_header *h = s->log.hdr;
    size_t n = (size_t)snprintf(out, cap,
        "mode: record\nprimary: pid %d (slot %d)\nbackups: ", (int)s->rep[s->primary].pid,
        s->primary);
    int nb = 0;
    for (int i = 0; i < s->opt.replicas && n < cap; i++) {
        if (i == s->primary || !s->rep[i].alive)
            continue;
        n += (size_t)snprintf(out + n, cap - n, "%spid %d (slot %d, %s, %lu events / %lu ms behind%s)",
                              nb ? ", " : "", (int)s->rep[i].pid, i,
                              state_name(h->replica[i].state), (unsigned long)us_backup_lag(s, i),
                              (unsigned long)us_backup_lag_ms(s, i),
                              us_slicer_on(s, i) ? ", time-sliced" : "");
        nb++;
    }
    if (n < cap)
        n += (size_t)snprintf(out + n, cap - n,
                              "%s\nreplicas: %d of %d%s\nfailovers: %u\ndivergences: %lu\n",
                              nb ? "" : "none", nb + 1, s->opt.replicas,
                              nb + 1 < s->opt.replicas ? " (degraded: fewer replicas than started)" : "",
                              h->failovers, divergences(s));
    return n < cap ? n : cap - 1;
}

/* One request line (without its newline) -> the reply in `out`. */
size_t us_control_handle(struct us_supervisor *s, const char *req, char *out, size_t cap)
{
    if (strcmp(req, "status json") == 0)
        return status_json(s, out, cap);
    if (strcmp(req, "status") == 0)
        return status_text(s, out, cap);
    if (strncmp(req, "inject ", 7) == 0)
        return us_inject(s, req + 7, out, cap);
    if (strcmp(req, "failover") != 0)
        return (size_t)snprintf(out, cap, "error: unknown request '%.60s'\n", req);
    if (us_pick_backup(s) < 0)
        return (size_t)snprintf(out, cap,
                                "error: no backup is running: a failover now would stop the service\n");
    struct us_proc *p = &s->rep[s->primary];
    int st;
    pid_t old = p->pid;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, __WALL);
    p->alive = 0;
    close(p->pidfd);
    p->pidfd = -1;
    if (us_failover(s, "was stopped for a planned failover", 0) == 0)
        return (size_t)snprintf(out, cap, "ok: primary pid %d replaced by pid %d\n", (int)old,
                                (int)s->rep[s->primary].pid);
    s->exit_status = 128 + SIGKILL;
    s->done = 1;
    return (size_t)snprintf(out, cap, "error: no backup could take over\n");
}

void us_control_serve(struct us_supervisor *s)
{
    int c = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    struct ucred cred;
    socklen_t len = sizeof(cred);
    char req[128] = {0}, out[8192];
    size_t n = 0;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != getuid() && cred.uid != 0)) {
        n = (size_t)snprintf(out, sizeof(out), "error: permission denied\n");
    } else {
        struct pollfd pfd = {c, POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0 || read(c, req, sizeof(req) - 1) <= 0) {
            close(c);
            return;
        }
        req[strcspn(req, "\r\n")] = '\0';
        n = us_control_handle(s, req, out, sizeof(out));
    }
    if (n >= sizeof(out))
        n = sizeof(out) - 1;
    if (write(c, out, n) < 0) {
        /* the client went away: nothing to do */
    }
    close(c);
}

int us_control_request(const char *path, const char *request, char *reply, size_t cap)
{
    struct sockaddr_un a;
    if (fill_addr(&a, path) < 0) {
        fprintf(stderr, "understudy: control socket path too long: %s\n", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            fprintf(stderr, "understudy: no run is listening on %s (is 'understudy run' running "
                            "in this directory? otherwise give --control PATH)\n", path);
        else
            fprintf(stderr, "understudy: cannot connect to %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    char line[80];
    int ln = snprintf(line, sizeof(line), "%s\n", request);
    if (write(fd, line, (size_t)ln) != ln) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fd, reply + got, cap - 1 - got)) > 0)
        got += (size_t)r;
    reply[got] = '\0';
    close(fd);
    return 0;
}
