"""BGP through ExaBGP against real FRR peers: assertions are on the PEER's RIB.

Topology (all namespaces created here, unique names, removed in teardown):

    edge (speaker harness + ExaBGP)  10.0.0.2/24, fd00::2/64 ── r1 (bgpd, AS 65000)
                                     10.0.1.2/24            ── r2 (bgpd, AS 65010)
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from anycastd.lab.frr import FrrPeer
from anycastd.lab.netns import Netns, veth, wait_for
from anycastd.model import Attributes, BgpSettings, Neighbor, Route
from tests.integration.bgp_support import (
    EXABGP,
    SpeakerDriver,
    process_alive,
    settings_to_json,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

P1 = "192.0.2.53/32"
P2 = "198.51.100.7/32"
P6 = "2001:db8::53/128"
R1 = Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1", hold_time=9)
R1V6 = Neighbor("fd00::1", 65000, "fd00::2", "r1v6", hold_time=9, families=("ipv6 unicast",))
R2 = Neighbor("10.0.1.1", 65010, "10.0.1.2", "r2", hold_time=9)
SETTINGS = BgpSettings(router_id="10.0.0.2", local_as=65001, neighbors=(R1, R1V6, R2),
                       exabgp=EXABGP)


@dataclass
class Topo:
    edge: Netns
    r1: Netns
    r2: Netns
    frr1: FrrPeer
    frr2: FrrPeer
    tmp: Path

    def speaker(self, settings: BgpSettings = SETTINGS) -> SpeakerDriver:
        driver = SpeakerDriver(self.edge, settings, self.tmp / "run")
        self._drivers.append(driver)
        return driver

    _drivers: list[SpeakerDriver]


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topo]:
    made: list[Netns] = []
    peers: list[FrrPeer] = []
    drivers: list[SpeakerDriver] = []
    try:
        edge, r1, r2 = Netns("edge"), Netns("r1"), Netns("r2")
        made += [edge, r1, r2]
        a, _b = veth(edge, "10.0.0.2/24", r1, "10.0.0.1/24")
        edge.exec(["ip", "-6", "addr", "add", "fd00::2/64", "dev", a, "nodad"])
        r1.exec(["ip", "-6", "addr", "add", "fd00::1/64", "dev", _b, "nodad"])
        veth(edge, "10.0.1.2/24", r2, "10.0.1.1/24")
        frr1 = FrrPeer(r1, tmp_path / "frr1", asn=65000, router_id="10.0.0.1",
                       neighbors=[("10.0.0.2", 65001), ("fd00::2", 65001)])
        peers.append(frr1)
        frr2 = FrrPeer(r2, tmp_path / "frr2", asn=65010, router_id="10.0.1.1",
                       neighbors=[("10.0.1.2", 65001)])
        peers.append(frr2)
        yield Topo(edge, r1, r2, frr1, frr2, tmp_path, drivers)
    finally:
        for driver in drivers:
            driver.stop()
        for peer in peers:
            peer.stop()
        for ns in made:
            ns.close()


def up(topo: Topo, driver: SpeakerDriver) -> None:
    driver.wait_peers_up([R1.address, R1V6.address, R2.address], timeout=30)
    wait_for(lambda: topo.frr1.established("10.0.0.2") and topo.frr2.established("10.0.1.2"))


def ok(reply: dict[str, object]) -> dict[str, object]:
    assert reply.get("ok"), reply
    return reply


def test_announce_then_withdraw_reaches_the_peer(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1), Route(P2)]))
    wait_for(lambda: {P1, P2} <= set(topo.frr1.rib()))
    path = topo.frr1.detail(P1)
    assert path["aspath"]["string"] == "65001"
    assert path["nexthops"][0]["ip"] == "10.0.0.2"
    ok(driver.set_routes([Route(P2)]))
    wait_for(lambda: set(topo.frr1.rib()) == {P2})
    wait_for(lambda: set(topo.frr2.rib()) == {P2})


def test_attribute_changes_are_visible_at_the_peer(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1, Attributes(med=10))]))
    wait_for(lambda: topo.frr1.detail(P1).get("metric") == 10)
    drained = Attributes(
        med=100,
        communities=("graceful-shutdown", "65000:100"),
        large_communities=("65001:1:2",),
        as_path_prepend=2,
    )
    ok(driver.set_routes([Route(P1, drained)]))
    wait_for(lambda: topo.frr1.detail(P1).get("metric") == 100)
    path = topo.frr1.detail(P1)
    assert path["community"]["string"] == "65000:100 graceful-shutdown"
    assert path["largeCommunity"]["string"] == "65001:1:2"
    assert path["aspath"]["string"] == "65001 65001 65001"
    # next-hop: an explicit address instead of self
    ok(driver.set_routes([Route(P1, Attributes(med=100, next_hop="10.0.0.9"))]))
    wait_for(lambda: topo.frr1.detail(P1).get("nexthops", [{}])[0].get("ip") == "10.0.0.9")
    assert "community" not in topo.frr1.detail(P1)


def test_per_neighbor_targeting_announces_only_to_the_named_peer(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1, neighbors=("r1",)), Route(P2, neighbors=("10.0.1.1",))]))
    wait_for(lambda: set(topo.frr1.rib()) == {P1} and set(topo.frr2.rib()) == {P2})
    # move P1 to r2 as well, with a different MED per peer
    ok(driver.set_routes([
        Route(P1, Attributes(med=1), ("r1",)),
        Route(P2, neighbors=("r2",)),
        Route("203.0.113.9/32", Attributes(med=2), ("r2",)),
    ]))
    wait_for(lambda: set(topo.frr2.rib()) == {P2, "203.0.113.9/32"})
    wait_for(lambda: topo.frr1.detail(P1).get("metric") == 1)
    assert set(topo.frr1.rib()) == {P1}


def test_ipv6_prefix_is_announced_with_an_ipv6_next_hop(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P6, Attributes(med=7)), Route(P1)]))
    wait_for(lambda: P6 in topo.frr1.rib("ipv6"))
    path = topo.frr1.detail(P6, "ipv6")
    assert path["metric"] == 7
    assert path["nexthops"][0]["ip"] == "fd00::2"
    assert P6 not in topo.frr2.rib("ipv6")
    ok(driver.set_routes([Route(P1)]))
    wait_for(lambda: P6 not in topo.frr1.rib("ipv6"))


def test_exabgp_killed_is_restarted_and_routes_come_back(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1, Attributes(med=5)), Route(P6)]))
    wait_for(lambda: P1 in topo.frr1.rib() and P6 in topo.frr1.rib("ipv6"))
    first = driver.status()
    os.kill(int(first["exabgp_pid"]), 9)
    wait_for(lambda: P1 not in topo.frr1.rib(), timeout=15)
    wait_for(lambda: driver.status()["exabgp_starts"] == 2, timeout=15)
    wait_for(lambda: P1 in topo.frr1.rib() and P6 in topo.frr1.rib("ipv6")
             and P1 in topo.frr2.rib(), timeout=30)
    assert topo.frr1.detail(P1)["metric"] == 5


def test_a_killed_exabgp_is_replaced_by_its_warm_standby(topo: Topo) -> None:
    """Once ExaBGP has run a while, a standby with ExaBGP imported waits; ExaBGP's death
    makes the standby the new ExaBGP (no cold start) and the routes come back through it."""
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1, Attributes(med=5))]))
    wait_for(lambda: P1 in topo.frr1.rib())
    standby = wait_for(lambda: driver.status()["standby_pid"], timeout=20)
    os.kill(int(driver.status()["exabgp_pid"]), 9)
    wait_for(lambda: driver.status()["exabgp_starts"] == 2, timeout=15)
    status = driver.status()
    assert status["exabgp_pid"] == standby
    assert status["standby_starts"] == 1
    wait_for(lambda: P1 in topo.frr1.rib() and P1 in topo.frr2.rib(), timeout=30)
    assert topo.frr1.detail(P1)["metric"] == 5


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def test_relay_death_keeps_routes_and_the_reconnect_repairs_drift(topo: Topo) -> None:
    """ExaBGP respawns a dead relay and keeps its routes; on reconnect the speaker reads
    the adj-rib-out and sends only what changed meanwhile."""
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1), Route(P2)]))
    wait_for(lambda: {P1, P2} <= set(topo.frr1.rib()))
    exabgp_pid = int(driver.status()["exabgp_pid"])
    (relay_pid,) = _children(exabgp_pid)
    updates = topo.frr1.updates_received("10.0.0.2")
    os.kill(relay_pid, 9)
    # while the relay is away, the verdict changes: P2 must go, P1 gets a MED
    reply = driver.set_routes([Route(P1, Attributes(med=9))])
    assert reply["ok"] or "TransientError" in str(reply["error"])
    wait_for(lambda: topo.frr1.detail(P1).get("metric") == 9 and P2 not in topo.frr1.rib())
    assert driver.status()["exabgp_pid"] == exabgp_pid  # ExaBGP itself never restarted
    assert [p for p in _children(exabgp_pid) if p != relay_pid]
    # one UPDATE for the MED, one for the withdraw: no re-announce of everything
    assert topo.frr1.updates_received("10.0.0.2") - updates <= 2


def test_speaker_killed_takes_its_routes_with_it(topo: Topo) -> None:
    """Fail closed: SIGKILL "anycastd" and ExaBGP follows (PR_SET_PDEATHSIG); the peer
    loses the routes."""
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1), Route(P6)]))
    wait_for(lambda: P1 in topo.frr1.rib() and P6 in topo.frr1.rib("ipv6"))
    exabgp_pid = int(driver.status()["exabgp_pid"])
    killed = time.monotonic()
    driver.kill()
    wait_for(lambda: P1 not in topo.frr1.rib() and P6 not in topo.frr1.rib("ipv6"),
             timeout=5, interval=0.01)
    gone = time.monotonic() - killed
    wait_for(lambda: not process_alive(exabgp_pid), timeout=5)
    # recorded for bench/README_bgp.md (includes ~50 ms bgpd work-queue hold + vtysh polls)
    print(f"\nfail-closed: peer lost routes {gone * 1000:.0f} ms after SIGKILL")
    assert gone < 3.0


def test_steady_state_sends_no_updates_for_a_minute(topo: Topo) -> None:
    seconds = float(os.environ.get("ANYCASTD_BGP_QUIET_SECONDS", "60"))
    driver = topo.speaker()
    up(topo, driver)
    routes = [Route(P1, Attributes(med=10)), Route(P2), Route(P6)]
    ok(driver.set_routes(routes))
    wait_for(lambda: {P1, P2} <= set(topo.frr1.rib()) and P6 in topo.frr1.rib("ipv6"))
    time.sleep(1)
    before = topo.frr1.updates_received("10.0.0.2"), topo.frr1.updates_received("fd00::2")
    sent_before = driver.status()["commands_sent"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # the controller re-asserts its verdict often; nothing may go on the wire
        ok(driver.set_routes(routes))
        time.sleep(1)
    after = topo.frr1.updates_received("10.0.0.2"), topo.frr1.updates_received("fd00::2")
    assert after == before
    assert driver.status()["commands_sent"] == sent_before


def _external_exabgp(topo: Topo) -> subprocess.Popen[bytes]:
    run = topo.tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    example = (Path(__file__).resolve().parents[2] / "configs" / "exabgp-external.conf")
    # the documented stanza, with this test's paths
    text = example.read_text()
    process = text[text.index("process anycastd {"):text.index("}\n", text.index("process")) + 2]
    relay = Path(EXABGP).parent / "anycastd-exabgp-relay"
    process = process.replace("/opt/anycastd/venv/bin/anycastd-exabgp-relay", str(relay))
    process = process.replace("/run/anycastd/exabgp.sock", str(run / "exabgp.sock"))
    assert str(relay) in process
    conf = topo.tmp / "external.conf"
    conf.write_text(
        process +
        "neighbor 10.0.0.1 {\n"
        "    router-id 10.0.0.2; local-address 10.0.0.2; local-as 65001; peer-as 65000;\n"
        "    hold-time 9;\n"
        "    family { ipv4 unicast; }\n"
        "    api { processes [ anycastd ]; neighbor-changes; }\n"
        "    static { route 203.0.113.0/24 next-hop self; }\n"
        "}\n"
    )
    env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_log_statistics": "false",
           "exabgp_api_cli": "false"}
    log = open(topo.tmp / "external-exabgp.log", "wb")  # noqa: SIM115 - lives with the proc
    return topo.edge.popen([EXABGP, str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_external_mode_serves_the_relay_and_repairs_after_restart(topo: Topo) -> None:
    settings = replace(SETTINGS, mode="external", neighbors=(R1,))
    _external_exabgp(topo)
    driver = topo.speaker(settings)
    driver.wait_peers_up([R1.address], timeout=30)
    ok(driver.set_routes([Route(P1), Route(P2, Attributes(med=3))]))
    wait_for(lambda: {P1, P2, "203.0.113.0/24"} <= set(topo.frr1.rib()))
    # "anycastd" dies; the operator's ExaBGP (and the relay) stay: routes stay
    driver.kill()
    time.sleep(0.5)
    assert {P1, P2} <= set(topo.frr1.rib())
    updates = topo.frr1.updates_received("10.0.0.2")
    # a new anycastd wants P2 with another MED and no P1: the difference is repaired,
    # the operator's own static route is left alone
    driver = topo.speaker(settings)
    driver.wait_peers_up([R1.address], timeout=10)
    ok(driver.set_routes([Route(P2, Attributes(med=4))]))
    wait_for(lambda: topo.frr1.detail(P2).get("metric") == 4 and P1 not in topo.frr1.rib())
    assert "203.0.113.0/24" in topo.frr1.rib()
    assert topo.frr1.updates_received("10.0.0.2") - updates <= 2


def test_settings_reload_adds_and_removes_a_neighbor_without_touching_the_others(
    topo: Topo,
) -> None:
    driver = topo.speaker(replace(SETTINGS, neighbors=(R1, R1V6)))
    driver.wait_peers_up([R1.address, R1V6.address], timeout=30)
    ok(driver.set_routes([Route(P1), Route(P6)]))
    wait_for(lambda: P1 in topo.frr1.rib() and P6 in topo.frr1.rib("ipv6"))
    time.sleep(0.5)
    updates = topo.frr1.updates_received("10.0.0.2")
    established = topo.frr1.json("show bgp neighbors 10.0.0.2 json")["10.0.0.2"][
        "connectionsEstablished"]
    ok(driver.call("update_settings", settings=settings_to_json(SETTINGS)))
    wait_for(lambda: P1 in topo.frr2.rib(), timeout=30)
    ok(driver.call("update_settings", settings=settings_to_json(
        replace(SETTINGS, neighbors=(R1, R1V6)))))
    wait_for(lambda: not topo.frr2.established("10.0.1.2"), timeout=30)
    wait_for(lambda: P1 not in topo.frr2.rib())
    time.sleep(1)
    assert P1 in topo.frr1.rib()
    assert topo.frr1.json("show bgp neighbors 10.0.0.2 json")["10.0.0.2"][
        "connectionsEstablished"] == established
    assert topo.frr1.updates_received("10.0.0.2") == updates


def test_settings_reload_with_a_config_exabgp_rejects_keeps_the_old_one(topo: Topo) -> None:
    driver = topo.speaker()
    up(topo, driver)
    ok(driver.set_routes([Route(P1)]))
    bad = replace(SETTINGS, neighbors=(R1, R1V6, replace(R2, hold_time=1)))
    reply = driver.call("update_settings", settings=settings_to_json(bad))
    assert not reply["ok"]
    assert "hold-time" in str(reply["error"])
    wait_for(lambda: P1 in topo.frr2.rib())
    assert driver.status()["exabgp_starts"] == 1


def test_with_graceful_restart_fail_closed_is_bounded_by_the_restart_time(
    topo: Topo, tmp_path: Path
) -> None:
    """With graceful restart negotiated, ExaBGP closes sessions WITHOUT a notification (its
    GR rule, also on SIGTERM), so the peer keeps the routes as stale until the restart time
    runs out. Fail closed then means: gone within graceful_restart seconds, not at once."""
    gr_ns = Netns("r3")
    try:
        veth(topo.edge, "10.0.2.2/24", gr_ns, "10.0.2.1/24")
        frr = FrrPeer(gr_ns, tmp_path / "frr3", asn=65020, router_id="10.0.2.1",
                      neighbors=[("10.0.2.2", 65001)], graceful_restart=True)
        try:
            settings = replace(SETTINGS, graceful_restart=3,
                               neighbors=(Neighbor("10.0.2.1", 65020, "10.0.2.2", "r3"),))
            driver = topo.speaker(settings)
            driver.wait_peers_up(["10.0.2.1"], timeout=30)
            ok(driver.set_routes([Route(P1)]))
            wait_for(lambda: P1 in frr.rib())
            killed = time.monotonic()
            driver.kill()
            wait_for(lambda: not frr.established("10.0.2.2"), timeout=5)
            assert frr.detail(P1).get("stale") is True
            wait_for(lambda: P1 not in frr.rib(), timeout=10)
            gone = time.monotonic() - killed
            print(f"\ngraceful restart 3s: stale routes gone {gone:.1f}s after SIGKILL")
            assert 2.0 < gone < 6.0
        finally:
            frr.stop()
    finally:
        gr_ns.close()
