#!/usr/bin/python3
"""time_random_server under load, optionally with the primary SIGKILLed.

The server mixes every random value and time it serves into a running
FNV-1a hash and reports the hash in each reply. The replies carry all the
mixed inputs, so the client can recompute the hash: merge the replies of all
connections in global-counter (gc) order and mix them exactly like the server
does (see the comment at the top of time_random_server.c). After a failover
the new primary's hash only matches if it had re-executed the old primary's
history with the very random values and times the old primary sent out.

Checks:
  per connection  seq = 1, 2, 3, ... (no gap, no duplicate); gc strictly
                  increasing over data replies, STATE gc never below the last
                  gc seen on that connection
  globally        data replies have gc = 1..N exactly once, N = data
                  requests sent; the recomputed hash equals the h of every
                  reply, of every STATE reply, and of a final STATE on a fresh
                  connection; all getrandom() values distinct, all
                  getentropy() values distinct; CLOCK_REALTIME never goes back
                  in gc order; gettimeofday within 1s of clock_gettime; times
                  within the test's wall-clock window

usage: test_time_random.py [--native] [--kills K] [--seed S] [--server PATH] ...
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

FNV_OFFSET = 14695981039346656037
FNV_PRIME = 1099511628211
MASK64 = (1 << 64) - 1

DATA_RE = re.compile(rb"R seq=(\d+) gc=(\d+) rnd=(\d+) ent=(\d+) "
                     rb"rt=(\d+)\.(\d{9}) tv=(\d+)\.(\d{6}) h=([0-9a-f]{16})")
STATE_RE = re.compile(rb"S seq=(\d+) gc=(\d+) h=([0-9a-f]{16})")


def mix(state, values):
    """Mirror of mix_u64() in time_random_server.c: each value as unsigned
    decimal text followed by ';', FNV-1a 64 over the bytes."""
    for b in b"".join(b"%d;" % v for v in values):
        state = ((state ^ b) * FNV_PRIME) & MASK64
    return state


class TimeRandom(h.App):
    name = "time_random"
    server_binary = "time_random_server"

    def __init__(self):
        self.data_requests = 0
        # key -> per-connection bookkeeping; each key is only touched by the
        # thread that owns that connection.
        self.conns = {}
        self.data_replies = {}  # key -> list of parsed data replies
        self.state_replies = {}  # key -> list of (gc, h)
        self.t_wall_start = time.time()

    def server_argv(self, binary, port, workdir):
        return [binary, port]

    def make_requests(self, cid, rng, n):
        reqs = [b"STATE" if rng.random() < 0.02 else b"GET" for _ in range(n)]
        self.data_requests += sum(1 for r in reqs if r == b"GET")
        return reqs

    def check_reply(self, key, index, request, reply):
        c = self.conns.setdefault(key, {"last_gc": 0})
        where = "conn %r request #%d" % (key, index)
        if request == b"STATE":
            m = STATE_RE.fullmatch(reply)
            if not m:
                raise h.TestFailure("%s: bad STATE reply %r" % (where, reply))
            seq, gc, hv = int(m[1]), int(m[2]), int(m[3], 16)
            if gc < c["last_gc"]:
                raise h.TestFailure("%s: STATE gc=%d below last gc %d on this connection"
                                    % (where, gc, c["last_gc"]))
            c["last_gc"] = gc
            self.state_replies.setdefault(key, []).append((gc, hv, where))
        else:
            m = DATA_RE.fullmatch(reply)
            if not m:
                raise h.TestFailure("%s: bad data reply %r" % (where, reply))
            seq, gc = int(m[1]), int(m[2])
            if gc <= c["last_gc"]:
                raise h.TestFailure("%s: gc=%d not above previous gc %d on this connection"
                                    % (where, gc, c["last_gc"]))
            c["last_gc"] = gc
            self.data_replies.setdefault(key, []).append({
                "gc": gc, "rnd": int(m[3]), "ent": int(m[4]),
                "rt": (int(m[5]), int(m[6])), "tv": (int(m[7]), int(m[8])),
                "h": int(m[9], 16), "where": where})
        if seq != index + 1:
            raise h.TestFailure("%s: seq=%d, expected %d (gap or duplicate)"
                                % (where, seq, index + 1))

    def final_check(self, ctx):
        conn = ctx.connect("final conn")
        try:
            reply = conn.request(b"STATE")
            conn.finish()
        finally:
            conn.close()
        m = STATE_RE.fullmatch(reply)
        if not m or int(m[1]) != 1:
            raise h.TestFailure("final STATE: bad reply %r" % reply)
        final_gc, final_h = int(m[2]), int(m[3], 16)
        t_wall_end = time.time()

        replies = sorted((r for lst in self.data_replies.values() for r in lst),
                         key=lambda r: r["gc"])
        if len(replies) != self.data_requests:
            raise h.TestFailure("%d data replies for %d data requests"
                                % (len(replies), self.data_requests))
        if final_gc != self.data_requests:
            raise h.TestFailure("server counter is %d after %d data requests"
                                % (final_gc, self.data_requests))

        # Recompute the running hash in gc order; remember it after each gc so
        # STATE replies (which report a gc) can be checked too.
        state = FNV_OFFSET
        after = {0: state}
        prev_rt = None
        for expect_gc, r in enumerate(replies, start=1):
            if r["gc"] != expect_gc:
                raise h.TestFailure("gc sequence broken: expected %d, found %d (%s)"
                                    % (expect_gc, r["gc"], r["where"]))
            rt_s, rt_ns = r["rt"]
            tv_s, tv_us = r["tv"]
            state = mix(state, (r["gc"], r["rnd"], r["ent"], rt_s, rt_ns, tv_s, tv_us))
            if state != r["h"]:
                raise h.TestFailure(
                    "hash diverges at gc=%d (%s): recomputed %016x, server said %016x "
                    "(server's state does not match the values it sent)"
                    % (r["gc"], r["where"], state, r["h"]))
            after[r["gc"]] = state
            rt = rt_s * 10**9 + rt_ns
            tv = tv_s * 10**9 + tv_us * 1000
            if prev_rt is not None and rt < prev_rt:
                raise h.TestFailure("CLOCK_REALTIME went back at gc=%d: %d < %d ns"
                                    % (r["gc"], rt, prev_rt))
            prev_rt = rt
            if abs(tv - rt) > 10**9:
                raise h.TestFailure("gc=%d: gettimeofday %d ns vs clock_gettime %d ns"
                                    % (r["gc"], tv, rt))
            if not (self.t_wall_start - 5 <= rt_s <= t_wall_end + 5):
                raise h.TestFailure("gc=%d: time %d.%09d outside the test's window"
                                    % (r["gc"], rt_s, rt_ns))
        if state != final_h:
            raise h.TestFailure("final STATE h=%016x, recomputed %016x" % (final_h, state))
        for lst in self.state_replies.values():
            for gc, hv, where in lst:
                if after.get(gc) != hv:
                    raise h.TestFailure("%s: STATE gc=%d h=%016x, recomputed %s"
                                        % (where, gc, hv, after.get(gc)))

        for field, source in (("rnd", "getrandom"), ("ent", "getentropy")):
            distinct = len({r[field] for r in replies})
            if distinct != len(replies):
                raise h.TestFailure("%s returned %d duplicate value(s) in %d calls"
                                    % (source, len(replies) - distinct, len(replies)))
        nstate = sum(len(v) for v in self.state_replies.values())
        return ["%d data replies + %d STATE replies; final state %016x at gc=%d matches"
                % (len(replies), nstate, final_h, final_gc)]


if __name__ == "__main__":
    sys.exit(h.main(TimeRandom()))
