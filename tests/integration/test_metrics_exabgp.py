"""/metrics of a real ``anycastd run`` with its managed ExaBGP and a real FRR peer: the
route series say what the peer is really offered, with the state whose attributes it
carries, and promtool accepts the scrape. Topology: ``controller_support``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.controller_support import API_PORT, Service, Topo, topology, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

PREFIX = "192.0.2.72/32"


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topo]:
    with topology(tmp_path) as t:
        yield t


def scrape(topo: Topo) -> str:
    return topo.edge.exec([sys.executable, "-c",
                           "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
                           f"'http://127.0.0.1:{API_PORT}/metrics',timeout=5).read().decode())"],
                          check=False)  # fmt: skip


def series(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(s.labels.items()): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name}  # fmt: skip


def route_states(topo: Topo) -> dict[str, str]:
    """peer -> attributes_state of PREFIX in anycastd's route series."""
    out = {}
    for labels, value in series(scrape(topo), "anycastd_route_announced").items():
        lab = dict(labels)
        if lab["prefix"] == PREFIX and value == 1:
            out[lab["peer"]] = lab["attributes_state"]
    return out


def community(topo: Topo) -> str:
    return str(topo.peer.frr.detail(PREFIX).get("community", {}).get("string", ""))


def test_route_series_follow_what_the_peer_is_offered_through_a_drain(topo: Topo) -> None:
    svc = Service("web", PREFIX, 8142, drain_time="4s")
    topo.listener(svc.port)
    topo.anycastd(topo.write_config([svc]))
    wait_for(lambda: topo.peer.has(PREFIX), timeout=30)
    wait_for(lambda: route_states(topo) == {"r1": "up"}, timeout=10)
    text = scrape(topo)
    assert series(text, "anycastd_bgp_peer_up") == {frozenset({("peer", "r1")}): 1.0}
    assert series(text, "anycastd_prefix_announced")[
        frozenset({("service", "web"), ("prefix", PREFIX)})] == 1.0

    # a real scrape passes promtool's lint
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not found: run scripts/bootstrap"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""

    # maintenance: while the drain runs, the peer holds the demoted path and the series says
    # it carries the draining attributes
    (topo.tmp / "maint-web").touch()
    wait_for(lambda: "graceful-shutdown" in community(topo), timeout=10, interval=0.02)
    wait_for(lambda: route_states(topo) == {"r1": "draining"}, timeout=2)
    assert "graceful-shutdown" in community(topo)  # still draining (drain_time 4 s)
    # after the drain: withdrawn at the peer, and no route series left
    wait_for(lambda: not topo.peer.has(PREFIX), timeout=15)
    wait_for(lambda: route_states(topo) == {}, timeout=10)
    text = scrape(topo)
    assert series(text, "anycastd_prefix_announced")[
        frozenset({("service", "web"), ("prefix", PREFIX)})] == 0.0
    assert series(text, "anycastd_service_maintenance") == {frozenset({("service", "web")}): 1.0}
