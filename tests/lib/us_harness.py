"""Shared harness for understudy's application tests (tests/apps).

Python 3 standard library only; meant to run with /usr/bin/python3.

A driver (tests/apps/test_<app>.py) describes one server application through
an App subclass: how to start the server, which request lines each client
sends, how to check each reply, and what to check once the clients are done.
run_app() does everything else:

  * starts the server natively, or as
        $UNDERSTUDY run --replicas N --control <tmp>/ctl.sock -- SERVER ARGS...
    in a fresh temporary directory, in its own session/process group;
  * waits for the TCP port by polling connect() (no fixed sleeps);
  * runs concurrent clients (threads), each on one or two connections,
    pipelining random-size batches of requests and checking every reply;
  * in understudy mode, SIGKILLs the primary (pid from `understudy status
    --json`) K times at random points while the clients are mid-stream, and
    waits for each failover to be reported before the next kill;
  * stops the server with SIGTERM and expects exit status 0;
  * always cleans up every process it started (finally blocks, atexit,
    SIGTERM/SIGHUP handlers and an overall watchdog), by pid or by the
    process group it created, and reports any replica left behind.

Exit status: 0 pass, 1 fail, 77 skip ($UNDERSTUDY missing in understudy mode).
"""

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_SKIP = 77

# Backup states in `understudy status --json` that mean "able to take over".
BACKUP_READY_STATES = {"running"}

# Upper bound on the bytes of one pipelined batch (see _client_thread).
MAX_BATCH_BYTES = 256 * 1024

_T0 = time.monotonic()


class TestFailure(Exception):
    """A check failed; the message says what was expected and what was seen."""


class _Aborted(Exception):
    """Raised inside a client thread when another part of the test failed."""


def log(msg):
    print("[%8.3f] %s" % (time.monotonic() - _T0, msg), flush=True)


# --------------------------------------------------------------------------
# Time bounds


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def remaining(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end


def poll_until(pred, deadline, what, max_interval=0.1):
    """Call pred() until it returns a true value; raise TestFailure at the
    deadline. Starts polling fast and backs off, so short waits stay short
    without busy-looping through long ones."""
    interval = 0.002
    while True:
        value = pred()
        if value:
            return value
        if deadline.expired():
            raise TestFailure("timed out waiting for %s" % what)
        time.sleep(min(interval, deadline.remaining()))
        interval = min(interval * 2, max_interval)


# --------------------------------------------------------------------------
# /proc helpers. Pids we did not fork ourselves (understudy's replicas) are
# identified by (pid, start time) so that a recycled pid is never signalled.


def _proc_stat(pid):
    """(state, pgrp, starttime) of pid, or None if it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses; fields after the
    # last ')' are fixed: state is field 3, pgrp field 5, starttime field 22.
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[2]), int(rest[19])


def _alive_same(pid, starttime):
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z" and st[2] == starttime


def _live_group_members(pgid):
    """Non-zombie processes whose process group is pgid. Zombies are ignored:
    in containers nobody may reap orphans, and a zombie holds no resources
    that matter here."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st and st[1] == pgid and st[0] != "Z":
            pids.append(int(name))
    return pids


# --------------------------------------------------------------------------
# Global cleanup registry: whatever happens (exception, SIGTERM from ctest,
# watchdog, normal exit) every started server is torn down exactly once.

_registry_lock = threading.RLock()
_registry = []


def cleanup_all():
    with _registry_lock:
        servers = list(_registry)
    for s in servers:
        try:
            s.cleanup()
        except Exception as e:  # keep going: the others must be cleaned too
            log("cleanup error: %r" % (e,))


atexit.register(cleanup_all)


def register_for_cleanup(server):
    """Have cleanup_all() (atexit, signals, the watchdog) tear `server` down
    too; for Server objects started by other means than Server.start()."""
    with _registry_lock:
        if server not in _registry:
            _registry.append(server)


def _on_fatal_signal(signum, _frame):
    # Turn the signal into an exception in the main thread so that finally
    # blocks run; a second signal while cleaning up is ignored.
    signal.signal(signum, signal.SIG_IGN)
    raise SystemExit("killed by signal %d" % signum)


def install_signal_handlers():
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_fatal_signal)


def start_watchdog(seconds, on_expire=None):
    """Hard bound on the whole test: if the main thread is still running after
    `seconds`, clean up and exit 1 from the watchdog thread."""

    def fire():
        log("FAIL: overall test timeout (%gs) exceeded" % seconds)
        if on_expire:
            try:
                on_expire()
            except Exception:
                pass
        cleanup_all()
        sys.stdout.flush()
        os._exit(EXIT_FAIL)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


# --------------------------------------------------------------------------
# Server under test


def free_port():
    """A port that was free a moment ago. There is an unavoidable race with
    other programs; Server.start() retries with a new port if it loses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def understudy_path():
    """$UNDERSTUDY if it names an executable file, else None."""
    p = os.environ.get("UNDERSTUDY", "")
    if p and os.path.isfile(p) and os.access(p, os.X_OK):
        return p
    return None


def require_understudy():
    """$UNDERSTUDY, or exit 77 (skipped) when it does not name an executable."""
    p = understudy_path()
    if not p:
        print("UNDERSTUDY not set: skipped")
        sys.exit(EXIT_SKIP)
    return p


class Server:
    """One server, run natively or under `understudy run`.

    argv_for_port(port) returns the server's own argv (binary first).
    """

    def __init__(self, argv_for_port, workdir, native, understudy=None,
                 replicas=2, run_args=()):
        self.argv_for_port = argv_for_port
        self.workdir = workdir
        self.native = native
        self.understudy = understudy
        self.replicas = replicas
        self.run_args = list(run_args)
        self.ctl = os.path.join(workdir, "ctl.sock")
        self.stdout_path = os.path.join(workdir, "server.stdout")
        self.stderr_path = os.path.join(workdir, "server.stderr")
        self.proc = None
        self.port = None
        self.pgid = None
        self.exit_status = None
        # pid -> starttime of every replica that `status` ever reported
        self.replica_pids = {}
        self.leaks = []
        self._cleaned = False
        self._lock = threading.RLock()

    def command(self, port):
        argv = [str(a) for a in self.argv_for_port(port)]
        if self.native:
            return argv
        return ([self.understudy, "run", "--replicas", str(self.replicas),
                 "--control", self.ctl] + self.run_args + ["--"] + argv)

    def start(self, deadline, attempts=3):
        for attempt in range(1, attempts + 1):
            port = free_port()
            cmd = self.command(port)
            log("starting: %s" % " ".join(cmd))
            with open(self.stdout_path, "ab") as out, \
                    open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True)
            self.pgid = self.proc.pid  # session leader => own process group
            self.port = port
            self._cleaned = False
            with _registry_lock:
                if self not in _registry:
                    _registry.append(self)
            if self._wait_port(deadline):
                log("listening on 127.0.0.1:%d (pid %d)" % (port, self.proc.pid))
                return
            rc = self.proc.poll()
            self.cleanup()
            if rc is not None and attempt < attempts and \
                    "Address already in use" in self.stderr_tail(5):
                log("port %d was taken, retrying" % port)
                continue
            raise TestFailure("server did not start listening (exit status %r)" % rc)

    def _wait_port(self, deadline):
        def ready():
            if self.proc.poll() is not None:
                return "exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return "up"
            except OSError:
                return None
        try:
            return poll_until(ready, deadline, "port %d" % self.port) == "up"
        except TestFailure:
            return False

    # ---- understudy control

    def status(self, timeout=5.0):
        r = subprocess.run(
            [self.understudy, "status", "--json", "--control", self.ctl],
            cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=timeout)
        if r.returncode != 0:
            raise TestFailure("understudy status failed (%d): %s"
                              % (r.returncode, r.stderr.strip()))
        try:
            st = json.loads(r.stdout)
        except ValueError as e:
            raise TestFailure("understudy status --json printed invalid JSON "
                              "(%s): %r" % (e, r.stdout[:500]))
        self._track(st)
        return st

    def _track(self, st):
        pids = []
        if isinstance(st.get("primary"), dict) and st["primary"].get("pid"):
            pids.append(int(st["primary"]["pid"]))
        for b in st.get("backups") or []:
            if b.get("pid"):
                pids.append(int(b["pid"]))
        with self._lock:
            for pid in pids:
                if pid not in self.replica_pids:
                    info = _proc_stat(pid)
                    if info:
                        self.replica_pids[pid] = info[2]

    def _poll_status(self, pred, deadline, what):
        """poll_until over `status`, tolerating transient status errors (the
        supervisor may be busy failing over) and failing fast if `run` died."""
        last = {"err": None, "status": None}

        def attempt():
            if self.proc.poll() is not None:
                raise TestFailure("understudy run exited (status %r) while waiting for %s"
                                  % (self.proc.returncode, what))
            try:
                st = self.status(timeout=max(0.5, min(5.0, deadline.remaining())))
            except (TestFailure, subprocess.TimeoutExpired) as e:
                last["err"] = e
                return None
            last["status"] = st
            return pred(st)
        try:
            return poll_until(attempt, deadline, what)
        except TestFailure as e:
            raise TestFailure("%s; last status: %s; last error: %s"
                              % (e, json.dumps(last["status"]), last["err"]))

    def wait_backup_ready(self, deadline):
        """Primary pid, once at least one backup reports state "running"."""
        def pred(st):
            prim = st.get("primary") or {}
            backups = st.get("backups") or []
            if prim.get("pid") and any(b.get("state") in BACKUP_READY_STATES for b in backups):
                return int(prim["pid"])
            return None
        return self._poll_status(pred, deadline, "a running backup")

    def wait_failover(self, old_pid, min_failovers, deadline):
        """New primary pid once status shows the failover happened."""
        def pred(st):
            prim = st.get("primary") or {}
            pid = prim.get("pid")
            if pid and int(pid) != old_pid and int(st.get("failovers", 0)) >= min_failovers:
                return int(pid)
            return None
        return self._poll_status(pred, deadline,
                                 "failover #%d away from pid %d" % (min_failovers, old_pid))

    def kill_primary(self, pid):
        with self._lock:
            start = self.replica_pids.get(pid)
        if start is None or not _alive_same(pid, start):
            raise TestFailure("primary pid %d is not a live replica we know of" % pid)
        os.kill(pid, signal.SIGKILL)

    # ---- shutdown

    def stop(self, timeout):
        """SIGTERM the server (or `understudy run`, which forwards it) and
        return its exit status; SIGKILL and fail if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.cleanup()
                raise TestFailure("server did not exit within %.0fs of SIGTERM" % timeout)
        self.exit_status = self.proc.returncode
        return self.exit_status

    def cleanup(self):
        """Kill everything this server started. Idempotent, thread-safe.
        Anything still alive after the top process exited is recorded in
        self.leaks (a contract violation for understudy)."""
        with self._lock:
            if self._cleaned or self.proc is None:
                return
            if self.proc.poll() is None:
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    log("pid %d survived SIGKILL for 10s" % self.proc.pid)
            # Give the supervisor's own teardown a moment, then sweep.
            group_deadline = Deadline(3.0)
            try:
                poll_until(lambda: not _live_group_members(self.pgid),
                           group_deadline, "process group to empty")
            except TestFailure:
                pass
            for pid in _live_group_members(self.pgid):
                self.leaks.append("pid %d (process group %d)" % (pid, self.pgid))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid, start in self.replica_pids.items():
                if _alive_same(pid, start):
                    self.leaks.append("replica pid %d" % pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            # Only now: if a signal interrupted us above, the atexit pass
            # must run the whole sweep again.
            self._cleaned = True

    def stderr_tail(self, lines=30):
        return _tail(self.stderr_path, lines)

    def stdout_tail(self, lines=30):
        return _tail(self.stdout_path, lines)


def _tail(path, lines):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --------------------------------------------------------------------------
# Client side


class LineConn:
    """A blocking TCP client speaking newline-terminated lines. Every failure
    (timeout, reset, EOF) becomes a TestFailure naming the connection."""

    def __init__(self, port, timeout, name):
        self.name = name
        self.timeout = timeout
        self.buf = bytearray()
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as e:
            raise TestFailure("%s: connect failed: %s" % (name, e))
        # Small pipelined writes should reach the server as separate segments
        # often enough to exercise partial-line reads.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data, rng=None):
        try:
            if rng is not None and len(data) > 1 and rng.random() < 0.25:
                cut = rng.randrange(1, len(data))
                self.sock.sendall(data[:cut])
                self.sock.sendall(data[cut:])
            else:
                self.sock.sendall(data)
        except OSError as e:
            raise TestFailure("%s: send failed: %s" % (self.name, e))

    def readline(self, what):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line
            start = len(self.buf)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                raise TestFailure("%s: no data for %.0fs while waiting for %s"
                                  % (self.name, self.timeout, what))
            except OSError as e:
                raise TestFailure("%s: %s while waiting for %s" % (self.name, e, what))
            if not data:
                raise TestFailure("%s: unexpected EOF while waiting for %s "
                                  "(%d bytes of partial line)" % (self.name, what, len(self.buf)))
            self.buf += data

    def finish(self):
        """Half-close and expect a clean EOF with no further bytes: catches
        replies that were sent twice (e.g. by a replica replaying output)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            extra = bytes(self.buf)
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                extra += data
        except socket.timeout:
            raise TestFailure("%s: server did not close after our EOF within %.0fs"
                              % (self.name, self.timeout))
        except OSError as e:
            raise TestFailure("%s: %s while waiting for EOF" % (self.name, e))
        finally:
            self.sock.close()
        if extra:
            raise TestFailure("%s: %d unexpected extra bytes after the last reply: %r"
                              % (self.name, len(extra), extra[:200]))

    def close(self):
        self.sock.close()

    def request(self, line, what=None):
        self.send(line + b"\n")
        return self.readline(what or repr(line))


class Progress:
    """Replies received so far, plus the handshake between clients and the
    killer thread.

    Kill i fires when `done` reaches kill_points[i]. Clients never wait for
    a kill in the normal case; but if they get to hold_points[i] before kill
    i was delivered (the killer was slow), they pause, so every kill lands
    while requests remain to be sent.
    """

    def __init__(self, nclients, total, kill_points, slack, on_abort=None):
        self.cv = threading.Condition()
        self.on_abort = on_abort
        self.done = 0
        self.kill_points = list(kill_points)
        # Hold well after the kill point, but always before the last request.
        self.hold_points = [p + max(1, min(slack, (total - p) // 2)) for p in kill_points]
        self.kills_done = 0
        self.clients_running = nclients
        self.aborted = False

    def add(self, n=1):
        with self.cv:
            self.done += n
            self.cv.notify_all()

    def gate(self, deadline):
        with self.cv:
            while (not self.aborted and self.kills_done < len(self.kill_points)
                   and self.done >= self.hold_points[self.kills_done]):
                if deadline.expired():
                    raise TestFailure("clients held too long waiting for kill #%d"
                                      % (self.kills_done + 1))
                self.cv.wait(min(0.5, deadline.remaining()))
            if self.aborted:
                raise _Aborted()

    def wait_kill_point(self, i, deadline):
        with self.cv:
            while (not self.aborted and self.clients_running > 0
                   and self.done < self.kill_points[i]):
                if deadline.expired():
                    raise TestFailure("kill point #%d (%d replies) never reached"
                                      % (i + 1, self.kill_points[i]))
                self.cv.wait(min(0.5, deadline.remaining()))
            if self.aborted:
                raise _Aborted()
            return self.done, self.clients_running

    def kill_delivered(self):
        with self.cv:
            self.kills_done += 1
            self.cv.notify_all()

    def client_finished(self):
        with self.cv:
            self.clients_running -= 1
            self.cv.notify_all()

    def abort(self):
        with self.cv:
            first = not self.aborted
            self.aborted = True
            self.cv.notify_all()
        if first and self.on_abort:
            self.on_abort()


# --------------------------------------------------------------------------
# Application description and the generic test run


class App:
    """Override in each driver. Hooks run in client threads are given a
    connection key (client id, session number) and are only ever called from
    that client's thread, so per-key state needs no locking."""

    name = "app"
    server_binary = "server"

    def server_argv(self, binary, port, workdir):
        return [binary, port]

    def make_requests(self, cid, rng, n):
        """List of n request lines (bytes, without the newline)."""
        raise NotImplementedError

    def check_reply(self, key, index, request, reply):
        """Check the reply to request number `index` on connection `key`;
        raise TestFailure on a mismatch."""
        raise NotImplementedError

    def final_check(self, ctx):
        """Called while the server still runs, after all clients finished.
        Returns a list of summary strings."""
        return []

    def after_stop_check(self, ctx):
        """Called after the server exited. Returns a list of summary strings."""
        return []


class Context:
    """What the App hooks may look at."""

    def __init__(self, args, server, workdir, rng):
        self.args = args
        self.server = server
        self.workdir = workdir
        self.rng = rng
        self.total_requests = 0
        self.connections = 0
        self.lock = threading.Lock()
        self._open = set()

    def connect(self, name):
        conn = LineConn(self.server.port, self.args.io_timeout, name)
        with self.lock:
            self.connections += 1
            self._open.add(conn)
        return conn

    def forget(self, conn):
        with self.lock:
            self._open.discard(conn)

    def shutdown_all(self):
        """Wake every client blocked in recv() once the test has failed, so a
        failure is reported at once instead of after the I/O timeout."""
        with self.lock:
            conns = list(self._open)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def default_server_path(binary):
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    return os.path.join(repo, "build", "tests", "apps", binary)


def parse_args(app, argv=None):
    p = argparse.ArgumentParser(description="understudy application test: %s" % app.name)
    p.add_argument("--native", action="store_true",
                   help="run the server directly, without understudy (no kills)")
    p.add_argument("--kills", type=int, default=1,
                   help="SIGKILL the primary this many times (default 1)")
    p.add_argument("--replicas", type=int, default=None,
                   help="replicas incl. primary (default max(2, kills+1))")
    p.add_argument("--seed", type=int, default=None,
                   help="workload/kill-point seed (default: random, printed)")
    p.add_argument("--server", default=None,
                   help="server binary (default: build/tests/apps/%s)" % app.server_binary)
    p.add_argument("--clients", type=int, default=6, help="concurrent clients")
    p.add_argument("--requests", type=int, default=getattr(app, "default_requests", 3000),
                   help="requests in total over all clients (default %(default)s)")
    p.add_argument("--window", type=int, default=8,
                   help="max requests pipelined per batch")
    p.add_argument("--timeout", type=float, default=100.0,
                   help="overall bound for the whole test in seconds")
    p.add_argument("--io-timeout", type=float, default=30.0,
                   help="max seconds without data on a client socket")
    p.add_argument("--run-arg", action="append", default=[],
                   help="extra argument for `understudy run` (repeatable)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory even on success")
    args = p.parse_args(argv)
    if args.native:
        args.kills = 0
    if args.kills < 0 or args.clients < 1 or args.requests < args.clients or args.window < 1:
        p.error("bad --kills/--clients/--requests/--window")
    if args.replicas is None:
        args.replicas = max(2, args.kills + 1)
    if args.server is None:
        args.server = default_server_path(app.server_binary)
    return args


def _choose_kill_points(rng, kills, total):
    """One point per kill, each drawn uniformly from its own equal slice of
    the 15%..85% range of replies: random, ordered, spread out, and always
    with plenty of traffic before and after."""
    points = []
    lo, hi = 0.15 * total, 0.85 * total
    width = (hi - lo) / max(1, kills)
    for i in range(kills):
        points.append(int(lo + width * i + rng.random() * width))
    return points


def _split_requests(total, nclients):
    base, extra = divmod(total, nclients)
    return [base + (1 if i < extra else 0) for i in range(nclients)]


def _client_thread(ctx, app, progress, deadline, cid, requests, failures):
    rng = random.Random("%d/client/%d" % (ctx.args.seed, cid))
    # Half the clients reconnect once part-way, so some connections are
    # opened after a failover and some are closed before one.
    sessions = [requests]
    if len(requests) >= 4 and rng.random() < 0.5:
        cut = rng.randrange(1, len(requests))
        sessions = [requests[:cut], requests[cut:]]
    try:
        for sess, reqs in enumerate(sessions):
            key = (cid, sess)
            conn = ctx.connect("client %d conn %d" % (cid, sess))
            try:
                i = 0
                while i < len(reqs):
                    progress.gate(deadline)
                    k = min(rng.randint(1, ctx.args.window), len(reqs) - i)
                    # We only read after sending the whole batch, and servers
                    # stop reading while ~1 MiB of replies is unsent, so keep
                    # a batch well below that or both sides block on writes.
                    size = len(reqs[i])
                    for n in range(1, k):
                        size += len(reqs[i + n]) + 1
                        if size > MAX_BATCH_BYTES:
                            k = n
                            break
                    batch = reqs[i:i + k]
                    conn.send(b"".join(r + b"\n" for r in batch), rng)
                    for j, req in enumerate(batch):
                        reply = conn.readline("reply to request #%d %r"
                                              % (i + j, req[:24]))
                        app.check_reply(key, i + j, req, reply)
                        progress.add(1)
                    i += k
                conn.finish()
            finally:
                ctx.forget(conn)
                conn.close()
    except _Aborted:
        pass
    except BaseException as e:  # a bug in the driver is a failure too
        # Errors after an abort are just fallout (sockets shut down by
        # shutdown_all), not worth reporting.
        if not progress.aborted:
            failures.append("client %d: %s" % (cid, e if isinstance(e, TestFailure)
                                               else "unexpected %r" % (e,)))
            progress.abort()
    finally:
        progress.client_finished()


def _killer_thread(ctx, progress, deadline, kill_log, failures):
    server = ctx.server
    try:
        base_failovers = int(server.status().get("failovers", 0))
        for i in range(len(progress.kill_points)):
            pid = server.wait_backup_ready(deadline)
            done, running = progress.wait_kill_point(i, deadline)
            if running == 0:
                raise TestFailure("all clients finished before kill #%d" % (i + 1))
            server.kill_primary(pid)
            t_kill = time.monotonic()
            progress.kill_delivered()
            log("kill #%d: SIGKILL primary pid %d after %d/%d replies"
                % (i + 1, pid, done, ctx.total_requests))
            new_pid = server.wait_failover(pid, base_failovers + i + 1, deadline)
            took = time.monotonic() - t_kill
            log("kill #%d: new primary pid %d (status reported it after %.0f ms)"
                % (i + 1, new_pid, took * 1000))
            kill_log.append((i + 1, pid, new_pid, done, took))
    except _Aborted:
        pass
    except BaseException as e:
        failures.append("killer: %s" % (e,))
        progress.abort()


def run_app(app, argv=None):
    """Parse the command line, run the test, return the exit status."""
    args = parse_args(app, argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    mode = "native" if args.native else "understudy"
    log("%s: mode=%s seed=%d clients=%d requests=%d kills=%d replicas=%s"
        % (app.name, mode, args.seed, args.clients, args.requests, args.kills,
           "-" if args.native else args.replicas))

    understudy = None
    if not args.native:
        understudy = understudy_path()
        if understudy is None:
            log("SKIP: $UNDERSTUDY is not set to an executable (use --native "
                "to run without understudy)")
            return EXIT_SKIP
    if not (os.path.isfile(args.server) and os.access(args.server, os.X_OK)):
        log("FAIL: server binary %s not found (build it, or pass --server)" % args.server)
        return EXIT_FAIL
    server_bin = os.path.abspath(args.server)

    install_signal_handlers()
    deadline = Deadline(max(1.0, args.timeout - 5))  # leave time for cleanup
    watchdog = start_watchdog(args.timeout)
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="us-apps-%s-" % app.name)
    failures = []
    summary = []
    server = Server(lambda port: app.server_argv(server_bin, port, workdir),
                    workdir, args.native, understudy, args.replicas, args.run_arg)
    ctx = Context(args, server, workdir, rng)
    kill_log = []
    progress = None
    try:
        server.start(deadline)
        if not args.native:
            pid = server.wait_backup_ready(deadline)
            log("primary pid %d, backup(s) running" % pid)

        counts = _split_requests(args.requests, args.clients)
        ctx.total_requests = args.requests
        per_client = [app.make_requests(cid, random.Random("%d/req/%d" % (args.seed, cid)), n)
                      for cid, n in enumerate(counts)]
        kill_points = _choose_kill_points(rng, args.kills, args.requests)
        progress = Progress(args.clients, args.requests, kill_points,
                            slack=max(args.clients * args.window, args.requests // 10),
                            on_abort=ctx.shutdown_all)
        threads = [threading.Thread(target=_client_thread, daemon=True,
                                    args=(ctx, app, progress, deadline, cid, reqs, failures),
                                    name="client-%d" % cid)
                   for cid, reqs in enumerate(per_client)]
        killer = None
        if kill_points:
            killer = threading.Thread(target=_killer_thread, daemon=True,
                                      args=(ctx, progress, deadline, kill_log, failures),
                                      name="killer")
            killer.start()
        t_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads + ([killer] if killer else []):
            t.join(deadline.remaining())
            if t.is_alive():
                failures.append("%s still running at the deadline" % t.name)
                progress.abort()
        elapsed = time.monotonic() - t_start
        if failures:
            raise _Aborted()  # the failures are already listed
        if len(kill_log) != args.kills:
            raise TestFailure("only %d of %d kills happened" % (len(kill_log), args.kills))
        summary.append("%d clients, %d connections, %d requests in %.2fs"
                       % (args.clients, ctx.connections, args.requests, elapsed))
        for n, pid, new_pid, done, took in kill_log:
            summary.append("kill #%d of pid %d at %d/%d replies -> pid %d (%.0f ms)"
                           % (n, pid, done, args.requests, new_pid, took * 1000))

        summary += app.final_check(ctx)

        rc = server.stop(timeout=min(15.0, max(1.0, deadline.remaining())))
        if rc != 0:
            failures.append("server exit status after SIGTERM is %r, expected 0" % rc)
        summary += app.after_stop_check(ctx)
    except _Aborted:
        pass
    except TestFailure as e:
        failures.append(str(e))
    except (KeyboardInterrupt, SystemExit) as e:
        failures.append("interrupted: %s" % (e,))
        if progress is not None:
            progress.abort()  # what the clients see next is fallout
    finally:
        if server.proc is not None and server.exit_status is None \
                and server.proc.poll() is not None:
            failures.append("server exited unexpectedly with status %r"
                            % server.proc.returncode)
        server.cleanup()
        watchdog.cancel()

    if server.leaks:
        failures.append("processes left behind after the server exited: %s"
                        % ", ".join(server.leaks))
    if failures:
        for f in failures:
            log("FAIL: %s" % f)
        for label, text in (("stderr", server.stderr_tail()), ("stdout", server.stdout_tail())):
            if text:
                log("---- server %s (tail) ----\n%s" % (label, text))
        log("FAIL %s (%s, seed %d); files kept in %s" % (app.name, mode, args.seed, workdir))
        return EXIT_FAIL
    for s in summary:
        log("  " + s)
    log("PASS %s (%s%s, seed %d)" % (app.name, mode,
                                      "" if args.native else ", replicas=%d, kills=%d"
                                      % (args.replicas, args.kills), args.seed))
    if args.keep:
        log("files kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_PASS


def main(app):
    """Entry point for drivers: sys.exit(main(MyApp()))."""
    try:
        return run_app(app)
    finally:
        cleanup_all()
