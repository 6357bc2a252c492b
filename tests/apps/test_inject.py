#!/usr/bin/env python3
"""Faults from `understudy inject` are survived, while a client keeps talking.

echo_server under `understudy run --replicas 3 --hang-timeout 300`; one client
echoes lines without pause and checks every reply. Then:
  1. inject hang into a backup: it is declared hung and retired, the service
     goes on with one backup;
  2. inject hang into the primary: it is declared hung, the last backup takes
     over, the client's connection carries on;
  3. bad requests (an unknown fault, a replica that does not exist) get clear
     errors and change nothing.
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


with tempfile.TemporaryDirectory(prefix="us-apps-inject-") as d:
    h.install_signal_handlers()
    server = h.Server(lambda port: [server_bin, port], d, native=False, understudy=us,
                      replicas=3, run_args=["--hang-timeout", "300"])
    try:
        server.start(h.Deadline(30))
        server.wait_backup_ready(h.Deadline(10))
        t = threading.Thread(target=client, args=(server.port,), daemon=True)
        t.start()
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
        server.cleanup()
        err = server.stderr_tail(20)
    print(err)
    for name in ("declaring it hung", "took over"):
        if name not in err:
            failures.append("the run's log does not say '%s'" % name)

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
