"""The last-resort withdraw (after a crash whose fail-closed stop failed too) withdraws the
OSPF routes as well as the BGP ones (the in-memory OSPF twin, a fake speaker)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from anycastd.actuators.frr import OspfSettings
from anycastd.actuators.memory import MemoryOspf
from anycastd.engine.lastresort import withdraw_ospf
from anycastd.errors import TransientError
from anycastd.model import LoopbackObserved, OspfRoute
from anycastd.testing.loopback import FakeLoopback
from tests.unit.test_daemon import running, wait_for
from tests.unit.test_ospf_reload import A, OspfNode, _text


class AlwaysBuggyLoopback(FakeLoopback):
    """Once armed, every observe raises a bug: the fail-closed shutdown's passes fail too."""

    armed = False

    def observe(self) -> LoopbackObserved:
        if self.armed:
            raise ZeroDivisionError("a bug on every pass")
        return super().observe()


async def test_a_crash_whose_fail_closed_stop_fails_too_withdraws_the_ospf_routes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lo = AlwaysBuggyLoopback()
    node = OspfNode(tmp_path, _text(tmp_path), lo=lo)
    (tmp_path / "a-ok").touch()
    async with running(node) as task:  # type: ignore[arg-type]
        await wait_for(lambda: node.published() == {OspfRoute(A, 10)}, within=10.0)
        assert node.daemon is not None
        assert node.daemon.controller is not None
        lo.armed = True
        node.daemon.controller.poke()
        assert await asyncio.wait_for(task, 20.0) == 70
    assert node.published() == frozenset()
    assert [r for r in caplog.records if r.getMessage() == "last_resort_ospf_withdraw"]


class HangingOspf(MemoryOspf):
    def __init__(self) -> None:
        super().__init__(OspfSettings(metrics=(10,)))
        self.release = threading.Event()

    def apply(self, routes: frozenset[OspfRoute]) -> None:
        self.release.wait(30.0)
        super().apply(routes)


async def test_the_last_resort_ospf_withdraw_is_bounded_and_logs_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hanging = HangingOspf()
    try:
        assert await asyncio.wait_for(withdraw_ospf(hanging, 0.2), 5.0) is False
    finally:
        hanging.release.set()
    failing = MemoryOspf(OspfSettings(metrics=(10,)))
    failing.apply(frozenset({OspfRoute(A, 10)}))
    failing.fail_next(TransientError("frr", "ospfd did not answer within 10s"))
    assert await asyncio.wait_for(withdraw_ospf(failing, 5.0), 5.0) is False
    errors = [r.__dict__["fields"]["error"] for r in caplog.records
              if r.getMessage() == "last_resort_ospf_withdraw_failed"]
    assert errors == ["no answer within 0.2s", "frr: ospfd did not answer within 10s"]
    assert all(r.levelno == logging.CRITICAL for r in caplog.records
               if r.getMessage() == "last_resort_ospf_withdraw_failed")
