"""LinkWatcher against the real kernel, in a namespace the test creates and deletes.

Each test changes the namespace with ``ip`` (what an operator does) and waits, with a
deadline, for the reason it expects. "Not reported" is asserted only after a later positive
control event on the managed interface has arrived: events come in order on one socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from anycastd.actuators.linkwatch import LinkWatcher
from anycastd.actuators.loopback import NetlinkLoopback
from anycastd.errors import PermanentError
from anycastd.lab.netns import Netns, netns
from anycastd.model import AddAddress

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

DEADLINE = 5.0


class Reasons:
    """The ``on_change`` callback: records reasons and when they came."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.seen.append((time.monotonic(), reason))
        self._changed.set()

    @property
    def reasons(self) -> list[str]:
        return [reason for _t, reason in self.seen]

    async def wait_for(self, reason: str) -> float:
        """Wait until ``reason`` has been reported (up to DEADLINE); the time it came."""
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    for at, seen in self.seen:
                        if seen == reason:
                            return at
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{reason!r} not in {DEADLINE}s: {self.reasons}") from None


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns("lwatch") as created:
        yield created


async def ip(ns: Netns, *args: str) -> float:
    """Run ``ip ARGS`` in the namespace (off the loop); the monotonic time it returned."""
    await asyncio.to_thread(ns.exec, ["ip", *args])
    return time.monotonic()


@asynccontextmanager
async def watching(watcher: LinkWatcher, reasons: Reasons) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run(reasons))
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------------
# the scenarios of issue 8


async def test_operator_deleting_our_address_is_reported_at_once(ns: Netns) -> None:
    with NetlinkLoopback("lo", netns=ns.name) as lo:
        lo.apply([AddAddress(ipaddress.ip_interface("192.0.2.10/32"))])
    reasons = Reasons()
    async with watching(LinkWatcher("lo", netns=ns.name), reasons):
        before = time.monotonic()
        await ip(ns, "addr", "del", "192.0.2.10/32", "dev", "lo")
        at = await reasons.wait_for("address removed 192.0.2.10/32")
    # `ip` itself takes milliseconds to start; the kernel event follows its request at once.
    print(f"ip addr del -> on_change: {(at - before) * 1000:.1f} ms (includes running ip)")


async def test_foreign_address_added_is_reported(ns: Netns) -> None:
    reasons = Reasons()
    async with watching(LinkWatcher("lo", netns=ns.name), reasons):
        await ip(ns, "addr", "add", "192.0.2.20/32", "dev", "lo")
        await reasons.wait_for("address added 192.0.2.20/32 (foreign)")
        await ip(ns, "-6", "addr", "add", "2001:db8::20/128", "dev", "lo", "nodad")
        await reasons.wait_for("address added 2001:db8::20/128 (foreign)")


async def test_link_down_and_up_are_reported_and_observed(ns: Netns) -> None:
    reasons = Reasons()
    with NetlinkLoopback("lo", netns=ns.name) as lo:
        lo.apply([AddAddress(ipaddress.ip_interface("2001:db8::1/128"))])
        async with watching(LinkWatcher("lo", netns=ns.name), reasons):
            await ip(ns, "link", "set", "lo", "down")
            await reasons.wait_for("link down")
            # The kernel also deletes every IPv6 address of a down interface, ours included.
            await reasons.wait_for("address removed 2001:db8::1/128")
            assert lo.observe().up is False
            await ip(ns, "link", "set", "lo", "up")
            await reasons.wait_for("link up")
            assert lo.observe().up is True


async def test_events_of_another_interface_are_not_reported(ns: Netns) -> None:
    await ip(ns, "link", "add", "other0", "type", "bridge")
    reasons = Reasons()
    async with watching(LinkWatcher("lo", netns=ns.name), reasons):
        await ip(ns, "addr", "add", "192.0.2.40/32", "dev", "other0")
        await ip(ns, "link", "set", "other0", "up")
        await ip(ns, "link", "set", "other0", "down")
        await ip(ns, "link", "del", "other0")
        # Positive control on the managed interface, queued after all of the above.
        await ip(ns, "addr", "add", "192.0.2.41/32", "dev", "lo")
        await reasons.wait_for("address added 192.0.2.41/32 (foreign)")
    assert reasons.reasons == ["address added 192.0.2.41/32 (foreign)"]


async def test_deleted_and_recreated_interface_is_still_watched(ns: Netns) -> None:
    await ip(ns, "link", "add", "anyc0", "type", "bridge")
    watcher = LinkWatcher("anyc0", netns=ns.name)
    reasons = Reasons()
    async with watching(watcher, reasons):
        await ip(ns, "addr", "add", "192.0.2.50/32", "dev", "anyc0")
        await reasons.wait_for("address added 192.0.2.50/32 (foreign)")
        first = watcher.index
        await ip(ns, "link", "del", "anyc0")
        await reasons.wait_for("link deleted")
        await ip(ns, "link", "add", "anyc0", "type", "bridge")
        await reasons.wait_for(f"link appeared (index {watcher.index}, down)")
        assert watcher.index != first
        await ip(ns, "addr", "add", "192.0.2.51/32", "dev", "anyc0")
        await reasons.wait_for("address added 192.0.2.51/32 (foreign)")


async def test_interface_missing_at_start_is_picked_up_when_it_appears(ns: Netns) -> None:
    watcher = LinkWatcher("late0", netns=ns.name)
    reasons = Reasons()
    async with watching(watcher, reasons):
        await ip(ns, "link", "add", "late0", "type", "bridge")
        await reasons.wait_for(f"link appeared (index {watcher.index}, down)")
        await ip(ns, "link", "set", "late0", "up")
        await reasons.wait_for("link up")


# --------------------------------------------------------------------------------------------
# overrun, errors, lifecycle


async def test_overrun_is_reported_and_events_keep_coming(ns: Netns) -> None:
    # A tiny receive buffer and events queued before anyone reads: the kernel drops some.
    watcher = LinkWatcher("lo", netns=ns.name, rcvbuf=4096)
    with NetlinkLoopback("lo", netns=ns.name) as lo:
        base = ipaddress.IPv4Address("198.51.100.0")
        lo.apply([AddAddress(ipaddress.ip_interface(f"{base + i}/32")) for i in range(200)])
    reasons = Reasons()
    async with watching(watcher, reasons):
        await reasons.wait_for("netlink overrun")
        await ip(ns, "addr", "add", "192.0.2.60/32", "dev", "lo")
        await reasons.wait_for("address added 192.0.2.60/32 (foreign)")
        assert watcher.index == 1  # re-resolved after the overrun


async def test_cancel_closes_the_socket(ns: Netns) -> None:
    before = open_fds()
    watcher = LinkWatcher("lo", netns=ns.name)
    assert open_fds() != before
    async with watching(watcher, Reasons()):
        await asyncio.sleep(0)  # let run() register its reader
    assert open_fds() == before
    with pytest.raises(RuntimeError, match="after close"):
        await watcher.run(Reasons())


async def test_a_failing_callback_ends_run_with_its_error(ns: Netns) -> None:
    def explode(reason: str) -> None:
        raise ValueError(reason)

    before = open_fds()
    watcher = LinkWatcher("lo", netns=ns.name)
    task = asyncio.create_task(watcher.run(explode))
    await ip(ns, "addr", "add", "192.0.2.70/32", "dev", "lo")
    with pytest.raises(ValueError, match=r"192\.0\.2\.70/32"):
        async with asyncio.timeout(DEADLINE):
            await task
    assert open_fds() == before


def test_missing_namespace_is_permanent_and_never_created() -> None:
    name = "acdt-absent-lw"
    with pytest.raises(PermanentError, match="no such namespace"):
        LinkWatcher(netns=name)
    assert not os.path.exists(f"/run/netns/{name}")

