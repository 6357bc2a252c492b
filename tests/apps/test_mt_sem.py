#!/usr/bin/python3
"""mt_sem: a counting semaphore over a pool of resources whose free stack
is under a spinlock, and a semaphore ping-pong between two threads.

The checker replays the journal as the free stack's history: every take
pops the stack's top, every give-back pushes what that thread held, no
resource is held twice, the semaphore value a taker read is between 0 and
the free count; operation I of thread T is T's I-th draw and waited for
its slot the way the draw says (sem_wait never fails); the ping-pong
alternates p 0, q 0, p 1, q 1...; the totals are the end line's.

usage: test_mt_sem.py [PROGRAM] [--native | --kills K [--replicas N]] ...
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Sem(b.Spec):
    name = "mt_sem"
    determined = {"a": (2, 3, 4, 5), "f": (2, 3), "x": (2, 3), "p": (1,), "q": (1,)}

    def check(self, lines, args):
        threads = b.header_value(lines, "threads")
        nres = b.header_value(lines, "resources")
        seeds = b.parse_seeds(lines, threads)
        per = b.PerThread(seeds)
        stack = list(range(nres))
        holding = {}
        gave_up = set()
        takes = fails = 0
        pings = pongs = 0
        for k, line in enumerate(lines):
            f = line.split()
            tag = f[0]
            if tag == "a":
                t, i, res, how, nfail, value = b.ints(k, line, f[1:], 6)
                if t in holding or t in gave_up:
                    b.fail(k, line, "thread %d cannot take a resource here" % t)
                d = per.step(k, line, t, i)
                if how != d % 3 or nfail < 0 or (how == 0 and nfail):
                    b.fail(k, line, "operation %d of thread %d waits with method %d, and "
                           "sem_wait never fails" % (i, t, d % 3))
                if not stack or stack[-1] != res:
                    b.fail(k, line, "the free stack's top is %s" % (stack[-1:] or "empty"))
                stack.pop()
                if not 0 <= value <= len(stack):
                    b.fail(k, line, "semaphore value %d with %d free" % (value, len(stack)))
                holding[t] = (i, res)
                takes += 1
                fails += nfail
            elif tag == "f":
                t, i, res = b.ints(k, line, f[1:], 3)
                if holding.get(t) != (i, res):
                    b.fail(k, line, "thread %d holds %s" % (t, holding.get(t)))
                del holding[t]
                stack.append(res)
            elif tag == "x":
                t, i, nfail = b.ints(k, line, f[1:], 3)
                if t in holding or t in gave_up:
                    b.fail(k, line, "thread %d cannot give up here" % t)
                d = per.step(k, line, t, i)
                if d % 3 == 0 or nfail < 1:
                    b.fail(k, line, "sem_wait cannot give up, a give-up follows a failure")
                gave_up.add(t)
                fails += nfail
            elif tag in ("p", "q"):
                (n,) = b.ints(k, line, f[1:], 1)
                want = ("p", pings) if pings == pongs else ("q", pongs)
                if (tag, n) != want:
                    b.fail(k, line, "ping-pong out of turn: expected %s %d" % want)
                if tag == "p":
                    pings += 1
                else:
                    pongs += 1
            elif tag not in ("mt_sem", "seed", "end"):
                b.fail(k, line, "unknown line")
        if holding or sorted(stack) != list(range(nres)):
            raise b.TestFailure("at the end threads still hold %s, free: %s" % (holding, stack))
        if pings != pongs:
            raise b.TestFailure("ping %d without its pong" % pongs)
        end = b.end_line(lines)
        if end != {"takes": takes, "fails": fails, "exchanges": pongs}:
            raise b.TestFailure("end line %r, the journal has takes %d fails %d exchanges %d"
                                % (lines[-1], takes, fails, pongs))
        return ["%d takes of %d resources, %d failed attempts, %d ping-pongs"
                % (takes, nres, fails, pongs)]


if __name__ == "__main__":
    sys.exit(b.main(Sem()))
