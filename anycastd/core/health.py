"""Pure health engine: check results in, service verdicts and events out.

Rule: this module never awaits, never reads a clock, never does I/O. Time is a monotonic
float (seconds) passed in by the caller; every value is immutable and every operation
returns a new value plus the events it produced.

Theory of operation
-------------------

Per check, a two-state machine with hysteresis (table ``_CHECK_TABLE``)::

    state  result  counts towards   threshold  -> next state
    UP     ok      (nothing)        -             UP
    UP     fail    consecutive fail fall          DOWN
    DOWN   ok      consecutive ok   rise          UP
    DOWN   fail    (nothing)        -             DOWN

A check starts in the service's ``start_state``. It is *changing* while its current run of
identical results goes against its state (0 < run < rise/fall); the scheduler then probes
it at the fast interval.

Per service, in order of precedence (table ``_PRECEDENCE``, first row that applies wins)::

    disabled (config)        -> DISABLED
    maintenance (flag)       -> MAINTENANCE
    draining (operator flag) -> DRAINING
    policy down              -> DOWN      (all | any | at-least N of the checks' states)
    suppressed by damping    -> DOWN
    otherwise                -> UP

Flap damping follows BGP route-flap damping (RFC 2439): each up->down transition of the
policy verdict (a *flap*) adds ``penalty``; the penalty decays exponentially with
``half_life``; reaching ``suppress`` holds the service DOWN until the penalty decays below
``reuse``. The penalty is capped at ``reuse * 2 ** (max_suppress / half_life)`` so a
suppression never outlasts ``max_suppress`` after the last flap. The end of a suppression
is computed once, when the penalty changes, as a point in time (``suppressed_until``): the
verdict then only compares times, and ``next_wakeup`` returns exactly that time so the
caller can ``reevaluate`` without new results. Flaps are not counted while the service is
disabled or in maintenance (operator work must not be punished).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, NamedTuple

__all__ = [
    "CheckHealth",
    "CheckParams",
    "CheckState",
    "CheckTransition",
    "DampingParams",
    "DampingState",
    "Event",
    "Flapped",
    "Policy",
    "PolicyKind",
    "Reused",
    "ServiceHealth",
    "ServiceParams",
    "ServiceState",
    "ServiceTransition",
    "ServiceVerdict",
    "Step",
    "carried",
]


class CheckState(enum.Enum):
    """Hysteresis state of one check."""

    UP = "up"
    DOWN = "down"


class ServiceState(enum.Enum):
    """The state a user sees for a service."""

    UP = "up"
    DOWN = "down"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"
    DISABLED = "disabled"


class PolicyKind(enum.Enum):
    ALL = "all"
    ANY = "any"
    AT_LEAST = "at-least"


_POLICY_RE: Final = re.compile(r"^\s*at-least\s+(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Policy:
    """How a service's verdict follows from its checks' states."""

    kind: PolicyKind = PolicyKind.ALL
    n: int = 1  # only meaningful for AT_LEAST

    def __post_init__(self) -> None:
        if self.kind is PolicyKind.AT_LEAST and self.n < 1:
            raise ValueError(f"at-least policy needs n >= 1, got {self.n}")

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse ``"all"``, ``"any"`` or ``"at-least N"``."""
        t = text.strip()
        if t == "all":
            return cls(PolicyKind.ALL)
        if t == "any":
            return cls(PolicyKind.ANY)
        m = _POLICY_RE.match(t)
        if m is None:
            raise ValueError(f'policy must be "all", "any" or "at-least N", got {text!r}')
        return cls(PolicyKind.AT_LEAST, int(m.group(1)))

    def required(self, total: int) -> int:
        """How many of ``total`` checks must be UP."""
        if self.kind is PolicyKind.ALL:
            return total
        if self.kind is PolicyKind.ANY:
            return 1
        return self.n

    def __str__(self) -> str:
        return f"at-least {self.n}" if self.kind is PolicyKind.AT_LEAST else self.kind.value


@dataclass(frozen=True, slots=True)
class CheckParams:
    name: str
    rise: int = 3
    fall: int = 2

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"check {self.name}: rise and fall must be >= 1")


@dataclass(frozen=True, slots=True)
class DampingParams:
    """RFC 2439 style flap damping; times in seconds."""

    penalty: float = 1000.0
    half_life: float = 60.0
    suppress: float = 2000.0
    reuse: float = 750.0
    max_suppress: float = 600.0

    def __post_init__(self) -> None:
        if not (self.half_life > 0 and self.max_suppress > 0 and self.penalty > 0):
            raise ValueError("damping: penalty, half_life and max_suppress must be > 0")
        if not 0 < self.reuse < self.suppress:
            raise ValueError("damping: need 0 < reuse < suppress")

    @property
    def ceiling(self) -> float:
        """The penalty cap: from here it takes exactly max_suppress to decay to reuse."""
        return float(self.reuse * 2.0 ** (self.max_suppress / self.half_life))

    def decay(self, penalty: float, dt: float) -> float:
        """``penalty`` after ``dt`` seconds of exponential decay."""
        return float(penalty * 2.0 ** (-max(dt, 0.0) / self.half_life))


@dataclass(frozen=True, slots=True)
class ServiceParams:
    name: str
    checks: tuple[CheckParams, ...]
    policy: Policy = Policy()
    start_state: CheckState = CheckState.DOWN
    damping: DampingParams | None = None
    disabled: bool = False

    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"service {self.name}: duplicate check names {names}")
        # frozen: set the derived lookup table once, here
        object.__setattr__(self, "index", {n: i for i, n in enumerate(names)})
        if self.policy.kind is PolicyKind.AT_LEAST and self.policy.n > len(self.checks):
            raise ValueError(
                f"service {self.name}: policy {self.policy} but only {len(self.checks)} checks"
            )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CheckTransition:
    service: str
    check: str
    old: CheckState
    new: CheckState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ServiceTransition:
    service: str
    old: ServiceState
    new: ServiceState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Flapped:
    """The policy verdict went up->down; ``suppressed_until`` is set while suppressed."""

    service: str
    penalty: float
    suppressed_until: float | None
    at: float


@dataclass(frozen=True, slots=True)
class Reused:
    """A flap-damping suppression ended (the penalty decayed to reuse)."""

    service: str
    at: float


Event = CheckTransition | ServiceTransition | Flapped | Reused


# --------------------------------------------------------------------------- checks

# (state, result ok) -> (name of the threshold attribute on CheckParams or None, target)
_CHECK_TABLE: Final[Mapping[tuple[CheckState, bool], tuple[str | None, CheckState]]] = {
    (CheckState.UP, True): (None, CheckState.UP),
    (CheckState.UP, False): ("fall", CheckState.DOWN),
    (CheckState.DOWN, True): ("rise", CheckState.UP),
    (CheckState.DOWN, False): (None, CheckState.DOWN),
}


def _plural(n: int) -> str:
    return "time" if n == 1 else "times"


@dataclass(frozen=True, slots=True)
class CheckHealth:
    """One check's hysteresis state. ``run_len`` counts the identical results ending with
    the last one (``run_ok``; None before the first result)."""

    params: CheckParams
    state: CheckState
    since: float
    run_ok: bool | None = None
    run_len: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def changing(self) -> bool:
        """True while the current run goes against the state (probe at the fast interval)."""
        return self.run_ok is not None and self.run_ok != (self.state is CheckState.UP)

    def describe(self) -> str:
        name = self.params.name
        if self.run_ok is None:
            return f"check {name} has no result yet"
        if self.run_ok:
            if self.state is CheckState.UP:
                return f"check {name} ok"
            return f"check {name} ok {self.run_len} of {self.params.rise} times to rise"
        n = self.run_len
        if self.state is CheckState.UP:
            return f"check {name} failed {n} of {self.params.fall} times: {self.reason}"
        return f"check {name} failed {n} {_plural(n)}: {self.reason}"

    def observe(self, ok: bool, reason: str, now: float) -> CheckHealth:
        run_len = self.run_len + 1 if self.run_ok is ok else 1
        threshold_attr, target = _CHECK_TABLE[(self.state, ok)]
        if threshold_attr is not None and run_len >= getattr(self.params, threshold_attr):
            return CheckHealth(self.params, target, now, ok, run_len, reason)
        return CheckHealth(self.params, self.state, self.since, ok, run_len, reason)

    def _settle(self, now: float) -> CheckHealth:
        """Re-apply the threshold for the last result (after rise/fall changed)."""
        if self.run_ok is None:
            return self
        threshold_attr, target = _CHECK_TABLE[(self.state, self.run_ok)]
        if threshold_attr is None or self.run_len < getattr(self.params, threshold_attr):
            return self
        return replace(self, state=target, since=now)


# --------------------------------------------------------------------------- damping


@dataclass(frozen=True, slots=True)
class DampingState:
    penalty: float = 0.0
    at: float = 0.0  # time ``penalty`` was measured
    suppressed_until: float | None = None
    last_flap: float | None = None

    def penalty_at(self, params: DampingParams, now: float) -> float:
        return params.decay(self.penalty, now - self.at)

    def suppressed(self, now: float) -> bool:
        return self.suppressed_until is not None and now < self.suppressed_until

    def flap(self, params: DampingParams, now: float) -> DampingState:
        p = min(self.penalty_at(params, now) + params.penalty, params.ceiling)
        until: float | None = None
        if self.suppressed(now) or p >= params.suppress:
            # time for p to decay to reuse; <= max_suppress because p <= ceiling
            wait = params.half_life * math.log2(p / params.reuse) if p > params.reuse else 0.0
            until = now + min(wait, params.max_suppress)
        return DampingState(penalty=p, at=now, suppressed_until=until, last_flap=now)

    def expire(self, now: float) -> DampingState:
        if self.suppressed_until is not None and now >= self.suppressed_until:
            return replace(self, suppressed_until=None)
        return self


# --------------------------------------------------------------------------- service


@dataclass(frozen=True, slots=True)
class ServiceVerdict:
    service: str
    state: ServiceState
    reason: str
    since: float


class Step(NamedTuple):
    """Result of one engine operation: the new value and what happened, in order."""

    health: ServiceHealth
    events: tuple[Event, ...]


def _policy_reason(h: ServiceHealth) -> str:
    total = len(h.checks)
    up = sum(1 for c in h.checks if c.state is CheckState.UP)
    need = h.params.policy.required(total)
    down = [c for c in h.checks if c.state is not CheckState.UP]
    if h.policy_up:
        if h.params.policy.kind is PolicyKind.ALL:
            return f"all {total} checks up"
        return f"{up} of {total} checks up (policy {h.params.policy})"
    if not down:
        return f"no checks (policy {h.params.policy})"
    first = down[0].describe()
    if h.params.policy.kind is PolicyKind.ALL:
        more = f" (+{len(down) - 1} more down)" if len(down) > 1 else ""
        return first + more
    return f"{up} of {total} checks up, need {need}: {first}"


def _damping_reason(h: ServiceHealth) -> str:
    reuse = h.params.damping.reuse if h.params.damping is not None else 0.0
    until = h.damping.suppressed_until if h.damping.suppressed_until is not None else math.nan
    return f"suppressed by flap damping until penalty < {reuse:g} (t={until:.1f})"


# Precedence table: the first row whose predicate holds decides state and reason.
_Pred = Callable[["ServiceHealth", float], bool]
_Row = tuple[_Pred, ServiceState, Callable[["ServiceHealth"], str]]
_PRECEDENCE: Final[tuple[_Row, ...]] = (
    (lambda h, _t: h.params.disabled, ServiceState.DISABLED, lambda _h: "disabled in config"),
    (lambda h, _t: h.maintenance, ServiceState.MAINTENANCE, lambda h: h.maintenance_reason),
    (lambda h, _t: h.draining, ServiceState.DRAINING, lambda h: h.drain_reason),
    (lambda h, _t: not h.policy_up, ServiceState.DOWN, _policy_reason),
    (lambda h, t: h.damping.suppressed(t), ServiceState.DOWN, _damping_reason),
    (lambda _h, _t: True, ServiceState.UP, _policy_reason),
)


def _policy_up(params: ServiceParams, checks: tuple[CheckHealth, ...]) -> bool:
    up = sum(1 for c in checks if c.state is CheckState.UP)
    return up >= params.policy.required(len(checks))


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """Immutable health of one service. Build with :meth:`initial`; every operation
    returns a :class:`Step` (new value + events) and leaves ``self`` untouched."""

    params: ServiceParams
    checks: tuple[CheckHealth, ...]
    state: ServiceState
    reason: str
    since: float
    policy_up: bool
    damping: DampingState = field(default_factory=DampingState)
    maintenance: bool = False
    maintenance_reason: str = "maintenance"
    draining: bool = False
    drain_reason: str = "operator drain"

    # ---- construction

    @classmethod
    def initial(cls, params: ServiceParams, now: float) -> ServiceHealth:
        checks = tuple(CheckHealth(c, params.start_state, now) for c in params.checks)
        draft = cls(
            params=params,
            checks=checks,
            state=ServiceState.DOWN,
            reason="",
            since=now,
            policy_up=_policy_up(params, checks),
            damping=DampingState(at=now),
        )
        state, reason = draft._decide(now)
        return replace(draft, state=state, reason=reason)

    # ---- queries

    @property
    def name(self) -> str:
        return self.params.name

    @property
    def verdict(self) -> ServiceVerdict:
        return ServiceVerdict(self.params.name, self.state, self.reason, self.since)

    @property
    def suppressed(self) -> bool:
        """Held down by damping as of the last operation (see :meth:`next_wakeup`)."""
        return self.damping.suppressed_until is not None

    def check(self, name: str) -> CheckHealth:
        idx = self.params.index.get(name)
        if idx is None:
            raise KeyError(f"service {self.params.name} has no check {name!r}")
        return self.checks[idx]

    def changing(self, name: str) -> bool:
        return self.check(name).changing

    def penalty(self, now: float) -> float:
        """Current damping penalty (0 without damping)."""
        if self.params.damping is None:
            return 0.0
        return self.damping.penalty_at(self.params.damping, now)

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`reevaluate` could change something without new results (the end of
        a damping suppression), or None. May be <= now: reevaluate right away then."""
        del now  # the answer does not depend on it; kept for a uniform call shape
        return self.damping.suppressed_until

    # ---- operations

    def feed(self, check: str, ok: bool, reason: str, now: float) -> Step:
        """Apply one check result at time ``now``."""
        idx = self.params.index.get(check)
        if idx is None:
            raise KeyError(f"service {self.params.name} has no check {check!r}")
        old = self.checks[idx]
        new = old.observe(ok, reason, now)
        checks = (*self.checks[:idx], new, *self.checks[idx + 1 :])
        if (
            new.state is old.state
            and self.damping.suppressed_until is None
            and self.state is not ServiceState.DOWN
        ):
            # fast path (the steady state): the policy verdict, the state and its reason
            # cannot change when no check changed state and nothing is pending in damping
            return Step(
                ServiceHealth(
                    self.params,
                    checks,
                    self.state,
                    self.reason,
                    self.since,
                    self.policy_up,
                    self.damping,
                    self.maintenance,
                    self.maintenance_reason,
                    self.draining,
                    self.drain_reason,
                ),
                (),
            )
        events: list[Event] = []
        if new.state is not old.state:
            events.append(
                CheckTransition(self.params.name, check, old.state, new.state, new.describe(), now)
            )
        return self._advance(now, events, checks=checks)

    def set_maintenance(self, on: bool, now: float, reason: str = "maintenance") -> Step:
        return self._advance(now, [], maintenance=on, maintenance_reason=reason)

    def set_draining(self, on: bool, now: float, reason: str = "operator drain") -> Step:
        return self._advance(now, [], draining=on, drain_reason=reason)

    def reevaluate(self, now: float) -> Step:
        """Let time pass: end a damping suppression whose time has come."""
        return self._advance(now, [])

    def reconfigure(self, params: ServiceParams, now: float) -> Step:
        """Adopt new parameters (reload), carrying counters of checks kept by name over.
        New checks start in the new start state; the damping state is kept."""
        old = {c.name: c for c in self.checks}
        checks = tuple(
            replace(old[p.name], params=p)._settle(now)
            if p.name in old
            else CheckHealth(p, params.start_state, now)
            for p in params.checks
        )
        events: list[Event] = [
            CheckTransition(params.name, c.name, old[c.name].state, c.state, c.describe(), now)
            for c in checks
            if c.name in old and c.state is not old[c.name].state
        ]
        damping = self.damping if params.damping is not None else DampingState(at=now)
        return self._advance(now, events, params=params, checks=checks, damping=damping)

    # ---- internals

    def _decide(self, now: float) -> tuple[ServiceState, str]:
        for applies, state, reason in _PRECEDENCE:
            if applies(self, now):
                return state, reason(self)
        raise AssertionError("unreachable: the last precedence row always applies")

    def _advance(self, now: float, events: list[Event], **changes: object) -> Step:
        cur: ServiceHealth = replace(self, **changes)  # type: ignore[arg-type]
        params = cur.params
        damping = cur.damping
        # 1. time passes: a suppression may end
        if damping.suppressed_until is not None:
            damping = damping.expire(now)
            if damping.suppressed_until is None:
                events.append(Reused(params.name, now))
        # 2. the policy verdict; an up->down edge is a flap
        policy_up = _policy_up(params, cur.checks)
        counting = not (params.disabled or cur.maintenance)
        if params.damping is not None and cur.policy_up and not policy_up and counting:
            damping = damping.flap(params.damping, now)
            events.append(Flapped(params.name, damping.penalty, damping.suppressed_until, now))
        cur = replace(cur, damping=damping, policy_up=policy_up)
        # 3. the service state
        state, reason = cur._decide(now)
        if state is not self.state:
            events.append(ServiceTransition(params.name, self.state, state, reason, now))
            cur = replace(cur, state=state, reason=reason, since=now)
        else:
            cur = replace(cur, reason=reason)
        return Step(cur, tuple(events))


def carried(
    previous: ServiceHealth | None, params: ServiceParams, now: float, *, unchanged: bool
) -> ServiceHealth:
    """The health a service starts a reload with: ``previous`` itself when its
    configuration is ``unchanged`` (counters, damping, no event), reconfigured when it
    changed (checks kept by name keep their counters), fresh when it is new."""
    if previous is None:
        return ServiceHealth.initial(params, now)
    if unchanged:
        return previous
    return previous.reconfigure(params, now).health
