"""Benchmark: N TCP checks on a 1 s interval through anycastd's scheduler.

Targets (10,000 checks): < 50 % of one core, < 300 MB peak RSS, p99 lateness < 50 ms.

The TCP listeners run in a separate process (a selectors accept-and-close loop on several
127.0.0.x addresses and ports, so TIME_WAIT tuples spread out), so the measured process
is only the scheduler, the engine and the probes. Real asyncio loop, real monotonic clock.

    .venv/bin/python bench/bench_checks.py --checks 10000 --duration 40

Prints a JSON line with the numbers; ``--probe raw`` swaps healthchecks.TcpProbe for a
minimal ``loop.sock_connect`` probe, ``--probe null`` for a probe without I/O, to separate
probe cost from scheduler and engine cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anycastd.core.health import (
    CheckParams,
    CheckState,
    Event,
    Policy,
    ServiceHealth,
    ServiceParams,
)
from anycastd.engine.scheduler import CheckRun, CheckSpec, Probe, Scheduler
from healthchecks.result import ProbeResult, Status
from healthchecks.tcp import TcpProbe

# ----------------------------------------------------------------------------- listener


def listener_main(hosts: list[str], ports: list[int]) -> None:
    """Accept and close as fast as possible; print 'ready' once everything listens."""
    sel = selectors.DefaultSelector()
    socks = []
    for host in hosts:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(4096)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            lsock = key.fileobj
            assert isinstance(lsock, socket.socket)
            while True:
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                conn.close()


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True, slots=True)
class RawTcpProbe:
    """The least a TCP connect check can do: connect a non-blocking socket, close it."""

    host: str
    port: int

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (self.host, self.port))
        except TimeoutError:
            return ProbeResult(Status.TIMEOUT, time.monotonic() - start, "timeout")
        except OSError as exc:
            return ProbeResult(Status.FAIL, time.monotonic() - start, str(exc))
        finally:
            sock.close()
        return ProbeResult(Status.OK, time.monotonic() - start, "")


@dataclass(frozen=True, slots=True)
class NullProbe:
    """No I/O at all: isolates the cost of the scheduler and the engine."""

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        return ProbeResult(Status.OK, 0.0, "")


# ----------------------------------------------------------------------------- bench


def proc_status(field: str) -> int:
    """A kB field of /proc/self/status (VmHWM, VmRSS) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def machine() -> dict[str, object]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


async def bench(args: argparse.Namespace, endpoints: list[tuple[str, int]]) -> dict[str, object]:
    per_service = args.checks_per_service
    n_services = (args.checks + per_service - 1) // per_service
    services: dict[str, ServiceHealth] = {}
    specs: list[CheckSpec] = []
    made = 0
    for s in range(n_services):
        names = [f"tcp-{i}" for i in range(min(per_service, args.checks - made))]
        params = ServiceParams(
            f"svc{s}",
            tuple(CheckParams(n, rise=3, fall=2) for n in names),
            Policy.parse("all"),
            CheckState.UP,
        )
        services[params.name] = ServiceHealth.initial(params, time.monotonic())
        for n in names:
            host, port = endpoints[made % len(endpoints)]
            probe: Probe
            if args.probe == "raw":
                probe = RawTcpProbe(host, port)
            elif args.probe == "null":
                probe = NullProbe()
            else:
                probe = TcpProbe(host, port)
            specs.append(
                CheckSpec(
                    params.name,
                    n,
                    probe,
                    interval=args.interval,
                    fast_interval=args.interval / 2,
                    timeout=args.timeout,
                    jitter=args.jitter,
                )
            )
            made += 1

    lateness = array("d")
    latency = array("d")
    counts = {"ok": 0, "other": 0}
    measuring = False
    events = 0

    observe_run: Callable[[CheckRun], None] | None = None
    observe_events: Callable[[Sequence[Event]], None] | None = None
    if args.metrics:  # the hooks the daemon attaches: per-check histogram + counters
        from anycastd.observe.metrics import Metrics

        metrics = Metrics()
        metrics.sync(services)  # like the daemon: every check's series exist before runs
        observe_run, observe_events = metrics.observe_run, metrics.observe_events

    def on_run(run: CheckRun) -> None:
        if observe_run is not None:
            observe_run(run)
        if measuring:
            lateness.append(run.lateness)
            latency.append(run.latency)
            counts["ok" if run.ok else "other"] += 1

    def on_events(batch: Sequence[Event]) -> None:
        nonlocal events
        events += 1
        if observe_events is not None:
            observe_events(batch)

    sched = Scheduler(
        specs,
        services,
        rng=random.Random(1),
        max_concurrent=args.max_concurrent,
        on_run=on_run,
        on_events=on_events,
    )
    del specs, services
    if args.gc_freeze:
        gc.collect()
        gc.freeze()  # setup objects never die: keep them out of full collections
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(args.warmup)
    measuring = True
    cpu0, wall0 = time.process_time(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(args.duration)
    cpu1, wall1 = time.process_time(), time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    measuring = False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    wall = wall1 - wall0
    late = sorted(lateness)
    lat = sorted(latency)
    down = sum(1 for h in sched.services.values() if h.state.value != "up")
    return {
        "checks": args.checks,
        "probe": args.probe,
        "interval_s": args.interval,
        "jitter_s": args.jitter,
        "max_concurrent": args.max_concurrent,
        "duration_s": round(wall, 2),
        "runs": len(late),
        "runs_per_s": round(len(late) / wall, 1),
        "ok": counts["ok"],
        "not_ok": counts["other"],
        "services_not_up_at_end": down,
        "engine_event_batches": events,
        "cpu_pct_one_core": round(100 * (cpu1 - cpu0) / wall, 1),
        "cpu_user_s": round(ru1.ru_utime - ru0.ru_utime, 2),
        "cpu_sys_s": round(ru1.ru_stime - ru0.ru_stime, 2),
        "rss_peak_mb": round(proc_status("VmHWM") / 2**20, 1),
        "rss_now_mb": round(proc_status("VmRSS") / 2**20, 1),
        "lateness_p50_ms": round(1000 * pct(late, 50), 2),
        "lateness_p99_ms": round(1000 * pct(late, 99), 2),
        "lateness_max_ms": round(1000 * late[-1], 2) if late else None,
        "probe_latency_p50_ms": round(1000 * pct(lat, 50), 2),
        "probe_latency_p99_ms": round(1000 * pct(lat, 99), 2),
        "peak_concurrent": sched.peak_running,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=10_000)
    ap.add_argument("--checks-per-service", type=int, default=10)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--jitter", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--max-concurrent", type=int, default=256)
    ap.add_argument("--probe", choices=["healthchecks", "raw", "null"], default="healthchecks")
    ap.add_argument("--hosts", type=int, default=4, help="listen on 127.0.0.1..N")
    ap.add_argument("--ports", type=int, default=8)
    ap.add_argument(
        "--base-port", type=int, default=20100, help="keep below the ephemeral port range"
    )
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after setup")
    ap.add_argument(
        "--metrics", action="store_true", help="attach Metrics.observe_run/observe_events"
    )
    ap.add_argument("--listener", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    hosts = [f"127.0.0.{i + 1}" for i in range(args.hosts)]
    ports = [args.base_port + i for i in range(args.ports)]
    if args.listener:
        listener_main(hosts, ports)
        return

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = subprocess.Popen(
        [sys.executable, __file__, "--listener", f"--hosts={args.hosts}",
         f"--ports={args.ports}", f"--base-port={args.base_port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != "ready":
            raise SystemExit("listener did not start")
        endpoints = [(h, p) for h in hosts for p in ports]
        load_before = os.getloadavg()
        if args.loop == "uvloop":
            import uvloop  # optional, bench only

            result = uvloop.run(bench(args, endpoints))
        else:
            result = asyncio.run(bench(args, endpoints))
    finally:
        listener.terminate()
        listener.wait(5)
    result["machine"] = machine()
    result["loop"] = args.loop
    result["gc_freeze"] = args.gc_freeze
    result["metrics"] = args.metrics
    result["loadavg_1m_before_after"] = [load_before[0], os.getloadavg()[0]]
    result["nofile"] = [soft, hard]
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
