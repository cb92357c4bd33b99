"""The default timing (issue 9), on virtual time: a service with no timing key goes DOWN
within interval + jitter + (fall - 1) x fast_interval of a hard failure, UP within the same
bound of a recovery, and a run of failures shorter than fall withdraws nothing.

The timing comes from the loaded config (the defaults as an operator gets them) and runs
through the daemon's own scheduler and health engine; only the probe is scripted."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from anycastd.config import loads
from anycastd.core.health import Event, ServiceHealth, ServiceState, ServiceTransition
from anycastd.engine.reload import service_params
from anycastd.engine.scheduler import CheckSpec, Scheduler
from anycastd.testing.clock import FakeClock
from healthchecks.result import ProbeResult, Status

NO_TIMING = """
[services.web]
prefixes = ["192.0.2.80/32"]
start_state = "{start}"
[[services.web.checks]]
type = "tcp"
host = "127.0.0.1"
port = 80
"""


@dataclass
class ScriptProbe:
    """Refused (a definitive, instant failure) while ``failing(now)``."""

    clock: FakeClock
    failing: Callable[[float, int], bool]  # (now, run number) -> refused?
    starts: list[float] = field(default_factory=list)  # the time of each run

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109  # probe contract
        bad = self.failing(self.clock.now(), len(self.starts))
        self.starts.append(self.clock.now())
        return ProbeResult(Status.FAIL if bad else Status.OK, 0.0, "refused" if bad else "ok")


def _scheduler(
    start: str, failing: Callable[[float, int], bool], seed: int
) -> tuple[FakeClock, Scheduler, list[ServiceTransition], float, ScriptProbe]:
    svc = loads(NO_TIMING.format(start=start)).services["web"]
    (check,) = svc.checks
    bound = check.interval + check.jitter + (check.fall - 1) * check.fast_interval
    assert bound == pytest.approx(
        check.interval + check.jitter + (check.rise - 1) * check.fast_interval
    )
    clock = FakeClock()
    probe = ScriptProbe(clock, failing)
    spec = CheckSpec("web", check.name, probe, interval=check.interval,
                     fast_interval=check.fast_interval, timeout=check.timeout,
                     jitter=check.jitter)
    seen: list[ServiceTransition] = []

    def on_events(events: Sequence[Event]) -> None:
        seen.extend(e for e in events if isinstance(e, ServiceTransition))

    sched = Scheduler([spec], {"web": ServiceHealth.initial(service_params(svc), 0.0)},
                      clock=clock, rng=random.Random(seed), on_events=on_events)
    return clock, sched, seen, bound, probe


async def _run(clock: FakeClock, sched: Scheduler, until: float) -> None:
    task = asyncio.create_task(sched.run())
    await clock.run_until(until)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_defaults_are_400ms_100ms_and_five_in_a_row() -> None:
    (check,) = loads(NO_TIMING.format(start="down")).services["web"].checks
    assert (check.interval, check.fast_interval, check.timeout, check.jitter) == (
        0.4, 0.1, 0.2, pytest.approx(0.04))
    assert (check.rise, check.fall) == (5, 5)


@pytest.mark.parametrize("seed", range(12))
async def test_a_hard_failure_is_down_within_the_bound_at_any_phase(seed: int) -> None:
    edge = 3.0 + random.Random(seed).uniform(0, 0.8)  # any phase of the 400 ms schedule
    clock, sched, seen, bound, _probe = _scheduler("up", lambda now, _n: now >= edge, seed)
    await _run(clock, sched, edge + 3)
    downs = [t for t in seen if t.new is ServiceState.DOWN]
    assert len(downs) == 1
    assert 4 * 0.1 <= downs[0].at - edge <= bound + 1e-9  # 0.84 s


@pytest.mark.parametrize("seed", range(12))
async def test_a_recovery_is_up_within_the_bound_at_any_phase(seed: int) -> None:
    edge = 3.0 + random.Random(seed).uniform(0, 0.8)
    clock, sched, seen, bound, _probe = _scheduler("down", lambda now, _n: now < edge, seed)
    await _run(clock, sched, edge + 3)
    ups = [t for t in seen if t.new is ServiceState.UP]
    assert len(ups) == 1
    assert 4 * 0.1 <= ups[0].at - edge <= bound + 1e-9


async def test_four_failures_in_a_row_withdraw_nothing_and_five_do() -> None:
    # runs 10-13 fail (4 in a row, then a pass), and every run from 40 on
    def failing(_now: float, n: int) -> bool:
        return 10 <= n <= 13 or n >= 40

    clock, sched, seen, _bound, probe = _scheduler("up", failing, 3)
    await _run(clock, sched, 30.0)
    (down,) = seen  # one transition in all: the 5th failure from run 40 on
    assert down.new is ServiceState.DOWN
    assert down.at == probe.starts[44]
    # a failure is re-checked at the fast interval (100 ms, each run jittered up to 40 ms);
    # steady runs are 400 ms apart
    for first in (10, 40):
        gaps = [b - a for a, b in zip(probe.starts[first:first + 4],
                                      probe.starts[first + 1:first + 5], strict=True)]
        assert all(0.06 <= g <= 0.14 for g in gaps), gaps
    steady = [b - a for a, b in zip(probe.starts[20:30], probe.starts[21:31], strict=True)]
    assert all(0.36 <= g <= 0.44 for g in steady), steady
