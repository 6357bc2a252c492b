#!/usr/bin/python3
"""stdio_append_server under load, optionally with the primary SIGKILLed.

Each client appends unique tokens ("APPEND c<cid>.<i>.<rand>") and now and
then asks "COUNT". The server replies "OK <k>": the token is line k of the
file. After the server has exited, the file must be exactly the acknowledged
tokens, each once: line k is the token acknowledged with "OK k", and the set
of acknowledged k is exactly 1..N. Together with the per-connection check
that k increases, this means every token is there exactly once, in order per
connection, and nothing else is: a replica that re-did or skipped a write
across a failover shows up as a duplicate, missing or shifted line.

usage: test_stdio_append.py [--native] [--kills K] [--seed S] [--server PATH] ...
"""
import os
import re
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

OK_RE = re.compile(rb"OK (\d+)")
COUNT_RE = re.compile(rb"COUNT (\d+)")


class StdioAppend(h.App):
    name = "stdio_append"
    server_binary = "stdio_append_server"

    def __init__(self):
        self.appends = 0
        self.conns = {}  # key -> last k acknowledged on that connection
        self.acks = {}  # key -> list of (k, token)
        self.path = None
        self.final_count = None

    def server_argv(self, binary, port, workdir):
        self.path = os.path.join(workdir, "append.txt")
        return [binary, port, self.path]

    def make_requests(self, cid, rng, n):
        reqs = []
        for i in range(n):
            if rng.random() < 0.02:
                reqs.append(b"COUNT")
            else:
                reqs.append(b"APPEND c%d.%d.%08x" % (cid, i, rng.getrandbits(32)))
                self.appends += 1
        return reqs

    def check_reply(self, key, index, request, reply):
        where = "conn %r request #%d" % (key, index)
        last = self.conns.get(key, 0)
        if request == b"COUNT":
            m = COUNT_RE.fullmatch(reply)
            if not m:
                raise h.TestFailure("%s: bad COUNT reply %r" % (where, reply))
            if int(m[1]) < last:
                raise h.TestFailure("%s: COUNT %s below %d acknowledged earlier"
                                    % (where, m[1].decode(), last))
            return
        m = OK_RE.fullmatch(reply)
        if not m:
            raise h.TestFailure("%s: bad reply %r to %r" % (where, reply, request))
        k = int(m[1])
        if k <= last:
            raise h.TestFailure("%s: OK %d not above previous OK %d on this connection"
                                % (where, k, last))
        self.conns[key] = k
        self.acks.setdefault(key, []).append((k, request[len(b"APPEND "):]))

    def final_check(self, ctx):
        conn = ctx.connect("final conn")
        try:
            reply = conn.request(b"COUNT")
            conn.finish()
        finally:
            conn.close()
        m = COUNT_RE.fullmatch(reply)
        if not m:
            raise h.TestFailure("final COUNT: bad reply %r" % reply)
        self.final_count = int(m[1])
        if self.final_count != self.appends:
            raise h.TestFailure("server counts %d appends, clients sent %d"
                                % (self.final_count, self.appends))
        return []

    def after_stop_check(self, ctx):
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            raise h.TestFailure("file ends with a partial line: %r" % data[-80:])
        lines = data.split(b"\n")[:-1] if data else []
        by_k = {}
        for lst in self.acks.values():
            for k, token in lst:
                if k in by_k:
                    raise h.TestFailure("OK %d acknowledged twice: %r and %r"
                                        % (k, by_k[k], token))
                by_k[k] = token
        if sorted(by_k) != list(range(1, self.appends + 1)):
            raise h.TestFailure("acknowledged counts are not exactly 1..%d" % self.appends)
        if len(lines) != self.appends:
            seen = {}
            for line in lines:
                seen[line] = seen.get(line, 0) + 1
            dups = [t for t, n in seen.items() if n > 1]
            missing = [t for t in by_k.values() if t not in seen]
            raise h.TestFailure("file has %d lines for %d acknowledged appends "
                                "(%d duplicated, %d missing; e.g. dup %r missing %r)"
                                % (len(lines), self.appends, len(dups), len(missing),
                                   dups[:3], missing[:3]))
        for k, line in enumerate(lines, start=1):
            if line != by_k[k]:
                raise h.TestFailure("file line %d is %r, but OK %d acknowledged %r"
                                    % (k, line, k, by_k[k]))
        return ["file holds exactly the %d acknowledged tokens, in order" % len(lines)]


if __name__ == "__main__":
    sys.exit(h.main(StdioAppend()))
