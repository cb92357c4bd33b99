"""Drift benchmark: an anycast address deleted by hand -> the prefix is gone at a real FRR
peer, the address is back on lo, and the prefix is announced again. ``anycastd run`` end to
end, with the reconcile timer at 30 s: only the kernel's address events drive the repair.

Run as root from the repo root:  .venv/bin/python bench/bench_drift.py [--runs 20]

Setup: the topology of tests/integration/controller_support.py (``anycastd run`` in an edge
namespace with managed ExaBGP, FRR bgpd in a router namespace), one healthy service.

Times, per run (t0 = just before ``ip addr del`` runs; the command's own start-up included):
* withdraw: bgpd logs the withdraw (``debug bgp updates in``, microsecond stamps);
* restored: ``ip -ts monitor address`` shows the address added again;
* announced: bgpd logs the announcement again.
Before the kernel event listener, all three waited for the reconcile timer (issue 8 #11:
27.2 s measured with BIRD as the peer and a 30 s timer).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(REPO))  # the repo root: anycastd and tests.* (run as a script)
    from bench.common import bench_run, summary
    from tests.integration.controller_support import Service, topology, wait_for

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    prefix, ip, port = "192.0.2.110/32", "192.0.2.110", 8210
    with bench_run("drift", args.out) as (work, results):
        with topology(work) as topo:
            topo.listener(port)
            topo.anycastd(topo.write_config([Service("bench", prefix, port)],
                                            reconcile_interval="30s"))
            wait_for(lambda: topo.peer.has(prefix) and topo.has_address(prefix), timeout=60)
            time.sleep(1.0)
            withdraw: list[float] = []
            restored: list[float] = []
            announced: list[float] = []
            for i in range(args.runs):
                time.sleep(rng.uniform(0.2, 0.6))
                t0 = time.time()
                topo.edge.exec(["ip", "addr", "del", prefix, "dev", "lo"])

                def back(since: float = t0) -> Any:
                    got = [u for u in topo.peer.updates(prefix, since=since) if not u.withdrawn]
                    return got[0] if got else None

                again = wait_for(back, timeout=10, interval=0.005)
                (gone,) = [u for u in topo.peer.updates(prefix, since=t0) if u.withdrawn]
                added = [e for e in topo.monitor.of(ip, since=t0) if e.added]
                withdraw.append(gone.t - t0)
                restored.append(added[0].t - t0)
                announced.append(again.t - t0)
                wait_for(lambda: topo.peer.has(prefix), timeout=5)
                print(f"run {i + 1:2d}: withdraw {withdraw[-1] * 1000:6.1f} ms  "
                      f"address back {restored[-1] * 1000:6.1f} ms  "
                      f"announced {announced[-1] * 1000:6.1f} ms")
        print(f"machine: {results['machine']}")
        results["withdraw"] = summary("ip addr del -> withdraw received (bgpd)", withdraw)
        results["restored"] = summary("ip addr del -> address back on lo", restored)
        results["announced"] = summary("ip addr del -> announced again (bgpd)", announced)
        results["raw_ms"] = {k: [round(v * 1000, 2) for v in vals] for k, vals in
                             (("withdraw", withdraw), ("restored", restored),
                              ("announced", announced))}


if __name__ == "__main__":
    main()
