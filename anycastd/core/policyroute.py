"""Policy routing per service: ``ip rule from PREFIX table N`` / ``fwmark M table N`` and the
routes of table N, present while the service is served.

Rule: pure. No I/O, no clock, no await. :func:`from_config` reads the config,
:func:`diff` compares with what :mod:`anycastd.actuators.policyroute` observed.

Theory of operation
-------------------
A service with ``[services.NAME.policy_routing]`` sends the traffic sourced from its
prefixes (``from_prefixes``) and/or marked ``fwmark`` to a routing table of its own,
``table``, which holds ``routes`` -- typically a default route that differs from the node's
(DR/TUN backends whose replies, sourced from the VIP, must leave another way than the
node's own traffic). One rule per prefix (``from PREFIX``) and one per address family of
the prefixes (``fwmark M``), at ``priority``; the routes in their family.

Ownership: every rule carries ``FRA_PROTOCOL = OWNER_PROTO`` (0xac; iproute2 shows
``proto 172``) and every route ``rtm_protocol = OWNER_PROTO``. Only rules with the mark are
observed as ours; routes are observed as ours when they carry the mark AND sit in a table
one of our rules or the config names (another part of anycastd may mark routes in the main
table). Foreign rules and routes, even in the same table, are never changed.

When: the rules and routes of a service are wanted while it is *active*: some prefix of it
is wanted, still announced (a drain) or kept. The planner adds them with the address adds
(before any announce) and removes them with the address removes (after the withdraw):
routes before rules on the way up (a rule never points at an empty table), rules before
routes on the way down. Several services may share a table (their routes merge).

A route matches an observed one on (family, table, destination, gateway), and on the device
only when the config names one: the kernel reports the device it resolved for a gateway.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeAlias

from anycastd.config import Config

__all__ = [
    "OWNER_PROTO",
    "AddPolicy",
    "PolicyAction",
    "PolicyDiff",
    "PolicyObserved",
    "PolicyRule",
    "RemovePolicy",
    "ServicePolicy",
    "TableRoute",
    "canonical_dst",
    "diff",
    "from_config",
    "tables",
]

#: FRA_PROTOCOL of anycastd's rules and rtm_protocol of its routes (unused by the kernel
#: and by the routing daemons' registered values, like IFA_PROTO 0xac on addresses).
OWNER_PROTO = 0xAC


@dataclass(frozen=True, order=True)
class PolicyRule:
    """``from src`` (a prefix, "" for any) and/or ``fwmark`` -> ``table`` at ``priority``."""

    family: int
    priority: int
    table: int
    src: str = ""
    fwmark: int = 0

    def __str__(self) -> str:
        what = f"from {self.src}" if self.src else "from all"
        mark = f" fwmark {self.fwmark:#x}" if self.fwmark else ""
        return f"rule {self.priority}: {what}{mark} lookup {self.table}"


@dataclass(frozen=True, order=True)
class TableRoute:
    family: int
    table: int
    dst: str
    via: str = ""
    dev: str = ""

    def __str__(self) -> str:
        via = f" via {self.via}" if self.via else ""
        dev = f" dev {self.dev}" if self.dev else ""
        return f"route {self.dst}{via}{dev} table {self.table}"

    def matches(self, seen: TableRoute) -> bool:
        """``seen`` (from the kernel) is this route (see the module doc on devices)."""
        return (self.family, self.table, self.dst, self.via) == (
            seen.family, seen.table, seen.dst, seen.via
        ) and (not self.dev or self.dev == seen.dev)


@dataclass(frozen=True)
class ServicePolicy:
    service: str
    rules: tuple[PolicyRule, ...]
    routes: tuple[TableRoute, ...]


@dataclass(frozen=True)
class PolicyObserved:
    """anycastd's rules and routes as read (see the module doc on ownership)."""

    rules: frozenset[PolicyRule] = frozenset()
    routes: frozenset[TableRoute] = frozenset()


@dataclass(frozen=True)
class AddPolicy:
    item: PolicyRule | TableRoute

    def __str__(self) -> str:
        return f"add {self.item}"


@dataclass(frozen=True)
class RemovePolicy:
    item: PolicyRule | TableRoute

    def __str__(self) -> str:
        return f"remove {self.item}"


PolicyAction: TypeAlias = AddPolicy | RemovePolicy


def from_config(config: Config) -> tuple[ServicePolicy, ...]:
    """The rules and routes of every enabled service with ``policy_routing``, by name."""
    out: list[ServicePolicy] = []
    for name in sorted(config.services):
        svc = config.services[name]
        policy = svc.policy_routing
        if policy is None or svc.disabled:
            continue
        rules: list[PolicyRule] = []
        families = sorted({p.version for p in svc.prefixes})
        if policy.from_prefixes:
            rules += [PolicyRule(p.version, policy.priority, policy.table, str(p))
                      for p in svc.prefixes]
        if policy.fwmark is not None:
            rules += [PolicyRule(f, policy.priority, policy.table, fwmark=policy.fwmark)
                      for f in families]
        routes = [
            TableRoute(r.to.version, policy.table, str(r.to),
                       str(r.via) if r.via is not None else "", r.dev or "")
            for r in policy.routes
        ]
        out.append(ServicePolicy(name, tuple(sorted(set(rules))), tuple(sorted(set(routes)))))
    return tuple(out)


def tables(policies: Collection[ServicePolicy]) -> frozenset[int]:
    return frozenset({r.table for p in policies for r in p.rules}
                     | {r.table for p in policies for r in p.routes})


@dataclass(frozen=True)
class PolicyDiff:
    adds: tuple[PolicyAction, ...] = ()
    removes: tuple[PolicyAction, ...] = ()


def diff(
    policies: Collection[ServicePolicy], active: Collection[str], observed: PolicyObserved
) -> PolicyDiff:
    """Adds (routes, then rules) and removes (rules, then routes) that make ``observed``
    hold exactly the rules and routes of the ``active`` services."""
    rules: set[PolicyRule] = set()
    routes: set[TableRoute] = set()
    for p in policies:
        if p.service in active:
            rules.update(p.rules)
            routes.update(p.routes)
    add_routes: list[PolicyRule | TableRoute] = [
        r for r in sorted(routes) if not any(r.matches(s) for s in observed.routes)]
    add_rules: list[PolicyRule | TableRoute] = [
        r for r in sorted(rules) if r not in observed.rules]
    del_rules: list[PolicyRule | TableRoute] = [
        r for r in sorted(observed.rules) if r not in rules]
    del_routes: list[PolicyRule | TableRoute] = [
        s for s in sorted(observed.routes) if not any(r.matches(s) for r in routes)]
    return PolicyDiff(
        adds=tuple(AddPolicy(x) for x in (*add_routes, *add_rules)),
        removes=tuple(RemovePolicy(x) for x in (*del_rules, *del_routes)),
    )


def canonical_dst(family: int, dst: str | None, dst_len: int) -> str:
    """The kernel's (RTA_DST, dst_len) as the prefix text the config produces."""
    if not dst:
        return "0.0.0.0/0" if family == 4 else "::/0"
    return str(ipaddress.ip_network(f"{dst}/{dst_len}", strict=False))
