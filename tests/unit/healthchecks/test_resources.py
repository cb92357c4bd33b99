"""Probes that time out or fail leave nothing behind: no sockets, no pipes, no tasks."""

from __future__ import annotations

import asyncio
import os
import time

from healthchecks import (
    DnsProbe,
    ExecProbe,
    FileProbe,
    HttpProbe,
    Probe,
    Status,
    TcpProbe,
    TlsProbe,
)

from .conftest import eventually


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_timed_out_probes_release_every_descriptor(hang_port: int) -> None:
    probes: list[Probe] = [
        HttpProbe(f"http://127.0.0.1:{hang_port}/"),
        HttpProbe(f"https://127.0.0.1:{hang_port}/", verify=False),
        TlsProbe("127.0.0.1", hang_port, verify=False),
        DnsProbe("127.0.0.1", "x.test", port=hang_port, transport="tcp"),
        ExecProbe(("/bin/sleep", "30")),
    ]
    await asyncio.sleep(0)  # let fixtures settle their own descriptors
    before = _open_fds()
    start = time.monotonic()
    results = await asyncio.gather(*(p.run(0.3) for p in probes * 4))
    assert time.monotonic() - start < 1.0  # concurrent, each within timeout + slack
    assert {r.status for r in results} == {Status.TIMEOUT}
    # Closed transports release their fd on the next loop iterations.
    assert await eventually(lambda: _open_fds() <= before, within=1.0), (before, _open_fds())


async def test_zero_timeout_is_an_immediate_timeout(closed_port: int) -> None:
    for probe in (TcpProbe("127.0.0.1", closed_port), FileProbe("/")):
        result = await probe.run(0)
        assert result.status is Status.TIMEOUT
        assert result.latency < 0.1
