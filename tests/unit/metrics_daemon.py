"""A realistic daemon run on fakes whose scrape the metrics and monitoring tests read.

Two services through the whole daemon (schedulers, controller, flags) on a world of
FakeLoopback + FakeIpvs + FakeSpeaker: ``web`` with IPVS (two real servers, one checked),
flap damping and a ``min_healthy`` guard; ``dns`` put in drain through the API, so it is
announced with its draining attributes. The BGP session flaps once. The registry is the
daemon's own, with the process collectors, like ``run_daemon`` builds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from anycastd.bgp.protocol import PeerState
from anycastd.config import Config, load_config
from anycastd.engine.daemon import Daemon
from anycastd.engine.world import World, bgp_settings
from anycastd.model import GRACEFUL_SHUTDOWN, VirtualService
from anycastd.observe.metrics import Metrics
from anycastd.observe.systemd import Notifier
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.ipvs import FakeIpvs
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import DAEMON_HEAD

WEB, DNS = "192.0.2.10/32", "192.0.2.53/32"
WEB_VS = VirtualService.tcp("192.0.2.10", 80)

SERVICES = """
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "50ms"
timeout = "25ms"
rise = 1
fall = 1
drain_time = "0s"
[services.web.damping]
half_life = "60s"
[[services.web.checks]]
type = "file"
path = "{tmp}/web-ok"
[services.web.ipvs]
port = 80
min_healthy = 1
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
weight = 5
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
checks = [ {{ type = "file", path = "{tmp}/rs2-ok" }} ]

[services.dns]
prefixes = ["192.0.2.53/32"]
interval = "50ms"
timeout = "25ms"
rise = 1
fall = 1
drain_time = "0s"
[services.dns.bgp.up]
med = 10
[services.dns.bgp.draining]
med = 500
[[services.dns.checks]]
type = "file"
path = "{tmp}/dns-ok"
"""


@dataclass
class Run:
    daemon: Daemon
    speaker: FakeSpeaker
    ipvs: FakeIpvs
    text: str  # the scrape, in the Prometheus text format


async def _wait(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


async def realistic_run(tmp: Path) -> Run:
    """Run the daemon through the scenario above and scrape it (then stop it)."""
    for name in ("web-ok", "rs2-ok", "dns-ok"):
        (tmp / name).touch()
    path = tmp / "anycastd.toml"
    text = DAEMON_HEAD.format(tmp=tmp) + SERVICES.format(tmp=tmp)
    path.write_text(text)
    lo, ipvs = FakeLoopback(), FakeIpvs()
    speakers: list[FakeSpeaker] = []

    def world(config: Config, on_peer: Callable[[PeerState], None]) -> World:
        assert config.bgp is not None
        speaker = FakeSpeaker(bgp_settings(config.bgp), on_peer_change=on_peer)
        speakers.append(speaker)
        # not a dry run: the controller feeds the metrics (flags.json goes to tmp; the
        # sysctls the nat real servers need are only read, global.manage_sysctls is off)
        return World(lo, ipvs, speaker, bgp_settings(config.bgp), dry_run=False)  # type: ignore[arg-type]

    metrics = Metrics(CollectorRegistry(auto_describe=True), process=True)
    daemon = Daemon(load_config(path), path, notifier=Notifier(""), metrics=metrics,
                    world_factory=world)
    task = asyncio.create_task(daemon.run())
    try:
        await _wait(lambda: bool(speakers) and {p for _, p in speakers[0].rib} == {WEB, DNS})
        speaker = speakers[0]
        ipvs.set_connections(WEB_VS, "10.1.0.1", 80, active=3, inactive=7)
        speaker.set_peer("127.0.0.2", up=False)  # a session flap
        speaker.set_peer("127.0.0.2", up=True)
        assert daemon.set_flag("dns", "drain", True)
        await _wait(lambda: GRACEFUL_SHUTDOWN in speaker.announced[DNS].communities)
        assert daemon.controller is not None
        passes = daemon.controller.passes
        daemon.controller.poke()  # one more pass observes the drained route and connections
        await _wait(lambda: daemon.controller is not None and daemon.controller.passes > passes)
        return Run(daemon, speaker, ipvs, metrics.render().decode())
    finally:
        if not task.done():
            daemon.request_stop()
            assert await asyncio.wait_for(task, 5.0) == 0
