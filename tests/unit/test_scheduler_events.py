"""engine.scheduler: a probe with ``changed()`` (a process exited, a link went down) is run at
once when the kernel says something changed, not at its next interval. On virtual time."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from anycastd.core.health import CheckState, ServiceState
from anycastd.engine.scheduler import Scheduler
from anycastd.testing.clock import FakeClock
from tests.unit.test_scheduler import FakeProbe, Recorder, make, service, spec


@dataclass
class EventProbe(FakeProbe):
    """A FakeProbe whose ``changed()`` returns when the test calls ``fire()``."""

    events: list[asyncio.Event] = field(default_factory=list)
    watching: int = 0  # changed() calls in progress
    cancelled_watches: int = 0
    fail_changed: bool = False
    changed_calls: int = 0

    def fire(self) -> None:
        for ev in self.events:
            ev.set()

    async def changed(self) -> None:
        self.changed_calls += 1
        if self.fail_changed:
            raise OSError("netlink socket gone")
        ev = asyncio.Event()
        self.events.append(ev)
        self.watching += 1
        try:
            await ev.wait()
        except asyncio.CancelledError:
            self.cancelled_watches += 1
            raise
        finally:
            self.watching -= 1
            self.events.remove(ev)


async def settle(clock: FakeClock) -> None:
    """Let the watcher task see the event and the runner start the run (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)
    await clock.run_until(clock.now())


async def test_an_event_runs_the_check_at_once_then_on_the_fast_interval() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = EventProbe(clock, script=lambda n: n == 0)  # the process dies after the 1st run
    sched = make(clock, [spec(probe, interval=10.0, fast_interval=0.5)],
                 service(fall=2, start=CheckState.UP), rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(3.0)
    assert rec.starts() == [0.0]
    probe.fire()  # pidfd readable: the process exited
    await settle(clock)
    await clock.run_until(14.0)
    # at once (3.0), then fall counted on the fast interval (3.5: down), then the interval
    assert rec.starts() == [0.0, 3.0, 3.5, 13.5]
    assert sched.health("web").state is ServiceState.DOWN
    assert sched.health("web").since == 3.5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_event_during_a_run_runs_the_check_again_right_after_it() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = EventProbe(clock, latency=1.0)
    sched = make(clock, [spec(probe, interval=10.0, fast_interval=0.5, timeout=2.0)],
                 service(start=CheckState.UP), rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(0.5)  # the first run is in flight (0.0 -> 1.0)
    probe.fire()
    await settle(clock)
    await clock.run_until(5.0)
    assert rec.starts() == [0.0, 1.0]  # the event is not lost, and not run twice at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_removed_check_stops_watching_for_events() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = EventProbe(clock)
    health = service(start=CheckState.UP)
    sched = make(clock, [spec(probe, interval=10.0)], health, rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(1.0)
    await settle(clock)
    assert probe.watching == 1
    sched.reload([], {"web": health})
    await settle(clock)
    assert probe.watching == 0
    assert probe.cancelled_watches == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_event_checks_run_at_start_even_when_first_runs_are_staggered() -> None:
    # a watcher watches nothing until a first run found what to watch: no gap of up to one
    # interval at start for an event check (other checks still spread their first runs)
    clock, rec = FakeClock(), Recorder()
    probe = EventProbe(clock)
    sched = Scheduler([spec(probe, interval=30.0)], {"web": service(start=CheckState.UP)},
                      clock=clock, rng=random.Random(7), on_run=rec.on_run, stagger=True)
    task = asyncio.create_task(sched.run())
    await clock.run_until(0.0)
    await settle(clock)
    assert rec.starts() == [0.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_watch_that_fails_is_retried_on_the_interval_not_in_a_loop() -> None:
    clock, rec = FakeClock(), Recorder()
    probe = EventProbe(clock, fail_changed=True)
    sched = make(clock, [spec(probe, interval=2.0)], service(start=CheckState.UP), rec)
    task = asyncio.create_task(sched.run())
    await clock.run_until(9.0)
    await settle(clock)
    assert 4 <= probe.changed_calls <= 6  # every 2 s, from 0: 0, 2, 4, 6, 8
    assert rec.starts() == [0.0, 2.0, 4.0, 6.0, 8.0]  # the interval still runs the check
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
