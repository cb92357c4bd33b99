"""Loopback planning (pure), FakeLoopback, and the kernel-settings (sysctl) module.

``SCENARIOS`` are transcripts shared with tests/integration/test_loopback.py: the same steps
run against FakeLoopback here and against the real kernel there, and both must produce the
same transcript — that is the fake's parity guarantee.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2 import NetlinkError

from anycastd.actuators import netlink, sysctl
from anycastd.actuators.loopback import LoopbackActuator, NetlinkLoopback, owner_label
from anycastd.core.addresses import conflicts, diff_addresses
from anycastd.errors import PermanentError, TransientError
from anycastd.model import AddAddress, Address, HostAddress, LoopbackObserved, RemoveAddress
from anycastd.testing.loopback import FakeLoopback


def I(text: str) -> HostAddress:  # noqa: E743 - a one-letter constructor reads best in tables
    return ipaddress.ip_interface(text)


def obs(*items: str) -> LoopbackObserved:
    """``"192.0.2.1/32"`` is ours, ``"!192.0.2.1/32"`` is foreign."""
    addresses = set()
    for item in items:
        iface = I(item.lstrip("!"))
        addresses.add(Address(iface.ip, iface.network.prefixlen, owned=not item.startswith("!")))
    return LoopbackObserved("lo", frozenset(addresses))


# --------------------------------------------------------------------------------------------
# plan (pure)


def test_plan_from_empty_adds_every_desired_address_v4_then_v6_sorted() -> None:
    desired = {I("2001:db8::1/128"), I("192.0.2.2/32"), I("192.0.2.1/32")}
    assert diff_addresses(desired, obs("!127.0.0.1/8", "!::1/128")) == [
        AddAddress(I("192.0.2.1/32")),
        AddAddress(I("192.0.2.2/32")),
        AddAddress(I("2001:db8::1/128")),
    ]


def test_converged_state_plans_nothing() -> None:
    desired = {I("192.0.2.1/32"), I("2001:db8::1/128")}
    assert diff_addresses(desired, obs("192.0.2.1/32", "2001:db8::1/128", "!127.0.0.1/8")) == []


def test_owned_address_no_longer_desired_is_removed_before_adds() -> None:
    assert diff_addresses({I("192.0.2.2/32")}, obs("192.0.2.1/32")) == [
        RemoveAddress(I("192.0.2.1/32")),
        AddAddress(I("192.0.2.2/32")),
    ]


def test_foreign_address_is_never_removed() -> None:
    assert diff_addresses(set(), obs("!192.0.2.1/32", "!2001:db8::1/128", "!127.0.0.1/8")) == []


def test_desired_address_held_by_foreign_is_not_claimed_but_reported() -> None:
    desired = {I("192.0.2.1/32"), I("192.0.2.2/32")}
    observed = obs("!192.0.2.1/32")
    assert diff_addresses(desired, observed) == [AddAddress(I("192.0.2.2/32"))]
    assert conflicts(desired, observed) == {Address(I("192.0.2.1/32").ip, 32, owned=False)}


def test_foreign_with_other_prefix_length_still_conflicts() -> None:
    desired = {I("2001:db8::5/128")}
    observed = obs("!2001:db8::5/64")
    assert diff_addresses(desired, observed) == []
    assert [str(c) for c in conflicts(desired, observed)] == ["2001:db8::5/64 (foreign)"]


def test_owned_address_with_changed_prefix_length_is_replaced() -> None:
    assert diff_addresses({I("192.0.2.0/31")}, obs("192.0.2.0/32")) == [
        RemoveAddress(I("192.0.2.0/32")),
        AddAddress(I("192.0.2.0/31")),
    ]


def test_no_conflicts_when_nothing_foreign_is_desired() -> None:
    assert conflicts({I("192.0.2.1/32")}, obs("192.0.2.1/32", "!127.0.0.1/8")) == frozenset()


def test_plan_rejects_plain_addresses() -> None:
    with pytest.raises(TypeError):
        diff_addresses({ipaddress.ip_address("192.0.2.1")}, obs())  # type: ignore[arg-type]


def test_owner_label_fits_ipv4_label_limit() -> None:
    assert owner_label("lo") == "lo:acd"
    assert owner_label("eth0.100") == "eth0.100:acd"
    assert owner_label("averylongname15") is None


# --------------------------------------------------------------------------------------------
# Scenarios shared with the integration test (transcripts)

AddForeign = Callable[[str], None]
DEFAULTS = {"127.0.0.1/8 (foreign)", "::1/128 (foreign)"}


def _state(act: LoopbackActuator) -> str:
    shown = sorted(str(a) for a in act.observe().addresses if str(a) not in DEFAULTS)
    return "state: " + ", ".join(shown)


def _pass(act: LoopbackActuator, desired: set[str], out: list[str]) -> None:
    want = {I(d) for d in desired}
    observed = act.observe()
    actions = diff_addresses(want, observed)
    out.append("plan: " + ", ".join(str(a) for a in actions))
    found = conflicts(want, observed)
    if found:
        out.append("conflicts: " + ", ".join(sorted(str(c) for c in found)))
    before = act.writes
    act.apply(actions)
    out.append(f"writes: {act.writes - before}")
    out.append(_state(act))


def scenario_add_then_converge(act: LoopbackActuator, add_foreign: AddForeign) -> list[str]:
    out: list[str] = []
    desired = {"192.0.2.1/32", "2001:db8::1/128"}
    _pass(act, desired, out)
    _pass(act, desired, out)
    _pass(act, set(), out)
    return out


def scenario_foreign_untouched(act: LoopbackActuator, add_foreign: AddForeign) -> list[str]:
    out: list[str] = []
    add_foreign("192.0.2.10/32")
    add_foreign("2001:db8::10/64")
    _pass(act, {"192.0.2.11/32"}, out)
    _pass(act, set(), out)
    _pass(act, {"192.0.2.10/32", "2001:db8::10/128"}, out)
    return out


def scenario_idempotent_apply(act: LoopbackActuator, add_foreign: AddForeign) -> list[str]:
    out: list[str] = []
    adds = [AddAddress(I("192.0.2.20/32")), AddAddress(I("2001:db8::20/128"))]
    act.apply(adds)
    act.apply(adds)
    out.append(_state(act))
    removes = [RemoveAddress(I("192.0.2.20/32")), RemoveAddress(I("2001:db8::20/128"))]
    act.apply(removes)
    act.apply(removes)
    out.append(_state(act))
    return out


def scenario_add_over_foreign_race(act: LoopbackActuator, add_foreign: AddForeign) -> list[str]:
    # The operator adds the address between our observe and our apply: EEXIST counts as done
    # and the address stays theirs.
    out: list[str] = []
    add_foreign("192.0.2.30/32")
    act.apply([AddAddress(I("192.0.2.30/32"))])
    out.append(_state(act))
    return out


SCENARIOS: dict[str, tuple[Callable[[LoopbackActuator, AddForeign], list[str]], list[str]]] = {
    "add_then_converge": (
        scenario_add_then_converge,
        [
            "plan: add 192.0.2.1/32, add 2001:db8::1/128",
            "writes: 2",
            "state: 192.0.2.1/32, 2001:db8::1/128",
            "plan: ",
            "writes: 0",
            "state: 192.0.2.1/32, 2001:db8::1/128",
            "plan: remove 192.0.2.1/32, remove 2001:db8::1/128",
            "writes: 2",
            "state: ",
        ],
    ),
    "foreign_untouched": (
        scenario_foreign_untouched,
        [
            "plan: add 192.0.2.11/32",
            "writes: 1",
            "state: 192.0.2.10/32 (foreign), 192.0.2.11/32, 2001:db8::10/64 (foreign)",
            "plan: remove 192.0.2.11/32",
            "writes: 1",
            "state: 192.0.2.10/32 (foreign), 2001:db8::10/64 (foreign)",
            "plan: ",
            "conflicts: 192.0.2.10/32 (foreign), 2001:db8::10/64 (foreign)",
            "writes: 0",
            "state: 192.0.2.10/32 (foreign), 2001:db8::10/64 (foreign)",
        ],
    ),
    "idempotent_apply": (
        scenario_idempotent_apply,
        ["state: 192.0.2.20/32, 2001:db8::20/128", "state: "],
    ),
    "add_over_foreign_race": (
        scenario_add_over_foreign_race,
        ["state: 192.0.2.30/32 (foreign)"],
    ),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fake_scenario(name: str) -> None:
    fake = FakeLoopback()
    run, expected = SCENARIOS[name]
    assert run(fake, fake.add_foreign) == expected


# Link scenarios: the same transcript from the kernel (``ip link set lo down|up`` in a
# namespace, tests/integration/test_loopback.py) and from FakeLoopback.link_up.

SetLink = Callable[[bool], None]


def _link_state(act: LoopbackActuator) -> str:
    observed = act.observe()
    loopback_v6 = "::1/128 (foreign)" in {str(a) for a in observed.addresses}
    return f"{_state(act)} | up: {observed.up} | ::1: {loopback_v6}"


def scenario_link_down_keeps_ipv4_drops_ipv6(act: LoopbackActuator, set_link: SetLink) -> list[str]:
    out: list[str] = []
    act.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("2001:db8::1/128"))])
    out.append(_link_state(act))
    set_link(False)
    out.append(_link_state(act))
    # The kernel accepts an IPv6 address on a down interface and keeps it when it comes up.
    act.apply([AddAddress(I("2001:db8::1/128"))])
    out.append(_link_state(act))
    set_link(True)
    out.append(_link_state(act))
    return out


def scenario_link_up_does_not_restore_ipv6(act: LoopbackActuator, set_link: SetLink) -> list[str]:
    out: list[str] = []
    act.apply([AddAddress(I("2001:db8::2/128"))])
    set_link(False)
    set_link(True)
    out.append(_link_state(act))
    return out


LINK_SCENARIOS: dict[str, tuple[Callable[[LoopbackActuator, SetLink], list[str]], list[str]]] = {
    "link_down_keeps_ipv4_drops_ipv6": (
        scenario_link_down_keeps_ipv4_drops_ipv6,
        [
            "state: 192.0.2.1/32, 2001:db8::1/128 | up: True | ::1: True",
            "state: 192.0.2.1/32 | up: False | ::1: False",
            "state: 192.0.2.1/32, 2001:db8::1/128 | up: False | ::1: False",
            "state: 192.0.2.1/32, 2001:db8::1/128 | up: True | ::1: True",
        ],
    ),
    "link_up_does_not_restore_ipv6": (
        scenario_link_up_does_not_restore_ipv6,
        ["state:  | up: True | ::1: True"],
    ),
}


@pytest.mark.parametrize("name", sorted(LINK_SCENARIOS))
def test_fake_link_scenario(name: str) -> None:
    fake = FakeLoopback()

    def set_link(up: bool) -> None:
        fake.link_up = up

    run, expected = LINK_SCENARIOS[name]
    assert run(fake, set_link) == expected


def test_observed_link_state_defaults_to_up_for_existing_constructors() -> None:
    assert LoopbackObserved("lo", frozenset()).up is True


# --------------------------------------------------------------------------------------------
# FakeLoopback specifics


def test_fake_restart_adopts_marked_addresses() -> None:
    first = FakeLoopback()
    first.apply([AddAddress(I("192.0.2.1/32"))])
    second = FakeLoopback(addresses=first.observe().addresses)
    assert second.observe().owned == {I("192.0.2.1/32")}
    assert diff_addresses({I("192.0.2.1/32")}, second.observe()) == []


def test_fake_injected_transient_failure_changes_nothing_and_next_pass_repairs() -> None:
    fake = FakeLoopback()
    fake.fail_next(TransientError("loopback", "EBUSY"), count=1)
    want = {I("192.0.2.1/32"), I("192.0.2.2/32")}
    with pytest.raises(TransientError, match=r"add 192\.0\.2\.1/32: EBUSY"):
        fake.apply(diff_addresses(want, fake.observe()))
    assert fake.observe().owned == {I("192.0.2.2/32")}  # the rest of the batch went through
    fake.apply(diff_addresses(want, fake.observe()))
    assert fake.observe().owned == want
    assert fake.writes == 3


def test_fake_permanent_failure_wins_over_transient_in_one_batch() -> None:
    fake = FakeLoopback()
    fake.fail_next(TransientError("loopback", "EBUSY"))
    fake.fail_next(PermanentError("loopback", "EINVAL"))
    with pytest.raises(PermanentError, match=r"EINVAL \(and 1 more\)"):
        fake.apply([AddAddress(I("192.0.2.1/32")), AddAddress(I("192.0.2.2/32"))])
    assert fake.observe().owned == frozenset()


def test_fake_missing_interface_is_permanent() -> None:
    fake = FakeLoopback("nosuch0")
    fake.interface_present = False
    with pytest.raises(PermanentError, match="ENODEV"):
        fake.observe()
    with pytest.raises(PermanentError, match="ENODEV"):
        fake.apply([AddAddress(I("192.0.2.1/32"))])


def test_fake_history_records_each_write() -> None:
    fake = FakeLoopback()
    fake.apply([AddAddress(I("192.0.2.1/32")), RemoveAddress(I("192.0.2.1/32"))])
    assert fake.history == [("add", "192.0.2.1/32"), ("remove", "192.0.2.1/32")]


def test_fake_ipv4_same_ip_other_prefix_length_coexists_like_the_kernel() -> None:
    fake = FakeLoopback(addresses=())
    fake.apply([AddAddress(I("192.0.2.0/32")), AddAddress(I("192.0.2.0/31"))])
    fake.apply([AddAddress(I("2001:db8::/128")), AddAddress(I("2001:db8::/127"))])
    assert sorted(map(str, fake.observe().addresses)) == [
        "192.0.2.0/31",
        "192.0.2.0/32",
        "2001:db8::/128",
    ]


# --------------------------------------------------------------------------------------------
# sysctl (pure parts against a temporary /proc/sys)


def test_nat_director_needs_forwarding_per_family() -> None:
    assert sysctl.required_sysctls({"nat"}, {4}) == {"net.ipv4.ip_forward": "1"}
    assert sysctl.required_sysctls({"nat"}, {4, 6}) == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
    }


def test_dr_and_tunnel_real_servers_need_arp_settings_only_for_ipv4() -> None:
    arp = {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
    assert sysctl.required_sysctls({"dr"}, {4}) == arp
    assert sysctl.required_sysctls({"tunnel"}, {4, 6}) == arp
    assert sysctl.required_sysctls({"dr"}, {6}) == {}


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(ValueError, match="masq"):
        sysctl.required_sysctls({"masq"}, {4})


def _proc(tmp_path: Path, values: dict[str, str]) -> Path:
    for key, value in values.items():
        path = tmp_path.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def test_check_reports_drift_and_missing_keys(tmp_path: Path) -> None:
    root = _proc(tmp_path, {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.arp_ignore": "1"})
    required = {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv6.conf.all.forwarding": "1",
    }
    assert sysctl.check(required, root) == [
        sysctl.SysctlDrift("net.ipv4.ip_forward", "1", "0"),
        sysctl.SysctlDrift("net.ipv6.conf.all.forwarding", "1", None),
    ]


def test_reconcile_unmanaged_only_reports(tmp_path: Path) -> None:
    root = _proc(tmp_path, {"net.ipv4.ip_forward": "0"})
    drift = sysctl.reconcile({"net.ipv4.ip_forward": "1"}, manage=False, proc_sys=root)
    assert [str(d) for d in drift] == ["net.ipv4.ip_forward: want '1', have '0'"]
    assert (root / "net/ipv4/ip_forward").read_text() == "0\n"


def test_reconcile_managed_writes_only_drifting_keys(tmp_path: Path) -> None:
    root = _proc(tmp_path, {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.arp_ignore": "1"})
    untouched = root / "net/ipv4/conf/all/arp_ignore"
    mtime = untouched.stat().st_mtime_ns
    required = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.arp_ignore": "1"}
    changed = sysctl.reconcile(required, manage=True, proc_sys=root)
    assert changed == [sysctl.SysctlDrift("net.ipv4.ip_forward", "1", "0")]
    assert sysctl.check(required, root) == []
    assert untouched.stat().st_mtime_ns == mtime
    assert sysctl.apply(required, root) == []


def test_apply_missing_key_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"net\.ipv6\.conf\.all\.forwarding"):
        sysctl.apply({"net.ipv6.conf.all.forwarding": "1"}, tmp_path)


def test_multi_value_sysctls_compare_word_by_word(tmp_path: Path) -> None:
    root = _proc(tmp_path, {"net.ipv4.ip_local_port_range": "32768\t60999"})
    assert sysctl.check({"net.ipv4.ip_local_port_range": "32768 60999"}, root) == []


def test_keys_cannot_escape_proc_sys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sysctl key"):
        sysctl.check({"net..ipv4": "1"}, tmp_path)
    with pytest.raises(ValueError, match="not a sysctl key"):
        sysctl.check({"net/../../etc": "1"}, tmp_path)


# --------------------------------------------------------------------------------------------
# netlink error mapping (shared with the IPVS actuator) and the kernel guard


def test_busy_kernel_errnos_are_transient_and_bad_requests_permanent() -> None:
    assert netlink.classify(errno.EBUSY) is TransientError
    assert netlink.classify(-errno.ENOBUFS) is TransientError  # netlink sends errno negated
    assert netlink.classify(errno.EINVAL) is PermanentError
    assert netlink.classify(errno.ENODEV) is PermanentError
    assert netlink.classify(4095) is PermanentError  # unknown: no tight retry loop


def test_map_netlink_errors_translates_and_chains() -> None:
    with (
        pytest.raises(TransientError, match=r"ipvs: add: EAGAIN") as info,
        netlink.map_netlink_errors("ipvs", "add"),
    ):
        raise NetlinkError(errno.EAGAIN, "try again")
    assert isinstance(info.value.__cause__, NetlinkError)
    with pytest.raises(PermanentError, match="EOPNOTSUPP"), netlink.map_netlink_errors("ipvs"):
        raise NetlinkError(-errno.EOPNOTSUPP)


def test_map_netlink_errors_maps_socket_timeouts_and_passes_actuator_errors() -> None:
    with pytest.raises(TransientError, match="ETIMEDOUT"), netlink.map_netlink_errors("x"):
        raise TimeoutError("timed out")
    original = PermanentError("loopback", "mine")
    with pytest.raises(PermanentError) as info, netlink.map_netlink_errors("loopback"):
        raise original
    assert info.value is original


def test_kernel_without_ifa_proto_is_refused_before_any_io() -> None:
    with pytest.raises(PermanentError, match="IFA_PROTO"):
        NetlinkLoopback(kernel_release="5.15.0-91-generic")


# --------------------------------------------------------------------------------------------
# Property: one plan+apply converges, never touches foreign addresses, and the next pass is
# empty (no churn).

POOL = [*(f"192.0.2.{i}" for i in range(1, 7)), *(f"2001:db8::{i}" for i in range(1, 7))]
# per IP: absent, ours as a host route, foreign host route, foreign with another length
INITIAL = st.sampled_from(["absent", "owned", "foreign", "foreign-wide"])


def _host(ip: str) -> str:
    return f"{ip}/{128 if ':' in ip else 32}"


@settings(max_examples=200, deadline=None)
@given(initial=st.lists(INITIAL, min_size=len(POOL), max_size=len(POOL)),
       wanted=st.sets(st.sampled_from(POOL)))
def test_one_pass_converges_without_touching_foreign(initial: list[str], wanted: set[str]) -> None:
    start: set[Address] = set()
    for ip, state in zip(POOL, initial, strict=True):
        if state == "absent":
            continue
        prefix = _host(ip) if state != "foreign-wide" else f"{ip}/{64 if ':' in ip else 24}"
        iface = I(prefix)
        start.add(Address(iface.ip, iface.network.prefixlen, owned=state == "owned"))
    fake = FakeLoopback(addresses=start)
    foreign_before = fake.observe().foreign
    desired = {I(_host(ip)) for ip in wanted}

    actions = diff_addresses(desired, fake.observe())
    fake.apply(actions)
    after = fake.observe()

    assert fake.writes == len(actions)
    assert after.foreign == foreign_before
    blocked = {I(_host(str(a.ip))) for a in conflicts(desired, after)}
    assert after.owned == desired - blocked
    assert diff_addresses(desired, after) == []
