"""A reload that removes a service takes it down the planned way, on virtual time.

DESIGN.md: "Order, planned take-down (maintenance, drain, SIGTERM, a reload that removes a
service): demote -> drain period -> withdraw -> IPVS weights to 0 / remove -> remove
address." The reload is played as the daemon plays it: ``Controller.retire(old, new)``
while the old health is still current, then ``reconfigure(new)`` and the new health.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from anycastd.actuators import frr
from anycastd.actuators.memory import MemoryOspf
from anycastd.config import Config, loads
from anycastd.core.health import ServiceState
from anycastd.core.plan import ControllerState, LoopbackStep, Observed, OspfStep, plan
from anycastd.engine.reload import carry_over, revive
from anycastd.engine.reload import reload as ospf_reload
from anycastd.engine.retire import Retirements
from anycastd.model import GRACEFUL_SHUTDOWN, AddAddress, OspfRoute
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import CONTROLLER_HEAD, DAEMON_HEAD
from tests.unit.test_controller import (
    DNS,
    DNS_PREFIX,
    MAINTENANCE,
    UP,
    WEB_PREFIX,
    WEB_VS,
    Harness,
    config,
    converged,
)
from tests.unit.test_daemon import A, B, Node, fast, running, wait_for
from tests.unit.test_ospf_reload import SERVICE, OspfNode, _text

DOWN = ServiceState.DOWN

OSPF_PREFIX = "192.0.2.80/32"
OSPF_CONFIG = """
[services.web]
prefixes = ["192.0.2.80/32"]
drain_time = "5s"
checks = [{type = "tcp", host = "127.0.0.1", port = 80}]
[services.web.ospf]
metric = { up = 10, draining = 100, maintenance = 65535 }
"""
OSPF_SETTINGS = frr.OspfSettings(metrics=(10, 100, 65535))


def reload(h: Harness, new: Config) -> dict[str, object]:
    """Play a reload from the harness's current config to ``new``; returns the retirements
    it cancelled (new name -> retiree)."""
    revived = h.ctl.retire(h.ctl.config, new)
    for gone in set(h.ctl.config.services) - set(new.services):
        h.states.pop(gone, None)
    h.ctl.reconfigure(new)
    return dict(revived)


def bgp(h: Harness, mark: int) -> list[tuple[float, str]]:
    return [(t, what) for t, kind, what in h.journal[mark:] if kind == "bgp"]


async def test_a_removed_service_is_demoted_drained_withdrawn_then_its_address_goes() -> None:
    h = Harness(config(dns=True))
    await converged(h)
    mark = len(h.journal)

    reload(h, config())
    await h.run_until(0.0)
    assert h.announced() == {WEB_PREFIX: (), DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}
    assert h.lo.holds(DNS_PREFIX)
    shown = h.ctl.desired().service("dns")
    assert shown is not None
    assert shown.state is ServiceState.DRAINING  # what metrics and /status read

    await h.run_until(9.999)
    assert h.announced()[DNS_PREFIX] == (GRACEFUL_SHUTDOWN,)
    assert h.lo.holds(DNS_PREFIX)
    await h.run_until(10.0)
    assert h.announced() == {WEB_PREFIX: ()}
    assert not h.lo.holds(DNS_PREFIX)
    assert [(t, what) for t, kind, what in h.journal[mark:] if kind != "ipvs"] == [
        (0.0, f"routes [{WEB_PREFIX}, {DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
        (10.0, f"routes [{WEB_PREFIX}]"),
        (10.0, f"remove {DNS_PREFIX}"),
    ]
    assert "dns" not in h.ctl.retiring
    assert h.ctl.desired().service("dns") is None
    await h.stop()


async def test_a_removed_ipvs_service_serves_through_its_drain_then_ipvs_then_address_go() -> None:
    h = Harness(config(dns=True))
    await converged(h)
    h.ipvs.set_connections(WEB_VS, "10.1.0.1", 80, active=5)  # a drain that is not quiet

    reload(h, config(web=False, dns=True))
    await h.run_until(9.999)
    assert h.announced() == {DNS_PREFIX: (), WEB_PREFIX: (GRACEFUL_SHUTDOWN,)}
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}  # still serving

    await h.run_until(10.0)
    after = [(kind, what) for t, kind, what in h.journal if t == 10.0]
    assert after[0] == ("bgp", f"routes [{DNS_PREFIX}]")
    assert after[-1] == ("lo", f"remove {WEB_PREFIX}")
    assert {k for k, _ in after[1:-1]} == {"ipvs"}
    assert WEB_VS not in h.ipvs.table  # no config owns it any more: deleted
    assert not h.ctl.retiring
    await h.stop()


async def test_a_removed_service_already_withdrawn_just_goes() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    h.states["dns"] = DOWN
    h.poke()
    await h.run_until(0.0)
    assert h.announced() == {}
    mark = len(h.journal)

    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(0.0)
    assert h.journal[mark:] == []  # nothing to drain, nothing left to remove
    assert not h.ctl.retiring
    await h.stop()


async def test_a_removed_service_failing_at_the_reload_is_withdrawn_at_once() -> None:
    # Unplanned: its checks failed just before the reload (no pass has acted on it yet).
    h = Harness(config(web=False, dns=True))
    await converged(h)
    mark = len(h.journal)
    h.states["dns"] = DOWN  # no poke: the reload comes first

    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(0.0)
    assert bgp(h, mark) == [(0.0, "routes []")]  # no demote
    assert not h.lo.holds(DNS_PREFIX)
    assert not h.ctl.retiring
    await h.stop()


async def test_a_removal_drains_whatever_its_shutdown_policy() -> None:
    # ``shutdown`` is the policy of a stop; a removal is planned like maintenance
    h = Harness(config(web=False, dns=True, shutdown="withdraw"))
    await converged(h)
    mark = len(h.journal)

    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(10.0)
    assert bgp(h, mark) == [(0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
                            (10.0, "routes []")]
    await h.stop()


async def test_the_same_service_back_during_the_drain_is_promoted_without_a_withdraw() -> None:
    before = config(web=False, dns=True)
    h = Harness(before)
    await converged(h)
    mark = len(h.journal)
    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(4.0)
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}

    revived = reload(h, before)
    assert set(revived) == {"dns"}
    h.states["dns"] = UP  # the health it had, carried over (see the test below)
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: ()}
    assert bgp(h, mark) == [
        (0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
        (4.0, f"routes [{DNS_PREFIX}]"),  # straight back: never "routes []"
    ]
    assert h.lo.holds(DNS_PREFIX)
    assert not h.ctl.retiring
    await h.stop()


def test_a_service_back_during_its_drain_continues_the_health_it_had() -> None:
    before = config(web=False, dns=True)
    health = carry_over(None, {}, before, now=0.0)
    for t in range(1, 10):
        health["dns"] = health["dns"].feed("file-0", True, "ok", t / 10).health
    assert health["dns"].state is UP
    h = Harness(before)
    h.states["dns"] = UP
    empty = loads(CONTROLLER_HEAD)
    h.ctl.retire(before, empty, health=health)
    revived = h.ctl.retire(empty, before)
    fresh = carry_over(empty, {}, before, now=2.0)
    assert fresh["dns"].state is DOWN  # a new service would start down: a withdraw

    rs, _ = revive(revived, before, fresh, {}, {}, now=2.0)
    assert fresh["dns"] is health["dns"]  # the same config back: the very same value
    assert rs == {}


async def test_a_stop_during_the_drain_continues_it_and_ends_it_on_time() -> None:
    h = Harness(config(web=False, dns=True, shutdown="keep"))
    await converged(h)
    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(4.0)
    await h.stop()

    task = asyncio.create_task(h.ctl.shutdown(60.0))
    await h.run_until(9.999, waiter=task)
    assert not task.done()
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}  # not kept, not restarted
    await h.run_until(10.0, waiter=task)
    assert task.done()
    assert task.result() is True
    assert h.announced() == {}
    assert not h.lo.holds(DNS_PREFIX)


async def test_a_prefix_a_new_service_declares_is_the_new_owners_at_once() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    mark = len(h.journal)
    moved = loads(CONTROLLER_HEAD + DNS.format(shutdown="drain-then-withdraw")
                  .replace("services.dns", "services.dns2").replace("/dns", "/other"))

    reload(h, moved)
    assert not h.ctl.retiring  # its only prefix is the new service's: nothing to retire
    h.states["dns2"] = UP
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: ()}
    assert h.journal[mark:] == []  # one owner, no demote, no withdraw
    await h.stop()


async def test_a_name_reused_for_another_service_ends_the_retirement() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    mark = len(h.journal)
    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(1.0)
    assert "dns" in h.ctl.retiring

    other = loads(CONTROLLER_HEAD + DNS.format(shutdown="withdraw")
                  .replace("192.0.2.53/32", "192.0.2.54/32"))
    reload(h, other)
    h.states["dns"] = DOWN  # the new "dns" starts fresh
    assert not h.ctl.retiring
    await h.run_until(1.0)
    assert bgp(h, mark) == [(0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
                            (1.0, "routes []")]
    await h.stop()


async def test_a_maintenance_drain_under_way_at_the_reload_keeps_its_clock() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    mark = len(h.journal)
    h.states["dns"] = MAINTENANCE
    h.poke()
    await h.run_until(3.0)

    reload(h, loads(CONTROLLER_HEAD))
    await h.run_until(10.0)
    assert bgp(h, mark) == [(0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
                            (10.0, "routes []")]
    assert not h.ctl.retiring
    await h.stop()


def test_a_removed_ospf_service_publishes_its_draining_metric_for_the_drain() -> None:
    # Pure: the retiring service in the desired state, the planner, the OSPF twin.
    before, after = loads(OSPF_CONFIG), loads("")
    retiring = Retirements()
    retiring.reload(before, after, now=0.0, states={"web": UP}, real_servers_up={})
    lo, ospf = FakeLoopback(), MemoryOspf(OSPF_SETTINGS)
    lo.apply([AddAddress(ipaddress.ip_interface(OSPF_PREFIX))])
    ospf.apply(frozenset({OspfRoute(OSPF_PREFIX, 10)}))
    state = ControllerState()
    done: list[object] = []
    for now in (1.0, 2.0, 6.9, 7.0, 8.0):
        desired = retiring.desired(after, {}, {}, ())
        observed = Observed(loopback=lo.observe(), ospf=ospf.observe())
        result = plan(state, desired, observed, now)
        state = result.state
        retiring.settle(observed, state)
        for s in result.steps:
            if isinstance(s, OspfStep):
                ospf.apply(s.routes)
                done.append((now, tuple(r.metric for r in s.routes)))
            elif isinstance(s, LoopbackStep):
                lo.apply(list(s.actions))
                done += [(now, type(a).__name__) for a in s.actions]
    # the draining metric (100) at once, its 5 s from when it was read back (2.0), then the
    # route removed before the address
    assert done == [(1.0, (100,)), (7.0, ()), (7.0, "RemoveAddress")]
    assert not retiring


# ---- the daemon: reload, /status and metrics (real time, fakes; see test_daemon) ----------


def _draining(node: Node, name: str) -> float | None:
    assert node.daemon is not None
    return node.daemon.metrics.registry.get_sample_value(
        "anycastd_service_state", {"service": name, "state": "draining"})


async def test_the_daemon_shows_a_removed_service_draining_until_it_is_gone(
    tmp_path: Path,
) -> None:
    head = DAEMON_HEAD.format(tmp=tmp_path)
    slow = fast(tmp_path, "b", B).replace('drain_time = "300ms"', 'drain_time = "1s"')
    node = Node(tmp_path, head + fast(tmp_path, "a", A) + slow)
    node.flag("a-ok").touch()
    node.flag("b-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: (), B: ()})
        assert node.daemon is not None
        node.path.write_text(head + fast(tmp_path, "a", A))
        node.daemon.request_reload()
        await wait_for(lambda: node.announced() == {A: (), B: (GRACEFUL_SHUTDOWN,)})
        doc = node.daemon.status()
        services = doc["services"]
        assert isinstance(services, dict)
        assert services["b"]["state"] == "draining"
        assert services["b"]["announced"] == [B]
        assert _draining(node, "b") == 1.0
        assert node.holds(B)

        await wait_for(lambda: node.announced() == {A: ()} and not node.holds(B))
        await wait_for(lambda: "b" not in node.daemon.status()["services"])  # type: ignore[union-attr, operator]
        assert _draining(node, "b") is None  # its series went with it
        assert node.daemon.controller is not None
        assert not node.daemon.controller.retiring


async def test_the_daemon_carries_the_health_of_a_service_back_within_its_drain(
    tmp_path: Path,
) -> None:
    head = DAEMON_HEAD.format(tmp=tmp_path)
    # shutdown = "withdraw": the stop at the end of the test does not wait 30 s
    slow = fast(tmp_path, "b", B, shutdown="withdraw").replace(
        'drain_time = "300ms"', 'drain_time = "30s"')
    node = Node(tmp_path, head + fast(tmp_path, "a", A) + slow)
    node.flag("a-ok").touch()
    node.flag("b-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: (), B: ()})
        assert node.daemon is not None
        assert node.speaker is not None
        mark = len(node.speaker.timeline)
        node.path.write_text(head + fast(tmp_path, "a", A))
        node.daemon.request_reload()
        await wait_for(lambda: node.announced() == {A: (), B: (GRACEFUL_SHUTDOWN,)})

        node.path.write_text(node.text)
        node.daemon.request_reload()
        await wait_for(lambda: node.announced() == {A: (), B: ()})
        assert node.state("b") is ServiceState.UP  # carried, not started afresh (down)
        assert all(B in rib for _, rib in node.speaker.timeline[mark:])  # never withdrawn
        assert node.holds(B)


async def test_a_removed_ospf_service_keeps_its_metrics_in_the_route_map_while_it_drains(
    tmp_path: Path,
) -> None:
    # b's metrics are its own: a reload that dropped them from the route-map at once would
    # take its route out of OSPF without the draining metric first
    b = SERVICE.format(a=B, tmp=tmp_path, up=20).replace("services.a", "services.b").replace(
        "a-ok", "b-ok").replace("up = 20", "up = 20, draining = 200, maintenance = 300")
    b = b.replace('drain_time = "300ms"', 'drain_time = "1s"')
    node = OspfNode(tmp_path, _text(tmp_path) + b)
    (tmp_path / "a-ok").touch()
    (tmp_path / "b-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10), OspfRoute(B, 20)},
                       within=10.0)
        assert node.daemon is not None
        assert node.ospf is not None
        node.path.write_text(_text(tmp_path))
        await ospf_reload(node.daemon)
        assert {20, 200, 300} <= set(node.ospf.settings.metrics)
        await wait_for(lambda: node.published() == {OspfRoute(A, 10), OspfRoute(B, 200)})
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)} and not any(
            a.ip == ipaddress.ip_interface(B).ip for a in node.lo.addresses))


def test_a_new_service_with_the_fwmark_of_a_retiring_one_ends_its_retirement() -> None:
    def fwmark(name: str, prefix: str) -> str:
        return (f'[services.{name}]\nprefixes = ["{prefix}"]\n'
                f'[[services.{name}.checks]]\ntype = "file"\npath = "/nonexistent/{name}"\n'
                f'[services.{name}.ipvs]\nprotocol = "fwmark"\nfwmark = 7\n'
                f'[[services.{name}.ipvs.real_servers]]\naddress = "10.1.0.1"\n')

    old = loads(CONTROLLER_HEAD + fwmark("web", "192.0.2.10/32"))
    retiring = Retirements()
    retiring.reload(old, loads(CONTROLLER_HEAD), now=0.0, states={"web": UP},
                    real_servers_up={})
    assert "web" in retiring
    mail = loads(CONTROLLER_HEAD + fwmark("mail", "192.0.2.25/32"))
    retiring.reload(loads(CONTROLLER_HEAD), mail, now=1.0, states={}, real_servers_up={})
    assert not retiring  # one virtual service (fwmark 7), one owner: the new service
