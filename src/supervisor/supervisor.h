/*
 * supervisor.h - `understudy run`: starts the replicas, watches them,
 * promotes a backup when the primary fails, answers the control socket.
 */
#ifndef US_SUPERVISOR_H
#define US_SUPERVISOR_H

#include <sched.h>
#include <stdint.h>
#include <sys/types.h>

#include "ring.h"

struct us_run_options {
    int replicas;              /* primary + backups */
    cpu_set_t cpus[US_MAX_REPLICAS];
    int cpus_shared;           /* fewer CPUs than replicas + 1: the primary shares */
    int hang_timeout_ms;
    uint64_t max_lag_events;
    uint64_t max_lag_ms;  /* 0: no time bound */
    uint64_t ring_size;
    int backup_nice;           /* backups run this much nicer than the primary */
    int slice_us;              /* slicer.c's period; 0: no slicing */
    const char *control_path;
    int quiet;
    char **argv;               /* the program and its arguments */
};

/* What a process's threads got from the scheduler, summed (schedstat). */
struct us_cpu_use {
    uint64_t run_ns;           /* on a CPU */
    int runnable;              /* threads runnable now */
};

/* A backup's time slicing (slicer.c): its ticker is on while the backup's
 * threads compete for its CPUs as busy-waiting threads do. */
struct us_slicer {
    pid_t ticker;              /* its process, once started */
    uint32_t *on;              /* shared futex word: it ticks while 1 */
    long checked_ms;           /* when the figures below were read */
    long contended_ms;         /* the last window with competing threads */
    struct us_thread_sched {   /* by ring: its replaying thread then */
        int tid;
        uint64_t run_ns, wait_ns, slices;
    } prev[US_MAX_THREADS];
};

struct us_proc {
    pid_t pid;
    int pidfd;
    int ctl;                   /* supervisor's end of the replica's socketpair */
    int alive;
    pid_t keeper;              /* primary only */
    int keeper_pidfd;
    long stopped_since_ms;     /* seen stopped since (hang detection) */
    long diverged_since_ms;    /* waiting for the vote since */
    uint64_t replayed;         /* backup: events replayed, at replayed_at_ms */
    long replayed_at_ms;
    struct us_cpu_use cpu_at;  /* its CPU use then (stuck or starved?) */
    struct us_slicer slicer;
};

/* Primary thread (by ring) whose backup twin waits for its next event: its
 * CPU time when that was seen (spin detection). */
struct us_spin_sample {
    uint64_t head_seq;         /* the primary thread's events then */
    int tid;                   /* the primary thread */
    long cpu_ms;               /* the primary thread's user-mode CPU time then */
    long at_ms;                /* 0: no sample */
};

struct us_supervisor {
    struct us_run_options opt;
    char start_mono[24], start_real[24]; /* US_ENV_START_*, alike for every replica */
    struct us_log log;
    int memfd;
    int primary;               /* slot */
    struct us_proc rep[US_MAX_REPLICAS];
    int listen_fd;
    char control_path[108];
    int sigfd;
    int shutting_down;
    int exit_status;
    int done;
    int primary_hung;          /* the primary was killed for hanging */
    int vote_winner;           /* a backup that outvoted the primary, or -1 */
    int primary_faulty;        /* the primary was killed for losing a vote */
    long last_failover_ms;
    struct us_spin_sample spin[US_MAX_THREADS];
    int base_nice;             /* the primary's nice value (understudy's own) */
    char shim_path[4096];
};

int us_run(struct us_run_options *opt);

/* control.c */
int us_control_listen(struct us_supervisor *s);
void us_control_serve(struct us_supervisor *s);
size_t us_control_handle(struct us_supervisor *s, const char *req, char *out, size_t cap);
void us_control_close(struct us_supervisor *s);
int us_control_request(const char *path, const char *request, char *reply, size_t cap);
int us_default_control_path(char *buf, size_t cap);

/* slicer.c: check is called from the main loop; stop ends the tickers. */
void us_slicer_check(struct us_supervisor *s, long now_ms);
void us_slicer_stop(struct us_supervisor *s);
int us_slicer_on(const struct us_supervisor *s, int slot); /* slicing it now */

/* inject.c */
size_t us_inject(struct us_supervisor *s, const char *args, char *out, size_t cap);

/* supervisor.c */
/* -1: no backup could take over; -2: the backup died as the primary did
 * (death_signal) replaying its log: a deterministic crash. */
int us_failover(struct us_supervisor *s, const char *why, int death_signal);
/* The live backup least behind the primary, or -1. */
int us_pick_backup(struct us_supervisor *s);
void us_say_sup(struct us_supervisor *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
long us_now_ms(void);
uint64_t us_backup_lag(struct us_supervisor *s, int slot);
/* How far behind in time (ms) a backup is. */
uint64_t us_backup_lag_ms(struct us_supervisor *s, int slot);
/* A small /proc file, as a string in buf; NULL if it cannot be read. */
char *us_read_proc(const char *path, char *buf, size_t cap);

#endif
