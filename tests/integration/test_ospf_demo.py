"""``anycastd demo --ospf``, run as a user runs it: its story in order, exit 0, and nothing of
it left behind (namespaces, FRR pathspace directories)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anycastd.lab import ospf as lab
from anycastd.lab.netns import run

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not lab.available(), reason="needs FRR (zebra, ospfd, vtysh)"),
]

ANYCASTD = str(Path(sys.executable).parent / "anycastd")
STORY = [
    "edge1 (metric 10) and edge2 (metric 20) publish 192.0.2.80/32 into OSPF",
    "router: 192.0.2.80/32 via edge1 (the lower metric)",
    "client: connect 192.0.2.80:8480 -> 'hello from edge1'",
    "stopping the web service on edge1",
    "edge1 anycastd: anycastd.controller event=ospf_withdraw prefix=192.0.2.80/32",
    "router: 192.0.2.80/32 is now via edge2 only",
    "client: connect 192.0.2.80:8480 -> 'hello from edge2'",
    "192.0.2.80/32 is gone from the router's table",
    "back: 192.0.2.80/32 via edge1 (metric 10); edge2 publishes it at metric 20",
    "client: connect 192.0.2.80:8480 -> 'hello from edge1'",
    "done: the prefix followed the service's health, over OSPF",
]


def test_the_ospf_demo_tells_its_story_and_cleans_up() -> None:
    proc = subprocess.Popen([ANYCASTD, "demo", "--ospf"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    lines = [ln.split("] ", 1)[-1] for ln in out.splitlines()]
    at = 0
    for step in STORY:  # in this order (a step may repeat an earlier line's text)
        # a daemon's log line goes on with fields of its own (service=, cause=)
        found = [i for i, ln in enumerate(lines) if i >= at and (
            ln == step or ln.startswith(step + " "))]
        assert found, (step, lines)
        at = found[0] + 1
    workdir = out.split("work dir (configs, logs): ", 1)[1].split(";", 1)[0]
    assert not Path(workdir).exists()
    # the demo's namespaces carry its PID (anycastd.lab.netns.unique_name)
    mine = f"-{proc.pid % 100000}-"
    assert not [n for n in run(["ip", "netns", "list"]).split() if mine in n]
    assert not list(lab.FRR_RUN.glob(f"acdt-*{mine}*"))
