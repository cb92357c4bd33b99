"""The loopback address actuator: anycast /32 and /128 addresses on ``lo``.

Rule: the only writer of anycastd's addresses (netlink). ``NetlinkLoopback.observe``/``apply``
do the netlink I/O, synchronously, on one rtnetlink socket that lives as long as the actuator
(``close()`` or ``with``). The values are in :mod:`anycastd.model`; the pure diff is
:func:`anycastd.core.addresses.diff_addresses`.

Ownership marking — how anycastd tells its addresses from an operator's
------------------------------------------------------------------------
Every address anycastd adds carries ``IFA_PROTO = OWNER_PROTO`` (0xac), the address
"protocol" attribute (Linux >= 5.18). It is the only mark we trust, for both families:

* IPv4 address labels (``lo:acd``) were the classic choice, but IPv6 has no labels, a label
  by convention starts with the interface name and must fit in 15 characters (so a long
  ``interface`` name leaves no room), and operators use labels themselves.
* IFA_PROTO exists for exactly this ("who installed this address"), works for IPv4 and IPv6,
  survives a restart of anycastd (it lives in the kernel, so a new process adopts what it
  finds without a state file, so none is kept), and our private value is not one the
  kernel uses: 0 (unspec: ``ip addr add``, NetworkManager, ifupdown), 1 (kernel_lo,
  ``::1``), 2 (kernel_ra), 3 (kernel_ll).
* Measured on the 6.18 host kernel in a netns: ``RTM_NEWADDR`` with ``IFA_PROTO=0xac`` is
  echoed back by a dump for IPv4 and IPv6 (tests/integration/test_loopback.py pins it); an
  address added with ``ip addr add`` (iproute2 6.1 cannot set a protocol) has none. On a
  kernel older than 5.18 the attribute would be dropped silently and our own addresses
  would look foreign (safe: never removed, reported as conflicts, but never converging), so
  ``NetlinkLoopback`` refuses to start there.
* The kernel matches RTM_DELADDR by address and prefix length only (measured: it ignores
  IFA_PROTO there), so the mark is checked by ``diff_addresses`` on a fresh ``observe``: an operator
  who re-adds the very same address between our observe and our apply can lose it. That
  window is one reconcile pass; nothing narrower is offered by the kernel.

IPv4 addresses also get the label ``<interface>:acd`` when it fits, as a hint for operators
(``ip addr show label lo:acd``; iproute2 6.1 does not print IFA_PROTO). The label is never
used to decide ownership: an operator's address labelled ``lo:acd`` is still foreign.

A foreign address (same IP, no mark) is never removed nor claimed: ``diff_addresses`` makes
no action for it and ``conflicts`` reports it. IPv6 addresses are added with IFA_F_NODAD so they are
usable at once.

Every address is added with IFA_F_NOPREFIXROUTE: the kernel then installs only the local
route (table local) that delivers the address to this host, not a prefix route in the main
table. For a /32 or /128 that prefix route is a useless duplicate, and measured on 6.18 it
makes removing IPv6 addresses twice as slow (3,000 removals: 1.55 s with it, 0.66 s
without); for a wider prefix it would wrongly make the whole prefix local.

Link down — what the kernel does (measured on the 6.18 host, in namespaces)
---------------------------------------------------------------------------
``ip link set IF down`` (IFF_UP cleared), for IF = ``lo``, a bridge and a veth alike, with a
/32 and a /128 on it and a client in a second namespace routing both to it over a veth:

* IPv4 addresses stay, and so does their ``local`` route in table local. Traffic from the
  other namespace to the /32 is still accepted (the input path looks only at table local).
  Traffic from the host itself to it is dropped when IF is ``lo`` (local delivery is
  transmitted over ``lo``: 127.0.0.1 stops answering too), and still works for a bridge or
  veth.
* IPv6 addresses are deleted, ours included (an RTM_DELADDR each; on ``lo`` also ``::1``),
  with their local routes: no IPv6 traffic at all. ``ip link set IF up`` does NOT bring them
  back (only the kernel's ``::1`` on ``lo`` and link-local addresses reappear), so the next
  pass re-adds ours. The kernel accepts an IPv6 address on a down interface (we can add it
  back while down) and keeps it through the up. With ``net.ipv6.conf.IF.keep_addr_on_down=1``
  the IPv6 addresses stay listed but their local routes are gone while down (traffic fails),
  and come back on up.
* Carrier loss (veth peer down: IFF_UP still set, no LOWER_UP) changes nothing: both
  families keep their addresses and routes and accept traffic. Only IFF_UP matters, so that
  is what ``LoopbackObserved.up`` reports.

Why a raw rtnetlink codec instead of ``IPRoute.addr``
------------------------------------------------------
Measured in a netns on the 6.18 host: pyroute2 0.9.7 ``IPRoute.addr("add")`` costs ~315 µs
a call (3.2 s for 10,000 addresses) and parsing a 10,000-address dump ~0.5 s, which misses
the targets (10k from empty < 2 s, converged pass < 0.5 s); ``nlm_request_batch`` hung on a
3,000-message batch. So the address messages are packed and parsed here with ``struct``
(three message types, a handful of attributes), batched many per ``send``; pyroute2 still
provides the namespace-aware socket (``pyroute2.netns.create_socket``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Protocol

from anycastd.actuators.netlink import error_for, map_netlink_errors, open_rtnetlink
from anycastd.errors import ActuatorError, PermanentError, TransientError
from anycastd.model import (
    AddAddress,
    Address,
    AddressAction,
    HostAddress,
    IPAddress,
    LoopbackObserved,
)

__all__ = [
    "ACTUATOR",
    "OWNER_PROTO",
    "LoopbackActuator",
    "NetlinkLoopback",
    "owner_label",
    "raise_batch_failures",
]

ACTUATOR = "loopback"

#: IFA_PROTO value marking anycastd's addresses (private: the kernel uses 0..3).
OWNER_PROTO = 0xAC

#: Suffix of the IPv4 label hint (``lo:acd``); not an ownership mark.
LABEL_SUFFIX = ":acd"


# --------------------------------------------------------------------------------------------
# The Protocol (the pure diff is anycastd.core.addresses.diff_addresses)


def owner_label(interface: str) -> str | None:
    """The IPv4 label hint for ``interface``, or None when it does not fit in 15 chars."""
    label = f"{interface}{LABEL_SUFFIX}"
    return label if len(label) <= 15 else None


class LoopbackActuator(Protocol):
    """What the controller needs; ``NetlinkLoopback`` and ``memory.MemoryLoopback`` do it."""

    @property
    def writes(self) -> int:
        """Netlink write requests sent so far (successful or not)."""
        ...

    def observe(self) -> LoopbackObserved: ...

    def apply(self, actions: Sequence[AddressAction]) -> None: ...


def raise_batch_failures(failures: Sequence[ActuatorError]) -> None:
    """The end of a batch whose every action was attempted: raise the first failure (a
    PermanentError if any failure was permanent), counting the others; nothing if none.
    Shared with the in-memory twin (``actuators.memory.MemoryLoopback``)."""
    if failures:
        permanent = [f for f in failures if not f.transient]
        first = (permanent or failures)[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise type(first)(ACTUATOR, f"{first.message}{more}")


# --------------------------------------------------------------------------------------------
# rtnetlink wire format (only what this actuator needs)

NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

IFLA_IFNAME = 3
IFF_UP = 0x1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_PROTO = 11
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200  # only in the IFA_FLAGS attribute (ifa_flags is 8 bits)
RT_SCOPE_UNIVERSE = 0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")

#: Requests per ``send``: the kernel answers each with an ACK and drops ACKs that do not fit
#: the receive buffer, so a batch is sent, then its ACKs read, then the next.
BATCH = 256
DUMP_RETRIES = 3


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _iter_attrs(data: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) for each attribute in data[offset:end]."""
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            return
        yield kind & 0x3FFF, offset + _NLATTR.size, offset + length
        offset += _align(length)


def _iter_messages(data: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body start, message end) for each message in a datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        yield kind, flags, seq, offset + _NLMSGHDR.size, offset + length
        offset += _align(length)


def _encode_address(
    kind: int, flags: int, seq: int, index: int, address: HostAddress, *, label: str | None
) -> bytes:
    packed = address.ip.packed
    if address.version == 4:
        family, ifa_flags = socket.AF_INET, 0
        attrs = _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if label is not None and kind == RTM_NEWADDR:
            attrs += _attr(IFA_LABEL, label.encode() + b"\0")
    else:
        family, ifa_flags = socket.AF_INET6, IFA_F_NODAD
        attrs = _attr(IFA_ADDRESS, packed)
    if kind == RTM_NEWADDR:
        attrs += _attr(IFA_FLAGS, struct.pack("=I", ifa_flags | IFA_F_NOPREFIXROUTE))
        attrs += _attr(IFA_PROTO, struct.pack("=B", OWNER_PROTO))
    prefixlen = address.network.prefixlen
    body = _IFADDRMSG.pack(family, prefixlen, ifa_flags, RT_SCOPE_UNIVERSE, index) + attrs
    return _message(kind, flags, seq, body)


def _decode_address(data: bytes, start: int, end: int, index: int) -> Address | None:
    family, prefixlen, _flags, _scope, ifindex = _IFADDRMSG.unpack_from(data, start)
    if ifindex != index or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    local: bytes | None = None
    address: bytes | None = None
    proto = 0
    for kind, a, b in _iter_attrs(data, start + _IFADDRMSG.size, end):
        if kind == IFA_LOCAL:
            local = data[a:b]
        elif kind == IFA_ADDRESS:
            address = data[a:b]
        elif kind == IFA_PROTO and b > a:
            proto = data[a]
    raw = local if local is not None else address
    if raw is None:
        return None
    ip: IPAddress = (
        ipaddress.IPv4Address(raw) if family == socket.AF_INET else ipaddress.IPv6Address(raw)
    )
    return Address(ip=ip, prefixlen=prefixlen, owned=proto == OWNER_PROTO)


def _kernel_supports_ifa_proto(release: str) -> bool:
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        return True  # an unparseable custom version string: assume a modern kernel
    return (major, minor) >= (5, 18)


# --------------------------------------------------------------------------------------------
# The real actuator


class NetlinkLoopback:
    """Anycast addresses on ``interface`` through rtnetlink.

    ``netns`` names a network namespace (``ip netns`` name or a path); None is the current
    one. The socket is opened at construction and closed by ``close()``; a missing
    namespace raises PermanentError (it is never created). ``writes`` counts netlink write
    requests sent (successful or not).

    Blocking and not thread-safe: one caller at a time (an asyncio controller runs it with
    ``asyncio.to_thread``; 10,000 adds take seconds of kernel time, see bench/).
    """

    def __init__(
        self, interface: str = "lo", *, netns: str | None = None, kernel_release: str | None = None
    ) -> None:
        release = kernel_release if kernel_release is not None else os.uname().release
        if not _kernel_supports_ifa_proto(release):
            raise PermanentError(
                ACTUATOR, f"kernel {release} lacks IFA_PROTO (needs >= 5.18) to mark addresses"
            )
        self.interface = interface
        self.netns = netns
        self.label = owner_label(interface)
        self._writes = 0
        self._seq = 0
        self._sock = self._open(netns)

    @property
    def writes(self) -> int:
        return self._writes

    # -- lifecycle

    @staticmethod
    def _open(netns: str | None) -> socket.socket:
        return open_rtnetlink(ACTUATOR, netns)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkLoopback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the Protocol

    def observe(self) -> LoopbackObserved:
        """Read every address on the interface (ours are those marked with OWNER_PROTO) and
        whether it is up."""
        index, up = self._link()
        for _attempt in range(DUMP_RETRIES):
            addresses, interrupted = self._dump_addresses(index)
            if not interrupted:
                return LoopbackObserved(self.interface, frozenset(addresses), up=up)
        raise TransientError(ACTUATOR, "address dump kept being interrupted by changes")

    def apply(self, actions: Sequence[AddressAction]) -> None:
        """Send ``actions`` in batches. Idempotent: adding an address that exists (EEXIST)
        and removing one that is gone (EADDRNOTAVAIL/ENOENT) count as done.

        Every action is attempted even when some fail; then the first failure is raised
        (a PermanentError if any failure was permanent). What failed stays as drift for
        the next pass.
        """
        if not actions:
            return
        index, _up = self._link()
        failures: list[ActuatorError] = []
        for chunk_start in range(0, len(actions), BATCH):
            chunk = actions[chunk_start : chunk_start + BATCH]
            failures.extend(self._apply_chunk(index, chunk))
        raise_batch_failures(failures)

    # -- netlink I/O

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _send(self, data: bytes) -> None:
        with map_netlink_errors(ACTUATOR, "send"):
            self._sock.send(data)

    def _recv(self) -> bytes:
        with map_netlink_errors(ACTUATOR, "receive"):
            return self._sock.recv(1 << 20)

    def _link(self) -> tuple[int, bool]:
        """The interface's (index, IFF_UP), one RTM_GETLINK."""
        seq = self._next_seq()
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(
            IFLA_IFNAME, self.interface.encode() + b"\0"
        )
        self._send(_message(RTM_GETLINK, NLM_F_REQUEST, seq, body))
        while True:
            data = self._recv()
            for kind, _flags, mseq, start, _end in _iter_messages(data):
                if mseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(data, start)
                    if code == 0:
                        continue
                    raise error_for(ACTUATOR, code, f"interface {self.interface!r}")
                if kind == RTM_NEWLINK:
                    _family, _type, index, flags, _c = _IFINFOMSG.unpack_from(data, start)
                    return int(index), bool(flags & IFF_UP)

    def _dump_addresses(self, index: int) -> tuple[list[Address], bool]:
        seq = self._next_seq()
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index)
        self._send(_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        addresses: list[Address] = []
        interrupted = False
        while True:
            data = self._recv()
            for kind, flags, mseq, start, end in _iter_messages(data):
                if mseq != seq:
                    continue  # a stale answer from an earlier, abandoned request
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == NLMSG_DONE:
                    return addresses, interrupted
                if kind == NLMSG_ERROR:
                    (code,) = _NLMSGERR.unpack_from(data, start)
                    raise error_for(ACTUATOR, code, "dump addresses")
                if kind == RTM_NEWADDR:
                    address = _decode_address(data, start, end, index)
                    if address is not None:
                        addresses.append(address)

    def _apply_chunk(self, index: int, chunk: Sequence[AddressAction]) -> list[ActuatorError]:
        pending: dict[int, AddressAction] = {}
        parts: list[bytes] = []
        for action in chunk:
            seq = self._next_seq()
            if isinstance(action, AddAddress):
                flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
                parts.append(
                    _encode_address(
                        RTM_NEWADDR, flags, seq, index, action.address, label=self.label
                    )
                )
            else:
                flags = NLM_F_REQUEST | NLM_F_ACK
                parts.append(
                    _encode_address(RTM_DELADDR, flags, seq, index, action.address, label=None)
                )
            pending[seq] = action
        self._writes += len(parts)
        self._send(b"".join(parts))
        failures: list[ActuatorError] = []
        while pending:
            data = self._recv()
            for kind, _flags, seq, start, _end in _iter_messages(data):
                if kind != NLMSG_ERROR or seq not in pending:
                    continue
                action = pending.pop(seq)
                (code,) = _NLMSGERR.unpack_from(data, start)
                if code == 0 or _benign(action, -code):
                    continue
                failures.append(error_for(ACTUATOR, code, str(action)))
        return failures


def _benign(action: AddressAction, code: int) -> bool:
    if isinstance(action, AddAddress):
        # Already there. If it is there *without* our mark (an operator raced us), the next
        # observe reports it as a conflict; we never claim it.
        return code == errno.EEXIST
    return code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH)

