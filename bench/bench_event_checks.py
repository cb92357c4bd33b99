"""Benchmarks for the event-driven probes (issue 9, item 3).

    .venv/bin/python bench/bench_event_checks.py [--seconds 5]

1. sock_diag dump time with ~10 and ~1,000 TCP listeners on 127.0.0.1 (our struct client,
   and pyroute2's DiagSocket for comparison);
2. process exit -> ProcessProbe.changed() latency, 30 SIGKILLs of a child we started;
3. CPU (user+sys of this process, incl. worker threads) of 1,000 listen checks every 100 ms
   against 1,000 TCP-connect checks every 100 ms, each to 1,000 local listeners.
Traffic stays on 127.0.0.1; only processes this script started are signalled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import sys
import time

from healthchecks.listen import ListenProbe, SocketTable, _Entry
from healthchecks.process import ProcessProbe
from healthchecks.tcp import TcpProbe


def listeners(n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    return socks


def time_dumps(rounds: int = 200) -> tuple[float, float | None]:
    entry = _Entry(socket.AF_INET, socket.IPPROTO_TCP, None)
    entry.dump()
    start = time.perf_counter()
    for _ in range(rounds):
        entry.dump()
    ours = (time.perf_counter() - start) / rounds
    entry.close()
    try:
        from pyroute2 import DiagSocket
    except ImportError:
        return ours, None
    with DiagSocket() as ds:
        ds.bind()
        ds.get_sock_stats(family=socket.AF_INET, states=1 << 10)
        start = time.perf_counter()
        for _ in range(rounds // 10):
            ds.get_sock_stats(family=socket.AF_INET, states=1 << 10)
        theirs = (time.perf_counter() - start) / (rounds // 10)
    return ours, theirs


async def exit_latencies(runs: int) -> list[float]:
    argv = (sys.executable, "-c", "import time; time.sleep(60)", f"bench-{os.getpid()}")
    probe = ProcessProbe(cmdline=argv)
    out = []
    for _ in range(runs):
        proc = await asyncio.create_subprocess_exec(*argv)
        while not (await probe.run(1.0)).ok:  # noqa: ASYNC110 (waits for exec: no event)
            await asyncio.sleep(0.005)  # until exec() shows the argv
        waiter = asyncio.create_task(probe.changed())
        await asyncio.sleep(0.01)
        start = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        await waiter
        out.append(time.monotonic() - start)
        await proc.wait()
    return out


class _Null:
    """The bench loop's own cost: a probe that does nothing."""

    async def run(self, timeout: float) -> None:  # noqa: ASYNC109
        return None


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def load(probes: list[object], seconds: float, interval: float = 0.1) -> float:
    """CPU seconds per wall second spent running every probe once per ``interval``."""

    async def loop(probe: object, phase: float) -> None:
        await asyncio.sleep(phase)
        while True:
            await probe.run(1.0)  # type: ignore[attr-defined]
            await asyncio.sleep(interval)

    tasks = [asyncio.create_task(loop(p, interval * i / len(probes))) for i, p in enumerate(probes)]
    await asyncio.sleep(interval)  # warm up
    c0, t0 = cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    used = (cpu() - c0) / (time.monotonic() - t0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return used


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    few = listeners(10)
    ours, theirs = await asyncio.to_thread(time_dumps)  # pyroute2 wants no running loop
    print(f"dump, {len(few)} listeners: ours {ours * 1e3:.3f} ms, pyroute2 "
          f"{theirs * 1e3 if theirs else float('nan'):.3f} ms")  # fmt: skip
    many = listeners(990)
    ours, theirs = await asyncio.to_thread(time_dumps, 50)
    print(f"dump, {len(few) + len(many)} listeners: ours {ours * 1e3:.3f} ms, pyroute2 "
          f"{theirs * 1e3 if theirs else float('nan'):.3f} ms")  # fmt: skip

    lat = sorted(await exit_latencies(30))
    q = statistics.quantiles(lat, n=100)
    print(f"SIGKILL -> changed(), 30 runs: p50 {q[49] * 1e3:.2f} ms, p90 {q[89] * 1e3:.2f} ms, "
          f"p99 {q[98] * 1e3:.2f} ms, max {lat[-1] * 1e3:.2f} ms")  # fmt: skip

    ports = [s.getsockname()[1] for s in few + many]
    table = SocketTable()
    listen = [ListenProbe("127.0.0.1", p, table=table) for p in ports]
    tcp = [TcpProbe("127.0.0.1", p) for p in ports]
    idle = await load([_Null() for _ in ports], args.seconds)
    lc = await load(listen, args.seconds)
    print(
        f"1,000 listen checks at 100 ms: {lc * 100:.1f}% of a core "
        f"({table.dumps / (args.seconds + 0.1):.1f} dumps/s; a no-I/O probe: {idle * 100:.1f}%)"
    )
    tc = await load(tcp, args.seconds)
    print(f"1,000 TCP-connect checks at 100 ms: {tc * 100:.1f}% of a core")
    table.close()
    for s in few + many:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
