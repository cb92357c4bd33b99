"""Failover benchmark: a service's listener stops -> its prefix is gone at a real FRR peer,
and the listener comes back -> the prefix is back at the peer. ``anycastd run`` end to end.

Run as root from the repo root:  .venv/bin/python bench/bench_failover.py [--runs 20]

Setup (see tests/integration/controller_support.py): ``anycastd run`` in an edge namespace
with one service: a TCP check of a listener in that namespace, interval = fast_interval =
200 ms, timeout 150 ms, jitter 0, rise 2, fall 2 (a health-down withdraws at once: no
demote, no drain; ``drain_time = "0s"`` is kept so old and new results compare).
Managed ExaBGP, one session to bgpd in a router namespace.

Detection bound: fall (rise) x interval = 400 ms. Target: p99 <= bound + 60 ms (FRR's own
receive path included).

Times:
* down: t0 = just before the listener is SIGKILLed (so its exit is included); t1 = bgpd logs
  the withdraw (``debug bgp updates in``, microsecond timestamps, same wall clock). Also
  reported: t_rib = the first vtysh poll (started after t0) that no longer shows the route
  (bgpd's ~50 ms work-queue hold plus up to one ~50 ms poll: an upper bound).
* up: t0 = the new listener has bound and is listening (it says so on a pipe); t1 = bgpd
  logs the announcement.
Each run waits a random 0.2-0.6 s first, so the stop falls at a random phase of the checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

BOUND_MS = 400.0
#: --check process: SIGKILL -> withdraw at the peer, p99 (issue 9; FRR's receive included)
PROCESS_TARGET_MS = 100.0
SLACK_MS = 60.0
#: --timing defaults (issue 9): no timing keys at all
DEFAULTS_DOWN_MS = 1000.0
DEFAULTS_UP_MS = 2000.0


def main() -> None:
    sys.path.insert(0, str(REPO))  # the repo root: anycastd and tests.* (run as a script)
    from bench.common import bench_run, summary
    from tests.integration.controller_support import LISTENER, Service, topology, wait_for

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write JSON here")
    parser.add_argument("--check", choices=("tcp", "process"), default="tcp",
                        help="tcp: connect every 200 ms (fall 2); process: watch the "
                        "listener's process (its exit is an event; default process timing)")
    parser.add_argument("--timing", choices=("fixed", "defaults"), default="fixed",
                        help="fixed: the tcp check at 200 ms, rise/fall 2 (the historic "
                        "setup); defaults: no timing key at all (anycastd's defaults; issue 9 "
                        "targets: down p99 < 1 s, up p99 < 2 s)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    prefix, ip = "192.0.2.100/32", "192.0.2.100"
    port = 8200
    with bench_run("failover", args.out) as (work, results):
        with topology(work) as topo:
            check = None
            if args.check == "process":  # the listener's exact argv (Topo.listener)
                argv = [sys.executable, "-c", LISTENER, str(port)]
                check = f'name = "proc"\ntype = "process"\ncmdline = {json.dumps(argv)}\n'
            svc = Service("bench", prefix, port, shutdown="withdraw", drain_time="0s",
                          check=check)
            if args.timing == "defaults":
                svc = dataclasses.replace(svc, timing="")
            listener = topo.listener(port)
            daemon = topo.anycastd(topo.write_config([svc]))
            wait_for(lambda: topo.peer.has(prefix) and topo.has_address(prefix), timeout=60)
            time.sleep(1.0)
            down: list[float] = []
            down_rib: list[float] = []
            up: list[float] = []
            order_gap: list[float] = []  # address removed - withdraw received at the peer
            for i in range(args.runs):
                time.sleep(rng.uniform(0.2, 0.6))
                t0 = time.time()
                os.kill(listener.pid, signal.SIGKILL)
                listener.wait()

                def gone(since: float = t0) -> Any:
                    got = [u for u in topo.peer.updates(prefix, since=since) if u.withdrawn]
                    return got[0] if got else None

                rib_t = None
                while rib_t is None or gone() is None:
                    if time.time() - t0 > 10:
                        raise AssertionError(f"run {i}: no withdraw within 10 s")
                    if rib_t is None and not topo.peer.has(prefix):
                        rib_t = time.time()
                    time.sleep(0.002)
                withdraw = gone()
                down.append(withdraw.t - t0)
                down_rib.append(rib_t - t0)
                wait_for(lambda: not topo.has_address(prefix), timeout=5)
                (removed,) = [e for e in topo.monitor.of(ip, since=t0) if not e.added]
                order_gap.append(removed.t - withdraw.t)

                time.sleep(rng.uniform(0.2, 0.6))
                listener = topo.listener(port)
                t1 = time.time()

                def back(since: float = t1) -> Any:
                    got = [u for u in topo.peer.updates(prefix, since=since) if not u.withdrawn]
                    return got[0] if got else None

                announce = wait_for(back, timeout=10, interval=0.005)
                up.append(announce.t - t1)
                wait_for(lambda: topo.peer.has(prefix), timeout=5)
                print(f"run {i + 1:2d}: down {down[-1] * 1000:6.1f} ms "
                      f"(RIB poll {down_rib[-1] * 1000:6.1f})  up {up[-1] * 1000:6.1f} ms")
            stop_rc = daemon.terminate()
            listener.kill()
            listener.wait()
        print(f"machine: {results['machine']}")
        if args.timing == "defaults":
            print(f"default timing: target down p99 <= {DEFAULTS_DOWN_MS:.0f} ms, up p99 <= "
                  f"{DEFAULTS_UP_MS:.0f} ms")
        elif args.check == "tcp":
            print(f"bound: fall/rise 2 x interval 200 ms = {BOUND_MS:.0f} ms; target p99 <= "
                  f"{BOUND_MS + SLACK_MS:.0f} ms")
        else:
            print(f"process check (an event, fall 1): target p99 <= {PROCESS_TARGET_MS:.0f} ms")
        # tcp: detection bound + slack; process: the target (an event, no polling)
        target = BOUND_MS + SLACK_MS if args.check == "tcp" else PROCESS_TARGET_MS
        up_target = target if args.check == "tcp" else None
        if args.timing == "defaults":
            target, up_target = DEFAULTS_DOWN_MS, DEFAULTS_UP_MS
        results["check"] = args.check
        results["timing"] = args.timing
        results["down_peer_log"] = summary("listener stops -> withdraw received (bgpd)", down,
                                           target)
        results["down_rib_poll"] = summary("listener stops -> gone from RIB (vtysh poll)",
                                           down_rib, target)
        # process: a new process is found by the next run (interval 1 s), then rise 2: no
        # target (recovery is not what the event speeds up)
        results["up_peer_log"] = summary("listener back -> announce received (bgpd)", up,
                                         up_target)
        gaps = [g * 1000 for g in order_gap]
        results["address_removed_minus_withdraw_received_ms"] = {
            "min": min(gaps), "p50": statistics.median(gaps), "max": max(gaps)}
        print(f"address removed - withdraw received at the peer: min {min(gaps):.2f}  "
              f"p50 {statistics.median(gaps):.2f}  max {max(gaps):.2f} ms "
              "(negative: the address went first; ExaBGP acks before the UPDATE is on the wire)")
        results["raw_ms"] = {"down": [round(v * 1000, 2) for v in down],
                             "down_rib": [round(v * 1000, 2) for v in down_rib],
                             "up": [round(v * 1000, 2) for v in up],
                             "order_gap": [round(v, 2) for v in gaps]}
        results["anycastd_exit"] = stop_rc


if __name__ == "__main__":
    main()
