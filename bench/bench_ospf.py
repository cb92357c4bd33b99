"""OSPF failover benchmark: a service's listener stops -> its /32 is gone from a neighbour
router's RIB over OSPF; it comes back -> the /32 is back. ``anycastd run`` end to end, real
FRR zebra + ospfd in every namespace.

Run as root from the repo root:

    .venv/bin/python bench/bench_ospf.py --runs 20 --timers fast|default [--flaps 5]

Setup (tests/integration/ospf_support.py): ``OspfLab`` (a router and two edges, point-to-point
veths, hello 1 s / dead 4 s); ``anycastd run`` on edge 1 only, one service: a TCP check of a
listener in that namespace, interval = fast_interval = 200 ms, timeout 150 ms, jitter 0,
rise 2, fall 2 (a health-down withdraws at once). ``--timers fast`` gives every ospfd
``timers throttle lsa all 0``, ``timers lsa min-arrival 0``, ``timers throttle spf 0 50 500``;
``--timers default`` leaves FRR 8.4's defaults (LSA throttle 5000 ms, min-arrival 1000 ms,
SPF 0/50/5000 ms).

Times (one wall clock for all):
* down: t0 = just before the listener is SIGKILLed; t1 = the router's kernel deletes its
  route to the /32 (``ip -ts monitor route`` in the router namespace: zebra installs what
  ospfd computes, so this is the RIB change as the kernel sees it, event driven).
* up: t0 = the new listener is listening; t1 = the router's kernel adds the route.
* anycastd's share of "down": from its ``service_transition`` log line to its
  ``ospf_withdraw`` line (vtysh has applied the removal), and from there to its ``loopback``
  line (the withdraw settle: ospfd's LSA seen flushed, then the address removed). Log
  timestamps have millisecond precision.
* flap (``--flaps N``): down, up as soon as the router has the route again, down at once:
  the times of the second down and of the up show what MinLSInterval/min-arrival do to a
  fast down-up-down.
Each run waits a random 0.2-0.6 s first (plus ``--hold`` seconds), so the stop falls at a
random phase of the checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BOUND_MS = 400.0


class RouteMonitor:
    """``ip -ts -o monitor route`` in a namespace: (wall time, added?) for one prefix."""

    def __init__(self, ns: Any, ip: str) -> None:
        self.events: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._pat = re.compile(r"^\[([^\]]+)\]\s*(Deleted )?" + re.escape(ip) + r"\s")
        self.proc = ns.popen(["ip", "-ts", "-o", "monitor", "route"], stdout=subprocess.PIPE,
                             text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = self._pat.match(line)
            if m is None:
                continue
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
            with self._lock:
                self.events.append((t, not m.group(2)))

    def first(self, added: bool, since: float) -> float | None:
        with self._lock:
            return next((t for t, a in self.events if a is added and t >= since), None)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from anycastd.lab.netns import stop_process, wait_for
    from bench.common import bench_run, summary
    from tests.integration.ospf_support import IP, ospf_topology

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--flaps", type=int, default=5)
    parser.add_argument("--timers", choices=("fast", "default"), default="fast")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="extra seconds the route stays up before each kill (with FRR's "
                        "default timers a change within 5 s of the last LSA is delayed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with bench_run("ospf", args.out) as (work, results), \
            ospf_topology(work, fast_timers=args.timers == "fast") as topo:
        results["timers"] = args.timers
        results["hold"] = args.hold
        edge = topo.edges[0]
        edge.start_listener()
        daemon = edge.start()
        monitor = RouteMonitor(topo.router.ns, IP)
        wait_for(lambda: topo.next_hops() == {1}, timeout=30, interval=0.05)

        def kill() -> float:
            assert edge.listener is not None
            t0 = time.time()
            os.kill(edge.listener.pid, signal.SIGKILL)
            stop_process(edge.listener)
            edge.listener = None
            return t0

        def gone(t0: float, timeout: float = 30) -> float:
            t1 = wait_for(lambda: monitor.first(False, t0), timeout=timeout, interval=0.005)
            return float(t1) - t0

        def back(timeout: float = 30) -> float:
            edge.start_listener()
            t0 = time.time()
            t1 = wait_for(lambda: monitor.first(True, t0), timeout=timeout, interval=0.005)
            return float(t1) - t0

        down: list[float] = []
        up: list[float] = []
        share: list[float] = []
        settle: list[float] = []
        for _ in range(args.runs):
            time.sleep(args.hold + rng.uniform(0.2, 0.6))
            t0 = kill()
            down.append(gone(t0))
            wait_for(lambda: not edge.has_address(), timeout=10, interval=0.01)
            line = daemon.wait_event("loopback", timeout=10)
            lines = [ln for ln in daemon.lines() if ln.t >= t0 - 0.01]
            seen = [ln.t for ln in lines if ln.event == "service_transition"]
            off = [ln.t for ln in lines if ln.event == "ospf_withdraw"]
            if seen and off:
                share.append(off[0] - seen[0])
                settle.append(line.t - off[0])
            time.sleep(rng.uniform(0.2, 0.6))
            up.append(back())
        print(f"timers: {args.timers}; hold {args.hold:g} s; {args.runs} runs; "
              f"detection bound {BOUND_MS:.0f} ms")
        results["down"] = summary("listener killed -> route gone at the router", down)
        results["up"] = summary("listener back -> route at the router", up)
        if share:
            results["anycastd_share"] = summary("anycastd: verdict -> route off (ospfd vty)",
                                                share)
            results["settle"] = summary("anycastd: route off -> address removed", settle)

        flap_down: list[float] = []
        flap_up: list[float] = []
        for _ in range(args.flaps):
            time.sleep(1.5)
            gone(kill())
            flap_up.append(back())
            flap_down.append(gone(kill()))  # at once: within MinLSInterval of the last LSA
            time.sleep(0.5)
            back()
        if args.flaps:
            results["flap_up"] = summary("flap: back -> route (right after a down)", flap_up)
            results["flap_down"] = summary("flap: killed again -> route gone", flap_down)
        daemon.stop()
        stop_process(monitor.proc)


if __name__ == "__main__":
    main()
