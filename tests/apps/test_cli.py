#!/usr/bin/env python3
"""Bad input gets a clear error and changes nothing; a program's own end is
not a failure.

  test_cli.py ECHO_SERVER        (needs $UNDERSTUDY)

  1. no command, a missing or non-executable PROGRAM, bad options (replicas,
     hang timeout, CPU sets naming a CPU this machine does not have, an
     unknown option, no program): each exits 2 (127 for the program) with a
     message naming what is wrong, starts nothing and leaves no control
     socket behind;
  2. status/failover/inject with no run behind the control socket, and with a
     socket file a dead run left: exit 1, "no run is listening";
  3. a second run on a control path in use is refused (exit 1) and the first
     run, serving a client, does not notice;
  4. a program that exits by itself: understudy exits with its status (3),
     with no failover and no replica reported dead, 20 times over (a backup
     that replays the end before the primary is reaped ends with it);
  5. a backup that cannot keep up (stopped with SIGSTOP, below the hang
     timeout): the primary is held back within --max-lag-ms, status reports
     the lag, and once the backup runs again the client goes on, every reply
     exact;
  6. with --backup-nice 10, backups run nicer than the primary, every
     thread of them; a backup promoted by `understudy failover` gets the
     primary's priority back on every thread; as an ordinary user (who could
     not undo it) backups run at the primary's priority, and understudy says
     so.
Exit 0 pass, 1 fail, 77 skip.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import us_harness as h  # noqa: E402

echo_server = sys.argv[1]
us = h.require_understudy()
failures = []


def run(args, cwd, timeout=20):
    return subprocess.run([us] + args, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def expect(args, cwd, rc, words, what):
    r = run(args, cwd)
    msg = (r.stdout + r.stderr).strip()
    if r.returncode != rc or not all(w in msg for w in words):
        failures.append("%s: `understudy %s` exited %d, expected %d with %r; said: %s"
                        % (what, " ".join(args), r.returncode, rc, words, msg[-300:]))
    return msg


def status(ctl):
    r = run(["status", "--json", "--control", ctl], None, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def thread_nices(pid):
    """{tid: nice} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid), "rb") as f:
            s = f.read()
        out[int(tid)] = int(s[s.rfind(b")") + 2:].split()[16])
    return out


with tempfile.TemporaryDirectory(prefix="us-cli-") as d:
    # 1. bad commands, programs and options
    notexec = os.path.join(d, "data.txt")
    with open(notexec, "w") as f:
        f.write("not a program\n")
    expect([], d, 2, ["usage"], "no command")
    expect(["run", "--", os.path.join(d, "nonexistent")], d, 127,
           ["no such program"], "missing program")
    expect(["run", "--", notexec], d, 127, ["not executable"], "non-executable program")
    expect(["run", "--replicas", "0", "--", "/bin/true"], d, 2, ["--replicas"], "replicas 0")
    expect(["run", "--replicas", "abc", "--", "/bin/true"], d, 2, ["--replicas", "abc"],
           "replicas abc")
    expect(["run", "--hang-timeout", "-5", "--", "/bin/true"], d, 2, ["--hang-timeout"],
           "negative hang timeout")
    expect(["run", "--cpus", "0/1000", "--", "/bin/true"], d, 2, ["--cpus", "CPU 1000"],
           "a CPU the machine does not have")
    expect(["run", "--cpus", "0:1", "--", "/bin/true"], d, 2, ["bad --cpus"], "bad CPU list")
    expect(["run", "--replicas", "3", "--cpus", "0/1", "--", "/bin/true"], d, 2,
           ["--cpus", "3 replicas"], "too few CPU sets")
    expect(["run", "--frobnicate", "--", "/bin/true"], d, 2, ["unknown option", "--frobnicate"],
           "unknown option")
    expect(["run"], d, 2, ["needs a program"], "no program")
    left = [n for n in os.listdir(d) if n != "data.txt"]
    if left:
        failures.append("bad input left files behind: %s" % left)

    # 2. no run behind the control socket, or a dead run's socket file
    gone = os.path.join(d, "gone.sock")
    for cmd in (["status"], ["failover"], ["inject", "--replica", "backup", "crash"]):
        expect(cmd + ["--control", gone], d, 1, ["no run is listening"], "no run: " + cmd[0])
    stale = os.path.join(d, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    expect(["status", "--control", stale], d, 1, ["no run is listening"], "stale socket")
    os.unlink(stale)

    # 3. a second run on a control path in use
    ctl, port = os.path.join(d, "ctl.sock"), h.free_port()
    with open(os.path.join(d, "first.err"), "w") as err:
        first = subprocess.Popen([us, "run", "--control", ctl, "--hang-timeout", "60000",
                                  "--backup-nice", "10", "--",
                                  echo_server, str(port)],
                                 stdout=subprocess.DEVNULL, stderr=err, cwd=d,
                                 start_new_session=True)
    try:
        end = time.monotonic() + 20
        while not (status(ctl) or {}).get("backups"):
            if time.monotonic() > end or first.poll() is not None:
                raise RuntimeError("the first run did not start")
            time.sleep(0.05)
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        cf = c.makefile("rwb")

        def echo(i):
            cf.write(b"line %d\n" % i)
            cf.flush()
            return cf.readline() == b"line %d\n" % i
        ok = all(echo(i) for i in range(100))
        expect(["run", "--control", ctl, "--", "/bin/true"], d, 1, ["another run", ctl],
               "control path in use")
        ok = ok and all(echo(i) for i in range(100, 200))
        st = status(ctl)
        if not ok or not st or st.get("failovers") != 0 or len(st.get("backups") or []) != 1:
            failures.append("the first run was disturbed by the second: echo %s, status %s"
                            % (ok, st))

        # 5. a backup that cannot keep up: held back, reported, resumed
        backup = st["backups"][0]["pid"]
        os.kill(backup, signal.SIGSTOP)
        done, stop = [200], threading.Event()

        def pump():
            try:
                i = 200
                while not stop.is_set():
                    if not echo(i):
                        failures.append("back-pressure: reply %d was wrong" % i)
                        return
                    i += 1
                    done[0] = i
            except OSError as e:
                failures.append("back-pressure: client error at %d: %s" % (done[0], e))
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        time.sleep(1.5)
        n0 = done[0]
        time.sleep(1.0)
        n1 = done[0]
        st = status(ctl) or {}
        lag = (st.get("backups") or [{}])[0]
        if n1 != n0:
            failures.append("back-pressure: the primary ran on %d requests with its backup"
                            " stopped for 1.5-2.5 s (max-lag-ms %s)" % (n1 - n0,
                                                                       st.get("max_lag_ms")))
        if not lag.get("lag_ms", 0) >= 1000 or not lag.get("lag_events", 0) > 0:
            failures.append("back-pressure: status does not report the lag: %s" % lag)
        h.log("backup stopped: primary held after %d replies; status lag %s events, %s ms"
              % (n1, lag.get("lag_events"), lag.get("lag_ms")))
        os.kill(backup, signal.SIGCONT)
        time.sleep(1.0)
        if done[0] <= n1 + 100:
            failures.append("back-pressure: the client did not go on once the backup ran"
                            " again (%d -> %d)" % (n1, done[0]))
        stop.set()
        t.join(10)
        st = status(ctl) or {}
        if st.get("divergences") or len(st.get("backups") or []) != 1:
            failures.append("back-pressure: the backup did not catch up cleanly: %s" % st)

        # 6. priorities: backup nicer, a promoted backup back at the primary's
        base = os.getpriority(os.PRIO_PROCESS, 0)
        want = min(19, base + 10)
        prim, back = st["primary"]["pid"], st["backups"][0]["pid"]
        if st.get("backup_nice") != want - base:
            failures.append("status says backup_nice %s, expected %d"
                            % (st.get("backup_nice"), want - base))
        for pid, nice in ((prim, base), (back, want)):
            got = thread_nices(pid)
            if set(got.values()) != {nice}:
                failures.append("pid %d (%s): thread nice values %s, expected all %d"
                                % (pid, "primary" if pid == prim else "backup", got, nice))
        expect(["failover", "--control", ctl], d, 0, [], "planned failover")
        end = time.monotonic() + 10
        while (status(ctl) or {}).get("failovers") != 1 and time.monotonic() < end:
            time.sleep(0.05)
        got = thread_nices(back)
        if set(got.values()) != {base}:
            failures.append("promoted backup pid %d: thread nice values %s, expected all %d"
                            % (back, got, base))
        if not all(echo(i) for i in range(done[0], done[0] + 100)):
            failures.append("the client's replies went wrong after the planned failover")
        c.close()
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    except Exception as ex:  # noqa: BLE001 - any failure is the test's
        failures.append("%s: %s" % (type(ex).__name__, ex))
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()

    # 4. the program's own end, again and again
    for i in range(20):
        r = run(["run", "--control", os.path.join(d, "own.sock"), "--", "/bin/sh", "-c",
                 "exit 3"], d)
        bad = [w for w in ("died", "took over", "failed", "diverged") if w in r.stderr]
        if r.returncode != 3 or bad:
            failures.append("own end %d: exit %d (expected 3), said %s: %s"
                            % (i, r.returncode, bad, r.stderr.strip()[-300:]))
            break

    # 6b. an ordinary user cannot undo a nicer backup's priority: not lowered
    # (copies of the binary and the shim, which the build tree may hide from nobody)
    if os.geteuid() == 0 and shutil.which("setpriv"):
        ud = tempfile.mkdtemp(prefix="us-cli-user-")
        try:
            os.chmod(ud, 0o755)
            shutil.copy(us, ud)
            shutil.copy(os.path.join(os.path.dirname(us), "libunderstudy.so"), ud)
            run_dir = os.path.join(ud, "run")
            os.mkdir(run_dir)
            os.chown(run_dir, 65534, 65534)
            r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                                "--clear-groups", os.path.join(ud, os.path.basename(us)), "run",
                                "--backup-nice", "10",
                                "--control", os.path.join(run_dir, "ctl.sock"), "--",
                                "/bin/sh", "-c", "exit 3"],
                               capture_output=True, text=True, cwd="/", timeout=20)
        finally:
            shutil.rmtree(ud, ignore_errors=True)
        if r.returncode != 3 or "backups run at the primary's priority" not in r.stderr:
            failures.append("as an ordinary user: exit %d, said: %s"
                            % (r.returncode, r.stderr.strip()[-300:]))
    else:
        h.log("as an ordinary user: skipped (needs root and setpriv to become nobody)")

for f in failures:
    print("FAIL:", f)
if not failures:
    print("PASS")
sys.exit(1 if failures else 0)
