"""Real FRR ``zebra`` + ``ospfd`` in network namespaces, for tests, the bench and the demo.

Each node is one namespace with its own FRR instance, kept apart by FRR's pathspace option
(``-N NAME``: sockets and config under ``/var/run/frr/NAME`` and ``/etc/frr/NAME``). The
daemons run as user ``frr`` (their state directory is chowned to it), start with an empty
config (``-f /dev/null``) and get theirs through ``vtysh -N NAME -f FILE``, the way an
operator's ``vtysh`` would. Started by PID, stopped by that PID; ospfd always writes
``/var/run/frr/ospfd-gr.json`` (even with ``-N``), which ``close()`` removes.

Topology (``OspfLab``): a router and two edges, each edge joined to the router by a veth
pair (10.77.N.0/30), OSPF area 0 on those links with hello 1 s / dead 4 s. Edge ``N``'s
lo gets nothing: anycastd (or the test) puts the anycast /32 there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anycastd.lab.netns import Netns, veth, wait_for

ZEBRA = "/usr/lib/frr/zebra"
OSPFD = "/usr/lib/frr/ospfd"
FRR_RUN = Path("/var/run/frr")
FRR_ETC = Path("/etc/frr")
GR_STATE = FRR_RUN / "ospfd-gr.json"

#: Fast LSA timers (PLATFORM: a route-map edit reaches the LSAs after ~5 s with defaults).
FAST_TIMERS = (" timers throttle lsa all 0", " timers lsa min-arrival 0",
               " timers throttle spf 0 50 500")


def available() -> bool:
    return os.path.exists(ZEBRA) and os.path.exists(OSPFD) and shutil.which("vtysh") is not None


class OspfNode:
    """zebra + ospfd in ``ns``, pathspace ``ns.name``."""

    def __init__(self, ns: Netns, workdir: Path, *, name: str, router_id: str,
                 networks: Sequence[str], interfaces: Sequence[str] = (),
                 fast_timers: bool = True, extra: Sequence[str] = ()) -> None:
        self.ns = ns
        self.pathspace = ns.name
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rundir = FRR_RUN / self.pathspace
        self.etcdir = FRR_ETC / self.pathspace
        for d in (self.rundir, self.etcdir):
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "frr", "frr")
        (self.etcdir / "vtysh.conf").touch()  # else every vtysh call complains on stderr
        self.logs: list[Any] = []
        self._daemon(ZEBRA, "zebra")
        wait_for((self.rundir / "zserv.api").exists, timeout=10)
        wait_for((self.rundir / "zebra.vty").exists, timeout=10)
        self._daemon(OSPFD, "ospfd")
        wait_for((self.rundir / "ospfd.vty").exists, timeout=10)
        lines = ["frr defaults traditional", "hostname " + name, "ip forwarding"]
        for ifname in interfaces:
            lines += [f"interface {ifname}", " ip ospf hello-interval 1",
                      " ip ospf dead-interval 4", " ip ospf network point-to-point", "exit"]
        lines += ["router ospf", f" ospf router-id {router_id}"]
        lines += [f" network {n} area 0" for n in networks]
        if fast_timers:
            lines += list(FAST_TIMERS)
        lines += [*extra, "exit", ""]
        self.base_config = "\n".join(lines)
        conf = self.dir / "base.conf"
        conf.write_text(self.base_config)
        out = self.vtysh_f(conf)
        if out.returncode != 0:
            raise RuntimeError(f"vtysh -f {conf}: {out.stdout}{out.stderr}")

    def _daemon(self, path: str, name: str) -> None:
        log = open(self.dir / f"{name}.log", "w")  # noqa: SIM115 -- closed in close()
        self.logs.append(log)
        self.ns.popen(
            [path, "-N", self.pathspace, "-f", "/dev/null", "-u", "frr", "-g", "frr",
             "-i", str(self.rundir / f"{name}.pid"), "--log", "stdout", "-P", "0"],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def vtysh_argv(self) -> list[str]:
        return ["vtysh", "-N", self.pathspace]

    def vtysh(self, *commands: str) -> str:
        return self.vtysh_run(*commands).stdout

    def vtysh_run(self, *commands: str) -> subprocess.CompletedProcess[str]:
        argv = self.vtysh_argv()
        for c in commands:
            argv += ["-c", c]
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)

    def vtysh_f(self, path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.vtysh_argv(), "-f", str(path)], capture_output=True,
                              text=True, timeout=20, check=False)

    def json(self, command: str) -> Any:
        try:
            return json.loads(self.vtysh(command))
        except ValueError:
            return {}

    def running_config(self) -> str:
        return self.vtysh("show running-config")

    def neighbors_full(self) -> int:
        data = self.json("show ip ospf neighbor json").get("neighbors", {})
        n = 0
        for entries in data.values():
            for e in entries if isinstance(entries, list) else [entries]:
                if str(e.get("nbrState", e.get("state", ""))).startswith("Full"):
                    n += 1
        return n

    def ospf_route(self, prefix: str) -> dict[str, Any] | None:
        """The OSPF route to ``prefix`` in ospfd's table (external or not), or None."""
        data = self.json("show ip ospf route json")
        entry = data.get(prefix)
        return entry if isinstance(entry, dict) else None

    def rib_route(self, prefix: str) -> list[dict[str, Any]]:
        """zebra's selected route entries for ``prefix`` (the router's RIB), or []."""
        data = self.json(f"show ip route {prefix} json")
        out = []
        for entry in data.get(prefix, []):
            if entry.get("selected") and entry.get("protocol") == "ospf":
                out.append(entry)
        return out

    def kernel_nexthops(self, prefix: str) -> list[str]:
        """The gateways of ``prefix`` in the kernel's main table (what traffic uses)."""
        out = self.ns.exec(["ip", "-j", "route", "show", "exact", prefix], check=False)
        try:
            routes = json.loads(out or "[]")
        except ValueError:
            return []
        hops: list[str] = []
        for r in routes:
            if "gateway" in r:
                hops.append(r["gateway"])
            for nh in r.get("nexthops", []):
                if "gateway" in nh:
                    hops.append(nh["gateway"])
        return sorted(hops)

    def close(self) -> None:
        # the daemons are ended by PID by their Netns (``Netns.close``)
        for log in self.logs:
            log.close()


class OspfLab:
    """A router and two edges (see the module docstring). ``close()`` removes everything."""

    def __init__(self, workdir: Path, *, fast_timers: bool = True) -> None:
        self.workdir = workdir
        self.namespaces: list[Netns] = []
        self.nodes: list[OspfNode] = []
        try:
            self.router_ns = self._ns("rtr")
            self.edge_ns = [self._ns("edge1"), self._ns("edge2")]
            self.links: list[tuple[str, str]] = []
            self.edge_addr: list[str] = []
            router_ifs: list[str] = []
            edge_ifs: list[str] = []
            for i, ens in enumerate(self.edge_ns, start=1):
                ifr, ife = veth(self.router_ns, f"10.77.{i}.1/30", ens, f"10.77.{i}.2/30")
                router_ifs.append(ifr)
                edge_ifs.append(ife)
                self.edge_addr.append(f"10.77.{i}.2")
            self.router = self._node(self.router_ns, "router", "10.77.0.1",
                                     ["10.77.1.0/30", "10.77.2.0/30"], router_ifs, fast=fast_timers)
            self.edges = [
                self._node(ens, f"edge{i}", f"10.77.0.{i + 1}", [f"10.77.{i}.0/30"],
                           [edge_ifs[i - 1]], fast=fast_timers)
                for i, ens in enumerate(self.edge_ns, start=1)
            ]
            wait_for(lambda: self.router.neighbors_full() == 2, timeout=30, interval=0.2)
        except BaseException:
            self.close()
            raise

    def _ns(self, tag: str) -> Netns:
        ns = Netns(tag)
        self.namespaces.append(ns)
        return ns

    def _node(self, ns: Netns, name: str, rid: str, networks: list[str], ifs: list[str], *,
              fast: bool) -> OspfNode:
        node = OspfNode(ns, self.workdir / name, name=name, router_id=rid, networks=networks,
                        interfaces=ifs, fast_timers=fast)
        self.nodes.append(node)
        return node

    def edge_of(self, gateway: str) -> int | None:
        """Which edge (0 or 1) a router next hop belongs to."""
        return self.edge_addr.index(gateway) if gateway in self.edge_addr else None

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for ns in reversed(self.namespaces):
            ns.close()
        for node in self.nodes:
            for d in (node.rundir, node.etcdir):
                shutil.rmtree(d, ignore_errors=True)
        GR_STATE.unlink(missing_ok=True)
        self.nodes.clear()
        self.namespaces.clear()


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> float:
    """Poll until true; the seconds it took (AssertionError on timeout)."""
    start = time.monotonic()
    wait_for(predicate, timeout=timeout, interval=interval)
    return time.monotonic() - start
