"""Shared helpers for the redis failover test and bench/redis (and, through
the Server hooks below, tests/memcached and bench/memcached).

Python 3 standard library only.  Provides:
  * Resp          - a tiny blocking RESP2 client (no redis-py)
  * Tracker       - remembers every process we started or learned about
                    (pid + /proc start time, so pid reuse is never hit) and
                    kills the survivors by pid on exit
  * Server        - a redis-server, either native or under `understudy run`,
                    with readiness polling, `status --json`, primary kill,
                    failover wait and checked shutdown
"""

import atexit
import ctypes
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

mono = time.monotonic

_print_lock = threading.Lock()
_log_prefix = "[redis]"
_t_start = mono()


def set_log_prefix(p):
    global _log_prefix
    _log_prefix = p


def log(*a):
    msg = " ".join(str(x) for x in a)
    with _print_lock:
        sys.stdout.write("%s %7.2fs %s\n" % (_log_prefix, mono() - _t_start, msg))
        sys.stdout.flush()


# --------------------------------------------------------------------------
# RESP client
# --------------------------------------------------------------------------

class RespError(Exception):
    """A `-ERR ...` reply from the server."""


class ConnLost(ConnectionError):
    """EOF / reset / timeout on a RESP connection."""


class Resp:
    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.timeout = timeout
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnLost("connect to %s:%d: %s" % (host, port, e)) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, (bytes, bytearray)):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ConnLost("send timed out after %.1fs" % self.timeout) from None
        except OSError as e:
            raise ConnLost("send: %s" % e) from None

    def send(self, *args):
        self.send_raw(self.encode(*args))

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise ConnLost("no reply within %.1fs" % self.timeout) from None
        except OSError as e:
            raise ConnLost("recv: %s" % e) from None
        if not chunk:
            raise ConnLost("EOF (server closed the connection)")
        if self.pos > 65536:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n + 2
        return data

    def read(self):
        """Read one reply.  Error replies are *returned* as RespError."""
        line = self._line()
        if not line:
            raise ConnLost("protocol error: empty line")
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ConnLost("protocol error: unexpected %r" % line[:40])

    def call(self, *args):
        self.send(*args)
        r = self.read()
        if isinstance(r, RespError):
            raise r
        return r

    def pipeline(self, cmds):
        self.send_raw(b"".join(self.encode(*c) for c in cmds))
        return [self.read() for _ in cmds]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# /proc helpers and process tracking
# --------------------------------------------------------------------------

def _stat_fields(pid):
    """Fields of /proc/pid/stat after the comm field (index 0 = state)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except OSError:
        return None
    r = s.rfind(b")")
    return s[r + 2:].split()


def proc_start(pid):
    f = _stat_fields(pid)
    return int(f[19]) if f else None      # field 22: starttime


def proc_ppid(pid):
    f = _stat_fields(pid)
    return int(f[1]) if f else None


def proc_state(pid):
    f = _stat_fields(pid)
    return f[0].decode() if f else None


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_alive(pid, start=None):
    """True if pid exists, is not a zombie and (if given) has that start time."""
    f = _stat_fields(pid)
    if not f or f[0] in (b"Z", b"X"):
        return False
    return start is None or int(f[19]) == start


def descendants(root):
    """All live descendants of root, as {pid: starttime}."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f:
            children.setdefault(int(f[1]), []).append((int(d), int(f[19])))
    out, todo = {}, [root]
    while todo:
        p = todo.pop()
        for c, st in children.get(p, ()):
            if c not in out:
                out[c] = st
                todo.append(c)
    return out


def is_descendant(pid, root):
    seen = 0
    while pid and pid > 1 and seen < 64:
        if pid == root:
            return True
        pid = proc_ppid(pid)
        seen += 1
    return False


_libc = None


def _pdeathsig():
    """preexec_fn: SIGKILL the child if we die (even by SIGKILL)."""
    try:
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(argv, tracker, label, **kw):
    """Popen in its own session, PDEATHSIG'd, and registered in tracker.
    Only call from the main thread while no worker threads run (preexec_fn)."""
    p = subprocess.Popen(argv, start_new_session=True, preexec_fn=_pdeathsig,
                         stdin=subprocess.DEVNULL, **kw)
    tracker.add(p.pid, label, proc=p, leader=True)
    return p


# The reaper outlives us: it reads "pid starttime leader" lines on stdin and,
# at EOF (we exited or were SIGKILLed, e.g. by a ctest timeout), SIGKILLs every
# listed process that is still the same process (and the process group of
# those we made session leaders).
_REAPER = r"""
import os, shutil, signal, sys, time
def start(p):
    try:
        s = open("/proc/%d/stat" % p, "rb").read()
        f = s[s.rfind(b")") + 2:].split()
        return None if f[0] in (b"Z", b"X") else int(f[19])
    except Exception:
        return None
procs, dirs = {}, []
for line in sys.stdin:
    if line.startswith("dir "):
        dirs.append(line[4:].rstrip("\n"))
        continue
    try:
        p, st, lead = line.split()
        procs[int(p)] = (int(st), lead == "1")
    except ValueError:
        pass
for p, (st, lead) in procs.items():
    if start(p) == st:
        try:
            if lead:
                os.killpg(p, signal.SIGKILL)
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
if dirs:
    time.sleep(0.5)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
"""


class Tracker:
    """Every process we started or saw (pid, start time).  kill_all() is
    idempotent and runs from atexit; a reaper process does the same if we
    are SIGKILLed."""

    def __init__(self):
        self.procs = {}       # pid -> (starttime, label, Popen or None, leader)
        self.lock = threading.Lock()
        try:
            self.reaper = subprocess.Popen([sys.executable, "-c", _REAPER],
                                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            self.reaper = None
        atexit.register(self.kill_all)

    def add(self, pid, label, proc=None, leader=False):
        st = proc_start(pid)
        if st is None:
            return
        with self.lock:
            old = self.procs.get(pid)
            if old and old[0] == st:
                if proc is not None and old[2] is None:
                    self.procs[pid] = (st, old[1], proc, leader or old[3])
                return
            self.procs[pid] = (st, label, proc, leader)
            if self.reaper is not None:
                try:
                    self.reaper.stdin.write(b"%d %d %d\n" % (pid, st, 1 if leader else 0))
                    self.reaper.stdin.flush()
                except (OSError, ValueError):
                    pass

    def add_dir(self, path):
        """Directory the reaper removes if we die without cleaning up."""
        with self.lock:
            if self.reaper is not None:
                try:
                    self.reaper.stdin.write(b"dir " + os.fsencode(path) + b"\n")
                    self.reaper.stdin.flush()
                except (OSError, ValueError):
                    pass

    def alive(self):
        with self.lock:
            items = list(self.procs.items())
        return [(pid, v[1]) for pid, v in items if proc_alive(pid, v[0])]

    def kill_all(self):
        with self.lock:
            items = list(self.procs.items())
        for pid, (st, lab, p, leader) in items:
            if proc_alive(pid, st):
                try:
                    if leader:
                        os.killpg(pid, signal.SIGKILL)
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid, (st, lab, p, leader) in items:
            if p is not None:
                try:
                    p.wait(timeout=2)
                except Exception:
                    pass

    def close(self):
        """Everything is dead: let the reaper exit (it finds nothing to do)."""
        self.kill_all()
        if self.reaper is not None:
            try:
                self.reaper.stdin.close()
                self.reaper.wait(timeout=5)
            except Exception:
                pass
            self.reaper = None


def install_fatal_handlers():
    """SIGTERM/SIGINT/SIGHUP -> SystemExit in the main thread, so finally
    blocks and atexit cleanup run."""
    def h(sig, frm):
        raise SystemExit(128 + sig)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, h)


class Deadline(Exception):
    pass


def install_deadline(seconds):
    """Overall bound: SIGALRM raises Deadline in the main thread."""
    def h(sig, frm):
        raise Deadline("overall time limit of %ds exceeded" % seconds)
    signal.signal(signal.SIGALRM, h)
    signal.alarm(int(seconds))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# Server: native redis-server or redis-server under `understudy run`
# --------------------------------------------------------------------------

class StartError(Exception):
    pass


class Server:
    # Hooks for another server program (tests/memcached/memcached_harness.py
    # subclasses this): its argv (server_argv), its readiness probe (probe),
    # the words the probe's messages use, the prefix of the work directory,
    # and the word a primary's command line must contain to be killable when
    # it is not a descendant of `understudy run`.
    program = "redis"
    dir_prefix = "us-redis-"
    probe_request = "PING"
    probe_reply = "PONG"

    def __init__(self, tracker, native=True, understudy=None, replicas=2,
                 io_threads=False, run_args=(), label="server", workdir=None):
        self.tracker = tracker
        self.native = native
        self.us = understudy
        self.replicas = replicas
        self.io_threads = io_threads
        self.run_args = list(run_args)
        self.label = label
        self.own_dir = workdir is None
        if workdir is None:
            base = "/tmp" if len(tempfile.gettempdir()) > 40 else None
            workdir = tempfile.mkdtemp(prefix=self.dir_prefix, dir=base)
        self.dir = workdir
        if self.own_dir:
            tracker.add_dir(workdir)
        self.ctl = os.path.join(self.dir, "ctl.sock")
        self.logpath = os.path.join(self.dir, "server.log")
        self.proc = None
        self.port = None
        self.known = {}           # pid -> starttime of every replica seen
        self.stopped = False
        self.last_killed_cmdline = ""
        self.kill_times = []

    # ---- start -----------------------------------------------------------
    def redis_argv(self):
        a = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--daemonize", "no",
             # jemalloc's background purging thread coordinates with the main
             # thread through atomics, which record mode cannot replicate (the
             # backup reports a divergence): see README, "What is replicated".
             "--jemalloc-bg-thread", "no"]
        if self.io_threads:
            a += ["--io-threads", "2", "--io-threads-do-reads", "yes"]
        return a

    def server_argv(self):
        """The server's own argv (program first); redis-server by default."""
        return self.redis_argv()

    def probe(self):
        """True once the server answers on self.port (PING -> PONG).  May raise
        ConnLost, RespError or OSError while it does not yet."""
        c = Resp(self.port, timeout=2.0)
        try:
            return c.call("PING") == "PONG"
        finally:
            c.close()

    def start_check(self):
        """Called while start() waits for the backups: a string if the start
        can no longer succeed (fail at once), else None.  None by default."""
        return None

    def argv(self):
        if self.native:
            return self.server_argv()
        return ([self.us, "run", "--replicas", str(self.replicas),
                 "--control", self.ctl] + self.run_args + ["--"]
                + self.server_argv())

    def start(self, timeout=30.0):
        last = None
        for attempt in range(3):
            self.port = free_port()
            try:
                self._start_once(timeout)
                return self
            except StartError as e:
                last = e
                if "Address already in use" in tail(self.logpath, 200):
                    log("%s: port %d taken, retrying" % (self.label, self.port))
                    self._kill_hard()
                    continue
                raise
        raise last

    def _start_once(self, timeout):
        logf = open(self.logpath, "ab")
        try:
            argv = self.argv()
            log("%s: starting: %s" % (self.label, " ".join(shlex.quote(x) for x in argv)))
            self.proc = spawn(argv, self.tracker, self.label, cwd=self.dir,
                              stdout=logf, stderr=subprocess.STDOUT)
        finally:
            logf.close()
        t0 = mono()
        end = t0 + timeout
        # 1. PING answered (or the subclass's probe)
        while True:
            if self.proc.poll() is not None:
                raise StartError("%s exited with status %s before answering %s;"
                                 " log tail:\n%s" % (self.label, self.proc.returncode,
                                                     self.probe_request, tail(self.logpath)))
            try:
                if self.probe():
                    break
            except (ConnLost, RespError, OSError):
                pass
            if mono() > end:
                raise StartError("%s: no %s on port %d within %.0fs; log tail:\n%s"
                                 % (self.label, self.probe_reply, self.port, timeout,
                                    tail(self.logpath)))
            time.sleep(0.02)
        t_ping = mono() - t0
        if self.native:
            self.tracker.add(self.proc.pid, self.label)
            self.known[self.proc.pid] = proc_start(self.proc.pid)
            log("%s: ready on port %d (pid %d) after %.2fs" %
                (self.label, self.port, self.proc.pid, t_ping))
            return
        # 2. status --json works and shows replicas-1 running backups
        st, why = None, ""
        while True:
            if self.proc.poll() is not None:
                raise StartError("understudy run exited with status %s during start-up;"
                                 " log tail:\n%s" % (self.proc.returncode, tail(self.logpath)))
            try:
                st = self.status(timeout=3.0)
                b = st.get("backups") or []
                if len(b) == self.replicas - 1 and all(x.get("state") == "running" for x in b):
                    break
                why = "backups not all running: %s" % json.dumps(b)
            except Exception as e:
                why = str(e)
            fatal = self.start_check()
            if fatal:
                raise StartError("understudy: %s during start-up (last status: %s); log tail:\n%s"
                                 % (fatal, why, tail(self.logpath)))
            if mono() > end:
                raise StartError("understudy: status never showed %d running backup(s)"
                                 " within %.0fs (last: %s); log tail:\n%s"
                                 % (self.replicas - 1, timeout, why, tail(self.logpath)))
            time.sleep(0.05)
        self.snapshot_tree()
        log("%s: ready on port %d: %s after %.2fs, %d running backup(s) after %.2fs;"
            " primary pid %d" % (self.label, self.port, self.probe_reply, t_ping,
                                 self.replicas - 1, mono() - t0, st["primary"]["pid"]))

    # ---- status ----------------------------------------------------------
    def status(self, timeout=5.0):
        if self.native:
            pid = self.proc.pid
            return {"mode": "native", "replicas": 1, "failovers": 0,
                    "primary": {"slot": 0, "pid": pid}, "backups": []}
        r = subprocess.run([self.us, "status", "--json", "--control", self.ctl],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("understudy status --json exited %d: %s" %
                               (r.returncode, (r.stderr or r.stdout).decode(errors="replace").strip()))
        try:
            st = json.loads(r.stdout.decode())
        except ValueError as e:
            raise RuntimeError("understudy status --json printed invalid JSON (%s): %r"
                               % (e, r.stdout[:300]))
        try:
            pids = [int(st["primary"]["pid"])] + [int(b["pid"]) for b in st.get("backups") or []]
            int(st["failovers"])
        except (KeyError, TypeError, ValueError) as e:
            raise RuntimeError("understudy status --json lacks primary.pid/failovers/backups"
                               " (%r): %s" % (e, json.dumps(st)))
        for p in pids:
            if p > 1 and p not in self.known:
                s = proc_start(p)
                if s is not None:
                    self.known[p] = s
                    self.tracker.add(p, "%s replica" % self.label)
        return st

    def status_retry(self, timeout=10.0):
        end = mono() + timeout
        while True:
            try:
                return self.status(timeout=max(1.0, min(5.0, end - mono())))
            except Exception:
                if mono() > end:
                    raise
                time.sleep(0.05)

    def primary_pid(self):
        return int(self.status_retry()["primary"]["pid"])

    # ---- kill and failover -------------------------------------------------
    def check_killable(self, pid):
        if pid <= 1 or pid == os.getpid():
            raise RuntimeError("refusing to kill pid %d" % pid)
        if not proc_alive(pid):
            raise RuntimeError("primary pid %d from status is not a live process" % pid)
        root = self.proc.pid
        if pid != root and not is_descendant(pid, root) and self.program not in proc_cmdline(pid):
            raise RuntimeError("primary pid %d (%r) is neither a descendant of pid %d nor a"
                               " %s process; refusing to kill it"
                               % (pid, proc_cmdline(pid), root, self.program))

    def kill_primary(self, pid=None, mark=None):
        """SIGKILL the primary.  Returns (pid, monotonic time of the kill).
        mark(t), if given, is called with that time just before the kill."""
        if pid is None:
            pid = self.primary_pid()
        self.check_killable(pid)
        self.last_killed_cmdline = proc_cmdline(pid)
        t = mono()
        if mark is not None:
            mark(t)
        os.kill(pid, signal.SIGKILL)
        return pid, t

    def wait_failover(self, prev_failovers, killed, timeout=20.0):
        """Poll status until failovers > prev and a different primary.
        Returns (status, seconds waited)."""
        t0 = mono()
        end = t0 + timeout
        last = "no status"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("understudy run exited with status %s after the kill;"
                                   " log tail:\n%s" % (self.proc.returncode, tail(self.logpath)))
            try:
                st = self.status(timeout=3.0)
                pid = int(st["primary"]["pid"])
                if int(st["failovers"]) > prev_failovers and pid != killed:
                    dt = mono() - t0
                    self.snapshot_tree()
                    return st, dt
                last = json.dumps(st)
            except Exception as e:
                last = str(e)
            if mono() > end:
                raise RuntimeError("no failover reported by status within %.0fs after"
                                   " killing pid %d (last: %s)" % (timeout, killed, last))
            time.sleep(0.02)

    def snapshot_tree(self):
        """Remember (and register with the tracker) every live descendant."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid, st in descendants(self.proc.pid).items():
            if self.known.get(pid) != st:
                self.known[pid] = st
                self.tracker.add(pid, "%s descendant" % self.label)

    # ---- stop ------------------------------------------------------------
    def _kill_hard(self):
        if self.proc is None:
            return
        self.snapshot_tree()
        if self.proc.poll() is None:
            try:
                self.proc.kill()          # Popen knows whether it was reaped
            except OSError:
                pass
        for pid, st in list(self.known.items()):
            if proc_alive(pid, st):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout=15.0, expect_dead=False):
        """SIGTERM and check a clean exit.  Returns a list of problems."""
        problems = []
        if self.proc is None or self.stopped:
            return problems
        self.stopped = True
        if self.proc.poll() is None:
            self.snapshot_tree()
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problems.append("%s (pid %d) did not exit within %.0fs of SIGTERM"
                                % (self.label, self.proc.pid, timeout))
                self._kill_hard()
            rc = self.proc.returncode
            if rc not in (0, None) and not expect_dead and not problems:
                problems.append("%s exited with status %s after SIGTERM (expected 0)"
                                % (self.label, rc))
        elif not expect_dead:
            problems.append("%s had already exited with status %s before shutdown"
                            % (self.label, self.proc.returncode))
        # every replica/descendant ever seen must be gone (allow a moment)
        end = mono() + 5.0
        while True:
            left = [p for p, st in self.known.items() if proc_alive(p, st)]
            if not left or mono() > end:
                break
            time.sleep(0.05)
        if left:
            problems.append("%s: processes still alive after shutdown: %s" % (
                self.label, ", ".join("%d (%s)" % (p, proc_cmdline(p)) for p in left)))
            self._kill_hard()
        if problems:
            problems.append("%s log tail:\n%s" % (self.label, tail(self.logpath)))
        return problems

    def cleanup(self):
        """Unconditional: kill anything left, remove the work dir."""
        try:
            if self.proc is not None and (self.proc.poll() is None or
                                          any(proc_alive(p, s) for p, s in self.known.items())):
                self._kill_hard()
        finally:
            if self.own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)


def find_understudy(native, default=None):
    """Returns the understudy path, or None."""
    if native:
        return None
    u = os.environ.get("UNDERSTUDY") or default
    return u or None
