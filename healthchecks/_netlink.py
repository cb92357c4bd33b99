"""A minimal private netlink client for the probes: framing, attributes, one-shot requests.

Rule: pure framing functions (``messages``, ``attrs``) never do I/O, so tests feed them
handcrafted bytes; the socket functions are blocking and meant for a worker thread (a dump
from the local kernel answers in microseconds to a few milliseconds). Nothing here imports
pyroute2: the probes need a handful of structs, and parsing them with ``struct`` is ~10x
faster than a general decoder (it matters for a 1,000-socket sock_diag dump).

Network namespaces: a socket belongs to the namespace it was created in, for its whole life.
``open_socket(..., netns=NAME)`` creates it inside ``/run/netns/NAME`` from a throwaway
thread that joins that namespace (setns affects only the calling thread), so no thread of
the caller ever changes namespace.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import socket
import struct
import threading
from collections.abc import Iterator

NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")  # len, type
_CLONE_NEWNET = 0x40000000
_NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno set)."""


def align(n: int) -> int:
    return (n + 3) & ~3


def pack_message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def pack_attr(attr_type: int, value: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(value), attr_type) + value
    return raw + b"\0" * (align(len(raw)) - len(raw))


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """``(type, flags, seq, payload)`` of each netlink message in one datagram."""
    view = memoryview(data)
    offset = 0
    size = _NLMSGHDR.size
    while offset + size <= len(view):
        length, msg_type, flags, seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < size or offset + length > len(view):
            return  # truncated: never read past the datagram
        yield msg_type, flags, seq, view[offset + size : offset + length]
        offset += align(length)


def attrs(data: memoryview | bytes) -> dict[int, memoryview]:
    """Top-level attributes of a payload region (first occurrence of each type wins)."""
    view = memoryview(data)
    found: dict[int, memoryview] = {}
    offset = 0
    while offset + _NLATTR.size <= len(view):
        length, attr_type = _NLATTR.unpack_from(view, offset)
        if length < _NLATTR.size or offset + length > len(view):
            break
        found.setdefault(attr_type & _NLA_TYPE_MASK, view[offset + _NLATTR.size : offset + length])
        offset += align(length)
    return found


def error_code(payload: memoryview) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 is an ACK."""
    (code,) = struct.unpack_from("=i", payload)
    return -int(code)


def raise_for(code: int, what: str) -> None:
    if code:
        raise NetlinkError(code, f"{what}: {os.strerror(code)}")


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else f"/run/netns/{netns}"


def _socket_in(netns: str, protocol: int) -> socket.socket:
    """Create a netlink socket inside ``netns`` from a thread that joins it and then dies."""
    result: list[socket.socket | BaseException] = []

    def worker() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def open_socket(protocol: int, *, groups: int = 0, netns: str | None = None) -> socket.socket:
    """A bound netlink socket (CLOEXEC), subscribed to ``groups`` (a bit mask)."""
    sock = (
        _socket_in(netns, protocol)
        if netns
        else socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class Requester:
    """Blocking request/dump on one socket; not thread-safe (callers serialise)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    def request(self, msg_type: int, flags: int, payload: bytes) -> list[tuple[int, memoryview]]:
        """Send one request; collect ``(type, payload)`` of every reply up to DONE or ACK.

        A non-dump request is sent with NLM_F_ACK semantics implied by the kernel's single
        reply (or error); a dump ends at NLMSG_DONE. Errors raise NetlinkError.
        """
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        self.sock.send(pack_message(msg_type, flags | NLM_F_REQUEST, seq, payload))
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        replies: list[tuple[int, memoryview]] = []
        while True:
            data = self.sock.recv(1 << 20)
            for rtype, _rflags, rseq, body in messages(data):
                if rseq != seq:
                    continue  # a stale answer to an abandoned request
                if rtype == NLMSG_DONE:
                    return replies
                if rtype == NLMSG_ERROR:
                    code = error_code(body)
                    raise_for(code, "netlink request")
                    return replies
                if rtype == NLMSG_OVERRUN:
                    raise NetlinkError(errno_mod.ENOBUFS, "netlink overrun")
                replies.append((rtype, body))
                if not dump:
                    return replies

    def close(self) -> None:
        self.sock.close()
