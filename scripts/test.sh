#!/usr/bin/env bash
# Builds understudy and runs its whole test suite (CTest). Installs the
# Debian packages it needs first. Extra arguments go to ctest (e.g. -L apps).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/deps.sh"
us_install_deps
us_build "$top"
cd "$top/build"
exec ctest --output-on-failure --no-label-summary --timeout 300 "$@"
