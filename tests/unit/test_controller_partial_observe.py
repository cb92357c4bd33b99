"""A routing daemon (or the policy-routing table) that cannot be read must not hold back a
BGP withdraw: the controller plans with what it last knew there, withdraws first, and
retries the rest (review finding after the OSPF merge: one unreadable ospfd froze every
pass, so a failed BGP-only service stayed announced)."""

from __future__ import annotations

from anycastd.actuators import frr
from anycastd.actuators.memory import MemoryOspf
from anycastd.config import loads
from anycastd.core.health import ServiceState
from anycastd.core.plan import OspfStep
from anycastd.engine.controller import Controller
from anycastd.engine.world import bgp_settings
from anycastd.errors import TransientError
from anycastd.model import OspfRoute
from anycastd.testing.clock import FakeClock
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import CONTROLLER_HEAD

CFG = CONTROLLER_HEAD + """
[services.dns]
prefixes = ["192.0.2.53/32"]
drain_time = "0s"
checks = [{type = "tcp", host = "127.0.0.1", port = 53}]
[services.web]
prefixes = ["192.0.2.80/32"]
drain_time = "0s"
checks = [{type = "tcp", host = "127.0.0.1", port = 80}]
[services.web.ospf]
metric = { up = 10, draining = 100, maintenance = 65535 }
"""


class UnreadableOspf(MemoryOspf):
    """ospfd restarting: its vty socket is gone, reads and writes fail."""

    down = False

    def observe(self) -> frozenset[OspfRoute]:
        if self.down:
            raise TransientError("frr", "ospfd.vty: no such socket (ospfd restarting)")
        return super().observe()

    def apply(self, routes: frozenset[OspfRoute]) -> None:
        if self.down:
            raise TransientError("frr", "ospfd.vty: no such socket (ospfd restarting)")
        super().apply(routes)


def _world() -> tuple[Controller, FakeLoopback, UnreadableOspf, FakeSpeaker,
                      dict[str, ServiceState]]:
    config = loads(CFG)
    assert config.bgp is not None
    settings = bgp_settings(config.bgp)
    states = {"dns": ServiceState.UP, "web": ServiceState.UP}
    lo = FakeLoopback()
    ospf = UnreadableOspf(frr.OspfSettings(metrics=(10, 100, 65535)))
    speaker = FakeSpeaker(settings)
    ctl = Controller(config, loopback=lo, ipvs=None, speaker=speaker, bgp_settings=settings,
                     states=lambda: states, real_servers_up=dict, clock=FakeClock(),
                     ospf=ospf)
    return ctl, lo, ospf, speaker, states


async def test_an_unreadable_ospfd_does_not_hold_back_a_bgp_withdraw() -> None:
    ctl, lo, ospf, speaker, states = _world()
    try:
        await ctl.reconcile()
        assert sorted(r.prefix for r in speaker.routes) == ["192.0.2.53/32", "192.0.2.80/32"]
        ospf.down = True
        states["dns"] = ServiceState.DOWN
        await ctl.reconcile()
        assert sorted(r.prefix for r in speaker.routes) == ["192.0.2.80/32"]
        assert "192.0.2.53/32" not in {str(a) for a in lo.observe().owned}
    finally:
        ctl.close()


async def test_an_ospf_service_keeps_its_address_until_ospfd_says_the_route_is_gone() -> None:
    ctl, lo, ospf, speaker, states = _world()
    try:
        await ctl.reconcile()
        ospf.down = True
        states["web"] = ServiceState.DOWN
        await ctl.reconcile()
        # withdrawn over BGP at once; over OSPF the removal failed, so the address (and
        # with it the connected route ospfd may still publish) stays until it succeeds
        assert sorted(r.prefix for r in speaker.routes) == ["192.0.2.53/32"]
        assert any(str(a).startswith("192.0.2.80") for a in lo.observe().owned)
        ospf.down = False
        await ctl.reconcile()
        assert ospf.observe() == frozenset()
        assert not any(str(a).startswith("192.0.2.80") for a in lo.observe().owned)
        assert ctl.last_plan is not None
        assert not any(isinstance(s, OspfStep) for s in ctl.last_plan.steps)
    finally:
        ctl.close()
