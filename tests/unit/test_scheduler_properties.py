"""engine.scheduler invariants on virtual time for random intervals, jitter and results."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycastd.core.health import CheckParams, CheckState, Policy, ServiceHealth, ServiceParams
from anycastd.engine.scheduler import CheckRun, CheckSpec, Scheduler
from anycastd.testing.clock import FakeClock
from tests.unit.test_scheduler import FakeProbe


def simulate(
    *, interval: float, fast: float, jitter: float, latency: float, oks: list[bool], seed: int
) -> tuple[list[CheckRun], list[bool]]:
    """Run one check for len(oks) runs; return the runs and whether the check was changing
    when each run finished."""
    runs: list[CheckRun] = []
    changing: list[bool] = []
    clock = FakeClock()
    probe = FakeProbe(clock, script=lambda n: oks[n % len(oks)], latency=latency)
    params = ServiceParams("s", (CheckParams("c", rise=2, fall=2),), Policy(), CheckState.DOWN)
    sched: Scheduler

    def on_run(run: CheckRun) -> None:
        runs.append(run)
        changing.append(sched.health("s").check("c").changing)

    sched = Scheduler(
        [CheckSpec("s", "c", probe, interval, fast, timeout=latency * 2 + 0.1, jitter=jitter)],
        {"s": ServiceHealth.initial(params, 0.0)},
        clock=clock,
        rng=random.Random(seed),
        on_run=on_run,
        stagger=False,
    )

    async def main() -> None:
        task = asyncio.create_task(sched.run())
        while len(runs) < len(oks):
            await clock.advance(interval)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return runs[: len(oks)], changing[: len(oks)]


@settings(max_examples=40, deadline=None)
@given(
    interval=st.sampled_from([1.0, 2.0, 5.0]),
    fast_ratio=st.sampled_from([0.25, 0.5, 1.0]),
    jitter_ratio=st.sampled_from([0.0, 0.1, 0.5]),
    latency=st.sampled_from([0.0, 0.05, 0.2]),
    oks=st.lists(st.booleans(), min_size=2, max_size=25),
    seed=st.integers(0, 2**16),
)
def test_runs_follow_interval_fast_interval_and_jitter_bounds(
    *,
    interval: float,
    fast_ratio: float,
    jitter_ratio: float,
    latency: float,
    oks: list[bool],
    seed: int,
) -> None:
    fast, jitter = interval * fast_ratio, interval * jitter_ratio
    runs, changing = simulate(
        interval=interval, fast=fast, jitter=jitter, latency=latency, oks=oks, seed=seed
    )
    assert [r.ok for r in runs] == oks
    for run in runs:
        assert run.lateness == 0.0  # virtual time, no contention: never late
    for prev, nxt, was_changing in zip(runs, runs[1:], changing, strict=False):
        step = fast if was_changing else interval
        gap = nxt.started - prev.started
        # start = base + U(0, jitter); the next base is `step` later (never earlier), or
        # the end of the run if it overran its slot (latency here is always < step)
        assert step - jitter - 1e-9 <= gap <= step + jitter + 1e-9
        assert nxt.started >= prev.finished - 1e-9  # a check never overlaps itself
