#!/usr/bin/python3
"""mt_prodcons: a bounded FIFO under a mutex and two condition variables.

The checker replays the journal as the FIFO's history: item K of producer P
carries P's K-th draw (items neither lost nor repeated), every pop takes
the FIFO's head, the printed fill levels are the replay's, the FIFO never
holds more than its capacity, a producer waits for room only when it is
full, each producer finishes once with its count, the end line's totals
(produced, consumed, timed-out waits, waits for room) are the journal's.
Which consumer got an item, and when a timed wait timed out, is the
schedule's choice (part of the output bytes understudy compares, not
checkable here).

usage: test_mt_prodcons.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import collections
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class ProdCons(b.Spec):
    name = "mt_prodcons"
    determined = {"p": (1, 2, 3, 4), "g": (2, 3, 4), "q": (1, 2)}

    def check(self, lines, args):
        producers = b.header_value(lines, "producers")
        consumers = b.header_value(lines, "consumers")
        cap = b.header_value(lines, "capacity")
        seeds = b.parse_seeds(lines, producers)
        per = b.PerThread(seeds)
        fifo = collections.deque()
        done = {}
        pushes = pops = timeouts = fullwaits = 0
        waiting = set()  # producers that printed 'f' and have not pushed yet
        for k, line in enumerate(lines):
            f = line.split()
            tag = f[0]
            if tag == "p":
                if len(f) != 5:
                    b.fail(k, line, "bad push line")
                p, kk, count = int(f[1]), int(f[2]), int(f[4])
                value = int(f[3], 16)
                if p in done:
                    b.fail(k, line, "producer %d pushed after it finished" % p)
                want = per.step(k, line, p, kk)
                if value != want:
                    b.fail(k, line, "item %d of producer %d should be %016x" % (kk, p, want))
                if len(fifo) >= cap:
                    b.fail(k, line, "push into a full FIFO")
                fifo.append((p, kk))
                waiting.discard(p)
                pushes += 1
                if count != len(fifo):
                    b.fail(k, line, "fill level %d, the replay has %d" % (count, len(fifo)))
            elif tag == "g":
                c, p, kk, count = b.ints(k, line, f[1:], 4)
                if not 0 <= c < consumers:
                    b.fail(k, line, "no consumer %d" % c)
                if not fifo:
                    b.fail(k, line, "pop from an empty FIFO")
                if fifo[0] != (p, kk):
                    b.fail(k, line, "the FIFO's head is item %d of producer %d" % fifo[0][::-1])
                fifo.popleft()
                pops += 1
                if count != len(fifo):
                    b.fail(k, line, "fill level %d, the replay has %d" % (count, len(fifo)))
            elif tag == "w":
                (c,) = b.ints(k, line, f[1:], 1)
                if not 0 <= c < consumers:
                    b.fail(k, line, "no consumer %d" % c)
                timeouts += 1
            elif tag == "f":
                (p,) = b.ints(k, line, f[1:], 1)
                if not 0 <= p < producers or p in done or p in waiting:
                    b.fail(k, line, "producer %d cannot be waiting for room here" % p)
                if len(fifo) != cap:
                    b.fail(k, line, "producer waits for room with %d of %d in the FIFO"
                           % (len(fifo), cap))
                waiting.add(p)
                fullwaits += 1
            elif tag == "q":
                p, n = b.ints(k, line, f[1:], 2)
                if not 0 <= p < producers or p in done or p in waiting:
                    b.fail(k, line, "producer %d cannot finish here" % p)
                if n != per.next_i[p]:
                    b.fail(k, line, "producer %d says %d items, the journal has %d"
                           % (p, n, per.next_i[p]))
                done[p] = n
            elif tag not in ("mt_prodcons", "seed", "end"):
                b.fail(k, line, "unknown line")
        if len(done) != producers:
            raise b.TestFailure("%d of %d producers finished" % (len(done), producers))
        if fifo:
            raise b.TestFailure("%d items never consumed" % len(fifo))
        end = b.end_line(lines)
        want = {"produced": pushes, "consumed": pops, "timeouts": timeouts,
                "fullwaits": fullwaits}
        if end != want:
            raise b.TestFailure("end line %r, the journal has %s" % (lines[-1], want))
        return ["%d items through a FIFO of %d, %d timed-out waits, %d waits for room"
                % (pushes, cap, timeouts, fullwaits)]


if __name__ == "__main__":
    sys.exit(b.main(ProdCons()))
