"""OSPF integration support: ``anycastd run`` on both edges of an ``OspfLab`` (real zebra +
ospfd in each namespace), a listener per edge, and samplers that see the world from outside
anycastd (the router's kernel routes, the edges' ``lo``, the LSDBs).

Every edge runs one service ``web`` (``PREFIX``, a TCP check of its own listener) published
through OSPF with metrics up 10 / draining 100 / maintenance 65535, no BGP. The listener binds
0.0.0.0, so a client in the router namespace that connects to the anycast address reaches
whichever edge the router's route points to, and reads that edge's name.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anycastd.lab.netns import Netns, stop_process, wait_for
from anycastd.lab.ospf import OspfLab, OspfNode
from tests.integration.controller_support import Anycastd, lo_addresses

PREFIX = "192.0.2.80/32"
IP = "192.0.2.80"
PORT = 8480

#: answers every connection with its edge's name; SIGTERM ends it
LISTENER = (
    "import socket,sys,signal\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(64)\n"
    "print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(sys.argv[2].encode()); c.close()\n"
)


def config_text(tmp: Path, ns: Netns, *, drain_time: str = "2s", extra_ospf: str = "",
                shutdown: str = "drain-then-withdraw") -> str:
    return (
        "[global]\n"
        f'node = "{ns.name}"\n'
        f'state_dir = "{tmp / "state"}"\nruntime_dir = "{tmp / "run"}"\n'
        'log_format = "logfmt"\nlog_level = "info"\ninterface = "lo"\n'
        'reconcile_interval = "1s"\n'
        "[api]\nenabled = false\n"
        "[ospf]\n"
        f'pathspace = "{ns.name}"\n'
        f"{extra_ospf}"
        "[services.web]\n"
        f'prefixes = ["{PREFIX}"]\n'
        'interval = "200ms"\nfast_interval = "200ms"\ntimeout = "150ms"\njitter = "0ms"\n'
        "rise = 2\nfall = 2\n"
        f'drain_time = "{drain_time}"\nshutdown = "{shutdown}"\n'
        f'maintenance_file = "{tmp / "maintenance"}"\n'
        "[services.web.ospf]\n"
        "metric = { up = 10, draining = 100, maintenance = 65535 }\n"
        "[[services.web.checks]]\n"
        f'name = "tcp"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {PORT}\n'
    )


@dataclass
class Edge:
    index: int
    ns: Netns
    node: OspfNode
    tmp: Path
    router_id: str
    daemon: Anycastd | None = None
    listener: subprocess.Popen[Any] | None = None

    def start_listener(self) -> None:
        proc = self.ns.popen([sys.executable, "-c", LISTENER, str(PORT), f"edge{self.index}"],
                             stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        self.listener = proc

    def stop_listener(self) -> None:
        if self.listener is not None:
            stop_process(self.listener)
            self.listener = None

    def start(self, **kwargs: Any) -> Anycastd:
        conf = self.tmp / "anycastd.toml"
        conf.write_text(config_text(self.tmp, self.ns, **kwargs))
        self.daemon = Anycastd(self.ns, conf, self.tmp / "anycastd.log")
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def has_address(self) -> bool:
        return IP in lo_addresses(self.ns)

    def lsa(self) -> dict[str, Any] | None:
        """This edge's own AS-external LSA for PREFIX in its LSDB (None: none, or MaxAge)."""
        data = self.node.json(f"show ip ospf database external {IP} self-originate json")
        for entry in _lsas(data):
            if int(entry.get("lsaAge", 0)) < 3600:
                return entry
        return None

    def maintenance(self, on: bool) -> None:
        path = self.tmp / "maintenance"
        if on:
            path.write_text("")
        else:
            path.unlink(missing_ok=True)


def _lsas(data: Any) -> list[dict[str, Any]]:
    """The LSA entries of ``show ip ospf database external ... json`` (nested by area)."""
    out: list[dict[str, Any]] = []
    if isinstance(data, dict):
        if "linkStateId" in data or "lsaAge" in data:
            out.append(data)
        for value in data.values():
            out += _lsas(value)
    elif isinstance(data, list):
        for value in data:
            out += _lsas(value)
    return out


@dataclass
class OspfTopo:
    lab: OspfLab
    edges: list[Edge]
    _closers: list[Any] = field(default_factory=list)

    @property
    def router(self) -> OspfNode:
        return self.lab.router

    def next_hops(self) -> set[int]:
        """The edges (1, 2) the router's kernel route to PREFIX points to."""
        out: set[int] = set()
        for gw in self.router.kernel_nexthops(PREFIX):
            edge = self.lab.edge_of(gw)
            if edge is not None:
                out.add(edge + 1)
        return out

    def external_metrics(self) -> dict[int, int]:
        """edge (1, 2) -> the metric of its live LSA for PREFIX in the router's LSDB."""
        data = self.router.json(f"show ip ospf database external {IP} json")
        out: dict[int, int] = {}
        for entry in _lsas(data):
            if int(entry.get("lsaAge", 0)) >= 3600:
                continue
            adv = entry.get("advertisingRouter")
            for e in self.edges:
                if adv == e.router_id:
                    out[e.index] = int(entry.get("metric", -1))
        return out

    def client(self, timeout: float = 1.0) -> str:
        """Connect from the router namespace to the anycast address; the edge's answer."""
        out = self.router.ns.exec(
            [sys.executable, "-c",
             "import socket,sys\n"
             f"s=socket.create_connection(('{IP}', {PORT}), timeout={timeout})\n"
             "sys.stdout.write(s.recv(100).decode())\n"],
            check=False, timeout=10,
        )
        return out.strip()

    def converged(self, hops: set[int]) -> None:
        wait_for(lambda: self.next_hops() == hops, timeout=20, interval=0.05)


@contextlib.contextmanager
def ospf_topology(tmp: Path, *, fast_timers: bool = True) -> Iterator[OspfTopo]:
    lab = OspfLab(tmp / "lab", fast_timers=fast_timers)
    topo = OspfTopo(lab, [])
    try:
        for i, node in enumerate(lab.edges, start=1):
            etmp = tmp / f"edge{i}"
            etmp.mkdir(parents=True, exist_ok=True)
            topo.edges.append(Edge(i, lab.edge_ns[i - 1], node, etmp, f"10.77.0.{i + 1}"))
        yield topo
    finally:
        for e in topo.edges:
            with contextlib.suppress(Exception):
                e.stop()
            with contextlib.suppress(Exception):
                e.stop_listener()
        lab.close()


@dataclass
class Sample:
    t0: float
    t1: float
    value: bool


class Timeline:
    """Background threads sampling, back to back: the router's kernel next hops for PREFIX,
    one edge's ``lo`` and that edge's own LSA for PREFIX."""

    def __init__(self, topo: OspfTopo, edge: Edge) -> None:
        self.topo, self.edge = topo, edge
        self.route: list[Sample] = []  # router's route points to the edge
        self.addr: list[Sample] = []
        self.lsa: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(fn, out), daemon=True)
                         for fn, out in ((self._route, self.route), (edge.has_address, self.addr),
                                         (lambda: edge.lsa() is not None, self.lsa))]

    def _route(self) -> bool:
        return self.edge.index in self.topo.next_hops()

    def _loop(self, fn: Any, out: list[Sample]) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            value = bool(fn())
            out.append(Sample(t0, time.time(), value))
            time.sleep(0.002)

    def __enter__(self) -> Timeline:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
