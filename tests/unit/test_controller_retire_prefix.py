"""A reload that drops some of a service's prefixes (the service stays) takes those prefixes
down the planned way, on virtual time: demote with the service's draining attributes,
``drain_time``, withdraw, then the address. The prefixes that stay see nothing.

The reload is played as the daemon plays it (``Controller.retire(old, new)`` while the old
health is still current, then ``reconfigure(new)``); see test_controller_retire.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from anycastd.actuators.memory import MemoryOspf
from anycastd.config import Config, loads
from anycastd.core.health import ServiceState
from anycastd.core.plan import ControllerState, LoopbackStep, Observed, OspfStep, plan
from anycastd.engine.reload import reload as ospf_reload
from anycastd.engine.retire import Retirements
from anycastd.model import GRACEFUL_SHUTDOWN, AddAddress, OspfRoute, VirtualService
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import CONTROLLER_HEAD, DAEMON_HEAD
from tests.unit.test_controller import (
    DNS_PREFIX,
    UP,
    WEB,
    WEB_PREFIX,
    WEB_VS,
    Harness,
    converged,
)
from tests.unit.test_controller_retire import OSPF_CONFIG, OSPF_PREFIX, OSPF_SETTINGS, bgp, reload
from tests.unit.test_daemon import FAST, A, B, Node, running, wait_for
from tests.unit.test_ospf_reload import SERVICE, OspfNode

DOWN = ServiceState.DOWN
OTHER = "192.0.2.54/32"  # the prefix dns drops


def dns(*prefixes: str, shutdown: str = "drain-then-withdraw", name: str = "dns",
        shared: bool = False) -> str:
    listed = ", ".join(f'"{p}"' for p in prefixes)
    return (f"\n[services.{name}]\nprefixes = [{listed}]\ndrain_time = \"10s\"\n"
            f'shutdown = "{shutdown}"\nshared_prefixes = {str(shared).lower()}\n'
            f'[[services.{name}.checks]]\ntype = "file"\npath = "/nonexistent/{name}"\n')


def cfg(*parts: str) -> Config:
    return loads(CONTROLLER_HEAD + "".join(parts))


BOTH = cfg(dns(DNS_PREFIX, OTHER))
ONE = cfg(dns(DNS_PREFIX))


async def test_a_dropped_prefix_is_demoted_drained_withdrawn_then_its_address_goes() -> None:
    h = Harness(BOTH)
    await converged(h)
    mark = len(h.journal)

    reload(h, ONE)
    await h.run_until(9.999)
    assert h.announced() == {DNS_PREFIX: (), OTHER: (GRACEFUL_SHUTDOWN,)}
    assert h.lo.holds(OTHER)
    await h.run_until(10.0)
    assert h.announced() == {DNS_PREFIX: ()}
    assert not h.lo.holds(OTHER)
    assert h.lo.holds(DNS_PREFIX)
    assert h.journal[mark:] == [  # the prefix that stays: no update, its address alone
        (0.0, "bgp", f"routes [{DNS_PREFIX}, {OTHER} {GRACEFUL_SHUTDOWN}]"),
        (10.0, "bgp", f"routes [{DNS_PREFIX}]"),
        (10.0, "lo", f"remove {OTHER}"),
    ]
    assert not h.ctl.retiring
    await h.stop()


async def test_the_service_stays_one_service_while_its_dropped_prefix_drains() -> None:
    h = Harness(BOTH)
    await converged(h)
    reload(h, ONE)
    await h.run_until(1.0)
    assert h.ctl.retiring
    shown = h.ctl.desired().service("dns")
    assert shown is not None
    assert shown.state is UP  # the live service, not the draining remnant
    assert shown.prefixes == (DNS_PREFIX,)
    (r,) = h.ctl.retiring
    assert r.of == "dns"
    assert r.name != "dns"  # internal: never a config name
    assert [str(p) for p in r.service.prefixes] == [OTHER]
    await h.stop()


async def test_a_dropped_prefix_of_a_failing_service_is_withdrawn_at_once() -> None:
    h = Harness(BOTH)
    await converged(h)
    mark = len(h.journal)
    h.states["dns"] = DOWN  # no poke: the reload comes first

    reload(h, ONE)
    await h.run_until(0.0)
    assert bgp(h, mark) == [(0.0, "routes []")]  # no demote
    assert not h.lo.holds(OTHER)
    assert not h.ctl.retiring
    await h.stop()


async def test_the_prefix_back_in_the_service_within_the_drain_is_promoted_without_a_flap(
) -> None:
    h = Harness(BOTH)
    await converged(h)
    mark = len(h.journal)
    reload(h, ONE)
    await h.run_until(4.0)
    assert h.announced() == {DNS_PREFIX: (), OTHER: (GRACEFUL_SHUTDOWN,)}

    reload(h, BOTH)
    assert not h.ctl.retiring
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: (), OTHER: ()}
    assert bgp(h, mark) == [
        (0.0, f"routes [{DNS_PREFIX}, {OTHER} {GRACEFUL_SHUTDOWN}]"),
        (4.0, f"routes [{DNS_PREFIX}, {OTHER}]"),  # straight back: never withdrawn
    ]
    assert h.lo.holds(OTHER)
    await h.stop()


async def test_a_dropped_prefix_another_service_declares_is_the_new_owners_at_once() -> None:
    h = Harness(BOTH)
    await converged(h)
    mark = len(h.journal)

    reload(h, cfg(dns(DNS_PREFIX), dns(OTHER, name="dns2")))
    assert not h.ctl.retiring
    h.states["dns2"] = UP
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: (), OTHER: ()}
    assert h.journal[mark:] == []  # one owner, no demote, no withdraw
    await h.stop()


async def test_a_shared_prefix_one_owner_drops_stays_with_the_other() -> None:
    h = Harness(cfg(dns(DNS_PREFIX, OTHER, shared=True), dns(OTHER, name="dns2", shared=True)))
    await converged(h)
    mark = len(h.journal)

    reload(h, cfg(dns(DNS_PREFIX, shared=True), dns(OTHER, name="dns2", shared=True)))
    assert not h.ctl.retiring
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: (), OTHER: ()}
    assert h.journal[mark:] == []
    await h.stop()


async def test_a_stop_during_the_drain_of_a_dropped_prefix_continues_it() -> None:
    # the live service withdraws at the stop (its policy); the dropped prefix's drain goes on
    h = Harness(cfg(dns(DNS_PREFIX, OTHER, shutdown="withdraw")))
    await converged(h)
    reload(h, cfg(dns(DNS_PREFIX, shutdown="withdraw")))
    await h.run_until(4.0)
    await h.stop()

    task = asyncio.create_task(h.ctl.shutdown(60.0))
    await h.run_until(9.999, waiter=task)
    assert not task.done()
    assert h.announced() == {OTHER: (GRACEFUL_SHUTDOWN,)}
    await h.run_until(10.0, waiter=task)
    assert task.done()
    assert task.result() is True
    assert h.announced() == {}
    assert not h.lo.holds(OTHER)


async def test_an_ipvs_service_serves_a_dropped_prefix_through_its_drain() -> None:
    two = WEB.replace(f'["{WEB_PREFIX}"]', f'["{WEB_PREFIX}", "192.0.2.11/32"]')
    before = loads(CONTROLLER_HEAD + two.format(shutdown="drain-then-withdraw", min_healthy=1))
    after = loads(CONTROLLER_HEAD + WEB.format(shutdown="drain-then-withdraw", min_healthy=1))
    dropped = VirtualService("tcp", "192.0.2.11", 80)
    h = Harness(before)
    await converged(h)
    h.ipvs.set_connections(dropped, "10.1.0.1", 80, active=5)  # a drain that is not quiet
    mark = len(h.journal)

    reload(h, after)
    await h.run_until(9.999)
    assert h.announced() == {WEB_PREFIX: (), "192.0.2.11/32": (GRACEFUL_SHUTDOWN,)}
    assert h.ipvs.weights(dropped) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}  # still serving
    await h.run_until(10.0)
    after_drain = [(kind, what) for t, kind, what in h.journal[mark:] if t == 10.0]
    assert after_drain[0] == ("bgp", f"routes [{WEB_PREFIX}]")
    assert after_drain[-1] == ("lo", "remove 192.0.2.11/32")
    assert dropped not in h.ipvs.table
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}  # untouched
    assert not h.ctl.retiring
    await h.stop()


# ---- the daemon: /status and metrics (real time, fakes; see test_daemon) ------------------


def _two(tmp: Path, *prefixes: str) -> str:
    listed = '", "'.join(prefixes)
    return FAST.format(tmp=tmp, name="a", prefix=listed, shutdown="withdraw").replace(
        'drain_time = "300ms"', 'drain_time = "1s"')


async def test_the_daemon_shows_one_service_while_its_dropped_prefix_drains(
    tmp_path: Path,
) -> None:
    head = DAEMON_HEAD.format(tmp=tmp_path)
    node = Node(tmp_path, head + _two(tmp_path, A, B), dry_run=False)  # metrics fed
    node.flag("a-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: (), B: ()})
        assert node.daemon is not None
        ctl = node.daemon.controller
        assert ctl is not None
        node.path.write_text(head + _two(tmp_path, A))
        node.daemon.request_reload()
        # the demote, and the pass that made it (and exported its metrics) has ended
        await wait_for(lambda: node.announced() == {A: (), B: (GRACEFUL_SHUTDOWN,)}
                       and ctl.busy_since is None)
        doc = node.daemon.status()
        services = doc["services"]
        assert isinstance(services, dict)
        assert set(services) == {"a"}  # one service: no second "a", no internal name
        assert services["a"]["state"] == "up"
        assert services["a"]["announced"] == [A, B]  # B still announced (demoted)
        prefixes = doc["prefixes"]
        assert isinstance(prefixes, dict)
        assert prefixes[B] == "draining"
        registry = node.daemon.metrics.registry
        assert registry.get_sample_value(
            "anycastd_prefix_announced", {"service": "a", "prefix": B}) == 1.0
        names = {s.labels.get("service") for m in registry.collect() for s in m.samples}
        assert names - {None} == {"a"}

        await wait_for(lambda: node.announced() == {A: ()} and not node.holds(B))
        # not announced now (the series goes at the next pass: no service declares B)
        await wait_for(lambda: registry.get_sample_value(
            "anycastd_prefix_announced", {"service": "a", "prefix": B}) in (0.0, None))
        assert "a" in node.daemon.status()["services"]  # type: ignore[operator]
        assert registry.get_sample_value(
            "anycastd_service_state", {"service": "a", "state": "up"}) == 1.0
        assert node.holds(A)


def test_a_dropped_ospf_prefix_publishes_its_draining_metric_for_the_drain() -> None:
    # Pure: the remnant in the desired state, the planner, the OSPF twin.
    two = OSPF_CONFIG.replace(f'["{OSPF_PREFIX}"]', f'["{OSPF_PREFIX}", "192.0.2.81/32"]')
    before, after = loads(two), loads(OSPF_CONFIG)
    retiring = Retirements()
    retiring.reload(before, after, now=0.0, states={"web": UP}, real_servers_up={})
    lo, ospf = FakeLoopback(), MemoryOspf(OSPF_SETTINGS)
    lo.apply([AddAddress(ipaddress.ip_interface(p)) for p in (OSPF_PREFIX, "192.0.2.81/32")])
    ospf.apply(frozenset({OspfRoute(OSPF_PREFIX, 10), OspfRoute("192.0.2.81/32", 10)}))
    state = ControllerState()
    done: list[object] = []
    for now in (1.0, 2.0, 6.9, 7.0, 8.0):
        desired = retiring.desired(after, {"web": UP}, {}, ())
        observed = Observed(loopback=lo.observe(), ospf=ospf.observe())
        result = plan(state, desired, observed, now)
        state = result.state
        retiring.settle(observed, state)
        for s in result.steps:
            if isinstance(s, OspfStep):
                ospf.apply(s.routes)
                done.append((now, sorted((r.prefix, r.metric) for r in s.routes)))
            elif isinstance(s, LoopbackStep):
                lo.apply(list(s.actions))
                done += [(now, str(a)) for a in s.actions]
    # the draining metric (100) at once, its 5 s, then the route goes before the address;
    # the kept prefix stays at its metric throughout
    assert done == [(1.0, [(OSPF_PREFIX, 10), ("192.0.2.81/32", 100)]),
                    (7.0, [(OSPF_PREFIX, 10)]), (7.0, "remove 192.0.2.81/32")]
    assert not retiring


async def test_a_dropped_ospf_prefix_keeps_its_old_metrics_in_the_route_map_while_it_drains(
    tmp_path: Path,
) -> None:
    # the same reload changes the service's metrics: the dropped prefix drains with the
    # old draining metric (200), which the route-map must still hold
    def service(prefixes: str, metrics: str) -> str:
        return SERVICE.format(a=A, tmp=tmp_path, up=20).replace(
            f'["{A}"]', prefixes).replace("up = 20", metrics).replace(
            'drain_time = "300ms"', 'drain_time = "1s"')

    head = DAEMON_HEAD.format(tmp=tmp_path)
    node = OspfNode(tmp_path, head + service(
        f'["{A}", "{B}"]', "up = 20, draining = 200, maintenance = 300"))
    (tmp_path / "a-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 20), OspfRoute(B, 20)},
                       within=10.0)
        assert node.daemon is not None
        assert node.ospf is not None
        node.path.write_text(head + service(
            f'["{A}"]', "up = 20, draining = 210, maintenance = 310"))
        await ospf_reload(node.daemon)
        assert {200, 210} <= set(node.ospf.settings.metrics)
        await wait_for(lambda: node.published() == {OspfRoute(A, 20), OspfRoute(B, 200)})
        await wait_for(lambda: node.published() == {OspfRoute(A, 20)} and not any(
            a.ip == ipaddress.ip_interface(B).ip for a in node.lo.addresses))
