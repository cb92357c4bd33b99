"""engine.scheduler on virtual time: exact schedules, fast interval, jitter, timeouts,
concurrency bound, broken probes and cancellation."""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from anycastd.core.health import (
    CheckParams,
    CheckState,
    DampingParams,
    Event,
    Policy,
    Reused,
    ServiceHealth,
    ServiceParams,
    ServiceState,
    ServiceTransition,
)
from anycastd.engine.scheduler import CheckRun, CheckSpec, Scheduler
from anycastd.testing.clock import FakeClock


class Status(enum.Enum):
    OK = "ok"
    FAIL = "fail"


@dataclass(frozen=True)
class Result:
    status: Status
    latency: float
    reason: str


@dataclass
class FakeProbe:
    """Answers from ``script(run_number)`` after ``latency`` seconds of virtual time."""

    clock: FakeClock
    script: Callable[[int], bool] = lambda _n: True
    latency: float = 0.0
    raises: type[Exception] | None = None
    hang: bool = False
    calls: int = 0
    cancelled: int = 0

    async def run(self, timeout: float) -> Result:  # noqa: ASYNC109  # the probe contract
        n = self.calls
        self.calls += 1
        try:
            if self.hang:
                await self.clock.sleep(1e9)
            if self.latency:
                await self.clock.sleep(min(self.latency, timeout))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.raises is not None:
            raise self.raises("boom")
        ok = self.script(n)
        return Result(Status.OK if ok else Status.FAIL, self.latency, "ok" if ok else "refused")


@dataclass
class Recorder:
    runs: list[CheckRun] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def on_run(self, run: CheckRun) -> None:
        self.runs.append(run)

    def on_events(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def starts(self, check: str = "c0") -> list[float]:
        return [r.started for r in self.runs if r.check == check]


def service(
    n_checks: int = 1,
    *,
    rise: int = 2,
    fall: int = 2,
    start: CheckState = CheckState.DOWN,
    damping: DampingParams | None = None,
) -> ServiceHealth:
    checks = tuple(CheckParams(f"c{i}", rise=rise, fall=fall) for i in range(n_checks))
    params = ServiceParams("web", checks, Policy.parse("all"), start, damping)
    return ServiceHealth.initial(params, 0.0)


def spec(probe: FakeProbe, check: str = "c0", **kw: float) -> CheckSpec:
    args: dict[str, float] = {"interval": 2.0, "fast_interval": 0.5, "timeout": 1.0}
    args.update(kw)
    return CheckSpec("web", check, probe, **args)


def make(
    clock: FakeClock,
    specs: list[CheckSpec],
    health: ServiceHealth,
    rec: Recorder,
    **kw: object,
) -> Scheduler:
    return Scheduler(
        specs,
        {"web": health},
        clock=clock,
        rng=random.Random(7),
        on_run=rec.on_run,
        on_events=rec.on_events,
        stagger=False,
        **kw,  # type: ignore[arg-type]
    )


async def run_for(clock: FakeClock, sched: Scheduler, t: float) -> None:
    task = asyncio.create_task(sched.run())
    await clock.run_until(t)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_rising_check_uses_the_fast_interval_until_it_is_up() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = FakeProbe(clock)
    sched = make(clock, [spec(probe)], service(rise=3), rec)
    await run_for(clock, sched, 9.0)
    # 0: first OK (changing) -> 0.5 -> 1.0: third OK, up -> back to the 2 s interval
    assert rec.starts() == [0.0, 0.5, 1.0, 3.0, 5.0, 7.0, 9.0]
    assert sched.health("web").state is ServiceState.UP
    assert [e for e in rec.events if isinstance(e, ServiceTransition)] == [
        ServiceTransition("web", ServiceState.DOWN, ServiceState.UP, "all 1 checks up", 1.0)
    ]


async def test_falling_check_uses_the_fast_interval_until_it_is_down() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = FakeProbe(clock, script=lambda n: n < 2, latency=0.25)
    sched = make(clock, [spec(probe)], service(fall=3, start=CheckState.UP), rec)
    await run_for(clock, sched, 10.0)
    # OK at 0, 2; failures at 4 (changing), 4.5, 5.0 (down), then 7, 9
    assert rec.starts() == [0.0, 2.0, 4.0, 4.5, 5.0, 7.0, 9.0]
    assert [r.finished for r in rec.runs][:3] == [0.25, 2.25, 4.25]
    down = [e for e in rec.events if isinstance(e, ServiceTransition)]
    assert [(e.new, e.at) for e in down] == [(ServiceState.DOWN, 5.25)]


async def test_jitter_stays_within_bounds_and_is_reproducible_with_a_seed() -> None:
    async def starts(seed: int) -> list[float]:
        clock, rec = FakeClock(), Recorder()
        h = service(start=CheckState.UP)
        sched = Scheduler(
            [spec(FakeProbe(clock), interval=1.0, jitter=0.3)],
            {"web": h},
            clock=clock,
            rng=random.Random(seed),
            on_run=rec.on_run,
            stagger=False,
        )
        await run_for(clock, sched, 50.0)
        assert all(r.lateness == 0.0 for r in rec.runs)
        return rec.starts()

    got = await starts(1)
    assert len(got) == 50
    for k, t in enumerate(got):
        assert k <= t <= k + 0.3
    assert len({round(t - int(t), 6) for t in got}) > 40  # offsets vary run to run
    assert got == await starts(1)
    assert got != await starts(2)


async def test_stagger_spreads_first_runs_over_one_interval() -> None:
    clock, rec = FakeClock(), Recorder()
    probes = [FakeProbe(clock) for _ in range(20)]
    specs = [
        spec(p, check=f"c{i}", interval=10.0, fast_interval=10.0) for i, p in enumerate(probes)
    ]
    sched = Scheduler(
        specs,
        {"web": service(20, start=CheckState.UP)},
        clock=clock,
        rng=random.Random(3),
        on_run=rec.on_run,
    )
    await run_for(clock, sched, 9.999)
    firsts = sorted(r.started for r in rec.runs)
    assert len(firsts) == 20
    assert firsts[0] >= 0.0
    assert firsts[-1] < 10.0
    assert firsts[-1] - firsts[0] > 5.0


async def test_a_hanging_probe_fails_at_the_backstop_timeout() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = FakeProbe(clock, hang=True)
    sched = make(clock, [spec(probe)], service(start=CheckState.UP), rec, timeout_slack=0.5)
    task = asyncio.create_task(sched.run())
    await clock.run_until(1.4)
    assert rec.runs == []
    await clock.run_until(1.5)
    [first] = rec.runs
    assert (first.ok, first.status, first.finished) == (False, "timeout", 1.5)
    assert first.reason == "no result within 1s"
    assert probe.cancelled == 1
    assert sched.health("web").check("c0").changing
    # the fast slot (0.5) was overrun: the next run starts right at the end of this one
    assert probe.calls == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_raising_probe_is_a_failed_check_and_the_scheduler_keeps_going() -> None:
    clock, rec = FakeClock(), Recorder()
    bad = FakeProbe(clock, raises=RuntimeError)
    good = FakeProbe(clock)
    sched = make(
        clock, [spec(bad), spec(good, check="c1")], service(2, start=CheckState.UP), rec
    )
    await run_for(clock, sched, 6.0)
    bad_runs = [r for r in rec.runs if r.check == "c0"]
    assert [r.started for r in bad_runs] == [0.0, 0.5, 2.5, 4.5]
    assert bad_runs[0].status == "error"
    assert bad_runs[0].reason == "probe raised RuntimeError: boom"
    assert sched.health("web").state is ServiceState.DOWN
    assert sched.health("web").reason == "check c0 failed 4 times: probe raised RuntimeError: boom"
    assert len([r for r in rec.runs if r.check == "c1"]) == 4


async def test_concurrency_is_bounded_and_excess_runs_start_late() -> None:
    clock, rec = FakeClock(), Recorder()
    probes = [FakeProbe(clock, latency=1.0) for _ in range(7)]
    specs = [
        spec(p, check=f"c{i}", interval=100.0, fast_interval=100.0, timeout=5.0)
        for i, p in enumerate(probes)
    ]
    sched = make(clock, specs, service(7, start=CheckState.UP), rec, max_concurrent=3)
    await run_for(clock, sched, 10.0)
    assert sched.peak_running == 3
    assert sorted(r.started for r in rec.runs) == [0, 0, 0, 1, 1, 1, 2]
    assert sorted(r.lateness for r in rec.runs) == [0, 0, 0, 1, 1, 1, 2]


async def test_cancellation_cancels_probes_in_flight_and_leaves_nothing_behind() -> None:
    clock, rec = FakeClock(), Recorder()
    probes = [FakeProbe(clock, latency=0.8) for _ in range(3)]
    specs = [spec(p, check=f"c{i}") for i, p in enumerate(probes)]
    sched = make(clock, specs, service(3, start=CheckState.UP), rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(0.4)
    assert sched.running == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p.cancelled for p in probes] == [1, 1, 1]
    assert sched.running == 0
    assert rec.runs == []
    assert clock.pending == 0
    await clock.run_until(10.0)  # nothing runs after cancellation
    assert [p.calls for p in probes] == [1, 1, 1]


async def test_a_damping_suppression_ends_on_time_without_new_results() -> None:
    clock, rec = FakeClock(), Recorder()
    d = DampingParams(penalty=1000, half_life=10, suppress=1500, reuse=750, max_suppress=60)
    # runs every 2 s: fail, ok, fail, ok...: flaps at 0 and 4 -> penalty 1758 -> suppressed
    probe = FakeProbe(clock, script=lambda n: n not in (0, 2))
    sched = make(
        clock,
        [spec(probe, interval=2.0, fast_interval=2.0)],
        service(rise=1, fall=1, start=CheckState.UP, damping=d),
        rec,
    )
    task = asyncio.create_task(sched.run())
    await clock.run_until(7.0)
    h = sched.health("web")
    assert h.state is ServiceState.DOWN
    until = h.next_wakeup(7.0)
    assert until is not None
    assert until == pytest.approx(4 + 10 * math.log2((1000 * 2**-0.4 + 1000) / 750))
    await clock.run_until(until - 1e-6)
    assert sched.health("web").state is ServiceState.DOWN
    await clock.run_until(until)  # 16.29: between probe runs, no new result needed
    assert sched.health("web").state is ServiceState.UP
    assert Reused("web", until) in rec.events
    assert rec.events[-1] == ServiceTransition(
        "web", ServiceState.DOWN, ServiceState.UP, "all 1 checks up", until
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_operator_flags_apply_now_and_emit_events() -> None:
    clock, rec = FakeClock(), Recorder()
    sched = make(clock, [spec(FakeProbe(clock))], service(start=CheckState.UP), rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(3.0)
    step = sched.set_draining("web", True)
    assert step.health.state is ServiceState.DRAINING
    assert rec.events[-1] == ServiceTransition(
        "web", ServiceState.UP, ServiceState.DRAINING, "operator drain", 3.0
    )
    sched.set_maintenance("web", True, reason="maintenance file present")
    assert sched.health("web").verdict.reason == "maintenance file present"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_checks_of_a_disabled_service_are_not_scheduled() -> None:
    params = ServiceParams("web", (CheckParams("c0"),), disabled=True)
    clock = FakeClock()
    sched = Scheduler(
        [spec(FakeProbe(clock))], {"web": ServiceHealth.initial(params, 0.0)}, clock=clock
    )
    assert sched.health("web").state is ServiceState.DISABLED
    assert sched.scheduled == frozenset()


def test_a_check_the_engine_does_not_know_is_rejected() -> None:
    clock = FakeClock()
    with pytest.raises(KeyError):
        Scheduler([spec(FakeProbe(clock), check="nope")], {"web": service()}, clock=clock)


# ---------------------------------------------------------------- reload


async def test_reload_keeps_the_schedule_of_unchanged_checks_and_restarts_changed_ones() -> None:
    clock, rec = FakeClock(), Recorder()
    p0, p1 = FakeProbe(clock), FakeProbe(clock)
    h = service(2, start=CheckState.UP)
    sched = make(clock, [spec(p0), spec(p1, check="c1")], h, rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(3.0)  # both ran at 0 and 2
    sched.reload([spec(p0), spec(p1, check="c1", interval=5.0)], sched.services)
    await clock.run_until(9.0)
    assert rec.starts("c0") == [0.0, 2.0, 4.0, 6.0, 8.0]  # untouched
    assert rec.starts("c1") == [0.0, 2.0, 3.0, 8.0]  # new spec: starts over at the reload
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reload_drops_removed_checks_and_carries_health_over() -> None:
    clock, rec = FakeClock(), Recorder()
    slow = FakeProbe(clock, latency=1.0, script=lambda _n: False)
    keep = FakeProbe(clock)
    h = service(2, rise=1, fall=1, start=CheckState.UP)
    sched = make(clock, [spec(keep), spec(slow, check="c1", timeout=2.0)], h, rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(0.5)  # c1 is in flight (fails at t=1)
    new_params = ServiceParams("web", (CheckParams("c0", rise=1, fall=1),))
    carried, events = sched.health("web").reconfigure(new_params, clock.now())
    assert carried.check("c0").state is CheckState.UP  # counters carried over
    assert events == ()
    sched.reload([spec(keep)], {"web": carried})
    await clock.run_until(5.0)
    assert sched.scheduled == frozenset({("web", "c0")})
    assert [r.check for r in rec.runs].count("c1") == 0  # its late result was dropped
    assert slow.calls == 1
    assert sched.health("web").state is ServiceState.UP
    assert rec.starts("c0") == [0.0, 2.0, 4.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
