#!/usr/bin/python3
"""mt_barrier: rounds at a pthread barrier, a pthread_once per round.

The checker replays the journal: one line per round, rounds 0, 1, 2... in
order; the combined value is the hash of every thread's R-th draw (a
thread that skipped or repeated a round, or a replay that let it, gives
another); the serial thread and the thread that ran the round's
pthread_once init exist (who they are is the schedule's choice, and part
of the output understudy compares); the per-thread serial counts are the
journal's and the end line has the number of rounds.

usage: test_mt_barrier.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Barrier(b.Spec):
    name = "mt_barrier"
    determined = {"b": (1, 2, 4), "serial": (2,)}  # ONCE (field 3) is the schedule's

    def check(self, lines, args):
        threads = b.header_value(lines, "threads")
        seeds = b.parse_seeds(lines, threads)
        rands = [b.Rand(s) for s in seeds]
        rnd = 0
        counts = [0] * threads
        seen_counts = {}
        for k, line in enumerate(lines):
            f = line.split()
            if f[0] == "b":
                if len(f) != 5:
                    b.fail(k, line, "bad round line")
                r, serial, once = int(f[1]), int(f[2]), int(f[3])
                got = int(f[4], 16)
                if seen_counts:
                    b.fail(k, line, "a round after the counts")
                if r != rnd:
                    b.fail(k, line, "round %d, expected %d" % (r, rnd))
                if not (0 <= serial < threads and 0 <= once < threads):
                    b.fail(k, line, "no such thread")
                h_ = b.FNV_INIT
                for t in range(threads):
                    h_ = b.mix(h_, rands[t].next())
                if got != h_:
                    b.fail(k, line, "combined value should be %016x" % h_)
                counts[serial] += 1
                rnd += 1
            elif f[0] == "serial":
                t, n = b.ints(k, line, f[1:], 2)
                if t in seen_counts or not 0 <= t < threads or n != counts[t]:
                    b.fail(k, line, "thread %d was the serial thread %d times"
                           % (t, counts[t] if 0 <= t < threads else -1))
                seen_counts[t] = n
            elif f[0] not in ("mt_barrier", "seed", "end"):
                b.fail(k, line, "unknown line")
        if len(seen_counts) != threads:
            raise b.TestFailure("serial counts for %d of %d threads" % (len(seen_counts), threads))
        end = b.end_line(lines)
        if end != {"rounds": rnd}:
            raise b.TestFailure("end line %r, the journal has %d rounds" % (lines[-1], rnd))
        return ["%d rounds of %d threads; serial counts %s" % (rnd, threads, counts)]


if __name__ == "__main__":
    sys.exit(b.main(Barrier()))
