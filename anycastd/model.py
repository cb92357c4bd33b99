"""The values the core, the actuators and the observers share: addresses, IPVS, BGP.

Rule: frozen typed values only, no I/O, imports only the standard library. The pure diffs
over them live in :mod:`anycastd.core`; the I/O that reads and writes them lives in
:mod:`anycastd.actuators` and :mod:`anycastd.bgp`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, TypeAlias

__all__ = [
    "ALL_NEIGHBORS",
    "GRACEFUL_SHUTDOWN",
    "WELL_KNOWN_COMMUNITIES",
    "AddAddress",
    "AddRealServer",
    "AddService",
    "Address",
    "AddressAction",
    "Attributes",
    "BgpSettings",
    "Command",
    "DeleteRealServer",
    "DeleteService",
    "EditRealServer",
    "EditService",
    "Forwarding",
    "HostAddress",
    "IPAddress",
    "IpvsAction",
    "IpvsObserved",
    "LoopbackObserved",
    "Mode",
    "Neighbor",
    "ObservedRealServer",
    "ObservedService",
    "RealServer",
    "RemoveAddress",
    "ResolvedAttributes",
    "Rib",
    "RibKey",
    "Route",
    "ServiceProtocol",
    "ServiceSpec",
    "VirtualService",
    "family_of",
]


# --------------------------------------------------------------------------------------------
# Addresses (anycastd.actuators.loopback reads and writes them)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
HostAddress: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Address:
    """One address on the interface as read from the kernel."""

    ip: IPAddress
    prefixlen: int
    owned: bool

    @property
    def interface(self) -> HostAddress:
        # Built on demand: an ip_interface costs ~30 µs, too much for 10,000 observed ones.
        if self.ip.version == 4:
            return ipaddress.IPv4Interface((int(self.ip), self.prefixlen))
        return ipaddress.IPv6Interface((int(self.ip), self.prefixlen))

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.ip, self.prefixlen)

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefixlen}{'' if self.owned else ' (foreign)'}"


@dataclass(frozen=True)
class LoopbackObserved:
    """What the kernel has on ``interface`` (global-scope and host-scope alike).

    ``up`` is IFF_UP, read in the same ``observe``. A down interface keeps its IPv4
    addresses but loses its IPv6 ones (see "Link down" in :mod:`anycastd.actuators.loopback`):
    the addresses listed are what the kernel holds, not what serves traffic, so the caller
    decides what down means.
    """

    interface: str
    addresses: frozenset[Address]
    up: bool = True

    @cached_property
    def owned(self) -> frozenset[HostAddress]:
        return frozenset(a.interface for a in self.addresses if a.owned)

    @cached_property
    def foreign(self) -> frozenset[HostAddress]:
        return frozenset(a.interface for a in self.addresses if not a.owned)


@dataclass(frozen=True)
class AddAddress:
    address: HostAddress

    def __str__(self) -> str:
        return f"add {self.address}"


@dataclass(frozen=True)
class RemoveAddress:
    address: HostAddress

    def __str__(self) -> str:
        return f"remove {self.address}"


AddressAction: TypeAlias = AddAddress | RemoveAddress


# --------------------------------------------------------------------------------------------
# IPVS (anycastd.actuators.ipvs reads and writes them)

Forwarding = Literal["nat", "dr", "tunnel"]
ServiceProtocol = Literal["tcp", "udp", "fwmark"]

# The values the kernel knows (the actuator maps them to include/uapi/linux/ip_vs.h).
_IP_PROTOCOLS = frozenset({"tcp", "udp"})
_FORWARDINGS = frozenset({"nat", "dr", "tunnel"})


def _canonical_ip(address: str) -> tuple[str, int]:
    ip = ipaddress.ip_address(address)
    return str(ip), ip.version


@dataclass(frozen=True, order=True)
class VirtualService:
    """The key of a virtual service: ``protocol`` tcp|udp with ``address`` and ``port``, or
    ``protocol="fwmark"`` with ``fwmark`` (> 0) and ``family`` (4 or 6).

    Addresses are stored canonical (``2001:DB8::1`` becomes ``2001:db8::1``), so keys built
    from config and keys read from the kernel compare equal.
    """

    protocol: ServiceProtocol
    address: str = ""
    port: int = 0
    fwmark: int = 0
    family: Literal[4, 6] = 4

    def __post_init__(self) -> None:
        if self.protocol == "fwmark":
            if not 0 < self.fwmark < 2**32:
                raise ValueError(f"fwmark must be 1..2^32-1, not {self.fwmark}")
            if self.address or self.port:
                raise ValueError("a fwmark service has no address or port")
            if self.family not in (4, 6):
                raise ValueError(f"family must be 4 or 6, not {self.family}")
            return
        if self.protocol not in _IP_PROTOCOLS:
            raise ValueError(f"protocol must be tcp, udp or fwmark, not {self.protocol!r}")
        if self.fwmark:
            raise ValueError("a tcp/udp service has no fwmark")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, not {self.port}")
        address, version = _canonical_ip(self.address)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "family", version)

    @classmethod
    def tcp(cls, address: str, port: int) -> VirtualService:
        return cls("tcp", address, port)

    @classmethod
    def udp(cls, address: str, port: int) -> VirtualService:
        return cls("udp", address, port)

    @classmethod
    def mark(cls, fwmark: int, family: Literal[4, 6] = 4) -> VirtualService:
        return cls("fwmark", fwmark=fwmark, family=family)

    def __str__(self) -> str:
        if self.protocol == "fwmark":
            return f"fwmark:{self.fwmark}/ipv{self.family}"
        host = f"[{self.address}]" if self.family == 6 else self.address
        return f"{self.protocol}:{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        if self.protocol == "fwmark":
            return {"protocol": "fwmark", "fwmark": self.fwmark, "family": self.family}
        return {"protocol": self.protocol, "address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VirtualService:
        if data["protocol"] == "fwmark":
            return cls.mark(int(data["fwmark"]), 6 if int(data["family"]) == 6 else 4)
        return cls(data["protocol"], str(data["address"]), int(data["port"]))


@dataclass(frozen=True)
class RealServer:
    """One real server (destination) of a virtual service; its key is (address, port)."""

    address: str
    port: int
    weight: int = 1
    forwarding: Forwarding = "nat"

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _canonical_ip(self.address)[0])
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if not 0 <= self.weight <= 65535:
            raise ValueError(f"weight must be 0..65535, not {self.weight}")
        if self.forwarding not in _FORWARDINGS:
            raise ValueError(f"forwarding must be nat, dr or tunnel, not {self.forwarding!r}")

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


@dataclass(frozen=True)
class ServiceSpec:
    """The desired state of one virtual service. ``persistence`` is in whole seconds
    (0 = not persistent)."""

    service: VirtualService
    scheduler: str = "wlc"
    persistence: int = 0
    real_servers: tuple[RealServer, ...] = ()

    def __post_init__(self) -> None:
        if self.persistence < 0:
            raise ValueError("persistence must be >= 0")
        keys = [rs.key for rs in self.real_servers]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.service}: duplicate real server (address, port)")
        for rs in self.real_servers:
            # The kernel accepts a real server of the other family only when tunnelled.
            if rs.forwarding != "tunnel" and _canonical_ip(rs.address)[1] != self.service.family:
                raise ValueError(
                    f"{self.service}: real server {rs.address} is of the other address family"
                    " (only tunnel forwarding may mix families)"
                )


@dataclass(frozen=True)
class ObservedRealServer:
    """A real server as the kernel reports it, with its connection counts."""

    server: RealServer
    active_connections: int = 0
    inactive_connections: int = 0

    @property
    def connections(self) -> int:
        return self.active_connections + self.inactive_connections


@dataclass(frozen=True)
class ObservedService:
    service: VirtualService
    scheduler: str
    persistence: int
    real_servers: tuple[ObservedRealServer, ...] = ()

    def real_server(self, address: str, port: int) -> ObservedRealServer | None:
        key = (_canonical_ip(address)[0], port)
        for ors in self.real_servers:
            if ors.server.key == key:
                return ors
        return None


@dataclass(frozen=True)
class IpvsObserved:
    """The kernel's whole IPVS table (every service, owned or foreign)."""

    services: Mapping[VirtualService, ObservedService] = field(default_factory=dict)

    def connections(self, service: VirtualService, address: str, port: int) -> tuple[int, int]:
        """(active, inactive) connections of a real server; (0, 0) when it is absent."""
        svc = self.services.get(service)
        ors = svc.real_server(address, port) if svc is not None else None
        if ors is None:
            return (0, 0)
        return (ors.active_connections, ors.inactive_connections)


@dataclass(frozen=True)
class AddService:
    spec: ServiceSpec  # real servers are added by their own AddRealServer actions


@dataclass(frozen=True)
class EditService:
    spec: ServiceSpec


@dataclass(frozen=True)
class DeleteService:
    service: VirtualService


@dataclass(frozen=True)
class AddRealServer:
    service: VirtualService
    server: RealServer


@dataclass(frozen=True)
class EditRealServer:
    service: VirtualService
    server: RealServer


@dataclass(frozen=True)
class DeleteRealServer:
    service: VirtualService
    server: RealServer


IpvsAction = (
    AddService | EditService | DeleteService | AddRealServer | EditRealServer | DeleteRealServer
)


# --------------------------------------------------------------------------------------------
# BGP: the speaker's input, independent of the config loader, and its RIB
#
# The controller maps the validated config onto these. Durations are whole seconds
# (ExaBGP's hold-time and restart-time are integers).

Mode = Literal["managed", "external"]

#: Well-known community names and their numeric form (IANA "BGP Well-known Communities";
#: RFC 1997, 3765, 7611, 7999, 8326, 9494): the one list, for the config and the speaker.
WELL_KNOWN_COMMUNITIES: dict[str, str] = {
    "graceful-shutdown": "65535:0",
    "accept-own": "65535:1",
    "llgr-stale": "65535:6",
    "no-llgr": "65535:7",
    "blackhole": "65535:666",
    "no-export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
    "local-as": "65535:65283",  # Cisco's and FRR's name for NO_EXPORT_SUBCONFED
    "no-peer": "65535:65284",
}
GRACEFUL_SHUTDOWN = "65535:0"


def family_of(prefix_or_address: str) -> str:
    """``"ipv4 unicast"`` or ``"ipv6 unicast"`` for an address or prefix."""
    version = ipaddress.ip_network(prefix_or_address, strict=False).version
    return "ipv6 unicast" if version == 6 else "ipv4 unicast"


@dataclass(frozen=True)
class Neighbor:
    """One BGP peer of the speaker."""

    address: str
    peer_as: int
    local_address: str | None = None
    name: str = ""
    hold_time: int = 180
    md5_password: str | None = None
    families: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def effective_families(self) -> tuple[str, ...]:
        return self.families or (family_of(self.address),)


@dataclass(frozen=True)
class BgpSettings:
    """The ``[bgp]`` section. In external mode ``neighbors`` may be empty (routes then go to
    every neighbor of the operator's ExaBGP, without a selector).

    ``graceful_restart`` (seconds, 0 = off) weakens fail-closed: with GR negotiated ExaBGP
    closes sessions without a NOTIFICATION, even on SIGTERM, so when anycastd dies a GR peer
    keeps the routes (stale) for up to this long instead of dropping them at once
    (measured with FRR 8.4: 3 s configured -> gone after 3.1 s)."""

    router_id: str
    local_as: int
    neighbors: tuple[Neighbor, ...] = ()
    mode: Mode = "managed"
    exabgp: str = "exabgp"
    next_hop: str = "self"
    graceful_restart: int = 0
    #: the relay's dead-man hold, seconds (0 = off): withdraw when anycastd is gone this long
    relay_hold: float = 15.0


@dataclass(frozen=True)
class Attributes:
    """Per-state announcement attributes. ``next_hop`` None means the settings' next_hop."""

    med: int | None = None
    local_preference: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    as_path_prepend: int = 0
    next_hop: str | None = None


@dataclass(frozen=True)
class Route:
    """A prefix to announce. ``neighbors`` (names or addresses) targets peers; empty = all."""

    prefix: str
    attributes: Attributes = field(default_factory=Attributes)
    neighbors: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class OspfRoute:
    """A prefix published into OSPF (an AS-external route) with its metric."""

    prefix: str
    metric: int


#: Key of a RIB entry for routes sent without a neighbor selector (external mode, no
#: neighbors configured): ExaBGP gives them to every neighbor.
ALL_NEIGHBORS = "*"


@dataclass(frozen=True, order=True)
class ResolvedAttributes:
    """Attributes in the form compared against ExaBGP's adj-rib-out."""

    next_hop: str  # "self" or an address
    med: int | None = None
    local_preference: int | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    as_path_prepend: int = 0


RibKey = tuple[str, str]  # (neighbor address or "*", prefix)
Rib = dict[RibKey, ResolvedAttributes]


@dataclass(frozen=True)
class Command:
    """One API line and the RIB entries it makes true once ExaBGP answers ``done``.

    ``changes`` maps each key to its new attributes, or None for a withdraw.
    """

    text: str
    changes: tuple[tuple[RibKey, ResolvedAttributes | None], ...]
