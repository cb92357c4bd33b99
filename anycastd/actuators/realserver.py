"""The real-server role's actuator: tunnel devices up and the sysctls a backend needs.

Rule: the only writer of the real-server role's kernel state (what
:mod:`anycastd.core.realserver` plans: ``LinkUp``, ``SetSysctl``). It only ever takes a
device up and writes the sysctls the role names -- never a device down, never a sysctl
back: what it touches the kernel created (``tunl0`` and its kin) or is node-wide policy
the config asked for. The VIP itself is the loopback actuator's (``IFA_PROTO`` ownership).

``KernelRealServer`` reads and writes the namespace it runs in: sysctls through
``/proc/sys`` (per network namespace, see :mod:`anycastd.actuators.sysctl`), links through
rtnetlink (one socket, opened on first use, so the daemon's thread is the one that opens
it). ``MemoryRealServer`` is its in-memory twin (dry run, tests).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from anycastd.actuators import sysctl
from anycastd.actuators.netlink import error_for, map_netlink_errors, open_rtnetlink
from anycastd.core.realserver import LinkUp, NodeAction, NodeNeeds, NodeObserved, SetSysctl
from anycastd.errors import PermanentError

__all__ = ["ACTUATOR", "KernelRealServer", "MemoryRealServer", "RealServerActuator"]

ACTUATOR = "realserver"


class RealServerActuator(Protocol):
    def observe(self, needs: NodeNeeds) -> NodeObserved: ...

    def apply(self, actions: Sequence[NodeAction]) -> None: ...


def _missing(action: LinkUp) -> PermanentError:
    hint = (
        f": load the {action.module} kernel module (modprobe {action.module}; "
        "/etc/modules-load.d/ makes it permanent)"
        if action.module else ""
    )
    return PermanentError(ACTUATOR, f"{action}: no such device{hint}")


# --- rtnetlink, only RTM_GETLINK and the IFF_UP change -----------------------------------------

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLATTR = struct.Struct("=HH")
_NLMSGERR = struct.Struct("=i")
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
RTM_NEWLINK = 16
RTM_GETLINK = 18
IFLA_IFNAME = 3
IFF_UP = 0x1


def _ifname(name: str) -> bytes:
    payload = name.encode() + b"\0"
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, IFLA_IFNAME) + payload + b"\0" * ((-length) % 4)


class KernelRealServer:
    """Links and sysctls of this network namespace (``proc_sys`` for tests)."""

    def __init__(self, proc_sys: Path = sysctl.PROC_SYS) -> None:
        self.proc_sys = proc_sys
        self._sock: socket.socket | None = None
        self._seq = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def observe(self, needs: NodeNeeds) -> NodeObserved:
        links = {name: self._link(name)[1] for name in needs.interfaces}
        values = {key: sysctl.read(key, self.proc_sys) for key in needs.keys}
        return NodeObserved(sysctls=values, links=links)

    def apply(self, actions: Sequence[NodeAction]) -> None:
        """In order; the first failure stops the batch (a sysctl of a device that is not
        up yet would fail anyway)."""
        for action in actions:
            if isinstance(action, LinkUp):
                index, up = self._link(action.interface)
                if up is None:
                    raise _missing(action)
                if not up:
                    self._set_up(index, action)
            else:
                sysctl.apply({action.key: action.value}, self.proc_sys)

    # -- netlink

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = open_rtnetlink(ACTUATOR, None)
        return self._sock

    def _request(
        self, kind: int, flags: int, body: bytes, context: str, *, missing_ok: bool = False
    ) -> bytes | None:
        """Send one request; the RTM_NEWLINK answer's body, or None for an ACK (and for
        ENODEV when ``missing_ok``). Other errors raise the mapped ActuatorError."""
        sock = self._socket()
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        with map_netlink_errors(ACTUATOR, context):
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body)
            while True:
                data = sock.recv(65536)
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, mtype, _f, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                    if length < _NLMSGHDR.size:
                        break
                    start = offset + _NLMSGHDR.size
                    offset += (length + 3) & ~3
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_ERROR:
                        (code,) = _NLMSGERR.unpack_from(data, start)
                        if code and not (missing_ok and -code == errno.ENODEV):
                            raise error_for(ACTUATOR, code, context)
                        return None
                    if mtype == RTM_NEWLINK:
                        return data[start:offset]

    def _link(self, name: str) -> tuple[int, bool | None]:
        """(index, IFF_UP) of ``name``; (0, None) when there is no such device."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ifname(name)
        answer = self._request(RTM_GETLINK, NLM_F_REQUEST, body, f"link {name}", missing_ok=True)
        if answer is None:
            return 0, None
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(answer, 0)
        return int(index), bool(flags & IFF_UP)

    def _set_up(self, index: int, action: LinkUp) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
        self._request(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, str(action))


class MemoryRealServer:
    """The in-memory twin: ``links`` name -> up (absent: no such device), ``sysctls``."""

    def __init__(
        self, links: Mapping[str, bool] | None = None, sysctls: Mapping[str, str] | None = None
    ) -> None:
        self.links: dict[str, bool] = dict(links or {})
        self.sysctls: dict[str, str] = dict(sysctls or {})
        self.writes = 0

    def observe(self, needs: NodeNeeds) -> NodeObserved:
        return NodeObserved(
            sysctls={k: self.sysctls.get(k) for k in needs.keys},
            links={name: self.links.get(name) for name in needs.interfaces},
        )

    def apply(self, actions: Sequence[NodeAction]) -> None:
        for action in actions:
            self.writes += 1
            if isinstance(action, LinkUp):
                if action.interface not in self.links:
                    raise _missing(action)
                self.links[action.interface] = True
            elif isinstance(action, SetSysctl):
                if action.key not in self.sysctls:
                    raise error_for(ACTUATOR, errno.ENOENT, f"write {action.key}")
                self.sysctls[action.key] = action.value

    @classmethod
    def with_defaults(cls, devices: Iterable[str] = ()) -> MemoryRealServer:
        """A node as the kernel starts it: devices down, sysctls at their defaults."""
        sysctls = {
            "net.ipv4.conf.all.arp_ignore": "0",
            "net.ipv4.conf.all.arp_announce": "0",
            "net.ipv4.conf.all.rp_filter": "0",
        }
        names = list(devices)
        for device in names:
            sysctls[f"net.ipv4.conf.{device}.rp_filter"] = "0"
        return cls(dict.fromkeys(names, False), sysctls)
