"""Issue 8, "the routing state never lies": the daemon end to end on fakes (see
``test_daemon``): a rename in a reload is not an outage, a crashed task fails closed, a hung
flag file does not freeze the loop, and no BGP means nothing is reported announced."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from anycastd.bgp.protocol import NullSpeaker, PeerState
from anycastd.config import Config, load_config
from anycastd.core.health import ServiceState
from anycastd.engine.daemon import Daemon
from anycastd.engine.world import World
from anycastd.model import LoopbackObserved
from anycastd.observe.metrics import Metrics
from anycastd.observe.status import render_text
from anycastd.observe.systemd import Notifier
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import DAEMON_HEAD
from tests.unit.test_daemon import Node, fast, running, wait_for

A, B = "192.0.2.1/32", "192.0.2.2/32"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A))


def _rename(text: str, old: str, new: str) -> str:
    # the service's table headers only: prefixes, checks (their file paths) stay the same
    return text.replace(f"[services.{old}]", f"[services.{new}]").replace(
        f"[[services.{old}.checks]]", f"[[services.{new}.checks]]"
    ).replace(f"[services.{old}.ipvs]", f"[services.{new}.ipvs]").replace(
        f"[[services.{old}.ipvs.real_servers]]", f"[[services.{new}.ipvs.real_servers]]")


def _messages(caplog: pytest.LogCaptureFixture, since: int, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records[since:] if r.getMessage() == name]


# --------------------------------------------------------------------------- rename


async def test_reload_that_renames_an_up_service_keeps_it_up_and_announced(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node.flag("a-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: ()})
        assert node.daemon is not None
        assert node.speaker is not None
        mark, changes = len(caplog.records), len(node.speaker.timeline)
        passes = node.daemon.controller.passes if node.daemon.controller else 0

        node.path.write_text(_rename(node.text, "a", "dns"))
        node.daemon.request_reload()
        await wait_for(lambda: node.daemon is not None and node.daemon.reload_ok is True)
        assert node.state("dns") is ServiceState.UP
        # the reload pokes the controller: its pass on the new config is done
        await wait_for(lambda: node.daemon is not None and node.daemon.controller is not None
                       and node.daemon.controller.passes > passes)
        assert node.announced() == {A: ()}
        assert all(A in rib for _, rib in node.speaker.timeline[changes:])  # never withdrawn
        assert node.holds(A)
        assert _messages(caplog, mark, "service_transition") == []
        assert _messages(caplog, mark, "bgp_withdraw") == []
        (carried,) = _messages(caplog, mark, "reload_carried")
        assert carried.__dict__["fields"]["from"] == "a"
        assert carried.__dict__["fields"]["to"] == "dns"


async def test_reload_that_renames_a_service_carries_its_api_flags_and_their_file(
    node: Node,
) -> None:
    node.dry_run = False  # flags.json is written (to tmp_path); no [ipvs]: no sysctls
    node.flag("a-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: ()})
        assert node.daemon is not None
        node.daemon.set_flag("a", "draining", True)
        assert node.state("a") is ServiceState.DRAINING

        node.path.write_text(_rename(node.text, "a", "dns"))
        node.daemon.request_reload()
        await wait_for(lambda: node.daemon is not None and node.daemon.reload_ok is True)
        assert node.state("dns") is ServiceState.DRAINING
        saved = json.loads((node.tmp / "flags.json").read_text())
        assert saved == {"dns": {"maintenance": False, "draining": True}}


WEB = """
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "50ms"
timeout = "25ms"
rise = 1
fall = 1
drain_time = "0s"
[[services.web.checks]]
type = "file"
path = "{tmp}/web-ok"
[services.web.ipvs]
port = 80
min_healthy = 2
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
checks = [ {{ type = "file", path = "{tmp}/rs2-ok", rise = 3 }} ]
"""
WEB_PREFIX = "192.0.2.10/32"


async def test_reload_that_renames_a_service_carries_its_real_servers_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # min_healthy = 2: a real server reset to "not proven yet" would take the service down
    caplog.set_level(logging.INFO)
    node = Node(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + WEB.format(tmp=tmp_path))
    node.flag("web-ok").touch()
    node.flag("rs2-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {WEB_PREFIX: ()})
        assert node.daemon is not None
        assert node.speaker is not None
        mark, changes = len(caplog.records), len(node.speaker.timeline)
        passes = node.daemon.controller.passes if node.daemon.controller else 0

        node.path.write_text(_rename(node.text, "web", "www"))
        node.daemon.request_reload()
        await wait_for(lambda: node.daemon is not None and node.daemon.reload_ok is True)
        assert node.daemon.status()["real_servers"] == {"www/10.1.0.2:80": "up"}
        # the reload pokes the controller: its pass on the new config is done
        await wait_for(lambda: node.daemon is not None and node.daemon.controller is not None
                       and node.daemon.controller.passes > passes)
        assert all(WEB_PREFIX in rib for _, rib in node.speaker.timeline[changes:])
        assert node.announced() == {WEB_PREFIX: ()}
        assert _messages(caplog, mark, "real_server_transition") == []


async def test_a_rename_that_repoints_a_real_servers_check_does_not_carry_its_health(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Same prefixes and service checks, but the real server is now checked somewhere else:
    # its old UP says nothing about the new check (review finding on issue 8 #5).
    caplog.set_level(logging.INFO)
    node = Node(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + WEB.format(tmp=tmp_path))
    node.flag("web-ok").touch()
    node.flag("rs2-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {WEB_PREFIX: ()})
        assert node.daemon is not None
        mark = len(caplog.records)
        text = _rename(node.text, "web", "www").replace("rs2-ok", "rs2-elsewhere")
        node.path.write_text(text)
        node.daemon.request_reload()
        await wait_for(lambda: node.daemon is not None and node.daemon.reload_ok is True)
        assert node.daemon.status()["real_servers"] == {"www/10.1.0.2:80": "down"}
        assert _messages(caplog, mark, "reload_carried") == []


# --------------------------------------------------------------------------- no [bgp]


async def test_without_bgp_nothing_is_reported_announced(tmp_path: Path) -> None:
    text = DAEMON_HEAD.format(tmp=tmp_path).split("[bgp]")[0] + fast(tmp_path, "a", A)
    node = NoBgpNode(tmp_path, text, dry_run=False)  # the controller feeds the metrics
    node.flag("a-ok").touch()
    async with running(node):
        assert node.daemon is not None
        ctl = node.daemon.controller
        assert ctl is not None
        # the pass that published the address has finished (and exported its metrics)
        await wait_for(lambda: node.holds(A) and ctl.busy_since is None)
        assert node.state("a") is ServiceState.UP
        status = node.daemon.status()
        assert status["services"]["a"]["announced"] == []
        assert status["services"]["a"]["published"] == "none"
        assert status["bgp"] is None
        row = next(ln for ln in render_text(status).splitlines() if ln.startswith("a "))
        assert A not in row
        metrics = node.daemon.metrics.render().decode()
        assert f'anycastd_prefix_announced{{prefix="{A}",service="a"}} 0.0' in metrics


class NoBgpNode(Node):
    def world(self, config: Config, on_peer: Callable[[PeerState], None]) -> World:
        assert config.bgp is None
        return World(self.lo, self.ipvs, NullSpeaker(), None, dry_run=self.dry_run)


# --------------------------------------------------------------------------- hung flag stat


class BlockingStat:
    """A flag-file stat that hangs (a dead NFS mount) while ``stuck`` is clear."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.stuck.set()  # not stuck yet
        self.calls = 0

    def __call__(self, path: Path) -> bool:
        self.calls += 1
        self.stuck.wait(30.0)
        return path.exists()


async def test_a_hung_flag_file_stat_does_not_freeze_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stat = BlockingStat()
    node = StatNode(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A), stat=stat)
    node.flag("a-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {A: ()})
        assert node.daemon is not None
        stat.stuck.clear()
        calls = stat.calls
        await wait_for(lambda: stat.calls > calls)  # a read is now hanging in its thread
        node.flag("maintenance-a").touch()

        # the loop keeps its time: a 50 ms sleep is not held up by the hung stat
        for _ in range(20):
            started = time.monotonic()
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 0.5
            assert node.daemon.status()["services"]["a"]["state"] == "up"
        # the API's flag path reads no file either
        assert node.daemon.set_flag("a", "draining", True) is True
        assert node.state("a") is ServiceState.DRAINING
        node.daemon.set_flag("a", "draining", False)
        await wait_for(lambda: bool(_messages(caplog, 0, "flag_files_stuck")), within=5.0)
        assert stat.calls == calls + 1  # one stuck read, no pile of threads behind it
        assert node.state("a") is ServiceState.UP  # the previous value stands

        stat.stuck.set()  # the mount answers again: the flag follows the file
        await wait_for(lambda: node.state("a") is ServiceState.MAINTENANCE)


class OnePathHangs:
    """A stat that hangs for one path (its mount is dead) and answers for the others."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.release = threading.Event()

    def __call__(self, path: Path) -> bool:
        if path.name == self.hung:
            self.release.wait(30.0)
        return path.exists()


async def test_one_hung_flag_file_does_not_hide_the_others(tmp_path: Path) -> None:
    # An operator touching the maintenance file of "a" must be heard even while the mount
    # of "b"'s flag file hangs (review finding on issue 8 #9).
    stat = OnePathHangs("maintenance-b")
    text = DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A) + fast(tmp_path, "b", B)
    node = StatNode(tmp_path, text, stat=stat)
    node.flag("a-ok").touch()
    node.flag("b-ok").touch()
    try:
        async with running(node):
            await wait_for(lambda: node.announced() == {A: (), B: ()}, within=10.0)
            node.flag("maintenance-a").touch()
            await wait_for(lambda: node.state("a") is ServiceState.MAINTENANCE, within=8.0)
    finally:
        stat.release.set()


@dataclass
class StatNode(Node):
    stat: Callable[[Path], bool] = Path.exists

    def start(self) -> Daemon:
        return Daemon(load_config(self.path), self.path, notifier=Notifier(""),
                      metrics=Metrics(), world_factory=self.world, flag_exists=self.stat)


# --------------------------------------------------------------------------- crash


class BuggyLoopback(FakeLoopback):
    """A loopback whose next observe raises a bug (not an ActuatorError), once."""

    armed = False

    def observe(self) -> LoopbackObserved:
        if self.armed:
            self.armed = False
            raise ZeroDivisionError("a bug in the controller's world")
        return super().observe()


async def test_a_crashed_task_fails_closed_withdraws_everything_and_exits_70(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "b" has shutdown = "keep": an orderly stop keeps it, a crash must not
    text = (DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A)
            + fast(tmp_path, "b", B, shutdown="keep"))
    lo = BuggyLoopback()
    node = Node(tmp_path, text, lo=lo)
    node.flag("a-ok").touch()
    node.flag("b-ok").touch()
    async with running(node) as task:
        await wait_for(lambda: node.announced() == {A: (), B: ()})
        assert node.daemon is not None
        assert node.daemon.controller is not None
        lo.armed = True
        node.daemon.controller.poke()
        assert await asyncio.wait_for(task, 5.0) == 70

    assert node.announced() == {}
    assert not node.holds(A)
    assert not node.holds(B)
    (crash,) = [r for r in caplog.records if r.getMessage() == "task_crashed"]
    assert crash.levelno == logging.CRITICAL
    assert crash.__dict__["fields"]["task"] == "controller"
    assert "ZeroDivisionError: a bug in the controller's world" in (
        crash.__dict__["fields"]["traceback"])


async def test_a_bug_the_speaker_reports_fails_closed_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # what ExabgpSpeaker's on_fatal calls when one of its own loops died
    text = DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A, shutdown="keep")
    node = Node(tmp_path, text)
    node.flag("a-ok").touch()
    async with running(node) as task:
        await wait_for(lambda: node.announced() == {A: ()})
        assert node.daemon is not None
        node.daemon.crashed("speaker", RuntimeError("relay reader died"))
        assert await asyncio.wait_for(task, 5.0) == 70
    assert node.announced() == {}
    assert node.daemon.shutdown_complete is True
    (crash,) = [r for r in caplog.records if r.getMessage() == "task_crashed"]
    assert crash.__dict__["fields"]["task"] == "speaker"


class AlwaysBuggyLoopback(FakeLoopback):
    """Once armed, every observe raises a bug: the fail-closed shutdown's passes fail too."""

    armed = False

    def observe(self) -> LoopbackObserved:
        if self.armed:
            raise ZeroDivisionError("a bug on every pass")
        return super().observe()


async def test_a_crash_whose_fail_closed_stop_fails_too_still_withdraws_every_route(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The bug that crashed the controller may sit in the path the fail-closed stop uses:
    # the routes must go anyway (review finding on issue 8 #8).
    text = DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A, shutdown="keep")
    lo = AlwaysBuggyLoopback()
    node = Node(tmp_path, text, lo=lo)
    node.flag("a-ok").touch()
    async with running(node) as task:
        await wait_for(lambda: node.announced() == {A: ()})
        assert node.daemon is not None
        assert node.daemon.controller is not None
        lo.armed = True
        node.daemon.controller.poke()
        assert await asyncio.wait_for(task, 10.0) == 70
    assert node.announced() == {}
    assert [r for r in caplog.records if r.getMessage() == "last_resort_withdraw"]
