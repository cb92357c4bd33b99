"""OSPF end to end: ``anycastd run`` on two edges, real zebra + ospfd in every namespace.

One topology for the whole module (router + two edges, ``OspfLab``): each test starts from
both edges healthy and publishing ``PREFIX`` at metric 10, and leaves it so. What a test looks
at is the world outside anycastd: the router's kernel routes and LSDB, the edges' ``lo`` and
their own LSAs, a client's connection from the router namespace.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.actuators.frr import FrrOspf, OspfSettings
from anycastd.errors import PermanentError, TransientError
from anycastd.lab import ospf as lab
from anycastd.lab.netns import wait_for
from anycastd.model import OspfRoute
from tests.integration.ospf_support import (
    PREFIX,
    OspfTopo,
    Sample,
    Timeline,
    ospf_topology,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not lab.available(), reason="needs FRR (zebra, ospfd, vtysh)"),
]


#: How long after the edge's address went the router may still show its route: the flush
#: left the edge before the address (asserted), then flooding, SPF and the kernel install
#: take the router a few ms (measured 0-5 ms; this allows for a loaded 2-core machine).
ROUTER_LAG = 0.1


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OspfTopo]:
    with ospf_topology(tmp_path_factory.mktemp("ospf")) as t:
        for edge in t.edges:
            edge.start_listener()
            edge.start()
        t.converged({1, 2})
        yield t


@pytest.fixture
def healthy(topo: OspfTopo) -> Iterator[OspfTopo]:
    """Both edges up at metric 10 before and after the test."""
    _both_up(topo)
    yield topo
    for edge in topo.edges:
        edge.maintenance(False)
        if edge.listener is None:
            edge.start_listener()
        if edge.daemon is None or edge.daemon.proc.poll() is not None:
            edge.start()
    _both_up(topo)


def _both_up(topo: OspfTopo) -> None:
    wait_for(lambda: topo.external_metrics() == {1: 10, 2: 10} and topo.next_hops() == {1, 2},
             timeout=20, interval=0.05)


def _last(samples: list[Sample], value: bool = True) -> float:
    """The end of the last sample that saw ``value``."""
    return max(s.t1 for s in samples if s.value is value)


def _last_start(samples: list[Sample], value: bool = True) -> float:
    """The start of the last sample that saw ``value``: the state was read at some instant
    after it (a slow vtysh call may end long after what it read)."""
    return max(s.t0 for s in samples if s.value is value)


def test_a_both_healthy_edges_give_the_router_ecmp_and_a_client_reaches_one(
    healthy: OspfTopo,
) -> None:
    topo = healthy
    assert topo.next_hops() == {1, 2}
    assert topo.external_metrics() == {1: 10, 2: 10}
    assert topo.client() in {"edge1", "edge2"}
    # anycastd's part of the edge's configuration, as it holds it
    running = topo.edges[0].node.running_config()
    assert "ip prefix-list ANYCASTD-OSPF-M10 seq 5 permit 192.0.2.80/32" in running
    assert " redistribute connected route-map ANYCASTD-OSPF" in running


def test_b_a_failing_service_leaves_the_router_and_never_outlives_its_address(
    healthy: OspfTopo,
) -> None:
    topo = healthy
    edge = topo.edges[0]
    with Timeline(topo, edge) as tl:
        time.sleep(0.3)
        t0 = time.time()
        edge.stop_listener()
        wait_for(lambda: topo.next_hops() == {2} and not edge.has_address(),
                 timeout=10, interval=0.01)
        time.sleep(0.3)
    assert topo.client() == "edge2"
    assert len(tl.route) > 20, "the router was sampled for the whole timeline"
    assert len(tl.addr) > 50, "lo was sampled for the whole timeline"
    assert len(tl.lsa) > 5, "the edge's LSDB was sampled for the whole timeline"
    gone = _last(tl.addr)  # the last sample that still saw the address
    # the edge stopped originating its LSA before its address went (withdraw settle) ...
    assert _last_start(tl.lsa) <= gone, (_last_start(tl.lsa) - t0, gone - t0)
    # ... and the router followed within its own processing time (flood, SPF, kernel)
    assert _last_start(tl.route) <= gone + ROUTER_LAG, (_last_start(tl.route) - t0, gone - t0)
    events = [ln.event for ln in edge.daemon.lines() if ln.t >= t0] if edge.daemon else []
    assert events.index("ospf_withdraw") < events.index("loopback")
    assert "ospf_update" not in events  # unplanned: no draining metric first




def test_c_maintenance_drains_with_the_worse_metric_before_the_route_goes(
    healthy: OspfTopo,
) -> None:
    topo = healthy
    edge = topo.edges[1]
    t0 = time.time()
    edge.maintenance(True)
    # the draining metric reaches the router: its route now prefers edge 1 (lower metric)
    wait_for(lambda: topo.external_metrics().get(2) == 100, timeout=10, interval=0.02)
    t_demoted = time.time()
    wait_for(lambda: topo.next_hops() == {1}, timeout=5, interval=0.02)
    assert edge.has_address(), "the address stays while the route drains"
    # drain_time 2 s, then the route goes, then the address
    wait_for(lambda: 2 not in topo.external_metrics(), timeout=10, interval=0.02)
    t_gone = time.time()
    wait_for(lambda: not edge.has_address(), timeout=5, interval=0.02)
    assert t_gone - t_demoted > 1.5, (t_demoted - t0, t_gone - t0)
    assert edge.daemon is not None
    events = [ln for ln in edge.daemon.lines() if ln.t >= t0 - 0.01]
    names = [ln.event for ln in events]
    assert names.index("ospf_update") < names.index("ospf_withdraw") < names.index("loopback")
    assert [ln.fields.get("metric") for ln in events if ln.event == "ospf_update"] == ["100"]


def test_d_one_of_two_edges_withdrawing_leaves_no_stale_route_and_traffic_reaches_the_other(
    healthy: OspfTopo,
) -> None:
    # FRR issue #4380's class: the same /32 redistributed by two ASBRs, one withdraws
    topo = healthy
    edge = topo.edges[1]
    edge.stop_listener()
    wait_for(lambda: topo.next_hops() == {1}, timeout=10, interval=0.02)
    assert topo.external_metrics() == {1: 10}
    # converged for good: no stale LSA comes back, and every connection lands on edge 1
    answers = {topo.client() for _ in range(10)}
    assert answers == {"edge1"}
    assert topo.router.ns.exec(["ip", "route", "show", "exact", PREFIX]).count("via") == 1


def test_f_a_restart_of_anycastd_adopts_the_route_without_a_flush(
    healthy: OspfTopo,
) -> None:
    topo = healthy
    edge = topo.edges[0]
    assert edge.daemon is not None
    before = edge.lsa()
    assert before is not None
    os.kill(edge.daemon.pid, signal.SIGKILL)
    edge.daemon.proc.wait(timeout=10)
    edge.stop()
    with Timeline(topo, edge) as tl:
        t0 = time.time()
        daemon = edge.start()
        daemon.wait_event("controller_started", timeout=20)
        time.sleep(1.5)  # a reconcile pass and a timer pass
    assert all(s.value for s in tl.route), "the router kept its route through edge 1"
    assert all(s.value for s in tl.addr), "the address stayed"
    after = edge.lsa()
    assert after is not None
    # the same LSA instance: not flushed, not even re-originated
    assert after.get("sequenceNumber") == before.get("sequenceNumber"), (before, after)
    acted = [ln.event for ln in daemon.lines() if ln.t >= t0 and ln.event in (
        "ospf_publish", "ospf_update", "ospf_withdraw", "loopback")]
    assert acted == []


def test_e_an_apply_the_daemon_rejects_changes_nothing_and_says_why(
    topo: OspfTopo,
) -> None:
    # The router runs ospfd without anycastd: apply to its FRR directly.
    node = topo.router
    before = node.running_config()
    route = frozenset({OspfRoute("198.51.100.7/32", 10)})
    # 1. a render vtysh -C rejects (a metric-type the schema would refuse): nothing sent
    bad = FrrOspf(OspfSettings(metrics=(10,), metric_type="type-3", pathspace=node.pathspace))
    with pytest.raises(PermanentError) as info:
        bad.apply(route)
    assert "vtysh rejected" in info.value.message
    assert "Unknown command" in info.value.message  # vtysh's own words
    assert bad.writes == 0
    assert node.running_config() == before
    # 2. a checker that accepts what the daemon refuses (a vtysh of another version; here
    # /bin/true): ospfd takes the prefix list and the route-map entry, then refuses the
    # metric-type; what it took is undone, and its own words are reported
    lenient = FrrOspf(OspfSettings(metrics=(10,), metric_type="type-3", vtysh="/bin/true",
                                   pathspace=node.pathspace))
    with pytest.raises(PermanentError) as info:
        lenient.apply(route)
    assert "the routing daemon rejected the change" in info.value.message
    assert "set metric-type type-3" in info.value.message
    assert "Unknown command" in info.value.message
    assert "undoing it failed" not in info.value.message
    assert lenient.writes == 2  # the session that was refused, and the undo
    assert node.running_config() == before
    # 3. an OSPF instance the operator did not start (`ospfd -n 7` listens on ospfd-7.vty,
    # as FRR names it; the single-instance ospfd here is never asked): anycastd never
    # creates one, and says which socket it looked for (retried: it may be starting)
    refused = FrrOspf(OspfSettings(metrics=(10,), instance=7, pathspace=node.pathspace))
    with pytest.raises(TransientError) as missing:
        refused.apply(route)
    assert f"{node.pathspace}/ospfd-7.vty: no such socket" in missing.value.message
    assert refused.writes == 0
    assert node.running_config() == before


def test_e_a_foreign_redistribute_is_never_rewritten(topo: OspfTopo, tmp_path: Path) -> None:
    node = topo.router
    node.vtysh("configure terminal", "router ospf", "redistribute connected", "end")
    try:
        before = node.running_config()
        actuator = FrrOspf(OspfSettings(metrics=(10,), pathspace=node.pathspace,
                                        render_file=tmp_path / "ospf.conf"))
        with pytest.raises(PermanentError) as info:
            actuator.apply(frozenset({OspfRoute("198.51.100.7/32", 10)}))
        assert "already has 'redistribute connected'" in info.value.message
        assert node.running_config() == before
        assert not (tmp_path / "ospf.conf").exists()
    finally:
        node.vtysh("configure terminal", "router ospf", "no redistribute connected", "end")


def test_g_a_hand_edit_of_anycastds_part_is_repaired_on_the_reconcile_timer(
    healthy: OspfTopo,
) -> None:
    topo = healthy
    edge = topo.edges[0]
    assert edge.daemon is not None
    t0 = time.time()
    # the operator removes the publication line by hand: the route leaves the router ...
    edge.node.vtysh("configure terminal", "router ospf",
                    "no redistribute connected route-map ANYCASTD-OSPF", "end")
    wait_for(lambda: topo.next_hops() == {2}, timeout=10, interval=0.02)
    # ... and the next reconcile pass (every 1 s here) puts it back
    wait_for(lambda: topo.next_hops() == {1, 2}, timeout=10, interval=0.02)
    assert " redistribute connected route-map ANYCASTD-OSPF" in edge.node.running_config()
    # a damaged route-map entry too
    edge.node.vtysh("configure terminal", "route-map ANYCASTD-OSPF permit 10", "set metric 7",
                    "end")
    # (ospfd's own configuration: a plain vtysh edit also lands in zebra, which has no use
    # for it and which anycastd does not configure)
    def repaired() -> bool:
        ospfd = edge.node.vtysh("show running-config ospfd")
        entry = ospfd.split("route-map ANYCASTD-OSPF permit 10\n", 1)[-1].split("exit", 1)[0]
        return topo.external_metrics().get(1) == 10 and entry == (
            " match ip address prefix-list ANYCASTD-OSPF-M10\n set metric 10\n"
            " set metric-type type-2\n")

    wait_for(repaired, timeout=10, interval=0.05)
    assert edge.daemon.events("ospf_update", prefix=PREFIX), "repaired by a planned update"
    assert [ln for ln in edge.daemon.lines() if ln.t >= t0 and ln.event == "loopback"] == []
