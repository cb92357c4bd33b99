"""The controller's planner: desired vs observed -> ordered steps, as a pure state machine.

Rule: pure. No I/O, no clock, no await. Time (monotonic seconds) and observations come in as
arguments; the result is a new :class:`ControllerState`, the steps to run in order, and the
time at which to plan again if nothing else happens.

OSPF rides along with BGP: a prefix is *published* when the speaker announces it or the OSPF
actuator publishes it (``Observed.ospf``); every rule below about "announced" applies to
either channel, and an ``OspfStep`` (the whole OSPF route set at that point) follows each
``BgpStep`` position: step 1b after the BGP withdrawals and demotions (a worse metric while
draining, or the route removed), step 5b after the new announcements.

Theory of operation
-------------------
Each pass diffs :class:`~anycastd.core.desired.Desired` against :class:`Observed` (read back
from the kernel and the speaker) and returns at most ten steps, always in this order::

    1.  BgpStep      withdrawals and demotions (routes that stay keep what they have)
    1b. OspfStep     the same for OSPF: removals and draining metrics
    2.  LoopbackStep address adds
    2b. PolicyStep   policy routes and rules added (core.policyroute)
    3.  IpvsStep     virtual services and real servers (adds, weights, deletes)
    4.  LoopbackStep address removes
    4b. PolicyStep   policy rules and routes removed
    5.  BgpStep      new announcements and attribute changes
    5b. OspfStep     new OSPF routes and metric changes
    6.  NodeStep     what the real-server role needs (links, sysctls; core.realserver). A
                     backend's VIP is added only by a pass that observed them in place
                     (``held_back``), so it never goes on ``lo`` while the node would answer
                     ARP for it; last, so a failure here holds back nothing else

A step is one actuator's batch; a ``BgpStep`` carries the WHOLE route set the speaker should
hold at that point (the speaker sends only the difference). Empty steps are left out, so a
converged pass plans nothing (no churn), and so does a restart that finds the kernel and the
speaker already as desired (adoption: the state below starts empty and is rebuilt).

Safety comes from the order plus the executor's rule "run in order, stop at the first
failure, observe again, plan again": whatever prefix of the list has run, a prefix is never
announced while (a) its host address is missing from the interface, or (b) its guards fail:
a virtual service it depends on has fewer than ``min_healthy`` real servers with weight > 0.
Withdrawals happen in step 1, before IPVS weights drop (3) and addresses go (4); new
announcements happen in step 5, only for prefixes whose address and guards hold once steps
2-3 have run. While a prefix stays announced, the real servers its guards count are never
taken below ``min_healthy`` (the IPVS target is clamped to the observed weights), and an
announced prefix whose guards already fail in the observation is withdrawn at once.

Take-down, per prefix, table-driven (``_take_down``)::

    announced?  policy      drain known?  time up / quiet?   ->  this pass
    no          -           -             -                      forget the drain
    yes         withdraw    -             -                      withdraw
    yes         (broken: address or guards fail in observation)  withdraw
    yes         drain       no            -                      demote, remember now
    yes         drain       yes           no                     keep the demote, wake at end
    yes         drain       yes           yes                    withdraw (drain kept until
                                                                 the observation shows it gone)

*Drain* applies to an announced prefix that no owner wants announced any more (DOWN,
MAINTENANCE, DISABLED, or shutdown with ``drain-then-withdraw``), when it has a demote route
and ``drain_time > 0``. A prefix that was not announced is not demoted. The drain ends at
``since + drain_time`` or, once the demote route is observed, when the active IPVS
connections of the prefix's virtual services are at most ``drain_connections``, whichever
comes first. If an owner wants the prefix again during the drain, the drain is forgotten and
the route goes back to its state's attributes (no withdraw). Prefixes no service declares
(a leftover; a service a reload removed stays in ``desired`` until drained, engine/retire.py)
and ``withdraw`` policies are withdrawn without a demote. State advances only
from observation: a drain is forgotten when the prefix is observed withdrawn, never because
a step was planned.

IPVS weights: a service whose state announces, or with a prefix still in its drain, gets live
weights; otherwise idle weights (see ``desired``). At shutdown, services without a ``keep``
policy lose their virtual services once their prefixes are withdrawn; ``keep`` services and
their prefixes and addresses are left exactly as observed, and so are the virtual services
of every owner of a kept prefix (a shared prefix is kept when any owner keeps it).

Within the IPVS step, actions that add serving capacity run before those that take it away
(``_capacity_first``), so even a batch cut short halfway never drops a guard below both the
observed and the target count.

The executor (the asyncio shell) drives it like this::

    state = ControllerState()
    loop:
        observed = Observed(loopback.observe(), ipvs.observe(),
                            routes_from_rib(speaker.sent, settings, desired.route_hints),
                            ipvs.owned())
        result = plan(state, compute(config, states, rs_up), observed, clock(),
                      shutdown=stopping)
        state = result.state
        for step in result.steps:          # in order; stop at the first ActuatorError
            LoopbackStep -> loopback.apply(step.actions)
            IpvsStep     -> ipvs.apply(step.actions)
            BgpStep      -> await speaker.set_routes(step.routes)
        if result.steps: observe and plan again (back off after a failure)
        elif stopping and result.shutdown_complete: exit
        else: sleep until result.next_wakeup, a health edge, a reload or the reconcile timer
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from anycastd.core.addresses import diff_addresses
from anycastd.core.desired import Desired, Guard, PrefixIntent
from anycastd.core.ipvs import diff_ipvs
from anycastd.core.policyroute import PolicyAction, PolicyDiff, PolicyObserved
from anycastd.core.policyroute import diff as diff_policy
from anycastd.core.realserver import NodeAction, NodeObserved, held_back
from anycastd.core.realserver import diff as diff_node
from anycastd.model import (
    AddAddress,
    AddressAction,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    HostAddress,
    IPAddress,
    IpvsAction,
    IpvsObserved,
    LoopbackObserved,
    OspfRoute,
    RealServer,
    Route,
    ServiceSpec,
    VirtualService,
)

__all__ = [
    "BgpStep",
    "ControllerState",
    "IpvsStep",
    "LoopbackStep",
    "NodeStep",
    "Observed",
    "OspfStep",
    "Phase",
    "Plan",
    "PolicyStep",
    "Step",
    "plan",
]

Phase = Literal[
    "announced", "announcing", "draining", "withdrawing", "withdrawn", "kept", "serving"
]


@dataclass(frozen=True)
class ControllerState:
    """What the planner remembers between passes: when each drain began (prefix -> since).

    Everything else is read back from the world, so ``ControllerState()`` after a restart is
    correct (a drain in progress then starts again, which is safe)."""

    drains: tuple[tuple[str, float], ...] = ()

    def drain_since(self, prefix: str) -> float | None:
        for p, since in self.drains:
            if p == prefix:
                return since
        return None


@dataclass(frozen=True)
class Observed:
    """The world as read back. ``announced``: the routes the speaker holds (see
    :func:`anycastd.core.rib.routes_from_rib`); ``ipvs_owned``: the IPVS ownership record."""

    loopback: LoopbackObserved
    ipvs: IpvsObserved = field(default_factory=IpvsObserved)
    announced: frozenset[Route] = frozenset()
    ipvs_owned: frozenset[VirtualService] = frozenset()
    #: the real-server role's links and sysctls (None: not read)
    node: NodeObserved | None = None
    #: anycastd's policy rules and their tables' routes (None: not read)
    policy: PolicyObserved | None = None
    #: the OSPF routes the routing daemon publishes for anycastd (read back)
    ospf: frozenset[OspfRoute] = frozenset()


@dataclass(frozen=True)
class NodeStep:
    actions: tuple[NodeAction, ...]  # the real-server role's links and sysctls


@dataclass(frozen=True)
class PolicyStep:
    actions: tuple[PolicyAction, ...]  # adds, or removes (core.policyroute)


@dataclass(frozen=True)
class LoopbackStep:
    actions: tuple[AddressAction, ...]


@dataclass(frozen=True)
class IpvsStep:
    actions: tuple[IpvsAction, ...]


@dataclass(frozen=True)
class BgpStep:
    """The whole route set to hand to ``Speaker.set_routes`` at this point."""

    routes: frozenset[Route]


@dataclass(frozen=True)
class OspfStep:
    """The whole OSPF route set the routing daemon should publish at this point."""

    routes: frozenset[OspfRoute]


Step: TypeAlias = NodeStep | LoopbackStep | PolicyStep | IpvsStep | BgpStep | OspfStep


@dataclass(frozen=True)
class Plan:
    state: ControllerState
    steps: tuple[Step, ...]
    #: plan again at this monotonic time even without new events (None: no deadline)
    next_wakeup: float | None
    #: shutdown requested and nothing left to do (every non-keep prefix withdrawn and cleaned)
    shutdown_complete: bool
    #: per prefix, for status and logs
    phases: tuple[tuple[str, Phase], ...] = ()


# --- observation helpers -----------------------------------------------------------------------


def _present_ips(observed: LoopbackObserved) -> frozenset[IPAddress]:
    # Owned or foreign: an operator's address with the same IP serves the prefix too. On an
    # interface that is down nothing is served (IPv6 addresses go, IPv4 ones stay listed
    # but the kernel's local routes may not deliver): every address counts as absent.
    if not observed.up:
        return frozenset()
    return frozenset(a.ip for a in observed.addresses)


def _usable(servers: Iterable[RealServer], healthy: frozenset[tuple[str, int]]) -> int:
    return sum(1 for rs in servers if rs.weight > 0 and rs.key in healthy)


#: How many real servers serve a guard: healthy by their checks AND at weight > 0.
Counter: TypeAlias = Callable[[Guard], int]


def _observed_counter(observed: IpvsObserved) -> Counter:
    def count(g: Guard) -> int:
        svc = observed.services.get(g.service)
        if svc is None:
            return 0
        return _usable((ors.server for ors in svc.real_servers), g.healthy_set)

    return count


def _predecessor_counter(observed: Observed, desired_vs: frozenset[VirtualService]) -> Counter:
    """Like the observed count, but a guard whose virtual service does not exist yet is
    served by the one it replaces: an owned virtual service on the same VIP (or fwmark
    family) that is not desired any more (a reload changed the port or the protocol).
    Real servers are matched by address, as the port may have changed with it."""
    direct = _observed_counter(observed.ipvs)

    def count(g: Guard) -> int:
        if g.service in observed.ipvs.services:
            return direct(g)
        healthy = {address for address, _ in g.healthy}
        best = 0
        for vs, svc in observed.ipvs.services.items():
            if vs in desired_vs or vs not in observed.ipvs_owned or not _same_vip(vs, g.service):
                continue
            n = sum(1 for ors in svc.real_servers
                    if ors.server.weight > 0 and ors.server.address in healthy)
            best = max(best, n)
        return best

    return count


def _same_vip(a: VirtualService, b: VirtualService) -> bool:
    if (a.protocol == "fwmark") != (b.protocol == "fwmark"):
        return False
    if a.protocol == "fwmark":
        return a.family == b.family
    return a.address == b.address


def _spec_counter(
    specs: Mapping[VirtualService, ServiceSpec], held: set[VirtualService], observed: Observed
) -> Counter:
    """The count once the IPVS step has run: desired specs, held (kept) services as seen."""
    direct = _observed_counter(observed.ipvs)

    def count(g: Guard) -> int:
        spec = specs.get(g.service)
        if spec is not None:
            return _usable(spec.real_servers, g.healthy_set)
        if g.service in held or g.service not in observed.ipvs_owned:
            return direct(g)  # untouched by this pass (kept, or not ours to delete)
        return 0  # an owned service not desired is deleted in step 3

    return count


def _guards_hold(guards: Iterable[Guard], count: Counter) -> bool:
    return all(count(g) >= g.min_healthy for g in guards)


def _gate(
    intent: PrefixIntent,
    owners: Iterable[str],
    ips: frozenset[IPAddress],
    count: Counter,
) -> bool:
    """May ``intent`` be announced given these addresses and real-server counts?"""
    if intent.address is not None and intent.address.ip not in ips:
        return False
    return any(_guards_hold(intent.guards_of(o), count) for o in owners)


def _gate_owners(intent: PrefixIntent) -> tuple[str, ...]:
    return intent.announcing or intent.owners


def _active_connections(intent: PrefixIntent, observed: IpvsObserved) -> int:
    total = 0
    for vs in intent.virtual_services:
        svc = observed.services.get(vs)
        if svc is not None:
            total += sum(ors.active_connections for ors in svc.real_servers)
    return total


# --- the pass ------------------------------------------------------------------------------------


@dataclass
class _Pass:
    """Scratch space of one pass (never leaves ``plan``)."""

    bgp1: dict[str, frozenset[Route]] = field(default_factory=dict)
    ospf1: dict[str, OspfRoute] = field(default_factory=dict)
    #: prefixes the state wants served -> the route to announce (None: no BGP)
    targets: dict[str, Route | None] = field(default_factory=dict)
    #: announced prefixes kept up across a virtual service replaced in this pass
    moving: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    drains: dict[str, float] = field(default_factory=dict)
    wakeups: list[float] = field(default_factory=list)

    def serving(self, prefix: str) -> bool:
        """Wanted, or still published on either channel in step 1 (a drain, a move): its
        address and its policy rules stay."""
        return prefix in self.targets or prefix in self.bgp1 or prefix in self.ospf1


def _take_down(
    p: _Pass,
    intent: PrefixIntent | None,
    have: frozenset[Route],
    ohave: OspfRoute | None,
    since: float | None,
    *,
    policy_withdraw: bool,
    observed_ok: bool,
    observed: Observed,
    now: float,
    drain_connections: int,
    connection_poll: float,
) -> None:
    """An announced prefix nobody wants announced: demote and wait, or withdraw.

    Each channel demotes only what it publishes: BGP to the demote route, OSPF to the
    draining metric; a published channel without a demote is withdrawn at once."""
    if intent is None or intent.drain_time <= 0:
        return  # withdraw now (not in bgp1)
    bgp_demote = frozenset({intent.demote}) if have and intent.demote is not None else None
    ospf_demote = intent.ospf_demote if ohave is not None else None
    if bgp_demote is None and ospf_demote is None:
        return
    if not intent.planned:
        return  # a failure: most peers ignore 65535:0, so only a withdraw moves traffic
    if policy_withdraw or not observed_ok:
        return
    at_demote = have == (bgp_demote or frozenset()) and ohave == ospf_demote
    if since is None and not at_demote:
        # The drain's clock starts once the demote is observed at the speaker: a demote
        # that failed to go out (relay down) must not count as time the peers had to move.
        _demote(p, intent.prefix, bgp_demote, ospf_demote)
        return
    start = now if since is None else since
    p.drains[intent.prefix] = start  # kept until the withdraw is observed
    end = start + intent.drain_time
    quiet = (
        bool(intent.virtual_services)
        and now >= start + connection_poll  # the peers saw the demote for a while
        and at_demote
        and _active_connections(intent, observed.ipvs) <= drain_connections
    )
    if now >= end or quiet:
        return
    _demote(p, intent.prefix, bgp_demote, ospf_demote)
    p.wakeups.append(end)
    if intent.virtual_services:
        p.wakeups.append(now + connection_poll)


def _demote(
    p: _Pass, prefix: str, bgp: frozenset[Route] | None, ospf: OspfRoute | None
) -> None:
    if bgp is not None:
        p.bgp1[prefix] = bgp
    if ospf is not None:
        p.ospf1[prefix] = ospf
    p.draining.add(prefix)


def _ipvs_target(
    p: _Pass, desired: Desired, *, shutdown: bool, fail_closed: bool
) -> tuple[dict[VirtualService, ServiceSpec], set[VirtualService]]:
    """The IPVS table to aim at this pass, and the virtual services left untouched.

    A real server its checks call dead is at weight 0 (or absent) in every spec, whatever
    the service's state: nothing keeps a dead real server in rotation, not even a drain."""
    specs: dict[VirtualService, ServiceSpec] = {}
    held: set[VirtualService] = set()
    for s in desired.services:
        keep = not fail_closed and (s.shutdown == "keep" or any(x in p.kept for x in s.prefixes))
        if shutdown and keep:
            # a kept prefix keeps every owner's virtual services with it (shared prefixes)
            held.update(spec.service for spec in s.live)
            continue
        draining = any(prefix in p.draining for prefix in s.prefixes)
        active = (s.announces and not shutdown) or draining
        if shutdown and not active:
            continue  # shutdown: the virtual service goes once its prefixes are withdrawn
        for spec in s.live if active else s.idle:
            specs[spec.service] = spec
    return specs, held


def _reduces(action: IpvsAction) -> bool:
    if isinstance(action, DeleteRealServer | DeleteService):
        return True
    return isinstance(action, EditRealServer) and action.server.weight == 0


def _capacity_first(actions: list[IpvsAction]) -> list[IpvsAction]:
    """Actions that add serving capacity before those that take it away (each group keeps
    its order: a service before its real servers, real servers before their service), so a
    batch cut short by a failure never leaves fewer usable real servers than both the
    observed table and the target have."""
    return [a for a in actions if not _reduces(a)] + [a for a in actions if _reduces(a)]


def _addresses(p: _Pass, desired: Desired, observed: LoopbackObserved) -> set[HostAddress]:
    want: set[HostAddress] = set()
    for intent in desired.prefixes:
        if intent.address is None:
            continue
        if intent.prefix in p.kept:
            ip = intent.address.ip
            want.update(a.interface for a in observed.addresses if a.owned and a.ip == ip)
        elif p.serving(intent.prefix):
            want.add(intent.address)
    return want


def _policy(p: _Pass, desired: Desired, observed: Observed) -> PolicyDiff:
    """A service's policy rules and routes stay while it is active: a prefix of it wanted,
    still announced (drain) or kept."""
    if not desired.policy and observed.policy is None:
        return PolicyDiff()
    active = {s.name for s in desired.services
              if any(p.serving(x) or x in p.kept for x in s.prefixes)}
    return diff_policy(desired.policy, active, observed.policy or PolicyObserved())


def _union(routes: Iterable[frozenset[Route]]) -> frozenset[Route]:
    out: set[Route] = set()
    for group in routes:
        out.update(group)
    return frozenset(out)


def plan(
    state: ControllerState,
    desired: Desired,
    observed: Observed,
    now: float,
    *,
    shutdown: bool = False,
    fail_closed: bool = False,
    drain_connections: int = 0,
    connection_poll: float = 1.0,
) -> Plan:
    """One planning pass (see the module docstring). Pure and deterministic.

    ``shutdown`` applies each prefix's shutdown policy instead of its state.
    ``drain_connections``: a drain may end early once the active IPVS connections of the
    prefix's virtual services are at most this. ``connection_poll``: while such a drain
    runs, plan again this often (connection counts change without events).
    """
    announced: dict[str, set[Route]] = {}
    for route in observed.announced:
        announced.setdefault(route.prefix, set()).add(route)
    published: dict[str, OspfRoute] = {}
    for oroute in sorted(observed.ospf):
        published.setdefault(oroute.prefix, oroute)
    intents = {i.prefix: i for i in desired.prefixes}
    ips = _present_ips(observed.loopback)
    counts = _observed_counter(observed.ipvs)
    desired_vs = frozenset(
        spec.service for s in desired.services for spec in (*s.live, *s.idle)
    )
    moved = _predecessor_counter(observed, desired_vs)
    drains = dict(state.drains)
    p = _Pass()

    for prefix in sorted(intents.keys() | announced.keys() | published.keys()):
        intent = intents.get(prefix)
        have = frozenset(announced.get(prefix, ()))
        ohave = published.get(prefix)
        is_up = bool(have) or ohave is not None
        if (
            shutdown and not fail_closed and intent is not None and intent.shutdown == "keep"
            # keep never holds up a service that fails or cannot be served (address, link)
            and _gate(intent, intent.drainers, ips, counts)
        ):
            p.kept.add(prefix)
            _hold(p, prefix, have, ohave)
            continue
        observed_ok = intent is not None and _gate(intent, _gate_owners(intent), ips, counts)
        if intent is not None and intent.wanted and not shutdown:
            p.targets[prefix] = intent.route
            if is_up and observed_ok:
                _hold(p, prefix, have, ohave)  # stays announced; attributes change in step 5
            elif is_up and _gate(intent, _gate_owners(intent), ips, moved):
                # its virtual service is being replaced (make-before-break): it stays,
                # if the new one serves it once the IPVS step has run (checked below)
                _hold(p, prefix, have, ohave)
                p.moving.add(prefix)
            continue  # not announced, or announced but broken: (re)announced in step 5
        if is_up:
            _take_down(
                p,
                intent,
                have,
                ohave,
                drains.get(prefix),
                policy_withdraw=fail_closed or (
                    shutdown and intent is not None and intent.shutdown == "withdraw"
                ),
                # a drain needs an owner that does not fail and serves now
                observed_ok=intent is not None and _gate(intent, intent.drainers, ips, counts),
                observed=observed,
                now=now,
                drain_connections=drain_connections,
                connection_poll=connection_poll,
            )

    specs, held = _ipvs_target(p, desired, shutdown=shutdown, fail_closed=fail_closed)
    after = _spec_counter(specs, held, observed)
    for prefix in p.moving:
        intent = intents[prefix]
        if not _gate(intent, intent.announcing, ips, after):
            p.bgp1.pop(prefix, None)  # the replacement would not serve it: withdraw first
            p.ospf1.pop(prefix, None)
    ipvs_actions = _capacity_first(
        diff_ipvs(specs, observed.ipvs, observed.ipvs_owned - held)
    )
    want_addresses = _addresses(p, desired, observed.loopback) - held_back(
        desired.node, desired.node_addresses, observed.node, observed.loopback)
    lo_actions = diff_addresses(want_addresses, observed.loopback)
    add_ips = {a.address.ip for a in lo_actions if isinstance(a, AddAddress)}
    # A remove that makes room for an add of the same IP (prefix length changed) goes first.
    lo_first: list[AddressAction] = []
    lo_last: list[AddressAction] = []
    for a in lo_actions:
        first = isinstance(a, AddAddress) or a.address.ip in add_ips
        (lo_first if first else lo_last).append(a)

    ips_after = ips | {a.ip for a in want_addresses} if observed.loopback.up else ips
    final = dict(p.bgp1)
    final_ospf = dict(p.ospf1)
    for prefix, target in p.targets.items():
        intent = intents[prefix]
        otarget = intent.ospf_route
        if (target is None and otarget is None) or not _gate(
                intent, intent.announcing, ips_after, after):
            continue
        if target is not None:
            final[prefix] = frozenset({target})
        if otarget is not None:
            final_ospf[prefix] = otarget

    before = frozenset(observed.announced)
    set1 = _union(p.bgp1.values())
    set2 = _union(final.values())
    ospf_before = frozenset(observed.ospf)
    ospf1 = frozenset(p.ospf1.values())
    ospf2 = frozenset(final_ospf.values())
    steps: list[Step] = []
    if set1 != before:
        steps.append(BgpStep(set1))
    if ospf1 != ospf_before:
        steps.append(OspfStep(ospf1))
    if lo_first:
        steps.append(LoopbackStep(tuple(lo_first)))
    policy = _policy(p, desired, observed)
    if policy.adds:
        steps.append(PolicyStep(policy.adds))
    if ipvs_actions:
        steps.append(IpvsStep(tuple(ipvs_actions)))
    if lo_last:
        steps.append(LoopbackStep(tuple(lo_last)))
    if policy.removes:
        steps.append(PolicyStep(policy.removes))
    if set2 != set1:
        steps.append(BgpStep(set2))
    if ospf2 != ospf1:
        steps.append(OspfStep(ospf2))
    # last, so a node that cannot be set up holds back nothing else; at shutdown nothing is
    # set up any more (and nothing of the role is ever undone)
    node_actions = diff_node(desired.node, observed.node) if desired.node and not shutdown else ()
    if node_actions:
        steps.append(NodeStep(node_actions))

    up_now = announced.keys() | published.keys()
    up_after = final.keys() | final_ospf.keys()
    phases: list[tuple[str, Phase]] = []
    for prefix in sorted(intents.keys() | up_now):
        phases.append((prefix, _phase(prefix, p, intents.get(prefix), up_now, up_after)))
    return Plan(
        state=ControllerState(tuple(sorted(p.drains.items()))),
        steps=tuple(steps),
        next_wakeup=min(p.wakeups, default=None),
        shutdown_complete=shutdown and not steps and not p.drains,
        phases=tuple(phases),
    )


def _hold(p: _Pass, prefix: str, have: frozenset[Route], ohave: OspfRoute | None) -> None:
    """Keep what is published as it is through steps 1-4."""
    if have:
        p.bgp1[prefix] = have
    if ohave is not None:
        p.ospf1[prefix] = ohave


def _phase(
    prefix: str,
    p: _Pass,
    intent: PrefixIntent | None,
    announced: Collection[str],
    final: Collection[str],
) -> Phase:
    if prefix in p.kept:
        return "kept"
    if prefix in p.draining:
        return "draining"
    if prefix in announced:
        return "announced" if prefix in final else "withdrawing"
    if (prefix in p.targets and p.targets[prefix] is None
            and intent is not None and intent.ospf_route is None):
        return "serving"  # wanted, and nothing to announce it with (no [bgp], no [ospf])
    return "announcing" if prefix in final else "withdrawn"
