"""The asyncio shell that runs health checks and feeds the pure engine.

Rule: the only writer of ``ServiceHealth`` values while it runs; every engine step it takes
is handed to ``on_events`` in order. All time comes from an injected :class:`Clock`.

Theory of operation: one runner loop owns a heap of (due time, check). It sleeps until the
earliest due time (or until a finished check pushes an earlier one), then starts every due
check as a task in its TaskGroup, after taking a slot of the ``max_concurrent`` semaphore,
so a full semaphore delays starts (visible as lateness) instead of piling up tasks. A run
wraps the probe in a backstop timeout (the probe's own timeout plus slack), turns a timeout
or an exception into a failed result, feeds the result to ``core.health`` and pushes the
next due time: ``base + interval`` (``fast_interval`` while the check is changing) plus a
fresh random offset in ``[0, jitter]``; ``base`` never drifts with lateness and a run that
overran its slot is rescheduled from its end. Damping wakeups (``next_wakeup``) go onto the
same heap and trigger ``reevaluate``. 10,000 checks cost one heap entry each, not a task.
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
from typing import Protocol, TypeVar

from anycastd.core.health import Event, ServiceHealth, Step

__all__ = [
    "CheckRun",
    "CheckSpec",
    "Clock",
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


@dataclass(slots=True, eq=False)
class _Slot:
    spec: CheckSpec
    base: float = 0.0  # the un-jittered schedule point of the next run
    dead: bool = False  # removed by a reload: skip its heap entry, drop a result in flight


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
    is at start + jitter. ``timeout_slack`` is added to a check's timeout for the backstop.
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
        self._sem = asyncio.Semaphore(max_concurrent)
        self._on_events = on_events
        self._on_run = on_run
        self._stagger = stagger
        self._slack = timeout_slack
        self._heap: list[tuple[float, int, _Slot | str]] = []
        self._seq = itertools.count()
        self._wakeups: dict[str, float] = {}  # service -> reevaluate time already queued
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None
        self._running = 0
        self._peak_running = 0

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
        self._slots = new_slots
        self._health = dict(services)
        self._wakeups.clear()
        if self._started:
            self._schedule_first(fresh)
            for service, h in self._health.items():
                self._queue_wakeup(service, h)

    # ---- the loop

    async def run(self) -> None:
        """Run until cancelled. Every probe task lives in this call's TaskGroup."""
        self._started = True
        self._schedule_first(list(self._slots.values()))
        for service, h in self._health.items():
            self._queue_wakeup(service, h)
        try:
            async with asyncio.TaskGroup() as tg:
                await self._runner(tg)
        finally:
            self._started = False
            self._heap.clear()
            self._wakeups.clear()
            self._sleeping_until = None

    async def _runner(self, tg: asyncio.TaskGroup) -> None:
        while True:
            now = self._clock.now()
            while self._heap and self._heap[0][0] <= now:
                due, _, item = heapq.heappop(self._heap)
                if isinstance(item, str):
                    self._reevaluate(item, due)
                    continue
                if item.dead:
                    continue
                await self._sem.acquire()
                try:
                    tg.create_task(self._run_one(item, due))
                except BaseException:
                    self._sem.release()
                    raise
                now = self._clock.now()
            self._wake.clear()
            until = self._heap[0][0] if self._heap else math.inf
            self._sleeping_until = until
            try:
                if until == math.inf:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with self._clock.timeout_at(until):
                            await self._wake.wait()
            finally:
                self._sleeping_until = None

    async def _run_one(self, slot: _Slot, due: float) -> None:
        spec = slot.spec
        started = self._clock.now()
        self._running += 1
        self._peak_running = max(self._peak_running, self._running)
        try:
            try:
                async with self._clock.timeout_at(started + spec.timeout + self._slack):
                    result = await spec.probe.run(spec.timeout)
                ok = result.status.value == "ok"
                status, reason, latency = str(result.status.value), result.reason, result.latency
            except TimeoutError:
                ok, status = False, "timeout"
                reason = f"no result within {spec.timeout:g}s"
                latency = self._clock.now() - started
            except Exception as exc:  # a broken probe is a failed check, not a dead task
                ok, status = False, "error"
                reason = f"probe raised {type(exc).__name__}: {exc}"
                latency = self._clock.now() - started
        finally:
            self._running -= 1
            self._sem.release()
        finished = self._clock.now()
        if slot.dead:  # removed by a reload while it ran
            return
        step = self._health[spec.service].feed(spec.check, ok, reason, finished)
        self._apply(step)
        if self._on_run is not None:
            run = CheckRun(
                spec.service, spec.check, ok, status, reason, latency, due, started, finished
            )
            self._call(self._on_run, run)
        changing = step.health.check(spec.check).changing
        slot.base += spec.fast_interval if changing else spec.interval
        # a run that overran its slot restarts from its end: no burst of catch-up runs
        slot.base = max(slot.base, finished)
        self._push(slot.base + self._jitter(spec), slot)

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
            offset = self._rng.uniform(0.0, slot.spec.interval) if self._stagger else 0.0
            slot.base = start + offset
            self._push(slot.base + self._jitter(slot.spec), slot)

    def _jitter(self, spec: CheckSpec) -> float:
        return self._rng.uniform(0.0, spec.jitter) if spec.jitter > 0 else 0.0

    def _push(self, due: float, item: _Slot | str) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))
        if self._sleeping_until is not None and due < self._sleeping_until:
            self._wake.set()

    def _apply(self, step: Step) -> Step:
        self._health[step.health.name] = step.health
        if step.events and self._on_events is not None:
            self._call(self._on_events, step.events)
        self._queue_wakeup(step.health.name, step.health)
        return step

    def _queue_wakeup(self, service: str, h: ServiceHealth) -> None:
        when = h.next_wakeup(self._clock.now())
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
