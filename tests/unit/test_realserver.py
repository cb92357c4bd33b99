"""The real-server role: what a DR/TUN backend needs (core.realserver), the order the planner
puts it in, and the config rules. The world is the in-memory twins; a small executor runs
the plan the way the controller does (in order, stop at the first failure, observe again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anycastd.actuators.memory import MemoryLoopback
from anycastd.actuators.realserver import MemoryRealServer
from anycastd.cli import main
from anycastd.config import Config, ConfigError, loads
from anycastd.core.desired import compute
from anycastd.core.health import ServiceState
from anycastd.core.plan import ControllerState, LoopbackStep, NodeStep, Observed, Step, plan
from anycastd.core.realserver import LinkUp, NodeObserved, SetSysctl, Setting, diff, needs
from anycastd.errors import ActuatorError, PermanentError
from tests.unit.configs import BGP_HEAD

CHECK = 'checks = [{type = "tcp", host = "127.0.0.1", port = 80}]'


def backend(forwarding: str = "dr", tunnel: str | None = None, *,
            prefixes: str = '"192.0.2.10/32"', head: str = "", extra: str = "") -> Config:
    role = f'forwarding = "{forwarding}"' + (f'\ntunnel = "{tunnel}"' if tunnel else "")
    return loads(f"""{head}
[services.web]
prefixes = [{prefixes}]
{CHECK}
{extra}
[services.web.real_server]
{role}
""")


def config_issues(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return {i.key: i.message for i in info.value.issues}


# --- what the node needs -----------------------------------------------------------------------


def test_direct_routing_needs_arp_ignore_and_arp_announce_and_no_device() -> None:
    got = needs(backend("dr"))
    assert got.links == ()
    assert got.sysctls == (
        Setting("net.ipv4.conf.all.arp_announce", "2"),
        Setting("net.ipv4.conf.all.arp_ignore", "1", frozenset({"1", "2"})),
    )


def test_ipip_tunnel_needs_tunl0_up_without_strict_reverse_path_filtering() -> None:
    got = needs(backend("tunnel", "ipip"))
    assert got.links == (("tunl0", "ipip"),)
    assert {s.key: s.value for s in got.sysctls} == {
        "net.ipv4.conf.all.arp_announce": "2",
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv4.conf.all.rp_filter": "2",
        "net.ipv4.conf.tunl0.rp_filter": "0",
    }


def test_gre_and_ipv6_pick_their_own_decapsulating_devices() -> None:
    assert needs(backend("tunnel", "gre")).links == (("gre0", "ip_gre"),)
    v6 = needs(backend("tunnel", "ipip", prefixes='"2001:db8::10/128"'))
    assert v6.links == (("ip6tnl0", "ip6_tunnel"),)
    assert v6.sysctls == ()  # no ARP, no rp_filter in IPv6


def test_a_disabled_backend_or_a_plain_service_needs_nothing() -> None:
    assert not needs(backend("dr", extra="disabled = true"))
    assert not needs(loads(f'[services.web]\nprefixes = ["192.0.2.10/32"]\n{CHECK}\n'))


def test_diff_takes_devices_up_before_sysctls_and_keeps_acceptable_values() -> None:
    wanted = needs(backend("tunnel", "ipip"))
    observed = NodeObserved(
        sysctls={
            "net.ipv4.conf.all.arp_announce": "2",
            "net.ipv4.conf.all.arp_ignore": "2",  # stricter than 1: fine as it is
            "net.ipv4.conf.all.rp_filter": "1",  # strict: drops decapsulated packets
            "net.ipv4.conf.tunl0.rp_filter": None,  # the device is not there yet
        },
        links={"tunl0": False},
    )
    assert diff(wanted, observed) == (
        LinkUp("tunl0", "ipip"),
        SetSysctl("net.ipv4.conf.all.rp_filter", "2"),
        SetSysctl("net.ipv4.conf.tunl0.rp_filter", "0"),
    )
    done = NodeObserved(
        sysctls={**observed.sysctls, "net.ipv4.conf.all.rp_filter": "0",
                 "net.ipv4.conf.tunl0.rp_filter": "0"},
        links={"tunl0": True},
    )
    assert diff(wanted, done) == ()


# --- the order of the planner -----------------------------------------------------------------


def run_pass(cfg: Config, lo: MemoryLoopback, node: MemoryRealServer,
             state: ServiceState = ServiceState.UP) -> tuple[list[Step], ActuatorError | None]:
    """One pass as the controller runs it: the steps run, and the error that stopped it."""
    desired = compute(cfg, {"web": state})
    result = plan_for(cfg, lo, node, state)
    ran: list[Step] = []
    try:
        for step in result:
            ran.append(step)
            if isinstance(step, NodeStep):
                node.apply(step.actions)
            elif isinstance(step, LoopbackStep):
                lo.apply(step.actions)
    except ActuatorError as exc:
        return ran, exc
    assert desired.routes == frozenset()  # a backend never announces its VIPs
    return ran, None


def plan_for(cfg: Config, lo: MemoryLoopback, node: MemoryRealServer,
             state: ServiceState = ServiceState.UP) -> tuple[Step, ...]:
    desired = compute(cfg, {"web": state})
    observed = Observed(loopback=lo.observe(), node=node.observe(desired.node))
    return plan(ControllerState(), desired, observed, 0.0).steps


def test_the_vip_goes_on_only_once_a_pass_has_seen_the_node_set_up() -> None:
    cfg = backend("tunnel", "ipip", head=BGP_HEAD)
    lo, node = MemoryLoopback(), MemoryRealServer.with_defaults(["tunl0"])
    ran, error = run_pass(cfg, lo, node)
    assert error is None
    assert [type(s).__name__ for s in ran] == ["NodeStep"]
    assert not lo.observe().owned  # not in the pass that wrote the settings
    assert node.links == {"tunl0": True}
    assert node.sysctls["net.ipv4.conf.all.arp_ignore"] == "1"
    ran, error = run_pass(cfg, lo, node)
    assert [type(s).__name__ for s in ran] == ["LoopbackStep"]
    assert [str(a) for a in lo.observe().owned] == ["192.0.2.10/32"]
    # converged: the next pass plans nothing (no churn)
    assert plan_for(cfg, lo, node) == ()


def test_a_missing_tunnel_device_keeps_the_vip_off_and_names_the_module() -> None:
    cfg = backend("tunnel", "ipip")
    lo, node = MemoryLoopback(), MemoryRealServer.with_defaults([])  # ipip not loaded
    for _ in range(3):
        ran, error = run_pass(cfg, lo, node)
        assert isinstance(error, PermanentError)
        assert "tunl0" in error.message
        assert "modprobe ipip" in error.message
        assert not lo.observe().owned
        assert [type(s).__name__ for s in ran] == ["NodeStep"]


def test_a_backend_that_cannot_be_set_up_holds_back_no_other_service() -> None:
    cfg = backend("tunnel", "ipip", extra="", head=f"""
[services.dns]
prefixes = ["198.51.100.53/32"]
{CHECK}
""")
    lo, node = MemoryLoopback(), MemoryRealServer.with_defaults([])  # ipip not loaded
    desired = compute(cfg, {"web": ServiceState.UP, "dns": ServiceState.UP})
    observed = Observed(loopback=lo.observe(), node=node.observe(desired.node))
    steps = plan(ControllerState(), desired, observed, 0.0).steps
    assert [type(s).__name__ for s in steps] == ["LoopbackStep", "NodeStep"]
    assert isinstance(steps[0], LoopbackStep)
    lo.apply(steps[0].actions)
    assert [str(a) for a in lo.observe().owned] == ["198.51.100.53/32"]


def test_a_sick_backend_removes_its_vip_and_leaves_the_node_settings() -> None:
    cfg = backend("dr")
    lo, node = MemoryLoopback(), MemoryRealServer.with_defaults()
    run_pass(cfg, lo, node)
    run_pass(cfg, lo, node)
    assert lo.observe().owned
    _ran, error = run_pass(cfg, lo, node, ServiceState.DOWN)
    assert error is None
    assert not lo.observe().owned
    assert node.sysctls["net.ipv4.conf.all.arp_announce"] == "2"  # never undone


def test_drift_in_a_sysctl_is_repaired_by_the_next_pass() -> None:
    cfg = backend("dr")
    lo, node = MemoryLoopback(), MemoryRealServer.with_defaults()
    run_pass(cfg, lo, node)
    run_pass(cfg, lo, node)
    node.sysctls["net.ipv4.conf.all.arp_ignore"] = "0"  # an operator, a sysctl.d reload
    steps = plan_for(cfg, lo, node)
    # repaired; the VIP already on lo stays (taking it off would cut its connections)
    assert steps == (NodeStep((SetSysctl("net.ipv4.conf.all.arp_ignore", "1"),)),)


# --- config rules ------------------------------------------------------------------------------


def test_tunnel_backend_without_a_tunnel_type_is_a_config_error() -> None:
    found = config_issues(f'[services.web]\nprefixes = ["192.0.2.10/32"]\n{CHECK}\n'
                          '[services.web.real_server]\nforwarding = "tunnel"\n')
    assert found == {"services.web.real_server.tunnel":
                     'required when forwarding = "tunnel": the encapsulation the director uses'
                     ' ("ipip", IPVS\'s default, or "gre")'}


def test_backend_rules_name_their_keys() -> None:
    found = config_issues(f"""
[services.web]
prefixes = ["192.0.2.0/24"]
{CHECK}
[services.web.ospf]
[services.web.ipvs]
port = 80
real_servers = [{{address = "10.0.0.1"}}]
[services.web.real_server]
forwarding = "dr"
tunnel = "ipip"
""")
    assert set(found) >= {
        "services.web.real_server", "services.web.ospf", "services.web.real_server.tunnel",
        "services.web.prefixes[0]",
    }
    assert "not both" in found["services.web.real_server"]


def test_a_port_on_a_dr_real_server_of_a_fwmark_service_is_a_config_error() -> None:
    found = config_issues(f"""
[services.web]
prefixes = ["192.0.2.10/32"]
{CHECK}
[services.web.ipvs]
protocol = "fwmark"
fwmark = 5
real_servers = [{{ address = "10.0.0.1", forwarding = "dr", port = 8080 }},
                {{ address = "10.0.0.2", forwarding = "nat", port = 8080 }}]
""")
    assert list(found) == ["services.web.ipvs.real_servers[0].port"]


def test_a_vip_is_a_director_s_or_a_backend_s_on_one_node_not_both() -> None:
    found = config_issues(f"""
[services.lb]
prefixes = ["192.0.2.10/32"]
shared_prefixes = true
{CHECK}
[services.lb.ipvs]
port = 80
real_servers = [{{ address = "10.0.0.1", forwarding = "dr" }}]
[services.web]
prefixes = ["192.0.2.10/32"]
shared_prefixes = true
{CHECK}
[services.web.real_server]
forwarding = "dr"
""")
    assert list(found) == ["services.web.prefixes[0]"]
    assert 'IPVS service "lb"' in found["services.web.prefixes[0]"]


EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "lvs"


def test_every_shipped_lvs_example_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.toml"))
    assert names == ["backend-dr.toml", "backend-tun.toml", "director-dr.toml",
                     "director-nat.toml", "director-tun.toml"]
    for name in names:
        assert main(["check-config", "-c", str(EXAMPLES / name)]) == 0, name
        out = capsys.readouterr().out
        method = name.removesuffix(".toml").split("-")[1]
        if name.startswith("backend"):
            assert f"real server for a {'tunnel (ipip)' if method == 'tun' else 'dr'}" in out
        else:
            assert "ipvs tcp/80" in out
            assert {"tun": "tunnel"}.get(method, method) in out


def test_check_config_rejects_the_tunnel_example_without_its_tunnel_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "backend.toml"
    broken.write_text((EXAMPLES / "backend-tun.toml").read_text().replace('tunnel = "ipip"', ""))
    assert main(["check-config", "-c", str(broken)]) == 78
    err = capsys.readouterr().err
    assert f"{broken}" in err
    assert "services.web.real_server.tunnel" in err


# --- the daemon, dry run (plans and logs; the node is not touched) ----------------------------

DAEMON = """
[global]
log_format = "logfmt"
state_dir = "{tmp}"
runtime_dir = "{tmp}"
[api]
enabled = false
[metrics]
enabled = false
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "100ms"
rise = 1
[[services.web.checks]]
type = "file"
path = "{tmp}"
"""
ROLE = """
[services.web.real_server]
forwarding = "dr"
[services.web.policy_routing]
table = 100
routes = [{ to = "0.0.0.0/0", via = "10.0.0.254" }]
"""


def _daemon(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "anycastd", "run", "--dry-run", "-c", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _until(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen in:\n{''.join(seen)}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def test_dry_run_backend_plans_the_node_and_its_rules_then_the_vip(tmp_path: Path) -> None:
    cfg = tmp_path / "anycastd.toml"
    cfg.write_text(DAEMON.format(tmp=tmp_path) + ROLE)
    proc = _daemon(cfg)
    text = "".join(_until(proc, 'event=loopback action="add 192.0.2.10/32"'))
    assert 'event=realserver action="sysctl net.ipv4.conf.all.arp_ignore=1"' in text
    assert 'event=policy_routing action="add rule 1000: from 192.0.2.10/32 lookup 100"' in text
    assert proc.returncode is None
    assert "Traceback" not in _stop(proc)


def test_reload_adding_the_first_backend_service_needs_a_restart(tmp_path: Path) -> None:
    cfg = tmp_path / "anycastd.toml"
    cfg.write_text(DAEMON.format(tmp=tmp_path))
    proc = _daemon(cfg)
    _until(proc, "event=service_transition service=web old=down new=up")
    cfg.write_text(DAEMON.format(tmp=tmp_path) + ROLE)
    proc.send_signal(signal.SIGHUP)
    lines = _until(proc, "event=reload_rejected")
    assert "needs a restart" in lines[-1]
    assert "Traceback" not in _stop(proc)
