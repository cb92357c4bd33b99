"""Policy routing per service against the real kernel, in a namespace: the actuator's
ownership (protocol 172 rules and routes; an operator's in the same table untouched), the
routing it produces (``ip route get ... from VIP``), and the daemon adding the rules while
the service is healthy and removing them when it fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.actuators.policyroute import NetlinkPolicyRoute
from anycastd.config import loads
from anycastd.core.policyroute import PolicyObserved, PolicyRule, TableRoute, diff, from_config
from anycastd.lab.netns import Netns, netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

SERVICE = """
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "100ms"
timeout = "90ms"
rise = 1
fall = 1
shutdown = "withdraw"
checks = [{{ type = "file", path = "{flag}" }}]
[services.web.policy_routing]
table = 100
fwmark = 16
routes = [{{ to = "0.0.0.0/0", via = "10.9.0.254" }}, {{ to = "198.51.100.0/24", dev = "d0" }}]
"""
OURS_RULES = {
    PolicyRule(4, 1000, 100, "192.0.2.10/32"),
    PolicyRule(4, 1000, 100, "", 16),
}
OURS_ROUTES = {
    TableRoute(4, 100, "0.0.0.0/0", "10.9.0.254", "d0"),
    TableRoute(4, 100, "198.51.100.0/24", "", "d0"),
}


@pytest.fixture
def ns() -> Iterator[Netns]:
    with netns("prt") as created:
        for argv in (
            ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            ["ip", "addr", "add", "10.9.0.1/24", "dev", "d0"],
            ["ip", "link", "set", "d0", "up"],
            ["ip", "link", "set", "d1", "up"],
        ):
            created.exec(argv)
        yield created


def rules(ns: Netns) -> str:
    return ns.exec(["ip", "-4", "rule", "show"])


def table(ns: Netns) -> str:
    return ns.exec(["ip", "-4", "route", "show", "table", "100"])


def test_owned_rules_and_routes_route_the_vip_and_leave_foreign_ones_alone(ns: Netns) -> None:
    ns.exec(["ip", "addr", "add", "192.0.2.10/32", "dev", "lo"])
    # an operator's rule and route, in the very table anycastd uses
    ns.exec(["ip", "rule", "add", "from", "203.0.113.1", "table", "100", "pref", "1000"])
    ns.exec(["ip", "route", "add", "203.0.113.0/24", "dev", "d0", "table", "100"])
    policies = from_config(loads(SERVICE.format(flag="/nonexistent")))
    act = NetlinkPolicyRoute(netns=ns.name)
    try:
        assert act.observe({100}) == PolicyObserved()  # the operator's are not ours
        act.apply(diff(policies, {"web"}, act.observe({100})).adds)
        seen = act.observe({100})
        assert seen == PolicyObserved(frozenset(OURS_RULES), frozenset(OURS_ROUTES))
        assert diff(policies, {"web"}, seen).adds == ()  # converged
        assert "from 192.0.2.10 lookup 100 proto 172" in rules(ns)
        # the point of it all: replies from the VIP take the service's default route
        got = ns.exec(["ip", "route", "get", "198.18.0.1", "from", "192.0.2.10"])
        assert "via 10.9.0.254 dev d0 table 100" in got
        # drift: our rule deleted by hand comes back with the next diff
        ns.exec(["ip", "rule", "del", "fwmark", "16", "table", "100", "pref", "1000"])
        missing = diff(policies, {"web"}, act.observe({100})).adds
        assert [str(a) for a in missing] == ["add rule 1000: from all fwmark 0x10 lookup 100"]
        act.apply(missing)
        # the service goes: ours go, the operator's stay
        act.apply(diff(policies, set(), act.observe({100})).removes)
        assert act.observe({100}) == PolicyObserved()
        assert "from 203.0.113.1 lookup 100" in rules(ns)
        assert table(ns).strip() == "203.0.113.0/24 dev d0 scope link"
    finally:
        act.close()


def test_daemon_adds_the_rules_while_the_service_is_up_and_removes_them_when_it_fails(
    ns: Netns, tmp_path: Path
) -> None:
    flag = tmp_path / "web.up"
    flag.touch()
    cfg = tmp_path / "anycastd.toml"
    cfg.write_text(textwrap.dedent(f"""
        [global]
        log_format = "logfmt"
        state_dir = "{tmp_path}/state"
        runtime_dir = "{tmp_path}/run"
        reconcile_interval = "1s"
        [api]
        enabled = false
        [metrics]
        enabled = false
    """) + SERVICE.format(flag=flag))
    log = tmp_path / "anycastd.log"
    with log.open("w") as out:
        daemon = ns.popen([str(Path(sys.executable).parent / "anycastd"), "run", "-c", str(cfg)],
                          stdout=out, stderr=subprocess.STDOUT)

    def wait(what: str, condition: object) -> None:
        deadline = time.monotonic() + 30
        while not condition():  # type: ignore[operator]
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()}"
            time.sleep(0.05)

    wait("the rules", lambda: "from 192.0.2.10 lookup 100 proto 172" in rules(ns))
    assert "192.0.2.10" in ns.exec(["ip", "addr", "show", "dev", "lo"])
    assert "default via 10.9.0.254 dev d0 proto 172" in table(ns)
    flag.unlink()
    wait("the rules gone", lambda: "proto 172" not in rules(ns) and not table(ns).strip())
    assert "192.0.2.10" not in ns.exec(["ip", "addr", "show", "dev", "lo"])
    flag.touch()
    wait("the rules back", lambda: "fwmark 0x10 lookup 100 proto 172" in rules(ns))
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0, log.read_text()
    assert "proto 172" not in rules(ns)  # shutdown = withdraw: gone with the service
    assert "Traceback" not in log.read_text()
