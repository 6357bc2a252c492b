#!/usr/bin/env python3
"""Majority vote: with three replicas a faulty primary is outvoted.

flip_target (tests/apps/flip_target.c) runs under `understudy run
--replicas 3`; a client asks it for its `answer` word again and again.
  1. A bit of `answer` is flipped in a backup (understudy inject bitflip
     --address): that backup would reply otherwise than the primary did, the
     other backup went past the same reply as the primary did: it is outvoted
     and retired; the primary serves on, every reply unchanged.
  2. A fresh run; the bit is flipped in the primary: its next reply differs
     from what both backups would send; they agree with each other, so the
     primary is declared faulty and stopped, and a backup takes over the
     same connection: at most the faulty primary's one reply is wrong, every
     later one is the original value again, with no reset.
Exit 0 pass, 1 fail, 77 skip.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

prog = sys.argv[1]
us = h.require_understudy()
GOOD = "answer 5eed5eed5eed5eed"
failures = []


def status(ctl):
    r = subprocess.run([us, "status", "--json", "--control", ctl], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def run_case(flip, d):
    ctl, port = os.path.join(d, "ctl.sock"), h.free_port()
    out, err = os.path.join(d, "out"), os.path.join(d, "err")
    with open(out, "w") as o, open(err, "w") as e:
        run = subprocess.Popen([us, "run", "--replicas", "3", "--control", ctl, "--", prog,
                                str(port)], stdout=o, stderr=e, cwd=d, start_new_session=True)
    replies, problems = [], []
    try:
        deadline = time.monotonic() + 20
        while not re.search(r"addr 0x[0-9a-f]+", open(out).read()) or \
                len(status(ctl).get("backups") or []) < 2:
            if time.monotonic() > deadline or run.poll() is not None:
                raise RuntimeError("server did not start: " + open(err).read()[-500:])
            time.sleep(0.05)
        addr = re.search(r"addr (0x[0-9a-f]+)", open(out).read()).group(1)
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = c.makefile("r")

        def ask(n):
            for _ in range(n):
                c.sendall(b"q\n")
                replies.append(f.readline().strip())
        ask(20)
        time.sleep(0.2)  # let the backups replay up to here
        r = subprocess.run([us, "inject", "--control", ctl, "--replica", flip, "bitflip",
                            "--address", addr], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("inject failed: %s %s" % (r.stdout, r.stderr))
        ask(1)
        time.sleep(1.0)  # the vote
        ask(20)
        c.close()
        st = status(ctl)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=20)
    except Exception as ex:  # noqa: BLE001
        problems.append("%s: %s" % (type(ex).__name__, ex))
        st = {}
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    return replies, st, open(err).read(), problems


with tempfile.TemporaryDirectory(prefix="us-vote-") as d:
    replies, st, err, problems = run_case("backup", d)
print(err)
failures += ["backup flipped: " + p for p in problems]
if any(r != GOOD for r in replies) or len(replies) != 41:
    failures.append("backup flipped: the primary's replies changed: %r" % replies)
if "outvoted" not in err:
    failures.append("backup flipped: no backup was outvoted")
if "the primary is faulty" in err or st.get("failovers"):
    failures.append("backup flipped: the primary was wrongly declared faulty")
if len(st.get("backups") or []) != 1:
    failures.append("backup flipped: expected one backup left, status %s" % st)
if st.get("divergences") != 1:
    failures.append("backup flipped: status should count 1 divergence: %s" % st)

with tempfile.TemporaryDirectory(prefix="us-vote-") as d:
    replies, st, err, problems = run_case("primary", d)
print(err)
failures += ["primary flipped: " + p for p in problems]
bad = [i for i, r in enumerate(replies) if r != GOOD]
if len(replies) != 41:
    failures.append("primary flipped: %d replies, expected 41 (connection lost?)" % len(replies))
if len(bad) > 1 or (bad and bad[0] != 20):
    failures.append("primary flipped: wrong replies at %s (only the faulty primary's first reply "
                    "after the flip may be): %r" % (bad, replies))
if "majority vote" not in err or "the primary is faulty" not in err:
    failures.append("primary flipped: no majority vote against the primary was reported")
if st.get("failovers") != 1:
    failures.append("primary flipped: expected one failover, status %s" % st)
if st.get("divergences") != 2:
    failures.append("primary flipped: status should count the 2 backups' divergences: %s" % st)
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
