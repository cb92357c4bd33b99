"""The routing state never lies: one test per way a dead service could still attract traffic.

Each test reproduces one scenario of the safety review at the level of behaviour: the routes
the (fake) speaker holds, the addresses on the (fake) interface, the IPVS weights. The pure
planner is driven by ``tests.unit.test_plan.Harness`` (plan, run the steps in order, check
the invariant after every step); the controller shell by ``tests.unit.test_controller``.
"""

from __future__ import annotations

from collections.abc import Sequence

from anycastd.core.health import ServiceState as S
from anycastd.model import AddAddress, AddressAction, VirtualService
from anycastd.testing.clock import FakeClock
from tests.unit import test_controller as ctl
from tests.unit.test_plan import (
    CHECK,
    DEMOTE,
    RS1,
    RS2,
    UP_ROUTE,
    VS,
    WEB,
    BgpStep,
    Harness,
    config,
    kinds,
    up_web,
    web,
)

MIN2 = WEB.replace("min_healthy = 1", "min_healthy = 2")


def weights(h: Harness, vs: VirtualService = VS) -> dict[str, int]:
    svc = h.world.ipvs.table.get(vs)
    if svc is None:
        return {}
    return {f"{a}:{p}": d.server.weight for (a, p), d in svc.dests.items()}


# --- 2. a real server its checks call dead gets weight 0 at once, in every state -------------


def test_dead_real_servers_leave_rotation_at_once_when_too_few_remain() -> None:
    h = web(MIN2)
    h.converge()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)  # a drain would not be quiet
    h.rs_up[RS2] = False  # below min_healthy: the service is effectively DOWN
    h.tick()
    assert weights(h)["10.1.0.2:80"] == 0
    assert h.world.announced == frozenset()


def test_a_real_server_dying_during_a_planned_drain_leaves_rotation_at_once() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.MAINTENANCE
    h.tick()
    h.tick()
    assert h.world.announced == {DEMOTE}  # draining, as planned
    h.rs_up[RS2] = False
    h.now += 1.0
    h.tick()
    assert weights(h) == {"10.1.0.1:80": 5, "10.1.0.2:80": 0}
    assert h.world.announced == {DEMOTE}  # one healthy real server is enough (min_healthy 1)


def test_a_planned_drain_ends_at_once_when_the_last_healthy_real_server_dies() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.MAINTENANCE
    h.tick()
    h.tick()
    h.rs_up = {RS1: False, RS2: False}
    h.now += 1.0
    h.tick()
    assert h.world.announced == frozenset()
    assert weights(h) == {"10.1.0.1:80": 0, "10.1.0.2:80": 0}


# --- 3. a failure withdraws at once; only planned take-downs drain ----------------------------


def test_a_failing_service_is_withdrawn_at_once_without_a_demote() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.DOWN
    result = h.tick()
    assert result.steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()
    assert "192.0.2.10" not in h.world.host_ips()


def test_too_few_healthy_real_servers_withdraw_at_once() -> None:
    h = web(MIN2)
    h.converge()
    h.rs_up[RS1] = False
    assert h.tick().steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()


def test_maintenance_is_planned_and_drains_before_the_withdraw() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.MAINTENANCE
    assert h.tick().steps == (BgpStep(frozenset({DEMOTE})),)
    h.tick()
    h.now = 109.9
    h.tick()
    assert h.world.announced == {DEMOTE}
    h.now = 110.0
    h.tick()
    assert h.world.announced == frozenset()


def test_drain_on_failure_opts_back_into_demote_then_withdraw() -> None:
    h = web(WEB.replace('drain_time = "10s"', 'drain_time = "10s"\ndrain_on_failure = true'))
    h.converge()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.DOWN
    assert h.tick().steps == (BgpStep(frozenset({DEMOTE})),)


def test_a_service_failing_during_its_maintenance_drain_is_withdrawn_at_once() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.states["web"] = S.MAINTENANCE
    h.tick()
    h.tick()
    assert h.world.announced == {DEMOTE}
    h.failing.add("web")  # its own checks now fail too
    h.now += 1.0
    h.tick()
    assert h.world.announced == frozenset()


def test_a_shutdown_drain_of_a_service_that_fails_meanwhile_withdraws_at_once() -> None:
    h = up_web()
    h.world.ipvs.set_connections(VS, "10.1.0.1", 80, active=3)
    h.shutdown = True
    h.tick()
    h.tick()
    assert h.world.announced == {DEMOTE}
    h.states["web"] = S.DOWN
    h.now += 1.0
    h.tick()
    assert h.world.announced == frozenset()


def test_keep_at_shutdown_never_holds_up_a_failing_service() -> None:
    h = web(WEB.replace('drain_time = "10s"', 'drain_time = "10s"\nshutdown = "keep"'))
    h.converge()
    h.shutdown = True
    h.states["web"] = S.DOWN
    assert h.tick().steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()


def test_an_operator_drain_of_a_service_whose_checks_then_fail_is_withdrawn_at_once() -> None:
    # The drain flag outranks the checks in the state (DRAINING), but a dead service must
    # not keep its (demoted) route: review finding, issue 8 #3.
    h = up_web()
    h.states["web"] = S.DRAINING
    h.tick()
    assert h.world.announced == {DEMOTE}
    h.failing.add("web")
    h.now += 1.0
    assert h.tick().steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()


def test_keep_at_shutdown_never_holds_up_a_prefix_whose_interface_is_down() -> None:
    h = web(WEB.replace('drain_time = "10s"', 'drain_time = "10s"\nshutdown = "keep"'))
    h.converge()
    h.shutdown = True
    h.world.lo.link_up = False
    assert h.tick().steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()


# --- 4. a reload that moves a virtual service is make-before-break ----------------------------


def test_changing_the_virtual_port_keeps_the_prefix_announced_throughout() -> None:
    h = up_web()
    changes = h.world.bgp_changes
    h.config = config(WEB.replace("\nport = 80\n", "\nport = 8080\n"))
    h.rs_up = {("web", "10.1.0.1", 8080): True, ("web", "10.1.0.2", 8080): True}
    h.converge()  # the invariant is checked after every step inside
    new_vs = VirtualService.tcp("192.0.2.10", 8080)
    assert list(h.world.ipvs.table) == [new_vs]
    assert weights(h, new_vs) == {"10.1.0.1:8080": 5, "10.1.0.2:8080": 5}
    assert h.world.announced == {UP_ROUTE}
    assert h.world.bgp_changes == changes  # never withdrawn, never re-announced


def test_changing_the_protocol_keeps_the_prefix_announced_throughout() -> None:
    h = up_web()
    changes = h.world.bgp_changes
    udp = WEB.replace("[services.web.ipvs]\n", '[services.web.ipvs]\nprotocol = "udp"\n')
    h.config = config(udp)
    h.converge()
    assert list(h.world.ipvs.table) == [VirtualService("udp", "192.0.2.10", 80)]
    assert h.world.bgp_changes == changes


def test_a_moved_virtual_service_whose_new_real_servers_are_dead_is_withdrawn() -> None:
    h = up_web()
    h.config = config(WEB.replace("\nport = 80\n", "\nport = 8080\n"))
    h.rs_up = {("web", "10.1.0.1", 8080): False, ("web", "10.1.0.2", 8080): False}
    h.converge()
    assert h.world.announced == frozenset()


# --- 10. without [bgp] nothing is announced, and nothing pretends to be -----------------------


NO_BGP = f"""
[services.dns]
prefixes = ["192.0.2.53/32"]
{CHECK}
"""


def test_without_bgp_the_address_is_managed_and_no_route_is_planned() -> None:
    h = Harness(config(NO_BGP, bgp=False), states={"dns": S.UP})
    result = h.converge()
    assert "192.0.2.53" in h.world.host_ips()
    assert h.world.announced == frozenset()
    assert dict(result.phases) == {"192.0.2.53/32": "serving"}
    h.states["dns"] = S.DOWN
    h.converge()
    assert "192.0.2.53" not in h.world.host_ips()


# --- 11. an interface that is down serves nothing -------------------------------------------


def test_a_prefix_is_withdrawn_while_its_interface_is_down_and_back_once_it_is_up() -> None:
    h = up_web()
    h.world.lo.link_up = False  # `ip link set lo down`
    result = h.tick()
    assert result.steps[0] == BgpStep(frozenset())
    assert h.world.announced == frozenset()
    h.converge()
    assert h.world.announced == frozenset()  # the address is there, the link is not
    h.world.lo.link_up = True
    h.converge()
    assert h.world.announced == {UP_ROUTE}


# --- shutdown after a crash: fail closed -------------------------------------------------------


def test_a_fail_closed_shutdown_withdraws_even_kept_prefixes_at_once() -> None:
    h = web(WEB.replace('drain_time = "10s"', 'drain_time = "10s"\nshutdown = "keep"'))
    h.converge()
    h.shutdown = h.fail_closed = True
    result = h.tick()
    assert kinds(result.steps)[0] == "BgpStep"
    assert h.world.announced == frozenset()
    assert h.tick().shutdown_complete
    assert h.world.ipvs.table == {}
    assert "192.0.2.10" not in h.world.host_ips()


# --- 7. a pass re-reads health right before it announces --------------------------------------


class DyingDuringBringUp(ctl.JournalLoopback):
    """The service's check fails while the pass adds its address (before the announce)."""

    def __init__(self, clock: FakeClock, journal: ctl.Journal, h: ctl.Harness) -> None:
        super().__init__(clock, journal)
        self.h = h

    def apply(self, actions: Sequence[AddressAction]) -> None:
        super().apply(actions)
        if any(isinstance(a, AddAddress) for a in actions):
            self.h.states["dns"] = S.DOWN
            self.h.ctl.poke()  # what the daemon does on a health edge


async def test_a_service_that_fails_during_its_own_bring_up_pass_is_never_announced() -> None:
    h = ctl.Harness(ctl.config(web=False, dns=True))
    h.lo = DyingDuringBringUp(h.clock, h.journal, h)
    h.ctl.loopback = h.lo
    h.states["dns"] = S.UP
    await h.ctl.reconcile()
    assert all(kind != "bgp" for _, kind, _ in h.journal), h.journal
    assert h.announced() == {}
    assert not h.lo.holds(ctl.DNS_PREFIX)  # and the pass cleaned up after itself


# --- 1. (controller side) a route the speaker remembers is never re-sent by it ----------------


async def test_a_down_service_is_not_announced_after_the_relay_comes_back() -> None:
    h = ctl.Harness(ctl.config(web=False, dns=True))
    h.speaker.on_resync = h.ctl.poke
    h.states["dns"] = S.UP
    h.speaker.disconnect()
    await h.start()  # the address goes on; the announce fails (relay away)
    assert h.lo.holds(ctl.DNS_PREFIX)
    h.states["dns"] = S.DOWN
    h.poke()
    await h.run_until(5.0)  # the address goes; nothing is announced, so no BGP step
    assert not h.lo.holds(ctl.DNS_PREFIX)
    h.speaker.reconnect()  # the speaker reads back and reports; it announces nothing itself
    await h.run_until(5.1)
    assert h.announced() == {}
    await h.stop()

