"""Policy-routing actions name their service and cause like every other action event
(review finding: the real-server and policy events carried neither)."""

from __future__ import annotations

import collections.abc
import logging

import pytest

from anycastd.actuators.policyroute import MemoryPolicyRoute
from anycastd.config import loads
from anycastd.core.health import ServiceState
from anycastd.engine.controller import Controller
from anycastd.engine.world import bgp_settings
from anycastd.testing.clock import FakeClock
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import CONTROLLER_HEAD

CFG = CONTROLLER_HEAD + """
[services.web]
prefixes = ["192.0.2.10/32"]
drain_time = "0s"
checks = [{type = "tcp", host = "127.0.0.1", port = 80}]
[services.web.policy_routing]
table = 100
routes = [{ to = "0.0.0.0/0", via = "10.0.0.254" }]
"""


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    out = []
    for r in caplog.records:
        if r.getMessage() == name:
            fields = getattr(r, "fields", {})
            assert isinstance(fields, collections.abc.Mapping)
            out.append(dict(fields))
    return out


async def test_policy_routing_events_name_the_service_and_the_transition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    config = loads(CFG)
    assert config.bgp is not None
    settings = bgp_settings(config.bgp)
    states = {"web": ServiceState.UP}
    policy = MemoryPolicyRoute()
    ctl = Controller(config, loopback=FakeLoopback(), ipvs=None,
                     speaker=FakeSpeaker(settings), bgp_settings=settings,
                     states=lambda: states, real_servers_up=dict, clock=FakeClock(),
                     policy=policy)
    try:
        await ctl.reconcile()
        added = _events(caplog, "policy_routing")
        assert len(added) == 2  # the table route, then the rule
        assert {e["service"] for e in added} == {"web"}
        assert all(str(e["cause"]).startswith("drift: ") for e in added), added
        caplog.clear()
        states["web"] = ServiceState.DOWN
        ctl.causes.note("web", "up->down: check failed")
        await ctl.reconcile()
        removed = _events(caplog, "policy_routing")
        assert [str(e["action"]).split()[0] for e in removed] == ["remove", "remove"]
        assert {e["service"] for e in removed} == {"web"}
        assert {e["cause"] for e in removed} == {"up->down: check failed"}
    finally:
        ctl.close()
