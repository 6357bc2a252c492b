#!/usr/bin/env python3
"""Threads under mutexes and a condition variable, replicated, with failover.

mt_bank (4 threads, transfers between 16 accounts under per-account mutexes,
a history hash under a global mutex, a condition variable for completion)
under `understudy run`:
  1. without a fault: the backup replays the lock order so exactly that its
     output digest matches the primary's (no divergence reported), and the
     run exits with the program's status 0 (the total is invariant);
  2. the primary SIGKILLed at a random moment mid-run: the backup takes over
     with all threads going live together and finishes the work; the output
     appears once, the total is invariant, nothing diverges.
Exit 0 pass, 1 fail, 77 skip.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

prog = sys.argv[1]
us = h.require_understudy()
seed = int(os.environ.get("SEED", random.randrange(1 << 30)))
rng = random.Random(seed)
print("seed", seed)
failures = []


def check_output(name, p, err):
    lines = p.stdout.splitlines()
    if p.returncode != 0:
        failures.append("%s: exit status %d, expected 0" % (name, p.returncode))
    if lines.count("total 16000") != 1 or len(lines) != 18:
        failures.append("%s: expected 16 accounts, one total of 16000 and one history line, got %r"
                        % (name, lines[-3:]))
    for bad in ("divergence", "retired", "had not finished"):
        if bad in err:
            failures.append("%s: the run's log says '%s'" % (name, bad))


with tempfile.TemporaryDirectory(prefix="us-apps-mtbank-") as d:
    ctl = os.path.join(d, "ctl.sock")
    p = subprocess.run([us, "run", "--control", ctl, "--", prog, "20000"],
                       capture_output=True, text=True, timeout=120, cwd=d)
    print(p.stderr)
    check_output("no fault", p, p.stderr)

    out, err = os.path.join(d, "out"), os.path.join(d, "err")
    with open(out, "w") as o, open(err, "w") as e:
        run = subprocess.Popen([us, "run", "--control", ctl, "--", prog, "300000"],
                               stdout=o, stderr=e, cwd=d, start_new_session=True)
    try:
        primary = None
        deadline = time.monotonic() + 10
        while primary is None and time.monotonic() < deadline:
            r = subprocess.run([us, "status", "--json", "--control", ctl],
                               capture_output=True, text=True)
            if r.returncode == 0 and '"backups":[{' in r.stdout:
                primary = int(r.stdout.split('"primary":{"slot":0,"pid":')[1].split(",")[0])
            else:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.4))
        if primary:
            os.kill(primary, signal.SIGKILL)
        rc = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    stderr = open(err).read()
    print(stderr)

    class R:
        pass
    res = R()
    res.returncode = rc
    res.stdout = open(out).read()
    check_output("primary killed", res, stderr)
    if "took over" not in stderr and "total" not in res.stdout:
        failures.append("primary killed: no failover and no output")

for f in failures:
    print("FAIL:", f, "(seed %d)" % seed)
sys.exit(1 if failures else 0)
