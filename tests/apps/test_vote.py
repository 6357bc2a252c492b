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
  3. flip_target -t (a thread per connection, all taking one mutex; a flip
     changes the size of the replies that show `answer`): one connection asks
     for `answer`, two others ping ("pong <n>", which the flip does not
     touch), all without pause, and the bit is flipped in the primary. The
     backups' thread of the asking connection differs in a call, not only in
     bytes, while the faulty primary's other threads logged more operations
     on the mutex after it: the winner must stop every thread's replay there
     and go live (not wait for the rest of the faulty log, which never
     comes), and hand the program again the input the faulty primary had
     read past that point: the pinging connections must go on across the
     takeover with every pong number once, in order, and no stall; a new
     connection is served correctly; no connection is reset. (The asking
     connection got the faulty primary's wrong replies, which cannot be
     recalled; it may wait for ever, and that is counted, not failed.)
  4. The same with flip_target -e: one thread serves the three connections
     from one epoll set, so the input kept for the pinging connections must
     also make epoll_wait report them readable.
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
import threading
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


def start(d, extra=()):
    ctl, port = os.path.join(d, "ctl.sock"), h.free_port()
    out, err = os.path.join(d, "out"), os.path.join(d, "err")
    with open(out, "w") as o, open(err, "w") as e:
        run = subprocess.Popen([us, "run", "--replicas", "3", "--control", ctl, "--", prog,
                                str(port)] + list(extra), stdout=o, stderr=e, cwd=d,
                               start_new_session=True)
    return ctl, port, out, err, run


def wait_ready(ctl, out, err, run):
    deadline = time.monotonic() + 20
    while not re.search(r"addr 0x[0-9a-f]+", open(out).read()) or \
            len(status(ctl).get("backups") or []) < 2:
        if time.monotonic() > deadline or run.poll() is not None:
            raise RuntimeError("server did not start: " + open(err).read()[-500:])
        time.sleep(0.05)
    return re.search(r"addr (0x[0-9a-f]+)", open(out).read()).group(1)


def inject(ctl, flip, addr):
    r = subprocess.run([us, "inject", "--control", ctl, "--replica", flip, "bitflip",
                        "--address", addr], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("inject failed: %s %s" % (r.stdout, r.stderr))


def stop(run):
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def finish(ctl, run):
    """The run's last status, then SIGTERM and its end."""
    st = status(ctl)
    run.send_signal(signal.SIGTERM)
    run.wait(timeout=20)
    return st


def run_case(flip, d):
    ctl, port, out, err, run = start(d)
    replies, problems = [], []
    try:
        addr = wait_ready(ctl, out, err, run)
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = c.makefile("r")

        def ask(n):
            for _ in range(n):
                c.sendall(b"q\n")
                replies.append(f.readline().strip())
        ask(20)
        time.sleep(0.2)  # let the backups replay up to here
        inject(ctl, flip, addr)
        ask(1)
        time.sleep(1.0)  # the vote
        ask(20)
        c.close()
        st = finish(ctl, run)
    except Exception as ex:  # noqa: BLE001
        problems.append("%s: %s" % (type(ex).__name__, ex))
        st = {}
    finally:
        stop(run)
    return replies, st, open(err).read(), problems


GOOD_T = GOOD + " ++"   # popcount(0x5eed5eed5eed5eed) % 7 == 2
NCONN = 3


def run_threaded_case(d, flag):
    ctl, port, out, err, run = start(d, [flag])
    replies = [[] for _ in range(NCONN)]
    problems, stop_at, stalled, fresh, at_failover = [], [0.0], [], [], []
    try:
        addr = wait_ready(ctl, out, err, run)

        def client(i):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=3)
                f = c.makefile("r")
                req = b"q\nq\n" if i == 0 else b"p\np\n"
                while time.monotonic() < stop_at[0]:
                    c.sendall(req)
                    for _ in range(2):
                        line = f.readline()
                        if not line:
                            raise ConnectionError("EOF")
                        replies[i].append(line.rstrip("\n"))
                c.close()
            except socket.timeout:
                stalled.append(i)
            except Exception as ex:  # noqa: BLE001
                problems.append("connection %d: %s: %s" % (i, type(ex).__name__, ex))
        stop_at[0] = time.monotonic() + 30
        threads = [threading.Thread(target=client, args=(i,)) for i in range(NCONN)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        inject(ctl, "primary", addr)
        deadline = time.monotonic() + 15
        while not status(ctl).get("failovers") and time.monotonic() < deadline:
            time.sleep(0.05)
        at_failover[:] = [len(r) for r in replies]
        time.sleep(1.0)  # correct replies from the new primary
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        f = c.makefile("r")
        for _ in range(20):
            c.sendall(b"q\n")
            fresh.append(f.readline().rstrip("\n"))
        c.close()
        stop_at[0] = 0
        for t in threads:
            t.join(15)
        st = finish(ctl, run)
    except Exception as ex:  # noqa: BLE001
        problems.append("%s: %s" % (type(ex).__name__, ex))
        st = {}
    finally:
        stop(run)
    return replies, st, open(err).read(), problems, stalled, fresh, at_failover


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
for flag, name in (("-t", "threads"), ("-e", "epoll")):
    with tempfile.TemporaryDirectory(prefix="us-vote-") as d:
        replies, st, err, problems, stalled, fresh, at_failover = run_threaded_case(d, flag)
    print(err[-6000:])
    failures += [name + ", primary flipped: " + p for p in problems]
    if "majority vote" not in err or "the primary is faulty" not in err:
        failures.append(name + ", primary flipped: no majority vote against the primary")
    if st.get("failovers") != 1:
        failures.append(name + ", primary flipped: expected one failover, status %s" % st)
    if fresh != [GOOD_T] * 20:
        failures.append(name + ": a connection opened after the takeover got %r" % fresh[:4])
    for i, rs in enumerate(replies[1:], 1):
        after = len(rs) - (at_failover[i] if at_failover else len(rs))
        print(name + ": pinging connection %d: %d pongs, %d after the takeover%s"
              % (i, len(rs), after, ", then stalled" if i in stalled else ""))
        wrong = [j for j, r in enumerate(rs) if r != "pong %d" % (j + 1)]
        if wrong:
            failures.append(name + ": pinging connection %d: pong %d is %r (lost or repeated"
                            " input)" % (i, wrong[0] + 1, rs[wrong[0]]))
        if i in stalled or after < 50:
            failures.append(name + ": pinging connection %d stalled after the takeover (%d"
                            " pongs after it): its input was lost" % (i, after))
    for i, rs in enumerate(replies[:1]):
        bad = [j for j, r in enumerate(rs) if r != GOOD_T]
        print(name + ": connection %d: %d replies, %d wrong (from the faulty primary)%s"
              % (i, len(rs), len(bad), ", then stalled" if i in stalled else ""))
        if len(rs) < 100 or rs[0] != GOOD_T:
            failures.append(name + ": connection %d: too few replies or wrong from the start:"
                            " %d" % (i, len(rs)))
        elif bad and i not in stalled and len(rs) - 1 - bad[-1] < 20:
            failures.append(name + ": connection %d: no correct reply after the takeover"
                            " (%d wrong of %d)" % (i, len(bad), len(rs)))
for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
