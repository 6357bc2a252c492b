#!/usr/bin/env python3
"""redis failover test for understudy.

  redis_failover.py [--native] [--kills K] [--replicas N] [--io-threads] ...

Runs `redis-server` (natively with --native, otherwise under
`$UNDERSTUDY run --replicas N`) and checks, in two phases, each against a
fresh server:

 (a) benchmark: redis-benchmark (-c 20, SET/GET/INCR/LPUSH) runs while the
     primary is SIGKILLed K times (first kill after a random 0.5-2 s, each next
     one 0.5-2 s after the previous failover completed).  redis-benchmark must
     exit 0 and print nothing but its CSV.
 (b) checker: one connection INCRs a counter (every reply must be exactly the
     previous one + 1, across failovers), others SET unique keys
     key:<conn>:<i> = v<i>; the primary is SIGKILLed K times mid-run.  No
     connection may see an error, reset, EOF or a 10 s stall, every connection
     must make progress after the last failover and still answer PING, and
     afterwards every acknowledged SET is readable with its value, the
     counters equal their last acknowledged value and DBSIZE matches exactly
     (no lost and no phantom/duplicated write).  status --json must report
     failovers == K and a primary pid different from every killed one.

--native runs both phases without kills (a native server cannot fail over),
then a self-check proving the checks can fail: SIGKILLing native redis must
make redis-benchmark and every checker connection report an error, and a
sabotaged run (an extra INCR and a DEL behind the checker's back) must be
flagged.

Every process started is killed by pid (start time checked) on exit, even on
failure; the whole run is bounded by --timeout.
Exit status: 0 pass, 1 fail, 77 skip ($UNDERSTUDY unset without --native,
or redis-server / redis-benchmark missing).
"""

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from redis_harness import (ConnLost, Deadline, Resp, RespError, Server,  # noqa: E402
                           StartError, Tracker, install_deadline,
                           install_fatal_handlers, log, mono,
                           set_log_prefix, spawn, tail)

PASS, FAIL, SKIP = 0, 1, 77
BENCH_TESTS = ["SET", "GET", "INCR", "LPUSH"]
BENCH_HEADER = ["test", "rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms",
                "p95_latency_ms", "p99_latency_ms", "max_latency_ms"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--native", action="store_true",
                    help="plain redis-server, no understudy, no kills (+ self-check)")
    ap.add_argument("--kills", type=int, default=1,
                    help="SIGKILLs of the primary per phase (default 1)")
    ap.add_argument("--replicas", type=int, default=None,
                    help="understudy --replicas (default kills+1; must be > kills)")
    ap.add_argument("--io-threads", action="store_true",
                    help="run redis with --io-threads 2 --io-threads-do-reads yes")
    ap.add_argument("--phases", default="ab",
                    help="which phases to run: a (benchmark), b (checker); default ab")
    ap.add_argument("--requests", type=int, default=200000,
                    help="redis-benchmark -n (default 200000)")
    ap.add_argument("--set-conns", type=int, default=4,
                    help="checker connections doing SET (default 4)")
    ap.add_argument("--incr-conns", type=int, default=1,
                    help="checker connections doing INCR, each on its own counter (default 1)")
    ap.add_argument("--duration", type=float, default=2.0,
                    help="checker run time without kills, and minimum run time (default 2 s)")
    ap.add_argument("--post-seconds", type=float, default=1.0,
                    help="checker traffic kept up after the last failover (default 1 s)")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="a reply later than this is a failure (default 10 s)")
    ap.add_argument("--failover-timeout", type=float, default=20.0,
                    help="max seconds for status to report a failover (default 20)")
    ap.add_argument("--start-timeout", type=float, default=30.0,
                    help="max seconds for the server to start (default 30)")
    ap.add_argument("--timeout", type=float, default=160.0,
                    help="overall time limit in seconds (default 160)")
    ap.add_argument("--run-args", default="",
                    help="extra options for `understudy run`, e.g. '--hang-timeout 2000'")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--no-self-check", action="store_true",
                    help="with --native: skip the negative self-check")
    a = ap.parse_args()
    if a.replicas is None:
        a.replicas = min(8, max(2, a.kills + 1))
    if not 1 <= a.replicas <= 8:
        ap.error("--replicas must be 1..8")
    if a.kills < 0:
        ap.error("--kills must be >= 0")
    if not a.native and a.kills > a.replicas - 1:
        ap.error("--kills %d needs --replicas >= %d (each failover consumes a backup)"
                 % (a.kills, a.kills + 1))
    if a.set_conns < 0 or a.incr_conns < 0 or a.set_conns + a.incr_conns == 0:
        ap.error("need at least one checker connection")
    if set(a.phases) - set("ab"):
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

    def server(self, label):
        a = self.args
        s = Server(self.tracker, native=a.native, understudy=self.us, replicas=a.replicas,
                   io_threads=a.io_threads, run_args=a.run_args.split(), label=label)
        self.servers.append(s)
        return s


def wait_exit(proc, seconds):
    """Wait up to seconds for proc; True if it exited."""
    try:
        proc.wait(timeout=max(0.0, seconds))
        return True
    except Exception:
        return False


def do_kills(ctx, srv, kills, is_alive, what):
    """Kill the primary `kills` times, 0.5-2 s apart, each after the previous
    failover is complete.  is_alive() says whether the load is still running.
    Returns (problems, killed pids, last failover completion time)."""
    problems, killed, t_done = [], [], None
    failovers = 0
    for i in range(kills):
        delay = ctx.rng.uniform(0.5, 2.0)
        end = mono() + delay
        while mono() < end and is_alive():
            time.sleep(0.01)
        if not is_alive():
            problems.append("%s before kill %d/%d; remaining kills skipped" % (what, i + 1, kills))
            break
        if not srv.native:
            st = srv.status_retry()
            running = [b for b in st.get("backups") or [] if b.get("state") == "running"]
            if not running:
                problems.append("before kill %d/%d there is no running backup to take over"
                                " (status: %s); remaining kills skipped; understudy log tail:\n%s"
                                % (i + 1, kills, json.dumps(st), tail(srv.logpath, 15)))
                break
        pid, tk = srv.kill_primary()
        killed.append(pid)
        srv.kill_times.append(tk)
        log("kill %d/%d: SIGKILLed primary pid %d (%s) %.2fs into the load"
            % (i + 1, kills, pid, srv.last_killed_cmdline, delay))
        st, dt = srv.wait_failover(failovers, pid, timeout=ctx.args.failover_timeout)
        failovers = int(st["failovers"])
        t_done = mono()
        log("kill %d/%d: status reports failover #%d after %.0f ms, new primary pid %d,"
            " %d backup(s) left" % (i + 1, kills, failovers, dt * 1000, st["primary"]["pid"],
                                    len(st.get("backups") or [])))
    return problems, killed, t_done


def check_final_status(srv, kills, pid0, killed):
    st = srv.status_retry()
    problems = []
    if int(st["failovers"]) != kills:
        problems.append("status --json reports failovers=%s, expected %d" % (st["failovers"], kills))
    p = int(st["primary"]["pid"])
    if kills and (p == pid0 or p in killed):
        problems.append("status --json primary pid %d is the original/killed primary"
                        " (original %d, killed %s)" % (p, pid0, killed))
    return problems


# --------------------------------------------------------------------------
# phase (a): redis-benchmark under kills
# --------------------------------------------------------------------------

def parse_bench(out, err):
    """Returns (rows {test: dict}, error lines)."""
    rows, errors = {}, []
    for line in err.splitlines():
        if line.strip():
            errors.append("stderr: " + line.strip())
    lines = [l for l in out.replace("\r", "\n").splitlines() if l.strip()]
    for rec, raw in zip(csv.reader(io.StringIO("\n".join(lines))), lines):
        if rec == BENCH_HEADER:
            continue
        if len(rec) == len(BENCH_HEADER) and rec[0] in BENCH_TESTS:
            try:
                rows[rec[0]] = {k: float(v) for k, v in zip(BENCH_HEADER[1:], rec[1:])}
                continue
            except ValueError:
                pass
        errors.append("stdout: " + raw.strip())
    return rows, errors


def phase_benchmark(ctx, kills, kill_native=False):
    a = ctx.args
    label = "bench-selfcheck" if kill_native else "bench"
    srv = ctx.server(label + "-server")
    problems, bench = [], None
    try:
        srv.start(timeout=a.start_timeout)
        pid0 = srv.primary_pid()
        outp, errp = os.path.join(srv.dir, "bench.out"), os.path.join(srv.dir, "bench.err")
        n = a.requests * (10 if kill_native else 1)
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(srv.port), "-c", "20",
               "-n", str(n), "-t", "set,get,incr,lpush", "-q", "--csv"]
        with open(outp, "wb") as fo, open(errp, "wb") as fe:
            t0 = mono()
            bench = spawn(cmd, ctx.tracker, "redis-benchmark", stdout=fo, stderr=fe)
        log("%s: started redis-benchmark pid %d: %s" % (label, bench.pid, " ".join(cmd)))
        killed = []
        if kill_native:
            time.sleep(ctx.rng.uniform(0.5, 1.0))
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native redis-server pid %d" % (label, pid))
        else:
            p, killed, _ = do_kills(ctx, srv, kills, lambda: bench.poll() is None,
                                    "redis-benchmark exited (raise --requests so the load"
                                    " outlasts the kills)")
            problems += p
        # leave time for phase (b) and cleanup within the overall --timeout
        reserve = 50.0 if "b" in a.phases else 15.0
        limit = 30.0 if kill_native else max(10.0, ctx.t_end - mono() - reserve)
        if not wait_exit(bench, limit):
            problems.append("redis-benchmark still running after %.0fs (throughput too low"
                            " or a connection hangs); killed it" % (mono() - t0))
            bench.kill()
            bench.wait()
        rc = bench.returncode
        rows, errors = parse_bench(open(outp, errors="replace").read(),
                                   open(errp, errors="replace").read())
        log("%s: redis-benchmark exited %s after %.1fs; %s" % (
            label, rc, mono() - t0, ", ".join("%s %.0f rps" % (t, r["rps"]) for t, r in rows.items())
            or "no results"))
        if kill_native:
            if rc == 0 and not errors:
                problems.append("SELF-CHECK: redis-benchmark exited 0 without error lines although"
                                " the server was SIGKILLed; this test could not detect a failure")
            else:
                log("%s: good, the kill was detected (status %s, %r)" % (
                    label, rc, errors[:1]))
            problems += srv.stop(expect_dead=True)
            return problems
        if rc != 0:
            problems.append("redis-benchmark exited with status %s" % rc)
        for e in errors[:20]:
            problems.append("redis-benchmark printed an error line: %s" % e)
        missing = [t for t in BENCH_TESTS if t not in rows]
        if missing and rc == 0:
            problems.append("redis-benchmark printed no result for %s" % ",".join(missing))
        if not a.native:
            problems += check_final_status(srv, kills, pid0, killed)
    except (StartError, RuntimeError) as e:
        problems.append(str(e))
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        problems += srv.stop(expect_dead=kill_native)
        srv.cleanup()
    return problems


# --------------------------------------------------------------------------
# phase (b): INCR / SET checker under kills
# --------------------------------------------------------------------------

class Worker(threading.Thread):
    def __init__(self, idx, kind, port, stop, stall):
        super().__init__(name="%s-%d" % (kind, idx), daemon=True)
        self.idx, self.kind, self.stop = idx, kind, stop
        self.conn = Resp(port, timeout=stall)      # connected before any kill
        self.key = "counter:%d" % idx
        self.count = 0          # acknowledged operations
        self.last = 0           # INCR: last value seen
        self.bad = []           # reply anomalies (kind, message)
        self.error = None       # connection error
        self.t_last = None
        self.max_gap = 0.0
        self.max_gap_at = None

    def run(self):
        conn, prev_t = self.conn, mono()
        try:
            while not self.stop.is_set():
                if self.kind == "incr":
                    conn.send("INCR", self.key)
                    r = conn.read()
                    if not isinstance(r, int):
                        self.bad.append(("bad_reply", "conn %d: INCR %s replied %r"
                                         % (self.idx, self.key, r)))
                        break
                    if r != self.last + 1 and len(self.bad) < 20:
                        self.bad.append(("incr_seq", "conn %d: INCR %s replied %d after %d"
                                         " (expected %d) at op #%d"
                                         % (self.idx, self.key, r, self.last, self.last + 1,
                                            self.count + 1)))
                    self.last = r
                else:
                    i = self.count
                    conn.send("SET", "key:%d:%d" % (self.idx, i), "v%d" % i)
                    r = conn.read()
                    if r != "OK":
                        self.bad.append(("bad_reply", "conn %d: SET key:%d:%d replied %r"
                                         % (self.idx, self.idx, i, r)))
                        break
                self.count += 1
                t = mono()
                if t - prev_t > self.max_gap:
                    self.max_gap, self.max_gap_at = t - prev_t, (self.count, prev_t)
                prev_t = self.t_last = t
        except ConnLost as e:
            self.error = "conn %d (%s, after %d acknowledged ops): %s" % (
                self.idx, self.kind, self.count, e)
        except Exception as e:      # protocol garbage etc.
            self.error = "conn %d (%s): %r" % (self.idx, self.kind, e)


def verify_data(port, workers, stall):
    """Every acknowledged SET readable, counters exact, DBSIZE exact."""
    problems = []
    c = Resp(port, timeout=stall)
    try:
        expected_keys = 0
        for w in workers:
            if w.kind == "incr":
                expected_keys += 1 if w.count else 0
                v = c.call("GET", w.key)
                if v is None or int(v) != w.last:
                    problems.append(("counter_final", "GET %s = %r, but the last acknowledged"
                                     " INCR returned %d" % (w.key, v, w.last)))
                continue
            expected_keys += w.count
            missing, wrong = [], []
            for lo in range(0, w.count, 1000):
                idx = range(lo, min(w.count, lo + 1000))
                replies = c.pipeline([("GET", "key:%d:%d" % (w.idx, i)) for i in idx])
                for i, r in zip(idx, replies):
                    if r is None:
                        missing.append(i)
                    elif r != b"v%d" % i:
                        wrong.append((i, r))
            if missing:
                problems.append(("missing_key", "conn %d: %d acknowledged SET(s) lost, e.g."
                                 " key:%d:%s" % (w.idx, len(missing), w.idx, missing[:5])))
            if wrong:
                problems.append(("wrong_value", "conn %d: %d key(s) with a wrong value, e.g. %s"
                                 % (w.idx, len(wrong), wrong[:3])))
            # the next key was never sent: it must not exist
            if c.call("EXISTS", "key:%d:%d" % (w.idx, w.count)):
                problems.append(("phantom", "key:%d:%d exists but was never sent"
                                 % (w.idx, w.count)))
        n = c.call("DBSIZE")
        if n != expected_keys:
            problems.append(("dbsize", "DBSIZE is %d, expected exactly %d (acknowledged keys +"
                             " counters)" % (n, expected_keys)))
    finally:
        c.close()
    return problems


def phase_checker(ctx, kills, mode="normal"):
    """mode: normal | sabotage | kill-native.  Returns list of (kind, msg)."""
    a = ctx.args
    label = "checker" if mode == "normal" else "checker-" + mode
    srv = ctx.server(label + "-server")
    problems, workers, stop = [], [], threading.Event()
    try:
        srv.start(timeout=a.start_timeout)
        pid0 = srv.primary_pid()
        for i in range(a.incr_conns):
            workers.append(Worker(i, "incr", srv.port, stop, a.stall))
        for i in range(a.incr_conns, a.incr_conns + a.set_conns):
            workers.append(Worker(i, "set", srv.port, stop, a.stall))
        t0 = mono()
        for w in workers:
            w.start()
        log("%s: %d INCR + %d SET connections running" % (label, a.incr_conns, a.set_conns))

        def running():
            return all(w.is_alive() for w in workers)

        killed = []
        if mode == "kill-native":
            time.sleep(ctx.rng.uniform(0.5, 1.0))
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native redis-server pid %d" % (label, pid))
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
            problems += [("cleanup", p) for p in srv.stop(expect_dead=True)]
            return problems

        if mode == "sabotage":
            # behind the checker's back: one extra INCR, and delete an acked key
            end = mono() + 10
            sw = [w for w in workers if w.kind == "set"]
            while mono() < end and running() and not (
                    all(w.count > 0 for w in workers) and (not sw or sw[0].count >= 2)):
                time.sleep(0.01)
            side = Resp(srv.port, timeout=a.stall)
            if any(w.kind == "incr" for w in workers):
                side.call("INCR", workers[0].key)
            if sw:
                side.call("DEL", "key:%d:0" % sw[0].idx)
            side.close()
            log("%s: sabotage done (extra INCR, DEL of an acknowledged key)" % label)

        p, killed, t_fail = do_kills(ctx, srv, kills, running,
                                     "a checker connection stopped (see its error)")
        problems += [("kill", x) for x in p]

        kill_times = srv.kill_times
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
            log("%s: conn %d %-4s %7d ops%s, longest gap between replies %.0f ms (op #%d,"
                " from t=%.2fs%s)%s"
                % (label, w.idx, w.kind, w.count,
                   " (last %d)" % w.last if w.kind == "incr" else "",
                   w.max_gap * 1000, gap_op, gap_t - t0,
                   "".join(", kill at t=%.2fs" % (k - t0) for k in kill_times),
                   " ERROR " + w.error if w.error else ""))
            if w.error:
                problems.append(("conn_error", w.error))
            problems += w.bad
        if not any(k in ("conn_error", "hang", "bad_reply") for k, _ in problems):
            # the old connections survive the failover(s)
            for w in workers:
                try:
                    r = w.conn.call("PING")
                    if r != "PONG":
                        problems.append(("conn_error", "conn %d: PING after the run replied %r"
                                         % (w.idx, r)))
                except (ConnLost, RespError) as e:
                    problems.append(("conn_error", "conn %d: PING after the run: %s" % (w.idx, e)))
            vp = verify_data(srv.port, workers, a.stall)
            problems += vp
            log("%s: read back %d acknowledged SETs and %d counter(s) via a new connection: %s"
                % (label, sum(w.count for w in workers if w.kind == "set"),
                   sum(1 for w in workers if w.kind == "incr"),
                   "%d problem(s)" % len(vp) if vp else "all present and exact"))
        if not a.native:
            problems += [("status", x) for x in check_final_status(srv, kills, pid0, killed)]
    except (StartError, RuntimeError, ConnLost, RespError) as e:
        problems.append(("error", str(e)))
    finally:
        stop.set()
        for w in workers:
            w.conn.close()
        problems += [("cleanup", p) for p in srv.stop()]
        srv.cleanup()
    return problems


# --------------------------------------------------------------------------

def main():
    a = parse_args()
    set_log_prefix("[redis_failover%s]" % (" native" if a.native else ""))
    for prog in ("redis-server", "redis-benchmark"):
        if shutil.which(prog) is None:
            print("SKIP: %s not found in PATH" % prog)
            return SKIP
    us = None
    if not a.native:
        us = os.environ.get("UNDERSTUDY")
        if not us:
            print("SKIP: $UNDERSTUDY is not set (use --native for a plain redis-server)")
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
    kills = 0 if a.native else a.kills
    log("seed %d, %s, kills %d%s%s" % (
        a.seed, "native" if a.native else "understudy %s --replicas %d" % (us, a.replicas),
        kills, ", io-threads" if a.io_threads else "",
        " (native: --kills ignored)" if a.native and a.kills else ""))
    failed = []
    try:
        if "a" in a.phases:
            log("=== phase (a): redis-benchmark with %d kill(s)" % kills)
            p = phase_benchmark(ctx, kills)
            failed += ["(a) " + x for x in p]
        if "b" in a.phases:
            log("=== phase (b): INCR/SET checker with %d kill(s)" % kills)
            p = phase_checker(ctx, kills)
            failed += ["(b) [%s] %s" % kv for kv in p]
        if a.native and not a.no_self_check:
            log("=== self-check: the checks must catch a dead server and lost/extra writes")
            p = phase_benchmark(ctx, 0, kill_native=True)
            failed += ["(self-check a) " + x for x in p]
            p = phase_checker(ctx, 0, mode="kill-native")
            failed += ["(self-check b) [%s] %s" % kv for kv in p]
            p = phase_checker(ctx, 0, mode="sabotage")
            kinds = {k for k, _ in p}
            need = {"missing_key", "dbsize"} | ({"incr_seq"} if a.incr_conns else set())
            if need - kinds:
                failed.append("(self-check sabotage) the checker did not flag %s; got: %s"
                              % (sorted(need - kinds), p))
            else:
                log("checker-sabotage: good, flagged %s" % sorted(kinds))
            other = [kv for kv in p if kv[0] not in need | {"counter_final", "wrong_value"}]
            failed += ["(self-check sabotage) unexpected [%s] %s" % kv for kv in other]
    except Deadline as e:
        failed.append(str(e))
    except SystemExit as e:
        failed.append("interrupted (signal %s)" % (e.code - 128 if isinstance(e.code, int) else e.code))
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
