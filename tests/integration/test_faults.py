"""The fault matrix (issue 13): faults injected into a real ``anycastd run`` with its managed
ExaBGP and a real FRR peer, in namespaces; measured from outside (see ``fault_support``).

One daemon serves the faults of the shared topology, in file order (each one leaves the
service up again); the misbehaving exec checks get a daemon of their own. With
``ANYCASTD_FAULTS_RECORD=docs/reliability.json`` each fault's numbers are recorded and
``scripts/render-reliability`` renders docs/reliability.md from them; long faults run only
with ``ANYCASTD_FAULTS_FULL=1``.

Services (checks every 200 ms, rise 2, fall 2, reconcile_interval 1 s):
``web`` 192.0.2.71/32 (a TCP listener, up), ``db`` 192.0.2.72/32 (no listener: down).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.controller_support import (
    API_PORT,
    EDGE_IP,
    PEER_IP,
    Anycastd,
    Peer,
    Service,
    Topo,
    lo_addresses,
    stop_process,
    topology,
    wait_for,
)
from tests.integration.fault_support import FAULTS, fault_run, full_run, pids_of, record

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

WEB = Service("web", "192.0.2.71/32", 8141, shutdown="keep")
DB = Service("db", "192.0.2.72/32", 8142, shutdown="keep")
UP = {WEB.prefix: True}


@dataclass
class Node:
    topo: Topo
    daemon: Anycastd
    conf: Path

    def exabgp_pid(self) -> int:
        pids: list[int] = wait_for(lambda: pids_of("bin/exabgp ", parent=self.daemon.pid),
                                   timeout=30, interval=0.01)
        return pids[0]

    def relay_pid(self, exabgp: int) -> int:
        pids: list[int] = wait_for(lambda: pids_of("relay", parent=exabgp), timeout=30,
                                   interval=0.01)
        return pids[0]

    def post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        """POST to the daemon's control socket (runtime_dir/api.sock; the TCP listener is
        read-only). A unix socket is a file: reachable from outside the edge namespace."""
        data = json.dumps(body).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: anycastd\r\nConnection: close\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                   ).encode() + data
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.topo.tmp / "run" / "api.sock"))
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:300]
        reply: dict[str, object] = json.loads(payload)
        return reply

    def up(self, timeout: float = 30.0) -> None:
        wait_for(lambda: self.topo.peer.has(WEB.prefix) and self.topo.has_address(WEB.prefix),
                 timeout=timeout)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with topology(tmp_path_factory.mktemp("faults")) as topo:
        topo.listener(WEB.port)
        conf = topo.write_config([WEB, DB])
        daemon = topo.anycastd(conf)
        n = Node(topo, daemon, conf)
        n.up(timeout=40)
        yield n


# -- BGP speaker faults -------------------------------------------------------------------


def test_relay_killed_5x(node: Node) -> None:
    exabgp = node.exabgp_pid()
    with fault_run(node.topo, node.daemon, "relay-killed-5x", [WEB.prefix]) as run:
        run.inject()
        for _ in range(5):
            relay = node.relay_pid(exabgp)
            os.kill(relay, signal.SIGKILL)
            wait_for(lambda r=relay: node.relay_pid(exabgp) != r, timeout=10, interval=0.01)
            time.sleep(1.0)
        node.daemon.wait_event("relay_connected")
        row = run.settle(UP, UP)
    assert node.exabgp_pid() == exabgp, "ExaBGP kept running"
    assert row["updates"] == 0, row
    assert all(WEB.prefix in s.prefixes for s in run.sampler.samples)


def test_exabgp_sigkill(node: Node) -> None:
    exabgp = node.exabgp_pid()
    with fault_run(node.topo, node.daemon, "exabgp-sigkill", [WEB.prefix]) as run:
        run.inject()
        os.kill(exabgp, signal.SIGKILL)
        row = run.settle(UP, UP)
    assert node.exabgp_pid() != exabgp
    assert row["announced_without_address_ms"] == 0, row


def test_relay_socket_removed(node: Node) -> None:
    sock = node.topo.tmp / "run" / "exabgp.sock"
    exabgp = node.exabgp_pid()
    with fault_run(node.topo, node.daemon, "relay-socket-removed", [WEB.prefix]) as run:
        run.inject()
        sock.unlink()
        line = node.daemon.wait_event("relay_socket_rebound", timeout=10)
        run.extra["rebound_after_ms"] = round((line.t - run.t_inject) * 1000)
        time.sleep(max(0.0, 2.0 - (time.time() - run.t_inject)))
        relay = node.relay_pid(exabgp)
        os.kill(relay, signal.SIGKILL)
        wait_for(lambda: node.relay_pid(exabgp) != relay, timeout=10, interval=0.01)
        wait_for(lambda: len(node.daemon.events("relay_connected")) >= 2, timeout=20)
        row = run.settle(UP, UP)
    assert row["updates"] == 0, row
    assert all(WEB.prefix in s.prefixes for s in run.sampler.samples)


def test_exabgp_sigkill_6x(node: Node) -> None:
    if not full_run():
        pytest.skip("a minute of backoff: ANYCASTD_FAULTS_FULL=1")
    with fault_run(node.topo, node.daemon, "exabgp-sigkill-6x", [WEB.prefix]) as run:
        run.inject()
        killed: list[int] = []
        for _ in range(6):
            pid = wait_for(lambda: [p for p in pids_of("bin/exabgp ", parent=node.daemon.pid)
                                    if p not in killed], timeout=60, interval=0.005)[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        run.extra["kills_within_s"] = round(time.time() - run.t_inject, 1)
        row = run.settle(UP, UP, timeout=120)
    assert row["announced_without_address_ms"] == 0, row


def test_peer_restart(node: Node) -> None:
    topo = node.topo
    with fault_run(topo, node.daemon, "peer-restart", [WEB.prefix]) as run:
        run.inject()
        topo.peer.stop()
        (topo.peer.frr.dir / "bgpd.vty").unlink(missing_ok=True)  # or it looks started
        topo.peer = Peer(topo.router, topo.peer.frr.dir)
        row = run.settle(UP, UP, timeout=60)
    assert row["updates"] >= 1  # the announce on the new session
    assert row["announced_without_address_ms"] == 0, row


def test_session_flapped_by_peer(node: Node) -> None:
    with fault_run(node.topo, node.daemon, "session-flapped-by-peer", [WEB.prefix]) as run:
        run.inject()
        node.topo.peer.frr.vtysh(f"clear bgp {EDGE_IP}")
        row = run.settle(UP, UP, timeout=60)
    assert row["updates"] >= 1, row
    assert row["announced_without_address_ms"] == 0, row


def test_peer_unreachable(node: Node) -> None:
    if not full_run():
        pytest.skip("the hold time (9 s) and a reconnect: ANYCASTD_FAULTS_FULL=1")
    topo = node.topo
    routes = [(topo.router, EDGE_IP), (topo.edge, PEER_IP)]
    with fault_run(topo, node.daemon, "peer-unreachable", [WEB.prefix]) as run:
        run.inject()
        try:
            for ns, ip in routes:
                ns.exec(["ip", "route", "add", "blackhole", f"{ip}/32"])
            wait_for(lambda: WEB.prefix not in (run.sampler.last() or ()), timeout=30,
                     interval=0.01)
            run.extra["peer_dropped_route_after_ms"] = round((time.time() - run.t_inject)
                                                             * 1000)
            time.sleep(max(0.0, 12.0 - (time.time() - run.t_inject)))
        finally:
            for ns, ip in routes:
                ns.exec(["ip", "route", "del", "blackhole", f"{ip}/32"], check=False)
        t_back = time.time()
        wait_for(lambda: WEB.prefix in (run.sampler.last() or ()), timeout=90, interval=0.01)
        run.extra["announced_after_reachable_ms"] = round((time.time() - t_back) * 1000)
        row = run.settle(UP, UP, timeout=30)
    assert row["announced_without_address_ms"] == 0, row


# -- the node's addresses and interface -------------------------------------------------------


def test_address_removed(node: Node) -> None:
    with fault_run(node.topo, node.daemon, "address-removed", [WEB.prefix]) as run:
        run.inject()
        node.topo.edge.exec(["ip", "addr", "del", WEB.prefix, "dev", "lo"])
        row = run.settle(UP, UP)
    # the fault itself takes the address away under an announced route: the window is
    # anycastd's reaction (link watcher -> withdraw), not zero; it must stay short
    assert row["announced_without_address_ms"] < 250, row


def test_foreign_address(node: Node) -> None:
    """``db`` is down (no listener); an operator adds its address by hand."""
    topo = node.topo
    ip = DB.prefix.split("/", maxsplit=1)[0]
    with fault_run(topo, node.daemon, "foreign-address", [DB.prefix]) as run:
        run.inject()
        topo.edge.exec(["ip", "addr", "add", DB.prefix, "dev", "lo"])
        time.sleep(3.0)  # a dozen checks and three reconcile passes
        row = run.settle({DB.prefix: False}, {DB.prefix: True})
    assert ip in lo_addresses(topo.edge), "the operator's address was left alone"
    assert [e.added for e in topo.monitor.of(ip, since=run.t_inject)] == [True]
    assert row["updates"] == 0, row


def test_lo_down_up(node: Node) -> None:
    with fault_run(node.topo, node.daemon, "lo-down-up", [WEB.prefix]) as run:
        run.inject()
        node.topo.edge.exec(["ip", "link", "set", "lo", "down"])
        wait_for(lambda: WEB.prefix not in (run.sampler.last() or ()), timeout=20,
                 interval=0.01)
        run.extra["withdrawn_after_ms"] = round((time.time() - run.t_inject) * 1000)
        time.sleep(2.0)  # long enough for the checks (127.0.0.1 over lo) to fail too
        t_up = time.time()
        node.topo.edge.exec(["ip", "link", "set", "lo", "up"])
        wait_for(lambda: WEB.prefix in (run.sampler.last() or ()), timeout=20, interval=0.01)
        run.extra["announced_after_up_ms"] = round((time.time() - t_up) * 1000)
        row = run.settle(UP, UP)
    assert row["announced_without_address_ms"] == 0, row
    # back only once the checks pass again (rise 2 x 200 ms), not at link up
    assert row["announced_after_up_ms"] >= 200, row


# -- reloads and the state directory ---------------------------------------------------------


def test_reload_invalid(node: Node) -> None:
    good = node.conf.read_text()
    try:
        with fault_run(node.topo, node.daemon, "reload-invalid", [WEB.prefix]) as run:
            run.inject()
            node.conf.write_text(good.replace('interval = "200ms"', 'interval = "fast"', 1))
            node.daemon.signal(signal.SIGHUP)
            line = node.daemon.wait_event("reload_rejected")
            run.extra["logged"] = str(line.fields.get("detail", ""))[:160]
            row = run.settle(UP, UP)
    finally:
        node.conf.write_text(good)
    assert row["updates"] == 0, row
    assert "anycastd.toml" in str(line.fields), line.fields


def test_reload_storm(node: Node) -> None:
    seconds = 60.0 if full_run() else 5.0
    with fault_run(node.topo, node.daemon, "reload-storm", [WEB.prefix]) as run:
        run.inject()
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            node.daemon.signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.1)
        run.extra["reloads_sent"] = sent
        run.extra["seconds"] = seconds
        row = run.settle(UP, UP)
    assert row["updates"] == 0, row
    assert all(WEB.prefix in s.prefixes for s in run.sampler.samples)


def test_state_dir_unwritable(node: Node) -> None:
    flags = node.topo.tmp / "state" / "flags.json"
    flags.unlink(missing_ok=True)
    flags.mkdir(parents=True)  # os.replace onto a directory fails: flags.json cannot be saved
    try:
        with fault_run(node.topo, node.daemon, "state-dir-unwritable", [WEB.prefix]) as run:
            run.inject()
            reply = node.post("/services/web/maintenance", {"on": True})
            assert reply["on"] is True
            line = node.daemon.wait_event("flags_not_saved")
            run.extra["logged"] = str(line.fields.get("error", ""))[:160]
            row = run.settle({WEB.prefix: False}, timeout=20)
        node.post("/services/web/maintenance", {"on": False})
        node.up()
    finally:
        flags.rmdir()
    assert row["announced_without_address_ms"] == 0, row


def test_state_dir_full(node: Node) -> None:
    tmp = node.topo.tmp / "state" / "flags.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to("/dev/full")  # every write of flags.json's temporary file: ENOSPC
    try:
        with fault_run(node.topo, node.daemon, "state-dir-full", [WEB.prefix]) as run:
            run.inject()
            reply = node.post("/services/web/maintenance", {"on": True})
            assert reply["on"] is True
            line = wait_for(lambda: [ln for ln in node.daemon.events("flags_not_saved")
                                     if "No space" in ln.fields.get("error", "")],
                            timeout=10)[-1]
            run.extra["logged"] = str(line.fields.get("error", ""))[:160]
            row = run.settle({WEB.prefix: False}, timeout=20)
        node.post("/services/web/maintenance", {"on": False})
        node.up()
    finally:
        tmp.unlink(missing_ok=True)
    assert row["announced_without_address_ms"] == 0, row


# -- misbehaving exec checks, a daemon of their own -------------------------------------------


EXEC = {
    "check-hangs": ("hang", "192.0.2.81/32", ["sleep", "3600.81"]),
    "check-spams-stdout": ("spam", "192.0.2.82/32",
                           ["sh", "-c", "head -c 8000000 /dev/zero; exit 0"]),
    "check-ignores-sigterm": ("noterm", "192.0.2.83/32",
                              ["sh", "-c", "trap '' TERM; sleep 3600.83; true"]),
    "check-forks": ("forks", "192.0.2.84/32", ["sh", "-c", "sleep 300.84 & exit 0"]),
}


def _exec_service(name: str, prefix: str, argv: list[str]) -> Service:
    return Service(name, prefix, 0, check=(
        f'name = "exec"\ntype = "exec"\nargv = {json.dumps(argv)}\n'
        'timeout = "500ms"\ninterval = "1s"\nfast_interval = "1s"\n'))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_misbehaving_exec_checks(tmp_path: Path) -> None:
    services = [_exec_service(*spec) for spec in EXEC.values()]
    with topology(tmp_path) as topo:
        conf = topo.write_config(services)
        t0 = time.time()
        with fault_run(topo, None, "check-spams-stdout", [s.prefix for s in services]) as run:
            run.inject()
            daemon = topo.anycastd(conf)
            run.daemon = daemon
            want = {s.prefix: s.name in ("spam", "forks") for s in services}
            wait_for(lambda: topo.peer.has("192.0.2.82/32"), timeout=40)
            rss0 = _rss_kib(daemon.pid)
            time.sleep(8.0)  # eight runs of each check
            rss1 = _rss_kib(daemon.pid)
            base = run.settle(want, want)
        # one daemon ran all four; each fault's row is its own prefix's view
        # processes of the checks still alive: a run may be in progress at any moment, so
        # the least of five counts 0.2 s apart (leaked ones would accumulate: 8 runs each)
        marks = {"check-hangs": "sleep 3600.81", "check-spams-stdout": "head -c 8000000",
                 "check-ignores-sigterm": "sleep 3600.83", "check-forks": "sleep 300.84"}
        counts: dict[str, list[int]] = {fid: [] for fid in marks}
        for _ in range(5):
            for fid, mark in marks.items():
                counts[fid].append(len(pids_of(mark)))
            time.sleep(0.2)
        leftovers = {fid: min(c) for fid, c in counts.items()}
        for fid, (name, prefix, _argv) in EXEC.items():
            announced = any(prefix in s.prefixes for s in run.sampler.samples)
            row = {**base, "updates": len(topo.peer.updates(prefix, since=t0)),
                   "announced_ever": announced,
                   "processes_left": leftovers[fid],
                   "anycastd_rss_growth_kib": rss1 - rss0}
            record(FAULTS[fid], row)
            assert announced == (name in ("spam", "forks")), (fid, row)
            # hang/noterm: their one run in progress is alive for its whole timeout
            assert row["processes_left"] <= (1 if name in ("hang", "noterm") else 0), (fid, row)
        assert daemon.proc.poll() is None
        assert rss1 - rss0 < 50_000, (rss0, rss1)


def test_anycastd_sigkill_managed(tmp_path: Path) -> None:
    with topology(tmp_path) as topo:
        topo.listener(WEB.port)
        daemon = topo.anycastd(topo.write_config([WEB]))
        wait_for(lambda: topo.peer.has(WEB.prefix), timeout=40)
        with fault_run(topo, daemon, "anycastd-sigkill-managed", [WEB.prefix]) as run:
            run.inject()
            daemon.signal(signal.SIGKILL)
            daemon.proc.wait(timeout=5)
            row = run.settle({WEB.prefix: False}, timeout=10, daemon_should_run=False)
        assert row["time_to_correct_ms"] < 3000, row


def test_clock_step_is_not_run() -> None:
    """Recorded as not run: a network namespace does not isolate CLOCK_REALTIME, so
    stepping it would step the shared host's clock (a time namespace offsets only
    CLOCK_MONOTONIC and CLOCK_BOOTTIME, which is the very clock anycastd times with)."""
    record(FAULTS["clock-step"], {"not_run": True})


# -- flapping health, with and without an API flood -------------------------------------------

FLAPPER = (
    "import socket,sys,time,signal\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "port, half = int(sys.argv[1]), float(sys.argv[2])\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('127.0.0.1', port)); s.listen(64); s.settimeout(0.02)\n"
    "    end = time.monotonic() + half\n"
    "    while time.monotonic() < end:\n"
    "        try:\n"
    "            c, _ = s.accept(); c.close()\n"
    "        except OSError:\n"
    "            pass\n"
    "    s.close(); time.sleep(half)\n"
)

FLOODER = (
    "import json,sys,threading,time,urllib.request as u\n"
    "url, seconds, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])\n"
    "lat, errors = [], [0]\n"
    "def run():\n"
    "    end = time.monotonic() + seconds\n"
    "    while time.monotonic() < end:\n"
    "        t = time.perf_counter()\n"
    "        try:\n"
    "            u.urlopen(url, timeout=5).read()\n"
    "            lat.append(time.perf_counter() - t)\n"
    "        except Exception:\n"
    "            errors[0] += 1\n"
    "ts = [threading.Thread(target=run) for _ in range(n)]\n"
    "[t.start() for t in ts]; [t.join() for t in ts]\n"
    "lat.sort()\n"
    "q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1)\n"
    "print(json.dumps({'requests': len(lat), 'errors': errors[0], 'p50_ms': q(0.5),\n"
    "                  'p99_ms': q(0.99), 'max_ms': round(lat[-1] * 1000, 1)}))\n"
)

FLAPPY = Service("flappy", "192.0.2.91/32", 8191, shutdown="withdraw",
                 extra="[services.flappy.damping]\npenalty = 1000\nsuppress = 2000\n"
                       "reuse = 750\nhalf_life = \"60s\"\nmax_suppress = \"10m\"\n")
TOGGLED = Service("toggled", "192.0.2.92/32", 8192, shutdown="withdraw")


def test_flapping_checks_with_and_without_an_api_flood(tmp_path: Path) -> None:
    flap_seconds = 300.0 if full_run() else 20.0
    with topology(tmp_path) as topo, \
            fault_run(topo, None, "check-flaps-1hz", [FLAPPY.prefix]) as flaps:
        flapper = topo.edge.popen([sys.executable, "-c", FLAPPER, str(FLAPPY.port), "0.5"],
                                  stdout=subprocess.PIPE, text=True)
        topo._things.append(flapper)
        assert flapper.stdout is not None
        assert flapper.stdout.readline().strip() == "ready"
        listener = topo.listener(TOGGLED.port)
        flaps.inject()
        flaps.addr_at_start = {FLAPPY.prefix: False}
        daemon = topo.anycastd(topo.write_config([FLAPPY, TOGGLED]))
        flaps.daemon = daemon
        wait_for(lambda: topo.peer.has(TOGGLED.prefix), timeout=40)
        # -- the API flood while TOGGLED goes down and up every 1.5 s, 8 times
        with fault_run(topo, daemon, "api-flood-while-flapping", [TOGGLED.prefix]) as run:
            run.inject()
            flood = topo.edge.popen([sys.executable, "-c", FLOODER,
                                     f"http://127.0.0.1:{API_PORT}/status", "13", "4"],
                                    stdout=subprocess.PIPE, text=True)
            toggled: list[float] = []
            for i in range(8):
                toggled.append(time.time())
                if i % 2 == 0:
                    stop_process(listener)
                else:
                    listener = topo.listener(TOGGLED.port)
                time.sleep(1.5)
            out, _ = flood.communicate(timeout=30)
            run.extra.update(json.loads(out))
            updates = topo.peer.updates(TOGGLED.prefix, since=run.t_inject)
            run.extra["transitions"] = 8
            # listener stopped/started -> the UPDATE at the peer (includes fall/rise 2 x 200 ms)
            reaction = sorted(u.t - t for u, t in zip(updates, toggled, strict=False))
            if reaction:
                run.extra["transition_to_update_ms_median"] = round(
                    reaction[len(reaction) // 2] * 1000)
                run.extra["transition_to_update_ms_max"] = round(reaction[-1] * 1000)
            row = run.settle({TOGGLED.prefix: True}, {TOGGLED.prefix: True})
        assert [u.withdrawn for u in updates] == [True, False] * 4, updates
        assert row["errors"] == 0, row
        # -- FLAPPY has flapped since the start: damping must hold it down
        remaining = flap_seconds - (time.time() - flaps.t_inject)
        if remaining > 0:
            time.sleep(remaining)
        ups = topo.peer.updates(FLAPPY.prefix, since=flaps.t_inject)
        half = flaps.t_inject + flap_seconds / 2
        flaps.extra["flap_seconds"] = flap_seconds
        flaps.extra["updates_second_half"] = len([u for u in ups if u.t >= half])
        flaps.extra["flaps_logged"] = len(daemon.events("flap", service="flappy"))
        row = flaps.settle({FLAPPY.prefix: False})
        stop_process(flapper)
    assert row["updates"] <= 8, row  # two or three flaps, then suppressed
    assert row["updates_second_half"] == 0, row
