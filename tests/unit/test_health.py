"""core.health: rise/fall, policies, precedence, damping — with exact times."""

from __future__ import annotations

import math

import pytest

from anycastd.core.health import (
    CheckParams,
    CheckState,
    CheckTransition,
    DampingParams,
    Event,
    Flapped,
    Policy,
    PolicyKind,
    Reused,
    ServiceHealth,
    ServiceParams,
    ServiceState,
    ServiceTransition,
)


def svc(
    *checks: CheckParams,
    policy: str = "all",
    start: CheckState = CheckState.DOWN,
    damping: DampingParams | None = None,
    disabled: bool = False,
) -> ServiceHealth:
    params = ServiceParams(
        "dns",
        checks or (CheckParams("c0", rise=3, fall=2),),
        policy=Policy.parse(policy),
        start_state=start,
        damping=damping,
        disabled=disabled,
    )
    return ServiceHealth.initial(params, now=0.0)


def feed_many(
    h: ServiceHealth, check: str, oks: list[bool], t0: float, dt: float = 1.0
) -> tuple[ServiceHealth, list[Event]]:
    events: list[Event] = []
    for i, ok in enumerate(oks):
        h, ev = h.feed(check, ok, "ok" if ok else "status 503", t0 + i * dt)
        events.extend(ev)
    return h, events


# ---------------------------------------------------------------- checks


def test_start_down_needs_rise_consecutive_oks() -> None:
    h = svc()
    assert h.state is ServiceState.DOWN
    assert h.reason == "check c0 has no result yet"
    h, events = feed_many(h, "c0", [True, True], t0=1.0)
    assert h.state is ServiceState.DOWN
    assert h.check("c0").changing
    assert h.reason == "check c0 ok 2 of 3 times to rise"
    assert events == []
    h, ev = h.feed("c0", True, "ok", 3.0)
    assert h.state is ServiceState.UP
    assert h.since == 3.0
    assert not h.check("c0").changing
    assert ev == (
        CheckTransition("dns", "c0", CheckState.DOWN, CheckState.UP, "check c0 ok", 3.0),
        ServiceTransition("dns", ServiceState.DOWN, ServiceState.UP, "all 1 checks up", 3.0),
    )


def test_a_failure_resets_the_rise_streak() -> None:
    h, _ = feed_many(svc(), "c0", [True, True, False, True, True], t0=0.0)
    assert h.state is ServiceState.DOWN
    h, _ = h.feed("c0", True, "ok", 5.0)
    assert h.state is ServiceState.UP


def test_start_up_needs_fall_consecutive_failures() -> None:
    h = svc(start=CheckState.UP)
    assert h.state is ServiceState.UP
    h, ev = h.feed("c0", False, "status 503", 1.0)
    assert h.state is ServiceState.UP
    assert h.check("c0").changing
    assert ev == ()
    h, ev = h.feed("c0", False, "status 503", 2.0)
    assert h.state is ServiceState.DOWN
    assert h.reason == "check c0 failed 2 times: status 503"
    assert [type(e) for e in ev] == [CheckTransition, ServiceTransition]


def test_reason_counts_failures_beyond_fall() -> None:
    h, _ = feed_many(svc(start=CheckState.UP), "c0", [False] * 5, t0=0.0)
    assert h.reason == "check c0 failed 5 times: status 503"
    assert not h.check("c0").changing


def test_unknown_check_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        svc().feed("nope", True, "", 0.0)


# ---------------------------------------------------------------- policies


def three(policy: str) -> ServiceHealth:
    cs = tuple(CheckParams(f"c{i}", rise=1, fall=1) for i in range(3))
    return svc(*cs, policy=policy, start=CheckState.UP)


def test_policy_all_goes_down_with_one_check() -> None:
    h, _ = three("all").feed("c1", False, "refused", 1.0)
    assert h.state is ServiceState.DOWN
    assert h.reason == "check c1 failed 1 time: refused"


def test_policy_any_stays_up_until_the_last_check() -> None:
    h, _ = three("any").feed("c0", False, "refused", 1.0)
    h, _ = h.feed("c1", False, "refused", 2.0)
    assert h.state is ServiceState.UP
    assert h.reason == "1 of 3 checks up (policy any)"
    h, _ = h.feed("c2", False, "refused", 3.0)
    assert h.state is ServiceState.DOWN
    assert h.reason == "0 of 3 checks up, need 1: check c0 failed 1 time: refused"


def test_policy_at_least() -> None:
    h, _ = three("at-least 2").feed("c0", False, "refused", 1.0)
    assert h.state is ServiceState.UP
    h, _ = h.feed("c2", False, "timeout", 2.0)
    assert h.state is ServiceState.DOWN
    assert h.reason.startswith("1 of 3 checks up, need 2")


def test_policy_parse() -> None:
    assert Policy.parse("at-least 2") == Policy(PolicyKind.AT_LEAST, 2)
    assert str(Policy.parse(" any ")) == "any"
    with pytest.raises(ValueError, match="policy"):
        Policy.parse("most")
    with pytest.raises(ValueError, match="only 1 checks"):
        ServiceParams("x", (CheckParams("a"),), policy=Policy.parse("at-least 2"))


# ---------------------------------------------------------------- precedence


def test_precedence_disabled_maintenance_draining_health() -> None:
    h = svc(start=CheckState.UP)
    h, ev = h.set_draining(True, 1.0)
    assert (h.state, h.reason) == (ServiceState.DRAINING, "operator drain")
    assert ev == (
        ServiceTransition("dns", ServiceState.UP, ServiceState.DRAINING, "operator drain", 1.0),
    )
    h, _ = h.set_maintenance(True, 2.0, reason="maintenance file present")
    assert (h.state, h.reason) == (ServiceState.MAINTENANCE, "maintenance file present")
    h, _ = h.set_draining(False, 3.0)
    assert h.state is ServiceState.MAINTENANCE
    h, ev = h.set_maintenance(False, 4.0)
    assert h.state is ServiceState.UP
    assert ev[0].new is ServiceState.UP  # type: ignore[union-attr]
    assert svc(disabled=True, start=CheckState.UP).state is ServiceState.DISABLED


def test_draining_hides_health_but_counters_keep_running() -> None:
    h, _ = svc(start=CheckState.UP).set_draining(True, 0.0)
    h, _ = feed_many(h, "c0", [False, False], t0=1.0)
    assert h.state is ServiceState.DRAINING
    h, ev = h.set_draining(False, 5.0)
    assert h.state is ServiceState.DOWN
    assert ev == (
        ServiceTransition(
            "dns",
            ServiceState.DRAINING,
            ServiceState.DOWN,
            "check c0 failed 2 times: status 503",
            5.0,
        ),
    )


# ---------------------------------------------------------------- damping

DAMP = DampingParams(penalty=1000, half_life=60, suppress=2000, reuse=750, max_suppress=600)


def flapper(damping: DampingParams = DAMP) -> ServiceHealth:
    return svc(CheckParams("c0", rise=1, fall=1), start=CheckState.UP, damping=damping)


def test_one_flap_adds_penalty_without_suppressing() -> None:
    h, ev = flapper().feed("c0", False, "x", 10.0)
    assert Flapped("dns", 1000.0, None, 10.0) in ev
    h, _ = h.feed("c0", True, "ok", 11.0)
    assert h.state is ServiceState.UP
    assert h.penalty(70.0) == pytest.approx(500.0)


def test_second_flap_suppresses_until_decay_below_reuse() -> None:
    h = flapper()
    h, _ = h.feed("c0", False, "x", 0.0)
    h, _ = h.feed("c0", True, "ok", 0.0)
    h, ev = h.feed("c0", False, "x", 0.0)  # penalty 2000 >= suppress
    until = 60 * math.log2(2000 / 750)  # 84.90 s
    flap = next(e for e in ev if isinstance(e, Flapped))
    assert flap.suppressed_until is not None
    assert flap.penalty == 2000.0
    assert flap.suppressed_until == pytest.approx(until)
    assert h.next_wakeup(0.0) == flap.suppressed_until
    h, ev = h.feed("c0", True, "ok", 1.0)  # healthy again, but held down
    assert h.state is ServiceState.DOWN
    assert h.reason == f"suppressed by flap damping until penalty < 750 (t={until:.1f})"
    assert ev[-1] == CheckTransition(
        "dns", "c0", CheckState.DOWN, CheckState.UP, "check c0 ok", 1.0
    )
    h, ev = h.reevaluate(84.0)
    assert h.state is ServiceState.DOWN
    assert ev == ()
    h, ev = h.reevaluate(flap.suppressed_until)
    assert h.state is ServiceState.UP
    assert ev == (
        Reused("dns", flap.suppressed_until),
        ServiceTransition(
            "dns", ServiceState.DOWN, ServiceState.UP, "all 1 checks up", flap.suppressed_until
        ),
    )
    assert h.next_wakeup(100.0) is None


def test_penalty_is_capped_so_suppression_lasts_at_most_max_suppress() -> None:
    d = DampingParams(penalty=1000, half_life=60, suppress=2000, reuse=750, max_suppress=120)
    assert d.ceiling == pytest.approx(3000.0)
    h = flapper(d)
    for i in range(20):  # 20 flaps at t = 0..19
        h, _ = h.feed("c0", False, "x", float(i))
        h, _ = h.feed("c0", True, "ok", float(i) + 0.5)
    assert h.penalty(19.0) == pytest.approx(3000.0)
    assert h.damping.suppressed_until == pytest.approx(19.0 + 120.0)
    h, _ = h.reevaluate(19.0 + 120.0)
    assert h.state is ServiceState.UP


def test_flaps_in_maintenance_are_not_counted() -> None:
    h, _ = flapper().set_maintenance(True, 0.0)
    for i in range(5):
        h, _ = h.feed("c0", False, "x", float(i))
        h, _ = h.feed("c0", True, "ok", float(i) + 0.5)
    assert h.penalty(5.0) == 0.0
    h, _ = h.set_maintenance(False, 6.0)
    assert h.state is ServiceState.UP


# ---------------------------------------------------------------- reload


def test_reconfigure_keeps_counters_of_kept_checks() -> None:
    h, _ = feed_many(svc(), "c0", [True, True], t0=0.0)
    new = ServiceParams(
        "dns", (CheckParams("c0", rise=2, fall=2), CheckParams("c1", rise=1, fall=1))
    )
    h, ev = h.reconfigure(new, 5.0)
    assert h.check("c0").state is CheckState.UP  # 2 OKs now meet rise=2
    assert h.check("c1").state is CheckState.DOWN  # new check: start state
    assert ev == (
        CheckTransition("dns", "c0", CheckState.DOWN, CheckState.UP, "check c0 ok", 5.0),
    )
    assert h.state is ServiceState.DOWN


def test_a_flap_while_suppressed_extends_the_suppression_below_the_suppress_level() -> None:
    h = flapper()
    for t in (0.0, 0.0):
        h, _ = h.feed("c0", False, "x", t)
        h, _ = h.feed("c0", True, "ok", t)
    h, _ = h.feed("c0", False, "x", 70.0)  # penalty 2000 * 2^(-70/60) + 1000 = 1890 < 2000
    p = 2000 * 2 ** (-70 / 60) + 1000
    assert h.penalty(70.0) == pytest.approx(p)
    h, _ = h.feed("c0", True, "ok", 71.0)
    assert h.state is ServiceState.DOWN
    assert h.next_wakeup(71.0) == pytest.approx(70.0 + 60 * math.log2(p / 750))


