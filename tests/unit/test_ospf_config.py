"""OSPF config rules: OSPFv2 publishes IPv4 only, so an IPv6 prefix in a service with
[ospf] is a config error (file and key), not a route the planner would plan forever."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from anycastd.actuators.frr import OspfSettings
from anycastd.actuators.memory import MemoryOspf
from anycastd.bgp.protocol import NullSpeaker
from anycastd.config import loads
from anycastd.core.health import ServiceState
from anycastd.engine.controller import Controller
from anycastd.observe.metrics import Metrics
from anycastd.testing.clock import FakeClock
from anycastd.testing.loopback import FakeLoopback
from tests.unit.test_config import DNS, issues, keyed

V6 = DNS.replace('prefixes = ["192.0.2.53/32"]', 'prefixes = ["192.0.2.53/32", "2001:db8::53/128"]')


def test_an_ipv6_prefix_in_a_service_with_ospf_is_a_config_error(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, V6 + "[services.dns.ospf]\n"))
    assert found == {("anycastd.toml", "services.dns.prefixes[1]"): (
        "2001:db8::53/128 cannot be published over OSPF: anycastd publishes through ospfd "
        "(OSPFv2, IPv4 only); give this service IPv4 prefixes only, or publish it over BGP")}


def test_check_config_exits_78_on_it(tmp_path: Path) -> None:
    path = tmp_path / "anycastd.toml"
    path.write_text(V6 + "[services.dns.ospf]\n")
    proc = subprocess.run([sys.executable, "-m", "anycastd", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 78
    assert "services.dns.prefixes[1]" in proc.stderr
    assert "Traceback" not in proc.stderr


def _check_config(tmp_path: Path, vtysh: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "vtysh"
    script.write_text(f"#!/bin/sh\n{vtysh}\n")
    script.chmod(0o755)
    path = tmp_path / "anycastd.toml"
    path.write_text(f'[ospf]\nvtysh = "{script}"\ntimeout = "300ms"\n'
                    + DNS + "[services.dns.ospf]\n")
    return subprocess.run([sys.executable, "-m", "anycastd", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_config_exits_69_not_78_when_vtysh_does_not_answer(tmp_path: Path) -> None:
    # ExecStartPre=check-config with RestartPreventExitStatus=78: a slow vtysh is not an
    # invalid config, and must not stop the unit for good
    proc = _check_config(tmp_path, "exec sleep 30")
    assert proc.returncode == 69, proc.stderr
    assert proc.stderr == ("anycastd: ospf: vtysh did not answer within 0.3s: the render "
                           "could not be validated (try again; the config was not judged)\n")


def test_check_config_exits_78_when_vtysh_rejects_the_render(tmp_path: Path) -> None:
    proc = _check_config(tmp_path, 'echo "% Unknown command: route-map" >&2; exit 1')
    assert proc.returncode == 78, proc.stderr
    assert "vtysh rejected the rendered OSPF configuration" in proc.stderr
    assert "% Unknown command: route-map" in proc.stderr


def test_without_bgp_the_announced_gauge_follows_the_ospf_publication() -> None:
    # docs/configuration.md ([bgp]) and docs/metrics.md say so: on an OSPF node without
    # [bgp] the gauge is not "always 0"
    config = loads('[services.web]\nprefixes = ["192.0.2.80/32"]\n'
                   'checks = [{type = "tcp", host = "127.0.0.1", port = 80}]\n'
                   "[services.web.ospf]\n")
    metrics = Metrics()
    ctl = Controller(config, loopback=FakeLoopback(), ipvs=None, speaker=NullSpeaker(),
                     bgp_settings=None, states=lambda: {"web": ServiceState.UP},
                     real_servers_up=dict, clock=FakeClock(),
                     ospf=MemoryOspf(OspfSettings(metrics=(10, 100, 65535))), metrics=metrics)

    async def two_passes() -> None:
        await ctl.reconcile()
        await ctl.reconcile()  # the second pass observes what the first published

    asyncio.run(two_passes())
    assert metrics.registry.get_sample_value(
        "anycastd_prefix_announced", {"service": "web", "prefix": "192.0.2.80/32"}) == 1.0
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert "gauge stays 0, because anycastd announces nothing" not in text
    assert "zebra.vty" not in text


def test_the_frr_actuator_series_are_born_at_0() -> None:
    # increase() sees the first OSPF error only if the series exists before it
    metrics = Metrics()
    for kind in ("transient", "permanent"):
        assert metrics.registry.get_sample_value(
            "anycastd_actuator_errors_total", {"actuator": "frr", "kind": kind}) == 0.0
    assert metrics.registry.get_sample_value(
        "anycastd_actuator_writes_total", {"actuator": "frr"}) == 0.0
