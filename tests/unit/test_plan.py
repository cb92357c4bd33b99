"""core.plan: ordered, reconciled, safe transitions across address, IPVS and BGP.

The world is simulated in memory: ``FakeLoopback`` and ``FakeIpvs`` (anycastd.testing) for
the kernel, a route set for the speaker. ``Harness`` is the executor the controller runs:
plan, run the steps in order, stop at the first failure, observe again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from anycastd.config import Config, ServiceConfig, loads
from anycastd.core.desired import RealServerKey, compute, real_server_key
from anycastd.core.health import ServiceState as S
from anycastd.core.plan import (
    BgpStep,
    ControllerState,
    IpvsStep,
    LoopbackStep,
    Observed,
    Plan,
    Step,
    plan,
)
from anycastd.core.rib import resolve, routes_from_rib
from anycastd.errors import ActuatorError, TransientError
from anycastd.model import (
    AddAddress,
    AddRealServer,
    AddService,
    Attributes,
    BgpSettings,
    DeleteService,
    EditRealServer,
    Neighbor,
    RealServer,
    RemoveAddress,
    ResolvedAttributes,
    RibKey,
    Route,
    ServiceSpec,
    VirtualService,
)
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.ipvs import FakeIpvs
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import BGP_HEAD

CHECK = 'checks = [{type = "tcp", host = "127.0.0.1", port = 80}]'
_T = TypeVar("_T")


# --- the simulated world --------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Step ``step`` of the next pass fails after ``cut`` of its actions (for a BgpStep:
    after ``cut`` speaker commands, the next one is rejected by "ExaBGP")."""

    step: int
    cut: int = 0


#: The speaker side of the simulated world: the neighbor the planner's configs name.
SETTINGS_1 = BgpSettings(
    router_id="192.0.2.1",
    local_as=65001,
    neighbors=(
        Neighbor("127.0.0.2", 65000, "127.0.0.1", families=("ipv4 unicast", "ipv6 unicast")),
    ),
)


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (the fakes' ``async`` methods) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(_T, stop.value)
    coro.close()
    raise AssertionError("a fake suspended")


class World:
    """The kernel and the speaker, as the controller sees them. The speaker is a
    ``FakeSpeaker``, which keeps the real one's rules (a parity test holds it to them): it
    remembers what it was asked for, its relay can go away and come back (a withdraw-only
    read-back), and ExaBGP can restart (its RIB empty)."""

    def __init__(self) -> None:
        self.lo = FakeLoopback()
        self.ipvs = FakeIpvs()
        self.speaker = FakeSpeaker(SETTINGS_1)
        self.hints: frozenset[Route] = frozenset()
        self._earlier_commands = 0  # sent by the speakers of earlier anycastd processes

    @property
    def announced(self) -> frozenset[Route]:
        """What the peers are offered, as routes (read back like the controller does)."""
        return routes_from_rib(self.speaker.sent, SETTINGS_1, self.hints)

    @property
    def bgp_changes(self) -> int:
        """Commands the speakers sent (updates on the wire), across anycastd restarts."""
        return self._earlier_commands + len(self.speaker.commands)

    def observe(self, hints: frozenset[Route] = frozenset()) -> Observed:
        self.hints = hints | frozenset(self.speaker.routes)
        return Observed(
            loopback=self.lo.observe(),
            ipvs=self.ipvs.observe(),
            announced=self.announced,
            ipvs_owned=self.ipvs.owned(),
        )

    @property
    def writes(self) -> int:
        return self.lo.writes + self.ipvs.writes

    def run(self, step: Step, fail: int | None = None) -> bool:
        """Apply ``step``; with ``fail`` only partly, and report failure (False)."""
        match step:
            case LoopbackStep(actions):
                if fail is None:
                    self.lo.apply(actions)
                    return True
                # the real batch tries every action and reports the first failure
                cut = fail % (len(actions) + 1)
                self.lo.apply(actions[:cut])
                if cut < len(actions):
                    self.lo.fail_next(TransientError("loopback", "injected"))
                    with contextlib.suppress(TransientError):
                        self.lo.apply(actions[cut:])
                return False
            case IpvsStep(actions):
                if fail is None:
                    self.ipvs.apply(actions)
                    return True
                self.ipvs.apply(actions[: fail % (len(actions) + 1)])
                return False
            case BgpStep(routes):
                if fail is not None:
                    self.speaker.fail_after(fail % 4)
                try:
                    run_sync(self.speaker.set_routes(routes))
                except ActuatorError:
                    return False
                finally:
                    self.speaker.clear_failures()
                return True
        raise AssertionError(step)

    def host_ips(self) -> set[str]:
        """The addresses that serve: none while the interface is down."""
        if not self.lo.link_up:
            return set()
        return {str(a.ip) for a in self.lo.addresses}

    def usable(self, vs: VirtualService) -> int:
        svc = self.ipvs.table.get(vs)
        if svc is None:
            return 0
        return sum(1 for d in svc.dests.values() if d.server.weight > 0)

    def restart_anycastd(self) -> None:
        """A new anycastd: a new speaker (nothing desired yet) over the same ExaBGP RIB."""
        rib = self.speaker.rib
        self._earlier_commands += len(self.speaker.commands)
        self.speaker = FakeSpeaker(SETTINGS_1)
        self.speaker.rib = rib


def violations(
    config: Config,
    world: World,
    states: Mapping[str, S],
    rs_up: Mapping[RealServerKey, bool],
    failing: Collection[str] = (),
) -> list[str]:
    """The safety invariant, against health (independent of the planner): an announced
    prefix has its host address on the interface, and an owner that may attract traffic —
    its state is not DOWN and its checks do not fail (or it opted into drain_on_failure) —
    with at least min_healthy real servers that their checks call healthy and that are at
    weight > 0 in a virtual service on the prefix's VIP (or no such requirement)."""
    problems: list[str] = []
    for prefix in sorted({r.prefix for r in world.announced}):
        net = ipaddress.ip_network(prefix)
        owners = [s for s in config.services.values() if net in s.prefixes]
        if net.prefixlen == net.max_prefixlen and str(net.network_address) not in world.host_ips():
            problems.append(f"{prefix} announced without its address")
        if owners and not any(_may_attract(s, net, world, states, rs_up, failing) for s in owners):
            problems.append(f"{prefix} announced for no healthy owner with enough real servers")
    return problems


def _may_attract(  # noqa: PLR0917 -- a predicate over the world, all of it needed
    s: ServiceConfig,
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    world: World,
    states: Mapping[str, S],
    rs_up: Mapping[RealServerKey, bool],
    failing: Collection[str],
) -> bool:
    state = S.DISABLED if s.disabled else states.get(s.name, S.DOWN)
    if not s.drain_on_failure and (state is S.DOWN or s.name in failing):
        return False
    if s.ipvs is None or s.ipvs.min_healthy == 0:
        return True
    in_rotation: set[str] = set()
    for vs, svc in world.ipvs.table.items():
        if s.ipvs.protocol == "fwmark":
            on_vip = vs.protocol == "fwmark" and vs.family == net.version
        else:
            on_vip = vs.protocol != "fwmark" and vs.address == str(net.network_address)
        if on_vip:
            in_rotation.update(a for (a, _), d in svc.dests.items() if d.server.weight > 0)
    healthy = [
        rs for rs in s.ipvs.real_servers
        if rs.weight > 0 and rs_up.get(real_server_key(s, rs), False)
        and str(rs.address) in in_rotation
    ]
    return len(healthy) >= s.ipvs.min_healthy


@dataclass
class Harness:
    """The executor: plan, run steps in order, stop at the first failure."""

    config: Config
    states: dict[str, S] = field(default_factory=dict)
    rs_up: dict[RealServerKey, bool] = field(default_factory=dict)
    world: World = field(default_factory=World)
    state: ControllerState = field(default_factory=ControllerState)
    now: float = 100.0
    shutdown: bool = False
    fail_closed: bool = False
    #: services whose own checks fail (their state may still say MAINTENANCE or DRAINING)
    failing: set[str] = field(default_factory=set)
    last: Plan | None = None

    def plan(self) -> Plan:
        desired = compute(self.config, self.states, self.rs_up, failing=self.failing)
        return plan(
            self.state, desired, self.world.observe(desired.route_hints), self.now,
            shutdown=self.shutdown, fail_closed=self.fail_closed,
        )

    def tick(self, failure: Failure | None = None) -> Plan:
        """One pass; checks the invariant after every step (a crash may stop anywhere).

        A world broken from outside (an address or virtual service removed by someone else)
        may stay broken only while the repairing step fails: a pass never adds a violation,
        opens with the withdraw when there is one, and leaves none after a step that worked.
        """
        before = set(self.violations())
        result = self.plan()
        self.state = result.state
        self.last = result
        if before:
            assert isinstance(result.steps[0], BgpStep), result.steps
        for i, step in enumerate(result.steps):
            fail = failure.cut if failure is not None and failure.step == i else None
            ok = self.world.run(step, fail)
            after = set(self.violations())
            assert after <= before, (i, step, after)
            assert not ok or not after, (i, step, after)
            if not ok:
                break
        return result

    def violations(self) -> list[str]:
        return violations(self.config, self.world, self.states, self.rs_up, self.failing)

    def converge(self, max_passes: int = 10) -> Plan:
        for _ in range(max_passes):
            result = self.tick()
            if not result.steps:
                return result
        raise AssertionError(f"no convergence: {result}")

    def restart(self) -> None:
        """anycastd restarted: the planner's state and the speaker's memory are gone."""
        self.state = ControllerState()
        self.world.restart_anycastd()



def config(text: str, *, bgp: bool = True) -> Config:
    return loads(BGP_HEAD + text if bgp else text)


WEB = f"""
[services.web]
prefixes = ["192.0.2.10/32"]
drain_time = "10s"
{CHECK}
[services.web.bgp.up]
med = 10
[services.web.ipvs]
port = 80
scheduler = "rr"
min_healthy = 1
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
weight = 5
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
weight = 5
"""
PREFIX = "192.0.2.10/32"
VS = VirtualService.tcp("192.0.2.10", 80)
RS1: RealServerKey = ("web", "10.1.0.1", 80)
RS2: RealServerKey = ("web", "10.1.0.2", 80)
UP_ROUTE = Route(PREFIX, Attributes(med=10))
DEMOTE = Route(PREFIX, Attributes(communities=("65535:0",)))


def web(text: str = WEB) -> Harness:
    h = Harness(config(text))
    h.states = {"web": S.UP}
    h.rs_up = {RS1: True, RS2: True}
    return h


def up_web() -> Harness:
    h = web()
    h.converge()
    assert h.world.announced == {UP_ROUTE}
    return h


def kinds(steps: tuple[Step, ...]) -> list[str]:
    return [type(s).__name__ for s in steps]


# --- bring-up -----------------------------------------------------------------------------------


def test_bring_up_orders_address_then_ipvs_then_announce() -> None:
    h = web()
    result = h.plan()
    assert result.steps == (
        LoopbackStep((AddAddress(ipaddress.ip_interface("192.0.2.10/32")),)),
        IpvsStep(
            (
                AddService(
                    ServiceSpec(
                        VS,
                        "rr",
                        0,
                        (RealServer("10.1.0.1", 80, 5), RealServer("10.1.0.2", 80, 5)),
                    )
                ),
                AddRealServer(VS, RealServer("10.1.0.1", 80, 5)),
                AddRealServer(VS, RealServer("10.1.0.2", 80, 5)),
            )
        ),
        BgpStep(frozenset({UP_ROUTE})),
    )
    assert result.next_wakeup is None


def test_converged_pass_plans_nothing() -> None:
    h = up_web()
    writes, changes = h.world.writes, h.world.bgp_changes
    result = h.tick()
    assert result.steps == ()
    assert (h.world.writes, h.world.bgp_changes) == (writes, changes)
    assert dict(result.phases) == {PREFIX: "announced"}


def test_restart_adopts_what_it_finds_without_a_flap() -> None:
    h = up_web()
    h.restart()
    writes, changes = h.world.writes, h.world.bgp_changes
    assert h.tick().steps == ()
    assert (h.world.writes, h.world.bgp_changes) == (writes, changes)


def test_failed_address_add_stops_the_announce() -> None:
    h = web()
    h.tick(Failure(step=0, cut=0))
    assert h.world.announced == frozenset()
    assert h.world.ipvs.table == {}
    h.converge()
    assert h.world.announced == {UP_ROUTE}


def test_not_enough_real_servers_means_no_announce_but_address_and_ipvs_idle() -> None:
    h = web()
    h.rs_up = {RS1: False, RS2: False}
    h.converge()
    assert h.world.announced == frozenset()
    assert h.world.host_ips() == {"127.0.0.1", "::1"}
    assert h.world.usable(VS) == 0
    assert VS in h.world.ipvs.table


def test_failing_real_server_goes_to_weight_zero_while_the_service_stays_up() -> None:
    h = up_web()
    h.rs_up[RS2] = False
    result = h.tick()
    assert result.steps == (IpvsStep((EditRealServer(VS, RealServer("10.1.0.2", 80, 0)),)),)
    assert h.world.announced == {UP_ROUTE}


# --- take-down ----------------------------------------------------------------------------------


def test_take_down_demotes_waits_drain_time_then_withdraws_then_ipvs_then_address() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.MAINTENANCE  # planned: a failure withdraws at once (test_safety)
    first = h.tick()
    assert first.steps == (BgpStep(frozenset({DEMOTE})),)
    assert first.state.drain_since(PREFIX) is None  # not on the wire yet: no clock
    started = h.tick()  # the controller plans again at once, and observes the demote
    assert started.steps == ()
    assert started.state.drain_since(PREFIX) == 100.0
    assert started.next_wakeup == 101.0  # connection poll (drain ends at 110)
    assert dict(started.phases) == {PREFIX: "draining"}

    h.now = 109.9
    waiting = h.tick()
    assert waiting.steps == ()
    assert waiting.next_wakeup == 110.0

    h.now = 110.0
    last = h.tick()
    assert kinds(last.steps) == ["BgpStep", "IpvsStep", "LoopbackStep"]
    assert last.steps[0] == BgpStep(frozenset())
    assert last.steps[1] == IpvsStep(
        (
            EditRealServer(VS, RealServer("10.1.0.1", 80, 0)),
            EditRealServer(VS, RealServer("10.1.0.2", 80, 0)),
        )
    )
    assert last.steps[2] == LoopbackStep((RemoveAddress(ipaddress.ip_interface(PREFIX)),))
    assert h.tick().state == ControllerState()  # the withdraw was observed: drain forgotten
    assert h.tick().steps == ()


def test_drain_ends_early_when_active_connections_reach_the_threshold() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=2)
    h.states["web"] = S.MAINTENANCE
    h.tick()
    assert h.world.announced == {DEMOTE}
    h.now = 102.0
    assert h.tick().steps == ()  # still 2 active connections
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=0, inactive=4)
    h.now = 103.0
    assert kinds(h.tick().steps) == ["BgpStep", "IpvsStep", "LoopbackStep"]
    assert h.world.announced == frozenset()


def test_health_back_during_drain_restores_the_route_without_a_withdraw() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=1)
    h.states["web"] = S.MAINTENANCE
    h.tick()
    h.now = 105.0
    h.states["web"] = S.UP
    result = h.tick()
    assert result.steps == (BgpStep(frozenset({UP_ROUTE})),)
    assert result.state == ControllerState()


def test_down_service_that_was_not_announced_is_not_demoted() -> None:
    h = web()
    h.states["web"] = S.DOWN
    result = h.tick()
    assert not any(isinstance(s, BgpStep) for s in result.steps)
    assert result.state == ControllerState()


def test_failed_withdraw_is_retried_and_nothing_is_removed_meanwhile() -> None:
    h = up_web()
    h.states["web"] = S.MAINTENANCE
    h.tick()
    h.tick()  # the demote observed: the drain's clock starts at 100
    h.now = 111.0
    h.tick(Failure(step=0, cut=0))
    assert h.world.announced == {DEMOTE}
    assert h.world.usable(VS) == 2
    assert "192.0.2.10" in h.world.host_ips()
    result = h.tick()
    assert result.steps[0] == BgpStep(frozenset())  # no second drain
    assert h.world.announced == frozenset()


def test_announced_prefix_whose_address_vanished_is_withdrawn_before_repair() -> None:
    h = up_web()
    h.world.lo.addresses = {a for a in h.world.lo.addresses if str(a.ip) != "192.0.2.10"}
    result = h.tick()
    assert kinds(result.steps) == ["BgpStep", "LoopbackStep", "BgpStep"]
    assert result.steps[0] == BgpStep(frozenset())
    assert h.world.announced == {UP_ROUTE}


def test_foreign_address_counts_as_present_and_is_never_removed() -> None:
    h = web()
    h.world.lo.add_foreign("192.0.2.10/32")
    h.converge()
    assert h.world.announced == {UP_ROUTE}
    assert h.world.lo.history == []
    h.states["web"] = S.DISABLED
    h.now = 200.0
    h.converge()
    h.now = 300.0
    h.converge()
    assert h.world.announced == frozenset()
    assert "192.0.2.10" in h.world.host_ips()
    assert VS not in h.world.ipvs.table  # disabled: no virtual service


def test_prefix_removed_from_config_is_withdrawn_then_cleaned_up() -> None:
    h = up_web()
    h.config = config(f'[services.other]\nprefixes = ["192.0.2.99/32"]\n{CHECK}\n')
    h.states = {"other": S.DOWN}
    result = h.tick()
    assert kinds(result.steps) == ["BgpStep", "IpvsStep", "LoopbackStep"]
    assert result.steps[1] == IpvsStep((DeleteService(VS),))
    assert h.world.announced == frozenset()
    assert h.world.ipvs.table == {}


# --- shutdown -----------------------------------------------------------------------------------


def test_shutdown_withdraw_goes_at_once_in_order() -> None:
    h = web(text=WEB.replace('drain_time = "10s"', 'drain_time = "10s"\nshutdown = "withdraw"'))
    h.converge()
    h.shutdown = True
    result = h.tick()
    assert kinds(result.steps) == ["BgpStep", "IpvsStep", "LoopbackStep"]
    assert result.steps[1] == IpvsStep((DeleteService(VS),))
    assert not result.shutdown_complete
    assert h.tick().shutdown_complete


def test_shutdown_drain_then_withdraw_waits_drain_time() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=1)
    h.shutdown = True
    first = h.tick()
    assert first.steps == (BgpStep(frozenset({DEMOTE})),)
    assert not first.shutdown_complete
    h.tick()  # the demote observed: the drain's clock starts at 100
    h.now = 110.0
    h.tick()
    done = h.tick()
    assert done.steps == ()
    assert done.shutdown_complete
    assert h.world.ipvs.table == {}
    assert h.world.host_ips() == {"127.0.0.1", "::1"}


def test_shutdown_keep_leaves_everything_as_is() -> None:
    h = web(text=WEB.replace('drain_time = "10s"', 'drain_time = "10s"\nshutdown = "keep"'))
    h.converge()
    h.shutdown = True
    h.states["web"] = S.MAINTENANCE  # a planned state change does not matter any more
    writes = h.world.writes
    result = h.tick()
    assert result.steps == ()
    assert result.shutdown_complete
    assert h.world.writes == writes
    assert h.world.announced == {UP_ROUTE}


# --- shared prefixes ----------------------------------------------------------------------------


SHARED = f"""
[services.a]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
drain_time = "0s"
{CHECK}
[services.a.bgp.up]
med = 1
[services.b]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
drain_time = "0s"
{CHECK}
[services.b.bgp.up]
med = 2
"""


def test_shared_prefix_stays_announced_while_any_owner_is_up() -> None:
    h = Harness(config(SHARED), states={"a": S.UP, "b": S.UP})
    h.converge()
    assert h.world.announced == {Route("192.0.2.30/32", Attributes(med=1))}
    h.states["a"] = S.DOWN
    result = h.tick()
    assert result.steps == (BgpStep(frozenset({Route("192.0.2.30/32", Attributes(med=2))})),)
    h.states["b"] = S.DOWN
    h.converge()
    assert h.world.announced == frozenset()
    assert "192.0.2.30" not in h.world.host_ips()


# --- reading the speaker back -------------------------------------------------------------------


SETTINGS = BgpSettings(
    router_id="192.0.2.1",
    local_as=65001,
    neighbors=(Neighbor("10.0.0.1", 65000, name="r1"), Neighbor("10.0.0.2", 65000, name="r2")),
)


def test_routes_from_rib_returns_the_hint_that_resolves_to_the_same_entries() -> None:
    hint = Route(PREFIX, Attributes(med=10, communities=("65535:0",)), ("r1",))
    rib = resolve([hint], SETTINGS)
    assert routes_from_rib(rib, SETTINGS, [UP_ROUTE, hint]) == {hint}


def test_routes_from_rib_rebuilds_unknown_prefixes_per_attribute_set() -> None:
    rib: Mapping[RibKey, ResolvedAttributes] = {
        ("10.0.0.1", PREFIX): ResolvedAttributes("self", med=5),
        ("10.0.0.2", PREFIX): ResolvedAttributes("self", med=7),
    }
    routes = routes_from_rib(rib, SETTINGS, [UP_ROUTE])
    assert routes == {
        Route(PREFIX, Attributes(med=5), ("10.0.0.1",)),
        Route(PREFIX, Attributes(med=7), ("10.0.0.2",)),
    }
    assert resolve(routes, SETTINGS) == rib


# --- the safety net behind the order ----------------------------------------------------------


def test_backend_swap_whose_only_server_in_rotation_died_withdraws_first() -> None:
    # Health, not weights: the moment RS1 is called dead nothing healthy is in rotation, so
    # the route goes first (an IPVS repair that fails would otherwise leave it announced);
    # the swap itself still adds capacity before it takes any away.
    h = web()
    h.rs_up = {RS1: True, RS2: False}
    h.converge()
    h.rs_up = {RS1: False, RS2: True}
    result = h.tick(Failure(step=1, cut=1))  # the IPVS batch stops after its first action
    assert result.steps == (
        BgpStep(frozenset()),
        IpvsStep(
            (
                EditRealServer(VS, RealServer("10.1.0.2", 80, 5)),
                EditRealServer(VS, RealServer("10.1.0.1", 80, 0)),
            )
        ),
        BgpStep(frozenset({UP_ROUTE})),
    )
    assert h.world.announced == frozenset()
    assert h.world.usable(VS) == 2
    h.converge()
    assert h.world.announced == {UP_ROUTE}
    assert h.world.usable(VS) == 1


def test_broken_prefix_being_taken_down_is_withdrawn_without_a_demote() -> None:
    h = up_web()
    h.world.ipvs.table.clear()  # someone flushed IPVS
    h.states["web"] = S.DOWN
    result = h.tick()
    assert result.steps[0] == BgpStep(frozenset())
    assert result.state == ControllerState()


def test_announce_waits_for_the_guards_even_if_desired_disagrees() -> None:
    h = web()
    desired = compute(h.config, h.states, h.rs_up)
    svc = desired.service("web")
    assert svc is not None
    starved = dataclasses.replace(
        desired,
        services=(dataclasses.replace(svc, live=svc.idle),),
    )
    result = plan(ControllerState(), starved, h.world.observe(), 0.0)
    assert kinds(result.steps) == ["LoopbackStep", "IpvsStep"]
    assert dict(result.phases) == {PREFIX: "withdrawn"}


def test_shutdown_keeps_the_backends_of_a_kept_shared_prefix() -> None:
    text = f"""
[services.a]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
shutdown = "withdraw"
{CHECK}
[services.a.ipvs]
port = 80
[[services.a.ipvs.real_servers]]
address = "10.1.0.1"
[services.b]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
shutdown = "keep"
{CHECK}
"""
    h = Harness(config(text), states={"a": S.UP, "b": S.DOWN}, rs_up={("a", "10.1.0.1", 80): True})
    h.converge()
    h.shutdown = True
    result = h.tick()
    assert result.steps == ()
    assert result.shutdown_complete
    assert VirtualService.tcp("192.0.2.30", 80) in h.world.ipvs.table


def test_observed_rib_read_back_with_desired_hints_plans_nothing() -> None:
    h = up_web()
    settings = BgpSettings(router_id="192.0.2.1", local_as=65001, neighbors=SETTINGS.neighbors)
    desired = compute(h.config, h.states, h.rs_up)
    rib = resolve(h.world.announced, settings)
    observed = dataclasses.replace(
        h.world.observe(), announced=routes_from_rib(rib, settings, desired.route_hints)
    )
    assert plan(ControllerState(), desired, observed, 0.0).steps == ()


def test_drain_clock_starts_only_once_the_demote_is_observed() -> None:
    # A demote that cannot go out (relay down) is not drain time the peers had.
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=1)
    h.states["web"] = S.MAINTENANCE
    h.tick(Failure(step=0, cut=0))  # the demote fails
    assert h.world.announced == {UP_ROUTE}
    h.now = 120.0  # long past a drain_time counted from the first attempt
    result = h.tick()
    assert result.steps == (BgpStep(frozenset({DEMOTE})),)  # demote, never straight to withdraw
    assert h.tick().state.drain_since(PREFIX) == 120.0
