"""The real-server role: what a backend of an LVS director needs on this node.

Rule: pure. No I/O, no clock, no await. :func:`needs` reads the config, :func:`diff` compares
with what :mod:`anycastd.actuators.realserver` observed and returns the writes, in order.

Theory of operation
-------------------
A service with ``[services.NAME.real_server]`` runs on a backend node, not on the director.
Its prefixes are the director's VIPs; its checks are the backend's own health. Like any
service, its host prefixes go on ``global.interface`` (``lo``) while it is healthy and come
off when it is not -- a sick backend stops accepting the VIP, so even a director that still
sends it traffic cannot reach the service -- but it is never announced (the director
announces the VIP, not its backends).

What the kernel needs before that address may go on ``lo`` (``needs``):

* direct routing and tunnelling, IPv4: the node must not answer ARP for the VIP, or it steals
  the VIP from the director on their shared segment: ``net.ipv4.conf.all.arp_ignore = 1``
  (answer only for addresses of the receiving interface; 2 is stricter and accepted) and
  ``arp_announce = 2`` (never use the VIP as the source of an ARP request). The kernel uses
  max(all, interface) for both, so ``all`` suffices. IPv6 needs nothing: neighbour
  discovery does not answer for addresses on ``lo``.
* tunnelling: the director encapsulates (IPIP, or GRE); the kernel's fallback device of
  that type decapsulates -- ``tunl0`` (ipip), ``gre0`` (ip_gre), ``ip6tnl0`` and
  ``ip6gre0`` for IPv6 VIPs -- and only while it is up. The decapsulated packet comes in
  on that device with the client as source, while the route back to the client leaves by
  another interface: strict reverse-path filtering drops it. So the device gets
  ``rp_filter = 0`` and ``net.ipv4.conf.all.rp_filter`` must not be 1 (strict; the kernel
  uses max(all, device)): 1 is changed to 2 (loose), 0 and 2 are left alone.

Order: the device up first (its sysctl keys exist only once the device does), then the
sysctls. A backend's VIP is added only by a planner pass that has *observed* all of it in
place (:func:`held_back`); the writes themselves run last in a pass, so the next pass adds
the VIP. A VIP already on the interface stays while drift is repaired (taking it off would
cut the connections it serves). A device that does not exist (its module not loaded) cannot
be created here: the write fails with a message saying which module to load, the VIP stays
off, and nothing else the pass does is held back.

Nothing is ever undone: a device taken up or a sysctl set stays when the role goes away
(taking ``tunl0`` down or restoring ``arp_ignore`` could break what the operator runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from anycastd.config import Config
from anycastd.model import HostAddress, LoopbackObserved

__all__ = [
    "TUNNEL_DEVICES",
    "LinkUp",
    "NodeAction",
    "NodeNeeds",
    "NodeObserved",
    "SetSysctl",
    "Setting",
    "diff",
    "held_back",
    "needs",
]

#: (tunnel type, address family) -> the fallback device that decapsulates it, and the
#: kernel module that creates it.
TUNNEL_DEVICES: dict[tuple[str, int], tuple[str, str]] = {
    ("ipip", 4): ("tunl0", "ipip"),
    ("ipip", 6): ("ip6tnl0", "ip6_tunnel"),
    ("gre", 4): ("gre0", "ip_gre"),
    ("gre", 6): ("ip6gre0", "ip6_gre"),
}


@dataclass(frozen=True, order=True)
class Setting:
    """A sysctl (dotted key) that must hold one of ``accept``; ``value`` is written when not."""

    key: str
    value: str
    accept: frozenset[str] = frozenset()

    def ok(self, actual: str | None) -> bool:
        return actual is not None and actual in (self.accept or {self.value})


@dataclass(frozen=True)
class NodeNeeds:
    """What the node needs: ``links`` up (name -> module that creates it), then ``sysctls``."""

    links: tuple[tuple[str, str], ...] = ()
    sysctls: tuple[Setting, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.links or self.sysctls)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.sysctls)

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.links)


@dataclass(frozen=True)
class NodeObserved:
    """As read: sysctl values (None: no such key) and links (True up, False down, None
    missing)."""

    sysctls: Mapping[str, str | None] = field(default_factory=dict)
    links: Mapping[str, bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LinkUp:
    interface: str
    module: str = ""  # the kernel module that creates it (for the error when it is missing)

    def __str__(self) -> str:
        return f"link {self.interface} up"


@dataclass(frozen=True)
class SetSysctl:
    key: str
    value: str

    def __str__(self) -> str:
        return f"sysctl {self.key}={self.value}"


NodeAction: TypeAlias = LinkUp | SetSysctl


def needs(config: Config) -> NodeNeeds:
    """The links and sysctls the enabled real-server services need (see the module doc)."""
    links: dict[str, str] = {}
    sysctls: dict[str, Setting] = {}
    for name in sorted(config.services):
        svc = config.services[name]
        role = svc.real_server
        if role is None or svc.disabled:
            continue
        families = {p.version for p in svc.prefixes}
        if 4 in families:
            sysctls["net.ipv4.conf.all.arp_ignore"] = Setting(
                "net.ipv4.conf.all.arp_ignore", "1", frozenset({"1", "2"}))
            sysctls["net.ipv4.conf.all.arp_announce"] = Setting(
                "net.ipv4.conf.all.arp_announce", "2")
        if role.forwarding != "tunnel" or role.tunnel is None:
            continue
        for family in sorted(families):
            device, module = TUNNEL_DEVICES[(role.tunnel, family)]
            links[device] = module
            if family == 4:
                key = f"net.ipv4.conf.{device}.rp_filter"
                sysctls[key] = Setting(key, "0", frozenset({"0", "2"}))
                sysctls["net.ipv4.conf.all.rp_filter"] = Setting(
                    "net.ipv4.conf.all.rp_filter", "2", frozenset({"0", "2"}))
    return NodeNeeds(
        links=tuple(sorted(links.items())),
        sysctls=tuple(sysctls[k] for k in sorted(sysctls)),
    )


def diff(wanted: NodeNeeds, observed: NodeObserved | None) -> tuple[NodeAction, ...]:
    """The writes that make ``observed`` meet ``wanted``: links first, then sysctls.
    Nothing observed (None) means nothing known: every write is planned."""
    seen = observed or NodeObserved()
    actions: list[NodeAction] = [
        LinkUp(name, module) for name, module in wanted.links if seen.links.get(name) is not True
    ]
    actions += [
        SetSysctl(s.key, s.value) for s in wanted.sysctls if not s.ok(seen.sysctls.get(s.key))
    ]
    return tuple(actions)


def held_back(
    wanted: NodeNeeds,
    addresses: Iterable[HostAddress],
    node: NodeObserved | None,
    loopback: LoopbackObserved,
) -> frozenset[HostAddress]:
    """The backends' VIPs (``addresses``) that may not be added now: all those not yet on
    the interface, until the node is observed as ``wanted`` (nothing when it is)."""
    if not wanted or (node is not None and not diff(wanted, node)):
        return frozenset()
    return frozenset(a for a in addresses if a not in loopback.owned)
