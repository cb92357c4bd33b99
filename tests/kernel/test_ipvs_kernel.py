"""The IPVS actuator against a real kernel (UML guest; see tests/kernel/run-in-uml.sh).

Each test starts from an empty IPVS table (the guest is ours alone) and cross-checks the
actuator's own view with ``ipvsadm -Ln`` parsed inside the guest.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from anycastd.actuators.ipvs import IpvsNetlink
from anycastd.core.ipvs import diff_ipvs, foreign
from anycastd.errors import PermanentError
from anycastd.model import (
    DeleteService,
    EditRealServer,
    EditService,
    RealServer,
    ServiceSpec,
    VirtualService,
)

pytestmark = pytest.mark.kernel


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ipvsadm_table(*extra: str) -> dict[str, dict[str, list[str]]]:
    """``ipvsadm -Ln`` as {service line: {"": service tokens, dest: dest tokens}}.

    Service keys look like "TCP 10.0.0.1:80", "UDP [2001:db8::1]:53", "FWM 5 IPv6".
    """
    table: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in sh("ipvsadm", "-Ln", *extra).splitlines()[3:]:
        tokens = line.split()
        if not tokens:
            continue
        if line.startswith("  ->"):
            assert current is not None
            current[tokens[1]] = tokens[2:]
            continue
        if tokens[0] == "FWM" and len(tokens) > 2 and tokens[2] == "IPv6":
            key, rest = " ".join(tokens[:3]), tokens[3:]
        else:
            key, rest = " ".join(tokens[:2]), tokens[2:]
        current = table[key] = {"": rest}
    return table


@pytest.fixture
def ipvs(tmp_path: Path) -> Iterator[IpvsNetlink]:
    sh("ipvsadm", "-C")
    act = IpvsNetlink(state_dir=tmp_path)
    try:
        yield act
    finally:
        act.close()
        sh("ipvsadm", "-C")


@pytest.fixture
def dummy() -> Iterator[str]:
    """A dummy interface routing 10.77.0.0/24 (real servers) plus a VIP on lo."""
    sh("ip", "link", "add", "acdt-dummy0", "type", "dummy")
    sh("ip", "addr", "add", "10.77.0.254/24", "dev", "acdt-dummy0")
    sh("ip", "link", "set", "acdt-dummy0", "up")
    sh("ip", "addr", "add", "10.77.1.1/32", "dev", "lo")
    try:
        yield "acdt-dummy0"
    finally:
        sh("ip", "addr", "del", "10.77.1.1/32", "dev", "lo")
        sh("ip", "link", "del", "acdt-dummy0")


def converge(act: IpvsNetlink, desired: dict[VirtualService, ServiceSpec]) -> int:
    """One reconcile pass; returns the number of netlink writes it made."""
    before = act.writes
    act.apply(diff_ipvs(desired, act.observe(), act.owned()))
    return act.writes - before


def spec(
    vs: VirtualService, *servers: RealServer, sched: str = "wlc", pers: int = 0
) -> ServiceSpec:
    return ServiceSpec(vs, scheduler=sched, persistence=pers, real_servers=servers)


VIP = VirtualService.tcp("10.77.1.1", 80)


def test_nat_dr_and_tunnel_real_servers_are_created_and_read_back(ipvs: IpvsNetlink) -> None:
    want = spec(
        VIP,
        RealServer("10.77.0.1", 8080, 100, "nat"),
        RealServer("10.77.0.2", 80, 50, "dr"),
        RealServer("10.77.0.3", 80, 10, "tunnel"),
    )
    writes = converge(ipvs, {VIP: want})
    assert writes == 4

    table = ipvsadm_table()
    assert table["TCP 10.77.1.1:80"][""] == ["wlc"]
    assert table["TCP 10.77.1.1:80"]["10.77.0.1:8080"][:2] == ["Masq", "100"]
    assert table["TCP 10.77.1.1:80"]["10.77.0.2:80"][:2] == ["Route", "50"]
    assert table["TCP 10.77.1.1:80"]["10.77.0.3:80"][:2] == ["Tunnel", "10"]

    seen = ipvs.observe().services[VIP]
    assert {o.server for o in seen.real_servers} == set(want.real_servers)
    assert converge(ipvs, {VIP: want}) == 0


def test_fwmark_services_ipv4_and_ipv6_with_persistence(ipvs: IpvsNetlink) -> None:
    m4, m6 = VirtualService.mark(7, 4), VirtualService.mark(8, 6)
    desired = {
        m4: spec(m4, RealServer("10.77.0.1", 0, 1, "dr"), sched="rr", pers=300),
        m6: spec(m6, RealServer("2001:db8:77::1", 0, 3, "dr"), sched="sh"),
    }
    assert converge(ipvs, desired) == 4
    table = ipvsadm_table()
    assert table["FWM 7"][""] == ["rr", "persistent", "300"]
    assert table["FWM 8 IPv6"][""] == ["sh"]
    assert table["FWM 8 IPv6"]["[2001:db8:77::1]:0"][:2] == ["Route", "3"]
    seen = ipvs.observe().services
    assert (seen[m4].scheduler, seen[m4].persistence) == ("rr", 300)
    assert converge(ipvs, desired) == 0


def test_tcp_and_udp_ipv6_services(ipvs: IpvsNetlink) -> None:
    t6, u6 = VirtualService.tcp("2001:DB8::53", 53), VirtualService.udp("2001:db8::53", 53)
    desired = {
        t6: spec(t6, RealServer("2001:db8:77::1", 53, 5, "nat")),
        u6: spec(u6, RealServer("2001:db8:77::1", 5353, 5, "nat"), pers=60),
    }
    assert converge(ipvs, desired) == 4
    table = ipvsadm_table()
    assert set(table) == {"TCP [2001:db8::53]:53", "UDP [2001:db8::53]:53"}
    assert converge(ipvs, desired) == 0


def conns(vip: VirtualService) -> int:
    """Active + inactive connections of all real servers of ``vip`` per ``ipvsadm -Ln``."""
    svc = ipvsadm_table()[f"{vip.protocol.upper()} {vip.address}:{vip.port}"]
    return sum(int(t[2]) + int(t[3]) for k, t in svc.items() if k)


def service_conns(vip: VirtualService) -> int:
    """The service's connection counter (``ipvsadm -Ln --stats``, column Conns)."""
    table = ipvsadm_table("--stats")
    return int(table[f"{vip.protocol.upper()} {vip.address}:{vip.port}"][""][0])


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def udp_connections_through(vip: VirtualService, count: int) -> None:
    # A fresh source port each time: an entry left by an earlier test (UDP entries live 5
    # minutes) would catch a reused port and its packets would be dropped (EPERM).
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("10.77.1.1", 0))
            s.sendto(b"x", (vip.address, vip.port))


def test_weight_edit_is_one_set_and_the_service_is_not_recreated(
    ipvs: IpvsNetlink, dummy: str
) -> None:
    vip = VirtualService.udp("10.77.1.1", 53)
    rs1, rs2 = RealServer("10.77.0.1", 53, 100), RealServer("10.77.0.2", 53, 100)
    converge(ipvs, {vip: spec(vip, rs1, rs2, sched="rr")})
    udp_connections_through(vip, 4)
    # The witness: the service's own counters. A recreated service starts again at zero.
    # (Connection counts are no witness: the kernel re-attaches a deleted real server, with
    # its connections, when the same service and server come back.) The counters are summed
    # by the 2 s estimator, hence the wait.
    assert wait_for(lambda: service_conns(vip) == 4, timeout=6)
    assert conns(vip) == 4

    edited = spec(vip, RealServer("10.77.0.1", 53, 7), rs2, sched="rr")
    actions = diff_ipvs({vip: edited}, ipvs.observe(), ipvs.owned())
    assert actions == [EditRealServer(vip, edited.real_servers[0])]
    before = ipvs.writes
    ipvs.apply(actions)
    assert ipvs.writes - before == 1

    assert ipvsadm_table()["UDP 10.77.1.1:53"]["10.77.0.1:53"][1] == "7"
    assert service_conns(vip) == 4
    assert conns(vip) == 4
    total = sum(sum(ipvs.observe().connections(vip, a, 53)) for a in ("10.77.0.1", "10.77.0.2"))
    assert total == 4
    assert converge(ipvs, {vip: edited}) == 0


def test_scheduler_persistence_and_forwarding_change_in_place(
    ipvs: IpvsNetlink, dummy: str
) -> None:
    vip = VirtualService.udp("10.77.1.1", 54)
    converge(ipvs, {vip: spec(vip, RealServer("10.77.0.1", 54, 1, "nat"))})
    udp_connections_through(vip, 2)

    changed = spec(vip, RealServer("10.77.0.1", 54, 1, "dr"), sched="sed", pers=120)
    actions = diff_ipvs({vip: changed}, ipvs.observe(), ipvs.owned())
    assert actions == [EditService(changed), EditRealServer(vip, changed.real_servers[0])]
    ipvs.apply(actions)
    table = ipvsadm_table()
    assert table["UDP 10.77.1.1:54"][""] == ["sed", "persistent", "120"]
    assert table["UDP 10.77.1.1:54"]["10.77.0.1:54"][0] == "Route"
    assert conns(vip) == 2
    assert converge(ipvs, {vip: changed}) == 0


def test_drain_sets_weight_zero_and_connections_stay_visible(
    ipvs: IpvsNetlink, dummy: str
) -> None:
    vip = VirtualService.udp("10.77.1.1", 55)
    rs = RealServer("10.77.0.1", 55, 100)
    converge(ipvs, {vip: spec(vip, rs)})
    udp_connections_through(vip, 3)
    active, inactive = ipvs.observe().connections(vip, "10.77.0.1", 55)
    assert active + inactive == 3

    assert converge(ipvs, {vip: spec(vip, RealServer("10.77.0.1", 55, 0))}) == 1
    assert ipvsadm_table()["UDP 10.77.1.1:55"]["10.77.0.1:55"][1] == "0"
    # no new connection goes to a weight-0 server...
    with suppress(OSError):
        udp_connections_through(vip, 1)
    # ...and the drained server keeps its existing connections until they finish
    active, inactive = ipvs.observe().connections(vip, "10.77.0.1", 55)
    assert active + inactive == 3


def test_stale_owned_service_is_deleted_after_a_restart(tmp_path: Path) -> None:
    sh("ipvsadm", "-C")
    a, b = VirtualService.tcp("10.77.1.1", 80), VirtualService.tcp("10.77.1.2", 80)
    rs = RealServer("10.77.0.1", 80)
    try:
        with IpvsNetlink(state_dir=tmp_path) as first:
            converge(first, {a: spec(a, rs), b: spec(b, rs)})
        # restart with b removed from the config: the ownership file remembers it
        with IpvsNetlink(state_dir=tmp_path) as second:
            assert second.owned() == {a, b}
            actions = diff_ipvs({a: spec(a, rs)}, second.observe(), second.owned())
            assert actions == [DeleteService(b)]
            second.apply(actions)
            assert set(ipvsadm_table()) == {"TCP 10.77.1.1:80"}
            assert second.owned() == {a}
        assert IpvsNetlink(state_dir=tmp_path).owned() == {a}
    finally:
        sh("ipvsadm", "-C")


def test_foreign_services_are_never_touched(ipvs: IpvsNetlink) -> None:
    sh("ipvsadm", "-A", "-t", "10.9.9.9:80", "-s", "rr")
    sh("ipvsadm", "-a", "-t", "10.9.9.9:80", "-r", "10.9.0.1:80", "-m", "-w", "3")
    sh("ipvsadm", "-A", "-f", "99", "-s", "lc")
    before = ipvsadm_table()

    mine = spec(VIP, RealServer("10.77.0.1", 80))
    converge(ipvs, {VIP: mine})
    # and the config forgetting VIP deletes only VIP
    converge(ipvs, {})

    assert ipvsadm_table() == before
    observed = ipvs.observe()
    assert foreign(observed, ipvs.owned()) == [
        VirtualService.mark(99, 4),
        VirtualService.tcp("10.9.9.9", 80),
    ]
    # read back raw attributes (pyroute2's from_message would report its class defaults)
    theirs = observed.services[VirtualService.tcp("10.9.9.9", 80)]
    assert theirs.scheduler == "rr"
    assert theirs.real_servers[0].server == RealServer("10.9.0.1", 80, 3, "nat")


def test_unknown_scheduler_is_a_permanent_error(ipvs: IpvsNetlink) -> None:
    bad = spec(VIP, RealServer("10.77.0.1", 80), sched="nosuch")
    with pytest.raises(PermanentError) as info:
        ipvs.apply(diff_ipvs({VIP: bad}, ipvs.observe(), ipvs.owned()))
    assert info.value.actuator == "ipvs"
    assert "ENOENT" in info.value.message
    assert ipvsadm_table() == {}


def test_apply_is_idempotent(ipvs: IpvsNetlink) -> None:
    want = {VIP: spec(VIP, RealServer("10.77.0.1", 80, 5))}
    actions = diff_ipvs(want, ipvs.observe(), ipvs.owned())
    ipvs.apply(actions)
    ipvs.apply(actions)  # adding what exists becomes a "set": no EEXIST escapes
    assert ipvsadm_table()["TCP 10.77.1.1:80"]["10.77.0.1:80"][:2] == ["Masq", "5"]
    removal = diff_ipvs({}, ipvs.observe(), ipvs.owned())
    ipvs.apply(removal)
    ipvs.apply(removal)  # deleting what is gone succeeds
    assert ipvsadm_table() == {}


def test_pyroute2_update_command_deletes_the_service(ipvs: IpvsNetlink) -> None:
    """Contract: pyroute2 0.9.7 maps "update" to IPVS_CMD_DEL_SERVICE; we must use "set"."""
    from pyroute2 import IPVS, IPVSService

    sh("ipvsadm", "-A", "-t", "10.9.9.9:80", "-s", "rr")
    with IPVS() as raw:
        raw.service("update", IPVSService(addr="10.9.9.9", port=80, protocol=6, sched_name="wlc"))
    assert ipvsadm_table() == {}


@pytest.fixture
def vlan_on_dummy() -> Iterator[str]:
    """dummy ``acdt-dum1`` with VLAN 100 on top; real-server addresses on the VLAN."""
    sh("ip", "link", "add", "acdt-dum1", "type", "dummy")
    vlan = "acdt-dum1.100"
    sh("ip", "link", "add", "link", "acdt-dum1", "name", vlan, "type", "vlan", "id", "100")
    for dev in ("acdt-dum1", "acdt-dum1.100"):
        sh("ip", "link", "set", dev, "up")
    sh("ip", "addr", "add", "10.78.0.1/24", "dev", "acdt-dum1.100")
    sh("ip", "addr", "add", "10.78.0.2/24", "dev", "acdt-dum1.100")
    try:
        yield "acdt-dum1.100"
    finally:
        sh("ip", "link", "del", "acdt-dum1")  # takes the VLAN with it


def test_real_servers_on_a_vlan_over_a_dummy_interface_converge(
    ipvs: IpvsNetlink, vlan_on_dummy: str
) -> None:
    assert "vlan protocol 802.1Q id 100" in sh("ip", "-d", "link", "show", vlan_on_dummy)
    vip = VirtualService.tcp("10.78.0.100", 443)
    want = {
        vip: spec(
            vip,
            RealServer("10.78.0.1", 443, 10, "dr"),  # addresses local to this node
            RealServer("10.78.0.2", 8443, 20, "nat"),
            RealServer("10.78.0.3", 443, 30, "tunnel"),  # a neighbour on the VLAN
            sched="mh",
        )
    }
    assert converge(ipvs, want) == 4
    # The kernel keeps the configured method even for a local address, so a second pass
    # finds nothing to change (no churn on nodes that are their own real server).
    assert converge(ipvs, want) == 0
    table = ipvsadm_table()["TCP 10.78.0.100:443"]
    assert table[""][0] == "mh"
    assert [table[a][:2] for a in ("10.78.0.1:443", "10.78.0.2:8443", "10.78.0.3:443")] == [
        ["Route", "10"],
        ["Masq", "20"],
        ["Tunnel", "30"],
    ]


def test_tunnelled_real_server_of_the_other_family_is_read_back(ipvs: IpvsNetlink) -> None:
    want = {VIP: spec(VIP, RealServer("2001:db8:77::9", 80, 4, "tunnel"))}
    assert converge(ipvs, want) == 2
    seen = ipvs.observe().services[VIP].real_servers
    assert [o.server for o in seen] == [RealServer("2001:db8:77::9", 80, 4, "tunnel")]
    assert converge(ipvs, want) == 0
