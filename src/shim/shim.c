/*
 * shim.c - attaching a replica to the log.
 *
 * The supervisor starts every replica with the log's memfd, a control
 * socket and its slot number in the environment (log_format.h). The
 * constructor maps the log, learns whether this replica records or replays,
 * and arms the safety net. The primary also starts its keeper: a tiny process
 * that shares the primary's fd table (CLONE_FILES) and does nothing else, so
 * every socket, file and pipe of the primary, even one accepted an instant
 * before the primary died, outlives it for the backup that takes over.
 */
#include <fcntl.h>
#include <linux/sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>

#include "engine.h"

struct us_log us_log_;
unsigned us_slot;
int us_ctl_fd = -1;
int us_null_fd = -1;
int us_active;
int us_ncpus = 1;
struct us_thread us_threads[US_MAX_THREADS];
struct us_fd us_fds[US_MAX_FDS];
__thread struct us_thread *us_self __attribute__((tls_model("initial-exec")));

long us_env_number(const char *name)
{
    const char *s = getenv(name);
    long v = 0;
    if (!s || !*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            us_fatal("bad %s in the environment", name);
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* The keeper outlives the primary but not the supervisor, which kills it
 * when it is done with it. It may open no fd (the table is the program's), so
 * it looks for its supervisor twice a second. */
static US_NORETURN void keeper_main(long supervisor)
{
    US_SYSCALL2(SYS_prctl, PR_SET_NAME, "understudy-keep");
    for (;;) {
        struct timespec ts = {0, 500000000};
        US_SYSCALL2(SYS_nanosleep, &ts, 0);
        if (US_SYSCALL2(SYS_kill, supervisor, 0) == -3 /* ESRCH */)
            US_SYSCALL1(SYS_exit_group, 0);
    }
}

/* Starts a process sharing our fd table; returns its pid. */
long us_spawn_keeper(void);
long us_spawn_keeper(void)
{
    long supervisor = us_log_.hdr->supervisor_pid;
    /* No exit signal: the program's wait() never sees it. */
    long r = US_SYSCALL5(SYS_clone, CLONE_FILES, 0, 0, 0, 0);
    if (r == 0)
        keeper_main(supervisor);
    if (r < 0)
        us_fatal("cannot start the fd keeper (clone: %ld)", r);
    return r;
}

static int kind_of_inherited(int fd)
{
    struct stat st;
    if (US_SYSCALL2(SYS_fstat, fd, &st) < 0)
        return US_FD_NONE;
    return S_ISREG(st.st_mode) ? US_FD_FILE : S_ISSOCK(st.st_mode) ? US_FD_SOCKET : US_FD_OTHER;
}

void us_thread_attach(struct us_thread *t)
{
    us_self = t;
    t->tid = (int)US_SYSCALL0(SYS_gettid);
    /* who runs the ring: the supervisor's spin detection and time slicing */
    struct us_ring_ctl *c = &us_log_.hdr->ring[t->ring];
    if (t->mode == US_MODE_RECORD)
        c->producer_tid = t->tid;
    else
        __atomic_store_n(&c->consumer[us_slot].tid, t->tid, __ATOMIC_RELEASE);
}

__attribute__((constructor(101))) static void us_init(void)
{
    long log_fd = us_env_number(US_ENV_LOG_FD);
    long ctl_fd = us_env_number(US_ENV_CTL_FD);
    long slot = us_env_number(US_ENV_SLOT);
    if (log_fd < 0 || ctl_fd < 0 || slot < 0)
        return; /* not started by understudy run: stay out of the way */
    if (slot >= US_MAX_REPLICAS)
        us_fatal("bad replica slot %ld", slot);

    struct stat st;
    if (US_SYSCALL2(SYS_fstat, log_fd, &st) < 0)
        us_fatal("the log fd %ld is not open: was this started by 'understudy run'?", log_fd);
    long p = US_SYSCALL6(SYS_mmap, 0, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, log_fd, 0);
    if (p < 0 && p > -4096)
        us_fatal("cannot map the log (mmap: %ld)", p);
    us_log_.base = (uint8_t *)p;
    us_log_.hdr = (struct us_log_header *)p;
    us_log_.size = (uint64_t)st.st_size;
    if (us_log_check(&us_log_) < 0)
        us_fatal("the log has an unknown format (this shim speaks version %u)", US_LOG_VERSION);
    US_SYSCALL1(SYS_close, log_fd);

    us_slot = (unsigned)slot;
    /* Our CPUs, taken only now: until here every replica ran alike. */
    const uint64_t *cpus = us_log_.hdr->replica[us_slot].cpus;
    if (US_SYSCALL3(SYS_sched_setaffinity, 0, sizeof(us_log_.hdr->replica[0].cpus), cpus) == 0) {
        us_ncpus = 0;
        for (unsigned i = 0; i < 16; i++)
            us_ncpus += __builtin_popcountll(cpus[i]);
    }
    us_ctl_fd = (int)ctl_fd;
    US_SYSCALL3(SYS_fcntl, ctl_fd, F_SETFD, FD_CLOEXEC); /* not for the program's children */
    us_fds[ctl_fd].kind = US_FD_SHIM;
    for (int fd = 0; fd < 3; fd++) {
        us_fds[fd].kind = (uint8_t)kind_of_inherited(fd);
        us_fds[fd].inherited = 1;
        us_fds[fd].fpos = -1;
    }

    struct us_replica *me = &us_log_.hdr->replica[us_slot];
    int primary = me->role == US_ROLE_PRIMARY;
    struct us_thread *t = &us_threads[0];
    t->ring = 0;
    t->new_stack = -1;
    t->mode = primary ? US_MODE_RECORD : US_MODE_REPLAY;
    us_thread_attach(t);
    us_active = 1;

    if (primary) {
        __atomic_store_n(&us_log_.hdr->ring[0].in_use, US_RING_LIVE, __ATOMIC_RELEASE);
        us_log_.hdr->program_pid = (int32_t)US_SYSCALL0(SYS_getpid);
        for (int fd = 0; fd < 3; fd++)
            if (us_fds[fd].kind == US_FD_FILE)
                us_log_.hdr->stdio_pos[fd] = us_file_write_pos(fd);
        me->keeper_pid = (int32_t)us_spawn_keeper();
    } else {
        long fd = US_SYSCALL3(SYS_open, "/dev/null", O_RDWR | O_CLOEXEC, 0);
        if (fd < 0)
            us_fatal("cannot open /dev/null (%ld)", fd);
        us_null_fd = us_ctl_fd - 1;
        if (US_SYSCALL3(SYS_dup3, fd, us_null_fd, O_CLOEXEC) != us_null_fd)
            us_fatal("cannot place the placeholder fd at %d", us_null_fd);
        US_SYSCALL1(SYS_close, fd);
        us_fds[us_null_fd].kind = US_FD_SHIM;
    }
    us_sud_install();
    us_sud_arm(t);
    me->pid = (int32_t)US_SYSCALL0(SYS_getpid);
    __atomic_store_n(&me->attached, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&me->state, US_REPLICA_RUNNING, __ATOMIC_RELEASE);
}
