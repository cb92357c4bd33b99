"""The speaker's input: frozen values, independent of the config loader.

The controller maps the validated config onto these; nothing here reads files or clocks.
Durations are whole seconds (ExaBGP's hold-time and restart-time are integers).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["managed", "external"]

#: Well-known community names (RFC 1997, 8326, 7999, 9494) and their numeric form.
WELL_KNOWN_COMMUNITIES: dict[str, str] = {
    "graceful-shutdown": "65535:0",
    "accept-own": "65535:1",
    "llgr-stale": "65535:6",
    "no-llgr": "65535:7",
    "blackhole": "65535:666",
    "no-export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
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
