#!/usr/bin/env python3
"""Redis whose disk fills up, under understudy: nothing lost, nothing diverged.

  redis_disk_full.py            (needs $UNDERSTUDY, root for the small tmpfs)

Redis runs under `understudy run` with its append-only file on a 3 MiB tmpfs
(`--appendonly yes --appendfsync everysec`). A client SETs 64 KiB values
until the disk is full and Redis refuses writes (-MISCONF: the AOF write
failed with ENOSPC): the primary saw ENOSPC, the backup replays the same
result, so both refuse alike. Then the primary is SIGKILLed and the backup
takes over; after it:
  - every acknowledged SET is readable with its value, and no refused one is;
  - the new primary still refuses writes (it is in the same state);
  - once the tmpfs is made larger, it accepts writes again (Redis retries its
    AOF write) and the AOF on disk holds every acknowledged key once;
  - understudy reported no divergence.
Exit status: 0 pass, 1 fail, 77 skip (no redis-server, not root, no mount).
"""

import os
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import redis_harness as rh  # noqa: E402
from redis_harness import Resp, RespError, log  # noqa: E402

PASS, FAIL, SKIP = 0, 1, 77
VALUE_SIZE = 64 * 1024
DISK = "3m"


def value_for(i):
    head = b"v%06d:" % i
    return (head * (VALUE_SIZE // len(head) + 1))[:VALUE_SIZE]


class DiskFullRedis(rh.Server):
    def __init__(self, tracker, us, data):
        super().__init__(tracker, native=False, understudy=us, replicas=2)
        self.data = data

    def redis_argv(self):
        a = super().redis_argv()
        i = a.index("--appendonly")
        a[i + 1] = "yes"
        a[a.index("--dir") + 1] = self.data
        return a + ["--appendfsync", "everysec", "--aof-use-rdb-preamble", "no",
                    "--auto-aof-rewrite-percentage", "0"]


def mount_tmpfs(path, size):
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
                        "understudy-test", path], capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()


def umount(path):
    subprocess.run(["umount", "-l", path], capture_output=True)


def fill(c, acked, refused, first):
    """SET new keys until Redis refuses one; returns the next index."""
    i = first
    while i < first + 1000:
        try:
            reply = c.call("SET", "k%06d" % i, value_for(i))
        except RespError as e:
            if "MISCONF" not in str(e):
                raise RuntimeError("unexpected error to SET k%06d: %s" % (i, e))
            refused.append(i)
            return i + 1
        if reply != "OK":
            raise RuntimeError("SET k%06d answered %r" % (i, reply))
        acked.append(i)
        i += 1
        # the AOF is written once per event-loop turn: let it hit the disk
        time.sleep(0.01)
    raise RuntimeError("1000 SETs of 64 KiB on a %s disk were all accepted" % DISK)


def main():
    rh.set_log_prefix("[redis_disk_full]")
    us = os.environ.get("UNDERSTUDY")
    if not us or not shutil.which("redis-server"):
        print("SKIP: needs $UNDERSTUDY and redis-server")
        return SKIP
    if os.geteuid() != 0:
        print("SKIP: needs root to mount a small tmpfs")
        return SKIP
    rh.install_fatal_handlers()
    rh.install_deadline(150)
    tracker = rh.Tracker()
    problems = []
    srv = None
    data = None
    try:
        srv = DiskFullRedis(tracker, us, None)
        data = os.path.join(srv.dir, "data")
        os.mkdir(data)
        srv.data = data
        ok, err = mount_tmpfs(data, DISK)
        if not ok:
            print("SKIP: cannot mount a tmpfs: %s" % err)
            return SKIP
        srv.start()
        c = Resp(srv.port, timeout=10)
        acked, refused = [], []
        nxt = fill(c, acked, refused, 0)
        log("disk full after %d acknowledged SETs of 64 KiB; k%06d refused" % (
            len(acked), refused[-1]))
        # and still a moment later: Redis keeps failing to write its AOF
        time.sleep(0.3)
        try:
            c.call("SET", "k%06d" % nxt, value_for(nxt))
            problems.append("a write was accepted again on the full disk")
            acked.append(nxt)
        except RespError as e:
            if "MISCONF" not in str(e):
                raise
            refused.append(nxt)
        nxt += 1
        st0 = srv.status()
        pid, _ = srv.kill_primary()
        st, dt = srv.wait_failover(int(st0["failovers"]), pid)
        log("backup pid %s took over in %.0f ms" % (st["primary"]["pid"], dt * 1000))
        c.close()
        c = Resp(srv.port, timeout=10)
        for i in acked:
            v = c.call("GET", "k%06d" % i)
            if v != value_for(i):
                got = v if v is None else (v[:20], len(v))
                problems.append("acknowledged k%06d reads back as %r" % (i, got))
                break
        for i in refused:
            if c.call("EXISTS", "k%06d" % i) != 0:
                problems.append("refused k%06d exists after the failover" % i)
        try:
            c.call("SET", "after-failover", "x")
            problems.append("the new primary accepted a write on the full disk:"
                            " it is not in the primary's state")
        except RespError as e:
            if "MISCONF" not in str(e):
                problems.append("unexpected error on the full disk: %s" % e)
        r = subprocess.run(["mount", "-o", "remount,size=64m", data], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError("remount: %s" % r.stderr.strip())
        end = time.monotonic() + 10
        while True:
            try:
                if c.call("SET", "k%06d" % nxt, value_for(nxt)) == "OK":
                    acked.append(nxt)
                    break
            except RespError as e:
                if "MISCONF" not in str(e) or time.monotonic() > end:
                    problems.append("no write accepted within 10 s of freeing the disk: %s" % e)
                    break
            time.sleep(0.1)
        dbsize = c.call("DBSIZE")
        if dbsize != len(acked):
            problems.append("DBSIZE %s, expected the %d acknowledged keys" % (dbsize, len(acked)))
        # everysec: give Redis a second to write and fsync the rest of the AOF
        time.sleep(1.5)
        aof = b""
        for root, _, files in os.walk(data):
            for f in files:
                if ".aof" in f and not f.endswith(".manifest"):
                    with open(os.path.join(root, f), "rb") as fh:
                        aof += fh.read()
        for i in acked:
            n = aof.count(b"\r\nk%06d\r\n" % i)
            if n != 1:
                problems.append("the AOF holds k%06d %d times, expected once" % (i, n))
                break
        for i in refused:
            if b"\r\nk%06d\r\n" % i in aof:
                problems.append("the AOF holds the refused k%06d" % i)
        text = rh.tail(srv.logpath, 400)
        if "divergence" in text:
            problems.append("understudy reported a divergence:\n" + text[-1500:])
        c.close()
        srv.stop()
    except Exception as e:  # noqa: BLE001 - any failure of the run is the test's failure
        problems.append("%s: %s" % (type(e).__name__, e))
        if srv is not None:
            log("server log tail:\n" + rh.tail(srv.logpath, 40))
    finally:
        tracker.kill_all()
        if data:
            umount(data)
        tracker.close()
    for p in problems:
        print("FAIL:", p)
    if not problems:
        print("PASS")
    return FAIL if problems else PASS


if __name__ == "__main__":
    sys.exit(main())
