"""Benchmark: reconcile N anycast addresses on ``lo`` in a fresh network namespace.

Run as root from the repository root:

    .venv/bin/python -m bench.bench_loopback [--count 10000] [--rounds 5] [--family 4|6|mixed]

Each round: a new namespace; a pass from empty (observe, plan, apply all adds), a converged
pass (observe, plan, apply: must be zero writes), then a teardown pass (remove all). Times
are wall-clock per step (time.perf_counter); the summary gives median and worst over rounds.
Targets: from empty < 2 s, converged < 0.5 s with zero writes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

from anycastd.actuators.loopback import NetlinkLoopback
from anycastd.core.addresses import diff_addresses
from anycastd.lab.netns import netns
from anycastd.model import HostAddress

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def addresses(count: int, family: str) -> set[HostAddress]:
    base4, base6 = ipaddress.IPv4Address("10.64.0.0"), ipaddress.IPv6Address("2001:db8::")
    v4 = [ipaddress.ip_interface(f"{base4 + i}/32") for i in range(count)]
    v6 = [ipaddress.ip_interface(f"{base6 + i}/128") for i in range(count)]
    if family == "4":
        return set(v4)
    if family == "6":
        return set(v6)
    return set(v4[: count // 2]) | set(v6[: count - count // 2])


def one_pass(lo: NetlinkLoopback, desired: set[HostAddress]) -> dict[str, float]:
    writes_before = lo.writes
    observed, t_observe = timed(lo.observe)
    actions, t_plan = timed(lambda: diff_addresses(desired, observed))
    _, t_apply = timed(lambda: lo.apply(actions))
    return {
        "observe": t_observe,
        "plan": t_plan,
        "apply": t_apply,
        "total": t_observe + t_plan + t_apply,
        "writes": float(lo.writes - writes_before),
    }


def round_(count: int, family: str) -> dict[str, dict[str, float]]:
    desired = addresses(count, family)
    with netns("bench") as ns, NetlinkLoopback(netns=ns.name) as lo:
        empty = one_pass(lo, desired)
        assert lo.observe().owned == desired, "not all addresses were added"
        converged = one_pass(lo, desired)
        teardown = one_pass(lo, set())
        assert lo.observe().owned == frozenset(), "not all addresses were removed"
    return {"from_empty": empty, "converged": converged, "teardown": teardown}


def ip_batch_baseline(desired: set[HostAddress]) -> float:
    """The same adds through iproute2's ``ip -batch`` (C): the kernel's own cost floor."""
    lines = [
        f"addr add {a} dev lo{' nodad' if a.version == 6 else ''}\n" for a in sorted(
            desired, key=lambda a: (a.version, int(a.ip)))
    ]
    with netns("base") as ns, tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.writelines(lines)
        batch.flush()
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns.name, "-batch", batch.name], check=True)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--family", choices=["4", "6", "mixed"], default="4")
    parser.add_argument("--baseline", action="store_true", help="also time `ip -batch`")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 77
    rounds = [round_(args.count, args.family) for _ in range(args.rounds)]
    print(f"# {args.count} addresses (family {args.family}), {args.rounds} rounds; "
          f"{platform.node()} {platform.release()} {platform.machine()} "
          f"python {platform.python_version()}")
    print(f"{'pass':<11} {'step':<8} {'median s':>9} {'worst s':>9}")
    summary: dict[str, dict[str, list[float]]] = {}
    for phase in ("from_empty", "converged", "teardown"):
        for step in ("observe", "plan", "apply", "total", "writes"):
            values = [r[phase][step] for r in rounds]
            summary.setdefault(phase, {})[step] = [statistics.median(values), max(values)]
            fmt = "{:>9.0f}" if step == "writes" else "{:>9.4f}"
            print(f"{phase:<11} {step:<8} {fmt.format(statistics.median(values))} "
                  f"{fmt.format(max(values))}")
    result: dict[str, object] = {"count": args.count, "family": args.family, "summary": summary}
    if args.baseline:
        base = ip_batch_baseline(addresses(args.count, args.family))
        result["ip_batch_add_seconds"] = base
        print(f"baseline: ip -batch adds the same addresses from empty in {base:.4f} s")
    print(f"load average: {os.getloadavg()}")
    print(json.dumps(result))
    empty_ok = summary["from_empty"]["total"][1] < 2.0
    conv_ok = summary["converged"]["total"][1] < 0.5 and summary["converged"]["writes"][1] == 0
    print(f"targets: from_empty<2s {'OK' if empty_ok else 'MISSED'}, "
          f"converged<0.5s+0 writes {'OK' if conv_ok else 'MISSED'}")
    return 0 if empty_ok and conv_ok else 1


if __name__ == "__main__":
    sys.exit(main())
