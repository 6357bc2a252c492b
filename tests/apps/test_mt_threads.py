#!/usr/bin/python3
"""mt_threads: bursts of threads created and joined, detached threads,
thread-specific data with destructors (one re-arming itself), keys deleted
and created again.

The checker replays the journal round by round: round R has each of its
joinable threads' lines once (ran, key A's destructor after it, for odd J
key B's destructor twice), all before main's "j R" and none of the next
round's before it; each detached thread of round R (-t per round, default
1) prints once, after round R started; the order numbers of the threads'
lines are 0, 1, 2...; the end line's totals are the journal's.

usage: test_mt_threads.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Threads(b.Spec):
    name = "mt_threads"
    determined = {"t": (1, 2, 3), "k": (1, 2), "l": (1, 2, 3), "x": (1, 2), "j": (1,)}

    def check(self, lines, args):
        burst = b.header_value(lines, "burst")
        ndet = b.header_value(lines, "detached")
        rnd = 0
        order = 0
        ran, dtor_a, dtor_b = set(), set(), {}
        detached = {}  # round -> detached threads seen
        for k, line in enumerate(lines):
            f = line.split()
            tag = f[0]
            if tag in ("t", "k", "l"):
                vals = b.ints(k, line, f[1:], 3 if tag != "k" else 2)
                r, j = vals[0], vals[1]
                if r != rnd or not 0 <= j < burst:
                    b.fail(k, line, "a line of thread %d/%d during round %d" % (r, j, rnd))
                if tag == "t":
                    if j in ran:
                        b.fail(k, line, "thread ran twice")
                    if vals[2] != order:
                        b.fail(k, line, "order %d, expected %d" % (vals[2], order))
                    order += 1
                    ran.add(j)
                elif j not in ran:
                    b.fail(k, line, "a destructor before the thread ran")
                elif tag == "k":
                    if j in dtor_a:
                        b.fail(k, line, "key A's destructor ran twice")
                    dtor_a.add(j)
                else:
                    if j % 2 == 0 or vals[2] != dtor_b.get(j, 0) + 1 or vals[2] > 2:
                        b.fail(k, line, "key B's destructor: pass %d of thread %d, after %d"
                               % (vals[2], j, dtor_b.get(j, 0)))
                    dtor_b[j] = vals[2]
            elif tag == "x":
                r, o = b.ints(k, line, f[1:], 2)
                if detached.get(r, 0) >= ndet or not 0 <= r <= rnd:
                    b.fail(k, line, "detached thread of round %d during round %d%s"
                           % (r, rnd, " (one too many)" if detached.get(r, 0) >= ndet else ""))
                if o != order:
                    b.fail(k, line, "order %d, expected %d" % (o, order))
                order += 1
                detached[r] = detached.get(r, 0) + 1
            elif tag == "j":
                (r,) = b.ints(k, line, f[1:], 1)
                want_b = {j: 2 for j in range(1, burst, 2)}
                if r != rnd or len(ran) != burst or len(dtor_a) != burst or dtor_b != want_b:
                    b.fail(k, line, "round %d joined with %d of %d threads run, %d key A and %s "
                           "key B destructors" % (rnd, len(ran), burst, len(dtor_a), dtor_b))
                rnd += 1
                ran, dtor_a, dtor_b = set(), set(), {}
            elif tag not in ("mt_threads", "end"):
                b.fail(k, line, "unknown line")
        if ran or dtor_a or dtor_b:
            raise b.TestFailure("round %d started but never joined" % rnd)
        missing = [r for r in range(rnd) if detached.get(r, 0) != ndet]
        if ndet and missing or set(detached) - set(range(rnd)):
            raise b.TestFailure("detached threads of rounds %s missing" % missing[:10])
        end = b.end_line(lines)
        want = {"rounds": rnd, "threads": rnd * (burst + ndet), "detached": rnd * ndet}
        if end != want:
            raise b.TestFailure("end line %r, the journal has %s" % (lines[-1], want))
        return ["%d rounds of %d joinable + %d detached threads (%d threads)"
                % (rnd, burst, ndet, rnd * (burst + ndet))]


if __name__ == "__main__":
    sys.exit(b.main(Threads()))
