#!/usr/bin/env bash
# The demo: Redis under understudy keeps serving redis-benchmark while its
# primary replica is SIGKILLed in the middle of the load.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/deps.sh"
us_install_deps
us_build "$top"

us="$top/build/understudy"
work=$(mktemp -d /tmp/understudy-demo.XXXXXX)
port=${PORT:-6390}
run_pid=""
cleanup() {
    [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting: understudy run -- redis-server --port $port (a primary and one backup)"
"$us" run -- redis-server --port "$port" --bind 127.0.0.1 --save '' --jemalloc-bg-thread no \
    --logfile "$work/redis.log" &
run_pid=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$us" status

say "redis-benchmark: 50 clients, SET/GET/INCR; the primary will be SIGKILLed after 1.5 s"
redis-benchmark -p "$port" -c 50 -n 300000 -t set,get,incr -q > "$work/bench.txt" 2>&1 &
bench_pid=$!
sleep 1.5
primary=$("$us" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"]["pid"])')
say "kill -9 $primary   (the primary replica)"
kill -9 "$primary"
sleep 0.3
"$us" status
wait "$bench_pid" && bench_rc=0 || bench_rc=$?
say "redis-benchmark finished (exit status $bench_rc):"
tr '\r' '\n' < "$work/bench.txt" | grep -E "requests per second|rror" || true
errors=$(tr '\r' '\n' < "$work/bench.txt" | grep -ci "error" || true)
counter=$(redis-cli -p "$port" get counter:__rand_int__)
say "INCR counter after 300000 INCRs: $counter (none lost, none applied twice); DBSIZE $(redis-cli -p "$port" dbsize)"
if [ "$bench_rc" -eq 0 ] && [ "$errors" -eq 0 ] && [ "$counter" = 300000 ]; then
    say "the clients saw no error across the failover"
else
    say "something went wrong: see above"; exit 1
fi
