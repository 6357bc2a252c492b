#!/usr/bin/env python3
"""Threads that synchronise through an atomic alone: reported, never silent.

Runs tests/apps/unreplicated_atomic (its main thread reads the clock until
its worker sets an atomic flag, a matter of timing that record mode cannot
replay) under `understudy run`, and checks that the backup reports a
divergence naming the thread and the call, with the hint about
synchronisation understudy does not see, retires, and that the run still
ends with the program's own status (0) and the primary's one line of
output. Exit 0 pass, 1 fail, 77 skip.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

prog = sys.argv[1]
us = h.require_understudy()
with tempfile.TemporaryDirectory(prefix="us-atomic-") as d:
    p = subprocess.run([us, "run", "--control", os.path.join(d, "ctl.sock"), "--", prog],
                       capture_output=True, text=True, timeout=60, cwd=d)
err = p.stderr
print(err)
failures = []
if p.returncode != 0:
    failures.append("run exited %d, expected the program's 0" % p.returncode)
if not re.search(r"divergence on thread \d+ at event \d+: the program (made|called) \S+", err):
    failures.append("no divergence naming the thread and the call was reported")
if "does not see" not in err:
    failures.append("the report lacks the hint about synchronisation understudy does not see")
if "retired" not in err:
    failures.append("the diverged backup was not retired")
if len(re.findall(r"^polls \d+$", p.stdout, re.M)) != 1:
    failures.append("stdout %r, expected the primary's one line (backups write nothing)"
                    % p.stdout)
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
