#!/usr/bin/python3
"""mt_rwlock: readers and writers on a table under a pthread rwlock
(rdlock/wrlock, try, timed and clock variants).

The checker replays the journal, which each thread prints while it holds
the rwlock: writers write versions 1, 2, 3... in journal order, every
reader sees the last version written before its line (a reader that got
in beside a writer, or a replay that let it, sees another); operation I of
thread T is the I-th of T's draws and took the lock the way the draw says
(blocking ones never fail); readers are threads 0..R-1, writers after;
the failed attempts and the counts add up to the end line.

usage: test_mt_rwlock.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class RwLock(b.Spec):
    name = "mt_rwlock"
    # which thread printed a line is the schedule's (T not determined); the
    # failed attempts of one line are not either, but their sum is.
    determined = {"r": (2, 3, 4, 5), "w": (2, 3, 4, 5), "x": (2, 3)}

    def check(self, lines, args):
        readers = b.header_value(lines, "readers")
        writers = b.header_value(lines, "writers")
        seeds = b.parse_seeds(lines, readers + writers)
        per = b.PerThread(seeds)
        version = reads = writes = fails = 0
        gave_up = set()
        for k, line in enumerate(lines):
            f = line.split()
            if f[0] in ("r", "w"):
                t, i, v, how, nfail = b.ints(k, line, f[1:], 5)
                if t in gave_up:
                    b.fail(k, line, "thread %d after it gave up" % t)
                is_writer = t >= readers
                if is_writer != (f[0] == "w"):
                    b.fail(k, line, "thread %d is a %s" % (t, "writer" if is_writer else "reader"))
                draw = per.step(k, line, t, i)
                if how != draw % 4:
                    b.fail(k, line, "operation %d of thread %d takes the lock with method %d"
                           % (i, t, draw % 4))
                if nfail < 0 or (how == 0 and nfail):
                    b.fail(k, line, "%d failed attempts" % nfail)
                fails += nfail
                if f[0] == "w":
                    if v != version + 1:
                        b.fail(k, line, "writer wrote version %d after version %d" % (v, version))
                    version = v
                    writes += 1
                else:
                    if v != version:
                        b.fail(k, line, "reader saw version %d, the last written is %d"
                               % (v, version))
                    reads += 1
            elif f[0] == "x":
                t, i, nfail = b.ints(k, line, f[1:], 3)
                if t in gave_up:
                    b.fail(k, line, "thread %d gave up twice" % t)
                draw = per.step(k, line, t, i)
                if draw % 4 == 0 or nfail < 1:
                    b.fail(k, line, "a blocking or never failed attempt cannot give up")
                gave_up.add(t)
                fails += nfail
            elif f[0] not in ("mt_rwlock", "seed", "end"):
                b.fail(k, line, "unknown line")
        end = b.end_line(lines)
        if end != {"reads": reads, "writes": writes, "fails": fails}:
            raise b.TestFailure("end line %r, the journal has reads %d writes %d fails %d"
                                % (lines[-1], reads, writes, fails))
        return ["%d reads, %d writes, %d failed try/timed attempts" % (reads, writes, fails)]


if __name__ == "__main__":
    sys.exit(b.main(RwLock()))
