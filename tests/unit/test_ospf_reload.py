"""Reload and the OSPF actuator's settings (the in-memory twin, a fake speaker): a rejected
reload changes no OSPF setting; a change the actuator cannot apply live needs a restart; a
metric change is applied, between passes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anycastd.actuators.frr import OspfSettings
from anycastd.actuators.memory import MemoryOspf
from anycastd.bgp.protocol import PeerState
from anycastd.config import Config, load_config
from anycastd.engine.daemon import Daemon
from anycastd.engine.reload import reload
from anycastd.engine.world import World, bgp_settings, ospf_settings
from anycastd.errors import PermanentError
from anycastd.model import BgpSettings, OspfRoute
from anycastd.observe.metrics import Metrics
from anycastd.observe.systemd import Notifier
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.ipvs import FakeIpvs
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import DAEMON_HEAD
from tests.unit.test_daemon import running, wait_for

A = "192.0.2.1/32"

SERVICE = """
[services.a]
prefixes = ["{a}"]
interval = "50ms"
timeout = "25ms"
rise = 1
fall = 1
drain_time = "300ms"
[[services.a.checks]]
type = "file"
path = "{tmp}/a-ok"
[services.a.ospf]
metric = {{ up = {up} }}
"""


class RefusingSpeaker(FakeSpeaker):
    """A fake speaker whose settings update fails once armed (a [bgp] change ExaBGP
    refuses)."""

    refuse = False

    async def update_settings(self, settings: BgpSettings) -> None:
        if self.refuse:
            raise PermanentError("exabgp", "neighbor 127.0.0.2: refused")
        await super().update_settings(settings)


@dataclass
class OspfNode:
    tmp: Path
    text: str
    lo: FakeLoopback = field(default_factory=FakeLoopback)
    ospf: MemoryOspf | None = None
    ospf_class: type[MemoryOspf] = MemoryOspf
    speaker: RefusingSpeaker | None = None
    daemon: Daemon | None = None

    @property
    def path(self) -> Path:
        return self.tmp / "anycastd.toml"

    def world(self, config: Config, on_peer: Callable[[PeerState], None]) -> World:
        del on_peer
        assert config.bgp is not None
        settings = ospf_settings(config)
        assert settings is not None
        self.speaker = RefusingSpeaker(bgp_settings(config.bgp))
        self.ospf = self.ospf_class(settings)
        return World(self.lo, FakeIpvs(), self.speaker, bgp_settings(config.bgp),  # type: ignore[arg-type]
                     dry_run=True, ospf=self.ospf)

    def start(self) -> Daemon:
        return Daemon(load_config(self.path), self.path, notifier=Notifier(""),
                      metrics=Metrics(), world_factory=self.world)

    def published(self) -> frozenset[OspfRoute]:
        assert self.ospf is not None
        return self.ospf.observe()


def _text(tmp: Path, up: int = 10, extra: str = "") -> str:
    return DAEMON_HEAD.format(tmp=tmp) + extra + SERVICE.format(a=A, tmp=tmp, up=up)


def _rejected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.__dict__["fields"]["detail"] for r in caplog.records
            if r.getMessage() == "reload_rejected"]


async def test_a_reload_the_bgp_update_rejects_changes_no_ospf_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = OspfNode(tmp_path, _text(tmp_path))
    (tmp_path / "a-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)}, within=10.0)
        assert node.ospf is not None
        assert node.speaker is not None
        assert node.daemon is not None
        before = node.ospf.settings
        node.speaker.refuse = True
        node.path.write_text(_text(tmp_path, up=20).replace("65001", "65002"))
        await reload(node.daemon)
        assert _rejected(caplog) == ["[bgp]: neighbor 127.0.0.2: refused"]
        assert node.ospf.settings == before  # nothing half-applied
        node.daemon.controller.poke()  # type: ignore[union-attr]
        passes = node.daemon.controller.passes  # type: ignore[union-attr]
        await wait_for(lambda: node.daemon.controller.passes > passes)  # type: ignore[union-attr]
        assert node.published() == {OspfRoute(A, 10)}


@pytest.mark.parametrize(("key", "value"), [
    ("name", '"OTHER"'), ("instance", "2"), ("mode", '"render"\nrender_file = "/tmp/x.conf"'),
    ("pathspace", '"ns1"'), ("vty_dir", '"/run/other"'),
])
async def test_an_ospf_change_the_actuator_cannot_apply_live_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str, value: str
) -> None:
    node = OspfNode(tmp_path, _text(tmp_path))
    (tmp_path / "a-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)}, within=10.0)
        assert node.ospf is not None
        assert node.daemon is not None
        before = node.ospf.settings
        node.path.write_text(_text(tmp_path, up=20, extra=f"\n[ospf]\n{key} = {value}\n"))
        await reload(node.daemon)
        (detail,) = _rejected(caplog)
        assert f"ospf.{key}" in detail
        assert "needs a restart" in detail
        assert node.ospf.settings == before
        assert node.daemon.config.services["a"].ospf.metric.up == 10  # type: ignore[union-attr]


async def test_a_metric_change_is_applied_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = OspfNode(tmp_path, _text(tmp_path))
    (tmp_path / "a-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)}, within=10.0)
        assert node.daemon is not None
        assert node.ospf is not None
        node.path.write_text(_text(tmp_path, up=20, extra='\n[ospf]\ntimeout = "3s"\n'
                                   'metric_type = "type-1"\n'))
        await reload(node.daemon)
        assert _rejected(caplog) == []
        assert node.ospf.settings.metrics == (20, 100, 65535)
        assert node.ospf.settings.timeout == 3.0
        assert node.ospf.settings.metric_type == "type-1"
        await wait_for(lambda: node.published() == {OspfRoute(A, 20)}, within=10.0)


class GatedOspf(MemoryOspf):
    """Once armed, ``apply`` (in the controller's worker thread) waits for ``gate``."""

    def __init__(self, settings: OspfSettings) -> None:
        super().__init__(settings)
        self.armed = False
        self.gate = threading.Event()
        self.inside = threading.Event()

    def apply(self, routes: frozenset[OspfRoute]) -> None:
        if self.armed:
            self.inside.set()
            self.gate.wait(10.0)
        super().apply(routes)


async def test_new_ospf_settings_wait_for_the_pass_in_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = OspfNode(tmp_path, _text(tmp_path), ospf_class=GatedOspf)
    (tmp_path / "a-ok").touch()
    async with running(node):  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)}, within=10.0)
        ospf = node.ospf
        assert isinstance(ospf, GatedOspf)
        assert node.daemon is not None
        before = ospf.settings
        ospf.armed = True
        (tmp_path / "a-ok").unlink()  # the service goes down: a pass withdraws, in apply
        await wait_for(ospf.inside.is_set, within=10.0)
        node.path.write_text(_text(tmp_path, up=20))
        reloading = asyncio.create_task(reload(node.daemon))
        try:
            await asyncio.sleep(0.1)
            assert not reloading.done()  # waits for the pass
            assert ospf.settings == before  # not changed under the running apply
        finally:
            ospf.armed = False
            ospf.gate.set()
        await asyncio.wait_for(reloading, 10.0)
        assert _rejected(caplog) == []
        assert ospf.settings.metrics == (20, 100, 65535)
