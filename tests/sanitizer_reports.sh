#!/bin/sh
# The sanitizer build's (-DUS_SANITIZE=ON) bracket around the suite, run by
# ctest before and after the tests (CTEST_CUSTOM_PRE_TEST / _POST_TEST):
#
#   sanitizer_reports.sh start DIR          empties DIR, notes the time
#   sanitizer_reports.sh check DIR BINDIR   fails if anything was reported
#
# ASan, LSan and UBSan write their reports to DIR (log_path in ASAN_OPTIONS /
# UBSAN_OPTIONS, set for the tests by the CTestCustom.cmake the top-level
# CMakeLists.txt writes), so a report fails the run even from a process
# whose exit status or stderr no test looks at (a `understudy status` polled
# in a loop). A failed check makes ctest exit non-zero, after its summary.
# The shim and the test programs have UBSan in trap mode: a failed check is
# a SIGILL, which the kernel logs ("trap invalid opcode ... in
# libunderstudy.so[OFFSET,...]"); where dmesg is readable, such a line from
# the shim or a program of BINDIR since `start` fails the check too, with
# the source line (addr2line): a backup killed that way could otherwise go
# unnoticed by a test that does not need the backup.
set -u
mode=$1 dir=$2

last_stamp() { dmesg 2>/dev/null | sed -n '$s/^\[ *\([0-9.]*\)\].*/\1/p'; }

case $mode in
start)
    rm -rf "$dir" && mkdir -p "$dir" || exit 1
    last_stamp >"$dir/.dmesg-since"
    echo "sanitizer reports go to $dir"
    ;;
check)
    bindir=$3 fail=0 n=0
    # The first 3 reports in full, the SUMMARY lines of the next 20, then
    # only the count (one bug in the CLI repeats in every `understudy
    # status` a test polls).
    for f in "$dir"/*; do
        [ -e "$f" ] || continue
        n=$((n + 1)) fail=1
        if [ $n -le 3 ]; then
            echo "==== sanitizer report $f"
            cat "$f"
        elif [ $n -le 23 ]; then
            echo "==== $f: $(grep -m1 '^SUMMARY' "$f" || head -n1 "$f")"
        fi
    done
    [ $n -gt 0 ] && echo "==== $n sanitizer report(s) in $dir"
    since=$(cat "$dir/.dmesg-since" 2>/dev/null)
    if [ -n "$since" ]; then
        names="libunderstudy.so"
        for p in "$bindir"/*; do
            [ -f "$p" ] && [ -x "$p" ] && names="$names $(basename "$p")"
        done
        traps=$(dmesg 2>/dev/null | awk -v since="$since" -v names="$names" '
            BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) ours[a[i]] = 1 }
            /trap invalid opcode/ {
                t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t)
                if (t + 0 <= since + 0) next
                m = $0; sub(/.* in /, "", m); sub(/\[.*/, "", m)
                if (m in ours) print
            }')
        if [ -n "$traps" ]; then
            echo "==== UBSan traps (SIGILL) in the shim or a test program, from dmesg:"
            echo "$traps" | while read -r line; do
                echo "$line"
                # "... in NAME[OFFSET,START+SIZE]": where in the source
                where=${line##* in }
                name=${where%%\[*} off=${where#*\[} off=${off%%,*}
                bin="$bindir/$name"
                [ "$name" = libunderstudy.so ] && bin="$bindir/../../libunderstudy.so"
                [ -f "$bin" ] && command -v addr2line >/dev/null &&
                    addr2line -f -i -p -e "$bin" "0x$off" | sed 's/^/    at /'
            done
            fail=1
        fi
    else
        echo "(dmesg not readable: UBSan traps are seen only through the tests' own checks)"
    fi
    [ $fail -eq 0 ] && echo "sanitizer reports: none"
    exit $fail
    ;;
*)
    echo "usage: $0 start DIR | check DIR BINDIR" >&2
    exit 2
    ;;
esac
