#!/usr/bin/python3
"""mt_bank: transfers between accounts under per-account mutexes.

The journal is the bank's history in the order the threads got the locks.
The checker replays it from the header's seeds: transfer I of thread T must
be the I-th draw of T's stream (no transfer lost or repeated, e.g. at a
failover), refused exactly when the source held too little at that point of
the history, with the printed balances; the final balances and each
account's history hash must be what the replay gives; the total is
invariant.

usage: test_mt_bank.py [PROGRAM] [--native | --kills K [--replicas N]] [--seed S] ...
(tests/lib/us_batch.py documents the modes and options.)
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_batch as b  # noqa: E402


class Bank(b.Spec):
    name = "mt_bank"

    def check(self, lines, args):
        threads = b.header_value(lines, "threads")
        n = b.header_value(lines, "accounts")
        initial = b.header_value(lines, "initial")
        seeds = b.parse_seeds(lines, threads)
        per = b.PerThread(seeds)
        bal = [initial] * n
        ahash = [b.FNV_INIT] * n
        pos = refused = 0
        accounts_seen = {}
        for k, line in enumerate(lines):
            f = line.split()
            if f[0] == "x":
                t, i, a, to, amount, ok, ba, bb = b.ints(k, line, f[1:], 8)
                r = per.step(k, line, t, i)
                ea = r % n
                eb = (r >> 16) % (n - 1)
                if eb >= ea:
                    eb += 1
                if (a, to, amount) != (ea, eb, (r >> 32) % 300):
                    b.fail(k, line, "thread %d's transfer %d should be %d->%d amount %d"
                           % (t, i, ea, eb, (r >> 32) % 300))
                if ok != (1 if bal[a] >= amount else 0):
                    b.fail(k, line, "ok=%d but account %d held %d" % (ok, a, bal[a]))
                if ok:
                    bal[a] -= amount
                    bal[to] += amount
                if (ba, bb) != (bal[a], bal[to]):
                    b.fail(k, line, "balances after: expected %d %d" % (bal[a], bal[to]))
                ahash[a] = b.mix(ahash[a], pos)
                ahash[to] = b.mix(ahash[to], pos)
                pos += 1
                refused += 1 - ok
            elif f[0] == "account":
                if len(f) != 4:
                    b.fail(k, line, "bad account line")
                acc, v, hh = int(f[1]), int(f[2]), int(f[3], 16)
                if acc in accounts_seen:
                    b.fail(k, line, "account printed twice")
                accounts_seen[acc] = True
                if not 0 <= acc < n or v != bal[acc] or hh != ahash[acc]:
                    b.fail(k, line, "final account: expected balance %d hash %016x"
                           % (bal[acc], ahash[acc]) if 0 <= acc < n else "no such account")
            elif f[0] not in ("mt_bank", "seed", "end"):
                b.fail(k, line, "unknown line")
        if sorted(accounts_seen) != list(range(n)):
            raise b.TestFailure("final balances printed for %d of %d accounts"
                                % (len(accounts_seen), n))
        end = b.end_line(lines)
        if end != {"transfers": pos, "refused": refused, "total": n * initial}:
            raise b.TestFailure("end line %r, expected transfers %d refused %d total %d"
                                % (lines[-1], pos, refused, n * initial))
        if sum(bal) != n * initial:
            raise b.TestFailure("total %d, expected %d" % (sum(bal), n * initial))
        return ["%d transfers by %d threads (%d refused), total %d invariant"
                % (pos, threads, refused, n * initial)]


if __name__ == "__main__":
    sys.exit(b.main(Bank()))
