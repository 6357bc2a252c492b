#!/usr/bin/python3
"""echo_server under load, optionally with the primary SIGKILLed mid-stream.

Every reply must be byte-for-byte the request line. Lines carry a
client/request prefix so a reply that belongs to another request (reordered,
duplicated, or from another connection) is caught even if the random bodies
happened to be equal. Bodies are arbitrary bytes except '\\n' (8-bit clean,
includes '\\r' and NUL), mostly short, sometimes tens of KiB so that replies
need several write()s.

usage: test_echo.py [--native] [--kills K] [--seed S] [--server PATH] ...
"""
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

_NO_NEWLINE = bytes.maketrans(b"\n", b"~")


class Echo(h.App):
    name = "echo"
    server_binary = "echo_server"

    def __init__(self):
        self.bytes_sent = 0

    def server_argv(self, binary, port, workdir):
        return [binary, port]

    def make_requests(self, cid, rng, n):
        reqs = []
        for i in range(n):
            x = rng.random()
            size = (rng.randrange(0, 80) if x < 0.70 else
                    rng.randrange(80, 2000) if x < 0.97 else
                    rng.randrange(2000, 40000))
            body = rng.getrandbits(8 * size).to_bytes(size, "little") if size else b""
            reqs.append(b"c%dr%d " % (cid, i) + body.translate(_NO_NEWLINE))
        self.bytes_sent += sum(len(r) + 1 for r in reqs)
        return reqs

    def check_reply(self, key, index, request, reply):
        if reply != request:
            raise h.TestFailure(
                "conn %r request #%d: echo mismatch: sent %d bytes %r..., got %d bytes %r..."
                % (key, index, len(request), request[:40], len(reply), reply[:40]))

    def final_check(self, ctx):
        # A connection opened after the failover(s) must work as well.
        conn = ctx.connect("final conn")
        try:
            line = b"final check after the clients"
            got = conn.request(line)
            if got != line:
                raise h.TestFailure("final conn: echo mismatch: %r" % got)
            conn.finish()
        finally:
            conn.close()
        return ["%d bytes echoed" % self.bytes_sent]


if __name__ == "__main__":
    sys.exit(h.main(Echo()))
