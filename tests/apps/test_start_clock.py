#!/usr/bin/env python3
"""Clocks read before the shim attaches are the same in every replica.

Runs tests/apps/start_clock (its library reads CLOCK_MONOTONIC,
gettimeofday and time() in a constructor, before understudy's shim is
attached, and main writes them out) under `understudy run` with three
replicas, several times: the backups must write the primary's bytes (no
divergence, none retired), the run ends with status 0, stdout has the
primary's line once, and a time read later (replicated) is not earlier.
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
for run in range(5):
    with tempfile.TemporaryDirectory(prefix="us-clock-") as d:
        p = subprocess.run([us, "run", "--replicas", "3", "--control", os.path.join(d, "ctl.sock"),
                            "--", prog], capture_output=True, text=True, timeout=60, cwd=d)
    err = p.stderr
    print(err, end="")
    print(p.stdout, end="")
    if p.returncode != 0:
        failures.append("run %d exited %d, expected 0" % (run, p.returncode))
    if "divergence" in err or "retired" in err:
        failures.append("run %d: a backup diverged on the start times" % run)
    if p.stdout.count("start ") != 1 or "later yes" not in p.stdout:
        failures.append("run %d: stdout %r, expected one start line and 'later yes'"
                        % (run, p.stdout))
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
