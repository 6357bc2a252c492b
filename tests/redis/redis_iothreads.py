#!/usr/bin/env python3
"""Redis with io-threads under understudy: a divergence is reported, never silent.

Redis's io-threads hand work to each other through atomic counters, spinning
up to a million times before falling back to a mutex: whether a thread spun
long enough to take the mutex is a matter of timing, which record mode cannot
replay (README, "What is replicated"). What understudy must do then is the
contract's: detect it at the first call that differs, name the thread and the
call, retire the backup, and keep the primary serving.

  redis_iothreads.py            (needs $UNDERSTUDY)

redis-server --io-threads 2 --io-threads-do-reads yes runs under `understudy
run`; redis-benchmark (-c 20, SET/GET) must finish with no error. Then either
the backup is still running and caught up (it kept in step), or understudy
reported a divergence naming the thread and the call, the backup was retired
and status says so; in both cases the run stops on SIGTERM with status 0.
Exit status: 0 pass, 1 fail, 77 skip.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redis_harness import (Resp, Tracker, free_port, install_deadline,  # noqa: E402
                           install_fatal_handlers, log, set_log_prefix, spawn)

PASS, FAIL, SKIP = 0, 1, 77


def status(us, ctl):
    r = subprocess.run([us, "status", "--json", "--control", ctl], capture_output=True,
                       text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def main():
    set_log_prefix("[redis_iothreads]")
    us = os.environ.get("UNDERSTUDY")
    if not us or not shutil.which("redis-server") or not shutil.which("redis-benchmark"):
        print("SKIP: needs $UNDERSTUDY, redis-server and redis-benchmark")
        return SKIP
    install_fatal_handlers()
    install_deadline(110)
    tracker = Tracker()
    d = tempfile.mkdtemp(prefix="us-redis-io-", dir="/tmp")
    tracker.add_dir(d)
    ctl, port = os.path.join(d, "ctl.sock"), free_port()
    problems = []
    try:
        with open(os.path.join(d, "run.log"), "wb") as logf:
            run = spawn([us, "run", "--control", ctl, "--", "redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--jemalloc-bg-thread", "no", "--io-threads", "2",
                         "--io-threads-do-reads", "yes"],
                        tracker, "understudy run", stdout=logf, stderr=subprocess.STDOUT,
                        cwd=d)
        deadline = time.monotonic() + 30
        while True:
            try:
                if Resp(port, timeout=1).call("PING") == "PONG":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or run.poll() is not None:
                raise RuntimeError("redis under understudy did not answer PING")
            time.sleep(0.05)
        bench = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "20",
                                "-n", "100000", "-t", "set,get", "-q", "--csv"],
                               capture_output=True, text=True, timeout=60)
        if bench.returncode != 0 or bench.stderr.strip() or "ERR" in bench.stdout:
            problems.append("redis-benchmark failed (status %d): %s %s" % (
                bench.returncode, bench.stdout[-300:], bench.stderr[-300:]))
        log("redis-benchmark: %s" % bench.stdout.replace("\n", " ").strip())
        time.sleep(0.5)
        text = open(os.path.join(d, "run.log"), errors="replace").read()
        st = status(us, ctl)
        div = re.search(r"divergence on thread \d+ at event \d+: the program (made|called) \S+",
                        text)
        if "divergence" in text:
            if not div:
                problems.append("a divergence was reported without naming thread and call:\n"
                                + text[-2000:])
            if "retired" not in text:
                problems.append("the diverged backup was not reported retired")
            if st is None or st.get("backups"):
                problems.append("status still lists a backup after its divergence: %s" % st)
            log("divergence detected and reported: %s" % (div.group(0) if div else "?"))
        else:
            backups = (st or {}).get("backups") or []
            if len(backups) != 1 or backups[0].get("state") != "running":
                problems.append("no divergence reported, yet the backup is not running: %s" % st)
            log("no divergence: the backup kept in step (%s)" % backups)
        run.send_signal(signal.SIGTERM)
        try:
            rc = run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            problems.append("understudy run did not stop within 20 s of SIGTERM")
            rc = None
        if rc not in (0, None):
            problems.append("understudy run exited %s after SIGTERM, expected 0" % rc)
    except Exception as e:  # noqa: BLE001 - any failure of the run is the test's failure
        problems.append("%s: %s" % (type(e).__name__, e))
    finally:
        tracker.kill_all()
        tracker.close()
    for p in problems:
        print("FAIL:", p)
    return FAIL if problems else PASS


if __name__ == "__main__":
    sys.exit(main())
