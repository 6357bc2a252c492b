"""Harness for understudy's multithreaded batch programs (tests/apps/mt_*.c).

Python 3 standard library only; meant to run with /usr/bin/python3.

A batch program runs for a fixed time (`-d MS`), prints a journal on stdout
(a regular file here, so output is exactly once across a failover) and
exits 0, or 2 if one of its own invariants broke. A driver
(tests/apps/test_mt_<name>.py) gives a Spec: the program's default
arguments and check(lines, args), which replays the journal and raises
h.TestFailure when it is not a history the program could have produced.
main() does the rest:

  --native        run the program twice natively with the same -S seed:
                  both journals must check; whether they differ (the
                  schedule alone changed them) is reported. Then the
                  journal checker's own test: mutated copies of a good
                  journal (a line dropped, duplicated, a number changed,
                  the end cut off) must all be rejected.
  (default)       under $UNDERSTUDY run --replicas N (skip, 77, if unset)
  --kills 0       no fault: exit status 0, journal checks, stderr has none
                  of BAD_WORDS ("divergence", "retired", "had not finished",
                  ...) and no "took over";
  --kills K       the primary SIGKILLed K times at random moments while the
                  program runs (--fault crash-in-write: made to die right after
                  its next write, before logging it) (pid from `understudy status --json`), each
                  after the previous failover was reported: exit status 0,
                  K "took over" lines, no divergence, the journal checks
                  (every line once: nothing lost or repeated at a failover),
                  and the program wrote more output after the last kill (the
                  kill landed mid-run). A program that ended before a kill
                  is a setup failure, reported as such.

The seed (printed; --seed or $SEED) fixes the kill moments and the -S seed
of the native runs; under understudy the program draws its seeds from
getrandom(), which understudy replicates.
Exit status: 0 pass, 1 fail, 77 skip.
"""

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import us_harness as h  # noqa: E402

TestFailure = h.TestFailure
# Most telling first: a "retired" line only says "see above".
BAD_WORDS = ("divergence", "diverged", "invariant broken", "unsupported", "cannot replicate",
             "fatal", "deterministic crash", "failed to take over", "no backup is left",
             "died", "had not finished", "retired")


class Spec:
    """Override in each driver."""
    name = "mt_prog"
    # Extra default program arguments (besides -d, -t).
    default_args = []
    default_threads = None   # None: the program's own default
    default_duration_ms = 3000

    def check(self, lines, args):
        """Replay the journal (list of str, without newlines); raise
        TestFailure on anything impossible. Return a list of summary
        strings."""
        raise NotImplementedError

    # For the "number changed" mutations: per line tag, the indices (the tag
    # is field 0) of the fields that check() determines exactly, so that a
    # change must be caught. Fields that any schedule could have produced
    # (which consumer got an item...) are left out. None: every number.
    determined = None

    def mutations(self, lines, rng):
        """Journals that check() must reject: (description, lines)."""
        return generic_mutations(lines, rng, self.determined)


# --------------------------------------------------------------------------
# Helpers for checkers

M64 = (1 << 64) - 1
FNV_INIT = 14695981039346656037


class Rand:
    """splitmix64, as mt_rand() in tests/apps/mt_common.h."""

    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def mix(h_, v):
    """mt_mix(): FNV-1a over the 8 little-endian bytes of v."""
    v &= M64
    for i in range(8):
        h_ ^= (v >> (8 * i)) & 0xff
        h_ = (h_ * 1099511628211) & M64
    return h_


def fail(lineno, line, msg):
    raise TestFailure("journal line %d %r: %s" % (lineno + 1, line[:120], msg))


def ints(lineno, line, fields, n=None):
    """The fields (after the tag) of a journal line as ints; hex with 0x."""
    try:
        vals = [int(f, 0) for f in fields]
    except ValueError:
        fail(lineno, line, "not a number")
    if n is not None and len(vals) != n:
        fail(lineno, line, "expected %d numbers, got %d" % (n, len(vals)))
    return vals


def parse_seeds(lines, threads, tag="seed"):
    """Header lines 'seed T HEX' for T = 0..threads-1 -> list of seeds."""
    seeds = {}
    for i, line in enumerate(lines):
        f = line.split()
        if f and f[0] == tag:
            if len(f) != 3:
                fail(i, line, "bad seed line")
            t = int(f[1])
            if t in seeds:
                fail(i, line, "seed of thread %d printed twice" % t)
            seeds[t] = int(f[2], 16)
    if sorted(seeds) != list(range(threads)):
        raise TestFailure("header has seeds for threads %s, expected 0..%d"
                          % (sorted(seeds), threads - 1))
    return [seeds[t] for t in range(threads)]


def header_value(lines, key):
    """The integer after `key` in the first line (the program's header)."""
    f = lines[0].split() if lines else []
    if key not in f or f.index(key) + 1 >= len(f):
        raise TestFailure("header %r has no %r" % (lines[0] if lines else "", key))
    return int(f[f.index(key) + 1])


def end_line(lines):
    """The fields of the final 'end ...' line as a dict; it must be last and
    appear once."""
    ends = [i for i, line in enumerate(lines) if line.startswith("end ")]
    if len(ends) != 1 or ends[0] != len(lines) - 1:
        raise TestFailure("expected exactly one 'end' line, as the last line; found %d "
                          "(at %s) in %d lines" % (len(ends), ends[:5], len(lines)))
    f = lines[-1].split()[1:]
    if len(f) % 2:
        raise TestFailure("bad end line %r" % lines[-1])
    try:
        return {f[i]: int(f[i + 1], 0) for i in range(0, len(f), 2)}
    except ValueError:
        raise TestFailure("bad end line %r" % lines[-1])


class PerThread:
    """Each thread's journal lines carry its operation number I: they must
    be 0, 1, 2... with no gap or repeat."""

    def __init__(self, seeds=None, nthreads=None):
        n = len(seeds) if seeds is not None else nthreads
        self.next_i = [0] * n
        self.rand = [Rand(s) for s in seeds] if seeds is not None else None

    def step(self, lineno, line, t, i):
        if not 0 <= t < len(self.next_i):
            fail(lineno, line, "no thread %d" % t)
        if i != self.next_i[t]:
            fail(lineno, line, "thread %d: operation %d, expected %d (an operation lost or "
                 "repeated)" % (t, i, self.next_i[t]))
        self.next_i[t] += 1
        return self.rand[t].next() if self.rand is not None else None


def generic_mutations(lines, rng, determined=None):
    """Edits of a good journal that no checker may accept. Lines of the
    body (between the header and the end line) are chosen at random;
    `determined` as Spec.determined."""
    first_body = next((i for i, line in enumerate(lines)
                       if i > 0 and not line.startswith("seed ")), 1)
    body = list(range(first_body, len(lines) - 1))
    if not body:
        return []
    out = []
    i = rng.choice(body)
    out.append(("line %d dropped" % (i + 1), lines[:i] + lines[i + 1:]))
    i = rng.choice(body)
    out.append(("line %d duplicated" % (i + 1), lines[:i + 1] + lines[i:]))
    out.append(("the end line cut off", lines[:-1]))
    if len(body) > 4:
        cut = rng.choice(body[len(body) // 2:])
        out.append(("cut after line %d" % (cut + 1), lines[:cut]))
    # change one number of a random body line: its last one, then others
    n = tries = 0
    while n < 4 and tries < 1000:
        tries += 1
        i = rng.choice(body)
        f = lines[i].split()
        nums = [k for k in range(1, len(f)) if re.fullmatch(r"-?[0-9]+|[0-9a-f]{16}", f[k])]
        if determined is not None:
            nums = [k for k in nums if k in determined.get(f[0], ())]
        if not nums:
            continue
        n += 1
        k = nums[-1] if n == 1 else rng.choice(nums)
        if len(f[k]) == 16 and not f[k].lstrip("-").isdigit():
            f[k] = "%016x" % (int(f[k], 16) ^ 1)
        else:
            f[k] = str(int(f[k]) + rng.choice((-1, 1)))
        out.append(("line %d field %d changed to %s" % (i + 1, k + 1, f[k]),
                    lines[:i] + [" ".join(f)] + lines[i + 1:]))
    return out


# --------------------------------------------------------------------------
# Running


class BatchRun(h.Server):
    """One run of the program, natively or under `understudy run`, with the
    cleanup of h.Server (process group, every replica pid ever reported)."""

    def __init__(self, argv, workdir, native, understudy=None, replicas=2, run_args=()):
        os.makedirs(workdir, exist_ok=True)
        super().__init__(lambda _port: argv, workdir, native, understudy, replicas, run_args)

    def start_batch(self):
        cmd = self.command(None)
        h.log("starting: %s" % " ".join(cmd))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        self.pgid = self.proc.pid
        self.t_start = time.monotonic()
        h.register_for_cleanup(self)

    def out_size(self):
        try:
            return os.path.getsize(self.stdout_path)
        except OSError:
            return 0

    def wait_header(self, deadline):
        """Until the program's flushed header is in its stdout: it runs."""
        def ready():
            if self.out_size() > 0:
                return "up"
            if self.proc.poll() is not None:
                return "exited"
            return None
        if h.poll_until(ready, deadline, "the program's header on stdout") == "exited" \
                and self.out_size() == 0:
            raise TestFailure("the program exited (status %r) before printing anything"
                              % self.proc.returncode)
        self.t_header = time.monotonic()

    def wait_exit(self, deadline, what):
        try:
            return self.proc.wait(max(0.1, deadline.remaining()))
        except subprocess.TimeoutExpired:
            raise TestFailure("%s did not end within the test's time bound (hung?)" % what)

    def read_out(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def read_err(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def parse_args(spec, argv):
    p = argparse.ArgumentParser(description="understudy multithreaded test: %s" % spec.name)
    p.add_argument("program", nargs="?", default=None,
                   help="the program (default: build/tests/apps/%s)" % spec.name)
    p.add_argument("--native", action="store_true",
                   help="run natively (twice, same -S seed) and test the journal checker")
    p.add_argument("--kills", type=int, default=1,
                   help="SIGKILL the primary this many times (default 1; 0: no fault)")
    p.add_argument("--fault", choices=("crash", "crash-in-write"), default="crash",
                   help="how each kill lands: SIGKILL at the moment (crash), or the "
                        "primary dies right after its next write put bytes out, before "
                        "logging it (`understudy inject ... crash-in-write`)")
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas incl. the primary (default max(2, kills+1))")
    p.add_argument("--seed", type=int, default=None,
                   help="kill moments / native -S seed (default: $SEED or random; printed)")
    p.add_argument("--duration", type=int, default=spec.default_duration_ms,
                   help="the program's -d: milliseconds it works (default %(default)s)")
    p.add_argument("--threads", type=int, default=spec.default_threads,
                   help="the program's -t (default: the program's own)")
    p.add_argument("--arg", action="append", default=[],
                   help="extra program argument (repeatable), e.g. --arg=-w --arg=500")
    p.add_argument("--runs", type=int, default=2, help="native runs (default 2)")
    p.add_argument("--run-arg", action="append", default=[],
                   help="extra argument for `understudy run` (repeatable)")
    p.add_argument("--timeout", type=float, default=None,
                   help="bound for the whole test in s (default: 25 s + 4x the duration "
                        "per run)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.native:
        args.kills = 0
    if args.kills < 0 or args.runs < 1 or args.duration < 1:
        p.error("bad --kills/--runs/--duration")
    if args.replicas is None:
        args.replicas = max(2, args.kills + 1)
    if args.replicas < args.kills + 1:
        p.error("--replicas must be at least kills+1")
    if args.seed is None:
        env = os.environ.get("SEED")
        args.seed = int(env) if env else random.SystemRandom().randrange(1 << 31)
    if args.program is None:
        args.program = h.default_server_path(spec.name)
    if args.timeout is None:
        runs = args.runs if args.native else 1
        args.timeout = 25.0 + runs * 4 * args.duration / 1000.0
    return args


def program_argv(spec, args, extra=()):
    argv = [os.path.abspath(args.program), "-d", str(args.duration)]
    if args.threads is not None:
        argv += ["-t", str(args.threads)]
    return argv + list(spec.default_args) + list(args.arg) + list(extra)


def _check_journal(spec, args, text, what):
    if text and not text.endswith("\n"):
        raise TestFailure("%s: the journal does not end with a newline (cut short?)" % what)
    lines = text.splitlines()
    if not lines:
        raise TestFailure("%s: empty journal" % what)
    return spec.check(lines, args), lines


def _bad_line(err, words=BAD_WORDS):
    """(word, first line saying it) for the first of `words` in err, or None."""
    low = err.lower()
    for bad in words:
        if bad in low:
            return bad, next((x for x in err.splitlines() if bad in x.lower()), "").strip()
    return None


def _check_stderr(err, what, expect_takeovers):
    bad = _bad_line(err)
    if bad:
        raise TestFailure("%s: stderr says %r: %s" % (what, bad[0], bad[1]))
    n = err.count("took over")
    if n != expect_takeovers:
        raise TestFailure("%s: %d 'took over' lines in stderr, expected %d"
                          % (what, n, expect_takeovers))


def _first_difference(a, b):
    """Index of the first journal line where a and b differ (ignoring the
    end line), or None when one is a prefix of the other."""
    a, b = a[:-1], b[:-1]
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return None


def run_native(spec, args, workdir, deadline, summary):
    journals = []
    for r in range(args.runs):
        run = BatchRun(program_argv(spec, args, ["-S", str(args.seed)]),
                       os.path.join(workdir, "native%d" % r), native=True)
        try:
            run.start_batch()
            rc = run.wait_exit(deadline, "native run %d" % r)
            err = run.read_err()
            if rc != 0:
                raise TestFailure("native run %d: exit status %d, expected 0; stderr: %s"
                                  % (r, rc, err.strip()[-500:]))
            if err.strip():
                raise TestFailure("native run %d: unexpected stderr: %s" % (r, err.strip()[-500:]))
            s, lines = _check_journal(spec, args, run.read_out(), "native run %d" % r)
            summary += ["native run %d: %s" % (r, x) for x in s]
            journals.append(lines)
        finally:
            run.cleanup()
    for r in range(1, len(journals)):
        d = _first_difference(journals[0], journals[r])
        if d is None:
            summary.append("NOTE: native runs 0 and %d have the same journal (up to the "
                           "shorter's length, %d lines): no schedule dependence seen"
                           % (r, min(len(journals[0]), len(journals[r]))))
        else:
            summary.append("schedule-dependent: native runs 0 and %d (same seeds) first "
                           "differ at journal line %d" % (r, d + 1))
    # The checker must reject what the program could not have printed.
    rng = random.Random("%d/mutations" % args.seed)
    good = journals[0]
    muts = spec.mutations(good, rng)
    if not muts:
        raise TestFailure("no mutations to test the checker with (journal too short?)")
    for what, lines in muts:
        try:
            spec.check(lines, args)
        except TestFailure as e:
            h.log("checker rejects the journal with %s: %s" % (what, str(e)[:160]))
            continue
        raise TestFailure("the journal checker accepted a journal with %s" % what)
    summary.append("the checker rejected all %d mutated journals" % len(muts))


def run_understudy(spec, args, workdir, deadline, summary, understudy):
    rng = random.Random(args.seed)
    run = BatchRun(program_argv(spec, args), workdir, native=False, understudy=understudy,
                   replicas=args.replicas, run_args=args.run_arg)
    what = "understudy run (%d replicas, %d kills)" % (args.replicas, args.kills)
    try:
        run.start_batch()
        run.wait_header(deadline)
        dur = args.duration / 1000.0
        # kill moments, measured from the header: one per equal slice of
        # 15%..70% of the duration, so there is work before and after each
        lo, hi = 0.15, 0.70
        width = (hi - lo) / max(1, args.kills)
        moments = [dur * (lo + width * i + rng.random() * width) for i in range(args.kills)]
        try:
            size_at_kill = _kill_loop(run, args, moments, deadline, summary)
        except TestFailure as e:
            # The run may have ended early for a reason stderr names (a
            # backup that diverged and retired, no backup left): say that.
            if run.proc.poll() is not None:
                bad = _bad_line(run.read_err())
                if bad:
                    raise TestFailure("%s ended early (exit status %d), its stderr says %r: %s "
                                      "[then: %s]" % (what, run.proc.returncode, bad[0], bad[1], e))
            raise
        rc = run.wait_exit(deadline, "`understudy run`")
        err = run.read_err()
        bad = _bad_line(err)
        if bad:
            raise TestFailure("%s: stderr says %r: %s" % (what, bad[0], bad[1]))
        if rc != 0:
            raise TestFailure("%s: exit status %d, expected the program's 0" % (what, rc))
        _check_stderr(err, what, args.kills)  # the number of "took over" lines
        s, lines = _check_journal(spec, args, run.read_out(), what)
        summary += s
        if size_at_kill is not None:
            final = run.out_size()
            if final <= size_at_kill:
                raise TestFailure(
                    "test setup: the program wrote nothing after the last kill (%d bytes "
                    "then, %d at the end): the kill did not land mid-run; give a longer "
                    "--duration" % (size_at_kill, final))
            summary.append("journal grew from %d to %d bytes after the last kill"
                           % (size_at_kill, final))
    except TestFailure as e:
        run.cleanup()
        if run.leaks:
            raise TestFailure("%s; then processes were left behind: %s"
                              % (e, ", ".join(run.leaks)))
        raise
    finally:
        run.cleanup()
    if run.leaks:
        raise TestFailure("processes left behind: %s" % ", ".join(run.leaks))
    return run


def _kill_loop(run, args, moments, deadline, summary):
    """Kill the primary at each moment (seconds after the header), each time
    once a backup is ready, and wait for the failover. Returns the size of
    the journal at the last kill."""
    base_failovers = None
    size_at_kill = None
    for i, at in enumerate(moments):
        try:
            pid = run.wait_backup_ready(deadline)
        except TestFailure:
            if run.proc.poll() is None:
                raise
            raise TestFailure(
                "test setup: the program ended (run exit status %d) %.2f s after its header, "
                "before kill #%d could land; give a longer --duration"
                % (run.proc.returncode, time.monotonic() - run.t_header, i + 1))
        if base_failovers is None:
            base_failovers = int(run.status().get("failovers", 0))
        wait = run.t_header + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elapsed = time.monotonic() - run.t_header
        if elapsed > 0.85 * args.duration / 1000.0:
            # the previous takeover (replaying the backlog) took that long
            raise TestFailure(
                "test setup: kill #%d could land only %.2f s after the header, too close to "
                "the end of the program's %d ms; give a longer --duration"
                % (i + 1, elapsed, args.duration))
        size_at_kill = run.out_size()
        try:
            if run.proc.poll() is not None:
                raise ProcessLookupError()
            if args.fault == "crash":
                run.kill_primary(pid)  # TestFailure if pid is no longer that replica
            else:
                inject_in_write(run)
        except (TestFailure, ProcessLookupError):
            raise TestFailure(
                "test setup: the program ended before kill #%d could land (%.2f s after "
                "its header, duration %d ms; run exit status %r): the kill must hit a "
                "running program; give a longer --duration"
                % (i + 1, elapsed, args.duration, run.proc.poll()))
        t_kill = time.monotonic()
        h.log("kill #%d: %s primary pid %d %.2f s after the header (%d bytes of "
              "journal so far)" % (i + 1, "SIGKILL" if args.fault == "crash" else args.fault,
                                   pid, elapsed, size_at_kill))
        try:
            new_pid = run.wait_failover(pid, base_failovers + i + 1, deadline)
        except TestFailure:
            if run.proc.poll() is None:
                raise
            # The new primary finished the program before `status` showed the
            # failover: fine for the last kill (stderr must still say "took
            # over"), too late for another.
            if i + 1 < len(moments):
                raise TestFailure(
                    "test setup: the program ended %.2f s after kill #%d, before kill #%d "
                    "could land; give a longer --duration"
                    % (time.monotonic() - t_kill, i + 1, i + 2))
            new_pid = None
        h.log("kill #%d: new primary pid %s (%.0f ms after the kill)"
              % (i + 1, new_pid or "? (the run ended first)",
                 (time.monotonic() - t_kill) * 1000))
        summary.append("kill #%d of pid %d %.2f s into the run, at %d bytes of journal"
                       " -> pid %s" % (i + 1, pid, elapsed, size_at_kill, new_pid))
    return size_at_kill


def inject_in_write(run):
    r = subprocess.run([run.understudy, "inject", "--control", run.ctl, "--replica", "primary",
                        "crash-in-write"], cwd=run.workdir, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise TestFailure("understudy inject crash-in-write failed (%d): %s"
                          % (r.returncode, (r.stdout + r.stderr).strip()))


def main(spec, argv=None):
    args = parse_args(spec, argv)
    mode = "native" if args.native else "understudy"
    h.log("%s: mode=%s seed=%d duration=%d ms kills=%d replicas=%s"
          % (spec.name, mode, args.seed, args.duration, args.kills,
             "-" if args.native else args.replicas))
    understudy = None
    if not args.native:
        understudy = h.understudy_path()
        if understudy is None:
            h.log("SKIP: $UNDERSTUDY is not set to an executable (use --native to run "
                  "without understudy)")
            return h.EXIT_SKIP
        understudy = os.path.abspath(understudy)  # the runs have their own cwd
    if not (os.path.isfile(args.program) and os.access(args.program, os.X_OK)):
        h.log("FAIL: program %s not found (build it, or pass its path)" % args.program)
        return h.EXIT_FAIL
    h.install_signal_handlers()
    deadline = h.Deadline(max(1.0, args.timeout - 5))
    watchdog = h.start_watchdog(args.timeout)
    workdir = tempfile.mkdtemp(prefix="us-apps-%s-" % spec.name)
    summary = []
    failure = None
    try:
        if args.native:
            run_native(spec, args, workdir, deadline, summary)
        else:
            run_understudy(spec, args, workdir, deadline, summary, understudy)
    except TestFailure as e:
        failure = str(e)
    except (KeyboardInterrupt, SystemExit) as e:
        failure = "interrupted: %s" % (e,)
    except Exception as e:  # a bug in the driver fails the test, cleanly
        failure = "driver error: %r\n%s" % (e, traceback.format_exc())
    finally:
        h.cleanup_all()
        watchdog.cancel()
    if failure:
        h.log("FAIL: %s" % failure)
        for path in sorted(_files(workdir)):
            if path.endswith("stderr"):
                text = h._tail(path, 25)
                if text:
                    h.log("---- %s (tail) ----\n%s" % (os.path.relpath(path, workdir), text))
        h.log("FAIL %s (%s, seed %d); files kept in %s" % (spec.name, mode, args.seed, workdir))
        return h.EXIT_FAIL
    for s in summary:
        h.log("  " + s)
    h.log("PASS %s (%s%s, seed %d)" % (spec.name, mode, "" if args.native else
                                        ", replicas=%d, kills=%d" % (args.replicas, args.kills),
                                        args.seed))
    if args.keep:
        h.log("files kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return h.EXIT_PASS


def _files(d):
    for root, _dirs, files in os.walk(d):
        for f in files:
            yield os.path.join(root, f)
