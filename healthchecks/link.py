"""Link probe: OK when an interface is administratively up and operationally up.

Rule (what "up" means): the interface exists, IFF_UP is set (``ip link set X up``) and its
operstate (IFLA_OPERSTATE, RFC 2863) is UP - or UNKNOWN. UNKNOWN is what the kernel reports
for a device whose driver never signals carrier (``lo``, some tun/virtual devices): the
kernel then assumes the carrier is present, so UNKNOWN with IFF_UP passes traffic and
counts as up. DOWN, LOWERLAYERDOWN (a veth whose peer is down, a bond with no slave),
DORMANT, TESTING and NOTPRESENT fail. A missing interface fails.

``run()`` is one RTM_GETLINK for the name (a worker thread: the netlink socket is blocking).
``changed()`` subscribes to RTNLGRP_LINK and returns on the first RTM_NEWLINK/RTM_DELLINK of
this interface whose (present, IFF_UP, operstate) differs from what the last ``run()``
observed; it also returns on a netlink overrun (events were lost, so the state is unknown).
It queries the state once *after* subscribing, so a change between the last run and the
subscription is not missed. Its socket lives only while it waits (closed on return and on
cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from dataclasses import dataclass, field

from healthchecks import _netlink as nl
from healthchecks._base import Stage, guarded
from healthchecks.result import ProbeResult, Status

__all__ = ["LinkProbe", "LinkState", "parse_link"]

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTMGRP_LINK = 1
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFNAMSIZ = 16

OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_PASSING = frozenset({"UP", "UNKNOWN"})


@dataclass(frozen=True, slots=True)
class LinkState:
    """What decides the verdict; ``index`` is kept to follow renames, not compared."""

    present: bool
    up: bool = False
    operstate: str = "NOTPRESENT"
    index: int = field(default=0, compare=False)

    @property
    def passing(self) -> bool:
        return self.present and self.up and self.operstate in _PASSING


ABSENT = LinkState(present=False)


def parse_link(msg_type: int, payload: memoryview | bytes) -> tuple[str, LinkState]:
    """``(ifname, state)`` from an RTM_NEWLINK/RTM_DELLINK payload (ifinfomsg + attrs)."""
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    found = nl.attrs(memoryview(payload)[_IFINFOMSG.size :])
    raw_name = found.get(IFLA_IFNAME)
    name = bytes(raw_name).split(b"\0", 1)[0].decode(errors="replace") if raw_name else ""
    if msg_type == RTM_DELLINK:
        return name, LinkState(present=False, index=index)
    raw_oper = found.get(IFLA_OPERSTATE)
    oper = raw_oper[0] if raw_oper is not None and len(raw_oper) else 0
    operstate = OPERSTATES[oper] if oper < len(OPERSTATES) else f"OPERSTATE{oper}"
    return name, LinkState(True, bool(flags & IFF_UP), operstate, index)


def verdict(interface: str, state: LinkState) -> tuple[Status, str]:
    if not state.present:
        return Status.FAIL, f"no interface {interface}"
    if not state.up:
        return Status.FAIL, f"{interface} is administratively down"
    if state.operstate not in _PASSING:
        return Status.FAIL, f"{interface} operstate {state.operstate}"
    return Status.OK, f"{interface} up (operstate {state.operstate})"


def _query(interface: str, netns: str | None) -> LinkState:
    """One RTM_GETLINK by name on a fresh socket (blocking: call from a thread)."""
    req = nl.Requester(nl.open_socket(nl.NETLINK_ROUTE, netns=netns))
    try:
        payload = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nl.pack_attr(
            IFLA_IFNAME, interface.encode() + b"\0"
        )
        try:
            replies = req.request(RTM_GETLINK, 0, payload)
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return ABSENT
            raise
    finally:
        req.close()
    for msg_type, body in replies:
        if msg_type == RTM_NEWLINK:
            return parse_link(msg_type, body)[1]
    return ABSENT


class _Memo:
    """The mutable side of a frozen probe: what the last run saw (for ``changed``)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: LinkState | None = None


@dataclass(frozen=True, slots=True)
class LinkProbe:
    interface: str
    netns: str | None = None  # a name under /run/netns, or a path; None: our own namespace
    _memo: _Memo = field(default_factory=_Memo, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.interface or len(self.interface) >= IFNAMSIZ or "/" in self.interface:
            raise ValueError(f"invalid interface name {self.interface!r}")

    def describe(self) -> str:
        where = f" (netns {self.netns})" if self.netns else ""
        return f"link {self.interface}{where}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        stage.name = "RTM_GETLINK"
        state = await asyncio.to_thread(_query, self.interface, self.netns)
        self._memo.last = state
        return verdict(self.interface, state)

    async def changed(self) -> None:
        """Return once a link event says the next run() may answer differently."""
        loop = asyncio.get_running_loop()
        sock = await asyncio.to_thread(
            nl.open_socket, nl.NETLINK_ROUTE, groups=RTMGRP_LINK, netns=self.netns
        )
        fd = sock.fileno()
        try:
            sock.setblocking(False)
            # Subscribed first, then read the state: no change can fall between the two.
            current = await asyncio.to_thread(_query, self.interface, self.netns)
            baseline = self._memo.last if self._memo.last is not None else current
            if current != baseline:
                return
            index = current.index or baseline.index
            while True:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                for state in _drain(sock, self.interface, index):
                    if state is None or state != baseline:
                        return
                    index = state.index or index
        finally:
            sock.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _drain(sock: socket.socket, interface: str, index: int) -> list[LinkState | None]:
    """States of ``interface`` in the queued events; None stands for an overrun."""
    seen: list[LinkState | None] = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return seen
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped events: state unknown
                seen.append(None)
                continue
            raise
        for msg_type, _flags, _seq, body in nl.messages(data):
            if msg_type not in (RTM_NEWLINK, RTM_DELLINK):
                continue
            with contextlib.suppress(struct.error):
                name, state = parse_link(msg_type, body)
                if name == interface:
                    seen.append(state)
                elif index and state.index == index:  # renamed away: gone for us
                    seen.append(LinkState(present=False, index=index))
