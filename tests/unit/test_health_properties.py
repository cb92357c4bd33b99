"""core.health invariants under random inputs (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from anycastd.core.health import (
    CheckParams,
    CheckState,
    DampingParams,
    Policy,
    ServiceHealth,
    ServiceParams,
    ServiceState,
)

SETTINGS = settings(max_examples=150, deadline=None)


@dataclass(frozen=True)
class Feed:
    check: int
    ok: bool


@dataclass(frozen=True)
class Flag:
    kind: str  # "maintenance" | "draining"
    on: bool


@dataclass(frozen=True)
class Tick:
    pass


ops = st.one_of(
    st.builds(Feed, st.integers(0, 2), st.booleans()),
    st.builds(Feed, st.integers(0, 2), st.booleans()),  # weight feeds up
    st.builds(Flag, st.sampled_from(["maintenance", "draining"]), st.booleans()),
    st.builds(Tick),
)
steps = st.lists(st.tuples(st.floats(0, 30, allow_nan=False), ops), max_size=60)
dampings = st.builds(
    DampingParams,
    penalty=st.sampled_from([500.0, 1000.0]),
    half_life=st.sampled_from([5.0, 15.0, 60.0]),
    suppress=st.sampled_from([1500.0, 2000.0]),
    reuse=st.sampled_from([500.0, 750.0]),
    max_suppress=st.sampled_from([10.0, 60.0, 600.0]),
)


def apply(h: ServiceHealth, t: float, op: Feed | Flag | Tick) -> ServiceHealth:
    if isinstance(op, Feed):
        return h.feed(f"c{op.check}", op.ok, "r", t).health
    if isinstance(op, Flag):
        setter = h.set_maintenance if op.kind == "maintenance" else h.set_draining
        return setter(op.on, t).health
    return h.reevaluate(t).health


@SETTINGS
@given(
    rise=st.integers(1, 4),
    fall=st.integers(1, 4),
    start=st.sampled_from(list(CheckState)),
    damping=st.none() | dampings,
    steps=steps,
)
def test_never_up_while_a_check_has_failed_fall_times_in_a_row(
    rise: int,
    fall: int,
    start: CheckState,
    damping: DampingParams | None,
    steps: list[tuple[float, Feed | Flag | Tick]],
) -> None:
    checks = tuple(CheckParams(f"c{i}", rise=rise, fall=fall) for i in range(3))
    h = ServiceHealth.initial(ServiceParams("s", checks, Policy.parse("all"), start, damping), 0)
    failures = [0, 0, 0]  # consecutive failures per check, counted here
    t = 0.0
    for dt, op in steps:
        t += dt
        h = apply(h, t, op)
        if isinstance(op, Feed):
            failures[op.check] = 0 if op.ok else failures[op.check] + 1
        if any(f >= fall for f in failures):
            assert h.state is not ServiceState.UP, (failures, h)


@SETTINGS
@given(
    disabled=st.booleans(),
    damping=st.none() | dampings,
    policy=st.sampled_from(["all", "any", "at-least 2"]),
    steps=steps,
)
def test_maintenance_and_disabled_always_dominate(
    disabled: bool,
    damping: DampingParams | None,
    policy: str,
    steps: list[tuple[float, Feed | Flag | Tick]],
) -> None:
    checks = tuple(CheckParams(f"c{i}", rise=2, fall=2) for i in range(3))
    params = ServiceParams("s", checks, Policy.parse(policy), damping=damping, disabled=disabled)
    h = ServiceHealth.initial(params, 0.0)
    maintenance = draining = False
    t = 0.0
    for dt, op in steps:
        t += dt
        h = apply(h, t, op)
        if isinstance(op, Flag):
            if op.kind == "maintenance":
                maintenance = op.on
            else:
                draining = op.on
        if disabled:
            assert h.state is ServiceState.DISABLED
        elif maintenance:
            assert h.state is ServiceState.MAINTENANCE
        elif draining:
            assert h.state is ServiceState.DRAINING
        else:
            assert h.state in (ServiceState.UP, ServiceState.DOWN)


# ------------------------------------------------------------------ damping reference model


class DampingModel:
    """Independent RFC 2439 reference: penalty decays as exp(-t ln2 / half_life)."""

    def __init__(self, d: DampingParams) -> None:
        self.d = d
        self.penalty = 0.0
        self.at = 0.0
        self.suppressed = False
        self.last_flap: float | None = None
        self.ambiguous = False  # a float tie at a threshold: stop comparing

    def value(self, t: float) -> float:
        return self.penalty * math.exp(-(t - self.at) * math.log(2) / self.d.half_life)

    def flap(self, t: float) -> None:
        self.expire(t)
        ceiling = self.d.reuse * math.exp(self.d.max_suppress * math.log(2) / self.d.half_life)
        p = min(self.value(t) + self.d.penalty, ceiling)
        if math.isclose(p, self.d.suppress, rel_tol=1e-9):
            self.ambiguous = True
        self.penalty, self.at, self.last_flap = p, t, t
        self.suppressed = self.suppressed or p >= self.d.suppress

    def expire(self, t: float) -> None:
        if not self.suppressed:
            return
        assert self.last_flap is not None
        if self.value(t) < self.d.reuse or t - self.last_flap >= self.d.max_suppress:
            self.suppressed = False

    def clearly_suppressed(self, t: float) -> bool:
        if not self.suppressed or self.last_flap is None:
            return False
        return (
            self.value(t) > self.d.reuse * (1 + 1e-9)
            and t - self.last_flap < self.d.max_suppress - 1e-9
        )


flap_steps = st.lists(
    st.tuples(st.floats(0, 120, allow_nan=False), st.sampled_from(["ok", "fail", "tick"])),
    max_size=80,
)


@SETTINGS
@given(d=dampings, steps=flap_steps)
def test_suppressed_service_stays_down_until_penalty_decays_below_reuse(
    d: DampingParams, steps: list[tuple[float, str]]
) -> None:
    # one check with rise=fall=1: the policy verdict is the last result
    params = ServiceParams(
        "s", (CheckParams("c", rise=1, fall=1),), start_state=CheckState.UP, damping=d
    )
    h = ServiceHealth.initial(params, 0.0)
    model = DampingModel(d)
    last_ok = True
    t = 0.0
    for dt, what in steps:
        t += dt
        if what == "tick":
            h = h.reevaluate(t).health
        else:
            ok = what == "ok"
            h = h.feed("c", ok, "r", t).health
            if last_ok and not ok:
                model.flap(t)
            last_ok = ok
        model.expire(t)
        if model.ambiguous:
            return
        if model.clearly_suppressed(t):
            assert h.state is ServiceState.DOWN, (t, model.value(t), h)
        if last_ok and h.state is ServiceState.DOWN:
            # held down although healthy: only damping may do that, within its bounds
            assert model.last_flap is not None
            assert model.value(t) >= d.reuse * (1 - 1e-9), (t, model.value(t), h)
            assert t - model.last_flap <= d.max_suppress + 1e-9


@SETTINGS
@given(
    d=dampings,
    flap_gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
    probe=st.floats(0, 2000, allow_nan=False),
)
def test_suppression_never_outlasts_max_suppress_after_the_last_flap(
    d: DampingParams, flap_gaps: list[float], probe: float
) -> None:
    params = ServiceParams(
        "s", (CheckParams("c", rise=1, fall=1),), start_state=CheckState.UP, damping=d
    )
    h = ServiceHealth.initial(params, 0.0)
    t = 0.0
    for gap in flap_gaps:  # a storm of flaps
        t += gap
        h = h.feed("c", False, "r", t).health
        h = h.feed("c", True, "r", t).health
    last_flap = t
    until = h.next_wakeup(t)
    if until is not None:
        assert until <= last_flap + d.max_suppress + 1e-9
    at = last_flap + d.max_suppress + probe
    h = h.reevaluate(at).health
    assert h.state is ServiceState.UP
    assert h.next_wakeup(at) is None
