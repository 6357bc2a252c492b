#!/usr/bin/python3
"""mt_ledger_server (thread per connection, accounts under mutexes, a
logger thread writing a journal file) under load, optionally with the
primary SIGKILLed mid-stream.

Every reply carries the operation's sequence number; the replies of all
clients together must be one serial history: sequence numbers 1..N, each
once (none lost or applied twice at a failover), and replaying the
requests in that order gives exactly the replies seen (balances, refusals,
the invariant total). A connection opened after the clients (and after the
failovers) checks the final balances. After SIGTERM the journal file must
be that same history, line for line, once.

usage: test_mt_ledger.py [--native] [--kills K] [--seed S] [--server PATH] ...
"""
import os
import sys
import threading

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

ACCOUNTS = 8
INITIAL = 1000


class Ledger(h.App):
    name = "mt_ledger"
    server_binary = "mt_ledger_server"
    default_requests = 20000  # small requests: 3000 would be over in a few ms

    def __init__(self):
        self.lock = threading.Lock()
        self.history = {}  # seq -> (request, reply)
        self.final_balances = None

    def server_argv(self, binary, port, workdir):
        return [binary, port, os.path.join(workdir, "journal")]

    def make_requests(self, cid, rng, n):
        reqs = []
        for _ in range(n):
            x = rng.random()
            if x < 0.65:
                a = rng.randrange(ACCOUNTS)
                b = rng.randrange(ACCOUNTS - 1)
                b += b >= a
                reqs.append(b"T %d %d %d" % (a, b, rng.randrange(0, 400)))
            elif x < 0.9:
                reqs.append(b"G %d" % rng.randrange(ACCOUNTS))
            else:
                reqs.append(b"S")
        return reqs

    def _record(self, what, request, reply):
        f = reply.split()
        kind = {b"T": (b"OK", b"NO"), b"G": (b"V",), b"S": (b"S",)}[request[:1]]
        want_len = 4 if request[:1] == b"T" else 3
        if len(f) != want_len or f[0] not in kind or not all(x.isdigit() for x in f[1:]):
            raise h.TestFailure("%s: reply %r to %r" % (what, reply, request))
        if request == b"S" and int(f[2]) != ACCOUNTS * INITIAL:
            raise h.TestFailure("%s: total %s, expected the invariant %d"
                                % (what, f[2].decode(), ACCOUNTS * INITIAL))
        seq = int(f[1])
        with self.lock:
            if seq in self.history:
                raise h.TestFailure("%s: sequence number %d given twice: to %r (%r) and %r (%r)"
                                    % (what, seq, self.history[seq][0], self.history[seq][1],
                                       request, reply))
            self.history[seq] = (request, reply)

    def check_reply(self, key, index, request, reply):
        self._record("conn %r request #%d" % (key, index), request, reply)

    def _replay(self):
        """Check every reply against the history replayed in sequence order."""
        n = len(self.history)
        if sorted(self.history) != list(range(1, n + 1)):
            missing = sorted(set(range(1, max(self.history) + 1)) - set(self.history))
            raise h.TestFailure("sequence numbers are not 1..%d: missing %s (an operation "
                                "applied without its reply reaching the client?)" % (n, missing[:10]))
        bal = [INITIAL] * ACCOUNTS
        for seq in range(1, n + 1):
            req, reply = self.history[seq]
            f = req.split()
            if f[0] == b"T":
                a, b, amount = int(f[1]), int(f[2]), int(f[3])
                ok = bal[a] >= amount
                if ok:
                    bal[a] -= amount
                    bal[b] += amount
                want = b"%s %d %d %d" % (b"OK" if ok else b"NO", seq, bal[a], bal[b])
            elif f[0] == b"G":
                want = b"V %d %d" % (seq, bal[int(f[1])])
            else:
                want = b"S %d %d" % (seq, sum(bal))
            if reply != want:
                raise h.TestFailure("operation %d %r: the reply was %r, the serial history "
                                    "gives %r" % (seq, req, reply, want))
        return bal

    def final_check(self, ctx):
        conn = ctx.connect("final conn")
        try:
            for a in range(ACCOUNTS):
                req = b"G %d" % a
                self._record("final conn", req, conn.request(req))
            self._record("final conn", b"S", conn.request(b"S"))
            got = conn.request(b"bogus")
            if got != b"ERR":
                raise h.TestFailure("final conn: reply %r to a bad request, expected ERR" % got)
            conn.finish()
        finally:
            conn.close()
        bal = self._replay()
        refused = sum(1 for r, rep in self.history.values() if rep.startswith(b"NO"))
        return ["%d operations form one serial history (%d transfers refused); final "
                "balances %s" % (len(self.history), refused, bal)]

    def after_stop_check(self, ctx):
        path = os.path.join(ctx.workdir, "journal")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        if lines[-1] != b"":
            raise h.TestFailure("journal: the last line is cut: %r" % lines[-1][:80])
        lines = lines[:-1]
        if len(lines) != len(self.history):
            raise h.TestFailure("journal has %d lines, the clients saw %d operations"
                                % (len(lines), len(self.history)))
        for i, line in enumerate(lines):
            req, reply = self.history[i + 1]
            want = b"%d %s | %s" % (i + 1, req, reply)
            if line != want:
                raise h.TestFailure("journal line %d is %r, the clients saw %r"
                                    % (i + 1, line[:120], want))
        return ["journal file: the same %d operations, in order, once each" % len(lines)]


if __name__ == "__main__":
    sys.exit(h.main(Ledger()))
