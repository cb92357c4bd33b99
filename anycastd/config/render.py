"""Output of a validated ``Config``: the effective configuration as JSON (``dump``) and the
one-screen summary for people (``summarize``). Reads the model only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from anycastd.durations import format_duration

if TYPE_CHECKING:
    from anycastd.config.schema import Config


def dump(config: Config) -> str:
    """The effective configuration (all defaults and inheritance applied) as JSON.

    Durations are float seconds, addresses and paths strings, secrets masked.
    """
    return json.dumps(config.model_dump(mode="json", by_alias=True), indent=2) + "\n"


def summarize(config: Config) -> str:
    """A one-screen description for people (``anycastd check-config``)."""
    d = format_duration
    g = config.global_
    lines = [
        f"node {g.node}: interface {g.interface}, reconcile every {d(g.reconcile_interval)}",
        "files: " + (", ".join(str(s) for s in config.sources) or "(none)"),
    ]
    if config.api.enabled:
        metrics = " with /metrics" if config.metrics.enabled else ""
        lines.append(f"api: {config.api.listen}{metrics}")
    else:
        lines.append("api: disabled")
    bgp = config.bgp
    if bgp is None:
        lines.append("bgp: not configured")
    else:
        head = [f"bgp: {bgp.mode}"]
        if bgp.local_as is not None:
            head.append(f"AS {bgp.local_as}")
        if bgp.router_id is not None:
            head.append(f"router-id {bgp.router_id}")
        head.append(f"next-hop {bgp.next_hop}")
        lines.append(", ".join(head))
        for n in bgp.neighbors:
            local = f" from {n.local_address}" if n.local_address else ""
            lines.append(
                f"  neighbor {n.name}: {n.address} AS {n.peer_as}{local}, "
                f"hold {d(n.hold_time)}, {', '.join(n.families)}"
            )
    lines.append(f"services: {len(config.services)}")
    for name, s in sorted(config.services.items()):
        state = " (disabled)" if s.disabled else ""
        source = config.service_sources.get(name)
        lines.append(
            f"  {name}{state}: {', '.join(str(p) for p in s.prefixes)}; "
            f"{len(s.checks)} check{'s' if len(s.checks) != 1 else ''} "
            f"({', '.join(c.type for c in s.checks) or '-'}), policy {s.policy}"
            + (f"; from {source.name}" if source else "")
        )
        if s.ipvs is not None:
            v = s.ipvs
            what = f"fwmark {v.fwmark}" if v.protocol == "fwmark" else f"{v.protocol}/{v.port}"
            modes = ",".join(sorted({rs.forwarding for rs in v.real_servers}))
            lines.append(
                f"    ipvs {what} {v.scheduler}: {len(v.real_servers)} real servers ({modes}), "
                f"min healthy {v.min_healthy}"
            )
        if s.real_server is not None:
            r = s.real_server
            tunnel = f" ({r.tunnel})" if r.tunnel else ""
            lines.append(f"    real server for a {r.forwarding}{tunnel} director: VIP on "
                         f"{config.global_.interface}, never announced")
        if s.damping is not None:
            lines.append(
                f"    damping: suppress {s.damping.suppress}, reuse {s.damping.reuse}, "
                f"half-life {d(s.damping.half_life)}"
            )
    return "\n".join(lines) + "\n"
