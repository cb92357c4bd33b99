"""IPVS actuator bench: N virtual services x 4 real servers, from empty, then converged.

Runs against the real kernel, so inside the UML guest:

    tests/kernel/run-in-uml.sh --bench [-- --services 1000]

Prints one line per phase (seconds, netlink writes) and a JSON summary. The table is
flushed (ipvsadm -C) before and after: never run it on a host that uses IPVS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anycastd.actuators.ipvs import IpvsNetlink
from anycastd.core.ipvs import diff_ipvs
from anycastd.model import RealServer, ServiceSpec, VirtualService


def desired(n: int, weight: int = 100) -> dict[VirtualService, ServiceSpec]:
    out: dict[VirtualService, ServiceSpec] = {}
    for i in range(n):
        vs = VirtualService.tcp(f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}", 80)
        servers = tuple(
            RealServer(f"10.200.{j}.{i % 250 + 1}", 8080, weight, "nat") for j in range(4)
        )
        out[vs] = ServiceSpec(vs, "wlc", 0, servers)
    return out


def phase(name: str, act: IpvsNetlink, want: dict[VirtualService, ServiceSpec]) -> dict[str, float]:
    t0 = time.perf_counter()
    observed = act.observe()
    t1 = time.perf_counter()
    actions = diff_ipvs(want, observed, act.owned())
    t2 = time.perf_counter()
    w0 = act.writes
    act.apply(actions)
    t3 = time.perf_counter()
    result = {
        "observe_s": round(t1 - t0, 3),
        "plan_s": round(t2 - t1, 4),
        "apply_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
        "actions": len(actions),
        "writes": act.writes - w0,
    }
    print(f"{name:<28} {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    args = ap.parse_args()
    if os.environ.get("ANYCASTD_IN_UML") != "1":
        print("bench_ipvs: run inside the UML guest (tests/kernel/run-in-uml.sh --bench)")
        return 2
    subprocess.run(["ipvsadm", "-C"], check=True)
    n = args.services
    want = desired(n)
    drained = desired(n)
    # drain one real server in every 10th service: n/10 weight edits
    for i, vs in enumerate(list(drained)):
        if i % 10 == 0:
            s = drained[vs]
            rs0 = s.real_servers[0]
            servers = (RealServer(rs0.address, rs0.port, 0, "nat"), *s.real_servers[1:])
            drained[vs] = ServiceSpec(vs, s.scheduler, s.persistence, servers)
    results = {}
    with tempfile.TemporaryDirectory() as state, IpvsNetlink(Path(state)) as act:
        results["from_empty"] = phase(f"from empty ({n}x4)", act, want)
        results["converged"] = phase("converged pass", act, want)
        results["drain_10pct"] = phase(f"drain {n // 10} servers", act, drained)
        results["converged_after_drain"] = phase("converged pass", act, drained)
        results["remove_all"] = phase("remove all (stale owned)", act, {})
    subprocess.run(["ipvsadm", "-C"], check=True)
    summary = {
        "services": n,
        "real_servers_per_service": 4,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(summary, indent=1))
    ok = results["converged"]["writes"] == 0 and results["converged_after_drain"]["writes"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
