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
     replaced, and the client's connection carry on.
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


def wait_for(server, pred, what, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        st = server.status()
        if pred(st):
            return st
        time.sleep(0.05)
    failures.append("timed out waiting for %s (status %s)" % (what, server.status()))
    return None


def start_with_client(d, replicas):
    """echo_server under understudy (--hang-timeout 300), its backups ready,
    and the client thread talking to it."""
    server = h.Server(lambda port: [server_bin, port], d, native=False, understudy=us,
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

FREEZER = "/sys/fs/cgroup/freezer"


def frozen_backup_case(d):
    if os.geteuid() != 0 or not os.path.isdir(FREEZER):
        print("case 4 skipped: needs root and a v1 freezer cgroup at " + FREEZER)
        return
    cg = os.path.join(FREEZER, "us-test-%d" % os.getpid())
    stop.clear()
    replies[0] = 0
    server = None
    try:
        server, t = start_with_client(d, 2)
        time.sleep(0.3)
        backup = server.status()["backups"][0]["pid"]
        os.mkdir(cg)
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(backup))
        with open(os.path.join(cg, "freezer.state"), "w") as f:
            f.write("FROZEN")
        t0 = time.monotonic()
        st = wait_for(server, lambda st: all(b["state"] == "retired" for b in st["backups"]),
                      "the frozen backup to be retired")
        if st is not None:
            print("frozen backup retired after %.0f ms" % ((time.monotonic() - t0) * 1000))
        # thawed, it dies of the SIGKILL it was sent
        with open(os.path.join(cg, "freezer.state"), "w") as f:
            f.write("THAWED")
        before = replies[0]
        time.sleep(0.5)
        if replies[0] <= before + 10:
            failures.append("frozen backup: the client made no progress once it was retired")
        stop.set()
        t.join(10)
        server.stop(15)
    except h.TestFailure as e:
        failures.append(str(e))
    finally:
        stop.set()
        if os.path.isdir(cg):
            try:
                with open(os.path.join(cg, "freezer.state"), "w") as f:
                    f.write("THAWED")
            except OSError:
                pass
        if server is not None:
            server.cleanup()
        if os.path.isdir(cg):
            for _ in range(50):
                try:
                    os.rmdir(cg)
                    break
                except OSError:
                    time.sleep(0.1)
    err = server.stderr_tail(20) if server is not None else ""
    print(err)
    if "stuck" not in err:
        failures.append("frozen backup: the run's log does not say it was stuck")


def spinning_primary_case(d):
    stop.clear()
    replies[0] = 0
    server = None
    try:
        server, t = start_with_client(d, 2)
        time.sleep(0.3)
        primary = server.status()["primary"]["pid"]
        rc, out = inject(server, "--replica", "primary", "spin")
        print("inject primary spin:", out)
        if rc != 0:
            failures.append("inject primary spin failed: " + out)
        t0 = time.monotonic()
        st = wait_for(server, lambda st: st["failovers"] == 1 and st["primary"]["pid"] != primary,
                      "the spinning primary to be replaced")
        if st is not None:
            print("spinning primary replaced after %.0f ms" % ((time.monotonic() - t0) * 1000))
        before = replies[0]
        time.sleep(0.5)
        if replies[0] <= before + 10:
            failures.append("spinning primary: the client made no progress after the failover")
        stop.set()
        t.join(10)
        server.stop(15)
    except h.TestFailure as e:
        failures.append(str(e))
    finally:
        stop.set()
        if server is not None:
            server.cleanup()
    err = server.stderr_tail(20) if server is not None else ""
    print(err)
    for name in ("without making a call", "declaring the primary hung", "took over"):
        if name not in err:
            failures.append("spinning primary: the run's log does not say '%s'" % name)


with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    frozen_backup_case(d)
with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    spinning_primary_case(d)

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
