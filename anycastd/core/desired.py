"""Desired state: what this node should hold, computed from the config and the health verdicts.

Rule: pure. No I/O, no clock, no await; every value is immutable. ``compute`` is a function
of the config, the service states and the real-server health, nothing else.

What a service asks for, by state
---------------------------------
=============  =============================  =========================  ==============
state          BGP route                      IPVS                       OSPF metric
=============  =============================  =========================  ==============
UP             ``bgp.up`` attributes          live weights               ``metric.up``
DRAINING       ``bgp.draining`` attributes    live weights               ``metric.draining``
MAINTENANCE    ``bgp.maintenance`` (default   idle (live if announced)   ``metric.maintenance``
               ``announce = false``)
DOWN           none                           idle                       none
DISABLED       none                           no virtual service         none
=============  =============================  =========================  ==============

OSPF. Whether a state publishes at all is the state's ``announce`` (the ``bgp.<state>``
table, with or without ``[bgp]``): one decision drives the address, IPVS, BGP and OSPF. A
prefix with an owner that has ``[ospf]`` is published into OSPF with that owner's metric for
its state (``ospf_route``); its demote (``ospf_demote``) is the draining metric.

``announce = false`` in a state's attributes means no route in that state. *Live* weights:
a healthy real server gets its configured weight; a failing one weight 0
(``on_backend_fail = "weight0"``) or no entry (``"remove"``). *Idle*: every real server at
weight 0 (``weight0``) or none at all (``remove``); the virtual service itself stays, so
connections still open finish.

Backend dependency. A service with IPVS and ``min_healthy > 0`` depends on its backends:
when fewer than ``min_healthy`` real servers are usable (healthy with a configured weight
> 0), :func:`effective_state` turns UP and DRAINING into DOWN (the service must not attract
traffic it cannot serve), and no state announces. The health side may show the effective
state; the controller uses it.

Addresses. A prefix that is a host route (/32, /128) is put on the interface as that host
address while the prefix is announced; a wider prefix (e.g. a /24 served by a router behind
the node, or by a fwmark IPVS service) is announced but never put on the interface.

IPVS virtual services. tcp/udp: one virtual service per host prefix (address, port); a wider
prefix gets none. fwmark: one virtual service per address family the prefixes use. A virtual
service lists the real servers of its family (``tunnel`` forwarding may cross families).

Guards. Each prefix records, per owning service, the virtual services that must have at least
``min_healthy`` real servers with weight > 0 before the prefix may be announced: for a host
prefix of a tcp/udp service its own virtual service; for a fwmark service the one of the
prefix's family; for a wider prefix of a tcp/udp service every virtual service of its family.

Shared prefixes (``shared_prefixes = true`` in every owner). One prefix, several services:

* announced while ANY owner's state announces it, with the attributes of the best of those
  owners' states (UP > DRAINING > MAINTENANCE; ties: the first owner by name);
* its address is on the interface while it is announced (i.e. while any owner needs it);
* it may be announced when the guards of ANY announcing owner hold;
* the demote route (before a withdraw) uses the draining attributes of the first owner by
  name whose draining state announces; the drain time is the longest of the owners';
* shutdown: ``keep`` if any owner keeps, else ``drain-then-withdraw`` if any owner drains,
  else ``withdraw``.

Real-server role (``[real_server]``, :mod:`anycastd.core.realserver`): such a service's
prefixes are a director's VIPs; its host addresses follow its state as above, but it has
no route (with ``[bgp]`` or without), and ``node`` lists what the kernel needs first.

Inputs not given fail closed: a service missing from ``states`` is DOWN, a real server
missing from ``real_servers_up`` is down.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, TypeAlias

from anycastd.config import BgpStateAttrs, Config, IpvsConfig, ServiceConfig
from anycastd.config import RealServer as ConfigRealServer
from anycastd.core.health import ServiceState
from anycastd.core.policyroute import ServicePolicy
from anycastd.core.policyroute import from_config as policies_from_config
from anycastd.core.realserver import NodeNeeds, needs
from anycastd.model import (
    Attributes,
    HostAddress,
    OspfRoute,
    RealServer,
    Route,
    ServiceSpec,
    VirtualService,
)

__all__ = [
    "Desired",
    "Guard",
    "PrefixIntent",
    "RealServerKey",
    "ServiceIntent",
    "ShutdownPolicy",
    "compute",
    "effective_state",
    "real_server_key",
    "route_for",
]

ShutdownPolicy: TypeAlias = Literal["withdraw", "drain-then-withdraw", "keep"]

#: (service name, real server address as ``str(ip_address)``, port; 0 for fwmark services)
RealServerKey: TypeAlias = tuple[str, str, int]

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Which state wins for a shared prefix: lower is better.
_RANK: dict[ServiceState, int] = {
    ServiceState.UP: 0,
    ServiceState.DRAINING: 1,
    ServiceState.MAINTENANCE: 2,
    ServiceState.DOWN: 3,
    ServiceState.DISABLED: 4,
}

_ANNOUNCING_STATES = (ServiceState.UP, ServiceState.DRAINING, ServiceState.MAINTENANCE)


def effective_state(state: ServiceState, real_servers_up: int, min_healthy: int) -> ServiceState:
    """The state after the backend dependency: UP and DRAINING become DOWN when fewer than
    ``min_healthy`` real servers are usable. Other states are returned unchanged."""
    if state in (ServiceState.UP, ServiceState.DRAINING) and real_servers_up < min_healthy:
        return ServiceState.DOWN
    return state


@dataclass(frozen=True, order=True)
class Guard:
    """A virtual service that needs ``min_healthy`` real servers that are both healthy by
    their checks (``healthy``: (address, port), configured weight > 0) and at weight > 0 in
    the kernel. Counting weights alone would let a dead real server that still has its
    weight hold a prefix up."""

    service: VirtualService
    min_healthy: int
    healthy: tuple[tuple[str, int], ...] = ()

    @cached_property
    def healthy_set(self) -> frozenset[tuple[str, int]]:
        """``healthy`` for membership tests (the planner counts per guard, per pass)."""
        return frozenset(self.healthy)


@dataclass(frozen=True)
class ServiceIntent:
    """One configured service. ``state`` is the effective state; ``live``/``idle`` are its
    IPVS virtual services with live or idle weights (empty without IPVS; ``idle`` is empty
    for a DISABLED service: no virtual service at all)."""

    name: str
    state: ServiceState
    health_state: ServiceState
    real_servers_up: int
    announces: bool
    prefixes: tuple[str, ...]
    live: tuple[ServiceSpec, ...]
    idle: tuple[ServiceSpec, ...]
    shutdown: ShutdownPolicy
    drain_time: float
    #: a take-down of this service now is unplanned (it fails) and may not drain
    failing: bool = False


@dataclass(frozen=True)
class PrefixIntent:
    """One prefix (canonical text, e.g. ``"192.0.2.53/32"``) and what it should be.

    ``wanted``: some owner's state wants the prefix served (address on, IPVS live) and
    published. ``route`` is the BGP announcement now (None: not announced; always None
    without ``[bgp]``). ``demote`` is what to announce while draining before a withdraw
    (None: withdraw without demoting). ``drainers``: the owners that do not fail; a
    take-down (maintenance, drain flag, disabled, shutdown) may demote and drain through
    them, while their guards hold. With none (checks down, too few healthy real servers)
    the prefix is withdrawn at once, unless an owner opted into ``drain_on_failure``.
    ``address`` is the host address that goes on the interface (None for a wider prefix).
    ``guards`` holds, per owner, the virtual services that must be healthy; ``announcing``
    the owners whose state announces the prefix; ``virtual_services`` every virtual service
    serving the prefix (their connections end a drain early).
    """

    prefix: str
    owners: tuple[str, ...]
    state: ServiceState
    route: Route | None
    demote: Route | None
    drain_time: float
    shutdown: ShutdownPolicy
    address: HostAddress | None
    guards: tuple[tuple[str, tuple[Guard, ...]], ...]
    announcing: tuple[str, ...]
    ospf_metric: int | None
    virtual_services: tuple[VirtualService, ...] = ()
    wanted: bool = False
    #: owners that do not fail: a take-down may drain only through them
    drainers: tuple[str, ...] = ()
    #: the OSPF publication now (None: not published through OSPF) and while draining
    #: before a removal (the draining metric; None: removed without a worse metric first)
    ospf_route: OspfRoute | None = None
    ospf_demote: OspfRoute | None = None

    @property
    def planned(self) -> bool:
        """A take-down now would be planned (some owner does not fail)."""
        return bool(self.drainers)

    def guards_of(self, owner: str) -> tuple[Guard, ...]:
        for name, guards in self.guards:
            if name == owner:
                return guards
        return ()


@dataclass(frozen=True)
class Desired:
    """The whole desired state, prefixes and services in sorted order."""

    prefixes: tuple[PrefixIntent, ...] = ()
    services: tuple[ServiceIntent, ...] = ()
    #: what the real-server role needs on this node before its VIPs go on the interface
    node: NodeNeeds = field(default_factory=NodeNeeds)
    #: the host addresses of the [real_server] services: added only once ``node`` holds
    node_addresses: frozenset[HostAddress] = frozenset()
    #: per service, its policy rules and routes (core.policyroute)
    policy: tuple[ServicePolicy, ...] = ()

    def prefix(self, prefix: str) -> PrefixIntent | None:
        return self._by_prefix.get(prefix)

    def service(self, name: str) -> ServiceIntent | None:
        return self._by_service.get(name)

    @cached_property
    def _by_prefix(self) -> dict[str, PrefixIntent]:
        return {p.prefix: p for p in self.prefixes}

    @cached_property
    def _by_service(self) -> dict[str, ServiceIntent]:
        return {s.name: s for s in self.services}

    @property
    def wanted(self) -> frozenset[str]:
        """Every prefix some owner wants served and published (BGP or not)."""
        return frozenset(p.prefix for p in self.prefixes if p.wanted)

    @property
    def routes(self) -> frozenset[Route]:
        """Every route this node should announce (before ordering and gating)."""
        return frozenset(p.route for p in self.prefixes if p.route is not None)

    @property
    def route_hints(self) -> frozenset[Route]:
        """Every route the planner may hand the speaker (state routes and demote routes):
        the ``hints`` for :func:`anycastd.core.plan.routes_from_rib`."""
        return frozenset(
            r for p in self.prefixes for r in (p.route, p.demote) if r is not None
        )

    @property
    def ospf_routes(self) -> frozenset[OspfRoute]:
        """Every OSPF publication this node should hold (before ordering and gating)."""
        return frozenset(p.ospf_route for p in self.prefixes if p.ospf_route is not None)

    @property
    def ospf_statics(self) -> dict[str, int]:
        """prefix -> OSPF metric, for the prefixes that have one in their state."""
        return {p.prefix: p.ospf_metric for p in self.prefixes if p.ospf_metric is not None}


# --- building blocks --------------------------------------------------------------------------


def _community_key(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(":"))
    except ValueError:
        return (1 << 40,)


def route_for(prefix: str, attrs: BgpStateAttrs) -> Route:
    """The route of ``prefix`` with a state's attributes (communities sorted, so equal
    meaning compares equal)."""
    return Route(prefix=prefix, attributes=_attributes(attrs),
                 neighbors=tuple(attrs.neighbors or ()))


@functools.lru_cache(maxsize=1024)
def _attributes(attrs: BgpStateAttrs) -> Attributes:
    """One value per state's attributes (frozen, hashable): shared by all its routes."""
    return Attributes(
        med=attrs.med,
        local_preference=attrs.local_preference,
        communities=tuple(sorted(set(attrs.communities), key=_community_key)),
        large_communities=tuple(sorted(set(attrs.large_communities), key=_community_key)),
        as_path_prepend=attrs.as_path_prepend,
    )


def _is_host(network: _Network) -> bool:
    return network.prefixlen == network.max_prefixlen


@functools.lru_cache(maxsize=1 << 16)
def _host_address(network: _Network) -> HostAddress:
    # from the integer (ip_interface would format and parse text: 3.7x slower), cached: the
    # config's networks are the same objects every pass
    kind = ipaddress.IPv4Interface if network.version == 4 else ipaddress.IPv6Interface
    return kind((int(network.network_address), network.max_prefixlen))


@functools.lru_cache(maxsize=1 << 16)
def _text(network: _Network) -> str:
    return str(network)


def _virtual_services(svc: ServiceConfig) -> dict[str, tuple[VirtualService, ...]]:
    """prefix -> the virtual services guarding it (see the module docstring)."""
    ipvs = svc.ipvs
    out: dict[str, tuple[VirtualService, ...]] = {}
    if ipvs is None:
        return out
    if ipvs.protocol == "fwmark":
        assert ipvs.fwmark is not None  # noqa: S101 -- the config requires it for fwmark
        mark = ipvs.fwmark
        for net in svc.prefixes:
            out[str(net)] = (VirtualService.mark(mark, 6 if net.version == 6 else 4),)
        return out
    assert ipvs.port is not None  # noqa: S101 -- the config requires it for tcp/udp
    hosts = [net for net in svc.prefixes if _is_host(net)]
    own = {
        str(net): VirtualService(ipvs.protocol, str(net.network_address), ipvs.port)
        for net in hosts
    }
    for net in svc.prefixes:
        if _is_host(net):
            out[str(net)] = (own[str(net)],)
        else:
            out[str(net)] = tuple(
                sorted(own[str(h)] for h in hosts if h.version == net.version)
            )
    return out


def real_server_key(svc: ServiceConfig, rs: ConfigRealServer) -> RealServerKey:
    """The key :func:`compute` looks real-server health up by."""
    assert svc.ipvs is not None  # noqa: S101 -- only called for services with IPVS
    return (svc.name, str(rs.address), _rs_port(svc.ipvs, rs.port))


def _rs_port(ipvs: IpvsConfig, port: int | None) -> int:
    if ipvs.protocol == "fwmark":
        return port or 0
    return port if port is not None else (ipvs.port or 0)


def _specs(
    svc: ServiceConfig,
    vses: tuple[VirtualService, ...],
    up: Mapping[RealServerKey, bool],
    *,
    live: bool,
) -> tuple[ServiceSpec, ...]:
    ipvs = svc.ipvs
    if ipvs is None:
        return ()
    specs: list[ServiceSpec] = []
    for vs in vses:
        servers: list[RealServer] = []
        for rs in ipvs.real_servers:
            if rs.address.version != vs.family and rs.forwarding != "tunnel":
                continue
            port = _rs_port(ipvs, rs.port)
            healthy = live and up.get((svc.name, str(rs.address), port), False)
            if not healthy and ipvs.on_backend_fail == "remove":
                continue
            weight = rs.weight if healthy else 0
            servers.append(RealServer(str(rs.address), port, weight, rs.forwarding))
        servers.sort(key=lambda r: (ipaddress.ip_address(r.address).version, r.key))
        specs.append(
            ServiceSpec(vs, ipvs.scheduler, int(ipvs.persistence), tuple(servers))
        )
    return tuple(specs)


def _healthy_real_servers(
    svc: ServiceConfig, up: Mapping[RealServerKey, bool]
) -> tuple[tuple[str, int], ...]:
    """(address, port) of the real servers their checks call healthy, weight > 0."""
    ipvs = svc.ipvs
    if ipvs is None:
        return ()
    out: list[tuple[str, int]] = []
    for rs in ipvs.real_servers:
        port = _rs_port(ipvs, rs.port)
        if rs.weight > 0 and up.get((svc.name, str(rs.address), port), False):
            out.append((str(rs.address), port))
    return tuple(sorted(out))


def _ospf_metric(svc: ServiceConfig, state: ServiceState) -> int | None:
    if svc.ospf is None:
        return None
    metric = svc.ospf.metric
    return {
        ServiceState.UP: metric.up,
        ServiceState.DRAINING: metric.draining,
        ServiceState.MAINTENANCE: metric.maintenance,
    }.get(state)


def _service_intent(
    svc: ServiceConfig,
    health: ServiceState,
    up: Mapping[RealServerKey, bool],
    vses: dict[str, tuple[VirtualService, ...]],
    *,
    checks_fail: bool,
) -> ServiceIntent:
    usable = len(_healthy_real_servers(svc, up))
    min_healthy = svc.ipvs.min_healthy if svc.ipvs is not None else 0
    state = effective_state(health, usable, min_healthy)
    # Unplanned: DOWN (checks, damping or too few real servers), or an operator state
    # (maintenance, drain) over checks that fail: a drain would feed a dead service.
    # Disabled counts too: disabling a service whose checks fail must not drain into it.
    failing = state is ServiceState.DOWN or checks_fail or usable < min_healthy
    attrs = svc.bgp.for_state(state.value) if state in _ANNOUNCING_STATES else None
    # A drain or maintenance flag outranks failing checks in the state, never in the route:
    # a dead service is not announced, demoted or not (drain_on_failure acts only through
    # the time-bounded take-down drain)
    announces = (
        attrs is not None and attrs.announce and usable >= min_healthy and not checks_fail
    )
    all_vs = tuple(sorted({vs for group in vses.values() for vs in group}))
    return ServiceIntent(
        name=svc.name,
        state=state,
        health_state=health,
        real_servers_up=usable,
        announces=announces,
        prefixes=tuple(str(p) for p in svc.prefixes),
        live=_specs(svc, all_vs, up, live=True),
        idle=() if state is ServiceState.DISABLED else _specs(svc, all_vs, up, live=False),
        shutdown=svc.shutdown,
        drain_time=svc.drain_time,
        failing=failing and not svc.drain_on_failure,
    )


def _shutdown_of(policies: list[ShutdownPolicy]) -> ShutdownPolicy:
    if "keep" in policies:
        return "keep"
    if "drain-then-withdraw" in policies:
        return "drain-then-withdraw"
    return "withdraw"


@dataclass(frozen=True)
class _Shared:
    """What every prefix of one owner set has in common (a 1,000-prefix service: 1,000
    prefixes, one of these per ``compute``)."""

    owners: tuple[ServiceConfig, ...]  # by name
    state: ServiceState
    attrs: BgpStateAttrs | None  # the route's attributes (an announcing owner's state)
    demote: BgpStateAttrs | None
    announcing: tuple[str, ...]
    ospf_metric: int | None  # the metric owner's, whatever it announces
    ospf_route_metric: int | None  # the best announcing OSPF owner's
    ospf_demote_metric: int | None
    drain_time: float
    shutdown: ShutdownPolicy
    drainers: tuple[str, ...]


def _shared(owners: list[ServiceConfig], intents: Mapping[str, ServiceIntent]) -> _Shared:
    owners = sorted(owners, key=lambda s: s.name)
    announcing = [s for s in owners if intents[s.name].announces]
    best = min(announcing, key=lambda s: _RANK[intents[s.name].state], default=None)
    state = min((intents[s.name].state for s in owners), key=_RANK.__getitem__)
    attrs = None
    if best is not None:
        state = intents[best.name].state
        attrs = best.bgp.for_state(state.value)
        assert attrs is not None  # noqa: S101 -- announcing states have attributes
    demoter = next((s for s in owners if s.bgp.draining.announce), None)
    metric_owner = best or owners[0]
    # OSPF: the best announcing owner that publishes through OSPF; the demote comes from
    # the first owner by name with [ospf] whose draining state announces (as for BGP)
    ospf_best = min((s for s in announcing if s.ospf is not None),
                    key=lambda s: _RANK[intents[s.name].state], default=None)
    ospf_demoter = next(
        (s for s in owners if s.ospf is not None and s.bgp.draining.announce), None
    )
    return _Shared(
        owners=tuple(owners),
        state=state,
        attrs=attrs,
        demote=demoter.bgp.draining if demoter is not None else None,
        announcing=tuple(s.name for s in announcing),
        ospf_metric=_ospf_metric(metric_owner, intents[metric_owner.name].state),
        ospf_route_metric=(_ospf_metric(ospf_best, intents[ospf_best.name].state)
                           if ospf_best is not None else None),
        ospf_demote_metric=(ospf_demoter.ospf.metric.draining
                            if ospf_demoter is not None and ospf_demoter.ospf is not None
                            else None),
        drain_time=max(s.drain_time for s in owners),
        shutdown=_shutdown_of([s.shutdown for s in owners]),
        # a shared prefix drains only through an owner that can still serve it
        drainers=tuple(s.name for s in owners if not intents[s.name].failing),
    )


def _prefix_intent(
    net: _Network,
    shared: _Shared,
    vses: Mapping[str, dict[str, tuple[VirtualService, ...]]],
    up: Mapping[RealServerKey, bool],
    *,
    bgp: bool,
) -> PrefixIntent:
    prefix = _text(net)
    owners = shared.owners
    guards = tuple(
        (
            s.name,
            tuple(
                Guard(vs, s.ipvs.min_healthy, _healthy_real_servers(s, up))
                for vs in vses[s.name].get(prefix, ())
                if s.ipvs is not None and s.ipvs.min_healthy > 0
            ),
        )
        for s in owners
    )
    ospf_metric = shared.ospf_route_metric
    return PrefixIntent(
        prefix=prefix,
        owners=tuple(s.name for s in owners),
        state=shared.state,
        route=route_for(prefix, shared.attrs) if shared.attrs is not None and bgp else None,
        demote=route_for(prefix, shared.demote) if shared.demote is not None and bgp else None,
        drain_time=shared.drain_time,
        shutdown=shared.shutdown,
        address=_host_address(net) if _is_host(net) else None,
        guards=guards,
        announcing=shared.announcing,
        ospf_metric=shared.ospf_metric,
        virtual_services=tuple(sorted({vs for s in owners for vs in vses[s.name].get(prefix, ())})),
        wanted=shared.attrs is not None,
        drainers=shared.drainers,
        ospf_route=OspfRoute(prefix, ospf_metric) if ospf_metric is not None else None,
        ospf_demote=(OspfRoute(prefix, shared.ospf_demote_metric)
                     if shared.ospf_demote_metric is not None else None),
    )


def compute(
    config: Config,
    states: Mapping[str, ServiceState],
    real_servers_up: Mapping[RealServerKey, bool] | None = None,
    *,
    failing: Collection[str] = (),
) -> Desired:
    """The desired state of every configured service and prefix.

    ``states``: service name -> health state (missing: DOWN). ``real_servers_up``:
    (service, real-server address, port) -> healthy (missing: down); the port is the real
    server's resolved port (the virtual port when not configured; 0 for fwmark).
    ``failing``: services whose own checks fail whatever their state says (maintenance and
    drain flags take precedence in the state): taking them down is not planned.
    Without ``[bgp]`` no prefix has a route: addresses and IPVS still follow the states.
    """
    up = real_servers_up or {}
    services = [config.services[name] for name in sorted(config.services)]
    vses = {svc.name: _virtual_services(svc) for svc in services}
    intents = {
        svc.name: _service_intent(
            svc,
            ServiceState.DISABLED
            if svc.disabled
            else states.get(svc.name, ServiceState.DOWN),
            up,
            vses[svc.name],
            checks_fail=svc.name in failing,
        )
        for svc in services
    }
    by_prefix: dict[_Network, list[ServiceConfig]] = {}
    for svc in services:
        for net in svc.prefixes:
            by_prefix.setdefault(net, []).append(svc)
    ordered = sorted(by_prefix, key=lambda n: (n.version, n.network_address, n.prefixlen))
    shared: dict[tuple[str, ...], _Shared] = {}
    for owners in by_prefix.values():
        names = tuple(s.name for s in owners)
        if names not in shared:
            shared[names] = _shared(owners, intents)
    return Desired(
        prefixes=tuple(
            _prefix_intent(
                n, shared[tuple(s.name for s in by_prefix[n])], vses, up,
                # a backend's VIP ([real_server]) is the director's to announce, never ours
                bgp=config.bgp is not None and all(s.real_server is None for s in by_prefix[n]),
            )
            for n in ordered
        ),
        services=tuple(intents[s.name] for s in services),
        node=needs(config),
        node_addresses=frozenset(
            _host_address(n) for s in services if s.real_server is not None
            for n in s.prefixes if _is_host(n)
        ),
        policy=policies_from_config(config),
    )
