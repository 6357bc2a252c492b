#!/usr/bin/env python3
"""Busy-waiting threads get their backup's CPU sliced; blocking ones do not.

Runs tests/apps/spin_handoff under `understudy run` twice: its two threads
hand a token back and forth by spinning on an atomic, then through a mutex
and a condition variable (--block). Checks that both runs end with the
program's status and the primary's exact output (a line every 100
hand-overs), that the supervisor said it slices the backup's CPU for the
spinning run, and that it did not for the blocking one. Exit 0 pass,
1 fail, 77 skip.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

ROUNDS = 4000
SLICING = "slicing them every"

prog = sys.argv[1]
us = h.require_understudy()
expected = "".join("handoffs %d\n" % n for n in range(100, ROUNDS + 1, 100))
failures = []
for args, sliced in (([], True), (["--block"], False)):
    with tempfile.TemporaryDirectory(prefix="us-spin-") as d:
        p = subprocess.run([us, "run", "--control", os.path.join(d, "ctl.sock"), "--", prog]
                           + args + [str(ROUNDS)],
                           capture_output=True, text=True, timeout=120, cwd=d)
    what = "spin_handoff %s" % " ".join(args + [str(ROUNDS)])
    print("%s: exit %d\n%s" % (what, p.returncode, p.stderr))
    if p.returncode != 0:
        failures.append("%s: run exited %d, expected the program's 0" % (what, p.returncode))
    if p.stdout != expected:
        failures.append("%s: stdout is not the primary's %d lines (%d lines)"
                        % (what, ROUNDS // 100, p.stdout.count("\n")))
    if "diverge" in p.stderr:
        failures.append("%s: a backup diverged" % what)
    if (SLICING in p.stderr) != sliced:
        failures.append("%s: the backup's CPU was %s" % (what, "not sliced" if sliced else "sliced"))
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
