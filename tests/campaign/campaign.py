#!/usr/bin/python3
"""Failure campaign: random faults into random replicas of real servers
under load, with exact client-side checks after every fault.

  campaign.py [--faults N] [--seed S]
              [--programs redis,memcached,echo,time_random,stdio_append,mt_ledger]
              [--json FILE] [--pause-bound-ms MS] [--min-backups K] [--timeout S] ...

Each round picks a program and starts it as
    $UNDERSTUDY run --replicas 3 --hang-timeout 300 --control <dir>/ctl.sock -- PROGRAM...
drives it with real clients (long-lived TCP connections plus one client that
keeps opening short ones, so that faults also land on accept and close), and
injects faults with `understudy inject` at random moments into random replicas:

  crash-primary, hang-primary   the primary is SIGKILLed / SIGSTOPped; a
                                backup must take over the same connections
  spin-primary                  the primary's next thread to make a call loops
                                without calls instead (running, not stopped):
                                it must be declared hung and replaced too
  writecrash-primary            the primary dies right after its next write
                                or send put bytes out, before logging it
                                (inject crash-in-write): those bytes must
                                reach the client once
  crash-backup, hang-backup     a backup dies / is declared hung and retired;
                                the service must not notice
  bitflip-backup                one random bit of a backup's memory; whether a
                                divergence is reported is counted (a flip that
                                changed nothing may legitimately go unseen).
                                Where: understudy's own random pick, the
                                program's data/bss, [heap], or one of the
                                program's variables (nm), at random
  bitflip-primary               one random bit of the primary's memory: this
                                may corrupt the service itself, so only
                                understudy's own survival is asserted; data
                                checks are reported for information

Clients and checks (the invariants of tests/redis/redis_failover.py,
tests/memcached/memcached_test.py and the tests/apps drivers, whose App
classes are reused as they are):
  redis         2 connections INCR one shared key (each reply above the last on
                that connection; over all connections the replies are exactly
                1..N and the key ends at N), 3 connections SET unique keys (every
                acknowledged SET readable with its value, nothing else in the
                database: DBSIZE exact)
  memcached     `memcached -t 4 -o no_lru_maintainer,no_lru_crawler` (its LRU
                threads race on the clock variable: not replicable), through
                memcached_harness.Mc: 2 connections incr their own counter
                (every reply exactly the last + 1: no gap, no repeat; a get
                every 64), 2 connections incr one shared counter (as Redis's
                INCR), 3 connections (and the churn client) set unique keys
                with memcached_test's values (binary, some 8-40 KB, flags)
                and get each back in the same write; after each fault and at
                the end every acknowledged set is read back with its value and
                flags, the next key was never stored, the counters equal their
                last acknowledged value, and the number of items stored (`stats
                slabs`: chunks in use; plain `stats` is not replicable: it reads
                other threads' variables without their lock) is exact
  echo          every reply byte-exact; no extra byte after the last reply
  time_random   per-connection seq without gap or repeat; at the end of the
                round the server's running hash is recomputed from all replies
  stdio_append  every acknowledged token in the file exactly once, at the line
                its "OK k" named
  mt_ledger     (multithreaded: a thread per connection, accounts under
                mutexes, a logger thread) every reply's sequence number given
                once; at the end of the round the replies of all connections
                are one serial history (numbers 1..N, replaying the requests
                in that order gives every reply seen) and, after SIGTERM, the
                journal file is that history line for line
After each fault: no acknowledged write lost, no effect applied twice, no
reset/EOF/stall on any connection, every connection makes progress, and the
longest gap between consecutive replies around the fault is below
--pause-bound-ms (default 1000; hang detection takes 300 ms).

Before each fault the run must have at least --min-backups running backups
(default 2, so a fault on the primary always leaves a backup behind);
otherwise the round ends (final checks, SIGTERM, exit status 0, no process
left) and a new run starts with fresh replicas. A round also ends after a
bitflip (the flipped replica is tainted).

Prints a table per fault kind: injected, survived, divergences detected, lost
writes, duplicated effects, resets (these three must be 0), worst pause; the
same per program; and where the bit flips went and what they did.
The seed is printed; --seed S repeats the same programs, fault kinds, target
replicas, bitflip addresses and delays (not the servers' own timing).
--self-check instead sabotages a few rounds behind the clients' back (a key
deleted, an extra INCR, a line appended twice, an extra request, the primary
frozen for 1.3 s, the whole service killed, a journal line removed; for
every program) and passes only if every one of them is flagged and would
have made the campaign fail (the must-be-zero count non-zero).
Exit status: 0 pass, 1 fail (a must-be-zero count or a survival check), 77
skip ($UNDERSTUDY not an executable). Every process started is killed by pid
(and process group) on exit, on failure, on Ctrl-C and at the --timeout.
"""

import argparse
import bisect
import gc
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

sys.dont_write_bytecode = True  # keep the source tree clean
_HERE = os.path.dirname(os.path.abspath(__file__))
_TESTS = os.path.dirname(_HERE)
for _d in ("lib", "redis", "memcached", "apps"):
    sys.path.insert(0, os.path.join(_TESTS, _d))

import us_harness as uh  # noqa: E402
import redis_harness as rh  # noqa: E402
import memcached_harness as mh  # noqa: E402
from memcached_test import value_for as mc_value_for  # noqa: E402
import test_echo  # noqa: E402
import test_mt_ledger  # noqa: E402
import test_stdio_append  # noqa: E402
import test_time_random  # noqa: E402

PASS, FAIL, SKIP = 0, 1, 77
mono = time.monotonic

KINDS = ["crash-primary", "crash-backup", "hang-primary", "hang-backup", "spin-primary",
         "writecrash-primary", "bitflip-backup", "bitflip-primary"]
# `understudy inject` names of the faults whose kind name says it shorter
INJECT_NAMES = {"writecrash": "crash-in-write"}
PROGRAMS = ["redis", "memcached", "echo", "time_random", "stdio_append", "mt_ledger"]
APP_BINARIES = {"echo": "echo_server", "time_random": "time_random_server",
                "stdio_append": "stdio_append_server", "mt_ledger": "mt_ledger_server"}
APP_CLASSES = {"echo": test_echo.Echo, "time_random": test_time_random.TimeRandom,
               "stdio_append": test_stdio_append.StdioAppend,
               "mt_ledger": test_mt_ledger.Ledger}
# Programs started through redis_harness.Server (a subclass for memcached);
# the others are tests/apps servers started through us_harness.Server.
SERVER_PROGRAMS = ("redis", "memcached")

# Problem categories. The first three are counted in the table and must be 0
# (except for bitflip-primary, where only "survival" fails the campaign).
COUNTED = ("lost", "dup", "reset")
FAILING = set(COUNTED) | {"stall", "pause", "corrupt", "survival", "divergence"}

REDIS_INCR_CONNS = 2
REDIS_SET_CONNS = 3
REDIS_COUNTER = "campaign:counter"
# memcached -t 4 without the LRU maintainer and crawler threads: they decide
# from memcached's clock variable, which the main thread writes without
# synchronisation (a data race record mode cannot replay); the tests in
# tests/memcached use the same options.
MEMCACHED_THREADS = 4
MEMCACHED_ARGS = ["-o", "no_lru_maintainer,no_lru_crawler"]
MEMCACHED_MB = 256
MC_OWN_INCR_CONNS = 2       # each INCRs its own counter: replies exactly +1 each time
MC_SHARED_INCR_CONNS = 2    # INCR one shared counter: replies 1..N over all, each once
MC_SET_CONNS = 3            # SET unique keys, GET each back in the same write
MC_SHARED_COUNTER = b"campaign:shared"
APP_CLIENTS = 4
APP_WINDOW = 8


def log(msg):
    rh.log(msg)


class CampaignAbort(Exception):
    pass


# --------------------------------------------------------------------------
# Per-connection bookkeeping shared by all workloads


class ConnStats:
    """Reply times of one client connection (appended by its thread only)."""

    def __init__(self, name):
        self.name = name
        self.times = []
        self.error = None       # (category, message) once the connection failed
        self.finished = False

    def last(self):
        return self.times[-1] if self.times else None


def max_gap_at(times, t0, t1, now):
    """(longest gap between consecutive replies among the gaps that overlap
    [t0, t1], the time it began); a gap still open at `now` counts up to now."""
    n = len(times)
    i = bisect.bisect_left(times, t0, 0, n)
    prev = times[i - 1] if i > 0 else None
    best, start = 0.0, None
    j = i
    while j < n:
        t = times[j]
        if prev is not None and t - prev > best:
            best, start = t - prev, prev
        if t > t1:
            return best, start
        prev = t
        j += 1
    if prev is not None and now - prev > best:
        best, start = now - prev, prev
    return best, start


def max_gap(times, t0, t1, now):
    return max_gap_at(times, t0, t1, now)[0]


def gaps_within(times, t0, t1):
    """Longest gap between consecutive replies both inside [t0, t1)."""
    n = len(times)
    i = bisect.bisect_left(times, t0, 0, n)
    j = bisect.bisect_left(times, t1, 0, n)
    best = 0.0
    for k in range(i + 1, j):
        best = max(best, times[k] - times[k - 1])
    return best


_BEAT_CHILD = """
import sys, time
while True:
    sys.stdout.write("%.6f\\n" % time.monotonic())
    sys.stdout.flush()
    time.sleep(0.005)
"""


def _steal_ticks():
    """CPU time stolen from this (virtual) machine by its host, in clock
    ticks over all CPUs (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


class Heartbeat:
    """Whether the campaign itself, or the whole machine, was frozen while
    the clients saw a pause: a thread of this process and a separate process
    each note the time every 5 ms, and /proc/stat's steal time is sampled
    every 100 ms. Only reported, next to a pause over the bound."""

    KEEP = 120.0    # seconds of history

    def __init__(self, tracker):
        self.lock = threading.Lock()
        self.inproc, self.child, self.steal = [], [], []
        self.proc = None
        try:
            self.proc = rh.spawn([sys.executable, "-c", _BEAT_CHILD], tracker, "heartbeat",
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            pass
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()
        if self.proc is not None:
            threading.Thread(target=self._read, name="heartbeat-reader", daemon=True).start()

    def _trim(self, lst, now):
        if len(lst) > 4096 and lst[0] < now - self.KEEP:
            del lst[:bisect.bisect_left(lst, now - self.KEEP)]

    def _beat(self):
        n = 0
        while True:
            t = mono()
            with self.lock:
                self.inproc.append(t)
                self._trim(self.inproc, t)
                if n % 10 == 0:
                    st = _steal_ticks()
                    if st is not None:
                        self.steal.append((t, st))
                        if len(self.steal) > 2400:
                            del self.steal[:1200]
            n += 1
            time.sleep(0.005)

    def _read(self):
        for line in self.proc.stdout:
            try:
                t = float(line)
            except ValueError:
                continue
            with self.lock:
                self.child.append(t)
                self._trim(self.child, t)

    def report(self, t0, t1):
        """What the heartbeats saw over [t0, t1], as text."""
        now = mono()
        with self.lock:
            a = max_gap(self.inproc, t0, t1, now)
            b = max_gap(self.child, t0, t1, now) if self.child else None
            before = [st for t, st in self.steal if t <= t0]
            after = [st for t, st in self.steal if t >= t1]
        if not after:           # the pause ended a moment ago: until now
            st = _steal_ticks()
            after = [st] if st is not None else []
        steal = (after[0] - before[-1]) * 1000.0 / self.hz if before and after else None
        return ("this process's heartbeat thread: longest gap %.0f ms; a separate heartbeat"
                " process: %s; CPU time stolen by the host: %s"
                % (a * 1000, "longest gap %.0f ms" % (b * 1000) if b is not None else "none",
                   "%.0f ms" % steal if steal is not None else "unknown"))

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def classify_connlost(msg):
    """Category of a connection-level failure message."""
    low = msg.lower()
    if "no reply within" in low or "no data for" in low or "timed out" in low:
        return "stall"
    return "reset"


class Workload:
    """Clients for one run. Threads append to self.problems (category, n, msg)."""

    def __init__(self, port, rng, io_timeout):
        self.port = port
        self.rng = rng
        self.io_timeout = io_timeout
        self.stop_ev = threading.Event()
        self.threads = []
        self.conns = []
        self.lock = threading.Lock()
        self.problems = []
        self.socks = []
        self.aborted = False

    def problem(self, cat, msg, n=1):
        with self.lock:
            if not self.aborted:    # after abort(): fallout, not findings
                self.problems.append((cat, n, msg))

    def take_problems(self):
        with self.lock:
            p, self.problems = self.problems, []
        return p

    def start(self):
        for t in self.threads:
            t.start()

    def live_conns(self):
        return [c for c in self.conns if c.error is None and not c.finished]

    def wait_first_replies(self, seconds):
        end = mono() + seconds
        while mono() < end:
            if all(c.times or c.error for c in self.conns):
                return True
            time.sleep(0.01)
        return False

    def stuck_since(self, t, seconds):
        """Connections (still healthy) without a reply after time t, waiting up
        to `seconds` for each to get one."""
        end = mono() + seconds
        while True:
            stuck = [c for c in self.live_conns() if not (c.last() and c.last() > t)]
            if not stuck or mono() > end:
                return stuck
            time.sleep(0.01)

    def pause(self, t0, t1):
        """(longest gap overlapping [t0, t1], its connection, the longest gap
        of every connection)."""
        now = mono()
        best, who, each = 0.0, None, {}
        self.pause_start = None
        for c in self.conns:
            if not c.times and c.error:
                continue
            g, start = max_gap_at(c.times, t0, t1,
                                  now if c.error is None and not c.finished else t1)
            each[c.name] = g
            if g > best:
                best, who, self.pause_start = g, c.name, start
        return best, who, each

    def baseline(self, t0, t1):
        """Longest gap between replies inside [t0, t1) over all connections:
        the noise level of the machine and the client before a fault."""
        return max([gaps_within(c.times, t0, t1) for c in self.conns] or [0.0])

    def shutdown_sockets(self):
        for s in list(self.socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        """Stop the clients (each finishes its batch) and join them."""
        self.stop_ev.set()
        end = mono() + self.io_timeout + 5
        for t in self.threads:
            t.join(max(0.1, end - mono()))
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            self.problem("stall", "client thread(s) %s still blocked %.0fs after stop"
                         % (alive, self.io_timeout + 5))
            self.shutdown_sockets()
            for t in self.threads:
                t.join(2)

    def abort(self):
        with self.lock:
            self.aborted = True
        self.stop_ev.set()
        self.shutdown_sockets()

    # hooks
    def midcheck(self):
        return []

    def final_check(self):
        return []

    def after_stop_check(self):
        return []

    def summary(self):
        return ""


# --------------------------------------------------------------------------
# Redis: INCR on one shared key from several connections, SETs of unique keys


class StoreWorkload(Workload):
    """What the Redis and memcached workloads share: clients that store
    connection i's next key again and again through _set_one(i, cs, conn),
    on one long connection or on short ones (connect(), 1-4 stores, close:
    so that faults also land on accept() and close()); _set_failed reports
    what ended one."""

    def _set_loop(self, i, cs, conn):
        try:
            while not self.stop_ev.is_set():
                if not self._set_one(i, cs, conn):
                    return
        except Exception as e:
            self._set_failed(i, cs, e)

    def _churn_loop(self, i, cs):
        rng = random.Random(self.salt + i)
        try:
            while not self.stop_ev.is_set():
                conn = self.connect()
                try:
                    for _ in range(rng.randint(1, 4)):
                        if not self._set_one(i, cs, conn):
                            return
                finally:
                    conn.close()
                self.stop_ev.wait(0.03)
        except Exception as e:
            self._set_failed(i, cs, e)


def repeated_values(snapshot):
    """(how many replies, over all connections, repeat a value another gave,
    the first few such values)."""
    seen, rep = set(), []
    for vals in snapshot.values():
        for v in vals:
            if v in seen:
                rep.append(v)
            seen.add(v)
    return len(rep), rep[:5]


class RedisWorkload(StoreWorkload):
    def __init__(self, port, rng, io_timeout):
        super().__init__(port, rng, io_timeout)
        self.salt = rng.randrange(1 << 30)
        self.incr_vals = {}      # conn idx -> list of INCR replies, in order
        self.set_count = {}      # conn idx -> acknowledged SETs (keys 0..n-1)
        self.resp = {}
        for i in range(REDIS_INCR_CONNS + REDIS_SET_CONNS):
            kind = "incr" if i < REDIS_INCR_CONNS else "set"
            cs = ConnStats("redis conn %d (%s)" % (i, kind))
            self.conns.append(cs)
            conn = rh.Resp(port, timeout=io_timeout)  # connected before any fault
            self.resp[i] = conn
            self.socks.append(conn.sock)
            if kind == "incr":
                self.incr_vals[i] = []
                target = self._incr_loop
            else:
                self.set_count[i] = 0
                target = self._set_loop
            self.threads.append(threading.Thread(target=target, args=(i, cs, conn),
                                                 name="redis-%s-%d" % (kind, i), daemon=True))
        i = REDIS_INCR_CONNS + REDIS_SET_CONNS
        cs = ConnStats("redis churn client (set)")
        self.conns.append(cs)
        self.set_count[i] = 0
        self.threads.append(threading.Thread(target=self._churn_loop, args=(i, cs),
                                             name="redis-churn", daemon=True))

    def key(self, i, n):
        return "k:%d:%d" % (i, n)

    def value(self, i, n):
        return "v%d.%d.%d" % (n, i, self.salt)

    def _incr_loop(self, i, cs, conn):
        vals = self.incr_vals[i]
        try:
            while not self.stop_ev.is_set():
                conn.send("INCR", REDIS_COUNTER)
                r = conn.read()
                cs.times.append(mono())
                if not isinstance(r, int) or isinstance(r, bool):
                    cs.error = ("corrupt", "%s: INCR replied %r" % (cs.name, r))
                    self.problem("corrupt", cs.error[1])
                    return
                last = vals[-1] if vals else 0
                if r <= last:
                    # the counter went back: acknowledged increments were lost
                    self.problem("lost", "%s: INCR replied %d after %d on this connection"
                                 % (cs.name, r, last), last - r + 1)
                vals.append(r)
        except rh.ConnLost as e:
            cat = classify_connlost(str(e))
            cs.error = (cat, "%s after %d replies: %s" % (cs.name, len(vals), e))
            self.problem(cat, cs.error[1])
        except Exception as e:
            cs.error = ("corrupt", "%s: %r" % (cs.name, e))
            self.problem("corrupt", cs.error[1])

    def _set_one(self, i, cs, conn):
        """One acknowledged SET of connection i's next key; False if the reply
        was wrong (already reported)."""
        n = self.set_count[i]
        conn.send("SET", self.key(i, n), self.value(i, n))
        r = conn.read()
        cs.times.append(mono())
        if r != "OK":
            cs.error = ("corrupt", "%s: SET %s replied %r" % (cs.name, self.key(i, n), r))
            self.problem("corrupt", cs.error[1])
            return False
        self.set_count[i] = n + 1
        return True

    def connect(self):
        return rh.Resp(self.port, timeout=self.io_timeout)

    def _set_failed(self, i, cs, e):
        """Reports what ended a SET client: a lost connection or anything else."""
        if isinstance(e, rh.ConnLost):
            cat = classify_connlost(str(e))
            cs.error = (cat, "%s after %d SETs: %s" % (cs.name, self.set_count[i], e))
        else:
            cat = "corrupt"
            cs.error = (cat, "%s: %r" % (cs.name, e))
        self.problem(cat, cs.error[1])

    def _check_sets(self, c, counts):
        out = []
        for i, cnt in counts.items():
            missing, wrong = [], []
            for lo in range(0, cnt, 1000):
                idx = range(lo, min(cnt, lo + 1000))
                replies = c.pipeline([("GET", self.key(i, n)) for n in idx])
                for n, r in zip(idx, replies):
                    if r is None:
                        missing.append(n)
                    elif r != self.value(i, n).encode():
                        wrong.append((n, r))
            if missing:
                out.append(("lost", len(missing), "conn %d: %d acknowledged SET(s) missing, e.g. %s"
                            % (i, len(missing), [self.key(i, n) for n in missing[:5]])))
            if wrong:
                out.append(("corrupt", len(wrong), "conn %d: %d key(s) with a wrong value, e.g. %s"
                            % (i, len(wrong), wrong[:3])))
        return out

    def _check_incr_distinct(self, snapshot):
        repeated, rep = repeated_values(snapshot)
        if repeated:
            return [("lost", repeated, "INCR returned the same value twice on different"
                     " connections %d time(s) (an acknowledged increment was lost), e.g. %s"
                     % (repeated, rep))]
        return []

    def midcheck(self):
        counts = dict(self.set_count)
        snap = {i: list(v) for i, v in self.incr_vals.items()}
        out = self._check_incr_distinct(snap)
        try:
            c = rh.Resp(self.port, timeout=self.io_timeout)
            try:
                out += self._check_sets(c, counts)
            finally:
                c.close()
        except (rh.ConnLost, rh.RespError) as e:
            out.append((classify_connlost(str(e)), 1, "read-back connection: %s" % e))
        return out

    def final_check(self):
        """Clients stopped: everything must be exact."""
        out = []
        for i, conn in self.resp.items():
            cs = self.conns[i]
            if cs.error:
                continue
            try:
                r = conn.call("PING")
                if r != "PONG":
                    out.append(("corrupt", 1, "%s: PING after the round replied %r" % (cs.name, r)))
            except (rh.ConnLost, rh.RespError) as e:
                out.append((classify_connlost(str(e)), 1, "%s: PING after the round: %s"
                            % (cs.name, e)))
        snap = {i: list(v) for i, v in self.incr_vals.items()}
        out += self._check_incr_distinct(snap)
        allv = [v for vals in snap.values() for v in vals]
        try:
            c = rh.Resp(self.port, timeout=self.io_timeout)
            try:
                counts = dict(self.set_count)
                out += self._check_sets(c, counts)
                for i, cnt in counts.items():
                    if c.call("EXISTS", self.key(i, cnt)):
                        out.append(("dup", 1, "%s exists but was never acknowledged"
                                    % self.key(i, cnt)))
                final = c.call("GET", REDIS_COUNTER)
                final = int(final) if final is not None else 0
                top = max(allv) if allv else 0
                distinct = len(set(allv))
                if top > distinct and top - distinct > max(distinct, 1000):
                    out.append(("corrupt", 1, "INCR replies reach %d with only %d distinct"
                                " values acknowledged" % (top, distinct)))
                elif top > distinct:
                    out.append(("dup", top - distinct,
                                "INCR replies reach %d but only %d distinct values were"
                                " acknowledged: %d increment(s) applied without a reply"
                                " (applied twice)" % (top, distinct, top - distinct)))
                if abs(final - top) > max(top, len(allv)):
                    out.append(("corrupt", 1, "counter is %d, the last acknowledged INCR"
                                " returned %d" % (final, top)))
                elif final > top:
                    out.append(("dup", final - top, "counter is %d, the last acknowledged INCR"
                                " returned %d" % (final, top)))
                elif final < top:
                    out.append(("lost", top - final, "counter is %d, but an INCR was"
                                " acknowledged with %d" % (final, top)))
                expect = sum(counts.values()) + (1 if allv else 0)
                size = c.call("DBSIZE")
                # a consistency check; not counted again when a key was
                # already reported missing or extra
                if size != expect and not any(x[0] in ("lost", "dup") for x in out):
                    out.append(("dup" if size > expect else "lost", abs(size - expect),
                                "DBSIZE is %d, expected exactly %d (acknowledged keys + counter)"
                                % (size, expect)))
            finally:
                c.close()
        except (rh.ConnLost, rh.RespError, ValueError) as e:
            out.append((classify_connlost(str(e)), 1, "final read-back: %s" % e))
        for conn in self.resp.values():
            conn.close()
        return out

    def summary(self):
        return "%d INCRs, %d SETs" % (sum(len(v) for v in self.incr_vals.values()),
                                     sum(self.set_count.values()))


# --------------------------------------------------------------------------
# memcached: SETs of unique keys (each read back in the same write), INCR of
# per-connection counters and of one shared counter, from several
# connections; memcached_harness.Mc is the client


def _mc_failed(wl, cs, e, what):
    """Reports what ended a memcached client connection."""
    if isinstance(e, rh.ConnLost):
        cat = classify_connlost(str(e))
        cs.error = (cat, "%s after %s: %s" % (cs.name, what, e))
    else:                   # McError (a reply of the wrong kind), garbage
        cat = "corrupt"
        cs.error = (cat, "%s after %s: %r" % (cs.name, what, e))
    wl.problem(cat, cs.error[1])


class MemcachedWorkload(StoreWorkload):
    def __init__(self, port, rng, io_timeout):
        super().__init__(port, rng, io_timeout)
        self.salt = rng.randrange(1 << 30)
        self.set_count = {}      # conn idx -> acknowledged SETs (keys 0..n-1)
        self.own_last = {}       # conn idx -> last reply of its own counter's INCR
        self.own_count = {}      # conn idx -> acknowledged INCRs of its own counter
        self.shared_vals = {}    # conn idx -> replies to INCR of the shared counter
        self.mc = {}
        setup = mh.Mc(port, timeout=io_timeout)
        try:
            keys = [MC_SHARED_COUNTER] + [self.counter(i) for i in range(MC_OWN_INCR_CONNS)]
            for k in keys:
                r = setup.set(k, b"0")
                if r != b"STORED":
                    raise mh.McError("set %s 0 replied %r" % (k.decode(), r))
        finally:
            setup.close()
        n = 0
        for kind, count, target in (("own-incr", MC_OWN_INCR_CONNS, self._own_incr_loop),
                                    ("shared-incr", MC_SHARED_INCR_CONNS,
                                     self._shared_incr_loop),
                                    ("set+get", MC_SET_CONNS, self._set_loop)):
            for _ in range(count):
                i = n
                n += 1
                cs = ConnStats("memcached conn %d (%s)" % (i, kind))
                self.conns.append(cs)
                conn = mh.Mc(port, timeout=io_timeout)  # connected before any fault
                self.mc[i] = conn
                self.socks.append(conn.sock)
                if kind == "own-incr":
                    self.own_last[i] = 0
                    self.own_count[i] = 0
                elif kind == "shared-incr":
                    self.shared_vals[i] = []
                else:
                    self.set_count[i] = 0
                self.threads.append(threading.Thread(target=target, args=(i, cs, conn),
                                                     name="mc-%s-%d" % (kind, i), daemon=True))
        cs = ConnStats("memcached churn client (set+get)")
        self.conns.append(cs)
        self.set_count[n] = 0
        self.threads.append(threading.Thread(target=self._churn_loop, args=(n, cs),
                                             name="mc-churn", daemon=True))

    @staticmethod
    def counter(i):
        return b"campaign:counter:%d" % i

    @staticmethod
    def key(i, n):
        return b"k:%d:%d" % (i, n)

    def value(self, i, n):
        """(value, flags) of key k:i:n: memcached_test's (binary, CR LF and
        NUL included, 1..700 bytes, every 61st 8-40 KB), salted per round."""
        v, flags = mc_value_for(i, n)
        return b"%d|" % self.salt + v, flags

    def _own_incr_loop(self, i, cs, conn):
        key = self.counter(i)
        try:
            while not self.stop_ev.is_set():
                r = conn.incr(key)
                cs.times.append(mono())
                if not isinstance(r, int):
                    cs.error = ("corrupt", "%s: incr %s replied %r" % (cs.name, key.decode(), r))
                    self.problem("corrupt", cs.error[1])
                    return
                last = self.own_last[i]
                if r <= last:
                    # the counter went back: acknowledged increments were lost
                    self.problem("lost", "%s: incr %s replied %d after %d (expected %d)"
                                 % (cs.name, key.decode(), r, last, last + 1), last + 1 - r)
                elif r > last + 1:
                    # increments nobody was told of: applied twice
                    self.problem("dup", "%s: incr %s replied %d after %d (expected %d)"
                                 % (cs.name, key.decode(), r, last, last + 1), r - last - 1)
                self.own_last[i] = r
                self.own_count[i] += 1
                if self.own_count[i] % 64 == 0:
                    v = conn.get(key)
                    cs.times.append(mono())
                    if v != b"%d" % r:
                        self.problem("lost" if v is None else "corrupt",
                                     "%s: get %s = %r right after incr replied %d"
                                     % (cs.name, key.decode(), v, r))
        except Exception as e:
            _mc_failed(self, cs, e, "%d incr(s)" % self.own_count[i])

    def _shared_incr_loop(self, i, cs, conn):
        vals = self.shared_vals[i]
        try:
            while not self.stop_ev.is_set():
                r = conn.incr(MC_SHARED_COUNTER)
                cs.times.append(mono())
                if not isinstance(r, int):
                    cs.error = ("corrupt", "%s: incr %s replied %r"
                                % (cs.name, MC_SHARED_COUNTER.decode(), r))
                    self.problem("corrupt", cs.error[1])
                    return
                last = vals[-1] if vals else 0
                if r <= last:
                    self.problem("lost", "%s: incr %s replied %d after %d on this connection"
                                 % (cs.name, MC_SHARED_COUNTER.decode(), r, last), last - r + 1)
                vals.append(r)
        except Exception as e:
            _mc_failed(self, cs, e, "%d incr(s)" % len(vals))

    def _set_one(self, i, cs, conn):
        """SET of connection i's next key and a GET of it, in one write;
        False if a reply was wrong (already reported)."""
        n = self.set_count[i]
        key = self.key(i, n)
        val, flags = self.value(i, n)
        conn.send_raw(mh.Mc.set_cmd(key, val, flags) + mh.Mc.get_cmd(key))
        r = conn.storage_reply()
        cs.times.append(mono())
        if r != b"STORED":
            cs.error = ("corrupt", "%s: set %s replied %r" % (cs.name, key.decode(), r))
            self.problem("corrupt", cs.error[1])
            return False
        self.set_count[i] = n + 1
        got = conn.values()
        cs.times.append(mono())
        if got != {key: (flags, val)}:
            cat = "lost" if key not in got else "corrupt"
            cs.error = (cat, "%s: get %s right after its acknowledged set returned %s"
                        % (cs.name, key.decode(),
                           {k: (f, len(v)) for k, (f, v) in got.items()} or "nothing"))
            self.problem(cat, cs.error[1])
            return False
        return True

    def connect(self):
        return mh.Mc(self.port, timeout=self.io_timeout)

    def _set_failed(self, i, cs, e):
        _mc_failed(self, cs, e, "%d set(s)" % self.set_count[i])

    def _check_sets(self, c, counts):
        out = []
        for i, cnt in counts.items():
            missing, wrong = [], []
            for lo in range(0, cnt, 100):
                idx = range(lo, min(cnt, lo + 100))
                got = c.get_multi([self.key(i, n) for n in idx])
                for n in idx:
                    k = self.key(i, n)
                    val, flags = self.value(i, n)
                    if k not in got:
                        missing.append(n)
                    elif got[k] != (flags, val):
                        wrong.append((n, got[k][0], len(got[k][1])))
            if missing:
                out.append(("lost", len(missing), "conn %d: %d acknowledged set(s) missing, e.g. %s"
                            % (i, len(missing), [self.key(i, n).decode() for n in missing[:5]])))
            if wrong:
                out.append(("corrupt", len(wrong), "conn %d: %d key(s) with a wrong value or"
                            " flags, e.g. (n, flags, length) %s" % (i, len(wrong), wrong[:3])))
        return out

    def _check_shared_distinct(self, snapshot):
        repeated, rep = repeated_values(snapshot)
        if repeated:
            return [("lost", repeated, "incr %s returned the same value twice on different"
                     " connections %d time(s) (an acknowledged increment was lost), e.g. %s"
                     % (MC_SHARED_COUNTER.decode(), repeated, rep))]
        return []

    def midcheck(self):
        counts = dict(self.set_count)
        snap = {i: list(v) for i, v in self.shared_vals.items()}
        out = self._check_shared_distinct(snap)
        try:
            c = mh.Mc(self.port, timeout=self.io_timeout)
            try:
                out += self._check_sets(c, counts)
            finally:
                c.close()
        except (rh.ConnLost, mh.McError) as e:
            out.append((classify_connlost(str(e)) if isinstance(e, rh.ConnLost) else "corrupt",
                        1, "read-back connection: %s" % e))
        return out

    def final_check(self):
        """Clients stopped: everything must be exact."""
        out = []
        for i, conn in self.mc.items():
            cs = self.conns[i]
            if cs.error:
                continue
            try:
                conn.version()      # the long-lived connections survived every fault
            except (rh.ConnLost, mh.McError) as e:
                out.append((classify_connlost(str(e)) if isinstance(e, rh.ConnLost)
                            else "corrupt", 1, "%s: version after the round: %s" % (cs.name, e)))
        snap = {i: list(v) for i, v in self.shared_vals.items()}
        out += self._check_shared_distinct(snap)
        allv = [v for vals in snap.values() for v in vals]
        try:
            c = mh.Mc(self.port, timeout=self.io_timeout)
            try:
                counts = dict(self.set_count)
                out += self._check_sets(c, counts)
                for i, cnt in counts.items():
                    if c.get_multi([self.key(i, cnt)]):
                        out.append(("dup", 1, "%s exists but was never acknowledged"
                                    % self.key(i, cnt).decode()))
                for i, last in self.own_last.items():
                    v = c.get(self.counter(i))
                    if v is None or not v.isdigit():
                        out.append(("lost", 1, "get %s = %r after the round (last incr replied"
                                    " %d)" % (self.counter(i).decode(), v, last)))
                    elif int(v) > last:
                        out.append(("dup", int(v) - last, "counter %s is %s, the last"
                                    " acknowledged incr returned %d"
                                    % (self.counter(i).decode(), v.decode(), last)))
                    elif int(v) < last:
                        out.append(("lost", last - int(v), "counter %s is %s, but an incr was"
                                    " acknowledged with %d"
                                    % (self.counter(i).decode(), v.decode(), last)))
                v = c.get(MC_SHARED_COUNTER)
                final = int(v) if v is not None and v.isdigit() else None
                top = max(allv) if allv else 0
                distinct = len(set(allv))
                if final is None:
                    out.append(("lost", 1, "get %s = %r after the round"
                                % (MC_SHARED_COUNTER.decode(), v)))
                elif top > distinct and top - distinct > max(distinct, 1000):
                    out.append(("corrupt", 1, "incr %s replies reach %d with only %d distinct"
                                " values acknowledged" % (MC_SHARED_COUNTER.decode(), top,
                                                          distinct)))
                elif top > distinct:
                    out.append(("dup", top - distinct, "incr %s replies reach %d but only %d"
                                " distinct values were acknowledged: %d increment(s) applied"
                                " without a reply (applied twice)"
                                % (MC_SHARED_COUNTER.decode(), top, distinct, top - distinct)))
                if final is not None:
                    if abs(final - top) > max(top, len(allv), 1000):
                        out.append(("corrupt", 1, "shared counter is %d, the last acknowledged"
                                    " incr returned %d" % (final, top)))
                    elif final > top:
                        out.append(("dup", final - top, "shared counter is %d, the last"
                                    " acknowledged incr returned %d" % (final, top)))
                    elif final < top:
                        out.append(("lost", top - final, "shared counter is %d, but an incr"
                                    " was acknowledged with %d" % (final, top)))
                # The items stored, from `stats slabs` (the chunks in use,
                # one per item): plain `stats` cannot be used here, memcached
                # computes some of its figures from other threads' variables
                # without their lock (read_buf_* from each worker's read
                # buffer cache, uptime from the clock variable), so a backup
                # may compute other bytes and be retired for a divergence.
                st = c.stats("slabs")
                items = sum(int(v) for k, v in st.items() if k.endswith(":used_chunks"))
                malloced = int(st.get("total_malloced", 0))
                expect = sum(counts.values()) + len(self.own_last) + 1
                if malloced > 0.9 * MEMCACHED_MB * 1024 * 1024:
                    out.append(("corrupt", 1, "memcached has %d bytes of slabs of its %d MB:"
                                " items may have been evicted, the item count check is void"
                                " (give it more memory)" % (malloced, MEMCACHED_MB)))
                # a consistency check; not counted again when a key was
                # already reported missing or extra
                elif items != expect and not any(x[0] in ("lost", "dup") for x in out):
                    out.append(("dup" if items > expect else "lost", abs(items - expect),
                                "memcached holds %d items (stats slabs: chunks in use),"
                                " expected exactly %d (acknowledged keys + counters)"
                                % (items, expect)))
            finally:
                c.close()
        except (rh.ConnLost, mh.McError, ValueError) as e:
            out.append((classify_connlost(str(e)) if isinstance(e, rh.ConnLost) else "corrupt",
                        1, "final read-back: %s" % e))
        for conn in self.mc.values():
            conn.close()
        return out

    def summary(self):
        return "%d INCRs, %d SET+GETs" % (
            sum(self.own_count.values()) + sum(len(v) for v in self.shared_vals.values()),
            sum(self.set_count.values()))


# --------------------------------------------------------------------------
# tests/apps servers, driven through the App classes of their test drivers


def _echo_classify(req, reply, history, batch_rest):
    if reply in history:
        return "dup"
    if reply in batch_rest:
        return "lost"
    return "corrupt"


_SEQ_RE = re.compile(rb"[RS] seq=(\d+)")


def _time_random_classify(req, reply, index, msg):
    m = _SEQ_RE.match(reply)
    if m:
        seq = int(m[1])
        if seq > index + 1:
            return "lost"
        if seq < index + 1:
            return "dup"
    if "not above previous gc" in msg:
        return "dup"
    return "corrupt"


def _stdio_classify(req, reply, last):
    m = re.fullmatch(rb"OK (\d+)", reply)
    if m:
        k = int(m[1])
        if k == last:
            return "dup"
        if k < last:
            return "lost"
    return "corrupt"


_LEDGER_SEQ_RE = re.compile(rb"(?:OK|NO|V|S) (\d+)(?: |$)")


def _ledger_classify(app, req, reply, msg):
    """A reply of mt_ledger_server that check_reply refused."""
    if "given twice" in msg:
        m = _LEDGER_SEQ_RE.match(reply)
        first = app.history.get(int(m[1])) if m else None
        if first is not None and first[1] == reply:
            return "dup"        # the same reply line again: sent twice
        return "lost"           # a sequence number given out again: the
                                # acknowledged operation it numbered was forgotten
    return "corrupt"


class AppWorkload(Workload):
    def __init__(self, name, app, server, workdir, seed_str, rng, io_timeout):
        super().__init__(server.port, rng, io_timeout)
        self.name = name
        self.app = app
        self.server = server
        self.workdir = workdir
        self.seed_str = seed_str
        self.mk_lock = threading.Lock()
        self.requests = 0
        self.final_ok = False
        self.ctx_args = types.SimpleNamespace(io_timeout=io_timeout, seed=0)
        self.ctx = uh.Context(self.ctx_args, server, workdir, rng)
        for cid in range(APP_CLIENTS):
            cs = ConnStats("%s client %d" % (name, cid))
            self.conns.append(cs)
            conn = self.ctx.connect("%s client %d" % (name, cid))  # before any fault
            self.socks.append(conn.sock)
            self.threads.append(threading.Thread(target=self._client, args=(cid, cs, conn),
                                                 name="%s-client-%d" % (name, cid), daemon=True))
        cs = ConnStats("%s churn client" % name)
        self.conns.append(cs)
        self.threads.append(threading.Thread(target=self._client, args=(APP_CLIENTS, cs, None),
                                             name="%s-churn" % name, daemon=True))

    def _client(self, cid, cs, conn):
        """One long-lived connection (conn), or with conn None the churn
        client: short connections of 1-3 batches each, one after the other,
        so that faults also land on accept() and close()."""
        rng = random.Random("%s/client/%d" % (self.seed_str, cid))
        st = {"chunk": 0, "index": 0}
        churn = conn is None
        sess = 0
        try:
            while not self.stop_ev.is_set():
                if churn:
                    conn = self.ctx.connect("%s churn session %d" % (self.name, sess))
                    batches = rng.randint(1, 3)
                else:
                    batches = None
                key = (cid, sess)
                st["index"] = 0
                history = []
                try:
                    while not self.stop_ev.is_set() and (batches is None or batches > 0):
                        if not self._batch(cid, cs, conn, key, rng, st, history):
                            return
                        if batches is not None:
                            batches -= 1
                    # Half-close: the server must close with no byte after the
                    # last reply (a duplicated reply would show up here).
                    try:
                        conn.finish()
                    except uh.TestFailure as e:
                        msg = str(e)
                        cat = "dup" if "extra bytes" in msg else classify_connlost(msg)
                        cs.error = (cat, msg)
                        self.problem(cat, msg)
                        return
                finally:
                    self.ctx.forget(conn)
                    conn.close()
                if not churn:
                    break
                sess += 1
                self.stop_ev.wait(0.03)
            cs.finished = True
        except uh.TestFailure as e:
            cat = classify_connlost(str(e))
            cs.error = (cat, "%s after %d replies: %s" % (cs.name, st["index"], e))
            self.problem(cat, cs.error[1])
        except Exception as e:
            cs.error = ("corrupt", "%s: unexpected %r" % (cs.name, e))
            self.problem("corrupt", cs.error[1])

    def _batch(self, cid, cs, conn, key, rng, st, history):
        """Send one pipelined batch and check its replies; False after a bad one."""
        k = rng.randint(1, APP_WINDOW)
        with self.mk_lock:
            # make_requests counts what was asked for (the final checks
            # compare with it): every batch is completed.
            reqs = self.app.make_requests(st["chunk"] * (APP_CLIENTS + 1) + cid, rng, k)
            self.requests += k
        st["chunk"] += 1
        conn.send(b"".join(r + b"\n" for r in reqs), rng)
        for j, req in enumerate(reqs):
            index = st["index"]
            reply = conn.readline("reply to request #%d" % index)
            cs.times.append(mono())
            last_ok = self._last_ok(key)
            try:
                self.app.check_reply(key, index, req, reply)
            except uh.TestFailure as e:
                cat = self._classify(req, reply, index, str(e), history, reqs[j + 1:], last_ok)
                cs.error = (cat, "%s: %s" % (cs.name, e))
                self.problem(cat, cs.error[1])
                return False
            history.append(req)
            if len(history) > 64:
                del history[:32]
            st["index"] = index + 1
        return True

    def _last_ok(self, key):
        if self.name == "stdio_append":
            return self.app.conns.get(key, 0)
        return None

    def _classify(self, req, reply, index, msg, history, batch_rest, last_ok):
        if self.name == "echo":
            return _echo_classify(req, reply, history, batch_rest)
        if self.name == "time_random":
            return _time_random_classify(req, reply, index, msg)
        if self.name == "stdio_append":
            return _stdio_classify(req, reply, last_ok or 0)
        if self.name == "mt_ledger":
            return _ledger_classify(self.app, req, reply, msg)
        return "corrupt"

    # ---- stdio_append: the file against the acknowledgements

    def _stdio_file_check(self, final):
        app = self.app
        acks = [(k, tok) for lst in list(app.acks.values()) for (k, tok) in list(lst)]
        try:
            with open(app.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return [("lost", len(acks), "cannot read %s: %s" % (app.path, e))]
        # the last piece is empty, or (mid-run) a line being written right now
        lines = data.split(b"\n")[:-1]
        counts = {}
        for ln in lines:
            counts[ln] = counts.get(ln, 0) + 1
        out = []
        acked = {tok for _, tok in acks}
        missing = [tok for tok in acked if tok not in counts]
        dups = sum(n - 1 for ln, n in counts.items() if n > 1)
        misplaced = [(k, tok) for k, tok in acks
                     if tok in counts and (k > len(lines) or lines[k - 1] != tok)]
        if missing:
            out.append(("lost", len(missing), "%d acknowledged token(s) not in the file, e.g. %s"
                        % (len(missing), missing[:3])))
        if dups:
            out.append(("dup", dups, "%d line(s) appended more than once, e.g. %s"
                        % (dups, [ln for ln, n in counts.items() if n > 1][:3])))
        if misplaced and not missing and not dups:
            out.append(("corrupt", len(misplaced), "%d token(s) not at the line their OK named,"
                        " e.g. %s" % (len(misplaced), misplaced[:3])))
        if final:
            extra = [ln for ln in counts if ln not in acked]
            if extra:
                out.append(("dup", len(extra), "%d line(s) in the file were never acknowledged,"
                            " e.g. %s" % (len(extra), extra[:3])))
        return out

    def midcheck(self):
        if self.name == "stdio_append":
            return self._stdio_file_check(final=False)
        return []

    def _final_classify(self, msg):
        m = re.search(r"server counter is (\d+) after (\d+)", msg) or \
            re.search(r"server counts (\d+) appends, clients sent (\d+)", msg) or \
            re.search(r"(\d+) data replies for (\d+) data requests", msg)
        if m:
            a, b = int(m[1]), int(m[2])
            if abs(a - b) > max(b, self.requests):
                return "corrupt", 1     # a counter that is garbage, not off by some
            if a > b:
                return "dup", a - b
            if a < b:
                return "lost", b - a
        return "corrupt", 1

    def _ledger_final_classify(self, msg):
        """mt_ledger's final check (the serial-history replay) failed."""
        hist = self.app.history
        if "sequence numbers are not" in msg and hist:
            # every client got every reply: a number nobody saw is an
            # operation applied without a request of ours (applied twice)
            return "dup", max(1, max(hist) - len(hist))
        if "given twice" in msg:
            return "lost", 1
        return "corrupt", 1

    def _ledger_garbage(self):
        """A sequence number far above the number of operations (a bit
        flipped in the primary's counter): test_mt_ledger's replay would
        build the set of every number up to it; report it instead."""
        with self.app.lock:
            hist = self.app.history
            top, n = (max(hist), len(hist)) if hist else (0, 0)
        if top - n > max(n, 1000):
            return [("corrupt", 1, "mt_ledger final check: sequence numbers reach %d with"
                     " only %d operations acknowledged" % (top, n))]
        return []

    def final_check(self):
        if self.name == "mt_ledger":
            bad = self._ledger_garbage()
            if bad:
                return bad
        try:
            self.app.final_check(self.ctx)
        except uh.TestFailure as e:
            msg = str(e)
            if "final conn" in msg and ("EOF" in msg or "no data" in msg or "connect" in msg
                                        or "reset" in msg.lower()):
                return [(classify_connlost(msg), 1, msg)]
            if self.name == "mt_ledger":
                cat, n = self._ledger_final_classify(msg)
            else:
                cat, n = self._final_classify(msg)
            return [(cat, n, "%s final check: %s" % (self.name, msg))]
        self.final_ok = True
        return []

    def _ledger_journal_check(self):
        """After SIGTERM the journal file must be the clients' serial history,
        line for line, once (test_mt_ledger.Ledger.after_stop_check)."""
        try:
            self.app.after_stop_check(self.ctx)
        except uh.TestFailure as e:
            msg = str(e)
            m = re.search(r"journal has (\d+) lines, the clients saw (\d+)", msg)
            if m:
                a, b = int(m[1]), int(m[2])
                if a > b:
                    return [("dup", a - b, "mt_ledger journal: %s" % msg)]
                return [("lost", b - a, "mt_ledger journal: %s" % msg)]
            return [("corrupt", 1, "mt_ledger journal: %s" % msg)]
        except OSError as e:
            return [("lost", 1, "mt_ledger journal: %s" % e)]
        return []

    def after_stop_check(self):
        if self.name == "mt_ledger":
            # only against a complete, verified history (after a stall the
            # clients' last replies are missing from it)
            return self._ledger_journal_check() if self.final_ok else []
        if self.name != "stdio_append":
            return []
        out = self._stdio_file_check(final=True)
        if not out:
            try:
                self.app.after_stop_check(self.ctx)
            except uh.TestFailure as e:
                out.append(("corrupt", 1, "stdio_append file check: %s" % e))
        return out

    def summary(self):
        return "%d requests" % self.requests


# --------------------------------------------------------------------------
# A program under `understudy run`


class Target:
    """Common face of a redis (redis_harness.Server) or tests/apps
    (us_harness.Server) run."""

    def __init__(self, ctx, program, rnd):
        self.ctx = ctx
        self.program = program
        self.workdir = tempfile.mkdtemp(prefix="us-campaign-%s-" % program,
                                        dir="/tmp" if len(tempfile.gettempdir()) > 40 else None)
        self.run_args = ["--hang-timeout", str(ctx.args.hang_timeout)] + ctx.args.run_arg
        self.label = "round %d %s" % (rnd, program)
        self.srv = None
        self.app = None
        self.stopped = False

    # ---- start
    def start(self):
        a = self.ctx.args
        if self.program in SERVER_PROGRAMS:
            kw = dict(native=False, understudy=self.ctx.us, replicas=a.replicas,
                      run_args=self.run_args, label=self.label, workdir=self.workdir)
            if self.program == "redis":
                self.srv = rh.Server(self.ctx.tracker, **kw)
            else:
                self.srv = mh.McServer(self.ctx.tracker, threads=MEMCACHED_THREADS,
                                       memory_mb=MEMCACHED_MB, extra_args=MEMCACHED_ARGS, **kw)
            self.srv.start(timeout=20.0)
            self.log_path = self.srv.logpath
        else:
            binary = self.ctx.app_bins[self.program]
            self.app = APP_CLASSES[self.program]()
            app, wd = self.app, self.workdir
            self.srv = uh.Server(lambda port: app.server_argv(binary, port, wd), wd,
                                 native=False, understudy=self.ctx.us, replicas=a.replicas,
                                 run_args=self.run_args)
            self.log_path = self.srv.stderr_path
            self.srv.start(uh.Deadline(20.0))
            self.ctx.tracker.add(self.srv.proc.pid, self.label, proc=self.srv.proc, leader=True)
            st, err = self.wait_status(lambda s: len(running_backups(s)) == a.replicas - 1,
                                       15.0)
            if st is None:
                raise rh.StartError("%s: backups never all running: %s" % (self.label, err))
        self.track()

    @property
    def port(self):
        return self.srv.port

    @property
    def ctl(self):
        return self.srv.ctl

    @property
    def proc(self):
        return self.srv.proc

    def alive(self):
        return self.srv.proc is not None and self.srv.proc.poll() is None

    def track(self):
        """Register every replica/descendant with the tracker (killed by pid
        at exit, even if we are SIGKILLed: the tracker's reaper does it)."""
        if self.alive():
            for pid in rh.descendants(self.srv.proc.pid):
                self.ctx.tracker.add(pid, "%s descendant" % self.label)

    def status(self, timeout=3.0):
        """(status dict, None) or (None, error string)."""
        try:
            st = self.srv.status(timeout=timeout)
            for pid in status_pids(st):
                self.ctx.tracker.add(pid, "%s replica" % self.label)
            return st, None
        except rh.Deadline:
            raise
        except Exception as e:  # RuntimeError, TestFailure, TimeoutExpired
            return None, str(e) or repr(e)

    def wait_status(self, pred, timeout):
        end = mono() + timeout
        last, err = None, None
        while True:
            if not self.alive():
                return None, "understudy run exited with status %s" % self.srv.proc.returncode
            st, err = self.status(timeout=max(0.5, min(3.0, end - mono())))
            if st is not None:
                last = st
                if pred(st):
                    return st, None
            if mono() > end:
                return None, "timed out after %.1fs (last status %s; last error %s)" % (
                    timeout, json.dumps(last), err)
            time.sleep(0.01)

    def inject(self, who, fault, address=None):
        extra = ["--address", "%x" % address] if address else []
        try:
            r = subprocess.run([self.ctx.us, "inject", "--control", self.ctl, "--replica",
                                str(who), fault] + extra, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=5)
            return r.returncode, (r.stdout + r.stderr).strip()
        except subprocess.TimeoutExpired:
            return -1, "understudy inject timed out after 5s"

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, off):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(off)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def understudy_lines(self, off=0):
        return [ln for ln in self.log_since(off).splitlines() if ln.startswith("understudy")]

    # ---- stop
    def stop(self, expect_dead=False, timeout=10.0):
        """SIGTERM; returns a list of problems (exit status, leftovers)."""
        self.stopped = True
        out = []
        if self.program in SERVER_PROGRAMS:
            out += self.srv.stop(timeout=timeout, expect_dead=expect_dead)
            out = [p.split("\n")[0] for p in out if not p.startswith(self.label + " log tail")]
        else:
            if self.alive():
                self.track()
                try:
                    rc = self.srv.stop(timeout)
                    if rc != 0:
                        out.append("%s exited with status %s after SIGTERM (expected 0)"
                                   % (self.label, rc))
                except uh.TestFailure as e:
                    out.append("%s: %s" % (self.label, e))
            elif not expect_dead:
                out.append("%s had already exited with status %s"
                           % (self.label, self.srv.proc.returncode))
            self.srv.cleanup()
            if self.srv.leaks:
                out.append("%s: processes left behind: %s" % (self.label, ", ".join(self.srv.leaks)))
        return out

    def cleanup(self):
        if self.srv is None:
            return
        try:
            self.srv.cleanup()
        except rh.Deadline:
            raise
        except Exception as e:
            log("cleanup error (%s): %r" % (self.label, e))

    def remove_dir(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


def running_backups(st):
    return [b for b in (st.get("backups") or []) if b.get("state") == "running"]


def status_pids(st):
    pids = []
    prim = st.get("primary") or {}
    for k in ("pid", "keeper_pid"):
        if prim.get(k):
            pids.append(int(prim[k]))
    for b in st.get("backups") or []:
        if b.get("pid"):
            pids.append(int(b["pid"]))
    return [p for p in pids if p > 1]


# --------------------------------------------------------------------------
# Faults


class Fault:
    def __init__(self, n, rnd, program, kind):
        self.n, self.round, self.program, self.kind = n, rnd, program, kind
        self.who = None
        self.pid = None
        self.inject_reply = ""
        self.t_inject = None
        self.recovery_ms = None
        self.pause_ms = 0.0
        self.pause_conn = None
        self.baseline_ms = 0.0
        self.area = None
        self.where = None
        self.failovers0 = 0
        self.primary0 = None
        self.outcome = ""
        self.divergence = False
        self.late_divergence = False
        self.lost = self.dup = self.resets = 0
        self.problems = []      # (category, message)
        self.log_lines = []

    def add(self, cat, msg, n=1):
        if self.kind == "bitflip-primary" and cat not in ("survival",):
            cat_shown = "info:" + cat
        else:
            cat_shown = cat
        self.problems.append((cat_shown, msg))
        if cat == "lost":
            self.lost += n
        elif cat == "dup":
            self.dup += n
        elif cat == "reset":
            self.resets += n

    def failing(self):
        return [(c, m) for c, m in self.problems if c in FAILING]

    @property
    def survived(self):
        return not self.failing()

    def as_dict(self):
        return {"n": self.n, "round": self.round, "program": self.program, "kind": self.kind,
                "replica": self.who, "pid": self.pid, "bitflip_area": self.area,
                "bitflip_where": self.where,
                "inject_reply": self.inject_reply,
                "recovery_ms": self.recovery_ms, "pause_ms": round(self.pause_ms, 1),
                "pause_conn": self.pause_conn, "baseline_gap_ms": round(self.baseline_ms, 1),
                "outcome": self.outcome,
                "divergence": self.divergence, "late_divergence": self.late_divergence,
                "lost": self.lost, "dup": self.dup, "resets": self.resets,
                "survived": self.survived, "problems": self.problems,
                "log": self.log_lines}


BITFLIP_AREAS = ("anywhere", "data", "heap", "symbol")
_nm_cache = {}


def data_symbols(exe):
    """[(offset, size, name)] of the data/bss variables of an ELF file, from
    `nm -S` (empty if it is stripped or nm is missing)."""
    if exe not in _nm_cache:
        syms = []
        try:
            r = subprocess.run(["nm", "-S", "--defined-only", exe], capture_output=True,
                               text=True, timeout=10, stdin=subprocess.DEVNULL)
            for line in r.stdout.splitlines():
                f = line.split()
                if len(f) == 4 and f[2] in "dDbB" and int(f[1], 16) > 0:
                    syms.append((int(f[0], 16), int(f[1], 16), f[3]))
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        _nm_cache[exe] = syms
    return _nm_cache[exe]


def pick_address(pid, area, rng):
    """(address, description) of a random byte of `pid`: in one of the
    program's own variables (area "symbol"), in the program binary's writable
    data and bss ("data") or in [heap]; None if there is no such memory."""
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        with open("/proc/%d/maps" % pid) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    if area == "symbol":
        path = exe[:-len(" (deleted)")] if exe.endswith(" (deleted)") else exe
        syms = data_symbols(path)
        base = None
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip() == exe and int(parts[2], 16) == 0:
                base = int(parts[0].split("-")[0], 16)
                break
        if not syms or base is None:
            return None
        off, size, name = rng.choice(syms)
        k = rng.randrange(size)
        return base + off + k, "%s+%d" % (name, k)
    ranges, prev_exe = [], False
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        perms = parts[1]
        path = parts[5].strip() if len(parts) > 5 else ""
        writable = perms[0] == "r" and perms[1] == "w" and perms[3] == "p"
        if writable and area == "data" and (path == exe or (prev_exe and not path)):
            ranges.append((lo, hi))
        elif writable and area == "heap" and path == "[heap]":
            ranges.append((lo, hi))
        prev_exe = writable and path == exe
    total = sum(hi - lo for lo, hi in ranges)
    if not total:
        return None
    pick = rng.randrange(total)
    for lo, hi in ranges:
        if pick < hi - lo:
            return lo + pick, area
        pick -= hi - lo
    return None


def div_lines(text):
    return [ln for ln in text.splitlines() if "diverge" in ln]


def take_workload_problems(fault, wl):
    for cat, n, msg in wl.take_problems():
        fault.add(cat, msg, n)


def inject_fault(ctx, target, wl, fault, st):
    """Inject `fault.kind` now, wait for understudy to deal with it, and run
    the checks. st: the status just before."""
    a = ctx.args
    kind = fault.kind
    fault_name, role = kind.split("-")
    prim = st["primary"]
    backups = running_backups(st)
    if role == "primary":
        fault.who, fault.pid = "primary", int(prim["pid"])
    else:
        b = ctx.round_rng.choice(backups)
        fault.who, fault.pid = str(b["slot"]), int(b["pid"])
    pid_start = rh.proc_start(fault.pid)
    failovers0 = fault.failovers0 = int(st.get("failovers", 0))
    fault.primary0 = int(prim["pid"])
    hang_s = a.hang_timeout / 1000.0

    address = None
    if fault_name == "bitflip":
        fault.area = ctx.round_rng.choice(a.bitflip_areas)
        if fault.area == "symbol":
            picked = pick_address(fault.pid, "symbol", ctx.round_rng)
            if picked is None:      # a stripped binary (redis-server)
                fault.area = "data"
            else:
                address, fault.where = picked
        if fault.area in ("data", "heap"):
            picked = pick_address(fault.pid, fault.area, ctx.round_rng)
            if picked is None:
                fault.area = "anywhere"
            else:
                address, fault.where = picked
    fault.t_inject = t0 = mono()
    rc, out = target.inject(fault.who, INJECT_NAMES.get(fault_name, fault_name), address)
    fault.inject_reply = out
    log("fault #%d (round %d, %s): %s%s of %s pid %d -> %s"
        % (fault.n, fault.round, target.program, fault_name,
           " (%s)" % (fault.where or fault.area) if fault.area else "",
           "the primary" if role == "primary" else "backup slot " + fault.who, fault.pid, out))
    if rc != 0 or not out.startswith("ok"):
        fault.add("survival", "understudy inject %s %s failed (%s): %s"
                  % (fault.who, fault_name, rc, out))
        return None

    t_rec = None
    if kind in ("crash-primary", "hang-primary", "spin-primary", "writecrash-primary"):
        old = fault.pid

        def promoted(s):
            p = int((s.get("primary") or {}).get("pid") or 0)
            return int(s.get("failovers", 0)) > failovers0 and p and p != old
        st2, err = target.wait_status(promoted, hang_s + 5.0)
        t_rec = mono()
        if st2 is None:
            fault.add("survival", "no failover after %s of the primary pid %d: %s"
                      % (fault_name, old, err))
            return None
        newp = int(st2["primary"]["pid"])
        fault.recovery_ms = round((t_rec - t0) * 1000)
        fault.outcome = "failover to pid %d (%d ms by status; supervisor: %s ms)" % (
            newp, fault.recovery_ms, st2.get("last_failover_ms"))
        if newp not in [int(b["pid"]) for b in backups]:
            fault.add("survival", "new primary pid %d was not a running backup before (%s)"
                      % (newp, [b["pid"] for b in backups]))
        if int(st2["failovers"]) != failovers0 + 1:
            fault.add("survival", "failovers went from %d to %s after one fault"
                      % (failovers0, st2["failovers"]))
        if rh.proc_alive(old, pid_start):
            fault.add("survival", "the old primary pid %d is still alive after the failover" % old)
    elif kind in ("crash-backup", "hang-backup"):
        gone_pid = fault.pid

        def retired(s):
            return gone_pid not in [int(b["pid"]) for b in running_backups(s)]
        st2, err = target.wait_status(retired, hang_s + 5.0)
        t_rec = mono()
        if st2 is None:
            fault.add("survival", "the %s backup pid %d was never retired: %s"
                      % ("crashed" if fault_name == "crash" else "hung", gone_pid, err))
            return None
        fault.recovery_ms = round((t_rec - t0) * 1000)
        fault.outcome = "backup retired (%d ms by status)" % fault.recovery_ms
        if int(st2.get("failovers", 0)) != failovers0 or \
                int(st2["primary"]["pid"]) != int(prim["pid"]):
            fault.add("survival", "a backup fault changed the primary: %s -> %s"
                      % (json.dumps(st), json.dumps(st2)))
        end = mono() + 3.0
        while rh.proc_alive(gone_pid, pid_start) and mono() < end:
            time.sleep(0.01)
        if rh.proc_alive(gone_pid, pid_start):
            fault.add("survival", "the %s backup pid %d is still alive (state %s) 3 s after it"
                      " was retired" % (fault_name, gone_pid, rh.proc_state(gone_pid)))
    else:
        # bitflips: let the traffic run, then look at what happened
        time.sleep(a.bitflip_settle)
        t_rec = mono()
    return t_rec


def post_fault_checks(ctx, target, wl, fault, t_rec, off):
    """Progress, pause, data checks and divergence reports after a fault."""
    a = ctx.args
    kind = fault.kind
    t0 = fault.t_inject
    if t_rec is None:
        t_rec = mono()
    # every connection must make progress after the recovery
    stuck = wl.stuck_since(t_rec, a.progress_timeout)
    live = len(wl.live_conns())
    take_workload_problems(fault, wl)
    if stuck:
        fault.add("stall", "%d of %d connection(s) got no reply in the %.1fs after the fault"
                  " was dealt with: %s (load average %s)" % (
                      len(stuck), live, a.progress_timeout,
                      "; ".join("%s: last reply %.0f ms after the injection" % (
                          c.name, (c.last() - t0) * 1000 if c.last() else float("nan"))
                          for c in stuck), loadavg())
                  + ("; %s" % ctx.heartbeat.report(t_rec, mono()) if ctx.heartbeat else ""))
    gap, who, each = wl.pause(t0, t_rec)
    fault.pause_ms, fault.pause_conn = gap * 1000.0, who
    fault.baseline_ms = wl.baseline(t0 - 1.0, t0) * 1000.0
    if fault.pause_ms > a.pause_bound_ms:
        start = getattr(wl, "pause_start", None)
        fault.add("pause", "longest gap between replies around the fault: %.0f ms on %s"
                  " (bound %d ms; %s; other connections: %s; longest gap in the second before"
                  " the fault: %.0f ms; load average %s)"
                  % (fault.pause_ms, who, a.pause_bound_ms,
                     "it began %.0f ms %s the injection" % (
                         abs(t0 - start) * 1000, "before" if start < t0 else "after")
                     if start is not None else "no reply before it",
                     ", ".join("%.0f" % (g * 1000) for n, g in each.items() if n != who),
                     fault.baseline_ms, loadavg())
                  + ("; over the same %.0f ms: %s" % (fault.pause_ms, ctx.heartbeat.report(
                      start, start + gap)) if start is not None and ctx.heartbeat else ""))
    # a little more traffic, then read back what was acknowledged (unless
    # the service is stuck: the read-back would only wait out its timeout)
    time.sleep(ctx.round_rng.uniform(0.05, 0.25))
    if not stuck or len(stuck) < live:
        for cat, n, msg in wl.midcheck():
            fault.add(cat, msg, n)
    take_workload_problems(fault, wl)
    if kind.startswith("bitflip"):
        time.sleep(0.2)  # let the backups replay the read-back
    # what did understudy say?
    st, err = target.status()
    text = target.log_since(off)
    fault.log_lines = [ln for ln in text.splitlines()
                       if ln.startswith("understudy") and "replayed event" not in ln][:20]
    divs = div_lines(text)
    fault.divergence = bool(divs)
    if kind == "bitflip-backup":
        died = [ln for ln in text.splitlines()
                if ("backup pid %d died" % fault.pid) in ln or
                ("backup pid %d retired" % fault.pid) in ln]
        if divs:
            fault.outcome = "divergence reported: " + divs[0].strip()[:160]
        elif died:
            fault.outcome = "backup died: " + died[0].strip()[:160]
        elif st is not None and fault.pid not in [int(b["pid"]) for b in running_backups(st)]:
            fault.outcome = "backup gone without a report"
        else:
            fault.outcome = "no visible effect (backup still running)"
        if st is None and target.alive():
            fault.add("survival", "status does not answer after a bitflip into a backup: %s" % err)
        # the flip must stay inside that backup: no other replica may diverge,
        # and the primary must go on
        others = [ln for ln in divs
                  if re.match(r"understudy\[(\d+)/", ln) and
                  int(re.match(r"understudy\[(\d+)/", ln).group(1)) != fault.pid]
        if others:
            fault.add("divergence", "a bitflip into backup pid %d made another replica diverge:"
                      " %s" % (fault.pid, others[0].strip()))
        if st is not None and (int(st.get("failovers", 0)) != fault.failovers0 or
                               int(st["primary"]["pid"]) != fault.primary0):
            fault.add("survival", "a bitflip into backup pid %d changed the primary: %s"
                      % (fault.pid, json.dumps(st)))
    elif kind == "bitflip-primary":
        outcome = []
        if st is None:
            if target.alive():
                fault.add("survival", "status does not answer after a bitflip into the primary"
                          " while understudy run is alive: %s" % err)
            else:
                outcome.append("service ended: understudy run exited with status %s"
                               % target.proc.returncode)
        else:
            if int(st.get("failovers", 0)) > 0 and int(st["primary"]["pid"]) != fault.pid:
                outcome.append("primary died, failover to pid %s" % st["primary"]["pid"])
        if divs:
            outcome.append("divergence reported: " + divs[0].strip()[:160])
        bad = [c for c, _ in fault.problems if c.startswith("info:")]
        if bad:
            outcome.append("client-visible effects: %s" % ",".join(sorted(set(c[5:] for c in bad))))
        fault.outcome = "; ".join(outcome) or "no visible effect"
    else:
        if divs:
            fault.add("divergence", "divergence reported after a %s: %s" % (kind, divs[0].strip()))
        if st is None:
            fault.add("survival", "status does not answer after the fault: %s" % err)
        else:
            # with min-backups >= 2 before a fault, one backup must be left
            need = 1 if ctx.args.min_backups >= 2 else 0
            if len(running_backups(st)) < need:
                fault.add("survival", "no running backup left after one fault: %s"
                          % json.dumps(st))
        if not target.alive():
            fault.add("survival", "understudy run exited (status %s) after a %s"
                      % (target.proc.returncode, kind))


# --------------------------------------------------------------------------
# Rounds


class Campaign:
    def __init__(self, args, us, app_bins):
        self.args = args
        self.us = us
        self.app_bins = app_bins
        self.rng = random.Random(args.seed)
        self.round_rng = self.rng
        self.start_failures = 0
        self.heartbeat = None
        self.tracker = rh.Tracker()
        self.faults = []
        self.round_problems = []     # problems not attributable to a fault
        self.targets = []
        self.workloads = []
        self.rounds = 0
        self.kept_dirs = []
        self.t_start = mono()
        self.deadline = self.t_start + args.timeout - 20.0  # time to clean up and report
        kinds = []
        while len(kinds) < args.faults:
            cyc = list(args.kinds)
            self.rng.shuffle(cyc)
            kinds += cyc
        self.kinds = kinds[:args.faults]
        self.prog_cycle = []
        self.programs_plan = None
        self.sabotage = {}          # fault number -> Sabotage (self-check only)

    def next_program(self):
        if self.programs_plan:
            return self.programs_plan.pop(0)
        if not self.prog_cycle:
            self.prog_cycle = list(self.args.programs)
            self.rng.shuffle(self.prog_cycle)
        return self.prog_cycle.pop()

    def time_left(self):
        return self.deadline - mono()

    def run(self):
        fault_i = 0
        while fault_i < len(self.kinds):
            if self.time_left() < 8.0:
                self.round_problems.append(("info", "time budget exhausted: %d of %d faults"
                                            " injected" % (fault_i, len(self.kinds))))
                log("time budget exhausted after %d of %d faults" % (fault_i, len(self.kinds)))
                break
            self.rounds += 1
            fault_i = self.run_round(self.rounds, self.next_program(), fault_i)

    def run_round(self, rnd, program, fault_i):
        a = self.args
        rrng = random.Random("%d/round/%d" % (a.seed, rnd))
        self.round_rng = rrng
        target = Target(self, program, rnd)
        self.targets.append(target)
        wl = None
        round_faults = []
        ok = True
        try:
            try:
                target.start()
            except (rh.StartError, uh.TestFailure, RuntimeError) as e:
                self.round_problems.append(("survival", "round %d (%s) did not start: %s"
                                            % (rnd, program, e)))
                ok = False
                self.start_failures += 1
                if self.start_failures >= 3:
                    raise CampaignAbort("%d runs in a row did not start" % self.start_failures)
                return fault_i
            try:
                if program == "redis":
                    wl = RedisWorkload(target.port, rrng, a.io_timeout)
                elif program == "memcached":
                    wl = MemcachedWorkload(target.port, rrng, a.io_timeout)
                else:
                    wl = AppWorkload(program, target.app, target.srv, target.workdir,
                                     "%d/round/%d" % (a.seed, rnd), rrng, a.io_timeout)
            except (rh.ConnLost, rh.RespError, mh.McError, uh.TestFailure) as e:
                # the clients could not connect to a service that had started
                self.round_problems.append(("survival", "round %d (%s): the clients could not"
                                            " connect: %s" % (rnd, program, e)))
                ok = False
                self.start_failures += 1
                if self.start_failures >= 3:
                    raise CampaignAbort("%d runs in a row did not start" % self.start_failures)
                return fault_i
            self.start_failures = 0
            self.workloads.append(wl)
            wl.start()
            if not wl.wait_first_replies(5.0):
                self.round_problems.append(("stall", "round %d (%s): clients got no first reply"
                                            " within 5 s" % (rnd, program)))
            log("round %d: %s on port %d, %d connections" % (rnd, program, target.port,
                                                            len(wl.conns)))
            while fault_i < len(self.kinds) and self.time_left() > 6.0:
                st, err = target.status()
                if st is None:
                    self.round_problems.append(("survival", "round %d: status failed before a"
                                                " fault: %s" % (rnd, err)))
                    ok = False
                    break
                if len(running_backups(st)) < a.min_backups:
                    break
                kind = self.kinds[fault_i]
                fault_i += 1
                fault = Fault(fault_i, rnd, program, kind)
                self.faults.append(fault)
                round_faults.append(fault)
                # a random moment, with traffic running
                time.sleep(rrng.uniform(a.min_delay, a.max_delay))
                take_workload_problems(fault, wl)
                st, err = target.status()
                if st is None or len(running_backups(st)) < max(1, a.min_backups):
                    fault.add("survival", "before the fault: %s" % (err or json.dumps(st)))
                    break
                off = target.log_size()
                sabotage = self.sabotage.get(fault.n)
                if sabotage:
                    sabotage.before(target, wl, st)
                t_rec = inject_fault(self, target, wl, fault, st)
                if sabotage:
                    sabotage.after(target, wl)
                post_fault_checks(self, target, wl, fault, t_rec, off)
                self.report_fault(fault)
                if not target.alive() or kind.startswith("bitflip"):
                    break
                if fault.failing():
                    break
            # ---- end of round: exact final checks, clean shutdown
            last = round_faults[-1] if round_faults else None
            tainted = any(f.kind == "bitflip-primary" for f in round_faults)
            off_end = target.log_size()
            # A service that already stalled or died: its findings are in;
            # do not wait out every client's I/O timeout as well.
            stalled = (not target.alive() or
                       (last is not None and any(c.split(":")[-1] in ("stall", "survival")
                                                 for c, _ in last.problems)))
            final = []
            if stalled:
                # the clients' own timeouts repeat the stall already reported
                final += [x for x in wl.take_problems() if x[0] != "stall"]
                wl.abort()
                for t in wl.threads:
                    t.join(2.0)
            else:
                wl.stop()
                if target.alive():
                    final += wl.final_check()
                final += [(c, n, m) for c, n, m in wl.take_problems()]
            stop_problems = target.stop(expect_dead=tainted or stalled,
                                        timeout=3.0 if stalled else 10.0)
            if target.alive() is False:
                for f in round_faults:
                    sab = self.sabotage.get(f.n)
                    if sab:
                        sab.after_stop(target, wl)
                final += wl.after_stop_check()
            # late divergence reports (a tainted backup that ended differently)
            late = div_lines(target.log_since(off_end))
            sink = last if last is not None else None
            for cat, n, msg in final:
                if sink:
                    sink.add(cat, "end of round: " + msg, n)
                else:
                    self.round_problems.append((cat, "round %d: %s" % (rnd, msg)))
            for p in stop_problems:
                # what understudy answers for: no process outlives the run.
                # After a bitflip into the primary, the program's own exit
                # status or a program that ignores SIGTERM is its own affair.
                leak = "left behind" in p or "still alive" in p
                if sink:
                    sink.add("survival" if leak or sink.kind != "bitflip-primary" else "other",
                             "shutdown: " + p)
                else:
                    self.round_problems.append(("survival", "round %d: shutdown: %s" % (rnd, p)))
            if sink and late:
                if sink.kind == "bitflip-backup":
                    if not sink.divergence:
                        sink.late_divergence = True
                        sink.outcome += "; divergence reported at shutdown: " + late[0][:120]
                elif sink.kind != "bitflip-primary":
                    sink.add("divergence", "divergence reported at shutdown: " + late[0])
            log("round %d (%s) done: %s; %s" % (rnd, program, wl.summary(),
                                               "final checks clean" if not final and
                                               not stop_problems else
                                               "%d final problem(s)" % (len(final) +
                                                                        len(stop_problems))))
            for f in round_faults:
                if f.failing():
                    ok = False
            if any(c in FAILING for c, _ in self.round_problems):
                ok = False
            return fault_i
        finally:
            if wl is not None:
                wl.abort()
            target.cleanup()
            # done with: its processes are gone; forget its clients' records
            # (hundreds of rounds of them would take gigabytes)
            if wl is not None and wl in self.workloads:
                self.workloads.remove(wl)
            if target in self.targets:
                self.targets.remove(target)
            if isinstance(target.srv, uh.Server):
                with uh._registry_lock:     # us_harness's cleanup list holds it too
                    if target.srv in uh._registry:
                        uh._registry.remove(target.srv)
            # the cyclic GC is off while clients run (a full collection over
            # the acknowledgements stalls every client thread for 100s of ms)
            gc.collect()
            # (self-check rounds fail on purpose: their files are not kept)
            if (ok or a.self_check) and not a.keep:
                target.remove_dir()
            else:
                self.kept_dirs.append(target.workdir)
                if not ok:
                    log("round %d: files kept in %s" % (rnd, target.workdir))
                    for ln in target.understudy_lines()[-15:]:
                        log("   | " + ln)

    def report_fault(self, f):
        fl = f.failing()
        log("fault #%d %s: %s; pause %.0f ms%s%s" % (
            f.n, f.kind, f.outcome or "-", f.pause_ms,
            "" if not f.divergence else "; divergence reported",
            "" if not fl else "; FAILED: " + " | ".join("[%s] %s" % x for x in fl)))
        for c, m in f.problems:
            if c.startswith("info:"):
                log("    (info, bitflip-primary) [%s] %s" % (c[5:], m))

    def cleanup(self):
        for wl in self.workloads:
            wl.abort()
        for t in self.targets:
            t.cleanup()
        uh.cleanup_all()
        self.tracker.kill_all()

    # ---- report
    def table(self):
        rows = []
        for k in KINDS:
            fs = [f for f in self.faults if f.kind == k]
            rows.append({
                "kind": k, "injected": len(fs), "survived": sum(1 for f in fs if f.survived),
                "divergences_detected": sum(1 for f in fs if f.divergence or f.late_divergence),
                "lost_writes": sum(f.lost for f in fs),
                "duplicated_effects": sum(f.dup for f in fs),
                "resets": sum(f.resets for f in fs),
                "worst_pause_ms": round(max([f.pause_ms for f in fs] or [0.0]), 1),
                "informational": k == "bitflip-primary"})
        fs = self.faults
        counted = [f for f in fs if f.kind != "bitflip-primary"]
        total = {"kind": "total", "injected": len(fs), "survived": sum(1 for f in fs if f.survived),
                 "divergences_detected": sum(1 for f in fs if f.divergence or f.late_divergence),
                 "lost_writes": sum(f.lost for f in counted),
                 "duplicated_effects": sum(f.dup for f in counted),
                 "resets": sum(f.resets for f in counted),
                 "worst_pause_ms": round(max([f.pause_ms for f in counted] or [0.0]), 1),
                 "informational": False}
        return rows, total

    def program_table(self):
        """One row per program; like the total, bitflip-primary's client-side
        findings are left out of the must-be-zero columns."""
        rows = []
        for prog in PROGRAMS:
            fs = [f for f in self.faults if f.program == prog]
            if not fs:
                continue
            counted = [f for f in fs if f.kind != "bitflip-primary"]
            bb = [f for f in fs if f.kind == "bitflip-backup"]
            rows.append({
                "program": prog, "injected": len(fs),
                "survived": sum(1 for f in fs if f.survived),
                "divergences_detected": sum(1 for f in fs if f.divergence or f.late_divergence),
                "bitflip_backup": len(bb),
                "bitflip_backup_detected": sum(1 for f in bb if f.divergence or
                                               f.late_divergence),
                "lost_writes": sum(f.lost for f in counted),
                "duplicated_effects": sum(f.dup for f in counted),
                "resets": sum(f.resets for f in counted),
                "worst_pause_ms": round(max([f.pause_ms for f in counted] or [0.0]), 1)})
        return rows

    def print_table(self):
        rows, total = self.table()
        hdr = ("fault kind", "injected", "survived", "divergences", "lost writes",
               "dup effects", "resets", "worst pause ms")
        fmt = "%-18s %8s %8s %11s %11s %11s %7s %14s"
        print()
        print(fmt % hdr)
        print(fmt % tuple("-" * len(h) for h in hdr))
        for r in rows + [total]:
            mark = "*" if r["informational"] and (r["lost_writes"] or r["duplicated_effects"]
                                                 or r["resets"]) else ""
            print(fmt % (r["kind"], r["injected"], r["survived"], r["divergences_detected"],
                         "%d%s" % (r["lost_writes"], mark), "%d%s" % (r["duplicated_effects"], mark),
                         "%d%s" % (r["resets"], mark), "%.0f" % r["worst_pause_ms"]))
        print("(lost writes, dup effects and resets must be 0; bitflip-primary's are for"
              " information only%s and not in the total)" % (", marked *" if any(
                  r["informational"] and (r["lost_writes"] or r["duplicated_effects"] or r["resets"])
                  for r in rows) else ""))
        prows = self.program_table()
        if prows:
            hdr = ("program", "injected", "survived", "divergences", "lost writes",
                   "dup effects", "resets", "worst pause ms")
            print()
            print(fmt % hdr)
            print(fmt % tuple("-" * len(h) for h in hdr))
            for r in prows:
                print(fmt % (r["program"], r["injected"], r["survived"],
                             r["divergences_detected"], r["lost_writes"],
                             r["duplicated_effects"], r["resets"], "%.0f" % r["worst_pause_ms"]))
            print("(per program: every fault kind; lost writes, dup effects, resets and the"
                  " pause without bitflip-primary)")
        bb = [f for f in self.faults if f.kind == "bitflip-backup"]
        if bb:
            det = sum(1 for f in bb if f.divergence)
            late = sum(1 for f in bb if f.late_divergence and not f.divergence)
            died = sum(1 for f in bb if not f.divergence and f.outcome.startswith("backup died"))
            none = len(bb) - det - late - died
            print("bitflip-backup: %d divergence reported at once, %d at shutdown, %d backup"
                  " died, %d with no visible effect" % (det, late, died, none))
            for area in BITFLIP_AREAS:
                fa = [f for f in bb if f.area == area]
                if fa:
                    print("  in %-8s: %d flip(s), %d divergence(s) reported, %d backup(s) died"
                          % (area, len(fa), sum(1 for f in fa if f.divergence or f.late_divergence),
                             sum(1 for f in fa if not f.divergence and
                                 f.outcome.startswith("backup died"))))
            for r in prows:
                if r["bitflip_backup"]:
                    print("  into %-12s: %d flip(s), %d divergence(s) reported"
                          % (r["program"], r["bitflip_backup"], r["bitflip_backup_detected"]))
        bp = [f for f in self.faults if f.kind == "bitflip-primary"]
        if bp:
            # a flip into the primary changed its output when the clients'
            # checks saw it (reported for information only): wrong data, or
            # connections closed (the program exited) or stalled (it spun)
            def saw(f, cats):
                return any(c in ["info:" + x for x in cats] for c, _ in f.problems)
            data = [f for f in bp if saw(f, ("lost", "dup", "corrupt"))]
            closed = [f for f in bp if f not in data and saw(f, ("reset",))]
            stalled = [f for f in bp if f not in data + closed and saw(f, ("stall",))]
            seen = data + closed + stalled
            print("bitflip-primary: %d flip(s); %d changed what the clients saw (%d wrong data,"
                  " %d connections closed, %d stalled), %d of those with a divergence reported"
                  " by the backups; %d divergence(s) reported in all; %d primary died and was"
                  " failed over" % (
                      len(bp), len(seen), len(data), len(closed), len(stalled),
                      sum(1 for f in seen if f.divergence or f.late_divergence),
                      sum(1 for f in bp if f.divergence or f.late_divergence),
                      sum(1 for f in bp if "primary died" in f.outcome)))
            print("bitflip-primary outcomes:")
            for f in bp:
                print("  #%d %s (%s): %s" % (f.n, f.program, f.where or f.area, f.outcome))
        return rows, total


# --------------------------------------------------------------------------
# Self-check: the checks must catch what they are meant to catch


class Sabotage:
    """Something done behind the clients' back around a fault, that the
    campaign's checks must flag with the `expect` categories."""

    def __init__(self, program, kind, expect, what):
        self.program, self.kind, self.expect, self.what = program, kind, set(expect), what
        self.timer = None

    def before(self, target, wl, st):
        pass

    def after(self, target, wl):
        pass

    def after_stop(self, target, wl):
        """After the service stopped at the end of the round, before the
        checks of what it left (files)."""
        pass


class SabotageRedis(Sabotage):
    def after(self, target, wl):
        c = rh.Resp(target.port, timeout=5)
        try:
            i = REDIS_INCR_CONNS
            c.call("DEL", wl.key(i, 0))        # an acknowledged SET disappears
            c.call("INCR", REDIS_COUNTER)      # an increment nobody was told of
        finally:
            c.close()


class SabotageMemcached(Sabotage):
    def after(self, target, wl):
        c = mh.Mc(target.port, timeout=5)
        try:
            i = min(wl.set_count)
            c.delete(wl.key(i, 0))                 # an acknowledged set disappears
            c.incr(wl.counter(min(wl.own_last)))   # an increment nobody was told of
        finally:
            c.close()


class SabotageMemcachedExtra(Sabotage):
    def after(self, target, wl):
        c = mh.Mc(target.port, timeout=5)
        try:
            c.set(b"campaign:stray", b"x")         # an item no client stored
        finally:
            c.close()


class SabotageLedger(Sabotage):
    def after(self, target, wl):
        conn = uh.LineConn(target.port, 5, "sabotage")
        try:
            conn.request(b"T 0 1 1")               # an operation the clients did not ask for
        finally:
            conn.close()


class SabotageLedgerJournal(Sabotage):
    def after_stop(self, target, wl):
        path = os.path.join(target.workdir, "journal")
        with open(path, "rb") as f:
            data = f.read()
        cut = data.rstrip(b"\n").rfind(b"\n") + 1
        with open(path, "wb") as f:                # the last operation is not in the file
            f.write(data[:cut])


class SabotageStdio(Sabotage):
    def after(self, target, wl):
        time.sleep(0.05)
        with open(wl.app.path, "rb") as f:
            first = f.readline()
        with open(wl.app.path, "ab") as f:     # an acknowledged append, twice
            f.write(first)


class SabotageTimeRandom(Sabotage):
    def after(self, target, wl):
        conn = uh.LineConn(target.port, 5, "sabotage")
        try:
            conn.request(b"GET")               # a request the clients did not send
        finally:
            conn.close()


class SabotagePause(Sabotage):
    def before(self, target, wl, st):
        pid = int(st["primary"]["pid"])
        os.kill(pid, signal.SIGSTOP)           # the service freezes for 1.3 s
        self.timer = threading.Timer(1.3, os.kill, (pid, signal.SIGCONT))
        self.timer.daemon = True
        self.timer.start()
        time.sleep(0.2)


class SabotageKillAll(Sabotage):
    def after(self, target, wl):
        st, _ = target.status()
        if st:
            for pid in [int(st["primary"]["pid"])] + [int(b["pid"]) for b in st["backups"]]:
                try:
                    os.kill(pid, signal.SIGKILL)   # the whole service dies
                except OSError:
                    pass


SELF_CHECKS = [
    SabotageRedis("redis", "crash-primary", {"lost", "dup"},
                  "DEL of an acknowledged key and an extra INCR after a failover"),
    SabotageStdio("stdio_append", "crash-backup", {"dup"},
                  "an acknowledged line appended a second time"),
    SabotageTimeRandom("time_random", "crash-primary", {"dup"},
                       "an extra GET from another connection"),
    SabotagePause("echo", "crash-backup", {"pause"}, "the primary SIGSTOPped for 1.3 s"),
    SabotageKillAll("echo", "crash-primary", {"reset"},
                    "every replica SIGKILLed after a failover"),
    SabotageMemcached("memcached", "crash-primary", {"lost", "dup"},
                      "delete of an acknowledged key and an extra incr after a failover"),
    SabotageMemcachedExtra("memcached", "crash-backup", {"dup"},
                           "an extra item stored behind the clients' back (the item count)"),
    SabotageKillAll("memcached", "crash-backup", {"reset"},
                    "every replica SIGKILLed after a backup crash"),
    SabotageLedger("mt_ledger", "crash-primary", {"dup"},
                   "an extra transfer from another connection after a failover"),
    SabotageLedgerJournal("mt_ledger", "crash-backup", {"lost"},
                          "the journal's last line removed after the run"),
    SabotageKillAll("mt_ledger", "crash-primary", {"reset"},
                    "every replica SIGKILLed after a failover"),
]


def self_check_plan(camp, programs):
    plan = [sc for sc in SELF_CHECKS if sc.program in programs]
    camp.kinds = [sc.kind for sc in plan]
    camp.programs_plan = [sc.program for sc in plan]
    camp.sabotage = {i + 1: sc for i, sc in enumerate(plan)}
    return plan


def self_check_verdict(camp, plan):
    ok = True
    print()
    for i, sc in enumerate(plan):
        f = camp.faults[i] if i < len(camp.faults) else None
        got = set() if f is None else {c.split(":")[-1] for c, _ in f.problems}
        missed = sc.expect - got
        # and the campaign would have failed on it: a failing problem, and
        # the table's must-be-zero column of each expected category non-zero
        counts = {} if f is None else {"lost": f.lost, "dup": f.dup, "reset": f.resets}
        zero = sorted(c for c in sc.expect if c in counts and not counts[c])
        fails = f is not None and bool(f.failing()) and not zero
        good = f is not None and not missed and fails
        ok = ok and good
        print("self-check %-13s %-14s %-66s %s" % (
            sc.program, sc.kind, sc.what,
            "flagged %s, the campaign FAILS (%s)" % (
                sorted(got & sc.expect),
                ", ".join("%s %d" % (c, counts[c]) for c in sorted(sc.expect) if c in counts)
                or "failing: " + ",".join(sorted({c for c, _ in f.failing()})))
            if good else
            "NOT FLAGGED: %s (got %s%s)" % (
                sorted(missed), sorted(got),
                "; counted 0 for %s" % zero if zero else
                "" if f is None or f.failing() else "; nothing failing")))
    return ok


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--faults", type=int, default=30, help="faults to inject (default 30)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help="comma list of %s (default all)" % ",".join(PROGRAMS))
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma list of fault kinds (default all: %s)" % ",".join(KINDS))
    p.add_argument("--json", default=None, help="write the table and every fault to FILE")
    p.add_argument("--replicas", type=int, default=3, help="understudy run --replicas (default 3)")
    p.add_argument("--hang-timeout", type=int, default=300,
                   help="understudy run --hang-timeout MS (default 300)")
    p.add_argument("--run-arg", action="append", default=[],
                   help="extra argument for `understudy run` (repeatable)")
    p.add_argument("--min-backups", type=int, default=2,
                   help="running backups needed before a fault; fewer: new run (default 2)")
    p.add_argument("--pause-bound-ms", type=int, default=1000,
                   help="max client-visible pause around a fault (default 1000)")
    p.add_argument("--min-delay", type=float, default=0.15,
                   help="min seconds of traffic before a fault (default 0.15)")
    p.add_argument("--max-delay", type=float, default=0.8,
                   help="max seconds of traffic before a fault (default 0.8)")
    p.add_argument("--bitflip-areas", default=",".join(BITFLIP_AREAS),
                   help="where bitflips go, chosen at random per flip: anywhere (understudy's"
                        " own pick), data (the program binary's data and bss), heap, symbol"
                        " (one of the program's variables, from nm; data if stripped);"
                        " default all four")
    p.add_argument("--bitflip-settle", type=float, default=0.3,
                   help="seconds of traffic after a bitflip before looking (default 0.3)")
    p.add_argument("--progress-timeout", type=float, default=5.0,
                   help="seconds every connection gets to reply after a fault (default 5)")
    p.add_argument("--io-timeout", type=float, default=10.0,
                   help="a client waiting this long for a reply fails (default 10)")
    p.add_argument("--timeout", type=float, default=None,
                   help="overall bound in seconds (default 60 + 8 per fault)")
    for prog in ("echo", "time_random", "stdio_append", "mt_ledger"):
        p.add_argument("--%s-server" % prog.replace("_", "-"), default=None,
                       help="%s binary (default build/tests/apps/%s)"
                            % (APP_BINARIES[prog], APP_BINARIES[prog]))
    p.add_argument("--keep", action="store_true", help="keep every round's directory")
    p.add_argument("--self-check", action="store_true",
                   help="instead of a campaign: sabotage a few rounds behind the clients'"
                        " back and check that the campaign's checks flag it")
    a = p.parse_args()
    a.programs = [x.strip() for x in a.programs.split(",") if x.strip()]
    bad = [x for x in a.programs if x not in PROGRAMS]
    if bad or not a.programs:
        p.error("unknown program(s) %s; choose from %s" % (bad, PROGRAMS))
    a.kinds = [x.strip() for x in a.kinds.split(",") if x.strip()]
    bad = [x for x in a.kinds if x not in KINDS]
    if bad or not a.kinds:
        p.error("unknown fault kind(s) %s; choose from %s" % (bad, KINDS))
    a.bitflip_areas = [x.strip() for x in a.bitflip_areas.split(",") if x.strip()]
    if not a.bitflip_areas or set(a.bitflip_areas) - set(BITFLIP_AREAS):
        p.error("--bitflip-areas takes a comma list of %s" % ",".join(BITFLIP_AREAS))
    if a.faults < 1:
        p.error("--faults must be >= 1")
    if not 2 <= a.replicas <= 8:
        p.error("--replicas must be 2..8")
    if not 1 <= a.min_backups <= a.replicas - 1:
        p.error("--min-backups must be 1..replicas-1")
    if a.min_delay < 0 or a.max_delay < a.min_delay:
        p.error("bad --min-delay/--max-delay")
    if a.self_check:
        # the sabotaged primary must not be declared hung while it is stopped
        a.hang_timeout = max(a.hang_timeout, 5000)
        a.faults = len(SELF_CHECKS)
    if a.timeout is None:
        a.timeout = 60.0 + 8.0 * a.faults
    if a.timeout < 30:
        p.error("--timeout must be >= 30")
    return a


def main():
    a = parse_args()
    rh.set_log_prefix("[campaign]")
    us = uh.understudy_path()
    if us is None:
        print("SKIP: $UNDERSTUDY is not set to an executable file")
        return SKIP
    us = os.path.abspath(us)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    app_bins = {}
    for prog, opt in (("echo", a.echo_server), ("time_random", a.time_random_server),
                      ("stdio_append", a.stdio_append_server),
                      ("mt_ledger", a.mt_ledger_server)):
        path = opt or uh.default_server_path(APP_BINARIES[prog])
        app_bins[prog] = os.path.abspath(path)
    dropped = []
    for prog in list(a.programs):
        if prog in SERVER_PROGRAMS:
            exe = {"redis": "redis-server", "memcached": "memcached"}[prog]
            if shutil.which(exe) is None:
                dropped.append("%s (%s not in PATH)" % (prog, exe))
                a.programs.remove(prog)
        elif not (os.path.isfile(app_bins[prog]) and os.access(app_bins[prog], os.X_OK)):
            dropped.append("%s (%s not found)" % (prog, app_bins[prog]))
            a.programs.remove(prog)
    if dropped:
        log("not available, left out: %s" % "; ".join(dropped))
    if not a.programs:
        print("SKIP: none of the programs is available")
        return SKIP

    log("seed %d: %d faults over %s; kinds %s; understudy %s run --replicas %d"
        " --hang-timeout %d; pause bound %d ms; min backups before a fault %d; timeout %.0fs"
        % (a.seed, a.faults, ",".join(a.programs), ",".join(a.kinds), us, a.replicas,
           a.hang_timeout, a.pause_bound_ms, a.min_backups, a.timeout))
    log("reproduce with: %s --seed %d --faults %d --programs %s%s"
        % (os.path.abspath(__file__), a.seed, a.faults, ",".join(a.programs),
           "" if a.kinds == KINDS else " --kinds " + ",".join(a.kinds)))

    rh.install_fatal_handlers()
    rh.install_deadline(a.timeout)
    gc.disable()
    camp = Campaign(a, us, app_bins)
    camp.heartbeat = Heartbeat(camp.tracker)
    plan = self_check_plan(camp, a.programs) if a.self_check else None

    def hard_stop():
        log("FAIL: hard time limit exceeded; killing everything")
        try:
            camp.cleanup()
        finally:
            sys.stdout.flush()
            os._exit(FAIL)
    watchdog = threading.Timer(a.timeout + 20.0, hard_stop)
    watchdog.daemon = True
    watchdog.start()

    interrupted = None
    left = []
    t0 = mono()
    try:
        camp.run()
        camp.heartbeat.close()
        # every round cleaned up after itself: anything still alive is a leak
        left = camp.tracker.alive()
    except CampaignAbort as e:
        interrupted = "campaign aborted: %s" % e
    except rh.Deadline as e:
        interrupted = str(e)
    except SystemExit as e:
        interrupted = "interrupted (signal %s)" % (e.code - 128 if isinstance(e.code, int)
                                                   else e.code)
    except KeyboardInterrupt:
        interrupted = "interrupted (Ctrl-C)"
    finally:
        signal.alarm(0)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        camp.cleanup()
        camp.tracker.close()
        watchdog.cancel()
    elapsed = mono() - t0
    problems = list(camp.round_problems)
    if interrupted:
        problems.append(("survival", interrupted))
    if left:
        problems.append(("survival", "processes left behind (now killed): %s" % left))

    if plan is not None:
        camp.print_table()
        ok = self_check_verdict(camp, plan) and not left and not interrupted
        print("SELF-CHECK %s (seed %d)" % ("PASS: every sabotage was flagged" if ok else "FAIL",
                                            a.seed))
        return PASS if ok else FAIL
    rows, total = camp.print_table()
    print("%d faults in %d rounds in %.1fs (seed %d)" % (len(camp.faults), camp.rounds,
                                                          elapsed, a.seed))
    failing_faults = [f for f in camp.faults if f.failing()]
    failing_other = [(c, m) for c, m in problems if c in FAILING]
    for c, m in problems:
        if c not in FAILING:
            print("note: %s" % m)
    must_zero = total["lost_writes"] + total["duplicated_effects"] + total["resets"]
    passed = not failing_faults and not failing_other and must_zero == 0 and camp.faults
    if a.json:
        doc = {"seed": a.seed, "faults_requested": a.faults, "programs": a.programs,
               "kinds": a.kinds, "replicas": a.replicas, "hang_timeout_ms": a.hang_timeout,
               "pause_bound_ms": a.pause_bound_ms, "min_backups": a.min_backups,
               "elapsed_s": round(elapsed, 1), "rounds": camp.rounds,
               "table": rows, "total": total, "by_program": camp.program_table(),
               "pass": bool(passed),
               "problems": problems, "faults": [f.as_dict() for f in camp.faults],
               "kept_dirs": camp.kept_dirs}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print("table written to %s" % a.json)
    if passed:
        print("PASS (seed %d)" % a.seed)
        return PASS
    print("FAIL (seed %d):" % a.seed)
    for f in failing_faults:
        for c, m in f.failing():
            print("  - fault #%d (round %d, %s, %s): [%s] %s"
                  % (f.n, f.round, f.program, f.kind, c, m.replace("\n", "\n      ")))
    for c, m in failing_other:
        print("  - [%s] %s" % (c, m.replace("\n", "\n      ")))
    if not camp.faults:
        print("  - no fault was injected")
    if camp.kept_dirs:
        print("files kept in: %s" % " ".join(camp.kept_dirs))
    return FAIL


if __name__ == "__main__":
    sys.exit(main())
