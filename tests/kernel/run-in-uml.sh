#!/bin/bash
# Run the kernel test suite (or the IPVS bench) inside ONE User-Mode-Linux guest.
#
#   tests/kernel/run-in-uml.sh [--bench] [-- EXTRA ARGS]
#
# EXTRA ARGS go to pytest (tests) or to bench/bench_ipvs.py (--bench).
# The guest sees the host's / read-only (hostfs) and this checkout writable at the same path;
# its PID 1 is tests/kernel/uml-init.sh, which loads ip_vs/dummy/8021q, runs
# <checkout>/.venv/bin/python -m pytest tests/kernel, writes the exit status and a junit
# report to <checkout>/build/kernel-tests/ and powers off. This script prints the report
# and exits with pytest's status; 1 more if the guest never reported (crash, timeout).
#
# Environment: UML_TIMEOUT (seconds, default 240), UML_MEM (default 768M),
# UML_KERNEL (default /usr/bin/linux.uml).
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
checkout=$(cd "$here/../.." && pwd)
mode=tests
if [ "${1:-}" = "--bench" ]; then mode=bench; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi

kernel=${UML_KERNEL:-/usr/bin/linux.uml}
timeout_s=${UML_TIMEOUT:-240}
mem=${UML_MEM:-768M}

case "$checkout" in
*[[:space:]]*) echo "run-in-uml: the checkout path must not contain whitespace: $checkout" >&2; exit 2;;
esac
[ -x "$kernel" ] || { echo "run-in-uml: $kernel missing (apt-get install user-mode-linux)" >&2; exit 2; }
[ -x "$checkout/.venv/bin/python" ] || { echo "run-in-uml: no venv at $checkout/.venv" >&2; exit 2; }

out="$checkout/build/kernel-tests"
[ "$mode" = bench ] && out="$checkout/build/kernel-bench"
rm -rf "$out"
mkdir -p "$out"
# Extra arguments travel as a file (the kernel command line cannot carry them safely).
: > "$out/args"
for a in "$@"; do printf '%s\n' "$a" >> "$out/args"; done

# UML keeps its memory image in TMPDIR and its control sockets in uml_dir: both on tmpfs,
# both private to this run.
work=$(mktemp -d /dev/shm/anycastd-uml.XXXXXX)
trap 'rm -rf "$work"' EXIT
umid="acd$$"

# Hosts with AMX have an XSAVE area larger than UML 6.1's buffer; without this shim the
# guest dies before init ("ptrace set fp regs failed, errno = 14"). See uml-xstate-shim.c.
preload=""
if command -v cc >/dev/null 2>&1; then
    if cc -O2 -shared -fPIC -o "$work/xstate-shim.so" "$here/uml-xstate-shim.c" -ldl 2>"$work/cc.log"; then
        preload="$work/xstate-shim.so"
    else
        echo "run-in-uml: warning: cannot build the xstate shim:" >&2; cat "$work/cc.log" >&2
    fi
else
    echo "run-in-uml: warning: no C compiler; UML may not boot on AMX hosts (apt-get install gcc)" >&2
fi

start=$(date +%s)
LD_PRELOAD="$preload" TMPDIR="$work" timeout --kill-after=10 "$timeout_s" "$kernel" \
    mem="$mem" umid="$umid" uml_dir="$work" \
    root=/dev/root rootfstype=hostfs rootflags=/ ro \
    con=null con0=null,fd:1 ssl=null \
    init="$here/uml-init.sh" \
    ANYCASTD_CHECKOUT="$checkout" ANYCASTD_OUT="$out" ANYCASTD_MODE="$mode" \
    </dev/null >"$out/console.log" 2>&1
uml_rc=$?
end=$(date +%s)

if [ -f "$out/report.txt" ]; then
    cat "$out/report.txt"
fi
if [ ! -s "$out/status" ]; then
    echo "run-in-uml: the guest did not report a status (linux.uml rc $uml_rc after $((end - start))s)" >&2
    echo "run-in-uml: last console lines ($out/console.log):" >&2
    tail -n 40 "$out/console.log" >&2
    exit 1
fi
status=$(cat "$out/status")
echo "run-in-uml: guest $mode finished with status $status in $((end - start))s (report: $out)"
case "$status" in
''|*[!0-9]*) exit 1;;
esac
exit "$status"
