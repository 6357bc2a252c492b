#!/usr/bin/python3
"""mt_park: workers handed work through atomics, parking in empty sections.

The checker replays the journal: one line per round, rounds 0, 1, 2... in
order; worker T's hash after round R folds in the next 1 + R % 7 draws of
its stream (seed in the header), so a batch lost, repeated or made from
another point of the stream gives another hash; the per-worker batch counts
equal the rounds, and the end line has them.

How often the workers parked is the schedule's and leaves no trace in the
journal: under understudy what this test shows is that the replicas do not
need to agree on it (no divergence, while the batches are replayed exactly).

usage: test_mt_park.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Park(b.Spec):
    name = "mt_park"
    determined = None  # every number is the replay's

    def check(self, lines, args):
        threads = b.header_value(lines, "threads")
        seeds = b.parse_seeds(lines, threads)
        rands = [b.Rand(s) for s in seeds]
        hashes = [b.FNV_INIT] * threads
        rnd = 0
        counts = {}
        for k, line in enumerate(lines):
            f = line.split()
            if f[0] == "p":
                if len(f) != 2 + threads:
                    b.fail(k, line, "bad round line")
                if counts:
                    b.fail(k, line, "a round after the counts")
                if int(f[1]) != rnd:
                    b.fail(k, line, "round %s, expected %d" % (f[1], rnd))
                for t in range(threads):
                    for _ in range(1 + rnd % 7):
                        hashes[t] = b.mix(hashes[t], rands[t].next())
                    if int(f[2 + t], 16) != hashes[t]:
                        b.fail(k, line, "worker %d's hash should be %016x" % (t, hashes[t]))
                rnd += 1
            elif f[0] == "batches":
                t, n = b.ints(k, line, f[1:], 2)
                if t in counts or not 0 <= t < threads or n != rnd:
                    b.fail(k, line, "worker %d counted %d batches in %d rounds" % (t, n, rnd))
                counts[t] = n
            elif f[0] not in ("mt_park", "seed", "end"):
                b.fail(k, line, "unknown line")
        if len(counts) != threads:
            raise b.TestFailure("batch counts for %d of %d workers" % (len(counts), threads))
        if b.end_line(lines) != {"rounds": rnd}:
            raise b.TestFailure("end line %r, the journal has %d rounds" % (lines[-1], rnd))
        return ["%d rounds of %d workers" % (rnd, threads)]


if __name__ == "__main__":
    sys.exit(b.main(Park()))
