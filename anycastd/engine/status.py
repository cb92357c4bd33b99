"""The daemon's ``/status`` document: its parts gathered and handed to ``build_status``.

Rule: reads the daemon's parts, never changes them. The document's shape, schema and text
rendering live in :mod:`anycastd.observe.status`; this module adds the daemon's sections.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from anycastd.actuators.sysctl import SysctlDrift
from anycastd.config import Config
from anycastd.core.health import ServiceHealth
from anycastd.engine.controller import Controller
from anycastd.engine.world import World
from anycastd.observe.status import PeerTracker, build_status


def daemon_status(
    config: Config,
    *,
    services: Mapping[str, ServiceHealth],
    real_servers: Mapping[str, ServiceHealth],
    controller: Controller | None,
    world: World | None,
    peers: PeerTracker,
    sysctl_drift: Sequence[SysctlDrift],
    now: float,
) -> dict[str, object]:
    """The status document from the services' and real servers' health, the controller's
    last plan and observation, the BGP peers and the sysctl drift; ``now`` is the daemon's
    monotonic clock."""
    extra: dict[str, object] = {}
    announced: dict[str, list[str]] | None = None
    if config.bgp is not None:
        extra["bgp"] = peers.section(now)
    ctl = controller
    if ctl is not None and ctl.retiring:
        # a service a reload removed shows (draining) until it is withdrawn and gone
        services = {**ctl.retiring.shown_health(), **services}
        config = ctl.retiring.config(config)
    methods = {name: published(config, world, name) for name in config.services}
    if ctl is not None and ctl.last_observed is not None:
        obs = ctl.last_observed
        routes = {r.prefix for r in obs.announced} | {r.prefix for r in obs.ospf}
        announced = {
            name: sorted(str(p) for p in svc.prefixes if str(p) in routes)
            for name, svc in config.services.items()
        }
    if all(m == "none" for m in methods.values()):
        # nothing speaks for this node: whatever the controller remembers, it is not
        # announced anywhere
        announced = {name: [] for name in config.services}
    if ctl is not None and ctl.last_plan is not None and ctl.last_observed is not None:
        extra["prefixes"] = dict(ctl.last_plan.phases)
    if sysctl_drift:
        extra["sysctls"] = {d.key: {"want": d.expected, "have": d.actual}
                            for d in sysctl_drift}
    rs = real_servers
    if rs:
        extra["real_servers"] = {n: h.state.value for n, h in sorted(rs.items())}
    return build_status(
        config.global_.node, time.time(), services, now,
        extra, announced=announced,
        published=methods,
    )


def published(config: Config, world: World | None, service: str | None = None) -> str:
    """How ``service``'s prefixes reach the network: ``bgp`` with a ``[bgp]`` section,
    ``ospf`` with its own ``[ospf]`` table, ``bgp+ospf`` with both (a dry run says
    ``dry-run``: planned, never sent), else ``none``."""
    svc = config.services.get(service) if service is not None else None
    parts = [name for name, on in (("bgp", config.bgp is not None),
                                   ("ospf", svc is not None and svc.ospf is not None)) if on]
    if not parts:
        return "none"
    return "dry-run" if world is not None and world.dry_run else "+".join(parts)
