#!/usr/bin/env python3
"""Faults from `understudy inject` are survived, while a client keeps talking.

echo_server under `understudy run --replicas 3 --hang-timeout 300`; one client
echoes lines without pause and checks every reply. Then:
  1. inject hang into a backup: it is declared hung and retired, the service
     goes on with one backup;
  2. inject hang into the primary: it is declared hung, the last backup takes
     over, the client's connection carries on;
  3. bad requests (an unknown fault, a replica that does not exist) get clear
     errors and change nothing;
  4. a fresh run with one backup, frozen through the cgroup freezer (root):
     it neither runs nor shows as stopped, so only its lack of progress while
     the log holds events for it tells it is stuck; it must be retired within
     about --hang-timeout and the client go on (skipped, said so, without a
     v1 freezer);
  5. a fresh run with one backup; inject spin into the primary: its thread
     loops without calls, running, neither stopped nor dead; the backup gets
     past the same point and waits; the primary must be declared hung and
     replaced, and the client's connection carry on;
  6. a fresh run of a server that lowers its RLIMIT_NOFILE (as memcached
     does); inject crash-in-accept into the primary and connect: the kernel
     hands the connection to the primary, which dies before logging it; the
     new primary must hand it to the program's next accept and the newcomer
     be served (not reset);
  7. a fresh run; inject crash-in-write into the primary: its next reply to
     the client reaches the kernel and the primary dies before logging it;
     the new primary must not send that reply again (the client checks every
     reply in order: a repeated one fails it);
  8. a fresh run with one backup starved of CPU (its threads SCHED_IDLE,
     a busy loop pinned to its CPU): runnable but not running, it replays
     nothing, unless back-pressure slows the primary to its pace; retired,
     it must be named starved (not "stuck": the message tells an
     overloaded machine from a backup that hangs).
Exit 0 pass, 1 fail, 77 skip.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

server_bin = sys.argv[1]
us = h.require_understudy()

failures = []
stop = threading.Event()
replies = [0]


def client(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = s.makefile("rwb")
        i = 0
        while not stop.is_set():
            line = b"line %d\n" % i
            f.write(line)
            f.flush()
            got = f.readline()
            if got != line:
                failures.append("reply %d was %r, expected %r" % (i, got, line))
                return
            i += 1
            replies[0] = i
        s.close()
    except OSError as e:
        failures.append("client error after %d replies: %s" % (replies[0], e))


def inject(server, *args):
    r = subprocess.run([us, "inject", "--control", server.ctl] + list(args),
                       capture_output=True, text=True, timeout=10)
    return r.returncode, r.stdout.strip() + r.stderr.strip()


def wait_for(server, pred, what, seconds=5.0, required=True):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        st = server.status()
        if pred(st):
            return st
        time.sleep(0.05)
    if required:
        failures.append("timed out waiting for %s (status %s)" % (what, server.status()))
    return None


def start_with_client(d, replicas, extra=()):
    """echo_server under understudy (--hang-timeout 300), its backups ready,
    and the client thread talking to it."""
    server = h.Server(lambda port: [server_bin, port] + list(extra), d, native=False,
                      understudy=us,
                      replicas=replicas, run_args=["--hang-timeout", "300"])
    server.start(h.Deadline(30))
    server.wait_backup_ready(h.Deadline(10))
    t = threading.Thread(target=client, args=(server.port,), daemon=True)
    t.start()
    return server, t


with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    h.install_signal_handlers()
    server = None
    try:
        server, t = start_with_client(d, 3)
        time.sleep(0.2)
        primary = server.status()["primary"]["pid"]

        rc, out = inject(server, "--replica", "backup", "hang")
        print("inject backup hang:", out)
        if rc != 0:
            failures.append("inject backup hang failed: " + out)
        wait_for(server, lambda st: len(st["backups"]) == 1, "the hung backup to be retired")

        before = replies[0]
        rc, out = inject(server, "--replica", "primary", "hang")
        print("inject primary hang:", out)
        st = wait_for(server, lambda st: st["failovers"] == 1 and st["primary"]["pid"] != primary,
                      "the hung primary to be replaced")
        time.sleep(0.3)
        if replies[0] <= before:
            failures.append("the client made no progress after the failover")

        rc, out = inject(server, "--replica", "primary", "explode")
        if rc == 0 or "unknown fault" not in out:
            failures.append("a bad fault was not refused clearly: %r" % out)
        rc, out = inject(server, "--replica", "5", "crash")
        if rc == 0 or "no replica" not in out:
            failures.append("a bad replica was not refused clearly: %r" % out)
        stop.set()
        t.join(10)
        if not failures:
            print("client: %d replies, all exact" % replies[0])
        server.stop(15)
    except h.TestFailure as e:
        failures.append(str(e))
    finally:
        stop.set()
        if server is not None:
            server.cleanup()
    err = server.stderr_tail(20) if server is not None else ""
    print(err)
    for name in ("declaring it hung", "took over"):
        if name not in err:
            failures.append("the run's log does not say '%s'" % name)

def fresh_run_case(d, label, fault, recovered, what, log_words, after=None, undo=None,
                   extra=(), may_not_happen=False):
    """A fresh run with one backup and the client talking: fault(server,
    status) applies the fault, recovered(status, status_before) says
    understudy dealt with it, after() runs then (e.g. thaws), and the client
    must go on; the run's log must say each of log_words. undo() cleans up
    whatever happens. may_not_happen: a fault the scheduler may absorb;
    not dealt with, the case says it proved nothing."""
    happened = [False]
    stop.clear()
    replies[0] = 0
    server = None
    try:
        server, t = start_with_client(d, 2, extra)
        time.sleep(0.3)
        st0 = server.status()
        fault(server, st0)
        t0 = time.monotonic()
        if wait_for(server, lambda st: recovered(st, st0), what,
                    required=not may_not_happen) is not None:
            happened[0] = True
            print("%s: dealt with after %.0f ms" % (label, (time.monotonic() - t0) * 1000))
        if after:
            after()
        before = replies[0]
        time.sleep(0.5)
        if replies[0] <= before + 10:
            failures.append("%s: the client made no progress afterwards" % label)
        stop.set()
        t.join(10)
        server.stop(15)
    except h.TestFailure as e:
        failures.append(str(e))
    finally:
        stop.set()
        if undo:
            undo()
        if server is not None:
            server.cleanup()
    err = server.stderr_tail(20) if server is not None else ""
    print(err)
    if may_not_happen and not happened[0]:
        print("%s: inconclusive, the fault was absorbed" % label)
        return
    for word in log_words:
        if word not in err:
            failures.append("%s: the run's log does not say '%s'" % (label, word))


FREEZER = "/sys/fs/cgroup/freezer"


def frozen_backup_case(d):
    if os.geteuid() != 0 or not os.path.isdir(FREEZER):
        print("case 4 skipped: needs root and a v1 freezer cgroup at " + FREEZER)
        return
    cg = os.path.join(FREEZER, "us-test-%d" % os.getpid())

    def freeze_backup(server, st):
        os.mkdir(cg)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(st["backups"][0]["pid"]))
        with open(os.path.join(cg, "freezer.state"), "w") as f:
            f.write("FROZEN")

    def thaw():  # thawed, a retired backup dies of the SIGKILL it was sent
        if os.path.isdir(cg):
            try:
                with open(os.path.join(cg, "freezer.state"), "w") as f:
                    f.write("THAWED")
            except OSError:
                pass

    def remove():
        thaw()
        for _ in range(50):
            if not os.path.isdir(cg):
                break
            try:
                os.rmdir(cg)
            except OSError:
                time.sleep(0.1)
    fresh_run_case(d, "frozen backup", freeze_backup,
                   lambda st, st0: all(b["state"] == "retired" for b in st["backups"]),
                   "the frozen backup to be retired", ["stuck"], after=thaw, undo=remove)


def primary_fault_case(d, label, fault, log_words, then=None, **kw):
    """A fresh run; `understudy inject --replica primary FAULT`, then(server);
    the primary must be replaced and the client go on."""
    def apply(server, st):
        rc, out = inject(server, "--replica", "primary", fault)
        print("inject primary %s: %s" % (fault, out))
        if rc != 0:
            failures.append("inject primary %s failed: %s" % (fault, out))
        if then:
            then(server)
    fresh_run_case(d, label, apply,
                   lambda st, st0: st["failovers"] == 1 and
                   st["primary"]["pid"] != st0["primary"]["pid"],
                   "the primary (%s) to be replaced" % label, log_words, **kw)


def spinning_primary_case(d):
    primary_fault_case(d, "spinning primary", "spin",
                       ["without making a call", "declaring the primary hung", "took over"])


def crash_in_accept_case(d):
    newcomer = []

    def connect(server):
        c = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        c.sendall(b"newcomer\n")
        newcomer.append(c)

    def newcomer_served():
        c = newcomer[0]
        try:
            got = c.makefile("rb").readline()
            if got != b"newcomer\n":
                failures.append("crash in accept: the new connection got %r" % got)
        except OSError as e:
            failures.append("crash in accept: the new connection: %s" % e)
        c.close()
    # the server lowers its RLIMIT_NOFILE to 1024 as memcached does: the
    # connection kept for it must still find an fd number
    primary_fault_case(d, "crash in accept", "crash-in-accept",
                       ["handed over a connection accepted by the old primary", "took over"],
                       then=connect, after=newcomer_served, extra=["1024"])


def crash_in_write_case(d):
    primary_fault_case(d, "crash in write", "crash-in-write",
                       ["bytes of output were already sent by the old primary", "took over"])


def starved_backup_case(d):
    """SCHED_IDLE still gets a sliver of the CPU, and back-pressure slows the
    primary to the backup's pace: whether it falls behind by --hang-timeout
    is up to the scheduler. Once retired, it must be named starved."""
    hog = []

    def starve_backup(server, st):
        pid = st["backups"][0]["pid"]
        with open("/proc/%d/status" % pid) as f:
            cpus = [ln.split()[1] for ln in f if ln.startswith("Cpus_allowed_list")][0]
        for tid in os.listdir("/proc/%d/task" % pid):
            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
        hog.append(subprocess.Popen(["taskset", "-c", cpus, "/bin/sh", "-c",
                                     "while :; do :; done"], start_new_session=True))

    def stop_hog():
        for p in hog:
            if p.poll() is None:
                p.kill()
                p.wait()
    fresh_run_case(d, "starved backup", starve_backup,
                   lambda st, st0: all(b["state"] == "retired" for b in st["backups"]),
                   "the starved backup to be retired", ["starved", "overloaded"],
                   after=stop_hog, undo=stop_hog, may_not_happen=True)


with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    frozen_backup_case(d)
with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    starved_backup_case(d)
with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    crash_in_write_case(d)
with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    crash_in_accept_case(d)
with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    spinning_primary_case(d)

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
