#!/usr/bin/python3
"""mt_trylock: trylock / timedlock / clocklock loops on a contended mutex,
a recursive mutex, an error-checking mutex.

The checker replays the journal: each of the three counters goes up by one
per line of its mutex (a lock that let two threads in, or a line lost or
repeated, breaks the count); operation I of thread T is T's I-th draw and
used the method and recursion depth the draw says (a blocking lock never
fails; the depths of one recursive operation are 1, 2, ... DEPTH, with no
other thread's recursive line in between); the failed attempts add up to
the end line's.

usage: test_mt_trylock.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class TryLock(b.Spec):
    name = "mt_trylock"
    determined = {"m": (2, 3, 4, 5), "r": (2, 3, 4), "e": (2, 3), "x": (2, 3)}

    def check(self, lines, args):
        threads = b.header_value(lines, "threads")
        seeds = b.parse_seeds(lines, threads)
        per = b.PerThread(seeds)
        c = {"m": 0, "r": 0, "e": 0}
        fails = 0
        rec = None  # (thread, op, depth reached, depth wanted) inside a recursive op
        gave_up = set()
        for k, line in enumerate(lines):
            f = line.split()
            tag = f[0]
            if tag == "m":
                t, i, v, how, nfail = b.ints(k, line, f[1:], 5)
                d = per.step(k, line, t, i)
                if t in gave_up or how != d % 6 or how > 3 or nfail < 0 or (how == 0 and nfail):
                    b.fail(k, line, "operation %d of thread %d is method %d (a blocking lock "
                           "never fails)" % (i, t, d % 6))
                fails += nfail
            elif tag == "r":
                t, i, v, depth = b.ints(k, line, f[1:], 4)
                if rec is None:
                    d = per.step(k, line, t, i)
                    if t in gave_up or d % 6 != 4:
                        b.fail(k, line, "operation %d of thread %d is method %d" % (i, t, d % 6))
                    rec = [t, i, 0, 1 + (d >> 8) % 3]
                if (t, i, depth) != (rec[0], rec[1], rec[2] + 1):
                    b.fail(k, line, "thread %d operation %d holds the recursive mutex at depth "
                           "%d" % (rec[0], rec[1], rec[2]))
                rec[2] += 1
                if rec[2] == rec[3]:
                    rec = None
            elif tag == "e":
                t, i, v = b.ints(k, line, f[1:], 3)
                d = per.step(k, line, t, i)
                if t in gave_up or d % 6 != 5:
                    b.fail(k, line, "operation %d of thread %d is method %d" % (i, t, d % 6))
            elif tag == "x":
                t, i, nfail = b.ints(k, line, f[1:], 3)
                d = per.step(k, line, t, i)
                if t in gave_up or d % 6 not in (1, 2, 3) or nfail < 1:
                    b.fail(k, line, "operation %d of thread %d (method %d) cannot give up"
                           % (i, t, d % 6))
                gave_up.add(t)
                fails += nfail
                continue
            elif tag in ("mt_trylock", "seed", "end"):
                continue
            else:
                b.fail(k, line, "unknown line")
            c[tag] += 1
            if v != c[tag]:
                b.fail(k, line, "counter of the %s mutex is %d, expected %d"
                       % ({"m": "contended", "r": "recursive", "e": "error-checking"}[tag],
                          v, c[tag]))
        if rec is not None:
            raise b.TestFailure("recursive operation %d of thread %d stopped at depth %d of %d"
                                % (rec[1], rec[0], rec[2], rec[3]))
        end = b.end_line(lines)
        want = {"m": c["m"], "r": c["r"], "e": c["e"], "fails": fails}
        if end != want:
            raise b.TestFailure("end line %r, the journal has %s" % (lines[-1], want))
        return ["%d contended, %d recursive, %d error-checking acquisitions; %d failed "
                "try/timed attempts" % (c["m"], c["r"], c["e"], fails)]


if __name__ == "__main__":
    sys.exit(b.main(TryLock()))
