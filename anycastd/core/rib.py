"""The desired RIB: routes resolved per neighbor into normalised attributes, and back.

Rule: pure (never awaits, no I/O, no clock); every function is a function of its arguments,
unit tested table by table. ``resolve`` expands a set of :class:`~anycastd.model.Route` into a
*RIB*: ``(neighbor address, prefix) -> ResolvedAttributes`` (normalised, so equal meaning
compares equal); ``routes_from_rib`` reads a RIB back as routes for the planner. Turning one
RIB into another with ExaBGP commands is :mod:`anycastd.bgp.commands`.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Mapping

from anycastd.model import (
    ALL_NEIGHBORS,
    WELL_KNOWN_COMMUNITIES,
    Attributes,
    BgpSettings,
    Neighbor,
    ResolvedAttributes,
    Rib,
    RibKey,
    Route,
)

__all__ = [
    "PlanError",
    "community_sort_key",
    "family_key",
    "normalize_community",
    "normalize_large_community",
    "normalize_prefix",
    "resolve",
    "resolve_attributes",
    "routes_from_rib",
]


class PlanError(ValueError):
    """A route that cannot be expressed (unknown neighbor, bad community)."""


# -- normalisation ----------------------------------------------------------------------


def normalize_community(value: str) -> str:
    name = value.strip().lower()
    if name in WELL_KNOWN_COMMUNITIES:
        return WELL_KNOWN_COMMUNITIES[name]
    parts = name.split(":")
    if len(parts) != 2 or not all(p.isdigit() and int(p) <= 0xFFFF for p in parts):
        raise PlanError(f"community {value!r}: expected A:B (16-bit each) or a well-known name")
    return f"{int(parts[0])}:{int(parts[1])}"


def normalize_large_community(value: str) -> str:
    parts = value.strip().split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 0xFFFFFFFF for p in parts):
        raise PlanError(f"large community {value!r}: expected A:B:C (32-bit each)")
    return ":".join(str(int(p)) for p in parts)


def community_sort_key(value: str) -> tuple[int, ...]:
    return tuple(int(p) for p in value.split(":"))


def resolve_attributes(attrs: Attributes, settings: BgpSettings) -> ResolvedAttributes:
    next_hop = attrs.next_hop or settings.next_hop or "self"
    if next_hop != "self":
        next_hop = str(ipaddress.ip_address(next_hop))
    if not 0 <= attrs.as_path_prepend <= 32:
        raise PlanError(f"as_path_prepend {attrs.as_path_prepend}: expected 0..32")
    return ResolvedAttributes(
        next_hop=next_hop,
        med=attrs.med,
        local_preference=attrs.local_preference,
        communities=tuple(
            sorted({normalize_community(c) for c in attrs.communities}, key=community_sort_key)
        ),
        large_communities=tuple(
            sorted(
                {normalize_large_community(c) for c in attrs.large_communities},
                key=community_sort_key,
            )
        ),
        as_path_prepend=attrs.as_path_prepend,
    )


def _neighbor_index(settings: BgpSettings) -> dict[str, Neighbor]:
    index: dict[str, Neighbor] = {}
    for n in settings.neighbors:
        index[n.address] = n
        index[str(ipaddress.ip_address(n.address))] = n
        if n.name:
            index[n.name] = n
    return index


@functools.lru_cache(maxsize=1 << 16)
def normalize_prefix(prefix: str) -> str:
    """Canonical text of a prefix; ValueError for a bad one or host bits set.

    inet_pton/inet_ntop instead of ipaddress: 10,000 prefixes at start cost ~15 ms, not 150."""
    address, slash, length_text = prefix.strip().partition("/")
    af = socket.AF_INET6 if ":" in address else socket.AF_INET
    bits = 128 if af == socket.AF_INET6 else 32
    try:
        packed = socket.inet_pton(af, address)
    except OSError:
        raise ValueError(f"{prefix!r} does not appear to be an IPv4 or IPv6 network") from None
    if slash and not length_text.isdigit():
        raise ValueError(f"{prefix!r} does not appear to be an IPv4 or IPv6 network")
    length = int(length_text) if slash else bits
    if not 0 <= length <= bits:
        raise ValueError(f"{prefix!r}: prefix length out of range")
    if int.from_bytes(packed, "big") & ((1 << (bits - length)) - 1):
        raise ValueError(f"{prefix!r} has host bits set")
    return f"{socket.inet_ntop(af, packed)}/{length}"


def family_key(prefix: str) -> str:
    # prefixes in a RIB are already normalised strings: only IPv6 has a colon
    return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"


class _Resolver:
    """``resolve`` for one settings value: the neighbor index, the families and each distinct
    attribute set worked out once, however many routes follow (a 1,000-prefix service has
    one attribute set per state; ``routes_from_rib`` resolves one route at a time)."""

    def __init__(self, settings: BgpSettings) -> None:
        self.settings = settings
        self.index = _neighbor_index(settings)
        self.families = {n.address: frozenset(n.effective_families) for n in settings.neighbors}
        self.by_family = {
            f: [n.address for n in settings.neighbors if f in self.families[n.address]]
            for f in ("ipv4 unicast", "ipv6 unicast")
        }
        self.all = [ALL_NEIGHBORS]
        # many routes share one Attributes value (per service state): resolve each once
        self.resolved: dict[Attributes, ResolvedAttributes] = {}

    def route(self, route: Route) -> tuple[str, list[str], ResolvedAttributes]:
        """(normalised prefix, the neighbors that carry it, its resolved attributes)."""
        prefix = normalize_prefix(route.prefix)
        family = family_key(prefix)
        attrs = self.resolved.get(route.attributes)
        if attrs is None:
            attrs = self.resolved[route.attributes] = resolve_attributes(
                route.attributes, self.settings)
        if route.neighbors:
            targets: list[str] = []
            for ref in route.neighbors:
                neighbor = self.index.get(ref)
                if neighbor is None:
                    raise PlanError(f"route {prefix}: unknown neighbor {ref!r}")
                if family in self.families[neighbor.address]:
                    targets.append(neighbor.address)
        elif self.settings.neighbors:
            targets = self.by_family[family]
        else:
            targets = self.all
        return prefix, targets, attrs


def resolve(routes: Iterable[Route], settings: BgpSettings) -> Rib:
    """The desired RIB: every route expanded to the neighbors that carry its family."""
    resolver = _Resolver(settings)
    rib: Rib = {}
    for route in routes:
        prefix, targets, attrs = resolver.route(route)
        for target in targets:
            rib[(target, prefix)] = attrs
    return rib


# --- reading the speaker back ----------------------------------------------------------------


def routes_from_rib(
    rib: Mapping[RibKey, ResolvedAttributes],
    settings: BgpSettings,
    hints: Iterable[Route] = (),
) -> frozenset[Route]:
    """The speaker's RIB (``ExabgpSpeaker.sent``) as routes, for :attr:`Observed.announced`.

    A prefix whose RIB entries are exactly what a hint route resolves to is given as that
    hint (pass the desired routes, demote routes and the last set sent), so the planner
    compares like with like and a steady state plans nothing. Other prefixes are rebuilt from
    the RIB: one route per distinct attribute set, targeted at the neighbors that carry it.
    """
    by_prefix: dict[str, dict[str, ResolvedAttributes]] = {}
    for (neighbor, prefix), attrs in rib.items():
        by_prefix.setdefault(prefix, {})[neighbor] = attrs
    out: set[Route] = set()
    hinted: dict[str, list[Route]] = {}
    for route in hints:
        hinted.setdefault(normalize_prefix(route.prefix), []).append(route)
    resolver = _Resolver(settings)
    for prefix, entries in by_prefix.items():
        match = None
        for route in hinted.get(prefix, ()):
            try:
                _, carriers, attrs = resolver.route(route)
            except ValueError:  # PlanError is a ValueError: an unknown neighbor
                continue
            if dict.fromkeys(carriers, attrs) == entries:
                match = route
                break
        if match is not None:
            out.add(match)
            continue
        groups: dict[ResolvedAttributes, list[str]] = {}
        for neighbor, attrs in sorted(entries.items()):
            groups.setdefault(attrs, []).append(neighbor)
        for attrs, neighbors in groups.items():
            targets = () if neighbors == [ALL_NEIGHBORS] else tuple(neighbors)
            next_hop = None if attrs.next_hop == (settings.next_hop or "self") else attrs.next_hop
            out.add(
                Route(
                    prefix,
                    Attributes(
                        med=attrs.med,
                        local_preference=attrs.local_preference,
                        communities=attrs.communities,
                        large_communities=attrs.large_communities,
                        as_path_prepend=attrs.as_path_prepend,
                        next_hop=next_hop,
                    ),
                    targets,
                )
            )
    return frozenset(out)
