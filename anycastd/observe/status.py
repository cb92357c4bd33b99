"""The status document: what ``GET /status`` returns and ``anycastd status`` prints.

Rule: pure. :func:`build_status` reads no clock (wall and monotonic "now" are arguments) and
returns a new plain ``dict`` built from immutable inputs: a snapshot nobody else holds, safe
to serialise later or in another thread. :func:`render_text` turns a document (possibly
received as JSON from another version of anycastd) into a table for people.

The JSON schema is public API, pinned by ``tests/unit/data/snapshots/status_keys.txt``.
Times are ages in seconds (``*_seconds``), never monotonic stamps, which mean nothing
outside the process. Schema (``schema`` is bumped on an incompatible change)::

    {
      "schema": 1,
      "node": "edge1",                       # [global] node
      "version": "0.1.0",                    # anycastd version
      "time": 1764354823.123,                # unix time the document was built
      "summary": {"up": 1, "down": 0, "draining": 0, "maintenance": 0, "disabled": 0},
      "services": {
        "<name>": {
          "state": "up" | "down" | "draining" | "maintenance" | "disabled",
          "reason": "all 2 checks up",
          "since_seconds": 12.5,             # time in this state
          "policy": "all" | "any" | "at-least N",
          "maintenance": false,              # the flag (maintenance wins over other states)
          "draining": false,                 # the operator drain flag
          "announced": ["192.0.2.53/32"] | null,   # null: not known (no route information)
          "published": "bgp" | "none" | null,      # how its prefixes reach the network:
                                             # "none" without [bgp] (announced is then []);
                                             # null: not known
          "damping": null | {                # null: no damping configured
            "penalty": 0.0,
            "suppressed": false,
            "suppressed_for_seconds": null | 42.0   # remaining suppression
          },
          "checks": [
            {"name": "dns-udp", "state": "up" | "down", "changing": false,
             "last_ok": true | false | null, "streak": 3, "reason": "",
             "since_seconds": 60.0}
          ]
        }
      },
      "bgp": null | {                        # null: no BGP configured
        "peers": {
          "<label>": {"address": "10.0.0.1", "up": true, "state": "up", "reason": "",
                      "since_seconds": 30.0 | null}
        }
      },
      ...                                    # further sections the daemon adds (extra)
    }
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from anycastd import __version__
from anycastd.core.health import CheckHealth, ServiceHealth, ServiceState

__all__ = [
    "CORE_KEYS",
    "SCHEMA_VERSION",
    "PeerLike",
    "PeerTracker",
    "build_status",
    "format_age",
    "render_text",
]

SCHEMA_VERSION: Final = 1
#: Top-level keys every document has; ``extra`` sections may not replace them (``bgp`` is
#: the exception: it is given through ``extra`` and null when absent).
CORE_KEYS: Final = ("schema", "node", "version", "time", "summary", "services", "bgp")
_STATES: Final = tuple(s.value for s in ServiceState)


def _age(now: float, since: float) -> float:
    return round(max(0.0, now - since), 3)


def _check_doc(c: CheckHealth, mono_now: float) -> dict[str, Any]:
    return {
        "name": c.name,
        "state": c.state.value,
        "changing": c.changing,
        "last_ok": c.run_ok,
        "streak": c.run_len,
        "reason": c.reason,
        "since_seconds": _age(mono_now, c.since),
    }


def _service_doc(
    h: ServiceHealth, mono_now: float, announced: Iterable[str] | None, published: str | None
) -> dict[str, Any]:
    damping: dict[str, Any] | None = None
    if h.params.damping is not None:
        until = h.damping.suppressed_until
        remaining = _age(until, mono_now) if until is not None and mono_now < until else None
        damping = {
            "penalty": round(h.penalty(mono_now), 3),
            "suppressed": remaining is not None,
            "suppressed_for_seconds": remaining,
        }
    return {
        "state": h.state.value,
        "reason": h.reason,
        "since_seconds": _age(mono_now, h.since),
        "policy": str(h.params.policy),
        "maintenance": h.maintenance,
        "draining": h.draining,
        "announced": sorted(announced) if announced is not None else None,
        "published": published,
        "damping": damping,
        "checks": [_check_doc(c, mono_now) for c in h.checks],
    }


def _plain(value: object, where: str) -> Any:
    """A JSON-ready deep copy: mappings -> dict (str keys), sequences/sets -> list."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"status {where}: {value} is not a JSON number")
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_plain(v, where) for v in value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"status {where}: {type(value).__name__} is not JSON-ready")


def build_status(
    node: str,
    now_wall: float,
    services: Mapping[str, ServiceHealth],
    mono_now: float,
    extra: Mapping[str, object] | None = None,
    *,
    announced: Mapping[str, Iterable[str]] | None = None,
    published: Mapping[str, str] | None = None,
    version: str = __version__,
) -> dict[str, Any]:
    """The status document (schema in the module docstring).

    ``now_wall``: unix time (``time.time()``) for ``time``; ``mono_now``: the monotonic
    clock the health values were computed with, to turn their stamps into ages.
    ``extra``: further top-level sections (``bgp``, e.g. from :meth:`PeerTracker.section`,
    or ``addresses``, ``ipvs``...), deep-copied into JSON-ready values; a key in
    :data:`CORE_KEYS` other than ``bgp`` is a ValueError. ``announced``: per service, the
    prefixes this node announces now (a service missing from it reads ``null``).
    ``published``: per service, how its prefixes are published (``"bgp"``, ``"none"``);
    missing reads ``null``.
    """
    summary = dict.fromkeys(_STATES, 0)
    docs: dict[str, Any] = {}
    for name in sorted(services):
        h = services[name]
        summary[h.state.value] += 1
        docs[name] = _service_doc(
            h, mono_now, announced.get(name) if announced is not None else None,
            published.get(name) if published is not None else None,
        )
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "node": node,
        "version": version,
        "time": round(now_wall, 3),
        "summary": summary,
        "services": docs,
        "bgp": None,
    }
    for key, value in (extra or {}).items():
        if key in CORE_KEYS and key != "bgp":
            raise ValueError(f"status: extra section {key!r} would replace a core key")
        doc[key] = _plain(value, key)
    return doc


# --------------------------------------------------------------------------- BGP peers


class PeerLike(Protocol):
    """A BGP session state (``anycastd.bgp.speaker.PeerState`` fits)."""

    @property
    def address(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def up(self) -> bool: ...

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...


class PeerTracker:
    """Remembers since when each BGP session is in its up/down state (the speaker only
    reports the state). Feed it the speaker's ``on_peer_change`` with a monotonic time."""

    def __init__(self) -> None:
        self._peers: dict[str, tuple[PeerLike, float | None]] = {}

    def update(self, peer: PeerLike, now: float | None) -> None:
        """Record ``peer``'s state at monotonic ``now`` (None: state known, start not)."""
        label = peer.name or peer.address
        old = self._peers.get(label)
        since = now if old is None or old[0].up != peer.up else old[1]
        self._peers[label] = (peer, since)

    def forget(self, label: str) -> None:
        self._peers.pop(label, None)

    def section(self, mono_now: float) -> dict[str, Any]:
        """The ``bgp`` section of the status document."""
        return {
            "peers": {
                label: {
                    "address": p.address,
                    "up": p.up,
                    "state": p.state,
                    "reason": p.reason,
                    "since_seconds": None if since is None else _age(mono_now, since),
                }
                for label, (p, since) in sorted(self._peers.items())
            }
        }


# --------------------------------------------------------------------------- text


def format_age(seconds: object) -> str:
    """``"45s"``, ``"3m12s"``, ``"2h05m"``, ``"3d4h"``; ``"-"`` when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    out = []
    for r in (header, *rows):
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)]
        out.append("  ".join([*cells, r[-1]]).rstrip())
    return out


def _flags(svc: Mapping[str, Any]) -> str:
    marks = []
    if svc.get("maintenance") and svc.get("state") != "maintenance":
        marks.append("maintenance")
    if svc.get("draining") and svc.get("state") != "draining":
        marks.append("drain")
    damping = svc.get("damping")
    if isinstance(damping, Mapping) and damping.get("suppressed"):
        marks.append("suppressed")
    return f" [{', '.join(marks)}]" if marks else ""


def _peer_state(p: Mapping[str, Any]) -> str:
    if p.get("up"):
        return "up"
    state = str(p.get("state") or "down")
    return "down" if state == "down" else f"down ({state})"


def render_text(doc: Mapping[str, Any], *, checks: bool = False) -> str:
    """A compact report for people: a header line, one row per service (state, since,
    reason; flags in brackets), then the BGP peers. ``checks`` adds a row per check.
    Tolerates missing keys (a document from an older or newer anycastd)."""
    when = doc.get("time")
    stamp = (
        time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))
        if isinstance(when, int | float)
        else "?"
    )
    lines = [f"node {doc.get('node', '?')}  anycastd {doc.get('version', '?')}  {stamp}"]
    services = doc.get("services") or {}
    # a document from an anycastd that does not say how prefixes are published: no column
    via = any(isinstance(s, Mapping) and s.get("published") for s in services.values())
    rows: list[list[str]] = []
    for name, svc in services.items():
        announced = svc.get("announced")
        rows.append(
            [
                name,
                str(svc.get("state", "?")),
                format_age(svc.get("since_seconds")),
                *([str(svc.get("published") or "?")] if via else []),
                "?" if announced is None else (",".join(announced) or "-"),
                str(svc.get("reason", "")) + _flags(svc),
            ]
        )
        if checks:
            for c in svc.get("checks") or []:
                changing = " (changing)" if c.get("changing") else ""
                rows.append(
                    [
                        f"  {c.get('name', '?')}",
                        str(c.get("state", "?")),
                        format_age(c.get("since_seconds")),
                        *([""] if via else []),
                        "",
                        (
                            "no result yet"
                            if c.get("last_ok") is None
                            else f"{'ok' if c['last_ok'] else 'failed'} "
                            f"x{c.get('streak', '?')}{changing}"
                        )
                        + (f": {c['reason']}" if c.get("reason") else ""),
                    ]
                )
    lines.append("")
    if rows:
        header = ["SERVICE", "STATE", "SINCE", *(["PUBLISHED"] if via else []), "ANNOUNCED",
                  "REASON"]
        lines += _table(header, rows)
    else:
        lines.append("no services")
    bgp = doc.get("bgp")
    if isinstance(bgp, Mapping):
        peers = bgp.get("peers") or {}
        lines.append("")
        if peers:
            lines += _table(
                ["PEER", "ADDRESS", "STATE", "SINCE", "REASON"],
                [
                    [
                        label,
                        str(p.get("address", "")),
                        _peer_state(p),
                        format_age(p.get("since_seconds")),
                        str(p.get("reason") or ""),
                    ]
                    for label, p in peers.items()
                ],
            )
        else:
            lines.append("no BGP peers")
    real_servers = doc.get("real_servers")
    if isinstance(real_servers, Mapping) and real_servers:
        lines.append("")
        lines += _table(["REAL SERVER", "STATE"], [[k, str(v)] for k, v in real_servers.items()])
    sysctls = doc.get("sysctls")
    if isinstance(sysctls, Mapping) and sysctls:
        lines.append("")
        lines += _table(
            ["SYSCTL (not as needed)", "WANT", "HAVE"],
            [[k, str(v.get("want")), str(v.get("have"))] for k, v in sysctls.items()
             if isinstance(v, Mapping)],
        )
    return "\n".join(lines) + "\n"
