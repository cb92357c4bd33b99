"""OSPF: the render (FRR and Quagga golden files), the read-back and the command diff of
``actuators.frr``, its in-memory twin, and the planner's OSPF steps (order, drain, adoption).

Quagga is not packaged in Debian 12, so its dialect is pinned by a golden file only,
reviewed against Quagga's documented ``ospfd.conf`` grammar (docs/ospf.md says so). The FRR
golden file is also accepted by the real ``vtysh -C`` (tests/integration/test_ospf.py).
Regenerate a golden file by deleting it and running this module once.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from anycastd.actuators import frr
from anycastd.actuators.memory import MemoryOspf
from anycastd.bgp.protocol import NullSpeaker
from anycastd.cli import main
from anycastd.config import loads
from anycastd.core.desired import compute
from anycastd.core.health import ServiceState as S
from anycastd.core.plan import ControllerState, LoopbackStep, Observed, OspfStep, plan
from anycastd.engine.controller import Controller
from anycastd.errors import PermanentError
from anycastd.model import AddAddress, OspfRoute, RemoveAddress
from anycastd.testing.clock import FakeClock
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import BGP_HEAD

DATA = Path(__file__).parent / "data" / "ospf"

SETTINGS = frr.OspfSettings(metrics=(10, 100, 65535))
ROUTES = frozenset({OspfRoute("192.0.2.80/32", 10), OspfRoute("192.0.2.9/32", 10),
                    OspfRoute("198.51.100.1/32", 100)})


def golden(name: str, text: str) -> None:
    path = DATA / name
    if not path.exists():
        path.write_text(text)
        pytest.skip(f"wrote {path}: review it")
    assert text == path.read_text()


# --- render -----------------------------------------------------------------------------------


def test_the_frr_render_matches_its_golden_file() -> None:
    golden("frr.conf", frr.render(SETTINGS, ROUTES))


def test_the_quagga_render_matches_its_golden_file() -> None:
    settings = frr.OspfSettings(metrics=(10, 100, 65535), dialect="quagga",
                                metric_type="type-1")
    text = frr.render(settings, ROUTES)
    golden("quagga-ospfd.conf", text)
    assert "exit" not in text.split()  # Quagga ends blocks with "!", FRR with "exit"


def test_a_render_reads_back_as_the_routes_it_publishes() -> None:
    for dialect in ("frr", "quagga"):
        settings = frr.OspfSettings(metrics=(10, 100, 65535), dialect=dialect)
        assert frr.published(settings, frr.parse(settings, frr.render(settings, ROUTES))) == ROUTES


def test_an_instance_and_a_name_are_rendered_where_ospfd_expects_them() -> None:
    settings = frr.OspfSettings(name="EDGE", metrics=(5,), instance=3)
    text = frr.render(settings, {OspfRoute("192.0.2.1/32", 5)})
    assert "ip prefix-list EDGE-M5 seq 5 permit 192.0.2.1/32" in text
    assert "router ospf 3\n redistribute connected route-map EDGE\n" in text


def test_ipv6_prefixes_are_not_rendered_into_ospfv2() -> None:
    text = frr.render(SETTINGS, {OspfRoute("2001:db8::1/128", 10)})
    assert "2001:db8" not in text


# --- read-back --------------------------------------------------------------------------------

RUNNING = """\
frr version 8.4.4
router ospf
 ospf router-id 10.77.0.2
 redistribute connected route-map ANYCASTD-OSPF
 network 10.77.1.0/30 area 0
exit
!
ip prefix-list ANYCASTD-OSPF-M10 seq 5 permit 192.0.2.80/32
ip prefix-list OPERATOR seq 5 permit 10.0.0.0/8
!
route-map ANYCASTD-OSPF permit 10
 match ip address prefix-list ANYCASTD-OSPF-M10
 set metric 10
 set metric-type type-2
exit
!
route-map ANYCASTD-OSPF permit 20
 match ip address prefix-list ANYCASTD-OSPF-M100
 set metric 100
 set metric-type type-2
exit
!
route-map ANYCASTD-OSPF permit 30
 match ip address prefix-list ANYCASTD-OSPF-M65535
 set metric 65535
 set metric-type type-2
exit
!
route-map OPERATOR permit 10
exit
"""


def test_the_running_configuration_reads_back_as_anycastds_routes_only() -> None:
    parsed = frr.parse(SETTINGS, RUNNING)
    assert frr.published(SETTINGS, parsed) == {OspfRoute("192.0.2.80/32", 10)}
    assert frr.foreign_redistribute(SETTINGS, parsed) is None


@pytest.mark.parametrize("edit", [
    (" redistribute connected route-map ANYCASTD-OSPF\n", ""),  # the publication is off
    (" set metric 100\n", " set metric 1\n"),  # a hand-edited route-map
    ("route-map ANYCASTD-OSPF permit 30\n", "route-map ANYCASTD-OSPF deny 30\n"),
])
def test_a_damaged_scaffold_reads_back_as_metric_0_so_the_planner_repairs_it(
    edit: tuple[str, str],
) -> None:
    parsed = frr.parse(SETTINGS, RUNNING.replace(*edit))
    assert frr.published(SETTINGS, parsed) == {OspfRoute("192.0.2.80/32", 0)}


def test_a_foreign_redistribute_connected_is_reported() -> None:
    parsed = frr.parse(SETTINGS, RUNNING.replace("route-map ANYCASTD-OSPF\n network",
                                                 "route-map OPERATOR\n network"))
    assert frr.foreign_redistribute(SETTINGS, parsed) == (
        "redistribute connected route-map OPERATOR"
    )


# --- commands ---------------------------------------------------------------------------------


def _target(routes: set[OspfRoute]) -> frr.Parsed:
    return frr.parse(SETTINGS, frr.render(SETTINGS, routes))


def test_an_unchanged_render_needs_no_command() -> None:
    current = frr.parse(SETTINGS, RUNNING)
    assert frr.commands(SETTINGS, current, _target({OspfRoute("192.0.2.80/32", 10)})) == []


def test_a_metric_change_adds_to_the_new_list_before_leaving_the_old() -> None:
    current = frr.parse(SETTINGS, RUNNING)
    cmds = frr.commands(SETTINGS, current, _target({OspfRoute("192.0.2.80/32", 100)}))
    assert cmds == [
        "ip prefix-list ANYCASTD-OSPF-M100 permit 192.0.2.80/32",
        "no ip prefix-list ANYCASTD-OSPF-M10 permit 192.0.2.80/32",
    ]


def test_the_first_apply_builds_the_route_map_and_redistribute_never_touching_others() -> None:
    current = frr.parse(SETTINGS, "router ospf\n network 10.0.0.0/8 area 0\nexit\n")
    cmds = frr.commands(SETTINGS, current, _target({OspfRoute("192.0.2.80/32", 10)}))
    assert cmds[0] == "ip prefix-list ANYCASTD-OSPF-M10 permit 192.0.2.80/32"
    assert cmds[-3:] == ["router ospf", " redistribute connected route-map ANYCASTD-OSPF",
                         "exit"]
    assert not any("OPERATOR" in c or c.startswith("no ") for c in cmds)


def test_a_withdraw_removes_only_the_prefix_list_entry() -> None:
    cmds = frr.commands(SETTINGS, frr.parse(SETTINGS, RUNNING), _target(set()))
    assert cmds == ["no ip prefix-list ANYCASTD-OSPF-M10 permit 192.0.2.80/32"]


# --- the twin ---------------------------------------------------------------------------------


def test_the_twin_writes_once_per_change_and_reads_back_what_it_holds() -> None:
    twin = MemoryOspf(SETTINGS)
    twin.apply(ROUTES)
    twin.apply(ROUTES)
    assert twin.writes == 1
    assert twin.observe() == ROUTES
    twin.apply(frozenset())
    assert twin.observe() == frozenset()
    assert twin.writes == 2


def test_the_twin_refuses_a_foreign_redistribute_and_a_missing_router() -> None:
    foreign = MemoryOspf(SETTINGS, frr.Parsed(has_router=True,
                                              redistribute=("redistribute connected",)))
    with pytest.raises(PermanentError, match="already has"):
        foreign.apply(ROUTES)
    with pytest.raises(PermanentError, match="no 'router ospf'"):
        MemoryOspf(SETTINGS, frr.Parsed()).apply(ROUTES)


# --- the planner --------------------------------------------------------------------------------

CONFIG = """
[services.web]
prefixes = ["192.0.2.80/32"]
drain_time = "5s"
checks = [{type = "tcp", host = "127.0.0.1", port = 80}]
[services.web.ospf]
metric = { up = 10, draining = 100, maintenance = 65535 }
"""
UP = OspfRoute("192.0.2.80/32", 10)
DRAIN = OspfRoute("192.0.2.80/32", 100)


class World:
    """The executor over the twins: plan, run every step in order, observe again."""

    def __init__(self) -> None:
        self.config = loads(CONFIG)
        self.lo = FakeLoopback()
        self.ospf = MemoryOspf(SETTINGS)
        self.state = ControllerState()
        self.log: list[object] = []

    def observed(self) -> Observed:
        return Observed(loopback=self.lo.observe(), ospf=self.ospf.observe())

    def step(self, state: S, now: float, *, failing: bool = False) -> list[object]:
        desired = compute(self.config, {"web": state}, failing={"web"} if failing else ())
        result = plan(self.state, desired, self.observed(), now)
        self.state = result.state
        done: list[object] = []
        for s in result.steps:
            if isinstance(s, OspfStep):
                self.ospf.apply(s.routes)
                done.append(("ospf", tuple(sorted(s.routes))))
            elif isinstance(s, LoopbackStep):
                self.lo.apply(list(s.actions))
                done += [type(a).__name__ for a in s.actions]
            else:
                raise TypeError(s)
        return done


def test_bring_up_puts_the_address_before_the_route() -> None:
    w = World()
    assert w.step(S.UP, 0.0) == [AddAddress.__name__, ("ospf", (UP,))]
    assert w.step(S.UP, 1.0) == []  # converged: nothing more, no churn


def test_a_failure_removes_the_route_at_once_then_the_address() -> None:
    w = World()
    w.step(S.UP, 0.0)
    assert w.step(S.DOWN, 1.0, failing=True) == [("ospf", ()), RemoveAddress.__name__]


def test_maintenance_publishes_the_draining_metric_for_the_drain_then_removes() -> None:
    w = World()
    w.step(S.UP, 0.0)
    assert w.step(S.MAINTENANCE, 1.0) == [("ospf", (DRAIN,))]
    # the drain's 5 s start once the draining metric is read back (at 2.0)
    assert w.step(S.MAINTENANCE, 2.0) == []
    assert w.step(S.MAINTENANCE, 6.9) == []  # draining: the address stays
    assert w.observed().loopback.addresses
    assert w.step(S.MAINTENANCE, 7.0) == [("ospf", ()), RemoveAddress.__name__]


def test_a_restart_that_finds_the_route_published_adopts_it_without_a_step() -> None:
    w = World()
    w.step(S.UP, 0.0)
    again = World()
    again.lo, again.ospf = w.lo, MemoryOspf(SETTINGS, w.ospf.config)
    assert again.step(S.UP, 0.0) == []
    assert again.ospf.writes == 0


def test_a_hand_damaged_route_map_is_repaired_on_the_next_pass() -> None:
    w = World()
    w.step(S.UP, 0.0)
    damaged = dict(w.ospf.config.rmap)
    damaged[10] = ("permit", ("set metric 1",))
    w.ospf.config = frr.Parsed(w.ospf.config.lists, damaged, True, w.ospf.config.redistribute)
    assert w.step(S.UP, 1.0) == [("ospf", (UP,))]
    assert w.ospf.config.rmap == frr.parse(SETTINGS, frr.render(SETTINGS, [UP])).rmap


def test_bgp_and_ospf_withdraw_before_the_address_goes() -> None:
    config = loads(BGP_HEAD + CONFIG)
    desired = compute(config, {"web": S.UP})
    assert desired.prefixes[0].route is not None
    assert desired.ospf_routes == {UP}
    lo = FakeLoopback()
    lo.apply([AddAddress(desired.prefixes[0].address)])  # type: ignore[arg-type]
    observed = Observed(loopback=lo.observe(), announced=frozenset({desired.prefixes[0].route}),
                        ospf=frozenset({UP}))
    down = plan(ControllerState(), compute(config, {"web": S.DOWN}, failing={"web"}),
                observed, 0.0)
    kinds = [type(s).__name__ for s in down.steps]
    assert kinds == ["BgpStep", "OspfStep", "LoopbackStep"]


# --- the CLI ----------------------------------------------------------------------------------


def test_ospf_render_prints_what_would_be_applied_for_a_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "anycastd.toml"
    conf.write_text('[ospf]\nmetric_type = "type-1"\n' + CONFIG)
    assert main(["ospf", "render", "-c", str(conf), "--state", "draining"]) == 0
    out = capsys.readouterr().out
    assert "ip prefix-list ANYCASTD-OSPF-M100 seq 5 permit 192.0.2.80/32" in out
    assert " set metric-type type-1" in out
    assert main(["ospf", "render", "-c", str(conf), "--state", "down"]) == 0
    assert "ip prefix-list" not in capsys.readouterr().out


def test_ospf_render_without_an_ospf_service_is_a_usage_error(tmp_path: Path) -> None:
    conf = tmp_path / "anycastd.toml"
    conf.write_text(CONFIG.replace("[services.web.ospf]\nmetric = { up = 10, draining = 100, "
                                   "maintenance = 65535 }\n", ""))
    assert main(["ospf", "render", "-c", str(conf)]) == 64


def test_quagga_apply_is_refused_by_the_config_with_the_key(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    conf = tmp_path / "anycastd.toml"
    conf.write_text('[ospf]\ndialect = "quagga"\n' + CONFIG)
    assert main(["check-config", "-c", str(conf)]) == 78
    err = capsys.readouterr().err
    assert f"{conf}: ospf" in err
    assert 'supports mode = "render" only' in err
    assert "Traceback" not in err


# --- the controller ---------------------------------------------------------------------------


def _controller(states: dict[str, S], ospf: MemoryOspf, lo: FakeLoopback) -> Controller:
    return Controller(loads(CONFIG), loopback=lo, ipvs=None, speaker=NullSpeaker(),
                      bgp_settings=None, states=lambda: states, real_servers_up=dict,
                      clock=FakeClock(), ospf=ospf)


def test_the_controller_publishes_and_a_failed_removal_keeps_the_address_until_it_succeeds(
) -> None:
    async def scenario() -> None:
        states = {"web": S.UP}
        lo, ospf = FakeLoopback(), MemoryOspf(SETTINGS)
        ctl = _controller(states, ospf, lo)
        try:
            await ctl.reconcile()
            assert ospf.observe() == {UP}
            assert lo.observe().addresses - FakeLoopback().observe().addresses
            states["web"] = S.DOWN
            ospf.fail_next(PermanentError("frr", "the daemon said no"))
            await ctl.reconcile()
            # the removal failed: the route is still published, so the address stays
            assert ospf.observe() == {UP}
            assert any(a.ip == ipaddress.ip_address("192.0.2.80")
                       for a in lo.observe().addresses)
            await ctl.reconcile()  # the next pass (the reconcile timer) finishes the job
            assert ospf.observe() == frozenset()
            assert not any(a.ip == ipaddress.ip_address("192.0.2.80")
                           for a in lo.observe().addresses)
        finally:
            ctl.close()

    asyncio.run(scenario())
