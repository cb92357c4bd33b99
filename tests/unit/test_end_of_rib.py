"""End-of-RIB (managed mode, graceful restart) follows the controller's whole pass.

The controller drives the real speaker, which talks to a scripted ExaBGP on a real socket
pair. A session that comes up owes its End-of-RIB once; it is sent when a pass has ended:
after the pass's last step (never between a withdraw step and the announce step after it),
and also when the pass planned nothing at all (every service down: without it a
graceful-restart helper would keep this node's stale routes until its stale timer).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.config import loads
from anycastd.core.health import ServiceState
from anycastd.engine.controller import Controller
from anycastd.engine.world import bgp_settings
from anycastd.testing.clock import FakeClock
from anycastd.testing.loopback import FakeLoopback
from tests.unit.test_exabgp_speaker import until

CONFIG = loads("""
[global]
node = "t"
reconcile_interval = "30s"
[api]
enabled = false
[bgp]
router_id = "192.0.2.1"
local_as = 65001
graceful_restart = "5s"
[[bgp.neighbors]]
address = "10.0.0.1"
peer_as = 65000
local_address = "10.0.0.2"
[services.web]
prefixes = ["192.0.2.10/32"]
[[services.web.checks]]
type = "file"
path = "/nonexistent/web"
[services.dns]
prefixes = ["192.0.2.53/32"]
[[services.dns.checks]]
type = "file"
path = "/nonexistent/dns"
""")
WEB, DNS = "192.0.2.10/32", "192.0.2.53/32"
EOR = "neighbor 10.0.0.1 announce eor ipv4 unicast"
READ_BACK = "show adj-rib out extensive"
HEADER = ("neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 "
          "router-id 192.0.2.1 family-allowed in-open ")


class Exabgp:
    """Plays the relay and ExaBGP behind it: answers ``done``, keeps its adj-rib-out from
    the commands, and records every line the speaker wrote."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 announced: set[str]) -> None:
        self.reader, self.writer = reader, writer
        self.announced = set(announced)
        self.lines: list[str] = []

    async def serve(self) -> None:
        self.writer.write(b"relay hello 4242\n")
        while line := await self.reader.readline():
            cmd = line.decode().strip()
            self.lines.append(cmd)
            words = cmd.split()
            if cmd == READ_BACK:
                for prefix in sorted(self.announced):
                    self.writer.write(
                        f"{HEADER}ipv4 unicast {prefix} next-hop 10.0.0.2\n".encode())
            elif "route" in words or "nlri" in words:
                at = words.index("nlri") if "nlri" in words else words.index("route")
                prefixes = set(words[at + 1:]) if "nlri" in words else {words[at + 1]}
                if "withdraw" in words:
                    self.announced -= prefixes
                else:
                    self.announced |= prefixes
            self.writer.write(b"done\n")
            await self.writer.drain()

    def session_up(self) -> None:
        self.writer.write(json.dumps({"type": "state", "neighbor": {
            "address": {"peer": "10.0.0.1"}, "state": "up"}}).encode() + b"\n")

    def index(self, prefix: str, verb: str) -> int:
        return next(i for i, line in enumerate(self.lines)
                    if f" {verb} " in line and prefix in line.split())


class Node:
    def __init__(self, tmp_path: Path) -> None:
        assert CONFIG.bgp is not None
        self.resyncs = 0
        self.speaker = ExabgpSpeaker(bgp_settings(CONFIG.bgp), tmp_path,
                                     on_resync=self._resynced)
        self.states: dict[str, ServiceState] = {}
        self.ctl = Controller(
            CONFIG, loopback=FakeLoopback("lo"), ipvs=None, speaker=self.speaker,
            bgp_settings=bgp_settings(CONFIG.bgp), states=lambda: dict(self.states),
            real_servers_up=dict, clock=FakeClock(),
        )

    def _resynced(self) -> None:
        self.resyncs += 1


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    yield n
    n.ctl.close()


async def session(node: Node, announced: set[str]) -> tuple[Exabgp, list[asyncio.Task[None]]]:
    """The relay connects (ExaBGP offering ``announced``), then the session comes up: both
    read-backs done, the End-of-RIB owed."""
    ours, theirs = socket.socketpair()
    s_reader, s_writer = await asyncio.open_unix_connection(sock=ours)
    r_reader, r_writer = await asyncio.open_unix_connection(sock=theirs)
    exa = Exabgp(r_reader, r_writer, announced)
    tasks = [asyncio.create_task(node.speaker._resync_loop()),
             asyncio.create_task(node.speaker._on_connect(s_reader, s_writer)),
             asyncio.create_task(exa.serve())]
    await until(lambda: node.resyncs == 1)
    exa.session_up()
    await until(lambda: node.resyncs == 2)
    assert exa.lines == [READ_BACK, READ_BACK]
    return exa, tasks


async def close(exa: Exabgp, tasks: list[asyncio.Task[None]]) -> None:
    exa.writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_pass_that_plans_nothing_still_sends_the_end_of_rib(node: Node) -> None:
    # a restart with every service down: nothing to announce, nothing to withdraw
    node.states = {"web": ServiceState.DOWN, "dns": ServiceState.DOWN}
    exa, tasks = await session(node, announced=set())
    plan = await node.ctl.reconcile()
    assert plan.steps == ()
    assert exa.lines == [READ_BACK, READ_BACK, EOR]
    await node.ctl.reconcile()  # owed once a session: the next pass sends nothing
    assert exa.lines == [READ_BACK, READ_BACK, EOR]
    await close(exa, tasks)


async def test_the_end_of_rib_follows_the_announcements_of_a_two_step_pass(
        node: Node) -> None:
    # ExaBGP still offers web (down now); dns came up: withdraw web, then announce dns
    node.states = {"web": ServiceState.DOWN, "dns": ServiceState.UP}
    exa, tasks = await session(node, announced={WEB})
    await node.ctl.reconcile()
    assert exa.announced == {DNS}
    assert exa.index(WEB, "withdraw") < exa.index(DNS, "announce") < exa.lines.index(EOR)
    assert exa.lines.count(EOR) == 1
    await close(exa, tasks)
