"""process, listen and link probes against the real kernel, as root, in namespaces the
tests create (and delete in teardown, even on failure).

Event latencies are measured from just before the kernel action to the moment changed()
returned, waited for with a generous deadline first, then asserted under 100 ms.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.lab.netns import Netns, netns
from healthchecks import LinkProbe, ListenProbe, ProcessProbe, Status
from healthchecks.listen import SocketTable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

DEADLINE = 5.0
EVENT_BUDGET = 0.1


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns("evprob") as created:
        yield created


async def ip(ns: Netns, *args: str) -> None:
    await asyncio.to_thread(ns.exec, ["ip", *args])


def sleeper(tag: str) -> tuple[str, ...]:
    # A unique argv, so no other process on the machine can match it.
    return (sys.executable, "-c", "import time; time.sleep(60)", tag)


async def start(argv: tuple[str, ...]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*argv)
    # exec() has replaced the forked child's argv once /proc shows it
    deadline = time.monotonic() + DEADLINE
    while True:
        raw = await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_bytes)
        if raw.split(b"\0")[:-1] == [a.encode() for a in argv]:
            return proc
        assert time.monotonic() < deadline, "child never showed its argv"
        await asyncio.sleep(0.005)


async def timed_changed(waiter: asyncio.Task[None], since: float) -> float:
    await asyncio.wait_for(waiter, DEADLINE)
    return time.monotonic() - since


# ---- process --------------------------------------------------------------------------------


async def test_process_exit_is_seen_at_once_and_a_restart_is_reacquired() -> None:
    argv = sleeper(f"evprob-{os.getpid()}-{time.monotonic_ns()}")
    probe = ProcessProbe(cmdline=argv)
    first = await start(argv)
    try:
        assert (await probe.run(1.0)).status is Status.OK
        assert probe.pid == first.pid
        waiter = asyncio.create_task(probe.changed())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        killed_at = time.monotonic()
        os.kill(first.pid, signal.SIGKILL)
        latency = await timed_changed(waiter, killed_at)
        print(f"SIGKILL -> changed(): {latency * 1000:.2f} ms")
        assert latency < EVENT_BUDGET
        result = await probe.run(1.0)
        assert result.status is Status.FAIL
        assert result.reason == f"no process matches cmdline {list(argv)}"
    finally:
        if first.returncode is None:
            first.kill()
        await first.wait()
    waiter = asyncio.create_task(probe.changed())  # nothing held: waits for a run()
    second = await start(argv)
    try:
        assert (await probe.run(1.0)).status is Status.OK
        assert probe.pid == second.pid
        await asyncio.sleep(0.02)
        assert not waiter.done()  # watching the new process now
        os.kill(second.pid, signal.SIGKILL)
        await asyncio.wait_for(waiter, DEADLINE)
    finally:
        if second.returncode is None:
            second.kill()
        await second.wait()


# ---- listen ---------------------------------------------------------------------------------


async def test_listen_tcp_and_udp_on_loopback_then_closed() -> None:
    table = SocketTable()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        udp.bind(("127.0.0.1", 0))
        probes = [
            ListenProbe("127.0.0.1", tcp.getsockname()[1], "tcp", table=table),
            ListenProbe("127.0.0.1", udp.getsockname()[1], "udp", table=table),
        ]
        assert [(await p.run(1.0)).status for p in probes] == [Status.OK, Status.OK]
    finally:
        tcp.close()
        udp.close()
    await asyncio.sleep(table.ttl * 2)
    assert [(await p.run(1.0)).status for p in probes] == [Status.FAIL, Status.FAIL]
    table.close()


async def test_a_listener_in_another_namespace_does_not_count(ns: Netns) -> None:
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
    )
    server = ns.popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(await asyncio.to_thread(server.stdout.readline))
    table = SocketTable()
    here = await ListenProbe("127.0.0.1", port, table=table).run(1.0)
    there = await ListenProbe("127.0.0.1", port, netns=ns.name, table=table).run(1.0)
    table.close()
    assert here.status is Status.FAIL, here
    assert there.status is Status.OK, there


# ---- link -----------------------------------------------------------------------------------


async def test_link_down_is_an_event_and_up_recovers(ns: Netns) -> None:
    await ip(ns, "link", "add", "evp0", "type", "veth", "peer", "name", "evp1")
    await ip(ns, "link", "set", "evp1", "up")
    probe = LinkProbe("evp0", netns=ns.name)
    result = await probe.run(1.0)
    assert (result.status, result.reason) == (Status.FAIL, "evp0 is administratively down")
    await ip(ns, "link", "set", "evp0", "up")
    assert (await probe.run(1.0)).status is Status.OK

    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.1)  # subscribed
    assert not waiter.done()
    before = time.monotonic()
    await ip(ns, "link", "set", "evp0", "down")
    latency = await timed_changed(waiter, before)
    print(f"ip link set down -> changed(): {latency * 1000:.2f} ms (includes running ip)")
    assert (await probe.run(1.0)).status is Status.FAIL

    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.1)
    await ip(ns, "link", "set", "evp0", "up")
    await asyncio.wait_for(waiter, DEADLINE)
    assert (await probe.run(1.0)).status is Status.OK


async def test_peer_down_is_lowerlayerdown_and_a_deleted_link_is_an_event(ns: Netns) -> None:
    await ip(ns, "link", "add", "evp2", "type", "veth", "peer", "name", "evp3")
    await ip(ns, "link", "set", "evp2", "up")
    probe = LinkProbe("evp2", netns=ns.name)
    result = await probe.run(1.0)  # the peer is down: no carrier
    assert (result.status, result.reason) == (Status.FAIL, "evp2 operstate LOWERLAYERDOWN")
    await ip(ns, "link", "set", "evp3", "up")
    waiter = asyncio.create_task(probe.changed())
    # The change may land before changed() subscribed: it re-reads the state after
    # subscribing, so it returns either way.
    await asyncio.wait_for(waiter, DEADLINE)
    assert (await probe.run(1.0)).status is Status.OK
    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.1)
    await ip(ns, "link", "del", "evp2")
    await asyncio.wait_for(waiter, DEADLINE)
    result = await probe.run(1.0)
    assert (result.status, result.reason) == (Status.FAIL, "no interface evp2")


async def test_events_of_other_interfaces_do_not_wake_changed(ns: Netns) -> None:
    await ip(ns, "link", "add", "evp4", "type", "bridge")
    await ip(ns, "link", "add", "evp5", "type", "bridge")
    probe = LinkProbe("evp4", netns=ns.name)
    await probe.run(1.0)
    before = len(os.listdir("/proc/self/fd"))
    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.1)
    await ip(ns, "link", "set", "evp5", "up")
    await ip(ns, "link", "set", "evp4", "mtu", "1400")  # an event, same up/operstate
    await asyncio.sleep(0.2)
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(os.listdir("/proc/self/fd")) == before  # the subscription socket is closed
