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
import os
import shutil
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.join(_HERE, "..", "lib"))
sys.path.insert(0, _HERE)
import failover_checks as fc  # noqa: E402
from redis_harness import (ConnLost, Resp, RespError, Server, StartError,  # noqa: E402
                           log, mono, set_log_prefix)

BENCH_TESTS = ["SET", "GET", "INCR", "LPUSH"]
BENCH_HEADER = ["test", "rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms",
                "p95_latency_ms", "p99_latency_ms", "max_latency_ms"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--native", action="store_true",
                    help="plain redis-server, no understudy, no kills (+ self-check)")
    fc.add_kill_args(ap)
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
    fc.add_bound_args(ap, failover_timeout=20.0, start_timeout=30.0, timeout=160.0)
    fc.add_seed_args(ap)
    a = ap.parse_args()
    fc.check_args(ap, a, (a.set_conns, a.incr_conns), min_replicas=1)
    return a


class Ctx(fc.Ctx):
    program = "redis-server"
    reply_errors = (RespError,)

    def server(self, label):
        a = self.args
        return self.keep(Server(self.tracker, native=a.native, understudy=self.us,
                                replicas=a.replicas, io_threads=a.io_threads,
                                run_args=a.run_args.split(), label=label))

    # ---- phase (b) -------------------------------------------------------
    def checker_conns(self):
        return [("incr", "INCR", self.args.incr_conns), ("set", "SET", self.args.set_conns)]

    def worker(self, idx, kind, port, stop):
        return Worker(idx, kind, port, stop, self.args.stall)

    def sabotage_ready(self, workers):
        sw = [w for w in workers if w.kind == "set"]
        return all(w.count > 0 for w in workers) and (not sw or sw[0].count >= 2)

    def sabotage(self, srv, workers):
        """Behind the checker's back: one extra INCR, and delete an acked key."""
        sw = [w for w in workers if w.kind == "set"]
        side = Resp(srv.port, timeout=self.args.stall)
        if any(w.kind == "incr" for w in workers):
            side.call("INCR", workers[0].key)
        if sw:
            side.call("DEL", "key:%d:0" % sw[0].idx)
        side.close()
        return "extra INCR, DEL of an acknowledged key"

    def verify_data(self, port, workers):
        return verify_data(port, workers, self.args.stall)


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
        n = a.requests * (10 if kill_native else 1)
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(srv.port), "-c", "20",
               "-n", str(n), "-t", "set,get,incr,lpush", "-q", "--csv"]
        bench, outp, errp, t0 = fc.start_load(ctx, srv, label, cmd, "bench")
        killed = []
        if kill_native:
            time.sleep(ctx.rng.uniform(0.5, 1.0))
            pid, _ = srv.kill_primary()
            log("%s: SIGKILLed native redis-server pid %d" % (label, pid))
        else:
            p, killed = fc.do_kills(ctx, srv, kills, lambda: bench.poll() is None,
                                    "redis-benchmark exited (raise --requests so the load"
                                    " outlasts the kills)")
            problems += p
        # leave time for phase (b) and cleanup within the overall --timeout
        reserve = 50.0 if "b" in a.phases else 15.0
        problems += fc.wait_load(bench, 30.0 if kill_native else max(10.0, ctx.left() - reserve),
                                 t0)
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
            problems += fc.finish(ctx, srv, expect_dead=True)
            return problems
        if rc != 0:
            problems.append("redis-benchmark exited with status %s" % rc)
        for e in errors[:20]:
            problems.append("redis-benchmark printed an error line: %s" % e)
        missing = [t for t in BENCH_TESTS if t not in rows]
        if missing and rc == 0:
            problems.append("redis-benchmark printed no result for %s" % ",".join(missing))
        problems += fc.check_final_status(ctx, srv, kills, pid0, killed)
    except (StartError, RuntimeError) as e:
        problems.append(str(e))
    finally:
        fc.stop_load(bench)
        problems += fc.finish(ctx, srv, expect_dead=kill_native)
    return problems


# --------------------------------------------------------------------------
# phase (b): INCR / SET checker under kills (failover_checks.phase_checker)
# --------------------------------------------------------------------------

class Worker(fc.Worker):
    def __init__(self, idx, kind, port, stop, stall):
        super().__init__(idx, kind, Resp(port, timeout=stall), stop)
        self.key = "counter:%d" % idx

    def step(self):
        conn = self.conn
        if self.kind == "incr":
            conn.send("INCR", self.key)
            r = conn.read()
            if not isinstance(r, int):
                return "INCR %s replied %r" % (self.key, r)
            if r != self.last + 1:
                self.flag("incr_seq", "INCR %s replied %d after %d (expected %d) at op #%d"
                          % (self.key, r, self.last, self.last + 1, self.count + 1))
            self.last = r
        else:
            i = self.count
            conn.send("SET", "key:%d:%d" % (self.idx, i), "v%d" % i)
            r = conn.read()
            if r != "OK":
                return "SET key:%d:%d replied %r" % (self.idx, i, r)
        self.count += 1
        return None

    def after_run(self):
        try:
            r = self.conn.call("PING")
            if r != "PONG":
                return "PING after the run replied %r" % (r,)
        except (ConnLost, RespError) as e:
            return "PING after the run: %s" % e
        return None


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


# --------------------------------------------------------------------------

def main():
    a = parse_args()
    set_log_prefix("[redis_failover%s]" % (" native" if a.native else ""))
    for prog in ("redis-server", "redis-benchmark"):
        if shutil.which(prog) is None:
            print("SKIP: %s not found in PATH" % prog)
            return fc.SKIP
    us, status = fc.understudy_from_env(a.native, "redis-server")
    if status is not None:
        return status
    ctx = Ctx(a, us)
    kills = 0 if a.native else a.kills
    log("seed %d, %s, kills %d%s%s" % (
        a.seed, "native" if a.native else "understudy %s --replicas %d" % (us, a.replicas),
        kills, ", io-threads" if a.io_threads else "",
        " (native: --kills ignored)" if a.native and a.kills else ""))

    def phases(failed):
        if "a" in a.phases:
            log("=== phase (a): redis-benchmark with %d kill(s)" % kills)
            failed += ["(a) " + x for x in phase_benchmark(ctx, kills)]
        if "b" in a.phases:
            log("=== phase (b): INCR/SET checker with %d kill(s)" % kills)
            failed += ["(b) [%s] %s" % kv for kv in fc.phase_checker(ctx, kills)]
        if a.native and not a.no_self_check:
            log("=== self-check: the checks must catch a dead server and lost/extra writes")
            failed += ["(self-check a) " + x for x in phase_benchmark(ctx, 0, kill_native=True)]
            p = fc.phase_checker(ctx, 0, mode="kill-native")
            failed += ["(self-check b) [%s] %s" % kv for kv in p]
            p = fc.phase_checker(ctx, 0, mode="sabotage")
            need = {"missing_key", "dbsize"} | ({"incr_seq"} if a.incr_conns else set())
            failed += fc.judge_sabotage(p, need, {"counter_final", "wrong_value"})

    return fc.run(ctx, phases)


if __name__ == "__main__":
    sys.exit(main())
