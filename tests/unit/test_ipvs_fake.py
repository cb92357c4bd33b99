"""FakeIpvs behaves like the real actuator (same as tests/kernel/test_ipvs_kernel.py checks
against the kernel), and the ownership file survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from anycastd.actuators.ipvs import OwnershipFile
from anycastd.core.ipvs import diff_ipvs
from anycastd.errors import PermanentError, TransientError
from anycastd.model import AddRealServer, EditRealServer, RealServer, ServiceSpec, VirtualService
from anycastd.testing.ipvs import FakeIpvs

VIP = VirtualService.tcp("192.0.2.80", 80)
RS1 = RealServer("10.1.0.1", 8080, 100, "nat")
RS2 = RealServer("10.1.0.2", 8080, 100, "dr")
WANT = {VIP: ServiceSpec(VIP, "wlc", 0, (RS1, RS2))}


def converge(ipvs: FakeIpvs, desired: dict[VirtualService, ServiceSpec]) -> int:
    before = ipvs.writes
    ipvs.apply(diff_ipvs(desired, ipvs.observe(), ipvs.owned()))
    return ipvs.writes - before


def test_bring_up_then_converged_pass_makes_no_writes() -> None:
    ipvs = FakeIpvs()
    assert converge(ipvs, WANT) == 3
    assert converge(ipvs, WANT) == 0
    assert ipvs.owned() == {VIP}


def test_weight_edit_is_in_place() -> None:
    ipvs = FakeIpvs()
    converge(ipvs, WANT)
    generation = ipvs.generation(VIP)
    drained = RealServer("10.1.0.1", 8080, 0, "nat")
    assert converge(ipvs, {VIP: ServiceSpec(VIP, "wlc", 0, (drained, RS2))}) == 1
    assert ipvs.generation(VIP) == generation
    assert ipvs.history[-1] == ("dest set", "10.1.0.1:8080@tcp:192.0.2.80:80")
    assert ipvs.observe().services[VIP].real_server("10.1.0.1", 8080) is not None


def test_drain_keeps_connection_counts_for_the_controller() -> None:
    ipvs = FakeIpvs()
    converge(ipvs, WANT)
    ipvs.set_connections(VIP, "10.1.0.1", 8080, active=5, inactive=2)
    drained = RealServer("10.1.0.1", 8080, 0, "nat")
    converge(ipvs, {VIP: ServiceSpec(VIP, "wlc", 0, (drained, RS2))})
    assert ipvs.observe().connections(VIP, "10.1.0.1", 8080) == (5, 2)
    ipvs.set_connections(VIP, "10.1.0.1", 8080, active=0)
    assert ipvs.observe().connections(VIP, "10.1.0.1", 8080) == (0, 0)


def test_foreign_service_is_untouched_and_stale_owned_is_removed() -> None:
    theirs = VirtualService.mark(99)
    stale = VirtualService.udp("192.0.2.53", 53)
    ipvs = FakeIpvs(owned={stale})
    ipvs.add_foreign(ServiceSpec(theirs, "lc", 0, (RS1,)))
    ipvs.add_foreign(ServiceSpec(stale, "wlc", 0, (RS1,)))
    converge(ipvs, WANT)
    assert set(ipvs.table) == {VIP, theirs}
    assert ipvs.owned() == {VIP}
    assert [op for op, _ in ipvs.history].count("service del") == 1


def test_apply_is_idempotent_and_counts_the_extra_set() -> None:
    ipvs = FakeIpvs()
    actions = diff_ipvs(WANT, ipvs.observe(), ipvs.owned())
    ipvs.apply(actions)
    first = ipvs.writes
    ipvs.apply(actions)  # each add meets EEXIST and becomes a set: two writes each
    assert ipvs.writes - first == 2 * len(actions)
    assert converge(ipvs, WANT) == 0


def test_unknown_scheduler_is_permanent_and_creates_nothing() -> None:
    ipvs = FakeIpvs()
    with pytest.raises(PermanentError):
        converge(ipvs, {VIP: ServiceSpec(VIP, "nosuch", 0, (RS1,))})
    assert ipvs.table == {}


def test_injected_error_stops_the_pass_and_the_next_pass_repairs() -> None:
    ipvs = FakeIpvs()
    ipvs.fail_next(TransientError("ipvs", "EBUSY"), on=AddRealServer)
    with pytest.raises(TransientError):
        converge(ipvs, WANT)
    assert ipvs.observe().services[VIP].real_servers == ()
    assert converge(ipvs, WANT) == 2
    assert converge(ipvs, WANT) == 0


def test_edit_of_a_vanished_server_adds_it_back() -> None:
    ipvs = FakeIpvs()
    converge(ipvs, WANT)
    ipvs.table[VIP].dests.clear()
    ipvs.apply([EditRealServer(VIP, RS1)])
    assert ipvs.observe().services[VIP].real_server("10.1.0.1", 8080) is not None


def test_ownership_file_round_trips_and_is_atomic(tmp_path: Path) -> None:
    f = OwnershipFile(tmp_path / "state")
    assert f.load() == frozenset()
    keys = {VIP, VirtualService.mark(7, 6), VirtualService.udp("2001:db8::53", 53)}
    f.save(keys)
    assert f.load() == keys
    assert not (tmp_path / "state" / "ipvs-owned.json.tmp").exists()


def test_corrupt_ownership_file_is_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / OwnershipFile.NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(PermanentError, match="corrupt"):
        OwnershipFile(tmp_path).load()
