"""Real traffic through an anycastd-run IPVS director: NAT, direct routing, tunnelling.

One topology for the module (see ``lvs_lab``): a client, a router, a director running
``anycastd run`` with one service per forwarding method, and two real servers, each
answering with its own name and running ``anycastd run`` with the real-server role for the
DR and TUN VIPs (VIP on lo, ARP sysctls, tunl0, a policy-routing table for the replies).
Asserted per method: the round-robin scheduler spreads new connections evenly over both real
servers (TUN: through the real servers' tunl0); a real server whose check fails (its health
listener closes) gets weight 0 and no new connections while a connection it already has
keeps working (drain); a service whose own check fails loses its VIP on the director and
connections to it fail. Then the real-server role: its kernel state, a sick backend dropping
its VIPs (the director's connections sent there fail), drift repaired, foreign state kept.
The numbers measured on the way (connections per second, time from a check failing to no
new connections) are printed and written to ``$ANYCASTD_OUT/lvs-numbers.json``
(bench/README_lvs.md records them); the daemons' logs are copied there too.

Started once for the module: three daemons and ``ip -batch`` per namespace; ipip and bridge
are loaded here (uml_modprobe), not by the guest's init.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import uml_modprobe
from tests.kernel.lvs_lab import (
    ROUTER_LAN,
    RS_ADDR,
    Lab,
    LineServer,
    ask,
    batch,
    converse,
    hexaddr,
    ipvs_weights,
    lab,
    sh,
    wait_for,
)

pytestmark = pytest.mark.kernel

SERVICE_PORT = 8080
HEALTH_PORT = 8081
#: method -> (VIP, virtual port). NAT also shows a port change (80 -> 8080).
METHODS: dict[str, tuple[str, int]] = {
    "nat": ("192.0.2.1", 80),
    "dr": ("192.0.2.2", SERVICE_PORT),
    "tunnel": ("192.0.2.3", SERVICE_PORT),
}
NUMBERS: dict[str, Any] = {}


def _director_config(tmp: Path) -> str:
    parts = [f"""
        [global]
        log_format = "logfmt"
        state_dir = "{tmp}/state"
        runtime_dir = "{tmp}/run"
        manage_sysctls = true
        reconcile_interval = "2s"
        [api]
        enabled = false
        [metrics]
        enabled = false
    """]
    for method, (vip, port) in METHODS.items():
        parts.append(f"""
        [services.{method}]
        prefixes = ["{vip}/32"]
        interval = "500ms"
        timeout = "450ms"
        rise = 1
        fall = 2
        shutdown = "withdraw"
        drain_time = "0s"
        [[services.{method}.checks]]
        type = "file"
        path = "{tmp}/{method}.up"
        [services.{method}.ipvs]
        protocol = "tcp"
        port = {port}
        scheduler = "rr"
        """)
        for address in RS_ADDR.values():
            parts.append(f"""
        [[services.{method}.ipvs.real_servers]]
        address = "{address}"
        port = {SERVICE_PORT}
        forwarding = "{method}"
        [[services.{method}.ipvs.real_servers.checks]]
        type = "tcp"
        host = "{address}"
        port = {HEALTH_PORT}
        interval = "150ms"
        timeout = "140ms"
            """)
    return textwrap.dedent("".join(parts))


def _record(method: str, key: str, value: object) -> None:
    NUMBERS.setdefault(method, {})[key] = value
    out = os.environ.get("ANYCASTD_OUT")
    if out:
        Path(out, "lvs-numbers.json").write_text(json.dumps(NUMBERS, indent=1) + "\n")


class Setup:
    def __init__(self, lab: Lab, servers: LineServer, tmp: Path, log: Path) -> None:
        self.lab = lab
        self.servers = servers
        self.tmp = tmp
        self.log = log
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def lo(self, role: str) -> str:
        return sh("ip", "-n", self.lab.ns(role), "addr", "show", "dev", "lo")

    def weights(self, method: str) -> dict[str, int]:
        vip, port = METHODS[method]
        table = ipvs_weights(self.lab["director"])
        return {
            role: table.get(f"TCP {hexaddr(vip, port)}", {}).get(
                hexaddr(addr, SERVICE_PORT), -1)
            for role, addr in RS_ADDR.items()
        }

    def wait_all_weights(self) -> None:
        for method in METHODS:
            wait_for(f"{method}: both real servers at weight 1",
                     lambda m=method: self.weights(m) == {"rs1": 1, "rs2": 1})  # type: ignore[misc]

    def ask(self, method: str, timeout: float = 5.0) -> str:
        vip, port = METHODS[method]
        return ask(self.lab["client"], vip, port, timeout=timeout)

    def open_health(self, role: str) -> None:
        self.servers.listen(self.lab[role], role, RS_ADDR[role], HEALTH_PORT)

    def close_health(self, role: str) -> None:
        self.servers.close_listener(self.lab[role], RS_ADDR[role], HEALTH_PORT)


def _backend_config(tmp: Path, role: str) -> str:
    """anycastd's real-server role on a backend: the DR and TUN VIPs, gated on a file, with
    a routing table of their own for the replies."""
    parts = [f"""
        [global]
        log_format = "logfmt"
        state_dir = "{tmp}/{role}-state"
        runtime_dir = "{tmp}/{role}-run"
        reconcile_interval = "1s"
        [api]
        enabled = false
        [metrics]
        enabled = false
    """]
    for method, tunnel in (("dr", ""), ("tunnel", 'tunnel = "ipip"')):
        parts.append(f"""
        [services.{method}]
        prefixes = ["{METHODS[method][0]}/32"]
        interval = "500ms"
        timeout = "450ms"
        rise = 1
        fall = 2
        shutdown = "withdraw"
        [[services.{method}.checks]]
        type = "file"
        path = "{tmp}/{role}.ok"
        [services.{method}.real_server]
        forwarding = "{method}"
        {tunnel}
        # replies from the VIP go straight to the router; the node's own (NAT) replies
        # keep the default route through the director
        [services.{method}.policy_routing]
        table = 100
        routes = [{{ to = "0.0.0.0/0", via = "{ROUTER_LAN}" }}]
        """)
    return textwrap.dedent("".join(parts))


def _start(lab: Lab, role: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    anycastd = str(Path(sys.executable).parent / "anycastd")
    with log.open("w") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(role), anycastd, "run", "-c", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    moddir = f"/usr/lib/uml/modules/{os.uname().release}"
    assert uml_modprobe.main([moddir, "ipip", "bridge"]) == 0, "cannot load ipip, bridge"
    tmp = tmp_path_factory.mktemp("lvs")
    for method in METHODS:
        (tmp / f"{method}.up").touch()
    servers = LineServer()
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    with lab("lvs") as the_lab:
        s = Setup(the_lab, servers, tmp, tmp / "director.log")
        try:
            for role in RS_ADDR:
                servers.listen(the_lab[role], role, "0.0.0.0", SERVICE_PORT)
                s.open_health(role)
                (tmp / f"{role}.ok").touch()
                cfg = tmp / f"{role}.toml"
                cfg.write_text(_backend_config(tmp, role))
                daemons[role] = _start(the_lab, role, cfg, tmp / f"{role}.log")
            cfg = tmp / "director.toml"
            cfg.write_text(_director_config(tmp))
            daemons["director"] = _start(the_lab, "director", cfg, tmp / "director.log")
            for role in RS_ADDR:
                wait_for(f"{role}: the DR and TUN VIPs on lo",
                         lambda r=role: daemons[r].poll() is None  # type: ignore[misc]
                         and all(METHODS[m][0] in s.lo(r) for m in ("dr", "tunnel")),
                         timeout=60)
            for method in METHODS:
                wait_for(f"{method}: both real servers at weight 1",
                         lambda m=method: daemons["director"].poll() is None  # type: ignore[misc]
                         and s.weights(m) == {"rs1": 1, "rs2": 1}, timeout=60)
            s.daemons = daemons
            yield s
        finally:
            for proc in daemons.values():
                _stop(proc)
            servers.close()
            out = os.environ.get("ANYCASTD_OUT")
            for name in ("director", *RS_ADDR):
                text = (tmp / f"{name}.log").read_text()
                if out:  # kept with the junit report, for a failure's post-mortem
                    Path(out, f"lvs-{name}.log").write_text(text)
                assert "Traceback" not in text, text


def test_baseline_connections_straight_to_a_real_server(setup: Setup) -> None:
    """No IPVS on the way: what the client and the guest manage by themselves (the
    connections/s through the director below are only meaningful next to this)."""
    n = 200
    start = time.monotonic()
    seen = Counter(ask(setup.lab["client"], RS_ADDR["rs1"], SERVICE_PORT) for _ in range(n))
    elapsed = time.monotonic() - start
    assert seen == Counter({"rs1": n})
    _record("direct", "connections_per_second", round(n / elapsed, 1))


@pytest.mark.parametrize("method", list(METHODS))
def test_new_connections_reach_both_real_servers_round_robin(setup: Setup, method: str) -> None:
    wait_for("the VIP answers", lambda: _answers(setup, method))
    n = 200
    decapsulated = {role: _tunl0_rx(setup, role) for role in RS_ADDR}
    start = time.monotonic()
    seen = Counter(setup.ask(method) for _ in range(n))
    elapsed = time.monotonic() - start
    assert set(seen) == {"rs1", "rs2"}, seen
    assert abs(seen["rs1"] - seen["rs2"]) <= 1, seen
    for role in RS_ADDR:
        # TUN: every packet the client sent reached the real server through its tunl0
        # (at least SYN, data and FIN per connection); the other methods never use it
        got = _tunl0_rx(setup, role) - decapsulated[role]
        assert got >= 3 * seen[role] if method == "tunnel" else got == 0, (role, got)
    _record(method, "connections", dict(seen))
    _record(method, "connections_per_second", round(n / elapsed, 1))
    print(f"{method}: {dict(seen)} in {elapsed:.2f} s = {n / elapsed:.0f} connections/s")


@pytest.mark.parametrize("method", list(METHODS))
def test_failed_real_server_drains_gets_no_new_connections(setup: Setup, method: str) -> None:
    wait_for("the VIP answers", lambda: _answers(setup, method))
    setup.wait_all_weights()
    vip, port = METHODS[method]
    established = setup.lab["client"].socket()
    established.settimeout(5)
    established.connect((vip, port))
    victim = converse(established)
    other = "rs2" if victim == "rs1" else "rs1"
    try:
        failed_at = time.monotonic()
        setup.close_health(victim)
        # new connections, as fast as they come, until the victim's weight is 0 and it
        # has had no new connection for a while
        last_victim = failed_at
        weight0_at: float | None = None
        while True:
            now = time.monotonic()
            if setup.ask(method) == victim:
                last_victim = time.monotonic()
            if weight0_at is None and setup.weights(method)[victim] == 0:
                weight0_at = time.monotonic()
            if weight0_at is not None and now - max(last_victim, weight0_at) > 0.5:
                break
            assert now - failed_at < 30, "the failed real server kept its weight"
            time.sleep(0.005)  # leave the (single) guest CPU to the daemons
        answers = Counter(setup.ask(method) for _ in range(20))
        assert answers == Counter({other: 20}), answers
        # the connection it already had still works (weight 0 drains, it does not cut)
        assert converse(established) == victim
        assert setup.weights(method)[victim] == 0
        _record(method, "check_fail_to_weight0_ms", round((weight0_at - failed_at) * 1000, 1))
        _record(method, "check_fail_to_last_new_connection_ms",
                round((last_victim - failed_at) * 1000, 1))
        print(f"{method}: check failed -> weight 0 after {(weight0_at - failed_at) * 1000:.0f}"
              f" ms; last new connection {(last_victim - failed_at) * 1000:.0f} ms after")
    finally:
        established.close()
        setup.open_health(victim)
    # the health listener serves every method's check: wait for all of them
    setup.wait_all_weights()


@pytest.mark.parametrize("method", list(METHODS))
def test_withdrawn_vip_stops_traffic(setup: Setup, method: str) -> None:
    wait_for("the VIP answers", lambda: _answers(setup, method))
    flag = setup.tmp / f"{method}.up"
    flag.unlink()
    try:
        wait_for("the VIP gone from the director",
                 lambda: METHODS[method][0] not in _director_lo(setup))
        try:
            answer = setup.ask(method, timeout=2.0)
        except OSError as exc:
            _record(method, "after_withdraw", f"{type(exc).__name__}: {exc}")
        else:
            pytest.fail(f"{answer} answered through a withdrawn VIP")
    finally:
        flag.touch()
    wait_for("the VIP answers again", lambda: _answers(setup, method))


def _answers(setup: Setup, method: str) -> bool:
    return _answer(setup, method) in ("rs1", "rs2")


def _answer(setup: Setup, method: str) -> str | None:
    try:
        return setup.ask(method, timeout=1.0)
    except OSError:
        return None


def _tunl0_rx(setup: Setup, role: str) -> int:
    for line in setup.lab[role].read("/proc/thread-self/net/dev").splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "tunl0":
            return int(counters.split()[1])  # received packets
    raise AssertionError(f"{role} has no tunl0")


def _director_lo(setup: Setup) -> str:
    return setup.lo("director")


# --- the real-server role (anycastd on the backends) -------------------------------------------


def _flags(setup: Setup, role: str, device: str) -> set[str]:
    line = sh("ip", "-n", setup.lab.ns(role), "-o", "link", "show", "dev", device)
    return set(line.split("<", 1)[1].split(">", 1)[0].split(","))


def _sysctl(setup: Setup, role: str, key: str) -> str:
    return setup.lab[role].read("/proc/sys/" + key.replace(".", "/")).strip()


def test_backend_role_set_arp_and_tunnel_state(setup: Setup) -> None:
    for role in RS_ADDR:
        assert _sysctl(setup, role, "net.ipv4.conf.all.arp_ignore") == "1"
        assert _sysctl(setup, role, "net.ipv4.conf.all.arp_announce") == "2"
        assert _sysctl(setup, role, "net.ipv4.conf.tunl0.rp_filter") == "0"
        assert _sysctl(setup, role, "net.ipv4.conf.all.rp_filter") in ("0", "2")
        assert "UP" in _flags(setup, role, "tunl0")
        rules = sh("ip", "-n", setup.lab.ns(role), "rule", "show")
        for method in ("dr", "tunnel"):
            assert f"from {METHODS[method][0]} lookup 100 proto 172" in rules


def test_sick_backend_removes_its_vip_so_even_its_director_cannot_reach_it(setup: Setup) -> None:
    setup.wait_all_weights()
    ok = setup.tmp / "rs1.ok"
    ok.unlink()
    try:
        for method in ("dr", "tunnel"):
            wait_for(f"rs1 without the {method} VIP",
                     lambda m=method: METHODS[m][0] not in setup.lo("rs1"))  # type: ignore[misc]
        # the director still sends rs1 its share (its check of rs1 passes): those
        # connections find no VIP there and fail; rs2's still work
        assert setup.weights("dr") == {"rs1": 1, "rs2": 1}
        for method in ("dr", "tunnel"):
            answers, failures = [], 0
            for _ in range(2):
                try:
                    answers.append(setup.ask(method, timeout=1.0))
                except OSError:
                    failures += 1
            assert (answers, failures) == (["rs2"], 1), method
    finally:
        ok.touch()
    for method in ("dr", "tunnel"):
        wait_for(f"rs1 with the {method} VIP again",
                 lambda m=method: METHODS[m][0] in setup.lo("rs1"))  # type: ignore[misc]


def test_backend_role_repairs_drift_and_leaves_foreign_state(setup: Setup) -> None:
    rs1 = setup.lab["rs1"]
    batch(setup.lab.ns("rs1"), ["addr add 192.0.2.99/32 dev lo", "link set tunl0 down"])
    rs1.sysctl("net.ipv4.conf.all.arp_ignore", "0")
    try:
        wait_for("arp_ignore and tunl0 repaired",
                 lambda: _sysctl(setup, "rs1", "net.ipv4.conf.all.arp_ignore") == "1"
                 and "UP" in _flags(setup, "rs1", "tunl0"))
        assert "192.0.2.99/32" in setup.lo("rs1")  # the operator's address stays
        wait_for("TUN traffic through rs1 again",
                 lambda: "rs1" in {_answer(setup, "tunnel") for _ in range(2)})
    finally:
        batch(setup.lab.ns("rs1"), ["addr del 192.0.2.99/32 dev lo"])
