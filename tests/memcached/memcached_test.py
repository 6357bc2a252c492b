#!/usr/bin/env python3
"""memcached tests for understudy.

  memcached_test.py --native                 memcached_native
  memcached_test.py --capable                memcached_capable
  memcached_test.py [--kills K] [--replicas N]   memcached_failover

memcached 1.6 with `-t 4` (four worker threads), natively or under
`$UNDERSTUDY run --replicas N --control <tmp>/ctl.sock`.

--native (no understudy):
  * memccapable (libmemcached-tools' conformance suite, 54 checks) passes;
  * (a) memcslap: 10 threads, set, must finish with every set counted and no
    error line;
  * (b) the checker passes (see below);
  * self-check, proving the checks can fail: memccapable against memcached -C
    (CAS disabled) must report failures; SIGKILLing native memcached must make
    memcslap print errors and every checker connection report an error; a
    sabotaged run (an extra incr, a delete and an overwrite behind the
    checker's back) must be flagged (incr sequence, lost key, wrong value,
    item count).
--capable: memccapable passes under understudy, understudy's output holds no
  divergence / retired / unsupported line, and `status --json` still shows
  the backup "running" afterwards (the backup replayed the whole suite).
default (failover): phase (a) memcslap and phase (b) the checker, each against
  a fresh server, with the primary SIGKILLed K times mid-load (pid from
  `status --json`; before each kill status must show a running backup and
  understudy's output no divergence; after it, status must report the
  failover and understudy print its "took over" line).  memcslap must finish
  with every set counted and no error line.

The checker: --setget-conns connections each SET unique keys k:<conn>:<i>
(values of varying length, some of 8-40 KB, binary, with flags) and GET each
back in the same write; --incr-conns connections each INCR their own counter
(every reply exactly the previous + 1: no gap, no repeat) and GET it now and
then.  No connection may see an error reply, reset, EOF or a reply later than
--stall (10 s); every connection must make progress after the last failover
and still answer `version` at the end; then, through a new connection, every
acknowledged SET is readable with its value and flags, the next key of each
connection was never stored, every counter equals its last acknowledged value
and `stats` curr_items equals exactly the acknowledged keys + counters (no lost
and no phantom/duplicated write; evictions must be 0).

Every process started is killed by pid (start time checked; a reaper does it
even if this script is SIGKILLed), the whole run is bounded by --timeout.
Exit status: 0 pass, 1 fail, 77 skip (memcached / memccapable / memcslap not
installed, or $UNDERSTUDY unset without --native).
"""

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memcached_harness import (TOOK_OVER_RE, ConnLost, Mc, McError, McServer,  # noqa: E402
                               StartError, log, mono, run_capable, spawn, tools_missing,
                               understudy_problems)
from redis_harness import (Deadline, Tracker, install_deadline,  # noqa: E402
                           install_fatal_handlers, set_log_prefix)

PASS, FAIL, SKIP = 0, 1, 77
TOOLS = ("memcached", "memccapable", "memcslap")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--native", action="store_true",
                   help="plain memcached, no understudy, no kills (+ self-check)")
    m.add_argument("--capable", action="store_true",
                   help="memccapable under understudy, no kill")
    ap.add_argument("--kills", type=int, default=1,
                    help="SIGKILLs of the primary per phase (default 1)")
    ap.add_argument("--replicas", type=int, default=None,
                    help="understudy --replicas (default kills+1; must be > kills)")
    ap.add_argument("--threads", type=int, default=4, help="memcached -t (default 4)")
    ap.add_argument("--phases", default="ab",
                    help="failover/native phases: a (memcslap), b (checker); default ab")
    ap.add_argument("--slap-ops", type=int, default=40000,
                    help="memcslap -e: sets per memcslap thread (default 40000)")
    ap.add_argument("--slap-threads", type=int, default=10,
                    help="memcslap -c (default 10)")
    ap.add_argument("--setget-conns", type=int, default=4,
                    help="checker connections doing SET+GET (default 4)")
    ap.add_argument("--incr-conns", type=int, default=2,
                    help="checker connections doing INCR, each its own counter (default 2)")
    ap.add_argument("--duration", type=float, default=2.0,
                    help="checker run time without kills, and minimum run time (default 2 s)")
    ap.add_argument("--post-seconds", type=float, default=1.0,
                    help="checker traffic kept up after the last failover (default 1 s)")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="a reply later than this is a failure (default 10 s)")
    ap.add_argument("--failover-timeout", type=float, default=15.0,
                    help="max seconds for status to report a failover (default 15)")
    ap.add_argument("--start-timeout", type=float, default=20.0,
                    help="max seconds for the server to start (default 20)")
    ap.add_argument("--timeout", type=float, default=100.0,
                    help="overall time limit in seconds (default 100)")
    ap.add_argument("--run-args", default="",
                    help="extra options for `understudy run`, e.g. '--hang-timeout 2000'")
    ap.add_argument("--mc-args", default="",
                    help="extra memcached options, e.g. '-o no_lru_crawler'")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--no-self-check", action="store_true",
                    help="with --native: skip the negative self-check")
    a = ap.parse_args()
    if a.native or a.capable:
        a.kills = 0
    if a.replicas is None:
        a.replicas = min(8, max(2, a.kills + 1))
    if not 2 <= a.replicas <= 8:
        ap.error("--replicas must be 2..8")
    if a.kills < 0 or a.kills > a.replicas - 1:
        ap.error("--kills %d needs --replicas >= %d (each failover consumes a backup)"
                 % (a.kills, a.kills + 1))
    if a.setget_conns < 0 or a.incr_conns < 0 or a.setget_conns + a.incr_conns == 0:
        ap.error("need at least one checker connection")
    if set(a.phases) - set("ab") or not a.phases:
        ap.error("--phases takes a, b or ab")
    return a


class Ctx:
    def __init__(self, args, understudy):
        self.args = args
        self.us = understudy
        self.tracker = Tracker()
        self.rng = random.Random(args.seed)
        self.servers = []
        self.t_end = mono() + args.timeout

    def server(self, label, native=None, extra=()):
        a = self.args
        native = a.native if native is None else native
        s = McServer(self.tracker, threads=a.threads, memory_mb=256,
                     extra_args=a.mc_args.split() + list(extra), native=native,
                     understudy=self.us, replicas=a.replicas, run_args=a.run_args.split(),
                     label=label)
        self.servers.append(s)
        return s

    def left(self):
        return self.t_end - mono()


def finish(srv, expect_dead=False):
    """Stop the server (SIGTERM, exit 0 expected) and clean up; problems,
    including what understudy printed while stopping (a backup that ended
    differently from the primary, or had not finished replaying)."""
    try:
        seen = len(srv.problems())
        problems = srv.stop(expect_dead=expect_dead)
        late = srv.problems()[seen:]
        if late and not expect_dead:
            problems.append("at shutdown understudy reported: %s" % " | ".join(late[:4]))
        return problems
    finally:
        srv.cleanup()


def understudy_check(srv, when):
    """understudy's divergence/retired/... lines, as problems."""
    p = srv.problems()
    if not p:
        return []
    return ["%s understudy reported: %s" % (when, " | ".join(p[:4]))]


def running_backups(st):
    return [b for b in st.get("backups") or [] if b.get("state") == "running"]


def do_kills(ctx, srv, kills, is_alive, what):
    """Kill the primary `kills` times, 0.5-2 s apart, each after the previous
    failover completed.  Returns (problems, killed pids)."""
    problems, killed = [], []
    failovers = 0
    for i in range(kills):
        end = mono() + ctx.rng.uniform(0.5, 2.0)
        while mono() < end and is_alive():
            time.sleep(0.01)
        if not is_alive():
            problems.append("%s before kill %d/%d; remaining kills skipped" % (what, i + 1, kills))
            break
        if srv.proc.poll() is not None:
            problems.append("`understudy run` exited with status %s before kill %d/%d"
                            % (srv.proc.returncode, i + 1, kills))
            problems += understudy_check(srv, "before it exited,")
            break
        st = srv.status_retry()
        bad = understudy_check(srv, "before kill %d/%d," % (i + 1, kills))
        if bad or not running_backups(st):
            problems += bad
            problems.append("before kill %d/%d there is no running backup to take over (status:"
                            " %s); remaining kills skipped" % (i + 1, kills, json.dumps(st)))
            break
        pid, tk = srv.kill_primary()
        killed.append(pid)
        srv.kill_times.append(tk)
        log("kill %d/%d: SIGKILLed primary pid %d (%s)" % (i + 1, kills, pid,
                                                           srv.last_killed_cmdline))
        st, dt = srv.wait_failover(failovers, pid, timeout=ctx.args.failover_timeout)
        failovers = int(st["failovers"])
        # the supervisor prints its line right after counting the failover
        end = mono() + 3.0
        while len(srv.takeovers()) < failovers and mono() < end:
            time.sleep(0.02)
        lines = srv.takeovers()
        if len(lines) < failovers:
            problems.append("status reports failover #%d but understudy printed %d \"took over\""
                            " line(s)" % (failovers, len(lines)))
        elif int(lines[-1][0]) != pid or int(lines[-1][1]) != int(st["primary"]["pid"]):
            problems.append("understudy's \"took over\" line names primary %s -> backup %s,"
                            " expected %d -> %s" % (lines[-1][0], lines[-1][1], pid,
                                                    st["primary"]["pid"]))
        log("kill %d/%d: failover #%d reported after %.0f ms, new primary pid %d, %d backup(s)"
            " left" % (i + 1, kills, failovers, dt * 1000, st["primary"]["pid"],
                       len(running_backups(st))))
    return problems, killed


def check_final_status(srv, kills, pid0, killed):
    if srv.native:
        return []
    if srv.proc.poll() is not None:
        return ["`understudy run` exited with status %s during the run" % srv.proc.returncode] \
            + understudy_check(srv, "before it exited,")
    st = srv.status_retry()
    problems = []
    if int(st["failovers"]) != kills:
        problems.append("status --json reports failovers=%s, expected %d" % (st["failovers"], kills))
    p = int(st["primary"]["pid"])
    if kills and (p == pid0 or p in killed):
        problems.append("status --json primary pid %d is the original/killed primary" % p)
    problems += understudy_check(srv, "during the run")
    return problems


# --------------------------------------------------------------------------
# memccapable
# --------------------------------------------------------------------------

def phase_capable(ctx, sabotage=False):
    """memccapable must pass (sabotage: against memcached -C, must fail)."""
    label = "capable-selfcheck" if sabotage else "capable"
    srv = ctx.server(label + "-server", native=True if sabotage else None,
                     extra=["-C"] if sabotage else [])
    problems = []
    try:
        srv.start(timeout=ctx.args.start_timeout)
        if not srv.native:
            st = srv.status_retry()
            if not running_backups(st):
                problems.append("no running backup before memccapable: %s" % json.dumps(st))
        r = run_capable(srv.port, ctx.tracker, timeout=max(10.0, min(60.0, ctx.left() - 10)),
                        workdir=srv.dir)
        log("%s: memccapable exit %s after %.1fs: %d pass, %d FAIL, %r"
            % (label, r["rc"], r["seconds"], r["passed"], r["failed"], r["summary"]))
        if sabotage:
            if r["ok"] or r["failed"] == 0:
                problems.append("SELF-CHECK: memccapable passed against memcached -C (CAS"
                                " disabled); this test could not detect a failure")
            else:
                log("%s: good, memccapable flagged memcached -C (%s)" % (label, r["summary"]))
        elif not r["ok"]:
            problems.append("memccapable failed: exit %s, %d pass, %d FAIL, %s; output tail:\n%s"
                            % (r["rc"], r["passed"], r["failed"], r["summary"], r["tail"]))
        if not srv.native:
            # let the backup finish replaying, then it must still be running
            end = mono() + 5.0
            while True:
                st = srv.status_retry()
                b = st.get("backups") or []
                if srv.problems() or not b or all(x.get("lag_events", 1) == 0 for x in b) \
                        or mono() > end:
                    break
                time.sleep(0.05)
            if not running_backups(st):
                problems.append("after memccapable status shows no running backup: %s"
                                % json.dumps(st))
            else:
                log("%s: after memccapable the backup is still running: %s"
                    % (label, json.dumps(st.get("backups"))))
            c = Mc(srv.port, timeout=ctx.args.stall)
            try:
                c.version()
            except (ConnLost, McError) as e:
                problems.append("after memccapable, version on a new connection: %s" % e)
            finally:
                c.close()
            problems += check_final_status(srv, 0, None, [])
    except (StartError, RuntimeError, ConnLost, McError) as e:
        problems.append(str(e))
    finally:
        problems += finish(srv)
    return problems


# --------------------------------------------------------------------------
# phase (a): memcslap under kills
# --------------------------------------------------------------------------

def phase_slap(ctx, kills, kill_native=False):
    a = ctx.args
    label = "slap-selfcheck" if kill_native else "slap"
    srv = ctx.server(label + "-server")
    problems, slap = [], None
    try:
        srv.start(timeout=a.start_timeout)
        pid0 = srv.primary_pid()
        outp, errp = os.path.join(srv.dir, "slap.out"), os.path.join(srv.dir, "slap.err")
        n = a.slap_ops * (3 if kill_native else 1)
        cmd = ["memcslap", "-s", "127.0.0.1:%d" % srv.port, "-c", str(a.slap_threads),
               "-t", "set", "-e", str(n)]
        with open(outp, "wb") as fo, open(errp, "wb") as fe:
            t0 = mono()
            slap = spawn(cmd, ctx.tracker, "memcslap", stdout=fo, stderr=fe)
        log("%s: started memcslap pid %d: %s" % (label, slap.pid, " ".join(cmd)))
        killed = []
        if kill_native:
            # kill mid-load: once the server has stored some of memcslap's sets
            end, sets = mono() + 10, 0
            while slap.poll() is None and mono() < end and sets < 20000:
                time.sleep(0.05)
                c = Mc(srv.port, timeout=5)
                try:
                    sets = int(c.stats().get("cmd_set", 0))
                finally:
                    c.close()
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native memcached pid %d after %d sets" % (label, pid, sets))
            # memcslap prints "Fatal error ... CONNECTION FAILURE" at once but
            # then retries for a while: the first error line is enough
            end = mono() + 15
            while slap.poll() is None and os.path.getsize(errp) == 0 and mono() < end:
                time.sleep(0.02)
            err = open(errp, errors="replace").read().strip()
            if not err:
                problems.append("SELF-CHECK: memcslap printed no error within 15 s although the"
                                " server was SIGKILLed; this test could not detect a failure")
            else:
                log("%s: good, memcslap reported the kill: %r" % (label, err.splitlines()[0][:120]))
            return problems
        p, killed = do_kills(ctx, srv, kills, lambda: slap.poll() is None,
                             "memcslap exited (raise --slap-ops so the load outlasts the kills)")
        problems += p
        reserve = 30.0 if "b" in a.phases else 10.0
        limit = max(10.0, ctx.left() - reserve)
        try:
            slap.wait(timeout=limit)
        except Exception:
            problems.append("memcslap still running after %.0fs (throughput too low or a"
                            " connection hangs); killed it" % (mono() - t0))
            slap.kill()
            slap.wait()
        rc = slap.returncode
        out = open(outp, errors="replace").read()
        err = open(errp, errors="replace").read()
        want = "Time to set %d keys" % (n * a.slap_threads)
        got = [l for l in out.splitlines() if l.startswith("Time to set") and "threads" in l]
        log("%s: memcslap exited %s after %.1fs: %s" % (label, rc, mono() - t0,
                                                        got[0] if got else "no result line"))
        if rc != 0:
            problems.append("memcslap exited with status %s" % rc)
        errs = [l.strip() for l in err.splitlines() if l.strip()]
        if errs:
            problems.append("memcslap printed %d error line(s), e.g. %s" % (len(errs), errs[:2]))
        if not got or got[0].split()[:5] != want.split():
            problems.append("memcslap did not count all %d sets: %r" % (n * a.slap_threads,
                                                                         got or out[-300:]))
        problems += check_final_status(srv, kills, pid0, killed)
    except StartError as e:
        problems.append(str(e))
    except (RuntimeError, ConnLost, McError) as e:
        problems.append(str(e))
        problems += understudy_check(srv, "by then")
    finally:
        if slap is not None and slap.poll() is None:
            slap.kill()
            slap.wait()
        problems += finish(srv, expect_dead=kill_native)
    return problems


# --------------------------------------------------------------------------
# phase (b): SET+GET / INCR checker under kills
# --------------------------------------------------------------------------

def value_for(idx, i):
    """Deterministic value and flags of key k:<idx>:<i>: binary (CR LF and NUL
    included), 1..700 bytes, every 61st one 8-40 KB."""
    seed = hashlib.sha256(b"%d:%d" % (idx, i)).digest()
    n = 8192 + (i * 7919) % 32768 if i % 61 == 17 else 1 + (i * 131 + idx * 17) % 700
    v = (b"v%d:%d:\r\n\0" % (idx, i) + seed * (n // 32 + 1))[:max(n, 1)]
    return v, (idx * 7919 + i) & 0xffff


class Worker(threading.Thread):
    def __init__(self, idx, kind, port, stop, stall):
        super().__init__(name="%s-%d" % (kind, idx), daemon=True)
        self.idx, self.kind, self.stop = idx, kind, stop
        self.conn = Mc(port, timeout=stall)        # connected before any kill
        self.key = b"counter:%d" % idx
        self.count = 0          # acknowledged SETs / INCRs
        self.last = 0           # INCR: last value seen
        self.bad = []           # (kind, message)
        self.error = None       # connection error
        self.t_last = None
        self.max_gap = 0.0
        self.max_gap_at = None
        if kind == "incr":
            r = self.conn.set(self.key, b"0")
            if r != b"STORED":
                raise McError("set %s 0 replied %r" % (self.key.decode(), r))

    def flag(self, kind, msg):
        if len(self.bad) < 20:
            self.bad.append((kind, "conn %d: %s" % (self.idx, msg)))

    def step_setget(self):
        i = self.count
        key = b"k:%d:%d" % (self.idx, i)
        val, flags = value_for(self.idx, i)
        self.conn.send_raw(Mc.set_cmd(key, val, flags) + Mc.get_cmd(key))
        r = self.conn.storage_reply()
        if r != b"STORED":
            self.flag("bad_reply", "set %s replied %r" % (key.decode(), r))
            return False
        self.count += 1
        got = self.conn.values()
        if got != {key: (flags, val)}:
            self.flag("get_back", "get %s right after its set returned %s" % (
                key.decode(), {k: (f, len(v)) for k, (f, v) in got.items()} or "nothing"))
        return True

    def step_incr(self):
        r = self.conn.incr(self.key)
        if not isinstance(r, int):
            self.flag("bad_reply", "incr %s replied %r" % (self.key.decode(), r))
            return False
        if r != self.last + 1:
            self.flag("incr_seq", "incr %s replied %d after %d (expected %d) at op #%d"
                      % (self.key.decode(), r, self.last, self.last + 1, self.count + 1))
        self.last = r
        self.count += 1
        if self.count % 64 == 0:
            v = self.conn.get(self.key)
            if v != b"%d" % self.last:
                self.flag("counter_get", "get %s = %r right after incr replied %d"
                          % (self.key.decode(), v, self.last))
        return True

    def run(self):
        step = self.step_incr if self.kind == "incr" else self.step_setget
        prev_t = mono()
        try:
            while not self.stop.is_set():
                if not step():
                    break
                t = mono()
                if t - prev_t > self.max_gap:
                    self.max_gap, self.max_gap_at = t - prev_t, (self.count, prev_t)
                prev_t = self.t_last = t
        except ConnLost as e:
            self.error = "conn %d (%s, after %d acknowledged ops): %s" % (
                self.idx, self.kind, self.count, e)
        except Exception as e:      # McError, protocol garbage
            self.error = "conn %d (%s, after %d acknowledged ops): %r" % (
                self.idx, self.kind, self.count, e)


def verify_data(port, workers, stall):
    """Every acknowledged SET readable with its value, counters exact, item
    count exact."""
    problems = []
    c = Mc(port, timeout=stall)
    try:
        expected = 0
        for w in workers:
            if w.kind == "incr":
                expected += 1
                v = c.get(w.key)
                if v != b"%d" % w.last:
                    problems.append(("counter_final", "get %s = %r, but the last acknowledged"
                                     " incr returned %d" % (w.key.decode(), v, w.last)))
                continue
            expected += w.count
            missing, wrong = [], []
            for lo in range(0, w.count, 100):
                idx = range(lo, min(w.count, lo + 100))
                keys = [b"k:%d:%d" % (w.idx, i) for i in idx]
                got = c.get_multi(keys)
                for i, k in zip(idx, keys):
                    if k not in got:
                        missing.append(i)
                    else:
                        val, flags = value_for(w.idx, i)
                        if got[k] != (flags, val):
                            wrong.append(i)
            if missing:
                problems.append(("missing_key", "conn %d: %d acknowledged set(s) lost, e.g."
                                 " k:%d:%s" % (w.idx, len(missing), w.idx, missing[:5])))
            if wrong:
                problems.append(("wrong_value", "conn %d: %d key(s) with a wrong value or flags,"
                                 " e.g. k:%d:%s" % (w.idx, len(wrong), w.idx, wrong[:5])))
            # the next key was never sent: it must not exist
            if c.get_multi([b"k:%d:%d" % (w.idx, w.count)]):
                problems.append(("phantom", "k:%d:%d exists but was never sent"
                                 % (w.idx, w.count)))
        st = c.stats()
        items, ev = int(st.get("curr_items", -1)), int(st.get("evictions", 0))
        if ev:
            problems.append(("evictions", "memcached evicted %d item(s): the item count check"
                             " is void (give it more memory)" % ev))
        if items != expected:
            problems.append(("items", "stats curr_items is %d, expected exactly %d (acknowledged"
                             " keys + counters)" % (items, expected)))
    finally:
        c.close()
    return problems


def phase_checker(ctx, kills, mode="normal"):
    """mode: normal | sabotage | kill-native.  Returns a list of (kind, msg)."""
    a = ctx.args
    label = "checker" if mode == "normal" else "checker-" + mode
    srv = ctx.server(label + "-server")
    problems, workers, stop = [], [], threading.Event()
    try:
        srv.start(timeout=a.start_timeout)
        pid0 = srv.primary_pid()
        for i in range(a.incr_conns):
            workers.append(Worker(i, "incr", srv.port, stop, a.stall))
        for i in range(a.incr_conns, a.incr_conns + a.setget_conns):
            workers.append(Worker(i, "setget", srv.port, stop, a.stall))
        t0 = mono()
        for w in workers:
            w.start()
        log("%s: %d INCR + %d SET/GET connections running" % (label, a.incr_conns,
                                                               a.setget_conns))

        def running():
            return all(w.is_alive() for w in workers)

        if mode == "kill-native":
            time.sleep(ctx.rng.uniform(0.5, 1.0))
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native memcached pid %d" % (label, pid))
            end = mono() + a.stall + 5
            while any(w.is_alive() for w in workers) and mono() < end:
                time.sleep(0.02)
            stop.set()
            errs = [w for w in workers if w.error]
            if len(errs) != len(workers):
                problems.append(("selfcheck", "SELF-CHECK: only %d of %d connections reported an"
                                 " error after the server was SIGKILLed" % (len(errs), len(workers))))
            else:
                log("%s: good, all %d connections detected the kill, e.g. %s"
                    % (label, len(errs), errs[0].error))
            problems += [("cleanup", p) for p in finish(srv, expect_dead=True)]
            return problems

        if mode == "sabotage":
            # behind the checker's back: one extra incr, and delete an acked key
            sw = [w for w in workers if w.kind == "setget"]
            end = mono() + 10
            while mono() < end and running() and not (
                    all(w.count > 2 for w in workers)):
                time.sleep(0.01)
            side = Mc(srv.port, timeout=a.stall)
            if a.incr_conns:
                side.incr(workers[0].key)
            if sw:
                side.delete(b"k:%d:0" % sw[0].idx)
                side.set(b"k:%d:1" % sw[-1].idx, b"tampered")
            side.close()
            log("%s: sabotage done (extra incr, delete of an acknowledged key, overwrite of"
                " another)" % label)

        p, killed = do_kills(ctx, srv, kills, running,
                             "a checker connection stopped (see its error)")
        problems += [("kill", x) for x in p]

        # every connection must make progress after the last failover
        t_mark = mono()
        end = t_mark + a.stall
        while running() and mono() < end and not all(
                w.t_last is not None and w.t_last > t_mark for w in workers):
            time.sleep(0.01)
        stuck = [w.idx for w in workers if w.error is None and
                 (w.t_last is None or w.t_last <= t_mark)]
        if stuck:
            problems.append(("no_progress", "connection(s) %s made no progress in the %.0fs"
                             " after the last failover" % (stuck, a.stall)))
        end = max(mono() + (a.post_seconds if kills else 0.0), t0 + a.duration)
        while running() and mono() < end:
            time.sleep(0.01)
        stop.set()
        for w in workers:
            w.join(a.stall + 5)
            if w.is_alive():
                problems.append(("hang", "conn %d (%s) still blocked after stop" % (w.idx, w.kind)))
        for w in workers:
            gap_op, gap_t = w.max_gap_at or (0, t0)
            log("%s: conn %d %-6s %6d ops%s, longest gap between replies %.0f ms (op #%d,"
                " from t=%.2fs%s)%s"
                % (label, w.idx, w.kind, w.count,
                   " (last %d)" % w.last if w.kind == "incr" else "",
                   w.max_gap * 1000, gap_op, gap_t - t0,
                   "".join(", kill at t=%.2fs" % (k - t0) for k in srv.kill_times),
                   " ERROR " + w.error if w.error else ""))
            if w.error:
                problems.append(("conn_error", w.error))
            problems += w.bad
        if not any(k in ("conn_error", "hang", "bad_reply") for k, _ in problems):
            for w in workers:       # the old connections survive the failover(s)
                try:
                    w.conn.version()
                except (ConnLost, McError) as e:
                    problems.append(("conn_error", "conn %d: version after the run: %s"
                                     % (w.idx, e)))
            vp = verify_data(srv.port, workers, a.stall)
            problems += vp
            log("%s: read back %d acknowledged SETs and %d counter(s) via a new connection: %s"
                % (label, sum(w.count for w in workers if w.kind == "setget"),
                   a.incr_conns, "%d problem(s)" % len(vp) if vp else "all present and exact"))
        problems += [("status", x) for x in check_final_status(srv, kills, pid0, killed)]
    except StartError as e:
        problems.append(("error", str(e)))
    except (RuntimeError, ConnLost, McError) as e:
        problems.append(("error", str(e)))
        problems += [("understudy", x) for x in understudy_check(srv, "by then")]
    finally:
        stop.set()
        for w in workers:
            w.conn.close()
        problems += [("cleanup", p) for p in finish(srv)]
    return problems


# --------------------------------------------------------------------------

def scanner_selfcheck():
    """The log scanner flags understudy's divergence/retired/unsupported lines
    (the messages of src/shim/engine.c and src/supervisor/supervisor.c), also
    when concurrent writers glued two lines together, and nothing else."""
    bad = ["understudy[42/backup]: divergence on thread 3 at event 11: the program called"
           " read(7, ..., 0) but the primary's log has getpeername(24, ..., 0)",
           "understudy: backup pid 42 retired (see above)",
           "understudy: understudy[43/primary]: sendmsg right after a failover with 8 bytes"
           " already sent is not supported",
           "understudy: the program stopped on a call understudy cannot replicate (see above)",
           "understudy: backup pid 42 ended with status 1, the primary with 0: they diverged",
           "primary (pid 41) was killed by signal 9; backup pid 42 retired"]
    good = ["understudy: 2 replicas on 2 CPUs: replicas are not pinned (give --cpus to pin them)",
            "understudy: running memcached as primary pid 41 with 1 backup(s); control socket x",
            "understudy[42/backup]: fd 25: 8 bytes of output were already sent by the old primary",
            "understudy: primary (pid 41) was killed by signal 9; backup pid 42 took over with"
            " 30 fds in 3 ms",
            "understudy: signal 15: stopping the program"]
    problems = []
    got = understudy_problems("\n".join(bad + good))
    if got != bad:
        problems.append("SELF-CHECK: the understudy log scanner flagged %r, expected %r"
                        % (got, bad))
    if TOOK_OVER_RE.findall("\n".join(good)) != [("41", "42")]:
        problems.append("SELF-CHECK: the \"took over\" line was not recognised")
    if not problems:
        log("scanner: good, %d problem lines flagged, %d informational lines not"
            % (len(bad), len(good)))
    return problems


def main():
    a = parse_args()
    mode = "native" if a.native else "capable" if a.capable else "failover"
    set_log_prefix("[memcached_%s]" % mode)
    missing = tools_missing(TOOLS)
    if missing:
        print("SKIP: %s not found in PATH (Debian: memcached, libmemcached-tools)"
              % ", ".join(missing))
        return SKIP
    us = None
    if not a.native:
        us = os.environ.get("UNDERSTUDY")
        if not us:
            print("SKIP: $UNDERSTUDY is not set (use --native for a plain memcached)")
            return SKIP
        if not (os.path.isfile(us) and os.access(us, os.X_OK)):
            print("FAIL: $UNDERSTUDY=%s is not an executable file" % us)
            return FAIL
        us = os.path.abspath(us)
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    install_fatal_handlers()
    install_deadline(a.timeout)
    ctx = Ctx(a, us)
    log("seed %d, %s, memcached -t %d, kills %d" % (
        a.seed, "native" if a.native else "understudy %s --replicas %d" % (us, a.replicas),
        a.threads, a.kills))
    failed = []
    try:
        if a.native or a.capable:
            log("=== memccapable")
            failed += ["(memccapable) " + x for x in phase_capable(ctx)]
        if not a.capable:
            if "a" in a.phases:
                log("=== phase (a): memcslap with %d kill(s)" % a.kills)
                failed += ["(a) " + x for x in phase_slap(ctx, a.kills)]
            if "b" in a.phases:
                log("=== phase (b): SET/GET/INCR checker with %d kill(s)" % a.kills)
                failed += ["(b) [%s] %s" % kv for kv in phase_checker(ctx, a.kills)]
        if a.native and not a.no_self_check:
            log("=== self-check: the checks must catch a broken server, a dead server and"
                " lost/extra writes")
            failed += ["(self-check scanner) " + x for x in scanner_selfcheck()]
            failed += ["(self-check memccapable) " + x for x in phase_capable(ctx, sabotage=True)]
            failed += ["(self-check a) " + x for x in phase_slap(ctx, 0, kill_native=True)]
            p = phase_checker(ctx, 0, mode="kill-native")
            failed += ["(self-check b) [%s] %s" % kv for kv in p]
            p = phase_checker(ctx, 0, mode="sabotage")
            kinds = {k for k, _ in p}
            need = ({"missing_key", "items", "wrong_value"} if a.setget_conns else set()) | \
                ({"incr_seq"} if a.incr_conns else set())
            if need - kinds:
                failed.append("(self-check sabotage) the checker did not flag %s; got: %s"
                              % (sorted(need - kinds), p))
            else:
                log("checker-sabotage: good, flagged %s" % sorted(kinds))
            other = [kv for kv in p if kv[0] not in need | {"counter_final", "counter_get"}]
            failed += ["(self-check sabotage) unexpected [%s] %s" % kv for kv in other]
    except Deadline as e:
        failed.append(str(e))
    except SystemExit as e:
        failed.append("interrupted (signal %s)" % (e.code - 128 if isinstance(e.code, int)
                                                   else e.code))
    finally:
        signal.alarm(0)
        for s in ctx.servers:
            s.cleanup()
        left = ctx.tracker.alive()
        ctx.tracker.close()
        if left:
            failed.append("processes left behind (now killed): %s" % left)
    if failed:
        print("FAIL (seed %d):" % a.seed)
        for f in failed:
            print("  - " + f.replace("\n", "\n    "))
        return FAIL
    print("PASS (seed %d)" % a.seed)
    return PASS


if __name__ == "__main__":
    sys.exit(main())
