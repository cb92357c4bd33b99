"""Services a reload removed, taken down the planned way: demote, drain, withdraw, clean up.

Rule: a reload that removes a service is a planned take-down (DESIGN.md, "Order, planned
take-down"), like maintenance or a drain. The controller keeps such a service *retiring*:
it stays in the desired state, with its last config and a state that does not announce
(its prefixes' demote and OSPF draining metric come from its own ``[bgp.draining]`` /
``[ospf.metric]``), so ``core.plan`` drains it exactly as it drains maintenance: demote,
``drain_time``, withdraw, IPVS, address. The service goes once a pass planned with it
observes none of its prefixes published and no drain running for them; what is left of it
(virtual services, addresses) is then removed like anything not desired.

Decisions (docs/operations.md, "A reload that removes a service"):

* Only a service that was serving at the reload (up, draining, maintenance or disabled,
  its checks passing) is drained, and only what of it is still published; one that was down
  or failing (checks, too few real servers) has nothing to drain to: whatever of it is
  still published is withdrawn at once, as for any failure.
* ``drain_time`` governs, whatever ``shutdown`` says: ``shutdown`` is the policy of a stop;
  a removal is planned like maintenance. A stop during the drain continues it (the drain
  keeps its start): the retiring service stops as ``drain-then-withdraw`` (``keep`` would
  leave a route that no config owns).
* The removed service's checks stop with the reload: the drain runs on the health (its own
  and its real servers') seen at the reload, for at most ``drain_time``.
* A later reload that brings back a service of the same identity (its prefixes, checks and
  real servers' checks; under any name) cancels the retirement: the service continues the
  health it had (no withdraw/announce flap; the route goes back to its state's attributes).
* A prefix that a service of the new config declares is the new owner's at once, and the
  retiring service lets go of it: one owner per prefix (two owners would make it a shared
  prefix that neither config declared), and the prefix is then exactly a prefix that moved
  to another service in one reload. A retiring service left with no prefix goes.
* A new config that reuses the name for another service ends the retirement at once (what
  the new one does not declare is withdrawn, as when a service's prefixes change): one
  name is one service in logs, metrics and status. So does a new service with the same
  IPVS fwmark: one virtual service has one owner.
* A ``[real_server]`` service publishes nothing to drain: it goes at once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from anycastd.config import Config, ServiceConfig
from anycastd.core.desired import Desired, RealServerKey, compute
from anycastd.core.health import ServiceHealth, ServiceState
from anycastd.core.plan import ControllerState, Observed
from anycastd.observe.logs import event

__all__ = ["REASON", "Retiree", "Retirements", "same_identity"]

log = logging.getLogger("anycastd.controller")

#: the ``reason`` /status shows for a retiring service, and the ``cause=`` of its actions
REASON = "reload: removed from the config; draining before its withdraw"

#: states at the reload from which a removal is planned work (a drain)
_PLANNED = (ServiceState.UP, ServiceState.DRAINING, ServiceState.MAINTENANCE,
            ServiceState.DISABLED)


def same_identity(a: ServiceConfig, b: ServiceConfig) -> bool:
    """Same prefixes, checks and real servers' checks: the same service, whatever its name
    (the health of one is the health of the other)."""
    return (set(a.prefixes) == set(b.prefixes) and a.checks == b.checks
            and _real_server_checks(a) == _real_server_checks(b))


def _real_server_checks(svc: ServiceConfig) -> dict[tuple[str, int | None], object]:
    """(address, port) -> checks of each real server: their health is carried too, so they
    are part of the identity (weights and the like are not)."""
    if svc.ipvs is None:
        return {}
    return {(str(rs.address), rs.port): rs.checks for rs in svc.ipvs.real_servers}


@dataclass(frozen=True)
class Retiree:
    """One removed service being taken down. ``service``: what is drained (its last config,
    without the prefixes the new config claims, stopping as ``drain-then-withdraw``);
    ``original``: as it was configured (its identity, for a re-add)."""

    service: ServiceConfig
    original: ServiceConfig
    #: its state at the reload; ``planned``: it was serving then (a drain, not a failure)
    state: ServiceState
    planned: bool
    since: float
    real_servers: Mapping[RealServerKey, bool] = field(default_factory=dict)
    #: its health and its real servers' health at the reload (carried by a re-add)
    health: ServiceHealth | None = None
    rs_health: Mapping[str, ServiceHealth] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.service.name


class Retirements:
    """The controller's retiring services (see the module docstring). Not thread-safe;
    read and changed on the event loop only."""

    def __init__(self) -> None:
        self._by_name: dict[str, Retiree] = {}
        #: called with the name of each service that has gone (its metric series go too)
        self.forget: Callable[[str], None] | None = None
        # the last plain compute: (config, (states, real servers up, failing), result)
        self._memo: tuple[Config, tuple[object, ...], Desired] | None = None

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Retiree]:
        return iter(sorted(self._by_name.values(), key=lambda r: r.name))

    # ---- a reload

    def reload(
        self,
        old: Config,
        new: Config,
        *,
        now: float,
        states: Mapping[str, ServiceState],
        real_servers_up: Mapping[RealServerKey, bool],
        failing: Collection[str] = (),
        renames: Mapping[str, str] | None = None,
        health: Mapping[str, ServiceHealth] | None = None,
        rs_health: Mapping[str, ServiceHealth] | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> dict[str, Retiree]:
        """Apply a reload from ``old`` to ``new`` (call before the new health replaces the
        old: ``states``, ``real_servers_up``, ``failing``, ``health`` and ``rs_health`` are
        the old config's; ``forget``: see the attribute). Returns the retirements a re-add
        cancelled: new service name -> the retiree whose health it continues."""
        renames = renames or {}
        if forget is not None:
            self.forget = forget
        added = [s for name, s in sorted(new.services.items())
                 if name not in old.services and name not in renames]
        revived: dict[str, Retiree] = {}
        for svc in added:
            matches = [r for r in self._by_name.values() if same_identity(r.original, svc)]
            if len(matches) != 1:
                continue
            r = matches[0]
            if sum(same_identity(r.original, a) for a in added) != 1:
                continue  # not one to one: nothing is carried (as for a rename)
            revived[svc.name] = self._by_name.pop(r.name)
            event(log, "retire_cancelled", service=r.name, to=svc.name, cause="reload",
                  detail="the same service is back: its drain ends, no withdraw")
        claimed = {p for s in new.services.values() for p in s.prefixes}
        for name in sorted(set(old.services) - set(new.services) - set(renames.values())):
            svc = old.services[name]
            if svc.real_server is not None:
                continue  # a director's VIP on this node: nothing published to drain
            state = states.get(name, ServiceState.DOWN)
            # DISABLED: a drain that ``disabled = true`` started may still run (it ends as
            # it would have); a disabled service with nothing published just goes
            planned = state in _PLANNED and name not in failing
            rs = {k: v for k, v in real_servers_up.items() if k[0] == name}
            prefix = f"{name}/"
            self._by_name[name] = Retiree(
                service=svc.model_copy(update={"shutdown": "drain-then-withdraw"}),
                original=svc, state=state, planned=planned, since=now, real_servers=rs,
                health=(health or {}).get(name),
                rs_health={k: v for k, v in (rs_health or {}).items()
                           if k.startswith(prefix)},
            )
            event(log, "service_retiring", service=name, cause="reload",
                  prefixes=[str(p) for p in svc.prefixes], drain_time=svc.drain_time,
                  planned=planned,
                  detail="removed from the config: demote, drain, then withdraw" if planned
                  else "removed from the config while not serving: withdrawn at once")
        marks = {s.ipvs.fwmark for s in new.services.values()
                 if s.ipvs is not None and s.ipvs.protocol == "fwmark"}
        for name, r in sorted(self._by_name.items()):
            if name in new.services:
                self._end(name, "the new config reuses the name for another service")
                continue
            ipvs = r.service.ipvs
            if ipvs is not None and ipvs.protocol == "fwmark" and ipvs.fwmark in marks:
                # one virtual service, one owner (as for a prefix)
                self._end(name, "the new config uses its fwmark for another service")
                continue
            keep = tuple(p for p in r.service.prefixes if p not in claimed)
            if not keep:
                self._end(name, "every prefix of it is declared by the new config")
            elif keep != r.service.prefixes:
                self._by_name[name] = dataclasses.replace(
                    r, service=r.service.model_copy(update={"prefixes": keep}))
                event(log, "retire_narrowed", service=name, cause="reload",
                      released=sorted(str(p) for p in set(r.service.prefixes) - set(keep)),
                      detail="the new config declares these prefixes: the new owner "
                      "takes them at once")
        return revived

    def _end(self, name: str, why: str) -> None:
        del self._by_name[name]
        event(log, "retire_cancelled", service=name, cause="reload", detail=why)

    # ---- what the controller plans with

    def config(self, config: Config) -> Config:
        """``config`` with the retiring services added (their names are not in it)."""
        if not self._by_name:
            return config
        services = {**config.services, **{r.name: r.service for r in self._by_name.values()}}
        return config.model_copy(update={"services": services})

    def desired(
        self,
        config: Config,
        states: Mapping[str, ServiceState],
        real_servers_up: Mapping[RealServerKey, bool],
        failing: Collection[str],
    ) -> Desired:
        """``core.desired.compute`` over ``config`` and the retiring services: a planned
        one in a state that does not announce and does not fail (it drains), any other as
        DOWN (withdrawn at once). A planned one shows as DRAINING."""
        if not self._by_name:
            # compute is pure (~12 ms at 1,000 prefixes): again only when its inputs
            # changed; most passes (timer, drift, reconnect, read-back) see the same ones
            inputs = (dict(states), dict(real_servers_up), frozenset(failing))
            memo = self._memo
            if memo is not None and memo[0] is config and memo[1] == inputs:
                return memo[2]
            desired = compute(config, inputs[0], inputs[1], failing=inputs[2])
            self._memo = (config, inputs, desired)
            return desired
        states = dict(states)
        up = dict(real_servers_up)
        failing = set(failing)
        for r in self._by_name.values():
            # DISABLED: no route, not failing, and no virtual service once drained
            states[r.name] = ServiceState.DISABLED if r.planned else ServiceState.DOWN
            up.update(r.real_servers)
            if not r.planned:
                failing.add(r.name)
        desired = compute(self.config(config), states, up, failing=failing)
        draining = {r.name: r.state for r in self._by_name.values() if r.planned}
        shown = tuple(
            dataclasses.replace(s, state=ServiceState.DRAINING, health_state=draining[s.name])
            if s.name in draining else s
            for s in desired.services
        )
        return dataclasses.replace(desired, services=shown)

    def settle(self, observed: Observed, state: ControllerState) -> list[str]:
        """After a pass planned with the retiring services: those of which ``observed``
        shows no prefix published and ``state`` no drain go (``forget`` is called with
        each name). Returns their names."""
        if not self._by_name:
            return []
        published = ({r.prefix for r in observed.announced}
                     | {r.prefix for r in observed.ospf} | {p for p, _ in state.drains})
        gone = [name for name, r in sorted(self._by_name.items())
                if not any(str(p) in published for p in r.service.prefixes)]
        for name in gone:
            r = self._by_name.pop(name)
            event(log, "service_retired", service=name, cause="reload",
                  planned=r.planned, detail="withdrawn: its virtual services and "
                  "addresses go now")
            if self.forget is not None:
                self.forget(name)
        return gone

    # ---- what others show

    def shown_health(self) -> dict[str, ServiceHealth]:
        """Per retiring service with a health: that health as /status shows it (a planned
        one DRAINING since the reload)."""
        out: dict[str, ServiceHealth] = {}
        for r in self:
            if r.health is None:
                continue
            if r.planned:
                out[r.name] = dataclasses.replace(
                    r.health, state=ServiceState.DRAINING, reason=REASON, since=r.since)
            else:
                out[r.name] = dataclasses.replace(
                    r.health, reason="reload: removed from the config; withdrawn")
        return out

    def drain_times(self) -> list[float]:
        """The drain times of the planned retirements (a stop continues them)."""
        return [r.service.drain_time for r in self if r.planned]
