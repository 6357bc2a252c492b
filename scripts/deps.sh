#!/usr/bin/env bash
# Installs the Debian 12 packages understudy needs to build, test and demo.
# Sourced by scripts/demo.sh and scripts/test.sh; does nothing when all are present.
us_install_deps() {
    local pkgs=(build-essential cmake pkg-config libcmocka-dev libxxhash-dev clang python3
                redis-server redis-tools memcached libmemcached-tools procps)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "understudy: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { echo "understudy: could not install ${missing[*]}" >&2; return 1; }
    # The packages may start a redis-server on 6379 and a memcached on 11211; the tests,
    # demo and benchmarks use their own ports.
}

# us_build TOP [DIR [CMAKE_ARGS...]]: configures and builds into TOP/DIR
# (default build/), e.g. us_build "$top" build-asan -DUS_SANITIZE=ON.
us_build() {
    local top=$1 dir=${2:-build} log
    shift $(($# < 2 ? $# : 2))
    log=$(mktemp)
    if ! { cmake -S "$top" -B "$top/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" &&
           cmake --build "$top/$dir" -j"$(nproc)"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "understudy: the build failed" >&2
        return 1
    fi
    rm -f "$log"
}
