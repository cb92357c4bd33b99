"""A real FRR ``bgpd`` peer in a network namespace, for tests and the demo.

bgpd runs alone (``-Z`` no zebra, ``-S`` stay root), receives routes and sends none
(a deny-all route-map out stops the echo back to the speaker). Queries go through vtysh's
JSON output. Started by PID, stopped by that PID.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anycastd.lab.netns import Netns, stop_process, wait_for

BGPD = "/usr/lib/frr/bgpd"


class FrrPeer:
    """bgpd alone (no zebra) in a namespace; receives routes, sends none (deny-all out)."""

    def __init__(
        self,
        ns: Netns,
        workdir: Path,
        *,
        asn: int,
        router_id: str,
        neighbors: Sequence[tuple[str, int]],
        graceful_restart: bool = False,
    ) -> None:
        self.ns = ns
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o777)  # noqa: S103 - a throwaway test dir bgpd must write to
        lines = [
            "hostname peer",
            "log stdout informational",
            f"router bgp {asn}",
            f" bgp router-id {router_id}",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " no bgp network import-check",
            *([" bgp graceful-restart"] if graceful_restart else []),
        ]
        for address, remote_as in neighbors:
            lines.append(f" neighbor {address} remote-as {remote_as}")
            lines.append(f" neighbor {address} timers connect 1")
        for family, v6 in (("ipv4", False), ("ipv6", True)):
            lines.append(f" address-family {family} unicast")
            for address, _ in neighbors:
                if (":" in address) == v6:
                    lines.append(f"  neighbor {address} activate")
                    lines.append(f"  neighbor {address} route-map DENY-ALL out")
            lines.append(" exit-address-family")
        lines += ["exit", "route-map DENY-ALL deny 10", "exit", ""]
        conf = self.dir / "bgpd.conf"
        conf.write_text("\n".join(lines))
        self.pidfile = self.dir / "bgpd.pid"
        self.log = open(self.dir / "bgpd.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = ns.popen(
            [BGPD, "-Z", "-S", "-f", str(conf), "--vty_socket", str(self.dir),
             "-i", str(self.pidfile), "-P", "0"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for((self.dir / "bgpd.vty").exists, timeout=10)

    def vtysh(self, command: str) -> str:
        proc = subprocess.run(
            ["vtysh", "--vty_socket", str(self.dir), "-c", command],
            capture_output=True, text=True, timeout=10, check=False,
        )
        return proc.stdout

    def json(self, command: str) -> Any:
        out = self.vtysh(command)
        try:
            return json.loads(out)
        except ValueError:
            return {}

    def rib(self, family: str = "ipv4") -> dict[str, dict[str, Any]]:
        """prefix -> best path (FRR's JSON) for routes received."""
        routes = self.json(f"show bgp {family} unicast json").get("routes", {})
        best: dict[str, dict[str, Any]] = {}
        for prefix, paths in routes.items():
            for path in paths:
                if path.get("removed"):  # withdrawn, still on bgpd's work queue
                    continue
                chosen = path.get("bestpath")
                if chosen is True or (isinstance(chosen, dict) and chosen.get("overall")):
                    best[prefix] = path
        return best

    def detail(self, prefix: str, family: str = "ipv4") -> dict[str, Any]:
        data = self.json(f"show bgp {family} unicast {prefix} json")
        paths = data.get("paths", [])
        return paths[0] if paths else {}

    def established(self, address: str) -> bool:
        info = self.json(f"show bgp neighbors {address} json").get(address, {})
        return bool(info.get("bgpState") == "Established")

    def updates_received(self, address: str) -> int:
        info = self.json(f"show bgp neighbors {address} json").get(address, {})
        return int(info.get("messageStats", {}).get("updatesRecv", 0))

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
