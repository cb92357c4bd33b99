"""The loopback actuator and the sysctl module against the real kernel, in a namespace.

Every test works on the ``lo`` of a namespace it created (anycastd/lab/netns.py); the host's
own ``lo`` is snapshotted before and compared after each test. The scenario transcripts are
shared with the fake (tests/unit/test_loopback_fake.py): same steps, same expected output.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anycastd.actuators.loopback import OWNER_PROTO, NetlinkLoopback
from anycastd.core.addresses import conflicts, diff_addresses
from anycastd.errors import PermanentError
from anycastd.lab.netns import Netns, netns, run
from anycastd.model import AddAddress, RemoveAddress
from tests.unit.test_loopback_fake import LINK_SCENARIOS, SCENARIOS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def I(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:  # noqa: E743 - table helper
    return ipaddress.ip_interface(text)


@pytest.fixture(autouse=True)
def _host_lo_untouched() -> Iterator[None]:
    before = run(["ip", "-o", "addr", "show", "dev", "lo"])
    yield
    assert run(["ip", "-o", "addr", "show", "dev", "lo"]) == before


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns("lo") as created:
        yield created


@pytest.fixture
def lo(ns: Netns) -> Iterator[NetlinkLoopback]:
    with NetlinkLoopback("lo", netns=ns.name) as actuator:
        yield actuator


def add_foreign(ns: Netns) -> Callable[[str], None]:
    def add(address: str) -> None:
        v6 = ":" in address
        ns.exec(["ip", "addr", "add", address, "dev", "lo", *(["nodad"] if v6 else [])])

    return add


def in_ns(ns: Netns, code: str) -> str:
    """Run python ``code`` in a NEW process inside the namespace; its stdout."""
    return ns.exec([sys.executable, "-c", code], timeout=60)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_kernel_scenario_matches_the_fake(name: str, ns: Netns, lo: NetlinkLoopback) -> None:
    scenario, expected = SCENARIOS[name]
    assert scenario(lo, add_foreign(ns)) == expected


@pytest.mark.parametrize("name", sorted(LINK_SCENARIOS))
def test_kernel_link_scenario_matches_the_fake(name: str, ns: Netns, lo: NetlinkLoopback) -> None:
    def set_link(up: bool) -> None:
        ns.exec(["ip", "link", "set", "lo", "up" if up else "down"])

    scenario, expected = LINK_SCENARIOS[name]
    assert scenario(lo, set_link) == expected


def test_observe_reports_a_down_interface_other_than_lo(ns: Netns) -> None:
    ns.exec(["ip", "link", "add", "br0", "type", "bridge"])
    with NetlinkLoopback("br0", netns=ns.name) as br:
        assert br.observe().up is False
        ns.exec(["ip", "link", "set", "br0", "up"])
        assert br.observe().up is True


def test_ipv4_and_ipv6_addresses_appear_on_the_namespace_lo(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    lo.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("2001:db8::1/128"))])
    shown = ns.exec(["ip", "-o", "addr", "show", "dev", "lo"])
    assert "inet 192.0.2.1/32 scope global noprefixroute lo:acd" in shown
    assert "inet6 2001:db8::1/128 scope global nodad noprefixroute" in shown
    assert "tentative" not in shown


def test_ipv6_address_is_usable_at_once(ns: Netns, lo: NetlinkLoopback) -> None:
    lo.apply([AddAddress(I("2001:db8::7/128"))])
    bound = in_ns(
        ns,
        "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
        "s.bind(('2001:db8::7', 0)); print(s.getsockname()[0])",
    )
    assert bound.strip() == "2001:db8::7"


def test_only_the_local_route_is_installed_no_prefix_route(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    lo.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("2001:db8::1/128"))])
    assert "2001:db8::1" not in ns.exec(["ip", "-6", "route", "show", "table", "main"])
    assert "local 2001:db8::1 dev lo" in ns.exec(["ip", "-6", "route", "show", "table", "local"])
    assert "local 192.0.2.1 dev lo" in ns.exec(["ip", "-4", "route", "show", "table", "local"])
    echoed = in_ns(
        ns,
        "import socket\n"
        "for fam, ip in ((socket.AF_INET, '192.0.2.1'), (socket.AF_INET6, '2001:db8::1')):\n"
        "    r = socket.socket(fam, socket.SOCK_DGRAM); r.bind((ip, 0)); r.settimeout(5)\n"
        "    s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b'hi', r.getsockname()[:2])\n"
        "    print(r.recv(10).decode())",
    )
    assert echoed.split() == ["hi", "hi"]


def test_marks_are_read_back_from_the_kernel_with_our_protocol(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    lo.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("2001:db8::1/128"))])
    dump = in_ns(
        ns,
        "import json; from pyroute2 import IPRoute\n"
        "with IPRoute() as ipr:\n"
        "    print(json.dumps({a.get('IFA_ADDRESS'): a.get('IFA_PROTO') "
        "for a in ipr.addr('dump')}))",
    )
    protos = json.loads(dump)
    assert protos["192.0.2.1"] == OWNER_PROTO
    assert protos["2001:db8::1"] == OWNER_PROTO
    assert protos["127.0.0.1"] is None  # the kernel's own address carries no mark


def test_restart_adoption_a_new_process_sees_our_addresses_as_owned(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    lo.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("2001:db8::1/128"))])
    add_foreign(ns)("192.0.2.9/32")
    lo.close()
    out = in_ns(
        ns,
        "from anycastd.actuators.loopback import NetlinkLoopback\n"
        "with NetlinkLoopback() as lo:\n"
        "    print(sorted(str(a) for a in lo.observe().owned))",
    )
    assert out.strip() == "['192.0.2.1/32', '2001:db8::1/128']"


def test_restart_adoption_plans_no_writes(ns: Netns) -> None:
    desired = {I("192.0.2.1/32"), I("2001:db8::1/128")}
    with NetlinkLoopback(netns=ns.name) as first:
        first.apply(diff_addresses(desired, first.observe()))
    with NetlinkLoopback(netns=ns.name) as second:
        assert diff_addresses(desired, second.observe()) == []
        assert second.writes == 0


def test_operator_address_with_our_label_is_still_foreign(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    ns.exec(["ip", "addr", "add", "192.0.2.5/32", "dev", "lo", "label", "lo:acd"])
    observed = lo.observe()
    assert I("192.0.2.5/32") in observed.foreign
    assert diff_addresses(set(), observed) == []
    assert {str(c) for c in conflicts({I("192.0.2.5/32")}, observed)} == {
        "192.0.2.5/32 (foreign)"
    }


def test_converged_pass_makes_zero_writes(lo: NetlinkLoopback) -> None:
    desired = {I(f"198.51.100.{i}/32") for i in range(1, 101)} | {
        I(f"2001:db8::{i:x}/128") for i in range(1, 101)
    }
    lo.apply(diff_addresses(desired, lo.observe()))
    assert lo.writes == 200
    assert lo.observe().owned == desired
    lo.apply(diff_addresses(desired, lo.observe()))
    assert lo.writes == 200


def test_batch_larger_than_one_send_is_applied_completely(lo: NetlinkLoopback) -> None:
    desired = {I(str(ipaddress.IPv4Address("10.20.0.0") + i) + "/32") for i in range(1000)}
    lo.apply(diff_addresses(desired, lo.observe()))
    assert lo.observe().owned == desired
    lo.apply(diff_addresses(set(), lo.observe()))
    assert lo.observe().owned == frozenset()


def test_missing_interface_is_a_permanent_error(ns: Netns) -> None:
    with NetlinkLoopback("nosuch0", netns=ns.name) as missing:
        with pytest.raises(PermanentError, match="ENODEV"):
            missing.apply([AddAddress(I("192.0.2.1/32"))])
        with pytest.raises(PermanentError, match="ENODEV"):
            missing.observe()
        assert missing.writes == 0


def test_missing_namespace_is_permanent_and_never_created() -> None:
    name = "acdt-absent-0"
    with pytest.raises(PermanentError, match="no such namespace"):
        NetlinkLoopback(netns=name)
    assert not os.path.exists(f"/run/netns/{name}")


def test_kernel_refusal_is_mapped_and_the_rest_of_the_batch_still_applies(
    ns: Netns, lo: NetlinkLoopback
) -> None:
    # IPv6 disabled on lo: the kernel refuses RTM_NEWADDR for IPv6 (EACCES), a permanent
    # error; the IPv4 address in the same batch is still added.
    ns.exec(["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=1"])
    with pytest.raises(PermanentError) as info:
        lo.apply([AddAddress(I("2001:db8::1/128")), AddAddress(I("192.0.2.1/32"))])
    assert "add 2001:db8::1/128: EACCES" in str(info.value)
    assert lo.observe().owned == {I("192.0.2.1/32")}
    assert lo.writes == 2


def test_removing_what_is_gone_is_fine(lo: NetlinkLoopback) -> None:
    lo.apply([RemoveAddress(I("192.0.2.1/32")), RemoveAddress(I("2001:db8::1/128"))])
    assert lo.observe().owned == frozenset()


# --------------------------------------------------------------------------------------------
# sysctl: real writes happen only inside the namespace


def _host_sysctls(keys: list[str]) -> dict[str, str]:
    return {k: Path("/proc/sys", *k.split(".")).read_text() for k in keys}


def test_sysctl_managed_pass_writes_the_namespace_values_only(ns: Netns) -> None:
    keys = [
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    ]
    host_before = _host_sysctls(keys)
    code = (
        "import json\n"
        "from anycastd.actuators import sysctl\n"
        "req = sysctl.required_sysctls({'nat', 'dr'}, {4, 6})\n"
        "first = sysctl.reconcile(req, manage=True)\n"
        "second = sysctl.reconcile(req, manage=True)\n"
        "print(json.dumps([[d.key for d in first], [d.key for d in second],"
        " [str(d) for d in sysctl.check(req)]]))"
    )
    ns.exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0", "net.ipv4.conf.all.arp_ignore=0"])
    first, second, remaining = json.loads(in_ns(ns, code))
    assert "net.ipv4.ip_forward" in first
    assert "net.ipv4.conf.all.arp_ignore" in first
    assert second == []
    assert remaining == []
    inside = ns.exec(
        ["cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/arp_announce"]
    )
    assert inside.split() == ["1", "2"]
    assert _host_sysctls(keys) == host_before


def test_sysctl_unmanaged_pass_reports_and_writes_nothing(ns: Netns) -> None:
    ns.exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
    code = (
        "from anycastd.actuators import sysctl\n"
        "print([str(d) for d in sysctl.reconcile({'net.ipv4.ip_forward': '1'}, manage=False)])"
    )
    assert in_ns(ns, code).strip() == "[\"net.ipv4.ip_forward: want '1', have '0'\"]"
    assert ns.exec(["cat", "/proc/sys/net/ipv4/ip_forward"]).strip() == "0"


def test_subprocess_helper_runs_in_the_namespace(ns: Netns) -> None:
    # Guard for the two tests above: the helper really runs inside the namespace.
    inode_inside = in_ns(ns, "import os; print(os.stat('/proc/self/ns/net').st_ino)")
    assert int(inode_inside) != os.stat("/proc/self/ns/net").st_ino


def test_namespace_can_be_given_as_a_path(ns: Netns) -> None:
    with NetlinkLoopback(netns=f"/run/netns/{ns.name}") as by_path:
        by_path.apply([AddAddress(I("192.0.2.1/32"))])
    assert "192.0.2.1/32" in ns.exec(["ip", "-o", "addr", "show", "dev", "lo"])
