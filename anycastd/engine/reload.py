"""Reload (SIGHUP) and the health each service starts with, at start and after a reload.

Rule: validate first, then apply only the difference; a rejected reload changes nothing.

The new config is validated first; an invalid one is logged with every problem and the old
one keeps running. A valid one replaces the scheduler; services whose config is unchanged
keep their health value exactly (counters, damping), changed services are ``reconfigure``d
(checks kept by name keep their counters), new ones start fresh. A service's identity is its
prefixes and checks, not its name: a renamed service keeps its health, its real servers'
health and its operator flags (``reload_carried`` in the log), so a rename is not a
withdraw. A removed service is taken down the planned way (demote, drain, withdraw) by the
controller (:mod:`anycastd.engine.retire`); one that comes back before it is gone continues
its health (:func:`revive`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anycastd.actuators.frr import OspfSettings
from anycastd.config import Config, ConfigError, ServiceConfig, load_config
from anycastd.core.health import (
    CheckParams,
    CheckState,
    DampingParams,
    Policy,
    ServiceHealth,
    ServiceParams,
    ServiceState,
    carried,
)
from anycastd.engine.backends import Backends
from anycastd.engine.flags import ApiFlags
from anycastd.engine.probes import check_spec
from anycastd.engine.retire import Retiree, same_identity
from anycastd.engine.scheduler import CheckSpec
from anycastd.engine.world import bgp_settings, ospf_settings
from anycastd.errors import ActuatorError
from anycastd.observe.logs import event

if TYPE_CHECKING:
    from anycastd.engine.daemon import Daemon

log = logging.getLogger("anycastd")

#: [global] keys read once at start: a reload that changes them says so.
RESTART_ONLY = ("state_dir", "runtime_dir", "log_format", "log_level",
                "max_concurrent_checks", "manage_sysctls")


def service_params(svc: ServiceConfig) -> ServiceParams:
    damping = None
    if svc.damping is not None:
        d = svc.damping
        damping = DampingParams(
            penalty=d.penalty,
            half_life=d.half_life,
            suppress=d.suppress,
            reuse=d.reuse,
            max_suppress=d.max_suppress,
        )
    return ServiceParams(
        name=svc.name,
        checks=tuple(CheckParams(c.name, rise=c.rise, fall=c.fall) for c in svc.checks),
        policy=Policy.parse(svc.policy),
        start_state=CheckState.UP if svc.start_state == "up" else CheckState.DOWN,
        damping=damping,
        disabled=svc.disabled,
    )


def check_specs(svc: ServiceConfig) -> list[CheckSpec]:
    return [check_spec(svc.name, c) for c in svc.checks]


def renamed(old_config: Config | None, new_config: Config) -> dict[str, str]:
    """New name -> old name of every service a reload renamed.

    A service's identity is what it publishes and how its health is told: its prefixes, its
    checks and its real servers' checks, not its name. A name that appears takes over the
    health of a name that went away when both have the same identity; a match that is not
    one to one carries nothing (there is no telling which health is whose)."""
    if old_config is None:
        return {}
    old, new = old_config.services, new_config.services
    gone = [svc for name, svc in old.items() if name not in new]
    added = [svc for name, svc in new.items() if name not in old]
    out: dict[str, str] = {}
    for svc in added:
        matches = [o for o in gone if same_identity(o, svc)]
        if len(matches) == 1 and sum(same_identity(matches[0], a) for a in added) == 1:
            out[svc.name] = matches[0].name
    return out


def revive(
    revived: Mapping[str, Retiree],
    new: Config,
    health: dict[str, ServiceHealth],
    rs_health: Mapping[str, ServiceHealth],
    renames: Mapping[str, str],
    *,
    now: float,
) -> tuple[Mapping[str, ServiceHealth], Mapping[str, str]]:
    """A re-added service whose retirement a reload cancelled continues the health it had
    (updates ``health``): no withdraw/announce flap. Returns the real servers' previous
    health and the renames to carry theirs with (the retiree's name -> the new one)."""
    rs = dict(rs_health)
    names = dict(renames)
    for name, r in revived.items():
        svc = new.services[name]
        if r.health is not None:
            health[name] = carried(r.health, service_params(svc), now,
                                   unchanged=r.original == svc)
        rs.update(r.rs_health)
        if r.name != name:
            names[name] = r.name
    return rs, names


def carry_over(
    old_config: Config | None,
    old_health: Mapping[str, ServiceHealth],
    new_config: Config,
    now: float,
) -> dict[str, ServiceHealth]:
    """The health each service of ``new_config`` starts with (see the module docstring);
    a renamed service (:func:`renamed`) continues the health of its old name."""
    old = old_config.services if old_config is not None else {}
    was = renamed(old_config, new_config)
    return {
        name: carried(old_health.get(was.get(name, name)), service_params(svc), now,
                      unchanged=name not in was and old.get(name) == svc)
        for name, svc in new_config.services.items()
    }


def freeze_heap() -> None:
    """Move what start-up (or a reload) built into the GC's permanent generation.

    The config, probes and health values live for the daemon's life; once frozen, full GC
    passes stop walking them. Without it a full pass stalled the loop by 100-230 ms at
    10,000 checks; with it p99 lateness stayed under 6 ms (bench/README_checks.md)."""
    gc.collect()
    gc.freeze()


async def reload(daemon: Daemon) -> None:
    """Re-read ``daemon.config_path`` and apply it to the running daemon (see the module
    docstring), or reject it and keep running on the old config."""
    # sd_notify (RELOADING=1 ... READY=1) is the daemon's, around this call
    path = daemon.config_path
    if path is None:  # a config built in memory (demo, tests) has nothing to re-read
        return
    try:
        new = load_config(path)
    except ConfigError as exc:
        _reject(daemon, path, len(exc.issues), str(exc))
        return
    world = daemon.world
    had_ipvs = world is not None and world.ipvs is not None
    wants_ipvs = any(s.ipvs is not None for s in new.services.values())
    if (new.bgp is None) != (daemon.config.bgp is None) or (
        new.global_.interface != daemon.config.global_.interface
    ) or (wants_ipvs and not had_ipvs):
        _reject(daemon, path, 1, "adding or removing [bgp], the first [ipvs] service, or "
                "changing global.interface needs a restart")
        return
    # the real-server and policy-routing actuators exist only if configured at start
    if (any(s.real_server is not None for s in new.services.values())
            and (world is None or world.node is None)) or (
            any(s.policy_routing is not None for s in new.services.values())
            and (world is None or world.policy is None)):
        _reject(daemon, path, 1, "the first [real_server] or [policy_routing] service needs "
                "a restart")
        return
    ospf = ospf_settings(_publishing(daemon, new))
    if ospf is not None and world is not None and world.ospf is None:
        _reject(daemon, path, 1, "the first [ospf] service needs a restart")
        return
    if ospf is not None and world is not None and world.ospf is not None:
        fixed = ospf_restart_only(world.ospf.settings, ospf)
        if fixed:
            _reject(daemon, path, len(fixed), f"changing {', '.join(fixed)} needs a restart "
                    "(the routing daemon's configuration is named and reached by them)")
            return
    # a world without BGP settings (no [bgp], or a dry run: NullSpeaker) has none to update
    if world is not None and world.bgp_settings is not None and new.bgp:
        settings = bgp_settings(new.bgp)
        try:
            await world.speaker.update_settings(settings)
        except ActuatorError as exc:
            _reject(daemon, path, 1, f"[bgp]: {exc.message}")
            return
        world.bgp_settings = settings
        daemon.metrics.sync_peers({p.name or p.address: p.up
                                   for p in world.speaker.peers.values()})
        if daemon.controller is not None:
            daemon.controller.bgp_settings = settings
    # Nothing can reject the reload any more, and what follows has no await in it. New OSPF
    # settings wait for the pass in progress to end (its OSPF call may run in the worker
    # thread), so no pass plans with one config and applies with the other's settings.
    if (ospf is not None and world is not None and world.ospf is not None
            and ospf != world.ospf.settings):
        if daemon.controller is not None:
            await daemon.controller.between_passes()
        world.ospf.settings = ospf  # the planner withdraws what the new config drops
    changed = sorted(
        n for n in set(new.services) | set(daemon.config.services)
        if new.services.get(n) != daemon.config.services.get(n)
    )
    for name in changed:  # the cause= of the actions this reload leads to
        daemon.causes.note(name, "reload: the service's config changed"
                           if name in new.services else "reload: removed from the config")
    now = daemon.clock.now()
    renames = renamed(daemon.config, new)
    health = carry_over(daemon.config, daemon.scheduler.services, new, now)
    rs_previous: Mapping[str, ServiceHealth] = daemon.rs_health()
    rs_renames: Mapping[str, str] = renames
    ctl = daemon.controller
    if ctl is not None:  # removed services retire: demote, drain, withdraw (engine.retire)
        revived = ctl.retire(daemon.config, new, renames=renames,
                             health=daemon.scheduler.services, rs_health=rs_previous,
                             forget=daemon.metrics.forget_service)
        rs_previous, rs_renames = revive(revived, new, health, rs_previous, renames, now=now)
    old_config, daemon.config = daemon.config, new
    daemon.scheduler.reload(daemon.specs(), health)
    backends = Backends(new)
    for name in set(daemon.backends.keys) - set(backends.keys):
        daemon.metrics.forget_service(name)  # a removed real server's check series
    daemon.backends = backends
    if daemon.rs_scheduler is not None:
        daemon.rs_scheduler.reload(
            daemon.backends.specs,
            daemon.backends.initial(rs_previous, now, rs_renames),
        )
    daemon.flags.reconfigure(new, renames)
    for to, was in sorted(renames.items()):
        flags = daemon.flags.api.get(to, ApiFlags())
        fields: dict[str, Any] = {"from": was, "to": to}  # "from" is a keyword
        event(log, "reload_carried", state=health[to].state.value,
              real_servers=sum(1 for k in daemon.backends.keys.values() if k[0] == to),
              maintenance=flags.maintenance, draining=flags.draining,
              detail="same prefixes and checks: health and operator flags carried over",
              **fields)
    daemon.metrics.sync(health)
    if ctl is not None:  # a retiring service reads draining until it goes
        daemon.metrics.set_service_states(
            {r.name: ServiceState.DRAINING if r.planned else r.state for r in ctl.retiring})
    daemon.metrics.reload(True, time.time())
    daemon.reload_ok = True
    if daemon.controller is not None:
        daemon.controller.reconfigure(new)
    stale = [f"global.{k}" for k in RESTART_ONLY
             if getattr(new.global_, k) != getattr(old_config.global_, k)]
    if new.api != old_config.api or new.metrics != old_config.metrics:
        stale.append("[api]/[metrics]")
    if stale:
        event(log, "reload_needs_restart", level=logging.WARNING, keys=stale,
              detail="accepted, but these take effect at the next restart")
    freeze_heap()
    event(log, "reloaded", config=str(path), changed=changed,
          unchanged=len(new.services) - len([n for n in changed if n in new.services]))


def _publishing(daemon: Daemon, new: Config) -> Config:
    """``new`` plus the services it removes and those still retiring: for the OSPF settings,
    so a retiring service's route keeps its route-map entry (its metrics) while it drains
    (the entries of metrics no service uses any more go at a later reload)."""
    extra = {n: s for n, s in daemon.config.services.items() if n not in new.services}
    if daemon.controller is not None:
        extra.update((r.name, r.service) for r in daemon.controller.retiring
                     if r.name not in new.services)
    if not extra:
        return new
    return new.model_copy(update={"services": {**extra, **new.services}})


#: The OSPF settings a reload may change: the rest name or reach what the routing daemon
#: holds (the route-map, the instance, the sockets), and a change would orphan what was
#: published under the old ones.
OSPF_RELOADABLE = ("metrics", "metric_type", "timeout", "withdraw_wait")


def ospf_restart_only(old: OspfSettings, new: OspfSettings) -> list[str]:
    """The ``ospf.KEY`` names of the settings ``new`` changes that need a restart."""
    return [f"ospf.{f.name}" for f in dataclasses.fields(OspfSettings)
            if f.name not in OSPF_RELOADABLE and getattr(old, f.name) != getattr(new, f.name)]


def _reject(daemon: Daemon, path: Path, problems: int, detail: str) -> None:
    daemon.reload_ok = False
    daemon.metrics.reload(False, time.time())
    event(log, "reload_rejected", level=logging.ERROR, config=str(path),
          problems=problems, detail=detail)
