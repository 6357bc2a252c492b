"""Shared helpers for the memcached tests (memcached_test.py) and bench/memcached.

Python 3 standard library only.  The process handling (Tracker, spawn, the
reaper, Server's start/status/kill/failover/stop) is tests/redis/redis_harness.py's;
this module adds what is memcached's own:

  * Mc            - a tiny blocking client for memcached's text protocol
  * McServer      - redis_harness.Server running `memcached -t 4` (natively or
                    under `understudy run`), ready when it answers `version`
  * run_capable   - memccapable (libmemcached-tools' conformance suite), parsed
  * understudy_problems - understudy's lines in the server log that mean a
                    replica diverged, was retired or stopped on a call it
                    cannot replicate
"""

import os
import re
import shutil
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True      # keep the source tree clean
sys.path.insert(0, os.path.join(_HERE, "..", "redis"))
import redis_harness  # noqa: E402
from redis_harness import (ConnLost, Resp, Server, StartError, log, mono,  # noqa: E402,F401
                           spawn, tail)

MEMCACHED_THREADS = 4


class McError(Exception):
    """An ERROR / CLIENT_ERROR / SERVER_ERROR reply, or a reply of the wrong kind."""


# --------------------------------------------------------------------------
# memcached text protocol client
# --------------------------------------------------------------------------

class Mc(Resp):
    """Blocking text-protocol client.  The buffering (_line, _exact: n bytes
    then CRLF) is Resp's; ConnLost on EOF, reset or a reply later than timeout."""

    @staticmethod
    def _k(key):
        return key if isinstance(key, bytes) else key.encode()

    @staticmethod
    def set_cmd(key, value, flags=0, exptime=0):
        return b"set %s %d %d %d\r\n%s\r\n" % (Mc._k(key), flags, exptime, len(value), value)

    @staticmethod
    def get_cmd(*keys):
        return b"get " + b" ".join(Mc._k(k) for k in keys) + b"\r\n"

    def line(self):
        return self._line()

    def storage_reply(self):
        """STORED / NOT_STORED / EXISTS / NOT_FOUND, as bytes; McError otherwise."""
        r = self._line()
        if r in (b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"):
            return r
        raise McError("storage command replied %r" % r[:80])

    def values(self):
        """The reply to a get: {key(bytes): (flags, value)} up to END."""
        out = {}
        while True:
            r = self._line()
            if r == b"END":
                return out
            f = r.split()
            if len(f) < 4 or f[0] != b"VALUE":
                raise McError("get replied %r" % r[:80])
            try:
                flags, n = int(f[2]), int(f[3])
            except ValueError:
                raise McError("get replied %r" % r[:80]) from None
            out[f[1]] = (flags, self._exact(n))

    def number_reply(self):
        """incr/decr: the new value (int) or b"NOT_FOUND"."""
        r = self._line()
        if r == b"NOT_FOUND":
            return r
        if r.isdigit():
            return int(r)
        raise McError("incr/decr replied %r" % r[:80])

    # one request, one reply
    def set(self, key, value, flags=0, exptime=0):
        self.send_raw(self.set_cmd(key, value, flags, exptime))
        return self.storage_reply()

    def get_multi(self, keys):
        self.send_raw(self.get_cmd(*keys))
        return self.values()

    def get(self, key):
        v = self.get_multi([key]).get(self._k(key))
        return None if v is None else v[1]

    def incr(self, key, n=1):
        self.send_raw(b"incr %s %d\r\n" % (self._k(key), n))
        return self.number_reply()

    def delete(self, key):
        self.send_raw(b"delete %s\r\n" % self._k(key))
        r = self._line()
        if r in (b"DELETED", b"NOT_FOUND"):
            return r
        raise McError("delete replied %r" % r[:80])

    def version(self):
        self.send_raw(b"version\r\n")
        r = self._line()
        if not r.startswith(b"VERSION "):
            raise McError("version replied %r" % r[:80])
        return r[8:].decode(errors="replace")

    def stats(self, arg=None):
        self.send_raw(b"stats\r\n" if arg is None else b"stats %s\r\n" % arg.encode())
        out = {}
        while True:
            r = self._line()
            if r == b"END":
                return out
            f = r.split(None, 2)
            if len(f) != 3 or f[0] != b"STAT":
                raise McError("stats replied %r" % r[:80])
            out[f[1].decode()] = f[2].decode(errors="replace")


# --------------------------------------------------------------------------
# memcached under test
# --------------------------------------------------------------------------

def memcached_user_args():
    """memcached refuses to run as root without -u."""
    return ["-u", "nobody"] if os.geteuid() == 0 else []


class McServer(Server):
    program = "memcached"
    dir_prefix = "us-memcached-"
    probe_request = "version"
    probe_reply = "VERSION"

    def __init__(self, tracker, threads=MEMCACHED_THREADS, memory_mb=64, extra_args=(),
                 **kw):
        super().__init__(tracker, **kw)
        self.threads = threads
        self.memory_mb = memory_mb
        self.extra_args = list(extra_args)

    def server_argv(self):
        return (["memcached", "-p", str(self.port), "-l", "127.0.0.1", "-U", "0",
                 "-t", str(self.threads), "-m", str(self.memory_mb)]
                + memcached_user_args() + self.extra_args)

    def probe(self):
        c = Mc(self.port, timeout=2.0)
        try:
            return bool(c.version())
        except McError:
            return False
        finally:
            c.close()

    def start_check(self):
        p = self.problems()
        return "; ".join(p[:3]) if p else None

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def problems(self):
        """understudy's complaints in the log (empty for a native server)."""
        return [] if self.native else understudy_problems(self.log_text())

    def takeovers(self):
        return TOOK_OVER_RE.findall(self.log_text())


# Lines understudy prints when a replica diverged, was retired, or the program
# stopped on something understudy cannot replicate (src/shim/engine.c us_fatal,
# src/supervisor/supervisor.c).  Any understudy line with one of these words
# fails a test; other understudy lines (start-up, "took over", "completed a
# read", "bytes of output were already sent") are informational.  The
# supervisor and the replicas write to the same stderr, so a line may carry
# another's prefix or lose its own: "divergence"/"retired" count anywhere.
PROBLEM_RE = re.compile(r"divergen|diverged|retired|unsupported|not supported|cannot"
                        r"|corrupt|died|failed|hung|deterministic crash|no backup"
                        r"|had not finished|lost the supervisor", re.I)
STRONG_RE = re.compile(r"divergen|diverged|retired", re.I)
TOOK_OVER_RE = re.compile(r"primary \(pid (\d+)\) [^\n]*?backup pid (\d+) took over")


def understudy_problems(text):
    out = []
    for line in text.splitlines():
        if ("understudy" in line and PROBLEM_RE.search(line)) or STRONG_RE.search(line):
            out.append(line.strip())
    return out


# --------------------------------------------------------------------------
# memccapable
# --------------------------------------------------------------------------

def run_capable(port, tracker, timeout=60.0, workdir=None):
    """Run memccapable against 127.0.0.1:port.  Returns a dict: rc, passed,
    failed, summary line, output tail, and ok (exit 0, "All tests passed",
    at least 50 [pass] and no [FAIL])."""
    outp = os.path.join(workdir or "/tmp", "memccapable.%d.out" % os.getpid())
    with open(outp, "wb") as fo:
        p = spawn(["memccapable", "-h", "127.0.0.1", "-p", str(port), "-t", "10"], tracker,
                  "memccapable", stdout=fo, stderr=subprocess.STDOUT)
    t0 = mono()
    timed_out = False
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        p.kill()
        p.wait()
    with open(outp, "rb") as f:
        out = f.read().decode(errors="replace")
    if workdir is None:
        os.unlink(outp)
    passed, failed = out.count("[pass]"), out.count("[FAIL]")
    m = re.findall(r"All tests passed|\d+ of \d+ tests failed", out)
    summary = m[-1] if m else ""
    r = {"rc": None if timed_out else p.returncode, "passed": passed, "failed": failed,
         "summary": summary or ("timed out after %.0fs" % timeout if timed_out else "no summary"),
         "seconds": mono() - t0, "tail": "\n".join(out.splitlines()[-15:])}
    r["ok"] = (not timed_out and p.returncode == 0 and failed == 0 and passed >= 50
               and "All tests passed" in out)
    return r


def tools_missing(progs):
    return [p for p in progs if shutil.which(p) is None]


__all__ = ["ConnLost", "Mc", "McError", "McServer", "StartError", "log", "mono",
           "redis_harness", "run_capable", "spawn", "tail", "tools_missing",
           "understudy_problems"]
