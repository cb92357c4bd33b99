"""core.desired: what the node should hold, per service state and real-server health."""

from __future__ import annotations

import ipaddress

import pytest

from anycastd.config import Config, loads
from anycastd.core.desired import Guard, compute, effective_state
from anycastd.core.health import ServiceState as S
from anycastd.model import Attributes, RealServer, Route, ServiceSpec, VirtualService
from tests.unit.configs import BGP_HEAD

CHECK = 'checks = [{type = "tcp", host = "127.0.0.1", port = 80}]'


def cfg(text: str) -> Config:
    return loads(BGP_HEAD + text)


WEB = f"""
[services.web]
prefixes = ["192.0.2.10/32"]
drain_time = "5s"
{CHECK}
[services.web.bgp.up]
med = 10
communities = ["65000:2", "65000:1"]
[services.web.bgp.draining]
med = 200
as_path_prepend = 2
[services.web.ospf]
metric = {{ up = 10, draining = 100, maintenance = 1000 }}
[services.web.ipvs]
port = 80
scheduler = "rr"
min_healthy = 1
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
weight = 5
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
port = 8080
weight = 7
"""

VS = VirtualService.tcp("192.0.2.10", 80)
RS1 = ("web", "10.1.0.1", 80)
RS2 = ("web", "10.1.0.2", 8080)


@pytest.mark.parametrize(
    ("state", "up", "min_healthy", "expected"),
    [
        (S.UP, 2, 2, S.UP),
        (S.UP, 1, 2, S.DOWN),
        (S.DRAINING, 0, 1, S.DOWN),
        (S.DRAINING, 1, 1, S.DRAINING),
        (S.MAINTENANCE, 0, 1, S.MAINTENANCE),
        (S.DISABLED, 0, 1, S.DISABLED),
        (S.DOWN, 5, 1, S.DOWN),
        (S.UP, 0, 0, S.UP),
    ],
)
def test_effective_state_applies_backend_dependency_to_up_and_draining_only(
    state: S, up: int, min_healthy: int, expected: S
) -> None:
    assert effective_state(state, up, min_healthy) is expected


def test_up_service_announces_up_attributes_with_sorted_communities() -> None:
    d = compute(cfg(WEB), {"web": S.UP}, {RS1: True, RS2: True})
    intent = d.prefix("192.0.2.10/32")
    assert intent is not None
    assert intent.route == Route(
        "192.0.2.10/32", Attributes(med=10, communities=("65000:1", "65000:2"))
    )
    assert intent.address == ipaddress.ip_interface("192.0.2.10/32")
    assert intent.state is S.UP
    assert intent.ospf_metric == 10
    healthy = (("10.1.0.1", 80), ("10.1.0.2", 8080))
    assert intent.guards == (("web", (Guard(VS, 1, healthy),)),)
    assert intent.virtual_services == (VS,)


def test_draining_state_announces_draining_attributes_with_graceful_shutdown() -> None:
    d = compute(cfg(WEB), {"web": S.DRAINING}, {RS1: True})
    intent = d.prefix("192.0.2.10/32")
    assert intent is not None
    assert intent.route == Route(
        "192.0.2.10/32", Attributes(med=200, communities=("65535:0",), as_path_prepend=2)
    )
    assert intent.route == intent.demote
    assert intent.ospf_metric == 100


@pytest.mark.parametrize("state", [S.DOWN, S.MAINTENANCE, S.DISABLED])
def test_states_that_do_not_announce_have_no_route_but_keep_a_demote_route(state: S) -> None:
    d = compute(cfg(WEB), {"web": state}, {RS1: True, RS2: True})
    intent = d.prefix("192.0.2.10/32")
    assert intent is not None
    assert intent.route is None
    assert intent.demote is not None
    assert intent.demote.attributes.communities == ("65535:0",)
    assert d.routes == frozenset()


def test_maintenance_announces_when_configured_to() -> None:
    text = WEB + "[services.web.bgp.maintenance]\nannounce = true\nmed = 999\n"
    d = compute(cfg(text), {"web": S.MAINTENANCE}, {RS1: True})
    assert d.routes == {Route("192.0.2.10/32", Attributes(med=999))}
    assert d.ospf_statics == {"192.0.2.10/32": 1000}


def test_missing_state_counts_as_down_and_missing_real_server_as_down() -> None:
    d = compute(cfg(WEB), {})
    svc = d.service("web")
    assert svc is not None
    assert svc.state is S.DOWN
    assert svc.real_servers_up == 0
    assert d.routes == frozenset()


def test_too_few_healthy_real_servers_make_an_up_service_down() -> None:
    text = WEB.replace("min_healthy = 1", "min_healthy = 2")
    d = compute(cfg(text), {"web": S.UP}, {RS1: True, RS2: False})
    svc = d.service("web")
    assert svc is not None
    assert (svc.health_state, svc.state, svc.real_servers_up) == (S.UP, S.DOWN, 1)
    assert d.routes == frozenset()


def test_live_weights_follow_real_server_health_with_weight0() -> None:
    d = compute(cfg(WEB), {"web": S.UP}, {RS1: True, RS2: False})
    svc = d.service("web")
    assert svc is not None
    assert svc.live == (
        ServiceSpec(
            VS, "rr", 0, (RealServer("10.1.0.1", 80, 5), RealServer("10.1.0.2", 8080, 0))
        ),
    )
    assert svc.idle == (
        ServiceSpec(
            VS, "rr", 0, (RealServer("10.1.0.1", 80, 0), RealServer("10.1.0.2", 8080, 0))
        ),
    )


def test_remove_policy_leaves_failing_real_servers_out() -> None:
    text = WEB.replace('scheduler = "rr"', 'scheduler = "rr"\non_backend_fail = "remove"')
    d = compute(cfg(text), {"web": S.UP}, {RS1: True, RS2: False})
    svc = d.service("web")
    assert svc is not None
    assert svc.live == (ServiceSpec(VS, "rr", 0, (RealServer("10.1.0.1", 80, 5),)),)
    assert svc.idle == (ServiceSpec(VS, "rr", 0, ()),)


def test_disabled_service_has_no_virtual_service_when_idle() -> None:
    text = WEB.replace('drain_time = "5s"', 'drain_time = "5s"\ndisabled = true')
    d = compute(cfg(text), {"web": S.UP}, {RS1: True, RS2: True})
    svc = d.service("web")
    assert svc is not None
    assert svc.state is S.DISABLED
    assert svc.idle == ()
    assert not svc.announces


def test_wide_prefix_is_announced_but_not_put_on_the_interface() -> None:
    text = f"""
[services.edge]
prefixes = ["198.51.100.0/24", "2001:db8::53/128"]
{CHECK}
"""
    d = compute(cfg(text), {"edge": S.UP})
    wide = d.prefix("198.51.100.0/24")
    host = d.prefix("2001:db8::53/128")
    assert wide is not None
    assert host is not None
    assert wide.address is None
    assert wide.route is not None
    assert host.address == ipaddress.ip_interface("2001:db8::53/128")
    assert [p.prefix for p in d.prefixes] == ["198.51.100.0/24", "2001:db8::53/128"]


def test_fwmark_service_has_one_virtual_service_per_family() -> None:
    text = f"""
[services.mark]
prefixes = ["192.0.2.20/32", "192.0.2.21/32", "2001:db8::20/128"]
{CHECK}
[services.mark.ipvs]
protocol = "fwmark"
fwmark = 7
[[services.mark.ipvs.real_servers]]
address = "10.1.0.1"
port = 80
[[services.mark.ipvs.real_servers]]
address = "fd00::1"
port = 80
"""
    d = compute(
        cfg(text), {"mark": S.UP}, {("mark", "10.1.0.1", 80): True, ("mark", "fd00::1", 80): True}
    )
    svc = d.service("mark")
    assert svc is not None
    assert [s.service for s in svc.live] == [VirtualService.mark(7, 4), VirtualService.mark(7, 6)]
    assert [len(s.real_servers) for s in svc.live] == [1, 1]
    v4 = d.prefix("192.0.2.21/32")
    assert v4 is not None
    healthy = (("10.1.0.1", 80), ("fd00::1", 80))
    assert v4.guards == (("mark", (Guard(VirtualService.mark(7, 4), 1, healthy),)),)


SHARED = f"""
[services.a]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
drain_time = "3s"
shutdown = "withdraw"
{CHECK}
[services.a.bgp.up]
med = 1
[services.b]
prefixes = ["192.0.2.30/32"]
shared_prefixes = true
drain_time = "9s"
shutdown = "drain-then-withdraw"
{CHECK}
[services.b.bgp.up]
med = 2
[services.b.bgp.draining]
med = 50
"""


@pytest.mark.parametrize(
    ("a", "b", "med"),
    [
        (S.UP, S.UP, 1),  # tie: first owner by name
        (S.DOWN, S.UP, 2),
        (S.DRAINING, S.UP, 2),  # UP beats DRAINING
        (S.UP, S.DRAINING, 1),
        (S.DOWN, S.DRAINING, 50),
        (S.DOWN, S.DOWN, None),
        (S.MAINTENANCE, S.DISABLED, None),
    ],
)
def test_shared_prefix_is_announced_while_any_owner_announces_with_best_state(
    a: S, b: S, med: int | None
) -> None:
    d = compute(cfg(SHARED), {"a": a, "b": b})
    intent = d.prefix("192.0.2.30/32")
    assert intent is not None
    assert intent.owners == ("a", "b")
    if med is None:
        assert intent.route is None
    else:
        assert intent.route is not None
        assert intent.route.attributes.med == med
    assert intent.drain_time == 9.0
    assert intent.shutdown == "drain-then-withdraw"
