"""Kernel events for the managed interface: address and link changes, as they happen.

Rule: this module is the only reader of rtnetlink address and link events (RTMGRP_LINK,
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR). It writes nothing (the one request it sends is an
RTM_GETLINK) and decides nothing: it calls ``on_change(reason)`` and the controller runs a
full pass (observe, plan, act), so the reconcile timer is only the backstop.

Why: an ``ip addr del`` of an announced /32 left the prefix at a BIRD peer with no address
behind it for 27.2 s (reconcile_interval 30 s, issue 8). With the watcher the pass starts as
soon as the kernel tells us.

What it reports, for the managed interface only (matched by ifindex; other interfaces and
other families are ignored after parsing two headers):

* RTM_NEWADDR / RTM_DELADDR: ``"address added 192.0.2.10/32 (foreign)"``, ``"address removed
  2001:db8::1/128"``. RTM_NEWADDR also comes for a change of an existing address (flags,
  lifetimes): reported the same way.
* RTM_NEWLINK whose IFF_UP differs from the last one seen: ``"link up"`` / ``"link down"``.
  Other link changes (MTU, carrier, statistics) are not reported: the planner reads only
  IFF_UP, and carrier loss does not stop local delivery (measured, see loopback.py).
* The interface deleted (``"link deleted"``), renamed away (``"link renamed to 'x'"``), or
  one with our name appearing (``"link appeared (index N, up|down)"``): the index is
  re-resolved from IFLA_IFNAME on every RTM_NEWLINK, so a deleted and re-created interface
  is followed. Only AF_UNSPEC link messages count: AF_BRIDGE ones describe bridge ports
  (an AF_BRIDGE RTM_DELLINK means "left the bridge", not "deleted").
* ENOBUFS on the socket (the receive buffer overran: events were lost): ``"netlink
  overrun"``, and the index is resolved again with an RTM_GETLINK.

Our own writes come back too: every address anycastd adds or removes is one RTM_NEWADDR or
RTM_DELADDR here, i.e. one parse and one ``on_change`` per write, and (the controller
coalesces pokes) one extra pass after each apply; that pass is a converged one (observe and
plan, no writes). Measured in a netns on the 6.18 host: 10,000 queued address events are
read and reported in 76 ms (~7 µs each, on the event loop, in slices of DRAIN_LIMIT
datagrams); 20,000 fit the default receive buffer without an overrun. Not filtering them is
deliberate: an event cannot say whether it was ours or an operator's racing us, and a spare
converged pass is cheap next to a missed one.

Ordering argument for the index resolution: the RTM_GETLINK is sent at construction and
after an overrun, and the kernel answers it synchronously inside ``send``. Everything queued
ahead of the answer happened before the query was sent, hence before the pass that the
caller runs at start (construct the watcher before the first observe) or that the overrun
poke triggers; so address events are simply ignored while the index is unknown.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from anycastd.actuators.loopback import (
    _IFADDRMSG,
    _IFINFOMSG,
    _NLMSGERR,
    _NLMSGHDR,
    IFF_UP,
    IFLA_IFNAME,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    _align,
    _attr,
    _decode_address,
    _iter_attrs,
    _message,
)
from anycastd.actuators.netlink import RCVBUF, error_for, map_netlink_errors, open_rtnetlink

__all__ = ["ACTUATOR", "GROUPS", "LinkEventFilter", "LinkWatcher"]

ACTUATOR = "linkwatch"

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

#: Events are one message a datagram and small; this is room for any of them.
RECV_SIZE = 32 * 1024
#: Datagrams read per wake-up before yielding to the loop (it calls back while readable).
DRAIN_LIMIT = 256


class LinkEventFilter:
    """Pure: turns rtnetlink datagrams into reasons for the managed interface.

    ``portid`` is our socket's netlink port id: the answer to our RTM_GETLINK is told from
    events by (portid, seq) — events caused by other programs carry *their* port id and
    sequence numbers, which may equal ours. ``index``/``up`` are what the filter last
    learnt (None: unknown or absent).
    """

    def __init__(self, interface: str, portid: int) -> None:
        self.interface = interface
        self.portid = portid
        self.index: int | None = None
        self.up: bool | None = None
        self._name = interface.encode()
        self._query_seq: int | None = None

    def expect_reply(self, seq: int) -> None:
        """An RTM_GETLINK by name with ``seq`` was sent; its answer sets index and up."""
        self._query_seq = seq

    def feed(self, data: bytes) -> list[str]:
        """The reasons (possibly none) in one datagram; updates index and up."""
        reasons: list[str] = []
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                break  # truncated: nothing after it can be trusted
            start, end = offset + _NLMSGHDR.size, offset + length
            offset += _align(length)
            if self._query_seq is not None and pid == self.portid and seq == self._query_seq:
                self._reply(kind, data, start, end)
            elif kind in (RTM_NEWADDR, RTM_DELADDR):
                reason = self._address(kind, data, start, end)
                if reason is not None:
                    reasons.append(reason)
            elif kind in (RTM_NEWLINK, RTM_DELLINK):
                reason = self._link(kind, data, start, end)
                if reason is not None:
                    reasons.append(reason)
        return reasons

    # -- per message

    def _reply(self, kind: int, data: bytes, start: int, end: int) -> None:
        # Silent on purpose: a query is sent only at start and after an overrun, and both
        # already make the caller run a full pass.
        self._query_seq = None
        if kind == RTM_NEWLINK and end - start >= _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, start)
            self.index, self.up = int(index), bool(flags & IFF_UP)
        elif kind == NLMSG_ERROR and end - start >= _NLMSGERR.size:
            (code,) = _NLMSGERR.unpack_from(data, start)
            if -code == errno.ENODEV:
                self.index, self.up = None, None  # absent for now: RTM_NEWLINK will say
            elif code != 0:
                raise error_for(ACTUATOR, code, f"interface {self.interface!r}")

    def _address(self, kind: int, data: bytes, start: int, end: int) -> str | None:
        if self.index is None or end - start < _IFADDRMSG.size:
            return None
        address = _decode_address(data, start, end, self.index)
        if address is None:
            return None  # another interface (or no address attribute)
        return f"address {'added' if kind == RTM_NEWADDR else 'removed'} {address}"

    def _link(self, kind: int, data: bytes, start: int, end: int) -> str | None:
        if end - start < _IFINFOMSG.size:
            return None
        family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, start)
        if family != socket.AF_UNSPEC:
            return None
        up = bool(flags & IFF_UP)
        if kind == RTM_DELLINK:
            if index != self.index:
                return None
            self.index, self.up = None, None
            return "link deleted"
        name = _ifname(data, start + _IFINFOMSG.size, end)
        if name == self._name or (name is None and index == self.index):
            if index != self.index:
                self.index, self.up = int(index), up
                return f"link appeared (index {index}, {'up' if up else 'down'})"
            if up != self.up:
                self.up = up
                return "link up" if up else "link down"
            return None
        if index == self.index:
            self.index, self.up = None, None
            return f"link renamed to {(name or b'').decode(errors='replace')!r}"
        return None


def _ifname(data: bytes, offset: int, end: int) -> bytes | None:
    for kind, a, b in _iter_attrs(data, offset, end):
        if kind == IFLA_IFNAME:
            return bytes(data[a:b]).split(b"\0", 1)[0]
    return None


class LinkWatcher:
    """Calls ``on_change(reason)`` for each address or link event of ``interface``.

    ``netns`` as for ``NetlinkLoopback``. ``rcvbuf`` is the socket's receive buffer: the
    default holds a 20,000-address burst (measured); tests shrink it to provoke an overrun.
    The socket is opened and subscribed at construction (a missing namespace raises
    PermanentError), so events from then on are delivered once ``run`` reads them: construct
    the watcher before the first observe.
    ``run`` may be called once; it closes the socket when it ends. ``close`` is for a
    watcher that never ran.
    """

    def __init__(
        self, interface: str = "lo", *, netns: str | None = None, rcvbuf: int = RCVBUF
    ) -> None:
        self.interface = interface
        self.netns = netns
        self._seq = 0
        self._sock = open_rtnetlink(ACTUATOR, netns, groups=GROUPS, rcvbuf=rcvbuf)
        try:
            self._sock.setblocking(False)
            portid, _groups = self._sock.getsockname()
            self._filter = LinkEventFilter(interface, int(portid))
            self._resolve()
        except BaseException:
            self._sock.close()
            raise

    @property
    def index(self) -> int | None:
        """The managed interface's ifindex as last learnt (None: unknown or absent)."""
        return self._filter.index

    def close(self) -> None:
        self._sock.close()

    async def run(self, on_change: Callable[[str], None]) -> None:
        """Read events until cancelled (then re-raise); no thread, no polling.

        Raises a mapped ActuatorError if the socket fails, and whatever ``on_change``
        raises. The socket is closed on every exit.
        """
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        if fd < 0:
            raise RuntimeError("LinkWatcher.run after close")
        failed: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                self._drain(on_change)
            except Exception as exc:
                # Out of the loop's callback and into run(), where the TaskGroup sees it.
                loop.remove_reader(fd)
                if not failed.done():
                    failed.set_exception(exc)

        loop.add_reader(fd, readable)
        try:
            await failed
        finally:
            loop.remove_reader(fd)
            self.close()

    def _drain(self, on_change: Callable[[str], None]) -> None:
        for _ in range(DRAIN_LIMIT):
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise error_for(ACTUATOR, exc.errno or errno.EIO, "receive") from exc
                # The kernel dropped events (reported once per overrun); the socket is fine.
                on_change("netlink overrun")
                self._resolve()
                continue
            for reason in self._filter.feed(data):
                on_change(reason)

    def _resolve(self) -> None:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
            IFLA_IFNAME, self.interface.encode() + b"\0"
        )
        self._filter.expect_reply(self._seq)
        with map_netlink_errors(ACTUATOR, f"query interface {self.interface!r}"):
            self._sock.send(_message(RTM_GETLINK, NLM_F_REQUEST, self._seq, body))
