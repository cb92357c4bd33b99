"""ExaBGP text: the API commands that turn one RIB into another, adj-rib-out parsing, config.

Rule: pure (never awaits, no I/O, no clock); everything is a function of its arguments so it
is unit tested table by table. This is the only module that knows ExaBGP's text formats.

Theory of operation. The controller hands the speaker a set of :class:`Route`.
:func:`anycastd.core.rib.resolve` expands it into a *RIB*: ``(neighbor address, prefix) ->
ResolvedAttributes`` (normalised, so equal meaning compares equal). The speaker remembers the
RIB it last had acknowledged by ExaBGP (``sent``), or read back from ``show adj-rib out
extensive`` after a (re)connect. ``diff_rib(desired, sent)`` returns the commands that turn
one into the other, packing prefixes that share attributes, family and neighbor set into one
``announce attributes ... nlri``. Steady state: ``diff_rib(x, x) == []``: nothing is sent.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from anycastd.core.rib import PlanError, community_sort_key, family_key, normalize_community
from anycastd.model import ALL_NEIGHBORS, BgpSettings, Command, ResolvedAttributes, Rib, RibKey

__all__ = [
    "NLRI_CHUNK",
    "NOT_OURS",
    "apply_command",
    "diff_rib",
    "parse_adj_rib_out",
    "render_attributes",
    "render_config",
]

#: Prefixes per ``announce attributes ... nlri`` command. ExaBGP's cost per command grows
#: faster than its length: 10,000 /32s reached an FRR peer in 1.03 s in commands of 50
#: against 2.96 s in commands of 500 (bench/bench_bgp.py), and small commands let ExaBGP send
#: the first UPDATEs while the rest are still coming; 20 was no faster than 50 at 1,000
#: prefixes (bench/README_startup.md).
NLRI_CHUNK = 50

#: ``as_path_prepend`` of a route read back with a path anycastd would not send, or with
#: attributes that did not parse: unequal to every resolved wish (0..32), so the difference
#: is always acted on (withdrawn when unwanted, re-announced when wanted).
NOT_OURS = -1


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


def diff_rib(
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
        groups[(family_key(prefix), tuple(sorted(losing)))].append(prefix)
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
        agroups[(family_key(prefix), tuple(sorted(gaining)), attrs)].append(prefix)
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


def apply_command(rib: Rib, command: Command) -> None:
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
        return community_sort_key(value)
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
            # End-of-RIB only once anycastd has announced what is healthy (the speaker sends
            # it after the first controller pass of each session): sent at once, it would
            # make a graceful-restart helper drop the stale routes before they are re-sent
            lines.append("    manual-eor true;")
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
