"""The asyncio shell that runs health checks and feeds the pure engine.

Rule: the only writer of ``ServiceHealth`` values while it runs; every engine step it takes
is handed to ``on_events`` in order. All time comes from an injected :class:`Clock`.

Theory of operation: one runner loop owns a heap of (due time, check). It sleeps until the
earliest due time (or until a finished check pushes an earlier one), then starts every due
check as a task in its TaskGroup, after taking one of ``max_concurrent`` slots, so full
slots delay starts (visible as lateness) instead of piling up tasks. A run wraps the probe
in a backstop timeout (the probe's own timeout plus slack; on the real clock one shared
timer per 100 ms of deadlines, see ``_Backstop``), turns a timeout or an exception into a
failed result, feeds the result to ``core.health`` and pushes the
next due time: ``base + interval`` (``fast_interval`` while the check is changing) plus a
fresh random offset in ``[0, jitter]``; ``base`` never drifts with lateness and a run that
overran its slot is rescheduled from its end. Damping wakeups (``next_wakeup``) go onto the
same heap and trigger ``reevaluate``. 10,000 checks cost one heap entry each, not a task.

Event-driven checks: a probe that also has ``async changed()`` (a watched process exited, a
link went down: :class:`EventProbe`) gets one watcher task. When ``changed()`` returns, the
check runs at once (or right after the run in flight), and its schedule restarts from then:
the fast interval while it is changing, so rise/fall still count as usual. Each check has
one valid heap entry; an entry pushed before the schedule moved is skipped (``gen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from anycastd.core.health import Event, ServiceHealth, Step

__all__ = [
    "CheckRun",
    "CheckSpec",
    "Clock",
    "EventProbe",
    "MonotonicClock",
    "Probe",
    "ProbeResultLike",
    "Scheduler",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Clock(Protocol):
    """An injectable monotonic clock (seconds)."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...

    def timeout_at(self, t: float) -> contextlib.AbstractAsyncContextManager[object]:
        """Raise TimeoutError in the block if it is still running at time ``t``."""
        ...


def _resolve(fut: asyncio.Future[bool], value: bool = False) -> None:
    if not fut.done():
        fut.set_result(value)


class MonotonicClock:
    """The real clock: ``time.monotonic`` (the asyncio loop's default time source)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - time.monotonic()))

    def timeout_at(self, t: float) -> asyncio.Timeout:
        # the loop's clock is time.monotonic for asyncio's loops; convert in case it is not
        return asyncio.timeout_at(asyncio.get_running_loop().time() + (t - time.monotonic()))


class ProbeResultLike(Protocol):
    """What the scheduler reads from a probe result (healthchecks.ProbeResult fits)."""

    @property
    def status(self) -> enum.Enum: ...  # ok when status.value == "ok"

    @property
    def latency(self) -> float: ...

    @property
    def reason(self) -> str: ...


class Probe(Protocol):
    # the contract of healthchecks probes: the probe enforces its own timeout
    async def run(self, timeout: float) -> ProbeResultLike: ...  # noqa: ASYNC109


@runtime_checkable
class EventProbe(Probe, Protocol):
    """A probe that can say when its result may have changed (a kernel event)."""

    async def changed(self) -> None:
        """Return when the next ``run`` may answer differently; never without a cause."""
        ...


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check to schedule. Times in seconds; ``0 <= jitter < interval``."""

    service: str
    check: str
    probe: Probe
    interval: float
    fast_interval: float
    timeout: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.fast_interval <= self.interval:
            raise ValueError(f"{self.service}/{self.check}: need 0 < fast_interval <= interval")
        if self.timeout <= 0:
            raise ValueError(f"{self.service}/{self.check}: timeout must be > 0")
        if not 0 <= self.jitter < self.interval:
            raise ValueError(f"{self.service}/{self.check}: need 0 <= jitter < interval")


@dataclass(frozen=True, slots=True)
class CheckRun:
    """One finished probe run, for metrics and benchmarks."""

    service: str
    check: str
    ok: bool
    status: str  # the probe's status value, or "timeout" / "error" from the scheduler
    reason: str
    latency: float
    scheduled: float
    started: float
    finished: float

    @property
    def lateness(self) -> float:
        return self.started - self.scheduled


class _Backstop:
    """The scheduler's hard deadline on the real clock, coarse-grained and shared.

    ``asyncio.timeout`` per run means one loop timer per run; a run that finishes early
    leaves its cancelled timer in the loop's heap until it is due, so with thousands of
    runs a second the heap holds thousands of dead timers and every timer operation pays
    for them (~5 us a run measured). Here deadlines are rounded up to a ``tick`` grid and
    one loop timer serves every run of a grid point: the backstop fires at most one tick
    late, which is fine for a backstop that already adds slack to the probe's own timeout.
    A run cut off by it is cancelled and sees TimeoutError, exactly as under
    ``asyncio.timeout`` (an outside cancellation at the same time wins: CancelledError).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self._loop = loop
        self._tick = tick
        self._buckets: dict[int, set[asyncio.Task[object]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._expired: set[asyncio.Task[object]] = set()

    async def run(self, probe: Probe, probe_timeout: float, deadline: float) -> ProbeResultLike:
        """``await probe.run(probe_timeout)``, cancelled into TimeoutError after
        ``deadline`` (monotonic seconds, at most one tick late). Call it from a task."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("_Backstop.run needs a task")
        key = math.ceil(deadline / self._tick)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            # + pad: never before the deadline, even on a loop with 1 ms timers (uvloop)
            when = self._loop.time() + (key * self._tick - time.monotonic()) + _EARLY_WAKE_PAD
            self._timers[key] = self._loop.call_at(when, self._expire, key)
        bucket.add(task)
        try:
            return await probe.run(probe_timeout)
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:  # nobody else cancelled it: our deadline
                    raise TimeoutError from None
            raise
        finally:
            bucket.discard(task)
            if task in self._expired:  # the probe swallowed our cancellation
                self._expired.discard(task)
                task.uncancel()

    def _expire(self, key: int) -> None:
        del self._timers[key]
        for task in self._buckets.pop(key, ()):
            if not task.done():
                self._expired.add(task)
                task.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._buckets.clear()
        self._expired.clear()


@dataclass(slots=True, eq=False)
class _Slot:
    spec: CheckSpec
    base: float = 0.0  # the un-jittered schedule point of the next run
    dead: bool = False  # removed by a reload: skip its heap entry, drop a result in flight
    gen: int = 0  # the heap entry carrying this value is the valid one
    running: bool = False
    rerun: bool = False  # an event came during the run in flight: run again at its end
    watcher: asyncio.Task[None] | None = None  # for an EventProbe


# real clock: backstop deadlines are rounded up to this grid (see _Backstop)
_BACKSTOP_TICK = 0.1
# real clock: extra sleep after a wakeup that found nothing due (see _runner)
_EARLY_WAKE_PAD = 0.001

_OnEvents = Callable[[Sequence[Event]], None]
_OnRun = Callable[[CheckRun], None]


class Scheduler:
    """Runs checks on their intervals and keeps the services' health.

    ``services``: the initial health of each service (``ServiceHealth.initial`` or values
    carried over from a previous scheduler on reload). Checks of a disabled service are
    not run. ``on_events`` receives each non-empty batch of engine events; ``on_run``
    each finished probe run. Callback exceptions are logged, never fatal.
    ``stagger`` spreads the first runs uniformly over one interval (no synchronized
    bursts; costs up to one interval before the first result); without it the first run
    is at start + jitter. ``timeout_slack`` is added to a check's timeout for the backstop
    (on the real clock the backstop may fire up to ~0.1 s later still: a coarse timer).
    """

    def __init__(
        self,
        checks: Iterable[CheckSpec],
        services: Mapping[str, ServiceHealth],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        max_concurrent: int = 256,
        on_events: _OnEvents | None = None,
        on_run: _OnRun | None = None,
        stagger: bool = True,
        timeout_slack: float = 0.5,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter only
        self._health: dict[str, ServiceHealth] = dict(services)
        self._slots: dict[tuple[str, str], _Slot] = {
            (spec.service, spec.check): _Slot(spec) for spec in self._runnable(checks, services)
        }
        self._started = False
        self._max_concurrent = max_concurrent
        self._inflight = 0  # runs started (tasks created) and not finished: <= max
        self._slot_free: asyncio.Future[bool] | None = None  # the runner waits for a slot
        self._on_events = on_events
        self._on_run = on_run
        self._stagger = stagger
        self._slack = timeout_slack
        self._heap: list[tuple[float, int, _Slot | str, int]] = []
        self._seq = itertools.count()
        self._wakeups: dict[str, float] = {}  # service -> reevaluate time already queued
        # the runner's sleep; done = wake up (True: by its timer on the real clock)
        self._wake: asyncio.Future[bool] | None = None
        self._sleeping_until: float | None = None
        self._backstop: _Backstop | None = None  # while run() runs on the real clock
        self._running = 0
        self._peak_running = 0
        self._tg: asyncio.TaskGroup | None = None  # while run() runs: watchers live there

    # ---- queries

    def health(self, service: str) -> ServiceHealth:
        return self._health[service]

    @property
    def services(self) -> Mapping[str, ServiceHealth]:
        """A snapshot of every service's health."""
        return dict(self._health)

    @property
    def scheduled(self) -> frozenset[tuple[str, str]]:
        """(service, check) of every check being run."""
        return frozenset(self._slots)

    @property
    def running(self) -> int:
        """Probe runs in progress now."""
        return self._running

    @property
    def peak_running(self) -> int:
        return self._peak_running

    # ---- operator inputs (applied at clock.now(); events go to on_events too)

    def set_maintenance(self, service: str, on: bool, reason: str = "maintenance") -> Step:
        h = self._health[service]
        return self._apply(h.set_maintenance(on, self._clock.now(), reason))

    def set_draining(self, service: str, on: bool, reason: str = "operator drain") -> Step:
        h = self._health[service]
        return self._apply(h.set_draining(on, self._clock.now(), reason))

    def reload(self, checks: Iterable[CheckSpec], services: Mapping[str, ServiceHealth]) -> None:
        """Swap in new checks and the services' health (values the caller carried over,
        e.g. with ``ServiceHealth.reconfigure``; their events are the caller's to report).
        A check whose CheckSpec is unchanged keeps its schedule; a changed or new check
        starts like at start-up; a removed check stops and a run in flight is discarded."""
        new_slots: dict[tuple[str, str], _Slot] = {}
        fresh: list[_Slot] = []
        for spec in self._runnable(checks, services):
            key = (spec.service, spec.check)
            old = self._slots.pop(key, None)
            if old is not None and old.spec == spec:
                new_slots[key] = old
            else:
                if old is not None:
                    old.dead = True
                new_slots[key] = slot = _Slot(spec)
                fresh.append(slot)
        for gone in self._slots.values():
            gone.dead = True
            if gone.watcher is not None:
                gone.watcher.cancel()
        self._slots = new_slots
        self._health = dict(services)
        self._wakeups.clear()
        if self._started:
            self._schedule_first(fresh)
            self._watch(fresh)
            for service, h in self._health.items():
                self._queue_wakeup(service, h)

    # ---- the loop

    async def run(self) -> None:
        """Run until cancelled. Every probe task lives in this call's TaskGroup."""
        self._started = True
        self._schedule_first(list(self._slots.values()))
        for service, h in self._health.items():
            self._queue_wakeup(service, h)
        if type(self._clock) is MonotonicClock:
            self._backstop = _Backstop(asyncio.get_running_loop(), _BACKSTOP_TICK)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._watch(list(self._slots.values()))
                await self._runner(tg)
        finally:
            self._tg = None
            if self._backstop is not None:
                self._backstop.close()
                self._backstop = None
            self._started = False
            self._heap.clear()
            self._wakeups.clear()
            self._sleeping_until = None

    async def _runner(self, tg: asyncio.TaskGroup) -> None:
        # The hot loop: 10,000 checks a second pass here. Hence a counter and a future
        # instead of an asyncio.Semaphore (no coroutine per start), and, on the real clock,
        # a plain loop timer to end the sleep instead of a timeout scope (which cancels
        # the task and raises and catches an exception at every wakeup).
        clock = self._clock
        heap = self._heap
        loop = asyncio.get_running_loop()
        real_clock = type(clock) is MonotonicClock
        timer_woke = False
        while True:
            now = clock.now()
            # a loop whose timers are coarser than the clock (uvloop: 1 ms) wakes us a
            # little early; without a pad the next sleep rounds to 0 and the loop spins
            early = timer_woke and bool(heap) and heap[0][0] > now
            pad = _EARLY_WAKE_PAD if early else 0.0
            timer_woke = False
            while heap and heap[0][0] <= now:
                due, _, item, gen = heapq.heappop(heap)
                if isinstance(item, str):
                    self._reevaluate(item, due)
                    continue
                if item.dead or gen != item.gen:
                    continue  # removed by a reload, or its schedule moved (an event)
                while self._inflight >= self._max_concurrent:
                    self._slot_free = loop.create_future()
                    try:
                        await self._slot_free
                    finally:
                        self._slot_free = None
                self._inflight += 1
                item.running = True
                try:
                    tg.create_task(self._run_one(item, due))
                except BaseException:
                    self._inflight -= 1
                    raise
                now = clock.now()
            until = heap[0][0] if heap else math.inf
            self._wake = wake = loop.create_future()
            self._sleeping_until = until
            try:
                if until == math.inf:
                    await wake
                elif real_clock:
                    when = loop.time() + (until - time.monotonic()) + pad
                    timer = loop.call_at(when, _resolve, wake, True)
                    try:
                        timer_woke = await wake
                    finally:
                        timer.cancel()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with clock.timeout_at(until):
                            await wake
            finally:
                self._sleeping_until = None
                self._wake = None

    async def _run_one(self, slot: _Slot, due: float) -> None:
        spec = slot.spec
        now = self._clock.now
        started = now()
        self._running += 1
        self._peak_running = max(self._peak_running, self._running)
        try:
            try:
                deadline = started + spec.timeout + self._slack
                if self._backstop is not None:  # the real clock: a shared, coarse timer
                    result = await self._backstop.run(spec.probe, spec.timeout, deadline)
                else:  # an injected clock: exact times
                    async with self._clock.timeout_at(deadline):
                        result = await spec.probe.run(spec.timeout)
                status = str(result.status.value)
                ok, reason, latency = status == "ok", result.reason, result.latency
            except TimeoutError:
                ok, status = False, "timeout"
                reason = f"no result within {spec.timeout:g}s"
                latency = now() - started
            except Exception as exc:  # a broken probe is a failed check, not a dead task
                ok, status = False, "error"
                reason = f"probe raised {type(exc).__name__}: {exc}"
                latency = now() - started
        finally:
            self._running -= 1
            self._inflight -= 1
            slot.running = False
            if self._slot_free is not None:
                _resolve(self._slot_free)
        finished = now()
        if slot.dead:  # removed by a reload while it ran
            return
        step = self._health[spec.service].feed(spec.check, ok, reason, finished)
        self._apply(step, finished)
        if self._on_run is not None:  # the record is built only for someone to read it
            run = CheckRun(
                spec.service, spec.check, ok, status, reason, latency, due, started, finished
            )
            self._call(self._on_run, run)
        if slot.rerun:  # an event came while it ran: its answer may already be stale
            slot.rerun = False
            slot.base = finished
            self._push_slot(finished, slot)
            return
        changing = step.health.check(spec.check).changing
        slot.base += spec.fast_interval if changing else spec.interval
        # a run that overran its slot restarts from its end: no burst of catch-up runs
        slot.base = max(slot.base, finished)
        self._push_slot(slot.base + self._jitter(spec), slot)

    # ---- internals

    @staticmethod
    def _runnable(
        checks: Iterable[CheckSpec], services: Mapping[str, ServiceHealth]
    ) -> list[CheckSpec]:
        """The checks to run; KeyError for a check the engine does not know."""
        out: list[CheckSpec] = []
        for spec in checks:
            health = services.get(spec.service)
            if health is None:
                raise KeyError(f"check {spec.check}: unknown service {spec.service!r}")
            health.check(spec.check)
            if not health.params.disabled:
                out.append(spec)
        return out

    def _schedule_first(self, slots: list[_Slot]) -> None:
        start = self._clock.now()
        for slot in slots:
            # an event check runs at once: it is cheap, and it watches nothing until a first
            # run has found what to watch (a long interval must not leave a gap at start)
            event = isinstance(slot.spec.probe, EventProbe)
            stagger = self._stagger and not event
            offset = self._rng.uniform(0.0, slot.spec.interval) if stagger else 0.0
            slot.base = start + offset
            self._push_slot(slot.base + self._jitter(slot.spec), slot)

    def _watch(self, slots: Iterable[_Slot]) -> None:
        """A watcher task for every slot whose probe reports events."""
        tg = self._tg
        if tg is None:
            return
        for slot in slots:
            if isinstance(slot.spec.probe, EventProbe) and slot.watcher is None:
                slot.watcher = tg.create_task(self._watcher(slot))

    async def _watcher(self, slot: _Slot) -> None:
        probe = slot.spec.probe
        assert isinstance(probe, EventProbe)  # noqa: S101 -- _watch checked it
        while not slot.dead:
            try:
                await probe.changed()
            except Exception as exc:  # a watch that fails: the interval still runs the check
                log.warning("check %s/%s: watching for events failed: %s; retrying in %gs",
                            slot.spec.service, slot.spec.check, exc, slot.spec.interval)
                await self._clock.sleep_until(self._clock.now() + slot.spec.interval)
                continue
            if not slot.dead:
                self._event(slot)

    def _event(self, slot: _Slot) -> None:
        """Run ``slot``'s check at once (or as soon as its run in flight ends)."""
        if slot.running:
            slot.rerun = True
            return
        now = self._clock.now()
        slot.base = now
        self._push_slot(now, slot)

    def _push_slot(self, due: float, slot: _Slot) -> None:
        slot.gen += 1  # the entry pushed before this one is now stale
        self._push(due, slot, slot.gen)

    def _jitter(self, spec: CheckSpec) -> float:
        # == rng.uniform(0, jitter) (same draws, same values) without its call overhead
        return spec.jitter * self._rng.random() if spec.jitter > 0 else 0.0

    def _push(self, due: float, item: _Slot | str, gen: int = 0) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item, gen))
        wake, until = self._wake, self._sleeping_until
        if wake is not None and until is not None and due < until:
            _resolve(wake)

    def _apply(self, step: Step, now: float | None = None) -> Step:
        self._health[step.health.name] = step.health
        if step.events and self._on_events is not None:
            self._call(self._on_events, step.events)
        self._queue_wakeup(step.health.name, step.health, now)
        return step

    def _queue_wakeup(self, service: str, h: ServiceHealth, now: float | None = None) -> None:
        when = h.next_wakeup(self._clock.now() if now is None else now)
        if when is not None and self._wakeups.get(service) != when:
            self._wakeups[service] = when
            self._push(when, service)

    def _reevaluate(self, service: str, due: float) -> None:
        if self._wakeups.get(service) == due:
            del self._wakeups[service]
        health = self._health.get(service)
        if health is not None:  # else: removed by a reload
            self._apply(health.reevaluate(self._clock.now()))

    def _call(self, fn: Callable[[_T], None], arg: _T) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("scheduler callback %r failed", fn)
