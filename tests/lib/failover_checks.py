"""The failover checks that tests/redis/redis_failover.py and
tests/memcached/memcached_test.py have in common.

Python 3 standard library only.  The process handling (Tracker, spawn,
Server's start/status/kill/failover/stop) is tests/redis/redis_harness.py's;
this module is the driver side on top of it:

  * Ctx           - one run of a driver: its arguments, the process tracker,
                    the seeded random source, the servers; a driver subclasses
                    it with what is its own (how to make a server and the
                    checker's connections, the sabotage, the read-back) and
                    may add checks on what understudy prints (complaints,
                    after_failover; none by default)
  * do_kills      - SIGKILL the primary K times under load, each after the
                    previous failover was reported
  * check_final_status, finish - the checks at the end of a phase
  * Worker, phase_checker - the checker phase: connections that each SET
                    unique keys or INCR their own counter through failovers,
                    then progress, stall, hang and gap reporting, the old
                    connections still answering and the read-back
  * start_load, wait_load, stop_load - a load generator (redis-benchmark,
                    memcslap) run in a phase
  * argument helpers, understudy_from_env, run - the drivers' main()
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.join(_HERE, "..", "redis"))
from redis_harness import (ConnLost, Deadline, StartError, Tracker,  # noqa: E402
                           install_deadline, install_fatal_handlers, log, mono, spawn,
                           tail)

PASS, FAIL, SKIP = 0, 1, 77


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------

def add_kill_args(ap):
    ap.add_argument("--kills", type=int, default=1,
                    help="SIGKILLs of the primary per phase (default 1)")
    ap.add_argument("--replicas", type=int, default=None,
                    help="understudy --replicas (default kills+1; must be > kills)")


def add_bound_args(ap, failover_timeout, start_timeout, timeout):
    """The checker's pace, the time limits and `understudy run`'s extra
    options; the limits' defaults are the driver's."""
    ap.add_argument("--duration", type=float, default=2.0,
                    help="checker run time without kills, and minimum run time (default 2 s)")
    ap.add_argument("--post-seconds", type=float, default=1.0,
                    help="checker traffic kept up after the last failover (default 1 s)")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="a reply later than this is a failure (default 10 s)")
    ap.add_argument("--failover-timeout", type=float, default=failover_timeout,
                    help="max seconds for status to report a failover (default %g)"
                    % failover_timeout)
    ap.add_argument("--start-timeout", type=float, default=start_timeout,
                    help="max seconds for the server to start (default %g)" % start_timeout)
    ap.add_argument("--timeout", type=float, default=timeout,
                    help="overall time limit in seconds (default %g)" % timeout)
    ap.add_argument("--run-args", default="",
                    help="extra options for `understudy run`, e.g. '--hang-timeout 2000'")


def add_seed_args(ap):
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--no-self-check", action="store_true",
                    help="with --native: skip the negative self-check")


def check_args(ap, a, conns, min_replicas):
    """The checks on the arguments both drivers share; conns: the numbers
    of checker connections of each kind."""
    if a.replicas is None:
        a.replicas = min(8, max(2, a.kills + 1))
    if not min_replicas <= a.replicas <= 8:
        ap.error("--replicas must be %d..8" % min_replicas)
    if a.kills < 0:
        ap.error("--kills must be >= 0")
    if not a.native and a.kills > a.replicas - 1:
        ap.error("--kills %d needs --replicas >= %d (each failover consumes a backup)"
                 % (a.kills, a.kills + 1))
    if min(conns) < 0 or sum(conns) == 0:
        ap.error("need at least one checker connection")
    if set(a.phases) - set("ab") or not a.phases:
        ap.error("--phases takes a, b or ab")


def understudy_from_env(native, plain):
    """(path, None): $UNDERSTUDY made absolute, or None with --native; or
    (None, exit status) when it is unset (skip) or not an executable (fail),
    the reason printed.  plain: the program --native runs, for the message."""
    if native:
        return None, None
    us = os.environ.get("UNDERSTUDY")
    if not us:
        print("SKIP: $UNDERSTUDY is not set (use --native for a plain %s)" % plain)
        return None, SKIP
    if not (os.path.isfile(us) and os.access(us, os.X_OK)):
        print("FAIL: $UNDERSTUDY=%s is not an executable file" % us)
        return None, FAIL
    return os.path.abspath(us), None


# --------------------------------------------------------------------------
# a driver's run
# --------------------------------------------------------------------------

class Ctx:
    """One run of a driver.  Creating it starts the run: the seed is drawn
    (unless --seed), SIGTERM/SIGINT/SIGHUP and --timeout are armed.

    A subclass gives what is the program's own: program (its name in
    messages), reply_errors (its client's exception for an error reply),
    server(label), and for phase_checker: checker_conns() (the connections'
    kinds, the operation each does, how many), worker(idx, kind, port, stop)
    (a Worker), sabotage_ready(workers), sabotage(srv, workers) (what it did)
    and verify_data(port, workers) (problems).  complaints(srv) and after_failover(...) add checks on what
    understudy prints; there are none by default."""

    program = "server"
    reply_errors = ()

    def __init__(self, args, understudy):
        if args.seed is None:
            args.seed = random.randrange(1 << 30)
        install_fatal_handlers()
        install_deadline(args.timeout)
        self.args = args
        self.us = understudy
        self.tracker = Tracker()
        self.rng = random.Random(args.seed)
        self.servers = []
        self.t_end = mono() + args.timeout

    def keep(self, srv):
        """Register a new server (cleaned up at the end in any case)."""
        self.servers.append(srv)
        return srv

    def left(self):
        return self.t_end - mono()

    def complaints(self, srv):
        """understudy's lines in srv's log that fail the test."""
        return []

    def understudy_check(self, srv, when):
        """complaints(), as problems."""
        p = self.complaints(srv)
        if not p:
            return []
        return ["%s understudy reported: %s" % (when, " | ".join(p[:4]))]

    def after_failover(self, srv, killed_pid, st, failovers):
        """Problems with failover #failovers (killed_pid killed, st the
        status that reported it) beyond what status says."""
        return []


def run(ctx, phases):
    """phases(failed) runs the driver's phases, appending to failed; then
    every server and process is cleaned up and the verdict printed.  Returns
    the exit status."""
    failed = []
    try:
        phases(failed)
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
    seed = ctx.args.seed
    if failed:
        print("FAIL (seed %d):" % seed)
        for f in failed:
            print("  - " + f.replace("\n", "\n    "))
        return FAIL
    print("PASS (seed %d)" % seed)
    return PASS


def judge_sabotage(p, need, tolerated):
    """The checker's problems p from the sabotaged run must include every
    kind in need, and no kind but those and tolerated.  Returns failures."""
    kinds = {k for k, _ in p}
    failed = []
    if need - kinds:
        failed.append("(self-check sabotage) the checker did not flag %s; got: %s"
                      % (sorted(need - kinds), p))
    else:
        log("checker-sabotage: good, flagged %s" % sorted(kinds))
    other = [kv for kv in p if kv[0] not in need | tolerated]
    failed += ["(self-check sabotage) unexpected [%s] %s" % kv for kv in other]
    return failed


# --------------------------------------------------------------------------
# kills and the checks at the end of a phase
# --------------------------------------------------------------------------

def running_backups(st):
    return [b for b in st.get("backups") or [] if b.get("state") == "running"]


def do_kills(ctx, srv, kills, is_alive, what):
    """Kill the primary `kills` times, 0.5-2 s apart, each after the previous
    failover completed.  is_alive() says whether the load is still running;
    what says what happened when it is not.  Returns (problems, killed pids)."""
    problems, killed = [], []
    failovers = 0
    for i in range(kills):
        n = "%d/%d" % (i + 1, kills)
        delay = ctx.rng.uniform(0.5, 2.0)
        end = mono() + delay
        while mono() < end and is_alive():
            time.sleep(0.01)
        if not is_alive():
            problems.append("%s before kill %s; remaining kills skipped" % (what, n))
            break
        if srv.proc.poll() is not None:
            problems.append("`understudy run` exited with status %s before kill %s"
                            % (srv.proc.returncode, n))
            problems += ctx.understudy_check(srv, "before it exited,")
            break
        st = srv.status_retry()
        bad = ctx.understudy_check(srv, "before kill %s," % n)
        if bad or not running_backups(st):
            problems += bad
            problems.append("before kill %s there is no running backup to take over"
                            " (status: %s); remaining kills skipped; understudy log tail:\n%s"
                            % (n, json.dumps(st), tail(srv.logpath, 15)))
            break
        pid, tk = srv.kill_primary()
        killed.append(pid)
        srv.kill_times.append(tk)
        log("kill %s: SIGKILLed primary pid %d (%s) %.2fs into the load"
            % (n, pid, srv.last_killed_cmdline, delay))
        st, dt = srv.wait_failover(failovers, pid, timeout=ctx.args.failover_timeout)
        failovers = int(st["failovers"])
        problems += ctx.after_failover(srv, pid, st, failovers)
        log("kill %s: status reports failover #%d after %.0f ms, new primary pid %d,"
            " %d backup(s) left" % (n, failovers, dt * 1000, st["primary"]["pid"],
                                    len(running_backups(st))))
    return problems, killed


def check_final_status(ctx, srv, kills, pid0, killed):
    """Under understudy: `understudy run` still running, status reports
    exactly `kills` failovers and a primary other than the original pid0 and
    every killed one."""
    if srv.native:
        return []
    if srv.proc.poll() is not None:
        return ["`understudy run` exited with status %s during the run" % srv.proc.returncode] \
            + ctx.understudy_check(srv, "before it exited,")
    st = srv.status_retry()
    problems = []
    if int(st["failovers"]) != kills:
        problems.append("status --json reports failovers=%s, expected %d" % (st["failovers"], kills))
    p = int(st["primary"]["pid"])
    if kills and (p == pid0 or p in killed):
        problems.append("status --json primary pid %d is the original/killed primary"
                        " (original %d, killed %s)" % (p, pid0, killed))
    problems += ctx.understudy_check(srv, "during the run")
    return problems


def finish(ctx, srv, expect_dead=False):
    """Stop the server (SIGTERM, exit 0 expected) and clean up; problems,
    including what understudy complained of while stopping (a backup that
    ended differently from the primary, or had not finished replaying)."""
    try:
        seen = len(ctx.complaints(srv))
        problems = srv.stop(expect_dead=expect_dead)
        late = ctx.complaints(srv)[seen:]
        if late and not expect_dead:
            problems.append("at shutdown understudy reported: %s" % " | ".join(late[:4]))
        return problems
    finally:
        srv.cleanup()


# --------------------------------------------------------------------------
# a load generator (phase (a))
# --------------------------------------------------------------------------

def start_load(ctx, srv, label, cmd, stem):
    """Start cmd, its output in srv's directory (stem.out, stem.err).
    Returns (Popen, out path, err path, start time)."""
    outp, errp = os.path.join(srv.dir, stem + ".out"), os.path.join(srv.dir, stem + ".err")
    with open(outp, "wb") as fo, open(errp, "wb") as fe:
        t0 = mono()
        proc = spawn(cmd, ctx.tracker, cmd[0], stdout=fo, stderr=fe)
    log("%s: started %s pid %d: %s" % (label, cmd[0], proc.pid, " ".join(cmd)))
    return proc, outp, errp, t0


def wait_load(proc, limit, t0):
    """Wait up to limit seconds for the load generator to exit; one that
    runs on is a failure (and killed)."""
    try:
        proc.wait(timeout=max(0.0, limit))
        return []
    except subprocess.TimeoutExpired:
        problem = ("%s still running after %.0fs (throughput too low or a connection hangs);"
                   " killed it" % (proc.args[0], mono() - t0))
        proc.kill()
        proc.wait()
        return [problem]


def stop_load(proc):
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------
# the checker (phase (b))
# --------------------------------------------------------------------------

class Worker(threading.Thread):
    """One checker connection, connected before any kill: kind "incr"
    INCRs its own counter (key), the other kind SETs unique keys.  A
    subclass gives step(), one acknowledged operation (counting it in
    count; a string return is a reply that ends the run, a bad_reply), and
    after_run(), whether the connection still answers (None, or a problem)."""

    def __init__(self, idx, kind, conn, stop):
        super().__init__(name="%s-%d" % (kind, idx), daemon=True)
        self.idx, self.kind, self.stop = idx, kind, stop
        self.conn = conn
        self.count = 0          # acknowledged operations
        self.last = 0           # INCR: last value seen
        self.bad = []           # reply anomalies (kind, message)
        self.error = None       # connection error
        self.t_last = None
        self.max_gap = 0.0
        self.max_gap_at = None

    def flag(self, kind, msg):
        """A reply anomaly (the first 20 are kept)."""
        if len(self.bad) < 20:
            self.bad.append((kind, "conn %d: %s" % (self.idx, msg)))

    def step(self):
        raise NotImplementedError

    def after_run(self):
        raise NotImplementedError

    def run(self):
        prev_t = mono()
        try:
            while not self.stop.is_set():
                bad = self.step()
                if bad:
                    self.bad.append(("bad_reply", "conn %d: %s" % (self.idx, bad)))
                    break
                t = mono()
                if t - prev_t > self.max_gap:
                    self.max_gap, self.max_gap_at = t - prev_t, (self.count, prev_t)
                prev_t = self.t_last = t
        except ConnLost as e:
            self.error = "conn %d (%s, after %d acknowledged ops): %s" % (
                self.idx, self.kind, self.count, e)
        except Exception as e:      # an error reply, protocol garbage
            self.error = "conn %d (%s, after %d acknowledged ops): %r" % (
                self.idx, self.kind, self.count, e)


def phase_checker(ctx, kills, mode="normal"):
    """The checker against a fresh server, the primary SIGKILLed `kills`
    times mid-run.  mode: normal | sabotage (the checks must catch writes
    behind the checker's back) | kill-native (every connection must report
    the death of a native server).  Returns a list of (kind, msg)."""
    a = ctx.args
    label = "checker" if mode == "normal" else "checker-" + mode
    srv = ctx.server(label + "-server")
    problems, workers, stop = [], [], threading.Event()
    try:
        srv.start(timeout=a.start_timeout)
        pid0 = srv.primary_pid()
        conns = ctx.checker_conns()
        for kind, _, n in conns:
            for _ in range(n):
                workers.append(ctx.worker(len(workers), kind, srv.port, stop))
        t0 = mono()
        for w in workers:
            w.start()
        log("%s: %s connections running" % (label, " + ".join("%d %s" % (n, op)
                                                              for _, op, n in conns)))

        def running():
            return all(w.is_alive() for w in workers)

        if mode == "kill-native":
            time.sleep(ctx.rng.uniform(0.5, 1.0))
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native %s pid %d" % (label, ctx.program, pid))
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
            problems += [("cleanup", p) for p in finish(ctx, srv, expect_dead=True)]
            return problems

        if mode == "sabotage":
            # behind the checker's back, once every connection has some acked ops
            end = mono() + 10
            while mono() < end and running() and not ctx.sabotage_ready(workers):
                time.sleep(0.01)
            log("%s: sabotage done (%s)" % (label, ctx.sabotage(srv, workers)))

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
        # keep the load up a little longer
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
            log("%s: conn %d %-6s %7d ops%s, longest gap between replies %.0f ms (op #%d,"
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
                bad = w.after_run()
                if bad:
                    problems.append(("conn_error", "conn %d: %s" % (w.idx, bad)))
            vp = ctx.verify_data(srv.port, workers)
            problems += vp
            log("%s: read back %d acknowledged SETs and %d counter(s) via a new connection: %s"
                % (label, sum(w.count for w in workers if w.kind != "incr"),
                   sum(1 for w in workers if w.kind == "incr"),
                   "%d problem(s)" % len(vp) if vp else "all present and exact"))
        problems += [("status", x) for x in check_final_status(ctx, srv, kills, pid0, killed)]
    except StartError as e:
        problems.append(("error", str(e)))
    except (RuntimeError, ConnLost) + ctx.reply_errors as e:
        problems.append(("error", str(e)))
        problems += [("understudy", x) for x in ctx.understudy_check(srv, "by then")]
    finally:
        stop.set()
        for w in workers:
            w.conn.close()
        problems += [("cleanup", p) for p in finish(ctx, srv)]
    return problems
