#!/usr/bin/env bash
# Builds understudy and runs its whole test suite (CTest). Installs the
# Debian packages it needs first. Extra arguments go to ctest (e.g. -L apps),
# in both passes below.
#
# Two builds, two passes:
#  1. build-asan/ (-DUS_SANITIZE=ON): the supervisor, the CLI and the unit
#     tests with ASan+UBSan+LeakSanitizer, the shim and the test programs
#     with UBSan in trap mode (CMakeLists.txt says why). Any report (or a
#     UBSan trap the kernel logged) is printed after that ctest's summary and
#     fails it (tests/sanitizer_reports.sh). This pass runs the tests whose
#     code the sanitizers instrument, once per kind of situation, leaving
#     out (US_SANITIZE_EXCLUDE):
#       *_native      nothing of understudy runs: redis_native and
#                     memcached_native run Debian's binaries, the apps ones
#                     only the test programs (their traps are still checked
#                     by every test below that runs them under understudy);
#       apps_mt_*_nofault, apps_mt_*_failover2
#                     the same shim code (each primitive recorded, replayed
#                     and promoted) as apps_mt_*_failover, which stays; one
#                     and two failovers with 3 replicas are kept for the
#                     small servers, Redis and memcached;
#       campaign_self_check
#                     checks the campaign's own checker (Python);
#       fuzz_*        not built there: the normal build's fuzz targets
#                     carry ASan+UBSan already.
#     What stays: unit_ring, every apps_* failover / situation test
#     (supervisor: spawn, watch, control socket, fd transfer, promotion,
#     hang detection, inject, divergence and vote; shim: record, replay,
#     promotion), apps_mt_*_failover (sync.c, threads.c for every kind of
#     primitive), redis_* and memcached_* under understudy (real programs:
#     many fds, fork, threads) and campaign_short (30 faults of every kind).
#     3 to 4 minutes on a 2-core machine (the normal pass: 6 to 7).
#     US_SANITIZE=0 scripts/test.sh skips this pass; an -E among the extra
#     arguments replaces US_SANITIZE_EXCLUDE there.
#  2. build/: the whole suite, last, so the output ends with its summary.
# The exit status is 0 only if both passes passed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/deps.sh"
us_install_deps
us_build "$top"
status=0
if [ "${US_SANITIZE:-1}" != 0 ]; then
    us_build "$top" build-asan -DUS_SANITIZE=ON
    US_SANITIZE_EXCLUDE='_native$|^apps_mt_.*_(nofault|failover2)$|^campaign_self_check$'
    echo "understudy: sanitizer pass (build-asan/, ASan+UBSan; excluded: $US_SANITIZE_EXCLUDE)"
    (cd "$top/build-asan" &&
        ctest --output-on-failure --no-label-summary --timeout 300 -E "$US_SANITIZE_EXCLUDE" "$@") ||
        status=1
    if [ $status -ne 0 ]; then
        echo "understudy: the sanitizer pass FAILED (above); the exit status will say so"
    else
        echo "understudy: the sanitizer pass passed; now the whole suite (build/)"
    fi
fi
cd "$top/build"
ctest --output-on-failure --no-label-summary --timeout 300 "$@" || status=1
exit $status
