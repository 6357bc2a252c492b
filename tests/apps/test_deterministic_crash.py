#!/usr/bin/env python3
"""A crash every replica repeats is the program's bug: reported, not failed over.

crash_on_input segfaults on input 'x'. Under `understudy run --replicas 3` the
primary dies, the backup replaying the same input dies the same way: the run
must say "deterministic crash", exit with 128+SIGSEGV, and not promote the
third replica. With input 'y' the same program exits 0 and prints ok once.
Exit 0 pass, 1 fail, 77 skip.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

prog = sys.argv[1]
us = h.require_understudy()
failures = []
with tempfile.TemporaryDirectory(prefix="us-apps-crash-") as d:
    def run(data):
        return subprocess.run([us, "run", "--replicas", "3", "--control",
                               os.path.join(d, "ctl.sock"), "--", prog],
                              input=data, capture_output=True, text=True, timeout=60, cwd=d)
    p = run("x\n")
    print(p.stderr)
    if p.returncode != 128 + 11:
        failures.append("crash: run exited %d, expected 139 (the program's SIGSEGV)" % p.returncode)
    if "deterministic crash" not in p.stderr:
        failures.append("crash: not reported as a deterministic crash")
    if "took over" in p.stderr:
        failures.append("crash: a backup was promoted to crash again")
    p = run("y\n")
    if p.returncode != 0 or p.stdout != "ok\n":
        failures.append("no crash: exit %d, stdout %r (expected 0 and one 'ok')"
                        % (p.returncode, p.stdout))
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
