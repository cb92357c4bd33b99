"""Pure BGP planning: ExaBGP config text, desired RIB, diff → API commands, adj-rib-out parsing.

Rule: nothing here awaits, reads a clock or touches the network. Everything is a function of
its arguments so it is unit tested table by table.

Theory of operation. The controller hands the speaker a set of :class:`Route`. ``resolve``
expands it into a *RIB*: ``(neighbor address, prefix) -> ResolvedAttributes`` (normalised, so
equal meaning compares equal). The speaker remembers the RIB it last had acknowledged by
ExaBGP (``sent``), or read back from ``show adj-rib out extensive`` after a (re)connect.
``plan(desired, sent)`` returns the commands that turn one into the other, packing prefixes
that share attributes, family and neighbor set into one ``announce attributes ... nlri``.
Steady state: ``plan(x, x) == []``: nothing is sent.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from anycastd.bgp.model import (
    WELL_KNOWN_COMMUNITIES,
    Attributes,
    BgpSettings,
    Neighbor,
    Route,
)

#: Key of a RIB entry for routes sent without a neighbor selector (external mode, no
#: neighbors configured): ExaBGP gives them to every neighbor.
ALL_NEIGHBORS = "*"
#: Prefixes per ``announce attributes ... nlri`` command (bounded line length).
NLRI_CHUNK = 500


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

#: ``as_path_prepend`` of a route read back with a path anycastd would not send, or with
#: attributes that did not parse: unequal to every resolved wish (0..32), so the difference
#: is always acted on (withdrawn when unwanted, re-announced when wanted).
NOT_OURS = -1


@dataclass(frozen=True)
class Command:
    """One API line and the RIB entries it makes true once ExaBGP answers ``done``.

    ``changes`` maps each key to its new attributes, or None for a withdraw.
    """

    text: str
    changes: tuple[tuple[RibKey, ResolvedAttributes | None], ...]


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


def _community_sort_key(value: str) -> tuple[int, ...]:
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
            sorted({normalize_community(c) for c in attrs.communities}, key=_community_sort_key)
        ),
        large_communities=tuple(
            sorted(
                {normalize_large_community(c) for c in attrs.large_communities},
                key=_community_sort_key,
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


def _family_key(prefix: str) -> str:
    # prefixes in a RIB are already normalised strings: only IPv6 has a colon
    return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"


def resolve(routes: Iterable[Route], settings: BgpSettings) -> Rib:
    """The desired RIB: every route expanded to the neighbors that carry its family."""
    index = _neighbor_index(settings)
    families = {n.address: frozenset(n.effective_families) for n in settings.neighbors}
    by_family = {
        f: [n.address for n in settings.neighbors if f in families[n.address]]
        for f in ("ipv4 unicast", "ipv6 unicast")
    }
    # many routes share one Attributes value (per service state): resolve each once
    resolved: dict[Attributes, ResolvedAttributes] = {}
    rib: Rib = {}
    for route in routes:
        prefix = normalize_prefix(route.prefix)
        family = _family_key(prefix)
        attrs = resolved.get(route.attributes)
        if attrs is None:
            attrs = resolved[route.attributes] = resolve_attributes(route.attributes, settings)
        if route.neighbors:
            targets: list[str] = []
            for ref in route.neighbors:
                neighbor = index.get(ref)
                if neighbor is None:
                    raise PlanError(f"route {prefix}: unknown neighbor {ref!r}")
                if family in families[neighbor.address]:
                    targets.append(neighbor.address)
        elif settings.neighbors:
            targets = by_family[family]
        else:
            targets = [ALL_NEIGHBORS]
        for target in targets:
            rib[(target, prefix)] = attrs
    return rib


# -- rendering ----------------------------------------------------------------------------


def render_attributes(attrs: ResolvedAttributes, local_as: int) -> str:
    parts = [f"next-hop {attrs.next_hop}"]
    if attrs.med is not None:
        parts.append(f"med {attrs.med}")
    if attrs.local_preference is not None:
        parts.append(f"local-preference {attrs.local_preference}")
    if attrs.communities:
        parts.append(f"community [{' '.join(attrs.communities)}]")
    if attrs.large_communities:
        parts.append(f"large-community [{' '.join(attrs.large_communities)}]")
    if attrs.as_path_prepend:
        # The whole path: ExaBGP 5 does not add the local AS to a path that already starts
        # with it (measured against FRR), so N prepends are N + 1 copies.
        parts.append(f"as-path [{' '.join([str(local_as)] * (attrs.as_path_prepend + 1))}]")
    return " ".join(parts)


def _selector(neighbors: Sequence[str]) -> str:
    if list(neighbors) == [ALL_NEIGHBORS]:
        return ""
    return ", ".join(f"neighbor {n}" for n in neighbors) + " "


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _prefix_sort_key(prefix: str) -> tuple[bool, int, str]:
    # cheap and deterministic (no address parsing: this runs over every changed prefix)
    return (":" in prefix, len(prefix), prefix)


def plan(
    desired: Mapping[RibKey, ResolvedAttributes],
    sent: Mapping[RibKey, ResolvedAttributes],
    local_as: int,
    *,
    chunk: int = NLRI_CHUNK,
) -> list[Command]:
    """Commands that turn ``sent`` into ``desired``: withdraws first, then announces.

    Prefixes are packed per (family, neighbor set[, attributes]) and the output order is
    deterministic, so equal inputs give equal command lists.
    """
    commands: list[Command] = []

    # withdraws: prefix -> neighbors that must lose it
    withdraw_by_prefix: dict[str, list[str]] = defaultdict(list)
    for key in sent:
        if key not in desired:
            withdraw_by_prefix[key[1]].append(key[0])
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for prefix, losing in withdraw_by_prefix.items():
        groups[(_family_key(prefix), tuple(sorted(losing)))].append(prefix)
    for (_family, neighbors), prefixes in sorted(groups.items()):
        ordered = sorted(prefixes, key=_prefix_sort_key)
        for part in _chunks(ordered, chunk):
            verb = (
                f"withdraw route {part[0]}"
                if len(part) == 1
                else f"withdraw attributes next-hop self nlri {' '.join(part)}"
            )
            commands.append(
                Command(
                    text=f"{_selector(neighbors)}{verb}",
                    changes=tuple(((n, p), None) for p in part for n in neighbors),
                )
            )

    # announces: (attributes, prefix) -> neighbors
    announce: dict[tuple[ResolvedAttributes, str], list[str]] = defaultdict(list)
    for key, attrs in desired.items():
        if sent.get(key) != attrs:
            announce[(attrs, key[1])].append(key[0])
    agroups: dict[tuple[str, tuple[str, ...], ResolvedAttributes], list[str]] = defaultdict(list)
    for (attrs, prefix), gaining in announce.items():
        agroups[(_family_key(prefix), tuple(sorted(gaining)), attrs)].append(prefix)
    for (_family, neighbors, attrs), prefixes in sorted(
        agroups.items(), key=lambda item: (item[0][0], item[0][1], repr(item[0][2]))
    ):
        ordered = sorted(prefixes, key=_prefix_sort_key)
        rendered = render_attributes(attrs, local_as)
        for part in _chunks(ordered, chunk):
            verb = (
                f"announce route {part[0]} {rendered}"
                if len(part) == 1
                else f"announce attributes {rendered} nlri {' '.join(part)}"
            )
            commands.append(
                Command(
                    text=f"{_selector(neighbors)}{verb}",
                    changes=tuple(((n, p), attrs) for p in part for n in neighbors),
                )
            )
    return commands


def apply(rib: Rib, command: Command) -> None:
    """Record in ``rib`` what an acknowledged command changed."""
    for key, attrs in command.changes:
        if attrs is None:
            rib.pop(key, None)
        else:
            rib[key] = attrs


# -- reading back -----------------------------------------------------------------------

_ITEM = re.compile(r"\[[^\]]*\]|\([^)]*\)|\S+")


def _bracketed(value: str) -> list[str]:
    return value.strip("[]()").split()


def parse_adj_rib_out(
    lines: Iterable[str],
    local_as: int,
    *,
    all_neighbors: bool = False,
    problems: list[str] | None = None,
) -> Rib:
    """Parse ``show adj-rib out extensive`` lines (ExaBGP 5) into a RIB. Never raises.

    A line reads ``neighbor A local-ip L ... ipv4 unicast P next-hop N med M community [ .. ]
    large-community X as-path ( .. )``. A next-hop equal to the local-ip reads as "self".
    With ``all_neighbors`` every entry is keyed under ``"*"`` (routes sent without selector).
    Lines without a neighbor, prefix and next-hop are skipped. A route whose attributes do
    not parse (a MED that is not a number) is kept with ``as_path_prepend`` :data:`NOT_OURS`:
    it is there, so it must be withdrawn or re-announced, and its attributes equal no wish.
    Such lines are appended to ``problems`` when given.
    """
    rib: Rib = {}
    for line in lines:
        items = _ITEM.findall(line)
        fields: dict[str, str] = {}
        prefix: str | None = None
        i = 0
        while i < len(items):
            token = items[i]
            if token in ("ipv4", "ipv6") and i + 2 < len(items) and prefix is None:
                prefix = items[i + 2]
                i += 3
                continue
            if i + 1 < len(items):
                fields[token] = items[i + 1]
            i += 2
        neighbor = fields.get("neighbor")
        if prefix is None or neighbor is None or "next-hop" not in fields:
            continue
        try:
            prefix = str(ipaddress.ip_network(prefix, strict=False))
        except ValueError:
            continue
        next_hop = fields["next-hop"]
        if next_hop == fields.get("local-ip"):
            next_hop = "self"
        communities: list[str] = []
        for c in _bracketed(fields.get("community", "")):
            try:
                communities.append(normalize_community(c))
            except PlanError:
                communities.append(c)
        large = _bracketed(fields.get("large-community", ""))
        path = _bracketed(fields.get("as-path", ""))
        prepend = max(len(path) - 1, 0) if all(a == str(local_as) for a in path) else NOT_OURS
        key = (ALL_NEIGHBORS if all_neighbors else neighbor, prefix)
        try:
            med = _optional_int(fields.get("med"))
            local_preference = _optional_int(fields.get("local-preference"))
        except ValueError:
            if problems is not None:
                problems.append(line)
            rib[key] = ResolvedAttributes(next_hop=next_hop, as_path_prepend=NOT_OURS)
            continue
        rib[key] = ResolvedAttributes(
            next_hop=next_hop,
            med=med,
            local_preference=local_preference,
            communities=tuple(sorted(set(communities), key=_safe_sort_key)),
            large_communities=tuple(sorted(set(large), key=_safe_sort_key)),
            as_path_prepend=prepend,
        )
    return rib


def _optional_int(text: str | None) -> int | None:
    # isdigit, not int(): int() also takes "+7", " 7", "7_0" and non-ASCII digits
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def _safe_sort_key(value: str) -> tuple[int, ...]:
    try:
        return _community_sort_key(value)
    except ValueError:
        return (1 << 40,)


# -- ExaBGP configuration -------------------------------------------------------------------


def _quote_ok(value: str, what: str) -> str:
    if not value or any(ch in value for ch in ' \t\n;{}"\''):
        raise PlanError(f"{what} {value!r}: must be non-empty without spaces, quotes, ; {{ }}")
    return value


def render_config(settings: BgpSettings, relay_argv: Sequence[str], socket_path: str) -> str:
    """ExaBGP configuration for managed mode: one ``process`` (the relay), every neighbor."""
    run = " ".join(_quote_ok(a, "relay argument") for a in [*relay_argv, socket_path])
    lines = [
        "# generated by anycastd; do not edit (rewritten on every start)",
        "process anycastd-relay {",
        f"    run {run};",
        "    encoder json;",
        "}",
        "",
    ]
    for n in settings.neighbors:
        lines.append(f"neighbor {ipaddress.ip_address(n.address)} {{")
        lines.append(f"    description \"{_quote_ok(n.label, 'neighbor name')}\";")
        lines.append(f"    router-id {ipaddress.ip_address(settings.router_id)};")
        if n.local_address:
            lines.append(f"    local-address {ipaddress.ip_address(n.local_address)};")
        lines.append(f"    local-as {settings.local_as};")
        lines.append(f"    peer-as {n.peer_as};")
        lines.append(f"    hold-time {n.hold_time};")
        if n.md5_password:
            lines.append(f"    md5-password \"{_quote_ok(n.md5_password, 'md5_password')}\";")
        lines.append("    family {")
        lines.extend(f"        {f};" for f in n.effective_families)
        lines.append("    }")
        if settings.graceful_restart:
            lines.append("    capability {")
            lines.append(f"        graceful-restart {settings.graceful_restart};")
            lines.append("    }")
        lines.append("    api {")
        lines.append("        processes [ anycastd-relay ];")
        lines.append("        neighbor-changes;")
        lines.append("    }")
        lines.append("}")
        lines.append("")
    return "\n".join(lines)
