#!/bin/sh
# PID 1 of the User-Mode-Linux guest started by run-in-uml.sh. Never run this on a host.
#
# The kernel hands unknown "key=value" boot parameters to init as environment variables:
#   ANYCASTD_CHECKOUT  the checkout (visible read-only through the hostfs root; mounted
#                      writable here at the same path)
#   ANYCASTD_OUT       directory inside the checkout for the status and report files
#   ANYCASTD_MODE      "tests" (pytest tests/kernel) or "bench" (bench/bench_ipvs.py)
# Whatever happens, the last thing this script does is power the guest off.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
export PATH HOME

poweroff_now() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 10
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The kernel mounts devtmpfs on /dev itself (CONFIG_DEVTMPFS_MOUNT); only fall back.
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
[ -c /dev/null ] || { rm -f /dev/null; mknod -m 666 /dev/null c 1 3; }
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/tmp
echo 1 > /proc/sys/kernel/sysrq

out="$ANYCASTD_OUT"
checkout="$ANYCASTD_CHECKOUT"
# A checkout under /tmp, /run or /var/tmp (CI clones anywhere) is hidden by the fresh tmpfs
# mounted there above: make its mount point on that tmpfs (a no-op on the read-only root,
# where the directory already exists).
mkdir -p "$checkout" 2>/dev/null || true
if ! mount -t hostfs -o "$checkout" hostfs "$checkout"; then
    echo "uml-init: cannot mount $checkout writable" >&2
    poweroff_now
fi
mkdir -p "$out"

uname_r=$(uname -r)
moddir="/usr/lib/uml/modules/$uname_r"
# Bind the UML modules over /lib/modules when the host has that directory (the read-only
# root cannot grow a new mount point); the loader below reads $moddir directly anyway.
if [ -d /lib/modules ]; then mount --bind /usr/lib/uml/modules /lib/modules; fi
# Not every host has kmod; uml_modprobe.py resolves modules.dep and calls finit_module.
"$checkout/.venv/bin/python" "$checkout/tests/kernel/uml_modprobe.py" "$moddir" \
    ipv6 ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh \
    ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_mh dummy 8021q veth >>"$out/guest-setup.log" 2>&1
ip link set lo up
{ echo "--- mounts"; cat /proc/mounts; echo "--- modules"; cat /proc/modules; ls -l /dev/null; } >>"$out/guest-setup.log" 2>&1

export ANYCASTD_IN_UML=1
export TMPDIR=/tmp
export PYTHONDONTWRITEBYTECODE=1
cd "$checkout" || poweroff_now

# Extra arguments, one a line (written by run-in-uml.sh).
set --
if [ -f "$out/args" ]; then
    while IFS= read -r arg; do set -- "$@" "$arg"; done < "$out/args"
fi

case "${ANYCASTD_MODE:-tests}" in
bench)
    "$checkout/.venv/bin/python" bench/bench_ipvs.py "$@" >"$out/report.txt" 2>&1
    status=$?
    ;;
*)
    "$checkout/.venv/bin/python" -m pytest tests/kernel -p no:cacheprovider \
        --junitxml="$out/junit.xml" "$@" >"$out/report.txt" 2>&1
    status=$?
    ;;
esac
echo "$status" > "$out/status"
poweroff_now
