#!/usr/bin/env python3
"""A backup whose output differs from the primary's is caught and retired.

Runs tests/apps/unreplicated_rdtsc (output from rdtsc, which understudy does
not replicate) under `understudy run`, and checks that the backup reports a
divergence naming the write, retires, and that the run still ends with the
program's own status (0). Exit 0 pass, 1 fail, 77 skip.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

prog = sys.argv[1]
us = h.require_understudy()
with tempfile.TemporaryDirectory(prefix="us-div-") as d:
    p = subprocess.run([us, "run", "--control", os.path.join(d, "ctl.sock"), "--", prog],
                       capture_output=True, text=True, timeout=60, cwd=d)
err = p.stderr
print(err)
failures = []
if p.returncode != 0:
    failures.append("run exited %d, expected the program's 0" % p.returncode)
if "divergence" not in err or "would have written other bytes" not in err:
    failures.append("no divergence on the output was reported")
if "write(1" not in err:
    failures.append("the divergence report does not name the write on fd 1")
if "retired" not in err:
    failures.append("the diverged backup was not retired")
if p.stdout.count("tsc ") != 5:
    failures.append("stdout has %d lines, expected the primary's 5 (backups write nothing)"
                    % p.stdout.count("tsc "))
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
