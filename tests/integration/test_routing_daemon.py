"""Publishing through an existing routing daemon instead of ExaBGP (docs/routing-daemons.md).

anycastd runs WITHOUT a ``[bgp]`` section (no speaker: ``NullSpeaker``) and manages only the
address on ``lo``; the edge's own FRR (zebra + bgpd) redistributes connected /32s on ``lo``
through a prefix-list, and a peer FRR learns them. The address is the announcement: what the
peer sees must follow the address on ``lo``, which follows the health checks.

Topology (unique namespaces, removed in teardown even on failure)::

    edge ns: anycastd run (no [bgp]), FRR zebra + bgpd AS 65001 (run as user frr),
             a TCP listener on 127.0.0.1 (the service)
             10.91.0.2/24 ── veth ── 10.91.0.1/24  router ns: bgpd AS 65000 (the peer)

What the tests look at is the outside world: the peer's RIB and bgpd's log of the UPDATEs it
received (``controller_support.Peer``), and ``ip monitor`` on the edge's ``lo``. BIRD is not
installed here: only FRR is tested (BIRD's ``protocol direct`` is documented, not tested).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anycastd.lab.netns import Netns, stop_process, veth, wait_for
from tests.integration.controller_support import (
    API_PORT,
    EDGE_IP,
    LISTENER,
    LOCAL_AS,
    PEER_AS,
    PEER_IP,
    AddrMonitor,
    Anycastd,
    Peer,
    Service,
    lo_addresses,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not Path("/usr/lib/frr/zebra").exists(), reason="needs FRR"),
]

PREFIX = "192.0.2.20/32"
ADDRESS = PREFIX.split("/", maxsplit=1)[0]
#: an address on lo outside the prefix-list: the routing daemon must not publish it
FOREIGN = "198.51.100.7"
PORT = 8081

#: The edge's FRR: redistribute connected routes, but only /32s of the anycast range.
EDGE_FRR = f"""\
hostname edge
log file {{dir}}/bgpd.log informational
ip prefix-list ANYCAST seq 5 permit 192.0.2.0/24 ge 32
route-map ANYCAST permit 10
 match ip address prefix-list ANYCAST
exit
router bgp {LOCAL_AS}
 bgp router-id {EDGE_IP}
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 neighbor {PEER_IP} remote-as {PEER_AS}
 neighbor {PEER_IP} timers connect 1
 neighbor {PEER_IP} advertisement-interval 0
 address-family ipv4 unicast
  redistribute connected route-map ANYCAST
  neighbor {PEER_IP} activate
 exit-address-family
exit
"""


class EdgeFrr:
    """zebra + bgpd in the edge namespace, as user frr (PLATFORM.md: zebra is needed for
    connected routes). Their files live in a directory of their own under /tmp (frr must
    be able to reach it; pytest's tmp dirs are root-only); ``-N`` gives them a pathspace
    of their own under /var/run/frr, removed in ``stop``."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.dir = Path(tempfile.mkdtemp(prefix="acdt-frr-"))
        shutil.chown(self.dir, "frr", "frr")
        self.pathspace = Path("/var/run/frr") / ns.name
        conf = self.dir / "bgpd.conf"
        conf.write_text(EDGE_FRR.format(dir=self.dir))
        shutil.chown(conf, "frr", "frr")
        self.procs: list[subprocess.Popen[bytes]] = []
        common = ["-N", ns.name, "-z", str(self.dir / "zserv.api"),
                  "--vty_socket", str(self.dir), "-u", "frr", "-g", "frr"]
        self._start(["/usr/lib/frr/zebra", "-f", "/dev/null", *common,
                     "-i", str(self.dir / "zebra.pid")], self.dir / "zserv.api")
        self._start(["/usr/lib/frr/bgpd", "-f", str(conf), *common, "-i",
                     str(self.dir / "bgpd.pid")], self.dir / "bgpd.vty")

    def _start(self, argv: list[str], ready: Path) -> None:
        out = open(self.dir / (Path(argv[0]).name + ".out"), "wb")  # noqa: SIM115 - lives with proc
        self.procs.append(self.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT))
        out.close()  # the child has its own copy
        wait_for(ready.exists, timeout=10)

    def published(self) -> set[str]:
        """The prefixes in the edge bgpd's own table (what it may advertise)."""
        out = subprocess.run(
            ["vtysh", "--vty_socket", str(self.dir), "-c", "show bgp ipv4 unicast json"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
        try:
            return set(json.loads(out).get("routes", {}))
        except ValueError:
            return set()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.pathspace, ignore_errors=True)


@dataclass
class Edge:
    ns: Netns
    router: Netns
    peer: Peer
    frr: EdgeFrr
    monitor: AddrMonitor
    tmp: Path
    listeners: list[subprocess.Popen[str]] = field(default_factory=list)

    def anycastd(self, shutdown: str = "withdraw", drain_time: str = "1s") -> Anycastd:
        conf = self.tmp / "anycastd.toml"
        conf.write_text(
            "[global]\n"
            'node = "edge-frr"\n'
            f'state_dir = "{self.tmp / "state"}"\n'
            f'runtime_dir = "{self.tmp / "run"}"\n'
            'log_format = "logfmt"\nlog_level = "info"\ninterface = "lo"\n'
            'reconcile_interval = "1s"\n'
            f'[api]\nenabled = true\nlisten = "127.0.0.1:{API_PORT}"\n'
            # no [bgp]: anycastd speaks no BGP; the address on lo is the announcement
            + Service("web", PREFIX, PORT, shutdown=shutdown, drain_time=drain_time).toml(self.tmp)
        )
        return Anycastd(self.ns, conf, self.tmp / "anycastd.log")

    def listener(self) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = self.ns.popen(
            [sys.executable, "-c", LISTENER, str(PORT)], stdout=subprocess.PIPE, text=True)
        self.listeners.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def on_lo(self) -> bool:
        return ADDRESS in lo_addresses(self.ns)

    def metrics(self) -> str:
        return self.ns.exec([sys.executable, "-c",
                             "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
                             f"'http://127.0.0.1:{API_PORT}/metrics',timeout=5).read().decode())"],
                            check=False)  # fmt: skip


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    tmp = tmp_path_factory.mktemp("routing-daemon")
    made: list[Netns] = []
    things: list[EdgeFrr | Peer | AddrMonitor] = []
    try:
        ns, router = Netns("redge"), Netns("rrtr")
        made += [ns, router]
        veth(ns, f"{EDGE_IP}/24", router, f"{PEER_IP}/24")
        peer = Peer(router, tmp / "peer")
        things.append(peer)
        frr = EdgeFrr(ns)
        things.append(frr)
        monitor = AddrMonitor(ns)
        things.append(monitor)
        wait_for(peer.established, timeout=30, interval=0.1)
        yield Edge(ns, router, peer, frr, monitor, tmp)
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()
        for n in made:
            n.close()


@pytest.fixture
def fresh(edge: Edge) -> Iterator[Edge]:
    """No anycast address on lo before and after each test (an anycastd killed by a test
    leaves its address behind: that is the point of one of them)."""
    edge.ns.exec(["ip", "addr", "del", f"{ADDRESS}/32", "dev", "lo"], check=False)
    wait_for(lambda: not edge.peer.has(PREFIX), timeout=10)
    yield edge
    for proc in edge.listeners:
        stop_process(proc)
    edge.listeners.clear()
    edge.ns.exec(["ip", "addr", "del", f"{ADDRESS}/32", "dev", "lo"], check=False)


def test_the_peer_sees_the_prefix_exactly_while_the_service_is_healthy(fresh: Edge) -> None:
    edge = fresh
    edge.ns.exec(["ip", "addr", "add", f"{FOREIGN}/32", "dev", "lo"])
    listener = edge.listener()
    daemon = edge.anycastd()
    try:
        wait_for(lambda: edge.peer.has(PREFIX), timeout=30, interval=0.05)
        assert edge.on_lo()
        # the prefix-list publishes the anycast range only, not every address on lo
        assert f"{FOREIGN}/32" not in edge.frr.published()
        assert not edge.peer.has(f"{FOREIGN}/32")
        metrics = edge.metrics()
        assert f'anycastd_prefix_address_present{{prefix="{PREFIX}",service="web"}} 1.0' in metrics
        # without [bgp] nothing is announced by anycastd itself
        assert f'anycastd_prefix_announced{{prefix="{PREFIX}",service="web"}} 0.0' in metrics

        # the service fails: anycastd removes the address, and that removal is the withdraw
        t0 = time.time()
        stop_process(listener)
        wait_for(lambda: not edge.peer.has(PREFIX), timeout=10, interval=0.01)
        removed = [e for e in edge.monitor.of(ADDRESS, since=t0) if not e.added]
        assert len(removed) == 1, edge.monitor.of(ADDRESS, since=t0)
        withdrawn = [u for u in edge.peer.updates(PREFIX, since=t0) if u.withdrawn]
        assert withdrawn, "the peer received a withdraw"
        # the order is the reverse of ExaBGP mode: the address goes first, then the route
        assert withdrawn[0].t >= removed[0].t
        lag = withdrawn[0].t - removed[0].t
        assert lag < 1.0, f"withdraw reached the peer {lag:.3f}s after the address left lo"
        print(f"address removed -> withdraw at the peer: {lag * 1000:.1f} ms")

        # healthy again: the address comes back, and with it the route
        t1 = time.time()
        edge.listener()
        wait_for(lambda: edge.peer.has(PREFIX), timeout=10, interval=0.01)
        added = [e for e in edge.monitor.of(ADDRESS, since=t1) if e.added]
        announced = [u for u in edge.peer.updates(PREFIX, since=t1) if not u.withdrawn]
        assert added
        assert announced
        assert announced[0].t >= added[0].t
    finally:
        daemon.terminate()
        daemon.stop()
        edge.ns.exec(["ip", "addr", "del", f"{FOREIGN}/32", "dev", "lo"], check=False)


def test_sigterm_removes_the_address_at_once_and_so_withdraws(fresh: Edge) -> None:
    # drain-then-withdraw has nothing to drain with (no demote route): no 5 s drain
    edge = fresh
    edge.listener()
    daemon = edge.anycastd(shutdown="drain-then-withdraw", drain_time="5s")
    try:
        wait_for(lambda: edge.peer.has(PREFIX), timeout=30, interval=0.05)
        t0 = time.time()
        assert daemon.terminate() == 0
        assert time.time() - t0 < 4.0, "the stop did not wait for a drain"
        assert not edge.on_lo()
        wait_for(lambda: not edge.peer.has(PREFIX), timeout=10, interval=0.02)
        assert [u.withdrawn for u in edge.peer.updates(PREFIX, since=t0)] == [True]
    finally:
        daemon.stop()


def test_maintenance_removes_the_address_at_once_without_a_drain(fresh: Edge) -> None:
    # No demote to publish (the routing daemon's route has no draining attributes), so a
    # planned take-down cannot drain: the address goes at once, drain_time (1 s) or not.
    edge = fresh
    edge.listener()
    daemon = edge.anycastd(shutdown="drain-then-withdraw")
    flag = edge.tmp / "maint-web"
    try:
        wait_for(lambda: edge.peer.has(PREFIX), timeout=30, interval=0.05)
        t0 = time.time()
        flag.touch()
        wait_for(lambda: not edge.peer.has(PREFIX), timeout=10, interval=0.01)
        removed = [e for e in edge.monitor.of(ADDRESS, since=t0) if not e.added]
        assert len(removed) == 1
        # the flag file is polled every second; no drain_time is spent on top of that
        assert removed[0].t - t0 < 1.5, removed[0].t - t0
        assert [u.withdrawn for u in edge.peer.updates(PREFIX, since=t0)] == [True]
        flag.unlink()
        wait_for(lambda: edge.peer.has(PREFIX), timeout=10, interval=0.02)
    finally:
        flag.unlink(missing_ok=True)
        daemon.terminate()
        daemon.stop()


def test_a_killed_anycastd_leaves_the_address_so_the_route_stays(fresh: Edge) -> None:
    # What is lost without a BGP speaker of anycastd's own: fail-closed on a crash. With
    # ExaBGP the BGP session dies with anycastd; here the address outlives the process and
    # the routing daemon keeps announcing it (docs/routing-daemons.md: use the watchdog).
    edge = fresh
    edge.listener()
    daemon = edge.anycastd()
    try:
        wait_for(lambda: edge.peer.has(PREFIX), timeout=30, interval=0.05)
        daemon.signal(signal.SIGKILL)
        daemon.proc.wait(timeout=10)
        time.sleep(1.0)  # a withdraw would arrive within milliseconds (see the test above)
        assert edge.on_lo()
        assert edge.peer.has(PREFIX)
    finally:
        daemon.stop()
