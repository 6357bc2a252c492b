#!/usr/bin/python3
"""mt_pool: a thread pool (task queue, mutex, condition variables) whose
completion order is folded into an accumulator.

The checker replays the journal: rounds 0, 1, 2... in order, each with
exactly its 24 tasks plus the children and grandchildren of the multiples
of 3 (ids +100, +200), each once, by a worker that exists, no task of a
round completed after the round's summary; every accumulator value is the
fold of the previous one with (round, id, worker); each round summary and
the end line agree with the replay.

usage: test_mt_pool.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Pool(b.Spec):
    name = "mt_pool"

    def check(self, lines, args):
        workers = b.header_value(lines, "workers")
        top = b.header_value(lines, "tasks")
        b.parse_seeds(lines, 1)
        expected = set(range(top)) | {j + 100 for j in range(top) if j % 3 == 0} \
            | {j + 200 for j in range(top) if j % 3 == 0}
        acc = b.FNV_INIT
        rnd = 0
        ran = set()
        total = 0
        for k, line in enumerate(lines):
            f = line.split()
            if f[0] == "d":
                if len(f) != 5:
                    b.fail(k, line, "bad task line")
                r, tid, w = int(f[1]), int(f[2]), int(f[3])
                got = int(f[4], 16)
                if r != rnd:
                    b.fail(k, line, "a task of round %d during round %d" % (r, rnd))
                if tid not in expected or tid in ran:
                    b.fail(k, line, "task %d %s" % (tid, "ran twice" if tid in ran
                                                     else "is not one of the round's"))
                if not 0 <= w < workers:
                    b.fail(k, line, "no worker %d" % w)
                ran.add(tid)
                acc = b.mix(b.mix(b.mix(acc, r), tid), w)
                total += 1
                if got != acc:
                    b.fail(k, line, "accumulator should be %016x" % acc)
            elif f[0] == "r":
                if len(f) != 4:
                    b.fail(k, line, "bad round line")
                r, n, got = int(f[1]), int(f[2]), int(f[3], 16)
                if r != rnd or ran != expected or n != len(expected) or got != acc:
                    b.fail(k, line, "round %d: %d of %d tasks ran (missing %s), accumulator "
                           "%016x" % (rnd, len(ran), len(expected), sorted(expected - ran)[:5],
                                      acc))
                rnd += 1
                ran = set()
            elif f[0] not in ("mt_pool", "seed", "end"):
                b.fail(k, line, "unknown line")
        if ran:
            raise b.TestFailure("round %d has %d tasks but no summary" % (rnd, len(ran)))
        end = b.end_line(lines)
        if end != {"rounds": rnd, "tasks": total, "acc": acc}:
            raise b.TestFailure("end line %r, the replay has rounds %d tasks %d acc %016x"
                                % (lines[-1], rnd, total, acc))
        return ["%d rounds of %d tasks on %d workers" % (rnd, len(expected), workers)]


if __name__ == "__main__":
    sys.exit(b.main(Pool()))
