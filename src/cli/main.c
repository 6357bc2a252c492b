/*
 * main.c - the understudy command line (docs/cli.md).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "supervisor.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: understudy run [--replicas N] [--cpus LIST] [--hang-timeout MS]\n"
            "                      [--max-lag EVENTS] [--max-lag-ms MS] [--backup-nice N]\n"
            "                      [--slice-us US] [--control PATH] [--quiet]\n"
            "                      -- PROGRAM [ARGS...]\n"
            "       understudy status [--json] [--control PATH]\n"
            "       understudy failover [--control PATH]\n"
            "       understudy inject [--control PATH] --replica primary|backup|SLOT\n"
            "                         crash|hang|spin|crash-in-accept|crash-in-write|bitflip [--address HEX]\n"
            "\n"
            "Runs PROGRAM as a primary and backup replicas that replay its log, and keeps it\n"
            "serving its clients when the primary fails. See docs/cli.md.\n");
}

static int is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s ? s : "", &end, 10);
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "understudy: %s needs a number from %ld to %ld, not '%s'\n", opt, lo, hi,
                s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

/*
 * Replicas on disjoint CPUs. With more CPUs than replicas, each gets an even
 * share (the primary the remainder). With fewer, the primary may use every
 * CPU (its clients need some too) and each backup is held to one CPU, the
 * last ones first: a backup's threads hand the log's order to each other
 * far faster on one CPU than across CPUs (a cross-CPU wake-up costs 80 us
 * here). A promoted backup gets the primary's CPUs.
 */
static void default_cpus(struct us_run_options *o, long ncpu)
{
    for (int r = 0; r < o->replicas; r++)
        CPU_ZERO(&o->cpus[r]);
    if (ncpu > o->replicas) {
        long share = ncpu / o->replicas, first = ncpu - share * (o->replicas - 1);
        for (long c = 0; c < first; c++)
            CPU_SET((int)c, &o->cpus[0]);
        for (int r = 1; r < o->replicas; r++)
            for (long c = first + share * (r - 1); c < first + share * r; c++)
                CPU_SET((int)c, &o->cpus[r]);
        return;
    }
    for (long c = 0; c < ncpu; c++)
        CPU_SET((int)c, &o->cpus[0]);
    for (int r = 1; r < o->replicas; r++)
        CPU_SET((int)((ncpu - r % ncpu) % ncpu), &o->cpus[r]);
    o->cpus_shared = 1; /* said once the run starts (us_run) */
}

/* "0-1/2,3" -> one CPU set per replica. */
static int parse_cpus(const char *spec, struct us_run_options *o)
{
    int slot = 0;
    CPU_ZERO(&o->cpus[0]);
    for (const char *p = spec; *p;) {
        if (*p == '/') {
            if (++slot >= US_MAX_REPLICAS)
                return -1;
            CPU_ZERO(&o->cpus[slot]);
            p++;
            continue;
        }
        if (*p == ',') {
            p++;
            continue;
        }
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || a < 0 || a >= CPU_SETSIZE)
            return -1;
        if (*end == '-') {
            p = end + 1;
            b = strtol(p, &end, 10);
            if (end == p || b < a || b >= CPU_SETSIZE)
                return -1;
        }
        for (long c = a; c <= b; c++)
            CPU_SET((int)c, &o->cpus[slot]);
        p = end;
    }
    return slot + 1;
}

/* PROGRAM must exist and be executable before anything starts. */
static int check_program(const char *prog)
{
    if (strchr(prog, '/'))
        return access(prog, X_OK) == 0 ? 0 : -1;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    char buf[4096];
    for (const char *p = path; *p;) {
        size_t len = strcspn(p, ":");
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)len, len ? p : ".", prog);
        struct stat st;
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
            return 0;
        p += len + (p[len] == ':');
    }
    return -1;
}

static int cmd_run(int argc, char **argv)
{
    struct us_run_options o;
    memset(&o, 0, sizeof(o));
    o.replicas = 2;
    o.hang_timeout_ms = 1000;
    o.max_lag_events = 100000;
    o.max_lag_ms = 50;
    o.ring_size = 16u << 20;
    o.backup_nice = 0;
    o.slice_us = 50;
    const char *cpus = NULL;
    int i;
    for (i = 0; i < argc; i++) {
        const char *a = argv[i];
        long v;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--replicas") == 0) {
            if (parse_long(a, argv[++i], 1, US_MAX_REPLICAS, &v) < 0)
                return 2;
            o.replicas = (int)v;
        } else if (strcmp(a, "--hang-timeout") == 0) {
            if (parse_long(a, argv[++i], 10, 3600000, &v) < 0)
                return 2;
            o.hang_timeout_ms = (int)v;
        } else if (strcmp(a, "--max-lag") == 0) {
            if (parse_long(a, argv[++i], 1, 1000000000, &v) < 0)
                return 2;
            o.max_lag_events = (uint64_t)v;
        } else if (strcmp(a, "--max-lag-ms") == 0) {
            if (parse_long(a, argv[++i], 0, 3600000, &v) < 0)
                return 2;
            o.max_lag_ms = (uint64_t)v;
        } else if (strcmp(a, "--backup-nice") == 0) {
            if (parse_long(a, argv[++i], 0, 19, &v) < 0)
                return 2;
            o.backup_nice = (int)v;
        } else if (strcmp(a, "--slice-us") == 0) {
            if (parse_long(a, argv[++i], 0, 100000, &v) < 0)
                return 2;
            o.slice_us = (int)v;
        } else if (strcmp(a, "--cpus") == 0) {
            if (!(cpus = argv[++i])) {
                fprintf(stderr, "understudy: --cpus needs a list such as 0/1\n");
                return 2;
            }
        } else if (strcmp(a, "--control") == 0) {
            if (!(o.control_path = argv[++i])) {
                fprintf(stderr, "understudy: --control needs a path\n");
                return 2;
            }
        } else if (strcmp(a, "--quiet") == 0) {
            o.quiet = 1;
        } else if (is_help(a)) {
            usage(stdout);
            return 0;
        } else if (a[0] != '-') {
            break; /* the program, without "--" */
        } else {
            fprintf(stderr, "understudy: unknown option '%s' for run\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "understudy: run needs a program: understudy run -- PROGRAM [ARGS...]\n");
        return 2;
    }
    o.argv = argv + i;
    if (check_program(o.argv[0]) < 0) {
        fprintf(stderr, "understudy: %s: no such program, or not executable\n", o.argv[0]);
        return 127;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus) {
        int n = parse_cpus(cpus, &o);
        if (n < 0) {
            fprintf(stderr, "understudy: bad --cpus '%s' (example: 0/1 or 0-1/2-3)\n", cpus);
            return 2;
        }
        if (n < o.replicas) {
            fprintf(stderr, "understudy: --cpus gives %d CPU set(s) for %d replicas\n", n,
                    o.replicas);
            return 2;
        }
        cpu_set_t allowed;
        if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
            for (int r = 0; r < n; r++) {
                if (CPU_COUNT(&o.cpus[r]) == 0) {
                    fprintf(stderr, "understudy: --cpus '%s': set %d is empty\n", cpus, r + 1);
                    return 2;
                }
                for (int c = 0; c < CPU_SETSIZE; c++)
                    if (CPU_ISSET(c, &o.cpus[r]) && !CPU_ISSET(c, &allowed)) {
                        fprintf(stderr, "understudy: --cpus '%s': CPU %d is not one this "
                                        "machine lets us use (%ld online)\n", cpus, c, ncpu);
                        return 2;
                    }
            }
        }
    } else {
        default_cpus(&o, ncpu);
    }
    return us_run(&o);
}

static int cmd_client(const char *cmd, int argc, char **argv)
{
    const char *path = NULL, *replica = NULL, *fault = NULL, *address = "";
    int json = 0;
    char def[108], req[128];
    int inject = strcmp(cmd, "inject") == 0;
    for (int i = 0; i < argc; i++) {
        if (is_help(argv[i])) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0 && strcmp(cmd, "status") == 0)
            json = 1;
        else if (strcmp(argv[i], "--control") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (inject && strcmp(argv[i], "--replica") == 0 && i + 1 < argc)
            replica = argv[++i];
        else if (inject && strcmp(argv[i], "--address") == 0 && i + 1 < argc)
            address = argv[++i];
        else if (inject && !fault && argv[i][0] != '-')
            fault = argv[i];
        else {
            fprintf(stderr, "understudy: unknown option '%s' for %s\n", argv[i], cmd);
            return 2;
        }
    }
    if (inject && (!replica || !fault)) {
        fprintf(stderr, "understudy: inject needs --replica primary|backup|SLOT and a fault "
                        "(crash, hang, spin, crash-in-accept, crash-in-write, bitflip)\n");
        return 2;
    }
    if (!path) {
        if (us_default_control_path(def, sizeof(def)) < 0) {
            fprintf(stderr, "understudy: give the control socket with --control PATH\n");
            return 2;
        }
        path = def;
    }
    char reply[8192];
    if (inject)
        snprintf(req, sizeof(req), "inject %.20s %.20s %.30s", replica, fault, address);
    else
        snprintf(req, sizeof(req), "%s", strcmp(cmd, "status") == 0 ? (json ? "status json" : "status") : "failover");
    if (us_control_request(path, req, reply, sizeof(reply)) < 0)
        return 1;
    fputs(reply, stdout);
    return strncmp(reply, "error", 5) == 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "run") == 0)
        return cmd_run(argc - 2, argv + 2);
    if (strcmp(argv[1], "status") == 0 || strcmp(argv[1], "failover") == 0 ||
        strcmp(argv[1], "inject") == 0)
        return cmd_client(argv[1], argc - 2, argv + 2);
    fprintf(stderr, "understudy: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
