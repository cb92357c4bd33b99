"""diff_ipvs(): the fewest IPVS writes, ownership respected. Pure; no kernel."""

from __future__ import annotations

import pytest

from anycastd.core.ipvs import diff_ipvs, foreign
from anycastd.model import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    IpvsObserved,
    ObservedRealServer,
    ObservedService,
    RealServer,
    ServiceSpec,
    VirtualService,
)

VIP = VirtualService.tcp("192.0.2.80", 80)
RS1 = RealServer("10.1.0.1", 8080, 100, "nat")
RS2 = RealServer("10.1.0.2", 8080, 100, "nat")


def observed_from(*specs: ServiceSpec) -> IpvsObserved:
    return IpvsObserved(
        {
            s.service: ObservedService(
                s.service,
                s.scheduler,
                s.persistence,
                tuple(ObservedRealServer(rs, 3, 1) for rs in s.real_servers),
            )
            for s in specs
        }
    )


def test_empty_kernel_plans_service_then_its_real_servers() -> None:
    want = ServiceSpec(VIP, "wlc", 0, (RS1, RS2))
    assert diff_ipvs({VIP: want}, IpvsObserved()) == [
        AddService(want),
        AddRealServer(VIP, RS1),
        AddRealServer(VIP, RS2),
    ]


def test_converged_table_plans_nothing() -> None:
    want = ServiceSpec(VIP, "rr", 300, (RS1, RS2))
    assert diff_ipvs({VIP: want}, observed_from(want), owned={VIP}) == []


def test_weight_change_is_one_edit_of_that_server() -> None:
    have = ServiceSpec(VIP, "wlc", 0, (RS1, RS2))
    drained = RealServer("10.1.0.1", 8080, 0, "nat")
    want = ServiceSpec(VIP, "wlc", 0, (drained, RS2))
    assert diff_ipvs({VIP: want}, observed_from(have)) == [EditRealServer(VIP, drained)]


def test_forwarding_change_is_one_edit_of_that_server() -> None:
    have = ServiceSpec(VIP, "wlc", 0, (RS1,))
    dr = RealServer("10.1.0.1", 8080, 100, "dr")
    assert diff_ipvs({VIP: ServiceSpec(VIP, "wlc", 0, (dr,))}, observed_from(have)) == [
        EditRealServer(VIP, dr)
    ]


@pytest.mark.parametrize(("scheduler", "persistence"), [("rr", 0), ("wlc", 60)])
def test_scheduler_or_persistence_change_is_one_service_edit(
    scheduler: str, persistence: int
) -> None:
    have = ServiceSpec(VIP, "wlc", 0, (RS1,))
    want = ServiceSpec(VIP, scheduler, persistence, (RS1,))
    assert diff_ipvs({VIP: want}, observed_from(have)) == [EditService(want)]


def test_port_change_is_a_new_real_server_and_the_old_one_removed() -> None:
    have = ServiceSpec(VIP, "wlc", 0, (RS1,))
    moved = RealServer("10.1.0.1", 9090, 100, "nat")
    assert diff_ipvs({VIP: ServiceSpec(VIP, "wlc", 0, (moved,))}, observed_from(have)) == [
        AddRealServer(VIP, moved),
        DeleteRealServer(VIP, RS1),
    ]


def test_stale_owned_service_is_one_delete_without_per_server_deletes() -> None:
    stale = VirtualService.udp("192.0.2.53", 53)
    have = ServiceSpec(stale, "wlc", 0, (RS1, RS2))
    assert diff_ipvs({}, observed_from(have), owned={stale}) == [DeleteService(stale)]


def test_foreign_services_are_not_touched_and_are_reported() -> None:
    theirs = ServiceSpec(VirtualService.tcp("198.51.100.1", 443), "rr", 0, (RS1,))
    mark = ServiceSpec(VirtualService.mark(9, 6), "sh", 0, ())
    observed = observed_from(theirs, mark)
    assert diff_ipvs({}, observed, owned=set()) == []
    assert foreign(observed, owned={VIP}) == [mark.service, theirs.service]


def test_a_declared_service_is_owned_even_if_not_recorded() -> None:
    """Adoption: the config declaring a key makes it ours (its extra servers go)."""
    have = ServiceSpec(VIP, "wlc", 0, (RS1, RS2))
    want = ServiceSpec(VIP, "wlc", 0, (RS1,))
    assert diff_ipvs({VIP: want}, observed_from(have), owned=()) == [DeleteRealServer(VIP, RS2)]


def test_additions_come_before_removals_and_services_in_key_order() -> None:
    a, b = VirtualService.tcp("192.0.2.1", 80), VirtualService.tcp("192.0.2.2", 80)
    stale = VirtualService.tcp("192.0.2.3", 80)
    want_a = ServiceSpec(a, "wlc", 0, (RS2,))
    want_b = ServiceSpec(b, "wlc", 0, ())
    observed = observed_from(ServiceSpec(a, "wlc", 0, (RS1,)), ServiceSpec(stale, "wlc", 0, ()))
    assert diff_ipvs({b: want_b, a: want_a}, observed, owned={stale}) == [
        AddRealServer(a, RS2),
        AddService(want_b),
        DeleteRealServer(a, RS1),
        DeleteService(stale),
    ]


def test_a_tunnelled_real_server_may_be_of_the_other_family() -> None:
    rs = RealServer("2001:db8::1", 80, 1, "tunnel")
    assert ServiceSpec(VIP, real_servers=(rs,)).real_servers == (rs,)


def test_keys_compare_equal_whatever_the_address_spelling() -> None:
    assert VirtualService.tcp("2001:DB8::0:1", 80) == VirtualService.tcp("2001:db8::1", 80)
    assert RealServer("2001:DB8::1", 80).key == ("2001:db8::1", 80)
    assert str(VirtualService.udp("2001:db8::1", 53)) == "udp:[2001:db8::1]:53"
    assert str(VirtualService.mark(5, 6)) == "fwmark:5/ipv6"


@pytest.mark.parametrize(
    "build",
    [
        lambda: VirtualService("tcp", "192.0.2.1", 0),
        lambda: VirtualService("sctp", "192.0.2.1", 80),  # type: ignore[arg-type]
        lambda: VirtualService("fwmark", fwmark=0),
        lambda: VirtualService("fwmark", "192.0.2.1", fwmark=1),
        lambda: RealServer("10.0.0.1", 80, weight=70000),
        lambda: RealServer("10.0.0.1", 80, forwarding="local"),  # type: ignore[arg-type]
        lambda: ServiceSpec(VIP, real_servers=(RS1, RS1)),
        lambda: ServiceSpec(VIP, real_servers=(RealServer("2001:db8::1", 80, 1, "nat"),)),
    ],
)
def test_invalid_values_are_refused(build: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        build()  # type: ignore[operator]
