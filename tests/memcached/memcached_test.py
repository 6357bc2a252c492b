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
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
sys.path.insert(0, _HERE)
import failover_checks as fc  # noqa: E402
from memcached_harness import (TOOK_OVER_RE, ConnLost, Mc, McError, McServer,  # noqa: E402
                               StartError, log, mono, run_capable, tools_missing,
                               understudy_problems)
from redis_harness import set_log_prefix  # noqa: E402

TOOLS = ("memcached", "memccapable", "memcslap")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    m = ap.add_mutually_exclusive_group()
    m.add_argument("--native", action="store_true",
                   help="plain memcached, no understudy, no kills (+ self-check)")
    m.add_argument("--capable", action="store_true",
                   help="memccapable under understudy, no kill")
    fc.add_kill_args(ap)
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
    fc.add_bound_args(ap, failover_timeout=15.0, start_timeout=20.0, timeout=100.0)
    ap.add_argument("--mc-args", default="",
                    help="extra memcached options, e.g. '-o no_lru_crawler'")
    fc.add_seed_args(ap)
    a = ap.parse_args()
    if a.native or a.capable:
        a.kills = 0
    fc.check_args(ap, a, (a.setget_conns, a.incr_conns), min_replicas=2)
    return a


class Ctx(fc.Ctx):
    program = "memcached"
    reply_errors = (McError,)

    def server(self, label, native=None, extra=()):
        a = self.args
        native = a.native if native is None else native
        return self.keep(McServer(self.tracker, threads=a.threads, memory_mb=256,
                                  extra_args=a.mc_args.split() + list(extra), native=native,
                                  understudy=self.us, replicas=a.replicas,
                                  run_args=a.run_args.split(), label=label))

    # ---- what understudy prints ------------------------------------------
    def complaints(self, srv):
        """understudy's divergence/retired/... lines (none for a native server)."""
        return srv.problems()

    def after_failover(self, srv, killed_pid, st, failovers):
        """understudy printed its "took over" line, naming the killed primary
        and the backup that status now reports as primary."""
        # the supervisor prints its line right after counting the failover
        end = mono() + 3.0
        while len(srv.takeovers()) < failovers and mono() < end:
            time.sleep(0.02)
        lines = srv.takeovers()
        if len(lines) < failovers:
            return ["status reports failover #%d but understudy printed %d \"took over\""
                    " line(s)" % (failovers, len(lines))]
        if int(lines[-1][0]) != killed_pid or int(lines[-1][1]) != int(st["primary"]["pid"]):
            return ["understudy's \"took over\" line names primary %s -> backup %s,"
                    " expected %d -> %s" % (lines[-1][0], lines[-1][1], killed_pid,
                                            st["primary"]["pid"])]
        return []

    # ---- phase (b) -------------------------------------------------------
    def checker_conns(self):
        return [("incr", "INCR", self.args.incr_conns),
                ("setget", "SET/GET", self.args.setget_conns)]

    def worker(self, idx, kind, port, stop):
        return Worker(idx, kind, port, stop, self.args.stall)

    def sabotage_ready(self, workers):
        return all(w.count > 2 for w in workers)

    def sabotage(self, srv, workers):
        """Behind the checker's back: one extra incr, delete an acked key and
        overwrite another."""
        sw = [w for w in workers if w.kind == "setget"]
        side = Mc(srv.port, timeout=self.args.stall)
        if self.args.incr_conns:
            side.incr(workers[0].key)
        if sw:
            side.delete(b"k:%d:0" % sw[0].idx)
            side.set(b"k:%d:1" % sw[-1].idx, b"tampered")
        side.close()
        return "extra incr, delete of an acknowledged key, overwrite of another"

    def verify_data(self, port, workers):
        return verify_data(port, workers, self.args.stall)


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
            if not fc.running_backups(st):
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
            if not fc.running_backups(st):
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
            problems += fc.check_final_status(ctx, srv, 0, None, [])
    except (StartError, RuntimeError, ConnLost, McError) as e:
        problems.append(str(e))
    finally:
        problems += fc.finish(ctx, srv)
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
        n = a.slap_ops * (3 if kill_native else 1)
        cmd = ["memcslap", "-s", "127.0.0.1:%d" % srv.port, "-c", str(a.slap_threads),
               "-t", "set", "-e", str(n)]
        slap, outp, errp, t0 = fc.start_load(ctx, srv, label, cmd, "slap")
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
        p, killed = fc.do_kills(ctx, srv, kills, lambda: slap.poll() is None,
                                "memcslap exited (raise --slap-ops so the load outlasts the"
                                " kills)")
        problems += p
        reserve = 30.0 if "b" in a.phases else 10.0
        problems += fc.wait_load(slap, max(10.0, ctx.left() - reserve), t0)
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
        problems += fc.check_final_status(ctx, srv, kills, pid0, killed)
    except StartError as e:
        problems.append(str(e))
    except (RuntimeError, ConnLost, McError) as e:
        problems.append(str(e))
        problems += ctx.understudy_check(srv, "by then")
    finally:
        fc.stop_load(slap)
        problems += fc.finish(ctx, srv, expect_dead=kill_native)
    return problems


# --------------------------------------------------------------------------
# phase (b): SET+GET / INCR checker under kills (failover_checks.phase_checker)
# --------------------------------------------------------------------------

def value_for(idx, i):
    """Deterministic value and flags of key k:<idx>:<i>: binary (CR LF and NUL
    included), 1..700 bytes, every 61st one 8-40 KB."""
    seed = hashlib.sha256(b"%d:%d" % (idx, i)).digest()
    n = 8192 + (i * 7919) % 32768 if i % 61 == 17 else 1 + (i * 131 + idx * 17) % 700
    v = (b"v%d:%d:\r\n\0" % (idx, i) + seed * (n // 32 + 1))[:max(n, 1)]
    return v, (idx * 7919 + i) & 0xffff


class Worker(fc.Worker):
    def __init__(self, idx, kind, port, stop, stall):
        super().__init__(idx, kind, Mc(port, timeout=stall), stop)
        self.key = b"counter:%d" % idx
        if kind == "incr":
            r = self.conn.set(self.key, b"0")
            if r != b"STORED":
                raise McError("set %s 0 replied %r" % (self.key.decode(), r))

    def step(self):
        return self.step_incr() if self.kind == "incr" else self.step_setget()

    def step_setget(self):
        i = self.count
        key = b"k:%d:%d" % (self.idx, i)
        val, flags = value_for(self.idx, i)
        self.conn.send_raw(Mc.set_cmd(key, val, flags) + Mc.get_cmd(key))
        r = self.conn.storage_reply()
        if r != b"STORED":
            return "set %s replied %r" % (key.decode(), r)
        self.count += 1
        got = self.conn.values()
        if got != {key: (flags, val)}:
            self.flag("get_back", "get %s right after its set returned %s" % (
                key.decode(), {k: (f, len(v)) for k, (f, v) in got.items()} or "nothing"))
        return None

    def step_incr(self):
        r = self.conn.incr(self.key)
        if not isinstance(r, int):
            return "incr %s replied %r" % (self.key.decode(), r)
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
        return None

    def after_run(self):
        try:
            self.conn.version()
        except (ConnLost, McError) as e:
            return "version after the run: %s" % e
        return None


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
        return fc.SKIP
    us, status = fc.understudy_from_env(a.native, "memcached")
    if status is not None:
        return status
    ctx = Ctx(a, us)
    log("seed %d, %s, memcached -t %d, kills %d" % (
        a.seed, "native" if a.native else "understudy %s --replicas %d" % (us, a.replicas),
        a.threads, a.kills))

    def phases(failed):
        if a.native or a.capable:
            log("=== memccapable")
            failed += ["(memccapable) " + x for x in phase_capable(ctx)]
        if not a.capable:
            if "a" in a.phases:
                log("=== phase (a): memcslap with %d kill(s)" % a.kills)
                failed += ["(a) " + x for x in phase_slap(ctx, a.kills)]
            if "b" in a.phases:
                log("=== phase (b): SET/GET/INCR checker with %d kill(s)" % a.kills)
                failed += ["(b) [%s] %s" % kv for kv in fc.phase_checker(ctx, a.kills)]
        if a.native and not a.no_self_check:
            log("=== self-check: the checks must catch a broken server, a dead server and"
                " lost/extra writes")
            failed += ["(self-check scanner) " + x for x in scanner_selfcheck()]
            failed += ["(self-check memccapable) " + x for x in phase_capable(ctx, sabotage=True)]
            failed += ["(self-check a) " + x for x in phase_slap(ctx, 0, kill_native=True)]
            p = fc.phase_checker(ctx, 0, mode="kill-native")
            failed += ["(self-check b) [%s] %s" % kv for kv in p]
            p = fc.phase_checker(ctx, 0, mode="sabotage")
            need = ({"missing_key", "items", "wrong_value"} if a.setget_conns else set()) | \
                ({"incr_seq"} if a.incr_conns else set())
            failed += fc.judge_sabotage(p, need, {"counter_final", "counter_get"})

    return fc.run(ctx, phases)


if __name__ == "__main__":
    sys.exit(main())
